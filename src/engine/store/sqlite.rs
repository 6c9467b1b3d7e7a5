//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`,
//! safe for several pods on one machine (writers serialize on SQLite's write
//! lock; every write transaction is `BEGIN IMMEDIATE`, so a read-then-write
//! transaction never fails to upgrade its lock).

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

#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stats: super::StoreStats,
}

mod dialect {
    pub const NAME: &str = "sqlite";
    // SQLite has no row locks; BEGIN IMMEDIATE already holds the write lock.
    pub const FENCE_SELECT: &str = "SELECT state, epoch FROM runs WHERE id = $1";
    pub const STATE_SELECT_FOR_UPDATE: &str =
        "SELECT state, epoch, owner_pod, late_completion FROM runs WHERE id = $1";
    pub const SWITCH_SELECT_FOR_UPDATE: &str = "SELECT enabled FROM switches WHERE name = $1";
    pub const TRANSITION_UPDATE: &str = "UPDATE runs SET state = $2, updated_at = $3, \
         error = COALESCE($4, error) WHERE id = $1 \
         AND (state IN (SELECT value FROM json_each($5)) \
              OR (state = 'lost' AND $2 = 'succeeded' AND late_completion = 'accept')) \
         AND ($6 IS NULL OR epoch = $6)";
    pub const OUTPUTS_RAW_SELECT: &str = "SELECT node_id, output_raw FROM steps \
         WHERE run_id = $1 AND status = 'succeeded' \
         AND node_id IN (SELECT value FROM json_each($2))";

    /// The batched node list, as one JSON array parameter.
    pub fn node_list(nodes: &[String]) -> String {
        serde_json::to_string(nodes).unwrap_or_else(|_| "[]".into())
    }
}

impl SqliteStore {
    /// Open (creating if needed) the SQLite store at `path` and migrate it.
    pub async fn open(path: &Path) -> super::StoreResult<Self> {
        Self::open_with(path, clock::system(), Arc::new(Metrics::new())).await
    }

    pub async fn open_with(
        path: &Path,
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
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| bad(format!("cannot create directory {}: {e}", parent.display())))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|source| super::StoreError::Unreachable {
                target: path.display().to_string(),
                source,
            })?;
        // Several pods may start at once on one file: serialize migrations
        // with an OS file lock beside the database.
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
        let migrated = sqlx::migrate!("./migrations/sqlite").run(&pool).await;
        drop(lock);
        migrated?;
        Ok(SqliteStore {
            pool,
            path: path.to_owned(),
            clock,
            metrics,
            stats: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

impl_store!(SqliteStore, Sqlite, dialect);
