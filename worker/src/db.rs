//! The worker's side of the extension's SQL API. Every method is one call of an `observer_*`
//! function: the queue logic (claim, fencing, backoff, dead-lettering) lives in the extension and
//! is never re-implemented here.
//!
//! Every call is schema-qualified: at connect the session reads the extension's schema from
//! `pg_catalog.pg_extension` and statements name it where they say `@extschema@` (as extension
//! scripts do), and built-in functions are written `pg_catalog.`. So a schema that comes earlier
//! on the session's `search_path` (`"$user"`: one named after the login role) cannot shadow the
//! extension's functions with its own.

use std::time::{Duration, SystemTime};

use fraiseql_observers_core::prune::Pruned;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client};

use crate::job::{Audit, ClaimedJob, Completion, Discard, Failure, Lease, Snooze};

/// Channel on which `observer_dispatch` announces new jobs.
pub const JOBS_CHANNEL: &str = "fraiseql_observers_jobs";

/// Seconds since the Unix epoch, as the statements below send times (float8, then
/// `to_timestamp`): tokio-postgres has no timestamptz mapping without an extra feature.
fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// SQL turning the float8[] parameter `$n` (epoch seconds, NULL for none) into a timestamptz[]
/// of the same order and length.
fn timestamps_param(n: u8) -> String {
    format!(
        "(SELECT coalesce(pg_catalog.array_agg(pg_catalog.to_timestamp(t) ORDER BY o), '{{}}') \
         FROM pg_catalog.unnest(${n}::float8[]) WITH ORDINALITY AS u(t, o))"
    )
}

/// Where statements name the extension's schema; replaced by [`Db::sql`].
pub const EXTSCHEMA: &str = "@extschema@";

/// The schema the extension `fraiseql_observers` is installed in, read from the catalogs (never
/// from `search_path`), and its version, for the handshake ([`crate::version`]).
const EXTENSION_SCHEMA: &str =
    "SELECT n.nspname::text, e.extversion::text FROM pg_catalog.pg_extension e \
     JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
     WHERE e.extname = 'fraiseql_observers'";

/// `name` as a quoted SQL identifier (`"a""b"` for `a"b`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A database failure, with what the worker was doing.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Unreachable, refused, or failed the TLS checks of `database_url` (see [`crate::tls`]).
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] crate::tls::PgConnectError),
    #[error("the extension fraiseql_observers is not installed in this database (CREATE EXTENSION fraiseql_observers)")]
    NoExtension,
    /// The installed extension is of a version this worker does not support.
    #[error(transparent)]
    Incompatible(#[from] crate::version::Mismatch),
    #[error("{what} failed: {source}")]
    Call {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl DbError {
    fn call(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Call { what, source }
    }

    /// The SQLSTATE of a failed statement (e.g. `42704` for an unknown event).
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Connect(_) | DbError::NoExtension | DbError::Incompatible(_) => None,
            DbError::Call { source, .. } => source.code().map(|c| c.code()),
        }
    }

    /// The server's message, hint included, for the CLI (no driver prefix).
    pub fn server_message(&self) -> String {
        match self {
            DbError::Call { source, .. } => match source.as_db_error() {
                Some(e) => match e.hint() {
                    Some(hint) => format!("{}\nhint: {hint}", e.message()),
                    None => e.message().to_string(),
                },
                None => source.to_string(),
            },
            other => other.to_string(),
        }
    }

    /// True when the connection itself is gone (reconnect), false for a failed statement.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            DbError::Connect(_) | DbError::NoExtension | DbError::Incompatible(_) => true,
            DbError::Call { source, .. } => source.is_closed() || source.code().is_none(),
        }
    }
}

/// Queue and dispatcher figures the worker exports as metrics ([`Db::health`]), from one
/// `observer_status()`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Health {
    /// Jobs by state (`jobs`: pending, running, completed, dead).
    pub jobs: Vec<(String, i64)>,
    /// Events set aside because they could not be read (`dispatch.quarantined_events`).
    pub quarantined_events: i64,
    /// Committed events no round has read yet (`dispatch.undispatched_events`, capped at a
    /// million by the extension).
    pub undispatched_events: i64,
    /// Age of the oldest undispatched event, seconds (`dispatch.lag_seconds`; 0 when none).
    pub lag_seconds: f64,
    /// Seconds since the last dispatch round ended, by the database clock; None before the first.
    pub since_last_round: Option<f64>,
    /// Sessions that have held the dispatch round's lock for over 5 s (`dispatch.blocked_by`).
    pub blocked_sessions: i64,
    /// The extension's verdict (`dispatch.healthy`): nothing waits, or a round ran recently.
    pub healthy: bool,
    /// The extension's background dispatcher process runs (`dispatch.background_worker`).
    pub background_worker: bool,
    /// The installed extension's version now (it can change under a running worker).
    pub extension_version: String,
}

impl Health {
    /// The figures of `status` (observer_status() as JSON); missing fields count as 0 / false.
    pub fn from_status(
        status: &serde_json::Value,
        since_last_round: Option<f64>,
        extension_version: String,
    ) -> Self {
        let dispatch = &status["dispatch"];
        let int = |v: &serde_json::Value| {
            v.as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .unwrap_or(0)
        };
        let jobs = status["jobs"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), int(v))).collect())
            .unwrap_or_default();
        Health {
            jobs,
            quarantined_events: int(&dispatch["quarantined_events"]),
            undispatched_events: int(&dispatch["undispatched_events"]),
            lag_seconds: dispatch["lag_seconds"].as_f64().unwrap_or(0.0),
            since_last_round,
            blocked_sessions: dispatch["blocked_by"]
                .as_array()
                .map_or(0, |a| i64::try_from(a.len()).unwrap_or(i64::MAX)),
            healthy: dispatch["healthy"].as_bool().unwrap_or(false),
            background_worker: dispatch["background_worker"].as_bool().unwrap_or(false),
            extension_version,
        }
    }
}

/// The audit columns of a batch, as the three optional arrays of the outcome functions.
type AuditArrays<'a> = (Vec<Option<&'a str>>, Vec<Option<i32>>, Vec<Option<i32>>);

fn audit_arrays<'a>(audits: impl Iterator<Item = &'a Audit>) -> AuditArrays<'a> {
    let mut endpoints = Vec::new();
    let mut statuses = Vec::new();
    let mut durations = Vec::new();
    for a in audits {
        endpoints.push(a.endpoint.as_deref());
        statuses.push(a.status);
        durations.push(a.duration_ms);
    }
    (endpoints, statuses, durations)
}

/// The job ids and fencing tokens of a batch, as the first two arrays of the outcome functions.
fn lease_arrays<'a>(leases: impl Iterator<Item = &'a Lease>) -> (Vec<i64>, Vec<i64>) {
    leases.map(|l| (l.job_id, l.token)).unzip()
}

/// One circuit breaker as `observer_report_breakers` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerRow {
    /// `scheme://host:port`.
    pub endpoint: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Consecutive endpoint faults counted while closed.
    pub failures: i32,
    /// While open: until when.
    pub open_until: Option<SystemTime>,
}

/// An audit document Elasticsearch settled (`observer_audit_done`): stored, or refused for good
/// with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub job_id: i64,
    pub attempt: i32,
    /// None when stored.
    pub refused: Option<String>,
}

/// A document waiting in the audit outbox (`observer_audit_batch`), for the Elasticsearch
/// export ([`crate::audit_export`]).
#[derive(Debug, Clone)]
pub struct Doc {
    pub job_id: i64,
    pub attempt: i32,
    /// The document, as JSON text (`@timestamp` in UTC).
    pub source: String,
}

impl Doc {
    /// `_id`: stable, so a re-send is a 409 instead of a second document.
    pub fn id(&self) -> String {
        format!("{}-{}", self.job_id, self.attempt)
    }
}

/// One database session of the worker.
pub struct Db {
    client: Client,
    /// The extension's schema, quoted: what `@extschema@` stands for in statements.
    schema: String,
    /// The installed extension's version (`pg_extension.extversion`) at connect.
    extension_version: String,
}

impl Db {
    /// Connect; asynchronous notifications on this connection (wake-ups) trigger `wake`.
    pub async fn connect(url: &str, wake: std::sync::Arc<Notify>) -> Result<Self, DbError> {
        // TLS as `sslmode` and the other libpq parameters of the URL say (crate::tls).
        let (client, mut connection) = crate::tls::connect_postgres(url)
            .await
            .map_err(DbError::Connect)?;
        // The connection future must be polled for the client to work; notices and
        // notifications arrive through it.
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(AsyncMessage::Notice(n)) => {
                        tracing::debug!(notice = %n.message(), "postgres notice")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "database connection lost");
                        break;
                    }
                }
            }
        });
        let row = client
            .query_opt(EXTENSION_SCHEMA, &[])
            .await
            .map_err(DbError::call("reading the extension's schema"))?
            .ok_or(DbError::NoExtension)?;
        let schema = quote_ident(&row.get::<_, String>(0));
        let extension_version: String = row.get(1);
        // The handshake: no call is made against an extension of another series.
        crate::version::check(&extension_version)?;
        Ok(Self {
            client,
            schema,
            extension_version,
        })
    }

    /// The installed extension's version, as read at connect.
    pub fn extension_version(&self) -> &str {
        &self.extension_version
    }

    /// `statement` with `@extschema@` replaced by the extension's (quoted) schema.
    pub fn sql(&self, statement: &str) -> String {
        statement.replace(EXTSCHEMA, &self.schema)
    }

    /// Name this session `fraiseql-observers:<worker>` (`application_name`), so that
    /// `observer_status()` lists the live workers and operators find them in pg_stat_activity.
    pub async fn identify(&self, worker: &str) -> Result<(), DbError> {
        let name: String = format!("fraiseql-observers:{worker}")
            .chars()
            .take(63)
            .collect();
        self.client
            .execute(
                "SELECT pg_catalog.set_config('application_name', $1, false)",
                &[&name],
            )
            .await
            .map_err(DbError::call("SET application_name"))?;
        Ok(())
    }

    /// Commit without waiting for the WAL flush on this session (`synchronous_commit = off`):
    /// for the session that claims and dispatches. Nothing can be lost by it: a crash before the
    /// flush loses a claim (the job is claimable again, as after its lease) or a dispatch round
    /// with its checkpoint (made again from the events); a completion, reported on the other
    /// session with a synchronous commit, flushes the WAL up to it, its claim and round included.
    pub async fn commit_without_flush(&self) -> Result<(), DbError> {
        self.client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(DbError::call("SET synchronous_commit"))
    }

    /// Subscribe this session to job wake-ups.
    pub async fn listen(&self) -> Result<(), DbError> {
        self.client
            .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
            .await
            .map_err(DbError::call("LISTEN"))
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `observer_dispatch(max_events, dispatcher, unless_active_within)`: events read this round,
    /// or None when another dispatcher ran a round within `standby` (this one stands by).
    pub async fn dispatch(
        &self,
        max_events: u32,
        dispatcher: &str,
        standby: Duration,
    ) -> Result<Option<i64>, DbError> {
        let row = self
            .client
            .query_one(
                &self.sql("SELECT @extschema@.observer_dispatch($1::int4, $2::text, pg_catalog.make_interval(secs => $3::float8))"),
                &[
                    &i32::try_from(max_events).unwrap_or(i32::MAX),
                    &dispatcher,
                    &standby.as_secs_f64(),
                ],
            )
            .await
            .map_err(DbError::call("observer_dispatch"))?;
        Ok(row.get(0))
    }

    /// `observer_prune()` with the server's retention setting: what it deleted.
    pub async fn prune(&self, max_rows: i32) -> Result<Pruned, DbError> {
        let row = self
            .client
            .query_one(
                &self.sql("SELECT events_deleted, jobs_deleted FROM @extschema@.observer_prune(max_rows => $1)"),
                &[&max_rows],
            )
            .await
            .map_err(DbError::call("observer_prune"))?;
        Ok(Pruned {
            events: row.get(0),
            jobs: row.get(1),
        })
    }

    /// `observer_claim(worker, max, lease)`.
    pub async fn claim(
        &self,
        worker: &str,
        max: u32,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, DbError> {
        let rows = self
            .client
            .query(
                &self.sql("SELECT job_id, token, attempt, observer, action::text, idempotency_key, payload::text, \
                 extract(epoch FROM event_at)::float8 FROM @extschema@.observer_claim($1::text, $2::int4, pg_catalog.make_interval(secs => $3::float8))"),
                &[&worker, &i32::try_from(max).unwrap_or(i32::MAX), &lease.as_secs_f64()],
            )
            .await
            .map_err(DbError::call("observer_claim"))?;
        Ok(rows
            .iter()
            .map(|r| ClaimedJob {
                job_id: r.get(0),
                token: r.get(1),
                attempt: r.get(2),
                observer: r.get(3),
                action: r.get(4),
                idempotency_key: r.get(5),
                payload: r.get(6),
                event_at: r.get(7),
            })
            .collect())
    }

    /// `observer_heartbeat(ids, tokens, lease)`: the ids whose lease was lost (rejected).
    pub async fn heartbeat(&self, jobs: &[Lease], lease: Duration) -> Result<Vec<i64>, DbError> {
        let (ids, tokens) = lease_arrays(jobs.iter());
        let rows = self
            .client
            .query(
                &self.sql("SELECT job_id FROM @extschema@.observer_heartbeat($1::int8[], $2::int8[], pg_catalog.make_interval(secs => $3::float8)) \
                 WHERE NOT accepted"),
                &[&ids, &tokens, &lease.as_secs_f64()],
            )
            .await
            .map_err(DbError::call("observer_heartbeat"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `observer_complete(ids, tokens, audit...)`: the ids whose token was stale (rejected).
    pub async fn complete(&self, done: &[Completion]) -> Result<Vec<i64>, DbError> {
        let (ids, tokens) = lease_arrays(done.iter().map(|d| &d.lease));
        let (endpoints, statuses, durations) = audit_arrays(done.iter().map(|d| &d.audit));
        let rows = self
            .client
            .query(
                &self.sql("SELECT job_id FROM @extschema@.observer_complete($1::int8[], $2::int8[], $3::text[], $4::int4[], $5::int4[]) \
                 WHERE NOT accepted"),
                &[&ids, &tokens, &endpoints, &statuses, &durations],
            )
            .await
            .map_err(DbError::call("observer_complete"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `observer_fail(ids, tokens, errors, not_before)`: the ids whose token was stale.
    pub async fn fail(&self, failed: &[Failure]) -> Result<Vec<i64>, DbError> {
        let (ids, tokens) = lease_arrays(failed.iter().map(|f| &f.lease));
        let errors: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
        // Seconds since the epoch; NULL where the endpoint set no earliest time.
        let not_before: Vec<Option<f64>> = failed
            .iter()
            .map(|f| f.not_before.map(epoch_seconds))
            .collect();
        let (endpoints, statuses, durations) = audit_arrays(failed.iter().map(|f| &f.audit));
        let rows = self
            .client
            .query(
                &self.sql(&format!(
                    "SELECT job_id FROM @extschema@.observer_fail($1::int8[], $2::int8[], $3::text[], {}, \
                     $5::text[], $6::int4[], $7::int4[]) WHERE NOT accepted",
                    timestamps_param(4)
                )),
                &[
                    &ids,
                    &tokens,
                    &errors,
                    &not_before,
                    &endpoints,
                    &statuses,
                    &durations,
                ],
            )
            .await
            .map_err(DbError::call("observer_fail"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `observer_snooze`: returns the jobs whose token was stale.
    pub async fn snooze(&self, items: &[Snooze]) -> Result<Vec<i64>, DbError> {
        let (ids, tokens) = lease_arrays(items.iter().map(|i| &i.lease));
        let until: Vec<f64> = items.iter().map(|i| epoch_seconds(i.until)).collect();
        let reasons: Vec<&str> = items.iter().map(|i| i.reason.as_str()).collect();
        let rows = self
            .client
            .query(
                &self.sql(&format!(
                    "SELECT job_id FROM @extschema@.observer_snooze($1::int8[], $2::int8[], {}, $4::text[]) \
                     WHERE NOT accepted",
                    timestamps_param(3)
                )),
                &[&ids, &tokens, &until, &reasons],
            )
            .await
            .map_err(DbError::call("observer_snooze"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `observer_discard` (pausing the observer where asked); returns the jobs whose token was
    /// stale.
    pub async fn discard(&self, items: &[Discard]) -> Result<Vec<i64>, DbError> {
        let (ids, tokens) = lease_arrays(items.iter().map(|i| &i.lease));
        let reasons: Vec<&str> = items.iter().map(|i| i.error.as_str()).collect();
        let pause: Vec<bool> = items.iter().map(|i| i.pause).collect();
        let (endpoints, statuses, durations) = audit_arrays(items.iter().map(|i| &i.audit));
        let rows = self
            .client
            .query(
                &self.sql("SELECT job_id FROM @extschema@.observer_discard($1::int8[], $2::int8[], $3::text[], $4::bool[], \
                 $5::text[], $6::int4[], $7::int4[]) WHERE NOT accepted"),
                &[&ids, &tokens, &reasons, &pause, &endpoints, &statuses, &durations],
            )
            .await
            .map_err(DbError::call("observer_discard"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `observer_split(ids, tokens)`: batch jobs given back as jobs of their own events, due at
    /// once, the claim's attempt given back. Returns the jobs refused: their token was stale
    /// (another worker claimed them since), or they were no running batch job any more.
    pub async fn split(&self, leases: &[Lease]) -> Result<Vec<i64>, DbError> {
        let (ids, tokens) = lease_arrays(leases.iter());
        let rows = self
            .client
            .query(
                &self.sql(
                    "SELECT job_id FROM @extschema@.observer_split($1::int8[], $2::int8[]) WHERE NOT accepted",
                ),
                &[&ids, &tokens],
            )
            .await
            .map_err(DbError::call("observer_split"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `observer_report_breakers`: this worker's circuit breakers.
    pub async fn report_breakers(
        &self,
        worker: &str,
        breakers: &[BreakerRow],
    ) -> Result<(), DbError> {
        let endpoints: Vec<&str> = breakers.iter().map(|b| b.endpoint.as_str()).collect();
        let states: Vec<&str> = breakers.iter().map(|b| b.state).collect();
        let failures: Vec<i32> = breakers.iter().map(|b| b.failures).collect();
        let until: Vec<Option<f64>> = breakers
            .iter()
            .map(|b| b.open_until.map(epoch_seconds))
            .collect();
        self.client
            .execute(
                &self.sql(&format!(
                    "SELECT @extschema@.observer_report_breakers($1, $2::text[], $3::text[], $4::int4[], {})",
                    timestamps_param(5)
                )),
                &[&worker, &endpoints, &states, &failures, &until],
            )
            .await
            .map_err(DbError::call("observer_report_breakers"))?;
        Ok(())
    }

    /// The audit exporter's session: times in UTC (daily index names come from them).
    pub async fn prepare_audit_session(&self) -> Result<(), DbError> {
        self.client
            .batch_execute("SET TimeZone = 'UTC'")
            .await
            .map_err(DbError::call("SET TimeZone"))
    }

    /// `observer_audit_lock()`: true when this session is (or has just become) the only audit
    /// exporter, false while another live session is. The extension keeps the election where
    /// only its roles can take part (an advisory lock could be taken by any login role and stop
    /// the export); held until the connection closes.
    pub async fn try_audit_lock(&self) -> Result<bool, DbError> {
        let row = self
            .client
            .query_one(&self.sql("SELECT @extschema@.observer_audit_lock()"), &[])
            .await
            .map_err(DbError::call("observer_audit_lock"))?;
        Ok(row.get(0))
    }

    /// `observer_audit_batch(max)`: the oldest documents waiting for Elasticsearch.
    pub async fn audit_batch(&self, max: u32) -> Result<Vec<Doc>, DbError> {
        let rows = self
            .client
            .query(
                &self.sql("SELECT job_id, attempt, doc::text FROM @extschema@.observer_audit_batch($1::int4)"),
                &[&i32::try_from(max).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(DbError::call("observer_audit_batch"))?;
        Ok(rows
            .iter()
            .map(|r| Doc {
                job_id: r.get(0),
                attempt: r.get(1),
                source: r.get(2),
            })
            .collect())
    }

    /// `observer_audit_done`: documents stored by Elasticsearch, or refused for good.
    pub async fn audit_done(&self, settled: &[Settled]) -> Result<(), DbError> {
        if settled.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = settled.iter().map(|s| s.job_id).collect();
        let attempts: Vec<i32> = settled.iter().map(|s| s.attempt).collect();
        let refused: Vec<Option<&str>> = settled.iter().map(|s| s.refused.as_deref()).collect();
        self.client
            .execute(
                &self.sql(
                    "SELECT @extschema@.observer_audit_done($1::int8[], $2::int4[], $3::text[])",
                ),
                &[&ids, &attempts, &refused],
            )
            .await
            .map_err(DbError::call("observer_audit_done"))?;
        Ok(())
    }

    /// Queue depth, dispatcher health and the extension's version now ([`Health`]), from one
    /// `observer_status()`. The time since the last round is measured by the database clock, so
    /// that a skew between the worker's clock and the database's does not count as a stall.
    pub async fn health(&self) -> Result<Health, DbError> {
        let row = self
            .client
            .query_one(
                &self.sql(
                    "WITH st AS (SELECT @extschema@.observer_status() AS s) \
                     SELECT st.s::text, \
                            extract(epoch FROM pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) \
                                ((st.s OPERATOR(pg_catalog.->) 'dispatch') \
                                 OPERATOR(pg_catalog.->>) 'last_round_at')::timestamptz)::float8, \
                            (SELECT e.extversion::text FROM pg_catalog.pg_extension e \
                             WHERE e.extname = 'fraiseql_observers') \
                     FROM st",
                ),
                &[],
            )
            .await
            .map_err(DbError::call("observer_status"))?;
        let status: serde_json::Value =
            serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(serde_json::Value::Null);
        Ok(Health::from_status(
            &status,
            row.get(1),
            row.get::<_, Option<String>>(2).unwrap_or_default(),
        ))
    }

    /// `observer_status()`, pretty-printed JSON.
    pub async fn status(&self) -> Result<String, DbError> {
        let row = self
            .client
            .query_one(
                &self.sql("SELECT pg_catalog.jsonb_pretty(@extschema@.observer_status())"),
                &[],
            )
            .await
            .map_err(DbError::call("observer_status"))?;
        Ok(row.get(0))
    }

    /// One JSON value computed by `sql` (a query returning a single row with one json/jsonb
    /// column sent as text), with typed parameters; NULL for no value. For the CLI, which calls
    /// the extension's public functions with these.
    pub async fn query_json(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<serde_json::Value, DbError> {
        let row = self
            .client
            .query_one(&self.sql(sql), params)
            .await
            .map_err(DbError::call("CLI query"))?;
        let text: Option<String> = row.get(0);
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null))
    }

    /// Run `steps` (queries with typed parameters, as [`Db::query_json`]) in one transaction:
    /// all of them or none; `after_each` is called after each step that succeeded.
    pub async fn in_transaction(
        &self,
        steps: &[(String, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>)],
        mut after_each: impl FnMut(),
    ) -> Result<(), DbError> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(DbError::call("BEGIN"))?;
        for (sql, params) in steps {
            if let Err(e) = self.query_json(sql, params).await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            after_each();
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(DbError::call("COMMIT"))
    }
}
