//! The SQL both backends share. SQLite and PostgreSQL agree on almost all of
//! it (`$N` placeholders, `RETURNING`, `ON CONFLICT`, `IS NOT DISTINCT FROM`);
//! where they differ (row locks, the batched node-id list, the transaction
//! opener), each backend's `dialect` module says so. The implementation is
//! written once, in [`impl_store!`], and expanded for each backend so that
//! both run literally the same code: only the method bodies that run SQL
//! live in it; the rows they read are decoded in `rows` (and `kv` for the
//! audited key-value tables), in ordinary code.

macro_rules! impl_store {
    ($store:ty, $db:ty, $dialect:ident) => {
        use $crate::engine::store::kv::{SETTINGS, SWITCHES};
        use $crate::engine::store::rows::{self, json_from_str, late_str, run_cols, state_from_str};
        use $crate::engine::store::statements;
        use $crate::engine::store::{
            Adopted, BeginAttempt, Checkpoint, Claim, NextAttempt, ClaimRecord, ReapReport, EffectRecord, NewRun, RunFilter, StepSuccess, StoreError,
            StoreResult, StoreStats, SwitchAudit, SwitchRow, SettingAudit, SettingRow, TransitionCtx,
        };
        use $crate::engine::run::{
            Chunk, RunRecord, RunState, StepRecord, TransitionRecord, allowed_sources,
        };
        use std::collections::HashMap;

        $crate::engine::store::sql_tx::impl_store_tx!($store, $db, $dialect);

        #[async_trait::async_trait]
        impl $crate::engine::store::Store for $store {
            fn backend(&self) -> &'static str {
                $dialect::NAME
            }

            fn stats(&self) -> &StoreStats {
                &self.stats
            }

            fn pools(&self) -> Vec<$crate::engine::store::PoolUse> {
                self.pool_uses()
            }

            fn metrics(&self) -> &std::sync::Arc<$crate::engine::metrics::Metrics> {
                &self.metrics
            }

            fn clock(&self) -> &std::sync::Arc<dyn $crate::engine::clock::Clock> {
                &self.clock
            }

            async fn create_run(&self, run: NewRun) -> StoreResult<(RunRecord, bool)> {
                let now = self.clock.now_ms();
                let id = uuid::Uuid::now_v7().to_string();
                // One connection for the insert and the read back.
                let mut conn = self.pool.acquire().await?;
                insert_run(&mut conn, &id, &run, now).await?;
                // A repeated idempotency key returns the run it created first.
                let (sql, key) = match &run.idempotency_key {
                    Some(key) => (rows::RUN_BY_IDEMPOTENCY_KEY, key),
                    None => (rows::RUN_BY_ID, &id),
                };
                let row = sqlx::query_as::<_, rows::RunRow>(sql)
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                let run = RunRecord::try_from(row)?;
                let created = run.id == id;
                Ok((run, created))
            }

            async fn create_claimed_run(
                &self,
                run: NewRun,
                pod: &str,
                first: Option<NextAttempt<'_>>,
            ) -> StoreResult<(RunRecord, Option<Adopted>)> {
                let (record, adopted) = $dialect::create_claimed(self, run, pod, first).await?;
                if adopted.is_some() {
                    self.metrics.inc_transition("pending", "running");
                }
                Ok((record, adopted))
            }

            async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
                let row = sqlx::query_as::<_, rows::RunRow>(rows::RUN_BY_ID)
                    .bind(run_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(RunRecord::try_from).transpose()
            }

            async fn run_ids_with_prefix(&self, prefix: &str, limit: i64) -> StoreResult<Vec<String>> {
                // The caller passes hex digits and dashes only: no LIKE
                // metacharacter reaches the pattern.
                Ok(sqlx::query_scalar("SELECT id FROM runs WHERE id LIKE $1 ORDER BY id LIMIT $2")
                    .bind(format!("{prefix}%"))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRecord>> {
                let rows = sqlx::query_as::<_, rows::RunRow>(concat!(
                    "SELECT ",
                    run_cols!(),
                    " FROM runs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR lane = $2) \
                     AND ($3 IS NULL OR owner_pod = $3) ORDER BY created_at DESC, id DESC LIMIT $4"
                ))
                .bind(filter.state.map(|s| s.as_str()))
                .bind(&filter.lane)
                .bind(&filter.owner_pod)
                .bind(filter.limit.unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(RunRecord::try_from).collect()
            }

            async fn claim_run(
                &self,
                run_id: &str,
                pod: &str,
                expected_owner: Option<&str>,
            ) -> StoreResult<Claim> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_claim().await?;
                let select = if $crate::faults::on($crate::faults::Bug::StallingClaims) {
                    if $dialect::NAME == "postgres" {
                        sqlx::query("SET LOCAL lock_timeout = 0").execute(&mut **tx).await?;
                    }
                    $dialect::STATE_SELECT_FOR_UPDATE
                } else {
                    $dialect::CLAIM_SELECT_FOR_UPDATE
                };
                let row = sqlx::query_as::<_, rows::LockedRunRow>(select)
                    .bind(run_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::RunNotFound { run_id: run_id.to_owned() });
                };
                let from = state_from_str("runs", run_id, &row.state)?;
                let found = row.owner_pod;
                let updated: Option<i64> = sqlx::query_scalar(statements::claim_sql())
                    .bind(run_id)
                    .bind(pod)
                    .bind(expected_owner)
                    .bind(now)
                    .fetch_optional(&mut **tx)
                    .await?;
                let Some(epoch) = updated else {
                    drop(tx);
                    return Err(statements::claim_rejection(
                        &self.metrics,
                        run_id,
                        from,
                        expected_owner,
                        found,
                    ));
                };
                if let Some(purge) = statements::purge_sql() {
                    sqlx::query(purge)
                        .bind(run_id)
                        .bind(epoch)
                        .execute(&mut **tx)
                        .await?;
                }
                let was_pending = from == RunState::Pending;
                log_claim(&mut tx, run_id, found.as_deref(), pod, epoch, was_pending, now).await?;
                tx.commit().await?;
                if was_pending {
                    self.metrics.inc_transition("pending", "running");
                }
                Ok(Claim { epoch, from })
            }

            async fn transition(
                &self,
                run_id: &str,
                to: RunState,
                ctx: &TransitionCtx,
            ) -> StoreResult<TransitionRecord> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let record = transition_in(&mut tx, &self.metrics, run_id, to, ctx, now).await?;
                tx.commit().await?;
                self.metrics.inc_transition(record.from.as_str(), record.to.as_str());
                Ok(record)
            }

            async fn transitions(&self, run_id: &str) -> StoreResult<Vec<TransitionRecord>> {
                let rows = sqlx::query_as::<_, rows::TransitionRow>(
                    "SELECT run_id, from_state, to_state, epoch, pod, reason, late, at \
                     FROM run_transitions WHERE run_id = $1 ORDER BY id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(TransitionRecord::try_from).collect()
            }

            async fn steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
                let rows = sqlx::query_as::<_, rows::StepRow>(
                    "SELECT run_id, node_id, status, attempts, output, error, updated_at \
                     FROM steps WHERE run_id = $1 ORDER BY node_id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(StepRecord::try_from).collect()
            }

            async fn begin_attempt(
                &self,
                run_id: &str,
                node_id: &str,
                epoch: i64,
                max_attempts: i64,
                pod: &str,
            ) -> StoreResult<BeginAttempt> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, run_id, epoch, "attempt").await?;
                let began =
                    next_attempt(&mut tx, run_id, node_id, epoch, max_attempts, pod, now).await?;
                if matches!(began, BeginAttempt::Started { .. }) {
                    tx.commit().await?;
                }
                Ok(began)
            }

            async fn commit_step_success(
                &self,
                s: StepSuccess<'_>,
            ) -> StoreResult<Option<BeginAttempt>> {
                let (pool, metrics, clock, gate) = (
                    self.pool.clone(),
                    self.metrics.clone(),
                    self.clock.clone(),
                    self.gate.clone(),
                );
                self.checkpoints
                    .submit(Checkpoint::from(s), move |jobs| {
                        $dialect::checkpoint_group(
                            pool.clone(),
                            metrics.clone(),
                            clock.clone(),
                            gate.clone(),
                            jobs,
                        )
                    })
                    .await
            }

            async fn return_attempt(
                &self,
                run_id: &str,
                node_id: &str,
                epoch: i64,
                attempt: i64,
            ) -> StoreResult<()> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, run_id, epoch, "attempt").await?;
                // Only an attempt started at this epoch (its effects row says
                // so) and still the step's latest running one goes back;
                // anything else rolls back untouched.
                let effect = sqlx::query(
                    "DELETE FROM effects WHERE run_id = $1 AND node_id = $2 \
                     AND attempt = $3 AND epoch = $4",
                )
                .bind(run_id)
                .bind(node_id)
                .bind(attempt)
                .bind(epoch)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if effect == 0 {
                    return Ok(());
                }
                let gone = sqlx::query(
                    "DELETE FROM steps WHERE run_id = $1 AND node_id = $2 \
                     AND status = 'running' AND attempts = $3 AND attempts = 1",
                )
                .bind(run_id)
                .bind(node_id)
                .bind(attempt)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let back = if gone == 1 {
                    1
                } else {
                    sqlx::query(
                        "UPDATE steps SET attempts = attempts - 1, updated_at = $4 \
                         WHERE run_id = $1 AND node_id = $2 AND status = 'running' \
                         AND attempts = $3",
                    )
                    .bind(run_id)
                    .bind(node_id)
                    .bind(attempt)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
                };
                if back == 1 {
                    tx.commit().await?;
                }
                Ok(())
            }

            async fn record_step_failure(
                &self,
                run_id: &str,
                node_id: &str,
                epoch: i64,
                error: &str,
                final_failure: bool,
            ) -> StoreResult<()> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, run_id, epoch, "step_failure").await?;
                sqlx::query(
                    "UPDATE steps SET status = $3, error = $4, updated_at = $5 \
                     WHERE run_id = $1 AND node_id = $2 AND status <> 'succeeded'",
                )
                .bind(run_id)
                .bind(node_id)
                .bind(if final_failure { "failed" } else { "running" })
                .bind(error)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn run_state_copies(
                &self,
                run_id: &str,
            ) -> StoreResult<Option<(serde_json::Value, serde_json::Value)>> {
                let row = sqlx::query_as::<_, rows::RunStateRow>(
                    "SELECT run_state, run_state_raw FROM runs WHERE id = $1",
                )
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| r.into_copies(run_id)).transpose()
            }

            async fn step_outputs_raw(
                &self,
                run_id: &str,
                node_ids: &[String],
            ) -> StoreResult<HashMap<String, serde_json::Value>> {
                self.stats
                    .output_raw_queries
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let sql = if $crate::faults::on($crate::faults::Bug::ReadRedacted) {
                    $dialect::OUTPUTS_REDACTED_SELECT
                } else {
                    $dialect::OUTPUTS_RAW_SELECT
                };
                let rows = sqlx::query_as::<_, rows::OutputRawRow>(sql)
                    .bind(run_id)
                    .bind($dialect::node_list(node_ids))
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = HashMap::with_capacity(rows.len());
                for rows::OutputRawRow { node_id, output_raw } in rows {
                    // NULL output_raw: written before the column existed. A miss.
                    if let Some(raw) = output_raw {
                        let key = format!("{run_id}/{node_id}");
                        out.insert(node_id, json_from_str("steps", &key, "output_raw", &raw)?);
                    }
                }
                Ok(out)
            }

            async fn append_chunk(
                &self,
                run_id: &str,
                epoch: i64,
                seq: i64,
                part: Option<(&str, i64)>,
                data: &str,
            ) -> StoreResult<()> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, run_id, epoch, "chunk").await?;
                sqlx::query(
                    // Written once: a try whose answer was lost and the
                    // owner's next try of the same chunk (same epoch and
                    // sequence number) leave one row.
                    "INSERT INTO chunks (run_id, epoch, seq, node_id, attempt, data, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, epoch, seq) DO NOTHING",
                )
                .bind(run_id)
                .bind(epoch)
                .bind(seq)
                .bind(part.map(|(n, _)| n))
                .bind(part.map(|(_, a)| a))
                .bind(data)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn chunks(&self, run_id: &str) -> StoreResult<Vec<Chunk>> {
                let rows = sqlx::query_as::<_, rows::ChunkRow>(
                    "SELECT run_id, epoch, seq, node_id, attempt, data, at FROM chunks WHERE run_id = $1 \
                     ORDER BY epoch, seq",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Chunk::from).collect())
            }

            async fn run_and_chunks(
                &self,
                run_id: &str,
                epoch: i64,
                seq: i64,
                limit: i64,
            ) -> StoreResult<Option<(RunRecord, Vec<Chunk>)>> {
                let rows = sqlx::query_as::<_, rows::RunChunkRow>(rows::RUN_AND_CHUNKS)
                    .bind(run_id)
                    .bind(epoch)
                    .bind(seq)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?;
                let chunks: Vec<Chunk> = rows.iter().filter_map(rows::RunChunkRow::chunk).collect();
                let Some(first) = rows.into_iter().next() else {
                    return Ok(None);
                };
                Ok(Some((RunRecord::try_from(first.run)?, chunks)))
            }

            async fn chunks_after(
                &self,
                run_id: &str,
                epoch: i64,
                seq: i64,
                limit: i64,
            ) -> StoreResult<Vec<Chunk>> {
                let rows = sqlx::query_as::<_, rows::ChunkRow>(
                    "SELECT run_id, epoch, seq, node_id, attempt, data, at FROM chunks WHERE run_id = $1 \
                     AND (epoch > $2 OR (epoch = $2 AND seq > $3)) ORDER BY epoch, seq LIMIT $4",
                )
                .bind(run_id)
                .bind(epoch)
                .bind(seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Chunk::from).collect())
            }

            async fn kept_parts(
                &self,
                run_id: &str,
                epoch: i64,
            ) -> StoreResult<Vec<$crate::engine::store::StreamPartRow>> {
                let rows = sqlx::query_as::<_, rows::PartRow>(
                    "SELECT epoch, node_id, attempt FROM chunks WHERE run_id = $1 AND epoch < $2 \
                     AND node_id IS NOT NULL AND attempt IS NOT NULL \
                     GROUP BY epoch, node_id, attempt ORDER BY epoch, MIN(seq)",
                )
                .bind(run_id)
                .bind(epoch)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn pending_runs(&self, limit: i64) -> StoreResult<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT id FROM runs WHERE state = 'pending' ORDER BY created_at, id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn effects(&self, run_id: &str) -> StoreResult<Vec<EffectRecord>> {
                let rows = sqlx::query_as::<_, rows::EffectRow>(
                    "SELECT run_id, node_id, attempt, epoch, pod, at FROM effects WHERE run_id = $1 \
                     ORDER BY id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(EffectRecord::from).collect())
            }

            fn liveness(&self) -> &dyn $crate::engine::store::liveness::Liveness {
                self
            }

            async fn heartbeat_run(&self, run_id: &str, epoch: i64) -> StoreResult<()> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, run_id, epoch, "heartbeat").await?;
                sqlx::query("UPDATE runs SET heartbeat_at = $2 WHERE id = $1")
                    .bind(run_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn orphaned_runs(&self, limit: i64) -> StoreResult<Vec<(String, Option<String>)>> {
                Ok(sqlx::query_as(
                    "SELECT id, owner_pod FROM runs r WHERE state = 'running' \
                     AND NOT EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = r.owner_pod) \
                     ORDER BY updated_at LIMIT $1",
                )
                .bind(limit)
                .fetch_all(self.control())
                .await?)
            }

            async fn reap_stale(&self, by: &str) -> StoreResult<ReapReport> {
                if $crate::faults::on($crate::faults::Bug::NonAtomicTimeoutRetry) {
                    // The seed-003 shape: the timeout commits on its own, and
                    // the process dies in the window before the retry insert.
                    let now = self.clock.now_ms();
                    let mut tx = self.begin_write().await?;
                    let rows = sqlx::query_as::<_, rows::MovedRow>(
                        "UPDATE runs SET state = 'timed_out', updated_at = $1 \
                         WHERE state = 'running' AND heartbeat_timeout_ms IS NOT NULL \
                         AND heartbeat_at + heartbeat_timeout_ms < $1 \
                         AND EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = runs.owner_pod) \
                         RETURNING id, epoch",
                    )
                    .bind(now)
                    .fetch_all(&mut **tx)
                    .await?;
                    let ids = log_bulk(&mut tx, rows, "running", "timed_out", by, "reaper: no heartbeat within its lane's timeout", now).await?;
                    tx.commit().await?;
                    if !ids.is_empty() {
                        tracing::error!(runs = ?ids, "fault injection: crashing between the timeout and its retry");
                        std::process::exit(137);
                    }
                    return Ok(ReapReport::default());
                }
                let report = self.reap_stale_impl(self.clock.now_ms(), by).await?;
                for (_, lane) in &report.timed_out {
                    self.metrics.inc_transition("running", "timed_out");
                    self.metrics.inc_lane(&self.metrics.reaper_timeouts, lane);
                }
                for (_, lane, _) in &report.retried {
                    self.metrics.inc_lane(&self.metrics.reaper_retries, lane);
                }
                Ok(report)
            }

            async fn time_out_overdue(&self, grace_ms: i64, by: &str) -> StoreResult<Vec<String>> {
                // Rows another session holds are left for the next pass.
                let sql = statements::overdue_sql($dialect::SKIP_LOCKED);
                self.move_running(sql, grace_ms, "timed_out", by, "reaper: past its deadline").await
            }

            async fn mark_lost(&self, lost_after_ms: i64, by: &str) -> StoreResult<Vec<String>> {
                // Orphaned since: see statements::lost_sql.
                let sql = statements::lost_sql($dialect::SKIP_LOCKED);
                let ids = self.move_running(sql, lost_after_ms, "lost", by, "janitor: owner gone, not resumed").await?;
                for _ in &ids {
                    self.metrics.janitor_lost.inc();
                }
                Ok(ids)
            }

            async fn claims(&self, run_id: &str) -> StoreResult<Vec<ClaimRecord>> {
                let rows = sqlx::query_as::<_, rows::ClaimRow>(
                    "SELECT run_id, from_pod, to_pod, epoch, at FROM run_claims WHERE run_id = $1 ORDER BY id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(ClaimRecord::from).collect())
            }

            async fn switches(&self) -> StoreResult<Vec<SwitchRow>> {
                Ok(self.kv_list::<bool>(SWITCHES).await?.into_iter().map(Into::into).collect())
            }

            async fn set_switch(
                &self,
                name: &str,
                enabled: bool,
                who: &str,
                reason: &str,
            ) -> StoreResult<SwitchAudit> {
                Ok(self.kv_set(SWITCHES, name, enabled, who, reason).await?.into())
            }

            async fn switch_audit(&self, name: &str) -> StoreResult<Vec<SwitchAudit>> {
                Ok(self.kv_audit::<bool>(SWITCHES, name).await?.into_iter().map(Into::into).collect())
            }

            async fn settings(&self) -> StoreResult<Vec<SettingRow>> {
                Ok(self.kv_list::<i64>(SETTINGS).await?.into_iter().map(Into::into).collect())
            }

            async fn set_setting(
                &self,
                name: &str,
                value: i64,
                who: &str,
                reason: &str,
            ) -> StoreResult<SettingAudit> {
                Ok(self.kv_set(SETTINGS, name, value, who, reason).await?.into())
            }

            async fn setting_audit(&self, name: &str) -> StoreResult<Vec<SettingAudit>> {
                Ok(self.kv_audit::<i64>(SETTINGS, name).await?.into_iter().map(Into::into).collect())
            }
        }
    };
}
pub(crate) use impl_store;
