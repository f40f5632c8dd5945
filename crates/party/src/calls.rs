//! The room's agreement and query calls, each made in one place: the request, the mapping of
//! its errors, the check of the room's signed audit head, and the check of any receipt. The
//! command line and the demo call these and only present the results.
//!
//! The PSI calls (upload, blinding work, status, erasure) are in [`crate::protocol`], on the
//! same [`Connection`].

use accord_agreement::{Revocation, VerifiedAgreement, sig::Purpose};
use accord_proto::v1::{
    self, agreements_client::AgreementsClient, psi_client::PsiClient, query_client::QueryClient,
};

use crate::client::{ClientTls, Connection, verify_head};
use crate::error::PartyError;

/// Most bytes of one query answer a client accepts (the room bounds answers far below this).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// What the room said to a submitted agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The agreement's id.
    pub agreement_id: String,
    /// Its version.
    pub version: u64,
    /// Its fingerprint (checked to be the submitted agreement's).
    pub fingerprint: String,
    /// True when this exact agreement was already registered.
    pub already_registered: bool,
    /// The fingerprint of an older version it superseded, whose data was deleted ("" if none).
    pub superseded: String,
    /// Audit entries the room's signed head vouches for, after the submission.
    pub audit_entries: u64,
}

/// Submits `agreement` to the room at `url`, which must be the room the agreement names
/// (its `[room]` key, checked before the manifest is sent). The answer must name this
/// agreement's fingerprint and carry an audit head signed by that room key.
pub async fn submit_agreement(
    url: &str,
    tls: &ClientTls,
    agreement: &VerifiedAgreement,
) -> Result<Submitted, PartyError> {
    let channel = crate::client::channel_to_named_room(url, tls, agreement.manifest()).await?;
    let r = AgreementsClient::new(channel)
        .submit(v1::SubmitAgreementRequest {
            manifest_toml: agreement.text().to_owned(),
        })
        .await
        .map_err(|status| call_error(url, tls, status))?
        .into_inner();
    let fingerprint = agreement.fingerprint();
    if r.fingerprint != fingerprint.to_string() {
        return Err(PartyError::Refused(format!(
            "the room answered for agreement fingerprint {} but {fingerprint} was submitted",
            crate::display::room_message(&r.fingerprint)
        )));
    }
    let audit_entries = verify_head(
        &agreement.manifest().room.public_key,
        fingerprint,
        r.head.as_ref(),
    )?;
    Ok(Submitted {
        agreement_id: r.agreement_id,
        version: r.version,
        fingerprint: r.fingerprint,
        already_registered: r.already_registered,
        superseded: r.superseded,
        audit_entries,
    })
}

/// The room's signed receipt for a revocation, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationReceipt {
    /// The revoked agreement's id.
    pub agreement_id: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// When the room acknowledged it (ms since 1970, UTC).
    pub revoked_unix_ms: i64,
    /// The room's signature (purpose `revocation-receipt`), verified with its key.
    pub signature: Vec<u8>,
}

/// How the room answered a query.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    /// Aggregates: an Arrow IPC stream, and the caller's budget when results are noisy.
    Answer {
        /// The result as an Arrow IPC stream.
        arrow_ipc_stream: Vec<u8>,
        /// With differential privacy: the caller's party's budget after this query.
        budget: Option<v1::Budget>,
    },
    /// The policy refused the query: which rule, and why (both as the room sent them, not
    /// yet escaped for display).
    Refused {
        /// The rule's name.
        rule: String,
        /// The room's explanation.
        message: String,
    },
}

impl Connection {
    /// Sends a revocation signed by this session's party; verifies the room's signed receipt
    /// and its audit head.
    pub async fn revoke(
        &mut self,
        revocation: &Revocation,
    ) -> Result<RevocationReceipt, PartyError> {
        let r = AgreementsClient::new(self.channel())
            .revoke(self.request(v1::RevokeRequest {
                revocation_toml: revocation.to_toml(),
            }))
            .await
            .map_err(|status| self.error(status))?
            .into_inner();
        let message = accord_proto::signed::revocation_receipt(
            self.fingerprint().as_bytes(),
            r.revoked_unix_ms,
            &revocation.party,
        );
        let sig = <[u8; 64]>::try_from(r.receipt_signature.as_slice()).map_err(|_| {
            PartyError::Refused("the room's revocation receipt signature is not 64 bytes".into())
        })?;
        self.room_key()
            .verify(
                Purpose::RevocationReceipt,
                &message,
                &accord_agreement::Signature::from_bytes(&sig),
            )
            .map_err(|_| {
                PartyError::Refused(format!(
                    "the room's revocation receipt does not verify with its key {}",
                    self.room_key()
                ))
            })?;
        self.check_head(r.head.as_ref())?;
        Ok(RevocationReceipt {
            agreement_id: r.agreement_id,
            fingerprint: r.fingerprint,
            revoked_unix_ms: r.revoked_unix_ms,
            signature: r.receipt_signature,
        })
    }

    /// What an analyst may ask of the agreement (columns, k, aggregates, budget).
    pub async fn describe(&mut self) -> Result<v1::DescribeResponse, PartyError> {
        let d = QueryClient::new(self.channel())
            .describe(self.request(v1::DescribeRequest {}))
            .await
            .map_err(|status| self.error(status))?
            .into_inner();
        self.check_head(d.head.as_ref())?;
        Ok(d)
    }

    /// Runs one SQL query.
    pub async fn run_query(&mut self, sql: &str) -> Result<QueryOutcome, PartyError> {
        let response = QueryClient::new(self.channel())
            .max_decoding_message_size(MAX_ANSWER_BYTES)
            .run(self.request(v1::RunQueryRequest {
                sql: sql.to_owned(),
            }))
            .await
            .map_err(|status| self.error(status))?
            .into_inner();
        self.check_head(response.head.as_ref())?;
        match response.outcome {
            Some(v1::run_query_response::Outcome::Answer(a)) => Ok(QueryOutcome::Answer {
                arrow_ipc_stream: a.arrow_ipc_stream,
                budget: a.budget,
            }),
            Some(v1::run_query_response::Outcome::Refused(r)) => Ok(QueryOutcome::Refused {
                rule: r.rule,
                message: r.message,
            }),
            None => Err(PartyError::Room(
                "the room sent neither an answer nor a refusal".into(),
            )),
        }
    }

    /// This party's PSI status for the session's agreement.
    pub async fn psi_status(&mut self) -> Result<v1::StatusResponse, PartyError> {
        let status = PsiClient::new(self.channel())
            .max_decoding_message_size(accord_proto::limits::MAX_MESSAGE_BYTES)
            .status(self.request(v1::StatusRequest {}))
            .await
            .map_err(|status| self.error(status))?
            .into_inner();
        self.check_head(status.head.as_ref())?;
        Ok(status)
    }

    /// Leases batch numbers of this party's upload of `total_batches` batches for the worker
    /// `worker` (PROTOCOL.md, "Workers").
    pub async fn lease(
        &mut self,
        total_batches: u64,
        max_batches: u32,
        upload_digest: &[u8; 32],
        worker: &str,
    ) -> Result<v1::LeaseResponse, PartyError> {
        PsiClient::new(self.channel())
            .lease(self.request(v1::LeaseRequest {
                total_batches,
                max_batches,
                worker: worker.to_owned(),
                upload_digest: upload_digest.to_vec(),
            }))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.error(status))
    }
}

/// Maps the status of a call made without a session (before or instead of authenticating):
/// TLS failures by name, everything else as the room's refusal.
fn call_error(url: &str, tls: &ClientTls, status: tonic::Status) -> PartyError {
    crate::client::tls_call_failure(url, tls, &status)
        .unwrap_or_else(|| PartyError::from_status(url, status))
}
