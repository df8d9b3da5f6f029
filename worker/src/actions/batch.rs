//! What a batch of webhook jobs looks like on the wire: one request whose body is a JSON array of
//! the jobs' documents, in ascending job id (commit order), each with the job's own `webhook-id`
//! added as its first field (`"webhook_id"`), and one `webhook-id` header for the whole batch,
//! derived from its jobs' ids (`batch_` and 32 hex digits of a SHA-256 over them), so that the
//! same jobs sent again carry the same id. The batch is delivered as a job of its own through the
//! webhook action ([`super::webhook::deliver`]): same client, SSRF guard, headers and signature
//! (over the array body), same classification of the answer.
//!
//! A batch job ([`ClaimedJob::is_batch`], made by the dispatcher for a full batch of one
//! statement's events) already is such a request: the claim hands out the array, each element
//! with its `webhook_id`, and the key the extension computed with [`batch_id`]'s formula
//! (`observer.batch_key`), so it goes as claimed, neither rebuilt nor rehashed.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::job::ClaimedJob;

/// The name of the field that carries each job's own `webhook-id` inside its element.
pub const ID_FIELD: &str = "webhook_id";

/// Bytes the element of `job` takes in the array (its document with the `webhook_id` field; the
/// array's brackets and commas aside): what a batch's `max_bytes` counts.
pub fn element_len(job: &ClaimedJob) -> u64 {
    // `"webhook_id":"<key>",` around the key; an escaped character in a key makes it longer,
    // which only makes the estimate short by a few bytes.
    (job.payload.len() + job.idempotency_key.len() + ID_FIELD.len() + 6) as u64
}

/// The `webhook-id` of a batch of `keys` (the jobs' own ids, in the batch's order). The extension
/// computes the same for the batch jobs it makes (`observer.batch_key`, sql/dispatch.sql), so a
/// batch job and a batch of the same events as jobs of their own carry the same `webhook-id`.
pub fn batch_id<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    let mut count = 0usize;
    for key in keys {
        // A separator no key can forge: keys are hashed with their length.
        hash.update((key.len() as u64).to_be_bytes());
        hash.update(key.as_bytes());
        count += 1;
    }
    hash.update((count as u64).to_be_bytes());
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("batch_{hex}")
}

/// The element of one job: its document with `"webhook_id": "<its key>"` as first field. The
/// claim always hands out an object (`observer.job_payload`); anything else would be wrapped as
/// `{"webhook_id": ..., "document": ...}` rather than sent without its id.
fn element(job: &ClaimedJob, out: &mut String) {
    let key = serde_json::Value::String(job.idempotency_key.clone()).to_string();
    let doc = job.payload.trim_start();
    match doc.strip_prefix('{') {
        Some(rest) => {
            out.push_str("{\"");
            out.push_str(ID_FIELD);
            out.push_str("\":");
            out.push_str(&key);
            // `{}` has no field after the id: no comma.
            if !rest.trim_start().starts_with('}') {
                out.push(',');
            }
            out.push_str(rest);
        }
        None => {
            out.push_str(&format!("{{\"{ID_FIELD}\":{key},\"document\":{doc}}}"));
        }
    }
}

/// The request of a batch as a job of its own, for the webhook action: the array of `jobs`'
/// elements as its payload and the batch's id as its idempotency key. `jobs` are in ascending
/// job id (the caller sorts them) and share their observer and action; never empty. A batch job
/// is never grouped with others: alone, it is its own request, its payload and key as claimed.
pub fn request<'a>(jobs: &[&'a ClaimedJob]) -> Cow<'a, ClaimedJob> {
    if let [job] = jobs {
        if job.is_batch() {
            return Cow::Borrowed(*job);
        }
    }
    debug_assert!(
        jobs.iter().all(|j| !j.is_batch()),
        "a batch job always goes alone"
    );
    let first = jobs[0];
    let capacity = jobs
        .iter()
        .map(|j| element_len(j) as usize + 1)
        .sum::<usize>()
        + 2;
    let mut body = String::with_capacity(capacity);
    body.push('[');
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        element(job, &mut body);
    }
    body.push(']');
    Cow::Owned(ClaimedJob {
        job_id: first.job_id,
        token: first.token,
        attempt: jobs.iter().map(|j| j.attempt).max().unwrap_or(1),
        observer: first.observer.clone(),
        action: first.action.clone(),
        idempotency_key: batch_id(jobs.iter().map(|j| j.idempotency_key.as_str())),
        payload: body,
        event_at: jobs
            .iter()
            .map(|j| j.event_at)
            .fold(f64::INFINITY, f64::min),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::job::test_job as job;

    #[test]
    fn the_body_is_an_array_of_documents_each_with_its_own_id() {
        let a = job(1, "evt_1_1", r#"{"type":"orders","data":{"event_id":1}}"#);
        let b = job(2, "key \"q\"", "{}");
        let c = job(3, "evt_3_1", "1");
        let r = request(&[&a, &b, &c]);
        let body: serde_json::Value = serde_json::from_str(&r.payload).expect("valid JSON");
        assert_eq!(
            body,
            serde_json::json!([
                {"webhook_id": "evt_1_1", "type": "orders", "data": {"event_id": 1}},
                {"webhook_id": "key \"q\""},
                {"webhook_id": "evt_3_1", "document": 1},
            ])
        );
        assert_eq!(r.job_id, 1);
        assert_eq!(r.event_at, 1.0);
        assert!(r.idempotency_key.starts_with("batch_"));
        assert_eq!(r.idempotency_key.len(), "batch_".len() + 32);
        assert!(element_len(&a) >= serde_json::to_string(&body[0]).expect("json").len() as u64);
    }

    #[test]
    fn the_batch_id_depends_on_every_job_and_only_on_them() {
        let id = |keys: &[&str]| batch_id(keys.iter().copied());
        assert_eq!(
            id(&["a", "b"]),
            id(&["a", "b"]),
            "the same batch, the same id"
        );
        assert_ne!(id(&["a", "b"]), id(&["a", "c"]));
        assert_ne!(id(&["a", "b"]), id(&["a", "b", "c"]));
        assert_ne!(id(&["a", "b"]), id(&["b", "a"]));
        assert_ne!(
            id(&["ab"]),
            id(&["a", "b"]),
            "keys cannot run into each other"
        );
    }

    #[test]
    fn a_batch_job_is_its_own_request_payload_and_key_as_claimed() {
        let payload = r#"[{"type":"orders","webhook_id":"evt_1_7"},{"type":"orders","webhook_id":"evt_2_7"}]"#;
        let key = batch_id(["evt_1_7", "evt_2_7"]);
        let batch_job = job(1, &key, payload);
        let r = request(&[&batch_job]);
        assert!(matches!(r, Cow::Borrowed(_)), "not rebuilt");
        assert_eq!(r.payload, payload, "the body is the payload verbatim");
        assert_eq!(r.idempotency_key, key, "the webhook-id is the claimed key");
        assert_eq!((r.job_id, r.token), (1, 7));
        // One per-event job alone is still wrapped as a one-element array with a batch id.
        let single = job(2, "evt_2_7", r#"{"type":"orders"}"#);
        let r = request(&[&single]);
        assert_eq!(r.payload, r#"[{"webhook_id":"evt_2_7","type":"orders"}]"#);
        assert_eq!(r.idempotency_key, batch_id(["evt_2_7"]));
    }

    #[test]
    fn the_batch_id_is_the_one_the_extension_gives_its_batch_jobs() {
        // observer.batch_key(ARRAY[1, 2], 7) (sql/dispatch.sql): the two must never drift apart,
        // or a batch job and the same events sent as jobs of their own would carry different
        // webhook-ids and a receiver could not deduplicate them.
        assert_eq!(
            batch_id(["evt_1_7", "evt_2_7"]),
            "batch_dd4b325ad5ce417b5eaf253ee3b712a4"
        );
    }
}
