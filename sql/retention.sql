-- Retention: events and finished jobs older than the retention period are deleted in small
-- batches (row locks only, never a table lock), so capture never waits on pruning; autovacuum
-- is tuned on these tables (schema.sql) to reclaim the space for new rows.
--
-- What is never pruned: an event not yet dispatched, an event whose job is unfinished
-- (pending, running) or dead (the dead-letter queue needs its payload), and dead jobs.

CREATE FUNCTION observer_prune(retention interval DEFAULT NULL, max_rows integer DEFAULT 10000)
RETURNS TABLE (events_deleted bigint, jobs_deleted bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    keep   interval;
    cutoff timestamptz;
    done   pg_snapshot;
BEGIN
    -- pg_settings.setting is the raw value in the setting's unit (seconds); current_setting()
    -- would say '7d'.
    keep := coalesce(retention,
                     (SELECT make_interval(secs => setting::double precision) FROM pg_settings
                      WHERE name = 'fraiseql_observers.event_retention'),
                     interval '7 days');
    IF keep < interval '1 minute' THEN
        RAISE EXCEPTION 'retention must be at least 1 minute, not %', keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be a positive integer' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := clock_timestamp() - keep;
    SELECT s.done_snapshot INTO done FROM observer.dispatch_state s;

    -- Finished jobs first (their attempts go with them), so their events become prunable.
    WITH old AS (
        SELECT j.id FROM observer.jobs j
        WHERE j.state = 'completed' AND j.finished_at < cutoff
          -- Audit documents still on their way to Elasticsearch keep their job.
          AND NOT EXISTS (SELECT 1 FROM observer.audit_outbox x WHERE x.job_id = j.id)
        ORDER BY j.id LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM observer.jobs j USING old WHERE j.id = old.id;
    GET DIAGNOSTICS jobs_deleted = ROW_COUNT;

    -- An event_log row goes when none of its events (ids id .. id + 1023) has a job left.
    WITH old AS (
        SELECT l.id FROM observer.event_log l
        WHERE l.created_at < cutoff
          AND pg_visible_in_snapshot(l.tx, done)
          AND NOT EXISTS (SELECT 1 FROM observer.jobs j WHERE j.event_id >= l.id AND j.event_id < l.id + 1024)
        ORDER BY l.id LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM observer.event_log l USING old WHERE l.id = old.id RETURNING l.id, coalesce(l.nrows, 1) AS n
    ), skips AS (
        DELETE FROM observer.skipped s USING gone WHERE s.event_id >= gone.id AND s.event_id < gone.id + 1024
    )
    SELECT coalesce(sum(n), 0) INTO events_deleted FROM gone;
    RETURN NEXT;
END
$$;
