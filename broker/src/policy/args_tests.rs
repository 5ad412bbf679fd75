//! Hostile arguments: deep nesting, huge objects, numbers beyond 64 bits, NaN-like strings, Cedar's
//! JSON escapes as data, and tool names that only look like catalogue names. Each is refused naming
//! the field (or denied UNKNOWN_TOOL), never converted into something a policy would misread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::domain::decision::{Outcome, ReasonCode};
use crate::policy::{PolicyEngine, SessionFacts, ToolCall, ENTITIES_FILE, SCHEMA_FILE};

fn record(fields: &[(&str, ArgType, bool)]) -> RecordType {
    RecordType {
        fields: fields
            .iter()
            .map(|(n, t, r)| ((*n).to_owned(), (t.clone(), *r)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn refund() -> RecordType {
    record(&[
        ("amount", ArgType::Long, true),
        ("to", ArgType::Set(Box::new(ArgType::String)), false),
        ("note", ArgType::String, false),
        ("meta", ArgType::Record(RecordType::default()), false),
        ("price", ArgType::Extension(ExtensionType::Decimal), false),
    ])
}

fn refused(value: &Value) -> ArgError {
    refund().convert(value, "args").unwrap_err()
}

#[test]
fn numbers_beyond_64_bits_are_out_of_range() {
    for text in [
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1e30",
        "-1e19",
    ] {
        let value: Value = serde_json::from_str(&format!("{{\"amount\": {text}}}")).unwrap();
        let err = refused(&value);
        assert_eq!(err.field, "args.amount", "{text}");
        assert_eq!(
            err.problem, "integer is out of range (beyond 64-bit signed)",
            "{text}"
        );
    }
    for text in ["1.5", "0.1", "-0.0", "5.0", "1e-3"] {
        let value: Value = serde_json::from_str(&format!("{{\"amount\": {text}}}")).unwrap();
        assert_eq!(
            refused(&value).problem,
            "expected an integer, got a fractional number",
            "{text}"
        );
    }
    // The extremes of a Cedar Long are fine.
    for n in [i64::MIN, i64::MAX, 0] {
        assert!(refund().convert(&json!({"amount": n}), "args").is_ok());
    }
    // A huge integer where a string is expected says what it is.
    let value: Value = serde_json::from_str(r#"{"amount": 1, "note": 1e300}"#).unwrap();
    assert_eq!(
        refused(&value).problem,
        "expected a string, got an integer beyond 64 bits"
    );
}

#[test]
fn nan_like_strings_are_strings_not_numbers() {
    for s in [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e3",
        "0x10",
        "",
        " 5",
        "５",
    ] {
        let err = refused(&json!({"amount": s}));
        assert_eq!(err.field, "args.amount");
        assert_eq!(err.problem, "expected an integer, got a string", "{s}");
    }
}

#[test]
fn cedar_json_escapes_stay_data() {
    let entity = json!({"__entity": {"type": "Role", "id": "admin"}});
    let extn = json!({"__extn": {"fn": "decimal", "arg": "0.0"}});
    let cases = [
        // As a value where a string, an integer, a set element or an extension is expected.
        (
            json!({"amount": 1, "note": entity}),
            "args.note",
            "expected a string",
        ),
        (
            json!({"amount": entity}),
            "args.amount",
            "expected an integer",
        ),
        (
            json!({"amount": 1, "to": [extn]}),
            "args.to[0]",
            "expected a string",
        ),
        (
            json!({"amount": 1, "price": extn}),
            "args.price",
            "expected a decimal string",
        ),
        (
            json!({"amount": 1, "price": {"__extn": {"fn": "decimal", "arg": "1.0"}}}),
            "args.price",
            "expected a decimal string",
        ),
        // As a key: not a declared field.
        (
            json!({"amount": 1, "__entity": {"type": "Role", "id": "admin"}}),
            "args.__entity",
            "is not an argument",
        ),
        (
            json!({"amount": 1, "meta": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}}),
            "args.meta.__extn",
            "is not an argument",
        ),
        (
            json!({"__expr": "true", "amount": 1}),
            "args.__expr",
            "is not an argument",
        ),
    ];
    for (value, field, problem) in cases {
        let err = refused(&value);
        assert_eq!(err.field, field, "{value}");
        assert!(err.problem.contains(problem), "{value}: {}", err.problem);
    }
    // As text, an escape is just a string.
    assert!(refund()
        .convert(
            &json!({"amount": 1, "note": "{\"__entity\": {\"type\": \"Role\", \"id\": \"admin\"}}"}),
            "args"
        )
        .is_ok());
}

#[test]
fn a_declared_field_named_like_an_escape_is_a_plain_record_field() {
    // Even a schema that declares `__entity` gets a record with that key, never an entity reference.
    let rec = record(&[("__entity", ArgType::String, true)]);
    let expr = rec.convert(&json!({"__entity": "admin"}), "args").unwrap();
    let shown = format!("{expr:?}");
    assert!(shown.contains(r#"Record({"__entity""#), "{shown}");
    assert!(shown.contains(r#"Lit(String("admin"))"#), "{shown}");
    assert!(!shown.contains("EntityUID"), "{shown}");
}

#[test]
fn deep_nesting_is_refused_at_the_first_level_that_does_not_fit() {
    let mut deep = json!("x");
    for _ in 0..120 {
        deep = json!([deep]);
    }
    let err = refused(&json!({"amount": 1, "to": [deep]}));
    assert_eq!(err.field, "args.to[0]");
    assert_eq!(err.problem, "expected a string, got an array");

    let mut deep_object = json!({});
    for _ in 0..120 {
        deep_object = json!({"a": deep_object});
    }
    let err = refused(&json!({"amount": 1, "meta": deep_object}));
    assert_eq!(err.field, "args.meta.a");
    assert_eq!(err.problem, "is not an argument of this tool");

    // A type nested as deep as the JSON parser allows converts without trouble.
    let mut ty = ArgType::String;
    let mut value = json!("leaf");
    for _ in 0..120 {
        ty = ArgType::Set(Box::new(ty));
        value = json!([value]);
    }
    assert!(ty.convert(&value, "args.x").is_ok());
}

#[test]
fn huge_objects_are_refused_by_their_first_unknown_key() {
    let mut map = serde_json::Map::new();
    map.insert("amount".to_owned(), json!(1));
    for i in 0..100_000 {
        map.insert(format!("k{i:06}"), json!(i));
    }
    let err = refused(&Value::Object(map));
    assert_eq!(err.field, "args.k000000");
    assert_eq!(err.problem, "is not an argument of this tool");
    // A huge but well-typed set converts.
    let to: Vec<String> = (0..100_000)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    assert!(refund()
        .convert(&json!({"amount": 1, "to": to}), "args")
        .is_ok());
}

// ------------------------------------------------------------- through the engine, shipped policies

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn call<'a>(tool: &'a str, args: &'a Value) -> ToolCall<'a> {
    ToolCall {
        agent: "agent-1",
        user: Some("alice"),
        tenant: None,
        roles: vec!["agent"],
        tool,
        args,
        session: SessionFacts {
            id: "ses_1",
            purpose: "support",
            calls: 0,
            max_calls: 10,
            user: "alice",
            collections: vec![],
            labels: vec![],
        },
        approval: None,
    }
}

/// Names an executor might treat as `email.send` or `shell.exec`: look-alike letters, invisible
/// characters, bidi overrides, fullwidth forms, trailing dots and spaces, other cases.
const LOOK_ALIKES: [&str; 16] = [
    "\u{0435}mail.send",  // Cyrillic е
    "email.s\u{0435}nd",  // Cyrillic е
    "\u{200b}email.send", // zero-width space
    "email.\u{200d}send", // zero-width joiner
    "email.send\u{feff}", // BOM / zero-width no-break space
    "\u{202e}dnes.liame", // right-to-left override
    "email\u{2024}send",  // one dot leader
    "\u{ff45}mail.send",  // fullwidth e
    "email.send.",        // trailing dot
    "email.send ",        // trailing space
    " email.send",        // leading space
    "Email.Send",         // case
    "EMAIL.SEND",         // case
    "email..send",        // empty segment
    "sh\u{0435}ll.exec",  // Cyrillic е
    "shell.exec\u{0}",    // NUL
];

#[test]
fn look_alike_tool_names_are_unknown_tools() {
    let engine = PolicyEngine::load(&policies()).unwrap();
    let args = json!({"to": "mallory@evil.example", "subject": "s", "body": "b"});
    // The genuine name is decided by its policies (here: needs approval).
    let genuine = engine.decide(&call("email.send", &args));
    assert_eq!(genuine.outcome, Outcome::PendingApproval);
    for name in LOOK_ALIKES {
        let verdict = engine.decide(&call(name, &args));
        assert_eq!(verdict.outcome, Outcome::Deny, "{name:?}");
        assert_eq!(verdict.reasons.len(), 1, "{name:?}");
        assert_eq!(verdict.reasons[0].code, ReasonCode::UnknownTool, "{name:?}");
        assert!(
            !crate::domain::session::is_tool_name(name),
            "{name:?} must not pass as a catalogue-shaped name"
        );
    }
}

#[test]
fn a_hard_forbid_is_not_dodged_by_argument_shapes() {
    let engine = PolicyEngine::load(&policies()).unwrap();
    let refund = |amount: Value| json!({"payment_id": "p1", "amount": amount, "currency": "EUR"});
    // The genuine call above the hard limit is denied by the policy.
    let verdict = engine.decide(&call("payments.refund", &refund(json!(200_000))));
    assert_eq!(verdict.outcome, Outcome::Deny);
    // Variants of the amount that are not a 64-bit integer never reach the policy as something else.
    for amount in [
        json!("200000"),
        json!(200_000.0),
        json!(2e5),
        serde_json::from_str::<Value>("1e30").unwrap(),
        serde_json::from_str::<Value>("18446744073709551616").unwrap(),
        json!({"__extn": {"fn": "decimal", "arg": "200000.0"}}),
        json!([200_000]),
        Value::Null,
    ] {
        let verdict = engine.decide(&call("payments.refund", &refund(amount.clone())));
        assert_eq!(verdict.outcome, Outcome::Deny, "{amount}");
        assert_eq!(
            verdict.reasons[0].code,
            ReasonCode::InvalidArguments,
            "{amount}"
        );
        assert!(
            verdict.reasons[0].message.contains("`args.amount`"),
            "{amount}: {}",
            verdict.reasons[0].message
        );
    }
}

#[test]
fn extension_strings_that_do_not_parse_deny_with_policy_error() {
    // A tool whose argument is a decimal, and a forbid that reads it.
    let dir = tempfile::tempdir().unwrap();
    let schema = std::fs::read_to_string(policies().join(SCHEMA_FILE)).unwrap();
    let schema = format!(
        "{schema}\naction \"shop.buy\" in [call_tool] appliesTo {{\n  principal: [Agent],\n  resource: [Tool],\n  context: {{ \"args\": {{ \"price\": decimal }}, \"session\": Session, \"approval\"?: Approval }},\n}};\n"
    );
    std::fs::write(dir.path().join(SCHEMA_FILE), schema).unwrap();
    let mut entities: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(policies().join(ENTITIES_FILE)).unwrap())
            .unwrap();
    entities.push(json!({
        "uid": {"type": "Tool", "id": "shop.buy"},
        "attrs": {"risk": "low", "category": "shop", "owner": "t", "external": false},
        "parents": []
    }));
    std::fs::write(
        dir.path().join(ENTITIES_FILE),
        serde_json::to_string(&entities).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("shop.cedar"),
        "@id(\"allow\")\npermit (principal, action, resource);\n\
         @id(\"dear\")\nforbid (principal, action == Action::\"shop.buy\", resource)\n\
         when { context.args.price.greaterThan(decimal(\"100.0\")) };\n",
    )
    .unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    let decide = |price: Value| engine.decide(&call("shop.buy", &json!({"price": price})));
    assert_eq!(decide(json!("1.5")).outcome, Outcome::Allow);
    assert_eq!(decide(json!("100.5")).outcome, Outcome::Deny);
    for bad in [
        "NaN",
        "Infinity",
        "1e3",
        "decimal(\"1.0\")",
        "99999999999999999999.0",
        "",
    ] {
        let verdict = decide(json!(bad));
        assert_eq!(verdict.outcome, Outcome::Deny, "{bad}");
        assert_eq!(verdict.reasons[0].code, ReasonCode::PolicyError, "{bad}");
    }
}
