//! Everything that touches Postgres internals beyond SPI calls from SQL functions: the
//! background worker that runs dispatch rounds.

pub mod dispatcher;
