//! The logical-plan layer of the policy, attacked directly: each plan is built by DataFusion's
//! SQL planner WITHOUT the syntax check in front (which would refuse these queries first), so
//! these tests fail if the plan whitelist stops refusing the construct. The re-check of the
//! optimized plan is fed plans that lost (or never had) the k filter.

use std::sync::Arc;

use datafusion::datasource::MemTable;
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
async fn plan_refuses(sql: &str, rule: Rule) {
    let s = spec();
    assert!(
        crate::ast::parse_and_check(sql, &s.aggregates, &s.columns).is_err(),
        "the syntax check also refuses {sql}"
    );
    let plan = logical(sql).await;
    match check(&plan, &s, Stage::Initial) {
        Err(r) => assert_eq!(
            r.rule,
            rule,
            "{sql}: refused as {} ({r}), expected {}\n{}",
            r.rule.name(),
            rule.name(),
            plan.display_indent()
        ),
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
