-- The job queue API the worker calls: claim with a lease and a fencing token, extend the lease
-- (observer_heartbeat) while the action runs, then complete or fail in batches. Lease deadlines
-- come from the database clock, never the worker's. Each outcome records the attempt in the audit
-- trail with its words (audit.sql); enqueueing for queue observers is at the end.

-- observer.event_document(...): the document delivered for an event (the event branch of
-- observer.job_payload below, which reads it as jsonb), as JSON text, with `webhook_id` when
-- given (an element of a batch job): who made the change as observer.change_context says it,
-- each only when known. Text, written out field by field: 3.5 µs an event, against 11.6 to build
-- it as jsonb (1,000 events, one statement), so the dispatcher makes a batch job's array of these
-- (observer_dispatch) and the claim reads it as jsonb at the worker's session. Every string through
-- to_json and every row through jsonb's own output, so the text is always valid JSON. Inlined (no
-- SET clause).
CREATE FUNCTION observer.event_document(observer_name text, cols text[], keys text[], ev_id bigint,
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

-- observer.job_payload: the JSON document delivered for a job (Standard Webhooks layout: type,
-- timestamp, data), with `attempt` (1 for the first delivery, so a receiver can tell a retry).
-- An event's data carries who made the change (observer.change_context: txid, role, context).
-- An enqueued job (no event) delivers its own payload as `data`. Takes columns,
-- not whole rows, and has no SET clause so that it is inlined: forming a row value per claimed
-- job cost a third of a claim.
CREATE FUNCTION observer.job_payload(observer_name text, cols text[], keys text[],
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

-- observer.is_running(state): `state = 'running'`, opaque to the planner on purpose. Outcome calls
-- find their jobs by id; written plainly, the planner could prove the partial index jobs_leased
-- applicable, and with statistics taken while few jobs ran, it scanned every running job of
-- every worker for each batch (measured: 90 µs per job with 4 workers instead of 12).
CREATE FUNCTION observer.is_running(state text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN state = 'running' THEN true ELSE false END;

-- Argument checks shared by the queue functions (claim, complete, fail, heartbeat).
CREATE FUNCTION observer.check_lease(lease interval) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lease IS NULL OR lease < '1 second' OR lease > '1 day' THEN
        RAISE EXCEPTION 'lease must be between 1 second and 1 day, not %', coalesce(lease::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION observer.check_pairs(job_ids bigint[], tokens bigint[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cardinality(job_ids) IS DISTINCT FROM cardinality(tokens) THEN
        RAISE EXCEPTION 'job_ids and tokens must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- observer_heartbeat(job_ids, tokens, lease): extend the leases of running jobs whose token still
-- matches; accepted = false for the others (the lease was lost: stop working on the job).
CREATE FUNCTION observer_heartbeat(job_ids bigint[], tokens bigint[], lease interval DEFAULT '30 seconds')
RETURNS TABLE (job_id bigint, accepted boolean, lease_until timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
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

-- observer_claim(worker, max_jobs, lease). The scans must walk jobs_ready / jobs_leased in order
-- and stop at max_jobs. Statistics taken while the queue was empty (autovacuum's usual view of a
-- queue) made the planner fetch and sort every pending job instead, 200,000 of them per claim in
-- the benchmark: sorts and bitmap scans are switched off for this function, leaving the ordered
-- index scans as the cheapest plans (a sort still runs where nothing else can, e.g. the result).
-- JIT is off: the disabled plan types inflate cost estimates past jit_above_cost, and compiling
-- the claim cost 650 ms per call.
CREATE FUNCTION observer_claim(worker text, max_jobs integer DEFAULT 100, lease interval DEFAULT '30 seconds')
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

-- The optional audit details of outcome reports (complete, fail, discard), one per job: the
-- endpoint (scheme://host:port), the HTTP status or SMTP code, and the attempt's duration.
CREATE FUNCTION observer.check_audit(job_ids bigint[], endpoints text[], statuses integer[], durations_ms integer[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (endpoints IS NOT NULL AND cardinality(endpoints) IS DISTINCT FROM cardinality(job_ids))
       OR (statuses IS NOT NULL AND cardinality(statuses) IS DISTINCT FROM cardinality(job_ids))
       OR (durations_ms IS NOT NULL AND cardinality(durations_ms) IS DISTINCT FROM cardinality(job_ids)) THEN
        RAISE EXCEPTION 'endpoints, statuses and durations_ms (when given) must have the same length as job_ids'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- observer_complete(job_ids, tokens, endpoints, statuses, durations_ms): mark delivered jobs
-- completed. A pair whose token no longer matches (the lease expired and another worker claimed
-- the job) is rejected: accepted = false. The audit details are optional.
-- The outcome calls (complete, fail, snooze, discard, heartbeat) find their jobs by id. A
-- session keeps the plan it made at its first call, when the queue may have been nearly empty: a
-- hash join over a sequential scan of observer.jobs then stayed the plan as the table grew (185
-- scans of 200,000 rows in one benchmark run). enable_seqscan = off keeps the primary-key lookups.
CREATE FUNCTION observer_complete(job_ids bigint[], tokens bigint[], endpoints text[] DEFAULT NULL,
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
-- (observer.batch_key), and from the events it decoded it makes the array the job delivers
-- (`documents`: each event's document with its own webhook-id) and the words of its attempt
-- (`search`). A claim hands the array out as the job's payload, without reading the events again;
-- its completion writes one attempt with those words and drops the array. That is one job row
-- made, claimed and completed for up to max_events events instead of one per event
-- (docs/benchmarks.md, "Batching"). A batch job is only ever pending, running or completed, and
-- claimed at attempt 1 (a snooze gives its attempt back): whatever else happens to it, it is
-- first split into jobs of its own events (observer.split_batches), which then go their usual
-- way, each with its attempts, backoff and dead-letter entry:
--   - a failed or discarded attempt (observer_fail, observer_discard: the failure is each event's);
--   - a lease that expired (observer_claim);
--   - the worker's call (observer_split): the receiver refused the batch's content, so its events
--     must be sent in smaller batches to find the one at fault, the array is over the action's
--     max_bytes, or the observer's action no longer batches.
-- An event that cannot be read never makes a batch job: the dispatcher decides such a page event
-- by event, one job each.

-- observer.split_batches(job_ids): the batch jobs among job_ids (locked by the caller) become
-- jobs of their own events, which keep everything else of the batch job (state, attempt, lease,
-- token, worker, due time); the batch job's row becomes its first event's job. For each batch
-- job, the jobs of its events.
CREATE FUNCTION observer.split_batches(job_ids bigint[]) RETURNS TABLE (batch_id bigint, job_id bigint)
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
CREATE FUNCTION observer.held_batches(job_ids bigint[], tokens bigint[]) RETURNS bigint[]
LANGUAGE sql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT ARRAY(SELECT j.id FROM observer.jobs j JOIN unnest(job_ids, tokens) AS i(id, token) ON j.id = i.id
                 WHERE j.event_ids IS NOT NULL AND j.lease_token = i.token AND observer.is_running(j.state)
                 FOR UPDATE OF j)
$$;

-- observer.expand_batches(job_ids, held): the batch jobs `held` (observer.held_batches) split,
-- their events' jobs keeping the lease and token; for each position n of job_ids, the jobs that
-- now stand for it: itself, or its events' jobs.
CREATE FUNCTION observer.expand_batches(job_ids bigint[], held bigint[])
RETURNS TABLE (n bigint, orig bigint, job_id bigint)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH s AS MATERIALIZED (SELECT * FROM observer.split_batches(held))
    SELECT i.n, i.id, coalesce(s.job_id, i.id)
    FROM unnest(job_ids) WITH ORDINALITY AS i(id, n) LEFT JOIN s ON s.batch_id = i.id
    ORDER BY i.n, coalesce(s.job_id, i.id)
$$;

-- observer.pick(values, positions): values[positions[1]], values[positions[2]], ... (NULL for
-- NULL values): an outcome call's per-job arguments, spread over the jobs expand_batches made.
CREATE FUNCTION observer.pick(vals anyarray, positions bigint[]) RETURNS anyarray
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN vals IS NULL THEN NULL
                ELSE ARRAY(SELECT vals[u.k] FROM pg_catalog.unnest(positions) WITH ORDINALITY AS u(k, o) ORDER BY u.o) END
$$;

-- observer_split(job_ids, tokens): the worker gives back batch jobs it holds, to be sent as
-- jobs of their own events (the receiver refused the batch's content, the batch is over the
-- action's max_bytes, or the observer's action no longer batches): the events' jobs are pending
-- and due now (held while the observer is paused), the attempt the claim counted is given back.
-- accepted = false for a job that is not a running batch job with that token.
CREATE FUNCTION observer_split(job_ids bigint[], tokens bigint[])
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

-- observer_fail(job_ids, tokens, errors, retry_not_before): record failed attempts. Each job is
-- retried after exponential backoff with full jitter (random between 0 and
-- min(cap, base * 2^(attempt-1))), not before the worker-supplied time (Retry-After) if any, or
-- goes to state 'dead' once its observer's max_attempts is used up.
CREATE FUNCTION observer_fail(job_ids bigint[], tokens bigint[], errors text[],
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

-- Outcomes that use no attempt, or end the job at once.
CREATE FUNCTION observer.check_reasons(job_ids bigint[], reasons anyarray, what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF reasons IS NOT NULL AND cardinality(reasons) <> cardinality(job_ids) THEN
        RAISE EXCEPTION '% must have the same length as job_ids', what
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- observer_snooze(job_ids, tokens, until, reasons): put running jobs back without using an
-- attempt (circuit open, rate limited): pending again, due at `until` (now when NULL). The
-- attempt the claim counted is given back; `snoozes` counts these.
CREATE FUNCTION observer_snooze(job_ids bigint[], tokens bigint[], until timestamptz[],
                                reasons text[] DEFAULT NULL)
RETURNS TABLE (job_id bigint, accepted boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
#variable_conflict use_column
BEGIN
    PERFORM observer.check_pairs(job_ids, tokens);
    IF until IS NULL THEN
        RAISE EXCEPTION 'until must not be NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the time each job may run again, e.g. ARRAY[now() + interval ''30 seconds''].';
    END IF;
    PERFORM observer.check_reasons(job_ids, until, 'until');
    PERFORM observer.check_reasons(job_ids, reasons, 'reasons');
    RETURN QUERY
    WITH input AS (
        SELECT i.id, i.token, i.until, left(i.reason, 2000) AS reason
        FROM unnest(job_ids, tokens, until,
                    coalesce(reasons, array_fill(NULL::text, ARRAY[cardinality(job_ids)])))
             AS i(id, token, until, reason)
    ), snoozed AS (
        UPDATE observer.jobs j
        SET state = 'pending', attempt = j.attempt - 1, snoozes = j.snoozes + 1,
            run_at = CASE WHEN (SELECT o.paused_at FROM observer.observers o WHERE o.id = j.observer_id) IS NOT NULL
                          THEN 'infinity'  -- held while its observer is paused
                          ELSE greatest(coalesce(input.until, clock_timestamp()), clock_timestamp()) END,
            lease_until = NULL,
            last_error = 'snoozed: ' || coalesce(input.reason, 'no reason given')
        FROM input
        WHERE j.id = input.id AND j.lease_token = input.token AND observer.is_running(j.state)
        RETURNING j.id
    )
    -- A join, not EXISTS per row: a correlated scan of the CTE is quadratic in the batch size.
    SELECT input.id, snoozed.id IS NOT NULL FROM input LEFT JOIN snoozed ON snoozed.id = input.id;
END
$$;

-- observer_discard(job_ids, tokens, reasons, pause): end running jobs at once (the receiver
-- said the endpoint is gone, e.g. HTTP 410, or refused the message for good): state 'dead', in
-- the dead-letter queue with the reason, so nothing is lost and observer_dlq_retry() can replay
-- it. Where pause[i] is true (HTTP 410 Gone), the job's observer is also paused with the reason:
-- its pending and future jobs are held, not sent to a gone endpoint, until observer_resume().
CREATE FUNCTION observer_discard(job_ids bigint[], tokens bigint[], reasons text[], pause boolean[] DEFAULT NULL,
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

-- observer.check_enqueue: what a caller of observer_enqueue_many may enqueue.
--   - the queue: a role granted app access for some queues only (observer_grant(role, 'app',
--     queues => ...)) enqueues into those only. The check is on the session's login role
--     (session_user: inside a SECURITY DEFINER function the caller's role is not visible), and a
--     superuser session may enqueue anywhere;
--   - payloads: each at most the queue's max_payload_bytes (as jsonb);
--   - idempotency keys: 1 to 200 printable ASCII characters, not starting or ending with a space
--     (a key is sent as the webhook-id header: anything else could not be sent);
--   - ordering keys: at most 1,000 bytes (they are indexed).
CREATE FUNCTION observer.check_enqueue(q observer.observers, payloads jsonb[], idempotency_keys text[],
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

-- observer_enqueue_many(queue, payloads, idempotency_keys, ordering_keys, run_at): add jobs to a
-- job queue (an observer created with no table); they get the same claim, lease, retry, FIFO and
-- dead-letter handling as jobs made from row changes. A job with an idempotency key is unique in
-- its queue while it is kept: enqueueing the key again returns the existing job (created =
-- false). The job's webhook-id is key_<queue id>_<key>, or job_<id> without a key; a run_at in
-- the past counts as now. Returns one row per payload, in order. See observer.check_enqueue for
-- what a caller may enqueue.
CREATE FUNCTION observer_enqueue_many(queue text, payloads jsonb[], idempotency_keys text[] DEFAULT NULL,
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

-- observer_enqueue(queue, payload, ...): one job; returns its id (the existing job's id when the
-- idempotency key is already queued).
CREATE FUNCTION observer_enqueue(queue text, payload jsonb, idempotency_key text DEFAULT NULL,
                                 ordering_key text DEFAULT NULL, run_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT e.job_id FROM observer_enqueue_many(queue, ARRAY[payload],
        CASE WHEN idempotency_key IS NULL THEN NULL ELSE ARRAY[idempotency_key] END,
        CASE WHEN ordering_key IS NULL THEN NULL ELSE ARRAY[ordering_key] END, run_at) e;
END;
