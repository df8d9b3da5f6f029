//! The worker's side of issue 14 (trust boundary), against a real cluster, the real worker
//! binary and real sinks:
//!
//! - an environment proxy is never contacted, and the SSRF guard still refuses a host name that
//!   resolves to loopback (review F09);
//! - jobs whose key cannot be a header value are dead-lettered as job errors and never open the
//!   endpoint's circuit (F11);
//! - a secret signs only for its destinations, an e-mail goes out only from an allowed sender
//!   (F08);
//! - a schema named after the worker's login role cannot shadow the extension's functions for
//!   the worker or the CLI (F12);
//! - the audit exporter is elected with `observer_audit_lock()`, not an advisory lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    cli_json, counting_listener, run_cli, wait_until, Cluster, Received, Reply, Sink, Worker,
};

/// A signing key (the Standard Webhooks specification's example).
const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Jobs by state, read from the table (not through `observer_status()`, which a test below
/// shadows on purpose).
async fn jobs_in(client: &tokio_postgres::Client, state: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM observer.jobs WHERE state = $1",
            &[&state],
        )
        .await
        .expect("count jobs")
        .get(0)
}

async fn wait_jobs(client: &tokio_postgres::Client, state: &str, n: i64, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || async move {
        jobs_in(client, state).await == n
    })
    .await
}

/// `(observer, state, last_error)` of every job, in id order.
async fn job_errors(client: &tokio_postgres::Client) -> Vec<(String, String, Option<String>)> {
    client
        .query(
            "SELECT o.name, j.state, j.last_error FROM observer.jobs j
             JOIN observer.observers o ON o.id = j.observer_id ORDER BY j.id",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Regression (review F09): the delivery client honoured HTTP_PROXY / HTTPS_PROXY / ALL_PROXY,
/// and through a proxy the SSRF guard checked only the proxy's address (an IP literal: not at
/// all), so `http://localhost:...` was reached through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxies_are_never_contacted() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let (proxy_port, proxy_hits) = counting_listener();
    let (target_port, target_hits) = counting_listener();
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('plain', NULL, action => '{{\"type\": \"webhook\", \"url\": \"http://localhost:{target_port}/x\"}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_create('tls', NULL, action => '{{\"type\": \"webhook\", \"url\": \"https://localhost:{target_port}/x\"}}',
                                    options => '{{\"max_attempts\": 1}}');
             SELECT observer_enqueue('plain', '{{\"n\": 1}}');
             SELECT observer_enqueue('tls', '{{\"n\": 2}}');"
        ))
        .await
        .expect("setup");
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        env.push((name.to_string(), proxy.clone()));
        env.push((name.to_ascii_lowercase(), proxy.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // No allowlist: loopback targets must be refused by the SSRF guard.
    let worker = Worker::start_with_process_env(
        &cluster.url("postgres"),
        &[("HTTP__ALLOW_NETWORKS", "")],
        &env,
    )
    .expect("worker");
    assert!(
        wait_jobs(&client, "dead", 2, 30).await,
        "{:?}\n{}",
        job_errors(&client).await,
        worker.log()
    );
    for (observer, _, error) in job_errors(&client).await {
        let error = error.unwrap_or_default();
        assert!(
            error.contains("refused by the network policy") && error.contains("loopback"),
            "{observer}: {error}"
        );
    }
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 0, "the proxy was used");
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the target was reached"
    );
}

/// Regression (review F11): a key with a control character (chosen by whoever enqueues) failed
/// when the request was built, counted as an endpoint fault, and `failure_threshold` such jobs
/// opened the endpoint's circuit for every observer delivering there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_be_headers_never_open_the_endpoints_circuit() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('jobs', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}');
             SELECT observer_enqueue('jobs', '{{\"bad\": true}}') FROM generate_series(1, 20);
             -- As the superuser, whatever observer_enqueue accepts: keys no header can carry.
             UPDATE observer.jobs SET idempotency_key = 'bad' || chr(10) || id || chr(13) || chr(27) || '[2J';",
            sink.url("/jobs")
        ))
        .await
        .expect("setup");
    // Three faults would open the circuit for a minute: a good job would then wait.
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("BREAKER__FAILURE_THRESHOLD", "3"),
            ("BREAKER__OPEN_MS", "60000"),
        ],
    )
    .expect("worker");
    assert!(
        wait_jobs(&client, "dead", 20, 30).await,
        "{:?}\n{}",
        job_errors(&client).await,
        worker.log()
    );
    for (_, _, error) in job_errors(&client).await {
        let error = error.unwrap_or_default();
        assert!(
            error.contains("idempotency key (webhook-id) cannot be a header value"),
            "{error}"
        );
        assert!(!error.chars().any(char::is_control), "{error:?}");
    }
    let attempts: i32 = client
        .query_one("SELECT max(attempt) FROM observer.jobs", &[])
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(
        attempts, 1,
        "dead-lettered at the first attempt, not retried"
    );
    assert!(sink.received().is_empty(), "no bad job was sent");

    client
        .batch_execute("SELECT observer_enqueue('jobs', '{\"good\": true}')")
        .await
        .expect("good job");
    assert!(
        wait_jobs(&client, "completed", 1, 10).await,
        "the good job was not delivered (circuit open?)\n{}",
        worker.log()
    );
    assert_eq!(sink.delivered(), 1);
    assert!(!worker.log().contains("circuit open"), "{}", worker.log());
}

/// Regression (review F08): any configured secret signed for whatever URL an action named, and
/// an e-mail action's `from` was free. A job outside the bindings is now dead-lettered with the
/// reason: never sent, never signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_sign_only_for_their_destinations_and_senders_are_bound() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('bound', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\", \"secret\": \"orders\"}}');
             SELECT observer_create('elsewhere', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\", \"secret\": \"orders\"}}');
             SELECT observer_create('sidestep', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\", \"secret\": \"orders\"}}');
             SELECT observer_create('spoof', NULL, action => '{{\"type\": \"email\", \"to\": [\"victim@example.com\"],
                                    \"from\": \"CEO <ceo@example.com>\", \"subject\": \"s\", \"body\": \"b\"}}');
             SELECT observer_enqueue('bound', '{{\"n\": 1}}');
             SELECT observer_enqueue('elsewhere', '{{\"n\": 2}}');
             SELECT observer_enqueue('sidestep', '{{\"n\": 3}}');
             SELECT observer_enqueue('spoof', '{{\"n\": 4}}');",
            sink.url("/orders/paid"),
            sink.url("/collect"),
            sink.url("/orders-evil"),
        ))
        .await
        .expect("setup");
    let destinations = sink.url("/orders");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__ORDERS", KEY),
            ("SECRETS__ORDERS__DESTINATIONS", destinations.as_str()),
            // Never reached: the sender is refused before any connection.
            ("SMTP__URL", "smtp://127.0.0.1:9"),
            ("SMTP__ALLOWED_FROM", "shop@example.com"),
        ],
    )
    .expect("worker");
    assert!(
        wait_jobs(&client, "completed", 1, 30).await && wait_jobs(&client, "dead", 3, 30).await,
        "{:?}\n{}",
        job_errors(&client).await,
        worker.log()
    );
    let received = sink.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].path, "/orders/paid");
    assert!(received[0].header("webhook-signature").is_some());
    for (observer, state, error) in job_errors(&client).await {
        let error = error.unwrap_or_default();
        match observer.as_str() {
            "bound" => assert_eq!(state, "completed"),
            "elsewhere" | "sidestep" => {
                assert_eq!(state, "dead");
                assert!(
                    error.contains("signing secret \"orders\" is not bound to"),
                    "{error}"
                );
            }
            _ => {
                assert_eq!(state, "dead");
                assert!(
                    error.contains("sender \"ceo@example.com\" is not allowed"),
                    "{error}"
                );
            }
        }
    }
}

/// Regression (review F12): the worker and the CLI called `observer_claim(...)`,
/// `observer_status()` unqualified, so a schema named after the login role (first on the
/// default search_path, `"$user", public`) shadowed them: a fake claim handed the worker a
/// forged job to sign and send anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_named_after_the_login_role_cannot_shadow_the_extension() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY);
             SELECT observer_create('orders', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{real}\"}}');
             -- The worker logs in as postgres: a schema of that name comes first.
             CREATE SCHEMA postgres;
             CREATE FUNCTION postgres.observer_claim(worker text, max_jobs integer DEFAULT 100,
                                                     lease interval DEFAULT '30 seconds')
             RETURNS TABLE (job_id bigint, token bigint, attempt integer, lease_until timestamptz,
                            observer text, action jsonb, idempotency_key text, payload jsonb,
                            event_at timestamptz)
             LANGUAGE sql AS $$
               SELECT 1::bigint, 1::bigint, 1, now() + interval '1 minute', 'orders'::text,
                      '{{\"type\": \"webhook\", \"url\": \"{forged}\"}}'::jsonb, 'msg_forged'::text,
                      '{{\"forged\": true}}'::jsonb, now()
             $$;
             CREATE FUNCTION postgres.observer_status() RETURNS jsonb
             LANGUAGE sql AS $$ SELECT '{{\"jobs\": {{\"pending\": 4242}}, \"forged\": true}}'::jsonb $$;",
            real = sink.url("/real"),
            forged = sink.url("/forged"),
        ))
        .await
        .expect("setup");
    // The trap works on an unqualified call.
    let shadowed: String = client
        .query_one("SELECT observer_status()::text", &[])
        .await
        .expect("status")
        .get(0);
    assert!(shadowed.contains("forged"), "{shadowed}");

    let worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (1), (2)")
        .await
        .expect("insert");
    assert!(
        wait_jobs(&client, "completed", 2, 30).await,
        "{:?}\n{}",
        job_errors(&client).await,
        worker.log()
    );
    // Give a shadowed claim loop time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths: Vec<String> = sink.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/real", "/real"], "{paths:?}");

    let status = cli_json(&run_cli(&cluster.url("postgres"), &["status", "--json"]));
    assert!(status.get("forged").is_none(), "{status}");
    assert_eq!(status["jobs"]["completed"], 2, "{status}");
}

/// An Elasticsearch stand-in: acknowledges the index template and stores every document of a
/// `_bulk` request (201 each).
fn elasticsearch() -> fraiseql_observers_tests::sink::Script {
    Arc::new(|r: &Received, _: &[Received]| {
        if r.method == "PUT" {
            return Reply {
                status: 200,
                body: Some(r#"{"acknowledged":true}"#.to_string()),
                ..Reply::default()
            };
        }
        let items: Vec<serde_json::Value> = String::from_utf8_lossy(&r.raw)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("create").is_some())
            .map(|v| serde_json::json!({"create": {"_id": v["create"]["_id"], "status": 201}}))
            .collect();
        Reply {
            status: 200,
            body: Some(serde_json::json!({"took": 1, "errors": false, "items": items}).to_string()),
            ..Reply::default()
        }
    })
}

/// Regression (issue 14, case 5): the audit exporter was elected with
/// `pg_try_advisory_lock(hashtext('fraiseql_observers.audit_export'))`, which any login role can
/// take to stop the export for good. It is now `observer_audit_lock()`, where only the
/// extension's roles take part: an outsider holding the former lock changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_advisory_lock_does_not_stop_the_audit_export() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let es = Sink::start_scripted(elasticsearch())
        .await
        .expect("elasticsearch stand-in");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "ALTER DATABASE postgres SET fraiseql_observers.audit_export = on;
             CREATE EXTENSION fraiseql_observers;
             CREATE ROLE outsider LOGIN;
             SELECT observer_create('jobs', NULL, action => '{{\"type\": \"webhook\", \"url\": \"{}\"}}');",
            sink.url("/jobs")
        ))
        .await
        .expect("setup");
    // A role with no grant at all takes the former election lock and keeps it.
    let outsider_url = format!("postgres://outsider@127.0.0.1:{}/postgres", cluster.port);
    let (outsider, conn) = tokio_postgres::connect(&outsider_url, tokio_postgres::NoTls)
        .await
        .expect("outsider connects");
    tokio::spawn(conn);
    let locked: bool = outsider
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('fraiseql_observers.audit_export')::bigint)",
            &[],
        )
        .await
        .expect("advisory lock")
        .get(0);
    assert!(locked);
    let client = cluster.connect("postgres").await.expect("reconnect");
    let es_url = format!("http://{}", es.addr);
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("ELASTICSEARCH__URL", es_url.as_str()),
            ("ELASTICSEARCH__FLUSH_MS", "100"),
        ],
    )
    .expect("worker");
    client
        .batch_execute("SELECT observer_enqueue('jobs', '{\"n\": 1}')")
        .await
        .expect("enqueue");
    assert!(
        wait_jobs(&client, "completed", 1, 30).await,
        "{}",
        worker.log()
    );
    let exported = wait_until(Duration::from_secs(30), || async {
        es.received().iter().any(|r| r.path == "/_bulk")
    })
    .await;
    assert!(exported, "nothing exported\n{}", worker.log());
    // The outsider cannot take part in the new election either.
    let refused = outsider
        .query_one("SELECT public.observer_audit_lock()", &[])
        .await;
    assert!(
        refused.is_err(),
        "an outsider may not call observer_audit_lock()"
    );
}
