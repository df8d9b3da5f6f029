//! Upgrading from the previous release, as docs/runbook.md ("Upgrading") says to: the server runs
//! the new library, the database has the previous release's SQL
//! (`CREATE EXTENSION ... VERSION '0.1.0'`: its install script as released, kept in
//! extension/sql/), observers and a backlog in every state exist, and a 0.1.0 worker session holds
//! a running job. Then `ALTER EXTENSION fraiseql_observers UPDATE`, and:
//! - the schema (tables, functions, views, types, grants) is the same as a fresh install's:
//!   `pg_dump --schema-only` of both is identical;
//! - nothing is lost: observers, events, jobs (pending, running, retrying, dead, completed) and
//!   the audit trail are as they were;
//! - the held job completes with the lease it was claimed under, through the 0.1.0 worker's own
//!   calls; the events captured before the update are dispatched after it; a 0.2.0 worker
//!   (running as the worker role granted under 0.1.0) delivers the rest, and a dead job retried
//!   from the dead-letter queue is delivered too.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use fraiseql_observers_tests::sink::Sink;
use fraiseql_observers_tests::{pg_bindir, sqlstate, wait_for_jobs, wait_until, Cluster, Worker};

const PREVIOUS: &str = "0.1.0";
const CURRENT: &str = env!("CARGO_PKG_VERSION");

/// What must survive the update, read the same way before and after it (the jobs up to id $1:
/// the dispatcher makes new ones after the update).
const STATE: &str = "SELECT jsonb_build_object(
    'observers', (SELECT jsonb_agg(to_jsonb(o) ORDER BY o.id) FROM observer.observers o),
    'jobs', (SELECT jsonb_agg(to_jsonb(j) ORDER BY j.id) FROM observer.jobs j WHERE j.id <= $1),
    'attempts', (SELECT jsonb_agg(to_jsonb(a) ORDER BY a.job_id, a.attempt) FROM observer.attempts a),
    'events', (SELECT jsonb_agg(jsonb_build_object('id', l.id, 'tx', l.tx::text, 'nrows', l.nrows,
                                                   'old', md5(coalesce(l.old_rows, '')), 'new', md5(coalesce(l.new_rows, ''))) ORDER BY l.id)
               FROM observer.event_log l),
    'checkpoint', (SELECT to_jsonb(d) FROM observer.dispatch_state d))::text";

/// `after`'s rows without the columns the update added, each of which must be NULL in every row
/// (the update adds columns, it never fills them in).
fn without_added_columns(
    after: &serde_json::Value,
    before: &serde_json::Value,
) -> serde_json::Value {
    let (Some(after_rows), Some(before_rows)) = (after.as_array(), before.as_array()) else {
        return after.clone();
    };
    let rows = after_rows.iter().zip(before_rows).map(|(row, old)| {
        let (Some(row), Some(old)) = (row.as_object(), old.as_object()) else {
            return row.clone();
        };
        let mut kept = serde_json::Map::new();
        for (k, v) in row {
            if old.contains_key(k) {
                kept.insert(k.clone(), v.clone());
            } else {
                assert!(v.is_null(), "added column {k} is {v}, not NULL");
            }
        }
        serde_json::Value::Object(kept)
    });
    serde_json::Value::Array(rows.collect())
}

async fn extversion(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'fraiseql_observers'",
            &[],
        )
        .await
        .expect("extversion")
        .get(0)
}

/// The tables `pg_dump` dumps with the extension (its configuration tables).
async fn extension_config(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT array_agg(c::regclass::text ORDER BY 1)::text FROM pg_extension, unnest(extconfig) c \
             WHERE extname = 'fraiseql_observers'",
            &[],
        )
        .await
        .expect("extconfig")
        .get(0)
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// `pg_dump --schema-only` of the extension's objects in `dbname`. pg_dump prints an extension as
/// its `CREATE EXTENSION` line only, so the extension's membership records are removed first (a
/// superuser's catalog edit: this database is not used afterwards), and with them its recorded
/// initial privileges, so that grants print against the defaults in both databases alike.
async fn extension_schema_dump(cluster: &Cluster, dbname: &str) -> String {
    let client = cluster.connect(dbname).await.expect("connect");
    client
        .batch_execute(
            "DELETE FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
               AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'fraiseql_observers');
             DELETE FROM pg_init_privs WHERE privtype = 'e';",
        )
        .await
        .expect("detach the extension's objects");
    let out = Command::new(pg_bindir().join("pg_dump"))
        .args([
            "--schema-only",
            "--restrict-key=fraiseqlobservers",
            "--dbname",
        ])
        .arg(cluster.url(dbname))
        .args(["--exclude-schema", "app"])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump {dbname}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 dump")
}

/// The lines that differ, as `diff -u` shows them.
fn diff(a: &str, b: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pa, pb) = (
        dir.path().join("fresh.sql"),
        dir.path().join("upgraded.sql"),
    );
    std::fs::write(&pa, a).expect("write");
    std::fs::write(&pb, b).expect("write");
    let out = Command::new("diff")
        .arg("-u")
        .args([&pa, &pb])
        .output()
        .expect("diff");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn order_ids(sink: &Sink) -> BTreeSet<i64> {
    sink.received()
        .iter()
        .filter(|r| r.path == "/orders")
        .filter_map(|r| r.body["data"]["new"]["id"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_from_previous_release_keeps_everything_and_matches_a_fresh_install() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let admin = cluster.connect("postgres").await.expect("connect");

    // The previous release, its roles and grants, observers on a table and a job queue.
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers VERSION '{PREVIOUS}';
             CREATE ROLE fo_admin LOGIN; CREATE ROLE fo_worker LOGIN; CREATE ROLE fo_app LOGIN;
             SELECT observer_grant('fo_admin', 'admin'), observer_grant('fo_worker', 'worker'),
                    observer_grant('fo_app', 'app');
             CREATE SCHEMA app;
             CREATE TABLE app.orders (id bigint PRIMARY KEY, status text NOT NULL);
             SELECT observer_create('orders_hook', 'app.orders', events => ARRAY['INSERT'],
                 action => jsonb_build_object('type', 'webhook', 'url', '{orders}'),
                 options => '{{\"max_attempts\": 3, \"backoff_base\": \"1 second\", \"backoff_cap\": \"1 second\"}}');
             SELECT observer_create('mail_jobs', NULL,
                 action => jsonb_build_object('type', 'webhook', 'url', '{jobs}'));",
            orders = sink.url("/orders"),
            jobs = sink.url("/jobs"),
        ))
        .await
        .expect("set up 0.1.0");
    assert_eq!(extversion(&admin).await, PREVIOUS);

    // The library is the new one and the SQL the old: the dispatcher waits for the update.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let log = cluster.server_log();
            async move {
                log.contains(&format!(
                    "the library is {CURRENT} but the extension's SQL in database \"postgres\" is {PREVIOUS}"
                ))
            }
        })
        .await,
        "the dispatcher says it waits for the update:\n{}",
        cluster.server_log()
    );

    // A backlog in every state, made by 0.1.0's own functions: ten orders in one statement (one
    // batch event), dispatched into ten jobs; a 0.1.0 worker claims four: completes one, fails
    // one (to be retried), dead-letters one and holds the fourth; three queue jobs; then five
    // orders whose events are not dispatched before the update.
    admin
        .batch_execute("INSERT INTO app.orders SELECT i, 'new' FROM generate_series(1, 10) i")
        .await
        .expect("insert");
    admin
        .batch_execute("SELECT observer_dispatch()")
        .await
        .expect("dispatch with 0.1.0's SQL");
    assert_eq!(
        count(
            &admin,
            "SELECT count(*) FROM observer.jobs WHERE state = 'pending'"
        )
        .await,
        10
    );
    let old_worker = cluster.connect_as("fo_worker").await;
    let claimed: Vec<(i64, i64)> = old_worker
        .query(
            "SELECT job_id, token FROM observer_claim('worker-0.1.0'::text, 4, make_interval(secs => 600)) ORDER BY job_id",
            &[],
        )
        .await
        .expect("claim as the 0.1.0 worker")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(claimed.len(), 4, "four jobs claimed");
    let [done, retry, dead, held] = [claimed[0], claimed[1], claimed[2], claimed[3]];
    let rejected = old_worker
        .query(
            "SELECT job_id FROM observer_complete($1::int8[], $2::int8[], $3::text[], $4::int4[], $5::int4[]) WHERE NOT accepted",
            &[&vec![done.0], &vec![done.1], &vec!["http://sink/orders"], &vec![200i32], &vec![5i32]],
        )
        .await
        .expect("complete");
    assert!(rejected.is_empty());
    old_worker
        .query(
            "SELECT job_id FROM observer_fail($1::int8[], $2::int8[], $3::text[], ARRAY[now()]::timestamptz[], \
             $4::text[], $5::int4[], $6::int4[]) WHERE NOT accepted",
            &[&vec![retry.0], &vec![retry.1], &vec!["HTTP 503"], &vec!["http://sink/orders"], &vec![503i32], &vec![7i32]],
        )
        .await
        .expect("fail");
    old_worker
        .query(
            "SELECT job_id FROM observer_discard($1::int8[], $2::int8[], $3::text[], NULL, $4::text[], $5::int4[], $6::int4[]) \
             WHERE NOT accepted",
            &[&vec![dead.0], &vec![dead.1], &vec!["HTTP 410: gone"], &vec!["http://sink/orders"], &vec![410i32], &vec![3i32]],
        )
        .await
        .expect("discard");
    let app = cluster.connect_as("fo_app").await;
    for n in 1..=3 {
        app.query_one(
            "SELECT observer_enqueue('mail_jobs', jsonb_build_object('n', $1::int))",
            &[&n],
        )
        .await
        .expect("enqueue as the app");
    }
    admin
        .batch_execute("INSERT INTO app.orders SELECT i, 'late' FROM generate_series(11, 15) i")
        .await
        .expect("orders captured before the update");
    // In the window the old decoders, declared over `anyelement`, refuse anything but a batch
    // (the library reads `bytea` only), even for a superuser.
    assert_eq!(
        sqlstate(&admin, "SELECT observer_decode_rows('{a}', '{23}', 42)").await,
        "42804",
        "an integer is not read as a batch"
    );
    assert_eq!(
        sqlstate(
            &admin,
            "SELECT observer_decode_row('{a}', '{23}', 'not a batch'::text, 0)"
        )
        .await,
        "42804"
    );
    let states = "SELECT string_agg(state || '=' || n, ',' ORDER BY state) FROM \
                  (SELECT state, count(*) n FROM observer.jobs GROUP BY state) s";
    let before_states: String = admin.query_one(states, &[]).await.expect("states").get(0);
    assert_eq!(before_states, "completed=1,dead=1,pending=10,running=1");
    let last_job = count(&admin, "SELECT max(id) FROM observer.jobs").await;
    let before: String = admin
        .query_one(STATE, &[&last_job])
        .await
        .expect("state")
        .get(0);

    // The update.
    admin
        .batch_execute("ALTER EXTENSION fraiseql_observers UPDATE")
        .await
        .expect("ALTER EXTENSION fraiseql_observers UPDATE");
    assert_eq!(extversion(&admin).await, CURRENT);

    // Nothing lost: every row as it was.
    let after: String = admin
        .query_one(STATE, &[&last_job])
        .await
        .expect("state after")
        .get(0);
    let (b, a): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&before).expect("json"),
        serde_json::from_str(&after).expect("json"),
    );
    for part in ["observers", "jobs", "attempts", "events"] {
        assert_eq!(
            without_added_columns(&a[part], &b[part]),
            b[part],
            "{part} changed by the update"
        );
    }
    assert_eq!(a["checkpoint"], b["checkpoint"]);

    // The held job: the 0.1.0 worker's heartbeat and completion are accepted with its token.
    let lost = old_worker
        .query(
            "SELECT job_id FROM observer_heartbeat($1::int8[], $2::int8[], make_interval(secs => 600)) WHERE NOT accepted",
            &[&vec![held.0], &vec![held.1]],
        )
        .await
        .expect("heartbeat after the update");
    assert!(lost.is_empty(), "the lease survived the update");
    let rejected = old_worker
        .query(
            "SELECT job_id FROM observer_complete($1::int8[], $2::int8[], $3::text[], $4::int4[], $5::int4[]) WHERE NOT accepted",
            &[&vec![held.0], &vec![held.1], &vec!["http://sink/orders"], &vec![200i32], &vec![9i32]],
        )
        .await
        .expect("complete the held job after the update");
    assert!(rejected.is_empty(), "the held job completes");

    // Deliveries go on: the dispatcher takes the five events captured before the update, a 0.2.0
    // worker running as the role granted under 0.1.0 delivers every pending job (the retried one
    // included), and a dead job retried from the dead-letter queue.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let admin = &admin;
            async move { count(admin, "SELECT count(*) FROM observer.jobs").await == 18 }
        })
        .await,
        "the events captured before the update were dispatched after it"
    );
    let worker_url = cluster.url_as("fo_worker");
    let mut worker = Worker::start(&worker_url, &[]).expect("worker");
    admin
        .query_one(
            "SELECT observer_dlq_retry(job_ids => ARRAY[$1::bigint])",
            &[&dead.0],
        )
        .await
        .expect("retry the dead job");
    let delivered = wait_for_jobs(&admin, "completed", 18, Duration::from_secs(60)).await;
    assert!(
        delivered,
        "every job completed; worker log:\n{}",
        worker.log()
    );
    let expected: BTreeSet<i64> = (1..=15).collect();
    let done_or_held: BTreeSet<i64> = admin
        .query(
            "SELECT (e.new->>'id')::bigint FROM observer.jobs j, observer.events_safe(ARRAY[j.event_id]) e \
             WHERE j.id = ANY($1)",
            &[&vec![done.0, held.0]],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, i64>(0)).collect())
        .unwrap_or_default();
    let at_sink = order_ids(&sink);
    assert_eq!(
        at_sink
            .union(&done_or_held)
            .copied()
            .collect::<BTreeSet<_>>(),
        expected,
        "every order delivered once the update ran"
    );
    let jobs_at_sink = sink.received().iter().filter(|r| r.path == "/jobs").count();
    assert!(jobs_at_sink >= 3, "the queued jobs were delivered");
    worker.terminate(Duration::from_secs(10));

    // Same schema as a fresh install with the same grants.
    admin
        .batch_execute("CREATE DATABASE fresh;")
        .await
        .expect("create database");
    let fresh = cluster.connect("fresh").await.expect("connect fresh");
    fresh
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             SELECT observer_grant('fo_admin', 'admin'), observer_grant('fo_worker', 'worker'),
                    observer_grant('fo_app', 'app');",
        )
        .await
        .expect("fresh install");
    let fresh_config = extension_config(&fresh).await;
    let upgraded_config = extension_config(&admin).await;
    assert_eq!(
        upgraded_config, fresh_config,
        "the same tables are dumped with the extension"
    );
    drop(fresh);
    let fresh_dump = extension_schema_dump(&cluster, "fresh").await;
    let upgraded_dump = extension_schema_dump(&cluster, "postgres").await;
    assert!(
        fresh_dump.contains("CREATE FUNCTION public.observer_dispatch")
            && fresh_dump.contains("GRANT ALL ON FUNCTION public.observer_claim"),
        "the dump holds the extension's objects and grants"
    );
    assert!(
        upgraded_dump == fresh_dump,
        "the updated schema differs from a fresh install's:\n{}",
        diff(&fresh_dump, &upgraded_dump)
    );
}
