//! The trust boundary (issue 14, docs/security.md): what the least-privileged roles can do to a
//! real cluster running the background dispatcher and the real worker binary (as the `worker`
//! role), and what they must never achieve.
//!
//! 1. A table owner's cast to `json` never runs as the dispatcher or the queue (superuser, or the
//!    extension's owner): the column is delivered as its text.
//! 2. A row that cannot be read (a `json` value `\u0000`, a type dropped after dispatch) is
//!    quarantined with its reason; every other change, on the same table and others, flows.
//! 3. A row too big for the audit words (over 1 MiB of tsvector) is delivered, and no claim or
//!    outcome report fails on it, also after its lease expired; likewise an enqueued payload.
//! 4. No SQL call crashes a backend: the row decoders are granted to nobody and take bytea,
//!    admins cannot write the event log, crafted bytes are refused with an error, and a composite
//!    type altered after capture is never misread.
//! 5. An outsider's advisory locks on the former dispatch and export keys change nothing; a
//!    session holding the dispatch round is named in `observer_status()`.
//!
//! And the queue and condition weaknesses of the same review: per-queue enqueue grants, keys in
//! their own webhook-id namespace and refused when they cannot be a header, past `run_at`
//! clamped, payloads bounded, costly conditions refused. (The worker's side is
//! tests/tests/worker_hardening.rs.)

use std::time::Duration;

use fraiseql_observers_tests::{observer_status, sqlstate, wait_until, Cluster, Sink, Worker};

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// A cluster with the extension and the roles of docs/security.md: `app` (owns the application
/// tables, enqueues), `writer` (INSERT/UPDATE/DELETE on them only), `worker`, `ops` (admin, not
/// a superuser) and `outsider` (no grant at all).
async fn setup() -> (Cluster, tokio_postgres::Client) {
    let cluster = Cluster::start(&[]).expect("cluster");
    let root = cluster.connect("postgres").await.expect("connect");
    root.batch_execute(
        "CREATE EXTENSION fraiseql_observers;
         CREATE ROLE app LOGIN; SELECT observer_grant('app', 'app');
         CREATE ROLE writer LOGIN;
         CREATE ROLE worker LOGIN; SELECT observer_grant('worker', 'worker');
         CREATE ROLE ops LOGIN; SELECT observer_grant('ops', 'admin');
         CREATE ROLE outsider LOGIN;
         GRANT CREATE ON SCHEMA public TO app;",
    )
    .await
    .expect("roles");
    (cluster, root)
}

/// As `app`, run `ddl` (it owns the tables it creates); as the superuser, observe `table` with
/// an observer named `observer` that delivers to `sink`.
async fn observe(
    cluster: &Cluster,
    root: &tokio_postgres::Client,
    sink: &Sink,
    ddl: &str,
    observer: &str,
    table: &str,
) {
    let app = cluster.connect_as("app").await;
    app.batch_execute(ddl).await.expect("app tables");
    root.batch_execute(&format!(
        r#"SELECT observer_create('{observer}', '{table}', action => '{{"type": "webhook", "url": "{}"}}');"#,
        sink.url("/hook")
    ))
    .await
    .expect("observer");
}

fn worker(cluster: &Cluster) -> Worker {
    Worker::start(&cluster.url_as("worker"), &[]).expect("worker")
}

async fn completed(client: &tokio_postgres::Client, observer: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
             WHERE o.name = $1 AND j.state = 'completed'",
            &[&observer],
        )
        .await
        .expect("count")
        .get(0)
}

async fn wait_completed(client: &tokio_postgres::Client, observer: &str, n: i64) -> bool {
    wait_until(Duration::from_secs(20), || async move {
        completed(client, observer).await >= n
    })
    .await
}

/// Case 1: the owner of an observed table adds a column of its own type with a cast to json that
/// records who runs it. The dispatcher (bootstrap superuser) and the queue functions (extension
/// owner) read those rows; the cast never runs as either of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_owners_cast_never_runs_with_the_dispatchers_privileges() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    let app = cluster.connect_as("app").await;
    app.batch_execute(
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text);
         CREATE TABLE public.pwned (who name, su boolean);
         GRANT INSERT ON public.pwned TO PUBLIC;",
    )
    .await
    .expect("app tables");
    root.batch_execute(&format!(
        r#"SELECT observer_create('orders_hook', 'public.orders',
                   action => '{{"type": "webhook", "url": "{}"}}');"#,
        sink.url("/orders")
    ))
    .await
    .expect("observer");
    // The attack, as the table owner: a cast function that writes who runs it.
    app.batch_execute(
        "CREATE TYPE public.mood AS ENUM ('calm');
         CREATE FUNCTION public.mood_json(m public.mood) RETURNS json LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.pwned (who, su)
             SELECT current_user, r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user;
             RETURN pg_catalog.to_json('cast ran'::text);
         END $$;
         CREATE CAST (public.mood AS json) WITH FUNCTION public.mood_json(public.mood);
         ALTER TABLE public.orders ADD COLUMN m public.mood DEFAULT 'calm';
         INSERT INTO public.orders (id, status) VALUES (1, 'new');
         INSERT INTO public.orders (id, status) SELECT g, 'bulk' FROM generate_series(2, 5) g;",
    )
    .await
    .expect("attack");
    let _worker = worker(&cluster);
    assert!(
        wait_completed(&root, "orders_hook", 5).await,
        "{}",
        observer_status(&root).await
    );
    // Every place that turns those rows into JSON for an admin, too.
    let ops = cluster.connect_as("ops").await;
    root.batch_execute("GRANT SELECT ON public.orders TO ops")
        .await
        .expect("ops may read the table it backfills");
    ops.batch_execute(
        "SELECT observer_debug_event((SELECT min(id) FROM observer.events));
         SELECT count(*) FROM observer.events;
         SELECT count(*) FROM observer_search('calm');
         SELECT observer_replay('orders_hook', now() - interval '1 hour');",
    )
    .await
    .expect("admin reads");
    // A backfill converts the live rows, as the admin or superuser who calls it.
    ops.batch_execute("SELECT * FROM observer_backfill('orders_hook')")
        .await
        .expect("backfill as admin");
    root.batch_execute("SELECT * FROM observer_backfill('orders_hook', restart => true)")
        .await
        .expect("backfill as superuser");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            sink.received()
                .iter()
                .filter(|r| r.body["data"]["op"] == "BACKFILL")
                .count()
                >= 10
        })
        .await,
        "both backfills delivered"
    );
    let privileged = count(
        &root,
        "SELECT count(*) FROM public.pwned WHERE su OR who IN ('postgres', 'worker', 'ops')",
    )
    .await;
    assert_eq!(privileged, 0, "the cast ran with someone else's privileges");
    // The column is delivered as its text (the type's output function), not through the cast.
    let bodies = sink.received();
    assert!(bodies.len() >= 5);
    for r in &bodies {
        assert_eq!(r.body["data"]["new"]["m"], "calm", "{}", r.body);
    }
}

/// Case 2: a row that cannot be read, by a writer with INSERT only, and a type dropped by the
/// table owner after dispatch. Each is set aside with its reason; everything else flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_quarantined_and_every_other_change_flows() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    let app = cluster.connect_as("app").await;
    app.batch_execute(
        "CREATE TABLE public.orders (id int PRIMARY KEY, doc json);
         CREATE TABLE public.other (id int PRIMARY KEY);
         CREATE TYPE public.tier AS ENUM ('gold');
         CREATE TABLE public.typed (id int PRIMARY KEY, t public.tier DEFAULT 'gold');
         GRANT INSERT ON public.orders, public.other TO writer;",
    )
    .await
    .expect("app tables");
    root.batch_execute(&format!(
        r#"SELECT observer_create('orders_hook', 'public.orders', action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('other_hook', 'public.other', action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('typed_hook', 'public.typed', action => '{{"type": "webhook", "url": "{0}"}}');"#,
        sink.url("/hook")
    ))
    .await
    .expect("observers");
    let _worker = worker(&cluster);

    // The poison: `json` accepts \u0000, jsonb (which every delivery is made of) does not.
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(r#"INSERT INTO public.orders (id, doc) VALUES (1, '{"a": "\u0000"}')"#)
        .await
        .expect("the write itself succeeds");
    writer
        .batch_execute(
            r#"INSERT INTO public.orders (id, doc) VALUES (2, '{"a": "fine"}');
               INSERT INTO public.other (id) VALUES (1);"#,
        )
        .await
        .expect("later writes");
    assert!(
        wait_completed(&root, "orders_hook", 1).await
            && wait_completed(&root, "other_hook", 1).await,
        "changes after the poison were not delivered: {}",
        observer_status(&root).await
    );
    let status = observer_status(&root).await;
    assert_eq!(status["dispatch"]["quarantined_events"], 1, "{status}");
    assert_eq!(status["dispatch"]["healthy"], true, "{status}");
    let orders = status["observers"]
        .as_array()
        .expect("observers")
        .iter()
        .find(|o| o["name"] == "orders_hook")
        .expect("orders_hook")
        .clone();
    assert_eq!(orders["quarantined"], 1, "{orders}");
    let poison: i64 = count(
        &root,
        "SELECT event_id FROM observer.skipped WHERE reason = 'undecodable'",
    )
    .await;
    let ops = cluster.connect_as("ops").await;
    let story: serde_json::Value = serde_json::from_str(
        ops.query_one(&format!("SELECT observer_debug_event({poison})::text"), &[])
            .await
            .expect("debug the poison")
            .get::<_, &str>(0),
    )
    .expect("json");
    assert_eq!(story["observers"][0]["decision"], "undecodable", "{story}");
    assert!(
        story["observers"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("Unicode"),
        "{story}"
    );
    // A replay over the poison replays the rest and leaves the poison set aside.
    let replayed: i64 = ops
        .query_one(
            "SELECT observer_replay('orders_hook', now() - interval '1 hour')",
            &[],
        )
        .await
        .expect("replay")
        .get(0);
    assert_eq!(replayed, 1, "the one readable event of orders");

    // A type dropped after dispatch: the job's event cannot be read any more. The observer is
    // paused so that its job waits, then the owner drops the column and its type.
    root.batch_execute("SELECT observer_pause('typed_hook', 'test')")
        .await
        .expect("pause");
    app.batch_execute("INSERT INTO public.typed (id) VALUES (1)")
        .await
        .expect("typed row");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&root, "SELECT count(*) FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id WHERE o.name = 'typed_hook'").await == 1
        })
        .await
    );
    app.batch_execute("ALTER TABLE public.typed DROP COLUMN t; DROP TYPE public.tier;")
        .await
        .expect("drop the type");
    root.batch_execute("SELECT observer_resume('typed_hook')")
        .await
        .expect("resume");
    writer
        .batch_execute("INSERT INTO public.other (id) VALUES (2)")
        .await
        .expect("a change after");
    assert!(
        wait_completed(&root, "other_hook", 2).await,
        "{}",
        observer_status(&root).await
    );
    let dead = ops
        .query(
            "SELECT last_error FROM observer_dlq_list(observer => 'typed_hook')",
            &[],
        )
        .await
        .expect("dlq list");
    assert_eq!(
        dead.len(),
        1,
        "the job whose event cannot be read is dead-lettered"
    );
    let reason: String = dead[0].get(0);
    assert!(
        reason.contains("could not be read") && reason.contains("no longer exists"),
        "{reason}"
    );
}

/// Case 3: a row of about 840 kB of distinct words (under the 1 MiB payload cap) makes more
/// than 1 MiB of search words. It is delivered, and neither its outcome report nor a claim after
/// its lease expired fails; an enqueued payload likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_big_for_the_search_words_never_stops_deliveries() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    let app = cluster.connect_as("app").await;
    app.batch_execute("CREATE TABLE public.notes (id int PRIMARY KEY, body text)")
        .await
        .expect("table");
    root.batch_execute(&format!(
        r#"SELECT observer_create('notes_hook', 'public.notes', action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('jobs', NULL, action => '{{"type": "webhook", "url": "{0}"}}');"#,
        sink.url("/hook")
    ))
    .await
    .expect("observers");
    let words =
        "SELECT string_agg(translate(substr(md5(i::text), 1, 6), '0123456789', 'ghijklmnop'), ' ')
                 FROM generate_series(1, 120000) AS i";
    app.batch_execute(&format!(
        "INSERT INTO public.notes (id, body) VALUES (1, ({words}));"
    ))
    .await
    .expect("big row");
    // Before any worker runs: claim it by hand with a one-second lease and let the lease
    // expire, so that the worker's first claim takes the expired-lease path.
    let by_hand = cluster.connect_as("worker").await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            count(&root, "SELECT count(*) FROM observer.jobs").await == 1
        })
        .await
    );
    let claimed = by_hand
        .query(
            "SELECT job_id FROM observer_claim('by-hand', 10, '1 second')",
            &[],
        )
        .await
        .expect("claim by hand");
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.batch_execute(&format!(
        "INSERT INTO public.notes (id, body) VALUES (2, 'small');
         SELECT observer_enqueue('jobs', jsonb_build_object('t', ({words})));"
    ))
    .await
    .expect("more");
    let _worker = worker(&cluster);
    assert!(
        wait_completed(&root, "notes_hook", 2).await && wait_completed(&root, "jobs", 1).await,
        "{}",
        observer_status(&root).await
    );
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.attempts WHERE outcome = 'expired'"
        )
        .await,
        1,
        "the expired lease is recorded"
    );
    let biggest = sink
        .received()
        .iter()
        .map(|r| r.raw.len())
        .max()
        .unwrap_or(0);
    assert!(
        biggest > 800_000,
        "the big row was delivered whole ({biggest} bytes)"
    );
    // Its words are searchable (bounded, not dropped).
    let ops = cluster.connect_as("ops").await;
    let found: i64 = count(&ops, "SELECT count(*) FROM observer_search('ckcaki')").await;
    assert!(found >= 1);
}

/// Case 4: nothing callable by a non-superuser trusts bytes, and crafted or stale bytes are
/// refused with an error, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sql_call_crashes_a_backend() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    observe(
        &cluster,
        &root,
        &sink,
        "CREATE TABLE public.orders (id int PRIMARY KEY, status text)",
        "orders_hook",
        "public.orders",
    )
    .await;
    let app = cluster.connect_as("app").await;
    let ops = cluster.connect_as("ops").await;
    // The review's crash: a pass-by-value argument where the decoder expected a pointer.
    assert_eq!(
        sqlstate(
            &ops,
            "SELECT observer_decode_rows('{}'::text[], '{}'::oid[], 1::bigint)"
        )
        .await,
        "42883",
        "the decoders take bytea"
    );
    for sql in [
        "SELECT observer_decode_rows('{}'::text[], '{}'::oid[], '\\x00'::bytea)",
        "SELECT observer_decode_rows_at('{}'::text[], '{}'::oid[], '\\x00'::bytea, '{0}')",
        "SELECT observer_decode_row('{}'::text[], '{}'::oid[], '\\x00'::bytea, 0)",
    ] {
        assert_eq!(
            sqlstate(&ops, sql).await,
            "42501",
            "granted to nobody: {sql}"
        );
    }
    assert_eq!(
        sqlstate(
            &ops,
            "INSERT INTO observer.event_log (table_oid, table_name, op) VALUES (1, 'x', 'INSERT')"
        )
        .await,
        "42501",
        "only capture writes the event log"
    );
    assert_eq!(
        sqlstate(&ops, "UPDATE observer.event_log SET nrows = 1").await,
        "42501"
    );
    // Crafted batches, even from a superuser: an attribute longer than the row (a heap
    // over-read) and a TOAST pointer to address 0x1 (the dispatcher's crash loop).
    let over_read = "decode('01000000' || '28000000' || '80000000' || 'ffffffff' || '00000000' ||
                            '000000000000' || '0100' || '0000' || '18' || '00' || '00400000' || '41414141', 'hex')";
    let toast_pointer = "decode('01000000' || '2a000000' || '88000000' || 'ffffffff' || '00000000' ||
                                '000000000000' || '0100' || '0600' || '18' || '00' || '0101' || '0100000000000000', 'hex')";
    assert_eq!(
        sqlstate(
            &root,
            &format!("SELECT observer_decode_rows(ARRAY['x'], ARRAY['bytea'::regtype::oid], {over_read})")
        )
        .await,
        "XX001"
    );
    assert_eq!(
        sqlstate(
            &root,
            &format!("SELECT observer_decode_rows(ARRAY['x'], ARRAY['text'::regtype::oid], {toast_pointer})")
        )
        .await,
        "XX001"
    );
    // The same row planted in the event log (as only a superuser now can) is quarantined by the
    // dispatcher instead of crashing it.
    root.batch_execute(&format!(
        "INSERT INTO observer.event_log (table_oid, table_name, op, nrows, cols, col_types, new_rows)
         VALUES ('public.orders'::regclass, 'public.orders', 'INSERT', 1, ARRAY['x'],
                 ARRAY['text'::regtype::oid], {toast_pointer})"
    ))
    .await
    .expect("plant");
    // The table owner alters a composite type after capture: the row was converted to JSON at
    // capture, so nothing reads the old bytes with the new layout.
    app.batch_execute(
        "CREATE TYPE public.c AS (a int8);
         BEGIN;
         ALTER TABLE public.orders ADD COLUMN x public.c;
         INSERT INTO public.orders (id, x) VALUES (3001, ROW(257)::public.c);
         ALTER TABLE public.orders DROP COLUMN x;
         ALTER TYPE public.c ALTER ATTRIBUTE a TYPE text;
         COMMIT;
         INSERT INTO public.orders (id, status) VALUES (1, 'after');",
    )
    .await
    .expect("composite");
    let _worker = worker(&cluster);
    assert!(
        wait_completed(&root, "orders_hook", 2).await,
        "{}",
        observer_status(&root).await
    );
    let composite = sink
        .received()
        .into_iter()
        .find(|r| r.body["data"]["new"]["id"] == 3001)
        .expect("the composite row delivered");
    assert_eq!(
        composite.body["data"]["new"]["x"],
        serde_json::json!({"a": 257})
    );
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.skipped WHERE reason = 'undecodable'"
        )
        .await,
        1,
        "the planted row is quarantined"
    );
    let log = cluster.server_log();
    assert!(!log.contains("terminated by signal"), "{log}");
}

/// Case 5: a role with no grant at all holds the advisory lock keys the dispatcher and the audit
/// exporter used; deliveries go on. It cannot lock the checkpoint row either; an admin that holds
/// it is named in observer_status().
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsiders_advisory_locks_change_nothing() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    observe(
        &cluster,
        &root,
        &sink,
        "CREATE TABLE public.orders (id int PRIMARY KEY)",
        "orders_hook",
        "public.orders",
    )
    .await;
    let app = cluster.connect_as("app").await;
    let outsider = cluster.connect_as("outsider").await;
    outsider
        .batch_execute(
            "SELECT pg_advisory_lock(7460944093541646447);
             SELECT pg_advisory_lock(hashtext('fraiseql_observers.audit_export')::bigint);",
        )
        .await
        .expect("any role can take advisory locks");
    assert_eq!(
        sqlstate(
            &outsider,
            "BEGIN; SELECT * FROM observer.dispatch_state FOR UPDATE"
        )
        .await,
        "42501"
    );
    let _worker = worker(&cluster);
    app.batch_execute("INSERT INTO public.orders SELECT g FROM generate_series(1, 10) g")
        .await
        .expect("rows");
    assert!(
        wait_completed(&root, "orders_hook", 10).await,
        "{}",
        observer_status(&root).await
    );

    // An admin session that holds the round (the checkpoint row) is named.
    let ops = cluster.connect_as("ops").await;
    ops.batch_execute("BEGIN; SELECT 1 FROM observer.dispatch_state FOR UPDATE;")
        .await
        .expect("admin holds the round");
    let ops_pid: i32 = ops
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert!(
        wait_until(Duration::from_secs(15), || async {
            observer_status(&root).await["dispatch"]["blocked_by"]
                .as_array()
                .is_some_and(|b| b.iter().any(|s| s["pid"] == ops_pid))
        })
        .await,
        "{}",
        observer_status(&root).await
    );
    ops.batch_execute("ROLLBACK").await.expect("release");
    // app may CREATE in the extension's schema (setup): status says so (docs/security.md).
    assert_eq!(
        observer_status(&root).await["schema_writable_by"],
        serde_json::json!(["app"])
    );
}

/// The queue and condition weaknesses: per-queue grants, key namespace and header-safe keys,
/// past run_at clamped, payloads bounded, costly conditions refused at create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueuers_and_observer_definitions_stay_within_bounds() {
    let (cluster, root) = setup().await;
    let cluster = &cluster;
    root.batch_execute(
        r#"SELECT observer_create('mail', NULL, action => '{"type": "webhook", "url": "https://example.com/mail"}');
           SELECT observer_create('billing', NULL, action => '{"type": "webhook", "url": "https://example.com/billing"}');
           CREATE ROLE mailer LOGIN; SELECT observer_grant('mailer', 'app', queues => ARRAY['mail']);
           CREATE TABLE public.t (id int PRIMARY KEY, name text);"#,
    )
    .await
    .expect("queues");
    let mailer = cluster.connect_as("mailer").await;
    assert_eq!(
        sqlstate(&mailer, "SELECT observer_enqueue('mail', '{}')").await,
        "ok"
    );
    assert_eq!(
        sqlstate(&mailer, "SELECT observer_enqueue('billing', '{}')").await,
        "42501",
        "a role granted some queues enqueues into those only"
    );
    let app = cluster.connect_as("app").await;
    // A key sent as the webhook-id of a table event's namespace stays in the queue's own.
    app.batch_execute("SELECT observer_enqueue('billing', '{}', 'evt_1024_1')")
        .await
        .expect("enqueue");
    let webhook_id: String = root
        .query_one(
            "SELECT idempotency_key FROM observer.jobs WHERE unique_key = 'evt_1024_1'",
            &[],
        )
        .await
        .expect("job")
        .get(0);
    assert!(webhook_id.starts_with("key_"), "{webhook_id}");
    assert_eq!(
        sqlstate(
            &app,
            "SELECT observer_enqueue('billing', '{}', E'bad\\nkey')"
        )
        .await,
        "22023",
        "a key that cannot be a header value is refused at enqueue"
    );
    // A run_at in the past is now: it never jumps ahead of the queue.
    app.batch_execute(
        "SELECT observer_enqueue('billing', '{\"early\": true}', run_at => '-infinity')",
    )
    .await
    .expect("enqueue");
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.jobs WHERE payload ? 'early' AND run_at >= created_at"
        )
        .await,
        1
    );
    assert_eq!(
        sqlstate(
            &app,
            "SELECT observer_enqueue('billing', jsonb_build_object('t', repeat('x', 2000000)))"
        )
        .await,
        "54000",
        "payloads are bounded by the queue's max_payload_bytes"
    );
    // Conditions whose cost grows faster than the row they read are refused at create.
    for condition in [
        r#"exists($.new.**.**.** ? (@ == "x"))"#,
        r#"$.new.name like_regex "(a+)\\1""#,
    ] {
        assert_eq!(
            sqlstate(
                &root,
                &format!(
                    r#"SELECT observer_create('costly', 'public.t', condition => '{condition}',
                                              action => '{{"type": "webhook", "url": "https://example.com/"}}')"#
                )
            )
            .await,
            "54000",
            "{condition}"
        );
    }
}

/// Review F13: an observer's `columns` option holds in the audit trail too. Observer `partner`
/// delivers `id` and `status` only; another observer of the table takes every column. The
/// column `partner` leaves out is neither in its attempts' search words nor in their documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observers_columns_option_holds_in_the_audit_trail() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    root.batch_execute(&format!(
        r#"CREATE TABLE public.orders (id int PRIMARY KEY, status text, secret text);
           SELECT observer_create('partner', 'public.orders', action => '{{"type": "webhook", "url": "{0}"}}',
                                  options => '{{"columns": ["id", "status"]}}');
           SELECT observer_create('internal', 'public.orders', action => '{{"type": "webhook", "url": "{0}"}}');
           INSERT INTO public.orders VALUES (1, 'new', 'hunter2secret');"#,
        sink.url("/hook")
    ))
    .await
    .expect("setup");
    let _worker = worker(&cluster);
    assert!(
        wait_completed(&root, "partner", 1).await && wait_completed(&root, "internal", 1).await,
        "{}",
        observer_status(&root).await
    );
    let ops = cluster.connect_as("ops").await;
    let hits = ops
        .query(
            "SELECT observer, document::text FROM observer_search('hunter2secret')",
            &[],
        )
        .await
        .expect("search");
    let observers: Vec<String> = hits.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        observers,
        vec!["internal".to_string()],
        "only the observer that delivers it"
    );
    let partner_doc: String = ops
        .query_one(
            "SELECT document::text FROM observer_search(NULL, observer => 'partner')",
            &[],
        )
        .await
        .expect("partner's attempt")
        .get(0);
    assert!(!partner_doc.contains("hunter2secret"), "{partner_doc}");
    assert!(partner_doc.contains("\"status\""), "{partner_doc}");
}

/// Review F21: a condition whose cost a writer controls (an admin's naive filter inside a filter,
/// quadratic in the array a writer sends) runs under `fraiseql_observers.condition_timeout`: the
/// round that reaches 30 times the limit decides event by event, the slow decision is recorded as
/// `condition_timeout` against its observer, and every other event flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_condition_is_recorded_against_its_observer_not_a_stall_for_all() {
    let cluster = Cluster::start(&["fraiseql_observers.condition_timeout = 100"]).expect("cluster");
    let root = cluster.connect("postgres").await.expect("connect");
    let sink = Sink::start().await.expect("sink");
    root.batch_execute(&format!(
        r#"CREATE EXTENSION fraiseql_observers;
           CREATE ROLE writer LOGIN;
           CREATE TABLE public.docs (id int PRIMARY KEY, doc jsonb);
           CREATE TABLE public.other (id int PRIMARY KEY);
           GRANT INSERT ON public.docs, public.other TO writer;
           SELECT observer_create('slow', 'public.docs',
                  condition => 'exists($.new.doc.items[*] ? (exists($.new.doc.items[*] ? (@ == -1))))',
                  action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('other_hook', 'public.other', action => '{{"type": "webhook", "url": "{0}"}}');"#,
        sink.url("/hook")
    ))
    .await
    .expect("setup");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(
            r#"INSERT INTO public.docs VALUES (1, jsonb_build_object('items', (SELECT jsonb_agg(i) FROM generate_series(1, 40000) i)));
               INSERT INTO public.docs VALUES (2, '{"items": [1, -1]}');
               INSERT INTO public.other VALUES (1);"#,
        )
        .await
        .expect("writes");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            completed(&root, "other_hook").await == 1 && completed(&root, "slow").await == 1
        })
        .await,
        "{}",
        observer_status(&root).await
    );
    let timed_out = root
        .query(
            "SELECT s.event_id, s.detail FROM observer.skipped s WHERE s.reason = 'condition_timeout'",
            &[],
        )
        .await
        .expect("skipped");
    assert_eq!(timed_out.len(), 1, "the slow decision is recorded");
    let detail: String = timed_out[0].get(1);
    assert!(detail.contains("100 ms"), "{detail}");
    let status = observer_status(&root).await;
    let slow = status["observers"]
        .as_array()
        .expect("observers")
        .iter()
        .find(|o| o["name"] == "slow")
        .expect("slow")
        .clone();
    assert_eq!(slow["condition_timeout"], 1, "{slow}");
}

/// A quarantined event is replayable once its cause is fixed: here a superuser's own cast to
/// json (trusted, so the dispatcher runs it) raises on one value; the event is set aside with the
/// cast's message, the cast is fixed, and `observer_replay` delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_event_is_delivered_by_a_replay_once_its_cause_is_fixed() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    root.batch_execute(&format!(
        r#"CREATE TYPE public.grade AS ENUM ('good', 'bad');
           CREATE FUNCTION public.grade_json(g public.grade) RETURNS json LANGUAGE plpgsql AS $$
           BEGIN
               IF g = 'bad' THEN RAISE EXCEPTION 'grade_json cannot convert %', g; END IF;
               RETURN pg_catalog.to_json(g::text);
           END $$;
           CREATE CAST (public.grade AS json) WITH FUNCTION public.grade_json(public.grade);
           CREATE TABLE public.exams (id int PRIMARY KEY, g public.grade);
           SELECT observer_create('exams_hook', 'public.exams', action => '{{"type": "webhook", "url": "{}"}}');
           INSERT INTO public.exams VALUES (1, 'bad');
           INSERT INTO public.exams VALUES (2, 'good');"#,
        sink.url("/exams")
    ))
    .await
    .expect("setup");
    let _worker = worker(&cluster);
    assert!(wait_completed(&root, "exams_hook", 1).await);
    let detail: String = root
        .query_one(
            "SELECT detail FROM observer.skipped WHERE reason = 'undecodable'",
            &[],
        )
        .await
        .expect("quarantined")
        .get(0);
    assert!(detail.contains("grade_json cannot convert"), "{detail}");
    // The cause is fixed; the replay delivers the event and it leaves the quarantine.
    root.batch_execute(
        "CREATE OR REPLACE FUNCTION public.grade_json(g public.grade) RETURNS json LANGUAGE sql
         AS $$ SELECT pg_catalog.to_json(g::text) $$;",
    )
    .await
    .expect("fix");
    let ops = cluster.connect_as("ops").await;
    let replayed: i64 = ops
        .query_one(
            "SELECT observer_replay('exams_hook', now() - interval '1 hour')",
            &[],
        )
        .await
        .expect("replay")
        .get(0);
    assert_eq!(
        replayed, 2,
        "the fixed event gets its job, the delivered one goes again"
    );
    assert!(wait_completed(&root, "exams_hook", 2).await);
    assert_eq!(
        count(
            &root,
            "SELECT count(*) FROM observer.skipped WHERE reason = 'undecodable'"
        )
        .await,
        0
    );
    assert!(sink
        .received()
        .iter()
        .any(|r| r.body["data"]["new"]["g"] == "bad"));
}

/// Red-team finding: a number is stored in a few bytes whatever its exponent and prints as every
/// digit. A row of 9,000 `1e131071` (about 1 kB stored) printed as 1.2 GB of JSON and failed every
/// claim. Such a row is quarantined (statement capture), captured as its key only like any row
/// over the payload cap (row-level capture of a partitioned table), and refused at enqueue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_that_print_huge_never_stop_deliveries() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    root.batch_execute(&format!(
        r#"CREATE TABLE public.t (id int PRIMARY KEY, n numeric[]);
           CREATE TABLE public.p (id int PRIMARY KEY, doc jsonb) PARTITION BY RANGE (id);
           CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES FROM (0) TO (1000);
           CREATE TABLE public.other (id int PRIMARY KEY);
           GRANT INSERT ON public.t, public.p, public.other TO writer;
           SELECT observer_create('t_hook', 'public.t', action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('p_hook', 'public.p', action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('other_hook', 'public.other', action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('jobs', NULL, action => '{{"type": "webhook", "url": "{0}"}}');"#,
        sink.url("/hook")
    ))
    .await
    .expect("setup");
    let _worker = worker(&cluster);
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(
            "INSERT INTO public.t SELECT 1, array_fill(1e131071::numeric, ARRAY[9000]);
             INSERT INTO public.p SELECT 1, to_jsonb(array_fill(1e131071::numeric, ARRAY[9000]));
             INSERT INTO public.t VALUES (2, '{1.5}');
             INSERT INTO public.other VALUES (1);",
        )
        .await
        .expect("writes");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            completed(&root, "other_hook").await == 1
                && completed(&root, "t_hook").await == 1
                && completed(&root, "p_hook").await == 1
        })
        .await,
        "{}",
        observer_status(&root).await
    );
    let reason: String = root
        .query_one(
            "SELECT detail FROM observer.skipped WHERE reason = 'undecodable'",
            &[],
        )
        .await
        .expect("the statement-captured row is quarantined")
        .get(0);
    assert!(reason.contains("JSON text"), "{reason}");
    let oversize = sink
        .received()
        .into_iter()
        .find(|r| r.path.ends_with("/hook") && r.body["type"] == "p_hook")
        .expect("the partitioned row delivered");
    assert!(
        oversize.body["data"]["oversize"]["bytes"]
            .as_i64()
            .unwrap_or(0)
            > 1_048_576,
        "captured as its key only: {}",
        oversize.body
    );
    let app = cluster.connect_as("app").await;
    assert_eq!(
        sqlstate(
            &app,
            "SELECT observer_enqueue('jobs', to_jsonb(array_fill(1e131071::numeric, ARRAY[9000])))"
        )
        .await,
        "54000"
    );
}

/// Red-team findings: per-queue grants fail closed (an empty list is refused; a role stays
/// restricted when its queues are dropped; a dropped restricted role breaks nobody), and FIFO and
/// dedup keys from long row values are bounded (they failed the jobs' btree indexes, dropping the
/// event as condition_unknown and failing every replay over it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_fail_closed_and_long_keys_are_bounded() {
    let (cluster, root) = setup().await;
    let sink = Sink::start().await.expect("sink");
    root.batch_execute(&format!(
        r#"SELECT observer_create('mail', NULL, action => '{{"type": "webhook", "url": "{0}"}}');
           SELECT observer_create('billing', NULL, action => '{{"type": "webhook", "url": "{0}"}}');
           CREATE ROLE mailer LOGIN;
           CREATE TABLE public.keyed (k text PRIMARY KEY, v int);
           GRANT INSERT ON public.keyed TO writer;
           SELECT observer_create('fifo_hook', 'public.keyed', action => '{{"type": "webhook", "url": "{0}"}}',
                                  options => '{{"fifo": true}}');
           SELECT observer_create('dedup_hook', 'public.keyed', action => '{{"type": "webhook", "url": "{0}"}}',
                                  options => '{{"dedup_window": "1 minute", "dedup_key": "$.new.k"}}');"#,
        sink.url("/hook")
    ))
    .await
    .expect("setup");
    assert_eq!(
        sqlstate(
            &root,
            "SELECT observer_grant('mailer', 'app', queues => '{}'::text[])"
        )
        .await,
        "22023",
        "an empty list would grant every queue"
    );
    root.batch_execute(
        "SELECT observer_grant('mailer', 'app', queues => ARRAY['mail']);
         SELECT observer_drop('mail', true);",
    )
    .await
    .expect("grant, then drop the queue");
    let mailer = cluster.connect_as("mailer").await;
    assert_eq!(
        sqlstate(&mailer, "SELECT observer_enqueue('billing', '{}')").await,
        "42501",
        "still restricted after its queue was dropped"
    );
    root.batch_execute(
        "CREATE ROLE gone LOGIN; SELECT observer_grant('gone', 'app', queues => ARRAY['billing']);
         DROP OWNED BY gone; DROP ROLE gone;",
    )
    .await
    .expect("a restricted role dropped");
    let app = cluster.connect_as("app").await;
    assert_eq!(
        sqlstate(&app, "SELECT observer_enqueue('billing', '{}')").await,
        "ok",
        "a dropped restricted role breaks nobody"
    );
    let _worker = worker(&cluster);
    let writer = cluster.connect_as("writer").await;
    writer
        // 2,000 bytes (under the table's own index limit), 4,000 once escaped as JSON.
        .batch_execute(r#"INSERT INTO public.keyed SELECT repeat('"\', 1000), 1"#)
        .await
        .expect("a key of 2,000 quotes and backslashes");
    assert!(
        wait_completed(&root, "fifo_hook", 1).await && wait_completed(&root, "dedup_hook", 1).await,
        "{}",
        observer_status(&root).await
    );
    let ops = cluster.connect_as("ops").await;
    assert_eq!(
        sqlstate(
            &ops,
            "SELECT observer_replay('fifo_hook', now() - interval '1 hour')"
        )
        .await,
        "ok"
    );
}
