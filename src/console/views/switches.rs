//! The Switches view: every kill switch with its value and source, and
//! the selected one's meaning and audit trail.

use super::{age, block, filter_note, header_row, utc_time};
use crate::console::app::App;
use crate::console::data::View;
use crate::console::theme::Role;
use crate::engine::switches;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let names = app.visible_switches();
    let [top, bottom] = Layout::vertical([
        Constraint::Length(names.len() as u16 + 3),
        Constraint::Fill(1),
    ])
    .areas(area);
    let sel = app.selected[View::Switches.index()]
        .0
        .min(names.len().saturating_sub(1));
    let rows: Vec<Row> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (on, row) = app.switch_value(name);
            let (source, when, by, why) = match row {
                Some(r) => (
                    "store",
                    format!("{} ago", age(app.now_ms - r.updated_at_ms)),
                    r.updated_by.clone(),
                    r.reason.clone(),
                ),
                None => ("default", "-".into(), "-".into(), "-".into()),
            };
            let r = Row::new(vec![
                Cell::from(name.clone()),
                Cell::from(Span::styled(
                    if on { "on" } else { "OFF" },
                    t.style(if on { Role::Ok } else { Role::Bad }),
                )),
                Cell::from(source),
                Cell::from(when),
                Cell::from(by),
                Cell::from(why),
            ]);
            if i == sel {
                r.style(t.style(Role::Selected))
            } else {
                r
            }
        })
        .collect();
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(24),
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Fill(1),
            ],
        )
        .header(header_row(
            app,
            &["SWITCH", "STATE", "SOURCE", "CHANGED", "BY", "WHY"],
        ))
        .block(block(
            app,
            format!(
                "Kill switches (pods re-read them every {} ms){}",
                switches::WATCH_INTERVAL.as_millis(),
                filter_note(app, View::Switches)
            ),
        )),
        top,
    );
    let Some(name) = names.get(sel) else {
        return;
    };
    let Some(spec) = switches::KNOWN.iter().find(|s| s.name == name) else {
        return;
    };
    let mut lines = vec![
        Line::from(vec![
            Span::styled("off disables: ", t.style(Role::Header)),
            Span::raw(spec.disables),
        ]),
        Line::from(vec![
            Span::styled("watch: ", t.style(Role::Header)),
            Span::raw(format!(
                "{} · default {} · boot default from {}",
                spec.metric,
                if spec.default { "on" } else { "off" },
                spec.env
            )),
        ]),
        Line::from(""),
        Line::from(Span::styled(
            "audit trail (newest first, UTC):",
            t.style(Role::Header),
        )),
    ];
    match &app.audit {
        Some((n, rows)) if n == name => {
            if rows.is_empty() {
                lines.push(Line::from(Span::styled(
                    "never changed: the default applies",
                    t.style(Role::Muted),
                )));
            }
            let show = |v: Option<bool>| match v {
                Some(true) => "on",
                Some(false) => "off",
                None => "default",
            };
            for a in rows.iter().rev() {
                lines.push(Line::from(format!(
                    "{}  {} -> {}  by {}: {}",
                    utc_time(a.at_ms),
                    show(a.old),
                    show(Some(a.new)),
                    a.who,
                    a.reason
                )));
            }
        }
        _ => lines.push(Line::from(Span::styled("loading…", t.style(Role::Muted)))),
    }
    if app.read_only {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(
            "read-only: flipping is disabled",
            t.style(Role::Warn),
        )));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(app, name.clone())),
        bottom,
    );
}
