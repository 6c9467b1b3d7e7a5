//! Every console view rendered with ratatui's `TestBackend` at 120x30 from a
//! fixed state: empty, busy and error (store unreachable), dialogs, help,
//! filters and read-only. Ids and times are redacted by insta filters.
//! Review a changed snapshot by reading it (`cargo insta review`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vigil::cluster::PodState;
use vigil::console::{
    Action, App, ChaosPod, DetailData, Keymap, MetricsUpdate, PodMetrics, PodScrape, StoreData,
    StoreUpdate, Theme, View, draw,
};
use vigil::engine::run::{Chunk, LateCompletion, RunRecord, RunState, StepRecord, StepStatus};
use vigil::engine::store::liveness::PodRow;
use vigil::engine::store::{
    ActiveCount, ClaimRecord, ConsoleEvent, EventKind, RunSummary, SwitchAudit, SwitchRow,
};

const NOW: i64 = 1_760_000_000_000;
const W: u16 = 120;
const H: u16 = 30;

/// UUIDv7s as runs get them: the first 48 bits are the creation time (ms),
/// here 273 ms apart, so a short form of 13 characters tells them apart.
fn id(n: u32) -> String {
    let t = 0x0199_a1b2_c300_u64 + u64::from(n) * 0x111;
    format!("{:08x}-{:04x}-7e5f-8a9b-{n:012x}", t >> 16, t & 0xffff)
}

fn render(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(W, H)).unwrap();
    t.draw(|f| draw(f, app)).unwrap();
    t.backend().to_string()
}

macro_rules! snap {
    ($name:expr, $app:expr) => {{
        let text = render(&$app);
        insta::with_settings!({
            filters => vec![
                (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[uuid]"),
                (r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b", "[hh:mm:ss.mmm]"),
            ]
        }, {
            insta::assert_snapshot!($name, text);
        });
    }};
}

fn app() -> App {
    let mut a = App::new("data/vigil.db", Keymap::default(), Theme::monochrome());
    a.update(Action::Tick(NOW));
    a.update(Action::Resize(W, H));
    a
}

fn summary(n: u32, wf: &str, state: RunState, owner: Option<&str>, age_ms: i64) -> RunSummary {
    RunSummary {
        id: id(n),
        workflow: wf.into(),
        lane: if wf == "fan_in" { "action" } else { "sync" }.into(),
        state,
        owner_pod: owner.map(Into::into),
        epoch: 1,
        created_at_ms: NOW - age_ms,
        updated_at_ms: NOW - age_ms / 2,
        error: None,
        retry_of: None,
        current_step: (state != RunState::Pending).then(|| {
            (
                "reply".into(),
                if state == RunState::Running {
                    StepStatus::Running
                } else {
                    StepStatus::Succeeded
                },
                1,
            )
        }),
        last_event: (state != RunState::Pending).then(|| {
            (
                NOW - age_ms / 2,
                format!(
                    "pending -> {state}: {}",
                    if state == RunState::Running {
                        "claimed"
                    } else {
                        "all steps succeeded"
                    }
                ),
            )
        }),
    }
}

fn pod(idn: u32, hb_age: i64) -> PodRow {
    PodRow {
        pod_id: format!("pod-{idn}"),
        incarnation: format!("inc-{idn}"),
        addr: Some(format!("http://127.0.0.1:770{idn}")),
        started_at_ms: NOW - 60_000,
        heartbeat_at_ms: NOW - hb_age,
        lease_until_ms: NOW - hb_age + 2000,
    }
}

#[allow(clippy::too_many_arguments)]
fn ev(
    kind: EventKind,
    idn: i64,
    at: i64,
    subject: &str,
    from: &str,
    to: &str,
    actor: &str,
    reason: &str,
) -> ConsoleEvent {
    ConsoleEvent {
        kind,
        id: idn,
        at_ms: NOW - at,
        subject: subject.into(),
        from: (!from.is_empty()).then(|| from.into()),
        to: (!to.is_empty()).then(|| to.into()),
        actor: (!actor.is_empty()).then(|| actor.into()),
        epoch: matches!(kind, EventKind::Transition | EventKind::Claim).then_some(2),
        reason: reason.into(),
        extra_ms: (kind == EventKind::Death).then_some(NOW - at - 2100),
    }
}

fn busy_data() -> StoreData {
    let runs = vec![
        summary(1, "demo_stream", RunState::Running, Some("pod-2"), 9_000),
        summary(2, "chat_reply", RunState::Running, Some("pod-3"), 1_500),
        summary(3, "chat_reply", RunState::Succeeded, Some("pod-1"), 30_000),
        summary(4, "fan_in", RunState::Pending, None, 200),
        {
            let mut r = summary(5, "slow_stream", RunState::TimedOut, Some("pod-1"), 400_000);
            r.last_event = Some((
                NOW - 100_000,
                "running -> timed_out: reaper: heartbeat stale".into(),
            ));
            r
        },
    ];
    StoreData {
        backend: "sqlite",
        pods: vec![pod(2, 300), pod(3, 350)],
        counts: vec![
            ActiveCount {
                state: RunState::Pending,
                lane: "action".into(),
                owner_pod: None,
                count: 1,
            },
            ActiveCount {
                state: RunState::Running,
                lane: "sync".into(),
                owner_pod: Some("pod-2".into()),
                count: 1,
            },
            ActiveCount {
                state: RunState::Running,
                lane: "sync".into(),
                owner_pod: Some("pod-3".into()),
                count: 1,
            },
        ],
        events: vec![
            ev(
                EventKind::Switch,
                1,
                1_000,
                "recovery.enabled",
                "on",
                "off",
                "alice",
                "drill: watch runs wait",
            ),
            ev(
                EventKind::Claim,
                7,
                4_000,
                &id(1),
                "pod-1",
                "pod-2",
                "pod-2",
                "",
            ),
            ev(
                EventKind::Death,
                1,
                4_100,
                "pod-1",
                "inc-1",
                "",
                "pod-2",
                "",
            ),
            ev(
                EventKind::Transition,
                9,
                100_000,
                &id(5),
                "running",
                "timed_out",
                "pod-3",
                "reaper: heartbeat stale",
            ),
            ev(
                EventKind::Transition,
                3,
                9_000,
                &id(1),
                "pending",
                "running",
                "pod-1",
                "claimed",
            ),
        ],
        runs: Some(runs),
        switches: Some(vec![SwitchRow {
            name: "recovery.enabled".into(),
            enabled: false,
            updated_at_ms: NOW - 1_000,
            updated_by: "alice".into(),
            reason: "drill: watch runs wait".into(),
        }]),
        audit: None,
        locks: None,
        detail: None,
    }
}

fn store_update(app: &App, data: StoreData, queries: u64, at: i64) -> StoreUpdate {
    StoreUpdate {
        generation: app.generation,
        at_ms: at,
        queries,
        took_ms: 3,
        result: Ok(data),
    }
}

fn busy() -> App {
    let mut a = app();
    let d = busy_data();
    let u = store_update(&a, d.clone(), 40, NOW - 5_200);
    a.apply_store(u);
    let u = StoreUpdate {
        result: Ok(StoreData {
            events: vec![],
            ..d
        }),
        ..store_update(&a, StoreData::default(), 80, NOW - 200)
    };
    a.apply_store(u);
    a
}

fn key(a: &mut App, code: KeyCode) {
    a.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn typed(a: &mut App, s: &str) {
    for c in s.chars() {
        key(a, KeyCode::Char(c));
    }
}

#[test]
fn runs_views() {
    let mut a = app();
    snap!("runs_connecting_120x30", a);
    let u = store_update(
        &a,
        StoreData {
            backend: "sqlite",
            ..StoreData::default()
        },
        4,
        NOW - 100,
    );
    a.apply_store(u);
    snap!("runs_empty_120x30", a);

    let mut a = busy();
    snap!("runs_busy_120x30", a);
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Char('S'));
    snap!("runs_busy_sorted_by_state_120x30", a);

    let mut a = busy();
    key(&mut a, KeyCode::Char('/'));
    typed(&mut a, "chat");
    snap!("runs_filter_typing_120x30", a);
    key(&mut a, KeyCode::Enter);
    typed(&mut a, ":state running");
    // The ':' went to the keymap (command line); the rest was typed into it.
    key(&mut a, KeyCode::Enter);
    snap!("runs_filtered_chat_running_120x30", a);

    // The store goes away: stale data stays, with its age and the error.
    let mut a = busy();
    a.apply_store(StoreUpdate {
        generation: a.generation,
        at_ms: NOW,
        queries: 80,
        took_ms: 3000,
        result: Err("store did not answer within 3s".into()),
    });
    a.update(Action::Tick(NOW + 12_000));
    snap!("runs_store_unreachable_120x30", a);

    // Never reached at all.
    let mut a = app();
    a.apply_store(StoreUpdate {
        generation: 0,
        at_ms: NOW,
        queries: 0,
        took_ms: 5000,
        result: Err("store unreachable at postgres://db:5432/vigil: connection refused".into()),
    });
    snap!("runs_store_never_reached_120x30", a);
}

#[test]
fn run_detail_with_reset() {
    let mut a = busy();
    a.open_run(&id(1));
    let session = a.detail.as_ref().unwrap().session;
    let run = RunRecord {
        id: id(1),
        workflow: "demo_stream".into(),
        lane: "sync".into(),
        input: serde_json::json!({}),
        state: RunState::Running,
        owner_pod: Some("pod-2".into()),
        epoch: 2,
        late_completion: LateCompletion::Reject,
        run_state: serde_json::json!({}),
        idempotency_key: None,
        error: None,
        deadline_at_ms: None,
        created_at_ms: NOW - 9_000,
        updated_at_ms: NOW - 4_000,
        heartbeat_timeout_ms: Some(5000),
        heartbeat_at_ms: Some(NOW - 300),
        retries_left: 1,
        family: Some(id(1)),
        retry_of: None,
    };
    // Epoch 1: the succeeded `prompt` streamed 2 chunks, `reply` attempt 1
    // streamed 5 before its owner died; epoch 2: `reply` attempt 2.
    let chunk = |epoch, seq, step: &str, attempt, data: String| Chunk {
        run_id: id(1),
        epoch,
        seq,
        node_id: Some(step.to_owned()),
        attempt: Some(attempt),
        data,
        at_ms: NOW,
    };
    let mut first: Vec<Chunk> = (0..2)
        .map(|s| chunk(1, s, "prompt", 1, format!("prompt {s} ")))
        .collect();
    first.extend((0..5).map(|s| chunk(1, s + 2, "reply", 1, format!("token {s} "))));
    let chunks: Vec<Chunk> = (0..3)
        .map(|s| chunk(2, s, "reply", 2, format!("token {s} ")))
        .collect();
    let detail = DetailData {
        run_id: id(1),
        session,
        run: Some(run),
        steps: vec![
            StepRecord {
                run_id: id(1),
                node_id: "prompt".into(),
                status: StepStatus::Succeeded,
                attempts: 1,
                output: Some(serde_json::json!({"api_key": "[REDACTED]", "model": "vigil-small"})),
                error: None,
                updated_at_ms: NOW - 8_900,
            },
            StepRecord {
                run_id: id(1),
                node_id: "reply".into(),
                status: StepStatus::Running,
                attempts: 2,
                output: None,
                error: None,
                updated_at_ms: NOW - 4_000,
            },
        ],
        transitions: vec![vigil::engine::run::TransitionRecord {
            run_id: id(1),
            from: RunState::Pending,
            to: RunState::Running,
            epoch: 1,
            pod: Some("pod-1".into()),
            reason: "claimed".into(),
            late: false,
            at_ms: NOW - 8_950,
        }],
        claims: vec![
            ClaimRecord {
                run_id: id(1),
                from_pod: None,
                to_pod: "pod-1".into(),
                epoch: 1,
                at_ms: NOW - 8_950,
            },
            ClaimRecord {
                run_id: id(1),
                from_pod: Some("pod-1".into()),
                to_pod: "pod-2".into(),
                epoch: 2,
                at_ms: NOW - 4_000,
            },
        ],
        reset: Some((
            2,
            vec![vigil::engine::store::StreamPartRow {
                epoch: 1,
                node_id: "prompt".into(),
                attempt: 1,
            }],
        )),
        chunks,
    };
    let before = DetailData {
        reset: None,
        chunks: first,
        ..detail.clone()
    };
    let u = store_update(
        &a,
        StoreData {
            detail: Some(before),
            ..busy_data()
        },
        120,
        NOW - 100,
    );
    a.apply_store(u);
    let u = store_update(
        &a,
        StoreData {
            detail: Some(detail),
            ..busy_data()
        },
        120,
        NOW - 100,
    );
    a.apply_store(u);
    snap!("run_detail_after_reset_120x30", a);
    key(&mut a, KeyCode::Esc);
    assert!(a.detail.is_none(), "esc closes the detail");

    let mut a = busy();
    a.open_run("no-such-run");
    snap!("run_detail_loading_120x30", a);
}

/// A pod's store round trips after `renews` liveness renews, as its
/// histogram counts them (buckets from 0.5 ms, doubling; cumulative): 80 %
/// within 1 ms, 98 % within 2 ms, 99 % within 4 ms, all within 8 ms.
fn round_trip_buckets(renews: f64) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = (0..16)
        .map(|i| {
            let le = 0.0005 * 2f64.powi(i);
            let share = match i {
                0 => 0.0,
                1 => 0.8,
                2 => 0.98,
                3 => 0.99,
                _ => 1.0,
            };
            (le, (renews * share).round())
        })
        .collect();
    b.push((f64::INFINITY, renews));
    b
}

/// A pod whose `/metrics` refused the console's connection.
fn refused(pod: &str, port: u16) -> PodScrape {
    PodScrape {
        pod: pod.into(),
        url: format!("http://127.0.0.1:{port}"),
        result: Err(format!(
            "GET http://127.0.0.1:{port}/metrics: connection refused"
        )),
    }
}

fn scrape(
    pod: &str,
    claims: f64,
    deaths: f64,
    fallback_hits: f64,
    ticks_age_s: f64,
    renews: f64,
) -> PodScrape {
    let mut m = PodMetrics::default();
    m.counters.insert("recovery claims won".into(), claims);
    m.counters.insert("pod deaths detected".into(), deaths);
    m.counters
        .insert("authority fallback hit".into(), fallback_hits);
    m.counters.insert("reaper timeouts sync".into(), 0.0);
    m.counters.insert("janitor lost marks".into(), 0.0);
    m.counters
        .insert("detection latency sum".into(), 2.1 * deaths);
    m.counters.insert("detection latency count".into(), deaths);
    m.counters.insert("store deadline hits".into(), 0.0);
    m.counters.insert("self-fenced step".into(), 0.0);
    m.counters.insert("self-fenced stream".into(), 0.0);
    let t = (NOW as f64) / 1000.0 - ticks_age_s;
    for l in ["liveness", "reaper", "janitor"] {
        m.loop_ticks.insert(l.into(), t);
    }
    m.runs_active = Some(1.0);
    m.ready = Some(1.0);
    m.lease_left = Some(1.6);
    m.store_round_trip = Some(round_trip_buckets(renews));
    m.pools = pools(4.0);
    PodScrape {
        pod: pod.into(),
        url: format!("http://127.0.0.1:770{}", &pod[4..]),
        result: Ok(m),
    }
}

/// pod-3 cut off from its store: no renew came back since the last
/// scrape, its own clock says its lease is gone, it is unready and has
/// held back step bodies, ended a stream and given up on store calls.
fn cut_off(mut s: PodScrape, renews: f64) -> PodScrape {
    if let Ok(m) = &mut s.result {
        m.ready = Some(0.0);
        m.lease_left = Some(0.0);
        m.store_round_trip = Some(round_trip_buckets(renews));
        m.counters.insert("store deadline hits".into(), 1.0);
        m.counters.insert("self-fenced step".into(), 2.0);
        m.counters.insert("self-fenced stream".into(), 1.0);
        // Every data connection is out, waiting on the cut link.
        m.pools = pools(32.0);
    }
    s
}

/// The data pool with `busy` of its 32 connections out, the control
/// pool idle.
fn pools(busy: f64) -> std::collections::BTreeMap<String, vigil::console::PoolGauge> {
    use vigil::console::PoolGauge;
    [
        (
            "data".to_owned(),
            PoolGauge {
                busy,
                idle: 32.0 - busy,
                max: 32.0,
            },
        ),
        (
            "control".to_owned(),
            PoolGauge {
                busy: 0.0,
                idle: 1.0,
                max: 3.0,
            },
        ),
    ]
    .into()
}

fn with_metrics(mut a: App) -> App {
    // Three minutes of scrapes every 10 s (25 renews each): a death and
    // two claims 30 s ago.
    for i in 0..18 {
        let at = NOW - 180_000 + i * 10_000;
        let happened = at >= NOW - 30_000;
        let renews = 25.0 * (i + 1) as f64;
        a.apply_metrics(MetricsUpdate {
            at_ms: at,
            pods: vec![
                scrape(
                    "pod-2",
                    if happened { 2.0 } else { 0.0 },
                    if happened { 1.0 } else { 0.0 },
                    if happened { 2.0 } else { 0.0 },
                    0.2,
                    renews,
                ),
                scrape("pod-3", 0.0, 0.0, (i / 6) as f64, 0.3, renews),
            ],
        });
    }
    a
}

#[test]
fn pods_views() {
    let mut a = app();
    a.apply_store(store_update(
        &a,
        StoreData {
            backend: "sqlite",
            ..StoreData::default()
        },
        4,
        NOW - 100,
    ));
    a.update(Action::ViewPods);
    snap!("pods_empty_120x30", a);

    let mut a = with_metrics(busy());
    a.update(Action::ViewPods);
    // Heartbeat history: a few rounds at different ages.
    for (i, age) in [100, 300, 500, 700, 200].iter().enumerate() {
        let mut d = busy_data();
        d.events.clear();
        d.pods = vec![pod(2, *age), pod(3, 1900)];
        let u = store_update(&a, d, 100 + i as u64 * 4, NOW - 100);
        a.apply_store(u);
    }
    snap!("pods_busy_one_dead_120x30", a);

    // PostgreSQL: liveness is a lock, held or not.
    let mut d = busy_data();
    d.events.clear();
    d.backend = "postgres";
    d.locks = Some(vec![vigil::engine::store::liveness::lock_key("pod-2")]);
    let u = store_update(&a, d, 200, NOW - 100);
    a.apply_store(u);
    snap!("pods_postgres_locks_120x30", a);
}

/// with_metrics, then a scrape 1 s ago in which pod-3 is cut off from its
/// store (see [`cut_off`]) while pod-2 renewed as usual.
fn with_pod_3_cut_off(a: App) -> App {
    let mut a = with_metrics(a);
    a.apply_metrics(MetricsUpdate {
        at_ms: NOW - 1_000,
        pods: vec![
            scrape("pod-2", 2.0, 1.0, 2.0, 0.2, 475.0),
            cut_off(scrape("pod-3", 0.0, 0.0, 2.0, 1.9, 450.0), 450.0),
        ],
    });
    a
}

/// A gray failure: pod-3 cannot reach its store. The store still gives it
/// 0.1 s of lease, so no peer has declared it dead; its own /metrics says
/// it is UNREADY, its lease lapsed by its own clock and no renew came back
/// since the previous scrape. The title and the header name it; selected,
/// it shows what it held back. A pod whose /metrics does not answer shows
/// `-` for what only its /metrics can tell.
#[test]
fn pods_gray_failures() {
    let mut a = with_pod_3_cut_off(busy());
    a.update(Action::ViewPods);
    let mut d = busy_data();
    d.events.clear();
    d.pods = vec![pod(2, 200), pod(3, 1900)];
    let u = store_update(&a, d, 120, NOW - 100);
    a.apply_store(u);
    key(&mut a, KeyCode::Char('j'));
    snap!("pods_one_unready_120x30", a);

    a.apply_metrics(MetricsUpdate {
        at_ms: NOW,
        pods: vec![
            refused("pod-2", 7702),
            cut_off(scrape("pod-3", 0.0, 0.0, 2.0, 2.9, 450.0), 450.0),
        ],
    });
    key(&mut a, KeyCode::Char('k'));
    snap!("pods_metrics_unreachable_120x30", a);
}

#[test]
fn activity_views() {
    let mut a = busy();
    a.update(Action::ViewActivity);
    snap!("activity_no_pods_120x30", a);
    let mut a = with_metrics(busy());
    a.update(Action::ViewActivity);
    snap!("activity_busy_120x30", a);
    a.apply_metrics(MetricsUpdate {
        at_ms: NOW,
        pods: vec![
            refused("pod-2", 7702),
            scrape("pod-3", 0.0, 0.0, 3.0, 0.1, 475.0),
        ],
    });
    snap!("activity_one_pod_unreachable_120x30", a);

    // pod-3 cut off from its store: a deadline hit, two step bodies held
    // back and a stream ended for a retry elsewhere, in the last minute.
    let mut a = with_pod_3_cut_off(busy());
    a.update(Action::ViewActivity);
    snap!("activity_gray_failures_120x30", a);
}

#[test]
fn switches_views() {
    let mut a = busy();
    a.update(Action::ViewSwitches);
    key(&mut a, KeyCode::Char('j'));
    // The audit trail of the selected switch arrives with the next round.
    let mut d = busy_data();
    d.events.clear();
    d.audit = Some((
        "recovery.enabled".into(),
        vec![
            SwitchAudit {
                name: "recovery.enabled".into(),
                old: None,
                new: false,
                who: "bob".into(),
                reason: "first drill".into(),
                at_ms: NOW - 90_000,
            },
            SwitchAudit {
                name: "recovery.enabled".into(),
                old: Some(false),
                new: true,
                who: "bob".into(),
                reason: "drill over".into(),
                at_ms: NOW - 60_000,
            },
            SwitchAudit {
                name: "recovery.enabled".into(),
                old: Some(true),
                new: false,
                who: "alice".into(),
                reason: "drill: watch runs wait".into(),
                at_ms: NOW - 1_000,
            },
        ],
    ));
    let u = store_update(&a, d, 100, NOW - 100);
    a.apply_store(u);
    snap!("switches_busy_120x30", a);

    key(&mut a, KeyCode::Char('t'));
    typed(&mut a, "drill over, recovery back on");
    snap!("switches_flip_dialog_120x30", a);
    key(&mut a, KeyCode::Enter);
    let effects = a.drain_effects();
    assert!(
        effects.iter().any(|e| matches!(e, vigil::console::Effect::SetSwitch { name, enabled: true, reason } if name == "recovery.enabled" && reason == "drill over, recovery back on")),
        "{effects:?}"
    );

    // An empty reason is refused; the dialog stays open.
    let mut a = busy();
    a.update(Action::ViewSwitches);
    key(&mut a, KeyCode::Char('t'));
    key(&mut a, KeyCode::Enter);
    snap!("switches_flip_needs_reason_120x30", a);

    let mut a = busy();
    a.read_only = true;
    a.update(Action::ViewSwitches);
    key(&mut a, KeyCode::Char('t'));
    snap!("switches_read_only_refused_120x30", a);
    assert!(a.drain_effects().iter().all(|e| !e.is_mutation()));
}

#[test]
fn read_only_holds_from_every_view_and_path() {
    for view in [
        Action::ViewRuns,
        Action::ViewPods,
        Action::ViewEvents,
        Action::ViewSwitches,
        Action::ViewActivity,
    ] {
        let mut a = busy();
        a.read_only = true;
        a.has_chaos = true;
        a.apply_chaos(vec![ChaosPod {
            id: "pod-2".into(),
            pid: Some(42),
            state: PodState::Running,
            url: "http://127.0.0.1:7702/".into(),
        }]);
        a.update(view);
        for cmd in [
            ":set recovery.enabled off",
            ":kill pod-2",
            ":term pod-2",
            ":pause pod-2",
        ] {
            typed(&mut a, cmd);
            key(&mut a, KeyCode::Enter);
            assert!(
                !matches!(a.mode, vigil::console::Mode::Dialog(_)),
                "{cmd} opened a dialog in read-only mode"
            );
            let st = a.status.clone().expect("a refusal is shown");
            assert!(st.text.starts_with("read-only"), "{cmd}: {}", st.text);
        }
        for k in ['t', 'x', 's', 'p', 'c', 'r'] {
            key(&mut a, KeyCode::Char(k));
        }
        assert!(a.drain_effects().iter().all(|e| !e.is_mutation()));
    }
}

#[test]
fn events_views() {
    let mut a = app();
    a.apply_store(store_update(
        &a,
        StoreData {
            backend: "sqlite",
            ..StoreData::default()
        },
        4,
        NOW - 100,
    ));
    a.update(Action::ViewEvents);
    snap!("events_empty_120x30", a);
    let mut a = busy();
    a.update(Action::ViewEvents);
    snap!("events_busy_120x30", a);
    key(&mut a, KeyCode::Char('/'));
    typed(&mut a, "!transition");
    key(&mut a, KeyCode::Enter);
    snap!("events_filter_inverted_120x30", a);
}

#[test]
fn chaos_views() {
    let mut a = busy();
    a.update(Action::ViewChaos);
    snap!("chaos_unavailable_without_cluster_120x30", a);
    a.apply_chaos(vec![
        ChaosPod {
            id: "pod-1".into(),
            pid: None,
            state: PodState::Exited,
            url: "http://127.0.0.1:7701/".into(),
        },
        ChaosPod {
            id: "pod-2".into(),
            pid: Some(4242),
            state: PodState::Running,
            url: "http://127.0.0.1:7702/".into(),
        },
        ChaosPod {
            id: "pod-3".into(),
            pid: Some(4243),
            state: PodState::Paused,
            url: "http://127.0.0.1:7703/".into(),
        },
    ]);
    a.update(Action::ViewChaos);
    key(&mut a, KeyCode::Char('j'));
    snap!("chaos_cluster_120x30", a);
    key(&mut a, KeyCode::Char('x'));
    snap!("chaos_confirm_kill_120x30", a);
    key(&mut a, KeyCode::Char('n'));
    assert!(
        a.drain_effects().iter().all(|e| !e.is_mutation()),
        "n cancels"
    );
    key(&mut a, KeyCode::Char('x'));
    key(&mut a, KeyCode::Char('y'));
    assert!(
        a.drain_effects()
            .iter()
            .any(|e| matches!(e, vigil::console::Effect::Chaos { pod, .. } if pod == "pod-2"))
    );
    // Ctrl-d scrolls; it never kills.
    key(&mut a, KeyCode::Char('k'));
    a.on_key(KeyEvent::new(KeyCode::Char('d'), KeyModifiers::CONTROL));
    assert!(!matches!(a.mode, vigil::console::Mode::Dialog(_)));
}

#[test]
fn help_and_command_line() {
    let mut a = busy();
    key(&mut a, KeyCode::Char('?'));
    snap!("help_runs_120x30", a);
    key(&mut a, KeyCode::Char('x'));
    typed(&mut a, ":sw");
    snap!("command_line_typing_120x30", a);
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.view, View::Switches);
    typed(&mut a, ":frobnicate");
    key(&mut a, KeyCode::Enter);
    snap!("command_unknown_120x30", a);
    // :run takes the short form the views show (a prefix); an ambiguous
    // one lists the candidates.
    let mut a = busy();
    typed(&mut a, &format!(":run {}", &id(3)[..11]));
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.detail.as_ref().map(|d| d.run_id.clone()), Some(id(3)));
    let mut a = busy();
    typed(&mut a, ":run 0199a1b2-c");
    key(&mut a, KeyCode::Enter);
    assert!(a.detail.is_none());
    let status = a
        .status
        .as_ref()
        .map(|s| s.text.clone())
        .unwrap_or_default();
    assert!(
        status.contains("5 runs start so: 0199a1b2-c4") && status.contains("give more"),
        "{status}"
    );
    // gg and G.
    let mut a = busy();
    typed(&mut a, "G");
    assert_eq!(a.selected[0].0, 4);
    typed(&mut a, "gg");
    assert_eq!(a.selected[0].0, 0);
    // f freezes: data stops applying.
    typed(&mut a, "f");
    let before = a.runs.len();
    let u = store_update(
        &a,
        StoreData {
            runs: Some(vec![]),
            ..busy_data()
        },
        1,
        NOW,
    );
    a.apply_store(u);
    assert_eq!(a.runs.len(), before);
    snap!("runs_frozen_120x30", a);
}

#[test]
fn a_stale_round_cannot_resurrect_a_flipped_switch() {
    let mut a = busy();
    a.update(Action::ViewSwitches);
    let old_gen = a.generation;
    key(&mut a, KeyCode::Char('j'));
    key(&mut a, KeyCode::Char('t'));
    typed(&mut a, "back on");
    key(&mut a, KeyCode::Enter);
    assert!(a.generation > old_gen);
    // A round that started before the flip still says "off": dropped.
    let mut d = busy_data();
    d.switches = Some(vec![SwitchRow {
        name: "recovery.enabled".into(),
        enabled: false,
        updated_at_ms: NOW,
        updated_by: "x".into(),
        reason: "stale".into(),
    }]);
    a.switches[0].enabled = true;
    a.apply_store(StoreUpdate {
        generation: old_gen,
        ..store_update(&a, d, 1, NOW)
    });
    assert!(
        a.switches[0].enabled,
        "a stale round overwrote a newer value"
    );
}

#[test]
fn no_color_theme_still_marks_selection_and_state_with_words() {
    let mut a = busy();
    a.theme = Theme::monochrome();
    let mut t = Terminal::new(TestBackend::new(W, H)).unwrap();
    t.draw(|f| draw(f, &a)).unwrap();
    let buf = t.backend().buffer().clone();
    for cell in buf.content() {
        assert_eq!(
            cell.fg,
            ratatui::style::Color::Reset,
            "a colour with NO_COLOR at {cell:?}"
        );
    }
    // The selected row is reversed, not coloured.
    key(&mut a, KeyCode::Char('j'));
    t.draw(|f| draw(f, &a)).unwrap();
    let reversed = t
        .backend()
        .buffer()
        .content()
        .iter()
        .filter(|c| c.modifier.contains(ratatui::style::Modifier::REVERSED))
        .count();
    assert!(reversed > 100, "selection not visible without colour");
}

#[test]
fn resizes_cleanly() {
    let a = with_metrics(busy());
    for (w, h) in [(40, 10), (80, 24), (200, 60), (20, 6)] {
        for v in [
            Action::ViewRuns,
            Action::ViewPods,
            Action::ViewActivity,
            Action::ViewSwitches,
            Action::ViewEvents,
        ] {
            let mut a = a.clone();
            a.update(v);
            a.update(Action::Resize(w, h));
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| draw(f, &a)).unwrap();
        }
    }
}

/// Runs view actions: ctrl-k cancels the selected run after a y (refused
/// in read-only and for a run that ended), y copies its id; Tab completes
/// on the command line; a later command clears an earlier error; a run
/// that ended mid-step does not show that step running.
#[test]
fn run_actions_completion_and_the_status_line() {
    use vigil::console::{Effect, Mode};
    let ctrl_k = |a: &mut App| a.on_key(KeyEvent::new(KeyCode::Char('k'), KeyModifiers::CONTROL));
    // Cancel: the selected row is id(4), pending.
    let mut a = busy();
    assert_eq!(a.selected_key(View::Runs), Some(id(4)));
    ctrl_k(&mut a);
    snap!("runs_cancel_dialog_120x30", a);
    key(&mut a, KeyCode::Char('n'));
    assert_eq!(a.mode, Mode::Normal);
    assert!(
        a.drain_effects().iter().all(|e| !e.is_mutation()),
        "n backs out"
    );
    ctrl_k(&mut a);
    key(&mut a, KeyCode::Char('y'));
    let effects = a.drain_effects();
    assert!(
        effects.contains(&Effect::CancelRun { run_id: id(4) }),
        "{effects:?}"
    );
    // A run that already ended: refused before any dialog.
    let mut a = busy();
    typed(&mut a, "G");
    let last = a.selected_key(View::Runs).unwrap();
    ctrl_k(&mut a);
    assert_eq!(a.mode, Mode::Normal);
    let st = a.status.clone().unwrap().text;
    assert!(
        st.contains(&last) && st.contains("nothing to cancel"),
        "{st}"
    );
    // Read-only: refused.
    let mut a = busy();
    a.read_only = true;
    ctrl_k(&mut a);
    assert_eq!(a.mode, Mode::Normal);
    assert!(a.status.clone().unwrap().text.starts_with("read-only"));
    // Copy: the id, to the clipboard, in read-only too.
    key(&mut a, KeyCode::Char('y'));
    assert_eq!(a.drain_effects(), vec![Effect::Copy { text: id(4) }]);

    // Tab completes commands and their arguments.
    let mut a = busy();
    typed(&mut a, ":sw");
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.mode, Mode::Command("switches ".into()));
    key(&mut a, KeyCode::Esc);
    typed(&mut a, ":set rec");
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.mode, Mode::Command("set recovery.enabled ".into()));
    typed(&mut a, "o");
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.mode, Mode::Command("set recovery.enabled o".into()));
    assert!(a.status.clone().unwrap().text.contains("on  off"));
    key(&mut a, KeyCode::Esc);
    typed(&mut a, ":state ti");
    key(&mut a, KeyCode::Tab);
    assert_eq!(a.mode, Mode::Command("state timed_out ".into()));
    key(&mut a, KeyCode::Esc);

    // An error from one command is gone once a later one succeeds.
    typed(&mut a, ":frobnicate");
    key(&mut a, KeyCode::Enter);
    assert!(a.status.is_some());
    typed(&mut a, ":pods");
    key(&mut a, KeyCode::Enter);
    assert_eq!(a.status, None);

    // A cancelled run's running step is not shown running.
    let mut a = busy();
    let r = a.runs.iter_mut().find(|r| r.id == id(2)).unwrap();
    r.state = RunState::Cancelled;
    let text = render(&a);
    assert!(text.contains("reply ⊘ canc"), "{text}");
}
