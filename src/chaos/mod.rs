//! `vigil chaos`: scripted scenarios that start a cluster, drive a workload,
//! inject faults at precise moments, record a history, heal, wait for quiet,
//! and check the invariants of FIELD-NOTES. Jepsen's shape (generator,
//! nemesis, history, checkers) with a test runner's ergonomics.
//!
//! Exit codes, as Jepsen's: 0 every check passed, 1 a check failed, 2
//! unknown (a fault never fired, so the scenario tested less than it says),
//! 254 bad arguments or scenario, 255 internal error.

pub mod checks;
pub mod history;
pub mod pgserver;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod soak;

use crate::engine::workflow::WorkflowRegistry;
use anyhow::{Context, Result};
use runner::{RunnerOpts, StoreChoice, Verdict};
use scenario::{Scenario, scenario_files};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_FAIL: u8 = 1;
pub const EXIT_UNKNOWN: u8 = 2;
pub const EXIT_BAD_INPUT: u8 = 254;
pub const EXIT_INTERNAL: u8 = 255;

#[derive(Debug, clap::Subcommand)]
pub enum ChaosCmd {
    /// Run a scenario file, or every *.toml of a directory.
    Run(RunArgs),
    /// Random faults against a 3-pod cluster under a steady workload for N
    /// minutes, every invariant checked after each round.
    Soak(soak::SoakArgs),
}

#[derive(Debug, clap::Args)]
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
    #[arg(long, env = "VIGIL_WORKFLOWS", default_value = "fixtures/workflows")]
    pub workflows: PathBuf,
    /// Less progress output.
    #[arg(long, short)]
    pub quiet: bool,
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
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
    let workflows = match WorkflowRegistry::load_dir(&args.workflows) {
        Ok(w) => w,
        Err(e) => return bad(format!("loading workflows: {e}")),
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
    // Every scenario parses before anything starts.
    let mut scenarios = Vec::new();
    for f in &files {
        match Scenario::load(f, &workflows) {
            Ok(s) => scenarios.push(s),
            Err(e) => return bad(e.to_string()),
        }
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("seed {seed} (replay with --seed {seed})");
    if args.dry_run {
        for s in &scenarios {
            let plan = s.plan(seed);
            println!("{}:\n{}", s.name, serde_json::to_string_pretty(&plan)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunnerOpts {
        seed,
        store,
        results_dir: args.results.clone(),
        workflows: args.workflows.clone(),
        binary: None,
        verbose: !args.quiet,
    };
    let mut outcomes = Vec::new();
    for s in scenarios {
        let name = s.name.clone();
        if !args.quiet {
            eprintln!("== {name}");
        }
        // Ctrl-C or SIGTERM: drop the run (its pods are killed on drop, a
        // throwaway database server stopped) and leave nothing behind.
        let outcome = tokio::select! {
            o = runner::run(s, &opts) => o.with_context(|| format!("scenario {name}"))?,
            _ = interrupted() => {
                eprintln!("interrupted: cluster stopped, nothing left running");
                return Ok(ExitCode::from(EXIT_INTERNAL));
            }
        };
        println!("{}", outcome.summary);
        println!("  results: {}", outcome.dir.display());
        outcomes.push(outcome);
    }
    if let Some(j) = &args.junit {
        std::fs::write(j, report::junit(&outcomes))
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
