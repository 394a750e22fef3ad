//! Other Iceberg engines read bronze and silver: pyiceberg (SqlCatalog over catalog.db) and
//! DuckDB (iceberg_scan), each replaying the change log, and reading silver with its
//! position-delete files applied, to exactly the PostgreSQL rows.

#[path = "../../ingestion/tests/common/mod.rs"]
mod common;

use std::process::Command;

use domains::ecommerce::{self, WorkloadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyiceberg_and_duckdb_read_bronze_and_silver_as_the_source_rows() {
    let python = std::env::var("BITVELOCITY_PYTHON").expect(
        "BITVELOCITY_PYTHON is not set: run the suite with scripts/test, which builds the venv with pyiceberg and DuckDB",
    );
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
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    common::ingest_caught_up(&url, ecommerce::PUBLICATION, &wh)
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
    common::ingest_caught_up(&url, ecommerce::PUBLICATION, &wh)
        .await
        .unwrap();

    let stdout = check(&python, &wh, &url);
    // Both engines checked every table, in both layers.
    for engine in ["pyiceberg", "duckdb"] {
        for silver in [false, true] {
            let ok = stdout
                .lines()
                .filter(|l| {
                    l.starts_with(engine) && l.contains(" silver ") == silver && l.ends_with("OK")
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
        .args(["maintain", "--warehouse"])
        .arg(&wh)
        .args([
            "--expire-older-than-secs",
            "0",
            "--retain-last",
            "2",
            "--orphan-older-than-secs",
            "0",
            "--min-small-files",
            "2",
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
    let stdout = check(&python, &wh, &url);
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

/// Runs the Python check of every table with pyiceberg and DuckDB; returns its output.
fn check(python: &str, wh: &std::path::Path, url: &str) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/check_tables.py"
    );
    let out = Command::new(python)
        .arg(script)
        .arg("--warehouse")
        .arg(wh)
        .args(["--pg", url, "--tables", &ecommerce::TABLES.join(",")])
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
