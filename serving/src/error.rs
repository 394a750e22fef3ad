//! What can go wrong while serving, each kind mapped to what every door answers.

use std::net::SocketAddr;

/// What can go wrong while serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServingError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A door stopped serving.
    #[error("the {door} door failed: {message}")]
    Door {
        /// Which door.
        door: &'static str,
        /// What its server said.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    ConfigRead {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is wrong; the message names what.
    #[error("configuration: {0}")]
    Config(String),
    /// No credentials, or credentials matching no user.
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// The principal may not read (or write) this table.
    #[error("permission denied for table {0}")]
    PermissionDenied(String),
    /// The principal may not see (or change) this namespace.
    #[error("permission denied for namespace {0}")]
    NamespaceDenied(String),
    /// No such namespace (and the principal may see it, so saying so leaks nothing).
    #[error("no such namespace: {0}")]
    NoSuchNamespace(String),
    /// No such table (and the principal may see it).
    #[error("no such table: {0}")]
    NoSuchTable(String),
    /// A namespace or table of that name exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The namespace still holds tables.
    #[error("namespace {0} is not empty: drop its tables first")]
    NamespaceNotEmpty(String),
    /// A commit's requirements no longer hold (another writer committed first): reload
    /// the table and retry.
    #[error("commit refused: {0}")]
    CommitConflict(String),
    /// A commit's outcome could not be learned: it may have applied, so its files must be
    /// kept; reload the table to see.
    #[error("commit outcome unknown: {0}")]
    CommitOutcomeUnknown(String),
    /// A request this server understands but does not carry out.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The catalog could not carry out a request.
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::CatalogError),
    /// Iceberg refused or failed a request.
    #[error("iceberg: {0}")]
    Iceberg(Box<iceberg::Error>),
    /// Every query slot is taken and the queue is full.
    #[error("busy: {running} queries running and {queued} waiting; retry later")]
    Busy {
        /// Queries running.
        running: usize,
        /// Queries waiting.
        queued: usize,
    },
    /// The query ran past its time limit and was cancelled.
    #[error("query cancelled after its time limit of {0} s")]
    Timeout(u64),
    /// The query needed more memory than its limit allows (after spilling what it could).
    #[error("the query ran out of memory: {0}")]
    ResourcesExhausted(String),
    /// The server is stopping and takes no new queries.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The statement is not one a door runs (writes, DDL, settings, file access).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The request is malformed (body, content type, parameters).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The query failed to plan or run (bad SQL, unknown table, type errors, memory).
    #[error("{0}")]
    Query(#[source] Box<datafusion::error::DataFusionError>),
    /// The lakehouse could not open the tables.
    #[error(transparent)]
    Lakehouse(#[from] lakehouse::LakehouseError),
    /// A consistent read was asked for before the ingester published a position.
    #[error("no consistent read yet: {0}")]
    NoConsistentPosition(String),
    /// A Flight SQL message could not be made or read.
    #[error("Flight SQL: {0}")]
    Flight(#[from] arrow_flight::error::FlightError),
    /// Encoding an answer failed.
    #[error("encoding the answer: {0}")]
    Encode(#[from] arrow::error::ArrowError),
}

impl From<datafusion::error::DataFusionError> for ServingError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        // A denial raised while planning (`as_of` refusing a table) keeps its kind; only a
        // planning error can be one (a value's text in an execution error cannot pose as it).
        if let datafusion::error::DataFusionError::Plan(message) = e.find_root()
            && let Some(table) = message.strip_prefix("permission denied for table ")
        {
            return ServingError::PermissionDenied(table.trim().to_string());
        }
        if let datafusion::error::DataFusionError::ResourcesExhausted(why) = e.find_root() {
            return ServingError::ResourcesExhausted(why.clone());
        }
        ServingError::Query(Box::new(e))
    }
}

impl ServingError {
    /// A short stable code for clients and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ServingError::Unauthenticated(_) => "unauthenticated",
            ServingError::PermissionDenied(_) | ServingError::NamespaceDenied(_) => {
                "permission_denied"
            }
            ServingError::NoSuchNamespace(_) | ServingError::NoSuchTable(_) => "not_found",
            ServingError::AlreadyExists(_) | ServingError::NamespaceNotEmpty(_) => "conflict",
            ServingError::CommitConflict(_) => "commit_conflict",
            ServingError::CommitOutcomeUnknown(_) => "commit_unknown",
            ServingError::Unsupported(_) => "unsupported",
            ServingError::Busy { .. } => "busy",
            ServingError::ResourcesExhausted(_) => "resources_exhausted",
            ServingError::ShuttingDown => "shutting_down",
            ServingError::Timeout(_) => "timeout",
            ServingError::NoConsistentPosition(_) => "no_consistent_position",
            ServingError::NotAllowed(_) => "not_allowed",
            ServingError::BadRequest(_) => "bad_request",
            ServingError::Query(_) => "query_error",
            _ => "internal",
        }
    }
}

/// Results of this crate.
pub type Result<T, E = ServingError> = std::result::Result<T, E>;
