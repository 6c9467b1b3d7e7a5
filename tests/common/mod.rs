//! Shared test harness: every behavioural test runs against both stores.
//!
//! SQLite always runs (a temp file). PostgreSQL runs when
//! `VIGIL_TEST_PG_URL` names a server (`scripts/test-all.sh` starts one);
//! each test gets a database of its own there. Without the URL the
//! PostgreSQL cases say so on stderr and pass, except under `CI=true`,
//! where a missing service is a failure.
#![allow(dead_code)]

pub mod pods;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use vigil::engine::clock;
use vigil::engine::metrics::Metrics;
use vigil::engine::store::{PgStore, SqliteStore, Store};

pub const PG_ENV: &str = "VIGIL_TEST_PG_URL";

/// A registry of inline workflow definitions (`inline-N.toml`).
/// Register `pod_id` as a live pod in `h`'s store (the reaper judges only
/// runs of registered owners); live while the returned membership is.
#[allow(dead_code)]
pub async fn register_pod(
    h: &Handle,
    pod_id: &str,
) -> Box<dyn vigil::engine::store::liveness::Membership> {
    let me = vigil::engine::store::liveness::Identity {
        pod_id: pod_id.to_owned(),
        incarnation: uuid::Uuid::now_v7().to_string(),
        addr: None,
        timeout: std::time::Duration::from_secs(60),
    };
    h.store
        .liveness()
        .join(&me, me.timeout)
        .await
        .expect("register the pod")
}

pub fn registry(tomls: &[&str]) -> Arc<vigil::engine::workflow::WorkflowRegistry> {
    use vigil::engine::workflow::{Workflow, WorkflowRegistry};
    let mut reg = WorkflowRegistry::default();
    for (i, t) in tomls.iter().enumerate() {
        let wf = Workflow::parse(Path::new(&format!("inline-{i}.toml")), t).expect("workflow");
        reg.insert(wf).expect("unique");
    }
    Arc::new(reg)
}

/// Where one test's store lives; [`TestDb::open`] gives independent handles
/// to it, like separate processes would have.
pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        url: String,
    },
}

/// A store handle plus raw SQL access for fault injection.
pub struct Handle {
    pub store: Arc<dyn Store>,
    pub raw: Raw,
}

pub enum Raw {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl Handle {
    /// Run one statement behind the engine's back (corrupt rows, legacy rows).
    pub async fn exec(&self, sql: &'static str) {
        match &self.raw {
            Raw::Sqlite(s) => {
                // SQLite prepares DDL against the connection's cached schema:
                // read the schema first so another connection's DDL is seen.
                let mut conn = s.pool().acquire().await.expect("connection");
                sqlx::query("SELECT count(*) FROM sqlite_schema")
                    .execute(&mut *conn)
                    .await
                    .expect("schema");
                sqlx::query(sql).execute(&mut *conn).await.expect(sql);
            }
            Raw::Postgres(s) => {
                sqlx::query(sql).execute(s.pool()).await.expect(sql);
            }
        }
    }
}

impl Handle {
    /// [`Handle::exec`] for SQL built at run time (test fault injection only).
    pub async fn exec_owned(&self, sql: String) {
        match &self.raw {
            Raw::Sqlite(s) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(s.pool())
                    .await
                    .expect(&sql);
            }
            Raw::Postgres(s) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(s.pool())
                    .await
                    .expect(&sql);
            }
        }
    }
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vigil.db");
        TestDb::Sqlite { _dir: dir, path }
    }

    /// A fresh database on the test server, or `None` (announced) when no
    /// server is configured outside CI.
    pub async fn postgres() -> Option<TestDb> {
        let admin = pg_admin_url()?;
        let name = format!("vigil_t_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{PG_ENV}={admin} is unreachable: {e}"));
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&pool)
            .await
            .expect("create test database");
        pool.close().await;
        let mut url = url::Url::parse(&admin).expect("admin URL");
        url.set_path(&name);
        Some(TestDb::Postgres {
            url: url.to_string(),
        })
    }

    pub fn label(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    pub fn target(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => path.display().to_string(),
            TestDb::Postgres { url } => url.clone(),
        }
    }

    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            TestDb::Sqlite { path, .. } => Some(path),
            TestDb::Postgres { .. } => None,
        }
    }

    /// A new, independent handle (own pool, own metrics).
    pub async fn open(&self) -> Handle {
        self.open_with_clock(clock::system()).await
    }

    /// [`TestDb::open`] with the store reading time from `clock` (a
    /// `ManualClock` for tests that judge durations).
    pub async fn open_with_clock(&self, clock: Arc<dyn clock::Clock>) -> Handle {
        let metrics = Arc::new(Metrics::new());
        match self {
            TestDb::Sqlite { path, .. } => {
                let s = Arc::new(
                    SqliteStore::open_with(path, clock, metrics)
                        .await
                        .expect("open sqlite"),
                );
                Handle {
                    store: s.clone(),
                    raw: Raw::Sqlite(s),
                }
            }
            TestDb::Postgres { url } => {
                let s = Arc::new(
                    PgStore::connect_with(url, clock, metrics)
                        .await
                        .expect("open postgres"),
                );
                Handle {
                    store: s.clone(),
                    raw: Raw::Postgres(s),
                }
            }
        }
    }
}

pub fn pg_admin_url() -> Option<String> {
    static NOTICE: Once = Once::new();
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!(
                    "CI=true but {PG_ENV} is not set: the PostgreSQL suite cannot run. \
                     Run ./scripts/test-all.sh, which starts a server and sets it."
                );
            }
            NOTICE.call_once(|| {
                // Straight to the real stderr: libtest captures print macros.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nNOTE: PostgreSQL suite NOT run ({PG_ENV} unset). \
                     Run ./scripts/test-all.sh to run it against a throwaway server.\n"
                );
            });
            None
        }
    }
}

/// Generate `mod sqlite` and `mod postgres` tests from one async fn taking a
/// `&TestDb`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite().await;
                    super::$name(&db).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::common::TestDb::postgres().await else { return };
                    super::$name(&db).await;
                }
            )+
        }
    };
}
