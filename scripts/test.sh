#!/usr/bin/env bash
# Everything CI runs: set-up (scripts/setup.sh), format and lint, unit tests, the extension's
# #[pg_test] tests, and the integration tests against real clusters, the real worker and real
# sinks. Fails on the first failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

t0=$SECONDS
"$ROOT/scripts/setup.sh"
cd "$ROOT"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "unit tests (core, worker)"
cargo test --quiet -p fraiseql-observers-core -p fraiseql-observers

step "#[pg_test] tests of the extension (cargo pgrx test, as postgres)"
# cargo pgrx copies its test build over the installed library in place, which crashes a server
# that has it loaded: stop the demo cluster first.
cluster_stop demo
install -d -o postgres -g postgres "$ROOT/.cluster"
cargo pgrx test "pg$PG_VERSION" -p fraiseql_observers --runas postgres --pgdata "$ROOT/.cluster/pgrx-test"

step "reinstall the release build of the extension"
"$ROOT/scripts/install-extension.sh"

step "integration tests (real Postgres clusters, worker binary, HTTP sinks)"
cargo test --quiet -p fraiseql-observers-tests

note "all tests passed in $((SECONDS - t0)) s"
