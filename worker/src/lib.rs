//! The fraiseql_observers action worker and CLI, as a library so that tests can drive it.
//! `main.rs` only parses the command line, loads the configuration and calls in here.
//!
//! # Layout
//!
//! Each module imports only modules listed below it (arrows point down; `tests/layout.rs` fails
//! on an import cycle):
//!
//! - [`runner`]: the worker's loop, one file per step: `mod.rs` (the supervisor that reconnects,
//!   and a `Session` of connections), `claim.rs` (the claim loop), `batch.rs` (the open webhook
//!   batches of a claim loop, each sent as one request), `dispatch.rs` (dispatch rounds
//!   and retention where no background dispatcher runs), `perform.rs` (an endpoint's gates and
//!   the action), `report.rs` (outcomes to the database in batches), `lease.rs` (the jobs in
//!   flight and their heartbeat), `health.rs` (readiness and the queue gauges); the only module
//!   that knows every other.
//! - [`console`]: the operator console (`fraiseql-observers console`, or beside the worker in
//!   `run`): server-rendered pages over the public SQL functions, with its own sign-in,
//!   sessions, CSRF checks and Content-Security-Policy; it uses [`db`] and [`config`].
//! - [`audit_export`]: the export of the audit trail to Elasticsearch, on its own task.
//! - [`actions`]: one file per action (`webhook`, `slack`, `email`, `nats`, `redis_stream`),
//!   `batch` (a webhook batch's request: the array body and its `webhook-id`), `http`, the HTTP
//!   client they share with its SSRF guard and the classification of
//!   responses into outcomes, and `server`, a stream action's server address with its SSRF check.
//! - [`secrets`]: resolves an action's references to secrets into what goes on the wire, and
//!   scrubs them from error texts.
//! - [`breaker`]: per-endpoint circuit breakers (`mod.rs`: the state machine and the `Verdict`
//!   of an attempt; `sync.rs`: circuits shared with other replicas through Redis, and reported to
//!   the database).
//! - [`redis`]: state shared by replicas through Redis (breakers, rate-limit slots, the
//!   delivered-ledger), falling back to local state.
//! - [`metrics`]: the Prometheus registry and the `/metrics`, `/healthz`, `/readyz` server.
//! - [`db`]: the worker's database session, one method per `observer_*` SQL function.
//! - [`config`]: the configuration (defaults, file, environment, flags) and its validation.
//! - [`job`]: the claimed job, an attempt's outcome and what is reported back: the types every
//!   action, the database session and the runner share.
//! - leaves: [`serve`] (how the metrics server and the console take connections: a cap, a header
//!   time limit, a pause after a failed accept), [`ratelimit`] (the GCRA step and the
//!   in-process limiter), [`signing`] (Standard Webhooks signatures), [`tls`] (TLS to Postgres
//!   and Redis), [`version`] (the worker/extension version handshake).
//!
//! The CLI's commands (`cli/`, one file per command family) belong to the binary and use this library from
//! above.
#![forbid(unsafe_code)]

pub mod actions;
pub mod audit_export;
pub mod breaker;
pub mod config;
pub mod console;
pub mod db;
pub mod job;
pub mod metrics;
pub mod ratelimit;
pub mod redis;
pub mod runner;
pub mod secrets;
pub mod serve;
pub mod signing;
pub mod tls;
pub mod version;
