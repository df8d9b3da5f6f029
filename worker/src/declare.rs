//! Observers declared in a TOML file: `plan` shows how the database differs from the file,
//! `apply` makes it so in one transaction (all or nothing), idempotently.
//!
//! ```toml
//! [[observer]]
//! name = "order_shipped"
//! table = "public.orders"             # omit for a job queue
//! events = ["INSERT", "UPDATE"]       # default INSERT, UPDATE, DELETE
//! condition = '$.new.status == "shipped"'
//! enabled = true                      # default true
//! action = { type = "webhook", url = "https://example.com/hooks/orders" }
//! options = { max_attempts = 5 }
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::cli::{connect, Failure, Result};
use fraiseql_observers::config::Config;

/// The file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declarations {
    #[serde(default)]
    pub observer: Vec<Declared>,
}

/// One declared observer (the arguments of `observer_create`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    pub name: String,
    pub table: Option<String>,
    pub events: Option<Vec<String>>,
    pub condition: Option<String>,
    pub action: toml::Value,
    pub options: Option<toml::Value>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Declared {
    /// The SQL parameters: name, table, events (JSON), condition, action (JSON), options
    /// (JSON), enabled.
    fn params(&self) -> Vec<Option<String>> {
        let json = |v: &toml::Value| serde_json::to_string(v).unwrap_or_default();
        vec![
            Some(self.name.clone()),
            self.table.clone(),
            self.events
                .as_ref()
                .map(|e| serde_json::to_string(e).unwrap_or_default()),
            self.condition.clone(),
            Some(json(&self.action)),
            Some(
                self.options
                    .as_ref()
                    .map(json)
                    .unwrap_or_else(|| "{}".to_string()),
            ),
            Some(self.enabled.to_string()),
        ]
    }
}

/// The arguments of observer_create / observer_replace / observer_diff from the parameters above.
const ARGS: &str = "$1, $2::text::regclass,
    CASE WHEN $3::text IS NULL THEN ARRAY['INSERT', 'UPDATE', 'DELETE']
         ELSE ARRAY(SELECT jsonb_array_elements_text($3::text::jsonb)) END,
    $4, $5::text::jsonb, $6::text::jsonb";

/// Read and check a declarations file (exit code 2 on any problem, naming it).
pub fn load(path: &Path) -> Result<Vec<Declared>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let file: Declarations = toml::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a valid observers file: {}",
            path.display(),
            e.to_string().trim()
        ))
    })?;
    let mut seen = BTreeSet::new();
    for o in &file.observer {
        if !seen.insert(o.name.clone()) {
            return Err(Failure::Usage(format!(
                "{}: observer {:?} is declared twice",
                path.display(),
                o.name
            )));
        }
    }
    Ok(file.observer)
}

/// What `apply` would do.
#[derive(Debug, Default, serde::Serialize)]
pub struct Plan {
    pub create: Vec<String>,
    pub update: Vec<(String, Vec<String>)>,
    pub unchanged: Vec<String>,
    /// In the database, not in the file: left alone.
    pub unmanaged: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty()
    }
}

/// Compare the file with the database (changes nothing).
pub async fn plan(config: &Config, declared: &[Declared]) -> Result<Plan> {
    let db = connect(config).await?;
    let mut plan = Plan::default();
    for d in declared {
        let diff = db
            .json(
                &format!(
                    "SELECT to_jsonb(@extschema@.observer_diff({ARGS}, $7::text::bool))::text"
                ),
                &d.params(),
            )
            .await
            .map_err(|e| in_observer(&d.name, e.into()))?;
        match diff {
            serde_json::Value::Null => plan.create.push(d.name.clone()),
            serde_json::Value::Array(fields) if fields.is_empty() => {
                plan.unchanged.push(d.name.clone())
            }
            serde_json::Value::Array(fields) => plan.update.push((
                d.name.clone(),
                fields
                    .iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect(),
            )),
            other => {
                return Err(Failure::Runtime(format!(
                    "unexpected answer from observer_diff: {other}"
                )))
            }
        }
    }
    let names: BTreeSet<&str> = declared.iter().map(|d| d.name.as_str()).collect();
    let existing = db
        .json(
            "SELECT coalesce(jsonb_agg(name ORDER BY name), '[]')::text FROM @extschema@.observer_list()",
            &[],
        )
        .await?;
    for name in existing.as_array().into_iter().flatten() {
        if let Some(n) = name.as_str() {
            if !names.contains(n) {
                plan.unmanaged.push(n.to_string());
            }
        }
    }
    Ok(plan)
}

fn in_observer(name: &str, f: Failure) -> Failure {
    match f {
        Failure::Usage(m) => Failure::Usage(format!("observer {name:?}: {m}")),
        Failure::NotFound(m) => Failure::NotFound(format!("observer {name:?}: {m}")),
        Failure::Runtime(m) => Failure::Runtime(format!("observer {name:?}: {m}")),
    }
}

/// Print a plan for a terminal.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for n in &plan.create {
        out.push_str(&format!("+ create {n}\n"));
    }
    for (n, fields) in &plan.update {
        out.push_str(&format!("~ update {n}: {}\n", fields.join(", ")));
    }
    for n in &plan.unchanged {
        out.push_str(&format!("= unchanged {n}\n"));
    }
    for n in &plan.unmanaged {
        out.push_str(&format!("? not in the file (left alone): {n}\n"));
    }
    out.push_str(&format!(
        "plan: {} to create, {} to update, {} unchanged\n",
        plan.create.len(),
        plan.update.len(),
        plan.unchanged.len()
    ));
    out
}

/// Make the database match the file, in one transaction.
pub async fn apply(config: &Config, declared: &[Declared]) -> Result<Plan> {
    let plan = plan(config, declared).await?;
    if plan.is_empty() {
        return Ok(plan);
    }
    let db = connect(config).await?;
    let mut steps: Vec<(String, Vec<Option<String>>)> = Vec::new();
    for d in declared {
        let params = d.params();
        if plan.create.contains(&d.name) {
            steps.push((
                format!("SELECT to_jsonb(@extschema@.observer_create({ARGS}))::text"),
                params[..6].to_vec(),
            ));
            if !d.enabled {
                steps.push((
                    "SELECT to_jsonb(@extschema@.observer_disable($1))::text".to_string(),
                    vec![Some(d.name.clone())],
                ));
            }
        } else if let Some((_, fields)) = plan.update.iter().find(|(n, _)| *n == d.name) {
            if fields.iter().any(|f| f != "enabled") {
                steps.push((
                    format!("SELECT to_jsonb(@extschema@.observer_replace({ARGS}))::text"),
                    params[..6].to_vec(),
                ));
            }
            if fields.iter().any(|f| f == "enabled") {
                let f = if d.enabled {
                    "observer_enable"
                } else {
                    "observer_disable"
                };
                steps.push((
                    format!("SELECT to_jsonb(@extschema@.{f}($1))::text"),
                    vec![Some(d.name.clone())],
                ));
            }
        }
    }
    let bar = crate::cli::progress(steps.len() as u64, "applying");
    db.in_transaction(&steps, || bar.inc(1))
        .await
        .map_err(Failure::from)?;
    bar.finish_and_clear();
    Ok(plan)
}
