//! What an operator asks of a warehouse: which tables it holds and where each stands, and
//! what each snapshot of a table did. Read from catalog metadata only (snapshot summaries),
//! never from data files, so it answers at once whatever the table size.

use std::collections::HashMap;

use iceberg::spec::Snapshot;
use iceberg::{Catalog, NamespaceIdent, TableIdent};

use crate::layout::SILVER_NAMESPACE;
use crate::layout::{BRONZE_NAMESPACE, SOURCE_TABLE_PROPERTY};
use crate::maintenance::MAINTENANCE_PROPERTY;
use crate::sink::SOURCE_LSN_PROPERTY;
use crate::{LakehouseError, Result};

/// One table of the warehouse and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// `bronze` or `silver`.
    pub layer: String,
    /// Table name inside its layer.
    pub name: String,
    /// The source table it captures (`schema.table`), as bronze records it.
    pub source: Option<String>,
    /// Live rows: change rows in bronze; current rows (data rows minus position deletes) in silver.
    pub rows: Option<u64>,
    /// Live data files.
    pub data_files: Option<u64>,
    /// Live delete files.
    pub delete_files: Option<u64>,
    /// Source position (end LSN) up to which the table is complete.
    pub source_lsn: Option<u64>,
    /// When its current snapshot was committed (ms since the Unix epoch).
    pub committed_ms: Option<i64>,
    /// Its capture stopped on an incompatible schema change.
    pub stopped: bool,
}

/// One snapshot of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot id (what `as_of` takes).
    pub id: i64,
    /// When it was committed (ms since the Unix epoch).
    pub committed_ms: i64,
    /// `append`, `overwrite`, `replace` (compaction) or `delete`.
    pub operation: String,
    /// Which maintenance task wrote it, if one did.
    pub maintenance: Option<String>,
    /// Source position it reflects.
    pub source_lsn: Option<u64>,
    /// Rows its new data files hold.
    pub added_rows: Option<u64>,
    /// Rows its position deletes remove.
    pub deleted_rows: Option<u64>,
    /// Live rows after it (as [`TableInfo::rows`]).
    pub rows: Option<u64>,
    /// Whether it is the table's current snapshot.
    pub current: bool,
}

/// Every bronze and silver table, bronze first, each layer by name.
pub async fn tables(catalog: &dyn Catalog) -> Result<Vec<TableInfo>> {
    let stopped = crate::medallion::stopped_tables(catalog).await?;
    let mut out = Vec::new();
    for layer in [BRONZE_NAMESPACE, SILVER_NAMESPACE] {
        let ns = NamespaceIdent::new(layer.to_string());
        let err = LakehouseError::iceberg(&layer);
        if !catalog.namespace_exists(&ns).await.map_err(err)? {
            continue;
        }
        let mut idents = catalog
            .list_tables(&ns)
            .await
            .map_err(LakehouseError::iceberg(&layer))?;
        idents.sort_by(|a, b| a.name().cmp(b.name()));
        for ident in idents {
            let table = catalog
                .load_table(&ident)
                .await
                .map_err(LakehouseError::iceberg(&ident))?;
            let meta = table.metadata();
            let snap = meta.current_snapshot();
            let summary = snap.map(|s| &s.summary().additional_properties);
            let count = |k: &str| summary.and_then(|p| p.get(k)).and_then(|v| v.parse().ok());
            out.push(TableInfo {
                layer: layer.to_string(),
                name: ident.name().to_string(),
                source: meta.properties().get(SOURCE_TABLE_PROPERTY).cloned(),
                rows: live_rows(summary),
                data_files: count("total-data-files"),
                delete_files: count("total-delete-files"),
                source_lsn: count(SOURCE_LSN_PROPERTY),
                committed_ms: snap.map(|s| s.timestamp_ms()),
                stopped: layer == SILVER_NAMESPACE && stopped.iter().any(|s| s == ident.name()),
            });
        }
    }
    Ok(out)
}

/// The snapshots `ident` still holds, oldest first.
pub async fn snapshots(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Vec<SnapshotInfo>> {
    let table = catalog
        .load_table(ident)
        .await
        .map_err(LakehouseError::iceberg(ident))?;
    let meta = table.metadata();
    let current = meta.current_snapshot_id();
    let mut snaps: Vec<&std::sync::Arc<Snapshot>> = meta.snapshots().collect();
    snaps.sort_by_key(|s| (s.timestamp_ms(), s.sequence_number()));
    Ok(snaps
        .into_iter()
        .map(|s| {
            let props = &s.summary().additional_properties;
            let count = |k: &str| props.get(k).and_then(|v| v.parse().ok());
            SnapshotInfo {
                id: s.snapshot_id(),
                committed_ms: s.timestamp_ms(),
                operation: s.summary().operation.as_str().to_string(),
                maintenance: props.get(MAINTENANCE_PROPERTY).cloned(),
                source_lsn: count(SOURCE_LSN_PROPERTY),
                added_rows: count("added-records"),
                deleted_rows: count("added-position-deletes"),
                rows: live_rows(Some(props)),
                current: Some(s.snapshot_id()) == current,
            }
        })
        .collect())
}

/// Data rows minus rows removed by position deletes, from a snapshot summary.
fn live_rows(summary: Option<&HashMap<String, String>>) -> Option<u64> {
    let get = |k: &str| summary?.get(k)?.parse::<u64>().ok();
    let records = get("total-records")?;
    Some(records.saturating_sub(get("total-position-deletes").unwrap_or(0)))
}
