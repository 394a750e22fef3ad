//! `bitvelocity bench copy`: the initial copy of one large table into bronze and silver by
//! the real `bitvelocity ingest` process, next to its ceiling, PostgreSQL's own
//! `COPY (SELECT * FROM t) TO STDOUT (FORMAT binary)` drained and discarded; on local disk
//! and on SeaweedFS S3 with a PostgreSQL catalog. Prints rows/s, the ratio, the process's
//! peak RSS (its `VmHWM`, sampled every 50 ms) and the key index's memory per row.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt, pin_mut};

use crate::bench_proc::{WarehouseSpec, key_index_cost, median, run_ingest, spinner};

/// Table size, memory limit and where to run.
pub struct CopyBenchConfig {
    pub rows: u64,
    pub memory_limit: lakehouse::MemoryBudget,
    pub rounds: u32,
    pub s3: bool,
}

const TABLE: &str = "bench_copy";

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

    let s3 = crate::bench_proc::start_s3(cfg.s3).await?;
    let targets = crate::bench_proc::targets(s3.as_ref());
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
                let wh = WarehouseSpec::fresh(&name, dir.path(), s3, &pg)?;
                let slot = format!("bench_copy_{name}");
                let run = run_ingest(
                    "bitvelocity ingest (initial copy)",
                    &url,
                    "bench_copy",
                    &slot,
                    &wh,
                    s3,
                    cfg.memory_limit,
                )
                .await?;
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await?;
                // The index is the same whatever the storage: measured on the local copy.
                if index_cost.is_none() && s3.is_none() {
                    index_cost = Some(key_index_cost(&wh, TABLE).await?);
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
        let cpu = median(ours.iter().map(|r| r.cpu_secs).collect());
        let server = ours
            .iter()
            .filter_map(|r| r.server_cpu_secs)
            .collect::<Vec<_>>();
        let server = if server.is_empty() {
            String::new()
        } else {
            format!(
                "; the SeaweedFS server beside it used {:.1} CPU s of the same cores",
                median(server)
            )
        };
        println!(
            "{:<14} CPU: bitvelocity ingest used {cpu:.1} CPU s ({:.2} cores over its run){server}",
            target,
            cpu / o
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
