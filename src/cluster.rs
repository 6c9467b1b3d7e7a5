//! A local cluster of `vigil pod` child processes: started, signalled by
//! pid, restarted with the same id, and never left behind.
//!
//! Used by the chaos runner's process driver and by `vigil demo`. Each pod is
//! spawned with `--parent-pid` (it exits when this process is gone, even
//! after a SIGKILL of the runner) and `kill_on_drop` (it dies with the
//! `Cluster` on a panic or an early return). Each pod's stdout and stderr go
//! to `<log_dir>/<pod>.log`.

use anyhow::{Context, Result, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `vigil` binary to run (default: this executable).
    pub binary: PathBuf,
    /// Store every pod shares.
    pub store: String,
    pub workflows: PathBuf,
    pub lanes: Option<PathBuf>,
    /// Extra `vigil pod` arguments for every pod.
    pub pod_args: Vec<String>,
    /// Extra environment for every pod.
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
}

impl ClusterSpec {
    pub fn new(
        store: impl Into<String>,
        workflows: impl Into<PathBuf>,
        log_dir: impl Into<PathBuf>,
    ) -> Result<Self> {
        Ok(ClusterSpec {
            binary: std::env::current_exe().context("locating the vigil binary")?,
            store: store.into(),
            workflows: workflows.into(),
            lanes: None,
            pod_args: Vec::new(),
            env: Vec::new(),
            log_dir: log_dir.into(),
        })
    }
}

/// Where a pod process stands, as the cluster last left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    Running,
    Paused,
    Exited,
}

#[derive(Debug)]
pub struct PodProcess {
    pub id: String,
    pub url: String,
    pub log: PathBuf,
    pub state: PodState,
    child: Child,
}

impl PodProcess {
    pub fn pid(&self) -> Option<Pid> {
        self.child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
    }
}

/// Child pods by id.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    pods: BTreeMap<String, PodProcess>,
}

impl Cluster {
    pub fn new(spec: ClusterSpec) -> Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating {}", spec.log_dir.display()))?;
        Ok(Cluster {
            spec,
            pods: BTreeMap::new(),
        })
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Start pod `id` (again, if it exited: same id, stable identity) and
    /// wait until it serves. `listen` picks the address (default: a free port).
    pub async fn start_pod(&mut self, id: &str, extra: &[String]) -> Result<&PodProcess> {
        if let Some(p) = self.pods.get_mut(id)
            && p.state != PodState::Exited
            && p.child.try_wait()?.is_none()
        {
            bail!("pod {id} is already running");
        }
        let log = self.spec.log_dir.join(format!("{id}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(&self.spec.binary);
        cmd.arg("pod")
            .args([
                "--store",
                &self.spec.store,
                "--listen",
                "127.0.0.1:0",
                "--pod-id",
                id,
            ])
            .arg("--workflows")
            .arg(&self.spec.workflows)
            .args(["--parent-pid", &std::process::id().to_string()]);
        if let Some(l) = &self.spec.lanes {
            cmd.arg("--lanes").arg(l);
        }
        cmd.args(&self.spec.pod_args)
            .args(extra)
            .env_remove("VIGIL_STORE")
            .env(
                "VIGIL_LOG",
                std::env::var("VIGIL_POD_LOG").unwrap_or_else(|_| "vigil=info".into()),
            )
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(out)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} pod", self.spec.binary.display()))?;
        let stdout = child.stdout.take().context("pod stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(l))) => l,
            _ => {
                let _ = child.kill().await;
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                bail!(
                    "pod {id} did not start (log {}):\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        };
        // Keep draining stdout so the pod never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = line
            .split("listening on ")
            .nth(1)
            .map(|u| format!("{}/", u.trim()))
            .with_context(|| format!("pod {id}: unexpected first line {line:?}"))?;
        self.pods.insert(
            id.to_owned(),
            PodProcess {
                id: id.to_owned(),
                url,
                log,
                state: PodState::Running,
                child,
            },
        );
        self.pods.get(id).context("pod vanished")
    }

    pub fn pod(&self, id: &str) -> Option<&PodProcess> {
        self.pods.get(id)
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodProcess> {
        self.pods.values()
    }

    /// URLs of the pods that are running now.
    pub fn live_urls(&self) -> Vec<(String, String)> {
        self.pods
            .values()
            .filter(|p| p.state == PodState::Running)
            .map(|p| (p.id.clone(), p.url.clone()))
            .collect()
    }

    fn send(&mut self, id: &str, sig: Signal) -> Result<&mut PodProcess> {
        let p = self
            .pods
            .get_mut(id)
            .with_context(|| format!("no pod {id} in this cluster"))?;
        let pid = p
            .pid()
            .with_context(|| format!("pod {id} has already exited"))?;
        signal::kill(pid, sig).with_context(|| format!("sending {sig} to pod {id} (pid {pid})"))?;
        Ok(p)
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, id: &str) -> Result<()> {
        let p = self.send(id, Signal::SIGKILL)?;
        p.child.wait().await?;
        p.state = PodState::Exited;
        Ok(())
    }

    /// SIGTERM, then wait up to `bound` for a clean exit (SIGKILL after it).
    /// Returns how long the pod took, or None when it had to be killed.
    pub async fn terminate(&mut self, id: &str, bound: Duration) -> Result<Option<Duration>> {
        let started = Instant::now();
        let p = self.send(id, Signal::SIGTERM)?;
        let done = tokio::time::timeout(bound, p.child.wait()).await;
        let took = match done {
            Ok(status) => {
                status?;
                Some(started.elapsed())
            }
            Err(_) => {
                let _ = p.child.kill().await;
                None
            }
        };
        p.state = PodState::Exited;
        Ok(took)
    }

    /// SIGSTOP: the process freezes, sockets and all.
    pub fn pause(&mut self, id: &str) -> Result<()> {
        self.send(id, Signal::SIGSTOP)?.state = PodState::Paused;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: &str) -> Result<()> {
        self.send(id, Signal::SIGCONT)?.state = PodState::Running;
        Ok(())
    }

    /// SIGTERM every running pod, wait up to `bound`, SIGKILL the rest.
    pub async fn shutdown(&mut self, bound: Duration) {
        let ids: Vec<String> = self.pods.keys().cloned().collect();
        for id in &ids {
            if let Some(p) = self.pods.get_mut(id) {
                if p.state == PodState::Paused
                    && let Some(pid) = p.pid()
                {
                    let _ = signal::kill(pid, Signal::SIGCONT);
                }
                if p.state != PodState::Exited
                    && let Some(pid) = p.pid()
                {
                    let _ = signal::kill(pid, Signal::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + bound;
        for p in self.pods.values_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, p.child.wait()).await.is_err() {
                let _ = p.child.kill().await;
            }
            p.state = PodState::Exited;
        }
    }

    pub fn log_dir(&self) -> &Path {
        &self.spec.log_dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.pods.values_mut() {
            if let Some(pid) = p.pid() {
                let _ = signal::kill(pid, Signal::SIGCONT);
            }
            let _ = p.child.start_kill();
        }
    }
}
