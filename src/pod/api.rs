//! The pod's HTTP API (axum). Every error is a JSON body naming the problem;
//! store driver details stay in the logs. The OpenAPI document at
//! `/openapi.json` is generated from these handlers and types.

use super::Pod;
use super::health;
use super::stream::{self, ChunkEvent, Cursor, EndEvent, ResetEvent, StreamPart};
use super::wire::*;
use crate::engine::EngineError;
use crate::engine::run::{RunRecord, RunState, TransitionRecord};
use crate::engine::store::{RunFilter, StoreError, SwitchAudit, TransitionCtx};
use crate::engine::switches::{self, SwitchError};
use crate::engine::workflow::WorkflowError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use std::sync::Arc;
use utoipa::OpenApi;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ApiErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ApiErrorBody {
                error: code.into(),
                message: message.into(),
                state: None,
            },
        }
    }

    fn with_state(mut self, state: RunState) -> Self {
        self.body.state = Some(state);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RunNotFound { run_id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "run_not_found",
                format!("run {run_id} not found"),
            ),
            StoreError::AlreadyTerminal { run_id, state, to } => ApiError::new(
                StatusCode::CONFLICT,
                "already_terminal",
                format!(
                    "run {run_id} is already {state}; {to} is too late and will not be retried"
                ),
            )
            .with_state(state),
            StoreError::IllegalTransition { run_id, from, to } => ApiError::new(
                StatusCode::CONFLICT,
                "illegal_transition",
                format!("run {run_id}: {from} -> {to} is not allowed"),
            )
            .with_state(from),
            StoreError::Fenced {
                run_id,
                held,
                current,
                state,
            } => ApiError::new(
                StatusCode::CONFLICT,
                "fenced",
                format!("run {run_id}: epoch {held} is stale, the run is at epoch {current}"),
            )
            .with_state(state),
            StoreError::ClaimLost { run_id, .. } | StoreError::OwnerAlive { run_id, .. } => {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "claim_lost",
                    format!("run {run_id} is owned by someone else"),
                )
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "corrupt row");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt_row",
                    e.to_string(),
                )
            }
            // PostgreSQL refuses NUL characters in text (SQLSTATE 22021):
            // that is the request's fault, not an outage.
            StoreError::Db(sqlx::Error::Database(d)) if d.code().as_deref() == Some("22021") => {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_text",
                    "text fields and ids may not contain NUL characters",
                )
            }
            other => {
                tracing::warn!(error = %other, "store error answered 503");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable; retry later",
                )
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::Workflow(w @ WorkflowError::Unknown { .. }) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_workflow",
                w.to_string(),
            ),
            EngineError::Workflow(w) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_workflow",
                w.to_string(),
            ),
            EngineError::SelfFenced => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "this pod cannot reach its store in time; retry on another pod",
            ),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::new(r.status(), "bad_request", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// Proof that a mutating request carried the pod's bearer token (when the
/// pod has one: `--token-file`). Compared in constant time.
pub struct Authorized;

impl axum::extract::FromRequestParts<Arc<Pod>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        pod: &Arc<Pod>,
    ) -> Result<Self, Self::Rejection> {
        use subtle::ConstantTimeEq;
        let Some(expected) = pod.token.as_deref() else {
            return Ok(Authorized);
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Authorized)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this pod requires a bearer token for changes (Authorization: Bearer ...)",
            ))
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vigil pod API",
        description = "One engine pod: runs, streams, kill switches, metrics."
    ),
    paths(
        submit_run,
        list_runs,
        get_run,
        attach,
        cancel_run,
        post_event,
        list_switches,
        set_switch,
        list_workflows,
        health::metrics,
        health::healthz,
        health::readyz
    ),
    components(schemas(ChunkEvent, ResetEvent, StreamPart, EndEvent))
)]
pub struct ApiDoc;

pub fn router(pod: Arc<Pod>) -> Router {
    Router::new()
        .route("/v1/runs", post(submit_run).get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/stream", get(attach))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/events", post(post_event))
        .route("/v1/switches", get(list_switches))
        .route("/v1/switches/{name}", put(set_switch))
        .route("/v1/workflows", get(list_workflows))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi))
        .merge(super::hooks::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /openapi.json",
            )
        })
        .with_state(pod)
}

/// Submit a run.
#[utoipa::path(post, path = "/v1/runs", request_body = SubmitRequest,
    responses(
        (status = 201, description = "Created", body = SubmitResponse),
        (status = 200, description = "The idempotency key had already created this run", body = SubmitResponse),
        (status = 400, description = "Malformed request", body = ApiErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "Unknown workflow or invalid body", body = ApiErrorBody),
        (status = 503, description = "Store unavailable", body = ApiErrorBody),
    ))]
async fn submit_run(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let Json(req) = body?;
    if pod.is_stopping() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "this pod is shutting down",
        ));
    }
    if req
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 200)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_idempotency_key",
            "idempotency_key must be 1-200 characters",
        ));
    }
    if !(req.input.is_object() || req.input.is_null()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_input",
            "input must be a JSON object of the run's inputs",
        ));
    }
    // With room here, the run is created already ours (one commit, no
    // dispatcher pass); otherwise pending, for whichever pod has room.
    let (run, created) = match pod.worker.reserve() {
        Some(slot) => {
            let (run, fresh) = pod
                .engine
                .submit_claimed(&req.workflow, req.input, req.idempotency_key)
                .await?;
            match fresh {
                Some(fresh) => {
                    pod.worker.adopt(fresh, slot);
                    (run, true)
                }
                None => (run, false),
            }
        }
        None => {
            let created = pod
                .engine
                .submit_keyed(&req.workflow, req.input, req.idempotency_key)
                .await?;
            pod.nudge();
            created
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SubmitResponse { run, created })))
}

/// List runs, newest first.
#[utoipa::path(get, path = "/v1/runs", params(ListQuery),
    responses(
        (status = 200, body = RunList),
        (status = 400, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    ))]
async fn list_runs(
    State(pod): State<Arc<Pod>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<RunList>> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "limit must be 1..=1000",
        ));
    }
    let runs = pod
        .store
        .list_runs(&RunFilter {
            state: q.state,
            lane: q.lane,
            owner_pod: q.owner,
            limit: Some(limit),
        })
        .await?;
    Ok(Json(RunList { runs }))
}

/// The run `id` names: the id itself or a unique prefix of one; 404 for
/// none, 409 `ambiguous_id` naming the candidates.
async fn run_or_404(pod: &Pod, id: &str) -> ApiResult<RunRecord> {
    use crate::engine::store::IdMatch;
    match crate::engine::store::resolve_run_id(pod.store.as_ref(), id).await? {
        IdMatch::One(run) => Ok(*run),
        IdMatch::None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "run_not_found",
            format!("run {id} not found"),
        )),
        IdMatch::Many { candidates, more } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous_id",
            IdMatch::ambiguous(id, &candidates, more),
        )),
    }
}

/// One run with its steps (redacted outputs only) and transitions.
#[utoipa::path(get, path = "/v1/runs/{id}", params(("id" = String, Path, description = "Run id, or a unique prefix of one")),
    responses(
        (status = 200, body = RunDetail),
        (status = 404, body = ApiErrorBody),
        (status = 409, description = "The id is a prefix of several runs (ambiguous_id)", body = ApiErrorBody),
        (status = 500, description = "A corrupt row, named", body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    ))]
async fn get_run(
    State(pod): State<Arc<Pod>>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    let run = run_or_404(&pod, &id).await?;
    Ok(Json(RunDetail::of(pod.store.as_ref(), run).await?))
}

/// Attach to a run's stream (Server-Sent Events): replay, then live tail.
///
/// Events: `chunk` (id `EPOCH:SEQ`, data ChunkEvent: also the step attempt
/// that wrote it), `reset` (data ResetEvent: the run was claimed at a new
/// epoch; of the chunks received from older epochs keep only those whose
/// `(epoch, step, attempt)` is in `keep`), `end` (data EndEvent: the run's
/// final state; the stream closes). See docs/api.md, "Stream model".
#[utoipa::path(get, path = "/v1/runs/{id}/stream",
    params(("id" = String, Path, description = "Run id, or a unique prefix of one"), AttachQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = SseEvent),
        (status = 400, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, description = "The id is a prefix of several runs (ambiguous_id)", body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    ))]
async fn attach(
    State(pod): State<Arc<Pod>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<AttachQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.after);
    let cursor = match from {
        None => Cursor::START,
        Some(s) => Cursor::parse(&s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                format!("event id {s:?} is not EPOCH:SEQ"),
            )
        })?,
    };
    // Subscribed before the read, so no change after it is missed.
    let changes = pod.engine.changes();
    // A whole id: the run and the first page of its chunks in one
    // statement (the channel is empty: a page fills it at most). A prefix
    // is resolved first.
    let limit = i64::try_from(stream::CHANNEL).unwrap_or(1);
    let (run, page) = match pod
        .store
        .run_and_chunks(&id, cursor.epoch, cursor.seq, limit)
        .await?
    {
        Some((run, page)) => (run, Some((page, limit))),
        None => (run_or_404(&pod, &id).await?, None),
    };
    let id = run.id.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(stream::CHANNEL);
    tokio::spawn(stream::tail(
        pod.clone(),
        id,
        cursor,
        tx,
        Some(stream::FirstRead { run, page, changes }),
    ));
    let sse =
        Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default());
    Ok(sse.into_response())
}

/// Cancel a run. A run already terminal answers 409 `already_terminal`.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", params(("id" = String, Path, description = "Run id, or a unique prefix of one")),
    request_body(content = Option<CancelRequest>),
    responses(
        (status = 200, body = TransitionRecord),
        (status = 400, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, description = "Already terminal, or the id is a prefix of several runs (ambiguous_id)", body = ApiErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ApiErrorBody),
        (status = 415, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    ))]
async fn cancel_run(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<TransitionRecord>> {
    // The body is optional: parse it only when one was sent.
    let req: CancelRequest = if body.is_empty() {
        CancelRequest::default()
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_request",
                "send the cancel body as application/json",
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_request",
                format!("cancel body: {e}"),
            )
        })?
    };
    let id = run_or_404(&pod, &id).await?.id;
    let ctx = TransitionCtx {
        expected_epoch: None,
        pod: Some(pod.pod_id.clone()),
        reason: req
            .reason
            .unwrap_or_else(|| "cancelled through the API".into()),
        error: Some("cancelled".into()),
    };
    match pod.store.transition(&id, RunState::Cancelled, &ctx).await {
        Ok(t) => {
            pod.engine.touched(&id);
            Ok(Json(t))
        }
        Err(e @ StoreError::AlreadyTerminal { .. }) => {
            pod.engine.metrics.inc_too_late("cancel");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Report an event for a run held at `epoch` (external workers).
///
/// An event for a run already terminal gets 409 `already_terminal` with the
/// run's state: it is counted and must not be retried. An event carrying a
/// stale epoch gets 409 `fenced`.
#[utoipa::path(post, path = "/v1/runs/{id}/events", params(("id" = String, Path, description = "Run id, in full (a worker reports for the run it holds)")),
    request_body = RunEvent,
    responses(
        (status = 200, body = EventAccepted),
        (status = 400, body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, description = "Already terminal, or fenced", body = ApiErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ApiErrorBody),
        (status = 415, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    ))]
async fn post_event(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    Path(id): Path<String>,
    body: Result<Json<RunEvent>, JsonRejection>,
) -> ApiResult<Json<EventAccepted>> {
    let Json(ev) = body?;
    let kind = match &ev {
        RunEvent::Complete { .. } => "complete",
        RunEvent::Fail { .. } => "fail",
        RunEvent::Chunk { .. } => "chunk",
    };
    let ctx = |epoch, reason: &str, error| TransitionCtx {
        expected_epoch: Some(epoch),
        pod: None,
        reason: reason.into(),
        error,
    };
    let res = match ev {
        RunEvent::Complete { epoch } => pod
            .store
            .transition(
                &id,
                RunState::Succeeded,
                &ctx(epoch, "completion event", None),
            )
            .await
            .map(|_| ()),
        RunEvent::Fail { epoch, error } => pod
            .store
            .transition(
                &id,
                RunState::Failed,
                &ctx(epoch, "failure event", Some(error)),
            )
            .await
            .map(|_| ()),
        RunEvent::Chunk { epoch, seq, data } => {
            if seq < 0 {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_request",
                    "seq must be >= 0",
                ));
            }
            pod.store.append_chunk(&id, epoch, seq, None, &data).await
        }
    };
    match res {
        Ok(()) => {
            pod.engine.touched(&id);
            Ok(Json(EventAccepted { accepted: true }))
        }
        Err(StoreError::Fenced { run_id, state, .. }) if state.is_terminal() => {
            pod.engine.metrics.inc_too_late(kind);
            Err(StoreError::AlreadyTerminal {
                run_id,
                state,
                to: state,
            }
            .into())
        }
        Err(e @ StoreError::AlreadyTerminal { .. }) => {
            pod.engine.metrics.inc_too_late(kind);
            Err(e.into())
        }
        Err(StoreError::Db(sqlx::Error::Database(d))) if d.is_unique_violation() => {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_chunk",
                format!("run {id}: that epoch and seq are already in the stream"),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn switch_views(pod: &Pod) -> ApiResult<Vec<SwitchView>> {
    let rows = pod.store.switches().await?;
    Ok(switches::KNOWN
        .iter()
        .map(|spec| {
            let row = rows.iter().find(|r| r.name == spec.name);
            SwitchView::of(spec, row, pod.engine.switches.enabled(spec.name))
        })
        .collect())
}

/// Every kill switch: value, default, what turning it off disables.
#[utoipa::path(get, path = "/v1/switches",
    responses((status = 200, body = SwitchList), (status = 503, body = ApiErrorBody)))]
async fn list_switches(State(pod): State<Arc<Pod>>) -> ApiResult<Json<SwitchList>> {
    Ok(Json(SwitchList {
        switches: switch_views(&pod).await?,
    }))
}

/// Set a kill switch; every pod sees it within a second. Audited.
#[utoipa::path(put, path = "/v1/switches/{name}", params(("name" = String, Path, description = "Switch name")),
    request_body = SetSwitchRequest,
    responses(
        (status = 200, body = SwitchAudit),
        (status = 400, body = ApiErrorBody),
        (status = 404, description = "Unknown switch", body = ApiErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ApiErrorBody),
        (status = 415, body = ApiErrorBody),
        (status = 422, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    ))]
async fn set_switch(
    State(pod): State<Arc<Pod>>,
    _auth: Authorized,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    body: Result<Json<SetSwitchRequest>, JsonRejection>,
) -> ApiResult<Json<SwitchAudit>> {
    let Json(req) = body?;
    if req.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason_required",
            "say why: reason goes into the audit trail",
        ));
    }
    // Without a `who`, the audit still says where the change came from.
    let who = req.who.unwrap_or_else(|| {
        let peer = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        match peer {
            Some(axum::extract::ConnectInfo(addr)) => {
                format!("api via {} from {}", pod.pod_id, addr.ip())
            }
            None => format!("api via {}", pod.pod_id),
        }
    });
    match switches::set(pod.store.as_ref(), &name, req.enabled, &who, &req.reason).await {
        Ok(a) => {
            // This pod applies it at once; others within one watch interval.
            let _ = pod.engine.switches.refresh(pod.store.as_ref()).await;
            Ok(Json(a))
        }
        Err(e @ SwitchError::Unknown { .. }) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_switch",
            e.to_string(),
        )),
        Err(SwitchError::Store(s)) => Err(s.into()),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_switch",
            e.to_string(),
        )),
    }
}

/// The workflows this pod can run.
#[utoipa::path(get, path = "/v1/workflows", responses((status = 200, body = WorkflowList)))]
async fn list_workflows(State(pod): State<Arc<Pod>>) -> Json<WorkflowList> {
    let reg = &pod.engine.workflows;
    let workflows = reg
        .names()
        .filter_map(|n| reg.get(n).ok())
        .map(|w| WorkflowView {
            name: w.name.clone(),
            description: w.description.clone(),
            lane: w.lane.clone(),
            steps: w.steps.iter().map(|s| s.id.clone()).collect(),
        })
        .collect();
    Json(WorkflowList { workflows })
}

/// The document generated from the code, with this pod's workflow names
/// and the known switch names filled in as enums (they are data, not types).
async fn openapi(State(pod): State<Arc<Pod>>) -> Json<serde_json::Value> {
    let names: Vec<&str> = pod.engine.workflows.names().collect();
    Json(document(&names))
}

/// `/openapi.json` for a pod that runs `workflows`: the generated
/// document, with the data that is not a type filled in (workflow and
/// switch names as enums), the bearer scheme, and a description on every
/// response (OpenAPI requires one).
pub fn document(workflows: &[&str]) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(w) = doc.pointer_mut("/components/schemas/SubmitRequest/properties/workflow") {
        w["enum"] = json!(workflows);
    }
    let switch_names: Vec<&str> = switches::KNOWN.iter().map(|s| s.name).collect();
    if let Some(p) = doc.pointer_mut("/paths/~1v1~1switches~1{name}/put/parameters/0/schema") {
        p["enum"] = json!(switch_names);
    }
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The token of the pod's `--token-file`, required for changes (submit, cancel, events, switches) when the pod has one.",
        }
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc;
    };
    for operation in paths.values_mut().filter_map(Value::as_object_mut) {
        for op in operation.values_mut().filter_map(Value::as_object_mut) {
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let guarded = responses.contains_key("401");
            for (status, response) in responses.iter_mut() {
                if response.get("description").is_none_or(|d| d == "") {
                    response["description"] = json!(status_description(status));
                }
            }
            if guarded {
                // Either the token, or nothing (a pod without --token-file).
                op.insert("security".into(), json!([{"bearer": []}, {}]));
            }
        }
    }
    doc
}

/// What a status means across this API, for responses whose handler says
/// no more.
fn status_description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "400" => "A malformed path, query or body; `message` names what",
        "401" => "Missing or wrong bearer token",
        "404" => "No such run",
        "409" => "Conflicts with the run's state",
        "415" => "The body is not `application/json`",
        "422" => "Well-formed JSON the API cannot accept; `message` names the field",
        "500" => "An internal error (a corrupt row, named)",
        "503" => "The store is unavailable or the pod is stopping; try again",
        _ => "See `error` and `message`",
    }
}

#[cfg(test)]
mod tests {
    use super::document;
    use crate::pod::health::wants_openmetrics;

    #[test]
    fn every_response_is_described_and_changes_name_the_bearer_scheme() {
        let doc = document(&["flaky_sync"]);
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let mut guarded = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let d = response["description"].as_str().unwrap_or("");
                    assert!(!d.is_empty(), "{method} {path} {status} has no description");
                }
                if op.get("security").is_some() {
                    guarded.push(format!("{method} {path}"));
                }
            }
        }
        guarded.sort();
        assert_eq!(
            guarded,
            [
                "post /v1/runs",
                "post /v1/runs/{id}/cancel",
                "post /v1/runs/{id}/events",
                "put /v1/switches/{name}"
            ]
        );
    }

    #[test]
    fn metrics_negotiation_prefers_openmetrics_unless_text_weighs_more() {
        // Prometheus 2.x/3.x scrape header, no header, wildcards.
        for accept in [
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            "",
            "*/*",
            "application/openmetrics-text",
            "text/plain;q=0.5, application/openmetrics-text",
            "text/plain, */*",
            "text/plain;q=0",
        ] {
            assert!(wants_openmetrics(accept), "{accept:?}");
        }
        for accept in [
            "text/plain",
            "text/plain; version=0.0.4",
            "TEXT/PLAIN",
            "text/*",
            "application/openmetrics-text;q=0.2, text/plain;q=0.9",
            "application/json, text/plain",
        ] {
            assert!(!wants_openmetrics(accept), "{accept:?}");
        }
    }
}
