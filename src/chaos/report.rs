//! Reports: the terminal summary, the results directory, the normalized
//! report tests snapshot, and JUnit for CI.

use super::checks::{AttacherLog, CheckResult, FiredFault, RunEvidence, Status};
use super::history::Event;
use super::runner::{Outcome, Verdict};
use super::scenario::{Plan, Scenario, Trigger};
use crate::client::StreamEvent;
use crate::engine::liveness::Death;
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub struct Report<'a> {
    pub scenario: &'a Scenario,
    pub plan: &'a Plan,
    pub store: &'a str,
    pub verdict: Verdict,
    pub checks: &'a [CheckResult],
    pub runs: &'a [RunEvidence],
    pub names: &'a BTreeMap<String, String>,
    pub attachers: &'a [AttacherLog],
    pub fired: &'a [FiredFault],
    pub unfired: &'a [usize],
    pub deaths: &'a [Death],
    pub history: &'a [Event],
    pub notes: &'a [String],
}

/// Detection and recovery latency of one fault that took a pod down.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub fault: usize,
    pub pod: String,
    pub detection_ms: Option<i64>,
    pub first_resumed_chunk_ms: Option<i64>,
}

fn trigger_text(t: &Trigger) -> String {
    match t {
        Trigger::AtMs(ms) => format!("at +{ms} ms"),
        Trigger::AfterChunk { run, chunks } => format!("after chunk {chunks} of {run}"),
        Trigger::AfterEnd { run } => format!("after {run} ends"),
    }
}

impl Report<'_> {
    pub fn latencies(&self) -> Vec<Latency> {
        self.fired
            .iter()
            .filter(|f| {
                matches!(
                    f.action,
                    super::scenario::Action::Kill
                        | super::scenario::Action::Term
                        | super::scenario::Action::Pause
                        | super::scenario::Action::Partition
                )
            })
            .filter_map(|f| {
                let pod = f.pod.clone()?;
                let detection = self
                    .deaths
                    .iter()
                    .filter(|d| d.pod_id == pod && d.detected_at_ms >= f.at_ms)
                    .map(|d| d.detected_at_ms - f.at_ms)
                    .min();
                let resumed = f
                    .owned
                    .iter()
                    .filter_map(|id| self.runs.iter().find(|r| &r.run.id == id))
                    .filter_map(|r| {
                        let claim = r.claims.iter().find(|c| {
                            c.from_pod.as_deref() == Some(pod.as_str()) && c.at_ms >= f.at_ms
                        })?;
                        r.chunks
                            .iter()
                            .filter(|c| c.epoch == claim.epoch)
                            .map(|c| c.at_ms - f.at_ms)
                            .min()
                    })
                    .min();
                Some(Latency {
                    fault: f.index,
                    pod,
                    detection_ms: detection,
                    first_resumed_chunk_ms: resumed,
                })
            })
            .collect()
    }

    fn name_of(&self, id: &str) -> String {
        self.names
            .iter()
            .find(|(_, v)| v.as_str() == id)
            .map_or_else(|| "retry".into(), |(k, _)| k.clone())
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}, store {}, {} pods)",
            self.scenario.name, self.plan.seed, self.store, self.scenario.pods
        );
        if !self.scenario.description.is_empty() {
            let _ = writeln!(s, "  {}", self.scenario.description);
        }
        for f in &self.plan.faults {
            let fired = self.fired.iter().find(|x| x.index == f.index);
            let _ = writeln!(
                s,
                "  fault {}: {:?} {:?} {} -> {}",
                f.index,
                f.action,
                f.target,
                trigger_text(&f.trigger),
                fired.map_or_else(
                    || "NOT FIRED".to_owned(),
                    |x| format!("hit {}", x.pod.as_deref().unwrap_or("-"))
                )
            );
        }
        for c in self.checks {
            let mark = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            let _ = writeln!(
                s,
                "  {mark}  {:<24} {}",
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
        for l in self.latencies() {
            let _ = writeln!(
                s,
                "  latency: {} down (fault {}): detected after {}, first resumed chunk after {}",
                l.pod,
                l.fault,
                l.detection_ms.map_or("-".into(), |v| format!("{v} ms")),
                l.first_resumed_chunk_ms
                    .map_or("-".into(), |v| format!("{v} ms"))
            );
        }
        for n in self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        let _ = writeln!(s, "  verdict: {:?}", self.verdict);
        s
    }

    /// A few history lines about the first run a failed check names.
    fn evidence_history(&self, c: &CheckResult) -> Vec<String> {
        let Some(first) = c.evidence.first() else {
            return Vec::new();
        };
        let Some(id) = self
            .names
            .values()
            .chain(self.runs.iter().map(|r| &r.run.id))
            .find(|id| first.contains(id.as_str()))
        else {
            return Vec::new();
        };
        self.history
            .iter()
            .filter(|e| e.data.to_string().contains(id.as_str()) && e.kind != "stream")
            .take(6)
            .map(|e| format!("+{} ms {} {}", e.t_ms, e.kind, e.data))
            .collect()
    }

    /// Facts that do not depend on timing, ids or which pod won a race:
    /// what tests snapshot.
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
                    "fired": self.fired.iter().any(|x| x.index == f.index),
                })
            })
            .collect();
        let mut runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "name": self.name_of(&r.run.id),
                    "workflow": r.run.workflow,
                    "state": r.run.state,
                    "retry": r.run.retry_of.is_some(),
                })
            })
            .collect();
        runs.sort_by_key(|v| v.to_string());
        let attachers: Vec<_> = self
            .attachers
            .iter()
            .map(|a| {
                let ended = a.events.iter().find_map(|e| match e {
                    StreamEvent::End { state, .. } => Some(*state),
                    _ => None,
                });
                json!({ "run": a.run_name, "kind": a.kind, "ended": ended })
            })
            .collect();
        let checks: BTreeMap<&str, Status> = self
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.status))
            .collect();
        json!({
            "scenario": self.scenario.name,
            "store": self.store,
            "pods": self.scenario.pods,
            "seed": self.plan.seed,
            "faults": faults,
            "runs": runs,
            "attachers": attachers,
            "checks": checks,
            "verdict": self.verdict,
        })
    }

    fn timeline(&self) -> String {
        let mut s = String::new();
        for e in self.history.iter().filter(|e| e.kind != "stream") {
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
            self.scenario.name, self.plan.seed
        );
        for (i, l) in lat.iter().enumerate() {
            let y = 40.0 + row * i as f64;
            let _ = writeln!(
                s,
                "<text x=\"10\" y=\"{}\">fault {} {}</text>",
                y + 14.0,
                l.fault,
                l.pod
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
            "fired": self.fired,
            "notes": self.notes,
        });
        w("report.json", serde_json::to_string_pretty(&full)?)?;
        Ok(())
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML: one test suite per scenario, one test case per check.
pub fn junit(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"vigil chaos\">\n",
    );
    for o in outcomes {
        let failures = o.checks.iter().filter(|c| c.status == Status::Fail).count();
        let skipped = o.checks.iter().filter(|c| c.status == Status::Skip).count();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
            xml_escape(&format!("{} [{}]", o.scenario, o.store)),
            o.checks.len().max(1)
        );
        let _ = writeln!(
            s,
            "    <properties><property name=\"seed\" value=\"{}\"/><property name=\"results\" value=\"{}\"/></properties>",
            o.seed,
            xml_escape(&o.dir.display().to_string())
        );
        if o.checks.is_empty() {
            let _ = writeln!(
                s,
                "    <testcase name=\"scenario\" classname=\"{}\"><skipped message=\"{}\"/></testcase>",
                xml_escape(&o.scenario),
                xml_escape(o.summary.trim())
            );
        }
        for c in &o.checks {
            let _ = write!(
                s,
                "    <testcase name=\"{}\" classname=\"{}\">",
                c.name.as_str(),
                xml_escape(&o.scenario)
            );
            match c.status {
                Status::Pass => {}
                Status::Skip => s.push_str("<skipped/>"),
                Status::Fail => {
                    let _ = write!(
                        s,
                        "<failure message=\"{}\">{}</failure>",
                        xml_escape(c.name.invariant()),
                        xml_escape(&c.evidence.join("\n"))
                    );
                }
            }
            s.push_str("</testcase>\n");
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}
