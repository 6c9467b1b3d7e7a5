//! The runner's side of a foreign target (docs/targets.md): what it learns
//! without the target's store. Who runs a run is the pod of its latest
//! witness call (else the worker it was submitted to); whether a run ended
//! is what the workers' status API says.

use super::Shared;
use crate::chaos::history::Event;
use crate::chaos::scenario::PlannedRun;
use crate::engine::run::RunState;
use serde_json::Value;
use std::time::Duration;

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The pod that last executed a step of run `id` as the witness saw it,
/// else the worker the run was submitted to.
pub(super) fn owner(shared: &Shared, id: &str) -> Option<String> {
    owner_in(shared, &shared.history.snapshot(), id)
}

/// [`owner`], read from `events` (one snapshot of the history).
fn owner_in(shared: &Shared, events: &[Event], id: &str) -> Option<String> {
    let by_witness = events
        .iter()
        .rev()
        .find(|e| e.kind == "witness" && str_of(&e.data, "run_id") == Some(id))
        .and_then(|e| str_of(&e.data, "pod"))
        // A worker that calls itself by a name that is no pod of the
        // scenario is not believed.
        .filter(|p| shared.pod_ids.iter().any(|x| x == p));
    let by_submit = || {
        events
            .iter()
            .find(|e| e.kind == "submit" && str_of(&e.data, "run_id") == Some(id))
            .and_then(|e| str_of(&e.data, "pod"))
    };
    by_witness.or_else(by_submit).map(str::to_owned)
}

/// Whether the witness saw step `step` of run `id`.
pub(super) fn witnessed(shared: &Shared, id: &str, step: &str) -> bool {
    shared.history.snapshot().iter().any(|e| {
        e.kind == "witness"
            && str_of(&e.data, "run_id") == Some(id)
            && str_of(&e.data, "step") == Some(step)
    })
}

/// Run `id`'s state as the first live worker that answers says it (each
/// asked for at most 3 s); the last error when none did.
pub(super) async fn state(shared: &Shared, id: &str) -> Result<RunState, String> {
    let mut last = "no live worker to ask".to_owned();
    for (pod, url) in shared.live() {
        match tokio::time::timeout(Duration::from_secs(3), shared.api.run(&url, id)).await {
            Ok(Ok(Some(r))) => return Ok(r.state),
            Ok(Ok(None)) => last = format!("{pod} does not know run {id} (404)"),
            Ok(Err(e)) => last = format!("{pod}: {}", crate::errors::report(&e)),
            Err(_) => last = format!("{pod}: no answer within 3 s"),
        }
    }
    Err(last)
}

/// The submitted runs `pod` was executing as the fault hits: those whose
/// latest witness call came from it (or, with none yet, that were submitted
/// to it). From the history alone, so a fault fires within milliseconds of
/// its trigger, not after a status read per run; a run that had already
/// ended is harmless here (`death_detected` asks whether it ended).
pub(super) fn owned(shared: &Shared, pod: &str) -> Vec<String> {
    let ids: Vec<String> = super::lock(&shared.names).values().cloned().collect();
    let events = shared.history.snapshot();
    let mut out: Vec<String> = ids
        .into_iter()
        .filter(|id| owner_in(shared, &events, id).as_deref() == Some(pod))
        .collect();
    out.sort();
    out
}

/// Submit one run with the runner's id: the planned worker first, any live
/// one after a failure (the same id is the same run), for up to `quiet`.
/// Returns the worker that took it.
pub(super) async fn submit(
    shared: &Shared,
    r: &PlannedRun,
    id: &str,
    quiet: Duration,
) -> Result<String, String> {
    super::submit::on_live_pods(shared, &r.pod, quiet, |url: String| async move {
        shared
            .api
            .submit(&url, id, &r.workflow, &r.input)
            .await
            .map_err(|e| crate::errors::report(&e))
    })
    .await
    .map(|(pod, ())| pod)
    .map_err(|e| e.unwrap_or_else(|| "no live worker".to_owned()))
}
