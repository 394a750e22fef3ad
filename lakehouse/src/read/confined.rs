//! Tables outside bronze and silver (created and written by clients through the REST
//! catalog; later gold), as a session reads them: each loaded on its own (one broken or
//! concurrently dropped table is left out, never failing the whole session), only when
//! shown, and read through a `FileIO` confined to the table's own folder.
//!
//! The folder is taken from the catalog's pointer (`<folder>/metadata/<file>`, written by
//! the platform only), never from the metadata file, which a client with storage access may
//! have rewritten: a table whose metadata names another location is left out, and no
//! manifest can make the session read a file outside the folder (another table's, or one
//! outside the warehouse). On local disk a symbolic link on the way is refused when the file
//! is opened; a writer with access to the warehouse's file system who swaps links between
//! that check and the read is not stopped (local warehouses trust their writers).

use std::sync::Arc;

use catalog::{Catalog, TableIdent};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use iceberg::table::Table;
use iceberg_datafusion::IcebergStaticTableProvider;

use crate::layout::{BRONZE_NAMESPACE, SILVER_NAMESPACE};
use crate::{LakehouseError, Result};

/// The namespaces other than bronze and silver, each with the tables `shown` lets through.
pub(crate) async fn client_schemas(
    catalog: &dyn Catalog,
    shown: &(dyn Fn(&str) -> bool + Send + Sync),
) -> Result<Vec<(String, Arc<dyn SchemaProvider>)>> {
    let namespaces = catalog
        .list_namespaces(None)
        .await
        .map_err(LakehouseError::iceberg(&"namespaces"))?;
    let mut out = Vec::new();
    for ns in namespaces {
        let name = ns.as_ref().join(".");
        if name == BRONZE_NAMESPACE || name == SILVER_NAMESPACE {
            continue;
        }
        let idents = match catalog.list_tables(&ns).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(namespace = %name, error = %e, "namespace left out of the session");
                continue;
            }
        };
        let wanted: Vec<TableIdent> = idents
            .into_iter()
            .filter(|t| shown(&format!("{name}.{}", t.name())))
            .collect();
        let loaded = futures::future::join_all(wanted.iter().map(|t| confined(catalog, t))).await;
        let schema = MemorySchemaProvider::new();
        for (ident, provider) in wanted.iter().zip(loaded) {
            match provider {
                Ok(p) => {
                    schema.register_table(ident.name().to_string(), Arc::new(p))?;
                }
                Err(e) => {
                    tracing::warn!(table = %ident, error = %e, "table left out of the session")
                }
            }
        }
        out.push((name, Arc::new(schema) as Arc<dyn SchemaProvider>));
    }
    Ok(out)
}

/// `ident` loaded, checked to live where the catalog put it, and confined there.
async fn confined(catalog: &dyn Catalog, ident: &TableIdent) -> Result<IcebergStaticTableProvider> {
    let err = LakehouseError::iceberg(ident);
    let table = catalog.load_table(ident).await.map_err(err)?;
    let pointer = table.metadata_location().unwrap_or_default().to_string();
    let folder = pointer
        .rsplit_once("/metadata/")
        .map(|(folder, _)| folder.to_string())
        .unwrap_or_default();
    if folder.is_empty() || table.metadata().location().trim_end_matches('/') != folder {
        return Err(LakehouseError::Iceberg {
            table: ident.to_string(),
            source: Box::new(iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!(
                    "its metadata names location {} but the catalog keeps it in {folder}",
                    table.metadata().location()
                ),
            )),
        });
    }
    let io = catalog::storage::confined_file_io(table.file_io(), &folder);
    let table = Table::builder()
        .metadata(table.metadata().clone())
        .metadata_location(pointer)
        .identifier(ident.clone())
        .file_io(io)
        .runtime(iceberg::Runtime::current())
        .build()
        .map_err(LakehouseError::iceberg(ident))?;
    IcebergStaticTableProvider::try_new_from_table(table)
        .await
        .map_err(LakehouseError::iceberg(ident))
}
