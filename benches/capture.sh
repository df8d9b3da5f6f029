#!/usr/bin/env bash
# Capture overhead and dispatch throughput, one command: `benches/capture.sh`.
#
# Starts its own cluster (fsync on, the extension preloaded, background dispatch switched off so
# only capture is measured), then runs pgbench with 8 clients against three identical tables in
# the same run, interleaved round-robin:
#   plain     no trigger
#   naive     a plpgsql trigger copying to_jsonb(NEW) into a log table (row-level for single-row
#             INSERTs, statement-level with a transition table for 100-row INSERTs)
#   observed  a fraiseql_observers observer on the table
# in two regimes: synchronous_commit = off (CPU-bound: the honest measure of trigger cost) and on
# (commit-latency bound). Then it measures dispatch throughput on a backlog of captured events.
# Prints a Markdown table: median TPS over the repetitions, the min-max spread, and each
# trigger's TPS as a percentage of plain.
#
# Settings (environment): REPS (default 3), DURATION seconds per pgbench run (default 10),
# CLIENTS (default 8), BACKLOG events for the dispatch measurement (default 200000), SYNCS (the
# synchronous_commit settings to measure, default "off on"), ROWS (the rows per INSERT to measure,
# default "1 100"), EXTRA_SQL (SQL run once after the set-up, for experiments such as
# `EXTRA_SQL='DROP INDEX observer.event_log_tx' SYNCS=on ROWS=1`: what an event log without that
# index would cost; not a supported configuration), DISPATCH (default 1; 0 skips the dispatch
# measurement).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

REPS="${REPS:-3}"
DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-8}"
BACKLOG="${BACKLOG:-200000}"
PORT="$(pgrx_toml_get bench_port)"

"$ROOT/scripts/setup.sh" >/dev/null
bench_cluster bench "$PORT" <<CONF
fraiseql_observers.enabled = off
CONF
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
PGBENCH="$PG_BINDIR/pgbench"
work="$(mktemp -d)"
trap 'rm -rf "$work"; cluster_stop bench' EXIT

psql <<'SQL'
CREATE EXTENSION fraiseql_observers;
CREATE TABLE t_plain    (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL, c timestamptz NOT NULL DEFAULT now());
CREATE TABLE t_naive    (LIKE t_plain INCLUDING ALL);
CREATE TABLE t_naive100 (LIKE t_plain INCLUDING ALL);
CREATE TABLE t_observed (LIKE t_plain INCLUDING ALL);
CREATE TABLE naive_log (id bigserial PRIMARY KEY, tx xid8 NOT NULL DEFAULT pg_current_xact_id(), data jsonb NOT NULL);
CREATE FUNCTION naive_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO naive_log (data) VALUES (to_jsonb(NEW)); RETURN NULL; END $$;
CREATE FUNCTION naive_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO naive_log (data) SELECT to_jsonb(n) FROM new_rows n; RETURN NULL; END $$;
CREATE TRIGGER naive AFTER INSERT ON t_naive FOR EACH ROW EXECUTE FUNCTION naive_row();
CREATE TRIGGER naive AFTER INSERT ON t_naive100 REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION naive_stmt();
SELECT FROM observer_create('bench', 't_observed', ARRAY['INSERT'], NULL, '{"type": "webhook", "url": "http://127.0.0.1:9/"}');
SQL
SYNCS="${SYNCS:-off on}"
ROWS="${ROWS:-1 100}"
[ -z "${EXTRA_SQL:-}" ] || { note "EXTRA_SQL: $EXTRA_SQL"; psql -c "$EXTRA_SQL"; }

reset_tables() {
  psql -c "TRUNCATE t_plain, t_naive, t_naive100, t_observed, naive_log; TRUNCATE observer.event_log, observer.jobs, observer.skipped CASCADE; CHECKPOINT;" >/dev/null
}

# run_one TABLE ROWS SYNC -> TPS
run_one() {
  local table="$1" rows="$2" sync="$3" script="$work/$1-$2.sql"
  if [ "$rows" = 1 ]; then
    echo "INSERT INTO $table (a, b) VALUES ((random() * 1000)::int, 'a short text payload of the row');" >"$script"
  else
    echo "INSERT INTO $table (a, b) SELECT i, 'a short text payload of the row' FROM generate_series(1, $rows) i;" >"$script"
  fi
  PGOPTIONS="-c synchronous_commit=$sync" "$PGBENCH" -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$script" 2>/dev/null \
    | sed -n -E 's/^tps = ([0-9.]+).*/\1/p'
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
spread() { sort -n | awk 'NR==1{min=$1} {max=$1} END {printf "%.0f-%.0f", min, max}'; }

results="$work/results.tsv"
: >"$results"
for sync in $SYNCS; do
  for rows in $ROWS; do
    naive=t_naive; [ "$rows" = 100 ] && naive=t_naive100
    for rep in $(seq 1 "$REPS"); do
      for table in t_plain "$naive" t_observed; do
        reset_tables
        tps="$(run_one "$table" "$rows" "$sync")"
        printf '%s\t%s\t%s\t%s\n' "$sync" "$rows" "${table/t_naive100/t_naive}" "$tps" >>"$results"
        note "synchronous_commit=$sync rows=$rows $table rep $rep: $tps tps"
      done
    done
  done
done

echo
echo "### Capture overhead ($CLIENTS clients, ${DURATION}s runs, $REPS repetitions, fsync on)"
echo
echo "| synchronous_commit | rows/INSERT | plain TPS | naive TPS (% of plain) | observed TPS (% of plain) | spread plain / naive / observed |"
echo "|---|---|---|---|---|---|"
for sync in $SYNCS; do
  for rows in $ROWS; do
    get() { awk -F'\t' -v s="$sync" -v r="$rows" -v t="$1" '$1==s && $2==r && $3==t {print $4}' "$results"; }
    p="$(get t_plain | median)"; n="$(get t_naive | median)"; o="$(get t_observed | median)"
    printf '| %s | %s | %.0f | %.0f (%.0f%%) | %.0f (%.0f%%) | %s / %s / %s |\n' "$sync" "$rows" "$p" "$n" \
      "$(echo "100*$n/$p" | bc -l)" "$o" "$(echo "100*$o/$p" | bc -l)" \
      "$(get t_plain | spread)" "$(get t_naive | spread)" "$(get t_observed | spread)"
  done
done

# Dispatch throughput: a backlog of BACKLOG events, drained by observer_dispatch(10000) rounds, in
# two shapes: captured by one big INSERT (batches of 1024 rows per event log row) and by BACKLOG
# single-row INSERT statements (one event log row each).
dispatch_rate() {
  psql -c "VACUUM ANALYZE observer.event_log" >/dev/null
  local start end jobs
  start=$(date +%s.%N)
  while [ "$(command psql -X -A -t -c "SELECT observer_dispatch(10000, 'bench')")" != 0 ]; do :; done
  end=$(date +%s.%N)
  jobs="$(command psql -X -A -t -c "SELECT count(*) FROM observer.jobs")"
  printf '| %s | %s | %s | %.2f | **%.0f** |\n' "$1" "$BACKLOG" "$jobs" "$(echo "$end - $start" | bc -l)" \
    "$(echo "$BACKLOG / ($end - $start)" | bc -l)"
}
[ "${DISPATCH:-1}" = 1 ] || exit 0
echo
echo "### Dispatch throughput (one observer, no condition, rounds of 10,000)"
echo
echo "| backlog captured by | events | jobs | seconds | events/s |"
echo "|---|---|---|---|---|"
reset_tables
psql -c "INSERT INTO t_observed (a, b) SELECT i, 'a short text payload of the row' FROM generate_series(1, $BACKLOG) i" >/dev/null
dispatch_rate "one $BACKLOG-row INSERT"
reset_tables
psql -c "DO \$\$ BEGIN FOR i IN 1..$BACKLOG LOOP INSERT INTO t_observed (a, b) VALUES (i, 'a short text payload of the row'); END LOOP; END \$\$" >/dev/null
dispatch_rate "$BACKLOG single-row INSERTs"
