//! Text that came from the room or the partner, made safe to show to this party's operator
//! (escaped and bounded, DESIGN: "text that came from another party is escaped").

use accord_agreement::text;
use accord_proto::refusal::WorkRefusalCode;

/// Longest message from the room shown to a person, in characters.
pub const MAX_SHOWN_MESSAGE_CHARS: usize = 2000;
/// Longest partner-supplied detail shown, in characters.
pub const MAX_SHOWN_DETAIL_CHARS: usize = 300;

/// A message the room sent (a refusal or error), escaped and bounded; line breaks kept.
pub fn room_message(message: &str) -> String {
    text::escape_lines(message, MAX_SHOWN_MESSAGE_CHARS)
}

/// A partner's reason for refusing one of this party's batches: the meaning of its code in
/// our words, then the partner's detail, escaped. A reason without a known code is shown as
/// such, escaped.
pub fn work_refusal(reason: &str) -> String {
    match WorkRefusalCode::parse(reason) {
        Some((code, "")) => {
            format!("{} [{}]", code.meaning(), code.as_str())
        }
        Some((code, detail)) => format!(
            "{} [{}]; the partner adds: \"{}\"",
            code.meaning(),
            code.as_str(),
            text::escape(detail, MAX_SHOWN_DETAIL_CHARS)
        ),
        None => format!(
            "unrecognised reason (shown escaped): \"{}\"",
            text::escape(reason, MAX_SHOWN_DETAIL_CHARS)
        ),
    }
}

/// What the owner of a refused batch does next: the likely cause for the reason's code (when
/// it has one of ours) and the recovery every refusal needs.
pub fn refusal_next_step(reason: &str) -> String {
    match WorkRefusalCode::parse(reason) {
        Some((code, _)) => format!(
            "likely cause: {}; {}",
            code.likely_cause(),
            accord_proto::refusal::RECOVERY
        ),
        None => accord_proto::refusal::RECOVERY.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_text_cannot_reach_the_terminal_raw() {
        let shown = work_refusal("over-cap: \u{1b}[2J\u{202e}gotcha");
        assert!(shown.starts_with("blinding it would exceed the agreed max_rows [over-cap]"));
        assert!(text::first_forbidden(&shown).is_none(), "{shown}");
        assert!(shown.contains("\\u{1b}[2J\\u{202e}gotcha"), "{shown}");
        let shown = work_refusal("\u{1b}]0;title\u{7}");
        assert!(shown.starts_with("unrecognised reason"), "{shown}");
        assert!(text::first_forbidden(&shown).is_none(), "{shown}");
        let shown = room_message("line one\nline \u{202e}two");
        assert_eq!(shown, "line one\nline \\u{202e}two");
    }
}
