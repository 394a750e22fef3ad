//! A lease on the warehouse, kept in the catalog database: one ingester at a time.
//!
//! Two ingesters on one warehouse (with different slots) would each copy and stream the same
//! tables and race each other's commits. The lease row (`bitvelocity_leases`, next to
//! iceberg's tables in the same database, so it is as shared as the catalog) names its
//! holder and an expiry; taking it is one atomic upsert that only succeeds when the row is
//! free, expired, or already ours. The holder renews it well within its time to live and
//! stops if a renewal finds it taken. A holder is identified by its replication slot, so an
//! ingester restarted after a crash (same slot) takes its lease back at once, and PostgreSQL
//! itself refuses a second consumer of the same slot. Expiry compares wall clocks of the
//! processes involved: keep them within a fraction of the time to live.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pointer::{CatalogDb, CatalogUrl, on_db};
use crate::{CATALOG_NAME, CatalogError, Result};

/// The lease every ingester of a warehouse takes.
pub const INGESTER_LEASE: &str = "ingester";
/// The lease `bitvelocity maintain` takes: one maintenance run at a time, and automatic
/// orphan removal in the ingester pauses while it is held.
pub const MAINTENANCE_LEASE: &str = "maintenance";

/// Who holds a lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The holder's identity (`slot:<name>` for an ingester).
    pub holder: String,
    /// What it runs on (host and process), for messages.
    pub owner: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

impl LeaseHolder {
    /// Whether the lease is still in force now.
    pub fn is_live(&self) -> bool {
        self.expires_at_ms > now_ms()
    }
}

/// Leases in the catalog database.
#[derive(Debug, Clone)]
pub struct Leases {
    db: CatalogDb,
    url: String,
}

/// The lease table (created with the catalog's own tables, [`CatalogUrl::prepare`]).
pub(crate) const CREATE_LEASES: &str = "CREATE TABLE IF NOT EXISTS bitvelocity_leases (
    catalog_name VARCHAR(255) NOT NULL,
    name VARCHAR(255) NOT NULL,
    holder VARCHAR(255) NOT NULL,
    owner VARCHAR(1000) NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (catalog_name, name))";

const TAKE_QMARK: &str =
    "INSERT INTO bitvelocity_leases (catalog_name, name, holder, owner, expires_at)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (catalog_name, name) DO UPDATE SET holder = excluded.holder, owner = excluded.owner,
        expires_at = excluded.expires_at
    WHERE bitvelocity_leases.holder = excluded.holder OR bitvelocity_leases.expires_at < ?";
const TAKE_DOLLAR: &str =
    "INSERT INTO bitvelocity_leases (catalog_name, name, holder, owner, expires_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (catalog_name, name) DO UPDATE SET holder = excluded.holder, owner = excluded.owner,
        expires_at = excluded.expires_at
    WHERE bitvelocity_leases.holder = excluded.holder OR bitvelocity_leases.expires_at < $6";
const READ_QMARK: &str =
    "SELECT holder, owner, expires_at FROM bitvelocity_leases WHERE catalog_name = ? AND name = ?";
const READ_DOLLAR: &str = "SELECT holder, owner, expires_at FROM bitvelocity_leases WHERE catalog_name = $1 AND name = $2";
const FREE_QMARK: &str =
    "DELETE FROM bitvelocity_leases WHERE catalog_name = ? AND name = ? AND holder = ?";
const FREE_DOLLAR: &str =
    "DELETE FROM bitvelocity_leases WHERE catalog_name = $1 AND name = $2 AND holder = $3";

impl CatalogUrl {
    /// The leases of this catalog database.
    pub async fn leases(&self) -> Result<Leases> {
        self.prepare().await?;
        Ok(Leases {
            db: self.connect().await?,
            url: self.redacted(),
        })
    }
}

impl Leases {
    fn db_err(&self) -> impl Fn(sqlx::Error) -> CatalogError + '_ {
        move |source| CatalogError::CatalogDatabase {
            url: self.url.clone(),
            source,
        }
    }

    /// Takes (or renews) lease `name` for `holder` for `ttl`. Fails with
    /// [`CatalogError::LeaseHeld`] naming the current holder if another holder's lease is live.
    pub async fn take(&self, name: &str, holder: &str, owner: &str, ttl: Duration) -> Result<()> {
        let now = now_ms();
        let expires = now + ttl.as_millis() as i64;
        let taken = on_db!(
            &self.db,
            p,
            sql = (TAKE_QMARK, TAKE_DOLLAR),
            sqlx::query(sql)
                .bind(CATALOG_NAME)
                .bind(name)
                .bind(holder)
                .bind(owner)
                .bind(expires)
                .bind(now)
                .execute(p)
                .await
                .map(|done| done.rows_affected() == 1)
        )
        .map_err(self.db_err())?;
        if taken {
            return Ok(());
        }
        let current = self.holder(name).await?;
        Err(CatalogError::LeaseHeld {
            name: name.to_string(),
            holder: current
                .map(|h| format!("{} ({})", h.holder, h.owner))
                .unwrap_or_default(),
        })
    }

    /// The current holder of lease `name`, live or expired; `None` if nobody took it.
    pub async fn holder(&self, name: &str) -> Result<Option<LeaseHolder>> {
        let row: Option<(String, String, i64)> = on_db!(
            &self.db,
            p,
            sql = (READ_QMARK, READ_DOLLAR),
            sqlx::query_as(sql)
                .bind(CATALOG_NAME)
                .bind(name)
                .fetch_optional(p)
                .await
        )
        .map_err(self.db_err())?;
        Ok(row.map(|(holder, owner, expires_at_ms)| LeaseHolder {
            holder,
            owner,
            expires_at_ms,
        }))
    }

    /// Gives lease `name` up if `holder` has it (a clean stop).
    pub async fn release(&self, name: &str, holder: &str) -> Result<()> {
        on_db!(
            &self.db,
            p,
            sql = (FREE_QMARK, FREE_DOLLAR),
            sqlx::query(sql)
                .bind(CATALOG_NAME)
                .bind(name)
                .bind(holder)
                .execute(p)
                .await
                .map(|_| ())
        )
        .map_err(self.db_err())
    }
}

/// A lease this process holds, renewed in the background until released or lost.
#[derive(Debug)]
pub struct HeldLease {
    leases: Leases,
    name: String,
    holder: String,
    lost: tokio::sync::watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leases {
    /// Takes lease `name` for `holder` and keeps renewing it every third of `ttl`. If a
    /// renewal finds it taken, or renewals keep failing for two thirds of `ttl` (the catalog
    /// database unreachable), the lease counts as lost: [`HeldLease::lost`] turns true and
    /// the holder must stop writing.
    pub async fn hold(
        self,
        name: &str,
        holder: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<HeldLease> {
        self.take(name, holder, owner, ttl).await?;
        let (tx, lost) = tokio::sync::watch::channel(false);
        let (leases, n, h, o) = (
            self.clone(),
            name.to_string(),
            holder.to_string(),
            owner.to_string(),
        );
        let renewer = tokio::spawn(async move {
            let mut last_ok = std::time::Instant::now();
            loop {
                tokio::time::sleep(ttl / 3).await;
                // The expiry a renewal sets counts from when it was sent; a renewal that
                // hangs is a failed one.
                let sent = std::time::Instant::now();
                let renewed =
                    match tokio::time::timeout(ttl / 4, leases.take(&n, &h, &o, ttl)).await {
                        Ok(r) => r,
                        Err(_) => Err(CatalogError::LeaseRenewalTimedOut { name: n.clone() }),
                    };
                match renewed {
                    Ok(()) => last_ok = sent,
                    Err(e @ CatalogError::LeaseHeld { .. }) => {
                        tracing::error!(error = %e, "lease lost to another process; stopping");
                        let _ = tx.send(true);
                        return;
                    }
                    Err(e) if last_ok.elapsed() > ttl * 2 / 3 => {
                        tracing::error!(error = %e, "lease could not be renewed in time; stopping");
                        let _ = tx.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                }
            }
        });
        Ok(HeldLease {
            leases: self,
            name: name.to_string(),
            holder: holder.to_string(),
            lost,
            renewer,
        })
    }
}

impl HeldLease {
    /// Turns true once the lease is lost; the holder must stop writing then.
    pub fn lost(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Whether the lease was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops renewing and gives the lease up (unless it was lost to another holder).
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        if self.is_lost() {
            return Ok(());
        }
        self.leases.release(&self.name, &self.holder).await
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
