//! The primary-key index of a silver table: where each key's live row sits.
//!
//! An update or delete must name the old row as (data file, position) for a position
//! delete (ADR 0005). The index is a cache of the table: checkpointed next to it (an Arrow
//! IPC file under `<table>/bitvelocity-index/`, tagged with the snapshot it describes) so a
//! restart loads it instead of reading every key, and rebuilt from the committed files (key
//! columns of every live data file minus the positions every live delete file removes)
//! whenever the checkpoint is missing, unreadable or of another snapshot or key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{AsArray, BinaryArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use arrow::record_batch::RecordBatch;
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
    from_checkpoint: bool,
}

impl PkIndex {
    /// Number of live rows indexed.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether this index was loaded from its checkpoint rather than rebuilt from the table.
    pub fn from_checkpoint(&self) -> bool {
        self.from_checkpoint
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

/// Folder, under a silver table's location, of its index checkpoint; not table data, so
/// orphan removal leaves it alone.
pub const INDEX_DIR: &str = "bitvelocity-index";
const CHECKPOINT_FILE: &str = "pk.arrow";
const META_SNAPSHOT: &str = "bitvelocity.snapshot-id";
const META_KEY: &str = "bitvelocity.key";
const META_FILES: &str = "bitvelocity.files";

/// Identifies a key layout: an index built for other key columns or types is not reused.
fn key_fingerprint(key_schema: &SchemaRef) -> String {
    key_schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{}:{}:{}",
                f.name(),
                f.data_type(),
                crate::files::field_id(f).unwrap_or(-1)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn checkpoint_path(table: &Table) -> String {
    format!(
        "{}/{INDEX_DIR}/{CHECKPOINT_FILE}",
        table.metadata().location().trim_end_matches('/')
    )
}

impl PkIndex {
    /// Loads the checkpoint of `table` if it describes its current snapshot and `key_schema`,
    /// else rebuilds from the table's files.
    pub async fn open(table: &Table, key_schema: &SchemaRef) -> Result<Self> {
        match Self::load(table, key_schema).await {
            Ok(Some(mut index)) => {
                index.from_checkpoint = true;
                tracing::debug!(table = %table.identifier(), rows = index.len(), "loaded primary-key index checkpoint");
                Ok(index)
            }
            Ok(None) => Self::rebuild(table, key_schema).await,
            Err(e) => {
                tracing::warn!(table = %table.identifier(), error = %e, "unreadable primary-key index checkpoint; rebuilding from the table");
                Self::rebuild(table, key_schema).await
            }
        }
    }

    async fn load(table: &Table, key_schema: &SchemaRef) -> Result<Option<Self>> {
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(None);
        };
        let path = checkpoint_path(table);
        let file_io = table.file_io();
        if !file_io
            .exists(&path)
            .await
            .map_err(LakehouseError::iceberg(&path))?
        {
            return Ok(None);
        }
        let bytes = file_io
            .new_input(&path)
            .map_err(LakehouseError::iceberg(&path))?
            .read()
            .await
            .map_err(LakehouseError::iceberg(&path))?;
        let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)?;
        let meta = reader.schema().metadata().clone();
        if meta.get(META_SNAPSHOT) != Some(&snapshot.snapshot_id().to_string())
            || meta.get(META_KEY) != Some(&key_fingerprint(key_schema))
        {
            return Ok(None);
        }
        let mut index = PkIndex::default();
        for path in meta
            .get(META_FILES)
            .map(|f| f.split('\n').filter(|p| !p.is_empty()).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            index.file_id(path);
        }
        for batch in reader {
            let batch = batch?;
            let keys = batch.column(0).as_binary::<i32>();
            let files = batch.column(1).as_primitive::<UInt32Type>();
            let positions = batch.column(2).as_primitive::<UInt32Type>();
            for i in 0..batch.num_rows() {
                let file = files.value(i);
                if file as usize >= index.files.len() {
                    return Err(LakehouseError::Corrupt(format!(
                        "{path}: file number {file} beyond its file list"
                    )));
                }
                index.push(
                    keys.value(i),
                    Loc {
                        file,
                        pos: positions.value(i),
                    },
                );
            }
        }
        Ok(Some(index))
    }

    /// Writes the index as the checkpoint of `table` at its current snapshot (which the
    /// index must describe). A crash mid-write leaves an unreadable file: rebuilt on open.
    pub async fn checkpoint(&self, table: &Table, key_schema: &SchemaRef) -> Result<()> {
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(());
        };
        let bytes = self.encode(snapshot.snapshot_id(), key_schema)?;
        let path = checkpoint_path(table);
        table
            .file_io()
            .new_output(&path)
            .map_err(LakehouseError::iceberg(&path))?
            .write(bytes.into())
            .await
            .map_err(LakehouseError::iceberg(&path))?;
        tracing::debug!(table = %table.identifier(), rows = self.len(), "checkpointed primary-key index");
        Ok(())
    }

    fn encode(&self, snapshot_id: i64, key_schema: &SchemaRef) -> Result<Vec<u8>> {
        let metadata = HashMap::from([
            (META_SNAPSHOT.to_string(), snapshot_id.to_string()),
            (META_KEY.to_string(), key_fingerprint(key_schema)),
            (
                META_FILES.to_string(),
                self.files
                    .iter()
                    .map(|f| f.as_ref())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ]);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("key", DataType::Binary, false),
                Field::new("file", DataType::UInt32, false),
                Field::new("pos", DataType::UInt32, false),
            ],
            metadata,
        ));
        let mut out = Vec::new();
        let mut writer = arrow::ipc::writer::FileWriter::try_new(&mut out, &schema)?;
        const CHUNK: usize = 64 * 1024;
        let mut keys: Vec<&[u8]> = Vec::with_capacity(CHUNK);
        let mut files: Vec<u32> = Vec::with_capacity(CHUNK);
        let mut positions: Vec<u32> = Vec::with_capacity(CHUNK);
        let flush = |keys: &mut Vec<&[u8]>,
                     files: &mut Vec<u32>,
                     positions: &mut Vec<u32>,
                     writer: &mut arrow::ipc::writer::FileWriter<&mut Vec<u8>>|
         -> Result<()> {
            if keys.is_empty() {
                return Ok(());
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(BinaryArray::from_vec(std::mem::take(keys))),
                    Arc::new(UInt32Array::from(std::mem::take(files))),
                    Arc::new(UInt32Array::from(std::mem::take(positions))),
                ],
            )?;
            writer.write(&batch)?;
            Ok(())
        };
        for (key, locs) in &self.map {
            let locs: &[Loc] = match locs {
                Locs::One(l) => std::slice::from_ref(l),
                Locs::Many(v) => v,
            };
            for l in locs {
                keys.push(key);
                files.push(l.file);
                positions.push(l.pos);
            }
            if keys.len() >= CHUNK {
                flush(&mut keys, &mut files, &mut positions, &mut writer)?;
            }
        }
        flush(&mut keys, &mut files, &mut positions, &mut writer)?;
        writer.finish()?;
        drop(writer);
        Ok(out)
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
