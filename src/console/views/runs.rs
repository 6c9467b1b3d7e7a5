//! The Runs view: the runs the store holds, filtered and sorted, with
//! each one's current step and last event.

use super::table::ListTable;
use super::{age, block, filter_note, selected_row, short, sort_note, state_role};
use crate::console::app::App;
use crate::console::data::View;
use crate::engine::run::StepStatus;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let rows = app.visible_runs();
    let mut notes = Vec::new();
    if let Some(s) = app.state_filter {
        notes.push(format!("state={s}"));
    }
    if let Some(l) = &app.lane_filter {
        notes.push(format!("lane={l}"));
    }
    if let Some(p) = &app.pod_filter {
        notes.push(format!("pod={p}"));
    }
    let title = format!(
        "Runs ({} of {} loaded){}{}{}",
        rows.len(),
        app.runs.len(),
        if notes.is_empty() {
            String::new()
        } else {
            format!(" {}", notes.join(" "))
        },
        filter_note(app, View::Runs),
        sort_note(app, View::Runs)
    );
    let empty = if app.runs.is_empty() {
        if app.health.error.is_some() && app.health.ok_at_ms.is_none() {
            "cannot read the store yet: the error is below"
        } else if app.health.ok_at_ms.is_none() {
            "waiting for the store…"
        } else {
            "no runs in the store yet: submit one (vigil submit WORKFLOW) or start `vigil demo`"
        }
    } else {
        "no run matches the filter (esc clears it)"
    };
    let t = &app.theme;
    ListTable::new(
        app,
        &[
            "ID",
            "WORKFLOW",
            "LANE",
            "STATE",
            "OWNER",
            "STEP",
            "ATT",
            "AGE",
            "LAST EVENT",
        ],
        &[
            u16::try_from(app.id_len).unwrap_or(36),
            14,
            8,
            9,
            8,
            12,
            3,
            6,
        ],
    )
    .block(block(app, title))
    .empty(empty)
    .cursor(selected_row(app, View::Runs, rows.len()))
    .render(frame, area, &rows, |r| {
        let step = match &r.current_step {
            // A run that ended mid-step (cancelled, timed out, lost): the
            // step runs no more.
            Some((node, StepStatus::Running, _)) if r.state.is_terminal() => {
                format!("{node} ⊘ {}", r.state.as_str())
            }
            Some((node, status, _)) => format!(
                "{node}{}",
                match status {
                    StepStatus::Running => "…",
                    StepStatus::Succeeded => " ✓",
                    StepStatus::Failed => " ✗",
                }
            ),
            None => "-".into(),
        };
        let attempts = r
            .current_step
            .as_ref()
            .map_or("-".into(), |s| s.2.to_string());
        let last = match &r.last_event {
            Some((at, what)) => format!("{} ago {what}", age(app.now_ms - at)),
            None => "-".into(),
        };
        Row::new(vec![
            Cell::from(short(&r.id, app.id_len).to_owned()),
            Cell::from(r.workflow.clone()),
            Cell::from(r.lane.clone()),
            Cell::from(Span::styled(r.state.as_str(), t.style(state_role(r.state)))),
            Cell::from(r.owner_pod.clone().unwrap_or_else(|| "-".into())),
            Cell::from(step),
            Cell::from(attempts),
            Cell::from(age(app.now_ms - r.created_at_ms)),
            Cell::from(last),
        ])
    });
}
