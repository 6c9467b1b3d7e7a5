//! `vigil chaos target-check`: does a target keep the contract of
//! docs/targets.md? Before any fault: two workers start and say they are
//! ready; an unknown run is a 404 and an unknown workflow is refused; a run
//! submitted with the runner's id ends, and any worker answers for it; the
//! witness saw each of its witnessed steps with the run's id and the
//! worker's pod id, within budget, in the order the definition gives; the
//! same id submitted again executes nothing. Each clause passes or fails with
//! what was seen, so a team implementing a target knows what to fix before
//! a chaos verdict has to.

use super::StoreChoice;
use crate::chaos::checks::witnessed;
use crate::chaos::history::History;
use crate::chaos::scenario::StoreKind;
use crate::chaos::target::{TargetApi, TargetDef};
use crate::cluster::pgserver::drop_database;
use crate::cluster::{Cluster, ClusterSpec};
use crate::engine::run::RunState;
use crate::engine::workflow::WorkflowRegistry;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One clause of the contract, as a worker kept it or not.
#[derive(Debug, Clone)]
pub struct Clause {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Check the target in `file` against the contract, with the workflows in
/// `workflows` (each one, or only `only`), on a PostgreSQL of `store`.
/// Worker logs go under `logs`.
pub async fn check_target(
    file: &Path,
    workflows: &Path,
    only: Option<&str>,
    store: &StoreChoice,
    logs: &Path,
) -> Result<Vec<Clause>> {
    let def = TargetDef::load(file)?;
    let reg = WorkflowRegistry::load_dir(workflows)
        .with_context(|| format!("loading workflows from {}", workflows.display()))?;
    let names: Vec<String> = match only {
        Some(n) => {
            reg.get(n)?;
            vec![n.to_owned()]
        }
        None => reg.names().map(str::to_owned).collect(),
    };
    let p = super::provision::store(store, StoreKind::Postgres, logs, None, None).await?;
    let history = Arc::new(History::new());
    let bind = std::net::IpAddr::from([127, 0, 0, 1]);
    let witness = crate::chaos::witness::Witness::start((bind, 0).into(), history.clone())
        .await
        .context("starting the witness")?;
    let workflows = std::path::absolute(workflows).unwrap_or_else(|_| workflows.to_owned());
    let mut spec = ClusterSpec::new(p.target.clone(), workflows.clone(), logs.join("pods"))?;
    spec.command =
        Some(def.command_pod(&p.target, &witness.url_for(&bind.to_string()), &workflows));
    let mut cluster = Cluster::new(spec)?;
    let result = clauses(&mut cluster, &def, &reg, &names, &history).await;
    cluster.shutdown(Duration::from_secs(10)).await;
    drop(witness);
    if let Some((admin, db)) = p.drop_db {
        drop_database(&admin, &db).await;
    }
    drop(p.pg_server);
    result
}

async fn clauses(
    cluster: &mut Cluster,
    def: &TargetDef,
    reg: &WorkflowRegistry,
    names: &[String],
    history: &History,
) -> Result<Vec<Clause>> {
    let mut out = Vec::new();
    let mut urls = Vec::new();
    for id in ["pod-1", "pod-2"] {
        let t = Instant::now();
        let started = cluster
            .start_pod(id, &[])
            .await
            .map(|p| p.url.clone())
            .map_err(|e| crate::errors::report(&e));
        let ok = say(
            &mut out,
            "ready",
            started.as_ref().map_or_else(
                |e| Err(e.clone()),
                |_| {
                    Ok(format!(
                        "{id} answered GET {} after {} ms",
                        def.ready,
                        t.elapsed().as_millis()
                    ))
                },
            ),
        );
        if !ok {
            return Ok(out);
        }
        urls.extend(started.ok());
    }
    let api = TargetApi::new();
    let (a, b) = (urls[0].clone(), urls[1].clone());
    let ghost = uuid::Uuid::now_v7().to_string();
    say(
        &mut out,
        "unknown_run_is_404",
        match api.run(&a, &ghost).await {
            Ok(None) => Ok(format!("GET /runs/{ghost}: 404")),
            Ok(Some(r)) => Err(format!(
                "GET /runs/{ghost} of a run nobody submitted answered {}",
                r.state
            )),
            Err(e) => Err(crate::errors::report(&e)),
        },
    );
    say(
        &mut out,
        "unknown_workflow_refused",
        match api
            .submit(&a, &ghost, "no_such_workflow_here", &json!({}))
            .await
        {
            Ok(()) => Err("POST /runs of workflow no_such_workflow_here answered 2xx".into()),
            Err(e) => Ok(format!("refused: {}", crate::errors::report(&e))),
        },
    );
    for name in names {
        let wf = reg.get(name)?;
        let id = uuid::Uuid::now_v7().to_string();
        let input = json!({ "run": "conformance" });
        if !say(
            &mut out,
            "submit",
            api.submit(&a, &id, name, &input)
                .await
                .map(|()| format!("{name}: POST /runs {id} on pod-1"))
                .map_err(|e| format!("{name}: {}", crate::errors::report(&e))),
        ) {
            continue;
        }
        say(
            &mut out,
            "same_id_is_same_run",
            api.submit(&a, &id, name, &input)
                .await
                .map(|()| format!("{name}: the same id again answered 2xx"))
                .map_err(|e| format!("{name}: the same id again: {}", crate::errors::report(&e))),
        );
        let until = Instant::now() + Duration::from_secs(120);
        let end = loop {
            match api.run(&a, &id).await {
                Ok(Some(r)) if r.state.is_terminal() => break Ok(r.state),
                Ok(_) | Err(_) if Instant::now() > until => {
                    break Err(format!("{name}: not terminal within 120 s"));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if !say(
            &mut out,
            "run_ends",
            end.clone().map(|s| format!("{name}: {s}")),
        ) {
            continue;
        }
        let state = end.unwrap_or(RunState::Failed);
        say(
            &mut out,
            "any_worker_answers",
            match api.run(&b, &id).await {
                Ok(Some(r)) if r.state == state => Ok(format!("{name}: pod-2 says {state} too")),
                Ok(Some(r)) => Err(format!(
                    "{name}: pod-1 says {state}, pod-2 says {}",
                    r.state
                )),
                Ok(None) => Err(format!("{name}: pod-2 does not know the run (404)")),
                Err(e) => Err(format!("{name}: pod-2: {}", crate::errors::report(&e))),
            },
        );
        let calls = |h: &History| -> Vec<Value> {
            h.snapshot()
                .into_iter()
                .filter(|e| e.kind == "witness" && e.data["run_id"] == id.as_str())
                .map(|e| e.data)
                .collect()
        };
        let seen = calls(history);
        let mut problems = Vec::new();
        for c in &seen {
            if c["pod"] != "pod-1" && c["pod"] != "pod-2" {
                problems.push(format!(
                    "a witness call of step {} says pod {}: send the worker's {{pod_id}}",
                    c["step"], c["pod"]
                ));
            }
        }
        let first = |s: &str| seen.iter().position(|c| c["step"] == s);
        let last = |s: &str| seen.iter().rposition(|c| c["step"] == s);
        for step in wf.steps.iter().filter(|s| witnessed(s)) {
            let n = seen
                .iter()
                .filter(|c| c["step"] == step.id.as_str())
                .count();
            if state == RunState::Succeeded && n == 0 {
                problems.push(format!("step {} succeeded unseen by the witness", step.id));
            }
            if i64::try_from(n).unwrap_or(i64::MAX) > step.max_attempts() {
                problems.push(format!(
                    "step {}: {n} executions, max_retries + 1 = {}",
                    step.id,
                    step.max_attempts()
                ));
            }
            for p in &step.after {
                if let (Some(f), Some(l)) = (first(&step.id), last(p))
                    && f < l
                {
                    problems.push(format!(
                        "step {} was witnessed before its predecessor {p} ended",
                        step.id
                    ));
                }
            }
        }
        say(
            &mut out,
            "witness",
            if problems.is_empty() {
                Ok(format!(
                    "{name}: {} witness calls, each in order and budget",
                    seen.len()
                ))
            } else {
                Err(format!("{name}: {}", problems.join("; ")))
            },
        );
        let _ = api.submit(&b, &id, name, &input).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = calls(history).len();
        say(
            &mut out,
            "no_second_execution",
            if again == seen.len() {
                Ok(format!(
                    "{name}: the id submitted to pod-2 after the end executed nothing"
                ))
            } else {
                Err(format!(
                    "{name}: the id submitted again after the end made {} more witness calls",
                    again - seen.len()
                ))
            },
        );
    }
    Ok(out)
}

/// Record clause `name` as kept (Ok) or not (Err), with what was seen.
fn say(out: &mut Vec<Clause>, name: &'static str, r: Result<String, String>) -> bool {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    out.push(Clause { name, ok, detail });
    ok
}
