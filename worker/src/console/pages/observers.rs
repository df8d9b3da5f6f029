//! `/observers`: every observer with its waiting, running and dead jobs and its last error
//! (`observer_console_observers`); `/observers/<name>`: its definition (`observer_definition`,
//! the action with its credentials masked) and the forms that enable or disable it and pause or
//! resume its deliveries with a reason (`POST /observers/<name>/<change>`), each recorded in the
//! operator action log.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::super::auth::Viewer;
use super::super::html::{self, cut, esc, hidden, json_block, time, val};
use super::super::http::{Req, Resp};
use super::super::{mask, Console, PageError, PageResult};
use super::Record;

const OBSERVERS: &str = "SELECT coalesce(jsonb_agg(to_jsonb(o) ORDER BY o.name), '[]')::text
                         FROM @extschema@.observer_console_observers() o";

/// An observer's state in words: enabled, disabled, or paused with its reason.
fn state(o: &Value) -> String {
    if !o["enabled"].as_bool().unwrap_or(true) {
        return "<span class=\"badge off\">disabled</span>".to_string();
    }
    match o["paused_reason"].as_str() {
        Some(reason) => format!(
            "<span class=\"badge warn\">paused</span> <span class=\"muted\">{}</span>",
            esc(&cut(reason, 80))
        ),
        None => "<span class=\"badge ok\">enabled</span>".to_string(),
    }
}

/// `GET /observers`
pub async fn list(console: &Console, viewer: &Viewer) -> PageResult {
    let observers = console.json(OBSERVERS, &[]).await?;
    let rows: Vec<(String, Vec<String>)> = observers
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let name = o["name"].as_str().unwrap_or_default();
            let link = format!("/observers/{}", url_segment(name));
            (
                format!(" data-testid=\"observer-{}\"", esc(name)),
                vec![
                    format!("<a href=\"{}\">{}</a>", esc(&link), esc(name)),
                    match o["table_name"].as_str() {
                        Some(t) => esc(t),
                        None => "<span class=\"muted\">job queue</span>".to_string(),
                    },
                    val(&o["action_type"]),
                    state(o),
                    val(&o["pending"]),
                    val(&o["running"]),
                    format!(
                        "<a href=\"/dlq{}\">{}</a>",
                        esc(&html::query_string(&[("observer", name)])),
                        val(&o["dead"])
                    ),
                    format!(
                        "{} <span class=\"muted\">{}</span>",
                        esc(&cut(o["last_error"].as_str().unwrap_or(""), 80)),
                        if o["last_error"].is_null() {
                            String::new()
                        } else {
                            time(&o["last_error_at"])
                        }
                    ),
                ],
            )
        })
        .collect();
    let body = html::table(
        &[
            "Observer",
            "Table",
            "Action",
            "State",
            "Waiting",
            "Running",
            "Dead",
            "Last error",
        ],
        &rows,
        "No observer yet: observer_create() makes one.",
    );
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page("Observers", "/observers", None, &body),
    ))
}

/// `name` as a path segment.
pub fn url_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A path segment decoded.
fn decoded(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// `GET /observers/<name>`
pub async fn show(console: &Console, viewer: &Viewer, segment: &str) -> PageResult {
    let name = decoded(segment);
    let definition = console
        .json("SELECT @extschema@.observer_definition($1)::text", &[&name])
        .await?;
    let observers = console.json(OBSERVERS, &[]).await?;
    let status = observers
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["name"].as_str() == Some(name.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    let mut body = format!(
        "<section class=\"panel\" data-testid=\"observer-status\"><p>{} · waiting {} · running {} · \
         <a href=\"/dlq{}\">dead {}</a></p>",
        state(&status),
        val(&status["pending"]),
        val(&status["running"]),
        esc(&html::query_string(&[("observer", &name)])),
        val(&status["dead"]),
    );
    if console.can_change(viewer) {
        body.push_str(&forms(&name, &status, viewer.csrf.as_deref().unwrap_or("")));
    }
    body.push_str("</section>");
    let mut shown = definition.clone();
    shown["action"] = mask::action(&definition["action"]);
    let _ = write!(
        body,
        "<section><h2>Definition</h2><pre class=\"json\" data-testid=\"definition\">{}</pre></section>",
        json_block(&shown)
    );
    Ok(Resp::html(
        200,
        console
            .layout(viewer)
            .page(&format!("Observer {name}"), "/observers", None, &body),
    ))
}

/// The enable/disable and pause/resume forms of observer `name`.
fn forms(name: &str, status: &Value, csrf: &str) -> String {
    let action = |change: &str| format!("/observers/{}/{change}", url_segment(name));
    let button = |change: &str, label: &str, extra: &str| {
        format!(
            "<form method=\"post\" action=\"{}\" class=\"inline\">{}{extra}<button type=\"submit\" data-testid=\"observer-{change}\">{label}</button></form>",
            esc(&action(change)),
            hidden("csrf", csrf)
        )
    };
    let mut out = String::from("<div class=\"actions\">");
    if status["enabled"].as_bool().unwrap_or(true) {
        out.push_str(&button("disable", "Disable", ""));
    } else {
        out.push_str(&button("enable", "Enable", ""));
    }
    if status["paused_reason"].is_null() {
        out.push_str(&button(
            "pause",
            "Pause deliveries",
            "<input type=\"text\" name=\"reason\" placeholder=\"reason\" maxlength=\"200\" required>",
        ));
    } else {
        out.push_str(&button("resume", "Resume deliveries", ""));
    }
    out.push_str("</div>");
    out
}

/// `POST /observers/<name>/<change>` (enable, disable, pause, resume), CSRF already checked.
pub async fn change(
    console: &Console,
    req: &Req,
    viewer: &Viewer,
    segment: &str,
    change: &str,
) -> PageResult {
    let name = decoded(segment);
    let reason = req.field("reason");
    let call = match change {
        "enable" => "SELECT pg_catalog.to_jsonb(@extschema@.observer_enable($1) IS NULL) AS result",
        "disable" => {
            "SELECT pg_catalog.to_jsonb(@extschema@.observer_disable($1) IS NULL) AS result"
        }
        "pause" => "SELECT pg_catalog.to_jsonb(@extschema@.observer_pause($1, $2)) AS result",
        "resume" => "SELECT pg_catalog.to_jsonb(@extschema@.observer_resume($1)) AS result",
        _ => {
            return Err(PageError::NotFound(format!(
                "no change {:?} of an observer",
                cut(change, 40)
            )))
        }
    };
    let record = Record {
        action: match change {
            "enable" => "observer_enable",
            "disable" => "observer_disable",
            "pause" => "observer_pause",
            _ => "observer_resume",
        },
        target: name.clone(),
    };
    if change == "pause" {
        let reason = if reason.is_empty() {
            format!("paused from the console by {}", viewer.operator)
        } else {
            cut(reason, 200)
        };
        let detail = json!({"reason": reason});
        console
            .act(viewer, record, call, &[&name, &reason], detail)
            .await?;
    } else {
        console
            .act(viewer, record, call, &[&name], json!({}))
            .await?;
    }
    Ok(Resp::redirect(&format!(
        "/observers/{}",
        url_segment(&name)
    )))
}
