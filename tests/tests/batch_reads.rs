//! The read side of batch jobs (one job for a full batch of one statement's events, queue.sql
//! "Batch jobs"), against a real cluster, the real worker and a recording sink: an event
//! delivered in a batch job has no job of its own, yet everything that finds "the job of an
//! event" finds the batch: `observer_debug_event` (and the console's event page built on it)
//! shows the batch job and its attempt for any of its events, `observer_search` finds the
//! batch's attempt by a word of any of its rows and shows that row in its document, and
//! `observer_replay` delivers an event of a completed batch again, keeping the batch's history.
//! Hostile (DESIGN 3a): a role that may only write the observed table reads no batch document
//! through anything it can call.

use std::time::Duration;

use fraiseql_observers_tests::queue::count;
use fraiseql_observers_tests::{free_port, http_get, sqlstate, wait_until, Cluster, Sink, Worker};
use serde_json::Value;
use tokio_postgres::Client;

/// A webhook to `url` that sends batches of 10 events, waiting at most 100 ms for a batch.
fn batched(url: &str) -> String {
    format!(
        r#"{{"type": "webhook", "url": "{url}", "batch": {{"max_events": 10, "max_wait_ms": 100}}}}"#
    )
}

/// A cluster with table `t (id int primary key, word text)` and observer `b` on INSERT whose
/// action is `action`.
async fn setup(action: &str) -> (Cluster, Client) {
    let cluster = Cluster::start(&[]).expect("cluster");
    let root = cluster.connect("postgres").await.expect("connect");
    root.batch_execute(&format!(
        "CREATE EXTENSION fraiseql_observers;
         CREATE TABLE public.t (id int PRIMARY KEY, word text);
         SELECT observer_create('b', 'public.t', ARRAY['INSERT'], NULL, '{action}');"
    ))
    .await
    .expect("setup");
    (cluster, root)
}

async fn json(c: &Client, sql: &str) -> Value {
    let text: String = c.query_one(sql, &[]).await.expect(sql).get(0);
    serde_json::from_str(&text).expect("json")
}

/// 20 rows in one statement, `zebra` the word of row 15 only, and the two batch jobs the
/// dispatcher makes of them: (job id, its event ids) in event order.
async fn twenty_rows(c: &Client) -> Vec<(i64, Vec<i64>)> {
    c.batch_execute(
        "INSERT INTO t SELECT i, CASE WHEN i = 15 THEN 'zebra' ELSE 'plain' || i END FROM generate_series(1, 20) i",
    )
    .await
    .expect("insert");
    let made = wait_until(Duration::from_secs(20), || async {
        count(c, "SELECT count(*) FROM observer.jobs").await == 2
    })
    .await;
    assert!(made, "the dispatcher made the jobs");
    c.query(
        "SELECT id, event_ids FROM observer.jobs WHERE event_ids IS NOT NULL ORDER BY event_id",
        &[],
    )
    .await
    .expect("batch jobs")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The event ids a request delivered: its array's elements' or its document's `data.event_id`.
fn delivered_events(body: &Value) -> Vec<i64> {
    match body.as_array() {
        Some(elements) => elements
            .iter()
            .filter_map(|e| e["data"]["event_id"].as_i64())
            .collect(),
        None => body["data"]["event_id"].as_i64().into_iter().collect(),
    }
}

/// How many times the sink answered 2xx for a request holding `event`.
fn deliveries_of(sink: &Sink, event: i64) -> usize {
    sink.received()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .filter(|r| delivered_events(&r.body).contains(&event))
        .count()
}

async fn wait_completed(c: &Client, n: i64, worker: &Worker) {
    let done = wait_until(Duration::from_secs(60), || async {
        count(
            c,
            "SELECT count(*) FROM observer.jobs WHERE state = 'completed'",
        )
        .await
            == n
    })
    .await;
    let jobs = json(
        c,
        "SELECT coalesce(jsonb_agg(to_jsonb(j) - 'search' - 'documents'), '[]')::text FROM observer.jobs j",
    )
    .await;
    assert!(done, "{n} jobs completed: {jobs}\n{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_batch_job_is_found_debugged_searched_and_replayed() {
    let sink = Sink::start().await.expect("sink");
    let (cluster, c) = setup(&batched(&sink.url("/b"))).await;
    let batches = twenty_rows(&c).await;
    assert_eq!(batches.len(), 2, "two full batches of 10: {batches:?}");
    assert!(batches.iter().all(|(_, ids)| ids.len() == 10));
    // Row 15: the fifth event of the second batch.
    let (job, ids) = batches[1].clone();
    let middle = ids[4];

    // The worker serves the console too (its [console] section, loopback without a token).
    let port = free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[console]\nlisten = \"127.0.0.1:{port}\"\nloopback_without_token = true\n"),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let worker =
        Worker::start(&cluster.url("postgres"), &[("CONFIG", config.as_str())]).expect("worker");
    wait_completed(&c, 2, &worker).await;
    assert_eq!(deliveries_of(&sink, middle), 1, "{}", worker.log());

    // The debugger's story of the middle event is its batch job's.
    let story = json(&c, &format!("SELECT observer_debug_event({middle})::text")).await;
    let b = &story["observers"][0];
    assert_eq!(b["decision"], "job", "{story}");
    assert_eq!(b["job"]["id"], job, "{story}");
    assert_eq!(b["job"]["state"], "completed");
    assert_eq!(b["job"]["batch"]["events"], 10);
    assert_eq!(b["job"]["batch"]["first_event_id"], ids[0]);
    assert!(
        b["job"]["webhook_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("batch_"),
        "{story}"
    );
    let attempts = b["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{story}");
    assert_eq!(attempts[0]["outcome"], "completed");
    assert_eq!(attempts[0]["job_id"], job);

    // A word of the middle row alone finds the batch's attempt, that row in its document.
    let hits = json(
        &c,
        "SELECT coalesce(jsonb_agg(to_jsonb(s)), '[]')::text FROM observer_search('zebra') s",
    )
    .await;
    let hits = hits.as_array().expect("rows");
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["job_id"], job);
    assert_eq!(
        hits[0]["event_id"], ids[0],
        "a batch job's event is its first"
    );
    let doc = &hits[0]["document"];
    assert_eq!(doc["observer"], "b");
    assert_eq!(doc["event_ids"], serde_json::json!(ids));
    let events = doc["events"].as_array().expect("events");
    assert_eq!(events.len(), 10, "{doc}");
    let row = events
        .iter()
        .find(|e| e["event_id"] == middle)
        .expect("the middle event in the document");
    assert_eq!(row["new"]["word"], "zebra");
    assert_eq!(row["op"], "INSERT");
    // observer.audit_document (the Elasticsearch export's) is the same document.
    let exported = json(&c, &format!("SELECT observer.audit_document({job})::text")).await;
    assert_eq!(&exported, doc);

    // The console's event page shows the batch job and its attempt.
    let (status, page) = http_get(port, &format!("/events/{middle}"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-testid=\"batch\""), "{page}");
    assert!(page.contains("batch of 10 events from event"), "{page}");
    assert_eq!(page.matches("data-testid=\"attempt\"").count(), 1, "{page}");

    // Replayed, the batch goes again whole, with the same webhook-id, its history kept.
    let queued = count(&c, "SELECT observer_replay('b', now() - interval '1 hour')").await;
    assert_eq!(queued, 2, "the two batch jobs");
    wait_completed(&c, 2, &worker).await;
    let again = wait_until(Duration::from_secs(30), || async {
        deliveries_of(&sink, middle) == 2
    })
    .await;
    assert!(again, "the middle event delivered again: {}", worker.log());
    // Its document says which attempt it is (the batch job's second).
    let resent = sink
        .received()
        .into_iter()
        .rev()
        .find(|r| (200..300).contains(&r.status) && delivered_events(&r.body).contains(&middle))
        .expect("the second delivery");
    let element = resent
        .body
        .as_array()
        .expect("a batch")
        .iter()
        .find(|e| e["data"]["event_id"] == middle)
        .cloned();
    assert_eq!(
        element.expect("the middle event")["attempt"],
        2,
        "{}",
        resent.body
    );
    let attempts = count(
        &c,
        &format!(
            "SELECT count(*) FROM observer.attempts WHERE job_id = {job} AND outcome = 'completed'"
        ),
    )
    .await;
    assert_eq!(
        attempts, 2,
        "the batch job's first attempt kept, the replay's added"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM observer.jobs").await,
        2,
        "no job of its own"
    );
}

/// When the observer's condition changed since, a replay of a batch whose first event no longer
/// matches sends the events that do as jobs of their own; the batch job stays completed, and
/// both jobs are in the event's story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_part_of_a_batch_makes_jobs_of_their_own_and_keeps_the_batch() {
    let sink = Sink::start().await.expect("sink");
    let action = batched(&sink.url("/b"));
    let (cluster, c) = setup(&action).await;
    let batches = twenty_rows(&c).await;
    let (job, ids) = batches[1].clone();
    let middle = ids[4];
    let worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    wait_completed(&c, 2, &worker).await;

    c.batch_execute(&format!(
        "SELECT observer_replace('b', 'public.t', ARRAY['INSERT'], '$.new.word == \"zebra\"', '{action}')"
    ))
    .await
    .expect("replace");
    let queued = count(&c, "SELECT observer_replay('b', now() - interval '1 hour')").await;
    assert_eq!(queued, 1, "the middle event alone");
    let again = wait_until(Duration::from_secs(30), || async {
        deliveries_of(&sink, middle) == 2
    })
    .await;
    assert!(again, "the middle event delivered again: {}", worker.log());
    wait_completed(&c, 3, &worker).await;
    for other in ids.iter().filter(|&&e| e != middle) {
        assert_eq!(deliveries_of(&sink, *other), 1, "event {other} sent once");
    }

    let story = json(&c, &format!("SELECT observer_debug_event({middle})::text")).await;
    let b = &story["observers"][0];
    let own = b["job"]["id"].as_i64().expect("its own job");
    assert_ne!(own, job, "{story}");
    assert_eq!(b["job"]["webhook_id"], format!("evt_{middle}_1"), "{story}");
    assert!(b["job"].get("batch").is_none(), "{story}");
    let whose: Vec<i64> = b["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["job_id"].as_i64().expect("job_id"))
        .collect();
    assert_eq!(
        whose,
        vec![job, own],
        "the batch's attempt, then its own: {story}"
    );
    let state: String = c
        .query_one("SELECT state FROM observer.jobs WHERE id = $1", &[&job])
        .await
        .expect("batch job")
        .get(0);
    assert_eq!(state, "completed");
}

/// DESIGN 3a: a role that may only write the observed table makes batch jobs, and reads none of
/// their documents, jobs or attempts, through any function of the extension or its tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_reads_no_batch_document() {
    let (cluster, c) = setup(&batched("https://example.com/hook")).await;
    c.batch_execute(
        "CREATE ROLE writer LOGIN;
         GRANT INSERT ON public.t TO writer;",
    )
    .await
    .expect("writer");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute("INSERT INTO t SELECT i, 'secret' || i FROM generate_series(1, 20) i")
        .await
        .expect("a writer's insert is captured");
    let made = wait_until(Duration::from_secs(20), || async {
        count(
            &c,
            "SELECT count(*) FROM observer.jobs WHERE event_ids IS NOT NULL",
        )
        .await
            == 2
    })
    .await;
    assert!(made, "the writer's rows made batch jobs");
    let job = count(&c, "SELECT min(id) FROM observer.jobs").await;
    for sql in [
        "SELECT observer_debug_event(1030)".to_string(),
        "SELECT * FROM observer_search('secret5')".to_string(),
        "SELECT * FROM observer_audit_batch()".to_string(),
        format!("SELECT observer.audit_document({job})"),
        "SELECT * FROM observer.search_attempts('secret5', NULL, NULL, NULL, NULL, 10)".to_string(),
        "SELECT * FROM observer.event_jobs(1030, 1)".to_string(),
        "SELECT observer.batch_document('b', ARRAY[1024, 1025]::bigint[], '[]')".to_string(),
        "SELECT * FROM observer_dlq_list()".to_string(),
        "SELECT observer_replay('b', now() - interval '1 hour')".to_string(),
        "SELECT * FROM observer_claim('w', 10, '30 seconds')".to_string(),
        "SELECT event_ids, search, documents FROM observer.jobs".to_string(),
        "SELECT * FROM observer.attempts".to_string(),
    ] {
        assert_eq!(sqlstate(&writer, &sql).await, "42501", "{sql}");
    }
}
