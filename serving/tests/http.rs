//! The HTTP door over a real warehouse (local files, SQLite catalog) written by the
//! lakehouse's own sinks: authentication, grants decided on the resolved plan (joins, CTEs,
//! subqueries, `as_of`, listings), statements that are not queries refused, answers in JSON
//! and Arrow IPC equal to what was written, and the limits (row cap, busy, timeout).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, StringArray, TimestampMicrosecondArray, new_null_array,
};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lakehouse::{ChangeLogSchema, ChangeSink, ColumnType, SourceColumn};
use serving::config::ServeConfig;
use tower::ServiceExt;

const ROWS: i64 = 1000;

fn items() -> ChangeLogSchema {
    let column = |name: &str, ty, id| SourceColumn {
        name: name.into(),
        ty,
        source_id: Some(id),
        backfilled: false,
    };
    ChangeLogSchema {
        source_schema: "public".into(),
        source_table: "items".into(),
        columns: vec![
            column("id", ColumnType::Long, 1),
            column("v", ColumnType::String, 2),
        ],
        key: vec!["id".into()],
    }
}

/// The initial copy of `items` (ids 1..=ROWS, v = "v<id>"), as the capture hands it over.
fn copy_batch(schema: &SchemaRef) -> RecordBatch {
    let n = ROWS as usize;
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "id" => Arc::new(Int64Array::from_iter_values(1..=ROWS)),
                "v" => Arc::new(StringArray::from_iter_values(
                    (1..=ROWS).map(|i| format!("v{i}")),
                )),
                "_op" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    "insert", n,
                ))),
                "_lsn" => Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(99, n))),
                "_seq" => Arc::new(Int64Array::from_iter_values(0..n as i64)),
                "_commit_ts" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
                        1_700_000_000_000_000,
                        n,
                    ))
                    .with_data_type(f.data_type().clone()),
                ),
                _ => new_null_array(f.data_type(), n),
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

struct Server {
    _dir: tempfile::TempDir,
    router: axum::Router,
    analyst: String,
    engineer: String,
}

async fn server(limits: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let cat = wh.open_catalog().await.unwrap();
    let mut sink = lakehouse::MedallionSink::new(cat.clone(), wh.commit_path().await.unwrap())
        .await
        .unwrap();
    sink.prepare(&[items()]).await.unwrap();
    sink.write(0, copy_batch(&items().arrow_schema().unwrap()))
        .await
        .unwrap();
    sink.commit(100, &[0]).await.unwrap();

    let (analyst, analyst_sha) = serving::auth::new_key();
    let (engineer, engineer_sha) = serving::auth::new_key();
    let config = ServeConfig::parse(&format!(
        r#"
[roles.analyst]
read = ["silver.*", "gold.*"]
[roles.engineer]
read = ["*"]
[[users]]
name = "ana"
role = "analyst"
api_key_sha256 = "{analyst_sha}"
[[users]]
name = "eve"
role = "engineer"
api_key_sha256 = "{engineer_sha}"
[limits]
{limits}
"#
    ))
    .unwrap();
    let auth = Arc::new(serving::auth::Authenticator::new(&config).unwrap());
    let metrics = Arc::new(serving::metrics::ServeMetrics::default());
    let engine = Arc::new(serving::engine::QueryEngine::new(
        cat,
        config.limits.clone(),
        metrics,
    ));
    let router = serving::http::router(serving::http::HttpState {
        engine,
        auth,
        rest: None,
    });
    Server {
        _dir: dir,
        router,
        analyst,
        engineer,
    }
}

fn post(key: Option<&str>, body: serde_json::Value) -> Request<Body> {
    let mut r = Request::post("/v1/sql").header("content-type", "application/json");
    if let Some(k) = key {
        r = r.header("authorization", format!("Bearer {k}"));
    }
    r.body(Body::from(body.to_string())).unwrap()
}

async fn call(s: &Server, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = s.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

async fn query(s: &Server, key: &str, sql: &str) -> (StatusCode, serde_json::Value) {
    call(s, post(Some(key), serde_json::json!({ "sql": sql }))).await
}

/// The server's Prometheus text.
async fn metrics_text(s: &Server) -> String {
    let resp = s
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn denied(status: StatusCode, body: &serde_json::Value, table: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "permission_denied", "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("permission denied for table {table}"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_reads_what_it_is_granted_and_nothing_else_through_any_plan_shape() {
    let s = server("").await;

    // Who is asking.
    let (st, body) = call(&s, post(None, serde_json::json!({ "sql": "SELECT 1" }))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    let (st, _) = query(&s, "bv_not_a_key", "SELECT 1").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let by_header = Request::post("/v1/sql")
        .header("content-type", "application/json")
        .header("x-api-key", &s.analyst)
        .body(Body::from(r#"{"sql": "SELECT count(*) AS n FROM items"}"#))
        .unwrap();
    let (st, body) = call(&s, by_header).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["n"], ROWS);

    // Every row, unqualified names resolving to silver, with names and types.
    let (st, body) = query(&s, &s.analyst, "SELECT id, v FROM items ORDER BY id").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        body["columns"][0],
        serde_json::json!({"name": "id", "type": "Int64"})
    );
    assert_eq!(body["row_count"], ROWS);
    assert_eq!(body["truncated"], false);
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), ROWS as usize);
    for (i, r) in rows.iter().enumerate() {
        let id = i as i64 + 1;
        assert_eq!(r, &serde_json::json!({"id": id, "v": format!("v{id}")}));
    }

    // Parameters.
    let (st, body) = call(
        &s,
        post(
            Some(&s.analyst),
            serde_json::json!({"sql": "SELECT v FROM silver.items WHERE id = $1 OR v = $2 ORDER BY v", "params": [7, "v9"]}),
        ),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], serde_json::json!([{"v": "v7"}, {"v": "v9"}]));

    // Bronze is not the analyst's, however it is reached.
    for sql in [
        "SELECT * FROM bronze.items",
        "SELECT s.id FROM items s JOIN bronze.items b ON s.id = b.id",
        "WITH b AS (SELECT * FROM bronze.items) SELECT count(*) FROM b",
        "SELECT id FROM items WHERE id IN (SELECT id FROM bronze.items)",
        "SELECT (SELECT max(id) FROM bitvelocity.bronze.items)",
        "SELECT * FROM items UNION ALL SELECT id, v FROM bronze.items",
    ] {
        let (st, body) = query(&s, &s.analyst, sql).await;
        denied(st, &body, "bronze.items");
    }
    let (st, body) = query(
        &s,
        &s.analyst,
        "SELECT count(*) FROM as_of('bronze.items', '2100-01-01 00:00:00')",
    )
    .await;
    denied(st, &body, "bronze.items");
    let (st, body) = query(
        &s,
        &s.analyst,
        "SELECT count(*) AS n FROM as_of('silver.items', '2100-01-01 00:00:00')",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["n"], ROWS);

    // Listings show only granted tables; the engineer sees both.
    let listing = "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables \
                   WHERE table_schema IN ('bronze', 'silver') ORDER BY t";
    let (st, body) = query(&s, &s.analyst, listing).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], serde_json::json!([{"t": "silver.items"}]));
    let (_, body) = query(&s, &s.engineer, listing).await;
    assert_eq!(
        body["rows"],
        serde_json::json!([{"t": "bronze.items"}, {"t": "silver.items"}])
    );
    let (st, body) = query(&s, &s.engineer, "SELECT count(*) AS n FROM bronze.items").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["n"], ROWS);

    // Nothing but queries: no writes, DDL, file access or settings.
    for sql in [
        "INSERT INTO items VALUES (5000, 'x')",
        "DELETE FROM items",
        "CREATE TABLE t AS SELECT 1",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/bitvelocity-leak.csv'",
        "DROP TABLE items",
        "SET datafusion.execution.batch_size = 1",
        "EXPLAIN INSERT INTO items VALUES (1, 'x')",
        "SELECT a.id INTO t FROM items a, items b",
    ] {
        let (st, body) = query(&s, &s.engineer, sql).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{sql}: {body}");
        assert_eq!(body["error"]["code"], "not_allowed", "{sql}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/bitvelocity-leak.csv").exists());
    let (_, body) = query(&s, &s.engineer, "SELECT count(*) AS n FROM items").await;
    assert_eq!(body["rows"][0]["n"], ROWS, "nothing changed");

    // Bad input is named.
    let (st, body) = query(&s, &s.analyst, "SELEC 1").await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("query_error"))
    );
    let (st, body) = call(
        &s,
        Request::post("/v1/sql")
            .header("authorization", format!("Bearer {}", s.analyst))
            .header("content-type", "text/plain")
            .body(Body::from("SELECT 1"))
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, body) = call(
        &s,
        Request::post("/v1/sql")
            .header("authorization", format!("Bearer {}", s.analyst))
            .header("content-type", "application/json")
            .body(Body::from("{\"sql\": "))
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON body"),
        "{body}"
    );

    // The outcomes were counted by door, user and outcome.
    let text = metrics_text(&s).await;
    assert!(
        text.contains(
            "bitvelocity_queries_total{door=\"http\",user=\"ana\",outcome=\"permission_denied\"} 7"
        ),
        "{text}"
    );
    assert!(text.contains("bitvelocity_queries_active 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_answers_stream_the_same_rows() {
    let s = server("").await;
    let req = Request::post("/v1/sql")
        .header("authorization", format!("Bearer {}", s.analyst))
        .header("content-type", "application/json")
        .header("accept", serving::http::ARROW_STREAM)
        .body(Body::from(
            r#"{"sql": "SELECT id, v FROM items ORDER BY id"}"#,
        ))
        .unwrap();
    let resp = s.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], serving::http::ARROW_STREAM);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let mut next = 1i64;
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let vs = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            assert_eq!(ids.value(i), next);
            assert_eq!(vs.value(i), format!("v{next}"));
            assert!(!vs.is_null(i));
            next += 1;
        }
    }
    assert_eq!(next, ROWS + 1);
}

/// A query summing a billion-row cross join: long enough to outlive a 1 s limit.
const SLOW: &str = "SELECT sum(a.id * b.id + c.id) FROM items a, items b, items c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_cap_rows_refuse_when_busy_and_cancel_at_the_deadline() {
    let s = server("max_json_rows = 10\nmax_concurrent_queries = 1\nmax_queued_queries = 0\nquery_timeout_secs = 1").await;
    let (st, body) = query(&s, &s.analyst, "SELECT id FROM items ORDER BY id").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["row_count"], 10);
    assert_eq!(body["truncated"], true);
    assert_eq!(body["rows"].as_array().unwrap().len(), 10);
    assert_eq!(body["rows"][9]["id"], 10);

    // The capped answer's execution ends once the client stops reading (asynchronously):
    // wait for its slot before taking it again.
    let stopped = std::time::Instant::now();
    while query(&s, &s.analyst, "SELECT 0 AS zero").await.0 != StatusCode::OK {
        assert!(
            stopped.elapsed() < std::time::Duration::from_millis(500),
            "the capped answer kept its slot"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // An answer not yet read holds the only slot: the next query is refused, not queued.
    // (A million rows: far more batches than the answer's channel holds, so its execution
    // cannot finish, and free the slot, before the client reads.)
    let held = s
        .router
        .clone()
        .oneshot(post(
            Some(&s.analyst),
            serde_json::json!({"sql": "SELECT a.id FROM items a, items b"}),
        ))
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let (st, body) = query(&s, &s.analyst, "SELECT 1").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "busy");
    drop(held);
    // The client went away: its execution ends and the slot comes back (promptly, not at
    // the deadline: well within the one-second limit).
    let gone = std::time::Instant::now();
    loop {
        let (st, body) = query(&s, &s.analyst, "SELECT 1 AS one").await;
        if st == StatusCode::OK {
            break;
        }
        assert_eq!(body["error"]["code"], "busy", "{body}");
        assert!(
            gone.elapsed() < std::time::Duration::from_millis(500),
            "the slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // Past its deadline a query is cancelled: the answer ends with the timeout, and the
    // slot is free again at once (the only slot, so the next query proves it).
    let started = std::time::Instant::now();
    let (st, body) = query(&s, &s.analyst, SLOW).await;
    let took = started.elapsed();
    match st {
        StatusCode::OK => assert_eq!(body["error"]["code"], "timeout", "{body}"),
        other => {
            assert_eq!(other, StatusCode::GATEWAY_TIMEOUT, "{body}");
            assert_eq!(body["error"]["code"], "timeout", "{body}");
        }
    }
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    let (st, body) = query(&s, &s.analyst, "SELECT 2 AS two").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["two"], 2);

    // A client that starts a large answer and stops reading holds nothing past the
    // deadline: the slot comes back, and the answer, read later, ends in an error rather
    // than looking complete.
    let held = s
        .router
        .clone()
        .oneshot(
            Request::post("/v1/sql")
                .header("authorization", format!("Bearer {}", s.analyst))
                .header("content-type", "application/json")
                .header("accept", serving::http::ARROW_STREAM)
                .body(Body::from(
                    r#"{"sql": "SELECT a.id, b.v FROM items a, items b"}"#,
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (st, body) = query(&s, &s.analyst, "SELECT 3 AS three").await;
    assert_eq!(st, StatusCode::OK, "the deadline freed the slot: {body}");
    let read = held.into_body().collect().await;
    assert!(
        read.is_err(),
        "a timed-out answer must not end as if complete"
    );

    // Each outcome counted once: the cancelled aggregate (an in-band JSON error) and the
    // held answer both as timeouts.
    let text = metrics_text(&s).await;
    assert!(
        text.contains(
            "bitvelocity_queries_total{door=\"http\",user=\"ana\",outcome=\"timeout\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains("bitvelocity_queries_total{door=\"http\",user=\"ana\",outcome=\"busy\"}"),
        "{text}"
    );
    assert!(text.contains("bitvelocity_queries_active 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let s = server("").await;
    let doc: serde_json::Value = serde_json::from_str(serving::http::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort();
    assert_eq!(
        documented,
        ["/health", "/metrics", "/openapi.json", "/v1/sql"]
    );
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(path.as_str())
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", s.analyst))
                .body(Body::from(r#"{"sql": "SELECT 1"}"#))
                .unwrap();
            let resp = s.router.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{method} {path}");
        }
    }
    let resp = s
        .router
        .clone()
        .oneshot(Request::get("/v2/nothing").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Every error code the door answers with is in the document's list.
    let codes = doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"].to_string();
    for code in [
        "unauthenticated",
        "permission_denied",
        "busy",
        "timeout",
        "not_allowed",
        "bad_request",
        "query_error",
        "not_found",
    ] {
        assert!(codes.contains(code), "{code}");
    }
}
