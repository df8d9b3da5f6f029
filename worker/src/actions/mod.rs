//! The actions a job can ask for, one file each: [`webhook`] (POST the payload), [`slack`]
//! (a message to an incoming webhook) and [`email`] (SMTP), plus [`http`], the HTTP client the
//! two HTTP actions share with its SSRF guard and the classification of responses. Each action
//! takes a [`crate::job::ClaimedJob`] and returns a [`crate::job::Attempted`]; the runner picks
//! the action, none of them knows the others.

pub mod batch;
pub mod email;
pub mod http;
pub mod slack;
pub mod webhook;
