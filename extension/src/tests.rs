//! `#[pg_test]` tests of the SQL surface: validation errors and their SQLSTATEs, trigger
//! management, and the queue's fencing. Each runs inside a transaction that is rolled back, so
//! nothing here can see a commit: dispatch across commits is tested in `tests/` against a real
//! cluster.

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Run `sql` and require it to fail with SQLSTATE `code` (any other error fails the test).
    fn expect_sqlstate(sql: &str, code: &str) {
        Spi::run(&format!(
            "DO $t$ BEGIN {sql}; RAISE EXCEPTION 'expected SQLSTATE {code}, got success'; \
             EXCEPTION WHEN SQLSTATE '{code}' THEN NULL; END $t$"
        ))
        .expect("the statement fails with the expected SQLSTATE");
    }

    fn setup() {
        Spi::run("CREATE TABLE t_orders (id int PRIMARY KEY, status text)").expect("table");
    }

    const HOOK: &str = r#"'{"type":"webhook","url":"https://example.com/h"}'"#;

    #[pg_test]
    fn create_installs_one_trigger_for_the_union_of_events_and_drop_removes_it() {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('a', 't_orders', ARRAY['insert'], NULL, {HOOK})"
        ))
        .expect("create a");
        Spi::run(&format!(
            "SELECT observer_create('b', 't_orders', ARRAY['DELETE'], NULL, {HOOK})"
        ))
        .expect("create b");
        // A plain table: one statement-level trigger per operation, with its transition table.
        let defs = Spi::get_one::<String>(
            "SELECT string_agg(pg_get_triggerdef(oid), E'\n' ORDER BY tgname) FROM pg_trigger \
             WHERE tgrelid = 't_orders'::regclass AND NOT tgisinternal",
        )
        .expect("spi")
        .expect("triggers");
        let defs: Vec<&str> = defs.lines().collect();
        assert_eq!(defs.len(), 2, "{defs:?}");
        assert!(
            defs[0].contains("fraiseql_observers_capture_delete AFTER DELETE"),
            "{defs:?}"
        );
        assert!(
            defs[0].contains("REFERENCING OLD TABLE AS fraiseql_observers_old FOR EACH STATEMENT"),
            "{defs:?}"
        );
        assert!(
            defs[1].contains("fraiseql_observers_capture_insert AFTER INSERT"),
            "{defs:?}"
        );
        assert!(
            defs[1].contains("REFERENCING NEW TABLE AS fraiseql_observers_new FOR EACH STATEMENT"),
            "{defs:?}"
        );
        // A partitioned table: one row-level trigger for the union (cloned to partitions).
        Spi::run("CREATE TABLE t_pt (id int PRIMARY KEY) PARTITION BY RANGE (id)").expect("table");
        Spi::run(&format!(
            "SELECT observer_create('p1', 't_pt', ARRAY['INSERT'], NULL, {HOOK})"
        ))
        .expect("p1");
        Spi::run(&format!(
            "SELECT observer_create('p2', 't_pt', ARRAY['UPDATE'], NULL, {HOOK})"
        ))
        .expect("p2");
        let def = Spi::get_one::<String>(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 't_pt'::regclass AND NOT tgisinternal",
        )
        .expect("spi")
        .expect("a trigger");
        assert!(
            def.contains("AFTER INSERT OR UPDATE ON public.t_pt FOR EACH ROW"),
            "{def}"
        );
        Spi::run("SELECT observer_drop('a')").expect("drop a");
        Spi::run("SELECT observer_drop('b')").expect("drop b");
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't_orders'::regclass AND NOT tgisinternal",
        )
        .expect("spi");
        assert_eq!(n, Some(0));
    }

    #[pg_test]
    fn capture_writes_old_and_new_as_jsonb_with_the_transaction_id() {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('a', 't_orders', action => {HOOK})"
        ))
        .expect("create");
        Spi::run("INSERT INTO t_orders VALUES (1, 'new')").expect("insert");
        Spi::run("UPDATE t_orders SET status = 'shipped'").expect("update");
        Spi::run("DELETE FROM t_orders").expect("delete");
        let ops = Spi::get_one::<String>(
            "SELECT string_agg(op || ':' || coalesce(old->>'status', '-') || '>' || coalesce(new->>'status', '-'), ',' ORDER BY id) \
             FROM observer.events WHERE tx = pg_current_xact_id()",
        )
        .expect("spi");
        assert_eq!(
            ops.as_deref(),
            Some("INSERT:->new,UPDATE:new>shipped,DELETE:shipped>-")
        );
    }

    #[pg_test]
    fn invalid_definitions_are_refused_with_sqlstates() {
        setup();
        // unknown table: Postgres' own undefined_table from the regclass cast
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 'nope', action => {HOOK})"),
            "42P01",
        );
        // not a table
        Spi::run("CREATE VIEW v_orders AS SELECT * FROM t_orders").expect("view");
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 'v_orders', action => {HOOK})"),
            "42809",
        );
        // bad name, bad events
        expect_sqlstate(
            &format!("PERFORM observer_create('1x', 't_orders', action => {HOOK})"),
            "22023",
        );
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 't_orders', ARRAY['SELECT'], NULL, {HOOK})"),
            "22023",
        );
        // malformed condition, and a path that is not a predicate
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 't_orders', condition => '$.new.status ==', action => {HOOK})"),
            "42601",
        );
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 't_orders', condition => '$.new.status', action => {HOOK})"),
            "22023",
        );
        // missing and invalid actions
        expect_sqlstate("PERFORM observer_create('x', 't_orders')", "22004");
        expect_sqlstate(
            r#"PERFORM observer_create('x', 't_orders', action => '{"type":"webhook","url":"gopher://x"}')"#,
            "22023",
        );
        // unknown option, bad option value
        expect_sqlstate(
            &format!(
                r#"PERFORM observer_create('x', 't_orders', action => {HOOK}, options => '{{"retries": 3}}')"#
            ),
            "22023",
        );
        expect_sqlstate(
            &format!(
                r#"PERFORM observer_create('x', 't_orders', action => {HOOK}, options => '{{"max_attempts": "lots"}}')"#
            ),
            "22023",
        );
        // duplicate name, unknown name on drop
        Spi::run(&format!(
            "SELECT observer_create('x', 't_orders', action => {HOOK})"
        ))
        .expect("create");
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 't_orders', action => {HOOK})"),
            "42710",
        );
        expect_sqlstate("PERFORM observer_drop('nope')", "42704");
        // nothing half-created by the failures above
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM observer.observers").expect("spi"),
            Some(1)
        );
    }

    /// Events written by this transaction, as "op:old>new" with `field` of each row.
    fn events_here(field: &str) -> Option<String> {
        Spi::get_one::<String>(&format!(
            "SELECT string_agg(op || ':' || coalesce(old->>'{field}', '-') || '>' || coalesce(new->>'{field}', '-'), ',' ORDER BY id) \
             FROM observer.events WHERE tx = pg_current_xact_id()"
        ))
        .expect("spi")
    }

    #[pg_test]
    fn capture_is_correct_under_subtransactions_upserts_copy_and_truncate() {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('a', 't_orders', ARRAY['INSERT','UPDATE','DELETE','TRUNCATE'], NULL, {HOOK})"
        ))
        .expect("create");
        Spi::run(
            "INSERT INTO t_orders VALUES (1, 'a');
             DO $$ BEGIN
                 INSERT INTO t_orders VALUES (2, 'rolled back');
                 RAISE EXCEPTION 'roll the subtransaction back';
             EXCEPTION WHEN raise_exception THEN NULL;
             END $$;
             INSERT INTO t_orders VALUES (1, 'b') ON CONFLICT (id) DO UPDATE SET status = excluded.status;
             INSERT INTO t_orders VALUES (1, 'c') ON CONFLICT DO NOTHING;
             COPY t_orders FROM PROGRAM 'printf \"3\\tcopied\\n\"';
             TRUNCATE t_orders;",
        )
        .expect("writes");
        assert_eq!(
            events_here("status").as_deref(),
            Some("INSERT:->a,UPDATE:a>b,INSERT:->copied,TRUNCATE:->-")
        );
    }

    /// Statement-level capture: one event log row per statement (per 1024 rows), one event per
    /// row, ids `log id + row number`, rows converted to the same JSON as row-level capture.
    #[pg_test]
    fn statements_are_captured_as_batches_with_one_event_per_row() {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('a', 't_orders', ARRAY['INSERT','UPDATE','DELETE'], NULL, {HOOK})"
        ))
        .expect("create");
        // A small work_mem makes the transition tables spill to disk (regression: reading a
        // spilled store crashed the server).
        Spi::run(
            "SET LOCAL work_mem = '64kB';
             INSERT INTO t_orders SELECT i, 'new' FROM generate_series(1, 2500) i;
             UPDATE t_orders SET status = 'paid' WHERE id IN (7, 8);
             WITH d AS (DELETE FROM t_orders WHERE id = 9 RETURNING id) SELECT count(*) FROM d;",
        )
        .expect("writes");
        // 2500 rows: batches of 1024 + 1024 + 452; then one UPDATE batch, one DELETE batch.
        let logs = Spi::get_one::<String>(
            "SELECT string_agg(op || ':' || nrows, ',' ORDER BY id) FROM observer.event_log WHERE tx = pg_current_xact_id()",
        )
        .expect("spi");
        assert_eq!(
            logs.as_deref(),
            Some("INSERT:1024,INSERT:1024,INSERT:452,UPDATE:2,DELETE:1")
        );
        // Every row has its event, in statement order, with distinct ids.
        let check = Spi::get_one::<bool>(
            "SELECT count(*) = 2500 AND count(DISTINCT id) = 2500
                    AND array_agg((new->>'id')::int ORDER BY id) = ARRAY(SELECT generate_series(1, 2500))
             FROM observer.events WHERE op = 'INSERT' AND tx = pg_current_xact_id()",
        )
        .expect("spi");
        assert_eq!(check, Some(true));
        let changes = Spi::get_one::<String>(
            "SELECT string_agg(op || ':' || coalesce(old->>'id', '-') || ':' || coalesce(old->>'status', '-') || '>' || coalesce(new->>'status', '-'), ',' ORDER BY id)
             FROM observer.events WHERE op <> 'INSERT' AND tx = pg_current_xact_id()",
        )
        .expect("spi");
        assert_eq!(
            changes.as_deref(),
            Some("UPDATE:7:new>paid,UPDATE:8:new>paid,DELETE:9:new>-")
        );
        // observer.event(id) reads one row of a batch and agrees with the view; ids past a
        // batch's last row do not exist.
        let agree = Spi::get_one::<bool>(
            "SELECT bool_and(ROW(e.id, e.tx, e.table_oid, e.table_name, e.op, e.old, e.new, e.oversize, e.created_at, e.role, e.context)::observer.event = (SELECT x FROM observer.event(e.id) x)) FROM observer.events e WHERE tx = pg_current_xact_id()",
        )
        .expect("spi");
        assert_eq!(agree, Some(true));
        let past_end = Spi::get_one::<i64>(
            "SELECT count(*) FROM observer.event_log l, observer.event(l.id + l.nrows) e WHERE l.tx = pg_current_xact_id() AND l.nrows < 1024",
        )
        .expect("spi");
        assert_eq!(past_end, Some(0));
        // observer.events_of(ids) reads a set of ids a batch at a time and agrees with the view:
        // every event once (ids repeated), none for ids past a batch's end or never used.
        let set = Spi::get_one::<bool>(
            "WITH mine AS (SELECT ROW(e.id, e.tx, e.table_oid, e.table_name, e.op, e.old, e.new, e.oversize, e.created_at, e.role, e.context)::observer.event AS e FROM observer.events e WHERE tx = pg_current_xact_id()),
                  asked AS (SELECT (e).id FROM mine UNION ALL SELECT (e).id FROM mine WHERE (e).id % 3 = 0
                            UNION ALL SELECT l.id + l.nrows FROM observer.event_log l
                                      WHERE l.tx = pg_current_xact_id() AND l.nrows < 1024
                            UNION ALL SELECT -5)
             SELECT (SELECT count(*) FROM observer.events_of(ARRAY(SELECT id FROM asked))) = (SELECT count(*) FROM mine)
                    AND NOT EXISTS (SELECT FROM observer.events_of(ARRAY(SELECT id FROM asked)) x
                                    WHERE NOT EXISTS (SELECT FROM mine WHERE (mine.e).id = x.id AND mine.e = x))",
        )
        .expect("spi");
        assert_eq!(set, Some(true));
    }

    /// Rows are stored with the column names and types of their capture: a column dropped,
    /// added (with a default, rows stored before it) or retyped later never misreads them.
    #[pg_test]
    fn batches_survive_schema_changes_after_capture() {
        Spi::run(
            "CREATE TABLE t_evolve (id int PRIMARY KEY, gone text, amount int, note text);
             INSERT INTO t_evolve VALUES (1, 'x', 10, 'before');
             ALTER TABLE t_evolve DROP COLUMN gone;
             ALTER TABLE t_evolve ADD COLUMN flag text NOT NULL DEFAULT 'dflt';",
        )
        .expect("table");
        Spi::run(&format!(
            "SELECT observer_create('e', 't_evolve', ARRAY['INSERT','UPDATE'], NULL, {HOOK})"
        ))
        .expect("create");
        // The old row was stored before ADD COLUMN: its `flag` comes from the default.
        Spi::run(
            "UPDATE t_evolve SET note = 'after'; INSERT INTO t_evolve VALUES (2, 20, 'two', 'f2');",
        )
        .expect("writes");
        Spi::run("ALTER TABLE t_evolve ALTER COLUMN amount TYPE numeric(10,2) USING amount / 3.0")
            .expect("retype");
        let rows = Spi::get_one::<String>(
            "SELECT string_agg(coalesce(old::text, '-') || ' > ' || new::text, ' | ' ORDER BY id) FROM observer.events",
        )
        .expect("spi");
        assert_eq!(
            rows.as_deref(),
            Some(concat!(
                r#"{"id": 1, "flag": "dflt", "note": "before", "amount": 10} > {"id": 1, "flag": "dflt", "note": "after", "amount": 10}"#,
                r#" | - > {"id": 2, "flag": "f2", "note": "two", "amount": 20}"#
            ))
        );
    }

    #[pg_test]
    fn partitions_attached_later_are_captured_under_the_observed_table() {
        Spi::run(
            "CREATE TABLE t_parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
             CREATE TABLE t_parts_eu PARTITION OF t_parts FOR VALUES IN ('eu');",
        )
        .expect("partitioned table");
        Spi::run(&format!(
            "SELECT observer_create('p', 't_parts', action => {HOOK})"
        ))
        .expect("create");
        Spi::run(
            "CREATE TABLE t_parts_us (id int, region text, PRIMARY KEY (id, region));
             ALTER TABLE t_parts ATTACH PARTITION t_parts_us FOR VALUES IN ('us');
             INSERT INTO t_parts VALUES (1, 'eu'), (2, 'us');
             INSERT INTO t_parts_us VALUES (3, 'us');",
        )
        .expect("writes, one straight into a partition");
        let tables = Spi::get_one::<String>(
            "SELECT string_agg(table_name || '#' || (new->>'id'), ',' ORDER BY id) FROM observer.events \
             WHERE tx = pg_current_xact_id() AND table_oid = 't_parts'::regclass",
        )
        .expect("spi");
        assert_eq!(
            tables.as_deref(),
            Some("public.t_parts#1,public.t_parts#2,public.t_parts#3")
        );
        // Row-level events (one event_log row each) read by id sets as by the view.
        let by_set = Spi::get_one::<String>(
            "SELECT string_agg(table_name || '#' || (new->>'id'), ',' ORDER BY id)
             FROM observer.events_of(ARRAY(SELECT id FROM observer.events WHERE tx = pg_current_xact_id()))",
        )
        .expect("spi");
        assert_eq!(by_set, tables);
    }

    #[pg_test]
    fn columns_option_and_oversize_rows() {
        Spi::run("CREATE TABLE t_wide (id int PRIMARY KEY, status text, secret text, blob text)")
            .expect("table");
        Spi::run(&format!(
            r#"SELECT observer_create('w', 't_wide', action => {HOOK},
                   options => '{{"columns": ["status", "blob"], "max_payload_bytes": 2048}}')"#
        ))
        .expect("create");
        Spi::run("INSERT INTO t_wide VALUES (1, 'ok', 'hunter2', 'small'), (2, 'big', 'x', repeat('y', 100000))")
            .expect("insert");
        let rows = Spi::get_one::<String>(
            "SELECT string_agg(new::text || ':' || coalesce(oversize::text, '-'), ' | ' ORDER BY id) \
             FROM observer.events WHERE tx = pg_current_xact_id()",
        )
        .expect("spi");
        // Columns nobody observes are never stored (the key is kept); the oversize row keeps
        // its key and its size.
        let rows = rows.expect("events");
        assert!(
            rows.starts_with(r#"{"id": 1, "blob": "small", "status": "ok"}:-"#),
            "{rows}"
        );
        assert!(!rows.contains("hunter2"), "{rows}");
        assert!(rows.contains(r#"{"id": 2}:"#), "{rows}");
        // Unknown column in an option: refused.
        expect_sqlstate(
            &format!(
                r#"PERFORM observer_create('w2', 't_wide', action => {HOOK}, options => '{{"columns": ["nope"]}}')"#
            ),
            "42703",
        );
    }

    /// Hostile conditions are refused at creation, and nothing in them runs.
    #[pg_test]
    fn hostile_conditions_are_refused_and_nothing_runs() {
        setup();
        let hostile: &[(&str, &str)] = &[
            ("1; DROP TABLE t_orders", "42601"),
            ("$.new.id == 1; DROP TABLE t_orders", "42601"),
            ("pg_sleep(10)", "42601"),
            ("$.new.id == pg_sleep(10)", "42601"),
            ("$.new.id == (SELECT 1)", "42601"),
            ("$.new.id == 1) OR (true", "42601"),
            ("'); DROP TABLE t_orders; --", "42601"),
        ];
        for (condition, code) in hostile {
            let quoted = condition.replace('\'', "''");
            expect_sqlstate(
                &format!("PERFORM observer_create('x', 't_orders', condition => '{quoted}', action => {HOOK})"),
                code,
            );
        }
        // 1 MB expression and deep nesting: refused by the size cap before the parser sees them.
        expect_sqlstate(
            &format!(
                "PERFORM observer_create('x', 't_orders', condition => '$.new.id == 1' || repeat(' || $.new.id == 1', 70000), action => {HOOK})"
            ),
            "54000",
        );
        expect_sqlstate(
            &format!(
                "PERFORM observer_create('x', 't_orders', condition => repeat('(', 100000) || '$.new.id == 1' || repeat(')', 100000), action => {HOOK})"
            ),
            "54000",
        );
        // Nesting that fits the cap parses or fails cleanly; it never crashes the backend.
        Spi::run(&format!(
            "DO $t$ BEGIN PERFORM observer_create('deep', 't_orders', condition => repeat('(', 2000) || '$.new.id == 1' || repeat(')', 2000), action => {HOOK}); \
             EXCEPTION WHEN syntax_error OR invalid_parameter_value THEN NULL; END $t$"
        ))
        .expect("deep nesting is handled");
        let table_exists =
            Spi::get_one::<bool>("SELECT to_regclass('t_orders') IS NOT NULL").expect("spi");
        assert_eq!(table_exists, Some(true), "no DROP ran");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM observer.observers WHERE name = 'x'")
                .expect("spi"),
            Some(0)
        );
    }

    #[pg_test]
    fn drop_refuses_to_discard_unfinished_jobs_unless_forced() {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('x', 't_orders', action => {HOOK})"
        ))
        .expect("create");
        Spi::run(
            "INSERT INTO observer.jobs (observer_id, event_id, idempotency_key) \
             SELECT id, 1, 'k' FROM observer.observers",
        )
        .expect("job");
        expect_sqlstate("PERFORM observer_drop('x')", "55006");
        assert_eq!(
            Spi::get_one::<bool>("SELECT observer_drop('x', force => true)").expect("spi"),
            Some(true)
        );
    }

    #[pg_test]
    fn stale_tokens_cannot_complete_or_fail_a_job() {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('x', 't_orders', action => {HOOK})"
        ))
        .expect("create");
        Spi::run("INSERT INTO t_orders VALUES (1, 'new')").expect("insert");
        Spi::run(
            "INSERT INTO observer.jobs (observer_id, event_id, idempotency_key) \
             SELECT o.id, e.id, 'k' FROM observer.observers o, observer.events e",
        )
        .expect("job");
        let first = Spi::get_one::<i64>("SELECT token FROM observer_claim('w1', 10, '1 second')")
            .expect("spi")
            .expect("claimed");
        // The lease runs out; another worker takes the job over with a new token.
        Spi::run("UPDATE observer.jobs SET lease_until = clock_timestamp() - interval '1 second'")
            .expect("expire");
        let second = Spi::get_one::<i64>("SELECT token FROM observer_claim('w2', 10, '1 minute')")
            .expect("spi")
            .expect("reclaimed");
        assert!(second > first, "fencing tokens grow");
        let stale = Spi::get_one::<bool>(&format!(
            "SELECT accepted FROM observer_complete(ARRAY[(SELECT id FROM observer.jobs)], ARRAY[{first}::bigint])"
        ))
        .expect("spi");
        assert_eq!(
            stale,
            Some(false),
            "the first worker's completion is rejected"
        );
        let stale_fail = Spi::get_one::<bool>(&format!(
            "SELECT accepted FROM observer_fail(ARRAY[(SELECT id FROM observer.jobs)], ARRAY[{first}::bigint], ARRAY['x'])"
        ))
        .expect("spi");
        assert_eq!(stale_fail, Some(false), "and so is its failure");
        let ok = Spi::get_one::<bool>(&format!(
            "SELECT accepted FROM observer_complete(ARRAY[(SELECT id FROM observer.jobs)], ARRAY[{second}::bigint])"
        ))
        .expect("spi");
        assert_eq!(ok, Some(true));
        let story = Spi::get_one::<String>(
            "SELECT string_agg(attempt || ':' || outcome || ':' || worker, ',' ORDER BY attempt) FROM observer.attempts",
        )
        .expect("spi");
        assert_eq!(story.as_deref(), Some("1:expired:w1,2:completed:w2"));
    }

    /// Attempts go with their jobs (a statement trigger, not a foreign key): on DELETE, on
    /// TRUNCATE of the jobs alone, and on a TRUNCATE that lists the attempts (and their outbox) too.
    #[pg_test]
    fn attempts_are_deleted_with_their_jobs() {
        Spi::run(&format!(
            "SELECT observer_create('q', NULL, action => {HOOK});
             SELECT count(*) FROM observer_enqueue_many('q', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, 6) i));
             WITH c AS (SELECT array_agg(job_id) AS ids, array_agg(token) AS toks FROM observer_claim('w', 10, '1 minute'))
             SELECT count(*) FROM c, observer_complete(c.ids, c.toks);"
        ))
        .expect("six completed jobs");
        let attempts = || {
            Spi::get_one::<i64>("SELECT count(*) FROM observer.attempts")
                .expect("spi")
                .unwrap_or(-1)
        };
        assert_eq!(attempts(), 6);
        Spi::run("DELETE FROM observer.jobs WHERE id IN (SELECT id FROM observer.jobs ORDER BY id LIMIT 2)")
            .expect("delete");
        assert_eq!(attempts(), 4, "the deleted jobs' attempts went with them");
        let orphans = Spi::get_one::<i64>(
            "SELECT count(*) FROM observer.attempts a WHERE NOT EXISTS (SELECT FROM observer.jobs j WHERE j.id = a.job_id)",
        )
        .expect("spi");
        assert_eq!(orphans, Some(0));
        Spi::run("TRUNCATE observer.jobs, observer.attempts, observer.audit_outbox")
            .expect("truncate listing the attempts too");
        assert_eq!(attempts(), 0);
        Spi::run(
            "SELECT count(*) FROM observer_enqueue_many('q', ARRAY['{}'::jsonb]);
             WITH c AS (SELECT array_agg(job_id) AS ids, array_agg(token) AS toks FROM observer_claim('w', 10, '1 minute'))
             SELECT count(*) FROM c, observer_complete(c.ids, c.toks);",
        )
        .expect("one more");
        assert_eq!(attempts(), 1);
        Spi::run("TRUNCATE observer.jobs").expect("truncate the jobs alone");
        assert_eq!(attempts(), 0, "TRUNCATE of the jobs empties the attempts");
    }

    /// One job for a captured row of `t_orders`, claimed by `worker`: (job id, token).
    fn claimed_job(options: &str) -> (i64, i64) {
        setup();
        Spi::run(&format!(
            "SELECT observer_create('x', 't_orders', action => {HOOK}, options => '{options}')"
        ))
        .expect("create");
        Spi::run("INSERT INTO t_orders VALUES (1, 'new')").expect("insert");
        Spi::run(
            "INSERT INTO observer.jobs (observer_id, event_id, idempotency_key) \
             SELECT o.id, e.id, 'evt_k' FROM observer.observers o, observer.events e",
        )
        .expect("job");
        let (id, token) = Spi::get_two::<i64, i64>(
            "SELECT job_id, token FROM observer_claim('w1', 10, '1 minute')",
        )
        .expect("spi");
        (id.expect("claimed"), token.expect("token"))
    }

    #[pg_test]
    fn heartbeats_extend_live_leases_only() {
        let (id, token) = claimed_job("{}");
        let ok = Spi::get_one::<bool>(&format!(
            "SELECT accepted AND lease_until > clock_timestamp() + interval '50 minutes' \
             FROM observer_heartbeat(ARRAY[{id}::bigint], ARRAY[{token}::bigint], '1 hour')"
        ))
        .expect("spi");
        assert_eq!(ok, Some(true));
        let stale = Spi::get_one::<bool>(&format!(
            "SELECT accepted FROM observer_heartbeat(ARRAY[{id}::bigint], ARRAY[{}::bigint])",
            token + 1000
        ))
        .expect("spi");
        assert_eq!(stale, Some(false), "a wrong token cannot extend the lease");
        Spi::run("UPDATE observer.jobs SET lease_until = clock_timestamp() - interval '1 second'")
            .expect("expire");
        let expired = Spi::get_one::<bool>(&format!(
            "SELECT accepted FROM observer_heartbeat(ARRAY[{id}::bigint], ARRAY[{token}::bigint])"
        ))
        .expect("spi");
        assert_eq!(
            expired,
            Some(false),
            "an expired lease is not revived: the job may be someone else's now"
        );
    }

    #[pg_test]
    fn dead_letters_can_be_listed_retried_with_the_same_identity_and_purged() {
        let (id, token) = claimed_job(r#"{"max_attempts": 1}"#);
        Spi::run(&format!(
            "SELECT observer_fail(ARRAY[{id}::bigint], ARRAY[{token}::bigint], ARRAY['HTTP 500: boom'])"
        ))
        .expect("fail");
        let listed = Spi::get_one::<String>(
            "SELECT observer || '|' || attempts || '|' || last_error || '|' || (payload->'data'->'new'->>'status') \
             FROM observer_dlq_list(error_like => '%boom%')",
        )
        .expect("spi");
        assert_eq!(listed.as_deref(), Some("x|1|HTTP 500: boom|new"));
        // No filter: refused, nothing touched.
        expect_sqlstate("PERFORM observer_dlq_retry()", "22023");
        expect_sqlstate("PERFORM observer_dlq_purge()", "22023");
        expect_sqlstate("PERFORM observer_dlq_retry(observer => 'nope')", "42704");
        assert_eq!(
            Spi::get_one::<i64>("SELECT observer_dlq_retry(observer => 'x')").expect("spi"),
            Some(1)
        );
        // Redelivered as attempt 2 under the same idempotency key, with a fresh budget.
        let (key, attempt) = Spi::get_two::<String, i32>(
            "SELECT idempotency_key, attempt FROM observer_claim('w2', 10, '1 minute')",
        )
        .expect("spi");
        assert_eq!((key.as_deref(), attempt), (Some("evt_k"), Some(2)));
        let token2 = Spi::get_one::<i64>("SELECT lease_token FROM observer.jobs")
            .expect("spi")
            .expect("token");
        Spi::run(&format!(
            "SELECT observer_fail(ARRAY[{id}::bigint], ARRAY[{token2}::bigint], ARRAY['HTTP 500: again'])"
        ))
        .expect("fail again");
        let history = Spi::get_one::<String>(
            "SELECT string_agg(attempt || ':' || outcome, ',' ORDER BY attempt) FROM observer.attempts",
        )
        .expect("spi");
        assert_eq!(
            history.as_deref(),
            Some("1:dead,2:dead"),
            "no attempt record overwritten"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT observer_dlq_purge(all_jobs => true)").expect("spi"),
            Some(1)
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM observer.jobs").expect("spi"),
            Some(0)
        );
    }

    /// Jobs claimable now, as "key:id" of the captured rows (claims them).
    fn claim_keys() -> Vec<String> {
        let v = Spi::get_one::<Vec<String>>(
            "SELECT coalesce(array_agg((payload->'data'->'new'->>'status') ORDER BY job_id), '{}') \
             FROM observer_claim('w', 100, '1 minute')",
        )
        .expect("spi");
        v.unwrap_or_default()
    }

    /// Finish the running job of row status `label` with `outcome` ("complete" or "fail").
    fn finish(label: &str, outcome: &str) {
        let sql = format!(
            "SELECT observer_{outcome}(ARRAY[j.id], ARRAY[j.lease_token]{}) FROM observer.jobs j \
             JOIN observer.events e ON e.id = j.event_id WHERE e.new->>'status' = '{label}' AND j.state = 'running'",
            if outcome == "fail" { ", ARRAY['boom']" } else { "" }
        );
        Spi::run(&sql).expect("finish");
    }

    fn fifo_setup(options: &str) {
        Spi::run("CREATE TABLE t_fifo (id serial PRIMARY KEY, k int, status text)").expect("table");
        Spi::run(&format!(
            "SELECT observer_create('f', 't_fifo', ARRAY['INSERT','UPDATE'], NULL, {HOOK}, '{options}')"
        ))
        .expect("create");
        // Key a: three changes of row 1; key b: one change of row 2. Jobs in commit order.
        Spi::run(
            "INSERT INTO t_fifo (k, status) VALUES (1, 'a1'), (2, 'b1');
             UPDATE t_fifo SET status = 'a2' WHERE id = 1;
             UPDATE t_fifo SET status = 'a3' WHERE id = 1;
             INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key)
             SELECT o.id, e.id, 'k' || e.id, observer.ordering_key(e.table_name, o.key_columns, e.old, e.new)
             FROM observer.observers o, observer.events e ORDER BY e.id;
             UPDATE observer.jobs SET run_at = clock_timestamp() - interval '1 second';",
        )
        .expect("jobs");
    }

    #[pg_test]
    fn fifo_delivers_one_job_per_key_in_order_and_blocks_on_failure() {
        fifo_setup(r#"{"fifo": true, "max_attempts": 1}"#);
        assert_eq!(
            claim_keys(),
            ["a1", "b1"],
            "heads of both keys, nothing behind them"
        );
        assert!(claim_keys().is_empty());
        finish("a1", "complete");
        assert_eq!(claim_keys(), ["a2"], "the next job of key a");
        finish("a2", "fail");
        assert!(
            claim_keys().is_empty(),
            "policy block: the dead job holds its key"
        );
        finish("b1", "complete");
        Spi::run("SELECT observer_dlq_retry(all_jobs => true)").expect("retry");
        assert_eq!(claim_keys(), ["a2"], "the retried job goes first");
        finish("a2", "complete");
        assert_eq!(claim_keys(), ["a3"]);
    }

    #[pg_test]
    fn fifo_park_sets_a_failed_job_aside_and_lets_the_key_go_on() {
        fifo_setup(r#"{"fifo": true, "fifo_on_failure": "park", "max_attempts": 1}"#);
        assert_eq!(claim_keys(), ["a1", "b1"]);
        finish("a1", "fail");
        assert_eq!(
            claim_keys(),
            ["a2"],
            "parked: later jobs of the key continue"
        );
        expect_sqlstate(
            &format!(
                r#"PERFORM observer_create('g', 't_fifo', action => {HOOK}, options => '{{"fifo_on_failure": "park"}}')"#
            ),
            "22023",
        );
        expect_sqlstate(
            &format!(
                r#"PERFORM observer_create('g', 't_fifo', action => {HOOK}, options => '{{"fifo": true, "fifo_on_failure": "skip"}}')"#
            ),
            "22023",
        );
    }

    /// Regression (review): a round run by a transaction that already had an xid counted that
    /// transaction as done. The snapshot it stores must list the caller as in progress.
    #[pg_test]
    fn a_dispatching_transaction_counts_itself_as_in_progress() {
        setup(); // DDL: this transaction has an xid now
        Spi::run("SELECT observer_dispatch()").expect("dispatch");
        let in_progress = Spi::get_one::<bool>(
            "SELECT NOT pg_visible_in_snapshot(pg_current_xact_id(), done_snapshot) FROM observer.dispatch_state",
        )
        .expect("spi");
        assert_eq!(in_progress, Some(true));
    }

    /// Regression (review): the `columns` option stripped columns that a condition or a
    /// changed_columns filter reads, so those observers silently never matched.
    #[pg_test]
    fn column_subsets_never_hide_what_filters_read() {
        Spi::run("CREATE TABLE t_sub (id int PRIMARY KEY, status text, plan text, note text)")
            .expect("table");
        Spi::run(&format!(
            r#"SELECT observer_create('cond', 't_sub', ARRAY['INSERT','UPDATE'], '$.new.status == "x"', {HOOK},
                   '{{"columns": ["note"]}}')"#
        ))
        .expect("create");
        Spi::run(&format!(
            r#"SELECT observer_create('chg', 't_sub', ARRAY['UPDATE'], NULL, {HOOK},
                   '{{"columns": ["note"], "changed_columns": ["plan"]}}')"#
        ))
        .expect("create");
        Spi::run("INSERT INTO t_sub VALUES (1, 'x', 'free', 'n')").expect("insert");
        let captured = Spi::get_one::<pgrx::JsonB>("SELECT new FROM observer.events")
            .expect("spi")
            .expect("event");
        assert_eq!(
            captured.0["status"], "x",
            "the condition's column is captured"
        );
        assert_eq!(
            captured.0["plan"], "free",
            "the changed_columns column is captured"
        );
    }

    /// Regression (review): attached by hand as a statement trigger, the capture function read a
    /// missing row and crashed the server; now it refuses with an error. Likewise the statement
    /// capture function attached as a row trigger or without its transition table.
    #[pg_test]
    fn capture_functions_refuse_to_run_as_the_wrong_kind_of_trigger() {
        setup();
        let attach = [
            "AFTER INSERT ON t_orders FOR EACH STATEMENT EXECUTE FUNCTION observer_capture",
            "AFTER INSERT ON t_orders FOR EACH ROW EXECUTE FUNCTION observer_capture_rows",
            "AFTER INSERT ON t_orders FOR EACH STATEMENT EXECUTE FUNCTION observer_capture_rows",
            "BEFORE INSERT ON t_orders FOR EACH STATEMENT EXECUTE FUNCTION observer_capture_rows",
        ];
        for (i, how) in attach.iter().enumerate() {
            Spi::run(&format!(
                "CREATE TRIGGER by_hand_{i} {how}('1', 'x', '1000', '{{}}', '{{}}')"
            ))
            .expect("attach");
            // trigger_protocol_violated, with a clear message; the backend survives.
            expect_sqlstate("INSERT INTO t_orders VALUES (1, 'x')", "39P01");
            Spi::run(&format!("DROP TRIGGER by_hand_{i} ON t_orders")).expect("detach");
        }
    }

    #[pg_test]
    fn status_works_on_a_fresh_install() {
        let s = Spi::get_one::<pgrx::JsonB>("SELECT observer_status()")
            .expect("spi")
            .expect("not null");
        assert_eq!(s.0["jobs"]["pending"], 0);
        assert!(s.0["observers"].as_array().is_some_and(|a| a.is_empty()));
    }
}
