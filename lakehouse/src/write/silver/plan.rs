//! Silver's planning and materializing: how a batch of change rows becomes new row versions,
//! position deletes and index updates. Pure where it can be (`plan` reads the index only);
//! `materialize` reads back carried values, `write_data` writes the new files.

use super::*;
use crate::table_files::spawned::SpawnedWriter;

/// Pending batch `b` of `t` in the table's current input layout (a spilled batch is read
/// back in the layout it was written with).
fn pending_batch(t: &SilverTable, b: usize) -> Result<RecordBatch> {
    conform_input(&t.ident, &t.pending.get(b)?, &t.arrow)
}

/// Where a key's row version currently is while a commit is planned.
#[derive(Debug, Clone, Copy)]
enum Cur {
    Committed(Loc),
    Pending(u32),
}

/// Where one column value of a new row version comes from.
#[derive(Debug, Clone, Copy)]
enum ColSrc {
    Input(u32, u32),
    Committed(Loc),
    Null,
}

struct NewRow {
    batch: u32,
    row: u32,
    alive: bool,
    /// Columns not sent by the source, with where their previous value is.
    carried: Vec<(usize, ColSrc)>,
}

impl NewRow {
    fn source_of(&self, col: usize) -> ColSrc {
        self.carried
            .iter()
            .find(|(c, _)| *c == col)
            .map(|(_, s)| *s)
            .unwrap_or(ColSrc::Input(self.batch, self.row))
    }
}

/// What one commit of a silver table does.
pub(super) struct Plan {
    /// A TRUNCATE ran: every live file goes.
    pub(super) truncate: bool,
    /// Committed rows that die (position deletes).
    pub(super) deletes: Vec<Loc>,
    rows: Vec<NewRow>,
    touched: HashMap<Box<[u8]>, Vec<Cur>, crate::pk_index::Hasher>,
    /// Updates and deletes whose key had no live row (logged; nothing to remove).
    missing: u64,
    /// An initial copy's rows, already written as they came (`copy.rs`; every row new and
    /// alive, in order; `rows` stays empty): their keys, per batch, pushed into the index as
    /// they are, with no per-key planning.
    pub(super) fresh: Vec<arrow::row::Rows>,
}

impl Plan {
    /// The plan of copy rows already written: new keys only, in order.
    pub(super) fn copied(truncate: bool, fresh: Vec<arrow::row::Rows>) -> Self {
        Plan {
            truncate,
            deletes: Vec::new(),
            rows: Vec::new(),
            touched: HashMap::default(),
            missing: 0,
            fresh,
        }
    }
}

/// The key columns of a pending batch of `t`, in the key's types.
pub(super) fn key_arrays(t: &SilverTable, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    t.key_cols
        .iter()
        .zip(t.key_schema.fields())
        .map(|(&c, f)| conform(batch.column(c).clone(), f.data_type()))
        .collect()
}

/// Replays the pending change rows of `t` against its index: which rows die, which are new.
pub(super) fn plan(t: &SilverTable) -> Result<Plan> {
    let n = t.arrow.fields().len();
    let (op_col, unchanged_col) = (n, n + 1);
    // Column position of each name the table has had (renamed columns keep their field id).
    let position_of_id: HashMap<i32, usize> = t
        .arrow
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| crate::files::field_id(f).map(|id| (id, i)))
        .collect();
    let converter = key_converter(&t.key_schema)?;
    let mut p = Plan {
        truncate: t.reset,
        deletes: Vec::new(),
        rows: Vec::new(),
        touched: HashMap::default(),
        missing: 0,
        fresh: Vec::new(),
    };
    let mut base_cleared = t.reset;
    // The row a delete just removed: when the change right after it is an update of a key
    // without a live row, the row moved to a new key and unsent values come from here.
    let mut moved: Option<Cur> = None;
    for b in 0..t.pending.len() {
        let batch = &pending_batch(t, b)?;
        if batch.num_columns() != n + 2 {
            return Err(LakehouseError::SchemaMismatch {
                table: t.ident.to_string(),
                message: format!(
                    "change batch has {} columns, expected {}",
                    batch.num_columns(),
                    n + 2
                ),
            });
        }
        let ops = batch.column(op_col).as_string::<i32>();
        let unchanged = batch.column(unchanged_col).as_list::<i32>();
        let keys = converter.convert_columns(&key_arrays(t, batch)?)?;
        for r in 0..batch.num_rows() {
            let op = ops.value(r);
            let moved_from = moved.take();
            if op == "truncate" {
                p.truncate = true;
                base_cleared = true;
                p.touched.clear();
                p.deletes.clear();
                p.rows.iter_mut().for_each(|row| row.alive = false);
                continue;
            }
            let key = keys.row(r);
            if !p.touched.contains_key(key.as_ref()) {
                let base = if base_cleared {
                    Vec::new()
                } else {
                    t.index
                        .get(key.as_ref())
                        .into_iter()
                        .map(Cur::Committed)
                        .collect()
                };
                p.touched.insert(key.as_ref().into(), base);
            }
            let curs = p.touched.get_mut(key.as_ref()).ok_or_else(|| {
                LakehouseError::PlanInvariant("key vanished while planning".into())
            })?;
            let kill = |cur: Cur, rows: &mut Vec<NewRow>, deletes: &mut Vec<Loc>| match cur {
                Cur::Pending(i) => rows[i as usize].alive = false,
                Cur::Committed(l) => deletes.push(l),
            };
            match op {
                "insert" => {
                    if !t.multi {
                        for cur in curs.drain(..) {
                            kill(cur, &mut p.rows, &mut p.deletes);
                        }
                    }
                    curs.push(Cur::Pending(p.rows.len() as u32));
                    p.rows.push(NewRow {
                        batch: b as u32,
                        row: r as u32,
                        alive: true,
                        carried: Vec::new(),
                    });
                }
                "update" => {
                    // Rows of a keyless table are their values: the source's update of one
                    // retires the old row by the delete logged just before and adds this one
                    // (an equal row already there is another row, and stays). Without that
                    // delete the update changed nothing, and replaces one equal row.
                    let prior = if t.multi && moved_from.is_some() {
                        None
                    } else {
                        curs.pop()
                    };
                    if !t.multi {
                        for cur in curs.drain(..) {
                            kill(cur, &mut p.rows, &mut p.deletes);
                        }
                    }
                    let mut carried = Vec::new();
                    if unchanged.is_valid(r) {
                        let cols = unchanged.value(r);
                        let cols = cols.as_string::<i32>();
                        for k in 0..cols.len() {
                            let id = *t.names.get(cols.value(k)).ok_or_else(|| {
                                LakehouseError::SchemaMismatch {
                                    table: t.ident.to_string(),
                                    message: format!(
                                        "unchanged column {} is not a column",
                                        cols.value(k)
                                    ),
                                }
                            })?;
                            // A column dropped since: nothing to carry.
                            let Some(&c) = position_of_id.get(&id) else {
                                continue;
                            };
                            let src = match prior.or(moved_from) {
                                Some(Cur::Pending(i)) => p.rows[i as usize].source_of(c),
                                Some(Cur::Committed(l)) => ColSrc::Committed(l),
                                None => ColSrc::Null,
                            };
                            carried.push((c, src));
                        }
                    }
                    match prior {
                        Some(cur) => kill(cur, &mut p.rows, &mut p.deletes),
                        // The row moved here from the key deleted just before.
                        None if moved_from.is_some() => {}
                        None => p.missing += 1,
                    }
                    curs.push(Cur::Pending(p.rows.len() as u32));
                    p.rows.push(NewRow {
                        batch: b as u32,
                        row: r as u32,
                        alive: true,
                        carried,
                    });
                }
                "delete" => {
                    let prior = if t.multi {
                        curs.pop().into_iter().collect::<Vec<_>>()
                    } else {
                        std::mem::take(curs)
                    };
                    if prior.is_empty() {
                        p.missing += 1;
                    }
                    moved = prior.last().copied();
                    for cur in prior {
                        kill(cur, &mut p.rows, &mut p.deletes);
                    }
                }
                other => {
                    return Err(LakehouseError::PlanInvariant(format!(
                        "{}: unknown change kind {other:?}",
                        t.ident
                    )));
                }
            }
        }
    }
    if p.missing > 0 {
        tracing::warn!(table = %t.ident, count = p.missing, "updates or deletes of keys silver does not hold");
    }
    Ok(p)
}

/// Writes the surviving new row versions as data files of `t`, in plan order (row positions
/// follow it), a bounded chunk at a time: each chunk reads only the pending batches and the
/// committed rows (carried values) it takes values from.
pub(super) async fn write_new_rows(t: &SilverTable, plan: &Plan) -> Result<Vec<DataFile>> {
    let alive: Vec<&NewRow> = plan.rows.iter().filter(|r| r.alive).collect();
    if alive.is_empty() {
        return Ok(Vec::new());
    }
    let ident = t.table.identifier().clone();
    let files = crate::files::data_writer(&t.table, t.schema.clone(), 512 * 1024 * 1024, "")?
        .build(None)
        .await
        .map_err(LakehouseError::iceberg(&ident))?;
    // Encoding runs beside the reading and assembling of the next batch.
    let mut writer = SpawnedWriter::plain(ident.to_string(), files);
    let mut rows = 0u64;
    for chunk in alive.chunks(OUTPUT_BATCH_ROWS) {
        let batch = assemble(t, chunk).await?;
        rows += batch.num_rows() as u64;
        writer.write(None, batch).await?;
    }
    let files = writer.close().await?;
    let written: u64 = files.iter().map(|f| f.record_count()).sum();
    if written != rows {
        return Err(LakehouseError::PlanInvariant(format!(
            "{ident}: wrote {rows} rows but the files hold {written}"
        )));
    }
    Ok(files)
}

/// One output batch: the rows of `chunk`, each column taken from its pending change row, the
/// previous version in a committed file (values the source did not send), or null.
async fn assemble(t: &SilverTable, chunk: &[&NewRow]) -> Result<RecordBatch> {
    // The pending batches this chunk takes values from.
    let mut inputs: Vec<u32> = Vec::new();
    for r in chunk {
        inputs.push(r.batch);
        for (_, s) in &r.carried {
            if let ColSrc::Input(b, _) = s {
                inputs.push(*b);
            }
        }
    }
    inputs.sort_unstable();
    inputs.dedup();
    let mut loaded = Vec::with_capacity(inputs.len());
    for &b in &inputs {
        loaded.push(pending_batch(t, b as usize)?);
    }
    let input_at: HashMap<u32, usize> = inputs.iter().enumerate().map(|(i, &b)| (b, i)).collect();
    // Previous versions of carried values that live in committed files, read back by position.
    let mut wanted: HashMap<u32, Vec<u32>> = HashMap::new();
    for r in chunk {
        for (_, s) in &r.carried {
            if let ColSrc::Committed(l) = s {
                wanted.entry(l.file).or_default().push(l.pos);
            }
        }
    }
    let mut fetched: Vec<RecordBatch> = Vec::new();
    let mut fetched_at: HashMap<Loc, (usize, usize)> = HashMap::new();
    for (file, mut positions) in wanted {
        positions.sort_unstable();
        positions.dedup();
        let pos64: Vec<u64> = positions.iter().map(|&p| p as u64).collect();
        let path = t.index.path(file);
        let batches = read_projected(t.table.file_io(), path, &t.arrow, Some(&pos64)).await?;
        let batch = concat_batches(&t.arrow, &batches)?;
        if batch.num_rows() != positions.len() {
            return Err(LakehouseError::PlanInvariant(format!(
                "{path}: read {} of {} rows",
                batch.num_rows(),
                positions.len()
            )));
        }
        for (k, &pos) in positions.iter().enumerate() {
            fetched_at.insert(Loc { file, pos }, (loaded.len() + fetched.len(), k));
        }
        fetched.push(batch);
    }
    let null_source = loaded.len() + fetched.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(t.arrow.fields().len());
    for (c, field) in t.arrow.fields().iter().enumerate() {
        let mut sources: Vec<ArrayRef> = Vec::with_capacity(null_source + 1);
        for b in &loaded {
            sources.push(conform(b.column(c).clone(), field.data_type())?);
        }
        for f in &fetched {
            sources.push(f.column(c).clone());
        }
        sources.push(new_null_array(field.data_type(), 1));
        let indices: Vec<(usize, usize)> = chunk
            .iter()
            .map(|r| match r.source_of(c) {
                ColSrc::Input(b, row) => {
                    input_at.get(&b).map(|&i| (i, row as usize)).ok_or_else(|| {
                        LakehouseError::PlanInvariant(format!("pending batch {b} not read"))
                    })
                }
                ColSrc::Committed(l) => fetched_at.get(&l).copied().ok_or_else(|| {
                    LakehouseError::PlanInvariant(format!("carried value at {l:?} not read"))
                }),
                ColSrc::Null => Ok((null_source, 0)),
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&dyn Array> = sources.iter().map(|a| a.as_ref()).collect();
        columns.push(interleave(&refs, &indices)?);
    }
    Ok(RecordBatch::try_new(t.arrow.clone(), columns)?)
}

/// Moves a committed plan into the index: touched keys now point at their new rows.
pub(super) fn apply_to_index(
    index: &mut PkIndex,
    plan: Plan,
    new_paths: &[String],
    new_rows: &[u64],
) -> Result<()> {
    if plan.truncate {
        index.clear();
    }
    // Output row number of each new version, then its (file, position).
    let mut out_row = vec![u64::MAX; plan.rows.len()];
    let mut k = 0u64;
    for (i, r) in plan.rows.iter().enumerate() {
        if r.alive {
            out_row[i] = k;
            k += 1;
        }
    }
    let mut starts = Vec::with_capacity(new_rows.len());
    let mut acc = 0u64;
    let mut ids = Vec::with_capacity(new_paths.len());
    for (path, &n) in new_paths.iter().zip(new_rows) {
        starts.push(acc);
        acc += n;
        ids.push(index.file_id(path));
    }
    // An initial copy's rows: new keys, in output order (each written, none dropped).
    let copied: u64 = plan.fresh.iter().map(|k| k.num_rows() as u64).sum();
    if !plan.fresh.is_empty() && copied != acc {
        return Err(LakehouseError::PlanInvariant(format!(
            "{copied} copied rows to index, {acc} written"
        )));
    }
    let mut o = 0u64;
    let mut f = 0usize;
    for keys in &plan.fresh {
        for key in keys.iter() {
            while f + 1 < starts.len() && starts[f + 1] <= o {
                f += 1;
            }
            index.push(key.as_ref(), loc(ids[f], o - starts[f])?);
            o += 1;
        }
    }
    for (key, curs) in plan.touched {
        let mut locs = Vec::with_capacity(curs.len());
        for cur in curs {
            locs.push(match cur {
                Cur::Committed(l) => l,
                Cur::Pending(i) => {
                    let o = out_row[i as usize];
                    let f = starts.partition_point(|&s| s <= o).saturating_sub(1);
                    loc(ids[f], o - starts[f])?
                }
            });
        }
        index.set(key, locs);
    }
    Ok(())
}
