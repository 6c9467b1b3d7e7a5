//! The one home of the drivers that start and hurt pods: a local cluster of
//! `vigil pod` child processes ([`process`]) or containers driven through
//! the Docker API ([`docker`]), behind one interface, [`Cluster`], which the
//! chaos runner, the console, the benchmarks and the demo use. Also here:
//! a throwaway PostgreSQL server and scratch databases ([`pgserver`]).
//!
//! A [`Driver`] does what only it can (spawn, signal, freeze, cut from the
//! network); the [`Cluster`] keeps the book of pods, their URLs and states,
//! so both drivers report the same way.
//!
//! Imports run one way: engine <- pod <- client <- cluster <- {chaos,
//! console, bench, demo} <- cli. Nothing here reaches above `client`.

pub mod docker;
pub mod pgserver;
pub mod process;

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `vigil` binary to run (default: this executable).
    pub binary: PathBuf,
    /// Store every pod shares.
    pub store: String,
    /// The store as one pod reaches it, where it differs (through a chaos
    /// runner's link proxy).
    pub store_per_pod: BTreeMap<String, String>,
    pub workflows: PathBuf,
    pub lanes: Option<PathBuf>,
    /// Extra `vigil pod` arguments for every pod.
    pub pod_args: Vec<String>,
    /// Extra environment for every pod.
    pub env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    /// A foreign worker instead of `vigil pod` (a chaos target; process
    /// driver only): its command, and how it says it is ready.
    pub command: Option<process::CommandPod>,
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
            store_per_pod: BTreeMap::new(),
            workflows: workflows.into(),
            lanes: None,
            pod_args: Vec::new(),
            env: Vec::new(),
            log_dir: log_dir.into(),
            command: None,
        })
    }

    /// The `VIGIL_LOG` a pod gets: `VIGIL_POD_LOG` of this process, or info.
    pub fn pod_log_filter() -> String {
        std::env::var("VIGIL_POD_LOG").unwrap_or_else(|_| "vigil=info".into())
    }
}

/// Where a pod stands, as the cluster last left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    Running,
    Paused,
    /// Cut from its network (Docker driver only).
    Partitioned,
    Exited,
}

/// One pod of the cluster.
#[derive(Debug)]
pub struct PodProcess {
    pub id: String,
    pub url: String,
    pub log: PathBuf,
    pub state: PodState,
    /// The local process id (process driver only).
    pid: Option<u32>,
}

impl PodProcess {
    /// The local process id while it may be alive (None for a container).
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.pid
            .filter(|_| self.state != PodState::Exited)
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw)
    }
}

/// A pod that started and serves.
#[derive(Debug)]
pub struct Started {
    pub url: String,
    /// The local process id, when the driver runs processes.
    pub pid: Option<u32>,
}

/// What a driver does to pods. Every method names the pod by id; errors
/// name the pod.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// `process` or `docker`.
    fn name(&self) -> &'static str;

    /// Whether pod `id`, which the cluster has not seen exit, still runs.
    async fn alive(&mut self, id: &str) -> Result<bool>;

    /// Start pod `id` (again, after an exit: same id, stable identity) and
    /// wait until it serves.
    async fn start(
        &mut self,
        spec: &ClusterSpec,
        id: &str,
        extra: &[String],
        log: &Path,
    ) -> Result<Started>;

    /// SIGKILL, and wait until it is gone.
    async fn kill(&mut self, id: &str) -> Result<()>;

    /// SIGTERM, then wait up to `bound` for a clean exit (SIGKILL after it).
    /// Returns how long the pod took, or None when it had to be killed.
    async fn terminate(&mut self, id: &str, bound: Duration) -> Result<Option<Duration>>;

    /// Freeze the pod, sockets and all.
    async fn pause(&mut self, id: &str) -> Result<()>;

    /// Thaw a paused pod.
    async fn resume(&mut self, id: &str) -> Result<()>;

    /// Cut the pod from its network: it runs on, but reaches nothing and
    /// nothing reaches it.
    async fn partition(&mut self, _id: &str) -> Result<()> {
        bail!(
            "a partition cuts a container from its network: it needs the docker driver \
             (driver = \"docker\" in [cluster], or --driver docker)"
        )
    }

    /// Reconnect a partitioned pod; returns its new URL.
    async fn heal_partition(&mut self, _id: &str) -> Result<String> {
        bail!("a partition needs the docker driver")
    }

    /// A process inside the pod's network namespace, when the pod has one
    /// of its own (a container's init, to enter with `nsenter -t PID -n`);
    /// None when the pod shares the runner's (child processes) or is not
    /// running.
    async fn netns_pid(&mut self, _id: &str) -> Result<Option<u32>> {
        Ok(None)
    }

    /// Stop every pod in `pods` (id, state) gracefully within `bound`,
    /// forcibly after it; keep their logs in `log_dir`.
    async fn shutdown(&mut self, pods: &[(String, PodState)], bound: Duration, log_dir: &Path);

    /// The host's process id of pod `id`'s main process, for a driver
    /// whose pods are not the runner's children (a container's init
    /// process); None when it has none.
    async fn host_pid(&mut self, _id: &str) -> Result<Option<u32>> {
        Ok(None)
    }

    /// Where the host reaches pod `id`'s API with no relay in between
    /// (`IP:PORT`), when that differs from its URL: a container's address
    /// on the scenario network, not its port published through Docker's
    /// userland proxy (whose socket buffers would hide a slow client's
    /// backlog from the pod). None: its URL is direct.
    async fn direct_addr(&mut self, _id: &str) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Pods by id, on one driver.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    pods: BTreeMap<String, PodProcess>,
    driver: Box<dyn Driver>,
}

impl Cluster {
    /// Pods as local child processes.
    pub fn new(spec: ClusterSpec) -> Result<Self> {
        Cluster::with_driver(spec, Box::new(process::ProcessPods::default()))
    }

    /// Pods as containers: `spec.store` is the URL the pods use from their
    /// network, `spec.binary` is ignored (the image holds the binary).
    pub fn docker(spec: ClusterSpec, pods: docker::pods::DockerPods) -> Result<Self> {
        Cluster::with_driver(spec, Box::new(pods))
    }

    pub fn with_driver(spec: ClusterSpec, driver: Box<dyn Driver>) -> Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating {}", spec.log_dir.display()))?;
        Ok(Cluster {
            spec,
            pods: BTreeMap::new(),
            driver,
        })
    }

    /// `process` or `docker`.
    pub fn driver(&self) -> &'static str {
        self.driver.name()
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Start pod `id` (again, if it exited: same id, stable identity) and
    /// wait until it serves.
    pub async fn start_pod(&mut self, id: &str, extra: &[String]) -> Result<&PodProcess> {
        if self
            .pods
            .get(id)
            .is_some_and(|p| p.state != PodState::Exited)
            && self.driver.alive(id).await?
        {
            bail!("pod {id} is already running");
        }
        let log = self.spec.log_dir.join(format!("{id}.log"));
        let started = self.driver.start(&self.spec, id, extra, &log).await?;
        self.pods.insert(
            id.to_owned(),
            PodProcess {
                id: id.to_owned(),
                url: started.url,
                log,
                state: PodState::Running,
                pid: started.pid,
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

    /// The host's process id of pod `id` while it may be alive: the
    /// child process, or a container's init process (its memory is the
    /// pod's: the image runs nothing else).
    pub async fn host_pid(&mut self, id: &str) -> Result<Option<u32>> {
        let pod = self.known(id)?;
        if pod.state == PodState::Exited {
            return Ok(None);
        }
        if let Some(p) = pod.pid {
            return Ok(Some(p));
        }
        self.driver.host_pid(id).await
    }

    /// URLs of the pods that are running now.
    pub fn live_urls(&self) -> Vec<(String, String)> {
        self.pods
            .values()
            .filter(|p| p.state == PodState::Running)
            .map(|p| (p.id.clone(), p.url.clone()))
            .collect()
    }

    fn known(&mut self, id: &str) -> Result<&mut PodProcess> {
        self.pods
            .get_mut(id)
            .with_context(|| format!("no pod {id} in this cluster"))
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, id: &str) -> Result<()> {
        self.known(id)?;
        self.driver.kill(id).await?;
        self.known(id)?.state = PodState::Exited;
        Ok(())
    }

    /// SIGTERM, then wait up to `bound` for a clean exit (SIGKILL after it).
    /// Returns how long the pod took, or None when it had to be killed.
    pub async fn terminate(&mut self, id: &str, bound: Duration) -> Result<Option<Duration>> {
        self.known(id)?;
        let took = self.driver.terminate(id, bound).await?;
        self.known(id)?.state = PodState::Exited;
        Ok(took)
    }

    /// SIGSTOP: the process freezes, sockets and all (a container: the
    /// cgroup freezer, through the Docker API).
    pub async fn pause(&mut self, id: &str) -> Result<()> {
        self.known(id)?;
        self.driver.pause(id).await?;
        self.known(id)?.state = PodState::Paused;
        Ok(())
    }

    /// SIGCONT (a container: unpause).
    pub async fn resume(&mut self, id: &str) -> Result<()> {
        self.known(id)?;
        self.driver.resume(id).await?;
        self.known(id)?.state = PodState::Running;
        Ok(())
    }

    /// Cut the pod from its network (Docker driver only): the pod runs on,
    /// but reaches nothing and nothing reaches it, not even the runner.
    pub async fn partition(&mut self, id: &str) -> Result<()> {
        self.known(id)?;
        self.driver.partition(id).await?;
        self.known(id)?.state = PodState::Partitioned;
        Ok(())
    }

    /// Reconnect a partitioned pod; its URL changes (a new published port).
    pub async fn heal_partition(&mut self, id: &str) -> Result<()> {
        self.known(id)?;
        let url = self.driver.heal_partition(id).await?;
        let p = self.known(id)?;
        p.url = url;
        p.state = PodState::Running;
        Ok(())
    }

    /// See [`Driver::direct_addr`].
    pub async fn direct_addr(&mut self, id: &str) -> Result<Option<String>> {
        self.known(id)?;
        self.driver.direct_addr(id).await
    }

    /// A process inside pod `id`'s own network namespace (a container's
    /// init), or None when it shares the runner's.
    pub async fn netns_pid(&mut self, id: &str) -> Result<Option<u32>> {
        self.known(id)?;
        self.driver.netns_pid(id).await
    }

    /// Stop every pod gracefully within `bound`, forcibly after it.
    pub async fn shutdown(&mut self, bound: Duration) {
        let pods: Vec<(String, PodState)> = self
            .pods
            .values()
            .map(|p| (p.id.clone(), p.state))
            .collect();
        self.driver.shutdown(&pods, bound, &self.spec.log_dir).await;
        for p in self.pods.values_mut() {
            p.state = PodState::Exited;
        }
    }

    pub fn log_dir(&self) -> &Path {
        &self.spec.log_dir
    }
}
