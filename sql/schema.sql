-- fraiseql_observers: storage. Data lives in schema "observer" (never granted to PUBLIC); the API
-- functions live in the extension's schema so that `SELECT observer_status()` works on the default
-- search_path. Every API function pins search_path and qualifies what it touches.

CREATE SCHEMA observer;
REVOKE ALL ON SCHEMA observer FROM PUBLIC;
COMMENT ON SCHEMA observer IS 'fraiseql_observers storage: observers, event log, dispatch state, job queue';

-- Observers: what to watch and what to do.
CREATE TABLE observer.observers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.-]{0,62}$'),
    table_oid      oid,                      -- NULL: a job queue, fed by observer_enqueue()
    table_name     text,                     -- schema-qualified, as it was at observer_create
    events         text[] CHECK (events <@ ARRAY['INSERT','UPDATE','DELETE','TRUNCATE'] AND cardinality(events) > 0),
    condition      jsonpath,                 -- SQL/JSON path predicate over {op, table, old, new, changed}; NULL = always
    columns        text[],                   -- payload subset (NULL = every column)
    changed_columns text[],                  -- UPDATE matches only if one of these changed (NULL = any UPDATE)
    max_payload_bytes integer NOT NULL DEFAULT 1048576 CHECK (max_payload_bytes BETWEEN 1024 AND 104857600),
    dedup_window   interval,                 -- dedup on when set: one job per dedup key per window
    dedup_key      jsonpath,                 -- path into {op, table, old, new}; NULL = table + primary key
    dedup_coalesce boolean NOT NULL DEFAULT false, -- instead: fold into the key's unsent job (latest state wins)
    action         jsonb NOT NULL,           -- validated by observer_validate_action()
    key_columns    text[],                   -- primary key columns: the default ordering key
    fifo           text CHECK (fifo IN ('block', 'park')), -- per-key FIFO on failure policy; NULL = unordered
    priority       smallint NOT NULL DEFAULT 0, -- claimed first: higher priority, then due time
    max_attempts   integer NOT NULL DEFAULT 8 CHECK (max_attempts BETWEEN 1 AND 1000),
    backoff_base   interval NOT NULL DEFAULT '1 second' CHECK (backoff_base > '0'),
    backoff_cap    interval NOT NULL DEFAULT '1 hour' CHECK (backoff_cap >= backoff_base),
    enabled        boolean NOT NULL DEFAULT true,
    -- Deliveries held: jobs are still made (nothing is lost) but wait, due at 'infinity', until
    -- observer_resume(). Set by observer_pause() or by a worker whose endpoint answered 410 Gone.
    paused_at      timestamptz,
    paused_reason  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- The `ordering_key` option: a path into {op, table, old, new} whose value orders the jobs
    -- (FIFO per value) instead of the primary key; `new` is the old row for a DELETE.
    ordering_path  jsonpath,
    CHECK ((table_oid IS NULL) = (events IS NULL) AND (table_oid IS NULL) = (table_name IS NULL)),
    CHECK ((paused_at IS NULL) = (paused_reason IS NULL))
);
CREATE INDEX observers_table ON observer.observers (table_oid) WHERE enabled;

-- The event log, written by the capture triggers in the writing transaction. `tx` is that
-- transaction's xid8: the dispatcher reads events by transaction visibility, never by id, because
-- ids are taken before commit and commits come out of id order.
--
-- An event is one captured row change, with its own id. Ids come in blocks of 1024
-- (events_id_seq): a row of event_log holds either
--   - one row change as jsonb (`old`, `new`; nrows NULL): row-level capture, oversize rows, TRUNCATE;
--   - a batch of up to 1024 row changes of one statement in binary form (`nrows`, `cols`,
--     `col_types`, `old_rows`, `new_rows`, see extension/src/pg/rows.rs): statement-level capture.
--     Row i of the batch is event `id + i`; the dispatcher converts rows to JSON.
-- observer.events (a view, dispatch.sql) shows every event as a row; observer.event(id) finds one.
-- Written by the native capture triggers (extension/src/pg/capture.rs), which fill every column
-- themselves: keep the two in step. They insert with CatalogTupleInsert, which maintains plain
-- btree indexes only: keep it that way (no expression, partial or exclusion indexes here).
CREATE SEQUENCE observer.events_id_seq START WITH 1024 INCREMENT BY 1024 MINVALUE 1024;
CREATE TABLE observer.event_log (
    id          bigint PRIMARY KEY DEFAULT nextval('observer.events_id_seq'),
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid   oid NOT NULL,
    table_name  text NOT NULL,
    op          text NOT NULL,               -- INSERT, UPDATE, DELETE or TRUNCATE
    old         jsonb,
    new         jsonb,
    oversize    integer,                     -- payload bytes when over the cap (old/new then hold the key only)
    nrows       integer,                     -- batch: number of row changes (NULL: a single jsonb event)
    cols        text[],                      -- batch: names of the stored columns
    col_types   oid[],                       -- batch: their types at capture time
    old_rows    bytea,                       -- batch: OLD rows (UPDATE, DELETE)
    new_rows    bytea,                       -- batch: NEW rows (INSERT, UPDATE)
    created_at  timestamptz NOT NULL DEFAULT now(),
    role        text,                        -- the role the write ran as (current_user)
    context     jsonb,                       -- fraiseql_observers.context of the writing transaction
    CHECK (nrows IS NULL OR nrows BETWEEN 1 AND 1024)
);
ALTER SEQUENCE observer.events_id_seq OWNED BY observer.event_log.id;
-- Batches are compressed and kept in the row when they fit (STORAGE MAIN): a 100-row batch
-- compresses to a fraction of a page, which costs less than writing it to TOAST in chunks. lz4
-- where the server has it (fast, and a slice of it decompresses only up to the slice), else pglz.
ALTER TABLE observer.event_log ALTER COLUMN old_rows SET STORAGE MAIN,
                               ALTER COLUMN new_rows SET STORAGE MAIN;
DO $$
BEGIN
    ALTER TABLE observer.event_log ALTER COLUMN old_rows SET COMPRESSION lz4,
                                   ALTER COLUMN new_rows SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;  -- built without lz4: the default (pglz) applies
END
$$;
CREATE INDEX event_log_tx ON observer.event_log (tx);
-- Retention deletes old events in batches: vacuum early so new events reuse the space.
ALTER TABLE observer.event_log SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);

-- One event (one row change) as the dispatcher, the queue and operators see it.
CREATE TYPE observer.event AS (
    id          bigint,
    tx          xid8,
    table_oid   oid,
    table_name  text,
    op          text,
    old         jsonb,
    new         jsonb,
    oversize    integer,
    created_at  timestamptz,
    role        text,
    context     jsonb
);

-- Dispatcher checkpoint (one row). All events of transactions visible in `done_snapshot` have been
-- dispatched. A round targets `batch_snapshot`: the events visible in it and not in
-- `done_snapshot` (PgQ's tick technique), paged by event id above `batch_cursor`.
CREATE TABLE observer.dispatch_state (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    done_snapshot     pg_snapshot NOT NULL,
    batch_snapshot    pg_snapshot,
    batch_cursor      bigint NOT NULL DEFAULT 0,
    rounds            bigint NOT NULL DEFAULT 0,
    fallback_rounds   bigint NOT NULL DEFAULT 0,    -- rounds that had to decide event by event
    events_dispatched bigint NOT NULL DEFAULT 0,
    jobs_created      bigint NOT NULL DEFAULT 0,
    last_round_at     timestamptz,
    last_event_at     timestamptz,
    last_dispatcher   text
);
INSERT INTO observer.dispatch_state (done_snapshot) VALUES (pg_current_snapshot());

-- Decisions that made no job but must be findable: a condition whose result was unknown on this
-- row (a type mismatch or structural error: recorded, never raised, so one bad row blocks
-- nothing), an event deduplicated or coalesced into another job by the observer's dedup option
-- (job_id names that job), a condition that ran out of time on this row (`condition_timeout`,
-- fraiseql_observers.condition_timeout), or an event that could not be read at all
-- (`undecodable`, quarantined with the reason in `detail`: observer_replay() tries it again once
-- the cause is fixed).
-- "Condition false" is not stored: it can be recomputed.
CREATE TABLE observer.skipped (
    event_id     bigint NOT NULL,
    observer_id  bigint NOT NULL REFERENCES observer.observers (id) ON DELETE CASCADE,
    reason       text NOT NULL CHECK (reason IN ('condition_unknown', 'condition_timeout', 'deduplicated', 'coalesced', 'undecodable')),
    job_id       bigint,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    detail       text,                       -- undecodable, condition_timeout: why (last: added by 0.2.0)
    PRIMARY KEY (event_id, observer_id)
);

-- Per-queue enqueue grants (observer_grant(role, 'app', queues => ...)): a role in
-- enqueue_restricted may enqueue into the queues enqueuers lists for it only (observer.check_enqueue),
-- and stays restricted when those queues are dropped. A role granted app access without queues is
-- in neither and may enqueue into every queue. Roles by oid: a dropped role matches nobody.
CREATE TABLE observer.enqueue_restricted (
    role_oid   oid PRIMARY KEY
);
CREATE TABLE observer.enqueuers (
    queue_id   bigint NOT NULL REFERENCES observer.observers (id) ON DELETE CASCADE,
    role_oid   oid NOT NULL,
    PRIMARY KEY (queue_id, role_oid)
);

-- The audit exporter: the one session that exports the audit trail to Elasticsearch
-- (observer_audit_lock). A row nobody but the extension's roles can write, not an advisory lock,
-- which any login role could take and stop the export.
CREATE TABLE observer.audit_exporter (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid           integer NOT NULL,
    backend_start timestamptz NOT NULL,
    since         timestamptz NOT NULL DEFAULT now()
);

-- Fencing tokens: every claim takes a new, larger one, so a worker holding an older token can
-- never overwrite the outcome written by the worker that took its expired lease over.
CREATE SEQUENCE observer.lease_token_seq;

-- The job queue. One job per (event, observer), enforced by the unique constraint so a retried
-- dispatch round cannot double a job. Jobs enqueued by observer_enqueue() have no event: they
-- carry their own payload, and an idempotency key given by the enqueuer is unique per queue
-- (unique_key, jobs_unique_key).
CREATE TABLE observer.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    observer_id      bigint NOT NULL REFERENCES observer.observers (id),
    event_id         bigint,                 -- NULL for enqueued jobs
    payload          jsonb,                  -- enqueued jobs: what the action receives as `data`
    priority         smallint NOT NULL DEFAULT 0, -- the observer's, at job creation
    snoozes          integer NOT NULL DEFAULT 0,  -- times put back without using an attempt
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'completed', 'dead')),
    attempt          integer NOT NULL DEFAULT 0,
    attempts_allowed integer,                -- set by observer_dlq_retry; NULL = the observer's max_attempts
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_token      bigint,
    lease_until      timestamptz,
    worker           text,
    ordering_key     text,                   -- per-key FIFO key (FIFO observers and enqueuers only)
    dedup_key        text,                   -- set for observers with dedup
    idempotency_key  text NOT NULL,          -- the webhook-id: stable across retries and replays
    unique_key       text,                   -- enqueued jobs: the enqueuer's idempotency key (unique per queue)
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- A batch job (queue.sql, "Batch jobs"): the ids of its events, ascending, all in the event_log
    -- row of event_id (its first). NULL on every other job.
    event_ids        bigint[],
    -- A batch job: the words of its events' documents for its attempt's search (audit.sql), and
    -- the array it delivers (cleared once delivered), both made by the dispatcher from the
    -- events it decoded to make the job.
    search           tsvector,
    documents        text,                   -- JSON text (observer.event_document)
    CHECK ((event_id IS NULL) <> (payload IS NULL)),
    CONSTRAINT jobs_batch_check CHECK (event_ids IS NULL OR (event_id IS NOT NULL AND event_ids[1] = event_id
                                                             AND cardinality(event_ids) BETWEEN 2 AND 1024))
);
-- Every index below is paid for on each state change (pending -> running -> completed cannot be
-- HOT updates: state is in the partial indexes' predicates), so each one is partial where it can
-- be and none is kept for convenience; claim throughput depends on it (docs/benchmarks.md).
CREATE UNIQUE INDEX jobs_event_observer ON observer.jobs (event_id, observer_id) WHERE event_id IS NOT NULL;
CREATE UNIQUE INDEX jobs_unique_key ON observer.jobs (observer_id, unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX jobs_ready ON observer.jobs (priority DESC, run_at, id) WHERE state = 'pending';
CREATE INDEX jobs_leased ON observer.jobs (lease_until) WHERE state = 'running';
ALTER TABLE observer.jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);
-- Per-key FIFO: "is there an earlier unfinished job of this key?" (observer_claim). Jobs carry an
-- ordering key only when their observer is FIFO (or the enqueuer gave one).
CREATE INDEX jobs_key_order ON observer.jobs (observer_id, ordering_key, id)
    WHERE ordering_key IS NOT NULL AND state IN ('pending', 'running', 'dead');
CREATE INDEX jobs_dedup ON observer.jobs (observer_id, dedup_key, created_at) WHERE dedup_key IS NOT NULL;
-- The dead-letter queue, newest first, all of it or one observer's (observer_dlq_list, the
-- console), and its counts (observer_status). Dead jobs only: a job enters them when it dies,
-- never on its way through pending, running and completed.
CREATE INDEX jobs_dead ON observer.jobs (finished_at, id) WHERE state = 'dead';
CREATE INDEX jobs_dead_observer ON observer.jobs (observer_id, finished_at, id) WHERE state = 'dead';

-- The audit trail: one row per delivery attempt, as the worker reported it. `search` holds the
-- words of the error and of the delivered document (audit.sql, observer_search()); the row is
-- exported to Elasticsearch when fraiseql_observers.audit_export is on (audit_outbox).
-- Attempts belong to their job (observer.jobs_deleted below), without a foreign key: only the
-- queue functions write attempts, for jobs they hold locked, and the key's check ran one query
-- per recorded attempt (12% of a no-op job's cost in benches/queue.sh).
CREATE TABLE observer.attempts (
    job_id       bigint NOT NULL,            -- observer.jobs (id)
    attempt      integer NOT NULL,
    worker       text,
    outcome      text NOT NULL CHECK (outcome IN ('completed', 'retry', 'dead', 'expired', 'discarded')),
    error        text,                       -- failures: what went wrong, with a capped response excerpt
    endpoint     text,                       -- scheme://host:port (never a path: URLs can hold credentials)
    status       integer,                    -- the HTTP status or SMTP reply code, when there was one
    duration_ms  integer,                    -- time the worker spent on the attempt
    finished_at  timestamptz NOT NULL DEFAULT now(),
    search       tsvector,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX attempts_search ON observer.attempts USING gin (search);
-- The newest attempts first (observer_search without words, or with common ones; the console's
-- charts of the last hour). Attempts are appended in time order, so it grows at its right edge.
CREATE INDEX attempts_finished ON observer.attempts (finished_at);

-- Deleting jobs (retention, observer_dlq_purge, observer_drop, an operator's DELETE) deletes
-- their attempts, one statement per DELETE; TRUNCATE of observer.jobs empties the audit trail.
-- The attempts are found by `job_id = ANY (array)`: a join with the transition table would keep
-- the plan made for the session's first delete (a hash join over all attempts after a large one).
-- A TRUNCATE that lists the attempts too (`TRUNCATE observer.jobs, observer.attempts`) has them
-- open: they are emptied by it, or by the DELETE here when they are not listed.
CREATE FUNCTION observer.jobs_deleted() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        BEGIN
            TRUNCATE observer.attempts, observer.audit_outbox;
        EXCEPTION WHEN object_in_use THEN
            DELETE FROM observer.attempts;
        END;
    ELSE
        DELETE FROM observer.attempts a WHERE a.job_id = ANY (ARRAY(SELECT gone.id FROM gone));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_deleted AFTER DELETE ON observer.jobs REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION observer.jobs_deleted();
CREATE TRIGGER jobs_truncated AFTER TRUNCATE ON observer.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION observer.jobs_deleted();

-- Attempts waiting to be indexed in Elasticsearch by a worker (observer_audit_batch). A row
-- leaves when Elasticsearch has the document; one it refused for good keeps its reason. Jobs
-- with rows here are not pruned, so no audit document is lost while Elasticsearch is away.
-- An operator's observer_dlq_purge() or observer_drop() deletes the attempts and, with them,
-- their rows here.
CREATE TABLE observer.audit_outbox (
    job_id      bigint NOT NULL,
    attempt     integer NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    refused     text,                        -- Elasticsearch rejected the document for good (e.g. a mapping error)
    PRIMARY KEY (job_id, attempt),
    FOREIGN KEY (job_id, attempt) REFERENCES observer.attempts (job_id, attempt) ON DELETE CASCADE
);
CREATE INDEX audit_outbox_queue ON observer.audit_outbox (queued_at) WHERE refused IS NULL;

-- Circuit breakers as each worker last reported them (observer_report_breakers), shown by
-- observer_status(). A worker replaces all of its rows at each report.
CREATE TABLE observer.breakers (
    worker      text NOT NULL,
    endpoint    text NOT NULL,               -- scheme://host:port
    state       text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures    integer NOT NULL DEFAULT 0,  -- consecutive endpoint faults (closed)
    open_until  timestamptz,                 -- open: when the next probe goes out
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker, endpoint)
);

-- Progress of observer_backfill() runs: the last primary key sent, so a run resumes where it
-- stopped. One row per observer (a new run replaces a finished one).
CREATE TABLE observer.backfills (
    observer_id  bigint PRIMARY KEY REFERENCES observer.observers (id) ON DELETE CASCADE,
    run          bigint NOT NULL,            -- which run (part of each job's idempotency key)
    last_key     jsonb,                      -- primary key values of the last row sent (NULL: none yet)
    rows_sent    bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

-- Every object above is private to the extension owner; roles get functions, not tables.
REVOKE ALL ON ALL TABLES IN SCHEMA observer FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA observer FROM PUBLIC;

-- dump/restore: configuration tables are dumped with the extension.
SELECT pg_catalog.pg_extension_config_dump('observer.observers', '');
