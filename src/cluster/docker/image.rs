//! Images for the Docker driver, built through the Docker API from files on
//! this machine: the engine here has no registry and no base image, so both
//! are `FROM scratch`.
//!
//! - `vigil-pod:<hash>`: the `vigil` binary and the shared libraries `ldd`
//!   lists for it (libc, libm, libgcc_s and the loader for a glibc build;
//!   nothing for a static build). The tag is a hash of those files, so a
//!   rebuilt binary gets a new image and an unchanged one is not rebuilt.
//! - `vigil-postgres:<major>-<hash>`: the installed PostgreSQL server
//!   binary, its libraries, its share directory, the time zone database,
//!   plpgsql, a passwd entry, and a data directory initialized on the host
//!   at build time (initdb needs a shell in the image otherwise; baking it
//!   also makes every container start in well under a second from a fresh
//!   copy of the same empty cluster).

use super::{DockerError, LABEL_CHAOS, LABEL_ROLE};
use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The uid/gid PostgreSQL runs as inside its image.
pub const PG_UID: u64 = 999;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuiltImage {
    pub tag: String,
    /// Bytes, as the engine reports them.
    pub size: i64,
    /// False when an image with this tag already existed.
    pub built: bool,
}

/// The size of image `tag`, or None when the engine does not have it.
pub async fn image_size(docker: &Docker, tag: &str) -> Result<Option<i64>, DockerError> {
    match docker.inspect_image(tag).await {
        Ok(i) => Ok(Some(i.size.unwrap_or(0))),
        Err(e) if super::is_not_found(&e) => Ok(None),
        Err(source) => Err(DockerError::InspectImage {
            image: tag.to_owned(),
            source,
        }),
    }
}

/// The files `ldd` says `binary` loads (absolute paths), the loader included.
/// Empty for a static binary.
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("running ldd {}: {e} (install libc-bin)", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static build needs nothing.
        return Ok(Vec::new());
    }
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(libs.into_iter().collect())
}

/// A build context: a Dockerfile and files at chosen paths, as a tar.
struct Context {
    tar: tar::Builder<Vec<u8>>,
    hash: Sha256,
    tag_prefix: String,
}

impl Context {
    fn new(tag_prefix: &str) -> Context {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(true);
        Context {
            tar,
            hash: Sha256::new(),
            tag_prefix: tag_prefix.to_owned(),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> DockerError {
        DockerError::BuildContext {
            tag: self.tag_prefix.clone(),
            message: e.to_string(),
        }
    }

    fn bytes(&mut self, at: &str, data: &[u8], mode: u32, uid: u64) -> Result<(), DockerError> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(0);
        h.set_cksum();
        self.hash.update(at.as_bytes());
        self.hash.update(data);
        self.tar
            .append_data(&mut h, at, data)
            .map_err(|e| self.err(format!("{at}: {e}")))
    }

    fn dir(&mut self, at: &str, mode: u32, uid: u64) -> Result<(), DockerError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_mtime(0);
        h.set_cksum();
        self.tar
            .append_data(&mut h, at, std::io::empty())
            .map_err(|e| self.err(format!("{at}: {e}")))
    }

    /// A host file (symlinks followed), at `at` in the context.
    fn file(&mut self, from: &Path, at: &str) -> Result<(), DockerError> {
        let data = std::fs::read(from).map_err(|e| self.err(format!("{}: {e}", from.display())))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(from)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o755)
        };
        self.bytes(at, &data, mode, 0)
    }

    /// A host directory, recursively, at `at`.
    fn tree(&mut self, from: &Path, at: &str, uid: u64) -> Result<(), DockerError> {
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| self.err(format!("{}: {e}", from.display())))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(from)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o755)
        };
        self.dir(at, mode, uid)?;
        for e in entries {
            let path = e.path();
            let name = format!("{at}/{}", e.file_name().to_string_lossy());
            let link = e.file_type().is_ok_and(|t| t.is_symlink());
            if path.is_dir() {
                // A linked directory (zoneinfo's posix -> .) would loop.
                if !link {
                    self.tree(&path, &name, uid)?;
                }
            } else if path.exists() {
                let data = std::fs::read(&path)
                    .map_err(|e| self.err(format!("{}: {e}", path.display())))?;
                let mode = {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::metadata(&path)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .unwrap_or(0o644)
                };
                self.bytes(&name, &data, mode, uid)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(String, Vec<u8>), DockerError> {
        let digest = self.hash.finalize();
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let tag = format!("{}{hex}", self.tag_prefix);
        let tar = self
            .tar
            .into_inner()
            .map_err(|e| DockerError::BuildContext {
                tag: tag.clone(),
                message: e.to_string(),
            })?;
        Ok((tag, tar))
    }
}

/// The pod image's context and tag for `binary`.
fn pod_context(binary: &Path) -> Result<(String, Vec<u8>), DockerError> {
    let mut cx = Context::new("vigil-pod:");
    let libs = shared_libs(binary).map_err(|e| cx.err(e))?;
    cx.file(binary, "root/vigil")?;
    for l in &libs {
        cx.file(l, &format!("root{}", l.display()))?;
    }
    cx.dir("root/tmp", 0o1777, 0)?;
    cx.bytes(
        "Dockerfile",
        format!(
            "FROM scratch\nCOPY root/ /\nEXPOSE {}\nENTRYPOINT [\"/vigil\"]\n",
            super::POD_PORT
        )
        .as_bytes(),
        0o644,
        0,
    )?;
    cx.finish()
}

/// The installed PostgreSQL server binaries (VIGIL_PG_BIN, or the newest
/// /usr/lib/postgresql/*/bin).
fn pg_bin() -> Option<PathBuf> {
    if let Ok(b) = std::env::var("VIGIL_PG_BIN") {
        return Some(PathBuf::from(b));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// initdb into a fresh directory on the host (as the postgres user when we
/// are root: initdb refuses root), trusting every address (the server only
/// ever listens on the scenario's private network and a 127.0.0.1 port).
fn initdb(bin: &Path, into: &Path) -> Result<(), String> {
    std::fs::create_dir_all(into).map_err(|e| format!("{}: {e}", into.display()))?;
    let data = into.join("data");
    let root = nix::unistd::geteuid().is_root();
    let mut cmd = if root {
        let pg = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("running as root and there is no postgres user to run initdb as")?;
        nix::unistd::chown(into, Some(pg.uid), Some(pg.gid)).map_err(|e| e.to_string())?;
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join("initdb"));
        c
    } else {
        std::process::Command::new(bin.join("initdb"))
    };
    let out = cmd
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "--locale=C",
            "-E",
            "UTF8",
        ])
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let hba = data.join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
    text.push_str("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n");
    std::fs::write(&hba, text).map_err(|e| e.to_string())?;
    Ok(())
}

/// The PostgreSQL image's context and tag.
fn pg_context() -> Result<(String, Vec<u8>), DockerError> {
    let bin = pg_bin().ok_or_else(|| DockerError::BuildContext {
        tag: "vigil-postgres".into(),
        message: "no PostgreSQL server binaries found (install Debian's postgresql package, \
                  or set VIGIL_PG_BIN)"
            .into(),
    })?;
    // /usr/lib/postgresql/15/bin -> 15
    let major = bin
        .parent()
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().to_string())
        .unwrap_or_else(|| "pg".into());
    let mut cx = Context::new(&format!("vigil-postgres:{major}-"));
    let postgres = bin.join("postgres");
    cx.file(&postgres, &format!("root{}", postgres.display()))?;
    for l in shared_libs(&postgres).map_err(|e| cx.err(e))? {
        cx.file(&l, &format!("root{}", l.display()))?;
    }
    let pkglib = bin.with_file_name("lib").join("plpgsql.so");
    if pkglib.exists() {
        cx.file(&pkglib, &format!("root{}", pkglib.display()))?;
    }
    let share = PathBuf::from(format!("/usr/share/postgresql/{major}"));
    if share.is_dir() {
        cx.tree(&share, &format!("root{}", share.display()), 0)?;
    }
    let zoneinfo = Path::new("/usr/share/zoneinfo");
    if zoneinfo.is_dir() {
        cx.tree(zoneinfo, "root/usr/share/zoneinfo", 0)?;
    }
    cx.bytes(
        "root/etc/passwd",
        format!("postgres:x:{PG_UID}:{PG_UID}::/var/lib/postgresql:/nonexistent\n").as_bytes(),
        0o644,
        0,
    )?;
    cx.bytes(
        "root/etc/group",
        format!("postgres:x:{PG_UID}:\n").as_bytes(),
        0o644,
        0,
    )?;
    cx.dir("root/tmp", 0o1777, 0)?;
    // The data directory: initialized here, copied owned by postgres (a
    // COPY --chown; the directory keeps initdb's 0700).
    let tmp =
        std::env::temp_dir().join(format!("vigil-pg-image-{}", uuid::Uuid::now_v7().simple()));
    let made = initdb(&bin, &tmp).map_err(|e| cx.err(e));
    let added = made.and_then(|()| cx.tree(&tmp.join("data"), "pgroot/data", PG_UID));
    let _ = std::fs::remove_dir_all(&tmp);
    added?;
    cx.bytes(
        "Dockerfile",
        format!(
            "FROM scratch\nCOPY root/ /\nCOPY --chown={PG_UID}:{PG_UID} pgroot/ /var/lib/postgresql/\n\
             USER postgres\nEXPOSE 5432\n\
             ENTRYPOINT [\"{}\", \"-D\", \"/var/lib/postgresql/data\", \"-c\", \"listen_addresses=*\", \
             \"-c\", \"unix_socket_directories=/tmp\"]\n",
            postgres.display()
        )
        .as_bytes(),
        0o644,
        0,
    )?;
    // The hash covers the freshly initialized data directory too, which
    // differs on every initdb: hash the server binary alone for the tag.
    let mut tag_hash = Sha256::new();
    tag_hash.update(std::fs::read(&postgres).map_err(|e| cx.err(e))?);
    let (_, tar) = cx.finish()?;
    let hex: String = tag_hash
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((format!("vigil-postgres:{major}-{hex}"), tar))
}

async fn build(docker: &Docker, tag: &str, role: &str, tar: Vec<u8>) -> Result<(), DockerError> {
    let labels = HashMap::from([(LABEL_CHAOS, "1"), (LABEL_ROLE, role)]);
    let opts = BuildImageOptionsBuilder::new()
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let mut out = docker.build_image(opts, None, Some(bollard::body_full(tar.into())));
    let mut log = String::new();
    while let Some(item) = out.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(DockerError::BuildImage {
                        tag: tag.to_owned(),
                        message: format!("{e}\n{log}"),
                    });
                }
                if let Some(s) = info.stream {
                    log.push_str(&s);
                }
            }
            Err(e) => {
                return Err(DockerError::BuildImage {
                    tag: tag.to_owned(),
                    message: format!("{e}\n{log}"),
                });
            }
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, DockerError> + Send + 'static,
) -> Result<T, DockerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DockerError::BuildContext {
            tag: what.to_owned(),
            message: e.to_string(),
        })?
}

/// The pod image for `binary`: built unless the engine already has it (or
/// always, with `force`).
pub async fn pod_image(
    docker: &Docker,
    binary: &Path,
    force: bool,
) -> Result<BuiltImage, DockerError> {
    let b = binary.to_owned();
    let (tag, tar) = blocking("vigil-pod", move || pod_context(&b)).await?;
    if !force && let Some(size) = image_size(docker, &tag).await? {
        return Ok(BuiltImage {
            tag,
            size,
            built: false,
        });
    }
    build(docker, &tag, "pod-image", tar).await?;
    let size = image_size(docker, &tag).await?.unwrap_or(0);
    Ok(BuiltImage {
        tag,
        size,
        built: true,
    })
}

/// The tag of the PostgreSQL image for the installed server, without
/// building anything.
fn pg_tag() -> Result<String, DockerError> {
    let bin = pg_bin().ok_or_else(|| DockerError::BuildContext {
        tag: "vigil-postgres".into(),
        message: "no PostgreSQL server binaries found (install Debian's postgresql package, \
                  or set VIGIL_PG_BIN)"
            .into(),
    })?;
    let major = bin
        .parent()
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().to_string())
        .unwrap_or_else(|| "pg".into());
    let data = std::fs::read(bin.join("postgres")).map_err(|e| DockerError::BuildContext {
        tag: "vigil-postgres".into(),
        message: e.to_string(),
    })?;
    let hex: String = Sha256::digest(&data)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("vigil-postgres:{major}-{hex}"))
}

/// The PostgreSQL image: built unless the engine already has it.
pub async fn pg_image(docker: &Docker, force: bool) -> Result<BuiltImage, DockerError> {
    let tag = blocking("vigil-postgres", pg_tag).await?;
    if !force && let Some(size) = image_size(docker, &tag).await? {
        return Ok(BuiltImage {
            tag,
            size,
            built: false,
        });
    }
    let (tag, tar) = blocking("vigil-postgres", pg_context).await?;
    build(docker, &tag, "postgres-image", tar).await?;
    let size = image_size(docker, &tag).await?.unwrap_or(0);
    Ok(BuiltImage {
        tag,
        size,
        built: true,
    })
}
