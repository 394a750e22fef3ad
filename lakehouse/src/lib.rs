//! The lakehouse layer: Iceberg medallion tables and the ways to read them.
//!
//! It owns the layout of change-log tables ([`ChangeLogSchema`]), the
//! [`ChangeSink`] seam that change capture writes through (the bronze change log
//! [`BronzeSink`], the silver current state [`SilverSink`], both in step through
//! [`MedallionSink`]), and SQL access with DataFusion.
//! It builds on the `catalog` crate and must never import ingestion or any
//! façade.

pub mod crash;
mod error;
pub mod layout;
pub mod maintenance;
pub mod memory;
pub mod naming;
pub mod schema;
pub mod sink;

mod read;
mod table_files;
mod write;
pub use read::{inspect, query, scan};
pub use table_files::{deletes, files, pk_index};
pub use write::{bronze, medallion, silver};

pub use bronze::BronzeSink;
/// The retry policy every layer shares (re-exported so capture need not reach the catalog).
pub use catalog::Retry;
pub use error::{LakehouseError, Result};
pub use medallion::MedallionSink;
pub use memory::MemoryBudget;
pub use schema::{ChangeLogSchema, ColumnType, SourceColumn};
pub use silver::SilverSink;
pub use sink::{ChangeSink, DiscardSink, TableProgress};
