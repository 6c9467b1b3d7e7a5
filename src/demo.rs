//! `vigil demo`: the one-command tour of the engine on the embedded store.
//!
//! Two engine "pods" share one SQLite file, each through its own pool and
//! metrics as two processes would. pod-1 starts a streamed chat reply and a
//! fan-in run and crashes mid-stream (its tasks are dropped where they stand:
//! nothing is cleaned up, ownership stays in the store). pod-2 claims both
//! runs with a compare-and-set on the dead owner, resumes them from their
//! last committed step, and the demo shows what a client sees and what the
//! store proves: each step executed once, the fan-in fed raw outputs from one
//! batched query, secrets redacted in the UI copy only.

use crate::engine::clock;
use crate::engine::metrics::{FallbackOutcome, FallbackSource, Metrics};
use crate::engine::run::RunState;
use crate::engine::store::{SqliteStore, Store};
use crate::engine::switches::Switches;
use crate::engine::workflow::WorkflowRegistry;
use crate::engine::{Engine, EngineConfig, RunOutcome};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's SQLite store (demo.db is recreated on each run).
    #[arg(long, env = "VIGIL_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Directory of workflow definitions.
    #[arg(long, env = "VIGIL_WORKFLOWS", default_value = "fixtures/workflows")]
    pub workflows: PathBuf,
    /// Crash pod-1 once this many chunks of the reply have been streamed.
    #[arg(long, default_value_t = 4)]
    pub kill_after_chunk: usize,
}

async fn pod(
    db: &std::path::Path,
    reg: &Arc<WorkflowRegistry>,
    name: &str,
) -> Result<(Arc<Engine>, Arc<dyn Store>)> {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_with(db, clock::system(), Arc::new(Metrics::new())).await?);
    let switches = Switches::from_env()?;
    switches.refresh(store.as_ref()).await?;
    let engine = Engine::new(
        store.clone(),
        reg.clone(),
        switches,
        clock::system(),
        EngineConfig::new(name),
    );
    Ok((Arc::new(engine), store))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let reg = Arc::new(
        WorkflowRegistry::load_dir(&args.workflows)
            .with_context(|| format!("loading workflows from {}", args.workflows.display()))?,
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let db = args.data_dir.join("demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{suffix}", db.display()));
        if f.exists() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
        }
    }
    println!("vigil demo: embedded store at {}\n", db.display());

    let (pod1, store) = pod(&db, &reg, "pod-1").await?;
    let chat = pod1
        .submit("chat_reply", serde_json::json!({"prompt": "hello"}), None)
        .await?;
    let fan = pod1
        .submit("fan_in", serde_json::json!({"order": 7}), None)
        .await?;
    println!(
        "submitted {} (chat_reply) and {} (fan_in)",
        short(&chat.id),
        short(&fan.id)
    );

    let mut tasks = Vec::new();
    for id in [chat.id.clone(), fan.id.clone()] {
        let p = pod1.clone();
        tasks.push(tokio::spawn(async move {
            p.run(&id, None, CancellationToken::new()).await
        }));
    }
    println!("pod-1 claimed both runs; streaming the reply:");
    let mut shown = 0usize;
    let mut epoch_seen = 0;
    let mut seen_text = String::new();
    loop {
        let chunks = store.chunks(&chat.id).await?;
        for c in chunks.iter().skip(shown) {
            print_chunk(
                c.epoch,
                c.seq,
                &c.data,
                &mut epoch_seen,
                &mut seen_text,
                shown,
            );
        }
        shown = chunks.len();
        if shown >= args.kill_after_chunk {
            break;
        }
        if store
            .get_run(&chat.id)
            .await?
            .is_some_and(|r| r.state.is_terminal())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(pod1);
    println!(
        "\n  ✗ pod-1 crashed after chunk {shown}: its tasks died where they stood; the store still says it owns both runs"
    );
    for id in [&chat.id, &fan.id] {
        if let Some(r) = store.get_run(id).await? {
            println!(
                "    {} state={} owner={} epoch={}",
                short(id),
                r.state,
                r.owner_pod.as_deref().unwrap_or("-"),
                r.epoch
            );
        }
    }

    let (pod2, store2) = pod(&db, &reg, "pod-2").await?;
    println!("\npod-2 found pod-1 dead and claims its runs (compare-and-set on owner = pod-1):");
    let mut tasks = Vec::new();
    for id in [chat.id.clone(), fan.id.clone()] {
        let p = pod2.clone();
        tasks.push(tokio::spawn(async move {
            let out = p.run(&id, Some("pod-1"), CancellationToken::new()).await;
            (id, out)
        }));
    }
    loop {
        let chunks = store.chunks(&chat.id).await?;
        // A resumed run restarts its stream at a new epoch: what an attached
        // client is told to discard is shown as a reset marker.
        for (i, c) in chunks.iter().enumerate().skip(shown) {
            print_chunk(c.epoch, c.seq, &c.data, &mut epoch_seen, &mut seen_text, i);
        }
        shown = chunks.len();
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut all_ok = true;
    for t in tasks {
        let (id, out) = t.await.context("pod-2 task")?;
        let out = out?;
        if out != RunOutcome::Finished(RunState::Succeeded) {
            all_ok = false;
        }
        println!("  {} → {:?}", short(&id), out);
    }

    println!("\nwhat the store proves:");
    for (id, name) in [(&chat.id, "chat_reply"), (&fan.id, "fan_in")] {
        let run = store.get_run(id).await?.context("run vanished")?;
        println!(
            "  {name} {}: {} (epoch {}, owner {})",
            short(id),
            run.state,
            run.epoch,
            run.owner_pod.as_deref().unwrap_or("-")
        );
        let transitions = store.transitions(id).await?;
        let path: Vec<String> = transitions
            .iter()
            .map(|t| format!("{}→{} by {}", t.from, t.to, t.pod.as_deref().unwrap_or("-")))
            .collect();
        println!("    transitions: {}", path.join(", "));
        let mut execs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in store.effects(id).await? {
            execs
                .entry(e.node_id)
                .or_default()
                .push(format!("{}#{}", e.pod, e.attempt));
        }
        for s in store.steps(id).await? {
            let ran = execs.get(&s.node_id).cloned().unwrap_or_default();
            println!(
                "    {:<8} {:<9} attempts={} executions=[{}] output={}",
                s.node_id,
                s.status.as_str(),
                s.attempts,
                ran.join(", "),
                s.output.map_or("-".into(), |o| o.to_string())
            );
        }
    }
    let m = store2.metrics();
    println!(
        "\npod-2 authority: {} batched store lookups (hit={}, miss={}, error={}); secrets above are the redacted UI copy",
        m.fallback_queries(),
        m.fallback(FallbackSource::Predecessors, FallbackOutcome::Hit),
        m.fallback(FallbackSource::Predecessors, FallbackOutcome::Miss),
        m.fallback(FallbackSource::Predecessors, FallbackOutcome::Error),
    );
    println!(
        "a client attached from the start, honouring the reset, ends with: {:?}",
        seen_text.trim_end()
    );
    println!(
        "\nnext: inspect with `vigil runs --store {}` and `vigil run <id> --store {}`",
        db.display(),
        db.display()
    );
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_chunk(
    epoch: i64,
    seq: i64,
    data: &str,
    epoch_seen: &mut i64,
    text: &mut String,
    _shown: usize,
) {
    if epoch != *epoch_seen {
        if *epoch_seen != 0 {
            println!(
                "  ── reset: stream now at epoch {epoch}; discard what epoch {} sent ──",
                *epoch_seen
            );
            text.clear();
        }
        *epoch_seen = epoch;
    }
    println!("  [epoch {epoch} #{seq}] {data}");
    text.push_str(data);
}

fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}
