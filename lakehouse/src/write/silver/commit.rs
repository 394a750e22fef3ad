//! Silver's commit: a plan made, its files written, and one row delta committed through
//! the compare-and-swap, re-planned on a rewritten base and never cleaned up as failed once
//! its outcome is unknown; then the index moved forward and checkpointed now and then.

use super::*;

impl SilverSink {
    /// Folds the pending change rows of table `idx` into one snapshot at source position `lsn`.
    pub(crate) async fn commit_table(&mut self, idx: usize, at: CommitAt) -> Result<()> {
        let lsn = at.lsn();
        let catalog = self.catalog.clone();
        let commits = self.commits.clone();
        let every = self.checkpoint_every;
        let t = self
            .tables
            .get_mut(idx)
            .ok_or(LakehouseError::UnknownTable(idx))?;
        let mut retry = catalog::Retry::commit_race();
        let mut io_retry = catalog::Retry::transient_io();
        let planned = crate::bronze::read_progress(&t.table)?.source_lsn;
        if t.lost {
            return Err(lost_rows(&t.ident));
        }
        // Copy rows already written: their files and keys, kept across re-plans.
        let mut written = match t.eager.take() {
            Some(e) => {
                t.lost = true;
                if !t.pending.is_empty() {
                    return Err(LakehouseError::PlanInvariant(format!(
                        "{}: written copy rows beside pending rows",
                        t.ident
                    )));
                }
                Some(e.finish().await?)
            }
            None => None,
        };
        let rows_in = t.pending.rows() + written.as_ref().map_or(0, |w| w.rows as usize);
        let spilled = t.pending.spilled();
        if spilled > 0 {
            tracing::info!(table = %t.ident, rows = rows_in, spilled, "committing a batch partly spilled to scratch");
        }
        'plan: loop {
            if t.index_stale {
                // The key's columns or types changed: index the committed rows by the new key.
                t.index = PkIndex::rebuild(&t.table, &t.key_schema).await?;
                t.index_stale = false;
            }
            // The snapshot the index (and so this plan) describes: what it is brought forward
            // from if a rewrite wins the race, however many same-files retries come first.
            let described = t.table.metadata().current_snapshot_id();
            let from_copy = written.is_some();
            let (plan, data_files) = match written.take() {
                Some(w) => (plan::Plan::copied(t.reset, w.keys), w.files),
                None => {
                    let plan = plan(t)?;
                    let files = write_new_rows(t, &plan).await?;
                    (plan, files)
                }
            };
            crate::crash::point("silver.after_data_files");
            let mut delete_files = Vec::new();
            if !plan.deletes.is_empty() && !plan.truncate {
                let deletes = plan
                    .deletes
                    .iter()
                    .map(|l| (t.index.path(l.file).to_string(), l.pos as i64))
                    .collect();
                let spec = t.table.metadata().default_partition_spec_id();
                delete_files.push(
                    crate::deletes::write_position_deletes(
                        &t.table,
                        Struct::empty(),
                        spec,
                        deletes,
                    )
                    .await?,
                );
            }
            crate::crash::point("silver.before_catalog_commit");
            crate::crash::stall("silver.before_catalog_commit").await;
            let new_rows: Vec<u64> = data_files.iter().map(|f| f.record_count()).collect();
            let new_paths: Vec<String> = data_files
                .iter()
                .map(|f| f.file_path().to_string())
                .collect();
            let mut base_files = None;
            loop {
                let delta = RowDelta {
                    data_files: data_files.clone(),
                    delete_files: delete_files.clone(),
                    removed_files: HashSet::new(),
                    remove_all: plan.truncate,
                    properties: HashMap::from([
                        at.property(),
                        ("bitvelocity.rows".to_string(), rows_in.to_string()),
                    ]),
                    schema: t.evolution.as_ref().map(|_| t.schema.as_ref().clone()),
                    table_properties: t
                        .evolution
                        .as_ref()
                        .map(|key| {
                            HashMap::from([(KEY_COLUMNS_PROPERTY.to_string(), key.join(","))])
                        })
                        .unwrap_or_default(),
                    operation: None,
                };
                let err = match commits
                    .commit_row_delta(catalog.as_ref(), &t.table, delta)
                    .await
                {
                    Ok(table) => {
                        crate::crash::point("silver.after_catalog_commit");
                        t.table = table;
                        apply_to_index(&mut t.index, plan, &new_paths, &new_rows)?;
                        t.pending.clear();
                        t.lost = false;
                        self.spilled += spilled as u64;
                        t.reset = false;
                        t.dirty = true;
                        if t.evolution.take().is_some() {
                            tracing::info!(table = %t.ident, "silver schema evolved");
                        }
                        // Checkpointed now and then, so a restart after a crash replays only
                        // the snapshots since (PkIndex::open), and at a clean stop. A failed
                        // checkpoint costs a rebuild later, never data: it is not fatal.
                        if t.checkpointed_at.elapsed() >= every
                            && let Err(e) = checkpoint(t).await
                        {
                            tracing::warn!(table = %t.ident, error = %e, "could not checkpoint the key index");
                            if matches!(e, LakehouseError::BadIndexCheckpoint(_)) {
                                // The index itself is wrong (it names a file it forgot): it
                                // must not place another delete; rebuilt before the next plan.
                                tracing::error!(table = %t.ident, "the key index is inconsistent; rebuilding it");
                                t.index_stale = true;
                            }
                        }
                        tracing::debug!(table = %t.ident, lsn, rows = t.index.len(), "silver commit");
                        return Ok(());
                    }
                    // Lost a race: long patience. Another transient failure: a few tries.
                    Err(e) if e.is_conflict() && retry.pause().await => e,
                    Err(e) if !e.is_conflict() && e.is_retryable() && io_retry.pause().await => e,
                    Err(e) => return Err(e.into()),
                };
                // Re-validate on the new table state. The index (and so the plan) describes
                // exactly the live data files of the old base: a new base is taken only if it
                // holds the same ones (an expiry, say); a rewrite that removed or added files
                // (maintenance) means re-planning on a rebuilt index.
                let attempt = retry.retries();
                if base_files.is_none() {
                    // Still the base the plan was made on: read its files once per plan.
                    base_files = Some(live_data_paths(&t.table).await?);
                }
                t.table =
                    crate::bronze::reload_behind(catalog.as_ref(), &t.ident, lsn, planned).await?;
                let after = live_data_paths(&t.table).await?;
                if base_files.as_ref() == Some(&after) {
                    tracing::debug!(table = %t.ident, attempt, error = %err, "silver commit lost a race; retrying on the new base");
                    continue;
                }
                tracing::info!(table = %t.ident, attempt, "files were rewritten concurrently; re-planning on the new table state");
                if from_copy {
                    // New keys in new files: valid on any base, committed as they are.
                    written = Some(Written {
                        rows: new_rows.iter().sum(),
                        files: data_files,
                        keys: plan.fresh,
                    });
                } else {
                    for f in data_files.iter().chain(&delete_files) {
                        if let Err(e) = t.table.file_io().delete(f.file_path()).await {
                            tracing::debug!(path = f.file_path(), error = %e, "could not remove an uncommitted file");
                        }
                    }
                }
                // Brought forward across the rewrite (its files' rows moved), not rebuilt.
                let index = std::mem::take(&mut t.index);
                t.index = match described {
                    Some(from) => index.advance(&t.table, &t.key_schema, from).await?,
                    None => PkIndex::rebuild(&t.table, &t.key_schema).await?,
                };
                continue 'plan;
            }
        }
    }
}

/// Writes the index of `t` as the checkpoint of its current snapshot.
pub(super) async fn checkpoint(t: &mut SilverTable) -> Result<()> {
    if t.index_stale || !t.pending.is_empty() {
        return Ok(()); // the index does not describe the committed snapshot
    }
    t.checkpointed_at = std::time::Instant::now();
    t.index.checkpoint(&t.table, &t.key_schema).await?;
    t.dirty = false;
    Ok(())
}

/// The error of a table whose written copy rows a failed commit took with it.
pub(super) fn lost_rows(ident: &TableIdent) -> LakehouseError {
    LakehouseError::PlanInvariant(format!(
        "{ident}: a failed commit dropped copy rows already written; prepare the sink again"
    ))
}

/// Paths of the live data files of `table`'s current snapshot.
async fn live_data_paths(table: &Table) -> Result<HashSet<String>> {
    Ok(crate::files::live_files(table)
        .await?
        .data
        .into_iter()
        .map(|f| f.file.file_path().to_string())
        .collect())
}
