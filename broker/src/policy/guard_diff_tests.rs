//! Differential test of guards: on random policy sets whose conditions mix guard forms (equalities,
//! `like` with wildcards and escaped stars, comparisons, `has`, `contains`, session and tool attributes,
//! `context has approval`) with forms Cedar must evaluate (some of which error), and random calls
//! (optional arguments present or absent), the engine decides exactly as evaluating the whole set with
//! every request checked against the schema: same outcome, reasons, deciding and erroring policies.
//!
//! Sets are drawn from a seeded generator (seed printed on failure), so a failure reproduces.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Map, Value};

use super::guard::Facts;
use super::tests::dir_with;
use super::*;

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Long,
    StrSet,
}

/// An argument: name, type, required.
type Field = (&'static str, Ty, bool);

/// Tools of the example schema, with their arguments.
const TOOLS: [(&str, &[Field]); 4] = [
    (
        "web.search",
        &[("query", Ty::Str, true), ("max_results", Ty::Long, false)],
    ),
    (
        "email.send",
        &[
            ("to", Ty::Str, true),
            ("cc", Ty::StrSet, false),
            ("subject", Ty::Str, true),
            ("body", Ty::Str, true),
        ],
    ),
    (
        "payments.refund",
        &[
            ("payment_id", Ty::Str, true),
            ("amount", Ty::Long, true),
            ("currency", Ty::Str, true),
            ("reason", Ty::Str, false),
        ],
    ),
    (
        "calendar.create_event",
        &[
            ("title", Ty::Str, true),
            ("start", Ty::Str, true),
            ("duration_minutes", Ty::Long, true),
            ("attendees", Ty::StrSet, true),
        ],
    ),
];
const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
/// Strings calls carry and policies compare with: stars and a non-ASCII letter make `like` earn its
/// keep.
const STRINGS: [&str; 9] = ["", "a", "ab", "ba", "abc", "a*b", "*", "é", "aé*"];
const LONGS: [i64; 7] = [-3, -1, 0, 1, 2, 3, 8];
const BOUNDS: [i64; 5] = [-2, 0, 1, 2, 5];

fn pick<'a, T: ?Sized>(rng: &mut StdRng, from: &[&'a T]) -> &'a T {
    from.get(rng.gen_range(0..from.len()))
        .copied()
        .unwrap_or_else(|| unreachable!())
}

fn pick_long(rng: &mut StdRng, from: &[i64]) -> i64 {
    from.get(rng.gen_range(0..from.len())).copied().unwrap_or(0)
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// A `like` pattern of up to four elements; `\*` is a literal star.
fn pattern(rng: &mut StdRng) -> String {
    let n = rng.gen_range(0..5);
    (0..n)
        .map(|_| pick(rng, &["a", "b", "\\*", "é", "*", "*"]))
        .collect()
}

/// A comparison of a Long with a bound, either way round.
fn compare(rng: &mut StdRng, subject: &str) -> String {
    let op = pick(rng, &["<", "<=", ">", ">=", "==", "!="]);
    let n = pick_long(rng, &BOUNDS);
    if rng.gen_bool(0.3) {
        format!("{n} {op} {subject}")
    } else {
        format!("{subject} {op} {n}")
    }
}

/// A guard-shaped test of one argument (its presence not ensured).
fn on_field(rng: &mut StdRng, name: &str, ty: Ty) -> String {
    let subject = format!("context.args.{name}");
    match ty {
        Ty::Str => match rng.gen_range(0..4) {
            0 => format!("{subject} == {}", quoted(pick(rng, &STRINGS))),
            1 => format!("{subject} != {}", quoted(pick(rng, &STRINGS))),
            _ => format!("{subject} like \"{}\"", pattern(rng)),
        },
        Ty::Long => compare(rng, &subject),
        Ty::StrSet => format!("{subject}.contains({})", quoted(pick(rng, &STRINGS))),
    }
}

/// Something Cedar evaluates: may error (overflow once a session made two calls, or on a large
/// argument), or reads the principal.
fn opaque(rng: &mut StdRng, fields: &[Field]) -> String {
    let long = fields.iter().find(|(_, t, req)| *t == Ty::Long && *req);
    match (rng.gen_range(0..4), long) {
        (0, _) => "context.session.calls * 4611686018427387904 > 0".to_owned(),
        (1, _) => "principal has tenant && principal.tenant == \"t1\"".to_owned(),
        (2, Some((name, _, _))) => format!("context.args.{name} * 3074457345618258603 > 0"),
        _ => "principal in Role::\"admin\"".to_owned(),
    }
}

/// One self-contained boolean test for a policy on `fields` (empty: any tool).
fn atom(rng: &mut StdRng, fields: &[Field]) -> String {
    match rng.gen_range(0..10) {
        0..=4 if !fields.is_empty() => {
            let (name, ty, required) = fields
                .get(rng.gen_range(0..fields.len()))
                .copied()
                .unwrap_or(("", Ty::Str, true));
            let test = on_field(rng, name, ty);
            if required {
                test
            } else {
                format!("context.args has {name} && {test}")
            }
        }
        0..=5 => match rng.gen_range(0..5) {
            0 => format!(
                "context.session.purpose == {}",
                quoted(pick(rng, &["audit", "work"]))
            ),
            1 => compare(rng, "context.session.calls"),
            2 => "context.session.labels.contains(\"untrusted\")".to_owned(),
            3 => format!("context.session.purpose like \"{}\"", pattern(rng)),
            _ => "context has approval".to_owned(),
        },
        6 => match rng.gen_range(0..4) {
            0 => format!(
                "resource.risk == {}",
                quoted(pick(rng, &["low", "medium", "high"]))
            ),
            1 => "resource.external".to_owned(),
            2 => "resource.category like \"*o*\"".to_owned(),
            _ => "resource has owner".to_owned(),
        },
        _ => opaque(rng, fields),
    }
}

/// A small expression over atoms.
fn expr(rng: &mut StdRng, fields: &[Field], depth: u32) -> String {
    if depth == 0 || rng.gen_bool(0.5) {
        return format!("({})", atom(rng, fields));
    }
    match rng.gen_range(0..3) {
        0 => format!(
            "({} && {})",
            expr(rng, fields, depth - 1),
            expr(rng, fields, depth - 1)
        ),
        1 => format!(
            "({} || {})",
            expr(rng, fields, depth - 1),
            expr(rng, fields, depth - 1)
        ),
        _ => format!("!{}", expr(rng, fields, depth - 1)),
    }
}

/// A top-level `&&` chain, where an optional argument's `has` may come several conjuncts before its
/// use (so the index's choice of conjunct is exercised), then maybe an `unless`.
fn conditions(rng: &mut StdRng, fields: &[Field]) -> String {
    let mut chain = Vec::new();
    for _ in 0..rng.gen_range(1..4) {
        match fields.get(rng.gen_range(0..fields.len().max(1))) {
            Some(&(name, ty, false)) if rng.gen_bool(0.4) => {
                chain.push(format!("context.args has {name}"));
                if rng.gen_bool(0.5) {
                    chain.push(expr(rng, fields, 1));
                }
                chain.push(on_field(rng, name, ty));
            }
            _ => chain.push(expr(rng, fields, 2)),
        }
    }
    let mut text = format!(" when {{ {} }}", chain.join(" && "));
    if rng.gen_bool(0.3) {
        let _ = write!(text, " unless {{ {} }}", expr(rng, fields, 1));
    }
    text
}

fn policy_set(rng: &mut StdRng) -> String {
    let mut text = String::new();
    for i in 0..rng.gen_range(1..40) {
        let effect = if rng.gen_bool(0.6) {
            "permit"
        } else {
            "forbid"
        };
        let principal = match rng.gen_range(0..4) {
            0 => "principal".to_owned(),
            1 => "principal in Role::\"agent\"".to_owned(),
            _ => format!("principal == Agent::\"{}\"", pick(rng, &AGENTS)),
        };
        let (action, fields): (String, &[Field]) = if rng.gen_bool(0.2) {
            ("action in Action::\"call_tool\"".to_owned(), &[])
        } else {
            let (tool, fields) = TOOLS
                .get(rng.gen_range(0..TOOLS.len()))
                .copied()
                .unwrap_or(TOOLS[0]);
            (format!("action == Action::\"{tool}\""), fields)
        };
        let conditions = if rng.gen_bool(0.1) {
            String::new()
        } else {
            conditions(rng, fields)
        };
        let _ = writeln!(
            text,
            "@id(\"p{i}\")\n{effect} ({principal}, {action}, resource){conditions};"
        );
    }
    text
}

struct Call {
    tool: &'static str,
    agent: &'static str,
    tenant: bool,
    args: Value,
    purpose: &'static str,
    calls: i64,
    untrusted: bool,
    approved: bool,
}

fn random_call(rng: &mut StdRng) -> Call {
    let (tool, fields) = TOOLS
        .get(rng.gen_range(0..TOOLS.len()))
        .copied()
        .unwrap_or(TOOLS[0]);
    let mut args = Map::new();
    for &(name, ty, required) in fields {
        if !required && rng.gen_bool(0.5) {
            continue;
        }
        let value = match ty {
            Ty::Str => json!(pick(rng, &STRINGS)),
            Ty::Long => json!(pick_long(rng, &LONGS)),
            Ty::StrSet => {
                let n = rng.gen_range(0..3);
                json!((0..n).map(|_| pick(rng, &STRINGS)).collect::<Vec<_>>())
            }
        };
        args.insert(name.to_owned(), value);
    }
    Call {
        tool,
        agent: pick(rng, &["a0", "a1", "a2", "nobody"]),
        tenant: rng.gen_bool(0.5),
        args: Value::Object(args),
        purpose: pick(rng, &["audit", "work", "ab"]),
        calls: rng.gen_range(0..4),
        untrusted: rng.gen_bool(0.5),
        approved: rng.gen_bool(0.15),
    }
}

impl Call {
    fn tool_call(&self) -> ToolCall<'_> {
        ToolCall {
            agent: self.agent,
            user: Some("alice"),
            tenant: self.tenant.then_some("t1"),
            roles: vec!["agent"],
            tool: self.tool,
            args: &self.args,
            session: SessionFacts {
                id: "ses_1",
                purpose: self.purpose,
                calls: self.calls,
                max_calls: 10,
                user: "alice",
                collections: vec![],
                labels: if self.untrusted {
                    vec!["untrusted"]
                } else {
                    vec![]
                },
            },
            approval: self.approved.then(|| ApprovalFacts {
                id: "apr_1",
                approvers: vec!["bob"],
            }),
        }
    }
}

/// Guarded policies of the call's slice, and how many of them its guards left to evaluate.
fn guarded_and_left(engine: &PolicyEngine, call: &ToolCall<'_>) -> (usize, usize) {
    let Some(slice) = engine.tools.get(call.tool).and_then(|t| t.slice.as_ref()) else {
        return (0, 0);
    };
    let facts = Facts::new(call.args, &call.session, call.approval.is_some());
    let principal = uid("Agent", call.agent).unwrap();
    let sets = [Some(&slice.shared), slice.by_principal.get(&principal)];
    sets.into_iter()
        .flatten()
        .map(|s| (s.sizes().1, s.survivors(&facts).len()))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

const SETS: u64 = 300;
const CALLS: usize = 30;

#[test]
fn guarded_decisions_equal_whole_set_decisions() {
    let (mut compared, mut guarded, mut left) = (0usize, 0usize, 0usize);
    let (mut allowed, mut denied, mut errored) = (0usize, 0usize, 0usize);
    for seed in 0..SETS {
        let mut rng = StdRng::seed_from_u64(seed);
        let text = policy_set(&mut rng);
        let dir = dir_with(&[("random.cedar", &text)]);
        let engine = PolicyEngine::load(dir.path()).unwrap_or_else(|e| {
            panic!("seed {seed}: the generator wrote an invalid set: {e}\n{text}")
        });
        let calls: Vec<Call> = (0..CALLS).map(|_| random_call(&mut rng)).collect();
        let fast: Vec<Verdict> = calls
            .iter()
            .map(|c| {
                let call = c.tool_call();
                let (g, l) = guarded_and_left(&engine, &call);
                guarded += g;
                left += l;
                engine.decide(&call)
            })
            .collect();
        let reference = engine.without_slices();
        for (c, got) in calls.iter().zip(&fast) {
            let want = reference.decide(&c.tool_call());
            assert_eq!(
                got, &want,
                "seed {seed}\npolicies:\n{text}\ncall: {} as {} args {} purpose {} calls {} \
                 untrusted {} tenant {} approved {}",
                c.tool, c.agent, c.args, c.purpose, c.calls, c.untrusted, c.tenant, c.approved
            );
            match want.outcome {
                Outcome::Allow => allowed += 1,
                _ => denied += 1,
            }
            errored += usize::from(
                want.reasons
                    .iter()
                    .any(|r| r.code == ReasonCode::PolicyError),
            );
            compared += 1;
        }
    }
    eprintln!(
        "{compared} calls compared: {allowed} allowed, {denied} denied, {errored} with policy errors; \
         guards left {left} of {guarded} guarded policies to evaluate"
    );
    assert_eq!(compared, SETS as usize * CALLS);
    // The comparison proves something only if every kind of answer occurs and guards did skip.
    assert!(allowed > compared / 20, "{allowed} allowed of {compared}");
    assert!(denied > compared / 20, "{denied} denied of {compared}");
    assert!(errored > compared / 50, "{errored} errored of {compared}");
    assert!(
        guarded > 0 && left < guarded * 3 / 4,
        "guards left {left} of {guarded} guarded policies to evaluate"
    );
}
