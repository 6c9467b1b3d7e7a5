//! The checkers: one per invariant of FIELD-NOTES, each deciding pass or
//! fail from the store's records and the runner's history, with evidence.

use super::scenario::{Action, AttachKind, CheckName};
use crate::client::StreamEvent;
use crate::engine::liveness::Death;
use crate::engine::run::{Chunk, RunRecord, RunState, StepRecord, StepStatus, TransitionRecord};
use crate::engine::store::{ClaimRecord, EffectRecord};
use crate::engine::workflow::{REDACTED, StepKind, WorkflowRegistry};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Everything the store says about one run, after the cluster went quiet.
#[derive(Debug, Clone)]
pub struct RunEvidence {
    pub run: RunRecord,
    pub transitions: Vec<TransitionRecord>,
    pub claims: Vec<ClaimRecord>,
    pub chunks: Vec<Chunk>,
    pub effects: Vec<EffectRecord>,
    pub steps: Vec<StepRecord>,
    pub raw: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttacherLog {
    pub run_name: String,
    pub run_id: String,
    pub kind: AttachKind,
    pub events: Vec<StreamEvent>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FiredFault {
    pub index: usize,
    pub action: Action,
    pub pod: Option<String>,
    pub run_id: Option<String>,
    pub at_ms: i64,
    /// Runs the target pod owned when the fault hit.
    pub owned: Vec<String>,
    /// For a pause: how long.
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: CheckName,
    pub status: Status,
    pub evidence: Vec<String>,
}

pub struct Evidence<'a> {
    pub runs: &'a [RunEvidence],
    pub names: &'a BTreeMap<String, String>,
    pub attachers: &'a [AttacherLog],
    pub faults: &'a [FiredFault],
    pub deaths: &'a [Death],
    pub workflows: &'a WorkflowRegistry,
    pub detection_bound_ms: u64,
    pub liveness_timeout_ms: u64,
    /// Wall-clock ms when the scenario started (faults are reported relative to it).
    pub t0_ms: i64,
}

impl Evidence<'_> {
    fn label(&self, id: &str) -> String {
        self.names
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map_or_else(|| format!("run {id}"), |(k, _)| format!("{k} ({id})"))
    }
}

pub fn run_all(ev: &Evidence<'_>, skip: &[CheckName]) -> Vec<CheckResult> {
    CheckName::ALL
        .iter()
        .map(|&name| {
            if skip.contains(&name) {
                return CheckResult {
                    name,
                    status: Status::Skip,
                    evidence: vec!["skipped by the scenario".into()],
                };
            }
            let problems = match name {
                CheckName::TerminalOnce => terminal_once(ev),
                CheckName::NoGhosts => no_ghosts(ev),
                CheckName::StreamExactlyOnce => stream_exactly_once(ev),
                CheckName::ExecutionsBounded => executions_bounded(ev),
                CheckName::RawOutputsDownstream => raw_outputs_downstream(ev),
                CheckName::NoHealthyReaped => no_healthy_reaped(ev),
                CheckName::RetriesAgree => retries_agree(ev),
                CheckName::DeathDetected => death_detected(ev),
                CheckName::ClaimedOnce => claimed_once(ev),
                CheckName::Fencing => fencing(ev),
            };
            CheckResult {
                name,
                status: if problems.is_empty() {
                    Status::Pass
                } else {
                    Status::Fail
                },
                evidence: problems,
            }
        })
        .collect()
}

fn terminal_once(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        if !r.run.state.is_terminal() {
            out.push(format!(
                "{} still {} (owner {:?}) after the quiet period",
                ev.label(&r.run.id),
                r.run.state,
                r.run.owner_pod
            ));
            continue;
        }
        let ends: Vec<&TransitionRecord> = r
            .transitions
            .iter()
            .filter(|t| t.to.is_terminal() && !t.late)
            .collect();
        if ends.len() != 1 {
            let path: Vec<String> = r
                .transitions
                .iter()
                .map(|t| format!("{}->{}", t.from, t.to))
                .collect();
            out.push(format!(
                "{} reached a terminal state {} times: {}",
                ev.label(&r.run.id),
                ends.len(),
                path.join(", ")
            ));
        }
    }
    out
}

fn no_ghosts(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        for t in &r.transitions {
            if t.from.is_terminal() {
                let allowed =
                    t.late && r.run.late_completion == crate::engine::run::LateCompletion::Accept;
                if !allowed {
                    out.push(format!(
                        "{}: ghost transition {} -> {} by {} at epoch {} ({})",
                        ev.label(&r.run.id),
                        t.from,
                        t.to,
                        t.pod.as_deref().unwrap_or("?"),
                        t.epoch,
                        t.reason
                    ));
                }
            }
        }
    }
    out
}

fn stream_exactly_once(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for a in ev.attachers {
        let Some(r) = ev.runs.iter().find(|r| r.run.id == a.run_id) else {
            continue;
        };
        let who = format!(
            "{} attacher of {}",
            match a.kind {
                AttachKind::Early => "early",
                AttachKind::Late => "late",
            },
            ev.label(&a.run_id)
        );
        if let Some(e) = &a.error {
            out.push(format!("{who}: {e}"));
            continue;
        }
        let finale: Vec<(i64, i64, &str)> = r
            .chunks
            .iter()
            .filter(|c| c.epoch == r.run.epoch)
            .map(|c| (c.epoch, c.seq, c.data.as_str()))
            .collect();
        let mut held: Vec<(i64, i64, &str)> = Vec::new();
        let mut seen_stale = 0;
        for e in &a.events {
            match e {
                StreamEvent::Chunk {
                    epoch, seq, data, ..
                } => {
                    if *epoch != r.run.epoch {
                        seen_stale += 1;
                    }
                    held.push((*epoch, *seq, data.as_str()));
                }
                StreamEvent::Reset { .. } => held.clear(),
                StreamEvent::End { .. } => {}
            }
        }
        if !a
            .events
            .iter()
            .any(|e| matches!(e, StreamEvent::End { .. }))
        {
            out.push(format!("{who}: the stream never sent its end event"));
        }
        if held != finale {
            let dupes = held.len().saturating_sub(finale.len());
            out.push(format!(
                "{who}: holds {} chunks after resets, the final run has {} ({}first difference at position {})",
                held.len(),
                finale.len(),
                if dupes > 0 { format!("{dupes} extra, ") } else { String::new() },
                held.iter().zip(&finale).position(|(x, y)| x != y).unwrap_or(held.len().min(finale.len()))
            ));
        }
        if a.kind == AttachKind::Late && seen_stale > 0 {
            out.push(format!("{who}: was replayed {seen_stale} chunks of a dead owner's epoch (stream not purged on resume)"));
        }
    }
    out
}

fn executions_bounded(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        let Ok(wf) = ev.workflows.get(&r.run.workflow) else {
            continue;
        };
        for step in &wf.steps {
            let execs: Vec<&EffectRecord> =
                r.effects.iter().filter(|e| e.node_id == step.id).collect();
            if i64::try_from(execs.len()).unwrap_or(i64::MAX) > step.max_attempts() {
                out.push(format!(
                    "{} step {}: executed {} times, max_retries + 1 = {} (pods {})",
                    ev.label(&r.run.id),
                    step.id,
                    execs.len(),
                    step.max_attempts(),
                    execs
                        .iter()
                        .map(|e| format!("{}#{}", e.pod, e.attempt))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if let Some(done) = r
                .steps
                .iter()
                .find(|s| s.node_id == step.id && s.status == StepStatus::Succeeded)
            {
                let after: Vec<&&EffectRecord> = execs
                    .iter()
                    .filter(|e| e.at_ms > done.updated_at_ms)
                    .collect();
                if !after.is_empty() {
                    out.push(format!(
                        "{} step {}: executed again after it succeeded (by {})",
                        ev.label(&r.run.id),
                        step.id,
                        after
                            .iter()
                            .map(|e| e.pod.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    }
    out
}

fn raw_outputs_downstream(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        let Ok(wf) = ev.workflows.get(&r.run.workflow) else {
            continue;
        };
        for step in wf.steps.iter().filter(|s| !s.after.is_empty()) {
            let Some(raw) = r.raw.get(&step.id) else {
                continue;
            };
            let text = raw.to_string();
            if text.contains(REDACTED) {
                out.push(format!("{} step {}: its raw output carries {REDACTED}: a predecessor's redacted copy reached it", ev.label(&r.run.id), step.id));
            }
            if matches!(step.kind, StepKind::FanIn) {
                for p in &step.after {
                    if raw.get(p).is_none_or(|v| v.is_null()) {
                        out.push(format!(
                            "{} fan-in {}: predecessor {p} arrived as nothing",
                            ev.label(&r.run.id),
                            step.id
                        ));
                    }
                }
            }
        }
    }
    out
}

fn reaped(t: &TransitionRecord) -> bool {
    t.to == RunState::TimedOut && t.reason.starts_with("reaper: no heartbeat")
}

fn no_healthy_reaped(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        for t in r.transitions.iter().filter(|t| reaped(t)) {
            if r.run.heartbeat_timeout_ms.is_none() {
                out.push(format!(
                    "{}: reaped for a missing heartbeat on lane {}, which does not heartbeat",
                    ev.label(&r.run.id),
                    r.run.lane
                ));
                continue;
            }
            let hurt = ev.faults.iter().any(|f| {
                f.at_ms <= t.at_ms
                    && (f.run_id.as_deref() == Some(r.run.id.as_str()) && f.action == Action::Stall
                        || f.owned.contains(&r.run.id)
                            && matches!(
                                f.action,
                                Action::Kill | Action::Term | Action::Pause | Action::Partition
                            ))
            });
            if !hurt {
                out.push(format!(
                    "{}: reaped on lane {} with no fault on it or its owner",
                    ev.label(&r.run.id),
                    r.run.lane
                ));
            }
        }
    }
    out
}

fn retries_agree(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        if !r.transitions.iter().any(reaped) || r.run.retries_left <= 0 {
            continue;
        }
        let retries = ev
            .runs
            .iter()
            .filter(|x| x.run.retry_of.as_deref() == Some(r.run.id.as_str()))
            .count();
        let sibling = ev.runs.iter().any(|x| {
            x.run.id != r.run.id && x.run.family == r.run.family && x.run.retry_of.is_none()
        });
        if retries != 1 && !sibling {
            out.push(format!("{}: timed out by the reaper with {} retries left, but {retries} retries were queued", ev.label(&r.run.id), r.run.retries_left));
        }
    }
    out
}

fn death_detected(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for f in ev.faults {
        let expect = match f.action {
            Action::Kill | Action::Term => true,
            Action::Pause | Action::Partition => f
                .duration_ms
                .is_some_and(|d| d > ev.liveness_timeout_ms.saturating_add(ev.detection_bound_ms)),
            _ => false,
        };
        let Some(pod) = f.pod.as_deref().filter(|_| expect) else {
            continue;
        };
        let found = ev
            .deaths
            .iter()
            .filter(|d| d.pod_id == pod && d.detected_at_ms >= f.at_ms)
            .map(|d| d.detected_at_ms - f.at_ms)
            .min();
        match found {
            None => out.push(format!(
                "{pod} was {:?} at +{} ms and never detected dead",
                f.action, f.at_ms
            )),
            Some(ms) if ms > i64::try_from(ev.detection_bound_ms).unwrap_or(i64::MAX) => {
                out.push(format!(
                    "{pod} detected dead {ms} ms after the fault, bound {} ms",
                    ev.detection_bound_ms
                ));
            }
            Some(_) => {}
        }
    }
    out
}

fn claimed_once(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        let mut from: BTreeMap<Option<&str>, Vec<&ClaimRecord>> = BTreeMap::new();
        for c in &r.claims {
            from.entry(c.from_pod.as_deref()).or_default().push(c);
        }
        // A claim may take a run only from nobody (pending), from itself (a
        // restarted pod resuming its own runs) or from a pod already found
        // dead: anything else stole it from a live owner.
        for c in &r.claims {
            let Some(prev) = c.from_pod.as_deref() else {
                continue;
            };
            if prev == c.to_pod {
                continue;
            }
            let dead_before = ev
                .deaths
                .iter()
                .any(|d| d.pod_id == prev && d.detected_at_ms <= c.at_ms);
            if !dead_before {
                out.push(format!(
                    "{}: {} took it from {prev} at epoch {}, while {prev} was not known dead",
                    ev.label(&r.run.id),
                    c.to_pod,
                    c.epoch
                ));
            }
        }
        // A pending run is claimed from nobody exactly once; every later
        // claim names the owner it replaced (checked above).
        if let Some(cs) = from.get(&None).filter(|cs| cs.len() > 1) {
            out.push(format!(
                "{}: claimed {} times while pending: by {}",
                ev.label(&r.run.id),
                cs.len(),
                cs.iter()
                    .map(|c| c.to_pod.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

fn fencing(ev: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for r in ev.runs {
        let owner_at: HashMap<i64, &str> = r
            .claims
            .iter()
            .map(|c| (c.epoch, c.to_pod.as_str()))
            .collect();
        for t in &r.transitions {
            let Some(pod) = t.pod.as_deref() else {
                continue;
            };
            if !pod.starts_with("pod-") {
                continue; // the API, the reaper or the janitor
            }
            if let Some(owner) = owner_at.get(&t.epoch)
                && *owner != pod
                && t.from == RunState::Running
                && !reaped(t)
                && t.to != RunState::Lost
            {
                out.push(format!(
                    "{}: {} wrote {} -> {} at epoch {}, which {} held",
                    ev.label(&r.run.id),
                    pod,
                    t.from,
                    t.to,
                    t.epoch,
                    owner
                ));
            }
        }
        let stale = r.chunks.iter().filter(|c| c.epoch < r.run.epoch).count();
        if stale > 0 {
            out.push(format!(
                "{}: {stale} chunks of older epochs remain in the stream after epoch {}",
                ev.label(&r.run.id),
                r.run.epoch
            ));
        }
    }
    out
}
