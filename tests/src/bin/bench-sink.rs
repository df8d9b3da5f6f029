//! `bench-sink ADDR`: the HTTP sink of `benches/e2e.sh`. It answers 200 to every POST at once and
//! keeps only counts and latencies, so that it costs the machine as little as possible.
//!
//! Latency of a delivery = the time the request arrived − `data.new.ts_us` of its body: the
//! microseconds since the Unix epoch that the benchmark's table stores in every row
//! (`clock_timestamp()` at INSERT, same machine, same clock).
//!
//! `GET /stats` returns, as JSON: `count` (events: one per POST, or one per element of a batch's
//! JSON array), `requests` (POSTs), `unique` (distinct `data.event_id`), `no_ts` (documents
//! without `ts_us`), `first_us` / `last_us` (arrival of the first and last POST, epoch
//! microseconds) and `p50_us`, `p90_us`, `p99_us`, `max_us` of the latencies. `POST /reset`
//! clears everything.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct Stats {
    count: u64,
    requests: u64,
    no_ts: u64,
    first_us: Option<i64>,
    last_us: Option<i64>,
    events: HashSet<i64>,
    latencies_us: Vec<i64>,
}

impl Stats {
    fn record(&mut self, now_us: i64, body: &[u8]) {
        self.requests += 1;
        self.first_us.get_or_insert(now_us);
        self.last_us = Some(now_us);
        match serde_json::from_slice(body).unwrap_or_default() {
            serde_json::Value::Array(batch) => {
                for doc in &batch {
                    self.record_event(now_us, doc);
                }
            }
            doc => self.record_event(now_us, &doc),
        }
    }

    fn record_event(&mut self, now_us: i64, doc: &serde_json::Value) {
        self.count += 1;
        let data = &doc["data"];
        if let Some(id) = data["event_id"].as_i64() {
            self.events.insert(id);
        }
        match data["new"]["ts_us"].as_i64() {
            Some(ts) => self.latencies_us.push(now_us - ts),
            None => self.no_ts += 1,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        // Nearest rank: the smallest latency with at least q of them at or below it.
        let pct = |q: f64| -> Option<i64> {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
        };
        serde_json::json!({
            "count": self.count,
            "requests": self.requests,
            "unique": self.events.len(),
            "no_ts": self.no_ts,
            "first_us": self.first_us,
            "last_us": self.last_us,
            "p50_us": pct(0.50),
            "p90_us": pct(0.90),
            "p99_us": pct(0.99),
            "max_us": sorted.last(),
        })
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn handle(
    stats: Arc<Mutex<Stats>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = now_us();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
    let answer = match (method, path.as_str()) {
        (Method::GET, "/stats") => stats.to_json().to_string(),
        (Method::POST, "/reset") => {
            *stats = Stats::default();
            "{}".to_string()
        }
        (Method::POST, _) => {
            stats.record(arrived, &body);
            String::new()
        }
        _ => "GET /stats, POST /reset, POST anything else to record it\n".to_string(),
    };
    Ok(Response::new(Full::new(Bytes::from(answer))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8098".to_string());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("bench-sink listening on http://{}", listener.local_addr()?);
    let stats: Arc<Mutex<Stats>> = Arc::default();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(stats.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
