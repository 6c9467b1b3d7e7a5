//! Gray failures: a pod whose store link is cut, or too slow to keep a
//! lease, must fence itself (`self_fenced`).

use super::{Evidence, FiredFault, Outcome, not_applicable, pass_or_fail};
use crate::chaos::scenario::{Action, Direction};

/// Whether link fault `f` surely costs its one pod its lease: nothing the
/// pod sends reaches the store (half-open, a blackhole upward), or every
/// round trip alone outlasts the liveness timeout. A fault on every pod's
/// link is the store's, not a pod's: None.
pub(super) fn cuts_lease(ev: &Evidence, f: &FiredFault) -> bool {
    if f.pod.is_none() || f.on_client_link() {
        return false;
    }
    match f.action {
        Action::HalfOpen => true,
        Action::Blackhole => f
            .link
            .as_ref()
            .is_some_and(|l| l.direction != Direction::Down),
        Action::Latency => f.link.as_ref().is_some_and(|l| {
            let one_way = l.ms.saturating_sub(l.jitter_ms);
            let round_trip = if l.direction == Direction::Both {
                2 * one_way
            } else {
                one_way
            };
            round_trip >= ev.liveness_timeout_ms
        }),
        _ => false,
    }
}

/// How long after link fault `f` began its pod's lease has surely lapsed
/// (its last renew was sent before the fault: a liveness timeout), when
/// the fault lasts long enough for the lapse to show.
fn lapses_after(ev: &Evidence, f: &FiredFault) -> Option<u64> {
    let lapse = ev.liveness_timeout_ms;
    (cuts_lease(ev, f) && f.duration_ms? > lapse + 1000).then_some(lapse)
}

/// A pod cut off from its store, or whose store link is too slow to renew
/// a lease in time, fences itself before its lease can have lapsed by its
/// own clock: judged on the witness (no step body of that pod begins once
/// its lease has surely run out, until the link heals) and on the runner's
/// probes of its `/readyz` (unready within a second of that moment).
pub(super) fn self_fenced(ev: &Evidence) -> Outcome {
    let faults: Vec<(&FiredFault, u64)> = ev
        .faults
        .iter()
        .filter_map(|f| lapses_after(ev, f).map(|l| (f, l)))
        .collect();
    if faults.is_empty() {
        return not_applicable(
            "no pod's own store link was cut, or slowed past its lease, for longer than its \
             liveness timeout plus a second",
        );
    }
    let mut out = Vec::new();
    for (f, lapse) in faults {
        let pod = f.pod.as_deref().unwrap_or_default();
        let end = f.t_ms + f.duration_ms.unwrap_or(0);
        // A body whose witness call left just as the lease lapsed is in
        // flight: a little slack for the request itself.
        let fenced_from = f.t_ms + lapse + 200;
        for c in ev
            .witness
            .iter()
            .filter(|c| c.pod == pod && c.t_ms > fenced_from && c.t_ms < end)
        {
            out.push(format!(
                "{pod} executed {} of {} (epoch {}) at +{} ms, {} ms after its {} began at +{} \
                 ms: its lease had run out by then (witness)",
                c.step,
                ev.label(&c.run_id),
                c.epoch,
                c.t_ms,
                c.t_ms - f.t_ms,
                f.action.as_str(),
                f.t_ms
            ));
        }
        // Readiness: the runner's last probe answer at each moment.
        let unready_by = fenced_from + 1000;
        let probes: Vec<_> = ev.ready.iter().filter(|r| r.pod == pod).collect();
        let ready_at = |t: u64| probes.iter().rev().find(|r| r.t_ms <= t).map(|r| r.ready);
        if end > unready_by + 500 {
            match ready_at(unready_by) {
                Some(Some(true)) => out.push(format!(
                    "{pod}'s /readyz still answered ready at +{unready_by} ms, {} ms into its {} \
                     (runner's probes)",
                    unready_by - f.t_ms,
                    f.action.as_str()
                )),
                Some(None) => out.push(format!(
                    "{pod}'s /readyz gave the runner no answer within a second at +{unready_by} \
                     ms (readiness must come from the pod's own view, not a store query)"
                )),
                None => out.push(format!(
                    "no probe of {pod}'s /readyz answered before +{unready_by} ms (runner's probes)"
                )),
                Some(Some(false)) => {}
            }
        }
    }
    pass_or_fail(out)
}
