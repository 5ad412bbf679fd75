//! Condition guards: the part of a policy's conditions that can be decided natively, exactly as Cedar
//! would, from the typed call. A guard that is definitely false means the policy cannot be satisfied and
//! raises no error, so it need not be evaluated; anything else leaves the policy to Cedar.
//!
//! A policy's conditions (`when { a } unless { b }` is `a && !b`, in order) are read from its EST into a
//! [`Cond`] tree. Forms decided natively: `context.args.F` and `context.session.F` compared with a
//! literal (`==`, `!=`, `<`, `<=`, `>`, `>=` on Long), `like`, `.contains(literal)` on a set,
//! `context.args has F`, `context has approval`, `&&`, `||`, `!`; `resource.A` is the tool's entity,
//! static per tool, so it folds to a constant. Everything else is [`Cond::Opaque`]: not decided.
//!
//! Soundness: [`Cond::decide`] returns `Some(b)` only when Cedar evaluates that expression to `b`
//! without error; it follows Cedar's left-to-right short-circuit, so `opaque && g` is never decided
//! (the opaque part could error) while `g && opaque` is `Some(false)` when `g` is false. Scope
//! constraints cannot error, and a false condition leaves a policy unsatisfied without an error.

use std::collections::HashSet;

use cedar_policy::{Entity, EvalResult};
use serde_json::{Map, Value};

use super::args::{ArgType, RecordType};
use super::filter::CmpOp;
use super::SessionFacts;

/// The fields of `context.session` as the engine builds them (`session_record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum SessionField {
    Id,
    Purpose,
    Calls,
    MaxCalls,
    User,
    Collections,
    Labels,
}

impl SessionField {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "id" => Self::Id,
            "purpose" => Self::Purpose,
            "calls" => Self::Calls,
            "max_calls" => Self::MaxCalls,
            "user" => Self::User,
            "collections" => Self::Collections,
            "labels" => Self::Labels,
            _ => return None,
        })
    }

    fn ty(self) -> Ty {
        match self {
            Self::Id | Self::Purpose | Self::User => Ty::Str,
            Self::Calls | Self::MaxCalls => Ty::Long,
            Self::Collections | Self::Labels => Ty::StrSet,
        }
    }
}

/// Where a guard reads a value from the call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Source {
    /// `context.args.F`.
    Arg(String),
    /// `context.session.F`.
    Session(SessionField),
}

/// A literal a guard compares with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Lit {
    Str(String),
    Long(i64),
    Bool(bool),
}

/// A value read from the call, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Got<'a> {
    Str(&'a str),
    Long(i64),
    Bool(bool),
}

impl Got<'_> {
    /// `==` between a value and a literal of the same type; `None` across types (not expected: the
    /// guard was built for the source's declared type).
    fn equals(self, lit: &Lit) -> Option<bool> {
        match (self, lit) {
            (Got::Str(a), Lit::Str(b)) => Some(a == b),
            (Got::Long(a), Lit::Long(b)) => Some(a == *b),
            (Got::Bool(a), Lit::Bool(b)) => Some(a == *b),
            _ => None,
        }
    }

    pub(super) fn to_lit(self) -> Lit {
        match self {
            Got::Str(s) => Lit::Str(s.to_owned()),
            Got::Long(n) => Lit::Long(n),
            Got::Bool(b) => Lit::Bool(b),
        }
    }
}

/// The type of a value, as far as guards care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Long,
    Bool,
    StrSet,
    LongSet,
    BoolSet,
    Other,
}

impl Ty {
    fn of(t: &ArgType) -> Self {
        match t {
            ArgType::String => Ty::Str,
            ArgType::Long => Ty::Long,
            ArgType::Bool => Ty::Bool,
            ArgType::Set(e) => match **e {
                ArgType::String => Ty::StrSet,
                ArgType::Long => Ty::LongSet,
                ArgType::Bool => Ty::BoolSet,
                _ => Ty::Other,
            },
            _ => Ty::Other,
        }
    }

    fn of_lit(l: &Lit) -> Self {
        match l {
            Lit::Str(_) => Ty::Str,
            Lit::Long(_) => Ty::Long,
            Lit::Bool(_) => Ty::Bool,
        }
    }

    fn element(self) -> Option<Ty> {
        match self {
            Ty::StrSet => Some(Ty::Str),
            Ty::LongSet => Some(Ty::Long),
            Ty::BoolSet => Some(Ty::Bool),
            _ => None,
        }
    }
}

/// A `like` pattern: the literal parts between wildcards (`a*b` is `["a", "b"]`, `*a` is `["", "a"]`);
/// an escaped `\*` is a literal star inside a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    parts: Vec<String>,
}

impl Pattern {
    /// From the EST's elements: `"Wildcard"` or `{"Literal": "..."}`.
    fn from_est(elems: &[Value]) -> Option<Self> {
        let mut parts = vec![String::new()];
        for e in elems {
            match e {
                Value::String(w) if w == "Wildcard" => parts.push(String::new()),
                Value::Object(o) => {
                    let lit = o.get("Literal").and_then(Value::as_str)?;
                    parts.last_mut()?.push_str(lit);
                }
                _ => return None,
            }
        }
        Some(Self { parts })
    }

    #[cfg(test)]
    pub(super) fn new(parts: &[&str]) -> Self {
        Self {
            parts: parts.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    /// Cedar's `like`: each wildcard matches any sequence of characters, the literal parts match in
    /// order. The first part anchors at the start, the last at the end, the middle ones are taken
    /// leftmost (which finds a match whenever there is one).
    pub(super) fn matches(&self, text: &str) -> bool {
        let Some((first, rest)) = self.parts.split_first() else {
            return text.is_empty();
        };
        let Some((last, middle)) = rest.split_last() else {
            return text == first;
        };
        let Some(mut left) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        for part in middle {
            match left.find(part.as_str()) {
                Some(at) => match left.get(at + part.len()..) {
                    Some(l) => left = l,
                    None => return false,
                },
                None => return false,
            }
        }
        left.ends_with(last.as_str())
    }

    /// The literal the text must start with, when the pattern does not start with a wildcard.
    pub(super) fn prefix(&self) -> Option<&str> {
        self.parts
            .first()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
    }

    /// The longest literal part: any matching text contains it.
    pub(super) fn longest_part(&self) -> Option<&str> {
        self.parts
            .iter()
            .max_by_key(|p| p.len())
            .map(String::as_str)
            .filter(|p| !p.is_empty())
    }
}

/// A policy condition as far as it can be decided natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cond {
    Const(bool),
    Eq(Source, Lit),
    Cmp(Source, CmpOp, i64),
    Like(Source, Pattern),
    /// `context.args has F`.
    Has(String),
    /// `context has approval`.
    HasApproval,
    /// `source.contains(literal)`, the source a set.
    Contains(Source, Lit),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    /// Not decided natively: Cedar evaluates it (it may also error).
    Opaque,
}

/// What guards read from one call: the arguments as typed by `args.rs`, the session, the approval.
pub(super) struct Facts<'a> {
    args: Option<&'a Map<String, Value>>,
    session: &'a SessionFacts<'a>,
    approval: bool,
}

impl<'a> Facts<'a> {
    pub(super) fn new(args: &'a Value, session: &'a SessionFacts<'a>, approval: bool) -> Self {
        Self {
            args: args.as_object(),
            session,
            approval,
        }
    }

    /// A scalar value of `source`; `None` when absent or not a scalar of a guard's types.
    pub(super) fn get(&self, source: &Source) -> Option<Got<'a>> {
        match source {
            Source::Arg(f) => match self.args?.get(f)? {
                Value::String(s) => Some(Got::Str(s)),
                Value::Bool(b) => Some(Got::Bool(*b)),
                Value::Number(n) => n.as_i64().map(Got::Long),
                _ => None,
            },
            Source::Session(f) => match f {
                SessionField::Id => Some(Got::Str(self.session.id)),
                SessionField::Purpose => Some(Got::Str(self.session.purpose)),
                SessionField::User => Some(Got::Str(self.session.user)),
                SessionField::Calls => Some(Got::Long(self.session.calls)),
                SessionField::MaxCalls => Some(Got::Long(self.session.max_calls)),
                SessionField::Collections | SessionField::Labels => None,
            },
        }
    }

    /// The elements of a set-valued `source`; `None` when absent or not a set of scalars.
    pub(super) fn elements(&self, source: &Source) -> Option<Vec<Got<'a>>> {
        match source {
            Source::Arg(f) => match self.args?.get(f)? {
                Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Some(Got::Str(s)),
                        Value::Bool(b) => Some(Got::Bool(*b)),
                        Value::Number(n) => n.as_i64().map(Got::Long),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            },
            Source::Session(SessionField::Collections) => Some(
                self.session
                    .collections
                    .iter()
                    .map(|s| Got::Str(s))
                    .collect(),
            ),
            Source::Session(SessionField::Labels) => {
                Some(self.session.labels.iter().map(|s| Got::Str(s)).collect())
            }
            Source::Session(_) => None,
        }
    }

    pub(super) fn has_arg(&self, field: &str) -> Option<bool> {
        Some(self.args?.contains_key(field))
    }
}

impl Cond {
    /// `Some(b)` when Cedar would evaluate this condition to `b` without error on the call.
    pub(super) fn decide(&self, facts: &Facts<'_>) -> Option<bool> {
        match self {
            Cond::Const(b) => Some(*b),
            Cond::Eq(s, lit) => facts.get(s)?.equals(lit),
            Cond::Cmp(s, op, n) => match facts.get(s)? {
                Got::Long(v) => Some(op.holds(v, *n)),
                _ => None,
            },
            Cond::Like(s, p) => match facts.get(s)? {
                Got::Str(v) => Some(p.matches(v)),
                _ => None,
            },
            Cond::Has(f) => facts.has_arg(f),
            Cond::HasApproval => Some(facts.approval),
            Cond::Contains(s, lit) => {
                let mut found = false;
                for e in facts.elements(s)? {
                    found |= e.equals(lit)?;
                }
                Some(found)
            }
            Cond::Not(c) => c.decide(facts).map(|b| !b),
            Cond::And(a, b) => match a.decide(facts)? {
                false => Some(false),
                true => b.decide(facts),
            },
            Cond::Or(a, b) => match a.decide(facts)? {
                true => Some(true),
                false => b.decide(facts),
            },
            Cond::Opaque => None,
        }
    }

    /// The conjuncts of a top-level `&&` chain, in evaluation order (`&&` is associative in Cedar,
    /// errors included).
    pub(super) fn conjuncts(&self) -> Vec<&Cond> {
        match self {
            Cond::And(a, b) => {
                let mut out = a.conjuncts();
                out.extend(b.conjuncts());
                out
            }
            c => vec![c],
        }
    }

    /// Builds the condition of `policy` (its EST as JSON) for calls of one tool: `args` is the tool's
    /// argument type, `resource` its entity.
    pub(super) fn of_policy(policy: &Value, args: &RecordType, resource: &Entity) -> Cond {
        let Some(clauses) = policy.get("conditions").and_then(Value::as_array) else {
            return Cond::Opaque;
        };
        let tool = ToolView { args, resource };
        let mut parts = Vec::with_capacity(clauses.len());
        for c in clauses {
            let body = c.get("body").map_or(Cond::Opaque, |b| tool.boolean(b));
            parts.push(match c.get("kind").and_then(Value::as_str) {
                Some("when") => body,
                Some("unless") => not(body),
                _ => Cond::Opaque,
            });
        }
        // Cedar joins the clauses as `c1 && (c2 && (...))`; no clause is `true`.
        let mut joined: Option<Cond> = None;
        for c in parts.into_iter().rev() {
            joined = Some(match joined {
                None => c,
                Some(rest) => and(c, rest),
            });
        }
        joined.unwrap_or(Cond::Const(true))
    }
}

/// `!c`, simplified. Replacing a part by `Opaque` only ever turns an answer into "not decided".
fn not(c: Cond) -> Cond {
    match c {
        Cond::Const(b) => Cond::Const(!b),
        Cond::Opaque => Cond::Opaque,
        c => Cond::Not(Box::new(c)),
    }
}

fn and(a: Cond, b: Cond) -> Cond {
    match a {
        Cond::Const(true) => b,
        Cond::Const(false) => Cond::Const(false),
        Cond::Opaque => Cond::Opaque,
        a => Cond::And(Box::new(a), Box::new(b)),
    }
}

fn or(a: Cond, b: Cond) -> Cond {
    match a {
        Cond::Const(true) => Cond::Const(true),
        Cond::Const(false) => b,
        Cond::Opaque => Cond::Opaque,
        a => Cond::Or(Box::new(a), Box::new(b)),
    }
}

/// An operand of a comparison.
enum Operand {
    /// A call value of this type; `required` when always present.
    Source(Source, Ty),
    /// A literal, or a tool attribute (static per tool).
    Lit(Lit),
    /// `context.args` itself.
    Args,
    /// `context.session` itself.
    Session,
    /// `context` itself.
    Context,
    /// `resource` itself.
    Resource,
    /// Anything else.
    Other,
}

struct ToolView<'a> {
    args: &'a RecordType,
    resource: &'a Entity,
}

/// The single key of a JSON object, with its value.
fn single(v: &Value) -> Option<(&str, &Value)> {
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    o.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn sides(v: &Value) -> Option<(&Value, &Value)> {
    Some((v.get("left")?, v.get("right")?))
}

fn literal(v: &Value) -> Option<Lit> {
    match v {
        Value::String(s) => Some(Lit::Str(s.clone())),
        Value::Bool(b) => Some(Lit::Bool(*b)),
        Value::Number(n) => n.as_i64().map(Lit::Long),
        _ => None,
    }
}

impl ToolView<'_> {
    fn operand(&self, e: &Value) -> Operand {
        let Some((op, arg)) = single(e) else {
            return Operand::Other;
        };
        match op {
            "Value" => literal(arg).map_or(Operand::Other, Operand::Lit),
            // Cedar negates a Long with overflow checking.
            "neg" => match arg.get("arg").and_then(single) {
                Some(("Value", Value::Number(n))) => n
                    .as_i64()
                    .and_then(i64::checked_neg)
                    .map_or(Operand::Other, |n| Operand::Lit(Lit::Long(n))),
                _ => Operand::Other,
            },
            "Var" => match arg.as_str() {
                Some("context") => Operand::Context,
                Some("resource") => Operand::Resource,
                _ => Operand::Other,
            },
            "." => {
                let (Some(left), Some(attr)) =
                    (arg.get("left"), arg.get("attr").and_then(Value::as_str))
                else {
                    return Operand::Other;
                };
                match self.operand(left) {
                    Operand::Context => match attr {
                        "args" => Operand::Args,
                        "session" => Operand::Session,
                        _ => Operand::Other,
                    },
                    Operand::Args => match self.args.fields.get(attr) {
                        Some((t, _)) => Operand::Source(Source::Arg(attr.to_owned()), Ty::of(t)),
                        None => Operand::Other,
                    },
                    Operand::Session => SessionField::named(attr).map_or(Operand::Other, |f| {
                        Operand::Source(Source::Session(f), f.ty())
                    }),
                    Operand::Resource => match self.resource.attr(attr) {
                        Some(Ok(EvalResult::String(s))) => Operand::Lit(Lit::Str(s)),
                        Some(Ok(EvalResult::Long(n))) => Operand::Lit(Lit::Long(n)),
                        Some(Ok(EvalResult::Bool(b))) => Operand::Lit(Lit::Bool(b)),
                        _ => Operand::Other,
                    },
                    _ => Operand::Other,
                }
            }
            _ => Operand::Other,
        }
    }

    /// A boolean-valued expression.
    fn boolean(&self, e: &Value) -> Cond {
        let Some((op, arg)) = single(e) else {
            return Cond::Opaque;
        };
        match op {
            "&&" => sides(arg).map_or(Cond::Opaque, |(l, r)| and(self.boolean(l), self.boolean(r))),
            "||" => sides(arg).map_or(Cond::Opaque, |(l, r)| or(self.boolean(l), self.boolean(r))),
            "!" => arg
                .get("arg")
                .map_or(Cond::Opaque, |a| not(self.boolean(a))),
            "==" => sides(arg).map_or(Cond::Opaque, |(l, r)| self.equals(l, r)),
            "!=" => sides(arg).map_or(Cond::Opaque, |(l, r)| not(self.equals(l, r))),
            "<" => self.compare(arg, CmpOp::Lt),
            "<=" => self.compare(arg, CmpOp::Le),
            ">" => self.compare(arg, CmpOp::Gt),
            ">=" => self.compare(arg, CmpOp::Ge),
            "like" => self.like(arg),
            "has" => self.has(arg),
            "contains" => self.contains(arg),
            _ => match self.operand(e) {
                Operand::Lit(Lit::Bool(b)) => Cond::Const(b),
                Operand::Source(s, Ty::Bool) => Cond::Eq(s, Lit::Bool(true)),
                _ => Cond::Opaque,
            },
        }
    }

    /// `==` never errors once both sides are values; values of different types are not equal, but a
    /// guard is built only for matching types (strict validation refuses the others anyway).
    fn equals(&self, l: &Value, r: &Value) -> Cond {
        match (self.operand(l), self.operand(r)) {
            (Operand::Lit(a), Operand::Lit(b)) => Cond::Const(a == b),
            (Operand::Source(s, t), Operand::Lit(lit))
            | (Operand::Lit(lit), Operand::Source(s, t))
                if Ty::of_lit(&lit) == t =>
            {
                Cond::Eq(s, lit)
            }
            _ => Cond::Opaque,
        }
    }

    fn compare(&self, arg: &Value, op: CmpOp) -> Cond {
        let Some((l, r)) = sides(arg) else {
            return Cond::Opaque;
        };
        match (self.operand(l), self.operand(r)) {
            (Operand::Lit(Lit::Long(a)), Operand::Lit(Lit::Long(b))) => Cond::Const(op.holds(a, b)),
            (Operand::Source(s, Ty::Long), Operand::Lit(Lit::Long(n))) => Cond::Cmp(s, op, n),
            (Operand::Lit(Lit::Long(n)), Operand::Source(s, Ty::Long)) => {
                Cond::Cmp(s, op.flipped(), n)
            }
            _ => Cond::Opaque,
        }
    }

    fn like(&self, arg: &Value) -> Cond {
        let (Some(left), Some(elems)) = (
            arg.get("left"),
            arg.get("pattern").and_then(Value::as_array),
        ) else {
            return Cond::Opaque;
        };
        let Some(pattern) = Pattern::from_est(elems) else {
            return Cond::Opaque;
        };
        match self.operand(left) {
            Operand::Source(s, Ty::Str) => Cond::Like(s, pattern),
            Operand::Lit(Lit::Str(v)) => Cond::Const(pattern.matches(&v)),
            _ => Cond::Opaque,
        }
    }

    /// `has` with one attribute (`e has a.b` is left to Cedar).
    fn has(&self, arg: &Value) -> Cond {
        let (Some(left), Some(attr)) = (arg.get("left"), arg.get("attr").and_then(Value::as_str))
        else {
            return Cond::Opaque;
        };
        match self.operand(left) {
            // The engine's context is exactly `args`, `session` and, when approved, `approval`.
            Operand::Context => match attr {
                "args" | "session" => Cond::Const(true),
                "approval" => Cond::HasApproval,
                _ => Cond::Const(false),
            },
            // `args.rs` refuses fields the schema does not declare.
            Operand::Args if self.args.fields.contains_key(attr) => Cond::Has(attr.to_owned()),
            Operand::Args => Cond::Const(false),
            Operand::Session => Cond::Const(SessionField::named(attr).is_some()),
            Operand::Resource => Cond::Const(self.resource.attr(attr).is_some()),
            _ => Cond::Opaque,
        }
    }

    fn contains(&self, arg: &Value) -> Cond {
        let Some((l, r)) = sides(arg) else {
            return Cond::Opaque;
        };
        match (self.operand(l), self.operand(r)) {
            (Operand::Source(s, t), Operand::Lit(lit)) if t.element() == Some(Ty::of_lit(&lit)) => {
                Cond::Contains(s, lit)
            }
            _ => Cond::Opaque,
        }
    }
}

/// Whether a conjunct is decided on every well-typed call of the tool, given the `has` conjuncts
/// before it were true (`present`): then a later conjunct is reached only through decided ones.
pub(super) fn total(c: &Cond, args: &RecordType, present: &HashSet<&str>) -> bool {
    let source_total = |s: &Source| match s {
        Source::Session(_) => true,
        Source::Arg(f) => {
            present.contains(f.as_str()) || args.fields.get(f).is_some_and(|(_, req)| *req)
        }
    };
    match c {
        Cond::Const(_) | Cond::Has(_) | Cond::HasApproval => true,
        Cond::Eq(s, _) | Cond::Cmp(s, _, _) | Cond::Like(s, _) | Cond::Contains(s, _) => {
            source_total(s)
        }
        Cond::Not(c) => total(c, args, present),
        Cond::And(a, b) | Cond::Or(a, b) => total(a, args, present) && total(b, args, present),
        Cond::Opaque => false,
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
