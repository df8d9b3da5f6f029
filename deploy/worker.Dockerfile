# syntax=docker/dockerfile:1
#
# The fraiseql-observers worker (crate worker/, binary `fraiseql-observers`).
# Build context: the repository root.
#
#   docker build -f deploy/worker.Dockerfile -t fraiseql-observers-worker .
#
# Not built by CI (there is no Docker engine there); the binary it builds is the one CI tests.
# See docs/deployment.md.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Every workspace member must be present for Cargo to read the workspace; only the worker (and
# fraiseql-observers-core) is compiled.
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY extension extension
COPY worker worker
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p fraiseql-observers --locked \
 && install -D -m 0755 target/release/fraiseql-observers /out/fraiseql-observers

FROM debian:bookworm-slim
# Outbound TLS (reqwest, lettre) uses the Mozilla roots built into the binary (webpki-roots);
# ca-certificates is there for anything else in the image that makes TLS connections.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 fraiseql \
 && useradd --system --uid 10001 --gid fraiseql --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin fraiseql
COPY --from=builder /out/fraiseql-observers /usr/local/bin/fraiseql-observers
USER 10001:10001
# Prometheus metrics, served only when FRAISEQL_OBSERVERS_METRICS__LISTEN=0.0.0.0:9187 is set
# (metrics are off by default).
EXPOSE 9187
# Configuration: FRAISEQL_OBSERVERS_* environment variables (worker/config.default.toml lists
# every key) or a mounted file with FRAISEQL_OBSERVERS_CONFIG=/path/to/config.toml.
# SIGTERM (docker stop) stops claiming and lets in-flight deliveries finish within
# shutdown_timeout_ms (10 s by default): give the container a longer stop timeout than that.
ENTRYPOINT ["/usr/local/bin/fraiseql-observers"]
CMD ["run"]
