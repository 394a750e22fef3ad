//! The initial copy: every row of a table as of an exported snapshot.

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::{StreamExt, pin_mut};
use lakehouse::ChangeSink;
use lakehouse::crash;
use tokio_postgres::Client;

use crate::changes::{ChangeBuffer, ChangeMeta};
use crate::copy_binary::BinaryCopy;
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
/// caller's); returns the row count. The COPY text is read and parsed on a thread of its own
/// (a blocking-pool thread: parsing holds it for long stretches), a couple of batches ahead
/// of the sink, so parsing runs beside the sink's work rather than between it.
pub async fn copy_table<S: ChangeSink + ?Sized>(
    client: &Client,
    table: &SourceTable,
    idx: usize,
    buf: &mut ChangeBuffer,
    sink: &mut S,
    stamp: CopyStamp,
) -> Result<u64> {
    // The position the copy is taken at: its rows are stamped just below it.
    let point = (stamp.lsn + 1) as u64;
    let mut handed: usize = 0;
    let mut copied: usize = 0;
    // Binary: numbers, times and text arrive as they are stored, with nothing to unescape.
    let (exprs, binary): (Vec<String>, Vec<bool>) =
        table.columns.iter().map(|c| c.copy_expr()).unzip();
    let sql = format!(
        "COPY (SELECT {} FROM {}.{}) TO STDOUT (FORMAT binary)",
        exprs.join(", "),
        crate::replication::quote_ident(&table.schema),
        crate::replication::quote_ident(&table.name)
    );
    let stream = client.copy_out(sql.as_str()).await?;
    let (tx, mut batches) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = {
        let parse = ChangeBuffer::new(table, buf.schema());
        let name = table.qualified();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            handle.block_on(read_copy(stream, parse, binary, name, stamp, tx))
        })
    };
    while let Some(batch) = batches.recv().await {
        let batch: RecordBatch = batch?;
        handed += batch.get_array_memory_size();
        copied += batch.num_rows();
        sink.write(idx, batch).await?;
        crash::point("snapshot.mid_copy");
        if handed >= stamp.piece_bytes {
            sink.commit_copy_piece(idx, point).await?;
            crash::point("snapshot.after_piece");
            tracing::info!(table = %table.qualified(), rows = copied, "copy piece committed");
            handed = 0;
        }
    }
    match reader.await {
        Ok(rows) => rows,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(IngestError::CopyReaderCancelled(table.qualified())),
    }
}

/// Batches the COPY reader may run ahead of the sink.
const READ_AHEAD: usize = 2;

/// COPY bytes that end a batch before `flush_rows` rows: with the batches queued ahead of
/// the sink and in its writers (about seven), rows of kilobytes would otherwise hold
/// gigabytes in flight.
const BATCH_BYTES: usize = 8 << 20;

/// Reads and parses the COPY text of table `name` into batches of `stamp.flush_rows` rows
/// sent to `out`; returns the row count, or sends the error that stopped it. Stops early
/// when `out` is dropped (the sink failed).
async fn read_copy(
    stream: tokio_postgres::CopyOutStream,
    mut buf: ChangeBuffer,
    binary: Vec<bool>,
    name: String,
    stamp: CopyStamp,
    out: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
) -> Result<u64> {
    let mut rows: u64 = 0;
    let result = parse_copy(stream, &mut buf, &name, stamp, &out, &mut rows, &binary).await;
    match result {
        Ok(()) => Ok(rows),
        Err(e) => {
            let message = e.to_string();
            // The sink may be gone already; the error then has nobody to reach but the log.
            if out.send(Err(e)).await.is_err() {
                tracing::debug!(table = %name, error = %message, "copy reader stopped");
            }
            Ok(rows)
        }
    }
}

async fn parse_copy(
    stream: tokio_postgres::CopyOutStream,
    buf: &mut ChangeBuffer,
    name: &str,
    stamp: CopyStamp,
    out: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    rows: &mut u64,
    binary: &[bool],
) -> Result<()> {
    pin_mut!(stream);
    let mut reader = BinaryCopy::new(name, binary.len());
    let mut carry: Vec<u8> = Vec::new();
    // COPY bytes read since the last batch: wide rows end a batch before `flush_rows`.
    let mut since = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk?;
        since += chunk.len();
        // Rows usually come one per message; one cut across messages is completed here.
        if carry.is_empty() {
            let used = reader.rows(&chunk, |data, spans| {
                buf.push_copy_row(data, spans, binary, meta(stamp, rows))
            })?;
            carry.extend_from_slice(&chunk[used..]);
        } else {
            carry.extend_from_slice(&chunk);
            let used = reader.rows(&carry, |data, spans| {
                buf.push_copy_row(data, spans, binary, meta(stamp, rows))
            })?;
            carry.drain(..used);
        }
        if buf.len() >= stamp.flush_rows || (since >= BATCH_BYTES && !buf.is_empty()) {
            since = 0;
            if out.send(Ok(buf.finish()?)).await.is_err() {
                return Ok(()); // the sink is gone
            }
        }
    }
    if !reader.ended || !carry.is_empty() {
        return Err(IngestError::Protocol(format!(
            "{name}: binary COPY output ended {}",
            if reader.ended {
                "with bytes after its trailer"
            } else {
                "before its trailer"
            }
        )));
    }
    if !buf.is_empty() {
        let _gone = out.send(Ok(buf.finish()?)).await.is_err();
    }
    Ok(())
}

/// The metadata of the next copied row (counting it).
fn meta(stamp: CopyStamp, rows: &mut u64) -> ChangeMeta {
    let m = ChangeMeta {
        lsn: stamp.lsn,
        txid: None,
        commit_ts: stamp.commit_ts,
        seq: *rows as i64,
    };
    *rows += 1;
    m
}
