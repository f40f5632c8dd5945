//! The protocol's one encoding of a string inside anything Accord signs or hashes
//! (`docs/PROTOCOL.md`, notation; `docs/AGREEMENTS.md`, canonical bytes):
//! `str(s) = u32be(len(s)) ‖ UTF-8 bytes`. Every crate writes strings through these two
//! functions, so there is one implementation of it.

/// The 4-byte big-endian byte length of `s`. Every string that reaches a signed or hashed
/// layout is bounded far below 4 GiB by the protocol's limits; a longer one saturates at
/// `u32::MAX`, which can never match an honest signer's bytes.
pub fn str_len(s: &str) -> [u8; 4] {
    u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes()
}

/// `str(s)`: the length, then the bytes.
pub fn str(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + s.len());
    out.extend_from_slice(&str_len(s));
    out.extend_from_slice(s.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_is_its_four_byte_length_then_its_bytes() {
        assert_eq!(str(""), vec![0, 0, 0, 0]);
        assert_eq!(str("ab"), vec![0, 0, 0, 2, b'a', b'b']);
        assert_eq!(
            str("é"),
            vec![0, 0, 0, 2, 0xc3, 0xa9],
            "bytes, not characters"
        );
        assert_eq!(str_len(&"x".repeat(300)), [0, 0, 1, 44]);
    }
}
