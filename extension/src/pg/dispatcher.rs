//! The dispatcher background worker: runs `observer_dispatch()` rounds in the database named by
//! `fraiseql_observers.database`, back to back while there is a backlog, every
//! `fraiseql_observers.dispatch_interval` when idle.
//!
//! It survives SQL errors (logs, aborts the transaction, backs off, goes on), idles until
//! `CREATE EXTENSION` has run and while the extension's SQL is of another version than this
//! library (the window of an upgrade before `ALTER EXTENSION ... UPDATE`, `pg::compat`),
//! rereads its settings on SIGHUP and exits on SIGTERM. Only one dispatcher runs a round at a
//! time per database (`observer_dispatch` holds the checkpoint row), so external workers running
//! rounds for hosts without preload never collide with it.
//!
//! Read top-down: the main function waits on the latch and calls [`Dispatcher::step`], which
//! backs off after a failure, runs a round in a transaction ([`tick`]) and prunes when the
//! shared schedule says so ([`prune_once`]); [`in_transaction`] is the one error-recovery path.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use fraiseql_observers_core::backoff::Backoff;
use fraiseql_observers_core::prune::{self, Pruned};

use crate::gucs;
use crate::pg::compat;
use crate::pg::wake;

/// Pause after a first failed round (doubling with each further one).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
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

    let mut dispatcher = Dispatcher::new(database);
    let mut wait = Duration::ZERO;
    while BackgroundWorker::wait_latch(Some(wait)) {
        reload_settings_on_sighup();
        wait = dispatcher.step();
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

/// Reread postgresql.conf when the postmaster asked (SIGHUP).
fn reload_settings_on_sighup() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: called from the worker's main loop, outside any transaction, as Postgres'
        // own background workers do after their SIGHUP handler set the flag.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

/// The dispatcher's state between latch wake-ups.
struct Dispatcher {
    database: String,
    /// Waits after consecutive failed rounds: 200 ms, 400 ms, ... up to [`MAX_BACKOFF`].
    backoff: Backoff,
    /// After a failed round, no round before this, even if commits keep setting the latch.
    backoff_until: Option<Instant>,
    prune: prune::Schedule,
    /// The SQL version last reported as waiting for an update: logged once, not every 2 s.
    waiting_for: Option<String>,
}

impl Dispatcher {
    fn new(database: String) -> Self {
        Dispatcher {
            database,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
            backoff_until: None,
            prune: prune::Schedule::new(),
            waiting_for: None,
        }
    }

    /// One wake-up: a round (unless backing off or disabled), retention when due. Returns how
    /// long to sleep before the next one (a commit's wake-up cuts it short).
    fn step(&mut self) -> Duration {
        if let Some(until) = self.backoff_until {
            let now = Instant::now();
            if now < until {
                return until - now;
            }
            self.backoff_until = None;
        }
        if !gucs::enabled() {
            return gucs::dispatch_interval().max(Duration::from_secs(1));
        }
        let batch = gucs::batch_size();
        wake::clear_wake_request();
        let wait = match in_transaction(|| tick(batch)) {
            Ok(Tick::NotInstalled) => {
                self.backoff.reset();
                NOT_INSTALLED_WAIT
            }
            Ok(Tick::OtherVersion(version)) => {
                self.backoff.reset();
                self.wait_for_update(version);
                return NOT_INSTALLED_WAIT;
            }
            Ok(Tick::Dispatched(n)) => self.dispatched(n, batch),
            Err(error) => self.failed(&error),
        };
        self.prune_if_due();
        wait
    }

    /// The extension's SQL is of another version: say so once per version.
    fn wait_for_update(&mut self, version: String) {
        if self.waiting_for.as_deref() != Some(version.as_str()) {
            warning!(
                "fraiseql_observers dispatcher: the library is {} but the extension's SQL in database \"{}\" is {version}; \
                 no rounds until ALTER EXTENSION fraiseql_observers UPDATE",
                compat::LIBRARY_VERSION,
                self.database
            );
            self.waiting_for = Some(version);
        }
    }

    /// A round read `n` events: go again at once on a full page (a backlog) or when a commit
    /// signalled during the round (its wake-up may have been consumed, see wake_requested);
    /// otherwise sleep `dispatch_interval`.
    fn dispatched(&mut self, n: i64, batch: i32) -> Duration {
        if let Some(version) = self.waiting_for.take() {
            log!("fraiseql_observers dispatcher: the extension's SQL was updated from {version}; dispatching");
        }
        self.backoff.reset();
        if n >= i64::from(batch) || wake::wake_requested() {
            Duration::ZERO
        } else {
            gucs::dispatch_interval()
        }
    }

    /// A round failed: back off.
    fn failed(&mut self, error: &str) -> Duration {
        let wait = self.backoff.next_wait();
        self.backoff_until = Some(Instant::now() + wait);
        warning!(
            "fraiseql_observers dispatcher: round failed ({error}); retrying in {} ms",
            wait.as_millis()
        );
        wait
    }

    /// Retention on its schedule (`fraiseql_observers_core::prune`).
    fn prune_if_due(&mut self) {
        if !self.prune.start_if_due() {
            return;
        }
        match in_transaction(prune_once) {
            Ok(pruned) => self.prune.finished(pruned),
            Err(error) => warning!("fraiseql_observers dispatcher: pruning failed ({error})"),
        }
    }
}

/// Run `f` in a transaction of its own. An ERROR it raises (which pgrx turns into a panic)
/// aborts the transaction and comes back as its message, so the loop goes on.
fn in_transaction<T>(
    f: impl FnOnce() -> T + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(|| BackgroundWorker::transaction(f))).map_err(|payload| {
        // SAFETY: the transaction body raised an ERROR that pgrx turned into a panic and the
        // transaction is left open and failed; abort it before the next one starts.
        unsafe { pg_sys::AbortCurrentTransaction() };
        describe(&payload)
    })
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
/// one batch of each. Returns what it deleted.
fn prune_once() -> Pruned {
    let Some(Installed { schema, version }) = installed() else {
        return Pruned::default();
    };
    if !compat::sql_version_matches(&version) {
        return Pruned::default();
    }
    let sql = format!(
        "SELECT events_deleted, jobs_deleted FROM {}.observer_prune(max_rows => {})",
        spi::quote_identifier(&schema),
        prune::BATCH
    );
    let Ok((Some(events), Some(jobs))) = Spi::get_two::<i64, i64>(&sql) else {
        return Pruned::default();
    };
    if events > 0 || jobs > 0 {
        log!("fraiseql_observers dispatcher: pruned {events} events and {jobs} completed jobs");
    }
    Pruned { events, jobs }
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
