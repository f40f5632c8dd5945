use super::*;

pub(crate) fn manifest() -> Manifest {
    use accord_agreement::{Contribution, ManifestBuilder, PublicKey, RoomSection};
    use chrono::TimeZone as _;
    let key = |k: &str| k.parse::<PublicKey>().unwrap();
    let drinks = key("ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    // Input tests never reach a room; any valid key will do.
    let room = RoomSection {
        operator: "Test room".into(),
        public_key: drinks,
    };
    let text = ManifestBuilder::new(
        "t-1",
        "test",
        chrono::Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
        chrono::Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap(),
        room,
    )
    .min_group_size(10)
    .party(
        "drinks",
        drinks,
        1000,
        "consent",
        [
            Contribution::dimension("tier"),
            Contribution::metric("spend", 0.0, 100.0),
        ],
    )
    .party(
        "snacks",
        key("ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw="),
        1000,
        "consent",
        [Contribution::dimension("fav")],
    )
    .exact_results()
    .to_toml();
    Manifest::parse(&text).unwrap()
}

fn run(csv: &str, skip: bool) -> Result<(Vec<PreparedRow>, InputReport), PartyError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(&path, csv).unwrap();
    read(
        &path,
        &manifest(),
        "drinks",
        &InputOptions {
            id_column: None,
            skip_bad_rows: skip,
        },
    )
}

#[test]
fn every_rule_is_counted() {
    let csv = "email,consent,tier,spend\n\
                   Ana@Example.com ,true,gold,10\n\
                   ana@example.com,true,silver,20\n\
                   bob@example.com,false,gold,5\n\
                   ,true,gold,5\n\
                   not-an-email,true,gold,5\n\
                   cy@example.com,TRUE,,500\n\
                   dee@example.com,yes,gold,1\n";
    let (rows, report) = run(csv, false).unwrap();
    assert_eq!(report.rows_read, 7);
    assert_eq!(report.not_consented, 2);
    assert_eq!(report.empty_identifier, 1);
    assert_eq!(report.invalid_identifier, 1);
    assert_eq!(report.duplicates, 1);
    assert_eq!(report.clamped.get("spend"), Some(&1));
    assert_eq!(report.prepared, 2);
    assert_eq!(rows[0].identifier, "ana@example.com");
    assert_eq!(
        rows[0].values,
        vec![Value::Text(Some("gold".into())), Value::Number(Some(10.0))]
    );
    assert_eq!(
        rows[1].values,
        vec![Value::Text(None), Value::Number(Some(100.0))]
    );
}

#[test]
fn malformed_rows_stop_with_file_line_and_column_unless_skipped() {
    let csv = "email,consent,tier,spend\na@x.com,true,gold,10\nb@x.com,true,gold,lots\nc@x.com,true,gold\n";
    let err = run(csv, false).unwrap_err().to_string();
    assert!(
        err.contains("line 3") && err.contains("\"spend\"") && err.contains("lots"),
        "{err}"
    );
    let (rows, report) = run(csv, true).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(report.bad_rows_skipped, 2);
    assert_eq!(report.rows_read, 3);
}

#[test]
fn non_finite_metrics_are_refused() {
    let err = run("email,consent,tier,spend\na@x.com,true,gold,NaN\n", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a finite number"), "{err}");
}

#[test]
fn missing_columns_are_named() {
    let err = run("email,tier,spend\na@x.com,gold,1\n", false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"consent\"") && err.contains("email, tier, spend"),
        "{err}"
    );
}

#[test]
fn parquet_input_follows_the_same_rules() {
    use arrow::array::{BooleanArray, Float64Array, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.parquet");
    let batch = RecordBatch::try_from_iter(vec![
        (
            "email",
            Arc::new(StringArray::from(vec![
                Some("A@x.com"),
                Some("a@x.com"),
                None,
            ])) as _,
        ),
        (
            "consent",
            Arc::new(BooleanArray::from(vec![true, true, true])) as _,
        ),
        (
            "tier",
            Arc::new(StringArray::from(vec!["g", "s", "g"])) as _,
        ),
        (
            "spend",
            Arc::new(Float64Array::from(vec![1.0, 2.0, -3.0])) as _,
        ),
    ])
    .unwrap();
    let file = File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let (rows, report) = read(
        &path,
        &manifest(),
        "drinks",
        &InputOptions {
            id_column: None,
            skip_bad_rows: false,
        },
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(report.duplicates, 1);
    assert_eq!(report.empty_identifier, 1);
}

/// The input rules of docs/PROTOCOL.md ("Input rules"), example by example.
#[test]
fn input_rules_as_documented() {
    // BOM, CRLF, blank lines, quoting, header names trimmed, cells trimmed.
    let csv = "\u{feff}email , consent,tier,spend\r\n\
                   \"ana@example.com\",\" true \",\"gold, \"\"plus\"\"\",\" 10 \"\r\n\
                   \r\n\
                   bo@example.com,True,\"  \",\n";
    let (rows, report) = run(csv, false).unwrap();
    assert_eq!(report.rows_read, 2, "the blank line is not a row");
    assert_eq!(rows[0].identifier, "ana@example.com");
    assert_eq!(
        rows[0].values,
        vec![
            Value::Text(Some("gold, \"plus\"".into())),
            Value::Number(Some(10.0))
        ]
    );
    assert_eq!(rows[1].values, vec![Value::Text(None), Value::Number(None)]);

    // Consent: `true` in any letter case, trimmed; nothing else.
    for (cell, consents) in [
        ("true", true),
        ("TRUE", true),
        (" True ", true),
        ("yes", false),
        ("1", false),
        ("t", false),
        ("", false),
        ("true.", false),
    ] {
        let csv = format!("email,consent,tier,spend\na@x.com,{cell},g,1\n");
        let (rows, _) = run(&csv, false).unwrap();
        assert_eq!(rows.len() == 1, consents, "consent cell {cell:?}");
    }

    // Number syntax.
    for (cell, value) in [
        ("7", Some(7.0)),
        ("+7", Some(7.0)),
        ("-0", Some(0.0)),
        (".5", Some(0.5)),
        ("5.", Some(5.0)),
        ("1e1", Some(10.0)),
        ("2.5E-1", Some(0.25)),
        ("", None),
    ] {
        let csv = format!("email,consent,tier,spend\na@x.com,true,g,{cell}\n");
        let (rows, _) = run(&csv, false).unwrap();
        assert_eq!(rows[0].values[1], Value::Number(value), "number {cell:?}");
        if let Value::Number(Some(x)) = rows[0].values[1] {
            assert!(x.is_sign_positive() || x < 0.0, "-0 is stored as 0");
        }
    }
    for cell in [
        "1,5", "\"1,5\"", "$5", "0x10", "1_000", "1 000", "inf", "NaN", "1e400",
    ] {
        let csv = format!("email,consent,tier,spend\na@x.com,true,g,{cell}\n");
        assert!(run(&csv, false).is_err(), "number {cell:?} must be refused");
    }

    // Duplicates: the first row in file order wins, with its consent and its values.
    let csv = "email,consent,tier,spend\n\
                   A@x.com,false,g,1\n\
                   a@x.com,true,s,2\n\
                   b@x.com,true,g,3\n\
                   B@X.COM,true,s,4\n";
    let (rows, report) = run(csv, false).unwrap();
    assert_eq!((report.not_consented, report.duplicates), (1, 2));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].identifier, "b@x.com");
    assert_eq!(rows[0].values[0], Value::Text(Some("g".into())));

    // A skipped malformed row does not count as the first occurrence.
    let csv = "email,consent,tier,spend\na@x.com,true,g,lots\na@x.com,true,s,2\n";
    let (rows, _) = run(csv, true).unwrap();
    assert_eq!(rows[0].values[0], Value::Text(Some("s".into())));

    // Header names are case-sensitive, and a needed column may appear only once.
    let err = run("Email,consent,tier,spend\na@x.com,true,g,1\n", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no column \"email\""), "{err}");
    let err = run("email,consent,tier,tier,spend\na@x.com,true,g,s,1\n", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("appears twice (columns 3 and 4)"), "{err}");
    // Columns the agreement does not name are ignored, wherever they are.
    let (rows, _) = run("note,email,consent,tier,spend\nx,a@x.com,true,g,1\n", false).unwrap();
    assert_eq!(rows.len(), 1);
    // Not UTF-8: stops with the line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.csv");
    std::fs::write(&path, b"email,consent,tier,spend\nj\xf6rg@x.de,true,g,1\n").unwrap();
    let options = InputOptions {
        id_column: None,
        skip_bad_rows: false,
    };
    let err = read(&path, &manifest(), "drinks", &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn parquet_columns_of_types_without_one_text_form_are_refused() {
    use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let write = |id: arrow::array::ArrayRef, spend: arrow::array::ArrayRef| {
        let path = dir.path().join("in.parquet");
        let batch = RecordBatch::try_from_iter(vec![
            ("email", id),
            ("consent", Arc::new(BooleanArray::from(vec![true])) as _),
            ("tier", Arc::new(StringArray::from(vec!["g"])) as _),
            ("spend", spend),
        ])
        .unwrap();
        let file = File::create(&path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let options = InputOptions {
            id_column: None,
            skip_bad_rows: false,
        };
        read(&path, &manifest(), "drinks", &options)
    };
    let text = |s: &str| Arc::new(StringArray::from(vec![s])) as arrow::array::ArrayRef;
    let err = write(
        Arc::new(Float64Array::from(vec![1.0])),
        Arc::new(Int64Array::from(vec![1])),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"email\" is of type Float64"), "{err}");
    let err = write(text("a@x.com"), Arc::new(BooleanArray::from(vec![true])))
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"spend\" is of type Boolean"), "{err}");
    let (rows, _) = write(text("a@x.com"), Arc::new(Int64Array::from(vec![-0]))).unwrap();
    assert_eq!(rows[0].values[1], Value::Number(Some(0.0)));
    let (rows, _) = write(text("a@x.com"), text(" 2.5e1 ")).unwrap();
    assert_eq!(rows[0].values[1], Value::Number(Some(25.0)));
}
