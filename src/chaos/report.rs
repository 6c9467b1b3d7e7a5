//! Reports: the terminal summary, the results directory, the normalized
//! report tests snapshot, and JUnit for CI.

use super::checks::{CheckResult, Evidence, Status};
use super::history::Event;
use super::runner::{Outcome, Verdict};
use super::scenario::{Action, Plan, Trigger};
use crate::client::StreamEvent;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub struct Report<'a> {
    pub scenario_name: &'a str,
    pub description: &'a str,
    pub pods: u32,
    pub plan: &'a Plan,
    pub store: &'a str,
    pub verdict: Verdict,
    pub checks: &'a [CheckResult],
    /// Checks whose applicability no fault forces (see `ChecksCfg::unforced`).
    pub unforced: &'a [super::scenario::CheckName],
    pub evidence: &'a Evidence,
    pub unfired: &'a [usize],
    pub history: &'a [Event],
    pub notes: &'a [String],
}

/// Detection and recovery latency of one fault that took a pod down.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub fault: usize,
    pub pod: String,
    /// From the store's death record (the engine's own account).
    pub detection_ms: Option<i64>,
    /// From what clients saw: the first chunk of a newer epoch of a run the
    /// pod owned, after the fault.
    pub first_resumed_chunk_ms: Option<i64>,
    /// From the witness: the first execution of a step of a run the pod
    /// owned after the fault (at a newer epoch, where the system has
    /// epochs); for a store fault, of any run.
    pub first_resumed_step_ms: Option<i64>,
}

fn trigger_text(t: &Trigger) -> String {
    match t {
        Trigger::AtMs(ms) => format!("at +{ms} ms"),
        Trigger::AfterChunk { run, chunks } => format!("after chunk {chunks} of {run}"),
        Trigger::AfterEnd { run } => format!("after {run} ends"),
        Trigger::AfterStep { run, step } => format!("after the witness saw {run}'s step {step}"),
    }
}

fn target_text(t: &super::scenario::Target) -> String {
    use super::scenario::Target;
    match t {
        Target::OwnerOf(r) => format!("the owner of {r}"),
        Target::Pod(p) => p.clone(),
        Target::Random(_) => "a random live pod".into(),
        Target::LastKilled => "the last pod killed".into(),
        Target::None => "the cluster".into(),
    }
}

pub(crate) fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::Unknown => "unknown",
        Verdict::NotApplicable => "not applicable",
    }
}

impl Report<'_> {
    pub fn latencies(&self) -> Vec<Latency> {
        let ev = self.evidence;
        ev.faults
            .iter()
            .filter(|f| {
                matches!(
                    f.action,
                    Action::Kill
                        | Action::Term
                        | Action::Pause
                        | Action::Partition
                        | Action::StoreOutage
                        | Action::StoreFreeze
                        | Action::DiskFull
                        | Action::HalfOpen
                        | Action::Blackhole
                        | Action::Latency
                ) && !f.on_client_link()
            })
            .filter_map(|f| {
                let store_fault = f.action.on_store() || f.action.is_link() && f.pod.is_none();
                let pod = if store_fault {
                    "the store".to_owned()
                } else {
                    f.pod.clone()?
                };
                let epochless = ev.target.as_ref().is_some_and(|t| !t.epochs);
                let step = ev
                    .witness
                    .iter()
                    .filter(|c| c.t_ms > f.t_ms)
                    .filter(|c| store_fault || f.owned.contains(&c.run_id))
                    .filter(|c| {
                        epochless
                            || store_fault
                            || c.epoch
                                > ev.witness
                                    .iter()
                                    .filter(|b| b.run_id == c.run_id && b.t_ms <= f.t_ms)
                                    .map(|b| b.epoch)
                                    .max()
                                    .unwrap_or(0)
                    })
                    .map(|c| i64::try_from(c.t_ms - f.t_ms).unwrap_or(i64::MAX))
                    .min();
                let detection = ev
                    .deaths
                    .iter()
                    .filter(|d| d.pod_id == pod && d.detected_at_ms >= f.at_ms)
                    .map(|d| d.detected_at_ms - f.at_ms)
                    .min();
                let resumed = f
                    .owned
                    .iter()
                    .filter_map(|id| {
                        let seen = ev
                            .attachers
                            .iter()
                            .filter(|a| &a.run_id == id)
                            .flat_map(|a| a.events.iter());
                        let before = seen
                            .clone()
                            .filter(|(t, _)| *t <= f.t_ms)
                            .filter_map(|(_, e)| match e {
                                StreamEvent::Chunk { epoch, .. } => Some(*epoch),
                                _ => None,
                            })
                            .max()
                            .unwrap_or(0);
                        seen.filter(|(t, _)| *t > f.t_ms)
                            .filter_map(|(t, e)| match e {
                                StreamEvent::Chunk { epoch, .. } if *epoch > before => {
                                    i64::try_from(t - f.t_ms).ok()
                                }
                                _ => None,
                            })
                            .min()
                    })
                    .min();
                Some(Latency {
                    fault: f.index,
                    pod,
                    detection_ms: detection,
                    first_resumed_chunk_ms: resumed,
                    first_resumed_step_ms: step,
                })
            })
            .collect()
    }

    fn name_of(&self, id: &str) -> String {
        self.evidence
            .submitted
            .iter()
            .find(|s| s.run_id == id)
            .map_or_else(|| "retry".into(), |s| s.name.clone())
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}, store {}, {} pods)",
            self.scenario_name, self.plan.seed, self.store, self.pods
        );
        if !self.description.is_empty() {
            let _ = writeln!(s, "  {}", self.description);
        }
        for f in &self.plan.faults {
            let fired = self.evidence.faults.iter().find(|x| x.index == f.index);
            let _ = writeln!(
                s,
                "  fault {}: {} {} {} -> {}",
                f.index,
                f.action.as_str(),
                match f.action {
                    Action::RowLock | Action::WriteLock
                        if f.target == super::scenario::Target::None =>
                    {
                        "from the runner's own session".to_owned()
                    }
                    a if a.on_store() => "the store".to_owned(),
                    _ if f
                        .link
                        .as_ref()
                        .is_some_and(|l| l.on == super::scenario::LinkName::Client) =>
                    {
                        match f.target {
                            super::scenario::Target::None => {
                                "a run's client link to every pod".to_owned()
                            }
                            _ => format!("a run's client link to {}", target_text(&f.target)),
                        }
                    }
                    a if a.is_link() && f.target == super::scenario::Target::None => {
                        "every pod's store link".to_owned()
                    }
                    a if a.is_link() => format!("{}'s store link", target_text(&f.target)),
                    _ => target_text(&f.target),
                },
                trigger_text(&f.trigger),
                fired.map_or_else(
                    || "NOT FIRED".to_owned(),
                    |x| format!(
                        "hit {}",
                        x.pod
                            .clone()
                            .or_else(|| match x.action {
                                a if a.on_store() || a == Action::WriteLock => {
                                    Some("the store".into())
                                }
                                _ if x.on_client_link() => Some("every pod".into()),
                                a if a.is_link() => Some("every store link".into()),
                                _ => x.run_id.as_ref().map(|_| "the run's row".into()),
                            })
                            .unwrap_or_else(|| "the cluster".into())
                    ) + if x.froze_store {
                        ", which held SQLite's write lock: the store froze with it"
                    } else {
                        ""
                    }
                )
            );
        }
        for c in self.checks {
            let _ = writeln!(
                s,
                "  {}  {:<24} {}",
                c.status.label(),
                c.name.as_str(),
                c.name.invariant()
            );
            for e in c.evidence.iter().take(5) {
                let _ = writeln!(s, "          - {e}");
            }
            if c.evidence.len() > 5 {
                let _ = writeln!(
                    s,
                    "          ... and {} more (report.json)",
                    c.evidence.len() - 5
                );
            }
            if c.status == Status::Fail {
                for line in self.evidence_history(c) {
                    let _ = writeln!(s, "          | {line}");
                }
            }
        }
        let ms = |v: Option<i64>| v.map_or("-".into(), |v| format!("{v} ms"));
        for l in self.latencies() {
            if self.evidence.target.is_some() || l.pod == "the store" {
                // A target (no death record of ours, no stream) or a store
                // fault (no pod to find dead): the witness.
                let _ = writeln!(
                    s,
                    "  latency: {} down (fault {}): first step executed after the fault {}",
                    l.pod,
                    l.fault,
                    ms(l.first_resumed_step_ms)
                );
                continue;
            }
            let _ = writeln!(
                s,
                "  latency: {} down (fault {}): recorded dead after {}, first resumed chunk seen after {}, first resumed step after {}",
                l.pod,
                l.fault,
                ms(l.detection_ms),
                ms(l.first_resumed_chunk_ms),
                ms(l.first_resumed_step_ms)
            );
        }
        for b in &self.evidence.blind {
            let _ = writeln!(s, "  cannot observe: {b}");
        }
        for n in self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        let _ = writeln!(s, "  verdict: {}", verdict_text(self.verdict));
        s
    }

    /// A few history lines about the first run a failed check names.
    fn evidence_history(&self, c: &CheckResult) -> Vec<String> {
        let Some(first) = c.evidence.first() else {
            return Vec::new();
        };
        let ids = self
            .evidence
            .submitted
            .iter()
            .map(|s| &s.run_id)
            .chain(self.evidence.store.iter().map(|a| &a.run.id));
        let mut found = None;
        for id in ids {
            if first.contains(id.as_str()) {
                found = Some(id.clone());
                break;
            }
        }
        let Some(id) = found else {
            return Vec::new();
        };
        self.history
            .iter()
            .filter(|e| {
                e.data.to_string().contains(id.as_str())
                    && e.kind != "stream"
                    && e.kind != "store_run"
            })
            .take(6)
            .map(|e| format!("+{} ms {} {}", e.t_ms, e.kind, e.data))
            .collect()
    }

    /// A pod's role, stable across runs: the pod a fault hit (by fault
    /// index) or a survivor. A skewed clock or a row or write lock leaves
    /// its pod up and racing its peers: that pod is a survivor.
    fn role(&self, pod: Option<&str>) -> String {
        let Some(pod) = pod else {
            return "nobody".into();
        };
        self.evidence
            .faults
            .iter()
            .filter(|f| {
                !matches!(
                    f.action,
                    Action::ClockSkew | Action::RowLock | Action::WriteLock
                )
            })
            .find(|f| f.pod.as_deref() == Some(pod))
            .map_or_else(|| "survivor".into(), |f| format!("fault{}-target", f.index))
    }

    /// Whether fault `f` brought its pod back with its id (a restart fault,
    /// or a kill or term with `restart_after_ms`).
    fn brought_back(&self, f: &super::checks::FiredFault) -> bool {
        f.action == Action::Restart
            || self
                .plan
                .faults
                .iter()
                .any(|p| p.index == f.index && p.restart_after_ms.is_some())
    }

    /// Facts that do not depend on timing, ids or which pod won a race:
    /// what tests snapshot. Claims and owners are given as roles.
    pub fn normalized(&self) -> serde_json::Value {
        let faults: Vec<_> = self
            .plan
            .faults
            .iter()
            .map(|f| {
                json!({
                    "action": f.action,
                    "target": f.target,
                    "trigger": trigger_text(&f.trigger),
                    "fired": self.evidence.faults.iter().any(|x| x.index == f.index),
                })
            })
            .collect();
        let mut runs: Vec<_> = self
            .evidence
            .store
            .iter()
            .map(|a| {
                json!({
                    "name": self.name_of(&a.run.id),
                    "workflow": a.run.workflow,
                    "state": a.run.state,
                    "retry": a.run.retry_of.is_some(),
                })
            })
            .collect();
        runs.sort_by_key(|v| v.to_string());
        // Takeovers, as roles. What a fault forces is stable: its target's
        // runs are taken over by a survivor, once. What follows is timing
        // and stays in report.json and the history, not here: which pod's
        // dispatcher takes a pending run, an owner re-claiming its run after
        // a store error, and a survivor taking a run from another survivor
        // it found dead later.
        // A fault target brought back with its id (restart_after_ms, or a
        // restart fault) races the survivors for its own runs: either may
        // take them, so its takeovers end at "a live pod".
        let restarted: std::collections::BTreeSet<&str> = self
            .evidence
            .faults
            .iter()
            .filter(|f| self.brought_back(f))
            .filter_map(|f| f.pod.as_deref())
            .collect();
        let to_role = |from: Option<&str>, to: &str| {
            if from.is_some_and(|p| restarted.contains(p))
                && (Some(to) == from || self.role(Some(to)) == "survivor")
            {
                "a live pod".to_owned()
            } else {
                self.role(Some(to))
            }
        };
        let path = |c: &crate::engine::store::ClaimRecord| {
            format!(
                "{} -> {}",
                self.role(c.from_pod.as_deref()),
                to_role(c.from_pod.as_deref(), &c.to_pod)
            )
        };
        let forced = |c: &&crate::engine::store::ClaimRecord| {
            let from = c.from_pod.as_deref();
            (from != Some(c.to_pod.as_str()) || from.is_some_and(|p| restarted.contains(p)))
                && (from.is_none() || self.role(from) != "survivor")
        };
        let mut watched: Vec<String> = self
            .plan
            .faults
            .iter()
            .filter_map(|f| match (&f.target, &f.trigger) {
                (super::scenario::Target::OwnerOf(r), _) => Some(r.clone()),
                (
                    _,
                    Trigger::AfterChunk { run, .. }
                    | Trigger::AfterEnd { run }
                    | Trigger::AfterStep { run, .. },
                ) => Some(run.clone()),
                _ => None,
            })
            .collect();
        watched.sort();
        watched.dedup();
        let takeovers: Vec<_> = watched
            .iter()
            .filter_map(|name| {
                let id = &self
                    .evidence
                    .submitted
                    .iter()
                    .find(|s| &s.name == name)?
                    .run_id;
                let a = self.evidence.store.iter().find(|a| &a.run.id == id)?;
                let mut claims: Vec<String> = a.claims.iter().filter(forced).map(path).collect();
                claims.dedup();
                let from_targets = a
                    .claims
                    .iter()
                    .filter(|c| c.from_pod.is_some() && forced(c))
                    .count();
                Some(json!({
                    "run": name,
                    "claims": claims,
                    "taken_from_fault_targets": from_targets,
                    "final_owner": match a.run.owner_pod.as_deref() {
                        Some(o) if !restarted.is_empty()
                            && (restarted.contains(o) || self.role(Some(o)) == "survivor") =>
                        {
                            "a live pod".to_owned()
                        }
                        o => self.role(o),
                    },
                }))
            })
            .collect();
        let claim_paths: std::collections::BTreeSet<String> = self
            .evidence
            .store
            .iter()
            .flat_map(|a| {
                a.claims
                    .iter()
                    .filter(|c| c.from_pod.is_some() && forced(c))
                    .map(path)
            })
            .collect();
        let attachers: Vec<_> = self
            .evidence
            .attachers
            .iter()
            .map(|a| {
                let ended = a.events.iter().find_map(|(_, e)| match e {
                    StreamEvent::End { state, .. } => Some(*state),
                    _ => None,
                });
                json!({ "run": a.run_name, "kind": a.attacher, "ended": ended })
            })
            .collect();
        let checks: BTreeMap<&str, serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                let forced = !self.unforced.contains(&c.name);
                let status = match c.status {
                    Status::Pass | Status::NotApplicable if !forced => {
                        json!("pass_or_not_applicable")
                    }
                    s => json!(s),
                };
                (c.name.as_str(), status)
            })
            .collect();
        // Which steps' side effects the witness saw (how often is timing:
        // an owner killed inside a step's body runs it again).
        let witnessed: std::collections::BTreeSet<String> = self
            .evidence
            .witness
            .iter()
            .map(|c| {
                let wf = self
                    .evidence
                    .submitted
                    .iter()
                    .find(|s| s.run_id == c.run_id)
                    .map(|s| s.workflow.as_str())
                    .or_else(|| {
                        self.evidence
                            .store
                            .iter()
                            .find(|a| a.run.id == c.run_id)
                            .map(|a| a.run.workflow.as_str())
                    })
                    .unwrap_or("?");
                format!("{wf}.{}", c.step)
            })
            .collect();
        let mut out = json!({
            "scenario": self.scenario_name,
            "store": self.store,
            "pods": self.pods,
            "seed": self.plan.seed,
            "faults": faults,
            "runs": runs,
            "attachers": attachers,
            "takeovers": takeovers,
            "claim_paths": claim_paths,
            "witnessed": witnessed,
            "checks": checks,
            "verdict": self.verdict,
        });
        if let Some(t) = &self.evidence.target {
            out["target"] = json!(t.name);
            out["runs"] = json!(self.target_runs(&watched));
        }
        out
    }

    /// A target's runs, from what clients and the witness saw (its store is
    /// not read): each run's last state from the status API; for a run a
    /// pod fault is about, who executed it (as roles, in order) and how
    /// many times the witness saw each step. A store fault's runs get their
    /// state only: how a step straddling an outage is retried is timing.
    fn target_runs(&self, watched: &[String]) -> Vec<serde_json::Value> {
        let ev = self.evidence;
        let pod_faults: Vec<&super::checks::FiredFault> = ev
            .faults
            .iter()
            .filter(|f| f.pod.is_some() && !f.action.on_store())
            .collect();
        let role = |c: &super::checks::WitnessCall| {
            // After a fault on a pod brought back with its id, any live
            // worker may run what it had (DBOS: its internal queue).
            if pod_faults
                .iter()
                .any(|f| self.brought_back(f) && c.t_ms > f.t_ms)
            {
                return "a live pod".to_owned();
            }
            pod_faults
                .iter()
                .find(|f| f.pod.as_deref() == Some(c.pod.as_str()))
                .map_or_else(
                    || "another pod".into(),
                    |f| format!("fault{}-target", f.index),
                )
        };
        let mut out: Vec<serde_json::Value> = ev
            .submitted
            .iter()
            .map(|s| {
                let mut v = json!({
                    "name": s.name,
                    "workflow": s.workflow,
                    "state": ev.api.iter().rfind(|a| a.run_id == s.run_id).map(|a| a.state),
                });
                if watched.contains(&s.name) && !pod_faults.is_empty() {
                    let calls: Vec<&super::checks::WitnessCall> =
                        ev.witness.iter().filter(|c| c.run_id == s.run_id).collect();
                    let mut by: Vec<String> = calls.iter().map(|c| role(c)).collect();
                    by.dedup();
                    let mut executions: BTreeMap<&str, usize> = BTreeMap::new();
                    for c in &calls {
                        *executions.entry(c.step.as_str()).or_default() += 1;
                    }
                    v["executed_by"] = json!(by);
                    v["executions"] = json!(executions);
                }
                v
            })
            .collect();
        out.sort_by_key(|v| v["name"].to_string());
        out
    }

    fn timeline(&self) -> String {
        let mut s = String::new();
        for e in self
            .history
            .iter()
            .filter(|e| e.kind != "stream" && e.kind != "store_run")
        {
            let _ = writeln!(s, "{:>8} ms  {:<13} {}", e.t_ms, e.kind, e.data);
        }
        s
    }

    /// A bar chart of detection and recovery latency per fault.
    fn latency_svg(&self) -> String {
        let lat = self.latencies();
        let max = lat
            .iter()
            .flat_map(|l| [l.detection_ms, l.first_resumed_chunk_ms])
            .flatten()
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let row = 46.0;
        let height = 60.0 + row * lat.len().max(1) as f64;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"{height}\" font-family=\"monospace\" font-size=\"12\">\n\
             <text x=\"10\" y=\"20\">{} (seed {}): detection (blue) and first resumed chunk (green), ms after the fault</text>\n",
            xml_escape(self.scenario_name),
            self.plan.seed
        );
        for (i, l) in lat.iter().enumerate() {
            let y = 40.0 + row * i as f64;
            let _ = writeln!(
                s,
                "<text x=\"10\" y=\"{}\">fault {} {}</text>",
                y + 14.0,
                l.fault,
                xml_escape(&l.pod)
            );
            for (k, (v, colour)) in [
                (l.detection_ms, "#3b6fb6"),
                (l.first_resumed_chunk_ms, "#3b9a57"),
            ]
            .iter()
            .enumerate()
            {
                let yy = y + 2.0 + 18.0 * k as f64;
                if let Some(v) = v {
                    let w = 420.0 * (*v as f64) / max;
                    let _ = writeln!(
                        s,
                        "<rect x=\"180\" y=\"{yy}\" width=\"{w:.1}\" height=\"14\" fill=\"{colour}\"/>"
                    );
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{}\">{v} ms</text>",
                        186.0 + w,
                        yy + 11.0
                    );
                } else {
                    let _ = writeln!(s, "<text x=\"180\" y=\"{}\">n/a</text>", yy + 11.0);
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }

    /// The results directory: summary, history, report, timeline, plot.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let w = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
        };
        w("summary.txt", self.summary())?;
        let mut hist = String::new();
        for e in self.history {
            hist.push_str(&serde_json::to_string(e)?);
            hist.push('\n');
        }
        w("history.jsonl", hist)?;
        w("timeline.txt", self.timeline())?;
        w("latency.svg", self.latency_svg())?;
        w(
            "normalized.json",
            serde_json::to_string_pretty(&self.normalized())?,
        )?;
        let full = json!({
            "normalized": self.normalized(),
            "checks": self.checks,
            "latencies": self.latencies(),
            "plan": self.plan,
            "fired": self.evidence.faults,
            "unfired": self.unfired,
            "cannot_observe": self.evidence.blind,
            "notes": self.notes,
        });
        w("report.json", serde_json::to_string_pretty(&full)?)?;
        Ok(())
    }
}

/// Text for XML (the SVG): markup escaped, control characters XML 1.0
/// forbids dropped.
fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of the JUnit report: a scenario that ran, or one that could
/// not (a file that does not parse: CI shows it as an error naming the
/// file and line, not as nothing).
pub enum JunitEntry<'a> {
    Ran {
        outcome: &'a Outcome,
        /// Wall clock when it started (Unix ms).
        started_ms: i64,
        took: std::time::Duration,
    },
    Invalid {
        file: String,
        message: String,
    },
}

/// The JUnit XML of a `vigil chaos run` (quick-junit: times, timestamps,
/// escaping and control characters are its business): one suite per
/// scenario and store, one case per checker.
pub fn junit(entries: &[JunitEntry<'_>]) -> String {
    use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
    let stamp = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.fixed_offset());
    let mut report = Report::new("vigil chaos");
    let mut total = std::time::Duration::ZERO;
    for entry in entries {
        match entry {
            JunitEntry::Invalid { file, message } => {
                let mut suite = TestSuite::new(file.as_str());
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status
                    .set_type("invalid scenario")
                    .set_message(message.lines().next().unwrap_or_default())
                    .set_description(message.as_str());
                let mut case = TestCase::new("scenario", status);
                case.set_classname(file.as_str());
                suite.add_test_case(case);
                report.add_test_suite(suite);
            }
            JunitEntry::Ran {
                outcome: o,
                started_ms,
                took,
            } => {
                total += *took;
                let mut suite = TestSuite::new(format!("{} [{}]", o.scenario, o.store));
                suite.set_time(*took);
                if let Some(t) = stamp(*started_ms) {
                    suite.set_timestamp(t);
                }
                suite.add_property(Property::new("seed", o.seed.to_string()));
                suite.add_property(Property::new("results", o.dir.display().to_string()));
                suite.add_property(Property::new("verdict", verdict_text(o.verdict)));
                if o.checks.is_empty() {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(o.summary.trim());
                    let mut case = TestCase::new("scenario", status);
                    case.set_classname(o.scenario.as_str());
                    suite.add_test_case(case);
                }
                for c in &o.checks {
                    let status = match c.status {
                        Status::Pass => TestCaseStatus::success(),
                        Status::Skip => TestCaseStatus::skipped(),
                        Status::NotApplicable => {
                            let mut s = TestCaseStatus::skipped();
                            let why = c.evidence.join("; ");
                            s.set_message(if why.starts_with("not applicable") {
                                why
                            } else {
                                format!("not applicable: {why}")
                            });
                            s
                        }
                        Status::Fail => {
                            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                            s.set_message(c.name.invariant())
                                .set_description(c.evidence.join("\n"));
                            s
                        }
                    };
                    let mut case = TestCase::new(c.name.as_str(), status);
                    case.set_classname(o.scenario.as_str());
                    suite.add_test_case(case);
                }
                report.add_test_suite(suite);
            }
        }
    }
    report.set_time(total);
    report.to_string().unwrap_or_else(|e| {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- cannot write the report: {} -->\n<testsuites/>\n",
            xml_escape(&e.to_string()).replace("--", "- -")
        )
    })
}
