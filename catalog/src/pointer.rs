//! The catalog database's row per table holding its current metadata location: the one
//! place a commit becomes visible, on SQLite (embedded) or PostgreSQL (shared).
//!
//! Both speak the table layout of iceberg's SQL catalog (`iceberg_tables`), which
//! `iceberg-catalog-sql` and pyiceberg's `SqlCatalog` read, so a pointer moved here is
//! what every engine loads next.

use std::fmt;

use async_trait::async_trait;
use iceberg::TableIdent;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use crate::{CATALOG_NAME, CatalogError, Result};

/// A catalog database URL, checked once so a typo is a clear error and not a late failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogUrl {
    /// `sqlite:<path>` (created if missing).
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl CatalogUrl {
    /// Parses `sqlite:<path>`, `postgres://…` or `postgresql://…`.
    pub fn parse(text: &str) -> Result<Self> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(CatalogUrl::Postgres(text.to_string()));
        }
        if let Some(rest) = text.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if path.is_empty() || path.starts_with('?') {
                return Err(CatalogError::UnsupportedCatalog {
                    url: text.to_string(),
                    reason: "no database file named".into(),
                });
            }
            let with_mode = if text.contains("mode=") {
                text.to_string()
            } else if text.contains('?') {
                format!("{text}&mode=rwc")
            } else {
                format!("{text}?mode=rwc")
            };
            return Ok(CatalogUrl::Sqlite(with_mode));
        }
        Err(CatalogError::UnsupportedCatalog {
            url: redact(text),
            reason: "use sqlite:<path> or postgres://user@host:port/database".into(),
        })
    }

    /// The URL handed to the database driver.
    pub fn as_str(&self) -> &str {
        match self {
            CatalogUrl::Sqlite(u) | CatalogUrl::Postgres(u) => u,
        }
    }

    /// The URL with any password replaced, for messages and logs.
    pub fn redacted(&self) -> String {
        redact(self.as_str())
    }

    /// Opens the pointer store of this database.
    pub async fn pointers(&self) -> Result<Box<dyn PointerStore>> {
        Ok(match self.connect().await? {
            CatalogDb::Sqlite(p) => Box::new(SqlitePointers(p)),
            CatalogDb::Postgres(p) => Box::new(PostgresPointers(p)),
        })
    }

    /// A small connection pool to this database.
    pub(crate) async fn connect(&self) -> Result<CatalogDb> {
        let db = |source| CatalogError::CatalogDatabase {
            url: self.redacted(),
            source,
        };
        Ok(match self {
            CatalogUrl::Sqlite(u) => CatalogDb::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect(u)
                    .await
                    .map_err(db)?,
            ),
            CatalogUrl::Postgres(u) => CatalogDb::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .connect(u)
                    .await
                    .map_err(db)?,
            ),
        })
    }
}

/// The catalog tables, as iceberg's SQL catalog (and pyiceberg's) lays them out, plus our
/// lease table. Created here first, under an advisory lock on PostgreSQL: there,
/// `CREATE TABLE IF NOT EXISTS` run by several processes at once (an ingester, `maintain`, a
/// reader starting together) can fail with a duplicate-key error on the system catalog.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS iceberg_tables (
        catalog_name VARCHAR(255) NOT NULL,
        table_namespace VARCHAR(255) NOT NULL,
        table_name VARCHAR(255) NOT NULL,
        metadata_location VARCHAR(1000),
        previous_metadata_location VARCHAR(1000),
        iceberg_type VARCHAR(5),
        PRIMARY KEY (catalog_name, table_namespace, table_name))",
    "CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
        catalog_name VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL,
        property_key VARCHAR(255),
        property_value VARCHAR(1000),
        PRIMARY KEY (catalog_name, namespace, property_key))",
    crate::lease::CREATE_LEASES,
    crate::requests::CREATE_REQUESTS,
];

/// Advisory-lock key serializing schema creation on a PostgreSQL catalog.
const SCHEMA_LOCK: i64 = 0x6276_6361_7461_6c67; // "bvcatalg"

impl CatalogUrl {
    /// Creates the catalog tables unless they exist (safe with concurrent openers).
    pub async fn prepare(&self) -> Result<()> {
        let db = |source| CatalogError::CatalogDatabase {
            url: self.redacted(),
            source,
        };
        match self.connect().await? {
            CatalogDb::Postgres(p) => {
                let mut tx = p.begin().await.map_err(db)?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SCHEMA_LOCK)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for ddl in SCHEMA {
                    sqlx::query(ddl).execute(&mut *tx).await.map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
            }
            CatalogDb::Sqlite(p) => {
                for ddl in SCHEMA {
                    sqlx::query(ddl).execute(&p).await.map_err(db)?;
                }
            }
        }
        Ok(())
    }
}

/// Runs one statement body on either database: `$pool` is bound to the pool and `$sql` to the
/// statement in that database's bind style (`?` or `$n`). sqlx's query types differ per
/// database, so the body is written once and expanded twice.
macro_rules! on_db {
    ($db:expr, $pool:ident, $sql:ident = ($qmark:expr, $dollar:expr), $body:expr) => {
        match $db {
            $crate::pointer::CatalogDb::Sqlite($pool) => {
                let $sql = $qmark;
                $body
            }
            $crate::pointer::CatalogDb::Postgres($pool) => {
                let $sql = $dollar;
                $body
            }
        }
    };
}
pub(crate) use on_db;

/// A connection pool of either kind of catalog database.
#[derive(Debug, Clone)]
pub(crate) enum CatalogDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Replaces the password of a `scheme://user:password@host` URL, and a `password=` query
/// parameter.
fn redact(url: &str) -> String {
    let url = match url.split_once("password=") {
        Some((head, tail)) => {
            let rest = tail.find('&').map(|i| &tail[i..]).unwrap_or("");
            format!("{head}password=***{rest}")
        }
        None => url.to_string(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}")
        }
        _ => url.clone(),
    }
}

/// The metadata pointers of a catalog database.
///
/// Contract: [`PointerStore::compare_and_swap`] is atomic. `Ok(true)` means the pointer now
/// names `new` (the commit is visible); `Ok(false)` means it did not name `expected` and
/// nothing changed; `Err` means the outcome is unknown (the statement may have applied
/// before the error): the caller must resolve it with [`PointerStore::current`], never
/// assume it failed.
#[async_trait]
pub trait PointerStore: Send + Sync + fmt::Debug {
    /// Moves the pointer of `table` from `expected` to `new` if it still names `expected`.
    async fn compare_and_swap(
        &self,
        table: &TableIdent,
        expected: &str,
        new: &str,
    ) -> std::result::Result<bool, sqlx::Error>;

    /// The current metadata location of `table`, `None` when the table is not registered.
    async fn current(&self, table: &TableIdent)
    -> std::result::Result<Option<String>, sqlx::Error>;
}

const SWAP_QMARK: &str =
    "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ?
     WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?";
const SWAP_DOLLAR: &str = "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2
     WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 AND metadata_location = $6";
const CURRENT_QMARK: &str = "SELECT metadata_location FROM iceberg_tables
     WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?";
const CURRENT_DOLLAR: &str = "SELECT metadata_location FROM iceberg_tables
     WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3";

/// Pointers in an SQLite catalog file.
#[derive(Debug)]
pub struct SqlitePointers(SqlitePool);

/// Pointers in a PostgreSQL catalog database.
#[derive(Debug)]
pub struct PostgresPointers(PgPool);

/// The pointer store of one database kind: the same statements in its bind style.
macro_rules! pointer_store {
    ($ty:ty, $swap:expr, $current:expr) => {
        #[async_trait]
        impl PointerStore for $ty {
            async fn compare_and_swap(
                &self,
                table: &TableIdent,
                expected: &str,
                new: &str,
            ) -> std::result::Result<bool, sqlx::Error> {
                let done = sqlx::query($swap)
                    .bind(new)
                    .bind(expected)
                    .bind(CATALOG_NAME)
                    .bind(table.namespace().join("."))
                    .bind(table.name())
                    .bind(expected)
                    .execute(&self.0)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn current(
                &self,
                table: &TableIdent,
            ) -> std::result::Result<Option<String>, sqlx::Error> {
                sqlx::query_scalar($current)
                    .bind(CATALOG_NAME)
                    .bind(table.namespace().join("."))
                    .bind(table.name())
                    .fetch_optional(&self.0)
                    .await
                    .map(Option::flatten)
            }
        }
    };
}

pointer_store!(SqlitePointers, SWAP_QMARK, CURRENT_QMARK);
pointer_store!(PostgresPointers, SWAP_DOLLAR, CURRENT_DOLLAR);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_catalog_urls() {
        assert_eq!(
            CatalogUrl::parse("sqlite:/w/catalog.db").unwrap(),
            CatalogUrl::Sqlite("sqlite:/w/catalog.db?mode=rwc".into())
        );
        assert!(matches!(
            CatalogUrl::parse("postgresql://u:p@h:5/db").unwrap(),
            CatalogUrl::Postgres(_)
        ));
        let e = CatalogUrl::parse("mysql://u:secret@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mysql://u:***@h/db") && !e.contains("secret"),
            "{e}"
        );
        assert!(CatalogUrl::parse("sqlite:").is_err());
        assert_eq!(
            CatalogUrl::parse("postgres://u:pw@h/db")
                .unwrap()
                .redacted(),
            "postgres://u:***@h/db"
        );
    }
}
