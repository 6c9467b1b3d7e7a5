//! What draws over a view: the confirmation dialogs (switch flips, chaos
//! actions) and the help for the keys.

use crate::console::app::{App, Dialog, sort_columns};
use crate::console::data::View;
use crate::console::keys::Action;
use crate::console::theme::Role;
use crate::engine::switches;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

pub(super) fn dialog(frame: &mut Frame, app: &App, d: &Dialog, area: Rect) {
    let t = &app.theme;
    let (title, lines): (String, Vec<Line>) = match d {
        Dialog::Switch {
            name,
            enabled,
            reason,
        } => {
            let spec = switches::KNOWN.iter().find(|s| s.name == name);
            let mut lines = vec![
                Line::from(vec![
                    Span::raw("Turn "),
                    Span::styled(name.clone(), t.style(Role::Header)),
                    Span::raw(" "),
                    Span::styled(
                        if *enabled { "ON" } else { "OFF" },
                        t.style(if *enabled { Role::Ok } else { Role::Bad }),
                    ),
                    Span::raw("? Every pod picks it up within a second."),
                ]),
                Line::from(""),
            ];
            if let (Some(s), false) = (spec, *enabled) {
                lines.push(Line::from(format!("Off disables: {}", s.disables)));
                lines.push(Line::from(""));
            }
            lines.push(Line::from(Span::styled(
                "Reason (recorded in the audit trail):",
                t.style(Role::Header),
            )));
            lines.push(Line::from(vec![
                Span::raw("> "),
                Span::raw(reason.clone()),
                Span::styled("█", t.style(Role::Muted)),
            ]));
            lines.push(Line::from(""));
            lines.push(Line::from(Span::styled(
                "enter: confirm (needs a reason) · esc: cancel",
                t.style(Role::Muted),
            )));
            ("Flip a kill switch".into(), lines)
        }
        Dialog::CancelRun { run_id } => (
            "Cancel a run".into(),
            vec![
                Line::from(vec![
                    Span::raw("Cancel run "),
                    Span::styled(run_id.clone(), t.style(Role::Header)),
                    Span::raw("?"),
                ]),
                Line::from(""),
                Line::from(
                    "Written to the store with its transition row; its owner stops it within a \
                     second. A cancelled run is not resumed.",
                ),
                Line::from(""),
                Line::from(Span::styled(
                    "y: confirm · any other key: cancel",
                    t.style(Role::Muted),
                )),
            ],
        ),
        Dialog::Chaos { op, pod } => (
            "Confirm a chaos action".into(),
            vec![
                Line::from(vec![
                    Span::raw(format!("{} pod ", op.verb())),
                    Span::styled(pod.clone(), t.style(Role::Header)),
                    Span::raw("?"),
                ]),
                Line::from(""),
                Line::from(
                    "Its runs stay owned by it until a survivor finds it dead and claims them.",
                ),
                Line::from(""),
                Line::from(Span::styled(
                    "y: confirm · any other key: cancel",
                    t.style(Role::Muted),
                )),
            ],
        ),
    };
    // Height after wrapping at the dialog's inner width.
    let inner_w = usize::from(area.width.min(72).saturating_sub(2)).max(1);
    let height: usize = lines
        .iter()
        .map(|l| l.width().max(1).div_ceil(inner_w))
        .sum();
    let r = centered(area, 72, height as u16 + 2);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(t.style(Role::Warn))
                .title(Span::styled(title, t.style(Role::Title))),
        ),
        r,
    );
}

pub(super) fn help(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let k = |a: Action| app.keys.keys_for(a).join(" ");
    let mut rows: Vec<(String, String)> = vec![
        (
            format!("{} / {}", k(Action::Down), k(Action::Up)),
            "move down / up".into(),
        ),
        (
            format!("gg {} / {}", k(Action::Top), k(Action::Bottom)),
            "top / bottom".into(),
        ),
        (
            format!("{} / {}", k(Action::HalfPageDown), k(Action::HalfPageUp)),
            "half a page down / up".into(),
        ),
        {
            let views = super::shown_views(app);
            (
                format!("1-{}", views.len()),
                format!(
                    "views: {}",
                    views
                        .iter()
                        .map(|v| v.title().to_lowercase())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            )
        },
        (k(Action::Filter), "filter (regex; ! inverts)".into()),
        (
            k(Action::Command),
            format!(
                "{} · run ID · state/lane/pod X · clear",
                super::shown_views(app)
                    .iter()
                    .map(|v| v.title().to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        (
            String::new(),
            "sort COL · set NAME on|off · kill/term/pause/resume/start POD · freeze · quit".into(),
        ),
        (
            "tab".into(),
            "on the command line: complete the command or its argument".into(),
        ),
        (k(Action::Back), "back: close, clear the filter".into()),
        (k(Action::Freeze), "freeze / unfreeze updates".into()),
        (k(Action::Refresh), "read the store now".into()),
        (
            k(Action::CancelRun),
            "cancel the selected run (asks first; not in read-only)".into(),
        ),
        (
            k(Action::CopyId),
            "copy the selected run's id (OSC 52 clipboard)".into(),
        ),
        (k(Action::Quit), "quit".into()),
    ];
    let sorts = sort_columns(app.view);
    if !sorts.is_empty() && app.detail.is_none() {
        rows.push((
            sorts
                .iter()
                .map(|(c, _)| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            format!(
                "sort: {} (again reverses)",
                sorts.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(" ")
            ),
        ));
    }
    let ro = if app.read_only {
        " (disabled: read-only)"
    } else {
        ""
    };
    match (app.view, &app.detail) {
        (View::Runs, None) => rows.push((
            k(Action::Open),
            "open the run: steps, log, live stream".into(),
        )),
        (View::Events, _) => rows.push((k(Action::Open), "open the event's run".into())),
        (View::Switches, _) => rows.push((
            k(Action::ToggleSwitch),
            format!("flip the switch (asks for a reason){ro}"),
        )),
        (View::Chaos, _) => {
            rows.push((k(Action::ChaosKill), format!("kill: SIGKILL{ro}")));
            rows.push((k(Action::ChaosTerminate), format!("terminate: SIGTERM{ro}")));
            rows.push((k(Action::ChaosPause), format!("pause: SIGSTOP{ro}")));
            rows.push((k(Action::ChaosResume), format!("resume: SIGCONT{ro}")));
            rows.push((k(Action::ChaosStart), format!("start again{ro}")));
        }
        _ => {}
    }
    let lines: Vec<Line> = rows
        .into_iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!("{key:>18}  "), t.style(Role::Key)),
                Span::raw(what),
            ])
        })
        .collect();
    let r = centered(area, 100, lines.len() as u16 + 2);
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(t.style(Role::Accent))
                .title(Span::styled(
                    format!("Keys: {} (any key closes)", app.view.title()),
                    t.style(Role::Title),
                )),
        ),
        r,
    );
}
