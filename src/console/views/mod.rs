//! Rendering: pure functions of [`App`]. Nothing here reads a clock, the
//! store or the network, so every state renders the same way in a test.
//!
//! This module holds [`draw`] (the frame: header, tabs, the body, status
//! and key hints), the chrome lines and the helpers every view shares
//! (durations, times, ids, sparklines, blocks, notes). Each view has its
//! own module; they draw their rows with the one list table in `table`,
//! and the dialogs and help are in `overlay`.

mod activity;
mod chaos;
mod detail;
mod events;
mod overlay;
mod pods;
mod runs;
mod switches;
mod table;

pub use events::event_detail;

use super::app::{App, Dialog, Level, Mode, sort_columns};
use super::data::View;
use super::keys::Action;
use super::theme::Role;
use crate::engine::run::RunState;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};

/// Draw the whole console.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let [header, tabs, body, status, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(app)), header);
    frame.render_widget(Paragraph::new(tabs_line(app)), tabs);
    match (&app.detail, app.view) {
        (Some(d), _) => detail::draw(frame, app, d, body),
        (None, View::Runs) => runs::draw(frame, app, body),
        (None, View::Pods) => pods::draw(frame, app, body),
        (None, View::Activity) => activity::draw(frame, app, body),
        (None, View::Switches) => switches::draw(frame, app, body),
        (None, View::Events) => events::draw(frame, app, body),
        (None, View::Chaos) => chaos::draw(frame, app, body),
    }
    frame.render_widget(Paragraph::new(status_line(app)), status);
    frame.render_widget(Paragraph::new(hints_line(app)), hints);
    match &app.mode {
        Mode::Help => overlay::help(frame, app, body),
        Mode::Dialog(d) => overlay::dialog(frame, app, d, body),
        _ => {}
    }
}

// ------------------------------------------------------------------ helpers

/// A duration as people read it: 0.3s, 12s, 4m05s, 2h03m, 3d.
pub fn age(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else if ms < 86_400_000 {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    } else {
        format!("{}d", ms / 86_400_000)
    }
}

/// Time of day in UTC, to the millisecond.
pub fn utc_time(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        (day_ms / 60_000) % 60,
        (day_ms / 1000) % 60,
        day_ms % 1000
    )
}

/// The short form of an id: its first `len` characters, a prefix every
/// verb of the CLI and the console's `:run` accept.
pub fn short(id: &str, len: usize) -> &str {
    id.get(..len).unwrap_or(id)
}

/// How many leading characters tell `ids` apart, as git abbreviates: one
/// more than the longest prefix two of them share, at least 8. UUIDv7s
/// share their leading time bits, so runs of the same second need more.
pub fn id_abbrev<'a>(ids: impl IntoIterator<Item = &'a str>) -> usize {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    let longest = ids.iter().map(|i| i.len()).max().unwrap_or(8);
    ids.windows(2)
        .map(|w| {
            w[0].bytes()
                .zip(w[1].bytes())
                .take_while(|(a, b)| a == b)
                .count()
                + 1
        })
        .max()
        .unwrap_or(0)
        .clamp(8, longest.max(8))
}

fn trunc(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// A sparkline as text (so it survives NO_COLOR and snapshots): `·` for
/// zero, then eighth blocks scaled to `max` (or the largest value).
pub fn sparkline(values: &[f64], max: Option<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = max
        .unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    values
        .iter()
        .map(|v| {
            if *v <= 0.0 {
                '·'
            } else {
                let i = ((v / top) * 7.0).round().clamp(0.0, 7.0) as usize;
                BARS[i]
            }
        })
        .collect()
}

fn state_role(s: RunState) -> Role {
    match s {
        RunState::Pending => Role::Muted,
        RunState::Running => Role::Accent,
        RunState::Succeeded => Role::Ok,
        RunState::Cancelled => Role::Warn,
        RunState::Failed | RunState::TimedOut | RunState::Lost => Role::Bad,
    }
}

fn block<'a>(app: &App, title: String) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.style(Role::Muted))
        .title(Span::styled(title, app.theme.style(Role::Title)))
}

/// The selected row of `view`'s table of `len` rows.
fn selected_row(app: &App, view: View, len: usize) -> usize {
    app.selected[view.index()].0.min(len.saturating_sub(1))
}

fn filter_note(app: &App, view: View) -> String {
    let f = &app.filters[view.index()];
    if f.text.is_empty() {
        String::new()
    } else {
        format!(" /{}", f.text)
    }
}

fn sort_note(app: &App, view: View) -> String {
    let (c, rev) = app.sort[view.index()];
    sort_columns(view)
        .iter()
        .find(|(k, _)| *k == c)
        .map(|(_, n)| format!(" sort:{n}{}", if rev { "↑" } else { "↓" }))
        .unwrap_or_default()
}

// ------------------------------------------------------------- chrome lines

fn header_line(app: &App) -> Line<'static> {
    let t = &app.theme;
    let mut spans = vec![
        Span::styled(" vigil console ", t.style(Role::Title)),
        Span::styled("│ ", t.style(Role::Muted)),
        Span::raw(format!(
            "{} {} ",
            if app.health.backend.is_empty() {
                "store"
            } else {
                app.health.backend
            },
            app.store_label
        )),
        Span::styled("│ ", t.style(Role::Muted)),
        Span::raw(format!("{} pods ", app.pods.len())),
    ];
    // Seen from every view: a pod that says it is not ready may lose its
    // runs to its peers soon.
    let unready = app.unready_pods().len();
    if unready > 0 {
        spans.push(Span::styled(
            format!("({unready} UNREADY) "),
            t.style(Role::Warn),
        ));
    }
    spans.extend([
        Span::raw(format!(
            "· {} running · {} pending ",
            app.count_state(RunState::Running),
            app.count_state(RunState::Pending)
        )),
        Span::styled("│ ", t.style(Role::Muted)),
    ]);
    match (&app.health.error, app.health.ok_at_ms) {
        (Some(e), ok) => {
            let _ = e; // the error itself goes on the status line
            spans.push(Span::styled(
                format!(
                    "store UNREACHABLE · {} ",
                    match ok {
                        Some(at) => format!("showing data {} old", age(app.now_ms - at)),
                        None => "no data yet".to_owned(),
                    }
                ),
                t.style(Role::Bad),
            ));
        }
        (None, Some(at)) => {
            let stale = app.now_ms - at > 5_000;
            spans.push(Span::styled(
                format!(
                    "{} {} ago",
                    if stale { "STALE: updated" } else { "updated" },
                    age(app.now_ms - at)
                ),
                t.style(if stale { Role::Warn } else { Role::Plain }),
            ));
            if let Some(q) = app.health.qps() {
                spans.push(Span::raw(format!(" · {q:.1} q/s")));
            }
            spans.push(Span::raw(" "));
        }
        (None, None) => spans.push(Span::styled("connecting… ", t.style(Role::Muted))),
    }
    if app.read_only {
        spans.push(Span::styled("[READ-ONLY] ", t.style(Role::Warn)));
    }
    if app.frozen {
        spans.push(Span::styled("[FROZEN] ", t.style(Role::Warn)));
    }
    Line::from(spans)
}

/// The views this console has, in tab order: the tab bar and the help
/// list exactly these (Chaos only when the console runs the cluster).
pub fn shown_views(app: &App) -> Vec<View> {
    View::ALL
        .into_iter()
        .filter(|v| *v != View::Chaos || app.has_chaos)
        .collect()
}

fn tabs_line(app: &App) -> Line<'static> {
    let t = &app.theme;
    let mut spans = vec![Span::raw(" ")];
    for v in shown_views(app) {
        let label = format!(" {} {} ", v.index() + 1, v.title());
        spans.push(if v == app.view {
            Span::styled(label, t.style(Role::Selected))
        } else {
            Span::styled(label, t.style(Role::Plain))
        });
        spans.push(Span::raw(" "));
    }
    Line::from(spans)
}

fn status_line(app: &App) -> Line<'static> {
    let t = &app.theme;
    match &app.mode {
        Mode::Filter => {
            let f = &app.filters[app.view.index()];
            let mut spans = vec![
                Span::styled("/", t.style(Role::Key)),
                Span::raw(f.text.clone()),
                Span::styled("█", t.style(Role::Muted)),
                Span::styled(
                    "  (regex, case-insensitive; ! inverts; enter keeps, esc clears)",
                    t.style(Role::Muted),
                ),
            ];
            if let Some(e) = &f.error {
                spans.push(Span::styled(format!("  {e}"), t.style(Role::Warn)));
            }
            Line::from(spans)
        }
        Mode::Command(s) => Line::from(vec![
            Span::styled(":", t.style(Role::Key)),
            Span::raw(s.clone()),
            Span::styled("█", t.style(Role::Muted)),
            Span::styled(
                "  (runs pods activity switches events chaos · run ID · state S · set NAME on|off · help)",
                t.style(Role::Muted),
            ),
        ]),
        _ => match &app.status {
            None if app.health.error.is_some() => Line::from(Span::styled(
                format!(
                    " store: {} (retrying)",
                    app.health.error.as_deref().unwrap_or_default()
                ),
                t.style(Role::Bad),
            )),
            Some(s) => Line::from(Span::styled(
                format!(" {}", s.text),
                t.style(if s.level == Level::Error {
                    Role::Bad
                } else {
                    Role::Accent
                }),
            )),
            None => Line::from(""),
        },
    }
}

fn hints_line(app: &App) -> Line<'static> {
    let t = &app.theme;
    let k = |a: Action| app.keys.hint(a);
    let mut pairs: Vec<(String, String)> = Vec::new();
    match (&app.mode, &app.detail, app.view) {
        (Mode::Dialog(Dialog::Switch { .. }), _, _) => {
            pairs.push(("enter".into(), "confirm".into()));
            pairs.push(("esc".into(), "cancel".into()));
        }
        (Mode::Dialog(Dialog::Chaos { .. } | Dialog::CancelRun { .. }), _, _) => {
            pairs.push(("y".into(), "confirm".into()));
            pairs.push(("any other key".into(), "cancel".into()));
        }
        (Mode::Help, _, _) => pairs.push(("any key".into(), "close help".into())),
        (Mode::Filter | Mode::Command(_), _, _) => {
            pairs.push(("enter".into(), "apply".into()));
            pairs.push(("esc".into(), "cancel".into()));
        }
        (Mode::Normal, Some(_), _) => {
            pairs.push((k(Action::Back), "back".into()));
        }
        (Mode::Normal, None, view) => {
            pairs.push((
                format!("{}/{}", k(Action::Down), k(Action::Up)),
                "move".into(),
            ));
            match view {
                View::Runs => pairs.push((k(Action::Open), "open".into())),
                View::Events => pairs.push((k(Action::Open), "open run".into())),
                View::Switches if !app.read_only => {
                    pairs.push((k(Action::ToggleSwitch), "flip".into()))
                }
                View::Chaos if !app.read_only => {
                    pairs.push((k(Action::ChaosKill), "kill".into()));
                    pairs.push((k(Action::ChaosTerminate), "terminate".into()));
                    pairs.push((k(Action::ChaosPause), "pause".into()));
                    pairs.push((k(Action::ChaosResume), "resume".into()));
                    pairs.push((k(Action::ChaosStart), "start".into()));
                }
                _ => {}
            }
            let sorts = sort_columns(view);
            if !sorts.is_empty() {
                pairs.push((
                    sorts.iter().map(|(c, _)| *c).collect::<String>(),
                    "sort".into(),
                ));
            }
            pairs.push((k(Action::Filter), "filter".into()));
        }
    }
    if app.mode == Mode::Normal {
        pairs.push((k(Action::Command), "cmd".into()));
        pairs.push((
            k(Action::Freeze),
            if app.frozen { "unfreeze" } else { "freeze" }.into(),
        ));
        pairs.push((k(Action::Help), "help".into()));
        pairs.push((k(Action::Quit), "quit".into()));
    }
    let mut spans = vec![Span::raw(" ")];
    for (key, what) in pairs {
        spans.push(Span::styled(key, t.style(Role::Key)));
        spans.push(Span::styled(format!(" {what}  "), t.style(Role::Muted)));
    }
    Line::from(spans)
}
