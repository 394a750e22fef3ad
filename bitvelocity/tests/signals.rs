//! SIGTERM stops a running ingester cleanly: the pending batch is committed, exit status 0.
//! A second ingester on the same warehouse is refused, whatever slot it names.

#[path = "../../ingestion/tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> String {
    std::env::var("BITVELOCITY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bitvelocity").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_the_pending_batch_and_exits_zero() {
    let (_pg, url) = common::start_pg("sig").await;
    let client = common::connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t;
             INSERT INTO t SELECT g, 'copied' FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let http = free_addr();
    // Batches close only by size or after a minute: the stream's rows stay pending until the signal.
    let mut child = Command::new(bin())
        .args(["ingest", "--pg", &url, "--publication", "p", "--warehouse"])
        .arg(&wh)
        .args(["--batch-rows", "1000000", "--batch-interval-ms", "600000"])
        .args(["--http", &http])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the ingester streams (the initial copy is committed by then). The slot
    // alone does not say so: PostgreSQL shows it active while it is being created.
    wait_phase(&http, "streaming").await;
    client
        .batch_execute("INSERT INTO t SELECT g, 'streamed' FROM generate_series(1001, 1500) g")
        .await
        .unwrap();
    client
        .batch_execute("UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 1490")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The operations endpoints answer while the ingester streams.
    let health = http_get(&http, "/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"phase\":\"streaming\""),
        "{health}"
    );
    let metrics = http_get(&http, "/metrics");
    assert!(
        metrics.contains("bitvelocity_ingest_snapshot_rows_total 1000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE bitvelocity_ingest_changes_total counter"),
        "{metrics}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "ingester did not exit cleanly on SIGTERM: {status:?}\n{err}"
    );
    assert!(err.contains("shutdown requested"), "{err}");
    // Everything received before the signal is in bronze, without a restart.
    let t = common::tables(&client, "p").await.remove(0);
    assert_eq!(common::assert_bronze_matches(&client, &wh, &t).await, 1490);
    assert_eq!(common::assert_silver_matches(&client, &wh, &t).await, 1490);
}

/// A plain HTTP/1.1 GET, enough to check the operations endpoints without a client crate.
fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).expect("GET from the operations endpoint")
}

/// [`http_get`] that reports a refused connection (the endpoint not up yet) as an error.
fn try_http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Waits until the ingester's `/health` at `http` reports `phase`.
async fn wait_phase(http: &str, phase: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let want = format!("\"phase\":\"{phase}\"");
    loop {
        // Connection refused until the endpoint is up.
        let body = try_http_get(http, "/health").unwrap_or_default();
        if body.contains(&want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ingester never reached phase {phase}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free local address for an ingester's operations endpoint.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Waits until PostgreSQL shows slot `slot` as `active` (or not).
async fn wait_slot(client: &tokio_postgres::Client, slot: &str, active: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active = $2",
                &[&slot, &active],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot {slot} never became active = {active}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ingester_on_the_same_warehouse_is_refused_whatever_its_slot() {
    let (_pg, url) = common::start_pg("fence").await;
    let client = common::connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t;
             INSERT INTO t SELECT g, 'copied' FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let ingest = |slot: &str, http: &str| {
        let mut c = Command::new(bin());
        c.args(["ingest", "--pg", &url, "--publication", "p", "--warehouse"])
            .arg(&wh)
            .args(["--slot", slot, "--batch-interval-ms", "50", "--http", http])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let http = free_addr();
    let mut first = ingest("first", &http).spawn().unwrap();
    wait_phase(&http, "streaming").await;
    // Another slot, same warehouse: refused at once, naming the holder; it writes nothing.
    let second = ingest("second", &free_addr()).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("lease is held by slot:first") && err.contains("another ingester"),
        "{err}"
    );
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'second'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the refused ingester must not create its slot");
    // Killed: the same slot takes its lease back at once and streams on.
    let _ = Command::new("kill")
        .args(["-9", &first.id().to_string()])
        .status();
    first.wait().unwrap();
    // Until PostgreSQL notices the dead connection the slot still shows as active.
    wait_slot(&client, "first", false).await;
    client
        .batch_execute("INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 150) g")
        .await
        .unwrap();
    let http = free_addr();
    let mut again = ingest("first", &http).spawn().unwrap();
    wait_phase(&http, "streaming").await;
    let _ = Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status();
    let status = again.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    again
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}: {err}");
    // A clean stop released it: another slot is no longer refused for the lease (it stops
    // on its own check instead: a new slot cannot continue tables another slot wrote).
    let second = ingest("second", &free_addr())
        .arg("--exit-when-caught-up")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!err.contains("lease is held"), "{err}");
    let mut c = ingest("first", &free_addr());
    c.arg("--exit-when-caught-up");
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = common::tables(&client, "p").await.remove(0);
    assert_eq!(common::assert_bronze_matches(&client, &wh, &t).await, 150);
    assert_eq!(common::assert_silver_matches(&client, &wh, &t).await, 150);
    // `slot drop`: refused while an ingester streams from the slot, done once it stopped.
    let http = free_addr();
    let mut running = ingest("first", &http).spawn().unwrap();
    wait_phase(&http, "streaming").await;
    let drop = |slot: &str| {
        Command::new(bin())
            .args(["slot", "drop", "--pg", &url, "--slot", slot])
            .output()
            .unwrap()
    };
    let refused = drop("first");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("is in use"),
        "{err}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &running.id().to_string()])
        .status();
    assert!(running.wait().unwrap().success());
    wait_slot(&client, "first", false).await;
    let dropped = drop("first");
    let out = String::from_utf8_lossy(&dropped.stdout);
    assert!(
        dropped.status.success(),
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
    assert!(
        out.starts_with("dropped slot first (confirmed up to "),
        "{out}"
    );
    let slots: i64 = client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    let missing = drop("first");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("replication slot first: does not exist"),
        "{err}"
    );
    // Its tables cannot continue from a new slot: the ingester names the gap.
    let after = ingest("first", &free_addr())
        .arg("--exit-when-caught-up")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&after.stderr);
    assert!(!after.status.success() && err.contains("gap"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_commits_keep_the_stream_alive_and_a_dropped_connection_resumes() {
    let (_pg, url) = common::start_pg("alive").await;
    let client = common::connect(&url).await;
    // The server drops a replication client it has not heard from for two seconds.
    // (ALTER SYSTEM refuses to run in the implicit transaction of a multi-statement query.)
    client
        .batch_execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
        .await
        .unwrap();
    client
        .batch_execute(
            "SELECT pg_reload_conf();
             CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t;
             INSERT INTO t SELECT g, 'copied' FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().join("wh");
    let http = free_addr();
    // Every silver commit takes five seconds, well past the server's timeout.
    let mut child = Command::new(bin())
        .args(["ingest", "--pg", &url, "--publication", "p", "--warehouse"])
        .arg(&wh)
        .args(["--batch-interval-ms", "100", "--http", &http])
        .env("BITVELOCITY_STALL_AT", "silver.before_catalog_commit:5000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = Reaper(child.id());
    wait_phase(&http, "streaming").await;
    client
        .batch_execute("INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 150) g")
        .await
        .unwrap();
    // Two slow commits go by without the server dropping the stream.
    let commits = wait_metric(&http, "bitvelocity_ingest_commits_total", |n| n >= 2.0).await;
    client
        .batch_execute("UPDATE t SET v = 'during' WHERE id <= 20")
        .await
        .unwrap();
    wait_metric(&http, "bitvelocity_ingest_commits_total", |n| n > commits).await;
    assert_eq!(metric(&http, "bitvelocity_ingest_reconnects_total"), 0.0);
    // The walsender is killed: the ingester reconnects and resumes from its last commit.
    client
        .batch_execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'bitvelocity_p';
             INSERT INTO t SELECT g, 'after' FROM generate_series(151, 200) g;
             DELETE FROM t WHERE id BETWEEN 90 AND 110;",
        )
        .await
        .unwrap();
    wait_metric(&http, "bitvelocity_ingest_reconnects_total", |n| n == 1.0).await;
    wait_phase(&http, "streaming").await;
    client
        .batch_execute("INSERT INTO t SELECT g, 'last' FROM generate_series(201, 210) g")
        .await
        .unwrap();
    let pg_lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let target = pg_lsn.parse::<ingestion::Lsn>().unwrap().0 as f64;
    wait_metric(&http, "bitvelocity_ingest_confirmed_lsn", |n| n >= target).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("reconnecting and resuming"), "{err}");
    // Exactly one reconnect: the slow commits never cost the stream.
    assert_eq!(err.matches("reconnecting and resuming").count(), 1, "{err}");
    let t = common::tables(&client, "p").await.remove(0);
    assert_eq!(common::assert_bronze_matches(&client, &wh, &t).await, 189);
    assert_eq!(common::assert_silver_matches(&client, &wh, &t).await, 189);
}

/// Kills the ingester if the test fails before stopping it, so it does not outlive it.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

/// The value of Prometheus series `name` at the ingester's `/metrics`.
fn metric(http: &str, name: &str) -> f64 {
    let body = http_get(http, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Waits (up to a minute) until series `name` satisfies `ok`; returns its value.
async fn wait_metric(http: &str, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = metric(http, name);
        if ok(v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
