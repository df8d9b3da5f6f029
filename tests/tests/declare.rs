//! Declarative observers: `plan` shows the difference between a TOML file and the database,
//! `apply` makes it so in one transaction; plan → apply → plan shows no difference, and applying
//! a broken file changes nothing. The real binary against a real cluster.

use std::time::Duration;

use fraiseql_observers_tests::{cli_json as json, run_cli as cli, wait_until, Cluster};

const FILE: &str = r#"
[[observer]]
name = "order_shipped"
table = "orders"
events = ["UPDATE", "INSERT"]
condition = '$.new.status == "shipped"'
action = { type = "webhook", url = "https://hooks.example.com/orders" }
options = { max_attempts = 5, backoff_base = "2 seconds" }

[[observer]]
name = "mail"
action = { type = "webhook", url = "https://hooks.example.com/mail" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_apply_plan_converges_and_a_broken_file_changes_nothing() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let client = cluster.connect("postgres").await.expect("connect");
    client
        .batch_execute(
            r#"CREATE EXTENSION fraiseql_observers;
               CREATE TABLE orders (id int PRIMARY KEY, status text);
               SELECT observer_create('legacy', NULL, action => '{"type": "webhook", "url": "https://legacy.example.com/"}');"#,
        )
        .await
        .expect("setup");
    let url = cluster.url("postgres");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("observers.toml");
    std::fs::write(&file, FILE).expect("write");
    let path = file.to_str().expect("path");

    let plan = json(&cli(&url, &["plan", path, "--json"]));
    assert_eq!(plan["create"], serde_json::json!(["order_shipped", "mail"]));
    assert_eq!(plan["unmanaged"], serde_json::json!(["legacy"]));
    let text = String::from_utf8_lossy(&cli(&url, &["plan", path]).stdout).to_string();
    assert!(text.contains("+ create order_shipped"), "{text}");
    assert!(
        text.contains("? not in the file (left alone): legacy"),
        "{text}"
    );

    let applied = cli(&url, &["apply", path]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let plan = json(&cli(&url, &["plan", path, "--json"]));
    assert_eq!(plan["create"], serde_json::json!([]));
    assert_eq!(plan["update"], serde_json::json!([]));
    assert_eq!(
        plan["unchanged"],
        serde_json::json!(["order_shipped", "mail"])
    );
    let again = cli(&url, &["apply", path]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));

    // The observer works as declared: a shipped order makes a job.
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'shipped')")
        .await
        .expect("write");
    // Dispatched by the background dispatcher or by this call, whichever holds the round.
    let dispatched = wait_until(Duration::from_secs(15), || async {
        let _ = client.batch_execute("SELECT observer_dispatch()").await;
        client
            .query_one("SELECT count(*) FROM observer.jobs", &[])
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
    assert!(dispatched, "one job for the shipped order");

    // A change: the job and its history stay; only the changed fields are reported.
    let changed = FILE
        .replace("max_attempts = 5", "max_attempts = 9")
        .replace(
            r#"url = "https://hooks.example.com/mail" }"#,
            r#"url = "https://hooks.example.com/mail" }
enabled = false"#,
        );
    std::fs::write(&file, &changed).expect("write");
    let plan = json(&cli(&url, &["plan", path, "--json"]));
    assert_eq!(
        plan["update"],
        serde_json::json!([["order_shipped", ["options"]], ["mail", ["enabled"]]])
    );
    assert!(cli(&url, &["apply", path]).status.success());
    let row = client
        .query_one(
            "SELECT (SELECT max_attempts FROM observer.observers WHERE name = 'order_shipped'),
                    (SELECT enabled FROM observer.observers WHERE name = 'mail'),
                    (SELECT count(*) FROM observer.jobs)",
            &[],
        )
        .await
        .expect("state");
    assert_eq!(row.get::<_, i32>(0), 9);
    assert!(!row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i64>(2), 1, "the job survived the change");
    let plan = json(&cli(&url, &["plan", path, "--json"]));
    assert_eq!(plan["update"], serde_json::json!([]));

    // Broken files change nothing: TOML errors before the database, SQL errors roll back.
    let before: String = client
        .query_one(
            "SELECT string_agg(observer_definition(name)::text, ';' ORDER BY name) FROM observer_list()",
            &[],
        )
        .await
        .expect("definitions")
        .get(0);
    std::fs::write(&file, "[[observer]]\nname = \"x\"\nacton = 1\n").expect("write");
    let bad = cli(&url, &["apply", path]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("acton"),
        "names the bad key"
    );
    let half_bad = changed.replace("max_attempts = 9", "max_attempts = 3")
        + "\n[[observer]]\nname = \"broken\"\ntable = \"orders\"\ncondition = '$.new.status =='\naction = { type = \"webhook\", url = \"https://x.example.com/\" }\n";
    std::fs::write(&file, half_bad).expect("write");
    let bad = cli(&url, &["apply", path]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("broken"));
    let after: String = client
        .query_one(
            "SELECT string_agg(observer_definition(name)::text, ';' ORDER BY name) FROM observer_list()",
            &[],
        )
        .await
        .expect("definitions")
        .get(0);
    assert_eq!(
        before, after,
        "nothing changed, not even order_shipped's max_attempts"
    );
}
