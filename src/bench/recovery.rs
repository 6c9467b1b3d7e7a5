//! Liveness and recovery: one survivor pod; round after round a victim pod
//! starts, takes a `bench_stream` run (five checkpointed steps, then a
//! 40-chunk stream), and is SIGKILLed (or SIGTERMed) once three chunks are
//! out. Measured from the signal:
//!   - detection: the survivor records the victim's death (pod_deaths),
//!   - claim:     the survivor's claim of the run (run_claims, epoch 2),
//!   - resume:    the first chunk of the resumed stream (epoch 2),
//!   - complete:  the run succeeds.
//!
//! Duplicate step executions are counted, not assumed: attempts are durable
//! before a step body runs, so a step that had finished before the signal
//! and shows more than one attempt afterwards ran twice. The step that was
//! interrupted mid-stream is restarted by design and counted apart.

use super::{ScratchStore, machine, summary};
use crate::client::PodClient;
use crate::cluster::{Cluster, ClusterSpec};
use crate::engine::run::{RunState, StepStatus};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KillSignal {
    Kill,
    Term,
}

#[derive(Debug, Args)]
pub struct RecoveryArgs {
    /// `sqlite` (a scratch file) or a postgres:// server URL (a scratch database on it).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// `kill` = SIGKILL, `term` = SIGTERM (graceful shutdown).
    #[arg(long, value_enum, default_value = "kill")]
    pub signal: KillSignal,
    /// Measured rounds (rounds the survivor dispatched itself are not counted).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Extra `vigil pod` arguments for every pod (e.g. a shorter SQLite lease).
    #[arg(long, allow_hyphen_values = true, num_args = 1)]
    pub pod_arg: Vec<String>,
    #[arg(long, default_value = "fixtures/workflows")]
    pub workflows: PathBuf,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Default)]
struct Series {
    detect: Vec<f64>,
    claim: Vec<f64>,
    resume: Vec<f64>,
    complete: Vec<f64>,
    finished_steps_rerun: i64,
    interrupted_steps_restarted: i64,
    chunk_gaps: usize,
    skipped: usize,
}

pub async fn run(a: RecoveryArgs) -> Result<serde_json::Value> {
    if a.kills == 0 {
        bail!("--kills must be at least 1");
    }
    let scratch = ScratchStore::create(&a.store, "rec").await?;
    let result = measure(&a, &scratch).await;
    scratch.cleanup().await;
    result
}

fn now_ms() -> i64 {
    crate::engine::clock::wall_ms()
}

async fn measure(a: &RecoveryArgs, scratch: &ScratchStore) -> Result<serde_json::Value> {
    let logs = tempfile::Builder::new()
        .prefix("vigil-bench-logs-")
        .tempdir()?;
    let mut spec = ClusterSpec::new(scratch.target.clone(), a.workflows.clone(), logs.path())?;
    spec.pod_args = a.pod_arg.clone();
    let mut cluster = Cluster::new(spec)?;
    cluster.start_pod("survivor", &[]).await?;
    let store = crate::engine::store::open(&scratch.target).await?;
    let req: crate::pod::wire::SubmitRequest =
        serde_json::from_value(serde_json::json!({"workflow": "bench_stream"}))?;
    let mut s = Series::default();
    let mut round = 0usize;
    while s.detect.len() < a.kills {
        round += 1;
        if round > a.kills * 3 {
            bail!(
                "the survivor took {} of {round} runs first; giving up",
                s.skipped
            );
        }
        let victim = format!("victim-{round}");
        let url = cluster.start_pod(&victim, &[]).await?.url.clone();
        let id = PodClient::new(&url)?.submit(&req).await?.run.id;
        // Wait for the victim to own the run with three chunks out.
        let until = Instant::now() + Duration::from_secs(30);
        let mine = loop {
            let r = store.get_run(&id).await?.context("run vanished")?;
            match r.owner_pod.as_deref() {
                Some(o) if o == victim && store.chunks(&id).await?.len() >= 3 => break true,
                Some(o) if o != victim => break false,
                _ => {}
            }
            if Instant::now() > until {
                bail!("round {round}: run {id} never started streaming");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if !mine {
            s.skipped += 1;
            cluster.kill(&victim).await?;
            wait_terminal(&*store, &id).await?;
            continue;
        }
        let signalled_at = now_ms();
        match a.signal {
            KillSignal::Kill => cluster.kill(&victim).await?,
            KillSignal::Term => {
                cluster.terminate(&victim, Duration::from_secs(10)).await?;
            }
        }
        let running: Vec<String> = store
            .steps(&id)
            .await?
            .into_iter()
            .filter(|st| st.status == StepStatus::Running)
            .map(|st| st.node_id)
            .collect();
        let mut first_chunk_at = None;
        let until = Instant::now() + Duration::from_secs(60);
        while first_chunk_at.is_none() {
            if Instant::now() > until {
                bail!("round {round}: run {id} never resumed");
            }
            first_chunk_at = store
                .chunks(&id)
                .await?
                .iter()
                .find(|c| c.epoch >= 2)
                .map(|c| c.at_ms);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let state = wait_terminal(&*store, &id).await?;
        if state != RunState::Succeeded {
            bail!("round {round}: run {id} ended {state}, not succeeded");
        }
        let run = store.get_run(&id).await?.context("run vanished")?;
        let death = store
            .liveness()
            .deaths(1000)
            .await?
            .into_iter()
            .find(|d| d.pod_id == victim)
            .with_context(|| format!("round {round}: no death recorded for {victim}"))?;
        let claim = store
            .claims(&id)
            .await?
            .into_iter()
            .find(|c| c.epoch == 2)
            .with_context(|| format!("round {round}: no second claim of {id}"))?;
        for st in store.steps(&id).await? {
            let extra = (st.attempts - 1).max(0);
            if running.contains(&st.node_id) {
                s.interrupted_steps_restarted += extra;
            } else {
                s.finished_steps_rerun += extra;
            }
        }
        let chunks = store.chunks(&id).await?;
        let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
        if seqs != (0..40).collect::<Vec<i64>>() {
            s.chunk_gaps += 1;
        }
        s.detect.push((death.detected_at_ms - signalled_at) as f64);
        s.claim.push((claim.at_ms - signalled_at) as f64);
        s.resume
            .push((first_chunk_at.unwrap_or(signalled_at) - signalled_at) as f64);
        s.complete.push((run.updated_at_ms - signalled_at) as f64);
    }
    cluster.shutdown(Duration::from_secs(5)).await;
    let sig = match a.signal {
        KillSignal::Kill => "SIGKILL",
        KillSignal::Term => "SIGTERM",
    };
    eprintln!(
        "vigil recovery {} {sig} x{}: detection {} | first resumed chunk {} | finished steps re-run {}",
        scratch.kind,
        s.detect.len(),
        summary(&s.detect),
        summary(&s.resume),
        s.finished_steps_rerun
    );
    Ok(serde_json::json!({
        "bench": "recovery",
        "system": "vigil",
        "store": scratch.kind,
        "signal": sig,
        "pod_args": a.pod_arg,
        "rounds_measured": s.detect.len(),
        "rounds_skipped_survivor_dispatched_first": s.skipped,
        "detection_ms": summary(&s.detect),
        "claim_ms": summary(&s.claim),
        "first_resumed_chunk_ms": summary(&s.resume),
        "run_complete_ms": summary(&s.complete),
        "all_detection_ms": s.detect,
        "all_first_resumed_chunk_ms": s.resume,
        "finished_steps_executed_again": s.finished_steps_rerun,
        "interrupted_steps_restarted": s.interrupted_steps_restarted,
        "runs_with_a_bad_final_stream": s.chunk_gaps,
        "failures": s.finished_steps_rerun + s.chunk_gaps as i64,
        "machine": machine(),
    }))
}

async fn wait_terminal(store: &dyn crate::engine::store::Store, id: &str) -> Result<RunState> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = store.get_run(id).await?.context("run vanished")?;
        if r.state.is_terminal() {
            return Ok(r.state);
        }
        if Instant::now() > until {
            bail!("run {id} did not end within 60 s (state {})", r.state);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
