//! The scenario's store: its kind, whether the plan's faults can run on it,
//! and where it lives (a SQLite file in the results, a throwaway PostgreSQL
//! server or container, or a scratch database on a server given by URL).

use super::StoreChoice;
use crate::chaos::scenario::{Action, DriverKind, Plan, PlannedFault, Scenario, StoreKind};
use crate::cluster::docker::env::DockerEnv;
use crate::cluster::pgserver::{PgServer, create_scratch_database, pg_database_url};
use anyhow::{Context, Result, bail};

/// The store kind a run uses: the `--store` choice over the scenario's.
pub(super) fn store_kind(choice: &StoreChoice, scn: &Scenario) -> StoreKind {
    match choice {
        StoreChoice::Scenario => scn.store,
        StoreChoice::Sqlite => StoreKind::Sqlite,
        StoreChoice::PgServer | StoreChoice::PgUrl(_) => StoreKind::Postgres,
    }
}

/// Why the plan's faults cannot run on this store (the scenario is then
/// not applicable), or None.
pub(super) fn why_not_applicable(
    plan: &Plan,
    kind: StoreKind,
    choice: &StoreChoice,
    driver: DriverKind,
) -> Option<&'static str> {
    let outage = plan.faults.iter().any(|f| f.action == Action::StoreOutage);
    let freeze = plan.faults.iter().any(|f| f.action == Action::StoreFreeze);
    if outage
        && (kind != StoreKind::Postgres
            || matches!(choice, StoreChoice::PgUrl(_))
            || driver == DriverKind::Docker)
    {
        Some(
            "store_outage needs a throwaway PostgreSQL server process: --store postgres --driver process",
        )
    } else if freeze && (kind != StoreKind::Postgres || matches!(choice, StoreChoice::PgUrl(_))) {
        Some("store_freeze needs a PostgreSQL server the runner starts: --store postgres")
    } else if kind != StoreKind::Postgres
        && plan
            .faults
            .iter()
            .any(|f| matches!(f.action, Action::RowLock | Action::ClockSkew))
    {
        Some("row_lock and clock_skew are PostgreSQL faults: --store postgres")
    } else if plan.faults.iter().any(PlannedFault::on_store_link) && kind != StoreKind::Postgres {
        Some(
            "link faults hurt the link between a pod and PostgreSQL through the runner's proxy: \
             --store postgres",
        )
    } else if plan.faults.iter().any(|f| f.action.needs_disk())
        && (driver == DriverKind::Docker || matches!(choice, StoreChoice::PgUrl(_)))
    {
        Some(
            "disk_full fills a disk of the runner's under the store's files: --store sqlite or \
             --store postgres (a throwaway server), --driver process",
        )
    } else if kind != StoreKind::Sqlite && plan.faults.iter().any(|f| f.action == Action::WriteLock)
    {
        Some("write_lock holds SQLite's one write lock: --store sqlite")
    } else {
        None
    }
}

/// A store made ready for a run.
pub(super) struct Provisioned {
    /// The store's URL (or SQLite path) as the runner reaches it.
    pub target: String,
    /// The URL as the pods reach it, when it differs (a container on the
    /// scenario network).
    pub pod_target: Option<String>,
    /// The throwaway server the runner started, if any.
    pub pg_server: Option<PgServer>,
    /// A scratch database to drop afterwards: (admin URL, name).
    pub drop_db: Option<(String, String)>,
    /// The disk of the runner's the store's files are on (storage faults).
    pub disk: Option<crate::chaos::disk::Tmpfs>,
}

/// Make the run's store: a SQLite file in `dir`, a database on a PostgreSQL
/// container (Docker driver) or on a throwaway server, or a scratch
/// database on the server `--store` names.
pub(super) async fn store(
    choice: &StoreChoice,
    kind: StoreKind,
    dir: &std::path::Path,
    docker_env: Option<&DockerEnv>,
    store_disk: Option<crate::chaos::disk::StoreDisk>,
) -> Result<Provisioned> {
    use crate::chaos::disk::{PgPart, Tmpfs};
    let mut pod_target = None;
    let mut pg_server = None;
    let mut drop_db: Option<(String, String)> = None;
    let mut disk = None;
    let target = match (choice, kind) {
        (_, StoreKind::Sqlite) => match store_disk {
            Some(d) => {
                let mut t = Tmpfs::mount(d.mib, None)?;
                if d.fuse {
                    t = t.with_fuse(d.buffered)?;
                }
                let db = t.store_dir().join("store.db").display().to_string();
                disk = Some(t);
                db
            }
            None => dir.join("store.db").display().to_string(),
        },
        (StoreChoice::PgUrl(admin), _) if docker_env.is_some() && pg_on_loopback(admin) => {
            bail!(
                "--store {}: pods in containers cannot reach a server on the host's loopback; \
                 use --store postgres (a PostgreSQL container on the scenario network)",
                crate::engine::store::redact_url(admin)
            );
        }
        (StoreChoice::Scenario | StoreChoice::PgServer, _) if docker_env.is_some() => {
            let env = docker_env.context("docker environment")?;
            let pg = env.start_postgres().await?;
            create_chaos_database(&pg.host_admin_url).await?;
            pod_target = Some(pg_database_url(&pg.net_admin_url, "vigil_chaos")?);
            pg_database_url(&pg.host_admin_url, "vigil_chaos")?
        }
        (StoreChoice::PgUrl(admin), _) => {
            let (url, db) = create_scratch_database(admin, "vigil_chaos").await?;
            drop_db = Some((admin.clone(), db));
            url
        }
        _ => {
            let server = match store_disk {
                None => tokio::task::spawn_blocking(PgServer::start).await??,
                Some(d) => {
                    let mut t = Tmpfs::mount(d.mib, PgServer::owner()?)?;
                    if d.pg == PgPart::Wal {
                        t = t.for_wal();
                    }
                    if d.fuse {
                        t = t.with_fuse(false)?;
                    }
                    let at = t.store_dir().to_owned();
                    // A power cut is judged on what the server said it
                    // made durable: fsync on (off only as the bug that
                    // durable_acks must catch).
                    let durable = d.buffered && !crate::faults::on(crate::faults::Bug::PgFsyncOff);
                    let dir = PgServer::scratch_dir();
                    let start = move || match d.pg {
                        PgPart::Data => {
                            PgServer::start_in(dir, Some(at.join("data")), None, durable)
                        }
                        PgPart::Wal => PgServer::start_in(dir, None, Some(at), durable),
                    };
                    let server = tokio::task::spawn_blocking(start).await??;
                    // Writes are kept until fsync from here on: initdb
                    // (`--no-sync`) wrote the cluster straight through.
                    if let Some(f) = t.fuse()
                        && d.buffered
                    {
                        f.set_buffered(true);
                    }
                    disk = Some(t);
                    server
                }
            };
            let url = server.admin_url();
            create_chaos_database(&url).await?;
            pg_server = Some(server);
            pg_database_url(&url, "vigil_chaos")?
        }
    };
    Ok(Provisioned {
        target,
        pod_target,
        pg_server,
        drop_db,
        disk,
    })
}

/// `vigil_chaos` on a server of the runner's own (gone with the server).
async fn create_chaos_database(admin: &str) -> Result<()> {
    let pool = sqlx::PgPool::connect(admin).await?;
    sqlx::query("CREATE DATABASE vigil_chaos")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

fn pg_on_loopback(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]")
}
