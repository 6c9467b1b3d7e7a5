//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! safe for several pods on one machine (writers serialize on SQLite's write
//! lock, a pod's own writers taking turns at it in order: `store::turns`;
//! every write transaction is `BEGIN IMMEDIATE`, so a read-then-write
//! transaction never fails to upgrade its lock).
//!
//! Here: [`SqliteStore`] (opening, refusing a file that is not a Vigil
//! store, migrating under a file lock), its `dialect`, the reaper's one
//! transaction, and liveness by leases in the `pods` table.

use super::kv::impl_audited_kv;
use super::ops::impl_ops_store;
use super::sql::impl_store;
use crate::engine::clock::{self, Clock};
use crate::engine::metrics::Metrics;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a writer waits for SQLite's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most checkpoints one transaction carries.
const CHECKPOINT_BATCH: usize = 64;
/// SQLite has one writer: one checkpoint transaction at a time.
const CHECKPOINT_WORKERS: usize = 1;

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stats: super::StoreStats,
    /// Group commit of step checkpoints (see `store::group`).
    checkpoints: super::group::Batcher<super::Checkpoint, Option<super::BeginAttempt>>,
    /// See [`super::group::WriteGate`].
    gate: super::group::WriteGate,
}

/// Whether a connection given back to the pool may be used again. A
/// transaction whose COMMIT failed (`SQLITE_FULL`: a full disk) is rolled
/// back by SQLite itself, so the ROLLBACK sqlx queues when the transaction
/// is dropped fails too, and sqlx still counts the connection as inside a
/// transaction: every later `BEGIN IMMEDIATE` on it would fail ("begin_with
/// at non-zero transaction depth") and wedge the pod for good, long after
/// space came back. The ping runs after that queued ROLLBACK on the
/// connection's worker, so the depth it leaves is the real one; a
/// connection still inside a transaction is closed and the pool opens a
/// fresh one.
async fn release_or_discard(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("a SQLite connection came back inside a transaction; closing it");
        return Ok(false);
    }
    Ok(true)
}

mod dialect {
    pub const NAME: &str = "sqlite";
    /// Take the write lock at once (see the module comment).
    pub const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
    // SQLite has no row locks; BEGIN IMMEDIATE already holds the write lock.
    pub const FENCE_SELECT: &str = "SELECT state, epoch FROM runs WHERE id = $1";
    pub const STATE_SELECT_FOR_UPDATE: &str =
        "SELECT state, epoch, owner_pod, late_completion FROM runs WHERE id = $1";
    pub const CLAIM_SELECT_FOR_UPDATE: &str = STATE_SELECT_FOR_UPDATE;
    pub const SKIP_LOCKED: &str = "";
    /// What a read-then-write of one row appends to lock it (switches, settings).
    pub const ROW_LOCK: &str = "";
    /// The statement that lists the advisory locks held, if there are any.
    pub const LIVENESS_LOCKS: Option<&str> = None;
    pub const TRANSITION_UPDATE: &str = "UPDATE runs SET state = $2, updated_at = $3, \
         error = COALESCE($4, error) WHERE id = $1 \
         AND (state IN (SELECT value FROM json_each($5)) \
              OR (state = 'lost' AND $2 = 'succeeded' AND late_completion = 'accept')) \
         AND ($6 IS NULL OR epoch = $6)";
    /// Fault injection only (`read_redacted`): the bug of seed 000.
    pub const OUTPUTS_REDACTED_SELECT: &str = "SELECT node_id, output AS output_raw FROM steps \
         WHERE run_id = $1 AND status = 'succeeded' \
         AND node_id IN (SELECT value FROM json_each($2))";
    pub const OUTPUTS_RAW_SELECT: &str = "SELECT node_id, output_raw FROM steps \
         WHERE run_id = $1 AND status = 'succeeded' \
         AND node_id IN (SELECT value FROM json_each($2))";

    /// A group of checkpoints: statement by statement in one transaction
    /// (in-process calls here, no round trips to save).
    pub async fn checkpoint_group(
        pool: sqlx::SqlitePool,
        metrics: std::sync::Arc<crate::engine::metrics::Metrics>,
        clock: std::sync::Arc<dyn crate::engine::clock::Clock>,
        gate: crate::engine::store::group::WriteGate,
        jobs: Vec<crate::engine::store::Checkpoint>,
    ) -> Vec<crate::engine::store::StoreResult<Option<crate::engine::store::BeginAttempt>>> {
        let _turn = crate::engine::store::group::turn(&gate).await;
        super::checkpoint_batch(pool, metrics, clock, jobs).await
    }

    /// A run created already claimed: statement by statement.
    pub async fn create_claimed(
        store: &super::SqliteStore,
        run: crate::engine::store::NewRun,
        pod: &str,
        first: Option<crate::engine::store::NextAttempt<'_>>,
    ) -> crate::engine::store::StoreResult<(
        crate::engine::run::RunRecord,
        Option<crate::engine::store::Adopted>,
    )> {
        // Its transaction takes the write turn (`begin_write`).
        store.create_claimed_statements(run, pod, first).await
    }

    /// The batched node list, as one JSON array parameter.
    pub fn node_list(nodes: &[String]) -> String {
        serde_json::to_string(nodes).unwrap_or_else(|_| "[]".into())
    }
}

/// The store's connection settings: WAL, `synchronous=FULL`, the busy
/// timeout, foreign keys (also what the commit-limit benchmark connects with).
pub fn connect_options(path: &Path, create: bool) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if crate::faults::on(crate::faults::Bug::SqliteSyncOff) {
            SqliteSynchronous::Off
        } else {
            SqliteSynchronous::Full
        })
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
}

/// Chaos: a connection to the database at `path` that tells whether some
/// other connection holds its write lock, opened before the fault it
/// watches (so its own opening waits on nothing). It never writes.
pub struct WriteLockProbe(sqlx::SqliteConnection);

impl WriteLockProbe {
    pub async fn open(path: &Path) -> super::StoreResult<Self> {
        use sqlx::ConnectOptions as _;
        let mut conn = connect_options(path, false).connect().await?;
        // Opened like any connection (waiting out a writer's moment); from
        // now on each try gives up at once.
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut conn)
            .await?;
        Ok(WriteLockProbe(conn))
    }

    /// Whether the write lock stayed held by someone else for the whole of
    /// `window` (tried every 20 ms, each try giving up at once; a try that
    /// gets the lock gives it back at once): a writer frozen mid-transaction,
    /// which freezes every other writer of the database with it.
    pub async fn held_throughout(mut self, window: Duration) -> super::StoreResult<bool> {
        use sqlx::Connection as _;
        let until = std::time::Instant::now() + window;
        loop {
            match sqlx::query("BEGIN IMMEDIATE").execute(&mut self.0).await {
                Ok(_) => {
                    sqlx::query("ROLLBACK").execute(&mut self.0).await?;
                    let _ = self.0.close().await;
                    return Ok(false);
                }
                // SQLITE_BUSY or SQLITE_LOCKED (or an extended code of one).
                Err(sqlx::Error::Database(e))
                    if e.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6)) => {}
                Err(e) => return Err(e.into()),
            }
            if std::time::Instant::now() >= until {
                let _ = self.0.close().await;
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Chaos (`write_lock`): open a connection of its own to the database at
/// `path`, take its write lock (`BEGIN IMMEDIATE`, waiting as any writer
/// does) and keep it for `hold` in the background, then roll back. Returns
/// once the lock is held: every other writer waits behind it until then.
pub async fn hold_write_lock(
    path: &Path,
    hold: Duration,
) -> super::StoreResult<tokio::task::JoinHandle<()>> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let mut conn = connect_options(path, false).connect().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
    Ok(tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        let _ = conn.close().await;
    }))
}

impl SqliteStore {
    /// Open (creating if needed) the SQLite store at `path` and migrate it.
    pub async fn open(path: &Path) -> super::StoreResult<Self> {
        Self::open_with(path, clock::system(), Arc::new(Metrics::new())).await
    }

    /// [`SqliteStore::open`] with an injected clock and metrics registry.
    pub async fn open_with(
        path: &Path,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> super::StoreResult<Self> {
        Self::open_mode(path, super::OpenMode::Create, clock, metrics).await
    }

    /// Open the store at `path`. [`super::OpenMode::Existing`] refuses a
    /// missing file and a file without Vigil's tables, creating nothing (no
    /// directory, no file, no -wal/-shm) and writing nothing to the file.
    pub async fn open_mode(
        path: &Path,
        mode: super::OpenMode,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> super::StoreResult<Self> {
        let bad = |problem: String| super::StoreError::BadUrl {
            url: path.display().to_string(),
            problem,
        };
        if path.is_dir() {
            return Err(bad(
                "is a directory; give a file path such as data/vigil.db".into(),
            ));
        }
        let create = mode == super::OpenMode::Create;
        if create {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    bad(format!("cannot create directory {}: {e}", parent.display()))
                })?;
            }
        } else {
            probe_existing(path).await?;
        }
        // Several pods (or CLI verbs) may open one file at once: the first
        // connection switches a new file to WAL, which takes SQLite's
        // exclusive lock without waiting in the busy handler ("database is
        // locked" for a concurrent opener), and migrations must not run
        // twice. Both happen under an OS file lock beside the database.
        let lock_path = path.with_extension("migrate.lock");
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| bad(format!("migration lock task failed: {e}")))?
        .map_err(|e| bad(format!("cannot lock {}: {e}", path.display())))?;
        let options = connect_options(path, create);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _| Box::pin(release_or_discard(conn)))
            .connect_with(options)
            .await
            .map_err(|source| super::StoreError::Unreachable {
                target: path.display().to_string(),
                source,
            })?;
        let migrator = sqlx::migrate!("./migrations/sqlite");
        let migrated = migrator.run(&pool).await;
        drop(lock);
        migrated.map_err(|e| super::migrate_error(&path.display().to_string(), &migrator, e))?;
        Ok(SqliteStore {
            pool,
            path: path.to_owned(),
            clock,
            metrics,
            stats: Default::default(),
            checkpoints: super::group::Batcher::new(CHECKPOINT_BATCH, CHECKPOINT_WORKERS),
            gate: Some(Arc::new(super::turns::Turns::default())),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn pool_uses(&self) -> Vec<super::PoolUse> {
        vec![super::PoolUse::of("data", &self.pool)]
    }

    /// A write transaction, begun in this writer's turn (`store::turns`).
    async fn begin_write(&self) -> Result<super::turns::WriteTx<Sqlite>, sqlx::Error> {
        let turn = super::group::turn(&self.gate).await;
        let tx = self.pool.begin_with(dialect::BEGIN_WRITE).await?;
        Ok(super::turns::WriteTx::new(tx, turn))
    }

    /// SQLite has one writer and one pool: claims take it like any write.
    async fn begin_claim(&self) -> Result<super::turns::WriteTx<Sqlite>, sqlx::Error> {
        self.begin_write().await
    }

    /// The pool of liveness and recovery reads: the one pool.
    fn control(&self) -> &SqlitePool {
        &self.pool
    }
}

impl_store!(SqliteStore, Sqlite, dialect);
impl_ops_store!(SqliteStore, dialect);
impl_audited_kv!(SqliteStore, Sqlite, dialect);

/// The tables every Vigil store has, whatever its schema version.
const VIGIL_TABLES: [&str; 2] = ["_sqlx_migrations", "runs"];

/// Refuse `path` unless it is a Vigil store, looking through a read-only
/// connection that sets no persistent pragma: the file is left as it was.
async fn probe_existing(path: &Path) -> super::StoreResult<()> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(super::StoreError::NoStore {
                what: format!("no Vigil store at {shown}"),
                done: "nothing was created",
                fix: super::CREATE_HINT.into(),
            });
        }
        Err(e) => {
            return Err(super::StoreError::BadUrl {
                url: shown.to_string(),
                problem: format!("cannot read it: {e}"),
            });
        }
    }
    let found = async {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(BUSY_TIMEOUT)
            .connect()
            .await?;
        let found: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ($1, $2)",
        )
        .bind(VIGIL_TABLES[0])
        .bind(VIGIL_TABLES[1])
        .fetch_all(&mut conn)
        .await;
        let _ = conn.close().await;
        found
    }
    .await;
    let tables =
        "point --store at a Vigil store, or pass --create to add Vigil's tables to this file";
    let (what, fix) = match found {
        Ok(found) if VIGIL_TABLES.iter().all(|t| found.iter().any(|f| f == t)) => return Ok(()),
        Ok(found) if found.is_empty() => ("it has no Vigil tables".to_owned(), tables),
        Ok(found) => (
            format!(
                "it has only {} of Vigil's tables ({})",
                found.join(", "),
                VIGIL_TABLES.join(", ")
            ),
            tables,
        ),
        // SQLITE_NOTADB
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("26") => (
            format!("it is not a SQLite database ({})", e.message()),
            "point --store at a Vigil store",
        ),
        Err(source) => {
            return Err(super::StoreError::Unreachable {
                target: shown.to_string(),
                source,
            });
        }
    };
    Err(super::StoreError::NoStore {
        what: format!("no Vigil store at {shown}: {what}"),
        done: "nothing was changed",
        fix: fix.into(),
    })
}

impl SqliteStore {
    /// The reaper's one transaction: time out stale heartbeating runs and
    /// queue their retries, or do neither.
    async fn reap_stale_impl(&self, now: i64, by: &str) -> super::StoreResult<super::ReapReport> {
        use super::rows::{REAPED_COLS, ReapedRow};
        let mut tx = self.begin_write().await?;
        let lanes = if crate::faults::on(crate::faults::Bug::ReapAllLanes) {
            // Seed 003: every lane is reaped, heartbeating or not.
            "COALESCE(heartbeat_timeout_ms, 5000) IS NOT NULL AND heartbeat_at + COALESCE(heartbeat_timeout_ms, 5000) < $1"
        } else {
            "heartbeat_timeout_ms IS NOT NULL AND heartbeat_at + heartbeat_timeout_ms < $1"
        };
        let sql = format!(
            "UPDATE runs SET state = 'timed_out', updated_at = $1, \
             error = 'reaped: no heartbeat within its lane''s timeout' \
             WHERE state = 'running' AND {lanes} \
             AND EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = runs.owner_pod) \
             RETURNING {REAPED_COLS}"
        );
        let rows = sqlx::query_as::<_, ReapedRow>(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
        let mut report = super::ReapReport::default();
        for row in rows {
            let ReapedRow {
                id,
                lane,
                epoch,
                retries_left,
                family,
                ..
            } = row;
            sqlx::query(
                "INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, reason, \
                 late, at) VALUES ($1, 'running', 'timed_out', $2, $3, \
                 'reaper: no heartbeat within its lane''s timeout', 0, $4)",
            )
            .bind(&id)
            .bind(epoch)
            .bind(by)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            report.timed_out.push((id.clone(), lane.clone()));
            if retries_left <= 0 {
                continue;
            }
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM runs WHERE family = $1 AND id <> $2 \
                 AND state IN ('pending', 'running')",
            )
            .bind(&family)
            .bind(&id)
            .fetch_one(&mut **tx)
            .await?;
            if active > 0 {
                continue;
            }
            let new_id = uuid::Uuid::now_v7().to_string();
            sqlx::query(
                "INSERT INTO runs (id, workflow, lane, input, state, epoch, late_completion, \
                 run_state, deadline_at, created_at, updated_at, heartbeat_timeout_ms, \
                 retries_left, family, retry_of) \
                 VALUES ($1, $2, $3, $4, 'pending', 0, $5, '{}', $6, $7, $7, $8, $9, $10, $11)",
            )
            .bind(&new_id)
            .bind(row.workflow)
            .bind(&lane)
            .bind(row.input)
            .bind(row.late_completion)
            .bind(row.deadline_at.map(|d| now + (d - row.created_at)))
            .bind(now)
            .bind(row.heartbeat_timeout_ms)
            .bind(retries_left - 1)
            .bind(family.unwrap_or_else(|| id.clone()))
            .bind(&id)
            .execute(&mut **tx)
            .await?;
            report.retried.push((new_id, lane, id));
        }
        tx.commit().await?;
        Ok(report)
    }
}

#[derive(Debug)]
struct LeaseMembership {
    pool: SqlitePool,
    /// The writers' turns (`store::turns`): a renew goes ahead of this
    /// pod's queue.
    turns: super::group::WriteGate,
    clock: Arc<dyn Clock>,
    me: super::liveness::Identity,
    /// The pod's OS lock (see [`SqliteStore::lock_path`]), held for as long
    /// as the membership; the kernel releases it when the process dies.
    _lock: Option<std::fs::File>,
}

impl SqliteStore {
    /// Where pod `pod_id` holds its OS lock: `<database>.pods/<key>.lock`,
    /// the key being the pod id's [`lock_key`](super::liveness::lock_key).
    fn lock_path(&self, pod_id: &str) -> PathBuf {
        let mut dir = self.path.clone().into_os_string();
        dir.push(".pods");
        // The key's bits as a file name: stable, and safe whatever the id.
        let key = u64::from_ne_bytes(super::liveness::lock_key(pod_id).to_ne_bytes());
        PathBuf::from(dir).join(format!("{key:016x}.lock"))
    }

    /// Take pod `me`'s OS lock (waiting up to `wait` for a previous process
    /// with the same id to exit) and write our incarnation in it. `None`
    /// when the lock file cannot be made (then leases alone judge).
    async fn take_pod_lock(
        &self,
        me: &super::liveness::Identity,
        wait: Duration,
    ) -> Result<Option<std::fs::File>, super::liveness::LivenessError> {
        use std::io::Write as _;
        let path = self.lock_path(&me.pod_id);
        let opened = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
            });
        let mut file = match opened {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no OS liveness lock: peers find this pod dead by its lease alone");
                return Ok(None);
            }
        };
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= wait {
                        return Err(super::liveness::LivenessError::LockTimeout {
                            pod_id: me.pod_id.clone(),
                            waited: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot lock; peers find this pod dead by its lease alone");
                    return Ok(None);
                }
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.write_all(me.incarnation.as_bytes()))
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the liveness lock");
            return Ok(None);
        }
        Ok(Some(file))
    }

    /// Whether `peer`'s OS lock is free and names `peer`'s incarnation: the
    /// process that held it is gone.
    fn lock_released(&self, peer: &super::liveness::PodRow) -> bool {
        use std::io::Read as _;
        let Ok(mut file) = std::fs::File::open(self.lock_path(&peer.pod_id)) else {
            return false;
        };
        if file.try_lock().is_err() {
            return false;
        }
        let mut held_by = String::new();
        let _ = file.read_to_string(&mut held_by);
        held_by == peer.incarnation
    }
}

/// A survivor waiting on a peer's OS lock (see [`SqliteStore::lock_path`]).
struct FileWatch {
    path: PathBuf,
    /// Fires once a thread blocked on the lock was granted it (true) or
    /// could not wait on it (false).
    granted: Option<tokio::sync::oneshot::Receiver<bool>>,
}

#[async_trait::async_trait]
impl super::liveness::Watch for FileWatch {
    async fn released(&mut self) -> Result<bool, super::StoreError> {
        let granted = match &mut self.granted {
            Some(rx) => rx,
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let path = self.path.clone();
                // A blocking wait the kernel ends when the holder exits; a
                // thread of its own (a runtime's blocking pool would wait
                // for it at shutdown).
                std::thread::Builder::new()
                    .name("vigil-watch".into())
                    .spawn(move || {
                        let got = std::fs::File::open(&path).and_then(|f| f.lock());
                        let _ = tx.send(got.is_ok());
                    })
                    .map_err(|e| super::StoreError::Db(sqlx::Error::Io(e)))?;
                self.granted.insert(rx)
            }
        };
        let Ok(answer) = tokio::time::timeout(super::liveness::WATCH_ROUND, granted).await else {
            return Ok(false);
        };
        // Answered: the next call waits anew.
        self.granted = None;
        match answer {
            Ok(true) => Ok(true),
            Ok(false) | Err(_) => Err(super::StoreError::Db(sqlx::Error::Io(
                std::io::Error::other(format!("cannot wait on {}", self.path.display())),
            ))),
        }
    }
}

#[async_trait::async_trait]
impl super::liveness::Membership for LeaseMembership {
    async fn renew(&mut self) -> Result<bool, super::StoreError> {
        // The write lock first, then the time: a renew that waited for a
        // busy writer (or for a pooled connection) must not write a lease
        // already mostly spent while it waited. Its turn comes ahead of
        // this pod's other writers.
        let _turn = match &self.turns {
            Some(t) => Some(t.urgent().await),
            None => None,
        };
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = self.clock.now_ms();
        let done = sqlx::query(
            "UPDATE pods SET heartbeat_at = $3, lease_until = $4 \
             WHERE pod_id = $1 AND incarnation = $2",
        )
        .bind(&self.me.pod_id)
        .bind(&self.me.incarnation)
        .bind(now)
        .bind(self.me.lease_until(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done == 1)
    }

    async fn leave(self: Box<Self>) -> Result<(), super::StoreError> {
        let _turn = super::group::turn(&self.turns).await;
        // Expire the lease now: peers find us dead at their next probe.
        sqlx::query("UPDATE pods SET lease_until = 0 WHERE pod_id = $1 AND incarnation = $2")
            .bind(&self.me.pod_id)
            .bind(&self.me.incarnation)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl super::liveness::Liveness for SqliteStore {
    async fn join(
        &self,
        me: &super::liveness::Identity,
        wait: Duration,
    ) -> Result<Box<dyn super::liveness::Membership>, super::liveness::LivenessError> {
        let started = std::time::Instant::now();
        // The OS lock first, then the registry row, as on PostgreSQL: a peer
        // can never find our row without our lock held.
        let lock = self.take_pod_lock(me, wait).await?;
        loop {
            let now = self.clock.now_ms();
            let mut tx = self.begin_write().await.map_err(super::StoreError::from)?;
            let held = sqlx::query_as::<_, super::rows::LeaseRow>(
                "SELECT incarnation, lease_until, heartbeat_at FROM pods WHERE pod_id = $1",
            )
            .bind(&me.pod_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(super::StoreError::from)?;
            if let Some(super::rows::LeaseRow {
                incarnation: inc,
                lease_until: until,
                heartbeat_at: last,
            }) = held
            {
                // Holding the OS lock, another incarnation's row can only be
                // a dead predecessor's; without the lock, only an expired one.
                let predecessor_gone = until < now || lock.is_some();
                if predecessor_gone && inc != me.incarnation {
                    // Our previous incarnation died and nobody noticed yet:
                    // we are the one who finds it dead.
                    sqlx::query(
                        "INSERT INTO pod_deaths (pod_id, incarnation, detected_by, detected_at, \
                         last_heartbeat_at) VALUES ($1, $2, $1, $3, $4)",
                    )
                    .bind(&me.pod_id)
                    .bind(&inc)
                    .bind(now)
                    .bind(last)
                    .execute(&mut **tx)
                    .await
                    .map_err(super::StoreError::from)?;
                }
                if !predecessor_gone && inc != me.incarnation {
                    drop(tx);
                    if started.elapsed() >= wait {
                        return Err(super::liveness::LivenessError::InUse {
                            pod_id: me.pod_id.clone(),
                            incarnation: inc,
                            until_ms: until,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            sqlx::query(super::liveness::REGISTER_SQL)
                .bind(&me.pod_id)
                .bind(&me.incarnation)
                .bind(&me.addr)
                .bind(now)
                .bind(me.lease_until(now))
                .execute(&mut **tx)
                .await
                .map_err(super::StoreError::from)?;
            tx.commit().await.map_err(super::StoreError::from)?;
            return Ok(Box::new(LeaseMembership {
                pool: self.pool.clone(),
                turns: self.gate.clone(),
                clock: self.clock.clone(),
                me: me.clone(),
                _lock: lock,
            }));
        }
    }

    async fn probe(
        &self,
        peer: &super::liveness::PodRow,
        prober: &str,
        standing: &(dyn Fn() -> super::liveness::Standing + Send + Sync),
    ) -> Result<Option<super::liveness::Death>, super::StoreError> {
        if crate::faults::on(crate::faults::Bug::BlindSurvivor) {
            // The fault: every peer looks alive, so nobody recovers its runs.
            return Ok(None);
        }
        // The peer's OS lock free, with its incarnation written in it: the
        // process is gone, whatever its lease still says.
        let released = self.lock_released(peer);
        // The time before the write lock: a lease is judged as of the
        // moment we set out, never by a clock that ran on while we waited.
        let now = self.clock.now_ms();
        let mut tx = self.begin_write().await?;
        // Whether our own renewals were steady, asked now that we hold the
        // lock: a wait for it (or a pause) on the way unsettles them. The
        // OS lock needs no standing: only the process's exit releases it.
        let leases_speak = standing().leases_speak;
        let gone: Option<i64> = sqlx::query_scalar(
            "DELETE FROM pods WHERE pod_id = $1 AND incarnation = $2 \
             AND (($5 AND lease_until < $3) OR $4) RETURNING heartbeat_at",
        )
        .bind(&peer.pod_id)
        .bind(&peer.incarnation)
        .bind(now)
        .bind(released)
        .bind(leases_speak)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(last) = gone else { return Ok(None) };
        let death = record_death(&mut tx, peer, prober, now, last).await?;
        tx.commit().await?;
        Ok(Some(death))
    }

    async fn pods(&self) -> Result<Vec<super::liveness::PodRow>, super::StoreError> {
        self.pods_impl().await
    }

    /// A thread blocked on the peer's OS lock: the kernel grants it the
    /// moment the peer's process exits.
    async fn watch(
        &self,
        peer: &super::liveness::PodRow,
    ) -> Result<Option<Box<dyn super::liveness::Watch>>, super::StoreError> {
        let path = self.lock_path(&peer.pod_id);
        Ok(path.exists().then(|| {
            Box::new(FileWatch {
                path,
                granted: None,
            }) as Box<dyn super::liveness::Watch>
        }))
    }

    async fn deaths(&self, limit: i64) -> Result<Vec<super::liveness::Death>, super::StoreError> {
        self.deaths_impl(limit).await
    }
}
