//! A data-file writer on its own task: the caller hands batches over a short queue and goes
//! on (reading the source, planning, indexing) while Parquet encoding and compression, most
//! of a copy's work, run on another core.
//!
//! The queue holds at most [`QUEUE`] batches, so memory stays bounded by the caller's batch
//! size. A writer dropped without [`SpawnedWriter::close`] finishes what it was handed and
//! stops: its files are never committed and are left to orphan removal, as an abandoned
//! in-line writer's.

use iceberg::spec::{DataFile, PartitionKey};
use iceberg::writer::IcebergWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{LakehouseError, Result};

/// Batches waiting for the writer task at most.
const QUEUE: usize = 2;

type Item = (Option<PartitionKey>, arrow::array::RecordBatch);

/// A data-file writer running on a task of its own (see the module docs).
pub struct SpawnedWriter {
    tx: Option<mpsc::Sender<Item>>,
    task: Option<JoinHandle<Result<Vec<DataFile>>>>,
}

impl SpawnedWriter {
    /// Runs a writer of partitioned rows (each batch comes with its partition's key).
    pub fn partitioned<W: PartitioningWriter>(table: String, mut writer: W) -> Self {
        Self::spawn(move |mut rx: mpsc::Receiver<Item>| async move {
            while let Some((key, batch)) = rx.recv().await {
                let key = key.ok_or_else(|| {
                    LakehouseError::PlanInvariant(format!(
                        "{table}: a batch without its partition key"
                    ))
                })?;
                writer
                    .write(key, batch)
                    .await
                    .map_err(LakehouseError::iceberg(&table))?;
            }
            writer
                .close()
                .await
                .map_err(LakehouseError::iceberg(&table))
        })
    }

    /// Runs a writer of unpartitioned rows.
    pub fn plain<W: IcebergWriter>(table: String, mut writer: W) -> Self {
        Self::spawn(move |mut rx: mpsc::Receiver<Item>| async move {
            while let Some((_, batch)) = rx.recv().await {
                writer
                    .write(batch)
                    .await
                    .map_err(LakehouseError::iceberg(&table))?;
            }
            writer
                .close()
                .await
                .map_err(LakehouseError::iceberg(&table))
        })
    }

    fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(mpsc::Receiver<Item>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<DataFile>>>,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        // On a blocking-pool thread, not an async worker: encoding holds the thread for
        // long stretches, and the workers must stay free for I/O (the source connection's
        // task among them). Its own I/O still runs on this runtime.
        let handle = tokio::runtime::Handle::current();
        Self {
            tx: Some(tx),
            task: Some(tokio::task::spawn_blocking(move || {
                handle.block_on(run(rx))
            })),
        }
    }

    /// Hands `batch` (of partition `key`, for a partitioned writer) to the writer; fails
    /// with the writer's error once it has failed.
    pub async fn write(
        &mut self,
        key: Option<PartitionKey>,
        batch: arrow::array::RecordBatch,
    ) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send((key, batch)).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The task stopped taking batches: only a failure ends it early.
        self.tx = None;
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(LakehouseError::PlanInvariant(
                "a data-file writer ended before it was closed".into(),
            )),
        }
    }

    /// Finishes the files and returns them (each complete in the store).
    pub async fn close(mut self) -> Result<Vec<DataFile>> {
        self.tx = None;
        self.join().await
    }

    async fn join(&mut self) -> Result<Vec<DataFile>> {
        let Some(task) = self.task.take() else {
            return Err(LakehouseError::PlanInvariant(
                "a data-file writer was joined twice".into(),
            ));
        };
        match task.await {
            Ok(r) => r,
            // A panic in the writer is this caller's panic, as if it had written in line.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(LakehouseError::PlanInvariant(
                "a data-file writer was cancelled".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure inside the task reaches the caller at its next write or at close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_writer_reports_its_error() {
        struct Failing;
        #[async_trait::async_trait]
        impl IcebergWriter for Failing {
            async fn write(&mut self, _: arrow::array::RecordBatch) -> iceberg::Result<()> {
                Err(iceberg::Error::new(
                    iceberg::ErrorKind::Unexpected,
                    "disk full",
                ))
            }
            async fn close(&mut self) -> iceberg::Result<Vec<DataFile>> {
                Ok(Vec::new())
            }
        }
        let batch = arrow::array::RecordBatch::new_empty(std::sync::Arc::new(
            arrow::datatypes::Schema::empty(),
        ));
        let mut w = SpawnedWriter::plain("t".into(), Failing);
        let mut failed = None;
        for _ in 0..QUEUE + 3 {
            if let Err(e) = w.write(None, batch.clone()).await {
                failed = Some(e);
                break;
            }
        }
        let e = match failed {
            Some(e) => e,
            None => w.close().await.expect_err("close after a failed write"),
        };
        assert!(e.to_string().contains("disk full"), "{e}");
    }
}
