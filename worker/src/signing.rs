//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>, "Symmetric signatures"):
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, one
//! signature per secret, separated by spaces, so that receivers keep verifying while a secret
//! rotates (configure the new and the old one). Secrets are written `whsec_<base64 key>`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
