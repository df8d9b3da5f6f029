-- The dead-letter queue, replay and backfill (leases and the heartbeat are in queue.sql).
--
-- A dead job stays in observer.jobs (state 'dead') with its last error, and every attempt stays
-- in observer.attempts; its event is never pruned while the job is dead, so the payload can be
-- replayed. A retried dead job keeps its idempotency key, so the receiver sees the same
-- webhook-id, and gets a fresh attempt budget (attempts_allowed) while its attempt numbers keep
-- counting, so no attempt's record is overwritten.

-- observer.dlq_match: the dead jobs a DLQ call is about. At least one filter is required, or
-- all_jobs => true, so that no call touches the whole queue by accident.
CREATE FUNCTION observer.dlq_match(job_ids bigint[], observer text, since timestamptz, until timestamptz,
                                   error_like text, all_jobs boolean)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF job_ids IS NULL AND observer IS NULL AND since IS NULL AND until IS NULL AND error_like IS NULL
       AND NOT coalesce(all_jobs, false) THEN
        RAISE EXCEPTION 'no dead-letter filter given'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass job_ids, observer, since, until or error_like, or all_jobs => true for every dead job.';
    END IF;
    IF observer IS NOT NULL AND NOT EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = dlq_match.observer) THEN
        PERFORM observer.unknown_observer(observer);
    END IF;
    RETURN QUERY
    SELECT j.id FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
    WHERE j.state = 'dead'
      AND (job_ids IS NULL OR j.id = ANY (job_ids))
      AND (dlq_match.observer IS NULL OR o.name = dlq_match.observer)
      AND (since IS NULL OR j.finished_at >= since)
      AND (until IS NULL OR j.finished_at < until)
      AND (error_like IS NULL OR j.last_error ILIKE error_like);
END
$$;

-- observer.dlq_page(observer, since, until, error_like, max_rows): the dead jobs of one page of
-- observer_dlq_list, newest first, read through the dead jobs' own indexes (jobs_dead, or
-- jobs_dead_observer for one observer's) in that order, the time range as the index's range, so
-- that the first page costs the same with ten million finished jobs in the table as with none
-- (benches/console.sh). Planned for each call with its values (EXECUTE): planned without them
-- (a SQL function's plan), the time range looks like a few rows and the plan sorted every dead
-- job (1.1 s for 100,000). A function of its own because PL/pgSQL refuses observer_dlq_list's
-- signature (observer names both an argument and a result column).
CREATE FUNCTION observer.dlq_page(observer_name text, since timestamptz, until timestamptz, error_like text,
                                  max_rows integer)
RETURNS SETOF observer.jobs
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE $q$
        SELECT j.* FROM observer.jobs j
        WHERE j.state = 'dead'
          AND ($1 IS NULL OR j.observer_id = (SELECT o.id FROM observer.observers o WHERE o.name = $1))
          AND j.finished_at >= coalesce($2, '-infinity') AND j.finished_at < coalesce($3, 'infinity')
          AND ($4 IS NULL OR j.last_error ILIKE $4)
        ORDER BY j.finished_at DESC, j.id DESC
        LIMIT $5
    $q$ USING observer_name, since, until, error_like, max_rows;
END
$$;

-- observer_dlq_list(observer, since, until, error_like, max_rows): the newest dead jobs first
-- (observer.dlq_page), by when they died, with the payload each would deliver. Unlike the calls
-- that change dead jobs, it needs no filter (it reads one page).
CREATE FUNCTION observer_dlq_list(observer text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                  until timestamptz DEFAULT NULL, error_like text DEFAULT NULL,
                                  max_rows integer DEFAULT 100)
RETURNS TABLE (job_id bigint, observer text, event_id bigint, attempts integer, last_error text,
               failed_at timestamptz, idempotency_key text, payload jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- An unknown observer raises (42704), as in the other DLQ calls.
    SELECT observer.unknown_observer($1)
    WHERE $1 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = $1);
    -- The page first, then its events, read together and never failing on one that cannot be
    -- read (observer.events_safe: its job is listed with its payload's rows empty).
    WITH page AS MATERIALIZED (
        SELECT * FROM observer.dlq_page($1, $2, $3, $4, $5)
    ), evs AS MATERIALIZED (
        SELECT * FROM observer.events_safe(ARRAY(SELECT p.event_id FROM page p WHERE p.event_id IS NOT NULL))
    )
    SELECT p.id, o.name, p.event_id, p.attempt, p.last_error, p.finished_at, p.idempotency_key,
           observer.job_payload(o.name, o.columns, o.key_columns, p.event_id, p.payload, p.created_at,
                                e.id, e.created_at, e.table_name, e.op, e.old, e.new, e.oversize,
                                e.tx, e.role, e.context, p.attempt)
    FROM page p
    JOIN observer.observers o ON o.id = p.observer_id
    LEFT JOIN evs e ON e.id = p.event_id
    ORDER BY p.finished_at DESC, p.id DESC
$$;

-- observer_dlq_show(job_id): one dead job, as `fraiseql-observers dlq show` prints it: its
-- observer, event, attempts, last error, when it died and webhook-id, the payload as it was
-- delivered and its attempt log (observer.attempts, in attempt order). The event is read with
-- observer.events_safe, as observer_dlq_list reads it: a job whose event cannot be read is shown
-- with its payload's rows empty instead of failing. A job that is not dead (or does not exist)
-- raises 42704, as observer_debug_event does for an unknown event.
CREATE FUNCTION observer_dlq_show(job_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    j      observer.jobs;
    o      observer.observers;
    e      observer.decoded_event;
    result jsonb;
BEGIN
    SELECT * INTO j FROM observer.jobs x WHERE x.id = observer_dlq_show.job_id AND x.state = 'dead';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % is not in the dead-letter queue', job_id USING ERRCODE = 'undefined_object',
            HINT = 'observer_dlq_list() shows the dead jobs.';
    END IF;
    SELECT * INTO o FROM observer.observers x WHERE x.id = j.observer_id;
    IF j.event_id IS NOT NULL THEN
        SELECT * INTO e FROM observer.events_safe(ARRAY[j.event_id]);
    END IF;
    SELECT jsonb_build_object(
        'job_id', j.id, 'observer', o.name, 'event_id', j.event_id, 'attempts', j.attempt,
        'last_error', j.last_error, 'failed_at', j.finished_at, 'idempotency_key', j.idempotency_key,
        'payload', observer.job_payload(o.name, o.columns, o.key_columns, j.event_id, j.payload, j.created_at,
                                        e.id, e.created_at, e.table_name, e.op, e.old, e.new, e.oversize,
                                        e.tx, e.role, e.context, j.attempt),
        'attempt_log', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'attempt', a.attempt, 'outcome', a.outcome, 'status', a.status,
                'endpoint', a.endpoint, 'duration_ms', a.duration_ms, 'error', a.error,
                'worker', a.worker, 'finished_at', a.finished_at) ORDER BY a.attempt)
            FROM observer.attempts a WHERE a.job_id = j.id), '[]'))
    INTO result;
    RETURN result;
END
$$;

-- observer_dlq_match(...): the ids of the dead jobs that observer_dlq_retry or observer_dlq_purge
-- with the same arguments would touch now, in id order; changes nothing. The same filters and
-- refusals (no filter without all_jobs => true: 22023; an unknown observer: 42704), so a caller
-- can count the jobs, or work through them in chunks, before it retries or purges them.
CREATE FUNCTION observer_dlq_match(job_ids bigint[] DEFAULT NULL, observer text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                   error_like text DEFAULT NULL, all_jobs boolean DEFAULT false)
RETURNS TABLE (job_id bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m FROM observer.dlq_match(job_ids, observer, since, until, error_like, all_jobs) m ORDER BY m
$$;

-- observer_dlq_retry(...): dead jobs back to the queue, due now (held if their observer is
-- paused, until observer_resume), with the same webhook-id and a fresh budget of their
-- observer's max_attempts. Returns the number of jobs requeued.
CREATE FUNCTION observer_dlq_retry(job_ids bigint[] DEFAULT NULL, observer text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                   error_like text DEFAULT NULL, all_jobs boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE observer.jobs j
    SET state = 'pending', run_at = CASE WHEN o.paused_at IS NULL THEN clock_timestamp() ELSE 'infinity' END,
        finished_at = NULL, lease_until = NULL,
        attempts_allowed = j.attempt + o.max_attempts
    FROM observer.observers o
    WHERE o.id = j.observer_id AND j.state = 'dead'  -- rechecked: a concurrent retry or purge may have won
      AND j.id IN (SELECT observer.dlq_match(job_ids, observer, since, until, error_like, all_jobs));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM observer.wake_workers();
    END IF;
    RETURN n;
END
$$;

-- observer_dlq_purge(...): delete dead jobs (with their attempts). Returns the number deleted.
CREATE FUNCTION observer_dlq_purge(job_ids bigint[] DEFAULT NULL, observer text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                   error_like text DEFAULT NULL, all_jobs boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    DELETE FROM observer.jobs j
    WHERE j.state = 'dead'  -- rechecked: a concurrent retry may have requeued it
      AND j.id IN (SELECT observer.dlq_match(job_ids, observer, since, until, error_like, all_jobs));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- observer.batch_payload(event_ids, observer, attempt): what observer_claim hands out for a
-- batch job: its events' documents, in id order, each with its own webhook-id, for attempt
-- `attempt`, as the dispatcher makes them (observer_dispatch, made_batches) from the events it
-- has decoded; NULL when one of them cannot be read any more (or is gone).
CREATE FUNCTION observer.batch_payload(event_ids bigint[], o observer.observers, attempt integer) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN count(*) = cardinality(event_ids) AND bool_and(e.error IS NULL) THEN
        '[' || string_agg(observer.event_document(o.name, o.columns, o.key_columns, e.id, e.created_at,
                                                  e.table_name, e.op, e.old, e.new, e.oversize, e.tx,
                                                  e.role, e.context, attempt, 'evt_' || e.id || '_' || o.id),
                          ',' ORDER BY e.id) || ']' END
    FROM observer.events_safe(event_ids) e
$$;

-- observer_replay(observer, since, until): send again the events of the observer's table
-- captured in [since, until) that match it now (its current events, condition and filters):
-- a finished job (completed or dead) goes back to the queue with the same webhook-id and a fresh
-- attempt budget; an event without a job (the condition was false then, the observer did not
-- exist or was disabled) gets one. Pending and running jobs are left alone; events already
-- pruned (fraiseql_observers.event_retention) cannot be replayed. Returns the number of jobs
-- queued.
-- An event delivered in a batch job (queue.sql, "Batch jobs") has no job of its own. A completed
-- batch job whose first event is replayed goes back to the queue whole, as a finished job does:
-- the same webhook-id, its attempts kept and counting on, its documents made again
-- (observer.batch_payload: its completion cleared them). That is every replay but one after a
-- change of the observer's condition (a batch job's events are one statement's: all or none are
-- in the time range, all have the same operation); it then also sends the events of the batch
-- that no longer match: the batch job holds its first event's place in the jobs
-- (jobs_event_observer), so that event can have no job of its own, and sending it again must not
-- lose its batch's history. The replayed events of a completed batch job whose first event is
-- not replayed get jobs of their own, whose webhook-id is theirs in the batch
-- (evt_<event>_<observer>); an event of a pending or running batch job is left to it.
CREATE FUNCTION observer_replay(observer text, since timestamptz, until timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o     observer.observers;
    done  pg_snapshot;
    n_old bigint;
    n_new bigint;
BEGIN
    SELECT * INTO o FROM observer.observers x WHERE x.name = observer_replay.observer;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(observer);
    END IF;
    IF o.table_oid IS NULL THEN
        RAISE EXCEPTION 'observer "%" is a job queue: it has no events to replay', observer
            USING ERRCODE = 'wrong_object_type', HINT = 'Use observer_dlq_retry() for its dead jobs.';
    END IF;
    IF since IS NULL OR since >= coalesce(until, 'infinity') THEN
        RAISE EXCEPTION 'replay needs since < until' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.done_snapshot INTO done FROM observer.dispatch_state s;
    CREATE TEMP TABLE IF NOT EXISTS fraiseql_replay (event_id bigint PRIMARY KEY, ordering_key text) ON COMMIT DROP;
    TRUNCATE fraiseql_replay;
    INSERT INTO fraiseql_replay
    SELECT e.id, observer.fifo_key(o.fifo, o.ordering_path, e.table_name, o.key_columns, e.op, e.old, e.new)
    FROM observer.event_log l
    -- Each event_log row read on its own (observer.decode_log): an event that still cannot be
    -- read stays quarantined and the others are replayed.
    CROSS JOIN LATERAL observer.decode_log(l.id, coalesce(l.nrows, 1)) e
    WHERE l.table_oid = o.table_oid AND l.created_at >= since AND l.created_at < coalesce(until, 'infinity')
      AND pg_visible_in_snapshot(l.tx, done)          -- dispatched: never race the dispatcher
      AND e.error IS NULL
      AND e.op = ANY (o.events)
      AND observer.decide(e.op, e.table_name, e.old, e.new,
                          CASE WHEN e.op = 'UPDATE' THEN observer.changed(e.old, e.new) END,
                          o.condition, o.changed_columns, e.oversize, e.tx, e.role, e.context) IS TRUE;
    -- A quarantined event that can be read now is no longer set aside.
    DELETE FROM observer.skipped s USING fraiseql_replay r
    WHERE s.event_id = r.event_id AND s.observer_id = o.id AND s.reason = 'undecodable';
    -- Completed batch jobs whose first event is replayed go back whole. The claim hands a batch
    -- job's documents out as they are: made for its next attempt.
    UPDATE observer.jobs j
    SET state = 'pending', run_at = observer.due_at(o.paused_at), finished_at = NULL, lease_until = NULL,
        attempts_allowed = j.attempt + o.max_attempts,
        documents = observer.batch_payload(j.event_ids, o, j.attempt + 1)
    FROM fraiseql_replay r
    WHERE j.observer_id = o.id AND j.event_id = r.event_id AND j.state = 'completed' AND j.event_ids IS NOT NULL;
    GET DIAGNOSTICS n_old = ROW_COUNT;
    -- Finished jobs of their own, but not of an event that just went back in its batch (a job
    -- of its own from an earlier replay): it would go out twice.
    UPDATE observer.jobs j
    SET state = 'pending', run_at = observer.due_at(o.paused_at), finished_at = NULL, lease_until = NULL,
        attempts_allowed = j.attempt + o.max_attempts
    FROM fraiseql_replay r
    WHERE j.observer_id = o.id AND j.event_id = r.event_id AND j.state IN ('completed', 'dead')
      AND j.event_ids IS NULL
      AND NOT EXISTS (SELECT 1 FROM observer.event_jobs(j.event_id, o.id) b
                      WHERE b.event_ids IS NOT NULL AND b.state = 'pending');
    GET DIAGNOSTICS n_new = ROW_COUNT;
    n_old := n_old + n_new;
    -- A batch job one of whose events cannot be read any more (its array could not be made) goes
    -- as its events' jobs: that event to the dead-letter queue with its reason at its claim, the
    -- others delivered (observer.split_batches; the batch's attempts stay with its first event's).
    PERFORM observer.split_batches(ARRAY(
        SELECT j.id FROM observer.jobs j
        WHERE j.observer_id = o.id AND j.event_ids IS NOT NULL AND j.state = 'pending' AND j.documents IS NULL
        FOR UPDATE));
    -- The statements above have put back every completed batch job whose first event is replayed:
    -- the events of the batch jobs that are not completed now are theirs to deliver.
    INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key, priority, run_at)
    SELECT o.id, r.event_id, 'evt_' || r.event_id || '_' || o.id, r.ordering_key, o.priority, observer.due_at(o.paused_at)
    FROM fraiseql_replay r
    WHERE NOT EXISTS (SELECT 1 FROM observer.event_jobs(r.event_id, o.id) b
                      WHERE b.event_ids IS NOT NULL AND b.state <> 'completed')
    ORDER BY r.event_id
    ON CONFLICT (event_id, observer_id) WHERE event_id IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS n_new = ROW_COUNT;
    IF n_old + n_new > 0 THEN
        PERFORM observer.wake_workers();
    END IF;
    RETURN n_old + n_new;
END
$$;

-- observer_backfill(observer, max_rows): the rows already in the observer's table, as jobs of
-- this observer only (other observers of the table are not involved): each delivers
-- {"observer", "table", "op": "BACKFILL", "old": null, "new": row} as its data, filtered by the
-- observer's condition (evaluated with op "BACKFILL") and columns. Works in primary-key order,
-- max_rows per call, and remembers where it stopped (observer.backfills): call it until it
-- returns done = true; a call repeated after a crash sends nothing twice (each row's job has an
-- idempotency key). Live changes keep flowing meanwhile, so a row written during the backfill may
-- arrive both as a change and as a backfilled row (with its state when the batch ran): receivers
-- keep the newest. restart => true starts a new run from the first row.
CREATE FUNCTION observer_backfill(observer text, max_rows integer DEFAULT 10000, restart boolean DEFAULT false)
RETURNS TABLE (rows_queued bigint, rows_total bigint, done boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o       observer.observers;
    b       observer.backfills;
    keys    text;
    keyvals text;
    cmp     text;
    batch   jsonb;
    n       bigint;
BEGIN
    SELECT * INTO o FROM observer.observers x WHERE x.name = observer_backfill.observer;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(observer);
    END IF;
    IF o.table_oid IS NULL THEN
        RAISE EXCEPTION 'observer "%" is a job queue: it has no table to backfill', observer
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF o.key_columns IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', o.table_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A backfill walks the table in primary-key order so that it can resume; add a primary key.';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > 1000000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 1000000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO b FROM observer.backfills x WHERE x.observer_id = o.id FOR UPDATE;
    IF NOT FOUND OR restart OR b.finished_at IS NOT NULL THEN
        INSERT INTO observer.backfills AS x (observer_id, run)
        VALUES (o.id, coalesce(b.run, 0) + 1)
        ON CONFLICT (observer_id) DO UPDATE SET run = x.run + 1, last_key = NULL, rows_sent = 0,
                                                started_at = now(), finished_at = NULL
        RETURNING * INTO b;
    END IF;

    -- (k1, k2) > (last k1, last k2), the last values cast to the columns' types.
    -- A domain key is compared as its base type: casting to the domain would run its CHECK
    -- constraints, which the table's owner writes, as the admin calling this.
    SELECT string_agg(format('t.%I', k), ', ' ORDER BY ord),
           string_agg(format('($1 ->> %s)::%s', ord - 1,
                             format_type(CASE WHEN t.typtype = 'd' THEN getbase.oid ELSE a.atttypid END,
                                         CASE WHEN t.typtype = 'd' THEN -1 ELSE a.atttypmod END)), ', ' ORDER BY ord)
    INTO keys, keyvals
    FROM unnest(o.key_columns) WITH ORDINALITY AS c(k, ord)
    JOIN pg_attribute a ON a.attrelid = o.table_oid AND a.attname = c.k
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN LATERAL (
        WITH RECURSIVE chain(oid, typtype, base) AS (
            SELECT t.oid, t.typtype, t.typbasetype
            UNION ALL
            SELECT bt.oid, bt.typtype, bt.typbasetype FROM chain JOIN pg_type bt ON bt.oid = chain.base
            WHERE chain.typtype = 'd')
        SELECT chain.oid FROM chain WHERE chain.typtype <> 'd' LIMIT 1) getbase ON true;
    cmp := CASE WHEN b.last_key IS NULL THEN 'true' ELSE format('(%s) > (%s)', keys, keyvals) END;
    -- Rows become JSON without running the table owner's code (observer_row_to_jsonb).
    EXECUTE format('SELECT coalesce(jsonb_agg(r ORDER BY ord), ''[]'') FROM (
                        SELECT @extschema@.observer_row_to_jsonb(t) AS r, row_number() OVER (ORDER BY %1$s) AS ord
                        FROM %2$s t WHERE %3$s ORDER BY %1$s LIMIT %4$s) s',
                   keys, o.table_oid::regclass, cmp, max_rows)
    INTO batch USING b.last_key;
    n := jsonb_array_length(batch);

    INSERT INTO observer.jobs (observer_id, payload, idempotency_key, unique_key, ordering_key, priority, run_at)
    SELECT o.id,
           jsonb_build_object('observer', o.name, 'table', o.table_name, 'op', 'BACKFILL', 'old', NULL,
                              'new', observer.project(r, o.columns, o.key_columns)),
           'bf_' || o.id || '_' || b.run || '_' || md5(observer.ordering_key(o.table_name, o.key_columns, NULL, r)),
           'backfill:' || b.run || ':' || observer.ordering_key(o.table_name, o.key_columns, NULL, r),
           observer.fifo_key(o.fifo, o.ordering_path, o.table_name, o.key_columns, 'BACKFILL', NULL, r),
           o.priority, observer.due_at(o.paused_at)
    FROM jsonb_array_elements(batch) WITH ORDINALITY AS x(r, ord)
    WHERE observer.decide('BACKFILL', o.table_name, NULL, r, NULL, o.condition, NULL, NULL, NULL, NULL, NULL) IS TRUE
    ORDER BY ord
    ON CONFLICT (observer_id, unique_key) WHERE unique_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS rows_queued = ROW_COUNT;

    UPDATE observer.backfills x SET
        last_key = CASE WHEN n > 0 THEN (SELECT jsonb_agg(batch -> (n::integer - 1) -> k ORDER BY ord)
                                          FROM unnest(o.key_columns) WITH ORDINALITY AS c(k, ord))
                        ELSE x.last_key END,
        rows_sent = x.rows_sent + rows_queued,
        finished_at = CASE WHEN n < max_rows THEN now() END
    WHERE x.observer_id = o.id
    RETURNING x.rows_sent, x.finished_at IS NOT NULL INTO rows_total, done;
    IF rows_queued > 0 THEN
        PERFORM observer.wake_workers();
    END IF;
    RETURN NEXT;
END
$$;
