//! Bronze: the append-only change log of every source table, as Iceberg tables.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use catalog::{Catalog, NamespaceIdent, TableIdent};
use iceberg::TableCreation;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{Transform, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;

use crate::schema::COMMIT_TS_COLUMN;
use crate::sink::{ChangeSink, SOURCE_LSN_PROPERTY, TableProgress};
use crate::{ChangeLogSchema, LakehouseError, Result};

/// Namespace of the change-log tables.
pub const BRONZE_NAMESPACE: &str = "bronze";
/// Table property naming the source table (`schema.table`).
pub const SOURCE_TABLE_PROPERTY: &str = "bitvelocity.source-table";
/// Table property listing the key columns (comma separated) used to replay the log.
pub const KEY_COLUMNS_PROPERTY: &str = "bitvelocity.key-columns";

type Writer = FanoutWriter<
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>,
>;

struct BronzeTable {
    ident: TableIdent,
    table: Table,
    splitter: RecordBatchPartitionSplitter,
    writer: Option<Writer>,
    rows: u64,
}

/// The Iceberg change-log sink: one `bronze.<table>` per source table, partitioned by day of `_commit_ts`.
pub struct BronzeSink {
    catalog: Arc<dyn Catalog>,
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
    /// A sink writing into `catalog` (namespace `bronze`, created if missing).
    pub async fn new(catalog: Arc<dyn Catalog>) -> Result<Self> {
        let namespace = catalog::ensure_namespace(catalog.as_ref(), BRONZE_NAMESPACE).await?;
        Ok(Self {
            catalog,
            namespace,
            tables: Vec::new(),
        })
    }

    /// Loads (checking its layout) or creates the table for `schema`. Takes no `self`:
    /// the sink holds Parquet writers that are `Send` but not `Sync`.
    async fn open_table(
        catalog: &dyn Catalog,
        namespace: &NamespaceIdent,
        schema: &ChangeLogSchema,
    ) -> Result<(Table, TableProgress)> {
        let name = schema.table_name();
        let ident = TableIdent::new(namespace.clone(), name.clone());
        let err = LakehouseError::iceberg(&ident);
        let table = if catalog
            .table_exists(&ident)
            .await
            .map_err(LakehouseError::iceberg(&ident))?
        {
            let table = catalog.load_table(&ident).await.map_err(err)?;
            schema.check_compatible(table.metadata().current_schema())?;
            table
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
                .schema(iceberg_schema)
                .partition_spec(spec)
                .properties([
                    (SOURCE_TABLE_PROPERTY.to_string(), schema.qualified_source()),
                    (KEY_COLUMNS_PROPERTY.to_string(), schema.key.join(",")),
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

    fn new_writer(table: &Table) -> Result<Writer> {
        Ok(FanoutWriter::new(crate::files::data_writer(
            table,
            256 * 1024 * 1024,
            "",
        )?))
    }

    async fn commit_table(&mut self, idx: usize, lsn: u64) -> Result<()> {
        let catalog = self.catalog.clone();
        let t = &mut self.tables[idx];
        let files = match t.writer.take() {
            Some(w) => w.close().await.map_err(LakehouseError::iceberg(&t.ident))?,
            None => Vec::new(),
        };
        crate::crash::point("bronze.after_files_closed");
        let props = HashMap::from([
            (SOURCE_LSN_PROPERTY.to_string(), lsn.to_string()),
            ("bitvelocity.rows".to_string(), t.rows.to_string()),
        ]);
        let tx = Transaction::new(&t.table);
        let action = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(props);
        let tx = action
            .apply(tx)
            .map_err(LakehouseError::iceberg(&t.ident))?;
        crate::crash::point("bronze.before_catalog_commit");
        let table = tx
            .commit(catalog.as_ref())
            .await
            .map_err(LakehouseError::iceberg(&t.ident))?;
        crate::crash::point("bronze.after_catalog_commit");
        tracing::debug!(table = %t.ident, rows = t.rows, lsn, "bronze commit");
        t.table = table;
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
        for schema in tables {
            let (table, progress) =
                Self::open_table(self.catalog.as_ref(), &self.namespace, schema).await?;
            let ident = table.identifier().clone();
            let meta = table.metadata();
            let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
                meta.current_schema().clone(),
                meta.default_partition_spec().clone(),
            )
            .map_err(LakehouseError::iceberg(&ident))?;
            self.tables.push(BronzeTable {
                ident,
                table,
                splitter,
                writer: None,
                rows: 0,
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
            t.writer = Some(Self::new_writer(&t.table)?);
        }
        let writer = t
            .writer
            .as_mut()
            .ok_or(LakehouseError::UnknownTable(table))?;
        t.rows += batch.num_rows() as u64;
        for (key, part) in t
            .splitter
            .split(&batch)
            .map_err(LakehouseError::iceberg(&t.ident))?
        {
            writer
                .write(key, part)
                .await
                .map_err(LakehouseError::iceberg(&t.ident))?;
        }
        crate::crash::point("bronze.write");
        Ok(())
    }

    async fn commit(&mut self, lsn: u64, mark: &[usize]) -> Result<()> {
        for idx in 0..self.tables.len() {
            if self.tables[idx].writer.is_some() || mark.contains(&idx) {
                self.commit_table(idx, lsn).await?;
                crate::crash::point("bronze.between_tables");
            }
        }
        Ok(())
    }
}
