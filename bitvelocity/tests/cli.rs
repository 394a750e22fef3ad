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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
