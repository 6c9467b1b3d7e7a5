//! Waiting for quiet and the final reads: no run in flight (or the quiet
//! bound passed), then the pods' metrics, the API's answer for every
//! submitted run and the store's account of every run and death, all
//! recorded in the history.

use super::{Shared, lock};
use crate::chaos::checks::{RawFacts, StepFacts, StoreAccount};
use crate::client::PodClient;
use crate::engine::run::RunRecord;
use crate::engine::store::{RunFilter, Store, StoreError};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the runner waits after the cluster went quiet before its final
/// reads (late attachers, API answers, the store's account).
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// Every run the store holds, read as [`Shared::observe`] does (None: the
/// store did not answer by `until`, and the runner is blind).
async fn all_runs(
    shared: &Shared,
    store: &dyn Store,
    what: &str,
    until: Instant,
) -> Option<Vec<RunRecord>> {
    let filter = RunFilter {
        limit: Some(100_000),
        ..Default::default()
    };
    shared
        .observe(what, until, || store.list_runs(&filter))
        .await
}

/// Wait until no run is in flight, for at most `quiet` (a note says when
/// runs were still in flight; a store that cannot be read makes the runner
/// blind).
pub(super) async fn for_quiet(shared: &Shared, quiet: Duration) {
    let Some(store) = shared.store.as_deref() else {
        return target_quiet(shared, quiet).await;
    };
    let quiet_until = Instant::now() + quiet;
    loop {
        let Some(all) = all_runs(
            shared,
            store,
            "listing runs while waiting for quiet",
            quiet_until,
        )
        .await
        else {
            break;
        };
        let in_flight = all.iter().filter(|r| !r.state.is_terminal()).count();
        if in_flight == 0 {
            break;
        }
        if Instant::now() > quiet_until {
            shared.note(format!(
                "{in_flight} runs still in flight after the {} quiet bound",
                crate::human::duration(quiet)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A target: ask its status API for every submitted run until none is in
/// flight (or the bound passed). Each change in a run's answer is an
/// `api_run` line: what a client polling it saw.
async fn target_quiet(shared: &Shared, quiet: Duration) {
    let quiet_until = Instant::now() + quiet;
    let runs: Vec<(String, String)> = lock(&shared.names)
        .iter()
        .map(|(name, id)| (name.clone(), id.clone()))
        .collect();
    let mut seen: BTreeMap<String, crate::engine::run::RunState> = BTreeMap::new();
    loop {
        let mut in_flight = Vec::new();
        for (name, id) in &runs {
            match super::target::state(shared, id).await {
                Ok(st) => {
                    if seen.get(id) != Some(&st) {
                        seen.insert(id.clone(), st);
                        shared
                            .history
                            .record("api_run", json!({ "run_id": id, "state": st }));
                    }
                    if !st.is_terminal() {
                        in_flight.push(format!("{name} ({st})"));
                    }
                }
                Err(e) => in_flight.push(format!("{name} (no answer: {e})")),
            }
        }
        if in_flight.is_empty() {
            return;
        }
        if Instant::now() > quiet_until {
            shared.note(format!(
                "{} runs still in flight after the {} quiet bound: {}",
                in_flight.len(),
                crate::human::duration(quiet),
                in_flight.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scrape every live pod's `vigil_*` counters into the history (a target
/// serves none).
pub(super) async fn scrape_metrics(shared: &Shared, when: &str) {
    if shared.target.is_some() {
        return;
    }
    for (pod, url) in shared.live() {
        let Ok(resp) = shared
            .http
            .get(format!("{url}metrics"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        let samples: BTreeMap<String, f64> = text
            .lines()
            .filter(|l| l.starts_with("vigil_") && !l.contains("_bucket"))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                let v: f64 = v.parse().ok()?;
                (v != 0.0).then(|| (k.to_owned(), v))
            })
            .collect();
        shared.history.record(
            "metrics",
            json!({ "when": when, "pod": pod, "samples": samples }),
        );
    }
}

/// What the API says of every run the clients submitted, then the store's
/// account (for cross-checks only).
pub(super) async fn final_reads(shared: &Shared) {
    let names = lock(&shared.names).clone();
    for id in names.values() {
        api_state(shared, id).await;
    }
    // A target's store is its own: nothing to cross-check against.
    let Some(store) = shared.store.as_deref() else {
        return;
    };
    let until = Instant::now() + Duration::from_secs(30);
    record_store_accounts(shared, store, until).await;
}

/// Ask the API (any live pod) for a run's state; record the answer.
async fn api_state(shared: &Shared, id: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < until {
        let answer = if shared.target.is_some() {
            super::target::state(shared, id).await
        } else {
            vigil_state(shared, id).await
        };
        match answer {
            Ok(st) => {
                shared
                    .history
                    .record("api_run", json!({ "run_id": id, "state": st }));
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.blind(format!("the API never answered for run {id}: {last}"));
}

/// Run `id`'s state as the first live Vigil pod that answers says it (each
/// asked for at most 3 s); the last error when none did.
async fn vigil_state(shared: &Shared, id: &str) -> Result<crate::engine::run::RunState, String> {
    let mut last = "no live pod to ask".to_owned();
    for (_, url) in shared.live() {
        let Ok(client) = PodClient::new(&url) else {
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(3), client.run(id)).await {
            Ok(Ok(detail)) => return Ok(detail.run.state),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 3 s".into(),
        }
    }
    Err(last)
}

/// Record what the store says of every run (and every death) in the history.
async fn record_store_accounts(shared: &Shared, store: &dyn Store, until: Instant) {
    let Some(all) = all_runs(
        shared,
        store,
        "reading the runs for the store's account",
        until,
    )
    .await
    else {
        return;
    };
    for run in all {
        let Some(account) = shared
            .observe("reading a run's records", until, || {
                store_account(store, run.clone())
            })
            .await
        else {
            return;
        };
        for t in &account.transitions {
            shared.history.record_at(
                t.at_ms,
                "transition",
                json!({ "run_id": run.id, "from": t.from, "to": t.to, "epoch": t.epoch, "pod": t.pod, "reason": t.reason }),
            );
        }
        for c in &account.claims {
            shared.history.record_at(
                c.at_ms,
                "claim",
                json!({ "run_id": run.id, "from": c.from_pod, "to": c.to_pod, "epoch": c.epoch }),
            );
        }
        shared
            .history
            .record("store_run", json!({ "account": account }));
    }
    let Some(deaths) = shared
        .observe("reading the pod deaths", until, || {
            store.liveness().deaths(10_000)
        })
        .await
    else {
        return;
    };
    for d in &deaths {
        shared
            .history
            .record_at(d.detected_at_ms, "death", json!({ "death": d }));
    }
}

async fn store_account(store: &dyn Store, run: RunRecord) -> Result<StoreAccount, StoreError> {
    let steps = store.steps(&run.id).await?;
    let nodes: Vec<String> = steps.iter().map(|s| s.node_id.clone()).collect();
    let raw = store.step_outputs_raw(&run.id, &nodes).await?;
    Ok(StoreAccount {
        transitions: store.transitions(&run.id).await?,
        claims: store.claims(&run.id).await?,
        chunks: store.chunks(&run.id).await?,
        effects: store.effects(&run.id).await?,
        steps: steps
            .iter()
            .map(|s| StepFacts {
                node_id: s.node_id.clone(),
                status: s.status,
                attempts: s.attempts,
                updated_at_ms: s.updated_at_ms,
            })
            .collect(),
        raw: raw
            .iter()
            .map(|(k, v)| (k.clone(), RawFacts::of(v)))
            .collect(),
        run,
    })
}
