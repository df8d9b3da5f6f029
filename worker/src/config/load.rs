//! The layers of the configuration merged into one TOML tree: the defaults compiled in, the
//! user's file, the `FRAISEQL_OBSERVERS_*` environment (each string typed like the default it
//! replaces; `_FILE` variables read from their file; `RATE_LIMITS` and `SECRETS__<NAME>` in their
//! own forms), then the flags. The tree is typed and checked by `Config::load`.

use std::path::Path;

use super::{ConfigError, DEFAULTS, ENV_PREFIX};

/// The merged tree of every layer, in order: defaults, `file`, `env`, `overrides`.
pub(super) fn layers(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(String, toml::Value)],
) -> Result<toml::Value, ConfigError> {
    let mut merged = parse_toml(DEFAULTS, "<defaults>")?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        merge(&mut merged, parse_toml(&text, &path.display().to_string())?);
    }
    apply_env(&mut merged, &env.into_iter().collect::<Vec<_>>())?;
    for (key, value) in overrides {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        set(&mut merged, &path, value.clone());
    }
    Ok(merged)
}

/// Apply every `FRAISEQL_OBSERVERS_*` variable of `env` to `merged`.
fn apply_env(merged: &mut toml::Value, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(key) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // The config file's path (--config), not a setting.
        if key == "CONFIG" {
            continue;
        }
        let (var, key, value) = match file_variable(key, merged) {
            Some(plain) => read_file_variable(env, var, plain, value)?,
            None => (var.clone(), key.to_string(), value.clone()),
        };
        apply_variable(merged, &var, &key, value)?;
    }
    Ok(())
}

/// `FRAISEQL_OBSERVERS_<PLAIN>_FILE=path` as the variable `FRAISEQL_OBSERVERS_<PLAIN>` holding
/// the file's content: (that variable, `<PLAIN>`, the content). Refused when both are set.
fn read_file_variable(
    env: &[(String, String)],
    var: &str,
    plain: &str,
    path: &str,
) -> Result<(String, String, String), ConfigError> {
    let plain_var = format!("{ENV_PREFIX}{plain}");
    if env.iter().any(|(v, _)| v.eq_ignore_ascii_case(&plain_var)) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            message: format!("{plain_var} is set too; set one of them"),
        });
    }
    let content = read_secret_file(path).map_err(|e| ConfigError::Env {
        var: var.to_string(),
        message: format!("cannot read {path}: {e}"),
    })?;
    Ok((plain_var, plain.to_string(), content))
}

/// Apply one variable `var` (`key` without the prefix) of `value` to `merged`.
fn apply_variable(
    merged: &mut toml::Value,
    var: &str,
    key: &str,
    value: String,
) -> Result<(), ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    if key == "RATE_LIMITS" {
        let table = rate_limits(&value).map_err(env_error)?;
        set(merged, &["rate_limits".to_string()], table);
        return Ok(());
    }
    let path: Vec<String> = key
        .to_ascii_lowercase()
        .split("__")
        .map(str::to_string)
        .collect();
    if path.first().map(String::as_str) == Some("secrets") {
        return apply_secret(merged, &path, value).map_err(env_error);
    }
    let existing = lookup(merged, &path).ok_or_else(|| {
        env_error("no such setting (see config.default.toml for the keys)".to_string())
    })?;
    let typed = coerce(existing, &value).map_err(env_error)?;
    set(merged, &path, typed);
    Ok(())
}

/// FRAISEQL_OBSERVERS_RATE_LIMITS="https://api.example.com=50 http://10.0.0.5:8080=5" as the
/// `[rate_limits]` table.
fn rate_limits(value: &str) -> Result<toml::Value, String> {
    let mut table = toml::map::Map::new();
    for pair in value.split([',', ' ']).filter(|p| !p.is_empty()) {
        let parsed = pair
            .rsplit_once('=')
            .and_then(|(e, r)| Some((e, r.trim().parse::<f64>().ok()?)));
        let Some((endpoint, rate)) = parsed else {
            return Err(format!("{pair:?} is not endpoint=requests_per_second"));
        };
        table.insert(endpoint.to_string(), toml::Value::Float(rate));
    }
    Ok(toml::Value::Table(table))
}

/// FRAISEQL_OBSERVERS_SECRETS__<NAME>="whsec_new whsec_old" (its keys, also
/// SECRETS__<NAME>__KEYS), SECRETS__<NAME>__VALUE="..." (a credential, as it is) and
/// SECRETS__<NAME>__DESTINATIONS="https://a/x https://b"; each also as _FILE: names are
/// free-form. `path` is the variable's name split at `__`, lower case.
fn apply_secret(merged: &mut toml::Value, path: &[String], value: String) -> Result<(), String> {
    let target = match path {
        [_, name] => vec!["secrets".to_string(), name.clone(), "keys".to_string()],
        [_, _, part] if part == "keys" || part == "destinations" || part == "value" => {
            path.to_vec()
        }
        _ => return Err(format!("use {ENV_PREFIX}SECRETS__<NAME> (its keys), {ENV_PREFIX}SECRETS__<NAME>__VALUE or {ENV_PREFIX}SECRETS__<NAME>__DESTINATIONS, each also with _FILE")),
    };
    let typed = if target[2] == "value" {
        toml::Value::String(value)
    } else {
        toml::Value::Array(
            value
                .split([' ', ','])
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        )
    };
    // This layer replaces the file's `keys_file` / `value_file` as it does `keys`.
    if let Some(toml::Value::Table(entry)) = merged
        .get_mut("secrets")
        .and_then(|s| s.get_mut(&target[1]))
    {
        entry.remove(&format!("{}_file", target[2]));
    }
    set(merged, &target, typed);
    Ok(())
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.message().to_string(),
        })
}

/// Merge `top` into `base`, tables recursively, other values replaced.
fn merge(base: &mut toml::Value, top: toml::Value) {
    match (base, top) {
        (toml::Value::Table(b), toml::Value::Table(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

fn lookup<'a>(v: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn set(v: &mut toml::Value, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        let toml::Value::Table(t) = cur else { return };
        cur = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let toml::Value::Table(t) = cur {
        t.insert(last.clone(), value);
    }
}

/// An environment string, typed like the default it replaces.
fn coerce(like: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match like {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not an integer")),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not a boolean (true/false)")),
        },
        toml::Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("{raw:?} is not a number")),
        // Lists of strings: comma- or space-separated.
        toml::Value::Array(_) => Ok(toml::Value::Array(
            raw.split([',', ' '])
                .filter(|v| !v.is_empty())
                .map(|v| toml::Value::String(v.to_string()))
                .collect(),
        )),
        _ => Err("this setting cannot be set from the environment".to_string()),
    }
}

/// `<KEY>` when the environment variable `FRAISEQL_OBSERVERS_<KEY>_FILE` stands for the file
/// holding `<KEY>`'s value (any case), or None: the container convention for secrets (Docker
/// secrets, Kubernetes secret volumes mounted as files). A setting whose own name ends in
/// `_file` keeps its variable; under `SECRETS__` the suffix always means a file (a secret whose
/// name ends in `_file` is written in the TOML file).
fn file_variable<'a>(key: &'a str, merged: &toml::Value) -> Option<&'a str> {
    let plain = key
        .len()
        .checked_sub("_FILE".len())
        .filter(|&at| key.is_char_boundary(at) && key[at..].eq_ignore_ascii_case("_FILE"))
        .map(|at| &key[..at])?;
    let path: Vec<String> = key
        .to_ascii_lowercase()
        .split("__")
        .map(str::to_string)
        .collect();
    let setting =
        path.first().map(String::as_str) != Some("secrets") && lookup(merged, &path).is_some();
    (!setting && !plain.is_empty()).then_some(plain)
}

/// A secret's file (`*_FILE`, `value_file`, `keys_file`), read at start: its content with the
/// trailing line break an editor or `echo` adds removed (`\n` or `\r\n`, repeated).
pub fn read_secret_file(path: &str) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}
