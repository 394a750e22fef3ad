//! The primary-key index of a silver table: where each key's live row sits.
//!
//! An update or delete must name the old row as (data file, position) for a position
//! delete (ADR 0005). The index is a cache of the table: checkpointed next to it (an Arrow
//! IPC stream under `<table>/bitvelocity-index/`, tagged with the snapshot it describes) now
//! and then and at a clean stop, so a restart loads it and replays only the row deltas
//! committed since; it is rebuilt from the committed files (key columns of every live data
//! file minus the positions every live delete file removes) whenever the checkpoint is
//! missing, unreadable, of another key, or cannot be brought forward (files were rewritten).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use iceberg::table::Table;

use crate::files::{live_files, read_position_deletes, read_projected};

mod catch_up;
mod checkpoint;
use crate::{LakehouseError, Result};
pub use checkpoint::INDEX_DIR;

/// A row of a committed data file: the file (by its number in the index) and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Number of the data file in the index's file list.
    pub file: u32,
    /// Row position in that file.
    pub pos: u32,
}

/// Keys whose Arrow row encoding has a fixed width up to this many bytes are stored inline
/// (a `bigint`, `int`, `date`, `timestamp` key, or two `int`s): no allocation per key.
const NARROW: usize = 16;

/// Key → live rows, for one key representation. A key has its single row in `one`, or, in a
/// table keyed by all its columns where equal rows repeat, several rows in `many`.
#[derive(Debug)]
struct Entries<K> {
    one: HashMap<K, Loc, Hasher>,
    many: HashMap<K, Vec<Loc>, Hasher>,
}

/// A fast, randomly seeded hash for the index's maps (keys come from the source: not
/// attacker-chosen in a way SipHash would defend against better than a random seed).
pub(crate) type Hasher = foldhash::fast::RandomState;

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Self {
            one: HashMap::default(),
            many: HashMap::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Entries<K> {
    fn get<Q>(&self, key: &Q) -> Vec<Loc>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(l) = self.one.get(key) {
            return vec![*l];
        }
        self.many.get(key).cloned().unwrap_or_default()
    }

    /// Replaces the rows of `key`; returns how many it had.
    fn set(&mut self, key: K, mut locs: Vec<Loc>) -> usize {
        let removed = match self.one.remove(&key) {
            Some(_) => 1,
            None => self.many.remove(&key).map_or(0, |v| v.len()),
        };
        match locs.len() {
            0 => {}
            1 => {
                self.one.insert(key, locs[0]);
            }
            _ => {
                locs.shrink_to_fit();
                self.many.insert(key, locs);
            }
        }
        removed
    }

    fn push(&mut self, key: K, loc: Loc) {
        if let Some(v) = self.many.get_mut(&key) {
            v.push(loc);
        } else if let Some(first) = self.one.remove(&key) {
            self.many.insert(key, vec![first, loc]);
        } else {
            self.one.insert(key, loc);
        }
    }

    /// Removes row `loc` of `key`; false when the key does not have it.
    fn remove(&mut self, key: &K, loc: Loc) -> bool
    where
        K: Clone,
    {
        if self.one.get(key) == Some(&loc) {
            self.one.remove(key);
            return true;
        }
        let Some(v) = self.many.get_mut(key) else {
            return false;
        };
        let Some(i) = v.iter().position(|l| *l == loc) else {
            return false;
        };
        v.remove(i);
        if v.len() == 1 {
            let last = v[0];
            self.many.remove(key);
            self.one.insert(key.clone(), last);
        }
        true
    }

    fn clear(&mut self) {
        self.one = HashMap::default();
        self.many = HashMap::default();
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &[Loc])> + Send + '_
    where
        K: Sync,
    {
        self.one
            .iter()
            .map(|(k, l)| (k, std::slice::from_ref(l)))
            .chain(self.many.iter().map(|(k, v)| (k, v.as_slice())))
    }

    /// Bytes of the hash tables (each bucket: key, rows, one control byte) and row lists.
    fn table_bytes(&self) -> usize {
        // `capacity` is 7/8 of the buckets, which are a power of two.
        let buckets = |cap: usize| {
            if cap == 0 {
                0
            } else {
                (cap * 8).div_ceil(7).next_power_of_two()
            }
        };
        let one = buckets(self.one.capacity()) * (std::mem::size_of::<(K, Loc)>() + 1);
        let many = buckets(self.many.capacity()) * (std::mem::size_of::<(K, Vec<Loc>)>() + 1)
            + self
                .many
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<Loc>())
                .sum::<usize>();
        one + many
    }
}

/// The index's keys: inline when the key's encoding is narrow and fixed, else on the heap.
#[derive(Debug)]
enum Keys {
    /// Keys of this fixed encoded width, zero-padded.
    Narrow(Entries<[u8; NARROW]>, usize),
    Wide(Entries<Box<[u8]>>),
}

impl Default for Keys {
    fn default() -> Self {
        Keys::Wide(Entries::default())
    }
}

fn narrow(key: &[u8]) -> [u8; NARROW] {
    let mut out = [0u8; NARROW];
    out[..key.len()].copy_from_slice(key);
    out
}

/// The width of the Arrow row encoding of `key_schema`'s keys if it is the same for every
/// key (fixed-width types only: a null byte, then the value).
fn fixed_width(key_schema: &SchemaRef) -> Option<usize> {
    key_schema
        .fields()
        .iter()
        .map(|f| {
            let t = f.data_type();
            match t {
                DataType::Boolean => Some(2),
                t if t.is_primitive() => t.primitive_width().map(|w| w + 1),
                _ => None,
            }
        })
        .sum()
}

/// Key (Arrow row encoding of the key columns) → live rows.
///
/// Memory per live row (see [`PkIndex::heap_bytes`]): a key that encodes to at most 16
/// bytes of fixed width takes one 24-byte hash bucket plus a control byte, at a load factor
/// between 44% and 88% (28–55 bytes, about 40 on average); a wider key adds its encoding
/// in a heap allocation. File paths are stored once, rows refer to them by number.
#[derive(Debug, Default)]
pub struct PkIndex {
    files: Vec<Arc<str>>,
    file_ids: HashMap<Arc<str>, u32>,
    keys: Keys,
    rows: usize,
    from_checkpoint: bool,
}

impl PkIndex {
    /// An empty index for keys of `key_schema`.
    pub fn new(key_schema: &SchemaRef) -> Self {
        let keys = match fixed_width(key_schema) {
            Some(w) if w <= NARROW => Keys::Narrow(Entries::default(), w),
            _ => Keys::Wide(Entries::default()),
        };
        Self {
            keys,
            ..Self::default()
        }
    }

    /// Number of live rows indexed.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Approximate memory held by the index: its hash tables, row lists, keys and file list.
    pub fn heap_bytes(&self) -> usize {
        let keys = match &self.keys {
            Keys::Narrow(e, _) => e.table_bytes(),
            Keys::Wide(e) => {
                let heap: usize = e.iter().map(|(k, _)| k.len().next_multiple_of(16)).sum();
                e.table_bytes() + heap
            }
        };
        let files: usize = self.files.iter().map(|f| f.len() + 64).sum();
        keys + files
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

    /// Forgets data file `path` (removed from the table) and returns its number, if known.
    /// Its number is never reused; rows of it must be removed by the caller.
    pub fn forget_file(&mut self, path: &str) -> Option<u32> {
        let id = self.file_ids.remove(path)?;
        self.files[id as usize] = Arc::from("");
        Some(id)
    }

    /// The path of data file number `file`.
    pub fn path(&self, file: u32) -> &str {
        &self.files[file as usize]
    }

    /// The live rows of `key`.
    pub fn get(&self, key: &[u8]) -> Vec<Loc> {
        match &self.keys {
            Keys::Narrow(e, _) if key.len() <= NARROW => e.get(&narrow(key)),
            Keys::Narrow(..) => Vec::new(),
            Keys::Wide(e) => e.get(key),
        }
    }

    /// Replaces the rows of `key`.
    pub fn set(&mut self, key: Box<[u8]>, locs: Vec<Loc>) {
        let added = locs.len();
        let removed = match &mut self.keys {
            Keys::Narrow(e, _) => e.set(narrow(&key), locs),
            Keys::Wide(e) => e.set(key, locs),
        };
        self.rows = self.rows + added - removed;
    }

    /// Adds one row to `key`.
    pub fn push(&mut self, key: &[u8], loc: Loc) {
        self.rows += 1;
        match &mut self.keys {
            Keys::Narrow(e, _) => e.push(narrow(key), loc),
            Keys::Wide(e) => e.push(key.into(), loc),
        }
    }

    /// Removes row `loc` of `key` (a position delete); false when the index does not have it.
    fn remove(&mut self, key: &[u8], loc: Loc) -> bool {
        let done = match &mut self.keys {
            Keys::Narrow(e, _) => key.len() <= NARROW && e.remove(&narrow(key), loc),
            Keys::Wide(e) => e.remove(&Box::<[u8]>::from(key), loc),
        };
        if done {
            self.rows -= 1;
        }
        done
    }

    /// Every key (its row encoding) with its rows.
    fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &[Loc])> + Send + '_> {
        match &self.keys {
            Keys::Narrow(e, width) => Box::new(e.iter().map(|(k, l)| (&k[..*width], l))),
            Keys::Wide(e) => Box::new(e.iter().map(|(k, l)| (k.as_ref(), l))),
        }
    }

    /// Forgets every row (TRUNCATE).
    pub fn clear(&mut self) {
        match &mut self.keys {
            Keys::Narrow(e, _) => e.clear(),
            Keys::Wide(e) => e.clear(),
        }
        self.files.clear();
        self.file_ids.clear();
        self.rows = 0;
    }

    /// Builds the index of `table`'s current snapshot from its files.
    pub async fn rebuild(table: &Table, key_schema: &SchemaRef) -> Result<Self> {
        let mut index = PkIndex::new(key_schema);
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
    let pos = u32::try_from(pos).map_err(|_| LakehouseError::PositionOverflow(pos))?;
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use rand::{Rng, SeedableRng};

    use super::*;

    fn keys_of(schema: &SchemaRef, column: ArrayRef) -> arrow::row::Rows {
        key_converter(schema)
            .unwrap()
            .convert_columns(&[column])
            .unwrap()
    }

    /// Random pushes and replacements against a plain map: the index answers the same.
    fn agrees_with_a_model(schema: SchemaRef, column: ArrayRef) -> PkIndex {
        let rows = keys_of(&schema, column);
        let mut index = PkIndex::new(&schema);
        let mut model: HashMap<Vec<u8>, Vec<Loc>> = HashMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for step in 0..20_000u32 {
            let key = rows.row(rng.random_range(0..rows.num_rows()));
            let key = key.as_ref();
            let loc = Loc {
                file: step % 5,
                pos: step,
            };
            match rng.random_range(0..5) {
                4 => {
                    // A position delete of one of the key's rows (or of a row it lacks).
                    let have = model.get(key).cloned().unwrap_or_default();
                    let target = have.first().copied().unwrap_or(loc);
                    assert_eq!(index.remove(key, target), !have.is_empty());
                    if let Some(v) = model.get_mut(key) {
                        v.retain(|l| *l != target);
                        if v.is_empty() {
                            model.remove(key);
                        }
                    }
                }
                0 => {
                    index.push(key, loc);
                    model.entry(key.to_vec()).or_default().push(loc);
                }
                1 => {
                    index.set(key.into(), Vec::new());
                    model.remove(key);
                }
                2 => {
                    index.set(key.into(), vec![loc, Loc { file: 9, pos: step }]);
                    model.insert(key.to_vec(), vec![loc, Loc { file: 9, pos: step }]);
                }
                _ => {
                    index.set(key.into(), vec![loc]);
                    model.insert(key.to_vec(), vec![loc]);
                }
            }
        }
        for k in 0..rows.num_rows() {
            let key = rows.row(k);
            let want = model.get(key.as_ref()).cloned().unwrap_or_default();
            assert_eq!(index.get(key.as_ref()), want, "key {k}");
        }
        assert_eq!(index.len(), model.values().map(Vec::len).sum::<usize>());
        let listed: usize = index.iter().map(|(_, l)| l.len()).sum();
        assert_eq!(listed, index.len());
        for (key, locs) in index.iter() {
            assert_eq!(model.get(key).map(Vec::as_slice), Some(locs));
        }
        index
    }

    #[test]
    fn narrow_and_wide_keys_behave_like_a_map() {
        let ints: SchemaRef = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let index = agrees_with_a_model(
            ints,
            Arc::new(Int64Array::from_iter_values(
                (0..500).map(|i| i * 7919 - 100),
            )),
        );
        assert!(matches!(index.keys, Keys::Narrow(_, 9)));
        let text: SchemaRef = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let index = agrees_with_a_model(
            text,
            Arc::new(StringArray::from_iter_values(
                (0..500).map(|i| format!("key-{i}")),
            )),
        );
        assert!(matches!(index.keys, Keys::Wide(_)));
    }

    #[test]
    fn a_bigint_key_costs_under_sixty_bytes_a_row() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let n = 1_000_000;
        let rows = keys_of(&schema, Arc::new(Int64Array::from_iter_values(0..n)));
        let mut index = PkIndex::new(&schema);
        for i in 0..rows.num_rows() {
            index.push(
                rows.row(i).as_ref(),
                Loc {
                    file: 0,
                    pos: i as u32,
                },
            );
        }
        let per_row = index.heap_bytes() as f64 / n as f64;
        assert!(per_row < 60.0, "{per_row:.1} bytes a row");
        assert_eq!(
            index.get(rows.row(123_456).as_ref()),
            vec![Loc {
                file: 0,
                pos: 123_456
            }]
        );
    }
}
