//! The capture loop: initial copy, then the change stream, committed exactly once.
//!
//! Exactly-once protocol (see docs/adr/0002-exactly-once.md):
//! 1. Each lakehouse table records, atomically with its data, the source
//!    position up to which it is complete (`TableProgress::source_lsn`, the
//!    `end_lsn` of the last source transaction it holds, exclusive).
//! 2. A change of table T in a transaction whose commit LSN is below T's
//!    position is already in T and is skipped; everything else is applied.
//! 3. The slot's flush position is confirmed to PostgreSQL only after every
//!    table of a batch is committed, so the server keeps all WAL any table
//!    may still need; on restart we stream from the oldest table position
//!    (the server starts at its confirmed point if that is later).
//! 4. A table without a position gets an initial copy under the exported
//!    snapshot of a temporary slot created after the main slot; its position
//!    becomes that slot's consistent point.
//! 5. Commits happen only between source transactions, so no reader ever sees
//!    part of one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lakehouse::{ChangeSink, crash};
use tokio::sync::watch;

use crate::change_source::{ChangeSource, ChangeStream, StreamEvent};
use crate::changes::ChangeBuffer;
use crate::pg_source::PgSource;
use crate::pgoutput::{Message, Relation};
mod apply;

use crate::progress::{IngestMetrics, IngestPhase, IngestReport};
use crate::replication::PG_EPOCH_OFFSET_MICROS;
use crate::source::SourceTable;
use crate::{IngestError, Lsn, Result};
use apply::{Change, in_txn};

/// How often the stream looks for operator requests (`bitvelocity resync`) while idle.
const REQUEST_POLL: Duration = Duration::from_secs(2);

/// How to capture from PostgreSQL: where from ([`PgSource`]) and how to batch
/// ([`PipelineConfig`]).
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Source database URL.
    pub url: String,
    /// Publication whose tables are captured.
    pub publication: String,
    /// Logical replication slot (created if missing).
    pub slot: String,
    /// Commit once this many change rows are pending (at a transaction boundary).
    pub batch_rows: usize,
    /// Commit at least this often while rows are pending.
    pub batch_interval: Duration,
    /// Hand rows to the sink in Arrow batches of this many rows.
    pub flush_rows: usize,
    /// The initial copy commits a piece after handing over this many bytes of rows (Arrow
    /// memory), so its memory stays bounded whatever the table's size.
    pub copy_piece_bytes: usize,
    /// Stop once everything committed before the start has been written.
    pub exit_when_caught_up: bool,
    /// Record, per source transaction, the time from its commit to its lakehouse commit.
    pub record_freshness: bool,
}

impl IngestConfig {
    /// Defaults for `url` and `publication`; the slot is named after the publication.
    pub fn new(url: impl Into<String>, publication: impl Into<String>) -> Self {
        let publication = publication.into();
        Self {
            url: url.into(),
            slot: format!(
                "bitvelocity_{}",
                publication
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            ),
            publication,
            batch_rows: 200_000,
            batch_interval: Duration::from_secs(1),
            flush_rows: 32 * 1024,
            copy_piece_bytes: lakehouse::MemoryBudget::default().copy_piece_bytes(),
            exit_when_caught_up: false,
            record_freshness: false,
        }
    }

    /// The source these settings name.
    pub fn source(&self) -> PgSource {
        PgSource::new(&self.url, &self.publication, &self.slot)
    }

    /// The pipeline settings (everything but where from).
    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            batch_rows: self.batch_rows,
            batch_interval: self.batch_interval,
            flush_rows: self.flush_rows,
            copy_piece_bytes: self.copy_piece_bytes,
            exit_when_caught_up: self.exit_when_caught_up,
            record_freshness: self.record_freshness,
        }
    }
}

/// How the pipeline batches and when it stops, whatever the source.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Commit once this many change rows are pending (at a transaction boundary).
    pub batch_rows: usize,
    /// Commit at least this often while rows are pending.
    pub batch_interval: Duration,
    /// Hand rows to the sink in Arrow batches of this many rows.
    pub flush_rows: usize,
    /// The initial copy commits a piece after handing over this many bytes of rows.
    pub copy_piece_bytes: usize,
    /// Stop once everything committed before the start has been written.
    pub exit_when_caught_up: bool,
    /// Record, per source transaction, the time from its commit to its lakehouse commit.
    pub record_freshness: bool,
}

/// Change capture from one [`ChangeSource`] into one [`ChangeSink`], exactly once.
pub struct Pipeline<C: ChangeSource, S: ChangeSink> {
    cfg: PipelineConfig,
    source: C,
    sink: S,
    metrics: Arc<IngestMetrics>,
}

/// Change capture from one PostgreSQL publication into one sink.
pub type Ingester<S> = Pipeline<PgSource, S>;

struct TableState {
    source: SourceTable,
    buf: ChangeBuffer,
    /// Changes from transactions committed before this position are already in the table.
    needed_from: Lsn,
    /// The newest Relation message, not yet reconciled with the table: applied before the
    /// next change that is not skipped (changes of skipped transactions use older layouts).
    relation: Option<Relation>,
    /// The buffer's layout matches the lakehouse table (a Relation was reconciled, or the
    /// table was copied): changes may be buffered.
    synced: bool,
    /// The capture of this table stopped, and why; it stays at `needed_from`.
    stopped: Option<String>,
}

struct Txn {
    final_lsn: Lsn,
    commit_ts: i64,
    xid: u32,
    seq: i64,
}

impl<S: ChangeSink> Pipeline<PgSource, S> {
    /// An ingester of the PostgreSQL publication `cfg` names, writing into `sink`.
    pub fn new(cfg: IngestConfig, sink: S) -> Self {
        Self::with_source(cfg.pipeline(), cfg.source(), sink)
    }
}

impl<C: ChangeSource, S: ChangeSink> Pipeline<C, S> {
    /// A pipeline from `source` into `sink`.
    pub fn with_source(cfg: PipelineConfig, source: C, sink: S) -> Self {
        Self {
            cfg,
            source,
            sink,
            metrics: Arc::new(IngestMetrics::default()),
        }
    }

    /// Counters for progress display.
    pub fn metrics(&self) -> Arc<IngestMetrics> {
        self.metrics.clone()
    }

    /// The sink, once the run is over.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Runs until caught up (if configured) or until `shutdown` turns true.
    ///
    /// A lost connection (or another error [`IngestError::is_retryable`] calls transient)
    /// does not end the run: after a jittered, growing pause (`lakehouse::Retry::reconnect`)
    /// it starts over exactly as a restarted process would, from what the lakehouse has
    /// committed, discarding everything not committed. Only an outage outlasting the
    /// budget, or any other error, ends it.
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<IngestReport> {
        let mut retry = lakehouse::Retry::reconnect();
        // A source that was never reached is a configuration error, reported at once...
        let mut ever_ran = false;
        // ...except a slot still held by a session going away (a restart right after a
        // stop): that is released within moments, so it is waited for, a bounded while.
        let mut slot_release = lakehouse::Retry::slot_release();
        let mut result = loop {
            self.metrics.set_phase(IngestPhase::Starting);
            let commits_before = self.metrics.commits.load(Ordering::Relaxed);
            let result = self.run_inner(shutdown.clone()).await;
            ever_ran |= matches!(
                self.metrics.phase(),
                IngestPhase::Copying | IngestPhase::Streaming
            );
            let e = match result {
                // A resync was asked for: start over at once (it copies the table afresh;
                // the others resume from their positions).
                Ok(None) => continue,
                Ok(Some(report)) => break Ok(report),
                Err(e) if ever_ran && e.is_retryable() && !*shutdown.borrow() => e,
                Err(e) if e.is_slot_in_use() && !*shutdown.borrow() => {
                    let Some(pause) = slot_release.next_pause() else {
                        tracing::error!(error = %e, "the replication slot stayed in use by another session; giving up");
                        break Err(e);
                    };
                    tracing::warn!(error = %e, ?pause, "the replication slot is still in use; waiting for its session to end");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        Ok(()) = shutdown.changed() => {}
                    }
                    if *shutdown.borrow() {
                        break Err(e);
                    }
                    continue;
                }
                Err(e) => break Err(e),
            };
            if self.metrics.commits.load(Ordering::Relaxed) > commits_before {
                // It made progress: this is a new outage, with a fresh budget.
                retry = lakehouse::Retry::reconnect();
            }
            let Some(pause) = retry.next_pause() else {
                tracing::error!(error = %e, retries = retry.retries(), "the source stayed unreachable; giving up");
                break Err(e);
            };
            self.metrics.set_phase(IngestPhase::Starting);
            self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, ?pause, "lost the source; reconnecting and resuming from the last commit");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // A dropped sender disables this branch: the pause is still taken.
                Ok(()) = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break Err(e);
            }
        };
        if result.is_ok()
            && let Err(e) = self.sink.close().await
        {
            result = Err(e.into());
        }
        self.metrics.set_phase(if result.is_ok() {
            IngestPhase::Stopped
        } else {
            IngestPhase::Failed
        });
        result
    }

    /// One start: discover, copy what has no position, stream. `None` when it stopped to
    /// answer a resync request (the caller starts over).
    async fn run_inner(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Option<IngestReport>> {
        let tables = self.source.open().await?;
        crash::point("ingest.after_discover");
        let schemas: Vec<_> = tables.iter().map(|t| t.changelog.clone()).collect();
        let mut progress = self.sink.prepare(&schemas).await?;
        // Tables an operator asked to re-copy lose their position first, durably: from here
        // on they are copied like new tables, whatever crashes in between.
        let resync = self.sink.resync_requested().await?;
        if !resync.is_empty() {
            for &i in &resync {
                tracing::info!(table = %tables[i].qualified(), "resync requested: copying the table afresh");
                self.sink.restart_copy(i).await?;
            }
            progress = self.sink.prepare(&schemas).await?;
        }
        let target = self.source.log_end().await?;
        let oldest = progress.iter().filter_map(|p| p.source_lsn).min().map(Lsn);
        self.source.retain(oldest).await?;

        let mut states = Vec::with_capacity(tables.len());
        for (i, (t, p)) in tables.into_iter().zip(&progress).enumerate() {
            // A table to copy takes the source's layout now. One with a position keeps its
            // stored layout until the stream's first Relation message says what the source
            // looked like at that position.
            let copy = p.source_lsn.is_none();
            let arrow = if copy {
                self.sink.evolve(i, &t.changelog).await?
            } else {
                t.changelog.arrow_schema()?
            };
            let buf = ChangeBuffer::new(&t, arrow);
            states.push(TableState {
                source: t,
                buf,
                needed_from: Lsn(p.source_lsn.unwrap_or(0)),
                relation: None,
                synced: copy,
                stopped: None,
            });
        }
        let missing: Vec<usize> = progress
            .iter()
            .enumerate()
            .filter(|(_, p)| p.source_lsn.is_none())
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            self.metrics.set_phase(IngestPhase::Copying);
            let point = self.initial_copy(&mut states, &missing).await?;
            for &i in &missing {
                states[i].needed_from = point;
            }
            for &i in &resync {
                self.sink.resync_done(i).await?;
            }
        }
        let start = states
            .iter()
            .map(|s| s.needed_from)
            .min()
            .unwrap_or(Lsn::ZERO);
        tracing::info!(%start, target = %target, tables = states.len(), "streaming changes");
        let stream = self.source.stream(start).await?;
        crash::point("stream.after_start");
        self.metrics.set_phase(IngestPhase::Streaming);
        let Some(mut report) = self
            .stream(stream, &mut states, target, &mut shutdown)
            .await?
        else {
            return Ok(None);
        };
        report.tables = states.len();
        report.stopped = self.metrics.stopped_tables();
        report.snapshot_rows = self.metrics.snapshot_rows.load(Ordering::Relaxed);
        Ok(Some(report))
    }

    /// Copies the tables at `missing` under one consistent snapshot; returns its position.
    async fn initial_copy(&mut self, states: &mut [TableState], missing: &[usize]) -> Result<Lsn> {
        let point = self.source.begin_copy().await?;
        tracing::info!(at = %point, tables = missing.len(), "initial copy");
        let now = chrono::Utc::now().timestamp_micros();
        // Copied rows sort before any change applied on top of them.
        let copy_lsn = point.0 as i64 - 1;
        for &i in missing {
            let st = &mut states[i];
            crash::point("snapshot.before_copy");
            let stamp = crate::snapshot::CopyStamp {
                lsn: copy_lsn,
                commit_ts: now,
                flush_rows: self.cfg.flush_rows,
                piece_bytes: self.cfg.copy_piece_bytes,
            };
            let rows = self
                .source
                .copy_table(&st.source, i, &mut st.buf, &mut self.sink, stamp)
                .await?;
            crash::point("snapshot.before_commit");
            self.sink.commit(point.0, &[i]).await?;
            crash::point("snapshot.after_commit");
            self.metrics
                .snapshot_rows
                .fetch_add(rows, Ordering::Relaxed);
            self.metrics.commits.fetch_add(1, Ordering::Relaxed);
            tracing::info!(table = %st.source.qualified(), rows, "copied");
        }
        crash::point("snapshot.after_all_copied");
        self.source.end_copy().await?;
        Ok(point)
    }

    async fn stream(
        &mut self,
        mut stream: C::Stream,
        states: &mut [TableState],
        target: Lsn,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<IngestReport>> {
        let by_oid: HashMap<u32, usize> = states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.source.oid, i))
            .collect();
        let mut report = IngestReport::default();
        let mut txn: Option<Txn> = None;
        let mut pending_rows = 0usize;
        let mut pending_end: Option<Lsn> = None; // end_lsn of the last transaction received, not yet committed
        let mut pending_ts: Vec<i64> = Vec::new(); // commit times of the pending transactions (freshness)
        let mut batch_started = Instant::now();
        let mut confirmed = Lsn(states.iter().map(|s| s.needed_from.0).min().unwrap_or(0));
        let mut server_end = Lsn::ZERO;
        let mut last_status = Instant::now();
        let status_every = stream.status_period();
        let mut stopping = false;
        let mut requests_checked = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            // Commit at a transaction boundary when the batch is big or old enough, or when stopping.
            if txn.is_none()
                && let Some(end) = pending_end
                && (pending_rows >= self.cfg.batch_rows
                    || batch_started.elapsed() >= self.cfg.batch_interval
                    || stopping
                    || (self.cfg.exit_when_caught_up && end >= target))
            {
                let at = acked(confirmed, states);
                keep_alive(
                    &mut stream,
                    at,
                    status_every,
                    self.commit_batch(states, end),
                )
                .await?;
                report.commits += 1;
                let now = chrono::Utc::now().timestamp_micros();
                if let Some(&last) = pending_ts.last() {
                    self.metrics
                        .last_commit_ts
                        .store(last as u64, Ordering::Relaxed);
                }
                if self.cfg.record_freshness
                    && let Ok(mut f) = self.metrics.freshness.lock()
                {
                    f.extend(pending_ts.iter().map(|&ts| (now - ts).max(0) as u64));
                }
                pending_ts.clear();
                pending_rows = 0;
                pending_end = None;
                confirmed = confirmed.max(end);
                crash::point("stream.before_status");
                confirm(&mut stream, &self.metrics, acked(confirmed, states)).await?;
                last_status = Instant::now();
                crash::point("stream.after_status");
            }
            let idle = txn.is_none() && pending_end.is_none();
            if idle
                && (stopping
                    || (self.cfg.exit_when_caught_up && confirmed.max(server_end) >= target))
            {
                confirm(&mut stream, &self.metrics, acked(confirmed, states)).await?;
                report.confirmed = acked(confirmed, states);
                report.changes = self.metrics.changes.load(Ordering::Relaxed);
                report.skipped = self.metrics.skipped.load(Ordering::Relaxed);
                report.transactions = self.metrics.transactions.load(Ordering::Relaxed);
                return Ok(Some(report));
            }
            // Between transactions with nothing pending: has an operator asked for a resync?
            if idle && requests_checked.elapsed() >= REQUEST_POLL {
                requests_checked = Instant::now();
                // A failed look (the catalog database blinked) is not worth the stream: it is
                // asked again at the next poll.
                let asked = self.sink.resync_requested().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not read operator requests; asking again shortly");
                    Vec::new()
                });
                if !asked.is_empty() {
                    tracing::info!(
                        tables = asked.len(),
                        "resync requested: restarting the capture to copy afresh"
                    );
                    confirm(&mut stream, &self.metrics, acked(confirmed, states)).await?;
                    // Everything is committed: persist what speeds up the restart (silver's
                    // key indexes), so the other tables' are not rebuilt. A failure costs a
                    // rebuild later, never data.
                    if let Err(e) = self.sink.close().await {
                        tracing::warn!(error = %e, "could not checkpoint before the resync's restart");
                    }
                    return Ok(None);
                }
            }
            if last_status.elapsed() >= status_every {
                confirm(&mut stream, &self.metrics, acked(confirmed, states)).await?;
                last_status = Instant::now();
            }

            let msg = tokio::select! {
                m = stream.next() => m?,
                _ = tick.tick() => continue,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!("shutdown requested: finishing the current batch");
                        stopping = true;
                    }
                    continue;
                }
            };
            match msg {
                StreamEvent::Heartbeat {
                    end: wal_end,
                    reply,
                } => {
                    server_end = server_end.max(wal_end);
                    if idle {
                        // Everything before wal_end has been received and committed.
                        confirmed = confirmed.max(wal_end);
                    }
                    if reply || idle {
                        confirm(&mut stream, &self.metrics, acked(confirmed, states)).await?;
                        last_status = Instant::now();
                    }
                    crash::point("stream.keepalive");
                }
                StreamEvent::Message(m) => {
                    match m {
                        Message::Begin {
                            final_lsn,
                            commit_ts,
                            xid,
                        } => {
                            crash::point("stream.begin");
                            if pending_end.is_none() {
                                batch_started = Instant::now();
                            }
                            txn = Some(Txn {
                                final_lsn,
                                commit_ts,
                                xid,
                                seq: 0,
                            });
                        }
                        Message::Commit {
                            end_lsn, commit_ts, ..
                        } => {
                            txn.take().ok_or_else(|| {
                                IngestError::Protocol("commit without begin".into())
                            })?;
                            self.metrics.transactions.fetch_add(1, Ordering::Relaxed);
                            pending_end = Some(end_lsn);
                            pending_ts.push(commit_ts + PG_EPOCH_OFFSET_MICROS);
                            crash::point("stream.after_commit_message");
                            // Bounded memory: hand big buffers to the sink between transactions too.
                            let at = acked(confirmed, states);
                            for (i, st) in states.iter_mut().enumerate() {
                                if st.buf.len() >= self.cfg.flush_rows {
                                    let batch = st.buf.finish()?;
                                    keep_alive(
                                        &mut stream,
                                        at,
                                        status_every,
                                        self.sink.write(i, batch),
                                    )
                                    .await?;
                                }
                            }
                        }
                        Message::Relation(rel) => {
                            if let Some(&i) = by_oid.get(&rel.oid) {
                                states[i].relation = Some(rel);
                            } else {
                                return Err(IngestError::Protocol(format!(
                                    "table {}.{} joined the publication after the start; restart the ingester to copy it",
                                    rel.namespace, rel.name
                                )));
                            }
                        }
                        Message::Type { .. } | Message::Origin | Message::LogicalMessage => {}
                        Message::Insert { rel, new } => {
                            let t = in_txn(&mut txn)?;
                            let (n, full) = self
                                .apply(states, &by_oid, t, rel, Change::Insert(&new))
                                .await?;
                            pending_rows += n;
                            self.hand_over(&mut stream, states, full, confirmed, status_every)
                                .await?;
                        }
                        Message::Update { rel, old, new } => {
                            let t = in_txn(&mut txn)?;
                            let (n, full) = self
                                .apply(states, &by_oid, t, rel, Change::Update(old.as_ref(), &new))
                                .await?;
                            pending_rows += n;
                            self.hand_over(&mut stream, states, full, confirmed, status_every)
                                .await?;
                        }
                        Message::Delete { rel, old } => {
                            let t = in_txn(&mut txn)?;
                            let (n, full) = self
                                .apply(states, &by_oid, t, rel, Change::Delete(&old))
                                .await?;
                            pending_rows += n;
                            self.hand_over(&mut stream, states, full, confirmed, status_every)
                                .await?;
                        }
                        Message::Truncate { rels } => {
                            let t = in_txn(&mut txn)?;
                            for rel in rels {
                                let (n, full) = self
                                    .apply(states, &by_oid, t, rel, Change::Truncate)
                                    .await?;
                                pending_rows += n;
                                self.hand_over(&mut stream, states, full, confirmed, status_every)
                                    .await?;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Hands table `full`'s buffer to the sink (a long transaction, mid-way), telling the
    /// server meanwhile that this client is alive at what is confirmed already.
    async fn hand_over(
        &mut self,
        stream: &mut C::Stream,
        states: &mut [TableState],
        full: Option<usize>,
        confirmed: Lsn,
        period: Duration,
    ) -> Result<()> {
        let Some(i) = full else { return Ok(()) };
        let batch = states[i].buf.finish()?;
        let at = acked(confirmed, states);
        keep_alive(stream, at, period, self.sink.write(i, batch)).await
    }

    async fn commit_batch(&mut self, states: &mut [TableState], end: Lsn) -> Result<()> {
        for (i, st) in states.iter_mut().enumerate() {
            if !st.buf.is_empty() {
                self.sink.write(i, st.buf.finish()?).await?;
            }
        }
        crash::point("stream.before_sink_commit");
        self.sink.commit(end.0, &[]).await?;
        crash::point("stream.after_sink_commit");
        for st in states.iter_mut().filter(|s| s.stopped.is_none()) {
            st.needed_from = st.needed_from.max(end);
        }
        self.metrics.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Tells the server everything before `at` is durable (nothing it still needs is released
/// by this), and shows the position in the metrics.
async fn confirm(stream: &mut impl ChangeStream, metrics: &IngestMetrics, at: Lsn) -> Result<()> {
    stream.confirm(at).await?;
    metrics.confirmed_lsn.store(at.0, Ordering::Relaxed);
    Ok(())
}

/// Runs `work` (a commit, a flush: anything that may outlast the server's
/// `wal_sender_timeout`) while telling the server every `period` that this client is
/// alive, at position `at` (what is confirmed already: never what `work` is committing).
async fn keep_alive<T, E>(
    stream: &mut impl ChangeStream,
    at: Lsn,
    period: Duration,
    work: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T>
where
    IngestError: From<E>,
{
    let mut work = std::pin::pin!(work);
    // The first tick is immediate: the server's clock restarts as the work begins.
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out?),
            _ = tick.tick() => {
                if let Err(e) = stream.confirm(at).await {
                    // The work (a commit, maybe mid pointer swap) is never abandoned: its
                    // outcome must be known before anything starts over.
                    work.await?;
                    return Err(e);
                }
            }
        }
    }
}

/// The position to confirm to PostgreSQL: `confirmed`, held back to the position of any
/// table whose capture stopped, so the server keeps every change that table still needs.
fn acked(confirmed: Lsn, states: &[TableState]) -> Lsn {
    states
        .iter()
        .filter(|s| s.stopped.is_some())
        .map(|s| s.needed_from)
        .fold(confirmed, Lsn::min)
}

#[cfg(test)]
mod tests;
