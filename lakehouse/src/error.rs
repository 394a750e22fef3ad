//! Errors of the lakehouse crate.

/// What went wrong while writing or reading lakehouse tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LakehouseError {
    /// The catalog could not be opened or refused a commit.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// An existing table does not have the layout the source now needs.
    #[error("table {table} does not match its source: {message}")]
    SchemaMismatch {
        /// The lakehouse table.
        table: String,
        /// What differs.
        message: String,
    },
    /// A source schema change Iceberg cannot follow without breaking old files.
    #[error("table {table}: incompatible source schema change: {change}")]
    IncompatibleSchema {
        /// The lakehouse table.
        table: String,
        /// The change and why it is refused.
        change: String,
    },
    /// A snapshot summary carries a source position we cannot read.
    #[error("table {table}: bad source position {value:?} in snapshot summary")]
    BadProgress {
        /// The lakehouse table.
        table: String,
        /// The stored text.
        value: String,
    },
    /// While a commit retried, the table's source position moved: another ingester, or an
    /// in-doubt commit of ours that landed after all. Nothing more is committed on top.
    #[error(
        "table {table}: its source position moved from {planned:?} to {found:?} while committing {committing}; is a second ingester running?"
    )]
    PositionMoved {
        /// The lakehouse table.
        table: String,
        /// The position the batch was planned on.
        planned: Option<u64>,
        /// The position found after reloading.
        found: Option<u64>,
        /// The position being committed.
        committing: u64,
    },
    /// Every name a source table may take is held by other source tables.
    #[error(
        "source table {source_table}: every name it may take ({names}) is held by another source table"
    )]
    NameTaken {
        /// The source table, `schema.table`.
        source_table: String,
        /// The names tried.
        names: String,
    },
    /// A write named a table the sink was not prepared for.
    #[error("table #{0} was not prepared")]
    UnknownTable(usize),
    /// Writing files or committing a snapshot failed.
    #[error("iceberg on {table}: {source}")]
    Iceberg {
        /// The lakehouse table.
        table: String,
        /// The iceberg error.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// Building Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The sink cannot do what was asked of it.
    #[error("this sink does not support {what}")]
    Unsupported {
        /// What was asked.
        what: String,
    },
    /// No bronze or silver table has the name asked for.
    #[error("no bronze or silver table named {0}")]
    NoSuchTable(String),
    /// A manifest names a partition spec the table's metadata does not hold.
    #[error("table {table}: partition spec {spec_id} is missing from its metadata")]
    MissingPartitionSpec {
        /// The lakehouse table.
        table: String,
        /// The spec id named.
        spec_id: i32,
    },
    /// A data file held another number of rows than its manifest (or a writer) says.
    #[error("{file}: {read} rows read, {expected} expected")]
    RowCountMismatch {
        /// The file (or files) read.
        file: String,
        /// Rows found.
        read: u64,
        /// Rows the metadata promised.
        expected: u64,
    },
    /// A table holds an equality-delete file (written by another engine): BitVelocity
    /// writes and reads position deletes only.
    #[error(
        "table {table}: equality-delete file {file} (BitVelocity writes position deletes only)"
    )]
    EqualityDeletes {
        /// The lakehouse table.
        table: String,
        /// The file.
        file: String,
    },
    /// A data or delete file does not hold what its metadata promises, or was asked for rows
    /// it does not have.
    #[error("bad data file: {0}")]
    BadDataFile(String),
    /// A key-index checkpoint cannot be read as one (it is then rebuilt from the table).
    #[error("unusable key index checkpoint: {0}")]
    BadIndexCheckpoint(String),
    /// A row position beyond what the key index stores (files hold fewer than 2^32 rows).
    #[error("row position {0} beyond 2^32")]
    PositionOverflow(u64),
    /// Silver's scratch file lost rows it had spilled.
    #[error("silver's scratch file: {0}")]
    ScratchLost(String),
    /// A data-file writer was used again after failing; `first` is its original error.
    #[error("the data-file writer of {table} failed earlier: {first}")]
    WriterFailed {
        /// The table written.
        table: String,
        /// The error the writer failed with.
        first: String,
    },
    /// Silver's planning found its own bookkeeping inconsistent (a bug, reported rather than
    /// committed).
    #[error("silver planning invariant broken: {0}")]
    PlanInvariant(String),
    /// A bronze batch lacks a column every change row has.
    #[error("bronze batch without its {0} column")]
    MissingColumn(&'static str),
    /// Silver's scratch file for a transaction larger than its memory budget failed.
    #[error("silver's scratch file for pending rows: {op}: {source}")]
    Spill {
        /// What was being done (creating, writing, reading back).
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A silver table is ahead of the bronze change log it is rebuilt from.
    #[error("table {table}: silver is at source position {silver}, ahead of bronze at {bronze}")]
    SilverAhead {
        /// The lakehouse table.
        table: String,
        /// Source position of silver.
        silver: u64,
        /// Source position of bronze.
        bronze: u64,
    },
    /// Consistent reads were asked for before silver recorded a consistent position.
    #[error("no consistent position recorded yet: {0}")]
    NoConsistentPosition(String),
    /// A query failed (the DataFusion error follows in the source chain).
    #[error("query failed")]
    Query(#[source] Box<datafusion::error::DataFusionError>),
}

impl LakehouseError {
    /// Whether a commit lost the compare-and-swap to another writer (and may be retried on
    /// the new state for as long as [`catalog::Retry::commit_race`] allows).
    pub fn is_conflict(&self) -> bool {
        matches!(self, LakehouseError::Catalog(e) if e.is_conflict())
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LakehouseError::Catalog(e) => e.is_retryable(),
            LakehouseError::Iceberg { source, .. } => source.retryable(),
            _ => false,
        }
    }

    pub(crate) fn iceberg(
        table: &impl std::fmt::Display,
    ) -> impl FnOnce(iceberg::Error) -> Self + '_ {
        move |source| LakehouseError::Iceberg {
            table: table.to_string(),
            source: Box::new(source),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = LakehouseError> = std::result::Result<T, E>;

impl From<datafusion::error::DataFusionError> for LakehouseError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        LakehouseError::Query(Box::new(e))
    }
}
