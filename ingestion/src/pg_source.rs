//! PostgreSQL logical replication (pgoutput) as a [`ChangeSource`]: a replication session
//! for the slot and the stream, a regular session for the catalog and the copy, and a
//! temporary slot whose exported snapshot the copy reads under.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lakehouse::{ChangeSink, crash};
use tokio_postgres::Client;

use crate::change_source::{ChangeSource, ChangeStream, StreamEvent};
use crate::changes::ChangeBuffer;
use crate::pgoutput::{self, Relation};
use crate::replication::{ConnInfo, ReplicationConnection, ReplicationMessage, ReplicationStream};
use crate::snapshot::CopyStamp;
use crate::source::{self, SourceTable};
use crate::{IngestError, Lsn, Result};

/// One publication of one PostgreSQL database, read through one logical replication slot.
pub struct PgSource {
    url: String,
    publication: String,
    slot: String,
    session: Option<Session>,
}

/// What one `open` holds.
struct Session {
    /// The replication session, until the stream starts on it.
    repl: Option<ReplicationConnection>,
    /// Catalog queries and the copy.
    client: Client,
    /// The session whose temporary slot exported the copy's snapshot (kept open until
    /// the copy ends: the snapshot lives as long as it).
    exporter: Option<ReplicationConnection>,
}

impl PgSource {
    /// The tables of `publication` at `url`, streamed through slot `slot` (created when
    /// missing).
    pub fn new(
        url: impl Into<String>,
        publication: impl Into<String>,
        slot: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            publication: publication.into(),
            slot: slot.into(),
            session: None,
        }
    }

    fn session(&mut self, call: &'static str) -> Result<&mut Session> {
        self.session.as_mut().ok_or(IngestError::NotOpen { call })
    }
}

#[async_trait]
impl ChangeSource for PgSource {
    type Stream = PgStream;

    async fn open(&mut self) -> Result<Vec<SourceTable>> {
        self.session = None;
        let info = ConnInfo::parse(&self.url)?;
        // The replication login comes first: it gives the clearest error for a bad
        // address, role or database.
        let repl = ReplicationConnection::connect(&info).await?;
        let client = connect_plain(&info).await?;
        let tables = source::discover(&client, &self.publication).await?;
        if tables.is_empty() {
            return Err(IngestError::PublicationNotFound(format!(
                "{} (it has no tables)",
                self.publication
            )));
        }
        self.session = Some(Session {
            repl: Some(repl),
            client,
            exporter: None,
        });
        Ok(tables)
    }

    async fn log_end(&mut self) -> Result<Lsn> {
        let client = &self.session("log_end")?.client;
        let s: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        s.parse()
            .map_err(|e: crate::lsn::ParseLsnError| IngestError::Protocol(e.to_string()))
    }

    async fn retain(&mut self, oldest: Option<Lsn>) -> Result<()> {
        let slot = self.slot.clone();
        let session = self.session("retain")?;
        let row = session
            .client
            .query_opt(
                "SELECT plugin::text, database::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        match row {
            Some(r) => {
                let plugin: Option<String> = r.get(0);
                if plugin.as_deref() != Some("pgoutput") {
                    return Err(IngestError::Slot {
                        slot,
                        message: format!("exists with plugin {plugin:?}, expected pgoutput"),
                    });
                }
                let confirmed: Option<String> = r.get(2);
                tracing::info!(%slot, confirmed = ?confirmed, "reusing replication slot");
            }
            None => {
                if let Some(p) = oldest {
                    // The tables hold data up to p, but the WAL after p is gone with the slot.
                    return Err(IngestError::Gap {
                        needed: p,
                        server: Lsn::ZERO,
                    });
                }
                let repl = session
                    .repl
                    .as_mut()
                    .ok_or(IngestError::NotOpen { call: "retain" })?;
                let created = repl.create_slot(&slot, false, false).await?;
                tracing::info!(%slot, at = %created.consistent_point, "created replication slot");
            }
        }
        Ok(())
    }

    async fn begin_copy(&mut self) -> Result<Lsn> {
        let info = ConnInfo::parse(&self.url)?;
        let slot_name = self.slot.clone();
        let session = self.session("begin_copy")?;
        let mut exporter = ReplicationConnection::connect(&info).await?;
        // Unique per attempt: after a reconnect the previous attempt's temporary slot may
        // still exist until its session ends.
        static ATTEMPT: AtomicU64 = AtomicU64::new(0);
        let temp = format!(
            "{slot_name}_copy_{}_{}",
            std::process::id(),
            ATTEMPT.fetch_add(1, Ordering::Relaxed)
        );
        let slot = exporter.create_slot(&temp, true, true).await?;
        let snapshot = slot
            .snapshot
            .clone()
            .ok_or_else(|| IngestError::Protocol("temporary slot exported no snapshot".into()))?;
        crash::point("snapshot.after_slot_created");
        session
            .client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                crate::replication::quote_literal(&snapshot)
            ))
            .await?;
        session.exporter = Some(exporter);
        Ok(slot.consistent_point)
    }

    async fn copy_table<S: ChangeSink>(
        &mut self,
        table: &SourceTable,
        idx: usize,
        buf: &mut ChangeBuffer,
        sink: &mut S,
        stamp: CopyStamp,
    ) -> Result<u64> {
        let session = self.session("copy_table")?;
        if session.exporter.is_none() {
            return Err(IngestError::NotOpen {
                call: "copy_table before begin_copy",
            });
        }
        crate::snapshot::copy_table(&session.client, table, idx, buf, sink, stamp).await
    }

    async fn end_copy(&mut self) -> Result<()> {
        let session = self.session("end_copy")?;
        session.client.batch_execute("COMMIT").await?;
        session.exporter = None;
        Ok(())
    }

    async fn stream(&mut self, from: Lsn) -> Result<PgStream> {
        let slot = self.slot.clone();
        let publication = self.publication.clone();
        let session = self.session("stream")?;
        let status_period = status_period(&session.client).await?;
        let repl = session.repl.take().ok_or(IngestError::NotOpen {
            call: "stream twice",
        })?;
        let inner = repl.start_replication(&slot, from, &publication).await?;
        Ok(PgStream {
            inner,
            status_period,
            data: Bytes::new(),
        })
    }

    async fn describe(&mut self, table: &SourceTable, layout: &Relation) -> Result<SourceTable> {
        let session = self.session("describe")?;
        table.describe(&session.client, layout).await
    }
}

/// The pgoutput stream of one slot.
pub struct PgStream {
    inner: ReplicationStream,
    status_period: Duration,
    /// The payload the last delivered message borrows from.
    data: Bytes,
}

#[async_trait]
impl ChangeStream for PgStream {
    fn status_period(&self) -> Duration {
        self.status_period
    }

    async fn next(&mut self) -> Result<StreamEvent<'_>> {
        // Cancel-safe: the read is, and nothing after it awaits.
        match self.inner.next().await? {
            ReplicationMessage::Keepalive { wal_end, reply } => Ok(StreamEvent::Heartbeat {
                end: wal_end,
                reply,
            }),
            ReplicationMessage::XLogData { data, .. } => {
                self.data = data;
                Ok(StreamEvent::Message(pgoutput::decode(&self.data)?))
            }
        }
    }

    async fn confirm(&mut self, durable: Lsn) -> Result<()> {
        self.inner.send_status(durable, durable, false).await
    }
}

/// A regular (non-replication) session with the settings our value parsing expects.
pub(crate) async fn connect_plain(info: &ConnInfo) -> Result<Client> {
    let mut cfg: tokio_postgres::Config = info
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| IngestError::InvalidUrl(e.to_string()))?;
    cfg.options("-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c IntervalStyle=iso_8601");
    cfg.application_name("bitvelocity");
    // Over TCP with TLS wanted, the same rustls checks as the replication session.
    let client = if info.security.wants_tls() && matches!(info.host, crate::transport::Host::Tcp(_))
    {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            info.security.client_config()?.as_ref().clone(),
        );
        let (client, conn) = cfg.connect(tls).await.map_err(|e| tls_error(info, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        client
    } else {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        client
    };
    Ok(client)
}

/// A failed TLS handshake of a regular session named as such (not as a lost connection,
/// which would be retried).
fn tls_error(info: &ConnInfo, e: tokio_postgres::Error) -> IngestError {
    let handshake = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .filter(|io| {
            io.get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        });
    match handshake {
        Some(io) => IngestError::Tls {
            addr: info.addr(),
            source: std::io::Error::new(io.kind(), io.to_string()),
        },
        None => IngestError::Client(e),
    }
}

/// How often to tell the server this client is alive: a quarter of its
/// `wal_sender_timeout` (after which it drops a silent client), between 100 ms and 10 s.
async fn status_period(client: &Client) -> Result<Duration> {
    let ms: i64 = client
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await?
        .get(0);
    // 0 turns the timeout off.
    let quarter = if ms <= 0 { 10_000 } else { ms / 4 };
    Ok(Duration::from_millis(quarter.clamp(100, 10_000) as u64))
}
