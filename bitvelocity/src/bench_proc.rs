//! What the benchmarks share: running the real `bitvelocity ingest` process on a local or
//! S3 warehouse, timing it and sampling its peak memory, and reading the key index's cost.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// A SeaweedFS S3 server with bucket `bench`, when asked for (stopped when dropped).
pub async fn start_s3(wanted: bool) -> Result<Option<domains::SeaweedFs>> {
    if !wanted {
        return Ok(None);
    }
    let s3 = tokio::task::spawn_blocking(domains::SeaweedFs::start).await??;
    s3.create_bucket("bench")?;
    Ok(Some(s3))
}

/// The storages to measure: local disk, then S3 when started.
pub fn targets(
    s3: Option<&domains::SeaweedFs>,
) -> Vec<(&'static str, Option<&domains::SeaweedFs>)> {
    let mut targets = vec![("local disk", None)];
    if let Some(s3) = s3 {
        targets.push(("SeaweedFS S3", Some(s3)));
    }
    targets
}

/// Where a contender writes.
pub enum WarehouseSpec {
    /// A local folder with its SQLite catalog.
    Local(PathBuf),
    /// A prefix of a SeaweedFS bucket with a PostgreSQL catalog database.
    S3 {
        url: String,
        catalog: String,
        /// Its `s3.*` storage properties, for opening it in this process.
        props: std::collections::HashMap<String, String>,
    },
}

impl WarehouseSpec {
    /// A fresh warehouse named `name`: under `dir`, or on `s3` (bucket `bench`) with a new
    /// catalog database in `pg`.
    pub fn fresh(
        name: &str,
        dir: &Path,
        s3: Option<&domains::SeaweedFs>,
        pg: &domains::PgCluster,
    ) -> Result<Self> {
        Ok(match s3 {
            None => WarehouseSpec::Local(dir.join(name)),
            Some(s3) => {
                pg.create_database(&format!("catalog_{name}"))?;
                WarehouseSpec::S3 {
                    url: format!("s3://bench/{name}"),
                    catalog: pg.url(&format!("catalog_{name}")),
                    props: s3.iceberg_props(),
                }
            }
        })
    }

    /// The `--warehouse` (and `--catalog`) arguments naming it.
    pub fn args(&self) -> Vec<String> {
        match self {
            WarehouseSpec::Local(p) => vec!["--warehouse".into(), p.display().to_string()],
            WarehouseSpec::S3 { url, catalog, .. } => vec![
                "--warehouse".into(),
                url.clone(),
                "--catalog".into(),
                catalog.clone(),
            ],
        }
    }

    /// Opens it in this process.
    pub fn open(&self) -> Result<catalog::Warehouse> {
        Ok(match self {
            WarehouseSpec::Local(p) => catalog::Warehouse::new(p)?,
            WarehouseSpec::S3 {
                url,
                catalog,
                props,
            } => catalog::Warehouse::open(url, Some(catalog))?.with_storage_props(props.clone()),
        })
    }
}

/// One run of the ingest process.
pub struct ProcessRun {
    /// Wall time from spawn to exit.
    pub secs: f64,
    /// Peak resident memory (`VmHWM`, sampled every 50 ms), bytes.
    pub peak_rss: u64,
    /// CPU seconds (user + system) the ingest process used, as last sampled before it exited.
    pub cpu_secs: f64,
    /// CPU seconds the SeaweedFS server used during the run (it shares the machine's cores).
    pub server_cpu_secs: Option<f64>,
}

/// Runs `bitvelocity ingest --exit-when-caught-up` on `publication` through `slot` into `wh`
/// (automatic maintenance off); times it and samples its peak resident memory.
pub async fn run_ingest(
    label: &str,
    url: &str,
    publication: &str,
    slot: &str,
    wh: &WarehouseSpec,
    s3: Option<&domains::SeaweedFs>,
    memory: lakehouse::MemoryBudget,
) -> Result<ProcessRun> {
    let exe = std::env::current_exe().context("finding the bitvelocity executable")?;
    let bar = spinner(label)?;
    let log = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "ingest",
        "--pg",
        url,
        "--publication",
        publication,
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
    let server_pid = s3.and_then(|s| s.pid());
    let server_before = server_pid.and_then(cpu_secs_of);
    let t = Instant::now();
    let mut child = cmd.spawn().context("starting bitvelocity ingest")?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let mut cpu = 0.0f64;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            peak = peak.max(vm_hwm(&text).unwrap_or(0));
        }
        cpu = cpu_secs_of(child.id()).unwrap_or(cpu);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let server_cpu_secs = match (server_before, server_pid.and_then(cpu_secs_of)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let secs = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if !status.success() {
        let err = std::fs::read_to_string(log.path()).unwrap_or_default();
        bail!("bitvelocity ingest failed ({status}): {err}");
    }
    Ok(ProcessRun {
        secs,
        peak_rss: peak,
        cpu_secs: cpu,
        server_cpu_secs,
    })
}

/// User + system CPU seconds of process `pid`, from `/proc/<pid>/stat` (fields 14 and 15,
/// in clock ticks of 1/100 s, the Linux `USER_HZ` on every mainstream architecture).
fn cpu_secs_of(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_secs_of_stat(&text)
}

/// The user + system seconds of one `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing one.
fn cpu_secs_of_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name the state is field 3 (index 0), so utime (field 14) is at index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// `VmHWM` (peak resident set) of a `/proc/<pid>/status` text, in bytes.
pub fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Silver table `table`'s key index as the ingester holds it: bytes and keys.
pub async fn key_index_cost(wh: &WarehouseSpec, table: &str) -> Result<(usize, usize)> {
    let wh = wh.open()?;
    let cat = wh.open_catalog().await?;
    let ident = catalog::TableIdent::new(
        catalog::NamespaceIdent::new("silver".into()),
        table.to_string(),
    );
    let table = cat.load_table(&ident).await?;
    let index = lakehouse::silver::index_of(&table).await?;
    Ok((index.heap_bytes(), index.len()))
}

/// Live rows of `layer.table` in `wh`, from its current snapshot.
pub async fn live_rows(wh: &WarehouseSpec, layer: &str, table: &str) -> Result<u64> {
    let wh = wh.open()?;
    let cat = wh.open_catalog().await?;
    lakehouse::inspect::tables(cat.as_ref())
        .await?
        .into_iter()
        .find(|t| t.layer == layer && t.name == table)
        .and_then(|t| t.rows)
        .with_context(|| format!("{layer}.{table} has no row count"))
}

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A spinner showing `msg` and the time spent.
pub fn spinner(msg: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    Ok(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_come_from_utime_and_stime_after_a_name_with_spaces() {
        // A real line's shape: utime 250 and stime 130 ticks, a name with ") (" in it.
        let line = "4242 (weed ) (x) S 1 4242 4242 0 -1 4194560 9123 0 3 0 250 130 0 0 20 0 \
                    12 0 77 1234567 890 18446744073709551615";
        assert_eq!(cpu_secs_of_stat(line), Some(3.8));
        assert_eq!(cpu_secs_of_stat("4242 (weed) S 1"), None);
        // This process has used some CPU by now, and its own stat line parses.
        assert!(cpu_secs_of(std::process::id()).is_some());
    }
}
