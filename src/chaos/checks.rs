//! The checkers: one per invariant of FIELD-NOTES.
//!
//! A verdict rests on evidence the engine cannot write: what the workflow
//! definition says must happen (expected streams, retry budgets, which
//! steps call the witness), what clients saw (stream events, `end` events,
//! API answers) and what the runner's witness recorded (every execution of a
//! witnessed step's side effect). The store's own records are read too, but
//! only as a cross-check: a disagreement between the store and the
//! independent evidence is itself a finding, and a finding that only the
//! store can show says so ("store record").
//!
//! Everything here is computed from [`Evidence`], which is rebuilt from a
//! saved `history.jsonl` by [`Evidence::from_history`]: `vigil chaos check`
//! re-runs the same functions on a results directory without a cluster.

use super::history::Event;
use super::scenario::{Action, AttachKind, CheckName};
use crate::client::{StreamEvent, StreamPart};
use crate::engine::liveness::Death;
use crate::engine::run::{
    Chunk, LateCompletion, RunRecord, RunState, StepStatus, TransitionRecord,
};
use crate::engine::store::{ClaimRecord, EffectRecord};
use crate::engine::workflow::{
    REDACTED, StepDef, StepKind, WITNESS_URL, Workflow, WorkflowRegistry,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A step row as the store kept it (no outputs: those stay in the store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFacts {
    pub node_id: String,
    pub status: StepStatus,
    pub attempts: i64,
    pub updated_at_ms: i64,
}

/// What a step's raw output looks like, without its values (they can be
/// secrets, and the history is an artefact people read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawFacts {
    /// The raw copy contains the redaction marker.
    pub carries_redacted: bool,
    /// Top-level keys whose value is present and not null.
    pub present: Vec<String>,
}

impl RawFacts {
    pub fn of(v: &Value) -> RawFacts {
        RawFacts {
            carries_redacted: v.to_string().contains(REDACTED),
            present: v
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The store's account of one run, read after the cluster went quiet.
/// Cross-check material only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreAccount {
    pub run: RunRecord,
    pub transitions: Vec<TransitionRecord>,
    pub claims: Vec<ClaimRecord>,
    pub chunks: Vec<Chunk>,
    pub effects: Vec<EffectRecord>,
    pub steps: Vec<StepFacts>,
    pub raw: BTreeMap<String, RawFacts>,
}

/// A run the runner submitted, as the API acknowledged it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    pub name: String,
    pub run_id: String,
    pub workflow: String,
}

/// One call to the witness: a witnessed step's side effect, as the runner
/// received it (`t_ms` on the runner's clock).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WitnessCall {
    pub t_ms: u64,
    pub run_id: String,
    pub step: String,
    pub attempt: i64,
    pub epoch: i64,
    pub pod: String,
}

/// What a client saw on one attached stream (`t_ms` per event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttacherLog {
    pub run_name: String,
    pub run_id: String,
    pub attacher: AttachKind,
    pub events: Vec<(u64, StreamEvent)>,
    pub error: Option<String>,
}

/// A run's state as the API answered it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiAnswer {
    pub t_ms: u64,
    pub run_id: String,
    pub state: RunState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FiredFault {
    pub index: usize,
    pub action: Action,
    pub pod: Option<String>,
    pub run_id: Option<String>,
    /// Wall-clock ms (to line up with the store's records).
    pub at_ms: i64,
    /// Runner ms since the start (to line up with clients and the witness).
    #[serde(default)]
    pub t_ms: u64,
    /// Runs the target pod owned when the fault hit.
    pub owned: Vec<String>,
    /// For a pause, a partition or a freeze: how long.
    pub duration_ms: Option<u64>,
}

/// A late completion the runner sent, and the answer it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LateAnswer {
    pub t_ms: u64,
    pub run_id: String,
    pub accepted: bool,
    pub answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skip,
    NotApplicable,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
            Status::NotApplicable => "n/a ",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: CheckName,
    pub status: Status,
    pub evidence: Vec<String>,
}

/// Everything the checkers look at. Built from the history.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub detection_bound_ms: u64,
    pub liveness_timeout_ms: u64,
    /// Wall-clock ms when the scenario started.
    pub wall0: i64,
    pub submitted: Vec<Submitted>,
    pub attachers: Vec<AttacherLog>,
    pub faults: Vec<FiredFault>,
    pub witness: Vec<WitnessCall>,
    pub api: Vec<ApiAnswer>,
    pub late: Vec<LateAnswer>,
    pub store: Vec<StoreAccount>,
    pub deaths: Vec<Death>,
    /// Why the runner could not see everything it needed (then the verdict
    /// is unknown, not pass).
    pub blind: Vec<String>,
}

fn field<T: for<'de> Deserialize<'de>>(e: &Event, key: &str) -> Result<T, String> {
    let v = e.data.get(key).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v)
        .map_err(|err| format!("history line at +{} ms ({}): {key}: {err}", e.t_ms, e.kind))
}

impl Evidence {
    /// Rebuild the evidence from a history (the runner's own log, or a
    /// saved `history.jsonl`).
    pub fn from_history(events: &[Event]) -> Result<Evidence, String> {
        let mut ev = Evidence::default();
        let mut attachers: Vec<AttacherLog> = Vec::new();
        for e in events {
            match e.kind.as_str() {
                "start" => {
                    ev.detection_bound_ms = field(e, "detection_bound_ms")?;
                    ev.liveness_timeout_ms = field(e, "liveness_timeout_ms")?;
                    ev.wall0 = e.wall_ms - i64::try_from(e.t_ms).unwrap_or(0);
                }
                "submit" => ev.submitted.push(Submitted {
                    name: field(e, "run")?,
                    run_id: field(e, "run_id")?,
                    workflow: field(e, "workflow")?,
                }),
                "attached" => {
                    attachers.push(AttacherLog {
                        run_name: field(e, "run")?,
                        run_id: field(e, "run_id")?,
                        attacher: field(e, "attacher")?,
                        events: Vec::new(),
                        error: None,
                    });
                }
                "stream" | "attach_error" => {
                    let run_id: String = field(e, "run_id")?;
                    let who: AttachKind = field(e, "attacher")?;
                    let Some(a) = attachers
                        .iter_mut()
                        .rev()
                        .find(|a| a.run_id == run_id && a.attacher == who)
                    else {
                        return Err(format!(
                            "history line at +{} ms: {} for run {run_id} before its attacher started",
                            e.t_ms, e.kind
                        ));
                    };
                    if e.kind == "stream" {
                        a.events.push((e.t_ms, field(e, "event")?));
                    } else {
                        a.error = Some(field(e, "error")?);
                    }
                }
                "fault" => ev.faults.push(FiredFault {
                    index: field(e, "index")?,
                    action: field(e, "action")?,
                    pod: field(e, "pod")?,
                    run_id: field(e, "run_id")?,
                    at_ms: e.wall_ms,
                    t_ms: e.t_ms,
                    owned: field(e, "owned")?,
                    duration_ms: field(e, "duration_ms")?,
                }),
                "witness" => ev.witness.push(WitnessCall {
                    t_ms: e.t_ms,
                    run_id: field(e, "run_id")?,
                    step: field(e, "step")?,
                    attempt: field(e, "attempt")?,
                    epoch: field(e, "epoch")?,
                    pod: field(e, "pod")?,
                }),
                "api_run" => ev.api.push(ApiAnswer {
                    t_ms: e.t_ms,
                    run_id: field(e, "run_id")?,
                    state: field(e, "state")?,
                }),
                "late_complete" => ev.late.push(LateAnswer {
                    t_ms: e.t_ms,
                    run_id: field(e, "run_id")?,
                    accepted: field(e, "accepted")?,
                    answer: field(e, "answer")?,
                }),
                "store_run" => ev.store.push(field(e, "account")?),
                "death" => ev.deaths.push(field(e, "death")?),
                "blind" => ev.blind.push(field(e, "reason")?),
                _ => {}
            }
        }
        ev.attachers = attachers;
        Ok(ev)
    }

    fn label(&self, id: &str) -> String {
        self.submitted
            .iter()
            .find(|s| s.run_id == id)
            .map_or_else(|| format!("run {id}"), |s| format!("{} ({id})", s.name))
    }

    fn account(&self, id: &str) -> Option<&StoreAccount> {
        self.store.iter().find(|a| a.run.id == id)
    }

    fn workflow_of<'w>(&self, reg: &'w WorkflowRegistry, id: &str) -> Option<&'w Workflow> {
        let name = self
            .submitted
            .iter()
            .find(|s| s.run_id == id)
            .map(|s| s.workflow.clone())
            .or_else(|| self.account(id).map(|a| a.run.workflow.clone()))?;
        reg.get(&name).ok()
    }

    /// Every terminal state a client saw for `id`, in the order seen:
    /// `end` events of attachers and API answers.
    fn seen_states(&self, id: &str) -> Vec<(u64, RunState, String)> {
        let mut seen: Vec<(u64, RunState, String)> = Vec::new();
        for a in self.attachers.iter().filter(|a| a.run_id == id) {
            for (t, e) in &a.events {
                if let StreamEvent::End { state, .. } = e {
                    seen.push((
                        *t,
                        *state,
                        format!("{} attacher's end event", kind_name(a.attacher)),
                    ));
                }
            }
        }
        for x in self.api.iter().filter(|x| x.run_id == id) {
            seen.push((x.t_ms, x.state, "the API".into()));
        }
        seen.sort_by_key(|s| s.0);
        seen
    }

    /// The last state the API gave for `id`.
    fn final_state(&self, id: &str) -> Option<RunState> {
        self.api.iter().rfind(|x| x.run_id == id).map(|x| x.state)
    }
}

fn kind_name(k: AttachKind) -> &'static str {
    match k {
        AttachKind::Early => "early",
        AttachKind::Late => "late",
    }
}

/// Whether `step` calls the runner's witness.
pub fn witnessed(step: &StepDef) -> bool {
    matches!(&step.kind, StepKind::Http { url, .. } if url.starts_with(WITNESS_URL))
}

/// Steps that run only after `step` (transitively).
fn downstream<'w>(wf: &'w Workflow, step: &str) -> BTreeSet<&'w str> {
    let mut out: BTreeSet<&str> = BTreeSet::new();
    let mut changed = true;
    while changed {
        changed = false;
        for s in &wf.steps {
            if !out.contains(s.id.as_str())
                && s.after
                    .iter()
                    .any(|p| p == step || out.contains(p.as_str()))
            {
                out.insert(&s.id);
                changed = true;
            }
        }
    }
    out
}

/// The chunks an emit step writes, from its definition.
pub fn expected_chunks(step: &StepDef) -> Option<Vec<String>> {
    match &step.kind {
        StepKind::Emit { chunks, text, .. } => Some(
            (0..*chunks)
                .map(|i| {
                    text.replace("{i}", &i.to_string())
                        .replace("{step}", &step.id)
                })
                .collect(),
        ),
        _ => None,
    }
}

struct Outcome {
    status: Status,
    evidence: Vec<String>,
}

fn pass_or_fail(problems: Vec<String>) -> Outcome {
    Outcome {
        status: if problems.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        evidence: problems,
    }
}

fn not_applicable(why: &str) -> Outcome {
    Outcome {
        status: Status::NotApplicable,
        evidence: vec![format!("not applicable: {why}")],
    }
}

pub fn run_all(
    ev: &Evidence,
    workflows: &WorkflowRegistry,
    skip: &[CheckName],
) -> Vec<CheckResult> {
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
            let o = match name {
                CheckName::TerminalOnce => terminal_once(ev, workflows),
                CheckName::NoGhosts => no_ghosts(ev, workflows),
                CheckName::StreamExactlyOnce => stream_exactly_once(ev, workflows),
                CheckName::ExecutionsBounded => executions_bounded(ev, workflows),
                CheckName::RawOutputsDownstream => raw_outputs_downstream(ev, workflows),
                CheckName::NoHealthyReaped => no_healthy_reaped(ev),
                CheckName::RetriesAgree => retries_agree(ev),
                CheckName::DeathDetected => death_detected(ev),
                CheckName::ClaimedOnce => claimed_once(ev),
                CheckName::Fencing => fencing(ev),
                CheckName::NoFalseDeaths => no_false_deaths(ev),
            };
            CheckResult {
                name,
                status: o.status,
                evidence: o.evidence,
            }
        })
        .collect()
}

/// Terminal states, from clients: the API's last answer must be terminal,
/// and every terminal state any client saw must be the same one (a
/// `late_completion = "accept"` workflow may go from lost to one more).
/// Cross-check: the store's transition log reaches a terminal state once.
fn terminal_once(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    let mut out = Vec::new();
    for s in &ev.submitted {
        let label = ev.label(&s.run_id);
        match ev.final_state(&s.run_id) {
            None => out.push(format!(
                "{label}: the API never answered for it after the quiet period"
            )),
            Some(st) if !st.is_terminal() => {
                out.push(format!("{label}: still {st} after the quiet period (API)"));
                continue;
            }
            Some(_) => {}
        }
        let seen = ev.seen_states(&s.run_id);
        let accept = ev
            .workflow_of(reg, &s.run_id)
            .is_some_and(|w| w.late_completion == LateCompletion::Accept);
        let distinct: BTreeSet<String> = seen
            .iter()
            .filter(|(_, st, _)| st.is_terminal())
            .filter(|(_, st, _)| !(accept && *st == RunState::Lost))
            .map(|(_, st, _)| st.to_string())
            .collect();
        if distinct.len() > 1 {
            out.push(format!(
                "{label}: clients saw different terminal states: {}",
                seen.iter()
                    .map(|(t, st, who)| format!("{st} from {who} at +{t} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // Cross-check on the store's account, also for runs no client knows
    // (retries the reaper queued).
    for a in &ev.store {
        let label = ev.label(&a.run.id);
        if !a.run.state.is_terminal() && !ev.submitted.iter().any(|s| s.run_id == a.run.id) {
            out.push(format!(
                "{label}: still {} after the quiet period (store record; no client knows this run)",
                a.run.state
            ));
        }
        let ends = a
            .transitions
            .iter()
            .filter(|t| t.to.is_terminal() && !t.late)
            .count();
        if a.run.state.is_terminal() && ends != 1 {
            out.push(format!(
                "{label}: the store's log reaches a terminal state {ends} times: {} (store record)",
                a.transitions
                    .iter()
                    .map(|t| format!("{}->{}", t.from, t.to))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(api) = ev.final_state(&a.run.id)
            && api != a.run.state
        {
            out.push(format!(
                "{label}: the API's last answer was {api}, the store now says {}",
                a.run.state
            ));
        }
    }
    pass_or_fail(out)
}

/// No way back from a terminal state: once a client saw a run terminal,
/// nobody may see it in another state later (unless the workflow accepts a
/// late completion of a lost run), and a late completion of such a run must
/// be refused. Cross-check: the store's log has no transition out of a
/// terminal state but the allowed one.
fn no_ghosts(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    let mut out = Vec::new();
    for s in &ev.submitted {
        let label = ev.label(&s.run_id);
        let accept = ev
            .workflow_of(reg, &s.run_id)
            .is_some_and(|w| w.late_completion == LateCompletion::Accept);
        let seen = ev.seen_states(&s.run_id);
        let mut first: Option<(u64, RunState, String)> = None;
        for (t, st, who) in seen {
            match &first {
                None if st.is_terminal() => first = Some((t, st, who)),
                Some((t0, s0, w0)) if st != *s0 && !(accept && *s0 == RunState::Lost) => {
                    out.push(format!(
                        "{label}: {w0} saw {s0} at +{t0} ms, then {who} saw {st} at +{t} ms"
                    ));
                    break;
                }
                _ => {}
            }
        }
        for l in ev
            .late
            .iter()
            .filter(|l| l.run_id == s.run_id && l.accepted)
        {
            if !accept {
                out.push(format!(
                    "{label}: a late completion at +{} ms was accepted ({}), but the workflow \
                     refuses late completions",
                    l.t_ms, l.answer
                ));
            }
        }
    }
    for a in &ev.store {
        for t in &a.transitions {
            if t.from.is_terminal() {
                let allowed = t.late && a.run.late_completion == LateCompletion::Accept;
                if !allowed {
                    out.push(format!(
                        "{}: ghost transition {} -> {} by {} at epoch {} ({}) (store record)",
                        ev.label(&a.run.id),
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
    pass_or_fail(out)
}

/// What an attacher holds at the end: chunk events with resets applied.
fn held(events: &[(u64, StreamEvent)]) -> (Vec<HeldChunk>, usize) {
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
struct HeldChunk {
    epoch: i64,
    step: Option<String>,
    attempt: Option<i64>,
    data: String,
}

/// Each attacher's stream against the workflow definition: a run that
/// succeeded streamed every chunk of every emit step exactly once, in
/// order; any other run a prefix of each, no chunk twice.
fn stream_exactly_once(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
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

/// Executions from the witness: each witnessed step at most max_retries + 1
/// times, never again once a step after it produced anything (a witness call
/// or a chunk a client saw), and at least once in a run that succeeded.
/// Cross-check: the engine's `effects` rows never count fewer executions
/// than the witness saw.
fn executions_bounded(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
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
fn raw_outputs_downstream(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
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

fn reaped(t: &TransitionRecord) -> bool {
    t.to == RunState::TimedOut && t.reason.starts_with("reaper: no heartbeat")
}

/// A run the reaper timed out for a missing heartbeat must be on a lane that
/// heartbeats and must have had a fault on it or its owner.
fn no_healthy_reaped(ev: &Evidence) -> Outcome {
    let mut out = Vec::new();
    for a in &ev.store {
        for t in a.transitions.iter().filter(|t| reaped(t)) {
            if a.run.heartbeat_timeout_ms.is_none() {
                out.push(format!(
                    "{}: reaped for a missing heartbeat on lane {}, which does not heartbeat",
                    ev.label(&a.run.id),
                    a.run.lane
                ));
                continue;
            }
            let hurt = ev.faults.iter().any(|f| {
                f.at_ms <= t.at_ms
                    && (f.run_id.as_deref() == Some(a.run.id.as_str()) && f.action == Action::Stall
                        || f.owned.contains(&a.run.id)
                            && matches!(
                                f.action,
                                Action::Kill | Action::Term | Action::Pause | Action::Partition
                            )
                        || f.run_id.as_deref() == Some(a.run.id.as_str())
                            && f.action == Action::RowLock
                        || f.action == Action::StoreFreeze
                        || f.action == Action::StoreOutage)
            });
            if !hurt {
                out.push(format!(
                    "{}: reaped on lane {} with no fault on it or its owner",
                    ev.label(&a.run.id),
                    a.run.lane
                ));
            }
        }
        // What clients saw: a run timed out on a lane that does not heartbeat
        // and has no deadline passed is the same bug seen from outside.
    }
    pass_or_fail(out)
}

fn retries_agree(ev: &Evidence) -> Outcome {
    let reaped_runs: Vec<&StoreAccount> = ev
        .store
        .iter()
        .filter(|a| a.transitions.iter().any(reaped) && a.run.retries_left > 0)
        .collect();
    if reaped_runs.is_empty() {
        return not_applicable("the reaper timed out no run that had retries left");
    }
    let mut out = Vec::new();
    for a in reaped_runs {
        let retries = ev
            .store
            .iter()
            .filter(|x| x.run.retry_of.as_deref() == Some(a.run.id.as_str()))
            .count();
        let sibling = ev.store.iter().any(|x| {
            x.run.id != a.run.id && x.run.family == a.run.family && x.run.retry_of.is_none()
        });
        if retries != 1 && !sibling {
            out.push(format!(
                "{}: timed out by the reaper with {} retries left, but {retries} retries were queued",
                ev.label(&a.run.id),
                a.run.retries_left
            ));
        }
    }
    pass_or_fail(out)
}

/// Whether fault `f` must lead to its pod being found dead.
fn must_die(ev: &Evidence, f: &FiredFault) -> bool {
    match f.action {
        Action::Kill | Action::Term => true,
        // A pod stopped or cut off for twice its liveness timeout has
        // certainly lost its liveness (a shorter one may or may not have).
        Action::Pause | Action::Partition => f
            .duration_ms
            .is_some_and(|d| d >= ev.liveness_timeout_ms.saturating_mul(2)),
        _ => false,
    }
}

/// A dead pod is found dead within the bound and its runs are taken over.
/// From clients and the witness: every run the pod owned either ended, or
/// was seen resumed at a newer epoch (a chunk, a witness call). The time
/// bound is judged on the store's death record (cross-check).
fn death_detected(ev: &Evidence) -> Outcome {
    let faults: Vec<&FiredFault> = ev
        .faults
        .iter()
        .filter(|f| must_die(ev, f) && f.pod.is_some())
        .collect();
    if faults.is_empty() {
        return not_applicable(
            "no pod was killed, terminated, or stopped or cut off for longer than the liveness \
             timeout plus the detection bound",
        );
    }
    let bound = ev.detection_bound_ms;
    let mut out = Vec::new();
    for f in faults {
        let pod = f.pod.as_deref().unwrap_or_default();
        // Independent: every run the pod owned shows a sign of a new owner.
        for id in &f.owned {
            let before_epoch = ev
                .attachers
                .iter()
                .filter(|a| &a.run_id == id)
                .flat_map(|a| a.events.iter())
                .filter(|(t, _)| *t <= f.t_ms)
                .filter_map(|(_, e)| match e {
                    StreamEvent::Chunk { epoch, .. } | StreamEvent::Reset { epoch, .. } => {
                        Some(*epoch)
                    }
                    StreamEvent::End { .. } => None,
                })
                .chain(
                    ev.witness
                        .iter()
                        .filter(|c| &c.run_id == id && c.t_ms <= f.t_ms)
                        .map(|c| c.epoch),
                )
                .max()
                .unwrap_or(0);
            let from_clients = ev
                .attachers
                .iter()
                .filter(|a| &a.run_id == id)
                .flat_map(|a| a.events.iter())
                .filter(|(t, _)| *t > f.t_ms)
                .filter_map(|(t, e)| match e {
                    StreamEvent::Chunk { epoch, .. } | StreamEvent::Reset { epoch, .. }
                        if *epoch > before_epoch =>
                    {
                        Some(*t)
                    }
                    _ => None,
                });
            let from_witness = ev
                .witness
                .iter()
                .filter(|c| &c.run_id == id && c.t_ms > f.t_ms && c.epoch > before_epoch)
                .map(|c| c.t_ms);
            let ended_early = ev
                .seen_states(id)
                .iter()
                .any(|(t, st, _)| st.is_terminal() && *t <= f.t_ms);
            // Resumption takes detection, a claim and the run's next step,
            // so its time is reported (latency), not bounded; a run that
            // was never taken over and never ended is the finding.
            let resumed = from_clients.chain(from_witness).min().is_some();
            let stuck = ev.final_state(id).is_none_or(|s| !s.is_terminal());
            if !resumed && !ended_early && stuck {
                out.push(format!(
                    "{pod} was {} at +{} ms; no client or witness ever saw {} resumed by a new \
                     owner, and it never ended",
                    action_verb(f.action),
                    f.t_ms,
                    ev.label(id)
                ));
            }
        }
        // Cross-check: the store's death records.
        let found = ev
            .deaths
            .iter()
            .filter(|d| d.pod_id == pod && d.detected_at_ms >= f.at_ms)
            .map(|d| d.detected_at_ms - f.at_ms)
            .min();
        match found {
            None => out.push(format!(
                "{pod} was {} at +{} ms and never recorded dead (store record)",
                action_verb(f.action),
                f.t_ms
            )),
            Some(ms) if ms > i64::try_from(bound).unwrap_or(i64::MAX) => out.push(format!(
                "{pod} recorded dead {ms} ms after the fault, bound {bound} ms (store record)"
            )),
            Some(_) => {}
        }
    }
    pass_or_fail(out)
}

/// No live pod is declared dead. The witness: a run whose side effects move
/// from one pod to another at a newer epoch was taken over, and a takeover
/// is only right from a pod a fault could have downed (SIGKILL, SIGTERM,
/// SIGSTOP, a partition, a restart with its id) or after the store itself
/// was stopped or frozen. Cross-check (store record): every recorded death
/// is of such a pod. A live pod declared dead has its runs taken from under
/// it: the cluster-wide stall of issue 14 (a row lock blocking recovery and,
/// with it, the survivors' own liveness).
fn no_false_deaths(ev: &Evidence) -> Outcome {
    // A fault that came `before` (told on the witness's clock or the
    // store's) and could have downed `pod`.
    let downed_by = |pod: &str, before: &dyn Fn(&FiredFault) -> bool| {
        ev.faults.iter().any(|f| {
            before(f)
                && (f.pod.as_deref() == Some(pod)
                    && matches!(
                        f.action,
                        Action::Kill
                            | Action::Term
                            | Action::Pause
                            | Action::Partition
                            | Action::Restart
                    )
                    || matches!(f.action, Action::StoreOutage | Action::StoreFreeze))
        })
    };
    let mut out = Vec::new();
    let mut by_run: BTreeMap<&str, Vec<&WitnessCall>> = BTreeMap::new();
    for c in &ev.witness {
        by_run.entry(c.run_id.as_str()).or_default().push(c);
    }
    for (run, calls) in by_run {
        for pair in calls.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if after.epoch > before.epoch
                && after.pod != before.pod
                && !downed_by(&before.pod, &|f| f.t_ms <= after.t_ms)
            {
                out.push(format!(
                    "{}: taken from {} (epoch {}) by {} (epoch {}) at +{} ms, with no fault on \
                     {} or on the store (witness)",
                    ev.label(run),
                    before.pod,
                    before.epoch,
                    after.pod,
                    after.epoch,
                    after.t_ms,
                    before.pod
                ));
            }
        }
    }
    for d in &ev.deaths {
        if !downed_by(&d.pod_id, &|f| f.at_ms <= d.detected_at_ms) {
            out.push(format!(
                "{} was declared dead by {} at +{} ms, with no fault on it or on the store \
                 (store record)",
                d.pod_id,
                d.detected_by,
                d.detected_at_ms - ev.wall0
            ));
        }
    }
    pass_or_fail(out)
}

fn action_verb(a: Action) -> &'static str {
    match a {
        Action::Kill => "SIGKILLed",
        Action::Term => "SIGTERMed",
        Action::Pause => "SIGSTOPped",
        Action::Partition => "partitioned",
        _ => "hit",
    }
}

/// Store record: each orphan claimed once, never from a live owner.
fn claimed_once(ev: &Evidence) -> Outcome {
    let mut out = Vec::new();
    for a in &ev.store {
        let mut from: BTreeMap<Option<&str>, Vec<&ClaimRecord>> = BTreeMap::new();
        for c in &a.claims {
            from.entry(c.from_pod.as_deref()).or_default().push(c);
        }
        for c in &a.claims {
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
                    ev.label(&a.run.id),
                    c.to_pod,
                    c.epoch
                ));
            }
        }
        if let Some(cs) = from.get(&None).filter(|cs| cs.len() > 1) {
            out.push(format!(
                "{}: claimed {} times while pending: by {}",
                ev.label(&a.run.id),
                cs.len(),
                cs.iter()
                    .map(|c| c.to_pod.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // From the witness: two pods executing the run's steps at the same epoch.
    let mut at: HashMap<(&str, i64), BTreeSet<&str>> = HashMap::new();
    for c in &ev.witness {
        at.entry((c.run_id.as_str(), c.epoch))
            .or_default()
            .insert(c.pod.as_str());
    }
    let mut both: Vec<_> = at.into_iter().filter(|(_, p)| p.len() > 1).collect();
    both.sort();
    for ((id, epoch), pods) in both {
        out.push(format!(
            "{}: the witness saw {} execute it at the same epoch {epoch}",
            ev.label(id),
            pods.into_iter().collect::<Vec<_>>().join(" and ")
        ));
    }
    pass_or_fail(out)
}

/// A pod that lost its claim writes nothing afterwards. From clients: in
/// each attacher's final stream every step's chunks come from one attempt
/// at one epoch, and no chunk of an older epoch arrives after a reset that
/// did not keep it. From the witness: no pod executes a step at an epoch
/// older than one another pod already executed at. Cross-check: the
/// store's log shows no terminal write by a pod that did not hold the epoch.
fn fencing(ev: &Evidence) -> Outcome {
    let max_epoch_seen = ev
        .attachers
        .iter()
        .flat_map(|a| a.events.iter())
        .filter_map(|(_, e)| match e {
            StreamEvent::Chunk { epoch, .. } | StreamEvent::Reset { epoch, .. } => Some(*epoch),
            StreamEvent::End { .. } => None,
        })
        .chain(ev.witness.iter().map(|c| c.epoch))
        .max()
        .unwrap_or(0);
    let takeovers = ev
        .store
        .iter()
        .any(|a| a.claims.iter().any(|c| c.from_pod.is_some()));
    if max_epoch_seen <= 1 && !takeovers {
        return not_applicable("no run changed owner, so no pod lost a claim it could write past");
    }
    let mut out = Vec::new();
    for a in &ev.attachers {
        let who = format!(
            "{} attacher of {}",
            kind_name(a.attacher),
            ev.label(&a.run_id)
        );
        let (held, _) = held(&a.events);
        let mut parts: BTreeMap<&str, BTreeSet<(i64, i64)>> = BTreeMap::new();
        for c in &held {
            if let (Some(s), Some(at)) = (c.step.as_deref(), c.attempt) {
                parts.entry(s).or_default().insert((c.epoch, at));
            }
        }
        for (s, p) in parts.iter().filter(|(_, p)| p.len() > 1) {
            out.push(format!(
                "{who}: step {s}'s chunks come from {} attempts ({}): a pod that lost its claim kept writing",
                p.len(),
                p.iter().map(|(e, at)| format!("epoch {e} attempt {at}")).collect::<Vec<_>>().join(", ")
            ));
        }
        let mut reset_to = 0;
        let mut kept: Vec<StreamPart> = Vec::new();
        for (t, e) in &a.events {
            match e {
                StreamEvent::Reset { epoch, keep } => {
                    reset_to = reset_to.max(*epoch);
                    kept.extend(keep.iter().cloned());
                }
                StreamEvent::Chunk {
                    epoch,
                    step,
                    attempt,
                    seq,
                    ..
                } if *epoch < reset_to => {
                    let is_kept =
                        crate::client::keeps(reset_to, &kept, *epoch, step.as_deref(), *attempt);
                    if !is_kept {
                        out.push(format!(
                            "{who}: got chunk {epoch}:{seq} at +{t} ms, after the stream moved to epoch {reset_to}"
                        ));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    // The witness: a step executed at an older epoch after a newer one ran.
    let mut newest: HashMap<&str, (i64, &str, u64)> = HashMap::new();
    let mut calls: Vec<&WitnessCall> = ev.witness.iter().collect();
    calls.sort_by_key(|c| c.t_ms);
    let mut stale: HashMap<(&str, &str, i64), usize> = HashMap::new();
    for c in calls {
        match newest.get(c.run_id.as_str()) {
            Some((e, pod, t)) if c.epoch < *e && c.pod != *pod => {
                // One call may be a body already in flight when the claim
                // moved; a second is a new attempt begun without the claim.
                let n = stale
                    .entry((c.run_id.as_str(), c.pod.as_str(), c.epoch))
                    .or_default();
                *n += 1;
                if *n > 1 {
                    out.push(format!(
                        "{}: {} executed {} at epoch {} at +{} ms, after {pod} had executed at epoch {e} (+{t} ms)",
                        ev.label(&c.run_id),
                        c.pod,
                        c.step,
                        c.epoch,
                        c.t_ms
                    ));
                }
            }
            Some((e, _, _)) if c.epoch <= *e => {}
            _ => {
                newest.insert(&c.run_id, (c.epoch, &c.pod, c.t_ms));
            }
        }
    }
    // Cross-check: transitions written by a pod that did not hold the epoch.
    for a in &ev.store {
        let owner_at: HashMap<i64, &str> = a
            .claims
            .iter()
            .map(|c| (c.epoch, c.to_pod.as_str()))
            .collect();
        for t in &a.transitions {
            let Some(pod) = t.pod.as_deref().filter(|p| p.starts_with("pod-")) else {
                continue;
            };
            if let Some(owner) = owner_at.get(&t.epoch)
                && *owner != pod
                && t.from == RunState::Running
                && !reaped(t)
                && t.to != RunState::Lost
            {
                out.push(format!(
                    "{}: {pod} wrote {} -> {} at epoch {}, which {owner} held (store record)",
                    ev.label(&a.run.id),
                    t.from,
                    t.to,
                    t.epoch
                ));
            }
        }
    }
    pass_or_fail(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(t_ms: u64, epoch: i64, pod: &str) -> WitnessCall {
        WitnessCall {
            t_ms,
            run_id: "run-1".into(),
            step: "begin".into(),
            attempt: 1,
            epoch,
            pod: pod.into(),
        }
    }

    fn kill(t_ms: u64, pod: &str) -> FiredFault {
        FiredFault {
            index: 0,
            action: Action::Kill,
            pod: Some(pod.into()),
            run_id: None,
            at_ms: i64::try_from(t_ms).unwrap_or_default(),
            t_ms,
            owned: Vec::new(),
            duration_ms: None,
        }
    }

    /// The witness half of `no_false_deaths`: side effects that move to
    /// another pod at a newer epoch are a takeover, wrong unless a fault
    /// could have downed the first pod before it.
    #[test]
    fn a_takeover_the_witness_saw_from_an_untouched_pod_is_a_false_death() {
        let mut ev = Evidence {
            witness: vec![call(100, 1, "pod-1"), call(900, 2, "pod-2")],
            ..Default::default()
        };
        let o = no_false_deaths(&ev);
        assert_eq!(o.status, Status::Fail);
        assert!(
            o.evidence[0].contains("taken from pod-1 (epoch 1) by pod-2 (epoch 2)"),
            "{:?}",
            o.evidence
        );
        ev.faults = vec![kill(500, "pod-1")];
        assert_eq!(no_false_deaths(&ev).status, Status::Pass);
        // A fault after the takeover excuses nothing.
        ev.faults = vec![kill(950, "pod-1")];
        assert_eq!(no_false_deaths(&ev).status, Status::Fail);
    }
}
