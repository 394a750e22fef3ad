//! `bitvelocity bench copy`: the initial copy of one large table into bronze and silver by
//! the real `bitvelocity ingest` process, next to its ceiling, PostgreSQL's own
//! `COPY (SELECT * FROM t) TO STDOUT (FORMAT binary)` drained and discarded; on local disk
//! and on SeaweedFS S3 with a PostgreSQL catalog. Prints rows/s, the ratio, the process's
//! peak RSS (its `VmHWM`, sampled every 50 ms) and the key index's memory per row.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, pin_mut};
use indicatif::{ProgressBar, ProgressStyle};

/// Table size, memory limit and where to run.
pub struct CopyBenchConfig {
    pub rows: u64,
    pub memory_limit: lakehouse::MemoryBudget,
    pub rounds: u32,
    pub s3: bool,
}

const TABLE: &str = "bench_copy";

/// One measured copy by the ingest process.
struct Copied {
    secs: f64,
    peak_rss: u64,
}

pub async fn copy(cfg: CopyBenchConfig) -> Result<()> {
    let pg = tokio::task::spawn_blocking(domains::PgCluster::start).await??;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let client = domains::connect(&url).await?;
    let bar = spinner(&format!("loading {} rows into PostgreSQL", cfg.rows))?;
    client
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, a int NOT NULL, b bigint, c double precision,
                 d text NOT NULL, e timestamptz NOT NULL, f numeric(12, 2), g boolean);
             INSERT INTO {TABLE} SELECT i, (i % 100000)::int, i * 31, i / 7.0,
                 md5(i::text), timestamptz '2024-01-01' + i * interval '1 second',
                 (i % 1000000) / 100.0, i % 3 = 0
               FROM generate_series(1, {}) i;
             CREATE PUBLICATION bench_copy FOR TABLE {TABLE};",
            cfg.rows
        ))
        .await?;
    client
        .batch_execute(&format!("VACUUM ANALYZE {TABLE}"))
        .await?;
    bar.finish_and_clear();
    let size: String = client
        .query_one(
            &format!("SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))"),
            &[],
        )
        .await?
        .get(0);
    println!(
        "table {TABLE}: {} rows, 8 columns, {size} in PostgreSQL; --memory-limit {}",
        cfg.rows, cfg.memory_limit
    );

    let s3 = if cfg.s3 {
        let s3 = tokio::task::spawn_blocking(domains::SeaweedFs::start).await??;
        s3.create_bucket("bench")?;
        Some(s3)
    } else {
        None
    };
    let mut targets: Vec<(&str, Option<&domains::SeaweedFs>)> = vec![("local disk", None)];
    if let Some(s3) = &s3 {
        targets.push(("SeaweedFS S3", Some(s3)));
    }
    let exe = std::env::current_exe().context("finding the bitvelocity executable")?;
    let dir = tempfile::tempdir()?;
    println!(
        "{:<14} {:<34} {:>8} {:>12} {:>7} {:>10}",
        "storage", "contender", "seconds", "rows/s", "ratio", "peak RSS"
    );
    for (target, s3) in targets {
        let mut ceiling = Vec::new();
        let mut ours = Vec::new();
        let mut index_cost = None;
        for round in 0..cfg.rounds.max(1) {
            // Alternate which goes first, so caches favour neither.
            let first_ours = round % 2 == 1;
            for ours_now in [first_ours, !first_ours] {
                if !ours_now {
                    ceiling.push(copy_binary(&client).await?);
                    continue;
                }
                let name = format!("r{round}_{}", if s3.is_some() { "s3" } else { "local" });
                let wh = match s3 {
                    None => WarehouseSpec::Local(dir.path().join(&name)),
                    Some(_) => {
                        pg.create_database(&format!("catalog_{name}"))?;
                        WarehouseSpec::S3 {
                            url: format!("s3://bench/{name}"),
                            catalog: pg.url(&format!("catalog_{name}")),
                        }
                    }
                };
                let slot = format!("bench_copy_{name}");
                let run = ingest(&exe, &url, &slot, &wh, s3, cfg.memory_limit).await?;
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await?;
                // The index is the same whatever the storage: measured on the local copy.
                if index_cost.is_none() && s3.is_none() {
                    index_cost = Some(key_index_cost(&wh).await?);
                }
                ours.push(run);
            }
        }
        let c = median(ceiling.iter().map(|d| d.as_secs_f64()).collect());
        let o = median(ours.iter().map(|r| r.secs).collect());
        let peak = ours.iter().map(|r| r.peak_rss).max().unwrap_or(0);
        let rate = |s: f64| cfg.rows as f64 / s;
        println!(
            "{:<14} {:<34} {:>8.2} {:>12.0} {:>7.2} {:>10}",
            target,
            "COPY ... (FORMAT binary) → discard",
            c,
            rate(c),
            1.0,
            "-"
        );
        println!(
            "{:<14} {:<34} {:>8.2} {:>12.0} {:>7.2} {:>7} MiB",
            target,
            "bitvelocity ingest → bronze+silver",
            o,
            rate(o),
            rate(o) / rate(c),
            peak >> 20
        );
        if let Some((bytes, rows)) = index_cost {
            println!(
                "{:<14} key index: {rows} keys, {} MiB in memory, {:.1} bytes per row",
                target,
                bytes >> 20,
                bytes as f64 / rows.max(1) as f64
            );
        }
    }
    Ok(())
}

/// Where the contender writes.
enum WarehouseSpec {
    Local(std::path::PathBuf),
    S3 { url: String, catalog: String },
}

impl WarehouseSpec {
    fn args(&self) -> Vec<String> {
        match self {
            WarehouseSpec::Local(p) => vec!["--warehouse".into(), p.display().to_string()],
            WarehouseSpec::S3 { url, catalog } => vec![
                "--warehouse".into(),
                url.clone(),
                "--catalog".into(),
                catalog.clone(),
            ],
        }
    }

    fn open(&self) -> Result<catalog::Warehouse> {
        Ok(match self {
            WarehouseSpec::Local(p) => catalog::Warehouse::new(p)?,
            WarehouseSpec::S3 { url, catalog } => catalog::Warehouse::open(url, Some(catalog))?,
        })
    }
}

/// The ceiling: PostgreSQL's binary COPY of the whole table, read and thrown away.
async fn copy_binary(client: &tokio_postgres::Client) -> Result<Duration> {
    let bar = spinner("COPY ... TO STDOUT (FORMAT binary)")?;
    let t = Instant::now();
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT * FROM {TABLE}) TO STDOUT (FORMAT binary)"
        ))
        .await?;
    pin_mut!(stream);
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    let took = t.elapsed();
    bar.finish_and_clear();
    if bytes == 0 {
        bail!("COPY returned nothing");
    }
    Ok(took)
}

/// Runs `bitvelocity ingest` until it has copied the table and caught up; times it and
/// samples its peak resident memory.
async fn ingest(
    exe: &Path,
    url: &str,
    slot: &str,
    wh: &WarehouseSpec,
    s3: Option<&domains::SeaweedFs>,
    memory: lakehouse::MemoryBudget,
) -> Result<Copied> {
    let bar = spinner("bitvelocity ingest (initial copy)")?;
    let log = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "ingest",
        "--pg",
        url,
        "--publication",
        "bench_copy",
        "--slot",
        slot,
    ])
    .args(wh.args())
    .args([
        "--exit-when-caught-up",
        "--maintain-every",
        "0",
        "--memory-limit",
        &memory.limit().to_string(),
    ])
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    // A file, not a pipe nobody reads until the end (a full pipe would stall the child).
    .stderr(Stdio::from(log.reopen()?));
    if let Some(s3) = s3 {
        cmd.envs(s3.env());
    }
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting bitvelocity ingest")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            peak = peak.max(vm_hwm(&text).unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if !status.success() {
        let err = std::fs::read_to_string(log.path()).unwrap_or_default();
        bail!("bitvelocity ingest failed ({status}): {err}");
    }
    Ok(Copied {
        secs,
        peak_rss: peak,
    })
}

/// `VmHWM` (peak resident set) of a `/proc/<pid>/status` text, in bytes.
fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The silver table's key index as the ingester holds it: bytes and keys.
async fn key_index_cost(wh: &WarehouseSpec) -> Result<(usize, usize)> {
    let wh = wh.open()?;
    let cat = wh.open_catalog().await?;
    let ident = catalog::TableIdent::new(
        catalog::NamespaceIdent::new("silver".into()),
        TABLE.to_string(),
    );
    let table = cat.load_table(&ident).await?;
    let index = lakehouse::silver::index_of(&table).await?;
    Ok((index.heap_bytes(), index.len()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spinner(msg: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    Ok(bar)
}
