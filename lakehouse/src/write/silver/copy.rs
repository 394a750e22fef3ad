//! Silver's initial copy, written as it arrives: a copy's rows are new keys in the
//! source's order, so each batch goes straight to a data-file writer on its own task (its
//! encoding beside the ingester's reading, and bronze's) and only its keys are kept until the
//! commit puts them in the index. Nothing is planned or held per row.
//!
//! Only a copy batch arriving while nothing else is pending is taken this way; a change
//! batch first commits the copy rows written so far as a positionless piece (ADR 0002
//! item 5), so a pending set never mixes written and unwritten rows. Rows of a copy at
//! another position are refused until this one is committed or stopped: a second copy over
//! the first's rows would hold every key twice.

use arrow::row::{RowConverter, Rows};

use super::*;
use crate::schema::LSN_COLUMN;
use crate::table_files::spawned::SpawnedWriter;

/// The copy rows of one table written since its last commit.
pub(super) struct EagerCopy {
    writer: SpawnedWriter,
    converter: RowConverter,
    /// Keys of the rows written, in order, per batch.
    keys: Vec<Rows>,
    rows: u64,
    /// The position the copy is taken at (its rows are stamped just below it).
    pub(super) point: u64,
}

/// Copy rows written and closed, ready to commit.
pub(super) struct Written {
    pub(super) files: Vec<DataFile>,
    pub(super) keys: Vec<Rows>,
    pub(super) rows: u64,
}

impl EagerCopy {
    /// Starts writing copy rows of `t` taken at `point`.
    pub(super) async fn start(t: &SilverTable, point: u64) -> Result<Self> {
        let files = crate::files::data_writer(&t.table, t.schema.clone(), 512 * 1024 * 1024, "")?
            .build(None)
            .await
            .map_err(LakehouseError::iceberg(&t.ident))?;
        Ok(Self {
            writer: SpawnedWriter::plain(t.ident.to_string(), files),
            converter: key_converter(&t.key_schema)?,
            keys: Vec::new(),
            rows: 0,
            point,
        })
    }

    /// Writes `input` (a copy batch of `t` in silver's input layout).
    pub(super) async fn write(&mut self, t: &SilverTable, input: RecordBatch) -> Result<()> {
        let keys = plan::key_arrays(t, &input)?;
        self.keys.push(self.converter.convert_columns(&keys)?);
        let columns = input.columns()[..t.arrow.fields().len()].to_vec();
        let batch = RecordBatch::try_new(t.arrow.clone(), columns)?;
        self.rows += batch.num_rows() as u64;
        self.writer.write(None, batch).await
    }

    /// Finishes the files: every row written is in them, in order.
    pub(super) async fn finish(self) -> Result<Written> {
        let files = self.writer.close().await?;
        let written: u64 = files.iter().map(|f| f.record_count()).sum();
        if written != self.rows {
            return Err(LakehouseError::PlanInvariant(format!(
                "copy: wrote {} rows but the files hold {written}",
                self.rows
            )));
        }
        Ok(Written {
            files,
            keys: self.keys,
            rows: self.rows,
        })
    }
}

/// The position a copy batch was taken at: one past its rows' `_lsn`.
pub(super) fn copy_point(batch: &RecordBatch) -> Result<u64> {
    let lsn = batch
        .column_by_name(LSN_COLUMN)
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Int64Type>())
        .ok_or(LakehouseError::MissingColumn(LSN_COLUMN))?;
    if lsn.is_empty() || lsn.null_count() > 0 {
        return Err(LakehouseError::PlanInvariant(
            "a copy batch without positions".into(),
        ));
    }
    Ok((lsn.value(0) + 1) as u64)
}
