//! The capture triggers, native: they run inside every write to an observed table, so they are
//! written against the server's C API instead of PL/pgSQL. Both append events with a heap insert
//! plus index inserts (`CatalogTupleInsert`, as pg_cron does for its own tables), skipping the
//! executor start-up and SPI round trip a PL/pgSQL `INSERT` pays, and register the dispatcher
//! wake-up for the transaction's commit (`pg::wake`).
//!
//! - `observer_capture_rows()`, statement-level with transition tables (plain tables): one event
//!   per statement (per batch of up to 1,024 rows), rows copied in binary form (`pg::rows`) and
//!   converted to JSON later by the dispatcher. A 100-row INSERT costs one event, not 100.
//! - `observer_capture()`, row-level (partitioned tables and inheritance, where statement
//!   triggers would miss writes addressed to a partition): one event per row, converted with the
//!   server's own `to_jsonb` at once.
//!
//! Trigger arguments, written by `observer.sync_capture()` (see `sql/observers.sql`) and copied
//! by Postgres to every partition:
//!   0  oid of the observed table          1  its name as observers see it
//!   2  payload cap in bytes                3  columns no observer wants, text[] literal
//!   4  every non-key column, text[] literal (what an oversize row loses)

use std::ffi::CStr;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, IntoDatum, PgLogLevel, PgSqlErrorCode, PgTrigger, PgTriggerOperation};

use crate::pg::row_jsonb::row_to_jsonb;
use crate::pg::rows::BatchBuilder;
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
    #[error("fraiseql_observers capture trigger must be an AFTER ... FOR EACH {0} trigger; use observer_create()")]
    WrongKind(&'static str),
    #[error("fraiseql_observers statement capture trigger fired without its transition table; use observer_create()")]
    NoTransitionTable,
    #[error(
        "fraiseql_observers statement capture saw {0} old rows and {1} new rows for one UPDATE"
    )]
    UnpairedRows(usize, usize),
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

#[pg_trigger]
fn observer_capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, CaptureError> {
    capture(trigger).unwrap_or_else(|e| raise(e));
    Ok(None)
}

#[pg_trigger]
fn observer_capture_rows<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, CaptureError> {
    capture_statement(trigger).unwrap_or_else(|e| raise(e));
    Ok(None)
}

/// Raise a capture error with a real SQLSTATE (pgrx would report a trigger's Err as XX000).
fn raise(e: CaptureError) -> ! {
    let code = match e {
        CaptureError::MissingRelation(_) | CaptureError::UnexpectedColumn(_) => {
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        _ => PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
    };
    ErrorReport::new(code, e.to_string(), function_name!())
        .set_hint(
            "Observed tables get their triggers from observer_create(); recreate the observer.",
        )
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// The trigger arguments (see the module documentation).
struct Args {
    table_oid: pg_sys::Oid,
    table_name: String,
    cap: usize,
    excluded: String,
    non_key: String,
}

impl Args {
    /// Check that the trigger is the kind `sync_capture()` attaches (EXECUTE on the functions is
    /// revoked from PUBLIC, so nobody else can), and read its arguments.
    fn of(trigger: &PgTrigger<'_>, row_level: bool) -> Result<(Args, &'static str), CaptureError> {
        let level_ok = matches!(trigger.level(), pgrx::PgTriggerLevel::Row) == row_level;
        if !level_ok || !matches!(trigger.when()?, pgrx::PgTriggerWhen::After) {
            return Err(CaptureError::WrongKind(if row_level {
                "ROW"
            } else {
                "STATEMENT"
            }));
        }
        let mut args = trigger.extra_args()?;
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
        let non_key = args.pop().unwrap_or_default();
        let excluded = args.pop().unwrap_or_default();
        let parsed = Args {
            table_oid: pg_sys::Oid::from(table_oid),
            table_name: std::mem::take(&mut args[1]),
            cap,
            excluded,
            non_key,
        };
        Ok((parsed, op))
    }

    fn excluded(&self) -> Result<Vec<String>, CaptureError> {
        parse_text_array(&self.excluded)
            .ok_or_else(|| CaptureError::BadArgument(3, self.excluded.clone()))
    }

    fn non_key(&self) -> Result<Vec<String>, CaptureError> {
        parse_text_array(&self.non_key)
            .ok_or_else(|| CaptureError::BadArgument(4, self.non_key.clone()))
    }
}

/// Capture the row change that fired `trigger` (row-level).
fn capture(trigger: &PgTrigger<'_>) -> Result<(), CaptureError> {
    let (args, op) = Args::of(trigger, true)?;
    let data = trigger.trigger_data();
    let excluded = if args.excluded == "{}" {
        Vec::new()
    } else {
        args.excluded()?
    };
    // SAFETY: inside a row-level AFTER trigger call: tg_relation, tg_trigtuple and (for UPDATE)
    // tg_newtuple are valid for the duration of the call.
    unsafe {
        let tupdesc = (*data.tg_relation).rd_att;
        let (old, new) = match op {
            "INSERT" => (None, Some(data.tg_trigtuple)),
            "UPDATE" => (Some(data.tg_trigtuple), Some(data.tg_newtuple)),
            _ => (Some(data.tg_trigtuple), None),
        };
        json_event(&args, op, tupdesc, old, new, &excluded, expands(tupdesc))?;
    }
    wake::wake_at_commit();
    Ok(())
}

/// Write one row change as a JSON event (old/new jsonb): row-level capture, and statement
/// capture of tables with composite columns. A row over the payload cap keeps its key only;
/// `expands` ([`expands`]): the cap counts the row's JSON text, not only its jsonb size.
///
/// # Safety
/// The tuples are rows of `tupdesc`, valid for the call; the datums made here live in the
/// current memory context.
unsafe fn json_event(
    args: &Args,
    op: &'static str,
    tupdesc: pg_sys::TupleDesc,
    old: Option<pg_sys::HeapTuple>,
    new: Option<pg_sys::HeapTuple>,
    excluded: &[String],
    expands: bool,
) -> Result<(), CaptureError> {
    // SAFETY: see the function's contract.
    unsafe {
        let row = |tuple: pg_sys::HeapTuple| {
            let j = row_to_jsonb(tuple, tupdesc);
            if excluded.is_empty() {
                j
            } else {
                jsonb_delete_keys(j, excluded)
            }
        };
        let (mut old, mut new) = (old.map(row), new.map(row));
        // The payload cap counts the JSON text where a column can print much longer than it
        // is stored (numerics with huge exponents: pg::jsonsize), else the jsonb's size.
        let size: usize = [old, new]
            .iter()
            .flatten()
            .map(|d| {
                let stored = pgrx::varsize_any(d.cast_mut_ptr());
                if expands {
                    crate::pg::jsonsize::text_len(d.cast_mut_ptr(), args.cap)
                        .map_or(args.cap + 1, |n| n.max(stored))
                } else {
                    stored
                }
            })
            .sum();
        let oversize = if size > args.cap {
            let non_key = args.non_key()?;
            old = old.map(|j| jsonb_delete_keys(j, &non_key));
            new = new.map(|j| jsonb_delete_keys(j, &non_key));
            Some(i32::try_from(size).unwrap_or(i32::MAX))
        } else {
            None
        };
        insert_event(&Event {
            old,
            new,
            oversize,
            ..Event::new(args, op)
        })
    }
}

/// Capture the rows of the statement that fired `trigger` (statement-level, transition tables).
fn capture_statement(trigger: &PgTrigger<'_>) -> Result<(), CaptureError> {
    let (args, op) = Args::of(trigger, false)?;
    let data = trigger.trigger_data();
    let (old_store, new_store) = match op {
        "INSERT" => (std::ptr::null_mut(), data.tg_newtable),
        "UPDATE" => (data.tg_oldtable, data.tg_newtable),
        _ => (data.tg_oldtable, std::ptr::null_mut()),
    };
    if (op != "INSERT" && old_store.is_null()) || (op != "DELETE" && new_store.is_null()) {
        return Err(CaptureError::NoTransitionTable);
    }
    let excluded = args.excluded()?;
    let captured;
    // SAFETY: inside a statement-level AFTER trigger call: tg_relation and the transition
    // tuplestores are valid for the duration of the call. Each store is read through a read
    // pointer of our own (as a transition-table scan does), so other triggers reading the same
    // store are not disturbed. Per-row memory lives in `scratch`, reset after every row and
    // every flushed batch; the batch itself is built in Rust memory.
    unsafe {
        let reldesc = (*data.tg_relation).rd_att;
        let layout = Layout::new(reldesc, &excluded);
        let mut old_rows = Reader::new(old_store, reldesc);
        let mut new_rows = Reader::new(new_store, reldesc);
        let scratch = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"fraiseql_observers capture".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let caller = pg_sys::MemoryContextSwitchTo(scratch);
        let mut rows = StatementRows {
            args: &args,
            op,
            layout: &layout,
            excluded: &excluded,
            scratch,
            old_batch: BatchBuilder::default(),
            new_batch: BatchBuilder::default(),
            captured: false,
        };
        loop {
            let old = old_rows.as_mut().and_then(|r| r.next());
            let new = new_rows.as_mut().and_then(|r| r.next());
            match (old, new) {
                (None, None) => break,
                (Some(_), None) if op == "UPDATE" => {
                    return Err(CaptureError::UnpairedRows(1, 0));
                }
                (None, Some(_)) if op == "UPDATE" => {
                    return Err(CaptureError::UnpairedRows(0, 1));
                }
                _ => rows.row(old, new)?,
            }
        }
        rows.flush()?;
        captured = rows.captured;
        pg_sys::MemoryContextSwitchTo(caller);
        pg_sys::MemoryContextDelete(scratch);
        for reader in [old_rows, new_rows].into_iter().flatten() {
            reader.close();
        }
    }
    if captured {
        wake::wake_at_commit();
    }
    Ok(())
}

/// The rows of one statement on their way to events: stored rows gathered into batches (one
/// event per full batch), and the rows that become events of their own (composite columns,
/// rows over the payload cap) written in between, so that a statement's events keep its row
/// order.
struct StatementRows<'a> {
    args: &'a Args,
    op: &'static str,
    layout: &'a Layout,
    excluded: &'a [String],
    /// Per-row memory, reset after each row and each flushed batch.
    scratch: pg_sys::MemoryContext,
    old_batch: BatchBuilder,
    new_batch: BatchBuilder,
    /// Some event was written.
    captured: bool,
}

impl StatementRows<'_> {
    /// Capture one row: `old`, `new` or both (UPDATE), tuples of the statement's transition
    /// tables.
    ///
    /// # Safety
    /// Called inside the statement-level trigger call that made `self` (see
    /// [`capture_statement`]), with `scratch` the current memory context and tuples read from
    /// that call's transition tables.
    unsafe fn row(
        &mut self,
        old: Option<pg_sys::HeapTuple>,
        new: Option<pg_sys::HeapTuple>,
    ) -> Result<(), CaptureError> {
        let (args, op, layout) = (self.args, self.op, self.layout);
        // SAFETY: see the function's contract.
        unsafe {
            if layout.json_rows {
                // A column holds composite values: they are read with their type's current
                // layout, which may change after capture (pg::types), so these rows become JSON
                // now, each an event of its own, as row-level capture makes them.
                self.flush()?;
                let (reldesc, excluded) = (layout.reldesc, self.excluded);
                json_event(args, op, reldesc, old, new, excluded, layout.expands)?;
                self.captured = true;
                pg_sys::MemoryContextReset(self.scratch);
                return Ok(());
            }
            let old_datum = old.map(|t| layout.datum(t));
            let new_datum = new.map(|t| layout.datum(t));
            let size: usize = [old_datum, new_datum]
                .iter()
                .flatten()
                .map(|d| pgrx::varsize_any(d.cast_mut_ptr()))
                .sum();
            if size > args.cap {
                // Too big for the payload cap: an event of its own holding the row's key only,
                // after the rows before it (a statement's events keep the statement's row order).
                self.flush()?;
                let non_key = args.non_key()?;
                let reldesc = layout.reldesc;
                let key_only =
                    |t: pg_sys::HeapTuple| jsonb_delete_keys(row_to_jsonb(t, reldesc), &non_key);
                insert_event(&Event {
                    old: old.map(key_only),
                    new: new.map(key_only),
                    oversize: Some(i32::try_from(size).unwrap_or(i32::MAX)),
                    ..Event::new(args, op)
                })?;
                self.captured = true;
            } else {
                let batches = [
                    (old_datum, &mut self.old_batch),
                    (new_datum, &mut self.new_batch),
                ];
                for (datum, batch) in batches {
                    if let Some(d) = datum {
                        let p = d.cast_mut_ptr::<u8>();
                        batch.push(std::slice::from_raw_parts(p, pgrx::varsize_any(p.cast())));
                    }
                }
            }
            pg_sys::MemoryContextReset(self.scratch);
            if self.old_batch.is_full() || self.new_batch.is_full() {
                self.flush()?;
                pg_sys::MemoryContextReset(self.scratch);
            }
        }
        Ok(())
    }

    /// Write the rows gathered so far as one batch event (none when there are none).
    ///
    /// # Safety
    /// As for [`StatementRows::row`].
    unsafe fn flush(&mut self) -> Result<(), CaptureError> {
        // SAFETY: see the function's contract.
        let wrote = unsafe {
            flush(
                self.args,
                self.op,
                self.layout,
                &mut self.old_batch,
                &mut self.new_batch,
            )?
        };
        self.captured |= wrote;
        Ok(())
    }
}

/// Write the rows gathered so far as one batch event; false when there were none.
unsafe fn flush(
    args: &Args,
    op: &'static str,
    layout: &Layout,
    old_batch: &mut BatchBuilder,
    new_batch: &mut BatchBuilder,
) -> Result<bool, CaptureError> {
    let rows = old_batch.rows().max(new_batch.rows());
    if rows == 0 {
        return Ok(false);
    }
    let batch = |b: &mut BatchBuilder| {
        (b.rows() > 0)
            .then(|| b.take().as_slice().into_datum())
            .flatten()
    };
    let event = Event {
        nrows: i32::try_from(rows).ok(),
        cols: layout.cols.clone().into_datum(),
        col_types: layout.types.clone().into_datum(),
        old_rows: batch(old_batch),
        new_rows: batch(new_batch),
        ..Event::new(args, op)
    };
    // SAFETY: every datum above matches its event_log column's type.
    unsafe { insert_event(&event)? };
    Ok(true)
}

/// Which columns of the observed table a batch keeps, and how a row becomes a stored datum.
struct Layout {
    reldesc: pg_sys::TupleDesc,
    /// The descriptor of stored rows: the table's own when every column is kept, else one of
    /// the kept columns only.
    desc: pg_sys::TupleDesc,
    keep: Vec<usize>,
    rebuild: bool,
    cols: Vec<String>,
    types: Vec<pg_sys::Oid>,
    /// A kept column holds composite values (`pg::types`): rows are captured as JSON events.
    json_rows: bool,
    /// A column of the table can print much longer than it is stored ([`expands`]).
    expands: bool,
}

/// Whether a column of `tupdesc` can print as JSON text much longer than it is stored
/// (`pg::types::expands`).
///
/// # Safety
/// `tupdesc` is a valid descriptor.
unsafe fn expands(tupdesc: pg_sys::TupleDesc) -> bool {
    // SAFETY: see the function's contract.
    unsafe {
        let natts = usize::try_from((*tupdesc).natts).unwrap_or(0);
        (*tupdesc)
            .attrs
            .as_slice(natts)
            .iter()
            .any(|a| !a.attisdropped && crate::pg::types::expands(a.atttypid))
    }
}

impl Layout {
    /// Keep every live column not excluded by every observer.
    unsafe fn new(reldesc: pg_sys::TupleDesc, excluded: &[String]) -> Layout {
        // SAFETY: `reldesc` is the trigger relation's descriptor, valid during the call.
        unsafe {
            let natts = usize::try_from((*reldesc).natts).unwrap_or(0);
            let attrs = (*reldesc).attrs.as_slice(natts);
            let (mut keep, mut cols, mut types) = (Vec::new(), Vec::new(), Vec::new());
            for (i, attr) in attrs.iter().enumerate() {
                let name = CStr::from_ptr(attr.attname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                if attr.attisdropped || excluded.contains(&name) {
                    continue;
                }
                keep.push(i);
                cols.push(name);
                types.push(attr.atttypid);
            }
            let rebuild = keep.len() != natts;
            let desc = if rebuild {
                let desc = pg_sys::CreateTemplateTupleDesc(i32::try_from(keep.len()).unwrap_or(0));
                for (j, &i) in keep.iter().enumerate() {
                    let attr = &attrs[i];
                    pg_sys::TupleDescInitEntry(
                        desc,
                        i16::try_from(j + 1).unwrap_or(i16::MAX),
                        attr.attname.data.as_ptr(),
                        attr.atttypid,
                        attr.atttypmod,
                        attr.attndims,
                    );
                }
                desc
            } else {
                reldesc
            };
            let json_rows = types
                .iter()
                .any(|t| crate::pg::types::class_of(*t) == crate::pg::types::JsonClass::Composite);
            Layout {
                reldesc,
                desc,
                keep,
                rebuild,
                cols,
                types,
                json_rows,
                expands: json_rows && expands(reldesc),
            }
        }
    }

    /// The row as a composite datum of `desc`, every TOASTed value inlined. Rows stored before
    /// an `ADD COLUMN` (fewer attributes than the table) are rebuilt too, so the added columns
    /// get their defaults, as `SELECT` would show them.
    unsafe fn datum(&self, tuple: pg_sys::HeapTuple) -> pg_sys::Datum {
        // SAFETY: `tuple` is a row of `reldesc`; `values`/`nulls` have one slot per attribute.
        unsafe {
            let natts = self.keep.len();
            let tuple_natts =
                usize::from((*(*tuple).t_data).t_infomask2 & pg_sys::HEAP_NATTS_MASK as u16);
            let all = usize::try_from((*self.reldesc).natts).unwrap_or(0);
            if !self.rebuild && tuple_natts >= all {
                return pg_sys::heap_copy_tuple_as_datum(tuple, self.desc);
            }
            let mut values = vec![pg_sys::Datum::from(0); all];
            let mut nulls = vec![true; all];
            pg_sys::heap_deform_tuple(tuple, self.reldesc, values.as_mut_ptr(), nulls.as_mut_ptr());
            let mut kv: Vec<pg_sys::Datum> = self.keep.iter().map(|&i| values[i]).collect();
            let mut kn: Vec<bool> = self.keep.iter().map(|&i| nulls[i]).collect();
            debug_assert_eq!(kv.len(), natts);
            let rebuilt = pg_sys::heap_form_tuple(self.desc, kv.as_mut_ptr(), kn.as_mut_ptr());
            pg_sys::heap_copy_tuple_as_datum(rebuilt, self.desc)
        }
    }
}

/// Reads one transition table, in order, through a read pointer of its own.
struct Reader {
    store: *mut pg_sys::Tuplestorestate,
    slot: *mut pg_sys::TupleTableSlot,
    pointer: i32,
    /// The trigger call's context. A store spilled to disk reads each tuple into memory
    /// allocated in the current context and owned by the slot (freed when the next one comes):
    /// it must not be the per-row context that capture resets.
    cxt: pg_sys::MemoryContext,
}

impl Reader {
    unsafe fn new(store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc) -> Option<Reader> {
        if store.is_null() {
            return None;
        }
        // SAFETY: a transition tuplestore of the firing statement, rewindable by construction.
        unsafe {
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsMinimalTuple);
            let pointer =
                pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as i32);
            pg_sys::tuplestore_select_read_pointer(store, pointer);
            pg_sys::tuplestore_rescan(store);
            Some(Reader {
                store,
                slot,
                pointer,
                cxt: pg_sys::CurrentMemoryContext,
            })
        }
    }

    /// The next row as a heap tuple (a copy) in the current memory context.
    unsafe fn next(&mut self) -> Option<pg_sys::HeapTuple> {
        // SAFETY: the slot was made for this store's descriptor; the store's tuple is read in
        // the call's context (see `cxt`), the heap tuple copied in the caller's.
        unsafe {
            let caller = pg_sys::MemoryContextSwitchTo(self.cxt);
            pg_sys::tuplestore_select_read_pointer(self.store, self.pointer);
            let more = pg_sys::tuplestore_gettupleslot(self.store, true, false, self.slot);
            pg_sys::MemoryContextSwitchTo(caller);
            if !more {
                return None;
            }
            Some(pg_sys::ExecFetchSlotHeapTuple(
                self.slot,
                false,
                std::ptr::null_mut(),
            ))
        }
    }

    unsafe fn close(self) {
        // SAFETY: the slot is ours and no longer used.
        unsafe { pg_sys::ExecDropSingleTupleTableSlot(self.slot) }
    }
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

/// One row of observer.event_log: a row-level event (old/new jsonb) or a batch (binary rows).
struct Event<'a> {
    table_oid: pg_sys::Oid,
    table_name: &'a str,
    op: &'static str,
    old: Option<pg_sys::Datum>,
    new: Option<pg_sys::Datum>,
    oversize: Option<i32>,
    nrows: Option<i32>,
    cols: Option<pg_sys::Datum>,
    col_types: Option<pg_sys::Datum>,
    old_rows: Option<pg_sys::Datum>,
    new_rows: Option<pg_sys::Datum>,
}

impl<'a> Event<'a> {
    fn new(args: &'a Args, op: &'static str) -> Event<'a> {
        Event {
            table_oid: args.table_oid,
            table_name: &args.table_name,
            op,
            old: None,
            new: None,
            oversize: None,
            nrows: None,
            cols: None,
            col_types: None,
            old_rows: None,
            new_rows: None,
        }
    }
}

/// Append one row to observer.event_log: heap insert plus its index entries.
unsafe fn insert_event(event: &Event<'_>) -> Result<(), CaptureError> {
    // SAFETY: catalog lookups and a relation opened with RowExclusiveLock for this
    // transaction, as any INSERT would; the tuple is formed from datums of the right types
    // for each named column, and every column of the table is set or explicitly NULL.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"observer".as_ptr(), true);
        let events = pg_sys::get_relname_relid(c"event_log".as_ptr(), nsp);
        let seq = pg_sys::get_relname_relid(c"events_id_seq".as_ptr(), nsp);
        if events == pg_sys::InvalidOid {
            return Err(CaptureError::MissingRelation("event_log"));
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
                "table_oid" => event.table_oid.into_datum(),
                "table_name" => event.table_name.into_datum(),
                "op" => event.op.into_datum(),
                "old" => event.old,
                "new" => event.new,
                "oversize" => event.oversize.and_then(|n| n.into_datum()),
                "nrows" => event.nrows.and_then(|n| n.into_datum()),
                "cols" => event.cols,
                "col_types" => event.col_types,
                "old_rows" => event.old_rows,
                "new_rows" => event.new_rows,
                "created_at" => Some(pg_sys::Datum::from(
                    pg_sys::GetCurrentTransactionStartTimestamp(),
                )),
                "role" => writer_role(),
                "context" => writer_context(),
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

/// The role the write runs as (`current_user`), by name: who wrote the change.
unsafe fn writer_role() -> Option<pg_sys::Datum> {
    // SAFETY: GetUserNameFromId with noerr returns NULL for a role that does not exist (it always
    // does: the write runs as it) or a palloc'd NUL-terminated name.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true);
        if name.is_null() {
            return None;
        }
        CStr::from_ptr(name)
            .to_str()
            .ok()
            .and_then(|n| n.into_datum())
    }
}

/// `fraiseql_observers.context` as jsonb, when the transaction set it (checked by `SET`, see
/// `gucs::check_context`; jsonb_in checks it again and raises on anything it cannot read).
unsafe fn writer_context() -> Option<pg_sys::Datum> {
    let context = crate::gucs::context()?;
    // SAFETY: jsonb_in takes a NUL-terminated string and returns a palloc'd jsonb or raises.
    unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(context.as_ptr().into())])
    }
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
