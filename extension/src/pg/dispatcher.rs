//! The dispatcher background worker: runs `observer_dispatch()` rounds in the database named by
//! `fraiseql_observers.database`, back to back while there is a backlog, every
//! `fraiseql_observers.dispatch_interval` when idle.
//!
//! It survives SQL errors (logs, aborts the transaction, backs off, goes on), idles until
//! `CREATE EXTENSION` has run and while the extension's SQL is of another version than this
//! library (the window of an upgrade before `ALTER EXTENSION ... UPDATE`, `pg::compat`), rereads its settings on SIGHUP and exits on SIGTERM. Only one
//! dispatcher runs a round at a time per database (`observer_dispatch` holds the checkpoint row),
//! so external workers running rounds for hosts without preload never collide with it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use fraiseql_observers_core::prune;

use crate::gucs;
use crate::pg::compat;
use crate::pg::wake;

/// Longest pause after consecutive failed rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pause between checks while the extension is not created in the database yet.
const NOT_INSTALLED_WAIT: Duration = Duration::from_secs(2);

/// Register the worker; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("fraiseql_observers dispatcher")
        .set_type("fraiseql_observers dispatcher")
        .set_function("fraiseql_observers_dispatcher_main")
        .set_library("fraiseql_observers")
        .enable_spi_access()
        // Restarted by the postmaster if it ever exits with an error (the default None never would).
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// What one tick found.
enum Tick {
    /// The extension is not installed in the database (yet).
    NotInstalled,
    /// The extension's SQL objects are of this version, not the library's: waiting for
    /// `ALTER EXTENSION fraiseql_observers UPDATE`.
    OtherVersion(String),
    /// A round ran and read this many events.
    Dispatched(i64),
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn fraiseql_observers_dispatcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("fraiseql_observers dispatcher started for database \"{database}\"");
    // SAFETY: MyProc is this process's own PGPROC, set up before a background worker's main runs.
    let procno = unsafe { (*pg_sys::MyProc).pgprocno };
    wake::publish_dispatcher(Some(procno));

    let mut failures: u32 = 0;
    let mut wait = Duration::ZERO;
    let mut last_prune = std::time::Instant::now();
    let mut prune_backlog = false;
    let mut backoff_until: Option<std::time::Instant> = None;
    // The SQL version last reported as waiting for an update: logged once, not every 2 s.
    let mut waiting_for: Option<String> = None;
    while BackgroundWorker::wait_latch(Some(wait)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, outside any transaction, as Postgres'
            // own background workers do after their SIGHUP handler set the flag.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // After a failed round, wait out the backoff even if commits keep setting the latch.
        if let Some(until) = backoff_until {
            let now = std::time::Instant::now();
            if now < until {
                wait = until - now;
                continue;
            }
            backoff_until = None;
        }
        if !gucs::enabled() {
            wait = gucs::dispatch_interval().max(Duration::from_secs(1));
            continue;
        }
        let batch = gucs::batch_size();
        wake::clear_wake_request();
        match catch_unwind(AssertUnwindSafe(|| {
            BackgroundWorker::transaction(|| tick(batch))
        })) {
            Ok(Tick::NotInstalled) => {
                failures = 0;
                wait = NOT_INSTALLED_WAIT;
            }
            Ok(Tick::OtherVersion(version)) => {
                failures = 0;
                wait = NOT_INSTALLED_WAIT;
                if waiting_for.as_deref() != Some(version.as_str()) {
                    warning!(
                        "fraiseql_observers dispatcher: the library is {} but the extension's SQL in database \"{database}\" is {version}; \
                         no rounds until ALTER EXTENSION fraiseql_observers UPDATE",
                        compat::LIBRARY_VERSION
                    );
                    waiting_for = Some(version);
                }
                continue;
            }
            Ok(Tick::Dispatched(n)) => {
                if let Some(version) = waiting_for.take() {
                    log!("fraiseql_observers dispatcher: the extension's SQL was updated from {version}; dispatching");
                }
                failures = 0;
                // A full page means a backlog: go again at once; so does a commit that signalled
                // during the round (its wake-up may have been consumed, see wake_requested).
                wait = if n >= i64::from(batch) || wake::wake_requested() {
                    Duration::ZERO
                } else {
                    gucs::dispatch_interval()
                };
            }
            Err(payload) => {
                // SAFETY: the transaction body raised an ERROR that pgrx turned into a panic and
                // the transaction is left open and failed; abort it before the next one starts.
                unsafe { pg_sys::AbortCurrentTransaction() };
                failures = failures.saturating_add(1);
                wait = backoff(failures);
                backoff_until = Some(std::time::Instant::now() + wait);
                warning!(
                    "fraiseql_observers dispatcher: round failed ({}); retrying in {} ms",
                    describe(&payload),
                    wait.as_millis()
                );
            }
        }
        // A full prune batch means more is due: go on next round instead of in a minute, so
        // retention keeps up with any completion rate.
        if last_prune.elapsed() >= prune::EVERY || prune_backlog {
            last_prune = std::time::Instant::now();
            prune_backlog = false;
            match catch_unwind(AssertUnwindSafe(|| {
                BackgroundWorker::transaction(prune_once)
            })) {
                Ok(more) => prune_backlog = more,
                Err(payload) => {
                    // SAFETY: as above: the failed transaction must be aborted before the next one.
                    unsafe { pg_sys::AbortCurrentTransaction() };
                    warning!(
                        "fraiseql_observers dispatcher: pruning failed ({})",
                        describe(&payload)
                    );
                }
            }
        }
        // Background workers flush their own statistics.
        // SAFETY: outside a transaction, as the stats collector requires.
        unsafe { pg_sys::pgstat_report_stat(false) };
    }
    wake::publish_dispatcher(None);
    log!("fraiseql_observers dispatcher stopping");
    // Exit code 1, not 0: the postmaster restarts a worker that exits 1 (after restart_time) and
    // forgets one that exits 0. At server shutdown nothing is restarted anyway, while a dispatcher
    // stopped by pg_terminate_backend() comes back by itself.
    // SAFETY: ends this process the Postgres way, outside any transaction.
    unsafe { pg_sys::proc_exit(1) };
}

/// One transaction: find the extension's schema, check its version, run a round.
fn tick(batch: i32) -> Tick {
    let Some(Installed { schema, version }) = installed() else {
        return Tick::NotInstalled;
    };
    if !compat::sql_version_matches(&version) {
        return Tick::OtherVersion(version);
    }
    let sql = format!(
        "SELECT {}.observer_dispatch($1, 'bgworker')",
        spi::quote_identifier(&schema)
    );
    // The round's commit does not wait for its WAL flush. Nothing can be lost by it: a crash
    // before the flush loses the round's jobs together with its checkpoint (both in this
    // transaction), so the next round makes them again from the events (durable: the writers'
    // own commits); and a delivery's completion is a synchronous commit that flushes the WAL up to
    // it, the round that made the job included. What it saves is a WAL flush per round (1-3 ms
    // with fsync), which is commit-to-delivery latency.
    Spi::run("SET LOCAL synchronous_commit = off").expect("SET LOCAL synchronous_commit");
    let n = Spi::get_one_with_args::<i64>(&sql, &[batch.into()])
        .ok()
        .flatten()
        .unwrap_or(0);
    Tick::Dispatched(n)
}

/// One transaction: delete events and completed jobs past `fraiseql_observers.event_retention`,
/// one batch of each. Returns whether a batch was full (more is due).
fn prune_once() -> bool {
    let Some(Installed { schema, version }) = installed() else {
        return false;
    };
    if !compat::sql_version_matches(&version) {
        return false;
    }
    let sql = format!(
        "SELECT events_deleted, jobs_deleted FROM {}.observer_prune(max_rows => {})",
        spi::quote_identifier(&schema),
        prune::BATCH
    );
    let Ok((Some(events), Some(jobs))) = Spi::get_two::<i64, i64>(&sql) else {
        return false;
    };
    if events > 0 || jobs > 0 {
        log!("fraiseql_observers dispatcher: pruned {events} events and {jobs} completed jobs");
    }
    prune::more_due(events, jobs)
}

/// The extension as installed in this database.
struct Installed {
    /// The schema of its functions.
    schema: String,
    /// The version of its SQL objects (`pg_extension.extversion`).
    version: String,
}

/// The extension, if it is installed in this database.
fn installed() -> Option<Installed> {
    match Spi::get_two::<String, String>(
        "SELECT n.nspname::text, e.extversion::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'fraiseql_observers'",
    ) {
        Ok((Some(schema), Some(version))) => Some(Installed { schema, version }),
        _ => None,
    }
}

/// Exponential backoff after consecutive failures: 100 ms, 200 ms, ... up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1u64 << failures.min(16))).min(MAX_BACKOFF)
}

fn describe(payload: &Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast_ref::<CaughtError>() {
        Some(CaughtError::PostgresError(e) | CaughtError::ErrorReport(e)) => {
            e.message().to_string()
        }
        Some(CaughtError::RustPanic { ereport, .. }) => ereport.message().to_string(),
        None => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
            .unwrap_or_else(|| "unknown error".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
