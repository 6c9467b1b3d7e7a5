//! The Docker driver, run for real on this machine's engine: the shipped
//! Docker scenarios pass and their normalized reports match the snapshots
//! (the process driver's PostgreSQL snapshot where the scenario is the same
//! one), nothing labelled by Vigil is left after a run, nor after a runner
//! SIGKILLed mid-scenario followed by `vigil chaos clean`, and the errors
//! for an unreachable engine, a missing image and a partition without
//! Docker name their fix.
//!
//! Without an engine these tests say so and do nothing, except under
//! `CI=true`, where a missing engine is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The scenarios share two cores and a timing-sensitive engine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const SEED: u64 = 20261123;

/// As in tests/chaos.rs: scenarios whose outcome, though it must pass,
/// depends on chance the seed does not govern (which packets a lossy link
/// drops). Their verdict is asserted; their normalized report is not
/// snapshotted.
const BY_CHANCE: &[&str] = &["lossy-link"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The engine, or None (a skip) when there is none and CI is not set.
fn engine() -> Option<bollard::Docker> {
    match rt().block_on(vigil::cluster::docker::connect()) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "CI=true but the Docker engine is unreachable: {e}"
            );
            eprintln!("skipped: no Docker engine ({e})");
            None
        }
    }
}

fn leftovers(docker: &bollard::Docker) -> vigil::cluster::docker::Swept {
    rt().block_on(vigil::cluster::docker::leftovers(docker, None))
        .unwrap()
}

fn vigil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.env_remove("VIGIL_FAULTS")
        .env_remove("VIGIL_CHAOS_DRIVER")
        .env_remove("VIGIL_CHAOS_IMAGE");
    c
}

fn chaos_run(file: &Path, results: &Path, extra: &[&str]) -> Command {
    let mut cmd = vigil();
    cmd.args(["chaos", "run"])
        .arg(file)
        .args(["--seed", &SEED.to_string(), "--quiet", "--results"])
        .arg(results)
        .arg("--workflows")
        .arg(root().join("fixtures/workflows"))
        .args(extra);
    cmd
}

fn walk(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = walk(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|f| f == name) {
            return Some(p);
        }
    }
    None
}

#[test]
fn docker_scenarios_pass_and_leave_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(docker) = engine() else { return };
    let files = vigil::chaos::scenario::scenario_files(&root().join("scenarios/docker")).unwrap();
    assert!(
        files.len() >= 4,
        "pod death, graceful shutdown, pause and partition at least"
    );
    let mut failures = Vec::new();
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let results = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = chaos_run(&f, results.path(), &[]).output().unwrap();
        let took = started.elapsed();
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{name}: exit {:?} in {took:.1?}", out.status.code());
        let left = leftovers(&docker);
        assert!(
            left.is_empty(),
            "{name}: left behind after the run: {left:?}"
        );
        if out.status.code() != Some(0) {
            failures.push(format!("{name}: exit {:?}\n{output}", out.status.code()));
            continue;
        }
        let report: Value = walk(results.path(), "report.json")
            .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
            .unwrap_or(Value::Null);
        let normalized = report["normalized"].clone();
        let history =
            std::fs::read_to_string(walk(results.path(), "history.jsonl").unwrap()).unwrap();
        assert!(
            history.contains(r#""driver":"docker""#),
            "{name} did not run on the docker driver"
        );
        if BY_CHANCE.contains(&name.as_str()) {
            // Passed (exit 0 above); which run moved where is chance.
            continue;
        }
        if root()
            .join("scenarios")
            .join(format!("{name}.toml"))
            .exists()
        {
            // The same scenario on the process driver: the same report.
            insta::with_settings!({
                snapshot_suffix => "postgres",
                prepend_module_to_snapshot => false,
                omit_expression => true,
            }, {
                insta::assert_json_snapshot!(format!("chaos__{name}"), normalized);
            });
        } else {
            insta::with_settings!({ snapshot_suffix => "postgres", omit_expression => true }, {
                insta::assert_json_snapshot!(name.clone(), normalized);
            });
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_partition_is_detected_within_the_bound_and_resumed_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if engine().is_none() {
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let out = chaos_run(
        &root().join("scenarios/docker/network-partition.toml"),
        results.path(),
        &[],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(walk(results.path(), "report.json").unwrap()).unwrap(),
    )
    .unwrap();
    // Detected dead within detection_bound_ms (the check), and the cut
    // owner's run claimed exactly once, by one survivor, from it.
    assert_eq!(report["normalized"]["checks"]["death_detected"], "pass");
    assert_eq!(report["normalized"]["checks"]["claimed_once"], "pass");
    let history = std::fs::read_to_string(walk(results.path(), "history.jsonl").unwrap()).unwrap();
    let events: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kind = |e: &Value| e["kind"].as_str().unwrap_or_default().to_owned();
    let fault = events.iter().find(|e| kind(e) == "fault").unwrap();
    let cut = fault["pod"].as_str().unwrap().to_owned();
    let r1 = fault["run_id"].as_str().unwrap().to_owned();
    let claims: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "claim" && e["run_id"] == r1.as_str())
        .filter(|e| e["from"] == cut.as_str())
        .collect();
    assert_eq!(claims.len(), 1, "r1 resumed once: {claims:?}");
    assert!(
        events
            .iter()
            .any(|e| kind(e) == "heal" && e["action"] == "reconnect"),
        "the cut was healed"
    );
    assert!(text.contains("recorded dead after"), "{text}");
}

/// Run `file` and SIGKILL the runner once `mid` says the scenario is where
/// it should be: what it leaves is labelled, and `vigil chaos clean`
/// removes all of it. Returns the runner's pid.
fn sigkill_mid_scenario(
    docker: &bollard::Docker,
    file: &str,
    mut mid: impl FnMut() -> bool,
) -> u32 {
    let results = tempfile::tempdir().unwrap();
    let mut runner = chaos_run(&root().join(file), results.path(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !mid() {
        assert!(
            Instant::now() < deadline,
            "{file} never got there: {:?}",
            leftovers(docker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    runner.kill().unwrap(); // SIGKILL: no watchdog, no drop, nothing runs.
    runner.wait().unwrap();
    let left = leftovers(docker);
    assert!(
        !left.containers.is_empty() && !left.networks.is_empty(),
        "a SIGKILLed runner cannot clean up: {left:?}"
    );
    let out = vigil().args(["chaos", "clean"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("removed container"), "{text}");
    assert!(text.contains("removed network"), "{text}");
    let left = leftovers(docker);
    assert!(left.is_empty(), "left after clean: {left:?}");
    runner.id()
}

#[test]
fn a_sigkilled_runner_leaves_what_clean_removes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(docker) = engine() else { return };
    // Mid-scenario: PostgreSQL and the three pods up.
    let _ = sigkill_mid_scenario(
        &docker,
        "scenarios/docker/pause-longer-than-lease.toml",
        || leftovers(&docker).containers.len() >= 4,
    );
}

/// The PostgreSQL container's store disk as the host reaches it (through
/// its init process), if a run has one up. (A client of its own, made in
/// the runtime that uses it: a pooled connection of another runtime's hung
/// the inspect.)
fn container_disk() -> Option<PathBuf> {
    rt().block_on(async {
        let docker = vigil::cluster::docker::connect().await.ok()?;
        let name = vigil::cluster::docker::leftovers(&docker, None)
            .await
            .ok()?
            .containers
            .into_iter()
            .find(|c| c.ends_with("-postgres"))?;
        let info = docker
            .inspect_container(name.trim_start_matches('/'), None)
            .await
            .ok()?;
        let pid = info.state?.pid.filter(|p| *p > 0)?;
        Some(PathBuf::from(format!(
            "/proc/{pid}/root{}",
            vigil::cluster::docker::env::PG_DISK
        )))
    })
}

#[test]
fn a_runner_sigkilled_mid_disk_full_leaves_what_clean_removes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(docker) = engine() else { return };
    // Mid-fault: the ballast has filled the container's tmpfs. The disk is
    // the container's own (nothing mounted on the host): it goes with it.
    let mut disk = None;
    let runner = sigkill_mid_scenario(
        &docker,
        "scenarios/docker/disk-full-mid-stream.toml",
        || {
            let Some(d) = container_disk() else {
                return false;
            };
            let full = nix::sys::statvfs::statvfs(&d).is_ok_and(|s| s.blocks_available() == 0);
            disk = Some(d);
            full
        },
    );
    let disk = disk.unwrap();
    assert!(!disk.exists(), "{} outlived its container", disk.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("/tmp/vigil-disk-{runner}-")),
        "a store disk of the runner's on the host: {mounts}"
    );
}

#[test]
fn an_unreachable_engine_names_the_fix() {
    let results = tempfile::tempdir().unwrap();
    let out = chaos_run(
        &root().join("scenarios/docker/pod-death-mid-stream.toml"),
        results.path(),
        &[],
    )
    .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock")
            && err.contains("fix: start the engine"),
        "{err}"
    );
}

#[test]
fn a_missing_image_names_the_fix() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(docker) = engine() else { return };
    let results = tempfile::tempdir().unwrap();
    let out = chaos_run(
        &root().join("scenarios/docker/pod-death-mid-stream.toml"),
        results.path(),
        &["--image", "vigil-pod:does-not-exist"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains("image vigil-pod:does-not-exist is not in the Docker engine")
            && err.contains("vigil chaos image build"),
        "{err}"
    );
    assert!(leftovers(&docker).is_empty());
}

#[test]
fn a_partition_needs_the_docker_driver() {
    let results = tempfile::tempdir().unwrap();
    let out = chaos_run(
        &root().join("scenarios/docker/network-partition.toml"),
        results.path(),
        &["--driver", "process"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(254), "{err}");
    assert!(err.contains("needs the docker driver"), "{err}");
    // In the file itself, too.
    let text = std::fs::read_to_string(root().join("scenarios/docker/network-partition.toml"))
        .unwrap()
        .replace("driver = \"docker\"", "");
    let reg =
        vigil::engine::workflow::WorkflowRegistry::load_dir(&root().join("fixtures/workflows"))
            .unwrap();
    let e = vigil::chaos::scenario::Scenario::parse(Path::new("p.toml"), &text, &reg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fault[0].action") && e.contains("driver = \"docker\""),
        "{e}"
    );
}

#[test]
fn images_build_from_local_files() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if engine().is_none() {
        return;
    }
    let out = vigil().args(["chaos", "image", "build"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("vigil-pod:"), "{text}");
    assert!(text.contains("vigil-postgres:"), "{text}");
}

/// The teeth on the Docker driver: pod death, partition, a
/// skewed clock, a slow consumer, a laggy and a half-open store link, a
/// full disk and a frozen database container, each with a bug switched on
/// in the pod containers, caught by the check meant for it.
#[cfg(feature = "fault-injection")]
#[test]
fn docker_teeth_catch_their_bugs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if engine().is_none() {
        return;
    }
    for (file, bug, check, needle) in [
        (
            "scenarios/docker/pod-death-mid-stream.toml",
            "skip_purge",
            "stream_exactly_once",
            "the workflow says",
        ),
        (
            "scenarios/docker/network-partition.toml",
            "blind_survivor",
            "death_detected",
            // Nobody probes it dead: at best it finds out itself, after the cut.
            "recorded dead",
        ),
        (
            "scenarios/docker/slow-consumer.toml",
            "unbounded_stream",
            "consumer_isolated",
            "resident memory grew",
        ),
        (
            "scenarios/docker/hung-commit-reply.toml",
            "no_store_deadline",
            "terminal_once",
            "still running after the quiet period",
        ),
        (
            "scenarios/docker/clock-skew.toml",
            "host_clock_leases",
            "no_healthy_reaped",
            "with no fault on it or its owner",
        ),
        (
            // No renew fits the owner's lease behind its laggy proxy: a pod
            // that does not fence itself by its own clock stays ready.
            "scenarios/docker/laggy-owner.toml",
            "no_self_fence",
            "self_fenced",
            "still answered ready",
        ),
        (
            // The same bug behind a half-open link: every packet between
            // the owner's container and its proxy dropped in the
            // container's network namespace (on the process driver too,
            // seed 7, the check fails the same way).
            "scenarios/docker/half-open-owner.toml",
            "no_self_fence",
            "self_fenced",
            "still answered ready",
        ),
        (
            // The PostgreSQL container's disk full for 6 s (the chaos
            // database's tablespace): a driver that gives a write up at
            // the first store error claims the run back and runs the
            // step's body again, and every round spends an attempt (a row
            // update still lands in a page with room, a chunk's insert
            // needs a new page), as on the process driver.
            "scenarios/docker/disk-full-mid-stream.toml",
            "no_store_wait",
            "outcomes_explained",
            "had to succeed",
        ),
        (
            // The PostgreSQL container paused 6 s under a 1 s liveness
            // timeout: at the thaw every liveness lock is free at once.
            "scenarios/docker/freeze-short-liveness.toml",
            "lock_release_is_death",
            "no_false_deaths",
            "was declared dead by",
        ),
    ] {
        let results = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = chaos_run(&root().join(file), results.path(), &[])
            .env("VIGIL_FAULTS", bug)
            .output()
            .unwrap();
        eprintln!(
            "{bug} on {file}: exit {:?} in {:.1?}",
            out.status.code(),
            started.elapsed()
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{bug}: a failed check\n{text}");
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(walk(results.path(), "report.json").unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            report["normalized"]["checks"][check], "fail",
            "{bug}: {check} should catch it\n{text}"
        );
        let evidence = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == check)
            .map(|c| c["evidence"].to_string())
            .unwrap_or_default();
        assert!(evidence.contains(needle), "{bug}: {evidence}");
    }
}
