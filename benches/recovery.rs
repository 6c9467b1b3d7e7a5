//! Recovery latency, measured with real pods and real SIGKILLs (not a timed
//! test: a report). For each store: one survivor pod; 20 times over, a
//! victim pod starts, takes a streaming run, is SIGKILLed mid-stream, and we
//! measure
//!   - detection: kill -> the survivor records the death (pod_deaths),
//!   - claim:     kill -> the survivor's claim (run_claims),
//!   - resume:    kill -> the first chunk of the resumed stream.
//!
//! Run: `just bench` (starts a throwaway PostgreSQL), or
//! `cargo bench --bench recovery` with VIGIL_TEST_PG_URL set for PostgreSQL.
//! Env: VIGIL_BENCH_KILLS (default 20), VIGIL_BENCH_OUT (JSON report path),
//! VIGIL_BENCH_TUNED=1 (also SQLite with a 500 ms lease).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/pods.rs"]
mod pods;

use nix::sys::signal::Signal;
use pods::PodProc;
use std::time::{Duration, Instant};
use vigil::client::PodClient;
use vigil::engine::store::{self, Store};

fn now_ms() -> i64 {
    vigil::engine::clock::wall_ms()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Series {
    detect: Vec<f64>,
    claim: Vec<f64>,
    resume: Vec<f64>,
}

async fn run_store(label: &str, target: &str, kills: usize, extra: &[&str]) -> Series {
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let label = label.as_str();
    let store: std::sync::Arc<dyn Store> = store::open(target).await.expect("store");
    let survivor = PodProc::spawn(target, &format!("{label}-survivor"), extra);
    let mut s = Series {
        detect: vec![],
        claim: vec![],
        resume: vec![],
    };
    for i in 0..kills {
        let victim_id = format!("{label}-victim-{i}");
        // The victim takes the run: the survivor is full (max runs = 0 is not
        // possible for it, so submit to the victim before the survivor can
        // see the run: the victim's dispatcher is woken by the submit).
        let mut victim = PodProc::spawn(target, &victim_id, extra);
        let c = PodClient::new(&victim.url).unwrap();
        let req = serde_json::from_value(serde_json::json!({"workflow": "slow_stream"})).unwrap();
        let id = c.submit(&req).await.unwrap().run.id;
        let start = Instant::now();
        loop {
            let r = store.get_run(&id).await.unwrap().unwrap();
            let chunks = store.chunks(&id).await.unwrap().len();
            if r.owner_pod.as_deref() == Some(victim_id.as_str()) && chunks >= 3 {
                break;
            }
            if r.owner_pod.is_some() && r.owner_pod.as_deref() != Some(victim_id.as_str()) {
                break; // the survivor won the dispatch race: measure nothing this round
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "run never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if store
            .get_run(&id)
            .await
            .unwrap()
            .unwrap()
            .owner_pod
            .as_deref()
            != Some(victim_id.as_str())
        {
            eprintln!("{label}: round {i}: the survivor took the run first; skipped");
            continue;
        }
        let killed_at = now_ms();
        victim.signal(Signal::SIGKILL);
        victim.wait_exit(Duration::from_secs(5)).unwrap();
        let mut first_chunk_at = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while first_chunk_at.is_none() {
            assert!(Instant::now() < deadline, "{label}: run {id} never resumed");
            let chunks = store.chunks(&id).await.unwrap();
            if let Some(c) = chunks.iter().find(|c| c.epoch >= 2) {
                first_chunk_at = Some(c.at_ms);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let deaths = store.liveness().deaths(1000).await.unwrap();
        let death = deaths
            .iter()
            .find(|d| d.pod_id == victim_id)
            .expect("death recorded");
        let claim = store
            .claims(&id)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.epoch == 2)
            .expect("claim");
        s.detect.push((death.detected_at_ms - killed_at) as f64);
        s.claim.push((claim.at_ms - killed_at) as f64);
        s.resume
            .push((first_chunk_at.unwrap_or(killed_at) - killed_at) as f64);
        // Let the survivor finish the run before the next round.
        let until = Instant::now() + Duration::from_secs(30);
        while !store
            .get_run(&id)
            .await
            .unwrap()
            .unwrap()
            .state
            .is_terminal()
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(survivor);
    for v in [&mut s.detect, &mut s.claim, &mut s.resume] {
        v.sort_by(f64::total_cmp);
    }
    s
}

fn report(label: &str, s: &Series) -> serde_json::Value {
    println!(
        "{label:<28} n={:<3} detection p50 {:>6.0} ms  p99 {:>6.0} ms | claim p50 {:>6.0} ms  p99 {:>6.0} ms | first resumed chunk p50 {:>6.0} ms  p99 {:>6.0} ms",
        s.detect.len(),
        pct(&s.detect, 50.0),
        pct(&s.detect, 99.0),
        pct(&s.claim, 50.0),
        pct(&s.claim, 99.0),
        pct(&s.resume, 50.0),
        pct(&s.resume, 99.0),
    );
    serde_json::json!({
        "label": label, "n": s.detect.len(),
        "detection_ms": {"p50": pct(&s.detect, 50.0), "p99": pct(&s.detect, 99.0), "all": s.detect},
        "claim_ms": {"p50": pct(&s.claim, 50.0), "p99": pct(&s.claim, 99.0)},
        "first_resumed_chunk_ms": {"p50": pct(&s.resume, 50.0), "p99": pct(&s.resume, 99.0), "all": s.resume},
    })
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let kills: usize = std::env::var("VIGIL_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut out = Vec::new();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = dir.path().join("bench.db");
        let sqlite = sqlite.to_str().unwrap();
        let s = run_store("sqlite (defaults)", sqlite, kills, &[]).await;
        out.push(report("sqlite (defaults)", &s));
        if std::env::var("VIGIL_BENCH_TUNED").is_ok_and(|v| v == "1") {
            let dir2 = tempfile::tempdir().unwrap();
            let sqlite2 = dir2.path().join("bench.db");
            let fast = ["--liveness-timeout-ms", "500", "--probe-interval-ms", "50"];
            let target2 = sqlite2.to_str().unwrap();
            let s = run_store("sqlite (lease 500ms)", target2, kills, &fast).await;
            out.push(report("sqlite (lease 500ms)", &s));
        }
        match std::env::var("VIGIL_TEST_PG_URL") {
            Ok(admin) if !admin.is_empty() => {
                let db = format!("vigil_bench_{}", std::process::id());
                let pool = sqlx::PgPool::connect(&admin).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&db);
                let s = run_store("postgres (defaults)", url.as_str(), kills, &[]).await;
                out.push(report("postgres (defaults)", &s));
            }
            _ => println!("postgres: not measured (set VIGIL_TEST_PG_URL, or run `just bench`)"),
        }
    });
    let path =
        std::env::var("VIGIL_BENCH_OUT").unwrap_or_else(|_| "target/bench-recovery.json".into());
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("report: {path}");
}
