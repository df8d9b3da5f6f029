//! The actions a job can ask for, one file each: [`webhook`] (POST the payload), [`slack`]
//! (a message to an incoming webhook), [`email`] (SMTP), [`nats`] (a JetStream publish) and
//! [`redis_stream`] (an `XADD` behind an idempotency guard), plus [`http`], the HTTP client the
//! two HTTP actions share with its SSRF guard and the classification of responses, and
//! [`server`], the address of a stream action's server with its SSRF check. Each action
//! takes a [`crate::job::ClaimedJob`] and returns a [`crate::job::Attempted`]; the runner picks
//! the action, none of them knows the others.

pub mod batch;
pub mod email;
pub mod http;
pub mod nats;
pub mod redis_stream;
pub mod server;
pub mod slack;
pub mod webhook;
