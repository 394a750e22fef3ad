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
mod entries;
use crate::{LakehouseError, Result};
pub use checkpoint::INDEX_DIR;
pub(crate) use entries::Hasher;
use entries::{Compact, Entries, Expanded};

/// A row of a committed data file: the file (by its number in the index) and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    /// Number of the data file in the index's file list.
    pub file: u32,
    /// Row position in that file.
    pub pos: u32,
}

/// Key → live rows where keys have a compact form of `N` bytes (see [`Compact`]); keys
/// without one (a null in a key of all columns) are kept whole in `odd`.
#[derive(Debug)]
struct Packed<const N: usize> {
    main: Entries<[u8; N]>,
    layout: Compact,
    odd: Entries<Box<[u8]>>,
}

impl<const N: usize> Packed<N> {
    fn new(layout: Compact) -> Self {
        Self {
            main: Entries::default(),
            layout,
            odd: Entries::default(),
        }
    }

    fn get(&self, key: &[u8]) -> Vec<Loc> {
        match self.layout.pack::<N>(key) {
            Some(k) => self.main.get(&k),
            None => self.odd.get(key),
        }
    }

    fn set(&mut self, key: Box<[u8]>, locs: Vec<Loc>) -> usize {
        match self.layout.pack::<N>(&key) {
            Some(k) => self.main.set(k, locs),
            None => self.odd.set(key, locs),
        }
    }

    fn push(&mut self, key: &[u8], loc: Loc) {
        match self.layout.pack::<N>(key) {
            Some(k) => self.main.push(k, loc),
            None => self.odd.push(key.into(), loc),
        }
    }

    fn remove(&mut self, key: &[u8], loc: Loc) -> bool {
        match self.layout.pack::<N>(key) {
            Some(k) => self.main.remove(&k, loc),
            None => self.odd.remove(&Box::<[u8]>::from(key), loc),
        }
    }

    fn clear(&mut self) {
        self.main.clear();
        self.odd.clear();
    }

    fn iter(&self) -> impl Iterator<Item = (KeyRef<'_>, &[Loc])> + Send + '_ {
        self.main
            .iter()
            .map(|(k, l)| (KeyRef::Stack(self.layout.unpack(k)), l))
            .chain(self.odd.iter().map(|(k, l)| (KeyRef::Heap(k), l)))
    }

    fn heap_bytes(&self) -> usize {
        self.main.table_bytes() + wide_bytes(&self.odd)
    }
}

/// Bytes of a table of whole keys: its buckets and the keys on the heap.
fn wide_bytes(e: &Entries<Box<[u8]>>) -> usize {
    let heap: usize = e.iter().map(|(k, _)| k.len().next_multiple_of(16)).sum();
    e.table_bytes() + heap
}

/// A key's row encoding as the index hands it out: borrowed, or rebuilt from its compact
/// form.
enum KeyRef<'a> {
    Heap(&'a [u8]),
    Stack(Expanded),
}

impl AsRef<[u8]> for KeyRef<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            KeyRef::Heap(k) => k,
            KeyRef::Stack(k) => k.as_ref(),
        }
    }
}

/// The index's keys: compact inline values when the key columns have a fixed width (8
/// bytes of values: a `bigint`, `int`, `date`, `timestamp`, two `int`s; 16: a `numeric`,
/// two `bigint`s), else whole encodings on the heap.
#[derive(Debug)]
enum Keys {
    Small(Packed<8>),
    Medium(Packed<16>),
    Wide(Entries<Box<[u8]>>),
}

impl Default for Keys {
    fn default() -> Self {
        Keys::Wide(Entries::default())
    }
}

/// The width of each key column's Arrow row encoding (a null byte, then the value) when
/// every column has a fixed width.
fn fixed_widths(key_schema: &SchemaRef) -> Option<Vec<usize>> {
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
        .collect()
}

/// Key (Arrow row encoding of the key columns) → live rows.
///
/// Memory per live row (see [`PkIndex::heap_bytes`]): a key of fixed-width columns whose
/// values fit 8 bytes takes one 16-byte hash bucket plus a control byte (24 bytes with 16
/// bytes of values), at a load factor between 44% and 88% (19–39 bytes, 26 on average); a
/// wider key takes a 24-byte bucket and its encoding on the heap. File paths are stored
/// once, rows refer to them by number.
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
        let keys = match fixed_widths(key_schema).and_then(Compact::new) {
            Some(c) if c.values() <= 8 => Keys::Small(Packed::new(c)),
            Some(c) => Keys::Medium(Packed::new(c)),
            None => Keys::Wide(Entries::default()),
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
            Keys::Small(p) => p.heap_bytes(),
            Keys::Medium(p) => p.heap_bytes(),
            Keys::Wide(e) => wide_bytes(e),
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
            Keys::Small(p) => p.get(key),
            Keys::Medium(p) => p.get(key),
            Keys::Wide(e) => e.get(key),
        }
    }

    /// Replaces the rows of `key`.
    pub fn set(&mut self, key: Box<[u8]>, locs: Vec<Loc>) {
        let added = locs.len();
        let removed = match &mut self.keys {
            Keys::Small(p) => p.set(key, locs),
            Keys::Medium(p) => p.set(key, locs),
            Keys::Wide(e) => e.set(key, locs),
        };
        self.rows = self.rows + added - removed;
    }

    /// Adds one row to `key`.
    pub fn push(&mut self, key: &[u8], loc: Loc) {
        self.rows += 1;
        match &mut self.keys {
            Keys::Small(p) => p.push(key, loc),
            Keys::Medium(p) => p.push(key, loc),
            Keys::Wide(e) => e.push(key.into(), loc),
        }
    }

    /// Removes row `loc` of `key` (a position delete); false when the index does not have it.
    fn remove(&mut self, key: &[u8], loc: Loc) -> bool {
        let done = match &mut self.keys {
            Keys::Small(p) => p.remove(key, loc),
            Keys::Medium(p) => p.remove(key, loc),
            Keys::Wide(e) => e.remove(&Box::<[u8]>::from(key), loc),
        };
        if done {
            self.rows -= 1;
        }
        done
    }

    /// Every key (its row encoding) with its rows.
    fn iter(&self) -> Box<dyn Iterator<Item = (KeyRef<'_>, &[Loc])> + Send + '_> {
        match &self.keys {
            Keys::Small(p) => Box::new(p.iter()),
            Keys::Medium(p) => Box::new(p.iter()),
            Keys::Wide(e) => Box::new(e.iter().map(|(k, l)| (KeyRef::Heap(k), l))),
        }
    }

    /// Forgets every row (TRUNCATE).
    pub fn clear(&mut self) {
        match &mut self.keys {
            Keys::Small(p) => p.clear(),
            Keys::Medium(p) => p.clear(),
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

    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use rand::{Rng, SeedableRng};

    use super::*;

    fn keys_of(schema: &SchemaRef, columns: &[ArrayRef]) -> arrow::row::Rows {
        key_converter(schema)
            .unwrap()
            .convert_columns(columns)
            .unwrap()
    }

    /// Random pushes and replacements against a plain map: the index answers the same.
    fn agrees_with_a_model(schema: SchemaRef, columns: &[ArrayRef]) -> PkIndex {
        let rows = keys_of(&schema, columns);
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
            assert_eq!(model.get(key.as_ref()).map(Vec::as_slice), Some(locs));
        }
        index
    }

    #[test]
    fn narrow_and_wide_keys_behave_like_a_map() {
        let ints: SchemaRef = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let index = agrees_with_a_model(
            ints,
            &[Arc::new(Int64Array::from_iter_values(
                (0..500).map(|i| i * 7919 - 100),
            ))],
        );
        assert!(matches!(index.keys, Keys::Small(_)));
        let text: SchemaRef = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
        let index = agrees_with_a_model(
            text,
            &[Arc::new(StringArray::from_iter_values(
                (0..500).map(|i| format!("key-{i}")),
            ))],
        );
        assert!(matches!(index.keys, Keys::Wide(_)));
    }

    /// A key of all columns may hold nulls: such keys have no compact form and are kept
    /// whole beside the compact ones, answering the same.
    #[test]
    fn keys_with_nulls_live_beside_compact_ones() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Int32, true),
        ]));
        let a = Int32Array::from_iter((0..400).map(|i| (i % 7 != 0).then_some(i % 50)));
        let b = Int32Array::from_iter((0..400).map(|i| (i % 5 != 0).then_some(i / 50)));
        let index = agrees_with_a_model(schema, &[Arc::new(a), Arc::new(b)]);
        let Keys::Small(p) = &index.keys else {
            panic!("two ints pack into 8 bytes: {:?}", index.keys)
        };
        assert!(
            p.odd.iter().count() > 0,
            "no key with a null was kept whole"
        );
        assert!(p.main.iter().count() > 0, "no key was packed");
    }

    #[test]
    fn two_bigints_pack_into_sixteen_bytes_and_a_numeric_with_more_does_not() {
        let two: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ]));
        let index = agrees_with_a_model(
            two,
            &[
                Arc::new(Int64Array::from_iter_values((0..300).map(|i| i % 17))),
                Arc::new(Int64Array::from_iter_values((0..300).map(|i| -i * 3))),
            ],
        );
        assert!(matches!(index.keys, Keys::Medium(_)));
        let wide: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Decimal128(12, 2), false),
            Field::new("b", DataType::Int64, false),
        ]));
        assert!(matches!(PkIndex::new(&wide).keys, Keys::Wide(_)));
    }

    #[test]
    fn a_bigint_key_costs_under_forty_bytes_a_row() {
        let schema: SchemaRef =
            Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let n = 1_000_000;
        let rows = keys_of(&schema, &[Arc::new(Int64Array::from_iter_values(0..n))]);
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
        assert!(per_row < 40.0, "{per_row:.1} bytes a row");
        assert_eq!(
            index.get(rows.row(123_456).as_ref()),
            vec![Loc {
                file: 0,
                pos: 123_456
            }]
        );
    }
}
