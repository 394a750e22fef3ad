//! Errors of the ingestion crate.

use crate::Lsn;

/// What stopped change capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The connection URL could not be understood.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// The server could not be reached.
    #[error("cannot connect to PostgreSQL at {addr}: {source}")]
    Unreachable {
        /// host:port tried.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The server does not offer TLS and the URL's `sslmode` demands it.
    #[error("PostgreSQL at {addr} does not offer TLS, and sslmode demands it")]
    TlsRefused {
        /// Where.
        addr: String,
    },
    /// The TLS handshake failed (a certificate that does not check out, say).
    #[error("TLS with PostgreSQL at {addr} failed: {source}")]
    Tls {
        /// Where.
        addr: String,
        /// The handshake error (rustls's reason inside).
        #[source]
        source: std::io::Error,
    },
    /// The root certificates `sslrootcert` names could not be used.
    #[error("root certificates from {path}: {reason}")]
    RootCert {
        /// The file (or the system store).
        path: String,
        /// Why not.
        reason: String,
    },
    /// rustls refused the TLS settings themselves.
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The server refused the login or the replication request.
    #[error("PostgreSQL refused the connection: {0}")]
    Auth(String),
    /// The server reported an error (SQLSTATE and message).
    #[error("PostgreSQL error {code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Primary message, with detail when present.
        message: String,
    },
    /// A regular (non-replication) client call failed.
    #[error("PostgreSQL: {0}")]
    Client(#[from] tokio_postgres::Error),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The publication does not exist or has no tables.
    #[error("publication {0:?} does not exist")]
    PublicationNotFound(String),
    /// A source column has a type we cannot represent losslessly.
    #[error("unsupported type: table {table}, column {column} has type {type_name}")]
    UnsupportedType {
        /// Qualified source table.
        table: String,
        /// Column name.
        column: String,
        /// PostgreSQL type name.
        type_name: String,
    },
    /// A value could not be converted to its column's type.
    #[error("bad value in {table}.{column}: {message}")]
    BadValue {
        /// Source table.
        table: String,
        /// Column name.
        column: String,
        /// What was wrong, with the value.
        message: String,
    },
    /// The replication slot is missing or was taken over.
    #[error("replication slot {slot}: {message}")]
    Slot {
        /// The slot name.
        slot: String,
        /// What is wrong with it.
        message: String,
    },
    /// The change stream skipped over a position we still needed.
    #[error("change stream gap: needed changes after {needed}, server resumes at {server}")]
    Gap {
        /// The oldest position we still need.
        needed: Lsn,
        /// Where the server will start.
        server: Lsn,
    },
    /// A source table's columns changed in a way the lakehouse cannot follow.
    #[error(
        "incompatible schema change of {table}: {change}; this table's ingest stops (other tables go on); resync it by dropping its bronze and silver tables and restarting"
    )]
    SchemaChanged {
        /// The source table.
        table: String,
        /// What changed.
        change: String,
    },
    /// The sink (lakehouse) failed; nothing past its last commit is confirmed.
    #[error(transparent)]
    Sink(#[from] lakehouse::LakehouseError),
    /// A source was used before it was opened (or a step came out of order): a bug in the
    /// caller, never retried.
    #[error("change source used out of order: {call}")]
    NotOpen {
        /// The call that came too early.
        call: &'static str,
    },
    /// Socket I/O failed mid-stream.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The task reading an initial copy ended without an answer (the runtime is shutting
    /// down); nothing of the copy past its last piece is committed.
    #[error("the reader of the copy of {0} was cancelled")]
    CopyReaderCancelled(String),
}

impl IngestError {
    /// Whether reconnecting and resuming from the last commit may succeed: the connection
    /// broke or could not be made, the server is shutting down or restarting, the slot is
    /// still held by our previous, dying session (see `transient_sqlstate`), or the
    /// lakehouse reported a transient failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Io(_) | IngestError::Unreachable { .. } => true,
            IngestError::Server { code, .. } => transient_sqlstate(code),
            IngestError::Client(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| transient_sqlstate(c.code()))
                    || (e.as_db_error().is_none()
                        && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()))
            }
            IngestError::Sink(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl IngestError {
    /// Whether the replication slot is held by another session (55006): our previous run's,
    /// still going away, or a second consumer's.
    pub fn is_slot_in_use(&self) -> bool {
        match self {
            IngestError::Server { code, .. } => code == "55006",
            IngestError::Client(e) => e.code().is_some_and(|c| c.code() == "55006"),
            _ => false,
        }
    }
}

/// SQLSTATEs after which the same request may succeed on a new connection: connection
/// failures (08000, 08001, 08003, 08006), the server shutting down, crashing or starting up
/// (57P01, 57P02, 57P03), too many connections (53300), and the slot still held by a session
/// that is going away (55006). Not statement timeouts or cancels, protocol violations or a
/// dropped database: those repeat.
fn transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "08000" | "08001" | "08003" | "08006" | "57P01" | "57P02" | "57P03" | "53300" | "55006"
    )
}

/// Result alias of this crate.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
