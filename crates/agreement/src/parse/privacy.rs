//! `[privacy]`: the aggregates allowed and the differential-privacy settings.

use toml::de::DeValue;

use super::Value;
use super::cx::{Cx, span_of};
use crate::manifest::{Aggregate, Privacy, PrivacyMode};

const PRIVACY_KEYS: &[&str] = &["aggregates", "differential_privacy", "exact_results"];
const DP_KEYS: &[&str] = &["epsilon_per_query", "budget", "delta"];

/// The most delta a party's analysts may accumulate over a whole budget (answers ×
/// delta): the probability, over every answer the budget allows, that some group of one
/// customer is shown. One in a thousand keeps that a rare event even for the largest
/// budgets; the defaults (20 answers × 1e-6) stay far below it.
pub const MAX_TOTAL_DELTA: f64 = 1e-3;

/// `[privacy]`, with its `differential_privacy` table.
pub(super) fn walk_privacy(cx: &mut Cx<'_>, v: &Value<'_>) -> Option<Privacy> {
    let t = cx.table(v, "privacy")?;
    cx.deny_unknown(t, "privacy", PRIVACY_KEYS);
    let span = span_of(v);
    let mut aggregates = Vec::new();
    let mut ok = true;
    if let Some(av) = cx.get(t, span.clone(), "privacy", "aggregates", true) {
        if let Some(items) = cx.array(av, "privacy.aggregates") {
            for (i, item) in items.iter().enumerate() {
                let key = format!("privacy.aggregates[{i}]");
                let Some(s) = cx.string(item, &key) else {
                    ok = false;
                    continue;
                };
                match Aggregate::from_name(s) {
                    Some(a) if aggregates.contains(&a) => {
                        ok = false;
                        cx.problem(
                            item,
                            &key,
                            format!("{s:?} is listed twice"),
                            "list each aggregate once",
                        );
                    }
                    Some(a) => aggregates.push(a),
                    None => {
                        ok = false;
                        cx.problem(
                            item,
                            &key,
                            format!("aggregate {s:?} is not allowed"),
                            "use only \"count\", \"sum\" and \"avg\" (MIN, MAX and percentiles reveal single customers)",
                        );
                    }
                }
            }
            if items.is_empty() {
                ok = false;
                cx.problem(
                    av,
                    "privacy.aggregates",
                    "no aggregate is allowed, so no query could run",
                    "list at least \"count\"",
                );
            }
        } else {
            ok = false;
        }
    }
    let dp_v = cx.get(t, None, "privacy", "differential_privacy", false);
    let exact_v = cx.get(t, None, "privacy", "exact_results", false);
    let exact = match exact_v {
        Some(ev) => match ev.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                cx.wrong_type(ev, "privacy.exact_results", "true");
                ok = false;
                None
            }
        },
        None => Some(false),
    };
    let mode = match (dp_v, exact) {
        (Some(dv), Some(false)) | (Some(dv), None) => {
            if let (Some(ev), Some(false)) = (exact_v, exact) {
                cx.problem(
                    ev,
                    "privacy.exact_results",
                    "exact_results = false has no meaning next to differential_privacy",
                    "remove the exact_results line",
                );
                ok = false;
            }
            walk_dp(cx, dv)
        }
        (Some(dv), Some(true)) => {
            cx.problem(
                dv,
                "privacy",
                "both differential_privacy and exact_results = true are set; choose one",
                "keep differential_privacy (noise protects customers) or exact_results = true (no noise, see the warning in docs/AGREEMENTS.md), not both",
            );
            None
        }
        (None, Some(true)) => Some(PrivacyMode::ExactResults),
        (None, _) => {
            cx.at(
                span,
                "privacy",
                "neither differential_privacy nor exact_results = true is set".into(),
                "add differential_privacy = { epsilon_per_query = …, budget = …, delta = … }, or opt in to exact_results = true after reading its risk in docs/AGREEMENTS.md".into(),
            );
            None
        }
    };
    if !ok {
        return None;
    }
    Some(Privacy {
        aggregates,
        mode: mode?,
    })
}

fn walk_dp(cx: &mut Cx<'_>, v: &Value<'_>) -> Option<PrivacyMode> {
    let path = "privacy.differential_privacy";
    let t = cx.table(v, path)?;
    cx.deny_unknown(t, path, DP_KEYS);
    let span = span_of(v);
    let positive = |cx: &mut Cx<'_>, key: &str| {
        let value = cx.get(t, span.clone(), path, key, true)?;
        let full = format!("{path}.{key}");
        let n = cx.number(value, &full)?;
        if n > 0.0 {
            Some((n, value))
        } else {
            cx.problem(
                value,
                &full,
                format!("{key} must be above 0, it is {n}"),
                format!("set {key} to a positive number"),
            );
            None
        }
    };
    let epsilon = positive(cx, "epsilon_per_query");
    let budget = positive(cx, "budget");
    let delta = cx.get(t, span.clone(), path, "delta", true).and_then(|dv| {
        let full = format!("{path}.delta");
        let n = cx.number(dv, &full)?;
        if n > 0.0 && n < 1.0 {
            Some((n, dv))
        } else {
            cx.problem(
                dv,
                &full,
                format!("delta must be above 0 and below 1, it is {n}"),
                "use a tiny delta such as 1e-6 (well below 1 / number of customers); \
                 delta = 0 would need an infinite threshold for showing a group",
            );
            None
        }
    });
    let (epsilon, _) = epsilon?;
    let (budget, bv) = budget?;
    if budget < epsilon {
        cx.problem(
            bv,
            &format!("{path}.budget"),
            format!("the budget ({budget}) is smaller than one query's epsilon ({epsilon}), so no query could run"),
            "set budget to at least epsilon_per_query",
        );
        return None;
    }
    let (delta, dv) = delta?;
    // Each answer may show a group of one customer with probability up to delta, and a
    // party's analysts get floor(budget / epsilon) answers: the deltas add up.
    let queries = (budget / epsilon + 1e-9).floor();
    if queries * delta > MAX_TOTAL_DELTA {
        cx.problem(
            dv,
            &format!("{path}.delta"),
            format!(
                "over the whole budget ({queries} queries) delta adds up to {}, above {MAX_TOTAL_DELTA}: \
                 the chance that some answer shows a group of one customer would be too high",
                queries * delta
            ),
            format!(
                "lower delta to at most {} (1e-6 is usual), or raise epsilon_per_query / lower the budget",
                MAX_TOTAL_DELTA / queries
            ),
        );
        return None;
    }
    Some(PrivacyMode::DifferentialPrivacy {
        epsilon_per_query: epsilon,
        budget,
        delta,
    })
}
