//! The Events view: transitions, claims, deaths and switch flips, newest
//! first, and [`event_detail`], the one line an event says.

use super::table::ListTable;
use super::{age, block, filter_note, selected_row, short, utc_time};
use crate::console::app::{App, event_label};
use crate::console::data::View;
use crate::console::theme::Role;
use crate::engine::store::{ConsoleEvent, EventKind};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

/// What an event says, past its kind and subject.
pub fn event_detail(e: &ConsoleEvent) -> String {
    let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    match e.kind {
        EventKind::Transition => format!(
            "{} -> {} e{} by {}{}",
            o(&e.from),
            o(&e.to),
            e.epoch.unwrap_or(0),
            o(&e.actor),
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", e.reason)
            }
        ),
        EventKind::Claim => format!(
            "{} -> {} (epoch {})",
            o(&e.from),
            o(&e.to),
            e.epoch.unwrap_or(0)
        ),
        EventKind::Death => format!(
            "found dead by {}, {} after its last heartbeat",
            o(&e.actor),
            age(e.at_ms - e.extra_ms.unwrap_or(e.at_ms))
        ),
        EventKind::Switch => format!(
            "{} -> {} by {}: {}",
            e.from.clone().unwrap_or_else(|| "default".into()),
            o(&e.to),
            o(&e.actor),
            e.reason
        ),
    }
}

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let rows = app.visible_events();
    let title = format!(
        "Events, newest first ({} of {} kept, UTC){}",
        rows.len(),
        app.events.len(),
        filter_note(app, View::Events)
    );
    ListTable::new(app, &["TIME", "KIND", "SUBJECT", "DETAIL"], &[12, 10, 17])
        .block(block(app, title))
        .empty(if app.events.is_empty() {
            "no events yet: transitions, claims, deaths and switch flips show here"
        } else {
            "no event matches the filter (esc clears it)"
        })
        .cursor(selected_row(app, View::Events, rows.len()))
        .render(frame, area, &rows, |e| {
            let label = event_label(e);
            let role = match label {
                "death" | "reap" | "janitor" => Role::Bad,
                "claim" | "switch" => Role::Warn,
                _ => match e.to.as_deref() {
                    Some("succeeded") => Role::Ok,
                    Some("failed" | "lost" | "timed_out") => Role::Bad,
                    _ => Role::Plain,
                },
            };
            let subject = match e.kind {
                EventKind::Transition | EventKind::Claim => {
                    short(&e.subject, app.id_len).to_owned()
                }
                _ => e.subject.clone(),
            };
            Row::new(vec![
                Cell::from(Span::styled(utc_time(e.at_ms), t.style(Role::Muted))),
                Cell::from(Span::styled(label, t.style(role))),
                Cell::from(subject),
                Cell::from(event_detail(e)),
            ])
        });
}
