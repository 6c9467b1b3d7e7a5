//! The Switches view: every kill switch with its value and source, and
//! the selected one's meaning and audit trail.

use super::table::ListTable;
use super::{age, block, filter_note, selected_row, utc_time};
use crate::console::app::App;
use crate::console::data::View;
use crate::console::theme::Role;
use crate::engine::switches;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Wrap};

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let names = app.visible_switches();
    let [top, bottom] = Layout::vertical([
        Constraint::Length(names.len() as u16 + 3),
        Constraint::Fill(1),
    ])
    .areas(area);
    let sel = selected_row(app, View::Switches, names.len());
    let title = format!(
        "Kill switches (pods re-read them every {} ms){}",
        switches::WATCH_INTERVAL.as_millis(),
        filter_note(app, View::Switches)
    );
    // The table is as tall as its rows: it needs no scrolling.
    ListTable::new(
        app,
        &["SWITCH", "STATE", "SOURCE", "CHANGED", "BY", "WHY"],
        &[24, 5, 8, 10, 12],
    )
    .block(block(app, title))
    .highlight(sel)
    .render(frame, top, &names, |name| {
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
        Row::new(vec![
            Cell::from(name.clone()),
            Cell::from(Span::styled(
                if on { "on" } else { "OFF" },
                t.style(if on { Role::Ok } else { Role::Bad }),
            )),
            Cell::from(source),
            Cell::from(when),
            Cell::from(by),
            Cell::from(why),
        ])
    });
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
