//! Silver's pending change rows: in memory up to a budget, then spilled to a local scratch
//! file, so one source transaction of millions of rows never has to fit in memory (it
//! cannot be split across commits: no reader may see part of it).
//!
//! The scratch file is unnamed (`tempfile::tempfile`): the operating system removes it when
//! it is closed, crash included. It holds nothing durable: the rows are in bronze already,
//! or still in the source's WAL, until silver commits them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::{LakehouseError, Result};

/// Where one pending batch is.
#[derive(Debug)]
enum Slot {
    Memory(RecordBatch),
    /// Byte range of its own Arrow IPC stream in the scratch file, and its row count.
    Spilled {
        offset: u64,
        len: u64,
        rows: usize,
    },
}

/// The change rows a silver table has buffered since its last commit, in arrival order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    slots: Vec<Slot>,
    scratch: Option<File>,
    /// End of the scratch file's written part.
    end: u64,
    /// Arrow bytes of the batches held in memory.
    memory: usize,
    rows: usize,
}

impl Pending {
    /// Number of batches.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no row is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of pending rows.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// Arrow bytes of the batches held in memory.
    pub(super) fn memory(&self) -> usize {
        self.memory
    }

    /// Number of batches written to the scratch file.
    pub(super) fn spilled(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Spilled { .. }))
            .count()
    }

    /// Appends `batch`, spilling it when the batches in memory would exceed `budget` bytes.
    pub(super) fn push(&mut self, batch: RecordBatch, budget: usize) -> Result<()> {
        let size = batch.get_array_memory_size();
        self.rows += batch.num_rows();
        if self.memory + size <= budget || self.slots.is_empty() {
            self.memory += size;
            self.slots.push(Slot::Memory(batch));
            return Ok(());
        }
        let slot = self.spill(&batch)?;
        self.slots.push(slot);
        Ok(())
    }

    fn spill(&mut self, batch: &RecordBatch) -> Result<Slot> {
        let err = |op| move |source| LakehouseError::Spill { op, source };
        if self.scratch.is_none() {
            self.scratch = Some(tempfile::tempfile().map_err(err("creating"))?);
            tracing::info!(
                rows = self.rows,
                "silver's pending rows exceed the memory budget; spilling to a scratch file"
            );
        }
        let file = self.scratch.as_mut().ok_or_else(|| {
            LakehouseError::ScratchLost("scratch file vanished while spilling".into())
        })?;
        let mut bytes = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut bytes, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
        }
        file.seek(SeekFrom::Start(self.end))
            .map_err(err("writing"))?;
        file.write_all(&bytes).map_err(err("writing"))?;
        let slot = Slot::Spilled {
            offset: self.end,
            len: bytes.len() as u64,
            rows: batch.num_rows(),
        };
        self.end += bytes.len() as u64;
        Ok(slot)
    }

    /// Batch `b`, read back from the scratch file if it was spilled.
    pub(super) fn get(&self, b: usize) -> Result<RecordBatch> {
        match self.slots.get(b) {
            Some(Slot::Memory(batch)) => Ok(batch.clone()),
            Some(&Slot::Spilled { offset, len, rows }) => {
                // `&File` reads and seeks: reading back needs no exclusive access.
                let mut file = self.scratch.as_ref().ok_or_else(|| {
                    LakehouseError::ScratchLost("spilled rows without a scratch file".into())
                })?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|source| LakehouseError::Spill {
                        op: "reading back",
                        source,
                    })?;
                let mut reader = StreamReader::try_new(file.take(len), None)?;
                let batch = reader.next().transpose()?.ok_or_else(|| {
                    LakehouseError::ScratchLost(format!("spilled batch {b} is empty"))
                })?;
                if batch.num_rows() != rows {
                    return Err(LakehouseError::ScratchLost(format!(
                        "spilled batch {b} read back {} of {rows} rows",
                        batch.num_rows()
                    )));
                }
                Ok(batch)
            }
            None => Err(LakehouseError::ScratchLost(format!(
                "no pending batch {b} (of {})",
                self.slots.len()
            ))),
        }
    }

    /// Rewrites the batches held in memory with `f` (a layout change); spilled ones are
    /// conformed as they are read back.
    pub(super) fn map_memory(
        &mut self,
        mut f: impl FnMut(&RecordBatch) -> Result<RecordBatch>,
    ) -> Result<()> {
        self.memory = 0;
        for slot in &mut self.slots {
            if let Slot::Memory(batch) = slot {
                *batch = f(batch)?;
                self.memory += batch.get_array_memory_size();
            }
        }
        Ok(())
    }

    /// Forgets every pending row (committed, or discarded) and the scratch file with them.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(StringArray::from_iter_values(
                    (from..from + n).map(|i| format!("value {i}")),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn spills_beyond_the_budget_and_reads_every_batch_back() {
        let mut p = Pending::default();
        let budget = batch(0, 1000).get_array_memory_size() * 2;
        for k in 0..10 {
            p.push(batch(k * 1000, 1000), budget).unwrap();
        }
        assert_eq!(p.rows(), 10_000);
        assert_eq!(p.len(), 10);
        assert_eq!(p.spilled(), 8, "two batches fit the budget");
        // Read back out of order: every batch is exactly what was pushed.
        for k in [9, 0, 5, 1, 9, 3] {
            assert_eq!(p.get(k).unwrap(), batch(k as i64 * 1000, 1000));
        }
        assert!(p.get(10).is_err());
        p.clear();
        assert!(p.is_empty());
        assert_eq!(p.spilled(), 0);
    }

    #[test]
    fn the_first_batch_stays_in_memory_even_over_budget() {
        let mut p = Pending::default();
        p.push(batch(0, 100), 1).unwrap();
        p.push(batch(100, 100), 1).unwrap();
        assert_eq!(p.spilled(), 1);
        assert_eq!(p.get(1).unwrap(), batch(100, 100));
    }
}
