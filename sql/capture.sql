-- Capture: the triggers observer_create() installs on observed tables. They run in the writing
-- transaction, so a change and its event commit (or roll back) together, including under
-- savepoints and two-phase commit.
-- SECURITY DEFINER: application roles write events without any grant on schema "observer".

-- observer.key_only(row, keys): what is kept of a row too large to capture: its primary key
-- columns (NULL when the table has none), so the receiver can fetch the current row.
CREATE FUNCTION observer.key_only(r jsonb, keys text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN CASE WHEN r IS NULL OR cardinality(keys) = 0 THEN NULL
            ELSE (SELECT jsonb_object_agg(k, r -> k) FROM unnest(keys) k) END;

-- observer.capture(): row-level capture trigger (AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW).
-- Arguments, written by observer.sync_capture() and copied by Postgres to every partition,
-- including partitions attached later:
--   TG_ARGV[0]  oid of the observed table (for a partition: the observed partitioned table)
--   TG_ARGV[1]  its name, as observers see it
--   TG_ARGV[2]  payload cap in bytes (old + new as jsonb)
--   TG_ARGV[3]  columns no observer of the table wants, a text[] literal ('{}' for none)
--   TG_ARGV[4]  primary key columns, a text[] literal ('{}' without a primary key)
-- A row whose payload exceeds the cap is still captured, as its primary key only, with the
-- original size in `oversize`: nothing is dropped, and no row can bloat the event log.
CREATE FUNCTION observer.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o jsonb;
    n jsonb;
    size integer;
BEGIN
    IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
    IF TG_ARGV[3] <> '{}' THEN
        o := o - TG_ARGV[3]::text[];
        n := n - TG_ARGV[3]::text[];
    END IF;
    size := coalesce(pg_column_size(o), 0) + coalesce(pg_column_size(n), 0);
    IF size > TG_ARGV[2]::integer THEN
        o := observer.key_only(o, TG_ARGV[4]::text[]);
        n := observer.key_only(n, TG_ARGV[4]::text[]);
    ELSE
        size := NULL;
    END IF;
    INSERT INTO observer.events (table_oid, table_name, op, old, new, oversize)
    VALUES (TG_ARGV[0]::oid, TG_ARGV[1], TG_OP, o, n, size);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION observer.capture() IS 'fraiseql_observers capture trigger: appends the row change to observer.events';

-- observer.capture_truncate(): statement-level AFTER TRUNCATE trigger. TRUNCATE removes rows
-- without row triggers, so it is captured as one event of its own (op TRUNCATE, no rows);
-- observers that list TRUNCATE in their events receive it. Same arguments as observer.capture().
CREATE FUNCTION observer.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO observer.events (table_oid, table_name, op)
    VALUES (TG_ARGV[0]::oid, TG_ARGV[1], 'TRUNCATE');
    RETURN NULL;
END
$$;

-- Names of the triggers on an observed table (one set per table, shared by its observers).
CREATE FUNCTION observer.capture_trigger_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 'fraiseql_observers_capture';

CREATE FUNCTION observer.truncate_trigger_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 'fraiseql_observers_truncate';

-- The statement-level trigger that wakes the dispatcher at commit (observer_wake_trigger, Rust).
CREATE FUNCTION observer.wake_trigger_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 'fraiseql_observers_wake';
