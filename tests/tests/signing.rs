//! Standard Webhooks signatures, checked by an independent implementation: the reference
//! library from PyPI (`standardwebhooks`, in `.venv`, installed by `scripts/setup.sh`) verifies
//! every request the real worker sent to a real HTTP sink, with each of two secrets configured
//! while one rotates. A retried job keeps its `webhook-id` and each attempt is signed anew.

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    first_attempt_then, observer_status, verify_signatures, wait_for_jobs, Cluster, Sink, Worker,
};

const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD: &str = "whsec_c2VjcmV0LWtleS1mb3Itcm90YXRpb24tdGVzdHMhIQ==";
const OTHER: &str = "whsec_b3RoZXItc2VjcmV0LW5vdC1jb25maWd1cmVkLWhlcmU=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_the_reference_library_across_retries_and_rotation() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(first_attempt_then(503, 200))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, note text);
             SELECT observer_create('orders', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{}\", \"secret\": \"orders\"}}',
                 '{{\"backoff_base\": \"50 milliseconds\"}}');",
            sink.url("/orders")
        ))
        .await
        .expect("setup");
    let secrets = format!("{NEW} {OLD}");
    // Bound to the sink's /orders (a secret with no destination signs nothing).
    let destinations = sink.url("/orders");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__ORDERS", secrets.as_str()),
            ("SECRETS__ORDERS__DESTINATIONS", destinations.as_str()),
        ],
    )
    .expect("worker");
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'plain'), (2, 'unicode: ünïcødé ✓'), (3, 'quotes \" and \\\\ backslash')",
        )
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 3, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(received.len(), 6, "a 503 then a 200 for each row");
    for r in &received {
        let sig = r.header("webhook-signature").expect("signed");
        assert_eq!(
            sig.split(' ').count(),
            2,
            "one signature per configured secret: {sig}"
        );
    }
    // Both secrets verify every request (receivers on the old or the new secret keep working);
    // a secret the worker does not have does not.
    assert!(
        verify_signatures(&received, NEW).iter().all(|v| v == "ok"),
        "{:?}",
        verify_signatures(&received, NEW)
    );
    assert!(
        verify_signatures(&received, OLD).iter().all(|v| v == "ok"),
        "{:?}",
        verify_signatures(&received, OLD)
    );
    assert!(verify_signatures(&received, OTHER)
        .iter()
        .all(|v| v.starts_with("fail")));
    // A retried job keeps its webhook-id.
    for id in received.iter().filter_map(|r| r.header("webhook-id")) {
        assert_eq!(
            received
                .iter()
                .filter(|r| r.header("webhook-id") == Some(id))
                .count(),
            2,
            "{id}: the 503 and the 200 share it"
        );
    }
}

/// An action naming a secret the worker does not have is never sent unsigned: it fails with a
/// clear error (and is retried, then dead-lettered) until the secret is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_never_sent_unsigned() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('q', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\", \"secret\": \"billing\"}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_enqueue('q', '{{\"n\": 1}}');",
            sink.url("/q")
        ))
        .await
        .expect("setup");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await);
    assert!(sink.received().is_empty(), "nothing went out unsigned");
    let error: String = client
        .query_one("SELECT last_error FROM observer.jobs", &[])
        .await
        .expect("job")
        .get(0);
    assert!(
        error.contains("signing secret \"billing\" is not configured"),
        "{error}"
    );
}
