use std::str::FromStr;

use cedar_policy::PolicySet;
use serde_json::json;

use super::*;

fn reads(text: &str) -> LabelReads {
    LabelReads::of(&PolicySet::from_str(text).unwrap())
}

fn set(labels: &[&str]) -> BTreeSet<String> {
    labels.iter().map(|l| (*l).to_owned()).collect()
}

#[test]
fn the_example_taint_policies_restrict_on_untrusted_and_confidential() {
    let engine = super::super::PolicyEngine::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
    )
    .unwrap();
    let r = &engine.label_reads;
    assert_eq!(r.restricting, set(&["confidential", "untrusted"]));
    assert!(r.granting.is_empty(), "{r:?}");
    assert_eq!(r.opaque, None);
    // A filter that says nothing about labels may admit both.
    let f = json!({"and": [{"eq": ["tenant", "acme"]}, {"le": ["classification", 2]}]});
    assert_eq!(
        engine.filter_taint(&f).unwrap(),
        ["confidential", "untrusted"]
    );
}

#[test]
fn each_test_of_the_labels_is_read_with_its_direction() {
    let r = reads(
        r#"
        forbid (principal, action, resource) when { context.session.labels.contains("a") };
        permit (principal, action, resource) unless { context.session.labels.containsAny(["b", "c"]) };
        forbid (principal, action, resource) when { !(!context.session.labels.containsAll(["d"])) };
        forbid (principal, action, resource) when { ["e"].containsAny(context.session.labels) || false };
        permit (principal, action, resource) when { context.session.labels.contains("g") };
        forbid (principal, action, resource) unless { context.session.labels.contains("h") };
        forbid (principal, action, resource) when { !context.session.labels.contains("i") };
        forbid (principal, action, resource) when {
            if context.session.labels.contains("j") then true else context.session.labels.contains("k")
        };
        forbid (principal, action, resource) when { context.session["labels"].contains("l") };
        "#,
    );
    assert_eq!(
        r.restricting,
        set(&["a", "b", "c", "d", "e", "j", "k", "l"])
    );
    assert_eq!(r.granting, set(&["g", "h", "i", "j"]));
    assert_eq!(r.opaque, None);
}

#[test]
fn reading_the_labels_any_other_way_is_opaque() {
    for text in [
        r#"permit (principal, action, resource) when { context.session.labels.isEmpty() };"#,
        r#"permit (principal, action, resource) when { context.session.labels == ["a"] };"#,
        r#"permit (principal, action, resource) when { ["a"].containsAll(context.session.labels) };"#,
        r#"forbid (principal, action, resource) when { context.session.labels.contains(context.session.user) };"#,
        r#"forbid (principal, action, resource) when { context.session == {"labels": ["a"]} };"#,
        r#"forbid (principal, action, resource) when { context == {} };"#,
    ] {
        let r = reads(text);
        assert_eq!(r.opaque.as_deref(), Some("policy0"), "{text}");
        // Then no filter that may admit anything is answered; one that admits nothing is.
        assert!(r.taint(&json!(true)).is_err(), "{text}");
        assert_eq!(r.taint(&json!(false)).unwrap(), Vec::<String>::new());
    }
    // Reading other parts of the context is not reading the labels.
    let r = reads(
        r#"forbid (principal, action, resource) when {
            context has approval && context.session has labels && context.session.user == "a"
            && context.session.collections.contains("x") && context.args.flag
        };"#,
    );
    assert_eq!(r, LabelReads::default());
}

#[test]
fn a_filter_taints_with_the_restricting_labels_it_may_admit() {
    let r = reads(
        r#"
        forbid (principal, action, resource) when { context.session.labels.containsAny(["a", "b"]) };
        permit (principal, action, resource) when { context.session.labels.contains("g") };
        "#,
    );
    let not_carrying = |l: &str| json!({"not": {"contains": ["labels", l]}});
    assert_eq!(r.taint(&json!(true)).unwrap(), ["a", "b"], "never `g`");
    assert_eq!(
        r.taint(&json!({"and": [{"eq": ["tenant", "t"]}, not_carrying("a")]}))
            .unwrap(),
        ["b"]
    );
    assert_eq!(
        r.taint(&json!({"and": [not_carrying("b"), not_carrying("a")]}))
            .unwrap(),
        Vec::<String>::new()
    );
    // Only documents carrying `a`: `b` may come with them.
    assert_eq!(
        r.taint(&json!({"contains": ["labels", "a"]})).unwrap(),
        ["a", "b"]
    );
    // Unknown parts count as "may admit".
    assert_eq!(
        r.taint(&json!({"or": [not_carrying("a"), {"eq": ["x", 1]}]}))
            .unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        r.taint(&json!({"or": [{"and": [not_carrying("a"), not_carrying("b")]}, false]}))
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(r.taint(&json!(false)).unwrap(), Vec::<String>::new());
    assert_eq!(
        r.taint(&json!({"and": [true, false]})).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn a_label_tested_both_ways_is_refused_unless_the_filter_excludes_it() {
    let r = reads(
        r#"
        forbid (principal, action, resource) when { context.session.labels.contains("x") };
        permit (principal, action, resource) when { context.session.labels.contains("x") };
        forbid (principal, action, resource) when { context.session.labels.contains("y") };
        "#,
    );
    let err = r.taint(&json!(true)).unwrap_err();
    assert!(err.contains("`x`"), "{err}");
    assert_eq!(
        r.taint(&json!({"not": {"contains": ["labels", "x"]}}))
            .unwrap(),
        ["y"]
    );
}
