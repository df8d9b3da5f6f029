//! A real HTTP/1.1 server on loopback that records every request, for the integration tests.
//! Its answer is programmable per request (e.g. fail the first attempt of every event).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Request query (after `?`), as sent; None when the request had none.
    pub query: Option<String>,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body, parsed as JSON (Null if it was not JSON).
    pub body: serde_json::Value,
    /// Body, as received (signatures are over these bytes).
    pub raw: Vec<u8>,
    /// The status the sink answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decides the status for a request, given everything received before it.
pub type Responder = Arc<dyn Fn(&Received, &[Received]) -> u16 + Send + Sync>;

/// A responder that answers `first` to the first request of each webhook-id and `later` to every
/// later one (a flaky endpoint, or one that fails a takeover).
pub fn first_attempt_then(first: u16, later: u16) -> Responder {
    Arc::new(move |req, before| {
        let id = req.header("webhook-id");
        if before.iter().any(|r| r.header("webhook-id") == id) {
            later
        } else {
            first
        }
    })
}

/// A full answer: status, extra headers, and a delay before answering (longer than the
/// action's timeout: the worker sees a timeout).
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    /// The body; `ok` when None.
    pub body: Option<String>,
}

impl Reply {
    /// Answer `status` at once.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            ..Reply::default()
        }
    }
}

/// Decides the whole answer for a request, given everything received before it.
pub type Script = Arc<dyn Fn(&Received, &[Received]) -> Reply + Send + Sync>;

/// Called with every request as it arrives (the demo sink prints them).
pub type Observer = Arc<dyn Fn(&Received) + Send + Sync>;

/// The sink: records requests, answers with the responder's status.
#[derive(Clone)]
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    /// A sink that answers 200 to everything.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Arc::new(|_, _| 200)).await
    }

    /// A sink whose answers come from `responder`.
    pub async fn start_with(responder: Responder) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, responder, None).await
    }

    /// A sink whose answers come from `responder`, each sent `delay` after the request arrived
    /// (a slow endpoint: deliveries are in flight long enough to interrupt them).
    pub async fn start_with_delay(responder: Responder, delay: Duration) -> anyhow::Result<Self> {
        Self::spawn("127.0.0.1:0".parse()?, responder, None, delay).await
    }

    /// A sink on `addr`; every request is also passed to `on_request` as it arrives.
    pub async fn start_on(
        addr: SocketAddr,
        responder: Responder,
        on_request: Option<Observer>,
    ) -> anyhow::Result<Self> {
        Self::spawn(addr, responder, on_request, Duration::ZERO).await
    }

    /// A sink whose whole answers (status, headers, delay) come from `script`.
    pub async fn start_scripted(script: Script) -> anyhow::Result<Self> {
        Self::serve("127.0.0.1:0".parse()?, script, None).await
    }

    async fn spawn(
        addr: SocketAddr,
        responder: Responder,
        on_request: Option<Observer>,
        delay: Duration,
    ) -> anyhow::Result<Self> {
        let script: Script = Arc::new(move |r, before| Reply {
            status: responder(r, before),
            delay,
            ..Reply::default()
        });
        Self::serve(addr, script, on_request).await
    }

    async fn serve(
        addr: SocketAddr,
        responder: Script,
        on_request: Option<Observer>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                let responder = responder.clone();
                let on_request = on_request.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        let responder = responder.clone();
                        let on_request = on_request.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut r = Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().map(str::to_string),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            v.to_str().unwrap_or("").to_string(),
                                        )
                                    })
                                    .collect(),
                                body: serde_json::from_slice(&bytes)
                                    .unwrap_or(serde_json::Value::Null),
                                raw: bytes.to_vec(),
                                status: 0,
                                at: Instant::now(),
                            };
                            let reply = {
                                let mut all = store.lock().unwrap_or_else(|e| e.into_inner());
                                let reply = responder(&r, &all);
                                r.status = reply.status;
                                all.push(r.clone());
                                reply
                            };
                            if let Some(f) = &on_request {
                                f(&r);
                            }
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut response = Response::builder().status(
                                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
                            );
                            for (name, value) in &reply.headers {
                                response = response.header(*name, value.as_str());
                            }
                            let body = match reply.body {
                                Some(b) => Bytes::from(b),
                                None => Bytes::from_static(b"ok"),
                            };
                            Ok::<_, Infallible>(response.body(Full::new(body)).unwrap_or_default())
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, received })
    }

    /// URL of `path` on this sink.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until at least `n` requests have arrived, or `timeout` passes.
    pub async fn wait_received(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || async move { self.received().len() >= n }).await
    }

    /// Number of requests answered with 2xx so far.
    pub fn delivered(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count()
    }
}
