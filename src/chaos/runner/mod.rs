//! Runs one scenario: store, cluster, workload, faults, quiet period,
//! evidence, checks. This module holds the public entry points ([`run`],
//! [`verdict_of`]), the state the run's tasks share, and the run's
//! top-level flow (`drive`'s phases); the phases live in `submit`
//! (the workload), `attach` (clients following streams), `faults`
//! (firing and healing faults) and `wait` (quiet and the final reads),
//! the store's set-up in `provision`.

mod attach;
mod client_links;
pub mod conformance;
mod faults;
mod links;
mod memory;
mod provision;
mod submit;
mod target;
mod wait;

use super::checks::{self, CheckResult, Evidence, Status};
use super::history::History;
use super::scenario::{Action, DriverKind, Plan, PlannedFault, Scenario, StoreKind, pod_ids};
use crate::cluster::pgserver::{PgServer, drop_database};
use crate::cluster::{Cluster, ClusterSpec};
use crate::engine::store::{self, Store};
use crate::engine::workflow::WorkflowRegistry;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

struct Shared {
    history: Arc<History>,
    /// History ms when the cluster was up: the workload's zero, from which
    /// `at_ms` triggers and submission times count (pods start in tens of
    /// milliseconds as processes, a second each as containers).
    t0_ms: u64,
    /// Vigil's own store (None for a foreign target: never read).
    store: Option<Arc<dyn Store>>,
    /// The system under test when it is not Vigil's own pods.
    target: Option<Arc<crate::chaos::target::TargetDef>>,
    api: crate::chaos::target::TargetApi,
    /// Every pod id of the scenario.
    pod_ids: Vec<String>,
    /// The store's URL as the runner reaches it (row_lock's own session).
    store_url: String,
    /// Vigil's SQLite database file, when that is the store: a pause is
    /// checked for freezing it (the paused pod holding its write lock).
    sqlite_db: Option<std::path::PathBuf>,
    cluster: tokio::sync::Mutex<Cluster>,
    live: Mutex<Vec<(String, String)>>,
    names: Mutex<BTreeMap<String, String>>,
    last_killed: Mutex<Option<String>>,
    fired: Mutex<Vec<usize>>,
    notes: Mutex<Vec<String>>,
    pg: Option<tokio::sync::Mutex<PgServer>>,
    /// The PostgreSQL container (Docker driver), for store_freeze.
    pg_container: Option<(bollard::Docker, String)>,
    /// The disk under the store's files (storage faults): the runner's, or
    /// the PostgreSQL container's.
    disk: Option<Arc<crate::chaos::disk::Disk>>,
    http: reqwest::Client,
    verbose: bool,
    /// The pods' store links, when a fault hits one (PostgreSQL, process
    /// driver).
    links: Option<links::Links>,
    /// The client links of the runs a client-link fault names (a slow
    /// consumer): their attachers reach the pods through these.
    client_links: Option<client_links::ClientLinks>,
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

    /// The API URL of `pod`, if the cluster knows it.
    async fn cluster_url(&self, pod: &str) -> Option<String> {
        self.cluster.lock().await.pod(pod).map(|x| x.url.clone())
    }

    fn live(&self) -> Vec<(String, String)> {
        lock(&self.live).clone()
    }

    /// The URL run `run`'s clients reach pod `pod` (API at `url`) by:
    /// through its client link's proxy when a fault names the run.
    async fn client_url(&self, run: &str, pod: &str, url: &str) -> Result<String> {
        match &self.client_links {
            Some(c) if c.names(run) => {
                let direct = self.cluster.lock().await.direct_addr(pod).await?;
                c.url(run, pod, url, direct).await
            }
            _ => Ok(url.to_owned()),
        }
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

    /// How long until `ms` after the workload's zero.
    fn until_workload_ms(&self, ms: u64) -> Duration {
        Duration::from_millis(self.t0_ms.saturating_add(ms))
            .saturating_sub(Duration::from_millis(self.history.elapsed_ms()))
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

/// Run `scn` once. Never leaves pods or servers behind.
pub async fn run(scn: Scenario, opts: &RunnerOpts) -> Result<Outcome> {
    let scn = Arc::new(scn);
    let workflows = WorkflowRegistry::load_dir(&opts.workflows)
        .with_context(|| format!("loading workflows from {}", opts.workflows.display()))?;
    let plan: Plan = scn.plan(opts.seed);
    let stamp = format!("{}-{}", crate::engine::clock::wall_ms(), opts.seed);
    let dir = opts.results_dir.join(&scn.name).join(&stamp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // As Jepsen's store: results/<scenario>/latest and results/latest.
    for (parent, target) in [
        (opts.results_dir.join(&scn.name), PathBuf::from(&stamp)),
        (opts.results_dir.clone(), Path::new(&scn.name).join(&stamp)),
    ] {
        if let Err(e) = link_latest(&parent, &target) {
            tracing::warn!(dir = %parent.display(), error = %e, "cannot update the latest link");
        }
    }

    let kind = provision::store_kind(&opts.store, &scn);
    let driver = opts.driver.unwrap_or(scn.driver);
    if let Some(t) = &scn.target {
        if driver != DriverKind::Process {
            bail!(
                "{}: target {:?} runs on the process driver (drop --driver docker)",
                scn.name,
                t.name
            );
        }
        if kind != StoreKind::Postgres {
            bail!(
                "{}: target {:?} needs PostgreSQL (drop --store sqlite)",
                scn.name,
                t.name
            );
        }
    }
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
    if let Some(why) =
        provision::why_not_applicable(&plan, kind, &opts.store, driver, scn.store_disk)
    {
        return not_applicable(&scn, opts, kind, dir, why);
    }
    if let Some(stores) = &scn.stores
        && !stores.contains(&kind)
    {
        return not_applicable(
            &scn,
            opts,
            kind,
            dir,
            "the scenario names the stores it judges ([cluster] stores), and this is not one",
        );
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
    let provision::Provisioned {
        target,
        pod_target,
        pg_server,
        drop_db,
        disk,
    } = provision::store(
        &opts.store,
        kind,
        &dir,
        docker_env.as_ref(),
        scn.store_disk.filter(|_| scn.target.is_none()),
    )
    .await?;
    // Unmounted only after the run (its pods and server) is gone.
    let disk = disk.map(Arc::new);
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
            disk: disk.clone(),
        },
        opts,
    )
    .await;
    drop(disk);
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

/// The outcome of a scenario whose faults cannot run on this store: its
/// summary and report written, nothing started.
fn not_applicable(
    scn: &Scenario,
    opts: &RunnerOpts,
    kind: StoreKind,
    dir: PathBuf,
    why: &str,
) -> Result<Outcome> {
    let summary = format!("{}: not applicable on this store ({why})\n", scn.name);
    let normalized = json!({ "scenario": scn.name, "verdict": Verdict::NotApplicable });
    let report = json!({ "normalized": normalized, "checks": [], "notes": [summary.trim()] });
    std::fs::write(dir.join("summary.txt"), &summary)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(Outcome {
        scenario: scn.name.clone(),
        seed: opts.seed,
        store: format!("{kind:?}").to_lowercase(),
        verdict: Verdict::NotApplicable,
        checks: Vec::new(),
        notes: vec![summary.clone()],
        dir,
        normalized,
        summary,
    })
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
    disk: Option<Arc<crate::chaos::disk::Disk>>,
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
        disk,
    } = setup;
    // A foreign target's store is its own: never opened, never read.
    let store = match &scn.target {
        Some(_) => None,
        None => Some(
            store::open(target)
                .await
                .context("opening the scenario's store")?,
        ),
    };
    if let Some(store) = &store {
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
    }
    let history = Arc::new(History::new());
    let witness = super::witness::Witness::start((witness_bind, 0).into(), history.clone())
        .await
        .context("starting the witness")?;
    let witness_url = witness.url_for(&witness_bind.to_string());
    // Link faults need every pod's store connections behind a proxy of ours.
    // Containers reach the proxies on the scenario network's gateway, as
    // they reach the witness; the proxies reach the database where the
    // runner does.
    let links = match plan.faults.iter().any(PlannedFault::on_store_link) {
        true if store_label == "postgres" && scn.target.is_none() => Some(
            links::Links::start(
                &pod_ids(scn.pods),
                target,
                witness_bind,
                plan.seed,
                history.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    let per_pod = match &links {
        Some(l) => l.pod_store_urls(docker.as_ref().map_or(target, |(_, url)| url.as_str()))?,
        None => BTreeMap::new(),
    };
    let mut cluster = build_cluster(&scn, opts, dir, target, witness_url, docker, per_pod)?;
    // A target has no liveness timeout of ours: any pause may cost it its
    // runs, so death_detected judges every one.
    let liveness_timeout_ms = if scn.target.is_some() {
        0
    } else {
        scn.pod_args
            .windows(2)
            .find(|w| w[0] == "--liveness-timeout-ms")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(2000)
    };
    let client_links = client_links::ClientLinks::new(&scn, plan, history.clone());
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
            "memory_bound_mib": scn.checks.memory_bound_mib,
            "quiet_timeout_ms": scn.checks.quiet_timeout_ms,
            "witness": witness.addr.to_string(),
            "target": scn.target.as_ref().map(|t| &t.caps),
            "workflows": std::path::absolute(&opts.workflows)
                .unwrap_or_else(|_| opts.workflows.clone()),
        }),
    );
    for id in pod_ids(scn.pods) {
        cluster.start_pod(&id, &[]).await?;
    }
    let shared = Arc::new(Shared {
        t0_ms: history.elapsed_ms(),
        history,
        store,
        target: scn.target.clone(),
        api: crate::chaos::target::TargetApi::new(),
        pod_ids: pod_ids(scn.pods),
        store_url: target.to_owned(),
        sqlite_db: crate::engine::store::sqlite_path(target)
            .filter(|_| store_label == "sqlite" && scn.target.is_none())
            .map(std::path::Path::to_path_buf),
        cluster: tokio::sync::Mutex::new(cluster),
        live: Mutex::default(),
        names: Mutex::default(),
        last_killed: Mutex::default(),
        fired: Mutex::default(),
        notes: Mutex::default(),
        pg: pg_server.map(tokio::sync::Mutex::new),
        pg_container,
        disk,
        http: reqwest::Client::new(),
        verbose: opts.verbose,
        links,
        client_links,
    });
    shared.refresh_live().await;
    shared.say(&format!("{} pods ({driver}) up on {store_label}", scn.pods));
    wait::scrape_metrics(&shared, "before").await;
    let result = drive(shared.clone(), scn.clone(), plan).await;
    shared
        .cluster
        .lock()
        .await
        .shutdown(Duration::from_secs(10))
        .await;
    drop(witness);
    result?;
    judge(&shared, &scn, plan, dir, store_label, &workflows)
}

/// The evidence from the history, the checks on it, the verdict; the
/// report and the scenario written to the results.
fn judge(
    shared: &Shared,
    scn: &Scenario,
    plan: &Plan,
    dir: &std::path::Path,
    store_label: &str,
    workflows: &WorkflowRegistry,
) -> Result<Outcome> {
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
    let checks = checks::run_all(&evidence, workflows, &scn.checks.skip);
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
        unforced: &scn.checks.unforced,
        evidence: &evidence,
        unfired: &unfired,
        history: &history,
        notes: &notes,
    };
    let summary = report.summary();
    let normalized = report.normalized();
    report.write(dir)?;
    save_inputs(dir, scn)?;
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

/// The cluster, not started: its pods reach the store at `target` (or at
/// the URL `docker` gives) and the witness at `witness_url`, with the
/// scenario's lanes and pod arguments; as processes, or as containers with
/// `docker`.
fn build_cluster(
    scn: &Scenario,
    opts: &RunnerOpts,
    dir: &std::path::Path,
    target: &str,
    witness_url: String,
    docker: Option<(crate::cluster::docker::pods::DockerPods, String)>,
    store_per_pod: BTreeMap<String, String>,
) -> Result<Cluster> {
    let pod_store = docker.as_ref().map_or(target, |(_, url)| url.as_str());
    let mut spec = ClusterSpec::new(
        pod_store.to_owned(),
        opts.workflows.clone(),
        dir.join("pods"),
    )?;
    spec.store_per_pod = store_per_pod;
    if let Some(b) = &opts.binary {
        spec.binary = b.clone();
    }
    spec.lanes = scn.lanes.clone();
    if let Some(t) = &scn.target {
        spec.command = Some(t.command_pod(target, &witness_url, &opts.workflows));
        return Cluster::new(spec);
    }
    spec.pod_args = ["--chaos-hooks".to_owned(), "--witness-url".to_owned()]
        .into_iter()
        .chain(std::iter::once(witness_url))
        .chain(scn.pod_args.iter().cloned())
        .collect();
    Ok(match docker {
        None => Cluster::new(spec)?,
        Some((pods, _)) => {
            // Containers inherit nothing from the runner's environment.
            if let Ok(f) = std::env::var("VIGIL_FAULTS") {
                spec.env.push(("VIGIL_FAULTS".into(), f));
            }
            Cluster::docker(spec, pods)?
        }
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

/// What `vigil chaos check` needs besides the history: the scenario file
/// (and a target's file).
/// (The workflow definitions are not copied: they may hold secrets; the
/// history's `start` line names where they were read.)
fn save_inputs(dir: &std::path::Path, scn: &Scenario) -> Result<()> {
    std::fs::copy(&scn.file, dir.join("scenario.toml"))
        .with_context(|| format!("copying {} into the results", scn.file.display()))?;
    if let Some(t) = &scn.target {
        std::fs::copy(&t.file, dir.join("target.toml"))
            .with_context(|| format!("copying {} into the results", t.file.display()))?;
    }
    Ok(())
}

/// The run's phases: faults armed, workload submitted, faults healed,
/// quiet, late clients, final reads.
async fn drive(shared: Arc<Shared>, scn: Arc<Scenario>, plan: &Plan) -> Result<()> {
    let quiet = Duration::from_millis(scn.checks.quiet_timeout_ms);
    let bound = Instant::now() + quiet + Duration::from_secs(30);
    // Faults wait for their triggers from the start.
    let fault_tasks = faults::spawn(&shared, &scn, plan, bound);
    let early = submit::workload(&shared, plan, quiet).await?;
    shared.say("workload submitted");
    for t in fault_tasks {
        let _ = t.await;
    }
    faults::heal(&shared).await?;
    shared.refresh_live().await;
    shared.say("healed; waiting for the cluster to go quiet");
    wait::for_quiet(&shared, quiet).await;
    // Settle: a write that lands after the last run went terminal (a
    // second terminal write, a zombie's late chunk) gets time to show in
    // the final reads below.
    tokio::time::sleep(wait::SETTLE).await;
    shared.say("quiet; attaching late clients");
    wait::scrape_metrics(&shared, "after").await;
    attach::late(&shared, plan).await;
    attach::join_early(&shared, early).await;
    wait::final_reads(&shared).await;
    Ok(())
}

/// Point `parent/latest` at `target` (relative to `parent`), replacing any
/// earlier link in one rename so a reader never finds it missing.
fn link_latest(parent: &Path, target: &Path) -> std::io::Result<()> {
    let tmp = parent.join(format!(".latest.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, parent.join("latest"))
}
