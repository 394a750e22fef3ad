//! `bitvelocity demo`: the end-to-end pipeline on embedded defaults.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use domains::ecommerce::{self, WorkloadConfig};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

pub async fn run(warehouse: PathBuf, operations: u32) -> Result<()> {
    let started = Instant::now();
    prepare_warehouse(&warehouse)?;
    println!(
        "BitVelocity demo: PostgreSQL → pgoutput → Iceberg bronze + silver ({})",
        warehouse.display()
    );

    let pg = tokio::task::spawn_blocking(domains::PgCluster::start).await??;
    pg.create_database("shop")?;
    let url = pg.url("shop");
    println!(
        "  started PostgreSQL 127.0.0.1:{} (wal_level=logical, throw-away)",
        pg.port()
    );
    let mut client = domains::connect(&url).await?;
    ecommerce::create_schema(&client).await?;

    let wh = catalog::Warehouse::new(&warehouse)?;
    let cat = wh.open_catalog().await?;
    let sink = lakehouse::MedallionSink::new(cat.clone(), wh.commit_path().await?).await?;
    let mut cfg = ingestion::IngestConfig::new(url.clone(), ecommerce::PUBLICATION);
    cfg.batch_interval = Duration::from_millis(500);
    let mut ingester = ingestion::Ingester::new(cfg, sink);
    let metrics = ingester.metrics();
    let (stop_tx, stop_rx) = watch::channel(false);
    // The ingester starts while the workload writes: its initial copy and the
    // stream must hand over without losing or doubling a change.
    let ingest = tokio::spawn(async move { ingester.run(stop_rx).await });

    let wcfg = WorkloadConfig {
        operations,
        ..WorkloadConfig::default()
    };
    let total = (wcfg.seed_customers + wcfg.seed_products + wcfg.operations) as u64;
    let bar = ProgressBar::new(total).with_style(ProgressStyle::with_template(
        "  workload  {bar:40} {pos}/{len} transactions {per_sec} {msg}",
    )?);
    let stats = ecommerce::run_workload(&mut client, &wcfg, |n| {
        bar.set_position(n);
        bar.set_message(format!(
            "captured {} changes",
            metrics.changes.load(Relaxed) + metrics.snapshot_rows.load(Relaxed)
        ));
    })
    .await?;
    bar.finish_with_message("done");

    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let target: ingestion::Lsn = target.parse()?;
    let spin = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("  ingest    {spinner} {msg}")?);
    while ingestion::Lsn(metrics.confirmed_lsn.load(Relaxed)) < target {
        if ingest.is_finished() {
            break;
        }
        spin.set_message(format!(
            "{} changes, {} commits, confirmed {}",
            metrics.changes.load(Relaxed),
            metrics.commits.load(Relaxed),
            ingestion::Lsn(metrics.confirmed_lsn.load(Relaxed))
        ));
        spin.tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let report = ingest.await?.context("ingest")?;
    spin.finish_with_message(format!(
        "{} rows copied, {} changes in {} transactions, {} Iceberg commits",
        report.snapshot_rows, report.changes, report.transactions, report.commits
    ));
    println!(
        "  ingest: {} rows copied, {} changes from {} transactions, {} Iceberg commits, confirmed {}",
        report.snapshot_rows, report.changes, report.transactions, report.commits, report.confirmed
    );
    println!(
        "  workload: {} transactions ({} orders placed, {} cancelled, {} updates, {} deletes)",
        stats.transactions,
        stats.orders_placed,
        stats.orders_cancelled,
        stats.updates,
        stats.deletes
    );

    // Compare PostgreSQL with silver and with the state replayed from bronze, per table.
    let ctx = lakehouse::query::session(cat.clone()).await?;
    println!(
        "\n  {:<14} {:>10} {:>10} {:>12} {:>12}",
        "table", "postgres", "silver", "bronze live", "bronze rows"
    );
    let mut all_equal = true;
    for table in ecommerce::TABLES {
        let pg_count: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        let key = key_columns(&client, table).await?;
        let replay = lakehouse::query::replay_sql(&format!("bronze.{table}"), &key, &key);
        let live = scalar_i64(&ctx, &format!("SELECT count(*) FROM ({replay}) r")).await?;
        let rows = scalar_i64(&ctx, &format!("SELECT count(*) FROM bronze.{table}")).await?;
        let silver = scalar_i64(&ctx, &format!("SELECT count(*) FROM silver.{table}")).await?;
        let equal = live == pg_count && silver == pg_count;
        let mark = if equal { "" } else { "  MISMATCH" };
        all_equal &= equal;
        println!("  {table:<14} {pg_count:>10} {silver:>10} {live:>12} {rows:>12}{mark}");
    }

    let analyst = "SELECT status, count(*) AS orders, sum(total) AS revenue FROM silver.orders GROUP BY status ORDER BY status";
    println!(
        "\n  Sample analyst query on silver with DataFusion (PostgreSQL's answer must be the same):"
    );
    let batches = lakehouse::query::run(&ctx, analyst).await?;
    let shown = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    for line in shown.lines() {
        println!("  {line}");
    }
    let pg_answer = client
        .query(
            "SELECT status::text, count(*), sum(total)::text FROM orders GROUP BY status ORDER BY 1",
            &[],
        )
        .await?;
    let lake_answer = status_rows(&batches)?;
    let pg_answer: Vec<(String, i64, String)> = pg_answer
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get::<_, Option<String>>(2).unwrap_or_default(),
            )
        })
        .collect();
    if lake_answer != pg_answer {
        all_equal = false;
        println!("  MISMATCH: PostgreSQL says {pg_answer:?}");
    }
    drop(client);
    drop(pg);
    println!(
        "\n  Finished in {:.1} s. Query the tables yourself:\n    bitvelocity sql \"SELECT _op, count(*) FROM bronze.orders GROUP BY _op\" --warehouse {w}\n    bitvelocity sql --consistent \"SELECT o.status, count(*) FROM silver.orders o JOIN silver.order_items i ON i.order_id = o.id GROUP BY 1\" --warehouse {w}",
        started.elapsed().as_secs_f64(),
        w = warehouse.display()
    );
    if !all_equal {
        bail!("bronze or silver does not match PostgreSQL");
    }
    Ok(())
}

async fn key_columns(client: &tokio_postgres::Client, table: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn scalar_i64(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<i64> {
    let batches = lakehouse::query::run(ctx, sql).await?;
    let b = batches.first().context("no result")?;
    Ok(b.column(0).as_primitive::<Int64Type>().value(0))
}

/// (status, orders, revenue as text) rows of the analyst query.
fn status_rows(batches: &[arrow::record_batch::RecordBatch]) -> Result<Vec<(String, i64, String)>> {
    let mut out = Vec::new();
    for b in batches {
        let status = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
        let revenue = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Utf8)?;
        let (status, revenue) = (status.as_string::<i32>(), revenue.as_string::<i32>());
        let orders = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((
                status.value(i).to_string(),
                orders.value(i),
                revenue.value(i).to_string(),
            ));
        }
    }
    Ok(out)
}

/// Marks a folder the demo created, so a later run may empty it (and nothing else).
const DEMO_MARKER: &str = ".bitvelocity-demo";

/// Empties a warehouse an earlier demo created; refuses any other non-empty folder (a
/// warehouse the user made with `ingest` included), then creates and marks the folder.
fn prepare_warehouse(dir: &Path) -> Result<()> {
    if dir.exists() {
        let made_by_demo = dir.join(DEMO_MARKER).exists();
        let is_empty = std::fs::read_dir(dir)?.next().is_none();
        if !made_by_demo && !is_empty {
            bail!(
                "{} exists and was not created by the demo; choose another --warehouse (the demo empties its own folder first)",
                dir.display()
            );
        }
        if made_by_demo {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(DEMO_MARKER),
        "created by `bitvelocity demo`, which empties this folder when run again\n",
    )?;
    Ok(())
}
