//! The ops console's queries: the [`OpsStore`] trait (read-only, one
//! statement each, for `vigil console`), its row types, the rows they are
//! decoded from, and [`impl_ops_store!`], which implements it for both
//! backends. The engine never reads these; it sees only [`Store`].

use super::{Store, StoreError, StoreResult};
use super::{rows::state_from_str, rows::status_from_str};
use crate::engine::run::{RunState, StepStatus};
use async_trait::async_trait;
use serde::Serialize;
use std::sync::Arc;

/// A [`Store`] the ops console can also read its overviews from.
#[async_trait]
pub trait OpsStore: Store {
    /// The newest `limit` runs with their current step and latest event.
    async fn console_runs(&self, limit: i64) -> StoreResult<Vec<RunSummary>>;
    /// Counts of pending and running runs by state, lane and owner.
    async fn console_active_counts(&self) -> StoreResult<Vec<ActiveCount>>;
    /// Transitions, claims, pod deaths and switch changes after `cursor`,
    /// at most `limit` of each table (the newest), newest first.
    async fn console_events(
        &self,
        cursor: &EventCursor,
        limit: i64,
    ) -> StoreResult<Vec<ConsoleEvent>>;
    /// PostgreSQL: the advisory-lock keys held now (see
    /// [`super::liveness::lock_key`]). SQLite has no locks: `None`.
    async fn console_liveness_locks(&self) -> StoreResult<Option<Vec<i64>>>;
}

/// [`super::open`] for the console: the store at `target`, created if
/// missing.
pub async fn open(target: &str) -> StoreResult<Arc<dyn OpsStore>> {
    super::open_ops(target, super::OpenMode::Create).await
}

/// [`super::open_existing`] for the console: refuses, creating nothing,
/// when there is no Vigil store at `target`.
pub async fn open_existing(target: &str) -> StoreResult<Arc<dyn OpsStore>> {
    super::open_ops(target, super::OpenMode::Existing).await
}

/// A run as the console's Runs view lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub workflow: String,
    pub lane: String,
    pub state: RunState,
    pub owner_pod: Option<String>,
    pub epoch: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub error: Option<String>,
    pub retry_of: Option<String>,
    /// The step updated last, with its status and attempts so far.
    pub current_step: Option<(String, StepStatus, i64)>,
    /// The latest transition or claim of the run: when, and what.
    pub last_event: Option<(i64, String)>,
}

/// How many pending or running runs share a state, lane and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveCount {
    pub state: RunState,
    pub lane: String,
    pub owner_pod: Option<String>,
    pub count: i64,
}

/// Where the console's event feed stands: the last row id seen per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCursor {
    pub transitions: i64,
    pub claims: i64,
    pub deaths: i64,
    pub switches: i64,
}

impl EventCursor {
    /// Move past `ev`.
    pub fn advance(&mut self, ev: &ConsoleEvent) {
        let slot = match ev.kind {
            EventKind::Transition => &mut self.transitions,
            EventKind::Claim => &mut self.claims,
            EventKind::Death => &mut self.deaths,
            EventKind::Switch => &mut self.switches,
        };
        *slot = (*slot).max(ev.id);
    }
}

/// Which table a [`ConsoleEvent`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// `run_transitions`: subject = run, from/to = states, actor = pod.
    Transition,
    /// `run_claims`: subject = run, from/to = pods, actor = the new owner.
    Claim,
    /// `pod_deaths`: subject = dead pod, from = its incarnation, actor =
    /// who detected it, `extra_ms` = its last heartbeat.
    Death,
    /// `switch_audit`: subject = switch, from/to = "on"/"off", actor = who.
    Switch,
}

/// One row of the console's event feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleEvent {
    pub kind: EventKind,
    /// Row id in its own table.
    pub id: i64,
    pub at_ms: i64,
    pub subject: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub actor: Option<String>,
    pub epoch: Option<i64>,
    pub reason: String,
    pub extra_ms: Option<i64>,
}

/// [`OpsStore::console_runs`]: one statement. The step and event columns
/// are correlated subqueries on the `(run_id, ...)` keys and indexes, each
/// folded into one text value so that each is one lookup.
pub(crate) const RUNS_SQL: &str = "SELECT r.id, r.workflow, r.lane, r.state, r.owner_pod, \
     r.epoch, r.created_at, r.updated_at, r.error, r.retry_of, \
     (SELECT s.status || '|' || s.attempts || '|' || s.node_id FROM steps s \
      WHERE s.run_id = r.id ORDER BY s.updated_at DESC, s.node_id DESC LIMIT 1) \
      AS step, \
     (SELECT t.at || '|' || t.from_state || ' -> ' || t.to_state || \
      CASE WHEN t.reason = '' THEN '' ELSE ': ' || t.reason END \
      FROM run_transitions t WHERE t.run_id = r.id ORDER BY t.id DESC LIMIT 1) \
      AS last_transition, \
     (SELECT c.at || '|claimed by ' || c.to_pod || ' from ' || \
      COALESCE(c.from_pod, '-') || ' (epoch ' || c.epoch || ')' \
      FROM run_claims c WHERE c.run_id = r.id ORDER BY c.id DESC LIMIT 1) \
      AS last_claim \
     FROM runs r ORDER BY r.created_at DESC, r.id DESC LIMIT $1";

/// [`OpsStore::console_active_counts`].
pub(crate) const ACTIVE_COUNTS_SQL: &str = "SELECT state, lane, owner_pod, COUNT(*) AS n \
     FROM runs WHERE state IN ('pending', 'running') \
     GROUP BY state, lane, owner_pod ORDER BY state, lane, owner_pod";

/// [`OpsStore::console_events`]: each branch reads only the rows past its
/// cursor, newest first, through its primary key; the union is one round
/// trip.
pub(crate) const EVENTS_SQL: &str = "SELECT kind, id, at, subject, from_v, to_v, actor, epoch, reason, extra FROM \
     (SELECT 'transition' AS kind, id, at, run_id AS subject, \
      from_state AS from_v, to_state AS to_v, pod AS actor, epoch, reason, \
      CAST(NULL AS BIGINT) AS extra \
      FROM run_transitions WHERE id > $1 ORDER BY id DESC LIMIT $5) t1 \
     UNION ALL SELECT * FROM \
     (SELECT 'claim', id, at, run_id, from_pod, to_pod, to_pod, epoch, '', \
      CAST(NULL AS BIGINT) \
      FROM run_claims WHERE id > $2 ORDER BY id DESC LIMIT $5) t2 \
     UNION ALL SELECT * FROM \
     (SELECT 'death', id, detected_at, pod_id, incarnation, CAST(NULL AS TEXT), \
      detected_by, CAST(NULL AS BIGINT), '', last_heartbeat_at \
      FROM pod_deaths WHERE id > $3 ORDER BY id DESC LIMIT $5) t3 \
     UNION ALL SELECT * FROM \
     (SELECT 'switch', id, at, name, \
      CASE WHEN old_value IS NULL THEN NULL WHEN old_value THEN 'on' ELSE 'off' END, \
      CASE WHEN new_value THEN 'on' ELSE 'off' END, who, CAST(NULL AS BIGINT), \
      reason, CAST(NULL AS BIGINT) \
      FROM switch_audit WHERE id > $4 ORDER BY id DESC LIMIT $5) t4 \
     ORDER BY at DESC, id DESC";

/// [`OpsStore::console_liveness_locks`] on PostgreSQL. A bigint advisory
/// key shows as classid (its high half) and objid (its low half), with
/// objsubid = 1.
pub(crate) const PG_LOCKS_SQL: &str = "SELECT classid::bigint AS hi, objid::bigint AS lo FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The advisory-lock key of a `pg_locks` row's `(classid, objid)`.
pub(crate) fn advisory_key((hi, lo): (i64, i64)) -> i64 {
    (hi << 32) | (lo & 0xffff_ffff)
}

/// A row of [`RUNS_SQL`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RunSummaryRow {
    id: String,
    workflow: String,
    lane: String,
    state: String,
    owner_pod: Option<String>,
    epoch: i64,
    created_at: i64,
    updated_at: i64,
    error: Option<String>,
    retry_of: Option<String>,
    /// `status|attempts|node_id` of the step updated last.
    step: Option<String>,
    /// `at|what` of the latest transition.
    last_transition: Option<String>,
    /// `at|what` of the latest claim.
    last_claim: Option<String>,
}

/// `at|what` as `(at, what)`; anything else as nothing.
fn event(v: Option<String>) -> Option<(i64, String)> {
    let v = v?;
    let (at, what) = v.split_once('|')?;
    Some((at.parse().ok()?, what.to_owned()))
}

impl TryFrom<RunSummaryRow> for RunSummary {
    type Error = StoreError;

    fn try_from(r: RunSummaryRow) -> StoreResult<RunSummary> {
        let current_step = match r.step {
            None => None,
            Some(v) => {
                let mut parts = v.splitn(3, '|');
                let status = parts.next().unwrap_or_default();
                let attempts = parts.next().and_then(|a| a.parse().ok());
                match (attempts, parts.next()) {
                    (Some(a), Some(node)) => {
                        Some((node.to_owned(), status_from_str("steps", &r.id, status)?, a))
                    }
                    _ => {
                        return Err(StoreError::Corrupt {
                            table: "steps",
                            key: r.id,
                            problem: format!("unreadable step summary {v:?}"),
                        });
                    }
                }
            }
        };
        let last_event = match (event(r.last_transition), event(r.last_claim)) {
            (Some(t), Some(c)) => Some(if c.0 > t.0 { c } else { t }),
            (t, c) => t.or(c),
        };
        Ok(RunSummary {
            state: state_from_str("runs", &r.id, &r.state)?,
            id: r.id,
            workflow: r.workflow,
            lane: r.lane,
            owner_pod: r.owner_pod,
            epoch: r.epoch,
            created_at_ms: r.created_at,
            updated_at_ms: r.updated_at,
            error: r.error,
            retry_of: r.retry_of,
            current_step,
            last_event,
        })
    }
}

/// A row of [`ACTIVE_COUNTS_SQL`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ActiveCountRow {
    state: String,
    lane: String,
    owner_pod: Option<String>,
    n: i64,
}

impl TryFrom<ActiveCountRow> for ActiveCount {
    type Error = StoreError;

    fn try_from(r: ActiveCountRow) -> StoreResult<ActiveCount> {
        Ok(ActiveCount {
            state: state_from_str("runs", &r.lane, &r.state)?,
            lane: r.lane,
            owner_pod: r.owner_pod,
            count: r.n,
        })
    }
}

/// A row of [`EVENTS_SQL`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    kind: String,
    id: i64,
    at: i64,
    subject: String,
    from_v: Option<String>,
    to_v: Option<String>,
    actor: Option<String>,
    epoch: Option<i64>,
    reason: String,
    extra: Option<i64>,
}

impl TryFrom<EventRow> for ConsoleEvent {
    type Error = StoreError;

    fn try_from(r: EventRow) -> StoreResult<ConsoleEvent> {
        let kind = match r.kind.as_str() {
            "transition" => EventKind::Transition,
            "claim" => EventKind::Claim,
            "death" => EventKind::Death,
            "switch" => EventKind::Switch,
            other => {
                return Err(StoreError::Corrupt {
                    table: "console events",
                    key: r.id.to_string(),
                    problem: format!("unknown event kind {other:?}"),
                });
            }
        };
        Ok(ConsoleEvent {
            kind,
            id: r.id,
            at_ms: r.at,
            subject: r.subject,
            from: r.from_v,
            to: r.to_v,
            actor: r.actor,
            epoch: r.epoch,
            reason: r.reason,
            extra_ms: r.extra,
        })
    }
}

/// Implement [`OpsStore`] for a backend (its type, and its `dialect` module,
/// whose `LIVENESS_LOCKS` is the statement that lists held advisory locks,
/// if the backend has them). Expanded in each backend's module, which owns
/// the store's `pool`.
macro_rules! impl_ops_store {
    ($store:ty, $dialect:ident) => {
        #[async_trait::async_trait]
        impl $crate::engine::store::ops::OpsStore for $store {
            async fn console_runs(
                &self,
                limit: i64,
            ) -> $crate::engine::store::StoreResult<Vec<$crate::engine::store::ops::RunSummary>>
            {
                sqlx::query_as::<_, $crate::engine::store::ops::RunSummaryRow>(
                    $crate::engine::store::ops::RUNS_SQL,
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(TryFrom::try_from)
                .collect()
            }

            async fn console_active_counts(
                &self,
            ) -> $crate::engine::store::StoreResult<Vec<$crate::engine::store::ops::ActiveCount>>
            {
                sqlx::query_as::<_, $crate::engine::store::ops::ActiveCountRow>(
                    $crate::engine::store::ops::ACTIVE_COUNTS_SQL,
                )
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(TryFrom::try_from)
                .collect()
            }

            async fn console_events(
                &self,
                cursor: &$crate::engine::store::ops::EventCursor,
                limit: i64,
            ) -> $crate::engine::store::StoreResult<Vec<$crate::engine::store::ops::ConsoleEvent>>
            {
                sqlx::query_as::<_, $crate::engine::store::ops::EventRow>(
                    $crate::engine::store::ops::EVENTS_SQL,
                )
                .bind(cursor.transitions)
                .bind(cursor.claims)
                .bind(cursor.deaths)
                .bind(cursor.switches)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(TryFrom::try_from)
                .collect()
            }

            async fn console_liveness_locks(
                &self,
            ) -> $crate::engine::store::StoreResult<Option<Vec<i64>>> {
                let Some(sql) = $dialect::LIVENESS_LOCKS else {
                    return Ok(None);
                };
                let keys = sqlx::query_as::<_, (i64, i64)>(sql)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(Some(
                    keys.into_iter()
                        .map($crate::engine::store::ops::advisory_key)
                        .collect(),
                ))
            }
        }
    };
}
pub(crate) use impl_ops_store;
