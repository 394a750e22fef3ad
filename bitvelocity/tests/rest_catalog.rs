//! The Iceberg REST catalog end to end: a warehouse written by the ingester from a
//! project-managed PostgreSQL, the real `bitvelocity serve` process, and the clients users
//! use (tests/python/rest.py): pyiceberg's `RestCatalog` with a bearer key and with OAuth2
//! client credentials, and DuckDB's `ATTACH ... (TYPE iceberg)` with a TOKEN and an OAuth2
//! secret. Silver and bronze rows read through them equal PostgreSQL's (and the engine's);
//! grants hold (403 for forbidden and unknown tables alike); the platform's namespaces
//! refuse writes; a table pyiceberg creates and appends to in the sandbox is read back
//! through every SQL door; stale commits conflict; files outside a table are refused.

#[path = "../../ingestion/tests/common/mod.rs"]
mod common;
mod served;

use std::process::Command;

use domains::ecommerce::{self, WorkloadConfig};
use serde_json::{Value, json};
use served::{pg_text, serve_with};

/// Where the served warehouse lives.
struct Target {
    /// The warehouse (the test's ingester writes through it).
    warehouse: catalog::Warehouse,
    /// `bitvelocity serve`'s warehouse arguments.
    cli_args: Vec<String>,
    /// Its environment (S3 credentials).
    env: Vec<(&'static str, String)>,
    /// Keeps a local warehouse's folder alive.
    _dir: Option<tempfile::TempDir>,
}

/// Rows as the script prints them.
fn rows(v: &Value) -> Vec<Vec<Option<String>>> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not rows: {v}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_and_write_through_the_rest_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let wh_dir = dir.path().join("wh");
    let target = Target {
        warehouse: catalog::Warehouse::new(&wh_dir).unwrap(),
        cli_args: vec!["--warehouse".into(), wh_dir.display().to_string()],
        env: Vec::new(),
        _dir: Some(dir),
    };
    rest_catalog(target, false).await;
}

/// On S3 with a PostgreSQL catalog, `LoadTable` hands clients the storage configuration
/// (credentials too, as configured), and pyiceberg and DuckDB read and write with it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_use_vended_s3_credentials_through_the_rest_catalog() {
    let backend = common::ObjectStoreBackend::start("rest").await;
    let target = Target {
        warehouse: backend.warehouse.clone(),
        cli_args: backend.cli_args(),
        env: backend.env(),
        _dir: None,
    };
    rest_catalog(target, true).await;
    drop(backend);
}

async fn rest_catalog(target: Target, vend: bool) {
    let python = std::env::var("BITVELOCITY_PYTHON").expect(
        "BITVELOCITY_PYTHON is not set: run the suite with scripts/test, which builds the venv with pyiceberg and DuckDB",
    );
    let dir = tempfile::tempdir().unwrap();
    let wh = &target.warehouse;
    let (_pg, url) = common::start_pg("rest").await;
    let mut client = common::connect(&url).await;
    ecommerce::create_schema(&client).await.unwrap();
    let workload = WorkloadConfig {
        operations: 300,
        ..WorkloadConfig::default()
    };
    ecommerce::run_workload(&mut client, &workload, |_| {})
        .await
        .unwrap();
    common::ingest_caught_up(&url, ecommerce::PUBLICATION, wh)
        .await
        .unwrap();
    // Changes after the initial copy, so bronze holds more than one row per customer.
    client
        .batch_execute("UPDATE customers SET email = 'changed-' || email WHERE id % 3 = 0")
        .await
        .unwrap();
    let report = common::ingest_caught_up(&url, ecommerce::PUBLICATION, wh)
        .await
        .unwrap();
    assert!(report.stopped.is_empty(), "{report:?}");
    let customers = pg_text(&client, "SELECT id, email, tier FROM customers ORDER BY id").await;
    let orders = pg_text(
        &client,
        "SELECT id, customer_id, status, total FROM orders ORDER BY id",
    )
    .await;
    assert!(customers.len() > 10 && orders.len() > 10, "too few rows");
    // Bronze holds every change: its ids as the engine reads them.
    let bronze_ids: Vec<Vec<Option<String>>> = {
        let ctx = lakehouse::query::session(wh.open_catalog().await.unwrap())
            .await
            .unwrap();
        let batches = lakehouse::query::run(&ctx, "SELECT id FROM bronze.customers ORDER BY id")
            .await
            .unwrap();
        use arrow::array::AsArray;
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .iter()
                    .map(|v| vec![v.map(|v| v.to_string())])
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert!(
        bronze_ids.len() > customers.len(),
        "bronze should hold more changes than silver rows"
    );

    let (ana_key, ana_sha) = serving::auth::new_key();
    let (eve_key, eve_sha) = serving::auth::new_key();
    let (sam_key, sam_sha) = serving::auth::new_key();
    let (max_key, max_sha) = serving::auth::new_key();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[roles.analyst]
read = ["silver.*"]
[roles.engineer]
read = ["*"]
write = ["sandbox.*"]
[roles.sandboxer]
read = ["sandbox.*"]
write = ["sandbox.*"]
[roles.admin]
read = ["*"]
write = ["*"]
[[users]]
name = "sam"
role = "sandboxer"
api_key_sha256 = "{sam_sha}"
[[users]]
name = "max"
role = "admin"
api_key_sha256 = "{max_sha}"
[[users]]
name = "ana"
role = "analyst"
api_key_sha256 = "{ana_sha}"
[[users]]
name = "eve"
role = "engineer"
api_key_sha256 = "{eve_sha}"
pg_scram_sha256 = "{eve_scram}"
[rest_catalog]
vend_credentials = {vend}
"#,
            eve_scram = serving::pg::Verifier::new(&eve_key).to_text(),
        ),
    )
    .unwrap();
    let served = serve_with(&target.cli_args, &config, &target.env);
    let users_file = dir.path().join("users.json");
    std::fs::write(
        &users_file,
        json!({ "ana": ana_key, "eve": eve_key, "sam": sam_key, "max": max_key }).to_string(),
    )
    .unwrap();
    let reads_file = dir.path().join("reads.json");
    std::fs::write(
        &reads_file,
        json!([
            {"table": "silver.customers", "columns": ["id", "email", "tier"]},
            {"table": "silver.orders", "columns": ["id", "customer_id", "status", "total"]},
            {"table": "bronze.customers", "columns": ["id"]},
        ])
        .to_string(),
    )
    .unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/rest.py"
        ))
        .args(["--http", &served.http, "--flight", &served.flight])
        .args(["--pgwire", &served.pgwire])
        .arg("--users")
        .arg(&users_file)
        .arg("--reads")
        .arg(&reads_file)
        .arg("--scratch")
        .arg(&scratch)
        .args(["--warehouse-url", &wh.url()])
        .output()
        .expect("run tests/python/rest.py");
    assert!(
        out.status.success(),
        "rest.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rest.py printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut failures = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{what}: {detail}"));
        }
    };
    let is = |key: &str, want: Value| (got[key] == want, format!("{} != {want}", got[key]));

    // Raw HTTP.
    for (key, want) in [
        ("config_without_credentials", json!(401)),
        ("unknown_route", json!(404)),
        ("wrong_warehouse", json!(400)),
        ("oauth_wrong_secret", json!(401)),
        ("manifest_list_outside", json!(403)),
        ("wrong_uuid", json!("CommitFailedException")),
    ] {
        let (ok, detail) = is(key, want);
        check(key, ok, detail);
    }
    // Reads equal PostgreSQL (silver) and the engine (bronze) through every client.
    let want_reads = |reads: &Value, client: &str, check: &mut dyn FnMut(&str, bool, String)| {
        for (table, want) in [
            ("silver.customers", &customers),
            ("silver.orders", &orders),
            ("bronze.customers", &bronze_ids),
        ] {
            let got = &reads[table];
            let ok = got.is_array() && &rows(got) == want;
            check(
                &format!("{client} {table}"),
                ok,
                format!(
                    "{} rows, want {}: {}",
                    got.as_array().map_or(0, |a| a.len()),
                    want.len(),
                    truncate(got)
                ),
            );
        }
    };
    for client in [
        "pyiceberg_token",
        "pyiceberg_oauth",
        "duckdb_token",
        "duckdb_oauth",
    ] {
        want_reads(&got[client], client, &mut check);
    }
    // The analyst: silver only, 403 for bronze whether the table exists or not.
    for (key, want) in [
        ("engineer_namespaces", json!(["bronze", "silver"])),
        ("analyst_namespaces", json!(["silver"])),
        ("analyst_bronze_existing", json!("ForbiddenError")),
        ("analyst_bronze_unknown", json!("ForbiddenError")),
        ("analyst_bronze_listing", json!("ForbiddenError")),
        ("analyst_silver_unknown", json!("NoSuchTableError")),
        ("analyst_creates_namespace", json!("ForbiddenError")),
        ("analyst_reads_sandbox", json!("ForbiddenError")),
        // Writes into the platform's namespaces, or outside the table, are refused.
        ("create_in_silver", json!("ForbiddenError")),
        ("admin_create_in_silver", json!("ForbiddenError")),
        ("admin_drop_silver_table", json!("ForbiddenError")),
        ("admin_create_bronze_namespace", json!("ForbiddenError")),
        ("admin_silver_properties", json!("ForbiddenError")),
        ("silver_list_after_purges", json!(true)),
        // Tampered to name silver's location: no commit reads anything through it.
        ("tampered_location_commit", json!(403)),
        // Still in its folder: a commit touching no file goes through.
        ("tampered_manifest_list_commit", json!(200)),
        ("silver_rows_after_purges", json!(customers.len())),
        ("create_in_bronze", json!("ForbiddenError")),
        ("drop_silver_table", json!("ForbiddenError")),
        ("create_outside_warehouse", json!("ForbiddenError")),
        ("add_file_outside_warehouse", json!("ForbiddenError")),
        ("add_other_tables_file", json!("ForbiddenError")),
        ("stale_commit", json!("CommitFailedException")),
        ("stale_append_retried", json!("ok")),
        ("drop_nonempty_namespace", json!("NamespaceNotEmptyError")),
        ("scratch_exists_after_purge", json!(false)),
        ("scratch_data_files_left", json!(0)),
    ] {
        let (ok, detail) = is(key, want);
        check(key, ok, detail);
    }
    let (ok, detail) = is("scratch_data_files", json!(1));
    check("scratch_data_files", ok, detail);
    let config_keys = if !vend {
        json!([])
    } else {
        json!([
            "s3.access-key-id",
            "s3.endpoint",
            "s3.path-style-access",
            "s3.region",
            "s3.secret-access-key"
        ])
    };
    let (ok, detail) = is("load_config_keys", config_keys);
    check("load_config_keys", ok, detail);
    let silver_tables: Vec<String> = ecommerce::TABLES
        .iter()
        .map(|t| format!("silver.{t}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (ok, detail) = is("analyst_silver_tables", json!(silver_tables));
    check("analyst_silver_tables", ok, detail);
    let analyst_duck = &got["duckdb_analyst"];
    check(
        "duckdb analyst silver.customers",
        analyst_duck["silver.customers"].is_array()
            && rows(&analyst_duck["silver.customers"]) == customers,
        truncate(&analyst_duck["silver.customers"]),
    );
    check(
        "duckdb analyst bronze.customers refused",
        analyst_duck["bronze.customers"].get("error").is_some(),
        truncate(&analyst_duck["bronze.customers"]),
    );
    // The sandbox table pyiceberg wrote: the same rows through pyiceberg, DuckDB and every door.
    let notes = json!([
        ["1", "a"],
        ["2", "b"],
        ["3", null],
        ["4", "d"],
        ["5", "e"],
        ["6", "f"]
    ]);
    for (key, value) in [
        ("pyiceberg_notes", &got["pyiceberg_notes"]),
        ("duckdb_notes", &got["duckdb_token"]["sandbox.notes"]),
        ("http_notes", &got["http_notes"]["rows"]),
        ("flight_notes", &got["flight_notes"]["rows"]),
        ("pgwire_notes", &got["pgwire_notes"]["rows"]),
    ] {
        check(key, value == &notes, format!("{value} != {notes}"));
    }
    check(
        "sandboxer_notes",
        got["sandboxer_notes"]["rows"] == json!([["6"]]),
        truncate(&got["sandboxer_notes"]),
    );
    for key in ["tampered_location_http", "tampered_manifest_list_http"] {
        check(
            key,
            got[key]["error"]["kind"] == "query_error",
            truncate(&got[key]),
        );
    }
    check(
        "analyst_http_notes",
        got["analyst_http_notes"]["error"]["kind"] == "permission_denied",
        truncate(&got["analyst_http_notes"]),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A value's text, cut short for a failure message.
fn truncate(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 400 {
        format!("{}...", &s[..400])
    } else {
        s
    }
}
