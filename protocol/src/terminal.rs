//! Text from devices made safe to print on a terminal: control characters
//! (escape sequences, carriage returns, backspaces, C1 controls) and
//! bidirectional overrides are shown as visible `\u{..}` escapes instead of
//! being obeyed, so a message or a topic cannot retitle the terminal, erase
//! lines or fake output.

use std::borrow::Cow;

/// Whether `c` would change what a terminal shows rather than show itself:
/// C0 and C1 controls, DEL, and the Unicode bidirectional controls (which
/// can make text read in another order than it is stored).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) && !keep(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A multi-line text (a message body): newlines and tabs are kept, every
/// other control character is escaped.
pub fn text(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

/// A one-line field (a topic, a client id, a name, a label): every control
/// character is escaped, newlines and tabs included, so the field cannot
/// pose as a line or a column of its own.
pub fn field(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        let title = "\u{1b}]0;pwned\u{7}hello";
        assert_eq!(text(title), "\\u{1b}]0;pwned\\u{7}hello");
        assert_eq!(
            text("fake\r\u{1b}[2Kline\u{8}"),
            "fake\\u{d}\\u{1b}[2Kline\\u{8}"
        );
        assert_eq!(text("c1 \u{9b}31m"), "c1 \\u{9b}31m");
        assert_eq!(text("rtl \u{202e}gnp.exe"), "rtl \\u{202e}gnp.exe");
        assert_eq!(text("del\u{7f}"), "del\\u{7f}");
    }

    #[test]
    fn bodies_keep_newlines_and_tabs_fields_do_not() {
        assert_eq!(text("Dinner\n\tis ready"), "Dinner\n\tis ready");
        assert_eq!(field("a\nb\tc"), "a\\u{a}b\\u{9}c");
    }

    #[test]
    fn clean_text_is_borrowed_unchanged() {
        for s in ["", "Ada's robot", "Grand-mère 👵", "hearth/v1/dev/x/tele"] {
            assert!(matches!(text(s), Cow::Borrowed(t) if t == s));
            assert!(matches!(field(s), Cow::Borrowed(t) if t == s));
        }
    }

    proptest! {
        #[test]
        fn nothing_a_terminal_obeys_survives(s in any::<String>()) {
            let f = field(&s);
            prop_assert!(!f.chars().any(is_unsafe));
            let t = text(&s);
            prop_assert!(!t.chars().any(|c| is_unsafe(c) && c != '\n' && c != '\t'));
            // Nothing is lost: clean text round-trips.
            if !s.chars().any(is_unsafe) {
                prop_assert_eq!(f.as_ref(), s.as_str());
            }
        }
    }
}
