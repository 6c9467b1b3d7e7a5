//! The transactions both backends share, below the `Store` trait's
//! methods (see `sql`): bulk transition logs, run creation, claims, the
//! fence, attempts, transitions, and the group commit of checkpoints.
//! Expanded by [`impl_store!`](super::sql) in the same module as the trait's
//! methods, with the same imports in scope.

macro_rules! impl_store_tx {
    ($store:ty, $db:ty, $dialect:ident) => {
        /// The transition-log rows of a bulk state change (reaper, janitor),
        /// in the caller's transaction.
        async fn log_bulk(
            tx: &mut sqlx::Transaction<'static, $db>,
            rows: Vec<rows::MovedRow>,
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
            for rows::MovedRow { id, epoch } in rows {
                sqlx::query(statements::LOG_TRANSITION)
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
        pub(super) async fn record_death(
            tx: &mut sqlx::Transaction<'static, $db>,
            peer: &$crate::engine::store::liveness::PodRow,
            prober: &str,
            now: i64,
            last_heartbeat_ms: i64,
        ) -> StoreResult<$crate::engine::store::liveness::Death> {
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
            Ok($crate::engine::store::liveness::Death {
                pod_id: peer.pod_id.clone(),
                incarnation: peer.incarnation.clone(),
                detected_by: prober.to_owned(),
                detected_at_ms: now,
                last_heartbeat_at_ms: last_heartbeat_ms,
            })
        }

        /// Insert a new run as `statements::CREATE_RUN` does (its deadline
        /// capped; a repeated idempotency key inserts nothing): whether it
        /// was inserted.
        async fn insert_run(
            conn: &mut <$db as sqlx::Database>::Connection,
            id: &str,
            run: &NewRun,
            now: i64,
        ) -> StoreResult<bool> {
            let input = serde_json::to_string(&run.input).unwrap_or_else(|_| "null".into());
            Ok(sqlx::query(statements::CREATE_RUN)
                .bind(id)
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
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1)
        }

        /// What every claim logs, in its transaction: who took the run from
        /// whom at which epoch, and `pending -> running` when it was pending.
        async fn log_claim(
            conn: &mut <$db as sqlx::Database>::Connection,
            run_id: &str,
            from_pod: Option<&str>,
            pod: &str,
            epoch: i64,
            was_pending: bool,
            now: i64,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO run_claims (run_id, from_pod, to_pod, epoch, at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(run_id)
            .bind(from_pod)
            .bind(pod)
            .bind(epoch)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if was_pending {
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
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
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
            let row = sqlx::query_as::<_, rows::FenceRow>($dialect::FENCE_SELECT)
                .bind(run_id)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(rows::FenceRow { state, epoch: current }) = row else {
                return Err(StoreError::RunNotFound { run_id: run_id.to_owned() });
            };
            let state = state_from_str("runs", run_id, &state)?;
            statements::fence(metrics, run_id, held, current, state, kind)
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
            let row = sqlx::query_as::<_, rows::AttemptsRow>(
                "SELECT status, attempts FROM steps WHERE run_id = $1 AND node_id = $2",
            )
            .bind(run_id)
            .bind(node_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(rows::AttemptsRow { status, attempts }) = row {
                if status == "succeeded" {
                    return Ok(BeginAttempt::AlreadySucceeded);
                }
                if attempts >= max_attempts {
                    return Ok(BeginAttempt::Exhausted { attempts });
                }
            }
            let attempt: i64 = sqlx::query_scalar(
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


        /// The body of `transition`, in the caller's transaction (which
        /// commits it, then counts it).
        async fn transition_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            metrics: &$crate::engine::metrics::Metrics,
            run_id: &str,
            to: RunState,
            ctx: &TransitionCtx,
            now: i64,
        ) -> StoreResult<TransitionRecord> {
            let sources = statements::transition_sources(to, ctx);
            // Read (and, on PostgreSQL, lock) the row so the log records the
            // state the guarded UPDATE below actually left.
            let row = sqlx::query_as::<_, rows::LockedRunRow>($dialect::STATE_SELECT_FOR_UPDATE)
                .bind(run_id)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else {
                return Err(StoreError::RunNotFound { run_id: run_id.to_owned() });
            };
            let from = state_from_str("runs", run_id, &row.state)?;
            let current_epoch = row.epoch;
            let late_policy = row.late_completion;
            // The transition table lives in the WHERE clause: a writer that
            // raced us to a terminal state makes this UPDATE match no row.
            let done = sqlx::query($dialect::TRANSITION_UPDATE)
                .bind(run_id)
                .bind(to.as_str())
                .bind(now)
                .bind(&ctx.error)
                .bind(sources)
                .bind(ctx.expected_epoch)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if done == 0 {
                return Err(statements::transition_rejection(
                    metrics,
                    run_id,
                    from,
                    to,
                    current_epoch,
                    ctx,
                ));
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
            sqlx::query(statements::LOG_TRANSITION)
                .bind(run_id)
                .bind(from.as_str())
                .bind(to.as_str())
                .bind(record.epoch)
                .bind(&record.pod)
                .bind(&record.reason)
                .bind(record.late)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(record)
        }

        /// Why one job of a group commit did not commit: `Refused` wrote
        /// nothing, so the batch goes on without it; `Abort` (anything
        /// else) rolls the batch back.
        enum JobFail {
            Refused(StoreError),
            Abort(StoreError),
        }

        impl From<sqlx::Error> for JobFail {
            fn from(e: sqlx::Error) -> Self {
                JobFail::Abort(e.into())
            }
        }

        /// One checkpoint, in a transaction it may share with others. Every
        /// refusal comes before its first write.
        async fn checkpoint_in(
            tx: &mut sqlx::Transaction<'static, $db>,
            metrics: &$crate::engine::metrics::Metrics,
            c: &Checkpoint,
            now: i64,
        ) -> Result<Option<BeginAttempt>, JobFail> {
            check_fence(tx, metrics, &c.run_id, c.epoch, "checkpoint")
                .await
                .map_err(|e| match e {
                    StoreError::Db(_) => JobFail::Abort(e),
                    e => JobFail::Refused(e),
                })?;
            let done = sqlx::query(
                "UPDATE steps SET status = 'succeeded', output = $3, output_raw = $4, \
                 error = NULL, updated_at = $5 \
                 WHERE run_id = $1 AND node_id = $2 AND status = 'running'",
            )
            .bind(&c.run_id)
            .bind(&c.node_id)
            .bind(&c.output)
            .bind(&c.output_raw)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if done != 1 {
                return Err(JobFail::Refused(StoreError::Corrupt {
                    table: "steps",
                    key: format!("{}/{}", c.run_id, c.node_id),
                    problem: "checkpoint of a step that has no running attempt".into(),
                }));
            }
            sqlx::query(
                "UPDATE runs SET run_state = $2, run_state_raw = $3, updated_at = $4 \
                 WHERE id = $1",
            )
            .bind(&c.run_id)
            .bind(&c.run_state)
            .bind(&c.run_state_raw)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            // The next step's attempt rides on this commit (the fence
            // above holds for both).
            let next = match &c.then_begin {
                Some((node, max, pod)) => Some(
                    next_attempt(tx, &c.run_id, node, c.epoch, *max, pod, now)
                        .await
                        .map_err(JobFail::Abort)?,
                ),
                None => None,
            };
            if let Some(pod) = &c.then_succeed {
                let ctx = TransitionCtx {
                    expected_epoch: Some(c.epoch),
                    pod: Some(pod.clone()),
                    reason: "all steps succeeded".into(),
                    error: None,
                };
                transition_in(tx, metrics, &c.run_id, RunState::Succeeded, &ctx, now)
                    .await
                    .map_err(JobFail::Abort)?;
            }
            Ok(next)
        }

        /// How a checkpoint transaction failed: before its commit (nothing
        /// written), or at it (nothing known).
        enum BatchFailed {
            Before(StoreError),
            Commit(StoreError),
        }

        /// `jobs` in one transaction.
        async fn checkpoints_together(
            pool: &sqlx::Pool<$db>,
            metrics: &$crate::engine::metrics::Metrics,
            now: i64,
            jobs: &[Checkpoint],
        ) -> Result<Vec<StoreResult<Option<BeginAttempt>>>, BatchFailed> {
            let mut tx = pool
                .begin_with($dialect::BEGIN_WRITE)
                .await
                .map_err(|e| BatchFailed::Before(e.into()))?;
            let mut out = Vec::with_capacity(jobs.len());
            for c in jobs {
                match checkpoint_in(&mut tx, metrics, c, now).await {
                    Ok(r) => out.push(Ok(r)),
                    Err(JobFail::Refused(e)) => out.push(Err(e)),
                    Err(JobFail::Abort(e)) => return Err(BatchFailed::Before(e)),
                }
            }
            tx.commit().await.map_err(|e| BatchFailed::Commit(e.into()))?;
            metrics.group_commit(jobs.len());
            for (c, r) in jobs.iter().zip(&out) {
                if c.then_succeed.is_some() && r.is_ok() {
                    metrics.inc_transition("running", "succeeded");
                }
            }
            Ok(out)
        }

        /// Checkpoints of several runs in one transaction (see
        /// `store::group`). A refused job is answered alone; a failure of
        /// the batch before its commit runs every job again in a
        /// transaction of its own; a failed commit fails them all (none is
        /// known to be durable).
        async fn checkpoint_batch(
            pool: sqlx::Pool<$db>,
            metrics: std::sync::Arc<$crate::engine::metrics::Metrics>,
            clock: std::sync::Arc<dyn $crate::engine::clock::Clock>,
            jobs: Vec<Checkpoint>,
        ) -> Vec<StoreResult<Option<BeginAttempt>>> {
            match checkpoints_together(&pool, &metrics, clock.now_ms(), &jobs).await {
                Ok(out) => out,
                Err(BatchFailed::Commit(e)) => {
                    let text = e.to_string();
                    std::iter::once(Err(e))
                        .chain((1..jobs.len()).map(|_| {
                            Err(StoreError::Db(sqlx::Error::Protocol(format!(
                                "the group commit carrying this checkpoint failed: {text}"
                            ))))
                        }))
                        .collect()
                }
                Err(BatchFailed::Before(e)) if jobs.len() == 1 => vec![Err(e)],
                Err(BatchFailed::Before(e)) => {
                    tracing::debug!(jobs = jobs.len(), error = %e, "group commit rolled back: each checkpoint again alone");
                    let mut out = Vec::with_capacity(jobs.len());
                    for c in jobs.chunks(1) {
                        match checkpoints_together(&pool, &metrics, clock.now_ms(), c).await {
                            Ok(mut r) => out.push(r.remove(0)),
                            Err(BatchFailed::Before(e) | BatchFailed::Commit(e)) => out.push(Err(e)),
                        }
                    }
                    out
                }
            }
        }

        impl $store {
            /// `create_claimed_run` statement by statement, in one transaction
            /// (SQLite's form; PostgreSQL's is one statement, migration 0008).
            #[allow(dead_code)]
            async fn create_claimed_statements(
                &self,
                run: NewRun,
                pod: &str,
                first: Option<NextAttempt<'_>>,
            ) -> StoreResult<(RunRecord, Option<Adopted>)> {
                let now = self.clock.now_ms();
                let id = uuid::Uuid::now_v7().to_string();
                let mut tx = self.begin_write().await?;
                let created = insert_run(&mut tx, &id, &run, now).await?;
                if !created {
                    // A repeated idempotency key: the run it created first.
                    drop(tx);
                    let key = run.idempotency_key.as_deref().unwrap_or_default();
                    let row = sqlx::query_as::<_, rows::RunRow>(rows::RUN_BY_IDEMPOTENCY_KEY)
                        .bind(key)
                        .fetch_one(&self.pool)
                        .await?;
                    return Ok((RunRecord::try_from(row)?, None));
                }
                // The claim's compare-and-set, from nobody (the run is ours
                // alone until this commits).
                let epoch: i64 = sqlx::query_scalar(statements::claim_sql())
                    .bind(&id)
                    .bind(pod)
                    .bind(None::<&str>)
                    .bind(now)
                    .fetch_one(&mut **tx)
                    .await?;
                log_claim(&mut tx, &id, None, pod, epoch, true, now).await?;
                let first = match first {
                    Some(n) => Some(
                        next_attempt(&mut tx, &id, n.node_id, epoch, n.max_attempts, n.pod, now)
                            .await?,
                    ),
                    None => None,
                };
                let row = sqlx::query_as::<_, rows::RunRow>(rows::RUN_BY_ID)
                    .bind(&id)
                    .fetch_one(&mut **tx)
                    .await?;
                let record = RunRecord::try_from(row)?;
                tx.commit().await?;
                Ok((record, Some(Adopted { epoch, first })))
            }

            pub(super) async fn pods_impl(&self) -> StoreResult<Vec<$crate::engine::store::liveness::PodRow>> {
                let rows = sqlx::query_as::<_, rows::RegistryRow>(
                    "SELECT pod_id, incarnation, addr, started_at, heartbeat_at, lease_until \
                     FROM pods ORDER BY pod_id",
                )
                .fetch_all(self.control())
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            pub(super) async fn deaths_impl(&self, limit: i64) -> StoreResult<Vec<$crate::engine::store::liveness::Death>> {
                let rows = sqlx::query_as::<_, rows::DeathRow>(
                    "SELECT pod_id, incarnation, detected_by, detected_at, last_heartbeat_at \
                     FROM pod_deaths ORDER BY id DESC LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            /// A bulk state change of running runs (deadline pass, janitor):
            /// `sql` moves to `to`, at `$1`, the runs it finds older than `$2`
            /// (now less `older_than_ms`) and returns their `id, epoch`; each
            /// gets its transition-log row, in the same transaction.
            async fn move_running(
                &self,
                sql: String,
                older_than_ms: i64,
                to: &str,
                by: &str,
                reason: &str,
            ) -> StoreResult<Vec<String>> {
                let now = self.clock.now_ms();
                let mut tx = self.begin_write().await?;
                let rows = sqlx::query_as::<_, rows::MovedRow>(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(now.saturating_sub(older_than_ms))
                    .fetch_all(&mut **tx)
                    .await?;
                let ids = log_bulk(&mut tx, rows, "running", to, by, reason, now).await?;
                tx.commit().await?;
                for _ in &ids {
                    self.metrics.inc_transition("running", to);
                }
                Ok(ids)
            }
        }
    };
}
pub(crate) use impl_store_tx;
