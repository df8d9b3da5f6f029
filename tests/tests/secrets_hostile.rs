//! Secrets by reference, attacked as the least-privileged roles would (issue 15, point 4; the
//! threat model of DESIGN.md 3a): an `admin` who defines observers must never learn a worker
//! secret's value nor make the worker send it anywhere but its bound destinations; an `app` role
//! only enqueues payloads; whoever reaches the metrics port learns nothing secret. Real cluster,
//! real worker binary, real loopback sinks. Each test asserts the safe behaviour: one that fails
//! names a weakness still open (see the test's comment), the others guard defended attacks
//! against regressions. Open when written (2026-12-03, they fail until fixed):
//! `a_url_secret_is_never_sent_as_a_header_to_another_url_under_its_destinations`,
//! `an_escaped_echo_of_a_header_secret_is_scrubbed`,
//! `a_chat_webhook_url_with_a_trailing_dot_is_refused_as_a_literal_credential`,
//! `a_reference_prefix_cannot_carry_a_literal_credential`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    free_port, http_get, observer_status, run_cli, wait_until, worker_binary, Cluster, Received,
    Reply, Sink, Worker,
};

/// Distinctive values: any copy of one anywhere is found.
const API_TOKEN: &str = "sk_live_Rt77HostileApiTokenValue";
const HOOK_TOKEN: &str = "ht_Qm31HostileHookUrlToken";
/// A token as base64 alphabets write them: `/`, `+` and `=` inside.
const SLASHED_TOKEN: &str = "sk_live_Ab/Cd+Ef/GhHostileBase64=";

/// Wait until `n` jobs are finished (completed or dead).
async fn wait_settled(client: &tokio_postgres::Client, n: i64) -> bool {
    wait_until(Duration::from_secs(40), || async move {
        client
            .query_one(
                "SELECT count(*) FROM observer.jobs WHERE state IN ('completed', 'dead')",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) >= n)
            .unwrap_or(false)
    })
    .await
}

/// (observer, state, last_error) of every job, by observer name.
async fn jobs(client: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT o.name, j.state::text, coalesce(j.last_error, '') FROM observer.jobs j
               JOIN observer.observers o ON o.id = j.observer_id ORDER BY o.name, j.id",
            &[],
        )
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Every row of every table of schema `observer`, as text: what an admin can read.
async fn everything_an_admin_reads(client: &tokio_postgres::Client) -> String {
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = 'observer'",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = String::new();
    for t in tables {
        let rows = client
            .query(&format!("SELECT x::text FROM observer.{t} x"), &[])
            .await
            .expect("rows");
        for r in rows {
            out.push_str(&r.get::<_, String>(0));
            out.push('\n');
        }
    }
    out
}

/// The body with every byte but the unreserved ones percent-encoded (`/` is `%2F`).
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// FINDING (open): a URL secret that lists `destinations` (the docs' guard against a mistyped
/// value, e.g. `https://hooks.slack.com` or `https://hooks.zapier.com`) is also accepted as a
/// header value, so an admin sends the whole secret URL as a header to any other URL under that
/// prefix: on a multi-tenant host that other path belongs to someone else (a catch hook of the
/// admin's own account shows the headers it receives). A URL secret is its own destination: it
/// must never travel as a header to another URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_secret_is_never_sent_as_a_header_to_another_url_under_its_destinations() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let own_path = format!("/hooks/{HOOK_TOKEN}");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('own', NULL, action =>
                 '{{"type": "webhook", "url": {{"secret": "hook"}}}}');
             SELECT observer_create('copy', NULL, action =>
                 '{{"type": "webhook", "url": "{attacker}", "headers": {{"X-Copy": {{"secret": "hook"}}}}}}');
             SELECT observer_enqueue('own', '{{"n": 1}}');
             SELECT observer_enqueue('copy', '{{"n": 2}}');"#,
            attacker = sink.url("/hooks/attacker-owned"),
        ))
        .await
        .expect("setup");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__HOOK__VALUE", &sink.url(&own_path)),
            ("SECRETS__HOOK__DESTINATIONS", &sink.url("/hooks")),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&client, 2).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    let received = sink.received();
    assert!(
        received.iter().any(|r| r.path == own_path),
        "the URL secret is delivered to itself (control): {received:?}"
    );
    for r in received.iter().filter(|r| r.path != own_path) {
        let leaked: Vec<&(String, String)> = r
            .headers
            .iter()
            .filter(|(_, v)| v.contains(HOOK_TOKEN))
            .collect();
        assert!(
            leaked.is_empty(),
            "the secret URL was sent as a header to {}: {leaked:?}; jobs: {:?}",
            r.path,
            jobs(&client).await
        );
    }
}

/// FINDING (open): an endpoint's echo of a header secret is scrubbed only when it quotes the
/// value byte for byte. An echo in JSON with escaped slashes (PHP's `json_encode` default:
/// `sk_live_Ab\/Cd...`) or percent-encoded reaches the job's last_error, the dead-letter queue
/// and the audit trail, where an admin reads it and undoes the escaping. The escaped forms of
/// each value sent must be scrubbed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escaped_echo_of_a_header_secret_is_scrubbed() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_scripted(Arc::new(|r: &Received, _: &[Received]| {
        let auth = r.header("authorization").unwrap_or("").to_string();
        let body = match r.path.as_str() {
            "/json" => format!(
                r#"{{"error": "invalid key \"{}\""}}"#,
                auth.replace('/', "\\/")
            ),
            "/pct" => format!("invalid key: {}", percent_encoded(&auth)),
            _ => return Reply::status(200),
        };
        Reply {
            status: 401,
            body: Some(body),
            ..Reply::default()
        }
    }))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('json_echo', NULL, action =>
                 '{{"type": "webhook", "url": "{json}",
                    "headers": {{"Authorization": {{"secret": "api", "prefix": "Bearer "}}}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('pct_echo', NULL, action =>
                 '{{"type": "webhook", "url": "{pct}",
                    "headers": {{"Authorization": {{"secret": "api", "prefix": "Bearer "}}}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_enqueue('json_echo', '{{"n": 1}}');
             SELECT observer_enqueue('pct_echo', '{{"n": 2}}');"#,
            json = sink.url("/json"),
            pct = sink.url("/pct"),
        ))
        .await
        .expect("setup");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__API__VALUE", SLASHED_TOKEN),
            ("SECRETS__API__DESTINATIONS", &sink.url("")),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&client, 2).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    assert!(
        sink.received()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {SLASHED_TOKEN}"))),
        "the bound destination got the credential (control)"
    );
    // The texts as stored (a row's text form would double the backslashes).
    let stored: String = client
        .query(
            "SELECT last_error FROM observer.jobs WHERE last_error IS NOT NULL
             UNION ALL SELECT error FROM observer.attempts WHERE error IS NOT NULL",
            &[],
        )
        .await
        .expect("errors")
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect();
    assert!(
        stored.contains("invalid key"),
        "the echoes were stored: {stored}"
    );
    for (form, text) in [
        ("as sent", SLASHED_TOKEN.to_string()),
        ("JSON-escaped", SLASHED_TOKEN.replace('/', "\\/")),
        ("percent-encoded", percent_encoded(SLASHED_TOKEN)),
    ] {
        assert!(
            !stored.contains(&text),
            "the admin reads the credential {form} ({text}) in: {:?}",
            jobs(&client).await
        );
    }
}

/// Defended: a bound destination that redirects elsewhere does not get the worker to carry the
/// credential there (redirects are never followed); the job fails, nothing reaches the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_a_bound_destination_is_not_followed_with_the_secret() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let elsewhere = Sink::start().await.expect("sink");
    let target = elsewhere.url("/collect");
    let bound = Sink::start_scripted(Arc::new(move |r: &Received, _: &[Received]| {
        let status = if r.path == "/302" { 302 } else { 307 };
        Reply {
            status,
            headers: vec![("location", target.clone())],
            ..Reply::default()
        }
    }))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('r307', NULL, action =>
                 '{{"type": "webhook", "url": "{a}", "headers": {{"Authorization": {{"secret": "api"}}}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('r302', NULL, action =>
                 '{{"type": "webhook", "url": "{b}", "headers": {{"Authorization": {{"secret": "api"}}}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('r_url', NULL, action =>
                 '{{"type": "slack", "url": {{"secret": "hook"}}, "text": "t"}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_enqueue('r307', '{{"n": 1}}');
             SELECT observer_enqueue('r302', '{{"n": 2}}');
             SELECT observer_enqueue('r_url', '{{"n": 3}}');"#,
            a = bound.url("/307"),
            b = bound.url("/302"),
        ))
        .await
        .expect("setup");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__API__VALUE", API_TOKEN),
            ("SECRETS__API__DESTINATIONS", &bound.url("")),
            (
                "SECRETS__HOOK__VALUE",
                &bound.url(&format!("/307/{HOOK_TOKEN}")),
            ),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&client, 3).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    assert_eq!(bound.received().len(), 3, "each was tried once (control)");
    // Give a follower time to go where it was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        elsewhere.received().is_empty(),
        "the redirect was followed: {:?}",
        elsewhere.received()
    );
    for (name, state, error) in jobs(&client).await {
        assert_eq!(state, "dead", "{name}: {error}");
        assert!(error.contains("HTTP 30"), "{name}: {error}");
        assert!(
            !error.contains(API_TOKEN) && !error.contains(HOOK_TOKEN),
            "{name}: {error}"
        );
    }
}

/// Defended: the SSRF guard applies to the URL a secret resolves to: a secret URL at an address
/// outside `http.allow_networks` (as written, in an odd IPv4 spelling, IPv4-mapped IPv6) is
/// refused and never contacted, although `observer_create` never saw the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_secret_pointing_inside_is_refused_by_the_ssrf_guard() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let allowed = Sink::start().await.expect("sink");
    let inside = Sink::start_on(
        "127.0.0.2:0".parse().expect("addr"),
        Arc::new(|_, _| 200),
        None,
    )
    .await
    .expect("sink on 127.0.0.2");
    let port = inside.addr.port();
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('control', NULL, action => '{{"type": "webhook", "url": "{ok}"}}');
             SELECT observer_create('plain', NULL, action => '{{"type": "webhook", "url": {{"secret": "plain"}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('odd', NULL, action => '{{"type": "webhook", "url": {{"secret": "odd"}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_create('mapped', NULL, action => '{{"type": "slack", "url": {{"secret": "mapped"}}, "text": "t"}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_enqueue('control', '{{"n": 0}}');
             SELECT observer_enqueue('plain', '{{"n": 1}}');
             SELECT observer_enqueue('odd', '{{"n": 2}}');
             SELECT observer_enqueue('mapped', '{{"n": 3}}');"#,
            ok = allowed.url("/ok"),
        ))
        .await
        .expect("setup");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("HTTP__ALLOW_NETWORKS", "127.0.0.1/32"),
            (
                "SECRETS__PLAIN__VALUE",
                &format!("http://127.0.0.2:{port}/{HOOK_TOKEN}"),
            ),
            (
                "SECRETS__ODD__VALUE",
                &format!("http://127.2:{port}/{HOOK_TOKEN}"),
            ),
            (
                "SECRETS__MAPPED__VALUE",
                &format!("http://[::ffff:127.0.0.2]:{port}/{HOOK_TOKEN}"),
            ),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&client, 4).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    assert_eq!(allowed.received().len(), 1, "the allowed sink got its job");
    assert!(
        inside.received().is_empty(),
        "an address outside http.allow_networks was contacted: {:?}",
        inside.received()
    );
    for (name, state, error) in jobs(&client).await {
        if name == "control" {
            continue;
        }
        assert_eq!(state, "dead", "{name}: {error}");
        assert!(error.contains("network policy"), "{name}: {error}");
        assert!(!error.contains(HOOK_TOKEN), "{name}: {error}");
    }
}

/// Defended: a header secret bound to `http://127.0.0.1:P/hooks` goes to `/hooks/ok` and nowhere
/// else, whatever the spelling: a sibling path (`/hooks-evil`), dot segments (plain,
/// percent-encoded, backslashes), an encoded slash, the path's case, another port, another
/// name for the same host. Each is dead-lettered unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_prefix_tricks_never_carry_a_header_secret_elsewhere() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let other = Sink::start().await.expect("sink");
    let port = sink.addr.port();
    let tricks = [
        sink.url("/hooks-evil"),
        sink.url("/hooks/../evil"),
        sink.url("/hooks/%2e%2e/evil"),
        sink.url("/hooks\\\\..\\\\evil"),
        sink.url("/hooks%2Fx"),
        sink.url("/HOOKS/x"),
        other.url("/hooks/x"),
        format!("http://localhost:{port}/hooks/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/hooks/x"),
    ];
    let mut sql = String::from(
        "CREATE EXTENSION fraiseql_observers;
         SELECT observer_create('ok', NULL, action => '{\"type\": \"webhook\", \"url\": \"URL_OK\",
             \"headers\": {\"Authorization\": {\"secret\": \"api\"}}}');
         SELECT observer_enqueue('ok', '{\"n\": 0}');",
    )
    .replace("URL_OK", &sink.url("/hooks/ok"));
    for (i, url) in tricks.iter().enumerate() {
        sql.push_str(&format!(
            r#"SELECT observer_create('trick_{i}', NULL, action =>
                 '{{"type": "webhook", "url": "{url}", "headers": {{"Authorization": {{"secret": "api"}}}}}}');
             SELECT observer_enqueue('trick_{i}', '{{"n": {i}}}');"#
        ));
    }
    let client = cluster.connect("postgres").await.expect("connect");
    client.batch_execute(&sql).await.expect("setup");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__API__VALUE", API_TOKEN),
            ("SECRETS__API__DESTINATIONS", &sink.url("/hooks")),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&client, 1 + tricks.len() as i64).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    let received = sink.received();
    assert_eq!(
        received.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        vec!["/hooks/ok"],
        "only the bound URL was contacted"
    );
    assert_eq!(received[0].header("authorization"), Some(API_TOKEN));
    assert!(other.received().is_empty(), "{:?}", other.received());
    for (name, state, error) in jobs(&client).await {
        if name == "ok" {
            assert_eq!(state, "completed");
            continue;
        }
        let i: usize = name["trick_".len()..].parse().expect("index");
        assert_eq!(state, "dead", "{}: {error}", tricks[i]);
        assert!(error.contains("is not bound to"), "{}: {error}", tricks[i]);
        assert!(!error.contains(API_TOKEN), "{error}");
    }
}

/// Defended: `observer_create` refuses references with odd names or shapes, references where
/// none may stand, and literal credentials however their header name is cased or their URL
/// spells the user-info, with 22023; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_references_and_respelled_literal_credentials_are_refused() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("CREATE EXTENSION fraiseql_observers")
        .await
        .expect("extension");
    let long = "x".repeat(65);
    let web = |url: &str| format!(r#"{{"type": "webhook", "url": {url}}}"#);
    let header = |name: &str, value: &str| {
        format!(
            r#"{{"type": "webhook", "url": "https://api.example.com/x", "headers": {{"{name}": {value}}}}}"#
        )
    };
    let cases: Vec<String> = vec![
        web(r#"{"secret": "../../etc/passwd"}"#),
        web(r#"{"secret": "/etc/passwd"}"#),
        header("X-Key", r#"{"secret": "ѕtripe"}"#),
        header("X-Key", r#"{"secret": "\u212aey"}"#),
        header("X-Key", &format!(r#"{{"secret": "{long}"}}"#)),
        web(r#"{"secret": {"secret": "hook"}}"#),
        web(r#"{"secret": ["hook"]}"#),
        web(r#"{"secret": null}"#),
        web(r#"{"SECRET": "hook"}"#),
        web(r#"{"secret": "hook", "destinations": ["https://evil.example"]}"#),
        header("X-Key", r#"{"secret": "api", "value": "sk_live_x"}"#),
        header("X-Key", r#"{"secret": "api", "prefix": {"secret": "api"}}"#),
        r#"{"type": "webhook", "url": "https://api.example.com/x", "secret": {"secret": "api"}}"#
            .to_string(),
        r#"{"type": "webhook", "url": "https://api.example.com/x", "allow_literal_credentials": {"secret": "api"}}"#
            .to_string(),
        r#"{"type": "email", "to": [{"secret": "api"}], "subject": "s", "body": "b"}"#.to_string(),
        r#"{"type": "slack", "url": "https://a.example/x", "text": {"secret": "api"}}"#.to_string(),
        header("authorization", &format!(r#""Bearer {API_TOKEN}""#)),
        header("AUTHORIZATION", &format!(r#""{API_TOKEN}""#)),
        header("Proxy-Authorization", &format!(r#""Basic {API_TOKEN}""#)),
        header("Cookie", &format!(r#""sid={API_TOKEN}""#)),
        header("X-Amz-Security-Token", &format!(r#""{API_TOKEN}""#)),
        header("X-Custom", &format!(r#""  bearer {API_TOKEN}""#)),
        web(&format!(r#""https://user%3A{API_TOKEN}@api.example.com/x""#)),
        web(&format!(r#""https://:{API_TOKEN}@api.example.com/x""#)),
        web(&format!(r#""https://{API_TOKEN}@api.example.com/x""#)),
        web(&format!(r#""https://api.example.com/x?access_token={API_TOKEN}""#)),
        web(&format!(r#""https://api.example.com/x?X-Amz-Signature={API_TOKEN}""#)),
        web(&format!(r#""https://api.example.com/x?a=1&TOKEN={API_TOKEN}""#)),
        web(&format!(r#""https://HOOKS.SLACK.COM/services/T0/B0/{HOOK_TOKEN}""#)),
        web(&format!(r#""http://hooks.slack.com:443/services/T0/B0/{HOOK_TOKEN}""#)),
        web(&format!(r#""https://hooks%2Eslack.com/services/T0/B0/{HOOK_TOKEN}""#)),
    ];
    for (i, action) in cases.iter().enumerate() {
        let sql = format!(
            "SELECT observer_create('refused_{i}', NULL, action => '{}')",
            action.replace('\'', "''")
        );
        match client.batch_execute(&sql).await {
            Ok(()) => panic!("accepted: {action}"),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{action}: {e}"));
                assert_eq!(db.code().code(), "22023", "{action}: {}", db.message());
                let said = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
                assert!(
                    !said.contains(API_TOKEN) && !said.contains(HOOK_TOKEN),
                    "{action}: the error quotes the value: {said}"
                );
            }
        }
    }
    let stored: i64 = client
        .query_one("SELECT count(*) FROM observer.observers", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 0, "nothing refused was stored");
}

/// FINDING (open, low): the Slack/Discord rule compares the host name exactly, so the same URL
/// with the fully-qualified trailing dot (`hooks.slack.com.`, which DNS and TLS accept) is
/// stored as a literal without `allow_literal_credentials`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_webhook_url_with_a_trailing_dot_is_refused_as_a_literal_credential() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("CREATE EXTENSION fraiseql_observers")
        .await
        .expect("extension");
    for (i, url) in [
        format!("https://hooks.slack.com./services/T0/B0/{HOOK_TOKEN}"),
        format!("https://discord.com./api/webhooks/1/{HOOK_TOKEN}"),
    ]
    .iter()
    .enumerate()
    {
        let sql = format!(
            r#"SELECT observer_create('dot_{i}', NULL, action => '{{"type": "slack", "url": "{url}", "text": "t"}}')"#
        );
        let err = client.batch_execute(&sql).await.err();
        assert_eq!(
            err.as_ref()
                .and_then(|e| e.as_db_error())
                .map(|d| d.code().code().to_string()),
            Some("22023".to_string()),
            "{url} was stored as a literal: {err:?}"
        );
    }
}

/// FINDING (open, low): a reference's `prefix` is literal text stored in the action, and the
/// literal-credential rules never look at it: `{"secret": "x", "prefix": "Bearer <token> "}`
/// stores a credential in `observer.observers` without `allow_literal_credentials`. A prefix
/// should be at most an authentication scheme (`Bearer `, `Basic `, `token=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_prefix_cannot_carry_a_literal_credential() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("CREATE EXTENSION fraiseql_observers")
        .await
        .expect("extension");
    let sql = format!(
        r#"SELECT observer_create('prefixed', NULL, action =>
             '{{"type": "webhook", "url": "https://api.example.com/x",
                "headers": {{"Authorization": {{"secret": "harmless", "prefix": "Bearer {API_TOKEN} "}}}}}}')"#
    );
    let err = client.batch_execute(&sql).await.err();
    let stored: String = client
        .query_one(
            "SELECT coalesce(string_agg(action::text, ' '), '') FROM observer.observers",
            &[],
        )
        .await
        .expect("stored")
        .get(0);
    assert!(
        !stored.contains(API_TOKEN),
        "a literal credential was stored in a prefix: {stored}"
    );
    assert_eq!(
        err.as_ref()
            .and_then(|e| e.as_db_error())
            .map(|d| d.code().code().to_string()),
        Some("22023".to_string()),
        "{err:?}"
    );
}

/// Defended: an `app` role's payload (or a template over it) never resolves a reference: a
/// payload holding `{"secret": ...}` is delivered as the data it is, a Slack template cannot
/// reach the worker's secrets or environment, and a `{"secret": ...}` object inside Slack
/// blocks is sent as written; the credential goes only into its bound header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_payload_or_a_template_never_resolves_a_reference() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let admin = cluster.connect("postgres").await.expect("connect");
    admin
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('q_hook', NULL, action =>
                 '{{"type": "webhook", "url": "{hook}", "headers": {{"Authorization": {{"secret": "api"}}}}}}');
             SELECT observer_create('q_slack', NULL, action =>
                 '{{"type": "slack", "url": "{slack}",
                    "text": "[{{{{ x }}}}|{{{{ secret }}}}|{{{{ secrets.api }}}}|{{{{ api }}}}|{{{{ env }}}}|{{{{ config }}}}]",
                    "blocks": [{{"type": "section", "text": {{"secret": "api"}}}}]}}');
             CREATE ROLE app LOGIN;
             SELECT observer_grant('app', 'app');"#,
            hook = sink.url("/q"),
            slack = sink.url("/slack"),
        ))
        .await
        .expect("setup");
    let app = cluster.connect_as("app").await;
    app.batch_execute(
        r#"SELECT observer_enqueue('q_hook', '{"x": {"secret": "api"}, "url": {"secret": "api"}}', '{"secret": "api"}');
           SELECT observer_enqueue('q_slack', '{"x": {"secret": "api"}, "secret": "api"}');"#,
    )
    .await
    .expect("the app enqueues");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__API__VALUE", API_TOKEN),
            ("SECRETS__API__DESTINATIONS", &sink.url("/q")),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&admin, 2).await,
        "{}\n{}",
        observer_status(&admin).await,
        worker.log()
    );
    let received = sink.received();
    let at = |path: &str| {
        received
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing at {path}: {received:?}"))
            .clone()
    };
    let q = at("/q");
    assert_eq!(q.header("authorization"), Some(API_TOKEN), "bound header");
    assert!(
        q.header("webhook-id")
            .is_some_and(|id| id.ends_with(r#"{"secret": "api"}"#)),
        "the key is sent as the app wrote it: {:?}",
        q.header("webhook-id")
    );
    let slack = at("/slack");
    for r in [&q, &slack] {
        assert!(
            !String::from_utf8_lossy(&r.raw).contains(API_TOKEN),
            "the body of {} holds the value: {}",
            r.path,
            String::from_utf8_lossy(&r.raw)
        );
    }
    assert!(
        slack.header("authorization").is_none(),
        "{:?}",
        slack.headers
    );
    assert_eq!(slack.body["blocks"][0]["text"]["secret"], "api");
}

/// Defended: the worker's log at `trace` for every crate (HTTP client
/// included), `/metrics`, `/healthz`, `/readyz` and the CLI's `status`, `dlq list` and
/// `search` hold no value, after deliveries through a header secret and a URL secret and a
/// failure whose endpoint echoes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_in_trace_logs_metrics_health_or_cli_output() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_scripted(Arc::new(|r: &Received, _: &[Received]| {
        if r.path.starts_with("/fail") {
            Reply {
                status: 500,
                body: Some(format!(
                    "echo {} {}",
                    r.header("authorization").unwrap_or(""),
                    r.path
                )),
                ..Reply::default()
            }
        } else {
            Reply::status(200)
        }
    }))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
             SELECT observer_create('api', NULL, action =>
                 '{{"type": "webhook", "url": "{api}", "headers": {{"Authorization": {{"secret": "api", "prefix": "Bearer "}}}}}}');
             SELECT observer_create('hook', NULL, action => '{{"type": "slack", "url": {{"secret": "hook"}}, "text": "t"}}');
             SELECT observer_create('fail', NULL, action =>
                 '{{"type": "webhook", "url": {{"secret": "fail_hook"}}, "headers": {{"Authorization": {{"secret": "api"}}}}}}',
                 options => '{{"max_attempts": 1}}');
             SELECT observer_enqueue('api', '{{"n": 1}}');
             SELECT observer_enqueue('hook', '{{"n": 2}}');
             SELECT observer_enqueue('fail', '{{"n": 3}}');"#,
            api = sink.url("/api"),
        ))
        .await
        .expect("setup");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let mut worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SECRETS__API__VALUE", API_TOKEN),
            ("SECRETS__API__DESTINATIONS", &sink.url("")),
            (
                "SECRETS__HOOK__VALUE",
                &sink.url(&format!("/services/T0/B0/{HOOK_TOKEN}")),
            ),
            (
                "SECRETS__FAIL_HOOK__VALUE",
                &sink.url(&format!("/fail/{HOOK_TOKEN}")),
            ),
            ("LOG__FILTER", "trace"),
            ("METRICS__LISTEN", &listen),
        ],
    )
    .expect("worker");
    assert!(
        wait_settled(&client, 3).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    assert_eq!(sink.received().len(), 3, "all three were sent (control)");
    // The health watch reads observer_status() every 5 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut outputs = vec![
        ("/metrics", http_get(port, "/metrics").1),
        ("/healthz", http_get(port, "/healthz").1),
        ("/readyz", http_get(port, "/readyz").1),
    ];
    assert!(
        outputs[0].1.contains("fraiseql_observers_jobs_total"),
        "metrics were scraped: {}",
        outputs[0].1
    );
    let url = cluster.url("postgres");
    for args in [
        vec!["status"],
        vec!["dlq", "list"],
        vec!["search", "echo"],
        vec!["search", "--outcome", "failed"],
    ] {
        let out = run_cli(&url, &args);
        outputs.push((
            "cli",
            format!(
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    worker.terminate(Duration::from_secs(10));
    let log = worker.log();
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "the trace log was written"
    );
    outputs.push(("the worker's trace log", log));
    outputs.push(("the tables", everything_an_admin_reads(&client).await));
    for (place, text) in &outputs {
        for value in [API_TOKEN, HOOK_TOKEN] {
            let at = text.find(value).map(|i| {
                let from = text[..i]
                    .char_indices()
                    .rev()
                    .nth(200)
                    .map_or(0, |(j, _)| j);
                text[from..(i + value.len() + 100).min(text.len())].to_string()
            });
            assert!(
                at.is_none(),
                "{place} holds {value}: ...{}...",
                at.unwrap_or_default()
            );
        }
    }
}

/// Defended: `validate-config` prints the configuration with every credential masked, whatever
/// its source (inline, `*_FILE`, `value_file`), and refuses `sslpassword` without quoting it.
#[test]
fn validate_config_masks_every_secret_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("value");
    std::fs::write(&file, "fv_Lk20FromAFileSecret\n").expect("write");
    let db_file = dir.path().join("db");
    std::fs::write(&db_file, "postgres://w:DbPw_Hostile555@127.0.0.1:9/db\n").expect("write");
    let config = dir.path().join("w.toml");
    std::fs::write(
        &config,
        format!(
            "[secrets.from_file]\nvalue_file = \"{}\"\n[secrets.inline]\nvalue = \"{API_TOKEN}\"\ndestinations = [\"https://a.example\"]\n",
            file.display()
        ),
    )
    .expect("write");
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(worker_binary().expect("binary"));
        cmd.arg("validate-config")
            .arg(&config)
            .env(
                "FRAISEQL_OBSERVERS_DATABASE_URL_FILE",
                db_file.display().to_string(),
            )
            .env(
                "FRAISEQL_OBSERVERS_SECRETS__HOOK__VALUE",
                format!("https://hooks.example.com/services/T0/B0/{HOOK_TOKEN}"),
            )
            .env(
                "FRAISEQL_OBSERVERS_SMTP__URL",
                "smtp://u:SmtpPw_Hostile666@127.0.0.1:25",
            )
            .env(
                "FRAISEQL_OBSERVERS_REDIS__URL",
                "redis://:RedisPw_Hostile444@127.0.0.1:6379",
            )
            .env(
                "FRAISEQL_OBSERVERS_ELASTICSEARCH__API_KEY",
                "EsKey_Hostile333",
            )
            .env(
                "FRAISEQL_OBSERVERS_SECRETS__SIGN",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            )
            .env(
                "FRAISEQL_OBSERVERS_SECRETS__SIGN__DESTINATIONS",
                "https://receiver.example/hooks",
            );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run validate-config");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("inline"), "the secrets are listed: {text}");
    for value in [
        API_TOKEN,
        HOOK_TOKEN,
        "fv_Lk20FromAFileSecret",
        "DbPw_Hostile555",
        "SmtpPw_Hostile666",
        "RedisPw_Hostile444",
        "EsKey_Hostile333",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ] {
        assert!(
            !text.contains(value),
            "validate-config prints {value}: {text}"
        );
    }
    let (ok, text) = run(&[(
        "FRAISEQL_OBSERVERS_DATABASE_URL",
        "postgres://w@127.0.0.1:9/db?sslpassword=KeyPass_Hostile222&sslmode=require",
    )]);
    assert!(!ok, "sslpassword is refused: {text}");
    assert!(!text.contains("KeyPass_Hostile222"), "{text}");
}
