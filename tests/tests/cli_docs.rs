//! The CLI transcripts of docs/cli.md cannot drift: every ```console block is run, as
//! tests/tests/docs.rs runs the ```sql blocks. In such a block a line `$ fraiseql-observers ARGS`
//! is a command and the lines after it, up to the next `$` line, are what it prints (stdout, then
//! stderr, as a terminal shows them). The commands run with the real binary against a real
//! cluster and worker, with the fixture the examples assume: table `orders`, observers
//! `order_shipped` and `order_cancelled` (webhooks that answer 200) and `crm_sync` (an endpoint
//! that answers 410, so its job is dead and the observer paused), and one order inserted.
//!
//! Comparison is line by line, runs of spaces counting as one (table columns widen with the
//! values). Values that change per run are written as placeholders in the doc: `<ts>` a
//! timestamp, `<port>` a port, `<n>` a number; a line `...` stands for any number of lines.
//! A ```toml block whose first line is `# FILE` is written to FILE in the commands' working
//! directory (the file `validate-config` reads). Examples that cannot run here stay ```text.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use fraiseql_observers_tests::{
    observer_status, run_cli_in, wait_for_jobs, workspace_root, Cluster, Sink, Worker,
};

/// Placeholders a doc token may hold; each matches one run of non-space characters.
const PLACEHOLDERS: [&str; 3] = ["<ts>", "<port>", "<n>"];

/// One runnable command of a transcript: its arguments and the lines it prints.
#[derive(Debug, PartialEq)]
struct Transcript {
    args: Vec<String>,
    expected: Vec<String>,
}

/// The transcripts of the ```console blocks and the files of the `# FILE` ```toml blocks.
fn parse(markdown: &str) -> (Vec<Transcript>, Vec<(String, String)>) {
    let mut transcripts: Vec<Transcript> = Vec::new();
    let mut files = Vec::new();
    let mut block: Option<(&str, Vec<&str>)> = None;
    for line in markdown.lines() {
        match &mut block {
            None if line.starts_with("```console") => block = Some(("console", Vec::new())),
            None if line.starts_with("```toml") => block = Some(("toml", Vec::new())),
            Some((kind, lines)) if line.starts_with("```") => {
                if *kind == "toml" {
                    if let Some(name) = lines.first().and_then(|l| l.strip_prefix("# ")) {
                        files.push((name.trim().to_string(), lines.join("\n") + "\n"));
                    }
                } else {
                    for l in lines.iter() {
                        if let Some(cmd) = l.strip_prefix("$ fraiseql-observers") {
                            transcripts.push(Transcript {
                                args: shell_words(cmd),
                                expected: Vec::new(),
                            });
                        } else if let Some(t) = transcripts.last_mut() {
                            t.expected.push(l.to_string());
                        }
                    }
                }
                block = None;
            }
            Some((_, lines)) => lines.push(line),
            None => {}
        }
    }
    (transcripts, files)
}

/// Split a command line as a shell does for the quoting the docs use ('...' and "...").
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// Does the doc token (maybe holding placeholders) match the actual token?
fn token_matches(doc: &str, actual: &str) -> bool {
    let Some((at, ph)) = PLACEHOLDERS
        .iter()
        .filter_map(|p| doc.find(p).map(|i| (i, *p)))
        .min()
    else {
        return doc == actual;
    };
    let (prefix, rest) = (&doc[..at], &doc[at + ph.len()..]);
    let Some(tail) = actual.strip_prefix(prefix) else {
        return false;
    };
    // The placeholder takes at least one character; try every length (tokens are short).
    (1..=tail.len())
        .filter(|&n| tail.is_char_boundary(n))
        .any(|n| token_matches(rest, &tail[n..]))
}

fn line_matches(doc: &str, actual: &str) -> bool {
    let (d, a): (Vec<_>, Vec<_>) = (
        doc.split_whitespace().collect(),
        actual.split_whitespace().collect(),
    );
    d.len() == a.len() && d.iter().zip(&a).all(|(d, a)| token_matches(d, a))
}

/// Do the doc lines (with `...` lines) match the actual lines?
fn lines_match(doc: &[String], actual: &[&str]) -> bool {
    match doc.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| line_matches(first, a) && lines_match(rest, more)),
    }
}

#[test]
fn the_matcher_reads_the_convention() {
    let md = "```console\n$ fraiseql-observers dlq list --since \"2026-11-22 00:00+00\"\nJOB  AT\n3    <ts>\n...\nend\n```\n```text\n$ fraiseql-observers no\n```\n";
    let (t, files) = parse(md);
    assert!(files.is_empty());
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].args, ["dlq", "list", "--since", "2026-11-22 00:00+00"]);
    let actual = [
        "JOB AT",
        "3  2026-11-22T09:58:02.118534+00:00",
        "x",
        "y",
        "end",
    ];
    assert!(lines_match(&t[0].expected, &actual));
    assert!(!lines_match(&t[0].expected, &actual[..4]));
    assert!(token_matches(
        "http://127.0.0.1:<port>/ok",
        "http://127.0.0.1:4242/ok"
    ));
    assert!(!token_matches(
        "http://127.0.0.1:<port>/ok",
        "http://127.0.0.1:4242/no"
    ));
    assert!(!token_matches("<n>", ""));
}

fn run(cwd: &std::path::Path, url: &str, args: &[String]) -> Output {
    // `validate-config FILE` reads a file the doc declares, relative to the working directory.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_cli_in(Some(cwd), url, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_transcript_in_the_docs_runs() {
    let doc = workspace_root().join("docs/cli.md");
    let (transcripts, files) = parse(&std::fs::read_to_string(&doc).expect("read docs/cli.md"));
    assert!(
        transcripts.len() >= 8,
        "only {} transcripts",
        transcripts.len()
    );
    let cwd = tempfile::tempdir().expect("tempdir");
    for (name, text) in &files {
        std::fs::write(cwd.path().join(name), text).expect("write the doc's file");
    }

    let cluster = Cluster::start(&[]).expect("cluster");
    let sink = Sink::start_with(Arc::new(
        |r: &fraiseql_observers_tests::Received, _: &[_]| {
            if r.path == "/crm" {
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
               CREATE TABLE orders (id int PRIMARY KEY, customer text, status text);
               SELECT observer_create('crm_sync', 'orders', ARRAY['INSERT'], NULL,
                                      '{{"type": "webhook", "url": "{crm}"}}');
               SELECT observer_create('order_cancelled', 'orders', ARRAY['INSERT', 'UPDATE'],
                                      '$.new.status == "cancelled"',
                                      '{{"type": "webhook", "url": "{hooks}"}}');
               SELECT observer_create('order_shipped', 'orders', ARRAY['INSERT', 'UPDATE'],
                                      '$.new.status == "shipped"',
                                      '{{"type": "webhook", "url": "{hooks}"}}');"#,
            crm = sink.url("/crm"),
            hooks = sink.url("/orders"),
        ))
        .await
        .expect("fixture");
    let mut worker = Worker::start(&cluster.url("postgres"), &[]).expect("worker");
    client
        .batch_execute("INSERT INTO orders VALUES (1, 'ada', 'shipped')")
        .await
        .expect("insert");
    assert!(
        wait_for_jobs(&client, "completed", 1, Duration::from_secs(30)).await
            && wait_for_jobs(&client, "dead", 1, Duration::from_secs(30)).await,
        "{}\n{}",
        observer_status(&client).await,
        worker.log()
    );
    // The transcripts show a quiet system: no worker connected, nothing in flight.
    worker.terminate(Duration::from_secs(10));

    let url = cluster.url("postgres");
    let mut failures = Vec::new();
    for t in &transcripts {
        let out = run(cwd.path(), &url, &t.args);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let actual: Vec<&str> = printed.lines().collect();
        if !lines_match(&t.expected, &actual) {
            failures.push(format!(
                "$ fraiseql-observers {}\n--- the doc says:\n{}\n--- it printed (exit {:?}):\n{printed}",
                t.args.join(" "),
                t.expected.join("\n"),
                out.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "docs/cli.md disagrees with the CLI:\n\n{}",
        failures.join("\n\n")
    );
}
