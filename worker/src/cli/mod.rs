//! The operator commands of `fraiseql-observers` (everything but `run`), one file per command
//! family: [`console`] (the operator console), [`status`], [`events`] (`debug-event`, `search`), [`dlq`] (`dlq list/show/retry/purge`),
//! [`observers`] (`pause`, `resume`), [`metrics`] and [`declare`] (`plan`, `apply`). Each reads or
//! changes the extension only through its public SQL functions (`@extschema@.observer_*`, never a
//! table or an internal function of schema `observer`), with typed query parameters, and prints a
//! terminal rendering or, with `--json`, the JSON the function returned.
//!
//! This module holds what they share: the [`Failure`] of a command and its exit code (documented
//! in `docs/cli.md`), [`connect`], and the output helpers (tables, JSON, a progress bar). The
//! commands use the library (`db`, `config`) from above; nothing in the library uses them.

pub mod console;
pub mod declare;
pub mod dlq;
pub mod events;
pub mod metrics;
pub mod observers;
pub mod status;

use std::fmt::Write as _;
use std::sync::Arc;

use fraiseql_observers::config::Config;
use fraiseql_observers::db::{Db, DbError};
use serde_json::Value;

/// A failed command and its exit code.
#[derive(Debug)]
pub enum Failure {
    /// 1: the database or the metrics endpoint could not be reached, or a call failed.
    Runtime(String),
    /// 2: bad usage, configuration or argument (the message says which and the fix).
    Usage(String),
    /// 3: the thing asked about does not exist (event, job, observer).
    NotFound(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Runtime(_) => 1,
            Failure::Usage(_) => 2,
            Failure::NotFound(_) => 3,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Runtime(m) | Failure::Usage(m) | Failure::NotFound(m) => m,
        }
    }
}

impl From<DbError> for Failure {
    /// SQLSTATEs: 42704 (undefined object) is "not found"; bad input is a usage error: class
    /// 22 (bad data or parameter), 42601 (syntax error, e.g. a condition), 42710 (duplicate
    /// object), 42809 (wrong object type), 54000 (a condition too long), 55006 (object in use);
    /// anything else is a runtime failure.
    fn from(e: DbError) -> Self {
        let message = e.server_message();
        match e.sqlstate() {
            Some("42704") => Failure::NotFound(message),
            Some(s)
                if s.starts_with("22")
                    || matches!(s, "42601" | "42710" | "42809" | "54000" | "55006") =>
            {
                Failure::Usage(message)
            }
            _ => Failure::Runtime(message),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// Connect for one command. An extension of a version this CLI does not support is refused
/// before any call, with the worker's message (both versions and the fix).
pub async fn connect(config: &Config) -> Result<Db> {
    Db::connect(&config.database_url, Arc::new(tokio::sync::Notify::new()))
        .await
        .map_err(|e| match e {
            DbError::Incompatible(mismatch) => Failure::Runtime(mismatch.to_string()),
            e => {
                // DbError's own text starts with what this line says first.
                let text = e.to_string();
                let why = text
                    .strip_prefix("cannot connect to the database: ")
                    .unwrap_or(&text);
                Failure::Runtime(format!(
                    "cannot connect to the database ({}): {why}; check database_url / --database-url",
                    fraiseql_observers::config::redact(&config.database_url)
                ))
            }
        })
}

/// `--limit N` as the SQL functions' `integer` argument. clap already refuses a negative number;
/// this refuses one over `i32::MAX` before the call, naming the flag.
pub fn limit_arg(limit: u32) -> Result<i32> {
    i32::try_from(limit).map_err(|_| {
        Failure::Usage(format!(
            "--limit {limit} is too large; use at most {}",
            i32::MAX
        ))
    })
}

/// Print a JSON value as the commands' `--json` does: pretty, keys as the database sorted them.
pub fn print_json(v: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A cell of a table, with control characters escaped: errors and reasons stored in the
/// database can hold an endpoint's text, which must not drive the terminal. NULL is `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => fraiseql_observers_core::text::printable(s),
        other => other.to_string(),
    }
}

/// [`text`] of an optional string: `-` for none.
pub fn cell(v: Option<&str>) -> String {
    v.map_or_else(|| "-".to_string(), fraiseql_observers_core::text::printable)
}

/// Append a section to a report: a blank line, `title:`, then the table of `rows`, or `empty`
/// when there are none.
pub fn push_section(
    out: &mut String,
    title: &str,
    empty: &str,
    headers: &[&str],
    rows: &[Vec<String>],
) {
    out.push_str(&format!("\n{title}:\n"));
    if rows.is_empty() {
        out.push_str(empty);
        out.push('\n');
    } else {
        out.push_str(&table(headers, rows));
    }
}

/// Columns aligned to their widest cell, headers upper-case, two spaces between columns and
/// none at the end of a line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths[i];
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(
        &headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>(),
        &mut out,
    );
    for row in rows {
        line(row, &mut out);
    }
    out
}

/// A progress bar on stderr for `total` steps (drawn only on a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["a", "bb"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["z".into(), "wwww".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    wwww\n");
    }

    #[test]
    fn cells_escape_control_characters_and_show_null_as_a_dash() {
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(cell(None), "-");
        assert_eq!(text(&serde_json::json!(3)), "3");
        assert!(!cell(Some("a\u{1b}[31mb")).contains('\u{1b}'));
    }

    #[test]
    fn a_limit_over_i32_is_a_usage_error() {
        assert_eq!(limit_arg(50).ok(), Some(50));
        assert_eq!(limit_arg(u32::MAX).map_err(|f| f.code()), Err(2));
    }
}
