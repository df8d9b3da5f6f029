//! Text from outside (an endpoint's error body, an SMTP reply, an Elasticsearch refusal) made
//! safe to print: it ends up in logs, in `last_error`, in an observer's paused reason and in the
//! CLI's tables, where a newline would forge a log line and an escape sequence would drive the
//! operator's terminal.

/// `text` with every control character (C0, DEL, C1) and every bidirectional-override mark
/// escaped as Rust writes it (`\n`, `\u{1b}`), so that nothing in it acts on a log or terminal
/// and Postgres `text` can hold it (no NUL).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An error's message followed by those of its sources, joined by ": " ("connection failed: error
/// connecting to server: Connection refused (os error 111)"). Clients' own messages often say
/// only what failed and leave why to the chain.
pub fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Marks that reorder how the text around them is displayed ("Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::printable;

    /// Regression (review F18): an endpoint's error body reached the logs and the CLI with its
    /// newlines and ESC sequences.
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("bad\r\nINFO forged line\u{1b}[2J\0\u{7f}\u{85}\u{9b}31m"),
            "bad\\r\\nINFO forged line\\u{1b}[2J\\u{0}\\u{7f}\\u{85}\\u{9b}31m"
        );
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("right\u{202e}txt.exe"), "right\\u{202e}txt.exe");
        assert_eq!(
            printable("plain text, accents é ü, 日本"),
            "plain text, accents é ü, 日本"
        );
    }
}
