//! Sealing: the matched-rows snapshot, the dimensions withheld from it, and the query
//! engine built over it.

use std::sync::Arc;

use accord_agreement::{Aggregate, PrivacyMode, VerifiedAgreement};
use accord_engine::{AggregateKind, ColumnSpec, Engine, TableSpec};
use arrow::array::RecordBatch;
use chrono::Utc;

use super::{Live, Room, Slot};
use crate::audit::{Actor, Event};
use crate::error::{Result, RoomError};
use crate::store::{PartyColumns, SealInfo};

/// The columns of the `overlap` table for an agreement, minus withheld ones.
pub fn table_spec(agreement: &VerifiedAgreement, withheld: &[(String, String)]) -> TableSpec {
    let m = agreement.manifest();
    let mut columns = Vec::new();
    for party in PartyColumns::from_manifest(m) {
        for (column, role) in party.columns {
            let name = format!("{}_{column}", party.party);
            if withheld.iter().any(|(w, _)| *w == name) {
                continue;
            }
            columns.push(ColumnSpec { name, role });
        }
    }
    let aggregates = m
        .privacy
        .aggregates
        .iter()
        .map(|a| match a {
            Aggregate::Count => AggregateKind::Count,
            Aggregate::Sum => AggregateKind::Sum,
            Aggregate::Avg => AggregateKind::Avg,
        })
        .collect();
    TableSpec {
        columns,
        min_group_size: u64::from(m.min_group_size),
        aggregates,
    }
}

impl Room {
    pub(super) fn maybe_seal(&self, slot: &Slot, live: &mut Live) -> Result<()> {
        let Some(store) = live.store.as_mut() else {
            return Ok(());
        };
        if !store.ready_to_seal() || store.seal_info()?.is_some() {
            return Ok(());
        }
        let seal_started = std::time::Instant::now();
        let (_, duplicates) = store.build_snapshot()?;
        let snapshot = store.read_snapshot()?;
        tracing::debug!(
            stage = "seal_join",
            seconds = seal_started.elapsed().as_secs_f64(),
            "joined both parties' tokens into the snapshot"
        );
        // With exact results, a dimension with more distinct values among the matched
        // customers than groups of k could cover is withheld: it identifies customers. The
        // decision compares two exact counts derived from the overlap, so with differential
        // privacy it is not taken at all (issue 13: nothing a party or analyst reads holds
        // an exact overlap count, not even one bit of it). There, DP partition selection
        // already keeps every group of a few customers out of every answer.
        let withheld: Vec<(String, String)> = if query_privacy(&slot.agreement)?.is_some() {
            Vec::new()
        } else {
            let full_spec = table_spec(&slot.agreement, &[]);
            let attrs = attribute_batch(&snapshot, &full_spec)?;
            accord_engine::dimension_cardinality_problems(&full_spec, &[attrs])
                .into_iter()
                .map(|p| (p.column.clone(), p.to_string()))
                .collect()
        };
        let info = SealInfo {
            sealed_at: Utc::now().to_rfc3339(),
            withheld: withheld.clone(),
        };
        let write_started = std::time::Instant::now();
        store.write_seal_info(&info)?;
        tracing::debug!(
            stage = "seal_write",
            seconds = write_started.elapsed().as_secs_f64(),
            "recorded the seal"
        );
        let minimize_started = std::time::Instant::now();
        store.discard_unmatched(&snapshot)?;
        tracing::debug!(
            stage = "seal_minimize",
            seconds = minimize_started.elapsed().as_secs_f64(),
            "deleted the unmatched rows"
        );
        tracing::info!(
            stage = "seal",
            seconds = seal_started.elapsed().as_secs_f64(),
            matched = snapshot.num_rows(),
            "sealed the overlap and deleted the unmatched rows"
        );
        live.engine = Some(Arc::new(build_engine(
            self,
            &slot.agreement,
            &withheld,
            &snapshot,
        )?));
        live.withheld = withheld.clone();
        self.audit(
            slot,
            Actor::Room,
            Event::Sealed {
                withheld_columns: withheld.into_iter().map(|(c, _)| c).collect(),
                duplicate_tokens_dropped: duplicates,
            },
        )?;
        tracing::info!(agreement = %slot.agreement.id(), "snapshot sealed");
        Ok(())
    }
}

/// The query privacy of a DP agreement (`None` with exact results), checked against what
/// the engine supports.
pub(super) fn query_privacy(
    agreement: &VerifiedAgreement,
) -> Result<Option<accord_engine::QueryPrivacy>> {
    let m = agreement.manifest();
    match m.privacy.mode {
        PrivacyMode::DifferentialPrivacy {
            epsilon_per_query,
            delta,
            ..
        } => accord_engine::QueryPrivacy::new(epsilon_per_query, delta, u64::from(m.min_group_size))
            .map(Some)
            .map_err(|e| {
                RoomError::FailedPrecondition(format!(
                    "the room refuses this agreement's differential privacy settings: {e}; fix [privacy] differential_privacy and sign again"
                ))
            }),
        _ => Ok(None),
    }
}

/// The attribute columns of a snapshot, in `spec` order (no handles, nothing else).
fn attribute_batch(snapshot: &RecordBatch, spec: &TableSpec) -> Result<RecordBatch> {
    let schema = spec.arrow_schema();
    let mut columns = Vec::with_capacity(spec.columns.len());
    for c in &spec.columns {
        columns.push(
            snapshot
                .column(snapshot.schema().index_of(&c.name)?)
                .clone(),
        );
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Where, in the data directory, the Ballista engines keep their Parquet copies of the
/// sealed overlaps (one directory per engine, removed with it and at start-up).
pub(super) const BALLISTA_DIR: &str = "ballista";

pub(super) fn build_engine(
    room: &Room,
    agreement: &VerifiedAgreement,
    withheld: &[(String, String)],
    snapshot: &RecordBatch,
) -> Result<Engine> {
    let spec = table_spec(agreement, withheld);
    let attrs = attribute_batch(snapshot, &spec)?;
    let engine = match room.inner.engine {
        crate::QueryEngine::SingleNode => Engine::new(spec, vec![attrs]),
        #[cfg(feature = "ballista")]
        crate::QueryEngine::BallistaStandalone => {
            let n = room
                .inner
                .engine_dirs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let parent = room.data_dir().join(BALLISTA_DIR);
            accord_fs::create_dir_all(&parent, accord_fs::Access::OwnerOnly)?;
            let dir = parent.join(format!("{}-{n}", agreement.fingerprint()));
            Engine::ballista_standalone(spec, vec![attrs], &dir)
        }
        #[cfg(not(feature = "ballista"))]
        crate::QueryEngine::BallistaStandalone => {
            return Err(crate::QueryEngine::BallistaStandalone
                .check()
                .err()
                .unwrap_or_else(|| RoomError::Internal("Ballista engine".into())));
        }
    }
    .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?;
    match query_privacy(agreement)? {
        Some(privacy) => {
            let noise = accord_engine::NoiseSource::from_os()
                .map_err(|e| RoomError::Internal(format!("query engine: {e}")))?;
            Ok(engine.with_differential_privacy(privacy, noise))
        }
        None => Ok(engine),
    }
}
