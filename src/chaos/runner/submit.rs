//! Submitting the workload: each planned run at its moment, to its planned
//! pod or any live one, retried through outages; an early attacher spawned
//! for each run that asks for one.

use super::{Shared, attach, lock};
use crate::chaos::checks::AttacherLog;
use crate::chaos::scenario::{AttachKind, Plan, PlannedRun};
use crate::client::{ClientError, PodClient};
use crate::pod::wire::{SubmitRequest, SubmitResponse};
use anyhow::Result;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Submit every planned run at its moment (in the order of their moments)
/// and record it; returns the early attachers, still following.
pub(super) async fn workload(
    shared: &Arc<Shared>,
    plan: &Plan,
    quiet: Duration,
) -> Result<Vec<JoinHandle<AttacherLog>>> {
    let mut early = Vec::new();
    let mut runs_sorted = plan.runs.clone();
    runs_sorted.sort_by_key(|r| r.submit_at_ms);
    for r in &runs_sorted {
        let due = shared.until_workload_ms(r.submit_at_ms);
        tokio::time::sleep(due).await;
        if shared.target.is_some() {
            // The runner chooses the id (docs/targets.md).
            let id = uuid::Uuid::now_v7().to_string();
            match super::target::submit(shared, r, &id, quiet).await {
                Ok(pod) => {
                    lock(&shared.names).insert(r.name.clone(), id.clone());
                    shared.history.record(
                        "submit",
                        json!({ "run": r.name, "run_id": id, "workflow": r.workflow, "pod": pod }),
                    );
                }
                Err(e) => shared.blind(format!("submitting {}: {e}", r.name)),
            }
            continue;
        }
        let req = SubmitRequest {
            workflow: r.workflow.clone(),
            input: r.input.clone(),
            idempotency_key: Some(format!("{}-{}", r.name, plan.seed)),
        };
        let sub = match submit(shared, r, &req, quiet).await? {
            Ok(s) => s,
            Err(e) => {
                shared.blind(format!(
                    "submitting {}: {}",
                    r.name,
                    e.map_or_else(|| "no live pod".to_owned(), |e| e.to_string())
                ));
                continue;
            }
        };
        lock(&shared.names).insert(r.name.clone(), sub.run.id.clone());
        shared.history.record(
            "submit",
            json!({ "run": r.name, "run_id": sub.run.id, "workflow": r.workflow, "pod": r.pod }),
        );
        if r.attach.contains(&AttachKind::Early) {
            early.push(attach::early(
                shared,
                &r.name,
                &sub.run.id,
                quiet + Duration::from_secs(30),
            ));
        }
    }
    Ok(early)
}

/// Submit one run: the planned pod first; if a fault took it down
/// meanwhile, any live pod (the idempotency key makes a resubmission the
/// same run). Returns the acknowledgement, or the last error (None: no live
/// pod to ask).
async fn submit(
    shared: &Shared,
    r: &PlannedRun,
    req: &SubmitRequest,
    quiet: Duration,
) -> Result<Result<SubmitResponse, Option<ClientError>>> {
    let res = on_live_pods(shared, &r.pod, quiet, |url: String| async move {
        match PodClient::new(&url) {
            Ok(c) => c.submit(req).await.map_err(Some),
            Err(e) => Err(Some(e)),
        }
    })
    .await;
    Ok(res.map(|(_, s)| s).map_err(Option::flatten))
}

/// Call `f` with a pod's URL until it succeeds: the `planned` pod while it
/// is live, else each live pod in turn. A store outage or freeze can make
/// every pod refuse for a while: keep trying for `quiet` (and ten tries at
/// least) before giving up. Returns the pod that answered and its answer,
/// or the last error (None: no live pod to ask).
pub(super) async fn on_live_pods<T, E, F, Fut>(
    shared: &Shared,
    planned: &str,
    quiet: Duration,
    f: F,
) -> Result<(String, T), Option<E>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last_err = None;
    let give_up = Instant::now() + quiet;
    for attempt in 0.. {
        if attempt >= 10 && Instant::now() > give_up {
            break;
        }
        let live = shared.live();
        let to = live
            .iter()
            .find(|(id, _)| id == planned)
            .or(live.get(attempt % live.len().max(1)))
            .cloned();
        let Some((pod, url)) = to else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        match f(url).await {
            Ok(v) => return Ok((pod, v)),
            Err(e) => {
                last_err = Some(e);
                shared.refresh_live().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last_err)
}
