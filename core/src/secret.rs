//! Secrets by reference. An action's URL and header values are either written in the action or
//! a reference, `{"secret": "<name>"}`, to a secret of the worker's configuration
//! (`[secrets.<name>]`): the database then holds only the name, and the worker resolves the
//! value right before the request. This module owns the reference's shape (checked on the raw
//! JSON, so a malformed one gets an error naming its field), and the rules `observer_create`
//! uses to recognise a credential written where a reference belongs (a literal
//! `Authorization` header, a Slack incoming-webhook URL, a `?token=` query parameter).

use serde::{Deserialize, Serialize};

/// A value an action sends (its URL, a header value): written out, or a reference to a secret
/// of the worker's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValueOrSecret {
    /// Stored as written, in `observer.observers`.
    Literal(String),
    /// Resolved by the worker right before the request; the database holds the name only.
    Secret(SecretRef),
}

/// `{"secret": "stripe_token"}` or, for a header, `{"secret": "stripe_token", "prefix": "Bearer "}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of a secret of the worker's `[secrets]` table (see [`is_secret_name`]).
    pub secret: String,
    /// Literal text sent before the secret's value (a header's `Bearer `); never allowed for
    /// a URL, whose whole value is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl ValueOrSecret {
    /// The value written in the action, or None for a reference.
    pub fn literal(&self) -> Option<&str> {
        match self {
            ValueOrSecret::Literal(s) => Some(s),
            ValueOrSecret::Secret(_) => None,
        }
    }

    /// The reference, or None for a value written in the action.
    pub fn reference(&self) -> Option<&SecretRef> {
        match self {
            ValueOrSecret::Literal(_) => None,
            ValueOrSecret::Secret(r) => Some(r),
        }
    }
}

impl From<&str> for ValueOrSecret {
    fn from(s: &str) -> Self {
        ValueOrSecret::Literal(s.to_string())
    }
}

/// A secret's name: 1 to 64 of `[A-Za-z0-9_-]` (it is also an environment variable suffix,
/// `FRAISEQL_OBSERVERS_SECRETS__<NAME>`). A `whsec_` value is refused by this rule too.
pub fn is_secret_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with("whsec_")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What is wrong with the JSON written where a value or a reference belongs (`field` is
/// `url` or `headers.<name>`), or Ok. Checked on the raw JSON before the action is typed, so
/// that `{"secret": 42}` is reported with its field instead of as "did not match any variant".
pub fn check_reference(field: &str, value: &serde_json::Value) -> Result<(), String> {
    let object = match value {
        serde_json::Value::String(_) => return Ok(()),
        serde_json::Value::Object(o) => o,
        other => {
            return Err(format!(
                "is {}, not a string or a secret reference",
                json_type(other)
            ))
        }
    };
    for key in object.keys() {
        if key != "secret" && key != "prefix" {
            return Err(format!("has the unknown key {key:?} (a reference has \"secret\" and, for a header, \"prefix\")"));
        }
    }
    match object.get("secret") {
        None => return Err("is an object without \"secret\"".to_string()),
        Some(serde_json::Value::String(name)) if is_secret_name(name) => {}
        Some(serde_json::Value::String(name)) if name.starts_with("whsec_") => {
            // Never quote it: it is most likely the secret itself.
            return Err("names a secret by its value (whsec_...) instead of its name".to_string());
        }
        Some(serde_json::Value::String(name)) => {
            return Err(format!(
                "names the secret {:?}, which is not a secret name",
                name.chars().take(64).collect::<String>()
            ))
        }
        Some(other) => {
            return Err(format!(
                "has a \"secret\" that is {}, not a name",
                json_type(other)
            ))
        }
    }
    match object.get("prefix") {
        None => Ok(()),
        Some(_) if field == "url" => Err(
            "has a \"prefix\", which a URL reference cannot have: the whole URL is the secret"
                .to_string(),
        ),
        Some(serde_json::Value::String(p)) if !is_scheme_prefix(p) => Err(format!(
            "has a \"prefix\" of {} characters that is not an authentication scheme; a prefix is a scheme word and its separator (\"Bearer \", \"Token \", \"token=\", at most {MAX_PREFIX} characters, no digits or underscores): the credential itself belongs in the secret",
            p.chars().count()
        )),
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(other) => Err(format!(
            "has a \"prefix\" that is {}, not a string",
            json_type(other)
        )),
    }
}

/// Longest `prefix` of a header reference.
pub const MAX_PREFIX: usize = 32;

/// Whether `prefix` is an authentication scheme and its separator (`Bearer `, `Token `,
/// `SSWS `, `token=`, `Klaviyo-API-Key `), never a credential: ASCII letters and `-`, then one
/// space, `=` or `:` (and optionally a space after `:`). Secrets are letters, digits and `_`
/// mixed; schemes are words. A prefix could otherwise store a literal credential next to the
/// reference, which `observer_create` refuses everywhere else.
pub fn is_scheme_prefix(prefix: &str) -> bool {
    let word = prefix
        .strip_suffix(": ")
        .or_else(|| prefix.strip_suffix([' ', '=', ':']))
        .unwrap_or(prefix);
    prefix.len() <= MAX_PREFIX
        && !word.is_empty()
        && word.len() < prefix.len()
        && word.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Why a header written in the action looks like a credential, or None. By name: the
/// standard credential headers (`Authorization`, `Proxy-Authorization`, `Cookie`) and names
/// that say what they carry (`X-Api-Key`, `X-Auth-Token`, `X-Client-Secret`, ...); by value: an
/// HTTP authentication scheme (`Bearer ...`, `Basic ...`) under any name.
pub fn credential_header(name: &str, value: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "authorization" | "proxy-authorization" | "cookie"
    ) {
        return Some("a header that carries credentials");
    }
    const WORDS: &[&str] = &[
        "auth",
        "token",
        "secret",
        "passw",
        "apikey",
        "api-key",
        "api_key",
        "credential",
        "session",
    ];
    if WORDS.iter().any(|w| lower.contains(w)) {
        return Some("a header whose name says it carries a credential");
    }
    let v = value.trim_start().to_ascii_lowercase();
    if ["bearer ", "basic ", "token ", "digest "]
        .iter()
        .any(|scheme| v.starts_with(scheme))
    {
        return Some("a value in an HTTP authentication scheme (Bearer, Basic, ...)");
    }
    None
}

/// Why a URL written in the action looks like a credential, or None: an incoming-webhook URL
/// of a chat service (whoever has it can post: Slack, Discord, Microsoft Teams), or a query
/// parameter named like a credential (`token`, `key`, `api_key`, `secret`, `password`, `sig`,
/// ...). User-info (`user:password@`) is refused in every literal URL by the action's own
/// validation.
pub fn credential_url(raw: &str) -> Option<&'static str> {
    let url = url::Url::parse(raw).ok()?;
    // A fully qualified name ("hooks.slack.com.") reaches the same host.
    let host = url
        .host_str()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let path = url.path();
    if host == "hooks.slack.com" || host.ends_with(".hooks.slack.com") {
        return Some("a Slack incoming-webhook URL (whoever has it can post to the channel)");
    }
    if matches!(
        host.as_str(),
        "discord.com" | "discordapp.com" | "ptb.discord.com" | "canary.discord.com"
    ) && path.starts_with("/api/webhooks/")
    {
        return Some("a Discord webhook URL (whoever has it can post to the channel)");
    }
    if host.ends_with(".webhook.office.com") {
        return Some("a Microsoft Teams incoming-webhook URL (whoever has it can post)");
    }
    let credential_param = |k: &str| {
        let k = k.to_ascii_lowercase().replace('-', "_");
        matches!(k.as_str(), "key" | "sig" | "auth" | "pwd" | "pass")
            || ["token", "secret", "passw", "apikey", "api_key", "signature"]
                .iter()
                .any(|w| k.contains(w))
    };
    if url.query_pairs().any(|(k, _)| credential_param(&k)) {
        return Some("a query parameter named like a credential (token, key, secret, ...)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Red team (issue 15): a prefix held a literal credential next to the reference.
    #[test]
    fn a_prefix_is_a_scheme_and_its_separator() {
        for ok in [
            "Bearer ",
            "Token ",
            "SSWS ",
            "token=",
            "Basic:",
            "ApiKey: ",
            "Klaviyo-API-Key ",
        ] {
            assert!(is_scheme_prefix(ok), "{ok:?}");
        }
        for bad in [
            "Bearer sk_live_4eC39HqLyjWDarjtT1zdp7dc ",
            "Bearer",
            " ",
            "sk_live_abc ",
            "abc123 ",
            "Bearer\n",
            "=",
            "Bearer  ",
            "ThisSchemeNameIsFarTooLongToBeOneX ",
        ] {
            assert!(!is_scheme_prefix(bad), "{bad:?}");
        }
        assert!(check_reference(
            "headers.Authorization",
            &json!({"secret": "s", "prefix": "Bearer sk_live_4eC39HqLyjWDarjtT1zdp7dc "})
        )
        .is_err());
    }

    /// Red team (issue 15): a trailing dot reached the same chat host past the check.
    #[test]
    fn a_fully_qualified_chat_host_is_a_credential_url() {
        assert!(credential_url("https://hooks.slack.com./services/T0/B0/x").is_some());
        assert!(credential_url("https://discord.com./api/webhooks/1/x").is_some());
    }

    #[test]
    fn references_have_one_shape() {
        assert_eq!(check_reference("url", &json!("https://a.example")), Ok(()));
        assert_eq!(check_reference("url", &json!({"secret": "hook"})), Ok(()));
        assert_eq!(
            check_reference(
                "headers.Authorization",
                &json!({"secret": "stripe", "prefix": "Bearer "})
            ),
            Ok(())
        );
        let bad = |field: &str, v: serde_json::Value| check_reference(field, &v).expect_err("bad");
        assert!(bad("url", json!({"secret": 42})).contains("a number, not a name"));
        assert!(bad("url", json!({"secret": "a b"})).contains("not a secret name"));
        assert!(bad("url", json!({})).contains("without \"secret\""));
        assert!(bad("url", json!({"secret": "x", "env": "X"})).contains("unknown key \"env\""));
        assert!(bad("url", json!({"secret": "x", "prefix": "https://"})).contains("whole URL"));
        assert!(bad("headers.A", json!({"secret": "x", "prefix": 1})).contains("not a string"));
        assert!(bad("headers.A", json!({"secret": "x", "prefix": "a\nb"}))
            .contains("not an authentication scheme"));
        assert!(bad("headers.A", json!(7)).contains("a number, not a string"));
        assert!(bad("headers.A", json!(["x"])).contains("an array"));
        // A value given where its name belongs is never echoed.
        let e = bad(
            "url",
            json!({"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
        );
        assert!(!e.contains("MfKQ"), "{e}");
    }

    #[test]
    fn serialises_as_written() {
        let r: ValueOrSecret =
            serde_json::from_value(json!({"secret": "s", "prefix": "Bearer "})).expect("ref");
        assert_eq!(r.reference().map(|r| r.secret.as_str()), Some("s"), "{r:?}");
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            json!({"secret": "s", "prefix": "Bearer "})
        );
        let l: ValueOrSecret = serde_json::from_value(json!("v")).expect("literal");
        assert_eq!(l.literal(), Some("v"));
        assert_eq!(serde_json::to_value(&l).expect("json"), json!("v"));
    }

    #[test]
    fn credential_headers_are_recognised() {
        for (name, value) in [
            ("Authorization", "Bearer x"),
            ("authorization", "anything"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Cookie", "session=1"),
            ("X-Api-Key", "k"),
            ("X-API-KEY", "k"),
            ("Api_Key", "k"),
            ("X-Auth-Token", "t"),
            ("X-Access-Token", "t"),
            ("X-Client-Secret", "s"),
            ("X-Password", "p"),
            ("X-Custom", "Bearer abc"),
            ("X-Custom", "  basic eDp5"),
        ] {
            assert!(credential_header(name, value).is_some(), "{name}: {value}");
        }
        for (name, value) in [
            ("X-Team", "billing"),
            ("Accept", "application/json"),
            ("X-Request-Source", "observers"),
            ("X-Custom", "bearer-of-news"),
        ] {
            assert_eq!(credential_header(name, value), None, "{name}: {value}");
        }
    }

    #[test]
    fn credential_urls_are_recognised() {
        for url in [
            "https://hooks.slack.com/services/T000/B000/XXXX",
            "https://hooks.slack.com/workflows/T0/A0/1/x",
            "https://discord.com/api/webhooks/1/abc",
            "https://acme.webhook.office.com/webhookb2/x",
            "https://api.example.com/hook?token=abc",
            "https://api.example.com/hook?access_token=abc",
            "https://api.example.com/hook?API-KEY=abc",
            "https://api.example.com/hook?key=abc",
            "https://api.example.com/hook?a=1&client_secret=abc",
            "https://api.example.com/hook?sig=abc",
        ] {
            assert!(credential_url(url).is_some(), "{url}");
        }
        for url in [
            "https://api.example.com/hook",
            "https://api.example.com/hook?team=billing&v=2",
            "https://discord.com/invite/x",
            "https://slack.com/api/chat.postMessage",
            "not a url",
        ] {
            assert_eq!(credential_url(url), None, "{url}");
        }
    }

    #[test]
    fn names_are_names() {
        assert!(is_secret_name("stripe_token"));
        assert!(is_secret_name("orders-v2"));
        for bad in ["", "a b", "x/y", "whsec_abc", &"x".repeat(65)] {
            assert!(!is_secret_name(bad), "{bad}");
        }
    }
}
