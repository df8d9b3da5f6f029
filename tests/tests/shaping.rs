//! Webhook request shaping end to end: a real cluster, the real worker binary and the recording
//! sink on loopback. Observers with `method` PUT, PATCH and DELETE, a URL template, a `body`
//! template and a templated header deliver requests that arrive with that method, the rendered
//! path and query percent-encoded, the rendered JSON body (whose Standard Webhooks signature
//! verifies with the reference library) and the rendered header. Hostile cases: values such as
//! `@evil.example/`, `127.0.0.1` or `../` land encoded in the path at the configured host; a row
//! whose value would put CR/LF in a header, or a template that would render a huge body, fails
//! only its own job with its reason in the attempt log while the next row is delivered; a
//! template in the host or an unknown method is refused by `observer_create`.

use std::time::Duration;

use fraiseql_observers_tests::{
    observer_status, sqlstate, verify_signatures, wait_for_jobs, Cluster, Received, Sink, Worker,
};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// `observer_create(name, table, events, NULL, action)`, the action given as JSON.
async fn create(
    client: &tokio_postgres::Client,
    name: &str,
    table: &str,
    events: &[&str],
    action: serde_json::Value,
) {
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    client
        .execute(
            "SELECT observer_create($1::text, $2::text::regclass, $3::text[], NULL, $4::text::jsonb)",
            &[&name, &table, &events, &action.to_string()],
        )
        .await
        .unwrap_or_else(|e| panic!("observer_create {name}: {e:?}"));
}

/// The PUT of an INSERT, the PATCH of an UPDATE and the DELETE of a DELETE, all signed.
async fn create_shaped_observers(client: &tokio_postgres::Client, sink: &Sink) {
    create(client, "put_order", "orders", &["INSERT"], serde_json::json!({
        "type": "webhook", "method": "PUT", "secret": "orders",
        "url": sink.url("/accounts/{{ new.account }}/orders?status={{ new.status }}&note={{ new.note }}"),
        "headers": {"X-Order-Id": "{{ new.id }}", "X-Team": "billing"},
        "body": {"order": {"id": "{{ new.id }}", "amount": "{{ new.amount }}",
                           "paid": "{{ new.status == 'paid' }}"},
                 "text": "Order {{ new.id }} for {{ new.account }}", "event": "{{ event_id }}"}
    }))
    .await;
    create(
        client,
        "patch_order",
        "orders",
        &["UPDATE"],
        serde_json::json!({
            "type": "webhook", "method": "PATCH", "secret": "orders",
            "url": sink.url("/orders/{{ new.id }}"),
            "body": {"status": "{{ new.status }}", "was": "{{ old.status }}"}
        }),
    )
    .await;
    create(
        client,
        "delete_order",
        "orders",
        &["DELETE"],
        serde_json::json!({
            "type": "webhook", "method": "DELETE", "secret": "orders",
            "url": sink.url("/orders/{{ old.id }}")
        }),
    )
    .await;
}

/// The request whose `x-order-id` is `id`.
fn put_of(received: &[Received], id: &str) -> Received {
    received
        .iter()
        .find(|r| r.method == "PUT" && r.header("x-order-id") == Some(id))
        .unwrap_or_else(|| panic!("no PUT of order {id}: {received:?}"))
        .clone()
}

/// The requests of the PUT, PATCH and DELETE observers, as rendered.
fn check_rendered(received: &[Received], host: &str) {
    let one = put_of(received, "1");
    assert_eq!(
        one.path, "/accounts/acme%2F..%2Fadmin/orders",
        "../ stays in its segment"
    );
    assert_eq!(
        one.query.as_deref(),
        Some("status=a%26b%3Dc%20d&note=%C3%BCn%C3%AF%20%E2%9C%93%23%3F"),
        "& = space unicode # ? are values, not query syntax"
    );
    assert_eq!(one.header("x-team"), Some("billing"));
    assert_eq!(one.header("content-type"), Some("application/json"));
    assert_eq!(
        one.body["order"],
        serde_json::json!({"id": 1, "amount": 12.5, "paid": false})
    );
    assert_eq!(one.body["text"], "Order 1 for acme/../admin");
    assert!(one.body["event"].is_i64(), "{}", one.body);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&one.raw).ok(),
        Some(one.body.clone())
    );

    // Hostile values cannot redirect the request: they land encoded in the path, at the sink.
    let two = put_of(received, "2");
    assert_eq!(two.path, "/accounts/%40evil.example%2F/orders");
    assert_eq!(two.header("host"), Some(host));
    assert_eq!(
        two.body["order"],
        serde_json::json!({"id": 2, "amount": 3, "paid": true})
    );
    let three = put_of(received, "3");
    assert_eq!(three.path, "/accounts/127.0.0.1/orders");
    assert_eq!(three.query.as_deref(), Some("status=new&note="));
    assert_eq!(three.header("host"), Some(host));

    let patch = received
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("a PATCH");
    assert_eq!(patch.path, "/orders/1");
    assert_eq!(
        patch.body,
        serde_json::json!({"status": "shipped", "was": "a&b=c d"})
    );
    let delete = received
        .iter()
        .find(|r| r.method == "DELETE")
        .expect("a DELETE");
    assert_eq!(delete.path, "/orders/2");
    assert_eq!(
        delete.body["type"], "delete_order",
        "without body: the document"
    );
    assert_eq!(delete.body["data"]["old"]["id"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaped_requests_arrive_as_rendered_and_signed() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, account text NOT NULL, status text NOT NULL,
                                  amount numeric NOT NULL, note text NOT NULL);",
        )
        .await
        .expect("setup");
    create_shaped_observers(&client, &sink).await;
    let destinations = sink.url("/");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__ORDERS", KEY),
            ("SECRETS__ORDERS__DESTINATIONS", destinations.as_str()),
        ],
    )
    .expect("worker");
    client
        .batch_execute(
            "INSERT INTO orders VALUES (1, 'acme/../admin', 'a&b=c d', 12.5, 'ünï ✓#?'),
                                       (2, '@evil.example/', 'paid', 3, 'x'),
                                       (3, '127.0.0.1', 'new', 0, '');
             UPDATE orders SET status = 'shipped' WHERE id = 1;
             DELETE FROM orders WHERE id = 2;",
        )
        .await
        .expect("writes");
    assert!(
        wait_for_jobs(&client, "completed", 5, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(received.len(), 5, "{received:?}");
    let host = sink.addr.to_string();

    check_rendered(&received, &host);

    // The signature covers the body actually sent.
    let verdicts = verify_signatures(&received, KEY);
    assert!(verdicts.iter().all(|v| v == "ok"), "{verdicts:?}");
}

/// What `observer_create` refuses, with SQLSTATE 22023.
async fn refused_at_create(client: &tokio_postgres::Client, sink: &Sink) {
    for action in [
        serde_json::json!({"type": "webhook", "url": "http://{{ new.host }}/x"}),
        serde_json::json!({"type": "webhook", "url": format!("{}{{{{ new.id }}}}", sink.url(""))}),
        serde_json::json!({"type": "webhook", "url": sink.url("/x"), "method": "GET"}),
        serde_json::json!({"type": "webhook", "url": sink.url("/x"), "body": {"a": "{{ new.id "}}),
        serde_json::json!({"type": "webhook", "url": sink.url("/x"), "headers": {"X-A": "{% if %}"}}),
    ] {
        let sql = format!(
            "SELECT observer_create('bad', 'notes', action => '{}')",
            action.to_string().replace('\'', "''")
        );
        assert_eq!(sqlstate(client, &sql).await, "22023", "{action}");
    }
}

/// The attempt log holds each refused job's field and reason, never the value.
async fn check_attempt_errors(client: &tokio_postgres::Client) {
    let errors: Vec<String> = client
        .query(
            "SELECT error FROM observer.attempts WHERE error IS NOT NULL ORDER BY job_id",
            &[],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("action.headers.X-Note: ") && e.contains("control character \\r")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("action.body.x: ") && e.contains("more than the 1048576 allowed")),
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| !e.contains("X-Evil")),
        "a value is never quoted: {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_shaped_fails_alone() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE notes (id int PRIMARY KEY, note text NOT NULL);
             CREATE TABLE blobs (id int PRIMARY KEY, part text NOT NULL, copies int NOT NULL);",
        )
        .await
        .expect("setup");
    refused_at_create(&client, &sink).await;
    create(
        &client,
        "noted",
        "notes",
        &["INSERT"],
        serde_json::json!({
            "type": "webhook", "url": sink.url("/notes/{{ new.id }}"),
            "headers": {"X-Note": "{{ new.note }}"}
        }),
    )
    .await;
    create(
        &client,
        "blob",
        "blobs",
        &["INSERT"],
        serde_json::json!({
            "type": "webhook", "url": sink.url("/blobs"),
            "body": {"x": "{% for i in range(new.copies) %}{{ new.part }}{% endfor %}"}
        }),
    )
    .await;
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    client
        .batch_execute(
            "INSERT INTO notes VALUES (1, E'bad\\r\\nX-Evil: 1');
             INSERT INTO notes VALUES (2, 'fine');
             INSERT INTO blobs VALUES (1, repeat('x', 200), 10000);
             INSERT INTO blobs VALUES (2, 'y', 3);",
        )
        .await
        .expect("writes");
    assert!(
        wait_for_jobs(&client, "completed", 2, Duration::from_secs(30)).await
            && wait_for_jobs(&client, "dead", 2, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(
        received.len(),
        2,
        "only the good rows were sent: {received:?}"
    );
    let note = received
        .iter()
        .find(|r| r.path == "/notes/2")
        .expect("row 2 delivered");
    assert_eq!(note.header("x-note"), Some("fine"));
    assert!(received.iter().all(|r| r.header("x-evil").is_none()));
    let blob = received
        .iter()
        .find(|r| r.path == "/blobs")
        .expect("blob 2 delivered");
    assert_eq!(blob.body, serde_json::json!({"x": "yyy"}));

    check_attempt_errors(&client).await;
}
