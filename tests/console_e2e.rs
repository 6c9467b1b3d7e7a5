//! End to end, in a real terminal: the real binary's `vigil demo` in tmux.
//! Navigates to Pods, sees a pod die and its run claimed, flips a switch
//! with a reason, checks the audit row in the store, and quits (the demo
//! must stop its cluster and exit 0). Then a gray failure: a PostgreSQL
//! pod behind the chaos harness's link proxy, cut off from its store and
//! healed, seen go UNREADY and come back. Every wait polls `capture-pane`
//! with a timeout and fails with the pane's content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};
use vigil::chaos::net::{Direction, LinkFault, LinkProxy};

struct Tmux {
    session: String,
}

impl Tmux {
    /// A detached session running `command`; `name` tells apart the
    /// sessions of tests running at once.
    fn start(name: &str, command: &str) -> Tmux {
        let session = format!("vigil-e2e-{name}-{}", std::process::id());
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "150",
                "-y",
                "45",
                command,
            ])
            .status()
            .expect("tmux runs");
        assert!(st.success(), "tmux new-session failed");
        Tmux { session }
    }

    fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(st.success());
        // Let the console read each batch as separate keys (no Esc+key = Alt).
        std::thread::sleep(Duration::from_millis(150));
    }

    fn type_text(&self, text: &str) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, "-l", text])
            .status()
            .expect("tmux send-keys -l");
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(150));
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let pane = self.capture();
            if ok(&pane) {
                return pane;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}; the pane shows:\n{pane}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is required for the console end-to-end test under CI"
        );
        eprintln!("NOTE: console end-to-end test NOT run (tmux not installed)");
    }
    found
}

#[test]
fn demo_in_a_terminal_shows_recovery_and_audits_a_switch_flip() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_home = dir.path().join("config");
    std::fs::create_dir_all(&config_home).unwrap();
    // A run long enough to cancel by hand, beside the demo's workflows
    // (the demo writes its own into the same directory and loads all).
    std::fs::create_dir_all(data.join("workflows")).unwrap();
    std::fs::write(
        data.join("workflows/e2e_long.toml"),
        "name = \"e2e_long\"\nlane = \"action\"\n[[steps]]\nid = \"wait\"\nkind = \"sleep\"\nms = 600000\n",
    )
    .unwrap();
    let command = format!(
        "cd {dir} && env XDG_CONFIG_HOME={cfg} VIGIL_WHO=e2e-operator NO_COLOR=1 {exe} demo \
         --data-dir {data} --kill-after-ms 1500; echo DEMO_EXIT=$?; sleep 300",
        dir = dir.path().display(),
        cfg = config_home.display(),
        exe = env!("CARGO_BIN_EXE_vigil"),
        data = data.display(),
    );
    let t = Tmux::start("demo", &command);

    // The console opens on the streaming run.
    t.wait_for(
        "the console on the demo run",
        Duration::from_secs(60),
        |p| p.contains("vigil console") && p.contains("demo_stream"),
    );

    // Pods: a pod dies and a survivor claims its run.
    t.keys(&["2"]);
    let pane = t.wait_for(
        "a dead pod whose run was claimed",
        Duration::from_secs(60),
        |p| {
            p.contains("Dead pods (1 recorded)")
                && p.lines()
                    .any(|l| l.contains("pod-") && l.contains(" → pod-"))
        },
    );
    let dead = pane
        .lines()
        .skip_while(|l| !l.contains("Dead pods"))
        .find(|l| l.contains(" → pod-"))
        .expect("a dead-pod row");
    assert!(dead.contains("ago"), "{dead}");

    // Switches: flip authority.db_fallback (the first row) with a reason.
    t.keys(&["4"]);
    t.wait_for("the switches view", Duration::from_secs(10), |p| {
        p.contains("Kill switches")
    });
    t.keys(&["t"]);
    t.wait_for("the reason dialog", Duration::from_secs(10), |p| {
        p.contains("Reason (recorded in the audit trail)")
    });
    t.type_text("e2e drill: fallback off");
    t.keys(&["Enter"]);
    t.wait_for("the flip to land", Duration::from_secs(20), |p| {
        p.contains("authority.db_fallback is now off")
    });

    // The audit row is in the store.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = data.join("demo.db");
    let audit = rt.block_on(async {
        let store = vigil::engine::store::open(&db.display().to_string())
            .await
            .unwrap();
        store.switch_audit("authority.db_fallback").await.unwrap()
    });
    let row = audit
        .iter()
        .find(|a| a.reason == "e2e drill: fallback off")
        .unwrap_or_else(|| panic!("no audit row for the flip: {audit:?}"));
    assert!(!row.new, "{row:?}");
    assert_eq!(row.who, "e2e-operator");

    // Runs: y copies the selected run's id to the terminal's clipboard
    // (OSC 52; tmux, with set-clipboard on, keeps it as a paste buffer).
    let st = Command::new("tmux")
        .args(["set", "-s", "set-clipboard", "on"])
        .status()
        .unwrap();
    assert!(st.success());
    t.keys(&["1"]);
    t.wait_for("the runs view", Duration::from_secs(10), |p| {
        p.contains("Runs (")
    });
    t.keys(&["y"]);
    let pane = t.wait_for("the copy", Duration::from_secs(10), |p| {
        p.contains("copied ")
    });
    let out = Command::new("tmux").args(["show-buffer"]).output().unwrap();
    let copied = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(copied.len(), 36, "a run id in the clipboard: {copied:?}");
    assert!(
        pane.contains(&copied[..8]),
        "its short form is on screen:\n{pane}"
    );

    // A long run, submitted to a demo pod, cancelled from the console: :run
    // with its short form, ctrl-k, y.
    let (store, id) = rt.block_on(async {
        let store = vigil::engine::store::open(&db.display().to_string())
            .await
            .unwrap();
        let pods = store.liveness().pods().await.unwrap();
        let addr = pods
            .iter()
            .find_map(|p| p.addr.clone())
            .expect("a demo pod with an address");
        let client = vigil::client::PodClient::new(&addr).unwrap();
        let sub = client
            .submit(&serde_json::from_value(serde_json::json!({"workflow": "e2e_long"})).unwrap())
            .await
            .unwrap();
        (store, sub.run.id)
    });
    t.keys(&[":"]);
    t.type_text(&format!("run {}", &id[..13]));
    t.keys(&["Enter"]);
    t.wait_for("the run's detail", Duration::from_secs(10), |p| {
        p.contains("e2e_long")
    });
    t.keys(&["C-k"]);
    t.wait_for("the cancel dialog", Duration::from_secs(10), |p| {
        p.contains("Cancel run")
    });
    t.keys(&["y"]);
    t.wait_for("the cancel to land", Duration::from_secs(20), |p| {
        p.contains(&format!("run {id} cancelled"))
    });
    let (run, transitions) = rt.block_on(async {
        (
            store.get_run(&id).await.unwrap().unwrap(),
            store.transitions(&id).await.unwrap(),
        )
    });
    assert_eq!(run.state, vigil::engine::run::RunState::Cancelled);
    assert!(
        transitions
            .iter()
            .any(|t| t.reason == "cancelled from the console by e2e-operator"),
        "{transitions:?}"
    );
    t.keys(&["Escape"]);

    // Quit: the demo stops its cluster and exits 0.
    t.keys(&["q"]);
    let pane = t.wait_for("the demo to exit", Duration::from_secs(30), |p| {
        p.contains("DEMO_EXIT=")
    });
    assert!(pane.contains("DEMO_EXIT=0"), "{pane}");
    assert!(pane.contains("was SIGKILLed mid-stream"), "{pane}");
}

/// The Pods view's row of `pod` (the table's, not the panel's title).
fn pod_row<'a>(pane: &'a str, pod: &str) -> Option<&'a str> {
    pane.lines()
        .find(|l| l.trim_start_matches('│').starts_with(&format!("{pod} ")))
}

/// Its READY column says `word` (`ready` is not a part of `UNREADY`).
fn row_says(pane: &str, pod: &str, word: &str) -> bool {
    pod_row(pane, pod).is_some_and(|r| r.split_whitespace().any(|w| w == word))
}

/// The scratch database goes when the test ends, passed or not.
struct ScratchDb {
    admin: String,
    name: String,
    rt: tokio::runtime::Handle,
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let rt = self.rt.clone();
        // Outside the runtime's threads: block_on may not nest.
        let _ = std::thread::spawn(move || {
            rt.block_on(vigil::cluster::pgserver::drop_database(&admin, &name))
        })
        .join();
    }
}

/// A gray failure seen from the console: a PostgreSQL pod whose store link
/// goes through the link proxy is cut off (blackhole, both ways). No peer
/// declares it dead, yet the Pods view must show it UNREADY with its lease
/// lapsed, from the pod's own /metrics; healed, it rejoins (perhaps as a
/// new incarnation: the server ended its session) and shows ready again.
#[test]
fn a_pod_cut_off_from_its_store_shows_unready_then_ready_again() {
    if !tmux_available() {
        return;
    }
    let Some(admin) = common::pg_admin_url() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, name) = rt
        .block_on(vigil::cluster::pgserver::create_scratch_database(
            &admin,
            "vigil_console_e2e",
        ))
        .unwrap();
    let _db = ScratchDb {
        admin,
        name,
        rt: rt.handle().clone(),
    };
    // The pod reaches the database through the proxy; the console directly.
    let direct = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port().unwrap_or(5432)
    );
    let proxy = rt
        .block_on(LinkProxy::start(
            "gray-pod",
            "127.0.0.1:0".parse().unwrap(),
            &upstream,
            1,
        ))
        .unwrap();
    let mut proxied = direct.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.addr().port())).unwrap();
    let pod = common::pods::PodProc::spawn(
        proxied.as_str(),
        "gray-pod",
        &["--liveness-timeout-ms", "1000"],
    );

    let dir = tempfile::tempdir().unwrap();
    let config_home = dir.path().join("config");
    std::fs::create_dir_all(config_home.join("vigil")).unwrap();
    // Scrape often, so the wait below is for the pod, not the console.
    std::fs::write(
        config_home.join("vigil/console.toml"),
        "refresh_ms = 250\nmetrics_ms = 250\n",
    )
    .unwrap();
    let command = format!(
        "env XDG_CONFIG_HOME={cfg} XDG_STATE_HOME={state} NO_COLOR=1 {exe} console --store '{store}'; \
         echo CONSOLE_EXIT=$?; sleep 300",
        cfg = config_home.display(),
        state = dir.path().join("state").display(),
        exe = env!("CARGO_BIN_EXE_vigil"),
        store = direct,
    );
    let t = Tmux::start("gray", &command);
    t.wait_for("the console", Duration::from_secs(30), |p| {
        p.contains("vigil console")
    });
    t.keys(&["2"]);
    let lines = |pane: &str| pod_row(pane, "gray-pod").unwrap_or("(no row)").to_owned();
    let pane = t.wait_for("the pod, ready", Duration::from_secs(30), |p| {
        row_says(p, "gray-pod", "ready")
    });
    assert!(
        !pane.contains("UNREADY"),
        "a healthy pod shown unready:\n{pane}"
    );

    // Cut off: nothing reaches the database, nothing comes back, nothing
    // is closed. The pod's own clock runs its lease out.
    proxy.set(LinkFault::Blackhole {
        direction: Direction::Both,
    });
    let pane = t.wait_for(
        "the pod UNREADY with its lease lapsed",
        Duration::from_secs(20),
        |p| row_says(p, "gray-pod", "UNREADY") && row_says(p, "gray-pod", "lapsed"),
    );
    assert!(
        pane.contains("1 UNREADY: gray-pod") && pane.contains("(1 UNREADY)"),
        "the title and the header name the unready pod:\n{pane}"
    );
    eprintln!("cut off: {}", lines(&pane));

    proxy.heal();
    let pane = t.wait_for("the pod ready again", Duration::from_secs(60), |p| {
        row_says(p, "gray-pod", "ready")
    });
    assert!(
        !pane.contains("UNREADY"),
        "healed, yet still unready:\n{pane}"
    );
    eprintln!("healed: {}", lines(&pane));
    t.keys(&["q"]);
    t.wait_for("the console to exit", Duration::from_secs(10), |p| {
        p.contains("CONSOLE_EXIT=0")
    });
    drop(pod);
}
