//! A slow consumer (`consumer_isolated`): one run's client on a slow link
//! costs the pods serving it a bounded amount of memory, and no other
//! run's stream slows down. Judged on what the engine cannot write: the
//! pods' resident memory as the host's kernel counts it (the runner's
//! samples), and the times the other runs' clients received their chunks,
//! against the pacing their workflow definitions give.

use super::{Evidence, FiredFault, Outcome, not_applicable};
use crate::chaos::scenario::AttachKind;
use crate::client::StreamEvent;
use crate::engine::workflow::{StepKind, WorkflowRegistry};
use std::collections::BTreeMap;

/// What a chunk may come later than its emit step's interval says, for a
/// run the slow consumer must not slow down: a loaded two-core machine's
/// scheduling and a store commit, with room to spare; a pod whose tail or
/// store is starved by a slow consumer stalls its other streams far longer.
const SLACK_MS: u64 = 1500;

/// A pod's highest memory sample during a fault: (KiB, runner ms).
type Peak = (u64, u64);

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(super) fn consumer_isolated(ev: &Evidence, workflows: &WorkflowRegistry) -> Outcome {
    let faults: Vec<&FiredFault> = ev.faults.iter().filter(|f| f.on_client_link()).collect();
    if faults.is_empty() {
        return not_applicable("no client link was hurt (no slow consumer)");
    }
    let mut problems = Vec::new();
    // (a) Memory: every pod the fault hit, its growth over its baseline.
    let bound_kib = ev.memory_bound_mib.saturating_mul(1024);
    for f in &faults {
        let who = f
            .run_id
            .as_deref()
            .map_or_else(|| "a run".to_owned(), |id| ev.label(id));
        let mut per_pod: BTreeMap<&str, (Option<u64>, Option<Peak>)> = BTreeMap::new();
        for m in ev.memory.iter().filter(|m| m.index == f.index) {
            let e = per_pod.entry(m.pod.as_str()).or_default();
            if m.phase == "baseline" {
                e.0 = Some(m.rss_kib);
            } else if e.1.is_none_or(|(top, _)| m.rss_kib > top) {
                e.1 = Some((m.rss_kib, m.t_ms));
            }
        }
        if per_pod.is_empty() {
            problems.push(format!(
                "fault {} ({} on {who}'s client link): the runner read no pod's memory, so \
                 nothing shows it stayed bounded",
                f.index,
                f.action.as_str()
            ));
        }
        for (pod, (base, top)) in per_pod {
            let (Some(base), Some((top, t))) = (base, top) else {
                problems.push(format!(
                    "fault {}: {pod}'s memory has no baseline or no sample during the fault",
                    f.index
                ));
                continue;
            };
            let grew = top.saturating_sub(base);
            if grew > bound_kib {
                problems.push(format!(
                    "{pod}'s resident memory grew {} over its baseline of {} (to {} at +{t} ms) \
                     while {who}'s client link was slowed (fault {}, {}): above the {} MiB bound",
                    mib(grew),
                    mib(base),
                    mib(top),
                    f.index,
                    f.action.as_str(),
                    ev.memory_bound_mib
                ));
            }
        }
    }
    // (b) Other runs: the gaps between consecutive chunks of one emit step
    // that overlap a fault, against the step's interval.
    let slowed: Vec<&str> = faults.iter().filter_map(|f| f.run_id.as_deref()).collect();
    let windows: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| (f.t_ms, f.t_ms + f.duration_ms.unwrap_or(0)))
        .collect();
    let mut judged = 0usize;
    for a in ev
        .attachers
        .iter()
        .filter(|a| a.attacher == AttachKind::Early && !slowed.contains(&a.run_id.as_str()))
    {
        let Some(wf) = ev.workflow_of(workflows, &a.run_id) else {
            continue;
        };
        let interval = |step: &str| {
            wf.steps
                .iter()
                .find(|s| s.id == step)
                .and_then(|s| match s.kind {
                    StepKind::Emit { interval_ms, .. } => Some(interval_ms),
                    _ => None,
                })
        };
        let mut worst: Option<(u64, u64, u64, String)> = None;
        let mut last: Option<(u64, i64, Option<String>)> = None;
        for (t, e) in &a.events {
            match e {
                StreamEvent::Chunk { epoch, step, .. } => {
                    if let Some((t0, e0, s0)) = &last
                        && *e0 == *epoch
                        && s0.is_some()
                        && s0 == step
                        && windows.iter().any(|(from, to)| *t > *from && *t0 < *to)
                        && let Some(iv) = step.as_deref().and_then(interval)
                    {
                        judged += 1;
                        let gap = t - t0;
                        if gap > iv + SLACK_MS && worst.as_ref().is_none_or(|w| gap > w.0) {
                            worst = Some((gap, *t0, iv, step.clone().unwrap_or_default()));
                        }
                    }
                    last = Some((*t, *epoch, step.clone()));
                }
                // A reset or a reconnection: the pacing starts again.
                _ => last = None,
            }
        }
        if let Some((gap, t0, iv, step)) = worst {
            problems.push(format!(
                "{}: its client waited {gap} ms for the next chunk of step {step} after +{t0} ms \
                 while another run's client link was slowed; the step emits every {iv} ms \
                 (allowed {} ms)",
                ev.label(&a.run_id),
                iv + SLACK_MS
            ));
        }
    }
    if !problems.is_empty() {
        return Outcome {
            status: super::Status::Fail,
            evidence: problems,
        };
    }
    if judged == 0 {
        return not_applicable(
            "no other run's client received consecutive chunks of a step while a client link \
             was slowed",
        );
    }
    Outcome {
        status: super::Status::Pass,
        evidence: Vec::new(),
    }
}
