# syntax=docker/dockerfile:1
#
# PostgreSQL with the fraiseql_observers extension installed, preloaded, and created in the
# default database at first start. Build context: the repository root.
#
#   docker build -f deploy/postgres.Dockerfile -t fraiseql-observers-postgres .
#
# PG_MAJOR picks the server (`--build-arg PG_MAJOR=...`) for the builder's headers and the
# runtime image alike; the extension is built and tested for PostgreSQL 15 only.
#
# Not built by CI (there is no Docker engine there); the extension it packages is built the same
# way (`cargo pgrx package`, scripts/install-extension.sh) and tested by CI. See
# docs/deployment.md.

# Declared before the first FROM so that both FROM lines and both stages can use it.
ARG PG_MAJOR=15

FROM rust:1.95-bookworm AS builder
ARG PG_MAJOR
# cargo-pgrx must match the pgrx the extension depends on exactly (Cargo.toml: pgrx = "=0.18.0").
ARG CARGO_PGRX_VERSION=0.18.0
# Server headers and pg_config from the PostgreSQL project's apt repository (PGDG), the same
# packages the postgres:${PG_MAJOR}-bookworm runtime image is built from; clang/libclang for bindgen.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl clang libclang-dev; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
      https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-server-dev-${PG_MAJOR}"; \
    rm -rf /var/lib/apt/lists/*
# About 5 minutes; its own layer so that source changes do not redo it.
RUN cargo install cargo-pgrx --version "${CARGO_PGRX_VERSION}" --locked
# As root, `cargo pgrx init` only records the pg_config (it skips initdb).
RUN cargo pgrx init "--pg${PG_MAJOR}" "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY extension extension
COPY sql sql
COPY worker worker
COPY tests tests
# `cargo fetch --locked` fails if Cargo.lock would change; `cargo pgrx package` then builds
# (release) from that lock file, for PG_MAJOR (the crate's default feature is pg15). Output:
# /out/usr/lib/postgresql/<major>/lib/fraiseql_observers.so and
# /out/usr/share/postgresql/<major>/extension/fraiseql_observers{.control,--<version>.sql}, with the
# update scripts (extension/sql/fraiseql_observers--<from>--<to>.sql, copied by cargo pgrx package)
# and every earlier release's install script (copied here), as scripts/install-extension.sh does.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo fetch --locked \
 && cargo pgrx package -p fraiseql_observers --no-default-features --features "pg${PG_MAJOR}" \
      --pg-config "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config" --out-dir /out \
 && for f in extension/sql/fraiseql_observers--*.sql; do \
      case "$f" in *--*--*) ;; *) cp "$f" "/out/usr/share/postgresql/${PG_MAJOR}/extension/" ;; esac; \
    done

FROM postgres:${PG_MAJOR}-bookworm
ARG PG_MAJOR
# The builder's pg_config has the same pkglibdir and sharedir as this image.
COPY --from=builder /out/usr/lib/postgresql/${PG_MAJOR}/lib/ /usr/lib/postgresql/${PG_MAJOR}/lib/
COPY --from=builder /out/usr/share/postgresql/${PG_MAJOR}/extension/ /usr/share/postgresql/${PG_MAJOR}/extension/
# Run once, on an empty data directory: CREATE EXTENSION and the database's settings.
COPY --chmod=0755 deploy/postgres/initdb/ /docker-entrypoint-initdb.d/
# The background dispatcher needs the library preloaded. The entrypoint passes these arguments to
# the temporary server it runs the init scripts on too. A `command:` in compose replaces them:
# keep shared_preload_libraries there (deploy/compose.yaml does).
CMD ["postgres", "-c", "shared_preload_libraries=fraiseql_observers"]
