#![allow(clippy::unwrap_used, clippy::expect_used)]
//! PostgreSQL sessions that cannot stall the cluster, and one clock for
//! every lease (issue 14, items 4 and 8). PostgreSQL only: SQLite has no
//! row locks and its pods share one host's clock. Under `CI=true` a missing
//! server is a failure (see `common::pg_admin_url`).

mod common;

use common::TestDb;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use vigil::engine::clock;
use vigil::engine::run::LateCompletion;
use vigil::engine::store::postgres::hold_run_row;
use vigil::engine::store::{NewRun, PgStore, Store};

async fn pg() -> Option<(TestDb, String)> {
    let db = TestDb::postgres().await?;
    let url = db.target();
    Some((db, url))
}

fn new_run(deadline_at_ms: Option<i64>) -> NewRun {
    NewRun {
        workflow: "w".into(),
        lane: "action".into(),
        input: json!({}),
        late_completion: LateCompletion::default(),
        idempotency_key: None,
        deadline_at_ms,
        heartbeat_timeout_ms: None,
        retries_left: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_carry_the_safety_settings() {
    let Some((_db, url)) = pg().await else { return };
    let store = PgStore::connect(&url).await.unwrap();
    for (key, want) in [
        ("lock_timeout", "2s"),
        ("statement_timeout", "30s"),
        ("idle_in_transaction_session_timeout", "5s"),
        ("tcp_keepalives_idle", "5"),
    ] {
        let got: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {key}")))
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(got, want, "{key}");
    }
}

/// Before: the claim waited on the row for as long as the other session
/// held it, and the pod's liveness renew waited behind the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_never_waits_on_a_row_another_session_holds() {
    let Some((_db, url)) = pg().await else { return };
    let store = PgStore::connect(&url).await.unwrap();
    let (run, _) = store.create_run(new_run(None)).await.unwrap();
    let hold = hold_run_row(&url, &run.id, Duration::from_secs(8), false)
        .await
        .unwrap();
    let claimed = tokio::time::timeout(
        Duration::from_secs(4),
        store.claim_run(&run.id, "pod-a", None),
    )
    .await
    .expect("the claim answered while the row was still held");
    let err = claimed.expect_err("a held row is not claimed");
    assert!(err.is_lock_busy(), "{err}");
    assert!(!err.is_rejection(), "busy is not a rejection: try later");
    hold.abort();
    // Once the row is free the same claim succeeds.
    let mut claim = None;
    for _ in 0..50 {
        match store.claim_run(&run.id, "pod-a", None).await {
            Ok(c) => {
                claim = Some(c);
                break;
            }
            Err(e) if e.is_lock_busy() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(claim.expect("claimed once the row is free").epoch, 1);
}

/// Before: the deadline pass blocked on the one locked row and timed out
/// nothing until it was released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_pass_skips_a_locked_row_and_takes_the_rest() {
    let Some((_db, url)) = pg().await else { return };
    let store = PgStore::connect(&url).await.unwrap();
    let past = store.clock().now_ms() - 60_000;
    let (held, _) = store.create_run(new_run(Some(past))).await.unwrap();
    let (free, _) = store.create_run(new_run(Some(past))).await.unwrap();
    for id in [&held.id, &free.id] {
        store.claim_run(id, "pod-a", None).await.unwrap();
    }
    let hold = hold_run_row(&url, &held.id, Duration::from_secs(8), false)
        .await
        .unwrap();
    let timed_out =
        tokio::time::timeout(Duration::from_secs(4), store.time_out_overdue(0, "reaper"))
            .await
            .expect("the pass answered while a row was held")
            .unwrap();
    assert_eq!(timed_out, vec![free.id.clone()]);
    hold.abort();
}

/// The store's clock is the server's, whatever this host's wall clock says:
/// a pod whose clock is stepped an hour ahead still writes and compares
/// server time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reads_the_servers_clock_not_the_hosts() {
    let Some((_db, url)) = pg().await else { return };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let server = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    clock::skew_wall_clock(3_600_000);
    let host = clock::wall_ms();
    let ours = store.clock().now_ms();
    let theirs = server().await;
    clock::skew_wall_clock(0);
    assert!(
        host - theirs > 3_500_000,
        "positive control: the host clock is an hour ahead"
    );
    assert!(
        (ours - theirs).abs() < 1_000,
        "store clock {ours} vs server {theirs}"
    );
    // And what the store writes is on that clock.
    let (run, _) = store.create_run(new_run(None)).await.unwrap();
    assert!((run.created_at_ms - theirs).abs() < 5_000, "{run:?}");
    // Readings never go backwards.
    let mut last = store.clock().now_ms();
    for _ in 0..1000 {
        let now = store.clock().now_ms();
        assert!(now >= last);
        last = now;
    }
}
