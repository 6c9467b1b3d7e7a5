//! The binary, as an operator uses it: bad input, workflows, switches, and
//! several processes sharing one SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env_remove("VIGIL_STORE")
        .output()
        .expect("run vigil")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_fixture_workflow_is_valid() {
    let o = vigil(&["workflows", "check", "fixtures/workflows"]);
    assert!(o.status.success(), "{}", text(&o));
    for name in [
        "chat_reply",
        "fan_in",
        "flaky_sync",
        "validation_failure",
        "embed_backfill",
    ] {
        assert!(
            text(&o).contains(&format!("({name},")),
            "{name} missing from\n{}",
            text(&o)
        );
    }
}

#[test]
fn a_malformed_workflow_names_file_step_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.toml");
    std::fs::write(
        &f,
        "name = \"b\"\n[[steps]]\nid = \"s\"\nkind = \"emit\"\ninterval_ms = 5\n",
    )
    .unwrap();
    let o = vigil(&["workflows", "check", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("broken.toml")
            && t.contains("steps[0] (s).chunks")
            && t.contains("required by kind"),
        "{t}"
    );
    std::fs::write(&f, "name = \"b\"\n[[steps\n").unwrap();
    let t = text(&vigil(&["workflows", "check", f.to_str().unwrap()]));
    assert!(
        t.contains("broken.toml") && t.contains("line 2"),
        "a TOML syntax error names its line: {t}"
    );
}

#[test]
fn bad_store_locations_are_clear_errors() {
    let o = vigil(&["runs", "--store", "mysql://localhost/x"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unsupported scheme"), "{}", text(&o));
    let o = vigil(&[
        "runs",
        "--store",
        "postgres://vigil:hunter2@127.0.0.1:1/nowhere",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("store unreachable at postgres://vigil:****@127.0.0.1:1/nowhere"),
        "{t}"
    );
    assert!(
        !t.contains("hunter2"),
        "the password never reaches the terminal: {t}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = vigil(&["runs", "--store", dir.path().to_str().unwrap()]);
    assert!(text(&o).contains("is a directory"), "{}", text(&o));
}

#[test]
fn switches_flip_with_an_audit_trail_and_reject_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.db");
    let db = db.to_str().unwrap();
    let o = vigil(&["switch", "list", "--store", db]);
    assert!(
        text(&o).contains("authority.db_fallback    on   default"),
        "{}",
        text(&o)
    );
    let o = vigil(&[
        "switch",
        "set",
        "--store",
        db,
        "authority.db_fallback",
        "off",
        "--reason",
        "incident 42",
        "--who",
        "ops",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("default -> off (by ops: incident 42)"),
        "{}",
        text(&o)
    );
    let o = vigil(&["switch", "audit", "--store", db, "authority.db_fallback"]);
    assert!(
        text(&o).contains("None -> false  by ops: incident 42"),
        "{}",
        text(&o)
    );
    let o = vigil(&[
        "switch",
        "set",
        "--store",
        db,
        "authority.nope",
        "off",
        "--reason",
        "x",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown switch \"authority.nope\"; known: authority.db_fallback"),
        "{}",
        text(&o)
    );
    let o = vigil(&[
        "switch",
        "set",
        "--store",
        db,
        "authority.db_fallback",
        "maybe",
        "--reason",
        "x",
    ]);
    assert!(text(&o).contains("expected on or off"), "{}", text(&o));
}

#[test]
fn several_processes_write_one_sqlite_store_without_losing_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap().to_owned();
    // Six processes start at once (concurrent migrations), each flipping the
    // switch ten times: every write lands and is audited.
    let children: Vec<_> = (0..6)
        .map(|p| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let v = if (p + i) % 2 == 0 { "on" } else { "off" };
                    let who = format!("proc-{p}");
                    let o = vigil(&[
                        "switch",
                        "set",
                        "--store",
                        &db,
                        "authority.db_fallback",
                        v,
                        "--reason",
                        "load",
                        "--who",
                        &who,
                    ]);
                    assert!(o.status.success(), "{}", text(&o));
                }
            })
        })
        .collect();
    for c in children {
        c.join().unwrap();
    }
    let o = vigil(&["switch", "audit", "--store", &db, "authority.db_fallback"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        60,
        "{}",
        text(&o)
    );
}

#[test]
fn help_lists_every_subcommand() {
    let t = text(&vigil(&["--help"]));
    for cmd in ["demo", "workflows", "switch", "runs", "run"] {
        assert!(t.contains(cmd), "{cmd} missing from --help");
    }
}

/// `vigil bench throughput` measures real pods end to end and checks what it
/// measured: every run succeeded, every step ran once.
#[test]
fn bench_throughput_reports_a_checked_measurement() {
    let o = vigil(&[
        "bench",
        "throughput",
        "--store",
        "sqlite",
        "--pods",
        "2",
        "--concurrency",
        "4",
        "--runs",
        "12",
        "--warmup",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["system"], "vigil");
    assert_eq!(v["runs"], 12);
    assert_eq!(v["steps_per_run"], 5);
    assert_eq!(v["latency_ms"]["n"], 12);
    assert_eq!(v["runs_not_succeeded"], 0);
    assert_eq!(v["extra_step_executions"], 0);
    assert!(v["runs_per_s"].as_f64().unwrap() > 0.0);
    let rss = v["pod_peak_rss_kib"].as_array().unwrap();
    assert_eq!(rss.len(), 2);
    assert!(rss.iter().all(|r| r.as_u64().unwrap() > 1000), "{rss:?}");
}

/// Recovery on the bench: SIGKILL the owner, a survivor resumes, no finished
/// step runs again, the final stream is whole.
#[test]
fn bench_recovery_counts_duplicates_and_resumes() {
    let o = vigil(&[
        "bench",
        "recovery",
        "--store",
        "sqlite",
        "--kills",
        "1",
        "--pod-arg=--liveness-timeout-ms=500",
        "--pod-arg=--probe-interval-ms=50",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rounds_measured"], 1);
    assert_eq!(v["finished_steps_executed_again"], 0);
    assert_eq!(v["interrupted_steps_restarted"], 1);
    assert_eq!(v["runs_with_a_bad_final_stream"], 0);
    let detect = v["detection_ms"]["p50"].as_f64().unwrap();
    assert!(detect >= 0.0, "{v}");
}

#[test]
fn bench_refuses_a_bad_store_and_bad_counts() {
    let o = vigil(&["bench", "throughput", "--store", "mysql://x"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--store \"mysql://x\""), "{}", text(&o));
    let o = vigil(&["bench", "throughput", "--runs", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("at least 1"), "{}", text(&o));
    let o = vigil(&["bench", "recovery", "--signal", "hup"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `scripts/bench_report.py` folds a real `just bench` run (the committed
/// one) into tables, keeps the hand-written notes, and states each target.
#[test]
fn bench_report_folds_a_committed_run_and_keeps_notes() {
    let runs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .expect("a committed bench run");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(run.file_name().unwrap());
    std::fs::create_dir_all(copy.join("raw")).unwrap();
    for f in std::fs::read_dir(run.join("raw")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join("raw").join(f.file_name().unwrap())).unwrap();
    }
    let md = dir.path().join("B.md");
    std::fs::write(
        &md,
        "old\n<!-- notes: kept by bench_report.py -->\nmy reading\n",
    )
    .unwrap();
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/bench_report.py"
        ))
        .arg(&copy)
        .arg("--markdown")
        .arg(&md)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("Throughput at least 2x DBOS"),
        "{}",
        text(&o)
    );
    let out = std::fs::read_to_string(&md).unwrap();
    assert!(!out.starts_with("old"));
    assert!(
        out.contains("| dbos | postgres | 1 process | 16 |"),
        "{out}"
    );
    assert!(out.contains("| vigil | postgres | SIGKILL | 20 |"), "{out}");
    assert!(out.trim_end().ends_with("my reading"), "{out}");
    let res: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("results.json")).unwrap()).unwrap();
    assert_eq!(res["throughput"].as_array().unwrap().len(), 10);
}
