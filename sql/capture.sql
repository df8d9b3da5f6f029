-- Capture: the triggers observer_create() installs on observed tables. They run in the writing
-- transaction, so a change and its event commit (or roll back) together, including under
-- savepoints and two-phase commit.
-- SECURITY DEFINER: application roles write events without any grant on schema "observer".

-- The INSERT/UPDATE/DELETE capture triggers are native (extension/src/pg/capture.rs; PL/pgSQL
-- costs twice as much per captured row):
--   observer_capture_rows()  statement-level with transition tables, on plain tables: one event
--                            log row per statement (batches of up to 1024 rows, kept binary)
--   observer_capture()       row-level, on partitioned tables and tables in an inheritance tree or
--                            partitions, where only row triggers see every write (Postgres clones
--                            them to partitions, present and future)
-- Their arguments are written by observer.sync_capture() in sql/observers.sql. A row whose
-- payload exceeds the cap is still captured, as its primary key only, with the original size in
-- `oversize`: nothing is dropped, and no row can bloat the event log.

-- observer.capture_truncate(): statement-level AFTER TRUNCATE trigger. TRUNCATE removes rows
-- without row triggers, so it is captured as one event of its own (op TRUNCATE, no rows);
-- observers that list TRUNCATE in their events receive it. Same arguments as observer_capture().
CREATE FUNCTION observer.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO observer.event_log (table_oid, table_name, op)
    VALUES (TG_ARGV[0]::oid, TG_ARGV[1], 'TRUNCATE');
    RETURN NULL;
END
$$;

-- Names of the triggers on an observed table (one set per table, shared by its observers); the
-- statement-level ones are fraiseql_observers_capture_insert / _update / _delete.
CREATE FUNCTION observer.capture_trigger_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 'fraiseql_observers_capture';

CREATE FUNCTION observer.truncate_trigger_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 'fraiseql_observers_truncate';

-- Only observer_create() attaches the capture triggers: nobody else may (CREATE TRIGGER needs
-- EXECUTE on the function), so nobody can forge events for another table.
REVOKE EXECUTE ON FUNCTION observer.capture_truncate() FROM PUBLIC;
