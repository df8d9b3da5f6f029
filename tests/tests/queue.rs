//! The job queue under concurrency, isolation-style: two or more sessions against one real
//! cluster, with transactions held open at chosen points. No job is claimed twice while its lease
//! holds; an expired lease is reclaimed with a new fencing token and the stale token's outcome is
//! refused; per-key FIFO holds across sessions, retries and parks; enqueued jobs (job queues),
//! snoozes, discards and priorities behave as documented.

use std::collections::BTreeSet;
use std::time::Duration;

use fraiseql_observers_tests::Cluster;
use tokio_postgres::Client;

const HOOK: &str = r#"{"type": "webhook", "url": "https://example.com/hook"}"#;

async fn setup(cluster: &Cluster, options: &str) -> Client {
    let c = cluster.connect("postgres").await.expect("connect");
    c.batch_execute(&format!(
        "CREATE EXTENSION fraiseql_observers;
         SELECT observer_create('q', NULL, action => '{HOOK}', options => '{options}');"
    ))
    .await
    .expect("setup");
    c
}

/// Claim up to `n` jobs as `worker` with `lease`: (job id, token) pairs.
async fn claim(c: &Client, worker: &str, n: i32, lease: &str) -> Vec<(i64, i64)> {
    c.query(
        "SELECT job_id, token FROM observer_claim($1, $2, $3::text::interval)",
        &[&worker, &n, &lease],
    )
    .await
    .expect("claim")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn outcome(c: &Client, function: &str, pairs: &[(i64, i64)], extra: &str) -> Vec<bool> {
    let ids: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let tokens: Vec<i64> = pairs.iter().map(|p| p.1).collect();
    c.query(
        &format!("SELECT accepted FROM {function}($1, $2{extra})"),
        &[&ids, &tokens],
    )
    .await
    .expect(function)
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn enqueue(c: &Client, n: i32) {
    c.execute(
        "SELECT observer_enqueue_many('q', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, $1) i))",
        &[&n],
    )
    .await
    .expect("enqueue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_never_share_a_job_while_its_lease_holds() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let a = setup(&cluster, "{}").await;
    let b = cluster.connect("postgres").await.expect("b");
    enqueue(&a, 10).await;

    // A claims inside an open transaction: its rows stay locked; B skips them.
    a.batch_execute("BEGIN").await.expect("begin");
    let got_a = claim(&a, "a", 4, "1 hour").await;
    let got_b = claim(&b, "b", 10, "1 hour").await;
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(got_a.len(), 4);
    assert_eq!(got_b.len(), 6, "B gets every job A did not lock");
    let ids: BTreeSet<i64> = got_a.iter().chain(&got_b).map(|p| p.0).collect();
    assert_eq!(ids.len(), 10, "no job went to both");

    // Committed leases hold: nobody else gets those jobs now.
    let c = cluster.connect("postgres").await.expect("c");
    assert!(claim(&c, "c", 10, "1 hour").await.is_empty());

    // Four sessions racing on 2,000 jobs: each job is claimed exactly once.
    enqueue(&a, 2000).await;
    let mut handles = Vec::new();
    for w in 0..4 {
        let client = cluster.connect("postgres").await.expect("worker");
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = claim(&client, &format!("w{w}"), 50, "1 hour").await;
                if got.is_empty() {
                    break mine;
                }
                assert!(outcome(&client, "observer_complete", &got, "")
                    .await
                    .iter()
                    .all(|x| *x));
                mine.extend(got.iter().map(|p| p.0));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("worker task"));
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (2000, 2000),
        "2,000 claims, 2,000 distinct jobs"
    );
    let once: i64 = a
        .query_one(
            "SELECT count(*) FROM observer.jobs WHERE state = 'completed' AND attempt = 1",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(once, 2000, "every job completed on its first attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_reclaimed_and_the_stale_token_is_refused() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let a = setup(&cluster, "{}").await;
    let b = cluster.connect("postgres").await.expect("b");
    enqueue(&a, 2).await;
    let first = claim(&a, "a", 2, "1 second").await;
    assert_eq!(first.len(), 2);
    assert!(claim(&b, "b", 2, "1 hour").await.is_empty(), "leases hold");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = claim(&b, "b", 2, "1 hour").await;
    assert_eq!(
        second.iter().map(|p| p.0).collect::<BTreeSet<_>>(),
        first.iter().map(|p| p.0).collect::<BTreeSet<_>>(),
        "the same jobs, reclaimed"
    );
    assert!(
        second.iter().zip(&first).all(|(s, f)| s.1 > f.1),
        "with larger tokens"
    );
    // A wakes up late: neither its completion nor its failure is accepted.
    assert_eq!(
        outcome(&a, "observer_complete", &first[..1], "").await,
        [false]
    );
    assert_eq!(
        outcome(&a, "observer_fail", &first[1..], ", ARRAY['late']").await,
        [false]
    );
    assert_eq!(
        outcome(&b, "observer_complete", &second, "").await,
        [true, true]
    );
    let states: Vec<String> = a
        .query(
            "SELECT state || ':' || attempt FROM observer.jobs ORDER BY id",
            &[],
        )
        .await
        .expect("states")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["completed:2", "completed:2"]);
    let expired: i64 = a
        .query_one(
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'expired' AND attempt = 1",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(expired, 2, "the expired attempts are on record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_holds_per_key_across_sessions_retries_and_parks() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let a = setup(
        &cluster,
        r#"{"fifo": true, "fifo_on_failure": "park", "max_attempts": 2, "backoff_base": "1 second", "backoff_cap": "1 second"}"#,
    )
    .await;
    let b = cluster.connect("postgres").await.expect("b");
    a.batch_execute(
        "SELECT observer_enqueue_many('q', ARRAY['{\"k\":1}', '{\"k\":2}', '{\"k\":3}', '{\"o\":1}']::jsonb[],
                                      ordering_keys => ARRAY['k', 'k', 'k', 'other'])",
    )
    .await
    .expect("enqueue");
    // A holds the first job of key k in an open transaction: B sees it pending and locked, so
    // it may take only the other key's job.
    a.batch_execute("BEGIN").await.expect("begin");
    let k1 = claim(&a, "a", 1, "1 hour").await;
    let other = claim(&b, "b", 10, "1 hour").await;
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(other.len(), 1, "only the other key: {other:?}");
    assert_eq!(
        claim(&b, "b", 10, "1 hour").await.len(),
        0,
        "k2 waits behind running k1"
    );

    // k1 fails: it is retried first, before k2, even when B asks.
    assert_eq!(
        outcome(&a, "observer_fail", &k1, ", ARRAY['boom']").await,
        [true]
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = claim(&b, "b", 10, "1 hour").await;
    assert_eq!(
        again.iter().map(|p| p.0).collect::<Vec<_>>(),
        [k1[0].0],
        "k1 again, alone"
    );
    // Its last attempt fails: parked (dead), and the key goes on in order.
    assert_eq!(
        outcome(&b, "observer_fail", &again, ", ARRAY['boom']").await,
        [true]
    );
    let next = claim(&a, "a", 10, "1 hour").await;
    let k2 = next.clone();
    assert_eq!(next.len(), 1, "k2 only (k3 waits behind it)");
    assert!(outcome(&a, "observer_complete", &next, "").await[0]);
    let k3 = claim(&b, "b", 10, "1 hour").await;
    assert_eq!(k3.len(), 1);
    assert!(
        k3[0].0 > k2[0].0 && k2[0].0 > k1[0].0,
        "commit order per key"
    );
    // The parked job is replayable and then runs: no other job of the key is pending.
    assert!(outcome(&b, "observer_complete", &k3, "").await[0]);
    let replayed: i64 = a
        .query_one(
            "SELECT observer_dlq_retry(job_ids => $1)",
            &[&vec![k1[0].0]],
        )
        .await
        .expect("replay")
        .get(0);
    assert_eq!(replayed, 1);
    assert_eq!(claim(&a, "a", 10, "1 hour").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_queues_enqueue_once_per_key_snooze_discard_and_priorities() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let a = setup(&cluster, r#"{"max_attempts": 1}"#).await;
    a.batch_execute(&format!(
        "SELECT observer_create('urgent', NULL, action => '{HOOK}', options => '{{\"priority\": 10}}');"
    ))
    .await
    .expect("urgent queue");

    // Idempotency keys: the same key twice (across calls and within one) is one job.
    let first: i64 = a
        .query_one("SELECT observer_enqueue('q', '{\"x\": 1}', 'order-7')", &[])
        .await
        .expect("enqueue")
        .get(0);
    let rows = a
        .query(
            "SELECT job_id, created FROM observer_enqueue_many('q', ARRAY['{\"x\":2}', '{\"x\":3}', '{\"x\":4}']::jsonb[],
                                                                  ARRAY['order-7', 'order-8', 'order-8'])",
            &[],
        )
        .await
        .expect("enqueue many");
    let got: Vec<(i64, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got[0], (first, false), "order-7 exists");
    assert!(
        got[1].1 && !got[2].1 && got[1].0 == got[2].0,
        "order-8 once: {got:?}"
    );

    // Priorities: the urgent queue's job is claimed first although enqueued last.
    let urgent: i64 = a
        .query_one("SELECT observer_enqueue('urgent', '{\"now\": true}')", &[])
        .await
        .expect("urgent")
        .get(0);
    let claimed = a
        .query(
            "SELECT job_id, token, idempotency_key, payload::text FROM observer_claim('w', 10, '1 hour')",
            &[],
        )
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    assert_eq!(
        claimed
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect::<Vec<_>>()[..],
        {
            let mut v = vec![first, got[1].0, urgent];
            v.sort();
            v
        }[..]
    );
    let urgent_row = claimed
        .iter()
        .find(|r| r.get::<_, i64>(0) == urgent)
        .expect("urgent claimed");
    assert_eq!(urgent_row.get::<_, String>(2), format!("job_{urgent}"));
    let payload: serde_json::Value =
        serde_json::from_str(urgent_row.get::<_, &str>(3)).expect("payload json");
    assert_eq!(payload["data"], serde_json::json!({"now": true}));
    assert_eq!(payload["type"], "urgent");
    let order: Vec<i64> = a
        .query(
            "SELECT id FROM observer.jobs ORDER BY priority DESC, run_at, id",
            &[],
        )
        .await
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order[0], urgent, "the claim order puts priority first");

    // Snooze gives the attempt back (max_attempts is 1, yet the job runs again); discard ends
    // the job at once, into the dead-letter queue with its reason.
    let pairs: Vec<(i64, i64)> = claimed
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .filter(|p| p.0 != urgent)
        .collect();
    let snoozed = outcome(
        &a,
        "observer_snooze",
        &pairs[..1],
        ", ARRAY[now()], ARRAY['circuit open']",
    )
    .await;
    assert_eq!(snoozed, [true]);
    assert_eq!(
        outcome(
            &a,
            "observer_discard",
            &pairs[1..],
            ", ARRAY['HTTP 410 Gone']"
        )
        .await,
        [true]
    );
    let again = claim(&a, "w", 10, "1 hour").await;
    assert_eq!(again.iter().map(|p| p.0).collect::<Vec<_>>(), [pairs[0].0]);
    let snooze_row = a
        .query_one(
            "SELECT attempt, snoozes, state FROM observer.jobs WHERE id = $1",
            &[&pairs[0].0],
        )
        .await
        .expect("row");
    assert_eq!(
        (snooze_row.get::<_, i32>(0), snooze_row.get::<_, i32>(1)),
        (1, 1),
        "the snooze used no attempt"
    );
    let dlq = a
        .query_one(
            "SELECT job_id, last_error FROM observer_dlq_list(observer => 'q')",
            &[],
        )
        .await
        .expect("dlq");
    assert_eq!(dlq.get::<_, i64>(0), pairs[1].0);
    assert_eq!(dlq.get::<_, String>(1), "discarded: HTTP 410 Gone");

    // Clear errors for misuse.
    for (sql, code) in [
        ("SELECT observer_enqueue('nope', '{}')", "42704"),
        ("SELECT observer_enqueue('q', NULL)", "22004"),
        ("SELECT observer_create('bad', NULL, condition => '$.x == 1', action => '{\"type\":\"webhook\",\"url\":\"https://e.com\"}')", "22023"),
    ] {
        let err = a.query_one(sql, &[]).await.expect_err(sql);
        assert_eq!(err.code().map(|c| c.code()), Some(code), "{sql}: {err:?}");
    }
    a.batch_execute("CREATE TABLE t (id int PRIMARY KEY); SELECT observer_create('t', 't', action => '{\"type\":\"webhook\",\"url\":\"https://e.com\"}');")
        .await
        .expect("table observer");
    let err = a
        .query_one("SELECT observer_enqueue('t', '{}')", &[])
        .await
        .expect_err("not a queue");
    assert_eq!(err.code().map(|c| c.code()), Some("42809"));
}
