//! Attaching clients to run streams: following a stream to its end across
//! pod deaths (resuming from the last event id), early attachers spawned at
//! submission and late ones once the cluster went quiet.

use super::Shared;
use crate::chaos::checks::AttacherLog;
use crate::chaos::scenario::{AttachKind, Plan};
use crate::client::StreamEvent;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Follow a run's stream to its end through any live pod, resuming from
/// the last event id when a pod dies under it. Every event is recorded in
/// the history as it arrives (`stream`), on the runner's clock.
async fn follow(
    shared: Arc<Shared>,
    name: String,
    run_id: String,
    kind: AttachKind,
    bound: Duration,
) -> AttacherLog {
    let mut log = AttacherLog {
        run_name: name.clone(),
        run_id: run_id.clone(),
        attacher: kind,
        events: Vec::new(),
        error: None,
    };
    shared.history.record(
        "attached",
        json!({ "run": name, "run_id": run_id, "attacher": kind }),
    );
    let fail = |log: &mut AttacherLog, e: String| {
        shared.history.record(
            "attach_error",
            json!({ "run_id": run_id, "attacher": kind, "error": e }),
        );
        log.error = Some(e);
    };
    let deadline = Instant::now() + bound;
    let mut last_id: Option<String> = None;
    let mut turn = 0usize;
    loop {
        if Instant::now() > deadline {
            fail(
                &mut log,
                format!("no end event within {}", crate::human::duration(bound)),
            );
            return log;
        }
        let live = shared.live();
        if live.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let (pod, url) = live[turn % live.len()].clone();
        turn += 1;
        // A run whose client link a fault hurts reaches pods through it.
        let url = match shared.client_url(&name, &pod, &url).await {
            Ok(u) => u,
            Err(e) => {
                fail(&mut log, format!("{e:#}"));
                return log;
            }
        };
        let mut req = shared.http.get(format!("{url}v1/runs/{run_id}/stream"));
        if let Some(l) = &last_id {
            req = req.header("Last-Event-ID", l);
        }
        let resp = match req.send().await {
            Ok(r) if r.status().is_success() => r,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        shared.history.record(
            "attach",
            json!({ "run_id": run_id, "attacher": kind, "pod": pod, "after": last_id }),
        );
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let next = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                events.next(),
            )
            .await;
            let ev = match next {
                Ok(Some(Ok(ev))) => ev,
                Ok(Some(Err(_)) | None) => break,
                Err(_) => {
                    fail(
                        &mut log,
                        format!("no end event within {}", crate::human::duration(bound)),
                    );
                    return log;
                }
            };
            // A body that does not parse is skipped like an unknown event:
            // the checks judge what the client could read.
            let Ok(Some(parsed)) = crate::client::decode_stream_event(&ev.event, &ev.id, &ev.data)
            else {
                continue;
            };
            if let StreamEvent::Chunk { id, .. } = &parsed {
                last_id = Some(id.clone());
            }
            shared.history.record(
                "stream",
                json!({ "run_id": run_id, "attacher": kind, "event": parsed }),
            );
            let end = matches!(parsed, StreamEvent::End { .. });
            log.events.push((shared.history.elapsed_ms(), parsed));
            if end {
                return log;
            }
        }
    }
}

/// An early attacher: follows the run from its submission, in the
/// background, for at most `bound`.
pub(super) fn early(
    shared: &Arc<Shared>,
    name: &str,
    run_id: &str,
    bound: Duration,
) -> JoinHandle<AttacherLog> {
    tokio::spawn(follow(
        shared.clone(),
        name.to_owned(),
        run_id.to_owned(),
        AttachKind::Early,
        bound,
    ))
}

/// The late attachers, one after another: each follows its run (by then
/// ended) from the start.
pub(super) async fn late(shared: &Arc<Shared>, plan: &Plan) {
    for r in &plan.runs {
        if r.attach.contains(&AttachKind::Late)
            && let Some(id) = shared.run_id(&r.name)
        {
            follow(
                shared.clone(),
                r.name.clone(),
                id,
                AttachKind::Late,
                Duration::from_secs(10),
            )
            .await;
        }
    }
}

/// Wait for the early attachers (each for at most 20 s more).
pub(super) async fn join_early(shared: &Shared, early: Vec<JoinHandle<AttacherLog>>) {
    for e in early {
        if tokio::time::timeout(Duration::from_secs(20), e)
            .await
            .is_err()
        {
            shared.note("an early attacher did not finish".into());
        }
    }
}
