//! What the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) drive and which
//! properties they check, shared with `tests/fuzz_regressions.rs` so every
//! kept input goes through exactly the code the fuzzer ran.
//!
//! A property that does not hold panics: libFuzzer records the input as a
//! crash; the regression test fails.
//!
//! - `scenario`: `Scenario::parse` against the fixture workflows, then, when
//!   it accepts, the seed's `plan` (what the runner executes).
//! - `workflow`: `Workflow::parse`, then, when it accepts, the properties
//!   the engine relies on (steps in topological order, ids unique, secret
//!   paths redactable).
//! - `pod_request`: one HTTP request through the real `pod::api::router`
//!   in-process, on a real pod with an SQLite store in a temporary
//!   directory. The input is the request's text: `METHOD TARGET`, header
//!   lines, an empty line, the body. `{run}`, `{live}` and `{done}` in the
//!   target become the id of a fresh pending run, a running one (epoch 1,
//!   one chunk) and a cancelled one. The pod's token is `fuzz-token`.
//!   Properties: no panic, no 5xx (the store is local and healthy, so even
//!   503 is a bug), a JSON body wherever the response says JSON (HEAD
//!   answers have none).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vigil::chaos::scenario::{Scenario, ScenarioError, Target, Trigger, pod_ids};
use vigil::engine::workflow::{
    StepKind, Workflow, WorkflowError, WorkflowRegistry, lookup_path, redact,
};

/// The repository: the test's manifest dir, or the parent of `fuzz/`.
pub fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if dir.join("fixtures/workflows").is_dir() {
        dir.to_owned()
    } else {
        dir.parent().unwrap_or(dir).to_owned()
    }
}

fn registry() -> &'static WorkflowRegistry {
    static REG: OnceLock<WorkflowRegistry> = OnceLock::new();
    REG.get_or_init(|| {
        WorkflowRegistry::load_dir(&repo_root().join("fixtures/workflows"))
            .expect("the fixture workflows load")
    })
}

/// The name parsers see the fuzzed text under.
pub const FILE: &str = "fuzz.toml";

fn lines_in(text: &str) -> usize {
    text.matches('\n').count() + 1
}

/// Fuzz entry: anything that is not UTF-8 is refused before parsing (by
/// `read_to_string` in `Scenario::load`; the regression test covers that).
pub fn scenario(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = scenario_text(text);
    }
}

/// `Ok(())` when accepted (and planned), the error text otherwise.
pub fn scenario_text(text: &str) -> Result<(), String> {
    scenario_text_at(Path::new(FILE), text)
}

/// As [`scenario_text`], the text read from `file` (a relative
/// `cluster.lanes` resolves next to it).
pub fn scenario_text_at(file: &Path, text: &str) -> Result<(), String> {
    match Scenario::parse(file, text, registry()) {
        Err(e) => {
            let msg = e.to_string();
            check_scenario_error(&e, &msg, text, &file.display().to_string());
            Err(msg)
        }
        Ok(s) => {
            check_plan(&s);
            Ok(())
        }
    }
}

pub fn check_scenario_error(e: &ScenarioError, msg: &str, text: &str, file: &str) {
    assert!(
        msg.starts_with(file),
        "a scenario error must name the file: {msg}"
    );
    if let ScenarioError::Invalid { line, field, .. } = e {
        assert!(
            (1..=lines_in(text)).contains(line),
            "line {line} is not in the file ({} lines): {msg}",
            lines_in(text)
        );
        assert!(
            !field.is_empty(),
            "an invalid scenario names the field: {msg}"
        );
    }
}

fn check_plan(s: &Scenario) {
    let ids = pod_ids(s.pods);
    for seed in [0, 7, u64::MAX] {
        let plan = s.plan(seed);
        assert_eq!(plan, s.plan(seed), "the same seed gives the same plan");
        let runs: Vec<&str> = plan.runs.iter().map(|r| r.name.as_str()).collect();
        for r in &plan.runs {
            assert!(ids.contains(&r.pod), "run {} planned on {}", r.name, r.pod);
            assert!(registry().get(&r.workflow).is_ok(), "{}", r.workflow);
        }
        for f in &plan.faults {
            match &f.target {
                Target::Pod(p) => assert!(ids.contains(p), "fault on {p}"),
                Target::OwnerOf(r) => assert!(runs.contains(&r.as_str()), "owner_of:{r}"),
                Target::Random(_) | Target::LastKilled | Target::None => {}
            }
            match &f.trigger {
                Trigger::AfterChunk { run, .. }
                | Trigger::AfterEnd { run }
                | Trigger::AfterStep { run, .. } => {
                    assert!(runs.contains(&run.as_str()), "trigger on {run}");
                }
                Trigger::AtMs(_) => {}
            }
        }
    }
}

/// Fuzz entry for workflow files.
pub fn workflow(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = workflow_text(text);
    }
}

pub fn workflow_text(text: &str) -> Result<(), String> {
    match Workflow::parse(Path::new(FILE), text) {
        Err(e) => {
            let msg = e.to_string();
            check_workflow_error(&e, &msg);
            Err(msg)
        }
        Ok(wf) => {
            check_workflow(&wf);
            Ok(())
        }
    }
}

pub fn check_workflow_error(e: &WorkflowError, msg: &str) {
    assert!(
        msg.starts_with(FILE),
        "a workflow error must name the file: {msg}"
    );
    if let WorkflowError::Invalid { field, .. } = e {
        assert!(
            !field.is_empty(),
            "an invalid workflow names the field: {msg}"
        );
    }
}

fn check_workflow(wf: &Workflow) {
    assert!(!wf.steps.is_empty());
    let mut seen: Vec<&str> = Vec::new();
    for s in &wf.steps {
        assert!(!seen.contains(&s.id.as_str()), "step {} twice", s.id);
        for dep in &s.after {
            assert!(
                seen.contains(&dep.as_str()),
                "step {} comes before its predecessor {dep}",
                s.id
            );
        }
        seen.push(&s.id);
        assert!(s.max_attempts() >= 1);
        assert_eq!(wf.step(&s.id), Some(s));
        let own = match &s.kind {
            StepKind::Compute { output } => Some((output.clone(), &s.secret_fields)),
            StepKind::Mutate { set } => {
                Some((serde_json::Value::Object(set.clone()), &s.state_secrets))
            }
            _ => None,
        };
        if let Some((template, secrets)) = own {
            let redacted = redact(&template, secrets);
            for path in secrets {
                // A path resolves in the template, or lies under a string
                // (a `{{step.path}}` whose value holds the secret deeper down).
                let parts: Vec<&str> = path.split('.').collect();
                let under_template = (1..parts.len()).any(|n| {
                    lookup_path(&template, &parts[..n].join(".")).is_some_and(|v| v.is_string())
                });
                assert!(
                    lookup_path(&template, path).is_some() || under_template,
                    "secret {path}"
                );
                if !under_template {
                    assert!(lookup_path(&redacted, path).is_some(), "redacted {path}");
                }
            }
        }
    }
    let mut reg = WorkflowRegistry::default();
    reg.insert(wf.clone()).expect("a fresh registry takes it");
    assert!(reg.get(&wf.name).is_ok());
}

// ---------------------------------------------------------------- pod ---

pub const TOKEN: &str = "fuzz-token";

struct PodFixture {
    rt: tokio::runtime::Runtime,
    pod: std::sync::Arc<vigil::pod::Pod>,
    app: axum::Router,
}

#[derive(clap::Parser)]
struct PodCli {
    #[command(flatten)]
    pod: vigil::pod::PodArgs,
}

/// A directory for this process's store, in RAM when /dev/shm exists. It
/// outlives the process (libFuzzer exits without dropping statics), so the
/// directories of processes that are gone are removed first.
fn store_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("vigil-fuzz-pod-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!("vigil-fuzz-pod-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("store directory");
    dir
}

fn pod_fixture() -> &'static PodFixture {
    static POD: OnceLock<PodFixture> = OnceLock::new();
    POD.get_or_init(|| {
        use clap::Parser;
        let dir = store_dir();
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token file");
        let root = repo_root();
        let args = PodCli::try_parse_from([
            "pod".as_ref(),
            "--store".as_ref(),
            dir.join("fuzz.db").as_os_str(),
            "--pod-id".as_ref(),
            "fuzz-pod".as_ref(),
            "--workflows".as_ref(),
            root.join("fixtures/workflows").as_os_str(),
            "--token-file".as_ref(),
            token.as_os_str(),
            "--chaos-hooks".as_ref(),
            // Its runtime runs only while an input is answered: between
            // inputs nothing renews the lease, and a short one lapses
            // (`GET /readyz` then answers 503 lease_lapsing, rightly).
            "--liveness-timeout-ms".as_ref(),
            "3600000".as_ref(),
        ] as [&std::ffi::OsStr; 12])
        .expect("pod arguments")
        .pod;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pod = rt
            .block_on(vigil::pod::build(
                args,
                tokio_util::sync::CancellationToken::new(),
            ))
            .expect("the pod builds");
        let app = vigil::pod::api::router(pod.clone());
        PodFixture { rt, pod, app }
    })
}

/// Fresh runs for the placeholders the request names.
async fn placeholder_runs(pod: &vigil::pod::Pod, target: &str) -> Vec<(&'static str, String)> {
    use vigil::engine::run::RunState;
    use vigil::engine::store::TransitionCtx;
    let mut out = Vec::new();
    for name in ["{run}", "{live}", "{done}"] {
        if !target.contains(name) {
            continue;
        }
        let run = pod
            .engine
            .submit("final_success", serde_json::json!({ "fuzz": true }), None)
            .await
            .expect("submit");
        match name {
            "{live}" => {
                let c = pod
                    .store
                    .claim_run(&run.id, &pod.pod_id, None)
                    .await
                    .expect("claim");
                pod.store
                    .append_chunk(&run.id, c.epoch, 0, None, "first chunk")
                    .await
                    .expect("chunk");
            }
            "{done}" => {
                let ctx = TransitionCtx {
                    expected_epoch: None,
                    pod: Some(pod.pod_id.clone()),
                    reason: "fuzz".into(),
                    error: Some("cancelled".into()),
                };
                pod.store
                    .transition(&run.id, RunState::Cancelled, &ctx)
                    .await
                    .expect("cancel");
            }
            _ => {}
        }
        out.push((name, run.id));
    }
    out
}

/// What one request got: status and body (empty for event streams).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Split the input into a request; `None` when it is not one any HTTP
/// server would hand to the router (bad method, target or header names).
struct RawRequest {
    method: String,
    target: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

fn request_parts(data: &[u8]) -> Option<RawRequest> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let (method, target) = lines.next()?.split_once(' ')?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().as_bytes().to_vec(), v.trim().as_bytes().to_vec()))
        .collect();
    Some(RawRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: body.to_vec(),
    })
}

/// Fuzz entry for the pod's request decoding.
pub fn pod_request(data: &[u8]) {
    let _ = pod_request_answer(data);
}

pub fn pod_request_answer(data: &[u8]) -> Option<Answer> {
    use axum::http::{HeaderName, HeaderValue, Method, Request, header};
    use tower::ServiceExt;
    let RawRequest {
        method,
        mut target,
        headers,
        body,
    } = request_parts(data)?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let fx = pod_fixture();
    fx.rt.block_on(async {
        for (name, id) in placeholder_runs(&fx.pod, &target).await {
            target = target.replace(name, &id);
        }
        let mut req = Request::builder()
            .method(method.clone())
            .uri(target.as_str());
        for (n, v) in &headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                req = req.header(n, v);
            }
        }
        let req = req.body(axum::body::Body::from(body)).ok()?;
        let resp = fx.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // An event stream lives until its run ends: the head is the answer.
        let body = if content_type.starts_with("text/event-stream") {
            Vec::new()
        } else {
            axum::body::to_bytes(resp.into_body(), 64 << 20)
                .await
                .expect("the body is readable")
                .to_vec()
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(
            !status.is_server_error(),
            "{method} {target} answered {status}: {body}"
        );
        // A HEAD answer carries the GET answer's headers and no body.
        if content_type.starts_with("application/json") && method != Method::HEAD {
            assert!(
                serde_json::from_str::<serde_json::Value>(&body).is_ok(),
                "{method} {target} answered {status} with a body that is not JSON: {body}"
            );
        }
        Some(Answer {
            status: status.as_u16(),
            content_type,
            body,
        })
    })
}
