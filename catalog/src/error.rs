//! Errors of the catalog crate.

/// What went wrong while opening or committing to a catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The warehouse directory could not be created or read.
    #[error("warehouse directory {path}: {source}")]
    Warehouse {
        /// The directory that failed.
        path: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// Another writer changed the table between our read and our commit.
    #[error("commit conflict on {table}: {source}")]
    CommitConflict {
        /// Table whose metadata pointer moved.
        table: String,
        /// The catalog's own error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// The table does not exist in the catalog.
    #[error("table {table} not found")]
    TableNotFound {
        /// The missing table.
        table: String,
    },
    /// Any other failure reported by iceberg or the catalog database.
    #[error("iceberg: {0}")]
    Iceberg(#[source] Box<iceberg::Error>),
}

impl From<iceberg::Error> for CatalogError {
    fn from(e: iceberg::Error) -> Self {
        CatalogError::Iceberg(Box::new(e))
    }
}

impl CatalogError {
    /// Whether retrying the same operation may succeed (a commit race, a busy database).
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::CommitConflict { .. } => true,
            CatalogError::Iceberg(e) => e.retryable(),
            _ => false,
        }
    }

    /// Maps an iceberg error about `table` to the matching kind.
    pub fn from_iceberg(table: impl Into<String>, e: iceberg::Error) -> Self {
        match e.kind() {
            iceberg::ErrorKind::CatalogCommitConflicts => CatalogError::CommitConflict {
                table: table.into(),
                source: Box::new(e),
            },
            iceberg::ErrorKind::TableNotFound => CatalogError::TableNotFound {
                table: table.into(),
            },
            _ => CatalogError::Iceberg(Box::new(e)),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;
