//! One scenario run's Docker environment: its labels, its user-defined
//! network, the pod image, and (for PostgreSQL) a server container on that
//! network. Torn down by label at the end of the run, on drop, or by the
//! watchdog on SIGINT/SIGTERM.

use super::pods::DockerPods;
use super::{
    DockerError, LABEL_CHAOS, LABEL_OWNER, LABEL_ROLE, LABEL_RUN, LABEL_SCENARIO, Scope, Swept,
};
use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The PostgreSQL server's name on the scenario network.
pub const PG_HOST: &str = "postgres";

/// Where the PostgreSQL container's store disk is mounted (a tmpfs of its
/// own, when the scenario has one): the chaos database's tablespace.
pub const PG_DISK: &str = "/var/lib/postgresql/disk";

#[derive(Debug)]
pub struct DockerEnv {
    pub docker: Docker,
    /// This scenario run's id (the `vigil.run` label).
    pub run: String,
    pub scenario: String,
    pub network: String,
    pub pod_image: String,
    owner: String,
    torn_down: bool,
}

/// Where the PostgreSQL container is reached from.
#[derive(Debug, Clone)]
pub struct PgEndpoints {
    /// From the runner: a port published on 127.0.0.1.
    pub host_admin_url: String,
    /// From the pods: the server's name on the scenario network.
    pub net_admin_url: String,
}

impl DockerEnv {
    /// Connect, make sure the pod image exists (built from `binary` on
    /// demand, or `image` as given, which must exist), and create the
    /// scenario's network.
    pub async fn up(
        scenario: &str,
        binary: &Path,
        image: Option<&str>,
    ) -> Result<DockerEnv, DockerError> {
        let docker = super::connect().await?;
        let pod_image = match image {
            Some(tag) => {
                if super::image::image_size(&docker, tag).await?.is_none() {
                    return Err(DockerError::ImageMissing {
                        image: tag.to_owned(),
                        hint: format!(" --tag {tag}"),
                    });
                }
                tag.to_owned()
            }
            None => super::image::pod_image(&docker, binary, false).await?.tag,
        };
        let id = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of a v7 uuid: unique across parallel runs.
        let run = id[id.len() - 12..].to_owned();
        super::watchdog::arm(&run);
        let env = DockerEnv {
            docker,
            network: format!("vigil-{run}"),
            run,
            scenario: scenario.to_owned(),
            pod_image,
            owner: super::owner_tag(),
            torn_down: false,
        };
        let labels = env.labels("network");
        env.docker
            .create_network(NetworkCreateRequest {
                name: env.network.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|source| DockerError::CreateNetwork {
                name: env.network.clone(),
                source,
            })?;
        Ok(env)
    }

    /// The labels of an object of this run with `role`.
    pub fn labels(&self, role: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_CHAOS.to_owned(), "1".to_owned()),
            (LABEL_SCENARIO.to_owned(), self.scenario.clone()),
            (LABEL_RUN.to_owned(), self.run.clone()),
            (LABEL_OWNER.to_owned(), self.owner.clone()),
            (LABEL_ROLE.to_owned(), role.to_owned()),
        ])
    }

    /// The pod side of this environment, for a [`crate::cluster::Cluster`].
    pub fn pods(&self) -> DockerPods {
        DockerPods::new(
            self.docker.clone(),
            self.run.clone(),
            self.network.clone(),
            self.pod_image.clone(),
            self.labels("pod"),
        )
    }

    /// Start a PostgreSQL server container on the scenario network (built
    /// from the installed server binaries on demand) and wait until it
    /// accepts connections through its published port. With `disk_mib`, a
    /// tmpfs of that size owned by the server's user is mounted at
    /// [`PG_DISK`] (empty: Docker copies nothing of the image into a
    /// tmpfs).
    pub async fn start_postgres(&self, disk_mib: Option<u64>) -> Result<PgEndpoints, DockerError> {
        let image = super::image::pg_image(&self.docker, false).await?;
        let name = self.postgres_container();
        let mut body = super::container_body(
            &image.tag,
            &self.network,
            PG_HOST,
            5432,
            [
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ]
            .map(String::from)
            .to_vec(),
            Vec::new(),
            self.labels("postgres"),
        );
        if let (Some(mib), Some(host)) = (disk_mib, body.host_config.as_mut()) {
            let uid = super::image::PG_UID;
            host.tmpfs = Some(HashMap::from([(
                PG_DISK.to_owned(),
                format!("size={mib}m,uid={uid},gid={uid},mode=0700"),
            )]));
        }
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|source| DockerError::CreateContainer {
                name: name.clone(),
                source,
            })?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|source| DockerError::StartContainer {
                name: name.clone(),
                source,
            })?;
        let host_port = super::pods::host_port(&self.docker, &name, 5432).await?;
        let host_admin_url = format!("postgres://postgres@127.0.0.1:{host_port}/postgres");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last: String;
        loop {
            match sqlx::PgPool::connect(&host_admin_url).await {
                Ok(pool) => {
                    pool.close().await;
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                let tail = super::pods::log_tail(&self.docker, &name, 15).await;
                return Err(DockerError::NotReady {
                    what: format!("PostgreSQL container {name}"),
                    secs: 30,
                    detail: format!("{last}\n{tail}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(PgEndpoints {
            host_admin_url,
            net_admin_url: format!("postgres://postgres@{PG_HOST}:5432/postgres"),
        })
    }

    /// The host's address on the scenario network: where containers reach
    /// a server the runner serves (the witness).
    pub async fn gateway(&self) -> Result<std::net::IpAddr, DockerError> {
        let net = self
            .docker
            .inspect_network(&self.network, None)
            .await
            .map_err(|source| DockerError::NotReady {
                what: format!("network {}", self.network),
                secs: 0,
                detail: source.to_string(),
            })?;
        net.ipam
            .and_then(|i| i.config)
            .into_iter()
            .flatten()
            .filter_map(|c| c.gateway)
            .find_map(|g| g.parse::<std::net::Ipv4Addr>().ok())
            .map(std::net::IpAddr::V4)
            .ok_or_else(|| DockerError::NotReady {
                what: format!("network {}", self.network),
                secs: 0,
                detail: "it has no IPv4 gateway".into(),
            })
    }

    /// The PostgreSQL container's name (after [`DockerEnv::start_postgres`]).
    pub fn postgres_container(&self) -> String {
        format!("vigil-{}-postgres", self.run)
    }

    /// Remove every object of this run (containers, network, volumes).
    pub async fn teardown(mut self) -> Result<Swept, DockerError> {
        let swept = super::sweep(&self.docker, &Scope::Run(self.run.clone()), false).await;
        if swept.is_ok() {
            self.torn_down = true;
            super::watchdog::disarm(&self.run);
        }
        swept
    }
}

impl Drop for DockerEnv {
    /// A panic or an early return: sweep this run's objects before going on.
    /// Drop cannot await, so the sweep runs on a thread of its own with its
    /// own runtime, and we wait for it.
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let run = self.run.clone();
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(docker) = super::connect().await {
                    let _ = super::sweep(&docker, &Scope::Run(run.clone()), false).await;
                }
            });
            super::watchdog::disarm(&run);
        });
        let _ = done.join();
    }
}
