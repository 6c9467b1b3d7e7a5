//! `vigil pod`: one engine pod. Several pods share one store.
//!
//! A pod claims pending runs (compare-and-set on owner NULL), resumes the
//! runs its own previous incarnation owned (same stable pod id), drives each
//! with the engine, and serves the HTTP API. On SIGTERM it stops taking work,
//! stops its runs' local machinery *without* touching their ownership (so
//! the recovery path finds them exactly as after a SIGKILL) and exits within
//! a bounded time.

pub mod api;
mod health;
mod hooks;
pub mod stream;
pub mod wire;

use crate::engine::janitor::Janitor;
use crate::engine::lanes::Lanes;
use crate::engine::reaper::Reaper;
use crate::engine::store::{self, Store};
use crate::engine::switches::Switches;
use crate::engine::worker::{Worker, WorkerConfig};
use crate::engine::workflow::WorkflowRegistry;
use crate::engine::{Engine, EngineConfig, dispatch, recovery};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a pod checks that it still owns the runs it drives.
const OWNERSHIP_WATCH_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Examples:
  # one pod on the embedded store, on the default address
  vigil pod --store data/vigil.db --pod-id pod-1
  # a production pod on PostgreSQL, changes guarded by a token
  vigil pod --production --store postgres://vigil@db:5432/vigil --pod-id pod-a \\
      --listen 0.0.0.0:7700 --token-file /run/secrets/vigil-token")]
pub struct PodArgs {
    /// Store: a SQLite file path, sqlite://PATH, or postgres://USER@HOST:PORT/DB; created
    /// (file, directory, Vigil's tables) if missing, and migrated.
    #[arg(long, env = "VIGIL_STORE", default_value = "data/vigil.db")]
    pub store: String,
    /// Address of the HTTP API: IP:PORT, or HOST:PORT resolved once at
    /// start (localhost:7700).
    #[arg(long, env = "VIGIL_LISTEN", default_value = "127.0.0.1:7700", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Stable identity of this pod. Required in production: a random id per
    /// restart would strand this pod's runs.
    #[arg(long, env = "VIGIL_POD_ID")]
    pub pod_id: Option<String>,
    /// Production mode: refuse to start without --pod-id (also VIGIL_ENV=production).
    #[arg(long)]
    pub production: bool,
    /// Directory of workflow definitions.
    #[arg(long, env = "VIGIL_WORKFLOWS", default_value = "fixtures/workflows")]
    pub workflows: PathBuf,
    /// Most runs this pod drives at once.
    #[arg(long, env = "VIGIL_MAX_RUNS", default_value_t = 64)]
    pub max_runs: usize,
    /// How often the dispatcher looks for pending runs (ms).
    #[arg(long, env = "VIGIL_DISPATCH_INTERVAL_MS", default_value_t = 100)]
    pub dispatch_interval_ms: u64,
    /// Bound on graceful shutdown (ms): after it, remaining tasks are dropped.
    #[arg(long, env = "VIGIL_SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,
    /// Lane config (TOML, `[lanes.NAME]` tables) over the built-in lanes.
    #[arg(long, env = "VIGIL_LANES")]
    pub lanes: Option<PathBuf>,
    /// Liveness timeout (ms): the SQLite lease TTL, PostgreSQL's idle_session_timeout
    /// on the liveness connection. Renewed every fifth of it.
    #[arg(long, env = "VIGIL_LIVENESS_TIMEOUT_MS", default_value_t = 2000)]
    pub liveness_timeout_ms: u64,
    /// How often this pod probes its peers and looks for orphaned runs (ms).
    #[arg(long, env = "VIGIL_PROBE_INTERVAL_MS", default_value_t = 200)]
    pub probe_interval_ms: u64,
    /// Client-side deadline of every store call (ms): a half-open or frozen
    /// link fails the call instead of hanging the pod (the liveness renew
    /// has its own, ten liveness timeouts and at least 10 s).
    #[arg(long, env = "VIGIL_STORE_DEADLINE_MS", default_value_t = 10_000)]
    pub store_deadline_ms: u64,
    /// Connections of the PostgreSQL data pool (checkpoints, chunks, reads;
    /// liveness, recovery and claims have a pool of their own). A slow
    /// link needs more for the same work: each holds its connection for a
    /// round trip.
    #[arg(long, env = "VIGIL_STORE_POOL_SIZE", default_value_t = crate::engine::store::postgres::DATA_POOL,
        value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub store_pool_size: u32,
    /// How often the stale-run reaper runs (ms).
    #[arg(long, env = "VIGIL_REAPER_INTERVAL_MS", default_value_t = 500)]
    pub reaper_interval_ms: u64,
    /// How far past its deadline a run may be before the reaper times it out (ms).
    #[arg(long, env = "VIGIL_DEADLINE_GRACE_MS", default_value_t = 2000)]
    pub deadline_grace_ms: u64,
    /// Default timeout of `http` steps that set no `timeout_ms` (ms): the
    /// whole request, connect to last byte.
    #[arg(long, env = "VIGIL_HTTP_STEP_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_step_timeout_ms: u64,
    /// What a step that sets no `timeout_ms` gets over its own duration (a
    /// sleep's ms, an emit's interval between chunks), and the whole bound
    /// of the instant kinds (ms).
    #[arg(long, env = "VIGIL_STEP_TIMEOUT_SLACK_MS", default_value_t = 30_000)]
    pub step_timeout_slack_ms: u64,
    /// How often the janitor runs (ms).
    #[arg(long, env = "VIGIL_JANITOR_INTERVAL_MS", default_value_t = 1000)]
    pub janitor_interval_ms: u64,
    /// An orphaned run nobody resumed for this long is marked lost (ms).
    #[arg(long, env = "VIGIL_LOST_AFTER_MS", default_value_t = 300_000)]
    pub lost_after_ms: u64,
    /// Serve fault-injection endpoints under /v1/chaos (tests and chaos runs only).
    #[arg(long, env = "VIGIL_CHAOS_HOOKS")]
    pub chaos_hooks: bool,
    /// Chaos testing only: when this pod loses a run's ownership or its own
    /// liveness, keep the run's machinery going, so the store's epoch fence
    /// is the only thing between a zombie and its successor's data.
    #[arg(long, env = "VIGIL_CHAOS_KEEP_ZOMBIE_RUNS")]
    pub chaos_keep_zombie_runs: bool,
    /// Chaos testing only: the runner's witness (http://HOST:PORT), called by
    /// `http` steps whose url starts with `{{vigil.witness}}`.
    #[arg(long, env = "VIGIL_WITNESS_URL")]
    pub witness_url: Option<String>,
    /// Require `Authorization: Bearer <token>` on every change (submit,
    /// cancel, events, switches, chaos hooks); the token is this file's
    /// contents, trimmed. Reads stay open.
    #[arg(long, env = "VIGIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Exit (abruptly, like a crash) when this process is gone: a cluster
    /// runner that dies, even by SIGKILL, leaves no pods behind.
    #[arg(long, env = "VIGIL_PARENT_PID")]
    pub parent_pid: Option<i32>,
}

impl PodArgs {
    fn liveness_timeout(&self) -> Duration {
        Duration::from_millis(self.liveness_timeout_ms.max(200))
    }
}

/// One pod: its engine and worker (the runs it drives and the loops that
/// feed it, all in `engine/`), and what its HTTP API needs.
#[derive(Debug)]
pub struct Pod {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub worker: Arc<Worker>,
    pub pod_id: String,
    pub args: PodArgs,
    /// The bearer token changes need, when `--token-file` is given.
    pub token: Option<String>,
    /// Fires when the pod stops: no new work, runs abandoned in place.
    pub shutdown: CancellationToken,
}

/// Read a bearer token file: its contents, trimmed; empty is an error.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(t)
}

/// Resolve the pod id: stable identity, required in production.
pub fn resolve_pod_id(given: Option<&str>, production: bool) -> Result<String> {
    match given.map(str::trim) {
        Some(id) if !id.is_empty() => {
            if id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                bail!("--pod-id {id:?}: use at most 128 printable characters without spaces");
            }
            Ok(id.to_owned())
        }
        _ if production => bail!(
            "refusing to start: production mode needs a stable pod id. Set --pod-id or \
             VIGIL_POD_ID (e.g. the StatefulSet pod name); a random id per restart would \
             strand this pod's runs"
        ),
        _ => {
            let id = format!("pod-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
            tracing::warn!(pod_id = %id, "no --pod-id given: generated one (not stable across restarts; required with --production)");
            Ok(id)
        }
    }
}

impl Pod {
    pub fn runs_active(&self) -> usize {
        self.worker.runs_active()
    }

    pub fn is_stopping(&self) -> bool {
        self.worker.is_stopping()
    }

    /// Wake the dispatcher now (a run was just submitted here).
    pub fn nudge(&self) {
        self.worker.nudge();
    }

    /// Chaos hook: see [`Worker::stall`].
    pub fn stall(&self, run_id: &str) -> bool {
        self.worker.stall(run_id)
    }
}

/// Build a pod from its arguments: open the store, load workflows, read the
/// switches. Fails with a message naming what is wrong.
pub async fn build(args: PodArgs, shutdown: CancellationToken) -> Result<Arc<Pod>> {
    let production = args.production
        || std::env::var("VIGIL_ENV").is_ok_and(|v| v.eq_ignore_ascii_case("production"));
    let pod_id = resolve_pod_id(args.pod_id.as_deref(), production)?;
    let token = args.token_file.as_deref().map(read_token).transpose()?;
    let workflows = WorkflowRegistry::load_dir(&args.workflows)
        .with_context(|| format!("loading workflows from {}", args.workflows.display()))?;
    let store = store::open_pod(&args.store, args.store_pool_size)
        .await
        .context("opening the store")?;
    let store = crate::engine::store::deadline::Deadlined::wrap(
        store,
        Duration::from_millis(args.store_deadline_ms.max(1)),
    );
    let lanes = match &args.lanes {
        Some(f) => Lanes::load(f)?,
        None => Lanes::builtin(),
    };
    lanes.check(&workflows)?;
    let switches = Switches::from_env()?;
    switches
        .refresh(store.as_ref())
        .await
        .context("reading kill switches")?;
    switches.spawn_watcher(store.clone(), shutdown.clone());
    warn_capped_deadlines(store.as_ref(), &workflows).await;
    let engine = Arc::new(
        Engine::new(
            store.clone(),
            Arc::new(workflows),
            switches,
            // The store's clock, not this host's: deadlines are compared
            // with times other pods wrote.
            store.clock().clone(),
            EngineConfig {
                witness_url: args.witness_url.clone(),
                step_timeouts: crate::engine::workflow::StepTimeouts {
                    http: Duration::from_millis(args.http_step_timeout_ms.max(1)),
                    slack: Duration::from_millis(args.step_timeout_slack_ms.max(1)),
                },
                // Held from the join on; renewed by the recovery loop.
                lease: Arc::new(crate::engine::lease::Lease::new(args.liveness_timeout())),
                ..EngineConfig::new(pod_id.clone())
            },
        )
        .with_lanes(lanes),
    );
    let worker = Arc::new(Worker::new(
        engine.clone(),
        WorkerConfig {
            max_runs: args.max_runs,
            keep_zombie_runs: args.chaos_keep_zombie_runs,
        },
        shutdown.clone(),
    ));
    Ok(Arc::new(Pod {
        engine,
        store,
        worker,
        pod_id,
        args,
        token,
        shutdown,
    }))
}

/// Say at startup which workflows ask for a deadline longer than the store's
/// `runs.max_deadline_ms` (their runs get the maximum; each submit says so too).
async fn warn_capped_deadlines(store: &dyn Store, workflows: &WorkflowRegistry) {
    use crate::engine::settings::{self, RUNS_MAX_DEADLINE_MS};
    let max = match settings::get(store, RUNS_MAX_DEADLINE_MS).await {
        Ok(max) => max,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read {RUNS_MAX_DEADLINE_MS}");
            return;
        }
    };
    for name in workflows.names() {
        let Ok(wf) = workflows.get(name) else {
            continue;
        };
        if let Some(d) = wf
            .deadline_ms
            .filter(|d| i64::try_from(*d).unwrap_or(i64::MAX) > max)
        {
            tracing::warn!(
                workflow = %wf.name,
                deadline_ms = d,
                max_ms = max,
                "the workflow's deadline_ms exceeds {RUNS_MAX_DEADLINE_MS}: its runs get the maximum"
            );
        }
    }
}

/// Run a pod until `shutdown` fires, then stop within the grace bound.
pub async fn serve(args: PodArgs, shutdown: CancellationToken) -> Result<()> {
    let listen = args.listen;
    let pod = build(args, shutdown.clone()).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    tracing::info!(pod_id = %pod.pod_id, addr = %local_addr, store = pod.store.backend(), "pod up");
    let identity = crate::engine::store::liveness::Identity {
        pod_id: pod.pod_id.clone(),
        incarnation: uuid::Uuid::now_v7().to_string(),
        addr: Some(format!("http://{local_addr}")),
        timeout: pod.args.liveness_timeout(),
    };
    let join_sent = std::time::Instant::now();
    let membership = pod
        .store
        .liveness()
        .join(&identity, identity.timeout * 3)
        .await
        .context("joining the pod registry")?;
    // The join wrote our row and took our lock after this moment.
    pod.engine.config.lease.renewed(join_sent);
    // One line on stdout that scripts (and the chaos runner) wait for.
    println!("vigil pod {} listening on http://{local_addr}", pod.pod_id);

    let worker = pod.worker.clone();
    worker.startup_sweep().await.context("startup sweep")?;
    let ms = Duration::from_millis;
    let loops = TaskTracker::new();
    loops.spawn(dispatch::run(
        worker.clone(),
        ms(pod.args.dispatch_interval_ms.max(10)),
    ));
    loops.spawn(worker.clone().ownership_watch(OWNERSHIP_WATCH_INTERVAL));
    loops.spawn(
        Reaper::new(pod.engine.clone(), ms(pod.args.deadline_grace_ms))
            .run(ms(pod.args.reaper_interval_ms.max(10)), shutdown.clone()),
    );
    loops.spawn(
        Janitor::new(pod.engine.clone(), ms(pod.args.lost_after_ms))
            .run(ms(pod.args.janitor_interval_ms.max(10)), shutdown.clone()),
    );
    loops.close();
    let liveness_stop = CancellationToken::new();
    let liveness = tokio::spawn(recovery::run(
        worker.clone(),
        membership,
        identity,
        ms(pod.args.probe_interval_ms),
        liveness_stop.clone(),
    ));

    if let Some(parent) = pod.args.parent_pid {
        tokio::spawn(async move {
            let pid = nix::unistd::Pid::from_raw(parent);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if nix::sys::signal::kill(pid, None).is_err() {
                    tracing::error!(parent, "parent process is gone: exiting");
                    std::process::exit(70);
                }
            }
        });
    }
    let app = api::router(pod.clone());
    // Small responses and SSE events must not sit behind Nagle's algorithm
    // waiting for a delayed ACK (40 ms a response on Linux loopback).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server =
        // The peer's address: an audited change without a `who` names it.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = server.await;

    // Stop taking work; leave every run exactly where a crash would.
    worker.stop();
    let grace = Duration::from_millis(pod.args.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        worker.drained().await;
        loops.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace elapsed with tasks still running; exiting anyway"
        );
    }
    // Only now, with our runs stopped, give up liveness: peers recover our
    // runs by the same path as after a SIGKILL.
    liveness_stop.cancel();
    match liveness.await {
        Ok(Some(m)) => {
            if let Err(e) = m.leave().await {
                tracing::warn!(error = %e, "leaving the registry failed; peers will find us dead anyway");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "liveness loop ended abnormally"),
    }
    tracing::info!(pod_id = %pod.pod_id, "pod stopped; its runs keep their owner for recovery");
    served.context("HTTP server")?;
    Ok(())
}

/// Cancel `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        token.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_refuses_a_missing_pod_id() {
        let err = resolve_pod_id(None, true).unwrap_err().to_string();
        assert!(
            err.contains("--pod-id") && err.contains("VIGIL_POD_ID"),
            "{err}"
        );
        assert!(resolve_pod_id(Some("  "), true).is_err());
        assert_eq!(resolve_pod_id(Some("web-0"), true).unwrap(), "web-0");
        assert!(resolve_pod_id(None, false).unwrap().starts_with("pod-"));
        assert!(resolve_pod_id(Some("a b"), false).is_err());
    }
}

/// `--listen`: an IP and port, or a host name and port resolved now (the
/// first address it has); a URL or a bare port gets a hint.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let hint = "expected HOST:PORT, like 127.0.0.1:7700, 0.0.0.0:7700 or localhost:7700";
    if s.contains("://") {
        return Err(format!("{hint} (an address to listen on, not a URL)"));
    }
    if s.parse::<u16>().is_ok() {
        return Err(format!("{hint} (a port alone: try 127.0.0.1:{s})"));
    }
    use std::net::ToSocketAddrs as _;
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s} resolves to no address; {hint}")),
        Err(e) => Err(format!("{e}; {hint}")),
    }
}

#[cfg(test)]
mod listen_tests {
    use super::parse_listen;

    #[test]
    fn listen_takes_addresses_and_host_names_and_hints_at_the_rest() {
        assert_eq!(parse_listen("127.0.0.1:7700").unwrap().port(), 7700);
        let local = parse_listen("localhost:7701").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 7701, "{local}");
        for (bad, says) in [
            ("http://127.0.0.1:7700", "not a URL"),
            ("7700", "try 127.0.0.1:7700"),
            ("localhost", "expected HOST:PORT"),
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
