//! The example policies (`policies/`) as users copy them: every rule has a fixture, and the bypasses an
//! adversarial review found against them stay closed.

use std::collections::BTreeSet;

use serde_json::json;

use super::fixtures::{self, Fixture};
use super::tests::{call, example, example_dir};
use super::*;

#[test]
fn every_example_policy_decides_some_fixture() {
    let engine = example();
    let dir = example_dir().join(fixtures::FIXTURES_DIR);
    let mut named = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let list: Vec<Fixture> = serde_json::from_str(&text).unwrap();
        named.extend(list.into_iter().flat_map(|f| f.expect.policies));
    }
    let missing: Vec<String> = engine
        .policies
        .policies()
        .map(|p| p.id().to_string())
        .filter(|id| !named.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "policies without a fixture: {missing:?}"
    );
}

#[test]
fn recipients_in_cc_bcc_or_a_list_in_to_need_the_security_approver() {
    let engine = example();
    let mail = |extra: serde_json::Value| {
        let mut args = json!({"to": "bob@example.com", "subject": "s", "body": "b"});
        if let (Some(a), Some(e)) = (args.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        args
    };
    let inside = mail(json!({"cc": ["carol@example.com"], "bcc": ["alice@example.com"]}));
    assert_eq!(
        engine.decide(&call("email.send", &inside)).outcome,
        Outcome::Allow
    );
    for args in [
        mail(json!({"cc": ["mallory@evil.test"]})),
        mail(json!({"bcc": ["mallory@evil.test"]})),
        mail(json!({"to": "mallory@evil.test,bob@example.com"})),
        mail(json!({"to": "mallory@evil.test bob@example.com"})),
        mail(json!({"to": "mallory@evil.test@example.com"})),
    ] {
        let v = engine.decide(&call("email.send", &args));
        assert_eq!(v.outcome, Outcome::PendingApproval, "{args}: {v:?}");
        assert_eq!(
            v.policy_ids(),
            ["email-outside-company-needs-approval"],
            "{args}"
        );
    }
}

#[test]
fn file_reads_outside_the_roots_are_denied_however_written() {
    let engine = example();
    for path in [
        "/proc/self/root/etc/shadow",
        "/proc/self/environ",
        "/srv/../proc/self/environ",
        "/srv/%2e%2e/etc/shadow",
        "/srv/app\\..\\..\\etc\\shadow",
        "/srv-other/x",
    ] {
        let args = json!({ "path": path });
        let v = engine.decide(&call("file.read", &args));
        assert_eq!(v.outcome, Outcome::Deny, "{path}: {v:?}");
    }
    let args = json!({"path": "/srv/app/src/main.rs"});
    assert_eq!(
        engine.decide(&call("file.read", &args)).outcome,
        Outcome::Allow
    );
}

#[test]
fn a_fixture_states_a_tool_call_or_a_document_not_both() {
    let dir = tempfile::tempdir().unwrap();
    let both = json!([{
        "name": "both", "agent": "a", "tool": "web.search", "args": {"query": "q"},
        "document": {}, "expect": {"outcome": "ALLOW"}
    }, {
        "name": "neither", "agent": "a", "expect": {"outcome": "DENY"}
    }]);
    std::fs::write(dir.path().join("f.json"), both.to_string()).unwrap();
    let results = fixtures::run_dir(&example(), dir.path()).unwrap();
    assert_eq!(results.len(), 2);
    for r in &results {
        assert!(
            r.failure.as_deref().is_some_and(|f| f.contains("either")),
            "{r:?}"
        );
    }
}
