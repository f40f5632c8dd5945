//! Thin gRPC wrappers over [`Room`]: read the session from the request metadata, decode,
//! call, and map errors to gRPC status codes in one place. The room itself never sees tonic.

use std::pin::Pin;

use accord_proto::v1::{
    self, agreements_server, audit_server, auth_server, psi_server, query_server,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Session;
use crate::error::{Result as RoomResult, RoomError};
use crate::room::{QueryResult, Room, Slot};
use crate::wire;

type R<T> = Result<Response<T>, Status>;

/// Reads `authorization: Bearer <token>` from request metadata.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> RoomResult<String> {
    let value = metadata.get("authorization").ok_or_else(|| {
        RoomError::Unauthenticated(
            "missing `authorization: Bearer <token>`: authenticate first".into(),
        )
    })?;
    let text = value
        .to_str()
        .map_err(|_| RoomError::Unauthenticated("the authorization header is not text".into()))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            RoomError::Unauthenticated("the authorization header must be `Bearer <token>`".into())
        })?;
    Ok(token.to_owned())
}

/// The session a request's bearer token names.
pub(crate) fn session(room: &Room, metadata: &tonic::metadata::MetadataMap) -> RoomResult<Session> {
    room.session(&bearer(metadata)?)
}

/// The agreement and party of a request made with a party's session.
fn party_call(
    room: &Room,
    metadata: &tonic::metadata::MetadataMap,
) -> RoomResult<(std::sync::Arc<Slot>, String)> {
    room.party_call(&session(room, metadata)?)
}

/// The agreement and analyst of a request made with an analyst's session.
pub(crate) fn analyst_call(
    room: &Room,
    metadata: &tonic::metadata::MetadataMap,
) -> RoomResult<(std::sync::Arc<Slot>, String)> {
    room.analyst_call(&session(room, metadata)?)
}

/// The gRPC status for a room error. Internal details stay in the room's log.
pub(crate) fn to_status(e: &RoomError) -> Status {
    match e {
        RoomError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        RoomError::Unauthenticated(m) => Status::unauthenticated(m.clone()),
        RoomError::PermissionDenied(m) => Status::permission_denied(m.clone()),
        RoomError::NotFound(m) => Status::not_found(m.clone()),
        RoomError::AlreadyExists(m) => Status::already_exists(m.clone()),
        RoomError::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
        _ => {
            tracing::error!(error = %e, source = ?std::error::Error::source(e), "internal error");
            Status::internal(
                "the room hit an internal error; it has been logged on the room's side",
            )
        }
    }
}

impl From<RoomError> for Status {
    fn from(e: RoomError) -> Self {
        to_status(&e)
    }
}

#[tonic::async_trait]
impl auth_server::Auth for Room {
    async fn challenge(&self, request: Request<v1::ChallengeRequest>) -> R<v1::ChallengeResponse> {
        Ok(Response::new(wire::challenge(Room::challenge(
            self,
            wire::challenge_request(request.into_inner()),
        )?)))
    }

    async fn authenticate(
        &self,
        request: Request<v1::AuthenticateRequest>,
    ) -> R<v1::AuthenticateResponse> {
        Ok(Response::new(wire::authenticated(Room::authenticate(
            self,
            wire::authenticate_request(request.into_inner()),
        )?)))
    }
}

#[tonic::async_trait]
impl agreements_server::Agreements for Room {
    async fn submit(
        &self,
        request: Request<v1::SubmitAgreementRequest>,
    ) -> R<v1::SubmitAgreementResponse> {
        Ok(Response::new(wire::submitted(
            Room::submit(self, &request.into_inner().manifest_toml).await?,
        )))
    }

    async fn revoke(&self, request: Request<v1::RevokeRequest>) -> R<v1::RevokeResponse> {
        Ok(Response::new(wire::revoked(
            Room::revoke(self, &request.into_inner().revocation_toml).await?,
        )))
    }
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<v1::WorkBatch, Status>> + Send>>;

#[tonic::async_trait]
impl psi_server::Psi for Room {
    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadMessage>>,
    ) -> R<v1::UploadResponse> {
        let (slot, party) = party_call(self, request.metadata())?;
        let mut stream = request.into_inner();
        // The data directory's lock, per message (`hold_layer::HELD_PER_MESSAGE` in lib.rs).
        let hold = crate::backup::HoldDataDir::new(self.data_dir());
        while let Some(message) = stream.message().await? {
            let _held = hold.hold().await?;
            match message.kind {
                Some(v1::upload_message::Kind::Batch(batch)) => {
                    self.upload_batch(&slot, &party, wire::upload_batch(batch))
                        .await?;
                }
                Some(v1::upload_message::Kind::Complete(c)) => {
                    self.upload_complete(&slot, &party, wire::upload_complete(c))
                        .await?;
                }
                None => {
                    return Err(RoomError::InvalidArgument(
                        "an upload message with no content".into(),
                    )
                    .into());
                }
            }
        }
        let status = {
            let _held = hold.hold().await?;
            self.status(&slot, &party).await?
        };
        Ok(Response::new(v1::UploadResponse {
            batches_stored: status.batches_uploaded,
            rows_stored: status.rows_uploaded,
            complete: status.upload_complete,
            head: wire::head(&status.head),
        }))
    }

    type FetchWorkStream = WorkStream;

    async fn fetch_work(&self, request: Request<v1::FetchWorkRequest>) -> R<Self::FetchWorkStream> {
        let (slot, party) = party_call(self, request.metadata())?;
        let (partner, pending) = self
            .pending_work(&slot, &party, request.get_ref().max_batches)
            .await?;
        // One batch is read from disk per item the client pulls: memory stays at one batch.
        let room = self.clone();
        let stream = futures::stream::unfold(
            (room, slot, partner, pending.into_iter()),
            |(room, slot, partner, mut numbers)| async move {
                for n in numbers.by_ref() {
                    match room.read_work(&slot, &partner, n).await {
                        Ok(Some(batch)) => {
                            return Some((
                                Ok(wire::work_batch(batch)),
                                (room, slot, partner, numbers),
                            ));
                        }
                        Ok(None) => continue, // blinded or refused meanwhile
                        Err(e) => {
                            return Some((
                                Err(e.into()),
                                (room, slot, partner, Vec::new().into_iter()),
                            ));
                        }
                    }
                }
                None
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn return_work(
        &self,
        request: Request<Streaming<v1::ReturnWorkMessage>>,
    ) -> R<v1::ReturnWorkResponse> {
        let (slot, party) = party_call(self, request.metadata())?;
        let mut stream = request.into_inner();
        let (mut accepted, mut refused) = (0, 0);
        // The data directory's lock, per message (`hold_layer::HELD_PER_MESSAGE` in lib.rs).
        let hold = crate::backup::HoldDataDir::new(self.data_dir());
        while let Some(message) = stream.message().await? {
            let _held = hold.hold().await?;
            match message.kind {
                Some(v1::return_work_message::Kind::Blinded(b)) => {
                    self.return_blinded(&slot, &party, wire::blinded(b)).await?;
                    accepted += 1;
                }
                Some(v1::return_work_message::Kind::Commitment(c)) => {
                    self.commit_key(&slot, &party, wire::key_commitment(c))
                        .await?;
                }
                Some(v1::return_work_message::Kind::Refusal(r)) => {
                    self.refuse_batch(&slot, &party, wire::work_refusal(r))
                        .await?;
                    refused += 1;
                }
                None => {
                    return Err(RoomError::InvalidArgument(
                        "a work message with no content".into(),
                    )
                    .into());
                }
            }
        }
        let head = {
            let _held = hold.hold().await?;
            self.head(&slot)
        };
        Ok(Response::new(v1::ReturnWorkResponse {
            accepted,
            refused,
            head: wire::head(&head),
        }))
    }

    async fn status(&self, request: Request<v1::StatusRequest>) -> R<v1::StatusResponse> {
        let (slot, party) = party_call(self, request.metadata())?;
        Ok(Response::new(wire::status(
            Room::status(self, &slot, &party).await?,
        )))
    }

    async fn erase(&self, request: Request<v1::EraseRequest>) -> R<v1::EraseResponse> {
        let (slot, party) = party_call(self, request.metadata())?;
        Ok(Response::new(wire::erased(
            Room::erase(self, &slot, &party, &request.get_ref().handles).await?,
        )))
    }

    async fn lease(&self, request: Request<v1::LeaseRequest>) -> R<v1::LeaseResponse> {
        let (slot, party) = party_call(self, request.metadata())?;
        let ask = wire::lease_request(request.into_inner());
        Ok(Response::new(wire::lease_granted(
            Room::lease(self, &slot, &party, &ask).await?,
        )))
    }
}

#[tonic::async_trait]
impl query_server::Query for Room {
    async fn describe(&self, request: Request<v1::DescribeRequest>) -> R<v1::DescribeResponse> {
        let (slot, analyst) = analyst_call(self, request.metadata())?;
        let description = Room::describe(self, &slot).await?;
        let budget = self.budget(&slot, &analyst)?.map(|b| wire::budget(&b));
        Ok(Response::new(wire::description(description, budget)))
    }

    async fn run(&self, request: Request<v1::RunQueryRequest>) -> R<v1::RunQueryResponse> {
        let (slot, analyst) = analyst_call(self, request.metadata())?;
        let sql = request.into_inner().sql;
        let result = self
            .query(&slot, &analyst, &sql, |answer| {
                crate::ipc::encode(&answer.schema, &answer.batches)
            })
            .await?;
        Ok(Response::new(match result {
            QueryResult::Answered {
                value,
                rows,
                budget,
                head,
            } => v1::RunQueryResponse {
                outcome: Some(v1::run_query_response::Outcome::Answer(v1::QueryAnswer {
                    arrow_ipc_stream: value,
                    rows,
                    budget: budget.map(|b| wire::budget(&b)),
                })),
                head: wire::head(&head),
            },
            QueryResult::Refused {
                rule,
                message,
                head,
            } => v1::RunQueryResponse {
                outcome: Some(v1::run_query_response::Outcome::Refused(v1::QueryRefusal {
                    rule,
                    message,
                })),
                head: wire::head(&head),
            },
        }))
    }
}

#[tonic::async_trait]
impl audit_server::Audit for Room {
    async fn fetch(&self, request: Request<v1::FetchAuditRequest>) -> R<v1::FetchAuditResponse> {
        let session = session(self, request.metadata())?;
        Ok(Response::new(wire::audit_page(self.fetch_audit(
            &session,
            &wire::audit_request(request.get_ref()),
        )?)))
    }

    async fn present(
        &self,
        request: Request<v1::PresentHeadRequest>,
    ) -> R<v1::PresentHeadResponse> {
        let token = bearer(request.metadata())?;
        let session = self.session(&token)?;
        self.claim_head_presentation(&token)?;
        let (head, went_back) =
            self.present_head(&session, &wire::presented_head(request.get_ref()))?;
        Ok(Response::new(v1::PresentHeadResponse {
            head: wire::head(&head),
            went_back_entry: went_back.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_header_is_read_exactly() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(bearer(&m).is_err(), "missing");
        m.insert("authorization", "Bearer abc123".parse().unwrap());
        assert_eq!(bearer(&m).unwrap(), "abc123");
        m.insert("authorization", "bearer def456".parse().unwrap());
        assert_eq!(bearer(&m).unwrap(), "def456");
        m.insert("authorization", "Basic abc123".parse().unwrap());
        let e = bearer(&m).unwrap_err().to_string();
        assert!(e.contains("Bearer <token>"), "{e}");
    }
}
