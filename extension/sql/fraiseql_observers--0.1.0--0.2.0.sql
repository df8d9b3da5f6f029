-- fraiseql_observers 0.1.0 -> 0.2.0, run by ALTER EXTENSION fraiseql_observers UPDATE (after the
-- server was restarted on the 0.2.0 library: docs/runbook.md, "Upgrading"; CHANGELOG.md says what
-- changed and what operators must do).
--
-- Nothing is rewritten or deleted: observers, checkpoints, events (dispatched or not), jobs in
-- every state with their leases and fencing tokens, attempts (the audit trail) and breakers keep
-- their rows. The update adds five columns, two attributes of the event type, three tables,
-- one type, one CHECK and one index, widens one CHECK, replaces functions (CREATE OR REPLACE keeps their grants), drops
-- the ones 0.2.0 no longer has or whose arguments changed, and grants the roles that had access
-- under 0.1.0 what the same access means in 0.2.0.
-- A 0.1.0 worker keeps working against 0.2.0 (the functions it calls keep their signatures), so
-- workers are upgraded after the extension. tests/tests/upgrade.rs proves all of it, and that the
-- result has the same schema as a fresh 0.2.0 install.
--
-- Frozen once 0.2.0 is released: later changes go into the next version's update script.

\echo Use "ALTER EXTENSION fraiseql_observers UPDATE TO '0.2.0'" to load this file. \quit

-- 1. Tables and types (sql/schema.sql, sql/dispatch.sql).

-- Skipped decisions: two new reasons (a condition that ran out of time, an event that could not be
-- read) and why. `detail` comes last in a fresh install too, so both have the same layout.
ALTER TABLE observer.skipped
    DROP CONSTRAINT skipped_reason_check,
    ADD CONSTRAINT skipped_reason_check
        CHECK (reason IN ('condition_unknown', 'condition_timeout', 'deduplicated', 'coalesced', 'undecodable')),
    ADD COLUMN detail text;

-- Per-queue enqueue grants: nobody is restricted after the update (0.1.0 had no such grants).
CREATE TABLE observer.enqueue_restricted (
    role_oid   oid PRIMARY KEY
);
CREATE TABLE observer.enqueuers (
    queue_id   bigint NOT NULL REFERENCES observer.observers (id) ON DELETE CASCADE,
    role_oid   oid NOT NULL,
    PRIMARY KEY (queue_id, role_oid)
);

-- The audit exporter, elected by a row (0.1.0 used an advisory lock any login role could take).
-- A 0.1.0 worker still exporting while 0.2.0 workers start may send a batch twice: Elasticsearch
-- documents have ids, so a second copy overwrites the first.
CREATE TABLE observer.audit_exporter (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid           integer NOT NULL,
    backend_start timestamptz NOT NULL,
    since         timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON observer.enqueue_restricted, observer.enqueuers, observer.audit_exporter FROM PUBLIC;

-- Who made each change: the role it was written as and the writing transaction's
-- fraiseql_observers.context (events captured by 0.1.0 have neither). Appended, in a fresh install too.
ALTER TABLE observer.event_log ADD COLUMN role text, ADD COLUMN context jsonb;
ALTER TYPE observer.event ADD ATTRIBUTE role text, ADD ATTRIBUTE context jsonb;

-- The `ordering_key` option (FIFO by a path into the event instead of the primary key).
ALTER TABLE observer.observers ADD COLUMN ordering_path jsonpath;

-- Batch jobs (sql/queue.sql): one job for a full batch of one statement's events. Appended, in
-- a fresh install too; every existing job has none.
ALTER TABLE observer.jobs ADD COLUMN event_ids bigint[], ADD COLUMN search tsvector, ADD COLUMN documents text,
    ADD CONSTRAINT jobs_batch_check CHECK (event_ids IS NULL OR (event_id IS NOT NULL AND event_ids[1] = event_id
                                                                 AND cardinality(event_ids) BETWEEN 2 AND 1024));

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

-- 2. Functions 0.2.0 no longer has, or whose arguments changed. The batch decoders took
-- `anyelement` and take `bytea` now; their 0.1.0 symbols refuse in the 0.2.0 library
-- (extension/src/pg/compat.rs).
DROP FUNCTION observer_decode_rows(text[], oid[], anyelement);
DROP FUNCTION observer_decode_rows_at(text[], oid[], anyelement, integer[]);
DROP FUNCTION observer_decode_row(text[], oid[], anyelement, integer);
DROP FUNCTION observer.dispatch_lock_key();
DROP FUNCTION observer.attempt_words(text, bigint, jsonb);
DROP FUNCTION observer.attempt_doc(bigint, jsonb);
DROP FUNCTION observer_grant(text, text);
-- Conditions see who made the change, and the delivered document carries it and the attempt.
DROP FUNCTION observer.decide(text, text, jsonb, jsonb, text[], jsonpath, text[], integer);
DROP FUNCTION observer.job_payload(text, text[], text[], bigint, jsonb, timestamptz, bigint, timestamptz,
                                   text, text, jsonb, jsonb, integer);

-- 3. Functions new in 0.2.0 or changed since 0.1.0, as a fresh install creates them, in its order.

CREATE OR REPLACE FUNCTION "observer_bounded_doc"(
	"doc" jsonb /* crate :: pg :: rows :: RawJsonbArg */
) RETURNS jsonb /* crate :: pg :: rows :: RawJsonb */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'observer_bounded_doc_wrapper';

CREATE OR REPLACE FUNCTION "observer_deadline"(
	"ms" INT /* Option < i32 > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'observer_deadline_wrapper';

CREATE OR REPLACE FUNCTION "observer_decode_row"(
	"cols" TEXT[], /* Vec < String > */
	"col_types" oid[], /* Vec < pg_sys :: Oid > */
	"rows" bytea, /* RawBytea */
	"k" INT /* i32 */
) RETURNS jsonb /* Result < Option < RawJsonb > , ErrorReport > */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'decode_row_wrapper';

CREATE OR REPLACE FUNCTION "observer_decode_rows"(
	"cols" TEXT[], /* Vec < String > */
	"col_types" oid[], /* Vec < pg_sys :: Oid > */
	"rows" bytea /* RawBytea */
) RETURNS SETOF jsonb /* RawJsonb */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'decode_rows_wrapper';

CREATE OR REPLACE FUNCTION "observer_decode_rows_at"(
	"cols" TEXT[], /* Vec < String > */
	"col_types" oid[], /* Vec < pg_sys :: Oid > */
	"rows" bytea, /* RawBytea */
	"ks" INT[] /* Vec < Option < i32 > > */
) RETURNS SETOF jsonb /* Option < RawJsonb > */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'decode_rows_at_wrapper';

CREATE OR REPLACE FUNCTION "observer_json_size"(
	"doc" jsonb, /* crate :: pg :: rows :: RawJsonbArg */
	"max_bytes" bigint /* i64 */
) RETURNS bigint /* Option < i64 > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'observer_json_size_wrapper';

CREATE OR REPLACE FUNCTION "observer_row_to_jsonb"(
	"row" anyelement /* pgrx :: AnyElement */
) RETURNS jsonb /* Result < RawJsonb, ErrorReport > */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'observer_row_to_jsonb_wrapper';

CREATE OR REPLACE FUNCTION observer.check_path_cost(path jsonpath, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- The path's text with its string literals emptied (a "**" inside a string is no accessor).
    bare text := regexp_replace(path::text, '"([^"\\]|\\.)*"', '""', 'g');
BEGIN
    IF (length(bare) - length(replace(bare, '**', ''))) / 2 > 1 THEN
        RAISE EXCEPTION '% uses more than one ** accessor', what
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Each ** multiplies the items visited by the size of the document; name the path to the values instead (e.g. $.new.doc.items[*].sku).';
    END IF;
    IF EXISTS (SELECT 1 FROM regexp_matches(path::text, 'like_regex "((?:[^"\\]|\\.)*)"', 'g') m
               WHERE m[1] ~ '\\\\[0-9]') THEN
        RAISE EXCEPTION '% uses a back-reference in like_regex', what
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Back-references make a regular expression backtrack over row data; match without them.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION observer.check_path(path text, option text) RETURNS jsonpath
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    msg text;
BEGIN
    IF path IS NULL OR octet_length(path) > 4096 THEN
        RAISE EXCEPTION 'observer option "%" must be a SQL/JSON path of at most 4096 bytes', option
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example: "$.new.customer_id".';
    END IF;
    PERFORM observer.check_path_cost(path::jsonpath, format('observer option "%s"', option));
    RETURN path::jsonpath;
EXCEPTION WHEN syntax_error THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
    RAISE EXCEPTION 'invalid SQL/JSON path in observer option "%": %', option, msg
        USING ERRCODE = 'syntax_error', HINT = 'For example: "$.new.customer_id".';
END
$$;

CREATE OR REPLACE FUNCTION observer.check_condition(condition text) RETURNS jsonpath
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    path jsonpath;
    msg text;
BEGIN
    IF condition IS NULL OR btrim(condition) = '' THEN
        RETURN NULL;
    END IF;
    -- A predicate worth writing fits in 4 kB; anything larger is a mistake or an attack on the
    -- parser (deep nesting) and on every dispatch round that would evaluate it.
    IF octet_length(condition) > 4096 THEN
        RAISE EXCEPTION 'observer condition is too long (% bytes)', octet_length(condition)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Keep conditions under 4096 bytes; split the logic across observers if needed.';
    END IF;
    BEGIN
        path := condition::jsonpath;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'invalid observer condition: %', msg
            USING ERRCODE = 'syntax_error',
                  DETAIL = format('Condition: %s', condition),
                  HINT = 'Write a SQL/JSON path predicate over {op, table, old, new, changed}, e.g. $.new.status == "shipped".';
    END;
    PERFORM observer.check_path_cost(path, 'observer condition');
    -- A predicate yields one boolean; a plain path such as $.new.status does not. Probe it on
    -- empty documents of every operation: a structural mistake raises here, at create time.
    BEGIN
        PERFORM jsonb_path_match(jsonb_build_object('op', op, 'table', 'public.t', 'old', '{}'::jsonb,
                                                    'new', '{}'::jsonb, 'changed', '[]'::jsonb), path)
        FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) op;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'observer condition is not a predicate: %', msg
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Condition: %s', condition),
                  HINT = 'Compare a value, e.g. $.new.status == "shipped", or test existence with exists($.new.email).';
    END;
    RETURN path;
END
$$;

CREATE OR REPLACE FUNCTION observer.define(
    name       text,
    table_name regclass,
    events     text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE'],
    condition  text DEFAULT NULL,
    action     jsonb DEFAULT NULL,
    options    jsonb DEFAULT '{}'
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel        record;
    evs        text[];
    path       jsonpath;
    act        jsonb;
    opt_key    text;
    new_id     bigint;
    key_cols   text[];
    max_att    integer := 8;
    max_payload integer := 1048576;
    cols       text[];
    changed_cols text[];
    dedup_win  interval;
    dedup_path jsonpath;
    dedup_coal boolean := false;
    fifo_mode  text;
    fifo_policy text;
    order_path jsonpath;
    base       interval := '1 second';
    cap        interval := '1 hour';
    prio       smallint := 0;
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid observer name: %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 1 to 63 characters: a letter or _ first, then letters, digits, _ . or -.';
    END IF;
    IF EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = define.name) THEN
        RAISE EXCEPTION 'observer "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Choose another name, or drop it first with observer_drop().';
    END IF;

    -- No table: a job queue, fed by observer_enqueue() instead of row changes.
    IF table_name IS NULL THEN
        IF condition IS NOT NULL THEN
            RAISE EXCEPTION 'a job queue (observer without a table) takes no condition'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Decide before observer_enqueue(), or observe a table.';
        END IF;
        IF options ?| ARRAY['columns', 'changed_columns', 'max_payload_bytes', 'dedup_window', 'dedup_key', 'dedup_coalesce', 'ordering_key'] THEN
            RAISE EXCEPTION 'a job queue (observer without a table) takes no row options'
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'columns, changed_columns, max_payload_bytes, dedup_* and ordering_key apply to captured rows.',
                      HINT = 'Use an idempotency key in observer_enqueue() for unique jobs, and its ordering key for FIFO.';
        END IF;
    ELSE
        SELECT c.relkind, c.relpersistence INTO rel FROM pg_class c WHERE c.oid = table_name;
        IF rel.relkind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION '"%" is not a table', table_name
                USING ERRCODE = 'wrong_object_type',
                      HINT = 'Observers watch ordinary or partitioned tables, not views, foreign tables or sequences.';
        END IF;
        IF rel.relpersistence = 't' THEN
            RAISE EXCEPTION 'cannot observe temporary table "%"', table_name
                USING ERRCODE = 'wrong_object_type',
                      DETAIL = 'Its rows are invisible to the dispatcher, which runs in another session.';
        END IF;

        SELECT array_agg(DISTINCT upper(btrim(e)) ORDER BY upper(btrim(e))) INTO evs FROM unnest(events) e;
        IF evs IS NULL OR NOT evs <@ ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] THEN
            RAISE EXCEPTION 'invalid observer events: %', coalesce(events::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use a non-empty subset of {INSERT,UPDATE,DELETE,TRUNCATE}.';
        END IF;

        path := observer.check_condition(condition);
    END IF;

    IF action IS NULL THEN
        RAISE EXCEPTION 'observer action is required'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass action => ''{"type": "webhook", "url": "https://..."}''.';
    END IF;
    act := @extschema@.observer_validate_action(action);

    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'observer options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR opt_key IN SELECT jsonb_object_keys(options) LOOP
        BEGIN
            CASE opt_key
                WHEN 'max_attempts' THEN max_att := (options ->> opt_key)::integer;
                WHEN 'backoff_base' THEN base := (options ->> opt_key)::interval;
                WHEN 'backoff_cap' THEN cap := (options ->> opt_key)::interval;
                WHEN 'max_payload_bytes' THEN max_payload := (options ->> opt_key)::integer;
                WHEN 'columns' THEN cols := observer.check_columns(table_name, options -> opt_key, opt_key);
                WHEN 'changed_columns' THEN changed_cols := observer.check_columns(table_name, options -> opt_key, opt_key);
                WHEN 'dedup_window' THEN dedup_win := (options ->> opt_key)::interval;
                WHEN 'dedup_key' THEN dedup_path := observer.check_path(options ->> opt_key, opt_key);
                WHEN 'dedup_coalesce' THEN dedup_coal := (options ->> opt_key)::boolean;
                WHEN 'fifo' THEN fifo_mode := CASE WHEN (options ->> opt_key)::boolean THEN coalesce(fifo_mode, 'block') END;
                WHEN 'fifo_on_failure' THEN fifo_policy := options ->> opt_key;
                WHEN 'ordering_key' THEN order_path := observer.check_path(options ->> opt_key, opt_key);
                WHEN 'priority' THEN prio := (options ->> opt_key)::smallint;
                ELSE
                    RAISE EXCEPTION 'unknown observer option "%"', opt_key
                        USING ERRCODE = 'invalid_parameter_value',
                              HINT = 'Known options: max_attempts, backoff_base, backoff_cap, max_payload_bytes, columns, changed_columns, dedup_window, dedup_key, dedup_coalesce, fifo, fifo_on_failure, ordering_key, priority.';
            END CASE;
        EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format OR numeric_value_out_of_range
                       OR datetime_field_overflow OR interval_field_overflow THEN
            RAISE EXCEPTION 'invalid value for observer option "%": %', opt_key, options -> opt_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'max_attempts, max_payload_bytes and priority (-32768 to 32767) are integers; backoff_base and backoff_cap are intervals such as "2 seconds".';
        END;
    END LOOP;
    IF max_payload NOT BETWEEN 1024 AND 104857600 THEN
        RAISE EXCEPTION 'invalid max_payload_bytes: %', max_payload
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 1024 to 104857600 bytes; larger rows are captured as their primary key only.';
    END IF;
    -- An ordering key orders: it implies "fifo": true, and contradicts "fifo": false.
    IF order_path IS NOT NULL THEN
        IF options ? 'fifo' AND fifo_mode IS NULL THEN
            RAISE EXCEPTION 'observer option "ordering_key" needs "fifo": true (or no "fifo" option)'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'An ordering key delivers the jobs of one key in commit order; drop "fifo": false.';
        END IF;
        fifo_mode := coalesce(fifo_mode, 'block');
    END IF;
    IF fifo_policy IS NOT NULL AND fifo_policy NOT IN ('block', 'park') THEN
        RAISE EXCEPTION 'invalid fifo_on_failure: %', fifo_policy
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '"block" holds the key until the failed job is retried or purged; "park" sets it aside and lets later jobs go.';
    END IF;
    IF fifo_policy IS NOT NULL AND fifo_mode IS NULL THEN
        RAISE EXCEPTION 'observer option "fifo_on_failure" needs "fifo": true or "ordering_key"'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- An ordering key's value comes from rows, so any writer of the table can put a job under any
    -- key: by default a dead job is set aside ('park') instead of holding the key for every later
    -- writer's jobs (DESIGN 3a); 'block' stays available when asked for.
    fifo_mode := CASE WHEN fifo_mode IS NOT NULL
                      THEN coalesce(fifo_policy, CASE WHEN order_path IS NOT NULL THEN 'park' ELSE 'block' END) END;
    IF dedup_win IS NOT NULL AND dedup_win <= '0' THEN
        RAISE EXCEPTION 'invalid dedup_window: %', dedup_win
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a positive interval such as "10 minutes".';
    END IF;
    IF dedup_win IS NULL AND (dedup_path IS NOT NULL OR dedup_coal) THEN
        RAISE EXCEPTION 'observer options "dedup_key" and "dedup_coalesce" need "dedup_window"'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Add "dedup_window": "10 minutes" (for example).';
    END IF;
    IF changed_cols IS NOT NULL AND 'UPDATE' <> ALL (evs) THEN
        RAISE EXCEPTION 'observer option "changed_columns" needs UPDATE in events'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_att NOT BETWEEN 1 AND 1000 OR base <= '0' OR cap < base THEN
        RAISE EXCEPTION 'invalid retry options: max_attempts %, backoff_base %, backoff_cap %', max_att, base, cap
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 1 <= max_attempts <= 1000 and 0 < backoff_base <= backoff_cap.';
    END IF;

    -- The primary key, for the default ordering key (table + primary key).
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO key_cols
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = table_name AND i.indisprimary;

    INSERT INTO observer.observers (name, table_oid, table_name, key_columns, events, condition, columns,
                                    changed_columns, max_payload_bytes, dedup_window, dedup_key, dedup_coalesce,
                                    fifo, action, max_attempts, backoff_base, backoff_cap, priority, ordering_path)
    VALUES (name, table_name, table_name::text, key_cols, evs, path, cols, changed_cols, max_payload,
            dedup_win, dedup_path, dedup_coal, fifo_mode, act, max_att, base, cap, prio, order_path)
    RETURNING id INTO new_id;

    RETURN new_id;
END
$$;

CREATE OR REPLACE FUNCTION observer_resume(name text) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    oid_ bigint;
    n    bigint;
BEGIN
    UPDATE observer.observers o SET paused_at = NULL, paused_reason = NULL, updated_at = now()
    WHERE o.name = observer_resume.name RETURNING o.id INTO oid_;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(name);
    END IF;
    UPDATE observer.jobs j SET run_at = clock_timestamp()
    WHERE j.observer_id = oid_ AND j.state = 'pending' AND j.run_at = 'infinity';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM observer.wake_workers();
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION observer_definition(name text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o observer.observers;
BEGIN
    SELECT * INTO o FROM observer.observers x WHERE x.name = observer_definition.name;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(name);
    END IF;
    RETURN jsonb_build_object(
        'name', o.name,
        'table', o.table_oid::regclass::text,
        'events', to_jsonb(o.events),
        'condition', o.condition::text,
        'action', o.action,
        'enabled', o.enabled,
        'options', jsonb_strip_nulls(jsonb_build_object(
            'max_attempts', o.max_attempts,
            'backoff_base', o.backoff_base::text,
            'backoff_cap', o.backoff_cap::text,
            'priority', o.priority,
            'max_payload_bytes', CASE WHEN o.table_oid IS NOT NULL THEN o.max_payload_bytes END,
            'columns', to_jsonb(o.columns),
            'changed_columns', to_jsonb(o.changed_columns),
            'dedup_window', o.dedup_window::text,
            'dedup_key', o.dedup_key::text,
            'dedup_coalesce', CASE WHEN o.dedup_window IS NOT NULL THEN o.dedup_coalesce END,
            'fifo', CASE WHEN o.fifo IS NOT NULL THEN true END,
            'fifo_on_failure', o.fifo,
            'ordering_key', o.ordering_path::text)));
END
$$;

CREATE OR REPLACE FUNCTION observer_replace(
    name       text,
    table_name regclass,
    events     text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE'],
    condition  text DEFAULT NULL,
    action     jsonb DEFAULT NULL,
    options    jsonb DEFAULT '{}'
) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old      observer.observers;
    fresh    observer.observers;
    tmp      text := '_replace_' || txid_current();
    before   jsonb;
    after    jsonb;
BEGIN
    SELECT * INTO old FROM observer.observers o WHERE o.name = observer_replace.name FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(name);
    END IF;
    before := @extschema@.observer_definition(name) - 'enabled' - 'name';
    -- Validate and normalise through observer_create under a temporary name, then move the
    -- definition onto the existing row.
    PERFORM observer.define(tmp, table_name, events, condition, action, options);
    SELECT * INTO fresh FROM observer.observers o WHERE o.name = tmp;
    DELETE FROM observer.observers o WHERE o.id = fresh.id;
    UPDATE observer.observers o SET
        table_oid = fresh.table_oid, table_name = fresh.table_name, key_columns = fresh.key_columns,
        events = fresh.events, condition = fresh.condition, columns = fresh.columns,
        changed_columns = fresh.changed_columns, max_payload_bytes = fresh.max_payload_bytes,
        dedup_window = fresh.dedup_window, dedup_key = fresh.dedup_key, dedup_coalesce = fresh.dedup_coalesce,
        fifo = fresh.fifo, action = fresh.action, max_attempts = fresh.max_attempts,
        backoff_base = fresh.backoff_base, backoff_cap = fresh.backoff_cap, priority = fresh.priority,
        ordering_path = fresh.ordering_path, updated_at = now()
    WHERE o.id = old.id;
    -- A pending batch job's array and words were made with the old definition (its `columns`
    -- above all: a column left out now must not go out): its events go as jobs of their own,
    -- which the claim makes with the new one (queue.sql, "Batch jobs").
    PERFORM observer.split_batches(ARRAY(
        SELECT j.id FROM observer.jobs j
        WHERE j.observer_id = old.id AND j.event_ids IS NOT NULL AND j.state = 'pending'
        FOR UPDATE));
    PERFORM observer.sync_capture(fresh.table_oid);
    IF old.table_oid IS DISTINCT FROM fresh.table_oid THEN
        PERFORM observer.sync_capture(old.table_oid);
    END IF;
    after := @extschema@.observer_definition(name) - 'enabled' - 'name';
    RETURN ARRAY(SELECT k FROM jsonb_object_keys(before || after) k
                 WHERE before -> k IS DISTINCT FROM after -> k ORDER BY k);
END
$$;

CREATE OR REPLACE FUNCTION observer.wake_workers() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_notify('fraiseql_observers_jobs', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION observer.change_context(tx xid8, role text, context jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN tx IS NULL THEN '{}'::jsonb
            ELSE pg_catalog.jsonb_build_object('txid', tx::text::bigint) END
       OPERATOR(pg_catalog.||) CASE WHEN role IS NULL THEN '{}'::jsonb
                                    ELSE pg_catalog.jsonb_build_object('role', role) END
       OPERATOR(pg_catalog.||) CASE WHEN context IS NULL THEN '{}'::jsonb
                                    ELSE pg_catalog.jsonb_build_object('context', context) END;

CREATE OR REPLACE FUNCTION observer.decide(op text, table_name text, old jsonb, new jsonb, changed text[],
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

CREATE OR REPLACE FUNCTION observer.bounded_key(k text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN octet_length(k) <= 512 THEN k
            ELSE 'sha256:' || encode(sha256(convert_to(k, 'UTF8')), 'hex') END;

CREATE OR REPLACE FUNCTION observer.ordering_key(table_name text, key_columns text[], old jsonb, new jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN key_columns IS NULL THEN NULL
            ELSE observer.bounded_key(table_name || ':' || (SELECT jsonb_agg(coalesce(new, old) -> k ORDER BY ord)::text
                                                            FROM unnest(key_columns) WITH ORDINALITY AS c(k, ord)))
       END;

CREATE OR REPLACE FUNCTION observer.fifo_key(fifo text, ordering_path jsonpath, table_name text, key_columns text[],
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

CREATE OR REPLACE FUNCTION observer.event_rows(l observer.event_log) RETURNS SETOF observer.event
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

CREATE OR REPLACE FUNCTION observer.event(event_id bigint) RETURNS SETOF observer.event
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

CREATE OR REPLACE FUNCTION observer.events_of(event_ids bigint[]) RETURNS SETOF observer.event
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

CREATE OR REPLACE FUNCTION observer.decode_one(event_id bigint) RETURNS SETOF observer.decoded_event
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

CREATE OR REPLACE FUNCTION observer.events_safe(event_ids bigint[]) RETURNS SETOF observer.decoded_event
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

CREATE OR REPLACE FUNCTION observer.decode_log(log_id bigint, nrows integer) RETURNS SETOF observer.decoded_event
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT e.* FROM observer.events_safe(ARRAY(SELECT log_id + k FROM generate_series(0, nrows - 1) k)) e
    ORDER BY e.id
$$;

-- observer.batch_events(action, fifo, dedup_window): how many events one batch job of an
-- observer holds (queue.sql, "Batch jobs"), or NULL when its jobs are one per event: only a
-- webhook whose action asks for batches of at least 2 (max_events, 100 when not given, as the
-- worker reads it), without per-key order (fifo) or deduplication, whose jobs are per event.
-- Inlined (no SET clause).
CREATE OR REPLACE FUNCTION observer.batch_events(action jsonb, fifo text, dedup_window interval) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN fifo IS NULL AND dedup_window IS NULL
                 AND action OPERATOR(pg_catalog.->>) 'type' OPERATOR(pg_catalog.=) 'webhook'
                 AND pg_catalog.jsonb_typeof(action OPERATOR(pg_catalog.->) 'batch') OPERATOR(pg_catalog.=) 'object'
            THEN NULLIF(GREATEST(COALESCE(
                     (action OPERATOR(pg_catalog.->) 'batch' OPERATOR(pg_catalog.->>) 'max_events')::integer, 100), 1), 1) END;

-- observer.batch_max_bytes(action): the most bytes of a batch's documents (the action's
-- batch.max_bytes, 1 MiB when not given, as the worker reads it). Inlined.
CREATE OR REPLACE FUNCTION observer.batch_max_bytes(action jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN COALESCE((action OPERATOR(pg_catalog.->) 'batch' OPERATOR(pg_catalog.->>) 'max_bytes')::bigint, 1048576);

-- observer.batch_key(event_ids, observer_id): the webhook-id of a batch job: the id the worker
-- gives a request of the same events as jobs of their own (worker/src/actions/batch.rs,
-- batch_id): "batch_" and 32 hex digits of the SHA-256 over each element's key
-- (evt_<event>_<observer>) as its length in 8 big-endian bytes then its bytes, then the count.
CREATE OR REPLACE FUNCTION observer.batch_key(event_ids bigint[], observer_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'batch_' || left(encode(sha256(string_agg(int8send(octet_length(k.key)::bigint) || convert_to(k.key, 'UTF8'),
                                                     ''::bytea ORDER BY k.n)
                                          || int8send(count(*))), 'hex'), 32)
    FROM (SELECT 'evt_' || u.id || '_' || observer_id AS key, u.n
          FROM unnest(event_ids) WITH ORDINALITY AS u(id, n)) k
$$;

CREATE OR REPLACE FUNCTION observer.dedup_one(e observer.event, o observer.observers) RETURNS integer
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

CREATE OR REPLACE FUNCTION observer_dispatch(max_events integer DEFAULT 10000, dispatcher text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION observer.words(error text, doc jsonb) RETURNS tsvector
LANGUAGE sql STABLE
RETURN CASE WHEN observer.setting_on('fraiseql_observers.audit_search', true) THEN
    pg_catalog.setweight(pg_catalog.to_tsvector('simple', pg_catalog.left(COALESCE(error, ''), 4000)), 'A')
    OPERATOR(pg_catalog.||)
    pg_catalog.setweight(pg_catalog.jsonb_to_tsvector('simple', @extschema@.observer_bounded_doc(COALESCE(doc, '{}')),
                                                      '["string", "numeric"]'), 'B')
END;

-- observer.batch_words(doc): the words of a batch job's attempt (observer.words, for a document
-- given as JSON text): its strings and numbers when it is at most 100,000 bytes, else the words
-- of its first 100,000 characters, keys included; NULL when audit_search is off. Inlined.
CREATE OR REPLACE FUNCTION observer.batch_words(doc text) RETURNS tsvector
LANGUAGE sql STABLE
RETURN CASE WHEN observer.setting_on('fraiseql_observers.audit_search', true) THEN
    pg_catalog.setweight(CASE WHEN pg_catalog.octet_length(doc) OPERATOR(pg_catalog.<=) 100000
                              THEN pg_catalog.json_to_tsvector('simple', doc::json, '["string", "numeric"]')
                              ELSE pg_catalog.to_tsvector('simple', pg_catalog.left(doc, 100000)) END, 'B')
END;

CREATE OR REPLACE FUNCTION observer.project_doc(doc jsonb, cols text[], keys text[]) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN cols IS NULL OR doc IS NULL THEN doc
            ELSE doc OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(
                'old', CASE WHEN pg_catalog.jsonb_typeof(doc OPERATOR(pg_catalog.->) 'old') OPERATOR(pg_catalog.=) 'object'
                            THEN observer.project(doc OPERATOR(pg_catalog.->) 'old', cols, keys)
                            ELSE doc OPERATOR(pg_catalog.->) 'old' END,
                'new', CASE WHEN pg_catalog.jsonb_typeof(doc OPERATOR(pg_catalog.->) 'new') OPERATOR(pg_catalog.=) 'object'
                            THEN observer.project(doc OPERATOR(pg_catalog.->) 'new', cols, keys)
                            ELSE doc OPERATOR(pg_catalog.->) 'new' END)
       END;

CREATE OR REPLACE FUNCTION observer.attempt_docs(event_ids bigint[]) RETURNS TABLE (event_id bigint, doc jsonb)
LANGUAGE sql STABLE AS $$
    SELECT e.id, CASE WHEN e.error IS NULL THEN observer.event_doc(e.table_name, e.op, e.old, e.new)
                      ELSE pg_catalog.jsonb_build_object('table', e.table_name, 'op', e.op, 'error', e.error) END
    FROM observer.events_safe(event_ids) e
    WHERE observer.setting_on('fraiseql_observers.audit_search', true)
$$;

-- observer.event_document(...): the document delivered for an event (the event branch of
-- observer.job_payload below, which reads it as jsonb), as JSON text, with `webhook_id` when
-- given (an element of a batch job): who made the change as observer.change_context says it,
-- each only when known. Text, written out field by field: 3.5 µs an event, against 11.6 to build
-- it as jsonb (1,000 events, one statement), so the dispatcher makes a batch job's array of these
-- (observer_dispatch) and the claim reads it as jsonb at the worker's session. Every string through
-- to_json and every row through jsonb's own output, so the text is always valid JSON. Inlined (no
-- SET clause).
CREATE OR REPLACE FUNCTION observer.event_document(observer_name text, cols text[], keys text[], ev_id bigint,
                                        ev_created timestamptz, ev_table text, ev_op text, ev_old jsonb,
                                        ev_new jsonb, ev_oversize integer, ev_tx xid8, ev_role text,
                                        ev_context jsonb, attempt integer, webhook_id text)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
-- Every value is written, `null` when missing (an event that is gone), so the text stays JSON.
RETURN pg_catalog.concat(
    '{"type":', COALESCE(pg_catalog.to_json(observer_name)::text, 'null'),
    ',"timestamp":', COALESCE(pg_catalog.to_json(ev_created)::text, 'null'),
    ',"attempt":', COALESCE(attempt::text, 'null'),
    CASE WHEN webhook_id IS NOT NULL THEN pg_catalog.concat(',"webhook_id":', pg_catalog.to_json(webhook_id)) END,
    ',"data":{"event_id":', COALESCE(ev_id::text, 'null'),
    ',"observer":', COALESCE(pg_catalog.to_json(observer_name)::text, 'null'),
    ',"table":', COALESCE(pg_catalog.to_json(ev_table)::text, 'null'),
    ',"op":', COALESCE(pg_catalog.to_json(ev_op)::text, 'null'),
    -- observer.project is a call (its subquery keeps it from being inlined): only when the
    -- observer lists columns (two calls cost a fifth of a claim).
    ',"old":', COALESCE((CASE WHEN cols IS NULL THEN ev_old ELSE observer.project(ev_old, cols, keys) END)::text, 'null'),
    ',"new":', COALESCE((CASE WHEN cols IS NULL THEN ev_new ELSE observer.project(ev_new, cols, keys) END)::text, 'null'),
    CASE WHEN ev_oversize IS NOT NULL THEN pg_catalog.concat(',"oversize":{"bytes":', ev_oversize, '}') END,
    CASE WHEN ev_tx IS NOT NULL THEN pg_catalog.concat(',"txid":', ev_tx) END,
    CASE WHEN ev_role IS NOT NULL THEN pg_catalog.concat(',"role":', pg_catalog.to_json(ev_role)) END,
    CASE WHEN ev_context IS NOT NULL THEN pg_catalog.concat(',"context":', ev_context) END,
    '}}');

CREATE OR REPLACE FUNCTION observer.job_payload(observer_name text, cols text[], keys text[],
                                     job_event_id bigint, job_payload jsonb, job_created timestamptz,
                                     ev_id bigint, ev_created timestamptz, ev_table text, ev_op text,
                                     ev_old jsonb, ev_new jsonb, ev_oversize integer,
                                     ev_tx xid8, ev_role text, ev_context jsonb, job_attempt integer)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE WHEN job_event_id IS NULL THEN
    pg_catalog.jsonb_build_object('type', observer_name, 'timestamp', job_created, 'attempt', job_attempt,
                                  'data', job_payload)
-- As fast read from observer.event_document's text as built as jsonb (11.6 µs an event both).
ELSE observer.event_document(observer_name, cols, keys, ev_id, ev_created, ev_table, ev_op, ev_old, ev_new,
                             ev_oversize, ev_tx, ev_role, ev_context, job_attempt, NULL)::jsonb
END;

CREATE OR REPLACE FUNCTION observer_claim(worker text, max_jobs integer DEFAULT 100, lease interval DEFAULT '30 seconds')
RETURNS TABLE (job_id bigint, token bigint, attempt integer, lease_until timestamptz, observer text,
               action jsonb, idempotency_key text, payload jsonb, event_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_sort = off SET enable_bitmapscan = off SET jit = off AS $$
#variable_conflict use_column
DECLARE
    -- The claim's clock, read once. Compared with a variable, `lease_until < claim_clock` is an
    -- index condition that bounds the jobs_leased scans, and `run_at <= claim_clock` is checked
    -- in jobs_ready without fetching the row. With clock_timestamp() (volatile) in the conditions
    -- instead, the three lease scans read every running job (with 2,000 running, 6,000 heap
    -- fetches for each claim).
    claim_clock timestamptz := clock_timestamp();
    to_split    bigint[];
BEGIN
    IF worker IS NULL OR worker = '' THEN
        RAISE EXCEPTION 'worker name is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF max_jobs IS NULL OR max_jobs < 1 OR max_jobs > 10000 THEN
        RAISE EXCEPTION 'max_jobs must be between 1 and 10000, not %', coalesce(max_jobs::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM observer.check_lease(lease);

    -- Batch jobs whose lease expired become jobs of their own events first: the statements below
    -- then treat each event as they always did (ended on its last attempt, held, or handed over).
    to_split := ARRAY(SELECT j.id FROM observer.jobs j
                      WHERE j.state = 'running' AND j.lease_until < claim_clock AND j.event_ids IS NOT NULL
                      FOR UPDATE SKIP LOCKED);
    IF cardinality(to_split) > 0 THEN
        PERFORM observer.split_batches(to_split);
    END IF;

    -- A lease that expired on the job's last attempt ends the job: a job that kills its worker
    -- every time must not be retried forever.
    WITH dead AS (
        UPDATE observer.jobs j
        SET state = 'dead', finished_at = clock_timestamp(), lease_until = NULL,
            last_error = 'lease expired on the last attempt (worker died or stalled)'
        FROM observer.observers o
        WHERE o.id = j.observer_id AND j.state = 'running' AND j.lease_until < claim_clock
          AND j.attempt >= coalesce(j.attempts_allowed, o.max_attempts)
        RETURNING j.id, j.attempt, j.worker
    )
    INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, search)
    SELECT id, attempt, dead.worker, 'expired', 'lease expired', observer.words('lease expired', NULL) FROM dead
    ON CONFLICT DO NOTHING;

    -- An expired lease of a paused observer's job: held with the observer's other jobs, not
    -- handed to another worker (its endpoint may be gone).
    WITH held AS (
        UPDATE observer.jobs j
        SET state = 'pending', run_at = 'infinity', lease_until = NULL
        FROM observer.observers o
        WHERE o.id = j.observer_id AND j.state = 'running' AND j.lease_until < claim_clock
          AND o.paused_at IS NOT NULL
        RETURNING j.id, j.attempt, j.worker
    )
    INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, search)
    SELECT id, attempt, held.worker, 'expired', 'lease expired', observer.words('lease expired', NULL) FROM held
    ON CONFLICT DO NOTHING;

    RETURN QUERY
    WITH expired AS (
        -- Never past the attempt budget: a lease that ran out between the statement above and
        -- this one is ended by the next claim instead.
        -- A batch job is never handed over whole (split above; one locked elsewhere waits).
        SELECT j.id, j.event_id, j.event_ids FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
        WHERE j.state = 'running' AND j.lease_until < claim_clock
          AND j.attempt < coalesce(j.attempts_allowed, o.max_attempts) AND o.paused_at IS NULL
          AND j.event_ids IS NULL
        ORDER BY j.lease_until
        LIMIT max_jobs
        FOR UPDATE OF j SKIP LOCKED
    ), ready AS (
        -- Per-key FIFO (observer option fifo): only the oldest unfinished job of a key is
        -- claimable; a dead one still holds the key under policy 'block', not under 'park'.
        -- Job ids follow commit order for a key (dispatch reads batches in commit order and each
        -- batch in event id order), so "oldest" is "first committed".
        -- A job has an ordering key only if its observer is FIFO. No join here: the scan must
        -- stay in jobs_ready order and stop at max_jobs whatever the statistics say (joined,
        -- with statistics taken while the queue was empty, the planner sorted every pending job
        -- on each claim).
        SELECT j.id, j.event_id, j.event_ids FROM observer.jobs j
        WHERE j.state = 'pending' AND j.run_at <= claim_clock
          AND (j.ordering_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM observer.jobs p JOIN observer.observers o ON o.id = p.observer_id
                WHERE p.observer_id = j.observer_id AND p.ordering_key = j.ordering_key AND p.id < j.id
                  AND (p.state IN ('pending', 'running') OR (p.state = 'dead' AND o.fifo = 'block'))))
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT max_jobs
        FOR UPDATE OF j SKIP LOCKED
    ), picked AS (
        SELECT id, event_id, event_ids
        FROM (SELECT id, event_id, event_ids FROM expired UNION ALL SELECT id, event_id, event_ids FROM ready) p
        LIMIT max_jobs
    ), evs AS MATERIALIZED (
        -- The picked jobs' events, each event_log row decoded once (not once per job). An event
        -- that cannot be read (observer.events_safe) is never handed out: its job goes to the
        -- dead-letter queue with the reason, and every other job of the claim goes on. A batch
        -- job's documents were made by the dispatcher: its events are not read again.
        SELECT * FROM observer.events_safe(ARRAY(SELECT event_id FROM picked WHERE event_id IS NOT NULL
                                                                              AND event_ids IS NULL))
    ), verdicts AS (
        SELECT p.id, e.error FROM picked p LEFT JOIN evs e ON e.id = p.event_id AND e.error IS NOT NULL
    ), expired_attempts AS (
        -- The attempt whose lease ran out is recorded before the job is handed to someone else.
        INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, search)
        SELECT j.id, j.attempt, j.worker, 'expired', 'lease expired', observer.words('lease expired', NULL)
        FROM observer.jobs j WHERE j.id IN (SELECT id FROM expired) AND j.id IN (SELECT id FROM picked)
        ON CONFLICT DO NOTHING
    ), claimed AS (
        UPDATE observer.jobs j
        SET state = CASE WHEN v.error IS NULL THEN 'running' ELSE 'dead' END,
            attempt = j.attempt + 1,
            -- One token per claim call: tokens only have to grow with each claim of a job.
            lease_token = (SELECT nextval('observer.lease_token_seq')),
            lease_until = CASE WHEN v.error IS NULL THEN clock_timestamp() + lease END,
            finished_at = CASE WHEN v.error IS NULL THEN j.finished_at ELSE clock_timestamp() END,
            last_error = CASE WHEN v.error IS NULL THEN j.last_error
                              ELSE 'event could not be read: ' || v.error END,
            worker = observer_claim.worker
        FROM verdicts v
        WHERE j.id = v.id
        RETURNING j.*, v.error AS unreadable
    ), unreadable_attempts AS (
        INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, search)
        SELECT c.id, c.attempt, c.worker, 'dead', c.last_error, observer.words(c.last_error, NULL)
        FROM claimed c WHERE c.unreadable IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    SELECT c.id, c.lease_token, c.attempt, c.lease_until, o.name, o.action, c.idempotency_key,
           -- A batch job: the array the dispatcher made for its attempt 1 (a snooze gives the
           -- attempt back; a failure, discard or expired lease splits it; observer_replay makes
           -- the array again for the attempt that comes).
           CASE WHEN c.event_ids IS NOT NULL THEN b.doc
                ELSE observer.job_payload(o.name, o.columns, o.key_columns, c.event_id, c.payload, c.created_at,
                                          e.id, e.created_at, e.table_name, e.op, e.old, e.new, e.oversize,
                                          e.tx, e.role, e.context, c.attempt) END,
           -- When the change was captured (its transaction's start) or the job enqueued: the
           -- worker's event-to-delivery lag is measured from it.
           CASE WHEN c.event_ids IS NOT NULL THEN (b.doc -> 0 ->> 'timestamp')::timestamptz
                ELSE coalesce(e.created_at, c.created_at) END
    FROM claimed c
    JOIN observer.observers o ON o.id = c.observer_id
    LEFT JOIN evs e ON e.id = c.event_id
    -- Read as jsonb here, at the worker's session, not by the one dispatcher (6 µs an event).
    LEFT JOIN LATERAL (SELECT c.documents::jsonb AS doc) b ON c.event_ids IS NOT NULL
    WHERE c.unreadable IS NULL
    ORDER BY c.id;
END
$$;

CREATE OR REPLACE FUNCTION observer_complete(job_ids bigint[], tokens bigint[], endpoints text[] DEFAULT NULL,
                                  statuses integer[] DEFAULT NULL, durations_ms integer[] DEFAULT NULL)
RETURNS TABLE (job_id bigint, accepted boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(job_ids), 0);
BEGIN
    PERFORM observer.check_pairs(job_ids, tokens);
    PERFORM observer.check_audit(job_ids, endpoints, statuses, durations_ms);
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(job_ids, tokens,
                             coalesce(endpoints, array_fill(NULL::text, ARRAY[n])),
                             coalesce(statuses, array_fill(NULL::integer, ARRAY[n])),
                             coalesce(durations_ms, array_fill(NULL::integer, ARRAY[n])))
                 AS i(id, token, endpoint, status, ms)
    ), done AS (
        UPDATE observer.jobs j
        SET state = 'completed', finished_at = clock_timestamp(), lease_until = NULL, last_error = NULL,
            documents = NULL
        FROM input
        WHERE j.id = input.id AND j.lease_token = input.token AND observer.is_running(j.state)
        RETURNING j.id, j.attempt, j.worker, j.observer_id, j.event_id, j.event_ids, j.search, j.payload,
                  input.endpoint, input.status, input.ms
    ), docs AS (
        SELECT * FROM observer.attempt_docs(ARRAY(SELECT event_id FROM done WHERE event_id IS NOT NULL AND event_ids IS NULL))
    ), logged AS (
        -- A batch job's words were computed when it was made (observer_dispatch).
        INSERT INTO observer.attempts (job_id, attempt, worker, outcome, endpoint, status, duration_ms, search)
        SELECT d.id, d.attempt, d.worker, 'completed', d.endpoint, d.status, d.ms,
               CASE WHEN d.event_ids IS NOT NULL
                    THEN CASE WHEN observer.setting_on('fraiseql_observers.audit_search', true) THEN d.search END
                    ELSE observer.words(NULL, CASE WHEN d.event_id IS NULL THEN d.payload
                                                   ELSE observer.project_doc(docs.doc, o.columns, o.key_columns) END) END
        FROM done d JOIN observer.observers o ON o.id = d.observer_id
        LEFT JOIN docs ON docs.event_id = d.event_id
        ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = excluded.outcome, finished_at = excluded.finished_at,
            endpoint = excluded.endpoint, status = excluded.status, duration_ms = excluded.duration_ms,
            search = excluded.search
    )
    -- A join, not EXISTS per row: a correlated scan of the CTE is quadratic in the batch size.
    SELECT input.id, done.id IS NOT NULL FROM input LEFT JOIN done ON done.id = input.id;
END
$$;

-- Batch jobs. For a webhook observer with a `batch` policy (observer.batch_events), the
-- dispatcher makes one job for each full batch of the events one statement matched (one
-- event_log row): `event_ids` lists them, `event_id` is the first, the webhook-id is the batch's
-- (observer.batch_key). A claim hands it out as one job whose payload is the array of the events'
-- documents, each with its own webhook-id; its completion writes one attempt. That is one job row
-- claimed and completed for up to max_events events instead of one per event (docs/benchmarks.md,
-- "Batching"). A batch job is only ever pending, running or completed: whatever else happens to
-- it, it is first split into jobs of its own events (observer.split_batches), which then go their
-- usual way, each with its attempts, backoff and dead-letter entry:
--   - a failed or discarded attempt (observer_fail, observer_discard: the failure is each event's);
--   - a lease that expired, or an event that can no longer be read (observer_claim);
--   - the worker's call (observer_split): the receiver refused the batch's content, so its events
--     must be sent in smaller batches to find the one at fault, or the observer's action no longer
--     batches.

-- observer.split_batches(job_ids): the batch jobs among job_ids (locked by the caller) become
-- jobs of their own events, which keep everything else of the batch job (state, attempt, lease,
-- token, worker, due time); the batch job's row becomes its first event's job. For each batch
-- job, the jobs of its events.
CREATE OR REPLACE FUNCTION observer.split_batches(job_ids bigint[]) RETURNS TABLE (batch_id bigint, job_id bigint)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH batch AS (
        SELECT j.id, j.event_ids FROM observer.jobs j WHERE j.id = ANY (job_ids) AND j.event_ids IS NOT NULL
    ), head AS (
        UPDATE observer.jobs j
        SET event_ids = NULL, search = NULL, documents = NULL, idempotency_key = 'evt_' || j.event_id || '_' || j.observer_id,
            last_error = NULL
        FROM batch WHERE j.id = batch.id
        RETURNING j.*, batch.event_ids AS all_ids
    ), rest AS (
        INSERT INTO observer.jobs (observer_id, event_id, idempotency_key, priority, snoozes, state, attempt,
                                   attempts_allowed, run_at, lease_token, lease_until, worker, created_at,
                                   finished_at)
        SELECT f.observer_id, u.id, 'evt_' || u.id || '_' || f.observer_id, f.priority, f.snoozes, f.state,
               f.attempt, f.attempts_allowed, f.run_at, f.lease_token, f.lease_until, f.worker, f.created_at,
               f.finished_at
        FROM head f CROSS JOIN LATERAL unnest(f.all_ids[2:]) AS u(id)
        ORDER BY u.id, f.observer_id
        ON CONFLICT (event_id, observer_id) WHERE event_id IS NOT NULL DO NOTHING
        RETURNING id, observer_id, event_id
    )
    SELECT f.id, f.id FROM head f
    UNION ALL
    SELECT f.id, r.id FROM rest r JOIN head f ON f.observer_id = r.observer_id AND r.event_id = ANY (f.all_ids)
$$;

-- observer.held_batches(job_ids, tokens): the batch jobs among job_ids that the caller still
-- holds (running, its token matching), locked for the caller's transaction.
CREATE OR REPLACE FUNCTION observer.held_batches(job_ids bigint[], tokens bigint[]) RETURNS bigint[]
LANGUAGE sql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT ARRAY(SELECT j.id FROM observer.jobs j JOIN unnest(job_ids, tokens) AS i(id, token) ON j.id = i.id
                 WHERE j.event_ids IS NOT NULL AND j.lease_token = i.token AND observer.is_running(j.state)
                 FOR UPDATE OF j)
$$;

-- observer.expand_batches(job_ids, held): the batch jobs `held` (observer.held_batches) split,
-- their events' jobs keeping the lease and token; for each position n of job_ids, the jobs that
-- now stand for it: itself, or its events' jobs.
CREATE OR REPLACE FUNCTION observer.expand_batches(job_ids bigint[], held bigint[])
RETURNS TABLE (n bigint, orig bigint, job_id bigint)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH s AS MATERIALIZED (SELECT * FROM observer.split_batches(held))
    SELECT i.n, i.id, coalesce(s.job_id, i.id)
    FROM unnest(job_ids) WITH ORDINALITY AS i(id, n) LEFT JOIN s ON s.batch_id = i.id
    ORDER BY i.n, coalesce(s.job_id, i.id)
$$;

-- observer.pick(values, positions): values[positions[1]], values[positions[2]], ... (NULL for
-- NULL values): an outcome call's per-job arguments, spread over the jobs expand_batches made.
CREATE OR REPLACE FUNCTION observer.pick(vals anyarray, positions bigint[]) RETURNS anyarray
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN vals IS NULL THEN NULL
                ELSE ARRAY(SELECT vals[u.k] FROM pg_catalog.unnest(positions) WITH ORDINALITY AS u(k, o) ORDER BY u.o) END
$$;

-- observer_split(job_ids, tokens): the worker gives back batch jobs it holds, to be sent as
-- jobs of their own events (the receiver refused the batch's content, the batch is over the
-- action's max_bytes, or the observer's action no longer batches): the events' jobs are pending
-- and due now (held while the observer is paused), the attempt the claim counted is given back.
-- accepted = false for a job that is not a running batch job with that token.
CREATE OR REPLACE FUNCTION observer_split(job_ids bigint[], tokens bigint[])
RETURNS TABLE (job_id bigint, accepted boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    back bigint[];
BEGIN
    PERFORM observer.check_pairs(job_ids, tokens);
    back := observer.held_batches(job_ids, tokens);
    IF cardinality(back) > 0 THEN
        UPDATE observer.jobs j
        SET state = 'pending', attempt = j.attempt - 1, lease_until = NULL,
            run_at = CASE WHEN (SELECT o.paused_at FROM observer.observers o WHERE o.id = j.observer_id) IS NOT NULL
                          THEN 'infinity' ELSE clock_timestamp() END
        WHERE j.id = ANY (back);
        PERFORM observer.split_batches(back);
    END IF;
    RETURN QUERY SELECT i.id, i.id = ANY (back) FROM unnest(job_ids) AS i(id);
END
$$;

CREATE OR REPLACE FUNCTION observer_fail(job_ids bigint[], tokens bigint[], errors text[],
                              retry_not_before timestamptz[] DEFAULT NULL, endpoints text[] DEFAULT NULL,
                              statuses integer[] DEFAULT NULL, durations_ms integer[] DEFAULT NULL)
RETURNS TABLE (job_id bigint, accepted boolean, state text, run_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    n     integer := coalesce(cardinality(job_ids), 0);
    held  bigint[];
    ids   bigint[];
    at    bigint[];
    origs bigint[];
BEGIN
    PERFORM observer.check_pairs(job_ids, tokens);
    PERFORM observer.check_audit(job_ids, endpoints, statuses, durations_ms);
    IF cardinality(job_ids) IS DISTINCT FROM cardinality(errors)
       OR (retry_not_before IS NOT NULL AND cardinality(retry_not_before) <> cardinality(job_ids)) THEN
        RAISE EXCEPTION 'errors (and retry_not_before if given) must have the same length as job_ids'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    held := observer.held_batches(job_ids, tokens);
    IF cardinality(held) > 0 THEN
        -- A batch job's failure is each of its events': split, then fail their jobs, and answer
        -- for the jobs the caller gave.
        SELECT array_agg(x.job_id ORDER BY x.n, x.job_id), array_agg(x.n ORDER BY x.n, x.job_id),
               array_agg(x.orig ORDER BY x.n, x.job_id)
        INTO ids, at, origs FROM observer.expand_batches(job_ids, held) x;
        RETURN QUERY
        SELECT m.orig, bool_and(r.accepted), min(r.state), min(r.run_at)
        FROM @extschema@.observer_fail(ids, observer.pick(tokens, at), observer.pick(errors, at),
                           observer.pick(retry_not_before, at), observer.pick(endpoints, at),
                           observer.pick(statuses, at), observer.pick(durations_ms, at)) r
        JOIN unnest(ids, at, origs) AS m(id, k, orig) ON m.id = r.job_id
        GROUP BY m.k, m.orig ORDER BY m.k;
        RETURN;
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT i.id, i.token, left(i.error, 2000) AS error, i.not_before, i.endpoint, i.status, i.ms
        FROM unnest(job_ids, tokens, errors,
                    coalesce(retry_not_before, array_fill(NULL::timestamptz, ARRAY[n])),
                    coalesce(endpoints, array_fill(NULL::text, ARRAY[n])),
                    coalesce(statuses, array_fill(NULL::integer, ARRAY[n])),
                    coalesce(durations_ms, array_fill(NULL::integer, ARRAY[n])))
             AS i(id, token, error, not_before, endpoint, status, ms)
    ), failed AS (
        UPDATE observer.jobs j
        SET state = CASE WHEN j.attempt >= coalesce(j.attempts_allowed, o.max_attempts) THEN 'dead' ELSE 'pending' END,
            -- In seconds as double precision: base * 2^(attempt-1) overflows an interval for
            -- large attempt numbers.
            -- A paused observer's retries are held like its new jobs (observer_resume).
            run_at = CASE WHEN j.attempt >= coalesce(j.attempts_allowed, o.max_attempts) THEN j.run_at
                          WHEN o.paused_at IS NOT NULL THEN 'infinity' ELSE greatest(
                         clock_timestamp() + make_interval(secs => random() * least(
                             extract(epoch FROM o.backoff_cap)::double precision,
                             extract(epoch FROM o.backoff_base)::double precision * power(2::double precision, least(j.attempt - 1, 60)))),
                         input.not_before) END,
            finished_at = CASE WHEN j.attempt >= coalesce(j.attempts_allowed, o.max_attempts) THEN clock_timestamp() END,
            lease_until = NULL,
            last_error = input.error
        FROM input, observer.observers o
        WHERE j.id = input.id AND j.lease_token = input.token AND observer.is_running(j.state)
          AND o.id = j.observer_id
        RETURNING j.id, j.attempt, j.worker, j.state, j.run_at, j.event_id, j.payload, input.error,
                  input.endpoint, input.status, input.ms, o.columns, o.key_columns
    ), docs AS (
        SELECT * FROM observer.attempt_docs(ARRAY(SELECT event_id FROM failed WHERE event_id IS NOT NULL))
    ), logged AS (
        INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, endpoint, status, duration_ms, search)
        SELECT f.id, f.attempt, f.worker, CASE WHEN f.state = 'dead' THEN 'dead' ELSE 'retry' END, f.error,
               f.endpoint, f.status, f.ms,
               observer.words(f.error, CASE WHEN f.event_id IS NULL THEN f.payload
                                            ELSE observer.project_doc(docs.doc, f.columns, f.key_columns) END)
        FROM failed f LEFT JOIN docs ON docs.event_id = f.event_id
        ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = excluded.outcome, error = excluded.error,
            finished_at = excluded.finished_at, endpoint = excluded.endpoint, status = excluded.status,
            duration_ms = excluded.duration_ms, search = excluded.search
    )
    SELECT input.id, f.id IS NOT NULL, f.state, f.run_at
    FROM input LEFT JOIN failed f ON f.id = input.id;
END
$$;

CREATE OR REPLACE FUNCTION observer_discard(job_ids bigint[], tokens bigint[], reasons text[], pause boolean[] DEFAULT NULL,
                                 endpoints text[] DEFAULT NULL, statuses integer[] DEFAULT NULL,
                                 durations_ms integer[] DEFAULT NULL)
RETURNS TABLE (job_id bigint, accepted boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    n     integer := coalesce(cardinality(job_ids), 0);
    held  bigint[];
    ids   bigint[];
    at    bigint[];
    origs bigint[];
BEGIN
    PERFORM observer.check_pairs(job_ids, tokens);
    PERFORM observer.check_audit(job_ids, endpoints, statuses, durations_ms);
    IF reasons IS NULL THEN
        RAISE EXCEPTION 'reasons must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM observer.check_reasons(job_ids, reasons, 'reasons');
    IF pause IS NOT NULL AND cardinality(pause) IS DISTINCT FROM cardinality(job_ids) THEN
        RAISE EXCEPTION 'pause (when given) must have the same length as job_ids'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    held := observer.held_batches(job_ids, tokens);
    IF cardinality(held) > 0 THEN
        -- A discarded batch job: each of its events' jobs is discarded.
        SELECT array_agg(x.job_id ORDER BY x.n, x.job_id), array_agg(x.n ORDER BY x.n, x.job_id),
               array_agg(x.orig ORDER BY x.n, x.job_id)
        INTO ids, at, origs FROM observer.expand_batches(job_ids, held) x;
        RETURN QUERY
        SELECT m.orig, bool_and(r.accepted)
        FROM @extschema@.observer_discard(ids, observer.pick(tokens, at), observer.pick(reasons, at), observer.pick(pause, at),
                              observer.pick(endpoints, at), observer.pick(statuses, at),
                              observer.pick(durations_ms, at)) r
        JOIN unnest(ids, at, origs) AS m(id, k, orig) ON m.id = r.job_id
        GROUP BY m.k, m.orig ORDER BY m.k;
        RETURN;
    END IF;
    RETURN QUERY
    WITH input AS (
        SELECT i.id, i.token, left(coalesce(i.reason, 'no reason given'), 2000) AS reason, coalesce(i.pause, false) AS pause,
               i.endpoint, i.status, i.ms
        FROM unnest(job_ids, tokens, reasons, coalesce(pause, array_fill(false, ARRAY[n])),
                    coalesce(endpoints, array_fill(NULL::text, ARRAY[n])),
                    coalesce(statuses, array_fill(NULL::integer, ARRAY[n])),
                    coalesce(durations_ms, array_fill(NULL::integer, ARRAY[n])))
             AS i(id, token, reason, pause, endpoint, status, ms)
    ), discarded AS (
        UPDATE observer.jobs j
        SET state = 'dead', finished_at = clock_timestamp(), lease_until = NULL,
            last_error = 'discarded: ' || input.reason
        FROM input
        WHERE j.id = input.id AND j.lease_token = input.token AND observer.is_running(j.state)
        RETURNING j.id, j.attempt, j.worker, j.observer_id, j.event_id, j.payload, input.reason, input.pause,
                  input.endpoint, input.status, input.ms
    ), paused AS (
        UPDATE observer.observers o
        SET paused_at = clock_timestamp(), paused_reason = 'endpoint gone: ' || d.reason, updated_at = now()
        FROM (SELECT DISTINCT ON (observer_id) observer_id, reason FROM discarded WHERE pause ORDER BY observer_id, id) d
        WHERE o.id = d.observer_id AND o.paused_at IS NULL
        RETURNING o.id
    ), held AS (
        UPDATE observer.jobs j SET run_at = 'infinity'
        FROM paused WHERE j.observer_id = paused.id AND j.state = 'pending'
    ), docs AS (
        SELECT * FROM observer.attempt_docs(ARRAY(SELECT event_id FROM discarded WHERE event_id IS NOT NULL))
    ), logged AS (
        INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, endpoint, status, duration_ms, search)
        SELECT d.id, d.attempt, d.worker, 'discarded', d.reason, d.endpoint, d.status, d.ms,
               observer.words(d.reason, CASE WHEN d.event_id IS NULL THEN d.payload
                                             ELSE observer.project_doc(docs.doc, o.columns, o.key_columns) END)
        FROM discarded d JOIN observer.observers o ON o.id = d.observer_id LEFT JOIN docs ON docs.event_id = d.event_id
        ON CONFLICT (job_id, attempt) DO UPDATE SET outcome = excluded.outcome, error = excluded.error,
            finished_at = excluded.finished_at, endpoint = excluded.endpoint, status = excluded.status,
            duration_ms = excluded.duration_ms, search = excluded.search
    )
    -- A join, not EXISTS per row: a correlated scan of the CTE is quadratic in the batch size.
    SELECT input.id, discarded.id IS NOT NULL FROM input LEFT JOIN discarded ON discarded.id = input.id;
END
$$;

CREATE OR REPLACE FUNCTION observer.check_enqueue(q observer.observers, payloads jsonb[], idempotency_keys text[],
                                       ordering_keys text[])
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad      text;
    big      integer;
    too_long boolean;
    -- A payload's JSON text may be twice the cap, plus 64 kB.
    text_cap bigint := 2 * q.max_payload_bytes::bigint + 65536;
BEGIN
    -- (The grants are looked at only when some role is restricted at all.)
    IF EXISTS (SELECT 1 FROM observer.enqueue_restricted)
       AND NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false)
       AND EXISTS (SELECT 1 FROM observer.enqueue_restricted x JOIN pg_roles r ON r.oid = x.role_oid
                   WHERE pg_has_role(session_user, r.oid, 'MEMBER'))
       AND NOT EXISTS (SELECT 1 FROM observer.enqueuers g JOIN pg_roles r ON r.oid = g.role_oid
                       WHERE g.queue_id = q.id AND pg_has_role(session_user, r.oid, 'MEMBER')) THEN
        RAISE EXCEPTION 'role "%" may not enqueue into job queue "%"', session_user, q.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'An administrator grants it with observer_grant(role, ''app'', queues => ARRAY[...]).';
    END IF;
    -- Stored size, and the JSON text too: a number with a huge exponent is stored in a few bytes
    -- and prints as all its digits (observer_json_size stops measuring at the limit). A number
    -- prints as at most 147,455 characters and takes at least 8 bytes of a jsonb, so a payload of
    -- under text_cap / 18,432 bytes (114 for the default cap) cannot pass it and is not walked.
    SELECT max(pg_column_size(p)),
           bool_or(CASE WHEN pg_column_size(p)::bigint * 18432 > text_cap
                        THEN @extschema@.observer_json_size(p, text_cap) IS NULL ELSE false END)
    INTO big, too_long
    FROM unnest(payloads) p;
    IF big > q.max_payload_bytes THEN
        RAISE EXCEPTION 'a payload of % bytes is over job queue "%"''s max_payload_bytes (%)', big, q.name, q.max_payload_bytes
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Send a reference to the data instead, or raise the queue''s max_payload_bytes with observer_alter().';
    END IF;
    IF too_long THEN
        RAISE EXCEPTION 'a payload''s JSON text is over twice job queue "%"''s max_payload_bytes (%)', q.name, q.max_payload_bytes
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Numbers with huge exponents print as every digit; send them as strings.';
    END IF;
    SELECT k INTO bad FROM unnest(idempotency_keys) k
    WHERE k IS NOT NULL AND k <> '' AND k !~ '^[!-~]([ -~]{0,198}[!-~])?$' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'idempotency key % cannot be a webhook-id', left(quote_literal(bad), 80)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 1 to 200 printable ASCII characters (no control characters, no leading or trailing space).';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(ordering_keys) k WHERE octet_length(k) > 1000) THEN
        RAISE EXCEPTION 'ordering keys must be at most 1000 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION observer_enqueue_many(queue text, payloads jsonb[], idempotency_keys text[] DEFAULT NULL,
                                      ordering_keys text[] DEFAULT NULL, run_at timestamptz DEFAULT NULL)
RETURNS TABLE (job_id bigint, created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    q observer.observers;
    n integer := coalesce(cardinality(payloads), 0);
BEGIN
    SELECT * INTO q FROM observer.observers o WHERE o.name = queue;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(queue);
    END IF;
    IF q.table_oid IS NOT NULL THEN
        RAISE EXCEPTION 'observer "%" watches table %: jobs can only be enqueued to a job queue', queue, q.table_name
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Create a queue with observer_create(name, NULL, action => ...).';
    END IF;
    IF NOT q.enabled THEN
        RAISE EXCEPTION 'job queue "%" is disabled', queue
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Enable it with observer_enable().';
    END IF;
    IF array_position(payloads, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'payloads must not contain NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF (idempotency_keys IS NOT NULL AND cardinality(idempotency_keys) <> n)
       OR (ordering_keys IS NOT NULL AND cardinality(ordering_keys) <> n) THEN
        RAISE EXCEPTION 'idempotency_keys and ordering_keys (when given) must have the same length as payloads'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    PERFORM observer.check_enqueue(q, payloads, idempotency_keys, ordering_keys);
    RETURN QUERY
    WITH input AS (
        SELECT i.payload, nullif(i.key, '') AS key, i.okey, i.ord
        FROM unnest(payloads,
                    coalesce(idempotency_keys, array_fill(NULL::text, ARRAY[n])),
                    coalesce(ordering_keys, array_fill(NULL::text, ARRAY[n])))
             WITH ORDINALITY AS i(payload, key, okey, ord)
    ), numbered AS MATERIALIZED (
        SELECT nextval('observer.jobs_id_seq') AS id, input.* FROM input ORDER BY input.ord
    ), made AS (
        INSERT INTO observer.jobs (id, observer_id, payload, idempotency_key, unique_key, ordering_key, run_at, priority)
        OVERRIDING SYSTEM VALUE
        -- The webhook-id of a job with a key is key_<queue id>_<key>: enqueuers choose keys, and
        -- a key of theirs must never be the webhook-id of a table event (evt_<event>_<observer>)
        -- or of another queue's job. A run_at in the past is now: it never jumps the queue.
        SELECT nb.id, q.id, nb.payload, CASE WHEN nb.key IS NULL THEN 'job_' || nb.id ELSE 'key_' || q.id || '_' || nb.key END,
               nb.key,
               CASE WHEN q.fifo IS NOT NULL THEN nb.okey END,
               CASE WHEN q.paused_at IS NULL THEN greatest(coalesce(observer_enqueue_many.run_at, clock_timestamp()), clock_timestamp())
                    ELSE 'infinity' END, q.priority
        FROM numbered nb ORDER BY nb.ord
        ON CONFLICT (observer_id, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING id, unique_key
    )
    SELECT coalesce(m.id,
                    (SELECT m2.id FROM made m2 WHERE m2.unique_key = nb.key),
                    (SELECT j.id FROM observer.jobs j WHERE j.observer_id = q.id AND j.unique_key = nb.key)),
           m.id IS NOT NULL
    FROM numbered nb LEFT JOIN made m ON m.id = nb.id
    ORDER BY nb.ord;
    -- One wake-up per transaction: Postgres folds identical notifications.
    PERFORM observer.wake_workers();
END
$$;

-- observer_dlq_show(job_id): one dead job, as `fraiseql-observers dlq show` prints it: its
-- observer, event, attempts, last error, when it died and webhook-id, the payload as it was
-- delivered and its attempt log (observer.attempts, in attempt order). The event is read with
-- observer.events_safe, as observer_dlq_list reads it: a job whose event cannot be read is shown
-- with its payload's rows empty instead of failing. A job that is not dead (or does not exist)
-- raises 42704, as observer_debug_event does for an unknown event.
CREATE OR REPLACE FUNCTION observer_dlq_show(job_id bigint) RETURNS jsonb
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
CREATE OR REPLACE FUNCTION observer_dlq_match(job_ids bigint[] DEFAULT NULL, observer text DEFAULT NULL,
                                   since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                   error_like text DEFAULT NULL, all_jobs boolean DEFAULT false)
RETURNS TABLE (job_id bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m FROM observer.dlq_match(job_ids, observer, since, until, error_like, all_jobs) m ORDER BY m
$$;

CREATE OR REPLACE FUNCTION observer_dlq_retry(job_ids bigint[] DEFAULT NULL, observer text DEFAULT NULL,
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

-- observer.batch_payload(event_ids, observer, attempt): what observer_claim hands out for a
-- batch job: its events' documents, in id order, each with its own webhook-id, for attempt
-- `attempt`, as the dispatcher makes them (observer_dispatch, made_batches) from the events it
-- has decoded.
CREATE OR REPLACE FUNCTION observer.batch_payload(event_ids bigint[], o observer.observers, attempt integer) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN count(*) = cardinality(event_ids) AND bool_and(e.error IS NULL) THEN
        '[' || string_agg(observer.event_document(o.name, o.columns, o.key_columns, e.id, e.created_at,
                                                  e.table_name, e.op, e.old, e.new, e.oversize, e.tx,
                                                  e.role, e.context, attempt, 'evt_' || e.id || '_' || o.id),
                          ',' ORDER BY e.id) || ']' END
    FROM observer.events_safe(event_ids) e
$$;

CREATE OR REPLACE FUNCTION observer_replay(observer text, since timestamptz, until timestamptz DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION observer_backfill(observer text, max_rows integer DEFAULT 10000, restart boolean DEFAULT false)
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

-- observer.audit_event(...): one event of an audit document: its id, table, op and rows as the
-- observer delivers them (its `columns` option applies here too, so that no document holds a
-- column the observer leaves out), or why it could not be read. Inlined (no SET clause).
CREATE OR REPLACE FUNCTION observer.audit_event(id bigint, table_name text, op text, old jsonb, new jsonb, error text,
                                     cols text[], keys text[]) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.jsonb_build_object('event_id', id, 'table', table_name, 'op', op,
                                     'old', observer.project(old, cols, keys), 'new', observer.project(new, cols, keys))
       OPERATOR(pg_catalog.||) CASE WHEN error IS NULL THEN '{}'::jsonb
                                    ELSE pg_catalog.jsonb_build_object('error', error) END;

-- observer.batch_document(observer, event_ids, events): the audit document of a batch job
-- (queue.sql, "Batch jobs"): its events' ids and each event as observer.audit_event gives it,
-- in id order. NULL when none of them is kept (as for a job whose event is gone): a batch job's
-- events share one event_log row, so they are kept or pruned together. Inlined (no SET clause).
CREATE OR REPLACE FUNCTION observer.batch_document(observer_name text, event_ids bigint[], events jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN events IS NOT NULL THEN
    pg_catalog.jsonb_build_object('observer', observer_name, 'event_ids', pg_catalog.to_jsonb(event_ids),
                                  'events', events) END;

CREATE OR REPLACE FUNCTION observer.audit_document(job_id bigint) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN j.event_id IS NULL THEN jsonb_build_object('observer', o.name, 'data', j.payload)
                WHEN j.event_ids IS NOT NULL
                THEN observer.batch_document(o.name, j.event_ids, (
                         SELECT jsonb_agg(observer.audit_event(e.id, e.table_name, e.op, e.old, e.new, e.error,
                                                               o.columns, o.key_columns) ORDER BY e.id)
                         FROM observer.events_safe(j.event_ids) e))
                ELSE (SELECT jsonb_build_object('observer', o.name)
                             || observer.audit_event(e.id, e.table_name, e.op, e.old, e.new, e.error,
                                                     o.columns, o.key_columns)
                      FROM observer.events_safe(ARRAY[j.event_id]) e) END
    FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
    WHERE j.id = audit_document.job_id
$$;

-- observer_audit_batch(max_docs): the oldest attempts waiting for Elasticsearch, as documents
-- (the worker's exporter sends them with _bulk; _id = "<job_id>-<attempt>", so a re-sent
-- document is recognised). The payload is JSON text, capped at 32,768 characters, so arbitrary
-- row shapes cannot explode the index mapping. A batch job's document also lists its events'
-- ids as `event_ids` (`event_id` is its first), whole, so that a search of the index by any of
-- its events finds it even when the payload is cut.
CREATE OR REPLACE FUNCTION observer_audit_batch(max_docs integer DEFAULT 500)
RETURNS TABLE (job_id bigint, attempt integer, doc jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.job_id, x.attempt,
           jsonb_build_object(
               '@timestamp', a.finished_at, 'job_id', a.job_id, 'attempt', a.attempt,
               'event_id', j.event_id, 'observer', o.name, 'action', o.action ->> 'type',
               'outcome', a.outcome, 'status', a.status, 'endpoint', a.endpoint,
               'duration_ms', a.duration_ms, 'error', a.error, 'worker', a.worker,
               'webhook_id', j.idempotency_key,
               'payload', left(observer.audit_document(a.job_id)::text, 32768))
           || CASE WHEN j.event_ids IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('event_ids', to_jsonb(j.event_ids)) END
    FROM (SELECT * FROM observer.audit_outbox x WHERE x.refused IS NULL
          ORDER BY x.queued_at LIMIT max_docs) x
    JOIN observer.attempts a ON a.job_id = x.job_id AND a.attempt = x.attempt
    JOIN observer.jobs j ON j.id = a.job_id
    JOIN observer.observers o ON o.id = j.observer_id
    ORDER BY x.queued_at, x.job_id, x.attempt
$$;

CREATE OR REPLACE FUNCTION observer_audit_lock() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me_start timestamptz := (SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid());
    holder   observer.audit_exporter;
BEGIN
    SELECT * INTO holder FROM observer.audit_exporter FOR UPDATE;
    IF FOUND AND holder.pid = pg_backend_pid() AND holder.backend_start = me_start THEN
        RETURN true;
    END IF;
    IF FOUND AND EXISTS (SELECT 1 FROM pg_stat_activity a
                         WHERE a.pid = holder.pid AND a.backend_start = holder.backend_start) THEN
        RETURN false;
    END IF;
    INSERT INTO observer.audit_exporter (pid, backend_start) VALUES (pg_backend_pid(), me_start)
    ON CONFLICT (singleton) DO UPDATE SET pid = excluded.pid, backend_start = excluded.backend_start,
                                          since = now();
    RETURN true;
END
$$;

-- observer.event_jobs(event_id, observer_id): the jobs of one observer that deliver an event:
-- its own (event_id), and a batch job whose events include it (queue.sql, "Batch jobs": its
-- event_id is its first event, in the same event_log row, so both are found on the range of
-- jobs_event_observer from the event_log row's first id to the event's). Both at once only after
-- observer_replay made the event a job of its own out of a completed batch job. Inlined (no SET
-- clause).
CREATE OR REPLACE FUNCTION observer.event_jobs(event_id bigint, observer_id bigint) RETURNS SETOF observer.jobs
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
CREATE OR REPLACE FUNCTION observer.event_story(e observer.decoded_event, o observer.observers, dispatched boolean,
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

CREATE OR REPLACE FUNCTION observer_debug_event(event_id bigint) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION observer.access_functions(access text) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN CASE access
    WHEN 'app' THEN ARRAY['observer_enqueue', 'observer_enqueue_many']
    WHEN 'worker' THEN ARRAY['observer_claim', 'observer_heartbeat', 'observer_complete', 'observer_fail',
                             'observer_snooze', 'observer_discard', 'observer_split', 'observer_dispatch', 'observer_prune',
                             'observer_report_breakers', 'observer_audit_batch', 'observer_audit_done',
                             'observer_audit_lock', 'observer_status']
END;

CREATE OR REPLACE FUNCTION observer.internal_functions() RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN ARRAY['observer_decode_rows', 'observer_decode_rows_at', 'observer_decode_row', 'observer_deadline',
             'observer_json_size', 'observer_bounded_doc'];

CREATE OR REPLACE FUNCTION observer_grant(role_name text, access text, queues text[] DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f regprocedure;
    missing text;
BEGIN
    PERFORM observer.check_access(role_name, access);
    IF queues IS NOT NULL AND access <> 'app' THEN
        RAISE EXCEPTION 'queues apply to app access only' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF queues IS NOT NULL AND coalesce(cardinality(queues), 0) = 0 THEN
        RAISE EXCEPTION 'queues must name at least one job queue' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Leave queues out to grant every queue.';
    END IF;
    IF queues IS NOT NULL THEN
        SELECT q INTO missing FROM unnest(queues) q
        WHERE NOT EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = q AND o.table_oid IS NULL) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'job queue "%" does not exist', missing USING ERRCODE = 'undefined_object',
                HINT = 'observer_list() shows the queues (observers without a table).';
        END IF;
        INSERT INTO observer.enqueue_restricted (role_oid)
        SELECT r.oid FROM pg_roles r WHERE r.rolname = role_name
        ON CONFLICT DO NOTHING;
        INSERT INTO observer.enqueuers (queue_id, role_oid)
        SELECT o.id, r.oid FROM observer.observers o, pg_roles r WHERE o.name = ANY (queues) AND r.rolname = role_name
        ON CONFLICT DO NOTHING;
    END IF;
    IF access = 'admin' THEN
        FOR f IN SELECT * FROM observer.member_functions(NULL) x
                 WHERE NOT ((SELECT p.proname::text FROM pg_proc p WHERE p.oid = x) = ANY (observer.internal_functions())) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, role_name);
        END LOOP;
        EXECUTE format('GRANT USAGE ON SCHEMA observer TO %I', role_name);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA observer TO %I', role_name);
        -- Only capture writes events: a forged event log row is read by the dispatcher.
        EXECUTE format('REVOKE INSERT, UPDATE ON observer.event_log FROM %I', role_name);
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA observer TO %I', role_name);
    ELSE
        FOR f IN SELECT * FROM observer.member_functions(observer.access_functions(access)) LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, role_name);
        END LOOP;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION observer_revoke(role_name text, access text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f regprocedure;
BEGIN
    PERFORM observer.check_access(role_name, access);
    FOR f IN SELECT * FROM observer.member_functions(
                 CASE WHEN access = 'admin' THEN NULL ELSE observer.access_functions(access) END) LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', f, role_name);
    END LOOP;
    IF access = 'app' THEN
        DELETE FROM observer.enqueuers g USING pg_roles r WHERE r.rolname = role_name AND g.role_oid = r.oid;
        DELETE FROM observer.enqueue_restricted x USING pg_roles r WHERE r.rolname = role_name AND x.role_oid = r.oid;
    END IF;
    IF access = 'admin' THEN
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA observer FROM %I', role_name);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA observer FROM %I', role_name);
        EXECUTE format('REVOKE USAGE ON SCHEMA observer FROM %I', role_name);
    END IF;
END
$$;


-- 4. Views.
CREATE OR REPLACE VIEW observer.events AS
    SELECT e.* FROM observer.event_log l, LATERAL observer.decode_log(l.id, coalesce(l.nrows, 1)) e;

-- Issue 18 (the console's pages fast with ten million finished jobs, benches/console.sh): the dead
-- jobs' indexes (the dead-letter list newest first, all or one observer's; their counts), the
-- attempts by finish time (the newest attempts first), observer_dlq_list read through them,
-- observer_search planned for each call's values, observer_status counting completed jobs only
-- while the table is small (observer.job_counts). The three indexes are built here, in the
-- update's transaction: writes to observer.jobs and observer.attempts wait for it (seconds on
-- millions of jobs; the two on jobs hold dead jobs only but read the whole table). Before section
-- 5, which grants the new functions to the admins of 0.1.0 (the revokes from PUBLIC and SECURITY
-- DEFINER of the worker's observer_status follow at the end).
CREATE INDEX jobs_dead ON observer.jobs (finished_at, id) WHERE state = 'dead';
CREATE INDEX jobs_dead_observer ON observer.jobs (observer_id, finished_at, id) WHERE state = 'dead';
CREATE INDEX attempts_finished ON observer.attempts (finished_at);

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

CREATE OR REPLACE FUNCTION observer_dlq_list(observer text DEFAULT NULL, since timestamptz DEFAULT NULL,
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

CREATE FUNCTION observer.search_matches(q tsquery, outcome_name text, since timestamptz, until timestamptz)
RETURNS TABLE (job_id bigint, attempt integer, finished_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT a.job_id, a.attempt, a.finished_at FROM observer.attempts a
    WHERE a.search @@ q AND (outcome_name IS NULL OR a.outcome = outcome_name)
      AND (since IS NULL OR a.finished_at >= since) AND (until IS NULL OR a.finished_at < until)
$$;

CREATE FUNCTION observer.search_attempts(words text, observer_name text, outcome_name text,
                                         since timestamptz, until timestamptz, max_results integer)
RETURNS TABLE (job_id bigint, attempt integer, event_id bigint, observer text, outcome text,
               status integer, endpoint text, duration_ms integer, error text, worker text,
               webhook_id text, finished_at timestamptz, document jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    q      tsquery := websearch_to_tsquery('simple', words);
    recent bigint;
    walk   boolean := true;
BEGIN
    IF q IS NOT NULL THEN
        SELECT count(*) INTO recent
        FROM (SELECT 1
              FROM (SELECT a.job_id, a.search FROM observer.attempts a
                    WHERE (outcome_name IS NULL OR a.outcome = outcome_name)
                      AND a.finished_at >= coalesce(since, '-infinity') AND a.finished_at < coalesce(until, 'infinity')
                    ORDER BY a.finished_at DESC, a.job_id DESC, a.attempt DESC
                    LIMIT 20000) a
              WHERE ts_match_vq(a.search, q)
                AND (observer_name IS NULL
                     OR EXISTS (SELECT 1 FROM observer.jobs j JOIN observer.observers o ON o.id = j.observer_id
                                WHERE j.id = a.job_id AND o.name = observer_name))
              LIMIT max_results) hits;
        walk := recent >= max_results;
    END IF;
    RETURN QUERY
    WITH page AS MATERIALIZED (
        (SELECT a.job_id, a.attempt, a.outcome, a.status, a.endpoint, a.duration_ms, a.error, a.worker,
                a.finished_at, j.event_id, j.event_ids, j.idempotency_key, j.payload, o.name, o.columns, o.key_columns
         FROM observer.attempts a
         JOIN observer.jobs j ON j.id = a.job_id
         JOIN observer.observers o ON o.id = j.observer_id
         WHERE walk AND (q IS NULL OR ts_match_vq(a.search, q))
           AND (observer_name IS NULL OR o.name = observer_name)
           AND (outcome_name IS NULL OR a.outcome = outcome_name)
           AND a.finished_at >= coalesce(since, '-infinity') AND a.finished_at < coalesce(until, 'infinity')
         ORDER BY a.finished_at DESC, a.job_id DESC, a.attempt DESC
         LIMIT max_results)
        UNION ALL
        (SELECT a.job_id, a.attempt, a.outcome, a.status, a.endpoint, a.duration_ms, a.error, a.worker,
                a.finished_at, j.event_id, j.event_ids, j.idempotency_key, j.payload, o.name, o.columns, o.key_columns
         FROM observer.search_matches(q, outcome_name, since, until) m
         JOIN observer.attempts a ON a.job_id = m.job_id AND a.attempt = m.attempt
         JOIN observer.jobs j ON j.id = a.job_id
         JOIN observer.observers o ON o.id = j.observer_id
         WHERE NOT walk AND (observer_name IS NULL OR o.name = observer_name)
         ORDER BY m.finished_at DESC, m.job_id DESC, m.attempt DESC
         LIMIT max_results)
    ), evs AS MATERIALIZED (
        SELECT * FROM observer.events_safe(ARRAY(
            SELECT DISTINCT x.id FROM page p, unnest(coalesce(p.event_ids, ARRAY[p.event_id])) AS x(id)
            WHERE p.event_id IS NOT NULL))
    ), batch_events AS (
        -- Each batch job's events, joined (not looked up one job at a time in evs).
        SELECT b.job_id, jsonb_agg(observer.audit_event(e.id, e.table_name, e.op, e.old, e.new, e.error,
                                                        b.columns, b.key_columns) ORDER BY e.id) AS events
        FROM (SELECT DISTINCT p.job_id, p.event_ids, p.columns, p.key_columns FROM page p
              WHERE p.event_ids IS NOT NULL) b
        CROSS JOIN LATERAL unnest(b.event_ids) AS u(id)
        JOIN evs e ON e.id = u.id
        GROUP BY b.job_id
    )
    SELECT p.job_id, p.attempt, p.event_id, p.name, p.outcome, p.status, p.endpoint, p.duration_ms, p.error,
           p.worker, p.idempotency_key, p.finished_at,
           CASE WHEN p.event_id IS NULL THEN jsonb_build_object('observer', p.name, 'data', p.payload)
                WHEN p.event_ids IS NOT NULL THEN observer.batch_document(p.name, p.event_ids, b.events)
                WHEN e.id IS NULL THEN NULL
                ELSE jsonb_build_object('observer', p.name)
                     || observer.audit_event(e.id, e.table_name, e.op, e.old, e.new, e.error, p.columns, p.key_columns)
           END
    FROM page p
    LEFT JOIN evs e ON e.id = p.event_id AND p.event_ids IS NULL
    LEFT JOIN batch_events b ON b.job_id = p.job_id
    ORDER BY p.finished_at DESC, p.job_id DESC, p.attempt DESC;
END
$$;

CREATE OR REPLACE FUNCTION observer_search(query text, observer text DEFAULT NULL, outcome text DEFAULT NULL,
                                since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
                                max_results integer DEFAULT 100)
RETURNS TABLE (job_id bigint, attempt integer, event_id bigint, observer text, outcome text,
               status integer, endpoint text, duration_ms integer, error text, worker text,
               webhook_id text, finished_at timestamptz, document jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- First on its own, so bad arguments raise even when nothing would match.
    SELECT observer.search_query($1, $2, $3, $6);
    SELECT * FROM observer.search_attempts($1, $2, $3, $4, $5, $6)
$$;

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

CREATE OR REPLACE FUNCTION observer_status() RETURNS jsonb
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

-- 4b. The operator console (sql/console.sql, as a fresh install has it), before section 5 so that
-- the admins of 0.1.0 get its functions and its table.
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

-- 5. Access (sql/roles.sql). Roles granted access under 0.1.0 get what that access means in 0.2.0:
-- workers observer_audit_lock, admins the new functions and tables and no more INSERT/UPDATE on
-- observer.event_log, nobody the internal functions. Read from the grants that survive: USAGE on
-- the schema (admin), EXECUTE on observer_claim (worker) and on observer_enqueue (app).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        WITH owner AS (SELECT nspowner FROM pg_namespace WHERE nspname = 'observer'),
        holders AS (
            SELECT 'admin' AS access, a.grantee
            FROM pg_namespace n, aclexplode(n.nspacl) a
            WHERE n.nspname = 'observer' AND a.privilege_type = 'USAGE'
            UNION
            SELECT CASE p.proname WHEN 'observer_claim' THEN 'worker' ELSE 'app' END, a.grantee
            FROM pg_proc p, aclexplode(p.proacl) a
            WHERE p.oid IN (SELECT observer.member_functions(ARRAY['observer_claim', 'observer_enqueue']))
              AND a.privilege_type = 'EXECUTE'
        )
        SELECT DISTINCT h.access, ro.rolname::text AS role_name
        FROM holders h JOIN pg_roles ro ON ro.oid = h.grantee
        WHERE h.grantee <> (SELECT nspowner FROM owner)
          AND (h.access = 'admin' OR NOT EXISTS (SELECT 1 FROM holders x WHERE x.access = 'admin' AND x.grantee = h.grantee))
        ORDER BY 2, 1
    LOOP
        PERFORM @extschema@.observer_grant(r.role_name, r.access);
    END LOOP;
END
$$;

DO $$
DECLARE
    who text;
BEGIN
    SELECT string_agg(r.rolname, ', ' ORDER BY r.rolname) INTO who
    FROM pg_roles r
    WHERE NOT r.rolsuper AND r.rolname NOT LIKE 'pg\_%'
      AND r.oid <> (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = '@extschema@')
      AND has_schema_privilege(r.oid, '@extschema@', 'CREATE');
    IF who IS NOT NULL OR has_schema_privilege('public', '@extschema@', 'CREATE') THEN
        RAISE WARNING 'fraiseql_observers is installed in schema "@extschema@", where % can create objects',
            coalesce(who, 'PUBLIC')
            USING HINT = 'Revoke CREATE on that schema from untrusted roles, or install the extension in a schema only its owner can create in (CREATE EXTENSION ... SCHEMA ...).';
    END IF;
END
$$;

-- Every function is private unless granted; the app's and the worker's run as the extension's
-- owner (as a fresh install leaves them).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT * FROM observer.member_functions(NULL) LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN SELECT * FROM observer.member_functions(observer.access_functions('app') || observer.access_functions('worker')) LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER', f);
    END LOOP;
END
$$;
