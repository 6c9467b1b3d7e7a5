//! PostgreSQL liveness: a session advisory lock per pod on a dedicated
//! connection (see `store::liveness` and docs/recovery.md), the probe that
//! reads a released lock together with the peer's lease, and the watchers
//! that wait on a peer's lock.

use super::postgres::{PgStore, record_death};
use crate::engine::clock::Clock;
use sqlx::postgres::PgConnectOptions;
use std::sync::Arc;
use std::time::Duration;

/// This process's liveness: a session advisory lock on a dedicated
/// connection, kept busy enough that `idle_session_timeout` never fires
/// while the process runs, and fires soon after it stops (SIGSTOP, a cut
/// network) so the lock is released.
struct LockMembership {
    conn: sqlx::PgConnection,
    /// To open the session again when the server ended it (see `resume`).
    options: PgConnectOptions,
    settings: Vec<(&'static str, String)>,
    clock: Arc<dyn Clock>,
    me: super::liveness::Identity,
    /// A renew was cut off mid-statement (its future dropped at the
    /// loop's hard deadline): the session's state is unknown, so the next
    /// renew opens a new one rather than reuse it.
    broken: bool,
}

impl std::fmt::Debug for LockMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockMembership")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

/// `UPDATE` of our registry row: the heartbeat and, on the server's clock,
/// the lease peers read to tell a dead process (lease still fresh when its
/// lock went) from a session the server ended (lease lapsed first).
const RENEW_SQL: &str = "UPDATE pods SET heartbeat_at = $3, lease_until = $4 \
     WHERE pod_id = $1 AND incarnation = $2";

/// How many times `resume` asks for our lock (a watcher's grant or a
/// probe's transaction may hold it for a round trip).
const RESUME_TRIES: u32 = 20;

impl LockMembership {
    /// Our session is gone (the server ended it at a thaw, or a reset cut
    /// it) but our registry row may well be there: nobody judged us dead,
    /// since a peer reads a released lock with a lapsed lease as death only
    /// while its own renewals were steady. Take the lock again on a new
    /// session and, if the row still names this incarnation, carry on as
    /// the same member: our runs were never anyone else's. `Ok(false)`:
    /// the row is gone (we were declared dead), the lock given back.
    async fn resume(&mut self) -> Result<bool, super::StoreError> {
        use sqlx::Connection as _;
        let mut conn = session_of_its_own(&self.options, &self.settings).await?;
        let key = super::liveness::lock_key(&self.me.pod_id);
        let mut got = false;
        for _ in 0..RESUME_TRIES {
            got = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if got {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !got {
            // Held by our old session (still alive on the server behind a
            // slow link: the server ends it once it has been silent for a
            // liveness timeout) or by another process with our id. Try
            // again at the next renew.
            let _ = conn.close().await;
            self.broken = true;
            return Err(super::StoreError::from(sqlx::Error::Protocol(
                "our liveness lock is held by another session".into(),
            )));
        }
        let now = self.clock.now_ms();
        let still = sqlx::query(RENEW_SQL)
            .bind(&self.me.pod_id)
            .bind(&self.me.incarnation)
            .bind(now)
            .bind(self.me.lease_until(now))
            .execute(&mut conn)
            .await?
            .rows_affected()
            == 1;
        let old = std::mem::replace(&mut self.conn, conn);
        let _ = old.close().await;
        self.broken = false;
        if still {
            tracing::warn!(pod_id = %self.me.pod_id, "liveness session resumed: the server had ended it, our membership stands");
            Ok(true)
        } else {
            // Declared dead meanwhile: the caller rejoins as a new
            // incarnation, whose join takes this lock again.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut self.conn)
                .await;
            Ok(false)
        }
    }
}

#[async_trait::async_trait]
impl super::liveness::Membership for LockMembership {
    async fn renew(&mut self) -> Result<bool, super::StoreError> {
        if self.broken {
            return self.resume().await;
        }
        let now = self.clock.now_ms();
        // Set until the statement answers: a renew dropped mid-flight
        // leaves it set.
        self.broken = true;
        let done = sqlx::query(RENEW_SQL)
            .bind(&self.me.pod_id)
            .bind(&self.me.incarnation)
            .bind(now)
            .bind(self.me.lease_until(now))
            .execute(&mut self.conn)
            .await;
        match done {
            Ok(r) => {
                self.broken = false;
                Ok(r.rows_affected() == 1)
            }
            Err(e) if crate::faults::on(crate::faults::Bug::LockReleaseIsDeath) => {
                // The rule before gray failures: a lost session is a lost
                // membership.
                tracing::warn!(error = %e, "liveness connection failed: our lock is gone");
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(error = %e, "liveness connection failed: taking our lock again on a new session");
                self.resume().await
            }
        }
    }

    async fn leave(self: Box<Self>) -> Result<(), super::StoreError> {
        use sqlx::Connection as _;
        // Closing the session releases the lock; peers see us dead at their
        // next probe and recover our runs as after a SIGKILL.
        self.conn.close().await?;
        Ok(())
    }
}

/// The `application_name` of a pod's liveness session.
const LIVENESS_APP: &str = "vigil-liveness";

/// Whether a liveness session holds `$1`'s advisory lock: a peer's watcher
/// is granted a free lock for a round trip, and a probe takes one for its
/// transaction, so a lock merely held says nothing about the session.
const HELD_BY_LIVENESS_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks l \
     JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND ((l.classid::bigint << 32) | (l.objid::bigint & 4294967295)) = $1 \
     AND a.application_name = 'vigil-liveness')";

/// Whether a peer's free liveness lock may be read as its death, on the
/// probe's transaction `tx`: never while our own renewals have been failing
/// (`standing`), nor while our own liveness session does not hold our lock
/// (the server ended every session, ours among them, and our renew has not
/// noticed yet).
async fn locks_speak(
    tx: &mut sqlx::PgConnection,
    prober: &str,
    standing: super::liveness::Standing,
) -> Result<bool, super::StoreError> {
    if crate::faults::on(crate::faults::Bug::RestartIsDeath) {
        return Ok(true);
    }
    if !standing.locks_speak {
        return Ok(false);
    }
    let ours_held: bool = sqlx::query_scalar(HELD_BY_LIVENESS_SQL)
        .bind(super::liveness::lock_key(prober))
        .fetch_one(tx)
        .await?;
    Ok(ours_held)
}

/// A connection outside the pool with `settings` of its own (the liveness
/// session, a watcher's session).
async fn session_of_its_own<V: AsRef<str>>(
    options: &PgConnectOptions,
    settings: &[(&str, V)],
) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    for (key, value) in settings {
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(key)
            .bind(value.as_ref())
            .execute(&mut conn)
            .await?;
    }
    Ok(conn)
}

#[async_trait::async_trait]
impl super::liveness::Liveness for PgStore {
    async fn join(
        &self,
        me: &super::liveness::Identity,
        wait: Duration,
    ) -> Result<Box<dyn super::liveness::Membership>, super::liveness::LivenessError> {
        let store_err = |e: sqlx::Error| super::liveness::LivenessError::Store(e.into());
        let timeout = format!("{}ms", me.timeout.as_millis().max(100));
        // Session settings on the liveness connection only (FIELD-NOTES s.2):
        // the server drops a silent session, and with it our lock.
        let settings: Vec<(&'static str, String)> = vec![
            // How a probe tells our lock held by this session from one a
            // peer's watcher or probe holds for a moment (`locks_speak`).
            ("application_name", LIVENESS_APP.into()),
            ("idle_session_timeout", timeout),
            ("client_connection_check_interval", "1s".into()),
            ("tcp_keepalives_idle", "5".into()),
            ("tcp_keepalives_interval", "2".into()),
            ("tcp_keepalives_count", "3".into()),
        ];
        let mut conn = session_of_its_own(&self.options, &settings)
            .await
            .map_err(store_err)?;
        let key = super::liveness::lock_key(&me.pod_id);
        let started = std::time::Instant::now();
        // The lock first, then the registry row: a peer can never find our
        // row without our lock held, so it cannot declare a booting pod dead.
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .map_err(store_err)?;
            if got {
                break;
            }
            if started.elapsed() >= wait {
                return Err(super::liveness::LivenessError::LockTimeout {
                    pod_id: me.pod_id.clone(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = self.clock.now_ms();
        // Holding the lock, a registry row of another incarnation can only be
        // a dead predecessor nobody has unregistered yet: record its death.
        sqlx::query(
            "INSERT INTO pod_deaths (pod_id, incarnation, detected_by, detected_at, last_heartbeat_at) \
             SELECT pod_id, incarnation, pod_id, $3, heartbeat_at FROM pods \
             WHERE pod_id = $1 AND incarnation <> $2",
        )
        .bind(&me.pod_id)
        .bind(&me.incarnation)
        .bind(now)
        .execute(&mut conn)
        .await
        .map_err(store_err)?;
        sqlx::query(super::liveness::REGISTER_SQL)
            .bind(&me.pod_id)
            .bind(&me.incarnation)
            .bind(&me.addr)
            .bind(now)
            .bind(me.lease_until(now))
            .execute(&mut conn)
            .await
            .map_err(store_err)?;
        Ok(Box::new(LockMembership {
            conn,
            options: self.options.clone(),
            settings,
            clock: self.clock.clone(),
            me: me.clone(),
            broken: false,
        }))
    }

    async fn probe(
        &self,
        peer: &super::liveness::PodRow,
        prober: &str,
        standing: &(dyn Fn() -> super::liveness::Standing + Send + Sync),
    ) -> Result<Option<super::liveness::Death>, super::StoreError> {
        if crate::faults::on(crate::faults::Bug::BlindSurvivor) {
            // The fault: every peer looks alive, so nobody recovers its runs.
            return Ok(None);
        }
        let mut tx = self.control().begin().await?;
        // Held until commit: a replacement with the same id blocks on its
        // own lock acquisition until our DELETE is done, then registers.
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(super::liveness::lock_key(&peer.pod_id))
            .fetch_one(&mut *tx)
            .await?;
        if !free {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        // A free lock is a dead process when its lease was still fresh (a
        // SIGKILL, a crash: the session went with the process). With the
        // lease lapsed first, the server ended a silent session: the pod
        // was paused or cut off, or the server itself was frozen and ended
        // every idle session at its thaw. Only a prober whose own renewals
        // were steady throughout can tell the first from the last.
        if !crate::faults::on(crate::faults::Bug::LockReleaseIsDeath) {
            let lease_until: Option<i64> = sqlx::query_scalar(
                "SELECT lease_until FROM pods WHERE pod_id = $1 AND incarnation = $2",
            )
            .bind(&peer.pod_id)
            .bind(&peer.incarnation)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(lease_until) = lease_until else {
                tx.rollback().await?;
                return Ok(None);
            };
            let standing = standing();
            let lapsed = lease_until <= now;
            if lapsed && !standing.leases_speak {
                tracing::info!(pod = %peer.pod_id, "peer's lock is free but its lease lapsed while our own renewals were not steady: not judged yet");
                // Rolled back here, not when the connection goes back to
                // the pool: until then its transaction holds the peer's
                // lock, and the next probe (on another connection) or the
                // peer itself, resuming its session, would find it taken.
                tx.rollback().await?;
                return Ok(None);
            }
            // A fresh lease with the lock free is a dead process only if
            // the server did not end every session at once (a restart, a
            // crash restart): then our own lock went too, or our renewals
            // failed, and the peer, alive, has yet to take its lock again.
            if !lapsed && !locks_speak(&mut tx, prober, standing).await? {
                tracing::info!(pod = %peer.pod_id, "peer's lock is free with its lease fresh, but the server ended our own session too: not judged until its lease says");
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let gone: Option<i64> = sqlx::query_scalar(
            "DELETE FROM pods WHERE pod_id = $1 AND incarnation = $2 RETURNING heartbeat_at",
        )
        .bind(&peer.pod_id)
        .bind(&peer.incarnation)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(last) = gone else {
            tx.rollback().await?;
            return Ok(None);
        };
        let death = record_death(&mut tx, peer, prober, now, last).await?;
        tx.commit().await?;
        Ok(Some(death))
    }

    async fn pods(&self) -> Result<Vec<super::liveness::PodRow>, super::StoreError> {
        self.pods_impl().await
    }

    async fn deaths(&self, limit: i64) -> Result<Vec<super::liveness::Death>, super::StoreError> {
        self.deaths_impl(limit).await
    }

    /// A session of its own that waits on the peer's advisory lock: the
    /// server grants it the moment the peer's session ends.
    async fn watch(
        &self,
        peer: &super::liveness::PodRow,
    ) -> Result<Option<Box<dyn super::liveness::Watch>>, super::StoreError> {
        let round = format!("{}ms", super::liveness::WATCH_ROUND.as_millis());
        let conn = session_of_its_own(
            &self.options,
            &[
                ("application_name", "vigil-watch"),
                ("lock_timeout", round.as_str()),
                ("statement_timeout", "10s"),
                // Granted, the lock is given back within one round trip; a
                // watcher frozen in between (its pod SIGSTOPped) would keep a
                // dead peer's lock from every other survivor and from the
                // peer's replacement: the server ends its session instead.
                ("idle_in_transaction_session_timeout", "200ms"),
                ("tcp_keepalives_idle", "5"),
                ("tcp_keepalives_interval", "2"),
                ("tcp_keepalives_count", "3"),
            ],
        )
        .await?;
        Ok(Some(Box::new(LockWatch {
            conn,
            key: super::liveness::lock_key(&peer.pod_id),
        })))
    }
}

/// Waits on a peer's session advisory lock (see [`PgStore`]'s `watch`).
struct LockWatch {
    conn: sqlx::PgConnection,
    key: i64,
}

#[async_trait::async_trait]
impl super::liveness::Watch for LockWatch {
    /// Ask for the peer's lock in a transaction, for at most one
    /// `lock_timeout`; granted, it is given back at once (the rollback), so
    /// a replacement with the same id can take it, and the probe that
    /// follows finds it free. A lock wait holds a snapshot: the round keeps
    /// this session's `backend_xmin` at most one round old.
    async fn released(&mut self) -> Result<bool, super::StoreError> {
        use sqlx::Connection as _;
        let mut tx = self.conn.begin().await?;
        let waited = sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(self.key)
            .execute(&mut *tx)
            .await;
        let rolled_back = tx.rollback().await;
        match waited.map_err(super::StoreError::from) {
            // Granted: the holder is gone, whether or not the rollback
            // still reached a server that had meanwhile ended our session.
            Ok(_) => Ok(true),
            Err(e) if e.is_lock_busy() => rolled_back.map(|()| false).map_err(Into::into),
            Err(e) => Err(e),
        }
    }
}
