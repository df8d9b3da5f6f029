-- The audit trail: every attempt is a row of observer.attempts, written by the queue functions
-- (queue.sql: observer_complete, observer_fail, observer_discard, and expired leases in
-- observer_claim) with the endpoint, status and timing the worker reports and its words for the
-- full-text search, computed by the functions just below; searchable with observer_search(), and
-- exported to Elasticsearch by the workers when fraiseql_observers.audit_export is on.

-- A boolean setting of this extension (`on`/`off`/`true`/...), `fallback` when unset. Works
-- whether or not the library is loaded in the session (unloaded, the setting is a placeholder).
-- Inlined (no SET clause).
CREATE FUNCTION observer.setting_on(name text, fallback boolean) RETURNS boolean
LANGUAGE sql STABLE
RETURN COALESCE(NULLIF(pg_catalog.current_setting(name, true), '')::boolean, fallback);

-- The words of an attempt for observer_search(): its error (weight A) and the strings and
-- numbers of the delivered rows or enqueued payload (B). NULL when
-- fraiseql_observers.audit_search is off. Computed in the statements that record attempts, from
-- the job row they already hold: a trigger looking the job up again cost three times as much.
-- observer.words(error, doc): the words of an error and a document. Inlined (no SET clause, no
-- subquery).
-- Bounded, so that they can never fail an outcome report: a tsvector holds at most 1 MiB, and
-- about 840 kB of distinct words exceed it ("string is too long for tsvector"). The error's
-- first 4,000 characters count; a document of up to 100,000 bytes (uncompressed) gives its
-- strings and numbers, a bigger one the words of its first 100,000 characters of JSON text, keys
-- included (observer_bounded_doc). Both stay well
-- under the limit: at worst one distinct word per two characters of up to 4 bytes, each costing
-- its bytes plus 8 in the tsvector. `doc` is named once, so that the function stays inlined
-- (a parameter used several times with an expensive argument is not inlined: 4 µs a call).
CREATE FUNCTION observer.words(error text, doc jsonb) RETURNS tsvector
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
CREATE FUNCTION observer.batch_words(doc text) RETURNS tsvector
LANGUAGE sql STABLE
RETURN CASE WHEN observer.setting_on('fraiseql_observers.audit_search', true) THEN
    pg_catalog.setweight(CASE WHEN pg_catalog.octet_length(doc) OPERATOR(pg_catalog.<=) 100000
                              THEN pg_catalog.json_to_tsvector('simple', doc::json, '["string", "numeric"]')
                              ELSE pg_catalog.to_tsvector('simple', pg_catalog.left(doc, 100000)) END, 'B')
END;

-- observer.event_doc(table, op, old, new): the document of an event whose words are searched.
CREATE FUNCTION observer.event_doc(table_name text, op text, old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql STABLE
RETURN pg_catalog.jsonb_build_object('table', table_name, 'op', op, 'old', old, 'new', new);

-- observer.project_doc(doc, columns, keys): an event document as the observer delivers it: its
-- rows restricted to the observer's `columns` option (observer.project), so that the audit words
-- and documents never hold a column the observer left out on purpose. Inlined (no SET clause).
CREATE FUNCTION observer.project_doc(doc jsonb, cols text[], keys text[]) RETURNS jsonb
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

-- observer.attempt_docs(event_ids): the documents of a batch of jobs' events, each event_log row
-- decoded once (observer.events_of); no rows at all when audit_search is off. The outcome calls
-- join their jobs to it (an enqueued job's document is its payload).
-- An event that cannot be read (observer.events_safe) gives its table, op and error.
CREATE FUNCTION observer.attempt_docs(event_ids bigint[]) RETURNS TABLE (event_id bigint, doc jsonb)
LANGUAGE sql STABLE AS $$
    SELECT e.id, CASE WHEN e.error IS NULL THEN observer.event_doc(e.table_name, e.op, e.old, e.new)
                      ELSE pg_catalog.jsonb_build_object('table', e.table_name, 'op', e.op, 'error', e.error) END
    FROM observer.events_safe(event_ids) e
    WHERE observer.setting_on('fraiseql_observers.audit_search', true)
$$;

-- observer.audit_event(...): one event of an audit document: its id, table, op and rows as the
-- observer delivers them (its `columns` option applies here too, so that no document holds a
-- column the observer leaves out), or why it could not be read. Inlined (no SET clause).
CREATE FUNCTION observer.audit_event(id bigint, table_name text, op text, old jsonb, new jsonb, error text,
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
CREATE FUNCTION observer.batch_document(observer_name text, event_ids bigint[], events jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN events IS NOT NULL THEN
    pg_catalog.jsonb_build_object('observer', observer_name, 'event_ids', pg_catalog.to_jsonb(event_ids),
                                  'events', events) END;

-- The document delivered for a job, as observer_search() and the Elasticsearch export show it
-- (observer, table, op, rows, or the enqueued payload; a batch job's, observer.batch_document).
CREATE FUNCTION observer.audit_document(job_id bigint) RETURNS jsonb
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

-- AFTER INSERT on attempts: queue the row for Elasticsearch when export is on. The WHEN clause
-- is checked without calling the trigger, so with export off it costs next to nothing.
CREATE FUNCTION observer.attempt_export() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO observer.audit_outbox (job_id, attempt) VALUES (NEW.job_id, NEW.attempt)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER attempts_export AFTER INSERT ON observer.attempts
    FOR EACH ROW WHEN (observer.setting_on('fraiseql_observers.audit_export', false))
    EXECUTE FUNCTION observer.attempt_export();

-- observer_search(query, observer, outcome, since, until, max_results): attempts whose error or
-- delivered document matches `query` (web-search syntax: words, "a phrase", -word, or), newest
-- first, filtered by observer, outcome (completed, retry, dead, expired, discarded) and time.
-- NULL query: every attempt that passes the filters.
-- The tsquery of an observer_search() call, after checking its arguments (clear errors).
CREATE FUNCTION observer.search_query(query text, observer text, outcome text, max_results integer)
RETURNS tsquery
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF max_results IS NULL OR max_results < 1 OR max_results > 10000 THEN
        RAISE EXCEPTION 'max_results must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF outcome IS NOT NULL AND outcome NOT IN ('completed', 'retry', 'dead', 'expired', 'discarded') THEN
        RAISE EXCEPTION 'unknown outcome "%"', outcome USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use completed, retry, dead, expired or discarded.';
    END IF;
    IF observer IS NOT NULL AND NOT EXISTS (SELECT 1 FROM observer.observers o WHERE o.name = search_query.observer) THEN
        PERFORM observer.unknown_observer(observer);
    END IF;
    RETURN CASE WHEN query IS NULL THEN NULL ELSE websearch_to_tsquery('simple', query) END;
END
$$;

-- observer.search_matches(q, outcome, since, until): every attempt whose words match `q`, read
-- from the words' index alone (attempts_search: enable_seqscan off, so never by reading the table;
-- the time bounds are written so that they filter, instead of adding a scan of attempts_finished
-- over the whole range to the index's).
CREATE FUNCTION observer.search_matches(q tsquery, outcome_name text, since timestamptz, until timestamptz)
RETURNS TABLE (job_id bigint, attempt integer, finished_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT a.job_id, a.attempt, a.finished_at FROM observer.attempts a
    WHERE a.search @@ q AND (outcome_name IS NULL OR a.outcome = outcome_name)
      AND (since IS NULL OR a.finished_at >= since) AND (until IS NULL OR a.finished_at < until)
$$;

-- observer.search_attempts(...): observer_search's rows, its arguments checked. Two ways to find
-- them, chosen by what the newest attempts hold, not by the planner's estimate of how many
-- attempts hold the words (ten times off for a phrase, and either wrong choice costs seconds on
-- ten million attempts, benches/console.sh):
-- - newest first (attempts_finished), keeping those that match: without words, or when the
--   newest 20,000 attempts that pass the filters hold max_results matches (common words);
-- - else from the words' index (observer.search_matches: rare words), sorted.
-- The words are matched with ts_match_vq (the function of @@) on the first way, so that the
-- planner cannot turn it into the second. The documents are built as observer.audit_document
-- builds them, with the page's events read at once (one observer.events_safe call over every
-- event of the page's jobs, a batch job's included, not one per row: 0.8 ms a row). A function
-- of its own because PL/pgSQL refuses observer_search's signature (observer and outcome name
-- both an argument and a result column).
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

CREATE FUNCTION observer_search(query text, observer text DEFAULT NULL, outcome text DEFAULT NULL,
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

-- observer_audit_lock(): make this session the only audit exporter, if no other live session is
-- one; true when this session is (now or already). The exporter is recorded in
-- observer.audit_exporter by process id and start time, and a session that has ended gives way
-- at once. Only the worker and admin roles can take part: an advisory lock could be taken by any
-- login role and stop the export (and, with audit_export on, the pruning that waits for it).
CREATE FUNCTION observer_audit_lock() RETURNS boolean
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

-- observer_audit_batch(max_docs): the oldest attempts waiting for Elasticsearch, as documents
-- (the worker's exporter sends them with _bulk; _id = "<job_id>-<attempt>", so a re-sent
-- document is recognised). The payload is JSON text, capped at 32,768 characters, so arbitrary
-- row shapes cannot explode the index mapping. A batch job's document also lists its events'
-- ids as `event_ids` (`event_id` is its first), whole, so that a search of the index by any of
-- its events finds it even when the payload is cut.
CREATE FUNCTION observer_audit_batch(max_docs integer DEFAULT 500)
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

-- observer_audit_done(job_ids, attempts, refused): Elasticsearch has these documents (refused
-- NULL: they leave the outbox) or rejected them for good (the reason is kept; they are not sent
-- again). Returns the number of outbox rows settled.
CREATE FUNCTION observer_audit_done(job_ids bigint[], attempts integer[], refused text[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
    m bigint;
BEGIN
    IF cardinality(job_ids) IS DISTINCT FROM cardinality(attempts)
       OR (refused IS NOT NULL AND cardinality(refused) IS DISTINCT FROM cardinality(job_ids)) THEN
        RAISE EXCEPTION 'job_ids, attempts (and refused, when given) must have the same length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH input AS (
        SELECT * FROM unnest(job_ids, attempts, coalesce(refused, array_fill(NULL::text, ARRAY[cardinality(job_ids)])))
                 AS i(job_id, attempt, refused)
    )
    DELETE FROM observer.audit_outbox x USING input
    WHERE x.job_id = input.job_id AND x.attempt = input.attempt AND input.refused IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    WITH input AS (
        SELECT * FROM unnest(job_ids, attempts, refused) AS i(job_id, attempt, refused)
    )
    UPDATE observer.audit_outbox x SET refused = left(input.refused, 2000) FROM input
    WHERE x.job_id = input.job_id AND x.attempt = input.attempt AND input.refused IS NOT NULL;
    GET DIAGNOSTICS m = ROW_COUNT;
    RETURN n + m;
END
$$;
