//! What may be shown of a credential: URLs and libpq strings with their passwords masked (for
//! messages and `validate-config`), the configuration with every credential masked, and what is
//! wrong with a connection string that does not parse, without quoting it.

use super::Config;

/// A URL (or libpq `key=value` string) with its passwords replaced by `***`, for messages: the
/// user-info password and `password=` query parameters of a URL; `password=` values of a libpq
/// string, quoted (`password='a b'`) or not.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs().any(|(k, _)| is_password_key(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_password_key(&k) {
                            "***".to_string()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => redact_key_values(raw),
    }
}

/// Query or libpq keys that carry a password.
fn is_password_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("pass")
}

/// A libpq `key=value ...` string with each password value (quoted or not, with `\'` escapes)
/// replaced by `***`.
fn redact_key_values(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = find_password_key(rest) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        // after = "password" [spaces] "=" [spaces] value ...
        let eq = after.find('=').map(|i| i + 1).unwrap_or(after.len());
        out.push_str(&after[..eq]);
        let value = &after[eq..];
        let trimmed = value.trim_start_matches(' ');
        out.push_str(&value[..value.len() - trimmed.len()]);
        out.push_str("***");
        rest = skip_value(trimmed);
    }
    out.push_str(rest);
    out
}

/// Byte offset of the next `password` keyword followed by `=` (at the start or after a space).
fn find_password_key(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("password").map(|i| i + from) {
        let starts_word = i == 0 || s.as_bytes()[i - 1] == b' ';
        let after = s[i + "password".len()..].trim_start_matches(' ');
        if starts_word && after.starts_with('=') {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// What follows a libpq value: after its closing quote when quoted, else after its first space.
fn skip_value(value: &str) -> &str {
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return &quoted[i + 1..],
                _ => {}
            }
        }
        ""
    } else {
        value.find(' ').map(|i| &value[i..]).unwrap_or("")
    }
}

/// What is wrong with an unparsable connection string, without quoting it (it can hold a
/// password).
pub(super) fn connection_string_problem(raw: &str, e: &tokio_postgres::Error) -> String {
    let form = if raw.trim_start().starts_with("postgres://")
        || raw.trim_start().starts_with("postgresql://")
    {
        "the postgres:// URL"
    } else {
        "the key=value connection string"
    };
    // The driver names the option whose value is bad ("invalid value for option `port`") and
    // otherwise describes the syntax error, sometimes with a character of the input: only the
    // option name is kept.
    let detail = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let part = if let Some(option) = detail
        .strip_prefix("invalid value for option `")
        .and_then(|r| r.strip_suffix('`'))
    {
        format!("the value of `{option}` is not valid")
    } else if detail.starts_with("unknown option") {
        "it names an unknown option".to_string()
    } else if detail.contains("unterminated") {
        "a quoted value is not closed".to_string()
    } else {
        "its syntax is broken (a value with spaces must be quoted: password='a b')".to_string()
    };
    format!("{form} does not parse: {part} (not shown: it can hold a password)")
}

impl Config {
    /// This configuration with every credential masked (`validate-config` prints it): passwords
    /// in connection URLs, `elasticsearch.api_key`, and the secrets' keys and values.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.database_url = redact(&c.database_url);
        c.smtp.url = redact(&c.smtp.url);
        c.redis.url = redact(&c.redis.url);
        c.elasticsearch.url = redact(&c.elasticsearch.url);
        if !c.elasticsearch.api_key.is_empty() {
            c.elasticsearch.api_key = "***".to_string();
        }
        for secret in c.secrets.values_mut() {
            *secret = secret.redacted();
        }
        if let Some(console) = &mut c.console {
            console.database_url = redact(&console.database_url);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review F17): `?password=` in a URL and quoted libpq passwords were printed.
    #[test]
    fn redact_masks_every_password_form() {
        assert_eq!(
            redact("postgres://worker:S3cret@db/app"),
            "postgres://worker:***@db/app"
        );
        let r = redact("postgres://db/app?user=worker&password=S3cret&sslmode=require");
        assert_eq!(
            r,
            "postgres://db/app?user=worker&password=***&sslmode=require"
        );
        let r = redact("postgresql://db/app?PASSWORD=S3cret");
        assert!(!r.contains("S3cret"), "{r}");
        assert_eq!(
            redact("host=db password='a b c' user=w"),
            "host=db password=*** user=w"
        );
        assert_eq!(
            redact("host=db password = 'it\\'s secret' dbname=x"),
            "host=db password = *** dbname=x"
        );
        assert_eq!(redact("password=S3cret host=db"), "password=*** host=db");
        assert_eq!(redact("host=db user=w"), "host=db user=w");
        assert_eq!(
            redact("host=db password='unterminated"),
            "host=db password=***"
        );
    }
}
