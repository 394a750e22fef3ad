//! The catalog layer: where BitVelocity's Iceberg tables are stored, named and committed.
//!
//! It owns the warehouse (a local folder or an S3 prefix, reached through
//! [`storage::ObjectStorage`]), opens iceberg's `Catalog` (the SQL catalog, catalog
//! name `bitvelocity`, on SQLite or PostgreSQL), so any engine that speaks the Iceberg
//! SQL catalog (pyiceberg's `SqlCatalog`, say) reads the same tables, and publishes the
//! snapshots iceberg-rust cannot make ([`commit`]). It must never import the lakehouse,
//! ingestion or any façade crate: everything else sits above it.

pub mod commit;
mod error;
pub mod lease;
pub mod pointer;
pub mod requests;
pub mod retry;
pub mod storage;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{CatalogError, Result};
pub use iceberg::{Catalog, NamespaceIdent, TableIdent};
pub use pointer::CatalogUrl;
pub use retry::Retry;
pub use storage::{Location, ObjectStorage};

use iceberg::CatalogBuilder;
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE,
};

/// The catalog name every BitVelocity warehouse registers its tables under.
pub const CATALOG_NAME: &str = "bitvelocity";

/// A warehouse: where table files live plus the SQL catalog that names them.
#[derive(Clone)]
pub struct Warehouse {
    location: Location,
    catalog: CatalogUrl,
    storage_props: HashMap<String, String>,
}

impl std::fmt::Debug for Warehouse {
    /// Names the location and catalog (password redacted); storage properties carry
    /// credentials, so only their keys are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.storage_props.keys().collect();
        keys.sort();
        f.debug_struct("Warehouse")
            .field("location", &self.location.url())
            .field("catalog", &self.catalog.redacted())
            .field("storage_props", &keys)
            .finish()
    }
}

impl Warehouse {
    /// Uses (and creates if missing) the local warehouse folder `root`, with its embedded
    /// SQLite catalog `<root>/catalog.db`.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        Self::local(root.as_ref(), None)
    }

    /// Opens the warehouse at `location` (a path, `file:///<path>` or `s3://bucket/prefix`)
    /// with the catalog at `catalog` (`sqlite:<path>` or `postgres://…`). A local warehouse
    /// defaults to `<root>/catalog.db`; an object-store warehouse needs a catalog URL. S3
    /// is configured from the standard AWS environment ([`storage::s3_props_from_env`]).
    pub fn open(location: &str, catalog: Option<&str>) -> Result<Self> {
        let catalog = catalog.map(CatalogUrl::parse).transpose()?;
        match Location::parse(location)? {
            Location::Local(root) => Self::local(&root, catalog),
            s3 @ Location::S3 { .. } => Ok(Self {
                catalog: catalog
                    .ok_or_else(|| CatalogError::CatalogRequired { location: s3.url() })?,
                location: s3,
                storage_props: storage::s3_props_from_env(),
            }),
        }
    }

    fn local(root: &Path, catalog: Option<CatalogUrl>) -> Result<Self> {
        let io = |source| CatalogError::Warehouse {
            path: root.display().to_string(),
            source,
        };
        std::fs::create_dir_all(root).map_err(io)?;
        let root = root.canonicalize().map_err(io)?;
        let catalog = match catalog {
            Some(c) => c,
            None => CatalogUrl::parse(&format!("sqlite:{}", root.join("catalog.db").display()))?,
        };
        Ok(Self {
            location: Location::Local(root),
            catalog,
            storage_props: HashMap::new(),
        })
    }

    /// Adds storage properties (`s3.endpoint`, `s3.access-key-id`, …) over those taken from
    /// the environment, for callers that configure S3 explicitly.
    pub fn with_storage_props(mut self, props: HashMap<String, String>) -> Self {
        self.storage_props.extend(props);
        self
    }

    /// Where the table files live.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The warehouse as a URL: `file:///<abs path>` or `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        self.location.url()
    }

    /// The local folder of a local warehouse; `None` on object storage.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.location {
            Location::Local(p) => Some(p),
            Location::S3 { .. } => None,
        }
    }

    /// The catalog database.
    pub fn catalog_url(&self) -> &CatalogUrl {
        &self.catalog
    }

    /// The storage properties (`s3.*`) every `FileIO` of this warehouse gets; they carry
    /// credentials, so never print them.
    pub fn storage_props(&self) -> &HashMap<String, String> {
        &self.storage_props
    }

    /// The storage of this warehouse (what its tables' `FileIO`s use), for listing.
    pub fn storage(&self) -> ObjectStorage {
        ObjectStorage::new(self.storage_props.clone())
    }

    /// The SQLite file of an embedded catalog (`None` for a PostgreSQL catalog).
    pub fn catalog_db(&self) -> Option<PathBuf> {
        match &self.catalog {
            CatalogUrl::Sqlite(u) => {
                let path = u.strip_prefix("sqlite:")?.trim_start_matches("//");
                Some(PathBuf::from(path.split('?').next().unwrap_or(path)))
            }
            CatalogUrl::Postgres(_) => None,
        }
    }

    /// Opens the SQL catalog, creating its tables on first use.
    pub async fn open_catalog(&self) -> Result<Arc<dyn Catalog>> {
        self.catalog.prepare().await?;
        let bind = match self.catalog {
            CatalogUrl::Sqlite(_) => "QMark",
            CatalogUrl::Postgres(_) => "DollarNumeric",
        };
        let mut props = self.storage_props.clone();
        props.extend([
            (
                SQL_CATALOG_PROP_URI.to_string(),
                self.catalog.as_str().to_string(),
            ),
            (SQL_CATALOG_PROP_WAREHOUSE.to_string(), self.url()),
            (SQL_CATALOG_PROP_BIND_STYLE.to_string(), bind.to_string()),
        ]);
        let catalog = iceberg_catalog_sql::SqlCatalogBuilder::default()
            .with_storage_factory(Arc::new(storage::ObjectStorageFactory))
            .load(CATALOG_NAME, props)
            .await
            .map_err(|e| CatalogError::CatalogOpen {
                url: self.catalog.redacted(),
                source: Box::new(e),
            })?;
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
        assert!(wh.catalog_db().unwrap().exists());
        // A second opener sees the same namespace: the state lives in catalog.db.
        let again = wh.open_catalog().await.unwrap();
        assert!(
            again
                .namespace_exists(&NamespaceIdent::new("bronze".into()))
                .await
                .unwrap()
        );
    }

    #[test]
    fn object_store_warehouse_needs_a_catalog_and_unknown_schemes_are_refused() {
        let e = Warehouse::open("s3://bucket/lake", None).unwrap_err();
        assert!(matches!(e, CatalogError::CatalogRequired { .. }), "{e}");
        assert!(e.to_string().contains("--catalog"), "{e}");
        let e = Warehouse::open("gs://bucket/lake", None).unwrap_err();
        assert!(
            matches!(e, CatalogError::UnsupportedWarehouse { .. }),
            "{e}"
        );
        let wh = Warehouse::open("s3://bucket/lake/", Some("postgres://h/db")).unwrap();
        assert_eq!(wh.url(), "s3://bucket/lake");
        assert!(wh.local_root().is_none() && wh.catalog_db().is_none());
    }
}
