//! Chaos hooks: endpoints the chaos runner uses to inject faults a signal
//! cannot. Answered only by a pod started with `--chaos-hooks` (404
//! otherwise); not part of the public API and not in `/openapi.json`.

use super::Pod;
use super::api::{ApiError, ApiResult, Authorized};
use super::wire::EventAccepted;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn routes() -> Router<Arc<Pod>> {
    Router::new()
        .route("/v1/chaos/runs/{id}/stall", post(stall))
        .route("/v1/chaos/runs/{id}/lock", post(lock_row))
        .route("/v1/chaos/write-lock", post(write_lock))
        .route("/v1/chaos/clock", post(skew_clock))
}

fn enabled(pod: &Pod) -> ApiResult<()> {
    if pod.args.chaos_hooks {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "chaos_hooks_disabled",
            "start the pod with --chaos-hooks",
        ))
    }
}

/// Stop a run's machinery on this pod while keeping its ownership, as if its
/// driver had died on a live pod.
async fn stall(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    Path(id): Path<String>,
) -> ApiResult<Json<EventAccepted>> {
    enabled(&pod)?;
    if pod.stall(&id) {
        Ok(Json(EventAccepted { accepted: true }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_local",
            format!("run {id} is not running on this pod"),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRow {
    hold_ms: u64,
}

fn lock_failed(e: crate::engine::store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "lock_failed",
        e.to_string(),
    )
}

/// Lock a run's row from a session of this pod (with the settings of every
/// pod session) inside an open transaction, held for `hold_ms`: freeze the
/// pod now (SIGSTOP) and it is a pod frozen mid-transaction. Answers once
/// the lock is held. PostgreSQL only.
async fn lock_row(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    Path(id): Path<String>,
    Json(body): Json<LockRow>,
) -> ApiResult<Json<EventAccepted>> {
    enabled(&pod)?;
    if pod.store.backend() != "postgres" {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "needs_postgres",
            "row locks are a PostgreSQL fault; this pod's store is SQLite",
        ));
    }
    crate::engine::store::postgres::hold_run_row(
        &pod.args.store,
        &id,
        Duration::from_millis(body.hold_ms),
        true,
    )
    .await
    .map_err(lock_failed)?;
    tracing::warn!(run_id = %id, hold_ms = body.hold_ms, "chaos: holding the run's row locked in an open transaction");
    Ok(Json(EventAccepted { accepted: true }))
}

/// Take the SQLite database's write lock from a connection of this pod and
/// hold it for `hold_ms`: freeze the pod now (SIGSTOP) and it is a pod
/// frozen mid-write, with every other writer of the database frozen behind
/// it. Answers once the lock is held. SQLite only.
async fn write_lock(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    Json(body): Json<LockRow>,
) -> ApiResult<Json<EventAccepted>> {
    enabled(&pod)?;
    let Some(path) = crate::engine::store::sqlite_path(&pod.args.store) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "needs_sqlite",
            "the write lock is a SQLite fault; this pod's store is PostgreSQL",
        ));
    };
    crate::engine::store::sqlite::hold_write_lock(path, Duration::from_millis(body.hold_ms))
        .await
        .map_err(lock_failed)?;
    tracing::warn!(
        hold_ms = body.hold_ms,
        "chaos: holding the SQLite write lock in an open transaction"
    );
    Ok(Json(EventAccepted { accepted: true }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkewClock {
    offset_ms: i64,
}

/// Step this pod's wall clock `offset_ms` away from the host's.
async fn skew_clock(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    Json(body): Json<SkewClock>,
) -> ApiResult<Json<EventAccepted>> {
    enabled(&pod)?;
    crate::engine::clock::skew_wall_clock(body.offset_ms);
    tracing::warn!(
        offset_ms = body.offset_ms,
        "chaos: this pod's wall clock is skewed"
    );
    Ok(Json(EventAccepted { accepted: true }))
}
