//! `bitvelocity serve`: the front doors over one query engine, and `bitvelocity keys new`,
//! which adds a user to the server's configuration and prints its key once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serving::config::{ServeConfig, UserConfig};

/// A door's listen address, or `off`.
#[derive(Debug, Clone, Copy)]
pub struct Door(pub Option<SocketAddr>);

impl std::str::FromStr for Door {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Door(None));
        }
        s.parse()
            .map(|a| Door(Some(a)))
            .map_err(|e| format!("{s}: {e} (an address such as 127.0.0.1:8080, or `off`)"))
    }
}

/// Serves the doors in `doors` until a shutdown signal.
pub async fn serve(
    wh: catalog::Warehouse,
    config: &Path,
    doors: serving::server::DoorAddrs,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let config = ServeConfig::load(config)?;
    let auth = Arc::new(serving::auth::Authenticator::new(&config)?);
    let catalog = wh.open_catalog().await?;
    let metrics = Arc::new(serving::metrics::ServeMetrics::default());
    let engine = Arc::new(serving::engine::QueryEngine::new(
        catalog,
        config.limits.clone(),
        metrics,
    ));
    if doors.http.is_none() && doors.flight.is_none() && doors.pgwire.is_none() {
        anyhow::bail!("every door is off: give --http, --flight or --pgwire an address");
    }
    if let Some(tls) = &config.tls {
        // Checked before binding: a door never answers in plaintext when TLS was asked for.
        serving::tls::load(tls)?;
    }
    let secure = config.tls.is_some();
    let (https, grpc) = if secure {
        ("https", "grpc+tls")
    } else {
        ("http", "grpc")
    };
    let listeners = serving::server::bind(&doors).await?;
    let bound = listeners.addrs();
    if let Some(a) = bound.http {
        println!("SQL over HTTP on {https}://{a}/v1/sql");
        println!(
            "  curl -s {https}://{a}/v1/sql -H 'Authorization: Bearer <key>' -H 'Content-Type: application/json' -d '{{\"sql\": \"SELECT 1\"}}'"
        );
    }
    if let Some(a) = bound.flight {
        println!("Arrow Flight SQL on {grpc}://{a}");
        println!(
            "  python -c \"import adbc_driver_flightsql.dbapi as f; c = f.connect('{grpc}://{a}', db_kwargs={{'username': '<user>', 'password': '<key>'}}); cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchall())\""
        );
    }
    if let Some(a) = bound.pgwire {
        println!(
            "PostgreSQL wire on postgres://{a}/{}",
            serving::pg::DATABASE
        );
        println!(
            "  psql 'host={} port={} dbname={} user=<user>'   (password: the key)",
            a.ip(),
            a.port(),
            serving::pg::DATABASE
        );
    }
    listeners
        .serve(engine, auth, &config, shutdown)
        .await
        .context("serving")?;
    Ok(())
}

/// Adds user `user` with role `role` to the configuration at `path` (created if missing)
/// and prints the new key, which is stored only as its SHA-256.
pub fn new_key(path: &Path, user: &str, role: &str) -> Result<()> {
    let mut config = if path.exists() {
        ServeConfig::load(path)?
    } else {
        ServeConfig::default()
    };
    if config.users.iter().any(|u| u.name == user) {
        anyhow::bail!("user {user} is already in {}", path.display());
    }
    if !config.roles.contains_key(role) {
        anyhow::bail!(
            "role {role} is not defined in {} (add it under [roles.{role}] first)",
            path.display()
        );
    }
    let (key, digest) = serving::auth::new_key();
    config.users.push(UserConfig {
        name: user.to_string(),
        role: role.to_string(),
        api_key_sha256: digest,
        pg_scram_sha256: Some(serving::pg::Verifier::new(&key).to_text()),
    });
    // Checked as the server will read it, then written whole (never half a file).
    let text = config.to_toml()?;
    ServeConfig::parse(&text)?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    println!("{key}");
    eprintln!(
        "added user {user} (role {role}) to {}; the key above is shown only now",
        path.display()
    );
    Ok(())
}
