//! The reaper: no healthy run timed out for a missing heartbeat
//! (`no_healthy_reaped`), and a reaped run with retries left queued one
//! retry (`retries_agree`).

use super::{Evidence, Outcome, StoreAccount, not_applicable, pass_or_fail};
use crate::chaos::scenario::Action;
use crate::engine::run::{RunState, TransitionRecord};

pub(super) fn reaped(t: &TransitionRecord) -> bool {
    t.to == RunState::TimedOut && t.reason.starts_with("reaper: no heartbeat")
}

/// A run the reaper timed out for a missing heartbeat must be on a lane that
/// heartbeats and must have had a fault on it or its owner.
pub(super) fn no_healthy_reaped(ev: &Evidence) -> Outcome {
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
                                Action::Kill
                                    | Action::Term
                                    | Action::Pause
                                    | Action::Partition
                                    | Action::HalfOpen
                                    | Action::Blackhole
                                    | Action::Reset
                                    | Action::Loss
                            )
                            && !f.on_client_link()
                        || f.run_id.as_deref() == Some(a.run.id.as_str())
                            && f.action == Action::RowLock
                        || f.action == Action::StoreFreeze
                        || f.action == Action::StoreOutage
                        || f.action == Action::LoseUnsynced)
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

pub(super) fn retries_agree(ev: &Evidence) -> Outcome {
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
