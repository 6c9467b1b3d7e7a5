//! The commit limit: how many one-row `INSERT` + commit transactions the
//! store takes per second, through the same driver (sqlx) and connection
//! settings Vigil uses, on a scratch database of the same server (or a
//! scratch SQLite file with the store's WAL and `synchronous=FULL`). C
//! clients, each on its own connection, each commit waited for before the
//! next: the pgbench shape of "one-row insert, autocommit".
//!
//! `just bench` puts Vigil's steps/s beside this rate, measured in the same
//! invocation against the same server: the "% of commit limit" column.

use super::{ScratchStore, machine, summary};
use anyhow::{Context, Result, bail};
use clap::Args;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct CommitsArgs {
    /// `sqlite` (a scratch file) or a postgres:// server URL (a scratch database on it).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// Clients, each on its own connection with one commit in flight.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Seconds measured (after one second of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const CREATE: &str = "CREATE TABLE commit_probe (id INTEGER PRIMARY KEY, client INTEGER NOT NULL, \
     n BIGINT NOT NULL, payload TEXT NOT NULL)";
const CREATE_PG: &str = "CREATE TABLE commit_probe (id BIGSERIAL PRIMARY KEY, client INTEGER NOT NULL, \
     n BIGINT NOT NULL, payload TEXT NOT NULL)";
const INSERT: &str = "INSERT INTO commit_probe (client, n, payload) VALUES ($1, $2, $3)";
/// About the size of a step's checkpoint row.
const PAYLOAD: &str = "{\"i\":1,\"ok\":true}";
const WARMUP: Duration = Duration::from_secs(1);

pub async fn run(a: CommitsArgs) -> Result<serde_json::Value> {
    if a.concurrency == 0 || a.seconds <= 0.0 {
        bail!("--concurrency must be at least 1 and --seconds above 0");
    }
    let scratch = ScratchStore::create(&a.store, "commits").await?;
    let result = measure(&a, &scratch).await;
    scratch.cleanup().await;
    result
}

/// One client's connection, either kind.
enum Conn {
    Pg(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

/// The same body for either kind of connection (`$c` bound to it): sqlx's
/// statements are generic, its connections are not one type.
macro_rules! on_each {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Pg($c) => $body,
            Conn::Sqlite($c) => $body,
        }
    };
}

impl Conn {
    async fn open(scratch: &ScratchStore) -> Result<Conn> {
        Ok(if scratch.kind == "postgres" {
            Conn::Pg(
                sqlx::PgConnection::connect(&scratch.target)
                    .await
                    .with_context(|| format!("connecting to {}", scratch.target))?,
            )
        } else {
            let options =
                crate::engine::store::sqlite::connect_options(Path::new(&scratch.target), true);
            Conn::Sqlite(
                sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .with_context(|| format!("opening {}", scratch.target))?,
            )
        })
    }

    async fn execute(&mut self, sql: &'static str) -> Result<()> {
        on_each!(self, c => sqlx::query(sql).execute(c).await.map(drop)?);
        Ok(())
    }

    /// One row, committed (autocommit: the statement is its transaction).
    async fn commit_one(&mut self, client: i32, n: i64) -> Result<()> {
        on_each!(self, c => sqlx::query(INSERT)
            .bind(client)
            .bind(n)
            .bind(PAYLOAD)
            .execute(c)
            .await
            .map(drop)?);
        Ok(())
    }
}

async fn measure(a: &CommitsArgs, scratch: &ScratchStore) -> Result<serde_json::Value> {
    let mut first = Conn::open(scratch).await?;
    first
        .execute(if scratch.kind == "postgres" {
            CREATE_PG
        } else {
            CREATE
        })
        .await
        .context("creating the probe table")?;
    let mut conns = vec![first];
    for _ in 1..a.concurrency {
        conns.push(Conn::open(scratch).await?);
    }
    let measured = Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let (from, until) = (start + WARMUP, start + WARMUP + measured);
    let mut tasks = tokio::task::JoinSet::new();
    for (client, mut conn) in conns.into_iter().enumerate() {
        let client = i32::try_from(client).unwrap_or(i32::MAX);
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0i64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    return Ok::<_, anyhow::Error>(lat);
                }
                conn.commit_one(client, n).await?;
                n += 1;
                if t0 >= from {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let rate = lat.len() as f64 / measured.as_secs_f64();
    eprintln!(
        "commit limit {} c={}: {:.0} one-row commits/s, latency {}",
        scratch.kind,
        a.concurrency,
        rate,
        summary(&lat)
    );
    Ok(serde_json::json!({
        "bench": "commits",
        "store": scratch.kind,
        "concurrency": a.concurrency,
        "seconds": a.seconds,
        "commits": lat.len(),
        "commits_per_s": rate.round(),
        "latency_ms": summary(&lat),
        "statement": INSERT,
        "note": "one-row INSERT in autocommit through sqlx, one connection per client; \
                 commits started in the warm-up second are not counted",
        "failures": 0,
        "machine": machine(),
    }))
}
