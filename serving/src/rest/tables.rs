//! Tables: list, create, load, exists, commit, drop. Reads need a read or write grant
//! (403 for a table outside them, existing or not); changes need a write grant outside the
//! platform's namespaces, and commit through the same compare-and-swap as the ingester
//! after the client's requirements and [`super::guard`]'s location checks pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use catalog::{CatalogError, Retry, TableIdent};
use iceberg::spec::{FormatVersion, Schema, SortOrder, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::{TableCreation, TableRequirement, TableUpdate};
use serde::Deserialize;
use serde_json::json;

use super::namespaces::check_new_name;
use super::{Answer, RestCatalog, RestFailure, from_iceberg, guard, table_name};
use crate::ServingError;

/// `{"metadata-location", "metadata", "config"}` of `table`.
fn loaded(rc: &RestCatalog, table: &Table) -> Response {
    axum::Json(json!({
        "metadata-location": table.metadata_location(),
        "metadata": table.metadata(),
        "config": rc.storage_config,
    }))
    .into_response()
}

/// The table of a path.
fn ident(rc: &RestCatalog, namespace: &str, table: &str) -> crate::Result<TableIdent> {
    Ok(TableIdent::new(rc.namespace(namespace)?, table.to_string()))
}

/// `GET /v1/namespaces/{namespace}/tables`: the tables the caller may read or write.
pub(super) async fn list(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Answer {
    let who = rc.who(&headers)?;
    let ns = rc.namespace(&namespace)?;
    rc.may_see_namespace(&who, &ns).await?;
    let mut shown: Vec<TableIdent> = rc
        .catalog
        .list_tables(&ns)
        .await
        .map_err(|e| from_iceberg(&namespace, e))?
        .into_iter()
        .filter(|t| rc.may_see_table(&who, t).is_ok())
        .collect();
    shown.sort_by(|a, b| a.name().cmp(b.name()));
    let identifiers: Vec<serde_json::Value> = shown
        .iter()
        .map(|t| json!({ "namespace": t.namespace().as_ref(), "name": t.name() }))
        .collect();
    Ok(axum::Json(json!({ "identifiers": identifiers })).into_response())
}

/// The body of `POST /v1/namespaces/{namespace}/tables`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct CreateTable {
    name: String,
    #[serde(default)]
    location: Option<String>,
    schema: Schema,
    #[serde(default)]
    partition_spec: Option<UnboundPartitionSpec>,
    #[serde(default)]
    write_order: Option<SortOrder>,
    #[serde(default)]
    stage_create: bool,
    #[serde(default)]
    properties: HashMap<String, String>,
}

/// `POST /v1/namespaces/{namespace}/tables`: creates the table at
/// `<warehouse>/<namespace>/<name>` (the catalog chooses every table's location).
pub(super) async fn create(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let who = rc.who(&headers)?;
    let request: CreateTable = serde_json::from_slice(&body)
        .map_err(|e| ServingError::BadRequest(format!("the request body: {e}")))?;
    let table = ident(&rc, &namespace, &request.name)?;
    rc.may_write_table(&who, &table)?;
    check_new_name("table", &request.name)?;
    if request.stage_create {
        return Err(ServingError::Unsupported(
            "staged table creation (stage-create): create the table, then commit to it".into(),
        )
        .into());
    }
    let location = format!("{}/{}/{}", rc.root, namespace, request.name);
    if let Some(asked) = &request.location
        && asked.trim_end_matches('/') != location
    {
        return Err(ServingError::NotAllowed(format!(
            "a table's location is chosen by the catalog ({location}), not {asked}"
        ))
        .into());
    }
    let mut properties = request.properties;
    guard::check_properties(&format!("{location}/"), &properties)?;
    let format_version = match properties.remove("format-version").as_deref() {
        None | Some("2") => FormatVersion::V2,
        Some("1") => FormatVersion::V1,
        Some("3") => FormatVersion::V3,
        Some(other) => {
            return Err(
                ServingError::BadRequest(format!("format-version {other:?}: 1, 2 or 3")).into(),
            );
        }
    };
    let creation = TableCreation::builder()
        .name(request.name.clone())
        .location(location)
        .schema(request.schema)
        .partition_spec_opt(request.partition_spec)
        .sort_order_opt(request.write_order)
        .properties(properties)
        .format_version(format_version)
        .build();
    let created = rc
        .catalog
        .create_table(table.namespace(), creation)
        .await
        .map_err(|e| match e.kind() {
            iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => {
                ServingError::BadRequest(format!("the table definition: {e}"))
            }
            _ => from_iceberg(&table_name(&table), e),
        })?;
    tracing::info!(user = %who.user, table = %table_name(&table), "table created");
    Ok(loaded(&rc, &created))
}

/// `GET /v1/namespaces/{namespace}/tables/{table}`.
pub(super) async fn load(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer {
    let who = rc.who(&headers)?;
    let table = ident(&rc, &namespace, &name)?;
    rc.may_see_table(&who, &table)?;
    let found = rc
        .catalog
        .load_table(&table)
        .await
        .map_err(|e| from_iceberg(&table_name(&table), e))?;
    Ok(loaded(&rc, &found))
}

/// `HEAD /v1/namespaces/{namespace}/tables/{table}`: 204 or 404.
pub(super) async fn exists(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer {
    let who = rc.who(&headers)?;
    let table = ident(&rc, &namespace, &name)?;
    rc.may_see_table(&who, &table)?;
    let found = rc
        .catalog
        .table_exists(&table)
        .await
        .map_err(|e| from_iceberg(&table_name(&table), e))?;
    Ok(if found {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
    .into_response())
}

/// `POST /v1/namespaces/{namespace}/tables/{table}/metrics`: accepted and dropped (scan
/// reports are the client's own).
pub(super) async fn report_metrics(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer {
    let who = rc.who(&headers)?;
    rc.may_see_table(&who, &ident(&rc, &namespace, &name)?)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A table named in a request body.
#[derive(Debug, Deserialize)]
struct Identifier {
    namespace: Vec<String>,
    name: String,
}

/// The body of `POST /v1/namespaces/{namespace}/tables/{table}`.
#[derive(Debug, Deserialize)]
struct CommitTable {
    #[serde(default)]
    identifier: Option<Identifier>,
    #[serde(default)]
    requirements: Vec<TableRequirement>,
    updates: Vec<TableUpdate>,
}

/// `POST /v1/namespaces/{namespace}/tables/{table}`: checks the requirements on the current
/// metadata, checks the updates' files, and swaps the pointer from exactly that metadata;
/// if another writer moved it meanwhile, does it all again on the new current metadata
/// (the client's requirements decide whether its change still applies).
pub(super) async fn commit(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer {
    let who = rc.who(&headers)?;
    let table = ident(&rc, &namespace, &name)?;
    rc.may_write_table(&who, &table)?;
    let request: CommitTable = serde_json::from_slice(&body)
        .map_err(|e| ServingError::BadRequest(format!("the request body: {e}")))?;
    if let Some(id) = &request.identifier
        && (id.namespace.as_slice() != table.namespace().as_ref().as_slice() || id.name != name)
    {
        return Err(ServingError::BadRequest(format!(
            "the body names {}.{}, the path {}",
            id.namespace.join("."),
            id.name,
            table_name(&table)
        ))
        .into());
    }
    // Run to its end even if the client goes away: a commit stopped between writing its
    // metadata and learning the swap's outcome would leave that outcome unknown to all.
    let rc2 = rc.clone();
    let user = who.user.clone();
    tokio::spawn(async move { commit_table(&rc2, &user, table, request).await })
        .await
        .map_err(|e| ServingError::CommitOutcomeUnknown(format!("the commit task ended: {e}")))?
        .map_err(RestFailure::from)
}

/// How many times a commit is tried again after another writer moved the table first.
const COMMIT_ATTEMPTS: usize = 4;

/// The commit's work, on its own task.
async fn commit_table(
    rc: &RestCatalog,
    user: &str,
    table: TableIdent,
    request: CommitTable,
) -> crate::Result<Response> {
    let what = table_name(&table);
    let mut checked = HashSet::new();
    let mut race = Retry::commit_race();
    for attempt in 0.. {
        let loaded = rc
            .catalog
            .load_table(&table)
            .await
            .map_err(|e| from_iceberg(&what, e))?;
        // Every file of the commit is read (and written) through storage confined to the
        // folder the catalog pointer names, whatever the metadata file says of itself.
        let current = confined(&loaded)?;
        for requirement in &request.requirements {
            requirement
                .check(Some(current.metadata()))
                .map_err(|e| ServingError::CommitConflict(e.message().to_string()))?;
        }
        guard::check_updates(&current, &request.updates, &mut checked).await?;
        // Applied once here so a bad update is the client's error (400), not the commit's;
        // after another writer committed, it is that race's (409: reload and retry).
        apply(&current, &request.updates).map_err(|e| match e {
            ServingError::BadRequest(m) if attempt > 0 => ServingError::CommitConflict(m),
            other => other,
        })?;
        let updates = request.updates.clone();
        let outcome = rc
            .commit
            .commit_metadata(rc.catalog.as_ref(), &current, move |mut builder| {
                for update in updates {
                    builder = update.apply(builder)?;
                }
                Ok(builder)
            })
            .await;
        match outcome {
            Ok(committed) => {
                tracing::info!(user, table = %what, "commit through the REST catalog");
                return Ok(axum::Json(json!({
                    "metadata-location": committed.metadata_location(),
                    "metadata": committed.metadata(),
                }))
                .into_response());
            }
            Err(CatalogError::CommitConflict { .. })
                if attempt + 1 < COMMIT_ATTEMPTS && race.pause().await =>
            {
                continue;
            }
            Err(CatalogError::CommitConflict { source, .. }) => {
                return Err(ServingError::CommitConflict(source.to_string()));
            }
            Err(e) if e.may_have_committed() => {
                return Err(ServingError::CommitOutcomeUnknown(e.to_string()));
            }
            Err(CatalogError::TableNotFound { .. }) => {
                return Err(ServingError::NoSuchTable(what));
            }
            Err(e) => return Err(ServingError::Catalog(e)),
        }
    }
    unreachable!("the loop returns")
}

/// The metadata `updates` make of `table`'s, or why they cannot apply.
fn apply(table: &Table, updates: &[TableUpdate]) -> crate::Result<()> {
    let location = table.metadata_location().map(str::to_string);
    let mut builder = table.metadata().clone().into_builder(location);
    for update in updates {
        builder = update
            .clone()
            .apply(builder)
            .map_err(|e| ServingError::BadRequest(format!("the commit's updates: {e}")))?;
    }
    builder
        .build()
        .map_err(|e| ServingError::BadRequest(format!("the commit's updates: {e}")))?;
    Ok(())
}

/// `DELETE /v1/namespaces/{namespace}/tables/{table}[?purgeRequested=true]`: unregisters
/// the table, and with a purge deletes the files its metadata names (all inside its own
/// location, as every commit here was checked to keep them).
pub(super) async fn drop(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let who = rc.who(&headers)?;
    let table = ident(&rc, &namespace, &name)?;
    rc.may_write_table(&who, &table)?;
    let what = table_name(&table);
    let purge = q
        .get("purgeRequested")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // Loaded before the drop, and read through a `FileIO` confined to the folder the
    // catalog keeps it in: whatever its files name, only that folder's files are deleted.
    let doomed = if purge {
        let loaded = rc
            .catalog
            .load_table(&table)
            .await
            .map_err(|e| from_iceberg(&what, e))?;
        match confined(&loaded) {
            Ok(t) => Some(t),
            Err(e) => {
                // Its metadata was rewritten: unregister it, delete nothing it names.
                tracing::warn!(table = %what, error = %e, "purge deletes no files");
                None
            }
        }
    } else {
        None
    };
    let rc2 = rc.clone();
    let user = who.user.clone();
    // On its own task: a client going away does not stop it halfway.
    tokio::spawn(async move {
        rc2.catalog
            .drop_table(&table)
            .await
            .map_err(|e| from_iceberg(&what, e))?;
        tracing::info!(user, table = %what, purge, "table dropped");
        if let Some(doomed) = doomed
            && let Err(e) = iceberg::drop_table_data(&doomed).await
        {
            // Unregistered already: what was not deleted is an orphan, not an error.
            tracing::warn!(table = %what, error = %e, "purging the dropped table's files stopped");
        }
        Ok::<_, ServingError>(())
    })
    .await
    .map_err(|e| ServingError::Door {
        door: "http",
        message: format!("dropping a table: {e}"),
    })??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `table` with a `FileIO` confined to the folder its catalog pointer lies in, refused when
/// its metadata names another location (rewritten behind the catalog's back).
fn confined(table: &Table) -> crate::Result<Table> {
    let pointer = table.metadata_location().unwrap_or_default();
    let folder = pointer
        .rsplit_once("/metadata/")
        .map(|(f, _)| f)
        .unwrap_or_default();
    if folder.is_empty() || table.metadata().location().trim_end_matches('/') != folder {
        return Err(ServingError::NotAllowed(format!(
            "{}: its metadata names location {}, the catalog keeps it in {folder}",
            table.identifier(),
            table.metadata().location()
        )));
    }
    Table::builder()
        .metadata(table.metadata().clone())
        .metadata_location(pointer.to_string())
        .identifier(table.identifier().clone())
        .file_io(catalog::storage::confined_file_io(table.file_io(), folder))
        .runtime(iceberg::Runtime::current())
        .build()
        .map_err(|e| ServingError::Iceberg(Box::new(e)))
}
