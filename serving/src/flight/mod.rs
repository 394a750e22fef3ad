//! The Arrow Flight SQL door (`arrow-flight`'s `FlightSqlService`): statements and
//! prepared statements with bound parameters, `GetSqlInfo`, `GetCatalogs`,
//! `GetDbSchemas`, `GetTables` (with schemas) and `GetTableTypes`, results streamed in
//! `DoGet` as the query produces them.
//!
//! Nothing is parked in server memory between calls: a ticket or prepared-statement handle
//! carries the statement (and its bound parameters) itself, and every call authenticates
//! and is authorized again by the one engine, so a handle grants nothing its bearer could
//! not ask for directly.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use catalog::CATALOG_NAME;
use datafusion::common::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

mod handle;

use handle::{Handle, handle_from, ipc_bytes, parameter_row, wants_consistent};

use crate::auth::{Authenticator, Principal};
use crate::engine::{QueryEngine, QueryOptions};
use crate::observed::Observed;
use crate::{Result, ServingError};

/// How long a token from the basic-auth handshake stays valid (a notebook's connection
/// lives about a working day; a lost token dies with the server, whose key is random).
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Largest message a client may send (a statement, a handle, bound parameters).
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Messages read while binding parameters before the client is cut off.
const MAX_PARAMETER_MESSAGES: usize = 16;

/// The Flight SQL door.
pub struct FlightDoor {
    engine: Arc<QueryEngine>,
    auth: Arc<Authenticator>,
    info: SqlInfoData,
}

impl FlightDoor {
    /// A door over `engine`, authenticating with `auth`.
    pub fn new(engine: Arc<QueryEngine>, auth: Arc<Authenticator>) -> Result<Self> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "BitVelocity");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(
            SqlInfo::FlightSqlServerStatementTimeout,
            engine.limits().query_timeout_secs.min(i32::MAX as u64) as i32,
        );
        let info = info.build()?;
        Ok(Self { engine, auth, info })
    }

    /// The gRPC service to mount on a tonic server.
    pub fn service(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    /// The caller, from `authorization: Bearer <token or key>` (or `Basic user:key`).
    #[allow(clippy::result_large_err)]
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "send credentials: a basic-auth handshake (user and key), or `authorization: Bearer <key>`",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let found = if let Some(token) = strip_scheme(header, "Bearer ") {
            self.auth.bearer(token.trim())
        } else if let Some(basic) = strip_scheme(header, "Basic ") {
            let (user, key) = basic_credentials(basic)?;
            self.auth.by_user_and_key(&user, &key)
        } else {
            Err(ServingError::Unauthenticated(
                "the authorization header must be `Bearer` or `Basic`".into(),
            ))
        };
        found.map_err(|e| {
            let metrics = self.engine.metrics();
            metrics.query_done("flight", "", e.code(), Duration::ZERO);
            status(e)
        })
    }

    /// Describes a statement for `who`; a refusal (denied, not a query, bad SQL, busy) is
    /// counted as that query's outcome, since clients prepare before they run.
    async fn describe(
        &self,
        who: &Principal,
        sql: &str,
        params: Vec<ScalarValue>,
        consistent: bool,
    ) -> Result<crate::engine::Described, Status> {
        let started = Instant::now();
        let options = QueryOptions {
            consistent,
            ..Default::default()
        };
        let described = self.engine.describe_with(who, sql, params, options).await;
        described.map_err(|e| {
            self.engine
                .metrics()
                .query_done("flight", &who.user, e.code(), started.elapsed());
            tracing::info!(door = "flight", user = %who.user, role = %who.role, outcome = e.code(), "query refused");
            status(e)
        })
    }

    /// Runs `handle`'s statement for `who` and streams the answer.
    async fn answer(
        &self,
        who: Principal,
        handle: Handle,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let started = Instant::now();
        let metrics = self.engine.metrics().clone();
        let params = match handle.params() {
            Ok(p) => p,
            Err(e) => {
                metrics.query_done("flight", &who.user, e.code(), started.elapsed());
                return Err(status(e));
            }
        };
        let options = QueryOptions {
            consistent: handle.consistent,
            ..Default::default()
        };
        let query = match self
            .engine
            .execute_with(&who, &handle.sql, params, options)
            .await
        {
            Ok(q) => q,
            Err(e) => {
                metrics.query_done("flight", &who.user, e.code(), started.elapsed());
                return Err(status(e));
            }
        };
        let position = query.position();
        let observed = Observed::new(query, metrics.clone(), "flight", &who, started);
        let schema = observed.schema();
        let counted = observed.bytes();
        let batches = observed.map_err(|e| FlightError::Tonic(Box::new(status(e))));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map(move |item| {
                if let Ok(data) = &item {
                    let n = (data.data_header.len() + data.data_body.len()) as u64;
                    metrics.sent("flight", n);
                    counted.fetch_add(n, Relaxed);
                }
                item.map_err(Status::from)
            });
        let mut response: Response<<Self as FlightService>::DoGetStream> =
            Response::new(Box::pin(data));
        if let Some(lsn) =
            position.and_then(|p| MetadataValue::try_from(ingestion::Lsn(p).to_string()).ok())
        {
            response
                .metadata_mut()
                .insert(crate::http::POSITION_HEADER, lsn);
        }
        Ok(response)
    }

    /// A catalog listing's `FlightInfo`, for an authenticated caller: its ticket is the
    /// command itself.
    #[allow(clippy::result_large_err)]
    fn listing_info(
        &self,
        schema: &Schema,
        command: Vec<u8>,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request)?;
        let info = Self::info_for(schema, command, request.into_inner())?;
        Ok(Response::new(info))
    }

    /// A `FlightInfo` answering `schema` with one endpoint whose ticket is `ticket`.
    #[allow(clippy::result_large_err)]
    fn info_for(
        schema: &Schema,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| status(e.into()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor))
    }
}

/// A batch sent whole as a `DoGet` answer (catalog listings, which are small).
fn one_batch(
    batch: std::result::Result<RecordBatch, FlightError>,
) -> Response<<FlightDoor as FlightService>::DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    header
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| &header[scheme.len()..])
}

/// `user:key` from a basic-auth value.
#[allow(clippy::result_large_err)]
fn basic_credentials(encoded: &str) -> Result<(String, String), Status> {
    // Padding optional: Arrow Go's client (under ADBC) sends unpadded base64.
    const BASIC: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = BASIC
        .decode(encoded.trim())
        .map_err(|_| Status::unauthenticated("basic credentials are not base64"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Status::unauthenticated("basic credentials are not UTF-8"))?;
    let (user, key) = text
        .split_once(':')
        .ok_or_else(|| Status::unauthenticated("basic credentials must be `user:key`"))?;
    Ok((user.to_string(), key.to_string()))
}

/// What every door's error becomes on this one.
pub fn status(e: ServingError) -> Status {
    let message = e.to_string();
    match e {
        ServingError::Unauthenticated(_) => Status::unauthenticated(message),
        ServingError::PermissionDenied(_) | ServingError::NotAllowed(_) => {
            Status::permission_denied(message)
        }
        ServingError::Busy { .. } | ServingError::ResourcesExhausted(_) => {
            Status::resource_exhausted(message)
        }
        ServingError::ShuttingDown | ServingError::NoConsistentPosition(_) => {
            Status::unavailable(message)
        }
        ServingError::Timeout(_) => Status::deadline_exceeded(message),
        ServingError::BadRequest(_) | ServingError::Query(_) => Status::invalid_argument(message),
        _ => Status::internal(message),
    }
}

/// A schema in the IPC form Flight SQL carries it in.
#[allow(clippy::result_large_err)]
fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &Default::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| status(e.into()))?;
    Ok(message.0)
}

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlightSqlService for FlightDoor {
    type FlightService = FlightDoor;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        // Only a user name and key: a token (ours or an outside issuer's) must never be
        // traded for a fresh one that outlives it.
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| strip_scheme(h, "Basic "))
            .ok_or_else(|| {
                Status::unauthenticated("the handshake takes basic credentials (user and key)")
            })?;
        let (user, key) = basic_credentials(header)?;
        let who = self.auth.by_user_and_key(&user, &key).map_err(status)?;
        let token = self.auth.issue(&who, SESSION_TTL).map_err(status)?;
        let bearer = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("the issued token is not a header value"))?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        };
        let mut response: Response<HandshakeStream> =
            Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = self.principal(&request)?;
        let consistent = wants_consistent(&request)?.unwrap_or(false);
        let described = self
            .describe(&who, &query.query, Vec::new(), consistent)
            .await?;
        let handle = Handle {
            sql: query.query,
            params: None,
            consistent,
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode().into(),
        };
        let info = Self::info_for(
            &described.schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let handle = handle_from(&ticket.statement_handle, &request)?;
        self.answer(who, handle).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let who = self.principal(&request)?;
        let consistent = wants_consistent(&request)?.unwrap_or(false);
        let described = self
            .describe(&who, &query.query, Vec::new(), consistent)
            .await?;
        let parameters = if described.parameters.is_empty() {
            Default::default()
        } else {
            let fields: Vec<Field> = described
                .parameters
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("${}", i + 1), t.clone(), true))
                .collect();
            schema_bytes(&Schema::new(fields))?
        };
        let handle = Handle {
            sql: query.query,
            params: None,
            consistent,
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode().into(),
            dataset_schema: schema_bytes(&described.schema)?,
            parameter_schema: parameters,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.principal(&request)?;
        let handle = handle_from(&query.prepared_statement_handle, &request)?;
        let data = request
            .into_inner()
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        let mut rows = Vec::new();
        let mut total = 0;
        // One row of parameters is a few messages; a client streaming more (even empty
        // batches) or stalling is cut off rather than holding the call open.
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.engine.limits().query_timeout_secs);
        for _ in 0..MAX_PARAMETER_MESSAGES {
            let next = tokio::time::timeout_at(deadline, batches.next())
                .await
                .map_err(|_| {
                    status(ServingError::BadRequest(
                        "bound parameters did not arrive in time".into(),
                    ))
                })?;
            let Some(batch) = next else {
                break;
            };
            let batch = batch.map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                e => status(ServingError::BadRequest(format!("bound parameters: {e}"))),
            })?;
            total += batch.num_rows();
            if total > 1 {
                break; // refused below, without reading the rest
            }
            if batch.num_rows() == 1 {
                rows.push(batch);
                break;
            }
        }
        if total > 1 {
            return Err(status(ServingError::BadRequest(
                "bind exactly one row of parameters to a query (got more)".into(),
            )));
        }
        parameter_row(&rows).map_err(status)?;
        let row = rows
            .into_iter()
            .find(|b| b.num_rows() == 1)
            .expect("one row checked above");
        let bound = Handle {
            sql: handle.sql,
            params: Some(ipc_bytes(&row).map_err(status)?),
            consistent: handle.consistent,
        };
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(bound.encode().into()),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = self.principal(&request)?;
        let handle = handle_from(&query.prepared_statement_handle, &request)?;
        let params = handle.params().map_err(status)?;
        let described = self
            .describe(&who, &handle.sql, params, handle.consistent)
            .await?;
        // The ticket carries the handle as asked for now (consistent or not).
        let ticket = CommandPreparedStatementQuery {
            prepared_statement_handle: handle.encode().into(),
        };
        let info = Self::info_for(
            &described.schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let handle = handle_from(&query.prepared_statement_handle, &request)?;
        self.answer(who, handle).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Nothing is held for a prepared statement; closing it frees nothing.
        self.principal(&request)?;
        Ok(())
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.principal(&request)?;
        Err(read_only())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.principal(&request)?;
        Err(read_only())
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.principal(&request)?;
        Err(read_only())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        self.listing_info(&schema, query.as_any().encode_to_vec(), request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        Ok(one_batch(query.into_builder(&self.info).build()))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.listing_info(&schema, query.as_any().encode_to_vec(), request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME);
        Ok(one_batch(builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.listing_info(&schema, query.as_any().encode_to_vec(), request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let tables = self.engine.tables(&who).await.map_err(status)?;
        let mut namespaces: Vec<&str> = tables.iter().map(|t| t.namespace.as_str()).collect();
        namespaces.dedup();
        let mut builder = query.into_builder();
        for ns in namespaces {
            builder.append(CATALOG_NAME, ns);
        }
        Ok(one_batch(builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.listing_info(&schema, query.as_any().encode_to_vec(), request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let who = self.principal(&request)?;
        let tables = self.engine.tables(&who).await.map_err(status)?;
        let mut builder = query.into_builder();
        for t in tables {
            let schema: SchemaRef = t.schema;
            builder
                .append(CATALOG_NAME, &t.namespace, &t.name, "TABLE", &schema)
                .map_err(|e| status(ServingError::Flight(e)))?;
        }
        Ok(one_batch(builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.listing_info(&schema, query.as_any().encode_to_vec(), request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        Ok(one_batch(builder.build()))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn read_only() -> Status {
    status(ServingError::NotAllowed(
        "this door only answers queries (the ingester owns bronze and silver; write other tables through the Iceberg REST catalog)".into(),
    ))
}
