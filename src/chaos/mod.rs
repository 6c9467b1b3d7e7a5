//! `vigil chaos`: scripted scenarios that start a cluster, drive a workload,
//! inject faults at precise moments, record a history, heal, wait for quiet,
//! and check the invariants of FIELD-NOTES. Jepsen's shape (generator,
//! nemesis, history, checkers) with a test runner's ergonomics.
//!
//! Exit codes, as Jepsen's: 0 every check passed, 1 a check failed, 2
//! unknown (a fault never fired, so the scenario tested less than it says),
//! 254 bad arguments or scenario, 255 internal error.

pub mod checks;
pub mod disk;
pub mod fuse;
pub mod history;
pub mod net;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod soak;
pub mod target;
pub mod witness;

use crate::engine::workflow::WorkflowRegistry;
use anyhow::{Context, Result};
use runner::{RunnerOpts, StoreChoice, Verdict};
use scenario::{Action, DriverKind, Scenario, StoreKind, scenario_files};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_FAIL: u8 = 1;
pub const EXIT_UNKNOWN: u8 = 2;
pub const EXIT_BAD_INPUT: u8 = 254;
pub const EXIT_INTERNAL: u8 = 255;

#[derive(Debug, clap::Subcommand)]
#[command(after_help = "\
Exit codes, as Jepsen's (not those of the other vigil commands):
  0    every check passed
  1    a check failed
  2    unknown: a fault never fired, so the scenario tested less than it says
  254  bad arguments or a bad scenario
  255  internal error")]
pub enum ChaosCmd {
    /// Run a scenario file, or every *.toml of a directory.
    Run(RunArgs),
    /// Random faults against a 3-pod cluster under a steady workload for N
    /// minutes, every invariant checked after each round.
    Soak(soak::SoakArgs),
    /// Re-run every checker on a saved results directory, without a
    /// cluster (Jepsen's `analyze`): the evidence is its history.jsonl, the
    /// expectations its scenario.toml and workflows/.
    Check(CheckArgs),
    /// Check that a target keeps the contract of docs/targets.md, before
    /// any fault: two workers start, runs submitted with the runner's id
    /// end, any worker answers for them, the witness sees each step in
    /// order and budget, and the same id again executes nothing.
    TargetCheck(TargetCheckArgs),
    /// Docker driver images, built from local files (no registry needed).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Remove the containers, networks and volumes the docker driver left
    /// (by label), e.g. after a runner was killed with SIGKILL, and the
    /// nftables tables of packet faults, the store disks (tmpfs) and FUSE
    /// mounts of storage faults, whose runner is gone.
    Clean(CleanArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// A results directory written by `vigil chaos run`
    /// (results/SCENARIO/STAMP/).
    pub dir: PathBuf,
    /// The workflow definitions (the expectations). Default: the directory
    /// the run read them from, as its history's start line names it.
    #[arg(long)]
    pub workflows: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  vigil chaos target-check fixtures/targets/dbos/target.toml \\
      --workflows fixtures/targets/dbos/workflows --store postgres

Exit codes: 0 every clause kept, 1 a clause broken, 254 bad arguments or target file.")]
pub struct TargetCheckArgs {
    /// The target file (docs/targets.md).
    pub target: PathBuf,
    /// The workflow definitions to run: each one, or only --workflow.
    #[arg(long)]
    pub workflows: PathBuf,
    /// Only this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// postgres (a throwaway server from the installed binaries) or
    /// postgres://ADMIN-URL (a database of ours is created there and
    /// dropped).
    #[arg(long, default_value = "postgres")]
    pub store: String,
    /// Where the workers' logs go (pods/<id>.log). Default: a new directory
    /// under the system's temporary directory, kept and named at the end.
    #[arg(long)]
    pub logs: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Build the pod image (FROM scratch: the vigil binary and the shared
    /// libraries it loads) and the PostgreSQL image, through the Docker API.
    Build(ImageBuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImageBuildArgs {
    /// The vigil binary to put in the pod image (default: this executable).
    #[arg(long, env = "VIGIL_CHAOS_BINARY")]
    pub binary: Option<PathBuf>,
    /// Rebuild even when an image with the same content tag exists.
    #[arg(long)]
    pub force: bool,
    /// Skip the PostgreSQL image.
    #[arg(long)]
    pub no_postgres: bool,
}

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Everything labelled by Vigil, also the objects of runners still
    /// running (default: only those whose runner process is gone).
    #[arg(long, conflicts_with = "run")]
    pub all: bool,
    /// Only the objects of this scenario run (the `vigil.run` label).
    #[arg(long)]
    pub run: Option<String>,
    /// Remove Vigil's images too.
    #[arg(long)]
    pub images: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # every shipped scenario on SQLite, JUnit for CI
  vigil chaos run scenarios/ --store sqlite --junit results/junit.xml
  # replay one scenario's exact fault schedule on PostgreSQL
  vigil chaos run scenarios/pod-death-mid-stream.toml --store postgres --seed 20261123
  # print the schedule a seed gives, start nothing
  vigil chaos run scenarios/ --seed 7 --dry-run
  # a gray failure: one owner's link to PostgreSQL half-open for 12 s (needs root: nftables)
  vigil chaos run scenarios/half-open-owner.toml --store postgres
  # DBOS Transact as the system under test (docs/targets.md), then the same on Vigil
  vigil chaos run scenarios/targets/dbos/ --store postgres
  vigil chaos run scenarios/targets/dbos/ --store postgres --vigil")]
pub struct RunArgs {
    /// A scenario file or a directory of them.
    pub path: PathBuf,
    /// Seed for every random choice (printed when not given; replays the same schedule).
    #[arg(long, env = "VIGIL_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Store for every scenario: sqlite, postgres (a throwaway server from the
    /// installed binaries) or postgres://ADMIN-URL (a database of ours is
    /// created there and dropped). Default: what each scenario says.
    #[arg(long, env = "VIGIL_CHAOS_STORE")]
    pub store: Option<String>,
    /// Where results/<scenario>/<timestamp>/ go.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Print the fault schedule the seed gives, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Workflows for every scenario. Default: each scenario's own (its
    /// `workflows` key, relative to the file, else a workflows/ beside it).
    #[arg(long, env = "VIGIL_WORKFLOWS")]
    pub workflows: Option<PathBuf>,
    /// Less progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Run pods as processes or as Docker containers (default: what each
    /// scenario's `cluster.driver` says).
    #[arg(long, env = "VIGIL_CHAOS_DRIVER", value_enum)]
    pub driver: Option<DriverArg>,
    /// Docker driver: run this pod image (it must exist) instead of one
    /// built from this binary on demand.
    #[arg(long, env = "VIGIL_CHAOS_IMAGE")]
    pub image: Option<String>,
    /// Run on Vigil's own pods even where a scenario names a target in
    /// `[cluster]`: the same workload, faults and checks, side by side
    /// (docs/targets.md).
    #[arg(long)]
    pub vigil: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DriverArg {
    Process,
    Docker,
}

impl From<DriverArg> for DriverKind {
    fn from(d: DriverArg) -> Self {
        match d {
            DriverArg::Process => DriverKind::Process,
            DriverArg::Docker => DriverKind::Docker,
        }
    }
}

pub(crate) fn store_choice(s: Option<&str>) -> Result<StoreChoice, String> {
    match s {
        None => Ok(StoreChoice::Scenario),
        Some("sqlite") => Ok(StoreChoice::Sqlite),
        Some("postgres") => Ok(StoreChoice::PgServer),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Ok(StoreChoice::PgUrl(u.to_owned()))
        }
        Some(other) => Err(format!(
            "--store {other:?}: expected sqlite, postgres or postgres://USER@HOST:PORT/DB"
        )),
    }
}

pub async fn main(cmd: ChaosCmd) -> ExitCode {
    let result = match cmd {
        ChaosCmd::Run(args) => run(args).await,
        ChaosCmd::Soak(args) => soak::run(args).await,
        ChaosCmd::Check(args) => check(&args.dir, args.workflows.as_deref()),
        ChaosCmd::TargetCheck(args) => target_check(args).await,
        ChaosCmd::Image(ImageCmd::Build(args)) => {
            image_build(args).await.map(|()| ExitCode::SUCCESS)
        }
        ChaosCmd::Clean(args) => clean(args).await.map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::errors::report(&e));
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

/// `vigil chaos check DIR`.
fn check(dir: &std::path::Path, workflows: Option<&std::path::Path>) -> Result<ExitCode> {
    let bad = |msg: String| {
        eprintln!("error: {msg}");
        Ok(ExitCode::from(EXIT_BAD_INPUT))
    };
    let events = match history::load(&dir.join("history.jsonl")) {
        Ok(e) => e,
        Err(e) => return bad(e),
    };
    let wdir = match workflows {
        Some(w) => w.to_owned(),
        None => match events
            .iter()
            .find(|e| e.kind == "start")
            .and_then(|e| e.data.get("workflows"))
            .and_then(|w| w.as_str())
        {
            Some(w) => PathBuf::from(w),
            None => {
                return bad(format!(
                    "{}: no start line naming the workflows: pass --workflows",
                    dir.join("history.jsonl").display()
                ));
            }
        },
    };
    let workflows = match WorkflowRegistry::load_dir(&wdir) {
        Ok(w) => w,
        Err(e) => return bad(format!("loading the workflows ({}): {e}", wdir.display())),
    };
    let scn_file = dir.join("scenario.toml");
    let saved_target = dir.join("target.toml");
    let scn = match std::fs::read_to_string(&scn_file)
        .map_err(|e| format!("{}: cannot read: {e}", scn_file.display()))
        .and_then(|text| {
            Scenario::parse_with_target(
                &scn_file,
                &text,
                &workflows,
                saved_target.exists().then_some(saved_target.as_path()),
            )
            .map_err(|e| e.to_string())
        }) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let report_path = dir.join("report.json");
    let saved: serde_json::Value = match std::fs::read_to_string(&report_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => return bad(format!("{}: {e}", report_path.display())),
    };
    let plan: scenario::Plan = match serde_json::from_value(saved["plan"].clone()) {
        Ok(p) => p,
        Err(e) => return bad(format!("{}: plan: {e}", report_path.display())),
    };
    let unfired: Vec<usize> = serde_json::from_value(saved["unfired"].clone()).unwrap_or_default();
    let notes: Vec<String> = serde_json::from_value(saved["notes"].clone()).unwrap_or_default();
    let store = saved["normalized"]["store"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let evidence = match checks::Evidence::from_history(&events) {
        Ok(e) => e,
        Err(e) => return bad(format!("{}: {e}", dir.join("history.jsonl").display())),
    };
    let results = checks::run_all(&evidence, &workflows, &scn.checks.skip);
    let verdict = runner::verdict_of(&results, &unfired, &evidence.blind);
    let report = report::Report {
        scenario_name: &scn.name,
        description: &scn.description,
        pods: scn.pods,
        plan: &plan,
        store: &store,
        verdict,
        checks: &results,
        unforced: &scn.checks.unforced,
        evidence: &evidence,
        unfired: &unfired,
        history: &events,
        notes: &notes,
    };
    print!("{}", report.summary());
    let before: Option<Verdict> =
        serde_json::from_value(saved["normalized"]["verdict"].clone()).ok();
    let mut differs = Vec::new();
    if before != Some(verdict) {
        differs.push(format!(
            "verdict {} (saved: {})",
            serde_json::to_string(&verdict)?,
            before.map_or_else(
                || "none".into(),
                |v| serde_json::to_string(&v).unwrap_or_default()
            )
        ));
    }
    for c in &results {
        let was = saved["normalized"]["checks"][c.name.as_str()]
            .as_str()
            .unwrap_or("missing");
        let now = serde_json::to_value(c.status)?;
        if now.as_str() != Some(was) {
            differs.push(format!(
                "{}: {} (saved: {was})",
                c.name.as_str(),
                now.as_str().unwrap_or("?")
            ));
        }
    }
    if differs.is_empty() {
        println!("check: reproduced the saved verdict of {}", dir.display());
    } else {
        println!(
            "check: differs from the saved verdict of {}: {}",
            dir.display(),
            differs.join("; ")
        );
    }
    Ok(ExitCode::from(match verdict {
        Verdict::Pass | Verdict::NotApplicable => 0,
        Verdict::Unknown => EXIT_UNKNOWN,
        Verdict::Fail => EXIT_FAIL,
    }))
}

async fn image_build(args: ImageBuildArgs) -> Result<()> {
    let docker = crate::cluster::docker::connect().await?;
    let binary = match args.binary {
        Some(b) => b,
        None => std::env::current_exe().context("locating the vigil binary")?,
    };
    let mut built =
        vec![crate::cluster::docker::image::pod_image(&docker, &binary, args.force).await?];
    if !args.no_postgres {
        built.push(crate::cluster::docker::image::pg_image(&docker, args.force).await?);
    }
    for i in built {
        println!(
            "{} {} ({:.1} MB)",
            if i.built { "built" } else { "exists" },
            i.tag,
            i.size as f64 / 1e6
        );
    }
    Ok(())
}

async fn clean(args: CleanArgs) -> Result<()> {
    // The host's leftovers first, whatever happens to Docker after: a
    // table a killed runner left keeps a port cut off on this host, Docker
    // or not. Only root can read them (or can have made them).
    let nft = if nix::unistd::geteuid().is_root() {
        let nft = net::nft::sweep(args.all).map(|tables| {
            for t in tables {
                println!("removed nft table {t}");
            }
        });
        // FUSE mounts of storage faults whose runner is gone (unreadable,
        // "Transport endpoint is not connected"), before the store disks
        // they sit over.
        if let Err(e) = fuse::sweep().map(|mounts| {
            for m in mounts {
                println!("unmounted FUSE mount {}", m.display());
            }
        }) {
            eprintln!("error: {}", crate::errors::report(&e));
        }
        // And the store disks (tmpfs mounts) a killed runner left.
        nft.and_then(|()| {
            disk::sweep(args.all).map(|mounts| {
                for m in mounts {
                    println!("unmounted store disk {}", m.display());
                }
            })
        })
    } else {
        eprintln!("note: nft tables, FUSE mounts and store disks not swept (that needs root)");
        Ok(())
    };
    let docker = clean_docker(args).await;
    match (nft, docker) {
        (Ok(()), docker) => docker,
        (Err(nft), Ok(())) => Err(nft),
        (Err(nft), Err(docker)) => {
            eprintln!("error: {}", crate::errors::report(&nft));
            Err(docker)
        }
    }
}

async fn clean_docker(args: CleanArgs) -> Result<()> {
    use crate::cluster::docker::Scope;
    let docker = crate::cluster::docker::connect().await?;
    let scope = match (args.all, args.run) {
        (_, Some(r)) => Scope::Run(r),
        (true, None) => Scope::All,
        (false, None) => Scope::Orphans,
    };
    let swept = crate::cluster::docker::sweep(&docker, &scope, args.images).await?;
    for (what, names) in [
        ("container", &swept.containers),
        ("network", &swept.networks),
        ("volume", &swept.volumes),
        ("image", &swept.images),
    ] {
        for n in names {
            println!("removed {what} {n}");
        }
    }
    println!(
        "clean: {} containers, {} networks, {} volumes, {} images removed",
        swept.containers.len(),
        swept.networks.len(),
        swept.volumes.len(),
        swept.images.len()
    );
    Ok(())
}

/// `vigil chaos target-check`: the contract's clauses, one line each.
async fn target_check(args: TargetCheckArgs) -> Result<ExitCode> {
    let store = match store_choice(Some(&args.store)) {
        Ok(s @ (StoreChoice::PgServer | StoreChoice::PgUrl(_))) => s,
        Ok(_) => {
            eprintln!("error: --store {}: a target needs PostgreSQL", args.store);
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    if let Err(e) = target::TargetDef::load(&args.target) {
        eprintln!("error: {}", crate::errors::report(&e));
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let logs = match &args.logs {
        Some(l) => l.clone(),
        None => tempfile::Builder::new()
            .prefix("vigil-target-check.")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let clauses = runner::conformance::check_target(
        &args.target,
        &args.workflows,
        args.workflow.as_deref(),
        &store,
        &logs,
    )
    .await?;
    for c in &clauses {
        println!(
            "{}  {:<26} {}",
            if c.ok { "PASS" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    let broken = clauses.iter().filter(|c| !c.ok).count();
    println!(
        "target-check: {} clauses kept, {broken} broken; worker logs in {}",
        clauses.len() - broken,
        logs.join("pods").display()
    );
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAIL)
    })
}

/// Read and validate one scenario file against its workflows (loaded once
/// per directory); the message names the file and, where it can, the line.
fn load_scenario(
    file: &std::path::Path,
    flag: Option<&std::path::Path>,
    registries: &mut std::collections::HashMap<PathBuf, WorkflowRegistry>,
) -> Result<(Scenario, PathBuf), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let wdir = scenario::workflows_dir(file, &text, flag)?;
    if !registries.contains_key(&wdir) {
        let w = WorkflowRegistry::load_dir(&wdir).map_err(|e| {
            format!(
                "{}: loading workflows ({}): {e}",
                file.display(),
                wdir.display()
            )
        })?;
        registries.insert(wdir.clone(), w);
    }
    let s = Scenario::parse(file, &text, &registries[&wdir]).map_err(|e| e.to_string())?;
    Ok((s, wdir))
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let bad = |msg: String| {
        eprintln!("error: {msg}");
        Ok(ExitCode::from(EXIT_BAD_INPUT))
    };
    let store = match store_choice(args.store.as_deref()) {
        Ok(s) => s,
        Err(e) => return bad(e),
    };
    let files = match scenario_files(&args.path) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            return bad(format!(
                "{}: no scenario files (*.toml)",
                args.path.display()
            ));
        }
        Err(e) => return bad(format!("{}: {e}", args.path.display())),
    };
    // Every scenario parses before anything starts, against its own
    // workflows.
    let mut scenarios = Vec::new();
    let mut invalid = Vec::new();
    let mut registries: std::collections::HashMap<PathBuf, WorkflowRegistry> =
        std::collections::HashMap::new();
    for f in &files {
        match load_scenario(f, args.workflows.as_deref(), &mut registries) {
            Ok((mut s, w)) => {
                if args.vigil {
                    s.target = None;
                }
                scenarios.push((s, w));
            }
            Err(message) => invalid.push((f.display().to_string(), message)),
        }
    }
    if !invalid.is_empty() {
        // Every file's problem, and JUnit that shows them as errors.
        if let Some(j) = &args.junit {
            let entries: Vec<_> = invalid
                .iter()
                .map(|(file, message)| report::JunitEntry::Invalid {
                    file: file.clone(),
                    message: message.clone(),
                })
                .collect();
            std::fs::write(j, report::junit(&entries))
                .with_context(|| format!("writing {}", j.display()))?;
        }
        for (_, message) in &invalid {
            eprintln!("error: {message}");
        }
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    // The driver each scenario will run on, checked before anything starts.
    let driver_flag = args.driver.map(DriverKind::from);
    for (s, _) in &scenarios {
        let driver = driver_flag.unwrap_or(s.driver);
        let kind = match &store {
            StoreChoice::Scenario => s.store,
            StoreChoice::Sqlite => StoreKind::Sqlite,
            StoreChoice::PgServer | StoreChoice::PgUrl(_) => StoreKind::Postgres,
        };
        let partition = s
            .plan(0)
            .faults
            .iter()
            .any(|f| f.action == Action::Partition);
        if driver == DriverKind::Process && partition {
            return bad(format!(
                "{}: a partition cuts a container from its network: it needs the docker driver \
                 (drop --driver process)",
                s.file.display()
            ));
        }
        if driver == DriverKind::Docker && kind == StoreKind::Sqlite {
            return bad(format!(
                "{}: the docker driver needs PostgreSQL (pods in containers share no SQLite \
                 file): set store = \"postgres\" in [cluster], or pass --store postgres",
                s.file.display()
            ));
        }
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("seed {seed} (replay with --seed {seed})");
    if args.dry_run {
        for (s, _) in &scenarios {
            let plan = s.plan(seed);
            println!("{}:\n{}", s.name, serde_json::to_string_pretty(&plan)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunnerOpts {
        seed,
        store,
        results_dir: args.results.clone(),
        workflows: PathBuf::new(),
        binary: None,
        verbose: !args.quiet,
        driver: driver_flag,
        image: args.image.clone(),
    };
    let mut outcomes = Vec::new();
    let mut timings = Vec::new();
    for (s, wdir) in scenarios {
        let name = s.name.clone();
        let opts = RunnerOpts {
            workflows: wdir,
            ..opts.clone()
        };
        if !args.quiet {
            eprintln!("== {name}");
        }
        // Ctrl-C or SIGTERM: drop the run (its pods are killed on drop, a
        // throwaway database server stopped) and leave nothing behind.
        let (started_ms, began) = (crate::engine::clock::wall_ms(), std::time::Instant::now());
        let outcome = tokio::select! {
            o = runner::run(s, &opts) => o.with_context(|| format!("scenario {name}"))?,
            _ = interrupted() => {
                eprintln!("interrupted: cluster stopped, nothing left running");
                return Ok(ExitCode::from(EXIT_INTERNAL));
            }
        };
        println!("{}", outcome.summary);
        println!("  results: {}", outcome.dir.display());
        timings.push((started_ms, began.elapsed()));
        outcomes.push(outcome);
    }
    if let Some(j) = &args.junit {
        let entries: Vec<_> = outcomes
            .iter()
            .zip(&timings)
            .map(|(outcome, &(started_ms, took))| report::JunitEntry::Ran {
                outcome,
                started_ms,
                took,
            })
            .collect();
        std::fs::write(j, report::junit(&entries))
            .with_context(|| format!("writing {}", j.display()))?;
    }
    let worst = outcomes.iter().map(|o| o.verdict).fold(0u8, |acc, v| {
        acc.max(match v {
            Verdict::Pass | Verdict::NotApplicable => 0,
            Verdict::Unknown => EXIT_UNKNOWN,
            Verdict::Fail => EXIT_FAIL,
        })
    });
    let line = |v: Verdict| outcomes.iter().filter(|o| o.verdict == v).count();
    println!(
        "chaos: {} passed, {} failed, {} unknown, {} not applicable",
        line(Verdict::Pass),
        line(Verdict::Fail),
        line(Verdict::Unknown),
        line(Verdict::NotApplicable)
    );
    Ok(ExitCode::from(worst))
}

pub(crate) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
