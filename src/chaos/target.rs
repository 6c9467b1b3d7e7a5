//! Targets: systems under test that Vigil did not build (docs/targets.md).
//!
//! A target file says how the runner starts a worker (a command template),
//! how it knows the worker is ready, and what the worker's small HTTP API
//! offers; [`TargetApi`] speaks that API: submit a run with an id the runner
//! chooses, read a run's state. Steps report their side effects to the
//! runner's witness, so every verdict about a target rests on what the
//! workflow definition says, what its status API answered and what the
//! witness saw: its store is never read.

use crate::engine::run::RunState;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The placeholders a command template may use.
pub const PLACEHOLDERS: [&str; 6] = [
    "{pod_id}",
    "{port}",
    "{store_url}",
    "{witness_url}",
    "{workflows}",
    "{dir}",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    #[serde(default)]
    description: String,
    command: Vec<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_ready")]
    ready: String,
    #[serde(default = "default_ready_timeout")]
    ready_timeout_ms: u64,
    /// A shell command, relative to the target file's directory, that
    /// installs what `command` needs (named in the error when it is missing).
    #[serde(default)]
    install: Option<String>,
    /// Whether the worker serves `GET /runs/{id}/stream` (not yet used).
    #[serde(default)]
    streams: bool,
    /// Whether witness calls carry an ownership epoch that grows on every
    /// takeover.
    #[serde(default)]
    epochs: bool,
}

fn default_ready() -> String {
    "/healthz".into()
}

fn default_ready_timeout() -> u64 {
    60_000
}

/// A parsed target file.
#[derive(Debug, Clone)]
pub struct TargetDef {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    /// The target file's directory: `{dir}`, and the workers' working
    /// directory.
    pub dir: PathBuf,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ready: String,
    pub ready_timeout: Duration,
    pub install: Option<String>,
    pub caps: Capabilities,
}

/// What a target offers the checkers, recorded in the history's `start`
/// line so `vigil chaos check` judges a saved run the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub name: String,
    pub streams: bool,
    pub epochs: bool,
}

impl TargetDef {
    pub fn load(file: &Path) -> Result<TargetDef> {
        // A regular file of a sane size: not a device, a FIFO or a
        // directory named by mistake.
        let meta = std::fs::metadata(file)
            .with_context(|| format!("{}: cannot read the target file", file.display()))?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            bail!(
                "{}: not a target file (a regular TOML file of at most 1 MiB)",
                file.display()
            );
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read the target file", file.display()))?;
        let raw: RawTarget =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if raw.command.is_empty() {
            bail!("{}: command: give the worker's argv", file.display());
        }
        for arg in &raw.command {
            for open in arg.match_indices('{').map(|(i, _)| &arg[i..]) {
                if !PLACEHOLDERS.iter().any(|p| open.starts_with(p)) {
                    bail!(
                        "{}: command: unknown placeholder in {arg:?}; known: {}",
                        file.display(),
                        PLACEHOLDERS.join(", ")
                    );
                }
            }
        }
        if !raw.ready.starts_with('/') {
            bail!(
                "{}: ready: {:?}: a path such as /healthz",
                file.display(),
                raw.ready
            );
        }
        if raw.streams {
            bail!(
                "{}: streams = true: following a target's stream is not built yet; \
                 say streams = false",
                file.display()
            );
        }
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        let dir = file.parent().unwrap_or(Path::new(".")).to_owned();
        Ok(TargetDef {
            caps: Capabilities {
                name: raw.name.clone(),
                streams: raw.streams,
                epochs: raw.epochs,
            },
            name: raw.name,
            description: raw.description,
            dir,
            file,
            command: raw.command,
            env: raw.env.into_iter().collect(),
            ready: raw.ready,
            ready_timeout: Duration::from_millis(raw.ready_timeout_ms),
            install: raw.install,
        })
    }

    /// The worker command as the cluster's process driver runs it: the
    /// run-wide placeholders filled, `{pod_id}` and `{port}` left for each
    /// start.
    pub fn command_pod(&self, store_url: &str, witness_url: &str, workflows: &Path) -> CommandPod {
        let fill = |a: &str| {
            a.replace("{store_url}", store_url)
                .replace("{witness_url}", witness_url)
                .replace("{workflows}", &workflows.display().to_string())
                .replace("{dir}", &self.dir.display().to_string())
        };
        CommandPod {
            argv: self.command.iter().map(|a| fill(a)).collect(),
            env: self.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect(),
            cwd: self.dir.clone(),
            ready: self.ready.clone(),
            ready_timeout: self.ready_timeout,
            install_hint: self
                .install
                .as_ref()
                .map(|i| format!("install it with `{i}` (run from {})", self.dir.display())),
        }
    }
}

pub use crate::cluster::process::CommandPod;

/// A worker's answer to `GET /runs/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetRun {
    pub state: RunState,
    #[serde(default)]
    pub error: Option<String>,
}

/// The worker API of docs/targets.md, on one worker at a time.
#[derive(Debug, Clone)]
pub struct TargetApi {
    http: reqwest::Client,
}

impl Default for TargetApi {
    fn default() -> Self {
        TargetApi::new()
    }
}

impl TargetApi {
    pub fn new() -> TargetApi {
        TargetApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// `POST /runs` with the runner's id; the id again is the same run.
    pub async fn submit(&self, base: &str, id: &str, workflow: &str, input: &Value) -> Result<()> {
        let r = self
            .http
            .post(format!("{base}runs"))
            .json(&json!({ "id": id, "workflow": workflow, "input": input }))
            .send()
            .await
            .with_context(|| format!("POST {base}runs"))?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            bail!("POST {base}runs: {status}: {}", body.trim());
        }
        Ok(())
    }

    /// `GET /runs/{id}`: None when the worker does not know the run (404).
    pub async fn run(&self, base: &str, id: &str) -> Result<Option<TargetRun>> {
        let url = format!("{base}runs/{id}");
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            bail!("GET {url}: {status}: {}", body.trim());
        }
        let body = r.bytes().await.with_context(|| format!("GET {url}"))?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {url}: expected {{\"state\": pending|running|succeeded|failed|cancelled|timed_out|lost}}, got {}",
                String::from_utf8_lossy(&body)
            )
        }).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<TargetDef> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("target.toml");
        std::fs::write(&f, text)?;
        TargetDef::load(&f)
    }

    #[test]
    fn a_target_file_is_read_strictly() {
        let t = load(
            r#"name = "x"
command = ["python", "{dir}/app.py", "--port", "{port}", "--db", "{store_url}"]
"#,
        )
        .unwrap();
        assert_eq!(t.ready, "/healthz");
        assert!(!t.caps.epochs);
        let c = t.command_pod("postgres://h/db", "http://w", Path::new("/wf"));
        assert_eq!(c.argv[3], "{port}");
        assert_eq!(c.argv[5], "postgres://h/db");
        assert!(c.argv[1].ends_with("/app.py") && !c.argv[1].contains("{dir}"));

        let e = load("name = \"x\"\ncommand = [\"a\", \"{host}\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("unknown placeholder"), "{e:#}");
        let e = load("name = \"x\"\ncommand = []\n").unwrap_err();
        assert!(format!("{e:#}").contains("command"), "{e:#}");
        let e = load("name = \"x\"\ncommand = [\"a\"]\nport = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let e = TargetDef::load(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{e:#}").contains("not a target file"), "{e:#}");
    }
}
