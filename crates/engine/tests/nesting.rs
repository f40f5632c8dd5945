//! No SQL can crash or stall the engine: deep nesting of every kind is refused before
//! parsing, and everything at exactly the limit runs on the stacks it actually gets.
//!
//! A stack overflow aborts the whole process, so each test runs its queries in a child
//! process (this test binary again, with `ACCORD_NESTING_CHILD` set): on code that overflows,
//! the child dies and the parent's assertion fails with the child's output, instead of the
//! test run being aborted. The child drives the engine from a tokio runtime whose workers have
//! tokio's default 2 MiB stack, as the room's do.

mod common;

use std::process::Command;
use std::sync::Arc;

use accord_engine::{Engine, MAX_NESTING, Outcome, Rule, nesting_score};

const CHILD: &str = "ACCORD_NESTING_CHILD";
const DONE: &str = "nesting child finished";

/// Runs the test `name` of this binary in a child process and checks that it finished.
fn in_child(name: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("start the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "the child running {name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// The engine over the corpus data, and a runtime like the room's (2 MiB worker stacks).
fn engine_and_runtime() -> (Arc<Engine>, tokio::runtime::Runtime) {
    let data = common::rows(500);
    let engine =
        Arc::new(Engine::new(common::spec(), common::batches(&data, 128)).expect("engine"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(2 * 1024 * 1024)
        .enable_all()
        .build()
        .expect("runtime");
    (engine, rt)
}

/// The outcome's rule name, or `answered`, of `sql` run as a task on a runtime worker.
fn decision(engine: &Arc<Engine>, rt: &tokio::runtime::Runtime, sql: &str) -> String {
    let engine = Arc::clone(engine);
    let sql = sql.to_owned();
    let task = rt.spawn(async move { engine.query(&sql).await });
    match rt.block_on(task).expect("the query task finished") {
        Ok(Outcome::Answered(_)) => "answered".into(),
        Ok(Outcome::Refused(r)) => r.rule.name().into(),
        Err(e) => format!("internal error: {e}"),
    }
}

#[test]
fn short_deeply_nested_queries_are_refused_and_the_process_survives() {
    if !is_child() {
        return in_child("short_deeply_nested_queries_are_refused_and_the_process_survives");
    }
    let (engine, rt) = engine_and_runtime();
    let prefix = "SELECT COUNT(*) FROM overlap WHERE ";
    // Within the limit: these run. The first (146 bytes) overflowed a 2 MiB stack and aborted
    // the process before the planner thread existed.
    let short = format!(
        "{prefix}{}drinks_region IS NULL{}",
        "(".repeat(45),
        ")".repeat(45)
    );
    assert!(short.len() < 200);
    assert_eq!(decision(&engine, &rt, &short), "answered");
    let nots = format!("{prefix}{}drinks_region IS NULL", "NOT ".repeat(45));
    assert_eq!(decision(&engine, &rt, &nots), "answered");
    // Over the limit: refused before parsing, also when short.
    let attacks = [
        format!(
            "{prefix}{}drinks_region IS NULL{}",
            "(".repeat(66),
            ")".repeat(66)
        ),
        format!("{prefix}{}drinks_region IS NULL", "NOT ".repeat(70)),
        format!(
            "{prefix}{}drinks_region IS NULL{}",
            "(".repeat(1000),
            ")".repeat(1000)
        ),
        format!("{prefix}{}drinks_region IS NULL", "NOT ".repeat(1000)),
        format!("{prefix}{}1", "- ".repeat(150)),
        format!("{prefix}drinks_region = {}", vec!["'a'"; 150].join("||")),
        format!("{prefix}{}x{}", "f(".repeat(80), ")".repeat(80)),
        format!("{prefix}{}", vec!["drinks_region = 'a'"; 100].join(" OR ")),
        format!(
            "{prefix}{}x{}",
            "CASE WHEN ".repeat(30),
            " THEN 1 END".repeat(30)
        ),
        format!(
            "{prefix}x IN ({}'a'{})",
            "x IN (".repeat(80),
            ")".repeat(80)
        ),
        format!(
            "{prefix}x IN ({}1{})",
            "SELECT x FROM overlap WHERE x IN (".repeat(40),
            ")".repeat(40)
        ),
    ];
    assert!(attacks[0].len() < 200, "the first attack is short");
    for sql in &attacks {
        assert_eq!(
            decision(&engine, &rt, sql),
            "too_complex",
            "{}…",
            &sql[..80]
        );
    }
    // The engine still answers afterwards.
    assert_eq!(
        decision(&engine, &rt, "SELECT COUNT(*) FROM overlap"),
        "answered"
    );
    println!("{DONE}");
}

/// `build(n)` with the largest `n` whose score is at most the limit, padded with `NOT`s in
/// front to exactly the limit; also returns the same query one level over the limit.
fn at_limit(build: impl Fn(usize) -> String) -> (String, String) {
    let mut n = 0;
    while nesting_score(&build(n + 1)).expect("tokenizes") <= MAX_NESTING {
        n += 1;
    }
    let sql = build(n);
    let score = nesting_score(&sql).expect("tokenizes");
    let pad = |extra: usize| {
        let (head, tail) = sql.split_once(" WHERE ").expect("a WHERE clause");
        format!("{head} WHERE {}{tail}", "NOT ".repeat(extra))
    };
    let exact = pad(MAX_NESTING - score);
    assert_eq!(nesting_score(&exact), Ok(MAX_NESTING), "{exact}");
    let over = pad(MAX_NESTING - score + 1);
    (exact, over)
}

#[test]
fn every_kind_of_nesting_at_exactly_the_limit_runs_safely_and_one_more_is_refused() {
    if !is_child() {
        return in_child(
            "every_kind_of_nesting_at_exactly_the_limit_runs_safely_and_one_more_is_refused",
        );
    }
    let (engine, rt) = engine_and_runtime();
    let query = |predicate: String| {
        format!(
            "SELECT drinks_region, COUNT(*) FROM overlap WHERE {predicate} GROUP BY drinks_region"
        )
    };
    let columns = ["drinks_region", "drinks_loyalty_tier", "snacks_favourite"];
    // (what, query builder, the decision at the limit)
    type Build = Box<dyn Fn(usize) -> String>;
    let kinds: Vec<(&str, Build, &str)> = vec![
        (
            "NOT",
            Box::new(move |n| query(format!("{}drinks_region = 'north'", "NOT ".repeat(n)))),
            "answered",
        ),
        (
            "parentheses",
            Box::new(move |n| {
                query(format!(
                    "{}drinks_region = 'north'{}",
                    "(".repeat(n),
                    ")".repeat(n)
                ))
            }),
            "answered",
        ),
        (
            "OR chain",
            Box::new(move |n| {
                let terms: Vec<String> = (0..=n)
                    .map(|i| format!("{} = 'v{i}'", columns[i % 3]))
                    .collect();
                query(terms.join(" OR "))
            }),
            "answered",
        ),
        (
            "AND/OR nested in parentheses",
            Box::new(move |n| {
                let mut p = "drinks_region = 'north'".to_string();
                for i in 0..n {
                    let op = if i % 2 == 0 { "AND" } else { "OR" };
                    p = format!("({} <> 'v{i}' {op} {p})", columns[i % 3]);
                }
                query(p)
            }),
            "answered",
        ),
        (
            "IS NOT NULL under NOT and parentheses",
            Box::new(move |n| {
                query(format!(
                    "{}snacks_favourite IS NOT NULL{}",
                    "NOT (".repeat(n),
                    ")".repeat(n)
                ))
            }),
            "answered",
        ),
        (
            "CASE",
            Box::new(move |n| {
                query(format!(
                    "{}drinks_region = 'x'{}",
                    "CASE WHEN ".repeat(n),
                    " THEN TRUE END".repeat(n)
                ))
            }),
            "expression",
        ),
        (
            "function calls",
            Box::new(move |n| {
                query(format!(
                    "{}drinks_region{} = 'x'",
                    "lower(".repeat(n),
                    ")".repeat(n)
                ))
            }),
            "function",
        ),
        (
            "IN lists",
            Box::new(move |n| {
                query(format!(
                    "drinks_region IN ({}'x'{})",
                    "drinks_region IN (".repeat(n),
                    ")".repeat(n)
                ))
            }),
            "",
        ),
        (
            "arithmetic",
            Box::new(move |n| {
                query(format!(
                    "drinks_region = {}",
                    vec!["'a'"; n + 1].join(" || ")
                ))
            }),
            "expression",
        ),
        (
            "unary minus",
            Box::new(move |n| query(format!("drinks_region = {}1", "- ".repeat(n)))),
            "expression",
        ),
        (
            "subqueries",
            Box::new(move |n| {
                query(format!(
                    "drinks_region IN ({}'x'{})",
                    "SELECT drinks_region FROM overlap WHERE drinks_region IN (".repeat(n),
                    ")".repeat(n)
                ))
            }),
            "subquery",
        ),
    ];
    for (what, build, expected) in &kinds {
        let (exact, over) = at_limit(build);
        let got = decision(&engine, &rt, &exact);
        assert!(
            !got.starts_with("internal") && got != "too_complex",
            "{what} at the limit: {got}"
        );
        if !expected.is_empty() {
            assert_eq!(&got, expected, "{what} at the limit");
        }
        assert_eq!(
            decision(&engine, &rt, &over),
            Rule::TooComplex.name(),
            "{what} over the limit"
        );
    }
    println!("{DONE}");
}
