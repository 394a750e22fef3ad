//! What a REST commit may point at: every file it adds (manifest list, manifests, the data
//! and delete files they list, statistics) and every path property must lie inside the
//! table's own location. Otherwise a table a role may write could make the doors read
//! `/etc/passwd`, or another table's files past that role's grants.
//!
//! A snapshot's manifests are trusted without reading them only when its parent snapshot
//! (already checked when it was committed) lists the same manifest file; any other
//! manifest is read and each of its entries checked.

use std::collections::HashSet;
use std::sync::Arc;

use iceberg::TableUpdate;
use iceberg::spec::Snapshot;
use iceberg::table::Table;

use crate::{Result, ServingError};

/// Table properties that name where files go.
const PATH_PROPERTIES: [&str; 4] = [
    "write.data.path",
    "write.metadata.path",
    "write.object-storage.path",
    "write.folder-storage.path",
];

/// Refuses `path` unless it lies under `root` (ending in `/`), as
/// [`catalog::storage::lies_within`] decides (no `.`, `..` or empty segment, plainly or
/// percent-encoded).
pub(super) fn check_inside(root: &str, path: &str, what: &str) -> Result<()> {
    if catalog::storage::lies_within(root.trim_end_matches('/'), path) {
        Ok(())
    } else {
        Err(ServingError::NotAllowed(format!(
            "{what} {path} lies outside the table's location {root}"
        )))
    }
}

/// Refuses path properties outside `root`.
pub(super) fn check_properties(
    root: &str,
    properties: &std::collections::HashMap<String, String>,
) -> Result<()> {
    for key in PATH_PROPERTIES {
        if let Some(value) = properties.get(key) {
            let value = value.trim_end_matches('/');
            if format!("{value}/") != root {
                check_inside(root, value, key)?;
            }
        }
    }
    Ok(())
}

/// Checks what `updates` would make `table` point at; `checked` remembers manifests already
/// read (a retried commit does not read them again).
pub(super) async fn check_updates(
    table: &Table,
    updates: &[TableUpdate],
    checked: &mut HashSet<String>,
) -> Result<()> {
    let location = table.metadata().location().trim_end_matches('/');
    let root = format!("{location}/");
    for update in updates {
        match update {
            TableUpdate::AssignUuid { .. } => {
                return Err(ServingError::NotAllowed(
                    "a table's uuid never changes".into(),
                ));
            }
            TableUpdate::SetLocation { location: asked }
                if asked.trim_end_matches('/') != location =>
            {
                return Err(ServingError::NotAllowed(format!(
                    "a table's location is chosen by the catalog ({location}), not {asked}"
                )));
            }
            TableUpdate::SetProperties { updates } => check_properties(&root, updates)?,
            TableUpdate::AddSnapshot { snapshot } => {
                check_snapshot(table, snapshot, &root, checked).await?
            }
            TableUpdate::SetStatistics { statistics } => {
                check_inside(&root, &statistics.statistics_path, "statistics file")?
            }
            TableUpdate::SetPartitionStatistics {
                partition_statistics,
            } => check_inside(
                &root,
                &partition_statistics.statistics_path,
                "partition statistics file",
            )?,
            TableUpdate::AddEncryptionKey { .. } => {
                return Err(ServingError::Unsupported("table encryption keys".into()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the files a new snapshot names.
async fn check_snapshot(
    table: &Table,
    snapshot: &Snapshot,
    root: &str,
    checked: &mut HashSet<String>,
) -> Result<()> {
    check_inside(root, snapshot.manifest_list(), "manifest list")?;
    let unreadable = |what: &str, e: iceberg::Error| {
        ServingError::BadRequest(format!("the snapshot's {what} cannot be read: {e}"))
    };
    let mut trusted: HashSet<String> = HashSet::new();
    if let Some(parent) = snapshot
        .parent_snapshot_id()
        .and_then(|id| table.metadata().snapshot_by_id(id))
    {
        let list = table
            .manifest_list_reader(parent)
            .load()
            .await
            .map_err(|e| ServingError::Iceberg(Box::new(e)))?;
        trusted.extend(list.entries().iter().map(|m| m.manifest_path.clone()));
    }
    let list = table
        .manifest_list_reader(&Arc::new(snapshot.clone()))
        .load()
        .await
        .map_err(|e| unreadable("manifest list", e))?;
    for manifest in list.entries() {
        let path = &manifest.manifest_path;
        check_inside(root, path, "manifest")?;
        if trusted.contains(path) || checked.contains(path) {
            continue;
        }
        let read = manifest
            .load_manifest(table.file_io())
            .await
            .map_err(|e| unreadable("manifest", e))?;
        for entry in read.entries() {
            check_inside(root, entry.file_path(), "data file")?;
        }
        checked.insert(path.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "file:///wh/sandbox/t/";

    #[test]
    fn only_paths_under_the_table_pass() {
        check_inside(ROOT, "file:///wh/sandbox/t/data/a.parquet", "f").unwrap();
        check_inside(ROOT, "file:///wh/sandbox/t/data/x=1%2C2/a.parquet", "f").unwrap();
        for bad in [
            "/etc/passwd",
            "file:///etc/passwd",
            "file:///wh/sandbox/t2/data/a.parquet",
            "file:///wh/sandbox/t/../../silver/orders/data/a.parquet",
            "file:///wh/sandbox/t/data/%2e%2e/%2E%2E/x.parquet",
            "file:///wh/sandbox/t/data/a%2F..%2Fb.parquet",
            "file:///wh/sandbox/t//x.parquet",
            "file:///wh/sandbox/t/./x.parquet",
            "file:///wh/sandbox/t/",
            "file:///wh/sandbox/t/data\\..\\x",
            "s3://bucket/wh/sandbox/t/data/a.parquet",
        ] {
            let e = check_inside(ROOT, bad, "data file").unwrap_err();
            assert!(
                matches!(&e, ServingError::NotAllowed(m) if m.contains("outside")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn path_properties_stay_inside() {
        let mut props = std::collections::HashMap::new();
        props.insert(
            "write.data.path".to_string(),
            "file:///wh/sandbox/t/data".to_string(),
        );
        check_properties(ROOT, &props).unwrap();
        props.insert(
            "write.metadata.path".to_string(),
            "file:///wh/silver/orders/metadata".to_string(),
        );
        assert!(check_properties(ROOT, &props).is_err());
    }
}
