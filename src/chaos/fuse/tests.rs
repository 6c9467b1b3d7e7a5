//! Real mounts (root and /dev/fuse): the passthrough, the delay and the
//! buffered cache; the cache model and the mountinfo parser without FUSE.

use super::buffer::{Dirty, PAGE};
use super::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Instant;

/// Root and /dev/fuse, or (outside CI) a skip.
fn fuse_available() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "FUSE tests need root and /dev/fuse"
        );
        eprintln!("skipped: FUSE tests need root and /dev/fuse");
    }
    ok
}

struct Mounted {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    disk: FuseDisk,
}

impl Mounted {
    fn new() -> Mounted {
        let dir = tempfile::Builder::new()
            .prefix("vigil-fuse-unit-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let disk = FuseDisk::mount(&backing, &mnt).unwrap();
        Mounted {
            _dir: dir,
            backing,
            disk,
        }
    }
    fn m(&self, rel: &str) -> PathBuf {
        self.disk.mountpoint().join(rel)
    }
    fn b(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }
}

#[test]
fn passthrough_round_trips_data_names_modes_and_owners() {
    if !fuse_available() {
        return;
    }
    let t = Mounted::new();
    std::fs::write(t.m("a.txt"), b"hello fuse").unwrap();
    assert_eq!(std::fs::read(t.m("a.txt")).unwrap(), b"hello fuse");
    assert_eq!(std::fs::read(t.b("a.txt")).unwrap(), b"hello fuse");

    std::fs::create_dir(t.m("d")).unwrap();
    std::fs::set_permissions(t.m("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(std::fs::metadata(t.b("d")).unwrap().mode() & 0o7777, 0o750);
    std::fs::rename(t.m("a.txt"), t.m("d/b.txt")).unwrap();
    assert!(!t.m("a.txt").exists());
    assert_eq!(std::fs::read(t.m("d/b.txt")).unwrap(), b"hello fuse");
    assert_eq!(std::fs::read(t.b("d/b.txt")).unwrap(), b"hello fuse");

    std::fs::set_permissions(t.m("d/b.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(t.m("d/b.txt"), Some(1234), Some(4321)).unwrap();
    for p in [t.m("d/b.txt"), t.b("d/b.txt")] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 1234, 4321));
    }

    // truncate, append, overwrite in the middle
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(t.m("d/b.txt"))
        .unwrap();
    f.set_len(5).unwrap();
    drop(f);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(t.m("d/b.txt"))
        .unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    assert_eq!(std::fs::read(t.b("d/b.txt")).unwrap(), b"hello!!");

    // a directory renamed: what is under it follows
    std::fs::rename(t.m("d"), t.m("e")).unwrap();
    assert_eq!(std::fs::read(t.m("e/b.txt")).unwrap(), b"hello!!");
    std::os::unix::fs::symlink("b.txt", t.m("e/link")).unwrap();
    assert_eq!(std::fs::read(t.m("e/link")).unwrap(), b"hello!!");
    std::fs::hard_link(t.m("e/b.txt"), t.m("e/hard")).unwrap();
    assert_eq!(std::fs::metadata(t.m("e/hard")).unwrap().nlink(), 2);
    let mut names: Vec<String> = std::fs::read_dir(t.m("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b.txt", "hard", "link"]);

    std::fs::remove_file(t.m("e/link")).unwrap();
    std::fs::remove_file(t.m("e/hard")).unwrap();
    std::fs::remove_file(t.m("e/b.txt")).unwrap();
    std::fs::remove_dir(t.m("e")).unwrap();
    assert_eq!(std::fs::read_dir(t.b("")).unwrap().count(), 0);

    let s = nix::sys::statvfs::statvfs(t.disk.mountpoint()).unwrap();
    let b = nix::sys::statvfs::statvfs(&t.backing).unwrap();
    assert!(s.blocks() > 0);
    assert_eq!(s.blocks(), b.blocks());
}

#[test]
fn new_files_belong_to_their_caller_and_modes_are_enforced() {
    if !fuse_available() {
        return;
    }
    let t = Mounted::new();
    std::fs::create_dir(t.m("pub")).unwrap();
    std::fs::set_permissions(t.m("pub"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(t.m("private")).unwrap();
    std::fs::set_permissions(t.m("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let sh = |script: &str| {
        Command::new("runuser")
            .args(["-u", "nobody", "--", "sh", "-c", script])
            .current_dir(t.disk.mountpoint())
            .status()
            .unwrap()
    };
    assert!(sh("umask 077; echo hi > pub/x && mkdir pub/y").success());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let x = std::fs::metadata(t.b("pub/x")).unwrap();
    assert_eq!((x.uid(), x.mode() & 0o777), (nobody.uid.as_raw(), 0o600));
    let y = std::fs::metadata(t.b("pub/y")).unwrap();
    assert_eq!((y.uid(), y.mode() & 0o777), (nobody.uid.as_raw(), 0o700));
    // default_permissions: the kernel refuses what the modes refuse
    assert!(!sh("(echo no > private/z) 2>/dev/null").success());
    assert!(!t.b("private/z").exists());
}

#[test]
fn delay_holds_every_write_and_fsync() {
    if !fuse_available() {
        return;
    }
    let t = Mounted::new();
    let mut f = std::fs::File::create(t.m("slow")).unwrap();
    let before = t.disk.stats();
    t.disk.set_delay(Duration::from_millis(200));
    let start = Instant::now();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    let took = start.elapsed();
    let after = t.disk.stats();
    assert_eq!(after.delayed_calls - before.delayed_calls, 2, "{after:?}");
    assert_eq!(after.delayed_bytes - before.delayed_bytes, 1);
    assert!(took >= Duration::from_millis(400), "{took:?}");

    t.disk.set_delay(Duration::ZERO);
    f.write_all(b"y").unwrap();
    f.sync_data().unwrap();
    let last = t.disk.stats();
    assert_eq!(last.delayed_calls, after.delayed_calls);
    assert_eq!(last.fsyncs - after.fsyncs, 1);
    assert_eq!(std::fs::read(t.b("slow")).unwrap(), b"xy");
}

#[test]
fn buffered_writes_reach_the_backing_file_only_at_fsync_and_the_rest_is_lost() {
    if !fuse_available() {
        return;
    }
    let t = Mounted::new();
    t.disk.set_buffered(true);
    let a = vec![b'A'; 5000];
    let b = vec![b'B'; 3000];
    let mut f = std::fs::File::create(t.m("x")).unwrap();
    f.write_all(&a).unwrap();
    f.sync_all().unwrap();
    f.write_all(&b).unwrap();
    // reads see the buffered data, the backing file does not have it
    let mut seen = Vec::new();
    std::fs::File::open(t.m("x"))
        .unwrap()
        .read_to_end(&mut seen)
        .unwrap();
    assert_eq!(seen.len(), 8000);
    assert_eq!(&seen[5000..], &b[..]);
    assert_eq!(std::fs::read(t.b("x")).unwrap(), a);
    assert_eq!(std::fs::metadata(t.m("x")).unwrap().len(), 8000);
    drop(f);

    // written then fsynced: survives whole; never synced: empty
    let whole: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut g = std::fs::File::create(t.m("y")).unwrap();
    g.write_all(&whole).unwrap();
    g.sync_data().unwrap();
    drop(g);
    std::fs::write(t.m("z"), b"never synced").unwrap();

    let lost = t.disk.lose_unsynced();
    assert_eq!(
        lost,
        Lost {
            files: vec![PathBuf::from("x"), PathBuf::from("z")],
            bytes: 3000 + 12
        }
    );
    assert_eq!(std::fs::read(t.b("x")).unwrap(), a);
    assert_eq!(
        std::fs::read(t.m("x")).unwrap(),
        a,
        "the page cache was dropped too"
    );
    assert_eq!(std::fs::read(t.m("y")).unwrap(), whole);
    assert_eq!(
        std::fs::read(t.m("z")).unwrap(),
        b"",
        "metadata passes through"
    );
    let s = t.disk.stats();
    assert_eq!((s.dropped_bytes, s.dropped_files, s.losses), (3012, 2, 1));
    assert_eq!(s.buffered_bytes, 0);

    // buffering off writes everything out
    std::fs::write(t.m("w"), b"kept").unwrap();
    assert_eq!(std::fs::read(t.b("w")).unwrap(), b"");
    t.disk.set_buffered(false);
    assert_eq!(std::fs::read(t.b("w")).unwrap(), b"kept");
}

#[test]
fn buffered_truncate_passes_through_and_o_dsync_writes_are_synced() {
    if !fuse_available() {
        return;
    }
    let t = Mounted::new();
    std::fs::write(t.m("t"), vec![b'o'; 10_000]).unwrap();
    t.disk.set_buffered(true);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.m("t"))
        .unwrap();
    f.seek(SeekFrom::Start(9000)).unwrap();
    f.write_all(&[b'n'; 3000]).unwrap();
    f.set_len(9500).unwrap();
    assert_eq!(std::fs::metadata(t.b("t")).unwrap().len(), 9500);
    f.set_len(11_000).unwrap();
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 11_000);
    assert!(all[..9000].iter().all(|&c| c == b'o'));
    assert!(all[9000..9500].iter().all(|&c| c == b'n'));
    assert!(all[9500..].iter().all(|&c| c == 0));
    drop(f);
    t.disk.lose_unsynced();
    let back = std::fs::read(t.m("t")).unwrap();
    assert_eq!(back.len(), 11_000, "the truncations were not buffered");
    assert!(back[..9500].iter().all(|&c| c == b'o'));

    let mut d = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(nix::libc::O_DSYNC)
        .open(t.m("dsync"))
        .unwrap();
    d.write_all(b"durable").unwrap();
    drop(d);
    t.disk.lose_unsynced();
    assert_eq!(std::fs::read(t.m("dsync")).unwrap(), b"durable");
}

use std::os::unix::fs::OpenOptionsExt;

#[test]
fn the_cache_overlays_the_backing_file_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, vec![1u8; 5000]).unwrap();
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap(),
    );
    let mut d = Dirty::new(file.clone()).unwrap();
    d.write(4090, &[2u8; 20]).unwrap();
    d.write(3 * PAGE + 10, &[3u8; 2]).unwrap();
    assert_eq!(d.size, 3 * PAGE + 12);
    let all = d.read(0, 100_000).unwrap();
    assert_eq!(all.len() as u64, 3 * PAGE + 12);
    assert!(all[..4090].iter().all(|&c| c == 1));
    assert!(all[4090..4110].iter().all(|&c| c == 2));
    assert!(all[4110..5000].iter().all(|&c| c == 1));
    assert!(all[5000..(3 * PAGE + 10) as usize].iter().all(|&c| c == 0));
    assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 5000]);
    // truncation reaches the backing file first (Shared::truncate)
    file.set_len(4100).unwrap();
    d.truncate(4100);
    file.set_len(4200).unwrap();
    d.truncate(4200);
    assert!(d.read(4100, 100).unwrap().iter().all(|&c| c == 0));
    assert_eq!(d.flush().unwrap(), 22);
    let back = std::fs::read(&p).unwrap();
    assert_eq!(back.len(), 4200);
    assert!(back[4090..4100].iter().all(|&c| c == 2));
    assert!(back[4100..].iter().all(|&c| c == 0));
    assert!(d.is_empty());
}

#[test]
fn mountinfo_finds_our_mounts_by_source() {
    let text = "\
36 35 98:0 / /tmp/vigil\\040fuse-1 rw,nosuid,nodev,relatime shared:1 - fuse vigil-fuse:4242 rw,user_id=0,group_id=0,default_permissions,allow_other
37 35 98:0 / /mnt/other rw - fuse.sshfs host:/ rw
38 35 98:0 / /tmp/x rw - fuse.vigil vigil-fuse:7 rw
39 35 0:5 / /tmp rw - tmpfs tmpfs rw
";
    assert_eq!(
        parse_mountinfo(text),
        vec![
            OurMount {
                mountpoint: PathBuf::from("/tmp/vigil fuse-1"),
                pid: 4242
            },
            OurMount {
                mountpoint: PathBuf::from("/tmp/x"),
                pid: 7
            },
        ]
    );
}
