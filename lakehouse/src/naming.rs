//! Iceberg names of source tables: readable, stable, and distinct even when two source
//! tables map to the same readable name (`public.a_b` and `a.b` both read `a_b`).
//!
//! A source table `schema.table` is named, in order of preference:
//! 1. `table` for schema `public`, else `schema_table` (the readable name);
//! 2. `schema__table` (double underscore, schema always spelled out);
//! 3. the readable name followed by `__` and 8 hex digits of a hash of `schema.table`.
//!
//! A name belongs to the source table its bronze table records (`bitvelocity.source-table`),
//! so names never move once given: a table keeps the first of its names that records it,
//! and a new table takes the first name nobody holds, new tables claiming in order: those
//! of `public` first, then by schema and table name. Bronze and silver resolve through here and so always agree.

use std::collections::HashMap;

use iceberg::{Catalog, NamespaceIdent, TableIdent};

use crate::layout::{BRONZE_NAMESPACE, SOURCE_TABLE_PROPERTY};
use crate::{ChangeLogSchema, LakehouseError, Result};

/// The names a source table may take, most readable first.
pub fn candidates(schema: &ChangeLogSchema) -> [String; 3] {
    let readable = schema.table_name();
    let spelled = format!("{}__{}", schema.source_schema, schema.source_table);
    let hashed = format!(
        "{readable}__{:08x}",
        fnv1a(&schema.qualified_source()) as u32
    );
    [readable, spelled, hashed]
}

/// The Iceberg table name of each of `tables` (in order), read against the bronze tables
/// that already exist in `catalog`.
pub async fn resolve(catalog: &dyn Catalog, tables: &[ChangeLogSchema]) -> Result<Vec<String>> {
    let ns = NamespaceIdent::new(BRONZE_NAMESPACE.to_string());
    // Which source each existing candidate name records.
    let mut holder: HashMap<String, Option<String>> = HashMap::new();
    for t in tables {
        for name in candidates(t) {
            if holder.contains_key(&name) {
                continue;
            }
            let ident = TableIdent::new(ns.clone(), name.clone());
            let exists = catalog
                .table_exists(&ident)
                .await
                .map_err(LakehouseError::iceberg(&ident))?;
            if exists {
                let table = catalog
                    .load_table(&ident)
                    .await
                    .map_err(LakehouseError::iceberg(&ident))?;
                let source = table
                    .metadata()
                    .properties()
                    .get(SOURCE_TABLE_PROPERTY)
                    .cloned();
                holder.insert(name, source);
            }
        }
    }
    let mut out: Vec<Option<String>> = vec![None; tables.len()];
    // Tables named before keep their names.
    for (slot, t) in out.iter_mut().zip(tables) {
        let source = t.qualified_source();
        let [readable, ..] = candidates(t);
        *slot = candidates(t)
            .into_iter()
            .find(|name| match holder.get(name) {
                Some(Some(s)) => *s == source,
                // A table written before the source was recorded holds its readable name.
                Some(None) => *name == readable,
                None => false,
            });
    }
    // New tables take the first name nobody holds.
    let mut order: Vec<usize> = (0..tables.len()).filter(|&i| out[i].is_none()).collect();
    // `public` first: its tables are the ones whose readable name is their plain name.
    order.sort_by_key(|&i| {
        let t = &tables[i];
        (
            t.source_schema != "public",
            &t.source_schema,
            &t.source_table,
        )
    });
    for i in order {
        let t = &tables[i];
        let name = candidates(t)
            .into_iter()
            .find(|n| !holder.contains_key(n))
            .ok_or_else(|| LakehouseError::NameTaken {
                source_table: t.qualified_source(),
                names: candidates(t).join(", "),
            })?;
        holder.insert(name.clone(), Some(t.qualified_source()));
        out[i] = Some(name);
    }
    Ok(out.into_iter().flatten().collect())
}

/// FNV-1a, 64 bits: a hash whose value is fixed by its definition, so names stay the same
/// across versions and platforms (std's hasher makes no such promise).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(s: &str, t: &str) -> ChangeLogSchema {
        ChangeLogSchema {
            source_schema: s.into(),
            source_table: t.into(),
            columns: Vec::new(),
            key: Vec::new(),
        }
    }

    #[test]
    fn colliding_sources_have_distinct_candidates() {
        let a = candidates(&schema("public", "a_b"));
        let b = candidates(&schema("a", "b"));
        assert_eq!(a[0], b[0]);
        assert_eq!(a[0], "a_b");
        assert_eq!(a[1], "public__a_b");
        assert_eq!(b[1], "a__b");
        assert_ne!(a[2], b[2]);
        // Fixed by definition: a change here renames tables in existing warehouses.
        assert_eq!(fnv1a("a.b"), 0xe61d_9919_0466_522c);
        assert_eq!(b[2], "a_b__0466522c");
    }
}
