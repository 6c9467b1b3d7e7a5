//! Pods as containers: created on the scenario network, reached only
//! through a port published on 127.0.0.1, and hit by faults through the
//! Docker API. Every operation first resolves the pod's container by label
//! (`vigil.run` + `vigil.pod`): a fault cannot reach a container this run
//! did not create, whatever its name.

use super::{DockerError, LABEL_CHAOS, LABEL_POD, LABEL_RUN, POD_PORT};
use crate::cluster::{ClusterSpec, Driver, PodState, Started};
use bollard::Docker;
use bollard::models::{
    ContainerStateStatusEnum, EndpointSettings, NetworkConnectRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where files the pod reads go inside its container.
const WORKFLOWS_IN: &str = "/etc/vigil/workflows";
const LANES_IN: &str = "/etc/vigil/lanes.toml";
/// How long a pod may take to answer on its published port.
const READY_BOUND: Duration = Duration::from_secs(30);

/// The host port 127.0.0.1 publishes for `port`/tcp of container `name`.
pub async fn host_port(docker: &Docker, name: &str, port: u16) -> Result<u16, DockerError> {
    let info = docker
        .inspect_container(name, None)
        .await
        .map_err(|source| DockerError::InspectContainer {
            name: name.to_owned(),
            source,
        })?;
    info.network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(&format!("{port}/tcp")).cloned().flatten())
        .into_iter()
        .flatten()
        .filter(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
        .find_map(|b| b.host_port.and_then(|p| p.parse().ok()))
        .ok_or(DockerError::NoPort {
            name: name.to_owned(),
            port,
        })
}

/// The last `n` lines a container wrote (for error messages).
pub async fn log_tail(docker: &Docker, name: &str, n: usize) -> String {
    let opts = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let mut out = String::new();
    let mut logs = docker.logs(name, Some(opts));
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&chunk.to_string());
    }
    out
}

#[derive(Debug, Clone)]
pub struct DockerPods {
    docker: Docker,
    run: String,
    network: String,
    image: String,
    labels: HashMap<String, String>,
    http: reqwest::Client,
}

impl DockerPods {
    pub fn new(
        docker: Docker,
        run: String,
        network: String,
        image: String,
        labels: HashMap<String, String>,
    ) -> DockerPods {
        DockerPods {
            docker,
            run,
            network,
            image,
            labels,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn run(&self) -> &str {
        &self.run
    }

    /// The container name of `pod`: stable across restarts.
    pub fn name(&self, pod: &str) -> String {
        format!("vigil-{}-{pod}", self.run)
    }

    /// The containers labelled as `pod` of this run (0 or 1).
    async fn find(&self, pod: &str) -> Result<Vec<String>, DockerError> {
        let filter =
            super::label_filter(&[(LABEL_CHAOS, "1"), (LABEL_RUN, &self.run), (LABEL_POD, pod)]);
        let found = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(|source| DockerError::List {
                what: "containers",
                source,
            })?;
        Ok(found.into_iter().filter_map(|c| c.id).collect())
    }

    /// The one container of this run labelled as `pod`, by id.
    async fn resolve(&self, pod: &str) -> Result<String, DockerError> {
        let mut found = self.find(pod).await?;
        match (found.pop(), found.is_empty()) {
            (Some(id), true) => Ok(id),
            (id, _) => Err(DockerError::NotOurs {
                run: self.run.clone(),
                pod: pod.to_owned(),
                found: found.len() + usize::from(id.is_some()),
            }),
        }
    }

    fn files(spec: &ClusterSpec) -> Result<Vec<u8>, String> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(true);
        tar.append_dir_all(WORKFLOWS_IN.trim_start_matches('/'), &spec.workflows)
            .map_err(|e| format!("{}: {e}", spec.workflows.display()))?;
        if let Some(l) = &spec.lanes {
            tar.append_path_with_name(l, LANES_IN.trim_start_matches('/'))
                .map_err(|e| format!("{}: {e}", l.display()))?;
        }
        tar.into_inner().map_err(|e| e.to_string())
    }

    async fn create(
        &self,
        spec: &ClusterSpec,
        pod: &str,
        extra: &[String],
    ) -> Result<String, DockerError> {
        let name = self.name(pod);
        let mut cmd: Vec<String> = [
            "pod",
            "--store",
            spec.store_per_pod.get(pod).unwrap_or(&spec.store),
            "--listen",
            &format!("0.0.0.0:{POD_PORT}"),
            "--pod-id",
            pod,
            "--workflows",
            WORKFLOWS_IN,
        ]
        .map(String::from)
        .to_vec();
        if spec.lanes.is_some() {
            cmd.extend(["--lanes".to_owned(), LANES_IN.to_owned()]);
        }
        cmd.extend(spec.pod_args.iter().cloned());
        cmd.extend(extra.iter().cloned());
        let mut env = vec![format!("VIGIL_LOG={}", ClusterSpec::pod_log_filter())];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut labels = self.labels.clone();
        labels.insert(LABEL_POD.to_owned(), pod.to_owned());
        let body =
            super::container_body(&self.image, &self.network, pod, POD_PORT, cmd, env, labels);
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|source| {
                if super::is_not_found(&source) {
                    DockerError::ImageMissing {
                        image: self.image.clone(),
                        hint: String::new(),
                    }
                } else {
                    DockerError::CreateContainer {
                        name: name.clone(),
                        source,
                    }
                }
            })?;
        let files = Self::files(spec).map_err(|message| DockerError::BuildContext {
            tag: name.clone(),
            message,
        })?;
        self.docker
            .upload_to_container(
                &created.id,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(files.into()),
            )
            .await
            .map_err(|source| DockerError::Upload {
                name: name.clone(),
                source,
            })?;
        Ok(created.id)
    }

    /// Start `pod`: its existing container again (same name, same pod id:
    /// a restart), or a new one; then wait until it answers `/healthz` as
    /// `pod` on its published port. Returns the pod's URL.
    pub async fn start(
        &self,
        spec: &ClusterSpec,
        pod: &str,
        extra: &[String],
    ) -> Result<String, DockerError> {
        let existing = self.find(pod).await?;
        let id = match existing.as_slice() {
            [] => self.create(spec, pod, extra).await?,
            [id] if extra.is_empty() => id.clone(),
            [id] => {
                // New arguments need a new container (same name and id).
                self.remove(id, pod).await?;
                self.create(spec, pod, extra).await?
            }
            more => {
                return Err(DockerError::NotOurs {
                    run: self.run.clone(),
                    pod: pod.to_owned(),
                    found: more.len(),
                });
            }
        };
        self.docker
            .start_container(&id, None)
            .await
            .map_err(|source| DockerError::StartContainer {
                name: self.name(pod),
                source,
            })?;
        self.wait_ready(&id, pod).await
    }

    /// Poll `/healthz` through the published port until the pod answers as
    /// itself (an HTTP answer means it joined the registry: the pod serves
    /// only after that). The Docker health status would come from inside
    /// the container, at most once a second on this engine's API, and
    /// would not prove the published port works.
    async fn wait_ready(&self, id: &str, pod: &str) -> Result<String, DockerError> {
        let name = self.name(pod);
        let deadline = Instant::now() + READY_BOUND;
        let mut last: String;
        let mut round = 0u32;
        loop {
            round += 1;
            if round.is_multiple_of(10) {
                let info = self
                    .docker
                    .inspect_container(id, None)
                    .await
                    .map_err(|source| DockerError::InspectContainer {
                        name: name.clone(),
                        source,
                    })?;
                let status = info.state.and_then(|s| s.status);
                if matches!(
                    status,
                    Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
                ) {
                    let tail = log_tail(&self.docker, id, 15).await;
                    return Err(DockerError::NotReady {
                        what: format!("pod {pod} (container {name})"),
                        secs: READY_BOUND.as_secs(),
                        detail: format!("the container exited:\n{tail}"),
                    });
                }
            }
            match host_port(&self.docker, id, POD_PORT).await {
                Ok(port) => {
                    let url = format!("http://127.0.0.1:{port}/");
                    match self.http.get(format!("{url}healthz")).send().await {
                        Ok(r) if r.status().is_success() => {
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            if body["pod_id"] == pod {
                                return Ok(url);
                            }
                            last = format!("{url} answered as {}", body["pod_id"]);
                        }
                        Ok(r) => last = format!("{url}healthz: {}", r.status()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                let tail = log_tail(&self.docker, id, 15).await;
                return Err(DockerError::NotReady {
                    what: format!("pod {pod} (container {name})"),
                    secs: READY_BOUND.as_secs(),
                    detail: format!("{last}\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn running(&self, id: &str, pod: &str) -> Result<bool, DockerError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|source| DockerError::InspectContainer {
                name: self.name(pod),
                source,
            })?;
        Ok(info.state.and_then(|s| s.running).unwrap_or(false))
    }

    /// Send `signal` (SIGKILL, SIGTERM, ...) to the pod's process.
    pub async fn signal(&self, pod: &str, signal: &str) -> Result<(), DockerError> {
        let id = self.resolve(pod).await?;
        self.docker
            .kill_container(
                &id,
                Some(KillContainerOptionsBuilder::new().signal(signal).build()),
            )
            .await
            .map_err(|source| DockerError::KillContainer {
                name: self.name(pod),
                signal: signal.to_owned(),
                source,
            })
    }

    /// SIGKILL, and wait until the engine reports the container exited.
    pub async fn kill(&self, pod: &str) -> Result<(), DockerError> {
        self.signal(pod, "SIGKILL").await?;
        let id = self.resolve(pod).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running(&id, pod).await? {
            if Instant::now() > deadline {
                return Err(DockerError::NotReady {
                    what: format!("exit of {} after SIGKILL", self.name(pod)),
                    secs: 10,
                    detail: "still running".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stop with a grace period: SIGTERM, SIGKILL after `bound` (whole
    /// seconds, as the API takes it). Returns how long the pod took, or
    /// None when the engine had to kill it.
    pub async fn stop(&self, pod: &str, bound: Duration) -> Result<Option<Duration>, DockerError> {
        let id = self.resolve(pod).await?;
        let started = Instant::now();
        let secs = i32::try_from(bound.as_secs().max(1)).unwrap_or(i32::MAX);
        self.docker
            .stop_container(
                &id,
                Some(
                    StopContainerOptionsBuilder::new()
                        .signal("SIGTERM")
                        .t(secs)
                        .build(),
                ),
            )
            .await
            .map_err(|source| DockerError::StopContainer {
                name: self.name(pod),
                source,
            })?;
        let took = started.elapsed();
        Ok((took < Duration::from_secs(u64::try_from(secs).unwrap_or(1))).then_some(took))
    }

    /// The pod's container, as Docker describes it now.
    async fn inspect(
        &self,
        pod: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, DockerError> {
        let id = self.resolve(pod).await?;
        self.docker
            .inspect_container(&id, None)
            .await
            .map_err(|source| DockerError::InspectContainer {
                name: self.name(pod),
                source,
            })
    }

    /// The host pid of the container's init process while it runs (what
    /// `nsenter -t PID -n` enters to reach the container's network
    /// namespace), or None when it is not running.
    pub async fn init_pid(&self, pod: &str) -> Result<Option<u32>, DockerError> {
        let info = self.inspect(pod).await?;
        Ok(info
            .state
            .filter(|s| s.running == Some(true))
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0))
    }

    /// The container's API address on the scenario network (`IP:PORT`),
    /// which the host reaches directly through the network's bridge,
    /// without the userland proxy of a published port; None when it has
    /// none (not running, or cut off).
    pub async fn network_addr(&self, pod: &str) -> Result<Option<String>, DockerError> {
        let info = self.inspect(pod).await?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .map(|ip| format!("{ip}:{POD_PORT}")))
    }

    /// Freeze every process of the container (cgroup freezer).
    pub async fn pause(&self, pod: &str) -> Result<(), DockerError> {
        let id = self.resolve(pod).await?;
        self.docker
            .pause_container(&id)
            .await
            .map_err(|source| DockerError::PauseContainer {
                name: self.name(pod),
                source,
            })
    }

    pub async fn unpause(&self, pod: &str) -> Result<(), DockerError> {
        let id = self.resolve(pod).await?;
        self.docker
            .unpause_container(&id)
            .await
            .map_err(|source| DockerError::UnpauseContainer {
                name: self.name(pod),
                source,
            })
    }

    /// Cut the pod from the scenario network: no packet in or out (its
    /// published port goes too), no RST for anyone.
    pub async fn disconnect(&self, pod: &str) -> Result<(), DockerError> {
        let id = self.resolve(pod).await?;
        self.docker
            .disconnect_network(
                &self.network,
                NetworkDisconnectRequest {
                    container: id,
                    force: Some(true),
                },
            )
            .await
            .map_err(|source| DockerError::DisconnectNetwork {
                name: self.name(pod),
                network: self.network.clone(),
                source,
            })
    }

    /// Put the pod back on the network (same alias). The engine publishes
    /// its port again, on a new host port: returns the pod's new URL.
    pub async fn reconnect(&self, pod: &str) -> Result<String, DockerError> {
        let id = self.resolve(pod).await?;
        self.docker
            .connect_network(
                &self.network,
                NetworkConnectRequest {
                    container: id.clone(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(vec![pod.to_owned()]),
                        ..Default::default()
                    }),
                },
            )
            .await
            .map_err(|source| DockerError::ConnectNetwork {
                name: self.name(pod),
                network: self.network.clone(),
                source,
            })?;
        self.wait_ready(&id, pod).await
    }

    async fn remove(&self, id: &str, pod: &str) -> Result<(), DockerError> {
        match self
            .docker
            .remove_container(
                id,
                Some(
                    RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if super::is_not_found(&e) => Ok(()),
            Err(source) => Err(DockerError::RemoveContainer {
                name: self.name(pod),
                source,
            }),
        }
    }

    /// Write everything the pod's container printed (every incarnation:
    /// a restart keeps the container and its log) to `path`.
    pub async fn save_log(&self, pod: &str, path: &Path) -> Result<(), DockerError> {
        let id = self.resolve(pod).await?;
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut logs = self.docker.logs(&id, Some(opts));
        let mut out = Vec::new();
        while let Some(chunk) = logs.next().await {
            let chunk = chunk.map_err(|source| DockerError::Logs {
                name: self.name(pod),
                source,
            })?;
            out.extend_from_slice(chunk.as_ref());
        }
        let _ = std::fs::write(path, out);
        Ok(())
    }

    /// Stop every pod (unfreezing the paused ones first, so each can stop
    /// gracefully within `bound`), save their logs, remove them.
    pub async fn shutdown(&self, pods: &[(String, bool)], bound: Duration, log_dir: &Path) {
        let stops = pods.iter().map(|(pod, paused)| async move {
            if *paused {
                let _ = self.unpause(pod).await;
            }
            let _ = self.stop(pod, bound).await;
            let _ = self
                .save_log(pod, &log_dir.join(format!("{pod}.log")))
                .await;
            if let Ok(id) = self.resolve(pod).await {
                let _ = self.remove(&id, pod).await;
            }
        });
        futures::future::join_all(stops).await;
    }
}

#[async_trait::async_trait]
impl Driver for DockerPods {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// A container the cluster has not seen exit counts as running: a
    /// restart goes through [`DockerPods::start`], which reuses it.
    async fn alive(&mut self, _id: &str) -> anyhow::Result<bool> {
        Ok(true)
    }

    async fn start(
        &mut self,
        spec: &ClusterSpec,
        id: &str,
        extra: &[String],
        _log: &Path,
    ) -> anyhow::Result<Started> {
        let url = DockerPods::start(self, spec, id, extra).await?;
        Ok(Started { url, pid: None })
    }

    async fn kill(&mut self, id: &str) -> anyhow::Result<()> {
        Ok(DockerPods::kill(self, id).await?)
    }

    async fn terminate(&mut self, id: &str, bound: Duration) -> anyhow::Result<Option<Duration>> {
        Ok(self.stop(id, bound).await?)
    }

    async fn pause(&mut self, id: &str) -> anyhow::Result<()> {
        Ok(DockerPods::pause(self, id).await?)
    }

    async fn resume(&mut self, id: &str) -> anyhow::Result<()> {
        Ok(self.unpause(id).await?)
    }

    async fn partition(&mut self, id: &str) -> anyhow::Result<()> {
        Ok(self.disconnect(id).await?)
    }

    async fn heal_partition(&mut self, id: &str) -> anyhow::Result<String> {
        Ok(self.reconnect(id).await?)
    }

    async fn host_pid(&mut self, id: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.init_pid(id).await?)
    }

    async fn netns_pid(&mut self, id: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.init_pid(id).await?)
    }

    async fn direct_addr(&mut self, id: &str) -> anyhow::Result<Option<String>> {
        Ok(self.network_addr(id).await?)
    }

    async fn shutdown(&mut self, pods: &[(String, PodState)], bound: Duration, log_dir: &Path) {
        let pods: Vec<(String, bool)> = pods
            .iter()
            .map(|(id, state)| (id.clone(), *state == PodState::Paused))
            .collect();
        DockerPods::shutdown(self, &pods, bound, log_dir).await;
    }
}
