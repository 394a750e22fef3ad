//! `bitvelocity resync <table>`: asks the ingester of a warehouse to copy one table afresh
//! from its source while the others keep their positions.
//!
//! The request is recorded in the catalog database (`catalog::requests`). A running
//! ingester finds it between source transactions, durably forgets the table's position,
//! restarts its capture (the other tables resume where they are, skipping what they hold),
//! copies the table under a new exported snapshot (its first commit replacing every file of
//! bronze and silver) and clears the request. Without a running ingester the next
//! `bitvelocity ingest` does the same before it streams.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Records the request and, with `wait`, waits until an ingester has done it.
pub async fn resync(warehouse: &super::WarehouseArgs, table: &str, wait: bool) -> Result<()> {
    let wh = warehouse.open_existing()?;
    let catalog = wh.open_catalog().await?;
    // `orders`, `bronze.orders` and `silver.orders` all name the source table behind them.
    let name = table
        .strip_prefix("bronze.")
        .or_else(|| table.strip_prefix("silver."))
        .unwrap_or(table);
    let ident = catalog::TableIdent::new(
        catalog::NamespaceIdent::new(lakehouse::bronze::BRONZE_NAMESPACE.to_string()),
        name.to_string(),
    );
    if !catalog.table_exists(&ident).await? {
        let ns = catalog::NamespaceIdent::new(lakehouse::bronze::BRONZE_NAMESPACE.to_string());
        let mut known: Vec<String> = match catalog.list_tables(&ns).await {
            Ok(t) => t.into_iter().map(|t| t.name().to_string()).collect(),
            Err(_) => Vec::new(),
        };
        known.sort();
        bail!(
            "no captured table named {table:?} in this warehouse (tables: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let requests = wh.catalog_url().requests().await?;
    let by = format!("{} pid {}", super::hostname(), std::process::id());
    requests.add(catalog::requests::RESYNC, name, &by).await?;
    let leases = wh.catalog_url().leases().await?;
    match leases.holder(catalog::lease::INGESTER_LEASE).await? {
        Some(h) if h.is_live() => println!(
            "resync of {name} requested: the running ingester ({}, {}) picks it up within seconds and copies it afresh; the other tables keep their positions, their commits pausing while the copy runs",
            h.holder, h.owner
        ),
        _ => println!(
            "resync of {name} requested: no ingester runs on this warehouse now; the next `bitvelocity ingest` copies it afresh before streaming"
        ),
    }
    if !wait {
        return Ok(());
    }
    let started = Instant::now();
    let mut said = Instant::now();
    while requests
        .pending(catalog::requests::RESYNC)
        .await?
        .iter()
        .any(|(t, _)| t == name)
    {
        if said.elapsed() >= Duration::from_secs(10) {
            said = Instant::now();
            // Nobody to do it: say so rather than wait forever (the request stays recorded).
            let live = leases
                .holder(catalog::lease::INGESTER_LEASE)
                .await?
                .filter(|h| h.is_live());
            let Some(h) = live else {
                bail!(
                    "no ingester runs on this warehouse: the resync of {name} stays requested until `bitvelocity ingest` starts"
                );
            };
            eprintln!(
                "still waiting for the resync of {name} ({} s; ingester {}, {}; an ingester whose publication lacks the table never answers)",
                started.elapsed().as_secs(),
                h.holder,
                h.owner
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "resync of {name} done after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
