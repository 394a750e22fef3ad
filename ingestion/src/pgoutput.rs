//! Decoder of the pgoutput logical replication protocol (version 1), in place.
//!
//! Messages borrow from the XLogData payload: column values are slices of it,
//! so decoding a change allocates only its cell list.
//! Reference: PostgreSQL docs, "Logical Replication Message Formats".

use crate::{IngestError, Lsn, Result};

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change and was not sent.
    Unchanged,
    /// The value in the type's text output format.
    Text(&'a [u8]),
}

/// Which old image an UPDATE or DELETE carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldImage {
    /// Only the replica identity columns ('K'); other cells are null.
    Key,
    /// The whole old row ('O', REPLICA IDENTITY FULL).
    Full,
}

/// A column described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (e.g. numeric precision/scale, varchar length).
    pub type_modifier: i32,
}

/// The Relation message: how the following changes of a table are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Table OID.
    pub oid: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: u8,
    /// Published columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Start of a committed transaction.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of the transaction.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// LSN just past the commit record: where to resume after this transaction.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 UTC.
        commit_ts: i64,
    },
    /// Table layout.
    Relation(Relation),
    /// A user-defined type used by a following Relation.
    Type {
        /// Type OID.
        oid: u32,
        /// Schema of the type.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// Origin of the transaction (for replication chains); ignored.
    Origin,
    /// Generic logical message; ignored.
    LogicalMessage,
    /// A new row.
    Insert {
        /// Table OID.
        rel: u32,
        /// The row.
        new: Vec<Cell<'a>>,
    },
    /// A changed row.
    Update {
        /// Table OID.
        rel: u32,
        /// The old key or row, when the identity changed or is FULL.
        old: Option<(OldImage, Vec<Cell<'a>>)>,
        /// The new row.
        new: Vec<Cell<'a>>,
    },
    /// A removed row.
    Delete {
        /// Table OID.
        rel: u32,
        /// The old key or row.
        old: (OldImage, Vec<Cell<'a>>),
    },
    /// Tables emptied by TRUNCATE.
    Truncate {
        /// Table OIDs.
        rels: Vec<u32>,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                IngestError::Protocol(format!(
                    "pgoutput message truncated at byte {} (needs {n} more)",
                    self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<String> {
        let rest = &self.buf[self.pos..];
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| {
            IngestError::Protocol("unterminated string in pgoutput message".into())
        })?;
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.pos += nul + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Cell<'a>>> {
        let n = self.u16()? as usize;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Cell::Text(self.take(len)?)
                }
                b'b' => {
                    return Err(IngestError::Protocol(
                        "binary tuple data was not requested".into(),
                    ));
                }
                other => {
                    return Err(IngestError::Protocol(format!(
                        "unknown tuple cell kind {:?}",
                        other as char
                    )));
                }
            });
        }
        Ok(cells)
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<Message<'_>> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: Lsn(r.u64()?),
            commit_ts: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_ts: r.u64()? as i64,
            }
        }
        b'O' => Message::Origin,
        b'M' => Message::LogicalMessage,
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let type_modifier = r.u32()? as i32;
                columns.push(RelationColumn {
                    is_key: flags & 1 == 1,
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let rel = r.u32()?;
            expect(r.u8()?, b'N')?;
            Message::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut kind = r.u8()?;
            let old = match kind {
                b'K' | b'O' => {
                    let image = if kind == b'K' {
                        OldImage::Key
                    } else {
                        OldImage::Full
                    };
                    let t = r.tuple()?;
                    kind = r.u8()?;
                    Some((image, t))
                }
                _ => None,
            };
            expect(kind, b'N')?;
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let image = match r.u8()? {
                b'K' => OldImage::Key,
                b'O' => OldImage::Full,
                other => {
                    return Err(IngestError::Protocol(format!(
                        "delete without old image ({:?})",
                        other as char
                    )));
                }
            };
            Message::Delete {
                rel,
                old: (image, r.tuple()?),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let rels = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
            Message::Truncate { rels }
        }
        other => {
            return Err(IngestError::Protocol(format!(
                "unknown pgoutput message {:?}",
                other as char
            )));
        }
    })
}

fn expect(got: u8, want: u8) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(IngestError::Protocol(format!(
            "expected {:?}, got {:?}",
            want as char, got as char
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_update_with_old_key_and_unchanged_toast() {
        let mut b = vec![b'U'];
        b.extend(16384u32.to_be_bytes());
        b.push(b'K');
        b.extend(2u16.to_be_bytes());
        b.push(b't');
        b.extend(1u32.to_be_bytes());
        b.push(b'7');
        b.push(b'n');
        b.push(b'N');
        b.extend(2u16.to_be_bytes());
        b.push(b't');
        b.extend(1u32.to_be_bytes());
        b.push(b'8');
        b.push(b'u');
        let m = decode(&b).unwrap();
        assert_eq!(
            m,
            Message::Update {
                rel: 16384,
                old: Some((OldImage::Key, vec![Cell::Text(b"7"), Cell::Null])),
                new: vec![Cell::Text(b"8"), Cell::Unchanged],
            }
        );
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        let err = decode(&[b'I', 0, 0]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(decode(b"Z").is_err());
    }
}
