//! `vigil pod` as a process: the HTTP API, streams, shutdown. Real pods on
//! loopback against SQLite and PostgreSQL, talked to with reqwest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestDb;
use common::pods::PodProc;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::time::Duration;
use vigil::client::{PodClient, StreamEvent};
use vigil::engine::run::RunState;

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_state(c: &PodClient, id: &str, want: RunState) {
    for _ in 0..1000 {
        if c.run(id).await.unwrap().run.state == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("run {id} never reached {want}");
}

/// A pod named `api-1` on `db`, and a client of it.
fn api_pod(db: &TestDb) -> (PodProc, PodClient) {
    let pod = PodProc::spawn(&db.target(), "api-1", &[]);
    let c = PodClient::new(&pod.url).unwrap();
    (pod, c)
}

/// Submit `workflow` and wait until the run has succeeded; its id.
async fn succeeded(c: &PodClient, workflow: &str) -> String {
    let sub = c
        .submit(&serde_json::from_value(json!({"workflow": workflow})).unwrap())
        .await
        .unwrap();
    wait_state(c, &sub.run.id, RunState::Succeeded).await;
    sub.run.id
}

async fn submit_is_idempotent_and_the_detail_shows_only_redacted_outputs(db: &TestDb) {
    let (pod, c) = api_pod(db);
    let u = &pod.url;
    // Submit + idempotency.
    let body = json!({"workflow": "flaky_sync", "input": {"n": 1}, "idempotency_key": "k-1"});
    let (s1, r1) = post(&format!("{u}v1/runs"), &body).await;
    let (s2, r2) = post(
        &format!("{u}v1/runs"),
        &json!({"workflow": "flaky_sync", "input": {"n": 2}, "idempotency_key": "k-1"}),
    )
    .await;
    assert_eq!((s1, s2), (201, 200), "{r1} {r2}");
    assert_eq!(r1["run"]["id"], r2["run"]["id"]);
    assert_eq!(r2["created"], false);
    let id = r1["run"]["id"].as_str().unwrap().to_owned();
    wait_state(&c, &id, RunState::Succeeded).await;
    let (s, detail) = get(&format!("{u}v1/runs/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        detail["run"]["run_state"],
        json!({"phase": "pushed", "pushed": true})
    );
    assert!(
        detail["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("output_raw").is_none())
    );
}

async fn bad_requests_are_json_errors_naming_the_problem_and_write_nothing(db: &TestDb) {
    let (pod, c) = api_pod(db);
    let u = &pod.url;
    // Bad requests: JSON errors naming the problem, nothing written.
    let before = c
        .runs(&[("limit", "1000".into())])
        .await
        .unwrap()
        .runs
        .len();
    let (s, e) = post(&format!("{u}v1/runs"), &json!({"workflow": "nope"})).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (422, Some("unknown_workflow")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("chat_reply"));
    for input in [json!([1, 2]), json!("x"), json!(3)] {
        let (s, e) = post(
            &format!("{u}v1/runs"),
            &json!({"workflow": "flaky_sync", "input": input}),
        )
        .await;
        assert_eq!((s, e["error"].as_str()), (422, Some("bad_input")), "{e}");
    }
    let r = reqwest::Client::new()
        .post(format!("{u}v1/runs"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_request");
    let (s, e) = post(
        &format!("{u}v1/runs"),
        &json!({"workflow": "chat_reply", "surprise": 1}),
    )
    .await;
    assert_eq!(s, 422, "unknown fields are refused: {e}");
    assert_eq!(
        c.runs(&[("limit", "1000".into())])
            .await
            .unwrap()
            .runs
            .len(),
        before
    );
    let (s, e) = get(&format!("{u}v1/runs/no-such-run")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("run_not_found")));
    let (s, e) = get(&format!("{u}v1/runs?state=bogus")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("bad_query")), "{e}");
    let (s, e) = get(&format!("{u}v1/runs?limit=0")).await;
    assert_eq!((s, e["error"].as_str()), (400, Some("bad_query")), "{e}");
    let run = c
        .submit(&serde_json::from_value(json!({"workflow": "chat_reply"})).unwrap())
        .await
        .unwrap()
        .run;
    let r = reqwest::Client::new()
        .get(format!("{u}v1/runs/{}/stream", run.id))
        .header("Last-Event-ID", "not-a-cursor")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "bad_cursor");
    let (s, e) = get(&format!("{u}v1/nothing-here")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")));
    // NUL characters (PostgreSQL text refuses them) are the request's fault,
    // never a 5xx: found by schemathesis.
    for (method, path, body) in [
        (
            "PUT",
            "v1/switches/authority.db_fallback".to_owned(),
            json!({"enabled": true, "reason": "a\u{0}b"}),
        ),
        (
            "POST",
            "v1/runs".to_owned(),
            json!({"workflow": "chat_reply", "idempotency_key": "k\u{0}"}),
        ),
        ("GET", "v1/runs/a%00b".to_owned(), json!(null)),
        ("GET", "v1/runs?lane=a%00b".to_owned(), json!(null)),
    ] {
        let mut req = reqwest::Client::new().request(method.parse().unwrap(), format!("{u}{path}"));
        if !body.is_null() {
            req = req.json(&body);
        }
        let status = req.send().await.unwrap().status().as_u16();
        assert!(status < 500, "{method} {path} with a NUL answered {status}");
    }
    // The store still takes a change after the probes.
    let req =
        serde_json::from_value(json!({"enabled": true, "reason": "reset after the NUL probe"}))
            .unwrap();
    let audit = c.set_switch("authority.db_fallback", &req).await.unwrap();
    // No `who` given: the audit names the pod and the caller's address.
    assert_eq!(audit.who, "api via api-1 from 127.0.0.1");
}

async fn run_lists_filter_by_state_lane_and_owner(db: &TestDb) {
    let (pod, c) = api_pod(db);
    let u = &pod.url;
    let id = succeeded(&c, "flaky_sync").await;
    // Filters.
    let (s, list) = get(&format!("{u}v1/runs?state=succeeded&lane=sync&owner=api-1")).await;
    assert_eq!(s, 200);
    assert!(
        list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    let (_, list) = get(&format!("{u}v1/runs?owner=someone-else")).await;
    assert!(list["runs"].as_array().unwrap().is_empty());
}

async fn attach_streams_every_chunk_then_the_end_and_resumes_after_an_event_id(db: &TestDb) {
    let (pod, c) = api_pod(db);
    let u = &pod.url;
    // Attach: the whole stream, then the end event.
    let sub = c
        .submit(&serde_json::from_value(json!({"workflow": "chat_reply"})).unwrap())
        .await
        .unwrap();
    let mut events = Vec::new();
    let end = c
        .attach(&sub.run.id, |e| events.push(e.clone()))
        .await
        .unwrap();
    assert_eq!(end.state, RunState::Succeeded);
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Chunk { data, .. } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        text,
        (0..12).map(|i| format!("token {i} ")).collect::<String>()
    );
    // Resuming from an event id replays only what follows it.
    let r = reqwest::Client::new()
        .get(format!("{u}v1/runs/{}/stream", sub.run.id))
        .header("Last-Event-ID", "1:9")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        r.contains("id: 1:10") && r.contains("id: 1:11") && !r.contains("id: 1:9\n"),
        "{r}"
    );
    assert!(r.contains("event: end"));
}

async fn a_second_cancel_and_late_events_are_answered_409_and_counted(db: &TestDb) {
    let (pod, c) = api_pod(db);
    let u = &pod.url;
    succeeded(&c, "flaky_sync").await;
    let sub = c
        .submit(&serde_json::from_value(json!({"workflow": "chat_reply"})).unwrap())
        .await
        .unwrap();
    wait_state(&c, &sub.run.id, RunState::Succeeded).await;
    // Cancel, and cancel again: the second is too late, answered 409 with the state.
    let slow = c
        .submit(&serde_json::from_value(json!({"workflow": "embed_backfill"})).unwrap())
        .await
        .unwrap();
    let t = c.cancel(&slow.run.id, Some("test".into())).await.unwrap();
    assert_eq!(t.to, RunState::Cancelled);
    let again = c.cancel(&slow.run.id, None).await.unwrap_err();
    assert_eq!(
        again.already_terminal(),
        Some(RunState::Cancelled),
        "{again}"
    );
    // A late completion event for a terminal run: structured answer, counted.
    let (s, e) = post(
        &format!("{u}v1/runs/{}/events", sub.run.id),
        &json!({"type": "complete", "epoch": 1}),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str(), e["state"].as_str()),
        (409, Some("already_terminal"), Some("succeeded")),
        "{e}"
    );
    let (s, e) = post(
        &format!("{u}v1/runs/{}/events", sub.run.id),
        &json!({"type": "chunk", "epoch": 1, "seq": 99, "data": "late"}),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (409, Some("already_terminal")),
        "{e}"
    );

    // Metrics: OpenMetrics to Prometheus's own Accept header (and to none),
    // parsed by a strict OpenMetrics parser...
    for accept in [
        Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ),
        None,
    ] {
        let (content_type, body) = scrape(u, accept).await;
        assert_eq!(
            content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{accept:?}"
        );
        let om = openmetrics_parser::openmetrics::parse_openmetrics(&body)
            .unwrap_or_else(|e| panic!("invalid OpenMetrics ({e:?}):\n{body}"));
        let family = |name: &str| {
            om.families
                .get(name)
                .unwrap_or_else(|| panic!("no family {name}:\n{body}"))
        };
        let counter = |name: &str, label: &str| {
            let f = family(name);
            assert_eq!(f.family_type, openmetrics_parser::OpenMetricsType::Counter);
            match f
                .get_sample_by_label_values(&[label.to_owned()])
                .map(|s| &s.value)
            {
                Some(openmetrics_parser::OpenMetricsValue::Counter(c)) => Some(c.value.as_f64()),
                _ => None,
            }
        };
        assert_eq!(counter("vigil_too_late_events", "complete"), Some(1.0));
        // Series operators alert on exist before their first event.
        for outcome in ["won", "lost"] {
            assert_eq!(
                counter("vigil_recovery_claims", outcome),
                Some(0.0),
                "{outcome}"
            );
        }
        for lane in ["sync", "action"] {
            assert_eq!(counter("vigil_reaper_timeouts", lane), Some(0.0), "{lane}");
            assert_eq!(counter("vigil_reaper_retries", lane), Some(0.0), "{lane}");
        }
        assert_eq!(
            family("vigil_build").family_type,
            openmetrics_parser::OpenMetricsType::Info
        );
        assert!(
            body.contains(&format!(
                "vigil_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{body}"
        );
        assert!(
            family("vigil_loop_last_tick_timestamp_seconds").family_type
                == openmetrics_parser::OpenMetricsType::Gauge
        );
    }
    // ...and the Prometheus text format 0.0.4 to a scraper that asks only
    // for it, with counters typed as counters under their `_total` name.
    let (content_type, body) = scrape(u, Some("text/plain")).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let prom = openmetrics_parser::prometheus::parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("invalid Prometheus text ({e:?}):\n{body}"));
    assert_eq!(
        prom.families["vigil_too_late_events_total"].family_type,
        openmetrics_parser::PrometheusType::Counter
    );
    assert!(!body.contains("# EOF"), "{body}");

    // The client (the console's scraper) asks for that format; parsed by
    // the parser the console uses.
    let text = c.metrics_text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("vigil_too_late_events_total", ("kind", "complete")),
        Some(1.0)
    );
    assert_eq!(
        value("vigil_too_late_events_total", ("kind", "cancel")),
        Some(1.0)
    );
    assert!(value("vigil_run_transitions_total", ("to", "succeeded")).unwrap_or(0.0) >= 2.0);
    // The late completion is a ghost; the second cancel is not (an
    // operator repeating themselves).
    let ghosts = scrape
        .samples
        .iter()
        .find(|s| s.metric == "vigil_ghost_transitions_rejected_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        });
    assert_eq!(ghosts, Some(1.0));
    assert_eq!(
        value("vigil_transition_rejected_total", ("from", "cancelled")),
        None,
        "a repeated cancel is no rejected transition"
    );
    assert!(
        value("vigil_step_attempts_total", ("outcome", "failed_transient")).unwrap_or(0.0) >= 2.0
    );
}

/// `GET /metrics` with `accept`: the content type and the body.
async fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(format!("{base}metrics"));
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, resp.text().await.unwrap())
}

async fn switches_are_set_through_the_api_and_audited(db: &TestDb) {
    let (pod, _) = api_pod(db);
    let u = &pod.url;
    // Switches through the API, audited.
    let (s, sw) = get(&format!("{u}v1/switches")).await;
    assert_eq!(s, 200);
    assert_eq!(sw["switches"][0]["name"], "authority.db_fallback");
    assert_eq!(sw["switches"][0]["source"], "default");
    let r = reqwest::Client::new()
        .put(format!("{u}v1/switches/authority.db_fallback"))
        .json(&json!({"enabled": false, "reason": "drill", "who": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, sw) = get(&format!("{u}v1/switches")).await;
    assert_eq!(
        (
            sw["switches"][0]["enabled"].as_bool(),
            sw["switches"][0]["updated_by"].as_str()
        ),
        (Some(false), Some("ops"))
    );
    let r = reqwest::Client::new()
        .put(format!("{u}v1/switches/no.such"))
        .json(&json!({"enabled": false, "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = reqwest::Client::new()
        .put(format!("{u}v1/switches/authority.db_fallback"))
        .json(&json!({"enabled": true, "reason": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422, "a reason is required");
}

async fn health_readiness_and_the_openapi_document_answer(db: &TestDb) {
    let (pod, _) = api_pod(db);
    let u = &pod.url;
    // Health, readiness, and the OpenAPI document.
    let (s, h) = get(&format!("{u}healthz")).await;
    assert_eq!((s, h["pod_id"].as_str()), (200, Some("api-1")));
    let (s, _) = get(&format!("{u}readyz")).await;
    assert_eq!(s, 200);
    let (s, doc) = get(&format!("{u}openapi.json")).await;
    assert_eq!(s, 200);
    for p in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/stream",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/events",
        "/v1/switches",
        "/v1/switches/{name}",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from /openapi.json"
        );
    }
    // The pod's own view of itself, as the console's Pods view reads it:
    // ready, its lease, its renew's round trips, and its store pools.
    let text = reqwest::get(format!("{u}metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = vigil::console::parse_metrics(&text).unwrap();
    assert_eq!(m.ready, Some(1.0), "{text}");
    assert!(m.lease_left.is_some_and(|l| l > 0.0), "{text}");
    let data = m
        .pools
        .get("data")
        .copied()
        .expect("the data pool's gauges");
    assert!(data.max >= 1.0 && data.busy <= data.max, "{data:?}");
    let want: &[&str] = if db.target().starts_with("postgres") {
        &["control", "data"]
    } else {
        &["data"]
    };
    assert_eq!(m.pools.keys().map(String::as_str).collect::<Vec<_>>(), want);
}

async fn early_and_late_attachers_see_each_chunk_of_the_final_run_once(db: &TestDb) {
    // pod-a runs a slow stream; a viewer pod serves both attachers.
    let mut a = PodProc::spawn(&db.target(), "stream-a", &[]);
    let viewer = PodProc::spawn(&db.target(), "viewer", &["--max-runs", "0"]);
    let ca = PodClient::new(&a.url).unwrap();
    let cv = PodClient::new(&viewer.url).unwrap();
    let run = ca
        .submit(&serde_json::from_value(json!({"workflow": "chat_reply"})).unwrap())
        .await
        .unwrap()
        .run;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let early = {
        let (cv, id, received) = (cv.clone(), run.id.clone(), received.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let end = cv
                .attach(&id, |e| {
                    received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    seen.push(e.clone());
                })
                .await
                .unwrap();
            (seen, end)
        })
    };
    // Kill pod-a hard once the early attacher holds 4 chunks of the reply.
    let h = db.open().await;
    for _ in 0..4000 {
        if received.load(std::sync::atomic::Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5))
        .expect("SIGKILLed pod exits");
    let r = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.owner_pod.as_deref(), r.epoch),
        (RunState::Running, Some("stream-a"), 1)
    );
    // Same stable id restarts: its startup sweep resumes the run at epoch 2,
    // purging epoch 1's chunks in the claim's transaction.
    let _a2 = PodProc::spawn(&db.target(), "stream-a", &[]);
    let (seen, end) = early.await.unwrap();
    assert_eq!(end.state, RunState::Succeeded);
    let late_seen = {
        let mut v = Vec::new();
        cv.attach(&run.id, |e| v.push(e.clone())).await.unwrap();
        v
    };

    let chunks_of = |evs: &[StreamEvent]| -> Vec<(i64, i64)> {
        evs.iter()
            .filter_map(|e| match e {
                StreamEvent::Chunk { epoch, seq, .. } => Some((*epoch, *seq)),
                _ => None,
            })
            .collect()
    };
    let final_run: Vec<(i64, i64)> = (0..12).map(|s| (2, s)).collect();
    // Late: exactly the final run's chunks, once each, in order, no reset.
    assert_eq!(chunks_of(&late_seen), final_run);
    assert!(
        !late_seen
            .iter()
            .any(|e| matches!(e, StreamEvent::Reset { .. }))
    );
    // Early: a prefix of epoch 1, one reset to epoch 2, then every chunk once.
    let reset_at = seen
        .iter()
        .position(|e| matches!(e, StreamEvent::Reset { epoch: 2, .. }))
        .expect("a reset");
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, StreamEvent::Reset { .. }))
            .count(),
        1
    );
    let before = chunks_of(&seen[..reset_at]);
    assert!(
        before.len() >= 4 && before.iter().enumerate().all(|(i, c)| *c == (1, i as i64)),
        "{before:?}"
    );
    assert_eq!(chunks_of(&seen[reset_at..]), final_run);
    assert_eq!(
        h.store.chunks(&run.id).await.unwrap().len(),
        12,
        "epoch 1 was purged"
    );
}

/// Issue 13: two streaming steps, the owner SIGKILLed in the second. A late
/// attacher gets every chunk of both steps (intro from epoch 1, body from
/// epoch 2) and no reset; an early attacher, after applying the reset's keep
/// list, holds the same; a client resuming with Last-Event-ID from inside
/// the dead attempt gets a reset that keeps intro.
async fn a_takeover_in_the_second_step_keeps_the_first_steps_chunks(db: &TestDb) {
    let mut a = PodProc::spawn(&db.target(), "two-a", &[]);
    let viewer = PodProc::spawn(&db.target(), "two-viewer", &["--max-runs", "0"]);
    let ca = PodClient::new(&a.url).unwrap();
    let cv = PodClient::new(&viewer.url).unwrap();
    let run = ca
        .submit(&serde_json::from_value(json!({"workflow": "two_streams"})).unwrap())
        .await
        .unwrap()
        .run;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let early = {
        let (cv, id, received) = (cv.clone(), run.id.clone(), received.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let end = cv
                .attach(&id, |e| {
                    received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    seen.push(e.clone());
                })
                .await
                .unwrap();
            (seen, end)
        })
    };
    // Kill pod-a once the early attacher holds intro and 4 chunks of body.
    for _ in 0..5000 {
        if received.load(std::sync::atomic::Ordering::SeqCst) >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5))
        .expect("SIGKILLed pod exits");
    let h = db.open().await;
    let r = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!((r.state, r.epoch), (RunState::Running, 1));
    // The same stable id restarts and resumes the run at epoch 2.
    let _a2 = PodProc::spawn(&db.target(), "two-a", &[]);
    let (seen, end) = early.await.unwrap();
    assert_eq!(end.state, RunState::Succeeded);
    let mut late = Vec::new();
    cv.attach(&run.id, |e| late.push(e.clone())).await.unwrap();

    let tags = |evs: Vec<&StreamEvent>| -> Vec<(i64, i64, String, i64, String)> {
        evs.into_iter()
            .filter_map(|e| match e {
                StreamEvent::Chunk {
                    epoch,
                    seq,
                    step,
                    attempt,
                    data,
                    ..
                } => Some((
                    *epoch,
                    *seq,
                    step.clone().unwrap_or_default(),
                    attempt.unwrap_or_default(),
                    data.clone(),
                )),
                _ => None,
            })
            .collect()
    };
    let mut want: Vec<_> = (0..5)
        .map(|i| (1, i, "intro".to_owned(), 1, format!("intro {i};")))
        .collect();
    want.extend((0..20).map(|i| (2, i, "body".to_owned(), 2, format!("body {i};"))));
    assert_eq!(tags(late.iter().collect()), want, "late attacher");
    assert!(!late.iter().any(|e| matches!(e, StreamEvent::Reset { .. })));
    let resets: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Reset { epoch, keep } => Some((*epoch, keep.clone())),
            _ => None,
        })
        .collect();
    let intro = vigil::client::StreamPart {
        epoch: 1,
        step: "intro".into(),
        attempt: 1,
    };
    assert_eq!(
        resets,
        vec![(2, vec![intro.clone()])],
        "early attacher's resets"
    );
    assert_eq!(
        tags(vigil::client::held_chunks(&seen)),
        want,
        "early attacher, after applying the reset"
    );
    // Resume from inside the dead attempt (intro is seq 0-4 of epoch 1).
    let text = reqwest::Client::new()
        .get(format!("{}v1/runs/{}/stream", viewer.url, run.id))
        .header("Last-Event-ID", "1:6")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let first = text
        .lines()
        .find(|l| l.starts_with("data:"))
        .expect("an event");
    let reset: serde_json::Value =
        serde_json::from_str(first.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(
        reset,
        json!({"epoch": 2, "keep": [{"epoch": 1, "step": "intro", "attempt": 1}]}),
        "{text}"
    );
    assert_eq!(text.matches("event: chunk").count(), 20, "{text}");
}

async fn sigterm_keeps_ownership_and_exits_within_its_bound(db: &TestDb) {
    let mut pod = PodProc::spawn(&db.target(), "term-1", &["--shutdown-grace-ms", "2000"]);
    let c = PodClient::new(&pod.url).unwrap();
    let run = c
        .submit(&serde_json::from_value(json!({"workflow": "chat_reply"})).unwrap())
        .await
        .unwrap()
        .run;
    let h = db.open().await;
    for _ in 0..2000 {
        if !h.store.chunks(&run.id).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // An attacher must not hold the shutdown up.
    let attached = {
        let c = c.clone();
        let id = run.id.clone();
        tokio::spawn(async move { c.attach(&id, |_| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    pod.signal(Signal::SIGTERM);
    let (took, status) = pod
        .wait_exit(Duration::from_secs(10))
        .expect("pod exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", pod.log_text());
    assert!(
        took < Duration::from_millis(3000),
        "took {took:?} with a 2000 ms grace"
    );
    let r = h.store.get_run(&run.id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.owner_pod.as_deref()),
        (RunState::Running, Some("term-1")),
        "ownership stays for recovery"
    );
    attached.abort();
    let chunks = h.store.chunks(&run.id).await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        h.store.chunks(&run.id).await.unwrap().len(),
        chunks,
        "nothing written after exit"
    );
}

on_both_stores!(
    submit_is_idempotent_and_the_detail_shows_only_redacted_outputs,
    bad_requests_are_json_errors_naming_the_problem_and_write_nothing,
    run_lists_filter_by_state_lane_and_owner,
    attach_streams_every_chunk_then_the_end_and_resumes_after_an_event_id,
    a_second_cancel_and_late_events_are_answered_409_and_counted,
    switches_are_set_through_the_api_and_audited,
    health_readiness_and_the_openapi_document_answer,
    early_and_late_attachers_see_each_chunk_of_the_final_run_once,
    a_takeover_in_the_second_step_keeps_the_first_steps_chunks,
    sigterm_keeps_ownership_and_exits_within_its_bound,
);

/// The exit codes `vigil --help` promises, from the real binary against a
/// real pod: a run that fails is not a usage error (2), a second cancel is
/// not an error (1), and `vigil chaos` keeps Jepsen's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_the_ones_help_lists() {
    let db = TestDb::sqlite().await;
    let pod = PodProc::spawn(&db.target(), "exits", &[]);
    let u = pod.url.as_str();
    let vigil = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .env_remove("VIGIL_TOKEN_FILE")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let help = vigil(&["--help"]).1;
    for line in [
        "  2  usage: bad arguments or flags",
        "  3  cancel: the run had already ended",
        "  4  attach, submit --attach: the run ended other than succeeded",
        "`vigil chaos` keeps Jepsen's codes",
    ] {
        assert!(help.contains(line), "{line:?} not in --help:\n{help}");
    }
    let chaos_help = vigil(&["chaos", "--help"]).1;
    assert!(chaos_help.contains("254  bad arguments"), "{chaos_help}");

    let (code, out) = vigil(&["submit", "--pod", u, "validation_failure", "--attach"]);
    assert_eq!(code, Some(4), "a failed run: {out}");
    let (code, out) = vigil(&["submit", "--pod", u, "final_success", "--attach"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = vigil(&["submit", "--pod", u, "slow_stream"]);
    assert_eq!(code, Some(0), "{out}");
    let id = out.lines().next().unwrap().trim().to_owned();
    let (code, out) = vigil(&["cancel", "--pod", u, &id]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = vigil(&["cancel", "--pod", u, &id]);
    assert_eq!(code, Some(3), "a second cancel: {out}");
    let (code, out) = vigil(&["attach", "--pod", u, &id]);
    assert_eq!(code, Some(4), "attach to a cancelled run: {out}");
    // The short form is a prefix: runs submitted apart in time differ in
    // their first 12 characters (UUIDv7: the creation ms).
    let short = &id[..13];
    let (code, out) = vigil(&["attach", "--pod", u, short]);
    assert_eq!(code, Some(4), "attach by prefix: {out}");
    let (code, out) = vigil(&["cancel", "--pod", u, short]);
    assert_eq!(code, Some(3), "cancel by prefix: {out}");
    for via in [["--pod", u], ["--store", &db.target()]] {
        let (code, out) = vigil(&["run", via[0], via[1], short, "--json"]);
        assert_eq!(code, Some(0), "{via:?}: {out}");
        assert!(out.contains(&format!("\"id\": \"{id}\"")), "{via:?}: {out}");
        let (code, out) = vigil(&["run", via[0], via[1], "0"]);
        assert_eq!(code, Some(1), "{via:?}: {out}");
        assert!(
            out.contains("is a prefix of several runs: 0"),
            "{via:?}: {out}"
        );
    }
    assert_eq!(vigil(&["submit", "--pod", u]).0, Some(2), "no workflow");
    let (code, out) = vigil(&["submit", "--pod", u, "no_such_workflow"]);
    assert_eq!(code, Some(1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_change_and_reads_stay_open() {
    let db = TestDb::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t-token\n").unwrap();
    let pod = PodProc::spawn(
        &db.target(),
        "guarded",
        &["--token-file", token_file.to_str().unwrap()],
    );
    let u = &pod.url;
    let http = reqwest::Client::new();
    let body = json!({"workflow": "flaky_sync"});
    let no = http
        .post(format!("{u}v1/runs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no.status().as_u16(), 401);
    assert_eq!(no.json::<Value>().await.unwrap()["error"], "unauthorized");
    let wrong = http
        .post(format!("{u}v1/runs"))
        .bearer_auth("s3cr3t-tokeN")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let ok = http
        .post(format!("{u}v1/runs"))
        .bearer_auth("s3cr3t-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 201);
    let id = ok.json::<Value>().await.unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Every other change is guarded too; reads are open.
    for (method, path, body) in [
        ("POST", format!("v1/runs/{id}/cancel"), json!({})),
        (
            "POST",
            format!("v1/runs/{id}/events"),
            json!({"type": "complete", "epoch": 1}),
        ),
        (
            "PUT",
            "v1/switches/authority.db_fallback".to_owned(),
            json!({"enabled": false, "reason": "x"}),
        ),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{u}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
    }
    assert_eq!(get(&format!("{u}v1/runs/{id}")).await.0, 200);
    assert_eq!(get(&format!("{u}v1/switches")).await.0, 200);
    // The CLI passes the token from --token-file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "switch",
            "set",
            "--pod",
            u,
            "authority.db_fallback",
            "off",
            "--reason",
            "drill",
        ])
        .args(["--token-file", token_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "switch",
            "set",
            "--pod",
            u,
            "authority.db_fallback",
            "on",
            "--reason",
            "drill",
        ])
        .env_remove("VIGIL_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
}

/// A PostgreSQL outage (the server stopped, then started again): the pod
/// keeps answering what needs no store (health, metrics, workflows, the
/// OpenAPI document), answers store reads and writes with a quick 503
/// `store_unavailable` instead of hanging or dying, reports not-ready, and
/// recovers by itself when the server is back: the run submitted before the
/// outage finishes, once, and new work is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_answered_and_healed_without_a_restart() {
    // The outage needs a server of its own to stop: the installed binaries
    // (present wherever VIGIL_TEST_PG_URL is, scripts/with-pg.sh installs them).
    if common::pg_admin_url().is_none() {
        return;
    }
    let mut server = tokio::task::spawn_blocking(vigil::cluster::pgserver::PgServer::start)
        .await
        .unwrap()
        .unwrap();
    let admin = server.admin_url();
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query("CREATE DATABASE vigil_outage")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path("vigil_outage");
    let pod = PodProc::spawn(url.as_str(), "outage-1", &[]);
    let base = pod.url.clone();
    let c = PodClient::new(&base).unwrap();
    let req = serde_json::from_value(json!({"workflow": "slow_stream"})).unwrap();
    let id = c.submit(&req).await.unwrap().run.id;
    wait_state(&c, &id, RunState::Running).await;

    server = tokio::task::spawn_blocking(move || {
        server.stop().unwrap();
        server
    })
    .await
    .unwrap();
    let t = std::time::Instant::now();
    for path in ["healthz", "metrics", "v1/workflows", "openapi.json"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} during the outage");
    }
    let (status, body) = get(&format!("{base}v1/runs/{id}")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "store_unavailable", "{body}");
    let (status, body) = post(
        &format!("{base}v1/runs"),
        &json!({"workflow": "chat_reply"}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    // Readiness comes from the pod's lease and its writes, not a store
    // query: it turns 503 once the run's next write is refused and waits
    // (`store_refuses_writes`), or once no renew has landed for a lease less
    // its margin (`lease_lapsing`, within 1.5 s of the last renew at the
    // 2 s default), whichever comes first; not at the first refused
    // connection of a read.
    let mut unready = None;
    for _ in 0..300 {
        let (status, body) = get(&format!("{base}readyz")).await;
        if status == 503 {
            unready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = unready.expect("/readyz still 200 fifteen seconds into the outage");
    assert!(
        body["error"] == "lease_lapsing" || body["error"] == "store_refuses_writes",
        "{body}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "answers during the outage took {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    server = tokio::task::spawn_blocking(move || {
        server.start_again().unwrap();
        server
    })
    .await
    .unwrap();
    // No restart: the same process answers again and finishes the run.
    let mut ready = false;
    for _ in 0..300 {
        if get(&format!("{base}readyz")).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the pod never became ready again");
    wait_state(&c, &id, RunState::Succeeded).await;
    let store = vigil::engine::store::open(url.as_str()).await.unwrap();
    let chunks = store.chunks(&id).await.unwrap();
    let last = chunks.last().unwrap().epoch;
    let seqs: Vec<i64> = chunks
        .iter()
        .filter(|c| c.epoch == last)
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, (0..40).collect::<Vec<_>>(), "the final stream, whole");
    let done = store.steps(&id).await.unwrap();
    assert!(
        done.iter().any(|s| s.node_id == "done" && s.attempts == 1),
        "{done:?}"
    );
    let id2 = c.submit(&req).await.unwrap().run.id;
    wait_state(&c, &id2, RunState::Succeeded).await;
    drop(pod);
    drop(server);
}
