-- observer_status(): what an operator asks first. One jsonb document so that later additions
-- (workers, breakers, DLQ) extend it without breaking callers.

CREATE FUNCTION observer_status() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH per_observer AS (
        SELECT o.name, o.table_name, o.enabled,
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
        SELECT count(*) AS events, min(e.created_at) AS oldest
        FROM st, observer.dispatch_batch(st.done_snapshot, pg_current_snapshot(), st.batch_cursor, 1000000) e
    )
    SELECT jsonb_build_object(
        'jobs', jsonb_build_object(
            'pending',   coalesce(sum(p.pending), 0),
            'running',   coalesce(sum(p.running), 0),
            'completed', coalesce(sum(p.completed), 0),
            'dead',      coalesce(sum(p.dead), 0)),
        'observers', coalesce(jsonb_agg(jsonb_build_object(
            'name', p.name, 'table', p.table_name, 'enabled', p.enabled,
            'pending', p.pending, 'running', p.running, 'completed', p.completed, 'dead', p.dead,
            'condition_unknown', p.condition_unknown, 'deduplicated', p.deduplicated) ORDER BY p.name) FILTER (WHERE p.name IS NOT NULL), '[]'),
        'dispatch', (SELECT jsonb_build_object(
            'rounds', st.rounds,
            'events_dispatched', st.events_dispatched,
            'jobs_created', st.jobs_created,
            'last_round_at', st.last_round_at,
            'last_dispatcher', st.last_dispatcher,
            'undispatched_events', u.events,
            'oldest_undispatched_age_seconds',
                round(extract(epoch FROM clock_timestamp() - u.oldest)::numeric, 3))
            FROM st, undispatched u))
    FROM per_observer p
$$;
