//! Operator requests to a running ingester, kept in the catalog database (as shared as the
//! catalog itself): `bitvelocity resync <table>` records one, the ingester that holds the
//! warehouse finds it between source transactions, acts on it, and clears it once done. A
//! request outlives crashes on either side: it stays until the work it asks for committed.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::pointer::{CatalogDb, CatalogUrl, on_db};
use crate::{CATALOG_NAME, CatalogError, Result};

/// The kind of request that asks for a table to be copied afresh from its source.
pub const RESYNC: &str = "resync";

/// The request table (created with the catalog's own tables, [`CatalogUrl::prepare`]).
pub(crate) const CREATE_REQUESTS: &str = "CREATE TABLE IF NOT EXISTS bitvelocity_requests (
    catalog_name VARCHAR(255) NOT NULL,
    kind VARCHAR(64) NOT NULL,
    target VARCHAR(1000) NOT NULL,
    requested_by VARCHAR(1000) NOT NULL,
    requested_at BIGINT NOT NULL,
    PRIMARY KEY (catalog_name, kind, target))";

const ADD_QMARK: &str =
    "INSERT INTO bitvelocity_requests (catalog_name, kind, target, requested_by, requested_at)
    VALUES (?, ?, ?, ?, ?) ON CONFLICT (catalog_name, kind, target)
    DO UPDATE SET requested_by = excluded.requested_by,
        requested_at = MAX(bitvelocity_requests.requested_at + 1, excluded.requested_at)";
const ADD_DOLLAR: &str =
    "INSERT INTO bitvelocity_requests (catalog_name, kind, target, requested_by, requested_at)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (catalog_name, kind, target)
    DO UPDATE SET requested_by = excluded.requested_by,
        requested_at = GREATEST(bitvelocity_requests.requested_at + 1, excluded.requested_at)";
const LIST_QMARK: &str = "SELECT target, requested_at FROM bitvelocity_requests WHERE catalog_name = ? AND kind = ? ORDER BY requested_at, target";
const LIST_DOLLAR: &str = "SELECT target, requested_at FROM bitvelocity_requests WHERE catalog_name = $1 AND kind = $2 ORDER BY requested_at, target";
const DONE_QMARK: &str = "DELETE FROM bitvelocity_requests WHERE catalog_name = ? AND kind = ? AND target = ? AND requested_at <= ?";
const DONE_DOLLAR: &str = "DELETE FROM bitvelocity_requests WHERE catalog_name = $1 AND kind = $2 AND target = $3 AND requested_at <= $4";

/// Requests in the catalog database.
#[derive(Debug, Clone)]
pub struct Requests {
    db: CatalogDb,
    url: String,
}

impl CatalogUrl {
    /// The operator requests of this catalog database.
    pub async fn requests(&self) -> Result<Requests> {
        self.prepare().await?;
        Ok(Requests {
            db: self.connect().await?,
            url: self.redacted(),
        })
    }
}

impl Requests {
    fn db_err(&self) -> impl Fn(sqlx::Error) -> CatalogError + '_ {
        move |source| CatalogError::CatalogDatabase {
            url: self.url.clone(),
            source,
        }
    }

    /// Records a `kind` request for `target` by `by`; asking again while one is pending
    /// moves it to now, and always past what [`Self::pending`] said before (whatever the
    /// asking host's clock), so a repeat made while the work runs is answered again.
    pub async fn add(&self, kind: &str, target: &str, by: &str) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        on_db!(
            &self.db,
            p,
            sql = (ADD_QMARK, ADD_DOLLAR),
            sqlx::query(sql)
                .bind(CATALOG_NAME)
                .bind(kind)
                .bind(target)
                .bind(by)
                .bind(now)
                .execute(p)
                .await
                .map(|_| ())
        )
        .map_err(self.db_err())
    }

    /// The pending `kind` requests, oldest first: target and when it was asked
    /// (milliseconds since the Unix epoch; what [`Self::done`] takes).
    pub async fn pending(&self, kind: &str) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = on_db!(
            &self.db,
            p,
            sql = (LIST_QMARK, LIST_DOLLAR),
            sqlx::query_as(sql)
                .bind(CATALOG_NAME)
                .bind(kind)
                .fetch_all(p)
                .await
        )
        .map_err(self.db_err())?;
        Ok(rows)
    }

    /// Clears the `kind` request for `target` if it was made at or before `asked_at` (as
    /// [`Self::pending`] said): what it asked for is committed. A request repeated after
    /// the work began stays, and is answered again.
    pub async fn done(&self, kind: &str, target: &str, asked_at: i64) -> Result<()> {
        on_db!(
            &self.db,
            p,
            sql = (DONE_QMARK, DONE_DOLLAR),
            sqlx::query(sql)
                .bind(CATALOG_NAME)
                .bind(kind)
                .bind(target)
                .bind(asked_at)
                .execute(p)
                .await
                .map(|_| ())
        )
        .map_err(self.db_err())
    }
}
