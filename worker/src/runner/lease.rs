//! Leases of the jobs this worker performs: every claimed job is held here (its id and fencing
//! token) from its claim until its outcome is handed to the reporter (a job waiting in an open
//! batch for more, [`super::batch`], included), and the heartbeat extends
//! the leases of all of them every third of the lease, so that an action slower than the lease
//! (webhook timeouts go up to 5 minutes) is not redelivered while it runs. The database side is
//! `observer_heartbeat` (sql/queue.sql).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::job::{ClaimedJob, Lease};

use super::Context;

/// The jobs being performed now (job id → fencing token).
#[derive(Default)]
pub(super) struct InFlight {
    jobs: Mutex<HashMap<i64, i64>>,
}

impl InFlight {
    /// `job` is being performed: renew its lease from now on.
    pub(super) fn hold(&self, job: &ClaimedJob) {
        self.lock().insert(job.job_id, job.token);
    }

    /// `job` is finished (its outcome goes to the reporter): stop renewing its lease.
    pub(super) fn release(&self, job: &ClaimedJob) {
        self.lock().remove(&job.job_id);
    }

    /// Every lease held now.
    fn leases(&self) -> Vec<Lease> {
        self.lock()
            .iter()
            .map(|(&job_id, &token)| Lease { job_id, token })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, i64>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Extend the leases of in-flight jobs every third of the lease. When a heartbeat fails (the
/// connection is lost or the database does not answer), `leases_lost` is cancelled: the session
/// stops claiming, since it could not hold new leases either.
pub(super) async fn heartbeat(ctx: Arc<Context>, db: Arc<Db>, leases_lost: CancellationToken) {
    let lease = ctx.config.lease();
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(500)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let jobs = ctx.in_flight.leases();
        if jobs.is_empty() {
            continue;
        }
        match db.heartbeat(&jobs, lease).await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(
                    ?lost,
                    "leases lost: these jobs may be redelivered by another worker"
                )
            }
            Ok(_) => tracing::debug!(jobs = jobs.len(), "leases extended"),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    in_flight = jobs.len(),
                    "cannot renew leases: no more claims on this connection; reconnecting (jobs whose lease runs out are redelivered)"
                );
                leases_lost.cancel();
                return;
            }
        }
    }
}
