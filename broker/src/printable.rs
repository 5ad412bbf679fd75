//! Stored text as a terminal may show it. Names, reasons and comments in the trail and the database come
//! from tokens, policies and people: printed raw, a newline forges a line of `broker audit list`, an ANSI
//! escape rewrites the screen, a bidi override (U+202E) shows text in an order it is not stored in, and a
//! zero-width character hides a difference. Every line the CLI prints from stored text goes through here.
//!
//! The escapes are Rust's (`\n`, `\u{1b}`), and a backslash is doubled, so an escape printed is never
//! confused with the same characters stored.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is shown escaped: C0, DEL and C1 controls, and the format characters that are invisible
/// or reorder text (bidi marks, embeddings, overrides and isolates; zero-width characters; line and
/// paragraph separators; tags; variation selectors; fillers that render as nothing).
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// `s` with every [`hidden`] character and the backslash escaped; borrowed when nothing needs it.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || hidden(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// A value of a `key=value` field: [`text`], and quoted (`"..."`, with `\"`) when it is empty or holds
/// whitespace, `"` or `=`, so that it cannot pass for more fields.
pub fn field(s: &str) -> Cow<'_, str> {
    let escaped = text(s);
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=')
    {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 2);
    out.push('"');
    for c in escaped.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Cow::Owned(out)
}

/// Text of several lines (a report): each line through [`text`], the line breaks kept.
pub fn lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || (c != '\n' && hidden(c))) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&text(line));
    }
    Cow::Owned(out)
}

/// JSON text (as serde writes it) with every [`hidden`] character as a `\uXXXX` escape: the same JSON
/// value, safe on a terminal. serde escapes C0 controls but leaves DEL, C1 and the format characters raw;
/// outside strings JSON holds only ASCII punctuation, so each of them is inside a string and may be escaped.
pub fn json(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 12);
    let mut units = [0_u16; 2];
    for c in s.chars() {
        if hidden(c) {
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if hidden(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_bidi_and_invisible_characters_are_escaped() {
        assert_eq!(text("agent-1"), "agent-1");
        assert!(matches!(text("agent-1"), Cow::Borrowed(_)));
        assert_eq!(text("a\nb"), "a\\nb");
        assert_eq!(text("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(text("x\u{7f}\u{9b}y"), "x\\u{7f}\\u{9b}y");
        assert_eq!(text("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(
            text("a\u{200b}b\u{2066}c\u{2069}\u{feff}"),
            "a\\u{200b}b\\u{2066}c\\u{2069}\\u{feff}"
        );
        assert_eq!(text("tag\u{e0041}"), "tag\\u{e0041}");
        assert_eq!(text("line\u{2028}sep"), "line\\u{2028}sep");
        // A stored backslash is doubled, so it never reads as an escape.
        assert_eq!(text("a\\nb"), "a\\\\nb");
        // Printable text of any script stays as it is.
        assert_eq!(text("Zoë 支払い مرحبا"), "Zoë 支払い مرحبا");
    }

    #[test]
    fn a_field_cannot_pass_for_more_fields() {
        assert_eq!(field("alice"), "alice");
        assert_eq!(field("alice tool=x"), "\"alice tool=x\"");
        assert_eq!(field("a\"b"), "\"a\\\"b\"");
        assert_eq!(field(""), "\"\"");
        assert_eq!(field("a\u{a0}b"), "\"a\u{a0}b\"");
        assert_eq!(field("a\nb"), "a\\nb");
    }

    #[test]
    fn lines_keep_their_breaks_and_escape_the_rest() {
        assert_eq!(lines("one\ntwo"), "one\ntwo");
        assert_eq!(lines("one\u{1b}[2J\ntwo\r"), "one\\u{1b}[2J\ntwo\\r");
    }

    #[test]
    fn json_stays_the_same_value() {
        let value = serde_json::json!({"tool": "a\nb\u{1b}\u{7f}\u{9b}\u{202e}\u{e0041}"});
        let raw = serde_json::to_string(&value).unwrap();
        assert!(raw.contains('\u{202e}'), "serde leaves it raw: {raw}");
        let safe = json(&raw);
        assert!(!safe.chars().any(hidden), "{safe}");
        assert!(safe.contains("\\u202e"), "{safe}");
        assert!(safe.contains("\\udb40\\udc41"), "{safe}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            value
        );
    }

    proptest! {
        #[test]
        fn escaped_text_holds_no_hidden_character(s in prop_oneof![any::<String>(), "[a-z\\\\ \\x00-\\x{a0}\\x{2000}-\\x{2070}]*"]) {
            let t = text(&s);
            prop_assert!(!t.chars().any(hidden));
            prop_assert!(!t.contains('\n'));
            prop_assert!(!lines(&s).chars().any(|c| c != '\n' && hidden(c)));
        }

        #[test]
        fn escaped_json_parses_to_the_same_value(s in any::<String>()) {
            let raw = serde_json::to_string(&serde_json::json!({ "s": s })).unwrap();
            let safe = json(&raw);
            prop_assert!(!safe.chars().any(hidden));
            let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
            prop_assert_eq!(back, serde_json::json!({ "s": s }));
        }
    }
}
