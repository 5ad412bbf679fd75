//! `canonical::hashed_event` and `value_to_vec` against `serde_jcs`, which every stored hash was computed with: random events, with
//! strings full of what JSON escapes (quotes, backslashes, control characters) and what it does not
//! (non-ASCII, U+2028, lone high code points), must give the same bytes, hence the same chain hashes.

use proptest::prelude::*;

use super::audit::{EventBody, EventKind, Hashed};
use super::decision::{Outcome, Reason, ReasonCode};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{0,12}",
        any::<String>(),
        "[\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}é€𝄞 a-z]{0,24}",
    ]
}

fn reason() -> impl Strategy<Value = Reason> {
    (
        prop::sample::select(vec![
            ReasonCode::PolicyAllow,
            ReasonCode::PolicyDeny,
            ReasonCode::KillSwitch,
            ReasonCode::ApprovalRequired,
            ReasonCode::SessionClosed,
        ]),
        prop::option::of(text()),
        text(),
        prop::option::of(text()),
    )
        .prop_map(|(code, policy_id, message, kill_switch_id)| Reason {
            code,
            policy_id,
            message,
            kill_switch_id,
        })
}

fn body() -> impl Strategy<Value = EventBody> {
    (
        (
            text(),
            any::<i64>(),
            prop::sample::select(vec![
                EventKind::ToolCallDecided,
                EventKind::SessionOpened,
                EventKind::KillSwitchEngaged,
                EventKind::RetrievalDecided,
            ]),
            text(),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(prop::sample::select(vec![
                Outcome::Allow,
                Outcome::Deny,
                Outcome::PendingApproval,
            ])),
            prop::collection::vec(reason(), 0..4),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (event_id, time, kind, agent, user, session_id, decision_id),
                (tool, call_id, outcome, reasons, policy_version, digest, redacted, detail),
            )| EventBody {
                event_id,
                time,
                kind,
                agent,
                user,
                session_id,
                decision_id,
                tool,
                call_id,
                outcome,
                reasons,
                policy_version,
                arguments_digest: digest,
                arguments_redacted: redacted,
                detail,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn same_bytes_as_serde_jcs(seq in any::<i64>(), prev_hash in text(), body in body()) {
        let hashed = Hashed { seq, prev_hash: &prev_hash, body: &body };
        let ours = super::canonical::hashed_event(seq, &prev_hash, &body);
        prop_assert!(ours.is_some(), "audit events never need the fallback");
        prop_assert_eq!(ours, serde_jcs::to_vec(&hashed).ok());
    }
}

/// Tool arguments: any JSON without floats, keys included (sorted by their escaped bytes, as serde_jcs does).
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arguments_same_bytes_as_serde_jcs(args in json()) {
        prop_assert_eq!(super::canonical::value_to_vec(&args), serde_jcs::to_vec(&args).ok());
    }
}

#[test]
fn floats_and_deep_values_are_left_to_serde_jcs() {
    assert_eq!(
        super::canonical::value_to_vec(&serde_json::json!({"x": 1.5})),
        None
    );
    let mut deep = serde_json::json!(1);
    for _ in 0..40 {
        deep = serde_json::json!([deep]);
    }
    assert_eq!(super::canonical::value_to_vec(&deep), None);
    assert_eq!(
        super::canonical::value_to_vec(&serde_json::json!({"b": [1, "x\n"], "a b": null, "a": -2})),
        serde_jcs::to_vec(&serde_json::json!({"b": [1, "x\n"], "a b": null, "a": -2})).ok()
    );
}
