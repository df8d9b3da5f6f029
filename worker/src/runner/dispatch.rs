//! Dispatch rounds and retention run by the worker, for hosts where the extension's background
//! dispatcher does not run (no `shared_preload_libraries`): the first claim loop of a session
//! runs a round before each claim, unless another dispatcher ran one lately (then it stands by),
//! and prunes on the schedule the background dispatcher keeps too
//! (`fraiseql_observers_core::prune`).

use std::time::Duration;

use fraiseql_observers_core::prune;
use tokio::time::Instant;

use crate::db::{Db, DbError};

use super::Context;

/// A worker runs dispatch rounds only when no other dispatcher finished one within this (the
/// background dispatcher runs one at least every `dispatch_interval`, 1 s by default; the
/// database stretches the window to three of those if longer): it takes over this long after
/// the background dispatcher stopped.
const DISPATCH_STANDBY: Duration = Duration::from_secs(5);
/// How often a standing-by worker asks again.
const STANDBY_RECHECK: Duration = Duration::from_secs(1);

/// The dispatcher duty of one claim loop.
pub(super) struct DispatchDuty {
    /// While another dispatcher (the background one) runs rounds, this worker stands by and asks
    /// again only after [`STANDBY_RECHECK`].
    standby_until: Option<Instant>,
    prune: prune::Schedule,
}

impl DispatchDuty {
    pub(super) fn new() -> Self {
        DispatchDuty {
            standby_until: None,
            prune: prune::Schedule::new(),
        }
    }

    /// A round, unless standing by, then retention when due. Fails only when the connection is
    /// lost; other errors are logged and the next round tries again.
    pub(super) async fn round(&mut self, ctx: &Context, db: &Db) -> Result<(), DbError> {
        if self.standby_until.is_some_and(|t| t > Instant::now()) {
            return Ok(());
        }
        match db
            .dispatch(ctx.config.dispatch_batch, &ctx.worker, DISPATCH_STANDBY)
            .await
        {
            Ok(None) => {
                if self.standby_until.is_none() {
                    tracing::info!("another dispatcher runs rounds: this worker stands by");
                }
                self.standby_until = Some(Instant::now() + STANDBY_RECHECK);
                return Ok(());
            }
            Ok(Some(_)) => {
                if self.standby_until.take().is_some() {
                    tracing::info!(
                        "no other dispatcher ran a round lately: this worker dispatches"
                    );
                }
            }
            Err(e) if e.is_connection_lost() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "dispatch round failed");
                return Ok(());
            }
        }
        self.prune_if_due(db).await
    }

    /// Where no background dispatcher runs, retention is this worker's job too.
    async fn prune_if_due(&mut self, db: &Db) -> Result<(), DbError> {
        if !self.prune.start_if_due() {
            return Ok(());
        }
        match db.prune(prune::BATCH).await {
            Ok(pruned) => {
                if pruned.events > 0 || pruned.jobs > 0 {
                    tracing::info!(
                        events = pruned.events,
                        jobs = pruned.jobs,
                        "pruned old events and completed jobs"
                    );
                }
                self.prune.finished(pruned);
                Ok(())
            }
            Err(e) if e.is_connection_lost() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "pruning failed");
                Ok(())
            }
        }
    }
}
