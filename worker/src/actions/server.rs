//! The server of a stream action (`nats`, `redis_stream`): its address parsed from the resolved
//! URL, its endpoint key (`scheme://host:port`, the bounded label of breakers, in-flight limits
//! and metrics) and the socket address a connection goes to, checked against the network policy
//! (SSRF guard) before anything is sent. A plain-TCP connection goes to the very address that
//! was checked, so a DNS answer that changes afterwards (rebinding) cannot move it; a TLS one
//! keeps the host name for the certificate check, which a server at another address fails.
//!
//! Error texts name the endpoint, never the URL: it may carry a credential; what a client
//! library says is scrubbed ([`Server::scrub`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fraiseql_observers_core::net;

use crate::job::Outcome;
use crate::secrets::Wire;

/// A stream server's address, from its URL.
#[derive(Clone)]
pub struct Server {
    /// `nats`, `tls`, `redis` or `rediss`.
    pub scheme: String,
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// User name (or NATS token) of the URL, percent-decoded; empty when none.
    pub user: String,
    /// Password of the URL, percent-decoded.
    pub password: Option<String>,
}

/// Never print the credentials.
impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Parse a resolved server URL (`default_port` when it names none); the error never quotes
    /// it.
    pub fn parse(url: &str, default_port: u16) -> Result<Server, String> {
        let u =
            url::Url::parse(url).map_err(|e| format!("the server address does not parse ({e})"))?;
        let host = u.host_str().unwrap_or("");
        if host.is_empty() {
            return Err("the server address has no host".to_string());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Ok(Server {
            scheme: u.scheme().to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: u.port().unwrap_or(default_port),
            user: decode(u.username()),
            password: u.password().map(decode),
        })
    }

    /// Whether the connection is TLS (`tls://`, `rediss://`).
    pub fn tls(&self) -> bool {
        matches!(self.scheme.as_str(), "tls" | "rediss")
    }

    /// `scheme://host:port`: the key of breakers, in-flight limits and metric labels.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }

    /// The first address of the host that the network policy allows, or the outcome of a job
    /// that must not be sent there: every address refused (not the endpoint's fault: nothing
    /// was sent) or the name does not resolve (a fault, as a webhook's DNS failure is).
    pub async fn pin(&self, allow: &[net::Cidr]) -> Result<SocketAddr, Outcome> {
        let endpoint = self.endpoint();
        let addrs: Vec<SocketAddr> =
            match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    return Err(Outcome::Retry {
                        error: format!("cannot resolve {endpoint}: {e}"),
                        not_before: None,
                        endpoint_fault: true,
                    })
                }
            };
        let mut refused = None;
        for addr in &addrs {
            match net::check(addr.ip(), allow) {
                Ok(()) => return Ok(*addr),
                Err(reason) => refused = Some((addr.ip(), reason)),
            }
        }
        let error = match refused {
            Some((ip, reason)) => format!(
                "{endpoint} resolves to {ip}, a {reason} address: refused by the network policy (http.allow_networks); nothing was sent"
            ),
            None => format!("{endpoint} has no address"),
        };
        Err(Outcome::Retry {
            error,
            not_before: None,
            endpoint_fault: refused.is_none(),
        })
    }

    /// A client library's error text without the secrets sent (`wire`'s, when the URL is a
    /// reference) nor the URL's credentials (a literal address may carry them when the action
    /// allows it). Only such texts are scrubbed: the endpoint (`scheme://host:port`) the
    /// worker's own words name is never a secret (the audit trail records it), even when it is
    /// the whole value of a secret URL.
    pub fn scrub(&self, wire: &Wire, text: &str) -> String {
        let mut out = wire.scrub(text);
        for value in [Some(&self.user), self.password.as_ref()]
            .into_iter()
            .flatten()
        {
            if value.len() >= 4 {
                out = out.replace(value.as_str(), "[credential]");
            }
        }
        out
    }

    /// The error of a failed connection to this server (`what`: "NATS", "Redis"): the client's
    /// message scrubbed of credentials, and the fix when it shows a certificate problem.
    pub fn connect_error(&self, what: &str, wire: &Wire, error: &dyn std::fmt::Display) -> String {
        let message = self.scrub(wire, &error.to_string());
        let hint = crate::tls::stream_hint(&message)
            .map(|h| format!("; {h}"))
            .unwrap_or_default();
        format!(
            "cannot connect to the {what} server {}: {message}{hint}",
            self.endpoint()
        )
    }
}

/// How long a failed connection is remembered: the jobs waiting for the same server get its
/// outcome at once instead of each trying (and, for a server that does not answer, waiting
/// for its own timeout) in turn.
const REMEMBER_FAILURE: Duration = Duration::from_secs(1);

/// One client per server URL (NATS clients, Redis connection managers), made on first use and
/// kept; each reconnects by itself afterwards. Making one is serialised per URL, so the jobs
/// that wait for it share it.
pub struct Clients<C> {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot<C>>>>>,
}

enum Slot<C> {
    Empty,
    Ready(C),
    Failed(Instant, Outcome),
}

impl<C> Default for Clients<C> {
    fn default() -> Self {
        Clients {
            slots: Mutex::default(),
        }
    }
}

impl<C: Clone> Clients<C> {
    /// The client of `url`, made with `connect` if there is none (or the last try failed more
    /// than [`REMEMBER_FAILURE`] ago).
    pub async fn get<F, Fut>(&self, url: &str, connect: F) -> Result<C, Outcome>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, Outcome>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(url.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot::Empty)))
                .clone()
        };
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Ready(client) => return Ok(client.clone()),
            Slot::Failed(at, outcome) if at.elapsed() < REMEMBER_FAILURE => {
                return Err(outcome.clone())
            }
            _ => {}
        }
        match connect().await {
            Ok(client) => {
                *slot = Slot::Ready(client.clone());
                Ok(client)
            }
            Err(outcome) => {
                *slot = Slot::Failed(Instant::now(), outcome.clone());
                Err(outcome)
            }
        }
    }
}

/// The endpoint key of a stream server's URL (`scheme://host:port`, `default_port` when it names
/// none); the URL as the endpoint's key would be unbounded and could carry a credential, so an
/// address that does not parse is `<scheme>://invalid`.
pub fn endpoint(url: &str, default_port: u16) -> String {
    match Server::parse(url, default_port) {
        Ok(server) => server.endpoint(),
        Err(_) => crate::job::invalid_endpoint(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_bounded_and_carry_no_credentials() {
        assert_eq!(
            endpoint("nats://app:hunter2@nats.example.com", 4222),
            "nats://nats.example.com:4222"
        );
        assert_eq!(
            endpoint("rediss://:pw@[::1]:6380/2", 6379),
            "rediss://[::1]:6380"
        );
        assert_eq!(endpoint("redis://", 6379), "redis://invalid");
        let s = Server::parse("nats://tok%2Fen12@h.example:1", 4222).expect("parses");
        assert_eq!((s.user.as_str(), s.password.as_deref()), ("tok/en12", None));
        assert_eq!(
            s.scrub(&Wire::default(), "auth failed for tok/en12"),
            "auth failed for [credential]"
        );
        assert!(!format!("{s:?}").contains("tok"), "{s:?}");
    }

    #[tokio::test]
    async fn clients_are_made_once_and_failures_remembered_briefly() {
        let clients: Clients<u32> = Clients::default();
        let made = std::sync::atomic::AtomicU32::new(0);
        let connect = || async { Ok(made.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1) };
        assert_eq!(clients.get("nats://a:1", connect).await, Ok(1));
        assert_eq!(clients.get("nats://a:1", connect).await, Ok(1), "kept");
        assert_eq!(clients.get("nats://b:1", connect).await, Ok(2));
        let down = Outcome::Retry {
            error: "refused".into(),
            not_before: None,
            endpoint_fault: true,
        };
        let fail = || async { Err(down.clone()) };
        assert_eq!(clients.get("nats://c:1", fail).await, Err(down.clone()));
        // Within the second, the failure is the answer: nothing is tried.
        assert_eq!(clients.get("nats://c:1", connect).await, Err(down.clone()));
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_addresses_are_never_connected_to() {
        let s = Server::parse("nats://127.0.0.1:4222", 4222).expect("parses");
        match s.pin(&[]).await {
            Err(Outcome::Retry {
                error,
                endpoint_fault: false,
                ..
            }) => assert!(error.contains("loopback"), "{error}"),
            other => panic!("{other:?}"),
        }
        let allow = net::parse_allowlist("127.0.0.0/8").expect("allowlist");
        assert_eq!(
            s.pin(&allow).await.expect("allowed"),
            "127.0.0.1:4222".parse().expect("addr")
        );
    }
}
