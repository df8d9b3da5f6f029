//! The capture trigger, native: `observer.capture()` runs for every captured row, so it is
//! written against the server's C API instead of PL/pgSQL. It converts OLD/NEW with the server's
//! own `to_jsonb`, and appends the event with a heap insert plus index inserts
//! (`CatalogTupleInsert`, as pg_cron does for its own tables), skipping the executor start-up and
//! SPI round trip a PL/pgSQL `INSERT` pays per row. It also registers the dispatcher wake-up
//! for the transaction's commit (`pg::wake`).
//!
//! Trigger arguments, written by `observer.sync_capture()` (see `sql/observers.sql`) and copied
//! by Postgres to every partition:
//!   0  oid of the observed table          1  its name as observers see it
//!   2  payload cap in bytes                3  columns no observer wants, text[] literal
//!   4  every non-key column, text[] literal (what an oversize row loses)

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, IntoDatum, PgLogLevel, PgSqlErrorCode, PgTrigger, PgTriggerOperation};

use crate::pg::wake;

unsafe extern "C-unwind" {
    /// `commands/sequence.h`: nextval without the permission check; the trigger writes the
    /// extension's own table on behalf of roles that have no grant on it. Called only through
    /// `pg_guard_ffi_boundary`, since it can raise an ERROR.
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// Why a row could not be captured (raised as an ERROR: the user's write fails rather than
/// commit without its event).
#[derive(thiserror::Error)]
pub enum CaptureError {
    #[error("fraiseql_observers capture trigger called with {0} arguments; recreate the observer")]
    Arguments(usize),
    #[error("fraiseql_observers capture trigger argument {0} is invalid: {1}")]
    BadArgument(usize, String),
    #[error("fraiseql_observers capture trigger fired for {0}; it captures row INSERT, UPDATE and DELETE only")]
    UnsupportedEvent(String),
    #[error("fraiseql_observers capture trigger must be an AFTER ... FOR EACH ROW trigger; use observer_create()")]
    NotAfterRow,
    #[error("relation observer.{0} does not exist; is the extension installed?")]
    MissingRelation(&'static str),
    #[error(
        "observer.events has an unexpected column {0:?}; the extension's SQL and library differ"
    )]
    UnexpectedColumn(String),
    #[error(transparent)]
    Trigger(#[from] pgrx::PgTriggerError),
}

/// pgrx's trigger wrapper formats an error with `{:?}`: keep that the readable message too.
impl std::fmt::Debug for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

thread_local! {
    /// `to_jsonb(record)` prepared once per backend (TopMemoryContext): it needs an expression
    /// that tells it the argument is a record.
    static TO_JSONB: Cell<*mut pg_sys::FmgrInfo> = const { Cell::new(std::ptr::null_mut()) };
}

#[pg_trigger]
fn observer_capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, CaptureError> {
    match capture(trigger) {
        Ok(()) => Ok(None),
        // Raised here with a real SQLSTATE: pgrx would report a trigger's Err as XX000.
        Err(e) => {
            let code = match e {
                CaptureError::MissingRelation(_) | CaptureError::UnexpectedColumn(_) => {
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
                }
                _ => PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            };
            ErrorReport::new(code, e.to_string(), function_name!())
                .set_hint("Observed tables get their triggers from observer_create(); recreate the observer.")
                .report(PgLogLevel::ERROR);
            unreachable!("an ERROR report does not return")
        }
    }
}

/// Capture the row change that fired `trigger`.
fn capture(trigger: &PgTrigger<'_>) -> Result<(), CaptureError> {
    // Only observer.sync_capture() attaches this function (EXECUTE is revoked from PUBLIC), and
    // always as AFTER ... FOR EACH ROW; refuse anything else rather than read a missing row.
    if !matches!(trigger.level(), pgrx::PgTriggerLevel::Row)
        || !matches!(trigger.when()?, pgrx::PgTriggerWhen::After)
    {
        return Err(CaptureError::NotAfterRow);
    }
    let args = trigger.extra_args()?;
    if args.len() != 5 {
        return Err(CaptureError::Arguments(args.len()));
    }
    let table_oid: u32 = args[0]
        .parse()
        .map_err(|_| CaptureError::BadArgument(0, args[0].clone()))?;
    let cap: usize = args[2]
        .parse()
        .map_err(|_| CaptureError::BadArgument(2, args[2].clone()))?;
    let op = match trigger.op()? {
        PgTriggerOperation::Insert => "INSERT",
        PgTriggerOperation::Update => "UPDATE",
        PgTriggerOperation::Delete => "DELETE",
        PgTriggerOperation::Truncate => {
            return Err(CaptureError::UnsupportedEvent("TRUNCATE".into()))
        }
    };
    let data = trigger.trigger_data();

    // SAFETY: inside a row-level AFTER trigger call: tg_relation, tg_trigtuple and (for UPDATE)
    // tg_newtuple are valid for the duration of the call; the datums made here live in the
    // trigger's memory context.
    unsafe {
        let tupdesc = (*data.tg_relation).rd_att;
        let row = |tuple: pg_sys::HeapTuple| row_to_jsonb(tuple, tupdesc);
        let (mut old, mut new) = match op {
            "INSERT" => (None, Some(row(data.tg_trigtuple))),
            "UPDATE" => (Some(row(data.tg_trigtuple)), Some(row(data.tg_newtuple))),
            _ => (Some(row(data.tg_trigtuple)), None),
        };
        if args[3] != "{}" {
            let excluded = parse_text_array(&args[3])
                .ok_or_else(|| CaptureError::BadArgument(3, args[3].clone()))?;
            old = old.map(|j| jsonb_delete_keys(j, &excluded));
            new = new.map(|j| jsonb_delete_keys(j, &excluded));
        }
        let size: usize = [old, new]
            .iter()
            .flatten()
            .map(|d| pgrx::varsize_any(d.cast_mut_ptr()))
            .sum();
        let oversize = if size > cap {
            let non_key = parse_text_array(&args[4])
                .ok_or_else(|| CaptureError::BadArgument(4, args[4].clone()))?;
            old = old.map(|j| jsonb_delete_keys(j, &non_key));
            new = new.map(|j| jsonb_delete_keys(j, &non_key));
            Some(i32::try_from(size).unwrap_or(i32::MAX))
        } else {
            None
        };
        insert_event(
            pg_sys::Oid::from(table_oid),
            &args[1],
            op,
            old,
            new,
            oversize,
        )?;
    }
    wake::wake_at_commit();
    Ok(())
}

/// `to_jsonb(row)` for a heap tuple of `tupdesc`.
unsafe fn row_to_jsonb(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> pg_sys::Datum {
    unsafe {
        let composite = pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc);
        pg_sys::FunctionCall1Coll(to_jsonb_fn(), pg_sys::InvalidOid, composite)
    }
}

/// The cached `to_jsonb` call info, built on first use.
unsafe fn to_jsonb_fn() -> *mut pg_sys::FmgrInfo {
    TO_JSONB.with(|cell| {
        if cell.get().is_null() {
            // SAFETY: allocations in TopMemoryContext live as long as the backend, which is
            // what a per-backend cache needs; nothing here can fail half-way in a way that
            // leaves the cell pointing at freed memory (an ERROR leaves it null).
            unsafe {
                let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
                let flinfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>())
                    .cast::<pg_sys::FmgrInfo>();
                pg_sys::fmgr_info_cxt(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    flinfo,
                    pg_sys::TopMemoryContext,
                );
                // to_jsonb asks its call expression for the argument's type: say "record".
                let arg = pg_sys::makeConst(
                    pg_sys::RECORDOID,
                    -1,
                    pg_sys::InvalidOid,
                    -1,
                    pg_sys::Datum::from(0),
                    true,
                    false,
                );
                let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
                let expr = pg_sys::makeFuncExpr(
                    pg_sys::Oid::from(pg_sys::F_TO_JSONB),
                    pg_sys::JSONBOID,
                    args,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
                );
                (*flinfo).fn_expr = expr.cast();
                pg_sys::MemoryContextSwitchTo(old);
                cell.set(flinfo);
            }
        }
        cell.get()
    })
}

/// `jsonb - text[]`.
unsafe fn jsonb_delete_keys(jsonb: pg_sys::Datum, keys: &[String]) -> pg_sys::Datum {
    let array = keys.to_vec().into_datum().unwrap_or(pg_sys::Datum::from(0));
    // SAFETY: jsonb_delete_array takes (jsonb, text[]), returns jsonb, needs no call expression.
    unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::jsonb_delete_array, &[Some(jsonb), Some(array)])
            .unwrap_or(jsonb)
    }
}

/// A `{a,b,"c d"}` literal as written by `array::text` for identifiers.
fn parse_text_array(literal: &str) -> Option<Vec<String>> {
    let inner = literal.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
        }
        out.push(item);
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// Append one row to observer.events: heap insert plus its index entries.
unsafe fn insert_event(
    table_oid: pg_sys::Oid,
    table_name: &str,
    op: &str,
    old: Option<pg_sys::Datum>,
    new: Option<pg_sys::Datum>,
    oversize: Option<i32>,
) -> Result<(), CaptureError> {
    // SAFETY: catalog lookups and a relation opened with RowExclusiveLock for this
    // transaction, as any INSERT would; the tuple is formed from datums of the right types
    // for each named column, and every column of the table is set or explicitly NULL.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"observer".as_ptr(), true);
        let events = pg_sys::get_relname_relid(c"events".as_ptr(), nsp);
        let seq = pg_sys::get_relname_relid(c"events_id_seq".as_ptr(), nsp);
        if events == pg_sys::InvalidOid {
            return Err(CaptureError::MissingRelation("events"));
        }
        if seq == pg_sys::InvalidOid {
            return Err(CaptureError::MissingRelation("events_id_seq"));
        }
        let rel = pg_sys::table_open(events, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let tupdesc = (*rel).rd_att;
        let natts = usize::try_from((*tupdesc).natts).unwrap_or(0);
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        let attrs = (*tupdesc).attrs.as_slice(natts);
        for (i, attr) in attrs.iter().enumerate() {
            if attr.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(attr.attname.data.as_ptr())
                .to_str()
                .unwrap_or("");
            let value: Option<pg_sys::Datum> = match name {
                "id" => Some(pg_sys::Datum::from(
                    pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| nextval_internal(seq, false)),
                )),
                "tx" => Some(pg_sys::Datum::from(pg_sys::GetTopFullTransactionId().value)),
                "table_oid" => table_oid.into_datum(),
                "table_name" => table_name.into_datum(),
                "op" => op.into_datum(),
                "old" => old,
                "new" => new,
                "oversize" => oversize.and_then(|n| n.into_datum()),
                "created_at" => Some(pg_sys::Datum::from(
                    pg_sys::GetCurrentTransactionStartTimestamp(),
                )),
                other => {
                    pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                    return Err(CaptureError::UnexpectedColumn(other.to_string()));
                }
            };
            if let Some(v) = value {
                values[i] = v;
                nulls[i] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::CatalogTupleInsert(rel, tuple);
        // The lock stays until the end of the transaction, as for any INSERT.
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_text_array;

    #[test]
    fn parses_array_literals_of_identifiers() {
        assert_eq!(parse_text_array("{}"), Some(vec![]));
        assert_eq!(
            parse_text_array("{a,b_c}"),
            Some(vec!["a".into(), "b_c".into()])
        );
        assert_eq!(
            parse_text_array(r#"{"with space","quo\"te",x}"#),
            Some(vec!["with space".into(), "quo\"te".into(), "x".into()])
        );
        assert_eq!(parse_text_array("a,b"), None);
        assert_eq!(parse_text_array(r#"{"open"#), None);
    }
}
