//! One run opened from the Runs view: its record, steps, transitions and
//! claims, and the live stream of its chunks.

use super::table::ListTable;
use super::{age, block, state_role, trunc, utc_time};
use crate::console::app::{App, Detail, StreamLine};
use crate::console::theme::Role;
use crate::engine::run::StepStatus;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row};

pub(super) fn draw(frame: &mut Frame, app: &App, d: &Detail, area: Rect) {
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
    ListTable::new(
        app,
        &["STEP", "STATUS", "ATT", "OUTPUT (redacted)"],
        &[10, 9, 3],
    )
    .block(block(app, "Steps".into()))
    .render(frame, steps_area, &d.steps, |s| {
        // A step "running" in a run that ended (cancelled, timed out, lost)
        // runs no more: it shows how the run ended.
        let ended = d
            .run
            .as_ref()
            .map(|r| r.state)
            .filter(|st| st.is_terminal() && s.status == StepStatus::Running);
        let (text, role) = match (ended, s.status) {
            (Some(st), _) => (st.as_str(), Role::Muted),
            (None, StepStatus::Running) => (s.status.as_str(), Role::Accent),
            (None, StepStatus::Succeeded) => (s.status.as_str(), Role::Ok),
            (None, StepStatus::Failed) => (s.status.as_str(), Role::Bad),
        };
        Row::new(vec![
            Cell::from(s.node_id.clone()),
            Cell::from(Span::styled(text, t.style(role))),
            Cell::from(s.attempts.to_string()),
            Cell::from(match (&s.output, &s.error) {
                (Some(o), _) => o.to_string(),
                (None, Some(e)) => format!("error: {e}"),
                _ => "-".into(),
            }),
        ])
    });
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
