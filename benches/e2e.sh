#!/usr/bin/env bash
# End-to-end delivery, one command: `benches/e2e.sh`.
#
# Starts its own cluster (fsync on, the extension preloaded: the background dispatcher runs), the
# release worker `fraiseql-observers run` and a local HTTP sink (`bench-sink`, answers 200 at once,
# records when each webhook arrived), one observer on INSERT into a table whose rows carry their
# insert time (`ts_us`, clock_timestamp() in microseconds). Then, REPS times, interleaved:
#   throughput   EVENTS rows committed as fast as possible as INSERTs of ROWS rows (CLIENTS
#                sessions), and SINGLE_EVENTS as single-row INSERT transactions (SINGLE_CLIENTS
#                sessions); events/s = events / (last 2xx at the sink - start of the first commit)
#   metrics      the ROWS-row throughput run again with the worker's Prometheus endpoint on,
#                scraped once a second
#   no search    the ROWS-row throughput run again with fraiseql_observers.audit_search = off (on
#                by default: each completion also indexes the delivered row's words in a GIN index)
#   latency      RATE single-row INSERT transactions per second for LATENCY_SECONDS (pgbench
#                --rate); insert -> delivery latency of every event, as the sink measures it; on
#                fresh tables, and again with HISTORY dispatched events kept in the event log
#                (what retention keeps: 300,000 is 5 minutes at 1,000 events/s; retention is 7 days)
#   defaults     (DEFAULTS=1, once) the ROWS-row throughput run (DEFAULTS_EVENTS events) and the
#                latency run with the worker's shipped defaults instead of WORKER_SETTINGS
#   batching     (BATCH=N) the observer sends its events in batches of up to N per request
#                (`"batch": {"max_events": N, "max_wait_ms": BATCH_WAIT_MS}` in its webhook action;
#                unset: one event per request, as before); the sink counts each event of an array
# A fresh worker runs each measurement; its VmHWM and VmRSS are read before it is stopped.
# Prints a Markdown table: medians over the repetitions and the min-max spread.
#
# Settings (environment): REPS (default 3), EVENTS (200000), ROWS (100), CLIENTS (4),
# SINGLE_EVENTS (100000), SINGLE_CLIENTS (8), RATE (1000), LATENCY_SECONDS (20), HISTORY (300000;
# 0 skips that run), DEFAULTS (1), DEFAULTS_EVENTS (50000), BATCH (unset: no batching; 1 to
# 1000), BATCH_WAIT_MS (20), RUNS (the measurements of each repetition, a subset of "multi metrics
# nosearch single latency history", default all), TIMEOUT seconds to wait for the
# deliveries of one run (300), WORKER_SETTINGS (the worker's settings as FRAISEQL_OBSERVERS_*
# variables, see below), E2E_SKIP_SETUP=1 (skip scripts/setup.sh), E2E_SKIP_BUILD=1 (use the
# release binaries in target/release as they are: runs compared side by side use one build), QUICK=1 (REPS=1
# EVENTS=SINGLE_EVENTS=20000 LATENCY_SECONDS=5 HISTORY=20000 DEFAULTS=0: about 3 min).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

if [ "${QUICK:-0}" = 1 ]; then
  REPS="${REPS:-1}" EVENTS="${EVENTS:-20000}" SINGLE_EVENTS="${SINGLE_EVENTS:-20000}" LATENCY_SECONDS="${LATENCY_SECONDS:-5}" HISTORY="${HISTORY:-20000}" DEFAULTS="${DEFAULTS:-0}"
fi
REPS="${REPS:-3}"
EVENTS="${EVENTS:-200000}"
ROWS="${ROWS:-100}"
CLIENTS="${CLIENTS:-4}"
SINGLE_EVENTS="${SINGLE_EVENTS:-100000}"
SINGLE_CLIENTS="${SINGLE_CLIENTS:-8}"
RATE="${RATE:-1000}"
LATENCY_SECONDS="${LATENCY_SECONDS:-20}"
HISTORY="${HISTORY:-300000}"
DEFAULTS="${DEFAULTS:-1}"
DEFAULTS_EVENTS="${DEFAULTS_EVENTS:-50000}"
BATCH="${BATCH:-}"
BATCH_WAIT_MS="${BATCH_WAIT_MS:-20}"
RUNS="${RUNS:-multi metrics nosearch single latency history}"
TIMEOUT="${TIMEOUT:-300}"
# The worker's settings for the measured runs. The shipped defaults (concurrency 64, at most 16
# deliveries in flight per endpoint) are made for many endpoints: with a single endpoint, every job
# claimed beyond 16 in flight is snoozed back to the queue for 500 ms (see the DEFAULTS rows). Here
# one endpoint may use all of `concurrency`, and claims are as large as the free slots.
WORKER_SETTINGS="${WORKER_SETTINGS:-FRAISEQL_OBSERVERS_CONCURRENCY=256 FRAISEQL_OBSERVERS_BATCH_SIZE=256 FRAISEQL_OBSERVERS_HTTP__MAX_IN_FLIGHT_PER_ENDPOINT=256}"
PORT="$(pgrx_toml_get bench_e2e_port)"
SINK_ADDR="127.0.0.1:$((PORT + 1))"
METRICS_ADDR="127.0.0.1:$((PORT + 2))"
(( EVENTS % (ROWS * CLIENTS) == 0 && DEFAULTS_EVENTS % (ROWS * CLIENTS) == 0 && SINGLE_EVENTS % SINGLE_CLIENTS == 0 )) \
  || die "EVENTS and DEFAULTS_EVENTS must be multiples of ROWS * CLIENTS ($ROWS * $CLIENTS), SINGLE_EVENTS of SINGLE_CLIENTS ($SINGLE_CLIENTS)"

[ "${E2E_SKIP_SETUP:-0}" = 1 ] || "$ROOT/scripts/setup.sh" >/dev/null
if [ "${E2E_SKIP_BUILD:-0}" = 1 ]; then
  step "use the release worker and benchmark sink already built (E2E_SKIP_BUILD=1)"
else
  step "build the worker and the benchmark sink (release)"
  (cd "$ROOT" && cargo build --quiet --release -p fraiseql-observers -p fraiseql-observers-tests --bins)
fi
BIN="$ROOT/target/release"

step "start the benchmark cluster"
bench_cluster benche2e "$PORT" </dev/null
DB_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
PGBENCH="$PG_BINDIR/pgbench"
work="$(mktemp -d)"
pids=()
worker_pid=""
cleanup() {
  for p in "${pids[@]}" $worker_pid; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  cluster_stop benche2e
  rm -rf "$work"
}
trap cleanup EXIT

batch_option=""
[ -z "$BATCH" ] || batch_option=", \"batch\": {\"max_events\": $BATCH, \"max_wait_ms\": $BATCH_WAIT_MS}"
psql >/dev/null <<SQL
CREATE EXTENSION fraiseql_observers;
CREATE TABLE e2e (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL,
                  ts_us bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint);
SELECT FROM observer_create('e2e', 'e2e', ARRAY['INSERT'], NULL, '{"type": "webhook", "url": "http://$SINK_ADDR/hook"$batch_option}');
SQL
echo "INSERT INTO e2e (a, b) SELECT i, 'a short text payload of the row' FROM generate_series(1, $ROWS) i;" >"$work/multi.sql"
echo "INSERT INTO e2e (a, b) VALUES ((random() * 1000)::int, 'a short text payload of the row');" >"$work/single.sql"

"$BIN/bench-sink" "$SINK_ADDR" 2>"$work/sink.log" &
pids+=($!)

now_us() { date +%s%6N; }
# stats FIELD...: the sink's statistics, space-separated (empty for null).
stats() {
  curl -fsS "http://$SINK_ADDR/stats" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(*["" if d[k] is None else d[k] for k in sys.argv[1:]])' "$@"
}
sink_reset() { curl -fsS -X POST "http://$SINK_ADDR/reset" >/dev/null; }
# wait_for N: until the sink has N deliveries (or TIMEOUT); warns if it gave up.
wait_for() {
  local deadline=$((SECONDS + TIMEOUT)) n
  while n="$(stats count)" && [ "$n" -lt "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "warning: only $n of $1 deliveries after ${TIMEOUT}s" >&2; return; }
    sleep 0.2
  done
}

# reset_tables: empty the table, the event log and the queue between runs. The TRUNCATE can lose a
# deadlock against the background dispatcher's round: tried again (a failure used to end the whole
# script silently, set -e with its error sent to /dev/null).
reset_tables() {
  local try
  for try in 1 2 3 4 5; do
    if psql -c "TRUNCATE e2e; TRUNCATE observer.event_log, observer.jobs, observer.skipped CASCADE; CHECKPOINT;" 2>"$work/reset.err"; then
      sink_reset
      return
    fi
    note "emptying the tables failed ($(head -c 200 "$work/reset.err")), trying again"
    sleep 0.5
  done
  cat "$work/reset.err" >&2
  die "could not empty the tables between runs"
}

# start_worker [ENV...]: a fresh worker with WORKER_SETTINGS (unless "defaults" is given) and ENV.
start_worker() {
  local settings=($WORKER_SETTINGS)
  if [ "${1:-}" = defaults ]; then settings=(); shift; fi
  : >"$work/worker.log"
  env FRAISEQL_OBSERVERS_DATABASE_URL="$DB_URL" FRAISEQL_OBSERVERS_HTTP__ALLOW_NETWORKS=127.0.0.0/8 \
    "${settings[@]}" "$@" "$BIN/fraiseql-observers" run --worker-id e2e-bench >>"$work/worker.log" 2>&1 &
  worker_pid=$!
  for _ in $(seq 1 100); do
    grep -q "connected to the database" "$work/worker.log" && return
    kill -0 "$worker_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/worker.log" >&2
  die "the worker did not start"
}

# stop_worker: sets hwm, rss (VmHWM, VmRSS in KiB) and cpu (user + system seconds) of the worker,
# then stops it and waits for it to exit (it reports its last outcomes on the way out).
stop_worker() {
  hwm="$(awk '/^VmHWM/ {print $2}' "/proc/$worker_pid/status")"
  rss="$(awk '/^VmRSS/ {print $2}' "/proc/$worker_pid/status")"
  cpu="$(awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$worker_pid/stat")"
  kill -TERM "$worker_pid"
  wait "$worker_pid" 2>/dev/null || true
  worker_pid=""
}

results="$work/results.tsv"
: >"$results"
# record KEY VALUE
record() { printf '%s\t%s\n' "$1" "$2" >>"$results"; }

# audit_search on|off: set fraiseql_observers.audit_search for every session (reloaded).
audit_search() {
  psql -c "ALTER SYSTEM SET fraiseql_observers.audit_search = $1" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.2
}

# throughput NAME SCRIPT CLIENTS EVENTS [defaults|metrics|nosearch]: commit EVENTS events, wait for
# every delivery.
throughput() {
  local name="$1" script="$2" clients="$3" events="$4" mode="${5:-}" tx scraper="" start end first last count unique requests rate
  tx=$((events / clients))
  [ "$script" = "$work/multi.sql" ] && tx=$((events / ROWS / clients))
  reset_tables
  case "$mode" in
    defaults) start_worker defaults ;;
    metrics)
      start_worker FRAISEQL_OBSERVERS_METRICS__LISTEN="$METRICS_ADDR"
      (while sleep 1; do curl -fsS "http://$METRICS_ADDR/metrics" >/dev/null || true; done) &
      scraper=$!
      ;;
    nosearch) audit_search off; start_worker ;;
    *) start_worker ;;
  esac
  start="$(now_us)"
  "$PGBENCH" -n -c "$clients" -j 2 -t "$tx" -f "$script" >"$work/pgbench.log" 2>&1 \
    || { cat "$work/pgbench.log" >&2; die "pgbench failed"; }
  end="$(now_us)"
  wait_for "$events"
  [ -z "$scraper" ] || { kill "$scraper"; wait "$scraper" 2>/dev/null || true; }
  read -r first last count unique requests < <(stats first_us last_us count unique requests)
  stop_worker
  [ "$mode" != nosearch ] || audit_search on
  [ "$count" = "$unique" ] || note "$name: $count deliveries of $unique events (redeliveries)"
  rate="$(echo "$count / (($last - $start) / 1000000)" | bc -l)"
  record "$name" "$rate"
  record "$name.commit" "$(echo "$events / (($end - $start) / 1000000)" | bc -l)"
  record "$name.drain" "$(echo "$count / (($last - $first) / 1000000)" | bc -l)"
  record "$name.hwm" "$hwm"; record "$name.rss" "$rss"
  record "$name.cpu" "$(echo "$cpu * 1000 * 10000 / $count" | bc -l)"
  note "$name: $(printf '%.0f' "$rate") events/s commit->2xx in $requests requests (commits took $(echo "($end - $start) / 1000000" | bc -l | xargs printf '%.2f') s), worker VmHWM ${hwm} KiB, CPU ${cpu} s"
}

# history N: N events captured by single-row statements and dispatched, their jobs deleted: the
# event log as retention keeps it (dispatched events stay fraiseql_observers.event_retention).
history() {
  psql -c "DO \$\$ BEGIN FOR i IN 1..$1 LOOP INSERT INTO e2e (a, b) VALUES (i, 'history'); END LOOP; END \$\$"
  while [ "$(psql -A -t -c "SELECT observer_status()->'dispatch'->>'undispatched_events'")" != 0 ]; do sleep 0.5; done
  psql -c "TRUNCATE observer.jobs CASCADE" -c "VACUUM ANALYZE observer.event_log" -c "CHECKPOINT" 2>/dev/null
}

# latency NAME [defaults] [HISTORY]: RATE single-row INSERT transactions/s for LATENCY_SECONDS, after
# HISTORY events were kept in the event log (if given).
latency() {
  local name="$1" mode="${2:-}" done_tx p50 p90 p99 max count
  reset_tables
  [ -z "${3:-}" ] || history "$3"
  if [ "$mode" = defaults ]; then start_worker defaults; else start_worker; fi
  # Warm-up: connections to the sink, plans, caches.
  "$PGBENCH" -n -c 4 -j 2 -T 3 -R "$RATE" -f "$work/single.sql" >/dev/null 2>&1
  sleep 2
  wait_for "$(psql -A -t -c "SELECT count(*) FROM e2e WHERE b <> 'history'")"
  sink_reset
  "$PGBENCH" -n -c 4 -j 2 -T "$LATENCY_SECONDS" -R "$RATE" -f "$work/single.sql" >"$work/pgbench.log" 2>&1 \
    || { cat "$work/pgbench.log" >&2; die "pgbench failed"; }
  done_tx="$(sed -n -E 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$work/pgbench.log")"
  wait_for "$done_tx"
  read -r p50 p90 p99 max count < <(stats p50_us p90_us p99_us max_us count)
  stop_worker
  for k in p50 p90 p99 max; do record "$name.$k" "$(echo "${!k} / 1000" | bc -l)"; done
  # pgbench's latency under --rate counts from the scheduled start: take its schedule lag off.
  record "$name.commit_ms" "$(echo "$(sed -n -E 's/^latency average = ([0-9.]+) ms.*/\1/p' "$work/pgbench.log") - \
    $(sed -n -E 's/^rate limit schedule lag: avg ([0-9.]+) .*/\1/p' "$work/pgbench.log")" | bc -l)"
  record "$name.hwm" "$hwm"; record "$name.rss" "$rss"
  note "$name: $count events at $RATE/s: p50 $((p50 / 1000)) ms, p90 $((p90 / 1000)) ms, p99 $((p99 / 1000)) ms, max $((max / 1000)) ms"
}

step "measure: $REPS repetitions, $EVENTS / $SINGLE_EVENTS events per throughput run, $RATE events/s for ${LATENCY_SECONDS}s"
note "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ -z "$BATCH" ] || note "batching: up to $BATCH events per request, max_wait_ms $BATCH_WAIT_MS"
runs() { [[ " $RUNS " == *" $1 "* ]]; }
for rep in $(seq 1 "$REPS"); do
  note "repetition $rep"
  ! runs multi || throughput multi "$work/multi.sql" "$CLIENTS" "$EVENTS"
  ! runs metrics || throughput metrics "$work/multi.sql" "$CLIENTS" "$EVENTS" metrics
  ! runs nosearch || throughput nosearch "$work/multi.sql" "$CLIENTS" "$EVENTS" nosearch
  ! runs single || throughput single "$work/single.sql" "$SINGLE_CLIENTS" "$SINGLE_EVENTS"
  ! runs latency || latency latency
  ! runs history || [ "$HISTORY" = 0 ] || latency history "" "$HISTORY"
done
if [ "$DEFAULTS" = 1 ]; then
  note "shipped worker defaults"
  throughput defaults "$work/multi.sql" "$CLIENTS" "$DEFAULTS_EVENTS" defaults
  latency latency_defaults defaults
fi

get() { awk -F'\t' -v k="$1" '$1==k {print $2}' "$results"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
spread() { sort -g | awk -v f="$1" 'NR==1{min=$1} {max=$1} END {if (NR) printf f "-" f, min, max}'; }
# row LABEL KEY FORMAT TARGET [SCALE]: one table row, the median and spread of KEY.
row() {
  local label="$1" key="$2" fmt="$3" target="$4" scale="${5:-1}" values
  values="$(get "$key" | awk -v s="$scale" '{print $1 / s}')"
  [ -n "$values" ] || return 0
  printf "| %s | **$fmt** | %s | %s | %s |\n" "$label" "$(median <<<"$values")" "$(spread "$fmt" <<<"$values")" \
    "$(wc -l <<<"$values")" "$target"
}

shape="one event per request"
[ -z "$BATCH" ] || shape="batches of up to $BATCH events per request, max_wait_ms $BATCH_WAIT_MS"
echo
echo "### End-to-end delivery ($(nproc) cores, fsync on; worker: ${WORKER_SETTINGS//FRAISEQL_OBSERVERS_/}; $shape)"
echo
echo "| measurement | median | spread | runs | target |"
echo "|---|---|---|---|---|"
row "commit→2xx events/s, $EVENTS events as $ROWS-row INSERTs ($CLIENTS sessions)" multi "%.0f" "≥ 10,000"
row "… the same with /metrics on, scraped every second" metrics "%.0f" "—"
row "… the same with fraiseql_observers.audit_search = off" nosearch "%.0f" "—"
row "commit→2xx events/s, $SINGLE_EVENTS single-row INSERT transactions ($SINGLE_CLIENTS sessions)" single "%.0f" "≥ 10,000"
row "… commit rate alone, $ROWS-row INSERTs (events/s)" multi.commit "%.0f" "—"
row "… commit rate alone, single-row INSERTs (events/s)" single.commit "%.0f" "—"
row "… delivery rate, first to last 2xx, $ROWS-row INSERTs (events/s)" multi.drain "%.0f" "—"
row "insert→delivery p50 at $RATE events/s (ms)" latency.p50 "%.1f" "≤ 10"
row "insert→delivery p90 (ms)" latency.p90 "%.1f" "—"
row "insert→delivery p99 (ms)" latency.p99 "%.1f" "≤ 50"
row "insert→delivery max (ms)" latency.max "%.1f" "—"
row "… of which INSERT + commit, pgbench average (ms)" latency.commit_ms "%.1f" "—"
row "insert→delivery p50 with $HISTORY dispatched events kept (ms)" history.p50 "%.1f" "≤ 10"
row "insert→delivery p99 with $HISTORY dispatched events kept (ms)" history.p99 "%.1f" "≤ 50"
row "worker VmHWM after a $ROWS-row throughput run (MiB)" multi.hwm "%.1f" "—" 1024
row "worker VmRSS after a $ROWS-row throughput run (MiB)" multi.rss "%.1f" "—" 1024
row "worker VmHWM after a latency run (MiB)" latency.hwm "%.1f" "—" 1024
row "worker VmRSS after a latency run (MiB)" latency.rss "%.1f" "—" 1024
row "worker CPU per 10,000 events, $ROWS-row throughput run (ms)" multi.cpu "%.0f" "—"
row "worker VmHWM with /metrics on (MiB)" metrics.hwm "%.1f" "—" 1024
if [ "$DEFAULTS" = 1 ]; then
  row "shipped defaults: commit→2xx events/s, $DEFAULTS_EVENTS events as $ROWS-row INSERTs" defaults "%.0f" "≥ 10,000"
  row "shipped defaults: insert→delivery p50 at $RATE events/s (ms)" latency_defaults.p50 "%.1f" "≤ 10"
  row "shipped defaults: insert→delivery p99 (ms)" latency_defaults.p99 "%.1f" "≤ 50"
fi
