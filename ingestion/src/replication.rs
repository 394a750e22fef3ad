//! A PostgreSQL replication connection (`replication=database`) on the wire protocol.
//!
//! `tokio-postgres` cannot enter CopyBoth mode (START_REPLICATION), and the
//! crates that can either hide the slot's exported snapshot or decode pgoutput
//! into owned structures per message. We need both control points: a slot
//! created with an exported snapshot on a connection held open while other
//! sessions copy under that snapshot, and the raw XLogData bytes, decoded in
//! place (see `pgoutput`). Message framing, startup and SCRAM/MD5 come from
//! `postgres-protocol`, the codec `tokio-postgres` itself is built on.

use crate::transport::{self, Host, Security, Socket};
use crate::{IngestError, Lsn, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Where and as whom to connect, parsed from a `postgres://` URL or key=value string.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Host name, address or unix-socket directory.
    pub host: Host,
    /// TCP port (also names the unix socket).
    pub port: u16,
    /// Role name.
    pub user: String,
    /// Password, if the URL has one.
    pub password: Option<Vec<u8>>,
    /// Database name.
    pub dbname: String,
    /// TLS settings (`sslmode`, `sslrootcert`).
    pub security: Security,
    /// The URL for plain `tokio-postgres` sessions (TLS settings it cannot parse taken out).
    pub url: String,
}

impl ConnInfo {
    /// Parses a libpq-style URL (`postgres://user:pw@host:port/db?sslmode=...`) or
    /// key=value string; a host starting with `/` is a unix-socket directory.
    pub fn parse(url: &str) -> Result<Self> {
        let (cleaned, security) = transport::split_security(url)?;
        let cfg: tokio_postgres::Config = cleaned
            .parse()
            .map_err(|e: tokio_postgres::Error| IngestError::InvalidUrl(format!("{url:?}: {e}")))?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => Host::Tcp(h.clone()),
            Some(tokio_postgres::config::Host::Unix(dir)) => Host::Unix(dir.clone()),
            None => Host::Tcp("localhost".to_string()),
        };
        // A unix socket never carries TLS (as with libpq): the regular sessions must not ask
        // for it there either (the server would answer that it has none).
        let cleaned = match host {
            Host::Unix(_) => transport::without_tls(&cleaned),
            Host::Tcp(_) => cleaned,
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg
            .get_user()
            .map(str::to_string)
            .ok_or_else(|| IngestError::InvalidUrl(format!("{url:?}: no user name")))?;
        let dbname = cfg
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        // Checked now, so a bad sslrootcert is named before anything connects.
        if security.wants_tls() && matches!(host, Host::Tcp(_)) {
            security.client_config()?;
        }
        Ok(Self {
            host,
            port,
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            dbname,
            security,
            url: cleaned,
        })
    }

    /// `host:port` (or the socket's path), for messages.
    pub fn addr(&self) -> String {
        match &self.host {
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(dir) => dir
                .join(format!(".s.PGSQL.{}", self.port))
                .display()
                .to_string(),
        }
    }
}

/// A frame read from the server.
enum Frame {
    CopyData(Bytes),
    CopyBothResponse,
    Other(backend::Message),
}

/// A connection in replication mode, before START_REPLICATION.
pub struct ReplicationConnection {
    stream: Socket,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// A slot created by [`ReplicationConnection::create_slot`].
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    /// The LSN from which the slot's stream is consistent with the snapshot.
    pub consistent_point: Lsn,
    /// Name of the exported snapshot, valid until the next command on this connection.
    pub snapshot: Option<String>,
}

impl ReplicationConnection {
    /// Opens a `replication=database` session with the settings our value parser expects.
    pub async fn connect(info: &ConnInfo) -> Result<Self> {
        let stream = transport::open(&info.host, info.port, &info.security, &info.addr()).await?;
        let mut conn = Self {
            stream,
            rbuf: BytesMut::with_capacity(1 << 20),
            wbuf: BytesMut::with_capacity(1024),
        };
        let params = [
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("replication", "database"),
            ("application_name", "bitvelocity"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
            ("bytea_output", "hex"),
            ("IntervalStyle", "iso_8601"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.wbuf)?;
        conn.flush().await?;
        conn.authenticate(info).await?;
        // Drain ParameterStatus/BackendKeyData until ReadyForQuery.
        loop {
            match conn.read_frame().await? {
                Frame::Other(backend::Message::ReadyForQuery(_)) => break,
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    return Err(server_error(body, true));
                }
                _ => {}
            }
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<()> {
        let need_pw = || {
            IngestError::Auth(format!(
                "server at {} asks for a password and the URL has none",
                info.addr()
            ))
        };
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::AuthenticationOk) => return Ok(()),
                Frame::Other(backend::Message::AuthenticationCleartextPassword) => {
                    let pw = info.password.as_deref().ok_or_else(need_pw)?;
                    frontend::password_message(pw, &mut self.wbuf)?;
                    self.flush().await?;
                }
                Frame::Other(backend::Message::AuthenticationMd5Password(body)) => {
                    let pw = info.password.as_deref().ok_or_else(need_pw)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        info.user.as_bytes(),
                        pw,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.flush().await?;
                }
                Frame::Other(backend::Message::AuthenticationSasl(body)) => {
                    let pw = info.password.as_deref().ok_or_else(need_pw)?;
                    let mut mechs = body.mechanisms();
                    let mut scram_ok = false;
                    while let Some(m) = mechs.next()? {
                        scram_ok |= m == SCRAM_SHA_256;
                    }
                    if !scram_ok {
                        return Err(IngestError::Auth("server offers no SCRAM-SHA-256".into()));
                    }
                    let mut scram = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        scram.message(),
                        &mut self.wbuf,
                    )?;
                    self.flush().await?;
                    match self.read_frame().await? {
                        Frame::Other(backend::Message::AuthenticationSaslContinue(b)) => {
                            scram.update(b.data())?
                        }
                        Frame::Other(backend::Message::ErrorResponse(b)) => {
                            return Err(server_error(b, true));
                        }
                        _ => {
                            return Err(IngestError::Protocol(
                                "unexpected message during SASL".into(),
                            ));
                        }
                    }
                    frontend::sasl_response(scram.message(), &mut self.wbuf)?;
                    self.flush().await?;
                    match self.read_frame().await? {
                        Frame::Other(backend::Message::AuthenticationSaslFinal(b)) => {
                            scram.finish(b.data())?
                        }
                        Frame::Other(backend::Message::ErrorResponse(b)) => {
                            return Err(server_error(b, true));
                        }
                        _ => {
                            return Err(IngestError::Protocol(
                                "unexpected message during SASL".into(),
                            ));
                        }
                    }
                }
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    return Err(server_error(body, true));
                }
                _ => {
                    return Err(IngestError::Auth(
                        "unsupported authentication method".into(),
                    ));
                }
            }
        }
    }

    /// Runs a command with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_frame().await? {
                Frame::Other(backend::Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next()? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    error = Some(server_error(body, false))
                }
                Frame::Other(backend::Message::ReadyForQuery(_)) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Creates a logical slot with pgoutput; `export` keeps a snapshot open on this connection.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        temporary: bool,
        export: bool,
    ) -> Result<CreatedSlot> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput {}",
            quote_ident(slot),
            if temporary { "TEMPORARY " } else { "" },
            if export {
                "EXPORT_SNAPSHOT"
            } else {
                "NOEXPORT_SNAPSHOT"
            }
        );
        let rows = self
            .simple_query(&sql)
            .await
            .map_err(|e| slot_error(slot, e))?;
        let row = rows.first().ok_or_else(|| {
            IngestError::Protocol("CREATE_REPLICATION_SLOT returned no row".into())
        })?;
        let lsn = row
            .get(1)
            .cloned()
            .flatten()
            .ok_or_else(|| IngestError::Protocol("no consistent_point".into()))?
            .parse::<Lsn>()
            .map_err(|e| IngestError::Protocol(e.to_string()))?;
        Ok(CreatedSlot {
            consistent_point: lsn,
            snapshot: row.get(2).cloned().flatten(),
        })
    }

    /// Enters CopyBoth mode streaming pgoutput (protocol 1) from `start` for `publication`.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" {})",
            quote_ident(slot),
            start,
            quote_literal(&quote_ident(publication))
        );
        frontend::query(&sql, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            match self.read_frame().await? {
                Frame::CopyBothResponse => break,
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    return Err(slot_error(slot, server_error(body, false)));
                }
                _ => {}
            }
        }
        Ok(ReplicationStream { conn: self })
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads one complete backend message. Cancel-safe: partial input stays buffered.
    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                return Ok(frame);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
                self.rbuf.reserve(1 << 20);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(IngestError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "PostgreSQL closed the replication connection",
                )));
            }
        }
    }

    fn parse_frame(&mut self) -> Result<Option<Frame>> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let tag = self.rbuf[0];
        let len =
            u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if self.rbuf.len() < len + 1 {
            self.rbuf.reserve(len + 1 - self.rbuf.len());
            return Ok(None);
        }
        match tag {
            b'd' => {
                let mut frame = self.rbuf.split_to(len + 1);
                frame.advance(5);
                Ok(Some(Frame::CopyData(frame.freeze())))
            }
            b'W' => {
                self.rbuf.advance(len + 1);
                Ok(Some(Frame::CopyBothResponse))
            }
            _ => match backend::Message::parse(&mut self.rbuf)? {
                Some(m) => Ok(Some(Frame::Other(m))),
                None => Ok(None),
            },
        }
    }
}

/// What the server sends while streaming.
#[derive(Debug)]
pub enum ReplicationMessage {
    /// A pgoutput message starting at `wal_start`.
    XLogData {
        /// WAL position of this message.
        wal_start: Lsn,
        /// Server's current end of WAL.
        wal_end: Lsn,
        /// The pgoutput message.
        data: Bytes,
    },
    /// A heartbeat; when `reply` is set the server wants a status update now.
    Keepalive {
        /// Server's current end of WAL.
        wal_end: Lsn,
        /// Whether to answer at once.
        reply: bool,
    },
}

/// A replication connection in CopyBoth mode.
pub struct ReplicationStream {
    conn: ReplicationConnection,
}

impl ReplicationStream {
    /// Waits for the next message. Cancel-safe.
    pub async fn next(&mut self) -> Result<ReplicationMessage> {
        loop {
            match self.conn.read_frame().await? {
                Frame::CopyData(mut data) => {
                    if data.is_empty() {
                        continue;
                    }
                    match data[0] {
                        b'w' if data.len() >= 25 => {
                            data.advance(1);
                            let wal_start = Lsn(data.get_u64());
                            let wal_end = Lsn(data.get_u64());
                            data.advance(8);
                            return Ok(ReplicationMessage::XLogData {
                                wal_start,
                                wal_end,
                                data,
                            });
                        }
                        b'k' if data.len() >= 18 => {
                            data.advance(1);
                            let wal_end = Lsn(data.get_u64());
                            data.advance(8);
                            let reply = data.get_u8() != 0;
                            return Ok(ReplicationMessage::Keepalive { wal_end, reply });
                        }
                        other => {
                            return Err(IngestError::Protocol(format!(
                                "unknown CopyData message {:?}",
                                other as char
                            )));
                        }
                    }
                }
                Frame::Other(backend::Message::ErrorResponse(body)) => {
                    return Err(server_error(body, false));
                }
                Frame::Other(backend::Message::CopyDone) => {
                    return Err(IngestError::Protocol(
                        "server ended the replication stream".into(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Tells the server how far we have written and made durable; WAL before `flushed` may be recycled.
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn, reply: bool) -> Result<()> {
        let now = chrono::Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS;
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(written.0);
        msg.put_u64(flushed.0);
        msg.put_u64(flushed.0);
        msg.put_i64(now);
        msg.put_u8(reply as u8);
        frontend::CopyData::new(msg.freeze())?.write(&mut self.conn.wbuf);
        self.conn.flush().await
    }
}

/// A server error about `slot`, named as such; one that may clear by itself (the slot still
/// held by a session that is going away, 55006) stays a retryable server error.
fn slot_error(slot: &str, e: IngestError) -> IngestError {
    match e {
        IngestError::Server { code, message } if code != "55006" => IngestError::Slot {
            slot: slot.to_string(),
            message: format!("{message} [{code}]"),
        },
        other => other,
    }
}

fn server_error(body: backend::ErrorResponseBody, during_login: bool) -> IngestError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = value,
            _ => {}
        }
    }
    if !detail.is_empty() {
        message = format!("{message} ({detail})");
    }
    // 28xxx: invalid authorization; 3D000: unknown database.
    // A server starting up or shutting down (57P0x) during login is worth another try.
    let transient = code.starts_with("57") || code.starts_with("08") || code == "53300";
    if code.starts_with("28") || code == "3D000" || (during_login && !transient) {
        IngestError::Auth(format!("{message} [{code}]"))
    } else {
        IngestError::Server { code, message }
    }
}

/// Quotes an identifier for replication commands.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
