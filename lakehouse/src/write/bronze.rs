//! Bronze: the append-only change log of every source table, as Iceberg tables.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use catalog::commit::{CommitPath, RowDelta};
use catalog::{Catalog, NamespaceIdent, TableIdent};
use iceberg::TableCreation;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFile, Transform, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;

use crate::files::DataWriterBuilder;
use crate::schema::{
    COMMIT_TS_COLUMN, Evolution, SOURCE_IDS_PROPERTY, evolve_schema, parse_source_ids,
    source_ids_of,
};
use crate::sink::{ChangeSink, CommitAt, SOURCE_LSN_PROPERTY, TableProgress, interrupted_copy};
use crate::table_files::spawned::SpawnedWriter;
use crate::{ChangeLogSchema, LakehouseError, Result};

pub use crate::layout::{BRONZE_NAMESPACE, KEY_COLUMNS_PROPERTY, SOURCE_TABLE_PROPERTY};

type Writer = SpawnedWriter;

struct BronzeTable {
    ident: TableIdent,
    table: Table,
    splitter: RecordBatchPartitionSplitter,
    writer: Option<Writer>,
    /// Files written under an older schema of this batch (before a schema change).
    closed: Vec<DataFile>,
    /// A schema change the next commit installs, with the key it implies.
    evolution: Option<(Evolution, Vec<String>)>,
    /// Highest field id ever assigned, counting uncommitted evolutions.
    last_column_id: i32,
    rows: u64,
    /// The table's newest commit is a piece of a copy that never finished: the next commit
    /// (the first of a fresh copy) replaces every file.
    restart: bool,
}

impl BronzeTable {
    /// The schema rows are written with now: the pending evolution's, else the table's.
    fn schema(&self) -> iceberg::spec::SchemaRef {
        match &self.evolution {
            Some((e, _)) => Arc::new(e.schema.clone()),
            None => self.table.metadata().current_schema().clone(),
        }
    }

    fn splitter_for(
        &self,
        schema: iceberg::spec::SchemaRef,
    ) -> Result<RecordBatchPartitionSplitter> {
        RecordBatchPartitionSplitter::try_new_with_computed_values(
            schema,
            self.table.metadata().default_partition_spec().clone(),
        )
        .map_err(LakehouseError::iceberg(&self.ident))
    }
}

/// Whether every row of `batch` falls in one partition of `table`, partitioned by day of
/// `_commit_ts` alone: a copy's rows share one commit time, a stream batch usually one day.
fn one_day(table: &Table, batch: &RecordBatch) -> bool {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    let meta = table.metadata();
    let spec = meta.default_partition_spec();
    let [field] = spec.fields() else {
        return false;
    };
    let by_day = field.transform == Transform::Day
        && meta
            .current_schema()
            .field_by_id(field.source_id)
            .is_some_and(|f| f.name == COMMIT_TS_COLUMN);
    let Some(ts) = batch
        .column_by_name(COMMIT_TS_COLUMN)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
    else {
        return false;
    };
    if !by_day || ts.is_empty() || ts.null_count() > 0 {
        return false;
    }
    const DAY: i64 = 86_400_000_000;
    let (Some(lo), Some(hi)) = (arrow::compute::min(ts), arrow::compute::max(ts)) else {
        return false;
    };
    lo.div_euclid(DAY) == hi.div_euclid(DAY)
}

/// The Iceberg change-log sink: one `bronze.<table>` per source table, partitioned by day of `_commit_ts`.
pub struct BronzeSink {
    catalog: Arc<dyn Catalog>,
    commits: CommitPath,
    namespace: NamespaceIdent,
    tables: Vec<BronzeTable>,
}

impl std::fmt::Debug for BronzeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BronzeSink")
            .field("tables", &self.tables.len())
            .finish()
    }
}

impl BronzeSink {
    /// A sink writing into `catalog` (namespace `bronze`, created if missing), committing through `commits`.
    pub async fn new(catalog: Arc<dyn Catalog>, commits: CommitPath) -> Result<Self> {
        let namespace = catalog::ensure_namespace(catalog.as_ref(), BRONZE_NAMESPACE).await?;
        Ok(Self {
            catalog,
            commits,
            namespace,
            tables: Vec::new(),
        })
    }

    /// Loads or creates the table for `schema`. An existing table keeps its stored layout:
    /// the capture moves it to the source's through [`ChangeSink::evolve`], at the point of
    /// the change stream where the source changed. Takes no `self`: the sink holds Parquet
    /// writers that are `Send` but not `Sync`.
    async fn open_table(
        catalog: &dyn Catalog,
        namespace: &NamespaceIdent,
        schema: &ChangeLogSchema,
        name: String,
    ) -> Result<(Table, TableProgress)> {
        let ident = TableIdent::new(namespace.clone(), name.clone());
        let err = LakehouseError::iceberg(&ident);
        let table = if catalog
            .table_exists(&ident)
            .await
            .map_err(LakehouseError::iceberg(&ident))?
        {
            catalog.load_table(&ident).await.map_err(err)?
        } else {
            let iceberg_schema = schema.iceberg_schema()?;
            let ts_field = iceberg_schema
                .field_by_name(COMMIT_TS_COLUMN)
                .map(|f| f.id)
                .ok_or_else(|| LakehouseError::SchemaMismatch {
                    table: name.clone(),
                    message: "no _commit_ts".into(),
                })?;
            let spec = UnboundPartitionSpec::builder()
                .add_partition_field(ts_field, "commit_day", Transform::Day)
                .map_err(LakehouseError::iceberg(&ident))?
                .build();
            let creation = TableCreation::builder()
                .name(name.clone())
                .schema(iceberg_schema.clone())
                .partition_spec(spec)
                .properties([
                    (SOURCE_TABLE_PROPERTY.to_string(), schema.qualified_source()),
                    (KEY_COLUMNS_PROPERTY.to_string(), schema.key.join(",")),
                    (
                        SOURCE_IDS_PROPERTY.to_string(),
                        source_ids_of(&iceberg_schema, schema),
                    ),
                    (
                        "write.parquet.compression-codec".to_string(),
                        "zstd".to_string(),
                    ),
                    // Metadata files older than this many versions become orphans (maintenance).
                    (
                        "write.metadata.previous-versions-max".to_string(),
                        "25".to_string(),
                    ),
                ])
                .build();
            tracing::info!(table = %ident, "creating bronze table");
            catalog
                .create_table(namespace, creation)
                .await
                .map_err(err)?
        };
        let progress = read_progress(&table)?;
        Ok((table, progress))
    }

    /// A writer of the table's partitioned files, encoding on a task of its own.
    fn new_writer(table: &Table, schema: iceberg::spec::SchemaRef) -> Result<Writer> {
        let files: FanoutWriter<DataWriterBuilder> = FanoutWriter::new(crate::files::data_writer(
            table,
            schema,
            256 * 1024 * 1024,
            "",
        )?);
        Ok(SpawnedWriter::partitioned(
            table.identifier().to_string(),
            files,
        ))
    }

    async fn commit_table(&mut self, idx: usize, at: CommitAt) -> Result<()> {
        let lsn = at.lsn();
        let catalog = self.catalog.clone();
        let commits = self.commits.clone();
        let t = &mut self.tables[idx];
        let mut files = std::mem::take(&mut t.closed);
        if let Some(w) = t.writer.take() {
            files.extend(w.close().await?);
        }
        crate::crash::point("bronze.after_files_closed");
        let properties = HashMap::from([
            at.property(),
            ("bitvelocity.rows".to_string(), t.rows.to_string()),
        ]);
        let (schema, table_properties) = match &t.evolution {
            Some((e, key)) => (
                Some(e.schema.clone()),
                HashMap::from([
                    (SOURCE_IDS_PROPERTY.to_string(), e.source_ids.clone()),
                    (KEY_COLUMNS_PROPERTY.to_string(), key.join(",")),
                ]),
            ),
            None => (None, HashMap::new()),
        };
        crate::crash::point("bronze.before_catalog_commit");
        let mut retry = catalog::Retry::commit_race();
        let mut io_retry = catalog::Retry::transient_io();
        let planned = read_progress(&t.table)?.source_lsn;
        let table = loop {
            let delta = RowDelta {
                data_files: files.clone(),
                properties: properties.clone(),
                schema: schema.clone(),
                table_properties: table_properties.clone(),
                remove_all: t.restart,
                ..RowDelta::default()
            };
            match commits
                .commit_row_delta(catalog.as_ref(), &t.table, delta)
                .await
            {
                Ok(table) => break table,
                // Lost a race: long patience. Another transient failure: a few tries.
                Err(e) if e.is_conflict() && retry.pause().await => {
                    // Appends never conflict with a rewrite: retry on the new base.
                    tracing::debug!(table = %t.ident, retries = retry.retries(), error = %e, "bronze commit lost a race; retrying");
                    t.table = reload_behind(catalog.as_ref(), &t.ident, lsn, planned).await?;
                }
                Err(e) if !e.is_conflict() && e.is_retryable() && io_retry.pause().await => {
                    tracing::warn!(table = %t.ident, retries = io_retry.retries(), error = %e, "bronze commit failed; retrying");
                    t.table = reload_behind(catalog.as_ref(), &t.ident, lsn, planned).await?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        crate::crash::point("bronze.after_catalog_commit");
        if let Some((e, _)) = t.evolution.take() {
            tracing::info!(table = %t.ident, changes = ?e.changes, "bronze schema evolved");
        }
        tracing::debug!(table = %t.ident, rows = t.rows, lsn, "bronze commit");
        t.table = table;
        t.rows = 0;
        t.restart = false;
        Ok(())
    }

    /// Marks table `idx` as an unfinished copy (no position), so the next `prepare` reports
    /// none and the copy's first commit replaces every file.
    pub async fn restart_copy(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        t.table =
            crate::sink::mark_copy_restart(self.catalog.as_ref(), &self.commits, t.table.clone())
                .await?;
        t.restart = true;
        Ok(())
    }

    /// The schema table `idx` holds now (including a change its next commit installs).
    pub fn schema(&self, idx: usize) -> Result<iceberg::spec::SchemaRef> {
        Ok(self
            .tables
            .get(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?
            .schema())
    }

    /// The key columns of table `idx` (the stored property, or a pending change's).
    pub fn key(&self, idx: usize) -> Result<Vec<String>> {
        let t = self
            .tables
            .get(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        Ok(match &t.evolution {
            Some((_, key)) => key.clone(),
            None => t
                .table
                .metadata()
                .properties()
                .get(KEY_COLUMNS_PROPERTY)
                .map(|k| k.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }

    /// Moves table `idx` to the source layout `source`; takes effect with the next commit.
    /// Returns the Arrow schema later batches must have. Leaves the table untouched when
    /// the change is one Iceberg cannot follow.
    pub async fn evolve_table(
        &mut self,
        idx: usize,
        source: &ChangeLogSchema,
    ) -> Result<(SchemaRef, iceberg::spec::SchemaRef)> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        let current = t.schema();
        let ids = match &t.evolution {
            Some((e, _)) => parse_source_ids(Some(&e.source_ids)),
            None => parse_source_ids(t.table.metadata().properties().get(SOURCE_IDS_PROPERTY)),
        };
        let evolution = evolve_schema(
            &t.ident.to_string(),
            &current,
            t.last_column_id,
            &ids,
            source,
        )?;
        let schema = match evolution {
            None => current,
            Some(e) => {
                let schema: iceberg::spec::SchemaRef = Arc::new(e.schema.clone());
                let splitter = t.splitter_for(schema.clone())?;
                // Rows already written keep their files (their columns are found by field id).
                if let Some(w) = t.writer.take() {
                    t.closed.extend(w.close().await?);
                }
                t.last_column_id = t.last_column_id.max(schema.highest_field_id());
                tracing::info!(table = %t.ident, changes = ?e.changes, "source schema changed");
                t.splitter = splitter;
                t.evolution = Some((e, source.key.clone()));
                schema
            }
        };
        let arrow = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(&schema)
                .map_err(LakehouseError::iceberg(&t.ident))?,
        );
        Ok((arrow, schema))
    }

    /// Drops everything table `idx` buffered since its last commit (its capture stopped).
    pub async fn discard(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        let files = std::mem::take(&mut t.closed);
        // The open writer is dropped unclosed: it stops without finishing its files (never
        // committed, left to orphan removal), and a writer that failed cannot fail the stop.
        drop(t.writer.take());
        for f in files {
            if let Err(e) = t.table.file_io().delete(f.file_path()).await {
                tracing::debug!(path = f.file_path(), error = %e, "could not remove an uncommitted file");
            }
        }
        if t.evolution.take().is_some() {
            t.splitter = t.splitter_for(t.table.metadata().current_schema().clone())?;
        }
        t.rows = 0;
        Ok(())
    }
}

impl BronzeSink {
    /// Reloads table `idx` after another writer (maintenance) committed.
    pub async fn reload(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        t.table = self
            .catalog
            .load_table(&t.ident)
            .await
            .map_err(LakehouseError::iceberg(&t.ident))?;
        Ok(())
    }

    /// The catalog name of table `idx`.
    pub fn ident(&self, idx: usize) -> Option<&TableIdent> {
        self.tables.get(idx).map(|t| &t.ident)
    }
}

/// Reloads a table whose commit (of source position `lsn`) lost a race, failing unless the
/// table still records `planned`, the position the batch was planned on. The writers we race
/// (maintenance, property changes, expiry) never move it; one that did is a second ingester,
/// or an earlier attempt of ours whose outcome was in doubt and that landed after all, and
/// committing on top of either would write these changes twice.
pub(crate) async fn reload_behind(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    lsn: u64,
    planned: Option<u64>,
) -> Result<Table> {
    let table = catalog
        .load_table(ident)
        .await
        .map_err(LakehouseError::iceberg(ident))?;
    let theirs = read_progress(&table)?.source_lsn;
    if theirs != planned {
        return Err(LakehouseError::PositionMoved {
            table: ident.to_string(),
            planned,
            found: theirs,
            committing: lsn,
        });
    }
    Ok(table)
}

/// Reads the source position recorded by the table's current snapshot.
pub fn read_progress(table: &Table) -> Result<TableProgress> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(TableProgress::default());
    };
    match snapshot
        .summary()
        .additional_properties
        .get(SOURCE_LSN_PROPERTY)
    {
        None => Ok(TableProgress::default()),
        Some(v) => v
            .parse::<u64>()
            .map(|lsn| TableProgress {
                source_lsn: Some(lsn),
            })
            .map_err(|_| LakehouseError::BadProgress {
                table: table.identifier().to_string(),
                value: v.clone(),
            }),
    }
}

#[async_trait]
impl ChangeSink for BronzeSink {
    async fn prepare(&mut self, tables: &[ChangeLogSchema]) -> Result<Vec<TableProgress>> {
        let mut out = Vec::with_capacity(tables.len());
        self.tables.clear();
        let names = crate::naming::resolve(self.catalog.as_ref(), tables).await?;
        for (schema, name) in tables.iter().zip(names) {
            let (table, progress) =
                Self::open_table(self.catalog.as_ref(), &self.namespace, schema, name).await?;
            let ident = table.identifier().clone();
            let meta = table.metadata();
            let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
                meta.current_schema().clone(),
                meta.default_partition_spec().clone(),
            )
            .map_err(LakehouseError::iceberg(&ident))?;
            let last_column_id = meta.last_column_id();
            let restart = interrupted_copy(&table);
            if restart {
                tracing::warn!(table = %ident, "an earlier initial copy did not finish; copying the table again");
            }
            self.tables.push(BronzeTable {
                ident,
                table,
                splitter,
                writer: None,
                closed: Vec::new(),
                evolution: None,
                last_column_id,
                rows: 0,
                restart,
            });
            out.push(progress);
        }
        Ok(out)
    }

    async fn write(&mut self, table: usize, batch: RecordBatch) -> Result<()> {
        let t = self
            .tables
            .get_mut(table)
            .ok_or(LakehouseError::UnknownTable(table))?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if t.writer.is_none() {
            t.writer = Some(Self::new_writer(&t.table, t.schema())?);
        }
        let writer = t
            .writer
            .as_mut()
            .ok_or(LakehouseError::UnknownTable(table))?;
        t.rows += batch.num_rows() as u64;
        let parts = if one_day(&t.table, &batch) {
            // One partition: its key from the first row, not a conversion of every row.
            let key = t
                .splitter
                .split(&batch.slice(0, 1))
                .map_err(LakehouseError::iceberg(&t.ident))?
                .into_iter()
                .map(|(k, _)| k)
                .next();
            let key = key.ok_or_else(|| {
                LakehouseError::PlanInvariant(format!("{}: no partition for a batch", t.ident))
            })?;
            vec![(key, batch)]
        } else {
            t.splitter
                .split(&batch)
                .map_err(LakehouseError::iceberg(&t.ident))?
        };
        for (key, part) in parts {
            writer.write(Some(key), part).await?;
        }
        crate::crash::point("bronze.write");
        Ok(())
    }

    async fn evolve(&mut self, table: usize, schema: &ChangeLogSchema) -> Result<SchemaRef> {
        Ok(self.evolve_table(table, schema).await?.0)
    }

    async fn stop(&mut self, table: usize) -> Result<()> {
        self.discard(table).await
    }

    async fn commit_copy_piece(&mut self, table: usize, point: u64) -> Result<()> {
        let t = self
            .tables
            .get(table)
            .ok_or(LakehouseError::UnknownTable(table))?;
        if t.writer.is_some() || !t.closed.is_empty() {
            self.commit_table(table, CommitAt::CopyPiece(point)).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, lsn: u64, mark: &[usize]) -> Result<()> {
        for idx in 0..self.tables.len() {
            let t = &self.tables[idx];
            if t.writer.is_some() || !t.closed.is_empty() || mark.contains(&idx) {
                self.commit_table(idx, CommitAt::Source(lsn)).await?;
                crate::crash::point("bronze.between_tables");
            }
        }
        Ok(())
    }
}
