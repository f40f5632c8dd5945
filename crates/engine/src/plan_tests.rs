//! The logical-plan layer of the policy, attacked directly: each plan is built by DataFusion's
//! SQL planner WITHOUT the syntax check in front (which would refuse these queries first), so
//! these tests fail if the plan whitelist stops refusing the construct. The re-check of the
//! optimized plan is fed plans that lost (or never had) the k filter.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::logical_expr::{LogicalPlanBuilder, col, lit};
use datafusion::prelude::SessionContext;

use super::*;
use crate::spec::ColumnSpec;

fn spec() -> TableSpec {
    TableSpec {
        columns: vec![
            ColumnSpec {
                name: "a_tier".into(),
                role: Role::Dimension,
            },
            ColumnSpec {
                name: "b_fav".into(),
                role: Role::Dimension,
            },
            ColumnSpec {
                name: "a_spend".into(),
                role: Role::Metric {
                    min: 0.0,
                    max: 10.0,
                },
            },
        ],
        min_group_size: 10,
        aggregates: vec![AggregateKind::Count, AggregateKind::Sum],
    }
}

/// A full DataFusion session (every function registered, so window functions and the like
/// plan) with an empty `overlap` table of the spec's schema.
fn session() -> SessionContext {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(spec().arrow_schema(), vec![vec![]]).unwrap();
    ctx.register_table("overlap", Arc::new(table)).unwrap();
    ctx
}

async fn logical(sql: &str) -> LogicalPlan {
    session()
        .state()
        .create_logical_plan(sql)
        .await
        .unwrap_or_else(|e| panic!("DataFusion should plan {sql}: {e}"))
}

/// The first layer refuses `sql`; the plan layer, on its own, refuses it with `rule`.
async fn plan_refuses(sql: &str, rule: Rule) -> Refusal {
    let s = spec();
    assert!(
        crate::ast::parse_and_check(sql, &s.aggregates, &s.columns).is_err(),
        "the syntax check also refuses {sql}"
    );
    let plan = logical(sql).await;
    match check(&plan, &s, Stage::Initial) {
        Err(r) => {
            assert_eq!(
                r.rule,
                rule,
                "{sql}: refused as {} ({r}), expected {}\n{}",
                r.rule.name(),
                rule.name(),
                plan.display_indent()
            );
            r
        }
        Ok(()) => panic!(
            "the plan check let through {sql}:\n{}",
            plan.display_indent()
        ),
    }
}

#[tokio::test]
async fn joins_are_refused_by_the_plan_check() {
    plan_refuses(
        "SELECT COUNT(*) FROM overlap x JOIN overlap y ON x.a_tier = y.a_tier GROUP BY x.a_tier",
        Rule::Join,
    )
    .await;
    plan_refuses(
        "SELECT x.a_tier, COUNT(*) FROM overlap x CROSS JOIN overlap y GROUP BY x.a_tier",
        Rule::Join,
    )
    .await;
}

#[tokio::test]
async fn set_operations_are_refused_by_the_plan_check() {
    plan_refuses(
        "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier \
         UNION ALL SELECT b_fav, COUNT(*) FROM overlap GROUP BY b_fav",
        Rule::SetOperation,
    )
    .await;
}

#[tokio::test]
async fn window_functions_are_refused_by_the_plan_check() {
    plan_refuses(
        "SELECT a_tier, COUNT(*), SUM(COUNT(*)) OVER () FROM overlap GROUP BY a_tier",
        Rule::WindowFunction,
    )
    .await;
}

#[tokio::test]
async fn distinct_is_refused_by_the_plan_check() {
    plan_refuses(
        "SELECT DISTINCT a_tier, COUNT(*) FROM overlap GROUP BY a_tier",
        Rule::Distinct,
    )
    .await;
}

#[tokio::test]
async fn values_are_refused_by_the_plan_check() {
    plan_refuses(
        "SELECT column1, COUNT(*) FROM (VALUES ('a'), ('b')) GROUP BY column1",
        Rule::Values,
    )
    .await;
}

#[tokio::test]
async fn subqueries_are_refused_by_the_plan_check() {
    // In WHERE: a membership test against a row-level subquery (a metric filtered inside).
    // The predicate whitelist refuses it: only comparisons of dimensions with literals.
    plan_refuses(
        "SELECT a_tier, COUNT(*) FROM overlap \
         WHERE b_fav IN (SELECT b_fav FROM overlap WHERE a_spend > 9) GROUP BY a_tier",
        Rule::Predicate,
    )
    .await;
    plan_refuses(
        "SELECT a_tier, COUNT(*) FROM overlap \
         WHERE EXISTS (SELECT 1 FROM overlap o WHERE o.a_spend > 9) GROUP BY a_tier",
        Rule::Predicate,
    )
    .await;
    // A derived table that aggregates inside another aggregate.
    plan_refuses(
        "SELECT COUNT(*) FROM (SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier) t \
         GROUP BY n",
        Rule::Subquery,
    )
    .await;
}

#[tokio::test]
async fn ctes_are_refused_by_the_plan_check() {
    // A CTE that reads rows and is aggregated outside: the row-level table alias is refused
    // wherever it appears above the aggregate.
    plan_refuses(
        "WITH t AS (SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier) \
         SELECT n, COUNT(*) FROM t GROUP BY n",
        Rule::Subquery,
    )
    .await;
    plan_refuses(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) \
         SELECT n, COUNT(*) FROM r GROUP BY n",
        Rule::Cte,
    )
    .await;
}

/// A well-formed query for the re-check tests.
const GOOD: &str =
    "SELECT a_tier, COUNT(*) AS n, SUM(a_spend) FROM overlap GROUP BY a_tier ORDER BY n";

#[tokio::test]
async fn the_recheck_accepts_the_rewritten_optimized_plan() {
    let s = spec();
    let plan = logical(GOOD).await;
    check(&plan, &s, Stage::Initial).unwrap();
    let state = session().state();
    let optimized = state.optimize(&add_k_filter(plan, 10).unwrap()).unwrap();
    check(&optimized, &s, Stage::Optimized { k: 10 }).unwrap();
}

#[tokio::test]
async fn the_recheck_refuses_an_optimized_plan_without_the_k_filter() {
    let s = spec();
    let state = session().state();
    // Never rewritten: the aggregate is not under a k filter.
    let plan = state.optimize(&logical(GOOD).await).unwrap();
    let r = check(&plan, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::PlanShape, "{r}");
    // Rewritten for a smaller k than the agreement's.
    let plan = state
        .optimize(&add_k_filter(logical(GOOD).await, 2).unwrap())
        .unwrap();
    let r = check(&plan, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::PlanShape, "{r}");
    // Rewritten for k - 1.
    let plan = state
        .optimize(&add_k_filter(logical(GOOD).await, 9).unwrap())
        .unwrap();
    let r = check(&plan, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::PlanShape, "{r}");
    // Without ORDER BY: the bare aggregate at the top.
    let plan = state
        .optimize(&logical("SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier").await)
        .unwrap();
    let r = check(&plan, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::PlanShape, "{r}");
}

#[tokio::test]
async fn the_recheck_refuses_a_plan_an_optimizer_turned_into_a_join() {
    // An optimized plan holding a node the whitelist does not know is refused, even with the
    // k filter in place (here: the rewritten plan of a self-join).
    let s = spec();
    let state = session().state();
    let plan = logical(
        "SELECT x.a_tier, COUNT(*) FROM overlap x JOIN overlap y ON x.a_tier = y.a_tier GROUP BY x.a_tier",
    )
    .await;
    let optimized = state.optimize(&add_k_filter(plan, 10).unwrap()).unwrap();
    let r = check(&optimized, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::Join, "{r}");
}

/// The plan check on its own refuses `sql` with `rule` (whatever the syntax check says: some
/// of these reach the plan check in the engine, some do not).
async fn initial_refuses(sql: &str, rule: Rule) -> Refusal {
    let plan = logical(sql).await;
    let r = check(&plan, &spec(), Stage::Initial)
        .err()
        .unwrap_or_else(|| panic!("the plan check let through {sql}"));
    assert_eq!(r.rule, rule, "{sql}: {r}");
    r
}

/// The optimized plan of `sql` after the k rewrite (the engine's order: check, rewrite,
/// optimize, re-check).
async fn rewritten_and_optimized(sql: &str, k: u64) -> LogicalPlan {
    let plan = logical(sql).await;
    session()
        .state()
        .optimize(&add_k_filter(plan, k).unwrap())
        .unwrap()
}

/// The output column names of `plan`.
fn names(plan: &LogicalPlan) -> Vec<String> {
    plan.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

#[test]
fn refusals_quote_at_most_80_characters_of_an_expression() {
    // Refusals land in the audit log and in front of the analyst: the quoted query text is
    // cut at 80 characters (not bytes) and the cut is marked.
    for n in [1, 79, 80] {
        let name = "é".repeat(n);
        assert_eq!(show(&Expr::Column(Column::from_name(&name))), name);
    }
    let long = "é".repeat(81);
    assert_eq!(
        show(&Expr::Column(Column::from_name(long))),
        format!("{}…", "é".repeat(80))
    );
}

#[test]
fn refusals_never_show_the_optimizers_internal_names() {
    let e = Expr::Column(Column::from_name("__common_expr_12"))
        .gt(Expr::Column(Column::from_name("__common_expr_3")));
    let text = show(&e);
    assert!(!text.contains("__common_expr"), "{text}");
    assert_eq!(
        text,
        "(an expression your query repeats) > (an expression your query repeats)"
    );
    assert_eq!(show(&Expr::Column(Column::from_name("a_tier"))), "a_tier");
}

#[tokio::test]
async fn a_refusal_names_the_refused_select_item() {
    let tail = "z".repeat(100);
    let sql = format!("SELECT a_tier, a_tier || '{tail}', COUNT(*) FROM overlap GROUP BY a_tier");
    let r = plan_refuses(&sql, Rule::Projection).await;
    let item = r
        .construct
        .strip_prefix("select item ")
        .unwrap_or_else(|| panic!("{r}"));
    assert!(item.starts_with("overlap.a_tier || zzzz"), "{r}");
    assert!(item.ends_with('…'), "{r}");
    assert_eq!(item.chars().count(), 81, "{r}");
}

/// `session()` plus decoy tables of the same schema: `other` beside `overlap`, and an
/// `overlap` in another schema.
async fn session_with_decoys() -> SessionContext {
    let ctx = session();
    let table = || Arc::new(MemTable::try_new(spec().arrow_schema(), vec![vec![]]).unwrap());
    ctx.register_table("other", table()).unwrap();
    ctx.sql("CREATE SCHEMA s2").await.unwrap();
    ctx.register_table("s2.overlap", table()).unwrap();
    // Another catalog with a `public.overlap` of its own.
    ctx.sql("CREATE DATABASE c2").await.unwrap();
    ctx.sql("CREATE SCHEMA c2.public").await.unwrap();
    ctx.register_table("c2.public.overlap", table()).unwrap();
    ctx
}

#[tokio::test]
async fn the_plan_check_reads_only_overlap_in_the_public_schema() {
    let s = spec();
    let ctx = session_with_decoys().await;
    for (from, allowed) in [
        ("overlap", true),
        ("public.overlap", true),
        ("other", false),
        ("public.other", false),
        ("s2.overlap", false),
        ("datafusion.public.overlap", true),
        ("c2.public.overlap", false),
    ] {
        let sql = format!("SELECT a_tier, COUNT(*) FROM {from} GROUP BY a_tier");
        let plan = ctx.state().create_logical_plan(&sql).await.unwrap();
        match check(&plan, &s, Stage::Initial) {
            Ok(()) => assert!(allowed, "the plan check read {from}"),
            Err(r) => {
                assert!(!allowed, "{from} refused: {r}");
                assert_eq!(r.rule, Rule::UnknownTable, "{r}");
            }
        }
    }
}

#[tokio::test]
async fn the_recheck_refuses_a_limit_below_the_k_filter() {
    // LIMIT 1 over the groups ordered by size, with the k filter only above the LIMIT: the
    // answer would be empty exactly when the smallest group has fewer than k customers.
    let s = spec();
    let plan =
        logical("SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier ORDER BY n LIMIT 1")
            .await;
    check(&plan, &s, Stage::Initial).unwrap();
    let gated_too_late = LogicalPlanBuilder::from(plan)
        .filter(col("n").gt_eq(lit(10i64)))
        .unwrap()
        .build()
        .unwrap();
    let r = check(&gated_too_late, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::PlanShape, "{r}");
    assert!(r.construct.contains("below the k filter"), "{r}");
}

#[tokio::test]
async fn the_recheck_refuses_a_group_size_gate_without_the_metric_gate() {
    // A group of k customers of whom one has a value: its SUM is that customer's value. A
    // filter proving only the group size (here the analyst's own HAVING, never rewritten)
    // does not cover the metric.
    let s = spec();
    let plan = logical(
        "SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier HAVING COUNT(*) >= 10",
    )
    .await;
    check(&plan, &s, Stage::Initial).unwrap();
    let optimized = session().state().optimize(&plan).unwrap();
    let r = check(&optimized, &s, Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::PlanShape, "{r}");
    // The same query rewritten carries both gates and passes.
    let rewritten = rewritten_and_optimized(
        "SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier HAVING COUNT(*) >= 10",
        10,
    )
    .await;
    check(&rewritten, &s, Stage::Optimized { k: 10 }).unwrap();
}

#[tokio::test]
async fn only_the_rewrite_may_count_when_the_agreement_does_not_offer_count() {
    let mut only_sum = spec();
    only_sum.aggregates = vec![AggregateKind::Sum];
    // The analyst's COUNT(*) is refused by the plan check on its own.
    let plan = logical("SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier").await;
    let r = check(&plan, &only_sum, Stage::Initial).unwrap_err();
    assert_eq!(r.rule, Rule::AggregateFunction, "{r}");
    // The rewrite's hidden counts pass the re-check...
    let sql = "SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier";
    check(&logical(sql).await, &only_sum, Stage::Initial).unwrap();
    let optimized = rewritten_and_optimized(sql, 10).await;
    check(&optimized, &only_sum, Stage::Optimized { k: 10 }).unwrap();
    // ...but do not let another aggregate outside the agreement through it.
    let optimized = rewritten_and_optimized(
        "SELECT a_tier, AVG(a_spend) FROM overlap GROUP BY a_tier",
        10,
    )
    .await;
    let r = check(&optimized, &spec(), Stage::Optimized { k: 10 }).unwrap_err();
    assert_eq!(r.rule, Rule::AggregateFunction, "{r}");
}

#[tokio::test]
async fn aggregates_of_literals_and_dimensions_are_refused_by_the_plan_check() {
    // SUM(1) is the group size under another name; COUNT(NULL) is always 0 and, taken for
    // the group size, would make `HAVING COUNT(NULL) >= k` look like a k gate.
    plan_refuses(
        "SELECT a_tier, SUM(1) FROM overlap GROUP BY a_tier",
        Rule::AggregateArgument,
    )
    .await;
    plan_refuses(
        "SELECT a_tier, COUNT(NULL) FROM overlap GROUP BY a_tier",
        Rule::AggregateArgument,
    )
    .await;
    let r = plan_refuses(
        "SELECT a_tier, COUNT(b_fav) FROM overlap GROUP BY a_tier",
        Rule::AggregateArgument,
    )
    .await;
    assert_eq!(r.construct, "COUNT(b_fav) over a dimension");
}

#[tokio::test]
async fn a_metric_used_as_a_where_condition_is_named() {
    let r = initial_refuses(
        "SELECT a_tier, COUNT(*) FROM overlap WHERE b_fav = 'x' AND a_spend GROUP BY a_tier",
        Rule::MetricColumn,
    )
    .await;
    assert_eq!(r.construct, "column a_spend");
}

#[tokio::test]
async fn boolean_literals_are_the_optimizers_not_the_analysts() {
    // The analyst's WHERE and HAVING grammars have no boolean literals.
    for (sql, rule) in [
        (
            "SELECT a_tier, COUNT(*) FROM overlap WHERE TRUE GROUP BY a_tier",
            Rule::Predicate,
        ),
        (
            "SELECT a_tier, COUNT(*) FROM overlap WHERE b_fav = 'x' OR FALSE GROUP BY a_tier",
            Rule::Predicate,
        ),
        (
            "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier HAVING TRUE",
            Rule::Having,
        ),
        (
            "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier HAVING COUNT(*) > 20 OR FALSE",
            Rule::Having,
        ),
    ] {
        initial_refuses(sql, rule).await;
    }
    // The optimizer folds `a_tier = NULL` (an allowed comparison) into `Boolean(NULL)`: the
    // re-check accepts that in WHERE...
    let s = spec();
    let sql = "SELECT a_tier, COUNT(*) FROM overlap WHERE a_tier IN ('x', NULL) GROUP BY a_tier";
    check(&logical(sql).await, &s, Stage::Initial).unwrap();
    let optimized = rewritten_and_optimized(sql, 10).await;
    assert!(
        optimized
            .display_indent()
            .to_string()
            .contains("Boolean(NULL)"),
        "the optimizer no longer folds the NULL comparison; find another query:\n{}",
        optimized.display_indent()
    );
    check(&optimized, &s, Stage::Optimized { k: 10 }).unwrap();
    // ...and above the aggregate (a folded HAVING comparison over the gated groups).
    let gated = rewritten_and_optimized(
        "SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier",
        10,
    )
    .await;
    let folded = LogicalPlanBuilder::from(gated)
        .filter(col("n").gt(lit(20i64)).or(lit(ScalarValue::Boolean(None))))
        .unwrap()
        .build()
        .unwrap();
    check(&folded, &s, Stage::Optimized { k: 10 }).unwrap();
}

#[tokio::test]
async fn having_compares_aggregates_with_numbers_and_may_negate() {
    let s = spec();
    let sql = "SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier \
               HAVING NOT SUM(a_spend) > 5 AND NOT (COUNT(*) < 20 OR COUNT(*) = 30)";
    check(&logical(sql).await, &s, Stage::Initial).unwrap();
    for literal in ["'x'", "NULL"] {
        let sql = format!(
            "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier HAVING COUNT(*) = {literal}"
        );
        let r = initial_refuses(&sql, Rule::LiteralType).await;
        assert!(r.construct.ends_with(" in HAVING"), "{r}");
    }
}

#[tokio::test]
async fn the_recheck_recognises_a_k_gate_in_any_integer_type_on_either_side() {
    // The re-check must not depend on how an optimizer writes the gate: each integer literal
    // type, the literal on either side, `> k - 1`. And it must not take a weaker bound.
    let s = spec();
    let plan = logical("SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier").await;
    let n = || col("n");
    for (gate, proves) in [
        (n().gt_eq(lit(10i64)), true),
        (n().gt_eq(lit(10i32)), true),
        (n().gt_eq(lit(10u64)), true),
        (n().gt_eq(lit(10u32)), true),
        (lit(10i64).lt_eq(n()), true),
        (lit(10i32).eq(n()), true),
        (n().gt(lit(9u32)), true),
        (n().gt_eq(lit(9i64)), false),
        (n().gt_eq(lit(9i32)), false),
        (n().gt_eq(lit(9u64)), false),
        (n().gt_eq(lit(9u32)), false),
        (lit(9i64).lt_eq(n()), false),
        (n().gt_eq(lit(-10i32)), false),
        (n().lt_eq(lit(10i64)), false),
    ] {
        let shown = gate.to_string();
        let gated = LogicalPlanBuilder::from(plan.clone())
            .filter(gate)
            .unwrap()
            .build()
            .unwrap();
        match check(&gated, &s, Stage::Optimized { k: 10 }) {
            Ok(()) => assert!(proves, "{shown} taken for a k gate"),
            Err(r) => {
                assert!(!proves, "{shown} not recognised as a k gate: {r}");
                assert_eq!(r.rule, Rule::PlanShape, "{r}");
            }
        }
    }
}

#[tokio::test]
async fn the_rewrite_drops_its_hidden_counts_even_with_no_projection_above() {
    // The hidden counts are exact: they never reach the answer, whatever the plan's top.
    let s = spec();
    let LogicalPlan::Projection(top) =
        logical("SELECT a_tier, SUM(a_spend) FROM overlap GROUP BY a_tier").await
    else {
        panic!("the planner no longer puts a projection on top");
    };
    let aggregate = top.input.as_ref().clone();
    check(&aggregate, &s, Stage::Initial).unwrap();
    let rewritten = add_k_filter(aggregate.clone(), 10).unwrap();
    assert_eq!(names(&rewritten), names(&aggregate));
    let optimized = session().state().optimize(&rewritten).unwrap();
    assert_eq!(names(&optimized), names(&aggregate));
    check(&optimized, &s, Stage::Optimized { k: 10 }).unwrap();
}
