//! TLS for the worker's own connections: Postgres (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`
//! in `database_url`, as libpq users write them) and Redis (`rediss://` with `redis.ca_file`,
//! `redis.cert_file`, `redis.key_file`), and the servers of the stream actions (`tls://` NATS and
//! `rediss://` Redis, verified against `streams.ca_file` or the public CAs: [`StreamTls`]).
//! rustls with the ring provider, as the HTTP and SMTP clients use.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and refuses any option it does not
//! know, and it has no TLS of its own: [`PgConnector::from_url`] takes the TLS options out of
//! the connection string, hands the rest to tokio-postgres, and verifies the server the way
//! libpq does for each mode:
//!
//! | sslmode | encrypted | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | no | | |
//! | `prefer` (default) | if the server offers TLS | only when `sslrootcert` is set | no |
//! | `require` | yes | only when `sslrootcert` is set | no |
//! | `verify-ca` | yes | yes (`sslrootcert` required) | no |
//! | `verify-full` | yes | yes (`sslrootcert` required) | yes |
//!
//! `sslrootcert=system` trusts the public CAs (Mozilla's list, compiled in from `webpki-roots`)
//! and, as in libpq 16, only with `verify-full`: any of hundreds of CAs could otherwise vouch for
//! any name. Unlike libpq, no file is read from `~/.postgresql/`: name the files.
//!
//! Errors name the parameter and the fix; a failed handshake says why (unknown CA, wrong host
//! name, expired, refused by the server) in words, not as a rustls enum alone.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Connection, Socket};

/// libpq's `sslmode`, the values this worker supports (`allow` is not one: see
/// [`TlsError::SslMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, plaintext otherwise (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked only against an explicit `sslrootcert`.
    Require,
    /// TLS, the chain checked against `sslrootcert`, not the host name.
    VerifyCa,
    /// TLS, the chain checked against `sslrootcert` and the host name against the certificate.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(TlsError::SslMode),
        })
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// What is wrong with the TLS settings. Each message names the parameter and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The value is not quoted: a password pasted into the wrong place would be.
    #[error("the value of `sslmode` is not supported; use disable, prefer, require, verify-ca or verify-full")]
    SslMode,
    #[error("sslmode={0} checks the server's certificate, and no sslrootcert names the CA to check it against; set sslrootcert to the CA certificate file (PEM) that signed the server's certificate, or sslrootcert=system for a server whose certificate chains to a public CA")]
    NoRootCert(SslMode),
    #[error("sslrootcert=system needs sslmode=verify-full (with sslmode={0}, any certificate a public CA signed for any name would pass); add sslmode=verify-full")]
    SystemNeedsVerifyFull(SslMode),
    #[error("{given} is set without {missing}: a client certificate needs both sslcert (the certificate, PEM) and sslkey (its private key, PEM)")]
    HalfClientCert {
        given: &'static str,
        missing: &'static str,
    },
    #[error("{0} is not supported; {1}")]
    Unsupported(&'static str, &'static str),
    #[error("{param}: cannot read {path}: {source}; make the file readable by the worker's user")]
    Read {
        param: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{param}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); name the certificate file in PEM format")]
    NoCertificate { param: &'static str, path: String },
    #[error("{param}: a certificate in {path} is not usable as a CA: {problem}; name the CA's certificate file")]
    BadCa {
        param: &'static str,
        path: String,
        problem: String,
    },
    #[error("{param}: {path} holds no unencrypted private key in PEM (PKCS#8, PKCS#1 or SEC1); an encrypted key must be decrypted first (openssl pkey -in key.pem -out plain.pem)")]
    NoKey { param: &'static str, path: String },
    #[error("{cert}/{key}: the client certificate cannot be used: {problem}; check that {key} is the private key of the certificate in {cert}")]
    ClientCert {
        cert: &'static str,
        key: &'static str,
        problem: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Where the CA certificates that verify a server come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    /// A PEM file.
    File(String),
    /// The public CAs (`sslrootcert=system`).
    System,
}

/// The TLS parameters of a Postgres connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PgTlsOptions {
    mode: SslMode,
    root: Option<RootCert>,
    cert: Option<String>,
    key: Option<String>,
}

impl Default for PgTlsOptions {
    fn default() -> Self {
        PgTlsOptions {
            mode: SslMode::Prefer,
            root: None,
            cert: None,
            key: None,
        }
    }
}

impl PgTlsOptions {
    /// Take one parameter if it is a TLS one (true), or leave it (false).
    fn take(&mut self, key: &str, value: &str) -> Result<bool, TlsError> {
        match key {
            "sslmode" => {
                self.mode = match value {
                    "allow" => return Err(TlsError::Unsupported(
                        "sslmode=allow",
                        "use sslmode=prefer (TLS when the server offers it) or sslmode=require",
                    )),
                    v => SslMode::parse(v)?,
                }
            }
            "sslrootcert" => {
                self.root = match value {
                    "" => None,
                    "system" => Some(RootCert::System),
                    path => Some(RootCert::File(path.to_string())),
                }
            }
            "sslcert" => self.cert = Some(value.to_string()).filter(|v| !v.is_empty()),
            "sslkey" => self.key = Some(value.to_string()).filter(|v| !v.is_empty()),
            "sslpassword" => {
                return Err(TlsError::Unsupported(
                    "sslpassword",
                    "decrypt the key named by sslkey (openssl pkey -in key.pem -out plain.pem) and keep it readable by the worker only",
                ))
            }
            "sslcrl" | "sslcrldir" => {
                return Err(TlsError::Unsupported(
                    "sslcrl / sslcrldir",
                    "revoke by replacing the server's certificate and removing the old CA from sslrootcert",
                ))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), TlsError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(TlsError::HalfClientCert {
                    given: "sslcert",
                    missing: "sslkey",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::HalfClientCert {
                    given: "sslkey",
                    missing: "sslcert",
                })
            }
            _ => {}
        }
        if self.mode.verifies() && self.root.is_none() {
            return Err(TlsError::NoRootCert(self.mode));
        }
        if self.root == Some(RootCert::System) && self.mode != SslMode::VerifyFull {
            return Err(TlsError::SystemNeedsVerifyFull(self.mode));
        }
        Ok(())
    }
}

/// Parameters this module takes out of a connection string.
fn is_tls_param(key: &str) -> bool {
    matches!(
        key,
        "sslmode" | "sslrootcert" | "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir"
    )
}

/// `s` without its TLS parameters, and those parameters. A string that does not tokenize is
/// returned whole: tokio-postgres then reports what is wrong with it.
fn split_connection_string(s: &str) -> Result<(String, PgTlsOptions), TlsError> {
    let mut options = PgTlsOptions::default();
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            // As tokio-postgres reads a URL: the credentials end at the first '@', the
            // parameters start at the first '?' after them.
            let after_creds = rest.find('@').map(|i| i + 1).unwrap_or(0);
            let Some(q) = rest[after_creds..].find('?').map(|i| i + after_creds) else {
                return Ok((s.to_string(), options));
            };
            let mut kept = Vec::new();
            for piece in rest[q + 1..].split('&') {
                let taken = match piece.split_once('=') {
                    Some((k, v)) => {
                        let key = decode(k);
                        is_tls_param(&key) && options.take(&key, &decode(v))?
                    }
                    None => false,
                };
                if !taken {
                    kept.push(piece);
                }
            }
            let mut out = format!("{prefix}{}", &rest[..q]);
            if !kept.is_empty() {
                out.push('?');
                out.push_str(&kept.join("&"));
            }
            return Ok((out, options));
        }
    }
    let Some(pairs) = key_values(s) else {
        return Ok((s.to_string(), options));
    };
    let mut kept = Vec::new();
    for (key, value) in pairs {
        if !options.take(key, &value)? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), options))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The `key = value` pairs of a libpq key/value string, by libpq's (and tokio-postgres')
/// grammar: values bare or single-quoted, `\` escaping the next character. None when it does
/// not tokenize.
fn key_values(s: &str) -> Option<Vec<(&str, String)>> {
    let mut pairs = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Some(pairs);
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '=')?;
        let key = &rest[..end];
        rest = rest[end..].trim_start().strip_prefix('=')?.trim_start();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let quoted = rest.starts_with('\'');
        if quoted {
            chars.next();
        }
        let mut consumed = rest.len();
        let mut closed = !quoted;
        while let Some((i, c)) = chars.next() {
            if quoted && c == '\'' {
                consumed = i + 1;
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                consumed = i;
                break;
            }
            if c == '\\' {
                value.push(chars.next()?.1);
            } else {
                value.push(c);
            }
        }
        if !closed || (!quoted && value.is_empty()) {
            return None;
        }
        pairs.push((key, value));
        rest = &rest[consumed..];
    }
}

/// The ring provider, explicitly: rustls' process default is ambiguous when a second provider
/// is ever compiled in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(param: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        param,
        path: path.to_string(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
fn certificates(param: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(param, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            param,
            path: path.to_string(),
        });
    }
    Ok(certs)
}

/// The CA certificates of a PEM file as a trust store.
fn root_store(param: &'static str, path: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(param, path)? {
        store.add(cert).map_err(|e| TlsError::BadCa {
            param,
            path: path.to_string(),
            problem: e.to_string(),
        })?;
    }
    Ok(store)
}

/// The private key of a PEM file.
fn private_key(param: &'static str, path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(param, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        param,
        path: path.to_string(),
    })
}

/// Checks of the server's certificate for one connection.
fn client_config(options: &PgTlsOptions) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let roots = match &options.root {
        None => None,
        Some(RootCert::System) => Some(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        Some(RootCert::File(path)) => Some(root_store("sslrootcert", path)?),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        // libpq: without a root certificate, prefer and require encrypt without verifying.
        None => Arc::new(AcceptAnyCertificate(provider.clone())),
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(format!("sslrootcert: {e}")))?;
            if options.mode == SslMode::VerifyFull {
                webpki
            } else {
                // libpq: a root certificate makes prefer and require verify the chain, as
                // verify-ca does; only verify-full checks the name.
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&options.cert, &options.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates("sslcert", cert)?, private_key("sslkey", key)?)
            .map_err(|e| TlsError::ClientCert {
                cert: "sslcert",
                key: "sslkey",
                problem: e.to_string(),
            })?,
        _ => builder.with_no_client_auth(),
    };
    // Postgres 17 checks ALPN on direct TLS negotiation; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// `sslmode=require` (and `prefer`) without `sslrootcert`: encrypt, accept any certificate,
/// but still check that the server holds the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full web PKI check except the host name. rustls checks the name only after
/// the chain (`WebPkiServerVerifier::verify_server_cert`), so a name error means the chain
/// passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a Postgres connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    /// The TLS parameters are wrong (also reported by `validate-config`).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The rest of the connection string does not parse; never quoted (it can hold a password).
    #[error("database_url does not parse (run validate-config for the part that is wrong)")]
    Parse(#[source] tokio_postgres::Error),
    /// The server could not be reached, refused the session, or failed the TLS checks.
    #[error("{}", fraiseql_observers_core::text::with_sources(.0))]
    Connect(#[source] tokio_postgres::Error),
}

/// A Postgres connection string with its TLS settings, ready to connect.
#[derive(Clone)]
pub struct PgConnector {
    config: Arc<ClientConfig>,
    mode: SslMode,
    root: Option<RootCert>,
}

impl PgConnector {
    /// Parse `url` (a `postgres://` URL or a libpq key/value string) and load the files its TLS
    /// parameters name; the tokio-postgres configuration to connect with and the TLS connector.
    /// The files are read again on every connection, so renewed certificates are picked up at
    /// the next reconnect.
    pub fn from_url(url: &str) -> Result<(tokio_postgres::Config, Self), PgConnectError> {
        let (rest, options) = split_connection_string(url)?;
        options.check()?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(PgConnectError::Parse)?;
        config.ssl_mode(match options.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let connector = PgConnector {
            config: Arc::new(client_config(&options)?),
            mode: options.mode,
            root: options.root,
        };
        Ok((config, connector))
    }

    /// What the message of a failed handshake tells about sslrootcert.
    fn roots(&self) -> String {
        match &self.root {
            Some(RootCert::File(path)) => format!("the CA in sslrootcert ({path})"),
            Some(RootCert::System) => "a public CA (sslrootcert=system)".to_string(),
            None => "a trusted CA".to_string(),
        }
    }
}

/// Connect to Postgres with the TLS settings of `url`.
pub async fn connect_postgres(
    url: &str,
) -> Result<(Client, Connection<Socket, PgTlsStream>), PgConnectError> {
    let (config, connector) = PgConnector::from_url(url)?;
    config
        .connect(connector)
        .await
        .map_err(PgConnectError::Connect)
}

impl MakeTlsConnect<Socket> for PgConnector {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, HandshakeError> {
        // Called for every host before connecting, Unix sockets included (host ""): failing here
        // would refuse a socket connection that never negotiates TLS (the server answers "no" to
        // TLS on a socket, and `prefer` goes on in plaintext). A host that cannot be a TLS server
        // name fails in the handshake instead, which only a TLS-willing TCP server reaches.
        Ok(PgTlsConnect {
            connector: self.clone(),
            host: host.to_string(),
            name: ServerName::try_from(host.to_string()).ok(),
        })
    }
}

/// One TLS handshake with one host.
pub struct PgTlsConnect {
    connector: PgConnector,
    host: String,
    /// None: `host` is no DNS name or IP address (a Unix socket's is empty).
    name: Option<ServerName<'static>>,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, HandshakeError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let Some(name) = self.name else {
                return Err(HandshakeError(format!(
                    "host {:?} is not a valid DNS name or IP address for TLS; use the server's host name as its certificate lists it",
                    self.host
                )));
            };
            let tls = tokio_rustls::TlsConnector::from(self.connector.config.clone());
            tls.connect(name, stream)
                .await
                .map(PgTlsStream)
                .map_err(|e| explain_postgres(&e, &self.connector, &self.host))
        })
    }
}

/// A failed TLS handshake, in words with the fix.
#[derive(Debug)]
pub struct HandshakeError(String);

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandshakeError {}

/// The rustls error inside an I/O error of a handshake, if that is what it was.
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn explain_postgres(e: &io::Error, connector: &PgConnector, host: &str) -> HandshakeError {
    let Some(tls) = rustls_error(e) else {
        return HandshakeError(format!(
            "the connection failed during the TLS handshake: {e}"
        ));
    };
    let text = match tls {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "certificate verify failed: the server's certificate is not valid for host {host:?} ({tls}); sslmode=verify-full checks the host name: connect with a name the certificate lists (subjectAltName), or use sslmode=verify-ca to check the CA only"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "certificate verify failed: the server's certificate is not signed by {} ({tls}); set sslrootcert to the CA that signed the server's certificate",
            connector.roots()
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "certificate verify failed: the server's certificate is outside its validity period ({tls}); renew it, or check this machine's clock"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "certificate verify failed: {tls}; check the server's certificate (sslmode={} with {})",
            connector.mode,
            connector.roots()
        ),
        rustls::Error::AlertReceived(_) => format!(
            "the server refused the TLS handshake ({tls}); if it requires a client certificate, set sslcert and sslkey to a certificate signed by a CA of its ssl_ca_file"
        ),
        other => format!("TLS handshake failed: {other}"),
    };
    HandshakeError(text)
}

/// A TLS session with Postgres.
pub struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| tls_server_end_point(cert))
            .map(ChannelBinding::tls_server_end_point)
            .unwrap_or_else(ChannelBinding::none)
    }
}

/// RFC 5929 `tls-server-end-point`: the hash of the server's certificate, by the hash of its
/// signature algorithm (SHA-256 for MD5 and SHA-1). None for algorithms without one defined
/// (Ed25519, RSA-PSS whose hash is in parameters): SCRAM then runs without channel binding, as
/// tokio-postgres does with no TLS data, unless `channel_binding=require`.
fn tls_server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::Digest;
    const SHA256: &[&[u8]] = &[
        // sha256WithRSAEncryption, sha1WithRSAEncryption, md5WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        // ecdsa-with-SHA256, ecdsa-with-SHA1
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
    ];
    const SHA384: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: &[&[u8]] = &[
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    let oid = signature_algorithm_oid(cert.as_ref())?;
    let der = cert.as_ref();
    if SHA256.contains(&oid) {
        Some(sha2::Sha256::digest(der).to_vec())
    } else if SHA384.contains(&oid) {
        Some(sha2::Sha384::digest(der).to_vec())
    } else if SHA512.contains(&oid) {
        Some(sha2::Sha512::digest(der).to_vec())
    } else {
        None
    }
}

/// The OID of `Certificate.signatureAlgorithm` (RFC 5280: SEQUENCE { tbsCertificate,
/// signatureAlgorithm SEQUENCE { OID, params }, signature }), read from the DER.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (_tbs, rest) = der_any(certificate)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// The contents of the DER element at the start of `input` if its tag is `tag`, and what
/// follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    der_any(input)
}

/// The contents of the DER element at the start of `input`, whatever its tag, and what follows.
fn der_any(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

/// The CA and client certificate of a `rediss://` connection, read and checked; None when none
/// is set (the public CAs verify the server). `ca_file`, `cert_file`, `key_file` are the
/// `[redis]` settings of the same names; empty is unset.
pub fn redis_certificates(
    ca_file: &str,
    cert_file: &str,
    key_file: &str,
) -> Result<Option<redis::TlsCertificates>, TlsError> {
    let root_cert = if ca_file.is_empty() {
        None
    } else {
        // Parsed here (not only by the redis crate) so a wrong file is named at start.
        root_store("redis.ca_file", ca_file)?;
        Some(read("redis.ca_file", ca_file)?)
    };
    let client_tls = match (cert_file.is_empty(), key_file.is_empty()) {
        (true, true) => None,
        (false, true) | (true, false) => {
            return Err(TlsError::Config(
                "redis.cert_file and redis.key_file go together: a client certificate needs both, the certificate (PEM) and its private key (PEM)".to_string(),
            ))
        }
        (false, false) => {
            let certs = certificates("redis.cert_file", cert_file)?;
            let key = private_key("redis.key_file", key_file)?;
            // The same check rustls makes at connect, made at start.
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_root_certificates(RootCertStore::empty())
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::ClientCert {
                    cert: "redis.cert_file",
                    key: "redis.key_file",
                    problem: e.to_string(),
                })?;
            Some(redis::ClientTlsConfig {
                client_cert: read("redis.cert_file", cert_file)?,
                client_key: read("redis.key_file", key_file)?,
            })
        }
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Make ring rustls' process-wide provider: the redis crate builds its TLS configuration with
/// the default one. Idempotent.
pub fn install_default_provider() {
    // Err means a provider is installed already, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What a TLS failure's message says is wrong with the server's certificate. The redis and NATS
/// clients report rustls errors as text (rustls' Display of CertificateError in 0.23, and its
/// Debug names for older texts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertProblem {
    /// It does not list the host name connected to.
    Name,
    /// No trusted CA signed it.
    Issuer,
    /// Expired, or not valid yet.
    Validity,
    /// Refused for another reason.
    Refused,
    /// The server refused the handshake (e.g. it wants a client certificate).
    HandshakeRefused,
}

impl CertProblem {
    fn of(message: &str) -> Option<CertProblem> {
        if message.contains("not valid for name") || message.contains("NotValidForName") {
            Some(CertProblem::Name)
        } else if message.contains("UnknownIssuer") || message.contains("BadSignature") {
            Some(CertProblem::Issuer)
        } else if ["expired", "not valid yet", "Expired", "NotValidYet"]
            .iter()
            .any(|m| message.contains(m))
        {
            Some(CertProblem::Validity)
        } else if message.contains("invalid peer certificate") {
            Some(CertProblem::Refused)
        } else if message.contains("AlertReceived") {
            Some(CertProblem::HandshakeRefused)
        } else {
            None
        }
    }
}

/// The fix for a failed Redis call whose message shows a certificate problem, if it does.
pub fn redis_hint(message: &str) -> Option<&'static str> {
    Some(match CertProblem::of(message)? {
        CertProblem::Name => "the Redis server's certificate does not list the host of redis.url: use a host name its certificate lists (subjectAltName)",
        CertProblem::Issuer => "the Redis server's certificate is not signed by the CA in redis.ca_file (or, without it, by a public CA): set redis.ca_file to the CA that signed the server's certificate",
        CertProblem::Validity => "the Redis server's certificate is outside its validity period: renew it, or check this machine's clock",
        CertProblem::Refused => "the Redis server's certificate was refused: check it against redis.ca_file",
        CertProblem::HandshakeRefused => "the Redis server refused the TLS handshake: if it requires a client certificate (tls-auth-clients yes), set redis.cert_file and redis.key_file",
    })
}

/// The fix for a failed connection to a stream action's server (`tls://` NATS, `rediss://`
/// Redis) whose message shows a certificate problem, if it does.
pub fn stream_hint(message: &str) -> Option<&'static str> {
    Some(match CertProblem::of(message)? {
        CertProblem::Name => "the server's certificate does not list the host of the action's url: use a host name its certificate lists (subjectAltName)",
        CertProblem::Issuer => "the server's certificate is not signed by the CA in the worker's streams.ca_file (or, without it, by a public CA): set streams.ca_file to the CA that signed it",
        CertProblem::Validity => "the server's certificate is outside its validity period: renew it, or check this machine's clock",
        CertProblem::Refused => "the server's certificate was refused: check it against streams.ca_file",
        CertProblem::HandshakeRefused => "the server refused the TLS handshake (client certificates are not supported for stream servers)",
    })
}

/// TLS to the servers of the stream actions (`tls://` NATS, `rediss://` Redis): their
/// certificates verified, host name included, against `streams.ca_file`, or the public CAs
/// (Mozilla's list, compiled in) when it is empty. No client certificate.
#[derive(Clone)]
pub struct StreamTls {
    /// The rustls configuration (the NATS client takes it as it is).
    pub config: ClientConfig,
    /// `streams.ca_file`'s PEM for the redis crate, which builds its own configuration; None:
    /// the public CAs.
    pub ca_pem: Option<Vec<u8>>,
}

impl StreamTls {
    /// Read and check `ca_file` (empty: the public CAs).
    pub fn new(ca_file: &str) -> Result<Self, TlsError> {
        let (roots, ca_pem) = if ca_file.is_empty() {
            let public = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            (public, None)
        } else {
            let roots = root_store("streams.ca_file", ca_file)?;
            (roots, Some(read("streams.ca_file", ca_file)?))
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(StreamTls { config, ca_pem })
    }
}

impl fmt::Debug for StreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTls")
            .field("ca_file", &self.ca_pem.as_ref().map(|_| "set"))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (String, PgTlsOptions) {
        split_connection_string(s).expect("splits")
    }

    #[test]
    fn tls_parameters_are_taken_out_of_a_url() {
        let (rest, o) = split(
            "postgres://u:p%40ss@db.example:5433/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5433/app?application_name=x&connect_timeout=5"
        );
        assert_eq!(o.mode, SslMode::VerifyFull);
        assert_eq!(o.root, Some(RootCert::File("/etc/ca.pem".into())));
        let (rest, o) = split("postgresql://db/app?sslmode=require");
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(o.mode, SslMode::Require);
    }

    #[test]
    fn a_url_without_tls_parameters_is_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://u@a,b/app?target_session_attrs=read-write",
            "postgres://h",
        ] {
            let (rest, o) = split(url);
            assert_eq!(rest, url);
            assert_eq!(o, PgTlsOptions::default(), "prefer is the default");
        }
    }

    #[test]
    fn tls_parameters_are_taken_out_of_a_key_value_string() {
        let (rest, o) = split(
            "host=db port=5432 sslmode = 'verify-ca' sslrootcert=/a\\ b/ca.pem password='it\\'s' sslcert=c.pem sslkey=k.pem",
        );
        assert_eq!(o.mode, SslMode::VerifyCa);
        assert_eq!(o.root, Some(RootCert::File("/a b/ca.pem".into())));
        assert_eq!(o.cert.as_deref(), Some("c.pem"));
        assert_eq!(o.key.as_deref(), Some("k.pem"));
        assert!(!rest.contains("ssl"), "{rest}");
        // What is left still parses as the same settings.
        let config: tokio_postgres::Config = rest.parse().expect("parses");
        assert_eq!(config.get_ports(), &[5432]);

        let (rest, _) = split("host=db password='a \\'b\\\\' dbname=app");
        let config: tokio_postgres::Config = rest.parse().expect("parses");
        assert_eq!(config.get_password(), Some(&b"a 'b\\"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
    }

    #[test]
    fn a_broken_key_value_string_is_left_to_the_driver() {
        let (rest, _) = split("host=db password='unterminated");
        assert_eq!(rest, "host=db password='unterminated");
    }

    #[test]
    fn bad_tls_settings_name_the_parameter_and_the_fix() {
        let err = |s: &str| match PgConnector::from_url(s) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{s} accepted"),
        };
        assert!(err("postgres://h/db?sslmode=verify_full").contains(
            "the value of `sslmode` is not supported; use disable, prefer, require, verify-ca or verify-full"
        ));
        assert!(err("postgres://h/db?sslmode=allow").contains("use sslmode=prefer"));
        assert!(err("postgres://h/db?sslmode=verify-full").contains("set sslrootcert"));
        assert!(
            err("host=h sslmode=require sslrootcert=system").contains("add sslmode=verify-full")
        );
        assert!(err("postgres://h/db?sslcert=/c.pem").contains("sslcert is set without sslkey"));
        let missing = err("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
        assert!(
            missing.starts_with("sslrootcert: cannot read /nonexistent/ca.pem")
                && missing.contains("readable"),
            "{missing}"
        );
        let dir = tempdir();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let text = err(&format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            not_pem.display()
        ));
        assert!(text.contains("holds no PEM certificate"), "{text}");
        assert!(err("postgres://h/db?sslpassword=x").contains("decrypt"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn plain_settings_keep_tokio_postgres_defaults() {
        let (config, _) = PgConnector::from_url("postgres://u@h/db").expect("ok");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let (config, _) = PgConnector::from_url("host=h sslmode=disable").expect("ok");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let (config, _) =
            PgConnector::from_url("postgres://h/db?sslmode=verify-full&sslrootcert=system")
                .expect("ok");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn a_certificates_signature_algorithm_is_read_from_its_der() {
        // A minimal DER certificate shape: SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID
        // ecdsa-with-SHA384 }, BIT STRING }.
        let oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(&oid);
        let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut der = vec![0x30, body.len() as u8];
        der.extend_from_slice(&body);
        assert_eq!(signature_algorithm_oid(&der), Some(&oid[..]));
        let binding = tls_server_end_point(&CertificateDer::from(der)).expect("a hash");
        assert_eq!(binding.len(), 48, "SHA-384");
        assert_eq!(signature_algorithm_oid(&[0x30, 0x85, 0x00]), None);
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fo-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
