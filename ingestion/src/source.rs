//! The source side: which tables a publication holds and how their types map.

use std::collections::HashMap;

use lakehouse::{ChangeLogSchema, ColumnType, SourceColumn};
use tokio_postgres::Client;

use crate::pgoutput::Relation;

use crate::{IngestError, Result};

/// How a PostgreSQL column's text output is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgKind {
    /// bool
    Bool,
    /// int2
    Int2,
    /// int4
    Int4,
    /// int8
    Int8,
    /// float4
    Float4,
    /// float8
    Float8,
    /// numeric(p, s) with p ≤ 38 and s ≥ 0: an exact decimal.
    Decimal {
        /// Precision.
        precision: u8,
        /// Scale.
        scale: i8,
    },
    /// numeric without a usable (p, s): kept exactly, as its text.
    NumericText,
    /// text, varchar, char(n), name, json, jsonb, enums: kept as text.
    Text,
    /// bytea
    Bytea,
    /// date
    Date,
    /// time without time zone
    Time,
    /// timestamp without time zone
    Timestamp,
    /// timestamp with time zone (normalised to UTC)
    TimestampTz,
    /// uuid
    Uuid,
    /// One-dimensional array of a supported element type.
    Array(Box<PgKind>),
}

impl PgKind {
    /// The lakehouse type this kind is stored as.
    pub fn column_type(&self) -> ColumnType {
        match self {
            PgKind::Bool => ColumnType::Boolean,
            PgKind::Int2 | PgKind::Int4 => ColumnType::Int,
            PgKind::Int8 => ColumnType::Long,
            PgKind::Float4 => ColumnType::Float,
            PgKind::Float8 => ColumnType::Double,
            PgKind::Decimal { precision, scale } => ColumnType::Decimal {
                precision: *precision as u32,
                scale: *scale as u32,
            },
            PgKind::NumericText | PgKind::Text => ColumnType::String,
            PgKind::Bytea => ColumnType::Binary,
            PgKind::Date => ColumnType::Date,
            PgKind::Time => ColumnType::Time,
            PgKind::Timestamp => ColumnType::Timestamp,
            PgKind::TimestampTz => ColumnType::TimestampTz,
            PgKind::Uuid => ColumnType::Uuid,
            PgKind::Array(e) => ColumnType::List(Box::new(e.column_type())),
        }
    }
}

/// A published column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgColumn {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
    /// The type as PostgreSQL prints it (`numeric(12,2)`).
    pub type_name: String,
    /// How its values are read.
    pub kind: PgKind,
    /// Its attnum, which stays with the column through renames (unknown when the catalog
    /// no longer has a column the change stream still names).
    pub attnum: Option<i32>,
    /// Added with a default PostgreSQL gives existing rows without logging a change.
    pub backfilled: bool,
}

impl PgColumn {
    /// How the initial copy selects this column in a binary COPY: the expression, and
    /// whether its values arrive in the type's binary form (`true`, read natively) or as
    /// its text (`false`). Types whose binary form is not their text output, or that are
    /// not read natively (numeric, arrays, jsonb, enums, domains), are cast to text, which
    /// is exactly what the change stream sends for them.
    pub fn copy_expr(&self) -> (String, bool) {
        let name = crate::replication::quote_ident(&self.name);
        match self.type_oid {
            // bool, bytea, int8, int2, int4, float4, float8, date, time, timestamp,
            // timestamptz, uuid; text, varchar, name, bpchar (padded), json: their text.
            16 | 17 | 20 | 21 | 23 | 700 | 701 | 1082 | 1083 | 1114 | 1184 | 2950 | 25 | 1043
            | 19 | 1042 | 114 => (name, true),
            _ => (format!("{name}::text"), false),
        }
    }
}

/// A table of the publication, as we capture it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    /// Table OID (what pgoutput names it by).
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Published columns in order.
    pub columns: Vec<PgColumn>,
    /// Row identity used to replay the log: the columns PostgreSQL sends in old-row images
    /// (the replica identity index, else the primary key), else all columns.
    pub key: Vec<String>,
    /// Whether `key` is a unique key (else it is every column, and equal rows may repeat).
    pub has_pk: bool,
    /// The change-log layout in the lakehouse.
    pub changelog: ChangeLogSchema,
}

impl SourceTable {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

const COLUMNS_SQL: &str = "
SELECT a.attname::text, a.atttypid::oid::int8, a.atttypmod, format_type(a.atttypid, a.atttypmod),
       t.typtype::text, t.typcategory::text, t.typelem::oid::int8,
       et.typtype::text, et.oid::int8, a.attnum::int4
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
  AND (pt.attnames IS NULL OR a.attname = ANY(pt.attnames))
ORDER BY a.attnum";

/// Lists the tables of `publication` with their columns and keys, checking every type.
///
/// Fails before anything is written if a column has a type we cannot store.
pub async fn discover(client: &Client, publication: &str) -> Result<Vec<SourceTable>> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    if exists.is_none() {
        return Err(IngestError::PublicationNotFound(publication.to_string()));
    }
    let tables = client
        .query(
            "SELECT c.oid::int8, pt.schemaname::text, pt.tablename::text, pt.attnames::text[]
             FROM pg_publication_tables pt
             JOIN pg_namespace n ON n.nspname = pt.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
             WHERE pt.pubname = $1 ORDER BY 2, 3",
            &[&publication],
        )
        .await?;
    let mut out = Vec::with_capacity(tables.len());
    let columns_sql = COLUMNS_SQL.replace("pt.attnames", "$2::text[]");
    for row in tables {
        let oid: i64 = row.get(0);
        let schema: String = row.get(1);
        let name: String = row.get(2);
        let attnames: Option<Vec<String>> = row.get(3);
        let qualified = format!("{schema}.{name}");
        let mut columns = Vec::new();
        for c in client.query(&columns_sql, &[&oid, &attnames]).await? {
            let col_name: String = c.get(0);
            let type_oid = c.get::<_, i64>(1) as u32;
            let type_modifier: i32 = c.get(2);
            let type_name: String = c.get(3);
            let typtype: String = c.get(4);
            let elem_typtype: Option<String> = c.get(7);
            let elem_oid: Option<i64> = c.get(8);
            let kind = if let (Some(et), Some(eo)) = (elem_typtype, elem_oid) {
                // Arrays: element typmod is the column's typmod.
                scalar_kind(eo as u32, &et, type_modifier).map(|k| PgKind::Array(Box::new(k)))
            } else {
                scalar_kind(type_oid, &typtype, type_modifier)
            };
            let kind = kind.ok_or_else(|| IngestError::UnsupportedType {
                table: qualified.clone(),
                column: col_name.clone(),
                type_name: type_name.clone(),
            })?;
            columns.push(PgColumn {
                name: col_name,
                type_oid,
                type_modifier,
                type_name,
                kind,
                attnum: Some(c.get(9)),
                backfilled: false,
            });
        }
        let pk = row_identity(client, oid as u32).await?;
        out.push(SourceTable::new(oid as u32, schema, name, columns, pk));
    }
    Ok(out)
}

/// The columns that identify a row of table `oid` in old-row images, as (attnum, name) in
/// key order: those of its `REPLICA IDENTITY USING INDEX` index (unique, not null, and
/// what PostgreSQL sends when a row is updated or deleted, whether or not a primary key
/// exists), else those of its primary key unless deferrable (a deferrable key may repeat
/// inside a statement, so the change stream cannot be replayed by it); none means every
/// column (`FULL`).
async fn row_identity(client: &Client, oid: u32) -> Result<Vec<(i32, String)>> {
    Ok(client
        .query(
            "SELECT a.attnum::int4, a.attname::text
             FROM pg_class c
             JOIN pg_index i ON i.indrelid = c.oid
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
             WHERE c.oid = $1::int8::oid
               AND CASE WHEN c.relreplident = 'i'
                             AND EXISTS (SELECT 1 FROM pg_index x
                                         WHERE x.indrelid = c.oid AND x.indisreplident)
                        THEN i.indisreplident ELSE i.indisprimary AND i.indimmediate END
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&(oid as i64)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

impl SourceTable {
    /// A table with `columns` and row identity `pk` (attnum, name); none means every column.
    pub fn new(
        oid: u32,
        schema: String,
        name: String,
        columns: Vec<PgColumn>,
        pk: Vec<(i32, String)>,
    ) -> Self {
        let has_pk = !pk.is_empty();
        let key: Vec<String> = if has_pk {
            pk.into_iter().map(|(_, n)| n).collect()
        } else {
            columns.iter().map(|c| c.name.clone()).collect()
        };
        let changelog = ChangeLogSchema {
            source_schema: schema.clone(),
            source_table: name.clone(),
            columns: columns
                .iter()
                .map(|c| SourceColumn {
                    name: c.name.clone(),
                    ty: c.kind.column_type(),
                    source_id: c.attnum,
                    backfilled: c.backfilled,
                })
                .collect(),
            key: key.clone(),
        };
        Self {
            oid,
            schema,
            name,
            columns,
            key,
            has_pk,
            changelog,
        }
    }

    /// The table as a Relation message from the change stream describes it. Column
    /// identities (attnums, to tell a rename from a drop and an add), whether a new column
    /// was filled by a default, and the key come from the catalog; the lakehouse decides
    /// against what it stores whether it can follow. Fails with
    /// [`IngestError::SchemaChanged`] when a type cannot be stored or the row identity changed.
    pub async fn describe(&self, client: &Client, rel: &Relation) -> Result<SourceTable> {
        let qualified = self.qualified();
        let changed = |change: String| IngestError::SchemaChanged {
            table: qualified.clone(),
            change,
        };
        let catalog: HashMap<String, (i32, bool)> = client
            .query(
                "SELECT attname::text, attnum::int4, atthasmissing FROM pg_attribute
                 WHERE attrelid = $1::int8::oid AND attnum > 0 AND NOT attisdropped",
                &[&(self.oid as i64)],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let mut columns = Vec::with_capacity(rel.columns.len());
        for rc in &rel.columns {
            // The stream is older than the catalog when the table changed again since; a name
            // the catalog no longer has keeps no attnum, and is matched by name.
            let (attnum, backfilled) = match catalog.get(&rc.name) {
                Some(&(a, missing)) => (Some(a), missing),
                None => (None, false),
            };
            let same = self.columns.iter().find(|c| {
                c.name == rc.name
                    && c.type_oid == rc.type_oid
                    && c.type_modifier == rc.type_modifier
            });
            let (type_name, kind) = match same {
                Some(c) => (c.type_name.clone(), Some(c.kind.clone())),
                None => type_kind(client, rc.type_oid, rc.type_modifier).await?,
            };
            let kind = kind.ok_or_else(|| {
                changed(format!(
                    "column {} has type {type_name}, which cannot be stored",
                    rc.name
                ))
            })?;
            columns.push(PgColumn {
                name: rc.name.clone(),
                type_oid: rc.type_oid,
                type_modifier: rc.type_modifier,
                type_name,
                kind,
                attnum,
                backfilled,
            });
        }
        let pk: Vec<(i32, String)> = row_identity(client, self.oid).await?;
        let pk: Vec<(i32, String)> = if pk
            .iter()
            .all(|(a, _)| columns.iter().any(|c| c.attnum == Some(*a)))
        {
            pk
        } else {
            // The key names a column the stream does not have yet (the catalog moved on).
            return Err(changed(
                "row identity names a column the change stream does not have".into(),
            ));
        };
        let key_ids = |t: &SourceTable| -> Vec<Option<i32>> {
            t.key
                .iter()
                .map(|k| {
                    t.columns
                        .iter()
                        .find(|c| &c.name == k)
                        .and_then(|c| c.attnum)
                })
                .collect()
        };
        let next = SourceTable::new(
            self.oid,
            self.schema.clone(),
            self.name.clone(),
            columns,
            pk,
        );
        // The stream names the columns its old-row images carry (as of the position being
        // decoded, which the catalog may have left behind): they must be our key, or deletes
        // and key changes could not find their rows.
        if next.has_pk && matches!(rel.replica_identity, b'd' | b'i') {
            let sent: std::collections::BTreeSet<&str> = rel
                .columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.as_str())
                .collect();
            let ours: std::collections::BTreeSet<&str> =
                next.key.iter().map(String::as_str).collect();
            if sent != ours {
                return Err(changed(format!(
                    "the change stream identifies rows by ({}) but the table's row identity is ({})",
                    sent.into_iter().collect::<Vec<_>>().join(", "),
                    next.key.join(", ")
                )));
            }
        }
        if next.has_pk != self.has_pk || (self.has_pk && key_ids(&next) != key_ids(self)) {
            return Err(changed(format!(
                "row identity (replica identity index, else primary key) changed from ({}) to ({})",
                if self.has_pk {
                    self.key.join(", ")
                } else {
                    "none".into()
                },
                if next.has_pk {
                    next.key.join(", ")
                } else {
                    "none".into()
                },
            )));
        }
        Ok(next)
    }
}

/// How a column of type `oid` with modifier `typmod` is read, with the type's printed name.
async fn type_kind(client: &Client, oid: u32, typmod: i32) -> Result<(String, Option<PgKind>)> {
    let row = client
        .query_opt(
            "SELECT format_type(t.oid, $2), t.typtype::text, et.typtype::text, et.oid::int8
             FROM pg_type t LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
             WHERE t.oid = $1::int8::oid",
            &[&(oid as i64), &typmod],
        )
        .await?;
    let Some(row) = row else {
        return Ok((format!("type oid {oid}"), None));
    };
    let type_name: String = row.get(0);
    let typtype: String = row.get(1);
    let elem: (Option<String>, Option<i64>) = (row.get(2), row.get(3));
    let kind = match elem {
        (Some(et), Some(eo)) => {
            scalar_kind(eo as u32, &et, typmod).map(|k| PgKind::Array(Box::new(k)))
        }
        _ => scalar_kind(oid, &typtype, typmod),
    };
    Ok((type_name, kind))
}

/// Maps a non-array type; `None` means unsupported.
fn scalar_kind(oid: u32, typtype: &str, typmod: i32) -> Option<PgKind> {
    if typtype == "e" {
        return Some(PgKind::Text);
    }
    Some(match oid {
        16 => PgKind::Bool,
        17 => PgKind::Bytea,
        19 | 25 | 1042 | 1043 | 114 | 3802 => PgKind::Text,
        20 => PgKind::Int8,
        21 => PgKind::Int2,
        23 => PgKind::Int4,
        700 => PgKind::Float4,
        701 => PgKind::Float8,
        1082 => PgKind::Date,
        1083 => PgKind::Time,
        1114 => PgKind::Timestamp,
        1184 => PgKind::TimestampTz,
        2950 => PgKind::Uuid,
        1700 => numeric_kind(typmod),
        _ => return None,
    })
}

/// numeric(p, s) fits an Iceberg decimal when 1 ≤ p ≤ 38 and 0 ≤ s ≤ p; anything
/// else (unconstrained numeric, negative scale) is kept as exact text.
fn numeric_kind(typmod: i32) -> PgKind {
    if typmod < 4 {
        return PgKind::NumericText;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    // PostgreSQL 15 stores the scale as an 11-bit signed number.
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    if (1..=38).contains(&precision) && (0..=precision).contains(&scale) {
        PgKind::Decimal {
            precision: precision as u8,
            scale: scale as i8,
        }
    } else {
        PgKind::NumericText
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods() {
        // numeric(12,2): typmod = ((12 << 16) | 2) + 4
        assert_eq!(
            numeric_kind(((12 << 16) | 2) + 4),
            PgKind::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(numeric_kind(-1), PgKind::NumericText);
        assert_eq!(numeric_kind(((60 << 16) | 2) + 4), PgKind::NumericText);
        // numeric(5,-2): scale stored as 11-bit two's complement
        assert_eq!(
            numeric_kind(((5 << 16) | (2048 - 2)) + 4),
            PgKind::NumericText
        );
    }

    #[test]
    fn unsupported_types_are_none() {
        assert_eq!(scalar_kind(1186, "b", -1), None); // interval
        assert_eq!(scalar_kind(1266, "b", -1), None); // timetz
        assert_eq!(scalar_kind(12345, "e", -1), Some(PgKind::Text));
    }
}
