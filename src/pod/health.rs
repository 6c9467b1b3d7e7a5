//! Liveness, readiness and metrics of one pod: `/healthz` (the process
//! answers), `/readyz` (from the pod's own view of its lease, never a store
//! query without a deadline) and `/metrics`.

use super::Pod;
use super::api::{ApiError, ApiResult};
use super::wire::{ApiErrorBody, Health};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Metrics: OpenMetrics 1.0 text, or the Prometheus text format 0.0.4 to
/// a scraper whose `Accept` prefers `text/plain`.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200,
        description = "The pod's metrics (OpenMetrics 1.0 text; Prometheus text 0.0.4 when asked)",
        content(
            (String = "application/openmetrics-text"),
            (String = "text/plain"),
        ))))]
pub(super) async fn metrics(State(pod): State<Arc<Pod>>, headers: header::HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The lease is read on this pod's own clock at the moment of the scrape.
    let lease = &pod.engine.config.lease;
    let gray = &pod.engine.metrics.gray;
    gray.lease_left.set(
        lease
            .left(std::time::Instant::now())
            .map_or(f64::INFINITY, |d| d.as_secs_f64()),
    );
    gray.ready.set(i64::from(unready(&pod).is_none()));
    pod.engine.metrics.set_pools(&pod.store.pools());
    let (content_type, body) = if wants_openmetrics(accept) {
        (OPENMETRICS, pod.engine.metrics.encode())
    } else {
        (PROMETHEUS_TEXT, pod.engine.metrics.encode_prometheus_text())
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether to answer `accept` with OpenMetrics: yes unless `text/plain`
/// has a higher weight than every OpenMetrics (or wildcard) entry. No
/// header, `*/*` and Prometheus's own header (OpenMetrics first) all get
/// OpenMetrics.
pub(super) fn wants_openmetrics(accept: &str) -> bool {
    let (mut om, mut text) = (None::<f32>, None::<f32>);
    for part in accept.split(',') {
        let mut fields = part.split(';').map(str::trim);
        let media = fields.next().unwrap_or("").to_ascii_lowercase();
        let q = fields
            .filter_map(|f| f.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" | "*/*" | "application/*" => &mut om,
            "text/plain" | "text/*" => &mut text,
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    match (om, text) {
        (_, None) => true,
        (None, Some(t)) => t <= 0.0,
        (Some(o), Some(t)) => o >= t,
    }
}

/// Liveness of the process.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub(super) async fn healthz(State(pod): State<Arc<Pod>>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        pod_id: pod.pod_id.clone(),
        store: pod.store.backend().into(),
        runs_active: pod.runs_active(),
    })
}

/// Readiness: the pod's lease holds, the store takes its writes, and it is
/// not stopping.
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, body = Health), (status = 503, body = ApiErrorBody)))]
pub(super) async fn readyz(State(pod): State<Arc<Pod>>) -> ApiResult<Json<Health>> {
    if let Some(why) = unready(&pod) {
        return Err(why);
    }
    Ok(Json(Health {
        status: "ready".into(),
        pod_id: pod.pod_id.clone(),
        store: pod.store.backend().into(),
        runs_active: pod.runs_active(),
    }))
}

/// Why the pod is not ready (what `/readyz` answers and `vigil_ready`
/// reads), or None when it is.
fn unready(pod: &Pod) -> Option<ApiError> {
    if pod.is_stopping() {
        return Some(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "this pod is shutting down",
        ));
    }
    // From the pod's own view of its lease, never a store query without a
    // deadline: a pod cut off from its store answers 503 within a second
    // of its lease running short, and a ready one answers at once.
    if !pod.engine.config.lease.holds() {
        return Some(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "lease_lapsing",
            "this pod has not reached its store in time to keep its lease; its runs may move \
             to another pod",
        ));
    }
    // A pod whose runs' writes the store refuses (a full disk, an outage)
    // cannot do the work a load balancer would send it.
    let waiting = pod.engine.writes_waiting();
    if waiting > 0 {
        return Some(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_refuses_writes",
            format!(
                "the store is not taking this pod's writes ({waiting} waiting: a full disk, an \
                 outage); runs resume once it does"
            ),
        ));
    }
    None
}
