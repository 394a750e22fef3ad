//! Reading an Iceberg table with every core: file scan tasks split by row-group byte ranges.
//!
//! iceberg-datafusion 0.10 scans a table as one DataFusion partition, so a compacted table
//! (a few large files) is decoded on one core. This provider plans the same scan (snapshot,
//! projection, pushed-down predicate, delete files) with iceberg's planner, splits each
//! large file into byte ranges that iceberg's reader maps to whole row groups (a row group
//! belongs to the range holding its midpoint), and spreads the pieces over
//! `target_partitions` partitions. Decoding stays iceberg's own (deletes, schema evolution).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use iceberg_datafusion::physical_plan::convert_filters_to_predicate;

/// Files smaller than this are read whole: splitting them would only add overhead.
const MIN_SPLIT_BYTES: u64 = 8 * 1024 * 1024;

fn df_err(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A table (at a snapshot, or at its current one) read in parallel partitions.
#[derive(Debug, Clone)]
pub struct ParallelTable {
    table: Table,
    snapshot_id: Option<i64>,
    schema: SchemaRef,
}

impl ParallelTable {
    /// `table` as of `snapshot_id` (its current snapshot when `None`), with that snapshot's schema.
    pub fn try_new(table: Table, snapshot_id: Option<i64>) -> iceberg::Result<Self> {
        let iceberg_schema = match snapshot_id {
            Some(id) => table
                .metadata()
                .snapshot_by_id(id)
                .ok_or_else(|| {
                    iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        format!("snapshot {id} not found in {}", table.identifier()),
                    )
                })?
                .schema(table.metadata())?,
            None => table.metadata().current_schema().clone(),
        };
        let schema = Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg_schema)?);
        Ok(Self {
            table,
            snapshot_id,
            schema,
        })
    }

    /// The table read (its identifier names it for authorization and logs).
    pub fn table(&self) -> &Table {
        &self.table
    }
}

#[async_trait]
impl TableProvider for ParallelTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let mut builder = match self.snapshot_id {
            Some(id) => self.table.scan().snapshot_id(id),
            None => self.table.scan(),
        };
        builder = match projection {
            Some(_) => builder.select(schema.fields().iter().map(|f| f.name().clone())),
            None => builder.select_all(),
        };
        if let Some(predicate) = convert_filters_to_predicate(filters) {
            builder = builder.with_filter(predicate);
        }
        let tasks: Vec<FileScanTask> = match builder.build().map_err(df_err)?.plan_files().await {
            Ok(stream) => stream.try_collect().await.map_err(df_err)?,
            Err(e) => return Err(df_err(e)),
        };
        let partitions = state.config().target_partitions().max(1);
        let groups = spread(tasks, partitions);
        Ok(Arc::new(ParallelScanExec::new(
            self.table.clone(),
            schema,
            groups,
            limit,
        )))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Predicates prune files and row groups; DataFusion still applies them to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// Splits large files into byte ranges and deals all pieces out to `partitions` groups,
/// largest first onto the lightest group.
fn spread(tasks: Vec<FileScanTask>, partitions: usize) -> Vec<Vec<FileScanTask>> {
    let total: u64 = tasks.iter().map(|t| t.length.max(1)).sum();
    let piece = (total / partitions as u64).max(MIN_SPLIT_BYTES);
    let mut pieces = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (start, length) = if t.start == 0 && t.length == 0 {
            (0, t.file_size_in_bytes)
        } else {
            (t.start, t.length)
        };
        let n = length.div_ceil(piece).max(1);
        if n == 1 {
            pieces.push(t);
            continue;
        }
        let step = length.div_ceil(n);
        let mut at = start;
        while at < start + length {
            let len = step.min(start + length - at);
            let mut p = t.clone();
            p.start = at;
            p.length = len;
            p.record_count = None;
            pieces.push(p);
            at += len;
        }
    }
    pieces.sort_by_key(|p| std::cmp::Reverse(p.length));
    let mut groups: Vec<(u64, Vec<FileScanTask>)> = vec![(0, Vec::new()); partitions];
    for p in pieces {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += p.length.max(1);
            g.1.push(p);
        }
    }
    groups
        .into_iter()
        .map(|(_, g)| g)
        .filter(|g| !g.is_empty())
        .collect()
}

/// Reads each partition's file pieces with iceberg's Arrow reader.
#[derive(Debug)]
struct ParallelScanExec {
    table: Table,
    schema: SchemaRef,
    groups: Vec<Vec<FileScanTask>>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl ParallelScanExec {
    fn new(
        table: Table,
        schema: SchemaRef,
        groups: Vec<Vec<FileScanTask>>,
        limit: Option<usize>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            table,
            schema,
            groups,
            limit,
            properties,
        }
    }
}

impl DisplayAs for ParallelScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ParallelScanExec: table={} pieces={}",
            self.table.identifier(),
            self.groups.iter().map(Vec::len).sum::<usize>()
        )
    }
}

impl ExecutionPlan for ParallelScanExec {
    fn name(&self) -> &str {
        "ParallelScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let tasks = self.groups.get(partition).cloned().unwrap_or_default();
        let reader = self
            .table
            .reader_builder()
            .with_data_file_concurrency_limit(1)
            .with_row_group_filtering_enabled(true)
            .build();
        let fut = async move {
            let input = futures::stream::iter(tasks.into_iter().map(Ok)).boxed();
            reader
                .read(input)
                .map(|r| r.stream().map_err(df_err))
                .map_err(df_err)
        };
        let stream = futures::stream::once(fut).try_flatten();
        let stream: std::pin::Pin<Box<dyn futures::Stream<Item = DFResult<_>> + Send>> =
            match self.limit {
                Some(limit) => {
                    let mut remaining = limit;
                    Box::pin(stream.try_filter_map(
                        move |batch: arrow::record_batch::RecordBatch| {
                            let out = if remaining == 0 {
                                None
                            } else if batch.num_rows() <= remaining {
                                remaining -= batch.num_rows();
                                Some(batch)
                            } else {
                                let b = batch.slice(0, remaining);
                                remaining = 0;
                                Some(b)
                            };
                            futures::future::ready(Ok(out))
                        },
                    ))
                }
                None => Box::pin(stream),
            };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
