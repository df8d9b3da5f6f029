//! Docs cannot drift: every ```sql block of README.md and docs/*.md is executed, in order, against
//! a real cluster with the extension. Each file gets a fresh database named `app` (the name the
//! docs use), with the tables the examples assume (`orders`, `customers`) unless the file creates
//! them itself, and the extension unless the file creates it.

use std::path::Path;

use fraiseql_observers_tests::{pg_bindir, workspace_root, Cluster};

/// The ```sql blocks of a Markdown file (indented ones too, e.g. inside list items).
fn sql_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed.starts_with("```sql") => current = Some((indent, Vec::new())),
            Some((_, lines)) if trimmed.starts_with("```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            Some((indent, lines)) => {
                let cut = line
                    .char_indices()
                    .take_while(|(i, c)| *i < *indent && c.is_whitespace())
                    .count();
                lines.push(line[cut..].to_string());
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn finds_indented_blocks() {
    let md =
        "text\n```sql\nSELECT 1;\n```\n- item\n  ```sql\n  SELECT 2;\n  ```\n```rust\nx\n```\n";
    assert_eq!(sql_blocks(md), vec!["SELECT 1;", "SELECT 2;"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_example_in_the_docs_runs() {
    let cluster = Cluster::start(&[]).expect("cluster");
    let admin = cluster.connect("postgres").await.expect("connect");
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut ran = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        let blocks = sql_blocks(&text);
        if blocks.is_empty() {
            continue;
        }
        admin
            .batch_execute("DROP DATABASE IF EXISTS app WITH (FORCE)")
            .await
            .expect("drop");
        admin
            .batch_execute("CREATE DATABASE app")
            .await
            .expect("create");
        let db = cluster.connect("app").await.expect("connect app");
        let all = blocks.join("\n");
        let mut fixture = String::new();
        if !all.contains("CREATE EXTENSION fraiseql_observers") {
            fixture.push_str("CREATE EXTENSION fraiseql_observers;\n");
        }
        if !all.contains("CREATE TABLE orders") {
            fixture.push_str(
                "CREATE TABLE orders (id int PRIMARY KEY, customer text, status text, total numeric, note text);\n",
            );
        }
        if !all.contains("CREATE TABLE customers") {
            fixture
                .push_str("CREATE TABLE customers (id int PRIMARY KEY, name text, email text);\n");
        }
        db.batch_execute(&fixture).await.expect("fixture");
        // Each block as a reader pastes it into psql: statement by statement, stopping at the
        // first error.
        for (i, block) in blocks.iter().enumerate() {
            let out = psql(&cluster.url("app"), block);
            assert!(
                out.status.success(),
                "{} block {} fails: {}\n{block}",
                rel(file, &root),
                i + 1,
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 15, "only {ran} SQL examples found");
}

fn psql(url: &str, sql: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(pg_bindir().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("write");
    child.wait_with_output().expect("psql exit")
}

fn rel(file: &Path, root: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}
