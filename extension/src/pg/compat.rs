//! The library with an older version's SQL: the window of an upgrade between the server's restart
//! on the new library and `ALTER EXTENSION fraiseql_observers UPDATE` (docs/runbook.md,
//! "Upgrading").
//!
//! In that window the database still has the previous version's SQL objects, and those call this
//! library: every symbol an older version's SQL names must be exported, or its functions would not
//! load (and `CREATE EXTENSION ... VERSION` of that release, which the upgrade test runs, would
//! fail). A symbol whose arguments are unchanged (capture, action validation) is the real function;
//! one whose arguments changed is here, checking what the old declaration let through. The
//! dispatcher runs no rounds until the update (`pg::dispatcher`, [`sql_version_matches`]); the
//! old SQL's functions work for the sessions that call them (a 0.1.0 worker's claims).
//!
//! | version | symbol | here |
//! |---|---|---|
//! | 0.1.0 | `observer_decode_rows_wrapper`, `observer_decode_rows_at_wrapper`, `observer_decode_row_wrapper` | the decoders, `rows anyelement` refused unless it is a `bytea` |

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::pg::rows::{self, RawBytea, RawJsonb};

/// The SQL version this library belongs to (the extension's `default_version`).
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether the extension's SQL objects (`pg_extension.extversion`) are the ones this library
/// was built with.
pub fn sql_version_matches(extversion: &str) -> bool {
    extversion == LIBRARY_VERSION
}

/// 0.1.0 declared the batch decoders' `rows` as `anyelement`; a value of any other type than
/// `bytea` is refused here, before it could be read as one (0.2.0's SQL declares `bytea`, which
/// the server checks).
fn bytea(rows: pgrx::AnyElement, function: &str) -> Result<RawBytea, ErrorReport> {
    if rows.oid() != pg_sys::BYTEAOID {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("{function}: rows must be a bytea batch written by the capture trigger"),
            "fraiseql_observers upgrade",
        )
        .set_hint(
            "Run ALTER EXTENSION fraiseql_observers UPDATE (docs/runbook.md, \"Upgrading\").",
        ));
    }
    Ok(RawBytea(rows.datum()))
}

// The 0.1.0 symbols, exported without SQL (0.2.0's SQL names `decode_rows_wrapper`...).

/// 0.1.0's `observer_decode_rows(cols text[], col_types oid[], rows anyelement)`.
#[pg_extern(sql = false, stable, parallel_safe)]
pub fn observer_decode_rows(
    cols: Vec<String>,
    col_types: Vec<pg_sys::Oid>,
    rows: pgrx::AnyElement,
) -> Result<SetOfIterator<'static, RawJsonb>, ErrorReport> {
    rows::decode_rows(cols, col_types, bytea(rows, "observer_decode_rows")?)
}

/// 0.1.0's `observer_decode_rows_at(cols text[], col_types oid[], rows anyelement, ks integer[])`.
#[pg_extern(sql = false, stable, parallel_safe)]
pub fn observer_decode_rows_at(
    cols: Vec<String>,
    col_types: Vec<pg_sys::Oid>,
    rows: pgrx::AnyElement,
    ks: Vec<Option<i32>>,
) -> Result<SetOfIterator<'static, Option<RawJsonb>>, ErrorReport> {
    rows::decode_rows_at(cols, col_types, bytea(rows, "observer_decode_rows_at")?, ks)
}

/// 0.1.0's `observer_decode_row(cols text[], col_types oid[], rows anyelement, k integer)`.
#[pg_extern(sql = false, stable, parallel_safe)]
pub fn observer_decode_row(
    cols: Vec<String>,
    col_types: Vec<pg_sys::Oid>,
    rows: pgrx::AnyElement,
    k: i32,
) -> Result<Option<RawJsonb>, ErrorReport> {
    rows::decode_row(cols, col_types, bytea(rows, "observer_decode_row")?, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_version_matches() {
        assert!(sql_version_matches(LIBRARY_VERSION));
        assert!(!sql_version_matches("0.1.0"));
        assert!(!sql_version_matches(""));
    }
}
