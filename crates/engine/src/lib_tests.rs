//! The engine's own tests (moved beside `lib.rs` to keep it readable at once).
use super::*;
use arrow::array::{Float64Array, StringArray};

fn spec() -> TableSpec {
    TableSpec {
        columns: vec![
            ColumnSpec {
                name: "a_tier".into(),
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

/// 25 rows `big`, 3 rows `small`, 12 rows `mid`.
fn batch(spend: f64) -> RecordBatch {
    let tiers: Vec<&str> = std::iter::repeat_n("big", 25)
        .chain(std::iter::repeat_n("small", 3))
        .chain(std::iter::repeat_n("mid", 12))
        .collect();
    RecordBatch::try_new(
        spec().arrow_schema(),
        vec![
            Arc::new(StringArray::from(tiers)),
            Arc::new(Float64Array::from(vec![spend; 40])),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn small_groups_are_suppressed_and_counted() {
    let engine = Engine::new(spec(), vec![batch(1.0)]).unwrap();
    let sql = "SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier ORDER BY n";
    let Outcome::Answered(answer) = engine.query(sql).await.unwrap() else {
        panic!("refused");
    };
    assert_eq!(
        corpus::render_rows(&answer.batches),
        vec![
            vec!["mid".to_string(), "12".into()],
            vec!["big".into(), "25".into()]
        ]
    );
    assert_eq!(answer.rows, 2);
    assert_eq!(answer.groups_suppressed, 1);
    let names: Vec<_> = answer
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, vec!["a_tier", "n"], "the hidden count is dropped");
}

#[tokio::test]
async fn prepared_schema_matches_answer() {
    let engine = Engine::new(spec(), vec![batch(1.0)]).unwrap();
    let prepared = engine
        .prepare("SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier")
        .await
        .unwrap()
        .unwrap();
    let schema = prepared.schema();
    let answer = prepared.execute().await.unwrap();
    assert_eq!(schema.fields().len(), 2);
    assert_eq!(answer.schema.fields().len(), 2);
    assert_eq!(answer.groups_suppressed, 1);
}

#[tokio::test]
async fn aggregates_outside_the_agreement_are_refused() {
    let engine = Engine::new(spec(), vec![batch(1.0)]).unwrap();
    let refusal = engine
        .prepare("SELECT AVG(a_spend) FROM overlap")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.rule, Rule::AggregateFunction);
    let refusal = engine
        .prepare("SELECT a_tier, COUNT(*) FROM overlap WHERE a_spend > 1 GROUP BY a_tier")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.rule, Rule::MetricColumn);
    assert!(
        refusal
            .to_string()
            .starts_with("column a_spend is a metric")
    );
}

#[tokio::test]
async fn k_filter_works_without_count_in_the_agreement() {
    let mut only_sum = spec();
    only_sum.aggregates = vec![AggregateKind::Sum];
    let engine = Engine::new(only_sum, vec![batch(2.0)]).unwrap();
    let sql = "SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier ORDER BY s";
    let Outcome::Answered(answer) = engine.query(sql).await.unwrap() else {
        panic!("refused");
    };
    assert_eq!(
        corpus::render_rows(&answer.batches),
        vec![
            vec!["mid".to_string(), "24.0000".into()],
            vec!["big".into(), "50.0000".into()]
        ]
    );
    let refusal = engine
        .prepare("SELECT COUNT(*) FROM overlap")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refusal.rule, Rule::AggregateFunction);
}

/// `mid` (12 customers, k = 10) has a spend for one customer only: its SUM would be that
/// customer's figure. The row is suppressed, counted, and HAVING cannot probe it.
#[tokio::test]
async fn cells_resting_on_fewer_than_k_values_are_suppressed() {
    let mut b = batch(1.0);
    let spends: Vec<Option<f64>> = (0..40)
        .map(|i| {
            if (28..39).contains(&i) {
                None
            } else {
                Some(1.0)
            }
        })
        .collect();
    b = RecordBatch::try_new(
        spec().arrow_schema(),
        vec![
            Arc::clone(b.column(0)),
            Arc::new(Float64Array::from(spends)),
        ],
    )
    .unwrap();
    let engine = Engine::new(spec(), vec![b]).unwrap();
    let run = |sql: &'static str| {
        let engine = &engine;
        async move {
            let Outcome::Answered(answer) = engine.query(sql).await.unwrap() else {
                panic!("refused: {sql}");
            };
            (
                corpus::render_rows(&answer.batches),
                answer.groups_suppressed,
            )
        }
    };
    let (rows, suppressed) =
        run("SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier ORDER BY a_tier").await;
    assert_eq!(rows, vec![vec!["big".to_string(), "25.0000".into()]]);
    assert_eq!(suppressed, 2, "small (3 customers) and mid (1 value)");
    let (rows, _) = run(
        "SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier HAVING SUM(a_spend) > 0 ORDER BY a_tier",
    )
    .await;
    assert_eq!(rows, vec![vec!["big".to_string(), "25".into()]]);
    let (rows, suppressed) =
        run("SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier ORDER BY a_tier").await;
    assert_eq!(
        rows,
        vec![
            vec!["big".to_string(), "25".into()],
            vec!["mid".into(), "12".into()]
        ],
        "COUNT(*) alone rests on the group's customers"
    );
    assert_eq!(suppressed, 1);
}

/// Constructs the syntax check lets through and the plan check alone judges: the
/// optimizer's `Boolean(NULL)` (from `IN (..., NULL)`) and `HAVING NOT` are answered;
/// boolean literals, a metric as a condition and a string compared with an aggregate are
/// refused under their own rules.
#[tokio::test]
async fn the_plan_check_judges_what_the_syntax_check_lets_through() {
    let engine = Engine::new(spec(), vec![batch(1.0)]).unwrap();
    for (sql, rows) in [
        (
            "SELECT a_tier, COUNT(*) AS n FROM overlap WHERE a_tier IN ('big', NULL) GROUP BY a_tier",
            vec![vec!["big".to_string(), "25".into()]],
        ),
        (
            "SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier HAVING NOT COUNT(*) > 20",
            vec![vec!["mid".to_string(), "12".into()]],
        ),
    ] {
        let Outcome::Answered(answer) = engine.query(sql).await.unwrap() else {
            panic!("refused: {sql}");
        };
        assert_eq!(corpus::render_rows(&answer.batches), rows, "{sql}");
    }
    for (sql, rule) in [
        (
            "SELECT a_tier, COUNT(*) FROM overlap WHERE TRUE GROUP BY a_tier",
            Rule::Predicate,
        ),
        (
            "SELECT a_tier, COUNT(*) FROM overlap WHERE a_tier = 'big' AND a_spend GROUP BY a_tier",
            Rule::MetricColumn,
        ),
        (
            "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier HAVING COUNT(*) > 5 OR TRUE",
            Rule::Having,
        ),
        (
            "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier HAVING COUNT(*) = 'x'",
            Rule::LiteralType,
        ),
    ] {
        let refusal = engine.prepare(sql).await.unwrap().unwrap_err();
        assert_eq!(refusal.rule, rule, "{sql}: {refusal}");
    }
    // Refused only once optimized: the refusal never names the optimizer's internals.
    let sql = "SELECT a_tier, COUNT(*) FROM overlap GROUP BY a_tier HAVING COUNT(*) > 1.5";
    match engine.query(sql).await.unwrap() {
        Outcome::Answered(_) => {}
        Outcome::Refused(r) => {
            assert!(!r.to_string().contains("__common_expr"), "{r}");
        }
    }
}

/// The audit log's count of suppressed groups: a group of exactly k customers is
/// released, and not counted.
#[tokio::test]
async fn a_group_of_exactly_k_is_released_and_not_counted_as_suppressed() {
    let tiers: Vec<&str> = std::iter::repeat_n("big", 25)
        .chain(std::iter::repeat_n("small", 3))
        .chain(std::iter::repeat_n("edge", 10))
        .collect();
    let n = tiers.len();
    let b = RecordBatch::try_new(
        spec().arrow_schema(),
        vec![
            Arc::new(StringArray::from(tiers)),
            Arc::new(Float64Array::from(vec![1.0; n])),
        ],
    )
    .unwrap();
    let engine = Engine::new(spec(), vec![b]).unwrap();
    for (sql, rows) in [
        (
            "SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier ORDER BY a_tier",
            vec![
                vec!["big".to_string(), "25".into()],
                vec!["edge".into(), "10".into()],
            ],
        ),
        (
            "SELECT a_tier, SUM(a_spend) AS s FROM overlap GROUP BY a_tier ORDER BY a_tier",
            vec![
                vec!["big".to_string(), "25.0000".into()],
                vec!["edge".into(), "10.0000".into()],
            ],
        ),
    ] {
        let Outcome::Answered(answer) = engine.query(sql).await.unwrap() else {
            panic!("refused: {sql}");
        };
        assert_eq!(corpus::render_rows(&answer.batches), rows, "{sql}");
        assert_eq!(answer.groups_suppressed, 1, "only small: {sql}");
    }
}

/// The room charges the analyst's budget from `privacy_cost` before it runs a query:
/// with differential privacy every prepared query reports its cost.
#[tokio::test]
async fn differential_privacy_reports_what_each_query_spends() {
    let sql = "SELECT a_tier, COUNT(*) AS n FROM overlap GROUP BY a_tier";
    let exact = Engine::new(spec(), vec![batch(1.0)]).unwrap();
    assert_eq!(exact.privacy(), None);
    let prepared = exact.prepare(sql).await.unwrap().unwrap();
    assert_eq!(prepared.privacy_cost(), None);
    assert_eq!(prepared.execute().await.unwrap().privacy_spent, None);
    let privacy = QueryPrivacy::new(0.5, 1e-6, 10).unwrap();
    let noisy = Engine::new(spec(), vec![batch(1.0)])
        .unwrap()
        .with_differential_privacy(privacy, NoiseSource::from_seed(7));
    assert_eq!(noisy.privacy(), Some(privacy));
    let prepared = noisy.prepare(sql).await.unwrap().unwrap();
    assert_eq!(prepared.privacy_cost(), Some(privacy));
    assert_eq!(
        prepared.execute().await.unwrap().privacy_spent,
        Some(privacy)
    );
}

#[test]
fn debug_shows_the_spec_and_session_never_the_data() {
    let engine = Engine::new(spec(), vec![batch(7.5)]).unwrap();
    let shown = format!("{engine:?}");
    assert!(shown.starts_with("Engine {"), "{shown}");
    assert!(
        shown.contains("a_spend") && shown.contains("session_id"),
        "{shown}"
    );
    assert!(!shown.contains("big") && !shown.contains("7.5"), "{shown}");
}

/// DataFusion's own planning errors, classified: the syntax check keeps most of them
/// from happening, so they are produced here on a plain session.
#[tokio::test]
async fn planning_errors_become_refusals_under_their_rule() {
    let ctx = SessionContext::new();
    let error = |sql: &'static str| {
        let state = ctx.state();
        async move { state.create_logical_plan(sql).await.unwrap_err() }
    };
    let r = planning_refusal(&error("SELECT COUNT(*) FROM nowhere").await);
    assert_eq!(r.rule, Rule::UnknownTable, "{r}");
    assert!(r.construct.contains("nowhere"), "{r}");
    let r = planning_refusal(&error("SELECT no_such_function(1)").await);
    assert_eq!(r.rule, Rule::Function, "{r}");
    assert!(
        r.construct
            .starts_with("the query (Invalid function 'no_such_function'"),
        "{r}"
    );
    // A planning error that names a table or says "not found", but not both.
    for message in ["the table is empty", "a key was not found"] {
        let r = planning_refusal(&DataFusionError::Plan(message.into()));
        assert_eq!(r.rule, Rule::InvalidQuery, "{r}");
    }
    let r = planning_refusal(&DataFusionError::Plan(
        "Invalid function 'f'.\nDid you mean 'g'?".into(),
    ));
    assert_eq!(r.construct, "the query (Invalid function 'f'.)");
}

#[test]
fn first_line_keeps_one_line_of_at_most_200_characters() {
    assert_eq!(first_line(""), "");
    assert_eq!(first_line("one\ntwo"), "one");
    for n in [1, 199, 200] {
        assert_eq!(first_line(&"é".repeat(n)), "é".repeat(n));
    }
    assert_eq!(
        first_line(&format!("{}\nmore", "é".repeat(201))),
        format!("{}…", "é".repeat(200))
    );
}

#[test]
fn new_refuses_bad_batches() {
    assert!(matches!(
        Engine::new(spec(), vec![batch(11.0)]),
        Err(EngineError::MetricOutOfBounds { .. })
    ));
    assert!(matches!(
        Engine::new(spec(), vec![batch(f64::NAN)]),
        Err(EngineError::MetricOutOfBounds { .. })
    ));
    let other = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("a_tier", arrow::datatypes::DataType::Utf8, true),
        ])),
        vec![Arc::new(StringArray::from(vec!["x"]))],
    )
    .unwrap();
    assert!(matches!(
        Engine::new(spec(), vec![other]),
        Err(EngineError::SchemaMismatch { .. })
    ));
}
