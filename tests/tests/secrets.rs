//! Secrets by reference, end to end: a real cluster, the real worker binary and a real HTTP sink
//! on loopback. An observer whose `Authorization` header and URL are references to worker
//! secrets (one of them read from a `*_FILE` file) delivers the right values; after deliveries,
//! a failure that lands in the dead-letter queue and the audit trail, the database (`pg_dump` of
//! everything, the extension's tables included), the server log and the worker's log hold no
//! occurrence of any value. Hostile cases: `observer_create` refuses literal credentials and
//! malformed references; a secret bound to other destinations, or one the worker does not have,
//! fails the job without a request and without blaming the endpoint; an unreadable secret file
//! stops the worker at start, naming the path.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    observer_status, pg_bindir, sqlstate, wait_for_jobs, worker_binary, Cluster, Received, Reply,
    Sink, Worker,
};

/// The values: distinctive, so that any copy of one anywhere is found.
const API_TOKEN: &str = "sk_live_Zq81VbTokenOfTheApi";
const FILE_KEY: &str = "fk_Hr55FileKeyFromAMountedSecret";
const URL_TOKEN: &str = "ut_Pw42TokenInsideTheHookUrl";
const SLACK_TOKEN: &str = "st_Xc93SlackIncomingWebhookPart";

/// Every place a value could have been copied to, read as a superuser: a full dump (data of
/// the extension's tables included), the server log.
async fn everything_the_database_holds(cluster: &Cluster) -> String {
    // What an operator's backup holds: pg_dump of the whole database as it is.
    let plain = pg_dump(cluster);
    // pg_dump skips the data of an extension's tables (only observer.observers is marked for
    // dumping): detach them from the extension, as the upgrade test does (this database is not
    // used afterwards), so that the jobs, attempts, dead letters and outbox are dumped too.
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            "DELETE FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
               AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'fraiseql_observers');
             CHECKPOINT;",
        )
        .await
        .expect("detach the extension's tables");
    let full = pg_dump(cluster);
    assert!(
        full.contains("COPY observer.attempts") && full.contains("COPY observer.jobs"),
        "the full dump holds the audit trail and the jobs"
    );
    format!("{plain}\n{full}\n{}", cluster.server_log())
}

fn pg_dump(cluster: &Cluster) -> String {
    let out = Command::new(pg_bindir().join("pg_dump"))
        .args(["--dbname"])
        .arg(cluster.url("postgres"))
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_holds_none(place: &str, text: &str) {
    for value in [API_TOKEN, FILE_KEY, URL_TOKEN, SLACK_TOKEN] {
        assert!(
            !text.contains(value),
            "{place} holds the secret value {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referenced_secrets_are_sent_and_never_stored() {
    let cluster = Cluster::start(&["log_statement = 'all'"]).expect("cluster");
    // /fail answers 500 and echoes the credentials it got, as some APIs do in their errors.
    let sink = Sink::start_scripted(Arc::new(|r: &Received, _: &[Received]| {
        if r.path == "/fail" {
            Reply {
                status: 500,
                body: Some(format!(
                    "invalid credentials: {:?} at {}",
                    r.header("authorization").unwrap_or(""),
                    r.path
                )),
                ..Reply::default()
            }
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("sink");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("file_key");
    // As `echo value > file` or a Kubernetes secret written by hand: a trailing newline.
    std::fs::write(&key_file, format!("{FILE_KEY}\n")).expect("write the secret file");
    let hook_url = sink.url(&format!("/hooks/{URL_TOKEN}"));
    let slack_url = sink.url(&format!("/services/T0/B0/{SLACK_TOKEN}"));

    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, status text);
             SELECT observer_create('to_api', 'orders', ARRAY['INSERT'], NULL,
                 '{{"type": "webhook", "url": "{api}",
                    "headers": {{"Authorization": {{"secret": "api_token", "prefix": "Bearer "}},
                                 "X-File-Key": {{"secret": "FILE_KEY"}},
                                 "X-Team": "billing"}}}}');
             SELECT observer_create('to_hook', 'orders', ARRAY['INSERT'], NULL,
                 '{{"type": "webhook", "url": {{"secret": "hook_url"}}}}');
             SELECT observer_create('to_slack', 'orders', ARRAY['INSERT'], NULL,
                 '{{"type": "slack", "url": {{"secret": "slack_url"}}, "text": "order {{{{ new.id }}}}"}}');
             SELECT observer_create('to_fail', 'orders', ARRAY['INSERT'], NULL,
                 '{{"type": "webhook", "url": "{fail}",
                    "headers": {{"Authorization": {{"secret": "api_token", "prefix": "Bearer "}}}}}}',
                 '{{"max_attempts": 1}}');"#,
            api = sink.url("/api/orders"),
            fail = sink.url("/fail"),
        ))
        .await
        .expect("observers whose credentials are references");
    let stored: String = client
        .query_one(
            "SELECT action::text FROM observer.observers WHERE name = 'to_api'",
            &[],
        )
        .await
        .expect("stored action")
        .get(0);
    assert!(
        stored.contains(r#""Authorization": {"prefix": "Bearer ", "secret": "api_token"}"#),
        "the reference is stored as written: {stored}"
    );

    let sink_root = sink.url("");
    let key_path = key_file.display().to_string();
    let mut worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__API_TOKEN__VALUE", API_TOKEN),
            ("SECRETS__API_TOKEN__DESTINATIONS", &sink_root),
            ("SECRETS__FILE_KEY__VALUE_FILE", &key_path),
            ("SECRETS__FILE_KEY__DESTINATIONS", &sink.url("/api")),
            ("SECRETS__HOOK_URL__VALUE", &hook_url),
            ("SECRETS__SLACK_URL__VALUE", &slack_url),
            // Debug logs too: a value must not show there either.
            ("LOG__FILTER", "fraiseql_observers=debug,info"),
        ],
    )
    .expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'paid')")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 3, Duration::from_secs(30)).await
            && wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );

    let received = sink.received();
    let at = |path: &str| -> Received {
        received
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing at {path}: {received:?}"))
            .clone()
    };
    let api = at("/api/orders");
    assert_eq!(
        api.header("authorization"),
        Some(format!("Bearer {API_TOKEN}").as_str())
    );
    assert_eq!(
        api.header("x-file-key"),
        Some(FILE_KEY),
        "read from the *_FILE file, trailing newline trimmed"
    );
    assert_eq!(api.header("x-team"), Some("billing"));
    let hook = at(&format!("/hooks/{URL_TOKEN}"));
    assert_eq!(
        hook.body["type"], "to_hook",
        "the URL secret is the request's URL"
    );
    let slack = at(&format!("/services/T0/B0/{SLACK_TOKEN}"));
    assert_eq!(slack.body["text"], "order 1");
    let failed = at("/fail");
    assert_eq!(
        failed.header("authorization"),
        Some(format!("Bearer {API_TOKEN}").as_str())
    );

    // The dead job's error, in the job, its dead letter and its audit row: the echo is scrubbed.
    let row = client
        .query_one(
            "SELECT j.last_error, a.error, a.endpoint
               FROM observer.jobs j JOIN observer.attempts a ON a.job_id = j.id
              WHERE j.state = 'dead'",
            &[],
        )
        .await
        .expect("the dead job and its attempt");
    let (last_error, attempt_error, endpoint): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    assert!(
        last_error.contains("HTTP 500: invalid credentials: \"Bearer [secret api_token]\""),
        "{last_error}"
    );
    assert_eq!(attempt_error, last_error);
    assert_eq!(endpoint, sink_root.trim_end_matches('/'));
    let endpoints: Vec<String> = client
        .query("SELECT DISTINCT endpoint FROM observer.attempts", &[])
        .await
        .expect("endpoints")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        endpoints,
        vec![sink_root.trim_end_matches('/').to_string()],
        "the audit trail names the endpoint (scheme://host:port) of the URL secrets, not the URL"
    );

    worker.terminate(Duration::from_secs(10));
    let log = worker.log();
    assert!(log.contains("claimed"), "the debug log was written: {log}");
    assert_holds_none("the worker's log", &log);
    let everything = everything_the_database_holds(&cluster).await;
    assert!(
        everything.contains("[secret api_token]") && everything.contains("\"hook_url\""),
        "the dump holds the scrubbed error and the references"
    );
    assert_holds_none("the database (pg_dump, server log)", &everything);
}

/// A header secret goes only to its destinations: an observer that names it for another URL is
/// dead-lettered at once with the reason, nothing is sent, and the endpoint is not blamed (with
/// a breaker that opens on the first fault for a minute, a later delivery there goes through at
/// once). A secret the worker does not have, or a credential named as a signing secret, is
/// retried, then dead-lettered, also unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_outside_its_destinations_is_refused_without_blaming_the_endpoint() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('exfiltrate', NULL, action =>
                 '{{"type": "webhook", "url": "{url}",
                    "headers": {{"Authorization": {{"secret": "partner", "prefix": "Bearer "}}}}}}');
             SELECT observer_create('unbound_url', NULL, action =>
                 '{{"type": "webhook", "url": "{url}", "headers": {{"X-Key": {{"secret": "url_only"}}}}}}');
             SELECT observer_create('absent', NULL, action =>
                 '{{"type": "webhook", "url": {{"secret": "not_configured"}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('misnamed_signing', NULL, action =>
                 '{{"type": "webhook", "url": "{url}", "secret": "partner"}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('plain', NULL, action => '{{"type": "webhook", "url": "{url}"}}');
             SELECT observer_enqueue('exfiltrate', '{{"n": 1}}');
             SELECT observer_enqueue('unbound_url', '{{"n": 2}}');
             SELECT observer_enqueue('absent', '{{"n": 3}}');
             SELECT observer_enqueue('misnamed_signing', '{{"n": 5}}');"#,
            url = sink.url("/collect"),
        ))
        .await
        .expect("setup");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__PARTNER__VALUE", API_TOKEN),
            (
                "SECRETS__PARTNER__DESTINATIONS",
                "https://api.partner.example/v1",
            ),
            ("SECRETS__URL_ONLY__VALUE", URL_TOKEN),
            ("BREAKER__FAILURE_THRESHOLD", "1"),
            ("BREAKER__OPEN_MS", "60000"),
        ],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "dead", 4, Duration::from_secs(30)).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    assert!(sink.received().is_empty(), "nothing was sent");
    let errors: Vec<(String, String, Option<i32>)> = client
        .query(
            "SELECT o.name, j.last_error, a.status FROM observer.jobs j
               JOIN observer.observers o ON o.id = j.observer_id
               JOIN observer.attempts a ON a.job_id = j.id ORDER BY o.name",
            &[],
        )
        .await
        .expect("errors")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let endpoint = sink.url("").trim_end_matches('/').to_string();
    assert_eq!(errors.len(), 4, "{errors:?}");
    let (_, absent, status) = &errors[0];
    assert!(
        absent.contains("secret \"not_configured\" (action.url) is not configured in this worker")
            && absent.contains("FRAISEQL_OBSERVERS_SECRETS__NOT_CONFIGURED__VALUE"),
        "{absent}"
    );
    assert!(
        !absent.starts_with("discarded"),
        "retried, then dead: {absent}"
    );
    assert_eq!(*status, None);
    let (_, exfiltrate, status) = &errors[1];
    assert!(
        exfiltrate.starts_with(&format!(
            "discarded: secret \"partner\" (action.headers.Authorization) is not bound to {endpoint}"
        )),
        "{exfiltrate}"
    );
    assert_eq!(*status, None, "no answer: nothing was sent");
    // A credential named as the signing secret: not used to sign, retried with the fix.
    let (_, misnamed, _) = &errors[2];
    assert!(
        misnamed.contains("signing secret \"partner\" is a credential (value) in this worker"),
        "{misnamed}"
    );
    let (_, unbound, _) = &errors[3];
    assert!(unbound.contains("it has no destinations"), "{unbound}");

    // Not the endpoint's fault: its circuit (open for a minute after one fault) stays closed.
    client
        .batch_execute("SELECT observer_enqueue('plain', '{\"n\": 4}')")
        .await
        .expect("enqueue");
    assert!(
        sink.wait_received(1, Duration::from_secs(20)).await,
        "the endpoint was blamed: {}",
        observer_status(&client).await
    );
    assert_holds_none("the worker's log", &worker.log());
    assert_holds_none("the errors", &format!("{errors:?}"));
}

/// observer_create refuses credentials written where a reference belongs, and malformed
/// references, with 22023 naming the field and never quoting the value; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_create_refuses_literal_credentials_and_bad_references() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("CREATE EXTENSION fraiseql_observers")
        .await
        .expect("extension");
    let cases = [
        (
            format!(r#"{{"type": "webhook", "url": "https://api.example.com/x", "headers": {{"Authorization": "Bearer {API_TOKEN}"}}}}"#),
            "action.headers.Authorization holds a literal credential",
        ),
        (
            format!(r#"{{"type": "webhook", "url": "https://api.example.com/x", "headers": {{"X-Api-Key": "{API_TOKEN}"}}}}"#),
            "action.headers.X-Api-Key holds a literal credential",
        ),
        (
            format!(r#"{{"type": "webhook", "url": "https://user:{API_TOKEN}@api.example.com/x"}}"#),
            "action.url must not carry credentials",
        ),
        (
            format!(r#"{{"type": "webhook", "url": "https://api.example.com/x?token={API_TOKEN}"}}"#),
            "action.url holds a literal credential",
        ),
        (
            format!(r#"{{"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/{SLACK_TOKEN}", "text": "t"}}"#),
            "action.url holds a literal credential: a Slack incoming-webhook URL",
        ),
        (
            r#"{"type": "webhook", "url": {"secret": 42}}"#.to_string(),
            "action.url has a \"secret\" that is a number, not a name",
        ),
        (
            r#"{"type": "webhook", "url": {"secret": "x", "env": "X"}}"#.to_string(),
            "action.url has the unknown key \"env\"",
        ),
        (
            r#"{"type": "webhook", "url": {"secret": "x", "prefix": "https://evil.example/?"}}"#.to_string(),
            "a URL reference cannot have",
        ),
        (
            r#"{"type": "webhook", "url": "https://a.example", "headers": {"Authorization": {"secret": "two words"}}}"#.to_string(),
            "action.headers.Authorization names the secret \"two words\", which is not a secret name",
        ),
    ];
    for (i, (action, message)) in cases.iter().enumerate() {
        let sql = format!("SELECT observer_create('refused_{i}', NULL, action => '{action}')");
        let err = client.batch_execute(&sql).await.expect_err(action);
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "22023", "{action}: {db:?}");
        assert!(db.message().contains(message), "{action}: {}", db.message());
        let said = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
        assert!(
            !said.contains(API_TOKEN) && !said.contains(SLACK_TOKEN),
            "{said}"
        );
        assert!(
            db.hint()
                .is_some_and(|h| h.contains(r#"{"secret": "<name>""#)),
            "the hint shows the reference to write: {:?}",
            db.hint()
        );
    }
    let stored: i64 = client
        .query_one("SELECT count(*) FROM observer.observers", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0, "nothing refused was stored");
    // An explicit opt-out is accepted and stored with the action.
    assert_eq!(
        sqlstate(
            &client,
            r#"SELECT observer_create('public_demo', NULL, action =>
                 '{"type": "webhook", "url": "https://api.example.com/x",
                   "headers": {"Authorization": "Bearer public-demo-token"},
                   "allow_literal_credentials": true}')"#,
        )
        .await,
        "ok"
    );
}

/// An unreadable secret file stops the worker at start with exit code 2 and a message naming
/// the variable and the path (never a value).
#[test]
fn an_unreadable_secret_file_stops_the_worker_at_start() {
    let out = Command::new(worker_binary().expect("worker binary"))
        .arg("run")
        .env(
            "FRAISEQL_OBSERVERS_DATABASE_URL",
            "postgres://127.0.0.1:9/none",
        )
        .env(
            "FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE",
            "/run/secrets/not-mounted/stripe",
        )
        .output()
        .expect("run the worker");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FRAISEQL_OBSERVERS_SECRETS__STRIPE__VALUE_FILE")
            && stderr.contains("cannot read /run/secrets/not-mounted/stripe"),
        "{stderr}"
    );
}
