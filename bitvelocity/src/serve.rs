//! `bitvelocity serve`: the front doors over one query engine, and `bitvelocity keys new`,
//! which adds a user to the server's configuration and prints its key once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serving::config::{ServeConfig, UserConfig};

/// Serves the HTTP door on `http` until a shutdown signal.
pub async fn serve(
    wh: catalog::Warehouse,
    config: &Path,
    http: SocketAddr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
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
    let router = serving::http::router(serving::http::HttpState { engine, auth });
    let listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("listening on {http} (--http)"))?;
    let bound = listener.local_addr()?;
    println!("SQL over HTTP on http://{bound}/v1/sql");
    println!(
        "  curl -s http://{bound}/v1/sql -H 'Authorization: Bearer <key>' -H 'Content-Type: application/json' -d '{{\"sql\": \"SELECT 1\"}}'"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
        .context("serving HTTP")?;
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
