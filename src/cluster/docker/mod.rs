//! The chaos runner's Docker driver: pods as containers on a per-scenario
//! network, driven through the Docker API (bollard), never through the
//! `docker` CLI.
//!
//! Everything Vigil creates carries labels (`vigil.chaos=1`, the scenario,
//! the run, the role, the owning runner process), and everything it touches
//! is found again by those labels: a fault resolves its container by
//! `vigil.run` + `vigil.pod` before it fires, so it can never hit another
//! container on the host, whatever that one is called. Cleanup sweeps by
//! label too: at the end of a scenario, on drop (a panic, an early error),
//! on SIGINT/SIGTERM (the watchdog), and after a SIGKILLed runner with
//! `vigil chaos clean` (orphans: their owner process is gone).
//!
//! Modelled on testcontainers-rs (`core/client.rs`, `watchdog.rs`): one
//! error variant per Docker operation, label and sweep, force-remove with
//! volumes.

pub mod env;
pub mod image;
pub mod pods;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};
use std::collections::HashMap;

/// Every object Vigil creates carries `vigil.chaos=1`.
pub const LABEL_CHAOS: &str = "vigil.chaos";
/// The scenario name.
pub const LABEL_SCENARIO: &str = "vigil.scenario";
/// One scenario run (unique per run of a scenario).
pub const LABEL_RUN: &str = "vigil.run";
/// `pod`, `postgres`, `network`, `pod-image`, `postgres-image`.
pub const LABEL_ROLE: &str = "vigil.role";
/// The pod id of a pod container.
pub const LABEL_POD: &str = "vigil.pod";
/// The runner process that owns the object: `PID:STARTTIME` (from
/// /proc/PID/stat), so a reused pid is not mistaken for the owner.
pub const LABEL_OWNER: &str = "vigil.owner";

/// The port a pod listens on inside its container.
pub const POD_PORT: u16 = 7700;

/// What every container of a scenario is: `image` running `cmd`, on the
/// scenario `network` under the name `alias` (also its hostname), with
/// `port`/tcp published on 127.0.0.1 at a free port (the only way the
/// runner reaches it).
pub fn container_body(
    image: &str,
    network: &str,
    alias: &str,
    port: u16,
    cmd: Vec<String>,
    env: Vec<String>,
    labels: HashMap<String, String>,
) -> ContainerCreateBody {
    let port = format!("{port}/tcp");
    ContainerCreateBody {
        image: Some(image.to_owned()),
        hostname: Some(alias.to_owned()),
        cmd: Some(cmd),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        exposed_ports: Some(vec![port.clone()]),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            port_bindings: Some(HashMap::from([(
                port,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_owned(),
                EndpointSettings {
                    aliases: Some(vec![alias.to_owned()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

type BollardError = bollard::errors::Error;

/// One variant per Docker operation, each naming what it acted on.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine at {host}: {source}\n  \
         fix: start the engine (`systemctl start docker`, or `dockerd &` as root), \
         point DOCKER_HOST at a running one, or run the scenario with --driver process"
    )]
    Unreachable {
        host: String,
        #[source]
        source: BollardError,
    },
    #[error(
        "image {image} is not in the Docker engine (there is no registry to pull it from)\n  \
         fix: build it from the local vigil binary with `vigil chaos image build`{hint}"
    )]
    ImageMissing { image: String, hint: String },
    #[error("inspecting image {image}: {source}")]
    InspectImage {
        image: String,
        #[source]
        source: BollardError,
    },
    #[error("building image {tag}: {message}")]
    BuildImage { tag: String, message: String },
    #[error("preparing the build context of {tag}: {message}")]
    BuildContext { tag: String, message: String },
    #[error("removing image {image}: {source}")]
    RemoveImage {
        image: String,
        #[source]
        source: BollardError,
    },
    #[error("creating network {name}: {source}")]
    CreateNetwork {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("removing network {name}: {source}")]
    RemoveNetwork {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: BollardError,
    },
    #[error("creating container {name}: {source}")]
    CreateContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("copying files into container {name}: {source}")]
    Upload {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("starting container {name}: {source}")]
    StartContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("sending {signal} to container {name}: {source}")]
    KillContainer {
        name: String,
        signal: String,
        #[source]
        source: BollardError,
    },
    #[error("stopping container {name}: {source}")]
    StopContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("pausing container {name}: {source}")]
    PauseContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("unpausing container {name}: {source}")]
    UnpauseContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("inspecting container {name}: {source}")]
    InspectContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("removing container {name}: {source}")]
    RemoveContainer {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("removing volume {name}: {source}")]
    RemoveVolume {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("disconnecting container {name} from network {network}: {source}")]
    DisconnectNetwork {
        name: String,
        network: String,
        #[source]
        source: BollardError,
    },
    #[error("connecting container {name} to network {network}: {source}")]
    ConnectNetwork {
        name: String,
        network: String,
        #[source]
        source: BollardError,
    },
    #[error("reading the logs of container {name}: {source}")]
    Logs {
        name: String,
        #[source]
        source: BollardError,
    },
    #[error("container {name} publishes no host port for {port}/tcp")]
    NoPort { name: String, port: u16 },
    #[error("{what} was not ready within {secs} s: {detail}")]
    NotReady {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error(
        "no single container labelled {LABEL_RUN}={run}, {LABEL_POD}={pod} (found {found}): \
         refusing to act on anything else"
    )]
    NotOurs {
        run: String,
        pod: String,
        found: usize,
    },
}

/// Where bollard connects: DOCKER_HOST, or the local socket.
pub fn engine_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Connect to the engine, settle on an API version both sides speak (this
/// machine's engine 20.10 stops at 1.41; bollard asks for newer), and ping.
pub async fn connect() -> Result<Docker, DockerError> {
    let host = engine_host();
    let unreachable = |source| DockerError::Unreachable {
        host: host.clone(),
        source,
    };
    let docker = Docker::connect_with_defaults().map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// `{"label": ["k=v", ...]}`: a Docker list filter on every pair.
pub fn label_filter(pairs: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let labels = pairs
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                (*k).to_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    HashMap::from([("label".to_owned(), labels)])
}

/// True when the engine answered 404 (no such container, image, network).
pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks
/// since boot): with the pid, it names a process even after pid reuse.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after ')' are plain.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// This process, as written in `vigil.owner`.
pub fn owner_tag() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", start_time(pid).unwrap_or_default())
}

/// Whether the runner that wrote `tag` is still running on this host.
pub fn owner_alive(tag: &str) -> bool {
    let Some((pid, started)) = tag.split_once(':') else {
        return false;
    };
    pid.parse::<u32>()
        .ok()
        .and_then(start_time)
        .is_some_and(|s| s == started)
}

/// What `vigil chaos clean` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Objects whose owning runner is gone (a SIGKILLed or crashed runner):
    /// the default, safe while other runners are running.
    Orphans,
    /// Everything labelled `vigil.chaos`, live runners' too.
    All,
    /// One scenario run's objects.
    Run(String),
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Swept {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    pub images: Vec<String>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.networks.is_empty()
            && self.volumes.is_empty()
            && self.images.is_empty()
    }
}

fn in_scope(scope: &Scope, labels: Option<&HashMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    match scope {
        Scope::All => true,
        Scope::Run(r) => get(LABEL_RUN) == Some(r.as_str()),
        Scope::Orphans => !get(LABEL_OWNER).is_some_and(owner_alive),
    }
}

/// Remove every container (forced, with its anonymous volumes), network and
/// volume labelled `vigil.chaos` within `scope`; images too with `images`.
/// Containers go first: a network cannot be removed while one is attached.
pub async fn sweep(docker: &Docker, scope: &Scope, images: bool) -> Result<Swept, DockerError> {
    let mut swept = Swept::default();
    let filter = label_filter(&[(LABEL_CHAOS, "1")]);
    let containers = docker
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
    for c in containers {
        if !in_scope(scope, c.labels.as_ref()) {
            continue;
        }
        let Some(id) = c.id else { continue };
        let name = c
            .names
            .and_then(|n| n.first().cloned())
            .map_or_else(|| id.clone(), |n| n.trim_start_matches('/').to_owned());
        match docker
            .remove_container(
                &id,
                Some(
                    RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => swept.containers.push(name),
            Err(e) if is_not_found(&e) => {}
            Err(source) => return Err(DockerError::RemoveContainer { name, source }),
        }
    }
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .map_err(|source| DockerError::List {
            what: "networks",
            source,
        })?;
    for n in networks {
        if !in_scope(scope, n.labels.as_ref()) {
            continue;
        }
        let Some(name) = n.name else { continue };
        match docker.remove_network(&name).await {
            Ok(()) => swept.networks.push(name),
            Err(e) if is_not_found(&e) => {}
            Err(source) => return Err(DockerError::RemoveNetwork { name, source }),
        }
    }
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .map_err(|source| DockerError::List {
            what: "volumes",
            source,
        })?;
    for v in volumes.volumes.unwrap_or_default() {
        if !in_scope(scope, Some(&v.labels)) {
            continue;
        }
        match docker
            .remove_volume(
                &v.name,
                Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => swept.volumes.push(v.name),
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(DockerError::RemoveVolume {
                    name: v.name,
                    source,
                });
            }
        }
    }
    if images {
        let list = docker
            .list_images(Some(
                ListImagesOptionsBuilder::new().filters(&filter).build(),
            ))
            .await
            .map_err(|source| DockerError::List {
                what: "images",
                source,
            })?;
        for i in list {
            let image = i.repo_tags.first().cloned().unwrap_or(i.id.clone());
            match docker
                .remove_image(
                    &i.id,
                    Some(RemoveImageOptionsBuilder::new().force(true).build()),
                    None,
                )
                .await
            {
                Ok(_) => swept.images.push(image),
                Err(e) if is_not_found(&e) => {}
                Err(source) => return Err(DockerError::RemoveImage { image, source }),
            }
        }
    }
    Ok(swept)
}

/// What is labelled `vigil.chaos` now (containers, networks, volumes), by
/// name: what the tests assert is empty after a run and after a clean.
pub async fn leftovers(docker: &Docker, run: Option<&str>) -> Result<Swept, DockerError> {
    let mut pairs = vec![(LABEL_CHAOS, "1")];
    if let Some(r) = run {
        pairs.push((LABEL_RUN, r));
    }
    let filter = label_filter(&pairs);
    let mut out = Swept::default();
    for c in docker
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
        })?
    {
        out.containers
            .extend(c.names.unwrap_or_default().into_iter().take(1));
    }
    for n in docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .map_err(|source| DockerError::List {
            what: "networks",
            source,
        })?
    {
        out.networks.extend(n.name);
    }
    for v in docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .map_err(|source| DockerError::List {
            what: "volumes",
            source,
        })?
        .volumes
        .unwrap_or_default()
    {
        out.volumes.push(v.name);
    }
    Ok(out)
}

/// The watchdog: on SIGINT or SIGTERM, remove the objects of every scenario
/// run of this process still up, then exit (130 or 143). Armed once per
/// process by the first Docker scenario; a SIGKILL cannot be caught, which
/// is what `vigil chaos clean` is for.
pub mod watchdog {
    use std::collections::BTreeSet;
    use std::sync::{Mutex, OnceLock};

    static RUNS: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();

    fn runs() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
        RUNS.get_or_init(|| {
            // First use: install the signal handlers.
            tokio::spawn(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                let active: Vec<String> = RUNS
                    .get()
                    .map(|m| {
                        m.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !active.is_empty() {
                    eprintln!("vigil: signal received: removing the containers of this run");
                    if let Ok(docker) = super::connect().await {
                        for r in active {
                            let _ = super::sweep(&docker, &super::Scope::Run(r), false).await;
                        }
                    }
                }
                std::process::exit(code);
            });
            Mutex::new(BTreeSet::new())
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    }

    /// Watch `run` until [`disarm`].
    pub fn arm(run: &str) {
        runs().insert(run.to_owned());
    }

    pub fn disarm(run: &str) {
        runs().remove(run);
    }
}
