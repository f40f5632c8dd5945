//! Differential privacy in the engine: the noisy replacement of the aggregate.
//!
//! In DP mode the checked plan's aggregate is not run by DataFusion. Instead its input (the
//! scan of `overlap` and the WHERE filter) is streamed, every group's exact measurements
//! are accumulated here (never released), noise from [`accord_dp`] is added, and DP
//! partition selection decides which groups exist in the result. The noisy groups then
//! take the aggregate's place, so the k filter, HAVING, ORDER BY and LIMIT of the plan run
//! over noisy values only. docs/PRIVACY.md describes the accounting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use accord_dp::{NoiseSource, Quantizer, QueryPrivacy, Rational};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::StreamExt;

use crate::error::EngineError;
use crate::spec::{Role, TableSpec};

/// The agreement's differential privacy and the engine's noise generator.
pub(crate) struct DpState {
    pub(crate) privacy: QueryPrivacy,
    noise: Mutex<NoiseSource>,
}

impl std::fmt::Debug for DpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpState")
            .field("privacy", &self.privacy)
            .finish_non_exhaustive()
    }
}

impl DpState {
    pub(crate) fn new(privacy: QueryPrivacy, noise: NoiseSource) -> Self {
        Self {
            privacy,
            noise: Mutex::new(noise),
        }
    }
}

/// What one output column of the aggregate measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    /// `COUNT(*)` or a hidden group-size column: the noisy group size N.
    Size,
    /// `COUNT(metric)`: index into the non-null counts.
    Count(usize),
    /// `SUM(metric)`: index into the sums.
    Sum(usize),
    /// `AVG(metric)`: noisy sum over noisy non-null count.
    Avg { count: usize, sum: usize },
}

/// One metric the query reads: its input column and how it is quantized.
#[derive(Debug, Clone)]
struct Metric {
    input: usize,
    quantizer: Quantizer,
}

#[derive(Debug, Clone, Default)]
struct Exact {
    size: u64,
    counts: Vec<u64>,
    sums: Vec<i128>,
}

/// Runs `aggregate` with noise and partition selection; returns the noisy groups with the
/// aggregate's schema. Nothing exact leaves this function.
pub(crate) async fn noisy_groups(
    state: &SessionState,
    runner: &crate::Runner,
    aggregate: &Aggregate,
    spec: &TableSpec,
    dp: &DpState,
) -> Result<Vec<RecordBatch>, EngineError> {
    let input_schema = aggregate.input.schema();
    let internal = |what: String| EngineError::Internal(format!("differential privacy: {what}"));

    let mut keys = Vec::with_capacity(aggregate.group_expr.len());
    for g in &aggregate.group_expr {
        let Expr::Column(col) = g else {
            return Err(internal(format!("group key {g} is not a column")));
        };
        keys.push(
            input_schema
                .index_of_column(col)
                .map_err(|e| internal(format!("group key {col}: {e}")))?,
        );
    }

    // Which metric each aggregate reads; counts and sums are measured once per metric.
    let mut count_metrics: Vec<Metric> = Vec::new();
    let mut sum_metrics: Vec<Metric> = Vec::new();
    let metric_of = |args: &[Expr]| -> Result<Option<Metric>, EngineError> {
        match args {
            [Expr::Literal(v, _)] if !v.is_null() => Ok(None),
            [Expr::Column(col)] => {
                let input = input_schema
                    .index_of_column(col)
                    .map_err(|e| internal(format!("aggregate argument {col}: {e}")))?;
                let name = input_schema.field(input).name();
                match spec.column(name).map(|c| c.role) {
                    Some(Role::Metric { min, max }) => Ok(Some(Metric {
                        input,
                        quantizer: Quantizer::new(min, max)
                            .map_err(|e| internal(format!("metric {name}: {e}")))?,
                    })),
                    _ => Err(internal(format!(
                        "aggregate argument {name} is not a metric"
                    ))),
                }
            }
            _ => Err(internal("an aggregate argument is not a column".into())),
        }
    };
    let slot = |list: &mut Vec<Metric>, m: Metric| -> usize {
        match list.iter().position(|x| x.input == m.input) {
            Some(i) => i,
            None => {
                list.push(m);
                list.len() - 1
            }
        }
    };
    let mut cells = Vec::with_capacity(aggregate.aggr_expr.len());
    for (i, e) in aggregate.aggr_expr.iter().enumerate() {
        let name = aggregate
            .schema
            .field(aggregate.group_expr.len() + i)
            .name();
        let Expr::AggregateFunction(AggregateFunction { func, params }) = strip_alias(e) else {
            return Err(internal(format!("aggregate {e} is not a function")));
        };
        let metric = metric_of(&params.args)?;
        let cell = if name.starts_with(crate::spec::RESERVED_PREFIX) {
            // The k rewrite's hidden counts: the noisy size, which is at least the
            // partition-selection threshold, itself at least k.
            Cell::Size
        } else {
            match (func.name(), metric) {
                ("count", None) => Cell::Size,
                ("count", Some(m)) => Cell::Count(slot(&mut count_metrics, m)),
                ("sum", Some(m)) => Cell::Sum(slot(&mut sum_metrics, m)),
                ("avg", Some(m)) => Cell::Avg {
                    count: slot(&mut count_metrics, m.clone()),
                    sum: slot(&mut sum_metrics, m),
                },
                (other, _) => {
                    return Err(internal(format!("aggregate {other} has no noisy version")));
                }
            }
        };
        cells.push(cell);
    }

    let measurements = 1 + count_metrics.len() + sum_metrics.len();
    let plan = dp
        .privacy
        .plan(measurements)
        .map_err(|e| internal(e.to_string()))?;
    let sum_scales: Vec<Option<Rational>> = sum_metrics
        .iter()
        .map(|m| match m.quantizer.sensitivity() {
            0 => Ok(None),
            s => plan.sum_scale(s).map(Some),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| internal(e.to_string()))?;

    // Exact per-group measurements (internal only).
    let physical = DefaultPhysicalPlanner::default()
        .create_physical_plan(&aggregate.input, state)
        .await
        .map_err(EngineError::df("planning the scan for noisy aggregation"))?;
    // With the Ballista engine, the scan and WHERE filter run on its executor.
    let mut stream = runner
        .execute(physical, state, "scanning for noisy aggregation")
        .await?;
    let mut groups: BTreeMap<Vec<Option<String>>, Exact> = BTreeMap::new();
    if keys.is_empty() {
        // A query without GROUP BY always has its one group, even over no rows.
        groups.insert(Vec::new(), exact(&count_metrics, &sum_metrics));
    }
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(EngineError::df("scanning for noisy aggregation"))?;
        let key_columns = keys
            .iter()
            .map(|&k| {
                arrow::compute::cast(batch.column(k), &DataType::Utf8)
                    .map_err(|e| internal(format!("group key column: {e}")))
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let key_strings: Vec<&StringArray> =
            key_columns.iter().map(|c| c.as_string::<i32>()).collect();
        let metric_values = |list: &[Metric]| -> Result<Vec<Float64Array>, EngineError> {
            list.iter()
                .map(|m| {
                    batch
                        .column(m.input)
                        .as_primitive_opt::<Float64Type>()
                        .cloned()
                        .ok_or_else(|| internal("a metric column is not Float64".into()))
                })
                .collect()
        };
        let count_values = metric_values(&count_metrics)?;
        let sum_values = metric_values(&sum_metrics)?;
        for row in 0..batch.num_rows() {
            let key: Vec<Option<String>> = key_strings
                .iter()
                .map(|a| (!a.is_null(row)).then(|| a.value(row).to_owned()))
                .collect();
            let entry = groups
                .entry(key)
                .or_insert_with(|| exact(&count_metrics, &sum_metrics));
            entry.size += 1;
            for (i, values) in count_values.iter().enumerate() {
                if !values.is_null(row) {
                    entry.counts[i] += 1;
                }
            }
            for (i, values) in sum_values.iter().enumerate() {
                if !values.is_null(row) {
                    entry.sums[i] +=
                        i128::from(sum_metrics[i].quantizer.quantize(values.value(row)));
                }
            }
        }
    }

    // Noise, partition selection, and the noisy columns.
    let mut noise = dp.noise.lock().unwrap_or_else(|p| p.into_inner());
    let threshold = i128::from(plan.threshold);
    let mut key_out: Vec<Vec<Option<String>>> = vec![Vec::new(); keys.len()];
    let mut cell_out: Vec<Vec<Option<f64>>> = vec![Vec::new(); cells.len()];
    let mut size_out: Vec<i64> = Vec::new();
    let mut count_out: Vec<Vec<i64>> = vec![Vec::new(); count_metrics.len()];
    for (key, exact) in groups {
        let size = i128::from(exact.size) + noise.laplace(plan.count_scale);
        if size < threshold {
            continue;
        }
        let counts: Vec<i128> = exact
            .counts
            .iter()
            .map(|&c| (i128::from(c) + noise.laplace(plan.count_scale)).max(0))
            .collect();
        let sums: Vec<f64> = exact
            .sums
            .iter()
            .zip(&sum_scales)
            .zip(&sum_metrics)
            .map(|((&s, scale), m)| {
                let noisy = match scale {
                    Some(scale) => s + noise.laplace(*scale),
                    None => s,
                };
                noisy as f64 * m.quantizer.step()
            })
            .collect();
        for (out, k) in key_out.iter_mut().zip(key) {
            out.push(k);
        }
        size_out.push(clamp_i64(size));
        for (out, c) in count_out.iter_mut().zip(&counts) {
            out.push(clamp_i64(*c));
        }
        for (out, cell) in cell_out.iter_mut().zip(&cells) {
            out.push(match *cell {
                Cell::Size | Cell::Count(_) => None,
                Cell::Sum(s) => Some(sums[s]),
                Cell::Avg { count, sum } => {
                    let (min, max) = sum_metrics[sum].quantizer.bounds();
                    if counts[count] == 0 {
                        None
                    } else {
                        Some((sums[sum] / counts[count] as f64).clamp(min, max))
                    }
                }
            });
        }
    }
    drop(noise);

    let schema = Arc::clone(aggregate.schema.inner());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, values) in key_out.into_iter().enumerate() {
        let array: ArrayRef = Arc::new(StringArray::from(values));
        columns.push(cast_to(array, schema.field(i).data_type())?);
    }
    for (i, (cell, values)) in cells.iter().zip(cell_out).enumerate() {
        let array: ArrayRef = match *cell {
            Cell::Size => Arc::new(Int64Array::from(size_out.clone())),
            Cell::Count(c) => Arc::new(Int64Array::from(count_out[c].clone())),
            Cell::Sum(_) | Cell::Avg { .. } => Arc::new(Float64Array::from(values)),
        };
        columns.push(cast_to(array, schema.field(keys.len() + i).data_type())?);
    }
    let batch = RecordBatch::try_new(schema, columns)
        .map_err(|e| internal(format!("building the noisy groups: {e}")))?;
    Ok(vec![batch])
}

fn exact(counts: &[Metric], sums: &[Metric]) -> Exact {
    Exact {
        size: 0,
        counts: vec![0; counts.len()],
        sums: vec![0; sums.len()],
    }
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

fn cast_to(array: ArrayRef, to: &DataType) -> Result<ArrayRef, EngineError> {
    if array.data_type() == to {
        return Ok(array);
    }
    arrow::compute::cast(&array, to).map_err(|e| {
        EngineError::Internal(format!(
            "differential privacy: casting a noisy column to {to}: {e}"
        ))
    })
}

fn strip_alias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}
