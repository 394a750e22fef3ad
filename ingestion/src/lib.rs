//! Change capture: PostgreSQL logical replication (pgoutput) into lakehouse sinks.
//!
//! It owns the replication protocol client, the pgoutput decoder, the
//! mapping of PostgreSQL types onto lakehouse column types, the initial copy
//! and the exactly-once capture loop ([`Ingester`]). It writes only through
//! the lakehouse's [`lakehouse::ChangeSink`] seam and must never import a
//! façade crate or reach the catalog directly.

pub mod changes;
mod error;
mod lsn;
pub mod pgoutput;
pub mod pipeline;
pub mod progress;
pub mod replication;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod transport;
pub mod value;

pub use error::{IngestError, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use pipeline::{IngestConfig, Ingester};
pub use progress::{IngestMetrics, IngestPhase, IngestReport};
