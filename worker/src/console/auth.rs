//! Who is asking, and may they change anything. An operator signs in with its token
//! (`POST /login`) and gets a session: a random id in an `HttpOnly`, `SameSite=Strict` cookie,
//! with its own random CSRF token that every form carries back. A GET may instead carry
//! `Authorization: Bearer <token>`. With `loopback_without_token` every visitor is the operator
//! `loopback` and shares one session, which never expires and is never evicted (so no flood of
//! cookieless requests can end it); a POST must still carry its cookie and CSRF token.
//!
//! A POST is refused (403) unless it comes from this origin (`Origin`, `Sec-Fetch-Site`) with
//! its session's CSRF token, and always in read-only mode. Sessions live in memory, for
//! [`SESSION_TTL`], at most [`MAX_SESSIONS`] of them (the oldest go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{constant_time_eq, ConsoleConfig};

use super::http::Req;

/// Name of the session cookie.
pub const COOKIE: &str = "fo_console";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; signing in beyond that ends the oldest.
pub const MAX_SESSIONS: usize = 1000;
/// The operator of a console without tokens.
pub const LOOPBACK: &str = "loopback";

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: String,
    /// The token forms carry in their `csrf` field.
    pub csrf: String,
    created: Instant,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub operator: String,
    /// The session's CSRF token; None for a bearer-token request (which cannot post).
    pub csrf: Option<String>,
    /// A session made for this request (loopback mode): its id goes out as a cookie.
    pub new_session: Option<String>,
}

/// Why a POST is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this console is read-only: it changes nothing")]
    ReadOnly,
    #[error("the request comes from another site")]
    CrossSite,
    #[error("the form's CSRF token is missing or wrong: reload the page and try again")]
    Csrf,
    #[error("this is not a form of this console (application/x-www-form-urlencoded expected)")]
    NotAForm,
}

/// The sessions of the console.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    /// The one session of a console without tokens: id and session, made on first use.
    loopback: std::sync::OnceLock<(String, Session)>,
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    // The kernel's generator; without it no session can be made safely, so nothing is made.
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    assert!(ok, "cannot read /dev/urandom for a session id");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// A new session of `operator`: its id.
    pub fn open(&self, operator: &str) -> String {
        let id = random_hex(32);
        let session = Session {
            operator: operator.to_string(),
            csrf: random_hex(32),
            created: Instant::now(),
        };
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id.clone(), session);
        id
    }

    /// The shared session of a console without tokens: its id and session.
    pub fn loopback(&self) -> (String, Session) {
        self.loopback
            .get_or_init(|| {
                let session = Session {
                    operator: LOOPBACK.to_string(),
                    csrf: random_hex(32),
                    created: Instant::now(),
                };
                (random_hex(32), session)
            })
            .clone()
    }

    /// The live session `id`.
    pub fn get(&self, id: &str) -> Option<Session> {
        if let Some((loopback, session)) = self.loopback.get() {
            if constant_time_eq(loopback.as_bytes(), id.as_bytes()) {
                return Some(session.clone());
            }
        }
        let map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .cloned()
    }

    /// End the session `id`.
    pub fn close(&self, id: &str) {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id);
    }
}

/// The cookie that carries session `id`.
pub fn cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")
}

/// The cookie that ends the session in the browser.
pub fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Who `req` comes from: its session, a bearer token (GET only), or the loopback operator when
/// no token is configured; None: refuse with the sign-in form.
pub fn viewer(req: &Req, config: &ConsoleConfig, sessions: &Sessions) -> Option<Viewer> {
    if let Some(s) = req.cookie(COOKIE).and_then(|id| sessions.get(id)) {
        return Some(Viewer {
            operator: s.operator,
            csrf: Some(s.csrf),
            new_session: None,
        });
    }
    if config.loopback_without_token {
        // A POST without the session's cookie gets no CSRF token to match: refused (403).
        if req.is_post() {
            return Some(Viewer {
                operator: LOOPBACK.to_string(),
                csrf: None,
                new_session: None,
            });
        }
        let (id, session) = sessions.loopback();
        return Some(Viewer {
            operator: session.operator,
            csrf: Some(session.csrf),
            new_session: Some(id),
        });
    }
    if req.is_post() {
        return None;
    }
    let operator = config.operator_of(req.bearer()?)?;
    Some(Viewer {
        operator: operator.to_string(),
        csrf: None,
        new_session: None,
    })
}

/// The request comes from a page of this console: its `Origin`, when sent, is this host, and
/// the browser does not call it cross-site.
pub fn same_origin(req: &Req) -> bool {
    if let Some(site) = req.header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match (req.header("origin"), req.header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
    }
}

/// A console without tokens answers only requests addressed to a loopback name (`Host:
/// localhost`, `127.0.0.1`, `[::1]`, with any port): a page of another site whose name the
/// attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin for the browser, and would
/// otherwise read the pages and post their forms.
pub fn host_allowed(req: &Req, config: &ConsoleConfig) -> bool {
    if !config.loopback_without_token {
        return true;
    }
    let Some(host) = req.header("host") else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// May `viewer` make the change `req` asks for? Checked before anything is read or written.
pub fn check_post(req: &Req, viewer: &Viewer, read_only: bool) -> Result<(), Refusal> {
    if !same_origin(req) {
        return Err(Refusal::CrossSite);
    }
    // A cross-site text/plain or multipart "form" is never one of the console's.
    let form = req.header("content-type").is_some_and(|t| {
        t.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !form {
        return Err(Refusal::NotAForm);
    }
    if read_only {
        return Err(Refusal::ReadOnly);
    }
    let expected = viewer.csrf.as_deref().ok_or(Refusal::Csrf)?;
    if constant_time_eq(expected.as_bytes(), req.field("csrf").as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Csrf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tokens;

    fn config() -> ConsoleConfig {
        ConsoleConfig {
            operators: [("alice".to_string(), "env:T".to_string())].into(),
            tokens: Tokens(vec![("alice".into(), "s3cret-token-0123456789".into())]),
            ..ConsoleConfig::default()
        }
    }

    fn req(method: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Req {
        Req {
            method: method.into(),
            path: "/".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            form: form
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Req::default()
        }
    }

    #[test]
    fn a_bearer_token_opens_gets_only_and_a_wrong_one_nothing() {
        let (c, s) = (config(), Sessions::default());
        let ok = [("authorization", "Bearer s3cret-token-0123456789")];
        assert_eq!(
            viewer(&req("GET", &ok, &[]), &c, &s).map(|v| v.operator),
            Some("alice".into())
        );
        assert!(viewer(&req("POST", &ok, &[]), &c, &s).is_none());
        let bad = [("authorization", "Bearer s3cret-token-0123456780")];
        assert!(viewer(&req("GET", &bad, &[]), &c, &s).is_none());
        assert!(viewer(&req("GET", &[], &[]), &c, &s).is_none());
    }

    #[test]
    fn a_post_needs_this_origin_the_session_csrf_and_a_writable_console() {
        let (c, s) = (config(), Sessions::default());
        let id = s.open("alice");
        let cookie = format!("{COOKIE}={id}");
        let csrf = s.get(&id).map(|x| x.csrf).unwrap_or_default();
        let base = [
            ("cookie", cookie.as_str()),
            ("host", "127.0.0.1:9899"),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        let v = viewer(&req("POST", &base, &[]), &c, &s).expect("session");
        let good = req("POST", &base, &[("csrf", &csrf)]);
        assert_eq!(check_post(&good, &v, false), Ok(()));
        assert_eq!(check_post(&good, &v, true), Err(Refusal::ReadOnly));
        let wrong = req("POST", &base, &[("csrf", "nope")]);
        assert_eq!(check_post(&wrong, &v, false), Err(Refusal::Csrf));
        let foreign = [
            ("cookie", cookie.as_str()),
            ("host", "127.0.0.1:9899"),
            ("origin", "http://127.0.0.1:8000"),
        ];
        let f = req("POST", &foreign, &[("csrf", &csrf)]);
        assert_eq!(check_post(&f, &v, false), Err(Refusal::CrossSite));
        let cross = [
            ("cookie", cookie.as_str()),
            ("sec-fetch-site", "cross-site"),
        ];
        let x = req("POST", &cross, &[("csrf", &csrf)]);
        assert_eq!(check_post(&x, &v, false), Err(Refusal::CrossSite));
        s.close(&id);
        assert!(viewer(&req("POST", &base, &[]), &c, &s).is_none());
    }

    #[test]
    fn a_console_without_tokens_answers_loopback_names_only() {
        let loopback = ConsoleConfig {
            loopback_without_token: true,
            ..ConsoleConfig::default()
        };
        for (host, ok) in [
            ("127.0.0.1:9899", true),
            ("localhost:9899", true),
            ("[::1]:9899", true),
            ("LOCALHOST", true),
            ("evil.example:9899", false),
            ("127.0.0.1.evil.example:9899", false),
            ("10.0.0.5:9899", false),
        ] {
            let r = req("GET", &[("host", host)], &[]);
            assert_eq!(host_allowed(&r, &loopback), ok, "{host}");
            assert!(host_allowed(&r, &config()), "with tokens, any name: {host}");
        }
        assert!(!host_allowed(&req("GET", &[], &[]), &loopback));
    }

    #[test]
    fn the_loopback_session_survives_a_flood_and_posts_need_its_cookie() {
        let s = Sessions::default();
        let loopback = ConsoleConfig {
            loopback_without_token: true,
            ..ConsoleConfig::default()
        };
        let first = viewer(&req("GET", &[], &[]), &loopback, &s).expect("viewer");
        let id = first.new_session.clone().expect("a cookie");
        for _ in 0..MAX_SESSIONS + 10 {
            s.open("someone");
            let _ = viewer(&req("GET", &[], &[]), &loopback, &s);
        }
        s.close(&id);
        let cookie = format!("{COOKIE}={id}");
        let again =
            viewer(&req("GET", &[("cookie", &cookie)], &[]), &loopback, &s).expect("viewer");
        assert_eq!(again.csrf, first.csrf, "the same session");
        let post = viewer(&req("POST", &[], &[]), &loopback, &s).expect("viewer");
        assert!(
            post.csrf.is_none(),
            "a cookieless post has no token to match"
        );
    }

    #[test]
    fn sessions_are_bounded_and_random() {
        let s = Sessions::default();
        let first = s.open("a");
        for _ in 0..MAX_SESSIONS {
            s.open("b");
        }
        assert!(s.get(&first).is_none(), "the oldest session went first");
        assert_ne!(random_hex(16), random_hex(16));
        assert!(cookie("x").contains("HttpOnly; SameSite=Strict"));
    }
}
