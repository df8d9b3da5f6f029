-- Capture: the trigger function observer_create() installs on observed tables. It runs in the
-- writing transaction, so a change and its event commit (or roll back) together.
-- SECURITY DEFINER: application roles write events without any grant on schema "observer".

CREATE FUNCTION observer.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO observer.events (table_oid, table_name, op, old, new)
    VALUES (TG_RELID,
            quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME),
            TG_OP,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION observer.capture() IS 'fraiseql_observers capture trigger: appends the row change to observer.events';

-- The name of the capture trigger on an observed table (one per table, shared by its observers).
CREATE FUNCTION observer.capture_trigger_name() RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
RETURN 'fraiseql_observers_capture';
