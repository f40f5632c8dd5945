//! First layer of the policy: checks on the parsed SQL (before DataFusion plans it).
//!
//! This layer exists for two reasons: it gives analysts precise refusals (which
//! function, which clause) instead of DataFusion planning errors, and it refuses
//! whole classes of constructs (statements, subqueries, expressions) before any
//! planner code sees them. It is not the last word: the logical plan is checked
//! again against a whitelist ([`crate::plan`]), before and after optimization.

use std::ops::ControlFlow;

use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DuplicateTreatment, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SetExpr, Statement, TableFactor, UnaryOperator, Value, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::refusal::{Refusal, Rule};
use crate::spec::{AggregateKind, ColumnSpec, RESERVED_PREFIX, Role};
use crate::stack::{MAX_NESTING, check_text};

/// The name of the only table.
pub(crate) const TABLE_NAME: &str = "overlap";

/// Aggregates the policy can allow, if the agreement lists them.
const ALLOWABLE_AGGREGATES: &[(&str, AggregateKind)] = &[
    ("count", AggregateKind::Count),
    ("sum", AggregateKind::Sum),
    ("avg", AggregateKind::Avg),
    ("mean", AggregateKind::Avg),
];

/// Aggregates that are never allowed: they reveal single values (MIN, MAX, MEDIAN,
/// percentiles, FIRST/LAST_VALUE), concatenate rows (ARRAY_AGG, STRING_AGG) or are
/// otherwise outside the agreement's count/sum/avg.
const DENIED_AGGREGATES: &[&str] = &[
    "min",
    "max",
    "median",
    "approx_median",
    "percentile_cont",
    "percentile_disc",
    "approx_percentile_cont",
    "approx_percentile_cont_with_weight",
    "quantile",
    "mode",
    "array_agg",
    "string_agg",
    "listagg",
    "group_concat",
    "json_agg",
    "first_value",
    "last_value",
    "nth_value",
    "any_value",
    "arg_min",
    "arg_max",
    "min_by",
    "max_by",
    "approx_distinct",
    "count_distinct",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var",
    "variance",
    "var_pop",
    "var_samp",
    "var_population",
    "var_sample",
    "corr",
    "covar",
    "covar_pop",
    "covar_samp",
    "regr_slope",
    "regr_intercept",
    "regr_count",
    "regr_r2",
    "regr_avgx",
    "regr_avgy",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "every",
    "grouping",
    "kurtosis",
    "skewness",
];

/// Functions that exist only as window functions.
const WINDOW_ONLY: &[&str] = &[
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
];

/// Parses `sql` and checks it with the AST rules. Returns the single query statement.
pub(crate) fn parse_and_check(
    sql: &str,
    allowed: &[AggregateKind],
    columns: &[ColumnSpec],
) -> Result<DFStatement, Refusal> {
    // The length cap and the nesting limit come first: nothing below may recurse deeper
    // than the text's nesting score allows.
    check_text(sql)?;
    let dialect = GenericDialect {};
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        // Above anything the nesting limit admits, so our rule always speaks first; kept as
        // a backstop.
        .with_recursion_limit(MAX_NESTING + 16)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Refusal::new(Rule::Syntax, format!("the SQL ({})", syntax_detail(&e))))?;
    if statements.len() > 1 {
        return Err(Refusal::new(
            Rule::MultipleStatements,
            format!("the SQL text ({} statements)", statements.len()),
        ));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(Refusal::new(Rule::Syntax, "the SQL (no statement found)"));
    };
    match &statement {
        DFStatement::Statement(inner) => match inner.as_ref() {
            Statement::Query(query) => check_query(query, allowed, columns)?,
            other => {
                return Err(Refusal::new(
                    Rule::Statement,
                    format!("statement {}", statement_keyword(&other.to_string())),
                ));
            }
        },
        DFStatement::CreateExternalTable(_) => {
            return Err(Refusal::new(
                Rule::Statement,
                "statement CREATE EXTERNAL TABLE",
            ));
        }
        DFStatement::CopyTo(_) => return Err(Refusal::new(Rule::Statement, "statement COPY")),
        DFStatement::Explain(_) => {
            return Err(Refusal::new(Rule::Statement, "statement EXPLAIN"));
        }
        DFStatement::Reset(_) => return Err(Refusal::new(Rule::Statement, "statement RESET")),
    }
    Ok(statement)
}

/// The parser's message without DataFusion's prefixes (it quotes only the analyst's own SQL).
fn syntax_detail(e: &datafusion::error::DataFusionError) -> String {
    let text = e.find_root().to_string();
    let text = text
        .trim_start_matches("SQL error: ")
        .trim_start_matches("ParserError(\"")
        .trim_end_matches("\")");
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The leading keyword(s) of a statement's SQL text, e.g. `INSERT` or `CREATE TABLE`.
fn statement_keyword(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second]
            if matches!(
                first.to_ascii_uppercase().as_str(),
                "CREATE" | "DROP" | "ALTER" | "SHOW" | "DESCRIBE"
            ) =>
        {
            format!(
                "{} {}",
                first.to_ascii_uppercase(),
                second.to_ascii_uppercase()
            )
        }
        [first, ..] => first.to_ascii_uppercase(),
        [] => "(empty)".to_string(),
    }
}

fn check_query(
    query: &Query,
    allowed: &[AggregateKind],
    columns: &[ColumnSpec],
) -> Result<(), Refusal> {
    let mut visitor = PolicyVisitor {
        allowed,
        columns,
        queries: 0,
        depth: 0,
    };
    match query.visit(&mut visitor) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(refusal) => Err(*refusal),
    }
}

struct PolicyVisitor<'a> {
    allowed: &'a [AggregateKind],
    columns: &'a [ColumnSpec],
    queries: usize,
    depth: usize,
}

type Flow = ControlFlow<Box<Refusal>>;

fn refuse(rule: Rule, construct: impl Into<String>) -> Flow {
    ControlFlow::Break(Box::new(Refusal::new(rule, construct)))
}

/// A short rendering of an analyst's own SQL fragment for a refusal message.
fn snippet(text: &str) -> String {
    let mut out: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        out.push('…');
    }
    out
}

impl Visitor for PolicyVisitor<'_> {
    type Break = Box<Refusal>;

    fn pre_visit_query(&mut self, query: &Query) -> Flow {
        self.queries += 1;
        if query.with.is_some() {
            let recursive = query.with.as_ref().is_some_and(|w| w.recursive);
            return refuse(Rule::Cte, if recursive { "WITH RECURSIVE" } else { "WITH" });
        }
        if self.queries > 1 {
            return refuse(Rule::Subquery, "subquery");
        }
        match query.body.as_ref() {
            SetExpr::Select(_) => {}
            SetExpr::SetOperation { op, .. } => {
                return refuse(Rule::SetOperation, op.to_string().to_ascii_uppercase());
            }
            SetExpr::Values(_) => return refuse(Rule::Values, "VALUES"),
            SetExpr::Query(_) => return refuse(Rule::Subquery, "parenthesized query"),
            SetExpr::Insert(_) => return refuse(Rule::Statement, "statement INSERT"),
            SetExpr::Update(_) => return refuse(Rule::Statement, "statement UPDATE"),
            SetExpr::Delete(_) => return refuse(Rule::Statement, "statement DELETE"),
            SetExpr::Merge(_) => return refuse(Rule::Statement, "statement MERGE"),
            SetExpr::Table(_) => return refuse(Rule::Clause, "TABLE"),
        }
        if query.fetch.is_some() {
            return refuse(Rule::Clause, "FETCH (use LIMIT)");
        }
        if !query.locks.is_empty() {
            return refuse(Rule::Clause, "FOR UPDATE/SHARE");
        }
        if query.for_clause.is_some() {
            return refuse(Rule::Clause, "FOR clause");
        }
        if query.settings.is_some() {
            return refuse(Rule::Clause, "SETTINGS");
        }
        if query.format_clause.is_some() {
            return refuse(Rule::Clause, "FORMAT");
        }
        if !query.pipe_operators.is_empty() {
            return refuse(Rule::Clause, "pipe operator |>");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> Flow {
        if select.distinct.is_some() {
            return refuse(Rule::Distinct, "SELECT DISTINCT");
        }
        if select.top.is_some() {
            return refuse(Rule::Clause, "TOP (use LIMIT)");
        }
        if select.into.is_some() {
            return refuse(Rule::Clause, "SELECT INTO");
        }
        if select.exclude.is_some() {
            return refuse(Rule::Clause, "EXCLUDE");
        }
        match select.from.as_slice() {
            [] => return refuse(Rule::PlanShape, "SELECT without FROM overlap"),
            [single] => {
                if let Some(join) = single.joins.first() {
                    let kind = if matches!(
                        join.join_operator,
                        datafusion::sql::sqlparser::ast::JoinOperator::CrossJoin(_)
                    ) {
                        "CROSS JOIN"
                    } else {
                        "JOIN"
                    };
                    return refuse(Rule::Join, kind);
                }
            }
            _ => return refuse(Rule::Join, "comma join (FROM a, b)"),
        }
        if !select.lateral_views.is_empty() {
            return refuse(Rule::Clause, "LATERAL VIEW");
        }
        if select.prewhere.is_some() {
            return refuse(Rule::Clause, "PREWHERE");
        }
        if !select.connect_by.is_empty() {
            return refuse(Rule::Clause, "CONNECT BY");
        }
        if !select.cluster_by.is_empty()
            || !select.distribute_by.is_empty()
            || !select.sort_by.is_empty()
        {
            return refuse(Rule::Clause, "CLUSTER/DISTRIBUTE/SORT BY");
        }
        if !select.named_window.is_empty() {
            return refuse(Rule::WindowFunction, "WINDOW clause");
        }
        if select.qualify.is_some() {
            return refuse(Rule::WindowFunction, "QUALIFY");
        }
        if select.value_table_mode.is_some() {
            return refuse(Rule::Clause, "SELECT AS VALUE/STRUCT");
        }
        match &select.group_by {
            GroupByExpr::All(_) => return refuse(Rule::GroupKey, "GROUP BY ALL"),
            GroupByExpr::Expressions(_, modifiers) if !modifiers.is_empty() => {
                return refuse(Rule::GroupingSets, "GROUP BY ... WITH ROLLUP/CUBE/TOTALS");
            }
            GroupByExpr::Expressions(..) => {}
        }
        let mut aliases: Vec<(String, &Expr)> = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::ExprWithAlias { alias, expr } => {
                    if is_reserved(alias) {
                        return refuse(Rule::ReservedName, format!("alias {}", alias.value));
                    }
                    let name = normalized(alias);
                    let same_column = bare_column_name(expr).is_some_and(|c| c == name);
                    if !same_column && self.columns.iter().any(|c| c.name == name) {
                        return refuse(
                            Rule::Projection,
                            format!("alias {name} (it would shadow the column {name})"),
                        );
                    }
                    aliases.push((name, expr));
                }
                SelectItem::ExprWithAliases { .. } => {
                    return refuse(Rule::Clause, "multiple aliases for one expression");
                }
                _ => {}
            }
        }
        if let GroupByExpr::Expressions(keys, _) = &select.group_by {
            for key in keys {
                if let Expr::Identifier(ident) = key {
                    let name = normalized(ident);
                    if let Some((_, expr)) = aliases.iter().find(|(a, _)| *a == name)
                        && bare_column_name(expr).is_none()
                    {
                        return refuse(
                            Rule::GroupKey,
                            format!(
                                "GROUP BY {name} (an alias of {})",
                                snippet(&expr.to_string())
                            ),
                        );
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, select: &Select) -> Flow {
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(_) => return refuse(Rule::RowLevel, "SELECT *"),
                SelectItem::QualifiedWildcard(..) => {
                    return refuse(Rule::RowLevel, "SELECT table.*");
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> Flow {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                version,
                sample,
                with_ordinality,
                ..
            } => {
                if args.is_some() {
                    return refuse(Rule::TableFunction, format!("table function {name}"));
                }
                if sample.is_some() {
                    return refuse(Rule::Clause, "TABLESAMPLE");
                }
                if version.is_some() {
                    return refuse(Rule::Clause, "time travel (FOR SYSTEM_TIME/VERSION)");
                }
                if *with_ordinality {
                    return refuse(Rule::Clause, "WITH ORDINALITY");
                }
                if let Some(alias) = alias {
                    if !alias.columns.is_empty() {
                        return refuse(
                            Rule::Clause,
                            format!("column aliases in FROM ({} (...))", alias.name.value),
                        );
                    }
                    if is_reserved(&alias.name) {
                        return refuse(Rule::ReservedName, format!("alias {}", alias.name.value));
                    }
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. } => refuse(Rule::Subquery, "derived table in FROM"),
            TableFactor::TableFunction { .. } | TableFactor::Function { .. } => {
                refuse(Rule::TableFunction, "table function in FROM")
            }
            TableFactor::UNNEST { .. } => refuse(Rule::Unnest, "UNNEST"),
            TableFactor::NestedJoin { .. } => refuse(Rule::Join, "parenthesized join"),
            _ => refuse(Rule::Clause, "this FROM item"),
        }
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> Flow {
        let parts: Vec<&Ident> = relation
            .0
            .iter()
            .filter_map(|p| match p {
                ObjectNamePart::Identifier(ident) => Some(ident),
                ObjectNamePart::Function(_) => None,
            })
            .collect();
        if parts.len() != relation.0.len() {
            return refuse(Rule::TableFunction, format!("table {relation}"));
        }
        let looks_like_file = parts.iter().any(|p| {
            p.quote_style == Some('\'')
                || p.value.contains(['/', '\\', ':'])
                || (p.quote_style.is_some() && p.value.contains('.'))
        });
        if looks_like_file {
            return refuse(Rule::FileTable, format!("table {relation}"));
        }
        let ok = match parts.as_slice() {
            [ident] => normalized(ident) == TABLE_NAME,
            _ => false,
        };
        if !ok {
            return refuse(
                Rule::UnknownTable,
                format!("table {}", snippet(&relation.to_string())),
            );
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> Flow {
        self.depth += 1;
        // Unreachable after `check_text` (the nesting score bounds this depth); a backstop.
        if self.depth > MAX_NESTING {
            return refuse(
                Rule::TooComplex,
                format!("an expression nested more than {MAX_NESTING} levels deep"),
            );
        }
        match expr {
            Expr::Identifier(ident) => {
                if is_reserved(ident) {
                    return refuse(Rule::ReservedName, format!("identifier {}", ident.value));
                }
            }
            Expr::CompoundIdentifier(idents) => {
                if let Some(ident) = idents.iter().find(|i| is_reserved(i)) {
                    return refuse(Rule::ReservedName, format!("identifier {}", ident.value));
                }
            }
            Expr::Value(v) => {
                if matches!(v.value, Value::Placeholder(_)) {
                    return refuse(Rule::Expression, format!("placeholder {}", v.value));
                }
            }
            Expr::Nested(_) | Expr::IsNull(_) | Expr::IsNotNull(_) | Expr::InList { .. } => {}
            Expr::BinaryOp { op, .. } => match op {
                BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq
                | BinaryOperator::And
                | BinaryOperator::Or => {}
                other => return refuse(Rule::Expression, format!("operator {other}")),
            },
            Expr::UnaryOp { op, expr: inner } => match op {
                UnaryOperator::Not => {}
                UnaryOperator::Minus | UnaryOperator::Plus if matches!(inner.as_ref(), Expr::Value(v) if matches!(v.value, Value::Number(..))) =>
                    {}
                other => return refuse(Rule::Expression, format!("operator {other}")),
            },
            Expr::Function(function) => return self.check_function(function),
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                return refuse(Rule::Subquery, "subquery");
            }
            Expr::GroupingSets(_) => return refuse(Rule::GroupingSets, "GROUPING SETS"),
            Expr::Cube(_) => return refuse(Rule::GroupingSets, "CUBE"),
            Expr::Rollup(_) => return refuse(Rule::GroupingSets, "ROLLUP"),
            Expr::Case { .. } => return refuse(Rule::Expression, "CASE"),
            Expr::Cast { .. } | Expr::TypedString { .. } | Expr::Convert { .. } => {
                return refuse(Rule::Cast, format!("cast {}", snippet(&expr.to_string())));
            }
            Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::RLike { .. } => {
                return refuse(Rule::Expression, "LIKE");
            }
            Expr::Between { .. } => {
                return refuse(
                    Rule::Predicate,
                    "BETWEEN (write two comparisons joined by AND)",
                );
            }
            other => {
                return refuse(
                    Rule::Expression,
                    format!("expression {}", snippet(&other.to_string())),
                );
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> Flow {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

impl PolicyVisitor<'_> {
    fn check_function(&self, f: &Function) -> Flow {
        let name = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => ident.value.to_ascii_lowercase(),
            _ => {
                return refuse(
                    Rule::Function,
                    format!("function {}", snippet(&f.name.to_string())),
                );
            }
        };
        let shown = name.to_ascii_uppercase();
        if f.over.is_some() {
            return refuse(
                Rule::WindowFunction,
                format!("window function {shown}(...) OVER"),
            );
        }
        if let Some((_, kind)) = ALLOWABLE_AGGREGATES.iter().find(|(n, _)| *n == name) {
            if !self.allowed.contains(kind) {
                return refuse(Rule::AggregateFunction, format!("aggregate {shown}"));
            }
            if f.filter.is_some() {
                return refuse(
                    Rule::AggregateFilter,
                    format!("{shown}(...) FILTER (WHERE ...)"),
                );
            }
            if !f.within_group.is_empty() {
                return refuse(Rule::AggregateOrder, format!("{shown}(...) WITHIN GROUP"));
            }
            if f.null_treatment.is_some() {
                return refuse(Rule::Clause, format!("{shown}(...) IGNORE/RESPECT NULLS"));
            }
            if !matches!(f.parameters, FunctionArguments::None) {
                return refuse(Rule::AggregateArgument, format!("parameters of {shown}"));
            }
            let list = match &f.args {
                FunctionArguments::List(list) => list,
                FunctionArguments::Subquery(_) => return refuse(Rule::Subquery, "subquery"),
                FunctionArguments::None => {
                    return refuse(
                        Rule::AggregateArgument,
                        format!("{shown} without arguments"),
                    );
                }
            };
            if matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct)) {
                return refuse(Rule::AggregateDistinct, format!("{shown}(DISTINCT ...)"));
            }
            if !list.clauses.is_empty() {
                return refuse(Rule::AggregateOrder, format!("clauses inside {shown}(...)"));
            }
            let arg_ok = match list.args.as_slice() {
                [] => *kind == AggregateKind::Count,
                [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] => *kind == AggregateKind::Count,
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))] => {
                    if let Some(name) = bare_column_name(arg)
                        && let Some(column) = self.columns.iter().find(|c| c.name == name)
                        && column.role == Role::Dimension
                    {
                        return refuse(
                            Rule::AggregateArgument,
                            format!("{shown}({name}) over a dimension"),
                        );
                    }
                    bare_column_name(arg).is_some()
                }
                _ => false,
            };
            if !arg_ok {
                return refuse(
                    Rule::AggregateArgument,
                    format!("argument of {}", snippet(&f.to_string())),
                );
            }
            return ControlFlow::Continue(());
        }
        if DENIED_AGGREGATES.contains(&name.as_str()) {
            return refuse(Rule::AggregateFunction, format!("aggregate {shown}"));
        }
        if WINDOW_ONLY.contains(&name.as_str()) {
            return refuse(Rule::WindowFunction, format!("window function {shown}"));
        }
        if name == "unnest" {
            return refuse(Rule::Unnest, "UNNEST");
        }
        refuse(Rule::Function, format!("function {shown}"))
    }
}

/// An identifier as DataFusion resolves it: unquoted names are lower-cased.
fn normalized(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// The resolved column name of a bare (possibly qualified) column reference.
fn bare_column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(normalized(ident)),
        Expr::CompoundIdentifier(idents) => idents.last().map(normalized),
        Expr::Nested(inner) => bare_column_name(inner),
        _ => None,
    }
}

fn is_reserved(ident: &Ident) -> bool {
    ident
        .value
        .to_ascii_lowercase()
        .starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
#[path = "ast_tests.rs"]
mod tests;
