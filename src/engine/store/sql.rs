//! The SQL both backends share. SQLite and PostgreSQL agree on almost all of
//! it (`$N` placeholders, `RETURNING`, `ON CONFLICT`, `IS NOT DISTINCT FROM`);
//! where they differ (row locks, the batched node-id list, the transaction
//! opener), each backend's `dialect` module says so. The implementation is
//! written once, in [`impl_store!`], and expanded for each backend so that
//! both run literally the same code.

/// Columns of `runs` in the order [`decode_run!`] reads them.
macro_rules! run_cols {
    () => {
        "id, workflow, lane, input, state, owner_pod, epoch, late_completion, run_state, \
         idempotency_key, error, deadline_at, created_at, updated_at, heartbeat_timeout_ms, \
         heartbeat_at, retries_left, family, retry_of"
    };
}
pub(crate) use run_cols;

macro_rules! impl_store {
    ($store:ty, $db:ty, $dialect:ident) => {
        use $crate::engine::store::sql::run_cols;
        use $crate::engine::store::{
            BeginAttempt, Claim, ClaimRecord, ReapReport, EffectRecord, NewRun, RunFilter, StepSuccess, StoreError,
            StoreResult, StoreStats, SwitchAudit, SwitchRow, SettingAudit, SettingRow, TransitionCtx, json_from_str,
            state_from_str, status_from_str,
        };
        use $crate::engine::run::{
            Chunk, LateCompletion, RunRecord, RunState, StepRecord, TransitionRecord,
            allowed_sources,
        };
        use sqlx::Row as _;
        use std::collections::HashMap;

        type DbRow = <$db as sqlx::Database>::Row;

        fn decode_run(row: &DbRow) -> StoreResult<RunRecord> {
            let id: String = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let input: String = row.try_get("input")?;
            let run_state: String = row.try_get("run_state")?;
            let late: String = row.try_get("late_completion")?;
            let late_completion = match late.as_str() {
                "reject" => LateCompletion::Reject,
                "accept" => LateCompletion::Accept,
                other => {
                    return Err(StoreError::Corrupt {
                        table: "runs",
                        key: id,
                        problem: format!("unknown late_completion policy {other:?}"),
                    });
                }
            };
            Ok(RunRecord {
                workflow: row.try_get("workflow")?,
                lane: row.try_get("lane")?,
                input: json_from_str("runs", &id, "input", &input)?,
                state: state_from_str("runs", &id, &state)?,
                owner_pod: row.try_get("owner_pod")?,
                epoch: row.try_get("epoch")?,
                late_completion,
                run_state: json_from_str("runs", &id, "run_state", &run_state)?,
                idempotency_key: row.try_get("idempotency_key")?,
                error: row.try_get("error")?,
                deadline_at_ms: row.try_get("deadline_at")?,
                created_at_ms: row.try_get("created_at")?,
                updated_at_ms: row.try_get("updated_at")?,
                heartbeat_timeout_ms: row.try_get("heartbeat_timeout_ms")?,
                heartbeat_at_ms: row.try_get("heartbeat_at")?,
                retries_left: row.try_get("retries_left")?,
                family: row.try_get("family")?,
                retry_of: row.try_get("retry_of")?,
                id,
            })
        }

        fn decode_transition(row: &DbRow) -> StoreResult<TransitionRecord> {
            let run_id: String = row.try_get("run_id")?;
            let from: String = row.try_get("from_state")?;
            let to: String = row.try_get("to_state")?;
            Ok(TransitionRecord {
                from: state_from_str("run_transitions", &run_id, &from)?,
                to: state_from_str("run_transitions", &run_id, &to)?,
                epoch: row.try_get("epoch")?,
                pod: row.try_get("pod")?,
                reason: row.try_get("reason")?,
                late: row.try_get("late")?,
                at_ms: row.try_get("at")?,
                run_id,
            })
        }

        fn decode_chunk(row: &DbRow) -> StoreResult<Chunk> {
            Ok(Chunk {
                run_id: row.try_get("run_id")?,
                epoch: row.try_get("epoch")?,
                seq: row.try_get("seq")?,
                node_id: row.try_get("node_id")?,
                attempt: row.try_get("attempt")?,
                data: row.try_get("data")?,
                at_ms: row.try_get("at")?,
            })
        }

        fn late_str(p: LateCompletion) -> &'static str {
            match p {
                LateCompletion::Reject => "reject",
                LateCompletion::Accept => "accept",
            }
        }

        /// The transition-log rows of a bulk state change (reaper, janitor),
        /// in the caller's transaction. `rows` carry `id` and `epoch`.
        async fn log_bulk(
            tx: &mut sqlx::Transaction<'static, $db>,
            rows: &[DbRow],
            from: &str,
            to: &str,
            by: &str,
            reason: &str,
            now: i64,
        ) -> StoreResult<Vec<String>> {
            debug_assert!(allowed_sources(to.parse().unwrap_or(RunState::Pending))
                .iter()
                .any(|s| s.as_str() == from));
            let mut ids = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get("id")?;
                let epoch: i64 = row.try_get("epoch")?;
                sqlx::query(
                    "INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, \
                     reason, late, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&id)
                .bind(from)
                .bind(to)
                .bind(epoch)
                .bind(by)
                .bind(reason)
                .bind(false)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                ids.push(id);
            }
            Ok(ids)
        }

        /// Record a peer's death found by `prober`, in the prober's
        /// transaction (the one that removed the peer's registry row).
        async fn record_death(
            tx: &mut sqlx::Transaction<'static, $db>,
            peer: &$crate::engine::liveness::PodRow,
            prober: &str,
            now: i64,
            last_heartbeat_ms: i64,
        ) -> StoreResult<$crate::engine::liveness::Death> {
            sqlx::query(
                "INSERT INTO pod_deaths (pod_id, incarnation, detected_by, detected_at, last_heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&peer.pod_id)
            .bind(&peer.incarnation)
            .bind(prober)
            .bind(now)
            .bind(last_heartbeat_ms)
            .execute(&mut **tx)
            .await?;
            Ok($crate::engine::liveness::Death {
                pod_id: peer.pod_id.clone(),
                incarnation: peer.incarnation.clone(),
                detected_by: prober.to_owned(),
                detected_at_ms: now,
                last_heartbeat_at_ms: last_heartbeat_ms,
            })
        }

        /// The fence every owner write passes inside its transaction: the run
        /// must still be `running` at the epoch the writer holds.
        async fn check_fence(
            tx: &mut sqlx::Transaction<'static, $db>,
            metrics: &$crate::engine::metrics::Metrics,
            run_id: &str,
            held: i64,
            kind: &str,
        ) -> StoreResult<()> {
            let row = sqlx::query($dialect::FENCE_SELECT)
                .bind(run_id)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else {
                return Err(StoreError::RunNotFound { run_id: run_id.to_owned() });
            };
            let state: String = row.try_get("state")?;
            let state = state_from_str("runs", run_id, &state)?;
            let current: i64 = row.try_get("epoch")?;
            // The skip_fence fault: a stale epoch passes (the run must still
            // be running); claims are not fenced here and stay CAS-guarded.
            let stale_ok = $crate::faults::on($crate::faults::Bug::SkipFence);
            if (current != held && !stale_ok) || state != RunState::Running {
                metrics.inc_fenced(kind);
                return Err(StoreError::Fenced {
                    run_id: run_id.to_owned(),
                    held,
                    current,
                    state,
                });
            }
            Ok(())
        }

        /// The body of `begin_attempt`, inside a transaction whose fence the
        /// caller has checked: never commits, so a checkpoint can start the
        /// next step's attempt in its own transaction.
        async fn next_attempt(
            tx: &mut sqlx::Transaction<'static, $db>,
            run_id: &str,
            node_id: &str,
            epoch: i64,
            max_attempts: i64,
            pod: &str,
            now: i64,
        ) -> StoreResult<BeginAttempt> {
            let row = sqlx::query(
                "SELECT status, attempts FROM steps WHERE run_id = $1 AND node_id = $2",
            )
            .bind(run_id)
            .bind(node_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(row) = row {
                let status: String = row.try_get("status")?;
                let attempts: i64 = row.try_get("attempts")?;
                if status == "succeeded" {
                    return Ok(BeginAttempt::AlreadySucceeded);
                }
                if attempts >= max_attempts {
                    return Ok(BeginAttempt::Exhausted { attempts });
                }
            }
            let row = sqlx::query(
                "INSERT INTO steps (run_id, node_id, status, attempts, updated_at) \
                 VALUES ($1, $2, 'running', 1, $3) \
                 ON CONFLICT (run_id, node_id) DO UPDATE \
                 SET attempts = steps.attempts + 1, status = 'running', updated_at = $3 \
                 RETURNING attempts",
            )
            .bind(run_id)
            .bind(node_id)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
            let attempt: i64 = row.try_get("attempts")?;
            sqlx::query(
                "INSERT INTO effects (run_id, node_id, attempt, epoch, pod, at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(run_id)
            .bind(node_id)
            .bind(attempt)
            .bind(epoch)
            .bind(pod)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            Ok(BeginAttempt::Started { attempt })
        }

        impl $store {
            async fn pods_impl(&self) -> StoreResult<Vec<$crate::engine::liveness::PodRow>> {
                let rows = sqlx::query(
                    "SELECT pod_id, incarnation, addr, started_at, heartbeat_at, lease_until \
                     FROM pods ORDER BY pod_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::engine::liveness::PodRow {
                            pod_id: r.try_get("pod_id")?,
                            incarnation: r.try_get("incarnation")?,
                            addr: r.try_get("addr")?,
                            started_at_ms: r.try_get("started_at")?,
                            heartbeat_at_ms: r.try_get("heartbeat_at")?,
                            lease_until_ms: r.try_get("lease_until")?,
                        })
                    })
                    .collect()
            }

            async fn deaths_impl(&self, limit: i64) -> StoreResult<Vec<$crate::engine::liveness::Death>> {
                let rows = sqlx::query(
                    "SELECT pod_id, incarnation, detected_by, detected_at, last_heartbeat_at \
                     FROM pod_deaths ORDER BY id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::engine::liveness::Death {
                            pod_id: r.try_get("pod_id")?,
                            incarnation: r.try_get("incarnation")?,
                            detected_by: r.try_get("detected_by")?,
                            detected_at_ms: r.try_get("detected_at")?,
                            last_heartbeat_at_ms: r.try_get("last_heartbeat_at")?,
                        })
                    })
                    .collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::engine::store::Store for $store {
            fn backend(&self) -> &'static str {
                $dialect::NAME
            }

            fn stats(&self) -> &StoreStats {
                &self.stats
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
                let input = serde_json::to_string(&run.input).unwrap_or_else(|_| "null".into());
                // Every run gets a deadline, at most runs.max_deadline_ms
                // from now (that setting's row, else its default): read in
                // this statement, so every pod caps alike. (`WHERE true`:
                // SQLite's INSERT ... SELECT ... ON CONFLICT needs it.)
                sqlx::query(
                    "INSERT INTO runs (id, workflow, lane, input, state, epoch, late_completion, \
                     run_state, idempotency_key, deadline_at, created_at, updated_at, \
                     heartbeat_timeout_ms, retries_left, family) \
                     SELECT $1, $2, $3, $4, 'pending', 0, $5, '{}', $6, \
                     CASE WHEN $7 IS NULL OR $7 > $8 + lim.ms THEN $8 + lim.ms ELSE $7 END, \
                     $8, $8, $9, $10, $1 \
                     FROM (SELECT COALESCE((SELECT value FROM settings WHERE name = $11), $12) \
                     AS ms) lim WHERE true \
                     ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(&id)
                .bind(&run.workflow)
                .bind(&run.lane)
                .bind(input)
                .bind(late_str(run.late_completion))
                .bind(&run.idempotency_key)
                .bind(run.deadline_at_ms)
                .bind(now)
                .bind(run.heartbeat_timeout_ms)
                .bind(run.retries_left)
                .bind($crate::engine::settings::RUNS_MAX_DEADLINE_MS)
                .bind($crate::engine::settings::DEFAULT_MAX_DEADLINE_MS)
                .execute(&self.pool)
                .await?;
                // A repeated idempotency key returns the run it created first.
                let row = match &run.idempotency_key {
                    Some(key) => {
                        sqlx::query(concat!(
                            "SELECT ",
                            run_cols!(),
                            " FROM runs WHERE idempotency_key = $1"
                        ))
                        .bind(key)
                        .fetch_one(&self.pool)
                        .await?
                    }
                    None => {
                        sqlx::query(concat!("SELECT ", run_cols!(), " FROM runs WHERE id = $1"))
                            .bind(&id)
                            .fetch_one(&self.pool)
                            .await?
                    }
                };
                let run = decode_run(&row)?;
                let created = run.id == id;
                Ok((run, created))
            }

            async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
                let row = sqlx::query(concat!("SELECT ", run_cols!(), " FROM runs WHERE id = $1"))
                    .bind(run_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(decode_run).transpose()
            }

            async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRecord>> {
                let rows = sqlx::query(concat!(
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
                rows.iter().map(decode_run).collect()
            }

            async fn claim_run(
                &self,
                run_id: &str,
                pod: &str,
                expected_owner: Option<&str>,
            ) -> StoreResult<Claim> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let select = if $crate::faults::on($crate::faults::Bug::StallingClaims) {
                    if $dialect::NAME == "postgres" {
                        sqlx::query("SET LOCAL lock_timeout = 0").execute(&mut *tx).await?;
                    }
                    $dialect::STATE_SELECT_FOR_UPDATE
                } else {
                    $dialect::CLAIM_SELECT_FOR_UPDATE
                };
                let row = sqlx::query(select)
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::RunNotFound { run_id: run_id.to_owned() });
                };
                let from: String = row.try_get("state")?;
                let from = state_from_str("runs", run_id, &from)?;
                let found: Option<String> = row.try_get("owner_pod")?;
                // The compare-and-set: only the owner we expect may be replaced,
                // and only a pending or running run may be claimed.
                let claim_sql = if $crate::faults::on($crate::faults::Bug::ClaimWithoutCas) {
                    "UPDATE runs SET owner_pod = $2, epoch = epoch + 1, state = 'running', \
                     updated_at = $4, heartbeat_at = $4 \
                     WHERE id = $1 AND ($3 IS NULL OR $3 IS NOT NULL) \
                     AND state IN ('pending', 'running') RETURNING epoch"
                } else {
                    // The CAS on the previous owner, and that owner must not be a
                    // live pod (the same name can be a new incarnation that
                    // already took its runs back): only a pod itself, or
                    // nobody, may take a run from a registered pod.
                    "UPDATE runs SET owner_pod = $2, epoch = epoch + 1, state = 'running', \
                     updated_at = $4, heartbeat_at = $4 \
                     WHERE id = $1 AND owner_pod IS NOT DISTINCT FROM $3 \
                     AND ($3 IS NULL OR $3 = $2 OR NOT EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = $3)) \
                     AND state IN ('pending', 'running') RETURNING epoch"
                };
                let updated = sqlx::query(claim_sql)
                .bind(run_id)
                .bind(pod)
                .bind(expected_owner)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(updated) = updated else {
                    drop(tx);
                    self.metrics.inc_rejected(from.as_str(), "running");
                    return Err(if from.is_terminal() {
                        StoreError::AlreadyTerminal {
                            run_id: run_id.to_owned(),
                            state: from,
                            to: RunState::Running,
                        }
                    } else if found.as_deref() == expected_owner {
                        StoreError::OwnerAlive {
                            run_id: run_id.to_owned(),
                            owner: found.unwrap_or_default(),
                        }
                    } else {
                        StoreError::ClaimLost {
                            run_id: run_id.to_owned(),
                            expected: expected_owner.map(str::to_owned),
                            found,
                        }
                    });
                };
                let epoch: i64 = updated.try_get("epoch")?;
                // The purge: what older epochs' unfinished attempts streamed
                // goes (it will be streamed again); the chunks of each step's
                // succeeded attempt stay (that step never runs again). Legacy
                // rows without an attempt belong to no finished attempt.
                let purge_sql = if $crate::faults::on($crate::faults::Bug::PurgeFinished) {
                    "DELETE FROM chunks WHERE run_id = $1 AND epoch < $2"
                } else {
                    "DELETE FROM chunks WHERE run_id = $1 AND epoch < $2 \
                     AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = chunks.run_id \
                     AND s.node_id = chunks.node_id AND s.attempts = chunks.attempt \
                     AND s.status = 'succeeded')"
                };
                if !$crate::faults::on($crate::faults::Bug::SkipPurge) {
                    sqlx::query(purge_sql)
                        .bind(run_id)
                        .bind(epoch)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "INSERT INTO run_claims (run_id, from_pod, to_pod, epoch, at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(run_id)
                .bind(&found)
                .bind(pod)
                .bind(epoch)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if from == RunState::Pending {
                    sqlx::query(
                        "INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, \
                         reason, late, at) VALUES ($1, 'pending', 'running', $2, $3, 'claimed', \
                         $4, $5)",
                    )
                    .bind(run_id)
                    .bind(epoch)
                    .bind(pod)
                    .bind(false)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                if from == RunState::Pending {
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
                let mut sources: Vec<&str> = allowed_sources(to).iter().map(|s| s.as_str()).collect();
                if to == RunState::Succeeded && $crate::faults::on($crate::faults::Bug::AllowLostSuccess) {
                    sources.push("lost");
                }
                // The double_terminal fault opens `succeeded -> failed`, only
                // for the write that fault makes (see the executor).
                if to == RunState::Failed
                    && ctx.reason == $crate::faults::DOUBLE_TERMINAL_REASON
                    && $crate::faults::on($crate::faults::Bug::DoubleTerminal)
                {
                    sources.push("succeeded");
                }
                let sources = serde_json::to_string(&sources).unwrap_or_else(|_| "[]".into());
                let mut tx = self.begin_write().await?;
                // Read (and, on PostgreSQL, lock) the row so the log records the
                // state the guarded UPDATE below actually left.
                let row = sqlx::query($dialect::STATE_SELECT_FOR_UPDATE)
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::RunNotFound { run_id: run_id.to_owned() });
                };
                let from: String = row.try_get("state")?;
                let from = state_from_str("runs", run_id, &from)?;
                let current_epoch: i64 = row.try_get("epoch")?;
                let late_policy: String = row.try_get("late_completion")?;
                // The transition table lives in the WHERE clause: a writer that
                // raced us to a terminal state makes this UPDATE match no row.
                let done = sqlx::query($dialect::TRANSITION_UPDATE)
                    .bind(run_id)
                    .bind(to.as_str())
                    .bind(now)
                    .bind(&ctx.error)
                    .bind(sources)
                    .bind(ctx.expected_epoch)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done == 0 {
                    drop(tx);
                    self.metrics.inc_rejected(from.as_str(), to.as_str());
                    let fenced = ctx.expected_epoch.is_some_and(|e| e != current_epoch);
                    return Err(if fenced {
                        self.metrics.inc_fenced("transition");
                        StoreError::Fenced {
                            run_id: run_id.to_owned(),
                            held: ctx.expected_epoch.unwrap_or_default(),
                            current: current_epoch,
                            state: from,
                        }
                    } else if from.is_terminal() {
                        self.metrics.ghost_rejected.inc();
                        StoreError::AlreadyTerminal { run_id: run_id.to_owned(), state: from, to }
                    } else {
                        StoreError::IllegalTransition { run_id: run_id.to_owned(), from, to }
                    });
                }
                let late = from == RunState::Lost && to == RunState::Succeeded && late_policy == "accept";
                let record = TransitionRecord {
                    run_id: run_id.to_owned(),
                    from,
                    to,
                    epoch: current_epoch,
                    pod: ctx.pod.clone(),
                    reason: if late {
                        format!("late completion accepted by policy: {}", ctx.reason)
                    } else {
                        ctx.reason.clone()
                    },
                    late,
                    at_ms: now,
                };
                sqlx::query(
                    "INSERT INTO run_transitions (run_id, from_state, to_state, epoch, pod, \
                     reason, late, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(run_id)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(record.epoch)
                .bind(&record.pod)
                .bind(&record.reason)
                .bind(record.late)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.metrics.inc_transition(from.as_str(), to.as_str());
                Ok(record)
            }

            async fn transitions(&self, run_id: &str) -> StoreResult<Vec<TransitionRecord>> {
                let rows = sqlx::query(
                    "SELECT run_id, from_state, to_state, epoch, pod, reason, late, at \
                     FROM run_transitions WHERE run_id = $1 ORDER BY id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(decode_transition).collect()
            }

            async fn steps(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
                let rows = sqlx::query(
                    "SELECT run_id, node_id, status, attempts, output, error, updated_at \
                     FROM steps WHERE run_id = $1 ORDER BY node_id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let node_id: String = row.try_get("node_id")?;
                        let key = format!("{run_id}/{node_id}");
                        let status: String = row.try_get("status")?;
                        let output: Option<String> = row.try_get("output")?;
                        Ok(StepRecord {
                            run_id: row.try_get("run_id")?,
                            status: status_from_str("steps", &key, &status)?,
                            attempts: row.try_get("attempts")?,
                            output: output
                                .map(|o| json_from_str("steps", &key, "output", &o))
                                .transpose()?,
                            error: row.try_get("error")?,
                            updated_at_ms: row.try_get("updated_at")?,
                            node_id,
                        })
                    })
                    .collect()
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
                let now = self.clock.now_ms();
                let output = serde_json::to_string(s.output).unwrap_or_else(|_| "null".into());
                let raw = serde_json::to_string(s.output_raw).unwrap_or_else(|_| "null".into());
                let state = serde_json::to_string(s.run_state).unwrap_or_else(|_| "{}".into());
                let state_raw =
                    serde_json::to_string(s.run_state_raw).unwrap_or_else(|_| "{}".into());
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, s.run_id, s.epoch, "checkpoint").await?;
                let done = sqlx::query(
                    "UPDATE steps SET status = 'succeeded', output = $3, output_raw = $4, \
                     error = NULL, updated_at = $5 \
                     WHERE run_id = $1 AND node_id = $2 AND status = 'running'",
                )
                .bind(s.run_id)
                .bind(s.node_id)
                .bind(output)
                .bind(raw)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done != 1 {
                    return Err(StoreError::Corrupt {
                        table: "steps",
                        key: format!("{}/{}", s.run_id, s.node_id),
                        problem: "checkpoint of a step that has no running attempt".into(),
                    });
                }
                sqlx::query(
                    "UPDATE runs SET run_state = $2, run_state_raw = $3, updated_at = $4 \
                     WHERE id = $1",
                )
                    .bind(s.run_id)
                    .bind(state)
                    .bind(state_raw)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // The next step's attempt rides on this commit (the fence
                // above holds for both).
                let next = match s.then_begin {
                    Some(n) => Some(
                        next_attempt(&mut tx, s.run_id, n.node_id, s.epoch, n.max_attempts, n.pod, now)
                            .await?,
                    ),
                    None => None,
                };
                tx.commit().await?;
                Ok(next)
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
                .execute(&mut *tx)
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
                .execute(&mut *tx)
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
                    .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn run_state_copies(
                &self,
                run_id: &str,
            ) -> StoreResult<Option<(serde_json::Value, serde_json::Value)>> {
                let row = sqlx::query("SELECT run_state, run_state_raw FROM runs WHERE id = $1")
                    .bind(run_id)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let shown: String = row.try_get("run_state")?;
                let raw: Option<String> = row.try_get("run_state_raw")?;
                let shown = json_from_str("runs", run_id, "run_state", &shown)?;
                // NULL: written before the column existed, when the one copy
                // was all there was.
                let raw = match raw {
                    Some(r) => json_from_str("runs", run_id, "run_state_raw", &r)?,
                    None => shown.clone(),
                };
                Ok(Some((shown, raw)))
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
                let rows = sqlx::query(sql)
                    .bind(run_id)
                    .bind($dialect::node_list(node_ids))
                    .fetch_all(&self.pool)
                    .await?;
                let mut out = HashMap::with_capacity(rows.len());
                for row in rows {
                    let node_id: String = row.try_get("node_id")?;
                    let raw: Option<String> = row.try_get("output_raw")?;
                    // NULL output_raw: written before the column existed. A miss.
                    if let Some(raw) = raw {
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
                    "INSERT INTO chunks (run_id, epoch, seq, node_id, attempt, data, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(run_id)
                .bind(epoch)
                .bind(seq)
                .bind(part.map(|(n, _)| n))
                .bind(part.map(|(_, a)| a))
                .bind(data)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn chunks(&self, run_id: &str) -> StoreResult<Vec<Chunk>> {
                let rows = sqlx::query(
                    "SELECT run_id, epoch, seq, node_id, attempt, data, at FROM chunks WHERE run_id = $1 \
                     ORDER BY epoch, seq",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(decode_chunk).collect()
            }

            async fn chunks_after(
                &self,
                run_id: &str,
                epoch: i64,
                seq: i64,
                limit: i64,
            ) -> StoreResult<Vec<Chunk>> {
                let rows = sqlx::query(
                    "SELECT run_id, epoch, seq, node_id, attempt, data, at FROM chunks WHERE run_id = $1 \
                     AND (epoch > $2 OR (epoch = $2 AND seq > $3)) ORDER BY epoch, seq LIMIT $4",
                )
                .bind(run_id)
                .bind(epoch)
                .bind(seq)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(decode_chunk).collect()
            }

            async fn kept_parts(
                &self,
                run_id: &str,
                epoch: i64,
            ) -> StoreResult<Vec<$crate::engine::store::StreamPartRow>> {
                let rows = sqlx::query(
                    "SELECT epoch, node_id, attempt FROM chunks WHERE run_id = $1 AND epoch < $2 \
                     AND node_id IS NOT NULL AND attempt IS NOT NULL \
                     GROUP BY epoch, node_id, attempt ORDER BY epoch, MIN(seq)",
                )
                .bind(run_id)
                .bind(epoch)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::engine::store::StreamPartRow {
                            epoch: row.try_get("epoch")?,
                            node_id: row.try_get("node_id")?,
                            attempt: row.try_get("attempt")?,
                        })
                    })
                    .collect()
            }

            async fn pending_runs(&self, limit: i64) -> StoreResult<Vec<String>> {
                let rows = sqlx::query(
                    "SELECT id FROM runs WHERE state = 'pending' ORDER BY created_at, id LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
            }

            async fn effects(&self, run_id: &str) -> StoreResult<Vec<EffectRecord>> {
                let rows = sqlx::query(
                    "SELECT run_id, node_id, attempt, epoch, pod, at FROM effects WHERE run_id = $1 \
                     ORDER BY id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(EffectRecord {
                            run_id: row.try_get("run_id")?,
                            node_id: row.try_get("node_id")?,
                            attempt: row.try_get("attempt")?,
                            epoch: row.try_get("epoch")?,
                            pod: row.try_get("pod")?,
                            at_ms: row.try_get("at")?,
                        })
                    })
                    .collect()
            }

            fn liveness(&self) -> &dyn $crate::engine::liveness::Liveness {
                self
            }

            async fn heartbeat_run(&self, run_id: &str, epoch: i64) -> StoreResult<()> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                check_fence(&mut tx, &self.metrics, run_id, epoch, "heartbeat").await?;
                sqlx::query("UPDATE runs SET heartbeat_at = $2 WHERE id = $1")
                    .bind(run_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn orphaned_runs(&self, limit: i64) -> StoreResult<Vec<(String, Option<String>)>> {
                let rows = sqlx::query(
                    "SELECT id, owner_pod FROM runs r WHERE state = 'running' \
                     AND NOT EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = r.owner_pod) \
                     ORDER BY updated_at LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("owner_pod")?)))
                    .collect()
            }

            async fn reap_stale(&self, by: &str) -> StoreResult<ReapReport> {
                if $crate::faults::on($crate::faults::Bug::NonAtomicTimeoutRetry) {
                    // The seed-003 shape: the timeout commits on its own, and
                    // the process dies in the window before the retry insert.
                    let now = self.clock.now_ms();
                    let mut tx = self.begin_write().await?;
                    let rows = sqlx::query(
                        "UPDATE runs SET state = 'timed_out', updated_at = $1 \
                         WHERE state = 'running' AND heartbeat_timeout_ms IS NOT NULL \
                         AND heartbeat_at + heartbeat_timeout_ms < $1 RETURNING id, epoch",
                    )
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                    let ids = log_bulk(&mut tx, &rows, "running", "timed_out", by, "reaper: no heartbeat within its lane's timeout", now).await?;
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
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                // Rows another session holds are left for the next pass.
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE runs SET state = 'timed_out', updated_at = $1, \
                     error = COALESCE(error, 'run deadline passed (timed out by the reaper)') \
                     WHERE state = 'running' AND deadline_at IS NOT NULL AND deadline_at < $2 \
                     AND id IN (SELECT id FROM runs WHERE state = 'running' \
                       AND deadline_at IS NOT NULL AND deadline_at < $2{}) \
                     RETURNING id, epoch",
                    $dialect::SKIP_LOCKED
                )))
                .bind(now)
                .bind(now.saturating_sub(grace_ms))
                .fetch_all(&mut *tx)
                .await?;
                let ids = log_bulk(&mut tx, &rows, "running", "timed_out", by, "reaper: past its deadline", now).await?;
                tx.commit().await?;
                for _ in &ids {
                    self.metrics.inc_transition("running", "timed_out");
                }
                Ok(ids)
            }

            async fn mark_lost(&self, lost_after_ms: i64, by: &str) -> StoreResult<Vec<String>> {
                // Orphaned since: the owner's latest recorded death, or the
                // run's last write if that is later (or there is no death
                // row). Never the last checkpoint alone: a long step's
                // checkpoint is old when its owner dies, and the run was not
                // an orphan until then.
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE runs SET state = 'lost', updated_at = $1, \
                     error = COALESCE(error, 'lost: its owner died and nobody resumed it') \
                     WHERE state = 'running' AND updated_at < $2 \
                     AND NOT EXISTS (SELECT 1 FROM pods p WHERE p.pod_id = runs.owner_pod) \
                     AND NOT EXISTS (SELECT 1 FROM pod_deaths d \
                                     WHERE d.pod_id = runs.owner_pod AND d.detected_at >= $2) \
                     AND id IN (SELECT id FROM runs WHERE state = 'running' AND updated_at < $2{}) \
                     RETURNING id, epoch",
                    $dialect::SKIP_LOCKED
                )))
                .bind(now)
                .bind(now.saturating_sub(lost_after_ms))
                .fetch_all(&mut *tx)
                .await?;
                let ids = log_bulk(&mut tx, &rows, "running", "lost", by, "janitor: owner gone, not resumed", now).await?;
                tx.commit().await?;
                for _ in &ids {
                    self.metrics.inc_transition("running", "lost");
                    self.metrics.janitor_lost.inc();
                }
                Ok(ids)
            }

            async fn claims(&self, run_id: &str) -> StoreResult<Vec<ClaimRecord>> {
                let rows = sqlx::query(
                    "SELECT run_id, from_pod, to_pod, epoch, at FROM run_claims WHERE run_id = $1 ORDER BY id",
                )
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(ClaimRecord {
                            run_id: r.try_get("run_id")?,
                            from_pod: r.try_get("from_pod")?,
                            to_pod: r.try_get("to_pod")?,
                            epoch: r.try_get("epoch")?,
                            at_ms: r.try_get("at")?,
                        })
                    })
                    .collect()
            }

            async fn switches(&self) -> StoreResult<Vec<SwitchRow>> {
                let rows = sqlx::query(
                    "SELECT name, enabled, updated_at, updated_by, reason FROM switches \
                     ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SwitchRow {
                            name: row.try_get("name")?,
                            enabled: row.try_get("enabled")?,
                            updated_at_ms: row.try_get("updated_at")?,
                            updated_by: row.try_get("updated_by")?,
                            reason: row.try_get("reason")?,
                        })
                    })
                    .collect()
            }

            async fn set_switch(
                &self,
                name: &str,
                enabled: bool,
                who: &str,
                reason: &str,
            ) -> StoreResult<SwitchAudit> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let old: Option<bool> = sqlx::query($dialect::SWITCH_SELECT_FOR_UPDATE)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| row.try_get("enabled"))
                    .transpose()?;
                sqlx::query(
                    "INSERT INTO switches (name, enabled, updated_at, updated_by, reason) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE \
                     SET enabled = $2, updated_at = $3, updated_by = $4, reason = $5",
                )
                .bind(name)
                .bind(enabled)
                .bind(now)
                .bind(who)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO switch_audit (name, old_value, new_value, who, reason, at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(name)
                .bind(old)
                .bind(enabled)
                .bind(who)
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(SwitchAudit {
                    name: name.to_owned(),
                    old,
                    new: enabled,
                    who: who.to_owned(),
                    reason: reason.to_owned(),
                    at_ms: now,
                })
            }

            async fn switch_audit(&self, name: &str) -> StoreResult<Vec<SwitchAudit>> {
                let rows = sqlx::query(
                    "SELECT name, old_value, new_value, who, reason, at FROM switch_audit \
                     WHERE name = $1 ORDER BY id",
                )
                .bind(name)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SwitchAudit {
                            name: row.try_get("name")?,
                            old: row.try_get("old_value")?,
                            new: row.try_get("new_value")?,
                            who: row.try_get("who")?,
                            reason: row.try_get("reason")?,
                            at_ms: row.try_get("at")?,
                        })
                    })
                    .collect()
            }

            async fn settings(&self) -> StoreResult<Vec<SettingRow>> {
                let rows = sqlx::query(
                    "SELECT name, value, updated_at, updated_by, reason FROM settings \
                     ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SettingRow {
                            name: row.try_get("name")?,
                            value: row.try_get("value")?,
                            updated_at_ms: row.try_get("updated_at")?,
                            updated_by: row.try_get("updated_by")?,
                            reason: row.try_get("reason")?,
                        })
                    })
                    .collect()
            }

            async fn set_setting(
                &self,
                name: &str,
                value: i64,
                who: &str,
                reason: &str,
            ) -> StoreResult<SettingAudit> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let old: Option<i64> = sqlx::query($dialect::SETTING_SELECT_FOR_UPDATE)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| row.try_get("value"))
                    .transpose()?;
                sqlx::query(
                    "INSERT INTO settings (name, value, updated_at, updated_by, reason) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE \
                     SET value = $2, updated_at = $3, updated_by = $4, reason = $5",
                )
                .bind(name)
                .bind(value)
                .bind(now)
                .bind(who)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO setting_audit (name, old_value, new_value, who, reason, at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(name)
                .bind(old)
                .bind(value)
                .bind(who)
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(SettingAudit {
                    name: name.to_owned(),
                    old,
                    new: value,
                    who: who.to_owned(),
                    reason: reason.to_owned(),
                    at_ms: now,
                })
            }

            async fn setting_audit(&self, name: &str) -> StoreResult<Vec<SettingAudit>> {
                let rows = sqlx::query(
                    "SELECT name, old_value, new_value, who, reason, at FROM setting_audit \
                     WHERE name = $1 ORDER BY id",
                )
                .bind(name)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SettingAudit {
                            name: row.try_get("name")?,
                            old: row.try_get("old_value")?,
                            new: row.try_get("new_value")?,
                            who: row.try_get("who")?,
                            reason: row.try_get("reason")?,
                            at_ms: row.try_get("at")?,
                        })
                    })
                    .collect()
            }

            // console queries

            async fn console_runs(
                &self,
                limit: i64,
            ) -> StoreResult<Vec<$crate::engine::store::RunSummary>> {
                // One statement: the step and event columns are correlated
                // subqueries on the (run_id, ...) keys and indexes, each
                // folded into one text value so that each is one lookup.
                let rows = sqlx::query(
                    "SELECT r.id, r.workflow, r.lane, r.state, r.owner_pod, r.epoch, \
                     r.created_at, r.updated_at, r.error, r.retry_of, \
                     (SELECT s.status || '|' || s.attempts || '|' || s.node_id FROM steps s \
                      WHERE s.run_id = r.id ORDER BY s.updated_at DESC, s.node_id DESC LIMIT 1) \
                      AS step, \
                     (SELECT t.at || '|' || t.from_state || ' -> ' || t.to_state || \
                      CASE WHEN t.reason = '' THEN '' ELSE ': ' || t.reason END \
                      FROM run_transitions t WHERE t.run_id = r.id ORDER BY t.id DESC LIMIT 1) \
                      AS last_transition, \
                     (SELECT c.at || '|claimed by ' || c.to_pod || ' from ' || \
                      COALESCE(c.from_pod, '-') || ' (epoch ' || c.epoch || ')' \
                      FROM run_claims c WHERE c.run_id = r.id ORDER BY c.id DESC LIMIT 1) \
                      AS last_claim \
                     FROM runs r ORDER BY r.created_at DESC, r.id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                let event = |v: Option<String>| -> Option<(i64, String)> {
                    let v = v?;
                    let (at, what) = v.split_once('|')?;
                    Some((at.parse().ok()?, what.to_owned()))
                };
                rows.iter()
                    .map(|row| {
                        let id: String = row.try_get("id")?;
                        let state: String = row.try_get("state")?;
                        let step: Option<String> = row.try_get("step")?;
                        let current_step = match step {
                            None => None,
                            Some(v) => {
                                let mut parts = v.splitn(3, '|');
                                let status = parts.next().unwrap_or_default();
                                let attempts = parts.next().and_then(|a| a.parse().ok());
                                match (attempts, parts.next()) {
                                    (Some(a), Some(node)) => Some((
                                        node.to_owned(),
                                        status_from_str("steps", &id, status)?,
                                        a,
                                    )),
                                    _ => {
                                        return Err(StoreError::Corrupt {
                                            table: "steps",
                                            key: id,
                                            problem: format!("unreadable step summary {v:?}"),
                                        });
                                    }
                                }
                            }
                        };
                        let t = event(row.try_get("last_transition")?);
                        let c = event(row.try_get("last_claim")?);
                        let last_event = match (t, c) {
                            (Some(t), Some(c)) => Some(if c.0 > t.0 { c } else { t }),
                            (t, c) => t.or(c),
                        };
                        Ok($crate::engine::store::RunSummary {
                            state: state_from_str("runs", &id, &state)?,
                            workflow: row.try_get("workflow")?,
                            lane: row.try_get("lane")?,
                            owner_pod: row.try_get("owner_pod")?,
                            epoch: row.try_get("epoch")?,
                            created_at_ms: row.try_get("created_at")?,
                            updated_at_ms: row.try_get("updated_at")?,
                            error: row.try_get("error")?,
                            retry_of: row.try_get("retry_of")?,
                            current_step,
                            last_event,
                            id,
                        })
                    })
                    .collect()
            }

            async fn console_active_counts(
                &self,
            ) -> StoreResult<Vec<$crate::engine::store::ActiveCount>> {
                let rows = sqlx::query(
                    "SELECT state, lane, owner_pod, COUNT(*) AS n FROM runs \
                     WHERE state IN ('pending', 'running') \
                     GROUP BY state, lane, owner_pod ORDER BY state, lane, owner_pod",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let state: String = row.try_get("state")?;
                        let lane: String = row.try_get("lane")?;
                        Ok($crate::engine::store::ActiveCount {
                            state: state_from_str("runs", &lane, &state)?,
                            owner_pod: row.try_get("owner_pod")?,
                            count: row.try_get("n")?,
                            lane,
                        })
                    })
                    .collect()
            }

            async fn console_events(
                &self,
                cursor: &$crate::engine::store::EventCursor,
                limit: i64,
            ) -> StoreResult<Vec<$crate::engine::store::ConsoleEvent>> {
                use $crate::engine::store::{ConsoleEvent, EventKind};
                // Each branch reads only the rows past its cursor, newest
                // first, through its primary key; the union is one round trip.
                let rows = sqlx::query(
                    "SELECT kind, id, at, subject, from_v, to_v, actor, epoch, reason, extra FROM \
                     (SELECT 'transition' AS kind, id, at, run_id AS subject, \
                      from_state AS from_v, to_state AS to_v, pod AS actor, epoch, reason, \
                      CAST(NULL AS BIGINT) AS extra \
                      FROM run_transitions WHERE id > $1 ORDER BY id DESC LIMIT $5) t1 \
                     UNION ALL SELECT * FROM \
                     (SELECT 'claim', id, at, run_id, from_pod, to_pod, to_pod, epoch, '', \
                      CAST(NULL AS BIGINT) \
                      FROM run_claims WHERE id > $2 ORDER BY id DESC LIMIT $5) t2 \
                     UNION ALL SELECT * FROM \
                     (SELECT 'death', id, detected_at, pod_id, incarnation, CAST(NULL AS TEXT), \
                      detected_by, CAST(NULL AS BIGINT), '', last_heartbeat_at \
                      FROM pod_deaths WHERE id > $3 ORDER BY id DESC LIMIT $5) t3 \
                     UNION ALL SELECT * FROM \
                     (SELECT 'switch', id, at, name, \
                      CASE WHEN old_value IS NULL THEN NULL WHEN old_value THEN 'on' ELSE 'off' END, \
                      CASE WHEN new_value THEN 'on' ELSE 'off' END, who, CAST(NULL AS BIGINT), \
                      reason, CAST(NULL AS BIGINT) \
                      FROM switch_audit WHERE id > $4 ORDER BY id DESC LIMIT $5) t4 \
                     ORDER BY at DESC, id DESC",
                )
                .bind(cursor.transitions)
                .bind(cursor.claims)
                .bind(cursor.deaths)
                .bind(cursor.switches)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let kind: String = row.try_get("kind")?;
                        let id: i64 = row.try_get("id")?;
                        let kind = match kind.as_str() {
                            "transition" => EventKind::Transition,
                            "claim" => EventKind::Claim,
                            "death" => EventKind::Death,
                            "switch" => EventKind::Switch,
                            other => {
                                return Err(StoreError::Corrupt {
                                    table: "console events",
                                    key: id.to_string(),
                                    problem: format!("unknown event kind {other:?}"),
                                });
                            }
                        };
                        Ok(ConsoleEvent {
                            kind,
                            id,
                            at_ms: row.try_get("at")?,
                            subject: row.try_get("subject")?,
                            from: row.try_get("from_v")?,
                            to: row.try_get("to_v")?,
                            actor: row.try_get("actor")?,
                            epoch: row.try_get("epoch")?,
                            reason: row.try_get("reason")?,
                            extra_ms: row.try_get("extra")?,
                        })
                    })
                    .collect()
            }

            async fn console_liveness_locks(&self) -> StoreResult<Option<Vec<i64>>> {
                if $dialect::NAME != "postgres" {
                    return Ok(None);
                }
                // A bigint advisory key shows as classid (its high half) and
                // objid (its low half), with objsubid = 1.
                let rows = sqlx::query(
                    "SELECT classid::bigint AS hi, objid::bigint AS lo FROM pg_locks \
                     WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let hi: i64 = row.try_get("hi")?;
                        let lo: i64 = row.try_get("lo")?;
                        Ok((hi << 32) | (lo & 0xffff_ffff))
                    })
                    .collect::<StoreResult<Vec<i64>>>()
                    .map(Some)
            }
        }
    };
}
pub(crate) use impl_store;
