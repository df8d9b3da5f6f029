-- Observers: create, drop, enable/disable, list. observer_create validates everything up front
-- (table, events, condition, action, options) so a definition that cannot work is refused with a
-- clear error and SQLSTATE instead of failing later on every event.

-- observer.sync_capture(table): make the table's capture trigger match its observers: absent when
-- none is left, otherwise firing for exactly the union of their events.
CREATE FUNCTION observer.sync_capture(target oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ops text[];
BEGIN
    SELECT array_agg(DISTINCT ev ORDER BY ev) INTO ops
    FROM observer.observers o, unnest(o.events) ev
    WHERE o.table_oid = target;

    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = target) THEN
        RETURN;  -- the table is gone (dropped after its observers were created)
    END IF;
    IF ops IS NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', observer.capture_trigger_name(), target::regclass);
    ELSE
        EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION observer.capture()',
                       observer.capture_trigger_name(), array_to_string(ops, ' OR '), target::regclass);
    END IF;
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
    BEGIN
        path := condition::jsonpath;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        RAISE EXCEPTION 'invalid observer condition: %', msg
            USING ERRCODE = 'syntax_error',
                  DETAIL = format('Condition: %s', condition),
                  HINT = 'Write a SQL/JSON path predicate over {op, table, old, new}, e.g. $.new.status == "shipped".';
    END;
    -- A predicate yields one boolean; a plain path such as $.new.status does not. Probe it on
    -- empty documents of every operation: a structural mistake raises here, at create time.
    BEGIN
        PERFORM jsonb_path_match(jsonb_build_object('op', op, 'table', 'public.t', 'old', '{}'::jsonb, 'new', '{}'::jsonb), path)
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
    rel        record;
    evs        text[];
    path       jsonpath;
    act        jsonb;
    opt_key    text;
    new_id     bigint;
    key_cols   text[];
    max_att    integer := 8;
    base       interval := '1 second';
    cap        interval := '1 hour';
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid observer name: %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 1 to 63 characters: a letter or _ first, then letters, digits, _ . or -.';
    END IF;
    IF EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = observer_create.name) THEN
        RAISE EXCEPTION 'observer "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Choose another name, or drop it first with observer_drop().';
    END IF;

    IF table_name IS NULL THEN
        RAISE EXCEPTION 'observer table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
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
    IF evs IS NULL OR NOT evs <@ ARRAY['INSERT', 'UPDATE', 'DELETE'] THEN
        RAISE EXCEPTION 'invalid observer events: %', coalesce(events::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use a non-empty subset of {INSERT,UPDATE,DELETE}.';
    END IF;

    path := observer.check_condition(condition);

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
                ELSE
                    RAISE EXCEPTION 'unknown observer option "%"', opt_key
                        USING ERRCODE = 'invalid_parameter_value',
                              HINT = 'Known options: max_attempts, backoff_base, backoff_cap.';
            END CASE;
        EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format OR numeric_value_out_of_range THEN
            RAISE EXCEPTION 'invalid value for observer option "%": %', opt_key, options -> opt_key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'max_attempts is an integer; backoff_base and backoff_cap are intervals such as "2 seconds".';
        END;
    END LOOP;
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

    INSERT INTO observer.observers (name, table_oid, table_name, key_columns, events, condition, action,
                                    max_attempts, backoff_base, backoff_cap)
    VALUES (name, table_name, table_name::text, key_cols, evs, path, act, max_att, base, cap)
    RETURNING id INTO new_id;

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
        RAISE EXCEPTION 'observer "%" does not exist', name
            USING ERRCODE = 'undefined_object', HINT = 'See observer_list() for the observers that exist.';
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
        RAISE EXCEPTION 'observer "%" does not exist', name
            USING ERRCODE = 'undefined_object', HINT = 'See observer_list() for the observers that exist.';
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

CREATE FUNCTION observer_list()
RETURNS TABLE (name text, table_name text, events text[], condition text, action jsonb,
               max_attempts integer, enabled boolean, created_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT o.name, o.table_name, o.events, o.condition::text, o.action, o.max_attempts, o.enabled, o.created_at
    FROM observer.observers o
    ORDER BY o.name
$$;
