//! Pure-Rust pieces shared by the extension (which validates observer definitions at
//! `observer_create`) and the worker (which performs them). It must never depend on pgrx: the
//! worker links it, and pgrx's rlib references symbols that exist only inside the server.
#![forbid(unsafe_code)]

pub mod action;
pub mod backoff;
pub mod net;
pub mod prune;
pub mod secret;
pub mod template;
pub mod text;

pub use action::{
    Action, ActionError, EmailAction, NatsAction, RedisStreamAction, SlackAction, WebhookAction,
};
pub use secret::{SecretRef, ValueOrSecret};
