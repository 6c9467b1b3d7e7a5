//! A throwaway PostgreSQL server from the installed binaries, which a
//! scenario can stop and start (store outage), and scratch databases on
//! any server: created for one scenario or benchmark, dropped after.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    /// The data directory (`dir/data` unless a disk of the chaos runner's
    /// holds it).
    data: PathBuf,
    pub port: u16,
    running: bool,
    /// Processes stopped by [`PgServer::freeze`], to continue.
    frozen: Vec<i32>,
    /// fsync on: what it acknowledged survives a power cut (off, the
    /// default, for speed where no fault loses unsynced writes).
    durable: bool,
}

/// The newest installed PostgreSQL server binaries (`VIGIL_PG_BIN` if set).
pub fn find_bin() -> Option<PathBuf> {
    if let Ok(b) = std::env::var("VIGIL_PG_BIN") {
        return Some(PathBuf::from(b));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl PgServer {
    fn cmd(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            // initdb and postgres refuse to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Initialize and start a server on a free loopback port.
    pub fn start() -> Result<PgServer> {
        Self::start_in(Self::scratch_dir(), None, None, false)
    }

    /// A fresh directory name for a server's files (socket, log, and its
    /// data directory unless placed elsewhere).
    pub fn scratch_dir() -> PathBuf {
        std::env::temp_dir().join(format!("vigil-chaos-pg-{}", uuid::Uuid::now_v7().simple()))
    }

    /// The uid and gid the server runs as (`postgres` when this process is
    /// root): a disk for its files must belong to them.
    pub fn owner() -> Result<Option<(u32, u32)>> {
        if !is_root() {
            return Ok(None);
        }
        let pg = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
        Ok(Some((pg.uid.as_raw(), pg.gid.as_raw())))
    }

    /// [`PgServer::start`] with its files (data directory, log, socket) in
    /// `dir` and, when given, its WAL in `waldir` (each may be a disk of
    /// the chaos runner's, which storage faults fill).
    /// `data`: the data directory when it is not `dir/data` (the socket
    /// and the log stay in `dir`: a FUSE layer serves no sockets).
    pub fn start_in(
        dir: PathBuf,
        data: Option<PathBuf>,
        waldir: Option<PathBuf>,
        durable: bool,
    ) -> Result<PgServer> {
        let bin = find_bin().context(
            "no PostgreSQL server binaries found (install Debian's postgresql package, or set VIGIL_PG_BIN)",
        )?;
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres")?.context("no postgres user")?;
            nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid))?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = data.unwrap_or_else(|| dir.join("data"));
        let mut s = PgServer {
            bin,
            dir,
            data,
            port,
            running: false,
            frozen: Vec::new(),
            durable,
        };
        let mut initdb = s.cmd("initdb");
        initdb
            .arg("-D")
            .arg(s.data.clone())
            .args(["-U", "postgres", "-A", "trust", "--no-sync"]);
        if let Some(w) = &waldir {
            initdb.arg(format!("--waldir={}", w.join("pg_wal").display()));
        }
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        s.start_again()?;
        Ok(s)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn start_again(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync={}",
            self.port,
            self.dir.display(),
            if self.durable { "on" } else { "off" }
        );
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data.clone())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = true;
        Ok(())
    }

    /// Whether the server answers (`pg_ctl status`): after a PANIC that
    /// its crash restart could not get past (a full disk), it does not.
    pub fn is_running(&self) -> bool {
        self.cmd("pg_ctl")
            .arg("-D")
            .arg(self.data.clone())
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Stop the server hard (`-m immediate`: like a crash of the database).
    pub fn stop(&mut self) -> Result<()> {
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data.clone())
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
        Ok(())
    }
}

impl PgServer {
    /// SIGSTOP the postmaster and every process it started: the server
    /// freezes with its connections open (a VM pause, a stuck disk). Returns
    /// how many processes were stopped.
    pub fn freeze(&mut self) -> Result<usize> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pidfile = self.data.clone().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("reading {}", pidfile.display()))?;
        let master: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("{}: no pid on its first line", pidfile.display()))?;
        // The postmaster first, so it forks nothing new meanwhile.
        kill(Pid::from_raw(master), Signal::SIGSTOP).context("stopping the postmaster")?;
        self.frozen.push(master);
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(master) && kill(Pid::from_raw(pid), Signal::SIGSTOP).is_ok() {
                self.frozen.push(pid);
            }
        }
        Ok(self.frozen.len())
    }

    /// SIGCONT whatever [`PgServer::freeze`] stopped.
    pub fn thaw(&mut self) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for pid in self.frozen.drain(..).rev() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.thaw();
        if self.running {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Create a fresh database `{prefix}_{unique}` on the server `admin` names
/// (its own database is only used to connect). Returns the new database's
/// URL and its name, for [`drop_database`] after.
pub async fn create_scratch_database(admin: &str, prefix: &str) -> Result<(String, String)> {
    let safe = crate::engine::store::redact_url(admin);
    let db = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::PgPool::connect(admin)
        .await
        .with_context(|| format!("connecting to {safe}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&pool)
        .await
        .with_context(|| format!("creating database {db} on {safe}"))?;
    pool.close().await;
    Ok((pg_database_url(admin, &db)?, db))
}

/// Drop a database made by [`create_scratch_database`], sessions and all;
/// best effort (a server already gone has nothing left to drop).
pub async fn drop_database(admin: &str, db: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(admin).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&pool)
        .await;
    }
}

/// The URL of database `db` on the server `admin` names.
pub fn pg_database_url(admin: &str, db: &str) -> Result<String> {
    let mut u = url::Url::parse(admin).with_context(|| format!("bad PostgreSQL URL {admin:?}"))?;
    u.set_path(db);
    Ok(u.to_string())
}
