//! `console`: serve the operator console alone (the `[console]` section of the configuration:
//! listen address, operators' token references or loopback-only access, read-only mode) until
//! SIGTERM/SIGINT. `run` serves it beside the worker when the section is present.

use std::future::Future;

use fraiseql_observers::config::Config;
use fraiseql_observers::console::{self, ConsoleError};

use super::{Failure, Result};

/// `fraiseql-observers console`
pub async fn console(config: &Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    console::run(config, shutdown).await.map_err(|e| match e {
        ConsoleError::NotConfigured => Failure::Usage(e.to_string()),
        ConsoleError::Listen { .. } => Failure::Runtime(e.to_string()),
    })
}
