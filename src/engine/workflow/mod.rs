//! Workflow definitions: a DAG of steps on lanes, loaded from TOML
//! (`fixtures/workflows/*.toml`). Synthetic step bodies, real engine semantics.
//!
//! Parsing is strict: an unknown key, a missing parameter, a reference to a
//! step that does not exist or a cycle is an error naming the file, the step
//! and the field.

use crate::engine::run::LateCompletion;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod template;

use template::derive_secrets;
pub use template::{Piece, fill_template, lookup_path, redact, template_pieces};

/// An `http` step whose `url` starts with this calls the chaos runner's
/// witness: the pod's `--witness-url` replaces it. Its `body` may use
/// `{{vigil.run}}`, `{{vigil.step}}`, `{{vigil.attempt}}`, `{{vigil.epoch}}`
/// and `{{vigil.pod}}`. A pod with no witness skips the request (nobody is
/// watching) and the step succeeds with `{"witness": null}`.
pub const WITNESS_URL: &str = "{{vigil.witness}}";

/// The replacement for every secret field in the redacted copy of an output.
pub const REDACTED: &str = "[REDACTED]";

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: String,
        field: String,
        problem: String,
    },
    /// [`WorkflowError::Invalid`] where the line is known (bad templates).
    #[error("{file}:{line}: {field}: {problem}")]
    InvalidAt {
        file: String,
        line: usize,
        field: String,
        problem: String,
    },
    #[error("workflow {name:?} is defined twice: {first} and {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("unknown workflow {name:?}; known: {known}")]
    Unknown { name: String, known: String },
}

/// Whether a failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Timeouts, connection errors, 5xx: retried with capped backoff.
    Transient,
    /// Validation and other deterministic failures: failed at once, never retried.
    Permanent,
}

/// Injected failures: the first `first` attempts of the step fail with `class`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailSchedule {
    pub first: u32,
    pub class: ErrorClass,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Append `chunks` chunks to the run's stream, one every `interval_ms`.
    Emit {
        chunks: u32,
        interval_ms: u64,
        text: String,
    },
    Sleep {
        ms: u64,
    },
    /// Return `output` with its templates filled (see [`fill_template`]).
    Compute {
        output: Value,
    },
    /// Succeeds with `{}` unless its fail schedule says otherwise.
    Fail,
    /// Merge `set` (templates filled) into the run's actor state.
    Mutate {
        set: serde_json::Map<String, Value>,
    },
    /// Output is an object of every predecessor's raw output, by step id.
    FanIn,
    Http {
        url: String,
        method: String,
        body: Option<Value>,
    },
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Emit { .. } => "emit",
            StepKind::Sleep { .. } => "sleep",
            StepKind::Compute { .. } => "compute",
            StepKind::Fail => "fail",
            StepKind::Mutate { .. } => "mutate",
            StepKind::FanIn => "fan_in",
            StepKind::Http { .. } => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    pub id: String,
    pub after: Vec<String>,
    pub lane: String,
    pub max_retries: u32,
    pub timeout_ms: Option<u64>,
    pub fail: Option<FailSchedule>,
    /// Dotted paths into the output replaced by [`REDACTED`] in the stored
    /// `output` (the raw copy keeps them): the declared ones, plus every
    /// path whose value a template takes from a secret (computed at load,
    /// see [`Workflow::parse`]). Fan-in steps inherit their predecessors'
    /// secret paths under the predecessor's id. `""` is the whole output.
    pub secret_fields: Vec<String>,
    /// `mutate` only: dotted paths into the run's actor state (keys of
    /// `set`, and below) replaced by [`REDACTED`] in the shown `run_state`;
    /// declared (`secret_fields` of a mutate step) or taken from a secret.
    pub state_secrets: Vec<String>,
    pub kind: StepKind,
}

impl StepDef {
    pub fn max_attempts(&self) -> i64 {
        i64::from(self.max_retries) + 1
    }

    /// How long an attempt of this step may go without progress before it
    /// fails as transient (and is retried within its budget). Progress is a
    /// chunk for `emit`, so there it bounds the gap between chunks; the
    /// other kinds report none until they finish, so there it bounds the
    /// attempt. `timeout_ms` when set, else a default by kind: `http` gets
    /// [`StepTimeouts::http`]; `sleep` and `emit` get their own duration
    /// (`ms`, `interval_ms`) plus [`StepTimeouts::slack`]; the instant kinds
    /// get the slack alone.
    pub fn timeout(&self, defaults: &StepTimeouts) -> Duration {
        if let Some(ms) = self.timeout_ms {
            return Duration::from_millis(ms);
        }
        match &self.kind {
            StepKind::Http { .. } => defaults.http,
            StepKind::Sleep { ms } => Duration::from_millis(*ms).saturating_add(defaults.slack),
            StepKind::Emit { interval_ms, .. } => {
                Duration::from_millis(*interval_ms).saturating_add(defaults.slack)
            }
            StepKind::Compute { .. }
            | StepKind::Fail
            | StepKind::Mutate { .. }
            | StepKind::FanIn => defaults.slack,
        }
    }
}

/// The step timeouts used where a step does not set `timeout_ms` (see
/// [`StepDef::timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTimeouts {
    /// An `http` step's request, from connecting to the last byte.
    pub http: Duration,
    /// Allowed over a step's own duration; the whole bound of the kinds
    /// that have none.
    pub slack: Duration,
}

/// Default [`StepTimeouts::http`].
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`StepTimeouts::slack`].
pub const DEFAULT_STEP_SLACK: Duration = Duration::from_secs(30);

impl Default for StepTimeouts {
    fn default() -> Self {
        StepTimeouts {
            http: DEFAULT_HTTP_TIMEOUT,
            slack: DEFAULT_STEP_SLACK,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub description: String,
    pub lane: String,
    pub deadline_ms: Option<u64>,
    pub late_completion: LateCompletion,
    /// Steps in a topological order (every step after its predecessors).
    pub steps: Vec<StepDef>,
    pub source: PathBuf,
}

impl Workflow {
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.id == id)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_lane")]
    lane: String,
    deadline_ms: Option<u64>,
    #[serde(default)]
    late_completion: LateCompletion,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

fn default_lane() -> String {
    "sync".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    kind: String,
    #[serde(default)]
    after: Vec<String>,
    lane: Option<String>,
    max_retries: Option<u32>,
    timeout_ms: Option<u64>,
    fail: Option<FailSchedule>,
    #[serde(default)]
    secret_fields: Vec<String>,
    // Kind parameters; which are required depends on `kind`.
    chunks: Option<u32>,
    interval_ms: Option<u64>,
    text: Option<String>,
    ms: Option<u64>,
    output: Option<Spanned<toml::Value>>,
    set: Option<Spanned<toml::Table>>,
    url: Option<String>,
    method: Option<String>,
    body: Option<Spanned<toml::Value>>,
}

/// Default retry budget when neither the step nor the workflow sets one.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

fn toml_to_json(v: toml::Value) -> Value {
    // toml values always have a JSON form (datetimes become strings).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Workflow {
    /// Parse one workflow file's text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Workflow, WorkflowError> {
        let fname = file.display().to_string();
        let raw: RawWorkflow = toml::from_str(text).map_err(|source| WorkflowError::Parse {
            file: fname.clone(),
            source,
        })?;
        let invalid = |field: String, problem: String| WorkflowError::Invalid {
            file: fname.clone(),
            field,
            problem,
        };
        if !is_ident(&raw.name) {
            return Err(invalid(
                "name".into(),
                format!("{:?} must be 1-64 chars of a-z, 0-9, _ or -", raw.name),
            ));
        }
        if !is_ident(&raw.lane) {
            return Err(invalid(
                "lane".into(),
                format!("{:?} is not a lane name", raw.lane),
            ));
        }
        if raw.deadline_ms == Some(0) {
            return Err(invalid(
                "deadline_ms".into(),
                "must be at least 1 ms".into(),
            ));
        }
        if raw.steps.is_empty() {
            return Err(invalid(
                "steps".into(),
                "a workflow needs at least one step".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut spans: HashMap<String, TemplateSite> = HashMap::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        for (i, rs) in raw.steps.into_iter().enumerate() {
            let at = |field: &str| format!("steps[{i}] ({}).{field}", rs.id);
            if !is_ident(&rs.id) {
                return Err(invalid(
                    format!("steps[{i}].id"),
                    format!("{:?} must be 1-64 chars of a-z, 0-9, _ or -", rs.id),
                ));
            }
            if rs.id == "vigil" {
                return Err(invalid(
                    at("id"),
                    "\"vigil\" is reserved for the {{vigil.*}} step context".into(),
                ));
            }
            if !seen.insert(rs.id.clone()) {
                return Err(invalid(at("id"), "duplicate step id".into()));
            }
            let allowed: &[&str] = match rs.kind.as_str() {
                "emit" => &["chunks", "interval_ms", "text"],
                "sleep" => &["ms"],
                "compute" => &["output"],
                "fail" => &[],
                "mutate" => &["set"],
                "fan_in" => &[],
                "http" => &["url", "method", "body"],
                other => {
                    return Err(invalid(
                        at("kind"),
                        format!(
                            "unknown step kind {other:?}; expected emit, sleep, compute, fail, \
                             mutate, fan_in or http"
                        ),
                    ));
                }
            };
            let present = [
                ("chunks", rs.chunks.is_some()),
                ("interval_ms", rs.interval_ms.is_some()),
                ("text", rs.text.is_some()),
                ("ms", rs.ms.is_some()),
                ("output", rs.output.is_some()),
                ("set", rs.set.is_some()),
                ("url", rs.url.is_some()),
                ("method", rs.method.is_some()),
                ("body", rs.body.is_some()),
            ];
            for (param, is_set) in present {
                if is_set && !allowed.contains(&param) {
                    return Err(invalid(
                        at(param),
                        format!("not a parameter of kind {:?}", rs.kind),
                    ));
                }
            }
            // Where the templated parameter sits in the file, for errors.
            let templated = [
                ("output", rs.output.as_ref().map(Spanned::span)),
                ("set", rs.set.as_ref().map(Spanned::span)),
                ("body", rs.body.as_ref().map(Spanned::span)),
            ]
            .into_iter()
            .find_map(|(param, span)| Some((i, param, span?)));
            let missing =
                |param: &str| invalid(at(param), format!("required by kind {:?}", rs.kind));
            let kind = match rs.kind.as_str() {
                "emit" => StepKind::Emit {
                    chunks: rs.chunks.ok_or_else(|| missing("chunks"))?,
                    interval_ms: rs.interval_ms.unwrap_or(0),
                    text: rs.text.unwrap_or_else(|| "chunk {i}".into()),
                },
                "sleep" => StepKind::Sleep {
                    ms: rs.ms.ok_or_else(|| missing("ms"))?,
                },
                "compute" => StepKind::Compute {
                    output: toml_to_json(rs.output.ok_or_else(|| missing("output"))?.into_inner()),
                },
                "fail" => StepKind::Fail,
                "mutate" => {
                    let set = toml_to_json(toml::Value::Table(
                        rs.set.ok_or_else(|| missing("set"))?.into_inner(),
                    ));
                    StepKind::Mutate {
                        set: set.as_object().cloned().unwrap_or_default(),
                    }
                }
                "fan_in" => StepKind::FanIn,
                _ => {
                    let url = rs.url.ok_or_else(|| missing("url"))?;
                    // The chaos runner's witness: its base URL is the pod's
                    // --witness-url, filled in when the step runs.
                    let checked = url.replacen(WITNESS_URL, "http://witness.invalid", 1);
                    let parsed = url::Url::parse(&checked)
                        .map_err(|e| invalid(at("url"), format!("{url:?} is not a URL: {e}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(invalid(at("url"), format!("{url:?} must be http or https")));
                    }
                    let method = rs
                        .method
                        .unwrap_or_else(|| "GET".into())
                        .to_ascii_uppercase();
                    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "DELETE" | "PATCH") {
                        return Err(invalid(
                            at("method"),
                            format!("unsupported method {method:?}"),
                        ));
                    }
                    StepKind::Http {
                        url,
                        method,
                        body: rs.body.map(|b| toml_to_json(b.into_inner())),
                    }
                }
            };
            if matches!(kind, StepKind::FanIn) && rs.after.is_empty() {
                return Err(invalid(
                    at("after"),
                    "a fan_in step needs predecessors".into(),
                ));
            }
            // Secret paths must name a field: of the output (compute) or of
            // `set` (mutate, paths into the run's actor state). An http
            // step's response is not known before it runs.
            let own_fields = match &kind {
                StepKind::Compute { output } => Some((output.clone(), "the output")),
                StepKind::Mutate { set } => Some((Value::Object(set.clone()), "`set`")),
                _ => None,
            };
            if let Some((fields, what)) = own_fields {
                for path in &rs.secret_fields {
                    if path.is_empty() || lookup_path(&fields, path).is_none() {
                        return Err(invalid(
                            at("secret_fields"),
                            format!("{path:?} is not a field of {what}"),
                        ));
                    }
                }
            } else if !rs.secret_fields.is_empty() && !matches!(kind, StepKind::Http { .. }) {
                return Err(invalid(
                    at("secret_fields"),
                    format!("kind {:?} has no own output fields to mark secret", rs.kind),
                ));
            }
            if rs.timeout_ms == Some(0) {
                return Err(invalid(at("timeout_ms"), "must be at least 1 ms".into()));
            }
            if let (StepKind::Emit { interval_ms, .. }, Some(t)) = (&kind, rs.timeout_ms) {
                // An emit's timeout is the longest it may go without a chunk.
                if t <= *interval_ms {
                    return Err(invalid(
                        at("timeout_ms"),
                        format!(
                            "{t} ms is a no-progress timeout between chunks: it must exceed \
                             interval_ms ({interval_ms})"
                        ),
                    ));
                }
            }
            let lane = rs.lane.unwrap_or_else(|| raw.lane.clone());
            if !is_ident(&lane) {
                return Err(invalid(at("lane"), format!("{lane:?} is not a lane name")));
            }
            if let Some(t) = templated {
                spans.insert(rs.id.clone(), t);
            }
            let (secret_fields, state_secrets) = if matches!(kind, StepKind::Mutate { .. }) {
                (Vec::new(), rs.secret_fields)
            } else {
                (rs.secret_fields, Vec::new())
            };
            steps.push(StepDef {
                id: rs.id,
                after: rs.after,
                lane,
                max_retries: rs
                    .max_retries
                    .or(raw.max_retries)
                    .unwrap_or(DEFAULT_MAX_RETRIES),
                timeout_ms: rs.timeout_ms,
                fail: rs.fail,
                secret_fields,
                state_secrets,
                kind,
            });
        }
        for (i, s) in steps.iter().enumerate() {
            for dep in &s.after {
                if !seen.contains(dep) {
                    return Err(invalid(
                        format!("steps[{i}] ({}).after", s.id),
                        format!("unknown step {dep:?}"),
                    ));
                }
                if dep == &s.id {
                    return Err(invalid(
                        format!("steps[{i}] ({}).after", s.id),
                        "a step cannot come after itself".into(),
                    ));
                }
            }
        }
        let mut steps = topo_sort(steps).map_err(|cycle| {
            invalid(
                "steps".into(),
                format!("dependency cycle through {}", cycle.join(", ")),
            )
        })?;
        derive_secrets(&mut steps, &seen, |id, bad, problem| {
            let (i, param, span) = spans.get(id).cloned().unwrap_or((0, "steps", 0..0));
            // The line of the offending string where it appears verbatim in
            // the parameter (which may go on in sub-tables after its own
            // span, up to the next `[[...]]`), else the parameter's line.
            let start = text
                .get(span.start..)
                .map(|src| {
                    let end = (span.end - span.start).max(src.find("\n[[").unwrap_or(src.len()));
                    &src[..end.min(src.len())]
                })
                .and_then(|src| src.find(bad))
                .map_or(span.start, |at| span.start + at);
            WorkflowError::InvalidAt {
                file: fname.clone(),
                line: line_at(text, start),
                field: format!("steps[{i}] ({id}).{param}"),
                problem,
            }
        })?;
        Ok(Workflow {
            name: raw.name,
            description: raw.description,
            lane: raw.lane,
            deadline_ms: raw.deadline_ms,
            late_completion: raw.late_completion,
            steps,
            source: file.to_owned(),
        })
    }

    pub fn load(file: &Path) -> Result<Workflow, WorkflowError> {
        let text = std::fs::read_to_string(file).map_err(|source| WorkflowError::Read {
            file: file.display().to_string(),
            source,
        })?;
        Workflow::parse(file, &text)
    }
}

/// Kahn's algorithm, stable in file order; on a cycle, the steps left over.
fn topo_sort(steps: Vec<StepDef>) -> Result<Vec<StepDef>, Vec<String>> {
    let mut done: HashSet<String> = HashSet::new();
    let mut left = steps;
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let before = left.len();
        let mut rest = Vec::new();
        for s in left {
            if s.after.iter().all(|d| done.contains(d)) {
                done.insert(s.id.clone());
                out.push(s);
            } else {
                rest.push(s);
            }
        }
        if rest.len() == before {
            return Err(rest.into_iter().map(|s| s.id).collect());
        }
        left = rest;
    }
    Ok(out)
}

/// Where a step's templated parameter (`output`, `set` or `body`) is: the
/// step's index in the file, the parameter, its byte span.
type TemplateSite = (usize, &'static str, Range<usize>);

/// The 1-based line of byte offset `at` in `text`.
fn line_at(text: &str, at: usize) -> usize {
    text.get(..at).map_or(1, |t| t.matches('\n').count() + 1)
}

/// Every workflow of a directory, by name.
#[derive(Debug, Clone, Default)]
pub struct WorkflowRegistry {
    by_name: BTreeMap<String, Workflow>,
}

impl WorkflowRegistry {
    /// Load every `*.toml` in `dir`. Any bad file fails the whole load.
    pub fn load_dir(dir: &Path) -> Result<Self, WorkflowError> {
        let entries = std::fs::read_dir(dir).map_err(|source| WorkflowError::Read {
            file: dir.display().to_string(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut reg = WorkflowRegistry::default();
        for f in files {
            reg.insert(Workflow::load(&f)?)?;
        }
        Ok(reg)
    }

    pub fn insert(&mut self, wf: Workflow) -> Result<(), WorkflowError> {
        if let Some(prev) = self.by_name.get(&wf.name) {
            return Err(WorkflowError::Duplicate {
                name: wf.name.clone(),
                first: prev.source.display().to_string(),
                second: wf.source.display().to_string(),
            });
        }
        self.by_name.insert(wf.name.clone(), wf);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Workflow, WorkflowError> {
        self.by_name
            .get(name)
            .ok_or_else(|| WorkflowError::Unknown {
                name: name.to_owned(),
                known: self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
