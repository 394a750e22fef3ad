//! The catalog layer: where BitVelocity's Iceberg tables are named and committed.
//!
//! It owns the warehouse layout and opens iceberg's `Catalog` (the SQL catalog
//! over SQLite at `<warehouse>/catalog.db`, catalog name `bitvelocity`), so any
//! engine that speaks the Iceberg SQL catalog (pyiceberg's `SqlCatalog`, say)
//! reads the same tables. It must never import the lakehouse, ingestion or any
//! façade crate: everything else sits above it.

pub mod commit;
mod error;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{CatalogError, Result};
pub use iceberg::{Catalog, NamespaceIdent, TableIdent};

use iceberg::CatalogBuilder;
use iceberg::io::LocalFsStorageFactory;
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE,
};

/// The catalog name every BitVelocity warehouse registers its tables under.
pub const CATALOG_NAME: &str = "bitvelocity";

/// A warehouse directory: table files plus the SQLite catalog that names them.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: PathBuf,
}

impl Warehouse {
    /// Uses (and creates if missing) the warehouse at `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|source| CatalogError::Warehouse {
            path: root.display().to_string(),
            source,
        })?;
        let root = root
            .canonicalize()
            .map_err(|source| CatalogError::Warehouse {
                path: root.display().to_string(),
                source,
            })?;
        Ok(Self { root })
    }

    /// The absolute warehouse directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite file holding the catalog tables (`iceberg_tables`, `iceberg_namespace_properties`).
    pub fn catalog_db(&self) -> PathBuf {
        self.root.join("catalog.db")
    }

    /// Opens the SQL catalog over `<root>/catalog.db`, creating it on first use.
    pub async fn open_catalog(&self) -> Result<Arc<dyn Catalog>> {
        let uri = format!("sqlite:{}?mode=rwc", self.catalog_db().display());
        let props = HashMap::from([
            (SQL_CATALOG_PROP_URI.to_string(), uri),
            (
                SQL_CATALOG_PROP_WAREHOUSE.to_string(),
                format!("file://{}", self.root.display()),
            ),
            (SQL_CATALOG_PROP_BIND_STYLE.to_string(), "QMark".to_string()),
        ]);
        let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(LocalFsStorageFactory))
            .load(CATALOG_NAME, props)
            .await?;
        Ok(Arc::new(catalog))
    }
}

/// Creates `namespace` unless it already exists (two openers racing both succeed).
pub async fn ensure_namespace(catalog: &dyn Catalog, namespace: &str) -> Result<NamespaceIdent> {
    let ns = NamespaceIdent::new(namespace.to_string());
    if !catalog.namespace_exists(&ns).await? {
        match catalog.create_namespace(&ns, HashMap::new()).await {
            Ok(_) => {}
            Err(e) if catalog.namespace_exists(&ns).await.unwrap_or(false) => {
                tracing::debug!(namespace, error = %e, "namespace created concurrently");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_sqlite_catalog_and_creates_namespace_once() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::new(dir.path().join("wh")).unwrap();
        let catalog = wh.open_catalog().await.unwrap();
        ensure_namespace(catalog.as_ref(), "bronze").await.unwrap();
        ensure_namespace(catalog.as_ref(), "bronze").await.unwrap();
        let all = catalog.list_namespaces(None).await.unwrap();
        assert_eq!(all, vec![NamespaceIdent::new("bronze".into())]);
        assert!(wh.catalog_db().exists());
        // A second opener sees the same namespace: the state lives in catalog.db.
        let again = wh.open_catalog().await.unwrap();
        assert!(
            again
                .namespace_exists(&NamespaceIdent::new("bronze".into()))
                .await
                .unwrap()
        );
    }
}
