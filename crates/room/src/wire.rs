//! The gRPC adapter's conversions between the protocol's messages (`accord_proto::v1`) and
//! the core's plain types (`crate::api`). The digests an upload batch's signature covers are
//! computed here, from the batch exactly as it came off the wire.

use accord_proto::v1;

use crate::api;

/// The wire form of the room's audit head.
pub(crate) fn head(head: &accord_audit::Head) -> Option<v1::SignedHead> {
    Some(head.to_proto())
}

fn principal(p: Option<v1::Principal>) -> Option<api::Principal> {
    p.and_then(|p| p.kind).map(|kind| match kind {
        v1::principal::Kind::Party(n) => api::Principal::Party(n),
        v1::principal::Kind::Analyst(n) => api::Principal::Analyst(n),
        v1::principal::Kind::Auditor(n) => api::Principal::Auditor(n),
        v1::principal::Kind::AnalystKey(k) => api::Principal::AnalystKey(k),
    })
}

pub(crate) fn challenge_request(r: v1::ChallengeRequest) -> api::ChallengeRequest {
    api::ChallengeRequest {
        agreement: r.agreement,
        principal: principal(r.principal),
        client_nonce: r.client_nonce,
        public_key: r.public_key,
    }
}

pub(crate) fn challenge(c: api::Challenge) -> v1::ChallengeResponse {
    v1::ChallengeResponse {
        room_nonce: c.room_nonce.to_vec(),
        room_public_key: c.room_public_key.to_vec(),
        protocol_version: c.protocol_version,
        tls_binding_signature: c.tls_binding_signature,
    }
}

pub(crate) fn authenticate_request(r: v1::AuthenticateRequest) -> api::AuthenticateRequest {
    api::AuthenticateRequest {
        agreement: r.agreement,
        principal: principal(r.principal),
        room_nonce: r.room_nonce,
        client_nonce: r.client_nonce,
        signature: r.signature,
        public_key: r.public_key,
    }
}

pub(crate) fn authenticated(a: api::Authenticated) -> v1::AuthenticateResponse {
    v1::AuthenticateResponse {
        session_token: a.session_token,
        expires_unix_ms: a.expires_unix_ms,
        head: head(&a.head),
        fingerprint: a.fingerprint,
        principal_name: a.principal_name,
        agreement_id: a.agreement_id,
        manifest_toml: a.manifest_toml,
    }
}

pub(crate) fn submitted(s: api::Submitted) -> v1::SubmitAgreementResponse {
    v1::SubmitAgreementResponse {
        agreement_id: s.agreement_id,
        version: s.version,
        fingerprint: s.fingerprint,
        already_registered: s.already_registered,
        superseded: s.superseded,
        head: head(&s.head),
    }
}

pub(crate) fn revoked(r: api::Revoked) -> v1::RevokeResponse {
    v1::RevokeResponse {
        agreement_id: r.agreement_id,
        fingerprint: r.fingerprint,
        revoked_unix_ms: r.revoked_unix_ms,
        receipt_signature: r.receipt_signature.to_vec(),
        head: head(&r.head),
    }
}

/// An upload batch, with the rows digest its signature covers and the encoding of its
/// columns (both over the columns exactly as sent). A salt that is not 32 bytes gets a zero
/// digest here; the room refuses the batch for its salt before the digest matters.
pub(crate) fn upload_batch(b: v1::UploadBatch) -> api::UploadBatch {
    let rows_digest = <[u8; 32]>::try_from(b.salt.as_slice())
        .map(|salt| accord_proto::rows_digest(&salt, &b.handles, &b.columns))
        .unwrap_or([0; 32]);
    let encoded_columns = prost::Message::encode_to_vec(&v1::UploadBatch {
        columns: b.columns.clone(),
        ..Default::default()
    });
    api::UploadBatch {
        batch_number: b.batch_number,
        points: b.points,
        handles: b.handles,
        columns: b
            .columns
            .into_iter()
            .map(|c| api::UploadColumn {
                name: c.name,
                values: c.values.map(|v| match v {
                    v1::column::Values::Text(t) => api::ColumnValues::Text(t.values, t.present),
                    v1::column::Values::Number(x) => api::ColumnValues::Number(x.values, x.present),
                }),
            })
            .collect(),
        salt: b.salt,
        signature: b.signature,
        encoded_columns,
        rows_digest,
    }
}

pub(crate) fn upload_complete(c: v1::UploadComplete) -> api::UploadComplete {
    api::UploadComplete {
        batches: c.batches,
        rows: c.rows,
        signature: c.signature,
    }
}

pub(crate) fn work_batch(w: api::WorkBatch) -> v1::WorkBatch {
    v1::WorkBatch {
        from_party: w.from_party,
        batch_number: w.batch_number,
        points: w.points,
        signature: w.signature,
        rows_digest: w.rows_digest,
    }
}

pub(crate) fn blinded(b: v1::BlindedBatch) -> api::BlindedBatch {
    api::BlindedBatch {
        batch_number: b.batch_number,
        points: b.points,
        proof: b.proof,
    }
}

pub(crate) fn key_commitment(c: v1::KeyCommitment) -> api::KeyCommitment {
    api::KeyCommitment {
        commitment: c.commitment,
        signature: c.signature,
    }
}

pub(crate) fn work_refusal(r: v1::WorkRefusal) -> api::WorkRefusal {
    api::WorkRefusal {
        batch_number: r.batch_number,
        reason: r.reason,
    }
}

pub(crate) fn status(s: api::Status) -> v1::StatusResponse {
    v1::StatusResponse {
        agreement_id: s.agreement_id,
        fingerprint: s.fingerprint,
        state: match s.state {
            api::AgreementState::Collecting => v1::AgreementState::Collecting,
            api::AgreementState::Sealed => v1::AgreementState::Sealed,
        } as i32,
        batches_uploaded: s.batches_uploaded,
        rows_uploaded: s.rows_uploaded,
        upload_complete: s.upload_complete,
        batches_tokenized: s.batches_tokenized,
        refused_batches: s
            .refused_batches
            .into_iter()
            .map(|r| v1::WorkRefusal {
                batch_number: r.batch_number,
                reason: r.reason,
            })
            .collect(),
        partner: s.partner,
        partner_upload_complete: s.partner_upload_complete,
        work_waiting: s.work_waiting,
        tokens_complete: s.tokens_complete,
        head: head(&s.head),
        partner_proof_failures: s.partner_proof_failures,
    }
}

pub(crate) fn lease_request(r: v1::LeaseRequest) -> api::LeaseRequest {
    api::LeaseRequest {
        total_batches: r.total_batches,
        max_batches: r.max_batches,
        worker: r.worker,
        upload_digest: r.upload_digest,
    }
}

pub(crate) fn lease_granted(g: crate::leases::Grant) -> v1::LeaseResponse {
    v1::LeaseResponse {
        batch_numbers: g.batch_numbers,
        expires_in_ms: u64::try_from(g.expires_in.as_millis()).unwrap_or(u64::MAX),
        batches_stored: g.stored,
        batches_leased: g.leased,
        all_stored: g.all_stored,
    }
}

pub(crate) fn erased(e: api::Erased) -> v1::EraseResponse {
    v1::EraseResponse {
        erased: e.erased,
        receipt_signature: e.receipt_signature.to_vec(),
        head: head(&e.head),
    }
}

pub(crate) fn description(d: api::Description, budget: Option<v1::Budget>) -> v1::DescribeResponse {
    v1::DescribeResponse {
        agreement_id: d.agreement_id,
        fingerprint: d.fingerprint,
        sealed: d.sealed,
        min_group_size: d.min_group_size,
        aggregates: d.aggregates,
        columns: d
            .columns
            .into_iter()
            .map(|c| v1::ColumnInfo {
                name: c.name,
                role: c.role.into(),
                min: c.min,
                max: c.max,
                withheld: c.withheld,
            })
            .collect(),
        head: head(&d.head),
        budget,
    }
}

pub(crate) fn audit_request(r: &v1::FetchAuditRequest) -> api::AuditRequest {
    api::AuditRequest {
        fingerprint: r.fingerprint.clone(),
        start: r.start,
        max_entries: r.max_entries,
    }
}

pub(crate) fn presented_head(r: &v1::PresentHeadRequest) -> api::PresentedHead {
    let h = r.head.clone().unwrap_or_default();
    api::PresentedHead {
        fingerprint: h.fingerprint,
        entries: h.entries,
        hash: h.hash,
        signature: h.signature,
    }
}

pub(crate) fn audit_page(p: api::AuditPage) -> v1::FetchAuditResponse {
    v1::FetchAuditResponse {
        entries: p.entries,
        head: head(&p.head),
        room_public_key: p.room_public_key.to_vec(),
        start: p.start,
    }
}

/// The wire form of a party's budget.
pub(crate) fn budget(b: &crate::ledger::Balance) -> v1::Budget {
    v1::Budget {
        party: b.party.clone(),
        epsilon_per_query: b.epsilon_per_query,
        delta_per_query: b.delta_per_query,
        epsilon_budget: b.epsilon_budget,
        epsilon_spent: b.epsilon_spent,
        epsilon_remaining: b.epsilon_remaining,
        queries_remaining: b.queries_remaining,
        queries_answered: b.queries,
        delta_spent: b.delta_spent,
    }
}
