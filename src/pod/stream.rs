//! Run streams over Server-Sent Events.
//!
//! Attach = replay from the start (or from `Last-Event-ID`), then tail.
//! Every chunk event carries `id: EPOCH:SEQ` and the step attempt that wrote
//! it. When the run is resumed by a new owner its claim bumps the epoch and,
//! in the same transaction, purges the older epochs' chunks except those of
//! each step's succeeded attempt. A client that already received chunks and
//! whose view predates the claim gets a `reset` event: the new epoch and the
//! `keep` list of the older epochs' surviving parts `(epoch, step, attempt)`;
//! it discards every older-epoch chunk it holds that is not in `keep`. The
//! tail does not move its cursor on a reset: surviving chunks past the
//! client's cursor are still delivered. A run that ends closes its stream
//! with an `end` event carrying the final state.
//!
//! The tail reads the store (not an in-process channel), so a client can
//! attach to any pod, not just the owner.

use super::Pod;
use crate::engine::run::RunState;
use axum::response::sse::Event;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often an attached stream polls the store for new chunks.
pub const POLL: Duration = Duration::from_millis(25);
const BATCH: i64 = 500;

/// Where a client is in a stream: the last `(epoch, seq)` it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: i64,
    pub seq: i64,
}

impl Cursor {
    pub const START: Cursor = Cursor { epoch: 0, seq: -1 };

    /// Parse an SSE id `EPOCH:SEQ`.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (e, q) = s.trim().split_once(':')?;
        let c = Cursor {
            epoch: e.parse().ok()?,
            seq: q.parse().ok()?,
        };
        (c.epoch >= 0 && c.seq >= -1).then_some(c)
    }
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChunkEvent {
    pub epoch: i64,
    pub seq: i64,
    /// The step whose attempt wrote the chunk (absent for chunks posted
    /// through the events API or written before chunks carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// That step's attempt number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i64>,
    pub data: String,
}

/// One step attempt's chunks at one epoch.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct StreamPart {
    pub epoch: i64,
    pub step: String,
    pub attempt: i64,
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResetEvent {
    /// The epoch the stream continues at.
    pub epoch: i64,
    /// Of the chunks received from epochs below `epoch`, keep exactly those
    /// whose `(epoch, step, attempt)` is listed here; discard the rest.
    #[serde(default)]
    pub keep: Vec<StreamPart>,
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EndEvent {
    pub state: RunState,
    pub error: Option<String>,
}

fn event<T: Serialize>(kind: &str, body: &T) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(body).unwrap_or_else(|_| "{}".into()))
}

/// Feed `tx` with the run's stream from `cursor` until the run ends, the
/// client goes away or the pod stops.
pub async fn tail(
    pod: Arc<Pod>,
    run_id: String,
    mut cursor: Cursor,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    // The run as the caller read it, and the wake-ups it subscribed to
    // before that read (one store read less per attach).
    read: Option<(
        crate::engine::run::RunRecord,
        tokio::sync::broadcast::Receiver<Arc<str>>,
    )>,
) {
    pod.engine.metrics.attachers_active.inc();
    // Subscribed before the first read, so no change made in this process
    // after that read can be missed; changes made by other pods are seen at
    // the next poll.
    let (mut first_read, mut changes) = match read {
        Some((run, changes)) => (Some(run), changes),
        None => (None, pod.engine.changes()),
    };
    // The epoch up to whose claim what this client holds is known to be
    // current (None: it holds nothing). A resuming client holds chunks up to
    // its cursor, current as of at least its cursor's epoch.
    let mut synced: Option<i64> = (cursor.epoch > 0).then_some(cursor.epoch);
    let send = |ev: Event| {
        let tx = tx.clone();
        async move { tx.send(Ok(ev)).await.is_ok() }
    };
    // The reset for a stream going on at `epoch`: what survived of older
    // epochs (after the claim's purge: the succeeded attempts' chunks).
    let reset = |epoch: i64| {
        let pod = pod.clone();
        let run_id = run_id.clone();
        async move {
            let keep = pod.store.kept_parts(&run_id, epoch).await?;
            let keep = keep
                .into_iter()
                .map(|p| StreamPart {
                    epoch: p.epoch,
                    step: p.node_id,
                    attempt: p.attempt,
                })
                .collect();
            Ok::<_, crate::engine::store::StoreError>(event("reset", &ResetEvent { epoch, keep }))
        }
    };
    'outer: loop {
        // Read the run first: if it is terminal now, every chunk it will
        // ever have is already committed (the fence rejects later writes).
        let read = match first_read.take() {
            Some(r) => Ok(Some(r)),
            None => pod.store.get_run(&run_id).await,
        };
        let run = match read {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(run_id, error = %e, "stream: store read failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = pod.shutdown.cancelled() => break,
                    _ = tx.closed() => break,
                }
            }
        };
        // A new owner claimed the run since what this client holds was
        // current: tell it now what to keep, before anything newer.
        if synced.is_some_and(|s| run.epoch > s) {
            let ev = match reset(run.epoch).await {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "stream: keep-list read failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = pod.shutdown.cancelled() => break,
                        _ = tx.closed() => break,
                    }
                }
            };
            if !send(ev).await {
                break;
            }
            synced = Some(run.epoch);
        }
        // A failed read leaves the client behind: no `end` before a retry.
        let mut behind = false;
        loop {
            let chunks = match pod
                .store
                .chunks_after(&run_id, cursor.epoch, cursor.seq, BATCH)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "stream: chunk read failed; retrying");
                    behind = true;
                    break;
                }
            };
            let n = chunks.len();
            for c in chunks {
                match synced {
                    // Claimed again after the run was read: reset first.
                    Some(s) if c.epoch > s => {
                        let ev = match reset(c.epoch).await {
                            Ok(ev) => ev,
                            Err(e) => {
                                tracing::warn!(run_id, error = %e, "stream: keep-list read failed; retrying");
                                behind = true;
                                break;
                            }
                        };
                        if !send(ev).await {
                            break 'outer;
                        }
                        synced = Some(c.epoch);
                    }
                    Some(_) => {}
                    // The first chunk: what the client gets now survived
                    // every claim up to the run read above (and the chunk's).
                    None => synced = Some(run.epoch.max(c.epoch)),
                }
                let ev = event(
                    "chunk",
                    &ChunkEvent {
                        epoch: c.epoch,
                        seq: c.seq,
                        step: c.node_id,
                        attempt: c.attempt,
                        data: c.data,
                    },
                )
                .id(format!("{}:{}", c.epoch, c.seq));
                if !send(ev).await {
                    break 'outer;
                }
                cursor = Cursor {
                    epoch: c.epoch,
                    seq: c.seq,
                };
            }
            if behind || i64::try_from(n).unwrap_or(0) < BATCH {
                break;
            }
        }
        if run.state.is_terminal() && !behind {
            let _ = send(event(
                "end",
                &EndEvent {
                    state: run.state,
                    error: run.error,
                },
            ))
            .await;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = changed(&mut changes, &run_id) => {}
            _ = pod.shutdown.cancelled() => break,
            _ = tx.closed() => break,
            // This pod cannot keep its lease (its store link is cut or
            // frozen): what it would stream may already be stale. Tell the
            // client to resume elsewhere, and end.
            _ = pod.engine.config.lease.lapsed() => {
                pod.engine
                    .metrics
                    .gray
                    .self_fenced
                    .get_or_create(&crate::engine::metrics::Kind { kind: "stream".into() })
                    .inc();
                let _ = send(event(
                    "unavailable",
                    &serde_json::json!({
                        "error": "lease_lapsing",
                        "retry": true,
                        "message": "this pod cannot reach its store in time; resume from the last event id on another pod",
                    }),
                ))
                .await;
                break;
            }
        }
    }
    pod.engine.metrics.attachers_active.dec();
}

/// Until this process changes `run_id` (or the channel lagged: then maybe).
async fn changed(rx: &mut tokio::sync::broadcast::Receiver<Arc<str>>, run_id: &str) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(id) if &*id == run_id => return,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return,
            // The engine is gone: only the poll is left.
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_strictly() {
        assert_eq!(Cursor::parse("2:7"), Some(Cursor { epoch: 2, seq: 7 }));
        assert_eq!(Cursor::parse(" 1:-1 "), Some(Cursor { epoch: 1, seq: -1 }));
        for bad in ["", "2", "a:1", "1:b", "-1:0", "1:-2", "1:2:3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
