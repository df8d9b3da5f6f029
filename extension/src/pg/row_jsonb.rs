//! Rows to JSON through the server's own `to_jsonb(record)`, called directly with its call info
//! prepared once per backend: the row-level capture trigger converts each row at once
//! (`pg::capture`), and the row decoders convert the binary rows a statement-level trigger
//! stored (`pg::rows`). Below both, so that neither reaches into the other.

use std::cell::Cell;

use pgrx::pg_sys;

thread_local! {
    /// `to_jsonb(record)` prepared once per backend (TopMemoryContext): it needs an expression
    /// that tells it the argument is a record.
    static TO_JSONB: Cell<*mut pg_sys::FmgrInfo> = const { Cell::new(std::ptr::null_mut()) };
}

/// `to_jsonb(row)` for a heap tuple of `tupdesc`.
///
/// # Safety
/// `tuple` must be a valid heap tuple of `tupdesc`, in a transaction.
pub(crate) unsafe fn row_to_jsonb(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> pg_sys::Datum {
    // SAFETY: the caller passes a valid tuple of `tupdesc` inside a transaction (the copy is
    // palloc'd in the current memory context); the call info lives as long as the backend.
    unsafe {
        let composite = pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc);
        pg_sys::FunctionCall1Coll(to_jsonb_fn(), pg_sys::InvalidOid, composite)
    }
}

/// The cached `to_jsonb(record)` call info, built on first use.
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
