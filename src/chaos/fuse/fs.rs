//! The passthrough filesystem behind [`super::FuseDisk`]: every request is
//! done on the backing directory as root, new files and directories given
//! to the caller's uid/gid, so that the kernel's `default_permissions`
//! checks (against the attributes reported here) are the only permission
//! checks. Inode numbers are this layer's own, mapped to backing paths
//! (renames update the map); open files are backing descriptors, so an
//! unlinked file stays readable through them. File data goes through
//! [`Shared::write_data`], which delays it and, in buffered mode, keeps it
//! in [`super::buffer::Dirty`] until fsync.

use super::buffer::Dirty;
use super::{Shared, lock};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache attributes and entries. Every change goes
/// through the kernel, so its caches stay right; `lose_unsynced`
/// invalidates what it drops.
const TTL: Duration = Duration::from_secs(1);

/// Backing paths of this layer's inode numbers.
#[derive(Debug, Default)]
pub(super) struct Inodes {
    by_key: HashMap<(u64, u64), u64>,
    paths: HashMap<u64, PathBuf>,
    /// Unlinked (no name left) but maybe still open.
    orphans: std::collections::HashSet<u64>,
    next: u64,
}

impl Inodes {
    pub fn new(root: &Path, meta: &Metadata) -> Inodes {
        let mut i = Inodes {
            next: 2,
            ..Inodes::default()
        };
        i.by_key.insert((meta.dev(), meta.ino()), 1);
        i.paths.insert(1, root.to_path_buf());
        i
    }

    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        self.paths
            .get(&ino)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    /// The inode number of the file `meta` describes, now found at `path`.
    fn intern(&mut self, path: &Path, meta: &Metadata) -> u64 {
        let key = (meta.dev(), meta.ino());
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_key.insert(key, ino);
                ino
            }
        };
        self.paths.insert(ino, path.to_path_buf());
        ino
    }

    /// `from` was renamed to `to`: it and everything under it moved.
    fn renamed(&mut self, from: &Path, to: &Path) {
        for p in self.paths.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// `path` no longer names the file it named (unlinked, or replaced).
    fn gone(&mut self, path: &Path, meta: &Metadata) -> Option<u64> {
        let key = (meta.dev(), meta.ino());
        let ino = *self.by_key.get(&key)?;
        if self.paths.get(&ino).map(PathBuf::as_path) == Some(path) {
            self.paths.remove(&ino);
            if meta.nlink() <= 1 || meta.is_dir() {
                self.by_key.remove(&key);
                self.orphans.insert(ino);
            }
        }
        Some(ino)
    }

    pub fn snapshot(&self) -> HashMap<u64, PathBuf> {
        self.paths.clone()
    }
}

#[derive(Debug)]
pub(super) struct OpenFile {
    pub file: Arc<File>,
    pub ino: u64,
}

#[derive(Debug)]
pub(super) struct OpenDir {
    path: PathBuf,
    entries: Vec<(u64, FileType, OsString)>,
}

/// What a setattr request changes.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
    fh: Option<FileHandle>,
}

pub(super) struct PassFs {
    pub shared: Arc<Shared>,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs)
    }
}

fn timespec(t: Option<TimeOrNow>) -> nix::sys::time::TimeSpec {
    use nix::sys::time::TimeSpec;
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            TimeSpec::from_duration(d)
        }
    }
}

impl PassFs {
    fn attr(&self, ino: u64, m: &Metadata) -> FileAttr {
        let mut size = m.size();
        if m.is_file()
            && let Some(d) = lock(&self.shared.buffers).dirty.get(&ino)
        {
            size = d.size;
        }
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: m.blocks().max(size.div_ceil(512)),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: time(m.ctime(), m.ctime_nsec()),
            kind: kind_of(m.mode()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> io::Result<PathBuf> {
        lock(&self.shared.inodes).path(ino.0)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> io::Result<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    /// Stat `path` and give it its inode number.
    fn entry(&self, path: &Path) -> io::Result<FileAttr> {
        let m = std::fs::symlink_metadata(path)?;
        let ino = lock(&self.shared.inodes).intern(path, &m);
        Ok(self.attr(ino, &m))
    }

    fn open_file(&self, fh: FileHandle) -> io::Result<Arc<File>> {
        lock(&self.shared.files)
            .get(&fh.0)
            .map(|f| f.file.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn register(&self, file: File, ino: u64) -> FileHandle {
        let fh = self.shared.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.files).insert(
            fh,
            OpenFile {
                file: Arc::new(file),
                ino,
            },
        );
        FileHandle(fh)
    }

    /// The owner a new file under `parent` gets: the caller, with the
    /// parent's group if it is set-group-ID (as the kernel does).
    fn owner(&self, req: &Request, parent: &Path) -> (u32, u32, bool) {
        match std::fs::metadata(parent) {
            Ok(m) if m.mode() & libc::S_ISGID != 0 => (req.uid(), m.gid(), true),
            _ => (req.uid(), req.gid(), false),
        }
    }

    /// Open flags for the backing descriptor: write-only becomes read-write
    /// (the cache fills pages from it), and O_APPEND, O_DIRECT and the sync
    /// flags are this layer's business, not the backing file's.
    fn backing_flags(flags: i32) -> (bool, bool, i32) {
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY;
        let custom = flags
            & !(libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_DIRECT
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_TRUNC
                | libc::O_NOCTTY
                | libc::O_SYNC
                | libc::O_DSYNC);
        (true, write, custom)
    }

    fn open_backing(path: &Path, flags: i32) -> io::Result<File> {
        let (read, write, custom) = Self::backing_flags(flags);
        OpenOptions::new()
            .read(read)
            .write(write)
            .custom_flags(custom)
            .open(path)
    }

    fn do_setattr(&self, ino: INodeNo, set: SetAttr) -> io::Result<FileAttr> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = set;
        let path = self.path(ino)?;
        let file = fh.and_then(|fh| self.open_file(fh).ok());
        if let Some(mode) = mode {
            let perm = std::fs::Permissions::from_mode(mode & 0o7777);
            match &file {
                Some(f) => f.set_permissions(perm)?,
                None => std::fs::set_permissions(&path, perm)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            match &file {
                Some(f) => std::os::unix::fs::fchown(f.as_ref(), uid, gid)?,
                None => std::os::unix::fs::lchown(&path, uid, gid)?,
            }
        }
        if let Some(size) = size {
            self.shared.truncate(ino.0, &path, file.as_deref(), size)?;
        }
        if atime.is_some() || mtime.is_some() {
            let (a, m) = (timespec(atime), timespec(mtime));
            match &file {
                Some(f) => nix::sys::stat::futimens(f.as_ref(), &a, &m),
                None => nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    &path,
                    &a,
                    &m,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                ),
            }
            .map_err(nix_io)?;
        }
        let m = match &file {
            Some(f) => f.metadata()?,
            None => std::fs::symlink_metadata(&path)?,
        };
        Ok(self.attr(ino.0, &m))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(FileAttr, FileHandle)> {
        let dir = self.path(parent)?;
        let path = dir.join(name);
        let (_, _, custom) = Self::backing_flags(flags);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).custom_flags(custom);
        let (file, created) = match opts.clone().create_new(true).mode(mode).open(&path) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                (opts.open(&path)?, false)
            }
            Err(e) => return Err(e),
        };
        if created {
            let (uid, gid, _) = self.owner(req, &dir);
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        let m = file.metadata()?;
        let ino = lock(&self.shared.inodes).intern(&path, &m);
        if !created && flags & libc::O_TRUNC != 0 {
            self.shared.truncate(ino, &path, Some(&file), 0)?;
        }
        let attr = self.attr(ino, &file.metadata()?);
        Ok((attr, self.register(file, ino)))
    }

    fn do_read(&self, ino: INodeNo, fh: FileHandle, off: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = self.open_file(fh)?;
        {
            let bufs = lock(&self.shared.buffers);
            if let Some(d) = bufs.dirty.get(&ino.0) {
                return d.read(off, size as usize);
            }
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn snapshot_dir(&self, path: &Path, ino: u64) -> io::Result<Vec<(u64, FileType, OsString)>> {
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for e in std::fs::read_dir(path)? {
            let e = e?;
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue; // gone meanwhile
            };
            let child = lock(&self.shared.inodes).intern(&p, &m);
            entries.push((child, kind_of(m.mode()), e.file_name()));
        }
        Ok(entries)
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let replaced = std::fs::symlink_metadata(&to).ok();
        if flags.is_empty() {
            std::fs::rename(&from, &to)?;
        } else {
            let f = nix::fcntl::RenameFlags::from_bits_truncate(flags.bits());
            nix::fcntl::renameat2(nix::fcntl::AT_FDCWD, &from, nix::fcntl::AT_FDCWD, &to, f)
                .map_err(nix_io)?;
        }
        let mut inodes = lock(&self.shared.inodes);
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let tmp = from.with_file_name(".vigil-fuse-exchange");
            inodes.renamed(&from, &tmp);
            inodes.renamed(&to, &from);
            inodes.renamed(&tmp, &to);
        } else {
            if let Some(m) = &replaced {
                inodes.gone(&to, m);
            }
            inodes.renamed(&from, &to);
        }
        Ok(())
    }

    fn do_unlink(&self, parent: INodeNo, name: &OsStr, dir: bool) -> io::Result<()> {
        let path = self.child(parent, name)?;
        let m = std::fs::symlink_metadata(&path)?;
        if dir {
            std::fs::remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        // (bound first: an `if let` would hold the inodes lock in its body)
        let ino = lock(&self.shared.inodes).gone(&path, &m);
        if let Some(ino) = ino {
            self.reap(ino);
        }
        Ok(())
    }

    /// A removed file nobody has open any more: its cached data can never
    /// be read or synced again (the kernel releases files after close(2)
    /// returns, so this runs at unlink and at release).
    fn reap(&self, ino: u64) {
        let orphan = lock(&self.shared.inodes).orphans.contains(&ino);
        let open = lock(&self.shared.files).values().any(|f| f.ino == ino);
        if !orphan || open {
            return;
        }
        lock(&self.shared.inodes).orphans.remove(&ino);
        lock(&self.shared.buffers).dirty.remove(&ino);
    }

    fn do_mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
    ) -> io::Result<FileAttr> {
        let dir = self.path(parent)?;
        let path = dir.join(name);
        let (uid, gid, sgid) = self.owner(req, &dir);
        let mode = (mode & 0o7777) | if sgid { libc::S_ISGID } else { 0 };
        std::fs::DirBuilder::new().mode(mode).create(&path)?;
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        self.entry(&path)
    }

    fn do_statfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(&self.shared.root).map_err(nix_io)
    }
}

impl Filesystem for PassFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.entry(&p)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = match fh.and_then(|fh| self.open_file(fh).ok()) {
            Some(f) => f.metadata(),
            None => self.path(ino).and_then(std::fs::symlink_metadata),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &self.attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        };
        match self.do_setattr(ino, set) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(std::fs::read_link) {
            Ok(t) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mkdir(req, parent, name, mode) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.child(parent, link_name).and_then(|p| {
            std::os::unix::fs::symlink(target, &p)?;
            std::os::unix::fs::lchown(&p, Some(req.uid()), Some(req.gid()))?;
            self.entry(&p)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.path(ino).and_then(|from| {
            let to = self.child(newparent, newname)?;
            std::fs::hard_link(&from, &to)?;
            let m = std::fs::symlink_metadata(&to)?;
            Ok(self.attr(ino.0, &m))
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| Self::open_backing(&p, flags.0));
        match r {
            // No direct_io: the page cache (and so MAP_SHARED mmap, which
            // SQLite's -shm needs) stays on. Every write comes through the
            // kernel, so its cache is kept across opens.
            Ok(f) => reply.opened(self.register(f, ino.0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let sync = flags.0 & libc::O_DSYNC != 0;
        let r = self
            .open_file(fh)
            .and_then(|f| self.shared.write_data(ino.0, &f, offset, data, sync));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is no durability point: buffered data stays buffered.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let gone = lock(&self.shared.files).remove(&fh.0);
        if let Some(f) = gone {
            self.reap(f.ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self
            .open_file(fh)
            .and_then(|f| self.shared.sync_data(ino.0, &f, datasync));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| {
            let entries = self.snapshot_dir(&p, ino.0)?;
            Ok(OpenDir { path: p, entries })
        });
        match r {
            Ok(d) => {
                let fh = self.shared.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.shared.dirs).insert(fh, d);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut dirs = lock(&self.shared.dirs);
        let Some(d) = dirs.get_mut(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if offset == 0 {
            // rewinddir: look again.
            let path = d.path.clone();
            drop(dirs);
            let fresh = match self.snapshot_dir(&path, ino.0) {
                Ok(e) => e,
                Err(e) => return reply.error(errno(e)),
            };
            dirs = lock(&self.shared.dirs);
            let Some(d) = dirs.get_mut(&fh.0) else {
                return reply.error(Errno::EBADF);
            };
            d.entries = fresh;
        }
        let Some(d) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (child, kind, name)) in d.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory entries are never buffered: this only waits (a slow
        // disk's fsync) and syncs the backing directory.
        self.shared.delay();
        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        let r = self
            .path(ino)
            .and_then(File::open)
            .and_then(|d| d.sync_all());
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent, name, mode, flags) {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Allocation only (mode 0, or KEEP_SIZE): punching or zeroing holes
        // would go around the buffered cache.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let r = self.open_file(fh).and_then(|f| {
            let flags = nix::fcntl::FallocateFlags::from_bits_truncate(mode);
            nix::fcntl::fallocate(f.as_ref(), flags, offset as i64, length as i64)
                .map_err(nix_io)?;
            if mode == 0
                && let Some(d) = lock(&self.shared.buffers).dirty.get_mut(&ino.0)
            {
                d.extend_to(offset + length);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// A cache over `file` for inode `ino`, made on its first buffered write.
pub(super) fn dirty_for<'a>(
    dirty: &'a mut HashMap<u64, Dirty>,
    ino: u64,
    file: &Arc<File>,
) -> io::Result<&'a mut Dirty> {
    use std::collections::hash_map::Entry;
    Ok(match dirty.entry(ino) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => v.insert(Dirty::new(file.clone())?),
    })
}
