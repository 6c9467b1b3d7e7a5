//! Streams against the workflow definition: what each attacher holds at the
//! end, chunk by chunk, once and in order (`stream_exactly_once`).

use super::{
    Evidence, Outcome, downstream, expected_chunks, kind_name, not_applicable, pass_or_fail,
};
use crate::chaos::scenario::AttachKind;
use crate::client::StreamEvent;
use crate::engine::run::RunState;
use crate::engine::workflow::{StepDef, WorkflowRegistry};

/// What an attacher holds at the end: chunk events with resets applied.
pub(super) fn held(events: &[(u64, StreamEvent)]) -> (Vec<HeldChunk>, usize) {
    let mut held: Vec<HeldChunk> = Vec::new();
    let mut discarded = 0;
    for (_, e) in events {
        match e {
            StreamEvent::Chunk {
                epoch,
                step,
                attempt,
                data,
                ..
            } => held.push(HeldChunk {
                epoch: *epoch,
                step: step.clone(),
                attempt: *attempt,
                data: data.clone(),
            }),
            StreamEvent::Reset { epoch, keep } => {
                let before = held.len();
                held.retain(|c| {
                    crate::client::keeps(*epoch, keep, c.epoch, c.step.as_deref(), c.attempt)
                });
                discarded += before - held.len();
            }
            StreamEvent::End { .. } => {}
        }
    }
    (held, discarded)
}

#[derive(Debug, Clone)]
pub(super) struct HeldChunk {
    pub(super) epoch: i64,
    pub(super) step: Option<String>,
    pub(super) attempt: Option<i64>,
    pub(super) data: String,
}

/// Each attacher's stream against the workflow definition: a run that
/// succeeded streamed every chunk of every emit step exactly once, in
/// order; any other run a prefix of each, no chunk twice.
pub(super) fn stream_exactly_once(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    if ev.attachers.is_empty() {
        return not_applicable("no client attached to a stream in this scenario");
    }
    let mut out = Vec::new();
    let mut judged = 0;
    for a in &ev.attachers {
        let who = format!(
            "{} attacher of {}",
            kind_name(a.attacher),
            ev.label(&a.run_id)
        );
        if let Some(e) = &a.error {
            out.push(format!("{who}: {e}"));
            continue;
        }
        let Some(wf) = ev.workflow_of(reg, &a.run_id) else {
            out.push(format!("{who}: the run's workflow is unknown"));
            continue;
        };
        let end = a.events.iter().find_map(|(_, e)| match e {
            StreamEvent::End { state, .. } => Some(*state),
            _ => None,
        });
        let Some(end) = end else {
            out.push(format!("{who}: the stream never sent its end event"));
            continue;
        };
        judged += 1;
        let (held, discarded) = held(&a.events);
        if a.attacher == AttachKind::Late && discarded > 0 {
            out.push(format!(
                "{who}: was replayed {discarded} chunks that a reset then discarded (the dead \
                 owner's unfinished output was not purged on resume)"
            ));
        }
        let emits: Vec<(&StepDef, Vec<String>)> = wf
            .steps
            .iter()
            .filter_map(|s| expected_chunks(s).map(|c| (s, c)))
            .collect();
        let labelled = held.iter().all(|c| c.step.is_some());
        if labelled {
            // Per step: exactly (succeeded) or a prefix (otherwise).
            for c in &held {
                let s = c.step.as_deref().unwrap_or_default();
                if !emits.iter().any(|(d, _)| d.id == s) {
                    out.push(format!(
                        "{who}: holds chunk {:?} of {s:?}, which is no emit step of {}",
                        c.data, wf.name
                    ));
                    break;
                }
            }
            for (step, want) in &emits {
                let got: Vec<&str> = held
                    .iter()
                    .filter(|c| c.step.as_deref() == Some(step.id.as_str()))
                    .map(|c| c.data.as_str())
                    .collect();
                compare(
                    &mut out,
                    &who,
                    &step.id,
                    &got,
                    want,
                    end == RunState::Succeeded,
                );
            }
            // Order between steps: a step's chunks come after all of its
            // predecessors' chunks.
            for (i, c) in held.iter().enumerate() {
                let Some(s) = c.step.as_deref() else { continue };
                if let Some(later) = held[..i].iter().find(|p| {
                    p.step
                        .as_deref()
                        .is_some_and(|ps| downstream(wf, s).contains(ps))
                }) {
                    out.push(format!(
                        "{who}: chunk {:?} of {s} arrived after chunk {:?} of {}, which runs after {s}",
                        c.data,
                        later.data,
                        later.step.as_deref().unwrap_or("?")
                    ));
                    break;
                }
            }
        } else {
            // No step labels (a server older than the stream model): the
            // whole stream against the emit steps in definition order.
            let want: Vec<String> = emits.iter().flat_map(|(_, c)| c.clone()).collect();
            let got: Vec<&str> = held.iter().map(|c| c.data.as_str()).collect();
            compare(
                &mut out,
                &who,
                "the stream",
                &got,
                &want,
                end == RunState::Succeeded,
            );
        }
    }
    if judged == 0 && out.is_empty() {
        return not_applicable("no attacher saw its stream end");
    }
    pass_or_fail(out)
}

fn compare(
    out: &mut Vec<String>,
    who: &str,
    what: &str,
    got: &[&str],
    want: &[String],
    whole: bool,
) {
    let first_diff = got.iter().zip(want).position(|(g, w)| g != w);
    if let Some(i) = first_diff {
        out.push(format!(
            "{who}: {what}: chunk {i} is {:?}, the workflow says {:?} ({} held, {} expected)",
            got[i],
            want[i],
            got.len(),
            want.len()
        ));
    } else if got.len() > want.len() {
        out.push(format!(
            "{who}: {what}: holds {} chunks, the workflow emits {}; extra from {:?} on",
            got.len(),
            want.len(),
            got[want.len()]
        ));
    } else if whole && got.len() < want.len() {
        out.push(format!(
            "{who}: {what}: holds {} of {} chunks of a run that succeeded; missing {}",
            got.len(),
            want.len(),
            missing_list(&want[got.len()..])
        ));
    }
}

fn missing_list(m: &[String]) -> String {
    let shown: Vec<String> = m.iter().take(5).map(|s| format!("{s:?}")).collect();
    if m.len() > 5 {
        format!("{} and {} more", shown.join(", "), m.len() - 5)
    } else {
        shown.join(", ")
    }
}
