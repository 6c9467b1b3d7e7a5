//! The production store: PostgreSQL. Owner writes take the run's row lock,
//! so a claim (which bumps the epoch under the same lock) and a fenced write
//! are strictly ordered.
//!
//! Here: [`PgStore`] (connecting, migrating, the pooled sessions'
//! [`SESSION_SETTINGS`]), its `dialect`, the reaper's one-statement CTE,
//! liveness by session advisory locks, URL parsing and redaction, and the
//! chaos harness's [`hold_run_row`]. The server's clock is in `pg_clock`.

use super::kv::impl_audited_kv;
use super::ops::impl_ops_store;
pub use super::pg_clock::ServerClock;
use super::sql::impl_store;
use crate::engine::clock::Clock;
use crate::engine::metrics::Metrics;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Most checkpoints one transaction carries.
const CHECKPOINT_BATCH: usize = 64;
/// Checkpoint transactions in flight at once: while one waits for its
/// commit, the next gathers and runs (PostgreSQL flushes their commit
/// records together when they meet).
const CHECKPOINT_WORKERS: usize = 2;

#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Liveness probes, the registry, orphan lists and claims: a small pool
    /// of their own, so that under a slow store they never queue behind
    /// checkpoints and chunks (a pod slow to judge is a pod slow to recover).
    control: PgPool,
    /// For the dedicated liveness connection of this process.
    pub(super) options: PgConnectOptions,
    url: String,
    pub(super) clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stats: super::StoreStats,
    /// Group commit of step checkpoints (see `store::group`).
    checkpoints: super::group::Batcher<super::Checkpoint, Option<super::BeginAttempt>>,
    /// See [`super::group::WriteGate`].
    gate: super::group::WriteGate,
}

mod dialect {
    pub const NAME: &str = "postgres";
    pub const BEGIN_WRITE: &str = "BEGIN";
    pub const FENCE_SELECT: &str = "SELECT state, epoch FROM runs WHERE id = $1 FOR UPDATE";
    pub const STATE_SELECT_FOR_UPDATE: &str =
        "SELECT state, epoch, owner_pod, late_completion FROM runs WHERE id = $1 FOR UPDATE";
    /// A claim never waits for a row another session holds (a pod frozen
    /// mid-transaction, an operator's open `psql`): it fails at once with
    /// `lock_not_available` and recovery tries again at its next pass.
    pub const CLAIM_SELECT_FOR_UPDATE: &str = "SELECT state, epoch, owner_pod, late_completion \
         FROM runs WHERE id = $1 FOR UPDATE NOWAIT";
    /// Bulk passes (deadline, janitor) take only the rows nobody holds.
    pub const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";
    /// What a read-then-write of one row appends to lock it (switches, settings).
    pub const ROW_LOCK: &str = " FOR UPDATE";
    /// The statement that lists the advisory locks held, if there are any.
    pub const LIVENESS_LOCKS: Option<&str> = Some(crate::engine::store::ops::PG_LOCKS_SQL);
    pub const TRANSITION_UPDATE: &str = "UPDATE runs SET state = $2, updated_at = $3, \
         error = COALESCE($4, error) WHERE id = $1 \
         AND (state IN (SELECT jsonb_array_elements_text($5::jsonb)) \
              OR (state = 'lost' AND $2 = 'succeeded' AND late_completion = 'accept')) \
         AND ($6::BIGINT IS NULL OR epoch = $6)";
    /// Fault injection only (`read_redacted`): the bug of seed 000.
    pub const OUTPUTS_REDACTED_SELECT: &str = "SELECT node_id, output AS output_raw FROM steps \
         WHERE run_id = $1 AND status = 'succeeded' AND node_id = ANY($2)";
    pub const OUTPUTS_RAW_SELECT: &str = "SELECT node_id, output_raw FROM steps \
         WHERE run_id = $1 AND status = 'succeeded' AND node_id = ANY($2)";

    /// The batched node list, as one `text[]` parameter.
    pub fn node_list(nodes: &[String]) -> Vec<String> {
        nodes.to_vec()
    }

    /// A run created already claimed, in one statement
    /// (`vigil_create_claimed_run`, see migration 0008).
    pub async fn create_claimed(
        store: &super::PgStore,
        run: crate::engine::store::NewRun,
        pod: &str,
        first: Option<crate::engine::store::NextAttempt<'_>>,
    ) -> crate::engine::store::StoreResult<(
        crate::engine::run::RunRecord,
        Option<crate::engine::store::Adopted>,
    )> {
        super::create_claimed_in_one_statement(store, run, pod, first).await
    }

    /// A group of checkpoints in one statement (`vigil_checkpoints`, see
    /// migration 0007): one round trip, one commit. Under the `skip_fence`
    /// fault the fence lives in Rust, so the statement-by-statement form
    /// runs instead.
    pub async fn checkpoint_group(
        pool: sqlx::PgPool,
        metrics: std::sync::Arc<crate::engine::metrics::Metrics>,
        clock: std::sync::Arc<dyn crate::engine::clock::Clock>,
        _gate: crate::engine::store::group::WriteGate,
        jobs: Vec<crate::engine::store::Checkpoint>,
    ) -> Vec<crate::engine::store::StoreResult<Option<crate::engine::store::BeginAttempt>>> {
        if crate::faults::on(crate::faults::Bug::SkipFence) {
            return super::checkpoint_batch(pool, metrics, clock, jobs).await;
        }
        match super::checkpoints_in_one_statement(&pool, &metrics, clock.now_ms(), &jobs).await {
            Ok(out) => out,
            Err(e) if jobs.len() == 1 => vec![Err(e.into())],
            Err(e) => {
                // One job's failure must not be its neighbours': each alone.
                tracing::debug!(jobs = jobs.len(), error = %e, "checkpoint group failed: each checkpoint again alone");
                let mut out = Vec::with_capacity(jobs.len());
                for c in jobs.chunks(1) {
                    match super::checkpoints_in_one_statement(&pool, &metrics, clock.now_ms(), c)
                        .await
                    {
                        Ok(mut r) => out.push(r.remove(0)),
                        Err(e) => out.push(Err(e.into())),
                    }
                }
                out
            }
        }
    }
}

/// Connections of the data pool. A statement holds its connection for a
/// round trip, so a slow link needs more of them for the same work
/// (Little's law): at +250 ms a round trip, ten were too few for ten
/// streaming runs a pod, and their heartbeats queued behind chunks until
/// the reaper judged healthy runs stale (`slow-store` with 30 runs).
pub const DATA_POOL: u32 = 32;

/// Connections of the control pool: liveness probes, the registry, orphan
/// lists and claims, never behind checkpoints and chunks.
const CONTROL_POOL: u32 = 3;

/// The options of both pools. sqlx pings a pooled connection when it is
/// taken and again when it is given back: two round trips more per
/// statement, a third of a checkpoint's time with one client. The ping on
/// return stays (it finds broken connections after an error); the one on
/// taking is kept for connections idle long enough to have been cut (a
/// server restart, an idle timeout) since.
fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// A pooled connection idle at least this long is pinged before use.
const PING_IF_IDLE: Duration = Duration::from_secs(1);

/// Settings of every pooled session, so that no session of this process can
/// stall the cluster, and no stalled session elsewhere can stall this one
/// for long (see "PostgreSQL sessions" in docs/engine.md):
/// - `lock_timeout`: a statement waits at most this long for a row another
///   session holds (claims do not wait at all: `NOWAIT`);
/// - `statement_timeout`: no statement runs longer (a frozen disk, a plan
///   gone wrong);
/// - `idle_in_transaction_session_timeout`: a session left inside an open
///   transaction (its pod SIGSTOPped, its VM paused, its network cut
///   without a reset) is ended by the server, which releases its row locks;
/// - TCP keepalives: the server finds a silent peer's socket dead.
pub const SESSION_SETTINGS: [(&str, &str); 6] = [
    ("lock_timeout", "2s"),
    ("statement_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "5s"),
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "2"),
    ("tcp_keepalives_count", "3"),
];

/// Chaos (`row_lock`): open a session of its own to `url`, begin a
/// transaction and lock run `run_id`'s row (`SELECT ... FOR UPDATE`), then
/// keep the transaction open for `hold` in the background and roll it back.
/// Returns once the lock is held. `vigil_session` gives the session the
/// settings of a pod's own sessions ([`SESSION_SETTINGS`]): what a pod frozen
/// inside a transaction leaves behind; without them it is someone else's
/// session (an operator's open `psql`, another application).
pub async fn hold_run_row(
    url: &str,
    run_id: &str,
    hold: Duration,
    vigil_session: bool,
) -> super::StoreResult<tokio::task::JoinHandle<()>> {
    use sqlx::Connection as _;
    let shown = redact_url(url);
    let mut options = parse_url(url, &shown)?;
    if vigil_session {
        options = options.options(SESSION_SETTINGS);
    }
    let mut conn = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|source| super::StoreError::Unreachable {
            target: shown,
            source,
        })?;
    sqlx::query("BEGIN").execute(&mut conn).await?;
    let found = sqlx::query("SELECT id FROM runs WHERE id = $1 FOR UPDATE")
        .bind(run_id)
        .fetch_optional(&mut conn)
        .await?;
    if found.is_none() {
        let _ = conn.close().await;
        return Err(super::StoreError::RunNotFound {
            run_id: run_id.to_owned(),
        });
    }
    Ok(tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        // The server may have ended the session meanwhile
        // (idle_in_transaction_session_timeout): nothing left to release.
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        let _ = conn.close().await;
    }))
}

/// How long opening a store keeps trying to connect to a server that is
/// not there yet (starting up, or its port not open yet).
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// Connect to the server, trying again for up to `within` while it is not
/// there yet (refused, unreachable, "the database system is starting up");
/// any other error (authentication, no such database, TLS) at once. The
/// error is the server's or the socket's own, never a pool's timeout.
async fn first_connection(
    options: &PgConnectOptions,
    within: Duration,
) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::Connection as _;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let tried = tokio::time::timeout(left, sqlx::PgConnection::connect_with(options)).await;
        let e = match tried {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", within.as_secs()),
                )));
            }
        };
        let not_there_yet = match &e {
            sqlx::Error::Io(_) => true,
            sqlx::Error::Database(d) => d.code().as_deref() == Some("57P03"),
            _ => false,
        };
        if !not_there_yet || tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connection options from `url`; an error names the URL as `shown`
/// (password redacted).
fn parse_url(url: &str, shown: &str) -> super::StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| super::StoreError::BadUrl {
        url: shown.to_owned(),
        problem: e.to_string(),
    })
}

/// The URL with its password replaced, fit for errors and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable URL>".into(),
    }
}

impl PgStore {
    /// Connect and migrate, on the server's clock (see [`ServerClock`]).
    pub async fn connect(url: &str) -> super::StoreResult<Self> {
        Self::connect_mode(
            url,
            super::OpenMode::Create,
            None,
            Arc::new(Metrics::new()),
            DATA_POOL,
        )
        .await
    }

    /// [`PgStore::connect`] with an injected clock and metrics registry.
    pub async fn connect_with(
        url: &str,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> super::StoreResult<Self> {
        Self::connect_mode(
            url,
            super::OpenMode::Create,
            Some(clock),
            metrics,
            DATA_POOL,
        )
        .await
    }

    /// Connect and migrate. [`super::OpenMode::Existing`] first checks that
    /// the database holds Vigil's tables and refuses it, running no
    /// migration, when it does not. Without an injected `clock` every time
    /// this store writes or compares is the server's ([`ServerClock`]).
    pub async fn connect_mode(
        url: &str,
        mode: super::OpenMode,
        clock: Option<Arc<dyn Clock>>,
        metrics: Arc<Metrics>,
        data_pool: u32,
    ) -> super::StoreResult<Self> {
        let shown = redact_url(url);
        let options = parse_url(url, &shown)?;
        let unreachable = |source| super::StoreError::Unreachable {
            target: shown.clone(),
            source,
        };
        // Checked and migrated on a connection of its own, without the pool's
        // lock_timeout: concurrent migrators queue on sqlx's advisory lock.
        // A connection first: a pool that cannot connect says only that it
        // timed out; the connection says why (refused, no such database,
        // authentication).
        let probe = first_connection(&options, CONNECT_FOR)
            .await
            .map_err(unreachable)?;
        let _ = sqlx::Connection::close(probe).await;
        let setup = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_FOR)
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        if mode == super::OpenMode::Existing {
            let vigil: bool = sqlx::query_scalar(
                "SELECT to_regclass('_sqlx_migrations') IS NOT NULL \
                 AND to_regclass('runs') IS NOT NULL",
            )
            .fetch_one(&setup)
            .await?;
            if !vigil {
                setup.close().await;
                return Err(super::StoreError::NoStore {
                    what: format!(
                        "no Vigil store in database {} at {}:{}: its tables are missing",
                        options
                            .get_database()
                            .unwrap_or_else(|| options.get_username()),
                        options.get_host(),
                        options.get_port()
                    ),
                    done: "nothing was changed",
                    fix: "run vigil pod against it first, or pass --create".into(),
                });
            }
        }
        // sqlx serializes concurrent migrators with an advisory lock.
        let migrator = sqlx::migrate!("./migrations/postgres");
        migrator
            .run(&setup)
            .await
            .map_err(|e| super::migrate_error(&shown, &migrator, e))?;
        setup.close().await;
        let pool = pool_options(data_pool.max(1))
            .connect_with(options.clone().options(SESSION_SETTINGS))
            .await
            .map_err(unreachable)?;
        let control =
            pool_options(CONTROL_POOL).connect_lazy_with(options.clone().options(SESSION_SETTINGS));
        let clock = match clock {
            Some(c) => c,
            None if crate::faults::on(crate::faults::Bug::HostClockLeases) => {
                crate::engine::clock::system()
            }
            None => ServerClock::start(pool.clone()).await?,
        };
        Ok(PgStore {
            pool,
            control,
            options,
            url: shown,
            clock,
            metrics,
            stats: Default::default(),
            checkpoints: super::group::Batcher::new(CHECKPOINT_BATCH, CHECKPOINT_WORKERS),
            gate: None,
        })
    }

    /// The URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn pool_uses(&self) -> Vec<super::PoolUse> {
        vec![
            super::PoolUse::of("data", &self.pool),
            super::PoolUse::of("control", &self.control),
        ]
    }

    async fn begin_write(&self) -> Result<super::turns::WriteTx<Postgres>, sqlx::Error> {
        Ok(super::turns::WriteTx::new(self.pool.begin().await?, None))
    }

    /// The pool of liveness, recovery reads and claims (the data pool under
    /// the `shared_liveness_pool` fault).
    pub(super) fn control(&self) -> &PgPool {
        if crate::faults::on(crate::faults::Bug::SharedLivenessPool) {
            &self.pool
        } else {
            &self.control
        }
    }

    async fn begin_claim(&self) -> Result<super::turns::WriteTx<Postgres>, sqlx::Error> {
        Ok(super::turns::WriteTx::new(
            self.control().begin().await?,
            None,
        ))
    }
}

impl_store!(PgStore, Postgres, dialect);
impl_ops_store!(PgStore, dialect);
impl_audited_kv!(PgStore, Postgres, dialect);

/// The reaper's one statement: see [`PgStore::reap_stale_impl`].
const REAP_SQL: &str = "WITH reaped AS ( \
               UPDATE runs SET state = 'timed_out', updated_at = $1, \
                 error = 'reaped: no heartbeat within its lane''s timeout' \
               WHERE state = 'running' AND heartbeat_timeout_ms IS NOT NULL AND heartbeat_at + heartbeat_timeout_ms < $1 \
                 AND EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = runs.owner_pod) \
                 AND id IN (SELECT id FROM runs WHERE state = 'running' \
                   AND heartbeat_timeout_ms IS NOT NULL AND heartbeat_at + heartbeat_timeout_ms < $1 \
                   AND EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = runs.owner_pod) \
                   FOR UPDATE SKIP LOCKED) \
               RETURNING id, epoch, workflow, lane, input, late_completion, deadline_at, \
                 created_at, heartbeat_timeout_ms, retries_left, family \
             ), logged AS ( \
               INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, reason, late, at) \
               SELECT id, 'running', 'timed_out', epoch, $2, \
                 'reaper: no heartbeat within its lane''s timeout', FALSE, $1 FROM reaped \
             ), retried AS ( \
               INSERT INTO runs (id, workflow, lane, input, state, epoch, late_completion, \
                 run_state, deadline_at, created_at, updated_at, heartbeat_timeout_ms, \
                 retries_left, family, retry_of) \
               SELECT gen_random_uuid()::text, r.workflow, r.lane, r.input, 'pending', 0, \
                 r.late_completion, '{}', \
                 CASE WHEN r.deadline_at IS NULL THEN NULL ELSE $1 + (r.deadline_at - r.created_at) END, \
                 $1, $1, r.heartbeat_timeout_ms, r.retries_left - 1, COALESCE(r.family, r.id), r.id \
               FROM reaped r \
               WHERE r.retries_left > 0 AND NOT EXISTS ( \
                 SELECT 1 FROM runs s WHERE s.family = r.family AND s.id <> r.id \
                   AND s.state IN ('pending', 'running')) \
               RETURNING id, lane, retry_of \
             ) \
             SELECT 'timed_out' AS kind, id, lane, NULL::text AS retry_of FROM reaped \
             UNION ALL SELECT 'retried', id, lane, retry_of FROM retried";

impl PgStore {
    /// The reaper's one statement: time out stale heartbeating runs, log the
    /// transitions and queue retries (no active sibling) in a single CTE, so
    /// the timed-out count and the retries-queued count cannot disagree.
    async fn reap_stale_impl(&self, now: i64, by: &str) -> super::StoreResult<super::ReapReport> {
        let sql = if crate::faults::on(crate::faults::Bug::ReapAllLanes) {
            // Seed 003: every lane is reaped, heartbeating or not.
            REAP_SQL.replace(
                "heartbeat_timeout_ms IS NOT NULL AND heartbeat_at + heartbeat_timeout_ms < $1",
                "heartbeat_at + COALESCE(heartbeat_timeout_ms, 5000) < $1",
            )
        } else {
            REAP_SQL.to_owned()
        };
        let rows = sqlx::query_as::<_, super::rows::ReapOutcomeRow>(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(by)
            .fetch_all(&self.pool)
            .await?;
        let mut report = super::ReapReport::default();
        for row in rows {
            if row.kind == "timed_out" {
                report.timed_out.push((row.id, row.lane));
            } else {
                let of = row.retry_of.unwrap_or_default();
                report.retried.push((row.id, row.lane, of));
            }
        }
        Ok(report)
    }
}

/// One job's row from `vigil_checkpoints`.
#[derive(sqlx::FromRow)]
struct CheckpointRow {
    o_outcome: String,
    o_state: Option<String>,
    o_epoch: Option<i64>,
    o_next: Option<String>,
    o_attempts: Option<i64>,
}

/// `jobs` through `vigil_checkpoints`, answered job by job as the
/// statement-by-statement form answers them (the same errors, the same
/// metrics).
async fn checkpoints_in_one_statement(
    pool: &PgPool,
    metrics: &Metrics,
    now: i64,
    jobs: &[super::Checkpoint],
) -> Result<Vec<super::StoreResult<Option<super::BeginAttempt>>>, sqlx::Error> {
    use super::{BeginAttempt, StoreError};
    let col = |f: fn(&super::Checkpoint) -> Option<String>| jobs.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT o_outcome, o_state, o_epoch, o_next, o_attempts FROM \
         vigil_checkpoints($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(col(|c| Some(c.run_id.clone())))
    .bind(col(|c| Some(c.node_id.clone())))
    .bind(jobs.iter().map(|c| c.epoch).collect::<Vec<_>>())
    .bind(col(|c| Some(c.output.clone())))
    .bind(col(|c| Some(c.output_raw.clone())))
    .bind(col(|c| Some(c.run_state.clone())))
    .bind(col(|c| Some(c.run_state_raw.clone())))
    .bind(col(|c| c.then_begin.as_ref().map(|n| n.0.clone())))
    .bind(
        jobs.iter()
            .map(|c| c.then_begin.as_ref().map(|n| n.1))
            .collect::<Vec<_>>(),
    )
    .bind(col(|c| c.then_begin.as_ref().map(|n| n.2.clone())))
    .bind(col(|c| c.then_succeed.clone()))
    .bind(now)
    .fetch_all(pool)
    .await?;
    if rows.len() != jobs.len() {
        return Err(sqlx::Error::Protocol(format!(
            "vigil_checkpoints answered {} rows for {} checkpoints",
            rows.len(),
            jobs.len()
        )));
    }
    let committed = rows.iter().filter(|r| r.o_outcome == "ok").count();
    if committed > 0 {
        metrics.group_commit(committed);
    }
    Ok(jobs
        .iter()
        .zip(rows)
        .map(|(c, r)| {
            let corrupt = |problem: String| StoreError::Corrupt {
                table: "steps",
                key: format!("{}/{}", c.run_id, c.node_id),
                problem,
            };
            match r.o_outcome.as_str() {
                "ok" => {
                    if c.then_succeed.is_some() {
                        metrics.inc_transition("running", "succeeded");
                    }
                    Ok(match (r.o_next.as_deref(), r.o_attempts) {
                        (None, _) => None,
                        (Some("started"), Some(attempt)) => Some(BeginAttempt::Started { attempt }),
                        (Some("already_succeeded"), _) => Some(BeginAttempt::AlreadySucceeded),
                        (Some("exhausted"), Some(attempts)) => {
                            Some(BeginAttempt::Exhausted { attempts })
                        }
                        (other, n) => {
                            return Err(corrupt(format!(
                                "vigil_checkpoints: unknown next-attempt answer {other:?} ({n:?})"
                            )));
                        }
                    })
                }
                "not_found" => Err(StoreError::RunNotFound {
                    run_id: c.run_id.clone(),
                }),
                "fenced" => {
                    let state = super::rows::state_from_str(
                        "runs",
                        &c.run_id,
                        r.o_state.as_deref().unwrap_or_default(),
                    )?;
                    let current = r.o_epoch.unwrap_or_default();
                    Err(super::statements::fence(
                        metrics,
                        &c.run_id,
                        c.epoch,
                        current,
                        state,
                        "checkpoint",
                    )
                    .err()
                    .unwrap_or(StoreError::Fenced {
                        run_id: c.run_id.clone(),
                        held: c.epoch,
                        current,
                        state,
                    }))
                }
                "no_running_attempt" => Err(corrupt(
                    "checkpoint of a step that has no running attempt".into(),
                )),
                other => Err(corrupt(format!(
                    "vigil_checkpoints: unknown outcome {other:?}"
                ))),
            }
        })
        .collect())
}

/// `vigil_create_claimed_run`'s answer: the outcome, then the run's columns.
#[derive(sqlx::FromRow)]
struct CreatedRow {
    o_created: bool,
    o_epoch: Option<i64>,
    o_next: Option<String>,
    o_attempts: Option<i64>,
    #[sqlx(flatten)]
    run: super::rows::RunRow,
}

async fn create_claimed_in_one_statement(
    store: &PgStore,
    run: super::NewRun,
    pod: &str,
    first: Option<super::NextAttempt<'_>>,
) -> super::StoreResult<(crate::engine::run::RunRecord, Option<super::Adopted>)> {
    use super::{Adopted, BeginAttempt, StoreError};
    let now = store.clock.now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let input = serde_json::to_string(&run.input).unwrap_or_else(|_| "null".into());
    let row: CreatedRow = sqlx::query_as(concat!(
        "SELECT o_created, o_epoch, o_next, o_attempts, (o_run).* FROM ",
        "vigil_create_claimed_run($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(&id)
    .bind(&run.workflow)
    .bind(&run.lane)
    .bind(input)
    .bind(super::rows::late_str(run.late_completion))
    .bind(&run.idempotency_key)
    .bind(run.deadline_at_ms)
    .bind(now)
    .bind(run.heartbeat_timeout_ms)
    .bind(run.retries_left)
    .bind(crate::engine::settings::RUNS_MAX_DEADLINE_MS)
    .bind(crate::engine::settings::DEFAULT_MAX_DEADLINE_MS)
    .bind(pod)
    .bind(first.map(|n| n.node_id))
    .bind(first.map(|n| n.max_attempts))
    .fetch_one(&store.pool)
    .await?;
    let record = crate::engine::run::RunRecord::try_from(row.run)?;
    if !row.o_created {
        return Ok((record, None));
    }
    let corrupt = |problem: String| StoreError::Corrupt {
        table: "runs",
        key: record.id.clone(),
        problem,
    };
    let epoch = row
        .o_epoch
        .ok_or_else(|| corrupt("vigil_create_claimed_run: created but not claimed".into()))?;
    let first = match (row.o_next.as_deref(), row.o_attempts) {
        (None, _) => None,
        (Some("started"), Some(attempt)) => Some(BeginAttempt::Started { attempt }),
        (Some("already_succeeded"), _) => Some(BeginAttempt::AlreadySucceeded),
        (Some("exhausted"), Some(attempts)) => Some(BeginAttempt::Exhausted { attempts }),
        (other, n) => {
            return Err(corrupt(format!(
                "vigil_create_claimed_run: unknown first-attempt answer {other:?} ({n:?})"
            )));
        }
    };
    Ok((record, Some(Adopted { epoch, first })))
}
