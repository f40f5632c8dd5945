//! Arrow Flight SQL on the room, so ADBC and JDBC clients can query (DESIGN §4, §6).
//!
//! Same policy, same audit, same code path as the gRPC `Query` service: every statement goes
//! through [`Room::query`]. Authentication:
//! - `authorization: Bearer <token>` on every call, the token coming from the gRPC `Auth`
//!   service (e.g. `accord query --print-token`) — what ADBC and JDBC drivers send; or
//! - the Flight handshake, as two round trips of JSON payloads:
//!   1. `{"agreement": "...", "analyst": "...", "public_key": "<64 hex>", "client_nonce": "<64 hex>"}`
//!      → `{"room_nonce": "<hex>", "room_public_key": "<hex>"}` (`analyst` may be empty: the
//!      room takes the name the agreement gives the key; nothing about the agreement is
//!      revealed before the proof)
//!   2. `{"signature": "<128 hex>"}` (the `auth-challenge` signature) → the session token
//!      as the payload, also in the `authorization` response header.
//!
//! Tickets are opaque random ids bound to the session that asked for them, single use, and
//! expire after five minutes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accord_proto::limits::MAX_NAME_PATTERN_BYTES;
use arrow::datatypes::Schema;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, Ticket,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};

use crate::error::RoomError;
use crate::room::{QueryResult, Room};

const TICKET_TTL: Duration = Duration::from_secs(300);
const MAX_TICKETS: usize = 10_000;

#[derive(Debug)]
struct PendingTicket {
    fingerprint: accord_agreement::Fingerprint,
    analyst: String,
    /// SHA-256 of the bearer token of the session that asked for the ticket.
    session: [u8; 32],
    sql: String,
    expires: Instant,
}

/// The Flight SQL face of the room.
#[derive(Clone)]
pub(crate) struct FlightRoom {
    room: Room,
    tickets: Arc<Mutex<HashMap<[u8; 16], PendingTicket>>>,
    sql_info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for FlightRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightRoom")
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

/// The tonic service to mount.
pub(crate) fn service(room: Room) -> Result<FlightServiceServer<FlightRoom>, RoomError> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "Accord clean room");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    let sql_info = info
        .build()
        .map_err(|e| RoomError::Internal(format!("Flight SQL info: {e}")))?;
    Ok(FlightServiceServer::new(FlightRoom {
        room,
        tickets: Arc::default(),
        sql_info: Arc::new(sql_info),
    })
    .max_decoding_message_size(crate::limits::FLIGHT_SQL_MESSAGE_BYTES))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn status(e: RoomError) -> Status {
    crate::grpc::to_status(&e)
}

#[derive(Debug, Deserialize)]
struct HandshakeHello {
    agreement: String,
    #[serde(default)]
    analyst: String,
    public_key: String,
    client_nonce: String,
}

#[derive(Debug, Serialize)]
struct HandshakeChallenge {
    room_nonce: String,
    room_public_key: String,
}

#[derive(Debug, Deserialize)]
struct HandshakeProof {
    signature: String,
}

fn hex_field(name: &str, value: &str) -> Result<Vec<u8>, Status> {
    hex::decode(value)
        .map_err(|_| Status::invalid_argument(format!("handshake: {name} must be hex")))
}

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;
type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

impl FlightRoom {
    fn analyst(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(Arc<crate::room::Slot>, String), Status> {
        crate::grpc::analyst_call(&self.room, metadata).map_err(status)
    }

    /// Names the caller's session without keeping its token: tickets are bound to it.
    fn session_tag(metadata: &tonic::metadata::MetadataMap) -> Result<[u8; 32], Status> {
        use sha2::{Digest, Sha256};
        let token = crate::grpc::bearer(metadata).map_err(status)?;
        Ok(Sha256::digest(token.as_bytes()).into())
    }

    fn batch_stream(schema: Arc<Schema>, batches: Vec<arrow::array::RecordBatch>) -> DoGetStream {
        let input = futures::stream::iter(batches.into_iter().map(Ok::<_, FlightError>));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(input)
            .map_err(Status::from);
        Box::pin(stream)
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightRoom {
    type FlightService = FlightRoom;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("handshake: expected a hello message"))?;
        let hello: HandshakeHello = serde_json::from_slice(&first.payload).map_err(|e| {
            Status::invalid_argument(format!(
                "handshake: the first payload must be JSON {{agreement, analyst, public_key, client_nonce}}: {e}"
            ))
        })?;
        let client_nonce = hex_field("client_nonce", &hello.client_nonce)?;
        let public_key = hex_field("public_key", &hello.public_key)?;
        let principal = crate::api::Principal::Analyst(hello.analyst.clone());
        let challenge = self
            .room
            .challenge(crate::api::ChallengeRequest {
                agreement: hello.agreement.clone(),
                principal: Some(principal.clone()),
                client_nonce: client_nonce.clone(),
                public_key: public_key.clone(),
            })
            .map_err(status)?;
        let reply = HandshakeChallenge {
            room_nonce: hex::encode(challenge.room_nonce),
            room_public_key: hex::encode(challenge.room_public_key),
        };
        let room = self.room.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<HandshakeResponse, Status>>(2);
        let first_reply =
            serde_json::to_vec(&reply).map_err(|e| Status::internal(e.to_string()))?;
        tx.send(Ok(HandshakeResponse {
            protocol_version: 0,
            payload: first_reply.into(),
        }))
        .await
        .map_err(|_| Status::internal("handshake channel closed"))?;
        tokio::spawn(async move {
            let result = async {
                let proof = stream.message().await?.ok_or_else(|| {
                    Status::invalid_argument("handshake: expected the signed challenge")
                })?;
                let proof: HandshakeProof =
                    serde_json::from_slice(&proof.payload).map_err(|e| {
                        Status::invalid_argument(format!(
                            "handshake: the second payload must be JSON {{signature}}: {e}"
                        ))
                    })?;
                let signature = hex_field("signature", &proof.signature)?;
                let auth = room
                    .authenticate(crate::api::AuthenticateRequest {
                        agreement: hello.agreement,
                        principal: Some(principal),
                        room_nonce: challenge.room_nonce.to_vec(),
                        client_nonce,
                        signature,
                        public_key,
                    })
                    .map_err(status)?;
                Ok::<_, Status>(HandshakeResponse {
                    protocol_version: 0,
                    payload: auth.session_token.into_bytes().into(),
                })
            }
            .await;
            let _ = tx.send(result).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (slot, analyst) = self.analyst(request.metadata())?;
        let session = Self::session_tag(request.metadata())?;
        let sql = query.query;
        match self.room.query_schema(&slot, &sql).await.map_err(status)? {
            Ok(schema) => {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id)
                    .map_err(|e| Status::internal(format!("randomness: {e}")))?;
                {
                    let mut tickets = lock(&self.tickets);
                    let now = Instant::now();
                    tickets.retain(|_, t| t.expires > now);
                    if tickets.len() >= MAX_TICKETS {
                        return Err(Status::resource_exhausted(
                            "too many outstanding tickets; fetch or let them expire",
                        ));
                    }
                    tickets.insert(
                        id,
                        PendingTicket {
                            fingerprint: slot.agreement.fingerprint(),
                            analyst,
                            session,
                            sql,
                            expires: now + TICKET_TTL,
                        },
                    );
                }
                let ticket = TicketStatementQuery {
                    statement_handle: id.to_vec().into(),
                };
                let endpoint =
                    FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
                let info = FlightInfo::new()
                    .try_with_schema(&schema)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .with_endpoint(endpoint)
                    .with_descriptor(request.into_inner());
                Ok(Response::new(info))
            }
            Err(_) => {
                // Run it through the one query path so the refusal is logged like any other.
                match self
                    .room
                    .query(&slot, &analyst, &sql, |_| Ok(()))
                    .await
                    .map_err(status)?
                {
                    QueryResult::Refused { rule, message, .. } => Err(Status::invalid_argument(
                        format!("query refused [{rule}]: {message}"),
                    )),
                    QueryResult::Answered { .. } => Err(Status::internal(
                        "the policy gave two answers for one query",
                    )),
                }
            }
        }
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (slot, analyst) = self.analyst(request.metadata())?;
        let session = Self::session_tag(request.metadata())?;
        let id: [u8; 16] = ticket
            .statement_handle
            .as_ref()
            .try_into()
            .map_err(|_| Status::invalid_argument("unknown ticket"))?;
        let pending = {
            let mut tickets = lock(&self.tickets);
            let Some(found) = tickets.get(&id) else {
                return Err(Status::not_found(
                    "unknown, used or expired ticket: ask for a new one with GetFlightInfo",
                ));
            };
            // Checked before it is spent, so another session cannot burn someone's ticket.
            if found.fingerprint != slot.agreement.fingerprint()
                || found.analyst != analyst
                || found.session != session
            {
                return Err(Status::permission_denied(
                    "this ticket belongs to another session",
                ));
            }
            tickets
                .remove(&id)
                .ok_or_else(|| Status::internal("ticket vanished"))?
        };
        if pending.expires <= Instant::now() {
            return Err(Status::not_found(
                "expired ticket: ask for a new one with GetFlightInfo",
            ));
        }
        let result = self
            .room
            .query(&slot, &analyst, &pending.sql, |answer| {
                Ok((answer.schema.clone(), answer.batches.clone()))
            })
            .await
            .map_err(status)?;
        match result {
            QueryResult::Answered {
                value: (schema, batches),
                ..
            } => Ok(Response::new(Self::batch_stream(schema, batches))),
            QueryResult::Refused { rule, message, .. } => Err(Status::invalid_argument(format!(
                "query refused [{rule}]: {message}"
            ))),
        }
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(request.metadata())?;
        check_tables_filters(&query)?;
        let schema = query.clone().into_builder().schema();
        metadata_info(
            query.as_any().encode_to_vec(),
            &schema,
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (slot, _) = self.analyst(request.metadata())?;
        check_tables_filters(&query)?;
        let table_schema = self.room.overlap_schema(&slot).await.map_err(status)?;
        let name_matches = query
            .table_name_filter_pattern
            .as_deref()
            .is_none_or(|p| like(p, "overlap"));
        let type_matches =
            query.table_types.is_empty() || query.table_types.iter().any(|t| t == "TABLE");
        let mut builder = query.into_builder();
        if name_matches && type_matches {
            builder
                .append("", "", "overlap", "TABLE", &table_schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(request.metadata())?;
        metadata_info(
            query.as_any().encode_to_vec(),
            &table_types_schema(),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.analyst(request.metadata())?;
        let schema = Arc::new(table_types_schema());
        let batch = arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::StringArray::from(vec!["TABLE"]))],
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(request.metadata())?;
        check_schemas_filters(&query)?;
        let schema = query.clone().into_builder().schema();
        metadata_info(
            query.as_any().encode_to_vec(),
            &schema,
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.analyst(request.metadata())?;
        check_schemas_filters(&query)?;
        let mut builder = query.into_builder();
        builder.append("", "");
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.analyst(request.metadata())?;
        metadata_info(
            query.as_any().encode_to_vec(),
            query.into_builder(&self.sql_info).schema().as_ref(),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.analyst(request.metadata())?;
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(Self::batch_stream(schema, vec![batch])))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The schema of `GetTableTypes` results.
fn table_types_schema() -> Schema {
    Schema::new(vec![arrow::datatypes::Field::new(
        "table_type",
        arrow::datatypes::DataType::Utf8,
        false,
    )])
}

/// A FlightInfo whose one endpoint's ticket is the metadata command itself.
fn metadata_info(
    ticket: Vec<u8>,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// Refuses a Flight SQL name filter longer than [`MAX_NAME_PATTERN_BYTES`].
fn check_name_filter(field: &str, value: Option<&str>) -> Result<(), Status> {
    match value {
        Some(v) if v.len() > MAX_NAME_PATTERN_BYTES => Err(Status::invalid_argument(format!(
            "{field} is {} bytes long; the limit is {MAX_NAME_PATTERN_BYTES} bytes (the only table is overlap, in the schema \"\")",
            v.len()
        ))),
        _ => Ok(()),
    }
}

fn check_tables_filters(query: &CommandGetTables) -> Result<(), Status> {
    check_name_filter("the catalog", query.catalog.as_deref())?;
    check_name_filter(
        "the db_schema_filter_pattern",
        query.db_schema_filter_pattern.as_deref(),
    )?;
    check_name_filter(
        "the table_name_filter_pattern",
        query.table_name_filter_pattern.as_deref(),
    )
}

fn check_schemas_filters(query: &CommandGetDbSchemas) -> Result<(), Status> {
    check_name_filter("the catalog", query.catalog.as_deref())?;
    check_name_filter(
        "the db_schema_filter_pattern",
        query.db_schema_filter_pattern.as_deref(),
    )
}

/// SQL LIKE with `%` (any run) and `_` (one character), for Flight SQL's table name filter.
///
/// Greedy matching that remembers only the last `%` to fall back to: at worst
/// O(pattern × text) steps, never the exponential backtracking of trying every split for
/// every `%` (a pattern of a few dozen `%` used to keep a core busy for minutes). With the
/// text fixed (`overlap`) and the pattern capped, the time is linear in the pattern.
fn like(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // After the last `%` seen: the pattern position following it, and the text position
    // the `%` currently stretches to.
    let mut fallback: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('%') => {
                fallback = Some((pi + 1, ti));
                pi += 1;
            }
            Some(&c) if c == '_' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match fallback {
                // Let the last `%` swallow one more character and retry from there.
                Some((after, stretched)) => {
                    fallback = Some((after, stretched + 1));
                    pi = after;
                    ti = stretched + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '%')
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_patterns() {
        let cases = [
            ("%", "overlap", true),
            ("over%", "overlap", true),
            ("_verlap", "overlap", true),
            ("other", "overlap", false),
            ("overlap", "overlap", true),
            ("overla", "overlap", false),
            ("overlapp", "overlap", false),
            ("%lap", "overlap", true),
            ("%l%p", "overlap", true),
            ("%x%", "overlap", false),
            ("o%a_", "overlap", true),
            ("o%a__", "overlap", false),
            ("%%%", "", true),
            ("_", "", false),
            ("", "", true),
            ("", "overlap", false),
            ("%o%e%l%a%p%", "overlap", true),
            ("%p%o", "overlap", false),
            ("%erl%", "overlap", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(like(pattern, text), expected, "{pattern:?} LIKE {text:?}");
        }
    }

    /// A pattern of many `%` used to take exponential time; the answer must come (the cap
    /// on pattern length keeps the input bounded).
    #[test]
    fn many_percent_signs_are_matched_in_linear_time() {
        let max = accord_proto::limits::MAX_NAME_PATTERN_BYTES;
        let no = format!("{}x", "%".repeat(max - 1));
        assert!(!like(&no, "overlap"));
        let yes = format!("{}overlap", "%".repeat(max - 7));
        assert!(like(&yes, "overlap"));
        let interleaved = format!("{}%p", "%_".repeat((max - 2) / 2));
        assert!(!like(&interleaved, "overlap"));
        let long_text = "o".repeat(10_000);
        assert!(!like(&format!("{}x", "%".repeat(max - 1)), &long_text));
    }
}
