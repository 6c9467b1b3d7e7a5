//! Runs one scenario: store, cluster, workload, faults, quiet period,
//! evidence, checks.

use super::checks::{
    self, AttacherLog, CheckResult, Evidence, RawFacts, Status, StepFacts, StoreAccount,
};
use super::history::History;
use super::scenario::{
    Action, AttachKind, DriverKind, Plan, Scenario, StoreKind, Target, Trigger, pod_ids,
};
use crate::client::{PodClient, StreamEvent};
use crate::cluster::pgserver::PgServer;
use crate::cluster::{Cluster, ClusterSpec, PodState};
use crate::engine::store::{self, RunFilter, Store};
use crate::engine::workflow::WorkflowRegistry;
use anyhow::{Context, Result, bail};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the scenario's store lives.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// What the scenario file says (`sqlite`, or a throwaway PostgreSQL).
    Scenario,
    Sqlite,
    /// A throwaway PostgreSQL server started from the installed binaries.
    PgServer,
    /// A PostgreSQL server at this (admin) URL: a database of our own is
    /// created there and dropped afterwards.
    PgUrl(String),
}

#[derive(Debug, Clone)]
pub struct RunnerOpts {
    pub seed: u64,
    pub store: StoreChoice,
    pub results_dir: PathBuf,
    pub workflows: PathBuf,
    pub binary: Option<PathBuf>,
    /// Print progress lines while running.
    pub verbose: bool,
    /// Processes or containers, over what each scenario says.
    pub driver: Option<DriverKind>,
    /// Docker driver: this pod image (must exist) instead of one built
    /// from `binary` on demand.
    pub image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Unknown,
    NotApplicable,
}

#[derive(Debug)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub store: String,
    pub verdict: Verdict,
    pub checks: Vec<CheckResult>,
    pub notes: Vec<String>,
    pub dir: PathBuf,
    pub normalized: serde_json::Value,
    pub summary: String,
}

/// How long the runner waits after the cluster went quiet before its final
/// reads (late attachers, API answers, the store's account).
const SETTLE: Duration = Duration::from_secs(1);

struct Shared {
    history: Arc<History>,
    store: Arc<dyn Store>,
    /// The store's URL as the runner reaches it (row_lock's own session).
    store_url: String,
    cluster: tokio::sync::Mutex<Cluster>,
    live: Mutex<Vec<(String, String)>>,
    names: Mutex<BTreeMap<String, String>>,
    last_killed: Mutex<Option<String>>,
    fired: Mutex<Vec<usize>>,
    notes: Mutex<Vec<String>>,
    pg: Option<tokio::sync::Mutex<PgServer>>,
    /// The PostgreSQL container (Docker driver), for store_freeze.
    pg_container: Option<(bollard::Docker, String)>,
    http: reqwest::Client,
    verbose: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    async fn refresh_live(&self) {
        let urls = self.cluster.lock().await.live_urls();
        *lock(&self.live) = urls;
    }

    /// The API URL of the pod a fault targets (its chaos hooks).
    async fn pod_url(&self, pod: &str, action: &str) -> Result<String> {
        self.cluster
            .lock()
            .await
            .pod(pod)
            .map(|x| x.url.clone())
            .with_context(|| format!("{action} target {pod} vanished"))
    }

    fn live(&self) -> Vec<(String, String)> {
        lock(&self.live).clone()
    }

    fn run_id(&self, name: &str) -> Option<String> {
        lock(&self.names).get(name).cloned()
    }

    fn note(&self, n: String) {
        if self.verbose {
            eprintln!("  ! {n}");
        }
        self.history.record("note", json!({ "note": n }));
        lock(&self.notes).push(n);
    }

    /// The runner could not observe something it needed: the verdict can
    /// only be unknown.
    fn blind(&self, reason: String) {
        if self.verbose {
            eprintln!("  ! cannot observe: {reason}");
        }
        self.history.record("blind", json!({ "reason": reason }));
    }

    /// A store read that survives a frozen or restarting database: each try
    /// is bounded, failures back off, and at `until` the runner gives up and
    /// says it could not see (None).
    async fn observe<T, F, Fut>(&self, what: &str, until: Instant, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::engine::store::StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            let last = match tokio::time::timeout(Duration::from_secs(3), f()).await {
                Ok(Ok(v)) => return Some(v),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 3 s".to_owned(),
            };
            if Instant::now() + wait > until {
                self.blind(format!("{what}: {last}"));
                return None;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!(
                "  {:>6.1}s  {msg}",
                self.history.elapsed_ms() as f64 / 1000.0
            );
        }
    }
}

/// Follow a run's stream to its end through any live pod, resuming from
/// the last event id when a pod dies under it. Every event is recorded in
/// the history as it arrives (`stream`), on the runner's clock.
async fn follow(
    shared: Arc<Shared>,
    name: String,
    run_id: String,
    kind: AttachKind,
    bound: Duration,
) -> AttacherLog {
    let mut log = AttacherLog {
        run_name: name.clone(),
        run_id: run_id.clone(),
        attacher: kind,
        events: Vec::new(),
        error: None,
    };
    shared.history.record(
        "attached",
        json!({ "run": name, "run_id": run_id, "attacher": kind }),
    );
    let fail = |log: &mut AttacherLog, e: String| {
        shared.history.record(
            "attach_error",
            json!({ "run_id": run_id, "attacher": kind, "error": e }),
        );
        log.error = Some(e);
    };
    let deadline = Instant::now() + bound;
    let mut last_id: Option<String> = None;
    let mut turn = 0usize;
    loop {
        if Instant::now() > deadline {
            fail(&mut log, format!("no end event within {bound:?}"));
            return log;
        }
        let live = shared.live();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let (pod, url) = live[turn % live.len()].clone();
        turn += 1;
        let mut req = shared.http.get(format!("{url}v1/runs/{run_id}/stream"));
        if let Some(l) = &last_id {
            req = req.header("Last-Event-ID", l);
        }
        let resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        shared.history.record(
            "attach",
            json!({ "run_id": run_id, "attacher": kind, "pod": pod, "after": last_id }),
        );
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                events.next(),
            )
            .await;
            let ev = match next {
                Ok(Some(Ok(ev))) => ev,
                Ok(Some(Err(_)) | None) => break,
                Err(_) => {
                    fail(&mut log, format!("no end event within {bound:?}"));
                    return log;
                }
            };
            // A body that does not parse is skipped like an unknown event:
            // the checks judge what the client could read.
            let Ok(Some(parsed)) = crate::client::decode_stream_event(&ev.event, &ev.id, &ev.data)
            else {
                continue;
            };
            if let StreamEvent::Chunk { id, .. } = &parsed {
                last_id = Some(id.clone());
            }
            shared.history.record(
                "stream",
                json!({ "run_id": run_id, "attacher": kind, "event": parsed }),
            );
            let end = matches!(parsed, StreamEvent::End { .. });
            log.events.push((shared.history.elapsed_ms(), parsed));
            if end {
                return log;
            }
        }
    }
}

/// Scrape every live pod's `vigil_*` counters into the history.
async fn scrape_metrics(shared: &Shared, when: &str) {
    for (pod, url) in shared.live() {
        let Ok(resp) = shared
            .http
            .get(format!("{url}metrics"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        let samples: BTreeMap<String, f64> = text
            .lines()
            .filter(|l| l.starts_with("vigil_") && !l.contains("_bucket"))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                let v: f64 = v.parse().ok()?;
                (v != 0.0).then(|| (k.to_owned(), v))
            })
            .collect();
        shared.history.record(
            "metrics",
            json!({ "when": when, "pod": pod, "samples": samples }),
        );
    }
}

async fn resolve_target(shared: &Shared, target: &Target) -> Option<String> {
    match target {
        Target::Pod(p) => Some(p.clone()),
        Target::OwnerOf(run) => {
            let id = shared.run_id(run)?;
            let until = Instant::now() + Duration::from_secs(10);
            shared
                .observe("reading a fault target's owner", until, || {
                    shared.store.get_run(&id)
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
            let due = Duration::from_millis(*ms)
                .saturating_sub(Duration::from_millis(shared.history.elapsed_ms()));
            tokio::time::sleep(due).await;
            true
        }
        Trigger::AfterChunk { run, chunks } => loop {
            if Instant::now() > bound {
                return false;
            }
            if let Some(id) = shared.run_id(run) {
                let n = tokio::time::timeout(Duration::from_secs(2), shared.store.chunks(&id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or(0, |c| c.len());
                if n >= usize::try_from(*chunks).unwrap_or(usize::MAX) {
                    return true;
                }
                let done = tokio::time::timeout(Duration::from_secs(2), shared.store.get_run(&id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .is_some_and(|r| r.state.is_terminal());
                if done {
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
                && tokio::time::timeout(Duration::from_secs(2), shared.store.get_run(&id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
                    .is_some_and(|r| r.state.is_terminal())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        },
    }
}

async fn fire(
    shared: Arc<Shared>,
    scn: Arc<Scenario>,
    f: super::scenario::PlannedFault,
) -> Result<()> {
    let pod = resolve_target(&shared, &f.target).await;
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
    let owned: Vec<String> = match &pod {
        Some(p) => {
            let filter = RunFilter {
                state: Some(crate::engine::run::RunState::Running),
                owner_pod: Some(p.clone()),
                ..Default::default()
            };
            let until = Instant::now() + Duration::from_secs(5);
            shared
                .observe("listing the target's runs", until, || {
                    shared.store.list_runs(&filter)
                })
                .await
                .map(|rs| rs.into_iter().map(|r| r.id).collect())
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    shared.say(&format!(
        "fault {}: {} {}",
        f.index,
        f.action.as_str(),
        pod.as_deref().unwrap_or("")
    ));
    shared.history.record(
        "fault",
        json!({ "index": f.index, "action": f.action, "pod": pod, "run_id": run_id, "owned": owned, "duration_ms": f.duration_ms }),
    );
    lock(&shared.fired).push(f.index);
    let p = pod.clone().unwrap_or_default();
    match f.action {
        Action::Kill | Action::Term => {
            {
                let mut c = shared.cluster.lock().await;
                if f.action == Action::Kill {
                    c.kill(&p).await?;
                } else {
                    let took = c.terminate(&p, Duration::from_secs(15)).await?;
                    shared.history.record(
                        "exited",
                        json!({ "pod": p, "graceful_ms": took.map(|d| d.as_millis() as u64) }),
                    );
                }
            }
            *lock(&shared.last_killed) = Some(p.clone());
            shared.refresh_live().await;
            if let Some(after) = f.restart_after_ms {
                tokio::time::sleep(Duration::from_millis(after)).await;
                shared.cluster.lock().await.start_pod(&p, &[]).await?;
                shared
                    .history
                    .record("heal", json!({ "action": "restart", "pod": p }));
                shared.refresh_live().await;
            }
        }
        Action::Pause => {
            shared.cluster.lock().await.pause(&p).await?;
            shared.refresh_live().await;
            tokio::time::sleep(Duration::from_millis(f.duration_ms.unwrap_or(1000))).await;
            shared.cluster.lock().await.resume(&p).await?;
            shared
                .history
                .record("heal", json!({ "action": "resume", "pod": p }));
            shared.refresh_live().await;
        }
        Action::Restart => {
            shared.cluster.lock().await.start_pod(&p, &[]).await?;
            shared.refresh_live().await;
        }
        Action::Partition => {
            shared.cluster.lock().await.partition(&p).await?;
            shared.refresh_live().await;
            tokio::time::sleep(Duration::from_millis(f.duration_ms.unwrap_or(1000))).await;
            shared.cluster.lock().await.heal_partition(&p).await?;
            shared
                .history
                .record("heal", json!({ "action": "reconnect", "pod": p }));
            shared.refresh_live().await;
        }
        Action::Switch => {
            if let Some((name, value)) = &f.switch {
                crate::engine::switches::set(
                    shared.store.as_ref(),
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
        }
        Action::Stall => {
            let url = shared.pod_url(&p, "stall").await?;
            let id = run_id.clone().context("stall needs its run")?;
            let r = shared
                .http
                .post(format!("{url}v1/chaos/runs/{id}/stall"))
                .send()
                .await?;
            shared.history.record(
                "stalled",
                json!({ "run": id, "pod": p, "status": r.status().as_u16() }),
            );
        }
        Action::StoreOutage => {
            let pg = shared
                .pg
                .as_ref()
                .context("store_outage needs a throwaway PostgreSQL server")?;
            pg.lock().await.stop()?;
            tokio::time::sleep(Duration::from_millis(f.duration_ms.unwrap_or(1000))).await;
            pg.lock().await.start_again()?;
            shared
                .history
                .record("heal", json!({ "action": "store_start" }));
        }
        Action::StoreFreeze => {
            let ms = Duration::from_millis(f.duration_ms.unwrap_or(1000));
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
        }
        Action::RowLock => {
            let id = run_id.clone().context("row_lock needs its run")?;
            let hold = Duration::from_millis(f.duration_ms.unwrap_or(1000));
            let by = if p.is_empty() {
                // A session of the runner's own: someone else's transaction.
                crate::engine::store::postgres::hold_run_row(&shared.store_url, &id, hold, false)
                    .await
                    .with_context(|| format!("locking the row of run {id}"))?;
                "runner".to_owned()
            } else {
                // A session of the target pod's (its chaos hook).
                let url = shared.pod_url(&p, "row_lock").await?;
                let r = shared
                    .http
                    .post(format!("{url}v1/chaos/runs/{id}/lock"))
                    .json(&json!({ "hold_ms": hold.as_millis() as u64 }))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!(
                        "{p} did not lock run {id}'s row: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                p.clone()
            };
            shared.history.record(
                "row_locked",
                json!({ "run": id, "by": by, "hold_ms": hold.as_millis() as u64 }),
            );
            tokio::time::sleep(hold).await;
            shared
                .history
                .record("heal", json!({ "action": "row_unlock", "run": id }));
        }
        Action::ClockSkew => {
            let url = shared.pod_url(&p, "clock_skew").await?;
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
        }
        Action::LateComplete => {
            let id = run_id.clone().context("late_complete needs its run")?;
            let (_, url) = shared
                .live()
                .into_iter()
                .next()
                .context("no live pod to send the late completion to")?;
            let c = PodClient::new(&url)?;
            let ev = crate::pod::api::RunEvent::Complete { epoch: 1 };
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
        }
    }
    Ok(())
}

fn pg_on_loopback(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]")
}

fn pg_database_url(admin: &str, db: &str) -> Result<String> {
    let mut u = url::Url::parse(admin).with_context(|| format!("bad PostgreSQL URL {admin:?}"))?;
    u.set_path(db);
    Ok(u.to_string())
}

/// Create a fresh database `{prefix}_{unique}` on the server `admin` names
/// (its own database is only used to connect). Returns the new database's
/// URL and its name, for [`drop_database`] after.
pub async fn create_scratch_database(admin: &str, prefix: &str) -> Result<(String, String)> {
    let safe = crate::engine::store::redact_url(admin);
    let db = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(admin)
        .await
        .with_context(|| format!("connecting to {safe}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&pool)
        .await
        .with_context(|| format!("creating database {db} on {safe}"))?;
    pool.close().await;
    Ok((pg_database_url(admin, &db)?, db))
}

/// Drop a database made by [`create_scratch_database`], sessions and all;
/// best effort (a server already gone has nothing left to drop).
pub async fn drop_database(admin: &str, db: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&pool)
        .await;
    }
}

/// Run `scn` once. Never leaves pods or servers behind.
pub async fn run(scn: Scenario, opts: &RunnerOpts) -> Result<Outcome> {
    let scn = Arc::new(scn);
    let workflows = WorkflowRegistry::load_dir(&opts.workflows)
        .with_context(|| format!("loading workflows from {}", opts.workflows.display()))?;
    let plan: Plan = scn.plan(opts.seed);
    let stamp = format!("{}-{}", crate::engine::clock::wall_ms(), opts.seed);
    let dir = opts.results_dir.join(&scn.name).join(stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let kind = match &opts.store {
        StoreChoice::Scenario => scn.store,
        StoreChoice::Sqlite => StoreKind::Sqlite,
        StoreChoice::PgServer | StoreChoice::PgUrl(_) => StoreKind::Postgres,
    };
    let driver = opts.driver.unwrap_or(scn.driver);
    if driver == DriverKind::Process && plan.faults.iter().any(|f| f.action == Action::Partition) {
        bail!(
            "{}: a partition needs the docker driver (--driver docker)",
            scn.name
        );
    }
    if driver == DriverKind::Docker && kind == StoreKind::Sqlite {
        bail!(
            "{}: the docker driver needs PostgreSQL (pods in containers share no SQLite file): \
             store = \"postgres\" in [cluster], or --store postgres",
            scn.name
        );
    }
    let outage = plan.faults.iter().any(|f| f.action == Action::StoreOutage);
    let freeze = plan.faults.iter().any(|f| f.action == Action::StoreFreeze);
    let why_not = if outage
        && (kind != StoreKind::Postgres
            || matches!(opts.store, StoreChoice::PgUrl(_))
            || driver == DriverKind::Docker)
    {
        Some(
            "store_outage needs a throwaway PostgreSQL server process: --store postgres --driver process",
        )
    } else if freeze && (kind != StoreKind::Postgres || matches!(opts.store, StoreChoice::PgUrl(_)))
    {
        Some("store_freeze needs a PostgreSQL server the runner starts: --store postgres")
    } else if kind != StoreKind::Postgres
        && plan
            .faults
            .iter()
            .any(|f| matches!(f.action, Action::RowLock | Action::ClockSkew))
    {
        Some("row_lock and clock_skew are PostgreSQL faults: --store postgres")
    } else {
        None
    };
    if let Some(why) = why_not {
        let summary = format!("{}: not applicable on this store ({why})\n", scn.name);
        let normalized = json!({ "scenario": scn.name, "verdict": Verdict::NotApplicable });
        let report = json!({ "normalized": normalized, "checks": [], "notes": [summary.trim()] });
        std::fs::write(dir.join("summary.txt"), &summary)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        return Ok(Outcome {
            scenario: scn.name.clone(),
            seed: opts.seed,
            store: format!("{kind:?}").to_lowercase(),
            verdict: Verdict::NotApplicable,
            checks: Vec::new(),
            notes: vec![summary.clone()],
            dir,
            normalized,
            summary,
        });
    }
    // Docker: the scenario's network and the pod image first; PostgreSQL
    // then runs as a container on that network (docs/docker.md says why).
    let docker_env = match driver {
        DriverKind::Process => None,
        DriverKind::Docker => {
            let binary = match &opts.binary {
                Some(b) => b.clone(),
                None => std::env::current_exe().context("locating the vigil binary")?,
            };
            Some(
                crate::cluster::docker::env::DockerEnv::up(
                    &scn.name,
                    &binary,
                    opts.image.as_deref(),
                )
                .await?,
            )
        }
    };
    let mut pod_target = None;
    let mut pg_server = None;
    let mut drop_db: Option<(String, String)> = None;
    let target = match (&opts.store, kind) {
        (_, StoreKind::Sqlite) => dir.join("store.db").display().to_string(),
        (StoreChoice::PgUrl(admin), _) if docker_env.is_some() && pg_on_loopback(admin) => {
            bail!(
                "--store {}: pods in containers cannot reach a server on the host's loopback; \
                 use --store postgres (a PostgreSQL container on the scenario network)",
                crate::engine::store::redact_url(admin)
            );
        }
        (StoreChoice::Scenario | StoreChoice::PgServer, _) if docker_env.is_some() => {
            let env = docker_env.as_ref().context("docker environment")?;
            let pg = env.start_postgres().await?;
            let pool = sqlx::PgPool::connect(&pg.host_admin_url).await?;
            sqlx::query("CREATE DATABASE vigil_chaos")
                .execute(&pool)
                .await?;
            pool.close().await;
            pod_target = Some(pg_database_url(&pg.net_admin_url, "vigil_chaos")?);
            pg_database_url(&pg.host_admin_url, "vigil_chaos")?
        }
        (StoreChoice::PgUrl(admin), _) => {
            let (url, db) = create_scratch_database(admin, "vigil_chaos").await?;
            drop_db = Some((admin.clone(), db));
            url
        }
        _ => {
            let server = tokio::task::spawn_blocking(PgServer::start).await??;
            let url = server.admin_url();
            let pool = sqlx::PgPool::connect(&url).await?;
            sqlx::query("CREATE DATABASE vigil_chaos")
                .execute(&pool)
                .await?;
            pool.close().await;
            pg_server = Some(server);
            pg_database_url(&url, "vigil_chaos")?
        }
    };
    let store_label = match kind {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Postgres => "postgres",
    };
    let pods = docker_env.as_ref().map(|env| {
        (
            env.pods(),
            pod_target.clone().unwrap_or_else(|| target.clone()),
        )
    });
    let (witness_bind, pg_container) = match &docker_env {
        Some(env) => (
            env.gateway().await?,
            (kind == StoreKind::Postgres && !matches!(opts.store, StoreChoice::PgUrl(_)))
                .then(|| (env.docker.clone(), env.postgres_container())),
        ),
        None => (std::net::IpAddr::from([127, 0, 0, 1]), None),
    };
    let result = run_inner(
        Setup {
            scn: scn.clone(),
            plan: &plan,
            dir: &dir,
            target: &target,
            store_label,
            pg_server,
            pg_container,
            witness_bind,
            workflows,
            docker: pods,
        },
        opts,
    )
    .await;
    if let Some(env) = docker_env
        && let Err(e) = env.teardown().await
    {
        eprintln!("warning: {e} (run `vigil chaos clean`)");
    }
    if let Some((admin, db)) = drop_db {
        drop_database(&admin, &db).await;
    }
    result
}

struct Setup<'a> {
    scn: Arc<Scenario>,
    plan: &'a Plan,
    dir: &'a std::path::Path,
    target: &'a str,
    store_label: &'a str,
    pg_server: Option<PgServer>,
    pg_container: Option<(bollard::Docker, String)>,
    /// Where the witness listens (the pods must reach it there).
    witness_bind: std::net::IpAddr,
    workflows: WorkflowRegistry,
    docker: Option<(crate::cluster::docker::pods::DockerPods, String)>,
}

async fn run_inner(setup: Setup<'_>, opts: &RunnerOpts) -> Result<Outcome> {
    let Setup {
        scn,
        plan,
        dir,
        target,
        store_label,
        pg_server,
        pg_container,
        witness_bind,
        workflows,
        docker,
    } = setup;
    let store = store::open(target)
        .await
        .context("opening the scenario's store")?;
    for (name, value) in &scn.switches {
        crate::engine::switches::set(
            store.as_ref(),
            name,
            *value,
            "chaos",
            "scenario cluster setting",
        )
        .await?;
    }
    let history = Arc::new(History::new());
    let witness = super::witness::Witness::start((witness_bind, 0).into(), history.clone())
        .await
        .context("starting the witness")?;
    let pod_store = docker.as_ref().map_or(target, |(_, url)| url.as_str());
    let mut spec = ClusterSpec::new(
        pod_store.to_owned(),
        opts.workflows.clone(),
        dir.join("pods"),
    )?;
    if let Some(b) = &opts.binary {
        spec.binary = b.clone();
    }
    spec.lanes = scn.lanes.clone();
    spec.pod_args = ["--chaos-hooks".to_owned(), "--witness-url".to_owned()]
        .into_iter()
        .chain(std::iter::once(witness.url_for(&witness_bind.to_string())))
        .chain(scn.pod_args.iter().cloned())
        .collect();
    let liveness_timeout_ms = scn
        .pod_args
        .windows(2)
        .find(|w| w[0] == "--liveness-timeout-ms")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(2000);
    let mut cluster = match docker {
        None => Cluster::new(spec)?,
        Some((pods, _)) => {
            // Containers inherit nothing from the runner's environment.
            if let Ok(f) = std::env::var("VIGIL_FAULTS") {
                spec.env.push(("VIGIL_FAULTS".into(), f));
            }
            Cluster::docker(spec, pods)?
        }
    };
    let driver = cluster.driver();
    history.record(
        "start",
        json!({
            "scenario": scn.name,
            "seed": plan.seed,
            "pods": scn.pods,
            "store": store_label,
            "driver": driver,
            "liveness_timeout_ms": liveness_timeout_ms,
            "detection_bound_ms": scn.checks.detection_bound_ms,
            "quiet_timeout_ms": scn.checks.quiet_timeout_ms,
            "witness": witness.addr.to_string(),
            "workflows": std::path::absolute(&opts.workflows)
                .unwrap_or_else(|_| opts.workflows.clone()),
        }),
    );
    for id in pod_ids(scn.pods) {
        cluster.start_pod(&id, &[]).await?;
    }
    let shared = Arc::new(Shared {
        history,
        store: store.clone(),
        store_url: target.to_owned(),
        cluster: tokio::sync::Mutex::new(cluster),
        live: Mutex::default(),
        names: Mutex::default(),
        last_killed: Mutex::default(),
        fired: Mutex::default(),
        notes: Mutex::default(),
        pg: pg_server.map(tokio::sync::Mutex::new),
        pg_container,
        http: reqwest::Client::new(),
        verbose: opts.verbose,
    });
    shared.refresh_live().await;
    shared.say(&format!("{} pods ({driver}) up on {store_label}", scn.pods));
    scrape_metrics(&shared, "before").await;
    let result = drive(shared.clone(), scn.clone(), plan).await;
    shared
        .cluster
        .lock()
        .await
        .shutdown(Duration::from_secs(10))
        .await;
    drop(witness);
    result?;
    let history = shared.history.snapshot();
    let unfired: Vec<usize> = {
        let fired = lock(&shared.fired);
        plan.faults
            .iter()
            .map(|f| f.index)
            .filter(|i| !fired.contains(i))
            .collect()
    };
    let evidence = Evidence::from_history(&history).map_err(|e| anyhow::anyhow!(e))?;
    if evidence.submitted.is_empty() && evidence.blind.is_empty() {
        bail!("the scenario submitted no runs");
    }
    let checks = checks::run_all(&evidence, &workflows, &scn.checks.skip);
    let notes = lock(&shared.notes).clone();
    let verdict = verdict_of(&checks, &unfired, &evidence.blind);
    let report = super::report::Report {
        scenario_name: &scn.name,
        description: &scn.description,
        pods: scn.pods,
        plan,
        store: store_label,
        verdict,
        checks: &checks,
        evidence: &evidence,
        unfired: &unfired,
        history: &history,
        notes: &notes,
    };
    let summary = report.summary();
    let normalized = report.normalized();
    report.write(dir)?;
    save_inputs(dir, &scn)?;
    Ok(Outcome {
        scenario: scn.name.clone(),
        seed: plan.seed,
        store: store_label.to_owned(),
        verdict,
        checks,
        notes,
        dir: dir.to_owned(),
        normalized,
        summary,
    })
}

/// Fail if a check failed; unknown if a fault never fired or the runner
/// could not observe; pass otherwise.
pub fn verdict_of(checks: &[CheckResult], unfired: &[usize], blind: &[String]) -> Verdict {
    if checks.iter().any(|c| c.status == Status::Fail) {
        Verdict::Fail
    } else if !unfired.is_empty() || !blind.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Pass
    }
}

/// What `vigil chaos check` needs besides the history: the scenario file.
/// (The workflow definitions are not copied: they may hold secrets; the
/// history's `start` line names where they were read.)
fn save_inputs(dir: &std::path::Path, scn: &Scenario) -> Result<()> {
    std::fs::copy(&scn.file, dir.join("scenario.toml"))
        .with_context(|| format!("copying {} into the results", scn.file.display()))?;
    Ok(())
}

async fn drive(shared: Arc<Shared>, scn: Arc<Scenario>, plan: &Plan) -> Result<()> {
    let quiet = Duration::from_millis(scn.checks.quiet_timeout_ms);
    let bound = Instant::now() + quiet + Duration::from_secs(30);
    // Faults wait for their triggers from the start.
    let mut fault_tasks = Vec::new();
    for f in plan.faults.clone() {
        let (shared, scn) = (shared.clone(), scn.clone());
        fault_tasks.push(tokio::spawn(async move {
            if !wait_trigger(&shared, &f.trigger, bound).await {
                shared.note(format!(
                    "fault {} ({}): its trigger never happened",
                    f.index,
                    f.action.as_str()
                ));
                return;
            }
            if let Err(e) = fire(shared.clone(), scn, f.clone()).await {
                shared.note(format!(
                    "fault {} ({}) failed: {e:#}",
                    f.index,
                    f.action.as_str()
                ));
            }
        }));
    }
    // The workload.
    let mut early = Vec::new();
    let mut runs_sorted = plan.runs.clone();
    runs_sorted.sort_by_key(|r| r.submit_at_ms);
    for r in &runs_sorted {
        let due = Duration::from_millis(r.submit_at_ms)
            .saturating_sub(Duration::from_millis(shared.history.elapsed_ms()));
        tokio::time::sleep(due).await;
        let req = crate::pod::api::SubmitRequest {
            workflow: r.workflow.clone(),
            input: r.input.clone(),
            idempotency_key: Some(format!("{}-{}", r.name, plan.seed)),
        };
        // The planned pod first; if a fault took it down meanwhile, any live
        // pod (the idempotency key makes a resubmission the same run).
        // A store outage or freeze can make every pod answer 503 for a
        // while: keep trying for the quiet bound before giving up on it.
        let mut sub = None;
        let mut last_err = None;
        let give_up = Instant::now() + quiet;
        for attempt in 0.. {
            if attempt >= 10 && Instant::now() > give_up {
                break;
            }
            let live = shared.live();
            let url = live
                .iter()
                .find(|(id, _)| *id == r.pod)
                .or(live.get(attempt % live.len().max(1)))
                .map(|(_, u)| u.clone());
            let Some(url) = url else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            match PodClient::new(&url)?.submit(&req).await {
                Ok(s) => {
                    sub = Some(s);
                    break;
                }
                Err(e) => {
                    last_err = Some(e);
                    shared.refresh_live().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let sub = match (sub, last_err) {
            (Some(s), _) => s,
            (None, e) => {
                shared.blind(format!(
                    "submitting {}: {}",
                    r.name,
                    e.map_or_else(|| "no live pod".to_owned(), |e| e.to_string())
                ));
                continue;
            }
        };
        lock(&shared.names).insert(r.name.clone(), sub.run.id.clone());
        shared.history.record(
            "submit",
            json!({ "run": r.name, "run_id": sub.run.id, "workflow": r.workflow, "pod": r.pod }),
        );
        if r.attach.contains(&AttachKind::Early) {
            let (s, name, id) = (shared.clone(), r.name.clone(), sub.run.id.clone());
            early.push(tokio::spawn(follow(
                s,
                name,
                id,
                AttachKind::Early,
                quiet + Duration::from_secs(30),
            )));
        }
    }
    shared.say("workload submitted");
    for t in fault_tasks {
        let _ = t.await;
    }
    heal(&shared).await?;
    shared.refresh_live().await;
    shared.say("healed; waiting for the cluster to go quiet");
    let quiet_until = Instant::now() + quiet;
    let all_runs = RunFilter {
        limit: Some(100_000),
        ..Default::default()
    };
    loop {
        let Some(all) = shared
            .observe("listing runs while waiting for quiet", quiet_until, || {
                shared.store.list_runs(&all_runs)
            })
            .await
        else {
            break;
        };
        let in_flight = all.iter().filter(|r| !r.state.is_terminal()).count();
        if in_flight == 0 {
            break;
        }
        if Instant::now() > quiet_until {
            shared.note(format!(
                "{in_flight} runs still in flight after the {quiet:?} quiet bound"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle: a write that lands after the last run went terminal (a
    // second terminal write, a zombie's late chunk) gets time to show in
    // the final reads below.
    tokio::time::sleep(SETTLE).await;
    shared.say("quiet; attaching late clients");
    scrape_metrics(&shared, "after").await;
    let plan_runs = plan.runs.clone();
    for r in &plan_runs {
        if r.attach.contains(&AttachKind::Late)
            && let Some(id) = shared.run_id(&r.name)
        {
            follow(
                shared.clone(),
                r.name.clone(),
                id,
                AttachKind::Late,
                Duration::from_secs(10),
            )
            .await;
        }
    }
    for e in early {
        if tokio::time::timeout(Duration::from_secs(20), e)
            .await
            .is_err()
        {
            shared.note("an early attacher did not finish".into());
        }
    }
    // What the API says of every run the clients submitted.
    let names = lock(&shared.names).clone();
    for id in names.values() {
        api_state(&shared, id).await;
    }
    // The store's account, for cross-checks only.
    let until = Instant::now() + Duration::from_secs(30);
    record_store_accounts(&shared, until).await;
    Ok(())
}

/// Resume what is paused, reconnect what is cut off, bring back a cluster
/// with no live pod.
async fn heal(shared: &Shared) -> Result<()> {
    let mut c = shared.cluster.lock().await;
    let paused: Vec<String> = c
        .pods()
        .filter(|p| p.state == PodState::Paused)
        .map(|p| p.id.clone())
        .collect();
    for p in paused {
        c.resume(&p).await?;
        shared
            .history
            .record("heal", json!({ "action": "resume", "pod": p }));
    }
    let cut: Vec<String> = c
        .pods()
        .filter(|p| p.state == PodState::Partitioned)
        .map(|p| p.id.clone())
        .collect();
    for p in cut {
        c.heal_partition(&p).await?;
        shared
            .history
            .record("heal", json!({ "action": "reconnect", "pod": p }));
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

/// Ask the API (any live pod) for a run's state; record the answer.
async fn api_state(shared: &Shared, id: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < until {
        for (_, url) in shared.live() {
            let Ok(client) = PodClient::new(&url) else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(3), client.run(id)).await {
                Ok(Ok(detail)) => {
                    shared.history.record(
                        "api_run",
                        json!({ "run_id": id, "state": detail.run.state }),
                    );
                    return;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 3 s".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.blind(format!("the API never answered for run {id}: {last}"));
}

/// Record what the store says of every run (and every death) in the history.
async fn record_store_accounts(shared: &Shared, until: Instant) {
    let all_runs = RunFilter {
        limit: Some(100_000),
        ..Default::default()
    };
    let Some(all) = shared
        .observe("reading the runs for the store's account", until, || {
            shared.store.list_runs(&all_runs)
        })
        .await
    else {
        return;
    };
    for run in all {
        let Some(account) = shared
            .observe("reading a run's records", until, || {
                store_account(shared.store.as_ref(), run.clone())
            })
            .await
        else {
            return;
        };
        for t in &account.transitions {
            shared.history.record_at(
                t.at_ms,
                "transition",
                json!({ "run_id": run.id, "from": t.from, "to": t.to, "epoch": t.epoch, "pod": t.pod, "reason": t.reason }),
            );
        }
        for c in &account.claims {
            shared.history.record_at(
                c.at_ms,
                "claim",
                json!({ "run_id": run.id, "from": c.from_pod, "to": c.to_pod, "epoch": c.epoch }),
            );
        }
        shared
            .history
            .record("store_run", json!({ "account": account }));
    }
    let Some(deaths) = shared
        .observe("reading the pod deaths", until, || {
            shared.store.liveness().deaths(10_000)
        })
        .await
    else {
        return;
    };
    for d in &deaths {
        shared
            .history
            .record_at(d.detected_at_ms, "death", json!({ "death": d }));
    }
}

async fn store_account(
    store: &dyn Store,
    run: crate::engine::run::RunRecord,
) -> Result<StoreAccount, crate::engine::store::StoreError> {
    let steps = store.steps(&run.id).await?;
    let nodes: Vec<String> = steps.iter().map(|s| s.node_id.clone()).collect();
    let raw = store.step_outputs_raw(&run.id, &nodes).await?;
    Ok(StoreAccount {
        transitions: store.transitions(&run.id).await?,
        claims: store.claims(&run.id).await?,
        chunks: store.chunks(&run.id).await?,
        effects: store.effects(&run.id).await?,
        steps: steps
            .iter()
            .map(|s| StepFacts {
                node_id: s.node_id.clone(),
                status: s.status,
                attempts: s.attempts,
                updated_at_ms: s.updated_at_ms,
            })
            .collect(),
        raw: raw
            .iter()
            .map(|(k, v)| (k.clone(), RawFacts::of(v)))
            .collect(),
        run,
    })
}
