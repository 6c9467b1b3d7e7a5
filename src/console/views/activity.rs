//! The Activity view: counter totals and rates over the pods' /metrics,
//! as sparklines, and the detection latency.

use super::table::ListTable;
use super::{age, block, filter_note, sparkline};
use crate::console::app::{ACTIVITY_WINDOW_MS, App};
use crate::console::data::View;
use crate::console::theme::Role;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Wrap};

const BUCKET_MS: i64 = 10_000;

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
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
    let spark_title = format!("PER 10 s OVER {} (now →)", age(buckets * BUCKET_MS));
    ListTable::new(
        app,
        &["SERIES", "TOTAL", "LAST MIN", &spark_title],
        &[30, 7, 8],
    )
    .empty("no counters yet")
    // Not clamped to the rows, as it always was here.
    .cursor(app.selected[View::Activity.index()].0)
    .render(frame, table_area, &series, |name| {
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
        Row::new(vec![
            Cell::from(Span::styled(name.clone(), t.style(role))),
            Cell::from(format!("{total:.0}")),
            Cell::from(format!("{minute:.0}")),
            Cell::from(sparkline(&values, None)),
        ])
    });
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
        "store deadline hits",
        "self-fenced",
    ]
    .iter()
    .any(|p| series.starts_with(p))
}
