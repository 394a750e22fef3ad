//! Shared test support: a real PostgreSQL, and an oracle that compares source
//! tables with the state replayed from bronze.
//!
//! The oracle reads PostgreSQL values in *binary* format through tokio-postgres'
//! typed decoding, independent of our text parser, and bronze values through
//! DataFusion/Arrow; both become [`Val`]s.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use ingestion::source::{PgKind, SourceTable};
use tokio_postgres::Client;

/// A table with every supported type (and a TOAST-able `big` column last), published as `p`.
pub const ALL_TYPES_DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE typed (
    id bigserial PRIMARY KEY,
    b bool, i2 int2, i4 int4, f4 float4, f8 float8,
    d numeric(10, 3), n numeric, t text, v varchar(20), c char(4),
    by bytea, dt date, tm time, ts timestamp, tstz timestamptz,
    u uuid, j json, jb jsonb, m mood, ai int4[], at text[], ad numeric(6,2)[], ats timestamptz[],
    big text
);
ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE PUBLICATION p FOR TABLE typed;
";

/// A comparable value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Text(String),
    Bytes(Vec<u8>),
    Date(i32),
    Micros(i64),
    Uuid([u8; 16]),
    List(Vec<Val>),
}

/// Row key → row. A keyless table (keyed by all its columns) may hold equal rows: each
/// occurrence is keyed by its values plus its ordinal among equals (see [`add_row`]).
pub type Rows = BTreeMap<Vec<Val>, Vec<Val>>;

/// Adds `vals` to `rows`; a second row with the key of a keyed table is a bug and panics.
pub fn add_row(t: &SourceTable, rows: &mut Rows, vals: Vec<Val>, what: &str) {
    let mut key = key_of(t, &vals);
    if !t.has_pk {
        let n = occurrences(rows, &key);
        key.push(Val::Int(n as i64));
    }
    if let Some(old) = rows.insert(key.clone(), vals) {
        panic!(
            "{}: key {key:?} twice in {what} (also {old:?})",
            t.qualified()
        );
    }
}

/// Removes the row with the key of `vals` (one occurrence of equal rows of a keyless table).
pub fn remove_row(t: &SourceTable, rows: &mut Rows, vals: &[Val]) -> Option<Vec<Val>> {
    let mut key = key_of(t, vals);
    if !t.has_pk {
        let n = occurrences(rows, &key);
        if n == 0 {
            return None;
        }
        key.push(Val::Int(n as i64 - 1));
    }
    rows.remove(&key)
}

/// How many equal rows with all-column key `key` are in `rows`.
fn occurrences(rows: &Rows, key: &[Val]) -> usize {
    (0..)
        .take_while(|n| {
            let mut k = key.to_vec();
            k.push(Val::Int(*n as i64));
            rows.contains_key(&k)
        })
        .count()
}

/// Anything that names a warehouse: a local folder, or an opened [`catalog::Warehouse`]
/// (an S3 one with a PostgreSQL catalog, say).
pub trait AsWarehouse {
    fn warehouse(&self) -> catalog::Warehouse;
}

impl AsWarehouse for Path {
    fn warehouse(&self) -> catalog::Warehouse {
        catalog::Warehouse::new(self).unwrap()
    }
}

impl AsWarehouse for std::path::PathBuf {
    fn warehouse(&self) -> catalog::Warehouse {
        catalog::Warehouse::new(self).unwrap()
    }
}

impl AsWarehouse for catalog::Warehouse {
    fn warehouse(&self) -> catalog::Warehouse {
        self.clone()
    }
}

/// PostgreSQL (catalog database) and SeaweedFS (S3) for a warehouse on object storage.
pub struct ObjectStoreBackend {
    pub warehouse: catalog::Warehouse,
    pub s3: domains::SeaweedFs,
    pub catalog_pg: domains::PgCluster,
}

impl ObjectStoreBackend {
    /// Starts both servers; the warehouse is `s3://lake/<prefix>` with its catalog in PostgreSQL.
    pub async fn start(prefix: &str) -> Self {
        let (catalog_pg, s3) = tokio::task::spawn_blocking(|| {
            let pg = domains::PgCluster::start().expect("start catalog postgres");
            pg.create_database("catalog").unwrap();
            let s3 = domains::SeaweedFs::start().expect("start SeaweedFS");
            s3.create_bucket("lake").unwrap();
            (pg, s3)
        })
        .await
        .unwrap();
        let warehouse = catalog::Warehouse::open(
            &format!("s3://lake/{prefix}"),
            Some(&catalog_pg.url("catalog")),
        )
        .unwrap()
        .with_storage_props(s3.iceberg_props());
        Self {
            warehouse,
            s3,
            catalog_pg,
        }
    }

    /// The `bitvelocity` arguments naming this warehouse and catalog.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--warehouse".into(),
            self.warehouse.url(),
            "--catalog".into(),
            self.catalog_pg.url("catalog"),
        ]
    }

    /// The standard AWS environment a `bitvelocity` (or Python) process needs for this S3.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.s3.env()
    }

    /// The catalog URI pyiceberg's `SqlCatalog` (SQLAlchemy) opens.
    pub fn sqlalchemy_catalog(&self) -> String {
        format!(
            "postgresql+psycopg://postgres@127.0.0.1:{}/catalog",
            self.catalog_pg.port()
        )
    }
}

/// A warehouse as a `bitvelocity` process names it: arguments and environment.
pub struct CliWarehouse {
    pub warehouse: catalog::Warehouse,
    pub cli_args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

impl CliWarehouse {
    /// A local folder with its embedded SQLite catalog.
    pub fn local(dir: &Path) -> Self {
        Self {
            warehouse: catalog::Warehouse::new(dir).unwrap(),
            cli_args: vec!["--warehouse".into(), dir.display().to_string()],
            env: Vec::new(),
        }
    }

    /// The S3 warehouse and PostgreSQL catalog of `backend`.
    pub fn object_store(backend: &ObjectStoreBackend) -> Self {
        Self {
            warehouse: backend.warehouse.clone(),
            cli_args: backend.cli_args(),
            env: backend.env(),
        }
    }

    /// Adds the warehouse arguments and environment to a `bitvelocity` command.
    pub fn apply(&self, c: &mut std::process::Command) {
        c.args(&self.cli_args)
            .envs(self.env.iter().map(|(k, v)| (*k, v)));
    }
}

impl AsWarehouse for CliWarehouse {
    fn warehouse(&self) -> catalog::Warehouse {
        self.warehouse.clone()
    }
}

/// Starts a managed PostgreSQL with database `db` (blocking work off the runtime).
pub async fn start_pg(db: &str) -> (domains::PgCluster, String) {
    let pg = tokio::task::spawn_blocking(domains::PgCluster::start)
        .await
        .unwrap()
        .expect("start postgres");
    pg.create_database(db).expect("create database");
    let url = pg.url(db);
    (pg, url)
}

pub async fn connect(url: &str) -> Client {
    domains::connect(url).await.expect("connect")
}

/// Source tables of a publication as the ingester sees them.
pub async fn tables(client: &Client, publication: &str) -> Vec<SourceTable> {
    ingestion::source::discover(client, publication)
        .await
        .expect("discover")
}

/// Text-like types (and arrays of them) that tokio-postgres reads as `String` directly;
/// casting them would change char(n) padding.
const PLAIN_TEXT_OIDS: &[u32] = &[25, 1043, 1042, 19, 1009, 1015, 1014, 1003];

fn select_expr(name: &str, kind: &PgKind, type_oid: u32) -> String {
    let q = format!("\"{}\"", name.replace('"', "\"\""));
    if PLAIN_TEXT_OIDS.contains(&type_oid) {
        return q;
    }
    match kind {
        PgKind::Decimal { .. } | PgKind::NumericText | PgKind::Text => format!("{q}::text"),
        PgKind::Array(e)
            if matches!(
                **e,
                PgKind::Decimal { .. } | PgKind::NumericText | PgKind::Text
            ) =>
        {
            format!("{q}::text[]")
        }
        _ => q,
    }
}

fn pg_val(row: &tokio_postgres::Row, i: usize, kind: &PgKind) -> Val {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
    fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Val) -> Val {
        v.map(f).unwrap_or(Val::Null)
    }
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let time_us = |t: NaiveTime| {
        t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64
    };
    match kind {
        PgKind::Bool => opt(row.get::<_, Option<bool>>(i), Val::Bool),
        PgKind::Int2 => opt(row.get::<_, Option<i16>>(i), |v| Val::Int(v as i64)),
        PgKind::Int4 => opt(row.get::<_, Option<i32>>(i), |v| Val::Int(v as i64)),
        PgKind::Int8 => opt(row.get::<_, Option<i64>>(i), Val::Int),
        PgKind::Float4 => opt(row.get::<_, Option<f32>>(i), |v| {
            Val::Float((v as f64).to_bits())
        }),
        PgKind::Float8 => opt(row.get::<_, Option<f64>>(i), |v| Val::Float(v.to_bits())),
        PgKind::Decimal { .. } | PgKind::NumericText | PgKind::Text => {
            opt(row.get::<_, Option<String>>(i), Val::Text)
        }
        PgKind::Bytea => opt(row.get::<_, Option<Vec<u8>>>(i), Val::Bytes),
        PgKind::Date => opt(row.get::<_, Option<NaiveDate>>(i), |d| {
            Val::Date((d - epoch).num_days() as i32)
        }),
        PgKind::Time => opt(row.get::<_, Option<NaiveTime>>(i), |t| {
            Val::Micros(time_us(t))
        }),
        PgKind::Timestamp => opt(row.get::<_, Option<NaiveDateTime>>(i), |t| {
            Val::Micros(t.and_utc().timestamp_micros())
        }),
        PgKind::TimestampTz => opt(row.get::<_, Option<DateTime<Utc>>>(i), |t| {
            Val::Micros(t.timestamp_micros())
        }),
        PgKind::Uuid => opt(row.get::<_, Option<uuid::Uuid>>(i), |u| {
            Val::Uuid(*u.as_bytes())
        }),
        PgKind::Array(e) => {
            macro_rules! list {
                ($t:ty, $f:expr) => {
                    opt(row.get::<_, Option<Vec<Option<$t>>>>(i), |v| {
                        Val::List(
                            v.into_iter()
                                .map(|x| x.map($f).unwrap_or(Val::Null))
                                .collect(),
                        )
                    })
                };
            }
            match &**e {
                PgKind::Bool => list!(bool, Val::Bool),
                PgKind::Int2 => list!(i16, |v| Val::Int(v as i64)),
                PgKind::Int4 => list!(i32, |v| Val::Int(v as i64)),
                PgKind::Int8 => list!(i64, Val::Int),
                PgKind::Float4 => list!(f32, |v| Val::Float((v as f64).to_bits())),
                PgKind::Float8 => list!(f64, |v: f64| Val::Float(v.to_bits())),
                PgKind::Decimal { .. } | PgKind::NumericText | PgKind::Text => {
                    list!(String, Val::Text)
                }
                PgKind::Bytea => list!(Vec<u8>, Val::Bytes),
                PgKind::Date => list!(NaiveDate, |d| Val::Date((d - epoch).num_days() as i32)),
                PgKind::Time => list!(NaiveTime, |t| Val::Micros(time_us(t))),
                PgKind::Timestamp => list!(NaiveDateTime, |t| Val::Micros(
                    t.and_utc().timestamp_micros()
                )),
                PgKind::TimestampTz => list!(DateTime<Utc>, |t| Val::Micros(t.timestamp_micros())),
                PgKind::Uuid => list!(uuid::Uuid, |u| Val::Uuid(*u.as_bytes())),
                PgKind::Array(_) => panic!("nested arrays are not a supported kind"),
            }
        }
    }
}

/// `SELECT * FROM table` as key → row.
pub async fn pg_rows(client: &Client, t: &SourceTable) -> Rows {
    let list: Vec<String> = t
        .columns
        .iter()
        .map(|c| select_expr(&c.name, &c.kind, c.type_oid))
        .collect();
    let sql = format!(
        "SELECT {} FROM \"{}\".\"{}\"",
        list.join(", "),
        t.schema,
        t.name
    );
    let mut out = Rows::new();
    for row in client.query(&sql, &[]).await.expect("select source") {
        let vals: Vec<Val> = t
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| pg_val(&row, i, &c.kind))
            .collect();
        add_row(t, &mut out, vals, "the source");
    }
    out
}

fn key_of(t: &SourceTable, vals: &[Val]) -> Vec<Val> {
    t.columns
        .iter()
        .zip(vals)
        .filter(|(c, _)| t.key.contains(&c.name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// One value of an Arrow array.
pub fn arrow_val(a: &ArrayRef, i: usize) -> Val {
    if a.is_null(i) {
        return Val::Null;
    }
    match a.data_type() {
        DataType::Boolean => Val::Bool(a.as_boolean().value(i)),
        DataType::Int32 => Val::Int(a.as_primitive::<Int32Type>().value(i) as i64),
        DataType::Int64 => Val::Int(a.as_primitive::<Int64Type>().value(i)),
        DataType::Float32 => {
            Val::Float((a.as_primitive::<Float32Type>().value(i) as f64).to_bits())
        }
        DataType::Float64 => Val::Float(a.as_primitive::<Float64Type>().value(i).to_bits()),
        DataType::Decimal128(_, s) => {
            let v = a.as_primitive::<Decimal128Type>().value(i);
            Val::Text(format_decimal(v, *s))
        }
        DataType::Utf8 => Val::Text(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Val::Text(a.as_string::<i64>().value(i).to_string()),
        DataType::LargeBinary => Val::Bytes(a.as_binary::<i64>().value(i).to_vec()),
        DataType::Binary => Val::Bytes(a.as_binary::<i32>().value(i).to_vec()),
        DataType::Date32 => Val::Date(a.as_primitive::<Date32Type>().value(i)),
        DataType::Time64(_) => Val::Micros(a.as_primitive::<Time64MicrosecondType>().value(i)),
        DataType::Timestamp(_, _) => {
            Val::Micros(a.as_primitive::<TimestampMicrosecondType>().value(i))
        }
        DataType::FixedSizeBinary(16) => {
            let mut u = [0u8; 16];
            u.copy_from_slice(a.as_fixed_size_binary().value(i));
            Val::Uuid(u)
        }
        DataType::List(_) => {
            let l = a.as_list::<i32>().value(i);
            Val::List((0..l.len()).map(|j| arrow_val(&l, j)).collect())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>().value(i);
            Val::List((0..l.len()).map(|j| arrow_val(&l, j)).collect())
        }
        other => panic!("no oracle for arrow type {other}"),
    }
}

pub fn format_decimal(v: i128, scale: i8) -> String {
    if scale <= 0 {
        return v.to_string();
    }
    let neg = v < 0;
    let digits = v.unsigned_abs().to_string();
    let s = scale as usize;
    let digits = if digits.len() <= s {
        format!("{}{}", "0".repeat(s + 1 - digits.len()), digits)
    } else {
        digits
    };
    let (int, frac) = digits.split_at(digits.len() - s);
    format!("{}{int}.{frac}", if neg { "-" } else { "" })
}

/// One change-log row, decoded.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub values: Vec<Val>,
    pub op: String,
    pub lsn: i64,
    pub txid: Option<i64>,
    pub seq: i64,
    pub unchanged: Vec<String>,
}

/// The Iceberg name the lakehouse gave source table `t` (see `lakehouse::naming`).
pub async fn lake_name(wh: &catalog::Warehouse, t: &SourceTable) -> String {
    let cat = wh.open_catalog().await.unwrap();
    lakehouse::naming::resolve(cat.as_ref(), std::slice::from_ref(&t.changelog))
        .await
        .unwrap()
        .remove(0)
}

/// Every row of `bronze.<table>` ordered by (`_lsn`, `_seq`).
pub async fn bronze_changes(
    warehouse: &(impl AsWarehouse + ?Sized),
    t: &SourceTable,
) -> Vec<ChangeRow> {
    let wh = warehouse.warehouse();
    let sql = format!(
        "SELECT * FROM bronze.\"{}\" ORDER BY _lsn, _seq",
        lake_name(&wh, t).await
    );
    let cat = wh.open_catalog().await.unwrap();
    let ctx = lakehouse::query::session(cat).await.unwrap();
    let batches = lakehouse::query::run(&ctx, &sql)
        .await
        .expect("read bronze");
    changes_from_batches(&batches, t.columns.len())
}

pub fn changes_from_batches(batches: &[RecordBatch], ncols: usize) -> Vec<ChangeRow> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<ArrayRef> = b.columns().to_vec();
        for i in 0..b.num_rows() {
            let values = (0..ncols).map(|c| arrow_val(&cols[c], i)).collect();
            let get_i64 = |c: usize| match arrow_val(&cols[c], i) {
                Val::Int(v) => Some(v),
                _ => None,
            };
            let unchanged = match arrow_val(&cols[ncols + 5], i) {
                Val::List(v) => v
                    .into_iter()
                    .map(|x| match x {
                        Val::Text(s) => s,
                        other => panic!("unchanged column name {other:?}"),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            out.push(ChangeRow {
                values,
                op: match arrow_val(&cols[ncols], i) {
                    Val::Text(s) => s,
                    other => panic!("_op {other:?}"),
                },
                lsn: get_i64(ncols + 1).expect("_lsn"),
                txid: get_i64(ncols + 2),
                seq: get_i64(ncols + 4).expect("_seq"),
                unchanged,
            });
        }
    }
    out
}

/// Replays a change log into current state (latest change per key; unchanged TOAST carried
/// forward, across a key change from the delete logged just before the update).
pub fn replay(t: &SourceTable, changes: &[ChangeRow]) -> Rows {
    let mut state = Rows::new();
    let mut last_deleted: Option<(i64, i64, Vec<Val>)> = None;
    for c in changes {
        match c.op.as_str() {
            "truncate" => state.clear(),
            "delete" => {
                let old = remove_row(t, &mut state, &c.values);
                last_deleted = old.map(|row| (c.lsn, c.seq, row));
            }
            "insert" | "update" if !t.has_pk => {
                // Keyless: the source sends the whole old row, logged as a delete just
                // before, and the whole new one.
                assert!(
                    c.unchanged.is_empty(),
                    "{}: unchanged TOAST in a keyless table's change",
                    t.qualified()
                );
                add_row(t, &mut state, c.values.clone(), "bronze replay");
            }
            "insert" | "update" => {
                let key = key_of(t, &c.values);
                let mut row = c.values.clone();
                if !c.unchanged.is_empty() {
                    let moved = last_deleted
                        .as_ref()
                        .filter(|(l, s, _)| *l == c.lsn && *s + 1 == c.seq)
                        .map(|d| &d.2);
                    let prev = state.get(&key).or(moved).unwrap_or_else(|| {
                        panic!(
                            "unchanged TOAST without a previous row in {}: key {key:?}",
                            t.qualified()
                        )
                    });
                    for (i, col) in t.columns.iter().enumerate() {
                        if c.unchanged.contains(&col.name) {
                            row[i] = prev[i].clone();
                        }
                    }
                }
                state.insert(key, row);
            }
            other => panic!("unknown _op {other}"),
        }
    }
    state
}

/// Asserts (lsn, seq) is unique: no change was written twice.
pub fn assert_no_duplicates(t: &SourceTable, changes: &[ChangeRow]) {
    let mut seen = std::collections::HashSet::new();
    for c in changes {
        assert!(
            seen.insert((c.lsn, c.seq)),
            "{}: change (lsn {}, seq {}) written twice",
            t.qualified(),
            c.lsn,
            c.seq
        );
    }
}

/// Every row of `silver.<table>` as key → row (iceberg's reader applies the delete files);
/// panics on a key that appears twice.
pub async fn silver_rows(warehouse: &(impl AsWarehouse + ?Sized), t: &SourceTable) -> Rows {
    let sql = format!(
        "SELECT * FROM silver.\"{}\"",
        lake_name(&warehouse.warehouse(), t).await
    );
    query_rows(warehouse, t, &sql).await
}

/// The rows a query over the warehouse returns, as key → row of `t`'s columns.
pub async fn query_rows(
    warehouse: &(impl AsWarehouse + ?Sized),
    t: &SourceTable,
    sql: &str,
) -> Rows {
    let wh = warehouse.warehouse();
    let cat = wh.open_catalog().await.unwrap();
    let ctx = lakehouse::query::session(cat).await.unwrap();
    let batches = lakehouse::query::run(&ctx, sql).await.expect("query");
    let mut out = Rows::new();
    for b in &batches {
        assert_eq!(
            b.num_columns(),
            t.columns.len(),
            "silver has the source columns only"
        );
        for i in 0..b.num_rows() {
            let vals: Vec<Val> = b.columns().iter().map(|c| arrow_val(c, i)).collect();
            add_row(t, &mut out, vals, "silver");
        }
    }
    out
}

/// Asserts `silver.<table>` equals the source table, row for row.
pub async fn assert_silver_matches(
    client: &Client,
    warehouse: &(impl AsWarehouse + ?Sized),
    t: &SourceTable,
) -> usize {
    let got = silver_rows(warehouse, t).await;
    let want = pg_rows(client, t).await;
    assert_same_rows("silver", t, &got, &want);
    want.len()
}

/// Asserts the replayed bronze state equals the source table, row for row.
pub async fn assert_bronze_matches(
    client: &Client,
    warehouse: &(impl AsWarehouse + ?Sized),
    t: &SourceTable,
) -> usize {
    let changes = bronze_changes(warehouse, t).await;
    assert_no_duplicates(t, &changes);
    let got = replay(t, &changes);
    let want = pg_rows(client, t).await;
    assert_same_rows("bronze replay", t, &got, &want);
    want.len()
}

fn assert_same_rows(what: &str, t: &SourceTable, got: &Rows, want: &Rows) {
    if got != want {
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .collect();
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .take(3)
            .map(|(k, v)| (k, v, got.get(k)))
            .collect();
        panic!(
            "{}: {what} ({} rows) != source ({} rows)\n missing keys {missing:?}\n extra keys {extra:?}\n differing {differ:#?}",
            t.qualified(),
            got.len(),
            want.len()
        );
    }
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// Runs the ingester in-process until it has caught up with everything committed before it started.
pub async fn ingest_caught_up(
    url: &str,
    publication: &str,
    warehouse: &(impl AsWarehouse + ?Sized),
) -> ingestion::Result<ingestion::IngestReport> {
    let mut cfg = ingestion::IngestConfig::new(url, publication);
    cfg.exit_when_caught_up = true;
    cfg.batch_rows = 500;
    cfg.flush_rows = 256;
    let wh = warehouse.warehouse();
    let cat = wh.open_catalog().await.unwrap();
    let sink = lakehouse::MedallionSink::new(cat, wh.commit_path().await.unwrap())
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    ingestion::Ingester::new(cfg, sink).run(rx).await
}

/// Waits until the slot confirms everything written so far; false if the ingester stopped.
pub async fn wait_caught_up(client: &Client, ingest: &tokio::task::JoinHandle<impl Sized>) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    // A new slot's confirmed point is where it was created, before the initial copy is
    // committed: a target read before the slot exists could be "reached" by a slot that
    // has confirmed nothing. So wait for the slot, then mark a WAL position strictly past
    // its creation: only the ingester confirming (after its copy) moves the slot there.
    loop {
        if ingest.is_finished() {
            return false;
        }
        assert!(std::time::Instant::now() < deadline, "no slot in 120 s");
        let slot = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bitvelocity_p'",
                &[],
            )
            .await
            .unwrap();
        if slot.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let target: String = client
        .query_one(
            "SELECT pg_logical_emit_message(false, 'bitvelocity-test', 'sync'), pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .unwrap()
        .get(1);
    let target: ingestion::Lsn = target.parse().unwrap();
    loop {
        if ingest.is_finished() {
            return false;
        }
        assert!(std::time::Instant::now() < deadline, "no catch-up in 120 s");
        // No row until the ingester has created its slot.
        let s: Option<String> = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bitvelocity_p'",
                &[],
            )
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        if s.is_some_and(|s| s.parse::<ingestion::Lsn>().unwrap() >= target) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
