//! `[console]`: the operator console's settings (`fraiseql-observers console`, or `run` when the
//! section is present). Operators' tokens are given by reference, never written in the file:
//! `env:VARIABLE` (read from the environment at start), `file:/path` (the file's content, a
//! trailing line break trimmed) or `secret:name` (the value of the credential
//! `[secrets.<name>]`). The references are what the configuration keeps and prints; the
//! resolved tokens live in [`Tokens`], which no `Debug` or rendering ever shows.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{load::read_secret_file, ConfigError, Secret};

/// Shortest token accepted: a guessable token would make the console an open door.
pub const MIN_TOKEN_CHARS: usize = 16;

/// `[console]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `address:port` the console serves on. Default `127.0.0.1:9899`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// No action forms, and every POST answers 403. Default false.
    #[serde(default)]
    pub read_only: bool,
    /// Serve without tokens, only on a loopback `listen` address; actions are recorded as
    /// operator `loopback`. Default false.
    #[serde(default)]
    pub loopback_without_token: bool,
    /// Connection string of the console's own database role; empty = `database_url`. The role
    /// needs admin access (`observer_grant(role, 'admin')`) for the console's pages.
    #[serde(default)]
    pub database_url: String,
    /// Operators by name, each with a reference to its token (`env:`, `file:` or `secret:`).
    #[serde(default)]
    pub operators: BTreeMap<String, String>,
    /// The operators' tokens, resolved at load from [`ConsoleConfig::operators`].
    #[serde(skip)]
    pub tokens: Tokens,
}

/// Operator name and token pairs. Never printed: `Debug` shows the names only.
#[derive(Clone, Default, PartialEq)]
pub struct Tokens(pub Vec<(String, String)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}: ***")))
            .finish()
    }
}

fn default_listen() -> String {
    "127.0.0.1:9899".to_string()
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: default_listen(),
            read_only: false,
            loopback_without_token: false,
            database_url: String::new(),
            operators: BTreeMap::new(),
            tokens: Tokens::default(),
        }
    }
}

/// A refusal naming the `console.` field, the problem and the fix.
fn invalid(field: &'static str, problem: String, fix: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem,
        fix: fix.to_string(),
    }
}

impl ConsoleConfig {
    /// Resolve every operator's token reference (`env` is the process environment as given to
    /// `Config::load`, `secrets` the configured secrets), then check the section.
    pub(super) fn resolve(
        &mut self,
        env: &[(String, String)],
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<(), ConfigError> {
        let mut tokens = Vec::new();
        for (name, reference) in &self.operators {
            check_operator_name(name)?;
            let token = resolve_reference(name, reference, env, secrets)?;
            check_token(name, &token)?;
            tokens.push((name.clone(), token));
        }
        self.tokens = Tokens(tokens);
        self.validate()
    }

    /// `listen` is an address, and there is a way in: operators, or the loopback setting on a
    /// loopback address.
    fn validate(&self) -> Result<(), ConfigError> {
        let addr: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "console.listen",
                format!("{:?} is not an address:port", self.listen),
                "write e.g. listen = \"127.0.0.1:9899\"",
            )
        })?;
        if self.loopback_without_token && !addr.ip().is_loopback() {
            return Err(invalid(
                "console.loopback_without_token",
                format!("the console would serve {} without a token, beyond this host", self.listen),
                "listen on a loopback address (127.0.0.1:9899) or give operators tokens in [console.operators] and remove loopback_without_token",
            ));
        }
        if self.loopback_without_token && !self.operators.is_empty() {
            return Err(invalid(
                "console.loopback_without_token",
                "it is set together with [console.operators]".to_string(),
                "choose one: tokens for the operators, or loopback_without_token = true alone",
            ));
        }
        if self.operators.is_empty() && !self.loopback_without_token {
            return Err(invalid(
                "console.operators",
                "no operator can sign in".to_string(),
                "name operators with token references, e.g. [console.operators] alice = \"env:CONSOLE_TOKEN_ALICE\", or set loopback_without_token = true on a loopback listen address",
            ));
        }
        if !self.database_url.is_empty() {
            // Never the string itself in the message: it can hold a password.
            crate::tls::PgConnector::from_url(&self.database_url).map_err(|_| {
                invalid(
                    "console.database_url",
                    "it is not a postgres:// URL or libpq connection string".to_string(),
                    "write it as postgres://role@host/db, or leave it empty to use database_url",
                )
            })?;
        }
        Ok(())
    }

    /// The operator whose token is `token`, compared in constant time against each. The
    /// SHA-256 digests are compared, not the tokens: comparing bytes stops at once when the
    /// lengths differ, which tells a visitor the length of every token.
    pub fn operator_of(&self, token: &str) -> Option<&str> {
        use sha2::{Digest, Sha256};
        let given = Sha256::digest(token.as_bytes());
        let mut found = None;
        for (name, expected) in &self.tokens.0 {
            if constant_time_eq(&Sha256::digest(expected.as_bytes()), &given) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Equal bytes, in a time that depends on the lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_operator_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok && name != "loopback" {
        return Ok(());
    }
    Err(invalid(
        "console.operators",
        format!("operator name {name:?} is not allowed"),
        "name operators with 1 to 64 letters, digits, _, - or . (\"loopback\" is reserved)",
    ))
}

/// The token `reference` of operator `name` stands for. No message quotes a token.
fn resolve_reference(
    name: &str,
    reference: &str,
    env: &[(String, String)],
    secrets: &BTreeMap<String, Secret>,
) -> Result<String, ConfigError> {
    let fix = format!("give the token by reference: {name} = \"env:CONSOLE_TOKEN_{0}\", \"file:/run/secrets/console_{name}\" or \"secret:<name of a [secrets.<name>] value>\"", name.to_ascii_uppercase());
    let refuse = |problem: String| invalid("console.operators", problem, &fix);
    if let Some(var) = reference.strip_prefix("env:") {
        return env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                refuse(format!(
                    "the token of {name} is in the environment variable {var}, which is not set"
                ))
            });
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return read_secret_file(path).map_err(|e| {
            refuse(format!(
                "the token file of {name}, {path}, cannot be read: {e}"
            ))
        });
    }
    if let Some(secret) = reference.strip_prefix("secret:") {
        return secrets
            .get(&secret.to_ascii_lowercase())
            .and_then(|s| s.value.clone())
            .ok_or_else(|| {
                refuse(format!(
                    "the token of {name} is the secret {secret:?}, which is not a configured credential (value)"
                ))
            });
    }
    Err(refuse(format!(
        "the token of {name} is not a reference (tokens are never written in the file)"
    )))
}

fn check_token(name: &str, token: &str) -> Result<(), ConfigError> {
    if token.chars().count() < MIN_TOKEN_CHARS || token.chars().any(char::is_control) {
        return Err(invalid(
            "console.operators",
            format!("the token of {name} is shorter than {MIN_TOKEN_CHARS} characters or holds a control character"),
            "use a random token of at least 32 characters, e.g. `openssl rand -hex 24`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const TOKEN: &str = "tok-9f8e7d6c5b4a39281706";

    /// `Config::load` of a file holding `toml`, with `env`.
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "fo-console-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("c.toml");
        std::fs::write(&file, toml).expect("write");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(Some(&file), env, &[])
    }

    #[test]
    fn tokens_are_read_by_reference_and_never_printed() {
        let c = load(
            "[console]\nlisten = \"127.0.0.1:9900\"\n[console.operators]\nalice = \"env:CT_ALICE\"\nbob = \"secret:bob_token\"\n\
             [secrets.bob_token]\nvalue = \"tok-bob-0123456789abcdef\"\n",
            &[("CT_ALICE", TOKEN)],
        )
        .expect("valid");
        let console = c.console.as_ref().expect("section");
        assert_eq!(console.operator_of(TOKEN), Some("alice"));
        assert_eq!(console.operator_of("tok-bob-0123456789abcdef"), Some("bob"));
        assert_eq!(console.operator_of("tok-9f8e7d6c5b4a39281707"), None);
        // A prefix, a longer token and the empty token match no one.
        assert_eq!(console.operator_of("tok-bob-0123456789abcde"), None);
        assert_eq!(console.operator_of("tok-bob-0123456789abcdef0"), None);
        assert_eq!(console.operator_of(""), None);
        assert!(!console.read_only);
        for text in [
            format!("{console:?}"),
            c.render(super::super::Format::Toml).expect("toml"),
            c.render(super::super::Format::Json).expect("json"),
        ] {
            assert!(!text.contains(TOKEN) && !text.contains("tok-bob"), "{text}");
        }
        assert!(load("", &[]).expect("valid").console.is_none());
    }

    #[test]
    fn a_section_without_a_way_in_or_with_a_literal_token_is_refused_naming_the_key() {
        let e = load("[console]\n", &[]).expect_err("no operator");
        assert!(e.to_string().contains("`console.operators`"), "{e}");
        assert!(e.to_string().contains("loopback_without_token"), "{e}");
        let e =
            load(&format!("[console.operators]\nalice = \"{TOKEN}\"\n"), &[]).expect_err("literal");
        assert!(e.to_string().contains("not a reference"), "{e}");
        assert!(!e.to_string().contains(TOKEN), "{e}");
        let e = load("[console.operators]\nalice = \"env:CT_NONE\"\n", &[]).expect_err("unset");
        assert!(e.to_string().contains("CT_NONE"), "{e}");
        let e = load(
            "[console.operators]\nalice = \"env:CT_SHORT\"\n",
            &[("CT_SHORT", "abc")],
        )
        .expect_err("short");
        assert!(e.to_string().contains("shorter than 16"), "{e}");
        let e = load(
            "[console.operators]\nloopback = \"env:CT\"\n",
            &[("CT", TOKEN)],
        )
        .expect_err("reserved");
        assert!(e.to_string().contains("reserved"), "{e}");
    }

    #[test]
    fn loopback_without_token_only_on_a_loopback_address() {
        let c = load("[console]\nloopback_without_token = true\n", &[]).expect("loopback");
        assert_eq!(
            c.console.map(|c| c.listen),
            Some("127.0.0.1:9899".to_string())
        );
        load(
            "[console]\nloopback_without_token = true\nlisten = \"[::1]:9899\"\n",
            &[],
        )
        .expect("v6 loopback");
        let e = load(
            "[console]\nloopback_without_token = true\nlisten = \"0.0.0.0:9899\"\n",
            &[],
        )
        .expect_err("open to the network");
        assert!(
            e.to_string().contains("`console.loopback_without_token`"),
            "{e}"
        );
        let e = load(
            "[console]\nlisten = \"nowhere\"\nloopback_without_token = true\n",
            &[],
        )
        .expect_err("bad address");
        assert!(e.to_string().contains("`console.listen`"), "{e}");
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
