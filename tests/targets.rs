//! The chaos harness pointed at a system Vigil did not build: DBOS Transact
//! 3.4.0 (fixtures/targets/dbos, installed by scripts/install-dbos.sh into
//! target/dbos-venv), on a throwaway PostgreSQL server per scenario.
//!
//! Every scenario in scenarios/targets/dbos gets a verdict whose normalized
//! report is snapshotted: what DBOS did, finding or not (docs/targets.md
//! writes them down). The teeth: each checker that applies to a target
//! catches a DBOS app with a bug switched on (`VIGIL_TARGET_BUGS`), on the
//! scenario where the same checker passes with the bug off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    output: String,
    normalized: Value,
    report: Value,
    dir: Option<PathBuf>,
    _results: tempfile::TempDir,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether DBOS and PostgreSQL are here: in CI their absence is a failure;
/// elsewhere the tests say loudly that they did not run.
fn ready() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let venv = root().join("target/dbos-venv/bin/python");
    let pg = std::env::var("VIGIL_TEST_PG_URL").is_ok_and(|u| !u.is_empty());
    if venv.exists() && pg {
        return true;
    }
    let why = if venv.exists() {
        "PostgreSQL's binaries (VIGIL_TEST_PG_URL unset: run under scripts/with-pg.sh)"
    } else {
        "target/dbos-venv (run scripts/install-dbos.sh)"
    };
    assert!(
        !ci,
        "CI=true but {why} is missing: run ./scripts/test-all.sh"
    );
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "NOTE: DBOS target scenarios NOT run: no {why}"
    );
    false
}

fn scenario(name: &str) -> PathBuf {
    root()
        .join("scenarios/targets/dbos")
        .join(format!("{name}.toml"))
}

fn walk(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            if let Some(f) = walk(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|f| f == name) {
            return Some(p);
        }
    }
    None
}

/// `vigil chaos run FILE --store postgres` from another directory (a
/// scenario finds its workflows and target by itself), with `bugs` on in
/// the DBOS workers.
fn chaos(file: &Path, bugs: Option<&str>) -> Run {
    chaos_with(file, bugs, &[])
}

fn chaos_with(file: &Path, bugs: Option<&str>, extra: &[&str]) -> Run {
    let results = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.args(["chaos", "run"])
        .arg(file)
        .args(["--seed", "20261204", "--store", "postgres", "--quiet"])
        .arg("--results")
        .arg(results.path())
        .args(extra)
        .current_dir(std::env::temp_dir())
        .env_remove("VIGIL_TARGET_BUGS");
    if let Some(b) = bugs {
        cmd.env("VIGIL_TARGET_BUGS", b);
    }
    let out = cmd.output().expect("run vigil chaos");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report_file = walk(results.path(), "report.json");
    let report: Value = report_file
        .as_ref()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .unwrap_or(Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        output,
        normalized: report.get("normalized").cloned().unwrap_or(Value::Null),
        report,
        dir: report_file.and_then(|p| p.parent().map(Path::to_owned)),
        _results: results,
    }
}

fn status(r: &Run, check: &str) -> String {
    r.normalized["checks"][check]
        .as_str()
        .unwrap_or("missing")
        .to_owned()
}

fn evidence(r: &Run, check: &str) -> String {
    r.report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == check)
        .map(|c| c["evidence"].to_string())
        .unwrap_or_default()
}

/// Run a shipped DBOS scenario: its exit code is its verdict's (0 pass,
/// 1 fail), and its normalized report is the snapshot.
fn shipped(name: &str, code: i32) -> Run {
    let r = chaos(&scenario(name), None);
    assert_eq!(r.code, code, "{name}: {}", r.output);
    insta::assert_json_snapshot!(format!("dbos-{name}"), r.normalized);
    r
}

/// The checks a target cannot give evidence for say why, never pass.
fn assert_store_checks_not_applicable(r: &Run) {
    for c in [
        "raw_outputs_downstream",
        "no_healthy_reaped",
        "retries_agree",
        "claimed_once",
        "fencing",
        "no_false_deaths",
        "stream_exactly_once",
    ] {
        assert_eq!(status(r, c), "not_applicable", "{c}: {}", r.output);
    }
}

#[test]
fn kill_and_restart_with_the_same_executor_id_recovers_every_workflow() {
    if !ready() {
        return;
    }
    let r = shipped("kill-restart", 0);
    assert_store_checks_not_applicable(&r);
    assert!(
        r.output.contains("first step executed after the fault"),
        "{}",
        r.output
    );
    // The saved run re-checks to the same verdict, target and all.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["chaos", "check"])
        .arg(r.dir.as_ref().unwrap())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("reproduced"), "{text}");
}

#[test]
fn a_killed_executor_that_never_returns_strands_its_workflows() {
    if !ready() {
        return;
    }
    let r = shipped("kill-no-restart", 1);
    assert_eq!(status(&r, "terminal_once"), "fail", "{}", r.output);
    assert_eq!(status(&r, "death_detected"), "fail", "{}", r.output);
}

#[test]
fn a_paused_worker_goes_on_where_it_was() {
    if !ready() {
        return;
    }
    shipped("pause", 0);
}

#[test]
fn a_store_outage_is_waited_out() {
    if !ready() {
        return;
    }
    shipped("store-outage", 0);
}

#[test]
fn a_store_freeze_is_waited_out() {
    if !ready() {
        return;
    }
    shipped("store-freeze", 0);
}

#[test]
fn a_retry_budget_kept_in_memory_is_exceeded_across_a_crash() {
    if !ready() {
        return;
    }
    let r = shipped("kill-between-retries", 1);
    assert_eq!(status(&r, "executions_bounded"), "fail", "{}", r.output);
}

/// The side-by-side of docs/targets.md: the same scenarios, workflows,
/// faults and checks on Vigil's own pods (`--vigil`) pass, every check that
/// DBOS cannot be judged on included.
#[test]
fn the_same_scenarios_pass_on_vigils_own_engine() {
    if !ready() {
        return;
    }
    let r = chaos_with(&root().join("scenarios/targets/dbos"), None, &["--vigil"]);
    assert_eq!(r.code, 0, "{}", r.output);
    assert!(
        r.output
            .contains("chaos: 6 passed, 0 failed, 0 unknown, 0 not applicable"),
        "{}",
        r.output
    );
}

/// With `bug` on in the DBOS app, `check` fails on kill-restart (where it
/// passes with the bug off: `kill_and_restart_with_the_same_executor_id...`),
/// and its evidence says `needle`.
fn teeth(bug: &str, check: &str, needle: &str) {
    if !ready() {
        return;
    }
    let r = chaos(&scenario("kill-restart"), Some(bug));
    assert_eq!(r.code, 1, "{bug}: {}", r.output);
    assert_eq!(status(&r, check), "fail", "{bug}: {}", r.output);
    let ev = evidence(&r, check);
    assert!(ev.contains(needle), "{bug}: {check}: {ev}");
}

#[test]
fn a_step_that_skips_its_checkpoint_is_caught_by_executions_bounded() {
    teeth(
        "skip_checkpoint",
        "executions_bounded",
        "executed again after it succeeded",
    );
}

#[test]
fn a_restart_that_does_not_recover_is_caught_by_death_detected() {
    teeth("no_recovery", "death_detected", "never ended");
}

#[test]
fn a_status_api_that_changes_a_terminal_state_is_caught_by_terminal_once() {
    teeth(
        "flip_status",
        "terminal_once",
        "clients saw different terminal states",
    );
}

#[test]
fn a_status_api_that_revives_a_finished_run_is_caught_by_no_ghosts() {
    teeth("ghost_status", "no_ghosts", "then the API saw running");
}

/// `vigil chaos target-check` runs the contract's clauses against two
/// workers: the DBOS target keeps them all; a worker that reports a pod
/// name of its own to the witness breaks the witness clause, and says so.
#[test]
fn target_check_holds_a_worker_to_the_contract() {
    if !ready() {
        return;
    }
    let dir = root().join("fixtures/targets/dbos");
    let check = |target: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["chaos", "target-check"])
            .arg(target)
            .arg("--workflows")
            .arg(dir.join("workflows"))
            .args(["--workflow", "dbos_fan_in", "--store", "postgres"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(&dir.join("target.toml"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("10 clauses kept, 0 broken"), "{text}");

    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("target.toml");
    let text = std::fs::read_to_string(dir.join("target.toml"))
        .unwrap()
        .replace("{dir}", &dir.display().to_string())
        .replace("\"{pod_id}\"", "\"worker-{pod_id}\"");
    std::fs::write(&broken, text).unwrap();
    let (code, text) = check(&broken);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  witness") && text.contains("says pod \"worker-pod-1\""),
        "{text}"
    );
}
