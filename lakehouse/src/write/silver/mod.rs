//! Silver: the current state of every source table, kept by row deltas (ADR 0005).
//!
//! Each commit folds a run of change-log rows into one snapshot: surviving new row
//! versions go to a new data file, the rows they replace (found through the
//! [`PkIndex`]) get position deletes, a TRUNCATE drops every file. Values PostgreSQL did
//! not send (unchanged TOAST) are carried from the previous version, read back from its
//! data file when it is already committed. The snapshot records the source position
//! like bronze does, so the exactly-once protocol (ADR 0002) covers silver unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, new_null_array};
use arrow::compute::{concat_batches, interleave};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use catalog::commit::{CommitPath, RowDelta};
use catalog::{Catalog, NamespaceIdent, TableIdent};
use iceberg::TableCreation;
use iceberg::spec::{DataFile, Schema, Struct};
use iceberg::table::Table;
use iceberg::writer::IcebergWriterBuilder;

use crate::bronze::{KEY_COLUMNS_PROPERTY, SOURCE_TABLE_PROPERTY, read_progress};
use crate::files::{conform, read_projected};
use crate::pk_index::{Loc, PkIndex, key_converter, loc};
use crate::schema::{META_COLUMNS, OP_COLUMN, UNCHANGED_COLUMN};
use crate::sink::{ChangeSink, CommitAt, TableProgress, interrupted_copy};
use crate::{ChangeLogSchema, LakehouseError, Result};

mod commit;
mod copy;
use commit::{checkpoint, lost_rows};
mod pending;
mod plan;
use copy::{EagerCopy, Written, copy_point};
use pending::Pending;
use plan::{apply_to_index, plan, write_new_rows};

pub use crate::layout::SILVER_NAMESPACE;

/// Rows per output batch when assembling new row versions.
const OUTPUT_BATCH_ROWS: usize = 64 * 1024;

struct SilverTable {
    ident: TableIdent,
    table: Table,
    /// The Iceberg schema rows are written with: the table's, or the one the next commit installs.
    schema: iceberg::spec::SchemaRef,
    /// A schema change (and key) the next commit installs.
    evolution: Option<Vec<String>>,
    /// Arrow form of `schema` (the source columns, with field ids).
    arrow: SchemaRef,
    /// Key column names.
    key: Vec<String>,
    key_cols: Vec<usize>,
    key_schema: SchemaRef,
    /// Keyed by every column (no primary key): equal rows may repeat.
    multi: bool,
    index: PkIndex,
    /// The index was built for another key layout and is rebuilt before the next plan.
    index_stale: bool,
    /// Every column name the table has had, newest meaning last: resolves the names in
    /// `_unchanged_cols` of rows written before a rename.
    names: HashMap<String, i32>,
    /// The index changed since its last checkpoint.
    dirty: bool,
    /// When the index was last checkpointed (or loaded).
    checkpointed_at: std::time::Instant,
    /// Pending change rows: the silver columns (in `arrow`'s layout, conformed again as
    /// spilled ones are read back), then `_op` and `_unchanged_cols`.
    pending: Pending,
    /// The next commit first drops every file (the source table is being copied afresh).
    reset: bool,
    /// Copy rows already written to data files, committed with the next commit (`copy.rs`).
    eager: Option<EagerCopy>,
    /// A commit failed after taking the written copy rows: they are gone from this sink,
    /// which must be prepared again (the `ChangeSink` contract) before taking more.
    lost: bool,
}

impl SilverTable {
    /// Takes `schema` (with `key`) as the layout of the rows that follow.
    fn set_layout(&mut self, schema: iceberg::spec::SchemaRef, key: Vec<String>) -> Result<()> {
        let arrow: SchemaRef = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(&schema)
                .map_err(LakehouseError::iceberg(&self.ident))?,
        );
        let key_cols = key_positions(&self.ident, &arrow, &key)?;
        let key_schema = Arc::new(arrow.project(&key_cols)?);
        if key_schema.fields() != self.key_schema.fields() || key_cols != self.key_cols {
            self.index_stale = true;
        }
        for f in schema.as_struct().fields() {
            self.names.insert(f.name.clone(), f.id);
        }
        self.multi = key.len() == arrow.fields().len();
        let ident = &self.ident;
        self.pending
            .map_memory(|b| conform_input(ident, b, &arrow))?;
        self.schema = schema;
        self.arrow = arrow;
        self.key = key;
        self.key_cols = key_cols;
        self.key_schema = key_schema;
        Ok(())
    }

    /// Moves to the silver form of `bronze` (its source columns, same field ids) and `key`;
    /// committed with the next commit. Fails, leaving the table as it was, on a type change
    /// that is not a widening.
    fn adopt(&mut self, bronze: &Schema, key: &[String]) -> Result<()> {
        let name = self.ident.to_string();
        let from_bronze = silver_schema_of(&name, bronze)?;
        // Top-level field ids are bronze's; nested ids (list elements) were assigned by each
        // table's creation, so a column whose type did not change keeps silver's own.
        let mut fields = Vec::with_capacity(from_bronze.as_struct().fields().len());
        for f in from_bronze.as_struct().fields() {
            let mut field = f.as_ref().clone();
            if let Some(old) = self.schema.field_by_id(f.id) {
                let (was, now) = (
                    crate::schema::type_shape(&old.field_type),
                    crate::schema::type_shape(&f.field_type),
                );
                if was == now {
                    field.field_type = old.field_type.clone();
                } else if !crate::schema::widens(&old.field_type, &f.field_type) {
                    return Err(LakehouseError::IncompatibleSchema {
                        table: name,
                        change: format!("column {}: type {was} cannot become {now}", f.name),
                    });
                }
            }
            fields.push(Arc::new(field));
        }
        let target = Arc::new(
            Schema::builder()
                .with_schema_id(self.schema.schema_id() + 1)
                .with_fields(fields)
                .build()
                .map_err(LakehouseError::iceberg(&name))?,
        );
        if target.as_struct() == self.schema.as_struct() && key == self.key.as_slice() {
            return Ok(());
        }
        self.set_layout(target, key.to_vec())?;
        self.evolution = Some(key.to_vec());
        Ok(())
    }
}

/// Positions of the `key` columns in `arrow`.
fn key_positions(ident: &TableIdent, arrow: &SchemaRef, key: &[String]) -> Result<Vec<usize>> {
    key.iter()
        .map(|k| {
            arrow
                .fields()
                .iter()
                .position(|f| f.name() == k)
                .ok_or_else(|| LakehouseError::SchemaMismatch {
                    table: ident.to_string(),
                    message: format!("key column {k} is not a column"),
                })
        })
        .collect()
}

/// Whether `batch` (change-log layout) holds only rows of an initial copy: inserts without a
/// transaction id (every change of the stream carries one).
fn is_copy_batch(batch: &RecordBatch) -> bool {
    let schema = batch.schema();
    let (Ok(txid), Ok(op)) = (
        schema.index_of(crate::schema::TXID_COLUMN),
        schema.index_of(OP_COLUMN),
    ) else {
        return false;
    };
    if batch.column(txid).null_count() != batch.num_rows() {
        return false;
    }
    batch
        .column(op)
        .as_string_opt::<i32>()
        .is_some_and(|ops| ops.null_count() == 0 && ops.iter().all(|o| o == Some("insert")))
}

/// A change batch in silver's input layout: the columns of `arrow` (found by field id, else
/// by name; absent ones null, narrower ones widened), then `_op` and `_unchanged_cols`.
fn conform_input(
    ident: &TableIdent,
    batch: &RecordBatch,
    arrow: &SchemaRef,
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let by_id: HashMap<i32, usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| crate::files::field_id(f).map(|id| (id, i)))
        .collect();
    let mut fields: Vec<arrow::datatypes::FieldRef> = arrow.fields().iter().cloned().collect();
    let mut columns = Vec::with_capacity(fields.len() + 2);
    for f in arrow.fields() {
        let at = match crate::files::field_id(f) {
            Some(id) if !by_id.is_empty() => by_id.get(&id).copied(),
            _ => schema.index_of(f.name()).ok(),
        };
        columns.push(match at {
            Some(i) => conform(batch.column(i).clone(), f.data_type())?,
            None => new_null_array(f.data_type(), batch.num_rows()),
        });
    }
    for meta in [OP_COLUMN, UNCHANGED_COLUMN] {
        let i = schema
            .index_of(meta)
            .map_err(|_| LakehouseError::SchemaMismatch {
                table: ident.to_string(),
                message: format!("change batch without {meta}"),
            })?;
        fields.push(schema.fields()[i].clone());
        columns.push(batch.column(i).clone());
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// The current-state sink: one `silver.<table>` per source table, merge-on-read with position deletes.
pub struct SilverSink {
    catalog: Arc<dyn Catalog>,
    commits: CommitPath,
    namespace: NamespaceIdent,
    tables: Vec<SilverTable>,
    memory: crate::MemoryBudget,
    /// Pending batches that went to scratch files, over every commit so far.
    spilled: u64,
    /// Checkpoint a table's key index after a commit at most this often.
    checkpoint_every: std::time::Duration,
}

/// How often, at most, a silver table's key index is checkpointed while ingesting.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

impl std::fmt::Debug for SilverSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SilverSink")
            .field("tables", &self.tables.len())
            .finish()
    }
}

/// The Iceberg schema of a silver table: the change log's source columns, field ids kept.
pub fn silver_schema(source: &ChangeLogSchema) -> Result<Schema> {
    silver_schema_of(&source.qualified_source(), &source.iceberg_schema()?)
}

/// The silver form of a bronze schema: its source columns, field ids kept.
pub fn silver_schema_of(table: &str, bronze: &Schema) -> Result<Schema> {
    let fields: Vec<_> = bronze
        .as_struct()
        .fields()
        .iter()
        .filter(|f| !META_COLUMNS.contains(&f.name.as_str()))
        .cloned()
        .collect();
    Schema::builder()
        .with_schema_id(bronze.schema_id())
        .with_fields(fields)
        .build()
        .map_err(LakehouseError::iceberg(&table))
}

impl SilverSink {
    /// A sink writing into `catalog` (namespace `silver`, created if missing), committing through `commits`.
    pub async fn new(catalog: Arc<dyn Catalog>, commits: CommitPath) -> Result<Self> {
        let namespace = catalog::ensure_namespace(catalog.as_ref(), SILVER_NAMESPACE).await?;
        Ok(Self {
            catalog,
            commits,
            namespace,
            tables: Vec::new(),
            memory: crate::MemoryBudget::default(),
            spilled: 0,
            checkpoint_every: CHECKPOINT_EVERY,
        })
    }

    /// Checkpoints each key index after a commit at most every `every` (tests use zero).
    pub fn set_checkpoint_every(&mut self, every: std::time::Duration) {
        self.checkpoint_every = every;
    }

    /// Keeps each table's pending change rows within `memory` (beyond it they spill).
    pub fn set_memory(&mut self, memory: crate::MemoryBudget) {
        self.memory = memory;
    }

    /// Makes the next commit of table `idx` start from an empty table (its source is copied again).
    pub fn reset(&mut self, idx: usize) -> Result<()> {
        self.tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?
            .reset = true;
        Ok(())
    }

    /// Marks table `idx` as an unfinished copy (no position): it starts over with the next
    /// copy, whatever bronze says (see [`crate::MedallionSink`]'s `restart_copy`).
    pub async fn restart_copy(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        t.table =
            crate::sink::mark_copy_restart(self.catalog.as_ref(), &self.commits, t.table.clone())
                .await?;
        t.reset = true;
        Ok(())
    }

    /// Reloads table `idx` after another writer (maintenance) committed, bringing its index
    /// forward across what it changed.
    pub async fn reload(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        let described = t.table.metadata().current_snapshot_id();
        t.table = self
            .catalog
            .load_table(&t.ident)
            .await
            .map_err(LakehouseError::iceberg(&t.ident))?;
        let index = std::mem::take(&mut t.index);
        t.index = match (described, t.index_stale) {
            (_, true) => index, // rebuilt for the new key at the next commit
            (Some(from), false) => index.advance(&t.table, &t.key_schema, from).await?,
            (None, false) => PkIndex::open(&t.table, &t.key_schema).await?,
        };
        Ok(())
    }

    /// The catalog name of table `idx`.
    pub fn ident(&self, idx: usize) -> Option<&TableIdent> {
        self.tables.get(idx).map(|t| &t.ident)
    }

    /// Pending batches spilled to scratch files over every commit so far (large transactions).
    pub fn spilled_batches(&self) -> u64 {
        self.spilled
    }

    /// Whether table `idx`'s index was loaded from its checkpoint at the last (re)open.
    pub fn index_from_checkpoint(&self, idx: usize) -> Option<bool> {
        self.tables.get(idx).map(|t| t.index.from_checkpoint())
    }

    /// Live rows of table `idx` according to its primary-key index.
    pub fn indexed_rows(&self, idx: usize) -> Option<usize> {
        self.tables.get(idx).map(|t| t.index.len())
    }

    /// Checkpoints every index that changed since its last checkpoint (at a clean stop).
    pub async fn checkpoint_indexes(&mut self) -> Result<()> {
        for t in self.tables.iter_mut().filter(|t| t.dirty) {
            checkpoint(t).await?;
        }
        Ok(())
    }

    /// Moves table `idx` to the silver form of `bronze` with `key`, committed with its next commit.
    /// Call [`SilverSink::settle_copy`] first: written copy rows keep the layout they were
    /// written in.
    pub fn adopt(&mut self, idx: usize, bronze: &Schema, key: &[String]) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        if t.eager.is_some() {
            return Err(LakehouseError::PlanInvariant(format!(
                "{}: layout change over written copy rows",
                t.ident
            )));
        }
        t.adopt(bronze, key)
    }

    /// Commits table `idx`'s written copy rows as a positionless piece, if it has any, so a
    /// layout change applies to the rows after them only.
    pub async fn settle_copy(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        if let Some(point) = t.eager.as_ref().map(|e| e.point) {
            self.commit_table(idx, CommitAt::CopyPiece(point)).await?;
        }
        Ok(())
    }

    /// Drops what table `idx` buffered since its last commit, including a pending schema change.
    pub fn discard(&mut self, idx: usize) -> Result<()> {
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        t.pending.clear();
        // Its files are never committed: left to orphan removal, as any abandoned write.
        t.eager = None;
        if t.evolution.take().is_some() {
            let key = stored_key(&t.table).unwrap_or_else(|| t.key.clone());
            t.set_layout(t.table.metadata().current_schema().clone(), key)?;
        }
        Ok(())
    }

    async fn open_table(&self, schema: &ChangeLogSchema, name: String) -> Result<Table> {
        let ident = TableIdent::new(self.namespace.clone(), name);
        let wanted = silver_schema(schema)?;
        let catalog = self.catalog.as_ref();
        if catalog
            .table_exists(&ident)
            .await
            .map_err(LakehouseError::iceberg(&ident))?
        {
            // An existing table keeps its stored layout; `adopt` moves it on.
            return catalog
                .load_table(&ident)
                .await
                .map_err(LakehouseError::iceberg(&ident));
        }
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .schema(wanted)
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
                ("write.delete.mode".to_string(), "merge-on-read".to_string()),
                ("write.update.mode".to_string(), "merge-on-read".to_string()),
            ])
            .build();
        tracing::info!(table = %ident, "creating silver table");
        catalog
            .create_table(&self.namespace, creation)
            .await
            .map_err(LakehouseError::iceberg(&ident))
    }
}

/// The key index of silver table `table` as an ingester would hold it (loaded from its
/// checkpoint, else rebuilt): for measuring its memory.
pub async fn index_of(table: &Table) -> Result<PkIndex> {
    let ident = table.identifier().clone();
    let arrow: SchemaRef = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
            .map_err(LakehouseError::iceberg(&ident))?,
    );
    let key = stored_key(table).ok_or_else(|| LakehouseError::SchemaMismatch {
        table: ident.to_string(),
        message: "no key columns recorded".into(),
    })?;
    let key_cols = key_positions(&ident, &arrow, &key)?;
    PkIndex::open(table, &Arc::new(arrow.project(&key_cols)?)).await
}

/// The key columns recorded on `table`, if any.
fn stored_key(table: &Table) -> Option<Vec<String>> {
    table
        .metadata()
        .properties()
        .get(KEY_COLUMNS_PROPERTY)
        .filter(|k| !k.is_empty())
        .map(|k| k.split(',').map(str::to_string).collect())
}

#[async_trait]
impl ChangeSink for SilverSink {
    async fn prepare(&mut self, tables: &[ChangeLogSchema]) -> Result<Vec<TableProgress>> {
        self.tables.clear();
        let mut out = Vec::with_capacity(tables.len());
        // Bronze names the tables (it records their sources); silver uses the same names.
        let names = crate::naming::resolve(self.catalog.as_ref(), tables).await?;
        for (schema, name) in tables.iter().zip(names) {
            let table = self.open_table(schema, name).await?;
            let ident = table.identifier().clone();
            let current = table.metadata().current_schema().clone();
            let arrow: SchemaRef = Arc::new(
                iceberg::arrow::schema_to_arrow_schema(&current)
                    .map_err(LakehouseError::iceberg(&ident))?,
            );
            let key = stored_key(&table).unwrap_or_else(|| schema.key.clone());
            let key_cols = key_positions(&ident, &arrow, &key)?;
            let key_schema = Arc::new(arrow.project(&key_cols)?);
            let index = PkIndex::open(&table, &key_schema).await?;
            let mut schemas: Vec<_> = table.metadata().schemas_iter().cloned().collect();
            schemas.sort_by_key(|s| s.schema_id());
            schemas.push(current.clone());
            let mut names = HashMap::new();
            for s in &schemas {
                for f in s.as_struct().fields() {
                    names.insert(f.name.clone(), f.id);
                }
            }
            out.push(read_progress(&table)?);
            // A copy that never finished starts over: its first commit replaces every file.
            let reset = interrupted_copy(&table);
            self.tables.push(SilverTable {
                ident,
                table,
                schema: current,
                evolution: None,
                multi: key.len() == arrow.fields().len(),
                arrow,
                key,
                key_cols,
                key_schema,
                index,
                index_stale: false,
                dirty: false,
                checkpointed_at: std::time::Instant::now(),
                names,
                pending: Pending::default(),
                reset,
                eager: None,
                lost: false,
            });
        }
        Ok(out)
    }

    async fn write(&mut self, table: usize, batch: RecordBatch) -> Result<()> {
        // One budget for every table's pending rows: what the others hold in memory counts.
        let others: usize = self
            .tables
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != table)
            .map(|(_, t)| t.pending.memory())
            .sum();
        let budget = self.memory.silver_pending_bytes().saturating_sub(others);
        let t = self
            .tables
            .get_mut(table)
            .ok_or(LakehouseError::UnknownTable(table))?;
        if t.lost {
            return Err(lost_rows(&t.ident));
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let point = if is_copy_batch(&batch) {
            Some(copy_point(&batch)?)
        } else {
            None
        };
        if let Some(p) = t.eager.as_ref().map(|e| e.point) {
            match point {
                Some(q) if q != p => {
                    // Another copy of the table over this one's rows would hold every key
                    // twice: a new copy starts only after this one is committed or stopped.
                    return Err(LakehouseError::PlanInvariant(format!(
                        "{}: rows of a copy at {q} while the copy at {p} is not committed",
                        t.ident
                    )));
                }
                Some(_) => {}
                // Changes follow the copy's rows: its written rows go first.
                None => self.commit_table(table, CommitAt::CopyPiece(p)).await?,
            }
        }
        let t = self
            .tables
            .get_mut(table)
            .ok_or(LakehouseError::UnknownTable(table))?;
        let input = conform_input(&t.ident, &batch, &t.arrow)?;
        match point {
            // A copy's rows are written as they come, unless changes wait before them.
            Some(point) if t.pending.is_empty() => {
                let mut eager = match t.eager.take() {
                    Some(e) => e,
                    None => EagerCopy::start(t, point).await?,
                };
                let written = eager.write(t, input).await;
                t.eager = Some(eager);
                written
            }
            _ => t.pending.push(input, budget),
        }
    }

    async fn evolve(&mut self, table: usize, schema: &ChangeLogSchema) -> Result<SchemaRef> {
        self.settle_copy(table).await?;
        let t = self
            .tables
            .get_mut(table)
            .ok_or(LakehouseError::UnknownTable(table))?;
        // Silver alone keeps no source column ids: columns are matched by name.
        let bronze_like = crate::schema::evolve_schema(
            &t.ident.to_string(),
            &t.schema,
            t.table
                .metadata()
                .last_column_id()
                .max(t.schema.highest_field_id()),
            &HashMap::new(),
            schema,
        )?;
        if let Some(e) = bronze_like {
            t.adopt(&e.schema, &schema.key)?;
        }
        // Batches carry the change-log metadata after the silver columns.
        let meta = schema.arrow_schema()?;
        let mut fields: Vec<_> = t.arrow.fields().iter().cloned().collect();
        fields.extend(meta.fields().iter().skip(schema.columns.len()).cloned());
        Ok(Arc::new(arrow::datatypes::Schema::new(fields)))
    }

    async fn stop(&mut self, table: usize) -> Result<()> {
        self.discard(table)
    }

    async fn close(&mut self) -> Result<()> {
        self.checkpoint_indexes().await
    }

    async fn commit_copy_piece(&mut self, table: usize, point: u64) -> Result<()> {
        let t = self
            .tables
            .get(table)
            .ok_or(LakehouseError::UnknownTable(table))?;
        if !t.pending.is_empty() || t.eager.is_some() {
            self.commit_table(table, CommitAt::CopyPiece(point)).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, lsn: u64, mark: &[usize]) -> Result<()> {
        for idx in 0..self.tables.len() {
            let t = &self.tables[idx];
            // A pending schema change alone waits for rows: committing it would move the
            // table's source position past bronze's.
            // A table being copied afresh (`reset`) commits with its copy: its rows or its
            // mark, never an empty positioned snapshot while bronze has no position yet.
            if !t.pending.is_empty() || t.eager.is_some() || mark.contains(&idx) {
                self.commit_table(idx, CommitAt::Source(lsn)).await?;
                crate::crash::point("silver.between_tables");
            }
        }
        Ok(())
    }
}
