use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use super::*;
use crate::domain::decision::Outcome;
use crate::policy::{ENTITIES_FILE, SCHEMA_FILE};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A policy dir with the example schema and entities, the example policies if `with_examples`, and `extra`.
fn dir_with(with_examples: bool, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [SCHEMA_FILE, ENTITIES_FILE] {
        std::fs::copy(example_dir().join(f), dir.path().join(f)).unwrap();
    }
    if with_examples {
        for entry in std::fs::read_dir(example_dir()).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "cedar") {
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    if !extra.is_empty() {
        std::fs::write(dir.path().join("extra.cedar"), extra).unwrap();
    }
    dir
}

/// An engine with only the given retrieval policies.
fn engine(policies: &str) -> PolicyEngine {
    let dir = dir_with(false, policies);
    PolicyEngine::load(dir.path()).unwrap()
}

const PERMIT_ALL: &str =
    "@id(\"all\")\npermit (principal, action == Action::\"retrieve\", resource);\n";

fn permit_when(cond: &str) -> String {
    format!("@id(\"p\")\npermit (principal, action == Action::\"retrieve\", resource) when {{ {cond} }};\n")
}

fn forbid_when(cond: &str) -> String {
    format!("@id(\"f\")\nforbid (principal, action == Action::\"retrieve\", resource) when {{ {cond} }};\n")
}

fn alice() -> Caller<'static> {
    Caller {
        agent: "agent-1",
        user: Some("alice"),
        tenant: Some("acme"),
        roles: vec!["agent"],
    }
}

fn session(user: &'static str) -> SessionFacts<'static> {
    SessionFacts {
        id: "ses_1",
        purpose: "test",
        calls: 2,
        max_calls: 10,
        user,
        collections: vec!["hr", "eng"],
        labels: vec![],
    }
}

/// A small grid of well-typed documents.
fn grid() -> Vec<Value> {
    let mut docs = Vec::new();
    for tenant in ["acme", "beta"] {
        for collection in ["hr", "ops"] {
            for classification in 0..4 {
                for personal in [false, true] {
                    for owner in [None, Some("alice"), Some("bob")] {
                        for labels in [vec![], vec!["pii"], vec!["untrusted", "pii"]] {
                            let mut d = json!({
                                "tenant": tenant,
                                "collection": collection,
                                "classification": classification,
                                "personal": personal,
                                "source": if personal { "mail" } else { "wiki" },
                                "labels": labels,
                            });
                            if let Some(o) = owner {
                                d["owner"] = json!(o);
                            }
                            docs.push(d);
                        }
                    }
                }
            }
        }
    }
    docs
}

/// Checks the filter against the post-filter on `docs`: never admits a denied document; admits exactly
/// the allowed ones when complete. Returns how many documents were allowed and how many admitted.
fn check(
    engine: &PolicyEngine,
    caller: &Caller<'_>,
    session: &SessionFacts<'_>,
    f: &RetrievalFilter,
    docs: &[Value],
) -> Result<(usize, usize), String> {
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("d{i}")).collect();
    let batch: Vec<(&str, &Value)> = ids.iter().map(String::as_str).zip(docs).collect();
    let verdicts = engine.decide_retrieval(caller, session, &batch);
    let (mut allowed_count, mut admitted_count) = (0, 0);
    for (doc, verdict) in docs.iter().zip(&verdicts) {
        let allowed = verdict.outcome == Outcome::Allow;
        allowed_count += usize::from(allowed);
        let admitted = filter_admits(&f.filter, doc)?;
        admitted_count += usize::from(admitted);
        if admitted && !allowed {
            return Err(format!(
                "filter {} admits {doc}, denied: {verdict:?}",
                f.filter
            ));
        }
        if f.complete && allowed && !admitted {
            return Err(format!("complete filter {} misses allowed {doc}", f.filter));
        }
    }
    Ok((allowed_count, admitted_count))
}

/// The filter for alice, checked against the post-filter on the grid.
fn filter_of(engine: &PolicyEngine) -> RetrievalFilter {
    let (caller, session) = (alice(), session("alice"));
    let f = engine.retrieval_filter(&caller, &session);
    check(engine, &caller, &session, &f, &grid()).unwrap();
    f
}

fn exact(policies: &str) -> Value {
    let f = filter_of(&engine(policies));
    assert!(f.complete, "{policies}: {f:?}");
    f.filter
}

#[test]
fn filter_translates_equality_and_inequality() {
    assert_eq!(
        exact(&permit_when("resource.tenant == \"acme\"")),
        json!({"eq": ["tenant", "acme"]})
    );
    assert_eq!(
        exact(&permit_when("\"acme\" != resource.tenant")),
        json!({"not": {"eq": ["tenant", "acme"]}})
    );
    // The principal's attributes are known: `principal.tenant` becomes its value.
    assert_eq!(
        exact(&permit_when(
            "principal has tenant && resource.tenant == principal.tenant"
        )),
        json!({"eq": ["tenant", "acme"]})
    );
    // Two equalities on one attribute are one `in`.
    assert_eq!(
        exact(&permit_when(
            "resource.tenant == \"acme\" || resource.tenant == \"beta\" || resource.personal"
        )),
        json!({"or": [{"in": ["tenant", ["acme", "beta"]]}, {"eq": ["personal", true]}]})
    );
}

#[test]
fn filter_translates_comparisons() {
    assert_eq!(
        exact(&permit_when("resource.classification < 2")),
        json!({"lt": ["classification", 2]})
    );
    assert_eq!(
        exact(&permit_when("2 < resource.classification")),
        json!({"gt": ["classification", 2]})
    );
    assert_eq!(
        exact(&permit_when("resource.classification >= 1")),
        json!({"ge": ["classification", 1]})
    );
    // alice's clearance (2) comes from entities.json.
    assert_eq!(
        exact(&permit_when(
            "principal has user && resource.classification <= principal.user.clearance"
        )),
        json!({"le": ["classification", 2]})
    );
    // Negated, on a required attribute: the opposite comparison.
    assert_eq!(
        exact(&permit_when("!(resource.classification > 2)")),
        json!({"le": ["classification", 2]})
    );
}

#[test]
fn filter_translates_booleans_and_has() {
    assert_eq!(
        exact(&permit_when("resource.personal")),
        json!({"eq": ["personal", true]})
    );
    assert_eq!(
        exact(&permit_when("!resource.personal")),
        json!({"eq": ["personal", false]})
    );
    assert_eq!(
        exact(&permit_when("resource has owner")),
        json!({"exists": "owner"})
    );
    // A required attribute is always there.
    assert_eq!(exact(&permit_when("resource has tenant")), json!(true));
    // The guard keeps the optional attribute's access from failing: no failure condition remains.
    assert_eq!(
        exact(&permit_when(
            "resource has owner && resource.owner == context.session.user"
        )),
        json!({"and": [{"exists": "owner"}, {"eq": ["owner", "alice"]}]})
    );
    assert_eq!(
        exact(&permit_when(
            "if resource has owner then resource.owner == \"bob\" else true"
        )),
        json!({"or": [{"and": [{"exists": "owner"}, {"eq": ["owner", "bob"]}]}, {"not": {"exists": "owner"}}]})
    );
}

#[test]
fn filter_translates_set_operations() {
    assert_eq!(
        exact(&permit_when(
            "context.session.collections.contains(resource.collection)"
        )),
        json!({"in": ["collection", ["eng", "hr"]]})
    );
    assert_eq!(
        exact(&permit_when("resource.labels.contains(\"pii\")")),
        json!({"contains": ["labels", "pii"]})
    );
    assert_eq!(
        exact(&permit_when(
            "resource.labels.containsAny([\"pii\", \"untrusted\"])"
        )),
        json!({"or": [{"contains": ["labels", "pii"]}, {"contains": ["labels", "untrusted"]}]})
    );
    assert_eq!(
        exact(&permit_when(
            "resource.labels.containsAll([\"pii\", \"untrusted\"])"
        )),
        json!({"and": [{"contains": ["labels", "pii"]}, {"contains": ["labels", "untrusted"]}]})
    );
    assert_eq!(
        exact(&permit_when("[\"pii\"].containsAny(resource.labels)")),
        json!({"contains": ["labels", "pii"]})
    );
}

#[test]
fn filter_translates_if_then_else() {
    assert_eq!(
        exact(&permit_when(
            "if resource.personal then resource has owner && resource.owner == \"alice\" else resource.classification < 1"
        )),
        json!({"or": [
            {"and": [{"eq": ["personal", true]}, {"exists": "owner"}, {"eq": ["owner", "alice"]}]},
            {"and": [{"eq": ["personal", false]}, {"lt": ["classification", 1]}]}
        ]})
    );
}

#[test]
fn filter_combines_permits_and_forbids() {
    let policies = format!(
        "{}{}",
        permit_when("resource.classification < 3"),
        forbid_when("resource.labels.contains(\"untrusted\")")
    );
    assert_eq!(
        exact(&policies),
        json!({"and": [{"lt": ["classification", 3]}, {"not": {"contains": ["labels", "untrusted"]}}]})
    );
    // Two permits: either admits.
    let policies = format!(
        "{}@id(\"q\")\npermit (principal, action == Action::\"retrieve\", resource) when {{ resource.personal }};\n",
        permit_when("resource.tenant == \"acme\"")
    );
    assert_eq!(
        exact(&policies),
        json!({"or": [{"eq": ["tenant", "acme"]}, {"eq": ["personal", true]}]})
    );
}

#[test]
fn filter_folds_known_parts() {
    // No permit for this action at all.
    assert_eq!(
        exact("@id(\"x\")\npermit (principal, action in Action::\"call_tool\", resource);\n"),
        json!(false)
    );
    assert_eq!(exact(PERMIT_ALL), json!(true));
    // A forbid that holds whatever the document: nothing.
    let policies = format!("{PERMIT_ALL}{}", forbid_when("context.session.calls > 1"));
    assert_eq!(exact(&policies), json!(false));
    // A forbid that never holds: everything.
    let policies = format!(
        "{PERMIT_ALL}{}",
        forbid_when("context.session.calls > 5 && resource.personal")
    );
    assert_eq!(exact(&policies), json!(true));
    // The agent has no tenant: `same-tenant-only` forbids everything.
    let examples = PolicyEngine::load(&example_dir()).unwrap();
    let caller = Caller {
        tenant: None,
        ..alice()
    };
    let f = examples.retrieval_filter(&caller, &session("alice"));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!(false),
            complete: true
        }
    );
}

#[test]
fn filter_for_the_example_policies() {
    let examples = PolicyEngine::load(&example_dir()).unwrap();
    let f = filter_of(&examples);
    assert!(f.complete);
    assert_eq!(
        f.filter,
        json!({"and": [
            {"ge": ["classification", 0]},
            {"le": ["classification", 3]},
            {"le": ["classification", 2]},
            {"or": [{"lt": ["classification", 2]}, {"contains": ["labels", "confidential"]}]},
            {"or": [{"eq": ["personal", false]}, {"and": [{"exists": "owner"}, {"eq": ["owner", "alice"]}]}]},
            {"eq": ["tenant", "acme"]},
            {"in": ["collection", ["eng", "hr"]]}
        ]})
    );
}

#[test]
fn filter_a_policy_failing_for_every_document_admits_nothing() {
    // Overflow in a known part: Cedar reports the policy errored; the post-filter denies everything.
    let policies = format!(
        "{PERMIT_ALL}{}",
        forbid_when("context.session.calls * 9223372036854775807 > 1")
    );
    let f = filter_of(&engine(&policies));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!(false),
            complete: true
        }
    );
}

#[test]
fn filter_an_untranslatable_forbid_is_incomplete_and_admits_nothing() {
    let policies = format!(
        "{PERMIT_ALL}{}",
        forbid_when("resource.source like \"*.tmp\"")
    );
    let f = filter_of(&engine(&policies));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!(false),
            complete: false
        }
    );
}

#[test]
fn filter_an_untranslatable_forbid_is_bounded_by_its_translated_part() {
    let policies = format!(
        "{PERMIT_ALL}{}",
        forbid_when("resource.personal && resource.source like \"m*\"")
    );
    let f = filter_of(&engine(&policies));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!({"eq": ["personal", false]}),
            complete: false
        }
    );
}

#[test]
fn filter_an_untranslatable_permit_admits_nothing_by_itself() {
    let policies = format!(
        "{}@id(\"q\")\npermit (principal, action == Action::\"retrieve\", resource) when {{ resource.source like \"w*\" }};\n",
        permit_when("resource.classification == 0")
    );
    let f = filter_of(&engine(&policies));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!({"eq": ["classification", 0]}),
            complete: false
        }
    );
    // A reference to a particular document is not an attribute either.
    let f = filter_of(&engine(&permit_when("resource == Document::\"d1\"")));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!(false),
            complete: false
        }
    );
}

#[test]
fn filter_a_construct_that_may_fail_excludes_where_it_might() {
    // Arithmetic on an attribute can overflow; the post-filter then denies. It is only reached for
    // personal documents here.
    let policies = format!(
        "{PERMIT_ALL}{}",
        forbid_when("resource.personal && resource.classification + 9223372036854775807 > 0")
    );
    let f = filter_of(&engine(&policies));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!({"eq": ["personal", false]}),
            complete: false
        }
    );
}

#[test]
fn filter_an_extension_function_is_untranslatable() {
    // The example schema gives documents no extension-typed attribute, so the policies cannot put one
    // in a residual: the translator is fed one directly. `ip(...)` may fail to parse the attribute.
    let examples = PolicyEngine::load(&example_dir()).unwrap();
    let tr = Translator::new(&examples.retrieval.as_ref().unwrap().attributes);
    let doc = json!({"unknown": [{"Value": "resource"}]});
    let residual = json!({
        "effect": "forbid",
        "principal": {"op": "All"}, "action": {"op": "All"}, "resource": {"op": "All"},
        "conditions": [{"kind": "when", "body": {"&&": {
            "left": {".": {"left": doc, "attr": "personal"}},
            "right": {"isLoopback": [{"ip": [{".": {"left": doc, "attr": "source"}}]}]}
        }}}]
    });
    let c = tr.policy(&residual);
    let personal = F::Eq("personal".into(), Scalar::Bool(true));
    assert_eq!(c.val, B::Range(F::False, personal.clone()));
    assert_eq!(c.err, B::Range(F::False, personal));
}

#[test]
fn filter_a_condition_that_grows_too_big_is_approximated() {
    // `if-then-else` in condition position duplicates its condition: 40 levels would be 2^40 nodes.
    let examples = PolicyEngine::load(&example_dir()).unwrap();
    let tr = Translator::new(&examples.retrieval.as_ref().unwrap().attributes);
    let labels = json!({".": {"left": {"unknown": [{"Value": "resource"}]}, "attr": "labels"}});
    let mut cond = json!({".": {"left": {"unknown": [{"Value": "resource"}]}, "attr": "personal"}});
    for k in 0..40 {
        cond = json!({"if-then-else": {
            "if": cond,
            "then": {"contains": {"left": labels, "right": {"Value": format!("a{k}")}}},
            "else": {"contains": {"left": labels, "right": {"Value": format!("b{k}")}}}
        }});
    }
    let residual = json!({
        "effect": "permit",
        "principal": {"op": "All"}, "action": {"op": "All"}, "resource": {"op": "All"},
        "conditions": [{"kind": "when", "body": cond}]
    });
    let c = tr.policy(&residual);
    assert!(matches!(c.val, B::Range(..)), "{:?}", c.val);
    let size = |f: &F| f.size();
    assert!(size(c.val.lo()) + size(c.val.hi()) <= 2 * MAX_COND_NODES);
}

#[test]
fn filter_a_part_cedar_could_not_evaluate_is_bounded() {
    // The right operand overflows; Cedar leaves it unevaluated beside the residual left one. It fails
    // (and the post-filter denies) only where `resource.personal` holds.
    let policies = format!(
        "{PERMIT_ALL}{}",
        forbid_when("resource.personal && context.session.calls * 9223372036854775807 > 1")
    );
    let f = filter_of(&engine(&policies));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!({"eq": ["personal", false]}),
            complete: false
        }
    );
}

#[test]
fn filter_without_a_retrieve_action_admits_nothing() {
    // A schema without `Document`: the post-filter denies every document.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        example_dir().join(ENTITIES_FILE),
        dir.path().join(ENTITIES_FILE),
    )
    .unwrap();
    let schema = std::fs::read_to_string(example_dir().join(SCHEMA_FILE)).unwrap();
    let start = schema.find("entity Document").unwrap();
    let end = start + schema[start..].find("};").unwrap() + 2;
    let a_start = schema.find("action retrieve").unwrap();
    let a_end = a_start + schema[a_start..].find("};").unwrap() + 2;
    let mut trimmed = schema.clone();
    trimmed.replace_range(a_start..a_end, "");
    trimmed.replace_range(start..end, "");
    std::fs::write(dir.path().join(SCHEMA_FILE), trimmed).unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "@id(\"x\")\npermit (principal, action in Action::\"call_tool\", resource);\n",
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let f = engine.retrieval_filter(&alice(), &session("alice"));
    assert_eq!(
        f,
        RetrievalFilter {
            filter: json!(false),
            complete: true
        }
    );
}

// ---- property tests: the filter against the post-filter ----

/// Documents are of `acme` or `beta`; a caller may also be of `gamma`.
const TENANTS: [&str; 3] = ["acme", "beta", "gamma"];
const COLLECTIONS: [&str; 4] = ["hr", "eng", "ops", "legal"];
/// alice, bob and carol are in entities.json (clearance 2, 1, 3); mallory and eve are not (clearance 0).
const USERS: [&str; 5] = ["alice", "bob", "carol", "mallory", "eve"];
const LABELS: [&str; 3] = ["pii", "untrusted", "confidential"];

#[derive(Debug, Clone)]
struct Case {
    user: Option<&'static str>,
    tenant: Option<&'static str>,
    roles: Vec<&'static str>,
    session_user: &'static str,
    collections: Vec<&'static str>,
    labels: Vec<&'static str>,
    docs: Vec<Value>,
}

/// A document, usually of the caller's tenant and of a collection the session may read (so that enough
/// documents are allowed for the comparison to tell), sometimes anything from the pools.
fn document(
    tenant: Option<&'static str>,
    collections: &[&'static str],
) -> impl Strategy<Value = Value> {
    let tenant = prop_oneof![
        3 => Just(tenant.unwrap_or("acme")),
        1 => prop::sample::select(TENANTS.to_vec()),
    ];
    let near: Vec<&'static str> = if collections.is_empty() {
        COLLECTIONS.to_vec()
    } else {
        collections.to_vec()
    };
    let collection = prop_oneof![
        3 => prop::sample::select(near),
        1 => prop::sample::select(COLLECTIONS.to_vec()),
    ];
    (
        tenant,
        collection,
        0_i64..4,
        prop::bool::weighted(0.3),
        prop::option::of(prop::sample::select(USERS.to_vec())),
        prop::sample::select(vec!["wiki", "web", "mail"]),
        prop::sample::subsequence(LABELS.to_vec(), 0..=LABELS.len()),
    )
        .prop_map(
            |(tenant, collection, classification, personal, owner, source, labels)| {
                let mut d = json!({
                    "tenant": tenant,
                    "collection": collection,
                    "classification": classification,
                    "personal": personal,
                    "source": source,
                    "labels": labels,
                });
                if let Some(o) = owner {
                    d["owner"] = json!(o);
                }
                d
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let user = prop::option::weighted(0.9, prop::sample::select(USERS.to_vec()));
    let tenant = prop::option::weighted(0.85, prop::sample::select(TENANTS.to_vec()));
    let roles = prop::sample::select(vec![vec!["agent"], vec!["agent", "auditor"], vec![]]);
    let session_user = prop::sample::select(vec!["", "alice", "bob", "carol", "mallory"]);
    (
        user,
        tenant,
        roles,
        (any::<bool>(), session_user),
        prop::sample::subsequence(COLLECTIONS.to_vec(), 0..=COLLECTIONS.len()),
        prop::sample::subsequence(LABELS.to_vec(), 0..=LABELS.len()),
    )
        .prop_flat_map(
            |(user, tenant, roles, (same_user, other_user), collections, labels)| {
                let docs = prop::collection::vec(document(tenant, &collections), 1..12);
                (
                    Just(Case {
                        user,
                        tenant,
                        roles,
                        // Usually the session's user is the caller's.
                        session_user: if same_user {
                            user.unwrap_or("")
                        } else {
                            other_user
                        },
                        collections,
                        labels,
                        docs: Vec::new(),
                    }),
                    docs,
                )
            },
        )
        .prop_map(|(case, docs)| Case { docs, ..case })
}

/// What a property run saw.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Cases whose filter was complete.
    complete: usize,
    documents: usize,
    allowed: usize,
    admitted: usize,
}

/// Runs `cases` random cases against `engine`, checking each document against the post-filter.
fn agree(engine: &PolicyEngine, cases: u32) -> Stats {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let stats = std::cell::Cell::new(Stats::default());
    runner
        .run(&case(), |c| {
            let caller = Caller {
                agent: "agent-1",
                user: c.user,
                tenant: c.tenant,
                roles: c.roles.clone(),
            };
            let session = SessionFacts {
                id: "ses_1",
                purpose: "test",
                calls: 0,
                max_calls: 10,
                user: c.session_user,
                collections: c.collections.clone(),
                labels: c.labels.clone(),
            };
            let f = engine.retrieval_filter(&caller, &session);
            let (allowed, admitted) =
                check(engine, &caller, &session, &f, &c.docs).map_err(TestCaseError::fail)?;
            let s = stats.get();
            stats.set(Stats {
                complete: s.complete + usize::from(f.complete),
                documents: s.documents + c.docs.len(),
                allowed: s.allowed + allowed,
                admitted: s.admitted + admitted,
            });
            Ok(())
        })
        .unwrap();
    let stats = stats.get();
    println!("{cases} cases: {stats:?}");
    stats
}

#[test]
fn filter_property_equals_the_post_filter_on_the_example_policies() {
    let examples = PolicyEngine::load(&example_dir()).unwrap();
    let stats = agree(&examples, 3000);
    // The example policies translate exactly, whatever the caller.
    assert_eq!(stats.complete, 3000);
    assert_eq!(stats.admitted, stats.allowed);
    assert!(
        stats.allowed > 100,
        "{stats:?}: too few allowed documents to tell"
    );
}

#[test]
fn filter_property_is_safe_when_incomplete() {
    // The examples plus policies exercising more constructs, some untranslatable.
    let extra = "\
@id(\"wiki-pii\")\nforbid (principal, action == Action::\"retrieve\", resource)\n\
when { resource.labels.containsAll([\"pii\", \"untrusted\"]) && resource.source == \"wiki\" };\n\
@id(\"no-tmp-mail\")\nforbid (principal, action == Action::\"retrieve\", resource)\n\
when { resource.personal && resource.source like \"ma*\" && resource.classification > 0 };\n\
@id(\"labels-vs-session\")\nforbid (principal, action == Action::\"retrieve\", resource)\n\
when { context.session.labels.contains(\"confidential\") && resource.labels.containsAny([\"untrusted\"]) };\n\
@id(\"ite\")\nforbid (principal, action == Action::\"retrieve\", resource)\n\
when { if resource has owner then resource.owner == \"mallory\" else resource.collection == \"legal\" };\n";
    let dir = dir_with(true, extra);
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let stats = agree(&engine, 1000);
    assert!(
        stats.complete < 1000,
        "the `like` forbid makes some filters incomplete"
    );
    assert!(
        stats.admitted > 100,
        "{stats:?}: too few admitted documents to tell"
    );
}

#[test]
fn excluded_labels_are_left_out_of_the_filter_and_of_its_taint() {
    let acme = engine(&permit_when("resource.tenant == \"acme\""));
    let (caller, session) = (alice(), session("alice"));
    let f = acme.retrieval_filter_excluding(
        &caller,
        &session,
        &["confidential".to_owned(), "untrusted".to_owned()],
    );
    assert!(f.complete, "{f:?}");
    assert_eq!(
        f.filter,
        json!({"and": [
            {"eq": ["tenant", "acme"]},
            {"not": {"contains": ["labels", "confidential"]}},
            {"not": {"contains": ["labels", "untrusted"]}}
        ]})
    );
    // Still safe against the post-filter (it admits a subset of the allowed documents).
    let mut docs = grid();
    docs.push(
        json!({"tenant": "acme", "collection": "kb", "classification": 0, "personal": false,
                     "source": "s", "labels": ["confidential"]}),
    );
    check(
        &acme,
        &caller,
        &session,
        &RetrievalFilter {
            complete: false,
            ..f.clone()
        },
        &docs,
    )
    .unwrap();
    assert_eq!(filter_admits(&f.filter, docs.last().unwrap()), Ok(false));
    // Nothing excluded from a filter that admits nothing.
    let none = engine(&permit_when("false"));
    assert_eq!(
        none.retrieval_filter_excluding(&caller, &session, &["x".to_owned()])
            .filter,
        json!(false)
    );
}
