//! Applying one decoded change to its table's state: skipping what the table already holds,
//! reconciling a new layout first, and turning the change into change-log rows (old-key
//! deletes, unchanged-TOAST filling, keyless updates).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use lakehouse::{ChangeSink, crash};

use super::{Pipeline, TableState, Txn};
use crate::change_source::ChangeSource;
use crate::changes::{ChangeBuffer, ChangeMeta, Op};
use crate::pgoutput::{Cell, OldImage, Relation};
use crate::replication::PG_EPOCH_OFFSET_MICROS;
use crate::source::SourceTable;
use crate::{IngestError, Result};

impl<C: ChangeSource, S: ChangeSink> Pipeline<C, S> {
    /// Appends one decoded change to its table's buffer; returns rows added, and the table
    /// whose buffer is full and must go to the sink now.
    pub(super) async fn apply(
        &mut self,
        states: &mut [TableState],
        by_oid: &HashMap<u32, usize>,
        t: &mut Txn,
        rel: u32,
        change: Change<'_, '_>,
    ) -> Result<(usize, Option<usize>)> {
        let &i = by_oid
            .get(&rel)
            .ok_or_else(|| IngestError::Protocol(format!("change for unknown relation {rel}")))?;
        let st = &mut states[i];
        if t.final_lsn < st.needed_from {
            self.metrics.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok((0, None));
        }
        if st.stopped.is_some() {
            return Ok((0, None));
        }
        if let Some(relation) = st.relation.take() {
            self.reconcile(st, i, &relation).await?;
            if st.stopped.is_some() {
                return Ok((0, None));
            }
        }
        if !st.synced {
            return Err(IngestError::Protocol(format!(
                "change for {} before its Relation message",
                st.source.qualified()
            )));
        }
        let mut meta = ChangeMeta {
            lsn: t.final_lsn.0 as i64,
            txid: Some(t.xid as i64),
            commit_ts: t.commit_ts + PG_EPOCH_OFFSET_MICROS,
            seq: t.seq,
        };
        let mut added = 0;
        match change {
            Change::Insert(new) => {
                st.buf.push_cells(Op::Insert, new, meta)?;
                added += 1;
            }
            Change::Update(old, new) => {
                // Under REPLICA IDENTITY FULL the old image is the whole row with TOASTed
                // values inlined: what the new image leaves out as unchanged comes from it,
                // so the new version is complete.
                let filled: Vec<Cell<'_>>;
                let new = match old {
                    Some((OldImage::Full, old_cells))
                        if new.iter().any(|c| matches!(c, Cell::Unchanged)) =>
                    {
                        filled = fill_unchanged(new, old_cells);
                        &filled[..]
                    }
                    _ => new,
                };
                // A keyless table's rows are identified by all their values: every update
                // retires one row equal to the old image (there may be several) and adds one.
                if let Some((_, old_cells)) = old
                    && (!st.source.has_pk || key_changed(&st.source, old_cells, new))
                {
                    // The row moved to a new key: retire the old key first.
                    st.buf.push_cells(Op::Delete, old_cells, meta)?;
                    t.seq += 1;
                    meta.seq = t.seq;
                    added += 1;
                }
                st.buf.push_cells(Op::Update, new, meta)?;
                added += 1;
            }
            Change::Delete((_, old)) => {
                st.buf.push_cells(Op::Delete, old, meta)?;
                added += 1;
            }
            Change::Truncate => {
                st.buf.push_truncate(meta);
                added += 1;
            }
        }
        t.seq += 1;
        crash::point("stream.mid_txn");
        self.metrics
            .changes
            .fetch_add(added as u64, Ordering::Relaxed);
        if st.buf.len() >= self.cfg.flush_rows {
            // Bounded memory: a long transaction reaches the sink in pieces too (the sink
            // makes nothing visible before the commit, which still comes after its end).
            // The caller hands the batch over, keeping the stream alive meanwhile.
            return Ok((added, Some(i)));
        }
        Ok((added, None))
    }

    /// Moves table `i` to the layout a Relation message announced: the rows buffered so far
    /// go to the sink in the old layout, the sink evolves the table (committed with its
    /// next commit), later rows use the new layout. A change the lakehouse cannot follow
    /// stops this table only.
    async fn reconcile(
        &mut self,
        st: &mut TableState,
        i: usize,
        relation: &Relation,
    ) -> Result<()> {
        let next = match self.source.describe(&st.source, relation).await {
            Ok(next) => next,
            Err(e @ IngestError::SchemaChanged { .. }) => return self.stop_table(st, i, e).await,
            Err(e) => return Err(e),
        };
        if !st.buf.is_empty() {
            self.sink.write(i, st.buf.finish()?).await?;
        }
        match self.sink.evolve(i, &next.changelog).await {
            Ok(arrow) => {
                st.buf = ChangeBuffer::new(&next, arrow);
                st.source = next;
                st.synced = true;
                Ok(())
            }
            Err(lakehouse::LakehouseError::IncompatibleSchema { change, .. }) => {
                let e = IngestError::SchemaChanged {
                    table: st.source.qualified(),
                    change,
                };
                self.stop_table(st, i, e).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stops capturing table `i`: what it buffered since its last commit is dropped, it
    /// stays at its position (which caps what is confirmed to PostgreSQL, so no change it
    /// still needs is released), and every other table goes on.
    async fn stop_table(&mut self, st: &mut TableState, i: usize, why: IngestError) -> Result<()> {
        let reason = why.to_string();
        tracing::error!(table = %st.source.qualified(), at = %st.needed_from, error = %reason, "table capture stopped");
        if !st.buf.is_empty() {
            drop(st.buf.finish()?);
        }
        self.sink.stop(i).await?;
        self.metrics.record_stopped(&st.source.qualified(), &reason);
        st.stopped = Some(reason);
        Ok(())
    }
}

/// The open transaction a change belongs to; pgoutput never sends changes outside one.
pub(super) fn in_txn(txn: &mut Option<Txn>) -> Result<&mut Txn> {
    txn.as_mut()
        .ok_or_else(|| IngestError::Protocol("change outside a transaction".into()))
}

pub(super) enum Change<'c, 'a> {
    Insert(&'c [Cell<'a>]),
    Update(Option<&'c (OldImage, Vec<Cell<'a>>)>, &'c [Cell<'a>]),
    Delete(&'c (OldImage, Vec<Cell<'a>>)),
    Truncate,
}

/// The new image with each unchanged-TOAST cell replaced by the old image's value.
fn fill_unchanged<'a>(new: &[Cell<'a>], old: &[Cell<'a>]) -> Vec<Cell<'a>> {
    new.iter()
        .zip(old)
        .map(|(n, o)| match n {
            Cell::Unchanged => *o,
            n => *n,
        })
        .collect()
}

/// Whether an update moved the row to another key (compares the key columns' text).
fn key_changed(table: &SourceTable, old: &[Cell<'_>], new: &[Cell<'_>]) -> bool {
    table.columns.iter().enumerate().any(|(i, c)| {
        table.key.contains(&c.name)
            && !matches!(new.get(i), Some(Cell::Unchanged))
            && old.get(i) != new.get(i)
    })
}
