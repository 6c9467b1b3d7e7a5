//! The production store: PostgreSQL. Owner writes take the run's row lock,
//! so a claim (which bumps the epoch under the same lock) and a fenced write
//! are strictly ordered.

use super::sql::impl_store;
use crate::engine::clock::{self, Clock};
use crate::engine::metrics::Metrics;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    stats: super::StoreStats,
}

mod dialect {
    pub const NAME: &str = "postgres";
    pub const FENCE_SELECT: &str = "SELECT state, epoch FROM runs WHERE id = $1 FOR UPDATE";
    pub const STATE_SELECT_FOR_UPDATE: &str =
        "SELECT state, epoch, owner_pod, late_completion FROM runs WHERE id = $1 FOR UPDATE";
    pub const SWITCH_SELECT_FOR_UPDATE: &str =
        "SELECT enabled FROM switches WHERE name = $1 FOR UPDATE";
    pub const TRANSITION_UPDATE: &str = "UPDATE runs SET state = $2, updated_at = $3, \
         error = COALESCE($4, error) WHERE id = $1 \
         AND (state IN (SELECT jsonb_array_elements_text($5::jsonb)) \
              OR (state = 'lost' AND $2 = 'succeeded' AND late_completion = 'accept')) \
         AND ($6::BIGINT IS NULL OR epoch = $6)";
    pub const OUTPUTS_RAW_SELECT: &str = "SELECT node_id, output_raw FROM steps \
         WHERE run_id = $1 AND status = 'succeeded' AND node_id = ANY($2)";

    /// The batched node list, as one `text[]` parameter.
    pub fn node_list(nodes: &[String]) -> Vec<String> {
        nodes.to_vec()
    }
}

/// The URL with its password replaced, fit for errors and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable URL>".into(),
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> super::StoreResult<Self> {
        Self::connect_with(url, clock::system(), Arc::new(Metrics::new())).await
    }

    pub async fn connect_with(
        url: &str,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> super::StoreResult<Self> {
        let shown = redact_url(url);
        let options = PgConnectOptions::from_str(url).map_err(|e| super::StoreError::BadUrl {
            url: shown.clone(),
            problem: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|source| super::StoreError::Unreachable {
                target: shown.clone(),
                source,
            })?;
        // sqlx serializes concurrent migrators with an advisory lock.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgStore {
            pool,
            url: shown,
            clock,
            metrics,
            stats: Default::default(),
        })
    }

    /// The URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

impl_store!(PgStore, Postgres, dialect);
