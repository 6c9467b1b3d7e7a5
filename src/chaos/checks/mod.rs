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
//!
//! This module holds the evidence and the verdict types, the helpers the
//! checkers share and [`run_all`]; the checkers themselves live one family
//! of invariants a module: `outcomes` (terminal states), `streams`,
//! `executions` (side effects and outputs), `reaper`, `deaths` (liveness)
//! and `ownership` (claims and fencing).

mod consumer;
mod deaths;
mod durable;
mod executions;
mod explained;
mod gray;
mod outcomes;
mod ownership;
mod reaper;
mod streams;

use super::history::Event;
use super::scenario::{Action, AttachKind, CheckName};
use crate::client::StreamEvent;
use crate::engine::run::{Chunk, RunRecord, RunState, StepStatus, TransitionRecord};
use crate::engine::store::liveness::Death;
use crate::engine::store::{ClaimRecord, EffectRecord};
use crate::engine::workflow::{
    REDACTED, StepDef, StepKind, WITNESS_URL, Workflow, WorkflowRegistry,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

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
    /// When the API acknowledged it (runner ms).
    #[serde(default)]
    pub t_ms: u64,
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
    /// A pause whose pod held SQLite's write lock as it stopped, as the
    /// runner's own tries found: the whole store froze with it.
    #[serde(default)]
    pub froze_store: bool,
    /// A link fault's link and parameters (latency, direction...).
    #[serde(default)]
    pub link: Option<crate::chaos::scenario::LinkSpec>,
    /// For a power cut: the pods it killed (every SQLite pod, which all
    /// hold the database open; none on PostgreSQL, where the server goes).
    #[serde(default)]
    pub killed: Vec<String>,
}

impl FiredFault {
    /// A fault on a run's client link (a slow consumer), not on a pod's
    /// store link: it excuses nothing the store-link checks judge.
    pub fn on_client_link(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.on == crate::chaos::scenario::LinkName::Client)
    }
}

/// One answer of a pod's `/readyz` to the runner's probes while a link
/// fault was on it (only changes are recorded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadyProbe {
    pub t_ms: u64,
    pub pod: String,
    /// None: no answer within a second.
    pub ready: Option<bool>,
}

/// A pod's resident memory as the runner read it from the host's kernel
/// around a client-link fault: `baseline` just before it, `fault` every
/// 250 ms while it lasted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemorySample {
    pub t_ms: u64,
    /// The fault's index.
    pub index: usize,
    pub pod: String,
    pub phase: String,
    pub rss_kib: u64,
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
    /// The runner's probes of pods' readiness during link faults.
    pub ready: Vec<ReadyProbe>,
    /// The pods' resident memory around client-link faults.
    pub memory: Vec<MemorySample>,
    /// How much a pod's memory may grow while a client link is hurt (MiB).
    pub memory_bound_mib: u64,
    /// Why the runner could not see everything it needed (then the verdict
    /// is unknown, not pass).
    pub blind: Vec<String>,
    /// The system under test when it is not Vigil's own pods: its store is
    /// not read, and it may report no ownership epochs.
    pub target: Option<crate::chaos::target::Capabilities>,
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
                    ev.target = field(e, "target")?;
                    // Histories from before the bound existed: the default.
                    ev.memory_bound_mib =
                        field::<Option<u64>>(e, "memory_bound_mib")?.unwrap_or(64);
                }
                "submit" => ev.submitted.push(Submitted {
                    name: field(e, "run")?,
                    run_id: field(e, "run_id")?,
                    workflow: field(e, "workflow")?,
                    t_ms: e.t_ms,
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
                    froze_store: false,
                    link: field(e, "link")?,
                    killed: Vec::new(),
                }),
                "power_cut" => {
                    let killed: Vec<String> = field(e, "killed")?;
                    if let Some(f) = ev
                        .faults
                        .iter_mut()
                        .rev()
                        .find(|f| f.action == Action::LoseUnsynced)
                    {
                        f.killed = killed;
                    }
                }
                "ready" => ev.ready.push(ReadyProbe {
                    t_ms: e.t_ms,
                    pod: field(e, "pod")?,
                    ready: field(e, "ready")?,
                }),
                "memory" => ev.memory.push(MemorySample {
                    t_ms: e.t_ms,
                    index: field(e, "index")?,
                    pod: field(e, "pod")?,
                    phase: field(e, "phase")?,
                    rss_kib: field(e, "rss_kib")?,
                }),
                "store_frozen" => {
                    let index: usize = field(e, "index")?;
                    if let Some(f) = ev.faults.iter_mut().find(|f| f.index == index) {
                        f.froze_store = true;
                    }
                }
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

/// Why a check cannot apply to the target under test: one that judges
/// only Vigil's store records, or one that needs ownership epochs the
/// target does not report. None for Vigil's own pods.
fn not_for_target(ev: &Evidence, name: CheckName) -> Option<Outcome> {
    let t = ev.target.as_ref()?;
    match name {
        CheckName::RawOutputsDownstream | CheckName::RetriesAgree | CheckName::NoHealthyReaped => {
            Some(not_applicable(&format!(
                "it judges the engine's own store records (step outputs, reaper transitions), and \
                 target {:?}'s store is not read",
                t.name
            )))
        }
        CheckName::SelfFenced => Some(not_applicable(&format!(
            "it judges Vigil's own pods' leases and readiness, and target {:?} is not Vigil",
            t.name
        ))),
        CheckName::ClaimedOnce | CheckName::Fencing | CheckName::NoFalseDeaths if !t.epochs => {
            Some(not_applicable(&format!(
                "it tells owners apart by ownership epoch, and target {:?} reports none \
                 (epochs = false)",
                t.name
            )))
        }
        _ => None,
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
            let o = not_for_target(ev, name).unwrap_or_else(|| match name {
                CheckName::TerminalOnce => outcomes::terminal_once(ev, workflows),
                CheckName::NoGhosts => outcomes::no_ghosts(ev, workflows),
                CheckName::StreamExactlyOnce => streams::stream_exactly_once(ev, workflows),
                CheckName::ExecutionsBounded => executions::executions_bounded(ev, workflows),
                CheckName::RawOutputsDownstream => {
                    executions::raw_outputs_downstream(ev, workflows)
                }
                CheckName::NoHealthyReaped => reaper::no_healthy_reaped(ev),
                CheckName::RetriesAgree => reaper::retries_agree(ev),
                CheckName::DeathDetected => deaths::death_detected(ev),
                CheckName::ClaimedOnce => ownership::claimed_once(ev),
                CheckName::Fencing => ownership::fencing(ev),
                CheckName::NoFalseDeaths => deaths::no_false_deaths(ev),
                CheckName::SelfFenced => gray::self_fenced(ev),
                CheckName::ConsumerIsolated => consumer::consumer_isolated(ev, workflows),
                CheckName::OutcomesExplained => explained::outcomes_explained(ev, workflows),
                CheckName::DurableAcks => durable::durable_acks(ev),
            });
            CheckResult {
                name,
                status: o.status,
                evidence: o.evidence,
            }
        })
        .collect()
}
