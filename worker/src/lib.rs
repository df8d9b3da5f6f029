//! The fraiseql_observers action worker and CLI, as a library so that tests can drive it.
//! `main.rs` only parses the command line, loads the configuration and calls in here.
#![forbid(unsafe_code)]

pub mod audit;
pub mod breaker;
pub mod config;
pub mod db;
pub mod email;
pub mod metrics;
pub mod ratelimit;
pub mod runner;
pub mod secrets;
pub mod shared;
pub mod signing;
pub mod slack;
pub mod tls;
pub mod version;
pub mod webhook;
