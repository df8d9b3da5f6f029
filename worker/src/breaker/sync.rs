//! The breakers beyond this process: circuits other replicas opened are opened here too (read
//! from Redis, when configured), transitions here are published to them, and this worker's
//! breakers are reported to the database (`observer_report_breakers`, read back by
//! `observer_status()`) and to the `open_circuits` gauge.

use std::time::Duration;

use crate::db::{BreakerRow, Db};
use crate::metrics::Metrics;
use crate::redis::Shared;

use super::{Breakers, Change, Verdict};

/// How often the circuits of other replicas are read, and the breakers checked for a report.
const EVERY: Duration = Duration::from_millis(250);

/// Open here the circuits other replicas open, four times a second; runs until aborted.
pub async fn follow_replicas(breakers: &Breakers, redis: &Shared) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        adopt(breakers, redis, &breakers.endpoints()).await;
    }
}

/// Open here the circuits of `endpoints` that another replica opened (none without Redis).
async fn adopt(breakers: &Breakers, redis: &Shared, endpoints: &[String]) {
    for (endpoint, until) in redis.open_circuits(endpoints).await {
        breakers.open_remote(&endpoint, until);
    }
}

/// Before a delivery: the first one to an endpoint in this process asks the other replicas
/// first (the periodic [`follow_replicas`] only follows endpoints this worker already knows).
/// Tracked after one read whatever the answer, so the endpoint is read once, not per job.
pub async fn learn(breakers: &Breakers, redis: &Shared, endpoint: &str) {
    if !breakers.knows(endpoint) {
        adopt(breakers, redis, &[endpoint.to_string()]).await;
        breakers.track(endpoint);
    }
}

/// After a delivery: the verdict goes to the breaker, and a circuit that opened or closed is
/// published to the other replicas.
pub async fn record(breakers: &Breakers, redis: &Shared, endpoint: &str, verdict: Verdict) {
    match breakers.after(endpoint, verdict) {
        Some(Change::Opened(until)) => redis.publish_open(endpoint, until).await,
        Some(Change::Closed) => redis.publish_closed(endpoint).await,
        None => {}
    }
}

/// Report this worker's breakers to the database when they change (checked four times a second;
/// a report is one statement, sent only on change), and keep the `open_circuits` gauge; runs
/// until aborted.
pub async fn report_to_database(breakers: &Breakers, db: &Db, worker: &str, metrics: &Metrics) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<BreakerRow>> = None;
    loop {
        every.tick().await;
        let report = breakers.report();
        let open = report.iter().filter(|b| b.state != "closed").count();
        metrics
            .open_circuits
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        // An open circuit's deadline is not a change: compared without it.
        let unchanged = last.as_ref().is_some_and(|last| {
            last.len() == report.len()
                && last.iter().zip(&report).all(|(a, b)| {
                    a.endpoint == b.endpoint && a.state == b.state && a.failures == b.failures
                })
        });
        if unchanged {
            continue;
        }
        match db.report_breakers(worker, &report).await {
            Ok(()) => last = Some(report),
            Err(e) => tracing::warn!(error = %e, "cannot report circuit breakers"),
        }
    }
}
