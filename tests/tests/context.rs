//! Change context and ordering keys, end to end: each event carries the writing transaction's id,
//! the role it wrote as and the context it set (`SET LOCAL fraiseql_observers.context`), the
//! delivered document carries the attempt number, conditions and templates can read all of it;
//! an observer with `ordering_key` delivers each key's changes in commit order through retries
//! while the other keys flow. A context that is not a bounded JSON object is refused by `SET`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    first_attempt_then, observer_status as status, sqlstate, wait_for_jobs, wait_until, Cluster,
    Received, Sink, Worker,
};
use serde_json::{json, Value};

/// The extension, an `orders` table writable by the login role `writer`, and an observer of it
/// with `action`, `condition` and `options`.
async fn setup(client: &tokio_postgres::Client, condition: &str, action: &str, options: &str) {
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, account_id int NOT NULL, status text NOT NULL);
             CREATE ROLE writer LOGIN;
             GRANT INSERT, UPDATE ON orders TO writer;
             SELECT observer_create('orders', 'orders', ARRAY['INSERT', 'UPDATE'], {condition},
                 '{action}', '{options}');"
        ))
        .await
        .expect("create extension, table, role and observer");
}

/// The delivered document of each event id, from the requests the sink answered 2xx.
fn delivered_by_event(sink: &Sink) -> HashMap<i64, Value> {
    sink.received()
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| {
            (
                r.body["data"]["event_id"].as_i64().expect("event_id"),
                r.body,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_carries_its_transaction_role_and_context_and_each_delivery_its_attempt() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // 503 to the first request of every webhook-id, 200 to the second: every event is delivered
    // twice, as attempt 1 and attempt 2.
    let sink = Sink::start_with(first_attempt_then(503, 200))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    let action = format!(r#"{{"type": "webhook", "url": "{}"}}"#, sink.url("/hooks"));
    setup(
        &client,
        "NULL",
        &action,
        r#"{"backoff_base": "50 milliseconds"}"#,
    )
    .await;
    let writer = cluster.connect_as("writer").await;

    // Transaction 1 sets a context; its two rows carry it. Transaction 2, the same session right
    // after, sets none: SET LOCAL ended with transaction 1.
    let tx1: i64 = writer
        .simple_query(
            r#"BEGIN;
               SET LOCAL fraiseql_observers.context = '{"request_id": "r-42", "user_id": 7, "role": "admin"}';
               INSERT INTO orders VALUES (1, 10, 'new'), (2, 10, 'new');
               SELECT pg_current_xact_id()::text;
               COMMIT;"#,
        )
        .await
        .expect("transaction 1")
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("txid")
        .parse()
        .expect("a number");
    writer
        .batch_execute("INSERT INTO orders VALUES (3, 11, 'new')")
        .await
        .expect("transaction 2");
    // The same change by another role (the superuser).
    client
        .batch_execute("UPDATE orders SET status = 'paid' WHERE id = 3")
        .await
        .expect("transaction 3");

    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 4, Duration::from_secs(60)).await,
        "{}",
        status(&client).await
    );
    let docs = delivered_by_event(&sink);
    assert_eq!(docs.len(), 4, "{docs:?}");
    let mut by_id: Vec<&Value> = docs.values().collect();
    by_id.sort_by_key(|d| {
        (
            d["data"]["new"]["id"].as_i64(),
            d["data"]["op"].as_str() == Some("UPDATE"),
        )
    });
    let context = json!({"request_id": "r-42", "user_id": 7, "role": "admin"});
    for doc in &by_id[..2] {
        assert_eq!(doc["data"]["txid"], json!(tx1), "{doc}");
        assert_eq!(doc["data"]["context"], context, "{doc}");
        // A context cannot pass for the role: the role is the one the write ran as.
        assert_eq!(doc["data"]["role"], json!("writer"), "{doc}");
    }
    let (insert3, update3) = (by_id[2], by_id[3]);
    assert!(insert3["data"].get("context").is_none(), "{insert3}");
    assert_eq!(insert3["data"]["role"], json!("writer"));
    assert_ne!(insert3["data"]["txid"], json!(tx1));
    assert_eq!(update3["data"]["role"], json!("postgres"));
    assert!(update3["data"].get("context").is_none(), "{update3}");

    // Each webhook-id was sent as attempt 1 (answered 503), then attempt 2, with the same data.
    let mut attempts: HashMap<String, Vec<(u16, Value)>> = HashMap::new();
    for r in sink.received() {
        let id = r.header("webhook-id").expect("webhook-id").to_string();
        attempts.entry(id).or_default().push((r.status, r.body));
    }
    assert_eq!(attempts.len(), 4);
    for (id, sent) in &attempts {
        let numbers: Vec<(u16, i64)> = sent
            .iter()
            .map(|(s, b)| (*s, b["attempt"].as_i64().expect("attempt")))
            .collect();
        assert_eq!(numbers, vec![(503, 1), (200, 2)], "{id}");
        assert_eq!(sent[0].1["data"], sent[1].1["data"], "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_templates_read_the_context_and_the_role() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    let action = format!(
        r#"{{"type": "slack", "url": "{}",
             "text": "order {{{{ new.id }}}} by {{{{ role }}}} for {{{{ context.request_id }}}} (attempt {{{{ attempt }}}}, tx {{{{ txid }}}})"}}"#,
        sink.url("/services/T/B/X")
    );
    // Only imports by the writer role.
    setup(
        &client,
        r#"'$.context.source == "import" && $.role == "writer"'"#,
        &action,
        "{}",
    )
    .await;
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(
            r#"BEGIN;
               SET LOCAL fraiseql_observers.context = '{"source": "import", "request_id": "imp-1"}';
               INSERT INTO orders VALUES (1, 10, 'new');
               COMMIT;
               BEGIN;
               SET LOCAL fraiseql_observers.context = '{"source": "ui", "request_id": "ui-1"}';
               INSERT INTO orders VALUES (2, 10, 'new');
               COMMIT;
               INSERT INTO orders VALUES (3, 10, 'new');"#,
        )
        .await
        .expect("writes");
    // The superuser's import is not the writer's.
    client
        .batch_execute(
            r#"BEGIN;
               SET LOCAL fraiseql_observers.context = '{"source": "import", "request_id": "imp-2"}';
               INSERT INTO orders VALUES (4, 10, 'new');
               COMMIT;"#,
        )
        .await
        .expect("superuser write");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(60)).await,
        "{}",
        status(&client).await
    );
    // Every event is decided: one job, three conditions false.
    let dispatched = wait_until(Duration::from_secs(30), || async {
        let n: i64 = client
            .query_one("SELECT events_dispatched FROM observer.dispatch_state", &[])
            .await
            .expect("dispatch state")
            .get(0);
        n == 4
    })
    .await;
    assert!(dispatched, "{}", status(&client).await);
    let jobs: i64 = client
        .query_one("SELECT count(*) FROM observer.jobs", &[])
        .await
        .expect("jobs")
        .get(0);
    assert_eq!(jobs, 1, "only the writer's import matched");

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let text = received[0].body["text"].as_str().expect("text").to_string();
    let txid: i64 = client
        .query_one(
            "SELECT tx::text::bigint FROM observer.event_log WHERE context ->> 'request_id' = 'imp-1'",
            &[],
        )
        .await
        .expect("tx")
        .get(0);
    assert_eq!(
        text,
        format!("order 1 by writer for imp-1 (attempt 1, tx {txid})")
    );
    // observer_debug_event says why the UI write made no job.
    let ui_event: i64 = client
        .query_one(
            "SELECT id FROM observer.events WHERE context ->> 'request_id' = 'ui-1'",
            &[],
        )
        .await
        .expect("ui event")
        .get(0);
    let story: String = client
        .query_one("SELECT observer_debug_event($1)::text", &[&ui_event])
        .await
        .expect("debug event")
        .get(0);
    assert!(story.contains("condition_false"), "{story}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_must_be_a_bounded_json_object_and_is_refused_when_set() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(
        &client,
        "NULL",
        r#"{"type": "webhook", "url": "https://example.com/hook"}"#,
        "{}",
    )
    .await;
    let writer = cluster.connect_as("writer").await;
    let too_big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(8192));
    // \u0000 is JSON but no jsonb: refused by SET, not by the first captured write.
    let nul = r#"{"a": "\u0000"}"#;
    for bad in [
        "[1, 2]",
        "42",
        "not json",
        r#"{"open": "#,
        nul,
        too_big.as_str(),
    ] {
        let set = format!(
            "BEGIN; SET LOCAL fraiseql_observers.context = '{bad}'; INSERT INTO orders VALUES (1, 1, 'n'); COMMIT"
        );
        assert_eq!(sqlstate(&writer, &set).await, "22023", "{bad:.40}");
        writer.batch_execute("ROLLBACK").await.expect("rollback");
    }
    // Nothing was captured by the refused transactions, and a good context works after them.
    writer
        .batch_execute(
            r#"BEGIN; SET LOCAL fraiseql_observers.context = '{"ok": true}';
               INSERT INTO orders VALUES (1, 1, 'n'); COMMIT;"#,
        )
        .await
        .expect("a good context");
    let contexts: Vec<Option<String>> = client
        .query("SELECT context::text FROM observer.events ORDER BY id", &[])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(contexts, vec![Some(r#"{"ok": true}"#.to_string())]);
    // The message says what is wrong and how to set it.
    let err = writer
        .batch_execute("SET fraiseql_observers.context = '[1]'")
        .await
        .expect_err("refused");
    let db = err.as_db_error().expect("a database error");
    assert!(db.detail().unwrap_or("").contains("JSON object"), "{db:?}");
    assert!(db.hint().unwrap_or("").contains("SET LOCAL"), "{db:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordering_key_keeps_each_account_in_commit_order_through_retries() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // Account 1's first three deliveries fail; everything else succeeds at once.
    let sink = Sink::start_with(Arc::new(|req, before| {
        let account = |b: &Value| b["data"]["new"]["account_id"].as_i64();
        let earlier = before
            .iter()
            .filter(|r| account(&r.body) == Some(1))
            .count();
        if account(&req.body) == Some(1) && earlier < 3 {
            500
        } else {
            200
        }
    }))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    let action = format!(r#"{{"type": "webhook", "url": "{}"}}"#, sink.url("/ledger"));
    setup(
        &client,
        "NULL",
        &action,
        r#"{"ordering_key": "$.new.account_id", "backoff_base": "200 milliseconds", "max_attempts": 10}"#,
    )
    .await;
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");

    // Interleaved writes from two sessions, one transaction each: accounts 1 and 2 alternate.
    let other = cluster.connect_as("writer").await;
    for id in 1..=20 {
        let session = if id % 3 == 0 { &other } else { &client };
        session
            .batch_execute(&format!(
                "INSERT INTO orders VALUES ({id}, {}, 'new')",
                1 + id % 2
            ))
            .await
            .expect("insert");
    }
    assert!(
        wait_for_jobs(&client, "completed", 20, Duration::from_secs(120)).await,
        "{}",
        status(&client).await
    );

    let received = sink.received();
    let account = |r: &Received| {
        r.body["data"]["new"]["account_id"]
            .as_i64()
            .expect("account")
    };
    let id = |r: &Received| r.body["data"]["new"]["id"].as_i64().expect("id");
    for acct in [1, 2] {
        // Every request of the account (failed ones included) is for the oldest row of the
        // account not yet delivered: never a later row while an earlier one waits.
        let mut delivered: Vec<i64> = Vec::new();
        for r in received.iter().filter(|r| account(r) == acct) {
            let expected = (1..=20)
                .filter(|i| 1 + i % 2 == acct && !delivered.contains(i))
                .min();
            assert_eq!(Some(id(r)), expected, "account {acct}: {:?}", delivered);
            if r.status == 200 {
                delivered.push(id(r));
            }
        }
        assert_eq!(delivered.len(), 10, "account {acct}");
    }
    // Account 2 flowed while account 1 waited for its retries.
    // (Dead jobs are parked by default under an ordering key: see the next test.)
    let first_ok_of_1 = received
        .iter()
        .position(|r| account(r) == 1 && r.status == 200)
        .expect("account 1 delivered");
    assert!(
        received[..first_ok_of_1]
            .iter()
            .any(|r| account(r) == 2 && r.status == 200),
        "account 2 was held behind account 1"
    );
}

/// Any writer of the table chooses the ordering key of its rows: a row of one writer that can never
/// be sent (a header value with CR/LF) goes to the dead-letter queue and does not hold the key for
/// the rows other writers add to it (the default `fifo_on_failure` under `ordering_key` is `park`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_dead_row_does_not_hold_the_ordering_key_for_others() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    let action = format!(
        r#"{{"type": "webhook", "url": "{}", "headers": {{"X-Status": "{{{{ new.status }}}}"}}}}"#,
        sink.url("/ledger")
    );
    setup(
        &client,
        "NULL",
        &action,
        r#"{"ordering_key": "$.new.account_id", "max_attempts": 1}"#,
    )
    .await;
    let policy: String = client
        .query_one(
            "SELECT observer_definition('orders') -> 'options' ->> 'fifo_on_failure'",
            &[],
        )
        .await
        .expect("definition")
        .get(0);
    assert_eq!(policy, "park");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(r"INSERT INTO orders VALUES (1, 10, E'x\r\nX-Evil: 1')")
        .await
        .expect("the writer's row in account 10");
    assert!(
        wait_for_jobs(&client, "dead", 1, Duration::from_secs(60)).await,
        "{}",
        status(&client).await
    );
    client
        .batch_execute("INSERT INTO orders VALUES (2, 10, 'paid')")
        .await
        .expect("the owner's row in account 10");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(60)).await,
        "account 10 is held by the writer's dead job: {}",
        status(&client).await
    );
    let received = sink.received();
    assert_eq!(received.len(), 1, "the dead row was never sent");
    assert_eq!(received[0].header("x-status"), Some("paid"));
    // An observer that asks for block gets it, and is told so by its definition.
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('strict', 'orders', action => '{action}',
                   options => '{{"ordering_key": "$.new.account_id", "fifo_on_failure": "block"}}')"#
        ))
        .await
        .expect("block on request");
}
