//! `vigil console`: the live terminal console an on-call engineer keeps open.
//!
//! Shape (see `docs/console.md`):
//! - [`App`] holds the state; [`App::update`] applies one [`Action`] without
//!   I/O; [`draw`] renders a frame as a pure function of the app.
//! - One [`Event`] channel feeds the loop: terminal input, ticks and signals
//!   from the input task; store rounds, pod scrapes and cluster state from
//!   the collectors; results from the effect executor.
//! - Side effects (switch flips, chaos signals, what to read) leave `update`
//!   as [`Effect`]s and go to the executor or the collectors.
//! - The loop drains events in batches and draws at most every 16 ms.
//! - Logs go to a file, never to the screen.

mod app;
mod collect;
mod config;
mod data;
mod gray;
mod keys;
mod metrics;
mod theme;
mod views;

pub use app::{
    Activity, App, ChaosOp, Detail, Dialog, Effect, Level, Mode, OwnView, Scrape, StreamLine,
};
pub use collect::{QueryCount, RoundState, StoreSlot, chaos_pods, round};
pub use config::{Config, ConfigError, ConfigFile, default_path};
pub use data::{
    ChaosPod, DetailData, MetricsUpdate, PodScrape, StoreData, StoreUpdate, View, Watch,
};
pub use gray::{Buckets, RoundTrips, histogram_quantile, lease_text};
pub use keys::{Action, Key, Keymap};
pub use metrics::{PodMetrics, PoolGauge, parse as parse_metrics};
pub use theme::{Role, Theme};
pub use views::{age, draw, sparkline, utc_time};

use crate::cluster::Cluster;
use crate::engine::switches;
use anyhow::{Context, Result};
use crossterm::event::EventStream;
use futures::StreamExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Examples:
  # watch the embedded store; scrape the pods its registry lists
  vigil console --store data/vigil.db
  # look, touch nothing: a production cluster, two pods' metrics
  vigil console --read-only --store postgres://ops@db:5432/vigil \\
      --pods http://10.0.0.7:7700,http://10.0.0.8:7700")]
pub struct ConsoleArgs {
    /// Store: a SQLite file path, sqlite://PATH, or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "VIGIL_STORE", default_value = "data/vigil.db")]
    pub store: String,
    /// Pods to scrape for /metrics (comma-separated URLs). Default: every
    /// pod the registry lists with an address.
    #[arg(long, env = "VIGIL_PODS", value_delimiter = ',')]
    pub pods: Vec<String>,
    /// Disable every action (switch flips, chaos) in every view.
    #[arg(long, env = "VIGIL_CONSOLE_READ_ONLY")]
    pub read_only: bool,
    /// Config file (default: $XDG_CONFIG_HOME/vigil/console.toml when it exists).
    #[arg(long, env = "VIGIL_CONSOLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store refresh interval in ms (overrides the config's refresh_ms).
    #[arg(long, env = "VIGIL_CONSOLE_REFRESH_MS")]
    pub refresh_ms: Option<u64>,
    /// Log file (the screen is the console's): default
    /// $XDG_STATE_HOME/vigil/console.log (~/.local/state/vigil/console.log).
    #[arg(long, env = "VIGIL_CONSOLE_LOG")]
    pub log_file: Option<PathBuf>,
}

/// Everything that reaches the loop.
#[derive(Debug)]
pub enum Event {
    Tick,
    Term(crossterm::event::Event),
    Store(Box<StoreUpdate>),
    Metrics(Box<MetricsUpdate>),
    Chaos(Vec<ChaosPod>),
    Done {
        ok: bool,
        message: String,
    },
    /// SIGTERM, SIGINT or SIGHUP: leave cleanly.
    Signal(&'static str),
}

/// A console to run: where to read, what it may do, and (for the demo) the
/// cluster it owns.
pub struct Session {
    pub store_target: String,
    pub slot: Arc<StoreSlot>,
    pub pods: Vec<String>,
    pub config: Config,
    pub cluster: Option<Arc<Mutex<Cluster>>>,
    /// Open this run's detail first.
    pub open_run: Option<String>,
    /// A first status line.
    pub banner: Option<String>,
}

pub async fn run(args: ConsoleArgs) -> Result<ExitCode> {
    refuse_missing_sqlite(&args.store)?;
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(ms) = args.refresh_ms {
        // Validate the override with the same bounds as the file.
        Config::from_file(
            ConfigFile {
                refresh_ms: ms,
                ..ConfigFile::default()
            },
            None,
        )?;
        config.refresh = Duration::from_millis(ms);
    }
    config.read_only |= args.read_only;
    let log = args.log_file.clone().unwrap_or_else(default_log_path);
    init_file_logging(&log)?;
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!(
            "vigil console needs a terminal on stdout (for a report, use `vigil runs` or `vigil run ID`)"
        );
    }
    let session = Session {
        slot: StoreSlot::new(&args.store),
        store_target: args.store,
        pods: args.pods,
        config,
        cluster: None,
        open_run: None,
        banner: Some(format!("logs: {}", log.display())),
    };
    run_session(session, CancellationToken::new()).await?;
    Ok(ExitCode::SUCCESS)
}

/// A console reads; it must not create an empty SQLite store at a mistyped
/// path. (A file that is not a Vigil store, or a PostgreSQL database without
/// Vigil's tables, is refused by the store slot, on the screen.)
fn refuse_missing_sqlite(target: &str) -> Result<()> {
    if target.contains("://") && !target.starts_with("sqlite://") {
        return Ok(());
    }
    let path = target.strip_prefix("sqlite://").unwrap_or(target);
    if !std::path::Path::new(path).exists() {
        anyhow::bail!(
            "no Vigil store at {path} (nothing was created; the console reads an existing \
             store: start pods with `vigil pod --store {path}` or run `vigil demo`)"
        );
    }
    Ok(())
}

pub fn default_log_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("vigil").join("console.log")
}

/// Send tracing to `path` (appending), filtered by VIGIL_LOG (default info).
pub fn init_file_logging(path: &std::path::Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the console log {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("vigil=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Build the app a session starts with.
pub fn initial_app(s: &Session) -> App {
    let mut app = App::new(
        s.store_target.clone(),
        s.config.keys.clone(),
        s.config.theme.clone(),
    );
    app.read_only = s.config.read_only;
    app.events_limit = s.config.events_limit;
    app.pods_given = !s.pods.is_empty();
    app.has_chaos = s.cluster.is_some();
    app.now_ms = collect::now_ms();
    if let Some(id) = &s.open_run {
        app.open_run(id);
    }
    if let Some(b) = &s.banner {
        app.update(Action::Tick(app.now_ms));
        // Dated 20 s ahead: a banner stays up longer than the usual 8 s.
        app.status = Some(app::Status {
            text: b.clone(),
            level: Level::Info,
            at_ms: app.now_ms + 20_000,
        });
    }
    app
}

/// Run a console until the user quits, a signal arrives or `cancel` fires.
/// Restores the terminal on every path out (and on panic, via ratatui's hook).
pub async fn run_session(s: Session, cancel: CancellationToken) -> Result<()> {
    let mut app = initial_app(&s);
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let (watch_tx, watch_rx) = watch::channel(app.watch());
    let (pods_tx, pods_rx) = watch::channel(Vec::new());
    let poke = Arc::new(Notify::new());
    let stop = cancel.child_token();
    let (effect_tx, effect_rx) = mpsc::channel::<Effect>(64);

    let mut tasks = vec![
        spawn_input(tx.clone(), stop.clone()),
        collect::spawn_store_collector(
            s.slot.clone(),
            watch_rx,
            poke.clone(),
            s.config.refresh,
            s.config.runs_limit,
            s.config.events_limit as i64,
            pods_tx,
            tx.clone(),
            stop.clone(),
        ),
        collect::spawn_metrics_collector(
            s.pods.clone(),
            pods_rx,
            s.config.metrics,
            tx.clone(),
            stop.clone(),
        ),
        spawn_executor(
            effect_rx,
            s.slot.clone(),
            s.cluster.clone(),
            s.config.read_only,
            s.config.who.clone(),
            tx.clone(),
        ),
    ];
    if let Some(c) = &s.cluster {
        tasks.push(collect::spawn_chaos_watcher(
            c.clone(),
            Duration::from_millis(250),
            tx.clone(),
            stop.clone(),
        ));
    }
    drop(tx);

    let mut terminal = ratatui::init();
    if let Ok(size) = terminal.size() {
        app.update(Action::Resize(size.width, size.height));
    }
    let frame_budget = Duration::from_millis(16);
    let mut last_draw = Instant::now() - frame_budget;
    let result: Result<()> = async {
        loop {
            let wait = frame_budget.saturating_sub(last_draw.elapsed());
            let first = tokio::select! {
                ev = rx.recv() => match ev { Some(ev) => Some(ev), None => break },
                _ = tokio::time::sleep(wait), if app.dirty => None,
            };
            // Drain what is queued: one draw for the whole batch.
            let mut batch: Vec<Event> = first.into_iter().collect();
            while let Ok(ev) = rx.try_recv() {
                batch.push(ev);
            }
            for ev in batch {
                handle(&mut app, ev);
            }
            for eff in app.drain_effects() {
                match eff {
                    Effect::Watch(w) => {
                        let _ = watch_tx.send(w);
                    }
                    Effect::RefreshNow => poke.notify_one(),
                    Effect::Copy { text } => {
                        // OSC 52: the terminal (or tmux, with set-clipboard)
                        // puts it on the clipboard, also over ssh.
                        use base64::Engine as _;
                        use std::io::Write as _;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(text);
                        let mut out = std::io::stdout();
                        let _ = write!(out, "\x1b]52;c;{b64}\x07");
                        let _ = out.flush();
                    }
                    other => {
                        if effect_tx.send(other).await.is_err() {
                            tracing::error!("effect executor is gone");
                        }
                    }
                }
            }
            if app.quit {
                break;
            }
            if app.dirty && last_draw.elapsed() >= frame_budget {
                terminal
                    .draw(|f| draw(f, &app))
                    .context("drawing the console")?;
                app.dirty = false;
                last_draw = Instant::now();
            }
        }
        Ok(())
    }
    .await;
    ratatui::restore();
    stop.cancel();
    drop(effect_tx);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    result
}

fn handle(app: &mut App, ev: Event) {
    match ev {
        Event::Tick => app.update(Action::Tick(collect::now_ms())),
        Event::Term(crossterm::event::Event::Key(k)) => app.on_key(k),
        Event::Term(crossterm::event::Event::Resize(w, h)) => app.update(Action::Resize(w, h)),
        Event::Term(_) => app.dirty = true,
        Event::Store(u) => app.apply_store(*u),
        Event::Metrics(u) => app.apply_metrics(*u),
        Event::Chaos(p) => app.apply_chaos(p),
        Event::Done { ok, message } => app.effect_done(ok, message),
        Event::Signal(name) => {
            tracing::info!(signal = name, "leaving on a signal");
            app.update(Action::Quit);
        }
    }
}

/// Terminal input, a clock tick and signals, into the one channel.
fn spawn_input(tx: mpsc::Sender<Event>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut input = EventStream::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => Event::Tick,
                e = input.next() => match e {
                    Some(Ok(e)) => Event::Term(e),
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "terminal input failed");
                        Event::Signal("input error")
                    }
                    None => Event::Signal("input closed"),
                },
                _ = term.recv() => Event::Signal("SIGTERM"),
                _ = int.recv() => Event::Signal("SIGINT"),
                _ = hup.recv() => Event::Signal("SIGHUP"),
            };
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    })
}

/// Carry out mutations. Read-only is checked here again, whatever `update`
/// decided: the last line of defence before the store or a signal.
fn spawn_executor(
    mut rx: mpsc::Receiver<Effect>,
    slot: Arc<StoreSlot>,
    cluster: Option<Arc<Mutex<Cluster>>>,
    read_only: bool,
    who: String,
    tx: mpsc::Sender<Event>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(eff) = rx.recv().await {
            let (ok, message) = if read_only && eff.is_mutation() {
                (false, "read-only: refused".to_owned())
            } else {
                match execute(&eff, &slot, cluster.as_ref(), &who).await {
                    Ok(m) => (true, m),
                    Err(e) => (false, crate::errors::report(&e)),
                }
            };
            tracing::info!(?eff, ok, %message, "effect");
            if tx.send(Event::Done { ok, message }).await.is_err() {
                break;
            }
        }
    })
}

async fn execute(
    eff: &Effect,
    slot: &StoreSlot,
    cluster: Option<&Arc<Mutex<Cluster>>>,
    who: &str,
) -> Result<String> {
    match eff {
        Effect::SetSwitch {
            name,
            enabled,
            reason,
        } => {
            let store = slot.get().await.map_err(anyhow::Error::msg)?;
            let a = tokio::time::timeout(
                Duration::from_secs(10),
                switches::set(store.as_ref(), name, *enabled, who, reason),
            )
            .await
            .with_context(|| format!("setting {name}: the store did not answer in 10 s"))?
            .with_context(|| format!("setting {name}"))?;
            Ok(format!(
                "{name} is now {} (audited: by {who}: {reason}); pods follow within a second",
                if a.new { "on" } else { "off" }
            ))
        }
        Effect::Chaos { op, pod } => {
            let cluster = cluster.context("no cluster: chaos actions need `vigil demo`")?;
            let mut c = cluster.lock().await;
            match op {
                ChaosOp::Kill => c.kill(pod).await.map(|_| format!("{pod} SIGKILLed")),
                ChaosOp::Terminate => {
                    c.terminate(pod, Duration::from_secs(10))
                        .await
                        .map(|took| match took {
                            Some(d) => format!("{pod} terminated (SIGTERM) in {d:.1?}"),
                            None => format!("{pod} ignored SIGTERM for 10 s: SIGKILLed"),
                        })
                }
                ChaosOp::Pause => c
                    .pause(pod)
                    .await
                    .map(|_| format!("{pod} paused (SIGSTOP)")),
                ChaosOp::Resume => c
                    .resume(pod)
                    .await
                    .map(|_| format!("{pod} resumed (SIGCONT)")),
                ChaosOp::Start => c
                    .start_pod(pod, &[])
                    .await
                    .map(|p| format!("{pod} started again at {}", p.url)),
            }
        }
        Effect::CancelRun { run_id } => {
            let store = slot.get().await.map_err(anyhow::Error::msg)?;
            let ctx = crate::engine::store::TransitionCtx {
                expected_epoch: None,
                pod: None,
                reason: format!("cancelled from the console by {who}"),
                error: Some("cancelled".into()),
            };
            let t = tokio::time::timeout(
                Duration::from_secs(10),
                store.transition(run_id, crate::engine::run::RunState::Cancelled, &ctx),
            )
            .await
            .with_context(|| format!("cancelling {run_id}: the store did not answer in 10 s"))?
            .with_context(|| format!("cancelling {run_id}"))?;
            Ok(format!(
                "run {run_id} cancelled (was {}); its owner stops it within a second",
                t.from
            ))
        }
        Effect::Watch(_) | Effect::RefreshNow | Effect::Copy { .. } => Ok(String::new()),
    }
}
