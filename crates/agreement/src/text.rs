//! Text that people read must show what it says.
//!
//! Control characters, ANSI escape sequences and Unicode bidirectional or invisible format
//! characters can make a terminal or an editor show text other than the bytes that were
//! signed (a clause moved, hidden, or reversed: "Trojan Source", CVE-2021-42574). A manifest
//! containing one is refused at parse time with its line ([`forbidden`]); text that came
//! from another party is passed through [`escape`] before it is printed.

/// Why `c` may not appear in text people read, or `None` when it may.
///
/// Allowed: printable characters, `\n` and `\t` (and `\r` directly before `\n`, checked by the
/// caller that sees whole lines).
pub fn forbidden(c: char) -> Option<&'static str> {
    match c {
        '\n' | '\t' => None,
        '\u{1b}' => Some("ESC, which starts an ANSI terminal escape sequence"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => Some("a control character"),
        '\u{80}'..='\u{9f}' => {
            Some("a C1 control character (e.g. CSI, which starts a terminal escape sequence)")
        }
        '\u{061c}' | '\u{200e}' | '\u{200f}' => Some("a bidirectional mark"),
        '\u{202a}'..='\u{202e}' => Some("a bidirectional embedding or override"),
        '\u{2066}'..='\u{2069}' => Some("a bidirectional isolate"),
        '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}' => {
            Some("an invisible character (zero-width or soft hyphen)")
        }
        '\u{2028}' | '\u{2029}' => Some("a Unicode line or paragraph separator"),
        '\u{fff9}'..='\u{fffb}' => Some("an interlinear annotation character"),
        _ => None,
    }
}

/// The first forbidden character of `s`: (byte offset, character, why).
pub fn first_forbidden(s: &str) -> Option<(usize, char, &'static str)> {
    s.char_indices()
        .find_map(|(i, c)| forbidden(c).map(|why| (i, c, why)))
}

/// `s` made safe to print: forbidden characters (and `\n`, `\t`, `\r`) become visible
/// escapes such as `\u{202e}`, a backslash becomes `\\`, and the result keeps at most
/// `max_chars` characters of `s` (then `…`). For anything that came from another party: a
/// room's refusal reason, a partner's refusal detail, audit entries.
pub fn escape(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2));
    for (n, c) in s.chars().enumerate() {
        if n == max_chars {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if forbidden(c).is_some() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Like [`escape`] but keeps line breaks (multi-line messages such as a list of problems):
/// each line is escaped on its own.
pub fn escape_lines(s: &str, max_chars: usize) -> String {
    let mut left = max_chars;
    let mut out = Vec::new();
    for line in s.lines() {
        if left == 0 {
            out.push("…".to_owned());
            break;
        }
        let n = line.chars().count();
        out.push(escape(line, left));
        left = left.saturating_sub(n);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_ansi_and_controls_are_forbidden_plain_text_is_not() {
        for c in [
            '\u{1b}', '\u{7}', '\u{0}', '\u{7f}', '\u{9b}', '\u{202e}', '\u{202a}', '\u{2066}',
            '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{feff}', '\u{2028}',
        ] {
            assert!(forbidden(c).is_some(), "{:x}", c as u32);
        }
        for s in [
            "Plan joint promotions",
            "Þórður ætlar að kaupa",
            "日本語",
            "a\tb\nc",
            "50%",
        ] {
            assert_eq!(first_forbidden(s), None, "{s}");
        }
        assert_eq!(
            first_forbidden("ok \u{202e}evil").map(|(i, c, _)| (i, c)),
            Some((3, '\u{202e}'))
        );
    }

    #[test]
    fn escape_shows_every_hidden_character_and_bounds_length() {
        assert_eq!(
            escape("a\u{1b}[31mred\u{202e}x\\y\nz", 100),
            "a\\u{1b}[31mred\\u{202e}x\\\\y\\nz"
        );
        assert_eq!(escape("abcdef", 3), "abc…");
        assert_eq!(escape("Þór", 10), "Þór");
        assert_eq!(escape_lines("one\ntw\u{1b}o", 100), "one\ntw\\u{1b}o");
    }
}
