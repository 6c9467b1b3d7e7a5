//! Unit tests of workflow parsing: every refusal names its file, line,
//! step and field; templates and secrecy propagate as documented.

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
