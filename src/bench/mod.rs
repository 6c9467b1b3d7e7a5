//! `vigil bench`: whole-process measurements with real pods (child
//! processes), real HTTP clients and real signals. Each subcommand prints a
//! human line on stderr and one JSON object on stdout (or `--out FILE`), so
//! `scripts/bench.sh` can put Vigil and the DBOS anchor side by side.
//!
//! These are measurements, never assertions: nothing here fails because a
//! number is slow. A subcommand fails only when the system under test does
//! something wrong (a run that does not succeed, a step executed twice).

mod commits;
mod recovery;
mod seed;
mod throughput;

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;

pub use commits::CommitsArgs;
pub use recovery::RecoveryArgs;
pub use seed::SeedArgs;
pub use throughput::ThroughputArgs;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Runs/s, steps/s and run latency: N runs of a 5-step workflow through P pods, C clients.
    Throughput(ThroughputArgs),
    /// The commit limit: one-row INSERT + commit per second through sqlx, C clients.
    Commits(CommitsArgs),
    /// Detection and recovery latency: SIGKILL (or SIGTERM) the owner of a streaming run K times.
    Recovery(RecoveryArgs),
    /// Fill a store with N runs (to measure the console against).
    Seed(SeedArgs),
}

pub async fn main(cmd: BenchCmd) -> Result<ExitCode> {
    let report = match cmd {
        BenchCmd::Throughput(a) => {
            let out = a.out.clone();
            (throughput::run(a).await?, out)
        }
        BenchCmd::Commits(a) => {
            let out = a.out.clone();
            (commits::run(a).await?, out)
        }
        BenchCmd::Recovery(a) => {
            let out = a.out.clone();
            (recovery::run(a).await?, out)
        }
        BenchCmd::Seed(a) => {
            seed::run(a).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let (value, out) = report;
    let text = serde_json::to_string_pretty(&value)?;
    match out {
        Some(path) => std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    let failed = value.get("failures").and_then(|f| f.as_u64()).unwrap_or(0);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A store made for one measurement and dropped after it: a file in a
/// temporary directory for `sqlite`, a fresh database on the server for a
/// `postgres://` URL (the URL names the server; its database is only used to
/// connect).
pub struct ScratchStore {
    pub target: String,
    pub kind: &'static str,
    _dir: Option<tempfile::TempDir>,
    drop_db: Option<(String, String)>,
}

impl ScratchStore {
    pub async fn create(spec: &str, label: &str) -> Result<ScratchStore> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let (target, db) = crate::cluster::pgserver::create_scratch_database(
                spec,
                &format!("vigil_bench_{label}"),
            )
            .await?;
            Ok(ScratchStore {
                target,
                kind: "postgres",
                _dir: None,
                drop_db: Some((spec.to_owned(), db)),
            })
        } else if spec == "sqlite" {
            let dir = tempfile::Builder::new()
                .prefix("vigil-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            let target = dir.path().join("bench.db").display().to_string();
            Ok(ScratchStore {
                target,
                kind: "sqlite",
                _dir: Some(dir),
                drop_db: None,
            })
        } else {
            anyhow::bail!(
                "--store {spec:?}: expected `sqlite` (a scratch file) or a postgres:// URL of a server \
                 (a scratch database is created on it and dropped after)"
            )
        }
    }

    pub async fn cleanup(mut self) {
        if let Some((admin, db)) = self.drop_db.take() {
            crate::cluster::pgserver::drop_database(&admin, &db).await;
        }
    }
}

/// Nearest-rank percentile of sorted values (p in 0..=100).
pub fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `{p50, p99, max, mean, n}` of a series, in its own unit, rounded to 0.01.
pub fn summary(values: &[f64]) -> serde_json::Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let r = |x: Option<f64>| x.map(|x| (x * 100.0).round() / 100.0);
    let mean = (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    serde_json::json!({
        "n": v.len(),
        "p50": r(pct(&v, 50.0)),
        "p99": r(pct(&v, 99.0)),
        "max": r(v.last().copied()),
        "mean": r(mean),
    })
}

/// Peak resident set size of a process (VmHWM), in KiB; None when it is gone.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The machine, for the report.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "vigil": env!("CARGO_PKG_VERSION"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), Some(50.0));
        assert_eq!(pct(&v, 99.0), Some(99.0));
        assert_eq!(pct(&v, 100.0), Some(100.0));
        assert_eq!(pct(&[7.0], 99.0), Some(7.0));
        assert_eq!(pct(&[], 50.0), None);
        let s = summary(&[3.0, 1.0, 2.0]);
        assert_eq!(s["p50"], 2.0);
        assert_eq!(s["max"], 3.0);
        assert_eq!(s["n"], 3);
    }

    #[test]
    fn peak_rss_of_this_process_is_read() {
        let kib = peak_rss_kib(std::process::id()).unwrap();
        assert!(kib > 100, "{kib}");
        assert_eq!(peak_rss_kib(u32::MAX), None);
    }
}
