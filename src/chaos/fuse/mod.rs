//! Storage faults through a FUSE passthrough (issue 29): a mountpoint that
//! mirrors a backing directory, served by this process (fuser's session
//! threads), which can
//!
//! - **slow the disk** ([`FuseDisk::set_delay`]): each write, fsync,
//!   fdatasync and fsyncdir request waits first (Chaos Mesh IOChaos
//!   `latency`);
//! - **lose unsynced writes** ([`FuseDisk::set_buffered`] then
//!   [`FuseDisk::lose_unsynced`]), LazyFS's model: while buffered, file data
//!   written is kept in this layer's memory (reads see it) and reaches the
//!   backing file only at fsync/fdatasync of that file (or an `O_SYNC` /
//!   `O_DSYNC` write); losing drops the rest, as a power cut would.
//!
//! File data only: metadata (create, mkdir, rename, unlink, truncate,
//! chmod/chown, fallocate's size) passes straight through to the backing
//! directory even while buffered, so it is never lost (docs/chaos.md,
//! "Storage faults: the FUSE layer").
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::path::Path;
//! use std::time::Duration;
//! use vigil::chaos::fuse::FuseDisk;
//! let disk = FuseDisk::mount(Path::new("/tmp/b"), Path::new("/tmp/m"))?;
//! disk.set_delay(Duration::from_millis(200)); // slow_disk
//! disk.set_delay(Duration::ZERO);
//! disk.set_buffered(true);
//! // ... the database writes, then is killed ...
//! let lost = disk.lose_unsynced(); // the power went out
//! disk.set_buffered(false);
//! disk.unmount()?;
//! # Ok(()) }
//! ```
//!
//! Mounted as root with `allow_other,default_permissions`: the kernel
//! checks permissions against the backing files' owners and modes, which
//! this layer preserves (new files belong to the caller), so a PostgreSQL
//! data directory owned by `postgres` works. No `direct_io`: the page cache
//! stays, and with it `MAP_SHARED` mmap (SQLite's `-shm`). The mount's
//! source is `vigil-fuse:<pid>`, which [`sweep`] reads to find the mounts
//! of runners that are gone.

mod buffer;
mod fs;
#[cfg(test)]
mod tests;

use anyhow::{Context, Result};
use buffer::Dirty;
use fs::{Inodes, OpenDir, OpenFile, PassFs};
use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The mount's source (`/proc/self/mountinfo`): this prefix, then the pid
/// of the process serving it.
pub const FSNAME_PREFIX: &str = "vigil-fuse:";

/// Request-serving threads: a delayed write or fsync holds one, so that
/// reads and other files' writes go on meanwhile.
const THREADS: usize = 8;

/// What [`FuseDisk::lose_unsynced`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Files (relative to the mountpoint; empty if unknown, e.g. unlinked
    /// but still open) that had written data not yet fsynced, sorted.
    pub files: Vec<PathBuf>,
    /// Bytes written to them since their last fsync (an overwrite counts
    /// again).
    pub bytes: u64,
}

/// Counters since the mount, for the history. `writes` and `fsyncs` count
/// FUSE requests (the kernel may split one write(2) into several).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    pub writes: u64,
    pub write_bytes: u64,
    /// fsync, fdatasync and fsyncdir requests.
    pub fsyncs: u64,
    /// Requests that waited for the delay, and the bytes of the writes
    /// among them.
    pub delayed_calls: u64,
    pub delayed_bytes: u64,
    /// Written while buffered and not yet synced, now.
    pub buffered_bytes: u64,
    /// Buffered bytes that reached the backing directory (fsync, or
    /// buffering turned off).
    pub synced_bytes: u64,
    /// What every `lose_unsynced` dropped, and how many times it ran.
    pub dropped_bytes: u64,
    pub dropped_files: u64,
    pub losses: u64,
}

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    fsyncs: AtomicU64,
    delayed_calls: AtomicU64,
    delayed_bytes: AtomicU64,
    synced_bytes: AtomicU64,
    dropped_bytes: AtomicU64,
    dropped_files: AtomicU64,
    losses: AtomicU64,
}

#[derive(Debug, Default)]
struct Buffers {
    on: bool,
    dirty: HashMap<u64, Dirty>,
}

/// The state the filesystem threads and the [`FuseDisk`] handle share.
#[derive(Debug)]
struct Shared {
    root: PathBuf,
    delay_ns: AtomicU64,
    stats: Counters,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, OpenFile>>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    next_fh: AtomicU64,
    buffers: Mutex<Buffers>,
}

/// A poisoned lock only means a filesystem thread panicked mid-request:
/// the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Wait for the slow disk's delay, if any; whether it waited.
    fn delay(&self) -> bool {
        let ns = self.delay_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return false;
        }
        std::thread::sleep(Duration::from_nanos(ns));
        self.stats.delayed_calls.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn write_data(
        &self,
        ino: u64,
        file: &Arc<File>,
        off: u64,
        data: &[u8],
        sync: bool,
    ) -> io::Result<()> {
        let len = data.len() as u64;
        if self.delay() {
            self.stats.delayed_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
        let mut bufs = lock(&self.buffers);
        if bufs.on {
            fs::dirty_for(&mut bufs.dirty, ino, file)?.write(off, data)?;
            if sync {
                self.flush_locked(&mut bufs, ino)?;
                drop(bufs);
                file.sync_data()?;
            }
            return Ok(());
        }
        drop(bufs);
        file.write_all_at(data, off)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    fn flush_locked(&self, bufs: &mut Buffers, ino: u64) -> io::Result<()> {
        if let Some(d) = bufs.dirty.get_mut(&ino) {
            let n = d.flush()?;
            self.stats.synced_bytes.fetch_add(n, Ordering::Relaxed);
            bufs.dirty.remove(&ino);
        }
        Ok(())
    }

    /// fsync/fdatasync of `ino` through `file`: its buffered data reaches
    /// the backing file, which is synced.
    fn sync_data(&self, ino: u64, file: &File, datasync: bool) -> io::Result<()> {
        self.delay();
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.flush_locked(&mut lock(&self.buffers), ino)?;
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }

    /// Truncation passes through, buffered or not; the cache follows.
    fn truncate(&self, ino: u64, path: &Path, file: Option<&File>, size: u64) -> io::Result<()> {
        let mut bufs = lock(&self.buffers);
        match file {
            Some(f) => f.set_len(size)?,
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(size)?,
        }
        if let Some(d) = bufs.dirty.get_mut(&ino) {
            d.truncate(size);
        }
        Ok(())
    }
}

/// A mounted passthrough with storage faults; see the module docs.
/// Unmounted (after writing out whatever is buffered) by
/// [`FuseDisk::unmount`] or on drop.
pub struct FuseDisk {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    notifier: Notifier,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for FuseDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseDisk")
            .field("backing", &self.shared.root)
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl FuseDisk {
    /// Mount a passthrough of `backing` at `mountpoint` (both exist; as
    /// root: the mount syscall, else `fusermount3`, which needs
    /// `user_allow_other` in /etc/fuse.conf). The mountpoint shows the
    /// backing directory's owner and mode.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<FuseDisk> {
        let root = backing
            .canonicalize()
            .with_context(|| format!("backing directory {}", backing.display()))?;
        let meta = std::fs::metadata(&root)
            .with_context(|| format!("backing directory {}", root.display()))?;
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
        let shared = Arc::new(Shared {
            inodes: Mutex::new(Inodes::new(&root, &meta)),
            root,
            delay_ns: AtomicU64::new(0),
            stats: Counters::default(),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            buffers: Mutex::new(Buffers::default()),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("{FSNAME_PREFIX}{}", std::process::id())),
            MountOption::Subtype("vigil".into()),
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(THREADS);
        config.clone_fd = true;
        let fs = PassFs {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(fs, &mountpoint, &config)
            .with_context(|| format!("mounting FUSE at {}", mountpoint.display()))?;
        let notifier = session.notifier();
        Ok(FuseDisk {
            shared,
            session: Some(session),
            notifier,
            mountpoint,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory (what survives a power cut).
    pub fn backing(&self) -> &Path {
        &self.shared.root
    }

    /// slow_disk: from now on each write, fsync, fdatasync (and fsyncdir)
    /// request waits `d` first (ZERO: none). Requests already waiting keep
    /// their delay.
    pub fn set_delay(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_ns.store(ns, Ordering::Relaxed);
    }

    /// lose_unsynced, LazyFS's model: while buffered, file data written is
    /// kept in memory (reads see it) and reaches the backing file only at
    /// fsync/fdatasync of that file (or when buffering is turned off: then
    /// everything is written out).
    pub fn set_buffered(&self, on: bool) {
        let mut bufs = lock(&self.shared.buffers);
        if !on {
            let inos: Vec<u64> = bufs.dirty.keys().copied().collect();
            for ino in inos {
                if let Err(e) = self.shared.flush_locked(&mut bufs, ino) {
                    tracing::warn!(ino, error = %e, "fuse: writing out buffered data failed");
                    bufs.dirty.remove(&ino);
                }
            }
        }
        bufs.on = on;
    }

    /// The power went out: drop every write not yet fsynced; the backing
    /// directory keeps what was synced. Buffering stays as it was. Call it
    /// once the processes using the mount are dead (as Jepsen does): a live
    /// process's dirty mmap pages could be written back afterwards.
    pub fn lose_unsynced(&self) -> Lost {
        let dropped = std::mem::take(&mut lock(&self.shared.buffers).dirty);
        let paths = lock(&self.shared.inodes).snapshot();
        let mut lost = Lost::default();
        for (ino, d) in &dropped {
            lost.bytes += d.bytes;
            let rel = paths
                .get(ino)
                .and_then(|p| p.strip_prefix(&self.shared.root).ok())
                .map(Path::to_path_buf)
                .unwrap_or_default();
            lost.files.push(rel);
        }
        lost.files.sort();
        // The kernel's page cache still holds what was dropped: forget it
        // (data and attributes) so that the next read comes here.
        for ino in dropped.keys() {
            let _ = self.notifier.inval_inode(INodeNo(*ino), 0, 0);
        }
        let s = &self.shared.stats;
        s.dropped_bytes.fetch_add(lost.bytes, Ordering::Relaxed);
        s.dropped_files
            .fetch_add(lost.files.len() as u64, Ordering::Relaxed);
        s.losses.fetch_add(1, Ordering::Relaxed);
        lost
    }

    pub fn stats(&self) -> DiskStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let buffered_bytes = lock(&self.shared.buffers)
            .dirty
            .values()
            .map(|d| d.bytes)
            .sum();
        DiskStats {
            writes: get(&s.writes),
            write_bytes: get(&s.write_bytes),
            fsyncs: get(&s.fsyncs),
            delayed_calls: get(&s.delayed_calls),
            delayed_bytes: get(&s.delayed_bytes),
            buffered_bytes,
            synced_bytes: get(&s.synced_bytes),
            dropped_bytes: get(&s.dropped_bytes),
            dropped_files: get(&s.dropped_files),
            losses: get(&s.losses),
        }
    }

    /// Write out what is buffered, then unmount; if the mount is busy,
    /// detach it lazily (it goes once its last user closes its files).
    pub fn unmount(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.set_delay(Duration::ZERO);
        self.set_buffered(false);
        // The kernel's name for this connection (fusectl), read while the
        // mount still answers.
        let conn = nix::sys::stat::stat(&self.mountpoint)
            .ok()
            .map(|st| nix::sys::stat::minor(st.st_dev));
        use nix::mount::{MntFlags, umount2};
        match umount2(&self.mountpoint, MntFlags::empty()) {
            Ok(()) => session
                .join()
                .with_context(|| format!("FUSE session of {}", self.mountpoint.display())),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(&self.mountpoint, MntFlags::MNT_DETACH).with_context(|| {
                    format!("detaching the busy mount {}", self.mountpoint.display())
                })?;
                tracing::warn!(mountpoint = %self.mountpoint.display(), "fuse: mount busy, detached lazily; aborting its connection");
                // Abort the connection: whatever still uses the mount gets
                // an error instead of a server. Without it, a process with
                // a file of the mount mapped (SQLite's -shm) whose own
                // threads serve the mount hangs for good in its exit
                // (exit_mmap waits for a writeback no thread is left to
                // serve: an unkillable zombie, seen here).
                if let Some(c) = conn {
                    abort_connection(c);
                }
                drop(session);
                Ok(())
            }
            Err(e) => {
                drop(session);
                Err(e).with_context(|| format!("unmounting {}", self.mountpoint.display()))
            }
        }
    }
}

/// Abort FUSE connection `conn` through fusectl (mounted here if it is
/// not yet): every request pending or to come fails at once.
fn abort_connection(conn: u64) {
    let ctl = Path::new("/sys/fs/fuse/connections");
    if !ctl.join(conn.to_string()).exists() {
        let _ = nix::mount::mount(
            Some("fusectl"),
            ctl,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let abort = ctl.join(conn.to_string()).join("abort");
    if let Err(e) = std::fs::write(&abort, "1") {
        tracing::warn!(path = %abort.display(), error = %e, "fuse: could not abort the connection");
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %format!("{e:#}"), "fuse: unmount on drop failed");
        }
    }
}

/// One FUSE mount of this layer, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OurMount {
    mountpoint: PathBuf,
    pid: u32,
}

/// `\040`-style escapes of mountinfo paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<OurMount> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        if !fstype.starts_with("fuse") {
            continue;
        }
        let Some(pid) = source
            .strip_prefix(FSNAME_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(mp) = left.split_whitespace().nth(4) else {
            continue;
        };
        found.push(OurMount {
            mountpoint: PathBuf::from(unescape(mp)),
            pid,
        });
    }
    found
}

fn running(pid: u32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // A zombie serves nothing: one stuck in its exit behind its own mount
    // is exactly what the sweep must free.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false);
    raw > 0
        && !zombie
        && !matches!(
            kill(Pid::from_raw(raw), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// The FUSE connection (fusectl's name: the device's minor) of the mount
/// at `mountpoint`, from mountinfo's `major:minor` field.
fn conn_of(mountinfo: &str, mountpoint: &Path) -> Option<u64> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let dev = f.nth(2)?;
        let mp = f.nth(1)?;
        (Path::new(&unescape(mp)) == mountpoint)
            .then(|| dev.split_once(':')?.1.parse().ok())
            .flatten()
    })
}

/// Unmount (lazily: `umount2(MNT_DETACH)`, which also clears a mount left
/// "Transport endpoint is not connected") every mount of this layer whose
/// serving process is gone, e.g. a runner SIGKILLed mid-scenario; the
/// mountpoints unmounted. Mounts are recognised by their source,
/// `vigil-fuse:<pid>`, wherever they are. Needs root (else `fusermount3
/// -uz` is tried).
pub fn sweep() -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut swept = Vec::new();
    // Deepest first: a mount inside another goes before it.
    let mut mounts = parse_mountinfo(&text);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mountpoint.components().count()));
    for m in mounts {
        if running(m.pid) {
            continue;
        }
        // Pending requests fail at once (a process stuck in its exit
        // behind them goes), then the mount itself.
        if let Some(c) = conn_of(&text, &m.mountpoint) {
            abort_connection(c);
        }
        let detached = nix::mount::umount2(&m.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        if detached.is_err() {
            let out = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&m.mountpoint)
                .output()
                .with_context(|| format!("fusermount3 -uz {}", m.mountpoint.display()))?;
            if !out.status.success() {
                anyhow::bail!(
                    "unmounting {}: {}",
                    m.mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        swept.push(m.mountpoint);
    }
    Ok(swept)
}
