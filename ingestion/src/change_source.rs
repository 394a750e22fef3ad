//! The seam between a change log (where committed transactions come from) and the capture
//! pipeline that writes them into a [`lakehouse::ChangeSink`].
//!
//! The one implementation we ship is PostgreSQL logical replication ([`crate::PgSource`]);
//! the pipeline ([`crate::Pipeline`]) is generic over this trait, so everything it decides
//! (what each table already holds, when to commit, what to acknowledge) is written once,
//! against this contract, whatever the log is.

use std::time::Duration;

use async_trait::async_trait;
use lakehouse::ChangeSink;

use crate::changes::ChangeBuffer;
use crate::pgoutput::{Message, Relation};
use crate::snapshot::CopyStamp;
use crate::source::SourceTable;
use crate::{Lsn, Result};

/// A log of committed transactions with positions, plus consistent snapshots of its tables.
///
/// Contract the pipeline relies on for exactly-once delivery:
/// - **Positions.** Every transaction has a commit position (`final_lsn` of its `Begin`) and
///   an end position (`end_lsn` of its `Commit`); both grow with commit order, and a
///   transaction is delivered whole, between its `Begin` and `Commit`, never interleaved
///   with another.
/// - **Delivery.** [`ChangeSource::stream`]`(from)` delivers, in commit order, every
///   transaction that ends after `from`. It may also deliver earlier ones (at least once):
///   the pipeline skips, per table, every transaction whose commit position is below what
///   that table already holds, so a repeat is harmless and a gap is impossible.
/// - **Retention.** Once [`ChangeSource::retain`] returned, the source keeps every change
///   after the oldest position any table still needs, across restarts of either side,
///   until [`ChangeStream::confirm`] says a position is durable in every table. A source
///   whose retention is gone (the slot was dropped) fails with [`crate::IngestError::Gap`]
///   rather than skip. What it cannot detect is retention moved by someone else (a slot
///   advanced by hand or shared with another consumer): the slot must be ours alone.
/// - **Snapshots.** [`ChangeSource::begin_copy`] fixes one consistent snapshot at a position
///   `p`: every transaction ending at or before `p` is in it and no later one, so copying
///   tables under it and then streaming from `p` yields each change exactly once.
/// - **Sessions.** [`ChangeSource::open`] may be called again after any error (the pipeline
///   starts over from what the lakehouse committed, exactly as a new process would); it drops
///   whatever the previous session held.
#[async_trait]
pub trait ChangeSource: Send {
    /// The change stream this source produces.
    type Stream: ChangeStream;

    /// (Re)connects and lists the captured tables, in a fixed order (their indexes are the
    /// sink's table indexes).
    async fn open(&mut self) -> Result<Vec<SourceTable>>;

    /// Where the source's log ends now: what "caught up" means for this run.
    async fn log_end(&mut self) -> Result<Lsn>;

    /// Makes the source keep every change after `oldest`, the oldest position a table
    /// holds (`None`: no table holds any yet, every one is about to be copied).
    async fn retain(&mut self, oldest: Option<Lsn>) -> Result<()>;

    /// Fixes a consistent snapshot to copy tables under; returns its position.
    async fn begin_copy(&mut self) -> Result<Lsn>;

    /// Copies every row of `table` (the sink's table `idx`) under the snapshot into `sink`
    /// through `buf`, committing pieces as [`ChangeSink::commit_copy_piece`] describes but
    /// never the final commit (the pipeline's); returns the row count.
    async fn copy_table<S: ChangeSink>(
        &mut self,
        table: &SourceTable,
        idx: usize,
        buf: &mut ChangeBuffer,
        sink: &mut S,
        stamp: CopyStamp,
    ) -> Result<u64>;

    /// Releases the snapshot once every table is copied and committed.
    async fn end_copy(&mut self) -> Result<()>;

    /// Starts delivering the transactions that end after `from` (see the contract).
    async fn stream(&mut self, from: Lsn) -> Result<Self::Stream>;

    /// What `table` looks like under a layout the stream announced (a [`Message::Relation`]
    /// for it): its columns, types and key as the source defines them now.
    /// [`crate::IngestError::SchemaChanged`] when the lakehouse cannot follow (stops this
    /// table only).
    async fn describe(&mut self, table: &SourceTable, layout: &Relation) -> Result<SourceTable>;
}

/// Transactions as the source delivers them, plus the heartbeat both sides need.
#[async_trait]
pub trait ChangeStream: Send {
    /// How often the source must hear [`ChangeStream::confirm`], even with nothing new to
    /// say, or it drops this client as dead.
    fn status_period(&self) -> Duration;

    /// The next event. Cancel-safe: the pipeline races it against timers and shutdown, and
    /// a call dropped before it returns loses nothing.
    async fn next(&mut self) -> Result<StreamEvent<'_>>;

    /// Tells the source that every change before `durable` is committed in every table that
    /// needs it (it may forget them), and that this client is alive. Never a position whose
    /// commit is still in flight.
    async fn confirm(&mut self, durable: Lsn) -> Result<()>;
}

/// What a [`ChangeStream`] delivers.
#[derive(Debug)]
pub enum StreamEvent<'a> {
    /// The log reached `end`: nothing before it is left to deliver beyond what was
    /// delivered. With `reply`, the source wants a [`ChangeStream::confirm`] at once.
    Heartbeat {
        /// The source's end of log.
        end: Lsn,
        /// Whether to answer at once.
        reply: bool,
    },
    /// One logical-decoding message: transaction boundaries, layouts and row changes, in
    /// pgoutput's vocabulary (values in PostgreSQL's text format), which the pipeline speaks.
    Message(Message<'a>),
}
