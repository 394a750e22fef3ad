//! The one query engine behind every door: a DataFusion session per query over the
//! lakehouse, showing only the tables the principal may read; every statement checked on
//! its table references and again on the resolved plan (joins, views, CTEs, subqueries,
//! `as_of`), in this one place; writes, DDL, settings and file access refused; and each
//! query bounded by a slot (with a bounded queue), a memory pool and a wall-clock deadline
//! that cancels its execution.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use catalog::{CATALOG_NAME, Catalog};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ParamValues, ScalarValue, TableReference};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement;
use futures::{Stream, StreamExt};
use lakehouse::query::{SessionOptions, Visible, open_session};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::config::Limits;
use crate::metrics::ServeMetrics;
use crate::{Result, ServingError};

/// Namespaces whose tables a door may never change (the ingester owns them).
pub const INGESTED_NAMESPACES: [&str; 2] = ["bronze", "silver"];

/// The query engine every door shares.
pub struct QueryEngine {
    catalog: Arc<dyn Catalog>,
    limits: Limits,
    slots: Arc<Semaphore>,
    metrics: Arc<ServeMetrics>,
}

impl QueryEngine {
    /// An engine over `catalog` bounded by `limits`, counting into `metrics`.
    pub fn new(catalog: Arc<dyn Catalog>, limits: Limits, metrics: Arc<ServeMetrics>) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent_queries));
        Self {
            catalog,
            limits,
            slots,
            metrics,
        }
    }

    /// The limits queries run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The metrics every door counts into.
    pub fn metrics(&self) -> &Arc<ServeMetrics> {
        &self.metrics
    }

    /// Runs `sql` (one statement, `$1`-style `params`) for `who`; returns its result as a
    /// stream that holds the query's slot and deadline until it ends or is dropped (which
    /// cancels the execution).
    pub async fn execute(
        &self,
        who: &Principal,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<QueryStream> {
        self.execute_with(who, sql, params, QueryOptions::default())
            .await
    }

    /// [`QueryEngine::execute`] in a session shaped by `options`.
    pub async fn execute_with(
        &self,
        who: &Principal,
        sql: &str,
        params: Vec<ScalarValue>,
        options: QueryOptions,
    ) -> Result<QueryStream> {
        let timeout = Duration::from_secs(self.limits.query_timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let work = async {
            let slot = self.admit().await?;
            let planned = self.plan(who, sql, options.clone()).await?;
            let tables = planned.tables.clone();
            let position = planned.position;
            let df = planned.ctx.execute_logical_plan(planned.plan).await?;
            let df = if params.is_empty() {
                df
            } else {
                df.with_param_values(ParamValues::from(params))?
            };
            let stream = df.execute_stream().await?;
            Ok::<_, ServingError>((slot, stream, tables, position))
        };
        let secs = self.limits.query_timeout_secs;
        let (slot, mut inner, tables, position) = tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| ServingError::Timeout(secs))??;
        let schema = inner.schema();
        // The execution runs on a task of its own holding the slot, under the deadline,
        // whether or not the client reads: a slow or silent client cannot keep a query (or
        // its slot) past its time. A client that goes away drops the receiver, which ends
        // the task and so the execution at once, even between batches.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let end = Arc::new(AtomicU8::new(RUNNING));
        let ended = end.clone();
        tokio::spawn(async move {
            let run = async {
                loop {
                    let item = tokio::select! {
                        _ = tx.closed() => return,
                        item = inner.next() => item,
                    };
                    let Some(item) = item else { break };
                    let failed = item.is_err();
                    if failed {
                        ended.store(FAILED, Relaxed);
                    }
                    if tx.send(item.map_err(ServingError::from)).await.is_err() || failed {
                        return;
                    }
                }
                ended.store(COMPLETE, Relaxed);
            };
            if tokio::time::timeout_at(deadline, run).await.is_err() {
                ended.store(TIMED_OUT, Relaxed);
            }
            // The slot is free before the answer ends: a client that read the whole answer
            // finds it free for its next query.
            drop(slot);
            drop(tx);
        });
        Ok(QueryStream {
            schema,
            tables,
            position,
            rx,
            end,
            timeout_secs: secs,
            reported: false,
        })
    }

    /// A slot to run in, waiting in the bounded queue when all are taken.
    async fn admit(&self) -> Result<Slot> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let queued = self.metrics.queued.fetch_add(1, Relaxed);
                let waiting = Waiting(self.metrics.clone());
                if queued as usize >= self.limits.max_queued_queries {
                    drop(waiting);
                    self.metrics.refused_busy.fetch_add(1, Relaxed);
                    return Err(ServingError::Busy {
                        running: self.limits.max_concurrent_queries,
                        queued: queued as usize,
                    });
                }
                let p = self
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ServingError::ShuttingDown)?;
                drop(waiting);
                p
            }
        };
        self.metrics.active.fetch_add(1, Relaxed);
        Ok(Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// What `sql` answers and the parameters it takes, planned and authorized as
    /// [`QueryEngine::execute`] would, without running it (a prepared statement's shape).
    /// With `params`, the answer's schema is the one those values give.
    pub async fn describe(
        &self,
        who: &Principal,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Described> {
        self.describe_with(who, sql, params, QueryOptions::default())
            .await
    }

    /// [`QueryEngine::describe`] in a session shaped by `options`.
    pub async fn describe_with(
        &self,
        who: &Principal,
        sql: &str,
        params: Vec<ScalarValue>,
        options: QueryOptions,
    ) -> Result<Described> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.limits.query_timeout_secs);
        let work = async {
            let _slot = self.admit().await?;
            let planned = self.plan(who, sql, options).await?;
            let mut types: Vec<(usize, DataType)> = Vec::new();
            for (id, ty) in planned.plan.get_parameter_types()? {
                let n = id
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ServingError::BadRequest(format!(
                            "parameter {id}: only positional parameters ($1, $2, ...) are accepted"
                        ))
                    })?;
                types.push((n, ty.unwrap_or(DataType::Null)));
            }
            types.sort_by_key(|(n, _)| *n);
            let parameters = types.into_iter().map(|(_, t)| t).collect();
            let plan = if params.is_empty() {
                planned.plan
            } else {
                planned.plan.with_param_values(ParamValues::from(params))?
            };
            let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            Ok(Described { schema, parameters })
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| ServingError::Timeout(self.limits.query_timeout_secs))?
    }

    /// The tables `who` may read, by namespace, with their schemas (for catalog listings:
    /// Flight SQL's `GetTables`, the PostgreSQL catalog).
    pub async fn tables(&self, who: &Principal) -> Result<Vec<ListedTable>> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.limits.query_timeout_secs);
        let work = async {
            let _slot = self.admit().await?;
            let (ctx, _) = self.session(who, QueryOptions::default()).await?;
            let mut out = Vec::new();
            let Some(catalog) = ctx.catalog(CATALOG_NAME) else {
                return Ok(out);
            };
            let mut namespaces = catalog.schema_names();
            namespaces.sort();
            for namespace in namespaces {
                if namespace == "information_schema" {
                    continue;
                }
                let Some(schema) = catalog.schema(&namespace) else {
                    continue;
                };
                let mut names = schema.table_names();
                names.sort();
                for name in names {
                    if let Some(table) = schema.table(&name).await? {
                        out.push(ListedTable {
                            namespace: namespace.clone(),
                            name,
                            schema: table.schema(),
                        });
                    }
                }
            }
            Ok(out)
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| ServingError::Timeout(self.limits.query_timeout_secs))?
    }

    /// A session showing only what `who` may read, bounded by the query memory limit, with
    /// the source position it reads every silver table at when `options` ask for a
    /// consistent read.
    async fn session(
        &self,
        who: &Principal,
        options: QueryOptions,
    ) -> Result<(datafusion::prelude::SessionContext, Option<u64>)> {
        let grants = who.grants.clone();
        let visible: Visible = Arc::new(move |t: &str| grants.can_read(t));
        let session_options = SessionOptions {
            consistent: options.consistent,
            memory_bytes: Some((self.limits.memory_limit_mb as usize) << 20),
            visible: Some(visible),
        };
        let (ctx, position) = open_session(self.catalog.clone(), session_options)
            .await
            .map_err(|e| match e {
                lakehouse::LakehouseError::NoConsistentPosition(why) => {
                    ServingError::NoConsistentPosition(why)
                }
                e => e.into(),
            })?;
        if let Some(hook) = &options.hook {
            hook.install(&ctx)?;
        }
        Ok((ctx, position))
    }

    /// `sql` parsed, checked to be a query, planned and authorized on its resolved plan.
    async fn plan(&self, who: &Principal, sql: &str, options: QueryOptions) -> Result<Planned> {
        let (ctx, position) = self.session(who, options).await?;
        let state = ctx.state();
        let statement = state.sql_to_statement(sql, &datafusion::config::Dialect::PostgreSQL)?;
        refuse_non_queries(&statement)?;
        for reference in state.resolve_table_references(&statement)? {
            check_reference(who, &reference)?;
        }
        let plan = state.statement_to_plan(statement).await?;
        // What the statement became once planned (`SELECT ... INTO` is a table creation).
        datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| ServingError::NotAllowed(e.strip_backtrace()))?;
        let tables = check_plan(who, &plan)?;
        Ok(Planned {
            ctx,
            plan,
            tables,
            position,
        })
    }
}

/// How a door's sessions differ.
#[derive(Clone, Default)]
pub struct QueryOptions {
    /// Adds what a door's clients expect to each session (PostgreSQL's `pg_catalog`).
    pub hook: Option<Arc<dyn SessionHook>>,
    /// Read every silver table at the one source position the ingester last published
    /// (as `bitvelocity sql --consistent`), so a join never sees half a source transaction.
    pub consistent: bool,
}

/// Something a door adds to each of its query sessions, after the lakehouse tables and
/// before planning; whatever it adds reads only what the session shows.
pub trait SessionHook: Send + Sync {
    /// Adds to `ctx`.
    fn install(&self, ctx: &datafusion::prelude::SessionContext) -> datafusion::error::Result<()>;
}

/// A statement planned and authorized, ready to run.
struct Planned {
    ctx: datafusion::prelude::SessionContext,
    plan: LogicalPlan,
    tables: Vec<String>,
    /// The source position of a consistent read.
    position: Option<u64>,
}

/// A statement's shape: what it answers and the parameters it takes.
#[derive(Debug, Clone)]
pub struct Described {
    /// The answer's schema.
    pub schema: SchemaRef,
    /// The type of each positional parameter (`$1` first; `Null` where the plan leaves it open).
    pub parameters: Vec<DataType>,
}

/// A table a principal may read.
#[derive(Debug, Clone)]
pub struct ListedTable {
    /// Its namespace (`bronze`, `silver`, ...).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its columns.
    pub schema: SchemaRef,
}

/// Refuses statements that are not queries: writes, DDL, `COPY`, `SET`, transactions.
fn refuse_non_queries(statement: &Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    match statement {
        Statement::Statement(s) => match s.as_ref() {
            Sql::Query(_) => Ok(()),
            Sql::Explain { statement, .. } => match statement.as_ref() {
                Sql::Query(_) => Ok(()),
                other => Err(ServingError::NotAllowed(format!(
                    "only queries can be explained, not {}",
                    first_words(&other.to_string())
                ))),
            },
            other => Err(ServingError::NotAllowed(format!(
                "only queries are answered here, not {}",
                first_words(&other.to_string())
            ))),
        },
        Statement::Explain(e) => refuse_non_queries(&e.statement),
        _ => Err(ServingError::NotAllowed(
            "only queries are answered here (no COPY, CREATE EXTERNAL TABLE or other statements)"
                .into(),
        )),
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// `namespace.table` of a reference, with the session's defaults; `None` for the
/// catalog's own listings (`information_schema`), which show only granted tables.
fn qualified(reference: &TableReference) -> Option<String> {
    let r = reference.clone().resolve(CATALOG_NAME, "silver");
    if matches!(r.schema.as_ref(), "information_schema" | "pg_catalog") {
        return None;
    }
    Some(format!("{}.{}", r.schema, r.table))
}

fn check_reference(who: &Principal, reference: &TableReference) -> Result<()> {
    match qualified(reference) {
        Some(name) if !who.grants.can_read(&name) => Err(ServingError::PermissionDenied(name)),
        _ => Ok(()),
    }
}

/// Every table the resolved plan scans (subqueries included) must be readable; a scan of
/// a lakehouse table is named by the table it reads, whatever the plan calls it. Returns
/// the tables read.
fn check_plan(who: &Principal, plan: &LogicalPlan) -> Result<Vec<String>> {
    let mut denied = None;
    let mut read_tables = std::collections::BTreeSet::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let read = datafusion::datasource::source_as_provider(&scan.source)
                .ok()
                .and_then(|p| {
                    p.as_any()
                        .downcast_ref::<lakehouse::scan::ParallelTable>()
                        .map(|t| t.table().identifier().to_string())
                });
            let name = read.or_else(|| qualified(&scan.table_name));
            if let Some(name) = name {
                if !who.grants.can_read(&name) {
                    denied = Some(name);
                    return Ok(TreeNodeRecursion::Stop);
                }
                read_tables.insert(name);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match denied {
        Some(name) => Err(ServingError::PermissionDenied(name)),
        None => Ok(read_tables.into_iter().collect()),
    }
}

/// A query slot; frees itself (and the active gauge) when the query's stream is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<ServeMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.active.fetch_sub(1, Relaxed);
    }
}

/// A place in the queue; leaves it when dropped (admitted, refused or cancelled).
struct Waiting(Arc<ServeMetrics>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Relaxed);
    }
}

const RUNNING: u8 = 0;
const COMPLETE: u8 = 1;
const FAILED: u8 = 2;
const TIMED_OUT: u8 = 3;

/// A running query's result: batches until the end, an error, or its deadline, which
/// drops the execution (cancelling it) and ends the stream with [`ServingError::Timeout`].
/// A result never ends early without an error: batches still queued when the deadline
/// passed are followed by the timeout, not by a silent end.
pub struct QueryStream {
    schema: SchemaRef,
    tables: Vec<String>,
    position: Option<u64>,
    rx: tokio::sync::mpsc::Receiver<Result<RecordBatch>>,
    end: Arc<AtomicU8>,
    timeout_secs: u64,
    reported: bool,
}

impl QueryStream {
    /// The result's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The tables the query reads, as `namespace.table`.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// The source position (PostgreSQL LSN) a consistent read reads silver at.
    pub fn position(&self) -> Option<u64> {
        self.position
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item)),
            Poll::Ready(None) => {
                let end = self.end.load(Relaxed);
                if end == COMPLETE || end == FAILED || self.reported {
                    return Poll::Ready(None);
                }
                // Timed out (or the task died): say so, once.
                self.reported = true;
                Poll::Ready(Some(Err(ServingError::Timeout(self.timeout_secs))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
