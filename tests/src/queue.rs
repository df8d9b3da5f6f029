//! The queue as the worker calls it, for tests that drive it by SQL (no worker): counts, waiting
//! for the dispatcher's job rows, and the outcome calls' answers.

use std::time::Duration;

use tokio_postgres::Client;

use crate::wait_until;

/// The one bigint `sql` returns.
pub async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Wait (up to 30 s) until the dispatcher made `n` job rows in all (a batch job is one).
pub async fn wait_job_rows(c: &Client, n: i64) {
    let made = wait_until(Duration::from_secs(30), || async {
        count(c, "SELECT count(*) FROM observer.jobs").await == n
    })
    .await;
    let have = count(c, "SELECT count(*) FROM observer.jobs").await;
    assert!(made, "{n} jobs were made, have {have}");
}

/// (job id, accepted) of the outcome call `call`, which takes `$1` job ids and `$2` tokens.
pub async fn outcome(c: &Client, call: &str, ids: &[i64], tokens: &[i64]) -> Vec<(i64, bool)> {
    c.query(
        &format!("SELECT job_id, accepted FROM {call}"),
        &[&ids, &tokens],
    )
    .await
    .expect(call)
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
