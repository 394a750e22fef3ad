//! Operator actions on replication slots, outside a capture run.

use crate::pg_source::connect_plain;
use crate::replication::ConnInfo;
use crate::{IngestError, Lsn, Result};

/// What dropping a slot released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedSlot {
    /// The position the slot had confirmed: tables fed by it hold data up to about here.
    pub confirmed: Option<Lsn>,
    /// Bytes of WAL the server kept for it, now free to be recycled.
    pub retained_wal_bytes: Option<i64>,
}

/// Drops replication slot `slot` of the database at `url`, so the server stops keeping WAL
/// for it. Refused while a consumer (a running ingester) is attached. The tables it fed
/// cannot resume from another slot (that would skip the changes in between): a later
/// `ingest` reports the gap instead of losing them silently.
pub async fn drop_slot(url: &str, slot: &str) -> Result<DroppedSlot> {
    let info = ConnInfo::parse(url)?;
    let client = connect_plain(&info).await?;
    let row = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - restart_lsn)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .ok_or_else(|| IngestError::Slot {
            slot: slot.to_string(),
            message: "does not exist".into(),
        })?;
    let active: bool = row.get(0);
    if active {
        return Err(IngestError::Slot {
            slot: slot.to_string(),
            message: "is in use by a running consumer (stop the ingester first)".into(),
        });
    }
    let confirmed: Option<String> = row.get(1);
    let confirmed = confirmed
        .map(|s| s.parse::<Lsn>())
        .transpose()
        .map_err(|e| IngestError::Protocol(e.to_string()))?;
    let retained_wal_bytes: Option<i64> = row.get(2);
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await?;
    tracing::info!(slot, ?confirmed, "dropped replication slot");
    Ok(DroppedSlot {
        confirmed,
        retained_wal_bytes,
    })
}
