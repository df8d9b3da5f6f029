//! Row batches: how statement-level capture stores the rows of one statement in one event.
//!
//! Converting a row to JSON costs about as much as inserting it, so the capture trigger does not:
//! it copies each row in the server's binary tuple form into a batch, and the dispatcher and the
//! queue convert rows to JSON later, off the writer's path (`observer_decode_rows`,
//! `observer_decode_row`). A batch is a `bytea`:
//!
//! ```text
//! u32 n | u32 end[0] .. u32 end[n-1] | row 0 | row 1 | ... | row n-1      (native byte order)
//! ```
//!
//! where row i spans `[end[i-1], end[i])` (row 0 starts after the header) and is a composite datum
//! (a varlena holding a heap tuple header and the row's data) with every TOASTed value inlined,
//! so it does not depend on the table's storage. The column names and types of the tuples are
//! stored next to the batch (`event_log.cols`, `event_log.col_types`): decoding builds the tuple
//! descriptor from them, so a column added, dropped or retyped between capture and decoding cannot
//! misread a row. The header lets the queue read one row of a large batch without reading the rest
//! (`pg_detoast_datum_slice` decompresses a compressed batch only up to the end of the slice).

use std::ffi::CString;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::nullable::Nullable;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::pg::jsonsize;
use crate::pg::types::{self, JsonClass};

/// Rows per batch at most (event ids are allocated in blocks of this size: row i of the event
/// whose id is `b` has event id `b + i`; see `observer.events_id_seq`).
pub const MAX_ROWS: usize = 1024;
/// Bytes of row data after which a batch is closed (a statement writes several events).
pub const MAX_BYTES: usize = 256 * 1024;

/// The rows of one batch being built.
#[derive(Default)]
pub struct BatchBuilder {
    ends: Vec<u32>,
    data: Vec<u8>,
}

impl BatchBuilder {
    pub fn push(&mut self, row: &[u8]) {
        self.data.extend_from_slice(row);
        self.ends
            .push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
    }

    pub fn rows(&self) -> usize {
        self.ends.len()
    }

    pub fn is_full(&self) -> bool {
        self.ends.len() >= MAX_ROWS || self.data.len() >= MAX_BYTES
    }

    /// The batch in its stored form; the builder is left empty.
    pub fn take(&mut self) -> Vec<u8> {
        let header = 4 * (1 + self.ends.len());
        let mut out = Vec::with_capacity(header + self.data.len());
        let n = u32::try_from(self.ends.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_ne_bytes());
        for end in &self.ends {
            let end = u32::try_from(header)
                .unwrap_or(u32::MAX)
                .saturating_add(*end);
            out.extend_from_slice(&end.to_ne_bytes());
        }
        out.extend_from_slice(&self.data);
        self.ends.clear();
        self.data.clear();
        out
    }
}

/// Why a batch cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "row batch is malformed ({0}); the event log was written by another version or damaged"
    )]
    Malformed(&'static str),
    #[error("column {0:?} of a captured row has type oid {1}, which no longer exists")]
    MissingType(String, u32),
    #[error(
        "column {0:?} of a captured row holds a composite value stored in binary form (an earlier \
         version's capture), which cannot be read safely once its type may have changed"
    )]
    StoredComposite(String),
    #[error("row batch describes {0} column names and {1} column types")]
    Descriptor(usize, usize),
    #[error(
        "a captured row of {0} bytes would print as JSON text of more than {1} bytes (numbers \
         with huge exponents?), too long to deliver"
    )]
    TooLong(usize, usize),
}

impl From<DecodeError> for ErrorReport {
    fn from(e: DecodeError) -> Self {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            e.to_string(),
            "fraiseql_observers row batch",
        )
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    usize::try_from(u32::from_ne_bytes(raw)).ok()
}

/// The byte span of every row of a whole batch, checked against its length.
pub fn spans(batch: &[u8]) -> Result<Vec<(usize, usize)>, DecodeError> {
    let n = read_u32(batch, 0).ok_or(DecodeError::Malformed("no header"))?;
    if n > MAX_ROWS {
        return Err(DecodeError::Malformed("too many rows"));
    }
    let mut start = 4 + 4 * n;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let end = read_u32(batch, 4 + 4 * i).ok_or(DecodeError::Malformed("short header"))?;
        if end < start || end > batch.len() {
            return Err(DecodeError::Malformed("row offsets out of range"));
        }
        out.push((start, end));
        start = end;
    }
    Ok(out)
}

/// The span of row `k` from a prefix of the batch holding at least `4 * (k + 2)` bytes, or None
/// when the batch has no row `k`.
pub fn span_of(prefix: &[u8], k: usize) -> Result<Option<(usize, usize)>, DecodeError> {
    let n = read_u32(prefix, 0).ok_or(DecodeError::Malformed("no header"))?;
    if n > MAX_ROWS {
        return Err(DecodeError::Malformed("too many rows"));
    }
    if k >= n {
        return Ok(None);
    }
    let start = if k == 0 {
        4 + 4 * n
    } else {
        read_u32(prefix, 4 * k).ok_or(DecodeError::Malformed("short header"))?
    };
    let end = read_u32(prefix, 4 * (k + 1)).ok_or(DecodeError::Malformed("short header"))?;
    if end < start {
        return Err(DecodeError::Malformed("row offsets out of range"));
    }
    Ok(Some((start, end)))
}

/// A jsonb datum made by the server, returned as is (pgrx's `JsonB` would round-trip it through
/// serde_json).
pub struct RawJsonb(pg_sys::Datum);

impl RawJsonb {
    /// A jsonb datum to return as is.
    pub fn from_datum(datum: pg_sys::Datum) -> Self {
        RawJsonb(datum)
    }
}

pgrx::impl_sql_translatable!(RawJsonb, "jsonb");

// SAFETY: the datum is a jsonb value allocated in the function's memory context, which is what
// the caller expects back.
unsafe impl BoxRet for RawJsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: see the impl.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// A by-reference argument kept as its datum, unboxed as is (no detoasting, no copy), with the
/// SQL type the server checks every call against.
macro_rules! raw_arg {
    ($(#[$doc:meta])* $name:ident, $sql:literal) => {
        $(#[$doc])*
        pub struct $name(pub pg_sys::Datum);

        pgrx::impl_sql_translatable!($name, $sql);

        impl pgrx::FromDatum for $name {
            unsafe fn from_polymorphic_datum(
                datum: pg_sys::Datum,
                is_null: bool,
                _typoid: pg_sys::Oid,
            ) -> Option<Self> {
                (!is_null).then_some($name(datum))
            }
        }

        // SAFETY: the datum is the argument's own, unboxed as is (a varlena pointer).
        unsafe impl<'fcx> ArgAbi<'fcx> for $name {
            unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
                let index = arg.index();
                // SAFETY: see the impl.
                unsafe {
                    arg.unbox_arg_using_from_datum()
                        .unwrap_or_else(|| panic!("argument {index} must not be null"))
                }
            }

            unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
                // SAFETY: see the impl.
                unsafe { arg.unbox_arg_using_from_datum().into() }
            }
        }
    };
}

raw_arg!(
    /// A `bytea` argument, kept as its (possibly compressed or TOASTed) datum so that a slice of
    /// it can be read without reading the rest (`pg_detoast_datum_slice`).
    RawBytea,
    "bytea"
);

raw_arg!(
    /// A `jsonb` argument, kept as its datum (pgrx's `JsonB` would parse it with serde_json).
    RawJsonbArg,
    "jsonb"
);

/// What decoding one batch's rows needs: the descriptor of the stored rows and, when some
/// column's type must not go through `to_jsonb` (see `pg::types`), a second descriptor in which
/// those columns are `text`, with the output functions that make their text.
struct Decoder {
    desc: pg_sys::TupleDesc,
    text: Option<TextColumns>,
    /// A column can print much longer than it is stored (`pg::types::expands`): each row's JSON
    /// text is measured ([`MAX_EXPANSION`]).
    expands: bool,
}

/// A row's JSON text may be this many times its stored size, plus [`EXPANSION_SLACK`] bytes; a
/// row that would print longer (numerics with huge exponents) cannot be read (`pg::jsonsize`).
const MAX_EXPANSION: usize = 8;
const EXPANSION_SLACK: usize = 64 * 1024;

struct TextColumns {
    desc: pg_sys::TupleDesc,
    /// Per column: the output function to apply, or None to keep the value.
    output: Vec<Option<pg_sys::FmgrInfo>>,
}

/// The decoder for the stored column names and types.
fn decoder(cols: &[String], types: &[pg_sys::Oid]) -> Result<Decoder, DecodeError> {
    if cols.len() != types.len() {
        return Err(DecodeError::Descriptor(cols.len(), types.len()));
    }
    let classes: Vec<JsonClass> = types.iter().map(|t| types::class_of(*t)).collect();
    for ((name, typ), class) in cols.iter().zip(types).zip(&classes) {
        match class {
            JsonClass::Missing => return Err(DecodeError::MissingType(name.clone(), typ.to_u32())),
            JsonClass::Composite => return Err(DecodeError::StoredComposite(name.clone())),
            _ => {}
        }
    }
    let desc = descriptor(cols, types)?;
    let expands = types.iter().any(|t| types::expands(*t));
    if !classes.contains(&JsonClass::Text) {
        return Ok(Decoder {
            desc,
            text: None,
            expands,
        });
    }
    let as_text: Vec<pg_sys::Oid> = types
        .iter()
        .zip(&classes)
        .map(|(t, c)| {
            if *c == JsonClass::Text {
                pg_sys::TEXTOID
            } else {
                *t
            }
        })
        .collect();
    let output = types
        .iter()
        .zip(&classes)
        .map(|(t, c)| (*c == JsonClass::Text).then(|| output_function(*t)))
        .collect();
    Ok(Decoder {
        desc,
        text: Some(TextColumns {
            desc: descriptor(cols, &as_text)?,
            output,
        }),
        expands,
    })
}

/// The output function of type `typ` (which exists), looked up into a FmgrInfo of the current
/// memory context.
fn output_function(typ: pg_sys::Oid) -> pg_sys::FmgrInfo {
    // SAFETY: catalog lookups for an existing type; the FmgrInfo is filled by fmgr_info.
    unsafe {
        let mut func = pg_sys::InvalidOid;
        let mut varlena = false;
        pg_sys::getTypeOutputInfo(typ, &mut func, &mut varlena);
        let mut info: pg_sys::FmgrInfo = std::mem::zeroed();
        pg_sys::fmgr_info(func, &mut info);
        info
    }
}

/// A value as a `text` datum, through its type's output function `out` (never user code: see
/// `pg::types`).
///
/// # Safety
/// `value` is a non-null datum of the type `out` was looked up for.
unsafe fn as_text(out: &pg_sys::FmgrInfo, value: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: see the function's contract; the call gets a copy of the FmgrInfo (it may cache
    // in fn_extra).
    unsafe {
        let mut out = *out;
        let cstr = pg_sys::OutputFunctionCall(&mut out, value);
        pg_sys::Datum::from(pg_sys::cstring_to_text(cstr))
    }
}

/// A blessed (registered) record descriptor for the stored column names and types.
fn descriptor(cols: &[String], types: &[pg_sys::Oid]) -> Result<pg_sys::TupleDesc, DecodeError> {
    let natts =
        i32::try_from(cols.len()).map_err(|_| DecodeError::Malformed("too many columns"))?;
    // SAFETY: a template descriptor of `natts` entries, each initialised below from a type that
    // exists (checked first, since TupleDescInitEntry raises on a missing type).
    unsafe {
        let desc = pg_sys::CreateTemplateTupleDesc(natts);
        for (i, (name, typ)) in cols.iter().zip(types).enumerate() {
            if pg_sys::get_typlen(*typ) == 0 {
                return Err(DecodeError::MissingType(name.clone(), typ.to_u32()));
            }
            let cname =
                CString::new(name.as_str()).map_err(|_| DecodeError::Malformed("column name"))?;
            let attnum =
                i16::try_from(i + 1).map_err(|_| DecodeError::Malformed("too many columns"))?;
            pg_sys::TupleDescInitEntry(desc, attnum, cname.as_ptr(), *typ, -1, 0);
        }
        Ok(pg_sys::BlessTupleDesc(desc))
    }
}

/// The length in a 4-byte (uncompressed, inline) varlena header, as `VARSIZE_4B` reads it.
fn varsize_4b(header: usize) -> Option<usize> {
    if cfg!(target_endian = "little") {
        (header & 3 == 0).then_some(header >> 2)
    } else {
        (header >> 30 == 0).then_some(header & 0x3FFF_FFFF)
    }
}

/// `TYPEALIGN`: `off` rounded up to a multiple of `align` (a power of two).
fn align_up(off: usize, align: usize) -> usize {
    (off + align - 1) & !(align - 1)
}

fn alignment(attalign: std::ffi::c_char) -> usize {
    match attalign as u8 {
        pg_sys::TYPALIGN_SHORT => 2,
        pg_sys::TYPALIGN_INT => 4,
        pg_sys::TYPALIGN_DOUBLE => 8,
        _ => 1,
    }
}

/// Check that a stored row is a heap tuple of `desc` whose every attribute lies inside it, with
/// no TOAST pointer: the bytes come from the event log, and the server's tuple code trusts what
/// it reads (an attribute length past the end, or an external pointer, would read memory or
/// relations it must not). Values themselves are checked by their types' output functions.
fn check_tuple(row: &[u8], desc: pg_sys::TupleDesc) -> Result<(), DecodeError> {
    const HEADER: usize = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_bits);
    if row.len() < HEADER {
        return Err(DecodeError::Malformed("row shorter than a tuple header"));
    }
    let infomask = u16::from_ne_bytes([
        row[std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_infomask)],
        row[std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_infomask) + 1],
    ]);
    let infomask2 = u16::from_ne_bytes([
        row[std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_infomask2)],
        row[std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_infomask2) + 1],
    ]);
    let hoff = usize::from(row[std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_hoff)]);
    let natts = usize::from(infomask2 & pg_sys::HEAP_NATTS_MASK as u16);
    // SAFETY: `desc` is a descriptor built by `descriptor()`, with natts entries.
    let (desc_natts, attrs) = unsafe {
        let n = usize::try_from((*desc).natts).unwrap_or(0);
        (n, (*desc).attrs.as_slice(n))
    };
    if natts > desc_natts {
        return Err(DecodeError::Malformed(
            "row has more columns than its batch",
        ));
    }
    if u32::from(infomask) & pg_sys::HEAP_HASEXTERNAL != 0 {
        return Err(DecodeError::Malformed("row holds a TOAST pointer"));
    }
    let has_nulls = u32::from(infomask) & pg_sys::HEAP_HASNULL != 0;
    let bitmap = if has_nulls { natts.div_ceil(8) } else { 0 };
    if hoff < HEADER + bitmap || hoff > row.len() || hoff % 8 != 0 {
        return Err(DecodeError::Malformed("tuple header"));
    }
    let data = &row[hoff..];
    let mut off = 0usize;
    for (i, attr) in attrs.iter().enumerate().take(natts) {
        if has_nulls && row[HEADER + i / 8] & (1 << (i % 8)) == 0 {
            continue;
        }
        let len = match attr.attlen {
            -1 => varlena_len(data, &mut off, attr)?,
            -2 => cstring_len(data, off)?,
            n if n > 0 => {
                off = align_up(off, alignment(attr.attalign));
                usize::try_from(n).unwrap_or(usize::MAX)
            }
            _ => return Err(DecodeError::Malformed("attribute length")),
        };
        off = off
            .checked_add(len)
            .filter(|end| *end <= data.len())
            .ok_or(DecodeError::Malformed("attribute past the end"))?;
    }
    Ok(())
}

/// The length of the varlena attribute at `data[*off..]`, its header read where
/// att_align_pointer puts it (`off` moves to that start), refusing TOAST pointers and lengths
/// shorter than their header.
fn varlena_len(
    data: &[u8],
    off: &mut usize,
    attr: &pg_sys::FormData_pg_attribute,
) -> Result<usize, DecodeError> {
    // att_align_pointer: a short (1-byte header) varlena is not aligned.
    let first = *data
        .get(*off)
        .ok_or(DecodeError::Malformed("attribute past the end"))?;
    if first == 0 {
        *off = align_up(*off, alignment(attr.attalign));
    }
    let first = *data
        .get(*off)
        .ok_or(DecodeError::Malformed("attribute past the end"))?;
    let one_byte = if cfg!(target_endian = "little") {
        first & 0x01 == 0x01
    } else {
        first & 0x80 == 0x80
    };
    let external = if cfg!(target_endian = "little") {
        first == 0x01
    } else {
        first == 0x80
    };
    if external {
        return Err(DecodeError::Malformed("row holds a TOAST pointer"));
    }
    if one_byte {
        let n = if cfg!(target_endian = "little") {
            usize::from(first >> 1)
        } else {
            usize::from(first & 0x7F)
        };
        if n < 1 {
            return Err(DecodeError::Malformed("varlena length"));
        }
        return Ok(n);
    }
    let raw = read_u32(data, *off).ok_or(DecodeError::Malformed("varlena header"))?;
    // 4-byte header, plain or compressed: the length is in the same bits.
    let n = if cfg!(target_endian = "little") {
        raw >> 2
    } else {
        raw & 0x3FFF_FFFF
    };
    if n < 4 {
        return Err(DecodeError::Malformed("varlena length"));
    }
    Ok(n)
}

/// The length of the cstring attribute at `data[off..]`, its terminating NUL included.
fn cstring_len(data: &[u8], off: usize) -> Result<usize, DecodeError> {
    let rest = data
        .get(off..)
        .ok_or(DecodeError::Malformed("attribute past the end"))?;
    rest.iter()
        .position(|b| *b == 0)
        .ok_or(DecodeError::Malformed("unterminated cstring"))
        .map(|n| n + 1)
}

/// One stored row as jsonb, through the server's `to_jsonb(record)` (columns whose type must not
/// go through it become their text first, see [`Decoder`]).
fn row_to_jsonb(row: &[u8], decoder: &Decoder) -> Result<pg_sys::Datum, DecodeError> {
    let stated = read_u32(row, 0).and_then(varsize_4b);
    if stated != Some(row.len()) {
        return Err(DecodeError::Malformed("row length"));
    }
    // The tuple proper starts after the composite datum's own header (a HeapTupleHeaderData whose
    // first field is the varlena length).
    check_tuple(row, decoder.desc)?;
    // SAFETY: the copy is palloc'd (MAXALIGNed, as tuple data must be) with the row's exact
    // length, checked above to be a tuple of `desc` whose attributes all lie inside it and hold
    // no TOAST pointer. heap_copy_tuple_as_datum makes it a record of the blessed type (type id,
    // typmod and whatever else the server stamps on a composite datum for its descriptor), so no
    // header field is written by hand here.
    unsafe {
        let copy = pg_sys::palloc(row.len()).cast::<u8>();
        std::ptr::copy_nonoverlapping(row.as_ptr(), copy, row.len());
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_len = u32::try_from(row.len()).map_err(|_| DecodeError::Malformed("row length"))?;
        tuple.t_data = copy.cast::<pg_sys::HeapTupleHeaderData>();
        let json = match &decoder.text {
            None => crate::pg::row_jsonb::row_to_jsonb(&mut tuple, decoder.desc),
            Some(text) => {
                let natts = usize::try_from((*decoder.desc).natts).unwrap_or(0);
                let mut values = vec![pg_sys::Datum::from(0); natts];
                let mut nulls = vec![true; natts];
                pg_sys::heap_deform_tuple(
                    &mut tuple,
                    decoder.desc,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                );
                for (i, out) in text.output.iter().enumerate() {
                    if let (Some(out), false) = (out, nulls[i]) {
                        values[i] = as_text(out, values[i]);
                    }
                }
                let formed =
                    pg_sys::heap_form_tuple(text.desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                crate::pg::row_jsonb::row_to_jsonb(formed, text.desc)
            }
        };
        pg_sys::pfree(copy.cast());
        if decoder.expands {
            let limit = row.len() * MAX_EXPANSION + EXPANSION_SLACK;
            if jsonsize::text_len(json.cast_mut_ptr(), limit).is_none() {
                return Err(DecodeError::TooLong(row.len(), limit));
            }
        }
        Ok(json)
    }
}

/// A whole batch (`rows`, a bytea datum: the SQL callers pass event_log columns), detoasted and
/// copied into Rust memory.
fn whole_batch(rows: &RawBytea) -> Vec<u8> {
    // SAFETY: detoasting a bytea datum (the SQL signature admits nothing else) gives a
    // 4-byte-header varlena whose data is copied out before anything else runs.
    unsafe {
        let v = pg_sys::pg_detoast_datum(rows.0.cast_mut_ptr());
        let len = pgrx::varsize(v) - pg_sys::VARHDRSZ;
        std::slice::from_raw_parts(pgrx::vardata_any(v).cast::<u8>(), len).to_vec()
    }
}

/// One row of a set-returning decode: a row that cannot be read raises (an SRF's items cannot
/// return an error).
fn row_or_raise(row: &[u8], decoder: &Decoder) -> RawJsonb {
    match row_to_jsonb(row, decoder) {
        Ok(d) => RawJsonb(d),
        Err(err) => {
            ErrorReport::from(err).report(PgLogLevel::ERROR);
            unreachable!("an ERROR report does not return")
        }
    }
}

/// `observer_decode_rows(cols text[], col_types oid[], rows bytea) RETURNS SETOF jsonb`: every
/// row of a batch as jsonb, in order. Internal (the dispatcher's): granted to nobody.
///
/// The Rust names (and so the library's symbols, `decode_rows_wrapper`...) differ from the SQL
/// names: 0.1.0 declared these functions over `anyelement` with the symbols
/// `observer_decode_rows_wrapper`..., which now belong to `pg::compat` (they refuse), so 0.1.0's
/// SQL running on this library can never hand these a value that is not a `bytea`.
#[pg_extern(stable, parallel_safe, name = "observer_decode_rows")]
pub fn decode_rows(
    cols: Vec<String>,
    col_types: Vec<pg_sys::Oid>,
    rows: RawBytea,
) -> Result<SetOfIterator<'static, RawJsonb>, ErrorReport> {
    let decoder = decoder(&cols, &col_types)?;
    let batch = whole_batch(&rows);
    let spans = spans(&batch)?;
    Ok(SetOfIterator::new(
        spans
            .into_iter()
            .map(move |(s, e)| row_or_raise(&batch[s..e], &decoder)),
    ))
}

/// `observer_decode_rows_at(cols text[], col_types oid[], rows bytea, ks integer[]) RETURNS
/// SETOF jsonb`: rows `ks` (from 0) of a batch, one result per element of `ks` in its order (NULL
/// for a row the batch does not have), so that `ROWS FROM (unnest(ks), ...)` pairs them. The
/// batch is detoasted and its descriptor built once for all of them: the queue reads the rows of
/// a claimed batch of jobs, which mostly share a few batches, with one call per batch instead of
/// one `observer_decode_row` per job (each decompressing the batch up to its row). Internal (the
/// queue's): granted to nobody.
#[pg_extern(stable, parallel_safe, name = "observer_decode_rows_at")]
pub fn decode_rows_at(
    cols: Vec<String>,
    col_types: Vec<pg_sys::Oid>,
    rows: RawBytea,
    ks: Vec<Option<i32>>,
) -> Result<SetOfIterator<'static, Option<RawJsonb>>, ErrorReport> {
    let decoder = decoder(&cols, &col_types)?;
    let batch = whole_batch(&rows);
    let spans = spans(&batch)?;
    Ok(SetOfIterator::new(ks.into_iter().map(move |k| {
        let (s, e) = *k
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| spans.get(k))?;
        Some(row_or_raise(&batch[s..e], &decoder))
    })))
}

/// `observer_decode_row(cols text[], col_types oid[], rows bytea, k integer) RETURNS jsonb`:
/// row `k` (from 0) of a batch, reading only its header and that row; NULL when there is no such
/// row. Internal (the queue's): granted to nobody.
#[pg_extern(stable, parallel_safe, name = "observer_decode_row")]
pub fn decode_row(
    cols: Vec<String>,
    col_types: Vec<pg_sys::Oid>,
    rows: RawBytea,
    k: i32,
) -> Result<Option<RawJsonb>, ErrorReport> {
    let Ok(k) = usize::try_from(k) else {
        return Ok(None);
    };
    if k >= MAX_ROWS {
        return Ok(None);
    }
    let slice = |offset: usize, len: usize| -> Result<Vec<u8>, DecodeError> {
        let off = i32::try_from(offset).map_err(|_| DecodeError::Malformed("offset"))?;
        let len = i32::try_from(len).map_err(|_| DecodeError::Malformed("length"))?;
        // SAFETY: a slice of a bytea datum (the SQL signature admits nothing else); the result
        // is a 4-byte-header varlena holding at most `len` bytes, copied out at once.
        unsafe {
            let v = pg_sys::pg_detoast_datum_slice(rows.0.cast_mut_ptr(), off, len);
            let got = pgrx::varsize(v) - pg_sys::VARHDRSZ;
            Ok(std::slice::from_raw_parts(pgrx::vardata_any(v).cast::<u8>(), got).to_vec())
        }
    };
    let prefix = slice(0, 4 * (k + 2))?;
    let Some((start, end)) = span_of(&prefix, k)? else {
        return Ok(None);
    };
    let row = slice(start, end - start)?;
    if row.len() != end - start {
        return Err(DecodeError::Malformed("row beyond the end of the batch").into());
    }
    let decoder = decoder(&cols, &col_types)?;
    Ok(Some(RawJsonb(row_to_jsonb(&row, &decoder)?)))
}

/// `observer_row_to_jsonb(row anyelement) RETURNS jsonb`: a live row (a composite value) as jsonb,
/// as the server's `to_jsonb` makes it but without running anyone's code: a column whose type
/// would go through a cast to json not owned by a superuser, or that holds composite values
/// (whose attributes could), becomes its text (`pg::types`). `observer_backfill` converts the rows
/// of an observed table with it, as the admin who calls it.
#[pg_extern(stable, parallel_safe)]
pub fn observer_row_to_jsonb(row: pgrx::AnyElement) -> Result<RawJsonb, ErrorReport> {
    // SAFETY: a type lookup by the argument's resolved type oid.
    if !unsafe { pg_sys::type_is_rowtype(row.oid()) } {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            "observer_row_to_jsonb takes a row",
            function_name!(),
        ));
    }
    // SAFETY: the argument is a composite datum (checked above), detoasted into a heap tuple
    // header whose type id and typmod name its descriptor (a copy, ours to use); the tuple is
    // deformed with that descriptor, and the values copied into a new tuple of a descriptor with
    // the same attributes, some of them retyped text and given text values.
    unsafe {
        let header = pg_sys::pg_detoast_datum(row.datum().cast_mut_ptr())
            .cast::<pg_sys::HeapTupleHeaderData>();
        let typeid = (*header).t_choice.t_datum.datum_typeid;
        let typmod = (*header).t_choice.t_datum.datum_typmod;
        let desc = pg_sys::lookup_rowtype_tupdesc_copy(typeid, typmod);
        let natts = usize::try_from((*desc).natts).unwrap_or(0);
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_len = u32::try_from(pgrx::varsize_any(header.cast())).unwrap_or(0);
        tuple.t_data = header;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(&mut tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let out_desc = pg_sys::CreateTupleDescCopy(desc);
        let attrs: Vec<(bool, pg_sys::Oid, pg_sys::NameData)> = (*desc)
            .attrs
            .as_slice(natts)
            .iter()
            .map(|a| (a.attisdropped, a.atttypid, a.attname))
            .collect();
        for (i, (dropped, typ, name)) in attrs.iter().enumerate() {
            if *dropped || types::class_of(*typ) == JsonClass::Plain {
                continue;
            }
            if !nulls[i] {
                values[i] = as_text(&output_function(*typ), values[i]);
            }
            let attnum = i16::try_from(i + 1).unwrap_or(i16::MAX);
            pg_sys::TupleDescInitEntry(
                out_desc,
                attnum,
                name.data.as_ptr(),
                pg_sys::TEXTOID,
                -1,
                0,
            );
        }
        // An anonymous record type of its own: with the table's row type kept, to_jsonb would
        // look the table's descriptor up again (and its casts).
        (*out_desc).tdtypeid = pg_sys::RECORDOID;
        (*out_desc).tdtypmod = -1;
        let out_desc = pg_sys::BlessTupleDesc(out_desc);
        let formed = pg_sys::heap_form_tuple(out_desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Ok(RawJsonb(crate::pg::row_jsonb::row_to_jsonb(
            formed, out_desc,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_their_row_spans() {
        let mut b = BatchBuilder::default();
        b.push(b"aaaa");
        b.push(b"");
        b.push(b"cc");
        assert_eq!(b.rows(), 3);
        let batch = b.take();
        assert_eq!(b.rows(), 0);
        let s = spans(&batch).expect("well-formed");
        let rows: Vec<&[u8]> = s.iter().map(|&(a, e)| &batch[a..e]).collect();
        assert_eq!(rows, vec![&b"aaaa"[..], b"", b"cc"]);
        for (k, span) in s.iter().enumerate() {
            assert_eq!(span_of(&batch, k).expect("row k"), Some(*span));
        }
        assert_eq!(span_of(&batch, 3).expect("header"), None);
    }

    #[test]
    fn malformed_batches_are_refused() {
        assert!(spans(&[]).is_err());
        let mut bad = 2u32.to_ne_bytes().to_vec();
        bad.extend_from_slice(&100u32.to_ne_bytes());
        bad.extend_from_slice(&4u32.to_ne_bytes());
        assert!(spans(&bad).is_err());
    }
}
