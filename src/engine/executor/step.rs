//! One step of a run: its attempt made durable before its body, retries
//! with capped backoff within the step's budget, the attempt budget given
//! back when the body never ran, and the checkpoint committed with the
//! step's output.

use super::*;

impl Engine {
    pub(super) async fn run_step(
        &self,
        ctx: &RunCtx<'_>,
        step: &StepDef,
        next: Option<&StepDef>,
        run_state: &mut StateCopies,
    ) -> Result<StepEnd, EngineError> {
        let inputs = match self.resolve_inputs(ctx, step).await? {
            Ok(inputs) => inputs,
            Err(end) => return Ok(end),
        };
        let max = step.max_attempts();
        let in_memory = crate::faults::on(crate::faults::Bug::AttemptsInMemory);
        let mut prestarted = ctx
            .prestarted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|(id, _)| *id == step.id)
            .map(|(_, began)| began);
        loop {
            let began = if let Some(began) = prestarted.take() {
                began
            } else if in_memory {
                self.begin_attempt_in_memory(ctx, step, max).await?
            } else {
                // A try that landed though its answer was lost leaves that
                // attempt begun and never run: at most one attempt spent.
                self.until_written(ctx, "attempt", &mut 0, || {
                    self.store.begin_attempt(
                        ctx.run_id,
                        &step.id,
                        ctx.epoch,
                        max,
                        &self.config.pod_id,
                    )
                })
                .await?
            };
            let attempt = match began {
                BeginAttempt::AlreadySucceeded => return Ok(StepEnd::Succeeded),
                BeginAttempt::Exhausted { attempts } => {
                    self.metrics.inc_attempt("exhausted");
                    let error = format!("exceeded max retries ({attempts} of {max} attempts used)");
                    return self.exhausted(ctx, step, error).await;
                }
                BeginAttempt::Started { attempt } => attempt,
            };
            if let Some(hook) = &self.config.after_attempt_start {
                (hook.0)(ctx.run_id, &step.id);
            }
            if ctx.cancel.is_cancelled() {
                // Stopping between the attempt's commit and its body: the
                // body never began, so the attempt is not spent. Past this
                // check the body is polled before the cancellation is.
                self.give_back(ctx, &step.id, attempt).await?;
                return Ok(StepEnd::Cancelled);
            }
            if !self.config.lease.holds() {
                // Our lease may run out before the body acts: peers may be
                // taking the run. Nothing happens outside; the attempt goes
                // back (when the store answers) and the owner drives the run
                // again once its lease holds, if the run is still its own.
                self.metrics.inc_self_fenced();
                tracing::warn!(
                    run_id = ctx.run_id,
                    step = %step.id,
                    attempt,
                    "self-fenced: lease too close to its end to start the body"
                );
                self.give_back(ctx, &step.id, attempt).await?;
                return Err(EngineError::SelfFenced);
            }
            ctx.progress.mark();
            let result = self
                .execute_body(ctx, step, attempt, &inputs, &run_state.raw)
                .await;
            ctx.progress.mark();
            match result {
                Ok(ok) => {
                    let output = redact(&ok.output, &step.secret_fields);
                    let new_state = run_state.after(step, ok.run_state);
                    // Sequential steps: the next step's attempt starts in
                    // this checkpoint's transaction, when nothing can stop
                    // that step before its body: every predecessor is this
                    // step or already held in memory (so its inputs resolve
                    // without the store). Not under the seed-004 fault, whose
                    // budget lives in memory.
                    let ready = |n: &&StepDef| {
                        n.after
                            .iter()
                            .all(|p| *p == step.id || self.authority.tracked(ctx.run_id, p))
                    };
                    // Nor when the run is stopping: that attempt would be
                    // given back at once.
                    let then_begin = next
                        .filter(|_| !in_memory && !ctx.cancel.is_cancelled())
                        .filter(ready)
                        .map(|n| NextAttempt {
                            node_id: &n.id,
                            max_attempts: n.max_attempts(),
                            pod: &self.config.pod_id,
                        });
                    let mut tried = 0;
                    let committed = self
                        .until_written(ctx, "checkpoint", &mut tried, || {
                            self.store.commit_step_success(StepSuccess {
                                run_id: ctx.run_id,
                                node_id: &step.id,
                                epoch: ctx.epoch,
                                output: &output,
                                output_raw: &ok.output,
                                run_state: &new_state.shown,
                                run_state_raw: &new_state.raw,
                                then_begin,
                                // The last step: the run succeeds in this commit.
                                then_succeed: next.is_none().then_some(self.config.pod_id.as_str()),
                            })
                        })
                        .await;
                    let began_next = match committed {
                        Ok(b) => b,
                        Err(e) if tried > 0 && self.checkpoint_landed(ctx, &step.id).await => {
                            tracing::info!(run_id = ctx.run_id, step = %step.id, refused = %e,
                                "an earlier try of this checkpoint landed though its answer was lost");
                            None
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if let (Some(n), Some(began)) = (next, began_next) {
                        *ctx.prestarted.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((n.id.clone(), began));
                    }
                    if let Some(hook) = &self.config.after_checkpoint {
                        (hook.0)(ctx.run_id, &step.id);
                    }
                    self.authority.record(ctx.run_id, &step.id, ok.output);
                    *run_state = new_state;
                    self.metrics.inc_attempt("succeeded");
                    return Ok(if next.is_none() {
                        StepEnd::RunSucceeded
                    } else {
                        StepEnd::Succeeded
                    });
                }
                Err(BodyErr::Cancelled) => return Ok(StepEnd::Cancelled),
                Err(BodyErr::Store(e)) => return Err(e.into()),
                Err(BodyErr::Fail {
                    class: ErrorClass::Permanent,
                    msg,
                }) => {
                    self.metrics.inc_attempt("failed_permanent");
                    let error = format!("permanent error on attempt {attempt}: {msg}");
                    self.until_written(ctx, "failure", &mut 0, || {
                        self.store
                            .record_step_failure(ctx.run_id, &step.id, ctx.epoch, &error, true)
                    })
                    .await?;
                    return Ok(StepEnd::Failed(error));
                }
                Err(BodyErr::Fail {
                    class: ErrorClass::Transient,
                    msg,
                }) => {
                    self.metrics.inc_attempt("failed_transient");
                    if attempt >= max {
                        let error = format!("exceeded max retries ({max} attempts); last: {msg}");
                        return self.exhausted(ctx, step, error).await;
                    }
                    let error = format!("transient error on attempt {attempt}: {msg}");
                    self.until_written(ctx, "failure", &mut 0, || {
                        self.store
                            .record_step_failure(ctx.run_id, &step.id, ctx.epoch, &error, false)
                    })
                    .await?;
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(StepEnd::Cancelled),
                        _ = tokio::time::sleep(self.backoff(attempt)) => ctx.progress.mark(),
                    }
                }
            }
        }
    }

    /// Whether a checkpoint of `node_id` refused on a later try had in fact
    /// landed on an earlier one (its answer lost: a reset, a deadline): the
    /// run is still at this epoch and the step succeeded. The step can only
    /// have succeeded at this epoch by this pod's own write.
    async fn checkpoint_landed(&self, ctx: &RunCtx<'_>, node_id: &str) -> bool {
        let run = self.store.get_run(ctx.run_id).await;
        let steps = self.store.steps(ctx.run_id).await;
        match (run, steps) {
            (Ok(Some(run)), Ok(steps)) => {
                run.epoch == ctx.epoch
                    && steps
                        .iter()
                        .any(|s| s.node_id == node_id && s.status == StepStatus::Succeeded)
            }
            _ => false,
        }
    }

    /// Give back an attempt whose body never began (see
    /// [`Store::return_attempt`]). A fence is reported (another owner holds
    /// the run); any other store error leaves the attempt spent, which only
    /// errs on the safe side of the budget.
    pub(super) async fn give_back(
        &self,
        ctx: &RunCtx<'_>,
        node_id: &str,
        attempt: i64,
    ) -> Result<(), EngineError> {
        match self
            .store
            .return_attempt(ctx.run_id, node_id, ctx.epoch, attempt)
            .await
        {
            Ok(()) => {
                self.metrics.inc_attempt("returned");
                tracing::info!(
                    run_id = ctx.run_id,
                    step = node_id,
                    attempt,
                    "stopping before the body: attempt given back"
                );
                Ok(())
            }
            Err(e @ StoreError::Fenced { .. }) => Err(e.into()),
            Err(e) => {
                tracing::warn!(run_id = ctx.run_id, step = node_id, attempt, error = %e, "could not give back an attempt whose body never began; it stays spent");
                Ok(())
            }
        }
    }

    /// The seed-004 bug, for fault injection only: the attempt budget is
    /// enforced from a counter in this process's memory, so a crash between
    /// attempts starts it over.
    pub(super) async fn begin_attempt_in_memory(
        &self,
        ctx: &RunCtx<'_>,
        step: &StepDef,
        max: i64,
    ) -> Result<BeginAttempt, EngineError> {
        let key = (ctx.run_id.to_owned(), step.id.clone());
        let attempt = {
            let mut mem = self
                .attempts_in_memory
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = mem.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        if attempt > max {
            return Ok(BeginAttempt::Exhausted {
                attempts: attempt - 1,
            });
        }
        match self
            .store
            .begin_attempt(
                ctx.run_id,
                &step.id,
                ctx.epoch,
                i64::MAX,
                &self.config.pod_id,
            )
            .await?
        {
            BeginAttempt::AlreadySucceeded => Ok(BeginAttempt::AlreadySucceeded),
            _ => Ok(BeginAttempt::Started { attempt }),
        }
    }

    /// Capped exponential backoff with +-20% jitter.
    pub(super) fn backoff(&self, attempt: i64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        let base = self.config.backoff_base.saturating_mul(1 << exp);
        let capped = base.min(self.config.backoff_cap);
        let jitter: f64 = rand::random_range(0.8..1.2);
        capped.mul_f64(jitter)
    }
}
