//! `fraiseql-observers`: the action worker (`run`) and the operator CLI.
//!
//! Exit codes: 0 success; 1 runtime failure (database unreachable, a call failed);
//! 2 bad usage, configuration or argument (the message names the field and the fix);
//! 3 not found (an unknown event, dead job or observer).
#![forbid(unsafe_code)]

/// `print!` for the CLI's output: a reader that stops reading (`fraiseql-observers status --json |
/// head`) ends the process quietly with exit code 0, as it would end `cat`, instead of a panic.
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// `println!` for the CLI's output, see [`out!`].
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => {{ $crate::write_stdout(format_args!($($arg)*)); $crate::write_stdout(format_args!("\n")) }};
}

mod cli;

/// Write to stdout; on a closed pipe exit 0, on another write error exit 1 with a message.
fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fraiseql_observers::config::Config;
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
    /// Serve the operator console (the [console] section: listen, operators, read_only) until
    /// SIGTERM/SIGINT. `run` serves it too when the section is present.
    Console,
    /// Show what observer_status() knows: jobs, dispatch, observers, workers' circuit breakers.
    Status {
        /// Print observer_status() as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The whole story of one event: each observer's decision and why, each attempt.
    DebugEvent {
        /// The event id (observer.events.id, the N of a webhook-id evt_N_M).
        id: i64,
        /// Print observer_debug_event() as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter queue: list, show, retry, purge.
    Dlq {
        #[command(subcommand)]
        command: cli::dlq::DlqCommand,
    },
    /// Search the audit trail (observer_search): words of delivered rows or of errors.
    Search {
        /// Web-search syntax: words, "a phrase", -excluded, or. Omit to list by the filters only.
        query: Option<String>,
        #[arg(long)]
        observer: Option<String>,
        /// completed, retry, dead, expired or discarded.
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Hold an observer's deliveries (jobs are kept) until `resume`.
    Pause {
        observer: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Release an observer's held deliveries.
    Resume { observer: String },
    /// Scrape a worker's Prometheus endpoint and summarise it.
    Metrics {
        /// The worker's metrics URL.
        #[arg(long, default_value = "http://127.0.0.1:9187/metrics")]
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Show how the database differs from the observers declared in a TOML file (changes nothing).
    Plan {
        /// The declarations file (see docs/cli.md).
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make the database match the declarations file, in one transaction (all or nothing).
    Apply {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file and print the effective configuration (credentials masked).
    ValidateConfig {
        /// The TOML file to check.
        file: PathBuf,
        /// Print the effective configuration as JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = flag_overrides(&cli);
    let file = match &cli.command {
        Command::ValidateConfig { file, .. } => Some(file.clone()),
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
            eprintln!("error: {}", e.message());
            ExitCode::from(e.code())
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

async fn execute(command: Command, config: Config) -> Result<(), cli::Failure> {
    match command {
        Command::Run { .. } => run_worker(config).await,
        Command::Console => cli::console::console(&config, shutdown_signal()).await,
        Command::Status { json } => cli::status::status(&config, json).await,
        Command::DebugEvent { id, json } => cli::events::debug_event(&config, id, json).await,
        Command::Dlq { command } => command.run(&config).await,
        Command::Search {
            query,
            observer,
            outcome,
            limit,
            json,
        } => {
            cli::events::search(
                &config,
                query.as_deref(),
                observer.as_deref(),
                outcome.as_deref(),
                limit,
                json,
            )
            .await
        }
        Command::Pause { observer, reason } => {
            cli::observers::pause(&config, &observer, reason.as_deref()).await
        }
        Command::Resume { observer } => cli::observers::resume(&config, &observer).await,
        Command::Metrics { url, json } => cli::metrics::metrics(&url, json).await,
        Command::Plan { file, json } => cli::declare::plan_command(&config, &file, json).await,
        Command::Apply { file, json } => cli::declare::apply_command(&config, &file, json).await,
        Command::ValidateConfig { file, json } => {
            use fraiseql_observers::config::Format;
            let format = if json { Format::Json } else { Format::Toml };
            let text = config
                .render(format)
                .map_err(|e| cli::Failure::Runtime(e.to_string()))?;
            // The TOML stays a loadable file: the verdict is a comment line. JSON is only the
            // object (exit 0 says valid).
            if !json {
                outln!(
                    "# {}: valid; effective configuration, credentials masked",
                    file.display()
                );
            }
            out!("{text}");
            Ok(())
        }
    }
}

/// `run`: the worker, and beside it the operator console when the configuration has a
/// `[console]` section; SIGTERM/SIGINT stops both.
async fn run_worker(config: Config) -> Result<(), cli::Failure> {
    let failed = |e: runner::RunError| cli::Failure::Runtime(format!("the worker failed: {e}"));
    if config.console.is_none() {
        return runner::run(config, shutdown_signal()).await.map_err(failed);
    }
    use fraiseql_observers::console;
    let console_failed = |e: console::ConsoleError| cli::Failure::Runtime(e.to_string());
    let served = console::Console::new(&config).map_err(console_failed)?;
    let listener = served.bind().await.map_err(console_failed)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    let serving = tokio::spawn(served.serve(listener, stop.clone().cancelled_owned()));
    let result = runner::run(config, stop.clone().cancelled_owned()).await;
    stop.cancel();
    let _ = serving.await;
    result.map_err(failed)
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
    // Colours only on a terminal: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.format == fraiseql_observers::config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
