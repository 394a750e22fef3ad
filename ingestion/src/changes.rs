//! Per-table buffers that turn decoded changes into change-log record batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::pgoutput::Cell;
use crate::source::SourceTable;
use crate::value::ColumnBuilder;
use crate::{IngestError, Result};

/// The metadata every change row carries.
#[derive(Debug, Clone, Copy)]
pub struct ChangeMeta {
    /// Commit LSN of the source transaction.
    pub lsn: i64,
    /// Source transaction id (None for the initial copy).
    pub txid: Option<i64>,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_ts: i64,
    /// Order of the change within its transaction.
    pub seq: i64,
}

/// Kind of change, as written to `_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A new row.
    Insert,
    /// A new version of a row.
    Update,
    /// A removed row (key columns, or the whole old row under REPLICA IDENTITY FULL).
    Delete,
    /// The table was emptied.
    Truncate,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// Accumulates change rows of one table in its change-log layout.
pub struct ChangeBuffer {
    schema: SchemaRef,
    table: String,
    column_names: Vec<String>,
    cols: Vec<ColumnBuilder>,
    op: StringBuilder,
    lsn: Int64Builder,
    txid: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    seq: Int64Builder,
    unchanged: ListBuilder<StringBuilder>,
    rows: usize,
}

impl ChangeBuffer {
    /// A buffer producing batches with `schema` (the table's Arrow change-log schema).
    pub fn new(table: &SourceTable, schema: SchemaRef) -> Self {
        let cols = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| ColumnBuilder::new(&c.kind, schema.field(i).data_type()))
            .collect();
        let n = table.columns.len();
        let unchanged_field = match schema.field(n + 5).data_type() {
            DataType::List(f) => f.clone(),
            _ => Arc::new(arrow::datatypes::Field::new(
                "element",
                DataType::Utf8,
                false,
            )),
        };
        Self {
            table: table.qualified(),
            column_names: table.columns.iter().map(|c| c.name.clone()).collect(),
            cols,
            op: StringBuilder::new(),
            lsn: Int64Builder::new(),
            txid: Int64Builder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("+00:00"),
            seq: Int64Builder::new(),
            unchanged: ListBuilder::new(StringBuilder::new()).with_field(unchanged_field),
            rows: 0,
            schema,
        }
    }

    /// Rows buffered since the last `finish`.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// The change-log schema of the batches this buffer produces.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one change whose source columns come as pgoutput cells.
    pub fn push_cells(&mut self, op: Op, cells: &[Cell<'_>], meta: ChangeMeta) -> Result<()> {
        if cells.len() != self.cols.len() {
            return Err(IngestError::Protocol(format!(
                "{}: change has {} columns, table has {}",
                self.table,
                cells.len(),
                self.cols.len()
            )));
        }
        let mut any_unchanged = false;
        for (i, cell) in cells.iter().enumerate() {
            match cell {
                Cell::Null => self.cols[i].append_null(),
                Cell::Unchanged => {
                    self.cols[i].append_null();
                    self.unchanged.values().append_value(&self.column_names[i]);
                    any_unchanged = true;
                }
                Cell::Text(v) => self.append_text(i, v)?,
            }
        }
        self.unchanged.append(any_unchanged);
        self.push_meta(op, meta);
        Ok(())
    }

    /// Appends one row of a binary COPY: field `i` is `data[a..b]` for `spans[i] ==
    /// Some((a, b))` (None = NULL), in binary form where `binary[i]`, else as text.
    pub fn push_copy_row(
        &mut self,
        data: &[u8],
        spans: &[Option<(usize, usize)>],
        binary: &[bool],
        meta: ChangeMeta,
    ) -> Result<()> {
        if spans.len() != self.cols.len() || binary.len() != self.cols.len() {
            return Err(IngestError::Protocol(format!(
                "{}: copy row has {} fields, table has {}",
                self.table,
                spans.len(),
                self.cols.len()
            )));
        }
        for (i, span) in spans.iter().enumerate() {
            match *span {
                None => self.cols[i].append_null(),
                Some((a, b)) if binary[i] => {
                    self.cols[i].append_binary(&data[a..b]).map_err(|message| {
                        IngestError::BadValue {
                            table: self.table.clone(),
                            column: self.column_names[i].clone(),
                            message,
                        }
                    })?
                }
                Some((a, b)) => self.append_text(i, &data[a..b])?,
            }
        }
        self.unchanged.append(false);
        self.push_meta(Op::Insert, meta);
        Ok(())
    }

    /// Parses one text value into column `i`, naming table and column on failure.
    fn append_text(&mut self, i: usize, v: &[u8]) -> Result<()> {
        self.cols[i]
            .append_text(v)
            .map_err(|message| IngestError::BadValue {
                table: self.table.clone(),
                column: self.column_names[i].clone(),
                message,
            })
    }

    /// Appends a TRUNCATE marker row (all source columns null).
    pub fn push_truncate(&mut self, meta: ChangeMeta) {
        for c in &mut self.cols {
            c.append_null();
        }
        self.unchanged.append(false);
        self.push_meta(Op::Truncate, meta);
    }

    fn push_meta(&mut self, op: Op, meta: ChangeMeta) {
        self.op.append_value(op.as_str());
        self.lsn.append_value(meta.lsn);
        self.txid.append_option(meta.txid);
        self.ts.append_value(meta.commit_ts);
        self.seq.append_value(meta.seq);
        self.rows += 1;
    }

    /// Takes the buffered rows as a record batch.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = self.cols.iter_mut().map(|c| c.finish()).collect();
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.lsn.finish()));
        arrays.push(Arc::new(self.txid.finish()));
        arrays.push(Arc::new(self.ts.finish()));
        arrays.push(Arc::new(self.seq.finish()));
        arrays.push(Arc::new(self.unchanged.finish()));
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| IngestError::Protocol(format!("{}: {e}", self.table)))
    }
}
