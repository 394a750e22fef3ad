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
    let rest = Arc::new(
        serving::rest::RestCatalog::new(
            &wh,
            catalog.clone(),
            auth.clone(),
            metrics.clone(),
            config.rest_catalog.clone(),
        )
        .await?,
    );
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
        println!("Iceberg REST catalog on {https}://{a}/iceberg");
        println!(
            "  python -c \"from pyiceberg.catalog.rest import RestCatalog; c = RestCatalog('bitvelocity', uri='{https}://{a}/iceberg', credential='<user>:<key>'); print(c.list_namespaces())\""
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
        .serve(engine, auth, Some(rest), &config, shutdown)
        .await
        .context("serving")?;
    Ok(())
}

/// After the demo: writes its server configuration and either serves the warehouse on
/// every door until `stop` (when given) or prints how to.
pub async fn after_demo(
    warehouse: &Path,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<()> {
    let config = warehouse.join("serve.toml");
    let key = demo_user(&config)?;
    match stop {
        Some(stop) => {
            println!("\n  Serving the warehouse as user demo, key {key} (Ctrl-C stops):");
            let doors = serving::server::DoorAddrs {
                http: Some(([127, 0, 0, 1], 8080).into()),
                flight: Some(([127, 0, 0, 1], 50051).into()),
                pgwire: Some(([127, 0, 0, 1], 5433).into()),
            };
            serve(catalog::Warehouse::new(warehouse)?, &config, doors, stop).await
        }
        None => {
            println!(
                "  Or serve it to psql, Python ADBC and curl (user demo, key {key}):\n    bitvelocity serve --warehouse {w} --config {c}",
                w = warehouse.display(),
                c = config.display()
            );
            Ok(())
        }
    }
}

/// Writes the demo's server configuration at `path` (a `reader` role that reads every
/// table, and a user `demo` holding a fresh key) and returns the key.
pub fn demo_user(path: &Path) -> Result<String> {
    let mut config = ServeConfig::default();
    config.roles.insert(
        "reader".into(),
        serving::config::RoleConfig {
            read: vec!["*".into()],
            write: vec![],
        },
    );
    let (key, digest) = serving::auth::new_key();
    config.users.push(UserConfig {
        name: "demo".into(),
        role: "reader".into(),
        api_key_sha256: digest,
        pg_scram_sha256: Some(serving::pg::Verifier::new(&key).to_text()),
    });
    let text = config.to_toml()?;
    ServeConfig::parse(&text)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
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
