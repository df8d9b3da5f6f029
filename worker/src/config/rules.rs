//! One small helper per kind of configuration rule: a number in a range, a duration in a range
//! (the message gives the unit and the span in words), an optional URL of given schemes, an
//! optional `address:port`, a predicate with its own problem text, and a closed set of
//! spellings (the enums of the configuration). Each failure is a [`ConfigError::Invalid`]
//! naming the field, the problem and the fix; `validate.rs` lists the checks with them.

use std::fmt::Display;
use std::ops::RangeInclusive;

use super::{redact, ConfigError};

/// The outcome of one rule.
pub(super) type Checked = Result<(), ConfigError>;

/// `field` fails with `problem` and `fix`.
pub(super) fn refuse(
    field: &'static str,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// `error` with `note` added to its fix ("...; keep it above ...").
pub(super) fn noted(error: ConfigError, note: &str) -> ConfigError {
    match error {
        ConfigError::Invalid {
            field,
            problem,
            fix,
        } => ConfigError::Invalid {
            field,
            problem,
            fix: format!("{fix}; {note}"),
        },
        other => other,
    }
}

/// `field` holds when `ok`; otherwise fails with the `problem` (computed only then) and `fix`.
pub(super) fn check(
    field: &'static str,
    ok: bool,
    problem: impl FnOnce() -> String,
    fix: impl Into<String>,
) -> Checked {
    if ok {
        Ok(())
    } else {
        Err(refuse(field, problem(), fix))
    }
}

/// A count or size within `range` (inclusive): "`batch_size`: 0 is not allowed; use 1 to 10000".
pub(super) fn range<T: PartialOrd + Display>(
    field: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Checked {
    let fix = format!("use {} to {}", range.start(), range.end());
    check(
        field,
        range.contains(&value),
        || format!("{value} is not allowed"),
        fix,
    )
}

/// The unit a duration setting is written in (its name ends in `_ms` or `_seconds`).
#[derive(Clone, Copy)]
pub(super) enum Unit {
    Millis,
    Seconds,
}

/// A duration within `range` (inclusive) of `unit`s; the fix gives the unit and the span in
/// words: "use 10 to 3600000 (milliseconds: 10ms to 1h)".
pub(super) fn duration(
    field: &'static str,
    value: u64,
    unit: Unit,
    range: RangeInclusive<u64>,
) -> Checked {
    let (name, ms) = match unit {
        Unit::Millis => ("milliseconds", 1),
        Unit::Seconds => ("seconds", 1000),
    };
    let fix = format!(
        "use {} to {} ({name}: {} to {})",
        range.start(),
        range.end(),
        spoken(range.start() * ms),
        spoken(range.end() * ms)
    );
    check(
        field,
        range.contains(&value),
        || format!("{value} is not allowed"),
        fix,
    )
}

/// `ms` in the largest unit that divides it: `10ms`, `30s`, `1h`, `365d`.
fn spoken(ms: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1000, "s"),
        (1, "ms"),
    ];
    let (size, name) = UNITS
        .iter()
        .find(|(size, _)| ms >= *size && ms.is_multiple_of(*size))
        .copied()
        .unwrap_or((1, "ms"));
    format!("{}{name}", ms / size)
}

/// What a URL setting accepts.
pub(super) struct UrlRule {
    /// The schemes allowed.
    pub schemes: &'static [&'static str],
    /// Whether the URL must name a host (`unix://` sockets do not).
    pub needs_host: bool,
    /// The accepted form in words, for the problem: "an smtp:// or smtps:// URL".
    pub what: &'static str,
}

impl UrlRule {
    /// True when `raw` parses as a URL of one of the schemes (with a host when needed).
    pub fn accepts(&self, raw: &str) -> bool {
        url::Url::parse(raw)
            .map(|u| self.schemes.contains(&u.scheme()) && (!self.needs_host || u.host().is_some()))
            .unwrap_or(false)
    }
}

/// `http://` or `https://` with a host.
pub(super) const HTTP_URL: UrlRule = UrlRule {
    schemes: &["http", "https"],
    needs_host: true,
    what: "an http(s) URL",
};

/// An optional URL (empty = the feature is off) that `rule` accepts; the problem quotes the
/// value with its passwords masked.
pub(super) fn optional_url(field: &'static str, raw: &str, rule: &UrlRule, fix: &str) -> Checked {
    check(
        field,
        raw.is_empty() || rule.accepts(raw),
        || format!("{:?} is not {}", redact(raw), rule.what),
        fix,
    )
}

/// An optional `address:port` (empty = off).
pub(super) fn optional_socket_addr(field: &'static str, raw: &str, fix: &str) -> Checked {
    check(
        field,
        raw.is_empty() || raw.parse::<std::net::SocketAddr>().is_ok(),
        || format!("{raw:?} is not an address:port"),
        fix,
    )
}

/// `value` is at least the setting `floor_field`'s `floor`.
pub(super) fn at_least(field: &'static str, value: u64, floor_field: &str, floor: u64) -> Checked {
    check(
        field,
        value >= floor,
        || format!("{value} is not allowed"),
        format!("use at least {floor_field} ({floor})"),
    )
}

/// Every item of a list setting passes `rule`; the first that does not fails.
pub(super) fn each<T>(items: impl IntoIterator<Item = T>, rule: impl Fn(T) -> Checked) -> Checked {
    items.into_iter().try_for_each(rule)
}

/// A closed set of spellings a setting accepts, for an enum of the configuration: its field
/// (dotted) and each spelling with its value.
pub trait Choice: Sized + Copy + PartialEq + 'static {
    /// The dotted name of the setting, e.g. `log.format`.
    const FIELD: &'static str;
    /// Each accepted spelling and its value.
    const CHOICES: &'static [(&'static str, Self)];

    /// The spelling of `self`.
    fn name(self) -> &'static str {
        Self::CHOICES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// The value spelled `raw`, or the refusal naming the field and every accepted spelling.
    fn parse(raw: &str) -> Result<Self, ConfigError> {
        let found = Self::CHOICES.iter().find(|(n, _)| *n == raw);
        found.map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<String> = Self::CHOICES
                .iter()
                .map(|(n, _)| format!("{n:?}"))
                .collect();
            refuse(
                Self::FIELD,
                format!("{raw:?} is not allowed"),
                format!("use {}", or_list(&names)),
            )
        })
    }
}

/// The setting of `T` in the merged tree, checked before serde types it: serde's message would
/// not name the field. A value of another type is left to serde ("invalid type: integer").
pub(super) fn choice<T: Choice>(merged: &toml::Value) -> Checked {
    let value = T::FIELD.split('.').try_fold(merged, |v, k| v.get(k));
    match value {
        Some(toml::Value::String(raw)) => T::parse(raw).map(|_| ()),
        _ => Ok(()),
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn or_list(items: &[String]) -> String {
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// serde's `deserialize` of a [`Choice`] (from a string), with [`Choice::parse`]'s message.
pub(super) fn deserialize_choice<'de, T: Choice, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    let raw = <String as serde::Deserialize>::deserialize(d)?;
    T::parse(&raw).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_the_problem_and_the_fix() {
        let e = range("batch_size", 0u32, 1..=10_000).expect_err("out of range");
        assert_eq!(
            e.to_string(),
            "invalid value for `batch_size`: 0 is not allowed; use 1 to 10000"
        );
        let e = duration("poll_interval_ms", 5, Unit::Millis, 10..=3_600_000).expect_err("short");
        assert_eq!(
            e.to_string(),
            "invalid value for `poll_interval_ms`: 5 is not allowed; use 10 to 3600000 (milliseconds: 10ms to 1h)"
        );
        let e = duration("redis.ledger_ttl_seconds", 0, Unit::Seconds, 1..=31_536_000)
            .expect_err("zero");
        assert!(
            e.to_string()
                .ends_with("use 1 to 31536000 (seconds: 1s to 365d)"),
            "{e}"
        );
        let e = optional_url("smtp.url", "http://u:pw@h", &HTTP_URL, "fix").map(|_| ());
        assert!(e.is_ok());
        let e =
            optional_url("elasticsearch.url", "ftp://u:pw@h/", &HTTP_URL, "fix").expect_err("ftp");
        assert!(!e.to_string().contains("pw"), "{e}");
        assert!(
            optional_url("x", "", &HTTP_URL, "fix").is_ok(),
            "empty = off"
        );
    }

    #[test]
    fn a_choice_names_every_spelling() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Three {
            A,
            B,
            C,
        }
        impl Choice for Three {
            const FIELD: &'static str = "t.kind";
            const CHOICES: &'static [(&'static str, Self)] =
                &[("a", Self::A), ("b", Self::B), ("c", Self::C)];
        }
        assert_eq!(Three::parse("b").ok(), Some(Three::B));
        assert_eq!(Three::C.name(), "c");
        assert_eq!(
            Three::parse("B").expect_err("case matters").to_string(),
            "invalid value for `t.kind`: \"B\" is not allowed; use \"a\", \"b\" or \"c\""
        );
        let tree: toml::Value = toml::from_str("[t]\nkind = \"d\"").expect("toml");
        assert!(choice::<Three>(&tree).is_err());
        let _ = Three::A;
    }
}
