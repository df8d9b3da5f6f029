//! The SSRF guard at delivery: a worker without an allowlist refuses a literal loopback address
//! and a host name that resolves to loopback (checked in the HTTP client's resolver, on the very
//! addresses it would connect to), with a clear error and nothing lost (the jobs are dead-lettered,
//! replayable); the same jobs are delivered once the worker allows the block.

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{observer_status, wait_for_jobs, Cluster, Sink, Worker, LOOPBACK};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_targets_are_refused_unless_allowed_and_nothing_is_lost() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let port = sink
        .url("/")
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
        .expect("sink port");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('literal', NULL, action => '{{\"type\": \"webhook\", \"url\": \"http://127.1:{port}/literal\"}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_create('named', NULL, action => '{{\"type\": \"webhook\", \"url\": \"http://localhost:{port}/named\"}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_enqueue('literal', '{{\"n\": 1}}');
             SELECT observer_enqueue('named', '{{\"n\": 2}}');"
        ))
        .await
        .expect("setup");

    // No allowlist: both refused, nothing sent, both in the dead-letter queue with the reason.
    let mut strict =
        Worker::start(&cluster.url("postgres"), &[("HTTP__ALLOW_NETWORKS", "")]).expect("worker");
    assert!(
        wait_for_jobs(&client, "dead", 2, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    assert!(sink.received().is_empty(), "nothing reached the sink");
    let errors: Vec<String> = client
        .query(
            "SELECT last_error FROM observer.jobs WHERE state = 'dead' ORDER BY id",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        assert!(
            e.contains("refused by the network policy") && e.contains("loopback"),
            "{e}"
        );
    }
    strict.terminate(Duration::from_secs(10));

    // Allowed: the replayed jobs are delivered.
    let _allowed = Worker::start(
        &cluster.url("postgres"),
        &[("HTTP__ALLOW_NETWORKS", LOOPBACK)],
    )
    .expect("worker");
    let replayed: i64 = client
        .query_one("SELECT observer_dlq_retry(all_jobs => true)", &[])
        .await
        .expect("replay")
        .get(0);
    assert_eq!(replayed, 2);
    assert!(wait_for_jobs(&client, "completed", 2, Duration::from_secs(30)).await);
    assert_eq!(sink.received().len(), 2);
}
