//! The store's disk on the Docker driver: a tmpfs mount of the PostgreSQL
//! container's own (`HostConfig.Tmpfs`, sized by `[cluster] store_disk`),
//! which holds the chaos database's tablespace. The host reaches it through
//! the container's init process, `/proc/<State.Pid>/root/<mount>` (as root:
//! the runner enters containers' namespaces the same way for nftables).
//! Nothing of it is on the host's filesystems: removing the container (at
//! the end of the run, on drop, by the watchdog, or by `vigil chaos clean`
//! after a SIGKILLed runner) frees it, ballast and all.

use super::Ballast;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub struct ContainerDisk {
    docker: bollard::Docker,
    /// The container's name (unique to the run: `vigil-<run>-postgres`).
    container: String,
    /// Where the tmpfs is mounted in the container.
    mount: String,
    ballast: Ballast,
}

impl std::fmt::Debug for ContainerDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerDisk")
            .field("container", &self.container)
            .field("mount", &self.mount)
            .finish_non_exhaustive()
    }
}

impl ContainerDisk {
    pub fn new(docker: bollard::Docker, container: String, mount: &str) -> ContainerDisk {
        ContainerDisk {
            docker,
            container,
            mount: mount.to_owned(),
            ballast: Ballast::default(),
        }
    }

    pub(super) fn ballast(&self) -> &Ballast {
        &self.ballast
    }

    /// The mount as the host reaches it now, through the container's init
    /// process; an error when the container is not running (its tmpfs,
    /// and the database on it, went with it: a container's tmpfs does not
    /// outlive its process).
    pub async fn root(&self) -> Result<PathBuf> {
        let info = self
            .docker
            .inspect_container(&self.container, None)
            .await
            .with_context(|| format!("inspecting container {}", self.container))?;
        let pid = info
            .state
            .filter(|s| s.running == Some(true))
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .with_context(|| {
                format!(
                    "the PostgreSQL container {} is not running: its tmpfs ({}), and the chaos \
                     database on it, went with it",
                    self.container, self.mount
                )
            })?;
        Ok(PathBuf::from(format!("/proc/{pid}/root")).join(self.mount.trim_start_matches('/')))
    }

    /// Delete the ballast, through the container's live init process.
    pub async fn drain(&self) -> Result<()> {
        self.root().await?;
        self.ballast.drain()
    }
}

impl Drop for ContainerDisk {
    /// An early exit mid-fault: the ballast goes now (the container, and
    /// its tmpfs, at the run's teardown right after).
    fn drop(&mut self) {
        if let Err(e) = self.ballast.drain() {
            tracing::debug!(error = %e, "the ballast went with its container");
        }
    }
}
