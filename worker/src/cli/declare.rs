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

use fraiseql_observers::config::Config;
use tokio_postgres::types::ToSql;

use super::{connect, Failure, Result};

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

/// A declared observer as the parameters of observer_create / observer_replace / observer_diff
/// (`$1` to `$6`, see [`ARGS`]) and `enabled` (`$7`).
struct Params<'a> {
    name: &'a str,
    table: Option<&'a str>,
    events: Option<&'a [String]>,
    condition: Option<&'a str>,
    /// The action and the options as JSON text, read as jsonb by the server: tokio-postgres maps
    /// `serde_json::Value` to jsonb only with a feature (`with-serde_json-1`) the workspace does
    /// not enable.
    action: String,
    options: String,
    enabled: bool,
}

impl<'a> Params<'a> {
    fn of(d: &'a Declared) -> Self {
        let json = |v: &toml::Value| serde_json::to_string(v).unwrap_or_default();
        Params {
            name: &d.name,
            table: d.table.as_deref(),
            events: d.events.as_deref(),
            condition: d.condition.as_deref(),
            action: json(&d.action),
            options: d.options.as_ref().map_or_else(|| "{}".to_string(), json),
            enabled: d.enabled,
        }
    }

    /// `$1` to `$6`, the arguments of observer_create and observer_replace.
    fn observer(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.name,
            &self.table,
            &self.events,
            &self.condition,
            &self.action,
            &self.options,
        ]
    }

    /// `$1` to `$7`, the arguments of observer_diff.
    fn with_enabled(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p = self.observer();
        p.push(&self.enabled);
        p
    }
}

/// The arguments of observer_create / observer_replace / observer_diff from [`Params`]. The
/// table is resolved by the server (`::text::regclass`: a name, schema-qualified or found on the
/// search_path, and 42P01 for none); the action and options are JSON text read as jsonb.
const ARGS: &str = "$1, $2::text::regclass,
    coalesce($3::text[], ARRAY['INSERT', 'UPDATE', 'DELETE']),
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
            .query_json(
                &format!("SELECT to_jsonb(@extschema@.observer_diff({ARGS}, $7))::text"),
                &Params::of(d).with_enabled(),
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
        .query_json(
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
    let params: Vec<Params> = declared.iter().map(Params::of).collect();
    let steps: Vec<Step> = params.iter().flat_map(|p| steps(p, &plan)).collect();
    let bar = super::progress(steps.len() as u64, "applying");
    db.in_transaction(&steps, || bar.inc(1))
        .await
        .map_err(Failure::from)?;
    bar.finish_and_clear();
    Ok(plan)
}

/// A statement of `apply` and its parameters.
type Step<'a> = (String, Vec<&'a (dyn ToSql + Sync)>);

/// The statements that make one declared observer as the plan says: create it (then disable it
/// if declared so), or replace what changed and enable or disable it; none when unchanged.
fn steps<'a>(p: &'a Params<'a>, plan: &Plan) -> Vec<Step<'a>> {
    let call = |f: &str| format!("SELECT to_jsonb(@extschema@.{f}($1))::text");
    let toggle = if p.enabled {
        "observer_enable"
    } else {
        "observer_disable"
    };
    let mut steps: Vec<Step> = Vec::new();
    if plan.create.iter().any(|n| n == p.name) {
        steps.push((
            format!("SELECT to_jsonb(@extschema@.observer_create({ARGS}))::text"),
            p.observer(),
        ));
        if !p.enabled {
            steps.push((call("observer_disable"), vec![&p.name]));
        }
    } else if let Some((_, fields)) = plan.update.iter().find(|(n, _)| n == p.name) {
        if fields.iter().any(|f| f != "enabled") {
            steps.push((
                format!("SELECT to_jsonb(@extschema@.observer_replace({ARGS}))::text"),
                p.observer(),
            ));
        }
        if fields.iter().any(|f| f == "enabled") {
            steps.push((call(toggle), vec![&p.name]));
        }
    }
    steps
}

/// `plan FILE [--json]`
pub async fn plan_command(config: &Config, file: &Path, json: bool) -> Result<()> {
    let declared = load(file)?;
    let plan = plan(config, &declared).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        out!("{}", render(&plan));
    }
    Ok(())
}

/// `apply FILE [--json]`
pub async fn apply_command(config: &Config, file: &Path, json: bool) -> Result<()> {
    let declared = load(file)?;
    let plan = apply(config, &declared).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else if plan.is_empty() {
        outln!("nothing to do: the database matches {}", file.display());
    } else {
        out!("{}", render(&plan));
        outln!("applied");
    }
    Ok(())
}
