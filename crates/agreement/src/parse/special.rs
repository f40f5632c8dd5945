//! Special categories of personal data (GDPR Art. 9) a column name suggests.

/// Column-name keywords that reveal a special category. A keyword matches a whole
/// `_`-separated word of the column name, or its beginning when it ends with `*`.
const SPECIAL_KEYWORDS: &[(&str, &[&str])] = &[
    (
        "health",
        &[
            "health*",
            "medic*",
            "diagnos*",
            "disease*",
            "illness*",
            "sick*",
            "prescription*",
            "pregnan*",
            "disabilit*",
            "disabled",
            "allerg*",
            "diabet*",
            "mental",
            "therapy",
            "hospital*",
            "patient*",
            "bmi",
            "hiv",
            "cancer*",
            "covid*",
            "vaccin*",
            "genetic*",
            "dna",
            "genome*",
        ],
    ),
    (
        "religion",
        &[
            "religio*",
            "faith*",
            "church*",
            "mosque*",
            "synagogue*",
            "worship*",
            "denomination*",
        ],
    ),
    ("ethnicity", &["ethnic*", "race", "racial*"]),
    (
        "politics",
        &[
            "politic*",
            "vote",
            "voter*",
            "voting",
            "partisan*",
            "ideolog*",
        ],
    ),
    (
        "sexual_orientation",
        &[
            "sexual*",
            "orientation",
            "lgbt*",
            "gay",
            "lesbian*",
            "bisexual*",
            "homosexual*",
            "heterosexual*",
        ],
    ),
    (
        "biometrics",
        &[
            "biometric*",
            "fingerprint*",
            "face",
            "facial*",
            "retina*",
            "iris",
            "voiceprint*",
            "faceprint*",
        ],
    ),
    ("union_membership", &["union*", "tradeunion*"]),
];

/// The special categories a column name suggests (empty when none).
pub(crate) fn detect_special(column: &str) -> Vec<&'static str> {
    let words: Vec<&str> = column.split('_').filter(|w| !w.is_empty()).collect();
    let mut out = Vec::new();
    for (kind, keywords) in SPECIAL_KEYWORDS {
        let hit = keywords.iter().any(|kw| match kw.strip_suffix('*') {
            Some(stem) => words.iter().any(|w| w.starts_with(stem)),
            None => words.contains(kw),
        });
        if hit {
            out.push(*kind);
        }
    }
    out
}
