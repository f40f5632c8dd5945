//! Reading a party's customer file (CSV or Parquet) and applying the rules of DESIGN §3
//! step 1, in this order for each row:
//!
//! 1. a malformed row (wrong column count, unparseable or non-finite metric, a dimension
//!    value over 256 bytes) stops the run with file, line and column — or, with
//!    `skip_bad_rows`, is skipped and counted;
//! 2. a row whose identifier is empty after trimming is dropped;
//! 3. a row whose identifier cannot be normalized (e.g. an e-mail without `@`) is dropped
//!    and counted, with the first few line numbers in the report;
//! 4. a row whose normalized identifier was already seen is dropped: the first row in file
//!    order wins, *including its consent* (a later "yes" never overrides an earlier "no");
//! 5. a winning row whose consent column is not `true` is dropped (never uploaded);
//! 6. metric values outside the agreement's bounds are clamped to them (counted per column).
//!
//! Consent is `true` (any letter case) or a Parquet boolean `true`; anything else — `false`,
//! empty, `yes`, `1` — is not consent.
//!
//! The file is streamed: CSV one record at a time, Parquet in record batches of
//! [`READ_BATCH_ROWS`] rows. Each prepared row goes to the caller as soon as the rules are
//! done with it ([`read_each`]); what stays in memory per customer is the duplicate rule's
//! [`DEDUP_KEY_LEN`]-byte keyed hash of the normalized identifier, never the identifier.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;

use accord_agreement::{ColumnRole, Manifest};
use accord_psi::IdentifierKind;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use crate::error::PartyError;

/// Rows of one Parquet record batch: with the one CSV record being parsed, all of the file's
/// rows the reader ever holds at once (the file is never read whole).
pub const READ_BATCH_ROWS: usize = 8192;

/// Bytes of the keyed hash the duplicate rule remembers per customer: 128 bits, so that two
/// distinct customers of one file collide with probability about n²/2¹²⁹ (< 10⁻²⁴ at 10⁸
/// rows) — far below any other failure.
pub const DEDUP_KEY_LEN: usize = 16;

/// Longest dimension value accepted, in bytes (the room refuses longer ones).
pub const MAX_TEXT_VALUE_LEN: usize = accord_proto::limits::MAX_TEXT_VALUE_LEN;

/// One agreed attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A dimension label (None = empty).
    Text(Option<String>),
    /// A metric (None = empty), already clamped.
    Number(Option<f64>),
}

/// A row that will be uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRow {
    /// The normalized identifier. Never leaves the party.
    pub identifier: String,
    /// Attribute values in the order of the agreement's `contributes` list.
    pub values: Vec<Value>,
}

/// What each rule did, for the data team's report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputReport {
    /// Data rows read (not counting the header).
    pub rows_read: u64,
    /// Malformed rows skipped (only with `skip_bad_rows`).
    pub bad_rows_skipped: u64,
    /// Rows without consent for this purpose.
    pub not_consented: u64,
    /// Rows with an empty identifier.
    pub empty_identifier: u64,
    /// Rows whose identifier could not be normalized.
    pub invalid_identifier: u64,
    /// Line numbers of the first invalid identifiers, with the reason.
    pub invalid_examples: Vec<String>,
    /// Rows dropped as duplicates of an earlier row.
    pub duplicates: u64,
    /// Metric values clamped to the agreed bounds, per column.
    pub clamped: BTreeMap<String, u64>,
    /// Rows prepared for upload.
    pub prepared: u64,
}

impl std::fmt::Display for InputReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  rows read                         {:>10}",
            self.rows_read
        )?;
        if self.bad_rows_skipped > 0 {
            writeln!(
                f,
                "  malformed rows skipped            {:>10}",
                self.bad_rows_skipped
            )?;
        }
        writeln!(
            f,
            "  without consent (not uploaded)    {:>10}",
            self.not_consented
        )?;
        writeln!(
            f,
            "  empty identifier (skipped)        {:>10}",
            self.empty_identifier
        )?;
        writeln!(
            f,
            "  invalid identifier (skipped)      {:>10}",
            self.invalid_identifier
        )?;
        for e in &self.invalid_examples {
            writeln!(f, "      e.g. {e}")?;
        }
        writeln!(
            f,
            "  duplicates (first row kept)       {:>10}",
            self.duplicates
        )?;
        for (col, n) in &self.clamped {
            writeln!(f, "  {:<34}{n:>10}", format!("{col} clamped to bounds"))?;
        }
        write!(
            f,
            "  rows to upload                    {:>10}",
            self.prepared
        )
    }
}

/// How to read the input.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// The identifier column (default: the identifier kind's name, e.g. `email`).
    pub id_column: Option<String>,
    /// Skip malformed rows instead of stopping.
    pub skip_bad_rows: bool,
}

/// The agreed columns a party reads from its file.
#[derive(Debug, Clone)]
struct Layout {
    id_column: String,
    consent_column: String,
    columns: Vec<(String, ColumnRole)>,
    kind: IdentifierKind,
    region: Option<String>,
}

impl Layout {
    fn new(manifest: &Manifest, party: &str, options: &InputOptions) -> Result<Self, PartyError> {
        let p = manifest.parties.get(party).ok_or_else(|| {
            PartyError::Invalid(format!(
                "{party:?} is not a party of agreement {} (parties: {})",
                manifest.id,
                manifest
                    .parties
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let kind = manifest.identifier;
        Ok(Self {
            id_column: options
                .id_column
                .clone()
                .unwrap_or_else(|| manifest.identifier.as_str().to_owned()),
            consent_column: p.consent_column.clone(),
            columns: p
                .contributes
                .iter()
                .map(|c| (c.column.clone(), c.role))
                .collect(),
            kind,
            region: manifest.default_region.clone(),
        })
    }
}

/// A row as text cells, before the rules.
struct RawRow<'a> {
    line: u64,
    id: Option<&'a str>,
    consent: bool,
    cells: Vec<Cell<'a>>,
}

enum Cell<'a> {
    Text(Option<&'a str>),
    Number(Option<f64>),
}

/// The normalized identifiers already seen, as keyed hashes (SHA-256 under a key drawn for
/// this read only, cut to [`DEDUP_KEY_LEN`] bytes): the duplicate rule's memory, 16 bytes of
/// key plus the hash table's slack per customer instead of the identifier itself.
struct Seen {
    key: [u8; 32],
    set: HashSet<[u8; DEDUP_KEY_LEN]>,
}

impl Seen {
    fn new() -> Result<Self, PartyError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| PartyError::Internal(format!("OS randomness: {e}")))?;
        Ok(Self {
            key,
            set: HashSet::new(),
        })
    }

    /// True the first time `normalized` is seen.
    fn insert(&mut self, normalized: &str) -> bool {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(b"accord/v2/dedup")
            .chain_update([0u8])
            .chain_update(self.key)
            .chain_update(normalized.as_bytes())
            .finalize();
        let mut tag = [0u8; DEDUP_KEY_LEN];
        tag.copy_from_slice(&digest[..DEDUP_KEY_LEN]);
        self.set.insert(tag)
    }
}

/// Where each prepared row goes as soon as the rules are done with it.
pub type RowSink<'a> = dyn FnMut(PreparedRow) -> Result<(), PartyError> + 'a;

/// Applies the rules row by row.
struct Rules<'a, 's> {
    layout: &'a Layout,
    file: String,
    skip_bad_rows: bool,
    seen: Seen,
    report: InputReport,
    sink: &'a mut RowSink<'s>,
    /// (line, normalized identifier) of winning rows without consent, when asked for.
    withdrawn: Option<Vec<(u64, String)>>,
}

impl Rules<'_, '_> {
    fn bad(&mut self, line: u64, column: &str, message: String) -> Result<(), PartyError> {
        if self.skip_bad_rows {
            self.report.bad_rows_skipped += 1;
            return Ok(());
        }
        Err(PartyError::BadInput(format!(
            "{}, line {line}, column {column:?}: {message} (fix the file, or pass --skip-bad-rows to skip such rows)",
            self.file
        )))
    }

    fn push(&mut self, row: RawRow<'_>) -> Result<(), PartyError> {
        self.report.rows_read += 1;
        let mut values = Vec::with_capacity(row.cells.len());
        let mut clamped = Vec::new();
        for ((name, role), cell) in self.layout.columns.iter().zip(row.cells) {
            match (role, cell) {
                (ColumnRole::Dimension, Cell::Text(v)) => {
                    let v = v.map(str::trim).filter(|v| !v.is_empty());
                    if let Some(v) = v
                        && v.len() > MAX_TEXT_VALUE_LEN
                    {
                        return self.bad(row.line, name, format!(
                                "a dimension value of {} bytes; at most {MAX_TEXT_VALUE_LEN} are allowed",
                                v.len()
                            ));
                    }
                    values.push(Value::Text(v.map(str::to_owned)));
                }
                (ColumnRole::Metric { min, max }, Cell::Number(v)) => {
                    let v = match v {
                        Some(x) if !x.is_finite() => {
                            return self.bad(
                                row.line,
                                name,
                                format!("the metric value {x} is not a finite number"),
                            );
                        }
                        Some(x) if x < *min || x > *max => {
                            clamped.push(name.clone());
                            Some(x.clamp(*min, *max))
                        }
                        other => other,
                    };
                    values.push(Value::Number(v));
                }
                (_, _) => {
                    return Err(PartyError::Internal(
                        "cell kind does not match the column role".into(),
                    ));
                }
            }
        }
        let normalized = match accord_psi::normalize(
            self.layout.kind,
            row.id.unwrap_or(""),
            self.layout.region.as_deref(),
        ) {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.report.empty_identifier += 1;
                return Ok(());
            }
            Err(e) => {
                self.report.invalid_identifier += 1;
                if self.report.invalid_examples.len() < 3 {
                    self.report
                        .invalid_examples
                        .push(format!("line {}: {e}", row.line));
                }
                return Ok(());
            }
        };
        if !self.seen.insert(&normalized) {
            self.report.duplicates += 1;
            return Ok(());
        }
        // Consent is judged on the row that wins: a customer recorded twice is uploaded only
        // if the first record consents (a later "yes" never overrides an earlier "no").
        if !row.consent {
            self.report.not_consented += 1;
            if let Some(w) = &mut self.withdrawn {
                w.push((row.line, normalized));
            }
            return Ok(());
        }
        for c in clamped {
            *self.report.clamped.entry(c).or_default() += 1;
        }
        self.report.prepared += 1;
        (self.sink)(PreparedRow {
            identifier: normalized,
            values,
        })
    }
}

fn parse_number(text: &str) -> Result<Option<f64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<f64>()
        .map(|x| Some(positive_zero(x)))
        .map_err(|_| {
            format!(
                "{t:?} is not a number (write digits with an optional sign, `.` decimals and \
                 exponent, e.g. 1234.5 or -1.5e3; no thousands separators or currency signs)"
            )
        })
}

/// −0 is stored as 0: the two are equal, and the signed bytes should not differ.
fn positive_zero(x: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x }
}

fn is_true(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case("true")
}

/// Reads `path` (CSV, or Parquet when the name ends in `.parquet`/`.pq`) as `party`'s data
/// for `manifest`, applying every rule, into memory. Nothing is uploaded here. The upload
/// streams instead ([`read_each`]); this is for small files and tests.
pub fn read(
    path: &Path,
    manifest: &Manifest,
    party: &str,
    options: &InputOptions,
) -> Result<(Vec<PreparedRow>, InputReport), PartyError> {
    let mut rows = Vec::new();
    let report = read_each(path, manifest, party, options, &mut |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok((rows, report))
}

/// Streams `path` through the rules of [`read`], handing each prepared row to `sink` in file
/// order as soon as it is ready; an error of `sink` stops the read. Holds at most
/// [`READ_BATCH_ROWS`] of the file's rows at once, plus the duplicate rule's
/// [`DEDUP_KEY_LEN`]-byte hash per distinct customer.
pub fn read_each(
    path: &Path,
    manifest: &Manifest,
    party: &str,
    options: &InputOptions,
    sink: &mut RowSink<'_>,
) -> Result<InputReport, PartyError> {
    read_with(path, manifest, party, options, sink, None)
}

/// Reads `path` with the same rules as [`read`] and returns the customers whose winning
/// row does *not* consent, as (line, normalized identifier): the customers who withdrew
/// consent, for `party erase --input`.
pub fn withdrawn(
    path: &Path,
    manifest: &Manifest,
    party: &str,
    options: &InputOptions,
) -> Result<Vec<(u64, String)>, PartyError> {
    let mut withdrawn = Vec::new();
    read_with(
        path,
        manifest,
        party,
        options,
        &mut |_| Ok(()),
        Some(&mut withdrawn),
    )?;
    Ok(withdrawn)
}

fn read_with(
    path: &Path,
    manifest: &Manifest,
    party: &str,
    options: &InputOptions,
    sink: &mut RowSink<'_>,
    withdrawn: Option<&mut Vec<(u64, String)>>,
) -> Result<InputReport, PartyError> {
    let layout = Layout::new(manifest, party, options)?;
    let mut rules = Rules {
        layout: &layout,
        file: path.display().to_string(),
        skip_bad_rows: options.skip_bad_rows,
        seen: Seen::new()?,
        report: InputReport::default(),
        sink,
        withdrawn: withdrawn.is_some().then(Vec::new),
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "parquet" || ext == "pq" {
        read_parquet(path, &layout, &mut rules)?;
    } else {
        read_csv(path, &layout, &mut rules)?;
    }
    if let (Some(out), Some(w)) = (withdrawn, rules.withdrawn) {
        *out = w;
    }
    Ok(rules.report)
}

fn column_index(
    headers: &[String],
    name: &str,
    path: &Path,
    what: &str,
) -> Result<usize, PartyError> {
    let mut matching = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| h.trim() == name)
        .map(|(i, _)| i);
    let first = matching.next().ok_or_else(|| {
        PartyError::BadInput(format!(
            "{}: no column {name:?} ({what}); the file has: {}",
            path.display(),
            headers.join(", ")
        ))
    })?;
    if let Some(second) = matching.next() {
        return Err(PartyError::BadInput(format!(
            "{}: the column {name:?} ({what}) appears twice (columns {} and {}): rename or \
             remove one, so it is clear which one is shared",
            path.display(),
            first + 1,
            second + 1
        )));
    }
    Ok(first)
}

/// Positions of the identifier, consent and contributed columns, or an error naming the
/// missing one and listing the file's columns.
fn locate(
    headers: &[String],
    layout: &Layout,
    path: &Path,
) -> Result<(usize, usize, Vec<usize>), PartyError> {
    let id = column_index(
        headers,
        &layout.id_column,
        path,
        "the identifier; use --id-column to name another",
    )?;
    let consent = column_index(
        headers,
        &layout.consent_column,
        path,
        "the consent column named in the agreement",
    )?;
    let columns = layout
        .columns
        .iter()
        .map(|(c, _)| {
            column_index(
                headers,
                c,
                path,
                "a column this party contributes under the agreement",
            )
        })
        .collect::<Result<_, _>>()?;
    Ok((id, consent, columns))
}

fn read_csv(path: &Path, layout: &Layout, rules: &mut Rules<'_, '_>) -> Result<(), PartyError> {
    let file = File::open(path)
        .map_err(|e| PartyError::BadInput(format!("could not open {}: {e}", path.display())))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(file);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| {
            PartyError::BadInput(format!(
                "{}: could not read the header line: {e}",
                path.display()
            ))
        })?
        .iter()
        .map(str::to_owned)
        .collect();
    let (id_idx, consent_idx, col_idx) = locate(&headers, layout, path)?;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                return Err(PartyError::BadInput(format!(
                    "{}, line {line}: the CSV is malformed: {e}",
                    path.display()
                )));
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != headers.len() {
            let message = format!(
                "the row has {} fields but the header has {}",
                record.len(),
                headers.len()
            );
            if rules.skip_bad_rows {
                rules.report.rows_read += 1;
                rules.report.bad_rows_skipped += 1;
                continue;
            }
            return Err(PartyError::BadInput(format!(
                "{}, line {line}: {message} (fix the file, or pass --skip-bad-rows to skip such rows)",
                path.display()
            )));
        }
        let mut cells = Vec::with_capacity(col_idx.len());
        let mut bad = None;
        for ((name, role), &i) in layout.columns.iter().zip(&col_idx) {
            let text = record.get(i).unwrap_or("");
            match role {
                ColumnRole::Dimension => cells.push(Cell::Text(Some(text))),
                ColumnRole::Metric { .. } => match parse_number(text) {
                    Ok(v) => cells.push(Cell::Number(v)),
                    Err(m) => {
                        bad = Some((name.clone(), m));
                        break;
                    }
                },
            }
        }
        if let Some((column, message)) = bad {
            rules.report.rows_read += 1;
            rules.bad(line, &column, message)?;
            continue;
        }
        rules.push(RawRow {
            line,
            id: record.get(id_idx),
            consent: record.get(consent_idx).is_some_and(is_true),
            cells,
        })?;
    }
    Ok(())
}

fn read_parquet(path: &Path, layout: &Layout, rules: &mut Rules<'_, '_>) -> Result<(), PartyError> {
    let file = File::open(path)
        .map_err(|e| PartyError::BadInput(format!("could not open {}: {e}", path.display())))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| {
            PartyError::BadInput(format!(
                "{}: not a readable Parquet file: {e}",
                path.display()
            ))
        })?;
    let headers: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (id_idx, consent_idx, col_idx) = locate(&headers, layout, path)?;
    let reader = builder
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| PartyError::BadInput(format!("{}: {e}", path.display())))?;
    let mut row_number = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| {
            PartyError::BadInput(format!(
                "{}: could not decode rows after row {row_number}: {e}",
                path.display()
            ))
        })?;
        let ids = text_column(&batch, id_idx, path, &headers[id_idx])?;
        let consent = consent_column(&batch, consent_idx, path, &headers[consent_idx])?;
        let mut columns = Vec::with_capacity(col_idx.len());
        for ((name, role), &i) in layout.columns.iter().zip(&col_idx) {
            columns.push(match role {
                ColumnRole::Dimension => Col::Text(text_column(&batch, i, path, name)?),
                ColumnRole::Metric { .. } => Col::Number(number_column(&batch, i, path, name)?),
            });
        }
        for r in 0..batch.num_rows() {
            row_number += 1;
            let cells = columns
                .iter()
                .map(|c| match c {
                    Col::Text(v) => Cell::Text(v[r].as_deref()),
                    Col::Number(v) => Cell::Number(v[r]),
                })
                .collect();
            rules.push(RawRow {
                line: row_number,
                id: ids[r].as_deref(),
                consent: consent[r],
                cells,
            })?;
        }
    }
    Ok(())
}

enum Col {
    Text(Vec<Option<String>>),
    Number(Vec<Option<f64>>),
}

fn text_column(
    batch: &RecordBatch,
    i: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<Option<String>>, PartyError> {
    let col = batch.column(i);
    if !is_text_type(col.data_type()) {
        return Err(PartyError::BadInput(format!(
            "{}: column {name:?} is of type {}; identifiers, dimensions and consent are read from \
             string, integer or boolean columns only (write it as a string column)",
            path.display(),
            col.data_type()
        )));
    }
    let cast = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| {
        PartyError::BadInput(format!(
            "{}: column {name:?} of type {} cannot be read as text: {e}",
            path.display(),
            col.data_type()
        ))
    })?;
    let s = cast.as_string::<i32>();
    Ok((0..s.len())
        .map(|r| (!s.is_null(r)).then(|| s.value(r).to_owned()))
        .collect())
}

fn number_column(
    batch: &RecordBatch,
    i: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<Option<f64>>, PartyError> {
    let col = batch.column(i);
    if matches!(
        col.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        let texts = text_column(batch, i, path, name)?;
        return texts
            .into_iter()
            .enumerate()
            .map(|(r, t)| match t {
                None => Ok(None),
                Some(t) => parse_number(&t).map_err(|m| {
                    PartyError::BadInput(format!(
                        "{}, row {}, column {name:?}: {m}",
                        path.display(),
                        r + 1
                    ))
                }),
            })
            .collect();
    }
    if !is_number_type(col.data_type()) {
        return Err(PartyError::BadInput(format!(
            "{}: column {name:?} is of type {}; a metric is read from an integer, floating-point, \
             decimal or string column only",
            path.display(),
            col.data_type()
        )));
    }
    let cast = arrow::compute::cast(col, &DataType::Float64).map_err(|e| {
        PartyError::BadInput(format!(
            "{}: column {name:?} of type {} is not numeric: {e}",
            path.display(),
            col.data_type()
        ))
    })?;
    let f = cast.as_primitive::<arrow::datatypes::Float64Type>();
    Ok((0..f.len())
        .map(|r| (!f.is_null(r)).then(|| positive_zero(f.value(r))))
        .collect())
}

/// Parquet types read as text (docs/PROTOCOL.md, "Input rules"): strings (also
/// dictionary-encoded), integers (decimal digits, `-` for negatives) and booleans (`true`,
/// `false`). Floats, dates, binary and the rest are refused: their text form is a choice of
/// the library that wrote or reads the file, and the other party could not reproduce it.
fn is_text_type(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, v) => is_text_type(v),
        t => {
            matches!(
                t,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
            ) || t.is_integer()
        }
    }
}

/// Parquet types read as a metric: integers, floats, decimals, or strings in the number syntax.
fn is_number_type(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(_, v) => is_number_type(v),
        t => {
            t.is_integer()
                || t.is_floating()
                || matches!(
                    t,
                    DataType::Decimal32(..)
                        | DataType::Decimal64(..)
                        | DataType::Decimal128(..)
                        | DataType::Decimal256(..)
                )
        }
    }
}

fn consent_column(
    batch: &RecordBatch,
    i: usize,
    path: &Path,
    name: &str,
) -> Result<Vec<bool>, PartyError> {
    let col = batch.column(i);
    if col.data_type() == &DataType::Boolean {
        let b = col.as_boolean();
        return Ok((0..b.len()).map(|r| !b.is_null(r) && b.value(r)).collect());
    }
    Ok(text_column(batch, i, path, name)?
        .into_iter()
        .map(|t| t.is_some_and(|t| is_true(&t)))
        .collect())
}

#[cfg(test)]
#[path = "input_tests.rs"]
pub(crate) mod tests;
