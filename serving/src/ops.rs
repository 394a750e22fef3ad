//! The ingester's operations endpoints, `/health` and Prometheus `/metrics`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ingestion::{IngestMetrics, IngestPhase};

use crate::ServingError;

/// The router of the operations endpoints; built apart from any socket so tests drive it directly.
pub fn ops_router(metrics: Arc<IngestMetrics>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .with_state(metrics)
}

/// Binds `addr` and serves [`ops_router`] in the background; returns the bound address.
pub async fn serve_ops(
    addr: SocketAddr,
    metrics: Arc<IngestMetrics>,
) -> Result<SocketAddr, ServingError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServingError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServingError::Bind { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, ops_router(metrics)).await {
            tracing::warn!(error = %e, "operations endpoint stopped");
        }
    });
    tracing::info!(%bound, "serving /health and /metrics");
    Ok(bound)
}

async fn health(State(m): State<Arc<IngestMetrics>>) -> impl IntoResponse {
    let phase = m.phase();
    let status = match phase {
        IngestPhase::Starting | IngestPhase::Copying | IngestPhase::Streaming => StatusCode::OK,
        IngestPhase::Stopped | IngestPhase::Failed => StatusCode::SERVICE_UNAVAILABLE,
    };
    let stopped: Vec<serde_json::Value> = m
        .stopped_tables()
        .into_iter()
        .map(|(table, reason)| serde_json::json!({ "table": table, "reason": reason }))
        .collect();
    let body = serde_json::json!({
        "phase": phase.as_str(),
        "changes": m.changes.load(Relaxed),
        "confirmed_lsn": m.confirmed_lsn.load(Relaxed),
        "stopped_tables": stopped,
    })
    .to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Renders the counters in the Prometheus text exposition format (a handful of
/// series; a metrics registry crate would add more than it saves here).
async fn prometheus(State(m): State<Arc<IngestMetrics>>) -> impl IntoResponse {
    let up = matches!(m.phase(), IngestPhase::Copying | IngestPhase::Streaming);
    let series: [(&str, &str, &str, f64); 10] = [
        (
            "snapshot_rows_total",
            "counter",
            "Rows written by initial copies.",
            m.snapshot_rows.load(Relaxed) as f64,
        ),
        (
            "changes_total",
            "counter",
            "Change rows written from the stream.",
            m.changes.load(Relaxed) as f64,
        ),
        (
            "skipped_total",
            "counter",
            "Changes skipped as already committed.",
            m.skipped.load(Relaxed) as f64,
        ),
        (
            "transactions_total",
            "counter",
            "Source transactions received.",
            m.transactions.load(Relaxed) as f64,
        ),
        (
            "commits_total",
            "counter",
            "Lakehouse commits made.",
            m.commits.load(Relaxed) as f64,
        ),
        (
            "reconnects_total",
            "counter",
            "Times the source connection was lost and capture resumed from the last commit.",
            m.reconnects.load(Relaxed) as f64,
        ),
        (
            "confirmed_lsn",
            "gauge",
            "Source position confirmed to PostgreSQL.",
            m.confirmed_lsn.load(Relaxed) as f64,
        ),
        (
            "last_source_commit_seconds",
            "gauge",
            "Commit time of the newest source transaction visible in the lakehouse (Unix seconds).",
            m.last_commit_ts.load(Relaxed) as f64 / 1e6,
        ),
        (
            "tables_stopped",
            "gauge",
            "Tables whose ingest stopped on an incompatible schema change.",
            m.stopped_tables().len() as f64,
        ),
        (
            "up",
            "gauge",
            "1 while copying or streaming.",
            f64::from(u8::from(up)),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP bitvelocity_ingest_{name} {help}\n# TYPE bitvelocity_ingest_{name} {kind}\nbitvelocity_ingest_{name} {value}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_text(router: Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_follows_the_ingest_phase_and_metrics_show_counters() {
        let m = Arc::new(IngestMetrics::default());
        m.changes.store(42, Relaxed);
        let (status, body) = get_text(ops_router(m.clone()), "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"phase\":\"starting\""), "{body}");
        m.set_phase(IngestPhase::Streaming);
        let (_, text) = get_text(ops_router(m.clone()), "/metrics").await;
        assert!(
            text.contains("bitvelocity_ingest_changes_total 42"),
            "{text}"
        );
        assert!(text.contains("bitvelocity_ingest_up 1"), "{text}");
        assert!(
            text.contains("bitvelocity_ingest_tables_stopped 0"),
            "{text}"
        );
        m.record_stopped("public.s", "incompatible schema change of public.s: \"v\"");
        let (status, body) = get_text(ops_router(m.clone()), "/health").await;
        assert_eq!(status, StatusCode::OK, "other tables go on");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["stopped_tables"][0]["table"], "public.s", "{body}");
        let (_, text) = get_text(ops_router(m.clone()), "/metrics").await;
        assert!(
            text.contains("bitvelocity_ingest_tables_stopped 1"),
            "{text}"
        );
        m.set_phase(IngestPhase::Failed);
        let (status, _) = get_text(ops_router(m), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
