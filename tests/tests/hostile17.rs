//! Red team of issue 17's capabilities, as the least-privileged roles of DESIGN 3a would attack
//! them (real cluster, real worker, real `nats-server -js` and `redis-server`, hostile peers as
//! loopback listeners): a writer's `fraiseql_observers.context` set every way Postgres allows
//! (ALTER ROLE, set_config, startup options, deep nesting) is checked by the hook; a writer's row
//! values cannot make a NATS subject a wildcard or a `$JS` API call, nor a Redis stream key one
//! of the worker's own keys or another key's type; an `app` cannot choose an idempotency key that
//! suppresses a table event's JetStream message; an admin's server address that resolves to a
//! refused network (`0`, a decimal IPv4, a v4-mapped IPv6, a unix socket) is never connected to;
//! and a hostile Redis server echoing the credentials back in a huge error gets neither into the
//! audit trail.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fraiseql_observers_tests::nats::NatsServer;
use fraiseql_observers_tests::{
    counting_listener, observer_status, sqlstate, wait_for_jobs, Cluster, RedisServer, Sink, Worker,
};

/// The extension and an `orders` table that the login role `writer` may only INSERT into.
async fn orders(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, account_id int NOT NULL DEFAULT 1,
                                  region text NOT NULL DEFAULT 'eu', status text NOT NULL DEFAULT 'new');
             CREATE ROLE writer LOGIN;
             GRANT INSERT ON orders TO writer;",
        )
        .await
        .expect("extension, table and writer");
}

/// State and last error of every job of `observer`, by job id.
async fn jobs_of(client: &tokio_postgres::Client, observer: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT j.state, coalesce(j.last_error, '') FROM observer.jobs j
             JOIN observer.observers o ON o.id = j.observer_id WHERE o.name = $1 ORDER BY j.id",
            &[&observer],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `%XX` escapes of `text` decoded (the sink records the path as sent).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The writer sets the context every way Postgres offers besides `SET`: each is checked by the
/// hook (22023, or a refused connection for startup options), deep nesting is refused without
/// harming the backend, and nothing reaches the event log but the one good context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_set_any_way_goes_through_the_check() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    client
        .batch_execute(
            "SELECT observer_create('o', 'orders', action => '{\"type\": \"webhook\", \"url\": \"https://example.com/hook\"}')",
        )
        .await
        .expect("an observer, so that writes are captured");
    let writer = cluster.connect_as("writer").await;

    // A role may set its own defaults: ALTER ROLE ... SET validates with the same hook.
    for bad in ["not json", "[1]"] {
        let sql = format!("ALTER ROLE writer SET fraiseql_observers.context = '{bad}'");
        assert_eq!(sqlstate(&writer, &sql).await, "22023", "{sql}");
    }
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    for bad in [
        "set_config('fraiseql_observers.context', '[1]', true)".to_string(),
        "set_config('fraiseql_observers.context', 'x', false)".to_string(),
        format!("set_config('fraiseql_observers.context', '{{\"a\": {deep}}}', true)"),
    ] {
        let sql = format!("BEGIN; SELECT {bad}; INSERT INTO orders (id) VALUES (1); COMMIT");
        assert_eq!(sqlstate(&writer, &sql).await, "22023", "{bad:.60}");
        writer.batch_execute("ROLLBACK").await.expect("rollback");
    }
    // Startup options (PGOPTIONS): the check refuses the connection itself.
    let url = format!(
        "{}?options=-c%20fraiseql_observers.context%3D%5B1%5D",
        cluster.url_as("writer")
    );
    let refused = tokio_postgres::connect(&url, tokio_postgres::NoTls).await;
    let err = refused
        .err()
        .expect("a startup context that is no object is refused");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("22023"),
        "{err}"
    );
    // The session is intact, and a good context set through set_config is carried.
    writer
        .batch_execute(
            r#"BEGIN; SELECT set_config('fraiseql_observers.context', '{"via": "set_config"}', true);
               INSERT INTO orders (id) VALUES (1); COMMIT;"#,
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
    assert_eq!(contexts, vec![Some(r#"{"via": "set_config"}"#.to_string())]);
    let defaults: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
             WHERE r.rolname = 'writer'",
            &[],
        )
        .await
        .expect("role settings")
        .get(0);
    assert_eq!(defaults, 0, "no bad default was stored for the writer");
}

/// Row values that would make the subject a wildcard, a `$JS` API call (deleting another
/// stream), or hold whitespace (unicode line separators included) kill their own job at once;
/// the other stream is intact and the good rows are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_make_a_subject_a_wildcard_or_a_jetstream_api_call() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    nats.create_stream("REGIONS", &["eu", "us"])
        .await
        .expect("stream");
    nats.create_stream("VICTIM", &["victim.>"])
        .await
        .expect("victim stream");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('by_region', 'orders', action => '{{"type": "nats", "url": "{}",
                   "subject": "{{{{ new.region }}}}", "timeout_ms": 2000}}');"#,
            nats.url()
        ))
        .await
        .expect("observer");
    let writer = cluster.connect_as("writer").await;
    let hostile = [
        ">",
        "*",
        "victim.>",
        "$JS.API.STREAM.DELETE.VICTIM",
        "$JS.API.STREAM.PURGE.VICTIM",
        "$SYS.REQ.SERVER.PING",
        "eu us",
        "eu\u{2028}",
        "eu\u{85}",
        "eu.",
        "",
    ];
    let mut id = 0;
    for region in ["eu"].iter().chain(hostile.iter()).chain(["us"].iter()) {
        id += 1;
        writer
            .execute(
                "INSERT INTO orders (id, region) VALUES ($1, $2)",
                &[&id, region],
            )
            .await
            .expect("insert");
    }
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    let dead = i64::try_from(hostile.len()).expect("count");
    assert!(
        wait_for_jobs(&client, "dead", dead, Duration::from_secs(60)).await
            && wait_for_jobs(&client, "completed", 2, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    for (state, error) in jobs_of(&client, "by_region").await {
        assert!(
            state == "completed" || error.contains("action.subject rendered to"),
            "{state}: {error}"
        );
    }
    let subjects = nats.subjects("REGIONS").await.expect("messages");
    assert_eq!(subjects, BTreeSet::from(["eu".into(), "us".into()]));
    assert!(
        nats.messages("VICTIM")
            .await
            .expect("the victim stream still exists")
            .is_empty(),
        "nothing published into the victim stream"
    );
}

/// Row values naming the worker's own keys (its configured prefix) kill their job; a
/// value naming another key of the server (a string) is an error answer retried without
/// touching that key, while the good rows are appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_make_a_stream_key_the_workers_own_or_another_type() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let redis = RedisServer::start().expect("redis");
    redis
        .cli(&["SET", "plain", "precious"])
        .expect("a string key");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('by_region', 'orders', action => '{{"type": "redis_stream", "url": "{}",
                   "stream": "{{{{ new.region }}}}", "timeout_ms": 2000}}',
                   options => '{{"max_attempts": 2, "backoff_base": "100 milliseconds"}}');"#,
            redis.url()
        ))
        .await
        .expect("observer");
    let writer = cluster.connect_as("writer").await;
    for (id, region) in [
        (1, "eu"),
        (2, "tenant_a:breaker:https://example.com:443"),
        (3, "tenant_a:xadd:2:eu:evt_1_1"),
        (4, "plain"),
        (5, "eu\r\nFLUSHALL"),
        (6, "us"),
    ] {
        writer
            .execute(
                "INSERT INTO orders (id, region) VALUES ($1, $2)",
                &[&id, &region],
            )
            .await
            .expect("insert");
    }
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[("REDIS__KEY_PREFIX", "tenant_a:")],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "dead", 4, Duration::from_secs(60)).await
            && wait_for_jobs(&client, "completed", 2, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let jobs = jobs_of(&client, "by_region").await;
    let errors: Vec<&str> = jobs.iter().map(|(_, e)| e.as_str()).collect();
    assert!(errors[1].contains("starts with"), "{}", errors[1]);
    assert!(errors[2].contains("starts with"), "{}", errors[2]);
    assert!(errors[3].contains("WRONGTYPE"), "{}", errors[3]);
    assert!(errors[4].contains("holds"), "{}", errors[4]);
    assert_eq!(redis.cli(&["GET", "plain"]).expect("get"), "precious");
    assert_eq!(redis.cli(&["XLEN", "eu"]).expect("xlen"), "1");
    assert_eq!(redis.cli(&["XLEN", "us"]).expect("xlen"), "1");
    // Only the guards of the two appended jobs live under the worker's prefix.
    let guards = redis
        .cli(&["--scan", "--pattern", "tenant_a:*"])
        .expect("scan");
    assert_eq!(guards.lines().count(), 2, "{guards}");
    assert!(guards.lines().all(|k| k.starts_with("tenant_a:xadd:")));
}

/// An `app` that knows (or predicts) a table event's webhook-id enqueues a job with it as its
/// idempotency key into a queue publishing to the same subject: its webhook-id is
/// `key_<queue>_<key>`, so JetStream keeps both messages and suppresses neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_suppress_a_table_events_jetstream_message() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    let action = format!(
        r#"{{"type": "nats", "url": "{}", "subject": "orders.{{{{ new.id }}}}"}}"#,
        nats.url()
    );
    let queue_action = format!(
        r#"{{"type": "nats", "url": "{}", "subject": "orders.1"}}"#,
        nats.url()
    );
    client
        .batch_execute(&format!(
            "SELECT observer_create('to_nats', 'orders', action => '{action}');
             SELECT observer_create('q', NULL, action => '{queue_action}');
             CREATE ROLE app1 LOGIN;
             SELECT observer_grant('app1', 'app');
             INSERT INTO orders (id) VALUES (1);"
        ))
        .await
        .expect("observers");
    assert!(
        wait_for_jobs(&client, "pending", 1, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let event_key: String = client
        .query_one("SELECT idempotency_key FROM observer.jobs", &[])
        .await
        .expect("the table event's job")
        .get(0);
    let app = cluster.connect_as("app1").await;
    let batch_like = format!("batch_{}", "0".repeat(32));
    for key in [event_key.as_str(), batch_like.as_str()] {
        app.execute(
            "SELECT observer_enqueue('q', '{\"forged\": true}', $1)",
            &[&key],
        )
        .await
        .expect("enqueue");
    }
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 3, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let ids: BTreeSet<String> = nats
        .messages("ORDERS")
        .await
        .expect("messages")
        .into_iter()
        .map(|m| m.msg_id.expect("Nats-Msg-Id"))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&event_key), "{ids:?}");
    assert!(ids.iter().filter(|id| id.starts_with("key_")).count() == 2);
}

/// An admin's server addresses that reach loopback in other spellings are refused at create or
/// never connected to by a worker whose policy refuses loopback; a unix socket is no scheme.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_addresses_in_other_spellings_never_reach_loopback() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    for url in [
        "redis+unix:///var/run/redis.sock",
        "unix:///var/run/redis.sock",
        "redis://",
        "nats://",
        "nats://host/path",
    ] {
        let sql = format!(
            r#"SELECT observer_create('x', 'orders', action => '{{"type": "redis_stream", "url": "{url}", "stream": "s"}}')"#
        );
        assert_eq!(sqlstate(&client, &sql).await, "22023", "{url}");
    }
    let (port, offered) = counting_listener();
    let spellings = [
        format!("nats://0:{port}"),
        format!("nats://2130706433:{port}"),
        format!("nats://0x7f.1:{port}"),
        format!("nats://[::ffff:127.0.0.1]:{port}"),
        format!("redis://0:{port}"),
        format!("redis://2130706433:{port}"),
        format!("redis://[::ffff:7f00:1]:{port}"),
        format!("redis://127.1:{port}"),
    ];
    let mut created = 0;
    for (i, url) in spellings.iter().enumerate() {
        let action = if url.starts_with("nats") {
            format!(r#"{{"type": "nats", "url": "{url}", "subject": "s"}}"#)
        } else {
            format!(r#"{{"type": "redis_stream", "url": "{url}", "stream": "s"}}"#)
        };
        let sql = format!(
            "SELECT observer_create('o{i}', 'orders', action => '{action}', options => '{{\"max_attempts\": 1}}')"
        );
        match sqlstate(&client, &sql).await.as_str() {
            "ok" => created += 1,
            "22023" => {}
            other => panic!("{url}: {other}"),
        }
    }
    client
        .batch_execute("INSERT INTO orders (id) VALUES (1)")
        .await
        .expect("insert");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[("HTTP__ALLOW_NETWORKS", "192.0.2.1/32")],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "dead", created, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    drop(worker);
    let errors: Vec<String> = client
        .query("SELECT coalesce(last_error, '') FROM observer.jobs", &[])
        .await
        .expect("errors")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for error in &errors {
        assert!(
            error.contains("refused by the network policy") || error.contains("cannot resolve"),
            "{error}"
        );
    }
    assert_eq!(offered.load(Ordering::SeqCst), 0, "never connected to");
}

/// A "Redis server" that answers every command with an error echoing what it received (the
/// AUTH command's credentials) padded to a megabyte: the job is retried and dies, its recorded
/// errors are bounded and never hold the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_redis_server_echoing_credentials_gets_none_into_the_audit_trail() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let echoed: String = String::from_utf8_lossy(&buf[..n])
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    let reply = format!("-ERR you said {echoed} {}\r\n", "A".repeat(1 << 20));
                    if conn.write_all(reply.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('r', 'orders', action => '{{"type": "redis_stream",
                   "url": "redis://appuser:hunter2pass@127.0.0.1:{port}/0", "stream": "s",
                   "allow_literal_credentials": true, "timeout_ms": 2000}}',
                   options => '{{"max_attempts": 2, "backoff_base": "100 milliseconds"}}');
               INSERT INTO orders (id) VALUES (1);"#
        ))
        .await
        .expect("observer");
    let worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "dead", 1, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let errors: Vec<String> = client
        .query(
            "SELECT coalesce(error, '') FROM observer.attempts
             UNION ALL SELECT coalesce(last_error, '') FROM observer.jobs",
            &[],
        )
        .await
        .expect("errors")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(errors.len() >= 3, "{errors:?}");
    for error in &errors {
        assert!(!error.contains("hunter2pass"), "{error:.300}");
        assert!(error.len() <= 2000, "{} bytes", error.len());
    }
    assert!(!worker.log().contains("hunter2pass"), "the worker's log");
}

/// A writer's values in a shaped webhook: whatever the row holds, the request goes to the
/// template's path (one segment, one query parameter), the body is the template's JSON with the
/// value as one string, and a value with a C1 control character (NEL) or a `..` segment kills
/// only its own job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cannot_reshape_a_templated_request() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    orders(&client).await;
    let action = serde_json::json!({
        "type": "webhook", "method": "PUT",
        "url": format!("{}/{{{{ new.region }}}}?r={{{{ new.region }}}}", sink.url("/hooks")),
        "headers": {"X-Note": "{{ new.status }}"},
        "body": {"note": "{{ new.status }}", "text": "s={{ new.status }}", "id": "{{ new.id }}"},
    })
    .to_string();
    client
        .execute(
            "SELECT observer_create('shaped', 'orders', action => $1::text::jsonb,
                 options => '{\"max_attempts\": 1}')",
            &[&action],
        )
        .await
        .expect("observer");
    let injection = r#"x", "admin": true, "y": "{{ 7 }}"#;
    let rows: [(i32, &str, &str); 7] = [
        (1, "../../admin?x=1&y=2#f", "ok"),
        (2, "..\\..\\admin", injection),
        (3, "%2e%2e", "ok"),
        (4, "\u{ff0e}\u{ff0e}", "ok"),
        (5, "a/../../b", "ok"),
        (6, "eu", "bad\u{85}"),
        (7, "..", "ok"),
    ];
    let writer = cluster.connect_as("writer").await;
    for (id, region, status) in rows {
        writer
            .execute(
                "INSERT INTO orders (id, region, status) VALUES ($1, $2, $3)",
                &[&id, &region, &status],
            )
            .await
            .expect("insert");
    }
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 5, Duration::from_secs(60)).await
            && wait_for_jobs(&client, "dead", 2, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(received.len(), 5);
    for r in &received {
        let id = r.body["id"].as_i64().expect("id, typed");
        let (_, region, status) = rows[usize::try_from(id - 1).expect("index")];
        assert_eq!(r.method, "PUT");
        let segment = r.path.strip_prefix("/hooks/").expect("under /hooks/");
        assert!(!segment.contains('/'), "{}", r.path);
        assert_eq!(percent_decode(segment), region, "{}", r.path);
        let query = r.query.as_deref().expect("a query");
        assert!(
            query.starts_with("r=") && !query.contains('&') && !query.contains('#'),
            "{query}"
        );
        let keys: BTreeSet<&str> = r
            .body
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["id", "note", "text"]), "{}", r.body);
        assert_eq!(r.body["note"], status);
        assert_eq!(r.body["text"], format!("s={status}"));
        assert_eq!(r.header("x-note"), Some(status));
    }
    let errors: Vec<String> = jobs_of(&client, "shaped")
        .await
        .into_iter()
        .filter(|(state, _)| state == "dead")
        .map(|(_, e)| e)
        .collect();
    assert!(errors[0].contains("action.headers.X-Note"), "{}", errors[0]);
    assert!(errors[1].contains("\"..\""), "{}", errors[1]);
}
