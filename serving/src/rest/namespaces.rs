//! Namespaces: list, create, load, exists, drop, properties. A role sees the namespaces the
//! namespace part of its grants covers; it changes only those its write grants cover,
//! never the platform's.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{Answer, PLATFORM_NAMESPACES, RestCatalog, from_iceberg, ns_name};
use crate::ServingError;

/// Names the SQL doors use for their own catalogs (grants are not checked in them).
const RESERVED_NAMES: [&str; 2] = ["information_schema", "pg_catalog"];

/// Namespace properties a client may not set: where tables go is the warehouse's choice.
const FIXED_PROPERTIES: [&str; 1] = ["location"];

/// `GET /v1/namespaces[?parent=]`: the namespaces the caller may see.
pub(super) async fn list(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let who = rc.who(&headers)?;
    if let Some(parent) = q.get("parent").filter(|p| !p.is_empty()) {
        // One level only: a visible parent has no children.
        let parent = rc.namespace(parent)?;
        rc.may_see_namespace(&who, &parent).await?;
        if !rc
            .catalog
            .namespace_exists(&parent)
            .await
            .map_err(|e| from_iceberg(&ns_name(&parent), e))?
        {
            return Err(ServingError::NoSuchNamespace(ns_name(&parent)).into());
        }
        return Ok(axum::Json(json!({ "namespaces": [] })).into_response());
    }
    let all = rc
        .catalog
        .list_namespaces(None)
        .await
        .map_err(|e| from_iceberg("namespaces", e))?;
    let mut shown: Vec<Vec<String>> = Vec::new();
    for ns in &all {
        if rc.sees_namespace(&who, ns).await {
            shown.push(ns.as_ref().clone());
        }
    }
    shown.sort();
    Ok(axum::Json(json!({ "namespaces": shown })).into_response())
}

/// The body of `POST /v1/namespaces`.
#[derive(Debug, Deserialize)]
struct CreateNamespace {
    namespace: Vec<String>,
    #[serde(default)]
    properties: HashMap<String, String>,
}

/// Refuses properties the warehouse fixes.
fn check_properties<'a>(keys: impl IntoIterator<Item = &'a String>) -> crate::Result<()> {
    for k in keys {
        if FIXED_PROPERTIES.contains(&k.as_str()) {
            return Err(ServingError::NotAllowed(format!(
                "namespace property {k:?} is fixed by the warehouse"
            )));
        }
    }
    Ok(())
}

/// A name this catalog creates (namespaces and tables become folders of the warehouse).
pub(super) fn check_new_name(kind: &str, name: &str) -> crate::Result<()> {
    // Lower case only: SQL folds unquoted names to it, and a case-insensitive file system
    // must not see `Silver` as `silver`.
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    if !ok {
        return Err(ServingError::BadRequest(format!(
            "{kind} name {name:?}: use 1 to 128 lower-case letters, digits, `_` or `-` (not first)"
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(ServingError::NotAllowed(format!(
            "{kind} name {name:?} is reserved for the SQL doors' own catalogs"
        )));
    }
    Ok(())
}

/// `POST /v1/namespaces`.
pub(super) async fn create(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer {
    let who = rc.who(&headers)?;
    let request: CreateNamespace = serde_json::from_slice(&body)
        .map_err(|e| ServingError::BadRequest(format!("the request body: {e}")))?;
    let [name] = request.namespace.as_slice() else {
        return Err(ServingError::Unsupported(
            "nested namespaces: this catalog has one level of namespaces".into(),
        )
        .into());
    };
    let ns = rc.namespace(name)?;
    rc.may_write_namespace(&who, &ns)?;
    check_new_name("namespace", name)?;
    check_properties(request.properties.keys())?;
    let created = rc
        .catalog
        .create_namespace(&ns, request.properties)
        .await
        .map_err(|e| from_iceberg(name, e))?;
    tracing::info!(user = %who.user, namespace = %name, "namespace created");
    Ok(axum::Json(json!({
        "namespace": created.name().as_ref(),
        "properties": created.properties(),
    }))
    .into_response())
}

/// `GET /v1/namespaces/{namespace}`.
pub(super) async fn load(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Answer {
    let who = rc.who(&headers)?;
    let ns = rc.namespace(&namespace)?;
    rc.may_see_namespace(&who, &ns).await?;
    let found = rc
        .catalog
        .get_namespace(&ns)
        .await
        .map_err(|e| from_iceberg(&namespace, e))?;
    Ok(axum::Json(json!({
        "namespace": found.name().as_ref(),
        "properties": found.properties(),
    }))
    .into_response())
}

/// `HEAD /v1/namespaces/{namespace}`: 204 or 404 (403 when the caller may not see it).
pub(super) async fn exists(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Answer {
    let who = rc.who(&headers)?;
    let ns = rc.namespace(&namespace)?;
    rc.may_see_namespace(&who, &ns).await?;
    let found = rc
        .catalog
        .namespace_exists(&ns)
        .await
        .map_err(|e| from_iceberg(&namespace, e))?;
    Ok(if found {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
    .into_response())
}

/// `DELETE /v1/namespaces/{namespace}`: only an empty one.
pub(super) async fn drop(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
) -> Answer {
    let who = rc.who(&headers)?;
    let ns = rc.namespace(&namespace)?;
    rc.may_write_namespace(&who, &ns)?;
    let tables = rc
        .catalog
        .list_tables(&ns)
        .await
        .map_err(|e| from_iceberg(&namespace, e))?;
    if !tables.is_empty() {
        return Err(ServingError::NamespaceNotEmpty(namespace).into());
    }
    rc.catalog
        .drop_namespace(&ns)
        .await
        .map_err(|e| from_iceberg(&namespace, e))?;
    tracing::info!(user = %who.user, namespace = %namespace, "namespace dropped");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `POST /v1/namespaces/{namespace}/properties`.
#[derive(Debug, Deserialize)]
struct UpdateProperties {
    #[serde(default)]
    removals: Vec<String>,
    #[serde(default)]
    updates: HashMap<String, String>,
}

/// `POST /v1/namespaces/{namespace}/properties`: sets properties (removal is not offered
/// by the SQL catalog, so a request with removals is refused whole).
pub(super) async fn update_properties(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let who = rc.who(&headers)?;
    let ns = rc.namespace(&namespace)?;
    rc.may_write_namespace(&who, &ns)?;
    debug_assert!(!PLATFORM_NAMESPACES.contains(&namespace.as_str()));
    let request: UpdateProperties = serde_json::from_slice(&body)
        .map_err(|e| ServingError::BadRequest(format!("the request body: {e}")))?;
    if !request.removals.is_empty() {
        return Err(ServingError::Unsupported(
            "removing namespace properties (set them to a new value instead)".into(),
        )
        .into());
    }
    check_properties(request.updates.keys())?;
    let mut updated: Vec<&String> = request.updates.keys().collect();
    updated.sort();
    rc.catalog
        .update_namespace(&ns, request.updates.clone())
        .await
        .map_err(|e| from_iceberg(&namespace, e))?;
    Ok(axum::Json(json!({ "updated": updated, "removed": [], "missing": [] })).into_response())
}
