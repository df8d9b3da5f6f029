//! Deadlines inside a statement: how a dispatch round bounds the time a condition may take.
//!
//! Conditions run in the dispatcher over rows any writer chooses, and `statement_timeout` cannot
//! help inside a running function (it is armed once per client statement, and the background
//! dispatcher has none). So the round arms a timeout of its own (`observer_deadline(ms)`), a
//! user timeout of the server's timeout machinery (`utils/timeout.h`). When it fires, its handler
//! asks for a query cancel; the statement running then ends with SQLSTATE 57014
//! (`query_canceled`), which the round catches in a subtransaction. Disarming
//! (`observer_deadline(0)`) says whether it fired, so that a real cancel (an operator's
//! `pg_cancel_backend`) is told apart and raised again. A transaction that ends while armed
//! disarms it (transaction callback), so it never cancels a later statement.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_sys, register_xact_callback, PgXactCallbackEvent};

/// `utils/timeout.h`'s `TimeoutId::USER_TIMEOUT`: ask `RegisterTimeout` for a free user slot.
const USER_TIMEOUT: c_int = 12;

unsafe extern "C-unwind" {
    fn RegisterTimeout(id: c_int, handler: Option<unsafe extern "C-unwind" fn()>) -> c_int;
    fn enable_timeout_after(id: c_int, delay_ms: c_int);
    fn disable_timeout(id: c_int, keep_indicator: bool);
}

/// The registered timeout id in this backend, or -1.
static TIMEOUT_ID: AtomicI32 = AtomicI32::new(-1);
/// Set by the handler: the armed deadline passed.
static FIRED: AtomicBool = AtomicBool::new(false);
/// Whether a deadline is armed.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Whether the end-of-transaction disarm is registered for the current transaction.
static AT_END: AtomicBool = AtomicBool::new(false);

/// Runs in the SIGALRM handler: only async-signal-safe work (flags and the process latch), as the
/// server's own `StatementTimeoutHandler` does.
unsafe extern "C-unwind" fn on_deadline() {
    FIRED.store(true, Ordering::SeqCst);
    // SAFETY: setting the interrupt flags and the process latch from a signal handler is how
    // Postgres itself requests a cancel (postgres.c, StatementCancelHandler).
    unsafe {
        pg_sys::InterruptPending = 1;
        pg_sys::QueryCancelPending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

fn timeout_id() -> c_int {
    let id = TIMEOUT_ID.load(Ordering::SeqCst);
    if id >= 0 {
        return id;
    }
    // SAFETY: registers a handler in a free user slot, once per backend; raises an ERROR if
    // every slot is taken (pg_guard_ffi_boundary turns that into a Rust panic / SQL error).
    let id = unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            RegisterTimeout(USER_TIMEOUT, Some(on_deadline))
        })
    };
    TIMEOUT_ID.store(id, Ordering::SeqCst);
    id
}

fn disarm() -> bool {
    if ARMED.swap(false, Ordering::SeqCst) {
        // SAFETY: disabling our own registered timeout; harmless when it already fired.
        unsafe {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| disable_timeout(timeout_id(), false))
        };
    }
    let fired = FIRED.swap(false, Ordering::SeqCst);
    if fired {
        // A cancel the deadline asked for and nothing has acted on yet (it fired just after the
        // guarded statement ended) must not cancel the next one.
        // SAFETY: clearing the flag the handler set, as ProcessInterrupts does.
        unsafe { pg_sys::QueryCancelPending = 0 };
    }
    fired
}

/// `observer_deadline(ms integer) RETURNS boolean`: with `ms > 0`, arm a deadline `ms` from now
/// (replacing one armed before); with 0 or NULL, disarm. Returns whether the deadline armed
/// before this call had passed. Internal (the dispatcher's): granted to nobody.
#[pg_extern(volatile, parallel_unsafe)]
pub fn observer_deadline(ms: Option<i32>) -> bool {
    let fired = disarm();
    if let Some(ms) = ms.filter(|ms| *ms > 0) {
        let id = timeout_id();
        ARMED.store(true, Ordering::SeqCst);
        if !AT_END.swap(true, Ordering::SeqCst) {
            for event in [PgXactCallbackEvent::Abort, PgXactCallbackEvent::Commit] {
                register_xact_callback(event, || {
                    AT_END.store(false, Ordering::SeqCst);
                    disarm();
                });
            }
        }
        // SAFETY: arming our own registered timeout.
        unsafe { pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| enable_timeout_after(id, ms)) };
    }
    fired
}
