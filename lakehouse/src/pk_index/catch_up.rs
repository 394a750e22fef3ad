//! Bringing a checkpoint of an older snapshot up to the current one by replaying the row
//! deltas committed after it.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use iceberg::table::Table;

use super::{PkIndex, key_converter, loc};
use crate::files::{read_position_deletes, read_projected};
use crate::{LakehouseError, Result};

impl PkIndex {
    /// Brings an index of snapshot `from` of `table` up to the current snapshot by replaying
    /// the row deltas in between (their position deletes, then their new data files), and
    /// returns it with the number of snapshots replayed. `None` when one of them removed files
    /// (a compaction, a TRUNCATE, a restarted copy), the chain back to `from` is gone
    /// (expired), or a delete names a row the index does not hold: only a rebuild is right then.
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
            // Only a snapshot known to remove no file adds up: an append, or a row delta
            // whose summary says so. Anything else (a rewrite, a summary without the counts)
            // is rebuilt rather than trusted.
            let summary = s.summary();
            let zero =
                |k: &str| summary.additional_properties.get(k).map(String::as_str) == Some("0");
            let removes_nothing = match summary.operation {
                iceberg::spec::Operation::Append => true,
                iceberg::spec::Operation::Overwrite | iceberg::spec::Operation::Delete => {
                    zero("deleted-data-files") && zero("removed-delete-files")
                }
                iceberg::spec::Operation::Replace => false,
            };
            if !removes_nothing {
                return Ok(None);
            }
            let (data, deletes) = added_by(table, s).await?;
            // Deletes first: they name rows of files committed before this snapshot.
            let mut by_file: HashMap<String, Vec<u64>> = HashMap::new();
            for d in &deletes {
                for (path, pos) in read_position_deletes(file_io, d).await? {
                    by_file.entry(path).or_default().push(pos);
                }
            }
            for (path, mut positions) in by_file {
                positions.sort_unstable();
                positions.dedup();
                let Some(&file) = self.file_ids.get(path.as_str()) else {
                    return Ok(None);
                };
                let mut k = 0;
                for b in read_projected(file_io, &path, key_schema, Some(&positions)).await? {
                    let rows = converter.convert_columns(b.columns())?;
                    for i in 0..b.num_rows() {
                        let pos = positions.get(k).copied().unwrap_or(u64::MAX);
                        if !self.remove(rows.row(i).as_ref(), loc(file, pos)?) {
                            return Ok(None);
                        }
                        k += 1;
                    }
                }
                if k != positions.len() {
                    return Err(LakehouseError::Corrupt(format!(
                        "{path}: read {k} of {} deleted rows",
                        positions.len()
                    )));
                }
            }
            for path in &data {
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
        }
        Ok(Some((self, chain.len())))
    }
}

/// Paths of the data files and position-delete files snapshot `s` added.
async fn added_by(
    table: &Table,
    s: &iceberg::spec::SnapshotRef,
) -> Result<(Vec<String>, Vec<String>)> {
    let name = table.identifier().to_string();
    let list = table
        .manifest_list_reader(s)
        .load()
        .await
        .map_err(LakehouseError::iceberg(&name))?;
    let (mut data, mut deletes) = (Vec::new(), Vec::new());
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
            if e.status() != iceberg::spec::ManifestStatus::Added
                || e.snapshot_id() != Some(s.snapshot_id())
            {
                continue;
            }
            match e.content_type() {
                iceberg::spec::DataContentType::Data => data.push(e.file_path().to_string()),
                iceberg::spec::DataContentType::PositionDeletes => {
                    deletes.push(e.file_path().to_string())
                }
                iceberg::spec::DataContentType::EqualityDeletes => {
                    return Err(LakehouseError::Corrupt(format!(
                        "{name}: equality-delete file {}",
                        e.file_path()
                    )));
                }
            }
        }
    }
    Ok((data, deletes))
}
