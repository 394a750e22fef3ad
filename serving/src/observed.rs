//! A query's result as a door sends it: its outcome recorded exactly once (metrics by door,
//! user and outcome, with its latency) and one `tracing` span per query carrying the user,
//! role, tables read, rows and bytes sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;

use crate::Result;
use crate::auth::Principal;
use crate::engine::QueryStream;
use crate::metrics::ServeMetrics;

/// A running query wrapped for a door: records `ok`, the error's code, or `cancelled` when
/// dropped unfinished (the client went away), once.
pub(crate) struct Observed {
    inner: QueryStream,
    metrics: Arc<ServeMetrics>,
    door: &'static str,
    user: String,
    started: Instant,
    outcome: Option<String>,
    rows: u64,
    bytes: Arc<AtomicU64>,
    span: tracing::Span,
}

impl Observed {
    /// `inner`, run for `who` through `door`, started at `started`.
    pub(crate) fn new(
        inner: QueryStream,
        metrics: Arc<ServeMetrics>,
        door: &'static str,
        who: &Principal,
        started: Instant,
    ) -> Self {
        let span = tracing::info_span!(
            "query",
            door,
            user = %who.user,
            role = %who.role,
            tables = %inner.tables().join(","),
            rows = tracing::field::Empty,
            bytes = tracing::field::Empty,
            outcome = tracing::field::Empty,
            ms = tracing::field::Empty,
        );
        Self {
            inner,
            metrics,
            door,
            user: who.user.clone(),
            started,
            outcome: None,
            rows: 0,
            bytes: Arc::new(AtomicU64::new(0)),
            span,
        }
    }

    /// The answer's schema.
    pub(crate) fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    /// Where the door adds the bytes it sends for this query (also counted by door).
    pub(crate) fn bytes(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    /// Records the outcome, if none is recorded yet.
    pub(crate) fn record(&mut self, outcome: &str) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome.to_string());
            self.metrics
                .query_done(self.door, &self.user, outcome, self.started.elapsed());
        }
    }
}

impl futures::Stream for Observed {
    type Item = Result<RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            std::task::Poll::Ready(Some(Ok(batch))) => self.rows += batch.num_rows() as u64,
            std::task::Poll::Ready(Some(Err(e))) => {
                let code = e.code();
                self.record(code);
            }
            std::task::Poll::Ready(None) => self.record("ok"),
            std::task::Poll::Pending => {}
        }
        next
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.record("cancelled");
        let span = &self.span;
        span.record("rows", self.rows);
        span.record("bytes", self.bytes.load(Relaxed));
        span.record("outcome", self.outcome.as_deref().unwrap_or("cancelled"));
        span.record("ms", self.started.elapsed().as_millis() as u64);
        span.in_scope(|| tracing::info!("query done"));
    }
}
