//! Compaction: rewriting the data files [`select`] picks into clean files, dropping the
//! delete files that only named them and merging the rest when there are too many, in one
//! `replace` snapshot that never loses a concurrent commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use catalog::commit::{CommitPath, RowDelta};
use catalog::{Catalog, TableIdent};
use iceberg::spec::{DataFile, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

use super::select::{DataCandidate, DeleteCandidate, PartitionOf, select};
use super::{MAINTENANCE_PROPERTY, MAX_REBASES, MaintenanceOptions, MaintenanceReport, load};
use crate::files::{live_files, read_position_deletes, read_projected};
use crate::sink::{COPY_PIECE_PROPERTY, SOURCE_LSN_PROPERTY};
use crate::{LakehouseError, Result};

/// Rewrites the data files worth it (enough of them deleted, or crowds of small files) into
/// clean files, at most [`MaintenanceOptions::max_rewrite_bytes`] a run.
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
    let number: HashMap<&str, usize> = live
        .data
        .iter()
        .enumerate()
        .map(|(i, f)| (f.file.file_path(), i))
        .collect();
    let mut deleted: HashMap<String, HashSet<u64>> = HashMap::new();
    let mut delete_candidates = Vec::with_capacity(live.deletes.len());
    for d in &live.deletes {
        let rows = read_position_deletes(&file_io, d.file.file_path()).await?;
        let mut targets = HashSet::new();
        for (path, pos) in rows {
            if let Some(&n) = number.get(path.as_str()) {
                targets.insert(n);
                deleted.entry(path).or_default().insert(pos);
            }
        }
        delete_candidates.push(DeleteCandidate {
            partition: (d.spec_id, d.file.partition().clone()),
            targets,
        });
    }
    let data_candidates: Vec<DataCandidate> = live
        .data
        .iter()
        .map(|f| DataCandidate {
            partition: (f.spec_id, f.file.partition().clone()),
            bytes: f.file.file_size_in_bytes(),
            rows: f.file.record_count(),
            deleted: deleted
                .get(f.file.file_path())
                .map_or(0, |d| d.len() as u64),
        })
        .collect();
    let selection = select(&data_candidates, &delete_candidates, opts);
    if selection.is_empty() {
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
    let mut new_parts: Vec<PartitionOf> = Vec::new();
    for ((spec_id, partition), files) in &selection.groups {
        let spec = meta
            .partition_spec_by_id(*spec_id)
            .ok_or_else(|| LakehouseError::MissingPartitionSpec {
                table: ident.to_string(),
                spec_id: *spec_id,
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
        for &n in files {
            let f = &live.data[n].file;
            let path = f.file_path();
            let gone = deleted.get(path);
            let mut map = vec![u32::MAX; f.record_count() as usize];
            if gone.is_some_and(|g| g.len() as u64 >= f.record_count()) {
                // Every row deleted: the file is dropped, not read.
                report.rows_purged += f.record_count();
                report.data_files_rewritten += 1;
                remap.insert(path.to_string(), map);
                continue;
            }
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
                return Err(LakehouseError::RowCountMismatch {
                    file: path.to_string(),
                    read: pos,
                    expected: f.record_count(),
                });
            }
            report.data_files_rewritten += 1;
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
            return Err(LakehouseError::RowCountMismatch {
                file: format!("{ident}: compacted files"),
                read: k,
                expected: group_rows,
            });
        }
        new_parts.extend(written.iter().map(|_| (*spec_id, partition.clone())));
        new_files.extend(written);
    }
    report.files_written = new_files.len();
    report.rows_kept = placed.len() as u64;

    let rewritten: HashSet<String> = selection
        .rewritten()
        .map(|n| live.data[n].file.file_path().to_string())
        .collect();
    // Merged delete files: their deletes of files that stay, one new file per partition.
    let mut merged: HashMap<PartitionOf, Vec<(String, i64)>> = HashMap::new();
    for &d in &selection.merge_deletes {
        let part = merged
            .entry(delete_candidates[d].partition.clone())
            .or_default();
        // Read again rather than kept from the first pass: only merged files cost memory.
        for (path, pos) in read_position_deletes(&file_io, live.deletes[d].file.file_path()).await?
        {
            if number.contains_key(path.as_str()) && !rewritten.contains(&path) {
                part.push((path, pos as i64));
            }
        }
    }
    let mut merged_files = Vec::new();
    for ((spec, partition), list) in merged {
        if !list.is_empty() {
            merged_files
                .push(crate::deletes::write_position_deletes(&base, partition, spec, list).await?);
        }
    }
    report.delete_files_written = merged_files.len();
    crate::crash::point("maintenance.after_files_written");

    let dropped: HashSet<String> = selection
        .drop_deletes
        .iter()
        .chain(&selection.merge_deletes)
        .map(|&d| live.deletes[d].file.file_path().to_string())
        .collect();
    report.delete_files_removed = dropped.len();
    let mut removed: HashSet<String> = rewritten.iter().chain(&dropped).cloned().collect();
    let mut handled: HashSet<String> = live
        .deletes
        .iter()
        .map(|d| d.file.file_path().to_string())
        .collect();
    let mut translated: Vec<(String, i64)> = Vec::new();
    let mut translated_files: Vec<DataFile> = Vec::new();
    let ours = |translated: &[DataFile]| -> Vec<DataFile> {
        new_files
            .iter()
            .chain(&merged_files)
            .chain(translated)
            .cloned()
            .collect()
    };
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
            delete_files: merged_files
                .iter()
                .chain(&translated_files)
                .cloned()
                .collect(),
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
                let live_now: HashSet<&str> = now
                    .data
                    .iter()
                    .chain(&now.deletes)
                    .map(|f| f.file.file_path())
                    .collect();
                if rewritten
                    .iter()
                    .chain(&dropped)
                    .any(|p| !live_now.contains(p.as_str()))
                {
                    // Another compaction (or a TRUNCATE) replaced these files first.
                    cleanup(&file_io, ours(&translated_files).iter()).await;
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
                cleanup(&file_io, ours(&translated_files).iter()).await;
                report.compaction_abandoned = true;
                tracing::warn!(table = %ident, attempts = attempt, error = %e, "compaction abandoned after losing every commit race; the next run retries");
                return Ok(report);
            }
            Err(e) if e.may_have_committed() => {
                // The new files may be the table's now: keep them, whatever happened.
                return Err(e.into());
            }
            Err(e) => {
                cleanup(&file_io, ours(&translated_files).iter()).await;
                return Err(e.into());
            }
        }
    }
    cleanup(&file_io, ours(&translated_files).iter()).await;
    report.compaction_abandoned = true;
    Ok(report)
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
        // Only positions `placed` in a new file are translated, so every path is one of them.
        let Some(part) = by_path.get(p.as_str()) else {
            continue;
        };
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

/// Removes files a compaction wrote but did not commit (best effort: orphan removal finds
/// any left).
async fn cleanup<'a>(file_io: &iceberg::io::FileIO, files: impl Iterator<Item = &'a DataFile>) {
    for f in files {
        if let Err(e) = file_io.delete(f.file_path()).await {
            tracing::debug!(path = f.file_path(), error = %e, "could not remove an uncommitted file");
        }
    }
}
