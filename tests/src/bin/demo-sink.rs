//! `demo-sink ADDR`: the local HTTP sink that `scripts/demo.sh` delivers to. It answers 200 to
//! every request and prints each one as a JSON line on stdout (the same sink the integration
//! tests use).

use std::sync::Arc;

use fraiseql_observers_tests::{Received, Sink};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".to_string())
        .parse()?;
    let print = Arc::new(|r: &Received| {
        let line = serde_json::json!({
            "method": r.method,
            "path": r.path,
            "webhook-id": r.header("webhook-id"),
            "body": r.body,
        });
        println!("{line}");
    });
    let _sink = Sink::start_on(addr, Arc::new(|_, _| 200), Some(print)).await?;
    eprintln!("demo-sink listening on http://{addr}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
