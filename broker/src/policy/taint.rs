//! Taint on filter: the labels a retrieval pre-filter can bring into a session.
//!
//! The broker never sees what a vector-store query run with the pre-filter returns, so it taints the
//! session when it answers: every label the policies test that a document the filter admits may carry
//! joins the session's labels at once (a pipeline that reports what it got adds the rest). Which labels
//! the policies test is read once per load from each policy's EST, with the direction each test works in:
//!
//! - *restricting*: more labels can only allow less. `labels.contains("l")`, `labels.containsAny([..])`,
//!   `labels.containsAll([..])` or `[..].containsAny(labels)` where a true value denies (in a `forbid`'s
//!   `when`, a `permit`'s `unless`, under an even number of `!`). These are the labels the filter adds.
//! - *granting*: a true value may allow (a `permit`'s `when`, a `forbid`'s `unless`). Adding such a label
//!   for a document the session may not have read could allow a call; leaving it out only denies more,
//!   so it is never added on a filter.
//! - both (a label tested both ways, or under an `if`'s condition or an operator other than `&&`, `||`,
//!   `!`): neither adding nor leaving it out is safe, and neither is a policy that reads the labels in
//!   a way that names none monotonically (`isEmpty()`, `==`, `[..].containsAll(labels)`, the session
//!   record as a whole, ...). A filter that may admit a document carrying such a label, or any filter
//!   under such a policy, is not answered as such: the broker answers `false`, incomplete, and the
//!   pipeline post-filters (`AuthorizeRetrieval` records exactly what the documents carry).
//!
//! Whether a filter may admit a document carrying label `l` is decided on the filter's JSON with
//! three-valued logic: `{"contains": ["labels", l]}` is true, every other atom unknown; only a filter
//! that comes out definitely false cannot admit one (e.g. one with `{"not": {"contains": ["labels",
//! l]}}` in a conjunction, as `exclude_labels` adds). Unknown counts as "may": the answer errs towards
//! tainting.

use std::collections::BTreeSet;

use cedar_policy::{Effect, PolicySet};
use serde_json::Value;

/// The `Document` attribute holding a document's labels.
pub const LABELS_ATTRIBUTE: &str = "labels";

/// Which way a test of the labels works, as the policy uses its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// True denies (or allows less).
    Restricts,
    /// True may allow.
    Grants,
    /// Either.
    Both,
}

impl Direction {
    fn flipped(self) -> Self {
        match self {
            Direction::Restricts => Direction::Grants,
            Direction::Grants => Direction::Restricts,
            Direction::Both => Direction::Both,
        }
    }
}

/// How the loaded policies read `context.session.labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelReads {
    restricting: BTreeSet<String>,
    granting: BTreeSet<String>,
    /// The first policy (by id) that reads the labels in a way that names no label monotonically.
    opaque: Option<String>,
}

impl LabelReads {
    /// Reads every policy of `policies`.
    pub fn of(policies: &PolicySet) -> Self {
        let mut reads = LabelReads::default();
        let mut sorted: Vec<_> = policies.policies().collect();
        sorted.sort_by(|a, b| a.id().cmp(b.id()));
        for p in sorted {
            let id = p.id().to_string();
            let Ok(est) = p.to_json() else {
                reads.opaque.get_or_insert(id);
                continue;
            };
            reads.policy(&id, &est, p.effect());
        }
        reads
    }

    /// The labels a session answered `filter` gets, sorted; or why no filter may be answered (then
    /// answer `false`). A filter that admits nothing adds nothing and is always fine.
    pub fn taint(&self, filter: &Value) -> Result<Vec<String>, String> {
        if eval(filter, None) == T::False {
            return Ok(Vec::new());
        }
        if let Some(id) = &self.opaque {
            return Err(format!(
                "policy `{id}` reads `context.session.labels` in a way that names no label (only \
                 `contains`, `containsAny` and `containsAll` with literal labels can be tainted for)"
            ));
        }
        let may_admit = |l: &&String| eval(filter, Some(l)) != T::False;
        if let Some(l) = self
            .restricting
            .intersection(&self.granting)
            .find(may_admit)
        {
            return Err(format!(
                "label `{l}` is tested both ways by the policies (as a reason to deny and to allow): \
                 the filter may admit documents carrying it"
            ));
        }
        Ok(self
            .restricting
            .iter()
            .filter(|l| !self.granting.contains(*l))
            .filter(may_admit)
            .cloned()
            .collect())
    }

    fn policy(&mut self, id: &str, est: &Value, effect: Effect) {
        let Some(clauses) = est.get("conditions").and_then(Value::as_array) else {
            // No conditions: nothing reads the labels.
            return;
        };
        for c in clauses {
            let when = match c.get("kind").and_then(Value::as_str) {
                Some("when") => true,
                Some("unless") => false,
                _ => {
                    self.opaque.get_or_insert_with(|| id.to_owned());
                    continue;
                }
            };
            let direction = match (effect, when) {
                (Effect::Forbid, true) | (Effect::Permit, false) => Direction::Restricts,
                (Effect::Permit, true) | (Effect::Forbid, false) => Direction::Grants,
            };
            match c.get("body") {
                Some(body) => self.boolean(id, body, direction),
                None => {
                    self.opaque.get_or_insert_with(|| id.to_owned());
                }
            }
        }
    }

    /// A boolean expression whose truth works in `direction`.
    fn boolean(&mut self, id: &str, e: &Value, direction: Direction) {
        let Some((op, arg)) = single(e) else {
            return self.other(id, e);
        };
        match op {
            "&&" | "||" => {
                for side in ["left", "right"] {
                    if let Some(s) = arg.get(side) {
                        self.boolean(id, s, direction);
                    }
                }
            }
            "!" => match arg.get("arg") {
                Some(a) => self.boolean(id, a, direction.flipped()),
                None => self.other(id, arg),
            },
            "if-then-else" => {
                if let Some(c) = arg.get("if") {
                    self.boolean(id, c, Direction::Both);
                }
                for branch in ["then", "else"] {
                    if let Some(b) = arg.get(branch) {
                        self.boolean(id, b, direction);
                    }
                }
            }
            "contains" | "containsAny" | "containsAll" => match monotone_test(op, arg) {
                Some(labels) => self.record(labels, direction),
                None => self.other(id, arg),
            },
            _ => self.other(id, e),
        }
    }

    fn record(&mut self, labels: Vec<String>, direction: Direction) {
        if direction != Direction::Grants {
            self.restricting.extend(labels.iter().cloned());
        }
        if direction != Direction::Restricts {
            self.granting.extend(labels);
        }
    }

    /// Any other expression: label tests inside it work both ways; reading the labels (or the session
    /// or the context as a whole) any other way is opaque.
    fn other(&mut self, id: &str, e: &Value) {
        match e {
            Value::Array(items) => items.iter().for_each(|i| self.other(id, i)),
            Value::Object(members) => {
                if let Some((op, arg)) = single(e) {
                    match context_path(e) {
                        Some(path) if reads_labels(&path) => {
                            self.opaque.get_or_insert_with(|| id.to_owned());
                            return;
                        }
                        // `context.args.x`, `context.session.user`, ...: no labels.
                        Some(_) => return,
                        None => {}
                    }
                    if op == "has" && arg.get("left").and_then(context_path).is_some() {
                        // `context has approval`, `context.session has labels`: presence only.
                        return;
                    }
                    if matches!(op, "contains" | "containsAny" | "containsAll") {
                        if let Some(labels) = monotone_test(op, arg) {
                            return self.record(labels, Direction::Both);
                        }
                    }
                }
                members.values().for_each(|v| self.other(id, v));
            }
            _ => {}
        }
    }
}

/// The single key of a JSON object, with its value.
fn single(v: &Value) -> Option<(&str, &Value)> {
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    o.iter().next().map(|(k, v)| (k.as_str(), v))
}

/// `context.a.b...` as `[a, b, ...]` (`[]` for `context` itself); `None` for anything else.
fn context_path(e: &Value) -> Option<Vec<&str>> {
    match single(e)? {
        ("Var", Value::String(v)) if v == "context" => Some(Vec::new()),
        (".", arg) => {
            let mut path = context_path(arg.get("left")?)?;
            path.push(arg.get("attr")?.as_str()?);
            Some(path)
        }
        _ => None,
    }
}

/// Whether a value at `path` in the context holds the session's labels: the labels themselves, the
/// session record or the whole context.
fn reads_labels(path: &[&str]) -> bool {
    matches!(path, [] | ["session"] | ["session", "labels"])
}

fn is_labels(e: &Value) -> bool {
    context_path(e).is_some_and(|p| p == ["session", "labels"])
}

/// The labels a test that grows with the session's labels names: `labels.contains("l")`,
/// `labels.containsAny([..])`, `labels.containsAll([..])`, `[..].containsAny(labels)`, each with
/// literal strings only.
fn monotone_test(op: &str, arg: &Value) -> Option<Vec<String>> {
    let (left, right) = (arg.get("left")?, arg.get("right")?);
    match op {
        "contains" if is_labels(left) => string_literal(right).map(|s| vec![s]),
        "containsAny" | "containsAll" if is_labels(left) => string_set(right),
        "containsAny" if is_labels(right) => string_set(left),
        _ => None,
    }
}

fn string_literal(e: &Value) -> Option<String> {
    match single(e)? {
        ("Value", Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn string_set(e: &Value) -> Option<Vec<String>> {
    match single(e)? {
        ("Set", Value::Array(items)) => items.iter().map(string_literal).collect(),
        ("Value", Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// Three-valued truth of a filter over documents carrying a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    True,
    False,
    Unknown,
}

/// Whether `filter` admits documents whose labels include `label` (`None`: any document).
fn eval(filter: &Value, label: Option<&str>) -> T {
    let Some((op, arg)) = single(filter) else {
        return match filter {
            Value::Bool(true) => T::True,
            Value::Bool(false) => T::False,
            _ => T::Unknown,
        };
    };
    let parts = || arg.as_array().into_iter().flatten().map(|f| eval(f, label));
    match op {
        "and" if arg.is_array() => parts().fold(T::True, |acc, t| match (acc, t) {
            (T::False, _) | (_, T::False) => T::False,
            (T::True, T::True) => T::True,
            _ => T::Unknown,
        }),
        "or" if arg.is_array() => parts().fold(T::False, |acc, t| match (acc, t) {
            (T::True, _) | (_, T::True) => T::True,
            (T::False, T::False) => T::False,
            _ => T::Unknown,
        }),
        "not" => match eval(arg, label) {
            T::True => T::False,
            T::False => T::True,
            T::Unknown => T::Unknown,
        },
        "contains" => match (arg.get(0).and_then(Value::as_str), arg.get(1), label) {
            (Some(LABELS_ATTRIBUTE), Some(Value::String(v)), Some(l)) if v == l => T::True,
            _ => T::Unknown,
        },
        _ => T::Unknown,
    }
}

#[cfg(test)]
#[path = "taint_tests.rs"]
mod tests;
