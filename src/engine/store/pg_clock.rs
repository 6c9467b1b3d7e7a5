//! The PostgreSQL server's clock ([`ServerClock`]): the one time every pod
//! sharing a PostgreSQL store writes and compares, sampled in the
//! background and read without a round trip. [`super::PgStore`] runs on it
//! unless a clock is injected.

use crate::engine::clock::Clock;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// The PostgreSQL server's clock, as every pod sharing the server sees it.
///
/// Leases, heartbeats, deadlines and deaths are times one pod writes and
/// another compares with its own "now": on each host's wall clock, a pod
/// whose clock runs 8 s ahead reaps every healthy run of its peers (issue
/// 14, item 8). So no pod reads its wall clock for them. The server's
/// `clock_timestamp()` is sampled once a second (the sample with the
/// shortest round trip of the last ten seconds wins; it is dated at the
/// round trip's midpoint) and carried forward on this process's monotonic
/// clock, so a read costs no round trip and a stepped or skewed host clock
/// changes nothing. Readings never go backwards. While the server cannot be
/// reached the last sample is carried forward.
#[derive(Debug)]
pub struct ServerClock {
    sample: std::sync::Mutex<ClockSample>,
    last: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Clone, Copy)]
struct ClockSample {
    server_ms: i64,
    at: std::time::Instant,
    rtt: Duration,
}

const CLOCK_SAMPLE_EVERY: Duration = Duration::from_secs(1);
const CLOCK_SAMPLE_KEEP: Duration = Duration::from_secs(10);

impl ServerClock {
    async fn read(pool: &PgPool) -> Result<ClockSample, sqlx::Error> {
        let sent = std::time::Instant::now();
        let server_ms: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT")
                .fetch_one(pool)
                .await?;
        let rtt = sent.elapsed();
        Ok(ClockSample {
            server_ms,
            at: sent + rtt / 2,
            rtt,
        })
    }

    /// Read the server's clock once (an error if it cannot be read), then
    /// keep sampling it in the background for as long as the clock lives.
    pub async fn start(pool: PgPool) -> super::StoreResult<Arc<dyn Clock>> {
        let first = Self::read(&pool).await?;
        let clock = Arc::new(ServerClock {
            sample: std::sync::Mutex::new(first),
            last: std::sync::atomic::AtomicI64::new(first.server_ms),
        });
        let weak = Arc::downgrade(&clock);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLOCK_SAMPLE_EVERY).await;
                let Some(clock) = weak.upgrade() else { break };
                if pool.is_closed() {
                    break;
                }
                match tokio::time::timeout(CLOCK_SAMPLE_EVERY, Self::read(&pool)).await {
                    Ok(Ok(s)) => clock.offer(s),
                    Ok(Err(e)) => tracing::debug!(error = %e, "server clock not sampled"),
                    Err(_) => tracing::debug!("server clock not sampled: no answer within 1 s"),
                }
            }
        });
        Ok(clock)
    }

    fn offer(&self, s: ClockSample) {
        let mut cur = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        if s.rtt <= cur.rtt || cur.at.elapsed() >= CLOCK_SAMPLE_KEEP {
            *cur = s;
        }
    }
}

impl Clock for ServerClock {
    fn now_ms(&self) -> i64 {
        let s = *self.sample.lock().unwrap_or_else(|e| e.into_inner());
        let since = i64::try_from(s.at.elapsed().as_millis()).unwrap_or(i64::MAX);
        let now = s.server_ms.saturating_add(since);
        let before = self
            .last
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        now.max(before)
    }
}
