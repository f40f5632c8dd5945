use super::*;

const ALL: &[AggregateKind] = &[AggregateKind::Count, AggregateKind::Sum, AggregateKind::Avg];

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec {
            name: "drinks_region".into(),
            role: Role::Dimension,
        },
        ColumnSpec {
            name: "drinks_monthly_spend".into(),
            role: Role::Metric {
                min: 0.0,
                max: 500.0,
            },
        },
    ]
}

fn rule(sql: &str) -> Option<&'static str> {
    parse_and_check(sql, ALL, &columns())
        .err()
        .map(|r| r.rule.name())
}

#[test]
fn accepts_the_allowed_shape() {
    assert_eq!(
        rule(
            "select drinks_region, count(*), SUM(drinks_monthly_spend) AS s FROM Overlap o \
                 WHERE drinks_loyalty_tier IN ('gold', 'silver') AND NOT drinks_region IS NULL \
                 GROUP BY drinks_region HAVING count(*) > -5 ORDER BY s DESC LIMIT 3"
        ),
        None
    );
}

#[test]
fn refuses_statements_and_multiple_statements() {
    assert_eq!(rule("DROP TABLE overlap"), Some("statement"));
    assert_eq!(rule("INSERT INTO overlap VALUES ('a')"), Some("statement"));
    assert_eq!(
        rule("SET datafusion.execution.batch_size = 1"),
        Some("statement")
    );
    assert_eq!(rule("EXPLAIN SELECT 1"), Some("statement"));
    assert_eq!(rule("EXPLAIN ANALYZE SELECT 1"), Some("statement"));
    assert_eq!(rule("COPY overlap TO 'x.csv'"), Some("statement"));
    assert_eq!(rule("SHOW TABLES"), Some("statement"));
    assert_eq!(
        rule("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'"),
        Some("statement")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap; SELECT count(*) FROM overlap"),
        Some("multiple_statements")
    );
    assert_eq!(rule(""), Some("syntax"));
    assert_eq!(rule("SELEC count(*) FROM overlap"), Some("syntax"));
    assert_eq!(rule("SELECT count(* FROM overlap"), Some("syntax"));
}

#[test]
fn refuses_too_long_and_too_deep() {
    let long = format!(
        "SELECT count(*) FROM overlap WHERE {}",
        "a".repeat(crate::MAX_SQL_LEN)
    );
    assert_eq!(rule(&long), Some("sql_too_long"));
    let chain = vec!["drinks_region = 'x'"; 200].join(" OR ");
    let deep = format!("SELECT count(*) FROM overlap WHERE {chain}");
    assert_eq!(rule(&deep), Some("too_complex"));
}

#[test]
fn refuses_tables_other_than_overlap() {
    assert_eq!(rule("SELECT count(*) FROM 'file.csv'"), Some("file_table"));
    assert_eq!(
        rule("SELECT count(*) FROM \"/tmp/x.parquet\""),
        Some("file_table")
    );
    assert_eq!(
        rule("SELECT count(*) FROM \"OVERLAP\""),
        Some("unknown_table")
    );
    assert_eq!(rule("SELECT count(*) FROM other"), Some("unknown_table"));
    assert_eq!(
        rule("SELECT count(*) FROM public.overlap"),
        Some("unknown_table")
    );
    assert_eq!(
        rule("SELECT count(*) FROM generate_series(1, 10)"),
        Some("table_function")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap AS o(a, b)"),
        Some("clause")
    );
}

#[test]
fn refuses_joins_unions_subqueries_ctes_values() {
    assert_eq!(
        rule("SELECT count(*) FROM overlap a JOIN overlap b ON true"),
        Some("join")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap a CROSS JOIN overlap b"),
        Some("join")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap a, overlap b"),
        Some("join")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap UNION ALL SELECT count(*) FROM overlap"),
        Some("set_operation")
    );
    assert_eq!(
        rule("SELECT count(*) FROM (SELECT * FROM overlap) t"),
        Some("subquery")
    );
    assert_eq!(
        rule(
            "SELECT count(*) FROM overlap WHERE drinks_region IN (SELECT drinks_region FROM overlap)"
        ),
        Some("subquery")
    );
    assert_eq!(
        rule("WITH t AS (SELECT * FROM overlap) SELECT count(*) FROM t"),
        Some("cte")
    );
    assert_eq!(
        rule(
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM t) SELECT count(*) FROM t"
        ),
        Some("cte")
    );
    assert_eq!(rule("VALUES (1)"), Some("values"));
    assert_eq!(
        rule("SELECT DISTINCT drinks_region FROM overlap"),
        Some("distinct")
    );
    assert_eq!(rule("SELECT * FROM overlap"), Some("row_level"));
}

#[test]
fn refuses_functions_and_expressions() {
    assert_eq!(
        rule("SELECT min(drinks_monthly_spend) FROM overlap"),
        Some("aggregate_function")
    );
    assert_eq!(
        rule("SELECT MAX(drinks_monthly_spend) FROM overlap"),
        Some("aggregate_function")
    );
    assert_eq!(
        rule("SELECT median(drinks_monthly_spend) FROM overlap"),
        Some("aggregate_function")
    );
    assert_eq!(
        rule("SELECT string_agg(drinks_region, ',') FROM overlap"),
        Some("aggregate_function")
    );
    assert_eq!(
        rule("SELECT count(*) OVER () FROM overlap"),
        Some("window_function")
    );
    assert_eq!(
        rule("SELECT row_number() FROM overlap"),
        Some("window_function")
    );
    assert_eq!(
        rule("SELECT count(DISTINCT drinks_region) FROM overlap"),
        Some("aggregate_distinct")
    );
    assert_eq!(
        rule("SELECT count(*) FILTER (WHERE drinks_region = 'x') FROM overlap"),
        Some("aggregate_filter")
    );
    assert_eq!(
        rule("SELECT sum(drinks_monthly_spend + 1) FROM overlap"),
        Some("aggregate_argument")
    );
    assert_eq!(
        rule("SELECT sum(CASE WHEN drinks_region = 'x' THEN 1 ELSE 0 END) FROM overlap"),
        Some("aggregate_argument")
    );
    assert_eq!(
        rule("SELECT sum(drinks_region) FROM overlap"),
        Some("aggregate_argument")
    );
    assert_eq!(
        rule("SELECT sum(drinks_monthly_spend) AS t FROM overlap GROUP BY t"),
        Some("group_key")
    );
    assert_eq!(
        rule("SELECT sum(drinks_monthly_spend) AS drinks_region FROM overlap"),
        Some("projection")
    );
    assert_eq!(
        rule("SELECT drinks_region AS drinks_region, count(*) FROM overlap GROUP BY drinks_region"),
        None
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap WHERE lower(drinks_region) = 'x'"),
        Some("function")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap WHERE drinks_region LIKE 'x%'"),
        Some("expression")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap WHERE CAST(drinks_region AS INT) = 1"),
        Some("cast")
    );
    assert_eq!(
        rule("SELECT count(*) FROM overlap GROUP BY ROLLUP(drinks_region)"),
        Some("grouping_sets")
    );
    assert_eq!(
        rule("SELECT count(*) AS __accord_k FROM overlap"),
        Some("reserved_name")
    );
}

#[test]
fn aggregates_follow_the_agreement() {
    let only_count = [AggregateKind::Count];
    let r = parse_and_check(
        "SELECT sum(drinks_monthly_spend) FROM overlap",
        &only_count,
        &columns(),
    );
    assert_eq!(r.err().map(|r| r.rule), Some(Rule::AggregateFunction));
    assert!(parse_and_check("SELECT count(*) FROM overlap", &only_count, &columns()).is_ok());
}

fn refusal(sql: &str) -> Refusal {
    parse_and_check(sql, ALL, &columns())
        .err()
        .unwrap_or_else(|| panic!("the syntax check let through {sql}"))
}

/// The `(...)` of a refusal construct that starts with `prefix (`.
fn inside<'a>(r: &'a Refusal, prefix: &str) -> &'a str {
    r.construct
        .strip_prefix(prefix)
        .and_then(|c| c.strip_prefix(" ("))
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{r}"))
}

#[test]
fn statements_are_named_by_their_leading_keywords() {
    for (sql, construct) in [
        ("DROP TABLE overlap", "statement DROP TABLE"),
        ("create table t (a int)", "statement CREATE TABLE"),
        ("SHOW TABLES", "statement SHOW TABLES"),
        ("INSERT INTO overlap VALUES ('a')", "statement INSERT"),
        ("SET datafusion.execution.batch_size = 1", "statement SET"),
    ] {
        let r = refusal(sql);
        assert_eq!(r.rule, Rule::Statement, "{sql}: {r}");
        assert_eq!(r.construct, construct, "{sql}");
    }
}

#[test]
fn syntax_refusals_quote_the_parser_without_its_prefixes_and_at_most_200_characters() {
    let r = refusal("SELEC count(*) FROM overlap");
    assert_eq!(r.rule, Rule::Syntax, "{r}");
    let detail = inside(&r, "the SQL");
    assert!(detail.contains("SELEC"), "{r}");
    assert!(
        !detail.contains("SQL error") && !detail.contains("ParserError"),
        "{r}"
    );
    // The parser quotes the offending token: a long one is cut.
    let r = refusal(&"z".repeat(300));
    let detail = inside(&r, "the SQL");
    assert!(detail.contains("zzz") && detail.ends_with('…'), "{r}");
    assert_eq!(detail.chars().count(), 201, "{r}");
    // At the limit exactly.
    let parser_error = |message: String| {
        datafusion::error::DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError(message)),
            None,
        )
    };
    for n in [1, 199, 200] {
        assert_eq!(syntax_detail(&parser_error("x".repeat(n))), "x".repeat(n));
    }
    assert_eq!(
        syntax_detail(&parser_error("x".repeat(201))),
        format!("{}…", "x".repeat(200))
    );
}

#[test]
fn refusals_quote_at_most_60_characters_of_the_query() {
    for n in [1, 59, 60] {
        assert_eq!(snippet(&"é".repeat(n)), "é".repeat(n));
    }
    assert_eq!(snippet(&"é".repeat(61)), format!("{}…", "é".repeat(60)));
    let table = format!("t{}", "x".repeat(100));
    let r = refusal(&format!("SELECT count(*) FROM {table}"));
    assert_eq!(r.rule, Rule::UnknownTable, "{r}");
    assert_eq!(r.construct, format!("table {}…", &table[..60]));
}

#[test]
fn refuses_each_clause_and_from_item_under_its_own_rule() {
    for (sql, expected) in [
        ("SELECT count(*)", "plan_shape"),
        (
            "SELECT count(*) FROM overlap CLUSTER BY drinks_region",
            "clause",
        ),
        (
            "SELECT count(*) FROM overlap DISTRIBUTE BY drinks_region",
            "clause",
        ),
        (
            "SELECT count(*) FROM overlap SORT BY drinks_region",
            "clause",
        ),
        (
            "SELECT drinks_region, count(*) FROM overlap GROUP BY drinks_region WITH ROLLUP",
            "grouping_sets",
        ),
        ("SELECT count(*) AS (a, b) FROM overlap", "clause"),
        ("SELECT o.* FROM overlap o", "row_level"),
        (
            "SELECT count(*) FROM TABLE(generate_series(1, 3))",
            "table_function",
        ),
        ("SELECT count(*) FROM UNNEST([1, 2])", "unnest"),
        (
            "SELECT count(*) FROM (overlap a JOIN overlap b ON true)",
            "join",
        ),
        ("SELECT count(*) FROM \"/etc/passwd\"", "file_table"),
        ("SELECT count(*) FROM \"data.csv\"", "file_table"),
        (
            "SELECT count(*) FROM overlap WHERE -drinks_region = 'x'",
            "expression",
        ),
        ("SELECT sum() FROM overlap", "aggregate_argument"),
    ] {
        assert_eq!(rule(sql), Some(expected), "{sql}");
    }
}

#[test]
fn aggregate_arguments_may_be_qualified_or_parenthesized_metrics() {
    for sql in [
        "SELECT o.drinks_region, sum(o.drinks_monthly_spend) FROM overlap o GROUP BY o.drinks_region",
        "SELECT drinks_region, sum((drinks_monthly_spend)) FROM overlap GROUP BY drinks_region",
        "SELECT count() FROM overlap",
    ] {
        assert_eq!(rule(sql), None, "{sql}");
    }
    // A qualified or parenthesized dimension is still a dimension.
    for sql in [
        "SELECT sum(o.drinks_region) FROM overlap o",
        "SELECT sum((drinks_region)) FROM overlap",
    ] {
        let r = refusal(sql);
        assert_eq!(r.rule, Rule::AggregateArgument, "{sql}: {r}");
        assert_eq!(r.construct, "SUM(drinks_region) over a dimension", "{sql}");
    }
}

/// The expression-depth backstop, attacked on its own: `check_text` keeps every text it
/// admits below this depth, so the statement is parsed here without it (on a thread with a
/// large stack, as the engine's planner threads have).
#[test]
fn the_depth_backstop_refuses_one_level_past_the_limit() {
    use datafusion::sql::sqlparser::parser::Parser;
    let check_depth = |nots: usize| {
        std::thread::Builder::new()
            .stack_size(64 * 1024 * 1024)
            .spawn(move || {
                // Expression depth: the NOTs, IS NULL, the column.
                let sql = format!(
                    "SELECT count(*) FROM overlap WHERE {}drinks_region IS NULL",
                    "NOT ".repeat(nots)
                );
                let statement = Parser::new(&GenericDialect {})
                    .with_recursion_limit(10 * MAX_NESTING)
                    .try_with_sql(&sql)
                    .and_then(|mut p| p.parse_statement())
                    .unwrap();
                let Statement::Query(query) = statement else {
                    panic!("not a query: {sql}");
                };
                check_query(&query, ALL, &columns()).err().map(|r| r.rule)
            })
            .unwrap()
            .join()
            .unwrap()
    };
    assert_eq!(check_depth(MAX_NESTING - 2), None);
    assert_eq!(check_depth(MAX_NESTING - 1), Some(Rule::TooComplex));
    assert_eq!(check_depth(3 * MAX_NESTING), Some(Rule::TooComplex));
}
