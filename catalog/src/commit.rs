//! The commit path iceberg-rust 0.10 lacks: snapshots that add position-delete files.
//!
//! iceberg's `Transaction` only appends data files and its action traits are
//! crate-private (ADR 0005), so a row delta is produced here from iceberg's public
//! spec writers (manifests, manifest list, `TableMetadataBuilder`, metadata files
//! through `FileIO`) and published with the same compare-and-swap on
//! `iceberg_tables` that `iceberg-catalog-sql` performs, so every engine reading
//! the SQL catalog sees it. A moved pointer is a [`CatalogError::CommitConflict`]:
//! the caller reloads and retries, nothing is overwritten. A swap whose outcome cannot be
//! learned is a [`CatalogError::CommitOutcomeUnknown`]: its files must be kept.
//!
//! Durability: every manifest, the manifest list and the metadata file are written through
//! the warehouse's storage, which returns only once they are durable (fsynced on local
//! disk, a completed PUT on S3), before the pointer moves.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::spec::{
    DataContentType, DataFile, ManifestContentType, ManifestFile, ManifestListWriter,
    ManifestWriterBuilder, Operation, Schema, Snapshot, Summary, TableMetadata,
    TableMetadataBuilder,
};
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation};

use crate::pointer::PointerStore;
use crate::{CatalogError, Result, Warehouse};

/// Data files and position-delete files to commit as one snapshot.
#[derive(Debug, Default)]
pub struct RowDelta {
    /// New data files (content `Data`).
    pub data_files: Vec<DataFile>,
    /// New position-delete files (content `PositionDeletes`).
    pub delete_files: Vec<DataFile>,
    /// Paths of live files (data or delete) of the parent snapshot that this snapshot removes
    /// (compaction rewrites them); each must still be live, or the commit is a conflict.
    pub removed_files: HashSet<String>,
    /// Remove every live file of the parent (TRUNCATE) before adding the new ones.
    pub remove_all: bool,
    /// Extra snapshot-summary properties (the source position, say).
    pub properties: HashMap<String, String>,
    /// A new current schema, committed atomically with the files (schema evolution): the
    /// table's schema then never runs ahead of, nor behind, the source position it records.
    pub schema: Option<Schema>,
    /// Table properties to set in the same commit (the source column ids that go with `schema`).
    pub table_properties: HashMap<String, String>,
    /// The snapshot operation, when the caller knows it (a compaction is a `replace` however
    /// its files look); otherwise derived from the files.
    pub operation: Option<Operation>,
}

impl RowDelta {
    /// The snapshot operation readers see in the summary.
    fn operation(&self) -> Operation {
        if let Some(op) = &self.operation {
            return op.clone();
        }
        let removes = self.remove_all || !self.removed_files.is_empty();
        match (
            removes,
            self.delete_files.is_empty(),
            self.data_files.is_empty(),
        ) {
            (false, true, _) => Operation::Append,
            (true, true, false) if !self.remove_all => Operation::Replace,
            (false, false, true) => Operation::Delete,
            _ => Operation::Overwrite,
        }
    }
}

/// Publishes snapshots iceberg's `Transaction` cannot make, on the warehouse's SQL catalog.
#[derive(Debug, Clone)]
pub struct CommitPath {
    pointers: Arc<dyn PointerStore>,
}

impl Warehouse {
    /// The commit path over this warehouse's catalog database.
    pub async fn commit_path(&self) -> Result<CommitPath> {
        Ok(CommitPath::new(self.catalog_url().pointers().await?.into()))
    }
}

impl CommitPath {
    /// A commit path publishing through `pointers`.
    pub fn new(pointers: Arc<dyn PointerStore>) -> Self {
        Self { pointers }
    }

    /// The pointer store commits swap on.
    pub fn pointers(&self) -> &dyn PointerStore {
        self.pointers.as_ref()
    }

    /// Commits `delta` on top of `table` (its current snapshot is the parent) and returns the new table.
    pub async fn commit_row_delta(
        &self,
        catalog: &dyn Catalog,
        table: &Table,
        delta: RowDelta,
    ) -> Result<Table> {
        let name = table.identifier().to_string();
        let err = |e: iceberg::Error| CatalogError::from_iceberg(name.clone(), e);
        if delta
            .data_files
            .iter()
            .any(|f| f.content_type() != DataContentType::Data)
            || delta
                .delete_files
                .iter()
                .any(|f| f.content_type() != DataContentType::PositionDeletes)
        {
            return Err(CatalogError::Iceberg(Box::new(iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("{name}: row delta takes data files and position-delete files only"),
            ))));
        }
        let file_io = table.file_io();
        let current = table.metadata_location_result().map_err(err)?.to_string();
        // Stage the schema and property changes first, so the snapshot and its manifests
        // are written against the schema they commit with.
        let mut staged = table.metadata().clone().into_builder(Some(current.clone()));
        if let Some(schema) = delta.schema.clone() {
            staged = staged.add_current_schema(schema).map_err(err)?;
        }
        if !delta.table_properties.is_empty() {
            staged = staged
                .set_properties(delta.table_properties.clone())
                .map_err(err)?;
        }
        let staged = staged.build().map_err(err)?.metadata;
        let meta = &staged;
        let snapshot_id = loop {
            let id = (uuid::Uuid::now_v7().as_u128() as i64 & i64::MAX).max(1);
            if meta.snapshot_by_id(id).is_none() {
                break id;
            }
        };
        let sequence = meta.next_sequence_number();
        let parent = meta.current_snapshot().cloned();
        let parent_manifests: Vec<ManifestFile> = match &parent {
            Some(s) => table
                .manifest_list_reader(s)
                .load()
                .await
                .map_err(err)?
                .consume_entries()
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        let schema = meta.current_schema().clone();
        let spec = meta.default_partition_spec().as_ref().clone();
        let dir = format!("{}/metadata", meta.location().trim_end_matches('/'));
        let commit = uuid::Uuid::now_v7();
        let operation = delta.operation();

        // Carry the parent's manifests; rewrite those holding removed files, marking them deleted.
        let mut manifests = Vec::with_capacity(parent_manifests.len() + 2);
        let mut still_to_remove = delta.removed_files.clone();
        let mut removed = FileCounts::default();
        for (k, m) in parent_manifests.into_iter().enumerate() {
            let live = m.added_files_count.unwrap_or(1) + m.existing_files_count.unwrap_or(1);
            if live == 0 {
                continue; // only tombstones of an older snapshot: nothing to read there
            }
            if !delta.remove_all && still_to_remove.is_empty() {
                manifests.push(m);
                continue;
            }
            let manifest = m.load_manifest(file_io).await.map_err(err)?;
            let touched = delta.remove_all
                || manifest
                    .entries()
                    .iter()
                    .any(|e| e.is_alive() && still_to_remove.contains(e.file_path()));
            if !touched {
                manifests.push(m);
                continue;
            }
            let out = file_io
                .new_output(format!("{dir}/{commit}-r{k}.avro"))
                .map_err(err)?;
            // A rewritten manifest keeps the partition spec its files were written with.
            let own_spec = meta
                .partition_spec_by_id(m.partition_spec_id)
                .map(|s| s.as_ref().clone())
                .ok_or_else(|| {
                    err(iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        format!(
                            "manifest {} names unknown partition spec {}",
                            m.manifest_path, m.partition_spec_id
                        ),
                    ))
                })?;
            let builder =
                ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), own_spec);
            let mut writer = match m.content {
                ManifestContentType::Data => builder.build_v2_data(),
                ManifestContentType::Deletes => builder.build_v2_deletes(),
            };
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                let seq = e.sequence_number().unwrap_or(m.sequence_number);
                let file_seq = e.file_sequence_number.or(Some(m.sequence_number));
                if delta.remove_all || still_to_remove.remove(e.file_path()) {
                    removed.add(e.data_file());
                    writer
                        .add_delete_file(e.data_file().clone(), seq, file_seq)
                        .map_err(err)?;
                } else {
                    let added_by = e.snapshot_id().unwrap_or(m.added_snapshot_id);
                    writer
                        .add_existing_file(e.data_file().clone(), added_by, seq, file_seq)
                        .map_err(err)?;
                }
            }
            manifests.push(writer.write_manifest_file().await.map_err(err)?);
        }
        if let Some(missing) = still_to_remove.iter().next() {
            return Err(CatalogError::CommitConflict {
                table: name.clone(),
                source: Box::new(iceberg::Error::new(
                    iceberg::ErrorKind::CatalogCommitConflicts,
                    format!("file to remove is no longer live: {missing}"),
                )),
            });
        }
        let mut added = FileCounts::default();
        for f in delta.data_files.iter().chain(&delta.delete_files) {
            added.add(f);
        }
        for (k, (files, deletes)) in [(delta.data_files, false), (delta.delete_files, true)]
            .into_iter()
            .enumerate()
        {
            if files.is_empty() {
                continue;
            }
            let out = file_io
                .new_output(format!("{dir}/{commit}-m{k}.avro"))
                .map_err(err)?;
            let builder =
                ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec.clone());
            let mut writer = if deletes {
                builder.build_v2_deletes()
            } else {
                builder.build_v2_data()
            };
            for f in files {
                writer.add_file(f, sequence).map_err(err)?;
            }
            manifests.push(writer.write_manifest_file().await.map_err(err)?);
        }
        let list = format!("{dir}/snap-{snapshot_id}-0-{commit}.avro");
        let out = file_io.new_output(&list).map_err(err)?;
        let mut lw = ManifestListWriter::v2(
            out.writer().await.map_err(err)?,
            snapshot_id,
            parent.as_ref().map(|s| s.snapshot_id()),
            sequence,
        );
        let mut properties = summary_counts(&added, &removed, &manifests, parent.as_deref());
        properties.extend(delta.properties);
        lw.add_manifests(manifests.into_iter()).map_err(err)?;
        lw.close().await.map_err(err)?;

        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent.as_ref().map(|s| s.snapshot_id()))
            .with_sequence_number(sequence)
            .with_timestamp_ms(chrono_free_now_ms())
            .with_manifest_list(list)
            .with_summary(Summary {
                operation,
                additional_properties: properties,
            })
            .with_schema_id(meta.current_schema_id())
            .build();
        let new_meta = staged
            .clone()
            .into_builder(None)
            .set_branch_snapshot(snapshot, "main")
            .map_err(err)?
            .build()
            .map_err(err)?
            .metadata;
        self.publish(catalog, table, new_meta).await
    }

    /// Commits a metadata-only change of `table` (expiring snapshots, say), built by `update`
    /// from the current metadata, with the same compare-and-swap as a row delta.
    pub async fn commit_metadata(
        &self,
        catalog: &dyn Catalog,
        table: &Table,
        update: impl FnOnce(TableMetadataBuilder) -> iceberg::Result<TableMetadataBuilder>,
    ) -> Result<Table> {
        let name = table.identifier().to_string();
        let err = |e: iceberg::Error| CatalogError::from_iceberg(name.clone(), e);
        let current = table.metadata_location_result().map_err(err)?.to_string();
        let builder = table.metadata().clone().into_builder(Some(current));
        let new_meta = update(builder)
            .and_then(|b| b.build())
            .map_err(err)?
            .metadata;
        self.publish(catalog, table, new_meta).await
    }

    /// Writes `new_meta` as the next metadata file of `table` and swaps the catalog pointer to it.
    ///
    /// Once the swap applied, nothing here can fail: the returned table is built from the
    /// metadata just published, not reloaded, so no later error can pass for "not committed".
    async fn publish(
        &self,
        catalog: &dyn Catalog,
        table: &Table,
        new_meta: TableMetadata,
    ) -> Result<Table> {
        let name = table.identifier().to_string();
        let err = |e: iceberg::Error| CatalogError::from_iceberg(name.clone(), e);
        let file_io = table.file_io();
        let current = table.metadata_location_result().map_err(err)?.to_string();
        let location = MetadataLocation::from_str(&current)
            .map_err(err)?
            .with_next_version()
            .with_new_metadata(&new_meta)
            .to_string();
        new_meta
            .write_to(file_io, &location.parse::<MetadataLocation>().map_err(err)?)
            .await
            .map_err(err)?;

        let ident = table.identifier();
        let ours = new_meta
            .current_snapshot_id()
            .filter(|id| table.metadata().snapshot_by_id(*id).is_none());
        let mut swap = self
            .pointers
            .compare_and_swap(ident, &current, &location)
            .await;
        let mut failures = 0;
        // How long an unknown swap outcome is re-checked before it is reported unknown.
        let mut resolving = crate::Retry::in_doubt();
        let committed = loop {
            let e = match swap {
                Ok(true) => break true,
                // The swap answered and did not apply, and no earlier attempt is in doubt.
                Ok(false) if failures == 0 => break false,
                // An earlier attempt of ours may have applied, and others may have committed
                // on top of it since: look for our metadata in the current one's history.
                Ok(false) => match self.pointers.current(ident).await {
                    Ok(Some(p)) if p == location => break true,
                    Ok(Some(p)) => match published_before(file_io, &p, &location, ours).await {
                        Ok(true) => break true,
                        // Our snapshot is not in the current metadata: had our swap applied,
                        // it would be (no expiry removes a snapshot seconds old), so this is
                        // a conflict like any other.
                        Ok(false) if ours.is_some() => break false,
                        // A commit without a snapshot of its own is known only by its
                        // metadata file in the history, which may have been trimmed
                        // (`write.metadata.previous-versions-max`): still in doubt, never a
                        // plain conflict (a caller would redo or clean up after a commit that
                        // may have applied).
                        Ok(false) => {
                            tracing::error!(table = %name, metadata = %location, current = %p, "commit outcome unknown: ours is not in the history of the current metadata");
                            return Err(CatalogError::CommitOutcomeUnknown {
                                table: name.clone(),
                                metadata_location: location,
                                source: Box::new(iceberg::Error::new(
                                    iceberg::ErrorKind::CatalogCommitConflicts,
                                    format!("an attempt failed and the pointer moved on to {p}"),
                                )),
                            });
                        }
                        Err(e) => {
                            tracing::error!(table = %name, metadata = %location, error = %e, "commit outcome unknown");
                            return Err(CatalogError::CommitOutcomeUnknown {
                                table: name,
                                metadata_location: location,
                                source: Box::new(e),
                            });
                        }
                    },
                    Ok(None) => {
                        return Err(CatalogError::CommitOutcomeUnknown {
                            table: name.clone(),
                            metadata_location: location,
                            source: Box::new(iceberg::Error::new(
                                iceberg::ErrorKind::TableNotFound,
                                format!("{name} was dropped while its commit was in doubt"),
                            )),
                        });
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            failures += 1;
            let Some(pause) = resolving.next_pause() else {
                tracing::error!(table = %name, metadata = %location, error = %e, "commit outcome unknown");
                return Err(CatalogError::CommitOutcomeUnknown {
                    table: name,
                    metadata_location: location,
                    source: Box::new(e),
                });
            };
            tracing::warn!(table = %name, failures, error = %e, "pointer swap failed; resolving its outcome");
            tokio::time::sleep(pause).await;
            // Swapping again from the same base to the same location is safe: at most one
            // attempt can apply, and a pointer that moved elsewhere is examined above.
            swap = self
                .pointers
                .compare_and_swap(ident, &current, &location)
                .await;
        };
        if !committed {
            if failures == 0 {
                // The swap answered "not applied": nothing can ever publish this file.
                let _ = file_io.delete(&location).await;
            }
            return Err(CatalogError::CommitConflict {
                table: name.clone(),
                source: Box::new(iceberg::Error::new(
                    iceberg::ErrorKind::CatalogCommitConflicts,
                    format!("metadata pointer moved from {current}"),
                )),
            });
        }
        let built = Table::builder()
            .metadata(new_meta)
            .metadata_location(location.clone())
            .identifier(ident.clone())
            .file_io(file_io.clone())
            .runtime(iceberg::Runtime::current())
            .build();
        match built {
            Ok(t) => Ok(t),
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "committed; reloading the table");
                catalog.load_table(ident).await.map_err(|source| {
                    CatalogError::CommittedButUnloaded {
                        table: name,
                        metadata_location: location,
                        source: Box::new(source),
                    }
                })
            }
        }
    }
}

/// Whether the metadata at `current` descends from ours: `ours_location` is in its metadata
/// log, or our snapshot is among its snapshots.
async fn published_before(
    file_io: &iceberg::io::FileIO,
    current: &str,
    ours_location: &str,
    ours_snapshot: Option<i64>,
) -> iceberg::Result<bool> {
    let meta = TableMetadata::read_from(file_io, current).await?;
    Ok(meta
        .metadata_log()
        .iter()
        .any(|m| m.metadata_file == ours_location)
        || ours_snapshot.is_some_and(|id| meta.snapshot_by_id(id).is_some()))
}

/// Sizes and counts of a set of files, for the snapshot summary.
#[derive(Debug, Default)]
struct FileCounts {
    data_files: u64,
    records: u64,
    delete_files: u64,
    position_deletes: u64,
    bytes: u64,
}

impl FileCounts {
    fn add(&mut self, f: &DataFile) {
        self.bytes += f.file_size_in_bytes();
        match f.content_type() {
            DataContentType::Data => {
                self.data_files += 1;
                self.records += f.record_count();
            }
            _ => {
                self.delete_files += 1;
                self.position_deletes += f.record_count();
            }
        }
    }
}

/// The standard snapshot-summary counts (Iceberg spec, "Snapshot summary"): what this
/// snapshot added and removed, and the table's totals after it. Totals of files and records
/// come from the new manifest list itself (each manifest counts its live entries), so they
/// are exact even when the parent's summary lacks them; the byte total follows the parent's.
fn summary_counts(
    added: &FileCounts,
    removed: &FileCounts,
    manifests: &[ManifestFile],
    parent: Option<&Snapshot>,
) -> HashMap<String, String> {
    let mut total = FileCounts::default();
    for m in manifests {
        let files = u64::from(m.added_files_count.unwrap_or(0))
            + u64::from(m.existing_files_count.unwrap_or(0));
        let rows = m.added_rows_count.unwrap_or(0) + m.existing_rows_count.unwrap_or(0);
        match m.content {
            ManifestContentType::Data => {
                total.data_files += files;
                total.records += rows;
            }
            ManifestContentType::Deletes => {
                total.delete_files += files;
                total.position_deletes += rows;
            }
        }
    }
    let mut out = HashMap::new();
    let mut put = |k: &str, v: u64| {
        out.insert(k.to_string(), v.to_string());
    };
    put("added-data-files", added.data_files);
    put("added-records", added.records);
    put("added-files-size", added.bytes);
    put("added-delete-files", added.delete_files);
    put("added-position-delete-files", added.delete_files);
    put("added-position-deletes", added.position_deletes);
    put("deleted-data-files", removed.data_files);
    put("deleted-records", removed.records);
    put("removed-files-size", removed.bytes);
    put("removed-delete-files", removed.delete_files);
    put("removed-position-delete-files", removed.delete_files);
    put("removed-position-deletes", removed.position_deletes);
    put("total-data-files", total.data_files);
    put("total-records", total.records);
    put("total-delete-files", total.delete_files);
    put("total-position-deletes", total.position_deletes);
    put("total-equality-deletes", 0);
    if let Some(size) = parent
        .map(|p| p.summary().additional_properties.get("total-files-size"))
        .map(|v| v.and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(Some(0))
    {
        put(
            "total-files-size",
            (size + added.bytes).saturating_sub(removed.bytes),
        );
    }
    out
}

fn chrono_free_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
