//! Fuzz target: the manifest parser, verification, summary and signing must never panic
//! on any UTF-8 input (legal's files, and manifests the room receives from the network).
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
            // Verification of an unparseable manifest reports the same problems.
            let _ = err.to_string();
        }
    }
});
