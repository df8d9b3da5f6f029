//! Red team of the operator console (issue 18), against the real worker binary and a real
//! cluster, over raw HTTP (a `TcpStream`, so that every header, method and body is the
//! attacker's choice). DESIGN 3a and the web threats of an operator console:
//! - the least-privileged roles write hostile data the console shows (an INSERT-only writer's
//!   row values and `fraiseql_observers.context`, a table owner's table and column names, a
//!   receiver's 500 body in the attempts, a pause reason, a login role without any grant naming
//!   its session like a worker): every page shows it as text, never as markup or script;
//! - a visitor without a token and a page of another site the operator's browser visits
//!   (text/plain form posts, `Origin: null`, same-site and look-alike origins, methods other than
//!   POST, a GET to a changing route, login CSRF, a token in the query string or as a session
//!   cookie, path traversal under `/assets/`, CORS): nothing changes in the database and no data
//!   is shown;
//! - a console without tokens (loopback) refuses a post from another site, answers only its own
//!   host names (DNS rebinding: a re-pointed name read and purged the dead-letter queue), and
//!   keeps its operator's session through a flood of cookieless requests;
//! - a read-only console lets its operator sign out; a templated URL's credential is masked.
//!
//! The last four were findings of this red team, fixed in a477470; they stay as regressions.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::sink::{Reply, Sink};
use fraiseql_observers_tests::{
    dead_jobs, free_port, wait_for_dead_jobs, wait_until, worker_binary, Cluster,
};

const ALICE: &str = "console-token-alice-hostile18-7f6e5d4c3b2a";
/// What the receiver answers: markup, script and a `javascript:` URL in a 500 body.
const RECEIVER_BODY: &str =
    "<script>alert(1)</script><img src=x onerror=alert(2)><a href=\"javascript:alert(3)\">x</a>";

/// A `run` or `console` process with a `[console]` section; killed on drop.
struct Served {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers (names lower case) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The session cookie it sets (`fo_console=...`).
    fn session(&self) -> Option<String> {
        let c = self.header("set-cookie")?;
        Some(c.split(';').next()?.to_string())
    }

    /// The CSRF token of its forms.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.body[at..]
            .split('"')
            .next()
            .expect("value")
            .to_string()
    }
}

impl Served {
    /// Start `command` with `console_toml` (the rest of `[console]`, its `listen` added).
    fn start(command: &str, database_url: &str, console_toml: &str) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port().expect("port");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!("[console]\nlisten = \"127.0.0.1:{port}\"\n{console_toml}"),
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
        let up = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            served
                .try_send("GET", "/healthz", &[], "")
                .map(|a| a.status)
                == Some(200)
        });
        assert!(up, "the console did not answer: {}", served.log());
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One raw HTTP/1.1 request (`headers` as written; a `Host` is added unless given).
    fn try_send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<Answer> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.host()));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        parse(&String::from_utf8_lossy(&raw))
    }

    fn send(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        self.try_send(method, target, headers, body)
            .unwrap_or_else(|| panic!("no answer to {method} {target}: {}", self.log()))
    }

    /// GET with the session `cookie`.
    fn get(&self, target: &str, cookie: &str) -> Answer {
        self.send("GET", target, &[("Cookie", cookie)], "")
    }

    /// Sign in as alice: the session cookie.
    fn sign_in(&self) -> String {
        let a = self.send(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("token={ALICE}"),
        );
        assert_eq!(a.status, 303, "{}", a.body);
        a.session().expect("a session cookie")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 answer (the console sends Content-Length bodies).
fn parse(raw: &str) -> Option<Answer> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Elements the console's own pages are made of.
const ELEMENTS: &[&str] = &[
    "!doctype",
    "html",
    "head",
    "meta",
    "title",
    "link",
    "script",
    "body",
    "header",
    "span",
    "nav",
    "a",
    "div",
    "form",
    "input",
    "button",
    "main",
    "h1",
    "h2",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "p",
    "section",
    "dl",
    "dt",
    "dd",
    "pre",
    "code",
    "ol",
    "ul",
    "li",
    "details",
    "summary",
    "strong",
    "label",
    "select",
    "option",
    "progress",
    "figure",
    "figcaption",
    "svg",
    "line",
    "text",
    "g",
    "rect",
    "polyline",
    "br",
];

/// Every tag of `page` is one of the console's own elements whose attributes are all quoted,
/// none an event handler, a style or a `javascript:` URL, and the only script is the console's
/// own: hostile values are text (escaped), never markup.
fn assert_inert(path: &str, page: &str) {
    let own_script = "<script src=\"/assets/console.js\" defer></script>";
    assert_eq!(page.matches(own_script).count(), 1, "{path}: {page}");
    let rest = page.replacen(own_script, "", 1);
    for tag in rest.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        let body = tag.trim_start_matches('/').trim_end_matches('/');
        let (name, attrs) = body.split_once(' ').unwrap_or((body, ""));
        let name = name.to_ascii_lowercase();
        assert!(
            ELEMENTS.contains(&name.as_str()),
            "<{tag}> on {path}: {page}"
        );
        assert!(name != "script", "another script on {path}: {page}");
        for (attr, value) in attributes(attrs).unwrap_or_else(|| panic!("<{tag}> on {path}")) {
            let attr = attr.to_ascii_lowercase();
            assert!(
                !attr.starts_with("on") && attr != "style" && attr != "srcdoc",
                "{attr} in <{tag}> on {path}"
            );
            let url = value.trim().to_ascii_lowercase();
            assert!(!url.starts_with("javascript:"), "<{tag}> on {path}");
        }
    }
}

/// The attributes of a tag (`name="value"` or a bare `name`); None when one is not quoted as
/// the console writes them (a value that broke out of its quotes).
fn attributes(mut s: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() || s == "!doctype" {
            return Some(out);
        }
        let end = s
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(s.len());
        let (name, after) = s.split_at(end);
        match after.strip_prefix("=\"") {
            Some(quoted) => {
                let (value, next) = quoted.split_once('"')?;
                out.push((name, value));
                s = next;
            }
            None if after.starts_with('=') => return None,
            None => {
                out.push((name, ""));
                s = after;
            }
        }
    }
}

/// The extension, an admin role for the console, an INSERT-only writer, and `orders` watched by
/// a webhook to `sink` that is dead at its first refusal.
async fn setup(cluster: &Cluster, sink: &Sink) -> tokio_postgres::Client {
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE ROLE console_admin LOGIN; SELECT observer_grant('console_admin', 'admin');
             CREATE ROLE writer LOGIN;
             CREATE ROLE nobody LOGIN;
             CREATE TABLE orders (id int PRIMARY KEY, note text, link text);
             GRANT INSERT ON orders TO writer;
             SELECT observer_create('orders_hook', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{}\"}}', '{{\"max_attempts\": 1}}');",
            sink.url("/hook")
        ))
        .await
        .expect("setup");
    client
}

/// The writer's hostile row, a table owner's hostile table and column names, a hostile pause
/// reason, and a login role without grants naming its session like a worker (held open by the
/// returned client). Returns that client.
async fn hostile_data(cluster: &Cluster, admin: &tokio_postgres::Client) -> tokio_postgres::Client {
    let writer = cluster.connect_as("writer").await;
    writer
        .batch_execute(
            "SET fraiseql_observers.context = '{\"note\": \"</script><script>alert(4)</script>\", \"<img src=x onerror=alert(14)>\": 1}';
             INSERT INTO orders VALUES (1, '<script>alert(5)</script>', 'javascript:alert(6)');",
        )
        .await
        .expect("the writer's row");
    admin
        .batch_execute(
            "CREATE TABLE \"<img src=x onerror=alert(7)>\" (id int PRIMARY KEY, \"<svg onload=alert(8)>\" text);
             SELECT observer_create('odd_names', '\"<img src=x onerror=alert(7)>\"', ARRAY['INSERT'], NULL,
                 '{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/never\"}');
             SELECT observer_pause('odd_names', '<script>alert(9)</script>');
             INSERT INTO \"<img src=x onerror=alert(7)>\" VALUES (1, '<iframe src=javascript:alert(13)>');",
        )
        .await
        .expect("odd names");
    let mut config: tokio_postgres::Config = cluster.url_as("nobody").parse().expect("url");
    config.application_name("fraiseql-observers:<script>alert(10)</script>");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("a session without grants");
    tokio::spawn(conn);
    client
}

/// DESIGN 3a: values of the least-privileged roles and of a receiver are shown as text on
/// every page, the escaped text is there (so the value was rendered), and no page carries
/// markup or script of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_values_are_text_on_every_page() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_scripted(Arc::new(|_, _| Reply {
        status: 500,
        body: Some(RECEIVER_BODY.to_string()),
        ..Reply::default()
    }))
    .await
    .expect("sink");
    let admin = setup(&cluster, &sink).await;
    let _nobody = hostile_data(&cluster, &admin).await;
    let served = Served::start(
        "run",
        &cluster.url_as("console_admin"),
        "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    );
    let job = wait_for_dead_jobs(&admin, 1).await[0];
    let event: i64 = admin
        .query_one("SELECT event_id FROM observer.jobs WHERE id = $1", &[&job])
        .await
        .expect("event")
        .get(0);
    let cookie = served.sign_in();
    let shows = [
        ("/".to_string(), "alert(10)"),
        ("/observers".to_string(), "&lt;script&gt;alert(9)"),
        ("/observers/odd_names".to_string(), "alert(7)"),
        ("/observers/orders_hook".to_string(), "orders"),
        ("/events".to_string(), "&lt;script&gt;alert(1)"),
        ("/events?q=alert".to_string(), "alert(2)"),
        (format!("/events/{event}"), "&lt;script&gt;alert(5)"),
        (format!("/events/{event}"), "&lt;script&gt;alert(1)"),
        ("/dlq".to_string(), "&lt;script&gt;alert(1)"),
        (format!("/dlq/{job}"), "&lt;script&gt;alert(5)"),
        (format!("/dlq/{job}"), "alert(14)"),
        (format!("/dlq/{job}"), "javascript:alert(3)"),
        ("/actions".to_string(), "Operator log"),
    ];
    for (path, text) in shows {
        let a = served.get(&path, &cookie);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(a.body.contains(text), "{text} not on {path}: {}", a.body);
        assert_inert(&path, &a.body);
    }
    // The request's own values reflected in forms and error pages.
    for path in [
        "/dlq?error=%22%3E%3Cscript%3Ealert(11)%3C/script%3E&observer=%22%3E%3Cimg%20src=x%20onerror=alert(12)%3E",
        "/events?q=%22%3E%3Cscript%3Ealert(11)%3C/script%3E&since=%3Cimg%20src=x%20onerror=alert(12)%3E",
        "/observers/%3Cscript%3Ealert(11)%3C%2Fscript%3E",
        "/events/go?id=%3Cscript%3Ealert(11)%3C%2Fscript%3E",
        "/dlq/%3Cimg%20src=x%20onerror=alert(12)%3E",
    ] {
        let a = served.get(path, &cookie);
        assert!(a.status < 500, "{path}: {} {}", a.status, a.body);
        assert_inert(path, &a.body);
    }
}

/// Everything a page of another site, or a visitor without a token, can send: 401 or 403, no
/// session, no data, and nothing changed in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_sites_and_visitors_without_a_token_change_nothing() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_scripted(Arc::new(|_, _| Reply {
        status: 500,
        body: Some("refused".to_string()),
        ..Reply::default()
    }))
    .await
    .expect("sink");
    let admin = setup(&cluster, &sink).await;
    admin
        .batch_execute("INSERT INTO orders VALUES (1, 'a', ''), (2, 'b', '')")
        .await
        .expect("rows");
    let served = Served::start(
        "run",
        &cluster.url_as("console_admin"),
        "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    );
    let jobs = wait_for_dead_jobs(&admin, 2).await;
    visitors_without_a_token_get_the_sign_in_form(&served);
    let cookie = served.sign_in();
    let page = served.get("/dlq", &cookie);
    assert_eq!(page.body.matches("data-testid=\"dlq-row\"").count(), 2);
    let csrf = page.csrf();
    forged_posts_are_refused(&served, &cookie, &csrf, &jobs);
    other_methods_and_gets_change_nothing(&served, &cookie, &csrf, &jobs);
    error_filters_are_literal(&served, &cookie);
    // A signed-out session opens nothing.
    let out = served.send(
        "POST",
        "/logout",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}"),
    );
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(served.get("/dlq", &cookie).status, 401);
    assert_eq!(dead_jobs(&admin).await, jobs, "nothing changed");
    let (logged, enabled): (i64, bool) = admin
        .query_one(
            "SELECT (SELECT count(*) FROM observer.console_actions), (SELECT enabled FROM observer.observers)",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("log");
    assert_eq!((logged, enabled), (0, true));
    assert!(!served.log().contains(ALICE), "the token is never logged");
}

/// No token: tokens in the wrong place, look-alike tokens, traversal under /assets, a forged
/// sign-in from another site, CORS: the sign-in form (401) or 403, and never a session.
fn visitors_without_a_token_get_the_sign_in_form(served: &Served) {
    let near = format!("{ALICE}x");
    let short = &ALICE[..ALICE.len() - 1];
    let cookie = format!("fo_console={ALICE}");
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("/?token={ALICE}"), vec![]),
        (format!("/dlq?access_token={ALICE}&csrf={ALICE}"), vec![]),
        ("/dlq".to_string(), vec![("Cookie", cookie.as_str())]),
        ("/dlq".to_string(), vec![("Authorization", ALICE)]),
        ("/dlq".to_string(), vec![("Authorization", "Bearer")]),
        ("/".to_string(), vec![("Authorization", "Bearer ")]),
        ("/".to_string(), vec![("X-Forwarded-For", "127.0.0.1")]),
        ("/assets/../dlq".to_string(), vec![]),
        ("/assets/%2e%2e/dlq".to_string(), vec![]),
        ("/assets/console.js/..%2f..%2fdlq".to_string(), vec![]),
        ("/assets/..%2f..%2f..%2fetc%2fpasswd".to_string(), vec![]),
        ("//dlq".to_string(), vec![]),
        ("/dlq/".to_string(), vec![]),
        ("/DLQ".to_string(), vec![]),
    ];
    let near_bearer = format!("Bearer {near}");
    let short_bearer = format!("Bearer {short}");
    let mut all = cases;
    all.push((
        "/".to_string(),
        vec![("Authorization", near_bearer.as_str())],
    ));
    all.push((
        "/".to_string(),
        vec![("Authorization", short_bearer.as_str())],
    ));
    for (path, headers) in &all {
        let a = served.send("GET", path, headers, "");
        assert!(
            matches!(a.status, 401 | 404),
            "{path} {headers:?}: {}",
            a.body
        );
        assert!(a.session().is_none(), "{path}");
        assert!(
            !a.body.contains("dlq-row") && !a.body.contains("orders_hook"),
            "{path}"
        );
        assert!(!a.body.contains("root:"), "{path}");
    }
    let asset = served.send("GET", "/assets/console.js", &[], "");
    assert_eq!(asset.status, 200);
    assert!(asset.body.contains("data-refresh"));
    // CORS: nothing is shared with another origin, with a token or in a preflight.
    let bearer = format!("Bearer {ALICE}");
    for (method, headers) in [
        (
            "GET",
            vec![
                ("Origin", "http://evil.example"),
                ("Authorization", bearer.as_str()),
            ],
        ),
        (
            "OPTIONS",
            vec![
                ("Origin", "http://evil.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
        ),
    ] {
        let a = served.send(method, "/dlq", &headers, "");
        assert!(
            a.headers
                .iter()
                .all(|(k, _)| !k.starts_with("access-control-")),
            "{method}"
        );
    }
    // A sign-in posted from another site (login CSRF) opens no session, even with the token.
    let form = format!("token={ALICE}");
    for headers in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![("Sec-Fetch-Site", "cross-site")],
    ] {
        let mut h = headers.clone();
        h.push(("Content-Type", "text/plain"));
        let a = served.send("POST", "/login", &h, &form);
        assert_eq!(a.status, 403, "{headers:?}: {}", a.body);
        assert!(a.session().is_none());
    }
}

/// Posts with the session cookie that a page of another site can make (it cannot read the CSRF
/// token, but try it anyway with it, as a same-site sibling or a sandboxed frame could not): 403.
fn forged_posts_are_refused(served: &Served, cookie: &str, csrf: &str, jobs: &[i64]) {
    let look_alike = format!("http://{}.evil.example", served.host());
    let userinfo = format!("http://{}@evil.example", served.host());
    let https_other_port = "https://127.0.0.1:1".to_string();
    let origins: Vec<(&str, &str)> = vec![
        ("Origin", "null"),
        ("Origin", look_alike.as_str()),
        ("Origin", userinfo.as_str()),
        ("Origin", https_other_port.as_str()),
        ("Origin", "http://localhost"),
        ("Sec-Fetch-Site", "same-site"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    let job = jobs[0].to_string();
    let bodies = [
        format!("csrf={csrf}&scope=filter&confirm=2"),
        format!("csrf={csrf}&scope=selected&job={job}"),
        format!("csrf={csrf}&reason=x"),
    ];
    for (name, value) in origins {
        for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
            for (path, body) in [
                ("/dlq/retry", &bodies[1]),
                ("/dlq/purge", &bodies[0]),
                ("/observers/orders_hook/disable", &bodies[2]),
                ("/observers/orders_hook/pause", &bodies[2]),
            ] {
                let headers = [
                    (name, value),
                    ("Cookie", cookie),
                    ("Content-Type", content_type),
                ];
                let a = served.send("POST", path, &headers, body);
                assert_eq!(
                    a.status, 403,
                    "{path} {name}: {value} {content_type}: {}",
                    a.body
                );
            }
        }
    }
    // Without the token, with another session's token, or with a bearer token instead of a
    // session: refused.
    let other = served.sign_in();
    let other_csrf = served.get("/", &other).csrf();
    let bearer = format!("Bearer {ALICE}");
    for (headers, body) in [
        (
            vec![("Cookie", cookie)],
            "scope=filter&confirm=2".to_string(),
        ),
        (
            vec![("Cookie", cookie)],
            format!("csrf={other_csrf}&scope=filter&confirm=2"),
        ),
        (
            vec![("Cookie", cookie)],
            format!("csrf=&csrf={csrf}&scope=filter&confirm=2"),
        ),
        (
            vec![("Authorization", bearer.as_str())],
            format!("csrf={csrf}&scope=filter&confirm=2"),
        ),
    ] {
        let a = served.send("POST", "/dlq/purge", &headers, &body);
        assert!(
            matches!(a.status, 401 | 403),
            "{headers:?} {body}: {}",
            a.body
        );
    }
}

/// Methods other than POST, and GETs of the changing routes, with a valid session and CSRF
/// token: no change (404, 400 or 401).
fn other_methods_and_gets_change_nothing(served: &Served, cookie: &str, csrf: &str, jobs: &[i64]) {
    let job = jobs[0];
    let body = format!("csrf={csrf}&scope=filter&confirm=2&job={job}");
    for method in ["PUT", "DELETE", "PATCH", "post", "Post"] {
        for path in ["/dlq/purge", "/dlq/retry", "/observers/orders_hook/disable"] {
            let headers = [
                ("Cookie", cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ];
            if let Some(a) = served.try_send(method, path, &headers, &body) {
                assert!(a.status >= 400, "{method} {path}: {} {}", a.status, a.body);
            }
        }
    }
    for path in [
        format!("/dlq/purge?{body}"),
        format!("/dlq/retry?{body}"),
        format!("/observers/orders_hook/disable?{body}"),
        format!("/logout?csrf={csrf}"),
    ] {
        let a = served.get(&path, cookie);
        assert!(a.status >= 400, "GET {path}: {} {}", a.status, a.body);
    }
    assert_eq!(served.get("/", cookie).status, 200, "still signed in");
}

/// The DLQ's error filter is literal: `%` and `_` match themselves, not everything.
fn error_filters_are_literal(served: &Served, cookie: &str) {
    for (filter, rows) in [("refused", 2), ("%25", 0), ("_", 0), ("%25refused", 0)] {
        let a = served.get(&format!("/dlq?error={filter}"), cookie);
        assert_eq!(a.status, 200, "{filter}: {}", a.body);
        assert_eq!(
            a.body.matches("data-testid=\"dlq-row\"").count(),
            rows,
            "error={filter}"
        );
    }
    // A huge search is answered (or refused) and the console stays up.
    let words = "alert ".repeat(8000);
    let a = served.get(
        &format!("/events?q={}", words.trim().replace(' ', "+")),
        cookie,
    );
    assert!(a.status < 500, "{}", a.status);
    // A 300 kB request line: refused, or the connection closed unanswered.
    if let Some(a) = served.try_send("GET", &format!("/?x={}", "a".repeat(300_000)), &[], "") {
        assert!(a.status >= 400, "{}", a.status);
    }
    assert_eq!(served.send("GET", "/healthz", &[], "").status, 200);
}

/// `run` with a console without tokens (loopback only) as `console_admin`, and one dead job
/// (the sink refuses every delivery): the cluster and sink (keep them), the admin's client, the
/// console and the dead job.
async fn loopback_console_with_a_dead_job(
) -> (Cluster, Sink, tokio_postgres::Client, Served, Vec<i64>) {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_scripted(Arc::new(|_, _| Reply::status(500)))
        .await
        .expect("sink");
    let admin = setup(&cluster, &sink).await;
    admin
        .batch_execute("INSERT INTO orders VALUES (1, 'a', '')")
        .await
        .expect("row");
    let served = Served::start(
        "run",
        &cluster.url_as("console_admin"),
        "loopback_without_token = true\n",
    );
    let jobs = wait_for_dead_jobs(&admin, 1).await;
    (cluster, sink, admin, served, jobs)
}

/// A console without tokens (loopback only): a post from another site is refused even with the
/// page's CSRF token, and a session's CSRF token opens no other session's forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loopback_console_refuses_posts_from_other_sites() {
    let (_cluster, _sink, admin, served, jobs) = loopback_console_with_a_dead_job().await;
    let first = served.send("GET", "/dlq", &[], "");
    assert_eq!(first.status, 200, "{}", first.body);
    let cookie = first.session().expect("a loopback session");
    let csrf = first.csrf();
    let body = format!("csrf={csrf}&scope=filter&confirm=1");
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let headers = [
            (name, value),
            ("Cookie", cookie.as_str()),
            ("Content-Type", "text/plain"),
        ];
        let a = served.send("POST", "/dlq/purge", &headers, &body);
        assert_eq!(a.status, 403, "{name}: {value}: {}", a.body);
    }
    // Another visitor's session (a new one without the cookie) with this session's token.
    let a = served.send(
        "POST",
        "/dlq/purge",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &body,
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(dead_jobs(&admin).await, jobs);
    let logged: i64 = admin
        .query_one("SELECT count(*) FROM observer.console_actions", &[])
        .await
        .expect("log")
        .get(0);
    assert_eq!(logged, 0);
}

/// DNS rebinding: a page of attacker.example whose name the attacker re-points at 127.0.0.1 is
/// same-origin for the browser with a console without tokens. Before the console checked the
/// Host, it read the dead-letter queue and purged it; now it gets neither data nor a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loopback_console_answers_only_its_own_host_names() {
    let (_cluster, _sink, admin, served, jobs) = loopback_console_with_a_dead_job().await;
    let evil = format!("rebind.attacker.example:{}", served.port);
    let origin = format!("http://{evil}");
    let page = served.send("GET", "/dlq", &[("Host", &evil)], "");
    assert!(page.status >= 400, "{}", page.body);
    assert!(page.session().is_none());
    let leaked = page.body.contains("data-testid=\"dlq-row\"");
    if let (Some(cookie), true) = (page.session(), page.body.contains("name=\"csrf\"")) {
        let body = format!("csrf={}&scope=filter&confirm=1", page.csrf());
        let headers = [
            ("Host", evil.as_str()),
            ("Origin", origin.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        let a = served.send("POST", "/dlq/purge", &headers, &body);
        assert!(a.status >= 400, "the rebound origin posted: {}", a.body);
    }
    assert!(!leaked, "the rebound page read the dead-letter queue");
    assert_eq!(
        dead_jobs(&admin).await,
        jobs,
        "the rebound page purged the dead-letter queue"
    );
    // Its own names still work.
    for host in ["localhost", "127.0.0.1"] {
        let own = format!("{host}:{}", served.port);
        let a = served.send("GET", "/dlq", &[("Host", &own)], "");
        assert_eq!(a.status, 200, "{own}: {}", a.body);
    }
}

/// A read-only console still lets its operator sign out (it refused the post, 403, and the
/// session lived on).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_console_lets_its_operator_sign_out() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let _admin = setup(&cluster, &sink).await;
    let served = Served::start(
        "console",
        &cluster.url_as("console_admin"),
        "read_only = true\n[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    );
    let cookie = served.sign_in();
    let csrf = served.get("/", &cookie).csrf();
    let out = served.send(
        "POST",
        "/logout",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}"),
    );
    assert_eq!(out.status, 303, "sign-out refused: {}", out.body);
    assert_eq!(served.get("/", &cookie).status, 401, "the session lives on");
}

/// A credential in the query of a templated URL (allowed with allow_literal_credentials) is
/// masked on the observer's page, as the same credential in a literal URL is (it was shown: a
/// template is not a URL, and only a password= value was masked).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_templated_url_keeps_its_credential_off_the_page() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let admin = setup(&cluster, &sink).await;
    admin
        .batch_execute(
            "SELECT observer_create('templated', 'orders', ARRAY['INSERT'], NULL,
                 '{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/hook?token=tpl-token-5561&id={{ new.id }}\",
                   \"allow_literal_credentials\": true}');
             SELECT observer_create('templated_path', 'orders', ARRAY['INSERT'], NULL,
                 '{\"type\": \"webhook\", \"url\": \"http://127.0.0.1:9/{{ new.id }}?sig=tpl-sig-5563&api-key=tpl-key-5564\",
                   \"allow_literal_credentials\": true}');",
        )
        .await
        .expect("created");
    let served = Served::start(
        "console",
        &cluster.url_as("console_admin"),
        "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    );
    let cookie = served.sign_in();
    for name in ["templated", "templated_path"] {
        let page = served.get(&format!("/observers/{name}"), &cookie);
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("http://127.0.0.1"), "{}", page.body);
        for secret in ["tpl-token-5561", "tpl-sig-5563", "tpl-key-5564"] {
            assert!(!page.body.contains(secret), "{secret}: {}", page.body);
        }
    }
}

/// A console without tokens: a thousand requests without a cookie (a page of another site
/// loading a thousand images) do not end the operator's session (each opened a session of its
/// own, and the thousandth evicted the operator's: its next form was refused, 403).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cookieless_requests_do_not_end_the_operators_session() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let admin = setup(&cluster, &sink).await;
    let served = Served::start(
        "console",
        &cluster.url_as("console_admin"),
        "loopback_without_token = true\n",
    );
    let first = served.send("GET", "/observers/orders_hook", &[], "");
    let cookie = first.session().expect("session");
    let csrf = first.csrf();
    for _ in 0..1000 {
        served.send("GET", "/no-such-page", &[], "");
    }
    let a = served.send(
        "POST",
        "/observers/orders_hook/pause",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}&reason=maintenance"),
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let paused: Option<String> = admin
        .query_one("SELECT paused_reason FROM observer.observers", &[])
        .await
        .expect("paused")
        .get(0);
    assert_eq!(paused.as_deref(), Some("maintenance"));
}

/// The open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A visitor without a token opening 600 idle connections to the console of `run`, and another
/// trickling a large POST body: the worker beside it keeps delivering, the process holds at
/// most serve::MAX_CONNECTIONS (256) of them open (each one a file descriptor the worker's own
/// database and HTTP connections would need: it spent one per connection before), and the slow
/// body is answered 408 and closed instead of held for as long as the visitor likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_idle_connections_leaves_the_worker_delivering() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let admin = setup(&cluster, &sink).await;
    let served = Served::start(
        "run",
        &cluster.url("postgres"),
        "[console.operators]\nalice = \"env:CONSOLE_TOKEN_ALICE\"\n",
    );
    let pid = served.child.id();
    let before = open_fds(pid);
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", served.port)).ok())
        .collect();
    assert_eq!(
        flood.len(),
        600,
        "the kernel's backlog took every connection"
    );
    admin
        .batch_execute("INSERT INTO orders (id) SELECT generate_series(1, 5)")
        .await
        .expect("insert");
    let delivered = wait_until(Duration::from_secs(60), || async {
        sink.received().len() == 5
    })
    .await;
    assert!(delivered, "delivered during the flood: {}", served.log());
    let during = open_fds(pid);
    assert!(
        during <= before + 256 + 32,
        "{during} descriptors open during the flood ({before} before): more than the 256 connections allowed"
    );
    drop(flood);

    // A body announced and never sent: answered 408 and closed.
    let mut slow = TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let head = format!(
        "POST /dlq/purge HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\nconfirm=",
        served.host()
    );
    slow.write_all(head.as_bytes()).expect("write");
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer)
        .expect("the console closes the connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body that never comes: {answer}"
    );
}
