//! End to end, in a real terminal: the real binary's `vigil demo` in tmux.
//! Navigates to Pods, sees a pod die and its run claimed, flips a switch
//! with a reason, checks the audit row in the store, and quits (the demo
//! must stop its cluster and exit 0). Every wait polls `capture-pane` with a
//! timeout and fails with the pane's content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let session = format!("vigil-e2e-{}", std::process::id());
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
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn demo_in_a_terminal_shows_recovery_and_audits_a_switch_flip() {
    if !tmux_available() {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is required for the console end-to-end test under CI"
        );
        eprintln!("NOTE: console end-to-end test NOT run (tmux not installed)");
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
    let t = Tmux::start(&command);

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
