//! `vigil chaos soak`: random faults against a 3-pod cluster under a steady
//! workload for N minutes, checking every invariant after each round.
//!
//! Each round is a scenario generated from the seed (the round's TOML is
//! kept in its results directory, so any round replays on its own with
//! `vigil chaos run`), run to quiet and checked like any other.

use super::runner::{self, RunnerOpts, Verdict};
use super::scenario::Scenario;
use crate::engine::workflow::WorkflowRegistry;
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to keep starting rounds.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    #[arg(long, env = "VIGIL_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// sqlite, postgres (throwaway server) or postgres://ADMIN-URL.
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    #[arg(long, default_value = "results")]
    pub results: std::path::PathBuf,
    #[arg(long, env = "VIGIL_WORKFLOWS", default_value = "fixtures/workflows")]
    pub workflows: std::path::PathBuf,
}

/// Which gray failures a soak round may draw: none on SQLite (its pods
/// have no link to a database), the link faults on any PostgreSQL, and a
/// database freeze only on a server the runner starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gray {
    None,
    Links,
    LinksAndFreeze,
}

/// The TOML of one soak round. With `disk` (a store whose files the
/// runner places: SQLite, or a throwaway PostgreSQL server) a fault may
/// also fill the store's disk.
pub fn round_toml(round: u64, seed: u64, gray: Gray, disk: bool) -> String {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let store = if gray == Gray::None {
        ""
    } else {
        "store = \"postgres\"\n"
    };
    let mut s = format!(
        "# soak round {round} (seed {seed})\nname = \"soak-round-{round}\"\n\n[cluster]\npods = 3\n{store}\
         pod_args = [\"--liveness-timeout-ms\", \"1000\", \"--probe-interval-ms\", \"100\"]\n\n\
         [[workload]]\nname = \"s\"\nworkflow = \"slow_stream\"\nruns = 3\ninterval_ms = 1500\nattach = [\"early\", \"late\"]\n\n\
         [[workload]]\nname = \"f\"\nworkflow = \"fan_in_9\"\nruns = 2\nstart_ms = 400\ninterval_ms = 2500\nattach = [\"late\"]\n\n\
         [[workload]]\nname = \"c\"\nworkflow = \"chat_reply\"\nruns = 2\nstart_ms = 800\ninterval_ms = 2000\nattach = [\"early\"]\n\n\
         [[workload]]\nname = \"y\"\nworkflow = \"flaky_sync\"\nruns = 2\nstart_ms = 200\ninterval_ms = 1000\n"
    );
    let faults = rng.random_range(2..=4);
    let mut at = 500u64;
    for _ in 0..faults {
        at += rng.random_range(600..2500);
        let _ = write!(s, "\n[[fault]]\nat_ms = {at}\n");
        let kinds = match gray {
            Gray::None => 10,
            Gray::Links => 16,
            Gray::LinksAndFreeze => 17,
        };
        let k = rng.random_range(0..kinds + u32::from(disk));
        if disk && k == kinds {
            // A slow disk only on PostgreSQL: on SQLite it is an open
            // finding (docs/chaos.md, "Storage faults: a slow disk").
            if gray == Gray::None || rng.random_bool(0.5) {
                // The store's disk full for a while, then space back.
                let _ = write!(
                    s,
                    "action = \"disk_full\"\nduration_ms = {}\n",
                    rng.random_range(1000..5000)
                );
            } else {
                // A degraded volume: every write and fsync slower.
                let _ = write!(
                    s,
                    "action = \"slow_disk\"\nduration_ms = {}\ndelay_ms = {}\n",
                    rng.random_range(1000..5000),
                    rng.random_range(20..150)
                );
            }
            continue;
        }
        match k {
            0..=3 => {
                let _ = write!(
                    s,
                    "action = \"kill\"\ntarget = \"random\"\nrestart_after_ms = {}\n",
                    rng.random_range(200..1500)
                );
            }
            4..=5 => {
                let _ = write!(
                    s,
                    "action = \"term\"\ntarget = \"random\"\nrestart_after_ms = {}\n",
                    rng.random_range(200..1500)
                );
            }
            6..=7 => {
                let _ = write!(
                    s,
                    "action = \"pause\"\ntarget = \"random\"\nduration_ms = {}\n",
                    rng.random_range(300..3000)
                );
            }
            10 => {
                // One pod's store link slowed: well inside its 1 s lease
                // (it must keep it), or every round trip past it (it must
                // lose it and fence itself); never the coin toss between.
                let ms = if rng.random_bool(0.5) {
                    rng.random_range(50..300)
                } else {
                    rng.random_range(650..900)
                };
                let _ = write!(
                    s,
                    "action = \"latency\"\ntarget = \"random\"\nduration_ms = {}\nlink = {{ ms = {ms}, jitter_ms = {} }}\n",
                    rng.random_range(1000..5000),
                    ms / 8
                );
            }
            11 => {
                // Every pod's store link slowed: the store is slow.
                let ms = rng.random_range(25..200);
                let _ = write!(
                    s,
                    "action = \"latency\"\nduration_ms = {}\nlink = {{ ms = {ms}, jitter_ms = {} }}\n",
                    rng.random_range(2000..6000),
                    ms / 2
                );
            }
            12 => {
                let _ = write!(
                    s,
                    "action = \"half_open\"\ntarget = \"random\"\nduration_ms = {}\n",
                    rng.random_range(500..4000)
                );
            }
            13 => {
                let _ = write!(
                    s,
                    "action = \"loss\"\ntarget = \"random\"\nduration_ms = {}\nlink = {{ percent = {} }}\n",
                    rng.random_range(1000..5000),
                    rng.random_range(5..40)
                );
            }
            14 => {
                let _ = write!(
                    s,
                    "action = \"reset\"\ntarget = \"random\"\nduration_ms = {}\n",
                    rng.random_range(100..1000)
                );
            }
            15 => {
                let _ = write!(
                    s,
                    "action = \"cut_after_commit\"\ntarget = \"random\"\nduration_ms = 3000\nlink = {{ pattern = \"{}\", times = {} }}\n",
                    ["vigil_checkpoints", "COMMIT"][rng.random_range(0..2)],
                    rng.random_range(1..4)
                );
            }
            16 => {
                let _ = write!(
                    s,
                    "action = \"store_freeze\"\nduration_ms = {}\n",
                    rng.random_range(500..4000)
                );
            }
            _ => {
                // A risky-machinery switch off for a while, then on again.
                let name = ["recovery.enabled", "reaper.enabled", "janitor.enabled"]
                    [rng.random_range(0..3)];
                let back = at + rng.random_range(500..2000);
                let _ = write!(
                    s,
                    "action = \"switch\"\nswitch = \"{name}\"\nvalue = false\n"
                );
                let _ = write!(
                    s,
                    "\n[[fault]]\nat_ms = {back}\naction = \"switch\"\nswitch = \"{name}\"\nvalue = true\n"
                );
            }
        }
    }
    s.push_str("\n[checks]\nquiet_timeout_ms = 45000\ndetection_bound_ms = 4000\n");
    s
}

pub async fn run(args: SoakArgs) -> Result<ExitCode> {
    let store = match super::store_choice(Some(&args.store)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(super::EXIT_BAD_INPUT));
        }
    };
    let workflows = WorkflowRegistry::load_dir(&args.workflows).context("loading workflows")?;
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "soak: {} minutes, seed {seed} (replay with --seed {seed})",
        args.minutes
    );
    let until = Instant::now() + Duration::from_secs(args.minutes * 60);
    let started = Instant::now();
    let (mut rounds, mut runs, mut faults, mut failed) = (0u64, 0usize, 0usize, Vec::new());
    let dir = args.results.join(format!("soak-{seed}"));
    std::fs::create_dir_all(&dir)?;
    let gray = match &store {
        runner::StoreChoice::PgServer => Gray::LinksAndFreeze,
        runner::StoreChoice::PgUrl(_) => Gray::Links,
        _ => Gray::None,
    };
    // A disk of the runner's needs root (a tmpfs mount).
    let disk = !matches!(store, runner::StoreChoice::PgUrl(_)) && nix::unistd::geteuid().is_root();
    while Instant::now() < until {
        let text = round_toml(rounds, seed, gray, disk);
        let file = dir.join(format!("round-{rounds}.toml"));
        std::fs::write(&file, &text)?;
        let scn = Scenario::parse(&file, &text, &workflows)?;
        let planned_faults = scn.plan(seed).faults.len();
        let opts = RunnerOpts {
            seed: seed.wrapping_add(rounds),
            store: store.clone(),
            results_dir: dir.clone(),
            workflows: args.workflows.clone(),
            binary: None,
            verbose: false,
            driver: None,
            image: None,
        };
        let outcome = tokio::select! {
            o = runner::run(scn, &opts) => o.with_context(|| format!("soak round {rounds}"))?,
            _ = super::interrupted() => {
                eprintln!("interrupted after {rounds} rounds");
                break;
            }
        };
        let n_runs = outcome.normalized["runs"].as_array().map_or(0, Vec::len);
        let fired = outcome.normalized["faults"]
            .as_array()
            .map_or(0, |f| f.iter().filter(|x| x["fired"] == true).count());
        runs += n_runs;
        faults += fired;
        println!(
            "  round {rounds}: {fired}/{planned_faults} faults, {n_runs} runs, {} ({})",
            super::report::verdict_text(outcome.verdict),
            outcome.dir.display()
        );
        if outcome.verdict == Verdict::Fail {
            println!("{}", outcome.summary);
            failed.push(rounds);
        }
        rounds += 1;
    }
    println!(
        "soak: {rounds} rounds in {:.1} min, {runs} runs completed, {faults} faults injected, {} rounds with violations{}",
        started.elapsed().as_secs_f64() / 60.0,
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                " (round {})",
                failed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAIL)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rounds_are_valid_scenarios_and_follow_the_seed() {
        let reg = crate::engine::workflow::WorkflowRegistry::load_dir(std::path::Path::new(
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/workflows"),
        ))
        .unwrap();
        use super::Gray;
        let (mut drew_gray, mut drew_disk) = (false, false);
        for gray in [Gray::None, Gray::Links, Gray::LinksAndFreeze] {
            for disk in [false, true] {
                for round in 0..40 {
                    let t = super::round_toml(round, 42, gray, disk);
                    assert_eq!(t, super::round_toml(round, 42, gray, disk));
                    super::Scenario::parse(std::path::Path::new("round.toml"), &t, &reg).unwrap();
                    let has_gray = ["latency", "half_open", "loss", "reset", "cut_after_commit"]
                        .iter()
                        .any(|a| t.contains(&format!("action = \"{a}\"")));
                    assert!(gray != Gray::None || !has_gray, "{t}");
                    let has_disk = t.contains("action = \"disk_full\"")
                        || t.contains("action = \"slow_disk\"");
                    assert!(disk || !has_disk, "{t}");
                    drew_gray |= has_gray;
                    drew_disk |= has_disk;
                }
            }
        }
        assert!(drew_gray, "a PostgreSQL soak draws gray failures");
        assert!(
            drew_disk,
            "a soak on a store the runner places draws full disks"
        );
        assert_ne!(
            super::round_toml(0, 1, Gray::None, true),
            super::round_toml(0, 2, Gray::None, true)
        );
    }
}
