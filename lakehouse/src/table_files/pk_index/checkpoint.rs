//! The index's checkpoint: an Arrow IPC stream next to the table, written and read a batch
//! at a time, tagged with the snapshot it describes, the key layout and its row count.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, BinaryArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};
use arrow::record_batch::RecordBatch;
use iceberg::table::Table;

use super::{Loc, PkIndex};
use crate::{LakehouseError, Result};

/// Folder, under a silver table's location, of its index checkpoint; not table data, so
/// orphan removal leaves it alone.
pub const INDEX_DIR: &str = "bitvelocity-index";
const CHECKPOINT_FILE: &str = "pk.arrow";
const META_SNAPSHOT: &str = "bitvelocity.snapshot-id";
const META_KEY: &str = "bitvelocity.key";
const META_FILES: &str = "bitvelocity.files";
const META_ROWS: &str = "bitvelocity.rows";
/// Bytes read per request while loading a checkpoint.
const CHECKPOINT_CHUNK: u64 = 8 << 20;

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
        let loaded = match Self::load(table, key_schema).await {
            Ok(Some((index, at))) => index.catch_up(table, key_schema, at).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(Some((mut index, replayed))) => {
                index.from_checkpoint = true;
                tracing::info!(table = %table.identifier(), rows = index.len(), replayed, "loaded the key index checkpoint and replayed the snapshots after it");
                Ok(index)
            }
            Ok(None) => Self::rebuild(table, key_schema).await,
            Err(e) => {
                tracing::warn!(table = %table.identifier(), error = %e, "unusable primary-key index checkpoint; rebuilding from the table");
                Self::rebuild(table, key_schema).await
            }
        }
    }

    /// The checkpoint of `table` with the snapshot it describes, if there is one for `key_schema`.
    async fn load(table: &Table, key_schema: &SchemaRef) -> Result<Option<(Self, i64)>> {
        if table.metadata().current_snapshot().is_none() {
            return Ok(None);
        }
        let path = checkpoint_path(table);
        let file_io = table.file_io();
        let err = |e| LakehouseError::iceberg(&path)(e);
        if !file_io.exists(&path).await.map_err(err)? {
            return Ok(None);
        }
        // Streamed in pieces: a checkpoint of a large table never sits in memory whole.
        let input = file_io.new_input(&path).map_err(err)?;
        let size = input.metadata().await.map_err(err)?.size;
        let reader = input.reader().await.map_err(err)?;
        let mut decoder = arrow::ipc::reader::StreamDecoder::new();
        let mut index: Option<(PkIndex, usize, i64)> = None;
        let mut read_rows = 0usize;
        let mut offset = 0u64;
        while offset < size {
            let end = (offset + CHECKPOINT_CHUNK).min(size);
            let mut buf = arrow::buffer::Buffer::from(reader.read(offset..end).await.map_err(err)?);
            offset = end;
            loop {
                let batch = decoder.decode(&mut buf)?;
                if index.is_none()
                    && let Some(schema) = decoder.schema()
                {
                    match Self::from_header(schema.metadata(), key_schema)? {
                        Some(found) => index = Some(found),
                        None => return Ok(None),
                    }
                }
                let Some(batch) = batch else { break };
                let Some((index, _, _)) = index.as_mut() else {
                    return Err(LakehouseError::BadIndexCheckpoint(format!(
                        "{path}: rows before the schema"
                    )));
                };
                read_rows += batch.num_rows();
                index.push_batch(&path, &batch)?;
            }
        }
        decoder.finish()?;
        let Some((index, rows, snapshot)) = index else {
            return Err(LakehouseError::BadIndexCheckpoint(format!(
                "{path}: no schema"
            )));
        };
        if read_rows != rows {
            return Err(LakehouseError::BadIndexCheckpoint(format!(
                "{path}: {read_rows} rows of the {rows} its header promises"
            )));
        }
        Ok(Some((index, snapshot)))
    }

    /// An empty index with the file list of a checkpoint header, the rows it promises and
    /// the snapshot it describes; `None` when the checkpoint is of another key.
    fn from_header(
        meta: &HashMap<String, String>,
        key_schema: &SchemaRef,
    ) -> Result<Option<(Self, usize, i64)>> {
        if meta.get(META_KEY) != Some(&key_fingerprint(key_schema)) {
            return Ok(None);
        }
        let snapshot = meta
            .get(META_SNAPSHOT)
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                LakehouseError::BadIndexCheckpoint("index checkpoint without a snapshot".into())
            })?;
        let rows = meta
            .get(META_ROWS)
            .and_then(|r| r.parse::<usize>().ok())
            .ok_or_else(|| {
                LakehouseError::BadIndexCheckpoint("index checkpoint without a row count".into())
            })?;
        let mut index = PkIndex::new(key_schema);
        // One path per line, by number; an empty line is a file forgotten since (rewritten).
        let files = meta.get(META_FILES).map(String::as_str).unwrap_or_default();
        for path in files.split('\n').filter(|_| !files.is_empty()) {
            if path.is_empty() {
                index.files.push(Arc::from(""));
            } else {
                index.file_id(path);
            }
        }
        Ok(Some((index, rows, snapshot)))
    }

    /// Adds the rows of one checkpoint batch (key, file number, position).
    fn push_batch(&mut self, path: &str, batch: &RecordBatch) -> Result<()> {
        let bad =
            || LakehouseError::BadIndexCheckpoint(format!("{path}: not a key index checkpoint"));
        if batch.num_columns() != 3 {
            return Err(bad());
        }
        let keys = batch.column(0).as_binary_opt::<i32>().ok_or_else(bad)?;
        let files = batch
            .column(1)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(bad)?;
        let positions = batch
            .column(2)
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(bad)?;
        for i in 0..batch.num_rows() {
            let file = files.value(i);
            if file as usize >= self.files.len() {
                return Err(LakehouseError::BadIndexCheckpoint(format!(
                    "{path}: file number {file} beyond its file list"
                )));
            }
            self.push(
                keys.value(i),
                Loc {
                    file,
                    pos: positions.value(i),
                },
            );
        }
        Ok(())
    }

    /// Writes the index as the checkpoint of `table` at its current snapshot (which the
    /// index must describe), streamed a piece at a time. A checkpoint cut short is never
    /// used: its header says how many rows follow (and the store publishes a file only
    /// once it is complete).
    pub async fn checkpoint(&self, table: &Table, key_schema: &SchemaRef) -> Result<()> {
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(());
        };
        let path = checkpoint_path(table);
        let err = |e| LakehouseError::iceberg(&path)(e);
        let mut out = table
            .file_io()
            .new_output(&path)
            .map_err(err)?
            .writer()
            .await
            .map_err(err)?;
        // Files forgotten since (rewritten) are left out and the rest renumbered, so the
        // list does not grow with every compaction.
        let mut renumber = vec![u32::MAX; self.files.len()];
        let mut kept: Vec<&str> = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            if !f.is_empty() {
                renumber[i] = kept.len() as u32;
                kept.push(f);
            }
        }
        let metadata = HashMap::from([
            (
                META_SNAPSHOT.to_string(),
                snapshot.snapshot_id().to_string(),
            ),
            (META_KEY.to_string(), key_fingerprint(key_schema)),
            (META_ROWS.to_string(), self.rows.to_string()),
            (META_FILES.to_string(), kept.join("\n")),
        ]);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("key", DataType::Binary, false),
                Field::new("file", DataType::UInt32, false),
                Field::new("pos", DataType::UInt32, false),
            ],
            metadata,
        ));
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
        const CHUNK: usize = 64 * 1024;
        let mut cols = CheckpointColumns::default();
        let mut entries = self.iter();
        loop {
            let more = entries.next();
            let done = more.is_none();
            if let Some((key, locs)) = more {
                for l in locs {
                    let file = renumber.get(l.file as usize).copied().unwrap_or(u32::MAX);
                    if file == u32::MAX {
                        return Err(LakehouseError::BadIndexCheckpoint(format!(
                            "writing {path}: a row of forgotten file #{}",
                            l.file
                        )));
                    }
                    cols.push(key.as_ref(), super::Loc { file, pos: l.pos });
                }
                if cols.len() < CHUNK {
                    continue;
                }
            }
            // A batch at a time: encoded, handed to the store, dropped.
            if cols.len() > 0 {
                writer.write(&cols.take(&schema)?)?;
                let bytes = std::mem::take(writer.get_mut());
                out.write(bytes.into()).await.map_err(err)?;
            }
            if done {
                break;
            }
        }
        writer.finish()?;
        let bytes = std::mem::take(writer.get_mut());
        out.write(bytes.into()).await.map_err(err)?;
        out.close().await.map_err(err)?;
        tracing::debug!(table = %table.identifier(), rows = self.len(), "checkpointed primary-key index");
        Ok(())
    }
}

/// The columns of the checkpoint batch being collected.
#[derive(Default)]
struct CheckpointColumns {
    keys: Vec<u8>,
    offsets: Vec<i32>,
    files: Vec<u32>,
    positions: Vec<u32>,
}

impl CheckpointColumns {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn push(&mut self, key: &[u8], l: Loc) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.keys.extend_from_slice(key);
        self.offsets.push(self.keys.len() as i32);
        self.files.push(l.file);
        self.positions.push(l.pos);
    }

    /// The collected rows as one batch; starts collecting afresh.
    fn take(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let c = std::mem::take(self);
        let keys = BinaryArray::try_new(
            arrow::buffer::OffsetBuffer::new(c.offsets.into()),
            c.keys.into(),
            None,
        )?;
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(keys),
                Arc::new(UInt32Array::from(c.files)),
                Arc::new(UInt32Array::from(c.positions)),
            ],
        )?)
    }
}
