//! Health that alerts, against a real cluster and the real worker binary: the dispatcher's health
//! read from `observer_status()` reaches `/metrics` (a stopped dispatcher shows as a growing
//! backlog, lag and time since the last round), `/healthz` answers while the process serves,
//! `/readyz` follows the database (503 naming the reason while it is down, 200 after), and the
//! version handshake: the worker and the CLI refuse an extension of another series, naming both
//! versions and the fix.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fraiseql_observers_tests::{
    free_port, http_get, run_cli, wait_for_jobs, wait_until, worker_binary, Cluster, Sink, Worker,
};

/// The worker's version: the workspace's, as this crate's.
const WORKER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `GET path` on the worker's metrics listener: (status, body); (0, "") when nothing answers.
fn get(port: u16, path: &str) -> (u16, String) {
    let (status, response) = http_get(port, path);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the unlabelled series `name` in an exposition, if present.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        (series == name).then(|| v.parse().ok())?
    })
}

fn metric(port: u16, name: &str) -> Option<f64> {
    value(&get(port, "/metrics").1, name)
}

/// The installed extension's version.
async fn extversion(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'fraiseql_observers'",
            &[],
        )
        .await
        .expect("extversion")
        .get(0)
}

/// Fake the installed version (superuser, a throwaway cluster): what a database not yet
/// updated, or updated past this worker, looks like to the handshake.
async fn set_extversion(client: &tokio_postgres::Client, version: &str) {
    client
        .execute(
            "UPDATE pg_catalog.pg_extension SET extversion = $1 WHERE extname = 'fraiseql_observers'",
            &[&version],
        )
        .await
        .expect("set extversion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_dispatcher_shows_in_the_metrics_and_readyz_follows_the_database() {
    // No background dispatch rounds (fraiseql_observers.enabled = off) and none from the worker
    // (dispatch = false): rounds run only when this test calls observer_dispatch().
    let cluster = Cluster::start(&["fraiseql_observers.enabled = off"]).expect("cluster");
    let sink = Sink::start_with(Arc::new(|_, _| 200)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION fraiseql_observers;
             CREATE TABLE orders (id int PRIMARY KEY);
             SELECT observer_create('orders_created', 'orders', ARRAY['INSERT'], NULL,
                 '{{\"type\": \"webhook\", \"url\": \"{}\"}}');
             INSERT INTO orders VALUES (1);",
            sink.url("/orders")
        ))
        .await
        .expect("setup");
    // Its own transaction: a round sees only events committed before it.
    client
        .batch_execute("SELECT observer_dispatch()")
        .await
        .expect("one dispatch round");
    let version = extversion(&client).await;
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[("METRICS__LISTEN", listen.as_str()), ("DISPATCH", "false")],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await,
        "the dispatched row is delivered\n{}",
        worker.log()
    );

    // Healthy: nothing waits, a round ran, the worker is ready.
    let healthy = wait_until(Duration::from_secs(30), || async {
        let text = get(port, "/metrics").1;
        value(&text, "fraiseql_observers_ready") == Some(1.0)
            && text.contains(r#"fraiseql_observers_queue_jobs{state="completed"} 1"#)
            && value(&text, "fraiseql_observers_dispatch_undispatched_events") == Some(0.0)
            && value(
                &text,
                "fraiseql_observers_dispatch_seconds_since_last_round",
            )
            .is_some_and(|s| s >= 0.0)
    })
    .await;
    let (status, text) = get(port, "/metrics");
    assert!(healthy && status == 200, "{text}\n{}", worker.log());
    for line in [
        format!(
            r#"fraiseql_observers_build_info{{extension_version="{version}",version="{WORKER_VERSION}"}} 1"#
        ),
        "fraiseql_observers_dispatch_lag_seconds 0".to_string(),
        "fraiseql_observers_dispatch_blocked_sessions 0".to_string(),
        "fraiseql_observers_dispatch_healthy 1".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line}\n{text}");
    }
    // The process collector (an idle worker may have used under a second of CPU: whole seconds).
    assert!(
        value(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    for name in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(
            value(&text, name).is_some_and(|v| v > 0.0),
            "{name}\n{text}"
        );
    }
    assert_eq!(get(port, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(port, "/readyz"), (200, "ready\n".to_string()));

    // The stall: rows are captured and nobody dispatches them.
    for id in 2..=4 {
        client
            .execute("INSERT INTO orders VALUES ($1)", &[&id])
            .await
            .expect("insert");
    }
    let mut first = (0.0, 0.0);
    let backlog = wait_until(Duration::from_secs(30), || {
        let text = get(port, "/metrics").1;
        let lag = value(&text, "fraiseql_observers_dispatch_lag_seconds").unwrap_or(0.0);
        let since = value(
            &text,
            "fraiseql_observers_dispatch_seconds_since_last_round",
        )
        .unwrap_or(0.0);
        first = (lag, since);
        let seen = value(&text, "fraiseql_observers_dispatch_undispatched_events") == Some(3.0)
            && lag > 0.0;
        async move { seen }
    })
    .await;
    assert!(backlog, "{}", get(port, "/metrics").1);
    // Both ages keep growing while nothing dispatches (values read from the database clock, five
    // seconds apart at least: the worker reads observer_status() every 5 s), and the extension
    // calls dispatch unhealthy.
    let growing = wait_until(Duration::from_secs(60), || async {
        let text = get(port, "/metrics").1;
        value(&text, "fraiseql_observers_dispatch_lag_seconds").is_some_and(|l| l > first.0)
            && value(
                &text,
                "fraiseql_observers_dispatch_seconds_since_last_round",
            )
            .is_some_and(|s| s > first.1)
            && value(&text, "fraiseql_observers_dispatch_healthy") == Some(0.0)
            && value(&text, "fraiseql_observers_dispatch_undispatched_events") == Some(3.0)
    })
    .await;
    assert!(growing, "first {first:?}\n{}", get(port, "/metrics").1);
    let status = fraiseql_observers_tests::observer_status(&client).await;
    assert_eq!(
        status["jobs"]["pending"], 0,
        "nothing was dispatched: {status}"
    );
    assert_eq!(status["jobs"]["completed"], 1, "{status}");
    // A stalled dispatcher is not the worker's readiness: it can still work.
    assert_eq!(get(port, "/readyz").0, 200);
    drop(client);

    // The database goes away: /readyz says so, /healthz still answers.
    cluster.stop().expect("stop the cluster");
    let mut reason = String::new();
    let down = wait_until(Duration::from_secs(60), || {
        let (status, body) = get(port, "/readyz");
        reason = body;
        async move { status == 503 }
    })
    .await;
    assert!(down, "{reason}\n{}", worker.log());
    assert!(
        reason.starts_with("not ready: ") && reason.contains("database"),
        "{reason}"
    );
    assert_eq!(metric(port, "fraiseql_observers_ready"), Some(0.0));
    assert_eq!(get(port, "/healthz").0, 200);

    // Back: ready again, and a round clears the backlog, which the metrics show.
    cluster.start_again().expect("start the cluster again");
    let up = wait_until(Duration::from_secs(60), || async {
        get(port, "/readyz").0 == 200
    })
    .await;
    assert!(up, "{:?}\n{}", get(port, "/readyz"), worker.log());
    let client = cluster.connect("postgres").await.expect("reconnect");
    client
        .batch_execute("SELECT observer_dispatch()")
        .await
        .expect("a dispatch round");
    assert!(
        wait_for_jobs(&client, "completed", 4, Duration::from_secs(30)).await,
        "{}",
        worker.log()
    );
    let drained = wait_until(Duration::from_secs(30), || async {
        let text = get(port, "/metrics").1;
        value(&text, "fraiseql_observers_dispatch_undispatched_events") == Some(0.0)
            && value(&text, "fraiseql_observers_dispatch_lag_seconds") == Some(0.0)
            && value(&text, "fraiseql_observers_dispatch_healthy") == Some(1.0)
    })
    .await;
    assert!(drained, "{}", get(port, "/metrics").1);
}

/// `fraiseql-observers run` until it exits by itself: (exit code, stderr); None if it still
/// runs after `timeout` (then killed).
fn run_worker_until_exit(
    database_url: &str,
    listen: &str,
    timeout: Duration,
) -> Option<(Option<i32>, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("worker.log");
    let mut child = Command::new(worker_binary().expect("worker binary"))
        .arg("run")
        .env("FRAISEQL_OBSERVERS_DATABASE_URL", database_url)
        .env("FRAISEQL_OBSERVERS_METRICS__LISTEN", listen)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the worker");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some((
                status.code(),
                std::fs::read_to_string(&log).unwrap_or_default(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_and_the_cli_refuse_an_extension_of_another_series() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute("CREATE EXTENSION fraiseql_observers")
        .await
        .expect("create extension");
    let installed = extversion(&client).await;
    let (major, rest) = WORKER_VERSION.split_once('.').expect("x.y.z");
    let minor = rest.split('.').next().expect("minor");
    let series = format!("{major}.{minor}.x");
    assert!(
        installed.starts_with(&format!("{major}.{minor}.")),
        "the installed extension {installed} is of the worker's series {series}"
    );
    let url = cluster.url("postgres");

    // An extension older than the worker: update it, or run an older worker.
    set_extversion(&client, "0.1.0").await;
    let refusal = format!(
        "the worker {WORKER_VERSION} supports the extension {series}; this database has 0.1.0: \
         run ALTER EXTENSION fraiseql_observers UPDATE (docs/runbook.md, \"Upgrading\"), or run a worker of version 0.1.x"
    );
    for args in [
        &["status"][..],
        &["dlq", "list"],
        &["search", "x"],
        &["pause", "nope"],
    ] {
        let out = run_cli(&url, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim(), format!("error: {refusal}"), "{args:?}");
    }
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let (code, log) = run_worker_until_exit(&url, &listen, Duration::from_secs(30))
        .expect("the worker stops by itself");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("error: the worker failed: {refusal}")),
        "{log}"
    );
    let sessions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'fraiseql-observers:%'",
            &[],
        )
        .await
        .expect("sessions")
        .get(0);
    assert_eq!(sessions, 0, "no worker session stayed");

    // An extension newer than the worker: run a newer worker.
    set_extversion(&client, "9.9.0").await;
    let out = run_cli(&url, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the worker {WORKER_VERSION} supports the extension {series}; this database has 9.9.0: run a worker of version 9.9.x"
        )),
        "{stderr}"
    );

    // The real version again: the CLI works and the worker runs and is ready.
    set_extversion(&client, &installed).await;
    let out = run_cli(&url, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker = Worker::start(&url, &[("METRICS__LISTEN", listen.as_str())]).expect("worker");
    let ready = wait_until(Duration::from_secs(30), || async {
        get(port, "/readyz").0 == 200
    })
    .await;
    assert!(ready, "{:?}\n{}", get(port, "/readyz"), worker.log());

    // Changed under the running worker: it keeps its session (the update keeps the previous
    // series' calls working until the workers are rolled) but is not ready, and says why.
    set_extversion(&client, "9.9.0").await;
    let mut reason = String::new();
    let unready = wait_until(Duration::from_secs(30), || {
        let (status, body) = get(port, "/readyz");
        reason = body;
        async move { status == 503 }
    })
    .await;
    assert!(unready, "{reason}\n{}", worker.log());
    assert!(
        reason.contains("this database has 9.9.0") && reason.contains(WORKER_VERSION),
        "{reason}"
    );
    assert!(
        get(port, "/metrics").1.contains(&format!(
            r#"fraiseql_observers_build_info{{extension_version="9.9.0",version="{WORKER_VERSION}"}} 1"#
        )),
        "{}",
        get(port, "/metrics").1
    );
    assert_eq!(get(port, "/healthz").0, 200);
    set_extversion(&client, &installed).await;
    let ready = wait_until(Duration::from_secs(30), || async {
        get(port, "/readyz").0 == 200
    })
    .await;
    assert!(ready, "{:?}\n{}", get(port, "/readyz"), worker.log());
}
