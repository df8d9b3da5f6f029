-- benches/console/load.sql: the history benches/console.sh measures the console's calls on, loaded
-- with set-based SQL (psql variables: jobs, a multiple of 5; dead_every).
--   observers  orders_webhook and orders_audit (webhooks of the table public.orders, INSERT and
--              UPDATE) and emails (a job queue), max_attempts 5, created 8 days ago
--   events     2 * jobs / 5 single-row events of public.orders (ids k * 1024, as the capture
--              gives them), spread over the last 7 days, dispatched
--   jobs       ids 1 .. jobs in blocks of five: the two observers' jobs of event 2b + 1, then of
--              event 2b + 2, then one enqueued job of emails; id i is dead when i % dead_every =
--              0 (four kinds of error), the others completed (1 in 20 after a 503 on attempt 1)
--   attempts   one per attempt, with observer.words over the error and the delivered document,
--              as the queue functions write them
-- The indexes of the three tables (all but their primary keys) are dropped during the load and
-- made again from their own definitions (pg_get_indexdef), so the benchmark measures exactly the
-- installed schema.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
SET max_parallel_maintenance_workers = 2;

CREATE EXTENSION fraiseql_observers;
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer text NOT NULL, email text NOT NULL,
                            status text NOT NULL, total numeric(10, 2) NOT NULL);
SELECT FROM observer_create('orders_webhook', 'public.orders', ARRAY['INSERT', 'UPDATE'], NULL,
                            '{"type": "webhook", "url": "http://127.0.0.1:9/hooks/orders"}', '{"max_attempts": 5}');
SELECT FROM observer_create('orders_audit', 'public.orders', ARRAY['INSERT', 'UPDATE'], NULL,
                            '{"type": "webhook", "url": "http://127.0.0.2:9/audit"}', '{"max_attempts": 5}');
SELECT FROM observer_create('emails', NULL, action => '{"type": "webhook", "url": "http://127.0.0.3:9/send"}',
                            options => '{"max_attempts": 5}');
UPDATE observer.observers SET created_at = now() - interval '8 days', updated_at = now() - interval '8 days';

-- complete: set by the last statement (benches/console.sh REUSE=1 uses only a complete history).
CREATE TABLE bench_history (jobs bigint, dead_every integer, t0 timestamptz, step interval,
                            complete boolean NOT NULL DEFAULT false);
INSERT INTO bench_history VALUES (:jobs, :dead_every, now() - interval '7 days', interval '7 days' / :jobs);

CREATE TABLE bench_indexes AS
    SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
    FROM pg_index i
    WHERE i.indrelid IN ('observer.jobs'::regclass, 'observer.attempts'::regclass, 'observer.event_log'::regclass)
      AND NOT i.indisprimary;
DO $$
DECLARE
    n text;
BEGIN
    FOR n IN SELECT name FROM bench_indexes LOOP
        EXECUTE 'DROP INDEX ' || n;
    END LOOP;
END
$$;

\echo events
INSERT INTO observer.event_log (id, table_oid, table_name, op, new, created_at, role)
SELECT k * 1024, 'public.orders'::regclass, 'public.orders', 'INSERT',
       jsonb_build_object('id', k, 'customer', 'customer_' || k % 50000, 'email', 'c' || k % 50000 || '@example.com',
                          'status', (ARRAY['paid', 'pending', 'shipped', 'refunded'])[k % 4 + 1],
                          'total', (k % 100000) / 100.0),
       h.t0 + h.step * ((k - 1) / 2 * 5 + (k - 1) % 2 * 2), 'app'
FROM bench_history h, generate_series(1::bigint, :jobs / 5 * 2) k;

\echo jobs
INSERT INTO observer.jobs (id, observer_id, event_id, payload, state, attempt, run_at, worker, idempotency_key,
                           last_error, created_at, finished_at, lease_token)
OVERRIDING SYSTEM VALUE
SELECT i, x.observer_id, x.event_id, x.payload, x.state, x.attempts, x.created_at, 'worker-' || i % 3,
       CASE WHEN x.event_id IS NULL THEN 'job_' || i ELSE 'evt_' || x.event_id || '_' || x.observer_id END,
       x.error, x.created_at,
       x.created_at + CASE WHEN x.state = 'dead' THEN interval '40 minutes'
                           WHEN x.attempts = 2 THEN interval '2 seconds' ELSE interval '50 ms' END, i
FROM bench_history h, generate_series(1::bigint, :jobs) i,
LATERAL (SELECT (i - 1) % 5 AS r, (i - 1) / 5 AS b) p,
LATERAL (SELECT CASE WHEN p.r = 4 THEN 3 ELSE 1 + p.r % 2 END AS observer_id,
                CASE WHEN p.r < 4 THEN (2 * p.b + 1 + p.r / 2) * 1024 END AS event_id,
                CASE WHEN p.r = 4 THEN jsonb_build_object('to', 'c' || p.b % 50000 || '@example.com',
                                                          'template', 'receipt', 'order', 2 * p.b + 1) END AS payload,
                CASE WHEN i % :dead_every = 0 THEN 'dead' ELSE 'completed' END AS state,
                CASE WHEN i % :dead_every = 0 THEN 5 WHEN i % 20 = 0 THEN 2 ELSE 1 END AS attempts,
                CASE WHEN i % :dead_every = 0 THEN (ARRAY[
                    'HTTP 500 Internal Server Error: {"error": "database is locked"}',
                    'timed out after 30s waiting for the response headers',
                    'HTTP 422 Unprocessable Entity: {"error": "unknown customer"}',
                    'connection refused (os error 111)'])[i / :dead_every % 4 + 1] END AS error,
                h.t0 + h.step * (i - 1) AS created_at) x;
SELECT setval(pg_get_serial_sequence('observer.jobs', 'id'), :jobs);

\echo attempts
INSERT INTO observer.attempts (job_id, attempt, worker, outcome, error, endpoint, status, duration_ms,
                               finished_at, search)
SELECT j.id, a, j.worker, o.outcome, o.error, 'http://127.0.0.' || j.observer_id || ':9', o.status,
       CASE WHEN o.error LIKE 'timed out%' THEN 30000 ELSE 20 + j.id % 80 END,
       CASE WHEN a = j.attempt THEN j.finished_at ELSE j.created_at + (a - 1) * interval '10 minutes' + interval '50 ms' END,
       observer.words(o.error, CASE WHEN j.event_id IS NULL THEN j.payload
                                    ELSE observer.event_doc('public.orders', 'INSERT', NULL, e.new) END)
FROM observer.jobs j
LEFT JOIN observer.event_log e ON e.id = j.event_id
CROSS JOIN LATERAL generate_series(1, j.attempt) a
CROSS JOIN LATERAL (SELECT CASE WHEN j.state = 'dead' AND a = j.attempt THEN 'dead'
                                WHEN a < j.attempt THEN 'retry' ELSE 'completed' END AS outcome,
                           CASE WHEN j.state = 'dead' THEN j.last_error
                                WHEN a < j.attempt THEN 'HTTP 503 Service Unavailable' END AS error) o0
CROSS JOIN LATERAL (SELECT o0.outcome, o0.error,
                           CASE WHEN o0.error IS NULL THEN 200
                                WHEN o0.error LIKE 'HTTP %' THEN substr(o0.error, 6, 3)::integer END AS status) o;

\echo indexes
DO $$
DECLARE
    d text;
BEGIN
    FOR d IN SELECT def FROM bench_indexes LOOP
        EXECUTE d;
    END LOOP;
END
$$;
-- Everything loaded counts as dispatched, with a round just now.
UPDATE observer.dispatch_state SET done_snapshot = pg_current_snapshot(), rounds = 1, last_round_at = now(),
                                   events_dispatched = :jobs / 5 * 2, jobs_created = :jobs / 5 * 4;
\echo vacuum
VACUUM (ANALYZE) observer.event_log, observer.jobs, observer.attempts, observer.observers;
CHECKPOINT;
UPDATE bench_history SET complete = true;
