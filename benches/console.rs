//! What the console's refresh costs the store (a report, not a timed test;
//! the render cost is `benches/console_render.rs`, under criterion):
//!   - refresh: one store round as the collector runs it at its default
//!     (Runs view, 1,000 newest runs) and with all 10,000 loaded, over a
//!     store seeded with 10,000 runs (3 steps, 2 transitions, 1 claim each),
//!     and the statements per round, hence the queries per second at the
//!     default 500 ms refresh.
//!
//! SQLite always; PostgreSQL too when VIGIL_TEST_PG_URL is set (`./scripts/with-pg.sh
//! cargo bench --bench console`). Env: VIGIL_BENCH_CONSOLE_RUNS (default 10000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil::console::{QueryCount, RoundState, View, Watch, round};
use vigil::engine::store::OpsStore;

const NOW: i64 = 1_760_000_000_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn seed_sqlite(n: usize) -> (tempfile::TempDir, Arc<dyn OpsStore>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let s = vigil::engine::store::SqliteStore::open(&path)
        .await
        .unwrap();
    let mut tx = s.pool().begin().await.unwrap();
    for i in 0..n {
        for q in seed_statements(i) {
            sqlx::query(sqlx::AssertSqlSafe(q))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    drop(s);
    let store = vigil::engine::store::ops::open(&path.display().to_string())
        .await
        .unwrap();
    (dir, store)
}

async fn seed_pg(url: &str, n: usize) -> Arc<dyn OpsStore> {
    let db = format!("vigil_console_bench_{}", std::process::id());
    let admin = vigil::engine::store::PgStore::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(admin.pool())
        .await
        .unwrap();
    let target = format!("{}/{db}", url.rsplit_once('/').unwrap().0);
    let s = vigil::engine::store::PgStore::connect(&target)
        .await
        .unwrap();
    let mut tx = s.pool().begin().await.unwrap();
    for i in 0..n {
        for q in seed_statements(i) {
            sqlx::query(sqlx::AssertSqlSafe(q))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    vigil::engine::store::ops::open(&target).await.unwrap()
}

fn seed_statements(i: usize) -> Vec<String> {
    let id = format!("0199a1b2-c3d4-7e5f-8a9b-{i:012x}");
    let at = NOW - (i as i64) * 100;
    let state = ["running", "succeeded", "pending", "failed"][i % 4];
    let owner = format!("pod-{}", i % 3 + 1);
    let mut v = vec![format!(
        "INSERT INTO runs (id, workflow, lane, input, state, owner_pod, epoch, created_at, updated_at, family) \
         VALUES ('{id}', 'chat_reply', 'sync', '{{}}', '{state}', '{owner}', 1, {at}, {at}, '{id}')"
    )];
    for (k, node) in ["prompt", "reply", "summary"].iter().enumerate() {
        v.push(format!(
            "INSERT INTO steps (run_id, node_id, status, attempts, output, updated_at) \
             VALUES ('{id}', '{node}', 'succeeded', 1, '{{}}', {})",
            at + k as i64
        ));
    }
    v.push(format!(
        "INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, reason, late, at) \
         VALUES ('{id}', 'pending', 'running', 1, '{owner}', 'claimed', false, {at})"
    ));
    v.push(format!(
        "INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, reason, late, at) \
         VALUES ('{id}', 'running', 'succeeded', 1, '{owner}', 'all steps succeeded', false, {})",
        at + 10
    ));
    v.push(format!(
        "INSERT INTO run_claims (run_id, from_pod, to_pod, epoch, at) VALUES ('{id}', NULL, '{owner}', 1, {at})"
    ));
    v
}

async fn bench_rounds(label: &str, store: &dyn OpsStore) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (what, view, limit) in [
        ("Runs view, default 1000 newest runs", View::Runs, 1000),
        ("Runs view, every run loaded", View::Runs, 100_000),
        ("Events view (always-on queries only)", View::Events, 1000),
    ] {
        let w = Watch {
            generation: 0,
            view,
            run: None,
            switch: None,
        };
        let q = QueryCount::default();
        let mut st = RoundState::default();
        // The first round reads the events backlog; steady state is what counts.
        round(store, &w, &mut st, limit, 2000, &q).await.unwrap();
        let before = q.get();
        let rounds = 20;
        let samples: Vec<Duration> = {
            let mut v = Vec::new();
            for _ in 0..rounds {
                let s = Instant::now();
                round(store, &w, &mut st, limit, 2000, &q).await.unwrap();
                v.push(s.elapsed());
            }
            v
        };
        let per_round = (q.get() - before) as f64 / rounds as f64;
        let m = median(samples);
        println!(
            "{label}: {what}: median {:.2} ms per round, {per_round:.0} statements per round \
             = {:.0} queries/s at the default 500 ms refresh; the store busy {:.1}% of the time",
            ms(m),
            per_round * 2.0,
            ms(m) / 500.0 * 100.0
        );
        out.push(serde_json::json!({
            "store": label, "what": what, "round_ms_median": (ms(m) * 100.0).round() / 100.0,
            "statements_per_round": per_round, "queries_per_s_at_500ms": per_round * 2.0,
        }));
    }
    out
}

fn main() {
    // `cargo test --all-targets` runs benches too, unoptimized and without
    // `--bench`: then only check that it works, on a small store.
    let measuring = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("VIGIL_BENCH_CONSOLE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 10_000 } else { 300 });
    if !measuring {
        println!("console bench: smoke run with {n} runs (cargo bench --bench console measures)");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut out = Vec::new();
    rt.block_on(async {
        let (_dir, store) = seed_sqlite(n).await;
        out.extend(bench_rounds("sqlite", store.as_ref()).await);
        match std::env::var("VIGIL_TEST_PG_URL") {
            Ok(url) if measuring => {
                let store = seed_pg(&url, n).await;
                out.extend(bench_rounds("postgres", store.as_ref()).await);
            }
            _ => println!(
                "postgres: not measured (needs cargo bench with VIGIL_TEST_PG_URL: ./scripts/with-pg.sh)"
            ),
        }
    });
    if let Ok(path) = std::env::var("VIGIL_BENCH_OUT") {
        let v = serde_json::json!({"bench": "console_refresh", "runs_in_store": n, "rounds": out});
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        println!("report: {path}");
    }
}
