//! The command line as a user meets it: the demo, SQL, and one-line errors for bad input.

use std::process::Command;

fn bin() -> String {
    std::env::var("BITVELOCITY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bitvelocity").to_string())
}

#[test]
fn demo_matches_postgres_and_leaves_a_queryable_warehouse() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("demo");
    let out = Command::new(bin())
        .args(["demo", "--operations", "300", "--warehouse"])
        .arg(&wh)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    for t in domains::ecommerce::TABLES {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(t)),
            "no line for {t} in:\n{stdout}"
        );
    }
    let out = Command::new(bin())
        .args([
            "sql",
            "SELECT _op, count(*) AS n FROM bronze.orders GROUP BY _op ORDER BY _op",
            "--warehouse",
        ])
        .arg(&wh)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("| insert |") && table.contains("| update |"),
        "{table}"
    );
    // An unqualified name is the current state: silver.
    let out = Command::new(bin())
        .args([
            "sql",
            "SELECT (SELECT count(*) FROM orders) = (SELECT count(*) FROM silver.orders) AS same, \
             (SELECT count(*) FROM orders) < (SELECT count(*) FROM bronze.orders) AS fewer_than_changes",
            "--warehouse",
        ])
        .arg(&wh)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| true | true "), "{table}");
    // `tables` lists every table with its live row count, from metadata alone.
    let listed = run_ok(&["tables", "--warehouse", wh.to_str().unwrap()]);
    let rows = cells(&listed);
    assert_eq!(
        rows[0],
        [
            "layer",
            "table",
            "source",
            "rows",
            "data files",
            "delete files",
            "source position",
            "last commit",
            "capture"
        ]
    );
    assert_eq!(
        rows.len(),
        1 + 2 * domains::ecommerce::TABLES.len(),
        "{listed}"
    );
    for r in &rows[1..] {
        let (layer, name) = (&r[0], &r[1]);
        let counted = run_ok(&[
            "sql",
            &format!("SELECT count(*) AS n FROM {layer}.{name}"),
            "--warehouse",
            wh.to_str().unwrap(),
        ]);
        assert_eq!(cells(&counted)[1][0], r[3], "{layer}.{name}: {listed}");
        assert_eq!(r[2], format!("public.{name}"));
        assert!(r[6].contains('/') && r[8].is_empty(), "{listed}");
    }
    // `snapshots` shows the table's history; the current one's count is the table's.
    let history = run_ok(&["snapshots", "orders", "--warehouse", wh.to_str().unwrap()]);
    let snaps = cells(&history);
    let current: Vec<_> = snaps.iter().filter(|r| r[0].ends_with(" *")).collect();
    assert_eq!(current.len(), 1, "{history}");
    let silver_orders = rows
        .iter()
        .find(|r| r[0] == "silver" && r[1] == "orders")
        .unwrap();
    assert_eq!(current[0][6], silver_orders[3], "{history}");
    assert_eq!(current[0][3], silver_orders[6], "{history}");
    assert!(snaps[1][2] == "append" && snaps.len() > 2, "{history}");
    let e = one_line_error(&["snapshots", "nosuch", "--warehouse", wh.to_str().unwrap()]);
    assert!(e.contains("no table silver.nosuch"), "{e}");
    // `resync` names what it can re-copy, and records a request for the next ingester.
    let e = one_line_error(&["resync", "nosuch", "--warehouse", wh.to_str().unwrap()]);
    assert!(
        e.contains("no captured table named \"nosuch\"") && e.contains("orders"),
        "{e}"
    );
    let asked = run_ok(&[
        "resync",
        "silver.orders",
        "--warehouse",
        wh.to_str().unwrap(),
    ]);
    assert!(
        asked.contains("resync of orders requested: no ingester runs"),
        "{asked}"
    );
    // Waiting with nobody to do it ends with a clear error, not forever.
    let e = one_line_error(&[
        "resync",
        "orders",
        "--wait",
        "--warehouse",
        wh.to_str().unwrap(),
    ]);
    assert!(
        e.contains("stays requested until `bitvelocity ingest` starts"),
        "{e}"
    );
    // The demo empties only a folder it created: its own, yes; any other, never.
    let again = Command::new(bin())
        .args(["demo", "--operations", "50", "--warehouse"])
        .arg(&wh)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("precious.txt"), "keep me").unwrap();
    let e = one_line_error(&["demo", "--warehouse", mine.to_str().unwrap()]);
    assert!(e.contains("was not created by the demo"), "{e}");
    assert!(mine.join("precious.txt").exists());
}

/// Runs the binary with `args`, which must succeed; returns its stdout.
fn run_ok(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cells of a printed text table, header row first.
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn one_line_error(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn bad_input_is_a_clear_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let wh = wh.to_str().unwrap();
    let e = one_line_error(&[
        "ingest",
        "--pg",
        "http://x",
        "--publication",
        "p",
        "--warehouse",
        wh,
    ]);
    assert!(e.starts_with("error: invalid PostgreSQL URL"), "{e}");
    // Warehouse locations: an unknown scheme is refused (never a local folder named after
    // it), and object storage needs a catalog.
    let e = one_line_error(&["sql", "SELECT 1", "--warehouse", "gs://bucket/lake"]);
    assert!(e.contains("unknown scheme gs"), "{e}");
    assert!(!std::path::Path::new("gs:").exists());
    let e = one_line_error(&["sql", "SELECT 1", "--warehouse", "s3://bucket/lake"]);
    assert!(e.contains("--catalog"), "{e}");
    let e = one_line_error(&[
        "sql",
        "SELECT 1",
        "--warehouse",
        wh,
        "--catalog",
        "mysql://u:secret@h/db",
    ]);
    assert!(
        e.contains("mysql://u:***@h/db") && !e.contains("secret"),
        "{e}"
    );
    // Port 1: nothing listens there, and unlike a port freed by a probe it cannot be taken
    // by a server another test starts meanwhile.
    let port = 1;
    let url = format!("postgres://postgres@127.0.0.1:{port}/db");
    let e = one_line_error(&[
        "ingest",
        "--pg",
        &url,
        "--publication",
        "p",
        "--warehouse",
        wh,
    ]);
    assert!(
        e.starts_with(&format!(
            "error: cannot connect to PostgreSQL at 127.0.0.1:{port}"
        )),
        "{e}"
    );
    let missing = dir.path().join("nothing-here");
    let e = one_line_error(&["sql", "SELECT 1", "--warehouse", missing.to_str().unwrap()]);
    assert!(e.contains("no warehouse at"), "{e}");
}
