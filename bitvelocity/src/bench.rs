//! `bitvelocity bench ingest`: our capture side by side with `pg_recvlogical` on one backlog.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ingestion::replication::{ConnInfo, ReplicationConnection};
use ingestion::{IngestConfig, Ingester, Lsn};
use tokio::sync::watch;

/// Backlog shape: `rows` inserts then `rows / 2` updates, in transactions of `txn_rows`.
pub struct BenchConfig {
    pub rows: u64,
    pub txn_rows: u64,
    pub freshness_rate: u64,
    pub freshness_secs: u64,
}

const PUBLICATION: &str = "bench";

pub async fn ingest(cfg: BenchConfig) -> Result<()> {
    let pg = tokio::task::spawn_blocking(domains::PgCluster::start).await??;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let client = domains::connect(&url).await?;
    client
        .batch_execute(
            "CREATE TABLE bench (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, c double precision, d timestamptz NOT NULL);
             CREATE PUBLICATION bench FOR TABLE bench;",
        )
        .await?;
    let info = ConnInfo::parse(&url)?;
    // One slot per contender, all created before the backlog so each sees all of it.
    let mut repl = ReplicationConnection::connect(&info).await?;
    for slot in ["bench_warmup", "bench_recvlogical", "bench_discard"] {
        repl.create_slot(slot, false, false).await?;
    }
    drop(repl);
    let dir = tempfile::tempdir()?;
    let warehouse = dir.path().join("wh");
    let wh = catalog::Warehouse::new(&warehouse)?;
    let cat = wh.open_catalog().await?;
    let commits = wh.commit_path().await?;
    // The bronze contender takes its (empty) initial copy now, so the backlog reaches it as changes.
    let mut bronze_cfg = IngestConfig::new(url.clone(), PUBLICATION);
    bronze_cfg.slot = "bench_bronze".into();
    bronze_cfg.exit_when_caught_up = true;
    let sink = lakehouse::BronzeSink::new(cat.clone(), commits.clone()).await?;
    Ingester::new(bronze_cfg.clone(), sink)
        .run(watch::channel(false).1)
        .await?;

    let changes = cfg.rows + cfg.rows / 2;
    load_backlog(&client, &cfg).await?;
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let bytes: i64 = client
        .query_one("SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = 'bench_recvlogical'", &[])
        .await?
        .get(0);
    println!(
        "backlog: {} changes ({} inserts, {} updates), {:.0} MB of WAL\n",
        changes,
        cfg.rows,
        cfg.rows / 2,
        bytes as f64 / 1e6
    );

    // Warm-up: one untimed drain, so every contender reads the WAL from the page cache.
    let out = dir.path().join("recvlogical.out");
    recvlogical(
        &pg,
        &url,
        "bench_warmup",
        &end,
        &dir.path().join("warmup.out"),
    )
    .await?;
    // (a) pg_recvlogical: the ceiling of one slot.
    let t = Instant::now();
    recvlogical(&pg, &url, "bench_recvlogical", &end, &out).await?;
    let a = t.elapsed();
    let a_bytes = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);

    // (b) our replication client and decoder into a discarding sink.
    let mut discard_cfg = IngestConfig::new(url.clone(), PUBLICATION);
    discard_cfg.slot = "bench_discard".into();
    discard_cfg.exit_when_caught_up = true;
    discard_cfg.batch_rows = usize::MAX;
    let t = Instant::now();
    let mut ing = Ingester::new(discard_cfg, lakehouse::DiscardSink::starting_at(0));
    let rb = run_with_spinner(&mut ing, "(b) decode → discard").await?;
    let b = t.elapsed();
    let sink = ing.into_sink();
    if sink.rows() != changes {
        bail!(
            "discarding sink saw {} rows, expected {changes}",
            sink.rows()
        );
    }

    // (c) the real thing: bronze Iceberg tables.
    let sink = lakehouse::BronzeSink::new(cat.clone(), commits.clone()).await?;
    let t = Instant::now();
    let mut ing = Ingester::new(bronze_cfg.clone(), sink);
    let rc = run_with_spinner(&mut ing, "(c) ingest → bronze").await?;
    let c = t.elapsed();
    if rc.changes != changes {
        bail!(
            "bronze ingest wrote {} changes, expected {changes}",
            rc.changes
        );
    }
    let _ = rb;

    let rate = |d: Duration| changes as f64 / d.as_secs_f64();
    println!(
        "{:<28} {:>10} {:>9} {:>12} {:>7}",
        "", "changes", "seconds", "changes/s", "ratio"
    );
    println!(
        "{:<28} {:>10} {:>9.2} {:>12.0} {:>7.2}",
        "(a) pg_recvlogical → file",
        changes,
        a.as_secs_f64(),
        rate(a),
        1.0
    );
    println!(
        "{:<28} {:>10} {:>9.2} {:>12.0} {:>7.2}",
        "(b) bitvelocity → discard",
        changes,
        b.as_secs_f64(),
        rate(b),
        rate(b) / rate(a)
    );
    println!(
        "{:<28} {:>10} {:>9.2} {:>12.0} {:>7.2}",
        "(c) bitvelocity → bronze",
        changes,
        c.as_secs_f64(),
        rate(c),
        rate(c) / rate(a)
    );
    println!(
        "pg_recvlogical wrote {:.0} MB; peak RSS of bitvelocity {} MB; targets: b/a ≥ 0.95, c/a ≥ 0.75",
        a_bytes as f64 / 1e6,
        peak_rss_mb()
    );

    // Freshness: commit in PostgreSQL → visible in bronze, under a steady load.
    freshness(&url, &client, bronze_cfg, cat, commits, &cfg).await?;
    drop(pg);
    Ok(())
}

async fn recvlogical(
    pg: &domains::PgCluster,
    url: &str,
    slot: &str,
    end: &str,
    out: &std::path::Path,
) -> Result<()> {
    let status = tokio::process::Command::new(pg.bindir().join("pg_recvlogical"))
        .args(["-d", url, "--slot", slot, "--start", "--no-loop", "-E", end])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench",
            "-f",
        ])
        .arg(out)
        .status()
        .await
        .context("running pg_recvlogical")?;
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    Ok(())
}

/// Peak resident memory of this process (VmHWM), to show the backlog is not buffered whole.
fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

async fn load_backlog(client: &tokio_postgres::Client, cfg: &BenchConfig) -> Result<()> {
    let bar = ProgressBar::new(cfg.rows + cfg.rows / 2).with_style(ProgressStyle::with_template(
        "loading   {bar:40} {pos}/{len} changes {per_sec}",
    )?);
    let mut done = 0;
    while done < cfg.rows {
        let n = cfg.txn_rows.min(cfg.rows - done);
        client
            .execute(
                "INSERT INTO bench SELECT g, g % 1000, md5(g::text), g / 7.0, now() FROM generate_series($1::int8, $2::int8) g",
                &[&(done as i64 + 1), &((done + n) as i64)],
            )
            .await?;
        done += n;
        bar.set_position(done);
    }
    let mut upd = 0;
    while upd < cfg.rows / 2 {
        let n = cfg.txn_rows.min(cfg.rows / 2 - upd);
        client
            .execute(
                "UPDATE bench SET a = a + 1, d = now() WHERE id BETWEEN $1 AND $2",
                &[&(upd as i64 + 1), &((upd + n) as i64)],
            )
            .await?;
        upd += n;
        bar.set_position(done + upd);
    }
    bar.finish();
    Ok(())
}

async fn run_with_spinner<S: lakehouse::ChangeSink>(
    ing: &mut Ingester<S>,
    label: &str,
) -> Result<ingestion::IngestReport> {
    let m = ing.metrics();
    let spin = ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{msg}")?);
    let label = label.to_string();
    let ticker = tokio::spawn({
        let spin = spin.clone();
        async move {
            loop {
                spin.set_message(format!("{label}: {} changes", m.changes.load(Relaxed)));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let r = ing.run(watch::channel(false).1).await;
    ticker.abort();
    spin.finish_and_clear();
    Ok(r?)
}

async fn freshness(
    url: &str,
    client: &tokio_postgres::Client,
    mut cfg: IngestConfig,
    cat: Arc<dyn catalog::Catalog>,
    commits: catalog::commit::CommitPath,
    bench: &BenchConfig,
) -> Result<()> {
    cfg.exit_when_caught_up = false;
    cfg.batch_interval = Duration::from_millis(100);
    cfg.record_freshness = true;
    let sink = lakehouse::BronzeSink::new(cat, commits).await?;
    let mut ing = Ingester::new(cfg, sink);
    let metrics = ing.metrics();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { ing.run(stop_rx).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Steady writer: 20 transactions a second, each rate/20 inserts.
    let writer = domains::connect(url).await?;
    let per_txn = (bench.freshness_rate / 20).max(1) as i64;
    let mut next_id: i64 = 10_000_000_000;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(bench.freshness_secs);
    let mut written = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        writer
            .execute(
                "INSERT INTO bench SELECT g, 1, 'fresh', 0, now() FROM generate_series($1::int8, $2::int8) g",
                &[&next_id, &(next_id + per_txn - 1)],
            )
            .await?;
        next_id += per_txn;
        written += per_txn as u64;
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let end: Lsn = end.parse()?;
    while Lsn(metrics.confirmed_lsn.load(Relaxed)) < end && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    task.await??;
    let mut lat = metrics.freshness_micros();
    if lat.is_empty() {
        bail!("no freshness samples recorded");
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "freshness at {} changes/s for {} s ({} changes, {} transactions): p50 {:.0} ms, p99 {:.0} ms (target p99 < 1000 ms)",
        bench.freshness_rate,
        bench.freshness_secs,
        written,
        lat.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
