//! The PostgreSQL wire door (pgwire): simple and extended query protocols over the shared
//! engine, in sessions that add PostgreSQL's `pg_catalog` over the tables the user may read
//! (so `psql`'s `\dt` and `\d`, psycopg and BI catalog probes work and list only granted
//! tables); statements rewritten for PostgreSQL compatibility by `datafusion-pg-catalog`.
//! Transactions are accepted and do nothing (everything is read-only); `SET`, `RESET` and
//! `DISCARD` change only `bitvelocity.consistent_reads` (PostgreSQL's own settings are
//! accepted and ignored); `SHOW` answers the server's fixed settings and that one.

mod catalog;
mod scram;
mod startup;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arrow::datatypes::{DataType, SchemaRef};
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::sql::sqlparser::ast::Statement as Sql;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Sink, StreamExt};
use pgwire::api::PgWireConnectionState;
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_query_response};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::Execute;
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use scram::Verifier;
pub use startup::DATABASE;

use crate::ServingError;
use crate::auth::{Authenticator, Principal};
use crate::config::ServeConfig;
use crate::engine::{QueryEngine, QueryOptions};
use crate::observed::Observed;

/// The PostgreSQL wire door, shared by its connections.
pub struct PgDoor {
    engine: Arc<QueryEngine>,
    auth: Arc<Authenticator>,
    verifiers: HashMap<String, Verifier>,
    /// TLS is configured: a client that does not ask for it is refused.
    require_tls: bool,
    /// `pg_catalog`'s fixed tables, loaded once.
    statics: Arc<datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables>,
}

impl PgDoor {
    /// A door over `engine`; users log in with their key (SCRAM verifiers from `config`).
    pub fn new(
        engine: Arc<QueryEngine>,
        auth: Arc<Authenticator>,
        config: &ServeConfig,
    ) -> crate::Result<Self> {
        let mut verifiers = HashMap::new();
        for u in &config.users {
            if let Some(text) = &u.pg_scram_sha256 {
                let v = Verifier::parse(text)
                    .map_err(|e| ServingError::Config(format!("user {}: {e}", u.name)))?;
                verifiers.insert(u.name.clone(), v);
            }
        }
        let statics = datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables::try_new()
            .map_err(|e| ServingError::Query(Box::new(e)))?;
        Ok(Self {
            engine,
            auth,
            verifiers,
            require_tls: config.tls.is_some(),
            statics: Arc::new(statics),
        })
    }

    /// Accepts connections on `listener` until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut shutdown: watch::Receiver<bool>,
    ) -> crate::Result<()> {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (socket, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "postgres wire: accept failed");
                            continue;
                        }
                    };
                    // Answers go out as written, not held for the client's delayed ACK.
                    let _ = socket.set_nodelay(true);
                    let connection = match Connection::new(self.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "postgres wire: cannot set up a connection");
                            continue;
                        }
                    };
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, connection).await {
                            tracing::debug!(error = %e, "postgres wire connection ended");
                        }
                    });
                }
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }
}

/// One connection's handlers; the principal is set once its login succeeds.
struct Connection {
    login: Arc<startup::Login>,
    queries: Arc<Queries>,
}

impl Connection {
    fn new(door: Arc<PgDoor>) -> Result<Self, Box<datafusion::error::DataFusionError>> {
        let principal = Arc::new(OnceLock::new());
        let catalog = catalog::ConnectionCatalog::new(door.statics.clone())?;
        let options = QueryOptions {
            hook: Some(Arc::new(catalog)),
            consistent: false,
        };
        Ok(Self {
            login: Arc::new(startup::Login::new(door.clone(), principal.clone())),
            queries: Arc::new(Queries {
                parser: Arc::new(Parser {
                    door,
                    principal,
                    options,
                    consistent: AtomicBool::new(false),
                }),
            }),
        })
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.login.clone()
    }
}

/// What a statement is, once parsed.
#[derive(Debug, Clone)]
enum Statement {
    Empty,
    /// A query: its text (as rewritten), answer and parameter types.
    Query {
        sql: String,
        schema: SchemaRef,
        parameters: Vec<DataType>,
    },
    Begin,
    End(&'static str),
    /// A setting: ours (`bitvelocity.consistent_reads`) changes this connection's reads;
    /// PostgreSQL's are accepted and change nothing.
    Set(Option<bool>, &'static str),
    Show(String, String),
    /// `SHOW bitvelocity.consistent_reads`, answered when it runs.
    ShowConsistent,
}

/// The setting that makes a connection's queries read every silver table at one source
/// position (as `bitvelocity sql --consistent`).
pub const CONSISTENT_SETTING: &str = "bitvelocity.consistent_reads";

/// Parses statements for one connection's user.
struct Parser {
    door: Arc<PgDoor>,
    principal: Arc<OnceLock<Principal>>,
    /// This connection's sessions (with its `pg_catalog`).
    options: QueryOptions,
    /// `SET bitvelocity.consistent_reads`, as last run on this connection.
    consistent: AtomicBool,
}

impl Parser {
    /// This connection's session options as its settings stand now.
    fn options(&self) -> QueryOptions {
        QueryOptions {
            consistent: self.consistent.load(Ordering::Relaxed),
            ..self.options.clone()
        }
    }

    fn who(&self) -> PgWireResult<&Principal> {
        self.principal
            .get()
            .ok_or_else(|| user_error("28000", "not logged in".into()))
    }

    /// The statements in `sql`, classified; queries planned and authorized.
    async fn statements(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        let who = self.who()?;
        let parsed = match PostgresCompatibilityParser::new().parse(sql) {
            Ok(parsed) => parsed,
            Err(e) => return Err(refused_or_syntax(sql, e.to_string())),
        };
        let mut out = Vec::with_capacity(parsed.len());
        for statement in parsed {
            out.push(match &statement {
                Sql::StartTransaction { .. } => Statement::Begin,
                Sql::Commit { .. } => Statement::End("COMMIT"),
                Sql::Rollback { .. } => Statement::End("ROLLBACK"),
                Sql::Set(set) => Statement::Set(our_setting(set)?, "SET"),
                // Back to the connection's defaults (poolers send these between clients).
                Sql::Reset(reset) => {
                    use datafusion::sql::sqlparser::ast::Reset;
                    let ours = match &reset.reset {
                        Reset::ALL => true,
                        Reset::ConfigurationParameter(name) => {
                            setting_name(&name.to_string()) == CONSISTENT_SETTING
                        }
                    };
                    Statement::Set(ours.then_some(false), "RESET")
                }
                Sql::Discard { object_type } => {
                    use datafusion::sql::sqlparser::ast::DiscardObject;
                    let all = matches!(object_type, DiscardObject::ALL);
                    Statement::Set(all.then_some(false), "DISCARD")
                }
                Sql::ShowVariable { variable }
                    if setting_name(
                        &variable
                            .iter()
                            .map(|i| i.value.as_str())
                            .collect::<Vec<_>>()
                            .join("."),
                    ) == CONSISTENT_SETTING =>
                {
                    Statement::ShowConsistent
                }
                Sql::ShowVariable { variable } => {
                    let name = variable
                        .iter()
                        .map(|i| i.value.to_lowercase())
                        .collect::<Vec<_>>()
                        .join(" ");
                    let value = setting(&name).ok_or_else(|| {
                        user_error(
                            "42704",
                            format!("unrecognized configuration parameter \"{name}\""),
                        )
                    })?;
                    Statement::Show(name, value.to_string())
                }
                _ => {
                    let sql = statement.to_string();
                    let described = self
                        .door
                        .engine
                        .describe_with(who, &sql, Vec::new(), self.options())
                        .await
                        .map_err(pg_error)?;
                    Statement::Query {
                        sql,
                        schema: described.schema,
                        parameters: described.parameters,
                    }
                }
            });
        }
        Ok(out)
    }

    /// Runs a query and answers its rows as they come.
    async fn answer(
        &self,
        sql: &str,
        params: Vec<datafusion::common::ScalarValue>,
        format: &Format,
        options: Arc<FormatOptions>,
    ) -> PgWireResult<Response> {
        let who = self.who()?.clone();
        let started = Instant::now();
        let metrics = self.door.engine.metrics().clone();
        let query = match self
            .door
            .engine
            .execute_with(&who, sql, params, self.options())
            .await
        {
            Ok(q) => q,
            Err(e) => {
                metrics.query_done("pgwire", &who.user, e.code(), started.elapsed());
                return Err(pg_error(e));
            }
        };
        let observed = Observed::new(query, metrics.clone(), "pgwire", &who, started);
        let fields = Arc::new(arrow_schema_to_pg_fields(
            &observed.schema(),
            format,
            Some(options),
        )?);
        let counted = observed.bytes();
        let encode = fields.clone();
        let rows = observed
            .map(
                move |batch| -> Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> {
                    match batch {
                        Ok(batch) => encode_recordbatch(encode.clone(), batch),
                        Err(e) => Box::new(std::iter::once(Err(pg_error(e)))),
                    }
                },
            )
            .flat_map(futures::stream::iter)
            .inspect(move |row| {
                if let Ok(row) = row {
                    let n = row.data.len() as u64;
                    metrics.sent("pgwire", n);
                    counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            });
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

/// `Some(on)` when `set` changes `bitvelocity.consistent_reads`; `None` for PostgreSQL's
/// own settings (accepted, changing nothing); an error for any other `bitvelocity.` one or
/// a value that is not a boolean.
fn our_setting(set: &datafusion::sql::sqlparser::ast::Set) -> PgWireResult<Option<bool>> {
    use datafusion::sql::sqlparser::ast::ContextModifier;
    use datafusion::sql::sqlparser::ast::Set;
    let Set::SingleAssignment {
        variable,
        values,
        scope,
        ..
    } = set
    else {
        return Ok(None);
    };
    let name = setting_name(&variable.to_string());
    if !name.starts_with("bitvelocity.") {
        return Ok(None);
    }
    if name != CONSISTENT_SETTING {
        return Err(user_error(
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        ));
    }
    // Transactions do nothing here, so a setting cannot end with one: refuse rather than
    // let it outlive the transaction the client meant.
    if matches!(scope, Some(ContextModifier::Local)) {
        return Err(user_error(
            "0A000",
            format!(
                "SET LOCAL {CONSISTENT_SETTING} is not supported: use SET (it lasts until SET off, RESET or DISCARD ALL)"
            ),
        ));
    }
    let value = match values.as_slice() {
        [v] => v.to_string().trim_matches('\'').to_lowercase(),
        _ => String::new(),
    };
    match value.as_str() {
        "on" | "true" | "1" | "yes" => Ok(Some(true)),
        "off" | "false" | "0" | "no" | "default" => Ok(Some(false)),
        _ => Err(user_error(
            "22023",
            format!("{CONSISTENT_SETTING} takes on or off"),
        )),
    }
}

/// A setting's name as PostgreSQL compares it: quotes dropped, lower case.
fn setting_name(written: &str) -> String {
    written.replace('"', "").to_lowercase()
}

/// The settings `SHOW` answers.
fn setting(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => "15.0 (BitVelocity)",
        "server_version_num" => "150000",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" | "time zone" => "UTC",
        "search_path" => "silver",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "transaction_isolation" | "transaction isolation level" => "read committed",
        "default_transaction_read_only" | "transaction_read_only" => "on",
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" => "C",
        _ => return None,
    })
}

struct Queries {
    parser: Arc<Parser>,
}

fn show(name: &str, value: &str) -> PgWireResult<Response> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        pgwire::api::results::FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(fields.clone());
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter([Ok(row)]),
    )))
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let statements = self.parser.statements(query).await?;
        // Each answer holds a query slot until the client reads it, and pgwire sends them
        // only after all have started: several queries in one message could hold every
        // slot. One query per message (with any BEGIN/SET/SHOW around it).
        let queries = statements
            .iter()
            .filter(|s| matches!(s, Statement::Query { .. }))
            .count();
        if queries > 1 {
            return Err(user_error(
                "0A000",
                format!("send one query per message (this one holds {queries})"),
            ));
        }
        let mut out = Vec::new();
        for statement in statements {
            out.push(
                self.respond(
                    &statement,
                    Vec::new(),
                    &Format::UnifiedText,
                    options.clone(),
                )
                .await?,
            );
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

impl Queries {
    async fn respond(
        &self,
        statement: &Statement,
        params: Vec<datafusion::common::ScalarValue>,
        format: &Format,
        options: Arc<FormatOptions>,
    ) -> PgWireResult<Response> {
        Ok(match statement {
            Statement::Empty => Response::EmptyQuery,
            Statement::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Statement::End(tag) => Response::TransactionEnd(Tag::new(tag)),
            Statement::Set(ours, tag) => {
                if let Some(on) = ours {
                    self.parser.consistent.store(*on, Ordering::Relaxed);
                }
                Response::Execution(Tag::new(tag))
            }
            Statement::Show(name, value) => show(name, value)?,
            Statement::ShowConsistent => {
                let on = self.parser.consistent.load(Ordering::Relaxed);
                show(CONSISTENT_SETTING, if on { "on" } else { "off" })?
            }
            Statement::Query { sql, .. } => {
                self.parser.answer(sql, params, format, options).await?
            }
        })
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Statement>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.statements(sql).await?;
        match statements.len() {
            0 => Ok(Statement::Empty),
            1 => Ok(statements.remove(0)),
            n => Err(user_error(
                "42601",
                format!("a prepared statement holds one statement, not {n}"),
            )),
        }
    }

    fn get_parameter_types(&self, statement: &Statement) -> PgWireResult<Vec<Type>> {
        match statement {
            Statement::Query { parameters, .. } => parameters
                .iter()
                .map(|t| match t {
                    DataType::Null => Ok(Type::UNKNOWN),
                    t => into_pg_type(t),
                })
                .collect(),
            _ => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        statement: &Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match statement {
            Statement::Query { schema, .. } => {
                arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None)
            }
            Statement::Show(..) | Statement::ShowConsistent => Ok(vec![FieldInfo::new(
                match statement {
                    Statement::Show(name, _) => name.clone(),
                    _ => CONSISTENT_SETTING.to_string(),
                },
                None,
                None,
                Type::TEXT,
                pgwire::api::results::FieldFormat::Text,
            )]),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// pgwire's own `Execute` collects every row of the portal before sending any when the
    /// client asks for all of them (`max_rows` 0, as psycopg, JDBC and tokio-postgres do): a
    /// large answer would sit whole in server memory. A query run whole here streams its
    /// rows as they are produced instead; a portal read in pieces (which pgwire holds at most
    /// `max_rows` of) and every other statement take pgwire's path.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        let portal = client.portal_store().get_portal(name);
        let streamed = match &portal {
            Some(p) if message.max_rows == 0 => {
                matches!(p.statement.statement, Statement::Query { .. })
                    && matches!(*p.state().lock().await, PortalExecutionState::Initial)
            }
            _ => false,
        };
        let (true, Some(portal)) = (streamed, portal) else {
            return self._on_execute(client, message).await;
        };
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        // Run once: executing the portal again answers no rows, as pgwire's path does.
        *portal.state().lock().await = PortalExecutionState::Finished;
        let Response::Query(answer) =
            ExtendedQueryHandler::do_query(self, client, &portal, 0).await?
        else {
            return Err(user_error(
                "XX000",
                "a query answered something other than rows".into(),
            ));
        };
        send_query_response(client, answer, false).await?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement.statement;
        let params = match statement {
            Statement::Query { parameters, .. } => {
                let types: Vec<Option<&DataType>> = parameters
                    .iter()
                    .map(|t| (!matches!(t, DataType::Null)).then_some(t))
                    .collect();
                match arrow_pg::datatypes::df::deserialize_parameters(portal, &types)? {
                    ParamValues::List(values) => values.into_iter().map(|v| v.value).collect(),
                    ParamValues::Map(_) => {
                        return Err(user_error(
                            "42P02",
                            "only positional parameters ($1, $2, ...) are accepted".into(),
                        ));
                    }
                }
            }
            _ => Vec::new(),
        };
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        self.respond(statement, params, &portal.result_column_format, options)
            .await
    }
}

/// A statement PostgreSQL's grammar rejects: refused as "not a query" when DataFusion's
/// own grammar reads it as a statement (`CREATE EXTERNAL TABLE`, `COPY`), else a syntax
/// error.
fn refused_or_syntax(sql: &str, syntax: String) -> PgWireError {
    use datafusion::sql::parser::{DFParser, Statement as DfStatement};
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    match DFParser::parse_sql_with_dialect(sql, &dialect) {
        Ok(statements)
            if statements
                .iter()
                .any(|s| !matches!(s, DfStatement::Statement(q) if matches!(**q, Sql::Query(_)))) =>
        {
            pg_error(ServingError::NotAllowed(
                "only queries are answered here (no COPY, CREATE EXTERNAL TABLE or other statements)"
                    .into(),
            ))
        }
        _ => user_error("42601", syntax),
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// What every door's error becomes on this one (PostgreSQL's SQLSTATE codes).
fn pg_error(e: ServingError) -> PgWireError {
    let code = match &e {
        ServingError::Unauthenticated(_) => "28P01",
        ServingError::PermissionDenied(_) | ServingError::NotAllowed(_) => "42501",
        ServingError::Busy { .. } => "53300",
        ServingError::ResourcesExhausted(_) => "53200",
        ServingError::ShuttingDown => "57P01",
        ServingError::NoConsistentPosition(_) => "55000",
        ServingError::Timeout(_) => "57014",
        ServingError::BadRequest(_) => "22023",
        ServingError::Query(inner) => match inner.find_root() {
            datafusion::error::DataFusionError::SQL(..) => "42601",
            datafusion::error::DataFusionError::Plan(_)
            | datafusion::error::DataFusionError::SchemaError(..) => "42P01",
            datafusion::error::DataFusionError::ResourcesExhausted(_) => "53200",
            _ => "XX000",
        },
        _ => "XX000",
    };
    user_error(code, e.to_string())
}
