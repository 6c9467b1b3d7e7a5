//! Scenario files: the cluster, the workload, the faults and the checks.
//!
//! Parsing is strict and happens before anything starts: an unknown key, a
//! bad trigger, a run or workflow that does not exist is an error naming the
//! file, the line and the field.

use crate::engine::workflow::WorkflowRegistry;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{file}:{line}: {field}: {problem}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    #[default]
    Process,
    Docker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterCfg {
    /// Pods `pod-1` .. `pod-N`.
    pub pods: Spanned<u32>,
    #[serde(default = "default_store")]
    pub store: StoreKind,
    #[serde(default)]
    pub driver: DriverKind,
    /// Extra `vigil pod` arguments for every pod.
    #[serde(default)]
    pub pod_args: Vec<String>,
    /// A lanes file, relative to the scenario file.
    pub lanes: Option<String>,
    /// Kill switches set before the workload starts.
    #[serde(default)]
    pub switches: BTreeMap<String, bool>,
}

fn default_store() -> StoreKind {
    StoreKind::Sqlite
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachKind {
    /// Attached right after submit, through every fault.
    Early,
    /// Attached after the cluster went quiet: sees only the final stream.
    Late,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Runs are named `{name}1`, `{name}2`, ... for triggers and reports.
    pub name: String,
    pub workflow: Spanned<String>,
    #[serde(default = "one")]
    pub runs: u32,
    /// Pause between two submissions (ms).
    #[serde(default)]
    pub interval_ms: u64,
    /// Submit after this offset from the start (ms).
    #[serde(default)]
    pub start_ms: u64,
    #[serde(default)]
    pub attach: Vec<AttachKind>,
    /// Submit to this pod (default: a pod drawn from the seed).
    pub to: Option<Spanned<String>>,
    #[serde(default)]
    pub input: Option<toml::Value>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// SIGKILL.
    Kill,
    /// SIGTERM (graceful stop).
    Term,
    /// SIGSTOP for `duration_ms`, then SIGCONT.
    Pause,
    /// Start a pod that exited, with the same id.
    Restart,
    /// Set a kill switch (`switch`, `value`).
    Switch,
    /// Stop the run's machinery on its owner, keeping ownership (chaos hook).
    Stall,
    /// Stop the PostgreSQL server for `duration_ms` (throwaway server only).
    StoreOutage,
    /// Send the run's first owner's completion after the run ended (seed 002).
    LateComplete,
    /// Disconnect the pod's container from the scenario network for
    /// `duration_ms`, then reconnect it (Docker driver only).
    Partition,
    /// Freeze the PostgreSQL server for `duration_ms`: SIGSTOP every process
    /// of the throwaway server (process driver) or pause its container
    /// (Docker driver), then let it go on. Connections stay open and hang.
    StoreFreeze,
    /// Hold run `run`'s row locked (`SELECT ... FOR UPDATE` in an open
    /// transaction) for `duration_ms`. With a target pod the lock is taken
    /// by a session of that pod (its chaos hook; pause it next and it is a
    /// pod frozen mid-transaction); without one, by a session of the
    /// runner's own (an operator's open `psql`). PostgreSQL only.
    RowLock,
    /// Step the target pod's wall clock by `offset_ms` (negative: behind),
    /// as a drifting host or an NTP step does (chaos hook).
    ClockSkew,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Term => "term",
            Action::Pause => "pause",
            Action::Restart => "restart",
            Action::Switch => "switch",
            Action::Stall => "stall",
            Action::StoreOutage => "store_outage",
            Action::LateComplete => "late_complete",
            Action::Partition => "partition",
            Action::StoreFreeze => "store_freeze",
            Action::RowLock => "row_lock",
            Action::ClockSkew => "clock_skew",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultCfg {
    pub action: Spanned<Action>,
    /// `owner_of:RUN`, `random`, `pod-N` or `last_killed`.
    pub target: Option<Spanned<String>>,
    /// Fire at this offset from the start (ms).
    pub at_ms: Option<u64>,
    /// Fire once run `run` has streamed this many chunks.
    pub after_chunk: Option<u32>,
    /// Fire once run `run` is terminal.
    #[serde(default)]
    pub after_end: bool,
    pub run: Option<Spanned<String>>,
    pub duration_ms: Option<u64>,
    /// For kill and term: start the pod again, same id, after this long.
    pub restart_after_ms: Option<u64>,
    pub switch: Option<Spanned<String>>,
    pub value: Option<bool>,
    /// For clock_skew: how far the pod's wall clock is stepped (ms).
    pub offset_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    TerminalOnce,
    NoGhosts,
    StreamExactlyOnce,
    ExecutionsBounded,
    RawOutputsDownstream,
    NoHealthyReaped,
    RetriesAgree,
    DeathDetected,
    ClaimedOnce,
    Fencing,
    NoFalseDeaths,
}

impl CheckName {
    pub const ALL: [CheckName; 11] = [
        CheckName::TerminalOnce,
        CheckName::NoGhosts,
        CheckName::StreamExactlyOnce,
        CheckName::ExecutionsBounded,
        CheckName::RawOutputsDownstream,
        CheckName::NoHealthyReaped,
        CheckName::RetriesAgree,
        CheckName::DeathDetected,
        CheckName::ClaimedOnce,
        CheckName::Fencing,
        CheckName::NoFalseDeaths,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::TerminalOnce => "terminal_once",
            CheckName::NoGhosts => "no_ghosts",
            CheckName::StreamExactlyOnce => "stream_exactly_once",
            CheckName::ExecutionsBounded => "executions_bounded",
            CheckName::RawOutputsDownstream => "raw_outputs_downstream",
            CheckName::NoHealthyReaped => "no_healthy_reaped",
            CheckName::RetriesAgree => "retries_agree",
            CheckName::DeathDetected => "death_detected",
            CheckName::ClaimedOnce => "claimed_once",
            CheckName::Fencing => "fencing",
            CheckName::NoFalseDeaths => "no_false_deaths",
        }
    }

    pub fn invariant(self) -> &'static str {
        match self {
            CheckName::TerminalOnce => {
                "every run reaches exactly one terminal state; none in flight once quiet"
            }
            CheckName::NoGhosts => {
                "no transition out of a terminal state unless the policy allows it"
            }
            CheckName::StreamExactlyOnce => {
                "every attacher sees each chunk of the final run once, in order (reset honoured)"
            }
            CheckName::ExecutionsBounded => {
                "a step executes at most max_retries + 1 times; never again after it succeeded"
            }
            CheckName::RawOutputsDownstream => {
                "downstream steps see their predecessors' raw outputs, on any pod"
            }
            CheckName::NoHealthyReaped => "the reaper never times out a healthy run, on any lane",
            CheckName::RetriesAgree => {
                "every run the reaper timed out with retries left has its retry queued"
            }
            CheckName::DeathDetected => "a dead pod is detected within the liveness bound",
            CheckName::ClaimedOnce => "each orphan is claimed by exactly one survivor",
            CheckName::Fencing => "a pod that lost its claim writes nothing for the run afterwards",
            CheckName::NoFalseDeaths => {
                "no pod is declared dead unless it was stopped, killed or cut off (or the store was)"
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksCfg {
    /// How long the healed cluster may take to finish every run (ms).
    #[serde(default = "default_quiet")]
    pub quiet_timeout_ms: u64,
    /// A killed, stopped or paused pod must be found dead within this (ms).
    #[serde(default = "default_detection")]
    pub detection_bound_ms: u64,
    /// Checks not to run (with a reason in a comment, please).
    #[serde(default)]
    pub skip: Vec<CheckName>,
}

fn default_quiet() -> u64 {
    60_000
}

fn default_detection() -> u64 {
    5_000
}

impl Default for ChecksCfg {
    fn default() -> Self {
        ChecksCfg {
            quiet_timeout_ms: default_quiet(),
            detection_bound_ms: default_detection(),
            skip: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    cluster: ClusterCfg,
    #[serde(default, rename = "workload")]
    workloads: Vec<Workload>,
    #[serde(default, rename = "fault")]
    faults: Vec<FaultCfg>,
    #[serde(default)]
    checks: ChecksCfg,
}

/// Who a fault hits, as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    OwnerOf(String),
    Pod(String),
    /// A draw from the seed, resolved against the live pods (sorted) when it fires.
    Random(u64),
    LastKilled,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    AtMs(u64),
    AfterChunk { run: String, chunks: u32 },
    AfterEnd { run: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFault {
    pub index: usize,
    pub action: Action,
    pub trigger: Trigger,
    pub target: Target,
    pub duration_ms: Option<u64>,
    pub restart_after_ms: Option<u64>,
    pub switch: Option<(String, bool)>,
    pub offset_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    pub name: String,
    pub workflow: String,
    pub submit_at_ms: u64,
    /// Index into the pods (sorted) the run is submitted to.
    pub pod: String,
    pub attach: Vec<AttachKind>,
    pub input: serde_json::Value,
}

/// A parsed, validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub pods: u32,
    pub store: StoreKind,
    pub driver: DriverKind,
    pub pod_args: Vec<String>,
    pub lanes: Option<PathBuf>,
    pub switches: BTreeMap<String, bool>,
    workloads: Vec<Workload>,
    faults: Vec<FaultCfg>,
    pub checks: ChecksCfg,
}

/// The schedule a seed gives: who gets which run when, which fault hits
/// whom at which moment. Same seed, same plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub runs: Vec<PlannedRun>,
    pub faults: Vec<PlannedFault>,
}

pub fn pod_ids(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("pod-{i}")).collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.matches('\n').count() + 1)
}

impl Scenario {
    pub fn load(file: &Path, workflows: &WorkflowRegistry) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(file).map_err(|source| ScenarioError::Read {
            file: file.display().to_string(),
            source,
        })?;
        Scenario::parse(file, &text, workflows)
    }

    pub fn parse(
        file: &Path,
        text: &str,
        workflows: &WorkflowRegistry,
    ) -> Result<Scenario, ScenarioError> {
        let fname = file.display().to_string();
        let raw: RawScenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            file: fname.clone(),
            source,
        })?;
        let err =
            |span: std::ops::Range<usize>, field: &str, problem: String| ScenarioError::Invalid {
                file: fname.clone(),
                line: line_of(text, span.start),
                field: field.to_owned(),
                problem,
            };
        let whole = 0..0;
        if raw.name.is_empty()
            || raw
                .name
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(err(
                whole.clone(),
                "name",
                format!("{:?}: use letters, digits, - and _", raw.name),
            ));
        }
        let pods = *raw.cluster.pods.get_ref();
        if !(1..=9).contains(&pods) {
            return Err(err(
                raw.cluster.pods.span(),
                "cluster.pods",
                format!("{pods}: between 1 and 9"),
            ));
        }
        for name in raw.cluster.switches.keys() {
            if crate::engine::switches::spec(name).is_err() {
                return Err(err(
                    whole.clone(),
                    "cluster.switches",
                    format!("unknown switch {name:?}"),
                ));
            }
        }
        let ids = pod_ids(pods);
        let mut run_names = Vec::new();
        let mut run_name_set = std::collections::HashSet::new();
        for (i, w) in raw.workloads.iter().enumerate() {
            let field = |f: &str| format!("workload[{i}].{f}");
            if workflows.get(w.workflow.get_ref()).is_err() {
                let known: Vec<&str> = workflows.names().collect();
                return Err(err(
                    w.workflow.span(),
                    &field("workflow"),
                    format!(
                        "unknown workflow {:?}; known: {}",
                        w.workflow.get_ref(),
                        known.join(", ")
                    ),
                ));
            }
            if w.runs == 0 || w.runs > 500 {
                return Err(err(
                    w.workflow.span(),
                    &field("runs"),
                    format!("{}: between 1 and 500", w.runs),
                ));
            }
            // The last run's submit time must be a number of ms (the plan
            // adds start_ms + k * interval_ms).
            if u64::from(w.runs - 1)
                .checked_mul(w.interval_ms)
                .and_then(|t| t.checked_add(w.start_ms))
                .is_none()
            {
                return Err(err(
                    w.workflow.span(),
                    &field("interval_ms"),
                    format!(
                        "start_ms {} + {} runs every {} ms is past the end of time",
                        w.start_ms, w.runs, w.interval_ms
                    ),
                ));
            }
            if let Some(to) = &w.to
                && !ids.contains(to.get_ref())
            {
                return Err(err(
                    to.span(),
                    &field("to"),
                    format!("no pod {:?}; pods are {}", to.get_ref(), ids.join(", ")),
                ));
            }
            for k in 1..=w.runs {
                let n = format!("{}{k}", w.name);
                if !run_name_set.insert(n.clone()) {
                    return Err(err(
                        w.workflow.span(),
                        &field("name"),
                        format!("run name {n:?} is used twice"),
                    ));
                }
                run_names.push(n);
            }
        }
        for (i, f) in raw.faults.iter().enumerate() {
            let field = |x: &str| format!("fault[{i}].{x}");
            let action = *f.action.get_ref();
            let span = f.action.span();
            let triggers = usize::from(f.at_ms.is_some())
                + usize::from(f.after_chunk.is_some())
                + usize::from(f.after_end);
            if triggers != 1 {
                return Err(err(
                    span,
                    &field("at_ms|after_chunk|after_end"),
                    "give exactly one trigger".into(),
                ));
            }
            if (f.after_chunk.is_some() || f.after_end) && f.run.is_none() {
                return Err(err(
                    span,
                    &field("run"),
                    "after_chunk and after_end need the run they watch".into(),
                ));
            }
            if let Some(r) = &f.run
                && !run_name_set.contains(r.get_ref())
            {
                return Err(err(
                    r.span(),
                    &field("run"),
                    format!(
                        "no run {:?}; runs are {}",
                        r.get_ref(),
                        run_names.join(", ")
                    ),
                ));
            }
            let needs_target = matches!(
                action,
                Action::Kill
                    | Action::Term
                    | Action::Pause
                    | Action::Restart
                    | Action::Stall
                    | Action::Partition
                    | Action::ClockSkew
            );
            let may_target = needs_target || action == Action::RowLock;
            match (&f.target, may_target) {
                (None, true) if needs_target => {
                    return Err(err(
                        span,
                        &field("target"),
                        "this action needs a target".into(),
                    ));
                }
                (Some(t), false) => {
                    return Err(err(
                        t.span(),
                        &field("target"),
                        "this action takes no target".into(),
                    ));
                }
                (Some(t), true) => {
                    parse_target(t.get_ref(), &ids, &run_names, 0)
                        .map_err(|p| err(t.span(), &field("target"), p))?;
                    if action == Action::Stall && !t.get_ref().starts_with("owner_of:") {
                        return Err(err(
                            t.span(),
                            &field("target"),
                            "stall targets owner_of:RUN".into(),
                        ));
                    }
                }
                (None, _) => {}
            }
            if action == Action::ClockSkew && f.offset_ms.is_none() {
                return Err(err(
                    span,
                    &field("offset_ms"),
                    "clock_skew needs offset_ms (negative: behind)".into(),
                ));
            }
            if action != Action::ClockSkew && f.offset_ms.is_some() {
                return Err(err(
                    span,
                    &field("offset_ms"),
                    "only clock_skew takes offset_ms".into(),
                ));
            }
            if action == Action::RowLock && f.run.is_none() {
                return Err(err(
                    span,
                    &field("run"),
                    "row_lock needs the run whose row it locks".into(),
                ));
            }
            if action == Action::Pause && f.duration_ms.is_none() {
                return Err(err(
                    span,
                    &field("duration_ms"),
                    "pause needs duration_ms".into(),
                ));
            }
            if action == Action::Partition {
                if f.duration_ms.is_none() {
                    return Err(err(
                        span,
                        &field("duration_ms"),
                        "partition needs duration_ms".into(),
                    ));
                }
                if raw.cluster.driver != DriverKind::Docker {
                    return Err(err(
                        span,
                        &field("action"),
                        "partition cuts a container from its network: it needs \
                         driver = \"docker\" in [cluster]"
                            .into(),
                    ));
                }
            }
            if matches!(
                action,
                Action::StoreOutage | Action::StoreFreeze | Action::RowLock | Action::ClockSkew
            ) {
                if f.duration_ms.is_none() && action != Action::ClockSkew {
                    return Err(err(
                        span,
                        &field("duration_ms"),
                        format!("{} needs duration_ms", action.as_str()),
                    ));
                }
                if raw.cluster.store != StoreKind::Postgres {
                    let why = if action == Action::ClockSkew {
                        " (pods on one SQLite file share one host, and its clock)"
                    } else {
                        ""
                    };
                    return Err(err(
                        span,
                        &field("action"),
                        format!("{} needs store = \"postgres\"{why}", action.as_str()),
                    ));
                }
            }
            if action == Action::Switch {
                let Some(name) = &f.switch else {
                    return Err(err(
                        span,
                        &field("switch"),
                        "switch needs switch and value".into(),
                    ));
                };
                if crate::engine::switches::spec(name.get_ref()).is_err() {
                    return Err(err(
                        name.span(),
                        &field("switch"),
                        format!("unknown switch {:?}", name.get_ref()),
                    ));
                }
                if f.value.is_none() {
                    return Err(err(
                        span,
                        &field("value"),
                        "switch needs value = true|false".into(),
                    ));
                }
            }
            if action == Action::LateComplete && f.run.is_none() {
                return Err(err(
                    span,
                    &field("run"),
                    "late_complete needs the run".into(),
                ));
            }
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let lanes = raw.cluster.lanes.as_ref().map(|l| base.join(l));
        if let Some(l) = &lanes
            && !l.exists()
        {
            return Err(err(
                whole,
                "cluster.lanes",
                format!("{} does not exist", l.display()),
            ));
        }
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            file: file.to_owned(),
            pods,
            store: raw.cluster.store,
            driver: raw.cluster.driver,
            pod_args: raw.cluster.pod_args,
            lanes,
            switches: raw.cluster.switches,
            workloads: raw.workloads,
            faults: raw.faults,
            checks: raw.checks,
        })
    }

    /// The schedule `seed` gives.
    pub fn plan(&self, seed: u64) -> Plan {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ids = pod_ids(self.pods);
        let run_names: Vec<String> = self
            .workloads
            .iter()
            .flat_map(|w| (1..=w.runs).map(move |k| format!("{}{k}", w.name)))
            .collect();
        let mut runs = Vec::new();
        for w in &self.workloads {
            for k in 0..w.runs {
                let pod = match &w.to {
                    Some(t) => t.get_ref().clone(),
                    None => ids[rng.random_range(0..ids.len())].clone(),
                };
                runs.push(PlannedRun {
                    name: format!("{}{}", w.name, k + 1),
                    workflow: w.workflow.get_ref().clone(),
                    // parse refuses workloads whose last run overflows.
                    submit_at_ms: w
                        .start_ms
                        .saturating_add(u64::from(k).saturating_mul(w.interval_ms)),
                    pod,
                    attach: w.attach.clone(),
                    input: w
                        .input
                        .clone()
                        .and_then(|v| serde_json::to_value(v).ok())
                        .unwrap_or_else(
                            || serde_json::json!({ "run": format!("{}{}", w.name, k + 1) }),
                        ),
                });
            }
        }
        let faults = self
            .faults
            .iter()
            .enumerate()
            .map(|(index, f)| {
                let draw: u64 = rng.random();
                let target = f
                    .target
                    .as_ref()
                    .and_then(|t| parse_target(t.get_ref(), &ids, &run_names, draw).ok())
                    .unwrap_or(Target::None);
                let trigger = match (f.at_ms, f.after_chunk, &f.run) {
                    (Some(ms), _, _) => Trigger::AtMs(ms),
                    (None, Some(n), Some(r)) => Trigger::AfterChunk {
                        run: r.get_ref().clone(),
                        chunks: n,
                    },
                    (_, _, Some(r)) => Trigger::AfterEnd {
                        run: r.get_ref().clone(),
                    },
                    _ => Trigger::AtMs(0),
                };
                PlannedFault {
                    index,
                    action: *f.action.get_ref(),
                    trigger,
                    target,
                    duration_ms: f.duration_ms,
                    restart_after_ms: f.restart_after_ms,
                    offset_ms: f.offset_ms,
                    switch: f
                        .switch
                        .as_ref()
                        .map(|s| (s.get_ref().clone(), f.value.unwrap_or(true))),
                }
            })
            .collect();
        Plan { seed, runs, faults }
    }

    /// The run a `late_complete` fault is about (it has no target).
    pub fn fault_run(&self, index: usize) -> Option<String> {
        self.faults
            .get(index)
            .and_then(|f| f.run.as_ref())
            .map(|r| r.get_ref().clone())
    }
}

fn parse_target(t: &str, ids: &[String], runs: &[String], draw: u64) -> Result<Target, String> {
    if let Some(run) = t.strip_prefix("owner_of:") {
        return if runs.iter().any(|r| r == run) {
            Ok(Target::OwnerOf(run.to_owned()))
        } else {
            Err(format!("no run {run:?}; runs are {}", runs.join(", ")))
        };
    }
    match t {
        "random" => Ok(Target::Random(draw)),
        "last_killed" => Ok(Target::LastKilled),
        id if ids.iter().any(|p| p == id) => Ok(Target::Pod(id.to_owned())),
        other => Err(format!(
            "{other:?}: expected owner_of:RUN, random, last_killed or a pod ({})",
            ids.join(", ")
        )),
    }
}

/// Every `*.toml` under `path` (or `path` itself), sorted.
pub fn scenario_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> WorkflowRegistry {
        WorkflowRegistry::load_dir(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/workflows"
        )))
        .unwrap()
    }

    const OK: &str = r#"
name = "s"
[cluster]
pods = 3
[[workload]]
name = "r"
workflow = "slow_stream"
runs = 2
attach = ["early", "late"]
[[fault]]
action = "kill"
target = "owner_of:r1"
after_chunk = 2
run = "r1"
[[fault]]
action = "pause"
target = "random"
at_ms = 500
duration_ms = 100
"#;

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let s = Scenario::parse(Path::new("s.toml"), OK, &reg()).unwrap();
        assert_eq!(s.plan(7), s.plan(7));
        assert_eq!(s.plan(7).faults[0].target, Target::OwnerOf("r1".into()));
        let differs =
            (0..20).any(|seed| s.plan(seed).faults[1].target != s.plan(7).faults[1].target);
        assert!(differs, "the seed drives the random draws");
    }

    #[test]
    fn malformed_scenarios_name_file_line_and_field() {
        let cases = [
            (
                OK.replace("pods = 3", "pods = 3\nbogus = 1"),
                "s.toml",
                "bogus",
            ),
            (
                OK.replace("\"slow_stream\"", "\"nope\""),
                "s.toml:7: workload[0].workflow",
                "unknown workflow \"nope\"",
            ),
            (
                OK.replace("owner_of:r1", "owner_of:r9"),
                "s.toml:12: fault[0].target",
                "no run \"r9\"",
            ),
            (
                OK.replace("target = \"random\"", "target = \"pod-7\""),
                "s.toml:17: fault[1].target",
                "pod-7",
            ),
            (
                OK.replace("after_chunk = 2\n", ""),
                "fault[0].at_ms|after_chunk|after_end",
                "exactly one trigger",
            ),
            (
                OK.replace("duration_ms = 100\n", ""),
                "fault[1].duration_ms",
                "pause needs",
            ),
            (
                OK.replace("action = \"kill\"", "action = \"explode\""),
                "s.toml",
                "explode",
            ),
        ];
        for (text, at, problem) in cases {
            let e = Scenario::parse(Path::new("s.toml"), &text, &reg())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(at) && e.contains(problem),
                "{at:?} / {problem:?} not in: {e}"
            );
        }
    }
}
