#!/usr/bin/env bash
# The console's pages at 10 million finished jobs, one command: `benches/console.sh`.
#
# Starts its own cluster (.cluster/benchc, fsync on, the background dispatcher off: nothing runs
# but the measured calls), then loads a history with set-based SQL (generate_series, indexes
# dropped during the load and rebuilt from their own definitions after it):
#   JOBS finished jobs of three observers: two webhook observers of one table (`orders_webhook`,
#   `orders_audit`: two jobs per captured event, 2 * JOBS / 5 events) and a job queue (`emails`,
#   JOBS / 5 enqueued jobs), spread over the last 7 days; 1 in DEAD_EVERY of them dead (4 failed
#   attempts and a dead one, four kinds of error), 1 in 20 of the others delivered on a second
#   attempt after a 503, the rest on the first; each attempt with the words observer_search()
#   finds (observer.words, as the queue functions compute them).
# Then it times what each console page runs, as median and p95 over REQUESTS calls (pgbench, one
# session, after WARMUP (2) not counted; ids picked at random for each call):
#   sql    the public SQL functions the pages call (observer_debug_event, observer_dlq_list with
#          and without filters, observer_dlq_show, observer_search with and without a query and
#          filters, observer_status, observer_list, and the console's own functions in
#          sql/console.sql when the extension has them)
#   http   whole pages over HTTP with curl (`fraiseql-observers console`, bearer token), when the
#          worker binary has the console
# Prints Markdown tables.
#
# Settings (environment): JOBS (default 10000000), DEAD_EVERY (97: about 1%), REQUESTS (50),
# RUNS (the parts to run, default "sql http"), CALLS (an extended regular expression: only the SQL
# calls whose label matches it, default all), WARMUP (calls not counted before each, 2),
# CONSOLE_SKIP_SETUP=1 (skip scripts/setup.sh, which
# builds and installs the extension), CONSOLE_SKIP_BUILD=1 (use the release worker in
# $CARGO_TARGET_DIR, or target/, as it is), REUSE=1 (keep the cluster when this script ends and use it again when it holds the
# same history: the load takes most of the time; the functions are those of the installed
# extension when the history was loaded).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

JOBS="${JOBS:-10000000}"
DEAD_EVERY="${DEAD_EVERY:-97}"
REQUESTS="${REQUESTS:-50}"
RUNS="${RUNS:-sql http}"
CALLS="${CALLS:-.}"
WARMUP="${WARMUP:-2}"
REUSE="${REUSE:-0}"
PORT="$(pgrx_toml_get bench_console_port)"
HTTP_PORT=$((PORT + 1))
NAME=benchc

[ "$(( JOBS % 5 ))" = 0 ] || die "JOBS must be a multiple of 5 (two events make four observer jobs and one enqueued job)"
[ "${CONSOLE_SKIP_SETUP:-0}" = 1 ] || "$ROOT/scripts/setup.sh" >/dev/null
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
PGBENCH="$PG_BINDIR/pgbench"
work="$(mktemp -d)"
console_pid=""
cleanup() {
  [ -z "$console_pid" ] || kill "$console_pid" 2>/dev/null || true
  rm -rf "$work"
  [ "$REUSE" = 1 ] || cluster_stop "$NAME"
}
trap cleanup EXIT

# loaded: the history the cluster holds ("" when none).
loaded() {
  command psql -X -A -t -c "SELECT jobs || ' ' || dead_every FROM bench_history WHERE complete" 2>/dev/null || true
}

if [ "$REUSE" = 1 ] && [ -f "$ROOT/.cluster/$NAME/data/PG_VERSION" ]; then
  cluster_start "$NAME" "$PORT"
  export PGHOST="$ROOT/.cluster/$NAME/run" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
fi
if [ "$REUSE" != 1 ] || [ "$(loaded)" != "$JOBS $DEAD_EVERY" ]; then
  bench_cluster "$NAME" "$PORT" <<CONF
fraiseql_observers.enabled = off
maintenance_work_mem = '1GB'
CONF
  t0=$SECONDS
  step "loading $JOBS finished jobs (1 in $DEAD_EVERY dead)"
  psql -v jobs="$JOBS" -v dead_every="$DEAD_EVERY" -f "$ROOT/benches/console/load.sql"
  note "loaded in $((SECONDS - t0)) s: $(command psql -X -A -t -c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
fi

# Figures of the history, for the random ids of the calls.
read -r EVENTS DEAD FIRST_DEAD < <(command psql -X -A -t -F ' ' -c \
  "SELECT (SELECT count(*) FROM observer.event_log), (SELECT count(*) FROM observer.jobs WHERE state = 'dead'),
          (SELECT min(id) FROM observer.jobs WHERE state = 'dead')")
note "history: $EVENTS events, $DEAD dead jobs; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# stats FILE: "median p95" in ms of the latencies (µs, third field) of a pgbench log.
stats() {
  sort -n -k3,3 "$1" | awk '{ v[NR] = $3 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    p = v[int(NR * 0.95 + 0.999999)]
    printf "%.1f %.1f\n", m / 1000, p / 1000 }'
}

results="$work/results.md"
# time_sql LABEL SQL: median and p95 of REQUESTS runs of the pgbench script SQL (its \set lines may
# use :events, :dead, :first_dead, :dead_every).
time_sql() {
  local label="$1" file="$work/q.sql" m p
  [[ "$label" =~ $CALLS ]] || return 0
  printf '%s\n' "$2" >"$file"
  local vars=(-D events="$EVENTS" -D dead="$DEAD" -D first_dead="$FIRST_DEAD" -D dead_every="$DEAD_EVERY")
  [ "$WARMUP" = 0 ] || "$PGBENCH" -n -c 1 -t "$WARMUP" "${vars[@]}" -f "$file" >/dev/null
  rm -f "$work"/log.*
  (cd "$work" && "$PGBENCH" -n -c 1 -t "$REQUESTS" "${vars[@]}" -f "$file" -l --log-prefix=log >/dev/null)
  read -r m p < <(stats "$(ls "$work"/log.*)")
  printf '| %s | %s | %s |\n' "$label" "$m" "$p" >>"$results"
  note "$label: median $m ms, p95 $p ms"
}

# A random event of the history and a random dead job (every DEAD_EVERY-th job id is dead).
EVENT='\set k random(1, :events)
\set event :k * 1024'
DEAD_JOB='\set d random(0, :dead - 1)
\set job :first_dead + :d * :dead_every'

run_sql() {
  step "SQL functions ($REQUESTS calls each)"
  {
    echo
    echo "### The console's SQL at $JOBS finished jobs ($DEAD dead, $EVENTS events): ms per call, $REQUESTS calls"
    echo
    echo "| call | median ms | p95 ms |"
    echo "|---|---|---|"
  } >>"$results"
  time_sql "observer_debug_event(random event)" "$EVENT
SELECT observer_debug_event(:event);"
  time_sql "observer_debug_event(event of a random dead job)" "$DEAD_JOB
SELECT observer_debug_event(j.event_id) FROM observer.jobs j WHERE j.id = (SELECT coalesce(max(x.id), :job) FROM observer.jobs x WHERE x.id <= :job AND x.event_id IS NOT NULL AND x.state = 'dead');"
  time_sql "observer_dlq_list() (first page, 100 rows)" "SELECT * FROM observer_dlq_list();"
  time_sql "observer_dlq_list(observer => 'emails')" "SELECT * FROM observer_dlq_list(observer => 'emails');"
  time_sql "observer_dlq_list(error_like => '%timed out%')" "SELECT * FROM observer_dlq_list(error_like => '%timed out%');"
  time_sql "observer_dlq_list(since, until: one day, 3 days ago)" \
    "SELECT * FROM observer_dlq_list(since => now() - interval '4 days', until => now() - interval '3 days');"
  time_sql "observer_dlq_list(observer, error_like, since)" \
    "SELECT * FROM observer_dlq_list(observer => 'orders_audit', error_like => '%410%', since => now() - interval '2 days');"
  time_sql "observer_dlq_show(random dead job)" "$DEAD_JOB
SELECT observer_dlq_show(:job);"
  time_sql "observer_dlq_match(observer => 'emails') (the purge page's count)" \
    "SELECT count(*) FROM observer_dlq_match(observer => 'emails');"
  time_sql "observer_dlq_retry(job_ids => 10 dead jobs) (rolled back)" "\\set d random(0, :dead - 11)
\\set job :first_dead + :d * :dead_every
BEGIN;
SELECT observer_dlq_retry(job_ids => ARRAY(SELECT :job + k * :dead_every FROM generate_series(0, 9) k)::bigint[]);
ROLLBACK;"
  time_sql "observer_search(NULL) (newest 100 attempts)" "SELECT * FROM observer_search(NULL);"
  time_sql "observer_search('customer_4711')" "SELECT * FROM observer_search('customer_4711');"
  time_sql "observer_search('\"timed out\"')" "SELECT * FROM observer_search('\"timed out\"');"
  time_sql "observer_search('paid') (a quarter of all attempts match)" "SELECT * FROM observer_search('paid');"
  time_sql "observer_search(NULL, outcome => 'dead')" "SELECT * FROM observer_search(NULL, outcome => 'dead');"
  time_sql "observer_search(NULL, observer => 'emails', since: 1 day ago)" \
    "SELECT * FROM observer_search(NULL, observer => 'emails', since => now() - interval '1 day');"
  time_sql "observer_search('customer_4711', 'orders_audit', 'completed', since: 7 days ago)" \
    "SELECT * FROM observer_search('customer_4711', 'orders_audit', 'completed', now() - interval '7 days');"
  time_sql "observer_status()" "SELECT observer_status();"
  time_sql "observer_list()" "SELECT * FROM observer_list();"
  console_sql
}

# console_sql: the console's own functions (sql/console.sql), each called as its page calls it.
console_sql() {
  local f
  for f in $(command psql -X -A -t -c "SELECT p.proname FROM pg_proc p
      WHERE p.proname LIKE 'observer\_console\_%' AND p.pronargdefaults = p.pronargs ORDER BY 1"); do
    time_sql "$f()" "SELECT * FROM $f();"
  done
}

run_http() {
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/fraiseql-observers"
  if [ "${CONSOLE_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -q -p fraiseql-observers) || die "worker build failed"
  fi
  if ! "$bin" console --help >/dev/null 2>&1; then
    note "this worker has no console subcommand: HTTP pages not measured"
    return
  fi
  step "HTTP pages ($REQUESTS requests each)"
  export CONSOLE_BENCH_TOKEN="bench-$RANDOM-$RANDOM-$RANDOM-$RANDOM"
  cat >"$work/console.toml" <<TOML
database_url = "postgres://postgres@127.0.0.1:$PORT/postgres"

[console]
listen = "127.0.0.1:$HTTP_PORT"

[console.operators]
bench = "env:CONSOLE_BENCH_TOKEN"
TOML
  "$bin" console --config "$work/console.toml" >"$work/console.log" 2>&1 &
  console_pid=$!
  local i
  for i in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$console_pid" 2>/dev/null || { cat "$work/console.log" >&2; die "the console did not start"; }
    sleep 0.1
  done
  {
    echo
    echo "### Console pages over HTTP at $JOBS finished jobs: ms per page (curl, time to the last byte), $REQUESTS requests"
    echo
    echo "| page | median ms | p95 ms | bytes |"
    echo "|---|---|---|---|"
  } >>"$results"
  local dead_job event
  dead_job="$(command psql -X -A -t -c "SELECT max(id) FROM observer.jobs WHERE state = 'dead'")"
  event="$(command psql -X -A -t -c "SELECT event_id FROM observer.jobs WHERE state = 'dead' AND event_id IS NOT NULL ORDER BY id DESC LIMIT 1")"
  time_page "/" "/"
  time_page "/observers" "/observers"
  time_page "/observers/orders_webhook" "/observers/orders_webhook"
  time_page "/events (no filter)" "/events"
  time_page "/events?q=customer_4711" "/events?q=customer_4711"
  time_page "/events?q=timed+out&outcome=dead" "/events?q=timed+out&outcome=dead"
  time_page "/events?observer=emails&outcome=completed" "/events?observer=emails&outcome=completed"
  time_page "/events/<id> (a delivered event)" "/events/$(( (EVENTS / 2) * 1024 ))"
  time_page "/events/<id> (a dead job's event)" "/events/$event"
  time_page "/dlq" "/dlq"
  time_page "/dlq?observer=emails" "/dlq?observer=emails"
  time_page "/dlq?error=timed+out" "/dlq?error=timed+out"
  time_page "/dlq/<job_id>" "/dlq/$dead_job"
}

# time_page LABEL PATH: median and p95 of REQUESTS GETs of PATH (after 3 not counted).
time_page() {
  local label="$1" url="http://127.0.0.1:$HTTP_PORT$2" i code size
  for i in 1 2 3; do curl -sS -o /dev/null -H "Authorization: Bearer $CONSOLE_BENCH_TOKEN" "$url"; done
  : >"$work/page.times"
  for i in $(seq 1 "$REQUESTS"); do
    read -r code size t < <(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
      -H "Authorization: Bearer $CONSOLE_BENCH_TOKEN" "$url")
    [ "$code" = 200 ] || die "GET $2 answered $code"
    # As a pgbench log line: latency in µs in the third field.
    echo "0 $i $(echo "$t * 1000000" | bc -l | cut -d. -f1)" >>"$work/page.times"
  done
  read -r m p < <(stats "$work/page.times")
  printf '| %s | %s | %s | %s |\n' "$label" "$m" "$p" "$size" >>"$results"
  note "$label: median $m ms, p95 $p ms ($size bytes)"
}

: >"$results"
for run in $RUNS; do
  case "$run" in
    sql) run_sql ;;
    http) run_http ;;
    *) die "unknown run '$run' (RUNS: sql http)" ;;
  esac
done
cat "$results"
