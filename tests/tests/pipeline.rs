//! End to end: rows committed in a real cluster reach a real HTTP sink through the real worker
//! binary, exactly once each when the sink answers 2xx, retried with a stable identity when it
//! does not.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    first_attempt_then, observer_status as status, wait_for_jobs, Cluster, Sink, Worker,
};
use serde_json::Value;

async fn setup_orders(client: &tokio_postgres::Client, sink: &Sink, options: &str) {
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount numeric NOT NULL);
             SELECT observer_create('orders_created', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{}\"}}', '{options}');",
            sink.url("/hooks/orders")
        ))
        .await
        .expect("create extension, table and observer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_committed_rows_become_exactly_thousand_posts() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup_orders(&client, &sink, "{}").await;
    let mut worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");

    // 1,000 committed rows in 20 transactions of 50 from 4 concurrent sessions, interleaved with
    // 4 rolled-back transactions whose rows must never be delivered.
    let mut writers = Vec::new();
    for w in 0..4i32 {
        let c = cluster.connect("postgres").await.expect("connect writer");
        writers.push(tokio::spawn(async move {
            for t in 0..5i32 {
                let first = (w * 5 + t) * 50 + 1;
                c.batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO orders SELECT i, 'status-' || i, i * 1.5 FROM generate_series({first}, {last}) i;
                     COMMIT;",
                    last = first + 49
                ))
                .await
                .expect("committed insert");
                if t == 2 {
                    let ghost = 100_000 + w * 100;
                    c.batch_execute(&format!(
                        "BEGIN;
                         INSERT INTO orders SELECT i, 'ghost', 0 FROM generate_series({ghost}, {}) i;
                         ROLLBACK;",
                        ghost + 9
                    ))
                    .await
                    .expect("rolled-back insert");
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }

    let all_done = wait_for_jobs(&client, "completed", 1000, Duration::from_secs(90)).await;
    assert!(
        all_done,
        "not all delivered: sink has {}, status {}\nworker log:\n{}",
        sink.delivered(),
        status(&client).await,
        worker.log()
    );
    // Give a late duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let received = sink.received();
    assert_eq!(received.len(), 1000, "exactly one POST per committed row");
    let mut ids = BTreeSet::new();
    let mut webhook_ids = BTreeSet::new();
    for r in &received {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks/orders");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("webhook-timestamp").is_some());
        webhook_ids.insert(r.header("webhook-id").expect("webhook-id").to_string());
        let data = &r.body["data"];
        assert_eq!(r.body["type"], "orders_created");
        assert_eq!(data["op"], "INSERT");
        assert_eq!(data["table"], "public.orders");
        assert_eq!(data["old"], Value::Null);
        let id = data["new"]["id"].as_i64().expect("new.id");
        assert_eq!(data["new"]["status"], format!("status-{id}"));
        assert_eq!(data["new"]["amount"].as_f64(), Some(id as f64 * 1.5));
        ids.insert(id);
    }
    assert_eq!(
        ids,
        (1..=1000).collect::<BTreeSet<i64>>(),
        "every committed row, no rolled-back one"
    );
    assert_eq!(webhook_ids.len(), 1000, "one webhook-id per job");

    let s = status(&client).await;
    assert_eq!(s["jobs"]["completed"], 1000, "{s}");
    assert_eq!(s["jobs"]["pending"], 0, "{s}");
    assert_eq!(s["jobs"]["running"], 0, "{s}");
    assert_eq!(s["jobs"]["dead"], 0, "{s}");
    assert_eq!(s["observers"][0]["name"], "orders_created", "{s}");
    assert_eq!(s["observers"][0]["completed"], 1000, "{s}");
    assert_eq!(s["dispatch"]["undispatched_events"], 0, "{s}");

    let exit = worker.terminate(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM ends the worker with 0, got {exit:?}\n{}",
        worker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_with_the_same_webhook_id() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // 503 to the first request of every webhook-id, 200 to the second.
    let sink = Sink::start_with(first_attempt_then(503, 200))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup_orders(
        &client,
        &sink,
        r#"{"max_attempts": 5, "backoff_base": "50 milliseconds"}"#,
    )
    .await;
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");

    client
        .batch_execute("INSERT INTO orders SELECT i, 'n', 1 FROM generate_series(1, 20) i")
        .await
        .expect("insert");
    let done = wait_for_jobs(&client, "completed", 20, Duration::from_secs(60)).await;
    assert!(done, "retries did not complete: {}", status(&client).await);

    let mut per_id: HashMap<String, Vec<(u16, Value)>> = HashMap::new();
    for r in sink.received() {
        per_id
            .entry(r.header("webhook-id").expect("webhook-id").to_string())
            .or_default()
            .push((r.status, r.body.clone()));
    }
    assert_eq!(per_id.len(), 20);
    for (id, attempts) in &per_id {
        assert_eq!(attempts.len(), 2, "{id}: one 503 then one 200");
        assert_eq!(attempts[0].0, 503);
        assert_eq!(attempts[1].0, 200);
        // The same document, but for the attempt number a receiver tells a retry by.
        let (first, second) = (&attempts[0].1, &attempts[1].1);
        assert_eq!(first["data"], second["data"], "{id}: same data on retry");
        assert_eq!(first["type"], second["type"]);
        assert_eq!(first["timestamp"], second["timestamp"]);
        assert_eq!(
            (first["attempt"].as_i64(), second["attempt"].as_i64()),
            (Some(1), Some(2))
        );
    }
    let retries: i64 = client
        .query_one(
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'retry' AND error LIKE 'HTTP 503%'",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(retries, 20, "each first attempt is recorded with its error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_jobs_end_dead_and_replay_from_the_dead_letter_queue_with_the_same_webhook_id() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // 500 until the endpoint is "fixed", then 200.
    let fixed = Arc::new(AtomicBool::new(false));
    let flag = fixed.clone();
    let sink = Sink::start_with(Arc::new(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            200
        } else {
            500
        }
    }))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup_orders(
        &client,
        &sink,
        r#"{"max_attempts": 3, "backoff_base": "20 milliseconds"}"#,
    )
    .await;
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");

    client
        .batch_execute("INSERT INTO orders VALUES (1, 'n', 1), (2, 'n', 2)")
        .await
        .expect("insert");
    let dead = wait_for_jobs(&client, "dead", 2, Duration::from_secs(60)).await;
    assert!(dead, "jobs did not die: {}", status(&client).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.received().len(),
        6,
        "three attempts each, then no more"
    );
    let rows = client
        .query(
            "SELECT attempt, last_error FROM observer.jobs ORDER BY id",
            &[],
        )
        .await
        .expect("jobs");
    for row in rows {
        assert_eq!(row.get::<_, i32>(0), 3);
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some("HTTP 500: ok")
        );
    }

    // The endpoint is fixed; replay the dead letters.
    fixed.store(true, Ordering::SeqCst);
    let requeued: i64 = client
        .query_one(
            "SELECT observer_dlq_retry(observer => 'orders_created')",
            &[],
        )
        .await
        .expect("dlq retry")
        .get(0);
    assert_eq!(requeued, 2);
    let done = wait_for_jobs(&client, "completed", 2, Duration::from_secs(30)).await;
    assert!(
        done,
        "replayed jobs not delivered: {}",
        status(&client).await
    );
    let received = sink.received();
    let failed_ids: BTreeSet<String> = received
        .iter()
        .filter(|r| r.status == 500)
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    let delivered_ids: BTreeSet<String> = received
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    assert_eq!(delivered_ids.len(), 2);
    assert_eq!(delivered_ids, failed_ids, "a replay keeps the webhook-id");
}

/// A 410 Gone ends the job at once (no retries), in the dead-letter queue with the reason, and
/// pauses the observer (its endpoint is gone); jobs enqueued to a job queue are delivered by the
/// same worker with their own payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_endpoints_discard_at_once_and_enqueued_jobs_are_delivered() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(
        |r: &fraiseql_observers_tests::Received, _: &[_]| {
            if r.path.ends_with("/gone") {
                410
            } else {
                200
            }
        },
    ))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('gone', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}',
                                    options => '{{\"max_attempts\": 5}}');
             SELECT observer_create('mail', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}');
             SELECT observer_enqueue('gone', '{{\"n\": 1}}');
             SELECT observer_enqueue('mail', '{{\"to\": \"ada@example.com\"}}', idempotency_key => 'welcome-1');",
            sink.url("/gone"),
            sink.url("/mail")
        ))
        .await
        .expect("queues");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await
            && wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = sink.received();
    assert_eq!(received.len(), 2, "one attempt each, no retry of the 410");
    let mail = received
        .iter()
        .find(|r| r.path.ends_with("/mail"))
        .expect("mail delivered");
    // An enqueuer's key is sent in its queue's own webhook-id namespace (key_<queue id>_<key>),
    // never as a table event's evt_<event>_<observer>.
    let webhook_id = mail.header("webhook-id").expect("webhook-id");
    assert!(
        webhook_id.starts_with("key_") && webhook_id.ends_with("_welcome-1"),
        "{webhook_id}"
    );
    assert_eq!(
        mail.body["data"],
        serde_json::json!({"to": "ada@example.com"})
    );
    let row = client
        .query_one(
            "SELECT j.attempt, j.last_error, a.outcome FROM observer.jobs j JOIN observer.attempts a ON a.job_id = j.id WHERE j.state = 'dead'",
            &[],
        )
        .await
        .expect("dead job");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "discarded: HTTP 410: ok");
    assert_eq!(row.get::<_, String>(2), "discarded");
    // The gone endpoint's observer is paused with the reason; the other is not.
    let paused = client
        .query(
            "SELECT name, paused_reason FROM observer_list() ORDER BY name",
            &[],
        )
        .await
        .expect("observers");
    let paused: Vec<(String, Option<String>)> =
        paused.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        paused,
        vec![
            (
                "gone".to_string(),
                Some("endpoint gone: HTTP 410: ok".to_string())
            ),
            ("mail".to_string(), None)
        ]
    );
}

/// A slow endpoint does not starve a fast one: with two slots per endpoint, jobs for the slow
/// endpoint beyond its two go back to the queue (no attempt used) instead of holding the
/// worker's four slots, so the fast endpoint's jobs, enqueued after, all finish first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_starve_the_others() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let slow = Sink::start_with_delay(Arc::new(|_, _| 200), Duration::from_millis(1000))
        .await
        .expect("slow sink");
    let fast = Sink::start_with(Arc::new(|_, _| 200))
        .await
        .expect("fast sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('slow', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\", \"timeout_ms\": 10000}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_create('fast', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_enqueue_many('slow', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 8) i));
             SELECT observer_enqueue_many('fast', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 12) i));",
            slow.url("/slow"),
            fast.url("/fast")
        ))
        .await
        .expect("setup");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("CONCURRENCY", "4"),
            ("HTTP__MAX_IN_FLIGHT_PER_ENDPOINT", "2"),
            ("HTTP__ENDPOINT_RETRY_MS", "200"),
        ],
    )
    .expect("worker");
    assert!(
        fast.wait_received(12, Duration::from_secs(30)).await,
        "fast jobs starved: {}",
        status(&client).await
    );
    assert!(
        slow.delivered() < 8,
        "the fast endpoint's jobs finished while slow ones were still waiting"
    );
    assert!(
        wait_for_jobs(&client, "completed", 20, Duration::from_secs(60)).await,
        "{}",
        status(&client).await
    );
    let attempts: Vec<i32> = client
        .query("SELECT DISTINCT attempt FROM observer.jobs", &[])
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attempts, [1], "snoozes used no attempt (max_attempts is 1)");
    let snoozed: i64 = client
        .query_one("SELECT sum(snoozes) FROM observer.jobs WHERE observer_id = (SELECT id FROM observer.observers WHERE name = 'slow')", &[])
        .await
        .expect("snoozes")
        .get(0);
    assert!(
        snoozed > 0,
        "slow jobs waited in the queue, not in the worker"
    );
}

/// A failing endpoint opens its circuit: its jobs wait in the queue without using attempts
/// instead of burning their retries; a probe after the open period closes it once the endpoint
/// is back, and everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_on_a_failing_endpoint_and_closes_when_it_recovers() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let sink = Sink::start_with(Arc::new(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            200
        } else {
            500
        }
    }))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('flaky', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}',
                                    options => '{{\"max_attempts\": 5, \"backoff_base\": \"200 milliseconds\", \"backoff_cap\": \"200 milliseconds\"}}');
             SELECT observer_enqueue_many('flaky', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 10) i));",
            sink.url("/flaky")
        ))
        .await
        .expect("setup");
    let mut worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("HTTP__MAX_IN_FLIGHT_PER_ENDPOINT", "1"),
            ("BREAKER__FAILURE_THRESHOLD", "3"),
            ("BREAKER__OPEN_MS", "1500"),
        ],
    )
    .expect("worker");
    assert!(sink.wait_received(3, Duration::from_secs(30)).await);
    // Within the 1.5 s open period: the open circuit is visible in observer_status(), and
    // nothing more is sent.
    let visible = fraiseql_observers_tests::wait_until(Duration::from_millis(1000), || async {
        status(&client).await["breakers"][0]["state"] == "open"
    })
    .await;
    assert!(visible, "{}\n{}", status(&client).await, worker.log());
    assert_eq!(
        sink.received().len(),
        3,
        "open after three faults: nothing more is sent"
    );
    up.store(true, Ordering::SeqCst);
    assert!(
        wait_for_jobs(&client, "completed", 10, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    assert!(
        fraiseql_observers_tests::wait_until(Duration::from_secs(5), || async {
            status(&client).await["breakers"][0]["state"] == "closed"
        })
        .await,
        "the closed circuit is reported: {}",
        status(&client).await
    );
    let failures = sink.received().iter().filter(|r| r.status == 500).count();
    assert_eq!(
        failures, 3,
        "no delivery was attempted while the circuit was open"
    );
    let row = client
        .query_one("SELECT sum(attempt), sum(snoozes) FROM observer.jobs", &[])
        .await
        .expect("jobs");
    assert_eq!(
        row.get::<_, i64>(0),
        13,
        "attempts used: ten successes and the three faults, none while the circuit was open"
    );
    assert!(
        row.get::<_, i64>(1) > 0,
        "jobs waited, snoozed, while the circuit was open"
    );
    worker.terminate(Duration::from_secs(10));
    let log = worker.log();
    assert!(
        log.contains("circuit open") && log.contains("circuit closed"),
        "{log}"
    );
}
