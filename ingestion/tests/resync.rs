//! `bitvelocity resync`: one table copied afresh by a running ingester while its source and
//! the other tables keep changing; nothing lost, duplicated or resurrected, and only the
//! asked-for table re-copied.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{
    AsWarehouse, assert_bronze_matches, assert_silver_matches, connect, lake_name, start_pg,
    tables, wait_caught_up,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

/// Snapshots of `bronze.<name>` that removed data files (a copy's first commit replacing
/// the earlier ones), and the snapshot count.
async fn removals(wh: &catalog::Warehouse, name: &str) -> (usize, usize) {
    let cat = wh.open_catalog().await.unwrap();
    let ident = catalog::TableIdent::new(
        catalog::NamespaceIdent::new("bronze".to_string()),
        name.to_string(),
    );
    let table = cat.load_table(&ident).await.unwrap();
    let snapshots: Vec<_> = table.metadata().snapshots().collect();
    let removing = snapshots
        .iter()
        .filter(|s| {
            s.summary()
                .additional_properties
                .get("deleted-data-files")
                .is_some_and(|n| n != "0")
        })
        .count();
    (removing, snapshots.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_recopies_one_table_while_changes_keep_coming() {
    let (_pg, url) = start_pg("resync").await;
    let client = connect(&url).await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text NOT NULL);
             CREATE TABLE b (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 3000) g;
             INSERT INTO b SELECT g, g FROM generate_series(1, 3000) g;
             CREATE PUBLICATION p FOR TABLE a, b;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = dir.path().warehouse();
    let (stop, rx) = watch::channel(false);
    let ingest = {
        let (url, wh) = (url.clone(), wh.clone());
        tokio::spawn(async move {
            let mut cfg = ingestion::IngestConfig::new(url, "p");
            cfg.batch_interval = Duration::from_millis(100);
            let sink = lakehouse::MedallionSink::new(
                wh.open_catalog().await.unwrap(),
                wh.commit_path().await.unwrap(),
            )
            .await
            .unwrap()
            .with_requests(wh.catalog_url().requests().await.unwrap());
            ingestion::Ingester::new(cfg, sink).run(rx).await
        })
    };
    let source = tables(&client, "p").await;
    let (name_a, name_b) = (
        lake_name(&wh, &source[0]).await,
        lake_name(&wh, &source[1]).await,
    );
    assert_eq!(source[0].name, "a");

    // Changes to both tables before, during and after the resync of `a`.
    let requests = wh.catalog_url().requests().await.unwrap();
    // The published consistent position, sampled every change: it may only grow (a copy's
    // commit at its snapshot position must not publish it while `b` is still behind).
    let cat = wh.open_catalog().await.unwrap();
    let silver_ns = catalog::NamespaceIdent::new("silver".to_string());
    let mut consistent: Vec<u64> = Vec::new();
    let mut rng = StdRng::seed_from_u64(5);
    let (mut asked, mut done_after) = (None, None::<usize>);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0.. {
        let next = 3001 + i;
        assert!(Instant::now() < deadline, "resync not done in 120 s");
        assert!(
            !ingest.is_finished(),
            "ingester stopped: {:?}",
            ingest.await
        );
        let (lo, hi) = (rng.random_range(1..next), rng.random_range(1..next));
        client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO a VALUES ({next}, 'new {i}');
                 UPDATE a SET v = v || '+' WHERE id BETWEEN {lo} AND {lo} + 20;
                 DELETE FROM a WHERE id = {hi};
                 INSERT INTO b VALUES ({next}, {i});
                 UPDATE b SET n = n + 1 WHERE id BETWEEN {hi} AND {hi} + 20;
                 DELETE FROM b WHERE id = {lo};
                 COMMIT;"
            ))
            .await
            .unwrap();
        if i == 20 {
            requests
                .add(catalog::requests::RESYNC, &name_a, "test")
                .await
                .unwrap();
            asked = Some(i);
        }
        if let Some(v) = cat
            .get_namespace(&silver_ns)
            .await
            .ok()
            .and_then(|n| n.properties().get("bitvelocity.consistent-lsn").cloned())
        {
            let v: u64 = v.parse().unwrap();
            if let Some(&last) = consistent.last() {
                assert!(
                    v >= last,
                    "the consistent position went back from {last:#x} to {v:#x} (change {i})"
                );
            }
            consistent.push(v);
        }
        if asked.is_some() && done_after.is_none() {
            let pending = requests.pending(catalog::requests::RESYNC).await.unwrap();
            if !pending.iter().any(|(t, _)| *t == name_a) {
                done_after = Some(i);
            }
        }
        // Keep changing for a while after the copy finished.
        if done_after.is_some_and(|d| i >= d + 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wait_caught_up(&client, &ingest).await,
        "ingester stopped: {:?}",
        ingest.await
    );
    stop.send(true).unwrap();
    ingest.await.unwrap().expect("ingest");

    for t in &source {
        assert_bronze_matches(&client, &wh, t).await;
        assert_silver_matches(&client, &wh, t).await;
    }
    // `a` was copied again (one commit replaced its files); `b` never was.
    let (removing_a, snapshots_a) = removals(&wh, &name_a).await;
    let (removing_b, _) = removals(&wh, &name_b).await;
    assert_eq!(removing_a, 1, "a: {snapshots_a} snapshots");
    assert_eq!(removing_b, 0, "b was re-copied");
    println!(
        "resync asked after change {asked:?}, done by change {done_after:?}; a has {snapshots_a} snapshots"
    );
}
