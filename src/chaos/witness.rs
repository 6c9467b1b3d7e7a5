//! The witness: a small HTTP endpoint the runner serves, outside the engine.
//! Chaos workflows call it from `http` steps (`url = "{{vigil.witness}}/effect"`)
//! with the run, step, attempt and epoch; every call is one execution of a
//! step's side effect, recorded in the history where no pod can touch it.
//! `executions_bounded` counts these, not the engine's own `effects` rows.

use super::history::History;
use anyhow::{Context, Result};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a witnessed step sends.
#[derive(Debug, Deserialize)]
struct Call {
    run: String,
    step: String,
    attempt: i64,
    /// Absent for a target with no ownership epochs (recorded as 0).
    #[serde(default)]
    epoch: Option<i64>,
    pod: String,
    /// Hold the answer this long (a step that takes time, as real ones do).
    #[serde(default)]
    delay_ms: u64,
}

pub struct Witness {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Witness {
    /// Serve on `bind` (port 0: any free port) until dropped.
    pub async fn start(bind: SocketAddr, history: Arc<History>) -> Result<Witness> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding the witness on {bind}"))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/effect", post(effect))
            .with_state(history);
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await;
        });
        Ok(Witness { addr, stop })
    }

    /// The URL pods are given (`--witness-url`), as they reach `host`.
    pub fn url_for(&self, host: &str) -> String {
        format!("http://{host}:{}", self.addr.port())
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn effect(
    State(history): State<Arc<History>>,
    body: Result<Json<Call>, axum::extract::rejection::JsonRejection>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let Ok(Json(c)) = body else {
        // A malformed call is still a call: record what we can, answer 400
        // so the step fails loudly rather than passing unobserved.
        history.record("witness_bad_call", json!({}));
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(
                json!({ "error": "expected {run, step, attempt, pod, epoch (optional), delay_ms (optional)}" }),
            ),
        );
    };
    history.record(
        "witness",
        json!({ "run_id": c.run, "step": c.step, "attempt": c.attempt, "epoch": c.epoch.unwrap_or(0), "pod": c.pod }),
    );
    if c.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(c.delay_ms.min(60_000))).await;
    }
    (axum::http::StatusCode::OK, Json(json!({ "seen": true })))
}
