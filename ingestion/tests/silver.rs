//! Silver against a real PostgreSQL: a randomized workload checked after every batch,
//! maintenance racing a running ingester (with a third writer forcing commit conflicts),
//! and automatic maintenance keeping storage bounded under an update-heavy load.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{
    AsWarehouse, ObjectStoreBackend, assert_bronze_matches, assert_silver_matches, connect,
    ingest_caught_up, start_pg, wait_caught_up,
};
use lakehouse::maintenance::{MaintenanceOptions, maintain_warehouse};
use lakehouse::medallion::AutoMaintenance;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_postgres::Client;

const KV_DDL: &str = "
CREATE TABLE kv (id int PRIMARY KEY, n int NOT NULL, doc text, tag text);
ALTER TABLE kv ALTER COLUMN doc SET STORAGE EXTERNAL;  -- large docs stay out of line: unchanged TOAST
CREATE TABLE pair (a int, b text, v int, PRIMARY KEY (a, b));
CREATE PUBLICATION p FOR TABLE kv, pair;
";

fn doc(rng: &mut StdRng) -> String {
    // Big enough to be TOASTed (over 2 kB), distinct per write.
    let seed: u64 = rng.random();
    format!("{seed:016x}").repeat(200)
}

/// One random source transaction over `kv` and `pair`.
async fn random_txn(c: &Client, rng: &mut StdRng, next_id: &mut i32, deleted: &mut Vec<i32>) {
    random_txn_on(c, rng, next_id, deleted, "tag").await
}

/// [`random_txn`] with `kv`'s last column named `tag` (it is renamed by the schema test).
async fn random_txn_on(
    c: &Client,
    rng: &mut StdRng,
    next_id: &mut i32,
    deleted: &mut Vec<i32>,
    tag: &str,
) {
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.random_range(1..6) {
        let id = rng.random_range(1..=*next_id);
        match rng.random_range(0..100) {
            0..=24 => {
                *next_id += 1;
                sql += &format!(
                    "INSERT INTO kv VALUES ({}, {}, '{}', 't{}');",
                    *next_id,
                    rng.random_range(0..1000),
                    doc(rng),
                    rng.random_range(0..5)
                );
            }
            25..=49 => sql += &format!("UPDATE kv SET n = n + 1 WHERE id = {id};"), // doc unchanged
            50..=59 => sql += &format!("UPDATE kv SET doc = '{}' WHERE id = {id};", doc(rng)),
            60..=66 => {
                *next_id += 1;
                sql += &format!("UPDATE kv SET id = {} WHERE id = {id};", *next_id); // key change
            }
            67..=79 => {
                sql += &format!("DELETE FROM kv WHERE id = {id};");
                deleted.push(id);
            }
            80..=86 => {
                if let Some(id) = deleted.pop() {
                    sql += &format!(
                        "INSERT INTO kv VALUES ({id}, 0, 'back', NULL) ON CONFLICT (id) DO UPDATE SET {tag} = 'again';"
                    );
                }
            }
            87..=96 => {
                let a = rng.random_range(0..30);
                let b = ["x", "y", "z"][rng.random_range(0..3)];
                sql += &format!(
                    "INSERT INTO pair VALUES ({a}, '{b}', 1) ON CONFLICT (a, b) DO UPDATE SET v = pair.v + 1;"
                );
                if rng.random_bool(0.3) {
                    *next_id += 1; // a fresh key: the row moves, never onto an existing one
                    sql += &format!(
                        "UPDATE pair SET b = 'k{}' WHERE a = {a} AND b = '{b}';",
                        *next_id
                    );
                }
            }
            _ => sql += "DELETE FROM pair WHERE v % 2 = 0;",
        }
    }
    sql += "COMMIT;";
    c.batch_execute(&sql).await.unwrap();
}

async fn seed(c: &Client, rng: &mut StdRng, rows: i32) {
    c.batch_execute(KV_DDL).await.unwrap();
    for id in 1..=rows {
        c.batch_execute(&format!(
            "INSERT INTO kv VALUES ({id}, {id}, '{}', NULL)",
            doc(rng)
        ))
        .await
        .unwrap();
    }
}

async fn check_all(client: &Client, wh: &(impl AsWarehouse + ?Sized)) {
    for t in common::tables(client, "p").await {
        assert_bronze_matches(client, wh, &t).await;
        assert_silver_matches(client, wh, &t).await;
    }
}

/// Schema changes between and inside batches, each checked against PostgreSQL by the next
/// batch's checks: (batch, DDL) with `kv`'s tag column name after it.
const SCHEMA_STEPS: &[(usize, &str, &str)] = &[
    (
        1,
        "ALTER TABLE kv ADD COLUMN score bigint; UPDATE kv SET score = id * 10 WHERE id % 3 = 0;",
        "tag",
    ),
    (2, "ALTER TABLE kv ALTER COLUMN n TYPE bigint;", "tag"),
    (3, "ALTER TABLE kv RENAME COLUMN tag TO label;", "label"),
    (
        4,
        "ALTER TABLE pair ADD COLUMN note varchar(10), ADD COLUMN w real; UPDATE pair SET note = 'n' || a, w = a / 4.0;",
        "label",
    ),
    (
        5,
        "ALTER TABLE pair ALTER COLUMN note TYPE varchar(40), ALTER COLUMN w TYPE double precision; UPDATE pair SET note = note || '-longer-than-ten' WHERE a % 2 = 0;",
        "label",
    ),
    (6, "ALTER TABLE kv DROP COLUMN score;", "label"),
    (
        7,
        "ALTER TABLE kv ADD COLUMN score int; UPDATE kv SET score = 1 WHERE id % 5 = 0;",
        "label",
    ),
    (
        8,
        "ALTER TABLE pair ALTER COLUMN v TYPE bigint; ALTER TABLE kv RENAME COLUMN label TO tag;",
        "tag",
    ),
];

#[tokio::test]
async fn schema_changes_evolve_bronze_and_silver_without_a_restart() {
    let (_pg, url) = start_pg("evolve").await;
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(0xdd1);
    seed(&client, &mut rng, 150).await;
    let dir = tempfile::tempdir().unwrap();
    let (ingest, stop_ingest) = spawn_ingest(&url, dir.path(), None);
    let mut next_id = 150;
    let mut deleted = Vec::new();
    let mut tag = "tag";
    for batch in 0..10 {
        // Changes before and after each DDL land in the same ingest batch.
        for _ in 0..rng.random_range(10..30) {
            random_txn_on(&client, &mut rng, &mut next_id, &mut deleted, tag).await;
        }
        if let Some((_, ddl, after)) = SCHEMA_STEPS.iter().find(|(b, _, _)| *b == batch) {
            client.batch_execute(ddl).await.unwrap();
            tag = after;
        }
        for _ in 0..rng.random_range(10..30) {
            random_txn_on(&client, &mut rng, &mut next_id, &mut deleted, tag).await;
        }
        if !wait_caught_up(&client, &ingest).await {
            panic!("ingest stopped: {:?}", ingest.await);
        }
        check_all(&client, dir.path()).await;
    }
    stop_ingest.send(true).unwrap();
    let report = ingest.await.unwrap().unwrap();
    assert!(report.stopped.is_empty(), "{report:?}");
    // Field ids survive: the renamed column keeps its id, a re-added name gets a new one.
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let cat = wh.open_catalog().await.unwrap();
    for ns in ["bronze", "silver"] {
        let t = cat
            .load_table(&catalog::TableIdent::from_strs([ns, "kv"]).unwrap())
            .await
            .unwrap();
        let meta = t.metadata();
        let first = meta.schema_by_id(0).unwrap();
        let now = meta.current_schema();
        assert_eq!(
            first.field_by_name("tag").unwrap().id,
            now.field_by_name("tag").unwrap().id,
            "{ns}: renamed twice, still the same column"
        );
        assert_eq!(
            *now.field_by_name("n").unwrap().field_type,
            iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Long),
            "{ns}: n widened"
        );
        assert!(
            meta.schemas_iter().count() >= 6,
            "{ns}: one schema per change"
        );
        let score_ids: Vec<i32> = meta
            .schemas_iter()
            .filter_map(|s| s.field_by_name("score").map(|f| f.id))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            score_ids.len(),
            2,
            "{ns}: dropped and re-added score is a new column"
        );
    }
}

/// One caught-up ingest run; returns whether each table's index came from its checkpoint.
async fn run_reporting_index(url: &str, wh: &Path) -> Vec<bool> {
    let mut cfg = ingestion::IngestConfig::new(url, "p");
    cfg.exit_when_caught_up = true;
    let w = catalog::Warehouse::new(wh).unwrap();
    let sink = lakehouse::MedallionSink::new(
        w.open_catalog().await.unwrap(),
        w.commit_path().await.unwrap(),
    )
    .await
    .unwrap();
    let mut ing = ingestion::Ingester::new(cfg, sink);
    ing.run(watch::channel(false).1).await.unwrap();
    let sink = ing.into_sink();
    (0..2)
        .map(|i| sink.silver().index_from_checkpoint(i).unwrap())
        .collect()
}

#[tokio::test]
async fn the_key_index_survives_a_restart_and_is_rebuilt_when_lost_or_stale() {
    let (_pg, url) = start_pg("index").await;
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(11);
    seed(&client, &mut rng, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut next_id, mut deleted) = (300, Vec::new());
    macro_rules! changes {
        ($n:expr) => {
            for _ in 0..$n {
                random_txn(&client, &mut rng, &mut next_id, &mut deleted).await;
            }
        };
    }
    let checkpoint = dir.path().join("silver/kv/bitvelocity-index/pk.arrow");
    // First run: nothing to load. A clean stop checkpoints the index.
    assert_eq!(run_reporting_index(&url, dir.path()).await, [false, false]);
    assert!(
        checkpoint.exists(),
        "no checkpoint at {}",
        checkpoint.display()
    );
    changes!(30);
    // Restart: loaded, and the changes applied through it are right.
    assert!(
        run_reporting_index(&url, dir.path()).await[0],
        "checkpoint not loaded"
    );
    check_all(&client, dir.path()).await;
    // An unreadable checkpoint is rebuilt from the table.
    std::fs::write(&checkpoint, b"not an arrow file").unwrap();
    changes!(30);
    assert!(
        !run_reporting_index(&url, dir.path()).await[0],
        "bad checkpoint used"
    );
    check_all(&client, dir.path()).await;
    // A checkpoint of an older snapshot (the last one before a crash, say) is brought up to
    // date by replaying the commits after it.
    let old = std::fs::read(&checkpoint).unwrap();
    changes!(30);
    assert!(
        run_reporting_index(&url, dir.path()).await[0],
        "checkpoint not loaded"
    );
    std::fs::write(&checkpoint, &old).unwrap();
    changes!(30);
    assert!(
        run_reporting_index(&url, dir.path()).await[0],
        "an older checkpoint was not caught up"
    );
    check_all(&client, dir.path()).await;
    // A compaction rewrote files: an older checkpoint is still brought forward across it
    // (the rewritten files' rows move to the new ones).
    let old = std::fs::read(&checkpoint).unwrap();
    let w = catalog::Warehouse::new(dir.path()).unwrap();
    let maintain = |opts: MaintenanceOptions| {
        let w = w.clone();
        async move {
            maintain_warehouse(
                w.open_catalog().await.unwrap().as_ref(),
                &w.commit_path().await.unwrap(),
                Some("silver.kv"),
                &opts,
            )
            .await
            .unwrap()
        }
    };
    // First only the delete files are merged (no file is deleted enough to rewrite), then
    // every file with a deleted row is rewritten.
    let reports = maintain(MaintenanceOptions {
        delete_ratio: 1.0,
        max_delete_files: 2,
        ..MaintenanceOptions::default()
    })
    .await;
    assert!(
        reports[0].1.delete_files_written == 1 && reports[0].1.delete_files_removed > 1,
        "delete files not merged: {reports:?}"
    );
    std::fs::write(&checkpoint, &old).unwrap();
    changes!(30);
    assert!(
        run_reporting_index(&url, dir.path()).await[0],
        "a checkpoint was not brought forward across merged deletes"
    );
    check_all(&client, dir.path()).await;
    let old = std::fs::read(&checkpoint).unwrap();
    let reports = maintain(MaintenanceOptions {
        delete_ratio: 0.0,
        ..MaintenanceOptions::default()
    })
    .await;
    assert!(
        reports[0].1.data_files_rewritten > 0,
        "nothing compacted: {reports:?}"
    );
    std::fs::write(&checkpoint, &old).unwrap();
    changes!(30);
    assert!(
        run_reporting_index(&url, dir.path()).await[0],
        "a checkpoint was not brought forward across a compaction"
    );
    check_all(&client, dir.path()).await;
    // Once the snapshots after an old checkpoint are expired, it cannot be replayed: rebuilt.
    // Orphan removal (the compacted files are unreferenced now) leaves the checkpoint alone.
    let old = std::fs::read(&checkpoint).unwrap();
    changes!(30);
    // The checkpoint written after the compaction leaves the rewritten files out and
    // renumbers the rest; it loads, and the changes applied through it stay right.
    assert!(
        run_reporting_index(&url, dir.path()).await[0],
        "the renumbered checkpoint was not loaded"
    );
    check_all(&client, dir.path()).await;
    let reports = maintain(MaintenanceOptions {
        expire_older_than: Duration::ZERO,
        retain_last: 1,
        orphan_older_than: Duration::ZERO,
        ..MaintenanceOptions::default()
    })
    .await;
    assert!(
        reports[0].1.snapshots_expired > 0 && reports[0].1.orphans_removed > 0,
        "{reports:?}"
    );
    assert!(checkpoint.exists());
    std::fs::write(&checkpoint, &old).unwrap();
    changes!(30);
    assert!(
        !run_reporting_index(&url, dir.path()).await[0],
        "a checkpoint was replayed across expired snapshots"
    );
    check_all(&client, dir.path()).await;
}

#[tokio::test]
async fn a_large_file_read_in_row_group_pieces_applies_its_deletes_exactly() {
    let (_pg, url) = start_pg("pieces").await;
    let client = connect(&url).await;
    // 300,000 rows of 96 pseudo-random hex characters: one data file of several row groups,
    // big enough that the parallel scan reads it as more than one piece.
    client
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
             CREATE PUBLICATION p FOR TABLE big;
             INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
               FROM generate_series(1, 300000) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    // Deletes and updates spread over the whole file (every row group gets position deletes).
    client
        .batch_execute(
            "DELETE FROM big WHERE id % 97 = 0;
             UPDATE big SET v = 'changed' WHERE id % 89 = 0;",
        )
        .await
        .unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let ctx = lakehouse::query::session(wh.open_catalog().await.unwrap())
        .await
        .unwrap();
    let sql = "SELECT count(*), sum(id), sum(length(v)), count(*) FILTER (WHERE v = 'changed') FROM silver.big";
    let plan = lakehouse::query::run(&ctx, &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    let plan = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    let pieces: usize = plan
        .split("pieces=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no parallel scan in the plan:\n{plan}"));
    assert!(
        pieces >= 3,
        "the large file was not split (pieces={pieces}):\n{plan}"
    );
    let got = lakehouse::query::run(&ctx, sql).await.unwrap();
    let got = arrow::util::pretty::pretty_format_batches(&got)
        .unwrap()
        .to_string();
    let want = client
        .query_one(
            "SELECT count(*), sum(id)::int8, sum(length(v))::int8, count(*) FILTER (WHERE v = 'changed') FROM big",
            &[],
        )
        .await
        .unwrap();
    for i in 0..4 {
        let v: i64 = want.get(i);
        assert!(
            got.contains(&format!(" {v} ")),
            "column {i}: PostgreSQL says {v}, silver:\n{got}"
        );
    }
}

#[tokio::test]
async fn randomized_workload_matches_postgres_after_every_batch() {
    let dir = tempfile::tempdir().unwrap();
    randomized_workload(&dir.path().warehouse(), 12).await;
}

#[tokio::test]
async fn randomized_workload_on_s3_with_a_postgres_catalog() {
    let backend = ObjectStoreBackend::start("random").await;
    randomized_workload(&backend.warehouse, 8).await;
}

/// Random transactions, schema changes and TRUNCATEs; one caught-up ingest run per batch,
/// then bronze and silver checked against PostgreSQL.
async fn randomized_workload(wh: &catalog::Warehouse, batches: usize) {
    let (_pg, url) = start_pg("random").await;
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    seed(&client, &mut rng, 200).await;
    let mut next_id = 200;
    let mut deleted = Vec::new();
    let mut tag = "tag";
    for batch in 0..batches {
        for _ in 0..rng.random_range(20..80) {
            random_txn_on(&client, &mut rng, &mut next_id, &mut deleted, tag).await;
        }
        // Schema changes between batches too: each run starts from a table whose stored
        // schema is behind the catalog's, and learns the change from the stream.
        if let Some((_, ddl, after)) = SCHEMA_STEPS.iter().find(|(b, _, _)| *b + 2 == batch) {
            client.batch_execute(ddl).await.unwrap();
            tag = after;
            for _ in 0..rng.random_range(5..20) {
                random_txn_on(&client, &mut rng, &mut next_id, &mut deleted, tag).await;
            }
        }
        if batch % 5 == 4 {
            // TRUNCATE inside a transaction that refills the table.
            client
                .batch_execute(
                    "BEGIN; TRUNCATE pair; INSERT INTO pair VALUES (1, 'after', 1); COMMIT;",
                )
                .await
                .unwrap();
        }
        ingest_caught_up(&url, "p", wh).await.unwrap();
        check_all(&client, wh).await;
    }
}

/// A long-running ingester (as `bitvelocity ingest` runs it) in a task.
fn spawn_ingest(
    url: &str,
    wh: &(impl AsWarehouse + ?Sized),
    auto: Option<AutoMaintenance>,
) -> (
    tokio::task::JoinHandle<ingestion::Result<ingestion::IngestReport>>,
    watch::Sender<bool>,
) {
    let (stop, rx) = watch::channel(false);
    let (url, wh) = (url.to_string(), wh.warehouse());
    let task = tokio::spawn(async move {
        let mut cfg = ingestion::IngestConfig::new(url, "p");
        cfg.batch_interval = Duration::from_millis(100);
        let cat = wh.open_catalog().await.unwrap();
        let mut sink = lakehouse::MedallionSink::new(cat, wh.commit_path().await.unwrap())
            .await
            .unwrap();
        if let Some(auto) = auto {
            sink = sink.with_auto_maintenance(auto);
        }
        ingestion::Ingester::new(cfg, sink).run(rx).await
    });
    (task, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_racing_ingest_and_forced_conflicts_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    maintenance_racing_ingest(dir.path().warehouse()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_racing_ingest_on_s3_with_a_postgres_catalog() {
    let backend = ObjectStoreBackend::start("race").await;
    maintenance_racing_ingest(backend.warehouse.clone()).await;
}

/// Maintenance looping beside a live ingester while a third writer forces conflicts.
async fn maintenance_racing_ingest(wh: catalog::Warehouse) {
    let (_pg, url) = start_pg("race").await;
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(7);
    seed(&client, &mut rng, 500).await;
    let (ingest, stop_ingest) = spawn_ingest(&url, &wh, None);

    let (stop_tx, stop_rx) = watch::channel(false);
    // What maintenance did so far: the workload runs until the races under test happened.
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]); // rebases, deletes remapped
    // Maintenance in a loop, as a second process would run `bitvelocity maintain`.
    let maint_wh = wh.clone();
    let mut maint_stop = stop_rx.clone();
    let maint_seen = seen.clone();
    let maintainer = tokio::spawn(async move {
        let w = maint_wh;
        let cat = w.open_catalog().await.unwrap();
        let commits = w.commit_path().await.unwrap();
        let opts = MaintenanceOptions {
            min_small_files: 2,
            // Any deleted row makes a file worth rewriting: the most races to translate.
            delete_ratio: 0.0,
            expire_older_than: Duration::ZERO,
            retain_last: 3,
            // Files of a commit in flight are younger than this and stay.
            orphan_older_than: Duration::from_secs(30),
            ..Default::default()
        };
        let (mut rounds, mut rewritten) = (0, 0);
        while !*maint_stop.borrow_and_update() {
            if cat
                .table_exists(&catalog::TableIdent::from_strs(["silver", "kv"]).unwrap())
                .await
                .unwrap()
            {
                for (_, r) in maintain_warehouse(cat.as_ref(), &commits, None, &opts)
                    .await
                    .expect("maintenance")
                {
                    rewritten += r.data_files_rewritten;
                    maint_seen[0].fetch_add(r.rebases as u64, Ordering::Relaxed);
                    maint_seen[1].fetch_add(r.deletes_remapped, Ordering::Relaxed);
                }
                rounds += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (rounds, rewritten)
    });
    // A third writer bumping a table property of silver.kv often: ingest and maintenance
    // commits keep finding the pointer moved.
    let bump_wh = wh.clone();
    let mut bump_stop = stop_rx.clone();
    let bumper = tokio::spawn(async move {
        let w = bump_wh;
        let cat = w.open_catalog().await.unwrap();
        let commits = w.commit_path().await.unwrap();
        let ident = catalog::TableIdent::from_strs(["silver", "kv"]).unwrap();
        let mut rng = StdRng::seed_from_u64(99);
        let mut n = 0u64;
        while !*bump_stop.borrow_and_update() {
            if let Ok(table) = cat.load_table(&ident).await {
                let props = std::collections::HashMap::from([(
                    "bitvelocity.test-bump".to_string(),
                    n.to_string(),
                )]);
                if commits
                    .commit_metadata(cat.as_ref(), &table, |b| b.set_properties(props))
                    .await
                    .is_ok()
                {
                    n += 1;
                }
            }
            // Irregular pauses, like a real writer's: often enough that most commits of the
            // others meet a moved pointer, with gaps a slower commit (several object-store
            // writes) can land in. A writer committing without pause would starve any
            // optimistic writer slower than itself, by design of optimistic concurrency.
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..120))).await;
        }
        n
    });

    // Run the workload for at least six seconds and until the paths under test were
    // taken: compactions re-based onto commits that landed while they ran, and positions
    // deleted meanwhile were translated onto the rewritten files.
    let start = std::time::Instant::now();
    let mut next_id = 500;
    let mut deleted = Vec::new();
    loop {
        random_txn(&client, &mut rng, &mut next_id, &mut deleted).await;
        let raced = seen.iter().all(|c| c.load(Ordering::Relaxed) > 0);
        if start.elapsed() > Duration::from_secs(6) && raced {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "in two minutes no compaction both re-based and translated a concurrent delete \
             (rebases {}, remapped {}): the race was not exercised",
            seen[0].load(Ordering::Relaxed),
            seen[1].load(Ordering::Relaxed)
        );
    }
    if !wait_caught_up(&client, &ingest).await {
        panic!("the ingester stopped: {:?}", ingest.await);
    }
    stop_tx.send(true).unwrap();
    let (rounds, rewritten) = maintainer.await.unwrap();
    let bumps = bumper.await.unwrap();
    stop_ingest.send(true).unwrap();
    ingest.await.unwrap().expect("ingest");
    println!(
        "maintenance rounds {rounds}, files rewritten {rewritten}, rebases {}, deletes remapped {}; forced conflicts {bumps}; workload {:?}",
        seen[0].load(Ordering::Relaxed),
        seen[1].load(Ordering::Relaxed),
        start.elapsed()
    );
    assert!(rounds > 3 && rewritten > 0, "maintenance barely ran");
    assert!(bumps > 30, "the conflict writer barely ran ({bumps})");
    check_all(&client, &wh).await;
}

#[tokio::test]
async fn automatic_maintenance_keeps_storage_bounded_under_updates() {
    let (_pg, url) = start_pg("bounded").await;
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(11);
    seed(&client, &mut rng, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let auto = AutoMaintenance {
        every_commits: 4,
        options: MaintenanceOptions {
            min_small_files: 2,
            expire_older_than: Duration::ZERO,
            retain_last: 2,
            orphan_older_than: Duration::ZERO,
            ..Default::default()
        },
    };
    let (ingest, stop) = spawn_ingest(&url, dir.path(), Some(auto));
    let silver_kv = silver_dir(dir.path(), "kv");
    let mut counts = Vec::new();
    for _round in 0..12 {
        for _ in 0..6 {
            client
                .batch_execute("UPDATE kv SET n = n + 1 WHERE id % 3 = 0")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(120)).await; // one commit each
        }
        if !wait_caught_up(&client, &ingest).await {
            panic!("the ingester stopped: {:?}", ingest.await);
        }
        counts.push(count_files(&silver_kv));
    }
    stop.send(true).unwrap();
    let report = ingest.await.unwrap().expect("ingest");
    println!("files under silver/kv after each round: {counts:?}; {report:?}");
    assert!(report.commits >= 40, "too few commits: {report:?}");
    // 72 update transactions of 100 rows each; without maintenance every commit adds a
    // data file, a delete file, manifests, a manifest list and a metadata file (over 300
    // files by the end). With it the count levels off: the metadata log keeps 25 versions.
    assert!(
        counts.iter().all(|&c| c <= 80),
        "storage keeps growing: {counts:?}"
    );
    // Maintenance every four commits makes the count cycle (55..78, say) and each round
    // samples it at a random phase; the metadata log fills up over the first rounds. So
    // compare the means of two later stretches of rounds: a leak of even a file or two per
    // commit adds ~20 per stretch, the cycle moves the means by a few.
    let mean = |c: &[usize]| c.iter().sum::<usize>() as f64 / c.len() as f64;
    assert!(
        mean(&counts[8..]) <= mean(&counts[4..8]) + 8.0,
        "storage keeps growing: {counts:?}"
    );
    check_all(&client, dir.path()).await;
}

fn silver_dir(wh: &Path, table: &str) -> PathBuf {
    wh.join("silver").join(table)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn time_travel_reads_old_snapshots_by_id_and_by_timestamp() {
    let (_pg, url) = start_pg("travel").await;
    let client = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(3);
    seed(&client, &mut rng, 50).await;
    let dir = tempfile::tempdir().unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    let kv = common::tables(&client, "p")
        .await
        .into_iter()
        .find(|t| t.name == "kv")
        .unwrap();
    let then = common::pg_rows(&client, &kv).await;
    let w = catalog::Warehouse::new(dir.path()).unwrap();
    let cat = w.open_catalog().await.unwrap();
    let ident = catalog::TableIdent::from_strs(["silver", "kv"]).unwrap();
    let first = cat.load_table(&ident).await.unwrap();
    let snap = first.metadata().current_snapshot().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .batch_execute("UPDATE kv SET n = -1 WHERE id <= 25; DELETE FROM kv WHERE id > 40; INSERT INTO kv VALUES (1000, 0, 'new', NULL)")
        .await
        .unwrap();
    ingest_caught_up(&url, "p", dir.path()).await.unwrap();
    assert_silver_matches(&client, dir.path(), &kv).await;
    let by_id = common::query_rows(
        dir.path(),
        &kv,
        &format!("SELECT * FROM as_of('silver.kv', {})", snap.snapshot_id()),
    )
    .await;
    assert_eq!(by_id, then, "as of the snapshot id");
    let ts = chrono::DateTime::from_timestamp_millis(snap.timestamp_ms() + 5)
        .unwrap()
        .to_rfc3339();
    let by_time = common::query_rows(
        dir.path(),
        &kv,
        &format!("SELECT * FROM as_of('silver.kv', '{ts}')"),
    )
    .await;
    assert_eq!(by_time, then, "as of {ts}");
    // Before the first snapshot there is nothing to read: a clear error, not an empty table.
    let ctx = lakehouse::query::session(cat).await.unwrap();
    let err = lakehouse::query::run(&ctx, "SELECT * FROM as_of('silver.kv', '2000-01-01')")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("no snapshot at or before"),
        "{err:?}"
    );
}

/// The invariant every consistent read must see: each order's total equals the sum of its
/// items, its payments and its shipment count match, and nothing refers to a missing order.
const CONSISTENT_CHECKS: &[&str] = &[
    "SELECT count(*) FROM silver.orders o
     LEFT JOIN (SELECT order_id, sum(amount) AS s, count(*) AS n FROM silver.items GROUP BY order_id) i
     ON i.order_id = o.id WHERE i.s IS NULL OR i.s <> o.total OR i.n <> 2",
    "SELECT count(*) FROM silver.orders o LEFT JOIN silver.payments p ON p.order_id = o.id
     WHERE p.paid IS NULL OR p.paid <> o.total",
    "SELECT count(*) FROM silver.orders o LEFT JOIN silver.shipments s ON s.order_id = o.id
     WHERE s.version IS NULL OR s.version <> o.version",
    "SELECT count(*) FROM silver.items i LEFT JOIN silver.orders o ON o.id = i.order_id WHERE o.id IS NULL",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_reads_never_see_half_a_source_transaction() {
    let (_pg, url) = start_pg("consistent").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, total int NOT NULL, version int NOT NULL);
             CREATE TABLE items (order_id int, line int, amount int NOT NULL, PRIMARY KEY (order_id, line));
             CREATE TABLE payments (order_id int PRIMARY KEY, paid int NOT NULL);
             CREATE TABLE shipments (order_id int PRIMARY KEY, version int NOT NULL);
             CREATE PUBLICATION p FOR TABLE orders, items, payments, shipments;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().to_path_buf();
    let (ingest, stop_ingest) = spawn_ingest(&url, &wh, None);
    // Every transaction writes an order with its lines, payment and shipment, or moves an
    // amount between lines while changing the total, the payment and both versions.
    let writer_url = url.clone();
    let writer = tokio::spawn(async move {
        let c = connect(&writer_url).await;
        for id in 1..=600 {
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO items VALUES ({id}, 1, {id}), ({id}, 2, 7);
                 INSERT INTO payments VALUES ({id}, {id} + 7);
                 INSERT INTO orders VALUES ({id}, {id} + 7, 1);
                 INSERT INTO shipments VALUES ({id}, 1); COMMIT;"
            ))
            .await
            .unwrap();
            if id % 2 == 0 {
                let o = id / 2;
                c.batch_execute(&format!(
                    "BEGIN; UPDATE items SET amount = amount + 5 WHERE order_id = {o} AND line = 2;
                     UPDATE shipments SET version = version + 1 WHERE order_id = {o};
                     UPDATE orders SET total = total + 5, version = version + 1 WHERE id = {o};
                     UPDATE payments SET paid = paid + 5 WHERE order_id = {o}; COMMIT;"
                ))
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(3)).await; // spread over many commits
        }
    });
    // Many readers at once, each opening a consistent session and checking every invariant;
    // an error is a failed read, not a skipped one (except before the first watermark).
    let w = catalog::Warehouse::new(&wh).unwrap();
    let cat = w.open_catalog().await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..8 {
        let cat = cat.clone();
        let writer_done = writer.abort_handle();
        readers.push(tokio::spawn(async move {
            let (mut reads, mut positions, mut failures) = (0u32, Vec::new(), Vec::new());
            let mut seen_position = false;
            while !writer_done.is_finished() || reads < 5 {
                match lakehouse::query::consistent_session(cat.clone()).await {
                    Ok((ctx, lsn)) => {
                        seen_position = true;
                        for sql in CONSISTENT_CHECKS {
                            match lakehouse::query::run(&ctx, sql).await {
                                Ok(out) => {
                                    let n = out[0]
                                        .column(0)
                                        .as_any()
                                        .downcast_ref::<arrow::array::Int64Array>()
                                        .unwrap()
                                        .value(0);
                                    if n != 0 {
                                        failures.push(format!("{n} rows break {sql} at {lsn}"));
                                    }
                                }
                                Err(e) => failures.push(format!("query failed at {lsn}: {e}")),
                            }
                        }
                        positions.push(lsn);
                        reads += 1;
                    }
                    Err(lakehouse::LakehouseError::NoConsistentPosition(_)) if !seen_position => {}
                    Err(e) => failures.push(format!("consistent session failed: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (reads, positions, failures)
        }));
    }
    let mut all_positions = Vec::new();
    let mut total_reads = 0;
    let mut failures = Vec::new();
    for r in readers {
        let (reads, positions, f) = r.await.unwrap();
        total_reads += reads;
        assert!(positions.windows(2).all(|w| w[0] <= w[1]), "{positions:?}");
        all_positions.extend(positions);
        failures.extend(f);
    }
    writer.await.unwrap();
    assert!(wait_caught_up(&client, &ingest).await);
    stop_ingest.send(true).unwrap();
    ingest.await.unwrap().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total_reads} consistent reads failed: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    all_positions.sort();
    all_positions.dedup();
    assert!(
        total_reads >= 40 && all_positions.len() >= 10,
        "too few reads ({total_reads}) or positions ({})",
        all_positions.len()
    );
    check_all(&client, &wh).await;
}
