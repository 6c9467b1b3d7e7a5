//! Real `vigil pod` processes for integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `vigil pod` child process; SIGKILLed on drop so nothing outlives a test.
pub struct PodProc {
    pub child: Child,
    pub url: String,
    pub pod_id: String,
    pub log: std::path::PathBuf,
}

impl PodProc {
    /// Start a pod on a free loopback port and wait until it listens.
    pub fn spawn(store: &str, pod_id: &str, extra: &[&str]) -> PodProc {
        let log = std::env::temp_dir().join(format!(
            "vigil-test-{pod_id}-{}.log",
            uuid::Uuid::now_v7().simple()
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "pod",
                "--store",
                store,
                "--listen",
                "127.0.0.1:0",
                "--pod-id",
                pod_id,
            ])
            .args([
                "--workflows",
                concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/workflows"),
            ])
            .args(extra)
            .env("VIGIL_LOG", "vigil=info")
            .env_remove("VIGIL_STORE")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn vigil pod");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "pod {pod_id} did not start; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let url = line
            .split("listening on ")
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .to_owned();
        PodProc {
            child,
            url: format!("{url}/"),
            pod_id: pod_id.to_owned(),
            log,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal pod");
    }

    /// Wait for the process to exit; the time it took.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<(Duration, std::process::ExitStatus)> {
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((start.elapsed(), status));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One metric sample from a pod's /metrics, parsed by a Prometheus parser.
pub async fn metric(url: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let text = reqwest::get(format!("{url}metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Poll `f` every 20 ms until it is true; panic naming `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
