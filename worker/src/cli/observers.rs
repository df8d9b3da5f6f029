//! `pause` / `resume`: hold an observer's deliveries (`observer_pause`; its jobs are kept) and
//! release them (`observer_resume`).

use fraiseql_observers::config::Config;

use super::{connect, text, Result};

/// `pause <observer> [--reason TEXT]`
pub async fn pause(config: &Config, observer: &str, reason: Option<&str>) -> Result<()> {
    let db = connect(config).await?;
    let held = db
        .query_json(
            "SELECT to_jsonb(@extschema@.observer_pause($1, coalesce($2, 'paused by an operator')))::text",
            &[&observer, &reason],
        )
        .await?;
    outln!(
        "{observer} paused: {} pending job(s) held; new jobs are kept until `resume`",
        text(&held)
    );
    Ok(())
}

/// `resume <observer>`
pub async fn resume(config: &Config, observer: &str) -> Result<()> {
    let db = connect(config).await?;
    let due = db
        .query_json(
            "SELECT to_jsonb(@extschema@.observer_resume($1))::text",
            &[&observer],
        )
        .await?;
    outln!("{observer} resumed: {} held job(s) due now", text(&due));
    Ok(())
}
