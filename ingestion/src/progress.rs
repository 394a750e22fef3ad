//! What a run is doing and has done: its phase, live counters and final report, shared
//! with whoever shows progress (the terminal, `/health`, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::Lsn;

/// Where a run is, for health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestPhase {
    /// Connecting, discovering tables, opening the sink.
    Starting,
    /// Copying tables under an exported snapshot.
    Copying,
    /// Streaming changes.
    Streaming,
    /// Finished cleanly.
    Stopped,
    /// Stopped by an error.
    Failed,
}

impl IngestPhase {
    /// Lower-case name, for health output.
    pub fn as_str(self) -> &'static str {
        match self {
            IngestPhase::Starting => "starting",
            IngestPhase::Copying => "copying",
            IngestPhase::Streaming => "streaming",
            IngestPhase::Stopped => "stopped",
            IngestPhase::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => IngestPhase::Copying,
            2 => IngestPhase::Streaming,
            3 => IngestPhase::Stopped,
            4 => IngestPhase::Failed,
            _ => IngestPhase::Starting,
        }
    }
}

/// Live counters, shared with whoever shows progress.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Rows written by the initial copy.
    pub snapshot_rows: AtomicU64,
    /// Change rows written from the stream.
    pub changes: AtomicU64,
    /// Change rows skipped because their table already held them.
    pub skipped: AtomicU64,
    /// Source transactions seen.
    pub transactions: AtomicU64,
    /// Lakehouse commits made.
    pub commits: AtomicU64,
    /// Times the run lost its connection to the source and resumed from its last commit.
    pub reconnects: AtomicU64,
    /// Position confirmed to PostgreSQL.
    pub confirmed_lsn: AtomicU64,
    /// Commit time (µs since Unix epoch) of the newest source transaction committed to the lakehouse.
    pub last_commit_ts: AtomicU64,
    /// Source commit → lakehouse commit, µs, per transaction (only with `record_freshness`).
    pub(crate) freshness: std::sync::Mutex<Vec<u64>>,
    /// Tables whose capture stopped, with the reason.
    stopped: std::sync::Mutex<Vec<(String, String)>>,
    phase: std::sync::atomic::AtomicU8,
}

impl IngestMetrics {
    /// The current phase of the run.
    pub fn phase(&self) -> IngestPhase {
        IngestPhase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Records the phase the run entered.
    pub fn set_phase(&self, phase: IngestPhase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Records that `table`'s capture stopped, and why.
    pub fn record_stopped(&self, table: &str, reason: &str) {
        if let Ok(mut s) = self.stopped.lock() {
            // A run that starts over (reconnect) records its stopped tables again.
            s.retain(|(t, _)| t != table);
            s.push((table.to_string(), reason.to_string()));
        }
    }

    /// Tables whose capture stopped (an incompatible schema change), with the reason.
    pub fn stopped_tables(&self) -> Vec<(String, String)> {
        self.stopped.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The freshness samples recorded so far (µs).
    pub fn freshness_micros(&self) -> Vec<u64> {
        self.freshness.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Tables captured.
    pub tables: usize,
    /// Rows written by initial copies.
    pub snapshot_rows: u64,
    /// Change rows written from the stream.
    pub changes: u64,
    /// Change rows skipped as already committed.
    pub skipped: u64,
    /// Source transactions seen.
    pub transactions: u64,
    /// Lakehouse commits.
    pub commits: u64,
    /// Position confirmed to PostgreSQL at exit.
    pub confirmed: Lsn,
    /// Tables whose capture stopped (an incompatible schema change), with the reason.
    pub stopped: Vec<(String, String)>,
}
