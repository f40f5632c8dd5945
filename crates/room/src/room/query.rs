//! Queries (describe, run, the Flight SQL schema calls), the privacy budget, and reading
//! the audit log.

use std::sync::Arc;

use crate::api::{AuditPage, AuditRequest, ColumnInfo, Description, PresentedHead};
use accord_agreement::PrivacyMode;
use accord_proto::limits::MAX_AUDIT_PAGE_ENTRIES;
use chrono::Utc;

use super::seal::table_spec;
use super::{Room, Slot, ended, lock, not_authorized};
use crate::audit::{Actor, AuditLog, Decision, Event, Head, Presented};
use crate::auth::{Role, Session};
use crate::error::{Result, RoomError};
use crate::ledger::{Balance, Price, Spend};

impl Room {
    /// The queryable columns.
    pub(crate) async fn describe(&self, slot: &Arc<Slot>) -> Result<Description> {
        let live = slot.live.read().await;
        live.store.as_ref().ok_or_else(ended)?;
        let m = slot.agreement.manifest();
        let mut columns = Vec::new();
        for c in super::seal::table_spec(&slot.agreement, &[]).columns {
            let withheld = live
                .withheld
                .iter()
                .find(|(w, _)| *w == c.name)
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            let (role, min, max) = match c.role {
                accord_engine::Role::Dimension => ("dimension", 0.0, 0.0),
                accord_engine::Role::Metric { min, max } => ("metric", min, max),
            };
            columns.push(ColumnInfo {
                name: c.name,
                role,
                min,
                max,
                withheld,
            });
        }
        Ok(Description {
            agreement_id: m.id.clone(),
            fingerprint: slot.agreement.fingerprint().to_string(),
            sealed: live.engine.is_some(),
            min_group_size: m.min_group_size,
            aggregates: m
                .privacy
                .aggregates
                .iter()
                .map(|a| a.as_str().to_uppercase())
                .collect(),
            columns,
            head: self.head(slot),
        })
    }

    /// Runs one query under the policy and logs it, answered or refused. The answer is
    /// encoded by `encode` while the agreement's read lock is held (result release is ordered
    /// with revocation).
    pub(crate) async fn query<T>(
        &self,
        slot: &Arc<Slot>,
        analyst: &str,
        sql: &str,
        encode: impl FnOnce(&accord_engine::Answer) -> Result<T>,
    ) -> Result<QueryResult<T>> {
        let live = slot.live.read().await;
        live.store.as_ref().ok_or_else(ended)?;
        let actor = Actor::Analyst(analyst.to_owned());
        // Every query is logged, also the ones refused before the policy sees them.
        let refuse_early = |rule: RoomRule, message: &str| -> Result<QueryResult<T>> {
            self.audit(
                slot,
                actor.clone(),
                query_event(sql, Decision::Refused, Some(rule.name()), 0, 0),
            )?;
            Err(RoomError::FailedPrecondition(message.to_owned()))
        };
        if slot.agreement.manifest().valid_until <= Utc::now() {
            return refuse_early(
                RoomRule::Expired,
                "the agreement has expired: queries are refused",
            );
        }
        let Some(engine) = live.engine.clone() else {
            return refuse_early(
                RoomRule::NotSealed,
                "the agreement's data is not sealed yet: both parties must finish their upload and blinding",
            );
        };
        if sql.len() > accord_proto::limits::MAX_SQL_BYTES {
            let message = format!("the query is {} bytes long; the limit is 16 KiB", sql.len());
            self.audit(
                slot,
                actor,
                query_event(sql, Decision::Refused, Some(RoomRule::TooLong.name()), 0, 0),
            )?;
            return Ok(QueryResult::Refused {
                rule: RoomRule::TooLong.name().into(),
                message,
                head: self.head(slot),
            });
        }
        // The length and nesting limits are checked on the raw text, and a refusal logged,
        // before anything parses or plans it (the engine checks again: defence in depth).
        let prepared = match accord_engine::check_text(sql) {
            Err(refusal) => Err(refusal),
            Ok(()) => engine
                .prepare(sql)
                .await
                .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?,
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(refusal) => {
                let rule = refusal.rule.name().to_owned();
                let message = refusal.to_string();
                self.audit(
                    slot,
                    actor,
                    query_event(sql, Decision::Refused, Some(&rule), 0, 0),
                )?;
                tracing::info!(agreement = %slot.agreement.id(), analyst, rule, "query refused");
                return Ok(QueryResult::Refused {
                    rule,
                    message,
                    head: self.head(slot),
                });
            }
        };
        // With differential privacy the query's cost is recorded durably (and audited)
        // before it runs, so no result leaves whose spend is not on disk.
        let mut budget = None;
        let mut spent = 0.0;
        if let Some(cost) = prepared.privacy_cost() {
            let (party, price) = self.price(slot, analyst)?;
            match self.inner.ledgers.spend(&slot.agreement, &party, price)? {
                Spend::Exhausted(balance) => {
                    let message = exhausted_message(slot.agreement.id(), &party, &balance);
                    self.audit(
                        slot,
                        actor,
                        query_event(
                            sql,
                            Decision::Refused,
                            Some(RoomRule::BudgetExhausted.name()),
                            0,
                            0,
                        ),
                    )?;
                    tracing::info!(agreement = %slot.agreement.id(), analyst, party, "query refused: budget exhausted");
                    return Ok(QueryResult::Refused {
                        rule: RoomRule::BudgetExhausted.name().into(),
                        message,
                        head: self.head(slot),
                    });
                }
                Spend::Spent(balance) => {
                    self.audit(
                        slot,
                        Actor::Analyst(analyst.to_owned()),
                        Event::BudgetSpent {
                            party,
                            epsilon: cost.epsilon,
                            delta: cost.delta,
                            epsilon_spent_total: balance.epsilon_spent,
                            epsilon_remaining: balance.epsilon_remaining,
                        },
                    )?;
                    spent = cost.epsilon;
                    budget = Some(balance);
                }
            }
        }
        let answer = match prepared.execute().await {
            Ok(answer) => answer,
            Err(e) => {
                self.audit(
                    slot,
                    actor,
                    with_budget(
                        query_event(
                            sql,
                            Decision::Refused,
                            Some(RoomRule::InternalError.name()),
                            0,
                            0,
                        ),
                        spent,
                    ),
                )?;
                return Err(RoomError::Internal(format!("query engine: {e}")));
            }
        };
        let encoded = encode(&answer)?;
        self.audit(
            slot,
            actor,
            with_budget(
                query_event(
                    sql,
                    Decision::Answered,
                    None,
                    answer.rows as u64,
                    answer.groups_suppressed,
                ),
                spent,
            ),
        )?;
        tracing::info!(agreement = %slot.agreement.id(), analyst, rows = answer.rows, "query answered");
        Ok(QueryResult::Answered {
            value: encoded,
            rows: answer.rows as u64,
            budget,
            head: self.head(slot),
        })
    }

    /// The spending party of `analyst` and the agreement's price per query.
    fn price(&self, slot: &Slot, analyst: &str) -> Result<(String, Price)> {
        let m = slot.agreement.manifest();
        let party = m
            .analysts
            .iter()
            .find(|a| a.name == analyst)
            .map(|a| a.party.clone())
            .ok_or_else(|| {
                RoomError::PermissionDenied(format!(
                    "analyst {analyst} is not named in agreement {}",
                    m.id
                ))
            })?;
        let PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            budget,
            delta,
        } = m.privacy.mode
        else {
            return Err(RoomError::Internal(
                "a budget was asked of an agreement with exact results".into(),
            ));
        };
        Ok((party, Price::new(epsilon_per_query, delta, budget)))
    }

    /// What is left of the budget of `analyst`'s party; `None` with exact results.
    pub(crate) fn budget(&self, slot: &Slot, analyst: &str) -> Result<Option<Balance>> {
        if !matches!(
            slot.agreement.manifest().privacy.mode,
            PrivacyMode::DifferentialPrivacy { .. }
        ) {
            return Ok(None);
        }
        let (party, price) = self.price(slot, analyst)?;
        self.inner
            .ledgers
            .balance(&slot.agreement, &party, price)
            .map(Some)
    }

    /// The result schema of a query without running it (Flight SQL's GetFlightInfo), or its refusal.
    pub(crate) async fn query_schema(
        &self,
        slot: &Arc<Slot>,
        sql: &str,
    ) -> Result<std::result::Result<arrow::datatypes::SchemaRef, (String, String)>> {
        let live = slot.live.read().await;
        let Some(engine) = live.engine.clone() else {
            // The caller runs refusals through `query`, which logs and explains this one.
            return Ok(Err((
                RoomRule::NotSealed.name().into(),
                "the agreement's data is not sealed yet".into(),
            )));
        };
        if sql.len() > accord_proto::limits::MAX_SQL_BYTES {
            return Ok(Err((
                RoomRule::TooLong.name().into(),
                "the query is longer than 16 KiB".into(),
            )));
        }
        match engine
            .prepare(sql)
            .await
            .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?
        {
            Ok(prepared) => Ok(Ok(prepared.schema())),
            Err(refusal) => Ok(Err((refusal.rule.name().to_owned(), refusal.to_string()))),
        }
    }

    /// The schema of the `overlap` table for an analyst session.
    pub(crate) async fn overlap_schema(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<arrow::datatypes::SchemaRef> {
        let live = slot.live.read().await;
        let withheld = live.withheld.clone();
        Ok(table_spec(&slot.agreement, &withheld).arrow_schema())
    }

    // ---------------------------------------------------------------------------------------
    // Audit

    /// One page of the audit log of the session's agreement (also after its data was
    /// deleted). Only its parties and auditors may read it.
    pub fn fetch_audit(&self, session: &Session, req: &AuditRequest) -> Result<AuditPage> {
        if let Role::Analyst(_) = session.role {
            return Err(RoomError::PermissionDenied(
                "analysts may not read the audit log (it holds every query of every analyst): ask a party or an \
                 auditor of the agreement"
                    .into(),
            ));
        }
        let fp = session.fingerprint;
        let asked = req.fingerprint.trim();
        if !asked.is_empty() && asked != fp.to_string() {
            return Err(not_authorized());
        }
        let max = match req.max_entries {
            0 => MAX_AUDIT_PAGE_ENTRIES,
            n => (n as usize).min(MAX_AUDIT_PAGE_ENTRIES),
        };
        let slot = lock(&self.inner.registry).by_fingerprint.get(&fp).cloned();
        let (entries, head) = match slot {
            Some(slot) => {
                let audit = lock(&slot.audit);
                (
                    audit.read_page(req.start, max)?,
                    audit.signed_head(&self.inner.key),
                )
            }
            None => {
                let path = self.audit_path(fp);
                if !path.exists() {
                    return Err(not_authorized());
                }
                let audit = AuditLog::open(&path, fp)?;
                (
                    audit.read_page(req.start, max)?,
                    audit.signed_head(&self.inner.key),
                )
            }
        };
        Ok(AuditPage {
            entries,
            head,
            room_public_key: self.inner.public_key.to_bytes(),
            start: req.start,
        })
    }

    /// A head of the session's agreement this room signed, presented by a client that
    /// remembers it, compared with the log (see [`AuditLog::compare_presented`]). Returns the
    /// current head and, when the log went back in time, its `went_back` entry.
    pub fn present_head(
        &self,
        session: &Session,
        presented: &PresentedHead,
    ) -> Result<(Head, Option<String>)> {
        let head = Head::check(
            &self.inner.public_key,
            &presented.fingerprint,
            presented.entries,
            &presented.hash,
            &presented.signature,
        )
        .map_err(|e| RoomError::InvalidArgument(format!("the presented audit head: {e}")))?;
        if head.fingerprint != session.fingerprint {
            return Err(RoomError::InvalidArgument(
                "the presented audit head is of another agreement than the session's".into(),
            ));
        }
        let who = format!("{} {}", session.role.kind(), session.role.name());
        let slot = lock(&self.inner.registry)
            .by_fingerprint
            .get(&head.fingerprint)
            .cloned();
        let compare = |audit: &mut AuditLog| -> Result<(Head, Option<String>)> {
            let went_back = match audit.compare_presented(&head, &who)? {
                Presented::Held => None,
                Presented::WentBack(line) => Some(line),
            };
            Ok((audit.signed_head(&self.inner.key), went_back))
        };
        match slot {
            Some(slot) => compare(&mut lock(&slot.audit)),
            None => compare(&mut AuditLog::open(
                &self.audit_path(head.fingerprint),
                head.fingerprint,
            )?),
        }
    }
}

/// The result of [`Room::query`].
#[derive(Debug)]
pub enum QueryResult<T> {
    /// Answered; `value` is the encoded answer.
    Answered {
        /// The encoded answer.
        value: T,
        /// Rows returned.
        rows: u64,
        /// With differential privacy, the party's budget after this query.
        budget: Option<Balance>,
        /// The audit head after logging.
        head: Head,
    },
    /// Refused by the policy.
    Refused {
        /// Stable rule name.
        rule: String,
        /// The sentence for the analyst.
        message: String,
        /// The audit head after logging.
        head: Head,
    },
}

fn query_event(
    sql: &str,
    decision: Decision,
    rule: Option<&str>,
    rows: u64,
    suppressed: u64,
) -> Event {
    Event::Query {
        sql: crate::limits::audit_sql(sql),
        decision,
        rule: rule.map(str::to_owned),
        rows_returned: rows,
        groups_suppressed: suppressed,
        budget_spent: 0.0,
    }
}

/// The refusals the room decides itself, around the engine's policy; their names are
/// stable (the audit log and both query transports carry them beside the engine's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomRule {
    /// The agreement's validity window is over.
    Expired,
    /// Both parties have not finished uploading and blinding yet.
    NotSealed,
    /// The SQL text is longer than the protocol allows.
    TooLong,
    /// The party's differential-privacy budget is spent.
    BudgetExhausted,
    /// The engine failed while running an admitted query.
    InternalError,
}

impl RoomRule {
    /// The stable rule name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotSealed => "not_sealed",
            Self::TooLong => "too_long",
            Self::BudgetExhausted => "budget_exhausted",
            Self::InternalError => "internal_error",
        }
    }
}

fn exhausted_message(agreement_id: &str, party: &str, b: &Balance) -> String {
    format!(
        "the privacy budget is spent: this query costs epsilon {} but party {party} has {:.3} of its {} left \
         under agreement {agreement_id} ({} queries answered); no result was computed and nothing was spent. \
         Each answer spends budget so that repeated questions cannot average the noise away; to ask more, \
         the parties must agree on a larger budget in a new version of the agreement",
        b.epsilon_per_query, b.epsilon_remaining, b.epsilon_budget, b.queries
    )
}

/// `event` (a query event) with the ε it spent.
fn with_budget(mut event: Event, spent: f64) -> Event {
    if let Event::Query { budget_spent, .. } = &mut event {
        *budget_spent = spent;
    }
    event
}
