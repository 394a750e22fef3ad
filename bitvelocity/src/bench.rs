//! `bitvelocity bench ingest`: one backlog drained by `pg_recvlogical` (the ceiling of one
//! slot), by our capture and decoder into a discarding sink, and by the real
//! `bitvelocity ingest` process writing bronze and silver, on local disk and (with `--s3`)
//! SeaweedFS S3 with a PostgreSQL catalog. Contenders take turns over several rounds, the
//! order alternating, each round on its own slot; medians and the median per-round ratio are
//! printed, with the ingest process's peak RSS and the key index's bytes per row. Then
//! freshness under a steady load.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ingestion::replication::{ConnInfo, ReplicationConnection};
use ingestion::{IngestConfig, Ingester, Lsn};
use tokio::sync::watch;

use crate::bench_proc::{WarehouseSpec, key_index_cost, live_rows, median, run_ingest};

/// Backlog shape, rounds and where to run.
pub struct BenchConfig {
    /// Inserts in the backlog; updates of half of them follow.
    pub rows: u64,
    /// Rows per source transaction while loading.
    pub txn_rows: u64,
    /// Rounds (each contender once per round, the order alternating).
    pub rounds: u32,
    /// Also run the ingest process on SeaweedFS S3 with a PostgreSQL catalog.
    pub s3: bool,
    /// The ingest process's --memory-limit.
    pub memory_limit: lakehouse::MemoryBudget,
    /// Steady load for the freshness measurement, changes per second.
    pub freshness_rate: u64,
    /// Duration of the freshness measurement, seconds.
    pub freshness_secs: u64,
}

const PUBLICATION: &str = "bench";
const TABLE: &str = "bench";

/// The contenders of one round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    RecvLogical,
    Discard,
    /// The ingest process on target #n (local disk, S3).
    Ingest(usize),
}

/// What one contender measured over the rounds.
#[derive(Default)]
struct Times {
    secs: Vec<f64>,
    peak_rss: u64,
}

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
    let s3 = crate::bench_proc::start_s3(cfg.s3).await?;
    let targets = crate::bench_proc::targets(s3.as_ref());
    let rounds = cfg.rounds.max(1) as usize;
    let dir = tempfile::tempdir()?;

    // Every contender of every round gets its own slot, created before the backlog so each
    // sees all of it. The ingest process's warehouses take their (empty) initial copy now,
    // so the backlog reaches them as changes; that run also creates their slots.
    let info = ConnInfo::parse(&url)?;
    let mut repl = ReplicationConnection::connect(&info).await?;
    repl.create_slot("bench_warmup", false, false).await?;
    for r in 0..rounds {
        repl.create_slot(&format!("bench_a{r}"), false, false)
            .await?;
        repl.create_slot(&format!("bench_b{r}"), false, false)
            .await?;
    }
    drop(repl);
    let mut warehouses: Vec<Vec<WarehouseSpec>> = Vec::new();
    for (t, (_, s3)) in targets.iter().enumerate() {
        let mut per_round = Vec::new();
        for r in 0..rounds {
            let wh = WarehouseSpec::fresh(&format!("c{t}r{r}"), dir.path(), *s3, &pg)?;
            run_ingest(
                "preparing the ingest warehouses",
                &url,
                PUBLICATION,
                &format!("bench_c{t}r{r}"),
                &wh,
                *s3,
                cfg.memory_limit,
            )
            .await?;
            per_round.push(wh);
        }
        warehouses.push(per_round);
    }

    let changes = cfg.rows + cfg.rows / 2;
    load_backlog(&client, &cfg).await?;
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let bytes: i64 = client
        .query_one("SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = 'bench_a0'", &[])
        .await?
        .get(0);
    println!(
        "backlog: {} changes ({} inserts, {} updates) in transactions of {} rows, {:.0} MB of WAL; {rounds} rounds\n",
        changes,
        cfg.rows,
        cfg.rows / 2,
        cfg.txn_rows,
        bytes as f64 / 1e6
    );

    // Warm-up: one untimed drain, so every contender reads the WAL from the page cache.
    recvlogical(
        &pg,
        &url,
        "bench_warmup",
        &end,
        &dir.path().join("warmup.out"),
    )
    .await?;
    let mut order = vec![Contender::RecvLogical, Contender::Discard];
    order.extend((0..targets.len()).map(Contender::Ingest));
    let mut recv = Times::default();
    let mut discard = Times::default();
    let mut ours: Vec<Times> = (0..targets.len()).map(|_| Times::default()).collect();
    // `r` also names the round's slots and files.
    #[allow(clippy::needless_range_loop)]
    for r in 0..rounds {
        for &who in &order {
            match who {
                Contender::RecvLogical => {
                    let out = dir.path().join(format!("recvlogical{r}.out"));
                    let t = Instant::now();
                    recvlogical(&pg, &url, &format!("bench_a{r}"), &end, &out).await?;
                    recv.secs.push(t.elapsed().as_secs_f64());
                    std::fs::remove_file(&out)?;
                }
                Contender::Discard => {
                    let mut dcfg = IngestConfig::new(url.clone(), PUBLICATION);
                    dcfg.slot = format!("bench_b{r}");
                    dcfg.exit_when_caught_up = true;
                    dcfg.batch_rows = usize::MAX;
                    let t = Instant::now();
                    let mut ing = Ingester::new(dcfg, lakehouse::DiscardSink::starting_at(0));
                    run_with_spinner(&mut ing, "(b) decode → discard").await?;
                    discard.secs.push(t.elapsed().as_secs_f64());
                    let sink = ing.into_sink();
                    if sink.rows() != changes {
                        bail!(
                            "discarding sink saw {} rows, expected {changes}",
                            sink.rows()
                        );
                    }
                }
                Contender::Ingest(t) => {
                    let (target, s3) = targets[t];
                    let wh = &warehouses[t][r];
                    let run = run_ingest(
                        &format!("(c) bitvelocity ingest → bronze+silver ({target})"),
                        &url,
                        PUBLICATION,
                        &format!("bench_c{t}r{r}"),
                        wh,
                        s3,
                        cfg.memory_limit,
                    )
                    .await?;
                    // A sanity check of counts, not of values (the test suite checks those): bronze
                    // holds every change, silver one row per key.
                    let bronze = live_rows(wh, "bronze", TABLE).await?;
                    let silver = live_rows(wh, "silver", TABLE).await?;
                    if bronze != changes || silver != cfg.rows {
                        bail!(
                            "ingest on {target} wrote {bronze} bronze rows (expected {changes}) and {silver} silver rows (expected {})",
                            cfg.rows
                        );
                    }
                    ours[t].secs.push(run.secs);
                    ours[t].peak_rss = ours[t].peak_rss.max(run.peak_rss);
                }
            }
        }
        // Alternate the order, so caches and the machine's state favour no one.
        order.reverse();
    }

    let rate = |s: f64| changes as f64 / s;
    // Per-round ratios against pg_recvlogical of the same round, then their median.
    let ratio = |times: &Times| {
        median(
            times
                .secs
                .iter()
                .zip(&recv.secs)
                .map(|(ours, theirs)| theirs / ours)
                .collect(),
        )
    };
    let fmt_rounds = |t: &Times| {
        t.secs
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{:<14} {:<38} {:>8} {:>11} {:>7} {:>9}  rounds (s)",
        "storage", "contender", "median s", "changes/s", "ratio", "peak RSS"
    );
    let line = |storage: &str, name: &str, t: &Times, rss: Option<u64>| {
        let m = median(t.secs.clone());
        println!(
            "{:<14} {:<38} {:>8.2} {:>11.0} {:>7.2} {:>9}  {}",
            storage,
            name,
            m,
            rate(m),
            ratio(t),
            rss.map(|b| format!("{} MiB", b >> 20))
                .unwrap_or_else(|| "-".into()),
            fmt_rounds(t)
        );
    };
    line("-", "(a) pg_recvlogical → file", &recv, None);
    line("-", "(b) bitvelocity decode → discard", &discard, None);
    for (t, (target, _)) in targets.iter().enumerate() {
        line(
            target,
            "(c) bitvelocity ingest → bronze+silver",
            &ours[t],
            Some(ours[t].peak_rss),
        );
    }
    let (index_bytes, keys) = key_index_cost(&warehouses[0][0], TABLE).await?;
    println!(
        "ratio: median over rounds of (a)'s time / the contender's; targets (c)/(a) ≥ 0.8; key index: {keys} keys, {} MiB, {:.1} bytes per row",
        index_bytes >> 20,
        index_bytes as f64 / keys.max(1) as f64
    );

    // Freshness: commit in PostgreSQL → visible in bronze and silver, under a steady load,
    // continuing on the first local warehouse (caught up) and its slot.
    let wh = warehouses[0][0].open()?;
    let mut fcfg = IngestConfig::new(url.clone(), PUBLICATION);
    fcfg.slot = "bench_c0r0".into();
    freshness(
        &url,
        &client,
        fcfg,
        wh.open_catalog().await?,
        wh.commit_path().await?,
        &cfg,
    )
    .await?;
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
    let sink = lakehouse::MedallionSink::new(cat, commits).await?;
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
        "freshness into bronze+silver at {} changes/s for {} s ({} changes, {} transactions): p50 {:.0} ms, p99 {:.0} ms (target p99 < 1000 ms)",
        bench.freshness_rate,
        bench.freshness_secs,
        written,
        lat.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
