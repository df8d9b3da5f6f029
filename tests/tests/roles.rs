//! Roles and privileges (sql/roles.sql): an application role, a worker role and an admin role,
//! each given its access with observer_grant(), and what each can and cannot do. The worker role
//! runs the real worker binary end to end; nothing is granted to PUBLIC.

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{sqlstate, wait_for_jobs, Cluster, Sink, Worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_worker_and_admin_roles_can_do_what_they_need_and_nothing_more() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // 410 for /gone: a dead job for the dead-letter functions below; 200 for the rest.
    let sink = Sink::start_with(Arc::new(|r, _| if r.path == "/gone" { 410 } else { 200 }))
        .await
        .expect("sink");
    let root = cluster.connect("postgres").await.expect("connect");
    root.batch_execute(
        "CREATE EXTENSION fraiseql_observers;
         CREATE ROLE app LOGIN; CREATE ROLE worker LOGIN; CREATE ROLE admin LOGIN;
         GRANT CREATE ON SCHEMA public TO admin;
         CREATE TABLE private_table (id int PRIMARY KEY);
         SELECT observer_grant('app', 'app');
         SELECT observer_grant('worker', 'worker');
         SELECT observer_grant('admin', 'admin');",
    )
    .await
    .expect("roles");

    // The admin creates a table of its own, observes it, and a job queue; it cannot observe a
    // table it has no TRIGGER privilege on.
    let admin = cluster.connect_as("admin").await;
    assert_eq!(
        sqlstate(
            &admin,
            &format!(
                r#"CREATE TABLE orders (id int PRIMARY KEY, status text);
                   GRANT INSERT, UPDATE ON orders TO app;
                   SELECT observer_create('orders', 'orders', ARRAY['INSERT'],
                                          action => '{{"type": "webhook", "url": "{}"}}');
                   SELECT observer_create('mail', NULL, action => '{{"type": "webhook", "url": "{}"}}');"#,
                sink.url("/orders"),
                sink.url("/mail")
            )
        )
        .await,
        "ok"
    );
    assert_eq!(
        sqlstate(
            &admin,
            r#"SELECT observer_create('spy', 'private_table', ARRAY['INSERT'],
                                      action => '{"type": "webhook", "url": "https://example.com/"}')"#
        )
        .await,
        "42501",
        "no TRIGGER privilege on private_table"
    );

    // The application writes observed rows and enqueues jobs, and nothing else.
    let app = cluster.connect_as("app").await;
    assert_eq!(
        sqlstate(&app, "INSERT INTO orders VALUES (1, 'new'), (2, 'new')").await,
        "ok"
    );
    assert_eq!(
        sqlstate(&app, "INSERT INTO orders VALUES (3, 'new')").await,
        "ok"
    );
    assert_eq!(
        sqlstate(
            &app,
            r#"SELECT observer_enqueue('mail', '{"to": "ada@example.com"}')"#
        )
        .await,
        "ok"
    );
    for forbidden in [
        "SELECT * FROM observer.event_log",
        "SELECT * FROM observer.jobs",
        "SELECT * FROM observer_claim('app', 10)",
        "SELECT observer_status()",
        "SELECT observer_drop('orders')",
        r#"SELECT observer_create('x', NULL, action => '{"type": "webhook", "url": "https://example.com/"}')"#,
        "SELECT observer_dlq_purge(all_jobs => true)",
        "SELECT observer_dlq_show(1)",
        "SELECT * FROM observer_dlq_match(all_jobs => true)",
        "SELECT observer_grant('app', 'admin')",
    ] {
        assert_eq!(sqlstate(&app, forbidden).await, "42501", "app: {forbidden}");
    }

    // The worker role runs the worker end to end: dispatch, claim, deliver, complete.
    let worker_url = cluster.url_as("worker");
    let _worker = Worker::start(&worker_url, &[]).expect("worker");
    assert!(
        wait_for_jobs(&root, "completed", 4, Duration::from_secs(30)).await,
        "{}",
        _worker.log()
    );
    assert_eq!(sink.received().len(), 4);
    let worker = cluster.connect_as("worker").await;
    assert_eq!(sqlstate(&worker, "SELECT observer_status()").await, "ok");
    for forbidden in [
        "SELECT * FROM observer.jobs",
        "SELECT * FROM observer_dlq_list()",
        "SELECT observer_dlq_purge(all_jobs => true)",
        "SELECT observer_dlq_show(1)",
        "SELECT * FROM observer_dlq_match(all_jobs => true)",
        "SELECT observer_drop('orders')",
        r#"SELECT observer_enqueue('mail', '{}')"#,
        "SELECT * FROM observer_search('x')",
        "INSERT INTO observer.jobs (observer_id, payload, idempotency_key) VALUES (1, '{}', 'x')",
    ] {
        assert_eq!(
            sqlstate(&worker, forbidden).await,
            "42501",
            "worker: {forbidden}"
        );
    }

    // The admin sees everything; revoking takes it away.
    assert_eq!(
        sqlstate(&admin, "SELECT * FROM observer_search('new')").await,
        "ok"
    );
    assert_eq!(
        sqlstate(&admin, "SELECT count(*) FROM observer.jobs").await,
        "ok"
    );
    // The admin reads the dead-letter queue through its public functions: a job whose endpoint
    // answered 410, with its payload read from the event log (observer.events_safe, which no
    // admin could call itself: it decodes the log's rows).
    assert_eq!(
        sqlstate(
            &admin,
            &format!(
                r#"SELECT observer_create('gone', 'orders', ARRAY['UPDATE'],
                                          action => '{{"type": "webhook", "url": "{}"}}')"#,
                sink.url("/gone")
            )
        )
        .await,
        "ok"
    );
    assert_eq!(
        sqlstate(&admin, "UPDATE orders SET status = 'gone' WHERE id = 1").await,
        "ok"
    );
    assert!(
        wait_for_jobs(&root, "dead", 1, Duration::from_secs(30)).await,
        "{}",
        _worker.log()
    );
    let dead: i64 = admin
        .query_one(
            "SELECT job_id FROM observer_dlq_match(observer => 'gone')",
            &[],
        )
        .await
        .expect("observer_dlq_match as admin")
        .get(0);
    let shown: String = admin
        .query_one("SELECT observer_dlq_show($1)::text", &[&dead])
        .await
        .expect("observer_dlq_show as admin")
        .get(0);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["payload"]["data"]["new"]["status"], "gone", "{shown}");
    assert_eq!(shown["attempt_log"][0]["status"], 410, "{shown}");
    for forbidden in [
        format!("SELECT observer_dlq_show({dead})"),
        "SELECT * FROM observer_dlq_match(observer => 'gone')".to_string(),
    ] {
        assert_eq!(
            sqlstate(&app, &forbidden).await,
            "42501",
            "app: {forbidden}"
        );
        assert_eq!(
            sqlstate(&worker, &forbidden).await,
            "42501",
            "worker: {forbidden}"
        );
    }

    root.batch_execute("SELECT observer_revoke('admin', 'admin')")
        .await
        .expect("revoke");
    assert_eq!(sqlstate(&admin, "SELECT observer_status()").await, "42501");
    assert_eq!(
        sqlstate(&admin, &format!("SELECT observer_dlq_show({dead})")).await,
        "42501"
    );
    assert_eq!(
        sqlstate(&root, "SELECT observer_grant('nobody', 'app')").await,
        "42704"
    );
    assert_eq!(
        sqlstate(&root, "SELECT observer_grant('app', 'root')").await,
        "22023"
    );
    // Nothing of the extension is granted to PUBLIC.
    let public: i64 = root
        .query_one(
            "SELECT count(*) FROM pg_proc p
             JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'fraiseql_observers'
             WHERE has_function_privilege('public', p.oid, 'EXECUTE')",
            &[],
        )
        .await
        .expect("acl")
        .get(0);
    assert_eq!(public, 0, "no function executable by PUBLIC");
    let unset: i64 = root
        .query_one(
            "SELECT count(*) FROM pg_proc p
             JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'fraiseql_observers'
             WHERE p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')
               AND NOT coalesce(p.proconfig::text LIKE '%search_path=%', false)",
            &[],
        )
        .await
        .expect("proconfig")
        .get(0);
    assert_eq!(unset, 0, "every plpgsql function has a fixed search_path");
}
