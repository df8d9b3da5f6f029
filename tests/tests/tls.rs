//! TLS everywhere the worker connects, against real servers with certificates this test makes
//! (rcgen): a CA, a server certificate for `localhost` only signed by it, a client certificate
//! for the role `observers`, and a second, unrelated CA.
//!
//! Postgres runs with `ssl = on` and a pg_hba that accepts TCP only over TLS (`hostssl`), the
//! role `observers` only with its client certificate (`cert`); setup goes through the Unix
//! socket. Redis runs with its TLS port only. The real worker binary and CLI prove that
//! verification succeeds with the right CA and fails, with a message that names the fix, with a
//! wrong host name or CA; that `sslmode=require` encrypts without a CA; that a plain URL
//! (`prefer`) still connects; and that `sslmode=disable` is refused by a TLS-only server. The
//! stream actions' servers (`tls://` NATS with JetStream, `rediss://` Redis) are verified
//! against `streams.ca_file`: a wrong CA is a retried, named error and loses nothing.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use fraiseql_observers_tests::nats::NatsServer;
use fraiseql_observers_tests::{
    run_cli, wait_for_jobs, wait_until, worker_binary, Cluster, RedisServer, Sink, Worker,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The files of one test's PKI, in a directory the `postgres` user owns.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    (cert.pem(), Issuer::new(params, key))
}

/// A leaf certificate signed by `issuer`: (certificate PEM, key PEM).
fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], cn: &str) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

/// ca.crt, server.crt/key (localhost only), client.crt/key (CN observers), other-ca.crt, and a
/// pg_hba.conf; owned by `postgres`, the server key 0600 as Postgres demands.
fn pki() -> Pki {
    let dir = tempfile::Builder::new()
        .prefix("fo-tls-")
        .tempdir()
        .expect("pki dir");
    let (ca_pem, issuer) = ca("fraiseql test CA");
    let (other_pem, _) = ca("unrelated CA");
    let (server_crt, server_key) = leaf(&issuer, &["localhost"], "localhost");
    let (client_crt, client_key) = leaf(&issuer, &[], "observers");
    let files = [
        ("ca.crt", ca_pem),
        ("other-ca.crt", other_pem),
        ("server.crt", server_crt),
        ("server.key", server_key),
        ("client.crt", client_crt),
        ("client.key", client_key),
        (
            "pg_hba.conf",
            // TCP only over TLS; the role observers only with a client certificate whose CN
            // is its name. The Unix socket (setup) is trusted.
            "local all all trust\n\
             hostssl all observers 127.0.0.1/32 cert\n\
             hostssl all scram 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n"
                .to_string(),
        ),
    ];
    for (name, text) in files {
        std::fs::File::create(dir.path().join(name))
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write pki file");
    }
    let ok = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown of the PKI directory (run the tests as root)");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.path().join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
    Pki { dir }
}

/// A cluster with `ssl = on` serving the PKI's server certificate and the TLS-only pg_hba, with
/// the extension created (through the socket).
async fn tls_cluster(pki: &Pki) -> (Cluster, tokio_postgres::Client) {
    let conf = [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", pki.arg("server.crt")),
        format!("ssl_key_file = '{}'", pki.arg("server.key")),
        format!("ssl_ca_file = '{}'", pki.arg("ca.crt")),
        format!("hba_file = '{}'", pki.arg("pg_hba.conf")),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let cluster = Cluster::start(&conf).expect("cluster with ssl = on");
    let client = cluster.connect_socket("postgres").await.expect("socket");
    client
        .batch_execute(
            "CREATE EXTENSION fraiseql_observers;
             CREATE ROLE observers LOGIN SUPERUSER;
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram LOGIN SUPERUSER PASSWORD 'pw-for-tls-test';",
        )
        .await
        .expect("extension and role");
    (cluster, client)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `fraiseql-observers status --json` with `url`: its output, asserting success.
fn status_ok(url: &str) {
    let out = run_cli(url, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status with {url} failed: {}",
        stderr(&out)
    );
}

/// `status` with `url` fails to connect; its stderr.
fn status_fails(url: &str) -> String {
    let out = run_cli(url, &["status", "--json"]);
    assert!(!out.status.success(), "status with {url} connected");
    let text = stderr(&out);
    assert!(text.contains("cannot connect to the database"), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_delivers_over_tls() {
    let pki = pki();
    let (cluster, client) = tls_cluster(&pki).await;
    let sink = Sink::start().await.expect("sink");
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY);
             SELECT observer_create('orders_created', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{}\"}}');",
            sink.url("/hooks/orders")
        ))
        .await
        .expect("observer");
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        pki.arg("ca.crt")
    );
    let worker = Worker::start(&url, &[("WORKER_ID", "tls")]).expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (1), (2)")
        .await
        .expect("insert");
    let delivered = wait_for_jobs(&client, "completed", 2, Duration::from_secs(60)).await;
    assert!(delivered, "not delivered; worker log:\n{}", worker.log());
    assert_eq!(sink.delivered(), 2);

    // Every session of the worker is encrypted (the server's own view).
    let sessions: Vec<(bool, String)> = client
        .query(
            "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'fraiseql-observers:tls'",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(!sessions.is_empty(), "the worker's sessions are listed");
    assert!(
        sessions.iter().all(|(ssl, v)| *ssl && v.starts_with("TLS")),
        "{sessions:?}"
    );

    // The CLI, with the libpq key/value form: host names the certificate's name, hostaddr the
    // address.
    status_ok(&format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        cluster.port,
        pki.arg("ca.crt")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_fails_clearly_with_a_wrong_host_name_or_ca() {
    let pki = pki();
    let (cluster, _client) = tls_cluster(&pki).await;
    let port = cluster.port;
    let ca = pki.arg("ca.crt");

    // The certificate names localhost only: 127.0.0.1 is not a name it lists.
    let text = status_fails(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    ));
    assert!(
        text.contains("certificate verify failed: the server's certificate is not valid for host \"127.0.0.1\"")
            && text.contains("use sslmode=verify-ca"),
        "{text}"
    );
    // verify-ca checks the chain only: the same address connects.
    status_ok(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-ca&sslrootcert={ca}"
    ));

    // A CA that did not sign the server's certificate.
    let other = pki.arg("other-ca.crt");
    for mode in ["verify-full", "verify-ca", "require"] {
        let text = status_fails(&format!(
            "postgres://postgres@localhost:{port}/postgres?sslmode={mode}&sslrootcert={other}"
        ));
        assert!(
            text.contains(&format!(
                "certificate verify failed: the server's certificate is not signed by the CA in sslrootcert ({other})"
            )) && text.contains("set sslrootcert to the CA that signed the server's certificate"),
            "sslmode={mode}: {text}"
        );
    }

    // A worker with the wrong CA keeps retrying and says why in its log.
    let worker = Worker::start(
        &format!(
            "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={other}"
        ),
        &[],
    )
    .expect("worker");
    let logged = wait_until(Duration::from_secs(30), || async {
        worker.log().contains("not signed by the CA in sslrootcert")
    })
    .await;
    assert!(logged, "worker log:\n{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_a_ca_binds_scram_and_disable_is_refused_by_a_tls_only_server_and_a_socket_is_plaintext(
) {
    let pki = pki();
    let (cluster, _client) = tls_cluster(&pki).await;
    let port = cluster.port;
    status_ok(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    ));
    // A plain URL is sslmode=prefer, as in libpq: TLS, since the server offers it.
    status_ok(&cluster.url("postgres"));
    // SCRAM over TLS binds the password exchange to the server's certificate
    // (SCRAM-SHA-256-PLUS, tls-server-end-point): with channel_binding=require, a wrong binding
    // or none would fail authentication.
    status_ok(&format!(
        "postgres://scram:pw-for-tls-test@127.0.0.1:{port}/postgres?sslmode=require&channel_binding=require"
    ));
    let text = status_fails(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    ));
    assert!(
        text.contains("no pg_hba.conf entry") && text.contains("no encryption"),
        "{text}"
    );
    // A Unix socket never carries TLS (the server declines it there): the default (prefer) goes
    // on in plaintext, and require is refused, saying why.
    status_ok(&cluster.socket_url("postgres"));
    let text = status_fails(&format!(
        "{} sslmode=require",
        cluster.socket_url("postgres")
    ));
    assert!(text.contains("server does not support TLS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_its_role() {
    let pki = pki();
    let (cluster, _client) = tls_cluster(&pki).await;
    let base = format!(
        "postgres://observers@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        pki.arg("ca.crt")
    );
    let text = status_fails(&base);
    assert!(text.contains("certificate"), "{text}");
    status_ok(&format!(
        "{base}&sslcert={}&sslkey={}",
        pki.arg("client.crt"),
        pki.arg("client.key")
    ));
}

/// `validate-config` (with an empty file) under `env`: exit code and stderr.
fn validate(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "").expect("write");
    let mut cmd = Command::new(worker_binary().expect("binary"));
    cmd.args(["validate-config", file.to_str().expect("path")]);
    for (k, v) in env {
        cmd.env(format!("FRAISEQL_OBSERVERS_{k}"), v);
    }
    let out = cmd.output().expect("run");
    (out.status.code(), stderr(&out))
}

#[test]
fn validate_config_names_the_bad_tls_parameter_and_the_fix() {
    let pki = pki();
    let bad = |env: &[(&str, &str)], expected: &[&str]| {
        let (code, text) = validate(env);
        assert_eq!(code, Some(2), "{env:?}: {text}");
        for e in expected {
            assert!(text.contains(e), "{env:?}: expected {e:?} in {text}");
        }
    };
    bad(
        &[("DATABASE_URL", "postgres://h/db?sslmode=verify_full")],
        &["invalid TLS setting for `database_url`: the value of `sslmode` is not supported; use disable, prefer, require, verify-ca or verify-full"],
    );
    bad(
        &[("DATABASE_URL", "postgres://h/db?sslmode=verify-full")],
        &["no sslrootcert names the CA", "set sslrootcert"],
    );
    bad(
        &[(
            "DATABASE_URL",
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )],
        &["sslrootcert: cannot read /nonexistent/ca.pem"],
    );
    let key_as_cert = format!(
        "host=h sslmode=verify-ca sslrootcert={}",
        pki.arg("server.key")
    );
    bad(
        &[("DATABASE_URL", &key_as_cert)],
        &["holds no PEM certificate"],
    );
    bad(
        &[
            ("REDIS__URL", "redis://127.0.0.1:6379"),
            ("REDIS__CA_FILE", &pki.arg("ca.crt")),
        ],
        &["`redis.ca_file`", "use rediss://"],
    );
    bad(
        &[
            ("REDIS__URL", "rediss://localhost:6380"),
            ("REDIS__CA_FILE", "/nonexistent/ca.pem"),
        ],
        &["redis.ca_file: cannot read /nonexistent/ca.pem"],
    );
    bad(
        &[("REDIS__URL", "rediss://localhost:6380/#insecure")],
        &["#insecure", "redis.ca_file"],
    );
    bad(
        &[
            ("REDIS__URL", "rediss://localhost:6380"),
            ("REDIS__CERT_FILE", &pki.arg("client.crt")),
        ],
        &["redis.cert_file and redis.key_file go together"],
    );
    bad(
        &[("STREAMS__CA_FILE", "/nonexistent/ca.pem")],
        &[
            "`streams.ca_file`",
            "streams.ca_file: cannot read /nonexistent/ca.pem",
        ],
    );
    bad(
        &[("STREAMS__CA_FILE", &pki.arg("server.key"))],
        &["`streams.ca_file`", "holds no PEM certificate"],
    );
    let good = [
        ("STREAMS__CA_FILE", pki.arg("ca.crt")),
        (
            "DATABASE_URL",
            format!(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
                pki.arg("ca.crt"),
                pki.arg("client.crt"),
                pki.arg("client.key")
            ),
        ),
        ("REDIS__URL", "rediss://localhost:6380/0".to_string()),
        ("REDIS__CA_FILE", pki.arg("ca.crt")),
    ];
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, text) = validate(&good);
    assert_eq!(code, Some(0), "{text}");
}

/// Jobs for an observer without a source table, posting to `url`.
async fn queue(client: &tokio_postgres::Client, name: &str, url: &str, jobs: usize) {
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION IF NOT EXISTS fraiseql_observers;
               SELECT observer_create('{name}', NULL, action => '{{"type": "webhook", "url": "{url}"}}');
               SELECT observer_enqueue_many('{name}', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, {jobs}) i));"#
        ))
        .await
        .expect("queue");
}

fn redis_tls(pki: &Pki) -> RedisServer {
    RedisServer::start_tls(
        &pki.path("server.crt"),
        &pki.path("server.key"),
        &pki.path("ca.crt"),
    )
    .expect("redis-server with its TLS port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_right_ca_holds_the_shared_state() {
    let pki = pki();
    let redis = redis_tls(&pki);
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    let sink = Sink::start().await.expect("sink");
    queue(&client, "ledgered", &sink.url("/ledger"), 3).await;
    let url = format!("rediss://localhost:{}/0", redis.port);
    let ca = pki.arg("ca.crt");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("REDIS__URL", url.as_str()),
            ("REDIS__CA_FILE", ca.as_str()),
        ],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 3, Duration::from_secs(60)).await,
        "worker log:\n{}",
        worker.log()
    );
    // The delivered-ledger was written over TLS: one key per job.
    let keys = redis
        .cli(&["KEYS", "fraiseql_observers:delivered:*"])
        .expect("redis-cli");
    assert_eq!(
        keys.lines().count(),
        3,
        "{keys}\nworker log:\n{}",
        worker.log()
    );
    assert!(
        !worker.log().contains("redis unavailable"),
        "{}",
        worker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_wrong_ca_or_host_name_is_refused_clearly() {
    let pki = pki();
    let redis = redis_tls(&pki);
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    let sink = Sink::start().await.expect("sink");
    let cases = [
        // A CA that did not sign the server's certificate.
        (
            format!("rediss://localhost:{}/0", redis.port),
            pki.arg("other-ca.crt"),
            "not signed by the CA in redis.ca_file",
        ),
        // The certificate names localhost only.
        (
            format!("rediss://127.0.0.1:{}/0", redis.port),
            pki.arg("ca.crt"),
            "does not list the host of redis.url",
        ),
    ];
    for (n, (url, ca, why)) in cases.iter().enumerate() {
        // One worker at a time, each with its own jobs: a worker calls Redis for the jobs it
        // claims.
        queue(&client, &format!("case_{n}"), &sink.url("/nope"), 2).await;
        let worker = Worker::start(
            &cluster.url("postgres"),
            &[
                ("REDIS__URL", url.as_str()),
                ("REDIS__CA_FILE", ca.as_str()),
            ],
        )
        .expect("worker");
        // Delivery goes on without Redis (its documented degradation)...
        assert!(
            wait_for_jobs(
                &client,
                "completed",
                2 * (n as i64 + 1),
                Duration::from_secs(60)
            )
            .await,
            "worker log:\n{}",
            worker.log()
        );
        // ... and the log says what is wrong and how to fix it.
        let said = wait_until(Duration::from_secs(20), || async {
            let log = worker.log();
            log.contains("redis unavailable") && log.contains(why)
        })
        .await;
        assert!(said, "{url}: expected {why:?} in\n{}", worker.log());
    }
    let keys = redis
        .cli(&["KEYS", "fraiseql_observers:delivered:*"])
        .expect("redis-cli");
    assert!(keys.is_empty(), "nothing was written: {keys}");
}

/// The stream actions over TLS: with `streams.ca_file` set to a CA that did not sign the
/// servers' certificates, every attempt fails with the reason and the fix, and nothing is
/// delivered or lost; a worker with the right CA then delivers each event exactly once, to a
/// `tls://` NATS server with JetStream and a `rediss://` Redis server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_servers_are_verified_against_streams_ca_file() {
    let pki = pki();
    let nats = NatsServer::start_tls(
        &pki.path("server.crt"),
        &pki.path("server.key"),
        &pki.path("ca.crt"),
    )
    .expect("nats-server with TLS");
    nats.create_stream("ORDERS", &["orders.>"])
        .await
        .expect("stream over TLS");
    let redis = redis_tls(&pki);
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    let retries = r#"{"max_attempts": 1000, "backoff_base": "100 milliseconds", "backoff_cap": "300 milliseconds"}"#;
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY);
               SELECT observer_create('to_nats', 'orders', events => ARRAY['INSERT'],
                   action => '{{"type": "nats", "url": "{nats}", "subject": "orders.{{{{ new.id }}}}"}}',
                   options => '{retries}');
               SELECT observer_create('to_redis', 'orders', events => ARRAY['INSERT'],
                   action => '{{"type": "redis_stream", "url": "rediss://localhost:{redis}/0", "stream": "orders"}}',
                   options => '{retries}');
               INSERT INTO orders SELECT generate_series(1, 3);"#,
            nats = nats.url(),
            redis = redis.port,
        ))
        .await
        .expect("setup");

    let wrong_ca = pki.arg("other-ca.crt");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[("STREAMS__CA_FILE", wrong_ca.as_str())],
    )
    .expect("worker");
    let named = |server: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM observer.attempts
                     WHERE outcome = 'retry' AND error LIKE $1 AND error LIKE '%streams.ca_file%'",
                    &[&format!("cannot connect to the {server} server%")],
                )
                .await
                .map(|r| r.get::<_, i64>(0) > 0)
                .unwrap_or(false)
        }
    };
    let failed = wait_until(Duration::from_secs(60), || async {
        named("NATS").await && named("Redis").await
    })
    .await;
    assert!(failed, "worker log:\n{}", worker.log());
    drop(worker);
    let completed: i64 = client
        .query_one(
            "SELECT count(*) FROM observer.jobs WHERE state <> 'pending'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(completed, 0, "nothing delivered, nothing dead");
    assert_eq!(redis.cli(&["XLEN", "orders"]).expect("XLEN"), "0");

    let ca = pki.arg("ca.crt");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[("STREAMS__CA_FILE", ca.as_str())],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 6, Duration::from_secs(60)).await,
        "worker log:\n{}",
        worker.log()
    );
    let messages = nats.messages("ORDERS").await.expect("messages over TLS");
    let subjects: std::collections::BTreeSet<String> =
        messages.iter().map(|m| m.subject.clone()).collect();
    assert_eq!(messages.len(), 3, "one message per event: {subjects:?}");
    assert_eq!(
        subjects,
        ["orders.1", "orders.2", "orders.3"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(redis.cli(&["XLEN", "orders"]).expect("XLEN"), "3");
}
