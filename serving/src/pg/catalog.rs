//! PostgreSQL's `pg_catalog` for one connection: one `datafusion-pg-catalog` provider kept
//! for the connection's life (so the object ids psql reads in one query name the same
//! tables in its next one), reading each query's own session (so it lists what that
//! session shows, as the user's grants filter it), names in sorted order.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProviderList;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as pgc, PgCatalogSchemaProvider, PgCatalogStaticTables,
};

use crate::engine::SessionHook;

/// The session whose tables the catalog describes now (swapped in by each query).
#[derive(Clone)]
pub(super) struct LiveCatalog(Arc<RwLock<Option<Arc<dyn CatalogProviderList>>>>);

impl std::fmt::Debug for LiveCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCatalog")
    }
}

impl LiveCatalog {
    fn current(&self) -> Option<Arc<dyn CatalogProviderList>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn schema(
        &self,
        catalog: &str,
        schema: &str,
    ) -> Option<Arc<dyn datafusion::catalog::SchemaProvider>> {
        self.current()
            .and_then(|c| c.catalog(catalog))
            .and_then(|c| c.schema(schema))
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[async_trait]
impl CatalogInfo for LiveCatalog {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(self
            .current()
            .map(|c| sorted(CatalogProviderList::catalog_names(c.as_ref())))
            .unwrap_or_default())
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self
            .current()
            .and_then(|c| c.catalog(catalog))
            .map(|c| sorted(c.schema_names())))
    }

    async fn table_names(
        &self,
        catalog: &str,
        schema: &str,
    ) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self
            .schema(catalog, schema)
            .map(|s| sorted(s.table_names())))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        let Some(schema) = self.schema(catalog, schema) else {
            return Ok(None);
        };
        Ok(schema.table(table).await?.map(|t| t.schema()))
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>, DataFusionError> {
        let Some(schema) = self.schema(catalog, schema) else {
            return Ok(None);
        };
        Ok(schema.table(table).await?.map(|t| t.table_type()))
    }
}

/// One connection's `pg_catalog`, installed into each of its query sessions.
pub(super) struct ConnectionCatalog {
    live: LiveCatalog,
    provider: Arc<PgCatalogSchemaProvider<LiveCatalog, EmptyContextProvider>>,
    statics: Arc<PgCatalogStaticTables>,
}

impl ConnectionCatalog {
    pub(super) fn new(statics: Arc<PgCatalogStaticTables>) -> Result<Self, Box<DataFusionError>> {
        let live = LiveCatalog(Arc::new(RwLock::new(None)));
        let provider =
            PgCatalogSchemaProvider::try_new(live.clone(), statics.clone(), EmptyContextProvider)?;
        Ok(Self {
            live,
            provider: Arc::new(provider),
            statics,
        })
    }
}

impl SessionHook for ConnectionCatalog {
    fn install(&self, ctx: &SessionContext) -> datafusion::error::Result<()> {
        *self.live.0.write().unwrap_or_else(|e| e.into_inner()) =
            Some(ctx.state().catalog_list().clone());
        let catalog = ctx.catalog(catalog::CATALOG_NAME).ok_or_else(|| {
            DataFusionError::Configuration("the session has no lakehouse catalog".into())
        })?;
        catalog.register_schema("pg_catalog", self.provider.clone())?;
        ctx.register_udtf("pg_get_keywords", self.statics.pg_get_keywords.clone());
        // The functions psql and BI tools call (as `setup_pg_catalog` registers them).
        for udf in [
            pgc::create_current_database_udf(),
            pgc::create_current_schema_udf(),
            pgc::create_current_schemas_udf(),
            pgc::create_pg_get_userbyid_udf(),
            pgc::has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
            pgc::has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
            pgc::has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
            pgc::has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
            pgc::create_pg_table_is_visible(),
            pgc::format_type::create_format_type_udf(),
            pgc::create_session_user_udf(),
            pgc::pg_get_expr_udf::create_pg_get_expr_udf(),
            pgc::create_pg_get_partkeydef_udf(),
            pgc::create_pg_relation_is_publishable_udf(),
            pgc::create_pg_get_statisticsobjdef_columns_udf(),
            pgc::create_pg_encoding_to_char_udf(),
            pgc::create_pg_backend_pid_udf(),
            pgc::create_pg_relation_size_udf(),
            pgc::create_pg_total_relation_size_udf(),
            pgc::create_pg_stat_get_numscans(),
            pgc::create_pg_get_constraintdef(),
            pgc::create_pg_get_partition_ancestors_udf(),
            pgc::quote_ident_udf::create_quote_ident_udf(),
            pgc::quote_ident_udf::create_parse_ident_udf(),
        ] {
            ctx.register_udf(udf);
        }
        Ok(())
    }
}
