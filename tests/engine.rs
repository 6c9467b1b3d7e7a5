#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The engine's promises (issue 2, "What it must show"), on both stores.

mod common;

use common::{Handle, TestDb, registry};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use vigil::engine::clock::{self, Clock as _};
use vigil::engine::metrics::{FallbackOutcome, FallbackSource};
use vigil::engine::run::{RunState, StepStatus};
use vigil::engine::store::liveness::Standing;
use vigil::engine::store::{BeginAttempt, StepSuccess, StoreError, StreamPartRow, TransitionCtx};
use vigil::engine::switches::{self, AUTHORITY_DB_FALLBACK, Switches};
use vigil::engine::workflow::{REDACTED, WorkflowRegistry};
use vigil::engine::{Engine, EngineConfig, RunOutcome};

async fn engine_with(h: &Handle, reg: &Arc<WorkflowRegistry>, config: EngineConfig) -> Engine {
    let switches = Switches::defaults();
    switches.refresh(h.store.as_ref()).await.expect("switches");
    Engine::new(
        h.store.clone(),
        reg.clone(),
        switches,
        clock::system(),
        config,
    )
}

fn fast(pod: &str) -> EngineConfig {
    let mut c = EngineConfig::new(pod);
    c.backoff_base = Duration::from_millis(5);
    c.backoff_cap = Duration::from_millis(20);
    c
}

/// A pod that backs off for an hour after a transient failure: it parks
/// there, which is where these tests "crash" it.
fn parking(pod: &str) -> EngineConfig {
    let mut c = EngineConfig::new(pod);
    c.backoff_base = Duration::from_secs(3600);
    c.backoff_cap = Duration::from_secs(3600);
    c
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn step_status(h: &Handle, run_id: &str, node: &str) -> Option<(StepStatus, i64)> {
    h.store
        .steps(run_id)
        .await
        .expect("steps")
        .into_iter()
        .find(|s| s.node_id == node)
        .map(|s| (s.status, s.attempts))
}

/// Start `run_id` on a parking pod and stop it ("crash") once `node` has
/// failed its first attempt, leaving the predecessors committed.
async fn run_until_parked(db: &TestDb, reg: &Arc<WorkflowRegistry>, run_id: &str, node: &str) {
    let h = db.open().await;
    let a = Arc::new(engine_with(&h, reg, parking("pod-a")).await);
    let cancel = CancellationToken::new();
    let task = {
        let (a, id, c) = (a.clone(), run_id.to_owned(), cancel.clone());
        tokio::spawn(async move { a.run(&id, None, c).await })
    };
    wait_for("the gate step to fail once", || async {
        h.store
            .steps(run_id)
            .await
            .expect("steps")
            .iter()
            .any(|s| s.node_id == node && s.attempts == 1 && s.error.is_some())
    })
    .await;
    cancel.cancel();
    let out = task.await.expect("join").expect("drive");
    assert_eq!(out, RunOutcome::Abandoned, "a stopping pod keeps ownership");
    assert_eq!(
        h.store
            .get_run(run_id)
            .await
            .unwrap()
            .unwrap()
            .owner_pod
            .as_deref(),
        Some("pod-a")
    );
}

const TWO_STREAMS: &str = r#"
name = "two"
[[steps]]
id = "intro"
kind = "emit"
chunks = 3
text = "i{i};"
[[steps]]
id = "body"
kind = "emit"
after = ["intro"]
chunks = 6
interval_ms = 40
text = "b{i};"
[[steps]]
id = "done"
kind = "compute"
after = ["body"]
output = { ok = true }
"#;

const FAN_IN: &str = r#"
name = "fan"
[[steps]]
id = "a"
kind = "compute"
output = { token = "tok-a", user = "ann" }
secret_fields = ["token"]
[[steps]]
id = "b"
kind = "compute"
output = { token = "tok-b" }
secret_fields = ["token"]
[[steps]]
id = "c"
kind = "compute"
output = { n = 3 }
[[steps]]
id = "gate"
kind = "fail"
fail = { first = 1, class = "transient" }
[[steps]]
id = "merge"
kind = "fan_in"
after = ["a", "b", "c", "gate"]
"#;

async fn fan_in_resumed_in_fresh_executor_hydrates_raw_outputs_in_one_query(db: &TestDb) {
    let reg = registry(&[FAN_IN]);
    let h = db.open().await;
    let run = engine_with(&h, &reg, fast("pod-a"))
        .await
        .submit("fan", json!({}), None)
        .await
        .unwrap();
    run_until_parked(db, &reg, &run.id, "gate").await;

    // A different process: own pool, own metrics, empty tracker.
    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let out = b
        .run(&run.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));

    // gate ran on pod-b (tracker hit); a, b and c came from one query.
    let stats = hb
        .store
        .stats()
        .output_raw_queries
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        stats, 1,
        "exactly one batched query for all missing predecessors"
    );
    assert_eq!(
        hb.store
            .metrics()
            .fallback(FallbackSource::Predecessors, FallbackOutcome::Hit),
        1
    );

    let merge = h
        .store
        .step_outputs_raw(&run.id, &["merge".into()])
        .await
        .unwrap();
    assert_eq!(
        merge["merge"],
        json!({"a": {"token": "tok-a", "user": "ann"}, "b": {"token": "tok-b"}, "c": {"n": 3}, "gate": {}})
    );
    let steps = h.store.steps(&run.id).await.unwrap();
    let redacted = steps
        .iter()
        .find(|s| s.node_id == "merge")
        .unwrap()
        .output
        .clone()
        .unwrap();
    assert_eq!(
        redacted["a"]["token"], REDACTED,
        "the UI copy inherits predecessor secrets"
    );
    assert_eq!(redacted["b"]["token"], REDACTED);
    assert_eq!(redacted["a"]["user"], "ann");
    // No predecessor ran twice.
    let effects = h.store.effects(&run.id).await.unwrap();
    for node in ["a", "b", "c", "merge"] {
        assert_eq!(
            effects.iter().filter(|e| e.node_id == node).count(),
            1,
            "{node}"
        );
    }
}

const USES_SECRET: &str = r#"
name = "uses"
[[steps]]
id = "a"
kind = "compute"
output = { token = "tok-a" }
secret_fields = ["token"]
[[steps]]
id = "gate"
kind = "fail"
fail = { first = 1, class = "transient" }
[[steps]]
id = "call"
kind = "compute"
after = ["a", "gate"]
output = { auth = "{{a.token}}" }
"#;

async fn null_output_raw_is_a_miss_and_redacted_never_flows_downstream(db: &TestDb) {
    let reg = registry(&[USES_SECRET]);
    let h = db.open().await;
    let run = engine_with(&h, &reg, fast("pod-a"))
        .await
        .submit("uses", json!({}), None)
        .await
        .unwrap();
    run_until_parked(db, &reg, &run.id, "gate").await;
    // As if `a` had been written before the output_raw column existed.
    h.exec("UPDATE steps SET output_raw = NULL WHERE node_id = 'a'")
        .await;

    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let lookup = b
        .authority
        .outputs(&run.id, &["a".into()], FallbackSource::Predecessors)
        .await;
    assert!(
        lookup.found.is_empty(),
        "a NULL raw output is a miss, not a null hit"
    );
    assert_eq!(lookup.missing, vec!["a".to_string()]);
    assert_eq!(
        hb.store
            .metrics()
            .fallback(FallbackSource::Predecessors, FallbackOutcome::Miss),
        1
    );

    let out = b
        .run(&run.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Failed));
    let run_after = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert!(
        run_after
            .error
            .as_deref()
            .unwrap_or("")
            .contains("predecessor output unavailable: a"),
        "{:?}",
        run_after.error
    );
    // `call` never executed, so nothing (redacted or not) reached it.
    let effects = h.store.effects(&run.id).await.unwrap();
    assert!(effects.iter().all(|e| e.node_id != "call"));
    let raw = h
        .store
        .step_outputs_raw(&run.id, &["call".into()])
        .await
        .unwrap();
    assert!(raw.is_empty());
}

async fn db_fallback_off_fails_a_step_missing_predecessors_and_flipping_it_on_takes_effect_live(
    db: &TestDb,
) {
    let reg = registry(&[FAN_IN]);
    let h = db.open().await;
    let setup = engine_with(&h, &reg, fast("pod-a")).await;
    let r1 = setup.submit("fan", json!({}), None).await.unwrap();
    let r2 = setup.submit("fan", json!({}), None).await.unwrap();
    run_until_parked(db, &reg, &r1.id, "gate").await;
    run_until_parked(db, &reg, &r2.id, "gate").await;

    switches::set(
        h.store.as_ref(),
        AUTHORITY_DB_FALLBACK,
        false,
        "test",
        "shed DB load",
    )
    .await
    .unwrap();
    // pod-b boots, reads the switch, and keeps watching it.
    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let cancel = CancellationToken::new();
    let watcher = b.switches.spawn_watcher(hb.store.clone(), cancel.clone());
    assert!(!b.switches.db_fallback());

    let out = b
        .run(&r1.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    // a, b and c succeeded on pod-a (outputs in the store), but pod-b's
    // tracker has only gate: the fan-in must not run on missing inputs.
    assert_eq!(out, RunOutcome::Finished(RunState::Failed));
    let failed = h.store.get_run(&r1.id).await.unwrap().unwrap();
    assert_eq!(
        failed.error.as_deref(),
        Some(
            "step merge: predecessor outputs unavailable: a, b, c are not in this process and \
             authority.db_fallback is off (turn it on to read them from the store)"
        )
    );
    assert_eq!(
        step_status(&h, &r1.id, "merge").await,
        None,
        "no attempt of the fan-in was spent"
    );
    assert!(
        !h.store
            .effects(&r1.id)
            .await
            .unwrap()
            .iter()
            .any(|e| e.node_id == "merge"),
        "the fan-in's body never ran"
    );
    let queries = || {
        hb.store
            .stats()
            .output_raw_queries
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(queries(), 0, "no DB lookup with the switch off");
    assert_eq!(hb.store.metrics().fallback_queries(), 0);
    assert_eq!(
        hb.store
            .metrics()
            .fallback(FallbackSource::Predecessors, FallbackOutcome::Disabled),
        1
    );
    let merged = h
        .store
        .step_outputs_raw(&r1.id, &["merge".into()])
        .await
        .unwrap();
    assert!(merged.is_empty(), "no fan-in output on nulls: {merged:?}");

    switches::set(
        h.store.as_ref(),
        AUTHORITY_DB_FALLBACK,
        true,
        "test",
        "DB healthy again",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    wait_for("the watcher to see the flip", || async {
        b.switches.db_fallback()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "seen within a second or so"
    );

    let out = b
        .run(&r2.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    assert_eq!(
        queries(),
        1,
        "same process, no restart: the DB path is back"
    );
    let merged = h
        .store
        .step_outputs_raw(&r2.id, &["merge".into()])
        .await
        .unwrap();
    assert_eq!(merged["merge"]["a"]["token"], "tok-a");
    assert_eq!(merged["merge"]["b"]["token"], "tok-b");
    assert_eq!(merged["merge"]["c"]["n"], 3);

    let audit = h.store.switch_audit(AUTHORITY_DB_FALLBACK).await.unwrap();
    let trail: Vec<_> = audit
        .iter()
        .map(|a| (a.old, a.new, a.who.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(
        trail,
        vec![
            (None, false, "test", "shed DB load"),
            (Some(false), true, "test", "DB healthy again")
        ]
    );
    cancel.cancel();
    watcher.await.unwrap();
}

// Issue 14 item 3: a value taken from a secret stays secret in every copy
// shown to people, with no re-declaration.

const SECRET_TEMPLATES: &str = r#"
name = "secret-templates"
[[steps]]
id = "creds"
kind = "compute"
output = { api_key = "sk-live-1", user = "ann", n = 7 }
secret_fields = ["api_key"]
[[steps]]
id = "call"
kind = "compute"
after = ["creds"]
output = { header = "Bearer {{creds.api_key}}", key = "{{creds.api_key}}", who = "{{creds.user}}", label = "{{creds.user}}#{{creds.n}}", all = "{{creds}}" }
[[steps]]
id = "relay"
kind = "compute"
after = ["call"]
output = { again = "{{call.header}}", user = "{{call.all.user}}" }
"#;

/// Everything a person can be shown about a run: the run record (API,
/// CLI, console, chaos history) and every step's stored (redacted) output.
async fn shown_copies(h: &Handle, run_id: &str) -> String {
    let run = h.store.get_run(run_id).await.unwrap().unwrap();
    let outputs: Vec<Value> = h
        .store
        .steps(run_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|s| s.output)
        .collect();
    format!(
        "{} {}",
        serde_json::to_string(&run).unwrap(),
        json!(outputs)
    )
}

async fn a_value_templated_from_a_secret_stays_redacted_downstream(db: &TestDb) {
    let reg = registry(&[SECRET_TEMPLATES]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("secret-templates", json!({}), None).await.unwrap();
    let out = e
        .run(&run.id, None, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    let raw = h
        .store
        .step_outputs_raw(&run.id, &["call".into(), "relay".into()])
        .await
        .unwrap();
    assert_eq!(
        raw["call"],
        json!({
            "header": "Bearer sk-live-1",
            "key": "sk-live-1",
            "who": "ann",
            "label": "ann#7",
            "all": {"api_key": "sk-live-1", "user": "ann", "n": 7}
        }),
        "templates inside longer strings are filled; execution reads raw values"
    );
    assert_eq!(
        raw["relay"],
        json!({"again": "Bearer sk-live-1", "user": "ann"})
    );
    let steps = h.store.steps(&run.id).await.unwrap();
    let shown = |node: &str| {
        steps
            .iter()
            .find(|s| s.node_id == node)
            .and_then(|s| s.output.clone())
            .unwrap()
    };
    assert_eq!(
        shown("call"),
        json!({
            "header": REDACTED,
            "key": REDACTED,
            "who": "ann",
            "label": "ann#7",
            "all": {"api_key": REDACTED, "user": "ann", "n": 7}
        }),
        "derived from a secret: redacted with no re-declaration; the rest shown"
    );
    assert_eq!(
        shown("relay"),
        json!({"again": REDACTED, "user": "ann"}),
        "secrecy follows the value through a second template"
    );
    let all = shown_copies(&h, &run.id).await;
    assert!(!all.contains("sk-live"), "{all}");
}

const SECRET_STATE: &str = r#"
name = "secret-state"
[[steps]]
id = "creds"
kind = "compute"
output = { api_key = "sk-live-2" }
secret_fields = ["api_key"]
[[steps]]
id = "save"
kind = "mutate"
after = ["creds"]
set = { auth = "Bearer {{creds.api_key}}", account = { pin = "pin-4321", owner = "ann" }, note = "hi" }
secret_fields = ["account.pin"]
[[steps]]
id = "gate"
kind = "fail"
after = ["save"]
fail = { first = 1, class = "transient" }
[[steps]]
id = "later"
kind = "mutate"
after = ["gate"]
set = { note = "bye" }
"#;

async fn mutate_secrets_are_redacted_in_run_state_and_survive_a_resume(db: &TestDb) {
    let reg = registry(&[SECRET_STATE]);
    let h = db.open().await;
    let run = engine_with(&h, &reg, fast("pod-a"))
        .await
        .submit("secret-state", json!({}), None)
        .await
        .unwrap();
    run_until_parked(db, &reg, &run.id, "gate").await;
    let parked = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(
        parked.run_state,
        json!({"auth": REDACTED, "account": {"pin": REDACTED, "owner": "ann"}, "note": "hi"}),
        "declared and derived state secrets are redacted in the shown copy"
    );
    // Another process finishes the run from the stored copies.
    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let out = b
        .run(&run.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    let done = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(
        done.run_state,
        json!({"auth": REDACTED, "account": {"pin": REDACTED, "owner": "ann"}, "note": "bye"})
    );
    let (shown, raw) = h.store.run_state_copies(&run.id).await.unwrap().unwrap();
    assert_eq!(shown, done.run_state);
    assert_eq!(
        raw,
        json!({"auth": "Bearer sk-live-2", "account": {"pin": "pin-4321", "owner": "ann"}, "note": "bye"}),
        "the raw copy (engine only) keeps the values across the resume"
    );
    let all = shown_copies(&h, &run.id).await;
    assert!(
        !all.contains("sk-live") && !all.contains("pin-4321"),
        "{all}"
    );
}

const MUTATES: &str = r#"
name = "mutates"
[[steps]]
id = "first"
kind = "mutate"
set = { x = 1 }
[[steps]]
id = "second"
kind = "mutate"
after = ["first"]
set = { x = 2, y = 3 }
max_retries = 1
fail = { first = 2, class = "transient" }
"#;

async fn failing_step_commits_no_output_and_leaves_run_state_as_before(db: &TestDb) {
    let reg = registry(&[MUTATES]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("mutates", json!({}), None).await.unwrap();
    let out = e
        .run(&run.id, None, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Failed));
    let after = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(
        after.run_state,
        json!({"x": 1}),
        "second's mutation was rolled back"
    );
    let steps = h.store.steps(&run.id).await.unwrap();
    let second = steps.iter().find(|s| s.node_id == "second").unwrap();
    assert_eq!(second.status, StepStatus::Failed);
    assert_eq!(second.output, None, "a failed step commits no output");
    assert_eq!(second.attempts, 2);
    assert!(
        h.store
            .step_outputs_raw(&run.id, &["second".into()])
            .await
            .unwrap()
            .is_empty()
    );
    let first = steps.iter().find(|s| s.node_id == "first").unwrap();
    assert_eq!(first.status, StepStatus::Succeeded);
}

const FLAKY: &str = r#"
name = "flaky"
[[steps]]
id = "flaky"
kind = "sleep"
ms = 3
max_retries = 3
fail = { first = 1000, class = "transient" }
"#;

async fn crash_between_attempts_never_exceeds_max_retries_plus_one(db: &TestDb) {
    let reg = registry(&[FLAKY]);
    let h = db.open().await;
    let run = engine_with(&h, &reg, fast("pod-0"))
        .await
        .submit("flaky", json!({}), None)
        .await
        .unwrap();
    // Kill the executor at arbitrary points, again and again, each time
    // resuming on a fresh process that claims the run from the dead one.
    let mut owner: Option<String> = None;
    let mut kills = 0;
    for i in 0..200 {
        let state = h.store.get_run(&run.id).await.unwrap().unwrap().state;
        if state.is_terminal() {
            break;
        }
        let pod = format!("pod-{i}");
        let hx = db.open().await;
        let e = Arc::new(engine_with(&hx, &reg, fast(&pod)).await);
        let task = {
            let (e, id, prev) = (e.clone(), run.id.clone(), owner.clone());
            tokio::spawn(async move { e.run(&id, prev.as_deref(), CancellationToken::new()).await })
        };
        tokio::time::sleep(Duration::from_millis(rand_ms(i))).await;
        task.abort();
        match task.await {
            // A killed claimer's COMMIT may land after we looked: the next
            // survivor's compare-and-set then loses, as it must. Look again.
            Ok(Err(vigil::engine::EngineError::Store(StoreError::ClaimLost { .. }))) => {}
            Ok(res) => {
                res.unwrap();
            }
            Err(_) => kills += 1,
        }
        owner = h.store.get_run(&run.id).await.unwrap().unwrap().owner_pod;
    }
    assert!(kills > 0, "the test must actually crash executors");
    let hx = db.open().await;
    let e = engine_with(&hx, &reg, fast("pod-final")).await;
    // The last killed claimer's COMMIT may still land after `owner` was
    // read: then this claim loses its compare-and-set, as it must; read the
    // owner again and retry.
    for _ in 0..20 {
        let r = h.store.get_run(&run.id).await.unwrap().unwrap();
        if r.state.is_terminal() {
            break;
        }
        match e
            .run(&run.id, r.owner_pod.as_deref(), CancellationToken::new())
            .await
        {
            Err(vigil::engine::EngineError::Store(StoreError::ClaimLost { .. })) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out => {
                assert_eq!(out.unwrap(), RunOutcome::Finished(RunState::Failed));
                break;
            }
        }
    }
    let executions = h.store.effects(&run.id).await.unwrap().len();
    assert!(
        executions <= 4,
        "{executions} executions > max_retries + 1 = 4 after {kills} kills"
    );
    let (status, attempts) = step_status(&h, &run.id, "flaky").await.unwrap();
    assert_eq!((status, attempts), (StepStatus::Failed, 4));
}

fn rand_ms(i: i32) -> u64 {
    // Deterministic spread of kill points over 0..25 ms.
    u64::try_from((i * 7919) % 25).unwrap_or(0)
}

const CLASSES: [&str; 2] = [
    r#"
name = "permanent"
[[steps]]
id = "s"
kind = "fail"
max_retries = 3
fail = { first = 100, class = "permanent" }
"#,
    r#"
name = "transient"
[[steps]]
id = "s"
kind = "fail"
max_retries = 3
fail = { first = 2, class = "transient" }
"#,
];

async fn permanent_error_is_attempted_once_and_transient_is_retried(db: &TestDb) {
    let reg = registry(&CLASSES);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let p = e.submit("permanent", json!({}), None).await.unwrap();
    let out = e.run(&p.id, None, CancellationToken::new()).await.unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Failed));
    assert_eq!(
        h.store.effects(&p.id).await.unwrap().len(),
        1,
        "permanent: never retried"
    );
    let err = h
        .store
        .get_run(&p.id)
        .await
        .unwrap()
        .unwrap()
        .error
        .unwrap();
    assert!(err.contains("permanent error on attempt 1"), "{err}");

    let t = e.submit("transient", json!({}), None).await.unwrap();
    let out = e.run(&t.id, None, CancellationToken::new()).await.unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    assert_eq!(
        h.store.effects(&t.id).await.unwrap().len(),
        3,
        "two transient failures, then success"
    );
    assert_eq!(e.metrics.attempts("failed_transient"), 2);
    assert_eq!(e.metrics.attempts("failed_permanent"), 1);
}

const ONE: &str = r#"
name = "one"
[[steps]]
id = "s"
kind = "fail"
"#;

const ONE_LATE: &str = r#"
name = "one-late"
late_completion = "accept"
[[steps]]
id = "s"
kind = "fail"
"#;

fn ctx(reason: &str) -> TransitionCtx {
    TransitionCtx {
        reason: reason.into(),
        ..Default::default()
    }
}

async fn every_illegal_transition_is_rejected_typed_and_counted(db: &TestDb) {
    use vigil::engine::run::{LateCompletion, is_allowed};
    let reg = registry(&[ONE, ONE_LATE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    for from in RunState::ALL {
        for to in RunState::ALL {
            let run = e.submit("one", json!({}), None).await.unwrap();
            // Bring the run to `from`.
            if from != RunState::Pending {
                h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
            }
            if from != RunState::Pending && from != RunState::Running {
                h.store
                    .transition(&run.id, from, &ctx("setup"))
                    .await
                    .unwrap();
            }
            let before = h.store.metrics().rejected(from.as_str(), to.as_str());
            let res = h.store.transition(&run.id, to, &ctx("probe")).await;
            if is_allowed(from, to, LateCompletion::Reject) {
                let rec = res.unwrap_or_else(|e| panic!("{from} -> {to} should be allowed: {e}"));
                assert_eq!((rec.from, rec.to, rec.late), (from, to, false));
                continue;
            }
            let err = res.expect_err(&format!("{from} -> {to} must be rejected"));
            match (&err, from.is_terminal()) {
                (StoreError::AlreadyTerminal { state, .. }, true) => assert_eq!(*state, from),
                (StoreError::IllegalTransition { from: f, to: t, .. }, false) => {
                    assert_eq!((*f, *t), (from, to))
                }
                _ => panic!("{from} -> {to}: wrong error {err:?}"),
            }
            // Every rejection is counted, but a cancel of a run already
            // cancelled: an operator repeating themselves, not a ghost.
            let repeated_cancel = from == RunState::Cancelled && to == RunState::Cancelled;
            assert_eq!(
                h.store.metrics().rejected(from.as_str(), to.as_str()),
                before + u64::from(!repeated_cancel),
                "{from} -> {to}"
            );
            let now = h.store.get_run(&run.id).await.unwrap().unwrap();
            assert_eq!(now.state, from, "a rejected change changes nothing");
        }
    }

    // lost -> succeeded: rejected by default, accepted and logged `late` by policy.
    let strict = e.submit("one", json!({}), None).await.unwrap();
    h.store
        .transition(&strict.id, RunState::Lost, &ctx("janitor"))
        .await
        .unwrap();
    let err = h
        .store
        .transition(&strict.id, RunState::Succeeded, &ctx("late run:complete"))
        .await;
    assert!(
        matches!(
            err,
            Err(StoreError::AlreadyTerminal {
                state: RunState::Lost,
                ..
            })
        ),
        "{err:?}"
    );
    let lenient = e.submit("one-late", json!({}), None).await.unwrap();
    h.store
        .transition(&lenient.id, RunState::Lost, &ctx("janitor"))
        .await
        .unwrap();
    let rec = h
        .store
        .transition(&lenient.id, RunState::Succeeded, &ctx("late run:complete"))
        .await
        .unwrap();
    assert!(rec.late);
    let log = h.store.transitions(&lenient.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (last.from, last.to, last.late),
        (RunState::Lost, RunState::Succeeded, true)
    );
    assert!(
        last.reason
            .starts_with("late completion accepted by policy"),
        "{}",
        last.reason
    );
    // ... and still only once: succeeded is terminal.
    let again = h
        .store
        .transition(&lenient.id, RunState::Succeeded, &ctx("dup"))
        .await;
    assert!(matches!(again, Err(StoreError::AlreadyTerminal { .. })));
}

async fn concurrent_writers_racing_on_one_transition_exactly_one_wins(db: &TestDb) {
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let h2 = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    for round in 0..15 {
        let run = e.submit("one", json!({}), None).await.unwrap();
        let claim = h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
        let (s1, s2) = (h.store.clone(), h2.store.clone());
        let (id1, id2) = (run.id.clone(), run.id.clone());
        let c = TransitionCtx {
            expected_epoch: Some(claim.epoch),
            ..ctx("race")
        };
        let c2 = c.clone();
        let targets = if round % 2 == 0 {
            (RunState::Succeeded, RunState::Failed)
        } else {
            (RunState::Succeeded, RunState::Succeeded)
        };
        let t1 = tokio::spawn(async move { s1.transition(&id1, targets.0, &c).await });
        let t2 = tokio::spawn(async move { s2.transition(&id2, targets.1, &c2).await });
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        let wins = [r1.is_ok(), r2.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(wins, 1, "round {round}: {r1:?} / {r2:?}");
        let loser = if r1.is_ok() { r2 } else { r1 };
        assert!(
            matches!(loser, Err(StoreError::AlreadyTerminal { .. })),
            "{loser:?}"
        );
        let log = h.store.transitions(&run.id).await.unwrap();
        assert_eq!(
            log.len(),
            2,
            "pending->running plus exactly one terminal transition"
        );
    }
}

const SLOW_STREAM: &str = r#"
name = "slow-stream"
deadline_ms = 400
[[steps]]
id = "stream"
kind = "emit"
chunks = 1000
interval_ms = 10
"#;

async fn run_past_its_deadline_ends_timed_out_and_nothing_is_written_after(db: &TestDb) {
    let reg = registry(&[SLOW_STREAM]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("slow-stream", json!({}), None).await.unwrap();
    let out = e
        .run(&run.id, None, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::TimedOut));
    let log = h.store.transitions(&run.id).await.unwrap();
    let end = log.last().unwrap();
    assert_eq!((end.from, end.to), (RunState::Running, RunState::TimedOut));
    let chunks = h.store.chunks(&run.id).await.unwrap();
    assert!(
        !chunks.is_empty() && chunks.len() < 1000,
        "{} chunks",
        chunks.len()
    );
    // Let any straggler try; then nothing may be newer than the transition.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = h.store.chunks(&run.id).await.unwrap();
    assert_eq!(after.len(), chunks.len(), "no chunk after timed_out");
    assert!(after.iter().all(|c| c.at_ms <= end.at_ms));
    for s in h.store.steps(&run.id).await.unwrap() {
        assert!(
            s.updated_at_ms <= end.at_ms,
            "step {} written after timed_out",
            s.node_id
        );
    }
    // A zombie holding the old epoch is fenced off.
    let zombie = h
        .store
        .append_chunk(&run.id, end.epoch, 10_000, None, "late")
        .await;
    assert!(
        matches!(
            zombie,
            Err(StoreError::Fenced {
                state: RunState::TimedOut,
                ..
            })
        ),
        "{zombie:?}"
    );
    assert!(h.store.metrics().fenced("chunk") >= 1);
}

async fn idempotency_key_returns_the_same_run(db: &TestDb) {
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let a = e
        .submit("one", json!({"n": 1}), Some("key-1".into()))
        .await
        .unwrap();
    let b = e
        .submit("one", json!({"n": 2}), Some("key-1".into()))
        .await
        .unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(b.input, json!({"n": 1}), "the first submission wins");
    let c = e.submit("one", json!({}), None).await.unwrap();
    assert_ne!(a.id, c.id);
    let unknown = e
        .submit("nope", json!({}), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("unknown workflow \"nope\"") && unknown.contains("one"),
        "{unknown}"
    );
}

async fn a_run_submitted_claimed_is_created_running_with_its_first_attempt(db: &TestDb) {
    use vigil::engine::settings::{self, RUNS_MAX_DEADLINE_MS};
    let reg = registry(&[ONE, HANG_LONG_DEADLINE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    settings::set(h.store.as_ref(), RUNS_MAX_DEADLINE_MS, 5000, "ops", "test")
        .await
        .unwrap();
    // Created, claimed and the first attempt started, all in one commit.
    let (run, fresh) = e
        .submit_claimed("hang-long", json!({"n": 1}), Some("key-c".into()))
        .await
        .unwrap();
    let fresh = fresh.expect("created here, so claimed here");
    assert_eq!(
        (run.state, run.owner_pod.as_deref(), run.epoch),
        (RunState::Running, Some("pod-a"), 1)
    );
    assert_eq!(fresh.epoch, 1);
    assert_eq!(
        fresh.first,
        Some(("wait".to_owned(), BeginAttempt::Started { attempt: 1 }))
    );
    assert_eq!(run.input, json!({"n": 1}));
    assert_eq!(
        run.deadline_at_ms.map(|d| d - run.created_at_ms),
        Some(5000),
        "the store caps the deadline as for any run"
    );
    assert_eq!(run, h.store.get_run(&run.id).await.unwrap().unwrap());
    let log: Vec<_> = h
        .store
        .transitions(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.from, t.to, t.epoch, t.pod, t.reason))
        .collect();
    assert_eq!(
        log,
        vec![(
            RunState::Pending,
            RunState::Running,
            1,
            Some("pod-a".to_owned()),
            "claimed".to_owned()
        )]
    );
    let claims = h.store.claims(&run.id).await.unwrap();
    assert_eq!(
        claims
            .iter()
            .map(|c| (c.from_pod.clone(), c.to_pod.as_str(), c.epoch))
            .collect::<Vec<_>>(),
        vec![(None, "pod-a", 1)]
    );
    assert_eq!(
        step_status(&h, &run.id, "wait").await,
        Some((StepStatus::Running, 1))
    );
    let effects = h.store.effects(&run.id).await.unwrap();
    assert_eq!(
        effects
            .iter()
            .map(|x| (x.node_id.as_str(), x.attempt, x.epoch, x.pod.as_str()))
            .collect::<Vec<_>>(),
        vec![("wait", 1, 1, "pod-a")]
    );
    // The same key again: the first run, as it is, and nothing claimed.
    let (again, fresh) = e
        .submit_claimed("hang-long", json!({"n": 2}), Some("key-c".into()))
        .await
        .unwrap();
    assert!(fresh.is_none());
    assert_eq!(again, h.store.get_run(&run.id).await.unwrap().unwrap());
    // A workflow nobody knows: refused, nothing written.
    let unknown = e.submit_claimed("nope", json!({}), None).await.unwrap_err();
    assert!(
        unknown.to_string().contains("unknown workflow"),
        "{unknown}"
    );
    // Without a key, a new run each time; ONE's first step is started too.
    let (one, fresh) = e.submit_claimed("one", json!({}), None).await.unwrap();
    assert_ne!(one.id, run.id);
    assert_eq!(
        fresh.unwrap().first,
        Some(("s".to_owned(), BeginAttempt::Started { attempt: 1 }))
    );
}

async fn claims_are_compare_and_set_and_stale_epochs_are_fenced(db: &TestDb) {
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("one", json!({}), None).await.unwrap();
    let first = h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    assert_eq!(first.from, RunState::Pending);
    // Two survivors race to claim pod-a's run: exactly one wins.
    let (s1, s2) = (h.store.clone(), db.open().await.store);
    let (i1, i2) = (run.id.clone(), run.id.clone());
    let t1 = tokio::spawn(async move { s1.claim_run(&i1, "pod-b", Some("pod-a")).await });
    let t2 = tokio::spawn(async move { s2.claim_run(&i2, "pod-c", Some("pod-a")).await });
    let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
    assert_eq!(r1.is_ok() as u8 + r2.is_ok() as u8, 1, "{r1:?} {r2:?}");
    let (loser, loser_pod) = if r1.is_ok() {
        (&r2, "pod-c")
    } else {
        (&r1, "pod-b")
    };
    // On PostgreSQL a claim meeting the winner's row lock does not wait
    // (NOWAIT): it is told the row is busy, and its next try is refused.
    let retried;
    let loser = match loser {
        Err(e) if e.is_lock_busy() => {
            retried = h.store.claim_run(&run.id, loser_pod, Some("pod-a")).await;
            &retried
        }
        other => other,
    };
    assert!(
        matches!(loser, Err(StoreError::ClaimLost { .. })),
        "{loser:?}"
    );
    let second = r1.as_ref().or(r2.as_ref()).unwrap();
    assert_eq!(second.epoch, first.epoch + 1);
    // pod-a wakes up and writes with its old epoch: every kind is fenced.
    let stale = first.epoch;
    let chunk = h
        .store
        .append_chunk(&run.id, stale, 0, None, "zombie")
        .await;
    assert!(matches!(chunk, Err(StoreError::Fenced { .. })), "{chunk:?}");
    let attempt = h.store.begin_attempt(&run.id, "s", stale, 3, "p").await;
    assert!(
        matches!(attempt, Err(StoreError::Fenced { .. })),
        "{attempt:?}"
    );
    let done = h
        .store
        .transition(
            &run.id,
            RunState::Succeeded,
            &TransitionCtx {
                expected_epoch: Some(stale),
                ..ctx("zombie completion")
            },
        )
        .await;
    assert!(matches!(done, Err(StoreError::Fenced { .. })), "{done:?}");
    assert_eq!(
        h.store.get_run(&run.id).await.unwrap().unwrap().state,
        RunState::Running
    );
    assert!(h.store.chunks(&run.id).await.unwrap().is_empty());
    // A stale executor driving the run stops as fenced, without writing.
    let out = e
        .drive(&run.id, stale, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Fenced);
}

async fn corrupt_rows_are_named_not_swallowed(db: &TestDb) {
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("one", json!({}), None).await.unwrap();
    h.exec("UPDATE runs SET input = '{not json' WHERE workflow = 'one'")
        .await;
    let err = h.store.get_run(&run.id).await.unwrap_err().to_string();
    assert!(
        err.contains("corrupt row in runs") && err.contains(&run.id) && err.contains("input"),
        "{err}"
    );
}

async fn concurrent_lookups_of_the_same_key_share_one_query(db: &TestDb) {
    let reg = registry(&[FAN_IN]);
    let h = db.open().await;
    let run = engine_with(&h, &reg, fast("pod-a"))
        .await
        .submit("fan", json!({}), None)
        .await
        .unwrap();
    run_until_parked(db, &reg, &run.id, "gate").await;
    let hb = db.open().await;
    let b = Arc::new(engine_with(&hb, &reg, fast("pod-b")).await);
    let keys: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (b, id, keys) = (b.clone(), run.id.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            b.authority
                .outputs(&id, &keys, FallbackSource::Predecessors)
                .await
        }));
    }
    for t in tasks {
        let l = t.await.unwrap();
        assert_eq!(l.found.len(), 3, "{l:?}");
    }
    let q = hb
        .store
        .stats()
        .output_raw_queries
        .load(std::sync::atomic::Ordering::SeqCst);
    // Lookups that start after the first batch completed hit the tracker;
    // ones that overlap it join it. Either way: far fewer than 16.
    assert_eq!(q, 1, "16 concurrent lookups, {q} queries");
}

/// A local HTTP service: /ok answers JSON, /flaky fails twice with 503,
/// /bad answers 400.
async fn http_service() -> String {
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let flaky = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(|body: String| async move {
                axum::Json(
                    json!({"echo": serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)}),
                )
            }),
        )
        .route(
            "/flaky",
            axum::routing::get(move || {
                let n = flaky.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy")
                    } else {
                        (StatusCode::OK, "fine")
                    }
                }
            }),
        )
        .route(
            "/bad",
            axum::routing::get(|| async { (StatusCode::BAD_REQUEST, "no") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn http_steps_classify_status_codes(db: &TestDb) {
    let base = http_service().await;
    let wf = |name: &str, path: &str, method: &str, extra: &str| {
        format!(
            "name = \"{name}\"\n[[steps]]\nid = \"key\"\nkind = \"compute\"\noutput = {{ k = \"s3cret\" }}\nsecret_fields = [\"k\"]\n[[steps]]\nid = \"call\"\nkind = \"http\"\nafter = [\"key\"]\nurl = \"{base}{path}\"\nmethod = \"{method}\"\nmax_retries = 3\n{extra}"
        )
    };
    let ok = wf("ok", "/ok", "POST", "body = { token = \"{{key.k}}\" }\n");
    let flaky = wf("flaky", "/flaky", "GET", "");
    let bad = wf("bad", "/bad", "GET", "");
    let reg = registry(&[&ok, &flaky, &bad]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;

    let r = e.submit("ok", json!({}), None).await.unwrap();
    assert_eq!(
        e.run(&r.id, None, CancellationToken::new()).await.unwrap(),
        RunOutcome::Finished(RunState::Succeeded)
    );
    let raw = h
        .store
        .step_outputs_raw(&r.id, &["call".into()])
        .await
        .unwrap();
    assert_eq!(
        raw["call"],
        json!({"status": 200, "body": {"echo": {"token": "s3cret"}}}),
        "the service got the raw secret"
    );

    let r = e.submit("flaky", json!({}), None).await.unwrap();
    assert_eq!(
        e.run(&r.id, None, CancellationToken::new()).await.unwrap(),
        RunOutcome::Finished(RunState::Succeeded)
    );
    assert_eq!(
        step_status(&h, &r.id, "call").await,
        Some((StepStatus::Succeeded, 3)),
        "503 is transient"
    );

    let r = e.submit("bad", json!({}), None).await.unwrap();
    assert_eq!(
        e.run(&r.id, None, CancellationToken::new()).await.unwrap(),
        RunOutcome::Finished(RunState::Failed)
    );
    assert_eq!(
        step_status(&h, &r.id, "call").await,
        Some((StepStatus::Failed, 1)),
        "400 is permanent"
    );
}

async fn authority_contains_store_errors_evicts_and_recovers(db: &TestDb) {
    let reg = registry(&[FAN_IN]);
    let h = db.open().await;
    let run = engine_with(&h, &reg, fast("pod-a"))
        .await
        .submit("fan", json!({}), None)
        .await
        .unwrap();
    run_until_parked(db, &reg, &run.id, "gate").await;
    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let keys: Vec<String> = vec!["a".into(), "b".into()];
    // A real store error: the column the lookup reads is gone.
    h.exec("ALTER TABLE steps RENAME COLUMN output_raw TO output_raw_gone")
        .await;
    let l = b
        .authority
        .outputs(&run.id, &keys, FallbackSource::Predecessors)
        .await;
    assert!(l.errored && l.found.is_empty(), "{l:?}");
    assert_eq!(l.missing, keys);
    assert_eq!(
        hb.store
            .metrics()
            .fallback(FallbackSource::Predecessors, FallbackOutcome::Error),
        1
    );
    assert!(
        !b.authority.tracked(&run.id, "a"),
        "nothing half-known stays cached"
    );
    h.exec("ALTER TABLE steps RENAME COLUMN output_raw_gone TO output_raw")
        .await;
    let l = b
        .authority
        .outputs(&run.id, &keys, FallbackSource::Predecessors)
        .await;
    assert!(!l.errored && l.missing.is_empty(), "{l:?}");
    assert_eq!(l.found["a"]["token"], "tok-a");
    assert!(
        b.authority.tracked(&run.id, "a"),
        "hydrated into the tracker"
    );
}

const SYNC_RUN: &str = r#"
name = "sync-run"
lane = "sync"
[[steps]]
id = "s"
kind = "sleep"
ms = 1
"#;

async fn reaper_retries_atomically_and_never_beside_an_active_sibling(db: &TestDb) {
    let reg = registry(&[SYNC_RUN]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let _live = common::register_pod(&h, "pod-a").await;
    let stale = e.submit("sync-run", json!({"n": 1}), None).await.unwrap();
    let lonely = e.submit("sync-run", json!({"n": 2}), None).await.unwrap();
    let healthy = e.submit("sync-run", json!({"n": 3}), None).await.unwrap();
    for r in [&stale, &lonely, &healthy] {
        h.store.claim_run(&r.id, "pod-a", None).await.unwrap();
        assert_eq!(r.heartbeat_timeout_ms, Some(5000), "sync heartbeats");
    }
    // Two runs went silent long ago; `stale` already has an active retry.
    h.exec_owned(format!(
        "UPDATE runs SET heartbeat_at = 0, retries_left = 1 WHERE id IN ('{}', '{}')",
        stale.id, lonely.id
    ))
    .await;
    let sibling = e.submit("sync-run", json!({"n": 1}), None).await.unwrap();
    h.exec_owned(format!(
        "UPDATE runs SET family = '{}' WHERE id = '{}'",
        stale.id, sibling.id
    ))
    .await;

    let report = h.store.reap_stale("reaper-test").await.unwrap();
    let mut timed_out: Vec<_> = report.timed_out.iter().map(|(id, _)| id.clone()).collect();
    timed_out.sort();
    let mut want = vec![stale.id.clone(), lonely.id.clone()];
    want.sort();
    assert_eq!(timed_out, want, "only the silent runs");
    assert_eq!(
        report.retried.len(),
        1,
        "no retry beside an active sibling: {report:?}"
    );
    let (retry_id, lane, of) = &report.retried[0];
    assert_eq!((lane.as_str(), of.as_str()), ("sync", lonely.id.as_str()));
    let retry = h.store.get_run(retry_id).await.unwrap().unwrap();
    assert_eq!((retry.state, retry.retries_left), (RunState::Pending, 0));
    assert_eq!(retry.family.as_deref(), Some(lonely.id.as_str()));
    assert_eq!(retry.input, json!({"n": 2}));
    for id in [&stale.id, &lonely.id] {
        let log = h.store.transitions(id).await.unwrap();
        assert_eq!(
            log.last().map(|t| (t.from, t.to)),
            Some((RunState::Running, RunState::TimedOut))
        );
    }
    assert_eq!(
        h.store.get_run(&healthy.id).await.unwrap().unwrap().state,
        RunState::Running
    );
    // A second pass finds nothing: the statement is not repeatable damage.
    assert_eq!(
        h.store.reap_stale("reaper-test").await.unwrap(),
        Default::default()
    );
}

async fn a_store_from_a_newer_schema_is_refused_untouched(db: &TestDb) {
    let h = db.open().await;
    h.exec(if db.label() == "sqlite" {
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', TRUE, X'00', 0)"
    } else {
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', TRUE, '\\x00'::bytea, 0)"
    })
    .await;
    let err = vigil::engine::store::open(&db.target())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("schema version 999") && err.contains("upgrade this binary"),
        "{err}"
    );
    // Nothing was changed: the row is still there and the old handle works.
    assert!(h.store.switches().await.is_ok());
}

// Issue 13: no loss on takeover. Chunks belong to the step attempt that
// wrote them; a claim purges only what unfinished attempts streamed.

/// `(epoch, seq, node, attempt)` of every chunk of a run, in stream order.
async fn tagged(h: &Handle, run_id: &str) -> Vec<(i64, i64, Option<String>, Option<i64>)> {
    h.store
        .chunks(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.epoch, c.seq, c.node_id, c.attempt))
        .collect()
}

fn part(epoch: i64, node: &str, attempt: i64) -> StreamPartRow {
    StreamPartRow {
        epoch,
        node_id: node.into(),
        attempt,
    }
}

fn tag(epoch: i64, seq: i64, node: &str, attempt: i64) -> (i64, i64, Option<String>, Option<i64>) {
    (epoch, seq, Some(node.into()), Some(attempt))
}

/// Epoch 1 (pod-a): `intro` attempt 1 streams 2 chunks and succeeds; `body`
/// attempt 1 streams 3 and is left unfinished; one chunk without an attempt
/// (a legacy row, or one posted through the events API). Returns the run id.
async fn stream_two_steps_then_die(h: &Handle, e: &Engine) -> String {
    let run = e.submit("one", json!({}), None).await.unwrap();
    let c = h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    assert_eq!(c.epoch, 1);
    let began = h.store.begin_attempt(&run.id, "intro", 1, 3, "pod-a").await;
    assert_eq!(began.unwrap(), BeginAttempt::Started { attempt: 1 });
    for seq in 0..2 {
        h.store
            .append_chunk(&run.id, 1, seq, Some(("intro", 1)), "intro")
            .await
            .unwrap();
    }
    h.store
        .commit_step_success(StepSuccess {
            run_id: &run.id,
            node_id: "intro",
            epoch: 1,
            output: &json!({}),
            output_raw: &json!({}),
            run_state: &json!({}),
            run_state_raw: &json!({}),
            then_begin: None,
            then_succeed: None,
        })
        .await
        .unwrap();
    let began = h.store.begin_attempt(&run.id, "body", 1, 5, "pod-a").await;
    assert_eq!(began.unwrap(), BeginAttempt::Started { attempt: 1 });
    for seq in 2..5 {
        h.store
            .append_chunk(&run.id, 1, seq, Some(("body", 1)), "body")
            .await
            .unwrap();
    }
    h.store
        .append_chunk(&run.id, 1, 5, None, "legacy")
        .await
        .unwrap();
    run.id
}

async fn a_claim_keeps_succeeded_attempts_chunks_and_purges_the_rest(db: &TestDb) {
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let id = stream_two_steps_then_die(&h, &e).await;
    assert_eq!(
        h.store.kept_parts(&id, 2).await.unwrap(),
        vec![part(1, "intro", 1), part(1, "body", 1)],
        "before the claim the keep query lists every attempt-tagged part"
    );
    // pod-b takes over: intro's chunks stay; body's attempt 1 and the
    // untagged (legacy) chunk go.
    let c = h
        .store
        .claim_run(&id, "pod-b", Some("pod-a"))
        .await
        .unwrap();
    assert_eq!(c.epoch, 2);
    assert_eq!(
        tagged(&h, &id).await,
        vec![tag(1, 0, "intro", 1), tag(1, 1, "intro", 1)]
    );
    assert_eq!(
        h.store.kept_parts(&id, 2).await.unwrap(),
        vec![part(1, "intro", 1)]
    );
    assert_eq!(
        h.store.kept_parts(&id, 1).await.unwrap(),
        vec![],
        "epochs below 1 only"
    );
    // Epoch 2: body attempt 2 streams, fails transiently; attempt 3 streams
    // and succeeds. Only attempt 3 is the step's succeeded attempt.
    let began = h.store.begin_attempt(&id, "body", 2, 5, "pod-b").await;
    assert_eq!(began.unwrap(), BeginAttempt::Started { attempt: 2 });
    h.store
        .append_chunk(&id, 2, 0, Some(("body", 2)), "b2")
        .await
        .unwrap();
    h.store
        .record_step_failure(&id, "body", 2, "transient", false)
        .await
        .unwrap();
    let began = h.store.begin_attempt(&id, "body", 2, 5, "pod-b").await;
    assert_eq!(began.unwrap(), BeginAttempt::Started { attempt: 3 });
    h.store
        .append_chunk(&id, 2, 1, Some(("body", 3)), "b3")
        .await
        .unwrap();
    h.store
        .commit_step_success(StepSuccess {
            run_id: &id,
            node_id: "body",
            epoch: 2,
            output: &json!({}),
            output_raw: &json!({}),
            run_state: &json!({}),
            run_state_raw: &json!({}),
            then_begin: None,
            then_succeed: None,
        })
        .await
        .unwrap();
    let began = h.store.begin_attempt(&id, "done", 2, 3, "pod-b").await;
    assert_eq!(began.unwrap(), BeginAttempt::Started { attempt: 1 });
    h.store
        .append_chunk(&id, 2, 2, Some(("done", 1)), "d1")
        .await
        .unwrap();
    // pod-b claims its own run back (the re-drive after a store error): the
    // same purge applies to its own epoch.
    let c = h
        .store
        .claim_run(&id, "pod-b", Some("pod-b"))
        .await
        .unwrap();
    assert_eq!(c.epoch, 3);
    assert_eq!(
        tagged(&h, &id).await,
        vec![
            tag(1, 0, "intro", 1),
            tag(1, 1, "intro", 1),
            tag(2, 1, "body", 3)
        ]
    );
    assert_eq!(
        h.store.kept_parts(&id, 3).await.unwrap(),
        vec![part(1, "intro", 1), part(2, "body", 3)]
    );
}

async fn a_takeover_mid_stream_loses_no_finished_step_output(db: &TestDb) {
    let reg = registry(&[TWO_STREAMS]);
    let h = db.open().await;
    let a = engine_with(&h, &reg, fast("pod-a")).await;
    let b = engine_with(&h, &reg, fast("pod-b")).await;
    let run = a.submit("two", json!({}), None).await.unwrap();
    let cancel = CancellationToken::new();
    let id = run.id.clone();
    let a = Arc::new(a);
    let driver = {
        let (a, id, cancel) = (a.clone(), id.clone(), cancel.clone());
        tokio::spawn(async move { a.run(&id, None, cancel).await })
    };
    // pod-a "dies" in the middle of body (its ownership stays in place).
    wait_for("body to stream", || async {
        h.store
            .chunks(&id)
            .await
            .unwrap()
            .iter()
            .filter(|c| c.node_id.as_deref() == Some("body"))
            .count()
            >= 3
    })
    .await;
    cancel.cancel();
    assert_eq!(driver.await.unwrap().unwrap(), RunOutcome::Abandoned);
    let out = b
        .run(&id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    let mut want: Vec<_> = (0..3).map(|s| tag(1, s, "intro", 1)).collect();
    want.extend((0..6).map(|s| tag(2, s, "body", 2)));
    assert_eq!(tagged(&h, &id).await, want);
    let data: Vec<String> = h
        .store
        .chunks(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.data)
        .collect();
    assert_eq!(
        data.concat(),
        "i0;i1;i2;b0;b1;b2;b3;b4;b5;",
        "every chunk of both steps, once"
    );
}

#[cfg(feature = "fault-injection")]
async fn purge_finished_fault_loses_finished_steps_output(db: &TestDb) {
    use vigil::faults::{Bug, with_faults};
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let id = stream_two_steps_then_die(&h, &e).await;
    with_faults(&[Bug::PurgeFinished], async {
        h.store
            .claim_run(&id, "pod-b", Some("pod-a"))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(
        tagged(&h, &id).await,
        vec![],
        "the old purge: intro's output gone too"
    );
    assert_eq!(h.store.kept_parts(&id, 2).await.unwrap(), vec![]);
    // skip_purge still means no purge at all.
    let id = stream_two_steps_then_die(&h, &e).await;
    with_faults(&[Bug::SkipPurge], async {
        h.store
            .claim_run(&id, "pod-b", Some("pod-a"))
            .await
            .unwrap();
    })
    .await;
    assert_eq!(h.store.chunks(&id).await.unwrap().len(), 6);
}

#[cfg(feature = "fault-injection")]
async fn skip_fence_fault_lets_a_stale_owner_write_but_not_claim(db: &TestDb) {
    use vigil::faults::{Bug, with_faults};
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("one", json!({}), None).await.unwrap();
    let stale = h
        .store
        .claim_run(&run.id, "pod-a", None)
        .await
        .unwrap()
        .epoch;
    h.store
        .claim_run(&run.id, "pod-b", Some("pod-a"))
        .await
        .unwrap();
    with_faults(&[Bug::SkipFence], async {
        h.store
            .append_chunk(&run.id, stale, 0, Some(("s", 1)), "zombie")
            .await
            .unwrap();
        let began = h.store.begin_attempt(&run.id, "s", stale, 3, "pod-a").await;
        assert!(
            matches!(began, Ok(BeginAttempt::Started { .. })),
            "{began:?}"
        );
        h.store.heartbeat_run(&run.id, stale).await.unwrap();
        // Claims are not fenced by epochs but by the owner CAS: still guarded.
        let lost = h.store.claim_run(&run.id, "pod-c", Some("pod-a")).await;
        assert!(
            matches!(lost, Err(StoreError::ClaimLost { .. })),
            "{lost:?}"
        );
    })
    .await;
    // Without the fault the same writes are fenced.
    let chunk = h
        .store
        .append_chunk(&run.id, stale, 1, Some(("s", 1)), "zombie")
        .await;
    assert!(matches!(chunk, Err(StoreError::Fenced { .. })), "{chunk:?}");
    let beat = h.store.heartbeat_run(&run.id, stale).await;
    assert!(matches!(beat, Err(StoreError::Fenced { .. })), "{beat:?}");
}

#[cfg(feature = "fault-injection")]
async fn blind_survivor_fault_never_finds_a_peer_dead(db: &TestDb) {
    use vigil::faults::{Bug, with_faults};
    let h = db.open().await;
    // A registered pod with an expired lease and no advisory lock: dead on
    // both stores.
    h.exec(
        "INSERT INTO pods (pod_id, incarnation, addr, started_at, heartbeat_at, lease_until) \
         VALUES ('ghost', 'g1', NULL, 0, 0, 0)",
    )
    .await;
    let liveness = h.store.liveness();
    let ghost = liveness
        .pods()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.pod_id == "ghost")
        .unwrap();
    let blind = with_faults(
        &[Bug::BlindSurvivor],
        liveness.probe(&ghost, "prober", &|| STEADY),
    )
    .await;
    assert_eq!(blind.unwrap(), None, "the blind survivor sees it alive");
    assert!(
        liveness
            .pods()
            .await
            .unwrap()
            .iter()
            .any(|p| p.pod_id == "ghost")
    );
    let seen = liveness.probe(&ghost, "prober", &|| STEADY).await.unwrap();
    assert_eq!(seen.map(|d| d.pod_id), Some("ghost".to_owned()));
}

#[cfg(feature = "fault-injection")]
async fn double_terminal_fault_rewrites_a_success_to_failed(db: &TestDb) {
    use vigil::faults::{Bug, DOUBLE_TERMINAL_REASON, with_faults};
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("one", json!({}), None).await.unwrap();
    let out = with_faults(
        &[Bug::DoubleTerminal],
        e.run(&run.id, None, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    assert_eq!(
        h.store.get_run(&run.id).await.unwrap().unwrap().state,
        RunState::Succeeded
    );
    wait_for("the second terminal write", || async {
        h.store.get_run(&run.id).await.unwrap().unwrap().state == RunState::Failed
    })
    .await;
    let last = h.store.transitions(&run.id).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.from, last.to),
        (RunState::Succeeded, RunState::Failed)
    );
    assert_eq!(last.reason, DOUBLE_TERMINAL_REASON);
    // Without the fault the guard holds: succeeded stays succeeded.
    let run = e.submit("one", json!({}), None).await.unwrap();
    e.run(&run.id, None, CancellationToken::new())
        .await
        .unwrap();
    let again = h
        .store
        .transition(&run.id, RunState::Failed, &ctx(DOUBLE_TERMINAL_REASON))
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyTerminal { .. })),
        "{again:?}"
    );
}

const LONG_STEP: &str = r#"
name = "long"
[[steps]]
id = "crunch"
kind = "sleep"
ms = 600000
"#;

async fn janitor_measures_staleness_from_the_owners_death_not_the_last_checkpoint(db: &TestDb) {
    const LOST_AFTER: i64 = 60_000;
    let clock = clock::ManualClock::new(1_700_000_000_000);
    let h = db.open_with_clock(Arc::new(clock.clone())).await;
    let reg = registry(&[LONG_STEP]);
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("long", json!({}), None).await.unwrap();
    // A death of pod-a's previous incarnation, long before this run: not
    // when this run became an orphan.
    h.exec_owned(format!(
        "INSERT INTO pod_deaths (pod_id, incarnation, detected_by, detected_at, last_heartbeat_at) \
         VALUES ('pod-a', 'inc-0', 'pod-b', {}, {})",
        clock.now_ms() - 10 * LOST_AFTER,
        clock.now_ms() - 10 * LOST_AFTER - 500
    ))
    .await;
    h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    // pod-a works on its long step: no checkpoint for three lost_afters...
    clock.advance_ms(3 * LOST_AFTER);
    // ...then dies; a survivor records the death now (pod-a was never in
    // `pods` here, as after the survivor's probe removed its row).
    h.exec_owned(format!(
        "INSERT INTO pod_deaths (pod_id, incarnation, detected_by, detected_at, last_heartbeat_at) \
         VALUES ('pod-a', 'inc-1', 'pod-b', {}, {})",
        clock.now_ms(),
        clock.now_ms() - 500
    ))
    .await;
    let state = || async { h.store.get_run(&run.id).await.unwrap().unwrap().state };
    assert_eq!(
        h.store.mark_lost(LOST_AFTER, "pod-b").await.unwrap(),
        Vec::<String>::new(),
        "an orphan of a moment is not lost, however old its last checkpoint"
    );
    clock.advance_ms(LOST_AFTER - 1);
    assert_eq!(
        h.store.mark_lost(LOST_AFTER, "pod-b").await.unwrap(),
        Vec::<String>::new(),
        "not yet lost_after since the death"
    );
    assert_eq!(state().await, RunState::Running);
    clock.advance_ms(2);
    assert_eq!(
        h.store.mark_lost(LOST_AFTER, "pod-b").await.unwrap(),
        vec![run.id.clone()],
        "lost_after has passed since the owner's death"
    );
    assert_eq!(state().await, RunState::Lost);
    let last = h.store.transitions(&run.id).await.unwrap().pop().unwrap();
    assert_eq!((last.from, last.to), (RunState::Running, RunState::Lost));
}

/// Answers 503 to the first call and 200 after, recording the `attempt`
/// of each call it got (the executions an outside system saw).
async fn counting_service() -> (String, Arc<std::sync::Mutex<Vec<i64>>>) {
    use axum::http::StatusCode;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = axum::Router::new().route(
        "/count",
        axum::routing::post({
            let seen = seen.clone();
            move |body: String| {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let mut seen = seen.lock().unwrap();
                seen.push(v["attempt"].as_i64().unwrap_or(-1));
                let status = if seen.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                async move { (status, "{}") }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

async fn a_stop_after_a_checkpoint_spends_no_attempt_of_the_next_step(db: &TestDb) {
    let (base, seen) = counting_service().await;
    let wf = format!(
        "name = \"stop\"\n[[steps]]\nid = \"first\"\nkind = \"compute\"\noutput = {{ x = 1 }}\n\
         [[steps]]\nid = \"second\"\nkind = \"http\"\nafter = [\"first\"]\nurl = \"{base}/count\"\n\
         method = \"POST\"\nbody = {{ attempt = \"{{{{vigil.attempt}}}}\" }}\nmax_retries = 1\n"
    );
    let reg = registry(&[&wf]);
    let h = db.open().await;
    // SIGTERM right after first's checkpoint (which, pipelined, also
    // started second's attempt), before second's body.
    let stop = CancellationToken::new();
    let mut config = fast("pod-a");
    config.after_checkpoint = Some(vigil::engine::StepHook(Arc::new({
        let stop = stop.clone();
        move |_run: &str, step: &str| {
            if step == "first" {
                stop.cancel();
            }
        }
    })));
    let a = engine_with(&h, &reg, config).await;
    let run = a.submit("stop", json!({}), None).await.unwrap();
    let out = a.run(&run.id, None, stop).await.unwrap();
    assert_eq!(out, RunOutcome::Abandoned);
    assert_eq!(
        step_status(&h, &run.id, "first").await,
        Some((StepStatus::Succeeded, 1))
    );
    assert_eq!(
        step_status(&h, &run.id, "second").await,
        None,
        "no attempt of second is spent: its body never began"
    );
    let effects = |h: &Handle| {
        let store = h.store.clone();
        let id = run.id.clone();
        async move {
            store
                .effects(&id)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.node_id == "second")
                .map(|e| e.attempt)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        effects(&h).await,
        Vec::<i64>::new(),
        "no execution recorded"
    );
    assert!(seen.lock().unwrap().is_empty());

    // Resumed elsewhere, second has its whole budget: attempt 1 gets the
    // 503, attempt 2 succeeds.
    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let out = b
        .run(&run.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    assert_eq!(*seen.lock().unwrap(), vec![1, 2]);
    assert_eq!(
        step_status(&h, &run.id, "second").await,
        Some((StepStatus::Succeeded, 2))
    );
    assert_eq!(effects(&h).await, vec![1, 2]);
}

async fn a_stop_between_an_attempt_and_its_body_spends_no_attempt(db: &TestDb) {
    let (base, seen) = counting_service().await;
    let wf = format!(
        "name = \"only\"\n[[steps]]\nid = \"call\"\nkind = \"http\"\nurl = \"{base}/count\"\n\
         method = \"POST\"\nbody = {{ attempt = \"{{{{vigil.attempt}}}}\" }}\nmax_retries = 1\n"
    );
    let reg = registry(&[&wf]);
    let h = db.open().await;
    // SIGTERM right after the attempt's own commit (no checkpoint before
    // it: the first step), before its body.
    let stop = CancellationToken::new();
    let mut config = fast("pod-a");
    config.after_attempt_start = Some(vigil::engine::StepHook(Arc::new({
        let stop = stop.clone();
        move |_run: &str, _step: &str| stop.cancel()
    })));
    let a = engine_with(&h, &reg, config).await;
    let run = a.submit("only", json!({}), None).await.unwrap();
    let out = a.run(&run.id, None, stop).await.unwrap();
    assert_eq!(out, RunOutcome::Abandoned);
    assert!(seen.lock().unwrap().is_empty(), "the body never began");
    assert_eq!(step_status(&h, &run.id, "call").await, None);
    assert!(h.store.effects(&run.id).await.unwrap().is_empty());

    let hb = db.open().await;
    let b = engine_with(&hb, &reg, fast("pod-b")).await;
    let out = b
        .run(&run.id, Some("pod-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out, RunOutcome::Finished(RunState::Succeeded));
    assert_eq!(*seen.lock().unwrap(), vec![1, 2], "the whole budget");
    assert_eq!(
        step_status(&h, &run.id, "call").await,
        Some((StepStatus::Succeeded, 2))
    );
}

async fn return_attempt_gives_back_only_the_latest_running_attempt_fenced(db: &TestDb) {
    let reg = registry(&[ONE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("one", json!({}), None).await.unwrap();
    let claim = h.store.claim_run(&run.id, "pod-a", None).await.unwrap();
    let ep = claim.epoch;
    for n in 1..=2 {
        assert_eq!(
            h.store
                .begin_attempt(&run.id, "s", ep, 3, "pod-a")
                .await
                .unwrap(),
            BeginAttempt::Started { attempt: n }
        );
    }
    let effects = || async {
        h.store
            .effects(&run.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.attempt)
            .collect::<Vec<_>>()
    };
    // Not the latest attempt: nothing changes.
    h.store.return_attempt(&run.id, "s", ep, 1).await.unwrap();
    assert_eq!(
        step_status(&h, &run.id, "s").await,
        Some((StepStatus::Running, 2))
    );
    assert_eq!(effects().await, vec![1, 2]);
    // The latest goes back, with its effects row.
    h.store.return_attempt(&run.id, "s", ep, 2).await.unwrap();
    assert_eq!(
        step_status(&h, &run.id, "s").await,
        Some((StepStatus::Running, 1))
    );
    assert_eq!(effects().await, vec![1]);
    // A stale owner cannot give anything back.
    let next = h
        .store
        .claim_run(&run.id, "pod-b", Some("pod-a"))
        .await
        .unwrap();
    let stale = h.store.return_attempt(&run.id, "s", ep, 1).await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    // Nor can the new owner give back an attempt it did not start.
    h.store
        .return_attempt(&run.id, "s", next.epoch, 1)
        .await
        .unwrap();
    assert_eq!(
        step_status(&h, &run.id, "s").await,
        Some((StepStatus::Running, 1))
    );
    assert_eq!(effects().await, vec![1]);
    // A step's first attempt going back leaves no step row at all.
    let t = |n| BeginAttempt::Started { attempt: n };
    let begin = || h.store.begin_attempt(&run.id, "t", next.epoch, 3, "pod-b");
    assert_eq!(begin().await.unwrap(), t(1));
    h.store
        .return_attempt(&run.id, "t", next.epoch, 1)
        .await
        .unwrap();
    assert_eq!(step_status(&h, &run.id, "t").await, None);
    assert_eq!(effects().await, vec![1]);
    assert_eq!(begin().await.unwrap(), t(1), "the budget is whole again");
}

// Issue 14, item 2: runs that never end. Every step has a timeout, every run
// a deadline under the store-wide maximum.

/// A TCP service that accepts connections and never answers; counts them.
async fn silent_service() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(sock);
        }
    });
    (format!("http://{addr}"), accepted)
}

/// Drive a run, failing the test (instead of hanging it) if it never ends.
async fn run_bounded(e: &Engine, run_id: &str, bound: Duration) -> RunOutcome {
    tokio::time::timeout(bound, e.run(run_id, None, CancellationToken::new()))
        .await
        .unwrap_or_else(|_| panic!("run {run_id} did not end within {bound:?}"))
        .unwrap()
}

async fn run_error(h: &Handle, run_id: &str) -> String {
    h.store
        .get_run(run_id)
        .await
        .unwrap()
        .unwrap()
        .error
        .unwrap_or_default()
}

async fn an_http_step_that_never_answers_times_out_per_attempt_within_its_budget(db: &TestDb) {
    let (base, accepted) = silent_service().await;
    // A lane that does not heartbeat, no deadline_ms, no timeout_ms: only
    // the http default bounds each attempt.
    let wf = format!(
        "name = \"silent\"\nlane = \"embed_backfill\"\n[[steps]]\nid = \"call\"\nkind = \"http\"\nurl = \"{base}/never\"\nmax_retries = 2\n"
    );
    let reg = registry(&[&wf]);
    let h = db.open().await;
    let mut config = fast("pod-a");
    config.step_timeouts.http = Duration::from_millis(300);
    let e = engine_with(&h, &reg, config).await;
    let run = e.submit("silent", json!({}), None).await.unwrap();
    let started = std::time::Instant::now();
    let out = run_bounded(&e, &run.id, Duration::from_secs(20)).await;
    assert_eq!(out, RunOutcome::Finished(RunState::Failed));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "3 x 300 ms"
    );
    assert_eq!(
        step_status(&h, &run.id, "call").await,
        Some((StepStatus::Failed, 3)),
        "each timeout is a transient failure spending one attempt"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(e.metrics.attempts("failed_transient"), 3);
    let err = run_error(&h, &run.id).await;
    assert!(
        err.contains("exceeded max retries (3 attempts)") && err.contains("timed out"),
        "{err}"
    );
}

const PROGRESS: &str = r#"
name = "progress"
lane = "embed_backfill"
[[steps]]
id = "stream"
kind = "emit"
chunks = 6
interval_ms = 60
timeout_ms = 200
[[steps]]
id = "nap"
kind = "sleep"
after = ["stream"]
ms = 60000
timeout_ms = 150
max_retries = 1
"#;

async fn a_step_timeout_is_a_no_progress_timeout_and_a_silent_step_fails_transiently(db: &TestDb) {
    let reg = registry(&[PROGRESS]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let run = e.submit("progress", json!({}), None).await.unwrap();
    let out = run_bounded(&e, &run.id, Duration::from_secs(20)).await;
    assert_eq!(out, RunOutcome::Finished(RunState::Failed));
    // 6 chunks over 300 ms with a 200 ms timeout: each chunk is progress.
    assert_eq!(
        step_status(&h, &run.id, "stream").await,
        Some((StepStatus::Succeeded, 1))
    );
    assert_eq!(h.store.chunks(&run.id).await.unwrap().len(), 6);
    // A sleep reports no progress: its timeout bounds each attempt.
    assert_eq!(
        step_status(&h, &run.id, "nap").await,
        Some((StepStatus::Failed, 2))
    );
    let err = run_error(&h, &run.id).await;
    assert!(
        err.contains("step nap: exceeded max retries (2 attempts)")
            && err.contains("no progress within 150 ms"),
        "{err}"
    );
}

const HANG: &str = r#"
name = "hang"
lane = "embed_backfill"
[[steps]]
id = "wait"
kind = "sleep"
ms = 600000
"#;

const HANG_LONG_DEADLINE: &str = r#"
name = "hang-long"
lane = "embed_backfill"
deadline_ms = 60000
[[steps]]
id = "wait"
kind = "sleep"
ms = 600000
"#;

async fn a_run_without_deadline_ms_gets_the_store_wide_maximum(db: &TestDb) {
    use vigil::engine::settings::{self, DEFAULT_MAX_DEADLINE_MS, RUNS_MAX_DEADLINE_MS};
    let reg = registry(&[HANG, HANG_LONG_DEADLINE]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    // Untouched store: the default maximum.
    let r = e.submit("hang", json!({}), None).await.unwrap();
    assert_eq!(
        r.deadline_at_ms.map(|d| d - r.created_at_ms),
        Some(DEFAULT_MAX_DEADLINE_MS)
    );
    h.store
        .transition(&r.id, RunState::Cancelled, &ctx("test"))
        .await
        .unwrap();
    let audit = settings::set(h.store.as_ref(), RUNS_MAX_DEADLINE_MS, 1000, "ops", "test")
        .await
        .unwrap();
    assert_eq!((audit.old, audit.new), (None, 1000));
    // A hung step on a lane that does not heartbeat, in a workflow without
    // deadline_ms, ends by the maximum (the step's own timeout is 10 min +).
    let r = e.submit("hang", json!({}), None).await.unwrap();
    assert_eq!(r.deadline_at_ms.map(|d| d - r.created_at_ms), Some(1000));
    let started = std::time::Instant::now();
    let out = run_bounded(&e, &r.id, Duration::from_secs(20)).await;
    assert_eq!(out, RunOutcome::Finished(RunState::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(run_error(&h, &r.id).await, "run deadline passed");
    // A longer workflow deadline is capped: by every pod sharing the store.
    let other = db.open().await;
    let b = engine_with(&other, &reg, fast("pod-b")).await;
    let r = b.submit("hang-long", json!({}), None).await.unwrap();
    assert_eq!(r.deadline_at_ms.map(|d| d - r.created_at_ms), Some(1000));
    let out = run_bounded(&b, &r.id, Duration::from_secs(20)).await;
    assert_eq!(out, RunOutcome::Finished(RunState::TimedOut));
    // Out of bounds or unknown: refused, nothing written.
    let low = settings::set(h.store.as_ref(), RUNS_MAX_DEADLINE_MS, 10, "ops", "x").await;
    assert!(
        low.as_ref()
            .is_err_and(|e| e.to_string().contains("out of range")),
        "{low:?}"
    );
    assert!(
        settings::set(h.store.as_ref(), "runs.nope", 5000, "ops", "x")
            .await
            .is_err()
    );
    let trail = h.store.setting_audit(RUNS_MAX_DEADLINE_MS).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(
        settings::get(h.store.as_ref(), RUNS_MAX_DEADLINE_MS)
            .await
            .unwrap(),
        1000
    );
}

async fn a_run_stuck_outside_its_steps_stops_heartbeating_and_is_reaped(db: &TestDb) {
    // FAN_IN is on the sync lane, which heartbeats. Pod A runs a, b, c and
    // parks in the gate's backoff; pod B resumes it, and every lookup of the
    // merge's predecessors fails: B's machinery waits (no attempt spent),
    // stuck where no step timeout reaches, while its heartbeat timer runs.
    let reg = registry(&[FAN_IN]);
    let h = db.open().await;
    // The sync lane goes stale after 600 ms of silence.
    let lanes =
        || vigil::engine::lanes::Lanes::load(Path::new("fixtures/lanes/fast-reaper.toml")).unwrap();
    let run = engine_with(&h, &reg, fast("pod-a"))
        .await
        .with_lanes(lanes())
        .submit("fan", json!({}), None)
        .await
        .unwrap();
    assert_eq!(run.heartbeat_timeout_ms, Some(600));
    run_until_parked(db, &reg, &run.id, "gate").await;
    let hb = db.open().await;
    let mut config = fast("pod-b");
    config.step_timeouts.slack = Duration::from_millis(100);
    // Right after the gate's checkpoint, B waits for the test to break the
    // store's output lookups.
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let hook = std::sync::Mutex::new((entered_tx, go_rx));
    config.after_checkpoint = Some(vigil::engine::StepHook(Arc::new(move |_, step| {
        if step == "gate" {
            // Off the runtime's worker: the store's tasks must go on.
            tokio::task::block_in_place(|| {
                let hook = hook.lock().unwrap();
                hook.0.send(()).unwrap();
                hook.1.recv().unwrap();
            });
        }
    })));
    let b = Arc::new(engine_with(&hb, &reg, config).await.with_lanes(lanes()));
    let _live = common::register_pod(&hb, "pod-b").await;
    let cancel = CancellationToken::new();
    let task = {
        let (b, id, c) = (b.clone(), run.id.clone(), cancel.clone());
        tokio::spawn(async move { b.run(&id, Some("pod-a"), c).await })
    };
    let entered = std::sync::Mutex::new(entered_rx);
    wait_for("the gate to succeed on pod B", || async {
        entered.lock().unwrap().try_recv().is_ok()
    })
    .await;
    h.exec("ALTER TABLE steps RENAME COLUMN output_raw TO output_raw_gone")
        .await;
    go_tx.send(()).unwrap();
    // Stalled for longer than the longest step timeout (100 ms), a backoff
    // (20 ms) and the lane's heartbeat timeout (600 ms): no more beats, so
    // the reaper, which only judges heartbeats, times the run out.
    wait_for("the reaper to time the stuck run out", || async {
        let r = h.store.reap_stale("reaper-test").await.unwrap();
        r.timed_out.iter().any(|(id, _)| *id == run.id)
    })
    .await;
    let state = h.store.get_run(&run.id).await.unwrap().unwrap().state;
    assert_eq!(state, RunState::TimedOut);
    cancel.cancel();
    let out = task.await.expect("join").expect("drive");
    assert_eq!(out, RunOutcome::Abandoned);
    h.exec("ALTER TABLE steps RENAME COLUMN output_raw_gone TO output_raw")
        .await;
}

/// A run id's short form is any unique prefix of it: exact ids resolve by
/// one read, prefixes by a scan; an ambiguous prefix names its candidates;
/// text that cannot be part of a UUID resolves to nothing (and never
/// reaches a LIKE pattern).
async fn a_run_id_resolves_from_a_unique_prefix(db: &TestDb) {
    use vigil::engine::store::{IdMatch, resolve_run_id};
    let reg = registry(&[SYNC_RUN]);
    let h = db.open().await;
    let e = engine_with(&h, &reg, fast("pod-a")).await;
    let a = e.submit("sync-run", json!({}), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = e.submit("sync-run", json!({}), None).await.unwrap();
    let store = h.store.as_ref();
    // The match carries the run as stored: callers do not read it again.
    let stored = |id: String| async move {
        IdMatch::One(Box::new(store.get_run(&id).await.unwrap().unwrap()))
    };
    assert_eq!(
        resolve_run_id(store, &a.id).await.unwrap(),
        stored(a.id.clone()).await
    );
    assert_eq!(
        resolve_run_id(store, &b.id[..13].to_uppercase())
            .await
            .unwrap(),
        stored(b.id.clone()).await
    );
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(
        resolve_run_id(store, "0").await.unwrap(),
        IdMatch::Many {
            candidates: both,
            more: false
        }
    );
    for nothing in ["", "f", "%", "0_", "zz", "0%"] {
        assert_eq!(
            resolve_run_id(store, nothing).await.unwrap(),
            IdMatch::None,
            "{nothing:?}"
        );
    }
}

/// A peer whose lease lapsed while the prober's own renewals were not
/// steady (a pod paused holding SQLite's write lock kept everyone from
/// renewing; a frozen PostgreSQL ended every idle liveness session at its
/// thaw) is not found dead by that prober, on either store; once the
/// prober's renewals are steady again, it is. On PostgreSQL a free lock
/// with a fresh lease is a dead process, even to a prober whose renewals
/// are not steady, unless the server ended the prober's own session too.
async fn a_lapsed_lease_counts_only_for_a_prober_whose_own_renewals_were_steady(db: &TestDb) {
    let h = db.open().await;
    h.exec(
        "INSERT INTO pods (pod_id, incarnation, addr, started_at, heartbeat_at, lease_until) \
         VALUES ('lapsed', 'l1', NULL, 0, 0, 0)",
    )
    .await;
    let liveness = h.store.liveness();
    let store = h.store.clone();
    let find = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .liveness()
                .pods()
                .await
                .unwrap()
                .into_iter()
                .find(|p| p.pod_id == id)
                .unwrap()
        }
    };
    let lapsed = find("lapsed").await;
    let unsteady = liveness
        .probe(&lapsed, "prober", &|| UNSTEADY)
        .await
        .unwrap();
    assert_eq!(unsteady, None, "no lapsed lease read while unsteady");
    let steady = liveness.probe(&lapsed, "prober", &|| STEADY).await.unwrap();
    assert_eq!(steady.map(|d| d.pod_id), Some("lapsed".to_owned()));
    if let TestDb::Postgres { url } = db {
        // Its lease runs far ahead: no session holds its lock, so the
        // process that held it is gone (a SIGKILL).
        h.exec(
            "INSERT INTO pods (pod_id, incarnation, addr, started_at, heartbeat_at, lease_until) \
             VALUES ('killed', 'k1', NULL, 0, 0, 9223372036854775000)",
        )
        .await;
        let killed = find("killed").await;
        // Our own lock is free too: the server ended every session (a
        // restart), and the peer may not have taken its lock again yet.
        let restarted = liveness
            .probe(&killed, "prober", &|| UNSTEADY)
            .await
            .unwrap();
        assert_eq!(restarted, None, "not judged while our own lock is free too");
        // Held, but by a peer's watcher (granted it for a round trip), not
        // by our liveness session: says nothing either.
        let mut ours = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(vigil::engine::store::liveness::lock_key("prober"))
            .execute(&mut ours)
            .await
            .unwrap();
        let watched = liveness
            .probe(&killed, "prober", &|| UNSTEADY)
            .await
            .unwrap();
        assert_eq!(
            watched, None,
            "our lock held by a session not our liveness one"
        );
        sqlx::query("SET application_name = 'vigil-liveness'")
            .execute(&mut ours)
            .await
            .unwrap();
        let failing = Standing {
            leases_speak: false,
            locks_speak: false,
        };
        let found = liveness
            .probe(&killed, "prober", &|| failing)
            .await
            .unwrap();
        assert_eq!(found, None, "not judged while our own renewals fail");
        #[cfg(feature = "fault-injection")]
        {
            // The rule before (`restart_is_death`): a free lock with a
            // fresh lease is a death, whatever befell the prober's own
            // session.
            h.exec(
                "INSERT INTO pods (pod_id, incarnation, addr, started_at, heartbeat_at, lease_until) \
                 VALUES ('restarted', 'r1', NULL, 0, 0, 9223372036854775000)",
            )
            .await;
            let restarted = find("restarted").await;
            let found = vigil::faults::with_faults(
                &[vigil::faults::Bug::RestartIsDeath],
                liveness.probe(&restarted, "prober", &|| failing),
            )
            .await
            .unwrap();
            assert_eq!(found.map(|d| d.pod_id), Some("restarted".to_owned()));
        }
        let found = liveness
            .probe(&killed, "prober", &|| UNSTEADY)
            .await
            .unwrap();
        assert_eq!(
            found.map(|d| d.pod_id),
            Some("killed".to_owned()),
            "a free lock with a fresh lease is a death, even to an unsteady prober"
        );
    }
}

/// A prober whose renewals are steady, and one whose renewals are not
/// (though none failed).
const STEADY: Standing = Standing {
    leases_speak: true,
    locks_speak: true,
};
const UNSTEADY: Standing = Standing {
    leases_speak: false,
    locks_speak: true,
};

#[cfg(feature = "fault-injection")]
mod faults {
    use super::*;
    on_both_stores!(
        purge_finished_fault_loses_finished_steps_output,
        skip_fence_fault_lets_a_stale_owner_write_but_not_claim,
        blind_survivor_fault_never_finds_a_peer_dead,
        double_terminal_fault_rewrites_a_success_to_failed,
    );
}

on_both_stores!(
    a_lapsed_lease_counts_only_for_a_prober_whose_own_renewals_were_steady,
    a_run_id_resolves_from_a_unique_prefix,
    an_http_step_that_never_answers_times_out_per_attempt_within_its_budget,
    a_step_timeout_is_a_no_progress_timeout_and_a_silent_step_fails_transiently,
    a_run_without_deadline_ms_gets_the_store_wide_maximum,
    a_run_stuck_outside_its_steps_stops_heartbeating_and_is_reaped,
    a_stop_between_an_attempt_and_its_body_spends_no_attempt,
    return_attempt_gives_back_only_the_latest_running_attempt_fenced,
    a_stop_after_a_checkpoint_spends_no_attempt_of_the_next_step,
    janitor_measures_staleness_from_the_owners_death_not_the_last_checkpoint,
    a_store_from_a_newer_schema_is_refused_untouched,
    a_claim_keeps_succeeded_attempts_chunks_and_purges_the_rest,
    a_takeover_mid_stream_loses_no_finished_step_output,
    reaper_retries_atomically_and_never_beside_an_active_sibling,
    authority_contains_store_errors_evicts_and_recovers,
    http_steps_classify_status_codes,
    fan_in_resumed_in_fresh_executor_hydrates_raw_outputs_in_one_query,
    null_output_raw_is_a_miss_and_redacted_never_flows_downstream,
    db_fallback_off_fails_a_step_missing_predecessors_and_flipping_it_on_takes_effect_live,
    failing_step_commits_no_output_and_leaves_run_state_as_before,
    a_value_templated_from_a_secret_stays_redacted_downstream,
    mutate_secrets_are_redacted_in_run_state_and_survive_a_resume,
    crash_between_attempts_never_exceeds_max_retries_plus_one,
    permanent_error_is_attempted_once_and_transient_is_retried,
    every_illegal_transition_is_rejected_typed_and_counted,
    concurrent_writers_racing_on_one_transition_exactly_one_wins,
    run_past_its_deadline_ends_timed_out_and_nothing_is_written_after,
    idempotency_key_returns_the_same_run,
    a_run_submitted_claimed_is_created_running_with_its_first_attempt,
    claims_are_compare_and_set_and_stale_epochs_are_fenced,
    corrupt_rows_are_named_not_swallowed,
    concurrent_lookups_of_the_same_key_share_one_query,
);
