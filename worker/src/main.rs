//! `fraiseql-observers`: the action worker (`run`) and the operator CLI.
//!
//! Exit codes: 0 success; 1 runtime failure (database unreachable, a call failed);
//! 2 bad usage or configuration (the message names the field and the fix).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fraiseql_observers::config::Config;
use fraiseql_observers::db::Db;
use fraiseql_observers::runner;

#[derive(Parser)]
#[command(
    name = "fraiseql-observers",
    version,
    about = "Action worker and CLI for the fraiseql_observers PostgreSQL extension"
)]
struct Cli {
    /// TOML configuration file (layered over the built-in defaults; see `config.default.toml`).
    #[arg(long, global = true, env = "FRAISEQL_OBSERVERS_CONFIG")]
    config: Option<PathBuf>,
    /// Database connection string (overrides `database_url`).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Log format on stderr (overrides `log.format`): structured `json` lines or `text`.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: claim jobs, perform their actions, report outcomes, until SIGTERM/SIGINT.
    Run {
        /// Name recorded on claimed jobs (default: <hostname>-<pid>).
        #[arg(long)]
        worker_id: Option<String>,
        /// Do not run dispatch rounds from this worker (leave them to the background worker).
        #[arg(long)]
        no_dispatch: bool,
    },
    /// Print observer_status().
    Status,
    /// Check a configuration file and print the effective configuration.
    ValidateConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = flag_overrides(&cli);
    let file = match &cli.command {
        Command::ValidateConfig { file } => Some(file.clone()),
        _ => cli.config.clone(),
    };
    let config = match Config::load(file.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn flag_overrides(cli: &Cli) -> Vec<(String, toml::Value)> {
    let mut o = Vec::new();
    if let Some(url) = &cli.database_url {
        o.push(("database_url".to_string(), toml::Value::String(url.clone())));
    }
    if let Some(format) = &cli.log_format {
        o.push((
            "log.format".to_string(),
            toml::Value::String(format.clone()),
        ));
    }
    if let Command::Run {
        worker_id,
        no_dispatch,
    } = &cli.command
    {
        if let Some(id) = worker_id {
            o.push(("worker_id".to_string(), toml::Value::String(id.clone())));
        }
        if *no_dispatch {
            o.push(("dispatch".to_string(), toml::Value::Boolean(false)));
        }
    }
    o
}

async fn execute(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Run { .. } => runner::run(config, shutdown_signal())
            .await
            .context("the worker failed"),
        Command::Status => {
            let db = Db::connect(&config.database_url, Arc::new(tokio::sync::Notify::new()))
                .await
                .context("failed to read observer_status()")?;
            println!(
                "{}",
                db.status()
                    .await
                    .context("failed to read observer_status()")?
            );
            Ok(())
        }
        Command::ValidateConfig { file } => {
            println!("{}: valid", file.display());
            println!("{:#?}", config.redacted());
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGTERM handler; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
