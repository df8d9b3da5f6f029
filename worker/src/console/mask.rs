//! Secrets never reach a page. An observer's action is shown with what could be a credential
//! masked as `***`, by the rules `observer_create` uses to recognise one
//! (`fraiseql_observers_core::secret`): a URL's password and credential-like query parameters,
//! chat incoming-webhook URLs as a whole, header values whose name or value says they carry a
//! credential, and any field named like a secret. A reference to a secret of the worker's
//! configuration (`{"secret": "name"}`) is only a name, and is shown.

use fraiseql_observers_core::secret::{credential_header, credential_url};
use serde_json::Value;

const MASK: &str = "***";

/// `action` with every credential it may hold masked.
pub fn action(action: &Value) -> Value {
    mask(action, None)
}

/// Field names whose string values are credentials wherever they appear.
fn secret_field(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
        && k != "secret" // {"secret": "<name>"}: a reference names a secret, it is not one
}

fn mask(v: &Value, key: Option<&str>) -> Value {
    match v {
        Value::Object(map) => {
            let headers = key.is_some_and(|k| k.eq_ignore_ascii_case("headers"));
            Value::Object(
                map.iter()
                    .map(|(k, item)| {
                        let masked = match item {
                            Value::String(s) if headers && credential_header(k, s).is_some() => {
                                Value::String(MASK.to_string())
                            }
                            _ => mask(item, Some(k)),
                        };
                        (k.clone(), masked)
                    })
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| mask(i, key)).collect()),
        Value::String(s) => Value::String(string(s, key)),
        other => other.clone(),
    }
}

fn string(s: &str, key: Option<&str>) -> String {
    if key.is_some_and(secret_field) {
        return MASK.to_string();
    }
    if !s.contains("://") {
        return s.to_string();
    }
    if credential_url(s).is_some() {
        return mask_url(s);
    }
    // Templates (`{{ new.id }}`) may not parse as URLs: masked as text.
    redact_url_text(s)
}

/// A credential URL: its scheme and host kept, the rest masked.
fn mask_url(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(u) => format!(
            "{}://{}/{MASK}",
            u.scheme(),
            u.host_str().unwrap_or_default()
        ),
        Err(_) => MASK.to_string(),
    }
}

/// Query parameter names that carry a credential (as `observer_create` recognises them).
fn credential_param(name: &str) -> bool {
    let k = name.to_ascii_lowercase().replace('-', "_");
    matches!(k.as_str(), "key" | "sig" | "auth" | "pwd" | "pass")
        || ["token", "secret", "passw", "apikey", "api_key", "signature"]
            .iter()
            .any(|w| k.contains(w))
}

/// A URL (or URL template) as text with its user-info and the values of credential-like query
/// parameters masked, whatever else it holds.
fn redact_url_text(s: &str) -> String {
    let (scheme, rest) = s.split_once("://").unwrap_or(("", s));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query
                .split_once('#')
                .map_or((query, None), |(q, f)| (q, Some(f)));
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if credential_param(k) => format!("{k}={MASK}"),
                    _ => pair.to_string(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", masked.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_masked_and_references_shown() {
        let a = json!({
            "type": "webhook",
            "url": "https://user:pw-4411@api.example.com/hook?token=tk-4412&x=1",
            "headers": {"Authorization": "Bearer tk-4413", "X-Trace": "on",
                        "X-Api": {"secret": "stripe_token", "prefix": "Bearer "}},
            "slack": "https://hooks.slack.com/services/T000/B000/XXXX4414",
            "smtp_password": "pw-4415",
            "signing": {"secret": "shop_signing"},
            "templated": "https://u:pw-4416@api.example.com/{{ new.id }}?sig={{ new.sig }}&api-key=k-4417&x={{ new.x }}"
        });
        let shown = action(&a).to_string();
        for leaked in [
            "pw-4411", "tk-4412", "tk-4413", "XXXX4414", "pw-4415", "pw-4416", "k-4417", "new.sig",
        ] {
            assert!(!shown.contains(leaked), "{leaked} in {shown}");
        }
        for kept in [
            "api.example.com",
            "X-Trace",
            "stripe_token",
            "shop_signing",
            "hooks.slack.com",
        ] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
    }
}
