//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, "Symmetric signatures"):
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, one
//! signature per secret, separated by spaces, so that receivers keep verifying while a secret
//! rotates (configure the new and the old one). Secrets are written `whsec_<base64 key>`.
//!
//! A signature covers the id, time and body, not the destination: whoever could send a signed
//! request anywhere would obtain signatures that verify at the real receiver. So each secret is
//! bound in the worker's configuration to the [`Destination`]s it may sign for, and a job whose
//! URL is outside them is refused (never sent, never signed).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key, decoded from its `whsec_` form.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

/// Never print a key.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("it does not start with \"whsec_\"")]
    Prefix,
    #[error("the part after \"whsec_\" is not base64")]
    Base64,
    #[error("the key is {0} bytes; use 24 to 64 random bytes")]
    Length(usize),
}

impl SigningKey {
    /// Parse `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(SigningKey(key))
    }
}

/// The `webhook-signature` header value for `body` sent as `msg_id` at `timestamp` (seconds).
pub fn signature(keys: &[SigningKey], msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            // Any key length is valid for HMAC: new_from_slice cannot fail.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A URL prefix a secret may sign for: `scheme://host[:port][/path]`. A URL matches when its
/// scheme, host and port (the scheme's default when not written) are the same and its path is
/// the prefix's path or lies under it (`/hooks` matches `/hooks` and `/hooks/a`, not
/// `/hooks-a`). Query strings of the URL are free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

/// Why a destination prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("it is not a URL")]
    Url,
    #[error("it is not an http:// or https:// URL with a host")]
    Scheme,
    #[error("it carries a user, password, query or fragment")]
    Extra,
}

impl Destination {
    /// Parse `scheme://host[:port][/path]`.
    pub fn parse(prefix: &str) -> Result<Self, DestinationError> {
        let u = url::Url::parse(prefix.trim()).map_err(|_| DestinationError::Url)?;
        let (Some(host), Some(port)) = (u.host_str(), u.port_or_known_default()) else {
            return Err(DestinationError::Scheme);
        };
        if !matches!(u.scheme(), "http" | "https") {
            return Err(DestinationError::Scheme);
        }
        if !u.username().is_empty()
            || u.password().is_some()
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(DestinationError::Extra);
        }
        Ok(Destination {
            scheme: u.scheme().to_string(),
            host: host.to_string(),
            port,
            path: u.path().to_string(),
        })
    }

    /// True when `url` lies under this prefix.
    pub fn matches(&self, url: &str) -> bool {
        let Ok(u) = url::Url::parse(url) else {
            return false;
        };
        if u.scheme() != self.scheme
            || u.host_str() != Some(self.host.as_str())
            || u.port_or_known_default() != Some(self.port)
        {
            return false;
        }
        // url normalises both paths ("/a/../b" is "/b", percent-encoding is canonical).
        let path = u.path();
        if self.path == "/" || self.path.ends_with('/') {
            return path.starts_with(&self.path);
        }
        path == self.path
            || path
                .strip_prefix(&self.path)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review F08): any configured secret signed for any URL an action named.
    #[test]
    fn destinations_match_scheme_host_port_and_path_prefix() {
        let d = Destination::parse("https://Hooks.Example.com/orders").expect("prefix");
        assert!(d.matches("https://hooks.example.com/orders"));
        assert!(d.matches("https://hooks.example.com:443/orders/paid?x=1"));
        assert!(!d.matches("https://hooks.example.com/orders-evil"));
        assert!(!d.matches("https://hooks.example.com/other"));
        assert!(!d.matches("https://hooks.example.com/orders/../admin"));
        assert!(!d.matches("http://hooks.example.com/orders"));
        assert!(!d.matches("https://hooks.example.com:8443/orders"));
        assert!(!d.matches("https://hooks.example.com.evil.test/orders"));
        assert!(!d.matches("https://evil.test/orders"));
        assert!(!d.matches("not a url"));
        let any_path = Destination::parse("http://127.0.0.1:8080").expect("prefix");
        assert!(any_path.matches("http://127.0.0.1:8080/anything"));
        assert!(!any_path.matches("http://127.0.0.1:8081/anything"));
        let dir = Destination::parse("https://a.test/hooks/").expect("prefix");
        assert!(dir.matches("https://a.test/hooks/x"));
        assert!(!dir.matches("https://a.test/hooks"));
        assert!(Destination::parse("ftp://a.test/").is_err());
        assert!(Destination::parse("https://user:pw@a.test/").is_err());
        assert!(Destination::parse("https://a.test/?q=1").is_err());
        assert!(Destination::parse("a.test").is_err());
    }

    /// The example of the Standard Webhooks specification (spec/standard-webhooks.md, and the
    /// test vectors of its reference libraries).
    #[test]
    fn matches_the_specification_example() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn several_keys_sign_separately_and_bad_secrets_are_refused() {
        let a = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a");
        let b = SigningKey::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).expect("b");
        let both = signature(&[a.clone(), b.clone()], "m", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(
            parts,
            [
                signature(&[a], "m", 1, b"{}"),
                signature(&[b], "m", 1, b"{}")
            ]
        );
        assert_eq!(SigningKey::parse("MfKQ9r8G"), Err(SecretError::Prefix));
        assert_eq!(SigningKey::parse("whsec_%%%"), Err(SecretError::Base64));
        assert_eq!(SigningKey::parse("whsec_AAAA"), Err(SecretError::Length(3)));
        assert_eq!(
            format!(
                "{:?}",
                SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            ),
            "Ok(SigningKey(..))"
        );
    }
}
