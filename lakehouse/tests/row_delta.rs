//! Row deltas through our commit path: position deletes hide old rows, new files add rows,
//! iceberg's own reader applies them, and a stale base is refused as a conflict.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use catalog::commit::RowDelta;
use futures::TryStreamExt;
use iceberg::TableCreation;
use iceberg::spec::{DataFileFormat, NestedField, PrimitiveType, Schema, Struct, Type};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::file::properties::WriterProperties;

async fn write_rows(table: &Table, rows: &[(i64, &str)]) -> Vec<iceberg::spec::DataFile> {
    let meta = table.metadata();
    let parquet =
        ParquetWriterBuilder::new(WriterProperties::default(), meta.current_schema().clone());
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        parquet,
        table.file_io().clone(),
        DefaultLocationGenerator::new(meta).unwrap(),
        DefaultFileNameGenerator::new(
            uuid::Uuid::now_v7().to_string(),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let mut w = DataFileWriterBuilder::new(rolling)
        .build(None)
        .await
        .unwrap();
    let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(meta.current_schema()).unwrap());
    let ids = Int64Array::from_iter_values(rows.iter().map(|r| r.0));
    let vs = StringArray::from_iter_values(rows.iter().map(|r| r.1));
    w.write(RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(vs)]).unwrap())
        .await
        .unwrap();
    w.close().await.unwrap()
}

async fn read_all(table: &Table) -> BTreeMap<i64, String> {
    let batches: Vec<RecordBatch> = table
        .scan()
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
            assert!(!ids.is_null(i));
            out.insert(ids.value(i), vs.value(i).to_string());
        }
    }
    out
}

#[tokio::test]
async fn row_delta_hides_deleted_positions_adds_rows_and_refuses_a_stale_base() {
    let dir = tempfile::tempdir().unwrap();
    let (wh, cat, table) = new_table(dir.path(), true).await;
    let files = write_rows(&table, &[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]).await;
    let first_path = files[0].file_path().to_string();
    let tx = Transaction::new(&table);
    let tx = tx.fast_append().add_data_files(files).apply(tx).unwrap();
    let table = tx.commit(cat.as_ref()).await.unwrap();

    // Update id 2, delete id 4: positions 1 and 3 of the first file.
    let deletes = lakehouse::deletes::write_position_deletes(
        &table,
        Struct::empty(),
        0,
        vec![(first_path.clone(), 3), (first_path.clone(), 1)],
    )
    .await
    .unwrap();
    let added = write_rows(&table, &[(2, "b2")]).await;
    let commit = wh.commit_path().await.unwrap();
    let delta = RowDelta {
        data_files: added,
        delete_files: vec![deletes],
        properties: HashMap::from([("bitvelocity.source-lsn".to_string(), "42".to_string())]),
        ..Default::default()
    };
    let after = commit
        .commit_row_delta(cat.as_ref(), &table, delta)
        .await
        .unwrap();
    let want: BTreeMap<i64, String> = [(1, "a"), (2, "b2"), (3, "c"), (5, "e")]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    assert_eq!(read_all(&after).await, want);
    let snap = after.metadata().current_snapshot().unwrap();
    assert_eq!(
        snap.parent_snapshot_id(),
        table.metadata().current_snapshot_id()
    );
    assert_eq!(
        snap.summary()
            .additional_properties
            .get("bitvelocity.source-lsn")
            .map(String::as_str),
        Some("42")
    );
    // The catalog points at the new metadata: a fresh load sees the same rows.
    let reloaded = cat.load_table(table.identifier()).await.unwrap();
    assert_eq!(reloaded.metadata_location(), after.metadata_location());
    // A commit built on the old base is refused, not applied over the newer snapshot.
    let stale = commit
        .commit_row_delta(cat.as_ref(), &table, RowDelta::default())
        .await
        .unwrap_err();
    assert!(stale.is_retryable(), "{stale}");
    assert!(stale.to_string().starts_with("commit conflict"), "{stale}");
    assert_eq!(
        read_all(&cat.load_table(table.identifier()).await.unwrap()).await,
        want
    );
}

/// A fresh warehouse with table `silver.t` (`id` long, plus `v` string when `with_value`).
async fn new_table(
    dir: &std::path::Path,
    with_value: bool,
) -> (catalog::Warehouse, Arc<dyn catalog::Catalog>, Table) {
    let wh = catalog::Warehouse::new(dir).unwrap();
    let cat = wh.open_catalog().await.unwrap();
    let ns = catalog::ensure_namespace(cat.as_ref(), "silver")
        .await
        .unwrap();
    let mut fields = vec![Arc::new(NestedField::required(
        1,
        "id",
        Type::Primitive(PrimitiveType::Long),
    ))];
    if with_value {
        fields.push(Arc::new(NestedField::optional(
            2,
            "v",
            Type::Primitive(PrimitiveType::String),
        )));
    }
    let schema = Schema::builder().with_fields(fields).build().unwrap();
    let creation = TableCreation::builder()
        .name("t".into())
        .schema(schema)
        .properties(HashMap::new())
        .build();
    let table = cat.create_table(&ns, creation).await.unwrap();
    (wh, cat, table)
}

#[tokio::test]
async fn writes_sorted_position_deletes_with_reserved_field_ids() {
    use lakehouse::deletes::{
        DELETE_FILE_PATH_FIELD_ID, DELETE_POS_FIELD_ID, write_position_deletes,
    };
    use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let (_wh, _cat, table) = new_table(dir.path(), false).await;

    let deletes = vec![
        ("file:/b.parquet".to_string(), 7),
        ("file:/a.parquet".to_string(), 9),
        ("file:/a.parquet".to_string(), 2),
    ];
    let file = write_position_deletes(&table, Struct::empty(), 0, deletes)
        .await
        .unwrap();
    assert_eq!(
        file.content_type(),
        iceberg::spec::DataContentType::PositionDeletes
    );
    assert_eq!(file.record_count(), 3);

    let path = file
        .file_path()
        .trim_start_matches("file://")
        .trim_start_matches("file:")
        .to_string();
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
    let ids: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| {
            f.metadata()
                .get(PARQUET_FIELD_ID_META_KEY)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            DELETE_FILE_PATH_FIELD_ID.to_string(),
            DELETE_POS_FIELD_ID.to_string()
        ]
    );
    let batch = reader.build().unwrap().next().unwrap().unwrap();
    let paths = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let pos = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let rows: Vec<(String, i64)> = (0..batch.num_rows())
        .map(|i| (paths.value(i).to_string(), pos.value(i)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("file:/a.parquet".into(), 2),
            ("file:/a.parquet".into(), 9),
            ("file:/b.parquet".into(), 7)
        ]
    );
}
