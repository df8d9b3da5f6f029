#!/usr/bin/env bash
# Shared helpers for the project's scripts: reading pgrx.toml, logging, timing, running as postgres.
# Sourced, never run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# pgrx_toml_get KEY: the value of `KEY = value` in pgrx.toml, quotes stripped.
pgrx_toml_get() {
  local v
  v="$(sed -n -E "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"?([^\"#]*[^\"#[:space:]])\"?.*$/\1/p" "$ROOT/pgrx.toml" | head -n1)"
  if [ -z "$v" ]; then
    echo "pgrx.toml: no value for '$1'" >&2
    return 1
  fi
  printf '%s' "$v"
}

PG_VERSION="$(pgrx_toml_get version)"
PG_CONFIG="$(pgrx_toml_get pg_config)"
PG_BINDIR="$(dirname "$PG_CONFIG")"
export PG_VERSION PG_CONFIG PG_BINDIR
export PGRX_PG_CONFIG_PATH="$PG_CONFIG"

step() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# as_postgres CMD...: run a command as the postgres OS user (Postgres refuses to run as root).
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# cluster_start NAME PORT: create (once) and start a cluster under $ROOT/.cluster/NAME that preloads
# the extension, listening on 127.0.0.1:PORT and a private socket directory.
cluster_start() {
  local name="$1" port="$2" dir="$ROOT/.cluster/$1"
  install -d -o postgres -g postgres -m 0700 "$dir" "$dir/run"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    note "initdb $dir/data"
    as_postgres "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    cat >>"$dir/data/postgresql.conf" <<CONF
# --- fraiseql_observers ($name cluster) ---
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/run'
shared_preload_libraries = 'fraiseql_observers'
fraiseql_observers.database = 'postgres'
CONF
  fi
  # The demo and benchmarks deliver to sinks on this machine, which the SSRF guard refuses unless
  # allowed (the demo's worker gets the same list: FRAISEQL_OBSERVERS_HTTP__ALLOW_NETWORKS).
  # Added here, not only at initdb, so clusters made by earlier versions get it too.
  local added=0
  if ! grep -q "^fraiseql_observers.allowed_networks" "$dir/data/postgresql.conf"; then
    echo "fraiseql_observers.allowed_networks = '127.0.0.0/8'" >>"$dir/data/postgresql.conf"
    added=1
  fi
  if as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    [ "$added" = 0 ] || as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" reload >/dev/null
    note "cluster $name already running on port $port"
  else
    as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
      || { tail -n 30 "$dir/server.log" >&2; die "cluster $name did not start"; }
    note "cluster $name started on port $port"
  fi
}

# cluster_stop NAME: stop the cluster if it runs (fast mode).
cluster_stop() {
  local dir="$ROOT/.cluster/$1"
  if [ -f "$dir/data/PG_VERSION" ] && as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
}

# bench_cluster NAME PORT: a new benchmark cluster in .cluster/NAME (any old one removed), with the
# benchmark settings (shared_buffers 512MB, max_wal_size 8GB, checkpoint_timeout 30min) and the
# postgresql.conf lines read from stdin, started; PGHOST, PGPORT, PGUSER, PGDATABASE exported.
bench_cluster() {
  local name="$1" port="$2" conf="$ROOT/.cluster/$1/data/postgresql.conf"
  cluster_stop "$name"
  rm -rf "$ROOT/.cluster/$name"
  cluster_start "$name" "$port"
  printf '%s\n' "shared_buffers = '512MB'" "max_wal_size = '8GB'" "checkpoint_timeout = '30min'" >>"$conf"
  cat >>"$conf"
  cluster_stop "$name"
  cluster_start "$name" "$port"
  export PGHOST="$ROOT/.cluster/$name/run" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres
}
