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

-- observer.wake_workers(): NOTIFY fraiseql_observers_jobs, the workers' wake-up, unless the
-- server's notification queue is half full. A full queue fails the committing transaction ("too
-- many notifications in the NOTIFY queue"), and any login role can fill it (a listener that never
-- reads, and notifications on a channel of its own): a round or an enqueue must never fail for a
-- wake-up, which workers make up for by polling (poll_interval_ms).
CREATE FUNCTION observer.wake_workers() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('fraiseql_observers_jobs', '');
    END IF;
END
$$;

-- observer.changed(old, new): names of the columns an UPDATE changed (NULL for other operations).
CREATE FUNCTION observer.changed(old jsonb, new jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN old IS NULL OR new IS NULL THEN NULL
            ELSE ARRAY(SELECT n.key FROM jsonb_each(new) n WHERE n.value IS DISTINCT FROM old -> n.key ORDER BY n.key)
       END;

-- observer.change_context(tx, role, context): who made a change, as the delivered document and
-- conditions show it: {"txid": 123, "role": "app", "context": {...}}, each key only when known.
-- Inlined into decide and job_payload (no SET clause; STABLE, as jsonb_build_object is: declared
-- IMMUTABLE it was called as a function of its own for every claimed job).
CREATE FUNCTION observer.change_context(tx xid8, role text, context jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN tx IS NULL THEN '{}'::jsonb
            ELSE pg_catalog.jsonb_build_object('txid', tx::text::bigint) END
       OPERATOR(pg_catalog.||) CASE WHEN role IS NULL THEN '{}'::jsonb
                                    ELSE pg_catalog.jsonb_build_object('role', role) END
       OPERATOR(pg_catalog.||) CASE WHEN context IS NULL THEN '{}'::jsonb
                                    ELSE pg_catalog.jsonb_build_object('context', context) END;

-- observer.decide(event, observer...): the one place where an event meets an observer.
-- TRUE = make a job, FALSE = no job (condition false, or none of changed_columns changed),
-- NULL = the condition's result is unknown (a type mismatch or a structural error on this row;
-- recorded in observer.skipped). The condition sees {op, table, old, new, changed, txid, role,
-- context}: the writing transaction's id, the role it wrote as and its fraiseql_observers.context
-- (each absent when unknown: events captured before 0.2.0, or a context not set).
-- An oversize event (captured as its key only) cannot be tested: it matches, and its payload says
-- "oversize" so the receiver fetches the row and decides; dropping it would be silent loss.
-- Inlined into the dispatcher's statement (a SQL-standard body is bound when it is created, so it
-- needs no SET clause, which would prevent inlining: a call cost 4 µs per event and observer).
-- STABLE, not IMMUTABLE: jsonb_build_object is stable, and an IMMUTABLE function whose body is
-- not is never inlined.
CREATE FUNCTION observer.decide(op text, table_name text, old jsonb, new jsonb, changed text[],
                                condition jsonpath, changed_columns text[], oversize integer,
                                tx xid8, role text, context jsonb)
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN oversize IS NOT NULL THEN true
            WHEN changed_columns IS NOT NULL AND op = 'UPDATE' AND NOT (changed && changed_columns) THEN false
            WHEN condition IS NULL THEN true
            ELSE jsonb_path_match(jsonb_build_object('op', op, 'table', table_name, 'old', old, 'new', new,
                                                     'changed', to_jsonb(changed))
                                  OPERATOR(pg_catalog.||) observer.change_context(tx, role, context),
                                  condition, '{}', true)
       END;

-- observer.bounded_key(key): a FIFO or dedup key short enough for the jobs' btree indexes
-- (2704 bytes at most): up to 512 bytes as is, longer ones as sha256:<hex of their SHA-256>. The
-- key values come from rows any writer chooses.
CREATE FUNCTION observer.bounded_key(k text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN octet_length(k) <= 512 THEN k
            ELSE 'sha256:' || encode(sha256(convert_to(k, 'UTF8')), 'hex') END;

-- observer.ordering_key: table + primary key values, the default per-key FIFO key (NULL when the
-- table has no primary key), bounded (observer.bounded_key).
CREATE FUNCTION observer.ordering_key(table_name text, key_columns text[], old jsonb, new jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN key_columns IS NULL THEN NULL
            ELSE observer.bounded_key(table_name || ':' || (SELECT jsonb_agg(coalesce(new, old) -> k ORDER BY ord)::text
                                                            FROM unnest(key_columns) WITH ORDINALITY AS c(k, ord)))
       END;

-- observer.fifo_key(fifo, ordering_path, table_name, key_columns, op, old, new): the ordering key
-- of an observer's job: NULL when the observer is unordered; with the `ordering_key` option, the
-- value its path finds in {op, table, old, new} (`new` is the old row for a DELETE, so
-- `$.new.account_id` keys every change of an account), as `<table>#<value as JSON>`, bounded;
-- else, or when the path finds nothing or a JSON null, the table and primary key
-- (observer.ordering_key).
CREATE FUNCTION observer.fifo_key(fifo text, ordering_path jsonpath, table_name text, key_columns text[],
                                  op text, old jsonb, new jsonb)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN fifo IS NULL THEN NULL
            ELSE coalesce(
                CASE WHEN ordering_path IS NOT NULL THEN observer.bounded_key(table_name || '#' ||
                    NULLIF(pg_catalog.jsonb_path_query_first(
                        pg_catalog.jsonb_build_object('op', op, 'table', table_name, 'old', old,
                                                      'new', coalesce(new, old)),
                        ordering_path, '{}', true), 'null'::jsonb)::text) END,
                observer.ordering_key(table_name, key_columns, old, new))
       END;

-- observer.snapshot_excluding_self(): pg_current_snapshot(), with the calling transaction added
-- to the in-progress list. A snapshot never lists its own transaction as in progress, so a round
-- run by a transaction that already has an xid (it wrote something, or pgrx's SPI assigned one)
-- would count that transaction as done, and skip its events written before or after the round.
-- Counted as in progress, they are dispatched by a round after it commits.
CREATE FUNCTION observer.snapshot_excluding_self() RETURNS pg_snapshot
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    own  xid8 := pg_current_xact_id_if_assigned();
BEGIN
    IF own IS NULL OR own >= pg_snapshot_xmax(snap) OR own = ANY (ARRAY(SELECT pg_snapshot_xip(snap))) THEN
        RETURN snap;
    END IF;
    -- The text form is xmin:xmax:xip,... with the in-progress list in ascending order.
    RETURN format('%s:%s:%s',
                  least(pg_snapshot_xmin(snap), own), pg_snapshot_xmax(snap),
                  (SELECT string_agg(x::text, ',' ORDER BY x)
                   FROM (SELECT pg_snapshot_xip(snap) AS x UNION SELECT own) xs))::pg_snapshot;
END
$$;

-- Events as rows. Inlinable SQL functions (no SET clause: everything is schema-qualified and
-- pg_catalog comes first on any search_path), so the planner folds them into their callers.

-- observer.event_log_id(event_id): the event_log row holding an event (ids come in blocks of 1024).
CREATE FUNCTION observer.event_log_id(event_id bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN event_id - event_id % 1024;

-- observer.event_rows(log row): the events of one event_log row, in id order (a batch's rows are
-- converted to JSON here, by the server's to_jsonb).
CREATE FUNCTION observer.event_rows(l observer.event_log) RETURNS SETOF observer.event
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT l.id, l.tx, l.table_oid, l.table_name, l.op, l.old, l.new, l.oversize, l.created_at, l.role, l.context
    WHERE l.nrows IS NULL
    UNION ALL
    SELECT l.id + d.ord - 1, l.tx, l.table_oid, l.table_name, l.op, d.old, d.new, NULL::integer, l.created_at,
           l.role, l.context
    FROM ROWS FROM (@extschema@.observer_decode_rows(l.cols, l.col_types, l.old_rows),
                    @extschema@.observer_decode_rows(l.cols, l.col_types, l.new_rows))
         WITH ORDINALITY AS d(old, new, ord)
    WHERE l.nrows IS NOT NULL
$$;

-- observer.event(event_id): one event, reading only its own row of a batch (the queue builds
-- payloads with it). No row when the event does not exist (or was pruned).
CREATE FUNCTION observer.event(event_id bigint) RETURNS SETOF observer.event
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT event_id, l.tx, l.table_oid, l.table_name, l.op,
           CASE WHEN l.nrows IS NULL THEN l.old
                ELSE @extschema@.observer_decode_row(l.cols, l.col_types, l.old_rows, (event_id - l.id)::integer) END,
           CASE WHEN l.nrows IS NULL THEN l.new
                ELSE @extschema@.observer_decode_row(l.cols, l.col_types, l.new_rows, (event_id - l.id)::integer) END,
           l.oversize, l.created_at, l.role, l.context
    FROM observer.event_log l
    WHERE l.id = observer.event_log_id(event_id) AND event_id - l.id < coalesce(l.nrows, 1)
$$;

-- observer.events_of(event_ids): the events of a set of ids, in no particular order (an id that
-- does not exist gives no row, a repeated one gives one). Each event_log row is read and decoded
-- once for all of its events in the set (observer_decode_rows_at): the queue's claims and audit
-- words read the events of batches of jobs, which share their event_log rows; observer.event()
-- per job decompressed the batch up to its row once per job (7 µs a job for 100-row statements,
-- 1.5 µs this way).
CREATE FUNCTION observer.events_of(event_ids bigint[]) RETURNS SETOF observer.event
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT g.log_id + d.k, l.tx, l.table_oid, l.table_name, l.op,
           CASE WHEN l.nrows IS NULL THEN l.old ELSE d.old END,
           CASE WHEN l.nrows IS NULL THEN l.new ELSE d.new END,
           l.oversize, l.created_at, l.role, l.context
    FROM (SELECT observer.event_log_id(i) AS log_id,
                 pg_catalog.array_agg((i OPERATOR(pg_catalog.-) observer.event_log_id(i))::integer) AS ks
          FROM (SELECT DISTINCT u.i FROM pg_catalog.unnest(event_ids) AS u(i)) AS u
          GROUP BY 1) g
    JOIN observer.event_log l ON l.id = g.log_id
    CROSS JOIN LATERAL ROWS FROM (
        pg_catalog.unnest(g.ks),
        @extschema@.observer_decode_rows_at(l.cols, l.col_types, l.old_rows, g.ks),
        @extschema@.observer_decode_rows_at(l.cols, l.col_types, l.new_rows, g.ks)
    ) AS d(k, old, new)
    WHERE d.k < coalesce(l.nrows, 1)
$$;

-- observer.decoded_event: an event, or why it could not be read (`error`; old and new NULL).
CREATE TYPE observer.decoded_event AS (
    id          bigint,
    tx          xid8,
    table_oid   oid,
    table_name  text,
    op          text,
    old         jsonb,
    new         jsonb,
    oversize    integer,
    created_at  timestamptz,
    role        text,
    context     jsonb,
    error       text
);

-- observer.decode_one(event_id): one event, or (when it cannot be read: a value its type cannot
-- turn into JSON, a type dropped since capture) the event with its error, in a subtransaction of
-- its own. No row for an event that does not exist. The slow path of events_safe.
CREATE FUNCTION observer.decode_one(event_id bigint) RETURNS SETOF observer.decoded_event
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e   observer.event;
    msg text;
BEGIN
    SELECT * INTO e FROM observer.event(event_id);
    IF FOUND THEN
        RETURN NEXT ROW(e.id, e.tx, e.table_oid, e.table_name, e.op, e.old, e.new, e.oversize,
                        e.created_at, e.role, e.context, NULL::text)::observer.decoded_event;
    END IF;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
    RETURN QUERY SELECT decode_one.event_id, l.tx, l.table_oid, l.table_name, l.op, NULL::jsonb, NULL::jsonb,
                        l.oversize, l.created_at, l.role, l.context, left(msg, 1000)
                 FROM observer.event_log l WHERE l.id = observer.event_log_id(decode_one.event_id);
END
$$;

-- observer.events_safe(event_ids): observer.events_of for the queue, which must never fail for
-- one event that cannot be read (every claim would fail on it): the events in one subtransaction,
-- and when that fails, each on its own (observer.decode_one), an unreadable one with its error.
-- Not inlinable (plpgsql); the one subtransaction costs a few microseconds per call, not per event.
-- SECURITY DEFINER: it reads the event log by id, and is how admins (who may not call the row
-- decoders, which are granted to nobody) see events (observer.events, observer_debug_event,
-- observer_dlq_list, observer_search, observer_replay run as their admin caller).
CREATE FUNCTION observer.events_safe(event_ids bigint[]) RETURNS SETOF observer.decoded_event
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    evs observer.event[];
BEGIN
    IF coalesce(cardinality(event_ids), 0) = 0 THEN
        RETURN;
    END IF;
    BEGIN
        evs := ARRAY(SELECT x FROM observer.events_of(event_ids) x);
        RETURN QUERY SELECT x.*, NULL::text FROM unnest(evs) x;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        NULL;  -- read event by event below
    END;
    RETURN QUERY SELECT d.* FROM (SELECT DISTINCT u.i FROM unnest(event_ids) AS u(i)) AS u,
                                 LATERAL observer.decode_one(u.i) d;
END
$$;

-- observer.decode_log(log_id, nrows): the events of one event_log row, in id order, each with
-- its error when it cannot be read (observer.events_safe over the row's event ids). The slow path
-- of dispatch and replay, and how admins see events (observer.events).
CREATE FUNCTION observer.decode_log(log_id bigint, nrows integer) RETURNS SETOF observer.decoded_event
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.* FROM observer.events_safe(ARRAY(SELECT log_id + k FROM generate_series(0, nrows - 1) k)) e
    ORDER BY e.id
$$;

-- observer.events: every event kept, one row per row change (for operators and tests; code that
-- knows an id uses observer.events_safe(ARRAY[id]), which does not convert a whole batch). An
-- event that cannot be read has `error` set (and old, new NULL).
CREATE VIEW observer.events AS
    SELECT e.* FROM observer.event_log l, LATERAL observer.decode_log(l.id, coalesce(l.nrows, 1)) e;
REVOKE ALL ON observer.events FROM PUBLIC;

-- observer.batch_logs: the event_log rows of the batch between `done` and `target` after the
-- cursor, in id order, at most max_logs of them.
-- Within a batch, id order is commit order for any one row: a second writer of a row waits for
-- the first one's commit before its own trigger runs and takes a later id.
-- The batch is the rows whose transaction is visible in `target` and not in `done`: the
-- transactions from done's xmax up to target's xmax plus those in progress in `done`.
-- - The first page of a batch (after_id = 0) finds them through the `tx` index (PgQ's lookup:
--   the new xid range plus the previous snapshot's in-progress xids), so a round never reads the
--   events already dispatched: an id-ordered scan from 0 would read every event kept (with
--   300,000 kept, 91 ms a round instead of 1.3 ms).
-- - The next pages of a long batch continue in id order after the cursor; what they read past
--   the batch is the events written concurrently with it, not the history.
-- The function is planned without its arguments' values (a SQL function with SET clauses is not
-- inlined), so the estimates are generic: a history written by one big transaction makes `tx =
-- ANY (xip)` look like the whole table. enable_seqscan = off keeps the index plans whatever the
-- statistics say; the rows are fetched by `id = ANY`, never by a join that could read the table.
CREATE FUNCTION observer.batch_logs(done pg_snapshot, target pg_snapshot, after_id bigint, max_logs integer)
RETURNS SETOF observer.event_log
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    WITH pending AS MATERIALIZED (
        SELECT l.id, l.tx FROM observer.event_log l
        WHERE after_id = 0 AND l.tx >= pg_snapshot_xmax(done) AND l.tx < pg_snapshot_xmax(target)
        UNION ALL
        SELECT l.id, l.tx FROM observer.event_log l
        WHERE after_id = 0 AND l.tx = ANY (ARRAY(SELECT pg_snapshot_xip(done)))
    ), first_page AS MATERIALIZED (
        SELECT p.id FROM pending p WHERE pg_visible_in_snapshot(p.tx, target) ORDER BY p.id LIMIT max_logs
    ), next_page AS MATERIALIZED (
        SELECT l.id FROM observer.event_log l
        WHERE after_id > 0 AND l.id > after_id
          AND pg_visible_in_snapshot(l.tx, target) AND NOT pg_visible_in_snapshot(l.tx, done)
        ORDER BY l.id LIMIT max_logs
    )
    SELECT l.*
    FROM observer.event_log l
    WHERE l.id = ANY (ARRAY(SELECT id FROM first_page UNION ALL SELECT id FROM next_page))
    ORDER BY l.id
$$;

-- observer.dispatch_batch: one page of the batch between `done` and `target`: the events of
-- whole event_log rows, in id order, about max_events of them (a page ends at the first log row
-- that reaches the limit, so it may hold up to 1023 more).
CREATE FUNCTION observer.dispatch_batch(done pg_snapshot, target pg_snapshot, after_id bigint, max_events integer)
RETURNS SETOF observer.event
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH logs AS (
        SELECT l, sum(coalesce(l.nrows, 1)) OVER (ORDER BY l.id) - coalesce(l.nrows, 1) AS before
        FROM observer.batch_logs(done, target, after_id, max_events) l
    )
    SELECT e.*
    FROM logs, LATERAL observer.event_rows(logs.l) e
    WHERE logs.before < max_events
    ORDER BY e.id
$$;

-- observer.batch_events(action, fifo, dedup_window): how many events one batch job of an
-- observer holds (queue.sql, "Batch jobs"), or NULL when its jobs are one per event: only a
-- webhook whose action asks for batches of at least 2 (max_events, 100 when not given, as the
-- worker reads it), without per-key order (fifo) or deduplication, whose jobs are per event.
-- Inlined (no SET clause).
CREATE FUNCTION observer.batch_events(action jsonb, fifo text, dedup_window interval) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN fifo IS NULL AND dedup_window IS NULL
                 AND action OPERATOR(pg_catalog.->>) 'type' OPERATOR(pg_catalog.=) 'webhook'
                 AND pg_catalog.jsonb_typeof(action OPERATOR(pg_catalog.->) 'batch') OPERATOR(pg_catalog.=) 'object'
            THEN NULLIF(GREATEST(COALESCE(
                     (action OPERATOR(pg_catalog.->) 'batch' OPERATOR(pg_catalog.->>) 'max_events')::integer, 100), 1), 1) END;

-- observer.batch_max_bytes(action): the most bytes of a batch's documents (the action's
-- batch.max_bytes, 1 MiB when not given, as the worker reads it). Inlined.
CREATE FUNCTION observer.batch_max_bytes(action jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN COALESCE((action OPERATOR(pg_catalog.->) 'batch' OPERATOR(pg_catalog.->>) 'max_bytes')::bigint, 1048576);

-- observer.batch_key(event_ids, observer_id): the webhook-id of a batch job: the id the worker
-- gives a request of the same events as jobs of their own (worker/src/actions/batch.rs,
-- batch_id): "batch_" and 32 hex digits of the SHA-256 over each element's key
-- (evt_<event>_<observer>) as its length in 8 big-endian bytes then its bytes, then the count.
CREATE FUNCTION observer.batch_key(event_ids bigint[], observer_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'batch_' || left(encode(sha256(string_agg(int8send(octet_length(k.key)::bigint) || convert_to(k.key, 'UTF8'),
                                                     ''::bytea ORDER BY k.n)
                                          || int8send(count(*))), 'hex'), 32)
    FROM (SELECT 'evt_' || u.id || '_' || observer_id AS key, u.n
          FROM unnest(event_ids) WITH ORDINALITY AS u(id, n)) k
$$;

-- observer.dedup_one(event, observer): make the job for a matched event of an observer with the
-- dedup option, or fold it into an existing one. Returns 1 if a new job was made, else 0.
--   dedup_coalesce = false: at most one job per dedup key per window (by capture time); a later
--     event in the window is recorded as 'deduplicated' against the job that holds the key.
--   dedup_coalesce = true: at most one unsent job per key: a later event replaces the event of a
--     job not yet attempted (so the latest state is sent, under the new event's webhook-id), the
--     replaced event is recorded as 'coalesced'; once the job was attempted, a new job is made.
-- observer.due_at(paused_at): when a new job of an observer is due: now, or never while the
-- observer is paused (observer_resume() makes its held jobs due). Inlined (no SET clause).
CREATE FUNCTION observer.due_at(paused_at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN paused_at IS NULL THEN pg_catalog.now() ELSE 'infinity'::timestamptz END;

CREATE FUNCTION observer.dedup_one(e observer.event, o observer.observers) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key      text;
    holder   bigint;
    replaced bigint;
BEGIN
    key := CASE WHEN o.dedup_key IS NULL THEN observer.ordering_key(e.table_name, o.key_columns, e.old, e.new)
                ELSE observer.bounded_key(jsonb_path_query_first(jsonb_build_object('op', e.op, 'table', e.table_name, 'old', e.old, 'new', e.new),
                                                                 o.dedup_key, '{}', true)::text) END;
    IF key IS NOT NULL AND o.dedup_coalesce THEN
        WITH target AS (
            SELECT j.id, j.event_id FROM observer.jobs j JOIN observer.event_log prev ON prev.id = observer.event_log_id(j.event_id)
            WHERE j.observer_id = o.id AND j.dedup_key = key AND j.state = 'pending' AND j.attempt = 0
              AND prev.created_at > e.created_at - o.dedup_window
            ORDER BY j.id DESC LIMIT 1
            FOR UPDATE OF j
        )
        UPDATE observer.jobs j
        SET event_id = e.id, idempotency_key = 'evt_' || e.id || '_' || o.id
        FROM target WHERE j.id = target.id
        RETURNING j.id, target.event_id INTO holder, replaced;
        IF holder IS NOT NULL THEN
            INSERT INTO observer.skipped (event_id, observer_id, reason, job_id)
            VALUES (replaced, o.id, 'coalesced', holder) ON CONFLICT DO NOTHING;
            RETURN 0;
        END IF;
    ELSIF key IS NOT NULL THEN
        SELECT j.id INTO holder FROM observer.jobs j JOIN observer.event_log prev ON prev.id = observer.event_log_id(j.event_id)
        WHERE j.observer_id = o.id AND j.dedup_key = key AND prev.created_at > e.created_at - o.dedup_window
        ORDER BY j.id DESC LIMIT 1;
        IF holder IS NOT NULL THEN
            INSERT INTO observer.skipped (event_id, observer_id, reason, job_id)
            VALUES (e.id, o.id, 'deduplicated', holder) ON CONFLICT DO NOTHING;
            RETURN 0;
        END IF;
    END IF;
    INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key, dedup_key, priority, run_at)
    VALUES (o.id, e.id, 'evt_' || e.id || '_' || o.id,
            observer.fifo_key(o.fifo, o.ordering_path, e.table_name, o.key_columns, e.op, e.old, e.new),
            key, o.priority, observer.due_at(o.paused_at))
    ON CONFLICT (event_id, observer_id) WHERE event_id IS NOT NULL DO NOTHING;
    RETURN 1;
END
$$;

-- observer_dispatch(max_events, dispatcher, unless_active_within): one dispatch round; returns
-- the events read (0 when another dispatcher holds the round). With unless_active_within, the
-- call is a standby's: it returns NULL without a round when another dispatcher finished one within
-- that interval (the background dispatcher runs one at least every dispatch_interval), so an
-- external worker next to the background dispatcher costs one row read, and takes over once the
-- other one has been quiet that long.
-- JIT is off: the set-returning functions' default estimates (1,000 rows each, 333,333 once
-- joined) put the batch's statements past jit_above_cost, and compiling them cost 10 ms and 35 ms
-- in a round that takes 2 ms without it (measured with auto_explain: two columns more per event
-- were enough to cross the threshold; p50 commit-to-delivery went from 5 to 17 ms at 1,000
-- single-row transactions/s).
CREATE FUNCTION observer_dispatch(max_events integer DEFAULT 10000, dispatcher text DEFAULT NULL,
                                  unless_active_within interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    me          text := coalesce(dispatcher, nullif(current_setting('application_name'), ''), session_user);
    st          observer.dispatch_state;
    target      pg_snapshot;
    n_events    bigint := 0;
    n_jobs      bigint := 0;
    last_id     bigint;
    done        boolean;
    msg         text;
    lg          record;
    ev          observer.decoded_event;
    obs         observer.observers;
    verdict     boolean;
    dedup_ev    bigint[];
    dedup_obs   bigint[];
    fallback    boolean := false;
    timed_out   boolean;
    -- fraiseql_observers.condition_timeout: the longest one condition may run on one event; the
    -- set-based path gets 30 times that for the page (pg/deadline.rs).
    cond_ms     integer := coalesce(extract(epoch FROM nullif(current_setting('fraiseql_observers.condition_timeout', true), '')::interval) * 1000, 1000)::integer;
BEGIN
    IF max_events IS NULL OR max_events < 1 THEN
        RAISE EXCEPTION 'max_events must be a positive integer, not %', coalesce(max_events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF unless_active_within IS NOT NULL AND EXISTS (
        SELECT FROM observer.dispatch_state
        WHERE last_dispatcher IS DISTINCT FROM me
          -- At least three of the background dispatcher's idle intervals, whatever the caller
          -- asked: an idle dispatcher with a long interval is not a stopped one.
          AND last_round_at > clock_timestamp() - greatest(unless_active_within,
                3 * coalesce(nullif(current_setting('fraiseql_observers.dispatch_interval', true), '')::interval,
                             '1 second')))
    THEN
        RETURN NULL;
    END IF;
    -- One round at a time: the round holds the checkpoint row. Only the extension's owner and
    -- admins can lock it (an advisory lock could be taken by any login role, and stop dispatch
    -- for everyone). Another dispatcher holds the round: not an error, there is simply nothing
    -- for us to do (a standby is told so: it is standing by). observer_status() names a session
    -- that holds the row for long (dispatch.blocked_by).
    SELECT * INTO st FROM observer.dispatch_state FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN CASE WHEN unless_active_within IS NULL THEN 0 END;
    END IF;
    target := coalesce(st.batch_snapshot, observer.snapshot_excluding_self());

    PERFORM @extschema@.observer_deadline(30 * cond_ms);
    BEGIN
        -- The set-based path: decide every (event, observer) pair of the page at once, make the
        -- jobs of observers without dedup, and hand the dedup matches to dedup_one() in event order.
        WITH batch AS MATERIALIZED (
            SELECT e.*, CASE WHEN e.op = 'UPDATE' THEN observer.changed(e.old, e.new) END AS changed
            FROM observer.dispatch_batch(st.done_snapshot, target, st.batch_cursor, max_events) e
        ), decisions AS MATERIALIZED (
            SELECT b.id AS event_id, o.id AS observer_id, o.dedup_window IS NOT NULL AS dedup, o.priority,
                   observer.due_at(o.paused_at) AS run_at,
                   observer.decide(b.op, b.table_name, b.old, b.new, b.changed, o.condition, o.changed_columns, b.oversize,
                                   b.tx, b.role, b.context) AS matched,
                   observer.fifo_key(o.fifo, o.ordering_path, b.table_name, o.key_columns, b.op, b.old, b.new) AS ordering_key,
                   observer.batch_events(o.action, o.fifo, o.dedup_window) AS batch_max
            FROM batch b
            JOIN observer.observers o
              ON o.table_oid = b.table_oid AND o.enabled AND b.op = ANY (o.events)
        ), unknown AS (
            INSERT INTO observer.skipped (event_id, observer_id, reason)
            SELECT event_id, observer_id, 'condition_unknown' FROM decisions WHERE matched IS NULL
            ON CONFLICT DO NOTHING
        ), planned AS MATERIALIZED (
            -- Batch jobs (queue.sql): an observer's matched events of one event_log row (one
            -- statement), in id order, cut into chunks of its batch's max_events; each full chunk
            -- is one job (chunk set), the rest are jobs of their own (chunk NULL).
            SELECT d.event_id, d.observer_id, d.ordering_key, d.priority, d.run_at, NULL::bigint AS chunk
            FROM decisions d WHERE d.matched AND NOT d.dedup AND d.batch_max IS NULL
            UNION ALL
            SELECT p.event_id, p.observer_id, p.ordering_key, p.priority, p.run_at,
                   CASE WHEN ((p.rn - 1) / p.batch_max + 1) * p.batch_max <= p.in_log THEN (p.rn - 1) / p.batch_max END
            FROM (SELECT d.*,
                         row_number() OVER (PARTITION BY d.observer_id, observer.event_log_id(d.event_id) ORDER BY d.event_id) AS rn,
                         count(*) OVER (PARTITION BY d.observer_id, observer.event_log_id(d.event_id)) AS in_log
                  FROM decisions d WHERE d.matched AND NOT d.dedup AND d.batch_max IS NOT NULL) p
        ), chunks AS MATERIALIZED (
            SELECT g.*, pg_catalog.octet_length(g.documents) <= g.max_bytes AS fits
            FROM (SELECT p.observer_id, p.chunk, observer.event_log_id(p.event_id) AS log_id,
                         min(p.priority) AS priority, min(p.run_at) AS run_at,
                         array_agg(p.event_id ORDER BY p.event_id) AS ids,
                         -- Made here, as JSON text, from the events this round decoded, so that
                         -- neither the claim nor the completion decodes them again: what the
                         -- claim hands out (each event's document for attempt 1 with its
                         -- webhook-id: queue.sql, "Batch jobs"), and the strings and numbers of
                         -- each event's table, op and rows (as the observer delivers them) for
                         -- the words of its attempt.
                         '[' || string_agg(observer.event_document(o.name, o.columns, o.key_columns, b.id, b.created_at,
                                                                  b.table_name, b.op, b.old, b.new, b.oversize, b.tx,
                                                                  b.role, b.context, 1,
                                                                  'evt_' || b.id || '_' || p.observer_id),
                                           ',' ORDER BY p.event_id) || ']' AS documents,
                         '[' || string_agg(concat('[', to_json(b.table_name), ',', to_json(b.op), ',',
                                                  coalesce((CASE WHEN o.columns IS NULL THEN b.old
                                                                 ELSE observer.project(b.old, o.columns, o.key_columns) END)::text, 'null'), ',',
                                                  coalesce((CASE WHEN o.columns IS NULL THEN b.new
                                                                 ELSE observer.project(b.new, o.columns, o.key_columns) END)::text, 'null'), ']'),
                                           ',' ORDER BY p.event_id) || ']' AS words,
                         -- The action's max_bytes bounds the array as it bounds the worker's own
                         -- batches: the chunk of a statement of big rows goes as jobs of its own.
                         min(observer.batch_max_bytes(o.action)) AS max_bytes
                  FROM planned p JOIN batch b ON b.id = p.event_id JOIN observer.observers o ON o.id = p.observer_id
                  WHERE p.chunk IS NOT NULL
                  GROUP BY p.observer_id, observer.event_log_id(p.event_id), p.chunk) g
        ), made_batches AS (
            INSERT INTO observer.jobs (observer_id, event_id, event_ids, idempotency_key, priority, run_at, search,
                                       documents)
            SELECT g.observer_id, g.ids[1], g.ids, observer.batch_key(g.ids, g.observer_id), g.priority, g.run_at,
                   observer.batch_words(g.words), g.documents
            FROM chunks g
            WHERE g.fits
            ORDER BY g.ids[1], g.observer_id
            ON CONFLICT (event_id, observer_id) WHERE event_id IS NOT NULL DO NOTHING
            RETURNING 1
        ), made AS (
            INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key, priority, run_at)
            SELECT p.observer_id, p.event_id, 'evt_' || p.event_id || '_' || p.observer_id, p.ordering_key, p.priority,
                   p.run_at
            FROM planned p
            LEFT JOIN (SELECT g.observer_id, g.chunk, g.log_id FROM chunks g WHERE NOT g.fits) big
              ON big.observer_id = p.observer_id AND big.chunk = p.chunk AND big.log_id = observer.event_log_id(p.event_id)
            WHERE p.chunk IS NULL OR big.observer_id IS NOT NULL
            ORDER BY p.event_id, p.observer_id
            ON CONFLICT (event_id, observer_id) WHERE event_id IS NOT NULL DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch),
               (SELECT count(*) FROM made) + (SELECT count(*) FROM made_batches),
               (SELECT array_agg(event_id ORDER BY event_id, observer_id) FROM decisions WHERE matched AND dedup),
               (SELECT array_agg(observer_id ORDER BY event_id, observer_id) FROM decisions WHERE matched AND dedup)
        INTO n_events, last_id, n_jobs, dedup_ev, dedup_obs;

        FOR i IN 1 .. coalesce(cardinality(dedup_ev), 0) LOOP
            n_jobs := n_jobs + observer.dedup_one(
                (SELECT e FROM observer.event(dedup_ev[i]) e),
                (SELECT o FROM observer.observers o WHERE o.id = dedup_obs[i]));
        END LOOP;
        PERFORM @extschema@.observer_deadline(0);
    EXCEPTION WHEN query_canceled THEN
        -- Our deadline, or a real cancel (raised again).
        IF NOT @extschema@.observer_deadline(0) THEN
            RAISE;
        END IF;
        msg := format('the page took longer than %s ms', 30 * cond_ms);
        fallback := true;
    WHEN OTHERS THEN
        PERFORM @extschema@.observer_deadline(0);
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        fallback := true;
    END;

    IF fallback THEN
        -- A condition raised despite silent mode or ran too long, or a row broke the set-based
        -- path (it could not be read: observer.decode_log): decide event by event so that one bad
        -- event is recorded and every other one still goes on. Each event_log row of the page is
        -- read on its own, and an event that cannot be read is quarantined ('undecodable', with
        -- the reason) for every observer that would have seen it. Each decision runs under
        -- condition_timeout; one that reaches it is recorded ('condition_timeout').
        RAISE WARNING 'fraiseql_observers: dispatch batch failed (%), deciding event by event', msg;
        n_events := 0;
        n_jobs := 0;
        last_id := NULL;
        FOR lg IN
            SELECT p.id, p.table_oid, p.op, p.nrows
            FROM (SELECT l.id, l.table_oid, l.op, coalesce(l.nrows, 1) AS nrows,
                         sum(coalesce(l.nrows, 1)) OVER (ORDER BY l.id) - coalesce(l.nrows, 1) AS before
                  FROM observer.batch_logs(st.done_snapshot, target, st.batch_cursor, max_events) l) p
            WHERE p.before < max_events
            ORDER BY p.id
        LOOP
            n_events := n_events + lg.nrows;
            last_id := lg.id + lg.nrows - 1;
            FOR ev IN SELECT * FROM observer.decode_log(lg.id, lg.nrows) LOOP
                IF ev.error IS NOT NULL THEN
                    INSERT INTO observer.skipped (event_id, observer_id, reason, detail)
                    SELECT ev.id, o.id, 'undecodable', ev.error
                    FROM observer.observers o
                    WHERE o.table_oid = lg.table_oid AND o.enabled AND lg.op = ANY (o.events)
                    ON CONFLICT DO NOTHING;
                    CONTINUE;
                END IF;
                FOR obs IN
                    SELECT o.* FROM observer.observers o
                    WHERE o.table_oid = lg.table_oid AND o.enabled AND lg.op = ANY (o.events)
                    ORDER BY o.id
                LOOP
                    timed_out := false;
                    msg := NULL;
                    BEGIN
                        PERFORM @extschema@.observer_deadline(cond_ms);
                        verdict := observer.decide(ev.op, ev.table_name, ev.old, ev.new,
                                                   CASE WHEN ev.op = 'UPDATE' THEN observer.changed(ev.old, ev.new) END,
                                                   obs.condition, obs.changed_columns, ev.oversize,
                                                   ev.tx, ev.role, ev.context);
                        IF verdict AND obs.dedup_window IS NOT NULL THEN
                            n_jobs := n_jobs + observer.dedup_one(
                                ROW(ev.id, ev.tx, ev.table_oid, ev.table_name, ev.op, ev.old, ev.new,
                                    ev.oversize, ev.created_at, ev.role, ev.context)::observer.event, obs);
                        ELSIF verdict THEN
                            INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, ordering_key, priority, run_at)
                            VALUES (obs.id, ev.id, 'evt_' || ev.id || '_' || obs.id,
                                    observer.fifo_key(obs.fifo, obs.ordering_path, ev.table_name, obs.key_columns,
                                                      ev.op, ev.old, ev.new),
                                    obs.priority, observer.due_at(obs.paused_at))
                            ON CONFLICT (event_id, observer_id) WHERE event_id IS NOT NULL DO NOTHING;
                            n_jobs := n_jobs + 1;
                        END IF;
                        PERFORM @extschema@.observer_deadline(0);
                    EXCEPTION WHEN query_canceled THEN
                        IF NOT @extschema@.observer_deadline(0) THEN
                            RAISE;
                        END IF;
                        timed_out := true;
                        verdict := NULL;
                    WHEN OTHERS THEN
                        PERFORM @extschema@.observer_deadline(0);
                        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
                        verdict := NULL;
                    END;
                    IF timed_out THEN
                        INSERT INTO observer.skipped (event_id, observer_id, reason, detail)
                        VALUES (ev.id, obs.id, 'condition_timeout',
                                format('the condition ran longer than %s ms (fraiseql_observers.condition_timeout)', cond_ms))
                        ON CONFLICT DO NOTHING;
                    ELSIF verdict IS NULL THEN
                        -- detail: what raised (a condition's own unknown result raises nothing).
                        INSERT INTO observer.skipped (event_id, observer_id, reason, detail)
                        VALUES (ev.id, obs.id, 'condition_unknown', left(msg, 1000)) ON CONFLICT DO NOTHING;
                    END IF;
                END LOOP;
            END LOOP;
        END LOOP;
    END IF;

    -- A short page means the batch is complete: everything visible in `target` is done. A full
    -- page keeps the batch's snapshot and continues after its last id next round.
    done := n_events < max_events;
    UPDATE observer.dispatch_state SET
        done_snapshot     = CASE WHEN done THEN target ELSE done_snapshot END,
        batch_snapshot    = CASE WHEN done THEN NULL ELSE target END,
        batch_cursor      = CASE WHEN done THEN 0 ELSE last_id END,
        rounds            = rounds + 1,
        fallback_rounds   = fallback_rounds + fallback::integer,
        events_dispatched = events_dispatched + n_events,
        jobs_created      = jobs_created + n_jobs,
        last_round_at     = clock_timestamp(),
        last_event_at     = CASE WHEN n_events > 0 THEN clock_timestamp() ELSE last_event_at END,
        last_dispatcher   = me
    WHERE singleton;

    IF n_jobs > 0 THEN
        -- Postgres folds identical notifications within a transaction: one wake-up per round.
        PERFORM observer.wake_workers();
    END IF;
    RETURN n_events;
END
$$;
