//! Templates in workflow definitions (`{{path}}` in compute outputs,
//! mutate sets and http bodies): parsed, filled from a step's inputs, and
//! followed to work out which paths of a run's state are secret, so
//! secrecy travels with a value through every step that copies it.

use super::*;

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
pub(super) fn join_path(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

/// `inner` is `outer` or lies under it.
pub(super) fn within(inner: &str, outer: &str) -> bool {
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|r| r.starts_with('.'))
}

/// Every string in `v` with the path redaction can reach it by (the nearest
/// enclosing object field: redaction does not index into arrays) and
/// whether the string is the whole value at that path.
pub(super) fn template_strings<'a>(
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
pub(super) fn derive_secrets(
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
pub(super) fn dedup(paths: &mut Vec<String>) {
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
