//! BitVelocity command line: wires the crates together, installs logging, handles signals.

mod bench;
mod bench_cli;
mod bench_copy;
mod bench_proc;
mod bench_serve;
mod bench_silver;
mod demo;
mod inspect;
mod resync;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "bitvelocity",
    version,
    about = "PostgreSQL change capture into an Apache Iceberg lakehouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the tables live and which catalog names them.
#[derive(clap::Args, Clone, Debug)]
struct WarehouseArgs {
    /// Warehouse: a local folder (default catalog <folder>/catalog.db) or s3://bucket/prefix
    /// (S3 settings from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
    #[arg(long)]
    warehouse: String,
    /// Catalog database: sqlite:<path> or postgres://user:pw@host:port/db (needed for s3://).
    #[arg(long, env = "BITVELOCITY_CATALOG")]
    catalog: Option<String>,
}

impl WarehouseArgs {
    /// Opens the warehouse named on the command line.
    fn open(&self) -> Result<catalog::Warehouse> {
        Ok(catalog::Warehouse::open(
            &self.warehouse,
            self.catalog.as_deref(),
        )?)
    }

    /// Opens an existing warehouse for reading or maintenance: a local folder without its
    /// embedded catalog is an error, not a new empty warehouse.
    fn open_existing(&self) -> Result<catalog::Warehouse> {
        if self.catalog.is_none()
            && let Ok(catalog::Location::Local(p)) = catalog::Location::parse(&self.warehouse)
            && !p.join("catalog.db").exists()
        {
            anyhow::bail!("no warehouse at {} (catalog.db missing)", p.display());
        }
        self.open()
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a user with a fresh key to the configuration and print the key (once).
    New {
        /// The server's configuration file (created if missing).
        #[arg(long)]
        config: PathBuf,
        /// The new user's name.
        #[arg(long)]
        user: String,
        /// Its role (defined under [roles] in the file).
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Capture a publication's tables into bronze Iceberg tables, exactly once.
    Ingest {
        /// Source database URL, e.g. postgres://user:pw@host:5432/db
        #[arg(long)]
        pg: String,
        /// Publication whose tables are captured.
        #[arg(long)]
        publication: String,
        #[command(flatten)]
        warehouse: WarehouseArgs,
        /// Replication slot name (default: bitvelocity_<publication>).
        #[arg(long)]
        slot: Option<String>,
        /// Stop once everything committed before the start is written.
        #[arg(long)]
        exit_when_caught_up: bool,
        /// Commit after this many pending change rows.
        #[arg(long, default_value_t = 200_000)]
        batch_rows: usize,
        /// Commit at least this often (milliseconds) while rows are pending.
        #[arg(long, default_value_t = 1000)]
        batch_interval_ms: u64,
        /// Serve /health and Prometheus /metrics on this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// Hand rows to the Iceberg writers in Arrow batches of this many rows.
        #[arg(long, default_value_t = 32 * 1024)]
        flush_rows: usize,
        /// Memory the ingester's buffers may hold (e.g. 1GiB, 512MiB): the initial copy
        /// commits in pieces and silver spills large transactions to keep within it.
        #[arg(long, default_value = "1GiB")]
        memory_limit: lakehouse::MemoryBudget,
        /// Checkpoint each silver key index at most this often (seconds), so a restart after
        /// a crash replays only the commits since instead of rebuilding it.
        #[arg(long, default_value_t = 300)]
        index_checkpoint_secs: u64,
        /// Bytes of rows per committed piece of the initial copy (default: from --memory-limit).
        #[arg(long, hide = true)]
        copy_piece_bytes: Option<usize>,
        /// Bytes of pending rows silver keeps in memory per table before spilling (default:
        /// from --memory-limit).
        #[arg(long, hide = true)]
        silver_spill_bytes: Option<usize>,
        /// Maintain a table (compaction, expiry, orphans) after this many commits that changed it; 0 = never.
        #[arg(long, default_value_t = 50)]
        maintain_every: u32,
        #[command(flatten)]
        maintenance: MaintainOpts,
    },
    /// Copy one source table afresh into bronze and silver while the others keep streaming
    /// (done by the warehouse's running ingester, or by the next one to start).
    Resync {
        #[command(flatten)]
        warehouse: WarehouseArgs,
        /// The table: `orders`, `bronze.orders` or `silver.orders`.
        table: String,
        /// Wait until an ingester has copied it.
        #[arg(long)]
        wait: bool,
    },
    /// Compact, expire snapshots and remove orphan files of bronze and silver tables.
    Maintain {
        #[command(flatten)]
        warehouse: WarehouseArgs,
        /// Only this table (`silver.orders`, or `orders` for both layers).
        #[arg(long)]
        table: Option<String>,
        #[command(flatten)]
        maintenance: MaintainOpts,
    },
    /// Run SQL with DataFusion over every table of a warehouse and print the result.
    ///
    /// Tables are `bronze.<t>` and `silver.<t>`; `as_of('silver.<t>', <snapshot id> | '<timestamp>')`
    /// reads a table as it was (time travel).
    Sql {
        /// The query.
        query: String,
        #[command(flatten)]
        warehouse: WarehouseArgs,
        /// Read every silver table at one common source position (no half transactions across tables).
        #[arg(long)]
        consistent: bool,
    },
    /// List every bronze and silver table: source, rows, files, source position, last
    /// commit, and whether its capture stopped.
    Tables {
        #[command(flatten)]
        warehouse: WarehouseArgs,
    },
    /// List the snapshots of one table (`silver.t`, `bronze.t`, or `t` for silver): id,
    /// time, operation, source position and row counts; `*` marks the current one.
    Snapshots {
        /// The table.
        table: String,
        #[command(flatten)]
        warehouse: WarehouseArgs,
    },
    /// Operate on the source's replication slot.
    Slot {
        #[command(subcommand)]
        what: SlotCommand,
    },
    /// Measure against reference tools, side by side in one run.
    Bench {
        #[command(subcommand)]
        what: bench_cli::BenchCommand,
    },
    /// Serve SQL to analysts and tools over the front doors (HTTP, Arrow Flight SQL),
    /// authenticated and authorized by --config, with per-query limits.
    Serve {
        #[command(flatten)]
        warehouse: WarehouseArgs,
        /// The server's configuration: roles, users (keys as SHA-256), limits.
        #[arg(long)]
        config: PathBuf,
        /// Address of the HTTP door (SQL over HTTP, /health, /metrics), or `off`.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: serve::Door,
        /// Address of the Arrow Flight SQL door, or `off`.
        #[arg(long, default_value = "127.0.0.1:50051")]
        flight: serve::Door,
        /// Address of the PostgreSQL wire door (database `bitvelocity`), or `off`.
        #[arg(long, default_value = "127.0.0.1:5433")]
        pgwire: serve::Door,
    },
    /// Manage the server's API keys.
    Keys {
        #[command(subcommand)]
        what: KeysCommand,
    },
    /// Run the end-to-end demo: own PostgreSQL, e-commerce workload, ingest, compare.
    Demo {
        /// Warehouse directory for the demo's tables (emptied first).
        #[arg(long, default_value = "bitvelocity-demo")]
        warehouse: PathBuf,
        /// Business operations the workload generator runs.
        #[arg(long, default_value_t = 3_000)]
        operations: u32,
        /// Then serve the warehouse on every door (HTTP :8080, Flight SQL :50051,
        /// PostgreSQL wire :5433 on loopback) until Ctrl-C.
        #[arg(long)]
        serve: bool,
    },
}

/// Thresholds and ages of table maintenance.
#[derive(clap::Args, Clone, Debug)]
struct MaintainOpts {
    /// Expire snapshots older than this many seconds (the newest --retain-last always stay).
    #[arg(long, default_value_t = 3600)]
    expire_older_than_secs: u64,
    /// Snapshots of the current lineage that are never expired.
    #[arg(long, default_value_t = 20)]
    retain_last: usize,
    /// Remove unreferenced files older than this many seconds.
    #[arg(long, default_value_t = 3600)]
    orphan_older_than_secs: u64,
    /// Compact small files of a partition once it has this many.
    #[arg(long, default_value_t = 8)]
    min_small_files: usize,
    /// Rewrite a data file once at least this fraction of its rows is deleted.
    #[arg(long, default_value_t = 0.2)]
    delete_ratio: f64,
    /// Data a compaction run reads at most, in MiB (the most deleted files first).
    #[arg(long, default_value_t = 2048)]
    max_rewrite_mib: u64,
    /// Merge the delete files left after a compaction once a table has this many.
    #[arg(long, default_value_t = 32)]
    max_delete_files: usize,
}

impl MaintainOpts {
    fn options(&self) -> lakehouse::maintenance::MaintenanceOptions {
        lakehouse::maintenance::MaintenanceOptions {
            expire_older_than: Duration::from_secs(self.expire_older_than_secs),
            retain_last: self.retain_last,
            orphan_older_than: Duration::from_secs(self.orphan_older_than_secs),
            min_small_files: self.min_small_files.max(2),
            delete_ratio: self.delete_ratio.clamp(0.0, 1.0),
            max_rewrite_bytes: self.max_rewrite_mib.max(1) * 1024 * 1024,
            max_delete_files: self.max_delete_files.max(2),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum SlotCommand {
    /// Drop the slot, so PostgreSQL stops keeping WAL for it (refused while an ingester
    /// streams from it). Its tables cannot resume afterwards: re-copy them into a new warehouse.
    Drop {
        /// Source database URL.
        #[arg(long)]
        pg: String,
        /// The slot (default: bitvelocity_<publication>).
        #[arg(long, required_unless_present = "publication")]
        slot: Option<String>,
        /// Publication whose default slot is dropped.
        #[arg(long)]
        publication: Option<String>,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// A channel that turns true on SIGINT or SIGTERM.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        let _ = tx.send(true);
    });
    rx
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ingest {
            pg,
            publication,
            warehouse,
            slot,
            exit_when_caught_up,
            batch_rows,
            batch_interval_ms,
            http,
            flush_rows,
            mut memory_limit,
            index_checkpoint_secs,
            copy_piece_bytes,
            silver_spill_bytes,
            maintain_every,
            maintenance,
        } => {
            if let Some(b) = copy_piece_bytes {
                memory_limit = memory_limit.with_copy_piece_bytes(b);
            }
            if let Some(b) = silver_spill_bytes {
                memory_limit = memory_limit.with_silver_pending_bytes(b);
            }
            init_tracing("info");
            let mut cfg = ingestion::IngestConfig::new(pg, publication);
            if let Some(s) = slot {
                cfg.slot = s;
            }
            cfg.exit_when_caught_up = exit_when_caught_up;
            cfg.batch_rows = batch_rows;
            cfg.batch_interval = Duration::from_millis(batch_interval_ms);
            cfg.flush_rows = flush_rows.max(1);
            cfg.copy_piece_bytes = memory_limit.copy_piece_bytes();
            let auto = (maintain_every > 0).then(|| lakehouse::medallion::AutoMaintenance {
                every_commits: maintain_every,
                options: maintenance.options(),
            });
            ingest(
                cfg,
                warehouse,
                http,
                auto,
                memory_limit,
                Duration::from_secs(index_checkpoint_secs),
            )
            .await
        }
        Command::Resync {
            warehouse,
            table,
            wait,
        } => {
            init_tracing("warn");
            resync::resync(&warehouse, &table, wait).await
        }
        Command::Maintain {
            warehouse,
            table,
            maintenance,
        } => {
            init_tracing("warn");
            maintain(warehouse, table, maintenance.options()).await
        }
        Command::Slot {
            what:
                SlotCommand::Drop {
                    pg,
                    slot,
                    publication,
                },
        } => {
            init_tracing("warn");
            drop_slot(&pg, slot, publication).await
        }
        Command::Tables { warehouse } => {
            init_tracing("warn");
            inspect::tables(warehouse).await
        }
        Command::Snapshots { table, warehouse } => {
            init_tracing("warn");
            inspect::snapshots(&table, warehouse).await
        }
        Command::Sql {
            query,
            warehouse,
            consistent,
        } => {
            init_tracing("warn");
            sql(&query, warehouse, consistent).await
        }
        Command::Bench { what } => {
            init_tracing("warn");
            bench_cli::run(what).await
        }
        Command::Serve {
            warehouse,
            config,
            http,
            flight,
            pgwire,
        } => {
            init_tracing("info");
            let doors = serving::server::DoorAddrs {
                http: http.0,
                flight: flight.0,
                pgwire: pgwire.0,
            };
            match warehouse.open_existing() {
                Ok(wh) => serve::serve(wh, &config, doors, shutdown_signal()).await,
                Err(e) => Err(e),
            }
        }
        Command::Keys {
            what: KeysCommand::New { config, user, role },
        } => serve::new_key(&config, &user, &role),
        Command::Demo {
            warehouse,
            operations,
            serve,
        } => {
            init_tracing("warn");
            match demo::run(warehouse.clone(), operations).await {
                Ok(()) => {
                    let stop = serve.then(shutdown_signal);
                    serve::after_demo(&warehouse, stop).await
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        // One line, most specific cause last.
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

/// How long an ingester's warehouse lease lasts without renewal (renewed every third of it).
const LEASE_TTL: Duration = Duration::from_secs(30);

/// The youngest unreferenced file `maintain` removes while an ingester holds the warehouse:
/// older than any batch in flight.
const MIN_ORPHAN_AGE_WHILE_INGESTING: Duration = Duration::from_secs(15 * 60);

/// This machine's name, for lease messages.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".to_string())
}

async fn ingest(
    cfg: ingestion::IngestConfig,
    warehouse: WarehouseArgs,
    http: Option<std::net::SocketAddr>,
    auto: Option<lakehouse::medallion::AutoMaintenance>,
    memory: lakehouse::MemoryBudget,
    index_checkpoint_every: Duration,
) -> Result<()> {
    let wh = warehouse.open()?;
    let catalog = wh.open_catalog().await.context("opening the catalog")?;
    let commits = wh.commit_path().await.context("opening the catalog")?;
    // One ingester per warehouse, whatever slot it names (a restart on the same slot takes
    // its lease back at once).
    let lease = wh
        .catalog_url()
        .leases()
        .await?
        .hold(
            catalog::lease::INGESTER_LEASE,
            &format!("slot:{}", cfg.slot),
            &format!("{} pid {}", hostname(), std::process::id()),
            LEASE_TTL,
        )
        .await?;
    let mut sink = lakehouse::MedallionSink::new(catalog, commits)
        .await?
        .with_leases(wh.catalog_url().leases().await?)
        .with_requests(wh.catalog_url().requests().await?)
        .with_memory(memory)
        .with_index_checkpoints_every(index_checkpoint_every);
    if let Some(auto) = auto {
        sink = sink.with_auto_maintenance(auto);
    }
    let mut ingester = ingestion::Ingester::new(cfg, sink);
    let metrics = ingester.metrics();
    if let Some(addr) = http {
        serving::serve_ops(addr, metrics.clone()).await?;
    }
    let reporter = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        loop {
            every.tick().await;
            use std::sync::atomic::Ordering::Relaxed;
            tracing::info!(
                changes = metrics.changes.load(Relaxed),
                snapshot_rows = metrics.snapshot_rows.load(Relaxed),
                transactions = metrics.transactions.load(Relaxed),
                commits = metrics.commits.load(Relaxed),
                confirmed = %ingestion::Lsn(metrics.confirmed_lsn.load(Relaxed)),
                "progress"
            );
        }
    });
    // A lost lease means another ingester may own the warehouse now: stop at once, without
    // finishing the batch (nothing is committed after the loss is seen; the exactly-once
    // protocol makes an abrupt exit as safe as a SIGKILL, ADR 0002).
    let mut lost = lease.lost();
    tokio::spawn(async move {
        if lost.wait_for(|l| *l).await.is_ok() {
            eprintln!("error: the warehouse's ingester lease was lost; stopping at once");
            std::process::exit(2);
        }
    });
    let report = ingester.run(shutdown_signal()).await;
    reporter.abort();
    lease.release().await?;
    let report = report?;
    tracing::info!(?report, "ingest finished");
    println!(
        "ingested {} tables: {} rows copied, {} changes from {} transactions in {} commits ({} already present, skipped); confirmed {}",
        report.tables,
        report.snapshot_rows,
        report.changes,
        report.transactions,
        report.commits,
        report.skipped,
        report.confirmed
    );
    Ok(())
}

async fn maintain(
    warehouse: WarehouseArgs,
    table: Option<String>,
    opts: lakehouse::maintenance::MaintenanceOptions,
) -> Result<()> {
    let wh = warehouse.open_existing()?;
    let catalog = wh.open_catalog().await?;
    let commits = wh.commit_path().await?;
    let leases = wh.catalog_url().leases().await?;
    let mut opts = opts;
    if let Some(ingester) = leases.holder(catalog::lease::INGESTER_LEASE).await?
        && ingester.is_live()
        && opts.orphan_older_than < MIN_ORPHAN_AGE_WHILE_INGESTING
    {
        // Files of a batch the ingester has not committed yet look like orphans.
        eprintln!(
            "an ingester ({}) holds this warehouse: removing only orphans older than {} s",
            ingester.holder,
            MIN_ORPHAN_AGE_WHILE_INGESTING.as_secs()
        );
        opts.orphan_older_than = MIN_ORPHAN_AGE_WHILE_INGESTING;
    }
    let lease = leases
        .hold(
            catalog::lease::MAINTENANCE_LEASE,
            &format!("maintain:{} pid {}", hostname(), std::process::id()),
            &hostname(),
            LEASE_TTL,
        )
        .await?;
    let reports = lakehouse::maintenance::maintain_warehouse(
        catalog.as_ref(),
        &commits,
        table.as_deref(),
        &opts,
    )
    .await;
    lease.release().await?;
    let reports = reports?;
    println!(
        "{:<24} {:>9} {:>9} {:>7} {:>10} {:>10} {:>8} {:>8}",
        "table", "rewritten", "deletes", "written", "rows kept", "purged", "expired", "orphans"
    );
    for (ident, r) in reports {
        println!(
            "{:<24} {:>9} {:>9} {:>7} {:>10} {:>10} {:>8} {:>8}{}",
            ident.to_string(),
            r.data_files_rewritten,
            r.delete_files_removed,
            r.files_written,
            r.rows_kept,
            r.rows_purged,
            r.snapshots_expired,
            r.orphans_removed,
            if r.compaction_superseded {
                "  (compaction superseded by a concurrent one)"
            } else if r.compaction_abandoned {
                "  (compaction abandoned: it lost every commit race; run again)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn sql(query: &str, warehouse: WarehouseArgs, consistent: bool) -> Result<()> {
    let wh = warehouse.open_existing()?;
    let catalog = wh.open_catalog().await?;
    let ctx = if consistent {
        let (ctx, lsn) = lakehouse::query::consistent_session(catalog).await?;
        eprintln!("silver read at source position {}", ingestion::Lsn(lsn));
        ctx
    } else {
        lakehouse::query::session(catalog).await?
    };
    let batches = lakehouse::query::run(&ctx, query).await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    Ok(())
}

/// `bitvelocity slot drop`: drops the slot and says what it held.
async fn drop_slot(pg: &str, slot: Option<String>, publication: Option<String>) -> Result<()> {
    let slot = match (slot, publication) {
        (Some(s), _) => s,
        (None, Some(p)) => ingestion::IngestConfig::new(pg, p).slot,
        (None, None) => anyhow::bail!("name the slot (--slot) or its publication"),
    };
    let dropped = ingestion::slot::drop_slot(pg, &slot).await?;
    let confirmed = dropped
        .confirmed
        .map(|l| l.to_string())
        .unwrap_or_else(|| "nothing".into());
    let wal = dropped
        .retained_wal_bytes
        .map(|b| format!("{b} bytes of"))
        .unwrap_or_else(|| "no".into());
    println!("dropped slot {slot} (confirmed up to {confirmed}; it kept {wal} WAL)");
    Ok(())
}
