#!/usr/bin/env bash
# Run by the postgres image's entrypoint on first start only (empty data directory), against the
# temporary server it starts with the image's command arguments, so the library is preloaded.
# Creates the extension in $POSTGRES_DB (the database the background dispatcher serves:
# fraiseql_observers.database, set in deploy/compose.yaml) and turns on the export of the audit
# trail to Elasticsearch for that database: the compose stack runs Elasticsearch and a worker
# with [elasticsearch] url. Without an exporting worker, leave audit_export off: the outbox in
# Postgres would only grow (docs/audit.md).
set -euo pipefail

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set db="$POSTGRES_DB" <<'EOSQL'
CREATE EXTENSION IF NOT EXISTS fraiseql_observers;
ALTER DATABASE :"db" SET fraiseql_observers.audit_export = on;
EOSQL
