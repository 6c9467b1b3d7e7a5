//! Every store call with a client-side deadline.
//!
//! A half-open connection (no FIN, no RST: a cut network, a NAT that
//! forgot the flow) hangs a statement until the kernel gives up on
//! retransmitting, which takes many minutes, and sqlx sets no client-side
//! timeout of its own (launchbadge/sqlx#3540). [`Deadlined`] wraps a
//! pod's store so that every call answers within its deadline, with
//! [`StoreError::Deadline`] when the store does not: the run driver backs
//! off and drives the run again, the loops try at their next pass, and
//! the call may or may not have landed (every write is idempotent or
//! fenced, so trying again is safe). The pod's lease view (see
//! `engine::lease`) fences it meanwhile.

use super::*;
use std::future::Future;
use std::time::Duration;

/// The deadline of a pod's store calls unless `--store-deadline-ms` says
/// otherwise: longer than any statement the server lets run
/// (`lock_timeout` 2 s) and than a frozen database's usual thaw, far
/// shorter than a hung socket's minutes.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// A store whose every call has a client-side deadline.
#[derive(Debug)]
pub struct Deadlined {
    inner: Arc<dyn Store>,
    deadline: Duration,
}

impl Deadlined {
    pub fn wrap(inner: Arc<dyn Store>, deadline: Duration) -> Arc<dyn Store> {
        Arc::new(Deadlined { inner, deadline })
    }

    async fn within<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        if crate::faults::on(crate::faults::Bug::NoStoreDeadline) {
            return call.await;
        }
        let r = within(Some(self.inner.metrics()), op, self.deadline, call).await;
        if let Err(StoreError::Deadline { .. }) = &r {
            tracing::warn!(op, deadline = ?self.deadline, "store call given up on at its deadline");
        }
        r
    }
}

/// `call`, or [`StoreError::Deadline`] for `op` once `after` has passed
/// without an answer (counted in `vigil_store_deadline_exceeded_total`
/// when `metrics` are given). Also for the calls that do not go through
/// [`Deadlined`]: liveness renews, probes and registry reads.
pub async fn within<T>(
    metrics: Option<&crate::engine::metrics::Metrics>,
    op: &'static str,
    after: Duration,
    call: impl Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(after, call).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(m) = metrics {
                m.inc_deadline(op);
            }
            Err(StoreError::Deadline { op, after })
        }
    }
}

#[async_trait]
impl Store for Deadlined {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn stats(&self) -> &StoreStats {
        self.inner.stats()
    }

    fn pools(&self) -> Vec<PoolUse> {
        self.inner.pools()
    }

    fn metrics(&self) -> &Arc<crate::engine::metrics::Metrics> {
        self.inner.metrics()
    }

    fn clock(&self) -> &Arc<dyn crate::engine::clock::Clock> {
        self.inner.clock()
    }

    /// Liveness keeps deadlines of its own (the renew loop's, the probes').
    fn liveness(&self) -> &dyn liveness::Liveness {
        self.inner.liveness()
    }

    async fn create_run(&self, run: NewRun) -> StoreResult<(RunRecord, bool)> {
        self.within("create_run", self.inner.create_run(run)).await
    }

    async fn create_claimed_run(
        &self,
        run: NewRun,
        pod: &str,
        first: Option<NextAttempt<'_>>,
    ) -> StoreResult<(RunRecord, Option<Adopted>)> {
        self.within(
            "create_claimed_run",
            self.inner.create_claimed_run(run, pod, first),
        )
        .await
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        self.within("get_run", self.inner.get_run(run_id)).await
    }

    async fn run_ids_with_prefix(&self, prefix: &str, limit: i64) -> StoreResult<Vec<String>> {
        self.within(
            "run_ids_with_prefix",
            self.inner.run_ids_with_prefix(prefix, limit),
        )
        .await
    }

    async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRecord>> {
        self.within("list_runs", self.inner.list_runs(filter)).await
    }

    async fn claim_run(
        &self,
        run_id: &str,
        pod: &str,
        expected_owner: Option<&str>,
    ) -> StoreResult<Claim> {
        self.within(
            "claim_run",
            self.inner.claim_run(run_id, pod, expected_owner),
        )
        .await
    }

    async fn transition(
        &self,
        run_id: &str,
        to: RunState,
        ctx: &TransitionCtx,
    ) -> StoreResult<TransitionRecord> {
        self.within("transition", self.inner.transition(run_id, to, ctx))
            .await
    }

    async fn transitions(&self, run_id: &str) -> StoreResult<Vec<TransitionRecord>> {
        self.within("transitions", self.inner.transitions(run_id))
            .await
    }

    async fn steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        self.within("steps", self.inner.steps(run_id)).await
    }

    async fn run_state_copies(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<(serde_json::Value, serde_json::Value)>> {
        self.within("run_state_copies", self.inner.run_state_copies(run_id))
            .await
    }

    async fn begin_attempt(
        &self,
        run_id: &str,
        node_id: &str,
        epoch: i64,
        max_attempts: i64,
        pod: &str,
    ) -> StoreResult<BeginAttempt> {
        self.within(
            "begin_attempt",
            self.inner
                .begin_attempt(run_id, node_id, epoch, max_attempts, pod),
        )
        .await
    }

    async fn commit_step_success(&self, s: StepSuccess<'_>) -> StoreResult<Option<BeginAttempt>> {
        self.within("commit_step_success", self.inner.commit_step_success(s))
            .await
    }

    async fn return_attempt(
        &self,
        run_id: &str,
        node_id: &str,
        epoch: i64,
        attempt: i64,
    ) -> StoreResult<()> {
        self.within(
            "return_attempt",
            self.inner.return_attempt(run_id, node_id, epoch, attempt),
        )
        .await
    }

    async fn record_step_failure(
        &self,
        run_id: &str,
        node_id: &str,
        epoch: i64,
        error: &str,
        final_failure: bool,
    ) -> StoreResult<()> {
        self.within(
            "record_step_failure",
            self.inner
                .record_step_failure(run_id, node_id, epoch, error, final_failure),
        )
        .await
    }

    async fn step_outputs_raw(
        &self,
        run_id: &str,
        node_ids: &[String],
    ) -> StoreResult<HashMap<String, serde_json::Value>> {
        self.within(
            "step_outputs_raw",
            self.inner.step_outputs_raw(run_id, node_ids),
        )
        .await
    }

    async fn append_chunk(
        &self,
        run_id: &str,
        epoch: i64,
        seq: i64,
        part: Option<(&str, i64)>,
        data: &str,
    ) -> StoreResult<()> {
        self.within(
            "append_chunk",
            self.inner.append_chunk(run_id, epoch, seq, part, data),
        )
        .await
    }

    async fn chunks(&self, run_id: &str) -> StoreResult<Vec<Chunk>> {
        self.within("chunks", self.inner.chunks(run_id)).await
    }

    async fn run_and_chunks(
        &self,
        run_id: &str,
        epoch: i64,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Option<(RunRecord, Vec<Chunk>)>> {
        self.within(
            "run_and_chunks",
            self.inner.run_and_chunks(run_id, epoch, seq, limit),
        )
        .await
    }

    async fn chunks_after(
        &self,
        run_id: &str,
        epoch: i64,
        seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<Chunk>> {
        self.within(
            "chunks_after",
            self.inner.chunks_after(run_id, epoch, seq, limit),
        )
        .await
    }

    async fn kept_parts(&self, run_id: &str, epoch: i64) -> StoreResult<Vec<StreamPartRow>> {
        self.within("kept_parts", self.inner.kept_parts(run_id, epoch))
            .await
    }

    async fn pending_runs(&self, limit: i64) -> StoreResult<Vec<String>> {
        self.within("pending_runs", self.inner.pending_runs(limit))
            .await
    }

    async fn effects(&self, run_id: &str) -> StoreResult<Vec<EffectRecord>> {
        self.within("effects", self.inner.effects(run_id)).await
    }

    async fn heartbeat_run(&self, run_id: &str, epoch: i64) -> StoreResult<()> {
        self.within("heartbeat_run", self.inner.heartbeat_run(run_id, epoch))
            .await
    }

    async fn orphaned_runs(&self, limit: i64) -> StoreResult<Vec<(String, Option<String>)>> {
        self.within("orphaned_runs", self.inner.orphaned_runs(limit))
            .await
    }

    async fn reap_stale(&self, by: &str) -> StoreResult<ReapReport> {
        self.within("reap_stale", self.inner.reap_stale(by)).await
    }

    async fn time_out_overdue(&self, grace_ms: i64, by: &str) -> StoreResult<Vec<String>> {
        self.within(
            "time_out_overdue",
            self.inner.time_out_overdue(grace_ms, by),
        )
        .await
    }

    async fn mark_lost(&self, lost_after_ms: i64, by: &str) -> StoreResult<Vec<String>> {
        self.within("mark_lost", self.inner.mark_lost(lost_after_ms, by))
            .await
    }

    async fn claims(&self, run_id: &str) -> StoreResult<Vec<ClaimRecord>> {
        self.within("claims", self.inner.claims(run_id)).await
    }

    async fn switches(&self) -> StoreResult<Vec<SwitchRow>> {
        self.within("switches", self.inner.switches()).await
    }

    async fn set_switch(
        &self,
        name: &str,
        enabled: bool,
        who: &str,
        reason: &str,
    ) -> StoreResult<SwitchAudit> {
        self.within(
            "set_switch",
            self.inner.set_switch(name, enabled, who, reason),
        )
        .await
    }

    async fn switch_audit(&self, name: &str) -> StoreResult<Vec<SwitchAudit>> {
        self.within("switch_audit", self.inner.switch_audit(name))
            .await
    }

    async fn settings(&self) -> StoreResult<Vec<SettingRow>> {
        self.within("settings", self.inner.settings()).await
    }

    async fn set_setting(
        &self,
        name: &str,
        value: i64,
        who: &str,
        reason: &str,
    ) -> StoreResult<SettingAudit> {
        self.within(
            "set_setting",
            self.inner.set_setting(name, value, who, reason),
        )
        .await
    }

    async fn setting_audit(&self, name: &str) -> StoreResult<Vec<SettingAudit>> {
        self.within("setting_audit", self.inner.setting_audit(name))
            .await
    }
}
