-- Dispatch: turn committed events into jobs, commit-order safe.
--
-- Event ids are taken before commit, so "id > last id" would skip a transaction that commits late.
-- Instead a round works between two snapshots, the technique of Skytools PgQ ticks: it takes the
-- events whose transaction is visible in the target snapshot and was not visible in the last one
-- done. Only two kinds of transactions can be in that set: those still in progress when the last
-- snapshot was taken (its xip list, looked up by index) and those that started after it
-- ([done.xmax, target.xmax)). A transaction left open for hours stays in the xip list, costs one
-- index probe a round, and delays nobody else's events.
--
-- Jobs and the checkpoint are written in the same transaction, so a crash at any point either
-- keeps both or neither; UNIQUE (event_id, observer_id) makes a repeated round harmless anyway.

-- Advisory lock key (the first 8 bytes of md5('fraiseql_observers.dispatch')): one dispatcher at a
-- time per database, whether the background worker or an external worker runs the round.
CREATE FUNCTION observer.dispatch_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 7460944093541646447;

-- observer.changed(old, new): names of the columns an UPDATE changed (NULL for other operations).
CREATE FUNCTION observer.changed(old jsonb, new jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN old IS NULL OR new IS NULL THEN NULL
            ELSE ARRAY(SELECT n.key FROM jsonb_each(new) n WHERE n.value IS DISTINCT FROM old -> n.key ORDER BY n.key)
       END;

-- observer.decide(event, observer...): the one place where an event meets an observer.
-- TRUE = make a job, FALSE = no job (condition false, or none of changed_columns changed),
-- NULL = the condition's result is unknown (a type mismatch or a structural error on this row;
-- recorded in observer.condition_errors). The condition sees {op, table, old, new, changed}.
CREATE FUNCTION observer.decide(op text, table_name text, old jsonb, new jsonb, changed text[],
                                condition jsonpath, changed_columns text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN changed_columns IS NOT NULL AND op = 'UPDATE' AND NOT (changed && changed_columns) THEN false
            WHEN condition IS NULL THEN true
            ELSE jsonb_path_match(jsonb_build_object('op', op, 'table', table_name, 'old', old, 'new', new,
                                                     'changed', to_jsonb(changed)),
                                  condition, '{}', true)
       END;

-- observer.ordering_key: table + primary key values, the default per-key FIFO key (NULL when the
-- table has no primary key).
CREATE FUNCTION observer.ordering_key(table_name text, key_columns text[], old jsonb, new jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN key_columns IS NULL THEN NULL
            ELSE table_name || ':' || (SELECT jsonb_agg(coalesce(new, old) -> k ORDER BY ord)::text
                                       FROM unnest(key_columns) WITH ORDINALITY AS c(k, ord))
       END;

-- observer.dispatch_batch: one page of the batch between `done` and `target`, in event id order.
-- Within a batch, id order is commit order for any one row: a second writer of a row waits for
-- the first one's commit before its own trigger runs and takes a later id.
CREATE FUNCTION observer.dispatch_batch(done pg_snapshot, target pg_snapshot, after_id bigint, max_events integer)
RETURNS SETOF observer.events
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.*
    FROM observer.events e
    WHERE ((e.tx >= pg_snapshot_xmax(done) AND e.tx < pg_snapshot_xmax(target))
           OR e.tx = ANY (ARRAY(SELECT pg_snapshot_xip(done))))
      AND pg_visible_in_snapshot(e.tx, target)
      AND e.id > after_id
    ORDER BY e.id
    LIMIT max_events
$$;

CREATE FUNCTION observer_dispatch(max_events integer DEFAULT 10000, dispatcher text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    st        observer.dispatch_state;
    target    pg_snapshot;
    n_events  bigint := 0;
    n_jobs    bigint := 0;
    last_id   bigint;
    done      boolean;
    msg       text;
    d         record;
    matched   boolean;
BEGIN
    IF max_events IS NULL OR max_events < 1 THEN
        RAISE EXCEPTION 'max_events must be a positive integer, not %', coalesce(max_events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Another dispatcher holds the round: not an error, there is simply nothing for us to do.
    IF NOT pg_try_advisory_xact_lock(observer.dispatch_lock_key()) THEN
        RETURN 0;
    END IF;

    SELECT * INTO STRICT st FROM observer.dispatch_state FOR UPDATE;
    target := coalesce(st.batch_snapshot, pg_current_snapshot());

    BEGIN
        WITH batch AS MATERIALIZED (
            SELECT e.*, CASE WHEN e.op = 'UPDATE' THEN observer.changed(e.old, e.new) END AS changed
            FROM observer.dispatch_batch(st.done_snapshot, target, st.batch_cursor, max_events) e
        ), decisions AS MATERIALIZED (
            SELECT b.id AS event_id, o.id AS observer_id,
                   observer.decide(b.op, b.table_name, b.old, b.new, b.changed, o.condition, o.changed_columns) AS matched,
                   observer.ordering_key(b.table_name, o.key_columns, b.old, b.new) AS ordering_key
            FROM batch b
            JOIN observer.observers o
              ON o.table_oid = b.table_oid AND o.enabled AND b.op = ANY (o.events)
        ), errs AS (
            INSERT INTO observer.condition_errors (event_id, observer_id)
            SELECT event_id, observer_id FROM decisions WHERE matched IS NULL
            ON CONFLICT DO NOTHING
        ), made AS (
            INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key)
            SELECT observer_id, event_id, 'evt_' || event_id || '_' || observer_id, ordering_key
            FROM decisions WHERE matched
            ORDER BY event_id, observer_id
            ON CONFLICT (event_id, observer_id) DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM made)
        INTO n_events, last_id, n_jobs;
    EXCEPTION WHEN OTHERS THEN
        -- A condition raised despite silent mode, or a row broke the set-based path: decide
        -- event by event so that one bad event is recorded and every other one still goes on.
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE WARNING 'fraiseql_observers: dispatch batch failed (%), deciding event by event', msg;
        n_events := 0;
        n_jobs := 0;
        last_id := NULL;
        FOR d IN
            SELECT b.id AS event_id, o.id AS observer_id, b.op, b.table_name, b.old, b.new,
                   o.condition, o.changed_columns, o.key_columns
            FROM observer.dispatch_batch(st.done_snapshot, target, st.batch_cursor, max_events) b
            LEFT JOIN observer.observers o
              ON o.table_oid = b.table_oid AND o.enabled AND b.op = ANY (o.events)
            ORDER BY b.id, o.id
        LOOP
            IF last_id IS DISTINCT FROM d.event_id THEN
                n_events := n_events + 1;
                last_id := d.event_id;
            END IF;
            CONTINUE WHEN d.observer_id IS NULL;
            BEGIN
                matched := observer.decide(d.op, d.table_name, d.old, d.new,
                                           CASE WHEN d.op = 'UPDATE' THEN observer.changed(d.old, d.new) END,
                                           d.condition, d.changed_columns);
                IF matched THEN
                    INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key)
                    VALUES (d.observer_id, d.event_id, 'evt_' || d.event_id || '_' || d.observer_id,
                            observer.ordering_key(d.table_name, d.key_columns, d.old, d.new))
                    ON CONFLICT (event_id, observer_id) DO NOTHING;
                    n_jobs := n_jobs + 1;
                END IF;
            EXCEPTION WHEN OTHERS THEN
                matched := NULL;
            END;
            IF matched IS NULL THEN
                INSERT INTO observer.condition_errors (event_id, observer_id)
                VALUES (d.event_id, d.observer_id) ON CONFLICT DO NOTHING;
            END IF;
        END LOOP;
    END;

    -- A short page means the batch is complete: everything visible in `target` is done. A full
    -- page keeps the batch's snapshot and continues after its last id next round.
    done := n_events < max_events;
    UPDATE observer.dispatch_state SET
        done_snapshot     = CASE WHEN done THEN target ELSE done_snapshot END,
        batch_snapshot    = CASE WHEN done THEN NULL ELSE target END,
        batch_cursor      = CASE WHEN done THEN 0 ELSE last_id END,
        rounds            = rounds + 1,
        events_dispatched = events_dispatched + n_events,
        jobs_created      = jobs_created + n_jobs,
        last_round_at     = clock_timestamp(),
        last_event_at     = CASE WHEN n_events > 0 THEN clock_timestamp() ELSE last_event_at END,
        last_dispatcher   = coalesce(dispatcher, nullif(current_setting('application_name'), ''), session_user)
    WHERE singleton;

    IF n_jobs > 0 THEN
        -- Postgres folds identical notifications within a transaction: one wake-up per round.
        PERFORM pg_notify('fraiseql_observers_jobs', '');
    END IF;
    RETURN n_events;
END
$$;
