//! Harness for the integration tests: a real PostgreSQL 15 cluster started for the test (as the
//! `postgres` OS user, on a private port and socket directory, preloading the extension), the real
//! `fraiseql-observers` binary, and a real HTTP sink on loopback.
//!
//! Each test owns its cluster, so no test depends on another's data. Requirements (met by
//! `scripts/setup.sh`): root, the `postgres` OS user, Postgres 15 from Debian, and the extension
//! installed into it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

pub mod browser;
pub mod nats;
pub mod queue;
pub mod sink;

pub use sink::{first_attempt_then, Received, Reply, Sink};

/// Directory of the Postgres 15 server binaries (read from pgrx.toml's pg_config).
pub fn pg_bindir() -> PathBuf {
    let toml = std::fs::read_to_string(workspace_root().join("pgrx.toml")).unwrap_or_default();
    let pg_config = toml
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("pg_config")
                .and_then(|r| r.trim_start().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin/pg_config".to_string());
    Path::new(&pg_config)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for a private test cluster).
/// The address blocks the tests' sinks live in: allowed explicitly in every test cluster
/// (`fraiseql_observers.allowed_networks`) and worker (`http.allow_networks`).
pub const LOOPBACK: &str = "127.0.0.0/8,::1/128";

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn run_as_postgres(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .with_context(|| format!("failed to run {args:?} as postgres"))?;
    Ok(out)
}

/// A real `redis-server` (Debian's) on a free loopback port, without persistence; killed on
/// drop.
pub struct RedisServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA file `redis-cli` verifies a TLS server with; None for plain TCP.
    tls_ca: Option<String>,
}

impl RedisServer {
    /// Start it and wait until it answers PING.
    pub fn start() -> Result<Self> {
        Self::spawn(None)
    }

    /// Start it with TLS only (`--port 0 --tls-port`), serving `cert`/`key` (PEM files) and
    /// not asking clients for certificates; `redis-cli` checks it against `ca`.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        Self::spawn(Some((cert, key, ca)))
    }

    fn spawn(tls: Option<(&Path, &Path, &Path)>) -> Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        match tls {
            None => cmd.args(["--port", &port.to_string()]),
            Some((cert, key, ca)) => cmd
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (installed by scripts/setup.sh)")?;
        let tls_ca = tls.map(|(_, _, ca)| ca.display().to_string());
        let server = RedisServer {
            child,
            port,
            tls_ca,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.cli(&["PING"]).map(|o| o == "PONG").unwrap_or(false) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redis-server did not answer PING on port {port}")
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Run a command with `redis-cli`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(ca) = &self.tls_ca {
            // The server certificate of the TLS tests names localhost only.
            cmd.args(["--tls", "--sni", "localhost", "--cacert", ca]);
        }
        let out = cmd.args(args).output().context("cannot run redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Postgres cluster owned by one test; stopped (immediate mode) and deleted on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

impl Cluster {
    /// initdb + start a cluster with the extension preloaded. `extra_conf` lines are appended to
    /// postgresql.conf.
    pub fn start(extra_conf: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fo-cluster-")
            .tempdir_in(std::env::temp_dir())?;
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            bail!("chown of the test cluster directory failed (run the tests as root)");
        }
        let data = dir.path().join("data");
        let bindir = pg_bindir();
        let out = run_as_postgres(&[
            bindir.join("initdb").to_str().unwrap_or("initdb"),
            "-D",
            data.to_str().unwrap_or_default(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ])?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'fraiseql_observers'\nfraiseql_observers.database = 'postgres'\n\
             max_connections = 200\nlog_min_messages = warning\n\
             fraiseql_observers.allowed_networks = '{LOOPBACK}'\n",
            dir.path().display()
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path)?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing)?;
        let cluster = Cluster { dir, port };
        cluster.pg_ctl(&["-w", "-t", "60", "start"])?;
        Ok(cluster)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let pg_ctl = pg_bindir().join("pg_ctl");
        let mut full = vec![
            pg_ctl.to_str().unwrap_or("pg_ctl"),
            "-D",
            data.to_str().unwrap_or_default(),
            "-l",
            log.to_str().unwrap_or_default(),
        ];
        full.extend_from_slice(args);
        let out = run_as_postgres(&full)?;
        if !out.status.success() {
            bail!(
                "pg_ctl {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
        }
        Ok(())
    }

    /// Crash-stop the server (`pg_ctl stop -m immediate`: no checkpoint, WAL recovery on the
    /// next start) and start it again.
    pub fn restart_immediate(&self) -> Result<()> {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"])?;
        self.pg_ctl(&["-w", "-t", "60", "start"])
    }

    /// Stop the server (`pg_ctl stop -m fast`: sessions are ended, a clean shutdown) until
    /// [`Cluster::start_again`].
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "stop"])
    }

    /// Start a server stopped by [`Cluster::stop`], on the same port and data.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "start"])
    }

    /// The server log so far (for failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Connection URL for `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Connection string for `dbname` through the cluster's Unix socket (pg_hba's `local`
    /// lines): for tests whose pg_hba refuses plain TCP.
    pub fn socket_url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.dir.path().display(),
            self.port
        )
    }

    /// A client connection to `dbname` through the Unix socket.
    pub async fn connect_socket(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.socket_url(dbname), tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connect to {dbname} through the socket"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A client connection to `dbname`.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(dbname), tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to {}", self.url(dbname)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Cluster {
    /// Connection URL for database `postgres` as `role` (trust authentication).
    pub fn url_as(&self, role: &str) -> String {
        self.url("postgres")
            .replace("postgres@", &format!("{role}@"))
    }

    /// A client connection to database `postgres` as `role` (trust authentication).
    pub async fn connect_as(&self, role: &str) -> tokio_postgres::Client {
        let url = self.url_as(role);
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect as {role}: {e}"));
        tokio::spawn(conn);
        client
    }
}

/// One `GET path` on 127.0.0.1:`port` (HTTP/1.0, read timeout 10 s): the status and the whole
/// response, headers included; (0, "") when nothing answers. For the worker's metrics listener
/// (`/metrics`, `/healthz`, `/readyz`).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// The SQLSTATE of running `sql` (a batch), or "ok".
pub async fn sqlstate(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => "ok".to_string(),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

/// Path of the `fraiseql-observers` binary, built once per test process.
pub fn worker_binary() -> Result<PathBuf> {
    static BUILD: Once = Once::new();
    static RESULT: Mutex<Option<std::result::Result<PathBuf, String>>> = Mutex::new(None);
    BUILD.call_once(|| {
        let result = (|| -> std::result::Result<PathBuf, String> {
            if let Ok(p) = std::env::var("FRAISEQL_OBSERVERS_BIN") {
                return Ok(PathBuf::from(p));
            }
            let root = workspace_root();
            let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            build
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "fraiseql-observers",
                    "--bin",
                    "fraiseql-observers",
                ])
                .current_dir(&root);
            // Cargo gives a test process the variables of the package under test
            // (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts that watch them (ring's)
            // would see them change from a build started in a shell, and rebuild ring, rustls
            // and the worker (about a minute) each time the two alternate.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                    "CARGO_PRIMARY_",
                ]
                .iter()
                .any(|prefix| key.starts_with(prefix))
                    || key == "CARGO_TARGET_TMPDIR"
                {
                    build.env_remove(key.as_ref());
                }
            }
            let status = build
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err("cargo build of fraiseql-observers failed".into());
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("target"));
            Ok(target.join("debug").join("fraiseql-observers"))
        })();
        if let Ok(mut slot) = RESULT.lock() {
            *slot = Some(result);
        }
    });
    match RESULT.lock().ok().and_then(|s| s.clone()) {
        Some(Ok(p)) => Ok(p),
        Some(Err(e)) => bail!(e),
        None => bail!("worker binary build did not run"),
    }
}

/// Run the real `fraiseql-observers` binary with `args` against the database at `url` (the
/// operator CLI, as a user runs it).
pub fn run_cli(url: &str, args: &[&str]) -> std::process::Output {
    run_cli_in(None, url, args)
}

/// [`run_cli`] in working directory `dir` (a command that reads a file by a relative name).
pub fn run_cli_in(dir: Option<&Path>, url: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(worker_binary().expect("worker binary"));
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env("FRAISEQL_OBSERVERS_DATABASE_URL", url)
        .output()
        .expect("run the CLI")
}

/// The JSON a successful CLI command printed (panics with its stderr if it failed).
pub fn cli_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the command printed JSON")
}

/// A running worker process; killed on drop.
pub struct Worker {
    child: Child,
    log: Arc<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Worker {
    /// Start `fraiseql-observers run` against `database_url` with extra `FRAISEQL_OBSERVERS_*`
    /// settings.
    pub fn start(database_url: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_with_process_env(database_url, env, &[])
    }

    /// [`Worker::start`] with variables of other names too (`HTTP_PROXY`, ...), as they are.
    pub fn start_with_process_env(
        database_url: &str,
        env: &[(&str, &str)],
        process_env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("worker.log");
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(worker_binary()?);
        cmd.arg("run")
            .env("FRAISEQL_OBSERVERS_DATABASE_URL", database_url)
            .env("FRAISEQL_OBSERVERS_POLL_INTERVAL_MS", "100")
            .env("FRAISEQL_OBSERVERS_LOG__FILTER", "info")
            // The sinks listen on loopback, which the SSRF guard refuses unless allowed.
            .env("FRAISEQL_OBSERVERS_HTTP__ALLOW_NETWORKS", LOOPBACK)
            // Circuits open for 300 ms instead of 30 s, so tests of retries do not wait on them.
            .env("FRAISEQL_OBSERVERS_BREAKER__OPEN_MS", "300")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(format!("FRAISEQL_OBSERVERS_{k}"), v);
        }
        for (k, v) in process_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("failed to start the worker")?;
        Ok(Self {
            child,
            log: Arc::new(log),
            _dir: dir,
        })
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&*self.log).unwrap_or_default()
    }

    /// Send `signal` (a `kill -s` name: KILL, STOP, CONT, TERM) to the worker.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status();
    }

    /// Send SIGTERM and wait for the exit status (None if it had to be killed after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `observer_status()` as JSON.
pub async fn observer_status(client: &tokio_postgres::Client) -> serde_json::Value {
    let row = client
        .query_one("SELECT observer_status()::text", &[])
        .await
        .expect("observer_status()");
    serde_json::from_str(row.get::<_, &str>(0)).expect("observer_status() is JSON")
}

/// Wait (up to 30 s) until exactly `n` jobs are dead; their ids, in id order.
pub async fn wait_for_dead_jobs(client: &tokio_postgres::Client, n: usize) -> Vec<i64> {
    let dead = wait_until(Duration::from_secs(30), || async {
        dead_jobs(client).await.len() == n
    })
    .await;
    assert!(dead, "{n} dead job(s)");
    dead_jobs(client).await
}

/// The ids of the dead jobs (state `dead`), in id order.
pub async fn dead_jobs(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query(
            "SELECT id FROM observer.jobs WHERE state = 'dead' ORDER BY id",
            &[],
        )
        .await
        .expect("dead jobs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Wait until `observer_status()` counts `n` jobs in `state` (pending, running, completed, dead).
pub async fn wait_for_jobs(
    client: &tokio_postgres::Client,
    state: &str,
    n: i64,
    timeout: Duration,
) -> bool {
    wait_until(timeout, || async move {
        observer_status(client).await["jobs"][state] == n
    })
    .await
}

/// Poll `check` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Verify the Standard Webhooks signature of each of `received` with `secret`, using the reference
/// library from PyPI (tests/verify/standard_webhooks.py in the .venv scripts/setup.sh makes): one
/// verdict per request, `ok` or why not.
pub fn verify_signatures(received: &[sink::Received], secret: &str) -> Vec<String> {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let requests: Vec<serde_json::Value> = received
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({"headers": headers, "body": String::from_utf8_lossy(&r.raw)})
        })
        .collect();
    let mut child = Command::new(python)
        .arg(workspace_root().join("tests/verify/standard_webhooks.py"))
        .arg(secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        serde_json::to_string(&requests).expect("json").as_bytes(),
    )
    .expect("write");
    let out = child.wait_with_output().expect("verifier");
    assert!(out.status.success(), "verifier failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A loopback listener that counts the connections offered to it and answers nothing (a server or
/// proxy the worker must never reach): its port and the count.
pub fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (port, count)
}
