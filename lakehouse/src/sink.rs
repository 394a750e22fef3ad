//! The seam between change capture and the lakehouse tables it feeds.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

use crate::{ChangeLogSchema, Result};

/// Snapshot-summary key holding the source commit LSN a table's current snapshot reflects.
pub const SOURCE_LSN_PROPERTY: &str = "bitvelocity.source-lsn";

/// Snapshot-summary key marking a piece of an unfinished initial copy (value: the source
/// position the copy is taken at). Such a snapshot records no [`SOURCE_LSN_PROPERTY`]: the
/// table has no position until the copy's final commit, and a table whose newest snapshot
/// is a piece is copied afresh after a restart, its first commit replacing every file.
pub const COPY_PIECE_PROPERTY: &str = "bitvelocity.copy-piece";

/// Where a commit puts a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitAt {
    /// Complete up to this source position ([`SOURCE_LSN_PROPERTY`]).
    Source(u64),
    /// A piece of the initial copy taken at this position ([`COPY_PIECE_PROPERTY`]).
    CopyPiece(u64),
}

impl CommitAt {
    /// The snapshot-summary property this commit records.
    pub(crate) fn property(self) -> (String, String) {
        match self {
            CommitAt::Source(l) => (SOURCE_LSN_PROPERTY.to_string(), l.to_string()),
            CommitAt::CopyPiece(l) => (COPY_PIECE_PROPERTY.to_string(), l.to_string()),
        }
    }

    /// The source position, or the copy's position for a piece (for logs and checks).
    pub(crate) fn lsn(self) -> u64 {
        match self {
            CommitAt::Source(l) | CommitAt::CopyPiece(l) => l,
        }
    }
}

/// Commits an empty snapshot marking `table` as an unfinished copy (no position), so the
/// next `prepare` reports none and the copy's first commit replaces every file; returns the
/// table after it. Retried on top of a concurrent commit (maintenance).
pub(crate) async fn mark_copy_restart(
    catalog: &dyn iceberg::Catalog,
    commits: &catalog::commit::CommitPath,
    mut table: iceberg::table::Table,
) -> Result<iceberg::table::Table> {
    let mut retry = catalog::Retry::commit_race();
    loop {
        let delta = catalog::commit::RowDelta {
            properties: std::collections::HashMap::from([CommitAt::CopyPiece(0).property()]),
            ..Default::default()
        };
        match commits.commit_row_delta(catalog, &table, delta).await {
            Ok(t) => {
                tracing::info!(table = %t.identifier(), "position forgotten: the table is copied afresh");
                return Ok(t);
            }
            Err(e) if e.is_retryable() && retry.pause().await => {
                table = catalog
                    .load_table(table.identifier())
                    .await
                    .map_err(crate::LakehouseError::iceberg(table.identifier()))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `table`'s newest snapshot is a piece of an initial copy that never finished.
pub fn interrupted_copy(table: &iceberg::table::Table) -> bool {
    table.metadata().current_snapshot().is_some_and(|s| {
        s.summary()
            .additional_properties
            .contains_key(COPY_PIECE_PROPERTY)
    })
}

/// Where a sink's tables stand, as read back from their last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableProgress {
    /// Source commit LSN of the last source transaction whose changes are committed
    /// to this table; `None` when the table has never been committed (no initial copy yet).
    pub source_lsn: Option<u64>,
}

/// A destination for change batches that records the source position with the data.
///
/// Contract, which the ingestion pipeline relies on for exactly-once delivery:
/// - **Which position.** `commit(lsn, ..)` records `lsn`, the *end* position (`end_lsn`,
///   exclusive) of the last source transaction whose changes the commit holds: "this table
///   holds every change of every transaction ending at or before `lsn`". The copy's final
///   commit records the snapshot's position. The pipeline skips, for this table, every
///   transaction committed below the recorded position, and streams from the oldest one.
/// - **Atomic with the data.** Each table's new snapshot records `lsn` under
///   [`SOURCE_LSN_PROPERTY`] in the *same atomic catalog commit* as its data and any schema
///   change, so a reader never sees part of a source transaction in one table and `prepare`
///   after a crash returns, per table, exactly the position up to which it is complete.
/// - `write` makes nothing visible: rows become readable only through `commit`.
/// - `commit` makes everything written since the previous commit visible, one table at a
///   time. When it returns, the data is durable; only then may the caller acknowledge the
///   position to the source.
/// - **`mark`** lists tables to commit even without rows, so their new position is
///   recorded anyway (an empty initial copy; a copy's final commit after its pieces).
///   A table with no rows and not marked keeps its snapshot and position: its position
///   lags, which only means a restart re-reads (and skips) changes it never had.
/// - **What a commit covers.** A commit with an empty `mark` is a stream commit: every
///   table not written had no change of a transaction ending at or before `lsn`. A commit
///   with a `mark` is a copy's: it says nothing of the other tables, which may still be
///   behind `lsn` (a consistent position is published only once every table is complete
///   up to it and none is past it).
/// - **Retries.** Calls are sequential (`&mut self`). A failed `commit` may have committed
///   some tables and not others, or one whose outcome is unknown: the caller never retries
///   it as if nothing happened, but calls `prepare` again (or restarts), which reads back
///   from the catalog what each table holds and discards everything written and not
///   committed, exactly as a new process would; the changes are then delivered again from
///   the source and skipped where already committed.
#[async_trait]
pub trait ChangeSink: Send {
    /// Creates each table if missing (or checks its layout) and returns its progress.
    async fn prepare(&mut self, tables: &[ChangeLogSchema]) -> Result<Vec<TableProgress>>;

    /// Moves table `table` to the source layout `schema` (the source changed its columns);
    /// the change commits atomically with the table's next commit, so a table's schema
    /// always matches the source position it records. Returns the Arrow schema later
    /// `write` batches must have. A change Iceberg cannot follow is
    /// [`crate::LakehouseError::IncompatibleSchema`] and leaves the table untouched.
    async fn evolve(&mut self, table: usize, schema: &ChangeLogSchema) -> Result<SchemaRef>;

    /// Drops what table `table` buffered since its last commit: its capture stopped, and
    /// it stays at its last committed position.
    async fn stop(&mut self, table: usize) -> Result<()>;

    /// Called once after a clean stop (everything committed): persists what speeds up the
    /// next start (silver's key indexes).
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// Buffers rows for table `table` (an index into the `prepare` list). Nothing it takes
    /// gets a position before `commit`; it may commit positionless copy pieces (as
    /// [`ChangeSink::commit_copy_piece`] does) of copy rows it already wrote, when rows of
    /// another kind follow them (silver), so it may fail as a commit does.
    async fn write(&mut self, table: usize, batch: RecordBatch) -> Result<()>;

    /// Commits every table with buffered rows, plus each table in `mark` even if it
    /// has no rows (so an empty initial copy is recorded), at source position `lsn`.
    async fn commit(&mut self, lsn: u64, mark: &[usize]) -> Result<()>;

    /// Commits what table `table` buffered as a piece of its unfinished initial copy, taken
    /// under the snapshot at source position `point`, so the copy's memory stays bounded.
    ///
    /// A piece is durable and readable but gives the table no position: it still reports
    /// none until `commit(point, [table])` ends the copy. If the process stops before that,
    /// the exported snapshot is gone with it, so the next run copies the table afresh and
    /// that copy's first commit replaces every file the pieces added (no duplicates, no
    /// gaps). Only the copy calls this, never between changes of the stream. A sink that
    /// keeps buffering instead (the default) is correct, only unbounded.
    async fn commit_copy_piece(&mut self, _table: usize, _point: u64) -> Result<()> {
        Ok(())
    }

    /// Tables (indexes into the `prepare` list) an operator asked to copy afresh from
    /// their source (`bitvelocity resync`). The capture asks between source transactions;
    /// a sink without operator requests (the default) has none.
    async fn resync_requested(&mut self) -> Result<Vec<usize>> {
        Ok(Vec::new())
    }

    /// Durably forgets table `table`'s position, so the next `prepare` reports none and the
    /// capture copies it afresh, that copy's first commit replacing every file (exactly as
    /// after an interrupted initial copy; the earlier snapshots stay readable by time travel
    /// until they expire). A crash after this call only repeats the copy.
    async fn restart_copy(&mut self, table: usize) -> Result<()> {
        Err(crate::LakehouseError::Unsupported {
            what: format!("copying table #{table} afresh"),
        })
    }

    /// The copy a resync asked for is committed (`commit(point, [table])` returned): the
    /// request is cleared. A crash before this call only repeats the copy.
    async fn resync_done(&mut self, _table: usize) -> Result<()> {
        Ok(())
    }
}

/// A sink that drops everything: measures capture and decoding alone (benchmarks).
#[derive(Debug, Default)]
pub struct DiscardSink {
    start: Option<u64>,
    rows: u64,
    commits: u64,
}

impl DiscardSink {
    /// A sink whose tables all claim to be complete up to `lsn`, so no initial copy runs.
    pub fn starting_at(lsn: u64) -> Self {
        Self {
            start: Some(lsn),
            ..Self::default()
        }
    }

    /// Rows received so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Commits received so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }
}

#[async_trait]
impl ChangeSink for DiscardSink {
    async fn prepare(&mut self, tables: &[ChangeLogSchema]) -> Result<Vec<TableProgress>> {
        Ok(vec![
            TableProgress {
                source_lsn: self.start
            };
            tables.len()
        ])
    }

    async fn evolve(&mut self, _table: usize, schema: &ChangeLogSchema) -> Result<SchemaRef> {
        schema.arrow_schema()
    }

    async fn stop(&mut self, _table: usize) -> Result<()> {
        Ok(())
    }

    async fn write(&mut self, _table: usize, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn commit(&mut self, _lsn: u64, _mark: &[usize]) -> Result<()> {
        self.commits += 1;
        Ok(())
    }
}
