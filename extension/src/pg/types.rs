//! How a column type may become JSON outside the writing session, without running anyone's code.
//!
//! Rows captured in binary form become JSON later, in the background dispatcher (the bootstrap
//! superuser) and in `SECURITY DEFINER` queue functions (the extension's owner). The server's
//! `to_jsonb` runs one piece of user code on the way: a cast to `json` of a type that is not
//! built in (`jsonb_categorize_type`). The owner of a type can create such a cast, and the owner of
//! an observed table can add a column of a type it owns: run there, the cast would run with the
//! dispatcher's privileges. Output functions are never user code (a base type needs a superuser
//! to create; enums, ranges, domains and arrays use the server's own).
//!
//! So each column type is classified once per backend (the classes are cached and the cache is
//! dropped on any change to types, casts, functions or roles):
//! - [`JsonClass::Plain`]: `to_jsonb` runs no code but the server's; converted as usual;
//! - [`JsonClass::Text`]: a cast to `json` whose function is not owned by a superuser would run:
//!   the value is delivered as its text form (a JSON string) through its output function instead;
//! - [`JsonClass::Composite`]: the type holds a composite value (directly, or inside an array,
//!   domain or range). A stored composite value is read with its type's *current* layout, which
//!   its owner can change after capture (`ALTER TYPE ... ALTER ATTRIBUTE ... TYPE`): such rows are
//!   converted to JSON at capture time instead (`pg::capture`), never stored in binary form;
//! - [`JsonClass::Missing`]: the type no longer exists.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::pg_sys;

/// What converting a value of a type to JSON may involve (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonClass {
    Plain,
    Text,
    Composite,
    Missing,
}

/// What is known of a type: its [`JsonClass`], and whether its values can print as JSON text
/// much longer than they are stored (see [`expands`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    class: JsonClass,
    expands: bool,
}

thread_local! {
    /// Facts by type oid, for this backend; emptied by [`invalidate`].
    static FACTS: RefCell<HashMap<pg_sys::Oid, Facts>> = RefCell::new(HashMap::new());
    /// Whether [`invalidate`] is registered with the syscache in this backend.
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The class of `typ`, from the cache or the catalogs.
pub fn class_of(typ: pg_sys::Oid) -> JsonClass {
    facts_of(typ).class
}

/// Whether values of `typ` can print as JSON text much longer than they are stored: numeric
/// (digits of any exponent), json and jsonb (which hold numerics), and the arrays, domains and
/// ranges of those (`pg::jsonsize` measures such rows).
pub fn expands(typ: pg_sys::Oid) -> bool {
    facts_of(typ).expands
}

fn facts_of(typ: pg_sys::Oid) -> Facts {
    register();
    if let Some(f) = FACTS.with(|m| m.borrow().get(&typ).copied()) {
        return f;
    }
    let f = facts(typ, 0);
    FACTS.with(|m| m.borrow_mut().insert(typ, f));
    f
}

/// One walk through a type (domains, arrays, ranges) for both facts.
fn facts(typ: pg_sys::Oid, depth: u32) -> Facts {
    let composite = Facts {
        class: JsonClass::Composite,
        expands: true,
    };
    // Types nest (an array of a domain over a range of ...) but not without bound.
    if depth > 32 {
        return composite;
    }
    // SAFETY: catalog lookups by oid; each returns InvalidOid (or raises nothing) for an oid
    // that names no type, which is checked first.
    unsafe {
        if pg_sys::get_typlen(typ) == 0 {
            return Facts {
                class: JsonClass::Missing,
                expands: false,
            };
        }
        let base = pg_sys::getBaseType(typ);
        let elem = pg_sys::get_element_type(base);
        if elem != pg_sys::InvalidOid {
            return facts(elem, depth + 1);
        }
        if pg_sys::type_is_rowtype(base) {
            return composite;
        }
        let subtype = match pg_sys::get_typtype(base) as u8 {
            pg_sys::TYPTYPE_RANGE => Some(pg_sys::get_range_subtype(base)),
            pg_sys::TYPTYPE_MULTIRANGE => Some(pg_sys::get_range_subtype(
                pg_sys::get_multirange_range(base),
            )),
            _ => None,
        };
        let sub = subtype.map(|s| facts(s, depth + 1));
        if sub.is_some_and(|f| f.class == JsonClass::Composite) {
            return composite;
        }
        let expands = [pg_sys::NUMERICOID, pg_sys::JSONOID, pg_sys::JSONBOID].contains(&base)
            || sub.is_some_and(|f| f.expands);
        Facts {
            class: cast_class(base),
            expands,
        }
    }
}

/// The class of a base type that is neither an array nor composite: what
/// jsonb_categorize_type looks for is an explicit cast to json of a type not built in.
fn cast_class(base: pg_sys::Oid) -> JsonClass {
    if base.to_u32() < pg_sys::FirstNormalObjectId {
        return JsonClass::Plain;
    }
    let mut func = pg_sys::InvalidOid;
    // SAFETY: a catalog lookup of the cast from an existing type to json.
    let path = unsafe {
        pg_sys::find_coercion_pathway(
            pg_sys::JSONOID,
            base,
            pg_sys::CoercionContext::COERCION_EXPLICIT,
            &mut func,
        )
    };
    if path == pg_sys::CoercionPathType::COERCION_PATH_FUNC
        && func != pg_sys::InvalidOid
        && !owned_by_superuser(func)
    {
        JsonClass::Text
    } else {
        JsonClass::Plain
    }
}

/// Whether function `func` belongs to a superuser (whose code the dispatcher may run: it is the
/// code of extensions such as PostGIS, installed by one).
fn owned_by_superuser(func: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by oid, released before returning; the struct is read only while
    // the tuple is held.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(func),
        );
        if tup.is_null() {
            return false;
        }
        let owner = (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tup)).proowner;
        pg_sys::ReleaseSysCache(tup);
        pg_sys::superuser_arg(owner)
    }
}

/// Register [`invalidate`] for the catalogs a class depends on, once per backend.
fn register() {
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    for cache in [
        pg_sys::SysCacheIdentifier::TYPEOID,
        pg_sys::SysCacheIdentifier::CASTSOURCETARGET,
        pg_sys::SysCacheIdentifier::PROCOID,
        pg_sys::SysCacheIdentifier::AUTHOID,
    ] {
        // SAFETY: registers a callback that lives as long as the backend (a plain function);
        // Postgres calls it on the backend's own thread during invalidation processing.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(invalidate),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// Syscache callback: a type, cast, function or role changed; forget every class.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    FACTS.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.clear();
        }
    });
}
