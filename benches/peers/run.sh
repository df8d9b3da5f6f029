#!/usr/bin/env bash
# Peers for benches/queue.sh: Graphile Worker and pg-boss from npm, each in its own database of
# the benchmark cluster (PGHOST/PGPORT set by the caller). Usage: run.sh JOBS WORKERS
# Prints Markdown table rows.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
jobs="$1" workers="$2"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get install -y -qq nodejs npm >/dev/null
fi
(cd "$here" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
url() { printf 'postgres://postgres@/%s?host=%s&port=%s' "$1" "$PGHOST" "$PGPORT"; }
for db in graphile boss; do
  command psql -X -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
done
command psql -X -q -c "CHECKPOINT" >/dev/null
read -r e p < <(cd "$here" && node graphile.mjs "$(url graphile)" "$jobs" "$workers" 2>/dev/null | tail -n1)
printf '| Graphile Worker %s | %s runners x 24 jobs, local queue 500, batched completion | %.0f | %.0f |\n' \
  "$(cd "$here" && node -p 'require("./node_modules/graphile-worker/package.json").version')" "$workers" "$e" "$p"
command psql -X -q -c "CHECKPOINT" >/dev/null
read -r e p < <(cd "$here" && node pgboss.mjs "$(url boss)" "$jobs" "$workers" 2>/dev/null | tail -n1)
printf '| pg-boss %s | %s loops of fetch(500) + complete(500) | %.0f | %.0f |\n' \
  "$(cd "$here" && node -p 'require("./node_modules/pg-boss/package.json").version')" "$workers" "$e" "$p"
