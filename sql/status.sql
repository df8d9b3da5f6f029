-- observer_status(): what an operator asks first. One jsonb document so that later additions
-- (workers, breakers, DLQ) extend it without breaking callers.
--   jobs        counts by state, over all observers (completed estimated on a large table:
--               completed_estimated, observer.job_counts)
--   observers   per observer: counts by state, condition_unknown and deduplicated decisions
--   events      captured events kept, the oldest one's time, and how many are not dispatched yet
--               (kept and oldest_at estimated on a large log: estimated, observer.events_kept)
--   dispatch    checkpoint progress, lag (age of the oldest undispatched event), dispatcher health
--   breakers    each worker's circuit breakers, as last reported

-- observer_report_breakers(worker, endpoints, states, failures, open_until): a worker's circuit
-- breakers, replacing what it reported before.
CREATE FUNCTION observer_report_breakers(worker text, endpoints text[], states text[],
                                         failures integer[], open_until timestamptz[])
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    IF worker IS NULL OR worker = '' THEN
        RAISE EXCEPTION 'worker name is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(endpoints) IS DISTINCT FROM cardinality(states)
       OR cardinality(endpoints) IS DISTINCT FROM cardinality(failures)
       OR cardinality(endpoints) IS DISTINCT FROM cardinality(open_until) THEN
        RAISE EXCEPTION 'endpoints, states, failures and open_until must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM observer.breakers b WHERE b.worker = observer_report_breakers.worker;
    INSERT INTO observer.breakers (worker, endpoint, state, failures, open_until)
    SELECT observer_report_breakers.worker, u.e, u.s, u.f, u.o
    FROM unnest(endpoints, states, failures, open_until) AS u(e, s, f, o);
END
$$;

-- observer.job_counts(): jobs by observer and state, for observer_status(). Jobs waiting,
-- running and dead are counted exactly, each state through its partial index (jobs_ready,
-- jobs_leased, jobs_dead_observer). Completed jobs are counted exactly too while the table is
-- under 64 MB (about 400,000 jobs); above that a count would read the whole table on every call
-- (seconds at ten million jobs, and every worker reads the status every 5 s), so their total is the
-- table's live rows (pg_stat_get_live_tuples, kept by the server as rows come and go) less the
-- others, shared among the observers as in a sample of the table's pages (about 10,000 rows), and
-- `estimated` is true.
CREATE FUNCTION observer.job_counts()
RETURNS TABLE (observer_id bigint, pending bigint, running bigint, completed bigint, dead bigint,
               estimated boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    live double precision;
    pct  double precision;
BEGIN
    IF pg_relation_size('observer.jobs'::regclass) < 64 * 1024 * 1024 THEN
        RETURN QUERY
        SELECT j.observer_id,
               count(*) FILTER (WHERE j.state = 'pending'), count(*) FILTER (WHERE j.state = 'running'),
               count(*) FILTER (WHERE j.state = 'completed'), count(*) FILTER (WHERE j.state = 'dead'), false
        FROM observer.jobs j GROUP BY j.observer_id;
        RETURN;
    END IF;
    live := coalesce(nullif(pg_stat_get_live_tuples('observer.jobs'::regclass), 0),
                     (SELECT greatest(c.reltuples, 0) FROM pg_class c WHERE c.oid = 'observer.jobs'::regclass));
    pct := least(100, 100 * 10000 / greatest(live, 1));
    RETURN QUERY
    WITH unfinished AS (
        SELECT j.observer_id, count(*) FILTER (WHERE j.state = 'pending') AS pending,
               count(*) FILTER (WHERE j.state = 'running') AS running,
               count(*) FILTER (WHERE j.state = 'dead') AS dead
        -- The states as constants: the dead jobs are then counted from jobs_dead_observer alone
        -- (an index-only scan), not by reading a hundred thousand rows of the table.
        FROM (SELECT x.observer_id, 'pending' AS state FROM observer.jobs x WHERE x.state = 'pending'
              UNION ALL
              SELECT x.observer_id, 'running' FROM observer.jobs x WHERE x.state = 'running'
              UNION ALL
              SELECT x.observer_id, 'dead' FROM observer.jobs x WHERE x.state = 'dead') j
        GROUP BY j.observer_id
    ), sampled AS (
        SELECT j.observer_id, count(*) AS n
        FROM observer.jobs j TABLESAMPLE SYSTEM (pct)
        WHERE j.state = 'completed'
        GROUP BY j.observer_id
    ), total AS (
        SELECT greatest(live::bigint - coalesce(sum(u.pending + u.running + u.dead), 0), 0) AS completed,
               (SELECT greatest(sum(s.n), 1) FROM sampled s) AS sampled
        FROM unfinished u
    )
    SELECT coalesce(u.observer_id, s.observer_id), coalesce(u.pending, 0), coalesce(u.running, 0),
           round(t.completed * coalesce(s.n, 0) / t.sampled)::bigint, coalesce(u.dead, 0), true
    FROM unfinished u
    FULL JOIN sampled s ON s.observer_id = u.observer_id
    CROSS JOIN total t;
END
$$;

-- observer.events_kept(): the events kept and the oldest one's capture time, for
-- observer_status(). Exact while the event log is under 64 MB; above that (a sum over millions of
-- rows on every call) `kept` is the log's live rows (pg_stat_get_live_tuples) times the events per
-- row in a sample of its pages, `oldest_at` the oldest of its first 1,000 rows by id (retention
-- deletes from the oldest; a transaction open longer than those rows took to write could hold an
-- older one), and `estimated` is true.
CREATE FUNCTION observer.events_kept(OUT kept bigint, OUT oldest_at timestamptz, OUT estimated boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    live double precision;
BEGIN
    estimated := pg_relation_size('observer.event_log'::regclass) >= 64 * 1024 * 1024;
    IF NOT estimated THEN
        SELECT coalesce(sum(coalesce(l.nrows, 1)), 0), min(l.created_at) INTO kept, oldest_at
        FROM observer.event_log l;
        RETURN;
    END IF;
    live := coalesce(nullif(pg_stat_get_live_tuples('observer.event_log'::regclass), 0),
                     (SELECT greatest(c.reltuples, 0) FROM pg_class c WHERE c.oid = 'observer.event_log'::regclass));
    SELECT round(live * coalesce(avg(coalesce(l.nrows, 1)), 1))::bigint INTO kept
    FROM observer.event_log l TABLESAMPLE SYSTEM (least(100, 100 * 10000 / greatest(live, 1)));
    SELECT min(l.created_at) INTO oldest_at
    FROM (SELECT x.created_at FROM observer.event_log x ORDER BY x.id LIMIT 1000) l;
END
$$;

-- jit off: the plans of batch_logs (enable_seqscan off) and of the counts cost enough to be
-- compiled on every call, 90 ms of JIT for a call that then takes 10 ms (as observer_dispatch).
CREATE FUNCTION observer_status() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH counts AS MATERIALIZED (
        SELECT * FROM observer.job_counts()
    ), per_observer AS (
        SELECT o.name, o.table_name, o.enabled, o.paused_at, o.paused_reason,
               coalesce(c.pending, 0) AS pending, coalesce(c.running, 0) AS running,
               coalesce(c.completed, 0) AS completed, coalesce(c.dead, 0) AS dead,
               (SELECT count(*) FROM observer.skipped s WHERE s.observer_id = o.id AND s.reason = 'condition_unknown') AS condition_unknown,
               (SELECT count(*) FROM observer.skipped s WHERE s.observer_id = o.id AND s.reason = 'condition_timeout') AS condition_timeout,
               (SELECT count(*) FROM observer.skipped s WHERE s.observer_id = o.id AND s.reason IN ('deduplicated', 'coalesced')) AS deduplicated,
               (SELECT count(*) FROM observer.skipped s WHERE s.observer_id = o.id AND s.reason = 'undecodable') AS quarantined
        FROM observer.observers o
        LEFT JOIN counts c ON c.observer_id = o.id
    ), st AS (
        SELECT * FROM observer.dispatch_state
    ), undispatched AS (
        -- Capped at a million: beyond that the exact figure does not change what to do.
        SELECT coalesce(sum(coalesce(l.nrows, 1)), 0) AS events, min(l.created_at) AS oldest
        FROM st, observer.batch_logs(st.done_snapshot, pg_current_snapshot(), st.batch_cursor, 1000000) l
    ), bgworker AS (
        SELECT count(*) AS running FROM pg_stat_activity WHERE backend_type = 'fraiseql_observers dispatcher'
    ), interval_setting AS (
        SELECT coalesce((SELECT setting::integer FROM pg_settings WHERE name = 'fraiseql_observers.dispatch_interval'), 1000) AS ms
    )
    SELECT jsonb_build_object(
        'jobs', jsonb_build_object(
            'pending',   coalesce(sum(p.pending), 0),
            'running',   coalesce(sum(p.running), 0),
            'completed', coalesce(sum(p.completed), 0),
            'dead',      coalesce(sum(p.dead), 0)),
        -- true: jobs.completed and each observer's completed are estimates (observer.job_counts).
        'completed_estimated', coalesce((SELECT bool_or(c.estimated) FROM counts c), false),
        'observers', coalesce(jsonb_agg(jsonb_build_object(
            'name', p.name, 'table', p.table_name, 'enabled', p.enabled,
            'paused_at', p.paused_at, 'paused_reason', p.paused_reason,
            'pending', p.pending, 'running', p.running, 'completed', p.completed, 'dead', p.dead,
            'condition_unknown', p.condition_unknown, 'condition_timeout', p.condition_timeout,
            'deduplicated', p.deduplicated,
            'quarantined', p.quarantined)
            ORDER BY p.name) FILTER (WHERE p.name IS NOT NULL), '[]'),
        -- Roles other than superusers and the schema's owner that can CREATE in the extension's
        -- schema: they can add overloads of its functions that make the calls of the dispatcher
        -- and the workers ambiguous (docs/security.md). Should be empty.
        'schema_writable_by', (SELECT coalesce(jsonb_agg(r.rolname ORDER BY r.rolname), '[]')
            FROM pg_roles r
            WHERE NOT r.rolsuper AND r.rolname NOT LIKE 'pg\_%'
              AND r.oid <> (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@')
              AND has_schema_privilege(r.oid, '@extschema@', 'CREATE')),
        'audit', jsonb_build_object(
            'export_on', observer.setting_on('fraiseql_observers.audit_export', false),
            'export_pending', (SELECT count(*) FROM observer.audit_outbox x WHERE x.refused IS NULL),
            'export_refused', (SELECT count(*) FROM observer.audit_outbox x WHERE x.refused IS NOT NULL),
            'search_on', observer.setting_on('fraiseql_observers.audit_search', true)),
        -- Live workers: sessions named fraiseql-observers:<worker> (the worker sets it), with the
        -- jobs each holds now.
        'workers', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'worker', w.worker, 'sessions', w.sessions, 'connected_since', w.since, 'client', w.client,
                'running_jobs', (SELECT count(*) FROM observer.jobs j WHERE j.state = 'running' AND j.worker = w.worker))
                ORDER BY w.worker), '[]')
            FROM (SELECT substr(a.application_name, 20) AS worker, count(*) AS sessions,
                         min(a.backend_start) AS since, min(host(a.client_addr)) AS client
                  FROM pg_stat_activity a
                  WHERE a.application_name LIKE 'fraiseql-observers:%' AND a.datname = current_database()
                  GROUP BY 1) w),
        'breakers', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'worker', b.worker, 'endpoint', b.endpoint, 'state', b.state, 'failures', b.failures,
                'open_until', b.open_until, 'reported_at', b.reported_at) ORDER BY b.endpoint, b.worker), '[]')
            FROM observer.breakers b),
        'events', (SELECT jsonb_build_object(
            'kept', k.kept,
            'oldest_at', k.oldest_at,
            'undispatched', u.events,
            -- true: kept and oldest_at are estimates (observer.events_kept).
            'estimated', k.estimated)
            FROM undispatched u, observer.events_kept() k),
        'dispatch', (SELECT jsonb_build_object(
            'rounds', st.rounds,
            'fallback_rounds', st.fallback_rounds,
            'events_dispatched', st.events_dispatched,
            'jobs_created', st.jobs_created,
            'last_round_at', st.last_round_at,
            'last_dispatcher', st.last_dispatcher,
            'undispatched_events', u.events,
            'lag_seconds', coalesce(round(extract(epoch FROM clock_timestamp() - u.oldest)::numeric, 3), 0),
            'background_worker', b.running > 0,
            -- Events set aside because they could not be read (observer.skipped, 'undecodable').
            'quarantined_events', (SELECT count(DISTINCT s.event_id) FROM observer.skipped s WHERE s.reason = 'undecodable'),
            -- Sessions that have held the checkpoint row (the round's lock) for more than 5 s:
            -- no round can run meanwhile. Only the extension's owner and admins can lock it.
            'blocked_by', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'pid', a.pid, 'role', a.usename, 'application_name', a.application_name,
                    'state', a.state, 'xact_start', a.xact_start) ORDER BY a.pid), '[]')
                FROM pg_locks k JOIN pg_stat_activity a ON a.pid = k.pid
                WHERE k.locktype = 'relation' AND k.relation = 'observer.dispatch_state'::regclass
                  AND k.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
                  AND k.mode IN ('RowShareLock', 'RowExclusiveLock') AND k.granted
                  AND k.pid <> pg_backend_pid()
                  AND a.xact_start < clock_timestamp() - interval '5 seconds'),
            -- Healthy: a round ran recently (rounds run at least every dispatch_interval, and
            -- at least once a second while idle writes are throttled) or nothing waits.
            'healthy', u.events = 0 OR st.last_round_at > clock_timestamp() - make_interval(secs => greatest(5, 3 * i.ms / 1000.0)))
            FROM st, undispatched u, bgworker b, interval_setting i))
    FROM per_observer p
$$;

-- observer.event_jobs(event_id, observer_id): the jobs of one observer that deliver an event:
-- its own (event_id), and a batch job whose events include it (queue.sql, "Batch jobs": its
-- event_id is its first event, in the same event_log row, so both are found on the range of
-- jobs_event_observer from the event_log row's first id to the event's). Both at once only after
-- observer_replay made the event a job of its own out of a completed batch job. Inlined (no SET
-- clause).
CREATE FUNCTION observer.event_jobs(event_id bigint, observer_id bigint) RETURNS SETOF observer.jobs
LANGUAGE sql STABLE AS $$
    SELECT j.* FROM observer.jobs j
    WHERE j.observer_id OPERATOR(pg_catalog.=) event_jobs.observer_id
      AND j.event_id OPERATOR(pg_catalog.>=) observer.event_log_id(event_jobs.event_id)
      AND j.event_id OPERATOR(pg_catalog.<=) event_jobs.event_id
      AND (j.event_id OPERATOR(pg_catalog.=) event_jobs.event_id
           OR (j.event_ids IS NOT NULL AND event_jobs.event_id OPERATOR(pg_catalog.=) ANY (j.event_ids)))
$$;

-- observer.event_story(event, observer, dispatched, changed): one observer's part of
-- observer_debug_event: its decision about the event and why, and its jobs' state, attempts and
-- breakers.
CREATE FUNCTION observer.event_story(e observer.decoded_event, o observer.observers, dispatched boolean,
                                     changed text[]) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH jobs AS MATERIALIZED (
        -- n = 1: the job shown, its own when the event has one (the newer: see event_jobs).
        SELECT x.*, row_number() OVER (ORDER BY x.event_ids IS NOT NULL, x.id DESC) AS n
        FROM observer.event_jobs(e.id, o.id) x
    ), j AS (
        SELECT * FROM jobs WHERE n = 1
    ), s AS (
        SELECT * FROM observer.skipped x WHERE x.event_id = e.id AND x.observer_id = o.id
    )
    SELECT jsonb_build_object(
        'observer', o.name,
        'enabled', o.enabled,
        'paused_reason', o.paused_reason,
        'condition', o.condition::text,
        'decision', CASE
            WHEN j.id IS NOT NULL THEN 'job'
            WHEN s.reason IS NOT NULL THEN s.reason
            WHEN e.error IS NOT NULL THEN 'undecodable'
            WHEN o.created_at > e.created_at THEN 'observer_created_later'
            WHEN NOT (e.op = ANY (o.events)) THEN 'operation_not_observed'
            WHEN NOT dispatched THEN 'not_dispatched_yet'
            WHEN NOT o.enabled THEN 'disabled'
            WHEN observer.decide(e.op, e.table_name, e.old, e.new, changed, o.condition,
                                 o.changed_columns, e.oversize, e.tx, e.role, e.context) IS FALSE THEN 'condition_false'
            ELSE 'no_job' END,
        'deduplicated_into_job', s.job_id,
        'reason', s.detail,
        'job', CASE WHEN j.id IS NULL THEN NULL ELSE jsonb_build_object(
            'id', j.id, 'state', j.state, 'attempt', j.attempt, 'run_at', j.run_at,
            'webhook_id', j.idempotency_key, 'last_error', j.last_error, 'worker', j.worker,
            'lease_until', j.lease_until, 'finished_at', j.finished_at, 'snoozes', j.snoozes)
            || CASE WHEN j.event_ids IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('batch', jsonb_build_object(
                        'events', cardinality(j.event_ids), 'first_event_id', j.event_id)) END END,
        'attempts', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'job_id', a.job_id, 'attempt', a.attempt, 'outcome', a.outcome, 'status', a.status,
                'endpoint', a.endpoint, 'duration_ms', a.duration_ms, 'error', a.error,
                'worker', a.worker, 'finished_at', a.finished_at) ORDER BY jobs.n DESC, a.attempt)
            FROM jobs JOIN observer.attempts a ON a.job_id = jobs.id), '[]'),
        'breakers', coalesce((
            SELECT jsonb_agg(jsonb_build_object('worker', b.worker, 'endpoint', b.endpoint,
                                                'state', b.state, 'failures', b.failures,
                                                'open_until', b.open_until) ORDER BY b.worker)
            FROM observer.breakers b
            WHERE b.endpoint IN (SELECT DISTINCT a.endpoint FROM observer.attempts a
                                 WHERE a.job_id IN (SELECT jobs.id FROM jobs))), '[]'))
    FROM (SELECT 1) one
    LEFT JOIN j ON true
    LEFT JOIN s ON true
$$;

-- observer_debug_event(event_id): the whole story of one event, as jsonb — where it is and why.
--   event:       the change (table, op, transaction, time, rows) and whether it was dispatched
--   observers:   every observer of its table: the decision (job, condition_false,
--                condition_unknown, deduplicated, coalesced, operation_not_observed, disabled,
--                not_dispatched_yet) and, for a job, its state, attempts (status, endpoint,
--                timing, error) and the circuit breakers of its endpoint
-- The job of an event is its own, or the batch job that holds it (queue.sql, "Batch jobs"), whose
-- `job` says so (`batch`: how many events, the first one's id) and whose webhook-id is the
-- batch's. An event replayed out of a completed batch (observer_replay) has both: `job` is its
-- own, the newer; `attempts` are both jobs', the batch job's first, each with its job's id.
-- An unknown event (never captured, or pruned after fraiseql_observers.event_retention) raises
-- 42704 with a hint.
CREATE FUNCTION observer_debug_event(event_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e          observer.decoded_event;
    st         observer.dispatch_state;
    dispatched boolean;
    changed    text[];
    result     jsonb;
BEGIN
    SELECT * INTO e FROM observer.events_safe(ARRAY[event_id]);
    IF e.id IS NULL THEN
        RAISE EXCEPTION 'event % does not exist', event_id USING ERRCODE = 'undefined_object',
            HINT = 'Events are kept for fraiseql_observers.event_retention after dispatch; observer_status()->''events''->''oldest_at'' is the oldest one kept.';
    END IF;
    SELECT * INTO st FROM observer.dispatch_state;
    dispatched := pg_visible_in_snapshot(e.tx, st.done_snapshot)
                  OR (st.batch_snapshot IS NOT NULL AND pg_visible_in_snapshot(e.tx, st.batch_snapshot)
                      AND observer.event_log_id(e.id) <= st.batch_cursor);
    changed := CASE WHEN e.op = 'UPDATE' THEN observer.changed(e.old, e.new) END;
    SELECT jsonb_build_object(
        'event', jsonb_build_object(
            'id', e.id, 'table', e.table_name, 'op', e.op, 'captured_at', e.created_at,
            'transaction', jsonb_build_object('xid', e.tx::text, 'status', pg_xact_status(e.tx)),
            'dispatched', dispatched, 'changed', to_jsonb(changed), 'oversize', e.oversize,
            'old', e.old, 'new', e.new, 'error', e.error),
        'observers', coalesce(jsonb_agg(observer.event_story(e, o, dispatched, changed) ORDER BY o.name), '[]'))
    INTO result
    FROM observer.observers o
    WHERE o.table_oid = e.table_oid;
    RETURN result;
END
$$;
