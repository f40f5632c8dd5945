//! The k-anonymity rewrite of an accepted plan, and the helpers that find and replace its
//! aggregate (used when differential privacy releases its groups).

use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, Filter, LogicalPlan, Projection, lit};

use super::{HIDDEN_COUNT, HIDDEN_NONNULL, strip_alias};
use crate::error::EngineError;

/// The k rewrite: adds a hidden `count(*)` and, for every metric an aggregate reads, a hidden
/// `count(metric)` to the aggregate, and a filter requiring each of them `>= k` directly
/// above it (beneath HAVING, ORDER BY and LIMIT), then drops the hidden columns from the
/// output. A row is released only if every number in it rests on at least k customers.
pub(crate) fn add_k_filter(plan: LogicalPlan, k: u64) -> Result<LogicalPlan, EngineError> {
    let k = i64::try_from(k)
        .map_err(|_| EngineError::Internal(format!("k = {k} does not fit in an i64")))?;
    let rewritten = rewrite(plan, k)?;
    let keep: Vec<Expr> = rewritten
        .schema()
        .columns()
        .into_iter()
        .filter(|c| c.name != HIDDEN_COUNT && !c.name.starts_with(HIDDEN_NONNULL))
        .map(Expr::Column)
        .collect();
    if keep.len() == rewritten.schema().fields().len() {
        return Ok(rewritten);
    }
    let projection = Projection::try_new(keep, Arc::new(rewritten))
        .map_err(EngineError::df("dropping the hidden group-size column"))?;
    Ok(LogicalPlan::Projection(projection))
}

fn rewrite(plan: LogicalPlan, k: i64) -> Result<LogicalPlan, EngineError> {
    match plan {
        LogicalPlan::Aggregate(agg) => {
            let hidden = Expr::AggregateFunction(AggregateFunction::new_udf(
                count_udaf(),
                vec![lit(1i64)],
                false,
                None,
                vec![],
                None,
            ))
            .alias(HIDDEN_COUNT);
            let mut aggr_expr = agg.aggr_expr.clone();
            aggr_expr.push(hidden);
            let mut gate = Expr::Column(Column::from_name(HIDDEN_COUNT)).gt_eq(lit(k));
            for (i, metric) in aggregated_columns(&agg.aggr_expr).into_iter().enumerate() {
                let name = format!("{HIDDEN_NONNULL}{i}");
                aggr_expr.push(
                    Expr::AggregateFunction(AggregateFunction::new_udf(
                        count_udaf(),
                        vec![Expr::Column(metric)],
                        false,
                        None,
                        vec![],
                        None,
                    ))
                    .alias(&name),
                );
                gate = gate.and(Expr::Column(Column::from_name(name)).gt_eq(lit(k)));
            }
            let aggregate =
                Aggregate::try_new(Arc::clone(&agg.input), agg.group_expr.clone(), aggr_expr)
                    .map_err(EngineError::df("adding the hidden group size"))?;
            let filter = Filter::try_new(gate, Arc::new(LogicalPlan::Aggregate(aggregate)))
                .map_err(EngineError::df("adding the k filter"))?;
            Ok(LogicalPlan::Filter(filter))
        }
        other => {
            let inputs = other.inputs();
            if inputs.is_empty() {
                return Ok(other);
            }
            let new_inputs = inputs
                .into_iter()
                .map(|i| rewrite(i.clone(), k))
                .collect::<Result<Vec<_>, _>>()?;
            other
                .with_new_exprs(other.expressions(), new_inputs)
                .map_err(EngineError::df("rebuilding the plan above the k filter"))
        }
    }
}

/// Replaces the single aggregate of `plan` with `replacement` (same schema).
pub(crate) fn replace_aggregate(
    plan: LogicalPlan,
    replacement: LogicalPlan,
) -> Result<LogicalPlan, EngineError> {
    let mut replacement = Some(replacement);
    let result = plan
        .transform_up(|node| {
            if matches!(node, LogicalPlan::Aggregate(_))
                && let Some(r) = replacement.take()
            {
                return Ok(Transformed::yes(r));
            }
            Ok(Transformed::no(node))
        })
        .map_err(EngineError::df("substituting the materialized groups"))?;
    if replacement.is_some() {
        return Err(EngineError::Internal(
            "the optimized plan has no aggregate to materialize".into(),
        ));
    }
    Ok(result.data)
}

/// The single aggregate of a checked plan.
pub(crate) fn find_aggregate(plan: &LogicalPlan) -> Option<&Aggregate> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(a),
        other => other.inputs().into_iter().find_map(find_aggregate),
    }
}

/// The distinct columns the aggregate functions of an aggregate read (the checked plan
/// allows only bare columns, and only metrics, as arguments).
fn aggregated_columns(aggr_expr: &[Expr]) -> Vec<Column> {
    let mut out: Vec<Column> = Vec::new();
    for e in aggr_expr {
        if let Expr::AggregateFunction(AggregateFunction { params, .. }) = strip_alias(e) {
            for arg in &params.args {
                if let Expr::Column(c) = arg
                    && !out.contains(c)
                {
                    out.push(c.clone());
                }
            }
        }
    }
    out
}

/// Indices, in the aggregate's output, of the columns the k filter compares with k: every
/// plain `COUNT(*)` (the group size) and every plain `COUNT(column)` (customers with a value
/// for an aggregated metric). A group is released only if all of them are at least k.
pub(crate) fn gate_columns(agg: &Aggregate) -> Vec<usize> {
    agg.aggr_expr
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            let Expr::AggregateFunction(AggregateFunction { func, params }) = strip_alias(e) else {
                return false;
            };
            let plain_count = func.name() == "count" && !params.distinct && params.filter.is_none();
            let counted = match params.args.as_slice() {
                [Expr::Literal(v, _)] => !v.is_null(),
                [Expr::Column(_)] => true,
                _ => false,
            };
            plain_count && counted
        })
        .map(|(i, _)| agg.group_expr.len() + i)
        .collect()
}
