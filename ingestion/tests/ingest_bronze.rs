//! End-to-end capture into bronze against a real PostgreSQL and the SQL catalog.

mod common;

use std::time::Duration;

use common::{
    assert_bronze_matches, assert_silver_matches, bronze_changes, connect, ingest_caught_up,
    start_pg, tables,
};

const TYPED_ROWS: &str = "
INSERT INTO typed (b, i2, i4, f4, f8, d, n, t, v, c, by, dt, tm, ts, tstz, u, j, jb, m, ai, at, ad, ats) VALUES
 (true, 1, 2, 1.25, 'NaN', 0.5, 'NaN', E'line\\nbreak\\ttab\\\\slash', 'x', 'a', '\\x', '1970-01-01', '00:00:00', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00',
  gen_random_uuid(), '[]', '{}', 'sad', '{}', '{}', '{}', '{}'),
 (false, -32768, -2147483648, '-Infinity', 1e308, -9999999.999, 1e100, 'ünïcödé ✓', repeat('v', 20), 'abcd', '\\xdeadbeef', '0001-01-01 BC', '23:59:59.999999',
  '2262-04-11 23:47:16.854775', '1900-06-30 23:59:60+01', gen_random_uuid(), '{\"k\": \"v\"}', '[1, \"two\", null]', 'happy',
  '{NULL}', '{\"\",\"NULL\",NULL,\"with,comma\",\"with\\\"quote\"}', '{1.50,-2.25,NULL}', '{\"2020-01-01 00:00:00+00\",NULL}'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
";

#[tokio::test]
async fn every_supported_type_round_trips_through_copy_and_stream() {
    let (_pg, url) = start_pg("types").await;
    let client = connect(&url).await;
    client.batch_execute(common::ALL_TYPES_DDL).await.unwrap();
    client.batch_execute(TYPED_ROWS).await.unwrap(); // read by the initial copy
    let dir = tempfile::tempdir().unwrap();
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(report.snapshot_rows, 3);
    client.batch_execute(TYPED_ROWS).await.unwrap(); // read from the stream
    client
        .batch_execute("UPDATE typed SET t = t || '!', ai = array_append(ai, 9) WHERE id % 2 = 0")
        .await
        .unwrap();
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(report.changes, 3 + 3);
    let t = tables(&client, "p").await.remove(0);
    assert_eq!(assert_bronze_matches(&client, dir.path(), &t).await, 6);
    assert_eq!(assert_silver_matches(&client, dir.path(), &t).await, 6);
}

#[tokio::test]
async fn writes_during_the_initial_copy_appear_exactly_once() {
    let (_pg, url) = start_pg("handoff").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE ev (id bigserial PRIMARY KEY, k int NOT NULL, payload text NOT NULL);
             CREATE PUBLICATION p FOR TABLE ev;
             INSERT INTO ev (k, payload) SELECT g % 100, md5(g::text) FROM generate_series(1, 200000) g;",
        )
        .await
        .unwrap();
    // A writer that keeps inserting, updating and deleting while the copy runs.
    let writer_url = url.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let c = connect(&writer_url).await;
        let mut n = 0u64;
        while !*stop_rx.borrow_and_update() {
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO ev (k, payload) VALUES ({n} % 100, 'live'); UPDATE ev SET payload = 'upd' WHERE id = {}; DELETE FROM ev WHERE id = {}; COMMIT;",
                (n * 7919) % 200_000 + 1,
                (n * 104_729) % 200_000 + 1
            ))
            .await
            .unwrap();
            n += 1;
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().to_path_buf();
    let ingest_url = url.clone();
    let (ingest_stop, ingest_rx) = tokio::sync::watch::channel(false);
    let ingest = tokio::spawn(async move {
        let mut cfg = ingestion::IngestConfig::new(ingest_url, "p");
        cfg.batch_interval = Duration::from_millis(200);
        let wh = catalog::Warehouse::new(&wh).unwrap();
        let cat = wh.open_catalog().await.unwrap();
        let sink = lakehouse::MedallionSink::new(cat, wh.commit_path().await.unwrap())
            .await
            .unwrap();
        let mut ing = ingestion::Ingester::new(cfg, sink);
        let m = ing.metrics();
        let r = ing.run(ingest_rx).await;
        (r, m)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();
    let writes = writer.await.unwrap();
    assert!(writes > 50, "the writer ran only {writes} transactions");
    // Let the ingester catch up with the last write, then stop it cleanly.
    assert!(
        common::wait_caught_up(&client, &ingest).await,
        "the ingester stopped before catching up"
    );
    ingest_stop.send(true).unwrap();
    let (report, _) = ingest.await.unwrap();
    let report = report.unwrap();
    assert!(report.snapshot_rows > 0 && report.changes > 0, "{report:?}");
    let t = tables(&client, "p").await.remove(0);
    assert_bronze_matches(&client, dir.path(), &t).await;
    assert_silver_matches(&client, dir.path(), &t).await;
    // Every row the writer inserted (ids above the seed) appears as exactly one insert,
    // from the copy or from the stream, never both, never neither.
    let changes = bronze_changes(dir.path(), &t).await;
    let mut live: Vec<i64> = changes
        .iter()
        .filter(|c| c.op == "insert")
        .filter_map(|c| match c.values[0] {
            common::Val::Int(id) if id > 200_000 => Some(id),
            _ => None,
        })
        .collect();
    live.sort_unstable();
    assert_eq!(
        live,
        (200_001..=200_000 + writes as i64).collect::<Vec<_>>()
    );
    // The writes straddled the handoff: some of the writer's rows reached bronze through
    // the copy (no transaction id), later ones through the stream, and the writer's
    // updates and deletes touched copied rows from the stream.
    let writer_row =
        |c: &&common::ChangeRow| matches!(c.values[0], common::Val::Int(id) if id > 200_000);
    let copied = changes
        .iter()
        .filter(writer_row)
        .filter(|c| c.txid.is_none())
        .count();
    let streamed = changes
        .iter()
        .filter(writer_row)
        .filter(|c| c.txid.is_some() && c.op == "insert")
        .count();
    let streamed_on_copied = changes
        .iter()
        .filter(|c| c.txid.is_some() && c.op != "insert")
        .filter(|c| matches!(c.values[0], common::Val::Int(id) if id <= 200_000))
        .count();
    println!(
        "writer rows: {copied} via the copy, {streamed} via the stream; {streamed_on_copied} streamed changes of copied rows"
    );
    assert!(
        copied > 0 && streamed > 0 && streamed_on_copied > 0,
        "the writes did not straddle the handoff: {copied} copied, {streamed} streamed"
    );
}

#[tokio::test]
async fn identity_full_key_changes_toast_and_truncate_replay_exactly() {
    let (_pg, url) = start_pg("shapes").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE keyed (id int PRIMARY KEY, doc text, n int);
             ALTER TABLE keyed ALTER COLUMN doc SET STORAGE EXTERNAL;
             CREATE TABLE nokey (a int, b text);
             ALTER TABLE nokey REPLICA IDENTITY FULL;
             CREATE TABLE composite (x int, y text, v int, PRIMARY KEY (x, y));
             CREATE PUBLICATION p FOR ALL TABLES;
             INSERT INTO keyed SELECT g, repeat(md5(g::text), 200), g FROM generate_series(1, 20) g;
             INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, 'b');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    client
        .batch_execute(
            "UPDATE keyed SET n = n + 100 WHERE id <= 10;            -- doc unchanged: TOAST not sent
             UPDATE keyed SET id = id + 1000 WHERE id % 3 = 0;      -- key change
             DELETE FROM keyed WHERE id = 2;
             UPDATE nokey SET b = 'z' WHERE a = 2;
             DELETE FROM nokey WHERE a = 1;
             INSERT INTO nokey VALUES (3, NULL);
             INSERT INTO composite VALUES (1, 'a', 1), (1, 'b', 2);
             UPDATE composite SET y = 'c' WHERE y = 'a';
             BEGIN; TRUNCATE composite; INSERT INTO composite VALUES (9, 'after', 9); COMMIT;",
        )
        .await
        .unwrap();
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert!(report.changes > 20);
    for t in tables(&client, "p").await {
        assert_bronze_matches(&client, dir.path(), &t).await;
        assert_silver_matches(&client, dir.path(), &t).await;
    }
    let keyed = tables(&client, "p")
        .await
        .into_iter()
        .find(|t| t.name == "keyed")
        .unwrap();
    let changes = bronze_changes(dir.path(), &keyed).await;
    assert!(
        changes
            .iter()
            .any(|c| c.unchanged == vec!["doc".to_string()]),
        "no unchanged-TOAST row recorded"
    );
}

#[tokio::test]
async fn restart_resumes_where_it_stopped_without_duplicates() {
    let (_pg, url) = start_pg("restart").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);
             CREATE PUBLICATION p FOR TABLE a, b; INSERT INTO a VALUES (1, 'x');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r1 = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!((r1.snapshot_rows, r1.changes), (1, 0));
    for i in 2..=50 {
        client
            .batch_execute(&format!(
                "INSERT INTO a VALUES ({i}, 'a'); INSERT INTO b VALUES ({i}, 'b');"
            ))
            .await
            .unwrap();
    }
    let r2 = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(r2.changes, 98);
    // Nothing new: a third run writes nothing.
    let r3 = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(r3.changes, 0);
    assert_eq!(r3.snapshot_rows, 0);
    for t in tables(&client, "p").await {
        assert_bronze_matches(&client, dir.path(), &t).await;
        assert_silver_matches(&client, dir.path(), &t).await;
    }
}

/// A restart right after a stop finds the slot still held by the old session (PostgreSQL's
/// walsender outlives its client for a moment): the ingester waits for it instead of
/// failing with 55006 "replication slot ... is active".
#[tokio::test]
async fn a_slot_still_held_by_a_dying_session_is_waited_for() {
    let (pg, url) = start_pg("held").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE a;
             INSERT INTO a VALUES (1);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    client
        .batch_execute("INSERT INTO a VALUES (2), (3)")
        .await
        .unwrap();
    // Another session streams from the slot for a while, as a stopping ingester's does.
    let mut holder = std::process::Command::new(pg.bindir().join("pg_recvlogical"))
        .args(["--slot", "bitvelocity_p", "--start", "--file", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=p"])
        .args(["--dbname", &url])
        .spawn()
        .expect("start pg_recvlogical");
    let held = async {
        loop {
            let active: bool = client
                .query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = 'bitvelocity_p'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if active {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), held)
        .await
        .expect("pg_recvlogical never held the slot");
    let release = tokio::task::spawn_blocking(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let _ = holder.kill();
        let _ = holder.wait();
    });
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    release.await.unwrap();
    assert_eq!(report.changes, 2);
    for t in tables(&client, "p").await {
        assert_bronze_matches(&client, dir.path(), &t).await;
    }
}

#[tokio::test]
async fn source_tables_whose_names_collide_get_distinct_stable_tables() {
    let (_pg, url) = start_pg("names").await;
    let client = connect(&url).await;
    // public.a_b and a.b both read `a_b`; a.a_b would read `a_a_b` like public.a_a_b.
    client
        .batch_execute(
            "CREATE SCHEMA a;
             CREATE TABLE public.a_b (id int PRIMARY KEY, v text);
             CREATE TABLE a.b (id int PRIMARY KEY, v text);
             CREATE PUBLICATION p FOR TABLE public.a_b, a.b;
             INSERT INTO public.a_b VALUES (1, 'public.a_b');
             INSERT INTO a.b VALUES (1, 'a.b'), (2, 'a.b');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    // Added to the publication later: its readable name `a__b` is held by a.b.
    client
        .batch_execute(
            "CREATE TABLE public.a__b (id int PRIMARY KEY, v text);
             INSERT INTO public.a__b VALUES (7, 'public.a__b');
             ALTER PUBLICATION p ADD TABLE public.a__b;
             INSERT INTO public.a_b VALUES (2, 'public.a_b');
             INSERT INTO a.b VALUES (3, 'a.b');",
        )
        .await
        .unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let mut names = Vec::new();
    for t in tables(&client, "p").await {
        let n = assert_bronze_matches(&client, dir.path(), &t).await;
        assert_eq!(n, assert_silver_matches(&client, dir.path(), &t).await);
        names.push((t.qualified(), common::lake_name(&wh, &t).await, n));
    }
    names.sort();
    let want = [
        ("a.b", "a__b", 3),
        ("public.a__b", "public__a__b", 1),
        ("public.a_b", "a_b", 2),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(s, n, c)| (s.to_string(), n.to_string(), *c))
        .collect();
    assert_eq!(names, want);
}

#[tokio::test]
async fn unsupported_type_fails_before_writing_and_keeps_committed_tables() {
    let (_pg, url) = start_pg("badtype").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY); CREATE TABLE bad (id int PRIMARY KEY, span interval);
             CREATE PUBLICATION p FOR TABLE good; INSERT INTO good SELECT generate_series(1, 10);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    client
        .batch_execute("ALTER PUBLICATION p ADD TABLE bad; INSERT INTO good VALUES (11);")
        .await
        .unwrap();
    let err = ingest_caught_up(&url, "p", dir.path()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported type: table public.bad, column span has type interval"
    );
    // The committed table is intact and no table was created for the bad one.
    let good = tables_ok(&client).await;
    assert_eq!(bronze_changes(dir.path(), &good).await.len(), 10);
    let cat = catalog::Warehouse::new(dir.path())
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let names: Vec<String> = cat
        .list_tables(&catalog::NamespaceIdent::new("bronze".into()))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(names, vec!["good".to_string()]);
}

async fn tables_ok(client: &tokio_postgres::Client) -> ingestion::source::SourceTable {
    client
        .batch_execute("CREATE PUBLICATION only_good FOR TABLE good")
        .await
        .unwrap();
    tables(client, "only_good").await.remove(0)
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_one_line_errors() {
    let err = ingestion::replication::ConnInfo::parse("mysql://nope").unwrap_err();
    assert!(
        err.to_string().starts_with("invalid PostgreSQL URL"),
        "{err}"
    );
    // An sslmode libpq does not know is named, never quietly ignored.
    let err = ingestion::replication::ConnInfo::parse("postgres://u@127.0.0.1/db?sslmode=always")
        .unwrap_err();
    assert!(
        err.to_string().contains("sslmode=always") && err.to_string().contains("verify-full"),
        "{err}"
    );
    ingestion::replication::ConnInfo::parse("postgres://u@127.0.0.1/db?sslmode=disable").unwrap();
    // Port 1: nothing listens there, and unlike a port freed by a probe it cannot be taken
    // by a server another test starts meanwhile.
    let port = 1;
    let dir = tempfile::tempdir().unwrap();
    let err = ingest_caught_up(
        &format!("postgres://postgres@127.0.0.1:{port}/db"),
        "p",
        dir.path(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    // A reachable server with a missing database or publication names it.
    let (_pg, url) = start_pg("exists").await;
    let err = ingest_caught_up(&url.replace("/exists", "/missing"), "p", dir.path())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("database \"missing\" does not exist"),
        "{err}"
    );
    let err = ingest_caught_up(&url, "nopub", dir.path())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "publication \"nopub\" does not exist");
}

#[tokio::test]
async fn a_large_transaction_is_never_split_across_snapshots() {
    use futures::TryStreamExt;
    let (_pg, url) = start_pg("atomic").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE big;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    // One 5,000-row transaction between small ones; the ingester commits every 500 rows
    // and hands rows to the writer every 256, but only at transaction boundaries may it commit.
    client
        .batch_execute("INSERT INTO big VALUES (0, 'before')")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO big SELECT g, 'bulk' FROM generate_series(1, 5000) g")
        .await
        .unwrap();
    for i in 5001..5010 {
        client
            .batch_execute(&format!("INSERT INTO big VALUES ({i}, 'after')"))
            .await
            .unwrap();
    }
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(report.changes, 5010);
    assert!(report.commits >= 2, "{report:?}");

    let cat = catalog::Warehouse::new(dir.path())
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let table = cat
        .load_table(&catalog::TableIdent::from_strs(["bronze", "big"]).unwrap())
        .await
        .unwrap();
    let final_counts = txid_counts(&table, None).await;
    let snapshots: Vec<i64> = table
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    assert!(
        snapshots.len() >= 3,
        "expected several snapshots, got {}",
        snapshots.len()
    );
    for sid in snapshots {
        for (txid, n) in txid_counts(&table, Some(sid)).await {
            assert_eq!(
                n, final_counts[&txid],
                "snapshot {sid} holds {n} of the {} rows of transaction {txid}",
                final_counts[&txid]
            );
        }
    }

    async fn txid_counts(
        table: &iceberg::table::Table,
        snapshot: Option<i64>,
    ) -> std::collections::HashMap<i64, usize> {
        let mut scan = table.scan().select(["_txid"]);
        if let Some(s) = snapshot {
            scan = scan.snapshot_id(s);
        }
        let batches: Vec<arrow::record_batch::RecordBatch> = scan
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut counts = std::collections::HashMap::new();
        for b in &batches {
            for i in 0..b.num_rows() {
                if let common::Val::Int(x) = common::arrow_val(b.column(0), i) {
                    *counts.entry(x).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}

#[tokio::test]
async fn an_incompatible_schema_change_stops_that_table_only_and_loses_nothing() {
    let (_pg, url) = start_pg("ddl").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE s (id int PRIMARY KEY, v text); CREATE TABLE o (id int PRIMARY KEY);
             CREATE PUBLICATION p FOR TABLE s, o;
             INSERT INTO s VALUES (1, 'a'); INSERT INTO o VALUES (1);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    let slot_lsn = || async {
        let s: String = client
            .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bitvelocity_p'", &[])
            .await
            .unwrap()
            .get(0);
        s.parse::<ingestion::Lsn>().unwrap()
    };
    let before_changes: ingestion::Lsn = {
        let s: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        s.parse().unwrap()
    };
    // s: a compatible change first (applied), then text -> int (Iceberg cannot follow).
    client
        .batch_execute(
            "INSERT INTO s VALUES (2, 'b');
             ALTER TABLE s ADD COLUMN extra int; INSERT INTO s VALUES (3, 'c', 3);
             INSERT INTO o VALUES (2);
             ALTER TABLE s ALTER COLUMN v TYPE int USING length(v); INSERT INTO s VALUES (4, 4, 4);
             INSERT INTO o VALUES (3);",
        )
        .await
        .unwrap();
    for round in 0..2 {
        let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
        assert_eq!(report.stopped.len(), 1, "round {round}: {report:?}");
        let (table, why) = &report.stopped[0];
        assert_eq!(table, "public.s");
        assert!(
            why.contains("public.s") && why.contains("column v") && why.contains("string"),
            "round {round}: {why}"
        );
        // The other table went on, past the stopped one.
        let o = common::tables(&client, "p")
            .await
            .into_iter()
            .find(|t| t.name == "o")
            .unwrap();
        assert_eq!(
            common::assert_silver_matches(&client, dir.path(), &o).await,
            3
        );
        // s keeps what it had before the incompatible change: its committed rows (the ones
        // of the same ingest batch before the change are dropped and replayed next time).
        let ids = bronze_ids(dir.path()).await;
        assert!(ids.len() <= 3 && ids[0] == common::Val::Int(1), "{ids:?}");
        assert!(!ids.contains(&common::Val::Int(4)), "{ids:?}");
        // PostgreSQL keeps every change s still needs: the slot stays before them.
        let confirmed = slot_lsn().await;
        assert!(
            confirmed <= before_changes,
            "round {round}: slot confirmed {confirmed} past {before_changes}"
        );
    }
}

/// The `id` of every row of `bronze.s`, in log order.
async fn bronze_ids(warehouse: &std::path::Path) -> Vec<common::Val> {
    let cat = catalog::Warehouse::new(warehouse)
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let ctx = lakehouse::query::session(cat).await.unwrap();
    let batches = lakehouse::query::run(&ctx, "SELECT id FROM bronze.s ORDER BY _lsn, _seq")
        .await
        .unwrap();
    batches
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(move |i| common::arrow_val(b.column(0), i)))
        .collect()
}

/// Values Iceberg cannot hold (ADR 0007) never stop ingestion: ±infinity dates and
/// timestamps, numeric NaN in a `numeric(p,s)` column and timestamps past Iceberg's last
/// year reach bronze and silver as the documented sentinels, through the copy and the
/// stream, next to ordinary rows of the same table.
#[tokio::test]
async fn values_iceberg_cannot_hold_are_kept_as_documented_sentinels() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Decimal128Type, Int32Type, TimestampMicrosecondType};
    let (_pg, url) = start_pg("special").await;
    let client = connect(&url).await;
    let rows = |base: i32| {
        format!(
            "INSERT INTO odd VALUES
             ({}, 'infinity', 'infinity', 'infinity', 'NaN'),
             ({}, '-infinity', '-infinity', '-infinity', 1.5),
             ({}, '2026-11-30', '294276-12-31 23:59:59', '2026-11-30 12:00:00+00', 9999.99);",
            base + 1,
            base + 2,
            base + 3
        )
    };
    client
        .batch_execute(&format!(
            "CREATE TABLE odd (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, n numeric(6, 2));
             CREATE PUBLICATION p FOR TABLE odd; {}",
            rows(0)
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(report.snapshot_rows, 3);
    client.batch_execute(&rows(10)).await.unwrap();
    client
        .batch_execute("UPDATE odd SET n = 'NaN' WHERE id = 13")
        .await
        .unwrap();
    let report = ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_eq!(report.changes, 4, "{report:?}");
    let cat = catalog::Warehouse::new(dir.path())
        .unwrap()
        .open_catalog()
        .await
        .unwrap();
    let ctx = lakehouse::query::session(cat).await.unwrap();
    let nan = ingestion::value::decimal_nan(6);
    let want = |id: i32| -> (i32, i64, i64, i128) {
        use ingestion::value::*;
        match id % 10 {
            1 => (DATE_INFINITY, TIMESTAMP_INFINITY, TIMESTAMP_INFINITY, nan),
            2 => (
                DATE_NEG_INFINITY,
                TIMESTAMP_NEG_INFINITY,
                TIMESTAMP_NEG_INFINITY,
                150,
            ),
            _ => (
                20_787,
                TIMESTAMP_INFINITY, // past Iceberg's last year: only infinity holds it
                1_796_040_000_000_000,
                if id == 13 { nan } else { 999_999 },
            ),
        }
    };
    for table in ["silver.odd", "bronze.odd"] {
        let sql = if table.starts_with("silver") {
            format!("SELECT id, d, ts, tstz, n FROM {table} ORDER BY id")
        } else {
            // The latest change per key.
            format!(
                "SELECT id, d, ts, tstz, n FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY _lsn DESC, _seq DESC) AS rn FROM {table}) WHERE rn = 1 ORDER BY id"
            )
        };
        let batches = lakehouse::query::run(&ctx, &sql).await.unwrap();
        let mut seen = 0;
        for b in &batches {
            for i in 0..b.num_rows() {
                let id = b.column(0).as_primitive::<Int32Type>().value(i);
                let got = (
                    b.column(1).as_primitive::<Date32Type>().value(i),
                    b.column(2)
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(i),
                    b.column(3)
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(i),
                    b.column(4).as_primitive::<Decimal128Type>().value(i),
                );
                assert_eq!(got, want(id), "{table} id {id}");
                seen += 1;
            }
        }
        assert_eq!(seen, 6, "{table}");
    }
}
