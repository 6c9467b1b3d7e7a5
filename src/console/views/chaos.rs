//! The Chaos view: the processes of the cluster this console runs (the
//! demo), with the keys that signal them.

use super::{block, filter_note, header_row};
use crate::console::app::{App, pod_state_str};
use crate::console::data::View;
use crate::console::keys::Action;
use crate::console::theme::Role;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let rows = app.visible_chaos();
    let b = block(
        app,
        format!(
            "Chaos: this console's cluster ({} pods){}",
            rows.len(),
            filter_note(app, View::Chaos)
        ),
    );
    let inner = b.inner(area);
    frame.render_widget(b, area);
    let [table_area, note] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(2)]).areas(inner);
    let sel = app.selected[View::Chaos.index()]
        .0
        .min(rows.len().saturating_sub(1));
    let body: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let role = match p.state {
                crate::cluster::PodState::Running => Role::Ok,
                crate::cluster::PodState::Paused | crate::cluster::PodState::Partitioned => {
                    Role::Warn
                }
                crate::cluster::PodState::Exited => Role::Bad,
            };
            let registered = app.pods.iter().any(|r| r.pod_id == p.id);
            let row = Row::new(vec![
                Cell::from(p.id.clone()),
                Cell::from(p.pid.map_or("-".into(), |p| p.to_string())),
                Cell::from(Span::styled(pod_state_str(p.state), t.style(role))),
                Cell::from(if registered {
                    "registered"
                } else {
                    "not registered"
                }),
                Cell::from(app.owned_runs(&p.id).to_string()),
                Cell::from(p.url.clone()),
            ]);
            if i == sel {
                row.style(t.style(Role::Selected))
            } else {
                row
            }
        })
        .collect();
    frame.render_widget(
        Table::new(
            body,
            [
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(15),
                Constraint::Length(5),
                Constraint::Fill(1),
            ],
        )
        .header(header_row(
            app,
            &["POD", "PID", "PROCESS", "REGISTRY", "RUNS", "URL"],
        )),
        table_area,
    );
    let k = |a: Action| app.keys.hint(a);
    let text = if app.read_only {
        "read-only: chaos actions are disabled".to_owned()
    } else {
        format!(
            "{} kill (SIGKILL, a crash) · {} terminate (SIGTERM, graceful) · {} pause (SIGSTOP) · \
             {} resume · {} start again (same id). Each asks for confirmation.",
            k(Action::ChaosKill),
            k(Action::ChaosTerminate),
            k(Action::ChaosPause),
            k(Action::ChaosResume),
            k(Action::ChaosStart)
        )
    };
    frame.render_widget(
        Paragraph::new(Span::styled(text, t.style(Role::Muted))).wrap(Wrap { trim: true }),
        note,
    );
}
