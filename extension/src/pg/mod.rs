//! Everything that touches Postgres internals beyond SPI calls from SQL functions: the native
//! capture trigger, the background worker that runs dispatch rounds, and the shared memory that lets committing
//! transactions wake it.

pub mod capture;
pub mod compat;
pub mod deadline;
pub mod dispatcher;
pub mod jsonsize;
pub mod row_jsonb;
pub mod rows;
pub mod types;
pub mod wake;
