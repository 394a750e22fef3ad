//! What the serving tests share: the real `bitvelocity serve` process on free ports, and
//! PostgreSQL's answers as text.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A served warehouse: the server process, killed on drop.
pub struct Served {
    child: Child,
    /// Base URL of the HTTP door.
    pub http: String,
    /// URI of the Flight SQL door.
    pub flight: String,
    /// host:port of the PostgreSQL door.
    pub pgwire: String,
}

impl Served {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bitvelocity serve` on the local warehouse `warehouse` with `config` on free
/// ports, with `env` added to its environment, once it has named every door.
pub fn serve(
    warehouse: &std::path::Path,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> Served {
    let args = ["--warehouse".to_string(), warehouse.display().to_string()];
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    serve_with(&args, config, &env)
}

/// Starts `bitvelocity serve` with the warehouse arguments `warehouse_args` (a warehouse and
/// maybe a catalog) and `env` added to its environment.
pub fn serve_with(
    warehouse_args: &[String],
    config: &std::path::Path,
    env: &[(&str, String)],
) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitvelocity"))
        .arg("serve")
        .args(warehouse_args)
        .arg("--config")
        .arg(config)
        .args(["--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
        .args(["--pgwire", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start bitvelocity serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut http, mut flight, mut pgwire) = (None, None, None);
    while http.is_none() || flight.is_none() || pgwire.is_none() {
        let line = lines
            .next()
            .expect("serve ended before naming its doors")
            .unwrap();
        if let Some(rest) = line.strip_prefix("SQL over HTTP on ") {
            http = Some(rest.trim_end_matches("/v1/sql").to_string());
        }
        if let Some(rest) = line.strip_prefix("Arrow Flight SQL on ") {
            flight = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("PostgreSQL wire on postgres://") {
            pgwire = Some(rest.trim_end_matches("/bitvelocity").to_string());
        }
    }
    // Keep draining so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        http: http.unwrap(),
        flight: flight.unwrap(),
        pgwire: pgwire.unwrap(),
    }
}

/// PostgreSQL's answer to `sql`, every value as text.
pub async fn pg_text(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    out
}
