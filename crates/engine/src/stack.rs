//! Bounding the stack a query can make the engine use.
//!
//! Everything that handles a query recurses once per level of nesting: sqlparser, DataFusion's
//! SQL planner, optimizer and physical planner, our own syntax-tree and plan walks, even
//! dropping a syntax tree. The workspace builds DataFusion without its `recursive_protection`
//! feature (which would grow the stack on demand; see docs/QUERY_POLICY.md for why it stays
//! off), so a query of a few dozen `NOT`s used to overflow a tokio worker's stack and abort the
//! whole room. Two defences, both here:
//!
//! 1. **One nesting limit**, [`MAX_NESTING`], checked on the SQL's tokens before anything
//!    parses it ([`check_text`]): the score ([`nesting_score`]) bounds the depth of every tree
//!    built from the text, whatever kind of nesting made it (parentheses, `NOT`, unary minus,
//!    binary operators, `CASE`, function calls, `IN` lists, subqueries, set operations).
//! 2. **A dedicated planner stack**: parsing, planning, the policy walks and physical planning
//!    run on a small pool of threads with an explicit stack of [`PLANNER_STACK_BYTES`]
//!    ([`on_planner_thread`]), the same in every build profile. The test
//!    `crates/engine/tests/nesting.rs` runs queries at exactly the limit, of every kind, through
//!    [`crate::Engine::query`] from a runtime whose workers have tokio's default 2 MiB stack.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::EngineError;
use crate::refusal::{Refusal, Rule};

/// Longest SQL text the policy accepts, in bytes. A real analyst question is a few hundred
/// bytes; the cap bounds the work (tokenizing, parsing) anyone can ask of the room per query.
pub const MAX_SQL_LEN: usize = 16 * 1024;

/// Highest nesting score ([`nesting_score`]) the policy accepts: the one limit on every kind
/// of nesting. The allowed query shape needs far less (a query with ten aggregates and ten
/// `WHERE` conditions scores about 30); the limit is well inside what [`PLANNER_STACK_BYTES`]
/// holds in an unoptimized build, as `crates/engine/tests/nesting.rs` proves at exactly this
/// score for each kind of nesting.
pub const MAX_NESTING: usize = 64;

/// Stack of each planner thread. Measured on 2026-12-05 in the dev profile (DataFusion
/// unoptimized, the largest frames): the nesting test at exactly [`MAX_NESTING`] overflows a
/// 4 MiB planner stack and passes with 8 MiB, so 64 MiB leaves a margin of at least eight.
/// Only the touched pages are ever committed.
pub const PLANNER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Planner threads: planning is CPU-bound and takes milliseconds, so a few threads keep up
/// with any number of analysts while bounding the stacks the room reserves
/// (`PLANNER_THREADS × PLANNER_STACK_BYTES` of address space). Further queries wait their turn.
pub const PLANNER_THREADS: usize = 2;

/// Keywords that start a sibling clause or modify one, never a deeper level of a tree:
/// they do not add to the nesting score. Every other keyword does.
const FLAT_KEYWORDS: &[Keyword] = &[
    Keyword::FROM,
    Keyword::WHERE,
    Keyword::GROUP,
    Keyword::BY,
    Keyword::HAVING,
    Keyword::ORDER,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::AS,
    Keyword::ASC,
    Keyword::DESC,
    Keyword::NULLS,
    Keyword::FIRST,
    Keyword::LAST,
    Keyword::NULL,
    Keyword::TRUE,
    Keyword::FALSE,
];

/// Whether `token` can add a level to a tree built from the text: every operator and
/// keyword except [`FLAT_KEYWORDS`]. Identifiers, literals, commas and whitespace cannot.
fn adds_a_level(token: &Token) -> bool {
    match token {
        Token::EOF
        | Token::Whitespace(_)
        | Token::Comma
        | Token::SemiColon
        | Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_) => false,
        Token::Word(word) => {
            word.keyword != Keyword::NoKeyword && !FLAT_KEYWORDS.contains(&word.keyword)
        }
        _ => true,
    }
}

/// The nesting score of `sql`, computed on its tokens in one pass (no recursion).
///
/// Brackets (`(`, `[`, `{`) split the text into groups. A group's score is 1 plus the number
/// of level-adding tokens directly inside it ([`adds_a_level`]) plus the highest score of the
/// groups directly inside it; the text's score is that of the whole text, less the 1. This
/// bounds the depth of any tree a parser builds from the text: a path from the root to a
/// leaf passes through nodes made by tokens of the groups it enters (each token making at
/// most one node on the path) and enters at most one group per level, because the groups
/// inside a group are disjoint subtrees. A left-deep chain `a OR b OR c …` scores one per
/// operator; `NOT NOT …` one per `NOT`; `((…))` one per bracket; a function call or `IN`
/// list one for its brackets, plus its arguments' highest score (commas and literals are free).
///
/// An error is the tokenizer's message (the SQL is not valid: the parser would refuse it).
pub fn nesting_score(sql: &str) -> Result<usize, String> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| e.to_string())?;
    // One frame per open bracket: (level-adding tokens in it, highest score inside it).
    let mut frames: Vec<(usize, usize)> = vec![(0, 0)];
    let close = |frames: &mut Vec<(usize, usize)>| {
        if frames.len() > 1
            && let Some((ops, inner)) = frames.pop()
            && let Some(parent) = frames.last_mut()
        {
            parent.1 = parent.1.max(ops.saturating_add(inner).saturating_add(1));
        }
    };
    for token in &tokens {
        match token {
            Token::LParen | Token::LBracket | Token::LBrace => frames.push((0, 0)),
            // An unmatched closing bracket is a syntax error the parser reports.
            Token::RParen | Token::RBracket | Token::RBrace => close(&mut frames),
            other if adds_a_level(other) => {
                if let Some(top) = frames.last_mut() {
                    top.0 = top.0.saturating_add(1);
                }
            }
            _ => {}
        }
    }
    // Unclosed brackets are a syntax error too; score them as if closed at the end.
    while frames.len() > 1 {
        close(&mut frames);
    }
    Ok(frames
        .first()
        .map_or(0, |(ops, inner)| ops.saturating_add(*inner)))
}

/// The checks on the raw text that come before any parsing: the length cap
/// ([`MAX_SQL_LEN`]) and the nesting limit ([`MAX_NESTING`]). Linear in the text and free of
/// recursion, so the room runs it on its own threads and audits a refusal before planning.
pub fn check_text(sql: &str) -> Result<(), Refusal> {
    if sql.len() > MAX_SQL_LEN {
        return Err(Refusal::new(
            Rule::SqlTooLong,
            format!("the SQL text ({} bytes, limit {MAX_SQL_LEN})", sql.len()),
        ));
    }
    let score = nesting_score(sql).map_err(|e| {
        let mut detail: String = e.chars().take(200).collect();
        if e.chars().count() > 200 {
            detail.push('…');
        }
        Refusal::new(Rule::Syntax, format!("the SQL ({detail})"))
    })?;
    if score > MAX_NESTING {
        return Err(Refusal::new(
            Rule::TooComplex,
            format!("the query (nesting score {score}, limit {MAX_NESTING})"),
        ));
    }
    Ok(())
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The planner threads, started on first use.
struct Pool {
    jobs: mpsc::Sender<Job>,
}

fn pool() -> Result<&'static Pool, EngineError> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..PLANNER_THREADS {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("accord-planner-{i}"))
                .stack_size(PLANNER_STACK_BYTES)
                .spawn(move || {
                    loop {
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = next else {
                            return;
                        };
                        // A panic fails only its own query (its caller sees the channel close).
                        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a query panicked on a planner thread");
                        }
                    }
                })
                .map_err(|e| format!("starting planner thread {i}: {e}"))?;
        }
        Ok(Pool { jobs })
    })
    .as_ref()
    .map_err(|e| EngineError::Internal(e.clone()))
}

/// Runs `f` on a planner thread (stack [`PLANNER_STACK_BYTES`]) and waits for its result
/// without blocking the caller's async runtime.
pub(crate) async fn on_planner_thread<T, F>(f: F) -> Result<T, EngineError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = futures::channel::oneshot::channel();
    let job: Job = Box::new(move || {
        // The caller may have gone away (a cancelled request); the result is then unused.
        if tx.send(f()).is_err() {
            tracing::debug!("a planner result had no one waiting for it");
        }
    });
    pool()?.jobs.send(job).map_err(|_| {
        EngineError::Internal("the planner threads have stopped; restart the room".into())
    })?;
    rx.await.map_err(|_| {
        EngineError::Internal(
            "planning the query panicked; please report this with the query's SQL".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(sql: &str) -> usize {
        nesting_score(sql).unwrap()
    }

    #[test]
    fn flat_queries_score_low() {
        assert_eq!(score("SELECT a FROM overlap"), 1);
        assert_eq!(
            score("SELECT a, COUNT(*) FROM overlap WHERE b IN ('x', 'y', 'z') GROUP BY a"),
            // SELECT, COUNT, IN; COUNT's group holds `*` (2), the IN list nothing (1)
            3 + 2
        );
        let wide = format!(
            "SELECT COUNT(*) FROM overlap WHERE b IN ({})",
            vec!["'v'"; 1000].join(", ")
        );
        // SELECT, COUNT, IN; COUNT's group (2) is deeper than the IN list's (1)
        assert_eq!(score(&wide), 3 + 2, "a long IN list is wide, not deep");
    }

    #[test]
    fn every_kind_of_nesting_counts() {
        let base = score("SELECT COUNT(*) FROM overlap WHERE x");
        let with = |hole: &str| score(&format!("SELECT COUNT(*) FROM overlap WHERE {hole}"));
        assert_eq!(with(&format!("{}x", "NOT ".repeat(100))), base + 100);
        // Brackets replace COUNT's group (2) as the deepest: SELECT and COUNT (2) + 100.
        assert_eq!(
            with(&format!("{}x{}", "(".repeat(100), ")".repeat(100))),
            2 + 100
        );
        assert_eq!(with(&vec!["x = 'a'"; 101].join(" OR ")), base + 101 + 100);
        assert_eq!(with(&format!("{}1", "- ".repeat(100))), base + 100);
        assert_eq!(
            with(&format!("{}x{}", "f(".repeat(100), ")".repeat(100))),
            2 + 100
        );
        assert_eq!(
            with(&format!(
                "{}x{}",
                "CASE WHEN ".repeat(50),
                " THEN 1 END".repeat(50)
            )),
            base + 50 * 4
        );
        // A subquery level is its bracket and its SELECT.
        assert_eq!(
            with(&format!("{}1{}", "(SELECT ".repeat(50), ")".repeat(50))),
            2 + 50 * 2
        );
        assert_eq!(
            score(&vec!["SELECT 1"; 100].join(" UNION ")),
            100 + 99,
            "set operations chain"
        );
    }

    #[test]
    fn unbalanced_brackets_still_score() {
        assert_eq!(score(&"(".repeat(100)), 100);
        assert_eq!(score(&")".repeat(100)), 0);
    }

    #[test]
    fn check_text_refuses_over_the_limits() {
        assert_eq!(check_text("SELECT COUNT(*) FROM overlap"), Ok(()));
        let deep = format!(
            "SELECT COUNT(*) FROM overlap WHERE {}x",
            "NOT ".repeat(MAX_NESTING)
        );
        assert_eq!(check_text(&deep).map_err(|r| r.rule), Err(Rule::TooComplex));
        let long = format!(
            "SELECT COUNT(*) FROM overlap -- {}",
            "a".repeat(MAX_SQL_LEN)
        );
        assert_eq!(check_text(&long).map_err(|r| r.rule), Err(Rule::SqlTooLong));
        assert_eq!(
            check_text("SELECT 'unterminated").map_err(|r| r.rule),
            Err(Rule::Syntax)
        );
    }
}
