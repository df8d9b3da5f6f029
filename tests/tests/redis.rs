//! State shared by worker replicas through a real Redis server (`redis-server` on loopback):
//! a circuit opened by one replica is open in the other within a second; a rate limit of N/s
//! holds across two replicas together; a job redelivered after a crash between its 2xx and its
//! completion is completed without a second request; with Redis down, delivery goes on.

use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    free_port, observer_status, wait_for_jobs, wait_until, Cluster, RedisServer, Sink, Worker,
};

async fn queue(client: &tokio_postgres::Client, name: &str, url: &str, jobs: usize) {
    client
        .batch_execute(&format!(
            r#"CREATE EXTENSION IF NOT EXISTS fraiseql_observers;
               SELECT observer_create('{name}', NULL, action => '{{"type": "webhook", "url": "{url}"}}',
                   options => '{{"max_attempts": 1000, "backoff_base": "100 milliseconds", "backoff_cap": "200 milliseconds"}}');
               SELECT observer_enqueue_many('{name}', ARRAY(SELECT jsonb_build_object('n', i) FROM generate_series(1, {jobs}) i));"#
        ))
        .await
        .expect("queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_by_one_replica_opens_in_the_other() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let redis = RedisServer::start().expect("redis");
    let sink = Sink::start_with(Arc::new(|_, _| 500)).await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    queue(&client, "down", &sink.url("/down"), 50).await;
    let url = redis.url();
    // Replica a opens after 3 faults; replica b on its own would need 1000. b starts first and
    // has sent a request before a starts: a replica learns of a circuit opened elsewhere for the
    // endpoints it delivers to, and started together, a could claim every job and snooze them
    // all (its circuit open) before b saw one.
    let _b = Worker::start(
        &cluster.url("postgres"),
        &[
            ("WORKER_ID", "b"),
            ("REDIS__URL", url.as_str()),
            ("BREAKER__FAILURE_THRESHOLD", "1000"),
            ("BREAKER__OPEN_MS", "60000"),
        ],
    )
    .expect("worker b");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            !sink.received().is_empty()
        })
        .await,
        "worker b sent nothing"
    );
    let _a = Worker::start(
        &cluster.url("postgres"),
        &[
            ("WORKER_ID", "a"),
            ("REDIS__URL", url.as_str()),
            ("BREAKER__FAILURE_THRESHOLD", "3"),
            ("BREAKER__OPEN_MS", "60000"),
        ],
    )
    .expect("worker a");
    let both_open = wait_until(Duration::from_secs(30), || async {
        client
            .query_one(
                "SELECT count(*) FROM observer.breakers WHERE state = 'open'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 2)
            .unwrap_or(false)
    })
    .await;
    assert!(both_open, "{}", observer_status(&client).await);
    let lag: f64 = client
        .query_one(
            "SELECT extract(epoch FROM max(reported_at) - min(reported_at))::float8
             FROM observer.breakers WHERE state = 'open'",
            &[],
        )
        .await
        .expect("breakers")
        .get(0);
    assert!(
        lag < 1.0,
        "the second replica saw the open circuit {lag} s later"
    );
    // b opened because a did: it saw far fewer faults than its own threshold.
    let b_failures = sink.received().len();
    assert!(b_failures < 1000);
    // While open, nothing more is sent by either replica.
    let before = sink.received().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.received().len(), before, "both replicas hold off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_two_replicas() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let redis = RedisServer::start().expect("redis");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    let n = 120;
    queue(&client, "limited", &sink.url("/limited"), n).await;
    let limits = format!("http://{}=20", sink.addr);
    let url = redis.url();
    let env = [
        ("REDIS__URL", url.as_str()),
        ("RATE_LIMITS", limits.as_str()),
    ];
    let _a = Worker::start(
        &cluster.url("postgres"),
        &[env[0], env[1], ("WORKER_ID", "a")],
    )
    .expect("worker a");
    let _b = Worker::start(
        &cluster.url("postgres"),
        &[env[0], env[1], ("WORKER_ID", "b")],
    )
    .expect("worker b");
    assert!(
        wait_for_jobs(&client, "completed", n as i64, Duration::from_secs(60)).await,
        "{}",
        observer_status(&client).await
    );
    let received = sink.received();
    assert_eq!(received.len(), n, "each job sent once");
    let span = received[n - 1].at - received[0].at;
    let rate = (n - 1) as f64 / span.as_secs_f64();
    eprintln!("rate limit 20/s across two replicas: measured {rate:.2}/s");
    assert!(
        (18.0..=22.0).contains(&rate),
        "measured {rate:.2} requests/s across both replicas, limit 20/s"
    );
    let workers: i64 = client
        .query_one("SELECT count(DISTINCT worker) FROM observer.jobs", &[])
        .await
        .expect("workers")
        .get(0);
    assert_eq!(workers, 2, "both replicas delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_2xx_and_the_completion_sends_nothing_twice() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let redis = RedisServer::start().expect("redis");
    // Answers 200 after a second: time to lock the job row so the completion cannot land.
    let sink = Sink::start_with_delay(Arc::new(|_, _| 200), Duration::from_millis(1000))
        .await
        .expect("sink");
    let mut client = cluster.connect("postgres").await.expect("connect");
    queue(&client, "pay", &sink.url("/pay"), 1).await;
    let url = redis.url();
    let env = [
        ("REDIS__URL", url.as_str()),
        ("LEASE_SECONDS", "2"),
        ("DISPATCH", "false"),
    ];
    let a = Worker::start(&cluster.url("postgres"), &env).expect("worker a");
    assert!(sink.wait_received(1, Duration::from_secs(30)).await);
    let lock = client.transaction().await.expect("begin");
    lock.batch_execute("SELECT id FROM observer.jobs FOR UPDATE")
        .await
        .expect("lock the job");
    // The 2xx came and the ledger has the job; its completion waits on our lock: crash now.
    let recorded = wait_until(Duration::from_secs(10), || async {
        redis
            .cli(&["--scan", "--pattern", "fraiseql_observers:delivered:*"])
            .map(|keys| !keys.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(recorded, "{}", a.log());
    a.signal("KILL");
    drop(a);
    lock.rollback().await.expect("unlock");
    let status: String = client
        .query_one("SELECT state FROM observer.jobs", &[])
        .await
        .expect("job")
        .get(0);
    assert_eq!(status, "running", "the completion never landed");

    let b = Worker::start(&cluster.url("postgres"), &env).expect("worker b");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await,
        "{}\n{}",
        observer_status(&client).await,
        b.log()
    );
    assert_eq!(sink.received().len(), 1, "no second request");
    assert!(b.log().contains("already delivered (delivered-ledger)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_delivery_goes_on() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start().await.expect("sink");
    let client = cluster.connect("postgres").await.expect("connect");
    queue(&client, "mail", &sink.url("/mail"), 5).await;
    let nowhere = format!("redis://127.0.0.1:{}", free_port().expect("port"));
    let limits = format!("http://{}=50", sink.addr);
    let worker = Worker::start(
        &cluster.url("postgres"),
        &[
            ("REDIS__URL", nowhere.as_str()),
            ("RATE_LIMITS", limits.as_str()),
        ],
    )
    .expect("worker");
    assert!(
        wait_for_jobs(&client, "completed", 5, Duration::from_secs(30)).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    assert!(
        worker.log().contains("redis unavailable"),
        "{}",
        worker.log()
    );
}
