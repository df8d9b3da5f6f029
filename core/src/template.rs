//! Templates of the `slack` and `email` actions (MiniJinja: Jinja2 syntax, no file system, no
//! network, no code execution). They are checked at `observer_create` and rendered by the worker
//! over the job's event.
//!
//! The context is the delivered document (`type`, `timestamp`, `data`) with the fields of `data`
//! also at the top level when it is an object, so `{{ new.status }}` reads the new row and
//! `{{ data.new.status }}` works too. A missing key or a NULL prints as the empty string, and
//! `{{ old.status }}` on an INSERT (no old row) is empty rather than an error.
//!
//! Rendering is bounded: a template gets a fixed amount of fuel (instructions; a loop over a
//! huge array stops with an error instead of running away) and its output a maximum size.

use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::value::Value;
use minijinja::{Environment, UndefinedBehavior};

/// Instructions one rendering may execute.
const FUEL: u64 = 100_000;

/// How interpolated values are escaped (the template's own text never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As they are (e-mail subject and body).
    None,
    /// Slack's control characters `&`, `<`, `>` as `&amp;`, `&lt;`, `&gt;`, as Slack requires of
    /// message text, so a value cannot inject a mention or a link. `{{ x | safe }}` opts out.
    Slack,
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
    let cell = match escape {
        Escape::None => &PLAIN,
        Escape::Slack => &SLACK,
    };
    cell.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.set_formatter(move |out, _state, value| {
            if value.is_none() || value.is_undefined() {
                return Ok(());
            }
            let text = match value.as_str() {
                Some(s) => s.to_string(),
                None => value.to_string(),
            };
            let text = if escape == Escape::Slack && !value.is_safe() {
                slack_escape(&text)
            } else {
                text
            };
            out.write_str(&text).map_err(|_| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "cannot write output")
            })
        });
        env
    })
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
    let out = environment(escape)
        .template_from_str(source)?
        .render(ctx.clone())?;
    if out.len() > max_bytes {
        return Err(TemplateError(format!(
            "rendered text is {} bytes, more than the {max_bytes} allowed",
            out.len()
        )));
    }
    Ok(out)
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
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &ctx,
            Escape::None,
            usize::MAX,
        )
        .expect_err("out of fuel");
        assert!(e.0.contains("fuel"), "{e}");
        let e = render("{{ new.customer }}", &ctx, Escape::None, 3).expect_err("too long");
        assert!(e.0.contains("more than the 3 allowed"), "{e}");
    }
}
