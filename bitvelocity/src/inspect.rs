//! `bitvelocity tables` and `bitvelocity snapshots`: where each table stands, and what each
//! snapshot of one did, printed as text tables.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use crate::WarehouseArgs;

/// Prints every bronze and silver table with its rows, files, position and state.
pub async fn tables(warehouse: WarehouseArgs) -> Result<()> {
    let wh = warehouse.open_existing()?;
    let catalog = wh.open_catalog().await?;
    let tables = lakehouse::inspect::tables(catalog.as_ref()).await?;
    let rows = tables
        .iter()
        .map(|t| {
            vec![
                t.layer.clone(),
                t.name.clone(),
                t.source.clone().unwrap_or_default(),
                num(t.rows),
                num(t.data_files),
                num(t.delete_files),
                lsn(t.source_lsn),
                time(t.committed_ms),
                if t.stopped { "stopped" } else { "" }.to_string(),
            ]
        })
        .collect();
    print(
        &[
            "layer",
            "table",
            "source",
            "rows",
            "data files",
            "delete files",
            "source position",
            "last commit",
            "capture",
        ],
        rows,
    )
}

/// Prints the snapshots of `table` (`silver.t`, `bronze.t`, or `t` for silver), oldest first.
pub async fn snapshots(table: &str, warehouse: WarehouseArgs) -> Result<()> {
    let (layer, name) = match table.split_once('.') {
        Some((l, n)) if l == "bronze" || l == "silver" => (l, n),
        Some(_) => anyhow::bail!("table {table:?}: the layer must be bronze or silver"),
        None => ("silver", table),
    };
    let ident = catalog::TableIdent::from_strs([layer, name])?;
    let wh = warehouse.open_existing()?;
    let catalog = wh.open_catalog().await?;
    if !catalog.table_exists(&ident).await? {
        anyhow::bail!("no table {ident} in this warehouse (see `bitvelocity tables`)");
    }
    let snaps = lakehouse::inspect::snapshots(catalog.as_ref(), &ident)
        .await
        .with_context(|| format!("reading the snapshots of {ident}"))?;
    let rows = snaps
        .iter()
        .map(|s| {
            vec![
                format!("{}{}", s.id, if s.current { " *" } else { "" }),
                time(Some(s.committed_ms)),
                match &s.maintenance {
                    Some(m) => format!("{} ({m})", s.operation),
                    None => s.operation.clone(),
                },
                lsn(s.source_lsn),
                num(s.added_rows),
                num(s.deleted_rows),
                num(s.rows),
            ]
        })
        .collect();
    print(
        &[
            "snapshot",
            "committed",
            "operation",
            "source position",
            "rows added",
            "rows deleted",
            "rows after",
        ],
        rows,
    )
}

fn num(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_default()
}

fn lsn(v: Option<u64>) -> String {
    v.map(|l| ingestion::Lsn(l).to_string()).unwrap_or_default()
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_default()
}

/// Prints `rows` under `headers` as one text table.
fn print(headers: &[&str], rows: Vec<Vec<String>>) -> Result<()> {
    let schema = Arc::new(Schema::new(
        headers
            .iter()
            .map(|h| Field::new(*h, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = (0..headers.len())
        .map(|c| {
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r[c].as_str()),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema, columns)?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&[batch])?);
    Ok(())
}
