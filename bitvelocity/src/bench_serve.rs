//! `bitvelocity bench serve`: what each front door adds on top of the engine. A real
//! `bitvelocity serve` process is measured with the clients users would write (reqwest for
//! HTTP, arrow-flight's Flight SQL client, tokio-postgres), next to the same engine called
//! in-process (the floor) and next to PostgreSQL answering over its own wire.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::sql::client::{FlightSqlServiceClient, PreparedStatement};
use futures::{StreamExt, TryStreamExt};
use ingestion::{IngestConfig, Ingester};
use serving::auth::Principal;
use serving::engine::QueryEngine;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Table sizes and how long each latency run lasts.
pub struct ServeBenchConfig {
    /// Rows of the table the small query reads one of.
    pub rows: u64,
    /// Rows of the large result.
    pub stream_rows: u64,
    /// Seconds each latency run lasts.
    pub secs: u64,
    /// Client counts for the latency runs.
    pub clients: Vec<usize>,
    /// Rounds of the large result.
    pub rounds: u32,
}

/// The small query: one row by primary key.
const LOOKUP: &str = "SELECT id, a, b, c, d, e FROM silver.bench_lookup WHERE id = $1";
/// The same on PostgreSQL's own table.
const LOOKUP_PG: &str = "SELECT id, a, b, c, d, e FROM bench_lookup WHERE id = $1";
/// The user the bench connects as.
const USER: &str = "bench";

pub async fn serve(cfg: ServeBenchConfig) -> Result<()> {
    let pg = tokio::task::spawn_blocking(domains::PgCluster::start).await??;
    pg.create_database("bench")?;
    let url = pg.url("bench");
    let source = domains::connect(&url).await?;
    let spinner = crate::bench_proc::spinner("loading PostgreSQL")?;
    for (table, rows) in [
        ("bench_lookup", cfg.rows),
        ("bench_stream", cfg.stream_rows),
    ] {
        source
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, a bigint NOT NULL, b double precision NOT NULL,
                     c text NOT NULL, d timestamptz NOT NULL, e boolean NOT NULL);
                 INSERT INTO {table} SELECT g, g * 7, g / 3.0, md5(g::text),
                     timestamptz '2026-01-01' + g * interval '1 second', g % 3 = 0
                 FROM generate_series(1, {rows}) g;"
            ))
            .await?;
        source
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    source
        .batch_execute("CREATE PUBLICATION bench FOR TABLE bench_lookup, bench_stream")
        .await?;
    spinner.finish_and_clear();

    let dir = tempfile::tempdir()?;
    let wh_dir = dir.path().join("wh");
    let wh = catalog::Warehouse::new(&wh_dir)?;
    let cat = wh.open_catalog().await?;
    let t = Instant::now();
    let spinner = crate::bench_proc::spinner("initial copy into bronze and silver")?;
    let mut icfg = IngestConfig::new(url.clone(), "bench");
    icfg.exit_when_caught_up = true;
    let sink = lakehouse::MedallionSink::new(cat.clone(), wh.commit_path().await?).await?;
    Ingester::new(icfg, sink)
        .run(watch::channel(false).1)
        .await?;
    spinner.finish_and_clear();
    println!(
        "initial copy: {} + {} rows into bronze and silver in {:.1} s",
        cfg.rows,
        cfg.stream_rows,
        t.elapsed().as_secs_f64()
    );

    // The server, and the same engine in this process, under the same limits.
    let (key, digest) = serving::auth::new_key();
    let clients = cfg.clients.iter().copied().max().unwrap_or(1);
    let config_text = format!(
        "[roles.reader]\nread = [\"*\"]\n\
         [[users]]\nname = \"{USER}\"\nrole = \"reader\"\napi_key_sha256 = \"{digest}\"\npg_scram_sha256 = \"{scram}\"\n\
         [limits]\nquery_timeout_secs = 600\nmemory_limit_mb = 1024\nmax_concurrent_queries = {clients}\nmax_queued_queries = {queued}\n",
        scram = serving::pg::Verifier::new(&key).to_text(),
        queued = clients * 4,
    );
    let config_path = dir.path().join("serve.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = serving::config::ServeConfig::parse(&config_text)?;
    let who = serving::auth::Authenticator::new(&config)?.by_user_and_key(USER, &key)?;
    let engine = Arc::new(QueryEngine::new(
        cat.clone(),
        config.limits.clone(),
        Arc::new(serving::metrics::ServeMetrics::default()),
    ));
    let server = Server::start(&wh_dir, &config_path)?;
    let ctx = Ctx {
        engine,
        who,
        key,
        server_http: server.http.clone(),
        server_flight: server.flight.clone(),
        server_pg: server.pgwire.clone(),
        source: url.clone(),
    };

    println!(
        "\nsmall query: one row by key from a {}-row silver table ({} s per run, after a warm-up)",
        cfg.rows, cfg.secs
    );
    print!("{:<30}", "");
    for c in &cfg.clients {
        print!(
            "{:>30}",
            format!("{c} client{}", if *c == 1 { "" } else { "s" })
        );
    }
    println!();
    print!("{:<30}", "");
    for _ in &cfg.clients {
        print!("{:>10}{:>10}{:>10}", "p50 ms", "p99 ms", "q/s");
    }
    println!();
    let mut table: Vec<(Door, Vec<Latencies>)> = Vec::new();
    for door in Door::ALL {
        print!("{:<30}", door.name());
        let mut runs = Vec::new();
        for &c in &cfg.clients {
            let lat = lookups(&ctx, door, c, cfg.rows, Duration::from_secs(cfg.secs))
                .await
                .with_context(|| format!("{} with {c} clients", door.name()))?;
            print!(
                "{:>10.2}{:>10.2}{:>10.0}",
                lat.pct(0.50),
                lat.pct(0.99),
                lat.per_sec()
            );
            use std::io::Write;
            std::io::stdout().flush()?;
            runs.push(lat);
        }
        println!();
        table.push((door, runs));
    }
    let floor = &table[0].1;
    for (i, c) in cfg.clients.iter().enumerate() {
        let over: Vec<String> = table
            .iter()
            .filter(|(d, _)| d.is_door())
            .map(|(d, runs)| {
                format!(
                    "{} {:+.2} ms",
                    d.short(),
                    runs[i].pct(0.99) - floor[i].pct(0.99)
                )
            })
            .collect();
        println!(
            "door overhead at p99 over in-process, {c} client(s): {} (target ≤ 2 ms)",
            over.join(", ")
        );
    }

    // The large result, at two sizes: the server's peak memory must not follow the size.
    let small = (cfg.stream_rows / 5).max(1);
    println!(
        "\nlarge result: {} rows × 6 columns streamed to one client (and {small} rows, for the server's memory)",
        cfg.stream_rows
    );
    println!(
        "{:<30}{:>12}{:>10}{:>14}   server peak RSS at {small} / {} rows",
        "", "rows/s", "MB/s", "× in-process", cfg.stream_rows
    );
    let arrow_bytes = result_bytes(&ctx, cfg.stream_rows).await?;
    let mut small_runs = Vec::new();
    for door in Door::ALL {
        small_runs.push(stream(&ctx, door, small, &server).await?);
    }
    // Contenders take turns in every round, so drift (page cache, allocator, a noisy
    // neighbour) spreads over all of them; the median round counts.
    let mut large: Vec<Vec<Streamed>> = Door::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..cfg.rounds {
        for (i, door) in Door::ALL.into_iter().enumerate() {
            large[i].push(stream(&ctx, door, cfg.stream_rows, &server).await?);
        }
    }
    let mut floor_secs = None;
    for ((door, small_run), runs) in Door::ALL.into_iter().zip(small_runs).zip(large) {
        let secs = crate::bench_proc::median(runs.iter().map(|r| r.secs).collect());
        let run = runs
            .into_iter()
            .max_by_key(|r| r.peak_rss.map(|(peak, _)| peak))
            .context("no round of the large result")?;
        let floor = *floor_secs.get_or_insert(secs);
        let rss = match (small_run.peak_rss, run.peak_rss) {
            (Some((a, a0)), Some((b, b0))) => format!(
                "{} / {} MiB (+{} / +{} over the start)",
                a >> 20,
                b >> 20,
                a.saturating_sub(a0) >> 20,
                b.saturating_sub(b0) >> 20
            ),
            _ => "-".to_string(),
        };
        println!(
            "{:<30}{:>12.0}{:>10.0}{:>14.2}   {}",
            door.name(),
            cfg.stream_rows as f64 / secs,
            arrow_bytes as f64 / 1e6 / secs,
            floor / secs,
            rss,
        );
    }
    println!(
        "(medians of {} rounds; MB/s counts the result's Arrow size, {:.0} MB, for every contender; target: Flight SQL ≥ 0.8× in-process)",
        cfg.rounds,
        arrow_bytes as f64 / 1e6
    );
    drop(server);
    Ok(())
}

/// What the measured clients need.
struct Ctx {
    engine: Arc<QueryEngine>,
    who: Principal,
    key: String,
    server_http: String,
    server_flight: String,
    server_pg: String,
    source: String,
}

/// A contender.
#[derive(Clone, Copy, PartialEq)]
enum Door {
    InProcess,
    Http,
    Flight,
    PgWire,
    Postgres,
}

impl Door {
    const ALL: [Door; 5] = [
        Door::InProcess,
        Door::Http,
        Door::Flight,
        Door::PgWire,
        Door::Postgres,
    ];

    fn name(self) -> &'static str {
        match self {
            Door::InProcess => "in-process engine (floor)",
            Door::Http => "HTTP door",
            Door::Flight => "Flight SQL door",
            Door::PgWire => "PostgreSQL wire door",
            Door::Postgres => "PostgreSQL itself (its index)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Door::Http => "HTTP",
            Door::Flight => "Flight SQL",
            Door::PgWire => "PG wire",
            _ => self.name(),
        }
    }

    /// One of our doors (not the floor, not PostgreSQL).
    fn is_door(self) -> bool {
        matches!(self, Door::Http | Door::Flight | Door::PgWire)
    }
}

/// One client's connection to a contender.
enum Conn {
    InProcess(Arc<QueryEngine>, Principal),
    Http(reqwest::Client, String, String),
    Flight(Box<(PreparedStatement<Channel>, FlightSqlServiceClient<Channel>)>),
    Pg(tokio_postgres::Client, tokio_postgres::Statement),
}

impl Conn {
    async fn open(ctx: &Ctx, door: Door) -> Result<Conn> {
        Ok(match door {
            Door::InProcess => Conn::InProcess(ctx.engine.clone(), ctx.who.clone()),
            Door::Http => Conn::Http(
                reqwest::Client::new(),
                format!("{}/v1/sql", ctx.server_http),
                ctx.key.clone(),
            ),
            Door::Flight => {
                let mut client = flight_client(ctx).await?;
                let prepared = client.prepare(LOOKUP.to_string(), None).await?;
                Conn::Flight(Box::new((prepared, client)))
            }
            Door::PgWire => {
                let client = pg_door(ctx).await?;
                let statement = client.prepare(LOOKUP).await?;
                Conn::Pg(client, statement)
            }
            Door::Postgres => {
                let client = domains::connect(&ctx.source).await?;
                let statement = client.prepare(LOOKUP_PG).await?;
                Conn::Pg(client, statement)
            }
        })
    }

    /// Reads row `id`; fails unless exactly that row comes back.
    async fn lookup(&mut self, id: i64) -> Result<()> {
        let got: Vec<i64> = match self {
            Conn::InProcess(engine, who) => {
                let stream = engine
                    .execute(
                        who,
                        LOOKUP,
                        vec![datafusion::scalar::ScalarValue::Int64(Some(id))],
                    )
                    .await?;
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                ids(&batches)
            }
            Conn::Http(client, url, key) => {
                let answer: serde_json::Value = client
                    .post(url.as_str())
                    .bearer_auth(key.as_str())
                    .json(&serde_json::json!({"sql": LOOKUP, "params": [id]}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                answer["rows"]
                    .as_array()
                    .context("no rows in the HTTP answer")?
                    .iter()
                    .filter_map(|r| r["id"].as_i64())
                    .collect()
            }
            Conn::Flight(flight) => {
                let (prepared, client) = &mut **flight;
                let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)]));
                let params =
                    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![id]))])?;
                prepared.set_parameters(params)?;
                let info = prepared.execute().await?;
                ids(&flight_batches(client, info).await?)
            }
            Conn::Pg(client, statement) => client
                .query(&*statement, &[&id])
                .await?
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect(),
        };
        if got != [id] {
            bail!("looked up id {id}, got {got:?}");
        }
        Ok(())
    }
}

/// The ids in the first column of `batches`.
fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

/// A Flight SQL client logged in by the basic handshake.
async fn flight_client(ctx: &Ctx) -> Result<FlightSqlServiceClient<Channel>> {
    let channel = Channel::from_shared(ctx.server_flight.clone())?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(USER, &ctx.key).await?;
    Ok(client)
}

/// Every batch of `info`'s endpoints.
async fn flight_batches(
    client: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
        let stream = client.do_get(ticket).await?;
        out.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(out)
}

/// A tokio-postgres client of our PostgreSQL door (SCRAM over plaintext loopback).
async fn pg_door(ctx: &Ctx) -> Result<tokio_postgres::Client> {
    let (host, port) = ctx
        .server_pg
        .rsplit_once(':')
        .context("the PostgreSQL door's address")?;
    let (client, conn) = tokio_postgres::Config::new()
        .host(host)
        .port(port.parse()?)
        .user(USER)
        .password(&ctx.key)
        .dbname("bitvelocity")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Query latencies of one run.
struct Latencies {
    micros: Vec<u64>,
    secs: f64,
}

impl Latencies {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
        self.micros[i] as f64 / 1000.0
    }

    fn per_sec(&self) -> f64 {
        self.micros.len() as f64 / self.secs
    }
}

/// `clients` clients looking up random keys of `1..=rows` through `door` for `time`.
async fn lookups(
    ctx: &Ctx,
    door: Door,
    clients: usize,
    rows: u64,
    time: Duration,
) -> Result<Latencies> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Conn::open(ctx, door).await?);
    }
    // Warm-up: every client once, then the run proper, all starting together.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + time;
    let mut tasks = Vec::new();
    for (n, mut conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (n as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % rows) as i64 + 1
            };
            conn.lookup(next()).await?;
            tokio::time::sleep_until(start.into()).await;
            let mut micros = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                conn.lookup(next()).await?;
                micros.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(micros)
        }));
    }
    let mut micros = Vec::new();
    for t in tasks {
        micros.extend(t.await??);
    }
    if micros.is_empty() {
        bail!("no query finished within the run");
    }
    micros.sort_unstable();
    Ok(Latencies {
        micros,
        secs: time.as_secs_f64(),
    })
}

/// The large result: `SELECT` of `rows` rows of the 6-column table.
fn stream_sql(rows: u64, postgres: bool) -> String {
    let table = if postgres {
        "bench_stream"
    } else {
        "silver.bench_stream"
    };
    format!("SELECT id, a, b, c, d, e FROM {table} WHERE id <= {rows}")
}

/// The Arrow size of the whole large result (the yardstick of every contender's MB/s).
async fn result_bytes(ctx: &Ctx, rows: u64) -> Result<usize> {
    let stream = ctx
        .engine
        .execute(&ctx.who, &stream_sql(rows, false), vec![])
        .await?;
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    Ok(batches
        .iter()
        .flat_map(|b| b.columns())
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum())
}

/// One streamed result: its time, and the server's peak memory meanwhile with its
/// resident memory when the measurement started (memory the allocator kept from earlier
/// runs counts in both, so the growth is what this answer needed).
struct Streamed {
    secs: f64,
    peak_rss: Option<(u64, u64)>,
}

/// Streams `rows` rows of the large result through `door` to one client that decodes them.
async fn stream(ctx: &Ctx, door: Door, rows: u64, server: &Server) -> Result<Streamed> {
    let start_rss = if door.is_door() {
        server.reset_peak()
    } else {
        None
    };
    let sql = stream_sql(rows, door == Door::Postgres);
    // Logins happen before the clock starts: only the answer is timed.
    let mut flight = match door {
        Door::Flight => Some(flight_client(ctx).await?),
        _ => None,
    };
    let pg = match door {
        Door::PgWire => Some(pg_door(ctx).await?),
        Door::Postgres => Some(domains::connect(&ctx.source).await?),
        _ => None,
    };
    let t = Instant::now();
    let got = match door {
        Door::InProcess => {
            let mut stream = ctx.engine.execute(&ctx.who, &sql, vec![]).await?;
            let mut n = 0;
            while let Some(batch) = stream.next().await {
                n += batch?.num_rows() as u64;
            }
            n
        }
        Door::Http => {
            let mut response = reqwest::Client::new()
                .post(format!("{}/v1/sql", ctx.server_http))
                .bearer_auth(&ctx.key)
                .header("Accept", "application/vnd.apache.arrow.stream")
                .json(&serde_json::json!({"sql": sql}))
                .send()
                .await?
                .error_for_status()?;
            let mut decoder = arrow::ipc::reader::StreamDecoder::new();
            let mut n = 0;
            while let Some(chunk) = response.chunk().await? {
                let mut buffer = arrow::buffer::Buffer::from(chunk);
                while !buffer.is_empty() {
                    if let Some(batch) = decoder.decode(&mut buffer)? {
                        n += batch.num_rows() as u64;
                    }
                }
            }
            decoder.finish()?;
            n
        }
        Door::Flight => {
            let client = flight.as_mut().context("the Flight SQL client")?;
            let info = client.execute(sql, None).await?;
            let mut n = 0;
            for endpoint in info.endpoint {
                let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
                let mut stream = client.do_get(ticket).await?;
                while let Some(batch) = stream.next().await {
                    n += batch?.num_rows() as u64;
                }
            }
            n
        }
        Door::PgWire | Door::Postgres => {
            let client = pg.as_ref().context("the PostgreSQL client")?;
            let rows = client
                .query_raw(sql.as_str(), std::iter::empty::<i64>())
                .await?;
            futures::pin_mut!(rows);
            let mut n = 0;
            while let Some(row) = rows.next().await {
                let row = row?;
                // Decode every column, as a client would.
                let _: (i64, i64, f64, &str, chrono::DateTime<chrono::Utc>, bool) = (
                    row.get(0),
                    row.get(1),
                    row.get(2),
                    row.get(3),
                    row.get(4),
                    row.get(5),
                );
                n += 1;
            }
            n
        }
    };
    let secs = t.elapsed().as_secs_f64();
    if got != rows {
        bail!("{} streamed {got} rows, not {rows}", door.name());
    }
    let peak_rss = match start_rss {
        Some(start) => Some((server.peak()?, start)),
        None => None,
    };
    Ok(Streamed { secs, peak_rss })
}

/// The `bitvelocity serve` process measured, on free ports; killed when dropped.
struct Server {
    child: Child,
    http: String,
    flight: String,
    pgwire: String,
}

impl Server {
    fn start(warehouse: &std::path::Path, config: &std::path::Path) -> Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--warehouse")
            .arg(warehouse)
            .arg("--config")
            .arg(config)
            .args(["--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
            .args(["--pgwire", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("start bitvelocity serve")?;
        let stdout = child.stdout.take().context("serve's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut http, mut flight, mut pgwire) = (None, None, None);
        while http.is_none() || flight.is_none() || pgwire.is_none() {
            let Some(line) = lines.next() else {
                bail!("bitvelocity serve ended before naming its doors");
            };
            let line = line?;
            if let Some(rest) = line.strip_prefix("SQL over HTTP on ") {
                http = Some(rest.trim_end_matches("/v1/sql").to_string());
            }
            if let Some(rest) = line.strip_prefix("Arrow Flight SQL on ") {
                flight = Some(rest.replace("grpc://", "http://"));
            }
            if let Some(rest) = line.strip_prefix("PostgreSQL wire on postgres://") {
                pgwire = Some(rest.trim_end_matches("/bitvelocity").to_string());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            http: http.unwrap_or_default(),
            flight: flight.unwrap_or_default(),
            pgwire: pgwire.unwrap_or_default(),
        })
    }

    /// Starts a new peak-memory measurement (Linux: `5` into `clear_refs` resets `VmHWM` to
    /// the current RSS, returned); `None` where that cannot be done.
    fn reset_peak(&self) -> Option<u64> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The server's peak resident memory since the last reset, bytes.
    fn peak(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        crate::bench_proc::vm_hwm(&status).context("no VmHWM in the server's status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
