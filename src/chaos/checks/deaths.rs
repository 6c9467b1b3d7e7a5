//! Pod deaths: a downed pod is found dead in time and its runs taken over
//! (`death_detected`); a live one never is (`no_false_deaths`).

use super::{Evidence, FiredFault, Outcome, WitnessCall, not_applicable, pass_or_fail};
use crate::chaos::scenario::Action;
use crate::client::StreamEvent;
use std::collections::BTreeMap;

/// Whether fault `f` must lead to its pod being found dead.
fn must_die(ev: &Evidence, f: &FiredFault) -> bool {
    match f.action {
        Action::Kill | Action::Term => true,
        // A pod stopped or cut off for twice its liveness timeout has
        // certainly lost its liveness (a shorter one may or may not have),
        // unless it froze the store with it: then nobody could find it dead,
        // and it was alive again before anyone could write.
        _ if super::gray::cuts_lease(ev, f) => f
            .duration_ms
            .is_some_and(|d| d >= ev.liveness_timeout_ms.saturating_mul(2)),
        Action::Pause | Action::Partition => {
            !f.froze_store
                && f.duration_ms
                    .is_some_and(|d| d >= ev.liveness_timeout_ms.saturating_mul(2))
        }
        _ => false,
    }
}

/// A dead pod is found dead within the bound and its runs are taken over.
/// From clients and the witness: every run the pod owned either ended, or
/// was seen resumed at a newer epoch (a chunk, a witness call). The time
/// bound is judged on the store's death record (cross-check). On a target
/// without epochs, any witnessed execution after the fault is the run
/// resumed, and there is no death record to read.
pub(super) fn death_detected(ev: &Evidence) -> Outcome {
    let faults: Vec<&FiredFault> = ev
        .faults
        .iter()
        .filter(|f| must_die(ev, f) && f.pod.is_some())
        .collect();
    if faults.is_empty() {
        let froze: std::collections::BTreeSet<&str> = ev
            .faults
            .iter()
            .filter(|f| {
                f.froze_store
                    && f.duration_ms
                        .is_some_and(|d| d >= ev.liveness_timeout_ms.saturating_mul(2))
            })
            .filter_map(|f| f.pod.as_deref())
            .collect();
        if !froze.is_empty() {
            return not_applicable(&format!(
                "no pod was killed or terminated, and every long pause ({}) froze the store with \
                 it (SQLite's write lock held): nobody could find the paused pod dead",
                froze.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
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
            // A target without epochs: any execution after the fault is
            // the run going on (its own restarted worker may resume it).
            let epochless = ev.target.as_ref().is_some_and(|t| !t.epochs);
            let from_witness = ev
                .witness
                .iter()
                .filter(|c| {
                    &c.run_id == id && c.t_ms > f.t_ms && (epochless || c.epoch > before_epoch)
                })
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
                let by = if epochless { "" } else { " by a new owner" };
                out.push(format!(
                    "{pod} was {} at +{} ms; no client or witness ever saw {} resumed{by}, and it \
                     never ended",
                    action_verb(f.action),
                    f.t_ms,
                    ev.label(id)
                ));
            }
        }
        if ev.target.is_some() {
            // A target's death records, if it keeps any, are in its store.
            continue;
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
/// SIGSTOP, a partition, a restart with its id, a power cut that killed
/// it). A store stopped or frozen excuses nothing: when the server restarts
/// or thaws, every liveness lock is free at once, and a pod that reads that
/// as death is wrong (a lock freed by the server that also ended the
/// prober's own session, or a lease lapsed while the prober's own renewals
/// stopped too, says nothing about the peer). A pod paused holding SQLite's write lock freezes
/// every writer with it, but excuses nothing: it is alive again the moment
/// anyone can write, and so is everyone whose lease lapsed meanwhile. Cross-check (store record): every recorded death
/// is of such a pod. A live pod declared dead has its runs taken from under
/// it: the cluster-wide stall of issue 14 (a row lock blocking recovery and,
/// with it, the survivors' own liveness).
pub(super) fn no_false_deaths(ev: &Evidence) -> Outcome {
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
                            // Cut off from its store: the server ends its
                            // silent liveness session. A reset ends it at
                            // once, which to the server looks the same as
                            // the process dying (docs/chaos.md).
                            | Action::HalfOpen
                            | Action::Blackhole
                            | Action::Reset
                            | Action::Loss
                    )
                    && !f.on_client_link()
                    || f.pod.as_deref() == Some(pod) && super::gray::cuts_lease(ev, f)
                    // A power cut kills every SQLite pod; on PostgreSQL it
                    // stops the server, which downs no pod.
                    || f.killed.iter().any(|k| k == pod))
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
                    "{}: taken from {} (epoch {}) by {} (epoch {}) at +{} ms, with no fault \
                     that could have downed {} (witness)",
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
                "{} was declared dead by {} at +{} ms, with no fault that could have \
                 downed it (store record)",
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
        Action::HalfOpen => "cut off from its store (half-open)",
        Action::Blackhole => "cut off from its store (blackhole)",
        Action::Latency => "slowed past its lease on its store link",
        _ => "hit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::checks::Status;

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
            froze_store: false,
            link: None,
            killed: Vec::new(),
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

    fn death(pod: &str, by: &str, at_ms: i64) -> crate::engine::store::liveness::Death {
        crate::engine::store::liveness::Death {
            pod_id: pod.into(),
            incarnation: "i1".into(),
            detected_by: by.into(),
            detected_at_ms: at_ms,
            last_heartbeat_at_ms: 0,
        }
    }

    /// A pod SIGSTOPped holding SQLite's write lock froze the store with
    /// it: nobody could write its death, and it was alive again the moment
    /// anyone could, so it need not be found dead (the same pause without
    /// the lock must be). Every lease lapsed meanwhile, but no pod was
    /// dead: a death recorded after it is still a false death.
    #[test]
    fn a_pause_that_froze_sqlite_needs_no_death_and_excuses_none() {
        let pause = FiredFault {
            action: Action::Pause,
            duration_ms: Some(3000),
            ..kill(500, "pod-1")
        };
        let mut ev = Evidence {
            liveness_timeout_ms: 1000,
            detection_bound_ms: 4000,
            faults: vec![pause.clone()],
            deaths: vec![death("pod-2", "pod-1", 1500)],
            ..Default::default()
        };
        let o = no_false_deaths(&ev);
        assert_eq!(o.status, Status::Fail, "{:?}", o.evidence);
        assert!(o.evidence[0].contains("pod-2 was declared dead by pod-1"));
        let o = death_detected(&ev);
        assert_eq!(o.status, Status::Fail, "{:?}", o.evidence);
        assert!(o.evidence[0].contains("pod-1 was SIGSTOPped at +500 ms and never recorded dead"));
        ev.faults = vec![FiredFault {
            froze_store: true,
            ..pause
        }];
        assert_eq!(no_false_deaths(&ev).status, Status::Fail);
        assert_eq!(death_detected(&ev).status, Status::NotApplicable);
    }

    /// A power cut excuses the deaths of the pods it killed (SQLite's,
    /// which hold the database open), and none on PostgreSQL, where it
    /// stops the server: a prober that reads every lock freed by the
    /// restart as death declares live pods dead.
    #[test]
    fn a_power_cut_excuses_only_the_pods_it_killed() {
        let cut = FiredFault {
            action: Action::LoseUnsynced,
            pod: None,
            ..kill(500, "pod-1")
        };
        let mut ev = Evidence {
            faults: vec![cut.clone()],
            deaths: vec![death("pod-2", "pod-1", 900)],
            ..Default::default()
        };
        assert_eq!(no_false_deaths(&ev).status, Status::Fail);
        ev.faults = vec![FiredFault {
            killed: vec!["pod-1".into(), "pod-2".into()],
            ..cut
        }];
        assert_eq!(no_false_deaths(&ev).status, Status::Pass);
    }
}
