//! The console's pages, one file per family: `login` (sign-in and sign-out), `overview` (`/`),
//! `observers`, `events` (search and an event's timeline), `dlq` (dead letters: list, show,
//! retry, purge, and the progress of large operations) and `log` (the operator action log).
//! Each page reads through the extension's public functions; what they share is here: a query
//! ([`Console::json`]) and an action recorded with its operator ([`Console::act`]).

pub mod dlq;
pub mod events;
pub mod log;
pub mod login;
pub mod observers;
pub mod overview;

use serde_json::Value;
use tokio_postgres::types::ToSql;

use super::auth::Viewer;
use super::{Console, PageError};

/// A change made from the console, for the operator action log.
pub struct Record<'a> {
    /// `dlq_retry`, `dlq_purge`, `observer_enable`, ... (observer.console_actions.action).
    pub action: &'a str,
    /// The observer, or the jobs ("3 dead jobs").
    pub target: String,
}

impl Console {
    /// One JSON value computed by `sql` (one row, one column sent as text), as the console's
    /// database role.
    pub(super) async fn json(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Value, PageError> {
        let conn = self.pool.get().await?;
        Ok(conn.query_json(sql, params).await?)
    }

    /// Run `call` (a statement of the extension's functions whose first column is the result,
    /// as JSON text, with `$1..$n` bound to `params`) and record it in the operator action log,
    /// in one statement, so in one transaction: the change and its entry are written together
    /// or not at all. The entry's detail is `{"result": <the call's result>, ...detail}`.
    pub(super) async fn act(
        &self,
        viewer: &Viewer,
        record: Record<'_>,
        call: &str,
        params: &[&(dyn ToSql + Sync)],
        detail: Value,
    ) -> Result<Value, PageError> {
        let n = params.len();
        let sql = format!(
            "WITH done AS MATERIALIZED ({call}) \
             SELECT (SELECT done.result FROM done)::text \
             FROM (SELECT @extschema@.observer_console_record(${}, ${}, ${}, \
                   pg_catalog.jsonb_build_object('result', (SELECT done.result FROM done)) \
                   OPERATOR(pg_catalog.||) ${}::text::jsonb)) logged",
            n + 1,
            n + 2,
            n + 3,
            n + 4
        );
        let detail = detail.to_string();
        let mut all: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        all.push(&viewer.operator);
        all.push(&record.action);
        all.push(&record.target);
        all.push(&detail);
        self.json(&sql, &all).await
    }
}

/// An optional filter: None for "".
pub fn opt(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}
