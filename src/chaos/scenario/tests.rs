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
            OK.replace("pods = 3", "pods = 3\nstore = \"postgres\"")
                .replace("action = \"pause\"", "action = \"write_lock\""),
            "fault[1].action",
            "write_lock holds SQLite's one write lock",
        ),
        (
            OK.replace("action = \"pause\"", "action = \"write_lock\"")
                .replace("duration_ms = 100\n", ""),
            "fault[1].duration_ms",
            "write_lock needs duration_ms",
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

/// A scenario on a foreign target asks only what a target can give: a
/// shared PostgreSQL, process workers, signal and store faults, no stream;
/// `after_step` must name a witnessed step of the run's workflow.
#[test]
fn target_scenarios_ask_only_what_a_target_offers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("scenarios/targets/dbos");
    let wf = WorkflowRegistry::load_dir(&root.join("fixtures/targets/dbos/workflows")).unwrap();
    let file = dir.join("kill-restart.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let s = Scenario::parse(&file, &text, &wf).unwrap();
    let t = s.target.as_ref().expect("a target");
    assert_eq!(t.name, "dbos");
    assert_eq!(
        s.plan(1).faults[0].trigger,
        Trigger::AfterStep {
            run: "r1".into(),
            step: "s2".into()
        }
    );
    let cases = [
        (
            text.replace("store = \"postgres\"", "store = \"sqlite\""),
            "cluster.store",
        ),
        (
            text.replace(
                "to = \"pod-1\"\n\n[[workload]]",
                "to = \"pod-1\"\nattach = [\"early\"]\n\n[[workload]]",
            ),
            "workload[0].attach",
        ),
        (
            text.replace("action = \"kill\"", "action = \"stall\""),
            "fault[0].action",
        ),
        (
            text.replace("after_step = \"s2\"", "after_chunk = 2"),
            "fault[0].after_chunk",
        ),
        (
            text.replace("after_step = \"s2\"", "after_step = \"s9\""),
            "fault[0].after_step",
        ),
        (
            text.replace("target.toml\"", "nothing.toml\""),
            "cluster.target",
        ),
    ];
    for (bad, field) in cases {
        let e = Scenario::parse(&file, &bad, &wf).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
        assert!(e.contains("kill-restart.toml:"), "{e}");
    }
}

/// A scenario of one link fault on PostgreSQL: `cluster` and `fault` are
/// spliced in.
fn link_scenario(cluster: &str, fault: &str) -> String {
    format!(
        "name = \"l\"\n[cluster]\npods = 3\nstore = \"postgres\"\n{cluster}\n\
         [[workload]]\nname = \"r\"\nworkflow = \"slow_stream\"\n\
         [[fault]]\nat_ms = 0\nduration_ms = 1000\n{fault}\n"
    )
}

#[test]
fn link_faults_are_checked_strictly() {
    let parse = |cluster: &str, fault: &str| {
        Scenario::parse(Path::new("l.toml"), &link_scenario(cluster, fault), &reg())
    };
    let s = parse(
        "",
        "action = \"latency\"\nlink = { direction = \"up\", ms = 125, jitter_ms = 50 }",
    )
    .unwrap();
    let planned = s.plan(1).faults[0].link.clone().unwrap();
    assert_eq!(
        (planned.direction, planned.ms, planned.jitter_ms),
        (Direction::Up, 125, 50)
    );
    assert_eq!(
        s.plan(1).faults[0].target,
        Target::None,
        "no target: every pod's link"
    );
    for (cluster, fault, needle) in [
        ("", "action = \"latency\"", "latency needs link.ms"),
        (
            "",
            "action = \"latency\"\nlink = { ms = 10, jitter_ms = 20 }",
            "jitter_ms may not exceed",
        ),
        (
            "",
            "action = \"reset\"\nlink = { ms = 10 }",
            "reset takes no link.ms",
        ),
        ("", "action = \"loss\"\nlink = { percent = 0 }", "1 to 100"),
        (
            "",
            "action = \"kill\"\ntarget = \"pod-1\"\nlink = { ms = 10 }",
            "kill takes no link",
        ),
        (
            "",
            "action = \"latency\"\nlink = { ms = 10, speed = 1 }",
            "speed",
        ),
    ] {
        let err = parse(cluster, fault).unwrap_err().to_string();
        assert!(err.contains(needle), "{fault}: {err}");
        assert!(err.starts_with("l.toml:"), "names the file: {err}");
    }
    // The proxy's faults run under the Docker driver too, and so do the
    // packet faults (in each pod container's network namespace).
    parse("driver = \"docker\"", "action = \"cut_after_commit\"").unwrap();
    parse("driver = \"docker\"", "action = \"half_open\"").unwrap();
    parse(
        "driver = \"docker\"",
        "action = \"loss\"\nlink = { percent = 20 }",
    )
    .unwrap();
    // A link is the pod's link to PostgreSQL.
    let sqlite = link_scenario("", "action = \"reset\"").replace("store = \"postgres\"", "");
    let err = Scenario::parse(Path::new("l.toml"), &sqlite, &reg()).unwrap_err();
    assert!(
        err.to_string().contains("it needs store = \"postgres\""),
        "{err}"
    );
}

#[test]
fn client_links_are_checked_strictly_and_run_on_any_store() {
    let on_sqlite = |fault: &str| {
        let text = link_scenario("", fault).replace("store = \"postgres\"", "");
        Scenario::parse(Path::new("c.toml"), &text, &reg())
    };
    // A slow consumer: the run's client link, on SQLite, to every pod.
    let s = on_sqlite(
        "action = \"bandwidth\"\nrun = \"r1\"\n\
         link = { on = \"client\", direction = \"down\", bytes_per_sec = 2048 }",
    )
    .unwrap();
    let f = &s.plan(1).faults[0];
    assert!(f.on_client_link() && !f.on_store_link());
    assert_eq!(
        f.target,
        Target::None,
        "no target: the run's link to every pod"
    );
    // With a target pod, and on the Docker driver.
    on_sqlite(
        "action = \"latency\"\nrun = \"r1\"\ntarget = \"pod-2\"\n\
         link = { on = \"client\", ms = 200, jitter_ms = 50 }",
    )
    .unwrap();
    Scenario::parse(
        Path::new("c.toml"),
        &link_scenario(
            "driver = \"docker\"",
            "action = \"reset\"\nrun = \"r1\"\nlink = { on = \"client\" }",
        ),
        &reg(),
    )
    .unwrap();
    for (fault, field, needle) in [
        (
            "action = \"bandwidth\"\nlink = { on = \"client\", bytes_per_sec = 10 }",
            "fault[0].run",
            "needs the run whose clients it slows",
        ),
        (
            "action = \"loss\"\nrun = \"r1\"\nlink = { on = \"client\", percent = 5 }",
            "fault[0].link",
            "a client link (link.on = \"client\") takes",
        ),
        (
            "action = \"cut_after_commit\"\nrun = \"r1\"\nlink = { on = \"client\" }",
            "fault[0].link",
            "is a store link fault",
        ),
        (
            "action = \"bandwidth\"\nrun = \"r1\"\nlink = { on = \"client\" }",
            "fault[0].link",
            "bandwidth needs link.bytes_per_sec",
        ),
        (
            "action = \"latency\"\nrun = \"r9\"\nlink = { on = \"client\", ms = 5 }",
            "fault[0].run",
            "no run \"r9\"",
        ),
        (
            "action = \"latency\"\nrun = \"r1\"\nlink = { on = \"pod\", ms = 5 }",
            "line 14",
            "unknown variant",
        ),
    ] {
        let err = on_sqlite(fault).unwrap_err().to_string();
        assert!(err.starts_with("c.toml:"), "names the file and line: {err}");
        assert!(err.contains(field), "names {field}: {err}");
        assert!(err.contains(needle), "{fault}: {err}");
    }
    // A store link still needs PostgreSQL.
    let err = on_sqlite("action = \"reset\"\nlink = { on = \"store\" }").unwrap_err();
    assert!(err.to_string().contains("store = \"postgres\""), "{err}");
}
