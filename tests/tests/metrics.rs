//! Prometheus metrics served by the real worker: counters by observer and outcome, the delivery
//! histogram, in-flight and worker-up gauges, queue depth read from the extension; labels never
//! carry URLs.

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    free_port, http_get, wait_for_jobs, wait_until, Cluster, Sink, Worker,
};

fn scrape(port: u16) -> String {
    http_get(port, "/metrics").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_prometheus_metrics() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('mail', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}');
             SELECT observer_enqueue_many('mail', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 3) i));",
            sink.url("/secret-path-that-must-not-appear")
        ))
        .await
        .expect("setup");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[("METRICS__LISTEN", listen.as_str())],
    )
    .expect("worker");
    assert!(wait_for_jobs(&client, "completed", 3, Duration::from_secs(30)).await);
    let ready = wait_until(Duration::from_secs(20), || async {
        scrape(port).contains(r#"fraiseql_observers_queue_jobs{state="completed"} 3"#)
    })
    .await;
    let text = scrape(port);
    assert!(ready, "{text}");
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    for line in [
        r#"fraiseql_observers_jobs_total{action="webhook",observer="mail",outcome="claimed"} 3"#,
        r#"fraiseql_observers_jobs_total{action="webhook",observer="mail",outcome="delivered"} 3"#,
        r#"fraiseql_observers_delivery_seconds_count{action="webhook",observer="mail"} 3"#,
        r#"fraiseql_observers_event_to_delivery_seconds_count{action="webhook",observer="mail"} 3"#,
        "fraiseql_observers_in_flight 0",
        "fraiseql_observers_worker_up 1",
        "fraiseql_observers_open_circuits 0",
        "fraiseql_observers_quarantined_events 0",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(!text.contains("secret-path"), "no URL in any label");
}
