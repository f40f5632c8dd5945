//! Identifier normalization (DESIGN §3.1, `docs/PROTOCOL.md` "Normalization").
//!
//! Two parties only find a shared customer if they feed byte-identical identifiers into the
//! hash, so every rule here is part of the protocol: changing one is a protocol version bump.
//! Errors never echo the identifier itself (only a character, a position or a digit count),
//! so they are safe to log.

use std::fmt;

/// The kind of identifier an agreement joins on (the manifest's `identifier` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentifierKind {
    /// An e-mail address: trimmed and lowercased.
    Email,
    /// A phone number: E.164 (`+` and up to 15 digits).
    Phone,
    /// An opaque customer id shared by both parties: exact bytes after trimming.
    CustomerId,
}

impl IdentifierKind {
    /// The label hashed into `H(x)` and used in manifests: `email`, `phone` or `customer_id`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Email => "email",
            IdentifierKind::Phone => "phone",
            IdentifierKind::CustomerId => "customer_id",
        }
    }

    /// Parses a manifest label (`email`, `phone`, `customer_id`); `None` for anything else.
    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            "email" => Some(IdentifierKind::Email),
            "phone" => Some(IdentifierKind::Phone),
            "customer_id" => Some(IdentifierKind::CustomerId),
            _ => None,
        }
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an identifier could not be normalized. Positions are 1-based character positions in
/// the raw value as given (before trimming).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// An e-mail address must contain exactly one `@`.
    #[error(
        "e-mail address has {found} '@' signs, expected exactly one (local-part@domain); \
         quoted local parts containing '@' are not supported"
    )]
    EmailAtSigns {
        /// How many `@` were found.
        found: usize,
    },
    /// Nothing before the `@`.
    #[error("e-mail address has an empty local part (nothing before '@')")]
    EmailEmptyLocalPart,
    /// Nothing after the `@`.
    #[error("e-mail address has an empty domain (nothing after '@')")]
    EmailEmptyDomain,
    /// Whitespace or a control character inside an e-mail address.
    #[error(
        "e-mail address contains whitespace or a control character ({character:?}) at position \
         {position}; remove it from the source data"
    )]
    EmailInvalidCharacter {
        /// The offending character.
        character: char,
        /// 1-based character position in the raw value.
        position: usize,
    },
    /// A character that is neither a digit, a leading `+`, nor an allowed separator.
    #[error(
        "phone number contains {character:?} at position {position}: only digits, a leading '+', \
         spaces, '-', '.', '/', '(' and ')' are allowed (letters and extensions are not)"
    )]
    PhoneInvalidCharacter {
        /// The offending character.
        character: char,
        /// 1-based character position in the raw value.
        position: usize,
    },
    /// A national number (no `+`/international prefix) but no `default_region` to read it in.
    #[error(
        "phone number has no country code ('+' or international prefix) and the agreement sets \
         no default_region; set default_region or write numbers as +<country code><number>"
    )]
    PhoneNeedsRegion,
    /// The `default_region` is not in the supported table.
    #[error(
        "unknown default_region {region:?}: use an ISO 3166-1 alpha-2 code from the table in \
         docs/PROTOCOL.md (e.g. \"IS\", \"GB\", \"US\")"
    )]
    PhoneUnknownRegion {
        /// The region as given.
        region: String,
    },
    /// Country calling codes never start with 0.
    #[error("phone number's country code starts with 0, which no country code does")]
    PhoneCountryCodeZero,
    /// Fewer digits than any E.164 number has.
    #[error(
        "phone number has {digits} digits including the country code; at least {min} are needed"
    )]
    PhoneTooShort {
        /// Digits found (country code included).
        digits: usize,
        /// The minimum.
        min: usize,
    },
    /// More digits than E.164 allows.
    #[error(
        "phone number has {digits} digits including the country code; E.164 allows at most {max}"
    )]
    PhoneTooLong {
        /// Digits found (country code included).
        digits: usize,
        /// The maximum (15).
        max: usize,
    },
    /// A national number of the wrong length for a region with a fixed numbering plan.
    #[error(
        "national phone number for region {region} has {digits} digits; that region's numbers \
         have {expected} (after removing the trunk prefix)"
    )]
    PhoneNationalLength {
        /// The region.
        region: &'static str,
        /// Digits found in the national significant number.
        digits: usize,
        /// The digit count that region's national numbers have.
        expected: usize,
    },
}

/// E.164: at most 15 digits, country code included.
pub const E164_MAX_DIGITS: usize = 15;
/// The shortest numbers in service (e.g. +290 XXXX, +683 XXXX) have 7 digits.
pub const E164_MIN_DIGITS: usize = 7;

/// Normalizes one raw identifier.
///
/// Returns `Ok(None)` when the value is empty after trimming (the caller skips and counts such
/// rows), `Ok(Some(normalized))` otherwise. `default_region` (ISO 3166-1 alpha-2,
/// case-insensitive) is only used for phone numbers; it is validated whenever it is given.
/// The rules are documented in `docs/PROTOCOL.md` and are idempotent:
/// `normalize(k, normalize(k, x)?, r) == normalize(k, x)`.
pub fn normalize(
    kind: IdentifierKind,
    raw: &str,
    default_region: Option<&str>,
) -> Result<Option<String>, NormalizeError> {
    match kind {
        IdentifierKind::Email => normalize_email(raw),
        IdentifierKind::Phone => normalize_phone(raw, default_region),
        IdentifierKind::CustomerId => {
            let trimmed = raw.trim();
            Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
        }
    }
}

/// 1-based character position, in `raw`, of byte offset `byte` of `raw.trim()`.
fn position_in_raw(raw: &str, byte: usize) -> usize {
    let leading = raw.len() - raw.trim_start().len();
    raw.get(..leading + byte)
        .map_or(0, |prefix| prefix.chars().count())
        + 1
}

fn normalize_email(raw: &str) -> Result<Option<String>, NormalizeError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if let Some((byte, character)) = trimmed
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(NormalizeError::EmailInvalidCharacter {
            character,
            position: position_in_raw(raw, byte),
        });
    }
    let found = trimmed.matches('@').count();
    if found != 1 {
        return Err(NormalizeError::EmailAtSigns { found });
    }
    let (local, domain) = trimmed
        .split_once('@')
        .ok_or(NormalizeError::EmailAtSigns { found })?;
    if local.is_empty() {
        return Err(NormalizeError::EmailEmptyLocalPart);
    }
    if domain.is_empty() {
        return Err(NormalizeError::EmailEmptyDomain);
    }
    Ok(Some(trimmed.to_lowercase()))
}

/// One row of the numbering-plan table.
#[derive(Debug, Clone, Copy)]
struct Region {
    /// ISO 3166-1 alpha-2.
    code: &'static str,
    /// Country calling code (E.164 prefix), digits only.
    calling_code: &'static str,
    /// National trunk prefixes removed from national numbers (empty: none in use).
    trunk: &'static [&'static str],
    /// The international access prefix dialled from this region.
    international: &'static str,
    /// Exact national significant number length where the plan is closed (NANP: 10).
    fixed_nsn_len: Option<usize>,
}

const fn r(
    code: &'static str,
    calling_code: &'static str,
    trunk: &'static [&'static str],
    international: &'static str,
) -> Region {
    Region {
        code,
        calling_code,
        trunk,
        international,
        fixed_nsn_len: None,
    }
}

const NANP: Region = Region {
    code: "US",
    calling_code: "1",
    trunk: &["1"],
    international: "011",
    fixed_nsn_len: Some(10),
};

/// The supported regions: EU/EEA, UK, NANP and other major numbering plans. Sorted by code.
const REGIONS: &[Region] = &[
    r("AD", "376", &[], "00"),
    r("AE", "971", &["0"], "00"),
    r("AR", "54", &["0"], "00"),
    r("AT", "43", &["0"], "00"),
    r("AU", "61", &["0"], "0011"),
    r("BE", "32", &["0"], "00"),
    r("BG", "359", &["0"], "00"),
    r("BR", "55", &["0"], "00"),
    Region { code: "CA", ..NANP },
    r("CH", "41", &["0"], "00"),
    r("CN", "86", &["0"], "00"),
    r("CY", "357", &[], "00"),
    r("CZ", "420", &[], "00"),
    r("DE", "49", &["0"], "00"),
    r("DK", "45", &[], "00"),
    r("EE", "372", &[], "00"),
    r("EG", "20", &["0"], "00"),
    r("ES", "34", &[], "00"),
    r("FI", "358", &["0"], "00"),
    r("FO", "298", &[], "00"),
    r("FR", "33", &["0"], "00"),
    r("GB", "44", &["0"], "00"),
    r("GI", "350", &[], "00"),
    r("GR", "30", &[], "00"),
    r("HK", "852", &[], "001"),
    r("HR", "385", &["0"], "00"),
    r("HU", "36", &["06"], "00"),
    r("ID", "62", &["0"], "001"),
    r("IE", "353", &["0"], "00"),
    r("IL", "972", &["0"], "00"),
    r("IN", "91", &["0"], "00"),
    r("IS", "354", &[], "00"),
    r("IT", "39", &[], "00"),
    r("JP", "81", &["0"], "010"),
    r("KE", "254", &["0"], "000"),
    r("KR", "82", &["0"], "001"),
    r("LI", "423", &[], "00"),
    r("LT", "370", &["0", "8"], "00"),
    r("LU", "352", &[], "00"),
    r("LV", "371", &[], "00"),
    r("MC", "377", &[], "00"),
    r("MT", "356", &[], "00"),
    r("MX", "52", &[], "00"),
    r("MY", "60", &["0"], "00"),
    r("NG", "234", &["0"], "009"),
    r("NL", "31", &["0"], "00"),
    r("NO", "47", &[], "00"),
    r("NZ", "64", &["0"], "00"),
    r("PH", "63", &["0"], "00"),
    r("PK", "92", &["0"], "00"),
    r("PL", "48", &[], "00"),
    r("PT", "351", &[], "00"),
    r("RO", "40", &["0"], "00"),
    r("RS", "381", &["0"], "00"),
    r("RU", "7", &["8"], "810"),
    r("SA", "966", &["0"], "00"),
    r("SE", "46", &["0"], "00"),
    r("SG", "65", &[], "000"),
    r("SI", "386", &["0"], "00"),
    r("SK", "421", &["0"], "00"),
    r("SM", "378", &[], "00"),
    r("TH", "66", &["0"], "001"),
    r("TR", "90", &["0"], "00"),
    r("UA", "380", &["0"], "00"),
    NANP,
    r("VN", "84", &["0"], "00"),
    r("ZA", "27", &["0"], "00"),
];

fn find_region(region: &str) -> Option<&'static Region> {
    let region = region.trim();
    REGIONS.iter().find(|r| r.code.eq_ignore_ascii_case(region))
}

/// Whether `region` (ISO 3166-1 alpha-2, case-insensitive) is in the phone numbering table.
pub fn is_supported_region(region: &str) -> bool {
    find_region(region).is_some()
}

/// The regions the phone rules know, as ISO 3166-1 alpha-2 codes in alphabetical order.
pub fn supported_regions() -> impl Iterator<Item = &'static str> {
    REGIONS.iter().map(|r| r.code)
}

/// The country calling code for a supported region, e.g. `"44"` for `"GB"`.
pub fn calling_code(region: &str) -> Option<&'static str> {
    find_region(region).map(|r| r.calling_code)
}

fn is_phone_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '.' | '/' | '(' | ')' | '\u{2010}'..='\u{2015}')
}

fn normalize_phone(
    raw: &str,
    default_region: Option<&str>,
) -> Result<Option<String>, NormalizeError> {
    let region = match default_region {
        Some(code) => {
            Some(
                find_region(code).ok_or_else(|| NormalizeError::PhoneUnknownRegion {
                    region: code.to_owned(),
                })?,
            )
        }
        None => None,
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let mut plus = false;
    let mut digits = String::with_capacity(trimmed.len());
    // "+44 (0)20 …": the "(0)" marks a trunk prefix that is not dialled from abroad.
    let mut skip_trunk_marker = false;
    for (byte, character) in trimmed.char_indices() {
        if skip_trunk_marker {
            skip_trunk_marker = character != ')';
            continue;
        }
        match character {
            '0'..='9' => digits.push(character),
            '+' if !plus && digits.is_empty() => plus = true,
            '(' if plus && trimmed[byte..].starts_with("(0)") => skip_trunk_marker = true,
            c if is_phone_separator(c) => {}
            _ => {
                return Err(NormalizeError::PhoneInvalidCharacter {
                    character,
                    position: position_in_raw(raw, byte),
                });
            }
        }
    }
    if digits.is_empty() {
        // Only separators (e.g. "+", "--"): treat as a value, not as an empty identifier.
        return Err(NormalizeError::PhoneTooShort {
            digits: 0,
            min: E164_MIN_DIGITS,
        });
    }
    let international = if plus {
        digits
    } else {
        let region = region.ok_or(NormalizeError::PhoneNeedsRegion)?;
        if let Some(rest) = digits.strip_prefix(region.international) {
            rest.to_owned()
        } else {
            let mut national = digits.as_str();
            match region.fixed_nsn_len {
                Some(len) => {
                    // A closed plan: the trunk prefix is only recognisable by the length.
                    if national.len() == len + 1
                        && let Some(rest) =
                            region.trunk.iter().find_map(|t| national.strip_prefix(t))
                    {
                        national = rest;
                    }
                    if national.len() != len {
                        return Err(NormalizeError::PhoneNationalLength {
                            region: region.code,
                            digits: national.len(),
                            expected: len,
                        });
                    }
                }
                None => {
                    if let Some(rest) = region.trunk.iter().find_map(|t| national.strip_prefix(t)) {
                        national = rest;
                    }
                }
            }
            let mut out = String::with_capacity(region.calling_code.len() + national.len());
            out.push_str(region.calling_code);
            out.push_str(national);
            out
        }
    };
    if international.starts_with('0') {
        return Err(NormalizeError::PhoneCountryCodeZero);
    }
    if international.len() < E164_MIN_DIGITS {
        return Err(NormalizeError::PhoneTooShort {
            digits: international.len(),
            min: E164_MIN_DIGITS,
        });
    }
    if international.len() > E164_MAX_DIGITS {
        return Err(NormalizeError::PhoneTooLong {
            digits: international.len(),
            max: E164_MAX_DIGITS,
        });
    }
    let mut out = String::with_capacity(international.len() + 1);
    out.push('+');
    out.push_str(&international);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn email(raw: &str) -> Result<Option<String>, NormalizeError> {
        normalize(IdentifierKind::Email, raw, None)
    }

    fn phone(raw: &str, region: Option<&str>) -> Result<Option<String>, NormalizeError> {
        normalize(IdentifierKind::Phone, raw, region)
    }

    #[test]
    fn email_table() {
        let ok: &[(&str, &str)] = &[
            ("alice@example.com", "alice@example.com"),
            ("  Alice@Example.COM \t", "alice@example.com"),
            ("first.last+tag@gmail.com", "first.last+tag@gmail.com"),
            ("F.I.R.S.T@GMAIL.com", "f.i.r.s.t@gmail.com"),
            ("JÖRG@Bücher.DE", "jörg@bücher.de"),
            ("a@b", "a@b"),
        ];
        for (raw, want) in ok {
            assert_eq!(email(raw).unwrap().as_deref(), Some(*want), "input {raw:?}");
        }
        assert_eq!(email("").unwrap(), None);
        assert_eq!(email("  \t\n").unwrap(), None);
        assert_eq!(
            email("no-at-sign.example").unwrap_err(),
            NormalizeError::EmailAtSigns { found: 0 }
        );
        assert_eq!(
            email("a@b@c").unwrap_err(),
            NormalizeError::EmailAtSigns { found: 2 }
        );
        assert_eq!(
            email("@example.com").unwrap_err(),
            NormalizeError::EmailEmptyLocalPart
        );
        assert_eq!(
            email("alice@").unwrap_err(),
            NormalizeError::EmailEmptyDomain
        );
        assert_eq!(
            email(" al ice@example.com").unwrap_err(),
            NormalizeError::EmailInvalidCharacter {
                character: ' ',
                position: 4
            }
        );
        assert_eq!(
            email("alice@exa\u{0}mple.com").unwrap_err(),
            NormalizeError::EmailInvalidCharacter {
                character: '\u{0}',
                position: 10
            }
        );
    }

    #[test]
    fn phone_table() {
        let ok: &[(&str, Option<&str>, &str)] = &[
            // Iceland: no trunk prefix, 7-digit numbers.
            ("581 2345", Some("IS"), "+3545812345"),
            ("+354 581-2345", None, "+3545812345"),
            ("00354 5812345", Some("IS"), "+3545812345"),
            // United Kingdom: trunk 0, "(0)" marker after +44.
            ("020 7946 0018", Some("GB"), "+442079460018"),
            ("+44 (0)20 7946 0018", None, "+442079460018"),
            ("(020) 7946-0018", Some("gb"), "+442079460018"),
            ("07700 900123", Some("GB"), "+447700900123"),
            // NANP: optional leading 1, 011 international prefix.
            ("(415) 555-0100", Some("US"), "+14155550100"),
            ("1 415 555 0100", Some("US"), "+14155550100"),
            ("415.555.0100", Some("CA"), "+14155550100"),
            ("011 44 20 7946 0018", Some("US"), "+442079460018"),
            ("+1-415-555-0100", Some("DE"), "+14155550100"),
            // Germany, France: trunk 0.
            ("030 123456", Some("DE"), "+4930123456"),
            ("0049 30 123456", Some("DE"), "+4930123456"),
            ("01 23 45 67 89", Some("FR"), "+33123456789"),
            // Italy keeps its leading 0.
            ("06 1234 5678", Some("IT"), "+390612345678"),
            // Hungary: trunk 06.
            ("06 1 234 5678", Some("HU"), "+3612345678"),
            // Russia: trunk 8, international 810.
            ("8 495 123-45-67", Some("RU"), "+74951234567"),
            // Australia: international 0011.
            ("0011 44 20 7946 0018", Some("AU"), "+442079460018"),
            ("0412 345 678", Some("AU"), "+61412345678"),
            // Unicode whitespace and dashes are separators.
            ("581\u{a0}2345", Some("IS"), "+3545812345"),
            ("581\u{2013}2345", Some("IS"), "+3545812345"),
        ];
        for (raw, region, want) in ok {
            assert_eq!(
                phone(raw, *region).unwrap().as_deref(),
                Some(*want),
                "input {raw:?} in {region:?}"
            );
        }
        assert_eq!(phone("   ", Some("IS")).unwrap(), None);
        assert_eq!(phone("", None).unwrap(), None);
    }

    #[test]
    fn phone_errors() {
        assert_eq!(
            phone("1-800-FLOWERS", Some("US")).unwrap_err(),
            NormalizeError::PhoneInvalidCharacter {
                character: 'F',
                position: 7
            }
        );
        assert_eq!(
            phone("+354 581 2345 x12", None).unwrap_err(),
            NormalizeError::PhoneInvalidCharacter {
                character: 'x',
                position: 15
            }
        );
        assert_eq!(
            phone("354+5812345", None).unwrap_err(),
            NormalizeError::PhoneInvalidCharacter {
                character: '+',
                position: 4
            }
        );
        assert_eq!(
            phone("5812345", None).unwrap_err(),
            NormalizeError::PhoneNeedsRegion
        );
        assert_eq!(
            phone("5812345", Some("XX")).unwrap_err(),
            NormalizeError::PhoneUnknownRegion {
                region: "XX".into()
            }
        );
        assert_eq!(
            phone("+44 20", None).unwrap_err(),
            NormalizeError::PhoneTooShort {
                digits: 4,
                min: E164_MIN_DIGITS
            }
        );
        assert_eq!(
            phone("+44 2079 4600 1812 34", None).unwrap_err(),
            NormalizeError::PhoneTooLong {
                digits: 16,
                max: 15
            }
        );
        assert_eq!(
            phone("+0 123 4567", None).unwrap_err(),
            NormalizeError::PhoneCountryCodeZero
        );
        assert_eq!(
            phone("555 0100", Some("US")).unwrap_err(),
            NormalizeError::PhoneNationalLength {
                region: "US",
                digits: 7,
                expected: 10
            }
        );
        assert_eq!(
            phone("+ - ()", None).unwrap_err(),
            NormalizeError::PhoneTooShort {
                digits: 0,
                min: E164_MIN_DIGITS
            }
        );
        // The error message names the fix and never echoes the number.
        let message = phone("+354 581 2345 x12", None).unwrap_err().to_string();
        assert!(!message.contains("581"), "{message}");
    }

    #[test]
    fn customer_id_is_exact_after_trim() {
        let id = |raw| normalize(IdentifierKind::CustomerId, raw, None).unwrap();
        assert_eq!(id("  C-00042 ").as_deref(), Some("C-00042"));
        assert_eq!(id("c-00042").as_deref(), Some("c-00042"));
        assert_eq!(id("a  b").as_deref(), Some("a  b"));
        assert_eq!(id(" \t"), None);
    }

    #[test]
    fn region_table_is_sorted_unique_and_well_formed() {
        for pair in REGIONS.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} before {}",
                pair[0].code,
                pair[1].code
            );
        }
        for region in REGIONS {
            assert_eq!(region.code.len(), 2);
            assert!(region.calling_code.bytes().all(|b| b.is_ascii_digit()));
            assert!(!region.calling_code.starts_with('0'));
            assert!(!region.international.is_empty());
            assert!(region.international.bytes().all(|b| b.is_ascii_digit()));
            assert!(
                region
                    .trunk
                    .iter()
                    .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            );
        }
        // At least the EU/EEA, the UK and NANP.
        for code in [
            "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
            "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS",
            "LI", "NO", "GB", "US", "CA",
        ] {
            assert!(is_supported_region(code), "{code}");
        }
        assert_eq!(calling_code("is"), Some("354"));
        assert_eq!(supported_regions().count(), REGIONS.len());
    }

    #[test]
    fn protocol_md_region_table_matches_the_code() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let documented: Vec<String> = doc
            .lines()
            .skip_while(|line| !line.starts_with("| region | calling code |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = REGIONS
            .iter()
            .map(|r| {
                let trunk = if r.trunk.is_empty() {
                    "—".to_owned()
                } else {
                    r.trunk.join(", ")
                };
                format!(
                    "| {} | {} | {} | {} |",
                    r.code, r.calling_code, trunk, r.international
                )
            })
            .collect();
        assert_eq!(
            documented, expected,
            "docs/PROTOCOL.md numbering-plan table differs from REGIONS"
        );
    }

    #[test]
    fn kind_labels_round_trip() {
        for kind in [
            IdentifierKind::Email,
            IdentifierKind::Phone,
            IdentifierKind::CustomerId,
        ] {
            assert_eq!(IdentifierKind::from_label(kind.as_str()), Some(kind));
        }
        assert_eq!(IdentifierKind::from_label("Email"), None);
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(raw in any::<String>(), region in prop::sample::select(vec!["IS", "GB", "US", "DE", "HU", "RU", "AU"])) {
            for kind in [IdentifierKind::Email, IdentifierKind::Phone, IdentifierKind::CustomerId] {
                if let Ok(Some(once)) = normalize(kind, &raw, Some(region)) {
                    let twice = normalize(kind, &once, Some(region));
                    prop_assert_eq!(twice, Ok(Some(once.clone())), "kind {}", kind);
                }
            }
        }

        #[test]
        fn phone_shaped_input_never_panics_and_is_idempotent(raw in "[+]?[0-9 ().-]{0,20}", region in prop::sample::select(vec!["IS", "GB", "US", "DE", "FR", "RU", "JP"])) {
            if let Ok(Some(once)) = normalize(IdentifierKind::Phone, &raw, Some(region)) {
                prop_assert!(once.starts_with('+'));
                prop_assert!(once.len() <= E164_MAX_DIGITS + 1);
                prop_assert_eq!(normalize(IdentifierKind::Phone, &once, Some(region)), Ok(Some(once.clone())));
            }
        }

        #[test]
        fn email_shaped_input_is_idempotent(raw in "[ ]{0,2}[A-Za-z0-9._+-]{1,10}@[A-Za-z0-9.-]{1,10}[ ]{0,2}") {
            let once = normalize(IdentifierKind::Email, &raw, None).unwrap().unwrap();
            prop_assert_eq!(normalize(IdentifierKind::Email, &once, None), Ok(Some(once.clone())));
        }
    }
}
