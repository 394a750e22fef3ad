//! Domain services as PostgreSQL sees them: schemas, workloads, and the managed servers
//! (PostgreSQL, SeaweedFS for S3) that tests, the demo and benchmarks start themselves.
//!
//! Domain services reach the engine only through PostgreSQL: they write
//! transactions (with audit columns and an audit history) and the engine
//! captures them by logical replication. This crate must never import any
//! engine crate (ingestion, lakehouse, catalog).

pub mod ecommerce;
mod error;
pub mod pg;
pub mod s3;

pub use error::{DomainError, Result};
pub use pg::{PgCluster, TlsFiles};
pub use s3::SeaweedFs;

/// Connects a plain (non-replication) client and drives its connection in the background.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}
