//! How each kind of endpoint failure ends (docs/actions.md, the outcome table), against a real HTTP
//! server on loopback and the real worker: a flapping endpoint (500, timeout, 503, then 200) is
//! retried with backoff until it succeeds; a 429 with `Retry-After` is not retried before the
//! time it asks for; a dead endpoint (connection refused) uses up its attempts and ends in the
//! dead-letter queue with the error, replayable. (410 Gone: tests/actions.rs and pipeline.rs.)

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    free_port, observer_status, wait_for_jobs, Cluster, Received, Reply, Sink, Worker,
};

/// Earlier requests of the same job (by webhook-id).
fn attempt_of(r: &Received, before: &[Received]) -> usize {
    let id = r.header("webhook-id");
    before
        .iter()
        .filter(|b| b.header("webhook-id") == id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_failure_ends_in_its_documented_state() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_scripted(Arc::new(|r: &Received, before: &[Received]| {
        let n = attempt_of(r, before);
        match (r.path.as_str(), n) {
            ("/flap", 0) => Reply::status(500),
            // Slower than the action's 300 ms timeout.
            ("/flap", 1) => Reply {
                status: 200,
                delay: Duration::from_millis(1500),
                ..Reply::default()
            },
            ("/flap", 2) => Reply::status(503),
            ("/busy", 0) => Reply {
                status: 429,
                headers: vec![("retry-after", "2".to_string())],
                ..Reply::default()
            },
            _ => Reply::status(200),
        }
    }))
    .await
    .expect("sink");
    let dead_port = free_port().expect("a port nobody listens on");
    let client = cluster.connect("postgres").await.expect("connect");
    let fast_retries = r#"{"max_attempts": 5, "backoff_base": "50 milliseconds", "backoff_cap": "200 milliseconds"}"#;
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               SELECT observer_create('flap', NULL, action => '{{"type": "webhook", "url": "{flap}", "timeout_ms": 300}}',
                                      options => '{fast_retries}');
               SELECT observer_create('busy', NULL, action => '{{"type": "webhook", "url": "{busy}"}}',
                                      options => '{fast_retries}');
               SELECT observer_create('dead', NULL, action => '{{"type": "webhook", "url": "http://127.0.0.1:{dead_port}/hook"}}',
                                      options => '{{"max_attempts": 3, "backoff_base": "50 milliseconds", "backoff_cap": "200 milliseconds"}}');
               SELECT observer_enqueue('flap', '{{"n": 1}}');
               SELECT observer_enqueue('busy', '{{"n": 2}}');
               SELECT observer_enqueue('dead', '{{"n": 3}}');"#,
            flap = sink.url("/flap"),
            busy = sink.url("/busy"),
        ))
        .await
        .expect("setup");
    // The three share no breaker state that matters here: circuits are tested on their own.
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[("BREAKER__FAILURE_THRESHOLD", "100")],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 2, Duration::from_secs(60)).await
            && wait_for_jobs(&client, "dead", 1, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );

    let attempts = |observer: &'static str| {
        let client = &client;
        async move {
            client
                .query(
                    "SELECT a.attempt, a.outcome, coalesce(a.error, '') FROM observer.attempts a
                     JOIN observer.jobs j ON j.id = a.job_id JOIN observer.observers o ON o.id = j.observer_id
                     WHERE o.name = $1 ORDER BY a.attempt",
                    &[&observer],
                )
                .await
                .expect("attempts")
                .iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
                .collect::<Vec<_>>()
        }
    };

    // Flapping: three failures of three kinds, each retried, then delivered on attempt 4.
    let flap = attempts("flap").await;
    assert_eq!(flap.len(), 4, "{flap:?}");
    assert_eq!(
        (flap[0].1.as_str(), flap[0].2.as_str()),
        ("retry", "HTTP 500: ok")
    );
    assert_eq!(flap[1].1, "retry");
    assert!(flap[1].2.starts_with("timeout"), "{flap:?}");
    assert_eq!(
        (flap[2].1.as_str(), flap[2].2.as_str()),
        ("retry", "HTTP 503: ok")
    );
    assert_eq!(flap[3].1, "completed");

    // 429 + Retry-After: 2: the second attempt came no sooner than two seconds later.
    let busy = attempts("busy").await;
    assert_eq!(busy.len(), 2, "{busy:?}");
    assert_eq!(
        (busy[0].1.as_str(), busy[0].2.as_str()),
        ("retry", "HTTP 429: ok")
    );
    let busy_requests: Vec<Received> = sink
        .received()
        .into_iter()
        .filter(|r| r.path == "/busy")
        .collect();
    assert_eq!(busy_requests.len(), 2);
    let waited = busy_requests[1].at - busy_requests[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "Retry-After: 2 honoured, waited {waited:?}"
    );

    // Dead endpoint: every attempt fails to connect; the job ends in the dead-letter queue.
    let dead = attempts("dead").await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(
        dead.iter().all(|a| a.2.starts_with("connection failed")),
        "{dead:?}"
    );
    assert!(
        dead.iter().all(|a| !a.2.contains("/hook")),
        "no URL in error texts (URLs can carry credentials): {dead:?}"
    );
    assert_eq!(dead[2].1, "dead");
    let dlq = client
        .query(
            "SELECT attempts FROM observer_dlq_list(observer => 'dead')",
            &[],
        )
        .await
        .expect("dlq");
    assert_eq!(
        dlq.len(),
        1,
        "the job is in the dead-letter queue, replayable"
    );
}
