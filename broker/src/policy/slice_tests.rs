//! Differential test of policy slicing: on random policy sets and random calls, the sliced engine decides
//! exactly as the whole set does: same outcome, same reasons, same deciding policies, same errors.

use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use super::slice::Answer;
use super::tests::dir_with;
use super::*;

const TOOLS: [&str; 4] = ["web.search", "file.read", "email.send", "shell.exec"];
const AGENTS: [&str; 3] = ["a0", "a1", "a2"];

fn principal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("principal".to_owned()),
        (0..AGENTS.len()).prop_map(|i| format!("principal == Agent::\"{}\"", AGENTS[i])),
        Just("principal in Role::\"agent\"".to_owned()),
        Just("principal in Role::\"admin\"".to_owned()),
        Just("principal is Agent".to_owned()),
    ]
}

fn action_and_resource() -> impl Strategy<Value = String> {
    let tool = 0..TOOLS.len();
    prop_oneof![
        Just("action, resource".to_owned()),
        Just("action in Action::\"call_tool\", resource".to_owned()),
        tool.clone()
            .prop_map(|t| format!("action == Action::\"{}\", resource", TOOLS[t])),
        (tool.clone(), tool.clone()).prop_map(|(a, b)| format!(
            "action in [Action::\"{}\", Action::\"{}\"], resource",
            TOOLS[a], TOOLS[b]
        )),
        (tool.clone(), tool.clone()).prop_map(|(a, r)| format!(
            "action in Action::\"call_tool\", resource == Tool::\"{}\"",
            TOOLS[a.min(r)]
        )),
        (tool.clone(), tool).prop_map(|(a, r)| format!(
            "action == Action::\"{}\", resource == Tool::\"{}\"",
            TOOLS[a], TOOLS[r]
        )),
    ]
}

/// Conditions valid for every action (tools and `retrieve` share `context.session`); one of them fails
/// to evaluate (overflow) once a session has made two calls, so errors are compared too.
fn condition() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(""),
        Just(" when { context.session.calls > 2 }"),
        Just(" when { principal has tenant && principal.tenant == \"t1\" }"),
        Just(" when { context.session.labels.contains(\"untrusted\") }"),
        Just(" unless { context.session.purpose == \"audit\" }"),
        Just(" when { context.session.calls * 4611686018427387904 > 0 }"),
    ]
}

fn policy() -> impl Strategy<Value = (bool, String, String, &'static str)> {
    (
        any::<bool>(),
        principal(),
        action_and_resource(),
        condition(),
    )
}

fn call_for<'a>(
    tool: &'a str,
    agent: &'a str,
    tenant: Option<&'a str>,
    calls: u32,
    labels: Vec<&'a str>,
    args: &'a serde_json::Value,
) -> ToolCall<'a> {
    ToolCall {
        agent,
        user: Some("alice"),
        tenant,
        roles: vec!["agent"],
        tool,
        args,
        session: SessionFacts {
            id: "ses_1",
            purpose: if calls.is_multiple_of(3) {
                "audit"
            } else {
                "work"
            },
            calls: calls.into(),
            max_calls: 10,
            user: "alice",
            collections: vec![],
            labels,
        },
        approval: None,
    }
}

fn args_for(tool: &str) -> serde_json::Value {
    match tool {
        "web.search" => json!({"query": "q"}),
        "file.read" => json!({"path": "/tmp/x"}),
        "email.send" => json!({"to": "a@example.com", "subject": "s", "body": "b"}),
        _ => json!({"command": "ls"}),
    }
}

#[test]
fn sliced_decisions_equal_whole_set_decisions() {
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let set = prop::collection::vec(policy(), 1..30);
    let calls = prop::collection::vec(
        (
            0..TOOLS.len(),
            0..AGENTS.len() + 1,
            any::<bool>(),
            0u32..4,
            any::<bool>(),
        ),
        20,
    );
    let compared = std::cell::Cell::new(0usize);
    let outcomes = std::cell::RefCell::new(std::collections::HashSet::new());
    runner
        .run(&(set, calls), |(policies, calls)| {
            let mut text = String::new();
            for (i, (permit, p, ar, when)) in policies.iter().enumerate() {
                let effect = if *permit { "permit" } else { "forbid" };
                let _ = writeln!(text, "@id(\"p{i}\")\n{effect} ({p}, {ar}){when};");
            }
            let dir = dir_with(&[("random.cedar", &text)]);
            let engine = PolicyEngine::load(dir.path()).unwrap();
            let calls: Vec<_> = calls
                .into_iter()
                .map(|(tool, agent, tenant, calls, untrusted)| {
                    let tool = TOOLS[tool];
                    // One agent that no policy names, besides the named ones.
                    let agent = AGENTS.get(agent).copied().unwrap_or("nobody");
                    (tool, agent, tenant, calls, untrusted, args_for(tool))
                })
                .collect();
            let decide_all = |engine: &PolicyEngine| -> Vec<Verdict> {
                calls
                    .iter()
                    .map(|(tool, agent, tenant, n, untrusted, args)| {
                        let labels = if *untrusted {
                            vec!["untrusted"]
                        } else {
                            vec![]
                        };
                        engine.decide(&call_for(
                            tool,
                            agent,
                            tenant.then_some("t1"),
                            *n,
                            labels,
                            args,
                        ))
                    })
                    .collect()
            };
            let sliced = decide_all(&engine);
            let whole = decide_all(&engine.without_slices());
            for (i, (a, b)) in sliced.iter().zip(&whole).enumerate() {
                prop_assert_eq!(a, b, "policies:\n{}\ncall {}: {:?}", text, i, calls[i]);
                outcomes.borrow_mut().insert(format!("{:?}", a.outcome));
            }
            compared.set(compared.get() + sliced.len());
            Ok(())
        })
        .unwrap();
    assert_eq!(compared.get(), 4000);
    // The generator reaches both answers, or the comparison would prove little.
    let outcomes = outcomes.into_inner();
    assert!(outcomes.len() >= 2, "{outcomes:?}");
}

#[test]
fn combining_answers_is_evaluating_one_set() {
    let id = |s: &str| PolicyId::new(s);
    let allow = |ids: &[&str]| Answer {
        allow: true,
        deciding: ids.iter().map(|s| id(s)).collect(),
        errored: vec![],
    };
    let deny = |ids: &[&str]| Answer {
        allow: false,
        deciding: ids.iter().map(|s| id(s)).collect(),
        errored: vec![],
    };
    // A forbid anywhere wins, naming every satisfied forbid.
    assert_eq!(allow(&["p1"]).and(deny(&["f1"])), deny(&["f1"]));
    assert_eq!(deny(&["f2"]).and(deny(&["f1"])), deny(&["f1", "f2"]));
    // Permits add up; nothing satisfied is a DENY without reasons.
    assert_eq!(allow(&["p2"]).and(allow(&["p1"])), allow(&["p1", "p2"]));
    assert_eq!(deny(&[]).and(allow(&["p1"])), allow(&["p1"]));
    assert_eq!(deny(&[]).and(deny(&[])), deny(&[]));
    // Errors are kept from both sides.
    let errored = Answer {
        errored: vec![id("e1")],
        ..deny(&[])
    };
    assert_eq!(errored.and(allow(&["p1"])).errored, vec![id("e1")]);
}
