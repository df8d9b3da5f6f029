//! The `slack` and `email` actions against real servers on loopback, and what a 410 Gone does to
//! an observer: its job is dead-lettered and its deliveries are paused (held, not lost) until
//! `observer_resume()`.
//!
//! E-mail goes to a real SMTP server (aiosmtpd from PyPI, in `.venv`, installed by
//! `scripts/setup.sh`); Slack messages go to a recording HTTP server, and the test checks them
//! against Slack's incoming-webhook format (<https://api.slack.com/messaging/webhooks>): a POST
//! of `application/json` with `text` and optional `blocks`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fraiseql_observers_tests::{
    free_port, observer_status, wait_for_jobs, wait_until, workspace_root, Cluster, Sink, Worker,
};

/// aiosmtpd on a free loopback port; each message received is a JSON line.
struct SmtpServer {
    child: Child,
    port: u16,
    messages: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl SmtpServer {
    fn start(reply: Option<&str>) -> SmtpServer {
        let python = workspace_root().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh",
            python.display()
        );
        let port = free_port().expect("port");
        let mut cmd = Command::new(python);
        cmd.arg(workspace_root().join("tests/verify/smtp_sink.py"))
            .arg(port.to_string());
        if let Some(reply) = reply {
            cmd.arg(reply);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("a line").expect("utf8");
        assert_eq!(first, "ready");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        SmtpServer {
            child,
            port,
            messages,
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn messages(&self) -> Vec<serde_json::Value> {
        self.messages.lock().expect("lock").clone()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status(client: &tokio_postgres::Client) -> String {
    observer_status(client).await.to_string()
}

/// An e-mail observer renders its templates over the row and the message arrives at a real
/// SMTP server with that subject, body and recipients, and a Message-ID derived from the
/// webhook-id. A permanent refusal (550) dead-letters the job at once without pausing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_arrives_at_a_real_smtp_server() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let smtp = SmtpServer::start(None);
    let refusing = SmtpServer::start(Some("550 5.1.1 mailbox unavailable"));
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);
               SELECT observer_create('welcome', 'customers', events => ARRAY['INSERT'],
                   action => '{"type": "email", "to": ["ops@example.com", "{{ new.email }}"],
                               "from": "Shop <shop@example.com>",
                               "subject": "Welcome, {{ new.name }}!",
                               "body": "Hello {{ new.name }},\nyour customer number is {{ new.id }}.\n"}');"#,
        )
        .await
        .expect("setup");
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SMTP__URL", smtp.url().as_str()),
            // The action's sender must be allowed by the worker (a free "from" would let
            // whoever defines observers send as anyone).
            ("SMTP__ALLOWED_FROM", "shop@example.com"),
        ],
    )
    .expect("worker");
    client
        .batch_execute("INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com')")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            !smtp.messages().is_empty()
        })
        .await,
        "no message reached the SMTP server"
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["mail_from"], "shop@example.com");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["ops@example.com", "ada@example.com"])
    );
    let data = m["data"].as_str().expect("data").replace("\r\n", "\n");
    let idempotency_key: String = client
        .query_one("SELECT idempotency_key FROM observer.jobs", &[])
        .await
        .expect("job")
        .get(0);
    for expected in [
        "Subject: Welcome, Ada!\n".to_string(),
        "From: Shop <shop@example.com>\n".to_string(),
        "To: ops@example.com, ada@example.com\n".to_string(),
        format!("Message-ID: <{idempotency_key}@fraiseql-observers>\n"),
        "Content-Type: text/plain; charset=utf-8\n".to_string(),
        "\n\nHello Ada,\nyour customer number is 1.\n".to_string(),
    ] {
        assert!(data.contains(&expected), "missing {expected:?} in\n{data}");
    }

    // A server that refuses for good: the job is dead at once, the observer keeps running.
    client
        .batch_execute(
            r#"SELECT observer_create('refused', 'customers', events => ARRAY['INSERT'],
                   action => '{"type": "email", "to": ["nobody@example.com"], "subject": "s", "body": "b"}');"#,
        )
        .await
        .expect("second observer");
    drop(_worker);
    let _worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("SMTP__URL", refusing.url().as_str()),
            // The action's sender must be allowed by the worker (a free "from" would let
            // whoever defines observers send as anyone).
            ("SMTP__ALLOWED_FROM", "shop@example.com"),
        ],
    )
    .expect("worker on the refusing server");
    client
        .batch_execute("INSERT INTO customers VALUES (2, 'Grace', 'grace@example.com')")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "dead", 2, Duration::from_secs(30)).await,
        "both observers' jobs for row 2 are refused: {}",
        status(&client).await
    );
    let rows = client
        .query(
            "SELECT j.attempt, j.last_error, o.paused_reason FROM observer.jobs j
             JOIN observer.observers o ON o.id = j.observer_id WHERE j.state = 'dead'",
            &[],
        )
        .await
        .expect("dead jobs");
    for row in rows {
        assert_eq!(row.get::<_, i32>(0), 1, "no retry of a permanent refusal");
        let error: String = row.get(1);
        assert!(
            error.starts_with("discarded: SMTP server refused the message for good")
                && error.contains("550"),
            "{error}"
        );
        assert_eq!(row.get::<_, Option<String>>(2), None, "not paused");
    }
}

/// A Slack observer posts Slack's incoming-webhook format: JSON with the rendered `text` and
/// `blocks` (values escaped as Slack requires). A 410 (Slack's `channel_is_archived`) pauses
/// the observer: the next events are held, not sent and not lost, until observer_resume().
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_messages_and_a_gone_channel() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let answer = Arc::new(AtomicU16::new(200));
    let responder = answer.clone();
    let sink = Sink::start_with(Arc::new(move |_, _| responder.load(Ordering::SeqCst)))
        .await
        .expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, status text NOT NULL);
               SELECT observer_create('shipped_to_slack', 'orders', events => ARRAY['UPDATE'],
                   condition => '$.new.status == "shipped"',
                   action => '{{"type": "slack", "url": "{}",
                               "text": "Order {{{{ new.id }}}} shipped to {{{{ new.customer }}}}",
                               "blocks": [{{"type": "section",
                                            "text": {{"type": "mrkdwn", "text": "*Order {{{{ new.id }}}}* was {{{{ old.status }}}}, now {{{{ new.status }}}}"}}}}]}}');
               INSERT INTO orders VALUES (1, 'Ada <ada@example.com> & co', 'new'), (2, 'Grace', 'new');"#,
            sink.url("/services/T000/B000/XXXX")
        ))
        .await
        .expect("setup");
    let _worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    client
        .batch_execute("UPDATE orders SET status = 'shipped' WHERE id = 1")
        .await
        .expect("ship");
    assert!(
        sink.wait_received(1, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    let r = &sink.received()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/services/T000/B000/XXXX");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body,
        serde_json::json!({
            "text": "Order 1 shipped to Ada &lt;ada@example.com&gt; &amp; co",
            "blocks": [{"type": "section",
                        "text": {"type": "mrkdwn", "text": "*Order 1* was new, now shipped"}}]
        })
    );

    // The channel is archived: 410. The job is dead-lettered and the observer paused.
    answer.store(410, Ordering::SeqCst);
    client
        .batch_execute("UPDATE orders SET status = 'shipped' WHERE id = 2")
        .await
        .expect("ship 2");
    assert!(
        wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    let paused = wait_until(Duration::from_secs(10), || async {
        observer_status(&client).await["observers"][0]["paused_reason"]
            .as_str()
            .is_some_and(|r| r.contains("HTTP 410"))
    })
    .await;
    assert!(paused, "{}", status(&client).await);

    // While paused, new events make jobs that wait (nothing is sent, nothing is lost).
    answer.store(200, Ordering::SeqCst);
    client
        .batch_execute("UPDATE orders SET status = 'new' WHERE id = 1; UPDATE orders SET status = 'shipped' WHERE id = 1")
        .await
        .expect("ship again");
    assert!(
        wait_for_jobs(&client, "pending", 1, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.received().len(), 2, "a held job is not sent");
    let held: bool = client
        .query_one(
            "SELECT run_at = 'infinity' FROM observer.jobs WHERE state = 'pending'",
            &[],
        )
        .await
        .expect("held job")
        .get(0);
    assert!(held);

    // observer_resume() releases it; replaying the dead-lettered one delivers it too.
    let released: i64 = client
        .query_one("SELECT observer_resume('shipped_to_slack')", &[])
        .await
        .expect("resume")
        .get(0);
    assert_eq!(released, 1);
    client
        .batch_execute("SELECT observer_dlq_retry(observer => 'shipped_to_slack')")
        .await
        .expect("replay");
    assert!(
        wait_for_jobs(&client, "completed", 3, Duration::from_secs(30)).await,
        "{}",
        status(&client).await
    );
    assert_eq!(
        observer_status(&client).await["observers"][0]["paused_reason"],
        serde_json::Value::Null
    );
}
