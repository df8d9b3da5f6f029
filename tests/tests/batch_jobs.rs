//! Batch jobs in the queue, against a real cluster and without a worker: the queue functions as
//! the worker calls them. One statement's matched rows make one job per full batch of the
//! observer's `max_events` (the rest one job each); the claim hands a batch job out as one job
//! whose payload is the array of its events' documents, each with its own webhook-id; its
//! completion is one attempt whose words cover every event. Whatever else happens to a batch job
//! (a failure, a discard, an expired lease, the worker giving it back) turns it into its events'
//! own jobs first, so the dead-letter queue only ever holds events, and a worker role can do no
//! more with batch jobs than with any job. The documents are made when the job is: rows that
//! cannot be read any more by the time it is claimed are still delivered.

use std::time::Duration;

use fraiseql_observers_tests::queue::{count, outcome, wait_job_rows as wait_jobs};
use fraiseql_observers_tests::{sqlstate, Cluster};
use serde_json::Value;
use tokio_postgres::Client;

const BATCHED: &str =
    r#"{"type": "webhook", "url": "https://example.com/hook", "batch": {"max_events": 10}}"#;
const PLAIN: &str = r#"{"type": "webhook", "url": "https://example.com/plain"}"#;

/// A cluster with table `t` and the batched observer `b` (observer id 1, so its event ids and
/// keys are known: the first statement's events are 1024, 1025, ...).
async fn setup() -> (Cluster, Client) {
    let cluster = Cluster::start(&[]).expect("cluster");
    let root = cluster.connect("postgres").await.expect("connect");
    root.batch_execute(&format!(
        "CREATE EXTENSION fraiseql_observers;
         CREATE TABLE public.t (id int PRIMARY KEY, word text, tier text);
         SELECT observer_create('b', 'public.t', action => '{BATCHED}');"
    ))
    .await
    .expect("setup");
    (cluster, root)
}

/// The claimed jobs: (job id, token, attempt, webhook-id, payload).
async fn claim(c: &Client, worker: &str, lease: &str) -> Vec<(i64, i64, i32, String, Value)> {
    c.query(
        "SELECT job_id, token, attempt, idempotency_key, payload::text FROM observer_claim($1, 100, $2::text::interval)",
        &[&worker, &lease],
    )
    .await
    .expect("claim")
    .iter()
    .map(|r| {
        let payload: &str = r.get(4);
        (r.get(0), r.get(1), r.get(2), r.get(3), serde_json::from_str(payload).expect("json"))
    })
    .collect()
}

/// The batch jobs among `claimed`: (job id, token, webhook-id, elements).
fn batches(claimed: &[(i64, i64, i32, String, Value)]) -> Vec<(i64, i64, String, Vec<Value>)> {
    claimed
        .iter()
        .filter_map(|(id, token, _, key, payload)| {
            payload
                .as_array()
                .map(|a| (*id, *token, key.clone(), a.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_makes_one_job_per_full_batch_delivered_as_one_array() {
    let (_cluster, root) = setup().await;
    root.batch_execute(&format!(
        "SELECT observer_create('p', 'public.t', action => '{PLAIN}');
         INSERT INTO public.t SELECT g, 'needle' || g FROM generate_series(1, 25) g;
         INSERT INTO public.t VALUES (26, 'alone');"
    ))
    .await
    .expect("rows");
    // b: two full batches of 10, five and one jobs of their own; p: 26 jobs of their own.
    wait_jobs(&root, 2 + 5 + 1 + 26).await;
    let rows = root
        .query(
            "SELECT event_id, event_ids, idempotency_key FROM observer.jobs
             WHERE event_ids IS NOT NULL ORDER BY event_id",
            &[],
        )
        .await
        .expect("batch jobs");
    let firsts: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        firsts,
        vec![1024, 1034],
        "one job per full batch, in commit order"
    );
    let ids: Vec<i64> = rows[0].get(1);
    assert_eq!(ids, (1024..1034).collect::<Vec<i64>>());
    // The webhook-id a worker gives a request of the same ten events as jobs of their own
    // (worker/src/actions/batch.rs, batch_id; computed independently for these keys).
    assert_eq!(
        rows[0].get::<_, String>(2),
        "batch_332cf4c98a0b3b9983859ef85c617123"
    );

    let claimed = claim(&root, "w", "30 seconds").await;
    assert_eq!(claimed.len(), 2 + 5 + 1 + 26, "one row per job");
    let batch = batches(&claimed);
    assert_eq!(batch.len(), 2);
    for (_, _, _, elements) in &batch {
        assert_eq!(elements.len(), 10);
        let first = elements[0]["data"]["event_id"].as_i64().expect("event id");
        for (i, e) in elements.iter().enumerate() {
            let id = first + i as i64;
            assert_eq!(e["data"]["event_id"], id, "commit order: {e}");
            assert_eq!(e["webhook_id"], format!("evt_{id}_1"), "{e}");
            assert_eq!(e["attempt"], 1, "{e}");
            assert_eq!(e["type"], "b", "{e}");
        }
    }
    let single = claimed
        .iter()
        .find(|c| c.4["data"]["new"]["word"] == "alone")
        .expect("the single-row change");
    assert!(
        single.4.is_object() && single.3.starts_with("evt_"),
        "{single:?}"
    );

    // Completed: one attempt for the batch, with the words of every event in it.
    let (done, done_token, _, _) = batch[0].clone();
    assert_eq!(
        outcome(&root, "observer_complete($1, $2)", &[done], &[done_token]).await,
        vec![(done, true)]
    );
    assert_eq!(
        count(
            &root,
            &format!("SELECT count(*) FROM observer.attempts WHERE job_id = {done}")
        )
        .await,
        1
    );
    let middle = batch[0].3[6]["data"]["new"]["word"]
        .as_str()
        .expect("word")
        .to_string();
    assert_eq!(
        count(
            &root,
            &format!(
                "SELECT count(*) FROM observer.attempts WHERE job_id = {done} AND search @@ to_tsquery('simple', '{middle}')"
            )
        )
        .await,
        1,
        "the words of the batch's seventh event find its attempt"
    );

    // Failed: the failure is each event's, answered for the job the worker gave.
    let (failed, failed_token, _, elements) = batch[1].clone();
    let answer = root
        .query(
            "SELECT job_id, accepted, state FROM observer_fail($1, $2, ARRAY['503 from the receiver'])",
            &[&vec![failed], &vec![failed_token]],
        )
        .await
        .expect("fail");
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].get::<_, i64>(0), failed);
    assert!(answer[0].get::<_, bool>(1));
    assert_eq!(answer[0].get::<_, &str>(2), "pending");
    let first = elements[0]["data"]["event_id"].as_i64().expect("id");
    let per_event = root
        .query(
            "SELECT j.event_id, j.idempotency_key, j.attempt, j.state, a.outcome
             FROM observer.jobs j JOIN observer.attempts a ON a.job_id = j.id
             WHERE j.observer_id = 1 AND j.event_id BETWEEN $1 AND $1 + 9 ORDER BY j.event_id",
            &[&first],
        )
        .await
        .expect("per-event jobs");
    assert_eq!(
        per_event.len(),
        10,
        "each event has its job and its attempt"
    );
    for (i, r) in per_event.iter().enumerate() {
        let id = first + i as i64;
        assert_eq!(r.get::<_, i64>(0), id);
        assert_eq!(r.get::<_, String>(1), format!("evt_{id}_1"));
        assert_eq!(r.get::<_, i32>(2), 1);
        assert_eq!(r.get::<_, &str>(3), "pending");
        assert_eq!(r.get::<_, &str>(4), "retry");
    }
    assert_eq!(
        count(&root, "SELECT count(*) FROM observer.jobs WHERE event_ids IS NOT NULL AND state <> 'completed'").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_back_discarded_or_expired_a_batch_becomes_its_events_jobs() {
    let (cluster, root) = setup().await;
    root.batch_execute(
        "CREATE ROLE w LOGIN; SELECT observer_grant('w', 'worker');
         CREATE ROLE writer LOGIN; GRANT INSERT ON public.t TO writer;
         INSERT INTO public.t SELECT g, 'x' || g FROM generate_series(1, 30) g;",
    )
    .await
    .expect("rows");
    wait_jobs(&root, 3).await;
    let worker = cluster.connect_as("w").await;
    let claimed = claim(&worker, "w1", "1 second").await;
    let batch = batches(&claimed);
    assert_eq!(batch.len(), 3);
    let (given, given_token, _, _) = batch[0].clone();
    let (discarded, discarded_token, _, _) = batch[1].clone();

    // Given back with a stale token: refused, nothing changes. With its token: its events' jobs,
    // pending and due now, the attempt given back.
    assert_eq!(
        outcome(
            &worker,
            "observer_split($1, $2)",
            &[given],
            &[given_token + 1000]
        )
        .await,
        vec![(given, false)]
    );
    assert_eq!(
        outcome(&worker, "observer_split($1, $2)", &[given], &[given_token]).await,
        vec![(given, true)]
    );
    let back = root
        .query(
            "SELECT count(*), min(attempt), max(attempt), bool_and(state = 'pending' AND run_at <= now()),
                    bool_and(event_ids IS NULL)
             FROM observer.jobs WHERE event_id BETWEEN 1024 AND 1033",
            &[],
        )
        .await
        .expect("given back");
    assert_eq!(back[0].get::<_, i64>(0), 10);
    assert_eq!((back[0].get::<_, i32>(1), back[0].get::<_, i32>(2)), (0, 0));
    assert!(back[0].get::<_, bool>(3) && back[0].get::<_, bool>(4));
    // Giving back a job that is not a batch is refused.
    assert_eq!(
        outcome(&worker, "observer_split($1, $2)", &[given], &[given_token]).await,
        vec![(given, false)]
    );

    // Discarded: every event in the dead-letter queue on its own, with the reason.
    assert_eq!(
        outcome(
            &worker,
            "observer_discard($1, $2, ARRAY['refused for good'])",
            &[discarded],
            &[discarded_token]
        )
        .await,
        vec![(discarded, true)]
    );
    let dlq = root
        .query(
            "SELECT event_id, last_error FROM observer_dlq_list() ORDER BY event_id",
            &[],
        )
        .await
        .expect("dlq");
    assert_eq!(dlq.len(), 10);
    assert_eq!(dlq[0].get::<_, i64>(0), 1034);
    assert!(dlq[9].get::<_, String>(1).contains("refused for good"));

    // Expired: the third batch's lease runs out; the next claim hands out its events' jobs, each
    // with the expired attempt recorded.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = claim(&worker, "w2", "30 seconds").await;
    let expired: Vec<_> = again
        .iter()
        .filter(|c| (1044..1054).contains(&c.4["data"]["event_id"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(expired.len(), 10, "{again:?}");
    assert!(expired.iter().all(|c| c.2 == 2 && c.4.is_object()));
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'expired'"
        )
        .await,
        10
    );

    // A writer can neither give jobs back nor see them.
    let writer = cluster.connect_as("writer").await;
    assert_eq!(
        sqlstate(
            &writer,
            "SELECT * FROM observer_split(ARRAY[1::bigint], ARRAY[1::bigint])"
        )
        .await,
        "42501"
    );
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.jobs WHERE event_ids IS NOT NULL"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_delivered_as_made_even_once_its_rows_cannot_be_read() {
    // The dispatcher makes a batch job's documents from the events it decoded: a type dropped
    // afterwards (every row of the statement unreadable from then on) loses nothing.
    let (_cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TYPE public.tier AS ENUM ('gold', 'silver');
         CREATE TABLE public.typed (id int PRIMARY KEY, t public.tier);
         SELECT observer_create('typed_hook', 'public.typed', action => '{BATCHED}');
         SELECT observer_pause('typed_hook', 'test');
         INSERT INTO public.typed SELECT g, 'gold' FROM generate_series(1, 10) g;"
    ))
    .await
    .expect("typed rows");
    wait_jobs(&root, 1).await;
    root.batch_execute(
        "ALTER TABLE public.typed DROP COLUMN t; DROP TYPE public.tier;
         SELECT observer_resume('typed_hook');",
    )
    .await
    .expect("drop the type");
    let claimed = claim(&root, "w", "30 seconds").await;
    let batch = batches(&claimed);
    assert_eq!(batch.len(), 1, "{claimed:?}");
    let elements = &batch[0].3;
    assert_eq!(elements.len(), 10);
    for (i, e) in elements.iter().enumerate() {
        assert_eq!(e["data"]["new"]["id"], i as i64 + 1, "{e}");
        assert_eq!(e["data"]["new"]["t"], "gold", "{e}");
    }
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.jobs WHERE state = 'dead'"
        )
        .await,
        0
    );
    let (id, token, _, _) = batch[0].clone();
    assert_eq!(
        outcome(&root, "observer_complete($1, $2)", &[id], &[token]).await,
        vec![(id, true)]
    );
    assert_eq!(
        count(
            &root,
            &format!("SELECT count(*) FROM observer.jobs WHERE id = {id} AND documents IS NULL AND state = 'completed'")
        )
        .await,
        1,
        "the delivered array is not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_json_whatever_the_values_and_a_missing_event_stops_no_claim() {
    let (_cluster, root) = setup().await;
    // The document written as text (observer.event_document) is the jsonb one, field for field,
    // for values that need escaping, a context, an oversize mark, a column list, and no event.
    let same: bool = root
        .query_one(
            r#"SELECT observer.event_document('o"b', ARRAY['a'], ARRAY['id'], 7, now(), 'public."t\x"', 'UPDATE',
                   '{"id": 1, "a": "q\"uote\\ \n", "b": 2}', '{"id": 1, "a": "\u00e9", "b": null}', 9000,
                   '42'::xid8, 'r"ole', '{"request_id": "r-\"42"}', 3, 'evt_7_1')::jsonb
               = jsonb_build_object('type', 'o"b', 'timestamp', now(), 'attempt', 3, 'webhook_id', 'evt_7_1',
                   'data', jsonb_build_object('event_id', 7, 'observer', 'o"b', 'table', 'public."t\x"',
                       'op', 'UPDATE', 'old', '{"id": 1, "a": "q\"uote\\ \n"}'::jsonb,
                       'new', '{"id": 1, "a": "\u00e9"}'::jsonb, 'oversize', jsonb_build_object('bytes', 9000),
                       'txid', 42, 'role', 'r"ole', 'context', '{"request_id": "r-\"42"}'::jsonb))"#,
            &[],
        )
        .await
        .expect("document")
        .get(0);
    assert!(same, "the text document is the jsonb document");
    let gone: String = root
        .query_one(
            "SELECT observer.job_payload('b', NULL, NULL, 5, NULL, now(), NULL, NULL, NULL, NULL, NULL, NULL,
                                         NULL, NULL, NULL, NULL, 1)::text",
            &[],
        )
        .await
        .expect("an event that is gone")
        .get(0);
    let gone: Value = serde_json::from_str(&gone).expect("json");
    assert_eq!(gone["data"]["event_id"], Value::Null, "{gone}");
    assert_eq!(gone["data"]["new"], Value::Null, "{gone}");

    // An event row deleted by hand under its pending job: every claim still works.
    root.batch_execute(&format!(
        "SELECT observer_create('p', 'public.t', action => '{PLAIN}');
         INSERT INTO public.t VALUES (1, 'gone');"
    ))
    .await
    .expect("row");
    wait_jobs(&root, 2).await;
    root.batch_execute("DELETE FROM observer.event_log; INSERT INTO public.t VALUES (2, 'kept');")
        .await
        .expect("delete the event");
    wait_jobs(&root, 4).await;
    let claimed = claim(&root, "w", "30 seconds").await;
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    assert_eq!(
        claimed
            .iter()
            .filter(|c| c.4["data"]["new"]["word"] == "kept")
            .count(),
        2
    );
}
