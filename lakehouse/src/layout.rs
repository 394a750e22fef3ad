//! Names and properties every part of the lakehouse agrees on: the namespaces of the layers
//! and the table and namespace properties that record where they stand. Kept apart so the
//! writers, the readers and the inspectors depend on it rather than on each other.

/// Namespace of the change-log tables.
pub const BRONZE_NAMESPACE: &str = "bronze";
/// Namespace of the current-state tables.
pub const SILVER_NAMESPACE: &str = "silver";
/// Table property naming the source table (`schema.table`).
pub const SOURCE_TABLE_PROPERTY: &str = "bitvelocity.source-table";
/// Table property listing the key columns (comma separated) used to replay the log.
pub const KEY_COLUMNS_PROPERTY: &str = "bitvelocity.key-columns";

/// Silver namespace property: the silver tables whose capture stopped (comma separated);
/// consistent reads leave them out rather than show them at an older position.
pub const STOPPED_TABLES_PROPERTY: &str = "bitvelocity.stopped-tables";

/// Silver namespace property: a source position at which every silver table is complete.
///
/// Advanced after every silver table of a batch is committed (and only once every table
/// has been copied), so reading each table at its newest snapshot whose source position
/// is at or below it shows all tables at one instant of the source.
pub const CONSISTENT_LSN_PROPERTY: &str = "bitvelocity.consistent-lsn";
/// The stopped tables recorded in the `silver` namespace's properties.
pub(crate) fn parse_stopped(props: &std::collections::HashMap<String, String>) -> Vec<String> {
    props
        .get(STOPPED_TABLES_PROPERTY)
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
