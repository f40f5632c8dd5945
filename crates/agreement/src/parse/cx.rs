//! The walker's context: line numbers, the problems found so far, and typed reads of TOML
//! values that record a problem (with its line and a fix) instead of failing.

use std::ops::Range;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone as _, Utc};
use toml::de::{DeArray, DeTable, DeValue};

use super::{MAX_NAME, Value};
use crate::PublicKey;
use crate::manifest::Problem;

pub(super) fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= MAX_NAME
}

pub(super) fn is_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.'))
        && s.len() <= 128
}

pub(super) struct Cx<'t> {
    pub(super) line_starts: Vec<usize>,
    pub(super) problems: Vec<Problem>,
    _text: &'t str,
}

impl<'t> Cx<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Cx {
            line_starts,
            problems: Vec::new(),
            _text: text,
        }
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    pub(super) fn at(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: String,
        fix: String,
    ) {
        let line = span.map(|s| self.line(s.start));
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message,
            fix,
        });
    }

    pub(super) fn problem(
        &mut self,
        v: &Value<'_>,
        key: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.at(Some(v.span()), key, message.into(), fix.into());
    }

    /// Reports every key of `table` not in `allowed`.
    pub(super) fn deny_unknown(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for (k, _) in table.iter() {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) {
                let key = join(path, name);
                self.at(
                    Some(k.span()),
                    &key,
                    format!("unknown key {name:?}"),
                    format!(
                        "remove it or correct its spelling; allowed here: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// The value of `key` in `table`; reports it missing when `required`.
    pub(super) fn get<'a, 'i>(
        &mut self,
        table: &'a DeTable<'i>,
        table_span: Option<Range<usize>>,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'a Value<'i>> {
        let found = table.iter().find(|(k, _)| {
            let k: &str = k.get_ref();
            k == key
        });
        match found {
            Some((_, v)) => Some(v),
            None => {
                if required {
                    let full = join(path, key);
                    self.at(
                        table_span,
                        &full,
                        format!("required key {key:?} is missing"),
                        format!("add `{key} = …` (see docs/AGREEMENTS.md)"),
                    );
                }
                None
            }
        }
    }

    pub(super) fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let found = v.get_ref().type_str();
        self.problem(
            v,
            key,
            format!("expected {expected}, found {found}"),
            format!("write {key} as {expected}"),
        );
    }

    pub(super) fn string<'a>(&mut self, v: &'a Value<'_>, key: &str) -> Option<&'a str> {
        match v.get_ref() {
            DeValue::String(s) => {
                // The raw text was checked line by line; this catches escapes such as
                // "\u202e" or "\u001b" that decode to a hidden character.
                if let Some((_, c, why)) = crate::text::first_forbidden(s) {
                    self.problem(
                        v,
                        key,
                        format!(
                            "{key} contains U+{:04X}, {why}: people reading the agreement would not see what was signed",
                            c as u32
                        ),
                        "remove the escape sequence that produces it and write the text in plain characters",
                    );
                    return None;
                }
                Some(s.as_ref())
            }
            _ => {
                self.wrong_type(v, key, "a string in quotes");
                None
            }
        }
    }

    pub(super) fn integer(&mut self, v: &Value<'_>, key: &str) -> Option<i128> {
        match v.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.problem(
                        v,
                        key,
                        "the number is too large",
                        "use a smaller whole number",
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(v, key, "a whole number");
                None
            }
        }
    }

    pub(super) fn unsigned<T>(&mut self, v: &Value<'_>, key: &str, min: T, what: &str) -> Option<T>
    where
        T: TryFrom<i128> + Copy + PartialOrd + std::fmt::Display,
    {
        let n = self.integer(v, key)?;
        match T::try_from(n) {
            Ok(n) if n >= min => Some(n),
            _ => {
                self.problem(
                    v,
                    key,
                    format!("{n} is out of range: {what}"),
                    format!("use a whole number of at least {min}"),
                );
                None
            }
        }
    }

    pub(super) fn number(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.wrong_type(v, key, "a number");
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() => Some(n),
            _ => {
                self.problem(
                    v,
                    key,
                    "the number is not finite (nan, inf or out of range)",
                    "use an ordinary finite number",
                );
                None
            }
        }
    }

    pub(super) fn time(&mut self, v: &Value<'_>, key: &str) -> Option<DateTime<Utc>> {
        let DeValue::Datetime(dt) = v.get_ref() else {
            self.wrong_type(
                v,
                key,
                "a date and time such as 2027-01-01T00:00:00Z (no quotes)",
            );
            return None;
        };
        let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
            self.problem(
                v,
                key,
                "a date and time with its UTC offset is needed (a local date or time is ambiguous)",
                format!(
                    "write it like 2027-01-01T00:00:00Z, e.g. {key} = {}T00:00:00Z",
                    dt.date
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "2027-01-01".into())
                ),
            );
            return None;
        };
        let converted = (|| {
            let d = NaiveDate::from_ymd_opt(
                i32::from(date.year),
                u32::from(date.month),
                u32::from(date.day),
            )?;
            let t = NaiveTime::from_hms_nano_opt(
                u32::from(time.hour),
                u32::from(time.minute),
                u32::from(time.second.unwrap_or(0)),
                time.nanosecond.unwrap_or(0),
            )?;
            let minutes = match offset {
                toml::value::Offset::Z => 0,
                toml::value::Offset::Custom { minutes } => i32::from(minutes),
            };
            let tz = FixedOffset::east_opt(minutes * 60)?;
            let local = tz.from_local_datetime(&d.and_time(t)).single()?;
            Some(local.with_timezone(&Utc))
        })();
        if converted.is_none() {
            self.problem(
                v,
                key,
                "not a valid date and time",
                "write a real date and time such as 2027-01-01T00:00:00Z",
            );
        }
        converted
    }

    pub(super) fn table<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, key, "a table");
                None
            }
        }
    }

    pub(super) fn array<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str) -> Option<&'a DeArray<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(v, key, "a list in [ ]");
                None
            }
        }
    }

    pub(super) fn name(&mut self, v: &Value<'_>, key: &str, what: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if is_name(s) {
            Some(s.to_owned())
        } else {
            self.problem(
                v,
                key,
                format!("{what} {s:?} is not a valid name"),
                format!("use lowercase letters, digits and _, starting with a letter, at most {MAX_NAME} characters (e.g. monthly_spend)"),
            );
            None
        }
    }

    pub(super) fn public_key(&mut self, v: &Value<'_>, key: &str) -> Option<PublicKey> {
        let s = self.string(v, key)?;
        match s.parse::<PublicKey>() {
            Ok(k) => Some(k),
            Err(e) => {
                self.problem(
                    v,
                    key,
                    e.to_string(),
                    "paste the line `accord keygen` printed, e.g. \"ed25519:…\" (44 base64 characters)",
                );
                None
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn span_of(v: &Value<'_>) -> Option<Range<usize>> {
    Some(v.span())
}

/// Where a TOML error that carries no position (the parser's recursion limit, found by
/// fuzzing) starts: the first line at which the text, cut after that line, already fails
/// with the same message. Found by bisection over line ends (a handful of parses), so every
/// syntax error still names a line.
pub(super) fn spanless_error_line(text: &str, message: &str) -> Option<Range<usize>> {
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let fails = |end: usize| {
        let (_, errors) = DeTable::parse_recoverable(&text[..end]);
        errors
            .iter()
            .any(|e| e.span().is_none() && e.message() == message)
    };
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    if !fails(ends[hi]) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(ends[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let start = if lo == 0 { 0 } else { ends[lo - 1] + 1 };
    Some(start..start)
}
