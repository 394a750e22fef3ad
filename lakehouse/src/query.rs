//! SQL over the lakehouse with DataFusion.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use catalog::{CATALOG_NAME, Catalog};
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use iceberg_datafusion::IcebergCatalogProvider;

use crate::Result;

/// A DataFusion session that sees every table of the catalog as `<namespace>.<table>`
/// (also `bitvelocity.<namespace>.<table>`), as of the moment it was opened.
pub async fn session(catalog: Arc<dyn Catalog>) -> Result<SessionContext> {
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, "bronze")
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let provider = IcebergCatalogProvider::try_new(catalog)
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    ctx.register_catalog(CATALOG_NAME, Arc::new(provider));
    Ok(ctx)
}

/// Runs one SQL statement and collects its result.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// SQL that replays a change-log table into its current state: the latest change
/// per key (by `_lsn`, `_seq`), minus keys whose latest change is a delete, and
/// minus everything before the table's last truncate.
pub fn replay_sql(table: &str, key: &[String], columns: &[String]) -> String {
    let key_list = key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
    let cols = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH t AS (SELECT tl, tq FROM (SELECT _lsn AS tl, _seq AS tq FROM {table} WHERE _op = 'truncate' \
                     UNION ALL SELECT -1 AS tl, -1 AS tq) ORDER BY tl DESC, tq DESC LIMIT 1), \
         ranked AS (SELECT c.*, row_number() OVER (PARTITION BY {key_list} ORDER BY _lsn DESC, _seq DESC) AS _rn \
                    FROM {table} c CROSS JOIN t \
                    WHERE c._op <> 'truncate' AND (c._lsn > t.tl OR (c._lsn = t.tl AND c._seq > t.tq))) \
         SELECT {cols} FROM ranked WHERE _rn = 1 AND _op <> 'delete'"
    )
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}
