//! Storage faults the runner controls: the store's files on a size-limited
//! tmpfs of the runner's own, which `disk_full` fills with a ballast file
//! and its heal empties (NixOS/infra#534: a full WAL volume).
//!
//! Process driver: a tmpfs is mounted at `/tmp/vigil-disk-<runner pid>-<id>`
//! and holds the SQLite database's directory, or the throwaway PostgreSQL
//! server's data directory (or its `pg_wal` alone, or the chaos database's
//! tablespace). Dropping the [`Tmpfs`] deletes the ballast, unmounts it
//! (lazily, if a process still holds a file there) and removes the
//! directory; a runner SIGKILLed mid-scenario leaves its mount behind, and
//! `vigil chaos clean` ([`sweep`]) unmounts every one whose runner is gone.
//!
//! Docker driver: the tmpfs is the PostgreSQL container's own
//! (`HostConfig.Tmpfs`), holding the chaos database's tablespace, and the
//! ballast is written through the container's init process
//! (`/proc/<State.Pid>/root`): [`container::ContainerDisk`]. It goes with
//! the container.

pub mod container;

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `[cluster] store_disk = { mib = 48, pg = "data" }`: the store's files on
/// a tmpfs of `mib` MiB: SQLite's database directory; for PostgreSQL its
/// data directory (`pg = "data"`), its WAL alone (`pg = "wal"`) or the
/// chaos database alone, in a tablespace (`pg = "database"`); unset, the
/// driver's default ([`StoreDisk::pg_part`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDisk {
    #[serde(default = "default_mib")]
    pub mib: u64,
    #[serde(default)]
    pub pg: Option<PgPart>,
    /// The FUSE layer over the tmpfs (slow_disk, lose_unsynced): set when
    /// a fault needs it.
    #[serde(skip)]
    pub fuse: bool,
    /// The FUSE layer keeps writes until fsync from the start (a
    /// lose_unsynced fault is planned).
    #[serde(skip)]
    pub buffered: bool,
}

impl Default for StoreDisk {
    fn default() -> Self {
        StoreDisk {
            mib: default_mib(),
            pg: None,
            fuse: false,
            buffered: false,
        }
    }
}

impl StoreDisk {
    /// Which of PostgreSQL's files go on the disk: as the scenario says,
    /// else the data directory on the process driver, and the chaos
    /// database on the Docker driver (a container's tmpfs starts empty and
    /// the image's entrypoint is the server itself: a data directory cannot
    /// be put there before it starts, a tablespace can be made after).
    pub fn pg_part(&self, driver: crate::chaos::scenario::DriverKind) -> PgPart {
        self.pg.unwrap_or(match driver {
            crate::chaos::scenario::DriverKind::Process => PgPart::Data,
            crate::chaos::scenario::DriverKind::Docker => PgPart::Database,
        })
    }
}

/// Room for a store of a few hundred runs, and for PostgreSQL's initdb
/// (about 40 MiB with its 16 MiB WAL segments).
fn default_mib() -> u64 {
    96
}

/// Which of PostgreSQL's files go on the store disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PgPart {
    /// The whole data directory: a full disk fails table writes and WAL.
    Data,
    /// `pg_wal` alone: a full disk fails every WAL write, and PostgreSQL
    /// PANICs.
    Wal,
    /// The chaos database alone (`CREATE DATABASE ... TABLESPACE` on the
    /// disk): its tables, indexes and catalogs. A full disk fails whatever
    /// needs a new page ("could not extend file"); the WAL and the
    /// cluster-wide catalogs are elsewhere, so the server never PANICs.
    Database,
}

impl PgPart {
    pub fn as_str(self) -> &'static str {
        match self {
            PgPart::Data => "data",
            PgPart::Wal => "wal",
            PgPart::Database => "database",
        }
    }
}

/// The prefix of every mount point this module makes.
const PREFIX: &str = "vigil-disk-";

/// A size-limited tmpfs of the runner's, the ballast that fills it, and
/// optionally the FUSE layer over it (slow_disk, lose_unsynced) through
/// which the store reaches its files.
pub struct Tmpfs {
    path: PathBuf,
    ballast: Ballast,
    fuse: Option<crate::chaos::fuse::FuseDisk>,
    /// It holds PostgreSQL's `pg_wal` alone (`pg = "wal"`).
    wal: bool,
}

impl std::fmt::Debug for Tmpfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tmpfs")
            .field("path", &self.path)
            .field(
                "fuse",
                &self.fuse.as_ref().map(|d| d.mountpoint().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

/// What a fill or a drain left: the ballast's size and the space left.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    pub ballast_bytes: u64,
    pub free_bytes: u64,
    pub size_bytes: u64,
}

fn root() -> PathBuf {
    PathBuf::from("/tmp")
}

impl Tmpfs {
    /// Mount a tmpfs of `mib` MiB, owned by `owner` (uid, gid) when given
    /// (PostgreSQL's data directory must belong to its server's user).
    pub fn mount(mib: u64, owner: Option<(u32, u32)>) -> Result<Tmpfs> {
        if mib == 0 {
            bail!("a store disk of 0 MiB");
        }
        let path = root().join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the mount point {}", path.display()))?;
        let mut data = format!("size={mib}m,mode=0700");
        if let Some((uid, gid)) = owner {
            data.push_str(&format!(",uid={uid},gid={gid}"));
        }
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .with_context(|| {
            format!(
                "mounting a {mib} MiB tmpfs at {} (disk faults need root)",
                path.display()
            )
        })?;
        Ok(Tmpfs {
            path,
            ballast: Ballast::default(),
            fuse: None,
            wal: false,
        })
    }

    /// Put the FUSE layer over the tmpfs, mounted beside it: the store's
    /// files are reached through [`Tmpfs::store_dir`] from now on. With
    /// `buffered`, written data stays in the layer until fsync (so that a
    /// later lose_unsynced can drop it).
    pub fn with_fuse(mut self, buffered: bool) -> Result<Tmpfs> {
        let point = self.path.with_file_name(format!(
            "{}-fuse",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("disk")
        ));
        std::fs::create_dir_all(&point)
            .with_context(|| format!("creating the mount point {}", point.display()))?;
        let disk = crate::chaos::fuse::FuseDisk::mount(&self.path, &point)?;
        disk.set_buffered(buffered);
        self.fuse = Some(disk);
        Ok(self)
    }

    /// The tmpfs itself (where the ballast goes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the store's files live: through the FUSE layer when there is
    /// one, else on the tmpfs.
    /// This disk holds PostgreSQL's `pg_wal` alone.
    pub fn for_wal(mut self) -> Tmpfs {
        self.wal = true;
        self
    }

    /// Whether it holds `pg_wal` alone ([`Tmpfs::for_wal`]).
    pub fn is_wal(&self) -> bool {
        self.wal
    }

    pub fn store_dir(&self) -> &Path {
        self.fuse.as_ref().map_or(&self.path, |d| d.mountpoint())
    }

    /// The FUSE layer, when there is one.
    pub fn fuse(&self) -> Option<&crate::chaos::fuse::FuseDisk> {
        self.fuse.as_ref()
    }

    pub fn usage(&self) -> Result<Usage> {
        usage(&self.path, &self.ballast)
    }

    /// Fill the disk: write a ballast file until the kernel says no space
    /// is left (blocking).
    pub fn fill(&self) -> Result<Usage> {
        fill_until_full(&self.ballast.place(&self.path))?;
        self.usage()
    }

    /// Empty the disk again: delete the ballast.
    pub fn drain(&self) -> Result<()> {
        self.ballast.drain()
    }
}

/// The store's disk, wherever it is: a tmpfs of the runner's (process
/// driver) or the PostgreSQL container's own (Docker driver).
#[derive(Debug)]
pub enum Disk {
    Host(Tmpfs),
    Container(container::ContainerDisk),
}

impl Disk {
    /// Whether it holds PostgreSQL's `pg_wal` alone ([`Tmpfs::for_wal`]).
    pub fn is_wal(&self) -> bool {
        matches!(self, Disk::Host(t) if t.is_wal())
    }

    /// The disk's root as the runner reaches it now.
    async fn root(&self) -> Result<PathBuf> {
        match self {
            Disk::Host(t) => Ok(t.path.clone()),
            Disk::Container(c) => c.root().await,
        }
    }

    fn ballast(&self) -> &Ballast {
        match self {
            Disk::Host(t) => &t.ballast,
            Disk::Container(c) => c.ballast(),
        }
    }

    /// Fill the disk with a ballast file until the kernel says no space is
    /// left (written on a blocking thread).
    pub async fn fill(&self) -> Result<Usage> {
        let root = self.root().await?;
        let file = self.ballast().place(&root);
        tokio::task::spawn_blocking(move || fill_until_full(&file)).await??;
        usage(&root, self.ballast())
    }

    /// Empty the disk again: delete the ballast.
    pub async fn drain(&self) -> Result<()> {
        match self {
            Disk::Host(t) => t.drain(),
            Disk::Container(c) => c.drain().await,
        }
    }

    pub async fn usage(&self) -> Result<Usage> {
        usage(&self.root().await?, self.ballast())
    }

    /// The FUSE layer over the disk, when there is one (process driver).
    pub fn fuse(&self) -> Option<&crate::chaos::fuse::FuseDisk> {
        match self {
            Disk::Host(t) => t.fuse(),
            Disk::Container(_) => None,
        }
    }
}

/// The file that fills a disk, once placed.
#[derive(Debug, Default)]
pub(crate) struct Ballast(Mutex<Option<PathBuf>>);

impl Ballast {
    /// A new ballast file's path in `dir`, remembered for [`Ballast::drain`].
    pub(crate) fn place(&self, dir: &Path) -> PathBuf {
        let file = dir.join(format!(".ballast-{}", uuid::Uuid::now_v7().simple()));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(file.clone());
        file
    }

    /// The ballast's size now (0 when there is none).
    fn bytes(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|b| std::fs::metadata(b).ok())
            .map_or(0, |m| m.len())
    }

    /// Delete the ballast, if one was placed.
    pub(crate) fn drain(&self) -> Result<()> {
        let ballast = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(b) = ballast {
            std::fs::remove_file(&b)
                .with_context(|| format!("deleting the ballast {}", b.display()))?;
        }
        Ok(())
    }
}

/// The disk at `dir`: its size, the space left, and `ballast`'s share.
pub(crate) fn usage(dir: &Path, ballast: &Ballast) -> Result<Usage> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    let frag = st.fragment_size();
    Ok(Usage {
        ballast_bytes: ballast.bytes(),
        free_bytes: st.blocks_available() * frag,
        size_bytes: st.blocks() * frag,
    })
}

/// Write `file` until the kernel says no space is left (in MiB pieces,
/// then pages, so nothing is left over). Blocking.
pub(crate) fn fill_until_full(file: &Path) -> Result<()> {
    let mut f = std::fs::File::create(file)
        .with_context(|| format!("creating the ballast {}", file.display()))?;
    for piece in [1 << 20, 4096] {
        let buf = vec![0u8; piece];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("writing the ballast {}", file.display()));
                }
            }
        }
    }
    Ok(())
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(fuse) = self.fuse.take() {
            let point = fuse.mountpoint().to_owned();
            if let Err(e) = fuse.unmount() {
                tracing::warn!(error = %e, "could not unmount the FUSE layer");
            }
            let _ = std::fs::remove_dir(point);
        }
        if let Err(e) = self.drain() {
            tracing::warn!(error = %e, "could not delete the ballast");
        }
        unmount(&self.path);
    }
}

/// Unmount (lazily: a server still holding a file keeps it until it lets
/// go) and remove the mount point.
fn unmount(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(path = %path.display(), error = %e, "could not unmount a store disk");
        return;
    }
    let _ = std::fs::remove_dir(path);
}

/// The runner pid a mount point of ours names, if it is one.
fn runner_of(mount_point: &str) -> Option<i32> {
    let name = Path::new(mount_point).file_name()?.to_str()?;
    let rest = name.strip_prefix(PREFIX)?;
    rest.split('-').next()?.parse().ok()
}

/// Unmount the store disks of runners that are gone (or every one, with
/// `all`): what a SIGKILLed runner left. Returns the mount points removed.
pub fn sweep(all: bool) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut out = Vec::new();
    for line in info.lines() {
        // The fifth field is the mount point; the FUSE layer's mounts
        // beside it are `chaos::fuse::sweep`'s (it aborts their connection
        // first), so only the tmpfs ones are ours.
        let Some(point) = line.split(' ').nth(4) else {
            continue;
        };
        let tmpfs = line
            .split_once(" - ")
            .is_some_and(|(_, right)| right.starts_with("tmpfs "));
        if !tmpfs {
            continue;
        }
        if !point.starts_with(&format!("/tmp/{PREFIX}")) {
            continue;
        }
        let Some(pid) = runner_of(point) else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if all || !alive {
            unmount(Path::new(point));
            out.push(PathBuf::from(point));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_disk_has_no_room_until_drained_and_drop_unmounts_it() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var("CI").is_err(), "disk faults need root in CI");
            return;
        }
        let disk = Tmpfs::mount(4, None).unwrap();
        let path = disk.path().to_owned();
        std::fs::write(path.join("store.db"), b"a store").unwrap();
        let full = disk.fill().unwrap();
        assert_eq!(full.free_bytes, 0, "{full:?}");
        assert!(full.ballast_bytes > 3 << 20, "{full:?}");
        let err = std::fs::write(path.join("more"), vec![1u8; 8192]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
        disk.drain().unwrap();
        assert!(disk.usage().unwrap().free_bytes > 3 << 20);
        std::fs::write(path.join("more"), vec![1u8; 8192]).unwrap();
        assert_eq!(
            std::fs::read(path.join("store.db")).unwrap(),
            b"a store",
            "the store's file survives a fill and a drain"
        );
        drop(disk);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(path.to_str().unwrap()), "still mounted");
        assert!(!path.exists());
    }

    #[test]
    fn sweep_reads_the_runner_from_the_mount_point() {
        assert_eq!(runner_of("/tmp/vigil-disk-4242-0193abcd"), Some(4242));
        assert_eq!(runner_of("/tmp/vigil-other-4242"), None);
        assert_eq!(runner_of("/tmp/vigil-disk-x-1"), None);
    }
}
