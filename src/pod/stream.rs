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
//!
//! A slow client costs the pod a bounded amount: the tail waits for room in
//! the client's channel *before* it reads, holding nothing meanwhile (no
//! batch, no store connection: each read is one `fetch_all` that gives its
//! connection back), and reads no more chunks than the channel has room
//! for. What one attach holds is its channel (256 events) and the kernel's
//! socket buffers, however slow the client. The change wake-ups are a
//! bounded broadcast: a tail that lags behind them takes the lag as a
//! wake-up (`changed`).

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
/// Ordered as the stream is: by epoch, then seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
    // The run as the caller read it (with the first page of its chunks
    // after `cursor` and the page's limit, when it read them in the same
    // statement), and the wake-ups it subscribed to before that read (one
    // store read less per attach).
    read: Option<FirstRead>,
) {
    pod.engine.metrics.attachers_active.inc();
    // Subscribed before the first read, so no change made in this process
    // after that read can be missed; changes made by other pods are seen at
    // the next poll.
    let (mut first_read, mut changes) = match read {
        Some(FirstRead { run, page, changes }) => (Some((run, page)), changes),
        None => (None, pod.engine.changes()),
    };
    // The epoch up to whose claim what this client holds is known to be
    // current (None: it holds nothing). A resuming client holds chunks up to
    // its cursor, current as of at least its cursor's epoch.
    let mut synced: Option<i64> = (cursor.epoch > 0).then_some(cursor.epoch);
    // With `unbounded_stream` (fault injection) events go through an
    // unbounded queue ahead of the client instead.
    let sink = Sink::new(tx.clone(), cursor);
    let send = |ev: Event, at: Option<Cursor>| {
        let (pod, sink) = (pod.clone(), sink.clone());
        async move { sink.send(&pod, ev, at).await }
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
        // Room first, then read no more than fits: a slow client leaves
        // the tail waiting here with nothing in hand.
        let Some(room) = sink.room(&pod).await else {
            break;
        };
        let (from, limit) = sink.read_from(cursor, room);
        // The run and the first page of its chunks in one read (one round
        // trip, one snapshot): if the run is terminal in it, every chunk it
        // will ever have is in the page or before the cursor (the fence
        // rejects later writes). The caller's read of the run, at attach,
        // comes without chunks.
        let read = match first_read.take() {
            Some(read) => Ok(Some(read)),
            None => pod
                .store
                .run_and_chunks(&run_id, from.epoch, from.seq, limit)
                .await
                .map(|r| r.map(|(run, page)| (run, Some((page, limit))))),
        };
        let (run, mut page) = match read {
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
            if !send(ev, None).await {
                break;
            }
            synced = Some(run.epoch);
        }
        // A failed read leaves the client behind: no `end` before a retry.
        let mut behind = false;
        let mut limit: i64;
        loop {
            let chunks = match page.take() {
                Some((c, read_with)) => {
                    limit = read_with;
                    c
                }
                None => {
                    let Some(room) = sink.room(&pod).await else {
                        break 'outer;
                    };
                    let from;
                    (from, limit) = sink.read_from(cursor, room);
                    match pod
                        .store
                        .chunks_after(&run_id, from.epoch, from.seq, limit)
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(run_id, error = %e, "stream: chunk read failed; retrying");
                            behind = true;
                            break;
                        }
                    }
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
                        if !send(ev, None).await {
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
                let at = Cursor {
                    epoch: c.epoch,
                    seq: c.seq,
                };
                if !send(ev, Some(at)).await {
                    break 'outer;
                }
                cursor = cursor.max(at);
            }
            if behind || i64::try_from(n).unwrap_or(0) < limit {
                break;
            }
        }
        if run.state.is_terminal() && !behind {
            let _ = send(
                event(
                    "end",
                    &EndEvent {
                        state: run.state,
                        error: run.error,
                    },
                ),
                None,
            )
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
                let _ = send(
                    event(
                        "unavailable",
                        &serde_json::json!({
                            "error": "lease_lapsing",
                            "retry": true,
                            "message": "this pod cannot reach its store in time; resume from the last event id on another pod",
                        }),
                    ),
                    None,
                )
                .await;
                break;
            }
        }
    }
    pod.engine.metrics.attachers_active.dec();
}

/// What the attach handler read before the tail began: the run, the
/// first page of its chunks and the limit it was read with (when it read
/// both in one statement), and the wake-ups subscribed to before that read.
pub struct FirstRead {
    pub run: crate::engine::run::RunRecord,
    pub page: Option<(Vec<crate::engine::run::Chunk>, i64)>,
    pub changes: tokio::sync::broadcast::Receiver<Arc<str>>,
}

/// Room for events between a tail and its client.
pub const CHANNEL: usize = 256;

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// Where a tail's events go: the client's bounded channel, or (fault
/// injection, `unbounded_stream`) an unbounded queue in front of it.
#[derive(Clone)]
enum Sink {
    Bounded(Tx),
    Unbounded(Arc<Ahead>),
}

/// The `unbounded_stream` bug: a forwarder moves events from an unbounded
/// queue to the client as fast as the client takes them, and the tail
/// reads ahead of it into the queue. Worse, the tail reads from what the
/// client has *received* (the forwarder's cursor), not from what it already
/// queued: under a slow client every wake-up queues the whole backlog
/// again (the forwarder drops the copies as it reaches them), so the pod's
/// memory grows with the backlog times the wake-ups.
struct Ahead {
    queue: mpsc::UnboundedSender<(Option<Cursor>, Event)>,
    delivered: std::sync::Mutex<Cursor>,
    client: Tx,
}

impl Sink {
    fn new(tx: Tx, from: Cursor) -> Sink {
        if !crate::faults::on(crate::faults::Bug::UnboundedStream) {
            return Sink::Bounded(tx);
        }
        let (queue, mut rx) = mpsc::unbounded_channel::<(Option<Cursor>, Event)>();
        let ahead = Arc::new(Ahead {
            queue,
            delivered: std::sync::Mutex::new(from),
            client: tx,
        });
        let fwd = ahead.clone();
        tokio::spawn(async move {
            while let Some((at, ev)) = rx.recv().await {
                let done = *fwd.delivered.lock().unwrap_or_else(|p| p.into_inner());
                if at.is_some_and(|c| c <= done) {
                    continue;
                }
                if fwd.client.send(Ok(ev)).await.is_err() {
                    break;
                }
                if let Some(c) = at {
                    *fwd.delivered.lock().unwrap_or_else(|p| p.into_inner()) = c;
                }
            }
        });
        Sink::Unbounded(ahead)
    }

    /// Wait until the client's channel has room, and say for how many
    /// events; None when the tail should stop (the client left, the pod
    /// stops or cannot keep its lease: the client resumes elsewhere).
    /// Nothing is held while waiting.
    async fn room(&self, pod: &Pod) -> Option<usize> {
        let tx = match self {
            Sink::Bounded(tx) => tx,
            // The bug never waits.
            Sink::Unbounded(a) => return (!a.client.is_closed()).then_some(usize::MAX),
        };
        tokio::select! {
            // Room wins over a lapsed lease: the idle wait then tells the
            // client to resume elsewhere (`unavailable`).
            biased;
            permit = tx.reserve() => {
                // Only this tail sends on the channel: the room stays.
                drop(permit.ok()?);
                Some(tx.capacity().max(1))
            }
            _ = pod.shutdown.cancelled() => None,
            _ = pod.engine.config.lease.lapsed() => None,
        }
    }

    /// Where to read from, and how many chunks, with `room` in the channel.
    fn read_from(&self, cursor: Cursor, room: usize) -> (Cursor, i64) {
        match self {
            Sink::Bounded(_) => (cursor, i64::try_from(room).unwrap_or(BATCH).clamp(1, BATCH)),
            Sink::Unbounded(a) => {
                let done = *a.delivered.lock().unwrap_or_else(|p| p.into_inner());
                (done.min(cursor), i64::MAX)
            }
        }
    }

    /// Send `ev` (the chunk at `at`, if it is one), waiting for room; false
    /// once the tail should stop.
    async fn send(&self, pod: &Pod, ev: Event, at: Option<Cursor>) -> bool {
        match self {
            Sink::Bounded(tx) => self.room(pod).await.is_some() && tx.try_send(Ok(ev)).is_ok(),
            Sink::Unbounded(a) => a.queue.send((at, ev)).is_ok(),
        }
    }
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        pod: crate::pod::PodArgs,
    }

    /// A slow client leaves the tail waiting for room with nothing in
    /// hand: it has read no chunk beyond what the client's channel holds.
    /// Seen from outside: chunks deleted from the store while the channel
    /// is full never reach the client, and the next event it gets is one
    /// written after the deletion. (A tail that read a batch ahead, as it
    /// did, would still hand out the deleted chunks it held.)
    #[tokio::test]
    async fn a_slow_client_holds_the_tail_before_it_reads_more() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let workflows = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/workflows");
        let args = Cli::try_parse_from([
            "pod",
            "--store",
            db.to_str().unwrap(),
            "--pod-id",
            "tail-pod",
            "--workflows",
            workflows,
        ])
        .unwrap()
        .pod;
        let pod = crate::pod::build(args, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        let (run, _) = pod
            .store
            .create_run(crate::engine::store::NewRun {
                workflow: "slow_stream".into(),
                lane: "sync".into(),
                input: serde_json::json!({}),
                late_completion: Default::default(),
                idempotency_key: None,
                deadline_at_ms: None,
                heartbeat_timeout_ms: None,
                retries_left: 0,
            })
            .await
            .unwrap();
        // Chunks written as a run's owner would, without one.
        let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let put = |seq: i64, data: String| {
            sqlx::query(
                "INSERT INTO chunks (run_id, epoch, seq, data, at) VALUES ($1, $2, $3, $4, 0)",
            )
            .bind(run.id.clone())
            .bind(run.epoch)
            .bind(seq)
            .bind(data)
            .execute(&raw)
        };
        for seq in 0..600 {
            put(seq, format!("c{seq}")).await.unwrap();
        }
        let (tx, mut rx) = mpsc::channel(4);
        let changes = pod.engine.changes();
        let tail = tokio::spawn(tail(
            pod.clone(),
            run.id.clone(),
            Cursor::START,
            tx,
            Some(FirstRead {
                run: run.clone(),
                page: None,
                changes,
            }),
        ));
        // The channel fills: the tail now waits for room.
        while rx.len() < 4 {
            tokio::task::yield_now().await;
        }
        sqlx::query("DELETE FROM chunks WHERE run_id = $1 AND seq >= 4")
            .bind(&run.id)
            .execute(&raw)
            .await
            .unwrap();
        put(10_000, "after".into()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let ev = rx.recv().await.unwrap().unwrap();
            got.push(format!("{ev:?}"));
        }
        for (i, ev) in got.iter().take(4).enumerate() {
            assert!(ev.contains(&format!("c{i}")), "chunk {i} first: {ev}");
        }
        assert!(
            got[4].contains("after"),
            "the tail read nothing past the channel's room: {}",
            got[4]
        );
        drop(rx);
        tail.await.unwrap();
    }

    #[test]
    fn cursors_parse_strictly() {
        assert_eq!(Cursor::parse("2:7"), Some(Cursor { epoch: 2, seq: 7 }));
        assert_eq!(Cursor::parse(" 1:-1 "), Some(Cursor { epoch: 1, seq: -1 }));
        for bad in ["", "2", "a:1", "1:b", "-1:0", "1:-2", "1:2:3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
