//! `@sensitive` on a tool's argument attributes in the schema: read by the catalogue, at any depth.

use std::path::Path;

use serde_json::json;

use super::{PolicyEngine, ENTITIES_FILE, SCHEMA_FILE};
use crate::domain::redaction::{Redactor, REDACTED};

/// The example policies plus a `vault.login` tool whose schema marks arguments `@sensitive`.
fn engine_with_vault() -> (tempfile::TempDir, PolicyEngine) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&example).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cedar") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let schema = std::fs::read_to_string(example.join(SCHEMA_FILE)).unwrap()
        + r#"
type Factor = { @sensitive("an otp seed") "seed": String, "kind": String };
action "vault.login" in [call_tool] appliesTo {
  principal: [Agent],
  resource: [Tool],
  context: {
    "args": {
      "account": String,
      "login": { @sensitive "phrase": String, "hint": String },
      "factors": Set<Factor>,
      @sensitive "recovery"?: { "words": Set<String> },
    },
    "session": Session,
    "approval"?: Approval,
  },
};
"#;
    std::fs::write(dir.path().join(SCHEMA_FILE), schema).unwrap();
    let mut entities: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example.join(ENTITIES_FILE)).unwrap())
            .unwrap();
    entities.as_array_mut().unwrap().push(json!({
        "uid": {"type": "Tool", "id": "vault.login"},
        "attrs": {"risk": "high", "category": "identity", "owner": "security", "external": false},
        "parents": []
    }));
    std::fs::write(dir.path().join(ENTITIES_FILE), entities.to_string()).unwrap();
    let engine = PolicyEngine::load(dir.path()).unwrap();
    (dir, engine)
}

#[test]
fn schema_annotations_mark_arguments_sensitive_at_any_depth() {
    let (_dir, engine) = engine_with_vault();
    let sensitive = engine.sensitive_arguments("vault.login").unwrap();
    assert_eq!(
        sensitive.paths(),
        ["factors.seed", "login.phrase", "recovery"]
    );
    assert!(engine.sensitive_arguments("web.search").unwrap().is_empty());
    assert!(engine.sensitive_arguments("no.such.tool").is_none());

    let args = json!({
        "account": "alice",
        "login": {"phrase": "correct horse", "hint": "stable"},
        "factors": [{"seed": "JBSWY3DP", "kind": "totp"}, {"seed": "KRSXG5CT", "kind": "hotp"}],
        "recovery": {"words": ["a", "b"]},
    });
    assert_eq!(
        Redactor::new(&[]).redact(&args, Some(sensitive)),
        json!({
            "account": "alice",
            "login": {"phrase": REDACTED, "hint": "stable"},
            "factors": [{"seed": REDACTED, "kind": "totp"}, {"seed": REDACTED, "kind": "hotp"}],
            "recovery": REDACTED,
        })
    );
}
