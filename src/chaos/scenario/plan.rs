//! Planning: the schedule a seed gives a parsed scenario (which run goes
//! to which pod when, which fault hits whom at which moment), and the
//! fault targets a scenario may name.

use super::{Action, AttachKind, Scenario, pod_ids};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

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
    AfterChunk {
        run: String,
        chunks: u32,
    },
    AfterEnd {
        run: String,
    },
    /// The witness saw run `run`'s step `step`.
    AfterStep {
        run: String,
        step: String,
    },
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
    /// slow_disk: how long each write and fsync waits (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// A link fault's link and parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<super::LinkSpec>,
}

impl PlannedFault {
    /// A link fault on a pod's link to its database (the proxy's or
    /// nftables'), not on a run's client link.
    pub fn on_store_link(&self) -> bool {
        self.action.is_link() && !self.on_client_link()
    }

    /// A link fault on a run's client link (a slow consumer).
    pub fn on_client_link(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.on == super::LinkName::Client)
    }
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

/// The schedule a seed gives: who gets which run when, which fault hits
/// whom at which moment. Same seed, same plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    pub runs: Vec<PlannedRun>,
    pub faults: Vec<PlannedFault>,
}

impl Scenario {
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
                    (None, None, Some(r)) if f.after_step.is_some() => Trigger::AfterStep {
                        run: r.get_ref().clone(),
                        step: f
                            .after_step
                            .as_ref()
                            .map(|s| s.get_ref().clone())
                            .unwrap_or_default(),
                    },
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
                    delay_ms: f.delay_ms,
                    link: f
                        .action
                        .get_ref()
                        .is_link()
                        .then(|| {
                            let cfg = f
                                .link
                                .as_ref()
                                .map(|l| l.get_ref().clone())
                                .unwrap_or_default();
                            super::LinkSpec::check(*f.action.get_ref(), &cfg).ok()
                        })
                        .flatten(),
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

pub(super) fn parse_target(
    t: &str,
    ids: &[String],
    runs: &[String],
    draw: u64,
) -> Result<Target, String> {
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
