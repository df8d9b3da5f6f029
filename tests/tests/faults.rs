//! Worker faults against a slow real endpoint: a worker killed with SIGKILL in the middle of its
//! deliveries loses nothing (every job is redelivered after its lease, with the same identity),
//! and a worker frozen with SIGSTOP past its lease cannot change the outcome of the jobs another
//! worker took over (fencing tokens).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    first_attempt_then, observer_status, wait_for_jobs, wait_until, Cluster, Sink, Worker,
};

async fn setup(client: &tokio_postgres::Client, sink: &Sink, options: &str) {
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY);
             SELECT observer_create('orders', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{}\"}}', '{options}');",
            sink.url("/orders")
        ))
        .await
        .expect("setup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with_delay(Arc::new(|_, _| 200), Duration::from_millis(400))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &sink, "{}").await;
    let lease = [("LEASE_SECONDS", "2"), ("CONCURRENCY", "8")];
    let first = Worker::start(&cluster.url("postgres"), &lease).expect("worker");
    client
        .batch_execute("INSERT INTO orders SELECT generate_series(1, 40)")
        .await
        .expect("insert");

    // Kill it while deliveries are in flight (the sink answers after 400 ms).
    let in_flight = sink.wait_received(8, Duration::from_secs(20)).await;
    assert!(in_flight, "deliveries started");
    first.signal("KILL");
    drop(first);

    let _second = Worker::start(&cluster.url("postgres"), &lease).expect("second worker");
    let done = wait_for_jobs(&client, "completed", 40, Duration::from_secs(60)).await;
    assert!(
        done,
        "not all delivered: {}",
        observer_status(&client).await
    );

    // Every event reached the endpoint, each under one webhook-id however often it was sent.
    let mut ids_per_event: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for r in sink.received() {
        let event = r.body["data"]["event_id"].as_i64().expect("event_id");
        let id = r.header("webhook-id").expect("webhook-id").to_string();
        ids_per_event.entry(event).or_default().insert(id);
    }
    assert_eq!(ids_per_event.len(), 40, "every event delivered");
    assert!(
        ids_per_event.values().all(|ids| ids.len() == 1),
        "stable identity"
    );
    let expired: i64 = client
        .query_one(
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'expired'",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert!(
        expired >= 1,
        "the killed worker's claims were recovered through their leases"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_lease_cannot_change_the_outcome() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // The first request for a webhook-id succeeds (but its answer reaches a frozen worker); every
    // later one fails: the job's true outcome is decided by the worker that took it over.
    let sink = Sink::start_with_delay(first_attempt_then(200, 500), Duration::from_millis(500))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &sink, r#"{"max_attempts": 2}"#).await;
    let frozen = Worker::start(
        &cluster.url("postgres"),
        &[("LEASE_SECONDS", "1"), ("WORKER_ID", "frozen")],
    )
    .expect("worker");
    client
        .batch_execute("INSERT INTO orders SELECT generate_series(1, 5)")
        .await
        .expect("insert");
    let sent = sink.wait_received(5, Duration::from_secs(20)).await;
    assert!(sent, "first attempts sent");
    frozen.signal("STOP");

    // Its leases run out; another worker takes the jobs over and their second attempt fails:
    // with max_attempts 2 they are dead.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _other = Worker::start(
        &cluster.url("postgres"),
        &[
            ("LEASE_SECONDS", "5"),
            ("WORKER_ID", "other"),
            ("DISPATCH", "false"),
        ],
    )
    .expect("second worker");
    let dead = wait_for_jobs(&client, "dead", 5, Duration::from_secs(30)).await;
    assert!(dead, "takeover failed: {}", observer_status(&client).await);

    // The frozen worker wakes up holding 200s for every job and reports them: rejected.
    frozen.signal("CONT");
    let reported = wait_until(Duration::from_secs(10), || {
        let frozen = &frozen;
        async move { frozen.log().contains("completions rejected") }
    })
    .await;
    assert!(reported, "stale completions are rejected\n{}", frozen.log());
    let s = observer_status(&client).await;
    assert_eq!(s["jobs"]["dead"], 5, "the outcome stands: {s}");
    assert_eq!(s["jobs"]["completed"], 0, "{s}");
    let story: Vec<String> = client
        .query(
            "SELECT string_agg(attempt || ':' || outcome || ':' || worker, ',' ORDER BY attempt)
             FROM observer.attempts GROUP BY job_id ORDER BY job_id",
            &[],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(story.len(), 5);
    for s in story {
        assert_eq!(s, "1:expired:frozen,2:dead:other");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_slower_than_the_lease_keep_it_through_heartbeats() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // Each answer takes 2.5 s; the lease is 1 s: without heartbeats every job would be reclaimed
    // and sent again while its first delivery is still running.
    let sink = Sink::start_with_delay(Arc::new(|_, _| 200), Duration::from_millis(2500))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &sink, "{}").await;
    let _worker =
        Worker::start(&cluster.url("postgres"), &[("LEASE_SECONDS", "1")]).expect("worker");
    client
        .batch_execute("INSERT INTO orders SELECT generate_series(1, 3)")
        .await
        .expect("insert");
    let done = wait_for_jobs(&client, "completed", 3, Duration::from_secs(30)).await;
    assert!(done, "{}", observer_status(&client).await);
    assert_eq!(
        sink.received().len(),
        3,
        "one request per job: the leases held"
    );
    let expired: i64 = client
        .query_one(
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'expired'",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(expired, 0);
}

/// A worker that cannot renew its leases (its database connection was cut while deliveries were
/// in flight) stops claiming on that connection at once, reconnects with backoff, and every job
/// ends delivered: those whose outcome could not be reported are redelivered after their lease
/// with the same webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_renew_its_leases_stops_claiming_and_recovers() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with_delay(Arc::new(|_, _| 200), Duration::from_millis(2000))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &sink, "{}").await;
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[("LEASE_SECONDS", "2"), ("DISPATCH", "false")],
    )
    .expect("worker");
    client
        .batch_execute(
            "INSERT INTO orders SELECT generate_series(1, 4); SELECT observer_dispatch();",
        )
        .await
        .expect("insert");
    assert!(sink.wait_received(4, Duration::from_secs(30)).await);
    // Cut the worker's connection while its four deliveries are in flight.
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = 'postgres'",
        )
        .await
        .expect("terminate");
    let stopped = wait_until(Duration::from_secs(10), || async {
        worker.log().contains("cannot renew leases")
    })
    .await;
    assert!(stopped, "{}", worker.log());
    let client = cluster.connect("postgres").await.expect("reconnect");
    let done = wait_for_jobs(&client, "completed", 4, Duration::from_secs(60)).await;
    assert!(done, "{}\n{}", observer_status(&client).await, worker.log());
    assert!(worker.log().contains("connected to the database"));
    let ids: BTreeSet<String> = sink
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "every job delivered, duplicates share their webhook-id"
    );
}
