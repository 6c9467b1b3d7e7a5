//! The Pods view: the registry's pods with their liveness, heartbeat
//! history and loops, and below them the pods found dead.

use super::table::ListTable;
use super::{age, block, filter_note, selected_row, short, sort_note, sparkline};
use crate::console::app::App;
use crate::console::data::View;
use crate::console::theme::Role;
use crate::engine::store::liveness::lock_key;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row};

pub(super) fn draw(frame: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let deaths = app.deaths();
    let dead_height = (deaths.len().min(8) as u16 + 3).max(4);
    let [live_area, dead_area] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(dead_height)]).areas(area);
    let rows = app.visible_pods();
    let title = format!(
        "Pods in the registry ({}){}{}",
        rows.len(),
        filter_note(app, View::Pods),
        sort_note(app, View::Pods)
    );
    ListTable::new(
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
        &[10, 22, 9, 16, 4, 42],
    )
    .block(block(app, title))
    .empty(if app.health.ok_at_ms.is_none() {
        "waiting for the store…"
    } else {
        "no pod is registered: start one with `vigil pod --store …` (or `vigil demo`)"
    })
    .cursor(selected_row(app, View::Pods, rows.len()))
    .render(frame, live_area, &rows, |p| {
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
                .map(|(name, secs)| format!("{name} {}", age(app.now_ms - (secs * 1000.0) as i64)))
                .collect::<Vec<_>>()
                .join(" "),
            _ => match scrape.and_then(|s| s.error.as_ref()) {
                Some(_) => "metrics unreachable".into(),
                None => "-".into(),
            },
        };
        Row::new(vec![
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
        ])
    });
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

fn liveness_of(app: &App, p: &crate::engine::store::liveness::PodRow) -> (String, Role) {
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
