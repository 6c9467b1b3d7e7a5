//! Side effects and step outputs: witnessed steps executed within their
//! retry budget and never after a later step (`executions_bounded`), and
//! downstream steps fed raw outputs (`raw_outputs_downstream`).

use super::{Evidence, Outcome, WitnessCall, downstream, not_applicable, pass_or_fail, witnessed};
use crate::client::StreamEvent;
use crate::engine::run::RunState;
use crate::engine::workflow::{REDACTED, StepKind, WorkflowRegistry};

/// Executions from the witness: each witnessed step at most max_retries + 1
/// times, never again once a step after it produced anything (a witness call
/// or a chunk a client saw), and at least once in a run that succeeded.
/// Cross-check: the engine's `effects` rows never count fewer executions
/// than the witness saw.
pub(super) fn executions_bounded(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    let any = ev.submitted.iter().any(|s| {
        reg.get(&s.workflow)
            .is_ok_and(|w| w.steps.iter().any(witnessed))
    });
    if !any {
        return not_applicable("no step of this scenario's workflows calls the witness");
    }
    let mut out = Vec::new();
    let mut run_ids: Vec<&str> = ev.submitted.iter().map(|s| s.run_id.as_str()).collect();
    for a in &ev.store {
        if !run_ids.contains(&a.run.id.as_str()) {
            run_ids.push(&a.run.id);
        }
    }
    for id in run_ids {
        let Some(wf) = ev.workflow_of(reg, id) else {
            continue;
        };
        let label = ev.label(id);
        let state = ev
            .final_state(id)
            .or_else(|| ev.account(id).map(|a| a.run.state));
        for step in wf.steps.iter().filter(|s| witnessed(s)) {
            let calls: Vec<&WitnessCall> = ev
                .witness
                .iter()
                .filter(|c| c.run_id == id && c.step == step.id)
                .collect();
            let n = i64::try_from(calls.len()).unwrap_or(i64::MAX);
            if n > step.max_attempts() {
                out.push(format!(
                    "{label} step {}: the witness saw {n} executions, max_retries + 1 = {} ({})",
                    step.id,
                    step.max_attempts(),
                    calls
                        .iter()
                        .map(|c| format!(
                            "{} attempt {} epoch {} at +{} ms",
                            c.pod, c.attempt, c.epoch, c.t_ms
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if n == 0 && state == Some(RunState::Succeeded) {
                out.push(format!(
                    "{label} step {}: the run succeeded, but the witness never saw the step's side effect",
                    step.id
                ));
            }
            // Never again once anything after it happened.
            let after = downstream(wf, &step.id);
            let after = &after;
            let later_witness = ev
                .witness
                .iter()
                .filter(|c| c.run_id == id && after.contains(c.step.as_str()))
                .map(|c| (c.t_ms, format!("the witness saw {} by {}", c.step, c.pod)));
            let later_chunks = ev
                .attachers
                .iter()
                .filter(|a| a.run_id == id)
                .flat_map(|a| {
                    a.events.iter().filter_map(move |(t, e)| match e {
                        StreamEvent::Chunk {
                            step: Some(s),
                            data,
                            ..
                        } if after.contains(s.as_str()) => {
                            Some((*t, format!("a client saw chunk {data:?} of {s}")))
                        }
                        _ => None,
                    })
                });
            let first_after = later_witness.chain(later_chunks).min_by_key(|x| x.0);
            if let Some((t0, what)) = first_after {
                let again: Vec<String> = calls
                    .iter()
                    .filter(|c| c.t_ms > t0)
                    .map(|c| {
                        format!(
                            "{} attempt {} epoch {} at +{} ms",
                            c.pod, c.attempt, c.epoch, c.t_ms
                        )
                    })
                    .collect();
                if !again.is_empty() {
                    out.push(format!(
                        "{label} step {}: executed again after it succeeded ({what} at +{t0} ms): {}",
                        step.id,
                        again.join(", ")
                    ));
                }
            }
            // Cross-check: the engine's own count.
            if let Some(acc) = ev.account(id) {
                let rows = acc.effects.iter().filter(|e| e.node_id == step.id).count();
                if rows < calls.len() {
                    out.push(format!(
                        "{label} step {}: the witness saw {} executions, the engine recorded {rows} \
                         (store's effects rows disagree)",
                        step.id,
                        calls.len()
                    ));
                }
            }
        }
    }
    pass_or_fail(out)
}

/// Store record: a step with predecessors ran on their raw outputs (no
/// redaction marker; a fan-in got every predecessor).
pub(super) fn raw_outputs_downstream(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    let mut out = Vec::new();
    let mut judged = 0;
    for a in &ev.store {
        let Ok(wf) = reg.get(&a.run.workflow) else {
            continue;
        };
        for step in wf.steps.iter().filter(|s| !s.after.is_empty()) {
            let Some(raw) = a.raw.get(&step.id) else {
                continue;
            };
            judged += 1;
            if raw.carries_redacted {
                out.push(format!(
                    "{} step {}: its raw output carries {REDACTED}: a predecessor's redacted copy \
                     reached it (store record)",
                    ev.label(&a.run.id),
                    step.id
                ));
            }
            if matches!(step.kind, StepKind::FanIn) {
                for p in &step.after {
                    if !raw.present.contains(p) {
                        out.push(format!(
                            "{} fan-in {}: predecessor {p} arrived as nothing (store record)",
                            ev.label(&a.run.id),
                            step.id
                        ));
                    }
                }
            }
        }
    }
    if judged == 0 {
        return not_applicable("no step with predecessors ran");
    }
    pass_or_fail(out)
}
