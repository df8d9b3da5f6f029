//! The `#[pg_extern]` functions written in Rust. Each is a thin wrapper: parse, call the shared
//! logic, map the error to an explicit SQLSTATE with DETAIL and HINT.

use fraiseql_observers_core::{Action, ActionError};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

/// `observer_validate_action(action jsonb) RETURNS jsonb`: the action in its normalised form
/// (defaults filled in), or SQLSTATE 22023 naming the bad field and the fix. `observer_create`
/// calls it, so a definition the worker cannot perform never reaches the table.
#[pg_extern(immutable, parallel_safe)]
pub fn observer_validate_action(action: JsonB) -> Result<JsonB, ErrorReport> {
    let parsed = Action::from_value(action.0).map_err(action_error)?;
    let normalised = serde_json::to_value(parsed).map_err(|e| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not serialise action: {e}"),
            function_name!(),
        )
    })?;
    Ok(JsonB(normalised))
}

fn action_error(e: ActionError) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("invalid observer action: {e}"),
        function_name!(),
    )
    .set_hint(e.hint())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn validate_action_fills_defaults() {
        let v = Spi::get_one::<pgrx::JsonB>(
            r#"SELECT observer_validate_action('{"type":"webhook","url":"https://example.com/h"}')"#,
        )
        .expect("spi")
        .expect("not null");
        assert_eq!(v.0["timeout_ms"], 10_000);
        assert_eq!(v.0["type"], "webhook");
    }

    #[pg_test(error = "invalid observer action: action.url scheme \"ftp\" is not supported")]
    fn validate_action_refuses_bad_scheme() {
        Spi::run(
            r#"SELECT observer_validate_action('{"type":"webhook","url":"ftp://example.com/"}')"#,
        )
        .expect("raises");
    }
}
