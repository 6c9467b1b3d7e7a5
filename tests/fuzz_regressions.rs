#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every input kept under `tests/fuzz_regressions/TARGET/` goes through the
//! same entry point and checks as the cargo-fuzz target TARGET
//! (`fuzz/fuzz_targets/`, `scripts/fuzz.sh`): what the fuzzer found (fixed
//! since) and hand-picked nasty inputs (deep nesting, huge numbers, invalid
//! UTF-8, NUL bytes).
//!
//! Naming: a scenario or workflow input whose name starts with `ok-` must be
//! accepted; every other one must be refused with an error naming the file
//! (and, for scenarios, the line and field). A pod request whose name starts
//! with a status code (`422-...`) must get that status; every JSON error
//! names its code (`error`).

#[path = "fuzz_regressions/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use vigil::chaos::scenario::Scenario;
use vigil::engine::workflow::{Workflow, WorkflowRegistry};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

fn name(f: &Path) -> String {
    f.file_name().unwrap().to_string_lossy().into_owned()
}

/// Run `check` on every input; report every failing input, not just the first.
fn each(target: &str, check: impl Fn(&Path)) {
    let mut failed = Vec::new();
    for f in inputs(target) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&f)));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", f.display()));
        }
    }
    assert!(failed.is_empty(), "failing inputs:\n{}", failed.join("\n"));
}

#[test]
fn scenario_inputs() {
    let reg = WorkflowRegistry::load_dir(&harness::repo_root().join("fixtures/workflows")).unwrap();
    each("scenario", |f| {
        let bytes = std::fs::read(f).unwrap();
        let want_ok = name(f).starts_with("ok-");
        match std::str::from_utf8(&bytes) {
            Ok(text) => match harness::scenario_text(text) {
                Ok(()) => assert!(want_ok, "accepted"),
                Err(e) => assert!(!want_ok, "refused: {e}"),
            },
            // Not text: `load` refuses it before parsing, naming the file.
            Err(_) => {
                let e = Scenario::load(f, &reg).unwrap_err().to_string();
                assert!(e.starts_with(&f.display().to_string()), "{e}");
                assert!(e.contains("UTF-8"), "{e}");
            }
        }
    });
}

#[test]
fn workflow_inputs() {
    each("workflow", |f| {
        let bytes = std::fs::read(f).unwrap();
        let want_ok = name(f).starts_with("ok-");
        match std::str::from_utf8(&bytes) {
            Ok(text) => match harness::workflow_text(text) {
                Ok(()) => assert!(want_ok, "accepted"),
                Err(e) => assert!(!want_ok, "refused: {e}"),
            },
            Err(_) => {
                let e = Workflow::load(f).unwrap_err().to_string();
                assert!(e.starts_with(&f.display().to_string()), "{e}");
                assert!(e.contains("UTF-8"), "{e}");
            }
        }
    });
}

#[test]
fn pod_request_inputs() {
    each("pod_request", |f| {
        let bytes = std::fs::read(f).unwrap();
        let answer = harness::pod_request_answer(&bytes).expect("an HTTP request");
        let n = name(f);
        if let Some(Ok(want)) = n.get(..3).map(str::parse::<u16>) {
            assert_eq!(answer.status, want, "{answer:?}");
        }
        if answer.status >= 400
            && !answer.body.is_empty()
            && answer.content_type.starts_with("application/json")
        {
            let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert!(
                body["error"].is_string(),
                "an error names its code: {answer:?}"
            );
        }
    });
}

/// The fuzzers' seeds, the shipped files, hold every property (and are
/// accepted: the checks above refuse nothing real).
#[test]
fn shipped_scenarios_and_workflows_pass_the_same_checks() {
    let root = harness::repo_root();
    for dir in ["scenarios", "scenarios/docker", "fixtures/workflows"] {
        for f in vigil::chaos::scenario::scenario_files(&root.join(dir)).unwrap() {
            let text = std::fs::read_to_string(&f).unwrap();
            let r = if dir.starts_with("scenarios") {
                harness::scenario_text_at(&f, &text)
            } else {
                harness::workflow_text(&text)
            };
            if let Err(e) = r {
                panic!("{}: {e}", f.display());
            }
        }
    }
}
