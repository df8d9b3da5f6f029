#!/usr/bin/env bash
# Job queue throughput, one command: `benches/queue.sh`.
#
# Starts its own cluster (fsync on, synchronous_commit on: the defaults) and measures, for
# fraiseql_observers' queue (observer_enqueue_many / observer_claim / observer_complete) and for
# the peers installed from npm in the same run, on the same cluster:
#   enqueue   JOBS jobs added in batches of 1,000 by 4 sessions
#   process   the JOBS queued jobs claimed and completed with a no-op action by WORKERS sessions
#             (ours: claim 500, complete 500 per transaction)
# after a warm-up pass, then ours again with HISTORY finished jobs kept in the table (target:
# within 10%).
# Prints a Markdown table. Settings (environment): JOBS (default 200000), WORKERS (default 4),
# HISTORY (default 10000000; 0 skips that step), PEERS (default 1; 0 skips the npm peers),
# PEER_WORKERS (default 2), AUDIT_SEARCH (default on: the audit trail's words for each attempt,
# as shipped; off measures the queue without them), CLAIM_COMMIT (default off: claims commit
# without waiting for the WAL flush, as the worker's claiming session does; on: synchronous),
# EXTRA_SQL (SQL run once after the set-up, for experiments such as
# `EXTRA_SQL='DROP INDEX observer.attempts_finished'`: the queue without that index; not a
# supported configuration).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

JOBS="${JOBS:-200000}"
WORKERS="${WORKERS:-4}"
HISTORY="${HISTORY:-10000000}"
PEERS="${PEERS:-1}"
# Workers for the peers: their best count on this machine kind (2 cores), found by a sweep of 1, 2
# and 4 (docs/benchmarks.md).
PEER_WORKERS="${PEER_WORKERS:-2}"
AUDIT_SEARCH="${AUDIT_SEARCH:-on}"
CLAIM_COMMIT="${CLAIM_COMMIT:-off}"
PORT="$(pgrx_toml_get bench_queue_port)"

"$ROOT/scripts/setup.sh" >/dev/null
bench_cluster benchq "$PORT" <<CONF
fraiseql_observers.enabled = off
fraiseql_observers.audit_search = $AUDIT_SEARCH
max_connections = 200
CONF
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
PGBENCH="$PG_BINDIR/pgbench"
work="$(mktemp -d)"
trap 'rm -rf "$work"; cluster_stop benchq' EXIT

psql <<'SQL'
CREATE EXTENSION fraiseql_observers;
SELECT FROM observer_create('bench', NULL, action => '{"type": "webhook", "url": "http://127.0.0.1:9/"}');
SQL
[ -z "${EXTRA_SQL:-}" ] || { note "EXTRA_SQL: $EXTRA_SQL"; psql -c "$EXTRA_SQL"; }

now() { date +%s.%N; }
rate() { echo "$1 / ($3 - $2)" | bc -l; }

# ours_enqueue: JOBS jobs in batches of 1,000 from 4 sessions; prints jobs/s.
ours_enqueue() {
  echo "SELECT count(*) FROM observer_enqueue_many('bench', ARRAY(SELECT '{\"n\": 1}'::jsonb FROM generate_series(1, 1000)));" >"$work/enq.sql"
  local start end
  start=$(now)
  "$PGBENCH" -n -c 4 -j 2 -t $((JOBS / 4000)) -f "$work/enq.sql" >/dev/null
  end=$(now)
  rate "$JOBS" "$start" "$end"
}

# ours_process: WORKERS sessions claim and complete until the queue is empty; prints jobs/s.
ours_process() {
  # As the worker does: its claiming session commits without waiting for the WAL flush, its
  # completions are synchronous (docs/architecture.md#worker). CLAIM_COMMIT=on measures both
  # synchronous.
  cat >"$work/proc.sql" <<PGB
SET synchronous_commit = $CLAIM_COMMIT;
PGB
  cat >>"$work/proc.sql" <<'PGB'
SELECT coalesce(string_agg(job_id::text, ','), '') AS ids, coalesce(string_agg(token::text, ','), '') AS toks FROM observer_claim('bench-:client_id', 500, '60 seconds') \gset
SET synchronous_commit = on;
SELECT count(*) FROM observer_complete(ARRAY[:ids]::bigint[], ARRAY[:toks]::bigint[]);
PGB
  local start end done
  start=$(now)
  "$PGBENCH" -n -c "$WORKERS" -j 2 -t $((JOBS / 500 / WORKERS + 2)) -f "$work/proc.sql" >/dev/null
  end=$(now)
  done="$(command psql -X -A -t -c "SELECT count(*) FROM observer.jobs WHERE state = 'completed' AND observer_id = 1 AND created_at > now() - interval '1 hour'")"
  left="$(command psql -X -A -t -c "SELECT count(*) FROM observer.jobs WHERE state <> 'completed'")"
  [ "$left" = 0 ] || echo "warning: $left jobs left unfinished" >&2
  rate "$JOBS" "$start" "$end"
}

results="$work/results.md"
row() { printf '| %s | %s | %.0f | %.0f |\n' "$1" "$2" "$3" "$4" >>"$results"; }

# Warm-up (not reported): the first pass over a fresh cluster pays for cold caches and plans.
JOBS_SAVED="$JOBS"; JOBS=20000; ours_enqueue >/dev/null; ours_process >/dev/null; JOBS="$JOBS_SAVED"
psql -c "DELETE FROM observer.attempts" -c "DELETE FROM observer.jobs" -c "VACUUM ANALYZE observer.jobs" -c "CHECKPOINT" >/dev/null
e=$(ours_enqueue); p=$(ours_process)
row "fraiseql_observers" "empty history" "$e" "$p"
note "ours: enqueue $e jobs/s, process $p jobs/s"

# The peers run before the history is added, on the same (warm) cluster.
if [ "$PEERS" = 1 ]; then
  "$ROOT/benches/peers/run.sh" "$JOBS" "$PEER_WORKERS" >>"$results"
fi

if [ "$HISTORY" -gt 0 ]; then
  note "adding $HISTORY finished jobs to the history"
  psql <<SQL
INSERT INTO observer.jobs (observer_id, payload, idempotency_key, state, attempt, finished_at, created_at)
SELECT 1, '{"n": 1}', 'hist_' || i, 'completed', 1, now() - interval '1 day', now() - interval '1 day'
FROM generate_series(1, $HISTORY) i;
VACUUM ANALYZE observer.jobs;
CHECKPOINT;
SQL
  e=$(ours_enqueue); p=$(ours_process)
  row "fraiseql_observers" "$HISTORY finished jobs in the table" "$e" "$p"
  note "ours with history: enqueue $e jobs/s, process $p jobs/s"
fi

echo
echo "### Job queue throughput ($JOBS no-op jobs, $WORKERS workers, fsync on, synchronous_commit on; ours claims with synchronous_commit = $CLAIM_COMMIT)"
echo
echo "| queue | setting | enqueue jobs/s | process (claim + complete) jobs/s |"
echo "|---|---|---|---|"
cat "$results"
