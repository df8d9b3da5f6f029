//! The `#[pg_extern]` functions written in Rust. Each is a thin wrapper: parse, call the shared
//! logic, map the error to an explicit SQLSTATE with DETAIL and HINT.

use fraiseql_observers_core::{net, Action, ActionError};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

/// `observer_validate_action(action jsonb) RETURNS jsonb`: the action in its normalised form
/// (defaults filled in), or SQLSTATE 22023 naming the bad field and the fix. `observer_create`
/// calls it, so a definition the worker cannot perform never reaches the table, and neither
/// does a credential written where a reference to a worker secret belongs (a literal
/// `Authorization` header, a Slack webhook URL) unless the action allows it explicitly.
#[pg_extern(stable, parallel_safe)]
pub fn observer_validate_action(action: JsonB) -> Result<JsonB, ErrorReport> {
    let parsed = Action::from_value(action.0).map_err(action_error)?;
    parsed.check_credentials().map_err(action_error)?;
    check_network(&parsed)?;
    let normalised = serde_json::to_value(parsed).map_err(|e| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("could not serialise action: {e}"),
            function_name!(),
        )
    })?;
    Ok(JsonB(normalised))
}

/// A URL written as a literal address must pass the network policy (the worker checks every
/// address again at delivery, including those a host name resolves to).
fn check_network(action: &Action) -> Result<(), ErrorReport> {
    let Some(ip) = action.literal_url().and_then(net::literal_host_of) else {
        return Ok(());
    };
    let allow = net::parse_allowlist(&crate::gucs::allowed_networks()).map_err(|e| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("fraiseql_observers.allowed_networks is invalid: {e}"),
            function_name!(),
        )
    })?;
    net::check(ip, &allow).map_err(|reason| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid observer action: action.url points to {ip}, a {reason} address"),
            function_name!(),
        )
        .set_hint(
            "Workers refuse such targets (SSRF guard). Use a public address or host name, or allow the block in fraiseql_observers.allowed_networks and in the workers' http.allow_networks.",
        )
    })
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

    /// Slack and e-mail actions are validated too: templates compile, addresses parse.
    #[pg_test]
    fn validate_action_checks_templates_and_addresses() {
        let v = Spi::get_one::<pgrx::JsonB>(
            r#"SELECT observer_validate_action('{"type":"email","to":["{{ new.email }}"],"subject":"Order {{ new.id }}","body":"Hi"}')"#,
        )
        .expect("spi")
        .expect("not null");
        assert_eq!(v.0["type"], "email");
        Spi::run(
            r#"DO $t$ BEGIN
                 PERFORM observer_validate_action('{"type":"slack","url":"https://h.test/x","text":"{{ new.id "}');
                 RAISE EXCEPTION 'accepted';
               EXCEPTION WHEN invalid_parameter_value THEN
                 IF SQLERRM NOT LIKE '%action.text is not a valid template%' THEN RAISE; END IF;
               END $t$"#,
        )
        .expect("a broken template is refused with 22023 naming the field");
    }

    /// Every SSRF form written as a literal address is refused at creation, with the reason;
    /// an allowlisted block is accepted.
    #[pg_test]
    fn validate_action_refuses_forbidden_literal_addresses() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/",
            "http://100.64.0.1/",
            "http://[fd00:ec2::254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://0.0.0.0/",
            "http://224.0.0.1/",
        ] {
            let sql = format!(
                r#"DO $t$ BEGIN PERFORM observer_validate_action('{{"type":"webhook","url":"{url}"}}');
                   RAISE EXCEPTION 'accepted'; EXCEPTION WHEN invalid_parameter_value THEN NULL; END $t$"#
            );
            Spi::run(&sql).unwrap_or_else(|e| panic!("{url} was not refused: {e:?}"));
        }
        Spi::run("SET LOCAL fraiseql_observers.allowed_networks = '127.0.0.0/8, ::1/128'")
            .expect("set");
        Spi::run(
            r#"SELECT observer_validate_action('{"type":"webhook","url":"http://127.1:9/"}')"#,
        )
        .expect("allowlisted");
        Spi::run(
            r#"SELECT observer_validate_action('{"type":"webhook","url":"https://example.com/"}')"#,
        )
        .expect("host names are checked by the worker at delivery");
    }

    /// References to worker secrets are stored as written; a credential written where one
    /// belongs is refused with 22023 naming the field (tests/tests/secrets.rs has the rest).
    #[pg_test]
    fn validate_action_keeps_references_and_refuses_literal_credentials() {
        let v = Spi::get_one::<pgrx::JsonB>(
            r#"SELECT observer_validate_action('{"type":"webhook","url":{"secret":"hook"},"headers":{"Authorization":{"secret":"api","prefix":"Bearer "}}}')"#,
        )
        .expect("spi")
        .expect("not null");
        assert_eq!(v.0["url"]["secret"], "hook");
        assert_eq!(v.0["headers"]["Authorization"]["prefix"], "Bearer ");
        Spi::run(
            r#"DO $t$ BEGIN
                 PERFORM observer_validate_action('{"type":"webhook","url":"https://a.example/h","headers":{"Authorization":"Bearer x"}}');
                 RAISE EXCEPTION 'accepted';
               EXCEPTION WHEN invalid_parameter_value THEN
                 IF SQLERRM NOT LIKE '%action.headers.Authorization holds a literal credential%' THEN RAISE; END IF;
               END $t$"#,
        )
        .expect("a literal Authorization header is refused with 22023 naming the field");
    }

    #[pg_test(error = "invalid observer action: action.url scheme \"ftp\" is not supported")]
    fn validate_action_refuses_bad_scheme() {
        Spi::run(
            r#"SELECT observer_validate_action('{"type":"webhook","url":"ftp://example.com/"}')"#,
        )
        .expect("raises");
    }
}
