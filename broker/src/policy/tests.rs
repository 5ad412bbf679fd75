use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;
use crate::domain::approval::Requirement;

pub(super) fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

pub(super) fn example() -> PolicyEngine {
    PolicyEngine::load(&example_dir()).unwrap()
}

pub(super) fn call<'a>(tool: &'a str, args: &'a serde_json::Value) -> ToolCall<'a> {
    ToolCall {
        agent: "agent-1",
        user: Some("alice"),
        tenant: None,
        roles: vec!["agent"],
        tool,
        args,
        session: SessionFacts {
            id: "ses_1",
            purpose: "test",
            calls: 0,
            max_calls: 10,
            user: "alice",
            collections: vec![],
            labels: vec![],
        },
        approval: None,
    }
}

/// A policy dir with the example schema and entities and the given policy files.
pub(super) fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [SCHEMA_FILE, ENTITIES_FILE] {
        std::fs::copy(example_dir().join(f), dir.path().join(f)).unwrap();
    }
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn every_example_fixture_passes() {
    let engine = example();
    let results = fixtures::run_dir(&engine, &example_dir().join(fixtures::FIXTURES_DIR)).unwrap();
    assert!(
        results.len() >= 15,
        "expected the example fixtures, found {}",
        results.len()
    );
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_catalogue_is_the_schema() {
    let engine = example();
    let mut tools: Vec<&str> = engine.tool_names().collect();
    tools.sort_unstable();
    assert_eq!(
        tools,
        [
            "calendar.create_event",
            "email.send",
            "file.read",
            "payments.refund",
            "shell.exec",
            "web.search"
        ]
    );
    assert_eq!(engine.version().len(), 64);
}

#[test]
fn reasons_carry_the_policy_annotation() {
    let args = json!({"payment_id": "p", "amount": -5, "currency": "EUR"});
    let v = example().decide(&call("payments.refund", &args));
    assert_eq!(v.outcome, Outcome::Deny);
    let r = v.reasons.first().unwrap();
    assert_eq!(r.code, ReasonCode::PolicyDeny);
    assert_eq!(r.policy_id.as_deref(), Some("refunds-positive-amount"));
    assert_eq!(r.message, "a refund amount must be positive");
}

#[test]
fn an_approval_forbid_makes_the_call_pending_with_its_requirements() {
    let args = json!({"command": "id"});
    let mut c = call("shell.exec", &args);
    let v = example().decide(&c);
    assert_eq!(v.outcome, Outcome::PendingApproval, "{v:?}");
    assert_eq!(
        v.requirements,
        [Requirement {
            policy_id: "shell-needs-two-approvers".into(),
            group: "platform-oncall".into(),
            quorum: 2
        }]
    );
    assert_eq!(
        v.reasons.first().unwrap().code,
        ReasonCode::ApprovalRequired
    );
    // With the approval in context the same call is allowed by the permit that requires one.
    c.approval = Some(ApprovalFacts {
        id: "apr_1",
        approvers: vec!["a", "b"],
    });
    let v = example().decide(&c);
    assert_eq!(v.outcome, Outcome::Allow, "{v:?}");
    assert_eq!(v.policy_ids(), ["agents-run-approved-shell-commands"]);
}

#[test]
fn a_deny_that_an_approval_cannot_lift_stays_a_deny() {
    // Over 100000 a hard forbid applies beside the approval one: no person can make it an ALLOW.
    let args = json!({"payment_id": "p", "amount": 500_000, "currency": "EUR"});
    let v = example().decide(&call("payments.refund", &args));
    assert_eq!(v.outcome, Outcome::Deny, "{v:?}");
    // An agent acting for nobody has no permit for refunds: approval would not help either.
    let small = json!({"payment_id": "p", "amount": 5000, "currency": "EUR"});
    let mut c = call("payments.refund", &small);
    c.user = None;
    assert_eq!(example().decide(&c).outcome, Outcome::Deny);
}

#[test]
fn approval_annotations_are_checked_at_load() {
    for (text, problem) in [
        ("@id(\"p\")\n@approval(\"g\")\npermit (principal, action, resource);\n", "only a `forbid`"),
        ("@id(\"p\")\n@approval(\"g\")\n@quorum(\"0\")\nforbid (principal, action, resource) unless { context has approval };\n", "@quorum"),
        ("@id(\"p\")\n@quorum(\"2\")\nforbid (principal, action, resource);\n", "need `@approval"),
        ("@id(\"p\")\n@approval(\"g\")\n@approval_expires(\"soon\")\nforbid (principal, action, resource) unless { context has approval };\n", "approval_expires"),
    ] {
        let dir = dir_with(&[("p.cedar", text)]);
        let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(problem), "{problem}: {err}");
    }
}

#[test]
fn invalid_arguments_name_the_field() {
    let args = json!({"payment_id": "p", "amount": 1, "currency": "EUR", "note": "x"});
    let v = example().decide(&call("payments.refund", &args));
    assert_eq!(v.outcome, Outcome::Deny);
    assert_eq!(
        v.reasons.first().unwrap().code,
        ReasonCode::InvalidArguments
    );
    assert!(
        v.reasons.first().unwrap().message.contains("args.note"),
        "{v:?}"
    );
}

#[test]
fn a_version_changes_with_any_policy_text() {
    let a = dir_with(&[(
        "p.cedar",
        "@id(\"x\")\npermit (principal, action in Action::\"call_tool\", resource);\n",
    )]);
    let b = dir_with(&[(
        "p.cedar",
        "@id(\"x\")\npermit (principal, action in Action::\"call_tool\", resource);\n\n",
    )]);
    let va = PolicyEngine::load(a.path()).unwrap().version().to_owned();
    let vb = PolicyEngine::load(b.path()).unwrap().version().to_owned();
    assert_ne!(va, vb);
}

#[test]
fn an_invalid_policy_stops_the_load_with_file_and_line() {
    let dir = dir_with(&[(
        "bad.cedar",
        "// a comment\n\n@id(\"typo\")\npermit (principal, action == Action::\"payments.refund\", resource)\nwhen { context.args.amount > \"1000\" };\n",
    )]);
    let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.cedar:"), "{err}");
    assert!(err.contains("typo"), "{err}");
    let Error::Source { line, .. } = PolicyEngine::load(dir.path()).unwrap_err() else {
        panic!("not a source error")
    };
    assert!((3..=5).contains(&line), "line {line}: {err}");
}

#[test]
fn a_syntax_error_names_its_line() {
    let dir = dir_with(&[("syntax.cedar", "@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"b\")\npermit (principal action, resource);\n")]);
    let Error::Source { path, line, .. } = PolicyEngine::load(dir.path()).unwrap_err() else {
        panic!("not a source error")
    };
    assert!(path.ends_with("syntax.cedar"));
    assert_eq!(line, 5);
}

#[test]
fn unknown_attributes_and_unknown_tools_in_policies_are_refused() {
    let dir = dir_with(&[(
        "p.cedar",
        "@id(\"a\")\npermit (principal, action == Action::\"db.drop\", resource);\n",
    )]);
    assert!(PolicyEngine::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("p.cedar:"));
    let dir = dir_with(&[("p.cedar", "@id(\"a\")\npermit (principal, action == Action::\"web.search\", resource) when { context.args.nope == 1 };\n")]);
    assert!(PolicyEngine::load(dir.path()).is_err());
}

#[test]
fn policies_need_unique_ids() {
    let dir = dir_with(&[("p.cedar", "permit (principal, action, resource);\n")]);
    assert!(PolicyEngine::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("@id"));
    let dir = dir_with(&[
        (
            "a.cedar",
            "@id(\"same\")\npermit (principal, action, resource);\n",
        ),
        (
            "b.cedar",
            "@id(\"same\")\nforbid (principal, action, resource);\n",
        ),
    ]);
    let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("already used"), "{err}");
}

#[test]
fn no_policies_means_no_start() {
    let dir = dir_with(&[]);
    assert!(matches!(
        PolicyEngine::load(dir.path()),
        Err(Error::NoPolicies { .. })
    ));
}

#[test]
fn a_tool_without_an_entity_is_refused() {
    let dir = dir_with(&[(
        "p.cedar",
        "@id(\"a\")\npermit (principal, action, resource);\n",
    )]);
    std::fs::write(dir.path().join(ENTITIES_FILE), "[]").unwrap();
    let err = PolicyEngine::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("has no `Tool::"), "{err}");
}

#[test]
fn a_forbid_that_errors_fails_closed() {
    // Overflow is a runtime error Cedar answers by skipping the policy; a skipped forbid must not let an ALLOW through.
    let dir = dir_with(&[(
        "p.cedar",
        "@id(\"allow\")\npermit (principal, action in Action::\"call_tool\", resource);\n\
         @id(\"overflowing-forbid\")\nforbid (principal, action == Action::\"payments.refund\", resource) when { context.args.amount * 1000000000000 > 5 };\n",
    )]);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let args = json!({"payment_id": "p", "amount": 9223372036854775807_i64, "currency": "EUR"});
    let v = engine.decide(&call("payments.refund", &args));
    assert_eq!(v.outcome, Outcome::Deny, "{v:?}");
    assert_eq!(v.reasons.first().unwrap().code, ReasonCode::PolicyError);
}

#[test]
fn principal_ids_are_data_not_cedar_syntax() {
    // An agent id that looks like Cedar source must not become another entity.
    let args = json!({"query": "x"});
    let mut c = call("web.search", &args);
    c.agent = "x\" in Role::\"admin";
    let v = example().decide(&c);
    assert_eq!(
        v.outcome,
        Outcome::Allow,
        "still an agent with only its own roles: {v:?}"
    );
    c.roles = vec![];
    assert_eq!(example().decide(&c).outcome, Outcome::Deny);
}

/// The entities built for one caller are reused for that caller only: one engine, the same agent with
/// and without its role, in turns.
#[test]
fn request_entities_are_reused_per_caller_only() {
    let engine = example();
    let args = json!({"query": "x"});
    let with_role = call("web.search", &args);
    let mut without_role = call("web.search", &args);
    without_role.roles = vec![];
    for _ in 0..2 {
        assert_eq!(engine.decide(&with_role).outcome, Outcome::Allow);
        assert_eq!(engine.decide(&without_role).outcome, Outcome::Deny);
    }
    let mut other_user = call("web.search", &args);
    other_user.user = Some("bob");
    assert_eq!(engine.decide(&other_user).outcome, Outcome::Allow);
    assert_eq!(engine.caller_entities.len(), 3, "one entry per caller");
}

#[test]
fn extension_typed_arguments_are_typed_too() {
    let dir = dir_with(&[(
        "p.cedar",
        "@id(\"allow\")\npermit (principal, action in Action::\"call_tool\", resource);\n",
    )]);
    let schema = std::fs::read_to_string(dir.path().join(SCHEMA_FILE)).unwrap();
    std::fs::write(
        dir.path().join(SCHEMA_FILE),
        schema.replace(
            "\"max_results\"?: Long",
            "\"max_results\"?: Long, \"since\"?: datetime",
        ),
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let ok = json!({"query": "q", "since": "2026-01-01"});
    assert_eq!(
        engine.decide(&call("web.search", &ok)).outcome,
        Outcome::Allow
    );
    // Not a string: a type error naming the field; a string that is no datetime: refused, never allowed.
    let wrong = json!({"query": "q", "since": 5});
    let v = engine.decide(&call("web.search", &wrong));
    assert!(
        v.outcome == Outcome::Deny && v.reasons[0].message.contains("args.since"),
        "{v:?}"
    );
    let garbage = json!({"query": "q", "since": "yesterday-ish"});
    assert_eq!(
        engine.decide(&call("web.search", &garbage)).outcome,
        Outcome::Deny
    );
}

#[test]
fn duplicate_document_ids_in_a_batch_are_refused_not_guessed() {
    let engine = example();
    let caller = Caller {
        agent: "rag",
        user: Some("alice"),
        tenant: Some("acme"),
        roles: vec!["agent"],
    };
    let session = SessionFacts {
        id: "ses_1",
        purpose: "p",
        calls: 0,
        max_calls: 1,
        user: "alice",
        collections: vec!["kb"],
        labels: vec![],
    };
    let ok = json!({"tenant": "acme", "collection": "kb", "classification": 0, "personal": false, "source": "s", "labels": []});
    let other = json!({"tenant": "globex", "collection": "kb", "classification": 0, "personal": false, "source": "s", "labels": []});
    let v = engine.decide_retrieval(
        &caller,
        &session,
        &[("a", &ok), ("dup", &ok), ("dup", &other), ("b", &ok)],
    );
    let outcomes: Vec<Outcome> = v.iter().map(|v| v.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Allow, Outcome::Deny, Outcome::Deny, Outcome::Allow]
    );
    assert!(
        v[1].reasons[0].message.contains("more than once"),
        "{:?}",
        v[1]
    );
}

#[test]
fn requests_are_checked_against_the_schema_unless_every_context_conforms() {
    // The example schema declares exactly the context the engine builds: requests are not re-checked.
    let engine = example();
    assert!(engine.tools.values().all(|t| !t.check_context));

    let allow_all = [(
        "p.cedar",
        "@id(\"allow\")\npermit (principal, action in Action::\"call_tool\", resource);\n",
    )];
    let q = json!({"query": "q"});
    // A session the engine does not build (an extra required field), or an approval every call must
    // carry: such requests do not match the schema, and a permit-all still gives DENY, not ALLOW.
    for (from, to) in [
        (
            "\"labels\": Set<String>,       // what the session has read",
            "\"labels\": Set<String>, \"region\": String, // what the session has read",
        ),
        ("\"approval\"?: Approval,", "\"approval\": Approval,"),
    ] {
        let dir = dir_with(&allow_all);
        let schema = std::fs::read_to_string(dir.path().join(SCHEMA_FILE)).unwrap();
        assert!(schema.contains(from), "{from}");
        std::fs::write(dir.path().join(SCHEMA_FILE), schema.replace(from, to)).unwrap();
        let engine = PolicyEngine::load(dir.path()).unwrap();
        assert!(engine.tools["web.search"].check_context, "{to}");
        let v = engine.decide(&call("web.search", &q));
        assert_eq!(v.outcome, Outcome::Deny, "{to}: {v:?}");
        assert_eq!(v.reasons[0].code, ReasonCode::PolicyError, "{to}: {v:?}");
        assert!(
            v.reasons[0].message.contains("does not match the schema"),
            "{v:?}"
        );
    }
    // The same permit-all over the example schema allows.
    let dir = dir_with(&allow_all);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    assert_eq!(
        engine.decide(&call("web.search", &q)).outcome,
        Outcome::Allow
    );
}
