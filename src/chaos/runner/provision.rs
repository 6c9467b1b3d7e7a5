//! The scenario's store: its kind, whether the plan's faults can run on it,
//! and where it lives (a SQLite file in the results, a throwaway PostgreSQL
//! server or container, or a scratch database on a server given by URL).

use super::StoreChoice;
use crate::chaos::disk::{Disk, PgPart, StoreDisk, Tmpfs};
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
/// not applicable), or None. `disk` is the scenario's store disk.
pub(super) fn why_not_applicable(
    plan: &Plan,
    kind: StoreKind,
    choice: &StoreChoice,
    driver: DriverKind,
    disk: Option<StoreDisk>,
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
    } else if plan.faults.iter().any(|f| f.action.needs_fuse()) && driver == DriverKind::Docker {
        Some(
            "slow_disk and lose_unsynced put the runner's FUSE layer, a mount on the host, between \
             the store and its files, and the Docker driver's PostgreSQL keeps its files in its \
             container: --driver process",
        )
    } else if plan.faults.iter().any(|f| f.action.needs_disk())
        && matches!(choice, StoreChoice::PgUrl(_))
    {
        Some(
            "disk_full fills a disk under the store's files, which the runner must place: \
             --store sqlite or --store postgres (a server the runner starts)",
        )
    } else if driver == DriverKind::Docker
        && disk.is_some_and(|d| d.pg_part(driver) != PgPart::Database)
    {
        Some(
            "on the Docker driver the store's disk is a tmpfs of the PostgreSQL container's own, \
             empty when the server starts (the image's entrypoint is the server itself): only the \
             chaos database, in a tablespace, goes on it: store_disk's pg = \"database\" (or \
             unset), or --driver process",
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
    /// The disk the store's files are on (storage faults): a tmpfs of the
    /// runner's, or of the PostgreSQL container's.
    pub disk: Option<Disk>,
}

/// Make the run's store: a SQLite file in `dir`, a database on a PostgreSQL
/// container (Docker driver) or on a throwaway server, or a scratch
/// database on the server `--store` names.
pub(super) async fn store(
    choice: &StoreChoice,
    kind: StoreKind,
    dir: &std::path::Path,
    docker_env: Option<&DockerEnv>,
    store_disk: Option<StoreDisk>,
) -> Result<Provisioned> {
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
                disk = Some(Disk::Host(t));
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
            // A store disk is the container's own tmpfs, and the chaos
            // database goes on it as a tablespace (why_not_applicable
            // refused any other part of PostgreSQL's files).
            let pg = env.start_postgres(store_disk.map(|d| d.mib)).await?;
            let on_disk = store_disk.map(|_| crate::cluster::docker::env::PG_DISK);
            create_chaos_database(&pg.host_admin_url, on_disk).await?;
            disk = store_disk.map(|_| {
                Disk::Container(crate::chaos::disk::container::ContainerDisk::new(
                    env.docker.clone(),
                    env.postgres_container(),
                    crate::cluster::docker::env::PG_DISK,
                ))
            });
            pod_target = Some(pg_database_url(&pg.net_admin_url, "vigil_chaos")?);
            pg_database_url(&pg.host_admin_url, "vigil_chaos")?
        }
        (StoreChoice::PgUrl(admin), _) => {
            let (url, db) = create_scratch_database(admin, "vigil_chaos").await?;
            drop_db = Some((admin.clone(), db));
            url
        }
        _ => {
            let mut tablespace = None;
            let server = match store_disk {
                None => tokio::task::spawn_blocking(PgServer::start).await??,
                Some(d) => {
                    let mut t = Tmpfs::mount(d.mib, PgServer::owner()?)?;
                    if d.pg_part(DriverKind::Process) == PgPart::Wal {
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
                    let part = d.pg_part(DriverKind::Process);
                    if part == PgPart::Database {
                        tablespace = Some(at.display().to_string());
                    }
                    let start = move || match part {
                        PgPart::Data => {
                            PgServer::start_in(dir, Some(at.join("data")), None, durable)
                        }
                        PgPart::Wal => PgServer::start_in(dir, None, Some(at), durable),
                        PgPart::Database => PgServer::start_in(dir, None, None, durable),
                    };
                    let server = tokio::task::spawn_blocking(start).await??;
                    // Writes are kept until fsync from here on: initdb
                    // (`--no-sync`) wrote the cluster straight through.
                    if let Some(f) = t.fuse()
                        && d.buffered
                    {
                        f.set_buffered(true);
                    }
                    disk = Some(Disk::Host(t));
                    server
                }
            };
            let url = server.admin_url();
            create_chaos_database(&url, tablespace.as_deref()).await?;
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

/// `vigil_chaos` on a server of the runner's own (gone with the server);
/// with `tablespace`, in a tablespace at that directory of the server's
/// (an empty one its user owns: the store disk).
async fn create_chaos_database(admin: &str, tablespace: Option<&str>) -> Result<()> {
    let pool = sqlx::PgPool::connect(admin).await?;
    let create = match tablespace {
        Some(at) => {
            // A path the runner chose (no bind parameters in DDL), quoted.
            let quoted = at.replace('\'', "''");
            let sql = format!("CREATE TABLESPACE vigil_disk LOCATION '{quoted}'");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .with_context(|| format!("creating the store disk's tablespace at {at}"))?;
            "CREATE DATABASE vigil_chaos TABLESPACE vigil_disk"
        }
        None => "CREATE DATABASE vigil_chaos",
    };
    sqlx::query(create).execute(&pool).await?;
    pool.close().await;
    Ok(())
}

fn pg_on_loopback(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan of a one-fault scenario on PostgreSQL, and its store disk.
    fn scenario(fault: &str, disk: &str) -> (Plan, Option<StoreDisk>) {
        let text = format!(
            "name = \"s\"\n[cluster]\npods = 2\nstore = \"postgres\"\n{disk}\n\
             [[workload]]\nname = \"r\"\nworkflow = \"slow_stream\"\nruns = 1\n\
             [[fault]]\naction = \"{fault}\"\nat_ms = 100\nduration_ms = 100\n{delay}",
            delay = if fault == "slow_disk" {
                "delay_ms = 5\n"
            } else {
                ""
            },
        );
        let reg = crate::engine::workflow::WorkflowRegistry::load_dir(std::path::Path::new(
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/workflows"),
        ))
        .unwrap();
        let scn = Scenario::parse(std::path::Path::new("s.toml"), &text, &reg).unwrap();
        (scn.plan(1), scn.store_disk)
    }

    fn why(fault: &str, disk: &str, driver: DriverKind) -> Option<&'static str> {
        let (plan, d) = scenario(fault, disk);
        why_not_applicable(
            &plan,
            StoreKind::Postgres,
            &StoreChoice::PgServer,
            driver,
            d,
        )
    }

    #[test]
    fn a_full_disk_runs_on_docker_with_the_database_on_the_containers_tmpfs() {
        use DriverKind::{Docker, Process};
        assert_eq!(why("disk_full", "", Docker), None);
        assert_eq!(why("disk_full", "store_disk = { mib = 64 }", Docker), None);
        let db = "store_disk = { pg = \"database\" }";
        assert_eq!(why("disk_full", db, Docker), None);
        assert_eq!(why("disk_full", db, Process), None);
        // The data directory or its WAL cannot be on a container's tmpfs,
        // which starts empty.
        for part in ["data", "wal"] {
            let d = format!("store_disk = {{ pg = \"{part}\" }}");
            let w = why("disk_full", &d, Docker).unwrap();
            assert!(
                w.contains("pg = \"database\"") && w.contains("empty"),
                "{w}"
            );
            assert_eq!(why("disk_full", &d, Process), None);
        }
        // A server the runner does not start: no disk of its to fill.
        let (plan, d) = scenario("disk_full", "");
        let url = StoreChoice::PgUrl("postgres://h/db".into());
        let w = why_not_applicable(&plan, StoreKind::Postgres, &url, Process, d).unwrap();
        assert!(w.contains("--store postgres"), "{w}");
    }

    #[test]
    fn the_fuse_faults_stay_on_the_process_driver_and_say_why() {
        let slow = why("slow_disk", "", DriverKind::Docker).unwrap();
        assert!(slow.contains("FUSE layer") && slow.contains("--driver process"));
        assert_eq!(why("slow_disk", "", DriverKind::Process), None);
    }

    #[test]
    fn the_default_part_of_postgres_on_the_disk_follows_the_driver() {
        let d = StoreDisk::default();
        assert_eq!(d.pg_part(DriverKind::Process), PgPart::Data);
        assert_eq!(d.pg_part(DriverKind::Docker), PgPart::Database);
        let wal = StoreDisk {
            pg: Some(PgPart::Wal),
            ..d
        };
        assert_eq!(wal.pg_part(DriverKind::Docker), PgPart::Wal);
    }
}
