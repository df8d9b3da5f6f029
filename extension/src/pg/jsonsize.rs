//! How long a jsonb value's text is, without writing the text.
//!
//! A payload is bounded by its stored size (`max_payload_bytes`), but its JSON text can be
//! unboundedly longer: a `numeric` is stored in a few bytes whatever its exponent, and prints as
//! every digit (`1e131071` is 9 bytes stored, 131,072 characters printed). An array of such values
//! in one row printed as a gigabyte and failed, out of memory, every claim that reached its job.
//! So the text length of such documents is measured before they are handed on, by walking the
//! jsonb and printing only its numbers, and stopping as soon as it passes the limit.
//!
//! Only types that can hold such numbers are walked (`pg::types::expands`): numeric, json, jsonb
//! and arrays, domains and ranges of them. Others print within a small multiple of their size.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// The length of the JSON text of `jsonb` (a detoasted jsonb datum), or None once it passes
/// `limit` bytes (the walk stops there). Keys and strings count their bytes (escapes not counted),
/// numbers their printed digits, other scalars and punctuation a few bytes each.
///
/// # Safety
/// `jsonb` must point at a detoasted jsonb value.
pub unsafe fn text_len(jsonb: *mut pg_sys::Jsonb, limit: usize) -> Option<usize> {
    let mut total = 0usize;
    // SAFETY: iterating a detoasted jsonb container with the server's own iterator; the values
    // it yields point into the container or into memory of the current context.
    unsafe {
        let mut it = pg_sys::JsonbIteratorInit(&mut (*jsonb).root);
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        loop {
            let token = pg_sys::JsonbIteratorNext(&mut it, &mut v, false);
            if token == pg_sys::JsonbIteratorToken::WJB_DONE {
                break;
            }
            total += 2; // a separator, a colon or a bracket, and a space
            if matches!(
                token,
                pg_sys::JsonbIteratorToken::WJB_KEY
                    | pg_sys::JsonbIteratorToken::WJB_VALUE
                    | pg_sys::JsonbIteratorToken::WJB_ELEM
            ) {
                total += match v.type_ {
                    pg_sys::jbvType::jbvString => {
                        usize::try_from(v.val.string.len).unwrap_or(usize::MAX) + 2
                    }
                    pg_sys::jbvType::jbvNumeric => numeric_len(v.val.numeric),
                    _ => 5,
                };
            }
            if total > limit {
                return None;
            }
        }
    }
    Some(total)
}

/// The printed length of a numeric.
fn numeric_len(n: pg_sys::Numeric) -> usize {
    // SAFETY: numeric_out takes one numeric datum, which `n` is (a value of the jsonb walked).
    let printed = unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::numeric_out,
            &[Some(pg_sys::Datum::from(n.cast::<std::ffi::c_void>()))],
        )
    };
    match printed {
        Some(d) => {
            // SAFETY: numeric_out returns a palloc'd C string, freed once measured.
            unsafe {
                let p = d.cast_mut_ptr::<std::ffi::c_char>();
                let len = std::ffi::CStr::from_ptr(p).to_bytes().len();
                pg_sys::pfree(p.cast());
                len
            }
        }
        None => 0,
    }
}

/// `observer_json_size(doc jsonb, max_bytes bigint) RETURNS bigint`: the length of `doc`'s JSON
/// text, or NULL once it passes `max_bytes` (see the module documentation). Internal (the
/// queue's check of enqueued payloads): granted to nobody.
#[pg_extern(immutable, parallel_safe)]
pub fn observer_json_size(doc: crate::pg::rows::RawJsonbArg, max_bytes: i64) -> Option<i64> {
    let limit = usize::try_from(max_bytes).unwrap_or(0);
    // SAFETY: the argument is a jsonb datum (the SQL signature admits nothing else), detoasted
    // before it is walked.
    unsafe {
        let p = pg_sys::pg_detoast_datum(doc.0.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        text_len(p, limit).and_then(|n| i64::try_from(n).ok())
    }
}

/// Documents of up to this many bytes (as stored) give their own words to the audit trail.
const WORDS_DOC_BYTES: usize = 100_000;

/// `observer_bounded_doc(doc jsonb) RETURNS jsonb`: `doc` when it is at most 100,000 bytes
/// (uncompressed: a compressed or TOASTed value is measured by its header, not read), else a JSON
/// string of the first 100,000 characters of its text. The audit words of an
/// attempt come from it (`observer.words`): a tsvector holds at most 1 MiB, and about 840 kB of
/// distinct words exceed it. A function (not SQL) so that `observer.words`, which names its
/// document once, stays inlined. Internal: granted to nobody.
#[pg_extern(immutable, parallel_safe, strict)]
pub fn observer_bounded_doc(doc: crate::pg::rows::RawJsonbArg) -> crate::pg::rows::RawJsonb {
    // SAFETY: the argument is a jsonb datum (the SQL signature admits nothing else): its raw
    // size is read from its header (or TOAST pointer) without detoasting; only a large one is printed (jsonb_out on
    // the detoasted value) and cut, and its cut text returned as a jsonb string.
    unsafe {
        if pg_sys::toast_raw_datum_size(doc.0) <= WORDS_DOC_BYTES {
            return crate::pg::rows::RawJsonb::from_datum(doc.0);
        }
        let text = pgrx::direct_function_call_as_datum(pg_sys::jsonb_out, &[Some(doc.0)])
            .map(|d| {
                std::ffi::CStr::from_ptr(d.cast_mut_ptr::<std::ffi::c_char>())
                    .to_string_lossy()
                    .chars()
                    .take(WORDS_DOC_BYTES)
                    .collect::<String>()
            })
            .unwrap_or_default();
        let value = pgrx::JsonB(serde_json::Value::String(text));
        crate::pg::rows::RawJsonb::from_datum(pgrx::IntoDatum::into_datum(value).unwrap_or(doc.0))
    }
}
