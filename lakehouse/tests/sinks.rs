//! The sinks through their contract on a real catalog and local files.
//!
//! Silver's initial copy is written as it arrives (`write/silver/copy.rs`): copy rows
//! followed by rows of another kind are first committed as a positionless piece whose keys
//! the index then knows; a stopped table's written copy rows are never committed; and a
//! commit that fails after taking the written rows refuses further rows until the sink is
//! prepared again. Bronze writes a batch within one day without the per-row partition
//! splitter, and one spanning midnight through it, each row in its day's partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, StringArray, TimestampMicrosecondArray, new_null_array,
};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use lakehouse::sink::{COPY_PIECE_PROPERTY, SOURCE_LSN_PROPERTY};
use lakehouse::{ChangeLogSchema, ChangeSink, ColumnType, SilverSink, SourceColumn};

fn items() -> ChangeLogSchema {
    let column = |name: &str, ty, id| SourceColumn {
        name: name.into(),
        ty,
        source_id: Some(id),
        backfilled: false,
    };
    ChangeLogSchema {
        source_schema: "public".into(),
        source_table: "items".into(),
        columns: vec![
            column("id", ColumnType::Long, 1),
            column("v", ColumnType::String, 2),
        ],
        key: vec!["id".into()],
    }
}

/// One change-log batch of `rows` with operation `op`, committed at `lsn` by transaction
/// `txid` (none for the initial copy).
fn batch(
    schema: &SchemaRef,
    rows: &[(i64, Option<&str>)],
    op: &str,
    lsn: i64,
    txid: Option<i64>,
) -> RecordBatch {
    batch_at(schema, rows, op, lsn, txid, |_| 1_700_000_000_000_000)
}

/// As [`batch`], row `i` committed at `commit_ts(i)` (microseconds since the epoch).
fn batch_at(
    schema: &SchemaRef,
    rows: &[(i64, Option<&str>)],
    op: &str,
    lsn: i64,
    txid: Option<i64>,
    commit_ts: impl Fn(usize) -> i64,
) -> RecordBatch {
    let n = rows.len();
    let column = |name: &str| -> ArrayRef {
        let field = schema.field_with_name(name).unwrap();
        match name {
            "id" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            "v" => Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            "_op" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(op, n))),
            "_lsn" => Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(lsn, n))),
            "_txid" => Arc::new(Int64Array::from_iter(std::iter::repeat_n(txid, n))),
            "_seq" => Arc::new(Int64Array::from_iter_values(0..n as i64)),
            "_commit_ts" => Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(&commit_ts))
                    .with_data_type(field.data_type().clone()),
            ),
            _ => new_null_array(field.data_type(), n),
        }
    };
    let columns = schema.fields().iter().map(|f| column(f.name())).collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

fn copy_rows(range: std::ops::RangeInclusive<i64>) -> Vec<(i64, Option<&'static str>)> {
    range.map(|i| (i, Some("copied"))).collect()
}

async fn silver_rows(cat: &dyn Catalog) -> BTreeMap<i64, Option<String>> {
    let ident = TableIdent::new(NamespaceIdent::new("silver".into()), "items".into());
    let table = cat.load_table(&ident).await.unwrap();
    let batches: Vec<RecordBatch> = table
        .scan()
        .select(["id", "v"])
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let vs = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            let v = (!vs.is_null(i)).then(|| vs.value(i).to_string());
            assert!(
                out.insert(ids.value(i), v).is_none(),
                "key {} twice",
                ids.value(i)
            );
        }
    }
    out
}

/// Each snapshot's (copy-piece position, source position), oldest first.
async fn snapshot_marks(cat: &dyn Catalog) -> Vec<(Option<String>, Option<String>)> {
    let ident = TableIdent::new(NamespaceIdent::new("silver".into()), "items".into());
    let table = cat.load_table(&ident).await.unwrap();
    let mut snaps: Vec<_> = table.metadata().snapshots().collect();
    snaps.sort_by_key(|s| s.sequence_number());
    snaps
        .iter()
        .map(|s| {
            let props = &s.summary().additional_properties;
            (
                props.get(COPY_PIECE_PROPERTY).cloned(),
                props.get(SOURCE_LSN_PROPERTY).cloned(),
            )
        })
        .collect()
}

async fn open(dir: &std::path::Path) -> (Arc<dyn Catalog>, SilverSink, SchemaRef) {
    let wh = catalog::Warehouse::new(dir).unwrap();
    let cat = wh.open_catalog().await.unwrap();
    let mut sink = SilverSink::new(cat.clone(), wh.commit_path().await.unwrap())
        .await
        .unwrap();
    let progress = sink.prepare(&[items()]).await.unwrap();
    assert_eq!(progress[0].source_lsn, None);
    (cat, sink, items().arrow_schema().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_rows_followed_by_changes_commit_first_as_a_piece_the_changes_then_find() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, mut sink, schema) = open(dir.path()).await;
    // The copy is taken at position 1000: its rows carry 999 and no transaction.
    for range in [1..=500, 501..=1000] {
        let rows = copy_rows(range);
        sink.write(0, batch(&schema, &rows, "insert", 999, None))
            .await
            .unwrap();
    }
    // Nothing is visible before a commit.
    let before = snapshot_marks(cat.as_ref()).await;
    assert!(before.is_empty(), "{before:?}");

    // A change of the stream for the same table: the written copy rows go first.
    let update = batch(&schema, &[(5, Some("changed"))], "update", 1100, Some(42));
    sink.write(0, update).await.unwrap();
    assert_eq!(
        snapshot_marks(cat.as_ref()).await,
        vec![(Some("1000".into()), None)],
        "the copy rows are committed as a piece at the copy's position, without a position"
    );
    let delete = batch(&schema, &[(7, None)], "delete", 1100, Some(42));
    sink.write(0, delete).await.unwrap();
    sink.commit(1200, &[]).await.unwrap();

    assert_eq!(
        snapshot_marks(cat.as_ref()).await,
        vec![(Some("1000".into()), None), (None, Some("1200".into()))]
    );
    let rows = silver_rows(cat.as_ref()).await;
    // The update replaced the copied row (the index knew the piece's keys): no duplicate,
    // and the delete removed one.
    assert_eq!(rows.len(), 999);
    assert_eq!(rows[&5].as_deref(), Some("changed"));
    assert!(!rows.contains_key(&7));
    assert!(
        rows.iter()
            .filter(|(k, _)| **k != 5)
            .all(|(_, v)| v.as_deref() == Some("copied"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_second_copy_are_refused_while_the_first_is_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, mut sink, schema) = open(dir.path()).await;
    sink.write(0, batch(&schema, &copy_rows(1..=10), "insert", 999, None))
        .await
        .unwrap();
    // The same keys copied again at another position would be held twice.
    let err = sink
        .write(0, batch(&schema, &copy_rows(1..=10), "insert", 1999, None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("while the copy at 1000"), "{err}");
    sink.commit(1000, &[0]).await.unwrap();
    let rows = silver_rows(cat.as_ref()).await;
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
}

/// Maintenance rewrites the copy's committed pieces while more copy rows wait written: the
/// commit loses the race, takes the new base with its written files as they are, and brings
/// the index across the rewrite, so a later change finds its row in the rewritten file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_copy_rows_commit_over_a_concurrent_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let commits = wh.commit_path().await.unwrap();
    let (cat, mut sink, schema) = open(dir.path()).await;
    for (i, range) in [1..=100, 101..=200].into_iter().enumerate() {
        sink.write(0, batch(&schema, &copy_rows(range), "insert", 999, None))
            .await
            .unwrap();
        sink.commit_copy_piece(0, 1000).await.unwrap();
        assert_eq!(snapshot_marks(cat.as_ref()).await.len(), i + 1);
    }
    sink.write(
        0,
        batch(&schema, &copy_rows(201..=300), "insert", 999, None),
    )
    .await
    .unwrap();

    // Two small piece files: compacted into one, behind the sink's back.
    let ident = TableIdent::new(NamespaceIdent::new("silver".into()), "items".into());
    let opts = lakehouse::maintenance::MaintenanceOptions {
        min_small_files: 2,
        ..Default::default()
    };
    let report = lakehouse::maintenance::compact(cat.as_ref(), &commits, &ident, &opts)
        .await
        .unwrap();
    let table = cat.load_table(&ident).await.unwrap();
    let live = lakehouse::files::live_files(&table).await.unwrap();
    assert_eq!(
        live.data.len(),
        1,
        "the pieces were not compacted: {report:?}"
    );
    let compacted = live.data[0].file.file_path().to_string();

    sink.commit(1000, &[0]).await.unwrap();
    let table = cat.load_table(&ident).await.unwrap();
    let ops: Vec<_> = {
        let mut snaps: Vec<_> = table.metadata().snapshots().collect();
        snaps.sort_by_key(|s| s.sequence_number());
        snaps
            .iter()
            .map(|s| s.summary().operation.clone())
            .collect()
    };
    assert_eq!(
        ops.last(),
        Some(&iceberg::spec::Operation::Append),
        "the copy committed after the compaction: {ops:?}"
    );
    assert!(ops.contains(&iceberg::spec::Operation::Replace), "{ops:?}");
    let rows = silver_rows(cat.as_ref()).await;
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );

    // A change to a row now in the compacted file: the index moved across the rewrite.
    sink.write(
        0,
        batch(&schema, &[(50, Some("changed"))], "update", 1100, Some(7)),
    )
    .await
    .unwrap();
    sink.commit(1200, &[]).await.unwrap();
    let rows = silver_rows(cat.as_ref()).await;
    assert_eq!(rows.len(), 300);
    assert_eq!(rows[&50].as_deref(), Some("changed"));
    let table = cat.load_table(&ident).await.unwrap();
    let live = lakehouse::files::live_files(&table).await.unwrap();
    assert!(
        live.data.iter().any(|f| f.file.file_path() == compacted),
        "the compacted file is still live"
    );
    assert_eq!(
        live.deletes.len(),
        1,
        "the update deleted its old row by position"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_tables_written_copy_rows_are_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, mut sink, schema) = open(dir.path()).await;
    sink.write(0, batch(&schema, &copy_rows(1..=1000), "insert", 999, None))
        .await
        .unwrap();
    sink.stop(0).await.unwrap();
    // The capture starts the table over: a new copy at another position.
    sink.write(
        0,
        batch(&schema, &copy_rows(2001..=2010), "insert", 2999, None),
    )
    .await
    .unwrap();
    sink.commit(3000, &[0]).await.unwrap();
    assert_eq!(
        snapshot_marks(cat.as_ref()).await,
        vec![(None, Some("3000".into()))],
        "no piece of the stopped copy was committed"
    );
    let rows = silver_rows(cat.as_ref()).await;
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (2001..=2010).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_failing_after_taking_written_rows_refuses_more_until_prepared_again() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, mut sink, schema) = open(dir.path()).await;
    sink.write(0, batch(&schema, &copy_rows(1..=100), "insert", 999, None))
        .await
        .unwrap();
    // The table disappears under the sink: the piece's commit fails after the written
    // rows were handed to it.
    let ident = TableIdent::new(NamespaceIdent::new("silver".into()), "items".into());
    cat.drop_table(&ident).await.unwrap();
    let change = batch(&schema, &[(5, Some("changed"))], "update", 1100, Some(42));
    assert!(sink.write(0, change.clone()).await.is_err());
    // The written rows are gone from the sink: taking more would commit a change over a
    // copy that is not there, so every call refuses until `prepare`.
    let refused = sink.write(0, change).await.unwrap_err().to_string();
    assert!(refused.contains("prepare the sink again"), "{refused}");
    let refused = sink.commit(1200, &[0]).await.unwrap_err().to_string();
    assert!(refused.contains("prepare the sink again"), "{refused}");

    // Prepared again (as after a restart), the table has no position: the copy restarts.
    let progress = sink.prepare(&[items()]).await.unwrap();
    assert_eq!(progress[0].source_lsn, None);
    sink.write(0, batch(&schema, &copy_rows(1..=100), "insert", 1999, None))
        .await
        .unwrap();
    sink.commit(2000, &[0]).await.unwrap();
    assert_eq!(silver_rows(cat.as_ref()).await.len(), 100);
}

/// Bronze's rows of one table, by id: (commit time, day of the partition their file is in).
async fn bronze_days(cat: &dyn Catalog) -> BTreeMap<i64, (i64, i32)> {
    use arrow::datatypes::TimestampMicrosecondType;
    let ident = TableIdent::new(NamespaceIdent::new("bronze".into()), "items".into());
    let table = cat.load_table(&ident).await.unwrap();
    let live = lakehouse::files::live_files(&table).await.unwrap();
    let mut out = BTreeMap::new();
    for f in &live.data {
        let day = match f.file.partition().fields().first() {
            Some(Some(iceberg::spec::Literal::Primitive(
                iceberg::spec::PrimitiveLiteral::Int(d),
            ))) => *d,
            other => panic!("{}: partition {other:?}", f.file.file_path()),
        };
        let bytes = table.file_io().new_input(f.file.file_path()).unwrap();
        let bytes = bytes.read().await.unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            let ts = b
                .column_by_name("_commit_ts")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            for i in 0..b.num_rows() {
                assert!(out.insert(ids.value(i), (ts.value(i), day)).is_none());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_puts_each_row_in_its_commit_days_partition_across_midnight() {
    const DAY: i64 = 86_400_000_000;
    let midnight = 19_700 * DAY; // 2023-12-08T00:00:00Z
    let dir = tempfile::tempdir().unwrap();
    let wh = catalog::Warehouse::new(dir.path()).unwrap();
    let cat = wh.open_catalog().await.unwrap();
    let mut sink = lakehouse::BronzeSink::new(cat.clone(), wh.commit_path().await.unwrap())
        .await
        .unwrap();
    sink.prepare(&[items()]).await.unwrap();
    let schema = items().arrow_schema().unwrap();
    // One batch within a day (the fast path), then one spanning midnight, alternating days
    // row by row so a batch-level shortcut would misplace half of them.
    let within: Vec<_> = (1..=100).map(|i| (i, Some("a"))).collect();
    sink.write(
        0,
        batch_at(&schema, &within, "insert", 500, Some(1), |i| {
            midnight - DAY + 1000 * i as i64
        }),
    )
    .await
    .unwrap();
    let across: Vec<_> = (101..=300).map(|i| (i, Some("b"))).collect();
    sink.write(
        0,
        batch_at(&schema, &across, "insert", 600, Some(2), |i| {
            if i % 2 == 0 {
                midnight - 1 - i as i64
            } else {
                midnight + i as i64
            }
        }),
    )
    .await
    .unwrap();
    sink.commit(700, &[]).await.unwrap();

    let rows = bronze_days(cat.as_ref()).await;
    assert_eq!(rows.len(), 300);
    let mut days = std::collections::BTreeSet::new();
    for (id, (ts, day)) in &rows {
        assert_eq!(
            ts.div_euclid(DAY),
            *day as i64,
            "row {id} in the wrong day's file"
        );
        days.insert(*day);
    }
    assert_eq!(
        days.into_iter().collect::<Vec<_>>(),
        vec![19_699, 19_700],
        "both days written"
    );
}
