//! Change capture: PostgreSQL logical replication (pgoutput) into lakehouse sinks.
//!
//! It owns the replication protocol client, the pgoutput decoder, the
//! mapping of PostgreSQL types onto lakehouse column types, the initial copy
//! and the exactly-once capture loop ([`Ingester`]). It writes only through
//! the lakehouse's [`lakehouse::ChangeSink`] seam and must never import a
//! façade crate or reach the catalog directly.

pub mod change_source;
pub mod changes;
mod copy_binary;
mod error;
mod lsn;
pub mod pg_source;
pub mod pgoutput;
pub mod pipeline;
pub mod progress;
pub mod replication;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod transport;
pub mod value;

pub use change_source::{ChangeSource, ChangeStream, StreamEvent};
pub use error::{IngestError, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use pg_source::PgSource;
pub use pipeline::{IngestConfig, Ingester, Pipeline, PipelineConfig};
pub use progress::{IngestMetrics, IngestPhase, IngestReport};
