//! The Chaos view: the processes of the cluster this console runs (the
//! demo), with the keys that signal them.

use super::table::ListTable;
use super::{block, filter_note, selected_row};
use crate::console::app::{App, pod_state_str};
use crate::console::data::View;
use crate::console::keys::Action;
use crate::console::theme::Role;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Paragraph, Row, Wrap};

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
    // A cluster has a few pods: the table does not scroll.
    ListTable::new(
        app,
        &["POD", "PID", "PROCESS", "REGISTRY", "RUNS", "URL"],
        &[10, 8, 8, 15, 5],
    )
    .highlight(selected_row(app, View::Chaos, rows.len()))
    .render(frame, table_area, &rows, |p| {
        let role = match p.state {
            crate::cluster::PodState::Running => Role::Ok,
            crate::cluster::PodState::Paused | crate::cluster::PodState::Partitioned => Role::Warn,
            crate::cluster::PodState::Exited => Role::Bad,
        };
        let registered = app.pods.iter().any(|r| r.pod_id == p.id);
        Row::new(vec![
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
        ])
    });
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
