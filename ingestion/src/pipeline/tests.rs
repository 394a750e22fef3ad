//! The pipeline's decisions (what each table already holds, what is committed at which
//! position, what is acknowledged to the source) against a scripted in-memory source and a
//! recording sink. The real source and sink are exercised by the crate's integration tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, Int32Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use lakehouse::{ChangeLogSchema, ChangeSink, TableProgress};

use super::{Pipeline, PipelineConfig};
use crate::change_source::{ChangeSource, ChangeStream, StreamEvent};
use crate::changes::ChangeBuffer;
use crate::pgoutput::{Cell, Message, OldImage, Relation, RelationColumn};
use crate::snapshot::CopyStamp;
use crate::source::{PgColumn, PgKind, SourceTable};
use crate::{IngestError, Lsn, Result};

/// What happened, in order, on both sides of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Rows of a table handed to the sink: its `id` values.
    Write(usize, Vec<i32>),
    /// A sink commit at this position, with its marked tables.
    Commit(u64, Vec<usize>),
    /// A position acknowledged to the source.
    Confirm(u64),
    /// A table's capture stopped.
    Stop(usize),
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A copy's snapshot position and each table's rows in it: (oid, ids).
type Snapshot = (Lsn, Vec<(u32, Vec<&'static [u8]>)>);

fn table(oid: u32, name: &str) -> SourceTable {
    let col = |name: &str, type_oid, kind, attnum| PgColumn {
        name: name.into(),
        type_oid,
        type_modifier: -1,
        type_name: String::new(),
        kind,
        attnum: Some(attnum),
        backfilled: false,
    };
    SourceTable::new(
        oid,
        "public".into(),
        name.into(),
        vec![
            col("id", 23, PgKind::Int4, 1),
            col("v", 25, PgKind::Text, 2),
        ],
        vec![(1, "id".into())],
    )
}

fn relation(oid: u32, name: &str) -> Message<'static> {
    Message::Relation(Relation {
        oid,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: b'd',
        columns: vec![
            RelationColumn {
                is_key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            },
            RelationColumn {
                is_key: false,
                name: "v".into(),
                type_oid: 25,
                type_modifier: -1,
            },
        ],
    })
}

fn begin(final_lsn: u64) -> Message<'static> {
    Message::Begin {
        final_lsn: Lsn(final_lsn),
        commit_ts: 0,
        xid: final_lsn as u32,
    }
}

fn commit(final_lsn: u64, end_lsn: u64) -> Message<'static> {
    Message::Commit {
        commit_lsn: Lsn(final_lsn),
        end_lsn: Lsn(end_lsn),
        commit_ts: 0,
    }
}

fn insert(rel: u32, id: &'static [u8]) -> Message<'static> {
    Message::Insert {
        rel,
        new: vec![Cell::Text(id), Cell::Text(b"x")],
    }
}

/// A source that plays a fixed script; a table named in `incompatible` cannot be followed.
struct Scripted {
    tables: Vec<SourceTable>,
    script: Vec<Message<'static>>,
    end: Lsn,
    incompatible: Option<u32>,
    /// The snapshot a copy is taken at, and each table's rows in it (ids, by oid).
    snapshot: Option<Snapshot>,
    streamed_from: Arc<Mutex<Option<Lsn>>>,
    log: Log,
}

struct ScriptedStream {
    events: VecDeque<Message<'static>>,
    end: Lsn,
    log: Log,
}

impl Scripted {
    /// Tables `a` (oid 1) and `b` (oid 2), their layouts announced first, then `script`; the
    /// log ends at `end`; nothing to copy, every layout followable.
    fn two_tables(script: Vec<Message<'static>>, end: u64) -> Self {
        let mut all = vec![relation(1, "a"), relation(2, "b")];
        all.extend(script);
        Self {
            tables: vec![table(1, "a"), table(2, "b")],
            script: all,
            end: Lsn(end),
            incompatible: None,
            snapshot: None,
            streamed_from: Arc::default(),
            log: Log::default(),
        }
    }
}

#[async_trait]
impl ChangeSource for Scripted {
    type Stream = ScriptedStream;

    async fn open(&mut self) -> Result<Vec<SourceTable>> {
        Ok(self.tables.clone())
    }

    async fn log_end(&mut self) -> Result<Lsn> {
        Ok(self.end)
    }

    async fn retain(&mut self, _oldest: Option<Lsn>) -> Result<()> {
        Ok(())
    }

    async fn begin_copy(&mut self) -> Result<Lsn> {
        self.snapshot
            .as_ref()
            .map(|(at, _)| *at)
            .ok_or(IngestError::NotOpen {
                call: "this script has no snapshot to copy",
            })
    }

    async fn copy_table<S: ChangeSink>(
        &mut self,
        table: &SourceTable,
        idx: usize,
        buf: &mut ChangeBuffer,
        sink: &mut S,
        stamp: CopyStamp,
    ) -> Result<u64> {
        let rows = self
            .snapshot
            .as_ref()
            .and_then(|(_, t)| t.iter().find(|(oid, _)| *oid == table.oid))
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default();
        for (seq, id) in rows.iter().enumerate() {
            let meta = crate::changes::ChangeMeta {
                lsn: stamp.lsn,
                txid: None,
                commit_ts: stamp.commit_ts,
                seq: seq as i64,
            };
            // As a binary COPY row whose two fields arrive as text.
            let data = [*id, b"copied"].concat();
            let spans = [Some((0, id.len())), Some((id.len(), data.len()))];
            buf.push_copy_row(&data, &spans, &[false, false], meta)?;
        }
        sink.write(idx, buf.finish()?).await?;
        Ok(rows.len() as u64)
    }

    async fn end_copy(&mut self) -> Result<()> {
        Ok(())
    }

    async fn stream(&mut self, from: Lsn) -> Result<ScriptedStream> {
        *self.streamed_from.lock().unwrap() = Some(from);
        Ok(ScriptedStream {
            events: self.script.drain(..).collect(),
            end: self.end,
            log: self.log.clone(),
        })
    }

    async fn describe(&mut self, table: &SourceTable, _layout: &Relation) -> Result<SourceTable> {
        if self.incompatible == Some(table.oid) {
            return Err(IngestError::SchemaChanged {
                table: table.qualified(),
                change: "scripted: cannot follow".into(),
            });
        }
        Ok(table.clone())
    }
}

#[async_trait]
impl ChangeStream for ScriptedStream {
    fn status_period(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn next(&mut self) -> Result<StreamEvent<'_>> {
        match self.events.pop_front() {
            Some(m) => Ok(StreamEvent::Message(m)),
            None => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(StreamEvent::Heartbeat {
                    end: self.end,
                    reply: false,
                })
            }
        }
    }

    async fn confirm(&mut self, durable: Lsn) -> Result<()> {
        self.log.lock().unwrap().push(Seen::Confirm(durable.0));
        Ok(())
    }
}

/// A sink whose tables start at fixed positions and which records what it receives.
struct Recording {
    start: Vec<Option<u64>>,
    log: Log,
}

#[async_trait]
impl ChangeSink for Recording {
    async fn prepare(
        &mut self,
        tables: &[ChangeLogSchema],
    ) -> lakehouse::Result<Vec<TableProgress>> {
        assert_eq!(tables.len(), self.start.len());
        Ok(self
            .start
            .iter()
            .map(|&source_lsn| TableProgress { source_lsn })
            .collect())
    }

    async fn evolve(
        &mut self,
        _table: usize,
        schema: &ChangeLogSchema,
    ) -> lakehouse::Result<SchemaRef> {
        schema.arrow_schema()
    }

    async fn stop(&mut self, table: usize) -> lakehouse::Result<()> {
        self.log.lock().unwrap().push(Seen::Stop(table));
        Ok(())
    }

    async fn write(&mut self, table: usize, batch: RecordBatch) -> lakehouse::Result<()> {
        let ids = batch
            .column_by_name("id")
            .expect("id column")
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("int column");
        let ids = (0..ids.len()).map(|i| ids.value(i)).collect();
        self.log.lock().unwrap().push(Seen::Write(table, ids));
        Ok(())
    }

    async fn commit(&mut self, lsn: u64, mark: &[usize]) -> lakehouse::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Seen::Commit(lsn, mark.to_vec()));
        Ok(())
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        batch_rows: 1_000_000,
        batch_interval: Duration::from_secs(3600),
        flush_rows: 1024,
        copy_piece_bytes: 1 << 20,
        exit_when_caught_up: true,
        record_freshness: false,
    }
}

async fn run(source: Scripted, start: Vec<Option<u64>>) -> Vec<Seen> {
    let log = source.log.clone();
    let sink = Recording {
        start,
        log: log.clone(),
    };
    let mut pipeline = Pipeline::with_source(config(), source, sink);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::time::timeout(Duration::from_secs(10), pipeline.run(rx))
        .await
        .expect("the pipeline stops once caught up")
        .expect("the run succeeds");
    log.lock().unwrap().clone()
}

/// Every change is delivered to each table exactly once: a transaction a table already
/// holds (committed below its position) is skipped for that table only, and the stream
/// starts at the oldest table's position.
#[tokio::test]
async fn each_table_skips_exactly_what_it_already_holds() {
    let source = Scripted::two_tables(
        vec![
            // Committed at 0x150: table a (at 0x200) holds it, table b (at 0x100) does not.
            begin(0x150),
            insert(1, b"1"),
            insert(2, b"1"),
            commit(0x150, 0x158),
            // Committed at 0x250: news for both.
            begin(0x250),
            insert(1, b"2"),
            Message::Update {
                rel: 2,
                old: None,
                new: vec![Cell::Text(b"1"), Cell::Text(b"y")],
            },
            Message::Delete {
                rel: 1,
                old: (OldImage::Key, vec![Cell::Text(b"2"), Cell::Null]),
            },
            commit(0x250, 0x258),
        ],
        0x258,
    );
    let streamed_from = source.streamed_from.clone();
    let seen = run(source, vec![Some(0x200), Some(0x100)]).await;
    assert_eq!(*streamed_from.lock().unwrap(), Some(Lsn(0x100)));
    let writes: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Write(..)))
        .collect();
    // One commit for both transactions (the batch limits were not reached): table a holds
    // the second one's insert and delete, table b the first one's insert and the update.
    assert_eq!(
        writes,
        vec![&Seen::Write(0, vec![2, 2]), &Seen::Write(1, vec![1, 1])],
        "{seen:?}"
    );
    let commits: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(s, Seen::Commit(..)))
        .collect();
    assert_eq!(commits, vec![&Seen::Commit(0x258, vec![])], "{seen:?}");
    assert_acknowledged_only_what_is_committed(&seen, 0x100);
    assert_eq!(seen.last(), Some(&Seen::Confirm(0x258)), "{seen:?}");
}

/// A table whose new layout cannot be followed stops alone: the others go on, and what is
/// acknowledged to the source never passes the stopped table's position, so the changes it
/// still needs are kept.
#[tokio::test]
async fn a_stopped_table_holds_back_what_is_acknowledged() {
    let mut source = Scripted::two_tables(
        vec![
            begin(0x300),
            insert(1, b"7"),
            insert(2, b"7"),
            commit(0x300, 0x308),
        ],
        0x308,
    );
    source.incompatible = Some(2);
    let seen = run(source, vec![Some(0x100), Some(0x200)]).await;
    assert!(seen.contains(&Seen::Stop(1)), "{seen:?}");
    assert!(seen.contains(&Seen::Write(0, vec![7])), "{seen:?}");
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Write(1, _))),
        "the stopped table got rows: {seen:?}"
    );
    assert!(seen.contains(&Seen::Commit(0x308, vec![])), "{seen:?}");
    let confirms: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Confirm(l) => Some(*l),
            _ => None,
        })
        .collect();
    assert!(!confirms.is_empty());
    assert!(
        confirms.iter().all(|&c| c <= 0x200),
        "acknowledged past the stopped table's position 0x200: {confirms:x?}"
    );
}

/// A table without a position is copied under one snapshot and committed at its position,
/// marked (so even an empty copy records it); the stream then starts at the oldest position
/// and the copied table skips every transaction committed before its snapshot, while the
/// other table takes them.
#[tokio::test]
async fn a_copied_table_starts_at_its_snapshot_and_the_others_at_theirs() {
    let mut source = Scripted::two_tables(
        vec![
            // Before the snapshot (0x400): `a`'s copy holds it, `b` (at 0x100) does not.
            begin(0x300),
            insert(1, b"5"),
            insert(2, b"5"),
            commit(0x300, 0x308),
            // After the snapshot: news for both.
            begin(0x500),
            insert(1, b"6"),
            insert(2, b"6"),
            commit(0x500, 0x508),
        ],
        0x508,
    );
    source.snapshot = Some((Lsn(0x400), vec![(1, vec![b"1", b"5"])]));
    let streamed_from = source.streamed_from.clone();
    let seen = run(source, vec![None, Some(0x100)]).await;
    // The copy: a's rows, committed at the snapshot's position with `a` marked.
    assert_eq!(
        &seen[..2],
        &[Seen::Write(0, vec![1, 5]), Seen::Commit(0x400, vec![0])],
        "{seen:?}"
    );
    assert_eq!(*streamed_from.lock().unwrap(), Some(Lsn(0x100)));
    let writes: Vec<&Seen> = seen[2..]
        .iter()
        .filter(|s| matches!(s, Seen::Write(..)))
        .collect();
    assert_eq!(
        writes,
        vec![&Seen::Write(0, vec![6]), &Seen::Write(1, vec![5, 6])],
        "{seen:?}"
    );
    assert!(seen.contains(&Seen::Commit(0x508, vec![])), "{seen:?}");
    assert_acknowledged_only_what_is_committed(&seen, 0x100);
}

/// No acknowledgement names a position that is not committed yet (or, before the first
/// commit, past where the oldest table already stood).
fn assert_acknowledged_only_what_is_committed(seen: &[Seen], start: u64) {
    let mut committed = start;
    for s in seen {
        match s {
            Seen::Commit(l, _) => committed = committed.max(*l),
            Seen::Confirm(l) => assert!(
                *l <= committed,
                "acknowledged {l:#x} with only {committed:#x} committed: {seen:?}"
            ),
            _ => {}
        }
    }
}
