#!/usr/bin/env bash
# Per-event database cost of claiming and completing jobs, one command: `benches/claim.sh`.
#
# One session claims 100 events' jobs (observer_claim) and completes them (observer_complete with an
# endpoint, a status and a duration, as the worker reports deliveries), committing after each
# call, until the jobs of ROWS rows written by statements of 1,000 rows are done; the time inside each call
# is summed and divided by the events. Two observers in turn: `event`, a webhook without
# `batch` (a job per event), and `batch`, the same with `"batch": {"max_events": 100}` (a job per
# full batch of 100 of the statement's rows: queue.sql, "Batch jobs"). Each measured as shipped
# (the audit trail's words on) and with fraiseql_observers.audit_search off, REPS times each,
# interleaved, on a cluster of its own with the background dispatcher making the jobs. No worker,
# no HTTP: what the queue's SQL costs per event (docs/benchmarks.md, "Batching"). Settings: ROWS
# (default 20000, a multiple of 1,000), REPS (default 3).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

ROWS="${ROWS:-20000}"
REPS="${REPS:-3}"
PORT="$(pgrx_toml_get bench_claim_port)"

[ "${CLAIM_SKIP_SETUP:-0}" = 1 ] || "$ROOT/scripts/setup.sh" >/dev/null
bench_cluster benchclaim "$PORT" >&2 <<CONF
shared_preload_libraries = 'fraiseql_observers'
fraiseql_observers.dispatch_interval = 50
CONF
trap 'cluster_stop benchclaim' EXIT
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

psql >/dev/null <<'SQL'
CREATE EXTENSION fraiseql_observers;
CREATE TABLE orders (id bigserial PRIMARY KEY, account int, status text, amount numeric, note text);
SQL

# one_run KIND AUDIT_SEARCH: the observer of KIND (event, batch), fresh jobs of ROWS rows, then the
# loop; prints "claim_us complete_us" per event.
one_run() {
  local batch="" per_call=100
  [ "$1" = batch ] && batch=', "batch": {"max_events": 100}' && per_call=1
  psql -c "TRUNCATE observer.jobs, observer.attempts, observer.audit_outbox, orders" \
       -c "SELECT observer_drop(name) FROM observer.observers" \
       -c "SELECT FROM observer_create('orders_hook', 'orders',
               action => '{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/\"$batch}')" \
       -c "DO \$\$ BEGIN FOR s IN 0 .. $ROWS / 1000 - 1 LOOP
               INSERT INTO orders (account, status, amount, note)
               SELECT g % 50, 'shipped', g * 1.5, 'order note number ' || g FROM generate_series(s * 1000 + 1, s * 1000 + 1000) g;
           END LOOP; END \$\$"
  local pending=0
  for _ in $(seq 1 600); do
    pending="$(command psql -X -At -c "SELECT coalesce(sum(coalesce(cardinality(event_ids), 1)), 0) FROM observer.jobs WHERE state = 'pending'")"
    [ "$pending" -ge "$ROWS" ] && break
    sleep 0.1
  done
  [ "$pending" -ge "$ROWS" ] || die "only $pending of $ROWS jobs were dispatched"
  psql -c "VACUUM ANALYZE observer.jobs"
  command psql -X -At -v ON_ERROR_STOP=1 <<SQL
SET fraiseql_observers.audit_search = $2;
CREATE TEMP TABLE cost (claim double precision, complete double precision, jobs bigint);
INSERT INTO cost VALUES (0, 0, 0);
DO \$\$
DECLARE
    ids bigint[]; toks bigint[]; t0 timestamptz; t1 timestamptz; n int; events int;
BEGIN
    LOOP
        t0 := clock_timestamp();
        SELECT array_agg(job_id), array_agg(token),
               sum(CASE WHEN jsonb_typeof(payload) = 'array' THEN jsonb_array_length(payload) ELSE 1 END)
        INTO ids, toks, events FROM observer_claim('bench', $per_call);
        t1 := clock_timestamp();
        EXIT WHEN ids IS NULL;
        UPDATE cost SET claim = claim + extract(epoch FROM t1 - t0);
        COMMIT;
        n := cardinality(ids);
        t0 := clock_timestamp();
        PERFORM FROM observer_complete(ids, toks, array_fill('http://127.0.0.1:9'::text, ARRAY[n]),
                                       array_fill(200, ARRAY[n]), array_fill(3, ARRAY[n]));
        t1 := clock_timestamp();
        UPDATE cost SET complete = complete + extract(epoch FROM t1 - t0), jobs = jobs + events;
        COMMIT;
    END LOOP;
END
\$\$;
SELECT round((claim * 1e6 / jobs)::numeric, 1) || ' ' || round((complete * 1e6 / jobs)::numeric, 1) FROM cost;
SQL
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
spread() { sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

declare -A claim complete
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for rep in $(seq 1 "$REPS"); do
  for kind in event batch; do
    for audit in on off; do
      read -r c k < <(one_run "$kind" "$audit" | tail -n 1)
      echo "rep $rep, $kind jobs, audit_search $audit: claim $c µs/event, complete $k µs/event" >&2
      claim[$kind $audit]+="$c"$'\n'
      complete[$kind $audit]+="$k"$'\n'
    done
  done
done

echo
echo "### Queue SQL per event ($ROWS rows in statements of 1,000, 100 events per call, one session, commit after each call; $REPS runs)"
echo
echo "| jobs | audit_search | observer_claim µs/event, median | spread | observer_complete µs/event, median | spread |"
echo "|---|---|---|---|---|---|"
for kind in event batch; do
  for audit in on off; do
    k="$kind $audit"
    echo "| $kind | $audit | $(printf '%s' "${claim[$k]}" | median) | $(printf '%s' "${claim[$k]}" | spread) | $(printf '%s' "${complete[$k]}" | median) | $(printf '%s' "${complete[$k]}" | spread) |"
  done
done
