//! Replay and backfill (sql/dlq.sql): existing rows become jobs of one observer, in resumable
//! batches; past events are sent again (same webhook-id) or for the first time to an observer
//! created after them. Delivered by the real worker to a real HTTP sink.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{observer_status, wait_for_jobs, Cluster, Sink, Worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_replay_deliver_past_rows_and_events() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
               INSERT INTO orders SELECT i, CASE WHEN i % 2 = 0 THEN 'shipped' ELSE 'new' END FROM generate_series(1, 25) i;
               SELECT observer_create('shipped', 'orders', ARRAY['INSERT', 'UPDATE'], '$.new.status == "shipped"',
                                      '{{"type": "webhook", "url": "{}"}}');"#,
            sink.url("/shipped")
        ))
        .await
        .expect("setup");

    // Backfill in batches of 5 rows until done: the 12 shipped rows, once each.
    let mut calls = 0;
    loop {
        calls += 1;
        let row = client
            .query_one(
                "SELECT rows_queued, rows_total, done FROM observer_backfill('shipped', 5)",
                &[],
            )
            .await
            .expect("backfill");
        if row.get::<_, bool>(2) {
            assert_eq!(row.get::<_, i64>(1), 12);
            break;
        }
        assert!(calls < 10);
    }
    assert_eq!(
        calls, 6,
        "25 rows in five full batches of 5, then an empty one says done"
    );
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 12, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(received.len(), 12);
    assert!(received.iter().all(
        |r| r.body["data"]["op"] == "BACKFILL" && r.body["data"]["new"]["status"] == "shipped"
    ));

    // Live events, then a second observer created after them.
    client
        .batch_execute("UPDATE orders SET status = 'shipped' WHERE id IN (1, 3)")
        .await
        .expect("ship");
    assert!(wait_for_jobs(&client, "completed", 14, Duration::from_secs(30)).await);
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('audit_copy', 'orders', ARRAY['UPDATE'], NULL,
                                      '{{"type": "webhook", "url": "{}"}}');"#,
            sink.url("/copy")
        ))
        .await
        .expect("second observer");

    // Replay the last hour for both: "shipped" sends its two events again (same webhook-ids),
    // "audit_copy" gets them for the first time.
    let again: i64 = client
        .query_one(
            "SELECT observer_replay('shipped', now() - interval '1 hour')",
            &[],
        )
        .await
        .expect("replay")
        .get(0);
    assert_eq!(again, 2);
    let first: i64 = client
        .query_one(
            "SELECT observer_replay('audit_copy', now() - interval '1 hour')",
            &[],
        )
        .await
        .expect("replay")
        .get(0);
    assert_eq!(first, 2);
    assert!(
        wait_for_jobs(&client, "completed", 16, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    assert!(sink.wait_received(18, Duration::from_secs(10)).await);
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in sink.received().iter().filter(|r| r.path == "/shipped") {
        if let Some(id) = r.header("webhook-id").filter(|id| id.starts_with("evt_")) {
            *by_id.entry(id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(by_id.len(), 2);
    assert!(
        by_id.values().all(|n| *n == 2),
        "each event sent twice, same webhook-id: {by_id:?}"
    );
    let copies = sink.received().iter().filter(|r| r.path == "/copy").count();
    assert_eq!(copies, 2);

    // Errors: a queue has nothing to replay; an unknown observer is named.
    let e = client
        .query_one("SELECT observer_replay('nope', now())", &[])
        .await
        .expect_err("unknown");
    assert_eq!(e.code().map(|c| c.code()), Some("42704"));
}
