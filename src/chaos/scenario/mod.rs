//! Scenario files: the cluster, the workload, the faults and the checks.
//!
//! Parsing is strict and happens before anything starts: an unknown key, a
//! bad trigger, a run or workflow that does not exist is an error naming the
//! file, the line and the field.
//!
//! This module holds the file's format and its parsing and validation;
//! `plan` the schedule a seed gives, `tests` the unit tests.

mod action;
mod check_name;
mod plan;

pub use action::{Action, Direction, LinkCfg, LinkName, LinkSpec};
pub use check_name::CheckName;

pub use plan::{Plan, PlannedFault, PlannedRun, Target, Trigger};

use crate::engine::workflow::WorkflowRegistry;
use plan::parse_target;
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
    /// A system Vigil did not build: its target file, relative to the
    /// scenario file (docs/targets.md). Default: Vigil's own pods.
    pub target: Option<Spanned<String>>,
    /// The store's files on a disk of the runner's (storage faults).
    pub store_disk: Option<crate::chaos::disk::StoreDisk>,
    /// The stores this scenario judges (default: any): on another it is
    /// not applicable.
    pub stores: Option<Vec<StoreKind>>,
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
    /// Fire once the witness saw this step of run `run` (its first call).
    pub after_step: Option<Spanned<String>>,
    pub run: Option<Spanned<String>>,
    pub duration_ms: Option<u64>,
    /// For kill and term: start the pod again, same id, after this long.
    pub restart_after_ms: Option<u64>,
    pub switch: Option<Spanned<String>>,
    pub value: Option<bool>,
    /// For clock_skew: how far the pod's wall clock is stepped (ms).
    pub offset_ms: Option<i64>,
    /// For slow_disk: how long each write and fsync waits (ms).
    pub delay_ms: Option<u64>,
    /// For the link faults: which link and how (see [`LinkCfg`]).
    pub link: Option<Spanned<LinkCfg>>,
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
    /// Checks whose applicability the faults do not force (whether a pod
    /// re-claims a run during a freeze is timing): a pass and a "not
    /// applicable" read alike in the normalized report; a failure still
    /// fails, and report.json keeps the exact status.
    #[serde(default)]
    pub unforced: Vec<CheckName>,
    /// While a client link is hurt (a slow consumer), a pod's resident
    /// memory may grow at most this much over its baseline (MiB).
    #[serde(default = "default_memory_bound")]
    pub memory_bound_mib: u64,
}

fn default_quiet() -> u64 {
    60_000
}

fn default_detection() -> u64 {
    5_000
}

fn default_memory_bound() -> u64 {
    64
}

impl Default for ChecksCfg {
    fn default() -> Self {
        ChecksCfg {
            quiet_timeout_ms: default_quiet(),
            detection_bound_ms: default_detection(),
            skip: Vec::new(),
            unforced: Vec::new(),
            memory_bound_mib: default_memory_bound(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    /// The workflows directory, relative to this file (see
    /// [`workflows_dir`]); read before the rest, validated there.
    #[serde(default)]
    #[allow(dead_code)]
    workflows: Option<String>,
    cluster: ClusterCfg,
    #[serde(default, rename = "workload")]
    workloads: Vec<Workload>,
    #[serde(default, rename = "fault")]
    faults: Vec<FaultCfg>,
    #[serde(default)]
    checks: ChecksCfg,
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
    /// The system under test when it is not Vigil's own pods.
    pub target: Option<std::sync::Arc<crate::chaos::target::TargetDef>>,
    workloads: Vec<Workload>,
    faults: Vec<FaultCfg>,
    pub checks: ChecksCfg,
    /// Where the store's files live when a storage fault needs a disk of
    /// the runner's: as `[cluster] store_disk` says, else the default disk
    /// when a fault needs one.
    pub store_disk: Option<crate::chaos::disk::StoreDisk>,
    /// `[cluster] stores`: the stores this scenario judges (None: any).
    pub stores: Option<Vec<StoreKind>>,
}

pub fn pod_ids(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("pod-{i}")).collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |t| t.matches('\n').count() + 1)
}

/// Where the workflows of the scenario in `file` (whose text is `text`)
/// are: `flag` (`--workflows`) if given; else its `workflows` key, relative
/// to the file; else a `workflows/` directory beside it. So a scenario
/// directory is self-contained and runs from any working directory.
pub fn workflows_dir(file: &Path, text: &str, flag: Option<&Path>) -> Result<PathBuf, String> {
    // Absolute: pods and containers resolve it from elsewhere.
    resolve_workflows(file, text, flag).map(|d| std::path::absolute(&d).unwrap_or(d))
}

fn resolve_workflows(file: &Path, text: &str, flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(f) = flag {
        return Ok(f.to_owned());
    }
    let here = file.parent().unwrap_or(Path::new("."));
    let key = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| t.get("workflows").cloned());
    match key {
        Some(toml::Value::String(rel)) => {
            let dir = here.join(&rel);
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(format!(
                    "{}: workflows = {rel:?}: no directory {} (relative to the scenario file)",
                    file.display(),
                    dir.display()
                ))
            }
        }
        Some(other) => Err(format!(
            "{}: workflows: expected a directory path as a string, got {}",
            file.display(),
            other.type_str()
        )),
        None if here.join("workflows").is_dir() => Ok(here.join("workflows")),
        None => Err(format!(
            "{}: no workflows: add workflows = \"DIR\" (relative to the file), put them in {}, \
             or pass --workflows",
            file.display(),
            here.join("workflows").display()
        )),
    }
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
        Scenario::parse_with_target(file, text, workflows, None)
    }

    /// [`Scenario::parse`], with the target file at `target` instead of
    /// where the scenario's `target` key points (a results directory keeps
    /// a copy of both: `vigil chaos check`).
    pub fn parse_with_target(
        file: &Path,
        text: &str,
        workflows: &WorkflowRegistry,
        target: Option<&Path>,
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
                + usize::from(f.after_end)
                + usize::from(f.after_step.is_some());
            if triggers != 1 {
                return Err(err(
                    span,
                    &field("at_ms|after_chunk|after_end|after_step"),
                    "give exactly one trigger".into(),
                ));
            }
            if (f.after_chunk.is_some() || f.after_end || f.after_step.is_some()) && f.run.is_none()
            {
                return Err(err(
                    span,
                    &field("run"),
                    "after_chunk, after_end and after_step need the run they watch".into(),
                ));
            }
            if let (Some(step), Some(run)) = (&f.after_step, &f.run)
                && run_name_set.contains(run.get_ref())
            {
                let wf = raw
                    .workloads
                    .iter()
                    .find(|w| (1..=w.runs).any(|k| format!("{}{k}", w.name) == *run.get_ref()))
                    .and_then(|w| workflows.get(w.workflow.get_ref()).ok());
                let witnessed = wf.is_some_and(|wf| {
                    wf.steps
                        .iter()
                        .any(|s| s.id == *step.get_ref() && crate::chaos::checks::witnessed(s))
                });
                if !witnessed {
                    return Err(err(
                        step.span(),
                        &field("after_step"),
                        format!(
                            "{:?} is not a step of {}'s workflow that calls the witness",
                            step.get_ref(),
                            run.get_ref()
                        ),
                    ));
                }
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
            let may_target = needs_target
                || action.is_link()
                || matches!(action, Action::RowLock | Action::WriteLock);
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
            action::check_link(action, f, &raw.cluster)
                .map_err(|(at, k, p)| err(at.unwrap_or(span.clone()), &field(k), p))?;
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
            if action == Action::SlowDisk && f.delay_ms.is_none_or(|d| d == 0) {
                return Err(err(
                    span,
                    &field("delay_ms"),
                    "slow_disk needs delay_ms above 0 (how long each write and fsync waits)".into(),
                ));
            }
            if action != Action::SlowDisk && f.delay_ms.is_some() {
                return Err(err(
                    span,
                    &field("delay_ms"),
                    "only slow_disk takes delay_ms".into(),
                ));
            }
            if matches!(action, Action::DiskFull | Action::SlowDisk) && f.duration_ms.is_none() {
                return Err(err(
                    span,
                    &field("duration_ms"),
                    format!("{} needs duration_ms", action.as_str()),
                ));
            }
            if action == Action::WriteLock {
                if f.duration_ms.is_none() {
                    return Err(err(
                        span,
                        &field("duration_ms"),
                        "write_lock needs duration_ms".into(),
                    ));
                }
                if raw.cluster.store != StoreKind::Sqlite {
                    return Err(err(
                        span,
                        &field("action"),
                        "write_lock holds SQLite's one write lock: it needs store = \"sqlite\" \
                         (row_lock is PostgreSQL's)"
                            .into(),
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
        let target = match &raw.cluster.target {
            None => None,
            Some(t) => {
                let path = target.map_or_else(|| base.join(t.get_ref()), Path::to_owned);
                let def = crate::chaos::target::TargetDef::load(&path)
                    .map_err(|e| err(t.span(), "cluster.target", crate::errors::report(&e)))?;
                check_target_scenario(&raw, &def)
                    .map_err(|(span, f, p)| err(span.unwrap_or_else(|| t.span()), &f, p))?;
                Some(std::sync::Arc::new(def))
            }
        };
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
            target,
            store_disk: raw
                .cluster
                .store_disk
                .or_else(|| {
                    raw.faults
                        .iter()
                        .any(|f| f.action.get_ref().needs_disk())
                        .then(crate::chaos::disk::StoreDisk::default)
                })
                .map(|d| crate::chaos::disk::StoreDisk {
                    fuse: d.fuse || raw.faults.iter().any(|f| f.action.get_ref().needs_fuse()),
                    buffered: raw
                        .faults
                        .iter()
                        .any(|f| *f.action.get_ref() == Action::LoseUnsynced),
                    ..d
                }),
            stores: raw.cluster.stores,
            workloads: raw.workloads,
            faults: raw.faults,
            checks: raw.checks,
        })
    }
}

type Invalid = (Option<std::ops::Range<usize>>, String, String);

/// What a scenario on a foreign target may ask: its workers share a
/// PostgreSQL database and run as processes; its faults are signals and
/// store faults (the rest reach into Vigil's own pods or store); with no
/// stream to follow, it has no attachers and no chunk triggers.
fn check_target_scenario(
    raw: &RawScenario,
    def: &crate::chaos::target::TargetDef,
) -> Result<(), Invalid> {
    let who = format!("target {:?}", def.name);
    let c = &raw.cluster;
    if c.store != StoreKind::Postgres {
        return Err((
            None,
            "cluster.store".into(),
            format!("{who}: its workers share a PostgreSQL database: store = \"postgres\""),
        ));
    }
    if c.driver != DriverKind::Process {
        return Err((
            None,
            "cluster.driver".into(),
            format!("{who}: targets run on the process driver"),
        ));
    }
    for (set, field) in [
        (!c.pod_args.is_empty(), "cluster.pod_args"),
        (c.lanes.is_some(), "cluster.lanes"),
        (!c.switches.is_empty(), "cluster.switches"),
    ] {
        if set {
            return Err((
                None,
                field.into(),
                format!(
                    "{who}: {field} is for Vigil's own pods (put a worker's arguments in its target file)"
                ),
            ));
        }
    }
    for (i, w) in raw.workloads.iter().enumerate() {
        if !w.attach.is_empty() && !def.caps.streams {
            return Err((
                Some(w.workflow.span()),
                format!("workload[{i}].attach"),
                format!("{who} serves no stream to attach to (streams = false)"),
            ));
        }
    }
    for (i, f) in raw.faults.iter().enumerate() {
        let a = *f.action.get_ref();
        if !matches!(
            a,
            Action::Kill
                | Action::Term
                | Action::Pause
                | Action::Restart
                | Action::StoreOutage
                | Action::StoreFreeze
        ) {
            return Err((
                Some(f.action.span()),
                format!("fault[{i}].action"),
                format!(
                    "{who}: {} reaches into Vigil's own pods or store; a target takes kill, \
                     term, pause, restart, store_outage and store_freeze",
                    a.as_str()
                ),
            ));
        }
        if f.after_chunk.is_some() {
            return Err((
                Some(f.action.span()),
                format!("fault[{i}].after_chunk"),
                format!("{who} serves no stream: trigger on after_step (a witnessed step) instead"),
            ));
        }
    }
    Ok(())
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
mod tests;
