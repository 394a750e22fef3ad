//! Bronze and silver fed by one capture, with silver recoverable from bronze.
//!
//! Every batch is committed to bronze first, then to silver, each table's snapshot
//! recording the same source position. A crash between the two leaves silver behind
//! bronze; `prepare` then replays the missing tail of the bronze change log into silver
//! (a silver table that is missing altogether is rebuilt from the whole log), so both
//! stand at bronze's position before streaming resumes and the capture loop sees one
//! position per table, exactly as with bronze alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use catalog::Catalog;
use catalog::commit::CommitPath;
use futures::StreamExt;

use crate::layout::BRONZE_NAMESPACE;
use crate::maintenance::{MaintenanceOptions, maintain_table};
use crate::schema::{LSN_COLUMN, SEQ_COLUMN};
use crate::sink::{ChangeSink, CommitAt, TableProgress};
use crate::{BronzeSink, ChangeLogSchema, LakehouseError, Result, SilverSink};

/// The medallion sink: the bronze change log and the silver current state, in step.
pub struct MedallionSink {
    catalog: Arc<dyn Catalog>,
    commits: CommitPath,
    bronze: BronzeSink,
    silver: SilverSink,
    names: Vec<String>,
    auto: Option<AutoMaintenance>,
    /// The warehouse's leases: automatic orphan removal pauses while `bitvelocity maintain`
    /// holds the maintenance lease (its compaction's files are in flight).
    leases: Option<catalog::lease::Leases>,
    /// The warehouse's operator requests (`bitvelocity resync`).
    requests: Option<catalog::requests::Requests>,
    /// When each table's pending resync was asked (as last read), to clear only that one.
    resync_asked: HashMap<usize, i64>,
    /// Per table: written since the last commit, and commits since its last maintenance.
    written: Vec<bool>,
    since_maintenance: Vec<u32>,
    /// Per table: the source position of its newest snapshot (none before its first copy).
    position: Vec<Option<u64>>,
    /// Per table: the position up to which it is known to hold every change. A stream
    /// commit (empty `mark`) covers every table, written or not; a copy's commit only the
    /// tables it copied, so the others stay at their own positions meanwhile.
    complete: Vec<Option<u64>>,
    /// Per table: its capture stopped (an incompatible schema change); left out of the
    /// consistent position and of maintenance.
    stopped: Vec<bool>,
    memory: crate::MemoryBudget,
}

pub use crate::layout::{CONSISTENT_LSN_PROPERTY, STOPPED_TABLES_PROPERTY};

/// Maintenance the ingest loop runs by itself, between commits.
#[derive(Debug, Clone)]
pub struct AutoMaintenance {
    /// Maintain a table after this many commits that changed it.
    pub every_commits: u32,
    /// What maintenance does.
    pub options: MaintenanceOptions,
}

impl std::fmt::Debug for MedallionSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MedallionSink")
            .field("tables", &self.names)
            .finish()
    }
}

impl MedallionSink {
    /// Bronze and silver tables in `catalog`, silver committed through `commits`.
    pub async fn new(catalog: Arc<dyn Catalog>, commits: CommitPath) -> Result<Self> {
        Ok(Self {
            bronze: BronzeSink::new(catalog.clone(), commits.clone()).await?,
            silver: SilverSink::new(catalog.clone(), commits.clone()).await?,
            catalog,
            commits,
            names: Vec::new(),
            auto: None,
            leases: None,
            requests: None,
            resync_asked: HashMap::new(),
            written: Vec::new(),
            since_maintenance: Vec::new(),
            position: Vec::new(),
            complete: Vec::new(),
            stopped: Vec::new(),
            memory: crate::MemoryBudget::default(),
        })
    }

    /// Checkpoints silver's key indexes after a commit at most every `every` (default
    /// [`crate::silver::CHECKPOINT_EVERY`]), so a restart after a crash replays only the
    /// snapshots since.
    pub fn with_index_checkpoints_every(mut self, every: Duration) -> Self {
        self.silver.set_checkpoint_every(every);
        self
    }

    /// Keeps the sink's buffers within `memory` (catch-up pieces, silver's spilling).
    pub fn with_memory(mut self, memory: crate::MemoryBudget) -> Self {
        self.memory = memory;
        self.silver.set_memory(memory);
        self
    }

    /// Runs maintenance on a table's bronze and silver tables every so many commits.
    pub fn with_auto_maintenance(mut self, auto: AutoMaintenance) -> Self {
        self.auto = Some(auto);
        self
    }

    /// Consults the warehouse's leases before removing orphans (see [`Self::maintain`]).
    pub fn with_leases(mut self, leases: catalog::lease::Leases) -> Self {
        self.leases = Some(leases);
        self
    }

    /// Answers `bitvelocity resync` requests recorded in the catalog database.
    pub fn with_requests(mut self, requests: catalog::requests::Requests) -> Self {
        self.requests = Some(requests);
        self
    }

    /// Compacts, expires and sweeps both tables of `idx`, then picks up their new state.
    async fn maintain(&mut self, idx: usize, opts: &MaintenanceOptions) -> Result<()> {
        let mut opts = opts.clone();
        if let Some(leases) = &self.leases
            && leases
                .holder(catalog::lease::MAINTENANCE_LEASE)
                .await?
                .is_some_and(|h| h.is_live())
        {
            // Another process compacts now: files it has written but not yet committed look
            // like orphans. Leave orphans for a later round.
            opts.orphan_older_than = Duration::MAX;
        }
        let opts = &opts;
        for ident in [self.bronze.ident(idx), self.silver.ident(idx)]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
        {
            let report = maintain_table(self.catalog.as_ref(), &self.commits, &ident, opts).await?;
            tracing::info!(table = %ident, ?report, "automatic maintenance");
        }
        self.bronze.reload(idx).await?;
        self.silver.reload(idx).await
    }

    /// Records the stopped tables on the silver namespace, for consistent reads.
    fn publish_stopped(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let value = self
            .names
            .iter()
            .zip(&self.stopped)
            .filter(|(_, s)| **s)
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let catalog = self.catalog.clone();
        async move {
            let ns = catalog::NamespaceIdent::new(crate::silver::SILVER_NAMESPACE.to_string());
            catalog
                .update_namespace(
                    &ns,
                    std::collections::HashMap::from([(STOPPED_TABLES_PROPERTY.to_string(), value)]),
                )
                .await
                .map_err(LakehouseError::iceberg(&"namespace silver"))
        }
    }

    /// The silver half, for inspection.
    pub fn silver(&self) -> &SilverSink {
        &self.silver
    }

    /// Replays bronze rows of table `idx` from source position `from` into silver, up to `to`.
    async fn catch_up(&mut self, idx: usize, from: Option<u64>, to: u64) -> Result<()> {
        let name = self.names[idx].clone();
        tracing::info!(table = %name, from = ?from, to, "silver catching up from bronze");
        let ctx =
            crate::query::session_within(self.catalog.clone(), self.memory.query_bytes()).await?;
        let limit = self.memory.silver_pending_bytes();
        let sql = format!(
            "SELECT * FROM {}.{BRONZE_NAMESPACE}.\"{}\" WHERE {LSN_COLUMN} >= {} ORDER BY {LSN_COLUMN}, {SEQ_COLUMN}",
            catalog::CATALOG_NAME,
            name.replace('"', "\"\""),
            from.map(|l| l as i64).unwrap_or(i64::MIN),
        );
        let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
        let mut pending = 0usize;
        let mut last_lsn: Option<i64> = None;
        let mut replayed = 0u64;
        // Rebuilding from the whole log: its first rows are the initial copy (one position,
        // no transaction id), replayed in positionless pieces so memory stays bounded.
        let mut copy: Option<Option<i64>> = from.is_none().then_some(None);
        while let Some(batch) = stream.next().await {
            let mut batch = batch?;
            if let Some(copy_lsn) = copy.as_mut() {
                let n = copy_prefix(&name, &batch, copy_lsn)?;
                if n > 0 {
                    replayed += n as u64;
                    pending += share_of(&batch, n);
                    self.write_silver(idx, batch.slice(0, n), &mut last_lsn)
                        .await?;
                }
                if n < batch.num_rows() {
                    copy = None;
                    batch = batch.slice(n, batch.num_rows() - n);
                } else {
                    if pending >= limit
                        && let Some(l) = *copy_lsn
                    {
                        self.silver
                            .commit_table(idx, CommitAt::CopyPiece(l as u64 + 1))
                            .await?;
                        crate::crash::point("medallion.catch_up_piece");
                        pending = 0;
                    }
                    continue;
                }
            }
            while batch.num_rows() > 0 {
                // Commit only where the source position changes, so no source transaction
                // (nor the initial copy, which shares one position) is split across snapshots.
                let cut = if pending >= limit {
                    first_row_after(&batch, last_lsn)?
                } else {
                    None
                };
                match cut {
                    Some(at) => {
                        replayed += at as u64;
                        if at > 0 {
                            self.write_silver(idx, batch.slice(0, at), &mut last_lsn)
                                .await?;
                        }
                        let position = last_lsn.map(|l| l + 1).unwrap_or(0) as u64;
                        self.silver
                            .commit_table(idx, CommitAt::Source(position))
                            .await?;
                        crate::crash::point("medallion.catch_up_commit");
                        pending = 0;
                        batch = batch.slice(at, batch.num_rows() - at);
                    }
                    None => {
                        pending += share_of(&batch, batch.num_rows());
                        replayed += batch.num_rows() as u64;
                        self.write_silver(idx, batch, &mut last_lsn).await?;
                        break;
                    }
                }
            }
        }
        self.silver.commit_table(idx, CommitAt::Source(to)).await?;
        tracing::info!(table = %name, rows = replayed, at = to, "silver caught up");
        Ok(())
    }

    async fn write_silver(
        &mut self,
        idx: usize,
        batch: RecordBatch,
        last_lsn: &mut Option<i64>,
    ) -> Result<()> {
        let lsn = lsn_column(&batch)?;
        if let Some(&l) = lsn.last() {
            *last_lsn = Some(l);
        }
        self.silver.write(idx, batch).await
    }
}

/// The silver tables whose capture stopped, as the ingester last recorded them.
pub async fn stopped_tables(catalog: &dyn Catalog) -> Result<Vec<String>> {
    let ns = catalog::NamespaceIdent::new(crate::silver::SILVER_NAMESPACE.to_string());
    if !catalog
        .namespace_exists(&ns)
        .await
        .map_err(LakehouseError::iceberg(&"namespace silver"))?
    {
        return Ok(Vec::new());
    }
    let namespace = catalog
        .get_namespace(&ns)
        .await
        .map_err(LakehouseError::iceberg(&"namespace silver"))?;
    Ok(crate::layout::parse_stopped(namespace.properties()))
}

fn lsn_column(batch: &RecordBatch) -> Result<&[i64]> {
    let col = batch
        .column_by_name(LSN_COLUMN)
        .ok_or(LakehouseError::MissingColumn(LSN_COLUMN))?;
    Ok(col.as_primitive::<Int64Type>().values())
}

/// The memory of `rows` rows of `batch` (its share of the batch's buffers).
fn share_of(batch: &RecordBatch, rows: usize) -> usize {
    batch.get_array_memory_size() * rows / batch.num_rows().max(1)
}

/// How many leading rows of `batch` belong to the initial copy: no transaction id, and the
/// copy's position (`copy_lsn`, taken from the first such row).
fn copy_prefix(table: &str, batch: &RecordBatch, copy_lsn: &mut Option<i64>) -> Result<usize> {
    let lsn = lsn_column(batch)?;
    let txid = batch
        .column_by_name(crate::schema::TXID_COLUMN)
        .ok_or_else(|| LakehouseError::SchemaMismatch {
            table: format!("bronze.{table}"),
            message: format!("change batch without {}", crate::schema::TXID_COLUMN),
        })?;
    let mut n = 0;
    while n < batch.num_rows() && txid.is_null(n) && copy_lsn.is_none_or(|c| c == lsn[n]) {
        *copy_lsn = Some(lsn[n]);
        n += 1;
    }
    Ok(n)
}

/// The first row whose source position differs from `last` (None when all share it).
fn first_row_after(batch: &RecordBatch, last: Option<i64>) -> Result<Option<usize>> {
    let lsn = lsn_column(batch)?;
    Ok(match last {
        None => Some(0),
        Some(l) => lsn.iter().position(|&x| x != l),
    })
}

#[async_trait]
impl ChangeSink for MedallionSink {
    async fn prepare(&mut self, tables: &[ChangeLogSchema]) -> Result<Vec<TableProgress>> {
        self.names = crate::naming::resolve(self.catalog.as_ref(), tables).await?;
        self.written = vec![false; tables.len()];
        self.since_maintenance = vec![0; tables.len()];
        // Tables stopped by an earlier run stay out of consistent reads until they commit again.
        let listed = stopped_tables(self.catalog.as_ref()).await?;
        self.stopped = self.names.iter().map(|n| listed.contains(n)).collect();
        let bronze = self.bronze.prepare(tables).await?;
        let silver = self.silver.prepare(tables).await?;
        for (idx, (b, s)) in bronze.iter().zip(&silver).enumerate() {
            // Silver follows bronze's schema (a crash between their commits can leave it behind).
            let schema = self.bronze.schema(idx)?;
            let key = self.bronze.key(idx)?;
            if !key.is_empty() {
                self.silver.adopt(idx, &schema, &key)?;
            }
            match (b.source_lsn, s.source_lsn) {
                // Bronze starts over with a fresh copy: silver must start from it too.
                (None, Some(_)) => self.silver.reset(idx)?,
                (Some(b), Some(s)) if s > b => {
                    return Err(LakehouseError::SilverAhead {
                        table: self.names[idx].clone(),
                        silver: s,
                        bronze: b,
                    });
                }
                (Some(b), s) if s.is_none_or(|s| s < b) => self.catch_up(idx, s, b).await?,
                _ => {}
            }
        }
        self.position = bronze.iter().map(|b| b.source_lsn).collect();
        self.complete = self.position.clone();
        Ok(bronze)
    }

    async fn write(&mut self, table: usize, batch: RecordBatch) -> Result<()> {
        if let Some(w) = self.written.get_mut(table) {
            *w = true;
        }
        self.bronze.write(table, batch.clone()).await?;
        self.silver.write(table, batch).await
    }

    async fn evolve(&mut self, table: usize, schema: &ChangeLogSchema) -> Result<SchemaRef> {
        self.silver.settle_copy(table).await?;
        let (arrow, iceberg) = self.bronze.evolve_table(table, schema).await?;
        if let Err(e) = self.silver.adopt(table, &iceberg, &schema.key) {
            self.bronze.discard(table).await?;
            return Err(e);
        }
        Ok(arrow)
    }

    async fn close(&mut self) -> Result<()> {
        self.silver.checkpoint_indexes().await
    }

    async fn stop(&mut self, table: usize) -> Result<()> {
        self.bronze.discard(table).await?;
        self.silver.discard(table)?;
        if let Some(w) = self.written.get_mut(table) {
            *w = false;
        }
        if let Some(s) = self.stopped.get_mut(table) {
            *s = true;
        }
        self.publish_stopped().await
    }

    async fn resync_requested(&mut self) -> Result<Vec<usize>> {
        let Some(requests) = &self.requests else {
            return Ok(Vec::new());
        };
        let pending = requests.pending(catalog::requests::RESYNC).await?;
        let mut out = Vec::new();
        for (target, asked_at) in pending {
            match self.names.iter().position(|n| *n == target) {
                Some(i) => {
                    self.resync_asked.insert(i, asked_at);
                    out.push(i);
                }
                // Not one of this ingester's tables (another publication's): left pending.
                None => {
                    tracing::debug!(table = %target, "resync requested for a table this ingester does not capture")
                }
            }
        }
        Ok(out)
    }

    async fn restart_copy(&mut self, table: usize) -> Result<()> {
        // Silver first: once bronze holds the new copy, silver must never be caught up
        // from it on top of its old rows (a crash between bronze's and silver's commit of
        // the copy). Marked, silver starts over (replacing its files) whatever comes next.
        self.silver.restart_copy(table).await?;
        crate::crash::point("medallion.between_restart_marks");
        self.bronze.restart_copy(table).await
    }

    async fn resync_done(&mut self, table: usize) -> Result<()> {
        if let (Some(requests), Some(name), Some(asked_at)) = (
            &self.requests,
            self.names.get(table),
            self.resync_asked.remove(&table),
        ) {
            requests
                .done(catalog::requests::RESYNC, name, asked_at)
                .await?;
            tracing::info!(table = %name, "resync done");
        }
        Ok(())
    }

    async fn commit_copy_piece(&mut self, table: usize, point: u64) -> Result<()> {
        self.bronze.commit_copy_piece(table, point).await?;
        crate::crash::point("medallion.between_copy_pieces");
        self.silver.commit_copy_piece(table, point).await
    }

    async fn commit(&mut self, lsn: u64, mark: &[usize]) -> Result<()> {
        self.bronze.commit(lsn, mark).await?;
        crate::crash::point("medallion.between_bronze_and_silver");
        self.silver.commit(lsn, mark).await?;
        let changed: Vec<bool> = self.written.iter_mut().map(std::mem::take).collect();
        // A table stopped in an earlier run that commits again was resynced or got past its change.
        let revived: Vec<usize> = (0..changed.len())
            .filter(|&i| self.stopped[i] && (changed[i] || mark.contains(&i)))
            .collect();
        if !revived.is_empty() {
            for i in revived {
                self.stopped[i] = false;
            }
            self.publish_stopped().await?;
        }
        for (idx, &written) in changed.iter().enumerate() {
            if written || mark.contains(&idx) {
                self.position[idx] = Some(lsn);
                self.complete[idx] = Some(lsn);
            } else if mark.is_empty() {
                // A stream commit: this table had no change up to `lsn`.
                self.complete[idx] = self.complete[idx].map(|c| c.max(lsn));
            }
        }
        // `lsn` is a consistent position only if every table is complete up to it and none
        // holds anything past it (a table ahead, after a crash between tables' commits,
        // cannot be read as of `lsn`); stopped tables are left out.
        if (0..changed.len()).all(|i| {
            self.stopped[i]
                || (self.complete[i].is_some_and(|c| c >= lsn)
                    && self.position[i].is_some_and(|p| p <= lsn))
        }) {
            let ns = catalog::NamespaceIdent::new(crate::silver::SILVER_NAMESPACE.to_string());
            self.catalog
                .update_namespace(
                    &ns,
                    std::collections::HashMap::from([(
                        CONSISTENT_LSN_PROPERTY.to_string(),
                        lsn.to_string(),
                    )]),
                )
                .await
                .map_err(LakehouseError::iceberg(&"namespace silver"))?;
        }
        let Some(auto) = self.auto.clone() else {
            return Ok(());
        };
        for (idx, &changed) in changed.iter().enumerate() {
            if self.stopped[idx] {
                continue;
            }
            if changed {
                self.since_maintenance[idx] += 1;
            }
            if self.since_maintenance[idx] >= auto.every_commits.max(1) {
                self.since_maintenance[idx] = 0;
                self.maintain(idx, &auto.options).await?;
            }
        }
        Ok(())
    }
}
