//! Each guard form, built from real policy text, decided on typed calls; and the forms (or positions)
//! that must be left to Cedar.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entity, EntityUid, Policy, RestrictedExpression};
use serde_json::{json, Value};

use super::*;
use crate::policy::args::ExtensionType;

fn args_type() -> RecordType {
    let fields: BTreeMap<String, (ArgType, bool)> = [
        ("s", ArgType::String, true),
        ("o", ArgType::String, false),
        ("n", ArgType::Long, true),
        ("m", ArgType::Long, false),
        ("b", ArgType::Bool, true),
        ("tags", ArgType::Set(Box::new(ArgType::String)), true),
        ("nums", ArgType::Set(Box::new(ArgType::Long)), false),
        ("d", ArgType::Extension(ExtensionType::Decimal), true),
    ]
    .into_iter()
    .map(|(n, t, r)| (n.to_owned(), (t, r)))
    .collect();
    RecordType { fields }
}

fn tool_entity() -> Entity {
    Entity::new(
        EntityUid::from_str("Tool::\"t\"").unwrap(),
        HashMap::from([
            (
                "risk".to_owned(),
                RestrictedExpression::new_string("low".into()),
            ),
            ("level".to_owned(), RestrictedExpression::new_long(3)),
            ("external".to_owned(), RestrictedExpression::new_bool(true)),
        ]),
        HashSet::new(),
    )
    .unwrap()
}

/// The condition of a policy with this `when`/`unless` text.
fn cond(conditions: &str) -> Cond {
    let text = format!("permit (principal, action, resource) {conditions};");
    let policy = Policy::from_str(&text).unwrap();
    Cond::of_policy(&policy.to_json().unwrap(), &args_type(), &tool_entity())
}

fn session() -> SessionFacts<'static> {
    SessionFacts {
        id: "ses_1",
        purpose: "audit",
        calls: 2,
        max_calls: 10,
        user: "alice",
        collections: vec!["kb"],
        labels: vec!["untrusted"],
    }
}

fn args(extra: Value) -> Value {
    let mut a = json!({"s": "abc", "n": 5, "b": true, "tags": ["x", "y"], "d": "1.5"});
    if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
        a.extend(extra.clone());
    }
    a
}

/// The guard's decision on a call with these arguments (merged into defaults) and approval.
fn decide(c: &Cond, extra: Value, approval: bool) -> Option<bool> {
    let a = args(extra);
    let s = session();
    c.decide(&Facts::new(&a, &s, approval))
}

#[test]
fn equality_on_arguments_of_each_scalar_type() {
    let c = cond("when { context.args.s == \"abc\" }");
    assert_eq!(c, Cond::Eq(Source::Arg("s".into()), Lit::Str("abc".into())));
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({"s": "abd"}), false), Some(false));
    let c = cond("when { 5 == context.args.n }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({"n": -5}), false), Some(false));
    let c = cond("when { context.args.b == false }");
    assert_eq!(decide(&c, json!({}), false), Some(false));
    // A Bool argument used as the condition itself.
    let c = cond("when { context.args.b }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({"b": false}), false), Some(false));
    let c = cond("when { context.args.s != \"abc\" }");
    assert_eq!(decide(&c, json!({}), false), Some(false));
    assert_eq!(decide(&c, json!({"s": ""}), false), Some(true));
}

#[test]
fn comparisons_on_long_arguments_either_way_round() {
    for (text, at_5) in [
        ("context.args.n < 5", false),
        ("context.args.n <= 5", true),
        ("context.args.n > 5", false),
        ("context.args.n >= 5", true),
        ("5 < context.args.n", false),
        ("5 <= context.args.n", true),
        ("4 < context.args.n", true),
        ("context.args.n > -5", true),
        ("context.args.n < -5", false),
    ] {
        let c = cond(&format!("when {{ {text} }}"));
        assert!(matches!(c, Cond::Cmp(..)), "{text}: {c:?}");
        assert_eq!(decide(&c, json!({}), false), Some(at_5), "{text}");
    }
    let c = cond("when { context.args.n > 5 }");
    assert_eq!(decide(&c, json!({"n": 6}), false), Some(true));
    assert_eq!(
        decide(&c, json!({"n": i64::MIN}), false),
        Some(false),
        "extremes compare as Longs"
    );
}

#[test]
fn like_follows_cedar_wildcards_and_escapes() {
    let cases: [(&str, &str, bool); 14] = [
        ("a*", "abc", true),
        ("*c", "abc", true),
        ("*b*", "abc", true),
        ("a*c", "abc", true),
        ("abc", "abc", true),
        ("ab", "abc", false),
        ("*", "", true),
        ("a*b*c", "abc", true),
        ("ab*bc", "abc", false),
        ("a\\*c", "a*c", true),
        ("a\\*c", "abc", false),
        ("*\\**", "x*y", true),
        ("é*", "étoile", true),
        ("**b**", "b", true),
    ];
    for (pattern, value, expected) in cases {
        let c = cond(&format!("when {{ context.args.s like \"{pattern}\" }}"));
        assert!(matches!(c, Cond::Like(..)), "{pattern}: {c:?}");
        assert_eq!(
            decide(&c, json!({ "s": value }), false),
            Some(expected),
            "`{value}` like `{pattern}`"
        );
    }
    // The empty pattern matches only the empty string.
    assert!(Pattern::new(&[""]).matches(""));
    assert!(!Pattern::new(&[""]).matches("a"));
    // The first and last parts may not overlap.
    assert!(!Pattern::new(&["ab", "ba"]).matches("aba"));
    assert!(Pattern::new(&["ab", "ba"]).matches("abba"));
}

#[test]
fn has_contains_session_and_approval() {
    let c = cond("when { context.args has o }");
    assert_eq!(c, Cond::Has("o".into()));
    assert_eq!(decide(&c, json!({}), false), Some(false));
    assert_eq!(decide(&c, json!({"o": "x"}), false), Some(true));
    // An argument the schema does not declare is never present (`args.rs` refuses it).
    assert_eq!(cond("when { context.args has zz }"), Cond::Const(false));
    let c = cond("when { context.args.tags.contains(\"y\") }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({"tags": []}), false), Some(false));
    let c = cond("when { context.args.nums.contains(3) }");
    assert_eq!(decide(&c, json!({"nums": [1, 3]}), false), Some(true));
    assert_eq!(decide(&c, json!({"nums": [1]}), false), Some(false));
    let c = cond("when { context.session.purpose == \"audit\" }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    let c = cond("when { context.session.calls >= 3 }");
    assert_eq!(decide(&c, json!({}), false), Some(false));
    let c = cond("when { context.session.labels.contains(\"untrusted\") }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    let c = cond("when { context.session.user like \"al*\" }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    let c = cond("unless { context has approval }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({}), true), Some(false));
    assert_eq!(cond("when { context has session }"), Cond::Const(true));
    assert_eq!(cond("when { context has other }"), Cond::Const(false));
}

#[test]
fn tool_attributes_fold_at_load() {
    assert_eq!(cond("when { resource.risk == \"low\" }"), Cond::Const(true));
    assert_eq!(
        cond("when { resource.risk != \"low\" }"),
        Cond::Const(false)
    );
    assert_eq!(cond("when { resource.level > 2 }"), Cond::Const(true));
    assert_eq!(cond("when { resource.external }"), Cond::Const(true));
    assert_eq!(
        cond("when { resource.risk like \"l*\" }"),
        Cond::Const(true)
    );
    assert_eq!(cond("when { resource has risk }"), Cond::Const(true));
    assert_eq!(cond("when { resource has owner }"), Cond::Const(false));
    // A folded `true` leaves the rest; a folded `false` decides the whole chain.
    assert_eq!(
        cond("when { resource.risk == \"low\" && context.args.s == \"x\" }"),
        Cond::Eq(Source::Arg("s".into()), Lit::Str("x".into()))
    );
    assert_eq!(
        cond("when { resource.risk == \"high\" && principal.tenant == \"t\" }"),
        Cond::Const(false)
    );
    // An attribute the tool lacks is an error in Cedar: not decided.
    assert_eq!(cond("when { resource.owner == \"x\" }"), Cond::Opaque);
}

#[test]
fn clauses_join_in_order_and_unless_negates() {
    let c = cond("when { context.args.s == \"abc\" } unless { context.args.n > 3 }");
    assert!(
        matches!(&c, Cond::And(_, r) if matches!(**r, Cond::Not(_))),
        "{c:?}"
    );
    assert_eq!(decide(&c, json!({}), false), Some(false));
    assert_eq!(decide(&c, json!({"n": 1}), false), Some(true));
    let c = cond("when { context.args.s == \"x\" || context.args.n > 3 }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({"n": 1}), false), Some(false));
    // No conditions: always true.
    assert_eq!(cond(""), Cond::Const(true));
}

#[test]
fn what_cannot_be_decided_is_left_to_cedar() {
    // Forms outside the set, and type mismatches (strict validation refuses these, but a guard is
    // built only for the type it was read as).
    for text in [
        "principal.tenant == \"x\"",
        "context.args.n + 1 > 3",
        "context.args.s == 5",
        "context.args.n like \"5\"",
        "context.args.s > 3",
        "context.args.d == \"1.5\"",
        "context.args.d like \"1*\"",
        "context.args.tags.contains(5)",
        "context.args.tags.containsAny([\"x\"])",
        "context.args.zz == \"x\"",
        "context.session.nope == \"x\"",
        "context.approval.id == \"x\"",
        "context.args has o.p",
        "if context.args.b then true else false",
    ] {
        assert_eq!(cond(&format!("when {{ {text} }}")), Cond::Opaque, "{text}");
    }
    // An optional argument that is absent: Cedar errors on the access, so nothing is decided.
    let c = cond("when { context.args.o == \"x\" }");
    assert_eq!(decide(&c, json!({}), false), None);
    assert_eq!(decide(&c, json!({"o": "y"}), false), Some(false));
    let c = cond("when { context.args.m > 3 }");
    assert_eq!(decide(&c, json!({}), false), None);
    let c = cond("when { context.args.nums.contains(3) }");
    assert_eq!(decide(&c, json!({}), false), None);
    // After `has`, the same access is decided: Cedar never reaches it when the field is absent.
    let c = cond("when { context.args has o && context.args.o == \"x\" }");
    assert_eq!(decide(&c, json!({}), false), Some(false));
    assert_eq!(decide(&c, json!({"o": "x"}), false), Some(true));
}

#[test]
fn only_what_cedar_reaches_without_error_decides() {
    // Something that could error before the guard: never skipped.
    let c = cond("when { principal.tenant == \"t\" && context.args.s == \"x\" }");
    assert_eq!(c, Cond::Opaque);
    let c =
        cond("when { context.session.calls * 4611686018427387904 > 0 && context.args.s == \"x\" }");
    assert_eq!(decide(&c, json!({}), false), None);
    // After the guard: a false guard decides, a true one leaves the rest to Cedar.
    let c = cond("when { context.args.s == \"x\" && principal.tenant == \"t\" }");
    assert_eq!(decide(&c, json!({}), false), Some(false));
    assert_eq!(decide(&c, json!({"s": "x"}), false), None);
    // `||` with something undecided: only a true left side decides.
    let c = cond("when { context.args.s == \"abc\" || principal.tenant == \"t\" }");
    assert_eq!(decide(&c, json!({}), false), Some(true));
    assert_eq!(decide(&c, json!({"s": "x"}), false), None);
    let c = cond("when { !(principal.tenant == \"t\") }");
    assert_eq!(c, Cond::Opaque);
    // A later clause is reached only when the earlier ones hold.
    let c = cond("when { principal has tenant } when { context.args.s == \"x\" }");
    assert_eq!(c, Cond::Opaque);
    let c = cond("when { context.args.s == \"x\" } when { principal has tenant }");
    assert_eq!(decide(&c, json!({}), false), Some(false));
}

#[test]
fn the_index_files_a_policy_under_a_conjunct_only_after_decided_ones() {
    use crate::policy::index::Key;
    let key = |text: &str| Key::choose(&cond(&format!("when {{ {text} }}")), &args_type());
    // The best-ranked key among conjuncts every call reaches decided.
    assert_eq!(
        key("context.args.n > 3 && context.args.s == \"x\""),
        Some(Key::Eq(Source::Arg("s".into()), Lit::Str("x".into())))
    );
    assert_eq!(
        key("context.args has o && context.args.n > 3 && context.args.o like \"*ab*\""),
        Some(Key::Part(Source::Arg("o".into()), "ab".into()))
    );
    assert_eq!(
        key("context.args.s like \"pre*\""),
        Some(Key::Prefix(Source::Arg("s".into()), "pre".into()))
    );
    // `m` is optional without `has`: a call may not decide it, so nothing after it is used.
    assert_eq!(
        key("context.args.m > 3 && context.args.s == \"x\""),
        Some(Key::Cmp(Source::Arg("m".into()), CmpOp::Gt, 3))
    );
    assert_eq!(
        key("context.args.s == \"x\" || context.args.n > 3"),
        None,
        "a disjunction is checked, not indexed"
    );
}

#[test]
fn the_index_finds_every_policy_whose_guard_may_hold() {
    use crate::policy::index::GuardedSet;
    let texts = [
        "when { context.args.s == \"abc\" }",
        "when { context.args.s like \"ab*\" }",
        "when { context.args.s like \"*bc\" }",
        "when { context.args.s like \"*zz*\" }",
        "when { context.args.n > 4 }",
        "when { context.args.n < 5 }",
        "when { 5 <= context.args.n }",
        "when { context.args has o }",
        "when { context.args.tags.contains(\"y\") }",
        "when { context.args.nums.contains(1) }",
        // Optional and absent: Cedar errors, so the index must not rule it out.
        "when { context.args.o == \"x\" }",
        "when { context.args.m > 1 }",
        "when { context.args.s == \"x\" || context.args.n == 5 }",
        "when { principal.tenant == \"t\" }",
        "when { resource.risk == \"high\" }",
    ];
    let policies = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = Policy::from_str(&format!("permit (principal, action, resource) {t};"))
                .unwrap()
                .new_id(cedar_policy::PolicyId::new(format!("p{i}")));
            let c = Cond::of_policy(&p.to_json().unwrap(), &args_type(), &tool_entity());
            (p, c)
        })
        .collect();
    let set = GuardedSet::new(policies, &args_type()).unwrap();
    // The opaque one is evaluated every call; the folded `false` is gone; the others are guarded.
    assert_eq!(set.sizes(), (1, 13));
    let a = args(json!({}));
    let s = session();
    let left = set.survivors(&Facts::new(&a, &s, false));
    // Guarded policies are numbered in text order (the two unguarded ones come last); `s` is "abc",
    // `n` is 5, `tags` ["x", "y"], `o`, `m` and `nums` absent.
    assert_eq!(left, [0, 1, 2, 4, 6, 8, 9, 10, 11, 12], "{texts:?}");
}
