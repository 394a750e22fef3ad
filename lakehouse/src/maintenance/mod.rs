//! Table maintenance: compaction, snapshot expiry and orphan-file removal.
//!
//! iceberg-rust 0.10 has none of these (ADR 0005), so they are built on our commit path:
//! - **Compaction** ([`compact`]) rewrites the data files enough of which is deleted, plus
//!   small files when a partition has many, into clean files per partition, at most a
//!   byte budget a run ([`select`] decides). In the same `replace` snapshot it drops the
//!   delete files that name only rewritten files and merges the others when there are too
//!   many. It never loses a concurrent commit: when an ingest commit lands first, the
//!   compaction reloads the table, translates the new position deletes that hit rewritten
//!   files onto the new files (it knows where each kept row went) and commits again on the
//!   new base.
//! - **Expiry** removes snapshots older than an age, always keeping the newest ones.
//! - **Orphan removal** deletes files under the table's location that no retained
//!   snapshot or metadata file references and that are older than a grace period
//!   (so files of a commit in flight are never touched).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use catalog::commit::CommitPath;
use catalog::{Catalog, TableIdent};
use iceberg::table::Table;

use crate::{LakehouseError, Result};

mod compact;
mod select;
pub use compact::compact;

/// Snapshot-summary key naming the maintenance task that wrote a snapshot.
pub const MAINTENANCE_PROPERTY: &str = "bitvelocity.maintenance";
/// How often a compaction re-bases onto concurrent commits before giving up for this round.
const MAX_REBASES: usize = 64;

/// Thresholds and ages of one maintenance run.
#[derive(Debug, Clone)]
pub struct MaintenanceOptions {
    /// Size compacted files roll over at.
    pub target_file_bytes: u64,
    /// A data file is rewritten once at least this fraction of its rows is deleted.
    pub delete_ratio: f64,
    /// Data bytes one compaction run reads at most (the most deleted files first; a
    /// wholly deleted file costs nothing), so a run's cost does not grow with the table.
    pub max_rewrite_bytes: u64,
    /// Delete files left after a compaction are merged once a table has this many.
    pub max_delete_files: usize,
    /// Files below this size are compacted together…
    pub small_file_bytes: u64,
    /// …once a partition has at least this many of them.
    pub min_small_files: usize,
    /// Snapshots older than this are expired…
    pub expire_older_than: Duration,
    /// …except the newest this many of the current lineage.
    pub retain_last: usize,
    /// Unreferenced files younger than this are left alone (a commit may be in flight).
    pub orphan_older_than: Duration,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        Self {
            target_file_bytes: 256 * 1024 * 1024,
            delete_ratio: 0.2,
            max_rewrite_bytes: 2 * 1024 * 1024 * 1024,
            max_delete_files: 32,
            small_file_bytes: 32 * 1024 * 1024,
            min_small_files: 8,
            expire_older_than: Duration::from_secs(3600),
            retain_last: 20,
            orphan_older_than: Duration::from_secs(3600),
        }
    }
}

/// What one maintenance run did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Data files replaced by compaction.
    pub data_files_rewritten: usize,
    /// Delete files dropped (or merged) by compaction.
    pub delete_files_removed: usize,
    /// Delete files compaction wrote by merging others.
    pub delete_files_written: usize,
    /// Clean data files written by compaction.
    pub files_written: usize,
    /// Rows carried into the new files.
    pub rows_kept: u64,
    /// Deleted rows purged.
    pub rows_purged: u64,
    /// Concurrent position deletes translated onto the new files.
    pub deletes_remapped: u64,
    /// Times the compaction re-based onto a concurrent commit.
    pub rebases: usize,
    /// Compaction gave up because another one replaced the same files first.
    pub compaction_superseded: bool,
    /// Compaction gave up after losing the commit race too often (its files removed; the
    /// table unchanged); the next run tries again.
    pub compaction_abandoned: bool,
    /// Snapshots expired.
    pub snapshots_expired: usize,
    /// Unreferenced files deleted.
    pub orphans_removed: usize,
    /// Bytes those files held.
    pub orphan_bytes: u64,
}

/// Compacts, expires and sweeps one table.
pub async fn maintain_table(
    catalog: &dyn Catalog,
    commits: &CommitPath,
    ident: &TableIdent,
    opts: &MaintenanceOptions,
) -> Result<MaintenanceReport> {
    let mut report = compact(catalog, commits, ident, opts).await?;
    report.snapshots_expired = expire_snapshots(
        catalog,
        commits,
        ident,
        opts.expire_older_than,
        opts.retain_last,
    )
    .await?;
    let (n, bytes) = remove_orphans(catalog, ident, opts.orphan_older_than).await?;
    report.orphans_removed = n;
    report.orphan_bytes = bytes;
    Ok(report)
}

async fn load(catalog: &dyn Catalog, ident: &TableIdent) -> Result<Table> {
    catalog
        .load_table(ident)
        .await
        .map_err(LakehouseError::iceberg(ident))
}

/// Removes snapshots older than `older_than`, keeping the newest `retain_last` of the current lineage.
pub async fn expire_snapshots(
    catalog: &dyn Catalog,
    commits: &CommitPath,
    ident: &TableIdent,
    older_than: Duration,
    retain_last: usize,
) -> Result<usize> {
    let mut retry = catalog::Retry::commit_race();
    for _ in 0..MAX_REBASES {
        let table = load(catalog, ident).await?;
        let meta = table.metadata();
        let mut keep = HashSet::new();
        let mut at = meta.current_snapshot().cloned();
        while let Some(s) = at {
            if keep.len() >= retain_last.max(1) {
                break;
            }
            keep.insert(s.snapshot_id());
            at = s
                .parent_snapshot_id()
                .and_then(|p| meta.snapshot_by_id(p).cloned());
        }
        let cutoff = now_ms() - older_than.as_millis() as i64;
        let expired: Vec<i64> = meta
            .snapshots()
            .filter(|s| !keep.contains(&s.snapshot_id()) && s.timestamp_ms() < cutoff)
            .map(|s| s.snapshot_id())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        match commits
            .commit_metadata(catalog, &table, |b| Ok(b.remove_snapshots(&expired)))
            .await
        {
            Ok(_) => {
                tracing::info!(table = %ident, expired = expired.len(), "expired snapshots");
                return Ok(expired.len());
            }
            Err(e) if e.is_retryable() && retry.pause().await => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Deletes files under the table's location that nothing retained references and that are
/// older than `older_than`; returns (files, bytes). Lists through the warehouse's storage, so
/// it works the same on local disk and object storage.
///
/// The listing comes first and the table is loaded after it, so a commit that lands while
/// the folder is listed is seen as referencing its files. Files written but not yet committed
/// are protected by age only: callers keep `older_than` above the longest a writer holds a
/// file uncommitted (the CLI enforces a floor while an ingester holds the warehouse).
pub async fn remove_orphans(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    older_than: Duration,
) -> Result<(usize, u64)> {
    let Some(cutoff) = SystemTime::now().checked_sub(older_than) else {
        return Ok((0, 0)); // nothing is that old: removal is off
    };
    let name = ident.to_string();
    let before = load(catalog, ident).await?;
    let storage = catalog::ObjectStorage::from_config(before.file_io().config());
    let root = format!("{}/", before.metadata().location().trim_end_matches('/'));
    let index_dir = format!("/{}/", crate::pk_index::INDEX_DIR);
    let candidates: Vec<_> = storage
        .list(&root)
        .await
        .map_err(LakehouseError::iceberg(&name))?
        .into_iter()
        .filter(|f| !f.location.contains(&index_dir) && f.modified <= cutoff)
        .collect();
    if candidates.is_empty() {
        return Ok((0, 0));
    }
    let table = load(catalog, ident).await?;
    let referenced = referenced_files(&table).await?;
    let file_io = table.file_io();
    let mut removed = 0;
    let mut bytes = 0;
    for f in candidates {
        if referenced.contains(&norm(&f.location)) {
            continue;
        }
        file_io
            .delete(&f.location)
            .await
            .map_err(LakehouseError::iceberg(&name))?;
        removed += 1;
        bytes += f.size;
    }
    if removed > 0 {
        tracing::info!(table = %name, files = removed, bytes, "removed orphan files");
    }
    Ok((removed, bytes))
}

/// Every file a retained snapshot or metadata version of `table` references.
async fn referenced_files(table: &Table) -> Result<HashSet<String>> {
    let meta = table.metadata();
    let ident = table.identifier().to_string();
    let file_io = table.file_io();
    let mut referenced: HashSet<String> = HashSet::new();
    if let Some(m) = table.metadata_location() {
        referenced.insert(norm(m));
    }
    for entry in meta.metadata_log() {
        referenced.insert(norm(&entry.metadata_file));
    }
    let mut manifests_seen = HashSet::new();
    for s in meta.snapshots() {
        referenced.insert(norm(s.manifest_list()));
        let list = table
            .manifest_list_reader(s)
            .load()
            .await
            .map_err(LakehouseError::iceberg(&ident))?;
        for m in list.entries() {
            referenced.insert(norm(&m.manifest_path));
            if !manifests_seen.insert(m.manifest_path.clone()) {
                continue;
            }
            let manifest = m
                .load_manifest(file_io)
                .await
                .map_err(LakehouseError::iceberg(&ident))?;
            for e in manifest.entries() {
                referenced.insert(norm(e.file_path()));
            }
        }
    }
    Ok(referenced)
}

/// One spelling per file: `file:///a`, `file:/a` and `/a` name the same local file.
fn norm(location: &str) -> String {
    if let Some(rest) = location.strip_prefix("file://") {
        rest.to_string()
    } else if let Some(rest) = location.strip_prefix("file:") {
        rest.to_string()
    } else {
        location.to_string()
    }
}

/// Maintains every bronze and silver table of the catalog (or only `only`, `namespace.table`).
pub async fn maintain_warehouse(
    catalog: &dyn Catalog,
    commits: &CommitPath,
    only: Option<&str>,
    opts: &MaintenanceOptions,
) -> Result<Vec<(TableIdent, MaintenanceReport)>> {
    let mut out = Vec::new();
    let mut found = false;
    for ns in [
        crate::layout::BRONZE_NAMESPACE,
        crate::layout::SILVER_NAMESPACE,
    ] {
        let ns = catalog::NamespaceIdent::new(ns.to_string());
        if !catalog
            .namespace_exists(&ns)
            .await
            .map_err(LakehouseError::iceberg(&ns.to_url_string()))?
        {
            continue;
        }
        let mut tables = catalog
            .list_tables(&ns)
            .await
            .map_err(LakehouseError::iceberg(&ns.to_url_string()))?;
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        for ident in tables {
            if only.is_some_and(|o| o != ident.to_string() && o != ident.name()) {
                continue;
            }
            found = true;
            let report = maintain_table(catalog, commits, &ident, opts).await?;
            out.push((ident, report));
        }
    }
    if let (Some(name), false) = (only, found) {
        return Err(LakehouseError::NoSuchTable(name.to_string()));
    }
    Ok(out)
}
