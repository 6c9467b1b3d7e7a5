//! Rendering: pure functions of [`App`]. Nothing here reads a clock, the
//! store or the network, so every state renders the same way in a test.

use super::app::{
    ACTIVITY_WINDOW_MS, App, Detail, Dialog, Level, Mode, StreamLine, event_label, pod_state_str,
    sort_columns,
};
use super::data::View;
use super::keys::Action;
use super::theme::Role;
use crate::engine::liveness::lock_key;
use crate::engine::run::{RunState, StepStatus};
use crate::engine::store::{ConsoleEvent, EventKind};
use crate::engine::switches;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

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
        (Some(d), _) => draw_detail(frame, app, d, body),
        (None, View::Runs) => draw_runs(frame, app, body),
        (None, View::Pods) => draw_pods(frame, app, body),
        (None, View::Activity) => draw_activity(frame, app, body),
        (None, View::Switches) => draw_switches(frame, app, body),
        (None, View::Events) => draw_events(frame, app, body),
        (None, View::Chaos) => draw_chaos(frame, app, body),
    }
    frame.render_widget(Paragraph::new(status_line(app)), status);
    frame.render_widget(Paragraph::new(hints_line(app)), hints);
    match &app.mode {
        Mode::Help => draw_help(frame, app, body),
        Mode::Dialog(d) => draw_dialog(frame, app, d, body),
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

/// The last 8 characters of an id: UUIDv7s share their leading time bits.
pub fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
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

fn header_row<'a>(app: &App, cols: &[&'a str]) -> Row<'a> {
    Row::new(cols.iter().map(|c| Cell::from(*c))).style(app.theme.style(Role::Header))
}

/// First row to draw so that `selected` stays visible in `height` rows.
fn window(selected: usize, len: usize, height: usize) -> (usize, usize) {
    let height = height.max(1);
    let offset = if selected >= height {
        selected + 1 - height
    } else {
        0
    };
    (offset, (offset + height).min(len))
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
        Span::raw(format!(
            "{} pods · {} running · {} pending ",
            app.pods.len(),
            app.count_state(RunState::Running),
            app.count_state(RunState::Pending)
        )),
        Span::styled("│ ", t.style(Role::Muted)),
    ];
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

fn tabs_line(app: &App) -> Line<'static> {
    let t = &app.theme;
    let mut spans = vec![Span::raw(" ")];
    for v in View::ALL {
        if v == View::Chaos && !app.has_chaos {
            continue;
        }
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
        (Mode::Dialog(Dialog::Chaos { .. }), _, _) => {
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

// --------------------------------------------------------------------- runs

fn draw_runs(frame: &mut Frame, app: &App, area: Rect) {
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

fn draw_detail(frame: &mut Frame, app: &App, d: &Detail, area: Rect) {
    let t = &app.theme;
    let b = block(app, format!("Run {} (esc back)", d.run_id));
    let inner = b.inner(area);
    frame.render_widget(b, area);
    let Some(run) = &d.run else {
        let msg = if d.loaded {
            format!("run {} is not in the store", d.run_id)
        } else {
            "loading…".to_owned()
        };
        frame.render_widget(
            Paragraph::new(Span::styled(msg, t.style(Role::Muted))),
            inner,
        );
        return;
    };
    let [info, middle, stream] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Percentage(40),
    ])
    .areas(inner);
    let mut first = vec![
        Span::raw(format!("{} · lane {} · ", run.workflow, run.lane)),
        Span::styled(
            run.state.as_str().to_owned(),
            t.style(state_role(run.state)),
        ),
        Span::raw(format!(
            " · owner {} · epoch {} · created {} ago · updated {} ago",
            run.owner_pod.as_deref().unwrap_or("-"),
            run.epoch,
            age(app.now_ms - run.created_at_ms),
            age(app.now_ms - run.updated_at_ms)
        )),
    ];
    if let Some(hb) = run.heartbeat_at_ms {
        first.push(Span::raw(format!(
            " · heartbeat {} ago",
            age(app.now_ms - hb)
        )));
    }
    let second = match (&run.error, &run.retry_of) {
        (Some(e), _) => Line::from(Span::styled(format!("error: {e}"), t.style(Role::Bad))),
        (None, Some(r)) => Line::from(format!("retry of {r}")),
        _ => Line::from(Span::styled(
            "outputs below are the redacted copy; execution reads the raw one",
            t.style(Role::Muted),
        )),
    };
    frame.render_widget(Paragraph::new(vec![Line::from(first), second]), info);

    let [steps_area, log_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    let steps: Vec<Row> = d
        .steps
        .iter()
        .map(|s| {
            let role = match s.status {
                StepStatus::Running => Role::Accent,
                StepStatus::Succeeded => Role::Ok,
                StepStatus::Failed => Role::Bad,
            };
            Row::new(vec![
                Cell::from(s.node_id.clone()),
                Cell::from(Span::styled(s.status.as_str(), t.style(role))),
                Cell::from(s.attempts.to_string()),
                Cell::from(match (&s.output, &s.error) {
                    (Some(o), _) => o.to_string(),
                    (None, Some(e)) => format!("error: {e}"),
                    _ => "-".into(),
                }),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            steps,
            [
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Length(3),
                Constraint::Fill(1),
            ],
        )
        .header(header_row(
            app,
            &["STEP", "STATUS", "ATT", "OUTPUT (redacted)"],
        ))
        .block(block(app, "Steps".into())),
        steps_area,
    );
    // Transitions and claims, merged in time order.
    let mut log: Vec<(i64, i64, String)> = d
        .transitions
        .iter()
        .map(|tr| {
            (
                tr.at_ms,
                0,
                format!(
                    "{} -> {} e{} {}{}{}",
                    tr.from,
                    tr.to,
                    tr.epoch,
                    tr.pod.as_deref().unwrap_or("-"),
                    if tr.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", tr.reason)
                    },
                    if tr.late { " [late]" } else { "" }
                ),
            )
        })
        .chain(d.claims.iter().map(|c| {
            (
                c.at_ms,
                1,
                format!(
                    "claim {} -> {} e{}",
                    c.from_pod.as_deref().unwrap_or("-"),
                    c.to_pod,
                    c.epoch
                ),
            )
        }))
        .collect();
    log.sort_by_key(|(at, order, _)| (*at, *order));
    let log_height = usize::from(log_area.height.saturating_sub(2));
    let skip = log.len().saturating_sub(log_height);
    let lines: Vec<Line> = log
        .into_iter()
        .skip(skip)
        .map(|(at, _, what)| {
            Line::from(vec![
                Span::styled(format!("{} ", utc_time(at)), t.style(Role::Muted)),
                Span::raw(what),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(block(app, "Transitions and claims (UTC)".into())),
        log_area,
    );

    let sb = block(
        app,
        "Stream (live; a reset drops what unfinished attempts streamed)".into(),
    );
    let sinner = sb.inner(stream);
    frame.render_widget(sb, stream);
    let width = usize::from(sinner.width).max(1);
    let mut lines: Vec<Line> = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, lines: &mut Vec<Line>| {
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(width) {
            lines.push(Line::from(chunk.iter().collect::<String>()));
        }
        text.clear();
    };
    for l in &d.stream {
        match l {
            StreamLine::Chunk { data, .. } => text.push_str(data),
            StreamLine::Reset { epoch, discarded } => {
                flush(&mut text, &mut lines);
                lines.push(Line::from(Span::styled(
                    trunc(
                        &format!(
                            "── reset: resumed at epoch {epoch}; {discarded} unfinished chunk(s) dropped ──"
                        ),
                        width,
                    ),
                    t.style(Role::Warn),
                )));
            }
        }
    }
    flush(&mut text, &mut lines);
    if lines.is_empty() {
        lines.push(Line::from(Span::styled(
            "(no chunks yet)",
            t.style(Role::Muted),
        )));
    }
    let h = usize::from(sinner.height);
    let skip = lines.len().saturating_sub(h);
    frame.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()),
        sinner,
    );
}

// --------------------------------------------------------------------- pods

fn draw_pods(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let deaths = app.deaths();
    let dead_height = (deaths.len().min(8) as u16 + 3).max(4);
    let [live_area, dead_area] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(dead_height)]).areas(area);
    let rows = app.visible_pods();
    let b = block(
        app,
        format!(
            "Pods in the registry ({}){}{}",
            rows.len(),
            filter_note(app, View::Pods),
            sort_note(app, View::Pods)
        ),
    );
    let inner = b.inner(live_area);
    frame.render_widget(b, live_area);
    if rows.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled(
                if app.health.ok_at_ms.is_none() {
                    "waiting for the store…"
                } else {
                    "no pod is registered: start one with `vigil pod --store …` (or `vigil demo`)"
                },
                t.style(Role::Muted),
            )),
            inner,
        );
    } else {
        let sel = app.selected[View::Pods.index()].0.min(rows.len() - 1);
        let height = usize::from(inner.height.saturating_sub(1));
        let (from, to) = window(sel, rows.len(), height);
        let body: Vec<Row> = rows[from..to]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (liveness, role) = liveness_of(app, p);
                let hb_age = app.now_ms - p.heartbeat_at_ms;
                let hist: Vec<f64> = app
                    .heartbeats
                    .get(&p.pod_id)
                    .map(|q| q.iter().map(|v| *v as f64).collect())
                    .unwrap_or_default();
                // Scrapes are keyed by pod id, or by URL for --pods.
                let scrape = app.activity.scrapes.get(&p.pod_id).or_else(|| {
                    let addr = p.addr.as_deref()?.trim_end_matches('/');
                    app.activity
                        .scrapes
                        .values()
                        .find(|s| s.url.trim_end_matches('/') == addr)
                });
                let loops = match scrape.and_then(|s| s.metrics.as_ref()) {
                    Some(m) if !m.loop_ticks.is_empty() => m
                        .loop_ticks
                        .iter()
                        .map(|(name, secs)| {
                            format!("{name} {}", age(app.now_ms - (secs * 1000.0) as i64))
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => match scrape.and_then(|s| s.error.as_ref()) {
                        Some(_) => "metrics unreachable".into(),
                        None => "-".into(),
                    },
                };
                let row = Row::new(vec![
                    Cell::from(p.pod_id.clone()),
                    Cell::from(Span::styled(liveness, t.style(role))),
                    Cell::from(age(hb_age)),
                    Cell::from(sparkline(&hist, Some(2000.0))),
                    Cell::from(app.owned_runs(&p.pod_id).to_string()),
                    Cell::from(loops),
                    Cell::from(
                        p.addr
                            .as_deref()
                            .map_or("-", |a| a.trim_start_matches("http://"))
                            .to_owned(),
                    ),
                ]);
                if from + i == sel {
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
                    Constraint::Length(22),
                    Constraint::Length(9),
                    Constraint::Length(16),
                    Constraint::Length(4),
                    Constraint::Length(42),
                    Constraint::Fill(1),
                ],
            )
            .header(header_row(
                app,
                &[
                    "POD",
                    "LIVENESS",
                    "HEARTBEAT",
                    "HISTORY (now →)",
                    "RUNS",
                    "LOOPS (last tick)",
                    "ADDR",
                ],
            )),
            inner,
        );
    }
    // Dead pods: who found them, how fast, and who took their runs.
    let db = block(app, format!("Dead pods ({} recorded)", deaths.len()));
    let dinner = db.inner(dead_area);
    frame.render_widget(db, dead_area);
    if deaths.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no pod death recorded", t.style(Role::Muted))),
            dinner,
        );
        return;
    }
    let body: Vec<Row> = deaths
        .iter()
        .take(usize::from(dinner.height.saturating_sub(1)))
        .map(|d| {
            let last_hb = d.extra_ms.unwrap_or(d.at_ms);
            let claims = app.claims_from(&d.subject, last_hb);
            let claimed = if claims.is_empty() {
                "none yet".to_owned()
            } else {
                claims
                    .iter()
                    .rev()
                    .map(|c| format!("{} → {}", short(&c.subject), c.to.as_deref().unwrap_or("-")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Row::new(vec![
                Cell::from(Span::styled(d.subject.clone(), t.style(Role::Bad))),
                Cell::from(d.actor.clone().unwrap_or_default()),
                Cell::from(format!("{} ago", age(app.now_ms - d.at_ms))),
                Cell::from(age(d.at_ms - last_hb)),
                Cell::from(claimed),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            body,
            [
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(9),
                Constraint::Fill(1),
            ],
        )
        .header(header_row(
            app,
            &[
                "POD",
                "FOUND BY",
                "WHEN",
                "LATENCY",
                "RUNS CLAIMED (run → new owner)",
            ],
        )),
        dinner,
    );
}

fn liveness_of(app: &App, p: &crate::engine::liveness::PodRow) -> (String, Role) {
    if let Some(locks) = &app.locks {
        return if locks.contains(&lock_key(&p.pod_id)) {
            ("lock held".into(), Role::Ok)
        } else {
            ("lock FREE (dead?)".into(), Role::Bad)
        };
    }
    if p.lease_until_ms == 0 {
        return ("left (graceful stop)".into(), Role::Warn);
    }
    let left = p.lease_until_ms - app.now_ms;
    if left >= 0 {
        (format!("lease ok, {} left", age(left)), Role::Ok)
    } else {
        (format!("lease EXPIRED {} ago", age(-left)), Role::Bad)
    }
}

// ----------------------------------------------------------------- activity

const BUCKET_MS: i64 = 10_000;

fn draw_activity(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let b = block(
        app,
        format!(
            "Activity: totals and rates over pods' /metrics{}",
            filter_note(app, View::Activity)
        ),
    );
    let inner = b.inner(area);
    frame.render_widget(b, area);
    let [sources, table_area, latency] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(2),
    ])
    .areas(inner);
    let src = if app.activity.scrapes.is_empty() {
        Span::styled(
            if app.pods_given {
                "no scrape yet".to_owned()
            } else {
                "no pod to scrape: pods are found through the registry's addresses, or pass --pods URL,…"
                    .to_owned()
            },
            t.style(Role::Muted),
        )
    } else {
        Span::raw(
            app.activity
                .scrapes
                .iter()
                .map(|(pod, s)| match (&s.error, s.ok_at_ms) {
                    (Some(_), _) => format!("{pod} unreachable"),
                    (None, Some(at)) => format!("{pod} {} ago", age(app.now_ms - at)),
                    (None, None) => format!("{pod} -"),
                })
                .collect::<Vec<_>>()
                .join(" · "),
        )
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("sources: ", t.style(Role::Muted)),
            src,
        ])),
        sources,
    );
    let series = app.activity_series();
    let spark_width = usize::from(table_area.width.saturating_sub(48)).clamp(10, 60);
    let buckets = spark_width as i64;
    let sel = app.selected[View::Activity.index()].0;
    let height = usize::from(table_area.height.saturating_sub(1));
    let (from, to) = window(sel, series.len(), height);
    let rows: Vec<Row> = series[from..to]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let total = app.activity.total(name);
            let minute = total - app.activity.total_at(name, app.now_ms - 60_000);
            let values: Vec<f64> = (0..buckets)
                .map(|b| {
                    let end = app.now_ms - (buckets - 1 - b) * BUCKET_MS;
                    app.activity.total_at(name, end) - app.activity.total_at(name, end - BUCKET_MS)
                })
                .collect();
            let role = if minute > 0.0 && is_alarming(name) {
                Role::Warn
            } else {
                Role::Plain
            };
            let row = Row::new(vec![
                Cell::from(Span::styled(name.clone(), t.style(role))),
                Cell::from(format!("{total:.0}")),
                Cell::from(format!("{minute:.0}")),
                Cell::from(sparkline(&values, None)),
            ]);
            if from + i == sel {
                row.style(t.style(Role::Selected))
            } else {
                row
            }
        })
        .collect();
    if rows.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no counters yet", t.style(Role::Muted))),
            table_area,
        );
    } else {
        let spark_title = format!("PER 10 s OVER {} (now →)", age(buckets * BUCKET_MS));
        frame.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(30),
                    Constraint::Length(7),
                    Constraint::Length(8),
                    Constraint::Fill(1),
                ],
            )
            .header(
                Row::new(vec![
                    Cell::from("SERIES"),
                    Cell::from("TOTAL"),
                    Cell::from("LAST MIN"),
                    Cell::from(spark_title),
                ])
                .style(t.style(Role::Header)),
            ),
            table_area,
        );
    }
    // Detection latency: the histogram's mean over the window, and the
    // store's own record of the last death.
    let window_start = app.now_ms - ACTIVITY_WINDOW_MS.min(300_000);
    let d_sum = app.activity.total("detection latency sum")
        - app.activity.total_at("detection latency sum", window_start);
    let d_n = app.activity.total("detection latency count")
        - app
            .activity
            .total_at("detection latency count", window_start);
    let mut line = vec![Span::styled("detection latency: ", t.style(Role::Header))];
    line.push(Span::raw(if d_n > 0.0 {
        format!(
            "mean {} over the last 5 min (n={d_n:.0})",
            age((d_sum / d_n * 1000.0) as i64)
        )
    } else {
        "no detection in the last 5 min".to_owned()
    }));
    if let Some(d) = app.deaths().first() {
        let last_hb = d.extra_ms.unwrap_or(d.at_ms);
        line.push(Span::raw(format!(
            " · last death in the store: {} found by {} {} after its last heartbeat",
            d.subject,
            d.actor.as_deref().unwrap_or("-"),
            age(d.at_ms - last_hb)
        )));
    }
    frame.render_widget(
        Paragraph::new(Line::from(line)).wrap(Wrap { trim: true }),
        latency,
    );
}

fn is_alarming(series: &str) -> bool {
    [
        "authority fallback error",
        "spurious recovery",
        "reaper timeouts",
        "janitor lost",
        "ghost transitions",
        "fenced writes",
        "pod deaths",
    ]
    .iter()
    .any(|p| series.starts_with(p))
}

// ----------------------------------------------------------------- switches

fn draw_switches(frame: &mut Frame, app: &App, area: Rect) {
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

// ------------------------------------------------------------------- events

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

fn draw_events(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let rows = app.visible_events();
    let b = block(
        app,
        format!(
            "Events, newest first ({} of {} kept, UTC){}",
            rows.len(),
            app.events.len(),
            filter_note(app, View::Events)
        ),
    );
    let inner = b.inner(area);
    frame.render_widget(b, area);
    if rows.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled(
                if app.events.is_empty() {
                    "no events yet: transitions, claims, deaths and switch flips show here"
                } else {
                    "no event matches the filter (esc clears it)"
                },
                t.style(Role::Muted),
            )),
            inner,
        );
        return;
    }
    let sel = app.selected[View::Events.index()].0.min(rows.len() - 1);
    let height = usize::from(inner.height.saturating_sub(1));
    let (from, to) = window(sel, rows.len(), height);
    let body: Vec<Row> = rows[from..to]
        .iter()
        .enumerate()
        .map(|(i, e)| {
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
                EventKind::Transition | EventKind::Claim => short(&e.subject).to_owned(),
                _ => e.subject.clone(),
            };
            let row = Row::new(vec![
                Cell::from(Span::styled(utc_time(e.at_ms), t.style(Role::Muted))),
                Cell::from(Span::styled(label, t.style(role))),
                Cell::from(subject),
                Cell::from(event_detail(e)),
            ]);
            if from + i == sel {
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
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(17),
                Constraint::Fill(1),
            ],
        )
        .header(header_row(app, &["TIME", "KIND", "SUBJECT", "DETAIL"])),
        inner,
    );
}

// -------------------------------------------------------------------- chaos

fn draw_chaos(frame: &mut Frame, app: &App, area: Rect) {
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

// ------------------------------------------------------------------ overlays

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

fn draw_dialog(frame: &mut Frame, app: &App, d: &Dialog, area: Rect) {
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

fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
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
        (
            "1-6".into(),
            "views: runs pods activity switches events chaos".into(),
        ),
        (k(Action::Filter), "filter (regex; ! inverts)".into()),
        (
            k(Action::Command),
            "runs pods activity switches events chaos · run ID · state/lane/pod X · clear".into(),
        ),
        (
            String::new(),
            "sort COL · set NAME on|off · kill/term/pause/resume/start POD · freeze · quit".into(),
        ),
        (k(Action::Back), "back: close, clear the filter".into()),
        (k(Action::Freeze), "freeze / unfreeze updates".into()),
        (k(Action::Refresh), "read the store now".into()),
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
