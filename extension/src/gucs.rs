//! Every `fraiseql_observers.*` setting, with typed getters. Nothing else reads GUCs directly.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `fraiseql_observers.enabled` (bool, default on, reload): when off the background dispatcher
/// idles; capture continues, so nothing is lost, and dispatch resumes where it stopped.
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `fraiseql_observers.database` (string, default `postgres`, server start): the database whose
/// events the background dispatcher serves.
static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// `fraiseql_observers.dispatch_interval` (milliseconds, default 1000, reload): how long the
/// background dispatcher sleeps when a round found nothing to do.
static DISPATCH_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `fraiseql_observers.batch_size` (events, default 10000, reload): most events one dispatch
/// round reads; a larger backlog is worked off in consecutive rounds without sleeping.
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `fraiseql_observers.event_retention` (seconds, default 7 days, reload): events and completed
/// jobs older than this are pruned by `observer_prune()`, which the background dispatcher runs
/// every minute. Undispatched events, events of unfinished or dead jobs, and dead jobs are never
/// pruned.
static EVENT_RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// `fraiseql_observers.allowed_networks`: address blocks that action URLs written as literal
/// addresses may point into although the network policy refuses them (loopback, private, ...).
/// Comma-separated CIDRs; empty by default. The worker has its own list (`http.allow_networks`).
static ALLOWED_NETWORKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `fraiseql_observers.audit_search` (bool, default on, superuser): each attempt row indexes the
/// words of its error and delivered document for `observer_search()`. Off: cheaper outcome
/// reports, no text search. Read by `observer.words()` (`sql/queue.sql`) in the statements that
/// record attempts.
static AUDIT_SEARCH: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `fraiseql_observers.audit_export` (bool, default off, superuser): queue every attempt for
/// export to Elasticsearch by the workers that have `[elasticsearch]` configured. Turn it on for
/// the database (ALTER DATABASE ... SET) when such a worker runs, else the queue only grows.
static AUDIT_EXPORT: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `fraiseql_observers.condition_timeout` (milliseconds, default 1000, superuser): the longest a
/// dispatch round lets one condition (or dedup key) run on one event. A round that takes 30 times
/// this decides again event by event, each decision under this limit; a decision that reaches it
/// is recorded as `condition_timeout` against its observer, and the round goes on.
static CONDITION_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `fraiseql_observers.context` (string, default empty, any role): the writing application's
/// context for its transaction (`SET LOCAL fraiseql_observers.context = '{"request_id": "r-42"}'`),
/// a JSON object of at most [`MAX_CONTEXT_BYTES`] bytes, checked when it is set. Each event the
/// transaction captures carries it (`context` in the delivered document and in conditions).
static CONTEXT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Longest `fraiseql_observers.context` accepted, in bytes: it is copied into every event its
/// transaction captures.
pub const MAX_CONTEXT_BYTES: usize = 8192;

/// Register the settings. Postmaster-context settings can only be defined while preloading.
pub fn init(preloading: bool) {
    define_context();
    define_dispatch(preloading);
    define_audit_and_network();
}

/// The background dispatcher's settings: whether and how often it runs rounds, how much one
/// round reads, retention, the condition time limit, and the database it serves.
fn define_dispatch(preloading: bool) {
    GucRegistry::define_bool_guc(
        c"fraiseql_observers.enabled",
        c"Run dispatch rounds in the background worker.",
        c"When off, events are still captured and are dispatched once it is on again.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fraiseql_observers.dispatch_interval",
        c"Sleep between idle dispatch rounds.",
        c"The background dispatcher sleeps this long when a round found no new events; a commit that wrote events wakes it at once.",
        &DISPATCH_INTERVAL_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"fraiseql_observers.batch_size",
        c"Most events one dispatch round reads.",
        c"A larger backlog is worked off in consecutive rounds.",
        &BATCH_SIZE,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fraiseql_observers.event_retention",
        c"Age after which events and completed jobs are pruned.",
        c"Undispatched events, events of unfinished or dead jobs, and dead jobs are kept.",
        &EVENT_RETENTION_S,
        60,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"fraiseql_observers.condition_timeout",
        c"Longest a condition may run on one event in a dispatch round.",
        c"A round that takes 30 times this decides event by event under this limit; a condition that reaches it is recorded as condition_timeout for its observer.",
        &CONDITION_TIMEOUT_MS,
        10,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"fraiseql_observers.database",
        c"Database served by the background dispatcher.",
        c"The dispatcher connects to this database at server start.",
        &DATABASE,
        if preloading {
            GucContext::Postmaster
        } else {
            GucContext::Suset
        },
        GucFlags::default(),
    );
}

/// The audit trail's settings (its words for search, its export) and the address blocks action
/// URLs may point into.
fn define_audit_and_network() {
    GucRegistry::define_bool_guc(
        c"fraiseql_observers.audit_search",
        c"Index the words of each attempt's error and delivered document for observer_search().",
        c"Off makes outcome reports cheaper and disables text search of the audit trail.",
        &AUDIT_SEARCH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"fraiseql_observers.audit_export",
        c"Queue every attempt for export to Elasticsearch.",
        c"Workers with [elasticsearch] configured send the queued documents with the _bulk API; documents wait in observer.audit_outbox until Elasticsearch has them.",
        &AUDIT_EXPORT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"fraiseql_observers.allowed_networks",
        c"Address blocks action URLs may point into although the network policy refuses them.",
        c"Comma-separated CIDRs, e.g. 127.0.0.0/8 for local test sinks. Checked at observer_create for URLs written as literal addresses; workers check every resolved address against their own http.allow_networks.",
        &ALLOWED_NETWORKS,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// `fraiseql_observers.context`, with a check hook: a value that is not a JSON object of at most
/// [`MAX_CONTEXT_BYTES`] is refused by `SET` itself (22023, with the reason), so a transaction
/// learns at once, not at its first captured write.
fn define_context() {
    // SAFETY: the hook is a `#[pg_guard]` function (a panic in it becomes a Postgres ERROR) and
    // `CONTEXT` is a static that outlives the registration.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"fraiseql_observers.context",
            c"Application context carried by the events this transaction captures.",
            c"A JSON object of at most 8192 bytes, set with SET LOCAL by the writing application (request id, user id); delivered as \"context\" and usable in conditions and templates.",
            &CONTEXT,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_context_hook),
            None,
            None,
        );
    }
}

/// Why `value` cannot be a context, or Ok (empty means not set).
pub fn check_context(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > MAX_CONTEXT_BYTES {
        return Err(format!(
            "the context is {} bytes; at most {MAX_CONTEXT_BYTES} are allowed",
            value.len()
        ));
    }
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v @ serde_json::Value::Object(_)) if holds_nul(&v) => {
            Err("the context holds \\u0000, which a jsonb value cannot hold".to_string())
        }
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => {
            Err("the context must be a JSON object, e.g. {\"request_id\": \"r-42\"}".to_string())
        }
        Err(e) => Err(format!("the context is not valid JSON: {e}")),
    }
}

/// Whether a string or key anywhere in `value` holds U+0000 (JSON allows `\u0000`, jsonb does
/// not: such a context would pass `SET` and fail the transaction's first captured write).
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_context_hook(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: Postgres passes a valid pointer to the proposed value (a NUL-terminated string or
    // NULL); the messages are palloc'd copies, as GUC_check_errdetail() makes them.
    unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        let value = std::ffi::CStr::from_ptr(*newval).to_string_lossy();
        match check_context(&value) {
            Ok(()) => true,
            Err(why) => {
                pgrx::pg_sys::GUC_check_errcode(
                    pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
                );
                let detail = CString::new(why).unwrap_or_default();
                pgrx::pg_sys::GUC_check_errdetail_string = pgrx::pg_sys::pstrdup(detail.as_ptr());
                pgrx::pg_sys::GUC_check_errhint_string = pgrx::pg_sys::pstrdup(
                    c"Set a JSON object of at most 8192 bytes: SET LOCAL fraiseql_observers.context = '{\"request_id\": \"r-42\"}'.".as_ptr(),
                );
                false
            }
        }
    }
}

/// See [`CONTEXT`]: the value when set (checked when it was set), None when empty.
pub fn context() -> Option<CString> {
    CONTEXT.get().filter(|c| !c.as_bytes().is_empty())
}

/// See [`ENABLED`].
pub fn enabled() -> bool {
    ENABLED.get()
}

/// See [`DATABASE`].
pub fn database() -> String {
    DATABASE
        .get()
        .and_then(|s| s.into_string().ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres".to_string())
}

/// See [`DISPATCH_INTERVAL_MS`].
pub fn dispatch_interval() -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(DISPATCH_INTERVAL_MS.get()).unwrap_or(1000))
}

/// See [`BATCH_SIZE`].
pub fn batch_size() -> i32 {
    BATCH_SIZE.get()
}

/// See [`ALLOWED_NETWORKS`]: the raw list.
pub fn allowed_networks() -> String {
    ALLOWED_NETWORKS
        .get()
        .and_then(|s| s.into_string().ok())
        .unwrap_or_default()
}
