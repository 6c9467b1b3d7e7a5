//! Terminal states, as clients saw them: a run ends once, in one state,
//! and never comes back from it (`terminal_once`, `no_ghosts`).

use super::{Evidence, Outcome, pass_or_fail};
use crate::engine::run::{LateCompletion, RunState};
use crate::engine::workflow::WorkflowRegistry;
use std::collections::BTreeSet;

/// Terminal states, from clients: the API's last answer must be terminal,
/// and every terminal state any client saw must be the same one (a
/// `late_completion = "accept"` workflow may go from lost to one more).
/// Cross-check: the store's transition log reaches a terminal state once.
pub(super) fn terminal_once(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    let mut out = Vec::new();
    for s in &ev.submitted {
        let label = ev.label(&s.run_id);
        match ev.final_state(&s.run_id) {
            None => out.push(format!(
                "{label}: the API never answered for it after the quiet period"
            )),
            Some(st) if !st.is_terminal() => {
                out.push(format!("{label}: still {st} after the quiet period (API)"));
                continue;
            }
            Some(_) => {}
        }
        let seen = ev.seen_states(&s.run_id);
        let accept = ev
            .workflow_of(reg, &s.run_id)
            .is_some_and(|w| w.late_completion == LateCompletion::Accept);
        let distinct: BTreeSet<String> = seen
            .iter()
            .filter(|(_, st, _)| st.is_terminal())
            .filter(|(_, st, _)| !(accept && *st == RunState::Lost))
            .map(|(_, st, _)| st.to_string())
            .collect();
        if distinct.len() > 1 {
            out.push(format!(
                "{label}: clients saw different terminal states: {}",
                seen.iter()
                    .map(|(t, st, who)| format!("{st} from {who} at +{t} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // Cross-check on the store's account, also for runs no client knows
    // (retries the reaper queued).
    for a in &ev.store {
        let label = ev.label(&a.run.id);
        if !a.run.state.is_terminal() && !ev.submitted.iter().any(|s| s.run_id == a.run.id) {
            out.push(format!(
                "{label}: still {} after the quiet period (store record; no client knows this run)",
                a.run.state
            ));
        }
        let ends = a
            .transitions
            .iter()
            .filter(|t| t.to.is_terminal() && !t.late)
            .count();
        if a.run.state.is_terminal() && ends != 1 {
            out.push(format!(
                "{label}: the store's log reaches a terminal state {ends} times: {} (store record)",
                a.transitions
                    .iter()
                    .map(|t| format!("{}->{}", t.from, t.to))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(api) = ev.final_state(&a.run.id)
            && api != a.run.state
        {
            out.push(format!(
                "{label}: the API's last answer was {api}, the store now says {}",
                a.run.state
            ));
        }
    }
    pass_or_fail(out)
}

/// No way back from a terminal state: once a client saw a run terminal,
/// nobody may see it in another state later (unless the workflow accepts a
/// late completion of a lost run), and a late completion of such a run must
/// be refused. Cross-check: the store's log has no transition out of a
/// terminal state but the allowed one.
pub(super) fn no_ghosts(ev: &Evidence, reg: &WorkflowRegistry) -> Outcome {
    let mut out = Vec::new();
    for s in &ev.submitted {
        let label = ev.label(&s.run_id);
        let accept = ev
            .workflow_of(reg, &s.run_id)
            .is_some_and(|w| w.late_completion == LateCompletion::Accept);
        let seen = ev.seen_states(&s.run_id);
        let mut first: Option<(u64, RunState, String)> = None;
        for (t, st, who) in seen {
            match &first {
                None if st.is_terminal() => first = Some((t, st, who)),
                Some((t0, s0, w0)) if st != *s0 && !(accept && *s0 == RunState::Lost) => {
                    out.push(format!(
                        "{label}: {w0} saw {s0} at +{t0} ms, then {who} saw {st} at +{t} ms"
                    ));
                    break;
                }
                _ => {}
            }
        }
        for l in ev
            .late
            .iter()
            .filter(|l| l.run_id == s.run_id && l.accepted)
        {
            if !accept {
                out.push(format!(
                    "{label}: a late completion at +{} ms was accepted ({}), but the workflow \
                     refuses late completions",
                    l.t_ms, l.answer
                ));
            }
        }
    }
    for a in &ev.store {
        for t in &a.transitions {
            if t.from.is_terminal() {
                let allowed = t.late && a.run.late_completion == LateCompletion::Accept;
                if !allowed {
                    out.push(format!(
                        "{}: ghost transition {} -> {} by {} at epoch {} ({}) (store record)",
                        ev.label(&a.run.id),
                        t.from,
                        t.to,
                        t.pod.as_deref().unwrap_or("?"),
                        t.epoch,
                        t.reason
                    ));
                }
            }
        }
    }
    pass_or_fail(out)
}
