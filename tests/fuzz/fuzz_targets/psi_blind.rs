//! Untrusted input of the PSI core: wire batches of points and raw identifiers.
//! `blind_concatenated` must refuse or blind any byte string, and `normalize` must accept or
//! refuse any string, without panicking; accepted results must keep their documented shape.
#![no_main]

use std::sync::OnceLock;

use accord_psi::{IdentifierKind, POINT_LEN, PsiSecret, blind_concatenated, normalize};

fn secret() -> &'static PsiSecret {
    static SECRET: OnceLock<PsiSecret> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut one = [0u8; 32];
        one[0] = 7;
        PsiSecret::from_bytes(&one).expect("7 is a canonical non-zero scalar")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match blind_concatenated(secret(), data) {
        Ok(out) => assert_eq!(out.len(), data.len()),
        Err(error) => assert!(error.index <= data.len() / POINT_LEN),
    }
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let kind = match selector % 3 {
        0 => IdentifierKind::Email,
        1 => IdentifierKind::Phone,
        _ => IdentifierKind::CustomerId,
    };
    let region = match selector / 3 % 4 {
        0 => None,
        1 => Some("IS"),
        2 => Some("US"),
        _ => Some("X"),
    };
    if let Ok(Some(normalized)) = normalize(kind, &text, region) {
        assert_eq!(normalize(kind, &normalized, region), Ok(Some(normalized.clone())));
    }
});
