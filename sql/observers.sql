-- Observers: create, drop, enable/disable, list. observer_create validates everything up front
-- (table, events, condition, action, options) so a definition that cannot work is refused with a
-- clear error and SQLSTATE instead of failing later on every event.

-- observer.sync_capture(table): make the table's triggers match its observers: absent when none
-- is left, otherwise firing for exactly the union of their events, with the capture arguments
-- (observed table, payload cap, columns nobody wants, key columns) derived from them.
-- Plain tables get statement-level triggers with transition tables (one per operation: a trigger
-- with transition tables fires on one operation only); partitioned tables, partitions and tables
-- in an inheritance tree get the row-level trigger, which Postgres clones to every partition,
-- present and future, and which fires for rows written through a parent.
CREATE FUNCTION observer.sync_capture(target oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ops       text[];
    row_ops   text[];
    cap       integer;
    excluded  text[];
    non_key   text[];
    keys      text[];
    trg       name;
    tname     text;
    args      text;
    per_row   boolean;
    op        text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = target) THEN
        RETURN;  -- the table is gone (dropped after its observers were created)
    END IF;
    SELECT array_agg(DISTINCT ev ORDER BY ev), max(o.max_payload_bytes), min(o.table_name),
           min(o.key_columns::text)::text[]
    INTO ops, cap, tname, keys
    FROM observer.observers o, unnest(o.events) ev
    WHERE o.table_oid = target;

    -- Drop what exists (checked first: DROP TRIGGER IF EXISTS would print a NOTICE per table).
    FOR trg IN
        SELECT t.tgname FROM pg_trigger t
        WHERE t.tgrelid = target AND NOT t.tgisinternal AND t.tgparentid = 0
          AND (t.tgname IN (observer.capture_trigger_name(), observer.truncate_trigger_name())
               OR t.tgname::text LIKE observer.capture_trigger_name() || '\_%')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trg, target::regclass);
    END LOOP;
    IF ops IS NULL THEN
        RETURN;
    END IF;

    -- Columns left out of every event: only when every observer of the table names its columns
    -- and none has a condition or dedup key (a path may read any column); columns named in
    -- changed_columns are kept too, so that filters always see what they test.
    IF NOT EXISTS (SELECT 1 FROM observer.observers o
                   WHERE o.table_oid = target
                     AND (o.columns IS NULL OR o.condition IS NOT NULL OR o.dedup_key IS NOT NULL)) THEN
        SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}') INTO excluded
        FROM pg_attribute a
        WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attname::text <> ALL (SELECT unnest(o.columns || coalesce(o.changed_columns, '{}'))
                                      FROM observer.observers o WHERE o.table_oid = target)
          AND a.attname::text <> ALL (coalesce(keys, '{}'));
    END IF;
    -- What an oversize row loses: every column but the primary key.
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}') INTO non_key
    FROM pg_attribute a
    WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname::text <> ALL (coalesce(keys, '{}'));
    args := format('%L, %L, %L, %L, %L', target::text, tname, cap,
                   coalesce(excluded, '{}')::text, non_key::text);

    row_ops := ARRAY(SELECT unnest(ops) INTERSECT SELECT unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) ORDER BY 1);
    SELECT c.relkind <> 'r' OR c.relispartition
           OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = target OR i.inhparent = target)
    INTO per_row
    FROM pg_class c WHERE c.oid = target;
    IF per_row AND cardinality(row_ops) > 0 THEN
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION @extschema@.observer_capture(%s)',
                       observer.capture_trigger_name(), array_to_string(row_ops, ' OR '), target::regclass, args);
    ELSIF cardinality(row_ops) > 0 THEN
        FOREACH op IN ARRAY row_ops LOOP
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.observer_capture_rows(%s)',
                           observer.capture_trigger_name() || '_' || lower(op), op, target::regclass,
                           CASE op WHEN 'INSERT' THEN 'NEW TABLE AS fraiseql_observers_new'
                                   WHEN 'UPDATE' THEN 'OLD TABLE AS fraiseql_observers_old NEW TABLE AS fraiseql_observers_new'
                                   ELSE 'OLD TABLE AS fraiseql_observers_old' END,
                           args);
        END LOOP;
    END IF;
    IF 'TRUNCATE' = ANY (ops) THEN
        EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION observer.capture_truncate(%s)',
                       observer.truncate_trigger_name(), target::regclass, args);
    END IF;
END
$$;

-- observer.unknown_observer(name): the one "no such observer" error (SQLSTATE 42704).
CREATE FUNCTION observer.unknown_observer(name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'observer "%" does not exist', name
        USING ERRCODE = 'undefined_object', HINT = 'See observer_list() for the observers that exist.';
END
$$;

-- Only observer_create() attaches the native capture triggers (see capture.sql).
REVOKE EXECUTE ON FUNCTION @extschema@.observer_capture() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.observer_capture_rows() FROM PUBLIC;

-- observer.project(row, columns): the row restricted to an observer's `columns` option (plus
-- the primary key, which identifies the row; an oversize row is captured as its key only).
CREATE FUNCTION observer.project(r jsonb, cols text[], keys text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN r IS NULL OR cols IS NULL THEN r
            ELSE coalesce((SELECT jsonb_object_agg(k, v) FROM jsonb_each(r) AS x(k, v)
                           WHERE k = ANY (cols) OR k = ANY (keys)), '{}')
       END;

-- observer.check_columns(table, columns, option): validate a column list option, or raise.
CREATE FUNCTION observer.check_columns(target regclass, cols jsonb, option text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result text[];
    unknown text;
BEGIN
    IF cols IS NULL OR jsonb_typeof(cols) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(cols) <> 'array' OR jsonb_array_length(cols) = 0
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(cols) c WHERE jsonb_typeof(c) <> 'string') THEN
        RAISE EXCEPTION 'observer option "%" must be a non-empty array of column names', option
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('For example: {"%s": ["id", "status"]}', option);
    END IF;
    SELECT array_agg(DISTINCT c ORDER BY c) INTO result FROM jsonb_array_elements_text(cols) c;
    SELECT c INTO unknown FROM unnest(result) c
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = target AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped)
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'column "%" of observer option "%" does not exist in %', unknown, option, target
            USING ERRCODE = 'undefined_column';
    END IF;
    RETURN result;
END
$$;

-- observer.check_path(path, option): parse a SQL/JSON path option (not a predicate), or raise.
-- observer.check_path_cost(path, what): refuse the path constructs whose cost grows faster than
-- the document they read. Conditions and dedup keys run in the dispatcher over rows any writer
-- chooses, with no time limit of their own: a chain of `**` accessors visits a number of items
-- that grows with the product of the document's size at each step (hours for a few thousand
-- nested nodes), and a back-reference makes a regular expression backtrack. One `**` and
-- like_regex without back-references stay proportional to the document (at most the payload cap).
CREATE FUNCTION observer.check_path_cost(path jsonpath, what text) RETURNS void
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

CREATE FUNCTION observer.check_path(path text, option text) RETURNS jsonpath
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

-- observer.check_condition(condition): parse and type-check a condition, or raise.
CREATE FUNCTION observer.check_condition(condition text) RETURNS jsonpath
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

CREATE FUNCTION observer.define(
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

-- observer_create(...): observer.define() (validate, store) plus the capture triggers.
CREATE FUNCTION observer_create(
    name       text,
    table_name regclass,
    events     text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE'],
    condition  text DEFAULT NULL,
    action     jsonb DEFAULT NULL,
    options    jsonb DEFAULT '{}'
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    new_id := observer.define(name, table_name, events, condition, action, options);
    PERFORM observer.sync_capture(table_name);
    RETURN new_id;
END
$$;

CREATE FUNCTION observer_drop(name text, force boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obs observer.observers;
    unfinished bigint;
BEGIN
    SELECT * INTO obs FROM observer.observers o WHERE o.name = observer_drop.name FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(name);
    END IF;
    SELECT count(*) INTO unfinished FROM observer.jobs j
    WHERE j.observer_id = obs.id AND j.state IN ('pending', 'running');
    IF unfinished > 0 AND NOT force THEN
        RAISE EXCEPTION 'observer "%" has % unfinished jobs', name, unfinished
            USING ERRCODE = 'object_in_use',
                  DETAIL = 'Dropping it would discard events that were captured but not delivered.',
                  HINT = 'Disable it with observer_disable() and let the queue drain, or pass force => true to discard them.';
    END IF;
    DELETE FROM observer.jobs j WHERE j.observer_id = obs.id;
    DELETE FROM observer.observers o WHERE o.id = obs.id;
    PERFORM observer.sync_capture(obs.table_oid);
    RETURN true;
END
$$;

-- observer_enable / observer_disable: a disabled observer makes no new jobs (events captured while
-- it is disabled are not queued for it); jobs already queued are still delivered.
CREATE FUNCTION observer.set_enabled(name text, enabled boolean) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE observer.observers o SET enabled = set_enabled.enabled, updated_at = now()
    WHERE o.name = set_enabled.name;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(name);
    END IF;
    RETURN enabled;
END
$$;

CREATE FUNCTION observer_enable(name text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT observer.set_enabled(name, true);
END;

CREATE FUNCTION observer_disable(name text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT observer.set_enabled(name, false);
END;

-- observer_pause(name, reason) / observer_resume(name): hold an observer's deliveries without
-- losing any. While paused, events still make jobs (and enqueued jobs are accepted), but they
-- wait; resume makes every held job due at once. A worker pauses an observer itself when its
-- endpoint answers 410 Gone (the reason says so). Each returns the number of jobs held/released.
CREATE FUNCTION observer_pause(name text, reason text DEFAULT 'paused by an operator') RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    oid_ bigint;
    n    bigint;
BEGIN
    IF reason IS NULL OR reason = '' THEN
        RAISE EXCEPTION 'a reason is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    UPDATE observer.observers o SET paused_at = coalesce(o.paused_at, clock_timestamp()),
                                    paused_reason = left(observer_pause.reason, 2000), updated_at = now()
    WHERE o.name = observer_pause.name RETURNING o.id INTO oid_;
    IF NOT FOUND THEN
        PERFORM observer.unknown_observer(name);
    END IF;
    UPDATE observer.jobs j SET run_at = 'infinity'
    WHERE j.observer_id = oid_ AND j.state = 'pending' AND j.run_at <> 'infinity';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION observer_resume(name text) RETURNS bigint
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

CREATE FUNCTION observer_list()
RETURNS TABLE (name text, table_name text, events text[], condition text, action jsonb,
               max_attempts integer, enabled boolean, created_at timestamptz, paused_reason text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT o.name, o.table_name, o.events, o.condition::text, o.action, o.max_attempts, o.enabled, o.created_at,
           o.paused_reason
    FROM observer.observers o
    ORDER BY o.name
$$;

-- observer_definition(name): an observer as declared, in the shape observer_create() takes
-- (table, events, condition, action, options with every option's value, enabled), for
-- `fraiseql-observers plan` and for operators.
CREATE FUNCTION observer_definition(name text) RETURNS jsonb
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

-- observer_replace(name, table_name, events, condition, action, options): change an observer's
-- definition in place, validated exactly as observer_create() validates it; its jobs, dead
-- letters and history stay (they belong to the observer, not to its definition), and so does
-- enabled / paused. Returns the fields that changed.
CREATE FUNCTION observer_replace(
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

-- observer_diff(name, table_name, events, condition, action, options, enabled): what
-- observer_replace() (and enable/disable) would change, without changing anything: the names of
-- the fields that differ; NULL when the observer does not exist (after validating the
-- definition all the same). Normalises like observer_create
-- (defaults, event order, action defaults, interval spelling) in a subtransaction it rolls back.
CREATE FUNCTION observer_diff(
    name       text,
    table_name regclass,
    events     text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE'],
    condition  text DEFAULT NULL,
    action     jsonb DEFAULT NULL,
    options    jsonb DEFAULT '{}',
    enabled    boolean DEFAULT true
) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before  jsonb;
    after   jsonb;
    tmp     text := '_diff_' || txid_current();
BEGIN
    -- The definition as it would be stored, made under a temporary name in a subtransaction that
    -- is rolled back; an observer that would be created is validated all the same, so that a
    -- plan shows the errors apply would meet.
    before := CASE WHEN EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = observer_diff.name)
                   THEN @extschema@.observer_definition(name) - 'name' END;
    BEGIN
        PERFORM observer.define(tmp, table_name, events, condition, action, options);
        after := @extschema@.observer_definition(tmp) - 'name';
        RAISE EXCEPTION USING ERRCODE = 'P0004', MESSAGE = 'roll back the probe';
    EXCEPTION WHEN assert_failure THEN
        NULL;
    END;
    IF before IS NULL THEN
        RETURN NULL;
    END IF;
    after := jsonb_set(after, '{enabled}', to_jsonb(enabled));
    RETURN ARRAY(SELECT k FROM jsonb_object_keys(before || after) k
                 WHERE before -> k IS DISTINCT FROM after -> k ORDER BY k);
END
$$;
