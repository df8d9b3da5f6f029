//! The console's HTTP plumbing: a request read into a [`Req`] (method, path, query and form
//! fields, headers, cookies; bodies capped at [`MAX_BODY`]) and a [`Resp`] written with the
//! security headers every answer carries: a strict Content-Security-Policy (scripts and styles
//! from `/assets` only, no inline code, no framing, forms posted to this origin only),
//! `nosniff`, no referrer beyond this origin, and no caching of pages that hold data.

use std::collections::HashMap;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// Largest request body read (a DLQ form lists the selected job ids).
pub const MAX_BODY: usize = 1024 * 1024;

/// Longest wait for a request's body, read before anyone is signed in: a client trickling a
/// large body byte by byte would otherwise hold its connection for as long as it likes.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every answer's Content-Security-Policy.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A request as the console's pages see it.
#[derive(Debug, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    /// Query string fields, in order (a name may repeat).
    pub query: Vec<(String, String)>,
    /// Form fields of a POST body, in order (a name may repeat, e.g. `job`).
    pub form: Vec<(String, String)>,
    /// Header names lower case; the first value of each.
    pub headers: HashMap<String, String>,
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReqError {
    #[error("the request body is over {MAX_BODY} bytes")]
    TooLarge,
    #[error("the request body could not be read")]
    Body,
    #[error("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
    Slow,
}

impl Req {
    /// Read `request`, its body included (up to [`MAX_BODY`]).
    pub async fn read(request: Request<Incoming>) -> Result<Req, ReqError> {
        let (parts, body) = request.into_parts();
        let mut headers = HashMap::new();
        for (name, value) in &parts.headers {
            if let Ok(v) = value.to_str() {
                headers
                    .entry(name.as_str().to_ascii_lowercase())
                    .or_insert_with(|| v.to_string());
            }
        }
        let query = parts.uri.query().map(pairs).unwrap_or_default();
        let form = if parts.method == hyper::Method::POST {
            let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
            let bytes = read
                .await
                .map_err(|_| ReqError::Slow)?
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ReqError::TooLarge
                    } else {
                        ReqError::Body
                    }
                })?
                .to_bytes();
            pairs(&String::from_utf8_lossy(&bytes))
        } else {
            Vec::new()
        };
        Ok(Req {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query,
            form,
            headers,
        })
    }

    /// The header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The first query field `name`, trimmed; "" when absent.
    pub fn param(&self, name: &str) -> &str {
        first(&self.query, name)
    }

    /// The first form field `name`, trimmed; "" when absent.
    pub fn field(&self, name: &str) -> &str {
        first(&self.form, name)
    }

    /// Every form field `name`.
    pub fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.form
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.trim())
    }

    /// The cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
    }

    /// The token of an `Authorization: Bearer <token>` header.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }

    pub fn is_post(&self) -> bool {
        self.method == "POST"
    }
}

fn pairs(text: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

/// An answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Resp {
    /// An HTML page.
    pub fn html(status: u16, body: String) -> Resp {
        Resp {
            status,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from(body),
        }
    }

    /// Plain text.
    pub fn text(status: u16, body: &'static str) -> Resp {
        Resp {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// A 303 to `location` (after a POST: the browser GETs it).
    pub fn redirect(location: &str) -> Resp {
        let mut r = Resp::text(303, "");
        r.headers.push(("location", location.to_string()));
        r
    }

    /// An embedded asset, cacheable (it changes only with the binary).
    pub fn asset(content_type: &'static str, body: &'static [u8]) -> Resp {
        Resp {
            status: 200,
            content_type,
            headers: vec![("cache-control", "public, max-age=3600".to_string())],
            body: Bytes::from_static(body),
        }
    }

    /// Add a header.
    pub fn with(mut self, name: &'static str, value: String) -> Resp {
        self.headers.push((name, value));
        self
    }

    /// The hyper response, with the security headers.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(self.status)
            .header("content-type", self.content_type)
            .header("content-security-policy", CSP)
            .header("x-content-type-options", "nosniff")
            // same-origin, not no-referrer: under no-referrer a browser sends `Origin: null`
            // with the console's own form posts, which the origin check refuses (sign-in too).
            .header("referrer-policy", "same-origin")
            .header("x-frame-options", "DENY")
            .header("cross-origin-opener-policy", "same-origin");
        if !self.headers.iter().any(|(n, _)| *n == "cache-control") {
            builder = builder.header("cache-control", "no-store");
        }
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(self.body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad header"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_bearer_tokens_and_fields_are_read() {
        let mut r = Req::default();
        r.headers
            .insert("cookie".into(), "a=1; fo_console=abc; b=2".into());
        r.headers
            .insert("authorization".into(), "Bearer  tok-123 ".into());
        r.form = pairs("job=1&job=2&csrf=x+y&confirm=%33");
        assert_eq!(r.cookie("fo_console"), Some("abc"));
        assert_eq!(r.cookie("c"), None);
        assert_eq!(r.bearer(), Some("tok-123"));
        assert_eq!(r.fields("job").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(r.field("csrf"), "x y");
        assert_eq!(r.field("confirm"), "3");
        assert_eq!(r.field("nope"), "");
    }

    #[test]
    fn every_answer_carries_the_security_headers() {
        let resp = Resp::html(200, "<p>x</p>".into()).into_response();
        let h = resp.headers();
        assert_eq!(h["content-security-policy"], CSP);
        assert!(!CSP.contains("unsafe-inline"));
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
    }
}
