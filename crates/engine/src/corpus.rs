//! Parser for the policy corpus (`crates/engine/tests/corpus/policy.slt`), so the same
//! cases can be replayed in-process, through gRPC and through Flight SQL.
//!
//! Format (inspired by sqllogictest): cases are separated by blank lines; `#` starts a
//! comment line.
//!
//! ```text
//! # an allowed query: the header line, then one line per row, cells separated by " | "
//! query regions_by_count [rowsort]
//! SELECT drinks_region, COUNT(*) AS n FROM overlap GROUP BY drinks_region
//! ----
//! drinks_region | n
//! north | 120
//!
//! # a refused query: the expected rule name (see `Rule::name`)
//! refused metric_column group_by_metric
//! SELECT drinks_monthly_spend, COUNT(*) FROM overlap GROUP BY drinks_monthly_spend
//! ```
//!
//! `rowsort` compares rows as a multiset (for queries without ORDER BY). Cells are
//! rendered by [`render_cell`]: `NULL` for nulls, floats with 4 decimals, everything
//! else with Arrow's display. SQL may span several lines; it must not contain a blank
//! line or a line that is exactly `----`.

use std::fmt;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The query is answered with exactly these rows.
    Rows {
        /// Column names, in order.
        columns: Vec<String>,
        /// Rows of rendered cells.
        rows: Vec<Vec<String>>,
        /// Compare as a multiset (sort both sides) rather than in order.
        rowsort: bool,
    },
    /// The query is refused under the rule with this name.
    Refused(String),
}

/// One corpus case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Unique name of the case.
    pub name: String,
    /// 1-based line of the case header in the corpus file.
    pub line: usize,
    /// The SQL text.
    pub sql: String,
    /// The expected outcome.
    pub expect: Expect,
}

/// A malformed corpus file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusError {
    /// 1-based line of the problem.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for CorpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corpus line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for CorpusError {}

/// Parses a corpus file. Case names must be unique.
pub fn parse(text: &str) -> Result<Vec<Case>, CorpusError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cases: Vec<Case> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            i += 1;
            continue;
        }
        let header_line = i + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        let err = |message: String| CorpusError {
            line: header_line,
            message,
        };
        enum Kind {
            Query(bool),
            Refused(String),
        }
        let (kind, name) = match words.as_slice() {
            ["query", name] => (Kind::Query(false), *name),
            ["query", name, "rowsort"] => (Kind::Query(true), *name),
            ["refused", rule, name] => (Kind::Refused((*rule).to_string()), *name),
            _ => {
                return Err(err(format!(
                    "expected `query NAME [rowsort]` or `refused RULE NAME`, found {line:?}"
                )));
            }
        };
        if cases.iter().any(|c| c.name == name) {
            return Err(err(format!("case name {name} is used twice")));
        }
        i += 1;
        let mut sql_lines = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() && lines[i].trim() != "----" {
            sql_lines.push(lines[i].trim_end());
            i += 1;
        }
        if sql_lines.is_empty() {
            return Err(err(format!("case {name} has no SQL")));
        }
        let sql = sql_lines.join("\n");
        let expect = match kind {
            Kind::Refused(rule) => {
                if i < lines.len() && lines[i].trim() == "----" {
                    return Err(err(format!(
                        "refused case {name} must not have a result block"
                    )));
                }
                Expect::Refused(rule)
            }
            Kind::Query(rowsort) => {
                if i >= lines.len() || lines[i].trim() != "----" {
                    return Err(err(format!(
                        "query case {name} needs `----`, a header line and its rows"
                    )));
                }
                i += 1;
                let Some(header) = lines.get(i).filter(|l| !l.trim().is_empty()) else {
                    return Err(err(format!(
                        "query case {name} has no header line after ----"
                    )));
                };
                let columns = split_cells(header);
                i += 1;
                let mut rows = Vec::new();
                while i < lines.len() && !lines[i].trim().is_empty() {
                    let row = split_cells(lines[i]);
                    if row.len() != columns.len() {
                        return Err(CorpusError {
                            line: i + 1,
                            message: format!(
                                "row has {} cells but the header has {}",
                                row.len(),
                                columns.len()
                            ),
                        });
                    }
                    rows.push(row);
                    i += 1;
                }
                Expect::Rows {
                    columns,
                    rows,
                    rowsort,
                }
            }
        };
        cases.push(Case {
            name: name.to_string(),
            line: header_line,
            sql,
            expect,
        });
    }
    Ok(cases)
}

fn split_cells(line: &str) -> Vec<String> {
    line.split('|').map(|c| c.trim().to_string()).collect()
}

/// Renders one cell the way the corpus writes it.
pub fn render_cell(array: &ArrayRef, row: usize) -> String {
    if array.is_null(row) {
        return "NULL".to_string();
    }
    match array.data_type() {
        DataType::Float64 => format_float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => {
            format_float(f64::from(array.as_primitive::<Float32Type>().value(row)))
        }
        _ => ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
            .map(|f| f.value(row).to_string())
            .unwrap_or_else(|e| format!("<unprintable: {e}>")),
    }
}

/// Renders a float with 4 decimals (`-0.0000` becomes `0.0000`).
pub fn format_float(v: f64) -> String {
    let s = format!("{v:.4}");
    if s == "-0.0000" {
        "0.0000".to_string()
    } else {
        s
    }
}

/// Renders result batches as rows of corpus cells.
pub fn render_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for batch in batches {
        for r in 0..batch.num_rows() {
            rows.push(batch.columns().iter().map(|c| render_cell(c, r)).collect());
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        let text = "# c\nquery a rowsort\nSELECT 1\nFROM t\n----\nx | y\n1 | NULL\n\nrefused join b\nSELECT 2\n";
        let cases = parse(text).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].sql, "SELECT 1\nFROM t");
        assert_eq!(
            cases[0].expect,
            Expect::Rows {
                columns: vec!["x".into(), "y".into()],
                rows: vec![vec!["1".into(), "NULL".into()]],
                rowsort: true
            }
        );
        assert_eq!(cases[1].expect, Expect::Refused("join".into()));
        assert_eq!(cases[1].line, 9);
    }

    #[test]
    fn reports_errors_with_lines() {
        assert_eq!(parse("bogus\n").unwrap_err().line, 1);
        assert!(parse("query a\nSELECT 1\n").is_err());
        assert!(parse("query a\nSELECT 1\n----\nx\n1 | 2\n").is_err());
        assert!(parse("refused join a\nS\n\nrefused join a\nS\n").is_err());
    }

    #[test]
    fn floats_have_four_decimals() {
        assert_eq!(format_float(2.5), "2.5000");
        assert_eq!(format_float(-0.0), "0.0000");
    }
}
