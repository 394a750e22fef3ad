//! kill -9 the ingester at many points (during the copy, mid-transaction, around
//! Iceberg commits, between the bronze and the silver commit, around acknowledgements),
//! restart it each time, and check that bronze holds every source change exactly once,
//! in commit order, and that silver equals the source; on local disk with SQLite and on S3
//! (SeaweedFS) with a PostgreSQL catalog.

#[path = "../../ingestion/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{CliWarehouse, ObjectStoreBackend};
use domains::ecommerce::{self, WorkloadConfig};

/// (crash point, which hit): the process kills itself with SIGKILL there.
const CRASHES: &[(&str, u32)] = &[
    // Initial copy (six tables, copied one by one under an exported snapshot).
    ("ingest.after_discover", 1),
    ("snapshot.after_slot_created", 1),
    ("snapshot.before_copy", 2),
    ("snapshot.mid_copy", 3),
    ("snapshot.after_piece", 2),
    ("medallion.between_copy_pieces", 3),
    ("bronze.before_catalog_commit", 1),
    ("bronze.after_catalog_commit", 1),
    ("snapshot.before_commit", 1),
    // Bronze holds the first table's whole copy, silver only pieces: silver rebuilds it from
    // bronze in pieces, and that rebuild is killed too.
    ("medallion.between_bronze_and_silver", 1),
    ("medallion.catch_up_piece", 1),
    ("snapshot.after_commit", 1),
    ("snapshot.after_all_copied", 1),
    ("medallion.between_bronze_and_silver", 1),
    ("silver.before_catalog_commit", 1),
    // Streaming.
    ("stream.after_start", 1),
    ("stream.begin", 3),
    ("stream.mid_txn", 25),
    ("stream.after_commit_message", 7),
    ("stream.before_sink_commit", 1),
    ("bronze.before_catalog_commit", 2),
    ("bronze.between_tables", 2),
    ("bronze.after_catalog_commit", 3),
    ("stream.after_sink_commit", 2),
    ("stream.before_status", 2),
    ("stream.after_status", 1),
    ("stream.mid_txn", 180),
    ("bronze.write", 40),
    ("stream.begin", 60),
    ("bronze.after_files_closed", 2),
    ("stream.keepalive", 1),
    // Silver: the row delta after bronze committed the same batch.
    ("medallion.between_bronze_and_silver", 5),
    ("silver.after_data_files", 3),
    ("silver.before_catalog_commit", 4),
    ("silver.after_catalog_commit", 2),
    ("silver.between_tables", 3),
];

fn bin() -> String {
    std::env::var("BITVELOCITY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_bitvelocity").to_string())
}

fn ingest_cmd(url: &str, warehouse: &CliWarehouse, exit: bool) -> Command {
    ingest_cmd_batching(url, warehouse, exit, 40)
}

fn ingest_cmd_batching(
    url: &str,
    warehouse: &CliWarehouse,
    exit: bool,
    batch_rows: u32,
) -> Command {
    ingest_cmd_full(url, warehouse, exit, batch_rows, 4096)
}

fn ingest_cmd_full(
    url: &str,
    warehouse: &CliWarehouse,
    exit: bool,
    batch_rows: u32,
    copy_piece_bytes: usize,
) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "ingest",
        "--pg",
        url,
        "--publication",
        ecommerce::PUBLICATION,
    ]);
    warehouse.apply(&mut c);
    c.args([
        "--batch-rows",
        &batch_rows.to_string(),
        "--batch-interval-ms",
        "50",
        "--flush-rows",
        "16",
        // Tiny pieces and spills: every run commits the copy in pieces and spills silver.
        "--copy-piece-bytes",
        &copy_piece_bytes.to_string(),
        "--silver-spill-bytes",
        "8192",
        // Key index checkpoints after every commit: restarts replay the commits after one.
        "--index-checkpoint-secs",
        "0",
    ])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if exit {
        c.arg("--exit-when-caught-up");
    }
    c
}

async fn workload(url: &str, seed: u64, ops: u32, seeded: bool) {
    let mut client = common::connect(url).await;
    let cfg = if seeded {
        WorkloadConfig {
            seed_customers: 0,
            seed_products: 0,
            operations: ops,
            seed,
        }
    } else {
        WorkloadConfig {
            seed_customers: 200,
            seed_products: 100,
            operations: ops,
            seed,
        }
    };
    ecommerce::run_workload(&mut client, &cfg, |_| {})
        .await
        .expect("workload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_point_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_at_every_point(&CliWarehouse::local(&dir.path().join("wh"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_point_on_s3_with_a_postgres_catalog() {
    let backend = ObjectStoreBackend::start("crash").await;
    kill_9_at_every_point(&CliWarehouse::object_store(&backend)).await;
}

async fn kill_9_at_every_point(wh: &CliWarehouse) {
    let (_pg, url) = common::start_pg("shop").await;
    let client = common::connect(&url).await;
    ecommerce::create_schema(&client).await.unwrap();
    workload(&url, 1, 100, false).await;
    let mut boundary_txid: Option<i64> = None;

    for (i, (point, nth)) in CRASHES.iter().enumerate() {
        let out = ingest_cmd(&url, wh, true)
            .env("BITVELOCITY_CRASH_AT", format!("{point}:{nth}"))
            .output()
            .expect("run ingester");
        assert_eq!(
            out.status.signal(),
            Some(9),
            "run {i}: crash point {point}:{nth} was not reached (status {:?}); stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if *point == "stream.after_start" {
            // From here on every table has been copied: later transactions reach bronze only through the stream.
            boundary_txid = Some(
                client
                    .query_one("SELECT txid_current()", &[])
                    .await
                    .unwrap()
                    .get(0),
            );
        }
        workload(&url, 10 + i as u64, 40, true).await;
    }

    // Kills from outside at arbitrary moments, while a workload runs concurrently.
    for (k, delay_ms) in [150u64, 420, 700, 260].into_iter().enumerate() {
        let w = tokio::spawn({
            let url = url.clone();
            async move { workload(&url, 100 + k as u64, 60, true).await }
        });
        let mut child = ingest_cmd(&url, wh, false).spawn().expect("spawn ingester");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(
            status.signal() == Some(9) || status.success(),
            "external kill {k}: {status:?}"
        );
        w.await.unwrap();
    }

    // A clean run catches up and exits 0.
    let out = ingest_cmd(&url, wh, true).output().unwrap();
    assert!(
        out.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tables = common::tables(&client, ecommerce::PUBLICATION).await;
    assert_eq!(tables.len(), 6);
    let boundary = boundary_txid.expect("boundary recorded");
    let audit = audit_ops_after(&client, boundary).await;
    assert!(
        audit.values().map(Vec::len).sum::<usize>() > 500,
        "workload too small to mean anything"
    );
    for t in &tables {
        // State: replaying bronze, and silver as it stands, give exactly SELECT * FROM the source.
        let n = common::assert_bronze_matches(&client, wh, t).await;
        common::assert_silver_matches(&client, wh, t).await;
        assert!(
            n > 0,
            "{} is empty: the workload did not exercise it",
            t.name
        );
        if t.name == "audit_history" {
            continue;
        }
        // Changes: after the boundary every audited change appears once, in commit order.
        let changes = common::bronze_changes(wh, t).await;
        let got: Vec<(i64, String)> = changes
            .iter()
            .filter_map(|c| c.txid.filter(|&x| x > boundary).map(|x| (x, c.op.clone())))
            .collect();
        let want = audit.get(&t.name).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            want.len(),
            "{}: {} changes in bronze, {} in the audit history",
            t.name,
            got.len(),
            want.len()
        );
        assert_eq!(
            got, want,
            "{}: bronze changes differ from the audit history (order or content)",
            t.name
        );
    }
}

/// (crash point, which hit, pieces of the copy): a resync killed between its marks, mid-copy,
/// and between bronze's and silver's commit of a copy made in one piece (bronze then holds
/// the new copy while silver still holds the old rows).
const RESYNC_CRASHES: &[(&str, u32, usize)] = &[
    ("medallion.between_restart_marks", 1, 4096),
    ("snapshot.after_piece", 2, 4096),
    ("medallion.between_bronze_and_silver", 1, 64 << 20),
    ("medallion.between_bronze_and_silver", 2, 64 << 20),
    ("snapshot.after_commit", 1, 64 << 20),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_killed_at_every_step_ends_equal_to_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let wh = CliWarehouse::local(&dir.path().join("wh"));
    let (_pg, url) = common::start_pg("shop").await;
    let client = common::connect(&url).await;
    ecommerce::create_schema(&client).await.unwrap();
    workload(&url, 1, 100, false).await;
    // A keyless table too: a copy replayed over old rows would double every one of them.
    client
        .batch_execute(&format!(
            "CREATE TABLE notes (a int, b text);
             ALTER TABLE notes REPLICA IDENTITY FULL;
             INSERT INTO notes SELECT g % 50, 'n' || g FROM generate_series(1, 300) g;
             ALTER PUBLICATION {} ADD TABLE notes;",
            ecommerce::PUBLICATION
        ))
        .await
        .unwrap();
    let out = ingest_cmd(&url, &wh, true).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, (point, nth, piece)) in RESYNC_CRASHES.iter().enumerate() {
        // Rows deleted before the resync must not come back; equal rows must not double.
        client
            .batch_execute(&format!(
                "DELETE FROM notes WHERE a = {i}; INSERT INTO notes VALUES ({i}, 'again');
                 DELETE FROM order_items WHERE ctid IN (SELECT ctid FROM order_items LIMIT 3);"
            ))
            .await
            .unwrap();
        workload(&url, 200 + i as u64, 30, true).await;
        for table in ["notes", "order_items"] {
            let mut c = Command::new(bin());
            c.args(["resync", table]);
            wh.apply(&mut c);
            let asked = c.output().unwrap();
            assert!(
                asked.status.success(),
                "{}",
                String::from_utf8_lossy(&asked.stderr)
            );
        }
        let out = ingest_cmd_full(&url, &wh, true, 40, *piece)
            .env("BITVELOCITY_CRASH_AT", format!("{point}:{nth}"))
            .output()
            .expect("run ingester");
        assert_eq!(
            out.status.signal(),
            Some(9),
            "run {i}: crash point {point}:{nth} was not reached; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Recover from exactly what the kill left, without copying again: the requests are
        // withdrawn, so a wrong recovery (old rows under a new copy, a doubled keyless row)
        // is not papered over by a fresh copy, and shows here.
        let requests = common::AsWarehouse::warehouse(&wh)
            .catalog_url()
            .requests()
            .await
            .unwrap();
        for (table, asked_at) in requests.pending(catalog::requests::RESYNC).await.unwrap() {
            requests
                .done(catalog::requests::RESYNC, &table, asked_at)
                .await
                .unwrap();
        }
        let out = ingest_cmd(&url, &wh, true).output().unwrap();
        assert!(
            out.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for t in &common::tables(&client, ecommerce::PUBLICATION).await {
            common::assert_bronze_matches(&client, &wh, t).await;
            common::assert_silver_matches(&client, &wh, t).await;
        }
    }
}

/// (crash point, which hit, schema change made before the run): mid-compaction and around
/// commits that carry a schema change. The changes leave alone the columns the workload
/// binds typed parameters to.
const MAINTENANCE_CRASHES: &[(&str, u32, &str)] = &[
    ("maintenance.after_files_written", 1, ""),
    (
        "maintenance.before_commit",
        1,
        "ALTER TABLE orders ADD COLUMN note text",
    ),
    ("maintenance.after_commit", 1, ""),
    (
        "bronze.before_catalog_commit",
        1,
        "ALTER TABLE orders ALTER COLUMN total TYPE numeric(16, 2)",
    ),
    ("maintenance.after_files_written", 3, ""),
    (
        "medallion.between_bronze_and_silver",
        1,
        "ALTER TABLE customers ALTER COLUMN tier TYPE varchar(40); ALTER TABLE payments ALTER COLUMN amount TYPE numeric(18, 2)",
    ),
    ("maintenance.before_commit", 4, ""),
    (
        "silver.before_catalog_commit",
        1,
        "ALTER TABLE orders DROP COLUMN note",
    ),
    (
        "silver.after_catalog_commit",
        2,
        "ALTER TABLE orders ADD COLUMN note varchar(20)",
    ),
    ("maintenance.after_commit", 3, ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_compaction_and_across_schema_changes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_mid_compaction(&CliWarehouse::local(&dir.path().join("wh"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_compaction_on_s3_with_a_postgres_catalog() {
    let backend = ObjectStoreBackend::start("compaction").await;
    kill_9_mid_compaction(&CliWarehouse::object_store(&backend)).await;
}

async fn kill_9_mid_compaction(wh: &CliWarehouse) {
    let (_pg, url) = common::start_pg("shop").await;
    let client = common::connect(&url).await;
    ecommerce::create_schema(&client).await.unwrap();
    workload(&url, 1, 100, false).await;
    let maintained = |c: &mut Command| {
        c.args(["--maintain-every", "1", "--min-small-files", "2"]);
    };
    // The initial copy first, so every crashing run has streamed changes to commit and compact.
    let out = ingest_cmd(&url, wh, true).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, (point, nth, ddl)) in MAINTENANCE_CRASHES.iter().enumerate() {
        workload(&url, 200 + i as u64, 30, true).await;
        if !ddl.is_empty() {
            client.batch_execute(ddl).await.unwrap();
            // Rows that use the new layout.
            client
                .batch_execute(
                    "UPDATE orders SET total = total + 1 WHERE id % 5 = 0;
                     UPDATE order_items SET quantity = quantity + 1 WHERE line_no = 1 AND order_id % 4 = 0;
                     UPDATE products SET stock = stock + 1 WHERE id % 6 = 0;",
                )
                .await
                .unwrap();
        }
        let mut cmd = ingest_cmd_batching(&url, wh, true, 300);
        maintained(&mut cmd);
        let out = cmd
            .env("BITVELOCITY_CRASH_AT", format!("{point}:{nth}"))
            .output()
            .expect("run ingester");
        assert_eq!(
            out.status.signal(),
            Some(9),
            "run {i}: crash point {point}:{nth} was not reached (status {:?}); stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cmd = ingest_cmd(&url, wh, true);
    maintained(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in &common::tables(&client, ecommerce::PUBLICATION).await {
        common::assert_bronze_matches(&client, wh, t).await;
        common::assert_silver_matches(&client, wh, t).await;
    }
}

/// (txid, op) of every audited change after `boundary`, per table, in commit order.
async fn audit_ops_after(
    client: &tokio_postgres::Client,
    boundary: i64,
) -> BTreeMap<String, Vec<(i64, String)>> {
    let rows = client
        .query(
            "SELECT table_name, txid, op FROM audit_history WHERE txid > $1 ORDER BY id",
            &[&boundary],
        )
        .await
        .unwrap();
    let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    out
}
