//! What a step does: the body of each step kind (sleep, emit, http,
//! compute, mutate, fail, ...), bounded by its timeout, and the run's actor
//! state it leaves behind.

use super::*;

impl Engine {
    pub(super) async fn execute_body(
        &self,
        ctx: &RunCtx<'_>,
        step: &StepDef,
        attempt: i64,
        inputs: &Map<String, Value>,
        run_state: &Value,
    ) -> Result<BodyOk, BodyErr> {
        // The side effect an external system sees (one `effects` row per
        // execution) was recorded with the attempt, in begin_attempt.
        // Every step has a timeout: an attempt that goes that long without
        // progress (an emit's chunk; the end of the body for other kinds)
        // fails as transient, so a hung step cannot hold its run forever.
        let limit = step.timeout(&self.config.step_timeouts);
        let progress = tokio::sync::Notify::new();
        let body = self.body(ctx, step, attempt, inputs, run_state, &progress);
        let timed = async {
            tokio::pin!(body);
            loop {
                tokio::select! {
                    r = &mut body => return r,
                    // A permit is kept if progress came between two polls.
                    () = progress.notified() => {}
                    () = tokio::time::sleep(limit) => {
                        let ms = limit.as_millis();
                        tracing::warn!(run_id = ctx.run_id, step = %step.id, attempt, timeout_ms = %ms, "step made no progress within its timeout");
                        return Err(BodyErr::Fail {
                            class: ErrorClass::Transient,
                            msg: format!("step timed out: no progress within {ms} ms"),
                        });
                    }
                }
            }
        };
        // The body is polled first: once its attempt is spent (the caller
        // checked cancellation after starting it), the body begins.
        let ok = tokio::select! {
            biased;
            r = timed => r?,
            _ = ctx.cancel.cancelled() => return Err(BodyErr::Cancelled),
        };
        // Injected failures come after the body ran: its effects happened,
        // but its output and state changes must not be committed.
        if let Some(fail) = step.fail.as_ref().filter(|f| attempt <= i64::from(f.first)) {
            return Err(BodyErr::Fail {
                class: fail.class,
                msg: format!("injected failure on attempt {attempt}"),
            });
        }
        Ok(ok)
    }

    pub(super) async fn body(
        &self,
        ctx: &RunCtx<'_>,
        step: &StepDef,
        attempt: i64,
        inputs: &Map<String, Value>,
        run_state: &Value,
        progress: &tokio::sync::Notify,
    ) -> Result<BodyOk, BodyErr> {
        let output = |output| {
            Ok(BodyOk {
                output,
                run_state: None,
            })
        };
        match &step.kind {
            StepKind::Emit {
                chunks,
                interval_ms,
                text,
            } => {
                for i in 0..*chunks {
                    if i > 0 && *interval_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(*interval_ms)).await;
                    }
                    let seq = ctx
                        .next_seq
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let data = text
                        .replace("{i}", &i.to_string())
                        .replace("{step}", &step.id);
                    // Tagged with the attempt, so a claim keeps these
                    // chunks iff this attempt is the step's succeeded one.
                    self.until_written(ctx, "chunk", &mut 0, || {
                        self.store.append_chunk(
                            ctx.run_id,
                            ctx.epoch,
                            seq,
                            Some((&step.id, attempt)),
                            &data,
                        )
                    })
                    .await?;
                    self.touched(ctx.run_id);
                    ctx.progress.mark();
                    progress.notify_one();
                }
                output(serde_json::json!({ "chunks": chunks }))
            }
            StepKind::Sleep { ms } => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                output(serde_json::json!({ "slept_ms": ms }))
            }
            StepKind::Compute { output: template } => output(fill_template(template, inputs)?),
            StepKind::Fail => output(serde_json::json!({})),
            StepKind::Mutate { set } => {
                let mut next = match run_state {
                    Value::Object(m) => m.clone(),
                    _ => Map::new(),
                };
                for (k, v) in set {
                    next.insert(k.clone(), fill_template(v, inputs)?);
                }
                Ok(BodyOk {
                    output: serde_json::json!({ "set": set.keys().collect::<Vec<_>>() }),
                    run_state: Some(Value::Object(next)),
                })
            }
            StepKind::FanIn => output(Value::Object(inputs.clone())),
            StepKind::Http { url, method, body } => {
                let url = match url.strip_prefix(WITNESS_URL) {
                    None => url.clone(),
                    Some(rest) => match &self.config.witness_url {
                        Some(w) => format!("{}{rest}", w.trim_end_matches('/')),
                        None => return output(serde_json::json!({ "witness": null })),
                    },
                };
                let url = &url;
                let mut inputs = inputs.clone();
                inputs.insert(
                    "vigil".into(),
                    serde_json::json!({
                        "run": ctx.run_id,
                        "step": step.id,
                        "attempt": attempt,
                        "epoch": ctx.epoch,
                        "pod": self.config.pod_id,
                    }),
                );
                let inputs = &inputs;
                let method =
                    reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| BodyErr::Fail {
                        class: ErrorClass::Permanent,
                        msg: e.to_string(),
                    })?;
                let timeout = step.timeout(&self.config.step_timeouts);
                let mut req = self.http.request(method, url).timeout(timeout);
                if let Some(b) = body {
                    req = req.json(&fill_template(b, inputs)?);
                }
                let resp = req.send().await.map_err(|e| BodyErr::Fail {
                    // Connection errors and timeouts are worth another try;
                    // a request we could not even build is not.
                    class: if e.is_builder() {
                        ErrorClass::Permanent
                    } else {
                        ErrorClass::Transient
                    },
                    msg: if e.is_timeout() {
                        format!(
                            "request to {url} timed out after {} ms",
                            timeout.as_millis()
                        )
                    } else {
                        format!("request to {url} failed: {e}")
                    },
                })?;
                let status = resp.status();
                // Under the same per-request timeout as the headers.
                let text = resp.text().await.map_err(|e| BodyErr::Fail {
                    class: ErrorClass::Transient,
                    msg: format!("reading the response from {url}: {e}"),
                })?;
                if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                    return Err(BodyErr::Fail {
                        class: ErrorClass::Transient,
                        msg: format!("{url} answered {status}"),
                    });
                }
                if !status.is_success() {
                    return Err(BodyErr::Fail {
                        class: ErrorClass::Permanent,
                        msg: format!("{url} answered {status}"),
                    });
                }
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                output(serde_json::json!({ "status": status.as_u16(), "body": body }))
            }
        }
    }
}

/// The client of `http` steps. Each request carries its step's own timeout
/// (see [`StepDef::timeout`]); the client's own bound is the default, and a
/// connection must be up within 10 s or that bound if shorter.
pub(super) fn http_client(t: &StepTimeouts) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(t.http.min(Duration::from_secs(10)))
        .timeout(t.http)
        .build()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot build the http step client with timeouts");
            reqwest::Client::new()
        })
}

/// [`workflow::fill_template`]; a template that cannot be filled fails the
/// step permanently (load already refused malformed ones).
///
/// [`workflow::fill_template`]: crate::engine::workflow::fill_template
fn fill_template(v: &Value, inputs: &Map<String, Value>) -> Result<Value, BodyErr> {
    crate::engine::workflow::fill_template(v, inputs).map_err(|msg| BodyErr::Fail {
        class: ErrorClass::Permanent,
        msg,
    })
}

/// The run's actor state after a step: `raw` (what execution carries on)
/// and `shown` (the stored `run_state` people see), where a mutate step's
/// secret paths read [`REDACTED`].
///
/// [`REDACTED`]: crate::engine::workflow::REDACTED
#[derive(Debug, Clone)]
pub(super) struct StateCopies {
    pub(super) raw: Value,
    pub(super) shown: Value,
}

impl StateCopies {
    /// The copies after `step` succeeded with `raw_next` as the raw state
    /// (None: the step changes no state).
    pub(super) fn after(&self, step: &StepDef, raw_next: Option<Value>) -> StateCopies {
        let Some(raw) = raw_next else {
            return self.clone();
        };
        let mut shown = match &self.shown {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        if let StepKind::Mutate { set } = &step.kind {
            for k in set.keys() {
                if let Some(v) = raw.get(k) {
                    shown.insert(k.clone(), v.clone());
                }
            }
        }
        StateCopies {
            shown: redact(&Value::Object(shown), &step.state_secrets),
            raw,
        }
    }
}
