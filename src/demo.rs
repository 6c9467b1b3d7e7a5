//! `vigil demo`: the one-command tour, with nothing installed but the binary.
//!
//! Starts a local cluster of real `vigil pod` processes (3 by default) on an
//! embedded SQLite store in a data dir (or `--store postgres://...`), runs a
//! streaming workload, SIGKILLs the owner of a long streamed reply a few
//! seconds in, and opens the console on that run so the death, the claim by
//! a survivor and the resumed stream (with its reset marker) are visible as
//! they happen. Quitting the console stops the cluster cleanly (SIGTERM,
//! then SIGKILL past a bound; the pods also exit if this process dies).
//!
//! Without a terminal (or with `--no-console`) it prints the same story as a
//! narrative and checks what the store proves, exiting 0 only when every
//! run succeeded, exactly one survivor claimed the killed run, and its final
//! stream holds every chunk exactly once and in order.

use crate::client::PodClient;
use crate::cluster::{Cluster, ClusterSpec, PodState};
use crate::console::{Config, Session, StoreSlot};
use crate::engine::run::RunState;
use crate::engine::store::{self, OpsStore, Store};
use anyhow::{Context, Result, bail};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's data: its SQLite store (demo.db, recreated on
    /// each run), its workflows, the pods' logs and the console's log.
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Run on this store instead of <data-dir>/demo.db, e.g. postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "VIGIL_DEMO_STORE")]
    pub store: Option<String>,
    /// Workflow definitions (default: the demo's own, written to <data-dir>/workflows).
    #[arg(long)]
    pub workflows: Option<PathBuf>,
    /// How many pods to start (at least 2: one dies, one recovers).
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// SIGKILL the streaming run's owner this long after its first chunk (ms).
    #[arg(long, default_value_t = 3000)]
    pub kill_after_ms: u64,
    /// Print a narrative instead of opening the console (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    pub no_console: bool,
}

/// The run the demo kills the owner of: long enough to watch.
const DEMO_STREAM: &str = r#"# vigil demo: a long streamed reply whose owner is SIGKILLed mid-stream.
name = "demo_stream"
description = "A chat reply streamed in 60 chunks over about 9 seconds, then a summary with a secret"
lane = "sync"
deadline_ms = 120000
max_retries = 2

[[steps]]
id = "prompt"
kind = "compute"
output = { model = "vigil-small", api_key = "sk-demo-not-a-real-key" }
secret_fields = ["api_key"]

[[steps]]
id = "reply"
kind = "emit"
after = ["prompt"]
chunks = 60
interval_ms = 150
text = "token {i} "

[[steps]]
id = "summary"
kind = "compute"
after = ["prompt", "reply"]
output = { model = "{{prompt.model}}", billed_key = "{{prompt.api_key}}", chunks = "{{reply.chunks}}" }
secret_fields = ["billed_key"]
"#;

const DEMO_CHUNKS: i64 = 60;

/// The demo's workflows, compiled in so that the binary alone is enough.
const WORKFLOWS: &[(&str, &str)] = &[
    ("demo_stream.toml", DEMO_STREAM),
    (
        "chat_reply.toml",
        include_str!("../fixtures/workflows/chat_reply.toml"),
    ),
    (
        "fan_in.toml",
        include_str!("../fixtures/workflows/fan_in.toml"),
    ),
    (
        "slow_stream.toml",
        include_str!("../fixtures/workflows/slow_stream.toml"),
    ),
];

/// Print with the time since the demo started.
struct Narrator {
    t0: Instant,
    on: bool,
}

impl Narrator {
    fn say(&self, msg: impl AsRef<str>) {
        if self.on {
            println!(
                "[{:>5.1}s] {}",
                self.t0.elapsed().as_secs_f64(),
                msg.as_ref()
            );
        }
    }
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.pods < 2 {
        bail!(
            "--pods {}: the demo needs at least 2 (one dies, one recovers)",
            args.pods
        );
    }
    let interactive =
        !args.no_console && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    if interactive {
        crate::console::init_file_logging(&args.data_dir.join("console.log"))?;
    } else {
        crate::logging::init();
    }
    let n = Narrator {
        t0: Instant::now(),
        on: !interactive,
    };

    let target = match &args.store {
        Some(s) => s.clone(),
        None => fresh_sqlite(&args.data_dir.join("demo.db"))?,
    };
    let workflows = match &args.workflows {
        Some(w) => w.clone(),
        None => write_workflows(&args.data_dir.join("workflows"))?,
    };
    // The ops store: the interactive demo opens the console on it.
    let store = store::ops::open(&target)
        .await
        .with_context(|| format!("opening the demo store {target}"))?;
    n.say(format!(
        "store: {} ({}); workflows: {}",
        target,
        store.backend(),
        workflows.display()
    ));

    let spec = ClusterSpec::new(target.clone(), workflows, args.data_dir.join("logs"))?;
    let cluster = Arc::new(Mutex::new(Cluster::new(spec)?));
    let outcome = async {
        let mut urls = Vec::new();
        for i in 1..=args.pods {
            let id = format!("pod-{i}");
            let mut c = cluster.lock().await;
            let p = c.start_pod(&id, &[]).await?;
            n.say(format!(
                "started {id} at {} (log {})",
                p.url,
                p.log.display()
            ));
            urls.push(p.url.clone());
        }
        let ids = submit_workload(&urls).await?;
        n.say(format!(
            "submitted demo_stream {} (60 chunks over ~9 s) and {} more runs (chat_reply, fan_in)",
            short(&ids.stream),
            ids.others.len()
        ));
        if interactive {
            interactive_demo(&args, &target, store.clone(), cluster.clone(), &ids).await
        } else {
            narrative_demo(&args, &n, store.clone(), cluster.clone(), &ids).await
        }
    }
    .await;
    n.say("stopping the cluster (SIGTERM, then SIGKILL after 5 s)");
    cluster.lock().await.shutdown(Duration::from_secs(5)).await;
    match outcome {
        Ok(true) => {
            println!("vigil demo: ok. Inspect the store with `vigil console --store {target}`.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(e) => Err(e),
    }
}

/// Remove a previous demo database and its companions.
fn fresh_sqlite(db: &Path) -> Result<String> {
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        if f.exists() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
        }
    }
    // The pods' liveness locks (one small file per pod id): of the old
    // store's pods, gone with it.
    let locks = PathBuf::from(format!("{}.pods", db.display()));
    if locks.is_dir() {
        std::fs::remove_dir_all(&locks).with_context(|| format!("removing {}", locks.display()))?;
    }
    Ok(db.display().to_string())
}

fn write_workflows(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in WORKFLOWS {
        let f = dir.join(name);
        std::fs::write(&f, text).with_context(|| format!("writing {}", f.display()))?;
    }
    Ok(dir.to_path_buf())
}

struct Workload {
    stream: String,
    others: Vec<String>,
}

async fn submit(url: &str, workflow: &str, input: serde_json::Value) -> Result<String> {
    let client = PodClient::new(url)?;
    let req = crate::pod::wire::SubmitRequest {
        workflow: workflow.to_owned(),
        input,
        idempotency_key: None,
    };
    Ok(client
        .submit(&req)
        .await
        .with_context(|| format!("submitting {workflow} to {url}"))?
        .run
        .id)
}

async fn submit_workload(urls: &[String]) -> Result<Workload> {
    let stream = submit(
        &urls[0],
        "demo_stream",
        serde_json::json!({"prompt": "tell me about durable runs"}),
    )
    .await?;
    let mut others = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        others.push(
            submit(
                url,
                "chat_reply",
                serde_json::json!({"prompt": format!("hello {i}")}),
            )
            .await?,
        );
    }
    others.push(
        submit(
            &urls[urls.len() - 1],
            "fan_in",
            serde_json::json!({"order": 7}),
        )
        .await?,
    );
    Ok(Workload { stream, others })
}

/// Wait until `run_id` streams, then `after` more; SIGKILL its owner.
/// Returns the victim's id.
async fn kill_owner_mid_stream(
    store: &dyn Store,
    cluster: &Mutex<Cluster>,
    run_id: &str,
    after: Duration,
    cancel: &CancellationToken,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = store
            .get_run(run_id)
            .await?
            .context("the demo run vanished")?;
        if run.state.is_terminal() {
            bail!(
                "run {run_id} ended ({}) before it could be interrupted",
                run.state
            );
        }
        if run.state == RunState::Running && !store.chunks(run_id).await?.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("run {run_id} did not start streaming within 30 s (see the pod logs)");
        }
        tokio::select! {
            _ = cancel.cancelled() => bail!("cancelled"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    tokio::select! {
        _ = cancel.cancelled() => bail!("cancelled"),
        _ = tokio::time::sleep(after) => {}
    }
    let run = store
        .get_run(run_id)
        .await?
        .context("the demo run vanished")?;
    let owner = run
        .owner_pod
        .with_context(|| format!("run {run_id} has no owner to kill"))?;
    if run.state.is_terminal() {
        bail!(
            "run {run_id} already ended ({}); use a smaller --kill-after-ms",
            run.state
        );
    }
    cluster.lock().await.kill(&owner).await?;
    Ok(owner)
}

/// A run every ~2 s on a live pod, so the console has something moving.
async fn steady_workload(cluster: Arc<Mutex<Cluster>>, cancel: CancellationToken) {
    for i in 0..300u32 {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(2000)) => {}
        }
        let urls: Vec<String> = {
            let c = cluster.lock().await;
            c.pods()
                .filter(|p| p.state == PodState::Running)
                .map(|p| p.url.clone())
                .collect()
        };
        let Some(url) = urls.get(i as usize % urls.len().max(1)) else {
            continue;
        };
        let wf = if i % 5 == 4 { "fan_in" } else { "chat_reply" };
        if let Err(e) = submit(
            url,
            wf,
            serde_json::json!({"prompt": format!("steady {i}")}),
        )
        .await
        {
            tracing::warn!(error = %e, "demo workload: submit failed");
        }
    }
}

async fn interactive_demo(
    args: &DemoArgs,
    target: &str,
    store: Arc<dyn OpsStore>,
    cluster: Arc<Mutex<Cluster>>,
    ids: &Workload,
) -> Result<bool> {
    let cancel = CancellationToken::new();
    let config = Config::load(None)?;
    let killer = {
        let store = store.clone();
        let cluster = cluster.clone();
        let run_id = ids.stream.clone();
        let after = Duration::from_millis(args.kill_after_ms);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let r = kill_owner_mid_stream(store.as_ref(), &cluster, &run_id, after, &cancel).await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "demo: could not kill the owner mid-stream");
            }
            r
        })
    };
    let workload = tokio::spawn(steady_workload(cluster.clone(), cancel.clone()));
    let session = Session {
        store_target: target.to_owned(),
        slot: StoreSlot::with(target, store.clone()),
        pods: Vec::new(),
        config,
        cluster: Some(cluster.clone()),
        open_run: Some(ids.stream.clone()),
        banner: Some(format!(
            "demo: run {} streams now; its owner gets SIGKILLed {:.1} s in. Watch a survivor \
             claim it and resume (esc: runs · 2: pods · 5: events · ?: help · q: quit)",
            short(&ids.stream),
            args.kill_after_ms as f64 / 1000.0
        )),
    };
    let result = crate::console::run_session(session, cancel.clone()).await;
    cancel.cancel();
    let _ = workload.await;
    let victim = match killer.await {
        Ok(Ok(v)) => Some(v),
        _ => None,
    };
    result?;
    let run = store.get_run(&ids.stream).await?;
    let claims = store.claims(&ids.stream).await?;
    match (victim, run) {
        (Some(v), Some(r)) => {
            let by = claims
                .iter()
                .rev()
                .find(|c| c.from_pod.as_deref() == Some(v.as_str()))
                .map(|c| format!("claimed by {} at epoch {}", c.to_pod, c.epoch))
                .unwrap_or_else(|| "not claimed yet".into());
            println!(
                "demo: {v} was SIGKILLed mid-stream; run {} is {} ({by}).",
                short(&ids.stream),
                r.state
            );
        }
        _ => println!(
            "demo: left before the kill (see {} for details).",
            args.data_dir.join("console.log").display()
        ),
    }
    Ok(true)
}

async fn narrative_demo(
    args: &DemoArgs,
    n: &Narrator,
    store: Arc<dyn Store>,
    cluster: Arc<Mutex<Cluster>>,
    ids: &Workload,
) -> Result<bool> {
    let cancel = CancellationToken::new();
    n.say(format!(
        "waiting for {} to stream, then SIGKILL its owner {} ms later",
        short(&ids.stream),
        args.kill_after_ms
    ));
    let victim = kill_owner_mid_stream(
        store.as_ref(),
        &cluster,
        &ids.stream,
        Duration::from_millis(args.kill_after_ms),
        &cancel,
    )
    .await?;
    let killed_at = crate::engine::clock::wall_ms();
    let streamed = store.chunks(&ids.stream).await?.len();
    n.say(format!(
        "✗ SIGKILLed {victim}, the owner of {}, after {streamed} chunks; the store still says it owns the run",
        short(&ids.stream)
    ));

    // Detection, claim and resume, as the store records them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut found, mut claimed, mut resumed) = (false, None, false);
    loop {
        if !found
            && let Some(d) = store
                .liveness()
                .deaths(50)
                .await?
                .into_iter()
                .find(|d| d.pod_id == victim)
        {
            found = true;
            n.say(format!(
                "{} found {victim} dead {} ms after its last heartbeat (pod_deaths)",
                d.detected_by,
                d.detected_at_ms - d.last_heartbeat_at_ms
            ));
        }
        if claimed.is_none()
            && let Some(c) = store
                .claims(&ids.stream)
                .await?
                .into_iter()
                .find(|c| c.from_pod.as_deref() == Some(victim.as_str()))
        {
            n.say(format!(
                "{} claimed {} from {victim} (compare-and-set on the owner), epoch {}, {} ms after the kill",
                c.to_pod,
                short(&ids.stream),
                c.epoch,
                c.at_ms - killed_at
            ));
            claimed = Some(c);
        }
        if let (Some(c), false) = (&claimed, resumed)
            && store
                .chunks(&ids.stream)
                .await?
                .iter()
                .any(|ch| ch.epoch == c.epoch)
        {
            resumed = true;
            n.say(format!(
                "{} resumed the stream at epoch {}: the dead owner's chunks are purged, attached clients get a reset",
                c.to_pod, c.epoch
            ));
        }
        let all = std::iter::once(&ids.stream).chain(ids.others.iter());
        let mut done = true;
        for id in all {
            if !store
                .get_run(id)
                .await?
                .is_some_and(|r| r.state.is_terminal())
            {
                done = false;
            }
        }
        if done && claimed.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the demo's runs did not all end within 60 s of the kill (death found: {found}, \
                 claimed: {}, resumed: {resumed}); see the pod logs in {}",
                claimed.is_some(),
                args.data_dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the store proves.
    let mut ok = true;
    println!("\nwhat the store proves:");
    for id in std::iter::once(&ids.stream).chain(ids.others.iter()) {
        let Some(r) = store.get_run(id).await? else {
            println!("  {} vanished", short(id));
            ok = false;
            continue;
        };
        if r.state != RunState::Succeeded {
            ok = false;
        }
        let path: Vec<String> = store
            .transitions(id)
            .await?
            .iter()
            .map(|t| format!("{}→{} by {}", t.from, t.to, t.pod.as_deref().unwrap_or("-")))
            .collect();
        println!(
            "  {} {:<11} {:<9} epoch {} owner {}: {}",
            short(id),
            r.workflow,
            r.state,
            r.epoch,
            r.owner_pod.as_deref().unwrap_or("-"),
            path.join(", ")
        );
    }
    let claims = store.claims(&ids.stream).await?;
    let from_victim: Vec<_> = claims
        .iter()
        .filter(|c| c.from_pod.as_deref() == Some(victim.as_str()))
        .collect();
    println!(
        "  claims of {} from {victim}: {} (exactly one survivor must win)",
        short(&ids.stream),
        from_victim.len()
    );
    if from_victim.len() != 1 {
        ok = false;
    }
    let run = store.get_run(&ids.stream).await?.context("run vanished")?;
    let chunks = store.chunks(&ids.stream).await?;
    let final_epoch: Vec<i64> = chunks
        .iter()
        .filter(|c| c.epoch == run.epoch)
        .map(|c| c.seq)
        .collect();
    let in_order = final_epoch.iter().copied().eq(0..DEMO_CHUNKS);
    println!(
        "  stream at epoch {}: {} chunks, seq 0..{} exactly once and in order: {}; older epochs kept: {}",
        run.epoch,
        final_epoch.len(),
        DEMO_CHUNKS - 1,
        if in_order { "yes" } else { "NO" },
        chunks.iter().filter(|c| c.epoch != run.epoch).count()
    );
    if !in_order {
        ok = false;
    }
    for s in store.steps(&ids.stream).await? {
        println!(
            "  step {:<8} {:<9} attempts={} output (redacted copy)={}",
            s.node_id,
            s.status.as_str(),
            s.attempts,
            s.output.map_or("-".into(), |o| o.to_string())
        );
    }
    if !ok {
        println!(
            "vigil demo: FAILED: see above and the pod logs in {}",
            args.data_dir.join("logs").display()
        );
    }
    Ok(ok)
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}
