//! The Pods view: the registry's pods with their liveness as the store
//! shows it, their own view of themselves from their /metrics (ready, the
//! lease left by their own clock, store round trips) and their heartbeat
//! history; the selected pod's loops and self-fencing below; and the pods
//! found dead.

use super::table::ListTable;
use super::{age, block, filter_note, selected_row, short, sort_note, sparkline};
use crate::console::app::App;
use crate::console::data::View;
use crate::console::gray;
use crate::console::theme::Role;
use crate::engine::store::liveness::{PodRow, lock_key};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row};

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let deaths = app.deaths();
    let dead_height = (deaths.len().min(8) as u16 + 3).max(4);
    let rows = app.visible_pods();
    let panel_height = if rows.is_empty() { 0 } else { 6 };
    let [live_area, panel_area, dead_area] = Layout::vertical([
        Constraint::Fill(1),
        Constraint::Length(panel_height),
        Constraint::Length(dead_height),
    ])
    .areas(area);
    let unready = app.unready_pods();
    let title = format!(
        "Pods in the registry ({}){}{}{}",
        rows.len(),
        if unready.is_empty() {
            String::new()
        } else {
            format!(" · {} UNREADY: {}", unready.len(), unready.join(", "))
        },
        filter_note(app, View::Pods),
        sort_note(app, View::Pods)
    );
    let selected = selected_row(app, View::Pods, rows.len());
    ListTable::new(
        app,
        &[
            "POD",
            "LIVENESS",
            "READY",
            "OWN LEASE",
            "RTT p50/p99",
            "POOL",
            "HEARTBEAT",
            HISTORY,
            "RUNS",
            "ADDR",
        ],
        &[10, 21, 7, 9, 12, 5, 9, HISTORY_WIDTH, 4],
    )
    .block(block(app, title))
    .empty(if app.health.ok_at_ms.is_none() {
        "waiting for the store…"
    } else {
        "no pod is registered: start one with `vigil pod --store …` (or `vigil demo`)"
    })
    .cursor(selected)
    .render(frame, live_area, &rows, |p| {
        let (liveness, role) = liveness_of(app, p);
        let hb_age = app.now_ms - p.heartbeat_at_ms;
        // The newest ages that fit, so "now" is at the right edge.
        let hist: Vec<f64> = app
            .heartbeats
            .get(&p.pod_id)
            .map(|q| {
                q.iter()
                    .skip(q.len().saturating_sub(usize::from(HISTORY_WIDTH)))
                    .map(|v| *v as f64)
                    .collect()
            })
            .unwrap_or_default();
        let own = app.own_view(p);
        let unready = own.is_some_and(|v| v.ready == Some(false));
        let (ready, ready_role) = match own.and_then(|v| v.ready) {
            Some(true) => ("ready", Role::Ok),
            Some(false) => ("UNREADY", Role::Warn),
            None => ("-", Role::Muted),
        };
        let lease = own.and_then(|v| v.lease_left);
        let lease_role = if unready || lease.is_some_and(|l| l <= 0.0) {
            Role::Warn
        } else {
            Role::Plain
        };
        let rtt = own.and_then(|v| v.round_trips);
        Row::new(vec![
            Cell::from(Span::styled(
                p.pod_id.clone(),
                t.style(if unready { Role::Warn } else { Role::Plain }),
            )),
            Cell::from(Span::styled(liveness, t.style(role))),
            Cell::from(Span::styled(ready, t.style(ready_role))),
            Cell::from(Span::styled(
                lease.map_or_else(|| "-".to_owned(), gray::lease_text),
                t.style(lease_role),
            )),
            Cell::from(Span::styled(
                rtt.map_or_else(
                    || "-".to_owned(),
                    |r| format!("{}/{}", gray::short_secs(r.p50), gray::short_secs(r.p99)),
                ),
                // Muted: no renew came back since the previous scrape.
                t.style(if rtt.is_some_and(|r| !r.recent) {
                    Role::Muted
                } else {
                    Role::Plain
                }),
            )),
            // The data pool's connections in use of its most: at the
            // most, callers queue for one.
            match own.and_then(|v| v.data_pool) {
                Some(g) => Cell::from(Span::styled(
                    format!("{:.0}/{:.0}", g.busy, g.max),
                    t.style(if g.saturated() {
                        Role::Warn
                    } else {
                        Role::Plain
                    }),
                )),
                None => Cell::from(Span::styled("-", t.style(Role::Muted))),
            },
            Cell::from(age(hb_age)),
            Cell::from(sparkline(&hist, Some(2000.0))),
            Cell::from(app.owned_runs(&p.pod_id).to_string()),
            Cell::from(
                p.addr
                    .as_deref()
                    .map_or("-", |a| a.trim_start_matches("http://"))
                    .to_owned(),
            ),
        ])
    });
    if let Some(p) = rows.get(selected) {
        selected_pod(frame, app, p, panel_area);
    }
    // Dead pods: who found them, how fast, and who took their runs.
    ListTable::new(
        app,
        &[
            "POD",
            "FOUND BY",
            "WHEN",
            "LATENCY",
            "RUNS CLAIMED (run → new owner)",
        ],
        &[10, 12, 10, 9],
    )
    .block(block(app, format!("Dead pods ({} recorded)", deaths.len())))
    .empty("no pod death recorded")
    .render(frame, dead_area, &deaths, |d| {
        let last_hb = d.extra_ms.unwrap_or(d.at_ms);
        let claims = app.claims_from(&d.subject, last_hb);
        let claimed = if claims.is_empty() {
            "none yet".to_owned()
        } else {
            claims
                .iter()
                .rev()
                .map(|c| {
                    format!(
                        "{} → {}",
                        short(&c.subject, app.id_len),
                        c.to.as_deref().unwrap_or("-")
                    )
                })
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
    });
}

const HISTORY: &str = "HISTORY (now →)";
const HISTORY_WIDTH: u16 = 16;

/// The selected pod: its loops' last ticks and incarnation, and from its
/// own /metrics what the table has no room for: how many round trips its
/// p50/p99 come from, and what it held back because its lease ran short.
fn selected_pod(frame: &mut Frame, app: &App, p: &PodRow, area: Rect) {
    let t = &app.theme;
    let b = block(app, format!("{} (selected)", p.pod_id));
    let inner = b.inner(area);
    frame.render_widget(b, area);
    let scrape = app.pod_scrape(p);
    let metrics = scrape.and_then(|s| s.metrics.as_ref());
    let label = |s: &str| Span::styled(s.to_owned(), t.style(Role::Muted));
    let loops = match metrics {
        Some(m) if !m.loop_ticks.is_empty() => m
            .loop_ticks
            .iter()
            .map(|(name, secs)| format!("{name} {}", age(app.now_ms - (secs * 1000.0) as i64)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".into(),
    };
    let mut lines = vec![Line::from(vec![
        label("loops (last tick) "),
        Span::raw(loops),
        label(" · incarnation "),
        Span::raw(p.incarnation.clone()),
        label(" · up "),
        Span::raw(age(app.now_ms - p.started_at_ms)),
    ])];
    match (scrape, metrics) {
        (None, _) => lines.push(Line::from(label(if p.addr.is_none() {
            "no address in the registry: its /metrics is not scraped"
        } else {
            "its /metrics not scraped yet"
        }))),
        (Some(s), _) if s.error.is_some() => lines.push(Line::from(Span::styled(
            format!(
                "/metrics unreachable: {}",
                s.error.as_deref().unwrap_or_default()
            ),
            t.style(Role::Warn),
        ))),
        (Some(_), None) => lines.push(Line::from(label("its /metrics not scraped yet"))),
        (Some(s), Some(m)) => {
            lines.push(Line::from(vec![
                label("store round trips (renew) "),
                Span::raw(match s.round_trips {
                    Some(r) => format!(
                        "p50 {} p99 {}, {}",
                        gray::short_secs(r.p50),
                        gray::short_secs(r.p99),
                        if r.recent {
                            format!("the {:.0} since the previous scrape", r.observations)
                        } else {
                            format!(
                                "all {:.0} since it started (none since the previous scrape)",
                                r.observations
                            )
                        }
                    ),
                    None => "none observed".into(),
                }),
            ]));
            let count = |series: &str| {
                m.counters
                    .get(series)
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
            };
            lines.push(Line::from(vec![
                label("since it started: "),
                label("step bodies held back "),
                Span::raw(count("self-fenced step")),
                label(" · streams ended for a retry "),
                Span::raw(count("self-fenced stream")),
                label(" · store calls past their deadline "),
                Span::raw(count("store deadline hits")),
            ]));
            if !m.pools.is_empty() {
                let mut spans = vec![label("store pools (busy/max, idle) ")];
                for (i, (name, g)) in m.pools.iter().enumerate() {
                    if i > 0 {
                        spans.push(label(" · "));
                    }
                    spans.push(label(&format!("{name} ")));
                    spans.push(Span::styled(
                        format!("{:.0}/{:.0}, {:.0} idle", g.busy, g.max, g.idle),
                        t.style(if g.saturated() {
                            Role::Warn
                        } else {
                            Role::Plain
                        }),
                    ));
                    if g.saturated() {
                        spans.push(Span::styled(" FULL: callers wait", t.style(Role::Warn)));
                    }
                }
                lines.push(Line::from(spans));
            }
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn liveness_of(app: &App, p: &PodRow) -> (String, Role) {
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
