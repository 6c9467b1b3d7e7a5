//! The process driver: pods as `vigil pod` child processes of this one,
//! signalled by pid, restarted with the same id, and never left behind.
//!
//! Each pod is spawned with `--parent-pid` (it exits when this process is
//! gone, even after a SIGKILL of the runner) and `kill_on_drop` (it dies
//! with the driver on a panic or an early return). Its stderr goes to the
//! pod's log file; its first stdout line says where it listens.
//!
//! A chaos target's worker ([`CommandPod`]) is started from its command
//! template instead, on a port chosen here, with the parent-death signal
//! set to SIGKILL through setpriv (it knows no `--parent-pid`); its stdout
//! and stderr go to
//! the log, and it is ready when its readiness path answers 2xx.

use super::{ClusterSpec, Driver, PodState, Started};
use anyhow::{Context, Result, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a pod may take to say where it listens.
const START_BOUND: Duration = Duration::from_secs(30);

/// A foreign worker: argv with `{pod_id}` and `{port}` still to fill, its
/// environment, its working directory, and its readiness path.
#[derive(Debug, Clone)]
pub struct CommandPod {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: std::path::PathBuf,
    pub ready: String,
    pub ready_timeout: Duration,
    /// Said when the program cannot be started (how to install it).
    pub install_hint: Option<String>,
}

impl CommandPod {
    fn fill(&self, s: &str, id: &str, port: u16) -> String {
        s.replace("{pod_id}", id)
            .replace("{port}", &port.to_string())
    }
}

const SETPRIV: &str = "/usr/bin/setpriv";

/// A free port on 127.0.0.1 (bound, then let go for the worker to take).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Child pods by id.
#[derive(Debug, Default)]
pub struct ProcessPods {
    children: BTreeMap<String, Child>,
}

fn pid_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
}

impl ProcessPods {
    fn child(&mut self, id: &str) -> Result<&mut Child> {
        self.children
            .get_mut(id)
            .with_context(|| format!("no pod {id} in this cluster"))
    }

    fn send(&mut self, id: &str, sig: Signal) -> Result<&mut Child> {
        let child = self.child(id)?;
        let pid = pid_of(child).with_context(|| format!("pod {id} has already exited"))?;
        signal::kill(pid, sig).with_context(|| format!("sending {sig} to pod {id} (pid {pid})"))?;
        Ok(child)
    }

    fn command(spec: &ClusterSpec, id: &str, extra: &[String]) -> Command {
        let mut cmd = Command::new(&spec.binary);
        cmd.arg("pod")
            .args([
                "--store",
                spec.store_per_pod.get(id).unwrap_or(&spec.store),
                "--listen",
                "127.0.0.1:0",
                "--pod-id",
                id,
            ])
            .arg("--workflows")
            .arg(&spec.workflows)
            .args(["--parent-pid", &std::process::id().to_string()]);
        if let Some(l) = &spec.lanes {
            cmd.arg("--lanes").arg(l);
        }
        cmd.args(&spec.pod_args)
            .args(extra)
            .env_remove("VIGIL_STORE")
            .env("VIGIL_LOG", ClusterSpec::pod_log_filter())
            .envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

impl ProcessPods {
    /// Start a foreign worker and wait until its readiness path answers.
    async fn start_command(
        &mut self,
        c: &CommandPod,
        id: &str,
        out: std::fs::File,
        log: &Path,
    ) -> Result<Started> {
        let port = free_port()?;
        let mut argv: Vec<String> = c.argv.iter().map(|a| c.fill(a, id, port)).collect();
        let program = c.cwd.join(&argv[0]);
        if argv[0].contains('/') {
            // A relative program is the target directory's, not ours.
            argv[0] = program.display().to_string();
        }
        if argv[0].contains('/') && !program.exists() {
            bail!(
                "worker {id}: {} does not exist{}",
                program.display(),
                c.install_hint
                    .as_ref()
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default()
            );
        }
        // The worker dies with this process even after a SIGKILL of it:
        // util-linux's setpriv sets the parent-death signal, then execs the
        // worker (same pid, so signals reach the worker itself).
        let mut cmd = if Path::new(SETPRIV).exists() {
            let mut c = Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL", "--"]).args(&argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.current_dir(&c.cwd)
            .envs(c.env.iter().map(|(k, v)| (k, c.fill(v, id, port))))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting worker {id}: {}{}",
                argv[0],
                c.install_hint
                    .as_ref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default()
            )
        })?;
        let url = format!("http://127.0.0.1:{port}/");
        let probe = format!("http://127.0.0.1:{port}{}", c.ready);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let until = Instant::now() + c.ready_timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "worker {id} exited ({status}) before it was ready (log {}):\n{}",
                    log.display(),
                    log_tail(log)
                );
            }
            if let Ok(r) = http.get(&probe).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > until {
                let _ = child.kill().await;
                bail!(
                    "worker {id} did not answer GET {probe} with 2xx within {} ms (log {}):\n{}",
                    c.ready_timeout.as_millis(),
                    log.display(),
                    log_tail(log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = child.id();
        self.children.insert(id.to_owned(), child);
        Ok(Started { url, pid })
    }
}

#[async_trait::async_trait]
impl Driver for ProcessPods {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn alive(&mut self, id: &str) -> Result<bool> {
        match self.children.get_mut(id) {
            Some(child) => Ok(child.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    async fn start(
        &mut self,
        spec: &ClusterSpec,
        id: &str,
        extra: &[String],
        log: &Path,
    ) -> Result<Started> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        if let Some(c) = &spec.command {
            return self.start_command(c, id, out, log).await;
        }
        let mut child = Self::command(spec, id, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} pod", spec.binary.display()))?;
        let stdout = child.stdout.take().context("pod stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_BOUND, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            _ => {
                let _ = child.kill().await;
                let tail = std::fs::read_to_string(log).unwrap_or_default();
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
        let pid = child.id();
        self.children.insert(id.to_owned(), child);
        Ok(Started { url, pid })
    }

    async fn kill(&mut self, id: &str) -> Result<()> {
        self.send(id, Signal::SIGKILL)?.wait().await?;
        Ok(())
    }

    async fn terminate(&mut self, id: &str, bound: Duration) -> Result<Option<Duration>> {
        let started = Instant::now();
        let child = self.send(id, Signal::SIGTERM)?;
        match tokio::time::timeout(bound, child.wait()).await {
            Ok(status) => {
                status?;
                Ok(Some(started.elapsed()))
            }
            Err(_) => {
                let _ = child.kill().await;
                Ok(None)
            }
        }
    }

    async fn pause(&mut self, id: &str) -> Result<()> {
        self.send(id, Signal::SIGSTOP).map(drop)
    }

    async fn resume(&mut self, id: &str) -> Result<()> {
        self.send(id, Signal::SIGCONT).map(drop)
    }

    /// SIGTERM every running pod (SIGCONT first for a paused one), wait up
    /// to `bound`, SIGKILL the rest. Logs are already files.
    async fn shutdown(&mut self, pods: &[(String, PodState)], bound: Duration, _log_dir: &Path) {
        for (id, state) in pods {
            let Some(pid) = self.children.get(id).and_then(pid_of) else {
                continue;
            };
            if *state == PodState::Paused {
                let _ = signal::kill(pid, Signal::SIGCONT);
            }
            if *state != PodState::Exited {
                let _ = signal::kill(pid, Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + bound;
        for child in self.children.values_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

impl Drop for ProcessPods {
    /// A panic or an early return: thaw and kill every child still here.
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            if let Some(pid) = pid_of(child) {
                let _ = signal::kill(pid, Signal::SIGCONT);
            }
            let _ = child.start_kill();
        }
    }
}
