//! Table maintenance: compaction, snapshot expiry and orphan-file removal.
//!
//! iceberg-rust 0.10 has none of these (ADR 0005), so they are built on our commit path:
//! - **Compaction** rewrites every data file that has deleted rows, plus small files
//!   when there are enough of them, into clean files per partition, and drops every
//!   delete file in the same `replace` snapshot. It never loses a concurrent commit:
//!   when an ingest commit lands first, the compaction reloads the table, translates
//!   the new position deletes that hit rewritten files onto the new files (it knows
//!   where each kept row went) and commits again on the new base.
//! - **Expiry** removes snapshots older than an age, always keeping the newest ones.
//! - **Orphan removal** deletes files under the table's location that no retained
//!   snapshot or metadata file references and that are older than a grace period
//!   (so files of a commit in flight are never touched).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use catalog::commit::{CommitPath, RowDelta};
use catalog::{Catalog, TableIdent};
use iceberg::spec::{DataFile, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

use crate::files::{live_files, read_position_deletes, read_projected};
use crate::sink::{COPY_PIECE_PROPERTY, SOURCE_LSN_PROPERTY};
use crate::{LakehouseError, Result};

/// Snapshot-summary key naming the maintenance task that wrote a snapshot.
pub const MAINTENANCE_PROPERTY: &str = "bitvelocity.maintenance";
/// How often a compaction re-bases onto concurrent commits before giving up for this round.
const MAX_REBASES: usize = 64;

/// Thresholds and ages of one maintenance run.
#[derive(Debug, Clone)]
pub struct MaintenanceOptions {
    /// Size compacted files roll over at.
    pub target_file_bytes: u64,
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
    /// Delete files dropped by compaction.
    pub delete_files_removed: usize,
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

/// Rewrites data files with deleted rows (and runs of small files) into clean files.
pub async fn compact(
    catalog: &dyn Catalog,
    commits: &CommitPath,
    ident: &TableIdent,
    opts: &MaintenanceOptions,
) -> Result<MaintenanceReport> {
    let mut report = MaintenanceReport::default();
    let base = load(catalog, ident).await?;
    let file_io = base.file_io().clone();
    let live = live_files(&base).await?;
    let mut deleted: HashMap<String, HashSet<u64>> = HashMap::new();
    for d in &live.deletes {
        for (path, pos) in read_position_deletes(&file_io, d.file.file_path()).await? {
            deleted.entry(path).or_default().insert(pos);
        }
    }
    // Group the files to rewrite by partition: a data file never mixes partitions.
    let mut small_per_partition: HashMap<(i32, Struct), usize> = HashMap::new();
    for f in &live.data {
        if f.file.file_size_in_bytes() < opts.small_file_bytes {
            *small_per_partition
                .entry((f.spec_id, f.file.partition().clone()))
                .or_default() += 1;
        }
    }
    let mut groups: HashMap<(i32, Struct), Vec<&DataFile>> = HashMap::new();
    for f in &live.data {
        let part = (f.spec_id, f.file.partition().clone());
        let small = f.file.file_size_in_bytes() < opts.small_file_bytes
            && small_per_partition.get(&part).copied().unwrap_or(0) >= opts.min_small_files;
        if small || deleted.contains_key(f.file.file_path()) {
            groups.entry(part).or_default().push(&f.file);
        }
    }
    // A partition with a single clean file to "rewrite" gains nothing.
    groups.retain(|_, files| files.len() > 1 || deleted.contains_key(files[0].file_path()));
    if groups.is_empty() && live.deletes.is_empty() {
        return Ok(report);
    }

    let meta = base.metadata();
    let schema = meta.current_schema().clone();
    let arrow = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&schema).map_err(LakehouseError::iceberg(ident))?,
    );
    // Where each kept row went: old path → per old position, index into `placed` (u32::MAX: purged).
    let mut remap: HashMap<String, Vec<u32>> = HashMap::new();
    let mut placed: Vec<(u32, u32)> = Vec::new(); // (new file number, position)
    let mut new_files: Vec<DataFile> = Vec::new();
    let mut new_parts: Vec<(i32, Struct)> = Vec::new();
    for ((spec_id, partition), files) in &groups {
        let spec = meta
            .partition_spec_by_id(*spec_id)
            .ok_or_else(|| {
                LakehouseError::Corrupt(format!("{ident}: partition spec {spec_id} missing"))
            })?
            .clone();
        let key = (!spec.fields().is_empty())
            .then(|| PartitionKey::new(spec.as_ref().clone(), schema.clone(), partition.clone()));
        let mut writer = crate::files::data_writer(
            &base,
            base.metadata().current_schema().clone(),
            opts.target_file_bytes as usize,
            "compact-",
        )?
        .build(key)
        .await
        .map_err(LakehouseError::iceberg(ident))?;
        let first_new = new_files.len() as u32;
        let mut group_rows: u64 = 0;
        for f in files {
            let path = f.file_path();
            let gone = deleted.get(path);
            let mut map = vec![u32::MAX; f.record_count() as usize];
            let mut pos: u64 = 0;
            for batch in read_projected(&file_io, path, &arrow, None).await? {
                let keep: BooleanArray = (0..batch.num_rows() as u64)
                    .map(|i| {
                        let p = pos + i;
                        let kept = !gone.is_some_and(|g| g.contains(&p));
                        if kept {
                            if let Some(slot) = map.get_mut(p as usize) {
                                *slot = (placed.len() + group_rows as usize) as u32;
                            }
                            group_rows += 1;
                        } else {
                            report.rows_purged += 1;
                        }
                        Some(kept)
                    })
                    .collect();
                pos += batch.num_rows() as u64;
                let kept = filter_record_batch(&batch, &keep)?;
                if kept.num_rows() > 0 {
                    writer
                        .write(kept)
                        .await
                        .map_err(LakehouseError::iceberg(ident))?;
                }
            }
            if pos != f.record_count() {
                return Err(LakehouseError::Corrupt(format!(
                    "{path}: {pos} rows read, manifest says {}",
                    f.record_count()
                )));
            }
            remap.insert(path.to_string(), map);
        }
        let written = writer
            .close()
            .await
            .map_err(LakehouseError::iceberg(ident))?;
        // Row k of this group sits in the file whose cumulative count first exceeds k.
        let mut k = 0u64;
        for (i, w) in written.iter().enumerate() {
            for p in 0..w.record_count() {
                placed.push((first_new + i as u32, p as u32));
                k += 1;
            }
        }
        if k != group_rows {
            return Err(LakehouseError::Corrupt(format!(
                "{ident}: compaction wrote {k} of {group_rows} rows"
            )));
        }
        report.data_files_rewritten += files.len();
        new_parts.extend(written.iter().map(|_| (*spec_id, partition.clone())));
        new_files.extend(written);
    }
    report.files_written = new_files.len();
    report.rows_kept = placed.len() as u64;
    crate::crash::point("maintenance.after_files_written");

    let mut removed: HashSet<String> = groups
        .values()
        .flatten()
        .map(|f| f.file_path().to_string())
        .collect();
    let rewritten = removed.clone();
    // Every live delete file names only rewritten (or already dead) files: all go.
    removed.extend(live.deletes.iter().map(|d| d.file.file_path().to_string()));
    report.delete_files_removed = live.deletes.len();
    let mut handled: HashSet<String> = live
        .deletes
        .iter()
        .map(|d| d.file.file_path().to_string())
        .collect();
    let mut translated: Vec<(String, i64)> = Vec::new();
    let mut translated_files: Vec<DataFile> = Vec::new();
    let mut current = base;
    let mut retry = catalog::Retry::commit_race();
    for attempt in 0..=MAX_REBASES {
        let mut properties =
            HashMap::from([(MAINTENANCE_PROPERTY.to_string(), "compaction".to_string())]);
        // The source position (or the unfinished copy) stays what the replaced snapshot
        // says: compaction changes no row.
        if let Some(summary) = current.metadata().current_snapshot().map(|s| s.summary()) {
            for key in [SOURCE_LSN_PROPERTY, COPY_PIECE_PROPERTY] {
                if let Some(v) = summary.additional_properties.get(key) {
                    properties.insert(key.to_string(), v.clone());
                }
            }
        }
        let delta = RowDelta {
            data_files: new_files.clone(),
            delete_files: translated_files.clone(),
            removed_files: removed.clone(),
            remove_all: false,
            properties,
            // Rows are rewritten, never changed: readers may skip this snapshot.
            operation: Some(iceberg::spec::Operation::Replace),
            ..RowDelta::default()
        };
        crate::crash::point("maintenance.before_commit");
        match commits.commit_row_delta(catalog, &current, delta).await {
            Ok(_) => {
                crate::crash::point("maintenance.after_commit");
                report.rebases = attempt;
                tracing::info!(table = %ident, ?report, "compacted");
                return Ok(report);
            }
            Err(e) if e.is_retryable() && attempt < MAX_REBASES && retry.pause().await => {
                current = load(catalog, ident).await?;
                let now = live_files(&current).await?;
                let live_now: HashSet<&str> = now.data.iter().map(|f| f.file.file_path()).collect();
                if rewritten.iter().any(|p| !live_now.contains(p.as_str())) {
                    // Another compaction (or a TRUNCATE) replaced these files first.
                    cleanup(&file_io, new_files.iter().chain(&translated_files)).await;
                    report.compaction_superseded = true;
                    tracing::info!(table = %ident, "compaction superseded by a concurrent rewrite");
                    return Ok(report);
                }
                let before = translated.len();
                for d in &now.deletes {
                    let path = d.file.file_path();
                    if !handled.insert(path.to_string()) {
                        continue;
                    }
                    let mut all_rewritten = true;
                    for (target, pos) in read_position_deletes(&file_io, path).await? {
                        match remap.get(&target) {
                            Some(map) => {
                                let slot = map.get(pos as usize).copied().unwrap_or(u32::MAX);
                                if let Some(&(file, p)) = placed.get(slot as usize) {
                                    let new_path = new_files[file as usize].file_path();
                                    translated.push((new_path.to_string(), p as i64));
                                }
                            }
                            None => all_rewritten = false,
                        }
                    }
                    if all_rewritten {
                        removed.insert(path.to_string());
                    }
                }
                if translated.len() > before {
                    cleanup(&file_io, translated_files.iter()).await;
                    translated_files =
                        translated_deletes(&current, &new_files, &new_parts, &translated).await?;
                }
                report.deletes_remapped = translated.len() as u64;
                tracing::debug!(table = %ident, attempt, remapped = translated.len(), "compaction re-basing onto a concurrent commit");
            }
            Err(e) if e.is_retryable() => {
                // Lost the race every time: give up for now, leaving the table as it was.
                cleanup(&file_io, new_files.iter().chain(&translated_files)).await;
                report.compaction_abandoned = true;
                tracing::warn!(table = %ident, attempts = attempt, error = %e, "compaction abandoned after losing every commit race; the next run retries");
                return Ok(report);
            }
            Err(e) if e.may_have_committed() => {
                // The new files may be the table's now: keep them, whatever happened.
                return Err(e.into());
            }
            Err(e) => {
                cleanup(&file_io, new_files.iter().chain(&translated_files)).await;
                return Err(e.into());
            }
        }
    }
    cleanup(&file_io, new_files.iter().chain(&translated_files)).await;
    Err(LakehouseError::Corrupt(format!(
        "{ident}: compaction lost {MAX_REBASES} races in a row"
    )))
}

/// Position-delete files (one per partition) holding `deletes` against the new files.
async fn translated_deletes(
    table: &Table,
    new_files: &[DataFile],
    new_parts: &[(i32, Struct)],
    deletes: &[(String, i64)],
) -> Result<Vec<DataFile>> {
    let by_path: HashMap<&str, &(i32, Struct)> = new_files
        .iter()
        .zip(new_parts)
        .map(|(f, p)| (f.file_path(), p))
        .collect();
    let mut parts: HashMap<(i32, Struct), Vec<(String, i64)>> = HashMap::new();
    for (p, pos) in deletes {
        let part = by_path
            .get(p.as_str())
            .ok_or_else(|| LakehouseError::Corrupt(format!("translated delete names {p}")))?;
        parts
            .entry((*part).clone())
            .or_default()
            .push((p.clone(), *pos));
    }
    let mut out = Vec::with_capacity(parts.len());
    for ((spec, partition), list) in parts {
        out.push(crate::deletes::write_position_deletes(table, partition, spec, list).await?);
    }
    Ok(out)
}

async fn cleanup<'a>(file_io: &iceberg::io::FileIO, files: impl Iterator<Item = &'a DataFile>) {
    for f in files {
        if let Err(e) = file_io.delete(f.file_path()).await {
            tracing::debug!(path = f.file_path(), error = %e, "could not remove an uncommitted file");
        }
    }
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
        crate::bronze::BRONZE_NAMESPACE,
        crate::silver::SILVER_NAMESPACE,
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
        return Err(LakehouseError::Corrupt(format!(
            "no bronze or silver table named {name}"
        )));
    }
    Ok(out)
}
