//! Reading committed Parquet files by Iceberg field id, whole or at chosen row positions.
//!
//! iceberg's scan applies deletes and hides row positions; the primary-key index and the
//! unchanged-value carry of silver need the raw rows of one file with their positions, so
//! this reads a file through the table's `FileIO` and projects columns by field id (names
//! change with schema evolution, ids never do).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use iceberg::io::FileIO;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::arrow::{PARQUET_FIELD_ID_META_KEY, ProjectionMask};

use crate::{LakehouseError, Result};

/// Rows per batch read back.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// The Iceberg field id an Arrow field carries in its metadata.
pub fn field_id(field: &arrow::datatypes::Field) -> Option<i32> {
    field
        .metadata()
        .get(PARQUET_FIELD_ID_META_KEY)
        .and_then(|v| v.parse().ok())
}

/// Casts `array` to `ty` when the types differ (list field metadata, time-zone spelling).
pub fn conform(array: ArrayRef, ty: &DataType) -> Result<ArrayRef> {
    if array.data_type() == ty {
        Ok(array)
    } else {
        Ok(cast(&array, ty)?)
    }
}

/// Reads the columns of `target` (matched by field id; absent ones come back null) from the
/// Parquet file at `path`, keeping only the rows at `positions` (ascending) when given.
pub async fn read_projected(
    file_io: &FileIO,
    path: &str,
    target: &SchemaRef,
    positions: Option<&[u64]>,
) -> Result<Vec<RecordBatch>> {
    let bytes = file_io
        .new_input(path)
        .map_err(LakehouseError::iceberg(&path))?
        .read()
        .await
        .map_err(LakehouseError::iceberg(&path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| parquet_err(path, e))?;
    let file_schema = builder.schema().clone();
    let total = builder.metadata().file_metadata().num_rows() as usize;
    let by_id: HashMap<i32, usize> = file_schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| field_id(f).map(|id| (id, i)))
        .collect();
    let wanted: Vec<Option<usize>> = target
        .fields()
        .iter()
        .map(|f| field_id(f).and_then(|id| by_id.get(&id).copied()))
        .collect();
    let mut roots: Vec<usize> = wanted.iter().flatten().copied().collect();
    roots.sort_unstable();
    roots.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let mut builder = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS);
    if let Some(positions) = positions {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        builder = builder.with_row_selection(selection(positions, total)?);
    }
    let reader = builder.build().map_err(|e| parquet_err(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let columns = target
            .fields()
            .iter()
            .zip(&wanted)
            .map(|(f, w)| match w {
                Some(root) => {
                    let k = roots.binary_search(root).map_err(|_| {
                        LakehouseError::BadDataFile(format!("{path}: projected column lost"))
                    })?;
                    conform(batch.column(k).clone(), f.data_type())
                }
                None => Ok(new_null_array(f.data_type(), batch.num_rows())),
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(RecordBatch::try_new_with_options(
            target.clone(),
            columns,
            &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?);
    }
    Ok(out)
}

/// A row selection keeping exactly `positions` (ascending, distinct) of `total` rows.
fn selection(positions: &[u64], total: usize) -> Result<RowSelection> {
    let mut ranges = Vec::new();
    let mut start = positions[0] as usize;
    let mut end = start + 1;
    for &p in &positions[1..] {
        let p = p as usize;
        if p == end {
            end += 1;
        } else if p > end {
            ranges.push(start..end);
            start = p;
            end = p + 1;
        } else {
            return Err(LakehouseError::BadDataFile(format!(
                "row positions not ascending at {p}"
            )));
        }
    }
    ranges.push(start..end);
    if end > total {
        return Err(LakehouseError::BadDataFile(format!(
            "row position {} beyond the file's {total} rows",
            end - 1
        )));
    }
    Ok(RowSelection::from_consecutive_ranges(
        ranges.into_iter(),
        total,
    ))
}

fn parquet_err(path: &str, e: parquet::errors::ParquetError) -> LakehouseError {
    LakehouseError::BadDataFile(format!("{path}: {e}"))
}

/// An Arrow schema with only the fields of `schema` at `indices`.
pub fn project(schema: &SchemaRef, indices: &[usize]) -> Result<SchemaRef> {
    Ok(Arc::new(schema.project(indices)?))
}

/// One live file of a snapshot, as its manifest describes it.
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// The manifest entry's file description.
    pub file: iceberg::spec::DataFile,
    /// Data sequence number the file was committed with.
    pub sequence: i64,
    /// Partition spec the file was written with (from its manifest).
    pub spec_id: i32,
}

/// The live data files and position-delete files of `table`'s current snapshot.
#[derive(Debug, Default)]
pub struct LiveFiles {
    /// Data files.
    pub data: Vec<LiveFile>,
    /// Position-delete files.
    pub deletes: Vec<LiveFile>,
}

/// Lists the files `table`'s current snapshot reads; equality deletes are refused (we never write them).
pub async fn live_files(table: &iceberg::table::Table) -> Result<LiveFiles> {
    let mut out = LiveFiles::default();
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(out);
    };
    let name = table.identifier().to_string();
    let file_io = table.file_io();
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(LakehouseError::iceberg(&name))?;
    for m in list.entries() {
        let manifest = m
            .load_manifest(file_io)
            .await
            .map_err(LakehouseError::iceberg(&name))?;
        for e in manifest.entries().iter().filter(|e| e.is_alive()) {
            let live = LiveFile {
                file: e.data_file().clone(),
                sequence: e.sequence_number().unwrap_or(m.sequence_number),
                spec_id: m.partition_spec_id,
            };
            match e.content_type() {
                iceberg::spec::DataContentType::Data => out.data.push(live),
                iceberg::spec::DataContentType::PositionDeletes => out.deletes.push(live),
                iceberg::spec::DataContentType::EqualityDeletes => {
                    return Err(LakehouseError::EqualityDeletes {
                        table: name.to_string(),
                        file: e.file_path().to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The (data file path, row position) pairs a position-delete file removes.
pub async fn read_position_deletes(file_io: &FileIO, path: &str) -> Result<Vec<(String, u64)>> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    let schema = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&crate::deletes::position_delete_schema()?)
            .map_err(LakehouseError::iceberg(&path))?,
    );
    let mut out = Vec::new();
    for b in read_projected(file_io, path, &schema, None).await? {
        let paths = b.column(0).as_string::<i32>();
        let pos = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((paths.value(i).to_string(), pos.value(i) as u64));
        }
    }
    Ok(out)
}

/// The data-file writer every lakehouse table uses: zstd Parquet, rolling at `target_bytes`.
pub type DataWriterBuilder = iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder<
    iceberg::writer::file_writer::ParquetWriterBuilder,
    iceberg::writer::file_writer::location_generator::DefaultLocationGenerator,
    iceberg::writer::file_writer::location_generator::DefaultFileNameGenerator,
>;

/// Largest dictionary a data file's column keeps before falling back to plain encoding.
const DICTIONARY_PAGE_BYTES: usize = 64 * 1024;

/// A writer builder for `table` whose files are named `<prefix>-<uuid v7>-…`: a fresh name
/// per writer, so files of an attempt that crashed before its commit never collide with a retry.
/// Files follow `schema`: the table's current one, or the one the next commit installs.
pub fn data_writer(
    table: &iceberg::table::Table,
    schema: iceberg::spec::SchemaRef,
    target_bytes: usize,
    prefix: &str,
) -> Result<DataWriterBuilder> {
    use iceberg::writer::file_writer::location_generator::{
        DefaultFileNameGenerator, DefaultLocationGenerator,
    };
    let meta = table.metadata();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        // A column keeps its dictionary while the dictionary stays small (few distinct
        // values); the default limit (1 MiB) is as large as a row group of a unique
        // `bigint` column, which then pays for hashing every value into a dictionary as
        // large as the data (15% of a copy's time), never falling back to plain encoding.
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .build();
    let parquet = iceberg::writer::file_writer::ParquetWriterBuilder::new(props, schema);
    let location =
        DefaultLocationGenerator::new(meta).map_err(LakehouseError::iceberg(table.identifier()))?;
    let names = DefaultFileNameGenerator::new(
        format!("{prefix}{}", uuid::Uuid::now_v7()),
        None,
        iceberg::spec::DataFileFormat::Parquet,
    );
    Ok(DataWriterBuilder::new(
        iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder::new(
            parquet,
            target_bytes,
            table.file_io().clone(),
            location,
            names,
        ),
    ))
}
