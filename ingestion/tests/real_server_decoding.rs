//! pgoutput decoding and value conversion on messages produced by a real PostgreSQL.

mod common;

use common::{Val, arrow_val};
use ingestion::pgoutput::{self, Cell, Message, OldImage};
use ingestion::value::ColumnBuilder;

const ROW: &str = "INSERT INTO typed (id, b, i2, i4, f4, f8, d, n, t, v, c, by, dt, tm, ts, tstz, u, j, jb, m, ai, at, big) VALUES (
    1, true, -32768, 2147483647, 1.5, -2.25e-300,
    -1234567.891, 3.14159265358979323846264338327950288419716939937510, E'tab\\there \"quoted\" ñ', 'varchar', 'ab',
    '\\x00ff7f', '0044-03-15 BC', '23:59:59.999999', '2000-02-29 12:34:56.789', '2026-11-25 01:02:03.456789+05:30',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": null}', 'happy',
    '{1,NULL,-3}', '{\"x y\",NULL,\"z,\\\\\"}', repeat('toast', 2000))";

#[tokio::test]
async fn real_pgoutput_messages_decode_and_convert_like_postgres_reads_them() {
    let (_pg, url) = common::start_pg("decode").await;
    let client = common::connect(&url).await;
    client.batch_execute(common::ALL_TYPES_DDL).await.unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
    client.batch_execute(ROW).await.unwrap();
    let table = common::tables(&client, "p").await.remove(0);
    // The oracle: the row as tokio-postgres decodes it from binary.
    let expected = common::pg_rows(&client, &table).await;
    let expected_row = expected.values().next().unwrap().clone();

    client
        .batch_execute("UPDATE typed SET i4 = 7 WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute("UPDATE typed SET id = 2 WHERE id = 1")
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM typed WHERE id = 2")
        .await
        .unwrap();
    client.batch_execute("TRUNCATE typed").await.unwrap();

    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')",
            &[],
        )
        .await
        .unwrap();
    let raw: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let msgs: Vec<Message<'_>> = raw
        .iter()
        .map(|b| pgoutput::decode(b).expect("decode"))
        .collect();

    // Relation describes the table; the enum type is announced by a Type message first.
    let rel = msgs
        .iter()
        .find_map(|m| match m {
            Message::Relation(r) => Some(r.clone()),
            _ => None,
        })
        .expect("relation message");
    assert_eq!(rel.name, "typed");
    assert_eq!(rel.columns.len(), table.columns.len());
    assert!(rel.columns[0].is_key && !rel.columns[1].is_key);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Message::Type { name, .. } if name == "mood"))
    );

    // Five transactions, each Begin ... Commit, commit LSNs increasing.
    let begins: Vec<_> = msgs
        .iter()
        .filter_map(|m| {
            if let Message::Begin { final_lsn, .. } = m {
                Some(*final_lsn)
            } else {
                None
            }
        })
        .collect();
    let commits: Vec<_> = msgs
        .iter()
        .filter_map(|m| {
            if let Message::Commit {
                commit_lsn,
                end_lsn,
                ..
            } = m
            {
                Some((*commit_lsn, *end_lsn))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(begins.len(), 5);
    assert_eq!(begins, commits.iter().map(|c| c.0).collect::<Vec<_>>());
    assert!(
        commits.windows(2).all(|w| w[0].1 <= w[1].0),
        "commits out of order: {commits:?}"
    );

    // The insert converts to exactly what PostgreSQL returns.
    let new = msgs
        .iter()
        .find_map(|m| {
            if let Message::Insert { new, .. } = m {
                Some(new.clone())
            } else {
                None
            }
        })
        .unwrap();
    let arrow_schema = table.changelog.arrow_schema().unwrap();
    for (i, col) in table.columns.iter().enumerate() {
        let mut b = ColumnBuilder::new(&col.kind, arrow_schema.field(i).data_type());
        match new[i] {
            Cell::Text(v) => b
                .append_text(v)
                .unwrap_or_else(|e| panic!("{}: {e}", col.name)),
            Cell::Null => b.append_null(),
            Cell::Unchanged => panic!("insert cannot carry unchanged values"),
        }
        let got = arrow_val(&b.finish(), 0);
        assert_eq!(
            got, expected_row[i],
            "column {} ({})",
            col.name, col.type_name
        );
    }

    // The first update leaves the TOASTed column out; the second changes the key.
    let updates: Vec<_> = msgs
        .iter()
        .filter_map(|m| {
            if let Message::Update { old, new, .. } = m {
                Some((old.clone(), new.clone()))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].1.last(), Some(&Cell::Unchanged));
    assert!(updates[0].0.is_none());
    let (image, old_key) = updates[1].0.clone().expect("key change sends the old key");
    assert_eq!(image, OldImage::Key);
    assert_eq!(old_key[0], Cell::Text(b"1"));
    assert_eq!(updates[1].1[0], Cell::Text(b"2"));
    assert!(msgs.iter().any(|m| matches!(m, Message::Delete { old: (OldImage::Key, cells), .. } if cells[0] == Cell::Text(b"2") && cells[1] == Cell::Null)));
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Message::Truncate { rels } if rels == &vec![rel.oid]))
    );
    assert!(matches!(expected_row[0], Val::Int(1)));
}
