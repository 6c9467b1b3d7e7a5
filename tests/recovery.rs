//! Liveness, recovery, reaper, janitor and fencing, with real `vigil pod`
//! processes and real signals, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestDb;
use common::pods::{PodProc, eventually, metric};
use nix::sys::signal::Signal;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vigil::client::{PodClient, StreamEvent};
use vigil::engine::run::RunState;

const FAST: &[&str] = &[
    "--liveness-timeout-ms",
    "1000",
    "--probe-interval-ms",
    "100",
];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST.iter().copied().chain(extra.iter().copied()).collect()
}

async fn submit(c: &PodClient, workflow: &str) -> String {
    let req = serde_json::from_value(json!({ "workflow": workflow })).unwrap();
    c.submit(&req).await.unwrap().run.id
}

async fn owner_of(h: &common::Handle, id: &str) -> (RunState, Option<String>, i64) {
    let r = h.store.get_run(id).await.unwrap().unwrap();
    (r.state, r.owner_pod, r.epoch)
}

fn chunks_of(evs: &[StreamEvent]) -> Vec<(i64, i64)> {
    evs.iter()
        .filter_map(|e| match e {
            StreamEvent::Chunk { epoch, seq, .. } => Some((*epoch, *seq)),
            _ => None,
        })
        .collect()
}

/// Kill the owner of a streaming run mid-stream with `sig`; a survivor must
/// detect it, claim the run once and finish it; attachers see each chunk of
/// the final run once (the early one after a reset).
async fn owner_dies_mid_stream(db: &TestDb, sig: Signal) {
    let mut a = PodProc::spawn(&db.target(), "owner-a", &args(&[]));
    let ca = PodClient::new(&a.url).unwrap();
    let id = submit(&ca, "slow_stream").await;
    let h = db.open().await;
    eventually("pod a owns the run", Duration::from_secs(10), || async {
        owner_of(&h, &id).await.1.as_deref() == Some("owner-a")
    })
    .await;
    let b = PodProc::spawn(&db.target(), "survivor-b", &args(&[]));
    let cb = PodClient::new(&b.url).unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let early = {
        let (cb, id, received) = (cb.clone(), id.clone(), received.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let end = cb
                .attach(&id, |e| {
                    received.fetch_add(1, Ordering::SeqCst);
                    seen.push(e.clone());
                })
                .await
                .unwrap();
            (seen, end)
        })
    };
    eventually(
        "the early attacher to hold 5 chunks",
        Duration::from_secs(10),
        || async { received.load(Ordering::SeqCst) >= 5 },
    )
    .await;
    a.signal(sig);
    a.wait_exit(Duration::from_secs(10)).expect("pod a exits");

    let (seen, end) = early.await.unwrap();
    assert_eq!(end.state, RunState::Succeeded);
    let mut late = Vec::new();
    cb.attach(&id, |e| late.push(e.clone())).await.unwrap();

    let final_run: Vec<(i64, i64)> = (0..40).map(|s| (2, s)).collect();
    assert_eq!(
        chunks_of(&late),
        final_run,
        "late attacher: the final run, each chunk once"
    );
    let reset = seen
        .iter()
        .position(|e| matches!(e, StreamEvent::Reset { epoch: 2, .. }))
        .expect("reset");
    assert_eq!(
        chunks_of(&seen[reset..]),
        final_run,
        "early attacher after the reset"
    );
    assert!(chunks_of(&seen[..reset]).iter().all(|(e, _)| *e == 1));

    // Detected by the survivor, claimed exactly once from the dead owner.
    let deaths = h.store.liveness().deaths(10).await.unwrap();
    assert!(
        deaths
            .iter()
            .any(|d| d.pod_id == "owner-a" && d.detected_by == "survivor-b"),
        "{deaths:?}"
    );
    let claims = h.store.claims(&id).await.unwrap();
    let path: Vec<_> = claims
        .iter()
        .map(|c| (c.from_pod.as_deref(), c.to_pod.as_str(), c.epoch))
        .collect();
    assert_eq!(
        path,
        vec![(None, "owner-a", 1), (Some("owner-a"), "survivor-b", 2)]
    );
    assert!(metric(&b.url, "vigil_pod_deaths_detected_total", None).await >= 1.0);
    assert_eq!(
        metric(
            &b.url,
            "vigil_recovery_claims_total",
            Some(("outcome", "won"))
        )
        .await,
        1.0
    );
    // The stream step ran twice (once per owner), the final step once.
    let effects = h.store.effects(&id).await.unwrap();
    assert_eq!(effects.iter().filter(|e| e.node_id == "done").count(), 1);
}

async fn sigkill_mid_stream_is_recovered_by_a_survivor(db: &TestDb) {
    owner_dies_mid_stream(db, Signal::SIGKILL).await;
}

async fn sigterm_mid_stream_is_recovered_by_the_same_path(db: &TestDb) {
    owner_dies_mid_stream(db, Signal::SIGTERM).await;
}

async fn two_survivors_race_and_each_run_is_claimed_once(db: &TestDb) {
    let h = db.open().await;
    for round in 0..3 {
        let owner = format!("owner-{round}");
        let mut a = PodProc::spawn(&db.target(), &owner, &args(&[]));
        let ca = PodClient::new(&a.url).unwrap();
        let mut ids = Vec::new();
        for _ in 0..8 {
            ids.push(submit(&ca, "slow_stream").await);
        }
        for id in &ids {
            eventually(
                "the owner to claim every run",
                Duration::from_secs(10),
                || async { owner_of(&h, id).await.1.as_deref() == Some(owner.as_str()) },
            )
            .await;
        }
        let b = PodProc::spawn(&db.target(), &format!("racer-b{round}"), &args(&[]));
        let c = PodProc::spawn(&db.target(), &format!("racer-c{round}"), &args(&[]));
        a.signal(Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(5)).unwrap();
        for id in &ids {
            eventually("the run to finish", Duration::from_secs(30), || async {
                owner_of(&h, id).await.0 == RunState::Succeeded
            })
            .await;
            let claims = h.store.claims(id).await.unwrap();
            let from_dead: Vec<_> = claims
                .iter()
                .filter(|c| c.from_pod.as_deref() == Some(owner.as_str()))
                .collect();
            assert_eq!(
                from_dead.len(),
                1,
                "round {round}: run {id} claimed {claims:?}"
            );
            assert_eq!(claims.len(), 2, "round {round}: {claims:?}");
        }
        let won = metric(
            &b.url,
            "vigil_recovery_claims_total",
            Some(("outcome", "won")),
        )
        .await
            + metric(
                &c.url,
                "vigil_recovery_claims_total",
                Some(("outcome", "won")),
            )
            .await;
        assert_eq!(won, 8.0, "round {round}: every orphan won exactly once");
        drop((b, c));
    }
}

async fn a_restarted_pod_does_not_steal_runs_another_pod_claimed(db: &TestDb) {
    let h = db.open().await;
    let mut a = PodProc::spawn(&db.target(), "restarts", &args(&[]));
    let ca = PodClient::new(&a.url).unwrap();
    let ids = [
        submit(&ca, "slow_stream").await,
        submit(&ca, "slow_stream").await,
    ];
    for id in &ids {
        eventually(
            "owned by the first incarnation",
            Duration::from_secs(10),
            || async { owner_of(&h, id).await.1.as_deref() == Some("restarts") },
        )
        .await;
    }
    let b = PodProc::spawn(&db.target(), "taker", &args(&[]));
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).unwrap();
    for id in &ids {
        eventually("the survivor to claim", Duration::from_secs(10), || async {
            owner_of(&h, id).await.1.as_deref() == Some("taker")
        })
        .await;
    }
    // The same id comes back: its startup sweep must leave taker's runs alone.
    let a2 = PodProc::spawn(&db.target(), "restarts", &args(&[]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    for id in &ids {
        eventually(
            "the survivor to finish",
            Duration::from_secs(20),
            || async { owner_of(&h, id).await.0 == RunState::Succeeded },
        )
        .await;
        let claims = h.store.claims(id).await.unwrap();
        assert_eq!(claims.len(), 2, "no claim by the restarted pod: {claims:?}");
        assert_eq!(owner_of(&h, id).await.1.as_deref(), Some("taker"));
    }
    assert_eq!(
        metric(
            &a2.url,
            "vigil_recovery_claims_total",
            Some(("outcome", "won"))
        )
        .await,
        0.0
    );
    drop(b);
}

async fn reaper_times_out_stale_heartbeating_runs_and_never_healthy_silent_ones(db: &TestDb) {
    let lanes = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/lanes/fast-reaper.toml"
    );
    let pod = PodProc::spawn(
        &db.target(),
        "reaper-pod",
        &args(&[
            "--chaos-hooks",
            "--lanes",
            lanes,
            "--reaper-interval-ms",
            "100",
        ]),
    );
    let c = PodClient::new(&pod.url).unwrap();
    let h = db.open().await;
    // A long healthy run on a lane that does not heartbeat (about 7 s).
    let silent = submit(&c, "embed_backfill").await;
    // A heartbeating run whose machinery dies while its pod lives.
    let stuck = submit(&c, "slow_stream").await;
    eventually(
        "the stuck run to stream",
        Duration::from_secs(10),
        || async { h.store.chunks(&stuck).await.unwrap().len() >= 3 },
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}v1/chaos/runs/{stuck}/stall", pod.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    eventually(
        "the reaper to time out the stuck run",
        Duration::from_secs(10),
        || async { owner_of(&h, &stuck).await.0 == RunState::TimedOut },
    )
    .await;
    let log = h.store.transitions(&stuck).await.unwrap();
    assert!(
        log.last()
            .unwrap()
            .reason
            .starts_with("reaper: no heartbeat"),
        "{log:?}"
    );
    // Its retry was queued in the same statement, and runs to completion.
    let runs = c.runs(&[("limit", "100".into())]).await.unwrap().runs;
    let retry = runs
        .iter()
        .find(|r| r.retry_of.as_deref() == Some(stuck.as_str()))
        .expect("retry queued");
    assert_eq!(retry.family.as_deref(), Some(stuck.as_str()));
    assert_eq!(retry.retries_left, 0);
    let retry_id = retry.id.clone();
    eventually("the retry to finish", Duration::from_secs(20), || async {
        owner_of(&h, &retry_id).await.0 == RunState::Succeeded
    })
    .await;
    // The silent run outlived the heartbeat timeout many times over and finished.
    eventually(
        "the silent run to finish",
        Duration::from_secs(20),
        || async { owner_of(&h, &silent).await.0 == RunState::Succeeded },
    )
    .await;
    assert!(
        h.store
            .transitions(&silent)
            .await
            .unwrap()
            .iter()
            .all(|t| t.to != RunState::TimedOut)
    );
    let timeouts = metric(
        &pod.url,
        "vigil_reaper_timeouts_total",
        Some(("lane", "sync")),
    )
    .await;
    let retries = metric(
        &pod.url,
        "vigil_reaper_retries_total",
        Some(("lane", "sync")),
    )
    .await;
    assert_eq!(
        (timeouts, retries),
        (1.0, 1.0),
        "timed out == retries queued"
    );
    assert_eq!(
        metric(
            &pod.url,
            "vigil_reaper_timeouts_total",
            Some(("lane", "embed_backfill"))
        )
        .await,
        0.0
    );
    // A retry with no retries left is timed out without another retry.
    let again = submit(&c, "slow_stream").await;
    eventually("streaming", Duration::from_secs(10), || async {
        !h.store.chunks(&again).await.unwrap().is_empty()
    })
    .await;
    h.exec_owned(format!(
        "UPDATE runs SET retries_left = 0 WHERE id = '{again}'"
    ))
    .await;
    reqwest::Client::new()
        .post(format!("{}v1/chaos/runs/{again}/stall", pod.url))
        .send()
        .await
        .unwrap();
    eventually("timed out", Duration::from_secs(10), || async {
        owner_of(&h, &again).await.0 == RunState::TimedOut
    })
    .await;
    let runs = c.runs(&[("limit", "100".into())]).await.unwrap().runs;
    assert!(
        !runs
            .iter()
            .any(|r| r.retry_of.as_deref() == Some(again.as_str()))
    );
    assert_eq!(
        metric(
            &pod.url,
            "vigil_reaper_retries_total",
            Some(("lane", "sync"))
        )
        .await,
        1.0
    );
}

async fn janitor_marks_lost_and_a_late_completion_stays_rejected(db: &TestDb) {
    let h = db.open().await;
    let mut a = PodProc::spawn(&db.target(), "doomed", &args(&[]));
    let ca = PodClient::new(&a.url).unwrap();
    let id = submit(&ca, "slow_stream").await;
    eventually("owned", Duration::from_secs(10), || async {
        owner_of(&h, &id).await.1.as_deref() == Some("doomed")
    })
    .await;
    let b = PodProc::spawn(
        &db.target(),
        "janitor",
        &args(&["--lost-after-ms", "300", "--janitor-interval-ms", "100"]),
    );
    let cb = PodClient::new(&b.url).unwrap();
    // Recovery off: the orphan stays an orphan, and the janitor gets it.
    let req =
        serde_json::from_value(json!({"enabled": false, "reason": "test: let the janitor act"}))
            .unwrap();
    cb.set_switch("recovery.enabled", &req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).unwrap();
    eventually(
        "the janitor to mark it lost",
        Duration::from_secs(15),
        || async { owner_of(&h, &id).await.0 == RunState::Lost },
    )
    .await;
    // The dead owner's late completion (seed 002): a structured answer, no flip.
    let ev = serde_json::from_value(json!({"type": "complete", "epoch": 1})).unwrap();
    let err = cb.event(&id, &ev).await.unwrap_err();
    assert_eq!(err.already_terminal(), Some(RunState::Lost), "{err}");
    assert_eq!(owner_of(&h, &id).await.0, RunState::Lost);
    assert_eq!(metric(&b.url, "vigil_janitor_lost_total", None).await, 1.0);
    assert_eq!(
        metric(
            &b.url,
            "vigil_too_late_events_total",
            Some(("kind", "complete"))
        )
        .await,
        1.0
    );
    assert!(metric(&b.url, "vigil_ghost_transitions_rejected_total", None).await >= 1.0);
    let log = h.store.transitions(&id).await.unwrap();
    assert_eq!(
        log.last().map(|t| (t.from, t.to)),
        Some((RunState::Running, RunState::Lost))
    );
}

/// SIGSTOP the owner past the liveness bound; a survivor claims and finishes
/// the run; SIGCONT the old owner. None of its writes may land. A `blind`
/// zombie does not stop its own machinery (chaos flag), so the epoch fence
/// alone must stop it, and counts it.
async fn paused_owner_wakes_up(db: &TestDb, blind: bool) {
    let h = db.open().await;
    let extra: &[&str] = if blind {
        &["--chaos-keep-zombie-runs"]
    } else {
        &[]
    };
    let a = PodProc::spawn(&db.target(), "zombie", &args(extra));
    let ca = PodClient::new(&a.url).unwrap();
    let id = submit(&ca, "slow_stream").await;
    eventually(
        "streaming on the zombie-to-be",
        Duration::from_secs(10),
        || async { h.store.chunks(&id).await.unwrap().len() >= 5 },
    )
    .await;
    let b = PodProc::spawn(&db.target(), "successor", &args(&[]));
    a.signal(Signal::SIGSTOP);
    eventually(
        "the successor to claim",
        Duration::from_secs(15),
        || async { owner_of(&h, &id).await.1.as_deref() == Some("successor") },
    )
    .await;
    eventually(
        "the successor to finish",
        Duration::from_secs(20),
        || async { owner_of(&h, &id).await.0 == RunState::Succeeded },
    )
    .await;
    a.signal(Signal::SIGCONT);
    // The zombie wakes mid-stream and tries to write: every write is fenced.
    if blind {
        // Its machinery keeps going: every write it tries must be fenced.
        eventually(
            "the zombie to be fenced",
            Duration::from_secs(10),
            || async { metric(&a.url, "vigil_fenced_writes_total", None).await >= 1.0 },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let chunks = h.store.chunks(&id).await.unwrap();
    assert_eq!(chunks.len(), 40);
    assert!(
        chunks.iter().all(|c| c.epoch == 2),
        "only the successor's stream remains"
    );
    let effects = h.store.effects(&id).await.unwrap();
    let done: Vec<_> = effects
        .iter()
        .filter(|e| e.node_id == "done")
        .map(|e| e.pod.as_str())
        .collect();
    assert_eq!(
        done,
        vec!["successor"],
        "the final output is the successor's"
    );
    let r = h.store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.epoch, r.owner_pod.as_deref()),
        (RunState::Succeeded, 2, Some("successor"))
    );
    drop(b);
}

async fn a_paused_owner_writes_nothing_when_it_wakes(db: &TestDb) {
    paused_owner_wakes_up(db, false).await;
}

async fn a_blind_zombie_is_stopped_by_the_epoch_fence(db: &TestDb) {
    paused_owner_wakes_up(db, true).await;
}

/// A SIGKILLed pod is found dead through the lock its process held, not by
/// waiting out its liveness timeout (a minute here): the survivor recovers
/// its run long before the lease could have said anything.
async fn a_killed_pod_is_found_dead_by_its_lock_not_its_lease(db: &TestDb) {
    let h = db.open().await;
    let long = [
        "--liveness-timeout-ms",
        "60000",
        "--probe-interval-ms",
        "100",
    ];
    let mut a = PodProc::spawn(&db.target(), "locked-a", &long);
    let ca = PodClient::new(&a.url).unwrap();
    let id = submit(&ca, "slow_stream").await;
    eventually(
        "locked-a to claim the run",
        Duration::from_secs(10),
        || async { owner_of(&h, &id).await.1.as_deref() == Some("locked-a") },
    )
    .await;
    let b = PodProc::spawn(&db.target(), "locked-b", &long);
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).unwrap();
    eventually(
        "locked-b to take the run (a lease would take 60 s)",
        Duration::from_secs(20),
        || async { owner_of(&h, &id).await.1.as_deref() == Some("locked-b") },
    )
    .await;
    let deaths = h.store.liveness().deaths(10).await.unwrap();
    assert_eq!(
        deaths.iter().map(|d| d.pod_id.as_str()).collect::<Vec<_>>(),
        ["locked-a"]
    );
    assert_eq!(deaths[0].detected_by, "locked-b");
    drop(b);
}

on_both_stores!(
    a_killed_pod_is_found_dead_by_its_lock_not_its_lease,
    sigkill_mid_stream_is_recovered_by_a_survivor,
    sigterm_mid_stream_is_recovered_by_the_same_path,
    two_survivors_race_and_each_run_is_claimed_once,
    a_restarted_pod_does_not_steal_runs_another_pod_claimed,
    reaper_times_out_stale_heartbeating_runs_and_never_healthy_silent_ones,
    janitor_marks_lost_and_a_late_completion_stays_rejected,
    a_paused_owner_writes_nothing_when_it_wakes,
    a_blind_zombie_is_stopped_by_the_epoch_fence,
);

/// PostgreSQL: a probe that found the dead pod's lock free holds it (xact
/// lock) until its DELETE commits; a replacement with the same id blocks on
/// its own lock until then, and only then writes its registry row, which no
/// stale probe can remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replacement_pod_is_not_unregistered_by_a_concurrent_probe() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let h = db.open().await;
    let common::Raw::Postgres(pg) = &h.raw else {
        unreachable!()
    };
    let mut a = PodProc::spawn(&db.target(), "phoenix", &args(&[]));
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).unwrap();
    let old = h.store.liveness().pods().await.unwrap();
    let old_inc = old
        .iter()
        .find(|p| p.pod_id == "phoenix")
        .unwrap()
        .incarnation
        .clone();

    // A prober's transaction, paused between its lock probe and its commit.
    let mut tx = pg.pool().begin().await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(vigil::engine::store::liveness::lock_key("phoenix"))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(free, "the dead pod's lock is free");
    sqlx::query("DELETE FROM pods WHERE pod_id = 'phoenix' AND incarnation = $1")
        .bind(&old_inc)
        .execute(&mut *tx)
        .await
        .unwrap();

    // The replacement starts meanwhile: it must wait for the prober.
    let target = db.target();
    let replacement = std::thread::spawn(move || PodProc::spawn(&target, "phoenix", &args(&[])));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !replacement.is_finished(),
        "the replacement must block on the lock while the probe is open"
    );
    tx.commit().await.unwrap();
    let phoenix = replacement.join().unwrap();

    let pods = h.store.liveness().pods().await.unwrap();
    let row = pods
        .iter()
        .find(|p| p.pod_id == "phoenix")
        .expect("the replacement is registered");
    assert_ne!(row.incarnation, old_inc);
    // And it stays registered while it lives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pods = h.store.liveness().pods().await.unwrap();
    assert!(
        pods.iter()
            .any(|p| p.pod_id == "phoenix" && p.incarnation == row.incarnation)
    );
    drop(phoenix);
}
