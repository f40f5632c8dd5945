use super::*;
use accord_psi::IdentifierKind;

#[test]
fn a_receipt_from_a_state_directory_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = receipt(&dir.path().join("typo"), "drinks", "a@x.org", Utc::now())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no party state at") && e.contains("--state"),
        "{e}"
    );
    // An existing state with no agreement is a real "no record".
    assert!(
        receipt(dir.path(), "drinks", "a@x.org", Utc::now())
            .unwrap()
            .agreements
            .is_empty()
    );
}

#[test]
fn html_escape_leaves_no_markup() {
    let s = html_escape("<script>alert('x')</script> & \"q\"\u{7}");
    assert!(!s.contains('<') && !s.contains('>') && !s.contains('"') && !s.contains('\''));
    assert_eq!(
        s,
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;&#x7;"
    );
}

#[test]
fn the_erasure_memory_survives_reopening_and_renewal_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let t0: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
    let t1: DateTime<Utc> = "2027-02-02T00:00:00Z".parse().unwrap();
    let mut m = ErasureMemory::open(dir.path()).unwrap();
    assert!(m.is_empty());
    m.remember_erased(
        IdentifierKind::Email,
        &["a@x.org".into(), "b@x.org".into()],
        t0,
    )
    .unwrap();
    let mut m = ErasureMemory::open(dir.path()).unwrap();
    assert_eq!(m.held_back(IdentifierKind::Email, "a@x.org"), Some(t0));
    assert_eq!(m.held_back(IdentifierKind::Email, "c@x.org"), None);
    // Same text, another kind: another tag.
    assert_eq!(m.held_back(IdentifierKind::CustomerId, "a@x.org"), None);
    assert!(m.renew(IdentifierKind::Email, "a@x.org", t1).unwrap());
    assert!(!m.renew(IdentifierKind::Email, "c@x.org", t1).unwrap());
    let m = ErasureMemory::open(dir.path()).unwrap();
    assert_eq!(m.held_back(IdentifierKind::Email, "a@x.org"), None);
    assert_eq!(m.len(), 1);
    // The log holds tags, never the identifiers.
    let log = std::fs::read_to_string(dir.path().join(MEMORY_DIR).join(MEMORY_LOG)).unwrap();
    assert!(!log.contains("x.org"), "{log}");
}

#[test]
fn a_torn_last_line_is_ignored_and_a_damaged_middle_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.jsonl");
    let t0: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
    append_line(&p, &Event::Revoked { at: t0 }).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"{\"event\":\"upl")
        .unwrap();
    assert_eq!(
        read_lines::<Event>(&p).unwrap(),
        vec![Event::Revoked { at: t0 }]
    );
    std::fs::write(
        &p,
        "garbage\n{\"event\":\"revoked\",\"at\":\"2027-01-02T00:00:00Z\"}\n",
    )
    .unwrap();
    let e = read_lines::<Event>(&p).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}
