//! Secrets never reach a page. An observer's action is shown with what could be a credential
//! masked as `***`, by the rules `observer_create` uses to recognise one
//! (`fraiseql_observers_core::secret`): a URL's password and credential-like query parameters,
//! chat incoming-webhook URLs as a whole, header values whose name or value says they carry a
//! credential, and any field named like a secret. A reference to a secret of the worker's
//! configuration (`{"secret": "name"}`) is only a name, and is shown.

use fraiseql_observers_core::secret::{credential_header, credential_url};
use serde_json::Value;

use crate::config::redact;

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
    if s.contains("://") {
        if credential_url(s).is_some() && !s.contains("{{") {
            return mask_url(s);
        }
        return redact(s);
    }
    s.to_string()
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
            "signing": {"secret": "shop_signing"}
        });
        let shown = action(&a).to_string();
        for leaked in ["pw-4411", "tk-4412", "tk-4413", "XXXX4414", "pw-4415"] {
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
