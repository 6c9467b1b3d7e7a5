//! Outcomes, explained (`outcomes_explained`): every other check is a
//! safety property, and a system that failed every run at the first fault
//! would pass them all. This one asks whether a run that should have
//! succeeded did.
//!
//! Which runs must succeed is decided from evidence the engine cannot
//! write: the workflow definition (each step's failure schedule, its
//! `max_retries`, the run's deadline) and the fault schedule (which faults
//! hit the run while it was in flight, as the runner fired them). A fault
//! that hit a run (its owner killed, paused or cut off, the run's own row,
//! or the whole store) may spend at most one attempt of the step it
//! interrupted. So a run must succeed when, for every step, the attempts
//! its failure schedule needs plus one per fault that hit the run fit in
//! the step's budget, and no step fails permanently. Any other ending must
//! be explained: a failure the definition or the budget allows, a timeout
//! seen at or after the run's deadline, or a timeout or a loss of a run a
//! fault hit (the reaper and the janitor act on hurt runs; whether they
//! were right to is `no_healthy_reaped`'s question).

use super::{Evidence, FiredFault, Outcome, not_applicable, pass_or_fail};
use crate::chaos::scenario::Action;
use crate::engine::run::RunState;
use crate::engine::workflow::{ErrorClass, StepDef, Workflow, WorkflowRegistry};

pub(super) fn outcomes_explained(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    if ev.submitted.is_empty() {
        return not_applicable("no run was submitted");
    }
    let mut out = Vec::new();
    for s in &ev.submitted {
        let Some(wf) = ev.workflow_of(reg, &s.run_id) else {
            continue;
        };
        // A run still in flight, or never answered for, is terminal_once's
        // finding.
        let Some(end) = ev.final_state(&s.run_id).filter(|st| st.is_terminal()) else {
            continue;
        };
        let ended_at = ev
            .seen_states(&s.run_id)
            .iter()
            .find(|(_, st, _)| st.is_terminal())
            .map_or(u64::MAX, |(t, _, _)| *t);
        let hits: Vec<&FiredFault> = ev
            .faults
            .iter()
            .filter(|f| f.t_ms >= s.t_ms && f.t_ms <= ended_at && hit(f, &s.run_id))
            .collect();
        let allowed = may_fail(wf, hits.len());
        let past_deadline = wf
            .deadline_ms
            .is_some_and(|d| ended_at >= s.t_ms.saturating_add(d));
        let explained = match end {
            RunState::Succeeded => true,
            RunState::Failed => allowed.is_some(),
            RunState::TimedOut => allowed.is_some() || past_deadline || !hits.is_empty(),
            RunState::Lost => allowed.is_some() || !hits.is_empty(),
            _ => false,
        };
        if explained {
            continue;
        }
        let error = ev
            .attachers
            .iter()
            .filter(|a| a.run_id == s.run_id)
            .flat_map(|a| a.events.iter())
            .find_map(|(_, e)| match e {
                crate::client::StreamEvent::End { error, .. } => error.clone(),
                _ => None,
            })
            .or_else(|| ev.account(&s.run_id).and_then(|a| a.run.error.clone()))
            .unwrap_or_else(|| "no error given".into());
        out.push(format!(
            "{}: ended {end} ({error}), but workflow {} had to succeed: {}; {}",
            ev.label(&s.run_id),
            wf.name,
            budget_text(wf, hits.len(), &error),
            match hits.len() {
                0 => "no fault hit it".to_owned(),
                n => format!(
                    "{n} fault{} hit it ({}), each allowed one attempt of the step it interrupted",
                    if n == 1 { "" } else { "s" },
                    hits.iter()
                        .map(|f| format!(
                            "fault {} {} at +{} ms",
                            f.index,
                            f.action.as_str(),
                            f.t_ms
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        ));
    }
    pass_or_fail(out)
}

/// Whether fault `f` hit run `id`: its owner (the runs the target pod
/// owned as it fired), its own row or stall, or the whole store (a store
/// fault, a link fault on every pod's store link, SQLite's write lock held
/// by the runner).
fn hit(f: &FiredFault, id: &str) -> bool {
    if matches!(
        f.action,
        Action::Restart | Action::Switch | Action::LateComplete
    ) {
        return false;
    }
    if f.on_client_link() {
        // A client's link: the run itself goes on.
        return false;
    }
    let store_wide = f.action.on_store()
        || (f.action.is_link() || f.action == Action::WriteLock) && f.pod.is_none();
    store_wide || f.owned.iter().any(|o| o == id) || f.run_id.as_deref() == Some(id)
}

/// Why a run of `wf` hit by `hits` faults may end other than succeeded,
/// or None when it must succeed.
fn may_fail(wf: &Workflow, hits: usize) -> Option<String> {
    let hits = i64::try_from(hits).unwrap_or(i64::MAX);
    for step in &wf.steps {
        if step
            .fail
            .as_ref()
            .is_some_and(|f| f.first > 0 && f.class == ErrorClass::Permanent)
        {
            return Some(format!("step {} fails permanently", step.id));
        }
        if needs(step).saturating_add(hits) > step.max_attempts() {
            return Some(format!("step {} may exhaust its budget", step.id));
        }
    }
    None
}

/// The attempts `step`'s failure schedule needs before it succeeds.
fn needs(step: &StepDef) -> i64 {
    step.fail.as_ref().map_or(1, |f| i64::from(f.first) + 1)
}

/// The budget arithmetic of the step the run's error names (`step X:`),
/// else of the step that needs the most of its budget.
fn budget_text(wf: &Workflow, hits: usize, error: &str) -> String {
    let hits = i64::try_from(hits).unwrap_or(i64::MAX);
    let named = wf
        .steps
        .iter()
        .find(|s| error.contains(&format!("step {}:", s.id)));
    wf.steps
        .iter()
        .filter(|s| named.is_none_or(|n| n.id == s.id))
        .map(|s| (s.max_attempts() - needs(s) - hits, s, needs(s)))
        .min_by_key(|(room, _, _)| *room)
        .map_or_else(
            || "it has no step".to_owned(),
            |(_, s, needs)| {
                format!(
                    "step {} needs {needs} attempt{} by its definition, +{hits} for faults, of {} allowed",
                    s.id,
                    if needs == 1 { "" } else { "s" },
                    s.max_attempts()
                )
            },
        )
}
