//! `/actions`: the operator action log (`observer_console_actions`): who changed what from the
//! console and when, newest first. The overview shows its newest entries.

use serde_json::Value;

use super::super::auth::Viewer;
use super::super::html::{self, esc, time, val};
use super::super::http::Resp;
use super::super::{Console, PageError, PageResult};

/// The newest `n` entries of the log.
pub async fn recent(console: &Console, n: i32) -> Result<Value, PageError> {
    console
        .json(
            "SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.id DESC), '[]')::text
             FROM @extschema@.observer_console_actions($1) a",
            &[&n],
        )
        .await
}

/// The log's entries as a table (`data-testid="operator-action"` per row).
pub fn table(actions: &Value) -> String {
    let rows: Vec<(String, Vec<String>)> = actions
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let detail = match &a["detail"] {
                Value::Object(m) if !m.is_empty() => html::cut(&a["detail"].to_string(), 160),
                _ => String::new(),
            };
            (
                " data-testid=\"operator-action\"".to_string(),
                vec![
                    time(&a["at"]),
                    format!("<strong>{}</strong>", val(&a["operator"])),
                    val(&a["action"]),
                    val(&a["target"]),
                    format!("<code>{}</code>", esc(&detail)),
                    val(&a["db_role"]),
                ],
            )
        })
        .collect();
    html::table(
        &[
            "When",
            "Operator",
            "Action",
            "Target",
            "Detail",
            "Database role",
        ],
        &rows,
        "No operator action yet.",
    )
}

/// `GET /actions`
pub async fn page(console: &Console, viewer: &Viewer) -> PageResult {
    let actions = recent(console, 200).await?;
    let body = format!(
        "<p class=\"muted\">Every change made from the console, recorded in the same transaction as the change (observer_console_actions()). The newest 200.</p>{}",
        table(&actions)
    );
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Operator log", "/actions", None, &body),
    ))
}
