//! `bitvelocity bench silver`: silver under a steady stream of updates and deletes, and
//! scans of it (with delete files, after compaction) next to DuckDB on a clean Parquet copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use indicatif::{ProgressBar, ProgressStyle};
use ingestion::{IngestConfig, Ingester, Lsn};
use tokio::sync::watch;

/// Table size and the shape of the change stream.
pub struct SilverBenchConfig {
    pub rows: u64,
    pub rate: u64,
    pub secs: u64,
    pub txn_changes: u64,
}

const QUERY: &str =
    "SELECT count(*) AS n, sum(n) AS s, sum(length(payload)) AS p FROM silver.bench_kv";

pub async fn silver(cfg: SilverBenchConfig) -> Result<()> {
    let python = python()?;
    let pg = tokio::task::spawn_blocking(domains::PgCluster::start).await??;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let client = domains::connect(&url).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE bench_kv (id bigint PRIMARY KEY, n int NOT NULL, payload text NOT NULL, ts timestamptz NOT NULL);
             INSERT INTO bench_kv SELECT g, 0, md5(g::text) || md5((g * 7)::text), now() FROM generate_series(1, {}) g;
             CREATE PUBLICATION bench FOR TABLE bench_kv;",
            cfg.rows
        ))
        .await?;
    let dir = tempfile::tempdir()?;
    let wh = catalog::Warehouse::new(dir.path().join("wh"))?;
    let cat = wh.open_catalog().await?;

    // Initial copy of the table into bronze and silver.
    let mut icfg = IngestConfig::new(url.clone(), "bench");
    icfg.exit_when_caught_up = true;
    let t = Instant::now();
    let sink = lakehouse::MedallionSink::new(cat.clone(), wh.commit_path().await?).await?;
    Ingester::new(icfg.clone(), sink)
        .run(watch::channel(false).1)
        .await?;
    println!(
        "initial copy: {} rows into bronze and silver in {:.1} s",
        cfg.rows,
        t.elapsed().as_secs_f64()
    );

    // The steady stream, with the ingester running as `bitvelocity ingest` does.
    icfg.exit_when_caught_up = false;
    icfg.batch_interval = Duration::from_millis(250);
    icfg.record_freshness = true;
    let sink = lakehouse::MedallionSink::new(cat.clone(), wh.commit_path().await?).await?;
    let mut ing = Ingester::new(icfg, sink);
    let metrics = ing.metrics();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { ing.run(stop_rx).await });
    let start_changes = metrics.changes.load(Relaxed);
    let txns_per_sec = (cfg.rate / cfg.txn_changes).max(1);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / txns_per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let bar = ProgressBar::new(cfg.secs).with_style(ProgressStyle::with_template(
        "stream    {bar:40} {pos}/{len} s {msg}",
    )?);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(cfg.secs);
    let (mut written, mut k, mut next_id) = (0u64, 0u64, cfg.rows as i64 + 1);
    let span = cfg.txn_changes as i64;
    while Instant::now() < deadline {
        tick.tick().await;
        k += 1;
        // Spread over the key space: a multiplicative hash of the transaction number.
        let x = ((k.wrapping_mul(2_654_435_761) % cfg.rows) as i64).min(cfg.rows as i64 - span) + 1;
        let n = match k % 10 {
            0 => {
                client
                    .execute(
                        "DELETE FROM bench_kv WHERE id BETWEEN $1 AND $2",
                        &[&x, &(x + span / 5 - 1)],
                    )
                    .await?
            }
            1 => {
                let n = client
                    .execute(
                        "INSERT INTO bench_kv SELECT g, 1, md5(g::text), now() FROM generate_series($1::int8, $2::int8) g",
                        &[&next_id, &(next_id + span / 5 - 1)],
                    )
                    .await?;
                next_id += span / 5;
                n
            }
            _ => {
                client
                    .execute(
                        "UPDATE bench_kv SET n = n + 1, ts = now() WHERE id BETWEEN $1 AND $2",
                        &[&x, &(x + span - 1)],
                    )
                    .await?
            }
        };
        written += n;
        bar.set_position(t.elapsed().as_secs());
        bar.set_message(format!(
            "{written} changes written, {} applied",
            metrics.changes.load(Relaxed) - start_changes
        ));
    }
    let write_secs = t.elapsed().as_secs_f64();
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end: Lsn = end.parse()?;
    while Lsn(metrics.confirmed_lsn.load(Relaxed)) < end && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let _ = stop.send(true);
    task.await??;
    let applied = metrics.changes.load(Relaxed) - start_changes;
    if applied != written {
        bail!("silver applied {applied} changes but {written} were written");
    }
    let mut lat = metrics.freshness_micros();
    if lat.is_empty() {
        bail!("no freshness samples recorded");
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "stream: {written} changes (updates, deletes, inserts) written in {write_secs:.1} s ({:.0}/s offered), applied to bronze and silver by {total_secs:.1} s: {:.0} changes/s sustained (target 20,000)",
        written as f64 / write_secs,
        applied as f64 / total_secs,
    );
    println!(
        "freshness (source commit → silver commit) over {} transactions: p50 {:.0} ms, p99 {:.0} ms (target p99 < 2000 ms)",
        lat.len(),
        pct(0.5),
        pct(0.99)
    );

    // Scans.
    let pg_row: (i64, i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*), sum(n)::int8, sum(length(payload))::int8 FROM bench_kv",
                &[],
            )
            .await?;
        (r.get(0), r.get(1), r.get(2))
    };
    let ident = catalog::TableIdent::from_strs(["silver", "bench_kv"])?;
    let deletes = lakehouse::files::live_files(&cat.load_table(&ident).await?)
        .await?
        .deletes
        .len();
    let (with_deletes, got) = datafusion_scan(cat.clone()).await?;
    if got != pg_row {
        bail!("silver with delete files answers {got:?}, PostgreSQL {pg_row:?}");
    }
    let clean = dir.path().join("clean.parquet");
    let ctx = lakehouse::query::session(cat.clone()).await?;
    lakehouse::query::run(
        &ctx,
        &format!(
            "COPY (SELECT * FROM silver.bench_kv) TO '{}' STORED AS PARQUET",
            clean.display()
        ),
    )
    .await?;
    let t = Instant::now();
    let opts = lakehouse::maintenance::MaintenanceOptions {
        min_small_files: 2,
        ..Default::default()
    };
    let report =
        lakehouse::maintenance::compact(cat.as_ref(), &wh.commit_path().await?, &ident, &opts)
            .await?;
    let compact_secs = t.elapsed().as_secs_f64();
    let (compacted, got) = datafusion_scan(cat.clone()).await?;
    if got != pg_row {
        bail!("silver after compaction answers {got:?}, PostgreSQL {pg_row:?}");
    }
    let (duck, duck_row) = duckdb_scan(&python, &clean)?;
    if duck_row != pg_row {
        bail!("DuckDB on the clean copy answers {duck_row:?}, PostgreSQL {pg_row:?}");
    }
    println!(
        "compaction: {} data files and {} delete files into {} files, {} deleted rows purged, in {compact_secs:.1} s",
        report.data_files_rewritten,
        report.delete_files_removed,
        report.files_written,
        report.rows_purged
    );
    println!("\nscan of {} rows ({QUERY}), best of 5:", pg_row.0);
    println!("{:<48} {:>9} {:>10}", "", "ms", "vs DuckDB");
    for (label, ms) in [
        (
            format!("DataFusion on silver ({deletes} delete files)"),
            with_deletes,
        ),
        (
            "DataFusion on silver after compaction".to_string(),
            compacted,
        ),
        ("DuckDB on a clean Parquet copy".to_string(), duck),
    ] {
        println!("{label:<48} {ms:>9.1} {:>9.2}x", ms / duck);
    }
    println!("(target: after compaction within 1.5x of DuckDB)");
    Ok(())
}

/// Best-of-5 milliseconds of the scan query in DataFusion, with its answer.
async fn datafusion_scan(
    cat: std::sync::Arc<dyn catalog::Catalog>,
) -> Result<(f64, (i64, i64, i64))> {
    let mut best = f64::MAX;
    let mut answer = (0, 0, 0);
    for _ in 0..5 {
        let ctx = lakehouse::query::session(cat.clone()).await?;
        let t = Instant::now();
        let out = lakehouse::query::run(&ctx, QUERY).await?;
        best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        let b = out.first().context("no result")?;
        let col = |i: usize| -> Result<i64> {
            let c = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int64)?;
            let c = c.as_primitive::<Int64Type>();
            Ok(if c.is_null(0) { 0 } else { c.value(0) })
        };
        answer = (col(0)?, col(1)?, col(2)?);
    }
    Ok((best, answer))
}

/// Best-of-5 milliseconds of the same query in DuckDB over `file`, with its answer.
fn duckdb_scan(python: &Path, file: &Path) -> Result<(f64, (i64, i64, i64))> {
    let script = format!(
        r#"
import duckdb, time
con = duckdb.connect()
q = "SELECT count(*), sum(n), sum(length(payload)) FROM read_parquet('{}')"
best = None
for _ in range(5):
    t = time.perf_counter()
    row = con.execute(q).fetchone()
    ms = (time.perf_counter() - t) * 1000
    best = ms if best is None else min(best, ms)
print(best, row[0], row[1], row[2])
"#,
        file.display()
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .context("running DuckDB")?;
    if !out.status.success() {
        bail!("DuckDB failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() != 4 {
        bail!("unexpected DuckDB output: {text}");
    }
    Ok((f[0].parse()?, (f[1].parse()?, f[2].parse()?, f[3].parse()?)))
}

/// The Python with DuckDB that `scripts/test` builds (or `BITVELOCITY_PYTHON`).
fn python() -> Result<PathBuf> {
    let p = std::env::var_os("BITVELOCITY_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/bitvelocity/venv/bin/python"))
        })
        .context("HOME is not set")?;
    let ok = Command::new(&p)
        .args(["-c", "import duckdb"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "the silver benchmark compares with DuckDB and needs a Python with duckdb at {} (scripts/test builds it; or set BITVELOCITY_PYTHON)",
            p.display()
        );
    }
    Ok(p)
}
