-- The security model. Three kinds of access, given to roles with observer_grant(role, access):
--
--   app     observer_enqueue, observer_enqueue_many. Writes to observed tables need nothing from
--           this extension: capture runs without any grant on schema "observer".
--   worker  what the worker calls: claim, heartbeat, complete, fail, snooze, discard, dispatch,
--           prune, report_breakers, audit_batch, audit_done, status.
--   admin   every function but the internal row decoders, and the tables of schema "observer"
--           (the event log read-only but for DELETE: only capture writes events). Admins see
--           every captured row of every observed table. The admin functions run as their caller,
--           so Postgres itself checks the rest: observer_create on a table needs the TRIGGER
--           privilege on it (or its ownership).
--   (none)  the row decoders (observer_decode_rows, observer_decode_rows_at, observer_decode_row)
--           read the binary batches of the event log, and observer_deadline arms the dispatch
--           round's timeouts; they are called only inside the extension's own SECURITY DEFINER
--           functions and are granted to nobody.
--
-- App and worker functions are SECURITY DEFINER (they run as the extension's owner, with
-- search_path fixed to pg_catalog, pg_temp like every function here), so those roles need no
-- privilege on any table; none of them can read events or jobs except through these calls.
-- Every function of the extension is revoked from PUBLIC; nothing in schema "observer" is
-- granted to PUBLIC (schema.sql).

-- The functions of the extension whose name is in `names` (all of them when NULL).
CREATE FUNCTION observer.member_functions(names text[]) RETURNS SETOF regprocedure
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.oid::regprocedure
    FROM pg_proc p
    JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
    JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'fraiseql_observers'
    WHERE names IS NULL OR p.proname = ANY (names)
    ORDER BY 1::text
$$;

CREATE FUNCTION observer.access_functions(access text) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN CASE access
    WHEN 'app' THEN ARRAY['observer_enqueue', 'observer_enqueue_many']
    WHEN 'worker' THEN ARRAY['observer_claim', 'observer_heartbeat', 'observer_complete', 'observer_fail',
                             'observer_snooze', 'observer_discard', 'observer_split', 'observer_dispatch', 'observer_prune',
                             'observer_report_breakers', 'observer_audit_batch', 'observer_audit_done',
                             'observer_audit_lock', 'observer_status']
END;

-- The internal functions no role is granted: they read bytes of the event log.
CREATE FUNCTION observer.internal_functions() RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN ARRAY['observer_decode_rows', 'observer_decode_rows_at', 'observer_decode_row', 'observer_deadline',
             'observer_json_size', 'observer_bounded_doc'];


-- observer_grant(role, access, queues) / observer_revoke(role, access): give or take app,
-- worker or admin access (see above). Run them as the extension's owner (or a superuser).
-- `queues` (app access only): the job queues the role may enqueue into; without it, every queue.
CREATE FUNCTION observer_grant(role_name text, access text, queues text[] DEFAULT NULL) RETURNS void
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

CREATE FUNCTION observer_revoke(role_name text, access text) RETURNS void
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

CREATE FUNCTION observer.check_access(role_name text, access text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF access IS NULL OR access NOT IN ('app', 'worker', 'admin') THEN
        RAISE EXCEPTION 'unknown access "%"', access USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use app (enqueue jobs), worker (run the worker) or admin (manage observers).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
        RAISE EXCEPTION 'role "%" does not exist', role_name USING ERRCODE = 'undefined_object',
            HINT = 'Create it first, e.g. CREATE ROLE ... LOGIN.';
    END IF;
END
$$;

-- The extension's functions live in its schema, where a role that can CREATE could add
-- overloads that make every call of the dispatcher and the workers ambiguous (CVE-2018-1058's
-- lesson): say so at install. observer_status() lists such roles (schema_writable_by).
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

-- Last, so that it covers every function above: nothing is executable by PUBLIC, and the app
-- and worker functions run as the extension's owner.
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
