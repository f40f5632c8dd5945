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
