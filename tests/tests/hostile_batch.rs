//! Red team of batch jobs (queue.sql, "Batch jobs"), as the least-privileged roles of DESIGN 3a
//! would attack them, against a real cluster and the queue functions as the worker calls them.
//! The dispatcher writes a batch job's array as JSON text by concatenation from rows a writer
//! controls, and every claim reads it as jsonb: one invalid text would fail every claim of every
//! worker. So a writer (INSERT only) and a table owner (its own enum, domain and column names)
//! write every awkward value their types accept, a thousand rows at a time, and each batch must
//! be claimed and carry exactly what the same event's own job carries. A worker role holding no
//! lease (or a stale one) can split, fail or discard no batch job, and duplicate ids change
//! nothing twice. Changes to the observer between dispatch and claim (paused, dropped, its
//! `columns` narrowed) and replays after a condition change are checked against what per-event
//! jobs do.

use std::time::Duration;

use fraiseql_observers_tests::queue::{count, outcome, wait_job_rows as wait_jobs};
use fraiseql_observers_tests::{sqlstate, wait_until, Cluster};
use serde_json::Value;
use tokio_postgres::Client;

const URL: &str = "https://example.com/hook";

/// A webhook action batching `n` events per request.
fn batched(n: u32) -> String {
    format!(r#"{{"type": "webhook", "url": "{URL}", "batch": {{"max_events": {n}}}}}"#)
}

/// A cluster with the extension, a login role `writer` and a worker role `w`.
async fn setup() -> (Cluster, Client) {
    let cluster = Cluster::start(&[]).expect("cluster");
    let root = cluster.connect("postgres").await.expect("connect");
    root.batch_execute(
        "CREATE EXTENSION fraiseql_observers;
         CREATE ROLE writer LOGIN;
         CREATE ROLE w LOGIN; SELECT observer_grant('w', 'worker');",
    )
    .await
    .expect("setup");
    (cluster, root)
}

/// A claimed job: (job id, token, observer, webhook-id, payload).
type Claimed = (i64, i64, String, String, Value);

/// Claim up to `max` jobs as `worker`; the claim itself must succeed.
async fn claim(c: &Client, worker: &str, max: i32) -> Vec<Claimed> {
    c.query(
        "SELECT job_id, token, observer, idempotency_key, payload::text
         FROM observer_claim($1, $2, '60 seconds')",
        &[&worker, &max],
    )
    .await
    .expect("claim")
    .iter()
    .map(|r| {
        let payload: &str = r.get(4);
        let value = serde_json::from_str(payload).expect("payload is JSON");
        (r.get(0), r.get(1), r.get(2), r.get(3), value)
    })
    .collect()
}

/// The batch jobs among `claimed`: (job id, token, elements).
fn batches(claimed: &[Claimed]) -> Vec<(i64, i64, Vec<Value>)> {
    claimed
        .iter()
        .filter_map(|(id, token, _, _, p)| p.as_array().map(|a| (*id, *token, a.clone())))
        .collect()
}

/// Every awkward value the types accept, three rows in one statement, with column names a table
/// owner may choose and types it owns (an enum, a domain): (DDL as the owner, the INSERT).
const HOSTILE_DDL: &str = r#"
    CREATE TYPE mood AS ENUM ('o''k', 'back\slash', 'quo"te', 'é😀');
    CREATE DOMAIN tiny AS numeric CHECK (VALUE IS NULL OR VALUE <> 42);
    CREATE TABLE public.h (
        id int PRIMARY KEY, "we""ird\col" text, "é ü	tab" text, "[" text, n numeric, f float8,
        r real, ts timestamptz, d date, j json, jb jsonb, fa float8[], iv interval, b bytea,
        m mood, ma mood[], t tiny, big numeric, pt point, rg int4range, bits bit varying, x xml);
    GRANT INSERT ON public.h TO writer;"#;

const HOSTILE_INSERT: &str = r#"
    BEGIN;
    SET LOCAL fraiseql_observers.context = '{"req": "\"}]\\u0000\u2028", "k\"": [null, true, -0, 1e308, {"":{}}]}';
    INSERT INTO public.h VALUES
     (1, E'q"\\\u0001\n\t}]', E'\u2028\u2029\uFEFF', '"]}', 'NaN', 'NaN', 'Infinity', 'infinity',
      '-infinity', '{"a":"\u0001 \ud83d\ude00","n":1e400, "a":2}', '{"k":"\u0001\\", "":""}',
      '{NaN,Infinity,-Infinity}', '-178000000 years', '\x00ff', 'o''k', '{"quo\"te","back\\slash"}',
      1e1000, 1e10000, '(1e308,-1e308)', '[1,2)', B'1011', '<a>&amp;"</a>'),
     (2, repeat('\', 3000), repeat('"', 3000), E'\x01\x02\x1f\x7f', 'Infinity', '-Infinity', 'NaN',
      '-infinity', 'infinity', '"x"', 'null', '{}', '1 day', '\x', 'é😀', '{}', NULL, -1e-1000,
      NULL, 'empty', B'', '<b/>'),
     (3, '', 'NULL', 'null', '-Infinity', 1e308, 1.5e-45, 'epoch', 'epoch',
      '[1e500, -0, 0.000000000001, "\\u0000"]', '1e500', NULL, NULL, NULL, NULL, NULL, 0, 0,
      NULL, NULL, NULL, NULL);
    COMMIT;"#;

/// A writer's and a table owner's every awkward value: the batch is claimed, is valid JSON, and
/// each element carries exactly what the same event's own job (a plain observer's) carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_make_valid_batches_equal_to_the_events_own_jobs() {
    let (cluster, root) = setup().await;
    root.batch_execute("CREATE ROLE owner LOGIN; GRANT CREATE ON SCHEMA public TO owner;")
        .await
        .expect("owner");
    let owner = cluster.connect_as("owner").await;
    owner
        .batch_execute(HOSTILE_DDL)
        .await
        .expect("owner's table");
    root.batch_execute(&format!(
        "SELECT observer_create('b', 'public.h', action => '{}');
         SELECT observer_create('p', 'public.h', action => '{{\"type\": \"webhook\", \"url\": \"{URL}\"}}');",
        batched(3)
    ))
    .await
    .expect("observers");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(HOSTILE_INSERT)
        .await
        .expect("hostile rows");
    wait_jobs(&root, 1 + 3).await;
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.jobs WHERE event_ids IS NOT NULL"
        )
        .await,
        1,
        "the three rows are one batch job"
    );

    // Compared as jsonb (numbers such as 1e10000 are beyond serde_json's f64; the worker keeps
    // payloads as text).
    let worker = cluster.connect_as("w").await;
    worker
        .batch_execute(
            "CREATE TEMP TABLE c AS SELECT * FROM observer_claim('w1', 100, '60 seconds')",
        )
        .await
        .expect("the claim succeeds");
    assert_eq!(count(&worker, "SELECT count(*) FROM c").await, 4);
    let equal = count(
        &worker,
        "SELECT count(*) FROM c b CROSS JOIN LATERAL jsonb_array_elements(b.payload) e
         JOIN c o ON jsonb_typeof(o.payload) = 'object'
                 AND o.payload -> 'data' -> 'event_id' = e -> 'data' -> 'event_id'
         WHERE jsonb_typeof(b.payload) = 'array'
           AND (e -> 'data') - 'observer' = (o.payload -> 'data') - 'observer'
           AND e ->> 'webhook_id' = 'evt_' || (e -> 'data' ->> 'event_id') || '_1'",
    )
    .await;
    assert_eq!(equal, 3, "each element is its event's own document");
    let checks = worker
        .query_one(
            r#"SELECT payload -> 1 -> 'data' -> 'new' ->> 'we"ird\col' = repeat('\', 3000),
                      payload -> 0 -> 'data' -> 'new' ->> 'm' = 'o''k',
                      payload -> 0 -> 'data' -> 'new' -> 'big' = '1e10000'::jsonb,
                      payload -> 0 -> 'data' -> 'context' -> 'k"' -> 4 = '{"": {}}'::jsonb,
                      job_id, token
               FROM c WHERE jsonb_typeof(payload) = 'array'"#,
            &[],
        )
        .await
        .expect("the batch");
    for i in 0..4 {
        assert!(checks.get::<_, bool>(i), "check {i}");
    }
    let (id, token): (i64, i64) = (checks.get(4), checks.get(5));
    assert_eq!(
        outcome(&worker, "observer_complete($1, $2)", &[id], &[token]).await,
        vec![(id, true)]
    );
    // The words of the completed batch find it (they were made from the same rows).
    assert_eq!(
        count(
            &root,
            &format!("SELECT count(*) FROM observer_search('empty') WHERE job_id = {id}")
        )
        .await,
        1
    );
}

/// A writer's 1,024-row statement against `max_events` 1000 (the largest batch): one batch job of
/// a thousand events and 24 of their own; the claim hands the thousand out in order, the words
/// of the last one find the batch's attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_row_statement_is_one_batch_of_a_thousand() {
    let (cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, word text);
         GRANT INSERT ON public.t TO writer;
         SELECT observer_create('b', 'public.t', action => '{}');",
        batched(1000)
    ))
    .await
    .expect("table");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(
            r#"INSERT INTO public.t
               SELECT g, 'w' || g || E' "\\' || repeat(chr(34), g % 7) FROM generate_series(1, 1024) g"#,
        )
        .await
        .expect("rows");
    wait_jobs(&root, 1 + 24).await;
    let worker = cluster.connect_as("w").await;
    let claimed = claim(&worker, "w1", 1000).await;
    assert_eq!(claimed.len(), 25);
    let batch = batches(&claimed);
    assert_eq!(batch.len(), 1);
    let (id, token, elements) = batch[0].clone();
    assert_eq!(elements.len(), 1000);
    for (i, e) in elements.iter().enumerate() {
        assert_eq!(e["data"]["new"]["id"], i as i64 + 1, "in order");
    }
    assert_eq!(
        outcome(&worker, "observer_complete($1, $2)", &[id], &[token]).await,
        vec![(id, true)]
    );
    assert_eq!(
        count(
            &root,
            &format!("SELECT count(*) FROM observer_search('w1000') WHERE job_id = {id}")
        )
        .await,
        1
    );
}

/// A table of three rows' batch (max_events 3) for observer `b`, claimed by worker `w1`:
/// (cluster, root, w1's connection, the batch job's id and token).
async fn claimed_batch() -> (Cluster, Client, Client, i64, i64) {
    let (cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, word text);
         GRANT INSERT ON public.t TO writer;
         SELECT observer_create('b', 'public.t', action => '{}');
         INSERT INTO public.t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'alone');",
        batched(3)
    ))
    .await
    .expect("rows");
    wait_jobs(&root, 2).await;
    let w1 = cluster.connect_as("w").await;
    let claimed = claim(&w1, "w1", 100).await;
    let batch = batches(&claimed);
    assert_eq!(batch.len(), 1);
    (cluster, root, w1, batch[0].0, batch[0].1)
}

/// The jobs of observer `b` as (event_id, is a batch, state, attempt), by event id.
async fn jobs(c: &Client) -> Vec<(i64, bool, String, i32)> {
    c.query(
        "SELECT event_id, event_ids IS NOT NULL, state, attempt FROM observer.jobs ORDER BY event_id",
        &[],
    )
    .await
    .expect("jobs")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// A worker that does not hold the batch's lease (another worker's stale token, a token of a
/// job that is not the batch) can neither split, fail, discard, snooze nor complete it; and a
/// worker cannot give back a job that is not a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_lease_cannot_touch_a_batch() {
    let (cluster, root, w1, batch, token) = claimed_batch().await;
    let before = jobs(&root).await;
    let single = count(
        &root,
        "SELECT id FROM observer.jobs WHERE event_ids IS NULL",
    )
    .await;
    let single_token = count(
        &root,
        &format!("SELECT lease_token FROM observer.jobs WHERE id = {single}"),
    )
    .await;
    let w2 = cluster.connect_as("w").await;
    for wrong in [token + 1, token - 1, 0, -token, single_token + 1] {
        for call in [
            "observer_split($1, $2)",
            "observer_fail($1, $2, ARRAY['x'])",
            "observer_discard($1, $2, ARRAY['x'], ARRAY[true])",
            "observer_snooze($1, $2, ARRAY[now() + interval '1 hour'])",
            "observer_complete($1, $2)",
        ] {
            let answer = outcome(&w2, call, &[batch], &[wrong]).await;
            assert_eq!(answer, vec![(batch, false)], "{call} with token {wrong}");
        }
    }
    assert_eq!(jobs(&root).await, before, "nothing changed");
    // A job that is not a batch, with its right token, is not given back.
    assert_eq!(
        outcome(&w1, "observer_split($1, $2)", &[single], &[single_token]).await,
        vec![(single, false)]
    );
    // The holder, mixing its batch with another's ids: only its own batch is split.
    let answer = outcome(
        &w1,
        "observer_fail($1, $2, ARRAY['x', 'y'])",
        &[single, batch],
        &[single_token + 1, token],
    )
    .await;
    assert_eq!(answer, vec![(single, false), (batch, true)]);
    let after = jobs(&root).await;
    assert_eq!(after.len(), 4);
    assert!(after.iter().all(|j| !j.1), "{after:?}");
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'retry'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &root,
            &format!(
                "SELECT count(*) FROM observer.jobs WHERE id = {single} AND state = 'running'"
            )
        )
        .await,
        1,
        "the other job is untouched"
    );
    // No role without the worker grant can call any of it.
    let writer = cluster.connect_as("writer").await;
    for sql in [
        "SELECT * FROM observer_split(ARRAY[1::bigint], ARRAY[1::bigint])",
        "SELECT * FROM observer_fail(ARRAY[1::bigint], ARRAY[1::bigint], ARRAY['x'])",
        "SELECT * FROM observer_discard(ARRAY[1::bigint], ARRAY[1::bigint], ARRAY['x'])",
    ] {
        assert_eq!(sqlstate(&writer, sql).await, "42501", "{sql}");
    }
}

/// A batch job's id given twice (fail, discard, split): each of its events gets one outcome,
/// both answers say so, and no event is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_split_a_batch_once() {
    for call in [
        "observer_fail($1, $2, ARRAY['x', 'y'])",
        "observer_discard($1, $2, ARRAY['x', 'y'])",
        "observer_split($1, $2)",
    ] {
        let (_cluster, root, w1, batch, token) = claimed_batch().await;
        let answer = outcome(&w1, call, &[batch, batch], &[token, token]).await;
        assert_eq!(answer, vec![(batch, true), (batch, true)], "{call}");
        let after = jobs(&root).await;
        let events: Vec<i64> = after.iter().map(|j| j.0).collect();
        assert_eq!(events, vec![1024, 1025, 1026, 1027], "{call}: {after:?}");
        assert!(after.iter().all(|j| !j.1));
        let attempts = count(&root, "SELECT count(*) FROM observer.attempts").await;
        let expected = if call.starts_with("observer_split") {
            0
        } else {
            3
        };
        assert_eq!(attempts, expected, "{call}: one attempt per event");
    }
}

/// Between dispatch and claim the observer is paused (its batch is not handed out, then is once
/// resumed) or dropped (the claim goes on without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_paused_or_dropped_before_the_claim() {
    let (cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, word text);
         CREATE TABLE public.u (id int PRIMARY KEY, word text);
         SELECT observer_create('b', 'public.t', action => '{0}');
         SELECT observer_create('gone', 'public.u', action => '{0}');
         INSERT INTO public.t VALUES (1, 'a'), (2, 'b');
         INSERT INTO public.u VALUES (1, 'a'), (2, 'b');",
        batched(2)
    ))
    .await
    .expect("rows");
    wait_jobs(&root, 2).await;
    root.batch_execute("SELECT observer_pause('b', 'held'); SELECT observer_drop('gone', true);")
        .await
        .expect("pause and drop");
    let worker = cluster.connect_as("w").await;
    assert!(claim(&worker, "w1", 100).await.is_empty());
    root.batch_execute("SELECT observer_resume('b')")
        .await
        .expect("resume");
    let claimed = claim(&worker, "w1", 100).await;
    assert_eq!(batches(&claimed).len(), 1);
    assert_eq!(claimed[0].2, "b");
}

/// An admin narrows an observer's `columns` (to stop sending a column) after its batch job was
/// made and before it is claimed. A job of the event's own leaves the column out from then on
/// (the claim projects the rows); so must the batch, and the words of its attempt, which the
/// audit trail keeps (docs/security.md: "a column an observer leaves out is in neither the search
/// words nor the documents of its attempts").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_narrowed_before_the_claim_leave_the_column_out_of_a_batch() {
    let (cluster, root) = setup().await;
    let action = batched(3);
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, secret text, pub text);
         GRANT INSERT ON public.t TO writer;
         SELECT observer_create('b', 'public.t', action => '{action}');",
    ))
    .await
    .expect("table");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(
            "INSERT INTO public.t VALUES (1, 'hunter2', 'p'), (2, 'hunter3', 'p'), (3, 'hunter4', 'p');
             INSERT INTO public.t VALUES (4, 'hunter5', 'p');",
        )
        .await
        .expect("rows");
    wait_jobs(&root, 2).await;
    root.batch_execute(&format!(
        "SELECT observer_replace('b', 'public.t', action => '{action}', options => '{{\"columns\": [\"id\", \"pub\"]}}')"
    ))
    .await
    .expect("narrow the columns");
    // observer_replace made the pending batch its events' own jobs, which the claim projects.
    let worker = cluster.connect_as("w").await;
    let claimed = claim(&worker, "w1", 100).await;
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    assert!(batches(&claimed).is_empty(), "{claimed:?}");
    let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
    let tokens: Vec<i64> = claimed.iter().map(|c| c.1).collect();
    outcome(&worker, "observer_complete($1, $2)", &ids, &tokens).await;
    let leaked_words = count(&root, "SELECT count(*) FROM observer_search('hunter2')").await;
    let doc = Value::Array(claimed.iter().map(|c| c.4.clone()).collect()).to_string();
    assert!(
        !doc.contains("hunter") && leaked_words == 0,
        "the batch delivered {doc}; its attempt found by the left-out column's value: {leaked_words}"
    );
}

/// Replays after a condition change: the first replay (event 1 no longer matches) gives events 2
/// and 3 jobs of their own; the second (the condition back) puts the batch back whole. Each
/// event must then be delivered once, not once in the batch and once more on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_condition_change_sends_each_event_once() {
    let (cluster, root) = setup().await;
    let action = batched(3);
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, word text);
         SELECT observer_create('b', 'public.t', action => '{action}');
         INSERT INTO public.t VALUES (1, 'a'), (2, 'b'), (3, 'c');"
    ))
    .await
    .expect("rows");
    wait_jobs(&root, 1).await;
    let worker = cluster.connect_as("w").await;
    // Replay counts jobs: two of their own, then the batch back whole (one job, three events).
    for (condition, replayed) in [("'$.new.id > 1'", 2), ("NULL", 1)] {
        let claimed = claim(&worker, "w1", 100).await;
        let ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
        let tokens: Vec<i64> = claimed.iter().map(|c| c.1).collect();
        outcome(&worker, "observer_complete($1, $2)", &ids, &tokens).await;
        root.batch_execute(&format!(
            "SELECT observer_replace('b', 'public.t', condition => {condition}, action => '{action}')"
        ))
        .await
        .expect("condition");
        let n = count(
            &root,
            "SELECT observer_replay('b', now() - interval '1 hour')",
        )
        .await;
        assert_eq!(n, replayed);
    }
    let claimed = claim(&worker, "w1", 100).await;
    let mut sent: Vec<i64> = Vec::new();
    for c in &claimed {
        match c.4.as_array() {
            Some(a) => sent.extend(
                a.iter()
                    .map(|e| e["data"]["event_id"].as_i64().unwrap_or(0)),
            ),
            None => sent.push(c.4["data"]["event_id"].as_i64().unwrap_or(0)),
        }
    }
    sent.sort_unstable();
    assert_eq!(
        sent,
        vec![1024, 1025, 1026],
        "each event sent once: {claimed:?}"
    );
}

/// A writer's rows can print far longer than they are stored (a numeric of 60,000 digits is a
/// few bytes; `pg::rows` allows 8 times the stored size plus 64 KiB per row): one INSERT of a
/// thousand such rows made one batch job of 60 MB, a hundred times its action's `max_bytes`
/// (1 MiB), which every worker must receive whole before giving it back (observer_split, "over
/// max_bytes"). A claim of `batch_size` such jobs is that times 100 (6 GB; 12 GB for UPDATEs),
/// where the same events as jobs of their own are 60 KB each. The array a batch job hands out
/// must stay within its action's `max_bytes` (what one request may carry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stays_within_its_actions_max_bytes() {
    let (cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, n numeric);
         GRANT INSERT ON public.t TO writer;
         SELECT observer_create('b', 'public.t', action => '{}');",
        batched(1000)
    ))
    .await
    .expect("table");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute("INSERT INTO public.t SELECT g, 1e60000 FROM generate_series(1, 1000) g")
        .await
        .expect("rows");
    // Over max_bytes as a batch: the dispatcher makes jobs of their own instead.
    wait_jobs(&root, 1000).await;
    let worker = cluster.connect_as("w").await;
    let sizes: Vec<(i64, bool)> = worker
        .query(
            "SELECT octet_length(payload::text)::bigint, jsonb_typeof(payload) = 'array'
             FROM observer_claim('w1', 100, '60 seconds')",
            &[],
        )
        .await
        .expect("claim")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let max_bytes = 1_048_576;
    let (largest, is_batch) = sizes.iter().copied().max().expect("a job");
    assert!(
        !is_batch || largest <= 2 * max_bytes,
        "a batch job of {largest} bytes for an action whose max_bytes is {max_bytes}"
    );
}

/// A batch whose lease expired is split by the next claim, which hands its events to another
/// worker: the first holder's late outcome for the batch is refused, whatever it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_holder_cannot_report_a_batch_split_after_its_lease_expired() {
    let (cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, word text);
         SELECT observer_create('b', 'public.t', action => '{}');
         INSERT INTO public.t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
        batched(3)
    ))
    .await
    .expect("rows");
    wait_jobs(&root, 1).await;
    let w1 = cluster.connect_as("w").await;
    let (batch, token) = w1
        .query_one(
            "SELECT job_id, token FROM observer_claim('w1', 10, '1 second')",
            &[],
        )
        .await
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .expect("claim");
    let expired = wait_until(Duration::from_secs(10), || async {
        count(
            &root,
            &format!("SELECT count(*) FROM observer.jobs WHERE id = {batch} AND lease_until < clock_timestamp()"),
        )
        .await
            == 1
    })
    .await;
    assert!(expired);
    let w2 = cluster.connect_as("w").await;
    let taken = claim(&w2, "w2", 10).await;
    assert_eq!(taken.len(), 3, "its three events, each a job of its own");
    assert!(taken.iter().all(|c| c.4.is_object()));
    for call in [
        "observer_complete($1, $2)",
        "observer_fail($1, $2, ARRAY['late'])",
        "observer_discard($1, $2, ARRAY['late'])",
        "observer_split($1, $2)",
        "observer_snooze($1, $2, ARRAY[now()])",
    ] {
        assert_eq!(
            outcome(&w1, call, &[batch], &[token]).await,
            vec![(batch, false)],
            "{call}"
        );
    }
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.jobs WHERE state = 'running' AND worker = 'w2'"
        )
        .await,
        3
    );
}

/// An `app` enqueues into a batching queue what looks like a batch (an array payload) under the
/// webhook-id of a real batch of table events: its job is handed out as a document of its own
/// (an object, so no worker takes it for a batch), under its own `key_` webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_forge_a_batch_or_its_webhook_id() {
    let (cluster, root) = setup().await;
    root.batch_execute(&format!(
        "CREATE TABLE public.t (id int PRIMARY KEY, word text);
         SELECT observer_create('b', 'public.t', action => '{0}');
         SELECT observer_create('q', NULL, action => '{0}');
         CREATE ROLE app1 LOGIN; SELECT observer_grant('app1', 'app');
         INSERT INTO public.t VALUES (1, 'a'), (2, 'b');",
        batched(2)
    ))
    .await
    .expect("rows");
    wait_jobs(&root, 1).await;
    let key: String = root
        .query_one("SELECT idempotency_key FROM observer.jobs", &[])
        .await
        .expect("batch key")
        .get(0);
    let app = cluster.connect_as("app1").await;
    let forged = r#"[{"type": "b", "webhook_id": "evt_1024_1", "data": {"event_id": 1024}}]"#;
    app.execute(
        "SELECT observer_enqueue('q', $1::text::jsonb, $2)",
        &[&forged, &key],
    )
    .await
    .expect("enqueue");
    let worker = cluster.connect_as("w").await;
    let claimed = claim(&worker, "w1", 10).await;
    assert_eq!(claimed.len(), 2);
    let queued = claimed.iter().find(|c| c.2 == "q").expect("the queued job");
    assert!(queued.4.is_object(), "{:?}", queued.4);
    assert_ne!(queued.3, key);
    assert!(queued.3.starts_with("key_"), "{}", queued.3);
    assert_eq!(
        batches(&claimed).len(),
        1,
        "only the table's batch is a batch"
    );
}
