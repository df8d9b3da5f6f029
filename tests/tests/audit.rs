//! The audit trail: every attempt is recorded in Postgres (endpoint, status, timing, error with a
//! response excerpt) and found by `observer_search()` by a word of the delivered row or of the
//! error; with `fraiseql_observers.audit_export` on, the worker exports it to Elasticsearch with
//! the `_bulk` API.
//!
//! Elasticsearch cannot run here: a recording HTTP server stands in for it, and the test checks
//! each request against the `_bulk` documentation
//! (<https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html>): `POST
//! /_bulk`, `Content-Type: application/x-ndjson`, action and source lines each ending in a
//! newline, `create` actions with an `_id` so a re-send is recognised; and it answers like
//! Elasticsearch does, including `"errors": true` with per-item statuses (201, 409, 429, 400) and
//! a 503 for the whole request while "unavailable".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    observer_status, wait_for_jobs, wait_until, Cluster, Received, Reply, Sink, Worker,
};

/// A sink that fails every job's first attempt with a 500 and a telling body.
async fn flaky_sink() -> Sink {
    Sink::start_scripted(Arc::new(|r: &Received, before: &[Received]| {
        let id = r.header("webhook-id");
        if before.iter().any(|b| b.header("webhook-id") == id) {
            Reply::status(200)
        } else {
            Reply {
                status: 500,
                body: Some("upstream quota exceeded for tenant 42".to_string()),
                ..Reply::default()
            }
        }
    }))
    .await
    .expect("sink")
}

async fn orders(client: &tokio_postgres::Client, sink: &Sink) {
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, note text);
               SELECT observer_create('orders', 'orders', ARRAY['INSERT'],
                   action => '{{"type": "webhook", "url": "{}"}}',
                   options => '{{"backoff_base": "50 milliseconds", "backoff_cap": "100 milliseconds"}}');"#,
            sink.url("/orders")
        ))
        .await
        .expect("setup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_search_finds_delivered_events_and_failed_attempts() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = flaky_sink().await;
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client, &sink).await;
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'ada', 'gift wrap with flamingo paper');
             INSERT INTO orders VALUES (2, 'grace', 'leave at door'), (3, 'edsger', 'ring twice, pelican');",
        )
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 3, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );

    // A delivered event, by a word of its row (row-level and batch-captured alike).
    for (word, id) in [("flamingo", 1), ("pelican", 3)] {
        let rows = client
            .query(
                "SELECT outcome, status, endpoint, duration_ms, (document->'new'->>'id')::int, webhook_id
                 FROM observer_search($1, outcome => 'completed')",
                &[&word],
            )
            .await
            .expect("search");
        assert_eq!(rows.len(), 1, "{word}");
        let r = &rows[0];
        assert_eq!(r.get::<_, String>(0), "completed");
        assert_eq!(r.get::<_, Option<i32>>(1), Some(200));
        assert_eq!(
            r.get::<_, Option<String>>(2),
            Some(format!("http://{}", sink.addr))
        );
        assert!(r.get::<_, Option<i32>>(3).is_some(), "timing recorded");
        assert_eq!(r.get::<_, i32>(4), id);
        assert!(r.get::<_, String>(5).starts_with("evt_"));
    }

    // A failed attempt, by a word of its error (the response excerpt).
    let failed = client
        .query(
            "SELECT attempt, status, error FROM observer_search('quota', observer => 'orders', outcome => 'retry')",
            &[],
        )
        .await
        .expect("search");
    assert_eq!(failed.len(), 3, "each job's first attempt failed");
    for r in &failed {
        assert_eq!(r.get::<_, i32>(0), 1);
        assert_eq!(r.get::<_, Option<i32>>(1), Some(500));
        assert_eq!(
            r.get::<_, String>(2),
            "HTTP 500: upstream quota exceeded for tenant 42"
        );
    }
    // Web-search syntax, filters, and clear errors.
    let n = client
        .query("SELECT 1 FROM observer_search('quota -tenant')", &[])
        .await
        .expect("search")
        .len();
    assert_eq!(n, 0);
    let all = client
        .query(
            "SELECT 1 FROM observer_search(NULL, max_results => 10)",
            &[],
        )
        .await
        .expect("search")
        .len();
    assert_eq!(all, 6, "three failed and three delivered attempts");
    let e = client
        .query(
            "SELECT 1 FROM observer_search('x', observer => 'nope')",
            &[],
        )
        .await
        .expect_err("unknown observer");
    assert_eq!(e.code().map(|c| c.code()), Some("42704"));
    let e = client
        .query("SELECT 1 FROM observer_search('x', outcome => 'lost')", &[])
        .await
        .expect_err("unknown outcome");
    assert_eq!(e.code().map(|c| c.code()), Some("22023"));
}

/// The parts of a `_bulk` request: (action, source) pairs; panics on anything the `_bulk`
/// documentation does not allow.
fn parse_bulk(r: &Received) -> Vec<(serde_json::Value, serde_json::Value)> {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/_bulk");
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let body = String::from_utf8(r.raw.clone()).expect("utf8");
    assert!(body.ends_with('\n'), "the last line ends with a newline");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect();
    assert_eq!(
        lines.len() % 2,
        0,
        "an action line and a source line per document"
    );
    lines
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// An Elasticsearch stand-in: records requests, answers the index template with 200 and each
/// `_bulk` with what `item_status` says for each document (by position), or with `whole` for
/// the whole request when set.
fn elasticsearch(
    unavailable: Arc<AtomicBool>,
    item_status: Arc<dyn Fn(usize, usize) -> u16 + Send + Sync>,
) -> fraiseql_observers_tests::sink::Script {
    let bulk_calls = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(AtomicUsize::new(0));
    Arc::new(move |r: &Received, _: &[Received]| {
        if r.method == "PUT" && r.path.starts_with("/_index_template/") {
            return Reply {
                status: 200,
                body: Some(r#"{"acknowledged":true}"#.to_string()),
                ..Reply::default()
            };
        }
        if unavailable.load(Ordering::SeqCst) {
            // Away: 503, or 429 back-pressure for the whole request, in turn.
            let (status, kind) = if refusals.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                (503, "unavailable_shards_exception")
            } else {
                (429, "es_rejected_execution_exception")
            };
            return Reply {
                status,
                body: Some(
                    serde_json::json!({"error": {"type": kind}, "status": status}).to_string(),
                ),
                ..Reply::default()
            };
        }
        let call = bulk_calls.fetch_add(1, Ordering::SeqCst);
        let docs = parse_bulk(r);
        let items: Vec<serde_json::Value> = docs
            .iter()
            .enumerate()
            .map(|(i, (action, _))| {
                let status = item_status(call, i);
                let mut item = serde_json::json!({
                    "_index": action["create"]["_index"], "_id": action["create"]["_id"], "status": status
                });
                if status >= 300 {
                    let kind = match status {
                        409 => "version_conflict_engine_exception",
                        429 => "es_rejected_execution_exception",
                        _ => "mapper_parsing_exception",
                    };
                    item["error"] = serde_json::json!({"type": kind, "reason": "stand-in refusal"});
                }
                serde_json::json!({ "create": item })
            })
            .collect();
        let errors = items
            .iter()
            .any(|i| i["create"]["status"].as_u64() != Some(201));
        Reply {
            status: 200,
            body: Some(
                serde_json::json!({"took": 1, "errors": errors, "items": items}).to_string(),
            ),
            ..Reply::default()
        }
    })
}

async fn attempts(client: &tokio_postgres::Client) -> BTreeSet<String> {
    client
        .query(
            "SELECT job_id || '-' || attempt FROM observer.attempts",
            &[],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_documents_reach_elasticsearch_by_the_bulk_contract() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = flaky_sink().await;
    let es = Sink::start_scripted(elasticsearch(
        Arc::new(AtomicBool::new(false)),
        Arc::new(|_, _| 201),
    ))
    .await
    .expect("elasticsearch stand-in");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("ALTER DATABASE postgres SET fraiseql_observers.audit_export = on")
        .await
        .expect("export on");
    let client = cluster.connect("postgres").await.expect("reconnect");
    orders(&client, &sink).await;
    let es_url = format!("http://{}", es.addr);
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("ELASTICSEARCH__URL", es_url.as_str()),
            ("ELASTICSEARCH__API_KEY", "c2VjcmV0LWlkOnNlY3JldC1rZXk="),
            ("ELASTICSEARCH__FLUSH_MS", "100"),
        ],
    )
    .expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'ada', 'flamingo'), (2, 'grace', NULL)")
        .await
        .expect("insert");
    assert!(wait_for_jobs(&client, "completed", 2, Duration::from_secs(30)).await);
    let exported = wait_until(Duration::from_secs(30), || async {
        observer_status(&client).await["audit"]["export_pending"] == 0
    })
    .await;
    assert!(exported, "{}", observer_status(&client).await);

    let requests = es.received();
    // First the index template, then the documents.
    let template = &requests[0];
    assert_eq!(template.method, "PUT");
    assert_eq!(template.path, "/_index_template/fraiseql-observers-audit");
    assert_eq!(
        template.body["index_patterns"],
        serde_json::json!(["fraiseql-observers-audit-*"])
    );
    assert_eq!(
        template.body["template"]["mappings"]["properties"]["payload"]["type"],
        "text"
    );
    assert_eq!(
        template.body["template"]["mappings"]["properties"]["event_ids"]["type"], "long",
        "a batch job's events are searchable in the index"
    );
    let mut ids = BTreeMap::new();
    for r in requests.iter().filter(|r| r.path == "/_bulk") {
        assert_eq!(
            r.header("authorization"),
            Some("ApiKey c2VjcmV0LWlkOnNlY3JldC1rZXk=")
        );
        for (action, source) in parse_bulk(r) {
            let create = action["create"].as_object().expect("a create action");
            assert_eq!(create.len(), 2, "_index and _id only: {action}");
            let index = create["_index"].as_str().expect("_index");
            let id = create["_id"].as_str().expect("_id").to_string();
            assert!(
                index.starts_with("fraiseql-observers-audit-20") && index.len() == 35,
                "daily index: {index}"
            );
            assert_eq!(
                id,
                format!("{}-{}", source["job_id"], source["attempt"]),
                "_id = <job_id>-<attempt>"
            );
            assert_eq!(source["observer"], "orders");
            assert_eq!(source["action"], "webhook");
            assert!(source["@timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with("+00:00")));
            assert!(source["payload"].is_string(), "the payload is text");
            if source["outcome"] == "retry" {
                assert_eq!(source["status"], 500);
                assert_eq!(
                    source["error"],
                    "HTTP 500: upstream quota exceeded for tenant 42"
                );
            }
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    let expected = attempts(&client).await;
    assert_eq!(expected.len(), 4, "two failed and two delivered attempts");
    assert_eq!(ids.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        ids.values().all(|n| *n == 1),
        "each document sent once: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_away_or_refusing_slows_no_delivery_and_loses_or_doubles_nothing() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let unavailable = Arc::new(AtomicBool::new(true));
    // Once available: in the first _bulk answer the second document is refused for good (400)
    // and the third is rejected for now (429); everything else is created.
    let es = Sink::start_scripted(elasticsearch(
        unavailable.clone(),
        Arc::new(|call, i| match (call, i) {
            (0, 1) => 400,
            (0, 2) => 429,
            _ => 201,
        }),
    ))
    .await
    .expect("elasticsearch stand-in");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("ALTER DATABASE postgres SET fraiseql_observers.audit_export = on")
        .await
        .expect("export on");
    let client = cluster.connect("postgres").await.expect("reconnect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               SELECT observer_create('mail', NULL, action => '{{"type": "webhook", "url": "{}"}}');
               SELECT observer_enqueue_many('mail', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 20) i));"#,
            sink.url("/mail")
        ))
        .await
        .expect("setup");
    let es_url = format!("http://{}", es.addr);
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("ELASTICSEARCH__URL", es_url.as_str()),
            ("ELASTICSEARCH__FLUSH_MS", "100"),
            ("ELASTICSEARCH__MAX_BACKOFF_MS", "400"),
            ("ELASTICSEARCH__BATCH_SIZE", "8"),
        ],
    )
    .expect("worker");
    // Elasticsearch answers 503: every delivery still completes, the documents wait.
    assert!(
        wait_for_jobs(&client, "completed", 20, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let status = observer_status(&client).await;
    assert_eq!(status["audit"]["export_pending"], 20, "{status}");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            es.received()
                .iter()
                .filter(|r| r.path == "/_bulk")
                .map(|r| r.status)
                .collect::<BTreeSet<u16>>()
                .is_superset(&BTreeSet::from([503, 429]))
        })
        .await,
        "the exporter kept trying through 503 and 429 answers"
    );

    // Back: everything arrives, nothing twice; the refused document stays with its reason.
    unavailable.store(false, Ordering::SeqCst);
    let settled = wait_until(Duration::from_secs(30), || async {
        let s = observer_status(&client).await;
        s["audit"]["export_pending"] == 0 && s["audit"]["export_refused"] == 1
    })
    .await;
    assert!(
        settled,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );

    let mut created = BTreeMap::new();
    for r in es
        .received()
        .iter()
        .filter(|r| r.path == "/_bulk" && r.status == 200)
    {
        for (action, _) in parse_bulk(r) {
            let id = action["create"]["_id"].as_str().expect("_id").to_string();
            *created.entry(id).or_insert(0) += 1;
        }
    }
    let refused: Vec<(i64, i32, String)> = client
        .query(
            "SELECT job_id, attempt, refused FROM observer.audit_outbox",
            &[],
        )
        .await
        .expect("outbox")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].2.starts_with("400 mapper_parsing_exception"),
        "{refused:?}"
    );
    let refused_id = format!("{}-{}", refused[0].0, refused[0].1);
    let all = attempts(&client).await;
    assert_eq!(all.len(), 20);
    // Every document was sent; only the 429 one twice (its first answer was "not now").
    assert_eq!(created.keys().cloned().collect::<BTreeSet<_>>(), all);
    let twice: Vec<&String> = created
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        twice.len(),
        1,
        "only the rejected-for-now document was re-sent: {created:?}"
    );
    assert_ne!(*twice[0], refused_id, "a refused document is not re-sent");
}
