//! The lakehouse layer: Iceberg medallion tables and the ways to read them.
//!
//! It owns the layout of change-log tables ([`ChangeLogSchema`]), the
//! [`ChangeSink`] seam that change capture writes through (with the bronze
//! Iceberg implementation, [`BronzeSink`]), and SQL access with DataFusion.
//! It builds on the `catalog` crate and must never import ingestion or any
//! façade.

pub mod bronze;
pub mod crash;
pub mod deletes;
mod error;
pub mod query;
pub mod schema;
pub mod sink;

pub use bronze::BronzeSink;
pub use error::{LakehouseError, Result};
pub use schema::{ChangeLogSchema, ColumnType, SourceColumn};
pub use sink::{ChangeSink, DiscardSink, TableProgress};
