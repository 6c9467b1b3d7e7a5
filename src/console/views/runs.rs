//! The Runs view: the runs the store holds, filtered and sorted, with
//! each one's current step and last event.

use super::{age, block, filter_note, header_row, short, sort_note, state_role, window};
use crate::console::app::App;
use crate::console::data::View;
use crate::console::theme::Role;
use crate::engine::run::StepStatus;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Paragraph, Row, Table};

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
    let b = block(app, title);
    let inner = b.inner(area);
    frame.render_widget(b, area);
    if rows.is_empty() {
        let msg = if app.runs.is_empty() {
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
        frame.render_widget(
            Paragraph::new(Span::styled(msg, app.theme.style(Role::Muted))),
            inner,
        );
        return;
    }
    let height = usize::from(inner.height.saturating_sub(1));
    let sel = app.selected[View::Runs.index()].0.min(rows.len() - 1);
    let (from, to) = window(sel, rows.len(), height);
    let t = &app.theme;
    let body: Vec<Row> = rows[from..to]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let step = match &r.current_step {
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
            let row = Row::new(vec![
                Cell::from(short(&r.id).to_owned()),
                Cell::from(r.workflow.clone()),
                Cell::from(r.lane.clone()),
                Cell::from(Span::styled(r.state.as_str(), t.style(state_role(r.state)))),
                Cell::from(r.owner_pod.clone().unwrap_or_else(|| "-".into())),
                Cell::from(step),
                Cell::from(attempts),
                Cell::from(age(app.now_ms - r.created_at_ms)),
                Cell::from(last),
            ]);
            if from + i == sel {
                row.style(t.style(Role::Selected))
            } else {
                row
            }
        })
        .collect();
    let table = Table::new(
        body,
        [
            Constraint::Length(8),
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(3),
            Constraint::Length(6),
            Constraint::Fill(1),
        ],
    )
    .header(header_row(
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
    ));
    frame.render_widget(table, inner);
}
