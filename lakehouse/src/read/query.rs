//! SQL over the lakehouse with DataFusion.

use std::sync::Arc;

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use catalog::{CATALOG_NAME, Catalog, NamespaceIdent};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
    TableFunctionImpl, TableProvider,
};
use datafusion::common::ScalarValue;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionConfig;
use iceberg::spec::SnapshotRef;
use iceberg::table::Table;

use crate::scan::ParallelTable;

use crate::layout::{BRONZE_NAMESPACE, CONSISTENT_LSN_PROPERTY, SILVER_NAMESPACE};
use crate::sink::SOURCE_LSN_PROPERTY;
use crate::{LakehouseError, Result};

/// A DataFusion session that sees every table of the catalog as `<namespace>.<table>`
/// (also `bitvelocity.<namespace>.<table>`), as of the moment it was opened, plus the
/// time-travel table function `as_of('<namespace>.<table>', <snapshot id> | '<timestamp>')`.
pub async fn session(catalog: Arc<dyn Catalog>) -> Result<SessionContext> {
    let (ctx, _) = open(catalog, false, None).await?;
    Ok(ctx)
}

/// Like [`session`], but queries hold at most `memory_bytes` and spill sorts and joins to
/// the temporary directory beyond it (silver's catch-up sorts a whole change log).
pub async fn session_within(
    catalog: Arc<dyn Catalog>,
    memory_bytes: usize,
) -> Result<SessionContext> {
    let (ctx, _) = open(catalog, false, Some(memory_bytes)).await?;
    Ok(ctx)
}

/// A session in which every `silver` table is read at one common source position (the
/// silver namespace's [`CONSISTENT_LSN_PROPERTY`]), returned with it: a join across
/// tables never sees part of a source transaction.
pub async fn consistent_session(catalog: Arc<dyn Catalog>) -> Result<(SessionContext, u64)> {
    let (ctx, lsn) = open(catalog, true, None).await?;
    let lsn = lsn.ok_or_else(|| {
        LakehouseError::NoConsistentPosition(
            "the ingester has not yet committed every silver table at least once".to_string(),
        )
    })?;
    Ok((ctx, lsn))
}

/// Which tables a session shows, by `namespace.table`: the others are absent from it (and
/// from its `information_schema`), and `as_of` refuses them.
pub type Visible = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How [`open_session`] builds a session.
#[derive(Clone, Default)]
pub struct SessionOptions {
    /// Read every silver table at the published consistent position.
    pub consistent: bool,
    /// Memory a query may hold before its sorts, joins and aggregations spill (or fail).
    pub memory_bytes: Option<usize>,
    /// The tables shown; all when `None`.
    pub visible: Option<Visible>,
}

/// A session as `options` say, with the consistent position it reads at (when asked).
pub async fn open_session(
    catalog: Arc<dyn Catalog>,
    options: SessionOptions,
) -> Result<(SessionContext, Option<u64>)> {
    let (ctx, lsn) = open_with(catalog, &options, None).await?;
    if options.consistent && lsn.is_none() {
        return Err(LakehouseError::NoConsistentPosition(
            "the ingester has not yet committed every silver table at least once".to_string(),
        ));
    }
    Ok((ctx, lsn))
}

async fn open(
    catalog: Arc<dyn Catalog>,
    consistent: bool,
    memory_bytes: Option<usize>,
) -> Result<(SessionContext, Option<u64>)> {
    let options = SessionOptions {
        consistent,
        ..Default::default()
    };
    open_with(catalog, &options, memory_bytes).await
}

/// Opens a session; `sort_spill` tunes it for one large sort within that many bytes
/// (silver's catch-up).
async fn open_with(
    catalog: Arc<dyn Catalog>,
    options: &SessionOptions,
    sort_spill: Option<usize>,
) -> Result<(SessionContext, Option<u64>)> {
    let consistent = options.consistent;
    let shown = |name: &str| options.visible.as_ref().is_none_or(|v| v(name));
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, SILVER_NAMESPACE)
        .with_information_schema(true);
    let ctx = match (sort_spill, options.memory_bytes) {
        (None, None) => SessionContext::new_with_config(config),
        (None, Some(bytes)) => {
            let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_memory_pool(std::sync::Arc::new(
                    datafusion::execution::memory_pool::FairSpillPool::new(bytes),
                ))
                .build_arc()?;
            SessionContext::new_with_config_rt(config, runtime)
        }
        (Some(bytes), _) => {
            // One partition (no merge of per-partition sorts on top of the sort's own), small
            // batches (a merge of spilled runs holds one batch per run), and a quarter of the
            // pool kept back for that merge instead of a fixed 10 MB.
            let config = config
                .with_target_partitions(1)
                .with_batch_size(1024)
                .with_sort_spill_reservation_bytes(bytes / 4);
            let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_memory_pool(std::sync::Arc::new(
                    datafusion::execution::memory_pool::FairSpillPool::new(bytes),
                ))
                .build_arc()?;
            SessionContext::new_with_config_rt(config, runtime)
        }
    };
    // A consistent read takes the watermark (and the stopped tables) *before* loading any
    // table: every table loaded afterwards has committed at least up to it. Loading first
    // could pin a table at an older snapshot than the watermark it is then read at.
    let watermark = if consistent {
        Some(read_watermark(catalog.as_ref()).await?)
    } else {
        None
    };
    let others = super::confined::client_schemas(catalog.as_ref(), &shown).await?;
    let tables = load_tables(catalog.as_ref()).await?;
    ctx.register_udtf(
        "as_of",
        Arc::new(AsOf {
            tables: tables.clone(),
            visible: options.visible.clone(),
        }),
    );
    if !consistent {
        // Bronze and silver through the parallel scan, at the snapshot current now; any
        // other namespace through iceberg-datafusion, confined to each table's folder.
        let current = MemoryCatalogProvider::new();
        for (name, schema) in others {
            current.register_schema(&name, schema)?;
        }
        for ns in [BRONZE_NAMESPACE, SILVER_NAMESPACE] {
            let schema = Arc::new(MemorySchemaProvider::new());
            for (name, table) in tables.iter().filter(|(n, _)| shown(n)) {
                if let Some(short) = name.strip_prefix(ns).and_then(|n| n.strip_prefix('.')) {
                    let p = ParallelTable::try_new(table.clone(), None)
                        .map_err(LakehouseError::iceberg(name))?;
                    schema.register_table(short.to_string(), Arc::new(p))?;
                }
            }
            current.register_schema(ns, schema)?;
        }
        ctx.register_catalog(CATALOG_NAME, Arc::new(current));
        return Ok((ctx, None));
    }
    let Some((Some(lsn), stopped)) = watermark else {
        return Ok((ctx, None));
    };
    // Every schema as the catalog has it, except silver: each table pinned at `lsn`.
    let pinned = MemoryCatalogProvider::new();
    for (name, schema) in others {
        pinned.register_schema(&name, schema)?;
    }
    let bronze = Arc::new(MemorySchemaProvider::new());
    for (name, table) in tables.iter().filter(|(n, _)| shown(n)) {
        if let Some(short) = name.strip_prefix("bronze.") {
            let p = ParallelTable::try_new(table.clone(), None)
                .map_err(LakehouseError::iceberg(name))?;
            bronze.register_table(short.to_string(), Arc::new(p))?;
        }
    }
    pinned.register_schema(BRONZE_NAMESPACE, bronze)?;
    let silver = Arc::new(MemorySchemaProvider::new());
    // A table whose capture stopped is not at `lsn`: leave it out rather than mislead.
    for (name, table) in tables.iter().filter(|(n, _)| shown(n)) {
        let Some(short) = name.strip_prefix("silver.") else {
            continue;
        };
        if stopped.iter().any(|s| s == short) {
            tracing::warn!(table = %name, "capture stopped; left out of the consistent read");
            continue;
        }
        let snapshot = snapshot_at_position(table, lsn)?.ok_or_else(|| {
            LakehouseError::NoConsistentPosition(format!(
                "{name} has no snapshot at or before position {lsn}; retry once ingest has committed it"
            ))
        })?;
        let p = ParallelTable::try_new(table.clone(), Some(snapshot))
            .map_err(LakehouseError::iceberg(name))?;
        silver.register_table(short.to_string(), Arc::new(p))?;
    }
    pinned.register_schema(SILVER_NAMESPACE, silver)?;
    ctx.register_catalog(CATALOG_NAME, Arc::new(pinned));
    Ok((ctx, Some(lsn)))
}

/// The consistent position of silver and the tables whose capture stopped, read together
/// from the `silver` namespace's properties.
async fn read_watermark(catalog: &dyn Catalog) -> Result<(Option<u64>, Vec<String>)> {
    let ns = NamespaceIdent::new(SILVER_NAMESPACE.to_string());
    if !catalog
        .namespace_exists(&ns)
        .await
        .map_err(LakehouseError::iceberg(&"namespace silver"))?
    {
        return Ok((None, Vec::new()));
    }
    let props = catalog
        .get_namespace(&ns)
        .await
        .map_err(LakehouseError::iceberg(&"namespace silver"))?
        .properties()
        .clone();
    let lsn = props
        .get(CONSISTENT_LSN_PROPERTY)
        .and_then(|v| v.parse::<u64>().ok());
    Ok((lsn, crate::layout::parse_stopped(&props)))
}

/// Every bronze and silver table, loaded once, by `namespace.table`.
async fn load_tables(catalog: &dyn Catalog) -> Result<Arc<HashMap<String, Table>>> {
    let mut out = HashMap::new();
    for ns in [BRONZE_NAMESPACE, SILVER_NAMESPACE] {
        let ns = NamespaceIdent::new(ns.to_string());
        let ns_name = ns.to_url_string();
        if !catalog
            .namespace_exists(&ns)
            .await
            .map_err(LakehouseError::iceberg(&ns_name))?
        {
            continue;
        }
        let idents = catalog
            .list_tables(&ns)
            .await
            .map_err(LakehouseError::iceberg(&ns.to_url_string()))?;
        for ident in idents {
            let table = catalog
                .load_table(&ident)
                .await
                .map_err(LakehouseError::iceberg(&ident))?;
            out.insert(ident.to_string(), table);
        }
    }
    Ok(Arc::new(out))
}

/// The snapshots of the current lineage, newest first.
fn lineage(table: &Table) -> Vec<SnapshotRef> {
    let meta = table.metadata();
    let mut out = Vec::new();
    let mut at = meta.current_snapshot().cloned();
    while let Some(s) = at {
        at = s
            .parent_snapshot_id()
            .and_then(|p| meta.snapshot_by_id(p).cloned());
        out.push(s);
    }
    out
}

/// The newest snapshot of the lineage whose source position is at or below `lsn`.
fn snapshot_at_position(table: &Table, lsn: u64) -> Result<Option<i64>> {
    for s in lineage(table) {
        let at = s
            .summary()
            .additional_properties
            .get(SOURCE_LSN_PROPERTY)
            .and_then(|v| v.parse::<u64>().ok());
        if at.is_some_and(|at| at <= lsn) {
            return Ok(Some(s.snapshot_id()));
        }
    }
    Ok(None)
}

/// `as_of(table, snapshot id | timestamp)`: a table as one of its snapshots saw it.
struct AsOf {
    tables: Arc<HashMap<String, Table>>,
    visible: Option<Visible>,
}

impl std::fmt::Debug for AsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsOf")
            .field("tables", &self.tables.len())
            .finish()
    }
}

impl TableFunctionImpl for AsOf {
    fn call(&self, args: &[Expr]) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let usage = || {
            datafusion::error::DataFusionError::Plan(
                "as_of takes a table name and a snapshot id or a timestamp: as_of('silver.orders', 1234) or as_of('silver.orders', '2026-11-25 10:00:00')".to_string(),
            )
        };
        let (Some(Expr::Literal(name, _)), Some(Expr::Literal(at, _)), 2) =
            (args.first(), args.get(1), args.len())
        else {
            return Err(usage());
        };
        let name = match name {
            ScalarValue::Utf8(Some(n)) | ScalarValue::Utf8View(Some(n)) => n.clone(),
            _ => return Err(usage()),
        };
        if self.visible.as_ref().is_some_and(|v| !v(&name)) {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "permission denied for table {name}"
            )));
        }
        let table = self.tables.get(&name).ok_or_else(|| {
            datafusion::error::DataFusionError::Plan(format!(
                "as_of: no table {name} (use namespace.table, e.g. silver.orders)"
            ))
        })?;
        let snapshot = match at {
            ScalarValue::Int64(Some(id)) => *id,
            ScalarValue::Utf8(Some(ts)) | ScalarValue::Utf8View(Some(ts)) => {
                let ms = parse_timestamp_ms(ts).ok_or_else(|| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "as_of: cannot read {ts:?} as a timestamp (RFC 3339, or YYYY-MM-DD HH:MM:SS[.f] in UTC)"
                    ))
                })?;
                lineage(table)
                    .into_iter()
                    .find(|s| s.timestamp_ms() <= ms)
                    .map(|s| s.snapshot_id())
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Plan(format!(
                            "as_of: {name} has no snapshot at or before {ts} (snapshots older than the retention period are expired)"
                        ))
                    })?
            }
            _ => return Err(usage()),
        };
        let provider = ParallelTable::try_new(table.clone(), Some(snapshot))
            .map_err(|e| datafusion::error::DataFusionError::Plan(format!("as_of: {name}: {e}")))?;
        Ok(Arc::new(provider))
    }
}

/// Milliseconds since the epoch of an RFC 3339 timestamp or a UTC `YYYY-MM-DD HH:MM:SS[.f]`.
fn parse_timestamp_ms(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
        if let Ok(d) = chrono::NaiveDate::parse_from_str(s, fmt) {
            return d
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis());
        }
    }
    None
}

/// Runs one SQL statement and collects its result.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// SQL that replays a change-log table into its current state: the latest change
/// per key (by `_lsn`, `_seq`), minus keys whose latest change is a delete, and
/// minus everything before the table's last truncate.
pub fn replay_sql(table: &str, key: &[String], columns: &[String]) -> String {
    let key_list = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let cols = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH t AS (SELECT tl, tq FROM (SELECT _lsn AS tl, _seq AS tq FROM {table} WHERE _op = 'truncate' \
                     UNION ALL SELECT -1 AS tl, -1 AS tq) ORDER BY tl DESC, tq DESC LIMIT 1), \
         ranked AS (SELECT c.*, row_number() OVER (PARTITION BY {key_list} ORDER BY _lsn DESC, _seq DESC) AS _rn \
                    FROM {table} c CROSS JOIN t \
                    WHERE c._op <> 'truncate' AND (c._lsn > t.tl OR (c._lsn = t.tl AND c._seq > t.tq))) \
         SELECT {cols} FROM ranked WHERE _rn = 1 AND _op <> 'delete'"
    )
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
