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
        Some(c) => c.finish(a.runs, steps, wall).await,
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
/// transactions included), both reset when the measured runs start, and
/// the rows each step wrote (`pg_stat_user_tables`, read once the pods
/// have exited and flushed their counters). The pods' background loops
/// (renewals, probes, the dispatcher's and the reaper's reads) are
/// measured apart first, over [`IDLE`] with the pods idle, and their rate
/// over the measured wall time is taken off the totals. Needs
/// `shared_preload_libraries=pg_stat_statements` (`just bench` sets it);
/// without it the report says why instead of a number.
enum StatementCounter {
    Ready {
        pool: sqlx::PgPool,
        background: Background,
    },
    Unavailable(String),
}

/// How long the pods' background loops are counted alone.
const IDLE: Duration = Duration::from_secs(3);

/// The pods' background loops, counted with nothing submitted.
struct Background {
    round_trips_per_s: f64,
    commits_per_s: f64,
    statements: Vec<(String, i64)>,
}

/// Our own session's statements are not the pods'.
const STATEMENTS_SQL: &str = "SELECT query, calls, mean_exec_time FROM pg_stat_statements \
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND query NOT LIKE '%pg_stat%' ORDER BY calls DESC";
const COMMITS_SQL: &str =
    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";

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
            // The background alone: the pods idle. A backend flushes its
            // commit count at most once a second, so the count is read
            // after a settling second, twice, and the difference taken.
            tokio::time::sleep(Duration::from_secs(1)).await;
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&pool)
                .await?;
            let c0: i64 = sqlx::query_scalar(COMMITS_SQL).fetch_one(&pool).await?;
            tokio::time::sleep(IDLE).await;
            let idle: Vec<(String, i64, f64)> =
                sqlx::query_as(STATEMENTS_SQL).fetch_all(&pool).await?;
            let c1: i64 = sqlx::query_scalar(COMMITS_SQL).fetch_one(&pool).await?;
            let secs = IDLE.as_secs_f64();
            let background = Background {
                round_trips_per_s: idle.iter().map(|r| r.1).sum::<i64>() as f64 / secs,
                // Less our own two reads.
                commits_per_s: (c1 - c0 - 2).max(0) as f64 / secs,
                statements: idle.into_iter().map(|(q, n, _)| (q, n)).collect(),
            };
            sqlx::query("SELECT pg_stat_statements_reset()")
                .execute(&pool)
                .await?;
            sqlx::query("SELECT pg_stat_reset()").execute(&pool).await?;
            Ok::<_, sqlx::Error>((pool, background))
        };
        match ready.await {
            Ok((pool, background)) => StatementCounter::Ready { pool, background },
            Err(e) => StatementCounter::Unavailable(format!(
                "pg_stat_statements unavailable ({e}); start the server with \
                 shared_preload_libraries=pg_stat_statements"
            )),
        }
    }

    async fn finish(self, runs: usize, steps: usize, wall_s: f64) -> serde_json::Value {
        let (pool, bg) = match self {
            StatementCounter::Ready { pool, background } => (pool, background),
            StatementCounter::Unavailable(why) => return serde_json::json!({"unavailable": why}),
        };
        let read = async {
            // A backend flushes its counters as it exits, which may be a
            // moment after its pod closed the connection: wait for the
            // pods' backends to be gone, then for the commit count to hold.
            for _ in 0..100 {
                let others: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid()",
                )
                .fetch_one(&pool)
                .await?;
                if others == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut last: i64 = sqlx::query_scalar(COMMITS_SQL).fetch_one(&pool).await?;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now: i64 = sqlx::query_scalar(COMMITS_SQL).fetch_one(&pool).await?;
                if now == last {
                    break;
                }
                last = now;
            }
            let rows: Vec<(String, i64, f64)> =
                sqlx::query_as(STATEMENTS_SQL).fetch_all(&pool).await?;
            let commits: i64 = sqlx::query_scalar(COMMITS_SQL).fetch_one(&pool).await?;
            let tables: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
                "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del \
                 FROM pg_stat_user_tables ORDER BY relname",
            )
            .fetch_all(&pool)
            .await?;
            Ok::<_, sqlx::Error>((rows, commits, tables))
        };
        let round2 = |x: f64| (x * 100.0).round() / 100.0;
        let per_run = |n: f64| round2(n / runs as f64);
        let per_step =
            |n: i64| ((n as f64 / (runs * steps.max(1)) as f64) * 1000.0).round() / 1000.0;
        match read.await {
            Ok((rows, commits, tables)) => {
                let total: i64 = rows.iter().map(|r| r.1).sum();
                let top: Vec<_> = rows
                    .iter()
                    .take(25)
                    .map(|(q, calls, mean_ms)| {
                        let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                        serde_json::json!({
                            "per_run": per_run(*calls as f64),
                            // Execution in the server, not the round trip or the commit.
                            "mean_exec_ms": (mean_ms * 1000.0).round() / 1000.0,
                            "query": q,
                        })
                    })
                    .collect();
                let bg_statements: Vec<_> = bg
                    .statements
                    .iter()
                    .take(15)
                    .map(|(q, calls)| {
                        let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                        serde_json::json!({
                            "per_s": round2(*calls as f64 / IDLE.as_secs_f64()),
                            "query": q,
                        })
                    })
                    .collect();
                // Minus the counter's own one transaction.
                let commits = (commits - 1).max(0) as f64;
                let rows_per_step: Vec<_> = tables
                    .iter()
                    .filter(|t| t.1 + t.2 + t.4 > 0)
                    .map(|(name, ins, upd, hot, del)| {
                        serde_json::json!({
                            "table": name,
                            "inserts": per_step(*ins),
                            "updates": per_step(*upd),
                            "hot_updates": per_step(*hot),
                            "deletes": per_step(*del),
                        })
                    })
                    .collect();
                let sum = |f: fn(&(String, i64, i64, i64, i64)) -> i64| {
                    per_step(tables.iter().map(f).sum())
                };
                serde_json::json!({
                    "round_trips_per_run": per_run(total as f64),
                    "commits_per_run": per_run(commits),
                    // The background's rate over the measured wall time, off.
                    "round_trips_per_run_less_background":
                        per_run((total as f64 - bg.round_trips_per_s * wall_s).max(0.0)),
                    "commits_per_run_less_background":
                        per_run((commits - bg.commits_per_s * wall_s).max(0.0)),
                    "background": {
                        "round_trips_per_s": round2(bg.round_trips_per_s),
                        "commits_per_s": round2(bg.commits_per_s),
                        "idle_s": IDLE.as_secs_f64(),
                        "by_statement": bg_statements,
                    },
                    "by_statement": top,
                    "rows_per_step": {
                        "inserts": sum(|t| t.1),
                        "updates": sum(|t| t.2),
                        "hot_updates": sum(|t| t.3),
                        "deletes": sum(|t| t.4),
                        "by_table": rows_per_step,
                        "note": "every table's rows over the measured runs' steps, the pods' \
                                 own rows (renewals: pods) included",
                    },
                    "note": "counted by the server over the measured runs; the background \
                             loops were counted alone first, with the pods idle",
                })
            }
            Err(e) => {
                serde_json::json!({"unavailable": format!("reading pg_stat_statements: {e}")})
            }
        }
    }
}
