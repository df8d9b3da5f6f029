//! The operator console over plain HTTP (reqwest), against the real worker binary and a real
//! cluster: `run` with a `[console]` section and `fraiseql-observers console` alone. Sign-in
//! (a page without a token or session is the sign-in form and nothing else, a wrong token opens
//! nothing), CSRF and origin checks on every change (refused with 403, nothing changed in SQL),
//! read-only mode, the purge's confirmation, every change recorded with its operator's name in
//! the same transaction, no secret on any page, and the hostile side (DESIGN 3a): a console whose
//! database role lacks admin access shows no data, and roles without it cannot write or read the
//! operator action log.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    dead_jobs, free_port, wait_for_dead_jobs, wait_until, worker_binary, Cluster, Sink,
};
use reqwest::header::{HeaderMap, HeaderValue};

const ALICE: &str = "console-token-alice-5f1e2d3c4b5a69788796";
/// Credentials written in the observer's action (allowed with allow_literal_credentials): no
/// page may show them.
const URL_TOKEN: &str = "url-token-4471";
const HEADER_TOKEN: &str = "hdr-token-4472";
/// A worker secret's value (the console's configuration has it): never on a page.
const SECRET_VALUE: &str = "secret-value-4473";

/// A `fraiseql-observers run` or `console` process with a `[console]` section.
struct Served {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Start `command` (`run` or `console`) with `console_toml` (the `[console]` section, its
    /// `listen` added) against `database_url`; the worker secret it references may go to `sink`.
    async fn start(command: &str, database_url: &str, sink: &Sink, console_toml: &str) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("port");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[secrets.receiver_token]\nvalue = \"{SECRET_VALUE}\"\ndestinations = [\"{}\"]\n\n\
                 [console]\nlisten = \"127.0.0.1:{port}\"\n{console_toml}",
                sink.url("/")
            ),
        )
        .expect("config");
        let log = dir.path().join("served.log");
        let child = Command::new(worker_binary().expect("binary"))
            .arg(command)
            .arg("--config")
            .arg(&config)
            .env("FRAISEQL_OBSERVERS_DATABASE_URL", database_url)
            .env("FRAISEQL_OBSERVERS_POLL_INTERVAL_MS", "100")
            .env("FRAISEQL_OBSERVERS_HTTP__ALLOW_NETWORKS", "127.0.0.0/8")
            // Circuits open for 300 ms, so the retried job does not wait for the refusals' circuit.
            .env("FRAISEQL_OBSERVERS_BREAKER__OPEN_MS", "300")
            .env("CONSOLE_TOKEN_ALICE", ALICE)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start");
        let served = Served {
            child,
            port,
            log,
            _dir: dir,
        };
        let up = wait_until(Duration::from_secs(30), || async {
            matches!(served.get("/healthz", None, None).await, Ok(r) if r.0 == 200)
        })
        .await;
        assert!(up, "the console did not answer: {}", served.log());
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `path` with a bearer token or a session cookie: status, headers, body.
    async fn get(
        &self,
        path: &str,
        bearer: Option<&str>,
        cookie: Option<&str>,
    ) -> reqwest::Result<(u16, HeaderMap, String)> {
        let mut req = client().get(self.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await?;
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        Ok((status, headers, resp.text().await?))
    }

    /// POST the form `fields` to `path` with a session cookie and extra headers.
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        headers: &[(&'static str, &str)],
        fields: &[(&str, &str)],
    ) -> (u16, HeaderMap, String) {
        let mut req = client().post(self.url(path)).form(fields);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, HeaderValue::from_str(v).expect("header"));
        }
        let resp = req.send().await.expect("post");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.expect("body"))
    }

    /// Sign in as alice: the session cookie (`name=value`).
    async fn sign_in(&self) -> String {
        let (status, headers, _) = self.post("/login", None, &[], &[("token", ALICE)]).await;
        assert_eq!(status, 303);
        let cookie = headers["set-cookie"].to_str().expect("cookie").to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie.split(';').next().expect("pair").to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The CSRF token of a page's forms.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..].split('"').next().expect("value").to_string()
}

/// The extension, a role `console_admin` with admin access, a table and an observer whose
/// action holds literal credentials; `max_attempts` 1, so a refused delivery is dead at once.
async fn setup(cluster: &Cluster, sink: &Sink) -> tokio_postgres::Client {
    let client = cluster.connect("postgres").await.expect("connect");
    let url = sink.url(&format!("/hook?token={URL_TOKEN}"));
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE ROLE console_admin LOGIN; SELECT observer_grant('console_admin', 'admin');
             CREATE ROLE console_worker LOGIN; SELECT observer_grant('console_worker', 'worker');
             CREATE ROLE console_app LOGIN; SELECT observer_grant('console_app', 'app');
             CREATE ROLE console_nobody LOGIN;
             CREATE TABLE orders (id int PRIMARY KEY, note text);
             SELECT observer_create('orders_hook', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{url}\", \"allow_literal_credentials\": true,
                    \"headers\": {{\"Authorization\": \"Bearer {HEADER_TOKEN}\",
                                  \"X-Receiver\": {{\"secret\": \"receiver_token\"}}}}}}',
                 '{{\"max_attempts\": 1}}');"
        ))
        .await
        .expect("setup");
    client
}

/// The operator action log: (operator, action, db_role), oldest first.
async fn logged(client: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT operator, action, db_role FROM observer.console_actions ORDER BY id",
            &[],
        )
        .await
        .expect("log")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Every job as one line (id, state, attempt, attempts allowed, due time, last error), for the
/// message of a failed assertion.
async fn job_states(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT concat_ws(' ', id, state, attempt, attempts_allowed, run_at, last_error)
             FROM observer.jobs ORDER BY id",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Two rows, both dead (the sink refuses), then the sink accepts.
async fn two_dead_jobs(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'first'), (2, 'second')")
        .await
        .expect("insert");
    wait_for_dead_jobs(client, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_serves_the_console_behind_tokens_and_refuses_what_is_not_its_own_form() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let accept = Arc::new(AtomicBool::new(false));
    let flag = accept.clone();
    let sink = Sink::start_with(Arc::new(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            200
        } else {
            500
        }
    }))
    .await
    .expect("sink");
    let client = setup(&cluster, &sink).await;
    let served = Served::start(
        "run",
        &cluster.url_as("console_admin"),
        &sink,
        "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    )
    .await;
    let jobs = two_dead_jobs(&client).await;
    refuses_without_a_token(&served).await;
    let cookie = served.sign_in().await;
    let (status, _, page) = served.get("/dlq", None, Some(&cookie)).await.expect("dlq");
    assert_eq!(status, 200);
    assert_eq!(page.matches("data-testid=\"dlq-row\"").count(), 2, "{page}");
    let token = csrf(&page);
    refuses_forged_posts(&served, &cookie, &token, &client, &jobs).await;

    // The real thing: job 1 retried from its form, delivered once the sink accepts.
    accept.store(true, Ordering::SeqCst);
    let job = jobs[0].to_string();
    let (status, _, page) = served
        .post(
            "/dlq/retry",
            Some(&cookie),
            &[("origin", &served.url(""))],
            &[("csrf", &token), ("scope", "selected"), ("job", &job)],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("data-testid=\"operation-changed\">1<"),
        "{page}"
    );
    let received = sink.wait_received(3, Duration::from_secs(30)).await;
    let state = job_states(&client).await;
    assert!(
        received,
        "the retried job is delivered: {state:?}\n{}",
        served.log()
    );
    let delivered = wait_until(Duration::from_secs(30), || async {
        dead_jobs(&client).await == vec![jobs[1]]
    })
    .await;
    assert!(delivered, "job {job} left the dead-letter queue");
    purges_after_confirmation(&served, &cookie, &token, &client, jobs[1]).await;
    pauses_an_observer(&served, &cookie, &token, &client).await;
    no_page_holds_a_secret(&served, &cookie).await;
}

/// Without a session or token every page is the sign-in form (401) and holds no data.
async fn refuses_without_a_token(served: &Served) {
    for path in ["/", "/dlq", "/events", "/observers/orders_hook", "/actions"] {
        for bearer in [None, Some("console-token-alice-5f1e2d3c4b5a69788797")] {
            let (status, headers, page) = served.get(path, bearer, None).await.expect("get");
            assert_eq!(status, 401, "{path}");
            assert!(page.contains("name=\"token\""), "{page}");
            assert!(
                !page.contains("dlq-row") && !page.contains("queue-pending"),
                "{page}"
            );
            assert!(headers["content-security-policy"]
                .to_str()
                .expect("csp")
                .contains("script-src 'self'"));
        }
    }
    let (status, _, page) = served.get("/", Some(ALICE), None).await.expect("bearer");
    assert_eq!(status, 200);
    assert!(page.contains("data-testid=\"queue-dead\">2<"), "{page}");
    let (status, headers, _) = served
        .post(
            "/login",
            None,
            &[],
            &[("token", "not-the-token-at-all-000")],
        )
        .await;
    assert_eq!(status, 401);
    assert!(headers.get("set-cookie").is_none());
    // A bearer token opens pages, never a change.
    let (status, _, _) = served
        .post(
            "/dlq/retry",
            None,
            &[("authorization", &format!("Bearer {ALICE}"))],
            &[("scope", "filter")],
        )
        .await;
    assert_eq!(status, 401);
}

/// Extra request headers, and form fields, of a forged post.
type Headers<'a> = &'a [(&'static str, &'a str)];
type Fields<'a> = &'a [(&'a str, &'a str)];

/// Posts without the session's CSRF token, or from another site, answer 403 and change nothing.
async fn refuses_forged_posts(
    served: &Served,
    cookie: &str,
    token: &str,
    client: &tokio_postgres::Client,
    jobs: &[i64],
) {
    let job = jobs[0].to_string();
    let evil = "http://127.0.0.1:1";
    let cases: [(Headers, Fields); 4] = [
        (&[], &[("scope", "selected"), ("job", &job)]),
        (
            &[],
            &[("csrf", "0123"), ("scope", "selected"), ("job", &job)],
        ),
        (&[("origin", evil)], &[("csrf", token), ("scope", "filter")]),
        (
            &[("sec-fetch-site", "cross-site")],
            &[("csrf", token), ("scope", "filter")],
        ),
    ];
    for (headers, fields) in cases {
        for path in ["/dlq/retry", "/dlq/purge", "/observers/orders_hook/disable"] {
            let (status, _, page) = served.post(path, Some(cookie), headers, fields).await;
            assert_eq!(status, 403, "{path} {headers:?} {fields:?}: {page}");
            assert!(!page.contains("purge-count"), "{page}");
        }
    }
    assert_eq!(dead_jobs(client).await, jobs, "nothing changed");
    assert!(logged(client).await.is_empty());
    let enabled: bool = client
        .query_one("SELECT enabled FROM observer.observers", &[])
        .await
        .expect("enabled")
        .get(0);
    assert!(enabled);
}

/// A purge answers a confirmation with the count first; only the confirmed post deletes.
async fn purges_after_confirmation(
    served: &Served,
    cookie: &str,
    token: &str,
    client: &tokio_postgres::Client,
    job: i64,
) {
    let origin = served.url("");
    let (status, _, page) = served
        .post(
            "/dlq/purge",
            Some(cookie),
            &[("origin", &origin)],
            &[
                ("csrf", token),
                ("scope", "filter"),
                ("observer", "orders_hook"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("data-testid=\"purge-count\">1<"), "{page}");
    assert_eq!(
        dead_jobs(client).await,
        vec![job],
        "the confirmation deletes nothing"
    );
    // A stale count is asked again, not obeyed.
    let (_, _, page) = served
        .post(
            "/dlq/purge",
            Some(cookie),
            &[],
            &[
                ("csrf", token),
                ("scope", "filter"),
                ("observer", "orders_hook"),
                ("confirm", "5"),
            ],
        )
        .await;
    assert!(page.contains("The selection changed"), "{page}");
    assert_eq!(dead_jobs(client).await, vec![job]);
    let (status, _, page) = served
        .post(
            "/dlq/purge",
            Some(cookie),
            &[],
            &[
                ("csrf", token),
                ("scope", "filter"),
                ("observer", "orders_hook"),
                ("confirm", "1"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(dead_jobs(client).await.is_empty());
    let log = logged(client).await;
    let actions: Vec<&str> = log.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(actions, ["dlq_retry", "dlq_purge"]);
    assert!(
        log.iter()
            .all(|(op, _, role)| op == "alice" && role == "console_admin"),
        "{log:?}"
    );
}

/// Pause with a reason from the observer's page: paused in SQL, logged with the operator.
async fn pauses_an_observer(
    served: &Served,
    cookie: &str,
    token: &str,
    client: &tokio_postgres::Client,
) {
    let (status, _, _) = served
        .post(
            "/observers/orders_hook/pause",
            Some(cookie),
            &[],
            &[("csrf", token), ("reason", "receiver migrating")],
        )
        .await;
    assert_eq!(status, 303);
    let reason: Option<String> = client
        .query_one("SELECT paused_reason FROM observer.observers", &[])
        .await
        .expect("paused")
        .get(0);
    assert_eq!(reason.as_deref(), Some("receiver migrating"));
    let detail: String = client
        .query_one("SELECT operator || ' ' || action || ' ' || target || ' ' || (detail->>'reason') FROM observer.console_actions ORDER BY id DESC LIMIT 1", &[])
        .await
        .expect("logged")
        .get(0);
    assert_eq!(
        detail,
        "alice observer_pause orders_hook receiver migrating"
    );
    let (_, _, page) = served.get("/", None, Some(cookie)).await.expect("overview");
    assert!(
        page.contains("observer_pause") && page.contains("<strong>alice</strong>"),
        "{page}"
    );
}

/// No page shows the action's credentials, a worker secret or an operator's token; no page has
/// inline script or style.
async fn no_page_holds_a_secret(served: &Served, cookie: &str) {
    let event: i64 = 1024; // the first event id (ids come in blocks of 1024)
    for path in [
        "/".to_string(),
        "/observers".to_string(),
        "/observers/orders_hook".to_string(),
        "/events".to_string(),
        format!("/events/{event}"),
        "/dlq".to_string(),
        "/actions".to_string(),
    ] {
        let (status, _, page) = served.get(&path, None, Some(cookie)).await.expect("page");
        assert_eq!(status, 200, "{path}: {page}");
        for secret in [URL_TOKEN, HEADER_TOKEN, SECRET_VALUE, ALICE] {
            assert!(!page.contains(secret), "{secret} on {path}");
        }
        assert!(
            !page.contains("style=") && !page.contains("<script>"),
            "{path}"
        );
    }
    let (_, _, page) = served
        .get("/observers/orders_hook", None, Some(cookie))
        .await
        .expect("observer");
    assert!(
        page.contains("receiver_token"),
        "a reference names its secret: {page}"
    );
    let (_, _, page) = served
        .get(&format!("/events/{event}"), None, Some(cookie))
        .await
        .expect("event");
    assert!(page.contains("data-testid=\"timeline\""), "{page}");
    assert!(
        page.matches("data-testid=\"attempt\"").count() >= 2,
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_console_offers_no_form_and_refuses_every_post() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 500)).await.expect("sink");
    let client = setup(&cluster, &sink).await;
    let _worker =
        fraiseql_observers_tests::Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    let jobs = two_dead_jobs(&client).await;
    let served = Served::start(
        "console",
        &cluster.url_as("console_admin"),
        &sink,
        "read_only = true\n[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    )
    .await;
    let cookie = served.sign_in().await;
    let (status, _, page) = served.get("/dlq", None, Some(&cookie)).await.expect("dlq");
    assert_eq!(status, 200);
    assert_eq!(page.matches("data-testid=\"dlq-row\"").count(), 2);
    assert!(
        !page.contains("retry-selected") && !page.contains("name=\"job\""),
        "{page}"
    );
    let (_, _, observer) = served
        .get("/observers/orders_hook", None, Some(&cookie))
        .await
        .expect("observer");
    assert!(!observer.contains("observer-disable"), "{observer}");
    let token = csrf(&page); // the sign-out form's
    for path in ["/dlq/retry", "/dlq/purge", "/observers/orders_hook/disable"] {
        let (status, _, _) = served
            .post(
                path,
                Some(&cookie),
                &[],
                &[("csrf", &token), ("scope", "filter"), ("confirm", "2")],
            )
            .await;
        assert_eq!(status, 403, "{path}");
    }
    assert_eq!(dead_jobs(&client).await, jobs);
    assert!(logged(&client).await.is_empty());
    slow_headers_are_dropped(&served);
    // Signing out changes nothing in the database: allowed, and the session is gone.
    let (status, _, _) = served
        .post("/logout", Some(&cookie), &[], &[("csrf", &token)])
        .await;
    assert_eq!(status, 303);
    let (status, _, _) = served.get("/dlq", None, Some(&cookie)).await.expect("dlq");
    assert_eq!(status, 401);
}

/// A client that never finishes its headers is disconnected (its connection and task do not
/// stay forever): the read ends, with nothing answered, well before the socket's own timeout.
fn slow_headers_are_dropped(served: &Served) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("partial request");
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(read.is_ok(), "the console closed the connection: {read:?}");
    assert!(!String::from_utf8_lossy(&answer).contains("dlq-row"));
}

/// DESIGN 3a: the console shows only what its database role may read. A role with worker or no
/// access gets the reason (and the grant that fixes it), never data; and no role without admin
/// access can write or read the operator action log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_without_admin_access_see_no_data_and_cannot_touch_the_action_log() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 500)).await.expect("sink");
    let client = setup(&cluster, &sink).await;
    let _worker =
        fraiseql_observers_tests::Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    two_dead_jobs(&client).await;
    for role in ["console_worker", "console_nobody"] {
        let served = Served::start(
            "console",
            &cluster.url_as(role),
            &sink,
            "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
        )
        .await;
        for path in ["/", "/dlq", "/observers", "/events/1024", "/actions"] {
            let (status, _, page) = served.get(path, Some(ALICE), None).await.expect("page");
            assert_eq!(status, 403, "{role} {path}: {page}");
            assert!(page.contains("observer_grant"), "{page}");
            assert!(
                !page.contains("dlq-row") && !page.contains("orders_hook"),
                "{role} {path}: {page}"
            );
        }
    }
    for role in ["console_worker", "console_app", "console_nobody"] {
        let c = cluster.connect_as(role).await;
        for sql in [
            "SELECT observer_console_record('mallory', 'dlq_purge', 'everything')",
            "SELECT * FROM observer_console_actions()",
            "SELECT observer_console_overview()",
            "SELECT * FROM observer.console_actions",
            "INSERT INTO observer.console_actions (operator, action, target) VALUES ('mallory', 'dlq_purge', 'x')",
        ] {
            assert_eq!(fraiseql_observers_tests::sqlstate(&c, sql).await, "42501", "{role}: {sql}");
        }
    }
    assert!(logged(&client).await.is_empty());
    // An operator name the log's rule refuses is refused, by admins too.
    let admin = cluster.connect_as("console_admin").await;
    assert_eq!(
        fraiseql_observers_tests::sqlstate(
            &admin,
            "SELECT observer_console_record('<b>x</b>', 'dlq_retry', 'x')"
        )
        .await,
        "23514"
    );
}

/// A console without tokens only on a loopback address: anything else refuses to start, naming
/// the key.
#[test]
fn loopback_without_token_refuses_a_public_listen_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[console]\nlisten = \"0.0.0.0:9899\"\nloopback_without_token = true\n",
    )
    .expect("write");
    let out = Command::new(worker_binary().expect("binary"))
        .args(["console", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`console.loopback_without_token`"), "{err}");
}

/// Progress for large operations: a retry of more jobs than one transaction takes runs in
/// chunks of 500, each its own transaction with its own log entry, behind a progress page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_of_many_dead_jobs_runs_in_chunks_behind_a_progress_page() {
    let cluster = Cluster::start(&[]).expect("cluster");
    // 400: the request's fault, not the endpoint's, so no circuit slows the 1200 refusals.
    let sink = Sink::start_with(Arc::new(|_, _| 400)).await.expect("sink");
    let client = setup(&cluster, &sink).await;
    let served = Served::start(
        "run",
        &cluster.url_as("console_admin"),
        &sink,
        "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    )
    .await;
    client
        .batch_execute("INSERT INTO orders SELECT g, 'n' FROM generate_series(1, 1200) g")
        .await
        .expect("insert");
    let dead = wait_until(Duration::from_secs(60), || async {
        dead_jobs(&client).await.len() == 1200
    })
    .await;
    assert!(dead, "1200 dead jobs");
    // Pause first, so the retried jobs wait instead of dying again while the test reads them.
    client
        .batch_execute("SELECT observer_pause('orders_hook', 'test')")
        .await
        .expect("pause");
    let cookie = served.sign_in().await;
    let (_, _, page) = served.get("/dlq", None, Some(&cookie)).await.expect("dlq");
    let token = csrf(&page);
    let (status, headers, _) = served
        .post(
            "/dlq/retry",
            Some(&cookie),
            &[],
            &[
                ("csrf", &token),
                ("scope", "filter"),
                ("observer", "orders_hook"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let progress = headers["location"].to_str().expect("location").to_string();
    assert!(progress.starts_with("/dlq/operations/"), "{progress}");
    let finished = wait_until(Duration::from_secs(60), || async {
        let (_, _, page) = served
            .get(&progress, None, Some(&cookie))
            .await
            .expect("progress");
        page.contains("operation-finished")
    })
    .await;
    assert!(finished, "the operation finishes");
    let (_, _, page) = served
        .get(&progress, None, Some(&cookie))
        .await
        .expect("progress");
    assert!(
        page.contains("data-testid=\"operation-done\">1200<"),
        "{page}"
    );
    assert!(
        page.contains("data-testid=\"operation-total\">1200<"),
        "{page}"
    );
    assert!(dead_jobs(&client).await.is_empty());
    let chunks: Vec<i64> = client
        .query(
            "SELECT jsonb_array_length(detail->'job_ids')::bigint FROM observer.console_actions ORDER BY id",
            &[],
        )
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(chunks, vec![500, 500, 200]);
}
