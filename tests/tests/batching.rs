//! Webhook batching (`"batch"` in a webhook action) end to end: a real cluster, the real worker
//! and a recording sink. A batch is one request whose body is a JSON array of the jobs'
//! documents, in commit order, each with its own `webhook_id`, under one `webhook-id` header for
//! the batch (signed over the array); a failed batch is retried whole and nothing is lost or
//! delivered twice in the end; a lone event goes after `max_wait_ms`; `max_bytes` splits big
//! rows. Hostile: a batch on a request shaped by templates, or out of its bounds, is refused at
//! `observer_create`; an `app` enqueueing into its own batched queue, with keys of its choice,
//! never gets its documents into a table observer's batch to the same URL.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    observer_status, sqlstate, verify_signatures, wait_for_jobs, Cluster, Received, Sink, Worker,
};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Room for whole batches: up to 256 jobs claimed and in flight, all to the one sink.
const ROOMY: [(&str, &str); 3] = [
    ("CONCURRENCY", "256"),
    ("BATCH_SIZE", "256"),
    ("HTTP__MAX_IN_FLIGHT_PER_ENDPOINT", "256"),
];

/// A cluster with the extension, table `orders (id int primary key, note text)` and observer
/// `orders` on INSERT whose webhook action to `sink` carries `batch` (JSON) and `extra` fields.
async fn setup(
    sink: &Sink,
    batch: &str,
    extra: &str,
    options: &str,
) -> (Cluster, tokio_postgres::Client) {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    let action = format!(
        r#"{{"type": "webhook", "url": "{}", "batch": {batch}{extra}}}"#,
        sink.url("/orders")
    );
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, note text);
             SELECT observer_create('orders', 'orders', ARRAY['INSERT'], NULL, '{action}', '{options}');"
        ))
        .await
        .expect("setup");
    (cluster, client)
}

/// The elements of a request's array body (panics if the body is not an array).
fn elements(r: &Received) -> &Vec<serde_json::Value> {
    r.body
        .as_array()
        .unwrap_or_else(|| panic!("a batch body is an array: {}", r.body))
}

/// `data.event_id` of each element.
fn event_ids(r: &Received) -> Vec<i64> {
    elements(r)
        .iter()
        .map(|e| e["data"]["event_id"].as_i64().expect("data.event_id"))
        .collect()
}

/// `data.new.id` (the row) of each element.
fn row_ids(r: &Received) -> Vec<i64> {
    elements(r)
        .iter()
        .map(|e| e["data"]["new"]["id"].as_i64().expect("data.new.id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_one_transaction_go_in_signed_batches_in_commit_order() {
    let sink = Sink::start().await.expect("sink");
    let (cluster, client) = setup(
        &sink,
        r#"{"max_events": 100, "max_wait_ms": 200}"#,
        r#", "secret": "orders""#,
        "{}",
    )
    .await;
    let destinations = sink.url("/orders");
    let mut env = ROOMY.to_vec();
    env.extend([
        ("SECRETS__ORDERS", SECRET),
        ("SECRETS__ORDERS__DESTINATIONS", destinations.as_str()),
    ]);
    let _worker = Worker::start(&cluster.url("postgres"), &env).expect("worker");
    client
        .batch_execute("INSERT INTO orders SELECT i, 'note ' || i FROM generate_series(1, 250) i")
        .await
        .expect("insert");
    // One statement of 250 rows: two batch jobs of 100 (one job each) and 50 jobs of their own.
    assert!(
        wait_for_jobs(&client, "completed", 2 + 50, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(
        received
            .iter()
            .filter(|r| event_ids(r).len() == 100)
            .count(),
        2,
        "each batch job is one request of 100"
    );
    let mut seen = Vec::new();
    let mut ids = BTreeSet::new();
    for r in &received {
        let events = event_ids(r);
        assert!((1..=100).contains(&events.len()), "{} events", events.len());
        assert!(
            events.windows(2).all(|w| w[0] < w[1]),
            "commit order inside a batch: {events:?}"
        );
        for e in elements(r) {
            let own = e["webhook_id"].as_str().expect("each element has its id");
            assert!(own.starts_with("evt_"), "{own}");
        }
        let id = r.header("webhook-id").expect("one webhook-id per request");
        assert!(id.starts_with("batch_"), "{id}");
        assert!(ids.insert(id.to_string()), "{id} is one batch's");
        seen.extend(events);
    }
    seen.sort_unstable();
    let distinct: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 250, "each event delivered once");
    assert_eq!(distinct.len(), 250);
    assert!(
        received.len() < 250,
        "{} requests for 250 events: batched",
        received.len()
    );
    assert!(
        verify_signatures(&received, SECRET)
            .iter()
            .all(|v| v == "ok"),
        "{:?}",
        verify_signatures(&received, SECRET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_is_retried_whole_and_nothing_is_lost_or_doubled() {
    // The first request fails (500); every later one succeeds.
    let sink = Sink::start_with(Arc::new(
        |_, before| {
            if before.is_empty() {
                500
            } else {
                200
            }
        },
    ))
    .await
    .expect("sink");
    let (cluster, client) = setup(
        &sink,
        r#"{"max_events": 100, "max_wait_ms": 500}"#,
        "",
        r#"{"backoff_base": "50 milliseconds"}"#,
    )
    .await;
    let _worker = Worker::start(&cluster.url("postgres"), &ROOMY).expect("worker");
    client
        .batch_execute("INSERT INTO orders SELECT i, 'n' FROM generate_series(1, 30) i")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 30, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    let failed = &received[0];
    assert_eq!(failed.status, 500);
    let failed_events: BTreeSet<i64> = event_ids(failed).into_iter().collect();
    assert!(!failed_events.is_empty());
    // In the end every event is delivered exactly once, the failed ones included.
    let mut delivered: Vec<i64> = received
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(row_ids)
        .collect();
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        (1..=30).collect::<Vec<i64>>(),
        "none lost, none twice"
    );
    // The same jobs carry the same batch id; other jobs another.
    let mut by_set: HashMap<Vec<String>, BTreeSet<String>> = HashMap::new();
    for r in &received {
        let keys: Vec<String> = elements(r)
            .iter()
            .map(|e| e["webhook_id"].as_str().expect("id").to_string())
            .collect();
        by_set
            .entry(keys)
            .or_default()
            .insert(r.header("webhook-id").expect("id").to_string());
    }
    assert!(by_set.values().all(|ids| ids.len() == 1), "{by_set:?}");
    let headers: BTreeSet<&String> = by_set.values().flatten().collect();
    assert_eq!(
        headers.len(),
        by_set.len(),
        "distinct batches, distinct ids"
    );
    // Each job's attempts are in the audit trail: the failed one (500) and the delivery.
    let rows = client
        .query(
            "SELECT j.event_id, a.outcome, a.status FROM observer.attempts a
             JOIN observer.jobs j ON j.id = a.job_id ORDER BY j.event_id, a.attempt",
            &[],
        )
        .await
        .expect("attempts");
    let mut attempts: HashMap<i64, Vec<(String, Option<i32>)>> = HashMap::new();
    for row in rows {
        attempts
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    assert_eq!(attempts.len(), 30);
    for (event, log) in &attempts {
        let last = log.last().expect("an attempt");
        assert_eq!(
            (last.0.as_str(), last.1),
            ("completed", Some(200)),
            "{event}"
        );
        if failed_events.contains(event) {
            assert_eq!(
                (log[0].0.as_str(), log[0].1),
                ("retry", Some(500)),
                "{event}: {log:?}"
            );
        } else {
            assert_eq!(log.len(), 1, "{event}: {log:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_event_goes_alone_after_the_wait() {
    let sink = Sink::start().await.expect("sink");
    let (cluster, client) = setup(&sink, r#"{"max_wait_ms": 300}"#, "", "{}").await;
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (7, 'alone')")
        .await
        .expect("insert");
    assert!(
        sink.wait_received(1, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    let only = elements(&received[0]);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["data"]["new"]["note"], "alone");
    assert!(only[0]["webhook_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("evt_")));
    assert!(received[0]
        .header("webhook-id")
        .is_some_and(|id| id.starts_with("batch_")));
    assert!(wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_rows_are_split_under_max_bytes_and_a_bigger_one_goes_alone() {
    let sink = Sink::start().await.expect("sink");
    let (cluster, client) = setup(
        &sink,
        r#"{"max_events": 100, "max_bytes": 4096, "max_wait_ms": 200}"#,
        "",
        "{}",
    )
    .await;
    let _worker = Worker::start(&cluster.url("postgres"), &ROOMY).expect("worker");
    // Ten rows of about 1.5 kB (two or three to a request) and one of 10 kB.
    client
        .batch_execute(
            "INSERT INTO orders SELECT i, repeat('x', 1500) FROM generate_series(1, 10) i;
             INSERT INTO orders VALUES (11, repeat('y', 10000));",
        )
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 11, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    let mut seen = Vec::new();
    for r in &received {
        let n = elements(r).len();
        if n > 1 {
            // The elements, the array's brackets and commas aside.
            assert!(r.raw.len() - 2 - (n - 1) <= 4096, "{} bytes", r.raw.len());
        }
        if row_ids(r).contains(&11) {
            assert_eq!(n, 1, "the big row goes alone");
        }
        seen.extend(row_ids(r));
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=11).collect::<Vec<i64>>());
    assert!(
        received.len() < 11,
        "{} requests: rows batched",
        received.len()
    );
}

/// FIFO observers keep their order with batches: a claim hands out one job per row at a time,
/// so a batch never holds two changes of one row, and each row's changes arrive in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_observers_keep_each_rows_order_across_batches() {
    let sink = Sink::start().await.expect("sink");
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
               SELECT observer_create('counters', 'counters', ARRAY['INSERT', 'UPDATE'], NULL,
                   '{{"type": "webhook", "url": "{}", "batch": {{"max_events": 10, "max_wait_ms": 50}}}}',
                   '{{"fifo": true}}');"#,
            sink.url("/counters")
        ))
        .await
        .expect("setup");
    let _worker = Worker::start(&cluster.url("postgres"), &ROOMY).expect("worker");
    client
        .batch_execute("INSERT INTO counters SELECT i, 0 FROM generate_series(1, 4) i")
        .await
        .expect("insert");
    // Five rounds of one transaction per row, interleaved.
    for _ in 0..5 {
        for row in 1..=4 {
            client
                .execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&row])
                .await
                .expect("update");
        }
    }
    assert!(
        wait_for_jobs(&client, "completed", 24, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let mut order: HashMap<i64, Vec<i64>> = HashMap::new();
    for r in sink.received() {
        let rows = row_ids(&r);
        let distinct: BTreeSet<&i64> = rows.iter().collect();
        assert_eq!(
            distinct.len(),
            rows.len(),
            "one change per row in a batch: {rows:?}"
        );
        for e in elements(&r) {
            let new = &e["data"]["new"];
            order
                .entry(new["id"].as_i64().expect("id"))
                .or_default()
                .push(new["n"].as_i64().expect("n"));
        }
    }
    for row in 1..=4 {
        assert_eq!(order[&row], vec![0, 1, 2, 3, 4, 5], "row {row}");
    }
}

/// Hostile (DESIGN 3a, `app`): a queue an `app` enqueues into and a table observer, both batched
/// to the same URL, never share a request: a batch holds one observer's jobs only, and a key the
/// `app` picks to look like a batch id stays inside its own element, prefixed with its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_queue_never_joins_a_table_observers_batch() {
    let sink = Sink::start().await.expect("sink");
    let (cluster, client) = setup(&sink, r#"{"max_wait_ms": 300}"#, "", "{}").await;
    let queue_action = format!(
        r#"{{"type": "webhook", "url": "{}", "batch": {{"max_wait_ms": 300}}}}"#,
        sink.url("/orders")
    );
    client
        .batch_execute(&format!(
            "SELECT observer_create('q', NULL, action => '{queue_action}');
             CREATE ROLE app1 LOGIN;
             SELECT observer_grant('app1', 'app');"
        ))
        .await
        .expect("queue");
    let app = cluster.connect_as("app1").await;
    let _worker = Worker::start(&cluster.url("postgres"), &ROOMY).expect("worker");
    let forged = format!("batch_{}", "0".repeat(32));
    client
        .batch_execute("INSERT INTO orders SELECT i, 'table' FROM generate_series(1, 20) i")
        .await
        .expect("insert");
    for i in 0..20 {
        let key = if i == 0 {
            forged.clone()
        } else {
            format!("k{i}")
        };
        app.execute(
            "SELECT observer_enqueue('q', '{\"forged\": true}', $1)",
            &[&key],
        )
        .await
        .expect("enqueue");
    }
    assert!(
        wait_for_jobs(&client, "completed", 40, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let mut per_observer: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        let types: BTreeSet<&str> = elements(&r)
            .iter()
            .map(|e| e["type"].as_str().expect("type"))
            .collect();
        assert_eq!(types.len(), 1, "one observer per request: {types:?}");
        let header = r.header("webhook-id").expect("id");
        assert_ne!(header, forged, "the app's key is not the batch's id");
        for e in elements(&r) {
            let own = e["webhook_id"].as_str().expect("own id");
            if e["type"] == "q" {
                assert!(own.starts_with("key_"), "{own}");
            }
        }
        *per_observer
            .entry(types.into_iter().next().expect("one").to_string())
            .or_default() += elements(&r).len();
    }
    assert_eq!(per_observer.get("orders"), Some(&20), "{per_observer:?}");
    assert_eq!(per_observer.get("q"), Some(&20), "{per_observer:?}");
}

/// A batch goes to one URL with the plain documents: a request shaped per event (a template in
/// the URL or a header) cannot be batched, and the bounds are enforced; each refusal is 22023
/// naming the field and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_templates_or_out_of_bounds_is_refused_at_create() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers; CREATE TABLE t (id int PRIMARY KEY, note text);",
        )
        .await
        .expect("setup");
    let create = |action: &str| {
        format!("SELECT observer_create('t', 't', ARRAY['INSERT'], NULL, '{action}')")
    };
    for (action, want) in [
        (
            r#"{"type": "webhook", "url": "https://h.example/{{ new.id }}", "batch": {}}"#,
            "action.batch cannot be combined with the template in action.url",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "body": {"id": "{{ new.id }}"}, "batch": {}}"#,
            "action.body",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "headers": {"X-Id": "{{ new.id }}"}, "batch": {}}"#,
            "action.headers.X-Id",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_events": 0}}"#,
            "action.batch.max_events 0 is out of range",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_events": 1001}}"#,
            "action.batch.max_events 1001",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_bytes": 100}}"#,
            "action.batch.max_bytes 100",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_bytes": 10485761}}"#,
            "action.batch.max_bytes 10485761",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_wait_ms": 10001}}"#,
            "action.batch.max_wait_ms 10001",
        ),
        (
            r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_waits": 5}}"#,
            "max_waits",
        ),
        (
            r#"{"type": "slack", "url": "https://h.example/", "text": "t", "batch": {}}"#,
            "batch",
        ),
    ] {
        let err = client
            .batch_execute(&create(action))
            .await
            .expect_err(action);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "22023", "{action}: {db:?}");
        let text = format!("{} {}", db.message(), db.hint().unwrap_or(""));
        assert!(text.contains(want), "{action}: {text}");
    }
    // Nothing was created; a batch within bounds on a plain webhook is accepted and stored.
    assert_eq!(
        sqlstate(
            &client,
            &create(
                r#"{"type": "webhook", "url": "https://h.example/", "batch": {"max_events": 10}}"#
            )
        )
        .await,
        "ok"
    );
    let stored: String = client
        .query_one(
            "SELECT action->>'batch' FROM observer.observers WHERE name = 't'",
            &[],
        )
        .await
        .expect("stored")
        .get(0);
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("json");
    assert_eq!(
        stored,
        serde_json::json!({"max_events": 10, "max_bytes": 1048576, "max_wait_ms": 20})
    );
}

/// One event the receiver refuses for good (400 to any array holding it) is found by splitting its
/// batch: only it goes to the dead-letter queue, the nine others of its batch are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_event_does_not_take_its_batch_down() {
    let sink = Sink::start_with(Arc::new(|req, _| {
        let poisoned = req
            .body
            .as_array()
            .is_some_and(|docs| docs.iter().any(|d| d["data"]["new"]["note"] == "poison"));
        if poisoned {
            400
        } else {
            200
        }
    }))
    .await
    .expect("sink");
    let (cluster, client) = setup(
        &sink,
        r#"{"max_events": 10, "max_wait_ms": 500}"#,
        "",
        r#"{"max_attempts": 3, "backoff_base": "100 milliseconds"}"#,
    )
    .await;
    client
        .batch_execute(
            "INSERT INTO orders SELECT i, CASE WHEN i = 5 THEN 'poison' ELSE 'ok' END
             FROM generate_series(1, 10) i",
        )
        .await
        .expect("insert");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 9, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    assert!(
        wait_for_jobs(&client, "dead", 1, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    // Every good row arrived exactly once in a 2xx request; the poisoned one never did.
    let delivered: Vec<i64> = sink
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(row_ids)
        .collect();
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![1, 2, 3, 4, 6, 7, 8, 9, 10], "{delivered:?}");
    let dead_error: String = client
        .query_one(
            "SELECT last_error FROM observer.jobs WHERE state = 'dead'",
            &[],
        )
        .await
        .expect("dead job")
        .get(0);
    assert!(dead_error.contains("400"), "{dead_error}");
}
