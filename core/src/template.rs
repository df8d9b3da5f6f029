//! Templates of the `slack` and `email` actions and of a shaped `webhook` (its URL, body and
//! header values), in MiniJinja: Jinja2 syntax, no file system, no network, no code execution.
//! They are checked at `observer_create` and rendered by the worker over the job's event.
//!
//! A webhook's URL template renders with [`Escape::Url`] (every interpolated value
//! percent-encoded), its `body` is a JSON value whose strings are templates ([`render_json`]: a
//! string that is one `{{ expression }}` keeps the value's JSON type), so the body is JSON
//! whatever the values.
//!
//! The context is the delivered document (`type`, `timestamp`, `data`) with the fields of `data`
//! also at the top level when it is an object, so `{{ new.status }}` reads the new row and
//! `{{ data.new.status }}` works too. A missing key or a NULL prints as the empty string, and
//! `{{ old.status }}` on an INSERT (no old row) is empty rather than an error.
//!
//! Rendering is bounded: a template gets a fixed amount of fuel (instructions; a loop over a
//! huge array stops with an error instead of running away), `range()` at most [`MAX_RANGE`]
//! items, and its output a maximum size checked while it is written (rendering stops at the
//! first byte past it, so a template cannot build gigabytes before being refused). MiniJinja
//! caps one string repetition (`"x" * n`) at 100 MB, a constant it does not let us lower: such a
//! value is allocated once, then refused at its first write.

use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::value::Value;
use minijinja::{Environment, UndefinedBehavior};

/// Instructions one rendering may execute.
const FUEL: u64 = 100_000;

/// Most items of a `range()` (MiniJinja allows 100,000).
pub const MAX_RANGE: usize = 10_000;

/// How interpolated values are escaped (the template's own text never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As they are (e-mail subject and body).
    None,
    /// Slack's control characters `&`, `<`, `>` as `&amp;`, `&lt;`, `&gt;`, as Slack requires of
    /// message text, so a value cannot inject a mention or a link. `{{ x | safe }}` opts out.
    Slack,
    /// Percent-encoded (UTF-8, upper-case hex): every byte but RFC 3986's unreserved characters
    /// (`A-Z a-z 0-9 - . _ ~`), which is right for a path segment and for a query component
    /// alike: a value cannot write `/`, `?`, `#`, `&`, `=`, `%`, `\` or `@`, so it cannot add a
    /// path segment or a query parameter. There is no opting out (`| safe` is ignored).
    Url,
}

/// A template that could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl From<minijinja::Error> for TemplateError {
    fn from(e: minijinja::Error) -> Self {
        let mut text = e.kind().to_string();
        if let Some(detail) = e.detail() {
            let _ = write!(text, ": {detail}");
        }
        if let Some(line) = e.line() {
            let _ = write!(text, " (line {line})");
        }
        TemplateError(text)
    }
}

fn environment(escape: Escape) -> &'static Environment<'static> {
    static PLAIN: OnceLock<Environment<'static>> = OnceLock::new();
    static SLACK: OnceLock<Environment<'static>> = OnceLock::new();
    static URL: OnceLock<Environment<'static>> = OnceLock::new();
    let cell = match escape {
        Escape::None => &PLAIN,
        Escape::Slack => &SLACK,
        Escape::Url => &URL,
    };
    cell.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.add_function("range", range);
        env.set_formatter(move |out, _state, value| {
            if value.is_none() || value.is_undefined() {
                return Ok(());
            }
            let owned;
            let text = match value.as_str() {
                Some(s) => s,
                None => {
                    owned = value.to_string();
                    &owned
                }
            };
            // Written straight to the capped output, never copied whole first.
            let written = match escape {
                Escape::Slack if !value.is_safe() => write_slack_escaped(out, text),
                Escape::Url => write_url_encoded(out, text),
                _ => out.write_str(text),
            };
            written.map_err(|_| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "cannot write output")
            })
        });
        env
    })
}

/// MiniJinja's `range()` with at most [`MAX_RANGE`] items.
fn range(lower: i64, upper: Option<i64>, step: Option<i64>) -> Result<Value, minijinja::Error> {
    let (start, end) = match upper {
        Some(upper) => (lower, upper),
        None => (0, lower),
    };
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "cannot create range with step of 0",
        ));
    }
    let span = if step > 0 {
        end.saturating_sub(start)
    } else {
        start.saturating_sub(end)
    };
    let len = if span <= 0 {
        0
    } else {
        (span - 1) / step.saturating_abs() + 1
    };
    if len > MAX_RANGE as i64 {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("range has {len} items, more than the {MAX_RANGE} allowed"),
        ));
    }
    Ok(Value::from(
        (0..len).map(|i| start + i * step).collect::<Vec<i64>>(),
    ))
}

/// [`slack_escape`] written piece by piece into `out`, at most 8 KiB at a time, so that a huge
/// value is refused by the capped output after its first pieces, not after a scan of it all.
fn write_slack_escaped(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    const PIECE: usize = 8192;
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(PIECE);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        // The escaped characters are ASCII: a byte position is a character boundary.
        match rest.as_bytes()[..end]
            .iter()
            .position(|b| matches!(b, b'&' | b'<' | b'>'))
        {
            Some(at) => {
                out.write_str(&rest[..at])?;
                out.write_str(match rest.as_bytes()[at] {
                    b'&' => "&amp;",
                    b'<' => "&lt;",
                    _ => "&gt;",
                })?;
                rest = &rest[at + 1..];
            }
            None => {
                out.write_str(&rest[..end])?;
                rest = &rest[end..];
            }
        }
    }
    Ok(())
}

/// RFC 3986 `unreserved`: the bytes a percent-encoded value keeps as they are.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// [`percent_encode`] written into `out` at most 8 KiB at a time (a huge value is refused by the
/// capped output after its first pieces).
fn write_url_encoded(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    const PIECE: usize = 8192;
    let mut piece = String::with_capacity(text.len().min(PIECE) + 3);
    for b in text.bytes() {
        if is_unreserved(b) {
            piece.push(char::from(b));
        } else {
            write!(piece, "%{b:02X}")?;
        }
        if piece.len() >= PIECE {
            out.write_str(&piece)?;
            piece.clear();
        }
    }
    out.write_str(&piece)
}

/// `text` percent-encoded as [`Escape::Url`] writes interpolated values.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Writing to a String cannot fail.
    let _ = write_url_encoded(&mut out, text);
    out
}

/// `&`, `<` and `>` as Slack's message format requires.
pub fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Check that `source` compiles (at `observer_create`).
pub fn check(source: &str) -> Result<(), TemplateError> {
    environment(Escape::None).template_from_str(source)?;
    Ok(())
}

/// The source of `text` when it is exactly one expression, `{{ new.amount }}` (whitespace
/// control marks allowed: `{{- x -}}`), or None (text with several parts, or none).
pub fn sole_expression(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.strip_prefix('-').unwrap_or(inner);
    let inner = inner.strip_suffix('-').unwrap_or(inner);
    let nested = ["{{", "}}", "{%", "%}", "{#", "#}"];
    if inner.trim().is_empty() || nested.iter().any(|d| inner.contains(d)) {
        return None;
    }
    Some(inner.trim())
}

/// Check that the expression `source` compiles (at `observer_create`).
pub fn check_expression(source: &str) -> Result<(), TemplateError> {
    environment(Escape::None).compile_expression(source)?;
    Ok(())
}

/// Every string of a JSON value with its path (`body.order.id`, `body.items[0]`), in order.
pub fn json_strings<'a>(value: &'a serde_json::Value, root: &str) -> Vec<(String, &'a str)> {
    fn walk<'a>(v: &'a serde_json::Value, path: String, out: &mut Vec<(String, &'a str)>) {
        match v {
            serde_json::Value::String(s) => out.push((path, s)),
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, format!("{path}[{i}]"), out);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    walk(x, format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, root.to_string(), &mut out);
    out
}

/// Check every string of a JSON template (`root` names it in errors): a sole expression must
/// compile as one, any other string as a template. Errors carry the string's path.
pub fn check_json(value: &serde_json::Value, root: &str) -> Result<(), (String, TemplateError)> {
    for (path, source) in json_strings(value, root) {
        let checked = match sole_expression(source) {
            Some(expression) => check_expression(expression),
            None => check(source),
        };
        checked.map_err(|e| (path, e))?;
    }
    Ok(())
}

/// Render a JSON template over `ctx`: keys, numbers, booleans and nulls as written; a string
/// that is one `{{ expression }}` becomes the expression's value with its JSON type (a missing
/// key is `null`); any other string is rendered as text. The result serialises to at most
/// `max_bytes` (each string is given what is left of that budget while it renders). Errors carry
/// the path of the string that failed (`root` for the whole).
pub fn render_json(
    value: &serde_json::Value,
    root: &str,
    ctx: &Value,
    max_bytes: usize,
) -> Result<serde_json::Value, (String, TemplateError)> {
    let mut budget = max_bytes;
    let rendered = render_json_at(value, root.to_string(), ctx, &mut budget)?;
    let size = serde_json::to_vec(&rendered)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max_bytes {
        return Err((
            root.to_string(),
            TemplateError(format!(
                "rendered JSON is {size} bytes, more than the {max_bytes} allowed"
            )),
        ));
    }
    Ok(rendered)
}

fn render_json_at(
    value: &serde_json::Value,
    path: String,
    ctx: &Value,
    budget: &mut usize,
) -> Result<serde_json::Value, (String, TemplateError)> {
    use serde_json::Value as J;
    match value {
        J::String(source) => {
            let (rendered, used) = match sole_expression(source) {
                Some(expression) => evaluate(expression, ctx, *budget),
                None => render(source, ctx, Escape::None, *budget).map(|s| {
                    let used = s.len();
                    (J::String(s), used)
                }),
            }
            .map_err(|e| (path, e))?;
            *budget = budget.saturating_sub(used);
            Ok(rendered)
        }
        J::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| render_json_at(x, format!("{path}[{i}]"), ctx, budget))
            .collect::<Result<Vec<_>, _>>()
            .map(J::Array),
        J::Object(fields) => fields
            .iter()
            .map(|(k, x)| {
                Ok((
                    k.clone(),
                    render_json_at(x, format!("{path}.{k}"), ctx, budget)?,
                ))
            })
            .collect::<Result<serde_json::Map<_, _>, _>>()
            .map(J::Object),
        other => Ok(other.clone()),
    }
}

/// The value of `expression` over `ctx` as JSON, and its size; refused past `max_bytes` of JSON
/// text (written through the capped output, so a huge value stops at the cap).
fn evaluate(
    expression: &str,
    ctx: &Value,
    max_bytes: usize,
) -> Result<(serde_json::Value, usize), TemplateError> {
    let over = || {
        TemplateError(format!(
            "rendered value is more than the {max_bytes} allowed bytes (rendering stopped there)"
        ))
    };
    let value = environment(Escape::None)
        .compile_expression(expression)?
        .eval(ctx.clone())?;
    if value.as_str().is_some_and(|s| s.len() > max_bytes) {
        return Err(over());
    }
    let mut out = Capped {
        buf: Vec::new(),
        max: max_bytes,
        over: false,
    };
    match serde_json::to_writer(&mut out, &value) {
        Ok(()) => {}
        Err(_) if out.over => return Err(over()),
        Err(e) => return Err(TemplateError(format!("the value is not JSON: {e}"))),
    }
    let used = out.buf.len();
    serde_json::from_slice(&out.buf)
        .map(|json| (json, used))
        .map_err(|e| TemplateError(format!("the value is not JSON: {e}")))
}

/// The context templates see for a delivered document (see the module documentation).
pub fn context(document: &serde_json::Value) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(serde_json::Value::Object(data)) = document.get("data") {
        for (k, v) in data {
            map.insert(k.clone(), v.clone());
        }
    }
    if let serde_json::Value::Object(top) = document {
        for (k, v) in top {
            map.insert(k.clone(), v.clone());
        }
    }
    Value::from(minijinja::value::Serde(serde_json::Value::Object(map)))
}

/// Render `source` over `ctx`; the output is at most `max_bytes` long.
pub fn render(
    source: &str,
    ctx: &Value,
    escape: Escape,
    max_bytes: usize,
) -> Result<String, TemplateError> {
    let template = environment(escape).template_from_str(source)?;
    let mut out = Capped {
        buf: Vec::new(),
        max: max_bytes,
        over: false,
    };
    match template.render_captured_to(ctx.clone(), &mut out) {
        Ok(_) => {}
        Err(_) if out.over => {
            return Err(TemplateError(format!(
                "rendered text is more than the {max_bytes} allowed bytes (rendering stopped there)"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    // Only whole strings were written.
    String::from_utf8(out.buf).map_err(|_| TemplateError("rendered text is not UTF-8".into()))
}

/// The output of one rendering, refusing any write that would take it past `max` bytes.
struct Capped {
    buf: Vec<u8>,
    max: usize,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            self.over = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::json!({
            "type": "order_shipped",
            "timestamp": "2026-11-22T10:00:00Z",
            "data": {"event_id": 7, "op": "INSERT", "table": "public.orders", "old": null,
                     "new": {"id": 1, "customer": "<!channel> & co", "total": 42.5, "tags": ["a", "b"]}}
        })
    }

    #[test]
    fn renders_fields_of_the_event_at_the_top_level_and_under_data() {
        let ctx = context(&doc());
        let out = render(
            "Order {{ new.id }} ({{ data.new.total }}) by {{ new.customer }}: {{ op }} on {{ table }}; {{ type }}",
            &ctx,
            Escape::None,
            1000,
        )
        .expect("renders");
        assert_eq!(
            out,
            "Order 1 (42.5) by <!channel> & co: INSERT on public.orders; order_shipped"
        );
    }

    #[test]
    fn missing_and_null_values_print_as_nothing() {
        let ctx = context(&doc());
        let out = render(
            "[{{ old.status }}][{{ new.nope }}][{{ old }}]",
            &ctx,
            Escape::None,
            100,
        )
        .expect("lenient");
        assert_eq!(out, "[][][]");
    }

    #[test]
    fn slack_escaping_applies_to_values_not_to_the_template() {
        let ctx = context(&doc());
        let out = render(
            "<https://x.test/o/{{ new.id }}|order> {{ new.customer }} {{ new.customer | safe }}",
            &ctx,
            Escape::Slack,
            1000,
        )
        .expect("renders");
        assert_eq!(
            out,
            "<https://x.test/o/1|order> &lt;!channel&gt; &amp; co <!channel> & co"
        );
    }

    #[test]
    fn syntax_errors_are_reported_with_their_line() {
        let e = check("Hello\n{{ new.id ").expect_err("unclosed");
        let ctx = context(&doc());
        assert_eq!(
            render("{{ new.tags | tojson }}", &ctx, Escape::None, 100).expect("tojson"),
            r#"["a", "b"]"#
        );
        assert!(e.0.contains("line 2"), "{e}");
        assert!(check("{% for t in new.tags %}{{ t }}{% endfor %}").is_ok());
    }

    #[test]
    fn rendering_is_bounded() {
        let ctx = context(&doc());
        let e = render(
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
            &ctx,
            Escape::None,
            usize::MAX,
        )
        .expect_err("out of fuel");
        assert!(e.0.contains("fuel"), "{e}");
        let e = render("{{ new.customer }}", &ctx, Escape::None, 3).expect_err("too long");
        assert!(e.0.contains("more than the 3 allowed"), "{e}");
    }

    /// Regression (review F15): the output was measured only after rendering, so a template
    /// could build gigabytes (15,000 repetitions of 100 MB) before being refused.
    #[test]
    fn output_is_bounded_while_rendering() {
        let ctx = context(&doc());
        let started = std::time::Instant::now();
        let e = render(
            r#"{% for i in range(15000) %}{{ "x" * 100000000 }}{% endfor %}"#,
            &ctx,
            Escape::Slack,
            40_000,
        )
        .expect_err("too long");
        // The range itself is over the limit; within it, the first repetition stops the render.
        assert!(e.0.contains("range has 15000 items"), "{e}");
        let e = render(
            r#"{% for i in range(10000) %}{{ "x" * 100000000 }}{% endfor %}"#,
            &ctx,
            Escape::Slack,
            40_000,
        )
        .expect_err("too long");
        assert!(e.0.contains("more than the 40000 allowed bytes"), "{e}");
        let e = render(
            r#"{% for i in range(10000) %}{{ "<" * 20 }}{% endfor %}"#,
            &ctx,
            Escape::Slack,
            1_000,
        )
        .expect_err("too long once escaped");
        assert!(e.0.contains("more than the 1000 allowed bytes"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            render("{% for i in range(3) %}{{ i }}{% endfor %}|{{ range(5, 0, -2) | join(',') }}|{{ range(0) | length }}", &ctx, Escape::None, 100)
                .expect("small ranges"),
            "012|5,3,1|0"
        );
        assert_eq!(
            render("{{ new.customer }}", &ctx, Escape::Slack, 25).expect("exactly at the cap"),
            "&lt;!channel&gt; &amp; co"
        );
    }

    #[test]
    fn url_escaping_encodes_every_value_and_cannot_be_opted_out_of() {
        let ctx = context(&serde_json::json!({"data": {"new": {"p": "a/b?c#d&e=f g%é"}}}));
        assert_eq!(
            render(
                "/x/{{ new.p }}?q={{ new.p | safe }}",
                &ctx,
                Escape::Url,
                1000
            )
            .expect("url"),
            "/x/a%2Fb%3Fc%23d%26e%3Df%20g%25%C3%A9?q=a%2Fb%3Fc%23d%26e%3Df%20g%25%C3%A9"
        );
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
        let e = render("{{ new.p }}", &ctx, Escape::Url, 10).expect_err("capped once encoded");
        assert!(e.0.contains("more than the 10 allowed"), "{e}");
    }

    #[test]
    fn json_templates_keep_the_types_of_sole_expressions() {
        assert_eq!(sole_expression("{{ new.id }}"), Some("new.id"));
        assert_eq!(sole_expression("{{- new.id -}}"), Some("new.id"));
        assert_eq!(sole_expression(" {{ new.id }}"), None);
        assert_eq!(sole_expression("{{ a }}{{ b }}"), None);
        assert_eq!(sole_expression("{{ }}"), None);
        let ctx = context(&doc());
        let out = render_json(
            &serde_json::json!({"id": "{{ new.id }}", "tags": "{{ new.tags }}", "t": "#{{ new.id }}", "k": [false]}),
            "body",
            &ctx,
            1000,
        )
        .expect("renders");
        assert_eq!(
            out,
            serde_json::json!({"id": 1, "tags": ["a", "b"], "t": "#1", "k": [false]})
        );
        let (path, e) = render_json(
            &serde_json::json!({"a": ["{{ new.customer }}"]}),
            "body",
            &ctx,
            10,
        )
        .expect_err("over");
        assert_eq!(path, "body.a[0]");
        assert!(e.0.contains("more than the 10 allowed"), "{e}");
        let (path, _) = check_json(&serde_json::json!({"a": {"b": "{{ x + }}"}}), "body")
            .expect_err("bad expression");
        assert_eq!(path, "body.a.b");
    }
}
