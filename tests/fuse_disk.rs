//! chaos::fuse against real programs on real mounts (root and /dev/fuse):
//! SQLite in WAL mode shared by processes, a PostgreSQL server with its data
//! directory on the mount, and `sweep` of a mount whose process was killed.
//! Child processes are this test binary again, run with VIGIL_FUSE_CHILD
//! (see `child_entry`).

// SERIAL is held across awaits on purpose: each test has its own runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::await_holding_lock)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};
use vigil::chaos::fuse::{FuseDisk, sweep};

const CHILD_VAR: &str = "VIGIL_FUSE_CHILD";

/// One test of this file at a time: each starts child processes or a
/// server, and the latency numbers it prints should not share the cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// A base directory others can traverse, with backing/ and mnt/ in it.
fn dirs(parent: Option<&Path>) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let mut b = tempfile::Builder::new();
    b.prefix("vigil-fuse-it-");
    let dir = match parent {
        Some(p) => b.tempdir_in(p),
        None => b.tempdir(),
    }
    .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    (dir, backing, mnt)
}

/// This test binary again, running `child_entry` with `spec`.
fn spawn_child(spec: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Read the child's stdout until `word` alone on a line.
fn wait_for(out: &mut BufReader<std::process::ChildStdout>, word: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child ended before {word}"
        );
        // libtest may print "test child_entry ... " before it on the line
        if line.trim().ends_with(word) {
            return;
        }
    }
}

fn sqlite_opts(db: &Path, sync: &str) -> sqlx::sqlite::SqliteConnectOptions {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::from_str(sync).unwrap())
        .busy_timeout(Duration::from_secs(30))
}

async fn sqlite_insert(db: &Path, sync: &str, who: &str, n: u32) {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlite_opts(db, sync))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS t (who TEXT, i INTEGER, pad BLOB)")
        .execute(&pool)
        .await
        .unwrap();
    for i in 0..n {
        // One transaction each: every commit is a WAL append (and, at
        // synchronous=FULL, an fsync).
        sqlx::query("INSERT INTO t VALUES (?, ?, zeroblob(700))")
            .bind(who)
            .bind(i)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

/// Rows of `t`, or the error (e.g. "no such table") as text.
async fn sqlite_count(db: &Path) -> Result<i64, String> {
    use sqlx::Connection;
    let mut c = sqlx::sqlite::SqliteConnection::connect_with(&sqlite_opts(db, "NORMAL"))
        .await
        .map_err(|e| e.to_string())?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(check, "ok", "{}", db.display());
    let n = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut c)
        .await
        .map_err(|e| e.to_string());
    c.close().await.ok();
    n
}

/// Not a test on its own: the child processes' entry (see `spawn_child`).
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_VAR) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    match parts.as_slice() {
        ["mount", backing, mnt] => {
            let _disk = FuseDisk::mount(Path::new(backing), Path::new(mnt)).unwrap();
            println!("ready");
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        ["sqlite", db, sync, who, n, then] => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(sqlite_insert(Path::new(db), sync, who, n.parse().unwrap()));
            println!("done");
            std::io::stdout().flush().unwrap();
            if *then == "hang" {
                // Wait to be SIGKILLed: no clean close, no last checkpoint.
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
        }
        other => panic!("bad {CHILD_VAR}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_wal_shared_by_processes_on_the_mount() {
    if !fuse_available() {
        return;
    }
    let _serial = serial();
    let (_dir, backing, mnt) = dirs(None);
    let disk = FuseDisk::mount(&backing, &mnt).unwrap();
    let db = mnt.join("app.db");
    // This process holds a connection (and so the -shm mapping) open
    // throughout, two children write at once, and so does this process.
    sqlite_insert(&db, "NORMAL", "parent", 1).await;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlite_opts(&db, "NORMAL"))
        .await
        .unwrap();
    let spec = |who: &str| format!("sqlite|{}|NORMAL|{who}|200|exit", db.display());
    // (their stdout readers kept: a closed pipe would fail their prints)
    let (mut a, _a_out) = spawn_child(&spec("a"));
    let (mut b, _b_out) = spawn_child(&spec("b"));
    for i in 1..100 {
        sqlx::query("INSERT INTO t VALUES ('parent', ?, zeroblob(700))")
            .bind(i)
            .execute(&pool)
            .await
            .unwrap();
    }
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 500);
    pool.close().await;
    assert_eq!(sqlite_count(&db).await, Ok(500));
    let stats = disk.stats();
    eprintln!("sqlite WAL, 3 processes, 500 commits: {stats:?}");
    disk.unmount().unwrap();
    // and the backing directory holds the same database
    assert_eq!(sqlite_count(&backing.join("app.db")).await, Ok(500));
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_synchronous_full_survives_lose_unsynced_and_off_does_not() {
    if !fuse_available() {
        return;
    }
    let _serial = serial();
    let (_dir, backing, mnt) = dirs(None);
    let disk = FuseDisk::mount(&backing, &mnt).unwrap();
    disk.set_buffered(true);
    for sync in ["FULL", "OFF"] {
        let db = mnt.join(format!("{sync}.db"));
        let (mut child, mut out) =
            spawn_child(&format!("sqlite|{}|{sync}|w|50|hang", db.display()));
        wait_for(&mut out, "done");
        // the power goes out under the writer: it dies first (Jepsen kills
        // the database, then drops the cache)
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let lost = disk.lose_unsynced();
    let full = sqlite_count(&mnt.join("FULL.db")).await;
    let off = sqlite_count(&mnt.join("OFF.db")).await;
    eprintln!("lost {lost:?}; synchronous=FULL: {full:?}; synchronous=OFF: {off:?}");
    // FULL fsyncs the WAL at each commit: all 50 are there. OFF never
    // fsyncs: the rows (and the table) were only ever in the cache.
    assert_eq!(full, Ok(50));
    assert!(
        matches!(&off, Err(e) if e.contains("no such table")) || matches!(off, Ok(n) if n < 50),
        "{off:?}"
    );
    assert!(
        lost.files.iter().any(|f| f.starts_with("OFF.db")),
        "{lost:?}"
    );
    disk.unmount().unwrap();
}

#[test]
fn sweep_unmounts_the_mount_of_a_killed_process() {
    if !fuse_available() {
        return;
    }
    let _serial = serial();
    let (_dir, backing, mnt) = dirs(None);
    std::fs::write(backing.join("f"), b"here").unwrap();
    let (mut child, mut out) =
        spawn_child(&format!("mount|{}|{}", backing.display(), mnt.display()));
    wait_for(&mut out, "ready");
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"here");
    child.kill().unwrap();
    child.wait().unwrap();
    let err = std::fs::metadata(mnt.join("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOTCONN), "{err}");
    let swept = sweep().unwrap();
    let mnt = mnt.canonicalize().unwrap();
    assert!(swept.contains(&mnt), "{swept:?}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(&format!(" {} ", mnt.display())), "{info}");
    // the bare directory again
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
}

/// A 4 KiB write then fdatasync, `n` times; the mean of one.
fn write_fsync_mean(dir: &Path, n: u32) -> Duration {
    let mut f = std::fs::File::create(dir.join("lat")).unwrap();
    let block = [7u8; 4096];
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    start.elapsed() / n
}

/// What the layer adds to a write + fdatasync, printed for the record
/// (never asserted: a figure is a benchmark's business); asserted only
/// that a delay makes both the write and the fdatasync wait, a lower
/// bound no load can break.
#[test]
fn write_fsync_latency_through_the_layer() {
    if !fuse_available() {
        return;
    }
    let _serial = serial();
    let shm = Path::new("/dev/shm");
    let parent = shm.is_dir().then_some(shm);
    let (_dir, backing, mnt) = dirs(parent);
    let plain = write_fsync_mean(&backing, 300);
    let disk = FuseDisk::mount(&backing, &mnt).unwrap();
    let fused = write_fsync_mean(&mnt, 300);
    disk.set_buffered(true);
    let buffered = write_fsync_mean(&mnt, 300);
    disk.set_buffered(false);
    disk.set_delay(Duration::from_millis(5));
    let delayed = write_fsync_mean(&mnt, 20);
    let stats = disk.stats();
    disk.unmount().unwrap();
    eprintln!(
        "4 KiB write + fdatasync, mean: backing {} {plain:?}, through FUSE {fused:?}, \
         buffered {buffered:?}, with a 5 ms delay {delayed:?}; {stats:?}",
        if parent.is_some() {
            "(tmpfs)"
        } else {
            "(/tmp)"
        }
    );
    assert!(
        delayed >= Duration::from_millis(10),
        "write and fsync both wait"
    );
}

/// A PostgreSQL server run as `postgres` (via runuser) with its data
/// directory on the mount, its socket and log beside it.
struct Pg {
    bin: PathBuf,
    data: PathBuf,
    run: PathBuf,
    port: u16,
}

impl Pg {
    fn tool(&self, tool: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
        c
    }
    fn ok(mut c: Command, what: &str) -> Result<(), String> {
        let out = c.output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
    fn start(&self, fsync: &str) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync}",
            self.port,
            self.run.display()
        );
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.run.join("log"));
        c.args(["-w", "-t", "60", "-o", &opts, "start"]);
        Self::ok(c, "pg_ctl start").map_err(|e| format!("{e}\n{}", self.log()))
    }
    fn stop(&self, mode: &str) -> Result<(), String> {
        let mut c = self.tool("pg_ctl");
        c.arg("-D").arg(&self.data).args(["-m", mode, "-w", "stop"]);
        Self::ok(c, "pg_ctl stop")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("log")).unwrap_or_default()
    }
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
    async fn count(&self, table: &str) -> Result<i64, String> {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url())
            .await
            .map_err(|e| e.to_string())?;
        let n = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut c)
            .await
            .map_err(|e| e.to_string());
        c.close().await.ok();
        n
    }
    /// `n` rows into a new `table`, one autocommit INSERT each.
    async fn insert(&self, table: &str, n: i32) -> Duration {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (i int, pad text)"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        let start = Instant::now();
        for i in 0..n {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} VALUES ($1, repeat('x', 500))"
            )))
            .bind(i)
            .execute(&mut c)
            .await
            .unwrap();
        }
        let took = start.elapsed();
        c.close().await.ok();
        took
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_on_the_mount_keeps_committed_rows_across_lost_unsynced_writes() {
    if !fuse_available() {
        return;
    }
    let _serial = serial();
    let (Some(bin), Ok(Some(pg_user))) = (
        vigil::cluster::pgserver::find_bin(),
        nix::unistd::User::from_name("postgres"),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no PostgreSQL server binaries or no postgres user"
        );
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    };
    let (dir, backing, mnt) = dirs(None);
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for d in [&backing, &run] {
        nix::unistd::chown(d.as_path(), Some(pg_user.uid), Some(pg_user.gid)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let disk = FuseDisk::mount(&backing, &mnt).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg = Pg {
        bin,
        data: mnt.join("data"),
        run,
        port,
    };
    // initdb through the layer, unbuffered (so everything it wrote is
    // there), syncing as it does by default.
    let mut init = pg.tool("initdb");
    init.arg("-D")
        .arg(&pg.data)
        .args(["-U", "postgres", "-A", "trust"]);
    Pg::ok(init, "initdb").unwrap();

    // fsync=on: what was committed survives the power cut.
    disk.set_buffered(true);
    pg.start("on").unwrap();
    let took = pg.insert("kept", 200).await;
    let before = disk.stats();
    pg.stop("immediate").unwrap();
    let lost = disk.lose_unsynced();
    eprintln!(
        "fsync=on: 200 commits in {took:?}; stats {before:?}; lost {} bytes of {} files",
        lost.bytes,
        lost.files.len()
    );
    pg.start("on").unwrap();
    assert_eq!(pg.count("kept").await, Ok(200), "{}", pg.log());
    pg.stop("fast").unwrap();

    // fsync=off: nothing is ever synced, so the cut takes what the
    // checkpoint-less server wrote since its start. Reported, not asserted:
    // what is left depends on what the server happened to write out.
    pg.start("off").unwrap();
    let took = pg.insert("unsafe", 200).await;
    pg.stop("immediate").unwrap();
    let lost = disk.lose_unsynced();
    let after = match pg.start("off") {
        Ok(()) => {
            let n = pg.count("unsafe").await;
            let kept = pg.count("kept").await;
            pg.stop("fast").ok();
            format!("restarted; unsafe: {n:?}; kept: {kept:?}")
        }
        Err(e) => format!("did not restart: {}", e.lines().last().unwrap_or("")),
    };
    eprintln!(
        "fsync=off: 200 commits in {took:?}; lost {} bytes of {} files; {after}",
        lost.bytes,
        lost.files.len()
    );
    disk.set_buffered(false);
    disk.unmount().unwrap();
}
