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
    /// The warehouse location names a scheme or shape we cannot store tables in.
    #[error("warehouse {location}: {reason}")]
    UnsupportedWarehouse {
        /// The location as given.
        location: String,
        /// Why it was refused.
        reason: String,
    },
    /// An object-store warehouse was given without a catalog database.
    #[error(
        "warehouse {location} is on object storage: name its catalog with --catalog postgres://… (or sqlite:<path>)"
    )]
    CatalogRequired {
        /// The warehouse location.
        location: String,
    },
    /// The catalog URL is not one we can open.
    #[error("catalog {url}: {reason}")]
    UnsupportedCatalog {
        /// The URL, password redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The catalog database could not be reached or answered with an error.
    #[error("catalog database {url}: {source}")]
    CatalogDatabase {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// iceberg's SQL catalog could not be opened on the catalog database.
    #[error("opening catalog {url}: {source}")]
    CatalogOpen {
        /// The URL, password redacted.
        url: String,
        /// iceberg's error.
        #[source]
        source: Box<iceberg::Error>,
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
    /// The pointer swap was sent but whether it applied could not be learned: the new
    /// snapshot may be visible. Its files must be kept; reload the table to find out.
    #[error(
        "commit outcome unknown on {table} (metadata {metadata_location}); its files are kept: {source}"
    )]
    CommitOutcomeUnknown {
        /// The table.
        table: String,
        /// The metadata file the swap would have published.
        metadata_location: String,
        /// The last error seen while resolving.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The commit is published, but the table could not be loaded back afterwards.
    #[error(
        "committed {table} (metadata {metadata_location}) but could not load it back: {source}"
    )]
    CommittedButUnloaded {
        /// The table.
        table: String,
        /// The metadata file now current.
        metadata_location: String,
        /// iceberg's error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// Another process holds the warehouse's lease (a second ingester, say).
    #[error(
        "the warehouse's {name} lease is held by {holder}: another {name} runs on this warehouse (stop it, or wait for its lease to expire)"
    )]
    LeaseHeld {
        /// The lease.
        name: String,
        /// Its holder and owner.
        holder: String,
    },
    /// A lease renewal did not answer in time.
    #[error("renewing the warehouse's {name} lease timed out")]
    LeaseRenewalTimedOut {
        /// The lease.
        name: String,
    },
    /// The table does not exist in the catalog.
    #[error("table {table} not found")]
    TableNotFound {
        /// The missing table.
        table: String,
    },
    /// Any other failure reported by iceberg (metadata, manifests, storage).
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
    /// An unknown commit outcome is not: the caller must first learn what was committed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::CommitConflict { .. } => true,
            CatalogError::Iceberg(e) => e.retryable(),
            _ => false,
        }
    }

    /// Whether a commit lost the compare-and-swap to another writer: retried on the new
    /// state for as long as [`crate::Retry::commit_race`] allows.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CatalogError::CommitConflict { .. })
    }

    /// Whether the operation may have been committed although it reported an error.
    pub fn may_have_committed(&self) -> bool {
        matches!(
            self,
            CatalogError::CommitOutcomeUnknown { .. } | CatalogError::CommittedButUnloaded { .. }
        )
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
