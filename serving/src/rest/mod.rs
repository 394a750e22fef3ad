//! The Iceberg REST catalog on the HTTP door, at `/iceberg` (so `/iceberg/v1/config`,
//! `/iceberg/v1/namespaces`, ... as the Apache Iceberg REST OpenAPI spec names them), over
//! the same SQL catalog and compare-and-swap commit path as the ingester.
//!
//! Every request is authenticated (a bearer key or JWT, or a token from the OAuth2 client
//! credentials endpoint) and authorized against the role's globs, here and for every
//! client alike:
//! - a table the role may not read is answered 403 whether it exists or not, so names do
//!   not leak; a namespace likewise, by the namespace part of the role's grants;
//! - writes (namespaces, table creation, commits, drops) need a write grant, and the
//!   namespaces the platform itself writes (`bronze`, `silver`, `gold`) refuse them all;
//! - every file a commit adds must lie inside the table's own location
//!   ([`guard`]), so no table can make the doors read outside the warehouse or read
//!   another table's files past its grants.

mod guard;
mod namespaces;
mod tables;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use catalog::commit::CommitPath;
use catalog::{Catalog, NamespaceIdent, TableIdent, Warehouse};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Authenticator, Principal};
use crate::config::RestCatalogConfig;
use crate::metrics::ServeMetrics;
use crate::{Result, ServingError};

/// Namespaces only the platform writes: the ingester (`bronze`, `silver`) and the model
/// runner (`gold`). The REST catalog refuses every change to them.
pub const PLATFORM_NAMESPACES: [&str; 3] = ["bronze", "silver", "gold"];

/// The name clients give the warehouse (`ATTACH 'bitvelocity' ...`, `?warehouse=`).
pub const WAREHOUSE_NAME: &str = catalog::CATALOG_NAME;

/// The REST catalog: what its handlers share.
pub struct RestCatalog {
    catalog: Arc<dyn Catalog>,
    commit: CommitPath,
    /// The warehouse URL without a trailing `/` (`file:///...` or `s3://bucket/prefix`).
    root: String,
    /// `s3.*` properties clients need to reach the files (credentials only when vended).
    storage_config: HashMap<String, String>,
    auth: Arc<Authenticator>,
    metrics: Arc<ServeMetrics>,
    config: RestCatalogConfig,
}

impl std::fmt::Debug for RestCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCatalog")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Storage properties a REST client may be given: where the store is and how to address
/// it; the credentials too when `vend` is set.
fn client_storage_config(props: &HashMap<String, String>, vend: bool) -> HashMap<String, String> {
    const LOCATING: [&str; 3] = ["s3.endpoint", "s3.region", "s3.path-style-access"];
    const SECRET: [&str; 3] = [
        "s3.access-key-id",
        "s3.secret-access-key",
        "s3.session-token",
    ];
    props
        .iter()
        .filter(|(k, _)| LOCATING.contains(&k.as_str()) || (vend && SECRET.contains(&k.as_str())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl RestCatalog {
    /// The REST catalog over `warehouse` (whose catalog is `catalog`).
    pub async fn new(
        warehouse: &Warehouse,
        catalog: Arc<dyn Catalog>,
        auth: Arc<Authenticator>,
        metrics: Arc<ServeMetrics>,
        config: RestCatalogConfig,
    ) -> Result<Self> {
        let storage_config = match warehouse.location() {
            catalog::Location::S3 { .. } => {
                client_storage_config(warehouse.storage_props(), config.vend_credentials)
            }
            catalog::Location::Local(_) => HashMap::new(),
        };
        Ok(Self {
            commit: warehouse.commit_path().await?,
            catalog,
            root: warehouse.url().trim_end_matches('/').to_string(),
            storage_config,
            auth,
            metrics,
            config,
        })
    }

    /// The routes, to be nested at `/iceberg` on the HTTP door.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/config", get(config))
            .route("/v1/oauth/tokens", post(oauth_tokens))
            .route(
                "/v1/namespaces",
                get(namespaces::list).post(namespaces::create),
            )
            .route(
                "/v1/namespaces/{namespace}",
                get(namespaces::load)
                    .head(namespaces::exists)
                    .delete(namespaces::drop),
            )
            .route(
                "/v1/namespaces/{namespace}/properties",
                post(namespaces::update_properties),
            )
            .route(
                "/v1/namespaces/{namespace}/tables",
                get(tables::list).post(tables::create),
            )
            .route(
                "/v1/namespaces/{namespace}/tables/{table}",
                get(tables::load)
                    .head(tables::exists)
                    .post(tables::commit)
                    .delete(tables::drop),
            )
            .route(
                "/v1/namespaces/{namespace}/tables/{table}/metrics",
                post(tables::report_metrics),
            )
            .fallback(no_route)
            .layer(axum::middleware::from_fn_with_state(self.clone(), counted))
            .with_state(self)
    }

    /// The caller of a request.
    fn who(&self, headers: &HeaderMap) -> Result<Principal> {
        crate::http::principal(&self.auth, headers)
    }

    /// The namespace named in a path (single level: nested namespaces are refused).
    fn namespace(&self, text: &str) -> Result<NamespaceIdent> {
        namespace_ident(text)
    }

    /// Whether `who` may see namespace `ns`: it may change the whole namespace, or it may
    /// see one of its tables. An unknown namespace is seen only by who may create it, so
    /// its existence leaks to no one else.
    async fn sees_namespace(&self, who: &Principal, ns: &NamespaceIdent) -> bool {
        if self.owns_namespace(who, ns) {
            return true;
        }
        match self.catalog.list_tables(ns).await {
            Ok(tables) => tables.iter().any(|t| self.may_see_table(who, t).is_ok()),
            Err(_) => false,
        }
    }

    /// Refuses `who` a namespace it may not see; 403 whether or not it exists.
    async fn may_see_namespace(&self, who: &Principal, ns: &NamespaceIdent) -> Result<()> {
        if self.sees_namespace(who, ns).await {
            Ok(())
        } else {
            Err(ServingError::NamespaceDenied(ns_name(ns)))
        }
    }

    /// Whether `who` holds a grant of the whole namespace `ns` outside the platform's.
    fn owns_namespace(&self, who: &Principal, ns: &NamespaceIdent) -> bool {
        let name = ns_name(ns);
        !PLATFORM_NAMESPACES.contains(&name.as_str()) && who.grants.can_write_namespace(&name)
    }

    /// Refuses `who` changes to a namespace.
    fn may_write_namespace(&self, who: &Principal, ns: &NamespaceIdent) -> Result<()> {
        let name = ns_name(ns);
        if PLATFORM_NAMESPACES.contains(&name.as_str()) {
            return Err(ServingError::NotAllowed(format!(
                "namespace {name} is written by the platform only"
            )));
        }
        if !self.owns_namespace(who, ns) {
            return Err(ServingError::NamespaceDenied(name));
        }
        Ok(())
    }

    /// Refuses `who` a table it may not read (a write grant counts outside the platform's
    /// namespaces); 403 whether or not it exists.
    fn may_see_table(&self, who: &Principal, table: &TableIdent) -> Result<()> {
        let name = table_name(table);
        let platform = PLATFORM_NAMESPACES.contains(&ns_name(table.namespace()).as_str());
        if who.grants.can_read(&name) || (!platform && who.grants.can_write(&name)) {
            Ok(())
        } else {
            Err(ServingError::PermissionDenied(name))
        }
    }

    /// Refuses `who` changes to a table.
    fn may_write_table(&self, who: &Principal, table: &TableIdent) -> Result<()> {
        self.may_see_table(who, table)?;
        let name = table_name(table);
        let ns = ns_name(table.namespace());
        if PLATFORM_NAMESPACES.contains(&ns.as_str()) {
            return Err(ServingError::NotAllowed(format!(
                "{name} is written by the platform only (namespace {ns})"
            )));
        }
        if !who.grants.can_write(&name) {
            return Err(ServingError::PermissionDenied(name));
        }
        Ok(())
    }
}

/// `ns` as one name.
fn ns_name(ns: &NamespaceIdent) -> String {
    ns.as_ref().join(".")
}

/// `namespace.table`, as grants name it.
fn table_name(t: &TableIdent) -> String {
    format!("{}.{}", ns_name(t.namespace()), t.name())
}

/// A namespace from its path form; the spec joins levels with the unit separator (0x1F).
fn namespace_ident(text: &str) -> Result<NamespaceIdent> {
    if text.is_empty() {
        return Err(ServingError::BadRequest("an empty namespace name".into()));
    }
    if text.contains('\u{1f}') {
        return Err(ServingError::Unsupported(
            "nested namespaces: this catalog has one level of namespaces".into(),
        ));
    }
    Ok(NamespaceIdent::new(text.to_string()))
}

/// An iceberg error as what the REST catalog answers, for `what` (a table or namespace).
fn from_iceberg(what: &str, e: iceberg::Error) -> ServingError {
    use iceberg::ErrorKind;
    match e.kind() {
        ErrorKind::NamespaceNotFound => ServingError::NoSuchNamespace(what.to_string()),
        ErrorKind::TableNotFound => ServingError::NoSuchTable(what.to_string()),
        ErrorKind::NamespaceAlreadyExists | ErrorKind::TableAlreadyExists => {
            ServingError::AlreadyExists(what.to_string())
        }
        ErrorKind::CatalogCommitConflicts => ServingError::CommitConflict(e.to_string()),
        _ => ServingError::Iceberg(Box::new(e)),
    }
}

/// A REST error answer: `{"error": {"message", "type", "code"}}` with the spec's types.
struct RestFailure(ServingError);

impl From<ServingError> for RestFailure {
    fn from(e: ServingError) -> Self {
        RestFailure(e)
    }
}

impl IntoResponse for RestFailure {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, kind) = match &e {
            ServingError::Unauthenticated(_) => {
                (StatusCode::UNAUTHORIZED, "NotAuthorizedException")
            }
            ServingError::PermissionDenied(_)
            | ServingError::NamespaceDenied(_)
            | ServingError::NotAllowed(_) => (StatusCode::FORBIDDEN, "ForbiddenException"),
            ServingError::NoSuchNamespace(_) => (StatusCode::NOT_FOUND, "NoSuchNamespaceException"),
            ServingError::NoSuchTable(_) => (StatusCode::NOT_FOUND, "NoSuchTableException"),
            ServingError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExistsException"),
            ServingError::NamespaceNotEmpty(_) => {
                (StatusCode::CONFLICT, "NamespaceNotEmptyException")
            }
            ServingError::CommitConflict(_) => (StatusCode::CONFLICT, "CommitFailedException"),
            // 500 tells clients (pyiceberg, Java) the state is unknown: never clean up.
            ServingError::CommitOutcomeUnknown(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "CommitStateUnknownException",
            ),
            ServingError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequestException"),
            ServingError::Unsupported(_) => {
                (StatusCode::NOT_ACCEPTABLE, "UnsupportedOperationException")
            }
            ServingError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
            ),
            _ => {
                tracing::error!(error = %e, "REST catalog request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
            }
        };
        let body = json!({
            "error": { "message": e.to_string(), "type": kind, "code": status.as_u16() }
        });
        crate::http::error_response(status, body)
    }
}

/// What handlers return.
type Answer = std::result::Result<Response, RestFailure>;

/// Counts every REST request by outcome and latency, under the door name `rest`.
async fn counted(State(rc): State<Arc<RestCatalog>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let outcome = match response.status().as_u16() {
        200..=299 => "ok",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "conflict",
        400..=499 => "bad_request",
        _ => "error",
    };
    rc.metrics
        .query_done("rest", "", outcome, started.elapsed());
    response
}

/// Any other path: 404 in the REST error form.
async fn no_route(uri: axum::http::Uri) -> Response {
    let body = json!({ "error": {
        "message": format!("no such route in the Iceberg REST catalog: {}", uri.path()),
        "type": "NotFoundException",
        "code": 404,
    }});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// `GET /v1/config?warehouse=`: no overrides, and the routes this server carries out.
async fn config(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Answer {
    rc.who(&headers)?;
    if let Some(w) = q.get("warehouse")
        && !w.is_empty()
        && w != WAREHOUSE_NAME
        && w.trim_end_matches('/') != rc.root
    {
        return Err(ServingError::BadRequest(format!(
            "unknown warehouse {w:?}: this server's is {WAREHOUSE_NAME:?}"
        ))
        .into());
    }
    let endpoints = [
        "GET /v1/{prefix}/namespaces",
        "POST /v1/{prefix}/namespaces",
        "GET /v1/{prefix}/namespaces/{namespace}",
        "HEAD /v1/{prefix}/namespaces/{namespace}",
        "DELETE /v1/{prefix}/namespaces/{namespace}",
        "POST /v1/{prefix}/namespaces/{namespace}/properties",
        "GET /v1/{prefix}/namespaces/{namespace}/tables",
        "POST /v1/{prefix}/namespaces/{namespace}/tables",
        "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
        "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
        "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}",
        "DELETE /v1/{prefix}/namespaces/{namespace}/tables/{table}",
        "POST /v1/{prefix}/namespaces/{namespace}/tables/{table}/metrics",
    ];
    Ok(axum::Json(json!({
        "defaults": {},
        "overrides": {},
        "endpoints": endpoints,
    }))
    .into_response())
}

/// The form of `POST /v1/oauth/tokens` (RFC 6749 client credentials).
#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// An OAuth2 error answer (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// `POST /v1/oauth/tokens`: client credentials (client id = user, secret = its key, in the
/// form or as HTTP Basic) for a short-lived bearer token of that user.
async fn oauth_tokens(
    State(rc): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: TokenRequest = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("the form: {e}"),
            );
        }
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is accepted",
        );
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, k)| (u.to_string(), k.to_string()))
        });
    let (user, key) = match (basic, form.client_id, form.client_secret) {
        (Some(pair), _, _) => pair,
        (None, Some(u), Some(k)) => (u, k),
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "send client_id (the user) and client_secret (its key)",
            );
        }
    };
    let who = match rc.auth.by_user_and_key(&user, &key) {
        Ok(p) => p,
        Err(e) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", &e.to_string()),
    };
    let ttl = Duration::from_secs(rc.config.token_ttl_secs);
    match rc.auth.issue(&who, ttl) {
        Ok(token) => axum::Json(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl.as_secs(),
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }))
        .into_response(),
        Err(e) => oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_one_level() {
        assert_eq!(namespace_ident("sandbox").unwrap().as_ref(), &["sandbox"]);
        assert!(matches!(
            namespace_ident("a\u{1f}b"),
            Err(ServingError::Unsupported(_))
        ));
        assert!(matches!(
            namespace_ident(""),
            Err(ServingError::BadRequest(_))
        ));
    }

    #[test]
    fn credentials_are_vended_only_when_configured() {
        let props: HashMap<String, String> = [
            ("s3.endpoint", "http://127.0.0.1:9000"),
            ("s3.region", "us-east-1"),
            ("s3.path-style-access", "true"),
            ("s3.access-key-id", "AK"),
            ("s3.secret-access-key", "SK"),
            ("s3.something-else", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let kept = client_storage_config(&props, false);
        assert_eq!(kept.len(), 3);
        assert!(!kept.contains_key("s3.secret-access-key"));
        let vended = client_storage_config(&props, true);
        assert_eq!(vended.len(), 5);
        assert_eq!(vended["s3.access-key-id"], "AK");
    }
}
