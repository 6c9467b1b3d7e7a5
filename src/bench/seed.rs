//! Fill a store with N runs through the store's own API (no hand-written
//! rows), so the console can be measured against a store of that size.

use crate::engine::store::NewRun;
use anyhow::{Result, bail};
use clap::Args;
use futures::StreamExt;

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The store to fill: a SQLite path or a postgres:// URL (schema migrated first).
    #[arg(long)]
    pub store: String,
    /// Runs to create (pending, as if submitted while no pod was up).
    #[arg(long, default_value_t = 10_000)]
    pub runs: usize,
}

pub async fn run(a: SeedArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let store = crate::engine::store::open(&a.store).await?;
    let workflows = ["chat_reply", "fan_in", "slow_stream", "bench_trivial"];
    let started = std::time::Instant::now();
    let results: Vec<_> = futures::stream::iter(0..a.runs)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .create_run(NewRun {
                        workflow: workflows[i % workflows.len()].into(),
                        lane: if i % 2 == 0 { "sync" } else { "action" }.into(),
                        input: serde_json::json!({ "n": i }),
                        late_completion: Default::default(),
                        idempotency_key: Some(format!("seed-{i}")),
                        deadline_at_ms: None,
                        heartbeat_timeout_ms: None,
                        retries_left: 0,
                    })
                    .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let created = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|(_, new)| *new)
        .count();
    eprintln!(
        "seeded {created} new runs ({} asked) into {} in {:.1} s",
        a.runs,
        if a.store.contains("://") {
            crate::engine::store::redact_url(&a.store)
        } else {
            a.store.clone()
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
