//! `[secrets.<name>]`: one secret and where it may be used, read by hand from the merged TOML
//! (serde's messages would quote a value: `invalid type: string "whsec_..."`) and checked. No
//! message, `Debug` or redacted rendering ever holds a key or a value.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{load::read_secret_file, redact, ConfigError, ENV_PREFIX};
use crate::signing::{Destination, SigningKey};

/// `[secrets.<name>]`: one secret and where it may be used. Either a signing secret (`keys`) or
/// a credential (`value`), never both. `Serialize` writes the values as they are: print with
/// [`super::Config::render`], which masks them.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct Secret {
    /// `whsec_<base64>` values, newest first while rotating (each one signs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// A credential an action references as its URL or a header value, resolved right before
    /// the request (`value`, or read at start from `value_file`, trailing newline trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// URL prefixes (`scheme://host[:port][/path]`) of the requests this secret may go to: the
    /// requests a signing secret signs (at least one), the requests a credential is a header of
    /// (none: it can only be a URL, which is then its own destination).
    pub destinations: Vec<String>,
}

/// Never print a secret's keys or value (`validate-config` prints the configuration).
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("keys", &vec!["whsec_***"; self.keys.len()])
            .field("value", &self.value.as_ref().map(|_| "***"))
            .field("destinations", &self.destinations)
            .finish()
    }
}

impl Secret {
    /// True when a request to `url` lies under one of [`Secret::destinations`].
    pub fn covers(&self, url: &str) -> bool {
        self.destinations().iter().any(|d| d.matches(url))
    }

    /// The parsed [`Secret::destinations`] (validated by [`super::Config::validate`]).
    pub fn destinations(&self) -> Vec<Destination> {
        self.destinations
            .iter()
            .filter_map(|d| Destination::parse(d).ok())
            .collect()
    }

    /// True when this secret may sign a request to `url`.
    pub fn may_sign_for(&self, url: &str) -> bool {
        self.covers(url)
    }

    /// This secret with its keys and value masked (`whsec_***`, `***`).
    pub(super) fn redacted(&self) -> Secret {
        Secret {
            keys: vec!["whsec_***".to_string(); self.keys.len()],
            value: self.value.as_ref().map(|_| "***".to_string()),
            destinations: self.destinations.clone(),
        }
    }
}

/// The `[secrets]` table of the merged configuration, read by hand so that no error quotes a
/// secret's value (serde's would: `invalid type: string "whsec_..."`).
pub(super) fn parse_secrets(
    value: Option<toml::Value>,
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let table = match value {
        None => return Ok(BTreeMap::new()),
        Some(toml::Value::Table(t)) => t,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: "secrets",
                problem: format!("it is a {}, not a table", other.type_str()),
                fix: "write one [secrets.<name>] table per secret, with keys and destinations"
                    .to_string(),
            })
        }
    };
    let mut secrets = BTreeMap::new();
    for (name, entry) in table {
        // Secret names are case-insensitive (environment variables are upper case).
        let name = name.to_ascii_lowercase();
        let secret = parse_entry(&name, entry)?;
        secrets.insert(name, secret);
    }
    Ok(secrets)
}

/// A refusal of the entry `name` while it is read, with the fix that shows both forms.
fn refuse_entry(name: &str, problem: String) -> ConfigError {
    ConfigError::Secret {
        name: name.to_string(),
        problem,
        fix: format!(
            "write [secrets.{name}] with keys = [\"whsec_...\"] and destinations = [\"https://receiver.example/hooks\"] (or {ENV_PREFIX}SECRETS__{0} and {ENV_PREFIX}SECRETS__{0}__DESTINATIONS) for a signing secret, or value = \"...\" or value_file = \"/run/secrets/{name}\" (or {ENV_PREFIX}SECRETS__{0}__VALUE) for a credential",
            name.to_ascii_uppercase()
        ),
    }
}

/// One `[secrets.<name>]` table: its keys, value and destinations, then its files read.
fn parse_entry(name: &str, entry: toml::Value) -> Result<Secret, ConfigError> {
    let refuse = |problem: String| refuse_entry(name, problem);
    let fields = match entry {
        toml::Value::Table(t) => t,
        toml::Value::Array(_) => {
            return Err(refuse(
                "a list of keys alone binds the secret to no destination".to_string(),
            ))
        }
        other => return Err(refuse(format!("it is a {}, not a table", other.type_str()))),
    };
    let mut secret = Secret::default();
    let mut files = Vec::new();
    for (key, v) in fields {
        if key == "value" || key == "value_file" || key == "keys_file" {
            let toml::Value::String(text) = v else {
                return Err(refuse(format!("`{key}` must be a string")));
            };
            if key == "value" {
                secret.value = Some(text);
            } else {
                files.push((key, text));
            }
            continue;
        }
        let Some(list) = string_list(v) else {
            return Err(refuse(format!("`{key}` must be a list of strings")));
        };
        match key.as_str() {
            "keys" => secret.keys = list,
            "destinations" => secret.destinations = list,
            _ => return Err(refuse(format!("unknown key {key:?}"))),
        }
    }
    read_files(name, &mut secret, files)?;
    Ok(secret)
}

/// The strings of a TOML array, or None when it is not one or holds something else.
fn string_list(v: toml::Value) -> Option<Vec<String>> {
    let toml::Value::Array(items) = v else {
        return None;
    };
    items
        .into_iter()
        .map(|i| match i {
            toml::Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// `value_file` and `keys_file` (`files`: key and path) read into `secret`, refused when the
/// inline form is given too.
fn read_files(
    name: &str,
    secret: &mut Secret,
    files: Vec<(String, String)>,
) -> Result<(), ConfigError> {
    for (key, path) in files {
        let inline = if key == "value_file" {
            secret.value.is_some()
        } else {
            !secret.keys.is_empty()
        };
        if inline {
            return Err(refuse_entry(
                name,
                format!(
                    "it has both `{key}` and `{}`",
                    key.trim_end_matches("_file")
                ),
            ));
        }
        let text = read_secret_file(&path)
            .map_err(|e| refuse_entry(name, format!("cannot read `{key}` {path}: {e}")))?;
        if key == "value_file" {
            secret.value = Some(text);
        } else {
            secret.keys = text
                .split([' ', ',', '\n', '\r', '\t'])
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
        }
    }
    Ok(())
}

/// Check one secret: its name, one kind (keys or value), a usable value or keys, and
/// destinations for a signing secret. No message quotes a key or a value.
pub(super) fn validate(name: &str, secret: &Secret) -> Result<(), ConfigError> {
    let refuse = |problem: String, fix: String| ConfigError::Secret {
        name: name.to_string(),
        problem,
        fix,
    };
    let var = format!("{ENV_PREFIX}SECRETS__{}", name.to_ascii_uppercase());
    if !fraiseql_observers_core::action::is_secret_name(name) {
        return Err(refuse(
            "the name is not allowed".to_string(),
            "name secrets with 1 to 64 letters, digits, _ or -".to_string(),
        ));
    }
    match &secret.value {
        Some(value) => {
            validate_credential(name, &var, secret, value).map_err(|(p, f)| refuse(p, f))?
        }
        None if secret.keys.is_empty() => {
            return Err(refuse(
                "it has no key and no value".to_string(),
                format!("give a signing secret keys = [\"whsec_<base64>\"] (the newest first while rotating, or {var}), a credential value = \"...\" or value_file = \"/run/secrets/{name}\" (or {var}__VALUE, {var}__VALUE_FILE)"),
            ));
        }
        None => {}
    }
    for (i, v) in secret.keys.iter().enumerate() {
        SigningKey::parse(v).map_err(|e| {
            refuse(
                format!("key {} is not usable: {e}", i + 1),
                format!("use whsec_ followed by the base64 of 24 to 64 random bytes; a credential that is not a signing key is a value = \"...\" (or {var}__VALUE)"),
            )
        })?;
    }
    // A credential without destinations can only be a URL (its own destination).
    if secret.destinations.is_empty() && secret.value.is_none() {
        return Err(refuse(
            "it is bound to no destination, so it could sign nothing".to_string(),
            format!("list the URL prefixes it may sign for: destinations = [\"https://receiver.example/hooks\"] (or {var}__DESTINATIONS)"),
        ));
    }
    for d in &secret.destinations {
        Destination::parse(d).map_err(|e| {
            refuse(
                format!("destination {:?}: {e}", redact(d)),
                "write each destination as scheme://host[:port][/path]".to_string(),
            )
        })?;
    }
    Ok(())
}

/// A credential (`value`): alone (no keys), not empty, on one line. Err is (problem, fix).
fn validate_credential(
    name: &str,
    var: &str,
    secret: &Secret,
    value: &str,
) -> Result<(), (String, String)> {
    if !secret.keys.is_empty() {
        return Err((
            "it has both keys (a signing secret) and a value (a credential)".to_string(),
            "give each its own [secrets.<name>] table".to_string(),
        ));
    }
    if value.is_empty() {
        return Err((
            "its value is empty".to_string(),
            format!("give value = \"...\" or value_file = \"/run/secrets/{name}\" (or {var}__VALUE, {var}__VALUE_FILE)"),
        ));
    }
    // It becomes a header value or a URL: a line break would split the request.
    if value.chars().any(char::is_control) {
        return Err((
            "its value holds a control character (a line break inside its file?)".to_string(),
            "keep the value on one line; only trailing line breaks of a file are trimmed"
                .to_string(),
        ));
    }
    Ok(())
}
