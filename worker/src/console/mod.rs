//! The operator console: server-rendered pages over the extension's public SQL functions, served
//! by `fraiseql-observers console` (or by `run` when the configuration has a `[console]`
//! section). One file per concern: `http` (requests, answers and their security headers), `auth`
//! (tokens, sessions, CSRF and origin checks), `pool` (the database sessions), `html` (escaping
//! and the page frame), `chart` (inline SVG), `mask` (secrets kept off the pages), and `pages/`,
//! one file per page family. The assets (`assets/console.css`, `assets/console.js`) are compiled
//! in and served from `/assets`.
//!
//! Every page reads through the `observer_*` functions as the role the console connects as
//! (`console.database_url`, else `database_url`), which needs admin access; every change runs in
//! one transaction with its entry in the operator action log (`observer_console_record`).

mod auth;
mod chart;
mod html;
mod http;
mod mask;
mod pages;
mod pool;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::config::{Config, ConsoleConfig};
use crate::db::DbError;

use auth::{Sessions, Viewer};
use http::{Req, Resp};

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the configuration has no [console] section; add one with [console.operators] (token references) or loopback_without_token = true (docs/configuration.md)")]
    NotConfigured,
    #[error("cannot listen on console.listen {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Why a page could not be shown; each becomes an error page with its status.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Refused(#[from] auth::Refusal),
}

impl PageError {
    /// The status and the message shown (the server's message and hint for a database error).
    fn status_and_message(&self) -> (u16, String) {
        match self {
            PageError::NotFound(m) => (404, m.clone()),
            PageError::BadInput(m) => (400, m.clone()),
            PageError::Refused(r) => (403, r.to_string()),
            PageError::Db(e) => match e.sqlstate() {
                Some("42704") => (404, e.server_message()),
                Some("42501") => (403, format!(
                    "the console's database role may not do this: {}\nhint: give it admin access as the extension's owner: SELECT observer_grant('<role>', 'admin')",
                    e.server_message()
                )),
                Some(s) if s.starts_with("22") => (400, e.server_message()),
                _ if unreachable_database(e) => (
                    503,
                    format!("the database cannot be reached: {}", crate::config::redact(&e.to_string())),
                ),
                _ => (500, e.server_message()),
            },
        }
    }
}

/// The database is down or refused the console (not a statement that failed).
fn unreachable_database(e: &DbError) -> bool {
    match e {
        DbError::Call { source, .. } => source.is_closed(),
        _ => true,
    }
}

/// What a page answers.
pub type PageResult = Result<Resp, PageError>;

/// The console's state: its settings, database sessions and operators' sessions.
pub struct Console {
    config: ConsoleConfig,
    pool: pool::Pool,
    sessions: Sessions,
    ops: pages::dlq::Operations,
}

/// Bind `console.listen` (at start-up, so that a taken port is a clear error).
async fn bind(config: &ConsoleConfig) -> Result<tokio::net::TcpListener, ConsoleError> {
    let listen_error = |source| ConsoleError::Listen {
        addr: config.listen.clone(),
        source,
    };
    let addr: SocketAddr = config.listen.parse().map_err(|_| {
        listen_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an address:port",
        ))
    })?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(listen_error)
}

impl Console {
    /// The console of `config` (which must have a `[console]` section).
    pub fn new(config: &Config) -> Result<Arc<Console>, ConsoleError> {
        let console = config.console.clone().ok_or(ConsoleError::NotConfigured)?;
        let url = if console.database_url.is_empty() {
            config.database_url.clone()
        } else {
            console.database_url.clone()
        };
        Ok(Arc::new(Console {
            config: console,
            pool: pool::Pool::new(&url),
            sessions: Sessions::default(),
            ops: pages::dlq::Operations::default(),
        }))
    }

    /// Bind its `console.listen` address (before serving, so that a taken port is a clear
    /// error at start-up).
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, ConsoleError> {
        bind(&self.config).await
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        tracing::info!(listen = %self.config.listen, read_only = self.config.read_only, "console serving");
        tokio::pin!(shutdown);
        let connections = crate::serve::Connections::default();
        loop {
            let (stream, permit) = tokio::select! {
                () = &mut shutdown => break,
                a = connections.accept(&listener, "console") => a,
            };
            let console = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |request| {
                    let console = console.clone();
                    async move {
                        let resp = match Req::read(request).await {
                            Ok(req) => console.answer(&req).await,
                            Err(e) => {
                                let status = match e {
                                    http::ReqError::Slow => 408,
                                    _ => 413,
                                };
                                Resp::text(status, "request refused")
                                    .with("x-reason", e.to_string())
                            }
                        };
                        Ok::<_, Infallible>(resp.into_response())
                    }
                });
                // At most serve::MAX_CONNECTIONS at once; a client that sends its headers
                // slowly (or never) is dropped after serve::HEADER_TIMEOUT, one that sends its
                // body slowly after http::BODY_TIMEOUT.
                let _ = crate::serve::http1()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        tracing::info!("console stopped");
    }

    /// The answer to `req`: the open routes, then sign-in, then the pages of a viewer.
    async fn answer(self: &Arc<Self>, req: &Req) -> Resp {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => return Resp::text(200, "ok\n"),
            ("GET", "/assets/console.css") => {
                return Resp::asset(
                    "text/css; charset=utf-8",
                    include_bytes!("assets/console.css"),
                )
            }
            ("GET", "/assets/console.js") => {
                return Resp::asset(
                    "text/javascript; charset=utf-8",
                    include_bytes!("assets/console.js"),
                )
            }
            _ => {}
        }
        if !auth::host_allowed(req, &self.config) {
            return Resp::text(403, "this console answers requests for localhost only\n");
        }
        if req.path == "/login" {
            return pages::login::login(self, req);
        }
        let Some(viewer) = auth::viewer(req, &self.config, &self.sessions) else {
            return pages::login::form(401, "Sign in to see this page.");
        };
        let mut resp = match self.route(req, &viewer).await {
            Ok(resp) => resp,
            Err(e) => self.error_page(&viewer, &e),
        };
        if let Some(id) = &viewer.new_session {
            resp.headers.push(("set-cookie", auth::cookie(id)));
        }
        resp
    }

    async fn route(self: &Arc<Self>, req: &Req, viewer: &Viewer) -> PageResult {
        if req.is_post() {
            // Signing out changes nothing in the database: a read-only console allows it.
            let read_only = self.config.read_only && req.path != "/logout";
            auth::check_post(req, viewer, read_only)?;
        }
        let path = req.path.trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", []) => pages::overview::page(self, viewer).await,
            ("POST", ["logout"]) => Ok(pages::login::logout(self, req)),
            ("GET", ["observers"]) => pages::observers::list(self, viewer).await,
            ("GET", ["observers", name]) => pages::observers::show(self, viewer, name).await,
            ("POST", ["observers", name, change]) => {
                pages::observers::change(self, req, viewer, name, change).await
            }
            ("GET", ["events"]) => pages::events::search(self, req, viewer).await,
            ("GET", ["events", id]) => pages::events::show(self, req, viewer, id).await,
            ("GET", ["dlq"]) => pages::dlq::list(self, req, viewer).await,
            ("GET", ["dlq", "operations", id]) => pages::dlq::progress(self, viewer, id),
            ("GET", ["dlq", id]) => pages::dlq::show(self, viewer, id).await,
            ("POST", ["dlq", "retry"]) => pages::dlq::retry(self, req, viewer).await,
            ("POST", ["dlq", "purge"]) => pages::dlq::purge(self, req, viewer).await,
            ("GET", ["actions"]) => pages::log::page(self, viewer).await,
            _ => Err(PageError::NotFound(format!(
                "no page at {}",
                html::cut(&req.path, 100)
            ))),
        }
    }

    /// The frame of a page for `viewer`.
    fn layout<'a>(&'a self, viewer: &'a Viewer) -> html::Layout<'a> {
        html::Layout {
            operator: Some(&viewer.operator),
            csrf: viewer.csrf.as_deref().unwrap_or(""),
            read_only: self.config.read_only,
        }
    }

    /// Whether this viewer may be offered forms that change something.
    fn can_change(&self, viewer: &Viewer) -> bool {
        !self.config.read_only && viewer.csrf.is_some()
    }

    fn error_page(&self, viewer: &Viewer, e: &PageError) -> Resp {
        let (status, message) = e.status_and_message();
        if status >= 500 {
            tracing::warn!(status, error = %message, "console page failed");
        }
        let body = format!(
            "<p class=\"error\" data-testid=\"error\">{}</p><p><a href=\"/\">Back to the overview</a></p>",
            html::esc(&message).replace('\n', "<br>")
        );
        Resp::html(
            status,
            self.layout(viewer)
                .page("Something went wrong", "", None, &body),
        )
    }
}

/// Serve the console of `config` on its `listen` address until `shutdown` resolves: for
/// `fraiseql-observers console`, and beside the worker in `run`.
pub async fn run(config: &Config, shutdown: impl Future<Output = ()>) -> Result<(), ConsoleError> {
    let console = Console::new(config)?;
    let listener = console.bind().await?;
    console.serve(listener, shutdown).await;
    Ok(())
}
