//! Position-delete files: the row-level delete format every Iceberg reader accepts.
//!
//! iceberg-rust 0.10 ships an equality-delete writer but none for position deletes
//! (ADR 0005), so this module writes them with iceberg's own Parquet writer: a
//! Parquet file of (`file_path`, `pos`) rows with the field ids the spec reserves,
//! sorted by path then position, described by a `DataFile` of content
//! `PositionDeletes`.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use iceberg::spec::{DataContentType, DataFile, NestedField, PrimitiveType, Schema, Struct, Type};
use iceberg::table::Table;
use iceberg::writer::file_writer::{FileWriter, FileWriterBuilder, ParquetWriterBuilder};
use parquet::file::properties::WriterProperties;

use crate::{LakehouseError, Result};

/// Field id the spec reserves for `file_path` in position-delete files.
pub const DELETE_FILE_PATH_FIELD_ID: i32 = 2_147_483_546;
/// Field id the spec reserves for `pos` in position-delete files.
pub const DELETE_POS_FIELD_ID: i32 = 2_147_483_545;

/// The schema of a position-delete file.
pub fn position_delete_schema() -> Result<Schema> {
    Schema::builder()
        .with_fields([
            Arc::new(NestedField::required(
                DELETE_FILE_PATH_FIELD_ID,
                "file_path",
                Type::Primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::required(
                DELETE_POS_FIELD_ID,
                "pos",
                Type::Primitive(PrimitiveType::Long),
            )),
        ])
        .build()
        .map_err(LakehouseError::iceberg(&"position-delete schema"))
}

/// Writes one position-delete file for `table` removing `deletes` (data file path, row position),
/// in the partition `partition` of spec `spec_id`; the file is not committed.
pub async fn write_position_deletes(
    table: &Table,
    partition: Struct,
    spec_id: i32,
    mut deletes: Vec<(String, i64)>,
) -> Result<DataFile> {
    let ident = table.identifier().to_string();
    deletes.sort_unstable();
    deletes.dedup();
    let schema = Arc::new(position_delete_schema()?);
    let arrow_schema = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&schema).map_err(LakehouseError::iceberg(&ident))?,
    );
    let paths: ArrayRef = Arc::new(StringArray::from_iter_values(
        deletes.iter().map(|(p, _)| p.as_str()),
    ));
    let positions: ArrayRef = Arc::new(Int64Array::from_iter_values(
        deletes.iter().map(|(_, pos)| *pos),
    ));
    let batch = RecordBatch::try_new(arrow_schema, vec![paths, positions])?;

    let location = format!(
        "{}/data/deletes-{}.parquet",
        table.metadata().location().trim_end_matches('/'),
        uuid::Uuid::now_v7()
    );
    let output = table
        .file_io()
        .new_output(&location)
        .map_err(LakehouseError::iceberg(&ident))?;
    let mut writer = ParquetWriterBuilder::new(WriterProperties::default(), schema)
        .build(output)
        .await
        .map_err(LakehouseError::iceberg(&ident))?;
    writer
        .write(&batch)
        .await
        .map_err(LakehouseError::iceberg(&ident))?;
    let mut built = writer
        .close()
        .await
        .map_err(LakehouseError::iceberg(&ident))?;
    let mut builder = built.pop().ok_or_else(|| LakehouseError::SchemaMismatch {
        table: ident.clone(),
        message: "the Parquet writer produced no file".into(),
    })?;
    builder
        .content(DataContentType::PositionDeletes)
        .partition(partition)
        .partition_spec_id(spec_id);
    builder.build().map_err(|e| LakehouseError::SchemaMismatch {
        table: ident,
        message: format!("position-delete file: {e}"),
    })
}
