//! `bitvelocity bench ...`: the benchmarks, each next to its reference tool.

use anyhow::Result;
use clap::Subcommand;

use crate::{bench, bench_copy, bench_serve, bench_silver};

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Initial copy of one large table by `bitvelocity ingest`, next to PostgreSQL's binary COPY.
    Copy {
        /// Rows in the table (8 columns).
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
        /// The ingester's --memory-limit.
        #[arg(long, default_value = "1GiB")]
        memory_limit: lakehouse::MemoryBudget,
        /// Rounds per storage (contenders alternate who goes first; medians printed).
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Also copy into SeaweedFS S3 with a PostgreSQL catalog (started by the bench).
        #[arg(long)]
        s3: bool,
    },
    /// Drain one backlog with pg_recvlogical, our decoder (discarding), and the real ingest process into bronze and silver; then freshness.
    Ingest {
        /// Inserts in the backlog (updates of half of them follow).
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rows per source transaction while loading.
        #[arg(long, default_value_t = 10_000)]
        txn_rows: u64,
        /// Rounds (contenders alternate their order; medians printed).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Also run the ingest process on SeaweedFS S3 with a PostgreSQL catalog.
        #[arg(long)]
        s3: bool,
        /// The ingest process's --memory-limit.
        #[arg(long, default_value = "1GiB")]
        memory_limit: lakehouse::MemoryBudget,
        /// Steady load for the freshness measurement, changes per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Duration of the freshness measurement, seconds.
        #[arg(long, default_value_t = 10)]
        freshness_secs: u64,
    },
    /// Silver under a steady stream of updates and deletes; scans next to DuckDB on a clean copy.
    Silver {
        /// Rows in the table.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Changes per second offered by the writer.
        #[arg(long, default_value_t = 25_000)]
        rate: u64,
        /// Duration of the stream, seconds.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Rows changed per source transaction.
        #[arg(long, default_value_t = 500)]
        txn_changes: u64,
    },
    /// What each door of `bitvelocity serve` adds: a one-row query by key from 1 and 16
    /// clients, and a large result streamed, next to the engine in-process and PostgreSQL.
    Serve {
        /// Rows of the table the one-row query reads.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rows of the large result (6 columns).
        #[arg(long, default_value_t = 5_000_000)]
        stream_rows: u64,
        /// Seconds each latency run lasts.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Concurrent clients of the latency runs.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
        /// Rounds of the large result (contenders alternate; medians printed).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
}

/// Runs the benchmark `what` names.
pub async fn run(what: BenchCommand) -> Result<()> {
    match what {
        BenchCommand::Ingest {
            rows,
            txn_rows,
            rounds,
            s3,
            memory_limit,
            rate,
            freshness_secs,
        } => {
            bench::ingest(bench::BenchConfig {
                rows,
                txn_rows,
                rounds,
                s3,
                memory_limit,
                freshness_rate: rate,
                freshness_secs,
            })
            .await
        }
        BenchCommand::Copy {
            rows,
            memory_limit,
            rounds,
            s3,
        } => {
            bench_copy::copy(bench_copy::CopyBenchConfig {
                rows,
                memory_limit,
                rounds,
                s3,
            })
            .await
        }
        BenchCommand::Serve {
            rows,
            stream_rows,
            secs,
            clients,
            rounds,
        } => {
            bench_serve::serve(bench_serve::ServeBenchConfig {
                rounds: rounds.max(1),
                rows: rows.max(1),
                stream_rows: stream_rows.max(1),
                secs: secs.max(1),
                clients: clients.into_iter().map(|c| c.max(1)).collect(),
            })
            .await
        }
        BenchCommand::Silver {
            rows,
            rate,
            secs,
            txn_changes,
        } => {
            bench_silver::silver(bench_silver::SilverBenchConfig {
                rows,
                rate,
                secs,
                txn_changes: txn_changes.max(10),
            })
            .await
        }
    }
}
