//! Firing faults: each planned fault waits for its trigger, resolves its
//! target, is recorded, then does what its kind says (one function a kind,
//! dispatched by [`fire`]); after the workload, [`heal`] undoes what is
//! still broken.

use super::{Shared, lock};
use crate::chaos::scenario::{Action, Plan, PlannedFault, Scenario, Target, Trigger};
use crate::client::PodClient;
use crate::cluster::PodState;
use crate::engine::store::RunFilter;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// One task a planned fault: it waits for its trigger (until `bound`),
/// then fires; a trigger that never came or a fault that failed is a note.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    scn: &Arc<Scenario>,
    plan: &Plan,
    bound: Instant,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for f in plan.faults.clone() {
        let (shared, scn) = (shared.clone(), scn.clone());
        tasks.push(tokio::spawn(async move {
            if !wait_trigger(&shared, &f.trigger, bound).await {
                shared.note(format!(
                    "fault {} ({}): its trigger never happened",
                    f.index,
                    f.action.as_str()
                ));
                return;
            }
            if let Err(e) = fire(&shared, &scn, &f).await {
                // It did not do what the scenario says: less was tested,
                // and the verdict must say unknown, never pass.
                lock(&shared.fired).retain(|i| *i != f.index);
                shared.note(format!(
                    "fault {} ({}) failed: {}",
                    f.index,
                    f.action.as_str(),
                    crate::errors::report(&e)
                ));
            }
        }));
    }
    tasks
}

async fn resolve_target(shared: &Shared, target: &Target) -> Option<String> {
    match target {
        Target::Pod(p) => Some(p.clone()),
        Target::OwnerOf(run) => {
            let id = shared.run_id(run)?;
            let Some(store) = &shared.store else {
                return super::target::owner(shared, &id);
            };
            let until = Instant::now() + Duration::from_secs(10);
            shared
                .observe("reading a fault target's owner", until, || {
                    store.get_run(&id)
                })
                .await
                .flatten()
                .and_then(|r| r.owner_pod)
        }
        Target::Random(draw) => {
            let mut live: Vec<String> = shared.live().into_iter().map(|(id, _)| id).collect();
            live.sort();
            (!live.is_empty())
                .then(|| live[usize::try_from(*draw % live.len() as u64).unwrap_or(0)].clone())
        }
        Target::LastKilled => lock(&shared.last_killed).clone(),
        Target::None => None,
    }
}

async fn wait_trigger(shared: &Shared, trigger: &Trigger, bound: Instant) -> bool {
    match trigger {
        Trigger::AtMs(ms) => {
            let due = shared.until_workload_ms(*ms);
            tokio::time::sleep(due).await;
            true
        }
        Trigger::AfterChunk { run, chunks } => loop {
            if Instant::now() > bound {
                return false;
            }
            // Parsing refuses chunk triggers on a target (no stream).
            let Some(store) = &shared.store else {
                return false;
            };
            if let Some(id) = shared.run_id(run) {
                let n = tokio::time::timeout(Duration::from_secs(2), store.chunks(&id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or(0, |c| c.len());
                if n >= usize::try_from(*chunks).unwrap_or(usize::MAX) {
                    return true;
                }
                if ended(shared, &id).await {
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        Trigger::AfterStep { run, step } => loop {
            if Instant::now() > bound {
                return false;
            }
            if let Some(id) = shared.run_id(run) {
                if super::target::witnessed(shared, &id, step) {
                    return true;
                }
                if ended(shared, &id).await {
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        },
        Trigger::AfterEnd { run } => loop {
            if Instant::now() > bound {
                return false;
            }
            if let Some(id) = shared.run_id(run)
                && ended(shared, &id).await
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        },
    }
}

/// Whether the store (a target: its status API) says run `id` is terminal
/// (false when it does not answer within 2 s).
async fn ended(shared: &Shared, id: &str) -> bool {
    let Some(store) = &shared.store else {
        return super::target::state(shared, id)
            .await
            .is_ok_and(crate::engine::run::RunState::is_terminal);
    };
    tokio::time::timeout(Duration::from_secs(2), store.get_run(id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .is_some_and(|r| r.state.is_terminal())
}

/// Fire fault `f`: resolve its target and run, record it with the runs its
/// pod owned, then do what its kind says.
async fn fire(shared: &Shared, scn: &Scenario, f: &PlannedFault) -> Result<()> {
    let pod = resolve_target(shared, &f.target).await;
    let run_id = match (&f.target, scn.fault_run(f.index)) {
        (Target::OwnerOf(r), _) => shared.run_id(r),
        (_, Some(r)) => shared.run_id(&r),
        _ => None,
    };
    if f.target != Target::None && pod.is_none() {
        shared.note(format!(
            "fault {} ({}) found no target: not fired",
            f.index,
            f.action.as_str()
        ));
        return Ok(());
    }
    let owned = owned_runs(shared, pod.as_deref()).await;
    shared.say(&format!(
        "fault {}: {} {}",
        f.index,
        f.action.as_str(),
        pod.as_deref().unwrap_or("")
    ));
    shared.history.record(
        "fault",
        json!({ "index": f.index, "action": f.action, "pod": pod, "run_id": run_id, "owned": owned, "duration_ms": f.duration_ms, "link": f.link }),
    );
    lock(&shared.fired).push(f.index);
    let p = pod.as_deref().unwrap_or_default();
    match f.action {
        Action::Kill | Action::Term => kill(shared, f, p).await,
        Action::Pause | Action::Partition => cut_off(shared, f, p).await,
        Action::Restart => restart(shared, p).await,
        Action::Switch => switch(shared, f).await,
        Action::Stall => stall(shared, p, run_id).await,
        Action::StoreOutage => store_outage(shared, f).await,
        Action::StoreFreeze => store_freeze(shared, f).await,
        Action::DiskFull => disk_full(shared, f).await,
        Action::SlowDisk => slow_disk(shared, f).await,
        Action::LoseUnsynced => lose_unsynced(shared).await,
        Action::RowLock => row_lock(shared, f, p, run_id).await,
        Action::ClockSkew => clock_skew(shared, f, p).await,
        Action::WriteLock => write_lock(shared, f, p).await,
        Action::LateComplete => late_complete(shared, run_id).await,
        _ if f.on_client_link() => client_link(shared, scn, f, pod.as_deref()).await,
        a if a.is_link() => link(shared, f, pod.as_deref()).await,
        _ => bail!("{} has no way to fire", f.action.as_str()),
    }
}

/// The runs `pod` owns as the fault hits (none without a target pod).
async fn owned_runs(shared: &Shared, pod: Option<&str>) -> Vec<String> {
    let Some(p) = pod else {
        return Vec::new();
    };
    let Some(store) = &shared.store else {
        return super::target::owned(shared, p);
    };
    let filter = RunFilter {
        state: Some(crate::engine::run::RunState::Running),
        owner_pod: Some(p.to_owned()),
        ..Default::default()
    };
    let until = Instant::now() + Duration::from_secs(5);
    shared
        .observe("listing the target's runs", until, || {
            store.list_runs(&filter)
        })
        .await
        .map(|rs| rs.into_iter().map(|r| r.id).collect())
        .unwrap_or_default()
}

/// How long a fault holds (a pause, a partition, a freeze...): 1 s unless
/// the scenario says.
fn hold(f: &PlannedFault) -> Duration {
    Duration::from_millis(f.duration_ms.unwrap_or(1000))
}

/// SIGKILL or SIGTERM, then a restart with the same id if the fault says.
async fn kill(shared: &Shared, f: &PlannedFault, p: &str) -> Result<()> {
    {
        let mut c = shared.cluster.lock().await;
        if f.action == Action::Kill {
            c.kill(p).await?;
        } else {
            let took = c.terminate(p, Duration::from_secs(15)).await?;
            shared.history.record(
                "exited",
                json!({ "pod": p, "graceful_ms": took.map(|d| d.as_millis() as u64) }),
            );
        }
    }
    *lock(&shared.last_killed) = Some(p.to_owned());
    shared.refresh_live().await;
    if let Some(after) = f.restart_after_ms {
        tokio::time::sleep(Duration::from_millis(after)).await;
        shared.cluster.lock().await.start_pod(p, &[]).await?;
        shared
            .history
            .record("heal", json!({ "action": "restart", "pod": p }));
        shared.refresh_live().await;
    }
    Ok(())
}

/// SIGSTOP (pause) or a cut from the network (partition) for the fault's
/// duration, then resume or reconnect.
async fn cut_off(shared: &Shared, f: &PlannedFault, p: &str) -> Result<()> {
    let partition = f.action == Action::Partition;
    // Opened before the pause, so that its own opening waits on nothing.
    let probe = match &shared.sqlite_db {
        Some(db) if !partition => crate::engine::store::sqlite::WriteLockProbe::open(db)
            .await
            .map_err(|e| {
                shared.note(format!(
                    "fault {}: cannot watch the store's write lock: {e}",
                    f.index
                ))
            })
            .ok(),
        _ => None,
    };
    {
        let mut c = shared.cluster.lock().await;
        if partition {
            c.partition(p).await?;
        } else {
            c.pause(p).await?;
        }
    }
    let paused = Instant::now();
    shared.refresh_live().await;
    if let Some(probe) = probe {
        froze_the_store(shared, f, p, probe).await;
    }
    tokio::time::sleep(hold(f).saturating_sub(paused.elapsed())).await;
    {
        let mut c = shared.cluster.lock().await;
        if partition {
            c.heal_partition(p).await?;
        } else {
            c.resume(p).await?;
        }
    }
    let action = if partition { "reconnect" } else { "resume" };
    shared
        .history
        .record("heal", json!({ "action": action, "pod": p }));
    shared.refresh_live().await;
    Ok(())
}

/// Whether pod `p`, just SIGSTOPped, froze SQLite with it: it holds the
/// database's write lock, so no pod can write (renew its lease, record a
/// death) until it wakes. The runner's own tries tell, not the engine's
/// records; what it saw is recorded (`store_frozen`), and the checkers take
/// the pause as a store freeze: nobody could find the paused pod dead, and
/// a lease that lapsed meanwhile says nothing of its holder.
async fn froze_the_store(
    shared: &Shared,
    f: &PlannedFault,
    p: &str,
    probe: crate::engine::store::sqlite::WriteLockProbe,
) {
    // Half the pause, at most a second: a live writer's transactions take
    // milliseconds, so a lock held that long is the paused pod's.
    let window = (hold(f) / 2).min(Duration::from_secs(1));
    match probe.held_throughout(window).await {
        Ok(true) => {
            shared.say(&format!(
                "fault {}: {p} was paused holding SQLite's write lock: the store is frozen with it",
                f.index
            ));
            shared.history.record(
                "store_frozen",
                json!({ "index": f.index, "pod": p, "window_ms": window.as_millis() as u64 }),
            );
        }
        Ok(false) => {}
        Err(e) => shared.note(format!(
            "fault {}: cannot tell whether {p} froze the store: {e}",
            f.index
        )),
    }
}

async fn restart(shared: &Shared, p: &str) -> Result<()> {
    shared.cluster.lock().await.start_pod(p, &[]).await?;
    shared.refresh_live().await;
    Ok(())
}

/// Set a cluster switch in the store.
async fn switch(shared: &Shared, f: &PlannedFault) -> Result<()> {
    if let Some((name, value)) = &f.switch {
        let store = shared
            .store
            .as_ref()
            .context("a switch is a Vigil setting: no target has one")?;
        crate::engine::switches::set(
            store.as_ref(),
            name,
            *value,
            "chaos",
            &format!("scenario fault {}", f.index),
        )
        .await?;
        shared
            .history
            .record("switch", json!({ "switch": name, "enabled": value }));
    }
    Ok(())
}

/// Make the target pod stop heartbeating its run (its chaos hook).
async fn stall(shared: &Shared, p: &str, run_id: Option<String>) -> Result<()> {
    let url = shared.pod_url(p, "stall").await?;
    let id = run_id.context("stall needs its run")?;
    let r = shared
        .http
        .post(format!("{url}v1/chaos/runs/{id}/stall"))
        .send()
        .await?;
    shared.history.record(
        "stalled",
        json!({ "run": id, "pod": p, "status": r.status().as_u16() }),
    );
    Ok(())
}

/// Stop the throwaway PostgreSQL server for the fault's duration.
async fn store_outage(shared: &Shared, f: &PlannedFault) -> Result<()> {
    let pg = shared
        .pg
        .as_ref()
        .context("store_outage needs a throwaway PostgreSQL server")?;
    pg.lock().await.stop()?;
    tokio::time::sleep(hold(f)).await;
    pg.lock().await.start_again()?;
    shared
        .history
        .record("heal", json!({ "action": "store_start" }));
    Ok(())
}

/// Fill the store's disk for the fault's duration, then empty it. A
/// PostgreSQL server that PANICked on a WAL write it could not make and
/// could not get through its crash restart on a full disk is started
/// again once there is room, as an operator would. (On the Docker driver
/// the disk holds the chaos database alone, never the WAL: no PANIC; a
/// container that stopped anyway took its tmpfs with it, and draining
/// says so.)
async fn disk_full(shared: &Shared, f: &PlannedFault) -> Result<()> {
    let disk = shared
        .disk
        .as_ref()
        .context("disk_full needs the store's files on a disk of the runner's")?;
    let filled = disk.fill().await?;
    shared.history.record("disk", json!({ "filled": filled }));
    if disk.is_wal()
        && let Some(pg) = &shared.pg
    {
        // A full WAL volume hurts once the server needs a new segment: the
        // current one was made whole when it was opened. Ask for the next
        // one now (a busy server would get there by itself), which it
        // cannot make: the PANIC and the crash restart of NixOS/infra#534.
        let admin = pg.lock().await.admin_url();
        let switched = switch_wal(&admin).await;
        shared
            .history
            .record("wal_switch", json!({ "answer": switched }));
    }
    tokio::time::sleep(hold(f)).await;
    disk.drain().await?;
    let mut restarted = false;
    if let Some(pg) = &shared.pg {
        let mut pg = pg.lock().await;
        if !pg.is_running() {
            pg.start_again()?;
            restarted = true;
        }
    }
    shared.history.record(
        "heal",
        json!({ "action": "disk_drained", "server_restarted": restarted, "usage": disk.usage().await? }),
    );
    Ok(())
}

/// `pg_switch_wal()` twice on the server at `admin` (past a segment made
/// ahead of time), as the server answered: the new segment's LSN, or the
/// error (a PANIC ends the session).
async fn switch_wal(admin: &str) -> String {
    use sqlx::Connection as _;
    let mut conn = match sqlx::PgConnection::connect(admin).await {
        Ok(c) => c,
        Err(e) => return format!("no session: {e}"),
    };
    let mut last = String::new();
    for _ in 0..2 {
        match sqlx::query_scalar::<_, String>("SELECT pg_switch_wal()::text")
            .fetch_one(&mut conn)
            .await
        {
            Ok(lsn) => last = lsn,
            Err(e) => return format!("error: {e}"),
        }
    }
    last
}

/// The FUSE layer over the store's disk, for the faults that need it.
fn fuse_of(shared: &Shared) -> Result<&crate::chaos::fuse::FuseDisk> {
    shared
        .disk
        .as_deref()
        .and_then(crate::chaos::disk::Disk::fuse)
        .context("this fault needs the store's files behind the runner's FUSE layer")
}

/// Every write, fsync and fdatasync on the store's disk waits `delay_ms`
/// for the fault's duration.
async fn slow_disk(shared: &Shared, f: &PlannedFault) -> Result<()> {
    let fuse = fuse_of(shared)?;
    let delay = Duration::from_millis(f.delay_ms.unwrap_or(0));
    fuse.set_delay(delay);
    tokio::time::sleep(hold(f)).await;
    fuse.set_delay(Duration::ZERO);
    shared.history.record(
        "heal",
        json!({ "action": "disk_fast_again", "stats": fuse.stats() }),
    );
    Ok(())
}

/// A power cut: every holder of the store's files is killed (the pods on
/// SQLite, the server on PostgreSQL), what was written and never fsynced
/// is lost, and the holders start again.
async fn lose_unsynced(shared: &Shared) -> Result<()> {
    let fuse = fuse_of(shared)?;
    let mut killed = Vec::new();
    if let Some(pg) = &shared.pg {
        pg.lock().await.stop()?;
    } else {
        let mut c = shared.cluster.lock().await;
        let live: Vec<String> = c.live_urls().into_iter().map(|(id, _)| id).collect();
        for id in live {
            c.kill(&id).await?;
            killed.push(id);
        }
    }
    shared.refresh_live().await;
    let lost = fuse.lose_unsynced();
    shared.history.record(
        "power_cut",
        json!({ "killed": killed, "server": shared.pg.is_some(), "lost": lost }),
    );
    if let Some(pg) = &shared.pg {
        pg.lock().await.start_again()?;
    }
    {
        let mut c = shared.cluster.lock().await;
        for id in &killed {
            c.start_pod(id, &[]).await?;
        }
    }
    shared.refresh_live().await;
    shared.history.record(
        "heal",
        json!({ "action": "power_restored", "restarted": killed }),
    );
    Ok(())
}

/// Freeze the PostgreSQL server (its processes, or its container) for the
/// fault's duration.
async fn store_freeze(shared: &Shared, f: &PlannedFault) -> Result<()> {
    let ms = hold(f);
    if let Some(pg) = &shared.pg {
        let frozen = pg.lock().await.freeze()?;
        shared
            .history
            .record("frozen", json!({ "processes": frozen }));
        tokio::time::sleep(ms).await;
        pg.lock().await.thaw()?;
    } else if let Some((docker, name)) = &shared.pg_container {
        docker
            .pause_container(name)
            .await
            .with_context(|| format!("pausing container {name}"))?;
        shared
            .history
            .record("frozen", json!({ "container": name }));
        tokio::time::sleep(ms).await;
        docker
            .unpause_container(name)
            .await
            .with_context(|| format!("unpausing container {name}"))?;
    } else {
        bail!("store_freeze needs a PostgreSQL server the runner started");
    }
    shared
        .history
        .record("heal", json!({ "action": "store_thaw" }));
    Ok(())
}

/// Ask pod `p`'s chaos hook at `path` to hold a lock for `held`; an
/// answer other than success names the pod, `what` it did not do, and why.
async fn hold_through_hook(
    shared: &Shared,
    p: &str,
    action: &str,
    path: &str,
    held: Duration,
    what: &str,
) -> Result<()> {
    let url = shared.pod_url(p, action).await?;
    let r = shared
        .http
        .post(format!("{url}{path}"))
        .json(&json!({ "hold_ms": held.as_millis() as u64 }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "{p} did not {what}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Hold the row of the fault's run locked for its duration: from a session
/// of the runner's own (no target pod) or of the target pod's.
async fn row_lock(
    shared: &Shared,
    f: &PlannedFault,
    p: &str,
    run_id: Option<String>,
) -> Result<()> {
    let id = run_id.context("row_lock needs its run")?;
    let held = hold(f);
    let by = if p.is_empty() {
        // A session of the runner's own: someone else's transaction.
        crate::engine::store::postgres::hold_run_row(&shared.store_url, &id, held, false)
            .await
            .with_context(|| format!("locking the row of run {id}"))?;
        "runner".to_owned()
    } else {
        // A session of the target pod's (its chaos hook).
        let path = format!("v1/chaos/runs/{id}/lock");
        let what = format!("lock run {id}'s row");
        hold_through_hook(shared, p, "row_lock", &path, held, &what).await?;
        p.to_owned()
    };
    shared.history.record(
        "row_locked",
        json!({ "run": id, "by": by, "hold_ms": held.as_millis() as u64 }),
    );
    tokio::time::sleep(held).await;
    shared
        .history
        .record("heal", json!({ "action": "row_unlock", "run": id }));
    Ok(())
}

/// Hold SQLite's write lock for the fault's duration: from a connection
/// of the runner's own (no target pod) or of the target pod's.
async fn write_lock(shared: &Shared, f: &PlannedFault, p: &str) -> Result<()> {
    let held = hold(f);
    let by = if p.is_empty() {
        let db = shared
            .sqlite_db
            .as_deref()
            .context("write_lock needs Vigil's SQLite store")?;
        crate::engine::store::sqlite::hold_write_lock(db, held)
            .await
            .with_context(|| format!("taking the write lock of {}", db.display()))?;
        "runner".to_owned()
    } else {
        let what = "take the write lock";
        hold_through_hook(shared, p, "write_lock", "v1/chaos/write-lock", held, what).await?;
        p.to_owned()
    };
    shared.history.record(
        "write_locked",
        json!({ "by": by, "hold_ms": held.as_millis() as u64 }),
    );
    tokio::time::sleep(held).await;
    shared
        .history
        .record("heal", json!({ "action": "write_unlock" }));
    Ok(())
}

/// Skew the target pod's clock, and set it back after the fault's duration
/// if it has one.
async fn clock_skew(shared: &Shared, f: &PlannedFault, p: &str) -> Result<()> {
    let url = shared.pod_url(p, "clock_skew").await?;
    let offset = f.offset_ms.unwrap_or(0);
    let skew = |ms: i64| {
        shared
            .http
            .post(format!("{url}v1/chaos/clock"))
            .json(&json!({ "offset_ms": ms }))
            .send()
    };
    let r = skew(offset).await?;
    if !r.status().is_success() {
        bail!("{p} did not skew its clock: {}", r.status());
    }
    shared
        .history
        .record("clock_skewed", json!({ "pod": p, "offset_ms": offset }));
    if let Some(ms) = f.duration_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        skew(0).await?;
        shared
            .history
            .record("heal", json!({ "action": "clock_unskew", "pod": p }));
    }
    Ok(())
}

/// Send a completion at epoch 1 for the fault's run (by then lost or
/// taken over) and record the answer.
async fn late_complete(shared: &Shared, run_id: Option<String>) -> Result<()> {
    let id = run_id.context("late_complete needs its run")?;
    let (_, url) = shared
        .live()
        .into_iter()
        .next()
        .context("no live pod to send the late completion to")?;
    let c = PodClient::new(&url)?;
    let ev = crate::pod::wire::RunEvent::Complete { epoch: 1 };
    let res = c.event(&id, &ev).await;
    let answer = match &res {
        Ok(()) => "accepted".to_owned(),
        Err(e) => e
            .already_terminal()
            .map_or_else(|| e.to_string(), |s| format!("409 already_terminal ({s})")),
    };
    shared.history.record(
        "late_complete",
        json!({ "run_id": id, "accepted": res.is_ok(), "answer": answer }),
    );
    Ok(())
}

/// Resume what is paused, reconnect what is cut off, bring back a cluster
/// with no live pod.
pub(super) async fn heal(shared: &Shared) -> Result<()> {
    if let Some(links) = &shared.links {
        links.heal();
    }
    if let Some(links) = &shared.client_links {
        links.heal();
    }
    let mut c = shared.cluster.lock().await;
    for (state, action) in [
        (PodState::Paused, "resume"),
        (PodState::Partitioned, "reconnect"),
    ] {
        let stuck: Vec<String> = c
            .pods()
            .filter(|p| p.state == state)
            .map(|p| p.id.clone())
            .collect();
        for p in stuck {
            if state == PodState::Paused {
                c.resume(&p).await?;
            } else {
                c.heal_partition(&p).await?;
            }
            shared
                .history
                .record("heal", json!({ "action": action, "pod": p }));
        }
    }
    if c.live_urls().is_empty() {
        let exited: Vec<String> = c.pods().map(|p| p.id.clone()).collect();
        for p in exited {
            c.start_pod(&p, &[]).await?;
            shared
                .history
                .record("heal", json!({ "action": "restart", "pod": p }));
        }
    }
    Ok(())
}

/// A link fault on `pod`'s store link, or on every pod's without a target.
async fn link(shared: &Shared, f: &PlannedFault, pod: Option<&str>) -> Result<()> {
    let Some(links) = &shared.links else {
        bail!("link faults need the pods' store links behind the runner's proxy (PostgreSQL)");
    };
    let pods: Vec<String> = match pod {
        Some(p) => vec![p.to_owned()],
        None => shared.pod_ids.clone(),
    };
    // Packets are dropped in a pod's own network namespace when it has one
    // (a container: through its init process). A container not running at
    // the fault has none: its rule goes on the runner's loopback, where
    // none of its packets pass.
    let mut netns = BTreeMap::new();
    if f.action.is_packet_level() {
        let mut c = shared.cluster.lock().await;
        for p in &pods {
            if let Some(pid) = c.netns_pid(p).await? {
                netns.insert(p.clone(), pid);
            }
        }
    }
    // While a fault is on one pod's link, watch its readiness as a load
    // balancer would: every 100 ms, a second to answer.
    let mut probe = None;
    if let Some(p) = pod
        && let Some(url) = shared.cluster_url(p).await
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(watch_ready(
            shared.http.clone(),
            shared.history.clone(),
            p.to_owned(),
            url,
            stop.clone(),
        ));
        probe = Some((stop, task));
    }
    let applied = links.apply(f, &pods, &netns).await;
    if let Some((stop, task)) = probe {
        stop.cancel();
        let _ = task.await;
    }
    applied?;
    shared.history.record(
        "heal",
        json!({ "action": format!("{} over", f.action.as_str()), "pods": pods }),
    );
    Ok(())
}

/// Probe `pod`'s `/readyz` every 100 ms (a second to answer) until `stop`,
/// recording each change of answer: `ready` true, false (any other status)
/// or null (no answer in time).
async fn watch_ready(
    http: reqwest::Client,
    history: Arc<crate::chaos::history::History>,
    pod: String,
    base: String,
    stop: tokio_util::sync::CancellationToken,
) {
    let url = format!("{}/readyz", base.trim_end_matches('/'));
    let mut last: Option<Option<bool>> = None;
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = http.get(&url).timeout(Duration::from_secs(1)).send() => a,
        };
        let ready = match answer {
            Ok(r) => Some(r.status().is_success()),
            Err(_) => None,
        };
        if last != Some(ready) {
            history.record("ready", json!({ "pod": pod, "ready": ready }));
            last = Some(ready);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// A client-link fault: run `run`'s link to `pod` (every pod without a
/// target) hurt for its duration, while the runner samples the hit pods'
/// resident memory.
async fn client_link(
    shared: &Shared,
    scn: &Scenario,
    f: &PlannedFault,
    pod: Option<&str>,
) -> Result<()> {
    let Some(links) = &shared.client_links else {
        bail!("no client links were made for this scenario's runs");
    };
    let run = scn
        .fault_run(f.index)
        .context("a client-link fault names its run")?;
    let pods: Vec<String> = match pod {
        Some(p) => vec![p.to_owned()],
        None => shared.pod_ids.clone(),
    };
    super::memory::sampled(shared, f, &pods, links.apply(f, &run, pod)).await?;
    shared.history.record(
        "heal",
        json!({ "action": format!("{} over", f.action.as_str()), "run": run, "pods": pods }),
    );
    Ok(())
}
