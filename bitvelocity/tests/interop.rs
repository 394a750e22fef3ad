//! Other Iceberg engines read bronze and silver: pyiceberg (SqlCatalog) and DuckDB
//! (iceberg_scan), each replaying the change log, and reading silver with its
//! position-delete files applied, to exactly the PostgreSQL rows; on a local warehouse with
//! its SQLite catalog, and on S3 (SeaweedFS; DuckDB through httpfs) with a PostgreSQL catalog.

#[path = "../../ingestion/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use domains::ecommerce::{self, WorkloadConfig};

/// Where the tables go, and how other processes reach them.
struct Target {
    warehouse: catalog::Warehouse,
    /// `bitvelocity` arguments naming warehouse and catalog.
    cli_args: Vec<String>,
    /// Environment of other processes (S3 settings).
    env: Vec<(&'static str, String)>,
    /// pyiceberg's catalog URI.
    py_catalog: String,
    /// A local folder for scratch files.
    scratch: PathBuf,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_bronze_and_silver_as_the_source_rows() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let warehouse = catalog::Warehouse::new(&wh).unwrap();
    let target = Target {
        py_catalog: format!("sqlite:///{}/catalog.db", wh.display()),
        cli_args: vec!["--warehouse".into(), wh.display().to_string()],
        env: Vec::new(),
        warehouse,
        scratch: dir.path().to_path_buf(),
    };
    interop(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_from_s3_with_a_postgres_catalog() {
    let backend = common::ObjectStoreBackend::start("interop").await;
    let dir = tempfile::tempdir().unwrap();
    let target = Target {
        warehouse: backend.warehouse.clone(),
        cli_args: backend.cli_args(),
        env: backend.env(),
        py_catalog: backend.sqlalchemy_catalog(),
        scratch: dir.path().to_path_buf(),
    };
    interop(target).await;
}

async fn interop(target: Target) {
    let python = std::env::var("BITVELOCITY_PYTHON").expect(
        "BITVELOCITY_PYTHON is not set: run the suite with scripts/test, which builds the venv with pyiceberg and DuckDB",
    );
    let wh = &target.warehouse;
    let (_pg, url) = common::start_pg("shop").await;
    let mut client = common::connect(&url).await;
    ecommerce::create_schema(&client).await.unwrap();
    let first = WorkloadConfig {
        operations: 300,
        ..WorkloadConfig::default()
    };
    ecommerce::run_workload(&mut client, &first, |_| {})
        .await
        .unwrap();
    common::ingest_caught_up(&url, ecommerce::PUBLICATION, wh)
        .await
        .unwrap();
    let more = WorkloadConfig {
        seed_customers: 0,
        seed_products: 0,
        operations: 600,
        seed: 7,
    };
    ecommerce::run_workload(&mut client, &more, |_| {})
        .await
        .unwrap();
    common::ingest_caught_up(&url, ecommerce::PUBLICATION, wh)
        .await
        .unwrap();

    // Schema changes: a rename, widenings past the old type's range, an added column; then
    // rows that use them. Readers find old files' values by field id.
    let before = silver_snapshot(wh, "customers").await;
    let birth_dates = id_to_text(&client, "SELECT id, birth_date::text FROM customers").await;
    client
        .batch_execute(
            "ALTER TABLE customers RENAME COLUMN birth_date TO born_on;
             ALTER TABLE order_items ALTER COLUMN quantity TYPE bigint;
             ALTER TABLE products ALTER COLUMN weight_kg TYPE double precision;
             ALTER TABLE orders ADD COLUMN note text;
             UPDATE customers SET born_on = born_on + 1 WHERE id % 4 = 0;
             UPDATE order_items SET quantity = quantity + 3000000000 WHERE line_no = 1;
             UPDATE products SET weight_kg = weight_kg + 0.000000001 WHERE id % 3 = 0;
             UPDATE orders SET note = 'note ' || id WHERE id % 3 = 0;",
        )
        .await
        .unwrap();
    // TOASTed descriptions, then updates that leave them out of the stream (unchanged TOAST):
    // every reader must show the carried value.
    client
        .batch_execute(
            "ALTER TABLE products ALTER COLUMN description SET STORAGE EXTERNAL;
             UPDATE products SET description = repeat(md5(id::text), 100) WHERE id % 5 = 0;",
        )
        .await
        .unwrap();
    client
        .batch_execute("UPDATE products SET stock = stock + 1 WHERE id % 5 = 0")
        .await
        .unwrap();
    let report = common::ingest_caught_up(&url, ecommerce::PUBLICATION, wh)
        .await
        .unwrap();
    assert!(report.stopped.is_empty(), "{report:?}");
    // Time travel to before the rename returns the old column and the old rows.
    let cat = wh.open_catalog().await.unwrap();
    let ctx = lakehouse::query::session(cat).await.unwrap();
    let old = lakehouse::query::run(
        &ctx,
        &format!("SELECT id, CAST(birth_date AS VARCHAR) FROM as_of('silver.customers', {before})"),
    )
    .await
    .unwrap();
    assert_eq!(
        batches_to_map(&old),
        birth_dates,
        "silver.customers as of {before}"
    );
    let tt = target.scratch.join("time_travel.json");
    std::fs::write(
        &tt,
        format!(
            "{{\"table\": \"customers\", \"snapshot\": {before}, \"column\": \"birth_date\", \"rows\": {}}}",
            json_map(&birth_dates)
        ),
    )
    .unwrap();

    let stdout = check(&python, &target, &url);
    let toast_line = stdout
        .lines()
        .find(|l| l.starts_with("duckdb    products:"))
        .unwrap_or_else(|| panic!("no DuckDB line for products:\n{stdout}"));
    assert!(
        !toast_line.contains("(0 with unchanged TOAST)"),
        "DuckDB saw no unchanged TOAST to carry: {toast_line}"
    );
    assert!(
        stdout.contains("pyiceberg time travel silver.customers")
            && stdout.contains("duckdb    time travel silver.customers"),
        "time travel not checked:\n{stdout}"
    );
    // Maintenance below expires that snapshot (it keeps the last 2): nothing to travel to then.
    std::fs::remove_file(&tt).unwrap();
    // Both engines checked every table, in both layers.
    for engine in ["pyiceberg", "duckdb"] {
        for silver in [false, true] {
            let ok = stdout
                .lines()
                .filter(|l| {
                    l.starts_with(engine)
                        && !l.contains("time travel")
                        && l.contains(" silver ") == silver
                        && l.ends_with("OK")
                })
                .count();
            assert_eq!(ok, ecommerce::TABLES.len(), "{engine}, silver: {silver}");
        }
    }
    // Silver was read with delete files in play (updates and deletes of earlier rows).
    let with_deletes = stdout
        .lines()
        .filter(|l| l.starts_with("pyiceberg silver") && !l.contains("(0 delete files)"))
        .count();
    assert!(
        with_deletes >= 3,
        "too few silver tables had delete files:\n{stdout}"
    );

    // After compaction (every delete file folded into clean data files, old snapshots
    // expired, unreferenced files removed) both engines still read exactly the source rows.
    let maintain = Command::new(env!("CARGO_BIN_EXE_bitvelocity"))
        .arg("maintain")
        .args(&target.cli_args)
        .envs(target.env.iter().map(|(k, v)| (*k, v)))
        .args([
            "--expire-older-than-secs",
            "0",
            "--retain-last",
            "2",
            "--orphan-older-than-secs",
            "0",
            "--min-small-files",
            "2",
            // Every file with a deleted row rewritten: no delete file may be left.
            "--delete-ratio",
            "0",
        ])
        .output()
        .expect("run maintain");
    let report = String::from_utf8_lossy(&maintain.stdout);
    assert!(
        maintain.status.success(),
        "maintain failed: {report}{}",
        String::from_utf8_lossy(&maintain.stderr)
    );
    println!("{report}");
    let stdout = check(&python, &target, &url);
    let after: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" silver ") && l.ends_with("OK"))
        .collect();
    assert_eq!(after.len(), 2 * ecommerce::TABLES.len(), "{stdout}");
    assert!(
        after.iter().all(|l| l.contains("(0 delete files)")),
        "delete files left after compaction:\n{stdout}"
    );
}

/// The current snapshot id of `silver.<table>`.
async fn silver_snapshot(wh: &catalog::Warehouse, table: &str) -> i64 {
    let cat = wh.open_catalog().await.unwrap();
    let t = cat
        .load_table(&catalog::TableIdent::from_strs(["silver", table]).unwrap())
        .await
        .unwrap();
    t.metadata().current_snapshot().unwrap().snapshot_id()
}

/// A two-column query (id, text) as a map.
async fn id_to_text(
    client: &tokio_postgres::Client,
    sql: &str,
) -> std::collections::BTreeMap<i64, Option<String>> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn batches_to_map(
    batches: &[arrow::record_batch::RecordBatch],
) -> std::collections::BTreeMap<i64, Option<String>> {
    use arrow::array::{Array, AsArray};
    let mut out = std::collections::BTreeMap::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let text = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
        let text = text.as_string::<i32>();
        for i in 0..b.num_rows() {
            let v = (!text.is_null(i)).then(|| text.value(i).to_string());
            out.insert(ids.value(i), v);
        }
    }
    out
}

fn json_map(m: &std::collections::BTreeMap<i64, Option<String>>) -> String {
    let body: Vec<String> = m
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("\"{k}\": \"{v}\""),
            None => format!("\"{k}\": null"),
        })
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// Runs the Python check of every table with pyiceberg and DuckDB; returns its output.
fn check(python: &str, target: &Target, url: &str) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/check_tables.py"
    );
    let tt: &Path = &target.scratch.join("time_travel.json");
    let out = Command::new(python)
        .arg(script)
        .args(["--warehouse", &target.warehouse.url()])
        .args(["--catalog", &target.py_catalog])
        .args(["--pg", url, "--tables", &ecommerce::TABLES.join(",")])
        .arg("--time-travel")
        .arg(tt)
        .envs(target.env.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "interop check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
