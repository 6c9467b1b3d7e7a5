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

/// One piece of a template string: literal text or a `{{step.path}}`
/// reference (`path` is `""` for the step's whole output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Ref { step: &'a str, path: &'a str },
}

/// Split a string into literal text and `{{step.path}}` references. A
/// `{{` with no `}}` after it, an empty reference or one that is not dotted
/// names is an error. A string that is exactly one reference keeps the
/// referenced value's JSON type when filled; any other string with
/// references is filled as text (see [`fill_template`]).
pub fn template_pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("template {s:?}: \"{{{{\" is never closed by \"}}}}\""))?;
        let inner = after[..close].trim();
        let ok_name = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !inner.split('.').all(ok_name) {
            return Err(format!(
                "template {s:?}: {{{{{inner}}}}} is not a reference; expected {{{{step}}}} or \
                 {{{{step.field.subfield}}}}"
            ));
        }
        let (step, path) = inner.split_once('.').unwrap_or((inner, ""));
        out.push(Piece::Ref { step, path });
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Fill `v`'s templates from `inputs` (step id -> raw output; `vigil` for
/// the http step context). A string that is exactly `{{step.path}}` becomes
/// the value there (its JSON type kept; null if the path is absent); a
/// reference inside a longer string is rendered as text (strings as they
/// are, other values as JSON). Errors name the template.
pub fn fill_template(v: &Value, inputs: &serde_json::Map<String, Value>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if s.contains("{{") => {
            let pieces = template_pieces(s)?;
            let resolve = |step: &str, path: &str| -> Result<Value, String> {
                let base = inputs
                    .get(step)
                    .ok_or_else(|| format!("template {s:?}: {step:?} is not a predecessor"))?;
                Ok(lookup_path(base, path).cloned().unwrap_or(Value::Null))
            };
            if let [Piece::Ref { step, path }] = pieces.as_slice() {
                return resolve(step, path);
            }
            let mut text = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Ref { step, path } => match resolve(step, path)? {
                        Value::String(x) => text.push_str(&x),
                        other => text.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(text)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| fill_template(x, inputs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), fill_template(x, inputs)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// `a.b` joined; `""` is the root.
fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

/// `inner` is `outer` or lies under it.
fn within(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|r| r.starts_with('.'))
}

/// Every string in `v` with the path redaction can reach it by (the nearest
/// enclosing object field: redaction does not index into arrays) and
/// whether the string is the whole value at that path.
fn template_strings<'a>(
    v: &'a Value,
    at: &str,
    whole: bool,
    out: &mut Vec<(String, bool, &'a str)>,
) {
    match v {
        Value::String(s) => out.push((at.to_owned(), whole, s)),
        Value::Array(a) => {
            for x in a {
                template_strings(x, at, false, out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                if whole {
                    template_strings(x, &join_path(at, k), true, out);
                } else {
                    template_strings(x, at, false, out);
                }
            }
        }
        _ => {}
    }
}

/// The fields of the http step context, `{{vigil.FIELD}}`.
const VIGIL_FIELDS: [&str; 5] = ["run", "step", "attempt", "epoch", "pod"];

/// Check every template and work out, in topological order, which paths
/// derive from secrets. A template that takes a value from a secret path
/// (or from under one) makes its own path secret: the whole string, or the
/// whole array it sits in; a string that is exactly a reference to a value
/// holding secrets deeper down gets those paths, under its own. So secrecy
/// follows values through any chain of compute, mutate and fan-in steps
/// without being declared again. A fan-in's output holds its predecessors'
/// outputs, so their secrets are its secrets (under the predecessor's id).
/// `bad(step id, offending string, problem)` builds the error.
fn derive_secrets(
    steps: &mut [StepDef],
    ids: &HashSet<String>,
    bad: impl Fn(&str, &str, String) -> WorkflowError,
) -> Result<(), WorkflowError> {
    let mut secrets: HashMap<String, Vec<String>> = HashMap::new();
    for s in steps.iter_mut() {
        let set_value;
        let template = match &s.kind {
            StepKind::Compute { output } => Some(output),
            StepKind::Mutate { set } => {
                set_value = Value::Object(set.clone());
                Some(&set_value)
            }
            StepKind::Http { body, .. } => body.as_ref(),
            _ => None,
        };
        let mut derived = Vec::new();
        let mut strings = Vec::new();
        if let Some(t) = template {
            template_strings(t, "", true, &mut strings);
        }
        for (at, whole, text) in strings {
            let pieces = template_pieces(text).map_err(|p| bad(&s.id, text, p))?;
            let exact = whole && matches!(pieces.as_slice(), [Piece::Ref { .. }]);
            for piece in pieces {
                let Piece::Ref { step, path } = piece else {
                    continue;
                };
                if step == "vigil" {
                    if !matches!(s.kind, StepKind::Http { .. }) {
                        return Err(bad(
                            &s.id,
                            text,
                            format!(
                                "template {text:?}: the {{{{vigil.*}}}} context exists only in \
                                 http bodies"
                            ),
                        ));
                    }
                    if !VIGIL_FIELDS.contains(&path) {
                        return Err(bad(
                            &s.id,
                            text,
                            format!(
                                "template {text:?}: {{{{vigil.{path}}}}} is not one of {}",
                                VIGIL_FIELDS
                                    .map(|f| format!("{{{{vigil.{f}}}}}"))
                                    .join(", ")
                            ),
                        ));
                    }
                    continue;
                }
                if !s.after.iter().any(|a| a == step) {
                    let why = if ids.contains(step) {
                        format!("{step:?} is not a predecessor of this step (add it to `after`)")
                    } else {
                        format!("there is no step {step:?}")
                    };
                    return Err(bad(&s.id, text, format!("template {text:?}: {why}")));
                }
                for secret in secrets.get(step).into_iter().flatten() {
                    if within(path, secret) || !exact {
                        if within(path, secret) || within(secret, path) {
                            derived.push(at.clone());
                        }
                    } else if within(secret, path) {
                        let below = if path.is_empty() {
                            secret.as_str()
                        } else {
                            &secret[path.len() + 1..]
                        };
                        derived.push(join_path(&at, below));
                    }
                }
            }
        }
        match &s.kind {
            StepKind::Compute { .. } => s.secret_fields.extend(derived),
            StepKind::Mutate { .. } => s.state_secrets.extend(derived),
            StepKind::FanIn => {
                let inherited: Vec<String> = s
                    .after
                    .iter()
                    .flat_map(|p| {
                        secrets
                            .get(p)
                            .into_iter()
                            .flatten()
                            .map(move |f| join_path(p, f))
                    })
                    .collect();
                s.secret_fields.extend(inherited);
            }
            // An http body goes to the service it is for; what the step
            // outputs is the response (its own `secret_fields`).
            _ => {}
        }
        dedup(&mut s.secret_fields);
        dedup(&mut s.state_secrets);
        secrets.insert(s.id.clone(), s.secret_fields.clone());
    }
    Ok(())
}

/// Drop repeats and paths under another secret path (already hidden).
fn dedup(paths: &mut Vec<String>) {
    let all = paths.clone();
    let mut seen = HashSet::new();
    paths.retain(|p| !all.iter().any(|q| q != p && within(p, q)) && seen.insert(p.clone()));
}

/// The value at a dotted path (`a.b.c`) in a JSON object; `""` is `v`.
pub fn lookup_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    path.split('.').try_fold(v, |cur, key| cur.get(key))
}

/// The redacted copy of `raw`: every secret path replaced by [`REDACTED`].
pub fn redact(raw: &Value, secret_fields: &[String]) -> Value {
    let mut out = raw.clone();
    for path in secret_fields {
        if path.is_empty() {
            return Value::String(REDACTED.into());
        }
        let mut cur = &mut out;
        let mut parts = path.split('.').peekable();
        while let Some(key) = parts.next() {
            let Some(next) = cur.get_mut(key) else { break };
            if parts.peek().is_none() {
                *next = Value::String(REDACTED.into());
                break;
            }
            cur = next;
        }
    }
    out
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
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Workflow, WorkflowError> {
        Workflow::parse(Path::new("wf.toml"), text)
    }

    #[test]
    fn orders_steps_topologically_and_inherits_secrets() {
        let wf = parse(
            r#"
            name = "w"
            [[steps]]
            id = "merge"
            kind = "fan_in"
            after = ["a", "b"]
            [[steps]]
            id = "a"
            kind = "compute"
            output = { token = "t", user = "u" }
            secret_fields = ["token"]
            [[steps]]
            id = "b"
            kind = "sleep"
            ms = 1
            "#,
        )
        .expect("parses");
        let order: Vec<_> = wf.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(order, ["a", "b", "merge"]);
        assert_eq!(
            wf.step("merge").map(|s| s.secret_fields.clone()),
            Some(vec!["a.token".into()])
        );
    }

    #[test]
    fn errors_name_the_file_step_and_field() {
        let cases = [
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"teleport\"",
                "steps[0] (a).kind",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"emit\"",
                "steps[0] (a).chunks",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"sleep\"\nms = 1\nchunks = 2",
                "steps[0] (a).chunks",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"sleep\"\nms = 1\nafter = [\"zz\"]",
                "steps[0] (a).after",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"fan_in\"",
                "steps[0] (a).after",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"http\"\nurl = \"ftp://x\"",
                "steps[0] (a).url",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"compute\"\noutput = {x = 1}\nsecret_fields = [\"y\"]",
                "secret_fields",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"sleep\"\nms = 1\nafter = [\"b\"]\n[[steps]]\nid = \"b\"\nkind = \"sleep\"\nms = 1\nafter = [\"a\"]",
                "dependency cycle",
            ),
            (
                "name = \"w\"\nbogus = 1\n[[steps]]\nid = \"a\"\nkind = \"fail\"",
                "bogus",
            ),
            (
                "name = \"W W\"\n[[steps]]\nid = \"a\"\nkind = \"fail\"",
                "name",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"fail\"\ntimeout_ms = 0",
                "steps[0] (a).timeout_ms",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"emit\"\nchunks = 2\ninterval_ms = 100\ntimeout_ms = 100",
                "steps[0] (a).timeout_ms: 100 ms is a no-progress timeout between chunks",
            ),
            (
                "name = \"w\"\ndeadline_ms = 0\n[[steps]]\nid = \"a\"\nkind = \"fail\"",
                "deadline_ms: must be at least 1 ms",
            ),
            (
                "name = \"w\"\ndeadline_ms = -5\n[[steps]]\nid = \"a\"\nkind = \"fail\"",
                "deadline_ms",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.starts_with("wf.toml"), "{err}");
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn secrets_follow_templates_through_every_step_kind() {
        let wf = parse(
            r#"
            name = "w"
            [[steps]]
            id = "creds"
            kind = "compute"
            output = { api_key = "sk-1", nested = { token = "t", user = "u" }, region = "eu" }
            secret_fields = ["api_key", "nested.token"]
            [[steps]]
            id = "call"
            kind = "compute"
            after = ["creds"]
            output = { header = "Bearer {{creds.api_key}}", copy = "{{creds.api_key}}", who = "{{creds.nested}}", list = ["{{creds.nested.token}}"], region = "{{creds.region}}", all = "x {{creds.nested}}" }
            [[steps]]
            id = "again"
            kind = "compute"
            after = ["call"]
            output = { h = "{{call.header}}", u = "{{call.who.user}}", t = "{{call.who.token}}" }
            [[steps]]
            id = "merge"
            kind = "fan_in"
            after = ["again"]
            [[steps]]
            id = "save"
            kind = "mutate"
            after = ["merge"]
            set = { auth = "{{merge.again.h}}", plain = "{{merge.again.u}}", mine = { pin = "1234", note = "n" } }
            secret_fields = ["mine.pin"]
            [[steps]]
            id = "whole"
            kind = "compute"
            after = ["creds"]
            output = "{{creds.api_key}}"
            "#,
        )
        .expect("parses");
        let secrets = |id: &str| {
            let mut v = wf.step(id).map(|s| s.secret_fields.clone()).unwrap();
            v.sort();
            v
        };
        assert_eq!(
            secrets("call"),
            ["all", "copy", "header", "list", "who.token"]
        );
        assert_eq!(secrets("again"), ["h", "t"]);
        assert_eq!(secrets("merge"), ["again.h", "again.t"]);
        assert_eq!(secrets("whole"), [""]);
        let save = wf.step("save").unwrap();
        assert!(save.secret_fields.is_empty());
        assert_eq!(
            save.state_secrets,
            ["mine.pin", "auth"],
            "declared, then derived"
        );
    }

    #[test]
    fn every_step_has_a_timeout_explicit_or_by_kind() {
        let wf = parse(
            r#"
            name = "w"
            deadline_ms = 9000
            [[steps]]
            id = "call"
            kind = "http"
            url = "http://127.0.0.1:9/x"
            [[steps]]
            id = "call_slow"
            kind = "http"
            url = "http://127.0.0.1:9/x"
            timeout_ms = 120000
            [[steps]]
            id = "nap"
            kind = "sleep"
            ms = 2000
            [[steps]]
            id = "stream"
            kind = "emit"
            chunks = 3
            interval_ms = 250
            [[steps]]
            id = "stream_tight"
            kind = "emit"
            chunks = 3
            interval_ms = 250
            timeout_ms = 251
            [[steps]]
            id = "calc"
            kind = "compute"
            output = { x = 1 }
            "#,
        )
        .expect("parses");
        assert_eq!(wf.deadline_ms, Some(9000));
        let d = StepTimeouts {
            http: Duration::from_millis(700),
            slack: Duration::from_millis(50),
        };
        let t = |id: &str| wf.step(id).map(|s| s.timeout(&d).as_millis());
        assert_eq!(t("call"), Some(700), "http: the http default");
        assert_eq!(t("call_slow"), Some(120_000), "explicit wins");
        assert_eq!(t("nap"), Some(2050), "sleep: its own duration plus slack");
        assert_eq!(t("stream"), Some(300), "emit: between chunks, plus slack");
        assert_eq!(t("stream_tight"), Some(251));
        assert_eq!(t("calc"), Some(50), "instant kinds: the slack");
        assert_eq!(
            StepTimeouts::default(),
            StepTimeouts {
                http: DEFAULT_HTTP_TIMEOUT,
                slack: DEFAULT_STEP_SLACK
            }
        );
    }

    #[test]
    fn templates_fill_whole_values_and_interpolate_inside_text() {
        let inputs = json!({"creds": {"api_key": "sk-1", "n": 3, "o": {"a": [1]}}})
            .as_object()
            .cloned()
            .unwrap();
        let t = json!({
            "whole": "{{creds.n}}",
            "spaced": "{{ creds.n }}",
            "header": "Bearer {{creds.api_key}}",
            "mixed": "{{creds.n}}/{{creds.o}}/{{creds.gone}}",
            "plain": "no braces }} here",
            "list": ["k={{creds.api_key}}"]
        });
        assert_eq!(
            fill_template(&t, &inputs).unwrap(),
            json!({
                "whole": 3,
                "spaced": 3,
                "header": "Bearer sk-1",
                "mixed": "3/{\"a\":[1]}/null",
                "plain": "no braces }} here",
                "list": ["k=sk-1"]
            })
        );
        assert!(
            fill_template(&json!("{{nobody.x}}"), &inputs)
                .unwrap_err()
                .contains("not a predecessor")
        );
    }

    #[test]
    fn bad_templates_are_refused_naming_file_line_and_field() {
        let head = "name = \"w\"\n[[steps]]\nid = \"a\"\nkind = \"compute\"\noutput = { k = \"v\" }\n\
                    [[steps]]\nid = \"lone\"\nkind = \"sleep\"\nms = 1\n";
        // The bad string is on line 15 of each file.
        let cases = [
            (
                "compute",
                "output",
                "after = [\"a\"]\noutput = { x = \"ok\",\n  h = \"Bearer {{a.k\" }",
                "never closed",
            ),
            (
                "compute",
                "output",
                "after = [\"a\"]\noutput = { x = \"ok\",\n  h = \"{{}}\" }",
                "not a reference",
            ),
            (
                "compute",
                "output",
                "after = [\"a\"]\noutput = { x = \"ok\",\n  h = \"{{ghost.k}}\" }",
                "no step \"ghost\"",
            ),
            (
                "compute",
                "output",
                "after = [\"a\"]\noutput = { x = \"ok\",\n  h = \"{{lone.slept_ms}}\" }",
                "not a predecessor",
            ),
            (
                "compute",
                "output",
                "after = [\"a\"]\noutput = { x = \"ok\",\n  h = \"{{vigil.run}}\" }",
                "only in http",
            ),
            (
                "mutate",
                "set",
                "after = [\"a\"]\nset = { x = \"ok\",\n  h = \"{{lone}}\" }",
                "not a predecessor",
            ),
            (
                "http",
                "body",
                "url = \"http://x/\"\nbody = { x = \"ok\",\n  h = \"{{vigil.nope}}\" }",
                "not one of",
            ),
        ];
        for (kind, field, params, needle) in cases {
            let text = format!("{head}[[steps]]\nid = \"b\"\nkind = \"{kind}\"\n{params}\n");
            let err = parse(&text).expect_err(&text).to_string();
            assert!(
                err.starts_with(&format!("wf.toml:15: steps[2] (b).{field}: template")),
                "{err}"
            );
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        // A sub-table: the line of the offending string inside it.
        let text = format!(
            "{head}[[steps]]\nid = \"b\"\nkind = \"compute\"\nafter = [\"a\"]\n\
             [steps.output]\nx = 1\ny = \"{{{{a.k\"\n"
        );
        let err = parse(&text).expect_err(&text).to_string();
        assert!(err.starts_with("wf.toml:16: steps[2] (b).output"), "{err}");
        // Mutate secret paths must be fields of `set`.
        let err = parse(&format!(
            "{head}[[steps]]\nid = \"b\"\nkind = \"mutate\"\nset = {{ x = 1 }}\n\
             secret_fields = [\"y\"]\n"
        ))
        .expect_err("y is not in set")
        .to_string();
        assert!(err.contains("steps[2] (b).secret_fields"), "{err}");
    }

    #[test]
    fn redaction_replaces_nested_paths_only_in_the_copy() {
        let raw = json!({"a": {"token": "s3cret", "user": "u"}, "k": "v"});
        let red = redact(&raw, &["a.token".into(), "missing.path".into()]);
        assert_eq!(
            red,
            json!({"a": {"token": REDACTED, "user": "u"}, "k": "v"})
        );
        assert_eq!(raw["a"]["token"], "s3cret");
    }
}
