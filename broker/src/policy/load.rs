//! Reads a policy directory: `schema.cedarschema`, `entities.json` and every `*.cedar` file below it,
//! validates strictly, and reports problems as `file:line:column: message` for the policy author.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use super::Error;

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const ENTITIES_FILE: &str = "entities.json";

/// What a policy directory holds, parsed and strictly validated.
pub struct Loaded {
    pub schema: Schema,
    pub schema_json: serde_json::Value,
    pub entities: Entities,
    pub policies: PolicySet,
    /// SHA-256 over the schema, entities and every policy file with its path.
    pub version: String,
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The location of a diagnostic's first label within `text`, if it has one.
fn located(diag: &dyn Diagnostic, text: &str) -> (usize, usize) {
    diag.labels()
        .and_then(|mut labels| labels.next())
        .map_or((1, 1), |label| line_col(text, label.offset()))
}

fn cedar_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            cedar_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "cedar") {
            out.push(p);
        }
    }
    Ok(())
}

pub fn load(dir: &Path) -> Result<Loaded, Error> {
    let mut hasher = Sha256::new();
    let mut hash_part = |name: &str, text: &str| {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    };

    let schema_path = dir.join(SCHEMA_FILE);
    let schema_text = read(&schema_path)?;
    hash_part(SCHEMA_FILE, &schema_text);
    let schema_err = |diag: &dyn Diagnostic, message: String| {
        let (line, column) = located(diag, &schema_text);
        Error::Source {
            path: schema_path.clone(),
            line,
            column,
            message,
        }
    };
    let (schema, _warnings) =
        Schema::from_cedarschema_str(&schema_text).map_err(|e| schema_err(&e, e.to_string()))?;
    let (schema_json, _) = cedar_policy::schema_str_to_json_with_resolved_types(&schema_text)
        .map_err(|e| schema_err(&e, e.to_string()))?;

    let entities_path = dir.join(ENTITIES_FILE);
    let entities_text = read(&entities_path)?;
    hash_part(ENTITIES_FILE, &entities_text);
    let entities =
        Entities::from_json_str(&entities_text, Some(&schema)).map_err(|e| Error::Source {
            path: entities_path.clone(),
            line: 1,
            column: 1,
            message: full_message(&e),
        })?;

    let mut files = Vec::new();
    cedar_files(dir, &mut files)?;
    let mut policies = PolicySet::new();
    // Where each policy came from: its file's index in `sources` (each file's text kept once).
    let mut origin: HashMap<PolicyId, usize> = HashMap::new();
    let mut sources: Vec<(PathBuf, String)> = Vec::with_capacity(files.len());
    for path in &files {
        let text = read(path)?;
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        hash_part(&rel, &text);
        let parsed = PolicySet::from_str(&text).map_err(|e| {
            let (line, column) = located(&e, &text);
            Error::Source {
                path: path.clone(),
                line,
                column,
                message: full_message(&e),
            }
        })?;
        if parsed.templates().next().is_some() {
            return Err(Error::Source {
                path: path.clone(),
                line: 1,
                column: 1,
                message: "policy templates are not supported".into(),
            });
        }
        for policy in parsed.policies() {
            let Some(id) = policy.annotation("id") else {
                let first_line = policy
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let (line, column) = text
                    .find(first_line.as_str())
                    .map_or((1, 1), |o| line_col(&text, o));
                return Err(Error::Source {
                    path: path.clone(),
                    line,
                    column,
                    message: format!(
                        "policy `{first_line}` has no `@id(\"...\")` annotation; ids name the deciding policy in every decision"
                    ),
                });
            };
            // Cedar keeps no public location for a policy; its `@id` annotation is where authors look.
            // Found only for an error: searching every policy's file for it is quadratic in its size.
            let at = || {
                text.rfind(&format!("\"{id}\""))
                    .map_or((1, 1), |o| line_col(&text, o))
            };
            let id = PolicyId::new(id);
            if let Some(&first) = origin.get(&id) {
                let first = sources.get(first).map_or(path, |(p, _)| p);
                let (line, column) = at();
                return Err(Error::Source {
                    path: path.clone(),
                    line,
                    column,
                    message: format!("policy id `{id}` is already used in {}", first.display()),
                });
            }
            policies.add(policy.new_id(id.clone())).map_err(|e| {
                let (line, column) = at();
                Error::Source {
                    path: path.clone(),
                    line,
                    column,
                    message: e.to_string(),
                }
            })?;
            origin.insert(id, sources.len());
        }
        sources.push((path.clone(), text));
    }
    if origin.is_empty() {
        return Err(Error::NoPolicies {
            dir: dir.to_path_buf(),
        });
    }

    let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    if let Some(err) = validation.validation_errors().next() {
        let (path, text) = origin
            .get(err.policy_id())
            .and_then(|&i| sources.get(i))
            .map_or((dir.to_path_buf(), ""), |(p, t)| (p.clone(), t.as_str()));
        let (line, column) = located(err, text);
        return Err(Error::Source {
            path,
            line,
            column,
            message: format!("policy `{}`: {}", err.policy_id(), full_message(err)),
        });
    }

    Ok(Loaded {
        schema,
        schema_json,
        entities,
        policies,
        version: hex::encode(hasher.finalize()),
    })
}

/// The error with its help text, which is where Cedar says what to do about it.
fn full_message(e: &(dyn Diagnostic + 'static)) -> String {
    match e.help() {
        Some(help) => format!("{e} ({help})"),
        None => e.to_string(),
    }
}
