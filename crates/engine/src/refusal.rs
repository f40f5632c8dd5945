//! Refusals: the policy's answer when a query may not run.
//!
//! A refusal is an expected outcome, not an error: it names the construct that was
//! refused and the rule it broke, in words meant for an analyst. It never contains data
//! values from the `overlap` table (it is built only from the query text and the schema).

use std::fmt;

/// A policy rule a query can break. Each rule has a stable snake_case name
/// ([`Rule::name`]) that the audit log and the policy corpus use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// The SQL text is longer than [`crate::MAX_SQL_LEN`].
    SqlTooLong,
    /// The SQL text does not parse.
    Syntax,
    /// The text holds more than one statement.
    MultipleStatements,
    /// The statement is not a query (DDL, DML, `SET`, `COPY`, `EXPLAIN`, `SHOW`, `PREPARE`, ...).
    Statement,
    /// The query reads a table other than `overlap`.
    UnknownTable,
    /// The query reads a file or URL as a table (`FROM 'file.csv'`).
    FileTable,
    /// The query calls a table function.
    TableFunction,
    /// The query names a column that does not exist.
    UnknownColumn,
    /// The query joins tables (including self and cross joins).
    Join,
    /// The query uses `UNION`, `INTERSECT` or `EXCEPT`.
    SetOperation,
    /// The query contains a subquery or derived table.
    Subquery,
    /// The query uses a common table expression (`WITH`).
    Cte,
    /// The query uses a `VALUES` list.
    Values,
    /// The query uses a window function (`OVER`).
    WindowFunction,
    /// The query uses `SELECT DISTINCT`.
    Distinct,
    /// The query uses `UNNEST`.
    Unnest,
    /// The query does not aggregate: it would return row-level data.
    RowLevel,
    /// A metric column is used other than as the argument of an allowed aggregate.
    MetricColumn,
    /// A group key is not a bare dimension column.
    GroupKey,
    /// `ROLLUP`, `CUBE` or `GROUPING SETS`.
    GroupingSets,
    /// An aggregate function that the agreement does not allow.
    AggregateFunction,
    /// An aggregate's argument is not a bare metric column (or `*` for `COUNT`).
    AggregateArgument,
    /// `DISTINCT` inside an aggregate.
    AggregateDistinct,
    /// `FILTER (WHERE ...)` on an aggregate.
    AggregateFilter,
    /// `ORDER BY` or `WITHIN GROUP` inside an aggregate.
    AggregateOrder,
    /// A scalar function or user-defined function.
    Function,
    /// Arithmetic, `CASE`, `LIKE` or another expression the policy does not allow.
    Expression,
    /// A type cast.
    Cast,
    /// A `WHERE` predicate outside the allowed grammar.
    Predicate,
    /// A literal of the wrong type for the column it is compared with.
    LiteralType,
    /// A `HAVING` clause outside the allowed grammar.
    Having,
    /// A select-list item that is neither a group key nor an aggregate.
    Projection,
    /// An `ORDER BY` item that is neither a group key nor an aggregate.
    OrderBy,
    /// A `LIMIT` or `OFFSET` that is not a literal.
    Limit,
    /// The query's nesting score is over [`crate::MAX_NESTING`] (checked before parsing).
    TooComplex,
    /// The query uses a name reserved for the policy's own columns.
    ReservedName,
    /// The query uses a clause the policy does not support (`QUALIFY`, `INTO`, ...).
    Clause,
    /// The query is valid SQL that DataFusion cannot plan (e.g. a column neither
    /// grouped nor aggregated).
    InvalidQuery,
    /// The planned query has a shape outside the whitelist.
    PlanShape,
}

impl Rule {
    /// Every rule, in declaration order (for documentation and tests).
    pub const ALL: &'static [Rule] = &[
        Rule::SqlTooLong,
        Rule::Syntax,
        Rule::MultipleStatements,
        Rule::Statement,
        Rule::UnknownTable,
        Rule::FileTable,
        Rule::TableFunction,
        Rule::UnknownColumn,
        Rule::Join,
        Rule::SetOperation,
        Rule::Subquery,
        Rule::Cte,
        Rule::Values,
        Rule::WindowFunction,
        Rule::Distinct,
        Rule::Unnest,
        Rule::RowLevel,
        Rule::MetricColumn,
        Rule::GroupKey,
        Rule::GroupingSets,
        Rule::AggregateFunction,
        Rule::AggregateArgument,
        Rule::AggregateDistinct,
        Rule::AggregateFilter,
        Rule::AggregateOrder,
        Rule::Function,
        Rule::Expression,
        Rule::Cast,
        Rule::Predicate,
        Rule::LiteralType,
        Rule::Having,
        Rule::Projection,
        Rule::OrderBy,
        Rule::Limit,
        Rule::TooComplex,
        Rule::ReservedName,
        Rule::Clause,
        Rule::InvalidQuery,
        Rule::PlanShape,
    ];

    /// The stable snake_case name of the rule, used in the audit log and the corpus.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::SqlTooLong => "sql_too_long",
            Rule::Syntax => "syntax",
            Rule::MultipleStatements => "multiple_statements",
            Rule::Statement => "statement",
            Rule::UnknownTable => "unknown_table",
            Rule::FileTable => "file_table",
            Rule::TableFunction => "table_function",
            Rule::UnknownColumn => "unknown_column",
            Rule::Join => "join",
            Rule::SetOperation => "set_operation",
            Rule::Subquery => "subquery",
            Rule::Cte => "cte",
            Rule::Values => "values",
            Rule::WindowFunction => "window_function",
            Rule::Distinct => "distinct",
            Rule::Unnest => "unnest",
            Rule::RowLevel => "row_level",
            Rule::MetricColumn => "metric_column",
            Rule::GroupKey => "group_key",
            Rule::GroupingSets => "grouping_sets",
            Rule::AggregateFunction => "aggregate_function",
            Rule::AggregateArgument => "aggregate_argument",
            Rule::AggregateDistinct => "aggregate_distinct",
            Rule::AggregateFilter => "aggregate_filter",
            Rule::AggregateOrder => "aggregate_order",
            Rule::Function => "function",
            Rule::Expression => "expression",
            Rule::Cast => "cast",
            Rule::Predicate => "predicate",
            Rule::LiteralType => "literal_type",
            Rule::Having => "having",
            Rule::Projection => "projection",
            Rule::OrderBy => "order_by",
            Rule::Limit => "limit",
            Rule::TooComplex => "too_complex",
            Rule::ReservedName => "reserved_name",
            Rule::Clause => "clause",
            Rule::InvalidQuery => "invalid_query",
            Rule::PlanShape => "plan_shape",
        }
    }

    /// Looks a rule up by its [`Rule::name`].
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// What the rule forbids and why, phrased to follow the refused construct.
    pub fn explanation(&self) -> &'static str {
        match self {
            Rule::SqlTooLong => "is too long: split the question into smaller queries",
            Rule::Syntax => "is not valid SQL",
            Rule::MultipleStatements => {
                "holds more than one statement: send exactly one SELECT per request"
            }
            Rule::Statement => {
                "is not allowed: only a single aggregate SELECT over overlap may be run"
            }
            Rule::UnknownTable => {
                "does not exist: the only table is overlap (identifiers are case-sensitive when quoted)"
            }
            Rule::FileTable => "is a file or URL: only the table overlap may be read",
            Rule::TableFunction => "is a table function: only the table overlap may be read",
            Rule::UnknownColumn => "does not exist in overlap",
            Rule::Join => {
                "is not allowed: joins (including self and cross joins) can multiply rows past the k threshold"
            }
            Rule::SetOperation => {
                "is not allowed: set operations can duplicate or combine groups past the k threshold"
            }
            Rule::Subquery => {
                "is not allowed: subqueries and derived tables can smuggle row-level data"
            }
            Rule::Cte => "is not allowed: WITH clauses can rename and reshape columns",
            Rule::Values => "is not allowed: VALUES lists are not part of the overlap table",
            Rule::WindowFunction => {
                "is not allowed: window functions compute per-row values inside small groups"
            }
            Rule::Distinct => "is not allowed: use GROUP BY with dimension columns instead",
            Rule::Unnest => "is not allowed: UNNEST produces row-level data",
            Rule::RowLevel => {
                "would return row-level data: every query must aggregate with GROUP BY over dimension columns"
            }
            Rule::MetricColumn => {
                "is a metric: it may be aggregated, not grouped, filtered or selected"
            }
            Rule::GroupKey => {
                "is not a bare dimension column: GROUP BY takes dimension columns only"
            }
            Rule::GroupingSets => {
                "is not allowed: ROLLUP, CUBE and GROUPING SETS produce subtotals the k check does not cover"
            }
            Rule::AggregateFunction => {
                "is not an allowed aggregate: the agreement allows only the aggregates it lists (COUNT, SUM, AVG at most)"
            }
            Rule::AggregateArgument => {
                "is not a bare metric column: aggregates take one metric column (or * for COUNT)"
            }
            Rule::AggregateDistinct => {
                "is not allowed: DISTINCT inside an aggregate counts values, not customers"
            }
            Rule::AggregateFilter => {
                "is not allowed: FILTER clauses aggregate sub-groups the k check does not cover"
            }
            Rule::AggregateOrder => "is not allowed: aggregates take no ORDER BY or WITHIN GROUP",
            Rule::Function => "is not allowed: only the agreed aggregate functions may be called",
            Rule::Expression => {
                "is not allowed: no arithmetic, CASE, LIKE or other expressions in a query"
            }
            Rule::Cast => "is not allowed: columns may not be cast",
            Rule::Predicate => {
                "is not an allowed predicate: WHERE compares dimension columns with literals (=, <>, <, <=, >, >=, IN, IS [NOT] NULL) joined by AND, OR, NOT"
            }
            Rule::LiteralType => {
                "has the wrong type: dimensions compare with string literals, aggregates with numbers"
            }
            Rule::Having => {
                "is not an allowed HAVING condition: compare aggregates with numeric literals, joined by AND, OR, NOT"
            }
            Rule::Projection => {
                "is not a group key or an aggregate: select dimension columns you group by and aggregates, with optional aliases"
            }
            Rule::OrderBy => {
                "is not a group key or an aggregate: ORDER BY takes selected columns only"
            }
            Rule::Limit => "is not a literal: LIMIT and OFFSET take a non-negative integer",
            Rule::TooComplex => {
                "nests too deeply (brackets, NOT, operators, CASE, function calls and subqueries all count): simplify the query"
            }
            Rule::ReservedName => "is reserved for the policy's own columns: choose another name",
            Rule::Clause => "is not allowed in an analyst query",
            Rule::InvalidQuery => "cannot be planned",
            Rule::PlanShape => {
                "is outside the allowed query shape: SELECT dimensions, aggregates FROM overlap [WHERE] GROUP BY dimensions [HAVING] [ORDER BY] [LIMIT]"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The policy refused a query: which rule, and which construct of the query broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule the query broke.
    pub rule: Rule,
    /// The construct that broke it, e.g. `column snacks_weekly_spend` or `function MIN`.
    pub construct: String,
}

impl Refusal {
    /// A refusal of `construct` under `rule`.
    pub fn new(rule: Rule, construct: impl Into<String>) -> Self {
        Self {
            rule,
            construct: construct.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (rule {})",
            self.construct,
            self.rule.explanation(),
            self.rule.name()
        )
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for rule in Rule::ALL {
            assert!(seen.insert(rule.name()), "duplicate name {}", rule.name());
            assert_eq!(Rule::from_name(rule.name()), Some(*rule));
            assert!(
                rule.name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
        assert_eq!(Rule::from_name("nope"), None);
    }

    #[test]
    fn display_names_construct_and_rule() {
        let r = Refusal::new(Rule::MetricColumn, "column snacks_weekly_spend");
        assert_eq!(
            r.to_string(),
            "column snacks_weekly_spend is a metric: it may be aggregated, not grouped, filtered or selected (rule metric_column)"
        );
    }
}
