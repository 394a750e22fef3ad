//! The HTTP door: `POST /v1/sql` answering JSON rows (with column names and types) or an
//! Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`), streamed as the query
//! produces them; `/health`, Prometheus `/metrics` and `/openapi.json`.

use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::common::ScalarValue;
use futures::StreamExt;
use serde::Deserialize;

use crate::auth::{Authenticator, Principal};
use crate::engine::{QueryEngine, QueryOptions, QueryStream};
use crate::observed::Observed;
use crate::{Result, ServingError};

/// The Arrow IPC stream media type.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The answer header naming the source position (PostgreSQL LSN) a consistent read read
/// silver at (HTTP and Flight SQL).
pub const POSITION_HEADER: &str = "x-bitvelocity-position";

/// What the HTTP door shares with its handlers.
#[derive(Clone)]
pub struct HttpState {
    /// The engine every door shares.
    pub engine: Arc<QueryEngine>,
    /// Who is asking.
    pub auth: Arc<Authenticator>,
    /// The Iceberg REST catalog, served at `/iceberg` when present.
    pub rest: Option<Arc<crate::rest::RestCatalog>>,
}

/// The HTTP door's router, apart from any socket so tests drive it directly.
pub fn router(state: HttpState) -> Router {
    let rest = state.rest.clone();
    let router = Router::new()
        .route("/v1/sql", post(sql))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .with_state(state);
    match rest {
        Some(rest) => router.nest("/iceberg", rest.router()),
        None => router,
    }
}

/// The body of `POST /v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
    /// Read every silver table at one source position.
    #[serde(default)]
    consistent: bool,
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        let status = match &self {
            ServingError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServingError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ServingError::Busy { .. }
            | ServingError::ResourcesExhausted(_)
            | ServingError::NoConsistentPosition(_)
            | ServingError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServingError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServingError::NotAllowed(_) => StatusCode::FORBIDDEN,
            ServingError::BadRequest(_) | ServingError::Query(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        error_response(status, body)
    }
}

/// A JSON error answer; a 401 also names the scheme to authenticate with (RFC 9110).
pub(crate) fn error_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The caller, from `Authorization: Bearer <key>` or `X-API-Key: <key>` (a key or a JWT).
pub(crate) fn principal(auth: &Authenticator, headers: &HeaderMap) -> Result<Principal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match key {
        Some(k) => auth.bearer(k.trim()),
        None => Err(ServingError::Unauthenticated(
            "send an API key as `Authorization: Bearer <key>` or `X-API-Key`".into(),
        )),
    }
}

async fn sql(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let metrics = state.engine.metrics().clone();
    let who = match principal(&state.auth, &headers) {
        Ok(p) => p,
        Err(e) => {
            metrics.query_done("http", "", e.code(), started.elapsed());
            return e.into_response();
        }
    };
    match start(&state, &who, &headers, &body).await {
        Ok((stream, arrow)) => {
            let max_rows = state.engine.limits().max_json_rows;
            let position = stream.position().map(|p| ingestion::Lsn(p).to_string());
            let stream = Observed::new(stream, metrics.clone(), "http", &who, started);
            let counted = stream.bytes();
            let body = if arrow {
                arrow_body(stream)
            } else {
                json_body(stream, max_rows)
            };
            let body = body
                .inspect(move |chunk| {
                    if let Ok(bytes) = chunk {
                        metrics.sent("http", bytes.len() as u64);
                        counted.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                })
                .boxed();
            let media = if arrow {
                ARROW_STREAM
            } else {
                "application/json"
            };
            let mut response =
                ([(header::CONTENT_TYPE, media)], Body::from_stream(body)).into_response();
            if let Some(position) = position.and_then(|p| header::HeaderValue::try_from(p).ok()) {
                response.headers_mut().insert(POSITION_HEADER, position);
            }
            response
        }
        Err(e) => {
            metrics.query_done("http", &who.user, e.code(), started.elapsed());
            e.into_response()
        }
    }
}

async fn start(
    state: &HttpState,
    who: &Principal,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(QueryStream, bool)> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json")
        });
    if !json {
        return Err(ServingError::BadRequest(
            "send the query as `Content-Type: application/json`: {\"sql\": \"...\", \"params\": [...]}"
                .into(),
        ));
    }
    let request: SqlRequest = serde_json::from_slice(body)
        .map_err(|e| ServingError::BadRequest(format!("the JSON body: {e}")))?;
    let params = request
        .params
        .iter()
        .enumerate()
        .map(|(i, v)| {
            scalar(v).ok_or_else(|| {
                ServingError::BadRequest(format!(
                    "parameter ${}: only null, booleans, numbers and strings are accepted",
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    let options = QueryOptions {
        consistent: request.consistent,
        ..Default::default()
    };
    let stream = state
        .engine
        .execute_with(who, &request.sql, params, options)
        .await?;
    Ok((stream, arrow))
}

/// A JSON parameter as a SQL value.
fn scalar(v: &serde_json::Value) -> Option<ScalarValue> {
    Some(match v {
        serde_json::Value::Null => ScalarValue::Null,
        serde_json::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(Some(n.as_f64()?)),
        },
        serde_json::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        _ => return None,
    })
}

type Chunks = futures::stream::BoxStream<'static, Result<Bytes>>;

/// The answer as an Arrow IPC stream: the schema, then each batch as it comes (one
/// writer for the whole answer, drained after every message), then the end marker.
fn arrow_body(stream: Observed) -> Chunks {
    type Writer = arrow::ipc::writer::StreamWriter<Vec<u8>>;
    let writer = Writer::try_new(Vec::new(), &stream.schema()).map_err(ServingError::from);
    let drain = |w: &mut Writer| Bytes::from(std::mem::take(w.get_mut()));
    let state = writer.map(|w| (Some(stream), w));
    futures::stream::unfold(Some(state), move |state| async move {
        let (mut stream, mut writer) = match state? {
            Ok(s) => s,
            Err(e) => return Some((Err(e), None)),
        };
        // The schema (written when the writer was made) goes out first.
        if !writer.get_ref().is_empty() {
            let head = drain(&mut writer);
            return Some((Ok(head), Some(Ok((stream, writer)))));
        }
        let next = match stream.as_mut() {
            Some(s) => s.next().await,
            None => return None,
        };
        match next {
            Some(Ok(batch)) => match writer.write(&batch) {
                Ok(()) => {
                    let bytes = drain(&mut writer);
                    Some((Ok(bytes), Some(Ok((stream, writer)))))
                }
                Err(e) => Some((Err(e.into()), None)),
            },
            Some(Err(e)) => Some((Err(e), None)),
            None => {
                stream = None;
                match writer.finish() {
                    Ok(()) => {
                        let end = drain(&mut writer);
                        Some((Ok(end), Some(Ok((stream, writer)))))
                    }
                    Err(e) => Some((Err(e.into()), None)),
                }
            }
        }
    })
    .boxed()
}

/// The answer as JSON: `{"columns": [{"name", "type"}], "rows": [{...}], "row_count": n,
/// "truncated": bool}`, rows written as batches come; an error after the first byte ends
/// the document with `"error"` instead.
fn json_body(stream: Observed, max_rows: usize) -> Chunks {
    let schema = stream.schema();
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let head = format!(
        "{{\"columns\":{},\"rows\":[",
        serde_json::Value::Array(columns)
    );
    struct Progress {
        stream: Option<Observed>,
        rows: usize,
        max_rows: usize,
        done: bool,
    }
    let progress = Progress {
        stream: Some(stream),
        rows: 0,
        max_rows,
        done: false,
    };
    let body = futures::stream::unfold(progress, |mut p| async move {
        if p.done {
            return None;
        }
        let stream = p.stream.as_mut()?;
        let (chunk, end) = match stream.next().await {
            Some(Ok(batch)) => {
                let room = p.max_rows - p.rows;
                let take = batch.num_rows().min(room);
                match json_rows(&batch.slice(0, take)) {
                    Err(e) => (tail(p.rows, false, Some(&e)), true),
                    Ok(mut text) => {
                        if p.rows > 0 && !text.is_empty() {
                            text.insert(0, ',');
                        }
                        p.rows += take;
                        if take < batch.num_rows() {
                            text.push_str(&tail(p.rows, true, None));
                            stream.record("ok"); // a capped answer is a complete one
                            (text, true)
                        } else {
                            (text, false)
                        }
                    }
                }
            }
            Some(Err(e)) => (tail(p.rows, false, Some(&e)), true),
            None => (tail(p.rows, false, None), true),
        };
        if end {
            p.stream = None; // a truncated answer stops (and frees) the query
            p.done = true;
        }
        Some((Ok(Bytes::from(chunk)), p))
    });
    futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(body)
        .boxed()
}

/// The rows of `batch` as comma-separated JSON objects (nulls written out).
fn json_rows(batch: &RecordBatch) -> Result<String> {
    if batch.num_rows() == 0 {
        return Ok(String::new());
    }
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let text = String::from_utf8(writer.into_inner())
        .map_err(|e| ServingError::BadRequest(format!("a value is not UTF-8: {e}")))?;
    // `[{...},{...}]` without its brackets.
    Ok(text
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

fn tail(rows: usize, truncated: bool, error: Option<&ServingError>) -> String {
    match error {
        None => format!("],\"row_count\":{rows},\"truncated\":{truncated}}}"),
        Some(e) => format!(
            "],\"row_count\":{rows},\"error\":{}}}",
            serde_json::json!({ "code": e.code(), "message": e.to_string() })
        ),
    }
}

async fn health() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "status": "ok" }).to_string(),
    )
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics().render(),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": { "code": "not_found", "message": "no such route" }
        })),
    )
        .into_response()
}

/// The OpenAPI document of this door (a test keeps it true to the router).
pub const OPENAPI: &str = include_str!("openapi.json");
