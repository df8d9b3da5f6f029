#!/usr/bin/env bash
# The demo on the embedded default: sets everything up (scripts/setup.sh), (re)starts a local
# Postgres 15 cluster with the extension preloaded, starts a local HTTP sink and the worker,
# creates an `orders` table with an observer "when status becomes shipped, POST to the sink",
# writes some orders, then prints what the sink received and observer_status().
# The cluster is left running (port from pgrx.toml: demo_port) so you can keep exploring.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$ROOT/scripts/setup.sh"

PORT="$(pgrx_toml_get demo_port)"
SINK_ADDR="127.0.0.1:$((PORT + 1))"
RUN="$ROOT/.demo"
mkdir -p "$RUN"

step "build the worker and the demo sink"
cargo build --quiet -p fraiseql-observers -p fraiseql-observers-tests --bins
BIN="$ROOT/target/debug"

step "start the demo cluster"
# Restart so that the server runs the extension library just installed.
cluster_stop demo
cluster_start demo "$PORT"
export PGHOST="$ROOT/.cluster/demo/run" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
DB_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step "start the sink on http://$SINK_ADDR and the worker"
"$BIN/demo-sink" "$SINK_ADDR" >"$RUN/received.jsonl" 2>"$RUN/sink.log" &
pids+=($!)
FRAISEQL_OBSERVERS_DATABASE_URL="$DB_URL" FRAISEQL_OBSERVERS_POLL_INTERVAL_MS=200 \
  FRAISEQL_OBSERVERS_HTTP__ALLOW_NETWORKS=127.0.0.0/8 \
  "$BIN/fraiseql-observers" run --worker-id demo-worker >"$RUN/worker.log" 2>&1 &
pids+=($!)

step "create the extension, a table and an observer"
psql <<SQL
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fraiseql_observers CASCADE;
DROP TABLE IF EXISTS orders;
CREATE EXTENSION fraiseql_observers;
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, status text NOT NULL, total numeric NOT NULL);
SELECT observer_create(
    name       => 'order_shipped',
    table_name => 'orders',
    events     => ARRAY['INSERT', 'UPDATE'],
    condition  => '\$.new.status == "shipped" && \$.old.status != "shipped"',
    action     => '{"type": "webhook", "url": "http://$SINK_ADDR/hooks/order-shipped"}'
) AS observer_id;
SQL
psql -c "SELECT name, table_name, events, condition FROM observer_list()"

step "write orders: 5 created, 3 of them shipped"
psql <<'SQL'
INSERT INTO orders VALUES (1, 'ada', 'new', 42.00), (2, 'grace', 'new', 17.50), (3, 'edsger', 'new', 99.90),
                          (4, 'barbara', 'new', 5.00), (5, 'ken', 'new', 12.00);
BEGIN;
UPDATE orders SET status = 'shipped' WHERE id IN (1, 3);
COMMIT;
UPDATE orders SET status = 'shipped' WHERE id = 5;
UPDATE orders SET total = 13.00 WHERE id = 5;  -- already shipped: no second webhook
SQL

step "wait for the deliveries"
for _ in $(seq 1 150); do
  done_jobs="$(command psql -X -A -t -c "SELECT observer_status()->'jobs'->>'completed'")"
  [ "$done_jobs" = 3 ] && break
  sleep 0.2
done
sleep 0.3

step "the sink received $(wc -l <"$RUN/received.jsonl") webhooks:"
if command -v jq >/dev/null; then jq -c . "$RUN/received.jsonl"; else cat "$RUN/received.jsonl"; fi

step "SELECT observer_status();"
psql -c "SELECT jsonb_pretty(observer_status()) AS observer_status"

[ "$done_jobs" = 3 ] || { tail -n 30 "$RUN/worker.log" >&2; die "expected 3 delivered webhooks, status shows ${done_jobs:-none}"; }
note "demo cluster still running: psql -h $PGHOST -p $PORT -U postgres   (stop: scripts/stop-demo.sh)"
note "worker log: $RUN/worker.log"
