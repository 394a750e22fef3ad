//! Bringing a checkpoint of an older snapshot up to the current one by replaying the row
//! deltas committed after it.

use std::collections::{HashMap, HashSet};

use arrow::datatypes::SchemaRef;
use iceberg::table::Table;

use super::{PkIndex, key_converter, loc};
use crate::files::{read_position_deletes, read_projected};
use crate::{LakehouseError, Result};

impl PkIndex {
    /// Brings this index of snapshot `from` of `table` up to the current snapshot (see
    /// [`Self::catch_up`]), or rebuilds it when that cannot be done.
    pub async fn advance(self, table: &Table, key_schema: &SchemaRef, from: i64) -> Result<Self> {
        match self.catch_up(table, key_schema, from).await {
            Ok(Some((index, replayed))) => {
                tracing::debug!(table = %table.identifier(), replayed, "key index brought forward");
                Ok(index)
            }
            Ok(None) => Self::rebuild(table, key_schema).await,
            // A file of the chain gone meanwhile (expired and swept), say: the index is a
            // cache, rebuilt from what is live now.
            Err(e) => {
                tracing::warn!(table = %table.identifier(), error = %e, "could not bring the key index forward; rebuilding it");
                Self::rebuild(table, key_schema).await
            }
        }
    }

    /// Brings an index of snapshot `from` of `table` up to the current snapshot by replaying
    /// what each snapshot in between changed, and returns it with the number of snapshots
    /// replayed: the rows of the data files it removed leave the index (a compaction, a
    /// restarted copy), the rows of its new data files enter it, then its position deletes
    /// remove the rows they name. `None` when the chain back to `from` is gone (expired), a
    /// snapshot's summary does not prove which files it removed, or a row delta's delete
    /// names a row the index does not hold: only a rebuild is right then.
    pub(super) async fn catch_up(
        mut self,
        table: &Table,
        key_schema: &SchemaRef,
        from: i64,
    ) -> Result<Option<(Self, usize)>> {
        let meta = table.metadata();
        let mut chain = Vec::new();
        let mut at = meta.current_snapshot().cloned();
        loop {
            let Some(s) = at else {
                return Ok(None);
            };
            if s.snapshot_id() == from {
                break;
            }
            at = s
                .parent_snapshot_id()
                .and_then(|p| meta.snapshot_by_id(p).cloned());
            chain.push(s);
        }
        chain.reverse();
        let file_io = table.file_io();
        let converter = key_converter(key_schema)?;
        for s in &chain {
            let changed = changed_by(table, s).await?;
            // The files a snapshot removed are read from its manifests; its summary must
            // agree, or the snapshot is not one of ours to trust.
            let summary = s.summary();
            let removed_count = summary
                .additional_properties
                .get("deleted-data-files")
                .map(|v| v.parse::<usize>().ok());
            let trusted = match (summary.operation.clone(), removed_count) {
                (iceberg::spec::Operation::Append, None) => changed.removed.is_empty(),
                (_, Some(Some(n))) => n == changed.removed.len(),
                _ => false,
            };
            if !trusted {
                return Ok(None);
            }
            // A rewrite restates deletes (translated or merged ones): rows already gone are
            // fine there. Anywhere else a delete of a row the index lacks means it is wrong.
            let restates = summary.operation == iceberg::spec::Operation::Replace;
            // Every indexed file removed (a TRUNCATE, a restarted copy): nothing to read.
            let removed: HashSet<&str> = changed.removed.iter().map(String::as_str).collect();
            if !removed.is_empty() && self.file_ids.keys().all(|p| removed.contains(p.as_ref())) {
                self.clear();
            }
            for path in &changed.removed {
                let Some(file) = self.forget_file(path) else {
                    continue;
                };
                let mut pos: u64 = 0;
                for b in read_projected(file_io, path, key_schema, None).await? {
                    let rows = converter.convert_columns(b.columns())?;
                    for i in 0..b.num_rows() {
                        // Rows deleted earlier are not in the index: nothing to remove.
                        self.remove(rows.row(i).as_ref(), loc(file, pos)?);
                        pos += 1;
                    }
                }
            }
            for path in &changed.data {
                let file = self.file_id(path);
                let mut pos: u64 = 0;
                for b in read_projected(file_io, path, key_schema, None).await? {
                    let rows = converter.convert_columns(b.columns())?;
                    for i in 0..b.num_rows() {
                        self.push(rows.row(i).as_ref(), loc(file, pos)?);
                        pos += 1;
                    }
                }
            }
            let mut by_file: HashMap<String, Vec<u64>> = HashMap::new();
            for d in &changed.deletes {
                for (path, pos) in read_position_deletes(file_io, d).await? {
                    by_file.entry(path).or_default().push(pos);
                }
            }
            for (path, mut positions) in by_file {
                positions.sort_unstable();
                positions.dedup();
                // A rewrite's deletes of its own new files must hit; only restated deletes
                // of older files may miss.
                let restated = restates && !changed.data.contains(&path);
                let Some(&file) = self.file_ids.get(path.as_str()) else {
                    if restated {
                        continue; // a merged delete of a file rewritten since
                    }
                    return Ok(None);
                };
                let mut k = 0;
                for b in read_projected(file_io, &path, key_schema, Some(&positions)).await? {
                    let rows = converter.convert_columns(b.columns())?;
                    for i in 0..b.num_rows() {
                        let pos = positions.get(k).copied().unwrap_or(u64::MAX);
                        if !self.remove(rows.row(i).as_ref(), loc(file, pos)?) && !restated {
                            return Ok(None);
                        }
                        k += 1;
                    }
                }
                if k != positions.len() {
                    return Err(LakehouseError::RowCountMismatch {
                        file: path,
                        read: k as u64,
                        expected: positions.len() as u64,
                    });
                }
            }
        }
        Ok(Some((self, chain.len())))
    }
}

/// The files one snapshot changed.
#[derive(Debug, Default)]
struct Changed {
    /// Data files it added.
    data: Vec<String>,
    /// Position-delete files it added.
    deletes: Vec<String>,
    /// Data files it removed.
    removed: Vec<String>,
}

/// What snapshot `s` added and removed, from the manifest entries it wrote.
async fn changed_by(table: &Table, s: &iceberg::spec::SnapshotRef) -> Result<Changed> {
    let name = table.identifier().to_string();
    let list = table
        .manifest_list_reader(s)
        .load()
        .await
        .map_err(LakehouseError::iceberg(&name))?;
    let mut out = Changed::default();
    for m in list
        .entries()
        .iter()
        .filter(|m| m.added_snapshot_id == s.snapshot_id())
    {
        let manifest = m
            .load_manifest(table.file_io())
            .await
            .map_err(LakehouseError::iceberg(&name))?;
        for e in manifest.entries() {
            if e.snapshot_id() != Some(s.snapshot_id()) {
                continue;
            }
            let added = match e.status() {
                iceberg::spec::ManifestStatus::Added => true,
                iceberg::spec::ManifestStatus::Deleted => false,
                iceberg::spec::ManifestStatus::Existing => continue,
            };
            let path = e.file_path().to_string();
            match e.content_type() {
                iceberg::spec::DataContentType::Data if added => out.data.push(path),
                iceberg::spec::DataContentType::Data => out.removed.push(path),
                iceberg::spec::DataContentType::PositionDeletes if added => out.deletes.push(path),
                iceberg::spec::DataContentType::PositionDeletes => {}
                iceberg::spec::DataContentType::EqualityDeletes => {
                    return Err(LakehouseError::EqualityDeletes {
                        table: name.to_string(),
                        file: e.file_path().to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}
