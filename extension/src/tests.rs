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
        Spi::run(&format!("SELECT observer_create('a', 't_orders', ARRAY['insert'], NULL, {HOOK})"))
            .expect("create a");
        Spi::run(&format!("SELECT observer_create('b', 't_orders', ARRAY['DELETE'], NULL, {HOOK})"))
            .expect("create b");
        let def = Spi::get_one::<String>(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 't_orders'::regclass AND NOT tgisinternal",
        )
        .expect("spi")
        .expect("a trigger");
        assert!(def.contains("AFTER INSERT OR DELETE"), "{def}");
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
        Spi::run(&format!("SELECT observer_create('a', 't_orders', action => {HOOK})")).expect("create");
        Spi::run("INSERT INTO t_orders VALUES (1, 'new')").expect("insert");
        Spi::run("UPDATE t_orders SET status = 'shipped'").expect("update");
        Spi::run("DELETE FROM t_orders").expect("delete");
        let ops = Spi::get_one::<String>(
            "SELECT string_agg(op || ':' || coalesce(old->>'status', '-') || '>' || coalesce(new->>'status', '-'), ',' ORDER BY id) \
             FROM observer.events WHERE tx = pg_current_xact_id()",
        )
        .expect("spi");
        assert_eq!(ops.as_deref(), Some("INSERT:->new,UPDATE:new>shipped,DELETE:shipped>-"));
    }

    #[pg_test]
    fn invalid_definitions_are_refused_with_sqlstates() {
        setup();
        // unknown table: Postgres' own undefined_table from the regclass cast
        expect_sqlstate(&format!("PERFORM observer_create('x', 'nope', action => {HOOK})"), "42P01");
        // not a table
        Spi::run("CREATE VIEW v_orders AS SELECT * FROM t_orders").expect("view");
        expect_sqlstate(&format!("PERFORM observer_create('x', 'v_orders', action => {HOOK})"), "42809");
        // bad name, bad events
        expect_sqlstate(&format!("PERFORM observer_create('1x', 't_orders', action => {HOOK})"), "22023");
        expect_sqlstate(
            &format!("PERFORM observer_create('x', 't_orders', ARRAY['TRUNCATE'], NULL, {HOOK})"),
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
            &format!(r#"PERFORM observer_create('x', 't_orders', action => {HOOK}, options => '{{"retries": 3}}')"#),
            "22023",
        );
        expect_sqlstate(
            &format!(r#"PERFORM observer_create('x', 't_orders', action => {HOOK}, options => '{{"max_attempts": "lots"}}')"#),
            "22023",
        );
        // duplicate name, unknown name on drop
        Spi::run(&format!("SELECT observer_create('x', 't_orders', action => {HOOK})")).expect("create");
        expect_sqlstate(&format!("PERFORM observer_create('x', 't_orders', action => {HOOK})"), "42710");
        expect_sqlstate("PERFORM observer_drop('nope')", "42704");
        // nothing half-created by the failures above
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM observer.observers").expect("spi"), Some(1));
    }

    #[pg_test]
    fn drop_refuses_to_discard_unfinished_jobs_unless_forced() {
        setup();
        Spi::run(&format!("SELECT observer_create('x', 't_orders', action => {HOOK})")).expect("create");
        Spi::run(
            "INSERT INTO observer.jobs (observer_id, event_id, idempotency_key) \
             SELECT id, 1, 'k' FROM observer.observers",
        )
        .expect("job");
        expect_sqlstate("PERFORM observer_drop('x')", "55006");
        assert_eq!(Spi::get_one::<bool>("SELECT observer_drop('x', force => true)").expect("spi"), Some(true));
    }

    #[pg_test]
    fn stale_tokens_cannot_complete_or_fail_a_job() {
        setup();
        Spi::run(&format!("SELECT observer_create('x', 't_orders', action => {HOOK})")).expect("create");
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
        Spi::run("UPDATE observer.jobs SET lease_until = clock_timestamp() - interval '1 second'").expect("expire");
        let second = Spi::get_one::<i64>("SELECT token FROM observer_claim('w2', 10, '1 minute')")
            .expect("spi")
            .expect("reclaimed");
        assert!(second > first, "fencing tokens grow");
        let stale = Spi::get_one::<bool>(&format!(
            "SELECT accepted FROM observer_complete(ARRAY[(SELECT id FROM observer.jobs)], ARRAY[{first}::bigint])"
        ))
        .expect("spi");
        assert_eq!(stale, Some(false), "the first worker's completion is rejected");
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

    #[pg_test]
    fn status_works_on_a_fresh_install() {
        let s = Spi::get_one::<pgrx::JsonB>("SELECT observer_status()")
            .expect("spi")
            .expect("not null");
        assert_eq!(s.0["jobs"]["pending"], 0);
        assert!(s.0["observers"].as_array().is_some_and(|a| a.is_empty()));
    }
}
