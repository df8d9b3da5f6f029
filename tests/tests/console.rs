//! The operator console in a real headless Chromium (issue 18): a real cluster with the installed
//! extension, the real worker binary serving the console (`[console]` in its configuration, an
//! operator token given by reference), a real HTTP sink. The browser logs in, reads the overview's
//! counts and checks them against SQL, opens a delivered event by its URL, retries a dead job from
//! the dead-letter page and sees it delivered at the sink with the same `webhook-id`, and purges
//! with the confirmation. The hostile side: no token, a wrong token, a forged form posted from
//! another origin of this machine and from another site, a CSRF token of another session.
//!
//! Every page the happy test visits is also saved as a screenshot into `docs/console/` (1280x900),
//! which `docs/console.md` shows.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::browser::{http_request, serve_html, Browser};
use fraiseql_observers_tests::sink::{Reply, Script};
use fraiseql_observers_tests::{
    free_port, http_get, observer_status, wait_for_jobs, wait_until, Cluster, Sink, Worker,
};

/// The operator's token (a test value; the worker reads it from the environment by reference).
const TOKEN: &str = "console-test-token-alice-7f3a9c";
/// A credential written in the payments observer's action (`allow_literal_credentials`): no
/// page may ever show it.
const ACTION_SECRET: &str = "sk_live_console_never_shown_4242";
/// Orders delivered (each on its second attempt) and payments dead (max_attempts 1).
const ORDERS: i64 = 12;
const PAYMENTS: i64 = 3;

/// A real pipeline with the console on.
struct Pipeline {
    cluster: Cluster,
    sink: Sink,
    /// The payments endpoint answers 2xx once this is set (500 before).
    accept: Arc<AtomicBool>,
    worker: Worker,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// URL of `path` on the console.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn client(&self) -> tokio_postgres::Client {
        self.cluster.connect("postgres").await.expect("connect")
    }
}

/// The sink: `/hooks/orders` fails the first attempt of every event with a 503 and accepts the
/// second; `/hooks/payments` answers 500 until `accept` is set.
fn sink_script(accept: Arc<AtomicBool>) -> Script {
    Arc::new(move |req, before| {
        let id = req.header("webhook-id");
        let (status, body) = if req.path == "/hooks/payments" {
            if accept.load(Ordering::SeqCst) {
                (200, "settled")
            } else {
                (500, "payment gateway down for maintenance")
            }
        } else if before.iter().any(|r| r.header("webhook-id") == id) {
            (200, "ok")
        } else {
            (503, "upstream busy, try again")
        };
        Reply {
            status,
            body: Some(body.to_string()),
            ..Reply::default()
        }
    })
}

/// Cluster, observers, sink, the worker with `[console]`, and the rows: ORDERS delivered,
/// PAYMENTS dead.
async fn start_pipeline() -> Pipeline {
    let cluster = Cluster::start(&[]).expect("cluster");
    let accept = Arc::new(AtomicBool::new(false));
    let sink = Sink::start_scripted(sink_script(accept.clone()))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL);
             CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL, amount numeric NOT NULL);
             SELECT observer_create('orders_created', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{orders}\"}}',
                 '{{\"max_attempts\": 3, \"backoff_base\": \"50 milliseconds\"}}');
             SELECT observer_create('payments_settled', 'payments', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{payments}\",
                    \"headers\": {{\"authorization\": \"Bearer {ACTION_SECRET}\"}},
                    \"allow_literal_credentials\": true}}',
                 '{{\"max_attempts\": 1}}');",
            orders = sink.url("/hooks/orders"),
            payments = sink.url("/hooks/payments"),
        ))
        .await
        .expect("extension, tables and observers");
    let port = free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[console]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [console.operators]\nalice = \"env:FO_TEST_CONSOLE_TOKEN\"\n"
        ),
    )
    .expect("write the worker's configuration");
    let worker = Worker::start_with_process_env(
        &cluster.url("postgres"),
        // A fixed worker name: it shows on the overview and the timelines' screenshots.
        &[
            ("CONFIG", config.to_str().expect("utf-8 path")),
            ("WORKER_ID", "worker-1"),
        ],
        &[("FO_TEST_CONSOLE_TOKEN", TOKEN)],
    )
    .expect("worker");
    let up = wait_until(Duration::from_secs(60), || async {
        http_get(port, "/healthz").0 == 200
    })
    .await;
    assert!(up, "the console did not answer /healthz:\n{}", worker.log());
    let pipeline = Pipeline {
        cluster,
        sink,
        accept,
        worker,
        port,
        _dir: dir,
    };
    fill(&pipeline, &client).await;
    pipeline
}

/// Insert the rows and wait until the orders are delivered and the payments dead.
async fn fill(p: &Pipeline, client: &tokio_postgres::Client) {
    client
        .batch_execute(&format!(
            "INSERT INTO orders SELECT i, 'customer-' || i, i * 10 FROM generate_series(1, {ORDERS}) i;
             INSERT INTO payments SELECT i, i, i * 10 FROM generate_series(1, {PAYMENTS}) i;"
        ))
        .await
        .expect("insert the rows");
    let settled = wait_for_jobs(client, "completed", ORDERS, Duration::from_secs(60)).await
        && wait_for_jobs(client, "dead", PAYMENTS, Duration::from_secs(30)).await;
    assert!(
        settled,
        "the pipeline did not settle: {}\n{}",
        observer_status(client).await,
        p.worker.log()
    );
}

/// Log in through the form, as an operator does.
async fn login(browser: &Browser, p: &Pipeline, screenshot: bool) {
    browser.goto(&p.url("/login")).await.expect("login page");
    if screenshot {
        browser.screenshot("login").await.expect("screenshot");
    }
    browser
        .fill("input[name=\"token\"]", TOKEN)
        .await
        .expect("the token field");
    browser
        .click("form[data-testid=\"login\"] button")
        .await
        .expect("the login button");
    let home = p.url("/");
    browser
        .wait_for_url(|u| u == home)
        .await
        .expect("logged in, the overview");
}

/// The first whole number in `text` (thousands separators dropped): `1,234 jobs` is 1234.
fn number(text: &str) -> i64 {
    let digits: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {text:?}"))
}

/// The overview shows the queue's counts as SQL has them, and the rest of its panels.
async fn overview_matches_sql(browser: &Browser, p: &Pipeline) {
    let client = p.client().await;
    browser.goto(&p.url("/")).await.expect("overview");
    let status = observer_status(&client).await;
    for state in ["pending", "running", "completed", "dead"] {
        let shown = browser
            .testid(&format!("queue-{state}"))
            .await
            .expect("queue count");
        assert_eq!(
            number(&shown),
            status["jobs"][state].as_i64().expect("count"),
            "queue-{state} shows {shown:?}; observer_status(): {status}"
        );
    }
    assert_eq!(status["jobs"]["completed"], ORDERS, "{status}");
    assert_eq!(status["jobs"]["dead"], PAYMENTS, "{status}");
    for panel in [
        "chart-delivered",
        "chart-lag",
        "dispatcher",
        "workers",
        "open-circuits",
        "quarantined",
    ] {
        let n = browser
            .count(&format!("[data-testid=\"{panel}\"]"))
            .await
            .expect("find");
        assert_eq!(n, 1, "the overview has one {panel}");
    }
    assert_eq!(
        browser
            .count("[data-testid=\"chart-delivered\"] svg, svg[data-testid=\"chart-delivered\"]")
            .await
            .expect("find"),
        1,
        "the delivered chart is an inline SVG"
    );
    browser.screenshot("overview").await.expect("screenshot");
}

/// The observers' list and one observer's definition; the action's credential is masked.
async fn observers_pages(browser: &Browser, p: &Pipeline) {
    browser.goto(&p.url("/observers")).await.expect("observers");
    for name in ["orders_created", "payments_settled"] {
        let row = browser
            .testid(&format!("observer-{name}"))
            .await
            .expect("observer row");
        assert!(row.contains(name), "row of {name}: {row:?}");
    }
    let payments = browser
        .testid("observer-payments_settled")
        .await
        .expect("observer row");
    assert!(
        payments.contains("payment gateway down"),
        "the observer's last error: {payments:?}"
    );
    browser.screenshot("observers").await.expect("screenshot");
    browser
        .goto(&p.url("/observers/orders_created"))
        .await
        .expect("observer");
    let text = browser.body_text().await.expect("text");
    assert!(
        text.contains("public.orders"),
        "the definition names its table"
    );
    browser
        .goto(&p.url("/observers/payments_settled"))
        .await
        .expect("observer");
    let definition = browser.testid("definition").await.expect("definition");
    assert!(
        definition.contains("public.payments") && definition.contains("authorization"),
        "the definition, its header named: {definition}"
    );
    let source = browser.source().await.expect("source");
    assert!(
        !source.contains(ACTION_SECRET) && !source.contains("sk_live"),
        "the observer page shows the action's credential"
    );
    browser.screenshot("observer").await.expect("screenshot");
}

/// The event ids the search page at `path` links to.
async fn linked_events(browser: &Browser, p: &Pipeline, path: &str) -> BTreeSet<i64> {
    browser.goto(&p.url(path)).await.expect("events search");
    let mut linked = BTreeSet::new();
    for el in browser
        .client()
        .find_all(fantoccini::Locator::Css("a[href*=\"/events/\"]"))
        .await
        .expect("links")
    {
        let href = el.attr("href").await.expect("href").unwrap_or_default();
        if let Some(id) = href.rsplit("/events/").next().and_then(|s| s.parse().ok()) {
            linked.insert(id);
        }
    }
    linked
}

/// The event ids `observer_search` finds with these arguments.
async fn searched_events(
    p: &Pipeline,
    query: Option<&str>,
    outcome: Option<&str>,
) -> BTreeSet<i64> {
    p.client()
        .await
        .query(
            "SELECT DISTINCT event_id FROM observer_search($1, 'orders_created', $2)",
            &[&query, &outcome],
        )
        .await
        .expect("observer_search")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The events search links exactly the events SQL finds: by outcome, and by a word of the
/// failed attempts' response (every order's first attempt was a 503 "upstream busy").
async fn events_search(browser: &Browser, p: &Pipeline) {
    let delivered = searched_events(p, None, Some("completed")).await;
    assert_eq!(delivered.len() as i64, ORDERS);
    let path = "/events?observer=orders_created&outcome=completed";
    assert_eq!(linked_events(browser, p, path).await, delivered, "{path}");
    let busy = searched_events(p, Some("busy"), None).await;
    assert_eq!(busy, delivered, "each order was refused once");
    let path = "/events?q=busy&observer=orders_created";
    assert_eq!(linked_events(browser, p, path).await, busy, "{path}");
    browser.screenshot("events").await.expect("screenshot");
}

/// A delivered event opened by its URL: one timeline entry per attempt SQL recorded, each with
/// its status and endpoint, the failed one with the response excerpt.
async fn event_timeline(browser: &Browser, p: &Pipeline) {
    let client = p.client().await;
    let event_id: i64 = client
        .query_one(
            "SELECT min(event_id) FROM observer_search(NULL, 'orders_created', 'completed')",
            &[],
        )
        .await
        .expect("a delivered event")
        .get(0);
    let attempts: Vec<(i32, Option<i32>)> = client
        .query(
            "SELECT attempt, status FROM observer_search(NULL, 'orders_created')
             WHERE event_id = $1 ORDER BY attempt",
            &[&event_id],
        )
        .await
        .expect("its attempts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(attempts, vec![(1, Some(503)), (2, Some(200))]);
    browser
        .goto(&p.url(&format!("/events/{event_id}")))
        .await
        .expect("event");
    assert_eq!(browser.status().await.expect("status"), 200);
    assert_eq!(
        browser
            .count("[data-testid=\"timeline\"]")
            .await
            .expect("find"),
        1
    );
    let shown = browser
        .texts("[data-testid=\"attempt\"]")
        .await
        .expect("attempts");
    assert_eq!(
        shown.len(),
        attempts.len(),
        "one entry per attempt: {shown:?}"
    );
    let endpoint = p.sink.addr.to_string();
    let failed = shown.iter().find(|t| t.contains("503")).expect("the 503");
    assert!(
        failed.contains("upstream busy"),
        "the response excerpt: {failed:?}"
    );
    assert!(
        shown.iter().any(|t| t.contains("200")),
        "the 200: {shown:?}"
    );
    for t in &shown {
        assert!(t.contains(&endpoint), "the endpoint {endpoint} in {t:?}");
        assert!(t.contains("ms"), "the duration in {t:?}");
    }
    browser.screenshot("event").await.expect("screenshot");
}

/// The dead jobs, newest first, as SQL lists them: (job id, event id).
async fn dead_jobs(client: &tokio_postgres::Client) -> Vec<(i64, i64)> {
    client
        .query(
            "SELECT job_id, event_id FROM observer_dlq_list(NULL, NULL, NULL, NULL)",
            &[],
        )
        .await
        .expect("observer_dlq_list")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The dead-letter list (a row and a checkbox per dead job) and one dead job's page.
async fn dlq_pages(browser: &Browser, p: &Pipeline) {
    let dead = dead_jobs(&p.client().await).await;
    assert_eq!(dead.len() as i64, PAYMENTS);
    browser.goto(&p.url("/dlq")).await.expect("dlq");
    assert_eq!(
        browser
            .count("[data-testid=\"dlq-row\"]")
            .await
            .expect("find"),
        dead.len()
    );
    for (job, _) in &dead {
        let boxes = browser
            .count(&format!(
                "input[type=\"checkbox\"][name=\"job\"][value=\"{job}\"]"
            ))
            .await
            .expect("find");
        assert_eq!(boxes, 1, "a checkbox for dead job {job}");
    }
    browser.screenshot("dlq").await.expect("screenshot");
    let (job, _) = dead[dead.len() - 1];
    browser
        .goto(&p.url(&format!("/dlq/{job}")))
        .await
        .expect("dead job");
    let text = browser.body_text().await.expect("text");
    assert!(
        text.contains("payment gateway down"),
        "the last error: {text}"
    );
    assert!(
        !browser
            .source()
            .await
            .expect("source")
            .contains(ACTION_SECRET),
        "the dead job's page shows the action's credential"
    );
    browser.screenshot("dlq-job").await.expect("screenshot");
}

/// Tick one dead job's checkbox, press retry: the sink (now accepting) receives it with the
/// webhook-id of its failed attempt, and only it leaves the dead-letter queue.
async fn retry_from_the_page(browser: &Browser, p: &Pipeline) {
    let client = p.client().await;
    let dead = dead_jobs(&client).await;
    let (job, event) = dead[dead.len() - 1];
    let webhook_id_prefix = format!("evt_{event}_");
    let failed: Vec<String> = p
        .sink
        .received()
        .iter()
        .filter(|r| r.status == 500)
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .filter(|id| id.starts_with(&webhook_id_prefix))
        .collect();
    assert_eq!(failed.len(), 1, "one failed attempt of job {job}");
    p.accept.store(true, Ordering::SeqCst);
    browser.goto(&p.url("/dlq")).await.expect("dlq");
    browser
        .click(&format!("input[name=\"job\"][value=\"{job}\"]"))
        .await
        .expect("tick the job");
    browser
        .click("[data-testid=\"retry-selected\"]")
        .await
        .expect("the retry button");
    let changed = browser
        .wait_for_testid("operation-changed")
        .await
        .expect("the result");
    assert_eq!(number(&changed), 1, "one job requeued");
    let statuses = || -> Vec<u16> {
        p.sink
            .received()
            .into_iter()
            .filter(|r| r.header("webhook-id") == Some(failed[0].as_str()))
            .map(|r| r.status)
            .collect()
    };
    let delivered = wait_until(Duration::from_secs(30), || async {
        statuses().contains(&200)
    })
    .await;
    assert!(
        delivered,
        "the retried job reached the sink\n{}",
        p.worker.log()
    );
    assert_eq!(
        statuses(),
        vec![500, 200],
        "the same webhook-id, delivered on retry"
    );
    let settled = wait_for_jobs(&client, "completed", ORDERS + 1, Duration::from_secs(30)).await;
    assert!(settled, "{}", observer_status(&client).await);
    let left: Vec<i64> = dead_jobs(&client).await.iter().map(|(j, _)| *j).collect();
    let expected: Vec<i64> = dead.iter().map(|(j, _)| *j).filter(|j| *j != job).collect();
    assert_eq!(left, expected, "only the ticked job was retried");
}

/// Tick every row with the "all shown" box (the console's script) and purge the selection: the
/// confirmation says how many (as SQL counts them), nothing is deleted before it, all after it.
async fn purge_with_confirmation(browser: &Browser, p: &Pipeline) {
    let client = p.client().await;
    let count = dead_jobs(&client).await.len();
    assert!(count > 0);
    browser.goto(&p.url("/dlq")).await.expect("dlq");
    browser
        .click("input[data-select-all=\"job\"]")
        .await
        .expect("the all-shown box");
    let boxes = browser
        .client()
        .find_all(fantoccini::Locator::Css("input[name=\"job\"]"))
        .await
        .expect("checkboxes");
    assert_eq!(boxes.len(), count);
    for b in &boxes {
        assert!(
            b.is_selected().await.expect("checked"),
            "the script ticks every row"
        );
    }
    browser
        .click("[data-testid=\"purge-selected\"]")
        .await
        .expect("the purge button");
    let shown = browser
        .wait_for_testid("purge-count")
        .await
        .expect("purge-count");
    assert_eq!(
        number(&shown),
        count as i64,
        "the confirmation says {shown:?}"
    );
    assert_eq!(
        dead_jobs(&client).await.len(),
        count,
        "nothing purged before the confirmation"
    );
    browser.screenshot("dlq-purge").await.expect("screenshot");
    browser
        .click("[data-testid=\"purge-confirm\"]")
        .await
        .expect("the confirm button");
    let changed = browser
        .wait_for_testid("operation-changed")
        .await
        .expect("the result");
    assert_eq!(number(&changed), count as i64, "every dead job purged");
    assert!(
        dead_jobs(&client).await.is_empty(),
        "the purge deleted them"
    );
}

/// The overview lists the operator's retry and purge, and reloads itself: a row committed while
/// it is open shows in its completed count without the operator doing anything.
async fn overview_lists_actions_and_refreshes(browser: &Browser, p: &Pipeline) {
    let client = p.client().await;
    browser.goto(&p.url("/")).await.expect("overview");
    let actions = browser
        .texts("[data-testid=\"operator-action\"]")
        .await
        .expect("the recent actions");
    for action in ["dlq_purge", "dlq_retry"] {
        assert!(
            actions
                .iter()
                .any(|a| a.contains("alice") && a.contains(action)),
            "{action} by alice among the recent actions: {actions:?}"
        );
    }
    let before = number(&browser.testid("queue-completed").await.expect("count"));
    client
        .batch_execute(&format!(
            "INSERT INTO orders VALUES ({}, 'customer-late', 5)",
            ORDERS + 1
        ))
        .await
        .expect("one more order");
    assert!(wait_for_jobs(&client, "completed", before + 1, Duration::from_secs(30)).await);
    let refreshed = wait_until(Duration::from_secs(30), || async {
        // The page may be mid-reload: an element that went away counts as not yet.
        match browser.testid("queue-completed").await {
            Ok(text) if text.chars().any(|c| c.is_ascii_digit()) => number(&text) == before + 1,
            _ => false,
        }
    })
    .await;
    assert!(refreshed, "the overview reloaded itself with the new count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_the_pipeline_traces_an_event_and_repairs_the_dead_letters() {
    let p = start_pipeline().await;
    let browser = Browser::start().await.expect("chromium");
    login(&browser, &p, true).await;
    overview_matches_sql(&browser, &p).await;
    observers_pages(&browser, &p).await;
    events_search(&browser, &p).await;
    event_timeline(&browser, &p).await;
    dlq_pages(&browser, &p).await;
    retry_from_the_page(&browser, &p).await;
    purge_with_confirmation(&browser, &p).await;
    overview_lists_actions_and_refreshes(&browser, &p).await;
    browser.quit().await.expect("close the browser");
}

/// A page of another origin that posts `fields` to `action` as soon as it loads (what a
/// malicious site an operator visits while logged in would do).
fn forged_form(action: &str, fields: &[(&str, String)]) -> String {
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{v}\">"))
        .collect();
    format!(
        "<!doctype html><html><body><form method=\"post\" action=\"{action}\">{inputs}</form>\
         <script>document.forms[0].submit();</script></body></html>"
    )
}

/// Open the forged page at `origin` in the logged-in browser, wait for the console's answer and
/// return its status; the dead-letter queue is unchanged.
async fn forged_post(
    browser: &Browser,
    p: &Pipeline,
    page: std::net::SocketAddr,
    action: &str,
) -> u16 {
    let client = p.client().await;
    let before = dead_jobs(&client).await;
    browser
        .goto(&format!("http://{page}/"))
        .await
        .expect("the forged page");
    let target = p.url(action);
    browser
        .wait_for_url(|u| u.starts_with(&target))
        .await
        .expect("the form was posted to the console");
    let status = browser.status().await.expect("status");
    let text = browser.body_text().await.expect("text");
    assert_eq!(
        dead_jobs(&client).await,
        before,
        "a forged POST {action} from {page} changed the dead-letter queue (answered {status}: {text})"
    );
    status
}

/// Without a token, or with a wrong one, every page answers 401 with the login form and no data.
async fn refused_without_token(p: &Pipeline, job: i64, event: i64) {
    let pages = [
        "/".to_string(),
        "/observers".to_string(),
        "/observers/payments_settled".to_string(),
        "/events?observer=payments_settled".to_string(),
        format!("/events/{event}"),
        "/dlq".to_string(),
        format!("/dlq/{job}"),
    ];
    let wrong = "Bearer console-test-token-mallory-000";
    for page in &pages {
        for headers in [vec![], vec![("Authorization", wrong)]] {
            let (status, body) = http_request(p.port, "GET", page, &headers, "");
            assert_eq!(status, 401, "GET {page} {headers:?}: {body}");
            assert!(
                body.contains("name=\"token\""),
                "GET {page}: the login form: {body}"
            );
            for data in [
                "payments_settled",
                "orders_created",
                "gateway",
                "queue-pending",
            ] {
                assert!(
                    !body.contains(data),
                    "GET {page} {headers:?} shows {data}: {body}"
                );
            }
        }
        let bearer = format!("Bearer {TOKEN}");
        let (status, _) = http_request(p.port, "GET", page, &[("Authorization", &bearer)], "");
        assert_eq!(status, 200, "GET {page} with the operator's token");
    }
}

/// A browser without a session sees the login form (401) and no data.
async fn browser_without_session(p: &Pipeline) {
    let browser = Browser::start().await.expect("chromium");
    for page in ["/", "/dlq"] {
        browser.goto(&p.url(page)).await.expect("page");
        assert_eq!(browser.status().await.expect("status"), 401, "GET {page}");
        let login = browser.count("input[name=\"token\"]").await.expect("find");
        assert_eq!(login, 1, "GET {page}: the login form");
        let source = browser.source().await.expect("source");
        for data in ["payments_settled", "dlq-row", "queue-dead"] {
            assert!(!source.contains(data), "GET {page} shows {data}: {source}");
        }
    }
    browser.quit().await.expect("close the browser");
}

/// Forged retry and purge forms, auto-submitted from a page on `ip` (another port of the
/// console's host is another origin of the same site; 127.0.0.2 is another site): the console's
/// answers, by action.
async fn forged_posts(browser: &Browser, p: &Pipeline, ip: &str, job: i64) -> Vec<(String, u16)> {
    let mut answers = Vec::new();
    for (action, extra) in [
        ("/dlq/retry", vec![]),
        ("/dlq/purge", vec![("confirm", "1".to_string())]),
    ] {
        let mut fields = vec![
            ("job", job.to_string()),
            ("scope", "selected".to_string()),
            ("csrf", "forged".to_string()),
        ];
        fields.extend(extra);
        let page = serve_html(ip, forged_form(&p.url(action), &fields)).expect("page");
        let status = forged_post(browser, p, page, action).await;
        answers.push((format!("POST {action} from {page}"), status));
    }
    answers
}

/// The operator's session cookie (`name=value`) and the CSRF token its forms carry.
async fn session_of(browser: &Browser, p: &Pipeline) -> (String, String) {
    let cookies = browser.client().get_all_cookies().await.expect("cookies");
    assert_eq!(cookies.len(), 1, "one session cookie: {cookies:?}");
    let cookie = format!("{}={}", cookies[0].name(), cookies[0].value());
    browser.goto(&p.url("/dlq")).await.expect("dlq");
    let csrf = browser
        .client()
        .find(fantoccini::Locator::Css("input[name=\"csrf\"]"))
        .await
        .expect("the form's csrf field")
        .attr("value")
        .await
        .expect("value")
        .unwrap_or_default();
    assert!(csrf.len() >= 16, "a CSRF token: {csrf:?}");
    (cookie, csrf)
}

/// Raw posts with the operator's real session cookie: the CSRF token of another session, or a
/// foreign `Origin`, or `Sec-Fetch-Site: cross-site`, are refused (403, nothing changes); the
/// operator's own token and origin are obeyed (the check is not refusing everything).
async fn csrf_and_origin(p: &Pipeline, cookie: &str, csrf: &str, job: i64) {
    let client = p.client().await;
    let (_, login) = http_request(
        p.port,
        "POST",
        "/login",
        &[("Origin", &p.url(""))],
        &format!("token={TOKEN}"),
    );
    let other_cookie = login
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie:")
                .then(|| l[11..].trim())
        })
        .and_then(|v| v.split(';').next())
        .expect("a second session")
        .to_string();
    let (_, page) = http_request(p.port, "GET", "/dlq", &[("Cookie", &other_cookie)], "");
    let other_csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the second session's csrf")
        .to_string();
    assert_ne!(other_csrf, csrf, "each session has its own CSRF token");
    let own = p.url("");
    let body = |token: &str| format!("job={job}&scope=selected&csrf={token}");
    let before = dead_jobs(&client).await;
    for (what, headers, token) in [
        (
            "another session's csrf",
            vec![("Origin", own.as_str())],
            other_csrf.as_str(),
        ),
        ("no csrf", vec![("Origin", own.as_str())], ""),
        (
            "a foreign Origin",
            vec![("Origin", "http://127.0.0.1:1")],
            csrf,
        ),
        (
            "Sec-Fetch-Site: cross-site",
            vec![("Sec-Fetch-Site", "cross-site")],
            csrf,
        ),
    ] {
        let mut headers = headers;
        headers.push(("Cookie", cookie));
        let (status, answer) = http_request(p.port, "POST", "/dlq/retry", &headers, &body(token));
        assert_eq!(status, 403, "POST /dlq/retry with {what}: {answer}");
        assert_eq!(
            dead_jobs(&client).await,
            before,
            "POST /dlq/retry with {what}"
        );
    }
    let headers = [("Origin", own.as_str()), ("Cookie", cookie)];
    let (status, answer) = http_request(p.port, "POST", "/dlq/retry", &headers, &body(csrf));
    assert_eq!(status, 200, "the operator's own retry: {answer}");
    assert!(
        !dead_jobs(&client).await.iter().any(|(j, _)| *j == job),
        "the operator's own retry requeued job {job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_strangers_and_forged_posts() {
    let p = start_pipeline().await;
    // A retry that slipped through would be delivered and leave the queue for good.
    p.accept.store(true, Ordering::SeqCst);
    let client = p.client().await;
    let dead = dead_jobs(&client).await;
    let (job, event) = dead[0];
    refused_without_token(&p, job, event).await;
    browser_without_session(&p).await;

    let browser = Browser::start().await.expect("chromium");
    login(&browser, &p, false).await;
    // Same site, another origin: the SameSite=Strict cookie is sent, so the origin and CSRF
    // checks are what refuse these.
    for (what, status) in forged_posts(&browser, &p, "127.0.0.1", job).await {
        assert_eq!(status, 403, "{what}");
    }
    // Another site: the cookie stays home; refused as a stranger (401) or as a cross-site
    // post (403), never obeyed.
    for (what, status) in forged_posts(&browser, &p, "127.0.0.2", job).await {
        assert!(status == 401 || status == 403, "{what}: {status}");
    }
    let logged: i64 = client
        .query_one("SELECT count(*) FROM observer_console_actions(1000)", &[])
        .await
        .expect("the operator action log")
        .get(0);
    assert_eq!(logged, 0, "no forged post reached the action log");
    let (cookie, csrf) = session_of(&browser, &p).await;
    assert_eq!(
        browser
            .count("[data-testid=\"dlq-row\"]")
            .await
            .expect("find"),
        dead.len(),
        "the session still works and the queue is as it was"
    );
    csrf_and_origin(&p, &cookie, &csrf, job).await;
    browser.quit().await.expect("close the browser");
}
