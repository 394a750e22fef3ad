//! The server's Prometheus series: queries by door, user and outcome, latency histograms
//! by door, bytes sent, and queries running and waiting. Written in the text format by hand
//! (a few series; a registry crate would add more than it saves, as for the ingester's).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters shared by every door.
#[derive(Debug, Default)]
pub struct ServeMetrics {
    queries: Mutex<BTreeMap<(String, String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    bytes_out: Mutex<BTreeMap<String, u64>>,
    /// Queries running now.
    pub active: AtomicI64,
    /// Queries waiting for a slot now.
    pub queued: AtomicI64,
    /// Queries refused as busy.
    pub refused_busy: AtomicU64,
}

impl ServeMetrics {
    /// Records one finished query.
    pub fn query_done(&self, door: &str, user: &str, outcome: &str, took: Duration) {
        let mut q = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        *q.entry((door.to_string(), user.to_string(), outcome.to_string()))
            .or_default() += 1;
        drop(q);
        let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let h = l.entry(door.to_string()).or_default();
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts bytes a door sent.
    pub fn sent(&self, door: &str, bytes: u64) {
        let mut b = self.bytes_out.lock().unwrap_or_else(|e| e.into_inner());
        *b.entry(door.to_string()).or_default() += bytes;
    }

    /// The series in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(
            out,
            "# HELP bitvelocity_queries_total Queries answered, by door, user and outcome.\n# TYPE bitvelocity_queries_total counter"
        );
        for ((door, user, outcome), n) in self
            .queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "bitvelocity_queries_total{{door=\"{}\",user=\"{}\",outcome=\"{}\"}} {n}",
                esc(door),
                esc(user),
                esc(outcome)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bitvelocity_query_seconds Query time from admission to the last byte, by door.\n# TYPE bitvelocity_query_seconds histogram"
        );
        for (door, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "bitvelocity_query_seconds_bucket{{door=\"{}\",le=\"{b}\"}} {}",
                    esc(door),
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "bitvelocity_query_seconds_bucket{{door=\"{0}\",le=\"+Inf\"}} {1}\nbitvelocity_query_seconds_sum{{door=\"{0}\"}} {2}\nbitvelocity_query_seconds_count{{door=\"{0}\"}} {1}",
                esc(door),
                h.count,
                h.sum
            );
        }
        let _ = writeln!(
            out,
            "# HELP bitvelocity_bytes_out_total Answer bytes sent, by door.\n# TYPE bitvelocity_bytes_out_total counter"
        );
        for (door, n) in self
            .bytes_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "bitvelocity_bytes_out_total{{door=\"{}\"}} {n}",
                esc(door)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bitvelocity_queries_active Queries running.\n# TYPE bitvelocity_queries_active gauge\nbitvelocity_queries_active {}\n# HELP bitvelocity_queries_queued Queries waiting for a slot.\n# TYPE bitvelocity_queries_queued gauge\nbitvelocity_queries_queued {}\n# HELP bitvelocity_queries_refused_busy_total Queries refused because every slot and the queue were full.\n# TYPE bitvelocity_queries_refused_busy_total counter\nbitvelocity_queries_refused_busy_total {}",
            self.active.load(Relaxed),
            self.queued.load(Relaxed),
            self.refused_busy.load(Relaxed)
        );
        out
    }
}
