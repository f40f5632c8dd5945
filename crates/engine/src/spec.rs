//! The table spec: which columns `overlap` has, what role each plays, k, and the
//! aggregates the agreement allows.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::EngineError;

/// Prefix of the policy's own hidden column names: no table column may use it, and analysts
/// may not write it (`ast.rs`). Defined here, with the table's naming rules, so the spec
/// depends on nothing of the policy (the imports of `ast` and `spec` point one way).
pub(crate) const RESERVED_PREFIX: &str = "__accord";

/// Smallest k the engine accepts (DESIGN §2: agreements refuse k below 10).
pub const MIN_GROUP_SIZE: u64 = 10;

/// The role a column plays in queries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// A category: may be grouped by and filtered on (Arrow `Utf8`).
    Dimension,
    /// A number: may only be aggregated (Arrow `Float64`), within the agreed bounds.
    Metric {
        /// Agreed lower bound (values were clamped to it at upload).
        min: f64,
        /// Agreed upper bound (values were clamped to it at upload).
        max: f64,
    },
}

/// One column of `overlap`, named `<party>_<column>` (e.g. `drinks_loyalty_tier`).
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    /// Column name as analysts write it.
    pub name: String,
    /// Dimension or metric.
    pub role: Role,
}

/// An aggregate function the agreement may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    /// `COUNT(*)` or `COUNT(metric)`.
    Count,
    /// `SUM(metric)`.
    Sum,
    /// `AVG(metric)`.
    Avg,
}

impl AggregateKind {
    /// DataFusion's name for the aggregate.
    pub fn function_name(&self) -> &'static str {
        match self {
            AggregateKind::Count => "count",
            AggregateKind::Sum => "sum",
            AggregateKind::Avg => "avg",
        }
    }
}

/// What the `overlap` table holds and what may be asked of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The columns, in table order.
    pub columns: Vec<ColumnSpec>,
    /// k: the smallest number of customers any output row may describe.
    pub min_group_size: u64,
    /// The aggregates the agreement allows.
    pub aggregates: Vec<AggregateKind>,
}

impl TableSpec {
    /// The Arrow schema of `overlap`: dimensions `Utf8`, metrics `Float64`, all nullable,
    /// in spec order, nothing else (tokens and handles are never addressable).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| {
                    let data_type = match c.role {
                        Role::Dimension => DataType::Utf8,
                        Role::Metric { .. } => DataType::Float64,
                    };
                    Field::new(&c.name, data_type, true)
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// The column named `name`, if any.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Checks that the spec is usable: unique, well-formed names, finite ordered metric
    /// bounds, and k at least [`MIN_GROUP_SIZE`].
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |problem: String| Err(EngineError::InvalidSpec { problem });
        if self.columns.is_empty() {
            return invalid("the table has no columns".into());
        }
        if self.min_group_size < MIN_GROUP_SIZE {
            return invalid(format!(
                "min_group_size is {} but must be at least {MIN_GROUP_SIZE}",
                self.min_group_size
            ));
        }
        let mut names = HashSet::new();
        for c in &self.columns {
            let well_formed = !c.name.is_empty()
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
                && !c.name.starts_with(|ch: char| ch.is_ascii_digit());
            if !well_formed {
                return invalid(format!(
                    "column name {:?} must be lower-case ASCII letters, digits and '_', not starting with a digit",
                    c.name
                ));
            }
            if c.name.starts_with(RESERVED_PREFIX) {
                return invalid(format!(
                    "column name {} uses the reserved prefix {RESERVED_PREFIX}",
                    c.name
                ));
            }
            if !names.insert(c.name.as_str()) {
                return invalid(format!("column {} appears twice", c.name));
            }
            if let Role::Metric { min, max } = c.role
                && !(min.is_finite() && max.is_finite() && min <= max)
            {
                return invalid(format!(
                    "metric {} has bounds [{min}, {max}]; they must be finite with min <= max",
                    c.name
                ));
            }
        }
        Ok(())
    }
}

/// A dimension that identifies rather than categorises: it has more distinct values
/// than (matched rows / k), so it would split the overlap into groups too small to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardinalityProblem {
    /// The dimension column.
    pub column: String,
    /// How many distinct values it holds (NULL counts as one value).
    pub distinct_values: u64,
    /// The largest number of distinct values allowed: matched rows / k.
    pub limit: u64,
}

impl fmt::Display for CardinalityProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dimension {} has {} distinct values but at most {} are allowed (matched rows / k): \
             it identifies customers rather than categorising them; coarsen it (e.g. bucket it) or drop it from the agreement",
            self.column, self.distinct_values, self.limit
        )
    }
}

/// DESIGN §4: at sealing, every dimension column with more distinct values than
/// (matched rows / k) is refused. Returns one problem per such column (empty: all fine).
///
/// `batches` are the sealed snapshot's rows (matched customers only). Columns missing
/// from the batches or not `Utf8` are skipped here: [`crate::Engine::new`] refuses them.
pub fn dimension_cardinality_problems(
    spec: &TableSpec,
    batches: &[RecordBatch],
) -> Vec<CardinalityProblem> {
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let limit = rows / spec.min_group_size.max(1);
    let mut problems = Vec::new();
    for column in spec.columns.iter().filter(|c| c.role == Role::Dimension) {
        let mut values: HashSet<&str> = HashSet::new();
        let mut has_null = false;
        let mut present = true;
        for batch in batches {
            let Some(array) = batch.column_by_name(&column.name) else {
                present = false;
                break;
            };
            let Some(strings) = array.as_string_opt::<i32>() else {
                present = false;
                break;
            };
            for i in 0..strings.len() {
                if strings.is_null(i) {
                    has_null = true;
                } else {
                    values.insert(strings.value(i));
                }
            }
        }
        if !present {
            continue;
        }
        let distinct = values.len() as u64 + u64::from(has_null);
        if distinct > limit {
            problems.push(CardinalityProblem {
                column: column.name.clone(),
                distinct_values: distinct,
                limit,
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    fn spec() -> TableSpec {
        TableSpec {
            columns: vec![
                ColumnSpec {
                    name: "drinks_tier".into(),
                    role: Role::Dimension,
                },
                ColumnSpec {
                    name: "drinks_spend".into(),
                    role: Role::Metric {
                        min: 0.0,
                        max: 10.0,
                    },
                },
            ],
            min_group_size: 10,
            aggregates: vec![AggregateKind::Count],
        }
    }

    #[test]
    fn schema_is_utf8_and_float64_nullable() {
        let s = spec().arrow_schema();
        assert_eq!(s.fields().len(), 2);
        assert_eq!(s.field(0).data_type(), &DataType::Utf8);
        assert_eq!(s.field(1).data_type(), &DataType::Float64);
        assert!(s.fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn validate_refuses_bad_specs() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.min_group_size = 5;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns[1].role = Role::Metric {
            min: 1.0,
            max: f64::NAN,
        };
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns[1].name = "drinks_tier".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns[1].name = "__accord_x".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.columns[1].name = "Drinks".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn cardinality_limit_is_rows_over_k() {
        let s = spec();
        let batch = |tiers: Vec<Option<String>>| {
            let n = tiers.len();
            RecordBatch::try_new(
                s.arrow_schema(),
                vec![
                    Arc::new(StringArray::from(tiers)),
                    Arc::new(Float64Array::from(vec![1.0; n])),
                ],
            )
            .unwrap()
        };
        // 40 rows, k = 10: at most 4 distinct values.
        let four: Vec<Option<String>> = (0..40).map(|i| Some(format!("t{}", i % 4))).collect();
        assert!(dimension_cardinality_problems(&s, &[batch(four)]).is_empty());
        let mut five: Vec<Option<String>> = (0..39).map(|i| Some(format!("t{}", i % 4))).collect();
        five.push(None);
        let problems = dimension_cardinality_problems(&s, &[batch(five)]);
        assert_eq!(
            problems,
            vec![CardinalityProblem {
                column: "drinks_tier".into(),
                distinct_values: 5,
                limit: 4
            }]
        );
        assert!(
            problems[0]
                .to_string()
                .contains("drinks_tier has 5 distinct values")
        );
    }
}
