//! Throughput: the shape of the DBOS anchor's `throughput --mode start`:
//! C client tasks, each submitting one run and waiting for its end before
//! submitting the next, until N runs are done. A run's latency is submit ->
//! `end` event on its stream. Runs are spread over the pods round-robin.

use super::{ScratchStore, machine, peak_rss_kib, summary};
use crate::client::PodClient;
use crate::cluster::{Cluster, ClusterSpec};
use crate::engine::run::RunState;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ThroughputArgs {
    /// `sqlite` (a scratch file) or a postgres:// server URL (a scratch database on it).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// Pods sharing the store.
    #[arg(long, default_value_t = 1)]
    pub pods: usize,
    /// Clients, each with one run in flight at a time.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Runs measured.
    #[arg(long, default_value_t = 2000)]
    pub runs: usize,
    /// Runs before the measurement (not measured).
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// The workflow (its steps count toward steps/s).
    #[arg(long, default_value = "bench_trivial")]
    pub workflow: String,
    #[arg(long, default_value = "fixtures/workflows")]
    pub workflows: PathBuf,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub async fn run(a: ThroughputArgs) -> Result<serde_json::Value> {
    if a.pods == 0 || a.concurrency == 0 || a.runs == 0 {
        bail!("--pods, --concurrency and --runs must be at least 1");
    }
    let registry = crate::engine::workflow::WorkflowRegistry::load_dir(&a.workflows)
        .with_context(|| format!("loading workflows from {}", a.workflows.display()))?;
    let steps = registry.get(&a.workflow)?.steps.len();
    let scratch = ScratchStore::create(&a.store, "tp").await?;
    let result = measure(&a, &scratch, steps).await;
    scratch.cleanup().await;
    result
}

async fn measure(
    a: &ThroughputArgs,
    scratch: &ScratchStore,
    steps: usize,
) -> Result<serde_json::Value> {
    let logs = tempfile::Builder::new()
        .prefix("vigil-bench-logs-")
        .tempdir()?;
    let spec = ClusterSpec::new(scratch.target.clone(), a.workflows.clone(), logs.path())?;
    let mut cluster = Cluster::new(spec)?;
    let mut clients = Vec::new();
    let mut pids = Vec::new();
    for i in 1..=a.pods {
        let p = cluster.start_pod(&format!("bench-{i}"), &[]).await?;
        clients.push(PodClient::new(&p.url)?);
        pids.push(p.pid().map(|p| p.as_raw() as u32));
    }
    let clients = Arc::new(clients);
    let req: crate::pod::wire::SubmitRequest =
        serde_json::from_value(serde_json::json!({"workflow": a.workflow}))?;
    let req = Arc::new(req);

    for i in 0..a.warmup {
        one_run(&clients[i % clients.len()], &req).await?;
    }

    // From here the server counts the measured runs' statements.
    let counter = match scratch.kind {
        "postgres" => Some(StatementCounter::start(&scratch.target).await),
        _ => None,
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (clients, req, next, total) = (clients.clone(), req.clone(), next.clone(), a.runs);
        tasks.spawn(async move {
            let mut out: Vec<(String, f64, RunState)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(out);
                }
                let t0 = Instant::now();
                let (id, state) = one_run(&clients[i % clients.len()], &req).await?;
                out.push((id, t0.elapsed().as_secs_f64() * 1000.0, state));
            }
        });
    }
    let mut done = Vec::with_capacity(a.runs);
    while let Some(r) = tasks.join_next().await {
        done.extend(r??);
    }
    let wall = started.elapsed().as_secs_f64();
    let rss: Vec<Option<u64>> = pids.iter().map(|p| p.and_then(peak_rss_kib)).collect();

    cluster.shutdown(Duration::from_secs(5)).await;
    // The pods' sessions are closed (their counters flushed): read them.
    let statements = match counter {
        Some(c) => c.finish(a.runs).await,
        None => serde_json::json!({"not_applicable": "SQLite: statements are in-process calls"}),
    };
    // After the clock: every run must have succeeded and run each step once.
    let store = crate::engine::store::open(&scratch.target).await?;
    let mut not_succeeded = 0usize;
    let mut extra_executions = 0i64;
    for (id, _, state) in &done {
        if *state != RunState::Succeeded {
            not_succeeded += 1;
        }
        for s in store.steps(id).await? {
            extra_executions += (s.attempts - 1).max(0);
        }
    }

    let lat: Vec<f64> = done.iter().map(|d| d.1).collect();
    let runs_per_s = a.runs as f64 / wall;
    eprintln!(
        "vigil throughput {} pods={} c={}: {:.1} runs/s, {:.1} steps/s, latency {}",
        scratch.kind,
        a.pods,
        a.concurrency,
        runs_per_s,
        runs_per_s * steps as f64,
        summary(&lat)
    );
    Ok(serde_json::json!({
        "bench": "throughput",
        "system": "vigil",
        "store": scratch.kind,
        "pods": a.pods,
        "concurrency": a.concurrency,
        "runs": a.runs,
        "warmup_runs": a.warmup,
        "workflow": a.workflow,
        "steps_per_run": steps,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "runs_per_s": (runs_per_s * 10.0).round() / 10.0,
        "steps_per_s": (runs_per_s * steps as f64 * 10.0).round() / 10.0,
        "latency_ms": summary(&lat),
        "latency_note": "POST /v1/runs -> `end` event on the run's SSE stream",
        "pod_peak_rss_kib": rss,
        "statements": statements,
        "runs_not_succeeded": not_succeeded,
        "extra_step_executions": extra_executions,
        "failures": not_succeeded as i64 + extra_executions,
        "machine": machine(),
    }))
}

async fn one_run(
    client: &PodClient,
    req: &crate::pod::wire::SubmitRequest,
) -> Result<(String, RunState)> {
    let id = client.submit(req).await?.run.id;
    let end = client.attach(&id, |_| {}).await?;
    Ok((id, end.state))
}

/// Statements and commits per run, as the PostgreSQL server counted them
/// (`pg_stat_statements`, top-level statements only, so one entry is one
/// round trip; `pg_stat_database.xact_commit` for commits, read-only
/// transactions included), both reset when the measured runs start. Needs
/// `shared_preload_libraries=pg_stat_statements` (`just bench` sets it);
/// without it the report says why instead of a number.
enum StatementCounter {
    Ready(sqlx::PgPool),
    Unavailable(String),
}

impl StatementCounter {
    async fn start(url: &str) -> StatementCounter {
        let ready = async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?;
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&pool)
                .await?;
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&pool)
                .await?;
            sqlx::query("SELECT pg_stat_reset()").execute(&pool).await?;
            Ok::<_, sqlx::Error>(pool)
        };
        match ready.await {
            Ok(pool) => StatementCounter::Ready(pool),
            Err(e) => StatementCounter::Unavailable(format!(
                "pg_stat_statements unavailable ({e}); start the server with \
                 shared_preload_libraries=pg_stat_statements"
            )),
        }
    }

    async fn finish(self, runs: usize) -> serde_json::Value {
        let pool = match self {
            StatementCounter::Ready(pool) => pool,
            StatementCounter::Unavailable(why) => return serde_json::json!({"unavailable": why}),
        };
        let read = async {
            // Our own session's counters are not the pods'.
            let db = "(SELECT oid FROM pg_database WHERE datname = current_database())";
            let rows: Vec<(String, i64, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT query, calls, mean_exec_time FROM pg_stat_statements WHERE dbid = {db} \
                 AND query NOT LIKE '%pg_stat%' ORDER BY calls DESC"
            )))
            .fetch_all(&pool)
            .await?;
            let commits: i64 = sqlx::query_scalar(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_one(&pool)
            .await?;
            Ok::<_, sqlx::Error>((rows, commits))
        };
        let per_run = |n: i64| (n as f64 / runs as f64 * 100.0).round() / 100.0;
        match read.await {
            Ok((rows, commits)) => {
                let total: i64 = rows.iter().map(|r| r.1).sum();
                let top: Vec<_> = rows
                    .iter()
                    .take(25)
                    .map(|(q, calls, mean_ms)| {
                        let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                        serde_json::json!({
                            "per_run": per_run(*calls),
                            // Execution in the server, not the round trip or the commit.
                            "mean_exec_ms": (mean_ms * 1000.0).round() / 1000.0,
                            "query": q,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "round_trips_per_run": per_run(total),
                    // Minus the counter's own one transaction.
                    "commits_per_run": per_run((commits - 1).max(0)),
                    "by_statement": top,
                    "note": "counted by the server over the measured runs (the pods' \
                             background loops, heartbeats and probes included)",
                })
            }
            Err(e) => {
                serde_json::json!({"unavailable": format!("reading pg_stat_statements: {e}")})
            }
        }
    }
}
