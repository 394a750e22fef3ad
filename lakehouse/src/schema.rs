//! The layout of change-log tables: source columns plus change metadata.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use iceberg::spec::{ListType, NestedField, NestedFieldRef, PrimitiveType, Schema, Type};

use crate::{LakehouseError, Result};

/// Column holding the kind of change: `insert`, `update`, `delete` or `truncate`.
pub const OP_COLUMN: &str = "_op";
/// Column holding the source commit LSN (as a number; PostgreSQL prints it as hex/hex).
pub const LSN_COLUMN: &str = "_lsn";
/// Column holding the source transaction id (null for rows of the initial copy).
pub const TXID_COLUMN: &str = "_txid";
/// Column holding the source commit time (UTC).
pub const COMMIT_TS_COLUMN: &str = "_commit_ts";
/// Column holding the order of the change within its source transaction.
pub const SEQ_COLUMN: &str = "_seq";
/// Column naming the columns whose value did not change and was not sent (unchanged TOAST).
pub const UNCHANGED_COLUMN: &str = "_unchanged_cols";

/// Names of the metadata columns every change-log table carries after the source columns.
pub const META_COLUMNS: &[&str] = &[
    OP_COLUMN,
    LSN_COLUMN,
    TXID_COLUMN,
    COMMIT_TS_COLUMN,
    SEQ_COLUMN,
    UNCHANGED_COLUMN,
];

/// A column type the lakehouse stores; sources map their own types onto these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// true/false.
    Boolean,
    /// 32-bit integer.
    Int,
    /// 64-bit integer.
    Long,
    /// 32-bit float.
    Float,
    /// 64-bit float.
    Double,
    /// Exact decimal with precision ≤ 38.
    Decimal {
        /// Total digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// UTF-8 text.
    String,
    /// Bytes.
    Binary,
    /// Calendar date.
    Date,
    /// Time of day, microseconds.
    Time,
    /// Timestamp without zone, microseconds.
    Timestamp,
    /// Instant, microseconds, UTC.
    TimestampTz,
    /// 128-bit UUID.
    Uuid,
    /// List of elements of one type.
    List(Box<ColumnType>),
}

impl ColumnType {
    fn to_iceberg(&self, next_id: &mut i32) -> Type {
        let p = |t| Type::Primitive(t);
        match self {
            ColumnType::Boolean => p(PrimitiveType::Boolean),
            ColumnType::Int => p(PrimitiveType::Int),
            ColumnType::Long => p(PrimitiveType::Long),
            ColumnType::Float => p(PrimitiveType::Float),
            ColumnType::Double => p(PrimitiveType::Double),
            ColumnType::Decimal { precision, scale } => p(PrimitiveType::Decimal {
                precision: *precision,
                scale: *scale,
            }),
            ColumnType::String => p(PrimitiveType::String),
            ColumnType::Binary => p(PrimitiveType::Binary),
            ColumnType::Date => p(PrimitiveType::Date),
            ColumnType::Time => p(PrimitiveType::Time),
            ColumnType::Timestamp => p(PrimitiveType::Timestamp),
            ColumnType::TimestampTz => p(PrimitiveType::Timestamptz),
            ColumnType::Uuid => p(PrimitiveType::Uuid),
            ColumnType::List(inner) => {
                let id = *next_id;
                *next_id += 1;
                let element = inner.to_iceberg(next_id);
                Type::List(ListType::new(Arc::new(NestedField::list_element(
                    id, element, false,
                ))))
            }
        }
    }
}

/// One column of a source table as the lakehouse stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// Column name, as in the source.
    pub name: String,
    /// Stored type.
    pub ty: ColumnType,
    /// The column's identity in the source (PostgreSQL's attnum), which survives a rename:
    /// it tells a renamed column from a dropped one plus a new one.
    pub source_id: Option<i32>,
    /// PostgreSQL gave existing rows a value for this column without logging a change
    /// (ADD COLUMN with a default): adding it would show those rows wrong.
    pub backfilled: bool,
}

/// A source table and the change-log table that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLogSchema {
    /// Source schema (PostgreSQL namespace).
    pub source_schema: String,
    /// Source table name.
    pub source_table: String,
    /// Source columns, in source order.
    pub columns: Vec<SourceColumn>,
    /// Columns that identify a row (primary key, or every column without one).
    pub key: Vec<String>,
}

impl ChangeLogSchema {
    /// The readable name of the lakehouse table: the source name, prefixed by its schema
    /// unless `public`. Two sources may share it; [`crate::naming::resolve`] gives the name
    /// a table actually has.
    pub fn table_name(&self) -> String {
        if self.source_schema == "public" {
            self.source_table.clone()
        } else {
            format!("{}_{}", self.source_schema, self.source_table)
        }
    }

    /// `schema.table` of the source, for messages and table properties.
    pub fn qualified_source(&self) -> String {
        format!("{}.{}", self.source_schema, self.source_table)
    }

    /// The Iceberg schema: source columns (all optional: deletes carry only the key),
    /// then the metadata columns.
    pub fn iceberg_schema(&self) -> Result<Schema> {
        let mut next_id = 1;
        let mut fields = Vec::with_capacity(self.columns.len() + META_COLUMNS.len());
        // Field ids of top-level columns come first so they stay stable as 1..=n.
        let top = self.columns.len() as i32 + META_COLUMNS.len() as i32;
        let mut nested_id = top + 1;
        for c in &self.columns {
            let ty = c.ty.to_iceberg(&mut nested_id);
            fields.push(Arc::new(NestedField::optional(next_id, &c.name, ty)));
            next_id += 1;
        }
        let string_list = ColumnType::List(Box::new(ColumnType::String)).to_iceberg(&mut nested_id);
        let meta: [(&str, Type, bool); 6] = [
            (OP_COLUMN, Type::Primitive(PrimitiveType::String), true),
            (LSN_COLUMN, Type::Primitive(PrimitiveType::Long), true),
            (TXID_COLUMN, Type::Primitive(PrimitiveType::Long), false),
            (
                COMMIT_TS_COLUMN,
                Type::Primitive(PrimitiveType::Timestamptz),
                true,
            ),
            (SEQ_COLUMN, Type::Primitive(PrimitiveType::Long), true),
            (UNCHANGED_COLUMN, string_list, false),
        ];
        for (name, ty, required) in meta {
            fields.push(Arc::new(NestedField::new(next_id, name, ty, required)));
            next_id += 1;
        }
        Schema::builder()
            .with_schema_id(0)
            .with_fields(fields)
            .build()
            .map_err(LakehouseError::iceberg(&self.qualified_source()))
    }

    /// The Arrow schema (with Iceberg field ids) that writers of this table must produce.
    pub fn arrow_schema(&self) -> Result<SchemaRef> {
        let schema = self.iceberg_schema()?;
        let arrow = iceberg::arrow::schema_to_arrow_schema(&schema)
            .map_err(LakehouseError::iceberg(&self.qualified_source()))?;
        Ok(Arc::new(arrow))
    }
}

/// A type printed without field ids, for comparing layouts.
pub(crate) fn type_shape(t: &Type) -> String {
    match t {
        Type::List(l) => format!("list<{}>", type_shape(&l.element_field.field_type)),
        other => other.to_string(),
    }
}

/// Table property recording, per Iceberg field id, the source column id it holds
/// (`field:attnum,...`), so a later rename is recognised as one.
pub const SOURCE_IDS_PROPERTY: &str = "bitvelocity.source-column-ids";

/// A stored schema moved to a new source layout.
#[derive(Debug, Clone)]
pub struct Evolution {
    /// The new Iceberg schema: kept columns keep their field ids, new ones get fresh ids.
    pub schema: Schema,
    /// The value of [`SOURCE_IDS_PROPERTY`] that goes with it.
    pub source_ids: String,
    /// What changed, for logs (`added c`, `renamed b to c`, `widened n from int to long`).
    pub changes: Vec<String>,
}

/// Reads [`SOURCE_IDS_PROPERTY`]: field id → source column id.
pub fn parse_source_ids(value: Option<&String>) -> HashMap<i32, i32> {
    value
        .map(|v| {
            v.split(',')
                .filter_map(|p| {
                    let (f, a) = p.split_once(':')?;
                    Some((f.trim().parse().ok()?, a.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The [`SOURCE_IDS_PROPERTY`] value for a schema built from `wanted` (fields in column order).
pub fn source_ids_of(schema: &Schema, wanted: &ChangeLogSchema) -> String {
    wanted
        .columns
        .iter()
        .filter_map(|c| Some((schema.field_by_name(&c.name)?.id, c.source_id?)))
        .map(|(f, a)| format!("{f}:{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Moves `stored` (the table's current schema) to the source layout `wanted`, the way
/// Iceberg schema evolution allows: a column is the same column when its source id
/// matches (else, when either side has no source id, when its name does), so renames
/// keep their field id and old files stay readable; columns gone from the source are
/// dropped; new ones get ids above `last_column_id` (never reusing a dropped id); types
/// may only widen (int→long, float→double, decimal precision up). Change-log metadata
/// columns (present in bronze) keep their place at the end. `None` when nothing changes.
pub fn evolve_schema(
    table: &str,
    stored: &Schema,
    last_column_id: i32,
    stored_source_ids: &HashMap<i32, i32>,
    wanted: &ChangeLogSchema,
) -> Result<Option<Evolution>> {
    let incompatible = |change: String| LakehouseError::IncompatibleSchema {
        table: table.to_string(),
        change,
    };
    let source_fields: Vec<&NestedFieldRef> = stored
        .as_struct()
        .fields()
        .iter()
        .filter(|f| !META_COLUMNS.contains(&f.name.as_str()))
        .collect();
    let mut used: HashSet<i32> = HashSet::new();
    let mut next_id = last_column_id.max(stored.highest_field_id()) + 1;
    let mut fields = Vec::with_capacity(stored.as_struct().fields().len() + 1);
    let mut changes = Vec::new();
    // Field id → source id; a column the stream names without a source id (the catalog
    // moved on) keeps the one recorded for its field.
    let mut ids: Vec<(i32, i32)> = Vec::new();
    for c in &wanted.columns {
        let by_source = c.source_id.and_then(|a| {
            source_fields
                .iter()
                .find(|f| stored_source_ids.get(&f.id) == Some(&a))
        });
        let by_name = || {
            source_fields.iter().find(|f| {
                f.name == c.name
                    && (c.source_id.is_none() || !stored_source_ids.contains_key(&f.id))
            })
        };
        let matched = by_source.or_else(by_name).filter(|f| !used.contains(&f.id));
        match matched {
            Some(f) => {
                used.insert(f.id);
                if let Some(a) = c
                    .source_id
                    .or_else(|| stored_source_ids.get(&f.id).copied())
                {
                    ids.push((f.id, a));
                }
                let ty = promote(&f.field_type, &c.ty)
                    .map_err(|why| incompatible(format!("column {}: {why}", c.name)))?;
                if f.name != c.name {
                    changes.push(format!("renamed {} to {}", f.name, c.name));
                }
                if ty != *f.field_type {
                    changes.push(format!(
                        "widened {} from {} to {}",
                        c.name, f.field_type, ty
                    ));
                }
                let mut field = NestedField::optional(f.id, &c.name, ty);
                field.doc = f.doc.clone();
                fields.push(Arc::new(field));
            }
            None => {
                if c.backfilled {
                    return Err(incompatible(format!(
                        "column {} was added with a default, which PostgreSQL gives existing rows without logging a change",
                        c.name
                    )));
                }
                if c.source_id.is_none()
                    && source_fields
                        .iter()
                        .any(|f| !used.contains(&f.id) && stored_source_ids.contains_key(&f.id))
                {
                    return Err(incompatible(format!(
                        "column {} cannot be told apart from a renamed column: the source table changed again since",
                        c.name
                    )));
                }
                let id = next_id;
                next_id += 1;
                let mut nested = next_id;
                let ty = c.ty.to_iceberg(&mut nested);
                next_id = nested;
                changes.push(format!("added {}", c.name));
                if let Some(a) = c.source_id {
                    ids.push((id, a));
                }
                fields.push(Arc::new(NestedField::optional(id, &c.name, ty)));
            }
        }
    }
    for f in &source_fields {
        if !used.contains(&f.id) {
            changes.push(format!("dropped {}", f.name));
        }
    }
    fields.extend(
        stored
            .as_struct()
            .fields()
            .iter()
            .filter(|f| META_COLUMNS.contains(&f.name.as_str()))
            .cloned(),
    );
    let same = fields.len() == stored.as_struct().fields().len()
        && fields
            .iter()
            .zip(stored.as_struct().fields())
            .all(|(a, b)| a == b);
    let schema = Schema::builder()
        .with_schema_id(stored.schema_id() + 1)
        .with_fields(fields)
        .build()
        .map_err(LakehouseError::iceberg(&table))?;
    let source_ids = ids
        .iter()
        .map(|(f, a)| format!("{f}:{a}"))
        .collect::<Vec<_>>()
        .join(",");
    let ids_known = parse_source_ids(Some(&source_ids)) == *stored_source_ids;
    if same && ids_known {
        return Ok(None);
    }
    Ok(Some(Evolution {
        schema,
        source_ids,
        changes,
    }))
}

/// The stored type `from` may become `to` only by a widening Iceberg allows.
fn promote(from: &Type, to: &ColumnType) -> std::result::Result<Type, String> {
    let mut scratch = 0;
    let want = to.to_iceberg(&mut scratch);
    if type_shape(from) == type_shape(&want) {
        return Ok(from.clone());
    }
    if widens(from, &want) {
        return Ok(want);
    }
    Err(format!(
        "type {} cannot become {} (only int→long, float→double and wider decimals keep old files readable)",
        type_shape(from),
        type_shape(&want)
    ))
}

/// Whether Iceberg lets a column of type `from` become `to` (old files stay readable).
pub(crate) fn widens(from: &Type, to: &Type) -> bool {
    use PrimitiveType as P;
    match (from, to) {
        (Type::Primitive(P::Int), Type::Primitive(P::Long))
        | (Type::Primitive(P::Float), Type::Primitive(P::Double)) => true,
        (
            Type::Primitive(P::Decimal {
                precision: p1,
                scale: s1,
            }),
            Type::Primitive(P::Decimal {
                precision: p2,
                scale: s2,
            }),
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> ChangeLogSchema {
        ChangeLogSchema {
            source_schema: "public".into(),
            source_table: "orders".into(),
            columns: vec![
                SourceColumn {
                    name: "id".into(),
                    ty: ColumnType::Long,
                    source_id: Some(1),
                    backfilled: false,
                },
                SourceColumn {
                    name: "tags".into(),
                    ty: ColumnType::List(Box::new(ColumnType::String)),
                    source_id: Some(2),
                    backfilled: false,
                },
                SourceColumn {
                    name: "total".into(),
                    ty: ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    source_id: Some(3),
                    backfilled: false,
                },
            ],
            key: vec!["id".into()],
        }
    }

    #[test]
    fn top_level_field_ids_are_dense_and_meta_columns_follow() {
        let s = orders().iceberg_schema().unwrap();
        let names: Vec<(i32, String)> = s
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.id, f.name.clone()))
            .collect();
        assert_eq!(names[0], (1, "id".to_string()));
        assert_eq!(names[3], (4, "_op".to_string()));
        assert_eq!(names.last().unwrap(), &(9, "_unchanged_cols".to_string()));
        // list element ids do not collide with top-level ids
        let mut ids: Vec<i32> = Vec::new();
        for f in s.as_struct().fields() {
            ids.push(f.id);
            if let Type::List(l) = f.field_type.as_ref() {
                ids.push(l.element_field.id);
            }
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn arrow_schema_carries_types() {
        let a = orders().arrow_schema().unwrap();
        assert_eq!(a.field(0).data_type(), &arrow::datatypes::DataType::Int64);
        assert_eq!(
            a.field(2).data_type(),
            &arrow::datatypes::DataType::Decimal128(12, 2)
        );
        assert!(matches!(
            a.field(6).data_type(),
            arrow::datatypes::DataType::Timestamp(_, Some(_))
        ));
    }
}

#[cfg(test)]
mod evolution_tests {
    use super::*;

    fn col(name: &str, ty: ColumnType, id: i32) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            ty,
            source_id: Some(id),
            backfilled: false,
        }
    }

    fn layout(cols: Vec<SourceColumn>) -> ChangeLogSchema {
        ChangeLogSchema {
            source_schema: "public".into(),
            source_table: "kv".into(),
            key: vec!["id".into()],
            columns: cols,
        }
    }

    #[test]
    fn a_rename_keeps_the_field_id_and_a_re_added_name_gets_a_new_one() {
        let v1 = layout(vec![
            col("id", ColumnType::Int, 1),
            col("n", ColumnType::Int, 2),
            col("tag", ColumnType::String, 4),
        ]);
        let stored = v1.iceberg_schema().unwrap();
        let ids = parse_source_ids(Some(&source_ids_of(&stored, &v1)));
        let last = stored.highest_field_id();
        let v2 = layout(vec![
            col("id", ColumnType::Int, 1),
            col("n", ColumnType::Long, 2),
            col("label", ColumnType::String, 4),
            col("tag", ColumnType::String, 7),
        ]);
        let e = evolve_schema("kv", &stored, last, &ids, &v2)
            .unwrap()
            .unwrap();
        let id_of = |n: &str| e.schema.field_by_name(n).unwrap().id;
        assert_eq!(id_of("label"), stored.field_by_name("tag").unwrap().id);
        assert!(id_of("tag") > last, "{:?}", e.changes);
        assert_eq!(
            *e.schema.field_by_name("n").unwrap().field_type,
            Type::Primitive(PrimitiveType::Long)
        );
        // Meta columns keep their ids at the end.
        assert_eq!(
            e.schema.field_by_name(OP_COLUMN).unwrap().id,
            stored.field_by_name(OP_COLUMN).unwrap().id
        );
        // Nothing to do the second time.
        let ids2 = parse_source_ids(Some(&e.source_ids));
        assert!(
            evolve_schema("kv", &e.schema, last + 1, &ids2, &v2)
                .unwrap()
                .is_none()
        );
        // The stream replays an older layout whose name the catalog no longer has: no source
        // id, matched by name, and the recorded source id survives for the later rename.
        let mut replay = v2.clone();
        replay.columns[2].source_id = None;
        assert!(
            evolve_schema("kv", &e.schema, last + 1, &ids2, &replay)
                .unwrap()
                .is_none()
        );
        // Narrowing is refused, naming the column.
        let v3 = layout(vec![
            col("id", ColumnType::Int, 1),
            col("n", ColumnType::Int, 2),
            col("label", ColumnType::String, 4),
            col("tag", ColumnType::String, 7),
        ]);
        let err = evolve_schema("kv", &e.schema, last + 1, &ids2, &v3).unwrap_err();
        assert!(err.to_string().contains("column n"), "{err}");
    }
}
