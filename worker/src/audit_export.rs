//! Export of the audit trail to Elasticsearch (`[elasticsearch] url`; off when empty).
//!
//! The extension queues every attempt in `observer.audit_outbox` while
//! `fraiseql_observers.audit_export` is on; one worker at a time (`observer_audit_lock()`)
//! takes the oldest documents (`observer_audit_batch`), sends them with the `_bulk` API and
//! settles them (`observer_audit_done`). So documents wait in Postgres, never in the worker's
//! memory, while Elasticsearch is away; the export runs on its own connection and task, so it
//! never slows deliveries.
//!
//! Per the `_bulk` documentation (<https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html>):
//! `POST /_bulk` with `Content-Type: application/x-ndjson`, an action line
//! `{"create":{"_index":...,"_id":...}}` and a source line per document, each ending in `\n`.
//! `create` with `_id = "<job_id>-<attempt>"` makes a re-sent document a `409` conflict instead of
//! a duplicate. The response is `200` even when items failed (`"errors": true`): each item has
//! its own `status` — `201` created and `409` already there are settled; `429` and `5xx` are sent
//! again later; any other `4xx` (a mapping error) is refused for good and kept, with its reason,
//! in the outbox. Any other answer to the whole request (a `429`, a `5xx`, a `401` for a wrong API
//! key) or no answer backs off exponentially and tries again: documents are never dropped for a
//! configuration error, they wait until it is fixed.
//! Indices are daily, `<index_prefix>-YYYY.MM.DD` (UTC, from the attempt's time), with an index
//! template installed first (`PUT /_index_template/<index_prefix>`).

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_core::backoff::Backoff;
use fraiseql_observers_core::text::printable;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tokio_util::sync::CancellationToken;

use crate::config::{redact, ElasticsearchConfig};
use crate::db::{Db, Doc, Settled};
use crate::metrics::Metrics;

/// Largest `_bulk` body sent (Elasticsearch's default `http.max_content_length` is 100 MB; a few
/// megabytes per request is the usual advice).
const MAX_BULK_BYTES: usize = 5 * 1024 * 1024;

/// What Elasticsearch said about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored, now or before (201, 200, 409).
    Stored,
    /// Try again later (429, 5xx).
    Later,
    /// Refused for good, with the reason (other 4xx).
    Refused(String),
}

/// The daily index of a document, from its `@timestamp` (`2026-11-22T...` → `<prefix>-2026.11.22`).
pub fn index_name(prefix: &str, source: &serde_json::Value) -> String {
    let day = source
        .get("@timestamp")
        .and_then(|t| t.as_str())
        .and_then(|t| t.get(..10))
        .filter(|d| d.len() == 10 && d.as_bytes()[4] == b'-' && d.as_bytes()[7] == b'-')
        .map(|d| d.replace('-', "."))
        .unwrap_or_else(|| "undated".to_string());
    format!("{prefix}-{day}")
}

/// The NDJSON body of a `_bulk` request for `docs` (as many as fit in `max_bytes`, at least one),
/// and how many it holds.
pub fn bulk_body(prefix: &str, docs: &[Doc], max_bytes: usize) -> (String, usize) {
    let mut body = String::new();
    let mut n = 0;
    for doc in docs {
        let source: serde_json::Value =
            serde_json::from_str(&doc.source).unwrap_or(serde_json::Value::Null);
        let action = serde_json::json!({
            "create": { "_index": index_name(prefix, &source), "_id": doc.id() }
        });
        let entry = format!("{action}\n{}\n", source);
        if n > 0 && body.len() + entry.len() > max_bytes {
            break;
        }
        body.push_str(&entry);
        n += 1;
    }
    (body, n)
}

/// The verdict on each document of a `_bulk` response (items are in request order).
pub fn verdicts(response: &serde_json::Value, sent: usize) -> Result<Vec<Verdict>, String> {
    let items = response
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or("the _bulk response has no items")?;
    if items.len() != sent {
        return Err(format!(
            "the _bulk response has {} items for {sent} documents",
            items.len()
        ));
    }
    Ok(items
        .iter()
        .map(|item| {
            let result = item
                .get("create")
                .or_else(|| item.as_object().and_then(|o| o.values().next()))
                .cloned()
                .unwrap_or_default();
            let status = result.get("status").and_then(|s| s.as_u64()).unwrap_or(0);
            match status {
                200 | 201 | 409 => Verdict::Stored,
                429 | 500..=599 | 0 => Verdict::Later,
                _ => {
                    let error = &result["error"];
                    // Elasticsearch's text: escaped before it reaches logs and the outbox.
                    Verdict::Refused(printable(&format!(
                        "{status} {}: {}",
                        error["type"].as_str().unwrap_or("error"),
                        error["reason"].as_str().unwrap_or("")
                    )))
                }
            }
        })
        .collect())
}

/// The index template: explicit mappings, so arbitrary payloads (stored as text) cannot grow the
/// mapping.
pub fn index_template(prefix: &str) -> serde_json::Value {
    serde_json::json!({
        "index_patterns": [format!("{prefix}-*")],
        "priority": 200,
        "template": {
            "mappings": {
                "dynamic": false,
                "properties": {
                    "@timestamp": {"type": "date"},
                    "job_id": {"type": "long"},
                    "attempt": {"type": "integer"},
                    "event_id": {"type": "long"},
                    // A batch job's attempt: every event of the batch (event_id is the first).
                    "event_ids": {"type": "long"},
                    "observer": {"type": "keyword"},
                    "action": {"type": "keyword"},
                    "outcome": {"type": "keyword"},
                    "status": {"type": "integer"},
                    "endpoint": {"type": "keyword"},
                    "duration_ms": {"type": "integer"},
                    "error": {"type": "text"},
                    "worker": {"type": "keyword"},
                    "webhook_id": {"type": "keyword"},
                    "payload": {"type": "text"}
                }
            }
        }
    })
}

/// The exporter task.
pub struct Exporter {
    config: ElasticsearchConfig,
    database_url: String,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Exporter {
    pub fn new(
        config: ElasticsearchConfig,
        database_url: String,
        user_agent: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        // No proxy from the environment (HTTP_PROXY, ...): like deliveries, the export goes
        // where elasticsearch.url says and nowhere else.
        let http = reqwest::Client::builder()
            .no_proxy()
            .user_agent(user_agent)
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Exporter {
            config,
            database_url,
            http,
            metrics,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.url.trim_end_matches('/'))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, self.url(path));
        if !self.config.api_key.is_empty() {
            r = r.header(AUTHORIZATION, format!("ApiKey {}", self.config.api_key));
        }
        r
    }

    /// Export until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(url = %redact(&self.config.url), "exporting the audit trail to Elasticsearch");
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.flush_ms),
            Duration::from_millis(self.config.max_backoff_ms),
        );
        let mut template_installed = false;
        // The exporter's connection, and whether it holds the exporters' lock.
        let mut session: Option<(Db, bool)> = None;
        while !cancel.is_cancelled() {
            let pause = match self.round(&mut session, &mut template_installed).await {
                Ok(Round::More) => Duration::ZERO,
                Ok(Round::Idle) => {
                    backoff.reset();
                    Duration::from_millis(self.config.flush_ms)
                }
                Err(e) => {
                    if e.lost_session {
                        session = None;
                    }
                    let pause = backoff.next_wait();
                    tracing::warn!(error = %e.message, retry_in_ms = pause.as_millis() as u64, "audit export to Elasticsearch failed; documents wait in Postgres");
                    self.metrics.audit_export_failures.inc();
                    pause
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// One round: a batch from the outbox to `_bulk`, and what Elasticsearch settled back to
    /// the outbox.
    async fn round(
        &self,
        session: &mut Option<(Db, bool)>,
        template_installed: &mut bool,
    ) -> Result<Round, ExportError> {
        let Some(db) = self.exporting_session(session).await? else {
            return Ok(Round::Idle);
        };
        let docs = db
            .audit_batch(self.config.batch_size)
            .await
            .map_err(ExportError::db)?;
        if docs.is_empty() {
            return Ok(Round::Idle);
        }
        if !*template_installed {
            self.install_template().await?;
            *template_installed = true;
        }
        let (body, n) = bulk_body(&self.config.index_prefix, &docs, MAX_BULK_BYTES);
        let answer = self.bulk(body).await?;
        let verdicts = verdicts(&answer, n).map_err(ExportError::http)?;
        let later = self.settle(db, &docs, verdicts).await?;
        if later > 0 {
            return Err(ExportError::http(format!(
                "{later} of {n} documents were not taken (429/5xx per item); they are sent again"
            )));
        }
        // A full batch, or one cut by the size cap: more is waiting.
        Ok(
            if n < docs.len() || docs.len() >= self.config.batch_size as usize {
                Round::More
            } else {
                Round::Idle
            },
        )
    }

    /// The exporter's connection, opened if needed, once it holds the exporters' lock (one
    /// exporter at a time across all replicas); None while another exporter holds it.
    async fn exporting_session<'s>(
        &self,
        session: &'s mut Option<(Db, bool)>,
    ) -> Result<Option<&'s Db>, ExportError> {
        if session.is_none() {
            let db = Db::connect(&self.database_url, Arc::new(tokio::sync::Notify::new()))
                .await
                .map_err(ExportError::db)?;
            db.prepare_audit_session().await.map_err(ExportError::db)?;
            *session = Some((db, false));
        }
        let Some((db, locked)) = session.as_mut() else {
            return Ok(None);
        };
        if !*locked {
            *locked = db.try_audit_lock().await.map_err(ExportError::db)?;
        }
        Ok(locked.then_some(&*db))
    }

    /// POST one `_bulk` body: its JSON answer.
    async fn bulk(&self, body: String) -> Result<serde_json::Value, ExportError> {
        let response = self
            .request(reqwest::Method::POST, "/_bulk")
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| ExportError::http(format!("no answer: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(ExportError::http(format!(
                "_bulk answered {}: {}",
                status.as_u16(),
                printable(&text.chars().take(300).collect::<String>())
            )));
        }
        response
            .json()
            .await
            .map_err(|e| ExportError::http(format!("_bulk answer is not JSON: {e}")))
    }

    /// Mark the documents Elasticsearch stored or refused for good as settled; returns how many
    /// it asked to be sent again (429/5xx per item).
    async fn settle(
        &self,
        db: &Db,
        docs: &[Doc],
        verdicts: Vec<Verdict>,
    ) -> Result<usize, ExportError> {
        let mut settled = Vec::new();
        let mut later = 0;
        for (doc, verdict) in docs.iter().zip(verdicts) {
            let refused = match verdict {
                Verdict::Stored => None,
                Verdict::Refused(reason) => {
                    tracing::error!(id = %doc.id(), %reason, "Elasticsearch refused an audit document; it stays in observer.audit_outbox with the reason");
                    Some(reason)
                }
                Verdict::Later => {
                    later += 1;
                    continue;
                }
            };
            settled.push(Settled {
                job_id: doc.job_id,
                attempt: doc.attempt,
                refused,
            });
        }
        let stored = settled.iter().filter(|s| s.refused.is_none()).count();
        db.audit_done(&settled).await.map_err(ExportError::db)?;
        self.metrics.audit_exported.inc_by(stored as u64);
        Ok(later)
    }

    async fn install_template(&self) -> Result<(), ExportError> {
        let name = &self.config.index_prefix;
        let response = self
            .request(reqwest::Method::PUT, &format!("/_index_template/{name}"))
            .json(&index_template(name))
            .send()
            .await
            .map_err(|e| ExportError::http(format!("no answer: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(ExportError::http(format!(
                "PUT _index_template/{name} answered {}",
                response.status().as_u16()
            )));
        }
        tracing::info!(template = %name, "Elasticsearch index template installed");
        Ok(())
    }
}

enum Round {
    /// A full batch went out: go on at once.
    More,
    /// Nothing (more) to send now.
    Idle,
}

struct ExportError {
    message: String,
    lost_session: bool,
}

impl ExportError {
    fn db(e: crate::db::DbError) -> Self {
        ExportError {
            lost_session: true,
            message: e.to_string(),
        }
    }

    fn http(message: impl Into<String>) -> Self {
        ExportError {
            message: message.into(),
            lost_session: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(job: i64, attempt: i32, at: &str) -> Doc {
        Doc {
            job_id: job,
            attempt,
            source: serde_json::json!({"@timestamp": at, "outcome": "completed"}).to_string(),
        }
    }

    #[test]
    fn bulk_bodies_are_ndjson_create_actions_with_stable_ids_and_daily_indices() {
        let docs = [
            doc(7, 1, "2026-11-22T10:00:00.5+00:00"),
            doc(8, 2, "2026-11-23T00:00:01+00:00"),
        ];
        let (body, n) = bulk_body("audit", &docs, usize::MAX);
        assert_eq!(n, 2);
        assert!(body.ends_with('\n'));
        let lines: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"create": {"_index": "audit-2026.11.22", "_id": "7-1"}})
        );
        assert_eq!(lines[1]["outcome"], "completed");
        assert_eq!(
            lines[2],
            serde_json::json!({"create": {"_index": "audit-2026.11.23", "_id": "8-2"}})
        );
    }

    #[test]
    fn bodies_stop_at_the_size_cap_but_carry_at_least_one_document() {
        let docs = [
            doc(1, 1, "2026-11-22T00:00:00Z"),
            doc(2, 1, "2026-11-22T00:00:00Z"),
        ];
        let (_, n) = bulk_body("a", &docs, 10);
        assert_eq!(n, 1);
    }

    #[test]
    fn item_statuses_decide_each_document() {
        let response = serde_json::json!({"took": 3, "errors": true, "items": [
            {"create": {"_id": "1-1", "status": 201}},
            {"create": {"_id": "2-1", "status": 409, "error": {"type": "version_conflict_engine_exception"}}},
            {"create": {"_id": "3-1", "status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            {"create": {"_id": "4-1", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse"}}},
            {"create": {"_id": "5-1", "status": 503}}
        ]});
        assert_eq!(
            verdicts(&response, 5).expect("items"),
            vec![
                Verdict::Stored,
                Verdict::Stored,
                Verdict::Later,
                Verdict::Refused("400 mapper_parsing_exception: failed to parse".into()),
                Verdict::Later
            ]
        );
        assert!(verdicts(&response, 4).is_err(), "item count must match");
    }
}
