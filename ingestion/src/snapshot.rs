//! The initial copy: every row of a table as of an exported snapshot.

use bytes::Bytes;
use futures::{StreamExt, pin_mut};
use lakehouse::ChangeSink;
use lakehouse::crash;
use tokio_postgres::Client;

use crate::changes::{ChangeBuffer, ChangeMeta};
use crate::source::SourceTable;
use crate::{IngestError, Result};

/// How copied rows are stamped and batched.
#[derive(Debug, Clone, Copy)]
pub struct CopyStamp {
    /// `_lsn` of every copied row.
    pub lsn: i64,
    /// `_commit_ts` of every copied row (µs since the Unix epoch).
    pub commit_ts: i64,
    /// Rows per Arrow batch handed to the sink.
    pub flush_rows: usize,
    /// Commit a piece of the copy ([`ChangeSink::commit_copy_piece`]) after handing the
    /// sink this many bytes of rows.
    pub piece_bytes: usize,
}

/// Copies `table` inside the caller's snapshot transaction into `sink` (not committed).
///
/// Rows are recorded as inserts stamped by `stamp` with a null `_txid`, committed in pieces
/// of about `stamp.piece_bytes` (the final commit, which gives the table its position, is the
/// caller's); returns the row count.
pub async fn copy_table<S: ChangeSink + ?Sized>(
    client: &Client,
    table: &SourceTable,
    idx: usize,
    buf: &mut ChangeBuffer,
    sink: &mut S,
    stamp: CopyStamp,
) -> Result<u64> {
    let CopyStamp {
        lsn,
        commit_ts,
        flush_rows,
        piece_bytes,
    } = stamp;
    // The position the copy is taken at: its rows are stamped just below it.
    let point = (lsn + 1) as u64;
    let mut handed: usize = 0;
    let sql = format!(
        "COPY (SELECT {} FROM {}.{}) TO STDOUT",
        table.select_list(),
        crate::replication::quote_ident(&table.schema),
        crate::replication::quote_ident(&table.name)
    );
    let stream = client.copy_out(sql.as_str()).await?;
    pin_mut!(stream);
    let mut carry: Vec<u8> = Vec::new();
    let mut rows: u64 = 0;
    let mut scratch = FieldScratch::default();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk?;
        let mut data: &[u8] = &chunk;
        if !carry.is_empty() {
            // Complete the line that straddled the previous chunk.
            match data.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    carry.extend_from_slice(&data[..p]);
                    let line = std::mem::take(&mut carry);
                    push_line(&line, buf, &mut scratch, lsn, commit_ts, &mut rows)?;
                    data = &data[p + 1..];
                }
                None => {
                    carry.extend_from_slice(data);
                    continue;
                }
            }
        }
        while let Some(p) = data.iter().position(|&b| b == b'\n') {
            push_line(&data[..p], buf, &mut scratch, lsn, commit_ts, &mut rows)?;
            data = &data[p + 1..];
            if buf.len() >= flush_rows {
                let batch = buf.finish()?;
                handed += batch.get_array_memory_size();
                sink.write(idx, batch).await?;
                crash::point("snapshot.mid_copy");
                if handed >= piece_bytes {
                    sink.commit_copy_piece(idx, point).await?;
                    crash::point("snapshot.after_piece");
                    tracing::info!(table = %table.qualified(), rows, "copy piece committed");
                    handed = 0;
                }
            }
        }
        carry.extend_from_slice(data);
    }
    if !carry.is_empty() {
        return Err(IngestError::Protocol(format!(
            "{}: COPY output ended mid-line",
            table.qualified()
        )));
    }
    if !buf.is_empty() {
        sink.write(idx, buf.finish()?).await?;
    }
    Ok(rows)
}

#[derive(Default)]
struct FieldScratch {
    bytes: Vec<u8>,
    spans: Vec<Option<(usize, usize)>>,
}

fn push_line(
    line: &[u8],
    buf: &mut ChangeBuffer,
    scratch: &mut FieldScratch,
    lsn: i64,
    commit_ts: i64,
    rows: &mut u64,
) -> Result<()> {
    scratch.bytes.clear();
    scratch.spans.clear();
    for field in line.split(|&b| b == b'\t') {
        if field == b"\\N" {
            scratch.spans.push(None);
            continue;
        }
        let start = scratch.bytes.len();
        unescape_copy_text(field, &mut scratch.bytes);
        scratch.spans.push(Some((start, scratch.bytes.len())));
    }
    let fields: Vec<Option<&[u8]>> = scratch
        .spans
        .iter()
        .map(|s| s.map(|(a, b)| &scratch.bytes[a..b]))
        .collect();
    let meta = ChangeMeta {
        lsn,
        txid: None,
        commit_ts,
        seq: *rows as i64,
    };
    buf.push_fields(&fields, meta)?;
    *rows += 1;
    Ok(())
}

/// Undoes COPY text-format escaping (`\\`, `\t`, `\n`, octal and hex escapes).
pub fn unescape_copy_text(field: &[u8], out: &mut Vec<u8>) {
    if !field.contains(&b'\\') {
        out.extend_from_slice(field);
        return;
    }
    let mut i = 0;
    while i < field.len() {
        let c = field[i];
        if c != b'\\' || i + 1 >= field.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let e = field[i + 1];
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + (field[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    k += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_copy_text() {
        let mut out = Vec::new();
        unescape_copy_text(br"a\tb\\c\nd\101\x42", &mut out);
        assert_eq!(out, b"a\tb\\c\ndAB");
        out.clear();
        unescape_copy_text(b"plain", &mut out);
        assert_eq!(out, b"plain");
    }
}
