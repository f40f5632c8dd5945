//! The sealing join against a reference: the in-memory join the room used before (kept here
//! as the oracle), over the same Parquet files, with and without spilling.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::columns::{column_fixed, fixed_array, take_rows, to32};
use accord_engine::Role;
use arrow::array::{FixedSizeBinaryArray, Float64Array, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

type Result<T> = crate::error::Result<T>;

/// `rows` (a party's tokenized rows: `token`, `handle`, attributes) with every token once:
/// the first row holding a token, in row order, wins. Returns the rows kept and how many
/// were dropped.
fn distinct_tokens(rows: &RecordBatch) -> Result<(RecordBatch, u64)> {
    let tokens = column_fixed(rows, "token")?;
    let mut seen = HashSet::with_capacity(tokens.len());
    let keep: Vec<u32> = (0..tokens.len())
        .filter(|&i| seen.insert(to32(tokens.value(i))))
        .map(|i| i as u32)
        .collect();
    let dropped = (rows.num_rows() - keep.len()) as u64;
    Ok((take_rows(rows, &keep)?, dropped))
}

/// The matched-rows snapshot of two parties' rows (each with distinct tokens): one row per
/// row of `b` whose token `a` also holds, in `b`'s row order, with the columns
/// `<a>_handle`, `<b>_handle`, then `a`'s attributes and `b`'s, each named `<party>_<column>`.
/// No token leaves the join.
fn join(
    a: &PartyColumns,
    rows_a: &RecordBatch,
    b: &PartyColumns,
    rows_b: &RecordBatch,
) -> Result<RecordBatch> {
    let tok_a = column_fixed(rows_a, "token")?;
    let mut index: HashMap<[u8; 32], u32> = HashMap::with_capacity(tok_a.len());
    for i in 0..tok_a.len() {
        index.entry(to32(tok_a.value(i))).or_insert(i as u32);
    }
    let tok_b = column_fixed(rows_b, "token")?;
    let mut take_a = Vec::new();
    let mut take_b = Vec::new();
    for j in 0..tok_b.len() {
        if let Some(&i) = index.get(&to32(tok_b.value(j))) {
            take_a.push(i);
            take_b.push(j as u32);
        }
    }
    let ra = take_rows(rows_a, &take_a)?;
    let rb = take_rows(rows_b, &take_b)?;
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (party, rows) in [(a, &ra), (b, &rb)] {
        let handle = rows.column(rows.schema().index_of("handle")?).clone();
        fields.push(Field::new(
            format!("{}_handle", party.party),
            handle.data_type().clone(),
            false,
        ));
        columns.push(handle);
    }
    for (party, rows) in [(a, &ra), (b, &rb)] {
        for (f, (name, _)) in party.attribute_fields(true).into_iter().zip(&party.columns) {
            columns.push(rows.column(rows.schema().index_of(name)?).clone());
            fields.push(f);
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The snapshot's columns for [`drinks`] and [`snacks`], in order.
const SNAPSHOT_COLUMNS: [&str; 4] = [
    "drinks_handle",
    "snacks_handle",
    "drinks_tier",
    "snacks_spend",
];

/// The snapshot's column names, in order.
fn column_names(rb: &RecordBatch) -> Vec<String> {
    rb.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// The type of a token column.
const TOKEN: DataType = DataType::FixedSizeBinary(32);

fn token(n: u8) -> [u8; 32] {
    [n; 32]
}

fn handle(n: u8) -> [u8; 16] {
    [n; 16]
}

fn rows(tokens: &[u8], handles: &[u8], attr: ArrayRef, attr_name: &str) -> RecordBatch {
    let t: Vec<u8> = tokens.iter().flat_map(|&n| token(n)).collect();
    let h: Vec<u8> = handles.iter().flat_map(|&n| handle(n)).collect();
    let schema = Schema::new(vec![
        Field::new("token", TOKEN, false),
        Field::new("handle", DataType::FixedSizeBinary(16), false),
        Field::new(attr_name, attr.data_type().clone(), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            fixed_array(&t, 32).unwrap(),
            fixed_array(&h, 16).unwrap(),
            attr,
        ],
    )
    .unwrap()
}

fn handles_of(rb: &RecordBatch, column: &str) -> Vec<u8> {
    let c = rb
        .column(rb.schema().index_of(column).unwrap())
        .as_any()
        .downcast_ref::<FixedSizeBinaryArray>()
        .unwrap();
    (0..c.len()).map(|i| c.value(i)[0]).collect()
}

fn drinks() -> PartyColumns {
    PartyColumns {
        party: "drinks".into(),
        columns: vec![("tier".into(), Role::Dimension)],
        max_rows: 100,
    }
}

fn snacks() -> PartyColumns {
    PartyColumns {
        party: "snacks".into(),
        columns: vec![(
            "spend".into(),
            Role::Metric {
                min: 0.0,
                max: 10.0,
            },
        )],
        max_rows: 100,
    }
}

#[test]
fn a_repeated_token_is_kept_once_the_first_wins() {
    let tier = Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"]));
    let r = rows(&[1, 2, 1, 3, 2], &[10, 20, 30, 40, 50], tier, "tier");
    let (kept, dropped) = distinct_tokens(&r).unwrap();
    assert_eq!(dropped, 2);
    assert_eq!(handles_of(&kept, "handle"), vec![10, 20, 40]);
    // Without repeats nothing changes.
    let (same, none) = distinct_tokens(&kept).unwrap();
    assert_eq!(none, 0);
    assert_eq!(same, kept);
}

#[test]
fn the_join_keeps_only_matched_rows_pairs_them_and_drops_the_tokens() {
    let a = rows(
        &[1, 2, 3, 4],
        &[11, 12, 13, 14],
        Arc::new(StringArray::from(vec!["gold", "silver", "bronze", "tin"])),
        "tier",
    );
    let b = rows(
        &[9, 3, 1, 7],
        &[21, 22, 23, 24],
        Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
        "spend",
    );
    let s = join(&drinks(), &a, &snacks(), &b).unwrap();
    assert_eq!(column_names(&s), SNAPSHOT_COLUMNS);
    // In b's row order: token 3 (b row 1) then token 1 (b row 2).
    assert_eq!(handles_of(&s, "drinks_handle"), vec![13, 11]);
    assert_eq!(handles_of(&s, "snacks_handle"), vec![22, 23]);
    let tier = s.column(2).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(
        tier.iter().collect::<Vec<_>>(),
        vec![Some("bronze"), Some("gold")]
    );
    let spend = s.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(spend.values().to_vec(), vec![2.0, 3.0]);
    assert!(
        s.schema().fields().iter().all(|f| f.data_type() != &TOKEN),
        "a token column left the join"
    );
    // Nothing in common: no rows, same columns.
    let none = rows(
        &[5],
        &[25],
        Arc::new(Float64Array::from(vec![5.0])),
        "spend",
    );
    let empty = join(&drinks(), &a, &snacks(), &none).unwrap();
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.num_columns(), 4);
}

/// Writes `batches` as a party's `rows/<n>.parquet` files under `dir`; returns the side.
fn side(dir: &Path, party: PartyColumns, batches: &[RecordBatch]) -> Side {
    let rows = dir.join(&party.party);
    std::fs::create_dir_all(&rows).unwrap();
    let mut files = Vec::new();
    for (n, rb) in batches.iter().enumerate() {
        let path = rows.join(format!("{n:010}.parquet"));
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), rb.schema(), None).unwrap();
        w.write(rb).unwrap();
        w.close().unwrap();
        files.push((n as u64, path));
    }
    Side { party, files }
}

fn read_back(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let schema = arrow::array::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// The snapshot's rows as comparable text, sorted (the join's row order is the tokens').
fn sorted_rows(rb: &RecordBatch) -> Vec<String> {
    let mut out: Vec<String> = (0..rb.num_rows())
        .map(|i| {
            rb.columns()
                .iter()
                .map(|c| arrow::util::display::array_value_to_string(c, i).unwrap())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

fn seal(a: &Side, b: &Side, dir: &Path, memory: usize) -> (RecordBatch, Joined) {
    let out = dir.join("snapshot.parquet");
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let joined = seal_join(a, b, &out, &scratch, memory).unwrap();
    (read_back(&out), joined)
}

#[test]
fn the_sealing_join_keeps_the_first_row_of_a_token_pairs_matches_and_drops_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // drinks holds token 1 twice (batch 0 row 0 wins over batch 1 row 0) and token 2 twice
    // in one batch (row 1 wins over row 2).
    let a = side(
        dir.path(),
        drinks(),
        &[
            rows(
                &[1, 2, 2, 4],
                &[11, 12, 13, 14],
                Arc::new(StringArray::from(vec!["gold", "silver", "late", "tin"])),
                "tier",
            ),
            rows(
                &[1, 3],
                &[15, 16],
                Arc::new(StringArray::from(vec!["later", "bronze"])),
                "tier",
            ),
        ],
    );
    let b = side(
        dir.path(),
        snacks(),
        &[rows(
            &[9, 3, 1, 2],
            &[21, 22, 23, 24],
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            "spend",
        )],
    );
    let (s, joined) = seal(&a, &b, dir.path(), 64 << 20);
    assert_eq!(
        joined,
        Joined {
            matched: 3,
            duplicates: 2,
            spilled_bytes: 0
        }
    );
    assert_eq!(column_names(&s), SNAPSHOT_COLUMNS);
    // In token order: 1, 2, 3.
    assert_eq!(handles_of(&s, "drinks_handle"), vec![11, 12, 16]);
    assert_eq!(handles_of(&s, "snacks_handle"), vec![23, 24, 22]);
    let tier = s.column(2).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(
        tier.iter().collect::<Vec<_>>(),
        vec![Some("gold"), Some("silver"), Some("bronze")]
    );
    let spend = s.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(spend.values().to_vec(), vec![3.0, 4.0, 2.0]);
    assert!(
        s.schema().fields().iter().all(|f| f.data_type() != &TOKEN),
        "a token column left the join"
    );
    // Nothing in common: an empty snapshot with the same columns.
    let none = side(
        &dir.path().join("none"),
        snacks(),
        &[rows(
            &[5],
            &[25],
            Arc::new(Float64Array::from(vec![5.0])),
            "spend",
        )],
    );
    let (empty, joined) = seal(&a, &none, &dir.path().join("none"), 64 << 20);
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.num_columns(), 4);
    assert_eq!(joined.matched, 0);
}

/// A deterministic generator of party rows: `n` rows over `n / 2` distinct tokens (so about
/// a third of a party's rows repeat a token), split into batches of `batch`.
fn generated(seed: u64, n: usize, batch: usize, number: bool) -> Vec<RecordBatch> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let mut out = Vec::new();
    let mut left = n;
    let mut serial = 0u32;
    while left > 0 {
        let m = left.min(batch);
        left -= m;
        let mut t = Vec::with_capacity(m * 32);
        let mut h = Vec::with_capacity(m * 16);
        let mut texts = Vec::with_capacity(m);
        let mut numbers = Vec::with_capacity(m);
        for _ in 0..m {
            let token = next() % (n as u64 / 2).max(1);
            let mut tk = [0u8; 32];
            tk[..8].copy_from_slice(&token.to_le_bytes());
            t.extend_from_slice(&tk);
            serial += 1;
            let mut hd = [0u8; 16];
            hd[..4].copy_from_slice(&serial.to_le_bytes());
            hd[4..12].copy_from_slice(&seed.to_le_bytes());
            h.extend_from_slice(&hd);
            let v = next();
            texts.push((v % 7 != 0).then(|| format!("t{}", v % 50)));
            numbers.push((v % 5 != 0).then_some((v % 1000) as f64 / 100.0));
        }
        let attr: ArrayRef = if number {
            Arc::new(Float64Array::from(numbers))
        } else {
            Arc::new(StringArray::from(texts))
        };
        let name = if number { "spend" } else { "tier" };
        let schema = Schema::new(vec![
            Field::new("token", TOKEN, false),
            Field::new("handle", DataType::FixedSizeBinary(16), false),
            Field::new(name, attr.data_type().clone(), true),
        ]);
        out.push(
            RecordBatch::try_new(
                Arc::new(schema),
                vec![
                    fixed_array(&t, 32).unwrap(),
                    fixed_array(&h, 16).unwrap(),
                    attr,
                ],
            )
            .unwrap(),
        );
    }
    out
}

/// The reference: the old in-memory join over the same batches.
fn reference(a: &[RecordBatch], b: &[RecordBatch]) -> (RecordBatch, u64) {
    let ra = arrow::compute::concat_batches(&a[0].schema(), a).unwrap();
    let rb = arrow::compute::concat_batches(&b[0].schema(), b).unwrap();
    let (da, dup_a) = distinct_tokens(&ra).unwrap();
    let (db, dup_b) = distinct_tokens(&rb).unwrap();
    (join(&drinks(), &da, &snacks(), &db).unwrap(), dup_a + dup_b)
}

#[test]
fn the_sealing_join_equals_the_in_memory_reference_on_many_batches_with_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let ba = generated(1, 5_000, 700, false);
    let bb = generated(2, 4_000, 900, true);
    let a = side(dir.path(), drinks(), &ba);
    let b = side(dir.path(), snacks(), &bb);
    let (s, joined) = seal(&a, &b, dir.path(), 64 << 20);
    let (want, duplicates) = reference(&ba, &bb);
    assert!(want.num_rows() > 100, "the test data must overlap");
    assert!(duplicates > 1000, "the test data must repeat tokens");
    assert_eq!(joined.duplicates, duplicates);
    assert_eq!(joined.matched, want.num_rows() as u64);
    assert_eq!(sorted_rows(&s), sorted_rows(&want));
}

/// The bound that keeps sealing off the heap: with a memory pool far smaller than either
/// party's rows, the join spills to the scratch directory and still equals the reference.
#[test]
fn a_sealing_join_larger_than_its_memory_spills_and_equals_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    // 400 000 rows per party: about 40 MB of tokens, handles and attributes each.
    let ba = generated(3, 400_000, 8_192, false);
    let bb = generated(4, 400_000, 8_192, true);
    let a = side(dir.path(), drinks(), &ba);
    let b = side(dir.path(), snacks(), &bb);
    let memory = 32 << 20;
    let (s, joined) = seal(&a, &b, dir.path(), memory);
    let (want, duplicates) = reference(&ba, &bb);
    assert!(
        joined.spilled_bytes > 0,
        "a join over more than its memory must spill (it kept everything in memory?)"
    );
    assert_eq!(joined.duplicates, duplicates);
    assert_eq!(sorted_rows(&s), sorted_rows(&want));
}
