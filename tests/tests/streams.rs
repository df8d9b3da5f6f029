//! The stream actions end to end, against a real `nats-server -js`, a real `redis-server`, a
//! real Postgres and the real worker: `nats` publishes the delivered document with
//! `Nats-Msg-Id` = its `webhook-id`, `redis_stream` appends it behind an idempotency guard.
//! A worker killed with published but unreported jobs leaves exactly one message per event in
//! either stream; servers killed while events arrive lose nothing once they are back; a stream
//! missing for a subject is a clear, retried error until it exists; and the hostile cases: a
//! disallowed address is never connected to, a credential written in the action is refused, a
//! subject that renders invalid fails that job only.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fraiseql_observers_tests::nats::NatsServer;
use fraiseql_observers_tests::{
    counting_listener, free_port, observer_status, sqlstate, wait_for_jobs, wait_until, Cluster,
    RedisServer, Worker,
};

/// Retries every 100 to 500 ms, for as long as a test needs.
const FAST_RETRIES: &str = r#"{"max_attempts": 1000, "backoff_base": "100 milliseconds", "backoff_cap": "500 milliseconds"}"#;

/// The documents the worker delivered for the completed jobs of `observer`, by webhook-id
/// (the claim's `observer.job_payload`, at the attempt that completed).
async fn delivered_documents(
    client: &tokio_postgres::Client,
    observer: &str,
) -> BTreeMap<String, serde_json::Value> {
    let rows = client
        .query(
            "SELECT j.idempotency_key,
                    observer.job_payload(o.name, o.columns, o.key_columns, j.event_id, j.payload, j.created_at,
                                         e.id, e.created_at, e.table_name, e.op, e.old, e.new, e.oversize,
                                         e.tx, e.role, e.context, j.attempt)::text
             FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
             JOIN observer.events e ON e.id = j.event_id
             WHERE o.name = $1 AND j.state = 'completed'",
            &[&observer],
        )
        .await
        .expect("documents");
    rows.iter()
        .map(|r| {
            let doc: &str = r.get(1);
            (r.get(0), serde_json::from_str(doc).expect("json"))
        })
        .collect()
}

/// Every attempt's outcome and error, in order.
async fn attempt_errors(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT job_id || '/' || attempt || ' ' || outcome || ': ' || coalesce(error, '')
             FROM observer.attempts ORDER BY finished_at",
            &[],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The webhook-ids of every job of `observer`.
async fn job_keys(client: &tokio_postgres::Client, observer: &str) -> BTreeSet<String> {
    client
        .query(
            "SELECT j.idempotency_key FROM observer.jobs j
             JOIN observer.observers o ON o.id = j.observer_id WHERE o.name = $1",
            &[&observer],
        )
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every entry of a Redis stream, as its fields and `@id` (its id), read with
/// `redis-cli --json XRANGE`.
fn redis_entries(port: u16, stream: &str) -> Vec<BTreeMap<String, String>> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--json"])
        .args(["XRANGE", stream, "-", "+"])
        .output()
        .expect("redis-cli");
    let entries: Vec<(String, Vec<String>)> =
        serde_json::from_slice(&out.stdout).expect("XRANGE as JSON");
    entries
        .into_iter()
        .map(|(id, values)| {
            let mut map: BTreeMap<String, String> = values
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect();
            map.insert("@id".to_string(), id);
            map
        })
        .collect()
}

/// Two observers on `orders`: `to_nats` (subject `orders.<op>.<id>`, url a worker secret) and
/// `to_redis` (stream `orders:<op>`).
async fn setup(client: &tokio_postgres::Client, redis_url: &str, options: &str) {
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY, region text NOT NULL DEFAULT 'eu');
               SELECT observer_create('to_nats', 'orders', events => ARRAY['INSERT'],
                   action => '{{"type": "nats", "url": {{"secret": "nats_url"}},
                               "subject": "orders.{{{{ op | lower }}}}.{{{{ new.id }}}}", "timeout_ms": 2000}}',
                   options => '{options}');
               SELECT observer_create('to_redis', 'orders', events => ARRAY['INSERT'],
                   action => '{{"type": "redis_stream", "url": "{redis_url}",
                               "stream": "orders:{{{{ op | lower }}}}", "maxlen": 100000, "timeout_ms": 2000}}',
                   options => '{options}');"#
        ))
        .await
        .expect("setup");
}

fn worker_env(nats: &NatsServer) -> Vec<(&'static str, String)> {
    vec![
        ("SECRETS__NATS_URL__VALUE", nats.url()),
        ("LEASE_SECONDS", "2".to_string()),
        ("CONCURRENCY", "32".to_string()),
    ]
}

fn start_worker(cluster: &Cluster, env: &[(&'static str, String)]) -> Worker {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Worker::start(&cluster.url("postgres"), &env).expect("worker")
}

/// Both streams hold exactly one message per job of their observer, under its webhook-id.
async fn assert_exactly_once(
    client: &tokio_postgres::Client,
    nats: &NatsServer,
    redis: &RedisServer,
    expected: usize,
) {
    let keys = job_keys(client, "to_nats").await;
    assert_eq!(keys.len(), expected);
    let messages = nats.messages("ORDERS").await.expect("read the stream");
    let ids: Vec<String> = messages
        .iter()
        .map(|m| m.msg_id.clone().expect("Nats-Msg-Id"))
        .collect();
    assert_eq!(ids.len(), expected, "one message per event in JetStream");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), keys);

    let keys = job_keys(client, "to_redis").await;
    let entries = redis_entries(redis.port, "orders:insert");
    assert_eq!(entries.len(), expected, "one entry per event in Redis");
    let ids: BTreeSet<String> = entries.iter().map(|e| e["webhook_id"].clone()).collect();
    assert_eq!(ids, keys);
}

/// Delivery to both: the NATS message is the delivered document byte for byte as JSON, under
/// its subject, with Nats-Msg-Id = webhook-id; the Redis entry's fields are the document's
/// top-level fields (data as JSON text) plus webhook_id. Each attempt is in the audit trail
/// with its endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_jetstream_and_a_redis_stream() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    let redis = RedisServer::start().expect("redis");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &redis.url(), "{}").await;
    let _worker = start_worker(&cluster, &worker_env(&nats));
    client
        .batch_execute("INSERT INTO orders (id) SELECT generate_series(1, 5)")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 10, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );

    let documents = delivered_documents(&client, "to_nats").await;
    let messages = nats.messages("ORDERS").await.expect("messages");
    assert_eq!(messages.len(), 5);
    for m in &messages {
        let id = m.msg_id.as_deref().expect("Nats-Msg-Id");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON body");
        assert_eq!(
            &body, &documents[id],
            "the message is the delivered document"
        );
        assert_eq!(
            m.subject,
            format!("orders.insert.{}", body["data"]["new"]["id"])
        );
    }

    let documents = delivered_documents(&client, "to_redis").await;
    let entries = redis_entries(redis.port, "orders:insert");
    assert_eq!(entries.len(), 5, "{entries:?}");
    for e in &entries {
        let doc = &documents[&e["webhook_id"]];
        assert_eq!(e["type"], "to_redis");
        assert_eq!(
            serde_json::Value::String(e["timestamp"].clone()),
            doc["timestamp"]
        );
        assert_eq!(e["attempt"], "1");
        let data: serde_json::Value = serde_json::from_str(&e["data"]).expect("data is JSON");
        assert_eq!(data, doc["data"]);
        let names: BTreeSet<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            BTreeSet::from(["@id", "type", "timestamp", "attempt", "data", "webhook_id"])
        );
    }

    let endpoints: Vec<(String, i64)> = client
        .query(
            "SELECT endpoint, count(*) FROM observer.attempts WHERE outcome = 'completed'
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        endpoints,
        vec![
            (format!("nats://127.0.0.1:{}", nats.port), 5),
            (format!("redis://127.0.0.1:{}", redis.port), 5)
        ]
    );
}

/// Completions wait on an advisory lock the test holds (a trigger on `observer.jobs`): jobs get
/// published while none is reported, so that all of them are in flight when a worker dies.
async fn hold_completions(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE FUNCTION hold_completions() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
             CREATE TRIGGER hold_completions BEFORE UPDATE ON observer.jobs FOR EACH ROW
                 WHEN (NEW.state = 'completed') EXECUTE FUNCTION hold_completions();
             SELECT pg_advisory_lock(4242);",
        )
        .await
        .expect("hold completions");
}

/// After the worker was killed: its sessions are ended (their blocked completions roll back),
/// then completions flow again; none was recorded.
async fn release_completions(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();
             SELECT pg_advisory_unlock(4242);",
        )
        .await
        .expect("release");
    let completed: i64 = client
        .query_one(
            "SELECT count(*) FROM observer.jobs WHERE state = 'completed'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(completed, 0, "nothing was reported before the kill");
}

/// Regression guard for at-least-once into the streams: the worker publishes and appends, is
/// killed (SIGKILL) before a single completion is recorded, and a new worker redelivers every
/// job after its lease: JetStream's duplicate window (Nats-Msg-Id) and the Redis guard keep
/// exactly one message per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_publishing_leaves_no_duplicate() {
    const EVENTS: usize = 200;
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    let redis = RedisServer::start().expect("redis");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &redis.url(), FAST_RETRIES).await;
    hold_completions(&client).await;
    let env = worker_env(&nats);
    let first = start_worker(&cluster, &env);
    client
        .batch_execute(&format!(
            "INSERT INTO orders (id) SELECT generate_series(1, {EVENTS})"
        ))
        .await
        .expect("insert");
    let all_sent = wait_until(Duration::from_secs(60), || async {
        redis_entries(redis.port, "orders:insert").len() == EVENTS
            && nats.messages("ORDERS").await.map(|m| m.len()).unwrap_or(0) == EVENTS
    })
    .await;
    assert!(all_sent, "every event published: {}", first.log());
    first.signal("KILL");
    drop(first);
    release_completions(&client).await;

    let _second = start_worker(&cluster, &env);
    assert!(
        wait_for_jobs(
            &client,
            "completed",
            2 * EVENTS as i64,
            Duration::from_secs(120)
        )
        .await,
        "{}",
        observer_status(&client).await
    );
    let redelivered: i64 = client
        .query_one(
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'completed' AND attempt >= 2",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(
        redelivered,
        2 * EVENTS as i64,
        "every job was delivered a second time"
    );
    assert_exactly_once(&client, &nats, &redis, EVENTS).await;
}

/// A `redis-server` with an append-only file, so that a killed one comes back on the same port
/// with its data (the harness's RedisServer keeps nothing).
struct DurableRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// The password it requires (`requirepass`), if any.
    password: Option<String>,
}

impl DurableRedis {
    fn start() -> DurableRedis {
        Self::start_with_password(None)
    }

    fn start_with_password(password: Option<&str>) -> DurableRedis {
        let mut r = DurableRedis {
            child: None,
            port: free_port().expect("port"),
            dir: tempfile::tempdir().expect("dir"),
            password: password.map(str::to_string),
        };
        r.restart();
        r
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "no"])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_string(), p.clone()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {}", self.port);
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--no-auth-warning".to_string(), "-a".to_string(), p.clone()]),
            )
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Both servers are killed while events arrive: the jobs retry (the attempt log says why), the
/// servers come back on the same ports with their data, and every event is in its stream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_down_while_events_arrive_lose_nothing() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let mut nats = NatsServer::start().expect("nats-server");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    let mut redis = DurableRedis::start();
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &redis.url(), FAST_RETRIES).await;
    let _worker = start_worker(&cluster, &worker_env(&nats));
    client
        .batch_execute("INSERT INTO orders (id) SELECT generate_series(1, 20)")
        .await
        .expect("insert");
    assert!(wait_for_jobs(&client, "completed", 40, Duration::from_secs(60)).await);

    nats.kill();
    redis.kill();
    client
        .batch_execute("INSERT INTO orders (id) SELECT generate_series(21, 60)")
        .await
        .expect("insert while down");
    let retried = wait_until(Duration::from_secs(60), || async {
        client
            .query_one(
                "SELECT count(DISTINCT o.name) FROM observer.attempts a
                 JOIN observer.jobs j ON j.id = a.job_id
                 JOIN observer.observers o ON o.id = j.observer_id
                 WHERE a.outcome = 'retry'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 2)
            .unwrap_or(false)
    })
    .await;
    assert!(retried, "{}", observer_status(&client).await);
    let errors: Vec<String> = client
        .query(
            "SELECT DISTINCT a.endpoint || ' ' || a.error FROM observer.attempts a WHERE a.outcome = 'retry'",
            &[],
        )
        .await
        .expect("errors")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("nats://127.0.0.1")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("redis://127.0.0.1")),
        "{errors:?}"
    );

    nats.restart().expect("nats back");
    redis.restart();
    assert!(
        wait_for_jobs(&client, "completed", 120, Duration::from_secs(120)).await,
        "{}",
        observer_status(&client).await
    );
    let messages = nats.messages("ORDERS").await.expect("messages");
    let ids: BTreeSet<String> = messages.iter().filter_map(|m| m.msg_id.clone()).collect();
    assert_eq!(messages.len(), 60);
    assert_eq!(ids, job_keys(&client, "to_nats").await);
    assert_eq!(redis.cli(&["XLEN", "orders:insert"]), "60");
    let entries = redis_entries(redis.port, "orders:insert");
    let ids: BTreeSet<String> = entries.iter().map(|e| e["webhook_id"].clone()).collect();
    assert_eq!(ids, job_keys(&client, "to_redis").await);
}

/// No stream takes the subject: each attempt fails with a clear error naming subject and server
/// (retried, the server not blamed); once the stream exists, the event is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_a_clear_retried_error_until_it_exists() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis");
    let client = cluster.connect("postgres").await.expect("connect");
    setup(&client, &redis.url(), FAST_RETRIES).await;
    let _worker = start_worker(&cluster, &worker_env(&nats));
    client
        .batch_execute("INSERT INTO orders (id) VALUES (1)")
        .await
        .expect("insert");
    let failed = wait_until(Duration::from_secs(60), || async {
        client
            .query_one(
                "SELECT count(*) FROM observer.attempts WHERE outcome = 'retry'
                 AND error LIKE 'no JetStream stream on nats://127.0.0.1:% takes subject \"orders.insert.1\"%'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) >= 2)
            .unwrap_or(false)
    })
    .await;
    assert!(failed, "{:?}", attempt_errors(&client).await);
    let debug: String = client
        .query_one(
            "SELECT observer_debug_event((SELECT max(id) FROM observer.events))::text",
            &[],
        )
        .await
        .expect("debug")
        .get(0);
    assert!(debug.contains("no JetStream stream"), "{debug}");

    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    assert!(
        wait_for_jobs(&client, "completed", 2, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let messages = nats.messages("ORDERS").await.expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].msg_id.clone().expect("id"),
        job_keys(&client, "to_nats")
            .await
            .pop_first()
            .expect("a job")
    );
}

/// The observers of the credentials test: NATS by a secret, by a literal URL it allows and by a
/// secret with the wrong password; Redis by a secret and by one with the wrong password.
async fn password_observers(client: &tokio_postgres::Client, port: u16) {
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY);
               SELECT observer_create('by_secret', 'orders',
                   action => '{{"type": "nats", "url": {{"secret": "nats_good"}}, "subject": "orders.secret"}}');
               SELECT observer_create('written_out', 'orders',
                   action => '{{"type": "nats", "url": "nats://app:s3cretpass12@127.0.0.1:{port}",
                               "subject": "orders.literal", "allow_literal_credentials": true}}');
               SELECT observer_create('wrong_password', 'orders',
                   action => '{{"type": "nats", "url": {{"secret": "nats_bad"}}, "subject": "orders.bad"}}',
                   options => '{{"max_attempts": 2, "backoff_base": "100 milliseconds", "backoff_cap": "200 milliseconds"}}');
               SELECT observer_create('redis_by_secret', 'orders',
                   action => '{{"type": "redis_stream", "url": {{"secret": "redis_good"}}, "stream": "orders"}}');
               SELECT observer_create('redis_wrong_password', 'orders',
                   action => '{{"type": "redis_stream", "url": {{"secret": "redis_bad"}}, "stream": "orders"}}',
                   options => '{{"max_attempts": 2, "backoff_base": "100 milliseconds", "backoff_cap": "200 milliseconds"}}');
               INSERT INTO orders VALUES (1);"#
        ))
        .await
        .expect("setup");
}

/// Servers that require a password (NATS a user and password, Redis `requirepass`): the worker
/// gives the ones of a secret URL or of a literal one the action allows, and a wrong password
/// fails the job with an error that names the server and quotes neither password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_the_server_and_never_an_error() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start_with_user("app", "s3cretpass12").expect("nats-server");
    let redis = DurableRedis::start_with_password(Some("s3cretpass12"));
    if let Err(e) = nats.create_stream("ORDERS", &["orders.>"]).await {
        panic!("{e:#}: {}", nats.log());
    }
    let client = cluster.connect("postgres").await.expect("connect");
    let port = nats.port;
    password_observers(&client, port).await;
    let good = format!("nats://app:s3cretpass12@127.0.0.1:{port}");
    let bad = format!("nats://app:wr0ngpass99@127.0.0.1:{port}");
    let redis_good = format!("redis://:s3cretpass12@127.0.0.1:{}/0", redis.port);
    let redis_bad = format!("redis://:wr0ngpass99@127.0.0.1:{}/0", redis.port);
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__NATS_GOOD__VALUE", good.as_str()),
            ("SECRETS__NATS_BAD__VALUE", bad.as_str()),
            ("SECRETS__REDIS_GOOD__VALUE", redis_good.as_str()),
            ("SECRETS__REDIS_BAD__VALUE", redis_bad.as_str()),
        ],
    )
    .expect("worker");
    let settled = wait_until(Duration::from_secs(60), || async {
        let s = observer_status(&client).await;
        s["jobs"]["completed"] == 3 && s["jobs"]["dead"] == 2
    })
    .await;
    assert!(settled, "{:?}", attempt_errors(&client).await);
    let subjects = nats.subjects("ORDERS").await.expect("messages");
    assert_eq!(
        subjects,
        BTreeSet::from(["orders.literal".to_string(), "orders.secret".to_string()])
    );
    let errors = attempt_errors(&client).await;
    let failures: Vec<&String> = errors
        .iter()
        .filter(|e| e.contains(" retry: ") || e.contains(" dead: "))
        .collect();
    assert_eq!(failures.len(), 4, "{errors:?}");
    let nats_failed = format!("cannot connect to the NATS server nats://127.0.0.1:{port}: ");
    let redis_failed = format!(
        "cannot connect to the Redis server redis://127.0.0.1:{}: ",
        redis.port
    );
    for e in failures {
        assert!(e.contains(&nats_failed) || e.contains(&redis_failed), "{e}");
    }
    assert_eq!(redis.cli(&["XLEN", "orders"]), "1");
    let everything = format!("{errors:?} {}", observer_status(&client).await);
    assert!(
        !everything.contains("wr0ngpass99") && !everything.contains("s3cretpass12"),
        "{everything}"
    );
}

/// A fresh database with the extension and `orders (id, region)`.
async fn orders_table(cluster: &Cluster) -> tokio_postgres::Client {
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, region text NOT NULL DEFAULT 'eu');",
        )
        .await
        .expect("setup");
    client
}

/// The state and last error of each job of `observer`, in job order.
async fn jobs_of(client: &tokio_postgres::Client, observer: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT j.state, coalesce(j.last_error, '') FROM observer.jobs j
             JOIN observer.observers o ON o.id = j.observer_id
             WHERE o.name = $1 ORDER BY j.id",
            &[&observer],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Wait until `observer` has `n` jobs, each completed or dead; then they are returned.
async fn settled_jobs(
    client: &tokio_postgres::Client,
    observer: &str,
    n: usize,
) -> Vec<(String, String)> {
    let settled = wait_until(Duration::from_secs(60), || async {
        let jobs = jobs_of(client, observer).await;
        jobs.len() == n && jobs.iter().all(|(s, _)| s == "completed" || s == "dead")
    })
    .await;
    let jobs = jobs_of(client, observer).await;
    assert!(settled, "{observer}: {jobs:?}");
    jobs
}

/// Hostile definitions are refused at create with 22023: a literal private or metadata
/// address, a credential written in the URL (never quoted back), a wildcard or a `$JS.` API
/// subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_definitions_are_refused_at_create() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = orders_table(&cluster).await;
    let create =
        |action: &str| format!("SELECT observer_create('x', 'orders', action => '{action}')");
    for action in [
        r#"{"type": "nats", "url": "nats://10.1.2.3:4222", "subject": "orders"}"#,
        r#"{"type": "redis_stream", "url": "redis://169.254.169.254:6379", "stream": "orders"}"#,
        r#"{"type": "nats", "url": "nats://app:hunter2pass@nats.example.com", "subject": "orders"}"#,
        r#"{"type": "redis_stream", "url": "redis://:hunter2pass@cache.example.com/0", "stream": "orders"}"#,
        r#"{"type": "nats", "url": "nats://nats.example.com", "subject": "orders.*"}"#,
        r#"{"type": "nats", "url": "nats://nats.example.com", "subject": "$JS.API.STREAM.DELETE.ORDERS"}"#,
    ] {
        assert_eq!(
            sqlstate(&client, &create(action)).await,
            "22023",
            "{action}"
        );
    }
    let refused = client
        .execute(
            &create(r#"{"type": "nats", "url": "nats://app:hunter2pass@nats.example.com", "subject": "orders"}"#),
            &[],
        )
        .await
        .expect_err("a literal credential");
    let text = format!("{refused:?}");
    assert!(text.contains("literal credential"), "{text}");
    assert!(!text.contains("hunter2pass"), "{text}");
    let refused = client
        .execute(
            &create(r#"{"type": "nats", "url": "nats://10.1.2.3:4222", "subject": "orders"}"#),
            &[],
        )
        .await
        .expect_err("a private address");
    let text = format!("{refused:?}");
    assert!(text.contains("10.1.2.3, a private"), "{text}");
}

/// A host name passes create, but every address it resolves to is refused by the worker's
/// network policy (loopback not allowed here): the job is dead with the reason and the server
/// is never connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_network_policy_refuses_is_never_connected_to() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = orders_table(&cluster).await;
    let (nats_port, nats_offered) = counting_listener();
    let (redis_port, redis_offered) = counting_listener();
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('blocked_nats', 'orders', action => '{{"type": "nats", "url": "nats://localhost:{nats_port}", "subject": "orders"}}',
                   options => '{{"max_attempts": 1}}');
               SELECT observer_create('blocked_redis', 'orders', action => '{{"type": "redis_stream", "url": "redis://localhost:{redis_port}", "stream": "orders"}}',
                   options => '{{"max_attempts": 1}}');
               INSERT INTO orders VALUES (1, 'eu');"#
        ))
        .await
        .expect("observers");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[("HTTP__ALLOW_NETWORKS", "192.0.2.1/32")],
    )
    .expect("worker");
    for (observer, scheme) in [("blocked_nats", "nats"), ("blocked_redis", "redis")] {
        let jobs = settled_jobs(&client, observer, 1).await;
        let (state, error) = &jobs[0];
        assert_eq!(state, "dead", "{jobs:?}");
        assert!(
            error.contains(&format!("{scheme}://localhost:"))
                && error.contains("loopback")
                && error.contains("refused by the network policy"),
            "{error}"
        );
    }
    assert_eq!(nats_offered.load(Ordering::SeqCst), 0, "never connected to");
    assert_eq!(
        redis_offered.load(Ordering::SeqCst),
        0,
        "never connected to"
    );
}

/// One row's value makes an invalid subject (a space, a wildcard): that job is dead with the
/// rendered subject and the reason, the other rows are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_that_renders_invalid_fails_only_its_job() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    let client = orders_table(&cluster).await;
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('by_region', 'orders', action => '{{"type": "nats", "url": "{}", "subject": "orders.{{{{ new.region }}}}"}}');
               INSERT INTO orders VALUES (2, 'eu'), (3, 'eu west'), (4, 'us'), (5, '*');"#,
            nats.url()
        ))
        .await
        .expect("by_region");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    let jobs = settled_jobs(&client, "by_region", 4).await;
    let states: Vec<&str> = jobs.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["completed", "dead", "completed", "dead"]);
    assert!(
        jobs[1]
            .1
            .contains(r#"action.subject rendered to "orders.eu west", which holds"#),
        "{jobs:?}"
    );
    assert!(
        jobs[3]
            .1
            .contains(r#"action.subject rendered to "orders.*""#),
        "{jobs:?}"
    );
    let subjects = nats.subjects("ORDERS").await.expect("messages");
    assert_eq!(
        subjects,
        BTreeSet::from(["orders.eu".to_string(), "orders.us".to_string()])
    );
}

/// A document larger than the server's max_payload can never be published: that job is dead at
/// once with the reason, the next one is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_over_max_payload_fails_only_its_job() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let small = NatsServer::start_with("max_payload: 1024\n").expect("nats-server");
    small
        .create_stream("NOTES", &["notes"])
        .await
        .expect("stream");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);
               SELECT observer_create('notes_to_nats', 'notes', action => '{{"type": "nats", "url": "{}", "subject": "notes"}}');
               INSERT INTO notes VALUES (1, repeat('x', 4000));
               INSERT INTO notes VALUES (2, 'short');"#,
            small.url()
        ))
        .await
        .expect("notes");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    let jobs = settled_jobs(&client, "notes_to_nats", 2).await;
    assert_eq!(jobs[0].0, "dead", "{jobs:?}");
    assert!(
        jobs[0]
            .1
            .contains("is larger than the max_payload of nats://127.0.0.1:"),
        "{jobs:?}"
    );
    assert_eq!(jobs[1].0, "completed", "{jobs:?}");
    assert_eq!(small.messages("NOTES").await.expect("messages").len(), 1);
}

/// A row's value may choose a subject that a plain subscriber takes (not a stream), which never
/// acknowledges: that job times out and is retried, but over a live connection this is not the
/// server's fault, so the circuit stays closed and the other rows are delivered without delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_without_acknowledgement_does_not_open_the_circuit() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let nats = NatsServer::start().expect("nats-server");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream");
    let tap = async_nats::connect(nats.url()).await.expect("tap");
    let _subscription = tap.subscribe("tap.>").await.expect("subscribe");
    tap.flush().await.expect("flush");
    let client = orders_table(&cluster).await;
    client
        .batch_execute(&format!(
            r#"SELECT observer_create('by_region', 'orders', action => '{{"type": "nats", "url": "{}",
                   "subject": "{{{{ new.region }}}}.x", "timeout_ms": 300}}');
               INSERT INTO orders VALUES (1, 'tap');"#,
            nats.url()
        ))
        .await
        .expect("observer");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("BREAKER__FAILURE_THRESHOLD", "1"),
            ("BREAKER__OPEN_MS", "60000"),
        ],
    )
    .expect("worker");
    let timed_out = wait_until(Duration::from_secs(60), || async {
        attempt_errors(&client)
            .await
            .iter()
            .filter(|e| e.contains("no JetStream acknowledgement for subject \"tap.x\""))
            .count()
            >= 2
    })
    .await;
    assert!(timed_out, "{:?}", attempt_errors(&client).await);
    client
        .batch_execute("INSERT INTO orders SELECT i, 'orders' FROM generate_series(2, 6) i")
        .await
        .expect("insert");
    let delivered = wait_until(Duration::from_secs(30), || async {
        let jobs = jobs_of(&client, "by_region").await;
        jobs.iter().filter(|(s, _)| s == "completed").count() == 5
    })
    .await;
    assert!(delivered, "{:?}", jobs_of(&client, "by_region").await);
    let snoozed: i64 = client
        .query_one(
            "SELECT coalesce(sum(snoozes), 0)::bigint FROM observer.jobs",
            &[],
        )
        .await
        .expect("snoozes")
        .get(0);
    assert_eq!(snoozed, 0, "no job was held back by an open circuit");
    assert_eq!(nats.messages("ORDERS").await.expect("messages").len(), 5);
}
