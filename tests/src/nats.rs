//! A real `nats-server` (Debian's) with JetStream (`-js`) on a free loopback port and a store
//! directory of its own, killed on drop; and what the tests of the `nats` action ask of it
//! through the official client: create a stream, read every message of a stream back with a
//! consumer.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::free_port;

/// A `nats-server -js` process; its store directory outlives a [`NatsServer::kill`], so a
/// [`NatsServer::restart`] on the same port finds its streams again.
pub struct NatsServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
    /// Configuration file lines (`max_payload: 1024`), if any.
    config: Option<PathBuf>,
    /// User and password of the test's own connections, when the server requires them.
    credentials: Option<(String, String)>,
    /// The CA file the test's own connections verify a TLS-only server with.
    tls_ca: Option<PathBuf>,
}

/// One message read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub subject: String,
    /// Its `Nats-Msg-Id` header.
    pub msg_id: Option<String>,
    pub payload: Vec<u8>,
}

impl NatsServer {
    /// Start it and wait until it accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_with("")
    }

    /// [`NatsServer::start`] with lines of a configuration file (`max_payload: 1024`).
    pub fn start_with(config: &str) -> Result<Self> {
        let store = tempfile::tempdir()?;
        let log = store.path().join("nats.log");
        let config = if config.is_empty() {
            None
        } else {
            let path = store.path().join("nats.conf");
            std::fs::write(&path, config)?;
            Some(path)
        };
        let mut server = NatsServer {
            child: None,
            port: free_port()?,
            store,
            log,
            config,
            credentials: None,
            tls_ca: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// [`NatsServer::start`] requiring `user` and `password` of every client.
    pub fn start_with_user(user: &str, password: &str) -> Result<Self> {
        Self::start_with(&format!(
            "authorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n"
        ))
        .map(|mut server| {
            server.credentials = Some((user.to_string(), password.to_string()));
            server
        })
    }

    /// [`NatsServer::start`] with TLS required of every client, serving `cert`/`key` (PEM files,
    /// a certificate for `localhost`); the test's own connections verify it against `ca`.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        Self::start_with(&format!(
            "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}\n"
        ))
        .map(|mut server| {
            server.tls_ca = Some(ca.to_path_buf());
            server
        })
    }

    /// Kill it (SIGKILL: no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again (after [`NatsServer::kill`]) on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let store = self.store.path().join("js");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new("nats-server");
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        let child = cmd
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start nats-server (installed by scripts/setup.sh)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "nats-server did not listen on port {}: {}",
            self.port,
            self.log()
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its URL (without credentials): `tls://localhost:<port>` when it requires TLS (its
    /// certificate names localhost), `nats://127.0.0.1:<port>` otherwise.
    pub fn url(&self) -> String {
        match self.tls_ca {
            Some(_) => format!("tls://localhost:{}", self.port),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// A JetStream context of a new client.
    pub async fn jetstream(&self) -> Result<jetstream::Context> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = &self.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options.connect(self.url()).await?;
        Ok(jetstream::new(client))
    }

    /// Create the stream `name` over `subjects` (file storage, the default two-minute duplicate
    /// window).
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) -> Result<()> {
        let js = self.jetstream().await?;
        js.create_stream(stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create stream {name}"))?;
        Ok(())
    }

    /// The subjects of the messages in stream `name`.
    pub async fn subjects(&self, name: &str) -> Result<BTreeSet<String>> {
        Ok(self
            .messages(name)
            .await?
            .into_iter()
            .map(|m| m.subject)
            .collect())
    }

    /// Every message of stream `name`, read by a new consumer from the first one.
    pub async fn messages(&self, name: &str) -> Result<Vec<StoredMessage>> {
        let js = self.jetstream().await?;
        let mut stream = js.get_stream(name).await?;
        let total = stream.info().await?.state.messages as usize;
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await?;
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let mut batch = consumer
                .batch()
                .max_messages(total - out.len())
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            let before = out.len();
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                out.push(StoredMessage {
                    subject: message.subject.to_string(),
                    msg_id: message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.as_str().to_string()),
                    payload: message.payload.to_vec(),
                });
            }
            if out.len() == before {
                bail!("stream {name} holds {total} messages, the consumer read {before}");
            }
        }
        Ok(out)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
