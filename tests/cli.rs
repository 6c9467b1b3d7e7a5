//! The binary, as an operator uses it: bad input, workflows, switches, and
//! several processes sharing one SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use regex::Regex;
use std::path::Path;
use std::process::{Command, Output};

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env_remove("VIGIL_STORE")
        .env_remove("VIGIL_POD")
        .output()
        .expect("run vigil")
}

/// `vigil` run with `dir` as its working directory.
fn vigil_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(dir)
        .env_remove("VIGIL_STORE")
        .env_remove("VIGIL_POD")
        .output()
        .expect("run vigil")
}

/// Every entry under `dir`, recursively, sorted: what a command left behind.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.strip_prefix(dir).unwrap().display().to_string());
        if p.is_dir() {
            out.extend(
                tree(&p)
                    .into_iter()
                    .map(|c| format!("{}/{c}", p.file_name().unwrap().to_string_lossy())),
            );
        }
    }
    out.sort();
    out
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

/// A server that answers but refuses: the server's reason (no such
/// database, no such role), at once, and nothing created.
#[test]
fn a_refusing_postgres_says_why() {
    let Some(admin) = common::pg_admin_url() else {
        return;
    };
    let base = admin.rsplit_once('/').unwrap().0.to_owned();
    let started = std::time::Instant::now();
    let o = vigil(&["runs", "--store", &format!("{base}/vigil_no_such_db")]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("store unreachable at")
            && t.contains("database \"vigil_no_such_db\" does not exist (3D000)"),
        "{t}"
    );
    // Said once, and without the server's C source line sqlx appends.
    assert_eq!(t.matches("does not exist").count(), 1, "{t}");
    assert!(!t.contains(" at line "), "{t}");
    let after_user = base.split_once("://").unwrap().1.split_once('@').unwrap().1;
    let o = vigil(&[
        "runs",
        "--store",
        &format!("postgres://vigil_no_such_role@{after_user}/postgres"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("role \"vigil_no_such_role\" does not exist"),
        "{t}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "a refusal is not retried for the connect window (took {:?})",
        started.elapsed()
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
    // The socket's own reason, not a pool's "timed out".
    assert!(t.contains("Connection refused"), "{t}");
    assert!(!t.contains("pool timed out"), "{t}");
    let dir = tempfile::tempdir().unwrap();
    let o = vigil(&["runs", "--store", dir.path().to_str().unwrap()]);
    assert!(text(&o).contains("is a directory"), "{}", text(&o));
}

#[test]
fn settings_change_with_an_audit_trail_within_their_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.db");
    let db = db.to_str().unwrap();
    let o = vigil(&["setting", "list", "--create", "--store", db]);
    assert!(
        text(&o).contains("runs.max_deadline_ms     3600000  default"),
        "{}",
        text(&o)
    );
    let set = |value: &str, name: &str| {
        vigil(&[
            "setting",
            "set",
            "--store",
            db,
            name,
            value,
            "--reason",
            "backfills",
            "--who",
            "ops",
        ])
    };
    let o = set("7200000", "runs.max_deadline_ms");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("runs.max_deadline_ms: default -> 7200000 (by ops: backfills)"),
        "{}",
        text(&o)
    );
    let o = set("5", "runs.max_deadline_ms");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("out of range: expected 1000 to"),
        "{}",
        text(&o)
    );
    let o = set("5000", "runs.nope");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown setting \"runs.nope\"; known: runs.max_deadline_ms"),
        "{}",
        text(&o)
    );
    let o = vigil(&["setting", "audit", "--store", db, "runs.max_deadline_ms"]);
    let audit = text(&o);
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(
        Regex::new(
            r"^\d{4}-\d\d-\d\dT[0-9:.]{12}Z \(\d+s ago\)  default -> 7200000  by ops: backfills$"
        )
        .unwrap()
        .is_match(audit.trim_end()),
        "{audit}"
    );
}

#[test]
fn switches_flip_with_an_audit_trail_and_reject_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.db");
    let db = db.to_str().unwrap();
    let o = vigil(&["switch", "list", "--create", "--store", db]);
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
    // A time as RFC 3339 with its age; values as an operator types them.
    let line = regex::Regex::new(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(\d+s ago\)  default -> off  by ops: incident 42$",
    )
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.lines().any(|l| line.is_match(l)), "{out}");
    let o = vigil(&["switch", "list", "--store", db]);
    assert!(
        Regex::new(r"authority.db_fallback +off  set by ops \d+s ago \(incident 42\)")
            .unwrap()
            .is_match(&text(&o)),
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
    // Six processes start at once (concurrent creation and migrations), each
    // flipping the switch ten times: every write lands and is audited.
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
                        "--create",
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

/// Issue 14: a mistyped store path must not take a kill-switch flip on a
/// brand-new empty store. Every verb that reads or flips refuses it, names
/// the path, and creates nothing: no file, no directory, no -wal/-shm.
#[test]
fn a_mistyped_sqlite_store_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    for store in ["vigil.dbb", "data/vigil.dbb", "sqlite://vigil.dbb"] {
        for args in [
            &[
                "switch",
                "set",
                "recovery.enabled",
                "off",
                "--reason",
                "incident 123",
            ][..],
            &["switch", "list"][..],
            &["switch", "audit", "recovery.enabled"][..],
            &["runs"][..],
            &["run", "0190a0a0-0000-7000-8000-000000000000"][..],
        ] {
            let mut all = args.to_vec();
            all.extend(["--store", store]);
            let o = vigil_in(dir.path(), &all);
            let t = text(&o);
            assert!(!o.status.success(), "{all:?}: {t}");
            let shown = store.strip_prefix("sqlite://").unwrap_or(store);
            assert!(
                t.contains(&format!(
                    "error: no Vigil store at {shown} (nothing was created; \
                     vigil pod creates one, or pass --create)"
                )),
                "{all:?}: {t}"
            );
            assert_eq!(t.lines().count(), 1, "one line: {t}");
            assert!(!t.contains("default -> off"), "no flip was reported: {t}");
            assert_eq!(tree(dir.path()), Vec::<String>::new(), "{all:?} left files");
        }
    }
}

#[test]
fn runs_in_an_empty_directory_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = vigil_in(dir.path(), &["runs"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("no Vigil store at data/vigil.db (nothing was created"),
        "{}",
        text(&o)
    );
    let o = vigil_in(dir.path(), &["runs", "--store", "nodir/x.db"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nodir/x.db"), "{}", text(&o));
    // The console refuses a missing store too, before it wants a terminal.
    let o = vigil_in(dir.path(), &["console", "--store", "nodir/x.db"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("no Vigil store at nodir/x.db (nothing was created"),
        "{}",
        text(&o)
    );
    assert_eq!(tree(dir.path()), Vec::<String>::new());
}

#[test]
fn create_flag_creates_the_store_then_verbs_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = vigil_in(dir.path(), &["runs", "--create", "--store", "nodir/x.db"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.path().join("nodir/x.db").is_file());
    let o = vigil_in(
        dir.path(),
        &[
            "switch",
            "set",
            "recovery.enabled",
            "off",
            "--reason",
            "drill",
            "--who",
            "ops",
            "--store",
            "nodir/x.db",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("default -> off (by ops: drill)"),
        "{}",
        text(&o)
    );
    let o = vigil_in(
        dir.path(),
        &["switch", "list", "--store", "sqlite://nodir/x.db"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        Regex::new(r"recovery.enabled         off  set by ops \d+s ago \(drill\)")
            .unwrap()
            .is_match(&text(&o)),
        "{}",
        text(&o)
    );
}

/// A file that is not a Vigil store (another program's SQLite database, or
/// not SQLite at all) is refused and left byte-for-byte as it was: no
/// migration, no journal-mode change, no -wal/-shm, no lock file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_vigil_store_is_refused_unchanged() {
    use sqlx::{ConnectOptions as _, Connection as _};
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.db");
    let mut c = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&other)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES ('keep me')")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "not a database at all\n".repeat(50)).unwrap();
    let before = tree(dir.path());
    for (file, why) in [
        (&other, "it has no Vigil tables"),
        (&text_file, "it is not a SQLite database"),
    ] {
        let bytes = std::fs::read(file).unwrap();
        let path = file.to_str().unwrap();
        for args in [
            &[
                "switch",
                "set",
                "recovery.enabled",
                "off",
                "--reason",
                "x",
                "--store",
                path,
            ][..],
            &["switch", "list", "--store", path][..],
            &["runs", "--store", path][..],
        ] {
            let o = vigil(args);
            let t = text(&o);
            assert!(!o.status.success(), "{args:?}: {t}");
            assert!(
                t.contains(&format!("no Vigil store at {path}: {why}"))
                    && t.contains("nothing was changed"),
                "{args:?}: {t}"
            );
            assert_eq!(
                std::fs::read(file).unwrap(),
                bytes,
                "{args:?} changed {path}"
            );
            assert_eq!(tree(dir.path()), before, "{args:?} left files");
        }
    }
}

/// An empty PostgreSQL database (no Vigil tables) is refused by the verbs
/// that read or flip, without running migrations on it; `--create` makes it
/// a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_postgres_database_is_refused_and_left_empty() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let url = db.target();
    let name = url::Url::parse(&url).unwrap().path()[1..].to_owned();
    let tables = || async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_catalog.pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        n
    };
    for args in [
        &["switch", "list", "--store", &url][..],
        &["runs", "--store", &url][..],
        &[
            "switch",
            "set",
            "recovery.enabled",
            "off",
            "--reason",
            "incident 123",
            "--store",
            &url,
        ][..],
    ] {
        let o = tokio::task::block_in_place(|| vigil(args));
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(
            t.contains(&format!("no Vigil store in database {name} at "))
                && t.contains(
                    "its tables are missing (nothing was changed; \
                     run vigil pod against it first, or pass --create)"
                ),
            "{args:?}: {t}"
        );
        assert_eq!(t.lines().count(), 1, "one line: {t}");
        assert_eq!(tables().await, 0, "{args:?} created tables");
    }
    let o = tokio::task::block_in_place(|| vigil(&["runs", "--create", "--store", &url]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(tables().await > 0);
    let o = tokio::task::block_in_place(|| vigil(&["switch", "list", "--store", &url]));
    assert!(o.status.success(), "{}", text(&o));
}

/// A Vigil store at an older schema version is still a Vigil store: the
/// verbs that read migrate it, as before (only a missing store is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_at_an_older_schema_is_migrated_not_refused() {
    use sqlx::{ConnectOptions as _, Connection as _};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let mut c = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    let mut first = sqlx::migrate!("./migrations/sqlite");
    let latest = first.iter().map(|m| m.version).max().unwrap();
    first.migrations = first.migrations[..1].to_vec().into();
    first.run(&mut c).await.unwrap();
    c.close().await.unwrap();
    let path = path.to_str().unwrap();
    let o = tokio::task::block_in_place(|| vigil(&["switch", "list", "--store", path]));
    assert!(o.status.success(), "{}", text(&o));
    let mut c = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    let v: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, latest);

    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let url = db.target();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut first = sqlx::migrate!("./migrations/postgres");
    let latest = first.iter().map(|m| m.version).max().unwrap();
    first.migrations = first.migrations[..1].to_vec().into();
    first.run(&pool).await.unwrap();
    let o = tokio::task::block_in_place(|| vigil(&["runs", "--store", &url]));
    assert!(o.status.success(), "{}", text(&o));
    let v: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(v, latest);
    pool.close().await;
}

/// The console's store slot opens existing stores only: pointed at a file
/// or a PostgreSQL database without Vigil's tables it shows the refusal
/// (in its own words: the console has no --create) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_missing_store_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.db");
    std::fs::write(&file, b"").unwrap();
    let target = file.to_str().unwrap();
    let err = vigil::console::StoreSlot::new(target)
        .get()
        .await
        .unwrap_err();
    assert!(
        err.contains(&format!(
            "no Vigil store at {target}: it has no Vigil tables"
        )) && err.contains("the console reads an existing store")
            && !err.contains("--create"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"");
    assert_eq!(tree(dir.path()), vec!["other.db".to_owned()]);

    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let url = db.target();
    let err = vigil::console::StoreSlot::new(&url)
        .get()
        .await
        .unwrap_err();
    assert!(
        err.contains("its tables are missing") && err.contains("the console reads"),
        "{err}"
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_catalog.pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 0, "the console created tables");
    pool.close().await;
}

/// Errors are one line that says each cause once, with a hint where the
/// mistake is a common one.
#[test]
fn errors_say_each_cause_once_and_hint_at_the_fix() {
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).trim_end().to_owned();
    // A pod address without its scheme.
    let o = vigil(&["runs", "--pod", "127.0.0.1:7700"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("expected a URL like http://127.0.0.1:7700"),
        "{e}"
    );
    let o = vigil(&["runs", "--pod", "localhost:7700"]);
    assert!(
        stderr(&o).contains("expected a URL like http://localhost:7700"),
        "{}",
        stderr(&o)
    );
    // Nothing listening there: one line, each cause once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = vigil(&["runs", "--pod", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert_eq!(e.matches("error sending request").count(), 1, "{e}");
    // An unreachable PostgreSQL: the same.
    let o = vigil(&[
        "runs",
        "--store",
        &format!("postgres://nobody@127.0.0.1:{port}/x"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    let causes: Vec<&str> = e.split(": ").collect();
    for c in &causes {
        assert_eq!(
            causes.iter().filter(|d| *d == c).count(),
            1,
            "{c:?} twice in {e}"
        );
    }
    // --listen: host names resolve; a URL or a bare port gets a hint.
    for (bad, says) in [
        ("http://127.0.0.1:7700", "not a URL"),
        ("7700", "try 127.0.0.1:7700"),
    ] {
        let o = vigil(&["pod", "--listen", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains(says), "{bad}: {}", stderr(&o));
    }
}

/// Every listing verb speaks JSON; audited changes name a real author
/// without --who; shells get completions and a man page; --input is an
/// object.
#[test]
fn listings_speak_json_and_changes_name_a_real_author() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.db");
    let db = db.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let o = vigil(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
    };
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "switch",
            "set",
            "--create",
            "--store",
            db,
            "reaper.enabled",
            "off",
        ])
        .args(["--reason", "drill"])
        .env_remove("VIGIL_WHO")
        .current_dir(dir.path())
        .env("HOME", dir.path()) // no git user.name here
        .env("USER", "carol")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(by carol@"), "USER@HOST: {}", text(&o));
    let list = json(&["switch", "list", "--store", db, "--json"]);
    let reaper = list["switches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "reaper.enabled")
        .unwrap();
    assert_eq!(reaper["enabled"], false);
    assert_eq!(reaper["source"], "store");
    assert!(reaper["updated_by"].as_str().unwrap().starts_with("carol@"));
    let audit = json(&["switch", "audit", "--store", db, "reaper.enabled", "--json"]);
    assert_eq!(audit["audit"][0]["old"], serde_json::Value::Null);
    assert_eq!(audit["audit"][0]["new"], false);
    assert!(audit["audit"][0]["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let settings = json(&["setting", "list", "--store", db, "--json"]);
    assert_eq!(settings["settings"][0]["name"], "runs.max_deadline_ms");
    assert!(
        json(&[
            "setting",
            "audit",
            "--store",
            db,
            "runs.max_deadline_ms",
            "--json"
        ])["audit"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let wfs = json(&["workflows", "list", "--json"]);
    let flaky = wfs["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "flaky_sync")
        .unwrap();
    assert_eq!(flaky["lane"], "sync");
    assert!(!flaky["steps"].as_array().unwrap().is_empty());

    let o = vigil(&["completions", "bash"]);
    assert!(
        o.status.success() && text(&o).contains("_vigil()"),
        "{}",
        text(&o)
    );
    let o = vigil(&["man"]);
    assert!(
        o.status.success() && text(&o).contains(".TH vigil"),
        "{}",
        text(&o)
    );
    // A reader that is gone (`| head -1` exited) is no error: stdout is a
    // pipe whose read end is already closed, so every write fails EPIPE.
    for verb in ["completions zsh", "man"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(verb.split(' '))
            .stdout(writer)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pages = dir.path().join("man");
    let o = vigil(&["man", "--out-dir", pages.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        pages.join("vigil-chaos-run.1").exists(),
        "{:?}",
        tree(&pages)
    );

    let o = vigil(&["submit", "flaky_sync", "--input", "[1,2]"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("--input must be a JSON object"),
        "{}",
        text(&o)
    );
    for verb in [
        &["pod", "--help"][..],
        &["submit", "--help"],
        &["chaos", "run", "--help"],
        &["console", "--help"],
    ] {
        assert!(text(&vigil(verb)).contains("Examples:"), "{verb:?}");
    }
}
