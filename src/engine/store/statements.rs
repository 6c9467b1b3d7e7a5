//! What the store's writes share that is not tied to a backend, as ordinary
//! code: the SQL text both dialects run as is (with its fault-injection
//! variants, chosen here), the statements built from a dialect's fragment,
//! and the decisions a write makes from what it read: which states a
//! transition may leave, and which rejection a failed guarded write answers
//! with. The macro in `sql` runs them.

use super::{StoreError, TransitionCtx};
use crate::engine::metrics::Metrics;
use crate::engine::run::{RunState, allowed_sources};
use crate::faults::{self, Bug};

/// Create a run. Every run gets a deadline, at most `runs.max_deadline_ms`
/// from now (that setting's row, else its default): read in this statement,
/// so every pod caps alike. (`WHERE true`: SQLite's `INSERT ... SELECT ...
/// ON CONFLICT` needs it.)
pub(crate) const CREATE_RUN: &str = "INSERT INTO runs (id, workflow, lane, input, state, \
     epoch, late_completion, run_state, idempotency_key, deadline_at, created_at, updated_at, \
     heartbeat_timeout_ms, retries_left, family) \
     SELECT $1, $2, $3, $4, 'pending', 0, $5, '{}', $6, \
     CASE WHEN $7 IS NULL OR $7 > $8 + lim.ms THEN $8 + lim.ms ELSE $7 END, \
     $8, $8, $9, $10, $1 \
     FROM (SELECT COALESCE((SELECT value FROM settings WHERE name = $11), $12) \
     AS ms) lim WHERE true \
     ON CONFLICT (idempotency_key) DO NOTHING";

/// One row of the transition log.
pub(crate) const LOG_TRANSITION: &str = "INSERT INTO run_transitions (run_id, from_state, \
     to_state, epoch, pod, reason, late, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The claim's compare-and-set: only the owner we expect may be replaced,
/// and only a pending or running run may be claimed. That owner must not be
/// a live pod either (the same name can be a new incarnation that already
/// took its runs back): only a pod itself, or nobody, may take a run from a
/// registered pod. With the `claim_without_cas` fault, any owner goes.
pub(crate) fn claim_sql() -> &'static str {
    if faults::on(Bug::ClaimWithoutCas) {
        "UPDATE runs SET owner_pod = $2, epoch = epoch + 1, state = 'running', \
         updated_at = $4, heartbeat_at = $4 \
         WHERE id = $1 AND ($3 IS NULL OR $3 IS NOT NULL) \
         AND state IN ('pending', 'running') RETURNING epoch"
    } else {
        "UPDATE runs SET owner_pod = $2, epoch = epoch + 1, state = 'running', \
         updated_at = $4, heartbeat_at = $4 \
         WHERE id = $1 AND owner_pod IS NOT DISTINCT FROM $3 \
         AND ($3 IS NULL OR $3 = $2 OR NOT EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = $3)) \
         AND state IN ('pending', 'running') RETURNING epoch"
    }
}

/// The claim's purge: what older epochs' unfinished attempts streamed goes
/// (it will be streamed again); the chunks of each step's succeeded attempt
/// stay (that step never runs again). Legacy rows without an attempt belong
/// to no finished attempt. None: the `skip_purge` fault.
pub(crate) fn purge_sql() -> Option<&'static str> {
    if faults::on(Bug::SkipPurge) {
        None
    } else if faults::on(Bug::PurgeFinished) {
        Some("DELETE FROM chunks WHERE run_id = $1 AND epoch < $2")
    } else {
        Some(
            "DELETE FROM chunks WHERE run_id = $1 AND epoch < $2 \
             AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = chunks.run_id \
             AND s.node_id = chunks.node_id AND s.attempts = chunks.attempt \
             AND s.status = 'succeeded')",
        )
    }
}

/// The deadline pass: time out the running runs past their deadline by
/// `$2`, at `$1`, returning `id, epoch`. `skip_locked` is the dialect's
/// `SKIP_LOCKED`: rows another session holds are left for the next pass.
pub(crate) fn overdue_sql(skip_locked: &str) -> String {
    format!(
        "UPDATE runs SET state = 'timed_out', updated_at = $1, \
         error = COALESCE(error, 'run deadline passed (timed out by the reaper)') \
         WHERE state = 'running' AND deadline_at IS NOT NULL AND deadline_at < $2 \
         AND id IN (SELECT id FROM runs WHERE state = 'running' \
           AND deadline_at IS NOT NULL AND deadline_at < $2{skip_locked}) \
         RETURNING id, epoch"
    )
}

/// The janitor: mark lost, at `$1`, the running runs whose owner is gone
/// and that nobody resumed since `$2`, returning `id, epoch`. Orphaned
/// since: the owner's latest recorded death, or the run's last write if that
/// is later (or there is no death row). Never the last checkpoint alone: a
/// long step's checkpoint is old when its owner dies, and the run was not an
/// orphan until then. `skip_locked` as for [`overdue_sql`].
pub(crate) fn lost_sql(skip_locked: &str) -> String {
    format!(
        "UPDATE runs SET state = 'lost', updated_at = $1, \
         error = COALESCE(error, 'lost: its owner died and nobody resumed it') \
         WHERE state = 'running' AND updated_at < $2 \
         AND NOT EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = runs.owner_pod) \
         AND NOT EXISTS (SELECT 1 FROM pod_deaths d \
                         WHERE d.pod_id = runs.owner_pod AND d.detected_at >= $2) \
         AND id IN (SELECT id FROM runs WHERE state = 'running' AND updated_at < $2{skip_locked}) \
         RETURNING id, epoch"
    )
}

/// The states a transition to `to` may leave, as the JSON array the
/// guarded UPDATE reads. The `allow_lost_success` fault adds `lost ->
/// succeeded`; the `double_terminal` fault opens `succeeded -> failed`, only
/// for the write that fault makes (see the executor).
pub(crate) fn transition_sources(to: RunState, ctx: &TransitionCtx) -> String {
    let mut sources: Vec<&str> = allowed_sources(to).iter().map(|s| s.as_str()).collect();
    if to == RunState::Succeeded && faults::on(Bug::AllowLostSuccess) {
        sources.push("lost");
    }
    if to == RunState::Failed
        && ctx.reason == faults::DOUBLE_TERMINAL_REASON
        && faults::on(Bug::DoubleTerminal)
    {
        sources.push("succeeded");
    }
    serde_json::to_string(&sources).unwrap_or_else(|_| "[]".into())
}

/// Why a claim's compare-and-set matched no row: the run is terminal, its
/// expected owner is a live pod, or someone else owns it now. Counted.
pub(crate) fn claim_rejection(
    metrics: &Metrics,
    run_id: &str,
    from: RunState,
    expected: Option<&str>,
    found: Option<String>,
) -> StoreError {
    metrics.inc_rejected(from.as_str(), "running");
    if from.is_terminal() {
        StoreError::AlreadyTerminal {
            run_id: run_id.to_owned(),
            state: from,
            to: RunState::Running,
        }
    } else if found.as_deref() == expected {
        StoreError::OwnerAlive {
            run_id: run_id.to_owned(),
            owner: found.unwrap_or_default(),
        }
    } else {
        StoreError::ClaimLost {
            run_id: run_id.to_owned(),
            expected: expected.map(str::to_owned),
            found,
        }
    }
}

/// Why a guarded transition from `from` (at epoch `current`) to `to`
/// matched no row: fenced, already terminal, or not allowed. Counted,
/// except a cancel of a run already cancelled: an operator repeating
/// themselves, not a ghost.
pub(crate) fn transition_rejection(
    metrics: &Metrics,
    run_id: &str,
    from: RunState,
    to: RunState,
    current: i64,
    ctx: &TransitionCtx,
) -> StoreError {
    let fenced = ctx.expected_epoch.is_some_and(|e| e != current);
    let repeated_cancel = from == RunState::Cancelled && to == RunState::Cancelled && !fenced;
    if !repeated_cancel {
        metrics.inc_rejected(from.as_str(), to.as_str());
    }
    if fenced {
        metrics.inc_fenced("transition");
        StoreError::Fenced {
            run_id: run_id.to_owned(),
            held: ctx.expected_epoch.unwrap_or_default(),
            current,
            state: from,
        }
    } else if from.is_terminal() {
        if !repeated_cancel {
            metrics.ghost_rejected.inc();
        }
        StoreError::AlreadyTerminal {
            run_id: run_id.to_owned(),
            state: from,
            to,
        }
    } else {
        StoreError::IllegalTransition {
            run_id: run_id.to_owned(),
            from,
            to,
        }
    }
}

/// The fence every owner write passes: the run must still be `running` at
/// the epoch the writer holds (`held`). The `skip_fence` fault lets a stale
/// epoch pass (the run must still be running); claims are not fenced here
/// and stay CAS-guarded. Counted when it fences.
pub(crate) fn fence(
    metrics: &Metrics,
    run_id: &str,
    held: i64,
    current: i64,
    state: RunState,
    kind: &str,
) -> Result<(), StoreError> {
    let stale_ok = faults::on(Bug::SkipFence);
    if (current != held && !stale_ok) || state != RunState::Running {
        metrics.inc_fenced(kind);
        return Err(StoreError::Fenced {
            run_id: run_id.to_owned(),
            held,
            current,
            state,
        });
    }
    Ok(())
}
