//! Health for the metrics listener: every [`HEALTH_EVERY`], `observer_status()` into the metrics
//! (queue depth by state, quarantined events, the dispatcher's lag, backlog, time since its last
//! round, blocked) and readiness (`/readyz`).

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;

use super::Context;

/// How often the worker reads `observer_status()` for its metrics and readiness (the status
/// counts the jobs table: not on every claim).
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Longest `observer_status()` may take before `/readyz` says the database does not answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(15);

/// Ready while the status answers within [`HEALTH_TIMEOUT`] and the extension is of a supported
/// version. An extension updated under a running worker to another series makes it not ready
/// (and says so once in the log) but does not stop it: the update keeps the previous series'
/// calls working until the workers are rolled (extension first, then workers); a reconnect
/// refuses it. Runs until aborted.
pub(super) async fn watch(ctx: Arc<Context>, db: Arc<Db>) {
    let mut every = tokio::time::interval(HEALTH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: Option<String> = None;
    loop {
        every.tick().await;
        match tokio::time::timeout(HEALTH_TIMEOUT, db.health()).await {
            Ok(Ok(health)) => {
                ctx.metrics.record_health(&health);
                match crate::version::check(&health.extension_version) {
                    Ok(()) => ctx.metrics.set_ready(),
                    Err(mismatch) => {
                        if warned.as_deref() != Some(mismatch.extension.as_str()) {
                            tracing::warn!(error = %mismatch, "the extension was changed under this worker: it keeps its session, but will not reconnect");
                            warned = Some(mismatch.extension.clone());
                        }
                        ctx.metrics.set_not_ready(mismatch.to_string());
                    }
                }
            }
            Ok(Err(e)) => ctx.metrics.set_not_ready(format!("{e}")),
            Err(_) => ctx.metrics.set_not_ready(format!(
                "the database did not answer observer_status() within {} s",
                HEALTH_TIMEOUT.as_secs()
            )),
        }
    }
}
