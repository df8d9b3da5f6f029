//! The operator CLI, as a user runs it: the real `fraiseql-observers` binary against a real
//! cluster and worker. Every subcommand, its `--json` output parsed, its exit codes (0 ok,
//! 1 runtime failure, 2 bad usage or configuration, 3 not found) and its errors for bad input.

use std::io::{Read, Write};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    cli_json as json, free_port, observer_status, run_cli as cli, wait_for_jobs, wait_until,
    worker_binary, Cluster, Sink, Worker,
};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_real_cluster() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(
        |r: &fraiseql_observers_tests::Received, _: &[_]| {
            if r.path == "/gone" {
                410
            } else {
                200
            }
        },
    ))
    .await
    .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, note text);
               SELECT observer_create('shipped', 'orders', ARRAY['INSERT'], '$.new.status == "shipped"',
                                      '{{"type": "webhook", "url": "{ok}"}}');
               SELECT observer_create('cancelled', 'orders', ARRAY['INSERT'], '$.new.status == "cancelled"',
                                      '{{"type": "webhook", "url": "{ok}"}}');
               SELECT observer_create('gone', NULL, action => '{{"type": "webhook", "url": "{gone}"}}');
               SELECT observer_enqueue('gone', '{{"n": 1}}');"#,
            ok = sink.url("/ok"),
            gone = sink.url("/gone"),
        ))
        .await
        .expect("setup");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[("METRICS__LISTEN", listen.as_str())],
    )
    .expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'shipped', 'flamingo paper')")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await
            && wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await,
        "{}",
        observer_status(&client).await
    );
    let url = cluster.url("postgres");

    // status
    let s = json(&cli(&url, &["status", "--json"]));
    assert_eq!(s["jobs"]["completed"], 1);
    let workers = s["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 1, "the running worker is listed: {s}");
    assert_eq!(workers[0]["running_jobs"], 0);
    let text = stdout(&cli(&url, &["status"]));
    assert!(
        text.contains("jobs: 0 pending, 0 running, 1 completed, 1 dead"),
        "{text}"
    );
    assert!(text.contains("paused: endpoint gone: HTTP 410"), "{text}");

    // debug-event: one observer made a job, the other's condition was false.
    let event: i64 = client
        .query_one(
            "SELECT event_id FROM observer.jobs WHERE event_id IS NOT NULL",
            &[],
        )
        .await
        .expect("event")
        .get(0);
    let story = json(&cli(&url, &["debug-event", &event.to_string(), "--json"]));
    assert_eq!(story["event"]["op"], "INSERT");
    assert_eq!(story["event"]["dispatched"], true);
    assert_eq!(story["event"]["transaction"]["status"], "committed");
    let decisions: Vec<(String, String)> = story["observers"]
        .as_array()
        .expect("observers")
        .iter()
        .map(|o| {
            (
                o["observer"].as_str().unwrap_or("").to_string(),
                o["decision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("cancelled".to_string(), "condition_false".to_string()),
            ("shipped".to_string(), "job".to_string())
        ]
    );
    let shipped = &story["observers"][1];
    assert_eq!(shipped["job"]["state"], "completed");
    assert_eq!(shipped["attempts"][0]["status"], 200);
    let text = stdout(&cli(&url, &["debug-event", &event.to_string()]));
    assert!(
        text.contains("cancelled: no job: condition false"),
        "{text}"
    );
    assert!(text.contains("shipped: job"), "{text}");
    let missing = cli(&url, &["debug-event", "999999999"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        stderr(&missing).contains("event 999999999 does not exist"),
        "{}",
        stderr(&missing)
    );
    assert!(stderr(&missing).contains("hint: "), "{}", stderr(&missing));

    // search
    let found = json(&cli(&url, &["search", "flamingo", "--json"]));
    assert_eq!(found.as_array().map(Vec::len), Some(1));
    assert_eq!(found[0]["observer"], "shipped");
    let bad = cli(&url, &["search", "x", "--outcome", "lost"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));

    // dlq
    let dead = json(&cli(&url, &["dlq", "list", "--json"]));
    assert_eq!(dead.as_array().map(Vec::len), Some(1));
    let job = dead[0]["job_id"].as_i64().expect("job id");
    let shown = json(&cli(&url, &["dlq", "show", &job.to_string(), "--json"]));
    assert_eq!(shown["attempt_log"][0]["outcome"], "discarded");
    assert_eq!(shown["attempt_log"][0]["status"], 410);
    assert!(stdout(&cli(&url, &["dlq", "list"])).contains("1 dead job(s) shown"));
    let unknown = cli(&url, &["dlq", "show", "123456"]);
    assert_eq!(unknown.status.code(), Some(3));
    let no_filter = cli(&url, &["dlq", "retry"]);
    assert_eq!(no_filter.status.code(), Some(2));
    assert!(stderr(&no_filter).contains("say which dead jobs"));
    let unconfirmed = cli(&url, &["dlq", "purge", "--observer", "gone"]);
    assert_eq!(unconfirmed.status.code(), Some(2));
    assert!(
        stderr(&unconfirmed).contains("purge would delete 1 dead job(s)")
            && stderr(&unconfirmed).contains("--yes"),
        "{}",
        stderr(&unconfirmed)
    );
    let unknown_observer = cli(&url, &["dlq", "retry", "--observer", "nope"]);
    assert_eq!(
        unknown_observer.status.code(),
        Some(3),
        "{}",
        stderr(&unknown_observer)
    );

    // pause / resume (the 410 paused "gone"; the retried job is held until resume)
    let retried = cli(&url, &["dlq", "retry", "--observer", "gone"]);
    assert!(
        stdout(&retried).contains("requeued 1 dead job(s)"),
        "{}",
        stderr(&retried)
    );
    let resumed = cli(&url, &["resume", "gone"]);
    assert!(
        stdout(&resumed).contains("gone resumed: 1 held job(s) due now"),
        "{}",
        stderr(&resumed)
    );
    let paused = cli(&url, &["pause", "shipped", "--reason", "maintenance"]);
    assert!(
        stdout(&paused).contains("shipped paused"),
        "{}",
        stderr(&paused)
    );
    assert_eq!(cli(&url, &["pause", "nope"]).status.code(), Some(3));
    assert!(wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await);
    let purged = cli(&url, &["dlq", "purge", "--observer", "gone", "--yes"]);
    assert!(
        stdout(&purged).contains("purged 1 dead job(s)"),
        "{}",
        stderr(&purged)
    );
    assert_eq!(
        json(&cli(&url, &["dlq", "list", "--json"])),
        serde_json::json!([])
    );

    // metrics
    let metrics_url = format!("http://{listen}/metrics");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            cli(&url, &["metrics", "--url", &metrics_url, "--json"])
                .status
                .success()
        })
        .await
    );
    let m = json(&cli(&url, &["metrics", "--url", &metrics_url, "--json"]));
    assert!(m["jobs_delivered"].as_f64().unwrap_or(0.0) >= 1.0, "{m}");
    assert_eq!(m["worker_up"], 1.0);
    let down = cli(&url, &["metrics", "--url", "http://127.0.0.1:9/metrics"]);
    assert_eq!(down.status.code(), Some(1));

    // An unreachable database is a runtime failure (1) that says what to check.
    let nowhere = cli("postgres://postgres@127.0.0.1:9/postgres", &["status"]);
    assert_eq!(nowhere.status.code(), Some(1));
    let text = stderr(&nowhere);
    assert!(text.contains("cannot connect to the database"), "{text}");
    assert_eq!(
        text.matches("cannot connect to the database").count(),
        1,
        "said once: {text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
}

#[test]
fn validate_config_names_the_bad_field_and_masks_credentials() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.toml");
    std::fs::File::create(&bad)
        .and_then(|mut f| f.write_all(b"batch_size = 0\n"))
        .expect("write");
    let out = Command::new(worker_binary().expect("binary"))
        .args(["validate-config", bad.to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`batch_size`"), "{}", stderr(&out));

    let good = dir.path().join("good.toml");
    std::fs::File::create(&good)
        .and_then(|mut f| {
            f.write_all(
                b"database_url = \"postgres://app:hunter2@db.internal/app\"\n\
                  [redis]\nurl = \"redis://:s3cret@cache:6379/0\"\n\
                  [secrets.orders]\nkeys = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n\
                  destinations = [\"https://hooks.example.com/orders\"]\n",
            )
        })
        .expect("write");
    let mut child = Command::new(worker_binary().expect("binary"))
        .args(["validate-config", good.to_str().expect("path")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read");
    assert!(child.wait().expect("exit").success());
    assert!(text.contains("valid"), "{text}");
    for secret in ["hunter2", "s3cret", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    assert!(text.contains("***"));
}

/// A reader that stops reading (`fraiseql-observers ... | head`) ends the CLI quietly: exit 0 and
/// no panic message, not "failed printing to stdout: Broken pipe".
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("empty.toml");
    std::fs::File::create(&file).expect("write");
    // The read end is closed before the CLI starts: its first write fails with EPIPE.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(worker_binary().expect("binary"))
        .args(["validate-config", file.to_str().expect("path")])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("panicked"),
        "no panic: {}",
        stderr(&out)
    );
}
