-- The operator console (`fraiseql-observers console`, worker/src/console): what its pages need
-- beyond the rest of the API, each bounded so that a page stays fast with millions of finished
-- jobs (benches/console.sh):
--   observer_console_overview()      queue depth by state, dispatcher, workers, open circuits,
--                                    quarantined events: no count over all finished jobs
--   observer_console_series(minutes) delivered and failed attempts and the capture-to-delivery
--                                    lag per minute over the last `minutes` (the attempts by
--                                    finish time: attempts_finished, schema.sql)
--   observer_console_observers()     per observer: jobs waiting, running and dead, last error
--   observer_console_record(...)     the operator action log: who did what, written by the
--                                    console in the transaction of the action itself
--   observer_console_actions(n)      the newest entries of that log
-- They are admin functions (observer_grant(role, 'admin')), run as their caller, like the others.

-- The operator action log: one row per change made from the console (a DLQ retry or purge of a
-- chunk of jobs, an observer enabled, disabled, paused or resumed), written in the same
-- transaction as the change, so a change is never without its row nor a row without its change.
CREATE TABLE observer.console_actions (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    operator  text NOT NULL CHECK (operator ~ '^[A-Za-z0-9_.-]{1,64}$'),
    action    text NOT NULL CHECK (action IN ('dlq_retry', 'dlq_purge', 'observer_enable', 'observer_disable',
                                              'observer_pause', 'observer_resume')),
    target    text NOT NULL,                 -- the observer, or the jobs ("3 dead jobs")
    detail    jsonb,                         -- e.g. the job ids, the pause reason, the count done
    db_role   text NOT NULL DEFAULT current_user  -- the database role the console connected as
);
REVOKE ALL ON observer.console_actions FROM PUBLIC;

-- observer_console_record(operator, action, target, detail): one entry of the action log; call it
-- in the transaction of the action. Returns its id.
CREATE FUNCTION observer_console_record(operator text, action text, target text, detail jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO observer.console_actions (operator, action, target, detail)
    VALUES (operator, action, target, detail)
    RETURNING id
$$;

-- observer_console_actions(max_rows): the newest entries of the action log, newest first (at
-- most 1000).
CREATE FUNCTION observer_console_actions(max_rows integer DEFAULT 50)
RETURNS TABLE (id bigint, at timestamptz, operator text, action text, target text, detail jsonb, db_role text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.id, a.at, a.operator, a.action, a.target, a.detail, a.db_role
    FROM observer.console_actions a
    ORDER BY a.id DESC
    LIMIT least(greatest(coalesce(max_rows, 50), 1), 1000)
$$;

-- observer.console_completed(pending, running, dead): the completed jobs, counted exactly while
-- the job table is small, else estimated from the planner's row count (the overview says so):
-- counting ten million finished rows on every refresh would be the slowest thing on the page.
CREATE FUNCTION observer.console_completed(pending bigint, running bigint, dead bigint,
                                           OUT completed bigint, OUT estimated boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    est real := (SELECT c.reltuples FROM pg_class c WHERE c.oid = 'observer.jobs'::regclass);
BEGIN
    estimated := CASE WHEN est >= 0 THEN est >= 200000
                      ELSE pg_relation_size('observer.jobs'::regclass) >= 64 * 1024 * 1024 END;
    IF estimated THEN
        completed := greatest(est::bigint - pending - running - dead, 0);
    ELSE
        completed := (SELECT count(*) FROM observer.jobs j WHERE j.state = 'completed');
    END IF;
END
$$;

-- observer_console_overview(): the overview page in one document. Jobs waiting, running and dead
-- are counted exactly (the partial indexes on their states); completed ones see
-- observer.console_completed. Undispatched events are counted up to 100,000. Without JIT, which
-- compiled the plan on every call for 200 ms of a 12-40 ms query (benches/console.sh).
CREATE FUNCTION observer_console_overview() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH q AS (
        SELECT (SELECT count(*) FROM observer.jobs j WHERE j.state = 'pending') AS pending,
               (SELECT count(*) FROM observer.jobs j WHERE j.state = 'running') AS running,
               (SELECT count(*) FROM observer.jobs j WHERE j.state = 'dead') AS dead
    ), c AS (
        SELECT x.* FROM q, observer.console_completed(q.pending, q.running, q.dead) x
    ), st AS (
        SELECT * FROM observer.dispatch_state
    ), undispatched AS (
        SELECT coalesce(sum(coalesce(l.nrows, 1)), 0) AS events, min(l.created_at) AS oldest
        FROM st, observer.batch_logs(st.done_snapshot, pg_current_snapshot(), st.batch_cursor, 100000) l
    ), interval_setting AS (
        SELECT coalesce((SELECT setting::integer FROM pg_settings
                         WHERE name = 'fraiseql_observers.dispatch_interval'), 1000) AS ms
    )
    SELECT jsonb_build_object(
        'jobs', jsonb_build_object('pending', q.pending, 'running', q.running, 'dead', q.dead,
                                   'completed', c.completed, 'completed_estimated', c.estimated),
        'dispatch', jsonb_build_object(
            'last_round_at', st.last_round_at,
            'undispatched_events', u.events,
            'lag_seconds', coalesce(round(extract(epoch FROM clock_timestamp() - u.oldest)::numeric, 3), 0),
            'background_worker', EXISTS (SELECT 1 FROM pg_stat_activity a
                                         WHERE a.backend_type = 'fraiseql_observers dispatcher'),
            'healthy', u.events = 0 OR st.last_round_at > clock_timestamp()
                                       - make_interval(secs => greatest(5, 3 * i.ms / 1000.0))),
        'workers', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'worker', w.worker, 'sessions', w.sessions, 'connected_since', w.since) ORDER BY w.worker), '[]')
            FROM (SELECT substr(a.application_name, 20) AS worker, count(*) AS sessions,
                         min(a.backend_start) AS since
                  FROM pg_stat_activity a
                  WHERE a.application_name LIKE 'fraiseql-observers:%' AND a.datname = current_database()
                  GROUP BY 1) w),
        'open_circuits', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'endpoint', b.endpoint, 'state', b.state, 'worker', b.worker, 'open_until', b.open_until)
                ORDER BY b.endpoint, b.worker), '[]')
            FROM observer.breakers b WHERE b.state <> 'closed'),
        'quarantined_events', (SELECT count(DISTINCT s.event_id) FROM observer.skipped s
                               WHERE s.reason = 'undecodable'))
    FROM q, c, st, undispatched u, interval_setting i
$$;

-- observer_console_series(minutes): per minute of the last `minutes` (1 to 1440, the current one
-- included, every minute present): attempts that delivered, attempts that failed (retry, dead,
-- expired, discarded), and the average and largest lag from capture (the event's transaction
-- start; an enqueued job's enqueueing) to delivery, in milliseconds (NULL: nothing delivered).
-- The counts are exact; the lag is measured on a sample of about 5,000 deliveries of the period
-- (every k-th job by id), since each needs its job and its event: all 65,000 of a busy hour took
-- 465 ms (benches/console.sh).
CREATE FUNCTION observer_console_series(minutes integer DEFAULT 60)
RETURNS TABLE (minute timestamptz, delivered bigint, failed bigint, lag_avg_ms double precision,
               lag_max_ms double precision)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH bounds AS (
        SELECT date_trunc('minute', now()) - make_interval(mins => least(greatest(coalesce(minutes, 60), 1), 1440) - 1) AS since
    ), recent AS MATERIALIZED (
        SELECT date_trunc('minute', a.finished_at) AS m, a.outcome, a.finished_at, a.job_id
        FROM observer.attempts a, bounds b
        WHERE a.finished_at >= b.since
    ), counts AS (
        SELECT r.m, count(*) FILTER (WHERE r.outcome = 'completed') AS delivered,
               count(*) FILTER (WHERE r.outcome <> 'completed') AS failed
        FROM recent r GROUP BY r.m
    ), sampling AS (
        SELECT greatest(coalesce(sum(c.delivered), 0) / 5000, 1)::bigint AS every FROM counts c
    ), lags AS (
        SELECT r.m, avg(x.ms) AS lag_avg, max(x.ms) AS lag_max
        FROM recent r
        CROSS JOIN sampling sm
        JOIN observer.jobs j ON j.id = r.job_id
        LEFT JOIN observer.event_log l ON l.id = observer.event_log_id(j.event_id)
        CROSS JOIN LATERAL (SELECT greatest(extract(epoch FROM r.finished_at - coalesce(l.created_at, j.created_at)), 0)
                                   * 1000 AS ms) x
        WHERE r.outcome = 'completed' AND r.job_id % sm.every = 0
        GROUP BY r.m
    )
    SELECT g.m, coalesce(c.delivered, 0), coalesce(c.failed, 0), l.lag_avg::float8, l.lag_max::float8
    FROM bounds b
    CROSS JOIN LATERAL generate_series(b.since, date_trunc('minute', now()), interval '1 minute') AS g(m)
    LEFT JOIN counts c ON c.m = g.m
    LEFT JOIN lags l ON l.m = g.m
    ORDER BY g.m
$$;

-- observer_console_observers(): every observer with its jobs waiting (pending), running and dead,
-- and the last error of its newest dead job (read backwards from jobs_dead_observer, one row per
-- observer). Finished jobs are not counted (see the overview).
CREATE FUNCTION observer_console_observers()
RETURNS TABLE (name text, table_name text, enabled boolean, paused_reason text, action_type text,
               pending bigint, running bigint, dead bigint, last_error text, last_error_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT o.name, o.table_name, o.enabled, o.paused_reason, o.action ->> 'type',
           coalesce(p.n, 0), coalesce(r.n, 0), coalesce(d.n, 0), le.last_error, le.finished_at
    FROM observer.observers o
    LEFT JOIN (SELECT j.observer_id, count(*) AS n FROM observer.jobs j WHERE j.state = 'pending' GROUP BY 1) p
        ON p.observer_id = o.id
    LEFT JOIN (SELECT j.observer_id, count(*) AS n FROM observer.jobs j WHERE j.state = 'running' GROUP BY 1) r
        ON r.observer_id = o.id
    LEFT JOIN (SELECT j.observer_id, count(*) AS n FROM observer.jobs j WHERE j.state = 'dead' GROUP BY 1) d
        ON d.observer_id = o.id
    LEFT JOIN LATERAL (SELECT j.last_error, j.finished_at
                       FROM observer.jobs j WHERE j.state = 'dead' AND j.observer_id = o.id
                       ORDER BY j.finished_at DESC, j.id DESC LIMIT 1) le ON true
    ORDER BY o.name
$$;

-- Private until granted, as every function of the extension (roles.sql does it again, last, for a
-- fresh install; the update script appends this file after its own).
REVOKE ALL ON FUNCTION observer_console_record(text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION observer_console_actions(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION observer.console_completed(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION observer_console_overview() FROM PUBLIC;
REVOKE ALL ON FUNCTION observer_console_series(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION observer_console_observers() FROM PUBLIC;
