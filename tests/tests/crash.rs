//! Crashes during a write load: the dispatcher backend is terminated, then Postgres is stopped in
//! immediate mode (no checkpoint, WAL recovery) and started again. Afterwards every committed row
//! has exactly one event and one job: nothing lost, nothing doubled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{wait_until, Cluster};

const WRITERS: i64 = 16;

async fn dispatcher_pids(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'fraiseql_observers dispatcher'",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatcher_kill_and_immediate_restart_lose_nothing() {
    let cluster = Arc::new(Cluster::start(&[]).expect("cluster"));
    let admin = cluster.connect("postgres").await.expect("connect");
    admin
        .batch_execute(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE src (id bigint PRIMARY KEY, writer int NOT NULL);
               SELECT observer_create('all_src', 'src', action => '{"type":"webhook","url":"http://127.0.0.1:9/"}');"#,
        )
        .await
        .expect("setup");

    // Writers: 5-row transactions with unique ids, reconnecting whenever the server goes away.
    // A transaction cut by the crash may or may not have committed; the table itself says which.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let cluster = cluster.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut next = w * 10_000_000;
            let mut committed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(client) = cluster.connect("postgres").await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    next += 5;
                    let sql = format!(
                        "BEGIN; INSERT INTO src SELECT i, {w} FROM generate_series({}, {next}) i; COMMIT;",
                        next - 4
                    );
                    if client.batch_execute(&sql).await.is_err() {
                        break;
                    }
                    committed += 5;
                }
            }
            committed
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = dispatcher_pids(&admin).await;
    assert_eq!(before.len(), 1, "one dispatcher runs");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&before[0]])
        .await
        .expect("terminate the dispatcher");
    // The postmaster brings it back (restart time 5 s).
    let back = wait_until(Duration::from_secs(15), || {
        let admin = &admin;
        let old = before[0];
        async move {
            let now = dispatcher_pids(admin).await;
            now.len() == 1 && now[0] != old
        }
    })
    .await;
    assert!(
        back,
        "the dispatcher is restarted after being terminated\n{}",
        cluster.server_log()
    );

    cluster.restart_immediate().expect("immediate restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = 0u64;
    for w in writers {
        acknowledged += w.await.expect("writer");
    }

    let admin = cluster.connect("postgres").await.expect("reconnect");
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM src", &[])
        .await
        .expect("count")
        .get(0);
    assert!(
        rows as u64 >= acknowledged,
        "every acknowledged commit survived: {rows} < {acknowledged}"
    );
    assert!(
        acknowledged > 1000,
        "the load was real: {acknowledged} rows"
    );

    let all_dispatched = wait_until(Duration::from_secs(60), || {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM observer.jobs", &[])
                .await
                .map(|r| r.get::<_, i64>(0) == rows)
                .unwrap_or(false)
        }
    })
    .await;
    assert!(
        all_dispatched,
        "jobs != rows after recovery\n{}",
        cluster.server_log()
    );
    let wrong: i64 = admin
        .query_one(
            "SELECT count(*) FROM src s FULL JOIN (
                 SELECT (e.new ->> 'id')::bigint AS id, count(*) AS jobs
                 FROM observer.jobs j JOIN observer.events e ON e.id = j.event_id GROUP BY 1
             ) j ON j.id = s.id
             WHERE s.id IS NULL OR j.id IS NULL OR j.jobs <> 1",
            &[],
        )
        .await
        .expect("compare")
        .get(0);
    assert_eq!(
        wrong, 0,
        "every committed row has exactly one job, and every job a committed row"
    );
}
