//! Decision fixtures: JSON files under `<policies>/fixtures/` stating a request and the decision and
//! deciding policies expected for it. They run in the tests and through `broker policy test`.
//!
//! A request is a tool call (`tool` and `args`) or the retrieval of one document (`document`: its
//! attributes); a retrieval fixture also checks that the pre-filter, when complete, admits the document
//! exactly when the post-filter allows it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Caller, PolicyEngine, SessionFacts, ToolCall, Verdict};
use crate::domain::decision::{Outcome, ReasonCode};

pub const FIXTURES_DIR: &str = "fixtures";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub name: String,
    pub agent: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// A retrieval candidate's attributes, instead of `tool` and `args`.
    #[serde(default)]
    pub document: Option<serde_json::Value>,
    #[serde(default)]
    pub session: FixtureSession,
    /// People approved the call: `context.approval`.
    #[serde(default)]
    pub approval: Option<FixtureApproval>,
    pub expect: Expect,
}

fn default_roles() -> Vec<String> {
    vec!["agent".to_owned()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixtureSession {
    pub purpose: String,
    pub collections: Vec<String>,
    pub labels: Vec<String>,
    pub calls: i64,
    pub max_calls: i64,
}

impl Default for FixtureSession {
    fn default() -> Self {
        Self {
            purpose: "fixture".to_owned(),
            calls: 0,
            max_calls: 100,
            collections: Vec::new(),
            labels: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureApproval {
    pub id: String,
    pub approvers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub outcome: Outcome,
    /// The deciding policy ids, in any order; empty when no policy decided.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Reason codes that must all appear, when given.
    #[serde(default)]
    pub codes: Vec<String>,
}

#[derive(Debug)]
pub struct FixtureResult {
    pub file: PathBuf,
    pub name: String,
    /// Empty when the fixture passed; otherwise what differed.
    pub failure: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {message}", path.display())]
    Read { path: PathBuf, message: String },
}

/// Runs every `*.json` fixture file under `dir` against `engine`.
pub fn run_dir(engine: &PolicyEngine, dir: &Path) -> Result<Vec<FixtureResult>, Error> {
    let read_err = |path: &Path, e: &dyn std::fmt::Display| Error::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut results = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| read_err(&file, &e))?;
        let fixtures: Vec<Fixture> =
            serde_json::from_str(&text).map_err(|e| read_err(&file, &e))?;
        for f in fixtures {
            let failure = check(engine, &f);
            results.push(FixtureResult {
                file: file.clone(),
                name: f.name,
                failure,
            });
        }
    }
    Ok(results)
}

fn check(engine: &PolicyEngine, f: &Fixture) -> Option<String> {
    let session = SessionFacts {
        id: "ses_fixture",
        purpose: &f.session.purpose,
        calls: f.session.calls,
        max_calls: f.session.max_calls,
        user: f.user.as_deref().unwrap_or_default(),
        collections: f.session.collections.iter().map(String::as_str).collect(),
        labels: f.session.labels.iter().map(String::as_str).collect(),
    };
    let caller = Caller {
        agent: &f.agent,
        user: f.user.as_deref(),
        tenant: f.tenant.as_deref(),
        roles: f.roles.iter().map(String::as_str).collect(),
    };
    let verdict = match (&f.tool, &f.args, &f.document) {
        (Some(tool), Some(args), None) => engine.decide(&ToolCall {
            agent: caller.agent,
            user: caller.user,
            tenant: caller.tenant,
            roles: caller.roles.clone(),
            tool,
            args,
            session: session.clone(),
            approval: f.approval.as_ref().map(|a| super::ApprovalFacts {
                id: &a.id,
                approvers: a.approvers.iter().map(String::as_str).collect(),
            }),
        }),
        (None, None, Some(document)) if f.approval.is_none() => {
            let Some(verdict) = engine
                .decide_retrieval(&caller, &session, &[("doc_fixture", document)])
                .pop()
            else {
                return Some("no verdict for the document".to_owned());
            };
            if let Some(problem) = filter_disagrees(engine, &caller, &session, document, &verdict) {
                return Some(problem);
            }
            verdict
        }
        _ => {
            return Some(
                "a fixture states either `tool` and `args`, or `document` (without `approval`)"
                    .to_owned(),
            )
        }
    };
    let mut got: Vec<&str> = verdict.policy_ids();
    got.sort_unstable();
    let mut want: Vec<&str> = f.expect.policies.iter().map(String::as_str).collect();
    want.sort_unstable();
    let codes: Vec<&str> = verdict.reasons.iter().map(|r| r.code.as_str()).collect();
    let missing_codes: Vec<&String> = f
        .expect
        .codes
        .iter()
        .filter(|c| !codes.contains(&c.as_str()))
        .collect();
    if verdict.outcome != f.expect.outcome || got != want || !missing_codes.is_empty() {
        let messages: Vec<&str> = verdict.reasons.iter().map(|r| r.message.as_str()).collect();
        Some(format!(
            "expected {} by {:?} with codes {:?}, got {} by {:?} with codes {:?} ({})",
            f.expect.outcome.as_str(),
            want,
            f.expect.codes,
            verdict.outcome.as_str(),
            got,
            codes,
            messages.join("; ")
        ))
    } else {
        None
    }
}

/// A complete pre-filter must admit the document exactly when the post-filter allowed it.
fn filter_disagrees(
    engine: &PolicyEngine,
    caller: &Caller<'_>,
    session: &SessionFacts<'_>,
    document: &serde_json::Value,
    verdict: &Verdict,
) -> Option<String> {
    // The filter speaks of well-typed documents; the post-filter denies the others by itself.
    let ill_typed = verdict
        .reasons
        .iter()
        .any(|r| r.code == ReasonCode::InvalidArguments);
    let filter = engine.retrieval_filter(caller, session);
    if !filter.complete || ill_typed {
        return None;
    }
    let allowed = verdict.outcome == Outcome::Allow;
    match super::filter_admits(&filter.filter, document) {
        Ok(admits) if admits == allowed => None,
        Ok(admits) => Some(format!(
            "the pre-filter {} the document, the post-filter {} it (filter {})",
            if admits { "admits" } else { "withholds" },
            if allowed { "allows" } else { "denies" },
            filter.filter
        )),
        Err(e) => Some(format!("the pre-filter cannot read the document: {e}")),
    }
}
