//! Second layer of the policy: a whitelist walk over DataFusion's logical plan, the
//! k-anonymity rewrite, and the re-check of the optimized plan.
//!
//! The walk resolves every column to the base column it comes from (by position, so
//! aliases cannot turn a metric into a dimension): a dimension, a metric, or the output
//! of an allowed aggregate over a metric (or `COUNT(*)`).

use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Expr, FetchType, Filter, LogicalPlan, Operator, Projection, SkipType,
};

use crate::refusal::{Refusal, Rule};
use crate::spec::{AggregateKind, Role, TableSpec};

mod rewrite;

pub(crate) use rewrite::{add_k_filter, find_aggregate, gate_columns, replace_aggregate};

/// Name of the hidden group-size column the rewrite adds to the aggregate.
pub(crate) const HIDDEN_COUNT: &str = "__accord_group_size";

/// Prefix of the hidden `COUNT(metric)` columns the rewrite adds, one per aggregated metric:
/// every released cell must rest on at least k customers with a value for its metric.
pub(crate) const HIDDEN_NONNULL: &str = "__accord_nonnull_";

/// Where an output column of a plan node comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Origin {
    /// A dimension column of `overlap` (index into the spec).
    Dimension(usize),
    /// A metric column of `overlap` (index into the spec).
    Metric(usize),
    /// The output of an allowed aggregate; `metric: None` is `COUNT(*)`.
    Aggregate {
        kind: AggregateKind,
        metric: Option<usize>,
    },
}

/// Which check is being run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stage {
    /// The plan as DataFusion's SQL planner produced it, before the rewrite.
    Initial,
    /// The rewritten, optimized plan: every aggregate must sit under a `>= k` filter.
    Optimized { k: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Zone {
    /// Above the (single) aggregate: HAVING, projection, ORDER BY, LIMIT.
    Above,
    /// Below the aggregate: WHERE, the scan of `overlap`.
    Below,
}

struct Walked {
    origins: Vec<Origin>,
    /// The output comes straight from an aggregate whose group size no k filter covers yet.
    ungated: bool,
    /// Metrics (spec indices) the aggregate aggregates whose `COUNT(metric) >= k` no filter
    /// covers yet.
    ungated_metrics: Vec<usize>,
}

impl Walked {
    /// Some number of the output is not yet proven to rest on at least k customers.
    fn open(&self) -> bool {
        self.ungated || !self.ungated_metrics.is_empty()
    }
}

/// What a k-gate conjunct proves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Gate {
    /// Every group has at least k customers (`COUNT(*) >= k`).
    GroupSize,
    /// Every group has at least k customers with a value for this metric (`COUNT(m) >= k`).
    Metric(usize),
}

struct Checker<'a> {
    spec: &'a TableSpec,
    stage: Stage,
    aggregates: usize,
}

fn refusal(rule: Rule, construct: impl Into<String>) -> Refusal {
    Refusal::new(rule, construct)
}

/// A short rendering of an expression for a refusal (it holds only the query's own text).
fn show(expr: &Expr) -> String {
    let text = without_optimizer_names(&expr.human_display().to_string());
    let mut out: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// The optimizer names an expression it factored out `__common_expr_<n>`: an analyst never
/// wrote that, so a refusal says what it is instead.
fn without_optimizer_names(text: &str) -> String {
    const NAME: &str = "__common_expr_";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(NAME) {
        out.push_str(&rest[..at]);
        let after = &rest[at + NAME.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        out.push_str("(an expression your query repeats)");
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Checks `plan` against the whitelist for `stage`.
pub(crate) fn check(plan: &LogicalPlan, spec: &TableSpec, stage: Stage) -> Result<(), Refusal> {
    let mut checker = Checker {
        spec,
        stage,
        aggregates: 0,
    };
    let walked = checker.walk(plan, Zone::Above)?;
    if checker.aggregates != 1 {
        return Err(refusal(
            Rule::RowLevel,
            "a query without GROUP BY or an aggregate",
        ));
    }
    if walked.open() && matches!(stage, Stage::Optimized { .. }) {
        return Err(refusal(
            Rule::PlanShape,
            "the optimized plan (its aggregate lost the k filter)",
        ));
    }
    Ok(())
}

impl Checker<'_> {
    fn walk(&mut self, plan: &LogicalPlan, zone: Zone) -> Result<Walked, Refusal> {
        match plan {
            LogicalPlan::Projection(p) => self.projection(p, zone),
            LogicalPlan::Filter(f) => self.filter(f, zone),
            LogicalPlan::Aggregate(a) => self.aggregate(a, zone),
            LogicalPlan::Sort(s) => {
                if zone == Zone::Below {
                    return Err(refusal(Rule::PlanShape, "ORDER BY below the aggregate"));
                }
                let input = self.walk(&s.input, zone)?;
                self.require_gated(&input)?;
                for sort in &s.expr {
                    match self.resolve(&sort.expr, &s.input, &input.origins) {
                        Some(Origin::Dimension(_) | Origin::Aggregate { .. }) => {}
                        Some(Origin::Metric(i)) => return Err(self.metric(i)),
                        None => {
                            return Err(refusal(
                                Rule::OrderBy,
                                format!("ORDER BY {}", show(&sort.expr)),
                            ));
                        }
                    }
                }
                Ok(input)
            }
            LogicalPlan::Limit(l) => {
                if zone == Zone::Below {
                    return Err(refusal(Rule::PlanShape, "LIMIT below the aggregate"));
                }
                if !matches!(l.get_skip_type(), Ok(SkipType::Literal(_))) {
                    return Err(refusal(Rule::Limit, "OFFSET"));
                }
                if !matches!(l.get_fetch_type(), Ok(FetchType::Literal(_))) {
                    return Err(refusal(Rule::Limit, "LIMIT"));
                }
                let input = self.walk(&l.input, zone)?;
                self.require_gated(&input)?;
                Ok(input)
            }
            LogicalPlan::SubqueryAlias(s) => {
                if zone == Zone::Above {
                    return Err(refusal(
                        Rule::RowLevel,
                        "a query without GROUP BY or an aggregate",
                    ));
                }
                let input = self.walk(&s.input, zone)?;
                if input.origins.len() != s.schema.fields().len() {
                    return Err(refusal(Rule::PlanShape, format!("table alias {}", s.alias)));
                }
                Ok(input)
            }
            LogicalPlan::TableScan(scan) => {
                if zone == Zone::Above {
                    return Err(refusal(
                        Rule::RowLevel,
                        "a query without GROUP BY or an aggregate",
                    ));
                }
                // Only the session's one table: `overlap` in the default catalog's `public`
                // schema, however it was spelled.
                if scan.table_name.table() != crate::ast::TABLE_NAME
                    || scan.table_name.schema().is_some_and(|s| s != "public")
                    || scan.table_name.catalog().is_some_and(|c| c != "datafusion")
                {
                    return Err(refusal(
                        Rule::UnknownTable,
                        format!("table {}", scan.table_name),
                    ));
                }
                if scan.fetch.is_some() {
                    return Err(refusal(Rule::PlanShape, "a row limit below the aggregate"));
                }
                let mut origins = Vec::with_capacity(scan.projected_schema.fields().len());
                for field in scan.projected_schema.fields() {
                    let index = self
                        .spec
                        .columns
                        .iter()
                        .position(|c| &c.name == field.name())
                        .ok_or_else(|| {
                            refusal(Rule::UnknownColumn, format!("column {}", field.name()))
                        })?;
                    origins.push(match self.spec.columns[index].role {
                        Role::Dimension => Origin::Dimension(index),
                        Role::Metric { .. } => Origin::Metric(index),
                    });
                }
                for f in &scan.filters {
                    self.predicate(f, plan, &origins)?;
                }
                Ok(Walked {
                    origins,
                    ungated: false,
                    ungated_metrics: Vec::new(),
                })
            }
            LogicalPlan::Join(_) => Err(refusal(Rule::Join, "JOIN")),
            LogicalPlan::Union(_) => Err(refusal(Rule::SetOperation, "UNION")),
            LogicalPlan::Window(_) => Err(refusal(Rule::WindowFunction, "window function")),
            LogicalPlan::Distinct(_) => Err(refusal(Rule::Distinct, "DISTINCT")),
            LogicalPlan::Values(_) => Err(refusal(Rule::Values, "VALUES")),
            LogicalPlan::Subquery(_) => Err(refusal(Rule::Subquery, "subquery")),
            LogicalPlan::Unnest(_) => Err(refusal(Rule::Unnest, "UNNEST")),
            LogicalPlan::RecursiveQuery(_) => Err(refusal(Rule::Cte, "WITH RECURSIVE")),
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => {
                Err(refusal(Rule::Statement, "statement EXPLAIN"))
            }
            LogicalPlan::Statement(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::DescribeTable(_) => Err(refusal(Rule::Statement, "a statement")),
            LogicalPlan::EmptyRelation(_) => {
                Err(refusal(Rule::PlanShape, "SELECT without FROM overlap"))
            }
            LogicalPlan::Extension(_) | LogicalPlan::Repartition(_) => Err(refusal(
                Rule::PlanShape,
                format!("plan node {}", plan.display()),
            )),
        }
    }

    fn require_gated(&self, input: &Walked) -> Result<(), Refusal> {
        if input.open() && matches!(self.stage, Stage::Optimized { .. }) {
            return Err(refusal(
                Rule::PlanShape,
                "the optimized plan (ORDER BY or LIMIT below the k filter)",
            ));
        }
        Ok(())
    }

    fn metric(&self, index: usize) -> Refusal {
        refusal(
            Rule::MetricColumn,
            format!("column {}", self.spec.columns[index].name),
        )
    }

    /// The origin of `expr` if it is a bare column (or an alias of one) of `input`.
    fn resolve(&self, expr: &Expr, input: &LogicalPlan, origins: &[Origin]) -> Option<Origin> {
        match expr {
            Expr::Column(col) => column_origin(col, input, origins),
            Expr::Alias(alias) => self.resolve(&alias.expr, input, origins),
            _ => None,
        }
    }

    fn projection(&mut self, p: &Projection, zone: Zone) -> Result<Walked, Refusal> {
        let input = self.walk(&p.input, zone)?;
        let mut origins = Vec::with_capacity(p.expr.len());
        for expr in &p.expr {
            match self.resolve(expr, &p.input, &input.origins) {
                Some(Origin::Metric(i)) if zone == Zone::Above => return Err(self.metric(i)),
                Some(origin) => origins.push(origin),
                None => match expr.clone().unalias() {
                    Expr::Column(c) => {
                        return Err(refusal(Rule::UnknownColumn, format!("column {}", c.name)));
                    }
                    _ => {
                        return Err(refusal(
                            Rule::Projection,
                            format!("select item {}", show(expr)),
                        ));
                    }
                },
            }
        }
        Ok(Walked {
            origins,
            ungated: input.ungated,
            ungated_metrics: input.ungated_metrics,
        })
    }

    fn filter(&mut self, f: &Filter, zone: Zone) -> Result<Walked, Refusal> {
        let input = self.walk(&f.input, zone)?;
        match zone {
            Zone::Below => {
                self.predicate(&f.predicate, &f.input, &input.origins)?;
                Ok(input)
            }
            Zone::Above => {
                self.having(&f.predicate, &f.input, &input.origins)?;
                let gates: Vec<Gate> = match self.stage {
                    Stage::Optimized { k } => split_conjunction(&f.predicate)
                        .into_iter()
                        .filter_map(|c| k_gate(c, k, &f.input, &input.origins))
                        .collect(),
                    Stage::Initial => Vec::new(),
                };
                let walked = Walked {
                    ungated: input.ungated && !gates.contains(&Gate::GroupSize),
                    ungated_metrics: input
                        .ungated_metrics
                        .iter()
                        .copied()
                        .filter(|m| !gates.contains(&Gate::Metric(*m)))
                        .collect(),
                    origins: input.origins,
                };
                // A HAVING may only sit above the complete k filter, never between.
                if walked.open() {
                    self.require_gated(&walked)?;
                }
                Ok(walked)
            }
        }
    }

    fn aggregate(&mut self, a: &Aggregate, zone: Zone) -> Result<Walked, Refusal> {
        if zone == Zone::Below {
            return Err(refusal(
                Rule::Subquery,
                "an aggregate inside another aggregate",
            ));
        }
        self.aggregates += 1;
        let input = self.walk(&a.input, Zone::Below)?;
        let mut origins = Vec::with_capacity(a.schema.fields().len());
        for g in &a.group_expr {
            match g {
                Expr::Column(col) => match column_origin(col, &a.input, &input.origins) {
                    Some(origin @ Origin::Dimension(_)) => origins.push(origin),
                    Some(Origin::Metric(i)) => return Err(self.metric(i)),
                    _ => {
                        return Err(refusal(Rule::GroupKey, format!("GROUP BY {}", show(g))));
                    }
                },
                Expr::GroupingSet(_) => {
                    return Err(refusal(Rule::GroupingSets, "ROLLUP/CUBE/GROUPING SETS"));
                }
                other => {
                    return Err(refusal(Rule::GroupKey, format!("GROUP BY {}", show(other))));
                }
            }
        }
        let mut ungated_metrics = Vec::new();
        for e in &a.aggr_expr {
            let origin = self.aggregate_expr(e, &a.input, &input.origins)?;
            if let Origin::Aggregate {
                metric: Some(m), ..
            } = origin
                && !ungated_metrics.contains(&m)
            {
                ungated_metrics.push(m);
            }
            origins.push(origin);
        }
        if origins.len() != a.schema.fields().len() {
            return Err(refusal(Rule::GroupingSets, "ROLLUP/CUBE/GROUPING SETS"));
        }
        Ok(Walked {
            origins,
            ungated: true,
            ungated_metrics,
        })
    }

    fn aggregate_expr(
        &self,
        expr: &Expr,
        input: &LogicalPlan,
        origins: &[Origin],
    ) -> Result<Origin, Refusal> {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = strip_alias(expr) else {
            return Err(refusal(
                Rule::AggregateFunction,
                format!("aggregate {}", show(expr)),
            ));
        };
        let shown = func.name().to_ascii_uppercase();
        let kind = match func.name() {
            "count" => AggregateKind::Count,
            "sum" => AggregateKind::Sum,
            "avg" => AggregateKind::Avg,
            _ => {
                return Err(refusal(
                    Rule::AggregateFunction,
                    format!("aggregate {shown}"),
                ));
            }
        };
        // The rewrite's hidden group size and per-metric counts are COUNTs even when the
        // agreement does not offer COUNT to analysts (the AST check and the initial check
        // refuse theirs).
        let hidden_ok =
            kind == AggregateKind::Count && matches!(self.stage, Stage::Optimized { .. });
        if !self.spec.aggregates.contains(&kind) && !hidden_ok {
            return Err(refusal(
                Rule::AggregateFunction,
                format!("aggregate {shown}"),
            ));
        }
        if params.distinct {
            return Err(refusal(
                Rule::AggregateDistinct,
                format!("{shown}(DISTINCT ...)"),
            ));
        }
        if params.filter.is_some() {
            return Err(refusal(
                Rule::AggregateFilter,
                format!("{shown}(...) FILTER"),
            ));
        }
        if !params.order_by.is_empty() {
            return Err(refusal(
                Rule::AggregateOrder,
                format!("{shown}(... ORDER BY ...)"),
            ));
        }
        if params.null_treatment.is_some() {
            return Err(refusal(
                Rule::Clause,
                format!("{shown}(...) IGNORE/RESPECT NULLS"),
            ));
        }
        match params.args.as_slice() {
            [Expr::Literal(value, _)] if kind == AggregateKind::Count && !value.is_null() => {
                Ok(Origin::Aggregate { kind, metric: None })
            }
            [Expr::Column(col)] => match column_origin(col, input, origins) {
                Some(Origin::Metric(m)) => Ok(Origin::Aggregate {
                    kind,
                    metric: Some(m),
                }),
                Some(Origin::Dimension(d)) => Err(refusal(
                    Rule::AggregateArgument,
                    format!("{shown}({}) over a dimension", self.spec.columns[d].name),
                )),
                _ => Err(refusal(
                    Rule::AggregateArgument,
                    format!("argument of {}", show(expr)),
                )),
            },
            _ => Err(refusal(
                Rule::AggregateArgument,
                format!("argument of {}", show(expr)),
            )),
        }
    }

    /// WHERE grammar: comparisons of a dimension with a string literal, IN lists of
    /// string literals, IS [NOT] NULL, joined by AND/OR/NOT.
    fn predicate(&self, e: &Expr, input: &LogicalPlan, origins: &[Origin]) -> Result<(), Refusal> {
        let dimension = |c: &Expr| -> Result<(), Refusal> {
            match c {
                Expr::Column(col) => match column_origin(col, input, origins) {
                    Some(Origin::Dimension(_)) => Ok(()),
                    Some(Origin::Metric(i)) => Err(self.metric(i)),
                    _ => Err(refusal(Rule::Predicate, format!("WHERE {}", show(e)))),
                },
                _ => Err(refusal(Rule::Predicate, format!("WHERE {}", show(e)))),
            }
        };
        let string_literal = |l: &Expr| -> Result<(), Refusal> {
            match l {
                Expr::Literal(
                    ScalarValue::Utf8(_)
                    | ScalarValue::LargeUtf8(_)
                    | ScalarValue::Utf8View(_)
                    | ScalarValue::Null,
                    _,
                ) => Ok(()),
                Expr::Literal(..) => Err(refusal(
                    Rule::LiteralType,
                    format!("literal {} in WHERE", show(l)),
                )),
                _ => Err(refusal(Rule::Predicate, format!("WHERE {}", show(e)))),
            }
        };
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => {
                    self.predicate(left, input, origins)?;
                    self.predicate(right, input, origins)
                }
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => {
                    if matches!(left.as_ref(), Expr::Column(_)) {
                        dimension(left)?;
                        string_literal(right)
                    } else {
                        dimension(right)?;
                        string_literal(left)
                    }
                }
                _ => Err(refusal(Rule::Predicate, format!("WHERE {}", show(e)))),
            },
            Expr::Not(inner) => self.predicate(inner, input, origins),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => dimension(inner),
            Expr::InList(list) => {
                dimension(&list.expr)?;
                list.list.iter().try_for_each(string_literal)
            }
            Expr::Literal(ScalarValue::Boolean(_), _)
                if matches!(self.stage, Stage::Optimized { .. }) =>
            {
                Ok(())
            }
            Expr::Column(col) => match column_origin(col, input, origins) {
                Some(Origin::Metric(i)) => Err(self.metric(i)),
                _ => Err(refusal(Rule::Predicate, format!("WHERE {}", show(e)))),
            },
            _ => Err(refusal(Rule::Predicate, format!("WHERE {}", show(e)))),
        }
    }

    /// HAVING grammar: comparisons of an aggregate output with a numeric literal,
    /// joined by AND/OR/NOT.
    fn having(&self, e: &Expr, input: &LogicalPlan, origins: &[Origin]) -> Result<(), Refusal> {
        let bad = || refusal(Rule::Having, format!("HAVING {}", show(e)));
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => {
                    self.having(left, input, origins)?;
                    self.having(right, input, origins)
                }
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => {
                    let (column, literal) = if matches!(left.as_ref(), Expr::Literal(..)) {
                        (right, left)
                    } else {
                        (left, right)
                    };
                    match self.resolve(column, input, origins) {
                        Some(Origin::Aggregate { .. }) => {}
                        Some(Origin::Metric(i)) => return Err(self.metric(i)),
                        _ => return Err(bad()),
                    }
                    match literal.as_ref() {
                        Expr::Literal(v, _) if is_numeric(v) => Ok(()),
                        Expr::Literal(..) => Err(refusal(
                            Rule::LiteralType,
                            format!("literal {} in HAVING", show(literal)),
                        )),
                        _ => Err(bad()),
                    }
                }
                _ => Err(bad()),
            },
            Expr::Not(inner) => self.having(inner, input, origins),
            Expr::Literal(ScalarValue::Boolean(_), _)
                if matches!(self.stage, Stage::Optimized { .. }) =>
            {
                Ok(())
            }
            _ => Err(bad()),
        }
    }
}

fn strip_alias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

fn column_origin(col: &Column, input: &LogicalPlan, origins: &[Origin]) -> Option<Origin> {
    let index = input.schema().index_of_column(col).ok()?;
    origins.get(index).copied()
}

fn is_numeric(v: &ScalarValue) -> bool {
    !v.is_null() && (v.data_type().is_numeric() || matches!(v, ScalarValue::Decimal128(..)))
}

fn literal_u64(v: &ScalarValue) -> Option<u64> {
    match v {
        ScalarValue::Int64(Some(x)) => u64::try_from(*x).ok(),
        ScalarValue::Int32(Some(x)) => u64::try_from(*x).ok(),
        ScalarValue::UInt64(Some(x)) => Some(*x),
        ScalarValue::UInt32(Some(x)) => Some(u64::from(*x)),
        _ => None,
    }
}

/// What a conjunct proves about every row, if it is a k gate: a `COUNT(*)` output (the
/// group size) or a `COUNT(metric)` output compared with a literal, `>= K`, `> K - 1` or
/// `= K` with `K >= k` (either side). The optimizer may fold the rewrite's `>= k` into a
/// stronger HAVING bound.
fn k_gate(e: &Expr, k: u64, input: &LogicalPlan, origins: &[Origin]) -> Option<Gate> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (column, op, literal) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(_), Expr::Literal(..)) => (left, *op, right),
        (Expr::Literal(..), Expr::Column(_)) => (right, op.swap()?, left),
        _ => return None,
    };
    let (Expr::Column(col), Expr::Literal(value, _)) = (column.as_ref(), literal.as_ref()) else {
        return None;
    };
    let gate = match column_origin(col, input, origins)? {
        Origin::Aggregate {
            kind: AggregateKind::Count,
            metric: None,
        } => Gate::GroupSize,
        Origin::Aggregate {
            kind: AggregateKind::Count,
            metric: Some(m),
        } => Gate::Metric(m),
        _ => return None,
    };
    let bound = literal_u64(value)?;
    let proves = match op {
        Operator::GtEq | Operator::Eq => bound >= k,
        Operator::Gt => bound.saturating_add(1) >= k,
        _ => false,
    };
    proves.then_some(gate)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod defence_tests;
