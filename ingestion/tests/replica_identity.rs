//! Tables whose replica identity is not the primary key: `REPLICA IDENTITY USING INDEX` on
//! another unique index (with and without a primary key), and keyless `REPLICA IDENTITY
//! FULL` tables with TOASTed columns and equal rows. Old-row images carry only the columns
//! PostgreSQL sends for the identity; bronze and silver must match the source after every
//! batch of an ordinary update/delete workload.

#[path = "common/mod.rs"]
mod common;

use common::{
    assert_bronze_matches, assert_silver_matches, connect, ingest_caught_up, start_pg, tables,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE by_index (id int PRIMARY KEY, code text NOT NULL, v int, big text);
CREATE UNIQUE INDEX by_index_code ON by_index (code);
ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
CREATE TABLE by_index_nopk (region int NOT NULL, code text NOT NULL, v int, big text);
CREATE UNIQUE INDEX by_index_nopk_key ON by_index_nopk (region, code);
ALTER TABLE by_index_nopk REPLICA IDENTITY USING INDEX by_index_nopk_key;
CREATE TABLE keyless (a int, b text, big text);
ALTER TABLE keyless REPLICA IDENTITY FULL;
-- Out of line and uncompressed: every big value is TOASTed.
ALTER TABLE by_index ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE by_index_nopk ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE keyless ALTER COLUMN big SET STORAGE EXTERNAL;
-- A deferrable key may repeat within a statement: rows are matched by all their values.
CREATE TABLE swapped (id int PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, v text);
ALTER TABLE swapped REPLICA IDENTITY FULL;
INSERT INTO swapped SELECT g, 'v' || g FROM generate_series(1, 10) g;
CREATE PUBLICATION p FOR ALL TABLES;
";

/// A value large enough to be stored out of line.
const BIG: &str = "repeat(md5(random()::text), 100)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_index_and_keyless_full_tables_match_the_source_after_every_batch() {
    let (_pg, url) = start_pg("ident").await;
    let client = connect(&url).await;
    client.batch_execute(SCHEMA).await.unwrap();
    let mut rng = StdRng::seed_from_u64(0x1de7);
    let mut next = 0;
    for _ in 0..60 {
        insert(&client, &mut next).await;
    }
    let dir = tempfile::tempdir().unwrap();
    for batch in 0..6 {
        for _ in 0..rng.random_range(30..60) {
            change(&client, &mut rng, &mut next).await;
        }
        ingest_caught_up(&url, "p", dir.path()).await.unwrap();
        for t in tables(&client, "p").await {
            let n = assert_bronze_matches(&client, dir.path(), &t).await;
            assert_silver_matches(&client, dir.path(), &t).await;
            if batch == 5 {
                println!("{}: {n} rows match", t.qualified());
            }
        }
    }
    // The workload really took the paths under test.
    let dup: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT a, b, big FROM keyless GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(dup > 0, "the keyless table holds no equal rows");
    let toasted: i64 = client
        .query_one(
            "SELECT count(*) FROM by_index WHERE pg_column_size(big) > 2000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(toasted > 0, "no big value was TOASTed");
}

/// New rows in every table; every other keyless row gets an equal twin.
async fn insert(client: &Client, next: &mut i32) {
    let n = *next;
    *next += 1;
    client
        .batch_execute(&format!(
            "INSERT INTO by_index VALUES ({n}, 'c{n}', {n}, {BIG});
             INSERT INTO by_index_nopk VALUES ({r}, 'c{n}', {n}, {BIG});
             INSERT INTO keyless VALUES ({n}, 'b{n}', {BIG});",
            r = n % 7
        ))
        .await
        .unwrap();
    if n % 2 == 0 {
        client
            .batch_execute(&format!(
                "INSERT INTO keyless SELECT a, b, big FROM keyless WHERE a = {n} LIMIT 1"
            ))
            .await
            .unwrap();
    }
}

/// One random source transaction of updates and deletes (and some inserts).
async fn change(client: &Client, rng: &mut StdRng, next: &mut i32) {
    let pick = rng.random_range(0..*next);
    let one_keyless = format!("ctid = (SELECT ctid FROM keyless WHERE a = {pick} LIMIT 1)");
    let sql = match rng.random_range(0..12) {
        0 | 1 => return insert(client, next).await,
        // Non-identity columns only: no old image is sent, the big value stays TOASTed.
        2 => format!(
            "UPDATE by_index SET v = v + 1 WHERE id = {pick};
             UPDATE by_index_nopk SET v = v + 1 WHERE code = 'c{pick}'"
        ),
        // The identity changes: the old image holds the identity columns only.
        3 => format!(
            "UPDATE by_index SET code = code || 'x' WHERE id = {pick};
             UPDATE by_index_nopk SET region = region + 10 WHERE code = 'c{pick}'"
        ),
        // The primary key changes, the identity does not.
        4 => format!("UPDATE by_index SET id = id + 100000 WHERE id = {pick}"),
        5 => format!(
            "DELETE FROM by_index WHERE id IN ({pick}, {})",
            pick + 100000
        ),
        6 => format!("DELETE FROM by_index_nopk WHERE code LIKE 'c{pick}%'"),
        // Keyless: one of equal rows changes (big unchanged and TOASTed), or goes.
        7 | 8 => format!("UPDATE keyless SET a = a + 1000 WHERE {one_keyless}"),
        9 => format!("DELETE FROM keyless WHERE {one_keyless}"),
        // An update that changes nothing; keys swapped within one statement.
        10 => format!(
            "UPDATE keyless SET a = a WHERE {one_keyless};
             UPDATE swapped SET id = 11 - id, v = v || 's' WHERE id IN ({k}, {l})",
            k = pick % 10 + 1,
            l = 10 - pick % 10
        ),
        _ => format!(
            "UPDATE keyless SET big = {BIG} WHERE {one_keyless};
             UPDATE by_index SET big = {BIG}, code = code || 'y' WHERE id = {pick}"
        ),
    };
    client
        .batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
        .await
        .unwrap();
}
