//! `[parties.<name>]` and their `contributes` columns.

use std::collections::HashMap;

use super::Value;
use super::cx::{Cx, span_of};
use super::special::detect_special;
use crate::manifest::{ColumnRole, Contribution, Party, SPECIAL_CATEGORIES};

const PARTY_KEYS: &[&str] = &["public_key", "max_rows", "consent_column", "contributes"];
const CONTRIBUTION_KEYS: &[&str] = &[
    "column",
    "role",
    "min",
    "max",
    "special_category",
    "legal_basis",
];

/// One `[parties.<name>]` table.
pub(super) fn walk_party(cx: &mut Cx<'_>, v: &Value<'_>, path: &str) -> Option<Party> {
    let t = cx.table(v, path)?;
    cx.deny_unknown(t, path, PARTY_KEYS);
    let span = span_of(v);
    let public_key = cx
        .get(t, span.clone(), path, "public_key", true)
        .and_then(|v| cx.public_key(v, &format!("{path}.public_key")));
    let max_rows = cx
        .get(t, span.clone(), path, "max_rows", true)
        .and_then(|v| {
            cx.unsigned::<u64>(
                v,
                &format!("{path}.max_rows"),
                1,
                "the upload cap must allow at least one row",
            )
        });
    let consent_v = cx.get(t, span.clone(), path, "consent_column", true);
    let consent_column =
        consent_v.and_then(|v| cx.name(v, &format!("{path}.consent_column"), "consent column"));
    let mut ok = true;
    let mut contributes = Vec::new();
    if let Some(cv) = cx.get(t, span, path, "contributes", true) {
        let cpath = format!("{path}.contributes");
        if let Some(items) = cx.array(cv, &cpath) {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, item) in items.iter().enumerate() {
                let ipath = format!("{cpath}[{i}]");
                match walk_contribution(cx, item, &ipath) {
                    Some(c) => {
                        if let Some(first) = seen.get(&c.column) {
                            ok = false;
                            cx.problem(
                                item,
                                &format!("{ipath}.column"),
                                format!(
                                    "column {:?} is contributed twice (also {cpath}[{first}])",
                                    c.column
                                ),
                                "list each column once",
                            );
                        } else if consent_column.as_deref() == Some(c.column.as_str()) {
                            ok = false;
                            cx.problem(
                                item,
                                &format!("{ipath}.column"),
                                format!("column {:?} is the consent column; it decides which rows are uploaded and is not shared", c.column),
                                "remove it from contributes",
                            );
                        } else {
                            seen.insert(c.column.clone(), i);
                            contributes.push(c);
                        }
                    }
                    None => ok = false,
                }
            }
        } else {
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(Party {
        public_key: public_key?,
        max_rows: max_rows?,
        consent_column: consent_column?,
        contributes,
    })
}

fn walk_contribution(cx: &mut Cx<'_>, item: &Value<'_>, path: &str) -> Option<Contribution> {
    let t = cx.table(item, path)?;
    cx.deny_unknown(t, path, CONTRIBUTION_KEYS);
    let span = span_of(item);
    let column = cx
        .get(t, span.clone(), path, "column", true)
        .and_then(|v| cx.name(v, &format!("{path}.column"), "column"));
    let role_v = cx.get(t, span.clone(), path, "role", true);
    let role_name = role_v.and_then(|v| cx.string(v, &format!("{path}.role")));
    let min_v = cx.get(t, None, path, "min", false);
    let max_v = cx.get(t, None, path, "max", false);
    let min = min_v.and_then(|v| cx.number(v, &format!("{path}.min")));
    let max = max_v.and_then(|v| cx.number(v, &format!("{path}.max")));
    let role = match (role_name, role_v) {
        (Some("dimension"), Some(rv)) => {
            let mut ok = true;
            for (v, key) in [(min_v, "min"), (max_v, "max")] {
                if let Some(v) = v {
                    ok = false;
                    cx.problem(
                        v,
                        &format!("{path}.{key}"),
                        "a dimension has no bounds: bounds only apply to metrics",
                        format!("remove {key}, or set role = \"metric\""),
                    );
                }
            }
            let _ = rv;
            ok.then_some(ColumnRole::Dimension)
        }
        (Some("metric"), Some(rv)) => match (min_v, max_v, min, max) {
            (Some(_), Some(_), Some(min), Some(max)) => {
                if min < max {
                    Some(ColumnRole::Metric { min, max })
                } else {
                    cx.problem(
                        max_v.unwrap_or(rv),
                        &format!("{path}.max"),
                        format!("min ({min}) must be below max ({max})"),
                        "set max above min: values are clamped to [min, max]",
                    );
                    None
                }
            }
            (None, _, _, _) | (_, None, _, _) => {
                let missing: Vec<&str> = [("min", min_v.is_none()), ("max", max_v.is_none())]
                    .into_iter()
                    .filter(|(_, m)| *m)
                    .map(|(k, _)| k)
                    .collect();
                cx.problem(
                    item,
                    &format!("{path}.{}", missing.join("/")),
                    format!("a metric needs bounds: {} missing", missing.join(" and ")),
                    "add min = … and max = …: values are clamped to these bounds, which limits what one customer can contribute",
                );
                None
            }
            _ => None, // min/max present but not numbers: already reported
        },
        (Some(other), Some(rv)) => {
            cx.problem(
                rv,
                &format!("{path}.role"),
                format!("role {other:?} is not known"),
                "use role = \"dimension\" (a category) or role = \"metric\" (a number, with min and max)",
            );
            None
        }
        _ => None,
    };

    let special_v = cx.get(t, None, path, "special_category", false);
    let special = special_v.and_then(|v| cx.string(v, &format!("{path}.special_category")));
    let basis_v = cx.get(t, None, path, "legal_basis", false);
    let basis = basis_v.and_then(|v| cx.string(v, &format!("{path}.legal_basis")));
    let mut special_ok =
        (special_v.is_none() || special.is_some()) && (basis_v.is_none() || basis.is_some());
    let detected = column.as_deref().map(detect_special).unwrap_or_default();
    if let (Some(kind), Some(sv)) = (special, special_v) {
        if !SPECIAL_CATEGORIES.contains(&kind) {
            special_ok = false;
            cx.problem(
                sv,
                &format!("{path}.special_category"),
                format!("{kind:?} is not a special category"),
                format!("use one of: {}", SPECIAL_CATEGORIES.join(", ")),
            );
        } else if !detected.is_empty() && !detected.contains(&kind) {
            special_ok = false;
            cx.problem(
                sv,
                &format!("{path}.special_category"),
                format!(
                    "the column name suggests {} but special_category says {kind:?}",
                    detected.join(" and ")
                ),
                format!(
                    "set special_category = {:?} (or rename the column if its name misleads)",
                    detected[0]
                ),
            );
        }
    }
    let is_special = special.is_some() || !detected.is_empty();
    if is_special {
        let kind = special.or(detected.first().copied()).unwrap_or("health");
        if special.is_none() {
            special_ok = false;
            let col = column.as_deref().unwrap_or("?");
            cx.problem(
                item,
                &format!("{path}.special_category"),
                format!(
                    "column {col:?} looks like special-category data ({}), which needs an explicit legal basis",
                    detected.join(", ")
                ),
                format!(
                    "do not share it, or declare special_category = {kind:?} and legal_basis = \"explicit-consent\" after checking that every customer explicitly consented"
                ),
            );
        }
        match (basis, basis_v) {
            (Some("explicit-consent"), _) => {}
            (Some(other), Some(bv)) => {
                special_ok = false;
                cx.problem(
                    bv,
                    &format!("{path}.legal_basis"),
                    format!("legal basis {other:?} is not accepted for special-category data"),
                    "only legal_basis = \"explicit-consent\" is accepted; otherwise do not share this column",
                );
            }
            _ if special.is_some() => {
                special_ok = false;
                cx.problem(
                    special_v.unwrap_or(item),
                    &format!("{path}.legal_basis"),
                    "special-category data needs legal_basis = \"explicit-consent\"",
                    "add legal_basis = \"explicit-consent\" once every customer explicitly consented, or do not share this column",
                );
            }
            _ => {}
        }
    } else if let (Some(_), Some(bv)) = (basis, basis_v) {
        special_ok = false;
        cx.problem(
            bv,
            &format!("{path}.legal_basis"),
            "legal_basis is only used together with special_category",
            "remove legal_basis, or add special_category if this column holds special-category data",
        );
    }

    if !special_ok {
        return None;
    }
    Some(Contribution {
        column: column?,
        role: role?,
        special_category: special.map(str::to_owned),
        legal_basis: basis.map(str::to_owned),
    })
}
