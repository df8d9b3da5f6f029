//! What a batch of webhook jobs looks like on the wire: one request whose body is a JSON array of
//! the jobs' documents, in ascending job id (commit order), each with the job's own `webhook-id`
//! added as its first field (`"webhook_id"`), and one `webhook-id` header for the whole batch,
//! derived from its jobs' ids (`batch_` and 32 hex digits of a SHA-256 over them), so that the
//! same jobs sent again carry the same id. The batch is delivered as a job of its own through the
//! webhook action ([`super::webhook::deliver`]): same client, SSRF guard, headers and signature
//! (over the array body), same classification of the answer.

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

/// The `webhook-id` of a batch of `keys` (the jobs' own ids, in the batch's order).
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
/// job id (the caller sorts them) and share their observer and action; never empty.
pub fn request(jobs: &[&ClaimedJob]) -> ClaimedJob {
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
    ClaimedJob {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, key: &str, payload: &str) -> ClaimedJob {
        ClaimedJob {
            job_id: id,
            token: 7,
            attempt: 1,
            observer: "orders".into(),
            action: "{}".into(),
            idempotency_key: key.into(),
            payload: payload.into(),
            event_at: id as f64,
        }
    }

    #[test]
    fn the_body_is_an_array_of_documents_each_with_its_own_id() {
        let a = job(1, "evt_1_1", r#"{"type":"orders","data":{"event_id":1}}"#);
        let b = job(2, "key \"q\"", "{}");
        let c = job(3, "evt_3_1", "[1]");
        let r = request(&[&a, &b, &c]);
        let body: serde_json::Value = serde_json::from_str(&r.payload).expect("valid JSON");
        assert_eq!(
            body,
            serde_json::json!([
                {"webhook_id": "evt_1_1", "type": "orders", "data": {"event_id": 1}},
                {"webhook_id": "key \"q\""},
                {"webhook_id": "evt_3_1", "document": [1]},
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
}
