//! The collectors: tasks that read the store, scrape pods and watch the
//! cluster, each on its own clock, and send what they found into the app's
//! one event channel. None of them ever runs inside the draw loop.

use super::Event;
use super::data::{
    ChaosPod, DetailData, MetricsUpdate, PodScrape, StoreData, StoreUpdate, View, Watch,
};
use crate::client::{ClientError, PodClient};
use crate::cluster::Cluster;
use crate::engine::store::{self, EventCursor, OpsStore, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Bound on one refresh round: past it the round is an error ("store not
/// answering") and the screen shows stale data with its age.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(3);
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The store, opened on first use (and retried while it is unreachable).
#[derive(Debug)]
pub struct StoreSlot {
    target: String,
    cell: OnceCell<Arc<dyn OpsStore>>,
}

impl StoreSlot {
    pub fn new(target: &str) -> Arc<StoreSlot> {
        Arc::new(StoreSlot {
            target: target.to_owned(),
            cell: OnceCell::new(),
        })
    }

    /// An already open store (tests, the demo).
    pub fn with(target: &str, store: Arc<dyn OpsStore>) -> Arc<StoreSlot> {
        Arc::new(StoreSlot {
            target: target.to_owned(),
            cell: OnceCell::new_with(Some(store)),
        })
    }

    pub async fn get(&self) -> Result<Arc<dyn OpsStore>, String> {
        self.cell
            .get_or_try_init(|| async {
                match tokio::time::timeout(OPEN_TIMEOUT, store::ops::open_existing(&self.target))
                    .await
                {
                    Ok(Err(StoreError::NoStore { what, done, .. })) => Err(format!(
                        "{what} ({done}; the console reads an existing store: start vigil pod \
                         against it, or run vigil demo)"
                    )),
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "store at {} did not answer within {OPEN_TIMEOUT:?}",
                        self.target
                    )),
                }
            })
            .await
            .cloned()
    }
}

/// How far the store's clock (the PostgreSQL server's) is from this host's,
/// as last seen by the store collector: ages the console shows compare
/// times the pods wrote on the store's clock, so "now" is on it too.
static STORE_CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Now, on the store's clock (this host's until the store was read).
pub fn now_ms() -> i64 {
    crate::engine::clock::wall_ms()
        .saturating_add(STORE_CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// How many statements the store collector issued: the console's cost.
#[derive(Debug, Default)]
pub struct QueryCount(AtomicU64);

impl QueryCount {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-round state kept by the store collector.
#[derive(Debug, Default)]
pub struct RoundState {
    pub cursor: EventCursor,
    /// (run id, session) of the detail being followed, and its stream cursor.
    pub detail: Option<(String, u64, i64, i64)>,
    /// The epoch up to whose claim the chunks sent are current (None: none
    /// sent yet): a run at a higher epoch needs a reset first.
    pub synced: Option<i64>,
}

/// One refresh round: the always-on queries (pods, active counts, new
/// events) plus what the current view needs. Returns the data and the
/// number of statements issued.
pub async fn round(
    store: &dyn OpsStore,
    w: &Watch,
    st: &mut RoundState,
    runs_limit: i64,
    events_limit: i64,
    queries: &QueryCount,
) -> Result<StoreData, StoreError> {
    let mut d = StoreData {
        backend: store.backend(),
        ..StoreData::default()
    };
    d.pods = store.liveness().pods().await?;
    d.counts = store.console_active_counts().await?;
    let events = store.console_events(&st.cursor, events_limit).await?;
    queries.add(3);
    for e in &events {
        st.cursor.advance(e);
    }
    d.events = events;
    match &w.run {
        Some((asked, session)) => {
            // `:run` takes a prefix; a run not loaded in the list is
            // resolved here (the detail stays keyed by what was asked).
            let run = match crate::engine::store::resolve_run_id(store, asked).await? {
                crate::engine::store::IdMatch::One(run) => Some(*run),
                _ => None,
            };
            let resolved = run.as_ref().map_or_else(|| asked.clone(), |r| r.id.clone());
            let run_id = &resolved;
            let restart = !matches!(&st.detail, Some((id, s, _, _)) if id == asked && s == session);
            if restart {
                st.detail = Some((asked.clone(), *session, -1, -1));
                st.synced = None;
            }
            let (epoch, seq) = match &st.detail {
                Some((_, _, e, s)) => (*e, *s),
                None => (-1, -1),
            };
            let steps = store.steps(run_id).await?;
            let transitions = store.transitions(run_id).await?;
            let claims = store.claims(run_id).await?;
            let mut reset = None;
            if let (Some(r), Some(s)) = (&run, st.synced)
                && r.epoch > s
            {
                reset = Some((r.epoch, store.kept_parts(run_id, r.epoch).await?));
                queries.add(1);
                st.synced = Some(r.epoch);
            }
            let chunks = store.chunks_after(run_id, epoch, seq, 1000).await?;
            queries.add(5);
            if let (None, Some(r), Some(last)) = (st.synced, &run, chunks.last()) {
                st.synced = Some(r.epoch.max(last.epoch));
            }
            if let (Some(last), Some(det)) = (chunks.last(), st.detail.as_mut()) {
                det.2 = last.epoch;
                det.3 = last.seq;
            }
            d.detail = Some(DetailData {
                run_id: asked.clone(),
                session: *session,
                run,
                steps,
                transitions,
                claims,
                reset,
                chunks,
            });
        }
        None => {
            st.detail = None;
            match w.view {
                View::Runs => {
                    d.runs = Some(store.console_runs(runs_limit).await?);
                    queries.add(1);
                }
                View::Switches => {
                    d.switches = Some(store.switches().await?);
                    queries.add(1);
                    if let Some(name) = &w.switch {
                        d.audit = Some((name.clone(), store.switch_audit(name).await?));
                        queries.add(1);
                    }
                }
                View::Pods => {
                    let locks = store.console_liveness_locks().await?;
                    if locks.is_some() {
                        queries.add(1);
                    }
                    d.locks = locks;
                }
                _ => {}
            }
        }
    }
    Ok(d)
}

/// Read the store every `refresh` (or when poked) until cancelled.
#[allow(clippy::too_many_arguments)]
pub fn spawn_store_collector(
    slot: Arc<StoreSlot>,
    mut watch_rx: watch::Receiver<Watch>,
    poke: Arc<Notify>,
    refresh: Duration,
    runs_limit: i64,
    events_limit: i64,
    pods_tx: watch::Sender<Vec<(String, String)>>,
    tx: mpsc::Sender<Event>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let queries = QueryCount::default();
        let mut st = RoundState::default();
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                _ = poke.notified() => {}
                r = watch_rx.changed() => if r.is_err() { break },
            }
            let w = watch_rx.borrow_and_update().clone();
            let started = Instant::now();
            let result = match tokio::time::timeout(ROUND_TIMEOUT, async {
                let store = slot.get().await?;
                STORE_CLOCK_OFFSET_MS.store(
                    store.clock().now_ms() - crate::engine::clock::wall_ms(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                round(
                    store.as_ref(),
                    &w,
                    &mut st,
                    runs_limit,
                    events_limit,
                    &queries,
                )
                .await
                .map_err(|e| e.to_string())
            })
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("store did not answer within {ROUND_TIMEOUT:?}")),
            };
            if let Ok(d) = &result {
                let addrs = d
                    .pods
                    .iter()
                    .filter_map(|p| p.addr.clone().map(|a| (p.pod_id.clone(), a)))
                    .collect::<Vec<_>>();
                pods_tx.send_if_modified(|cur| {
                    if *cur != addrs {
                        *cur = addrs;
                        true
                    } else {
                        false
                    }
                });
            }
            let update = StoreUpdate {
                generation: w.generation,
                at_ms: now_ms(),
                queries: queries.get(),
                took_ms: started.elapsed().as_millis() as i64,
                result,
            };
            if tx.send(Event::Store(Box::new(update))).await.is_err() {
                break;
            }
        }
    })
}

/// Scrape every pod's /metrics every `every`: the pods given with --pods,
/// else those the registry lists with an address.
pub fn spawn_metrics_collector(
    given: Vec<String>,
    pods_rx: watch::Receiver<Vec<(String, String)>>,
    every: Duration,
    tx: mpsc::Sender<Event>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(every.min(Duration::from_secs(2)))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client for /metrics");
                return;
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let targets: Vec<(String, String)> = if given.is_empty() {
                pods_rx.borrow().clone()
            } else {
                given.iter().map(|u| (u.clone(), u.clone())).collect()
            };
            if targets.is_empty() {
                continue;
            }
            let scrapes = futures::future::join_all(targets.into_iter().map(|(pod, url)| {
                let http = http.clone();
                async move {
                    let base = url.trim_end_matches('/');
                    let endpoint = format!("{base}/metrics");
                    let result = async {
                        // The trailing slash keeps `metrics` under the URL's path.
                        let text = PodClient::with_http(&format!("{base}/"), http)
                            .map_err(|e| e.to_string())?
                            .metrics_text()
                            .await
                            .map_err(|e| match e {
                                ClientError::Transport { source, .. } => {
                                    format!("GET {endpoint}: {source}")
                                }
                                ClientError::Api { status, .. } => {
                                    format!("GET {endpoint}: {status}")
                                }
                                other => other.to_string(),
                            })?;
                        super::metrics::parse(&text).map_err(|e| format!("{endpoint}: {e}"))
                    }
                    .await;
                    PodScrape { pod, url, result }
                }
            }))
            .await;
            let update = MetricsUpdate {
                at_ms: now_ms(),
                pods: scrapes,
            };
            if tx.send(Event::Metrics(Box::new(update))).await.is_err() {
                break;
            }
        }
    })
}

/// The cluster's processes, as the Chaos view lists them.
pub fn chaos_pods(c: &Cluster) -> Vec<ChaosPod> {
    c.pods()
        .map(|p| ChaosPod {
            id: p.id.clone(),
            pid: p.pid().map(|p| p.as_raw()),
            state: p.state,
            url: p.url.clone(),
        })
        .collect()
}

/// Report the cluster's processes every `every` (skipping a beat while a
/// chaos action holds the cluster).
pub fn spawn_chaos_watcher(
    cluster: Arc<Mutex<Cluster>>,
    every: Duration,
    tx: mpsc::Sender<Event>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let pods = match cluster.try_lock() {
                Ok(c) => chaos_pods(&c),
                Err(_) => continue,
            };
            if tx.send(Event::Chaos(pods)).await.is_err() {
                break;
            }
        }
    })
}
