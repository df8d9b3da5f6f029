-- Leases and the dead-letter queue.
--
-- A dead job stays in observer.jobs (state 'dead') with its last error, and every attempt stays
-- in observer.attempts; its event is never pruned while the job is dead, so the payload can be
-- replayed. A retried dead job keeps its idempotency key, so the receiver sees the same
-- webhook-id, and gets a fresh attempt budget (attempts_allowed) while its attempt numbers keep
-- counting, so no attempt's record is overwritten.

-- observer_heartbeat(job_ids, tokens, lease): extend the leases of running jobs whose token still
-- matches; accepted = false for the others (the lease was lost: stop working on the job).
CREATE FUNCTION observer_heartbeat(job_ids bigint[], tokens bigint[], lease interval DEFAULT '30 seconds')
RETURNS TABLE (job_id bigint, accepted boolean, lease_until timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM observer.check_pairs(job_ids, tokens);
    PERFORM observer.check_lease(lease);
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(job_ids, tokens) AS i(id, token)
    ), extended AS (
        UPDATE observer.jobs j
        SET lease_until = clock_timestamp() + observer_heartbeat.lease
        FROM input
        WHERE j.id = input.id AND j.lease_token = input.token AND observer.is_running(j.state)
          AND j.lease_until >= clock_timestamp()
        RETURNING j.id, j.lease_until
    )
    SELECT input.id, e.id IS NOT NULL, e.lease_until
    FROM input LEFT JOIN extended e ON e.id = input.id;
END
$$;

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

CREATE FUNCTION observer_dlq_list(observer text DEFAULT NULL, since timestamptz DEFAULT NULL,
                                  until timestamptz DEFAULT NULL, error_like text DEFAULT NULL,
                                  max_rows integer DEFAULT 100)
RETURNS TABLE (job_id bigint, observer text, event_id bigint, attempts integer, last_error text,
               failed_at timestamptz, idempotency_key text, payload jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT j.id, o.name, j.event_id, j.attempt, j.last_error, j.finished_at, j.idempotency_key,
           observer.job_payload(o.name, o.columns, o.key_columns, j.event_id, j.payload, j.created_at,
                                e.id, e.created_at, e.table_name, e.op, e.old, e.new, e.oversize)
    FROM observer.dlq_match(NULL, observer, since, until, error_like, true) m
    JOIN observer.jobs j ON j.id = m
    JOIN observer.observers o ON o.id = j.observer_id
    LEFT JOIN LATERAL observer.event(j.event_id) e ON true
    ORDER BY j.finished_at DESC, j.id DESC
    LIMIT max_rows
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
        PERFORM pg_notify('fraiseql_observers_jobs', '');
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
