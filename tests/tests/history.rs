//! The calls that read the job history, on a history large enough (600,000 finished jobs, over
//! the 64 MB past which observer_status() estimates completed jobs) that they read it through the
//! dead jobs' and the attempts' indexes: what they answer, never how fast (benches/console.sh
//! measures that at ten million jobs).
//! - observer_status(): jobs waiting, running and dead counted exactly, completed ones estimated
//!   and said to be (`completed_estimated`); on a small table everything exact.
//! - observer_dlq_list() with each filter lists what a plain query over the table lists, newest
//!   first; a dead job retried since is no longer listed.
//! - observer_search() answers for a rare word, a common one and none what a plain query answers,
//!   each document as observer.audit_document() builds it.
//! - observer.job_counts() is the extension's own: an app role may not call it (42501).

use fraiseql_observers_tests::{observer_status, sqlstate, Cluster};
use tokio_postgres::Client;

/// Finished jobs of the history: 3 in 4 of queue `q1`, 1 in 4 of `q2`.
const FINISHED: i64 = 600_000;
/// Dead jobs among them (every 1,999th: 225 of q1, 75 of q2), with four kinds of error.
const DEAD: i64 = FINISHED / 1999;
/// The dead jobs of q2 (1,999 k is a multiple of 4 when k is).
const DEAD_Q2: i64 = DEAD / 4;

/// Two job queues and their history, loaded with set-based SQL as benches/console/load.sql does:
/// jobs finished one a second up to now, each with its attempt (and its words); plus 4 + 3
/// pending and 2 running jobs.
async fn history(client: &Client) {
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               SELECT observer_create('q1', NULL, action => '{{"type": "webhook", "url": "http://127.0.0.1:9/"}}');
               SELECT observer_create('q2', NULL, action => '{{"type": "webhook", "url": "http://127.0.0.1:9/"}}');
               INSERT INTO observer.jobs (observer_id, payload, idempotency_key, state, attempt, last_error,
                                          created_at, finished_at)
               SELECT CASE WHEN i % 4 = 0 THEN 2 ELSE 1 END,
                      jsonb_build_object('n', i, 'tag', 'w' || i % 5000, 'color', CASE WHEN i % 2 = 0 THEN 'red' ELSE 'green' END),
                      'job_' || i, CASE WHEN i % 1999 = 0 THEN 'dead' ELSE 'completed' END, 1,
                      CASE WHEN i % 1999 = 0 THEN (ARRAY['HTTP 500: boom', 'timed out after 30s', 'HTTP 422: refused',
                                                         'connection refused'])[i / 1999 / 2 % 4 + 1] END,
                      now() - ({FINISHED} - i) * interval '1 second', now() - ({FINISHED} - i) * interval '1 second'
               FROM generate_series(1, {FINISHED}) i;
               INSERT INTO observer.attempts (job_id, attempt, outcome, error, finished_at, search)
               SELECT j.id, 1, CASE WHEN j.state = 'dead' THEN 'dead' ELSE 'completed' END, j.last_error,
                      j.finished_at, observer.words(j.last_error, j.payload)
               FROM observer.jobs j;
               SELECT observer_enqueue('q1', '{{"n": 0}}') FROM generate_series(1, 4);
               SELECT observer_enqueue('q2', '{{"n": 0}}') FROM generate_series(1, 3);
               SELECT count(*) FROM observer_claim('w', 2, '1 hour');"#
        ))
        .await
        .expect("history");
    // On its own: VACUUM cannot run in the implicit transaction of a multi-statement string.
    client
        .batch_execute("VACUUM ANALYZE observer.jobs, observer.attempts")
        .await
        .expect("vacuum");
}

/// The first column of `sql`'s rows, as i64.
async fn ids(client: &Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_estimates_completed_jobs_only_on_a_large_table() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    history(&client).await;

    let s = observer_status(&client).await;
    assert_eq!(s["completed_estimated"], true, "{s}");
    // Counted exactly: the claim took the two oldest pending jobs (of q1).
    assert_eq!(s["jobs"]["pending"], 5, "{s}");
    assert_eq!(s["jobs"]["running"], 2, "{s}");
    assert_eq!(s["jobs"]["dead"], DEAD, "{s}");
    let per = |name: &str| {
        s["observers"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("observer {name} in {s}"))
    };
    assert_eq!(per("q1")["dead"], DEAD - DEAD_Q2, "{s}");
    assert_eq!(per("q2")["dead"], DEAD_Q2, "{s}");
    // Estimated: the total from the table's live rows, shared as in a sample of its pages.
    let completed = FINISHED - DEAD;
    let near = |got: &serde_json::Value, want: i64, tolerance: f64| {
        let got = got.as_i64().unwrap_or_else(|| panic!("a count: {got}"));
        ((got - want).abs() as f64) <= want as f64 * tolerance
    };
    assert!(near(&s["jobs"]["completed"], completed, 0.02), "{s}");
    assert!(
        near(&per("q1")["completed"], completed * 3 / 4, 0.05),
        "{s}"
    );
    assert!(near(&per("q2")["completed"], completed / 4, 0.05), "{s}");

    // A small table is counted exactly, every state.
    client
        .batch_execute("TRUNCATE observer.jobs")
        .await
        .expect("truncate");
    client
        .batch_execute(
            "SELECT observer_enqueue('q2', '{\"n\": 1}') FROM generate_series(1, 3);
             SELECT count(*) FROM observer_claim('w', 1, '1 hour');",
        )
        .await
        .expect("small");
    let s = observer_status(&client).await;
    assert_eq!(s["completed_estimated"], false, "{s}");
    assert_eq!(s["jobs"]["pending"], 2, "{s}");
    assert_eq!(s["jobs"]["running"], 1, "{s}");
    assert_eq!(s["jobs"]["completed"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_search_answer_as_plain_queries_over_the_history() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    history(&client).await;

    let dead = "SELECT j.id FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
                WHERE j.state = 'dead'";
    let newest = "ORDER BY j.finished_at DESC, j.id DESC LIMIT 100";
    let cases = [
        ("", ""),
        ("observer => 'q2'", "AND o.name = 'q2'"),
        ("error_like => '%timed out%'", "AND j.last_error ILIKE '%timed out%'"),
        (
            "since => now() - interval '3 days', until => now() - interval '2 days'",
            "AND j.finished_at >= now() - interval '3 days' AND j.finished_at < now() - interval '2 days'",
        ),
        (
            "observer => 'q1', error_like => '%HTTP%', until => now() - interval '5 days'",
            "AND o.name = 'q1' AND j.last_error ILIKE '%HTTP%' AND j.finished_at < now() - interval '5 days'",
        ),
    ];
    for (args, filter) in cases {
        let listed = ids(
            &client,
            &format!("SELECT job_id FROM observer_dlq_list({args})"),
        )
        .await;
        let want = ids(&client, &format!("{dead} {filter} {newest}")).await;
        assert!(
            !listed.is_empty(),
            "observer_dlq_list({args}) lists dead jobs"
        );
        assert_eq!(listed, want, "observer_dlq_list({args})");
    }
    assert_eq!(
        sqlstate(
            &client,
            "SELECT * FROM observer_dlq_list(observer => 'nope')"
        )
        .await,
        "42704"
    );

    // Retried, the newest dead job is no longer listed (nor counted).
    let first = ids(
        &client,
        "SELECT job_id FROM observer_dlq_list(max_rows => 2)",
    )
    .await;
    client
        .execute(
            "SELECT observer_dlq_retry(job_ids => ARRAY[$1::bigint])",
            &[&first[0]],
        )
        .await
        .expect("retry");
    let after = ids(
        &client,
        "SELECT job_id FROM observer_dlq_list(max_rows => 1)",
    )
    .await;
    assert_eq!(after, vec![first[1]], "the retried job left the list");
    assert_eq!(observer_status(&client).await["jobs"]["dead"], DEAD - 1);

    let attempts =
        "SELECT a.job_id FROM observer.attempts a JOIN observer.jobs j ON j.id = a.job_id
                    JOIN observer.observers o ON o.id = j.observer_id WHERE true";
    let newest = "ORDER BY a.finished_at DESC, a.job_id DESC, a.attempt DESC LIMIT 100";
    let searches = [
        (
            "'w17'",
            "AND a.search @@ websearch_to_tsquery('simple', 'w17')",
        ),
        (
            "'red', observer => 'q2', since => now() - interval '1 day'",
            "AND a.search @@ websearch_to_tsquery('simple', 'red') AND o.name = 'q2'
             AND a.finished_at >= now() - interval '1 day'",
        ),
        ("NULL, outcome => 'dead'", "AND a.outcome = 'dead'"),
        ("NULL", ""),
    ];
    for (args, filter) in searches {
        let found = ids(
            &client,
            &format!("SELECT job_id FROM observer_search({args})"),
        )
        .await;
        let want = ids(&client, &format!("{attempts} {filter} {newest}")).await;
        assert!(!found.is_empty(), "observer_search({args}) finds attempts");
        assert_eq!(found, want, "observer_search({args})");
        // The page's documents, built at once, are each job's observer.audit_document.
        let same: bool = client
            .query_one(
                &format!(
                    "SELECT bool_and(document IS NOT DISTINCT FROM observer.audit_document(job_id))
                     FROM observer_search({args})"
                ),
                &[],
            )
            .await
            .expect("documents")
            .get(0);
        assert!(same, "observer_search({args}) documents");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_counts_are_the_extensions_own() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             CREATE ROLE app LOGIN; CREATE ROLE worker LOGIN;
             SELECT observer_grant('app', 'app');
             SELECT observer_grant('worker', 'worker');",
        )
        .await
        .expect("roles");
    let app = cluster.connect_as("app").await;
    assert_eq!(
        sqlstate(&app, "SELECT * FROM observer.job_counts()").await,
        "42501"
    );
    assert_eq!(sqlstate(&app, "SELECT observer_status()").await, "42501");
    // The worker reads the counts through observer_status(), which runs as the extension's owner.
    let worker = cluster.connect_as("worker").await;
    assert_eq!(sqlstate(&worker, "SELECT observer_status()").await, "ok");
    assert_eq!(
        sqlstate(&worker, "SELECT * FROM observer.job_counts()").await,
        "42501"
    );
}
