//! A data-file writer on its own task: the caller hands batches over a short queue and goes
//! on (reading the source, planning, indexing) while Parquet encoding and compression, most
//! of a copy's work, run on another core.
//!
//! The queue holds at most [`QUEUE`] batches, so memory stays bounded by the caller's batch
//! size. A writer dropped without [`SpawnedWriter::close`] takes what it was handed and
//! stops without finishing its files: they are never committed and are left to orphan
//! removal, as an abandoned in-line writer's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use iceberg::spec::{DataFile, PartitionKey};
use iceberg::writer::IcebergWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{LakehouseError, Result};

/// Batches waiting for the writer task at most.
const QUEUE: usize = 2;

/// Writers on blocking-pool threads at most, process-wide. Each holds its thread for its
/// whole life, and the pool (512 threads) also serves local file I/O: with a writer per
/// table, a batch touching hundreds of tables would take every thread and wait forever for
/// one. Writers beyond this many run as ordinary tasks.
static BLOCKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

type Item = (Option<PartitionKey>, arrow::array::RecordBatch);

/// A data-file writer running on a task of its own (see the module docs).
pub struct SpawnedWriter {
    tx: Option<mpsc::Sender<Item>>,
    task: Option<JoinHandle<Result<Vec<DataFile>>>>,
    /// Set when dropped without `close`: the task stops without finishing its files.
    abandoned: Arc<AtomicBool>,
    /// The table written, for errors.
    table: String,
    /// The writer's error, once it failed: every later call reports it again.
    failed: Option<String>,
}

impl SpawnedWriter {
    /// Runs a writer of partitioned rows (each batch comes with its partition's key).
    pub fn partitioned<W: PartitioningWriter>(table: String, mut writer: W) -> Self {
        Self::spawn(
            table.clone(),
            move |mut rx: mpsc::Receiver<Item>, abandoned: Arc<AtomicBool>| async move {
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
                if abandoned.load(Ordering::Acquire) {
                    return Ok(Vec::new()); // dropped unclosed: its files are never finished
                }
                writer
                    .close()
                    .await
                    .map_err(LakehouseError::iceberg(&table))
            },
        )
    }

    /// Runs a writer of unpartitioned rows.
    pub fn plain<W: IcebergWriter>(table: String, mut writer: W) -> Self {
        Self::spawn(
            table.clone(),
            move |mut rx: mpsc::Receiver<Item>, abandoned: Arc<AtomicBool>| async move {
                while let Some((_, batch)) = rx.recv().await {
                    writer
                        .write(batch)
                        .await
                        .map_err(LakehouseError::iceberg(&table))?;
                }
                if abandoned.load(Ordering::Acquire) {
                    return Ok(Vec::new()); // dropped unclosed: its files are never finished
                }
                writer
                    .close()
                    .await
                    .map_err(LakehouseError::iceberg(&table))
            },
        )
    }

    fn spawn<F, Fut>(table: String, run: F) -> Self
    where
        F: FnOnce(mpsc::Receiver<Item>, Arc<AtomicBool>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<DataFile>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = abandoned.clone();
        // On a blocking-pool thread, not an async worker: encoding holds the thread for
        // long stretches, and the workers must stay free for I/O (the source connection's
        // task among them). Its own I/O still runs on this runtime.
        let task = match BLOCKING.try_acquire() {
            Ok(permit) => {
                // Moved into the thread's closure: given back when the closure is dropped,
                // whether it ran to the end, panicked, or never started (runtime shutdown).
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    handle.block_on(run(rx, flag))
                })
            }
            Err(_) => tokio::spawn(run(rx, flag)),
        };
        Self {
            tx: Some(tx),
            task: Some(task),
            abandoned,
            table,
            failed: None,
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
            return Err(match &self.failed {
                Some(first) => LakehouseError::WriterFailed {
                    table: self.table.clone(),
                    first: first.clone(),
                },
                None => LakehouseError::PlanInvariant(format!(
                    "{}: a data-file writer was joined twice",
                    self.table
                )),
            });
        };
        let out = match task.await {
            Ok(r) => r,
            // A panic in the writer is this caller's panic, as if it had written in line.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(LakehouseError::PlanInvariant(format!(
                "{}: a data-file writer was cancelled",
                self.table
            ))),
        };
        if let Err(e) = &out {
            self.failed = Some(e.to_string());
        }
        out
    }
}

impl Drop for SpawnedWriter {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.abandoned.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what it is handed; its close needs a blocking-pool thread, as a local file's
    /// write and fsync do. `alive` is held until the writer is dropped.
    struct Counting {
        batches: Arc<std::sync::atomic::AtomicUsize>,
        closed: Arc<std::sync::atomic::AtomicUsize>,
        _alive: Arc<()>,
    }

    #[async_trait::async_trait]
    impl IcebergWriter for Counting {
        async fn write(&mut self, _: arrow::array::RecordBatch) -> iceberg::Result<()> {
            self.batches.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn close(&mut self) -> iceberg::Result<Vec<DataFile>> {
            let closed = self.closed.clone();
            tokio::task::spawn_blocking(move || closed.fetch_add(1, Ordering::SeqCst))
                .await
                .expect("blocking close");
            Ok(Vec::new())
        }
    }

    fn empty_batch() -> arrow::array::RecordBatch {
        arrow::array::RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()))
    }

    /// More writers open at once than the blocking pool has threads (a batch touching
    /// hundreds of tables): every one takes its batches and closes, none waits forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_open_writers_than_blocking_threads_all_finish() {
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        const WRITERS: usize = 600; // tokio's blocking pool holds 512 threads
        let run = async {
            let mut open = Vec::new();
            for i in 0..WRITERS {
                let w = Counting {
                    batches: batches.clone(),
                    closed: closed.clone(),
                    _alive: Arc::new(()),
                };
                open.push(SpawnedWriter::plain(format!("t{i}"), w));
            }
            for w in &mut open {
                for _ in 0..QUEUE + 2 {
                    w.write(None, empty_batch()).await.unwrap();
                }
            }
            for w in open {
                w.close().await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("writers stuck waiting for blocking threads");
        assert_eq!(batches.load(Ordering::SeqCst), WRITERS * (QUEUE + 2));
        assert_eq!(closed.load(Ordering::SeqCst), WRITERS);
    }

    /// A writer dropped without `close` takes what it was handed and stops, without
    /// finishing (encoding, uploading) files nobody will commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_writer_does_not_finish_its_files() {
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let alive = Arc::new(());
        let mut w = SpawnedWriter::plain(
            "t".into(),
            Counting {
                batches: batches.clone(),
                closed: closed.clone(),
                _alive: alive.clone(),
            },
        );
        w.write(None, empty_batch()).await.unwrap();
        drop(w);
        // The task drops its writer when it ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while Arc::strong_count(&alive) > 1 {
            assert!(std::time::Instant::now() < deadline, "the task never ended");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(batches.load(Ordering::SeqCst), 1);
        assert_eq!(
            closed.load(Ordering::SeqCst),
            0,
            "a dropped writer closed its files"
        );
    }

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
        let e = failed.expect("the failure reaches a write once the queue is full");
        assert!(e.to_string().contains("disk full"), "{e}");
        // A caller going on anyway keeps hearing the first error, not a bookkeeping one.
        let again = w.write(None, batch.clone()).await.unwrap_err();
        assert!(
            matches!(&again, LakehouseError::WriterFailed { first, .. } if first.contains("disk full")),
            "{again}"
        );
        let closed = w.close().await.unwrap_err();
        assert!(closed.to_string().contains("disk full"), "{closed}");
    }
}
