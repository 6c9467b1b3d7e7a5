//! Unit tests of scenario parsing and planning.

use super::*;

fn reg() -> WorkflowRegistry {
    WorkflowRegistry::load_dir(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/workflows"
    )))
    .unwrap()
}

const OK: &str = r#"
name = "s"
[cluster]
pods = 3
[[workload]]
name = "r"
workflow = "slow_stream"
runs = 2
attach = ["early", "late"]
[[fault]]
action = "kill"
target = "owner_of:r1"
after_chunk = 2
run = "r1"
[[fault]]
action = "pause"
target = "random"
at_ms = 500
duration_ms = 100
"#;

#[test]
fn the_same_seed_gives_the_same_plan() {
    let s = Scenario::parse(Path::new("s.toml"), OK, &reg()).unwrap();
    assert_eq!(s.plan(7), s.plan(7));
    assert_eq!(s.plan(7).faults[0].target, Target::OwnerOf("r1".into()));
    let differs = (0..20).any(|seed| s.plan(seed).faults[1].target != s.plan(7).faults[1].target);
    assert!(differs, "the seed drives the random draws");
}

#[test]
fn malformed_scenarios_name_file_line_and_field() {
    let cases = [
        (
            OK.replace("pods = 3", "pods = 3\nbogus = 1"),
            "s.toml",
            "bogus",
        ),
        (
            OK.replace("\"slow_stream\"", "\"nope\""),
            "s.toml:7: workload[0].workflow",
            "unknown workflow \"nope\"",
        ),
        (
            OK.replace("owner_of:r1", "owner_of:r9"),
            "s.toml:12: fault[0].target",
            "no run \"r9\"",
        ),
        (
            OK.replace("target = \"random\"", "target = \"pod-7\""),
            "s.toml:17: fault[1].target",
            "pod-7",
        ),
        (
            OK.replace("after_chunk = 2\n", ""),
            "fault[0].at_ms|after_chunk|after_end",
            "exactly one trigger",
        ),
        (
            OK.replace("duration_ms = 100\n", ""),
            "fault[1].duration_ms",
            "pause needs",
        ),
        (
            OK.replace("action = \"kill\"", "action = \"explode\""),
            "s.toml",
            "explode",
        ),
    ];
    for (text, at, problem) in cases {
        let e = Scenario::parse(Path::new("s.toml"), &text, &reg())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(at) && e.contains(problem),
            "{at:?} / {problem:?} not in: {e}"
        );
    }
}
