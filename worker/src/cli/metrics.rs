//! `metrics`: scrape a worker's Prometheus endpoint and summarise it (sums over labels). The
//! only command that does not connect to the database.

use serde_json::Value;

use super::{print_json, table, text, Failure, Result};

/// `metrics [--url URL] [--json]`
pub async fn metrics(url: &str, json: bool) -> Result<()> {
    let body = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot scrape {url}: {e}; is metrics.listen set on the worker?"
            ))
        })?
        .text()
        .await
        .map_err(|e| Failure::Runtime(format!("cannot read {url}: {e}")))?;
    let summary = summarise_metrics(&body);
    if json {
        print_json(&summary);
        return Ok(());
    }
    let mut rows = Vec::new();
    if let Some(map) = summary.as_object() {
        for (k, v) in map {
            rows.push(vec![k.clone(), text(v)]);
        }
    }
    out!("{}", table(&["metric", "value"], &rows));
    Ok(())
}

/// Sums of each metric over its labels (histograms: `_count` and `_sum`), by name without the
/// `fraiseql_observers_` prefix; jobs also by outcome.
pub fn summarise_metrics(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if name.ends_with("_bucket") {
            continue;
        }
        let name = name.trim_start_matches("fraiseql_observers_");
        let key = match name {
            "jobs_total" => format!("jobs_{}", label(labels, "outcome")),
            "queue_jobs" => format!("queue_{}", label(labels, "state")),
            other => other.to_string(),
        };
        let entry = out.entry(key).or_insert(Value::from(0.0));
        let sum = entry.as_f64().unwrap_or(0.0) + value;
        *entry = Value::from(sum);
    }
    Value::Object(out)
}

/// The value of label `name` in `a="x",b="y"`, `?` when absent.
fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or("\"?\"")
        .trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_their_labels() {
        let text = "# HELP x\n\
            fraiseql_observers_jobs_total{action=\"webhook\",observer=\"a\",outcome=\"delivered\"} 3\n\
            fraiseql_observers_jobs_total{action=\"webhook\",observer=\"b\",outcome=\"delivered\"} 2\n\
            fraiseql_observers_delivery_seconds_bucket{le=\"0.1\"} 5\n\
            fraiseql_observers_delivery_seconds_count{observer=\"a\"} 5\n\
            fraiseql_observers_queue_jobs{state=\"dead\"} 1\n\
            fraiseql_observers_in_flight 0\n";
        let s = summarise_metrics(text);
        assert_eq!(s["jobs_delivered"], 5.0);
        assert_eq!(s["delivery_seconds_count"], 5.0);
        assert_eq!(s["queue_dead"], 1.0);
        assert_eq!(s["in_flight"], 0.0);
        assert!(s.get("delivery_seconds_bucket").is_none());
    }
}
