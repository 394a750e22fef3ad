//! Errors of the domains crate.

/// What went wrong while running a managed server or a domain workload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// The managed PostgreSQL server could not be set up, started or stopped.
    #[error("managed postgres: {0}")]
    Server(String),
    /// A statement of the domain schema or workload failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Local file or process I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this crate.
pub type Result<T, E = DomainError> = std::result::Result<T, E>;
