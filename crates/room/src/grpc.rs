//! Thin gRPC wrappers over [`Room`]: decode, call, map errors in one place.

use std::pin::Pin;

use accord_proto::v1::{
    self, agreements_server, audit_server, auth_server, psi_server, query_server,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::RoomError;
use crate::room::{QueryResult, Room};

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl auth_server::Auth for Room {
    async fn challenge(&self, request: Request<v1::ChallengeRequest>) -> R<v1::ChallengeResponse> {
        Ok(Response::new(Room::challenge(self, request.into_inner())?))
    }

    async fn authenticate(
        &self,
        request: Request<v1::AuthenticateRequest>,
    ) -> R<v1::AuthenticateResponse> {
        Ok(Response::new(Room::authenticate(
            self,
            request.into_inner(),
        )?))
    }
}

#[tonic::async_trait]
impl agreements_server::Agreements for Room {
    async fn submit(
        &self,
        request: Request<v1::SubmitAgreementRequest>,
    ) -> R<v1::SubmitAgreementResponse> {
        Ok(Response::new(
            Room::submit(self, &request.into_inner().manifest_toml).await?,
        ))
    }

    async fn revoke(&self, request: Request<v1::RevokeRequest>) -> R<v1::RevokeResponse> {
        Ok(Response::new(
            Room::revoke(self, &request.into_inner().revocation_toml).await?,
        ))
    }
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<v1::WorkBatch, Status>> + Send>>;

#[tonic::async_trait]
impl psi_server::Psi for Room {
    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadMessage>>,
    ) -> R<v1::UploadResponse> {
        let (slot, party) = self.party_call(request.metadata())?;
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            match message.kind {
                Some(v1::upload_message::Kind::Batch(batch)) => {
                    self.upload_batch(&slot, &party, batch).await?;
                }
                Some(v1::upload_message::Kind::Complete(c)) => {
                    self.upload_complete(&slot, &party, c).await?;
                }
                None => {
                    return Err(RoomError::InvalidArgument(
                        "an upload message with no content".into(),
                    )
                    .into());
                }
            }
        }
        let status = self.status(&slot, &party).await?;
        Ok(Response::new(v1::UploadResponse {
            batches_stored: status.batches_uploaded,
            rows_stored: status.rows_uploaded,
            complete: status.upload_complete,
            head: status.head,
        }))
    }

    type FetchWorkStream = WorkStream;

    async fn fetch_work(&self, request: Request<v1::FetchWorkRequest>) -> R<Self::FetchWorkStream> {
        let (slot, party) = self.party_call(request.metadata())?;
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
                            return Some((Ok(batch), (room, slot, partner, numbers)));
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
        let (slot, party) = self.party_call(request.metadata())?;
        let mut stream = request.into_inner();
        let (mut accepted, mut refused) = (0, 0);
        while let Some(message) = stream.message().await? {
            match message.kind {
                Some(v1::return_work_message::Kind::Blinded(b)) => {
                    self.return_blinded(&slot, &party, b).await?;
                    accepted += 1;
                }
                Some(v1::return_work_message::Kind::Commitment(c)) => {
                    self.commit_key(&slot, &party, c).await?;
                }
                Some(v1::return_work_message::Kind::Refusal(r)) => {
                    self.refuse_batch(&slot, &party, r).await?;
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
        Ok(Response::new(v1::ReturnWorkResponse {
            accepted,
            refused,
            head: Some(self.head(&slot)),
        }))
    }

    async fn status(&self, request: Request<v1::StatusRequest>) -> R<v1::StatusResponse> {
        let (slot, party) = self.party_call(request.metadata())?;
        Ok(Response::new(Room::status(self, &slot, &party).await?))
    }

    async fn erase(&self, request: Request<v1::EraseRequest>) -> R<v1::EraseResponse> {
        let (slot, party) = self.party_call(request.metadata())?;
        Ok(Response::new(
            Room::erase(self, &slot, &party, &request.get_ref().handles).await?,
        ))
    }
}

#[tonic::async_trait]
impl query_server::Query for Room {
    async fn describe(&self, request: Request<v1::DescribeRequest>) -> R<v1::DescribeResponse> {
        let (slot, analyst) = self.analyst_call(request.metadata())?;
        let mut response = Room::describe(self, &slot).await?;
        response.budget = self.budget(&slot, &analyst)?.map(|b| b.to_proto());
        Ok(Response::new(response))
    }

    async fn run(&self, request: Request<v1::RunQueryRequest>) -> R<v1::RunQueryResponse> {
        let (slot, analyst) = self.analyst_call(request.metadata())?;
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
                    budget: budget.map(|b| b.to_proto()),
                })),
                head: Some(head),
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
                head: Some(head),
            },
        }))
    }
}

#[tonic::async_trait]
impl audit_server::Audit for Room {
    async fn fetch(&self, request: Request<v1::FetchAuditRequest>) -> R<v1::FetchAuditResponse> {
        let session = self.session(request.metadata())?;
        Ok(Response::new(
            self.fetch_audit(&session, request.get_ref())?,
        ))
    }
}
