//! Waking the dispatcher at commit. `LISTEN` is refused inside a background worker, so, as pg_net
//! does, the dispatcher publishes its `pgprocno` in shared memory and a committing transaction
//! that wrote events sets its latch: once per transaction, from a commit callback, so an aborted
//! transaction wakes nobody and a 1,000-row transaction wakes it once.
//!
//! Without `shared_preload_libraries` there is no shared memory and no dispatcher: waking is a
//! no-op and external workers poll.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, register_xact_callback, PgAtomic, PgXactCallbackEvent};

/// `pgprocno` of the running dispatcher, or -1.
// SAFETY: the name is unique to this extension.
static DISPATCHER_PROCNO: PgAtomic<AtomicI32> =
    unsafe { PgAtomic::new(c"fraiseql_observers.dispatcher_procno") };

/// Set by a committing transaction that signalled the dispatcher, cleared by the dispatcher just
/// before it starts a round: while a round is pending, further commits need not signal again
/// (their events are visible to that round), so a busy server sends about one signal per round
/// instead of one per transaction.
// SAFETY: the name is unique to this extension.
static WAKE_REQUESTED: PgAtomic<AtomicBool> =
    unsafe { PgAtomic::new(c"fraiseql_observers.wake_requested") };

/// Set in `_PG_init` while preloading; inherited by every backend the postmaster forks. Only then
/// does [`DISPATCHER_PROCNO`] exist.
static SHMEM_READY: AtomicBool = AtomicBool::new(false);

/// Set when this backend's current transaction has registered its commit wake-up.
static WAKE_PENDING: AtomicBool = AtomicBool::new(false);

/// Reserve the shared memory; called from `_PG_init` while preloading.
pub fn init_shmem() {
    pg_shmem_init!(DISPATCHER_PROCNO = AtomicI32::new(-1));
    pg_shmem_init!(WAKE_REQUESTED = AtomicBool::new(false));
    SHMEM_READY.store(true, Ordering::Relaxed);
}

/// The dispatcher announces itself (its own `pgprocno`), or withdraws with `None`.
pub fn publish_dispatcher(procno: Option<i32>) {
    if SHMEM_READY.load(Ordering::Relaxed) {
        DISPATCHER_PROCNO
            .get()
            .store(procno.unwrap_or(-1), Ordering::Release);
    }
}

/// The dispatcher is about to start a round: commits from now on must signal again. Called
/// before the round's transaction (and so its snapshot) begins, so a commit that found the flag
/// set is always visible to the round.
pub fn clear_wake_request() {
    if SHMEM_READY.load(Ordering::Relaxed) {
        WAKE_REQUESTED.get().store(false, Ordering::Release);
    }
}

/// Whether a commit signalled since the last [`clear_wake_request`]. The dispatcher asks after a
/// round: the signal set its latch, but a wait inside the round (a lock wait, for one, waits on the
/// same latch and resets it) can have consumed it, and with the flag set no later commit signals
/// again: sleeping then would leave that commit's events waiting for the poll interval.
pub fn wake_requested() -> bool {
    SHMEM_READY.load(Ordering::Relaxed) && WAKE_REQUESTED.get().load(Ordering::Acquire)
}

/// Arrange for the dispatcher to be woken when the current transaction commits.
pub fn wake_at_commit() {
    if !SHMEM_READY.load(Ordering::Relaxed) || WAKE_PENDING.swap(true, Ordering::Relaxed) {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_PENDING.store(false, Ordering::Relaxed);
        let procno = DISPATCHER_PROCNO.get().load(Ordering::Acquire);
        if procno >= 0 && !WAKE_REQUESTED.get().swap(true, Ordering::AcqRel) {
            // SAFETY: ProcSendSignal sets the latch of the PGPROC slot `procno`, which lives in
            // shared memory for the server's lifetime; a stale number (dispatcher gone) only
            // wakes some other process once, which latches tolerate.
            unsafe { pg_sys::ProcSendSignal(procno) };
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        WAKE_PENDING.store(false, Ordering::Relaxed);
    });
    // PREPARE TRANSACTION ends the transaction in this backend without Commit or Abort; COMMIT
    // PREPARED (maybe in another session) wakes nobody, and the poll interval picks it up.
    register_xact_callback(PgXactCallbackEvent::Prepare, || {
        WAKE_PENDING.store(false, Ordering::Relaxed);
    });
}
