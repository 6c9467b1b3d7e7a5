//! The console's render cost, under criterion: one frame of the Runs view
//! (filter, sort and table) with 10,000 runs loaded, at 200x50, plain and
//! with a `/chat` filter, against ratatui's TestBackend. The frame budget is
//! 16 ms (the console draws at most once per 16 ms).
//!
//! Run: `cargo bench --bench console_render` (or `just bench`, which keeps
//! the medians in its report). Env: VIGIL_BENCH_CONSOLE_RUNS (default 10000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vigil::console::{Action, App, Keymap, StoreData, StoreUpdate, Theme, draw};
use vigil::engine::run::{RunState, StepStatus};
use vigil::engine::store::RunSummary;

const NOW: i64 = 1_760_000_000_000;

fn summaries(n: usize) -> Vec<RunSummary> {
    let states = [
        RunState::Running,
        RunState::Succeeded,
        RunState::Pending,
        RunState::Failed,
    ];
    (0..n)
        .map(|i| RunSummary {
            id: format!("0199a1b2-c3d4-7e5f-8a9b-{i:012x}"),
            workflow: ["chat_reply", "fan_in", "slow_stream"][i % 3].into(),
            lane: ["sync", "action"][i % 2].into(),
            state: states[i % 4],
            owner_pod: Some(format!("pod-{}", i % 3 + 1)),
            epoch: 1,
            created_at_ms: NOW - i as i64 * 100,
            updated_at_ms: NOW - i as i64 * 50,
            error: None,
            retry_of: None,
            current_step: Some(("reply".into(), StepStatus::Running, 1)),
            last_event: Some((NOW - i as i64 * 50, "pending -> running: claimed".into())),
        })
        .collect()
}

fn app_with(n: usize) -> App {
    let mut app = App::new("bench.db", Keymap::default(), Theme::default());
    app.update(Action::Tick(NOW));
    app.update(Action::Resize(200, 50));
    app.apply_store(StoreUpdate {
        generation: app.generation,
        at_ms: NOW,
        queries: 0,
        took_ms: 0,
        result: Ok(StoreData {
            backend: "sqlite",
            runs: Some(summaries(n)),
            ..StoreData::default()
        }),
    });
    app
}

fn render(c: &mut Criterion) {
    let n: usize = std::env::var("VIGIL_BENCH_CONSOLE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut t = Terminal::new(TestBackend::new(200, 50)).unwrap();
    let mut app = app_with(n);
    c.bench_function(&format!("runs_view_{n}_runs"), |b| {
        b.iter(|| {
            t.draw(|f| draw(f, &app)).unwrap();
        });
    });
    for ch in "/chat".chars() {
        app.update(if ch == '/' {
            Action::Filter
        } else {
            Action::Input(ch)
        });
    }
    app.update(Action::Submit);
    c.bench_function(&format!("runs_view_{n}_runs_filtered"), |b| {
        b.iter(|| {
            t.draw(|f| draw(f, &app)).unwrap();
        });
    });
}

criterion_group!(benches, render);
criterion_main!(benches);
