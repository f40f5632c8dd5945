//! Fuzz target: the manifest parser, verification, summary and signing must never panic
//! on any UTF-8 input (legal's files, and manifests the room receives from the network),
//! and every parse error must say where: each problem names a line of the text, except a
//! required top-level key that is missing (there is no line to point at; the message says
//! which key), and each says what is wrong and how to fix it.
#![no_main]

use accord_agreement::{Manifest, SecretKey, SummaryFormat};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text) {
        Ok(manifest) => {
            // A parsed manifest must encode, summarize, verify and sign without panicking.
            let _ = manifest.fingerprint();
            for now in [manifest.valid_from, manifest.valid_until] {
                let _ = accord_agreement::summary(&manifest, now, SummaryFormat::Markdown);
                let _ = accord_agreement::verify(text, now);
            }
            let key = SecretKey::from_seed(&[7; 32]);
            for party in manifest.parties.keys() {
                let _ = accord_agreement::sign_text(text, party, &key);
            }
        }
        Err(err) => {
            assert!(!err.problems.is_empty(), "a parse error with no problem");
            // Lines are 1-based; the last line may be the empty one after a final newline.
            let last_line = text.split('\n').count().max(1);
            let shown = err.to_string();
            for p in &err.problems {
                match p.line {
                    Some(line) => {
                        assert!(
                            (1..=last_line).contains(&line),
                            "problem {p:?} names line {line} of a {last_line}-line text"
                        );
                        assert!(
                            shown.contains(&format!("line {line}")),
                            "the error text does not show line {line}: {shown}"
                        );
                    }
                    None => assert!(
                        p.message.contains("is missing") && !p.key.contains('.'),
                        "a problem without a line that is not a missing top-level key: {p:?}"
                    ),
                }
                assert!(!p.key.is_empty(), "a problem naming no key: {p:?}");
                assert!(!p.message.is_empty(), "a problem saying nothing: {p:?}");
                assert!(!p.fix.is_empty(), "a problem without a fix: {p:?}");
            }
        }
    }
});
