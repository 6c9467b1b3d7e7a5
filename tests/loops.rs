//! The engine's background rules (reaper, janitor, recovery, dispatch)
//! judged pass by pass on a manual clock, on both stores: no real sleeps
//! stand between a rule and its verdict. `tests/recovery.rs` keeps the
//! end-to-end runs with real processes and signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Handle, TestDb, registry};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use vigil::engine::clock::{Clock, ManualClock};
use vigil::engine::janitor::Janitor;
use vigil::engine::lanes::Lanes;
use vigil::engine::reaper::Reaper;
use vigil::engine::run::RunState;
use vigil::engine::store::liveness::{Identity, Membership};
use vigil::engine::switches::{self, JANITOR_ENABLED, REAPER_ENABLED, RECOVERY_ENABLED, Switches};
use vigil::engine::worker::{Worker, WorkerConfig};
use vigil::engine::{Engine, EngineConfig, dispatch, recovery};

/// A long step on a heartbeating lane (the built-in `sync`: 5 s timeout,
/// one retry).
const LONG_SYNC: &str = r#"
name = "long_sync"
lane = "sync"
[[steps]]
id = "crunch"
kind = "sleep"
ms = 600000
"#;

/// A long step on a lane that does not heartbeat, bounded by a deadline.
const LONG_DEADLINE: &str = r#"
name = "long_deadline"
lane = "action"
deadline_ms = 10000
[[steps]]
id = "crunch"
kind = "sleep"
ms = 600000
"#;

/// The built-in heartbeat timeout of `sync` and `auth`.
const HEARTBEAT_TIMEOUT_MS: i64 = 5_000;
const LIVENESS_TIMEOUT: Duration = Duration::from_millis(2_000);
const T0: i64 = 1_700_000_000_000;

/// One pod on its own store handle (its own pool, as a process has), on
/// the shared manual clock.
struct TestPod {
    h: Handle,
    engine: Arc<Engine>,
    worker: Arc<Worker>,
}

async fn pod(db: &TestDb, clock: &ManualClock, id: &str) -> TestPod {
    pod_with(db, clock, id, WorkerConfig::default()).await
}

async fn pod_with(db: &TestDb, clock: &ManualClock, id: &str, config: WorkerConfig) -> TestPod {
    pod_on_lanes(db, clock, id, config, Lanes::builtin()).await
}

async fn pod_on_lanes(
    db: &TestDb,
    clock: &ManualClock,
    id: &str,
    config: WorkerConfig,
    lanes: Lanes,
) -> TestPod {
    let h = db.open_with_clock(Arc::new(clock.clone())).await;
    let switches = Switches::defaults();
    switches.refresh(h.store.as_ref()).await.expect("switches");
    let engine = Arc::new(
        Engine::new(
            h.store.clone(),
            registry(&[LONG_SYNC, LONG_DEADLINE]),
            switches,
            Arc::new(clock.clone()),
            EngineConfig::new(id),
        )
        .with_lanes(lanes),
    );
    let worker = Arc::new(Worker::new(
        engine.clone(),
        config,
        CancellationToken::new(),
    ));
    TestPod { h, engine, worker }
}

impl TestPod {
    async fn switch(&self, name: &str, enabled: bool) {
        switches::set(self.h.store.as_ref(), name, enabled, "test", "loops test")
            .await
            .expect("set switch");
        self.engine
            .switches
            .refresh(self.h.store.as_ref())
            .await
            .expect("refresh switches");
    }

    async fn join(&self) -> Box<dyn Membership> {
        let me = Identity {
            pod_id: self.engine.config.pod_id.clone(),
            incarnation: uuid::Uuid::now_v7().to_string(),
            addr: None,
            timeout: LIVENESS_TIMEOUT,
        };
        self.h
            .store
            .liveness()
            .join(&me, LIVENESS_TIMEOUT)
            .await
            .expect("join")
    }

    async fn state(&self, run: &str) -> (RunState, Option<String>) {
        let r = self.h.store.get_run(run).await.unwrap().unwrap();
        (r.state, r.owner_pod)
    }
}

/// Kill `pod` as a SIGKILL would, for the store: its drivers stop, its
/// liveness session closes while its lease is still fresh (PostgreSQL:
/// the lock goes with the process, which is what tells a death from a
/// silent session), or its lease runs out (SQLite, on the manual clock).
async fn die(pod: TestPod, membership: Box<dyn Membership>, clock: &ManualClock) {
    let sqlite = pod.worker.store().backend() == "sqlite";
    pod.worker.stop();
    pod.worker.drained().await;
    drop(membership);
    drop(pod);
    if sqlite {
        clock.advance_ms(i64::try_from(LIVENESS_TIMEOUT.as_millis()).unwrap() + 1);
    }
}

/// Recovery passes until one finds a death (a closed PostgreSQL session is
/// seen by the server a moment after the client lets go).
async fn pass_until_death(pod: &TestPod) -> recovery::RecoveryPass {
    for _ in 0..100 {
        let p = recovery::pass(&pod.worker).await;
        if !p.deaths.is_empty() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no death found within 5 s");
}

async fn reaper_judges_staleness_only_after_watching_one_heartbeat_timeout(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let _member = a.join().await;
    let run = a.engine.submit("long_sync", json!({}), None).await.unwrap();
    a.h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    // A run whose owner is not a registered pod (dead and unregistered) is
    // an orphan: recovery's to resume, never the reaper's to time out.
    let orphan = a.engine.submit("long_sync", json!({}), None).await.unwrap();
    a.h.store
        .claim_run(&orphan.id, "pod-gone", None)
        .await
        .unwrap();
    // The owner went silent long ago (it never heartbeat after its claim)...
    clock.advance_ms(3 * HEARTBEAT_TIMEOUT_MS);
    // ...but a reaper that has only just started watching cannot know that
    // the owner did not heartbeat while it was not looking.
    let mut reaper = Reaper::new(a.engine.clone(), Duration::from_secs(2));
    let p = reaper.pass().await;
    assert!(!p.judged, "{p:?}");
    assert_eq!(a.state(&run.id).await.0, RunState::Running);
    clock.advance_ms(HEARTBEAT_TIMEOUT_MS - 1);
    assert!(
        !reaper.pass().await.judged,
        "one ms short of a full timeout"
    );
    assert_eq!(a.state(&run.id).await.0, RunState::Running);
    clock.advance_ms(1);
    let p = reaper.pass().await;
    assert!(p.judged, "{p:?}");
    assert_eq!(
        p.stale.timed_out,
        vec![(run.id.clone(), "sync".to_owned())],
        "a heartbeat silent past its lane's timeout is stale"
    );
    assert_eq!(p.stale.retried.len(), 1, "sync has one retry: {p:?}");
    assert_eq!(a.state(&run.id).await.0, RunState::TimedOut);
    assert_eq!(a.state(&orphan.id).await.0, RunState::Running);
}

/// A registered pod-a owning a long sync run, a reaper that has watched
/// one full heartbeat timeout, and a heartbeat at its end: (the pod's
/// membership, the run id, the claim's epoch, the reaper).
async fn a_watched_heartbeating_run(
    a: &TestPod,
    clock: &ManualClock,
) -> (Box<dyn Membership>, String, i64, Reaper) {
    let member = a.join().await;
    let run = a.engine.submit("long_sync", json!({}), None).await.unwrap();
    let claim = a.h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    let reaper = Reaper::new(a.engine.clone(), Duration::from_secs(2));
    clock.advance_ms(HEARTBEAT_TIMEOUT_MS);
    a.h.store.heartbeat_run(&run.id, claim.epoch).await.unwrap();
    (member, run.id, claim.epoch, reaper)
}

async fn reaper_spares_a_fresh_heartbeat_and_obeys_its_switch(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let (_member, run_id, _, mut reaper) = a_watched_heartbeating_run(&a, &clock).await;
    clock.advance_ms(HEARTBEAT_TIMEOUT_MS);
    let p = reaper.pass().await;
    assert!(p.judged && p.stale.timed_out.is_empty(), "{p:?}");
    // Silent past the timeout, but the reaper is switched off.
    clock.advance_ms(1);
    a.switch(REAPER_ENABLED, false).await;
    let p = reaper.pass().await;
    assert!(!p.judged, "{p:?}");
    assert_eq!(a.state(&run_id).await.0, RunState::Running);
    a.switch(REAPER_ENABLED, true).await;
    assert_eq!(reaper.pass().await.stale.timed_out.len(), 1);
}

async fn reaper_times_out_a_run_past_its_deadline_plus_grace(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let run = a
        .engine
        .submit("long_deadline", json!({}), None)
        .await
        .unwrap();
    a.h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    let mut reaper = Reaper::new(a.engine.clone(), Duration::from_millis(2_000));
    clock.advance_ms(10_000 + 2_000);
    let p = reaper.pass().await;
    assert!(
        p.judged && p.overdue.is_empty(),
        "at deadline + grace: {p:?}"
    );
    clock.advance_ms(1);
    let p = reaper.pass().await;
    assert_eq!(p.overdue, vec![run.id.clone()]);
    assert!(p.stale.timed_out.is_empty(), "action does not heartbeat");
    assert_eq!(a.state(&run.id).await.0, RunState::TimedOut);
}

async fn recovery_claims_a_dead_peers_run_once_and_only_while_live(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let b = pod(db, &clock, "pod-b").await;
    let mem_a = a.join().await;
    let _mem_b = b.join().await;
    let run = a.engine.submit("long_sync", json!({}), None).await.unwrap();
    assert!(a.worker.start_run(&run.id, None).await);
    assert!(a.worker.drives(&run.id));
    let p = recovery::pass(&b.worker).await;
    assert!(
        p.deaths.is_empty() && p.won.is_empty(),
        "pod-a is alive: {p:?}"
    );
    let watched: Vec<&str> = p.peers.iter().map(|p| p.pod_id.as_str()).collect();
    assert_eq!(watched, ["pod-a"], "the peers left to watch");
    die(a, mem_a, &clock).await;
    // A pod that lost its own membership judges nobody and takes nothing.
    b.worker.set_live(false);
    for _ in 0..5 {
        assert_eq!(
            recovery::pass(&b.worker).await,
            recovery::RecoveryPass::default()
        );
    }
    assert_eq!(
        b.state(&run.id).await,
        (RunState::Running, Some("pod-a".into()))
    );
    b.worker.set_live(true);
    let p = pass_until_death(&b).await;
    assert_eq!(p.deaths, vec!["pod-a".to_owned()]);
    assert_eq!(p.won, vec![run.id.clone()], "{p:?}");
    assert!(p.peers.is_empty(), "{p:?}");
    assert!(b.worker.drives(&run.id));
    assert_eq!(
        b.state(&run.id).await,
        (RunState::Running, Some("pod-b".into()))
    );
    let again = recovery::pass(&b.worker).await;
    assert!(again.deaths.is_empty() && again.won.is_empty(), "{again:?}");
    let claims = b.h.store.claims(&run.id).await.unwrap();
    let owners: Vec<&str> = claims.iter().map(|c| c.to_pod.as_str()).collect();
    assert_eq!(owners, ["pod-a", "pod-b"], "one claim each");
    b.worker.stop();
    b.worker.drained().await;
}

async fn recovery_switched_off_records_deaths_and_the_janitor_marks_the_orphan_lost(db: &TestDb) {
    const LOST_AFTER_MS: i64 = 60_000;
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let b = pod(db, &clock, "pod-b").await;
    let mem_a = a.join().await;
    let _mem_b = b.join().await;
    let run = a.engine.submit("long_sync", json!({}), None).await.unwrap();
    assert!(a.worker.start_run(&run.id, None).await);
    b.switch(RECOVERY_ENABLED, false).await;
    die(a, mem_a, &clock).await;
    let p = pass_until_death(&b).await;
    assert_eq!(p.deaths, vec!["pod-a".to_owned()]);
    assert!(p.won.is_empty() && p.lost.is_empty(), "switched off: {p:?}");
    assert_eq!(
        b.state(&run.id).await,
        (RunState::Running, Some("pod-a".into()))
    );
    let janitor = Janitor::new(b.engine.clone(), Duration::from_millis(60_000));
    clock.advance_ms(LOST_AFTER_MS - 1);
    assert!(janitor.pass().await.is_empty(), "not yet lost_after");
    clock.advance_ms(2);
    b.switch(JANITOR_ENABLED, false).await;
    assert!(
        janitor.pass().await.is_empty(),
        "the janitor is switched off"
    );
    b.switch(JANITOR_ENABLED, true).await;
    assert_eq!(janitor.pass().await, vec![run.id.clone()]);
    assert_eq!(b.state(&run.id).await.0, RunState::Lost);
}

async fn dispatch_claims_pending_runs_up_to_the_pods_room(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let config = WorkerConfig {
        max_runs: 2,
        keep_zombie_runs: false,
    };
    let TestPod { h, engine, worker } = pod_with(db, &clock, "pod-a", config).await;
    for _ in 0..3 {
        engine.submit("long_sync", json!({}), None).await.unwrap();
    }
    assert_eq!(dispatch::pass(&worker).await.unwrap(), 2);
    assert_eq!(worker.runs_active(), 2);
    assert_eq!(dispatch::pass(&worker).await.unwrap(), 0, "no room left");
    let pending = h.store.pending_runs(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(clock.now_ms() == T0, "the manual clock did not move");
    worker.stop();
    worker.drained().await;
    assert_eq!(
        dispatch::pass(&worker).await.unwrap(),
        0,
        "a stopping worker takes nothing"
    );
}

async fn a_watch_sees_a_peers_lock_granted_the_moment_its_holder_goes(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let b = pod(db, &clock, "pod-b").await;
    let mem_a = a.join().await;
    let _mem_b = b.join().await;
    let peer =
        b.h.store
            .liveness()
            .pods()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.pod_id == "pod-a")
            .unwrap();
    let mut watch =
        b.h.store
            .liveness()
            .watch(&peer)
            .await
            .unwrap()
            .expect("both stores watch a peer's lock");
    assert!(!watch.released().await.unwrap(), "pod-a holds its lock");
    // pod-a's process lets go (here: its membership is dropped); the
    // clock does not move, so no lease has run out.
    drop(mem_a);
    let mut granted = false;
    for _ in 0..3 {
        if watch.released().await.unwrap() {
            granted = true;
            break;
        }
    }
    assert!(granted, "the lock was granted once its holder let go");
    let p = recovery::pass(&b.worker).await;
    assert_eq!(p.deaths, vec!["pod-a".to_owned()], "{p:?}");
    drop(a);
}

/// Hold the write lock on `runs` from a session of its own, as a frozen
/// store holds every writer: the reaper's statement waits, and errs not.
async fn hold_runs_locked(db: &TestDb) -> (Handle, Locked) {
    let h = db.open().await;
    let locked = match &h.raw {
        common::Raw::Sqlite(s) => {
            let mut conn = s.pool().acquire().await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .unwrap();
            Locked::Sqlite(conn)
        }
        common::Raw::Postgres(s) => {
            let mut conn = s.pool().acquire().await.unwrap();
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
            sqlx::query("LOCK TABLE runs IN EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await
                .unwrap();
            Locked::Postgres(conn)
        }
    };
    (h, locked)
}

enum Locked {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Locked {
    /// Until some statement of another session waits on this lock.
    async fn until_waited_on(&mut self) {
        match self {
            // SQLite does not say who waits in its busy handler.
            Locked::Sqlite(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Locked::Postgres(conn) => {
                for _ in 0..100 {
                    let waiting: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND database = \
                         (SELECT oid FROM pg_database WHERE datname = current_database())",
                    )
                    .fetch_one(&mut **conn)
                    .await
                    .unwrap();
                    if waiting > 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("nothing waited on the lock within 1 s");
            }
        }
    }

    async fn release(self) {
        match self {
            Locked::Sqlite(mut conn) => {
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            }
            Locked::Postgres(mut conn) => {
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            }
        }
    }
}

async fn reaper_starts_watching_again_after_the_store_hung(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let a = pod(db, &clock, "pod-a").await;
    let (_member, run_id, epoch, mut reaper) = a_watched_heartbeating_run(&a, &clock).await;
    // The store hangs (a frozen server): the reaper's pass waits on it,
    // and so do the owner's heartbeats, for longer than a heartbeat
    // timeout of the store's clock.
    let (_other, mut locked) = hold_runs_locked(db).await;
    let pass = tokio::spawn(async move {
        let p = reaper.pass().await;
        (reaper, p)
    });
    locked.until_waited_on().await;
    clock.advance_ms(HEARTBEAT_TIMEOUT_MS + 1_000);
    locked.release().await;
    let (mut reaper, p) = pass.await.unwrap();
    assert!(
        p.stale.timed_out.is_empty(),
        "the hung pass judged heartbeats due before it began: {p:?}"
    );
    // The owner's last heartbeat is now older than its lane's timeout, only
    // because the store hung; the reaper must not call it stale before the
    // owner had a full timeout to say otherwise.
    let p = reaper.pass().await;
    assert!(!p.judged, "judged right after a hang: {p:?}");
    assert_eq!(a.state(&run_id).await.0, RunState::Running);
    a.h.store.heartbeat_run(&run_id, epoch).await.unwrap();
    clock.advance_ms(HEARTBEAT_TIMEOUT_MS);
    let p = reaper.pass().await;
    assert!(p.judged && p.stale.timed_out.is_empty(), "{p:?}");
    assert_eq!(a.state(&run_id).await.0, RunState::Running);
    // Silent past its timeout after the hang: stale, as ever.
    clock.advance_ms(1);
    assert_eq!(reaper.pass().await.stale.timed_out.len(), 1);
}

/// A claim stamps the run's heartbeat with the time its statement was
/// written. A claim held up by a half-open or frozen link commits later,
/// its stamp already old, and a peer's reaper once timed such a healthy
/// run out a second after it began (a PostgreSQL soak round). A drive that
/// finds its claim's stamp a beat old beats at once: here the lane beats
/// every 150 s, so a heartbeat written within seconds is that first beat.
async fn a_drive_whose_claim_stamp_is_already_old_beats_at_once(db: &TestDb) {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().unwrap();
    let lanes_file = dir.path().join("lanes.toml");
    std::fs::write(
        &lanes_file,
        "[lanes.sync]\nheartbeat = true\nheartbeat_timeout_ms = 600000\nretries = 1\n",
    )
    .unwrap();
    let a = pod_on_lanes(
        db,
        &clock,
        "pod-a",
        WorkerConfig::default(),
        Lanes::load(&lanes_file).unwrap(),
    )
    .await;
    let (h, engine) = (&a.h, &a.engine);
    let run = engine.submit("long_sync", json!({}), None).await.unwrap();
    let claim = h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    // The claim's stamp, T0, is now 200 s old: more than a beat (150 s).
    clock.advance_ms(200_000);
    let cancel = CancellationToken::new();
    let driver = tokio::spawn({
        let (engine, id, cancel) = (engine.clone(), run.id.clone(), cancel.clone());
        async move { engine.drive_from(&id, claim.epoch, cancel, None).await }
    });
    let mut beat = None;
    for _ in 0..200 {
        let r = h.store.get_run(&run.id).await.unwrap().unwrap();
        if r.heartbeat_at_ms == Some(T0 + 200_000) {
            beat = r.heartbeat_at_ms;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    let _ = driver.await;
    assert_eq!(
        beat,
        Some(T0 + 200_000),
        "no beat at once after an old claim stamp"
    );
}

on_both_stores!(
    reaper_starts_watching_again_after_the_store_hung,
    a_watch_sees_a_peers_lock_granted_the_moment_its_holder_goes,
    reaper_judges_staleness_only_after_watching_one_heartbeat_timeout,
    reaper_spares_a_fresh_heartbeat_and_obeys_its_switch,
    reaper_times_out_a_run_past_its_deadline_plus_grace,
    recovery_claims_a_dead_peers_run_once_and_only_while_live,
    recovery_switched_off_records_deaths_and_the_janitor_marks_the_orphan_lost,
    dispatch_claims_pending_runs_up_to_the_pods_room,
    a_drive_whose_claim_stamp_is_already_old_beats_at_once,
);
