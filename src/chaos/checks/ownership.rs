//! Ownership of runs: each orphan claimed once (`claimed_once`), and a pod
//! that lost its claim writes nothing after (`fencing`).

use super::reaper::reaped;
use super::streams::held;
use super::{Evidence, Outcome, WitnessCall, kind_name, not_applicable, pass_or_fail};
use crate::client::{StreamEvent, StreamPart};
use crate::engine::run::RunState;
use crate::engine::store::ClaimRecord;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Store record: each orphan claimed once, never from a live owner.
pub(super) fn claimed_once(ev: &Evidence) -> Outcome {
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
pub(super) fn fencing(ev: &Evidence) -> Outcome {
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
