//! What was acknowledged survives (`durable_acks`): after a power cut that
//! drops every write never fsynced (`lose_unsynced`) and a restart, every
//! thing a client was told is still so. Judged on the clients' histories:
//!
//! - a run whose submission was acknowledged (201) is still known to the
//!   API at the end;
//! - a run a client saw end keeps that ending: the API's last answer is the
//!   state of the first `end` event any client saw;
//! - a run a client saw end `succeeded` streams, to a client attaching
//!   after the cut, exactly the chunks (by content, in order) the client
//!   that saw the end held then: a finished run's output is final.
//!
//! A step the witness saw succeed and then ran again is
//! `executions_bounded`'s finding. Not applicable without a power cut.

use super::streams::held;
use super::{Evidence, Outcome, not_applicable, pass_or_fail};
use crate::chaos::scenario::{Action, AttachKind};
use crate::client::StreamEvent;
use crate::engine::run::RunState;

pub(super) fn durable_acks(ev: &Evidence) -> Outcome {
    let Some(cut) = ev.faults.iter().find(|f| f.action == Action::LoseUnsynced) else {
        return not_applicable("no power cut (lose_unsynced) put acknowledged writes at risk");
    };
    let mut out = Vec::new();
    for s in &ev.submitted {
        let label = ev.label(&s.run_id);
        let Some(last) = ev.final_state(&s.run_id) else {
            out.push(format!(
                "{label}: its submission was acknowledged at +{} ms, and after the power cut at \
                 +{} ms the API no longer answers for it",
                s.t_ms, cut.t_ms
            ));
            continue;
        };
        // The first ending any client saw, and the client that saw it.
        let mut first_end: Option<(u64, RunState, usize)> = None;
        for (i, a) in ev.attachers.iter().enumerate() {
            if a.run_id != s.run_id {
                continue;
            }
            for (t, e) in &a.events {
                if let StreamEvent::End { state, .. } = e
                    && first_end.is_none_or(|(ft, _, _)| *t < ft)
                {
                    first_end = Some((*t, *state, i));
                }
            }
        }
        let Some((t_end, ended, who)) = first_end else {
            continue;
        };
        if last != ended {
            out.push(format!(
                "{label}: a client saw it end {ended} at +{t_end} ms; after the power cut at +{} \
                 ms the API says {last}",
                cut.t_ms
            ));
            continue;
        }
        if ended != RunState::Succeeded || t_end > cut.t_ms {
            continue;
        }
        let (before, _) = held(&ev.attachers[who].events);
        let before: Vec<&str> = before.iter().map(|c| c.data.as_str()).collect();
        for late in ev
            .attachers
            .iter()
            .filter(|a| a.run_id == s.run_id && a.attacher == AttachKind::Late)
        {
            let (after, _) = held(&late.events);
            let after: Vec<&str> = after.iter().map(|c| c.data.as_str()).collect();
            if after != before {
                let first_diff = before
                    .iter()
                    .zip(after.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(before.len().min(after.len()));
                out.push(format!(
                    "{label}: ended succeeded at +{t_end} ms holding {} chunks; after the power \
                     cut at +{} ms a late client holds {} (they part at chunk {first_diff}: {:?} \
                     then, {:?} now)",
                    before.len(),
                    cut.t_ms,
                    after.len(),
                    before.get(first_diff),
                    after.get(first_diff)
                ));
            }
        }
    }
    pass_or_fail(out)
}
