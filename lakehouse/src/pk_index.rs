//! The primary-key index of a silver table: where each key's live row sits.
//!
//! An update or delete must name the old row as (data file, position) for a position
//! delete (ADR 0005). The index is a cache of the table: it is rebuilt from the committed
//! files (key columns of every live data file minus the positions every live delete file
//! removes) whenever it is missing or does not match the table's current snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use iceberg::table::Table;

use crate::files::{live_files, read_position_deletes, read_projected};
use crate::{LakehouseError, Result};

/// A row of a committed data file: the file (by its number in the index) and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Number of the data file in the index's file list.
    pub file: u32,
    /// Row position in that file.
    pub pos: u32,
}

/// One key's rows: a single one for a primary key, several for tables keyed by all columns.
#[derive(Debug, Clone)]
enum Locs {
    One(Loc),
    Many(Vec<Loc>),
}

/// Key (Arrow row encoding of the key columns) → live rows.
#[derive(Debug, Default)]
pub struct PkIndex {
    files: Vec<Arc<str>>,
    file_ids: HashMap<Arc<str>, u32>,
    map: HashMap<Box<[u8]>, Locs>,
    rows: usize,
}

impl PkIndex {
    /// Number of live rows indexed.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is indexed.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The number of `path` in the file list, adding it if new.
    pub fn file_id(&mut self, path: &str) -> u32 {
        if let Some(&id) = self.file_ids.get(path) {
            return id;
        }
        let id = self.files.len() as u32;
        let p: Arc<str> = Arc::from(path);
        self.files.push(p.clone());
        self.file_ids.insert(p, id);
        id
    }

    /// The path of data file number `file`.
    pub fn path(&self, file: u32) -> &str {
        &self.files[file as usize]
    }

    /// The live rows of `key`.
    pub fn get(&self, key: &[u8]) -> Vec<Loc> {
        match self.map.get(key) {
            None => Vec::new(),
            Some(Locs::One(l)) => vec![*l],
            Some(Locs::Many(v)) => v.clone(),
        }
    }

    /// Replaces the rows of `key`.
    pub fn set(&mut self, key: Box<[u8]>, mut locs: Vec<Loc>) {
        let added = locs.len();
        let old = match added {
            0 => self.map.remove(&key),
            1 => self.map.insert(key, Locs::One(locs[0])),
            _ => {
                locs.shrink_to_fit();
                self.map.insert(key, Locs::Many(locs))
            }
        };
        let removed = match old {
            None => 0,
            Some(Locs::One(_)) => 1,
            Some(Locs::Many(v)) => v.len(),
        };
        self.rows = self.rows + added - removed;
    }

    /// Adds one row to `key`.
    pub fn push(&mut self, key: &[u8], loc: Loc) {
        self.rows += 1;
        match self.map.get_mut(key) {
            None => {
                self.map.insert(key.into(), Locs::One(loc));
            }
            Some(e) => {
                let prev = match e {
                    Locs::One(l) => vec![*l, loc],
                    Locs::Many(v) => {
                        v.push(loc);
                        return;
                    }
                };
                *e = Locs::Many(prev);
            }
        }
    }

    /// Forgets every row (TRUNCATE).
    pub fn clear(&mut self) {
        self.map.clear();
        self.files.clear();
        self.file_ids.clear();
        self.rows = 0;
    }

    /// Builds the index of `table`'s current snapshot from its files.
    pub async fn rebuild(table: &Table, key_schema: &SchemaRef) -> Result<Self> {
        let mut index = PkIndex::default();
        if table.metadata().current_snapshot().is_none() {
            return Ok(index);
        }
        let name = table.identifier().to_string();
        let file_io = table.file_io();
        let live = live_files(table).await?;
        let mut deleted: HashMap<String, HashSet<u64>> = HashMap::new();
        for d in &live.deletes {
            for (path, pos) in read_position_deletes(file_io, d.file.file_path()).await? {
                deleted.entry(path).or_default().insert(pos);
            }
        }
        let data_files: Vec<&str> = live.data.iter().map(|f| f.file.file_path()).collect();
        let delete_files = &live.deletes;
        let converter = key_converter(key_schema)?;
        for &path in &data_files {
            let gone = deleted.get(path);
            let file = index.file_id(path);
            let mut pos: u64 = 0;
            for b in read_projected(file_io, path, key_schema, None).await? {
                let rows = converter.convert_columns(b.columns())?;
                for i in 0..b.num_rows() {
                    if !gone.is_some_and(|g| g.contains(&pos)) {
                        index.push(rows.row(i).as_ref(), loc(file, pos)?);
                    }
                    pos += 1;
                }
            }
        }
        tracing::debug!(table = %name, rows = index.len(), files = data_files.len(), deletes = delete_files.len(), "rebuilt primary-key index");
        Ok(index)
    }
}

/// A row position as stored in the index (files hold fewer than 2^32 rows).
pub fn loc(file: u32, pos: u64) -> Result<Loc> {
    let pos = u32::try_from(pos)
        .map_err(|_| LakehouseError::Corrupt(format!("row position {pos} beyond 2^32")))?;
    Ok(Loc { file, pos })
}

/// The row encoder of the key columns: equal keys encode to equal bytes.
pub fn key_converter(key_schema: &SchemaRef) -> Result<RowConverter> {
    Ok(RowConverter::new(
        key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?)
}
