//! `fraiseql_observers`: capture committed row changes and queue reliable outbound actions.
//!
//! Most of the extension is SQL (`sql/*.sql`, loaded below): observers, dispatch, queue, audit and
//! status are set-based work that SQL does best. Rust holds what SQL cannot do well: the capture
//! triggers, native because they run inside every write (`pg/capture.rs`), the GUCs, the
//! dispatcher background worker, and validation shared with the worker (`fraiseql-observers-core`).

// pgrx raises an `Err` with its own SQLSTATE only when the error type is `ErrorReport` itself,
// by value (it downcasts): boxing it would turn every error into SQLSTATE 22000.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

mod api;
mod gucs;
mod pg;
mod tests;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/capture.sql",
    name = "capture",
    requires = ["schema"]
);
extension_sql_file!(
    "../../sql/observers.sql",
    name = "observers",
    requires = [
        "capture",
        api::observer_validate_action,
        pg::capture::observer_capture,
        pg::capture::observer_capture_rows
    ]
);
extension_sql_file!(
    "../../sql/dispatch.sql",
    name = "dispatch",
    requires = [
        "observers",
        pg::rows::decode_rows,
        pg::rows::decode_row,
        pg::rows::decode_rows_at,
        pg::deadline::observer_deadline,
        pg::jsonsize::observer_json_size,
        pg::jsonsize::observer_bounded_doc,
        pg::rows::observer_row_to_jsonb
    ]
);
// The audit trail before the queue: the outcome functions record attempts with its words.
extension_sql_file!(
    "../../sql/audit.sql",
    name = "audit",
    requires = ["dispatch"]
);
extension_sql_file!("../../sql/queue.sql", name = "queue", requires = ["audit"]);
extension_sql_file!("../../sql/dlq.sql", name = "dlq", requires = ["queue"]);
extension_sql_file!(
    "../../sql/retention.sql",
    name = "retention",
    requires = ["dlq"]
);
extension_sql_file!(
    "../../sql/status.sql",
    name = "status",
    requires = ["retention"]
);
extension_sql_file!(
    "../../sql/console.sql",
    name = "console",
    requires = ["status"]
);
extension_sql_file!(
    "../../sql/roles.sql",
    name = "roles",
    requires = ["status"],
    finalize
);

/// Called when the library is loaded: by `shared_preload_libraries` at server start (then the
/// postmaster-level GUCs and the dispatcher background worker are registered), or on first use
/// in a session.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a postmaster global that Postgres sets before it loads preload libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::init(preloading);
    if preloading {
        pg::wake::init_shmem();
        pg::dispatcher::register();
    }
}

/// Required by `cargo pgrx test`: settings for its temporary cluster.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'fraiseql_observers'"]
    }
}
