//! A local cluster of `vigil pod` child processes: started, signalled by
//! pid, restarted with the same id, and never left behind. Or, with
//! [`Cluster::docker`], the same methods driving containers through the
//! Docker API (`crate::docker`).
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
    /// Cut from its network (Docker driver only).
    Partitioned,
    Exited,
}

#[derive(Debug)]
pub struct PodProcess {
    pub id: String,
    pub url: String,
    pub log: PathBuf,
    pub state: PodState,
    /// None for a container (Docker driver).
    child: Option<Child>,
}

impl PodProcess {
    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw)
    }

    fn child(&mut self) -> Result<&mut Child> {
        let id = &self.id;
        self.child
            .as_mut()
            .with_context(|| format!("pod {id} is not a process"))
    }
}

/// What runs the pods.
#[derive(Debug)]
enum Backend {
    Process,
    Docker(Box<crate::docker::pods::DockerPods>),
}

/// Child pods (or containers) by id.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    pods: BTreeMap<String, PodProcess>,
    backend: Backend,
}

impl Cluster {
    pub fn new(spec: ClusterSpec) -> Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating {}", spec.log_dir.display()))?;
        Ok(Cluster {
            spec,
            pods: BTreeMap::new(),
            backend: Backend::Process,
        })
    }

    /// Pods as containers: `spec.store` is the URL the pods use from their
    /// network, `spec.binary` is ignored (the image holds the binary).
    pub fn docker(spec: ClusterSpec, pods: crate::docker::pods::DockerPods) -> Result<Self> {
        let mut c = Cluster::new(spec)?;
        c.backend = Backend::Docker(Box::new(pods));
        Ok(c)
    }

    /// `process` or `docker`.
    pub fn driver(&self) -> &'static str {
        match self.backend {
            Backend::Process => "process",
            Backend::Docker(_) => "docker",
        }
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Start pod `id` (again, if it exited: same id, stable identity) and
    /// wait until it serves. `listen` picks the address (default: a free port).
    pub async fn start_pod(&mut self, id: &str, extra: &[String]) -> Result<&PodProcess> {
        let log = self.spec.log_dir.join(format!("{id}.log"));
        if let Backend::Docker(d) = &self.backend {
            if self
                .pods
                .get(id)
                .is_some_and(|p| p.state != PodState::Exited)
            {
                bail!("pod {id} is already running");
            }
            let url = d.start(&self.spec, id, extra).await?;
            self.pods.insert(
                id.to_owned(),
                PodProcess {
                    id: id.to_owned(),
                    url,
                    log,
                    state: PodState::Running,
                    child: None,
                },
            );
            return self.pods.get(id).context("pod vanished");
        }
        if let Some(p) = self.pods.get_mut(id)
            && p.state != PodState::Exited
            && p.child()?.try_wait()?.is_none()
        {
            bail!("pod {id} is already running");
        }
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
                child: Some(child),
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

    fn docker_pod(
        &mut self,
        id: &str,
    ) -> Result<Option<(&crate::docker::pods::DockerPods, &mut PodProcess)>> {
        match &self.backend {
            Backend::Process => Ok(None),
            Backend::Docker(d) => {
                let p = self
                    .pods
                    .get_mut(id)
                    .with_context(|| format!("no pod {id} in this cluster"))?;
                Ok(Some((d, p)))
            }
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, id: &str) -> Result<()> {
        if let Some((d, p)) = self.docker_pod(id)? {
            d.kill(id).await?;
            p.state = PodState::Exited;
            return Ok(());
        }
        let p = self.send(id, Signal::SIGKILL)?;
        p.child()?.wait().await?;
        p.state = PodState::Exited;
        Ok(())
    }

    /// SIGTERM, then wait up to `bound` for a clean exit (SIGKILL after it).
    /// Returns how long the pod took, or None when it had to be killed.
    pub async fn terminate(&mut self, id: &str, bound: Duration) -> Result<Option<Duration>> {
        if let Some((d, p)) = self.docker_pod(id)? {
            let took = d.stop(id, bound).await?;
            p.state = PodState::Exited;
            return Ok(took);
        }
        let started = Instant::now();
        let p = self.send(id, Signal::SIGTERM)?;
        let child = p.child()?;
        let done = tokio::time::timeout(bound, child.wait()).await;
        let took = match done {
            Ok(status) => {
                status?;
                Some(started.elapsed())
            }
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        };
        p.state = PodState::Exited;
        Ok(took)
    }

    /// SIGSTOP: the process freezes, sockets and all (a container: the
    /// cgroup freezer, through the Docker API).
    pub async fn pause(&mut self, id: &str) -> Result<()> {
        if let Some((d, p)) = self.docker_pod(id)? {
            d.pause(id).await?;
            p.state = PodState::Paused;
            return Ok(());
        }
        self.send(id, Signal::SIGSTOP)?.state = PodState::Paused;
        Ok(())
    }

    /// SIGCONT (a container: unpause).
    pub async fn resume(&mut self, id: &str) -> Result<()> {
        if let Some((d, p)) = self.docker_pod(id)? {
            d.unpause(id).await?;
            p.state = PodState::Running;
            return Ok(());
        }
        self.send(id, Signal::SIGCONT)?.state = PodState::Running;
        Ok(())
    }

    /// Cut the pod from its network (Docker driver only): the pod runs on,
    /// but reaches nothing and nothing reaches it, not even the runner.
    pub async fn partition(&mut self, id: &str) -> Result<()> {
        let Some((d, p)) = self.docker_pod(id)? else {
            bail!(
                "a partition cuts a container from its network: it needs the docker driver \
                 (driver = \"docker\" in [cluster], or --driver docker)"
            );
        };
        d.disconnect(id).await?;
        p.state = PodState::Partitioned;
        Ok(())
    }

    /// Reconnect a partitioned pod; its URL changes (a new published port).
    pub async fn heal_partition(&mut self, id: &str) -> Result<()> {
        let Some((d, p)) = self.docker_pod(id)? else {
            bail!("a partition needs the docker driver");
        };
        p.url = d.reconnect(id).await?;
        p.state = PodState::Running;
        Ok(())
    }

    /// SIGTERM every running pod, wait up to `bound`, SIGKILL the rest.
    pub async fn shutdown(&mut self, bound: Duration) {
        if let Backend::Docker(d) = &self.backend {
            let pods: Vec<(String, bool)> = self
                .pods
                .values()
                .map(|p| (p.id.clone(), p.state == PodState::Paused))
                .collect();
            d.shutdown(&pods, bound, &self.spec.log_dir).await;
            for p in self.pods.values_mut() {
                p.state = PodState::Exited;
            }
            return;
        }
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
            if let Some(child) = p.child.as_mut()
                && tokio::time::timeout(left, child.wait()).await.is_err()
            {
                let _ = child.kill().await;
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
            if let Some(child) = p.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}
