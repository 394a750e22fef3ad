//! Memory bounded by configuration: the initial copy commits in pieces, one source
//! transaction larger than silver's budget spills to scratch, and silver's rebuild from
//! bronze replays the copy in pieces too, each checked row by row against PostgreSQL.
//! (Crashes in the middle of pieces are in bitvelocity/tests/crash_recovery.rs.)

mod common;

use common::{assert_bronze_matches, assert_silver_matches, connect, lake_name, start_pg};
use lakehouse::MemoryBudget;
use lakehouse::sink::COPY_PIECE_PROPERTY;
use tokio::sync::watch;

const DDL: &str = "
CREATE TABLE big (id bigint PRIMARY KEY, a int NOT NULL, doc text);
ALTER TABLE big ALTER COLUMN doc SET STORAGE EXTERNAL;  -- long docs out of line: unchanged TOAST
INSERT INTO big SELECT g, g % 97,
    CASE WHEN g % 40 = 0 THEN repeat(md5(g::text), 80) ELSE md5(g::text) END
  FROM generate_series(1, 20000) g;
CREATE TABLE small (k int PRIMARY KEY, v text);
INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 10) g;
CREATE PUBLICATION p FOR TABLE big, small;
";

/// The smallest limit (its query pool for silver's rebuild is 16 MiB) with tiny shares, so a
/// 20,000-row table takes many pieces and one update of it spills.
fn budget() -> MemoryBudget {
    MemoryBudget::new(64 << 20)
        .with_copy_piece_bytes(256 * 1024)
        .with_silver_pending_bytes(256 * 1024)
}

/// One caught-up run; returns the silver batches spilled during it.
async fn run(url: &str, wh: &catalog::Warehouse) -> u64 {
    let mut cfg = ingestion::IngestConfig::new(url, "p");
    cfg.exit_when_caught_up = true;
    cfg.batch_rows = 100_000;
    cfg.flush_rows = 1024;
    cfg.copy_piece_bytes = budget().copy_piece_bytes();
    let sink = lakehouse::MedallionSink::new(
        wh.open_catalog().await.unwrap(),
        wh.commit_path().await.unwrap(),
    )
    .await
    .unwrap()
    .with_memory(budget());
    let mut ing = ingestion::Ingester::new(cfg, sink);
    ing.run(watch::channel(false).1).await.unwrap();
    ing.into_sink().silver().spilled_batches()
}

/// Snapshots of `namespace.name` that are pieces of an initial copy.
async fn piece_snapshots(wh: &catalog::Warehouse, namespace: &str, name: &str) -> usize {
    let cat = wh.open_catalog().await.unwrap();
    let ident = catalog::TableIdent::new(
        catalog::NamespaceIdent::new(namespace.to_string()),
        name.to_string(),
    );
    let table = cat.load_table(&ident).await.unwrap();
    table
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary()
                .additional_properties
                .contains_key(COPY_PIECE_PROPERTY)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_pieces_spilled_transactions_and_rebuilds_stay_exact() {
    let (_pg, url) = start_pg("bounded").await;
    let client = connect(&url).await;
    client.batch_execute(DDL).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let tables = common::tables(&client, "p").await;
    let big = tables.iter().find(|t| t.name == "big").unwrap();
    let name = lake_name(&wh, big).await;

    // The copy: many pieces, then the final commit that gives the table its position.
    run(&url, &wh).await;
    let bronze_pieces = piece_snapshots(&wh, "bronze", &name).await;
    let silver_pieces = piece_snapshots(&wh, "silver", &name).await;
    assert!(
        bronze_pieces >= 3 && silver_pieces >= 3,
        "copy not committed in pieces: bronze {bronze_pieces}, silver {silver_pieces}"
    );
    for t in &tables {
        assert_bronze_matches(&client, &wh, t).await;
        assert_silver_matches(&client, &wh, t).await;
    }

    // One transaction touching every row (unchanged TOASTed docs carried from committed
    // files), with deletes and key changes: more than silver's budget, so it spills.
    client
        .batch_execute(
            "BEGIN;
             UPDATE big SET a = a + 1;
             DELETE FROM big WHERE id % 7 = 0;
             UPDATE big SET id = id + 100000 WHERE id % 11 = 0;
             UPDATE big SET a = -a WHERE id % 13 = 0;
             INSERT INTO big SELECT g, 1, md5(g::text) FROM generate_series(200001, 203000) g;
             COMMIT;",
        )
        .await
        .unwrap();
    let spilled = run(&url, &wh).await;
    for t in &tables {
        assert_bronze_matches(&client, &wh, t).await;
        assert_silver_matches(&client, &wh, t).await;
    }
    assert!(spilled > 0, "a 20,000-row transaction did not spill");

    // A column added in the middle of a spilling transaction: batches spilled in the old
    // layout are read back in the new one (the added column null, as PostgreSQL has it).
    client
        .batch_execute(
            "BEGIN;
             UPDATE big SET a = a + 2;
             ALTER TABLE big ADD COLUMN note text;
             UPDATE big SET note = 'n' || id WHERE id % 5 = 0;
             COMMIT;",
        )
        .await
        .unwrap();
    let spilled_again = run(&url, &wh).await;
    assert!(
        spilled_again > 0,
        "the transaction with a layout change did not spill"
    );
    let tables = common::tables(&client, "p").await;
    for t in &tables {
        assert_bronze_matches(&client, &wh, t).await;
        assert_silver_matches(&client, &wh, t).await;
    }

    // Silver lost: rebuilt from the whole change log, the copy's rows again in pieces.
    let cat = wh.open_catalog().await.unwrap();
    cat.drop_table(&catalog::TableIdent::new(
        catalog::NamespaceIdent::new("silver".into()),
        name.clone(),
    ))
    .await
    .unwrap();
    run(&url, &wh).await;
    let rebuilt_pieces = piece_snapshots(&wh, "silver", &name).await;
    assert!(
        rebuilt_pieces >= 2,
        "the rebuild replayed the copy in {rebuilt_pieces} pieces"
    );
    for t in &tables {
        assert_silver_matches(&client, &wh, t).await;
    }
}
