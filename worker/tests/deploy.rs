//! The files in `deploy/` agree with the worker and the docs: every alert rule has a
//! `runbook_url` whose section exists in docs/runbook.md and reads only metrics the worker
//! exports, the rules' scrape job is the one deploy/prometheus.yml defines, the Grafana dashboard
//! names no data source uid (it imports into any Grafana through its `DS_PROMETHEUS` input and
//! `datasource` variable) and queries only exported metrics, and the Postgres image takes its
//! major version from `PG_MAJOR` everywhere. Prometheus' own `promtool` (put at
//! `.tools/promtool` by scripts/setup.sh) checks the rules and the config and runs the rules' unit
//! tests, deploy/alerts.test.yml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fraiseql_observers::db::Health;
use fraiseql_observers::metrics::Metrics;
use serde_norway::Value;

/// Where every runbook_url points, followed by the section's anchor.
const RUNBOOK: &str = "https://github.com/fraiseql/fraiseql_observers/blob/main/docs/runbook.md#";

/// The workspace root (the worker crate is one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the worker crate is in the workspace")
        .to_path_buf()
}

fn repo_file(path: &str) -> String {
    let full = workspace_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of docs/runbook.md's headings.
fn runbook_anchors() -> BTreeSet<String> {
    repo_file("docs/runbook.md")
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect()
}

/// Every series name the worker's /metrics can show (each label vector given a value, so that
/// it appears), with the `_bucket`, `_count` and `_sum` series of histograms.
fn exported() -> BTreeSet<String> {
    let m = Metrics::new().expect("metrics");
    m.job("o", "webhook", "delivered");
    m.delivery("o", "webhook", std::time::Duration::from_millis(1));
    m.event_lag("o", "webhook", 0.0);
    m.record_health(&Health {
        jobs: vec![("dead".to_string(), 0)],
        ..Health::default()
    });
    m.redis_errors.with_label_values(&["get"]).inc();
    let mut names = BTreeSet::new();
    for line in m.render().lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_count", "_sum"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The worker's metric names a PromQL expression reads (`fraiseql_observers_*`, `process_*`).
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("fraiseql_observers_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

fn alert_rules() -> Vec<Value> {
    let doc: Value = serde_norway::from_str(&repo_file("deploy/alerts.yml")).expect("alerts.yml");
    let mut rules = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        rules.extend(group["rules"].as_sequence().expect("rules").iter().cloned());
    }
    rules
}

#[test]
fn every_alert_links_a_runbook_section_and_reads_exported_metrics() {
    let anchors = runbook_anchors();
    let exported = exported();
    let rules = alert_rules();
    assert!(rules.len() >= 10, "{} rules", rules.len());
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = rule["alert"].as_str().expect("alert name");
        assert!(names.insert(name), "{name} is defined twice");
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no annotations.runbook_url"));
        let section = url
            .strip_prefix(RUNBOOK)
            .unwrap_or_else(|| panic!("{name}: {url} is not a section of {RUNBOOK}"));
        assert!(
            anchors.contains(section),
            "{name}: docs/runbook.md has no section #{section} (sections: {anchors:?})"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key].as_str().is_some(),
                "{name}: no {key}"
            );
        }
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ),
            "{name}: severity"
        );
        let expr = rule["expr"].as_str().expect("expr");
        for metric in metrics_in(expr) {
            assert!(
                exported.contains(&metric),
                "{name} reads {metric}, which the worker does not export"
            );
        }
    }
}

#[test]
fn the_alerts_cover_dispatch_dead_letters_circuits_and_absent_workers() {
    let rules = alert_rules();
    let reads = |metric: &str| {
        rules
            .iter()
            .any(|r| r["expr"].as_str().is_some_and(|e| e.contains(metric)))
    };
    for metric in [
        "fraiseql_observers_dispatch_healthy",
        "fraiseql_observers_dispatch_lag_seconds",
        "fraiseql_observers_dispatch_blocked_sessions",
        r#"fraiseql_observers_queue_jobs{state="dead"}"#,
        "fraiseql_observers_open_circuits",
        "fraiseql_observers_ready",
        "absent(up{job=",
        "absent(fraiseql_observers_worker_up)",
    ] {
        assert!(reads(metric), "no alert reads {metric}");
    }
}

#[test]
fn the_alerts_job_is_the_scrape_job() {
    let prometheus: Value =
        serde_norway::from_str(&repo_file("deploy/prometheus.yml")).expect("prometheus.yml");
    let jobs: Vec<&str> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .filter_map(|c| c["job_name"].as_str())
        .collect();
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().expect("expr");
        for part in expr.split("job=\"").skip(1) {
            let job = part.split('"').next().expect("job name");
            assert!(
                jobs.contains(&job),
                "{expr}: no scrape job {job} in {jobs:?}"
            );
        }
    }
}

/// Every `datasource` object in `v`, with the path to it.
fn datasources<'a>(
    v: &'a serde_json::Value,
    path: String,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == "datasource" {
                    out.push((path.clone(), child));
                }
                datasources(child, format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                datasources(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_imports_into_any_grafana_and_reads_exported_metrics() {
    let text = repo_file("deploy/grafana/dashboards/fraiseql-observers.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let input = &dashboard["__inputs"][0];
    assert_eq!(input["name"], "DS_PROMETHEUS");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(variable["type"], "datasource");
    assert_eq!(variable["query"], "prometheus");
    assert_eq!(variable["current"]["value"], "${DS_PROMETHEUS}");
    let mut found = Vec::new();
    datasources(&dashboard, String::new(), &mut found);
    assert!(found.len() > 20, "{}", found.len());
    for (path, ds) in found {
        match ds["type"].as_str() {
            // Grafana's own annotations.
            Some("grafana") => assert_eq!(ds["uid"], "-- Grafana --", "{path}"),
            _ => assert_eq!(
                ds,
                &serde_json::json!({"type": "prometheus", "uid": "${datasource}"}),
                "{path}: a data source must be the variable, never a uid of one Grafana"
            ),
        }
    }
    let exported = exported();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for metric in metrics_in(expr) {
                assert!(
                    exported.contains(&metric),
                    "panel {}: {metric} is not exported",
                    panel["title"]
                );
                queried.insert(metric);
            }
        }
    }
    for metric in [
        "fraiseql_observers_dispatch_lag_seconds",
        "fraiseql_observers_dispatch_undispatched_events",
        "fraiseql_observers_dispatch_seconds_since_last_round",
        "fraiseql_observers_dispatch_blocked_sessions",
        "fraiseql_observers_dispatch_healthy",
        "fraiseql_observers_build_info",
        "fraiseql_observers_ready",
        "process_resident_memory_bytes",
    ] {
        assert!(queried.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn the_postgres_image_takes_its_major_version_from_pg_major() {
    let dockerfile = repo_file("deploy/postgres.Dockerfile");
    for line in dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        if line.trim() == "ARG PG_MAJOR=15" {
            continue;
        }
        assert!(
            !line.contains("15"),
            "hard-coded major version, use ${{PG_MAJOR}}: {line}"
        );
    }
    assert!(dockerfile.contains("FROM postgres:${PG_MAJOR}-bookworm"));
}

/// Runs `.tools/promtool ARGS` in the workspace root and fails with its output unless it succeeds.
/// A missing promtool fails too: a skipped check would read as a passed one.
fn promtool(args: &[&str]) {
    let root = workspace_root();
    let bin = root.join(".tools/promtool");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup.sh as root (its promtool step unpacks it from Debian's \
         prometheus package without installing a service)",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(args)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    promtool(&["check", "rules", "deploy/alerts.yml"]);
    promtool(&["test", "rules", "deploy/alerts.test.yml"]);
}

/// `--syntax-only`: the config loads its rules from /etc/prometheus/alerts.yml, a path that exists
/// only inside the compose stack's Prometheus container; the rules file itself is checked above.
#[test]
fn promtool_accepts_the_prometheus_config() {
    promtool(&["check", "config", "--syntax-only", "deploy/prometheus.yml"]);
}
