-- observer_status(): what an operator asks first. One jsonb document so that later additions
-- (workers, breakers, DLQ) extend it without breaking callers.
--   jobs        counts by state, over all observers
--   observers   per observer: counts by state, condition_unknown and deduplicated decisions
--   events      captured events kept, the oldest one's time, and how many are not dispatched yet
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

CREATE FUNCTION observer_status() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH per_observer AS (
        SELECT o.name, o.table_name, o.enabled, o.paused_at, o.paused_reason,
               count(j.id) FILTER (WHERE j.state = 'pending')   AS pending,
               count(j.id) FILTER (WHERE j.state = 'running')   AS running,
               count(j.id) FILTER (WHERE j.state = 'completed') AS completed,
               count(j.id) FILTER (WHERE j.state = 'dead')      AS dead,
               (SELECT count(*) FROM observer.skipped s WHERE s.observer_id = o.id AND s.reason = 'condition_unknown') AS condition_unknown,
               (SELECT count(*) FROM observer.skipped s WHERE s.observer_id = o.id AND s.reason IN ('deduplicated', 'coalesced')) AS deduplicated
        FROM observer.observers o
        LEFT JOIN observer.jobs j ON j.observer_id = o.id
        GROUP BY o.id
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
        'observers', coalesce(jsonb_agg(jsonb_build_object(
            'name', p.name, 'table', p.table_name, 'enabled', p.enabled,
            'paused_at', p.paused_at, 'paused_reason', p.paused_reason,
            'pending', p.pending, 'running', p.running, 'completed', p.completed, 'dead', p.dead,
            'condition_unknown', p.condition_unknown, 'deduplicated', p.deduplicated)
            ORDER BY p.name) FILTER (WHERE p.name IS NOT NULL), '[]'),
        'audit', jsonb_build_object(
            'export_on', observer.setting_on('fraiseql_observers.audit_export', false),
            'export_pending', (SELECT count(*) FROM observer.audit_outbox x WHERE x.refused IS NULL),
            'export_refused', (SELECT count(*) FROM observer.audit_outbox x WHERE x.refused IS NOT NULL),
            'search_on', observer.setting_on('fraiseql_observers.audit_search', true)),
        'breakers', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'worker', b.worker, 'endpoint', b.endpoint, 'state', b.state, 'failures', b.failures,
                'open_until', b.open_until, 'reported_at', b.reported_at) ORDER BY b.endpoint, b.worker), '[]')
            FROM observer.breakers b),
        'events', (SELECT jsonb_build_object(
            'kept', (SELECT coalesce(sum(coalesce(l.nrows, 1)), 0) FROM observer.event_log l),
            'oldest_at', (SELECT min(l.created_at) FROM observer.event_log l),
            'undispatched', u.events)
            FROM undispatched u),
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
            -- Healthy: a round ran recently (rounds run at least every dispatch_interval, and
            -- at least once a second while idle writes are throttled) or nothing waits.
            'healthy', u.events = 0 OR st.last_round_at > clock_timestamp() - make_interval(secs => greatest(5, 3 * i.ms / 1000.0)))
            FROM st, undispatched u, bgworker b, interval_setting i))
    FROM per_observer p
$$;
