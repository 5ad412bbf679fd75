//! The retrieval pre-filter: the condition under which `Action::"retrieve"` would allow a document, as a
//! filter over the document's attributes that a pipeline puts into its vector-store query.
//!
//! # The filter language
//!
//! JSON over the attributes of the schema's `Document` (evaluated in memory by [`filter_admits`], which is
//! the SDK's `broker_sdk::filter_admits`):
//!
//! | filter                               | admits a document when                                        |
//! |--------------------------------------|---------------------------------------------------------------|
//! | `true` / `false`                     | always / never                                                |
//! | `{"and": [f, ...]}`, `{"or": [...]}` | every / some `f` admits it                                    |
//! | `{"not": f}`                         | `f` does not                                                  |
//! | `{"eq": ["attr", value]}`            | the attribute equals `value` (a string, integer or boolean)   |
//! | `{"in": ["attr", [values]]}`         | the attribute equals one of the values                        |
//! | `{"contains": ["attr", value]}`      | the set attribute has an element equal to `value`             |
//! | `{"lt"/"le"/"gt"/"ge": ["attr", n]}` | the integer attribute is `<`/`<=`/`>`/`>=` the integer `n`    |
//! | `{"exists": "attr"}`                 | the (optional) attribute is present                           |
//!
//! An atom over a missing attribute is false (its negation true). The filter is computed for documents
//! whose attributes type-check against `Document`; the post-filter denies any other document itself.
//!
//! # How it is computed
//!
//! Cedar partially evaluates the policies with the principal, the context (`context.session`) and the
//! entities known, exactly as [`PolicyEngine::decide_retrieval`] builds them, and the resource an unknown
//! `Document`. Each policy leaves a residual expression over `resource`; each is walked (in Cedar's JSON
//! form) into a pair of filters: when the policy holds, and when it would fail to evaluate. The
//! post-filter denies on any policy error (Cedar would skip the policy), so
//!
//! ```text
//! admitted = (some permit holds) AND NOT (some forbid holds) AND NOT (some policy errors)
//! ```
//!
//! Translated exactly: `&&`, `||`, `!`, `if-then-else`; `resource.a == v` and `!=` (`eq`; a value of
//! another type: `false`); `<`, `<=`, `>`, `>=` between an integer attribute and an integer; `resource has
//! a` (`exists`; `true` for a required attribute); a boolean attribute as a condition (`eq` with `true`);
//! `[v, ...].contains(resource.a)` (`in`); `resource.set.contains(v)` (`contains`);
//! `resource.set.containsAny([...])` / `containsAll([...])` (an `or` / `and` of `contains`). Accessing an
//! optional attribute fails to evaluate unless it is present, so `resource.owner == v` without a `has`
//! guard would make the document denied, and does here too (with the guard, that case simplifies away).
//! Known-true and known-false parts simplify away; `not` is pushed inwards.
//!
//! # Excluded labels
//!
//! [`PolicyEngine::retrieval_filter_excluding`] adds `{"not": {"contains": ["labels", l]}}` for each label
//! the pipeline wants none of, so that taint on filter (`taint`) does not add it; `complete` then means
//! exactly the allowed documents that carry none of them.
//!
//! # Completeness
//!
//! Anything else (an extension function, `like`, `in`/`is` on the document, arithmetic, a comparison of two
//! attributes, a part Cedar could not evaluate, ...) is not translated: the translator keeps for it an
//! under- and an over-approximation (`false` and `true` for its value; for whether it fails, `false` and
//! `true` unless the construct cannot fail on typed documents). The returned filter is the
//! under-approximation of `admitted`, built from the under-approximation of each permit and the
//! over-approximations of each forbid and of each policy's failure. It is therefore SAFE: it never admits a
//! document the post-filter denies. An untranslatable forbid excludes every document it might apply to:
//! the whole filter becomes `false` unless a translated part of the forbid bounds it (e.g.
//! `resource.personal && <untranslatable>` excludes only personal documents). An untranslatable permit
//! admits nothing by itself. `complete` is true exactly when both approximations are the same filter, i.e.
//! the filter admits precisely the (well-typed) documents the post-filter allows; then no post-filter is
//! needed. A policy that fails for every document (Cedar reports it errored whatever the resource) makes
//! the filter `false`, and complete, as the post-filter denies everything then; so does a schema without
//! `Document`. When the request cannot be built at all, or the filter would nest deeper than the SDK
//! accepts (`broker_sdk::MAX_FILTER_DEPTH`), the filter is `false` and incomplete.

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::{Context, Effect, Entities, EntityTypeName, Request};
use serde_json::{json, Map, Value};

use super::args::{ArgType, RecordType};
use super::{session_record, Caller, PolicyEngine, SessionFacts};

/// The pre-filter for a caller and session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievalFilter {
    /// A filter in the language of this module's documentation.
    pub filter: Value,
    /// True when the filter admits exactly the documents the post-filter allows; false when it admits a
    /// subset (some policy could not be translated): post-filter the results then.
    pub complete: bool,
}

/// Whether `filter` admits a document with these attributes (the SDK's evaluator, so the broker's tests
/// check the code pipelines run). An error means the filter is malformed.
pub fn filter_admits(filter: &Value, attributes: &Value) -> Result<bool, String> {
    broker_sdk::filter_admits(filter, attributes)
}

/// How deeply a residual expression may nest before the translator stops and approximates.
const MAX_RESIDUAL_DEPTH: usize = 200;

/// How many nodes a condition's filters may have before the translator approximates it instead (a chain
/// of `if-then-else` or of failure conditions could otherwise grow exponentially).
const MAX_COND_NODES: usize = 4096;

impl PolicyEngine {
    /// The condition under which `Action::"retrieve"` allows a document for this caller in this session.
    pub fn retrieval_filter(
        &self,
        caller: &Caller<'_>,
        session: &SessionFacts<'_>,
    ) -> RetrievalFilter {
        self.retrieval_filter_excluding(caller, session, &[])
    }

    /// [`Self::retrieval_filter`], also excluding every document whose `labels` hold one of `exclude`
    /// (`complete` then means: exactly the allowed documents that carry none of them).
    pub fn retrieval_filter_excluding(
        &self,
        caller: &Caller<'_>,
        session: &SessionFacts<'_>,
        exclude: &[String],
    ) -> RetrievalFilter {
        let Some(retrieval) = &self.retrieval else {
            // The post-filter denies every document then.
            return RetrievalFilter {
                filter: json!(false),
                complete: true,
            };
        };
        let partial = (|| -> Result<_, String> {
            let context = Context::from_pairs([("session".to_owned(), session_record(session)?)])
                .map_err(|e| e.to_string())?;
            let (principal, mut entities) = self.types.principal_entities(&self.users, caller)?;
            entities.push(retrieval.action_entity.clone());
            let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
            let document = EntityTypeName::from_str("Document").map_err(|e| e.to_string())?;
            let request = Request::builder()
                .principal(principal)
                .action(retrieval.action.clone())
                .unknown_resource_with_type(document)
                .context(context)
                .schema(&self.schema)
                .build()
                .map_err(|e| format!("request does not match the schema: {e}"))?;
            Ok(self
                .authorizer
                .is_authorized_partial(&request, &self.policies, &entities))
        })();
        let Ok(response) = partial else {
            // Could not even ask: admit nothing, and say so.
            return RetrievalFilter {
                filter: json!(false),
                complete: false,
            };
        };
        if response.definitely_errored().next().is_some() {
            return RetrievalFilter {
                filter: json!(false),
                complete: true,
            };
        }
        let tr = Translator::new(&retrieval.attributes);
        let mut residuals: Vec<_> = response.all_residuals().collect();
        residuals.sort_by(|a, b| a.id().cmp(b.id()));
        let mut permits = B::Exact(F::False);
        let mut forbids = B::Exact(F::False);
        let mut errors = B::Exact(F::False);
        for policy in residuals {
            let cond = match policy.to_json() {
                Ok(est) => tr.policy(&est),
                Err(_) => Cond::unknown(),
            };
            errors = tr.b_or(&errors, &cond.err);
            match policy.effect() {
                Effect::Permit => permits = tr.b_or(&permits, &cond.val),
                Effect::Forbid => forbids = tr.b_or(&forbids, &cond.val),
            }
        }
        let mut allowed = tr.b_and(&tr.b_and(&permits, &tr.b_not(&forbids)), &tr.b_not(&errors));
        for label in exclude {
            let carries = F::Contains(
                super::taint::LABELS_ATTRIBUTE.to_owned(),
                Scalar::Str(label.clone()),
            );
            allowed = tr.b_and(&allowed, &B::Exact(tr.not(carries)));
        }
        let (filter, complete) = match allowed {
            B::Exact(f) => (f, true),
            B::Range(lo, _) => (lo, false),
        };
        if filter.depth() > broker_sdk::MAX_FILTER_DEPTH {
            return RetrievalFilter {
                filter: json!(false),
                complete: false,
            };
        }
        RetrievalFilter {
            filter: filter.to_json(),
            complete,
        }
    }
}

impl PolicyEngine {
    /// The labels a session answered `filter` gets at once (taint on filter: see `taint`), sorted; or
    /// why `filter` may not be answered (answer `false` then, and let the pipeline post-filter).
    pub fn filter_taint(&self, filter: &Value) -> Result<Vec<String>, String> {
        self.label_reads.taint(filter)
    }
}

/// A scalar the filter language compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scalar {
    Bool(bool),
    Long(i64),
    Str(String),
}

impl Scalar {
    fn to_json(&self) -> Value {
        match self {
            Scalar::Bool(b) => json!(b),
            Scalar::Long(n) => json!(n),
            Scalar::Str(s) => json!(s),
        }
    }

    /// Whether a value of this scalar's kind can be held by an attribute of type `ty`.
    fn fits(&self, ty: &ArgType) -> bool {
        matches!(
            (self, ty),
            (Scalar::Bool(_), ArgType::Bool)
                | (Scalar::Long(_), ArgType::Long)
                | (Scalar::Str(_), ArgType::String)
        )
    }
}

/// `attr OP n` on Longs; also the guards' comparisons (`guard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn name(self) -> &'static str {
        match self {
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
        }
    }

    /// `n op attr` as `attr op' n`.
    pub(super) fn flipped(self) -> Self {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
        }
    }

    /// `!(attr op n)` for an attribute that is present.
    fn negated(self) -> Self {
        match self {
            CmpOp::Lt => CmpOp::Ge,
            CmpOp::Le => CmpOp::Gt,
            CmpOp::Gt => CmpOp::Le,
            CmpOp::Ge => CmpOp::Lt,
        }
    }

    pub(super) fn holds(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }
}

/// A filter as the translator builds it (see the module documentation for its JSON form).
#[derive(Debug, Clone, PartialEq, Eq)]
enum F {
    True,
    False,
    And(Vec<F>),
    Or(Vec<F>),
    Not(Box<F>),
    Eq(String, Scalar),
    In(String, Vec<Scalar>),
    Contains(String, Scalar),
    Cmp(CmpOp, String, i64),
    Exists(String),
}

impl F {
    fn constant(b: bool) -> Self {
        if b {
            F::True
        } else {
            F::False
        }
    }

    fn to_json(&self) -> Value {
        let list = |fs: &[F]| fs.iter().map(F::to_json).collect::<Vec<_>>();
        match self {
            F::True => json!(true),
            F::False => json!(false),
            F::And(fs) => json!({ "and": list(fs) }),
            F::Or(fs) => json!({ "or": list(fs) }),
            F::Not(f) => json!({ "not": f.to_json() }),
            F::Eq(a, v) => json!({ "eq": [a, v.to_json()] }),
            F::In(a, vs) => {
                json!({ "in": [a, vs.iter().map(Scalar::to_json).collect::<Vec<_>>()] })
            }
            F::Contains(a, v) => json!({ "contains": [a, v.to_json()] }),
            F::Cmp(op, a, n) => {
                let mut m = Map::new();
                m.insert(op.name().to_owned(), json!([a, n]));
                Value::Object(m)
            }
            F::Exists(a) => json!({ "exists": a }),
        }
    }

    /// Nesting depth of the JSON form.
    fn depth(&self) -> usize {
        match self {
            F::And(fs) | F::Or(fs) => 1 + fs.iter().map(F::depth).max().unwrap_or(0),
            F::Not(f) => 1 + f.depth(),
            _ => 1,
        }
    }

    /// Number of nodes.
    fn size(&self) -> usize {
        match self {
            F::And(fs) | F::Or(fs) => 1 + fs.iter().map(F::size).sum::<usize>(),
            F::Not(f) => 1 + f.size(),
            _ => 1,
        }
    }
}

/// A filter known exactly, or only between an under- and an over-approximation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum B {
    Exact(F),
    Range(F, F),
}

impl B {
    /// Anything from `false` to `true`.
    fn unknown() -> Self {
        B::Range(F::False, F::True)
    }

    fn range(lo: F, hi: F) -> Self {
        if lo == hi {
            B::Exact(lo)
        } else {
            B::Range(lo, hi)
        }
    }

    fn lo(&self) -> &F {
        match self {
            B::Exact(f) | B::Range(f, _) => f,
        }
    }

    fn hi(&self) -> &F {
        match self {
            B::Exact(f) | B::Range(_, f) => f,
        }
    }
}

/// A boolean residual: when it is true (meaningful when it does not fail) and when it fails to evaluate.
#[derive(Debug, Clone)]
struct Cond {
    val: B,
    err: B,
}

impl Cond {
    fn exact(val: F, err: F) -> Self {
        Cond {
            val: B::Exact(val),
            err: B::Exact(err),
        }
    }

    /// Nothing known, not even whether it fails.
    fn unknown() -> Self {
        Cond {
            val: B::unknown(),
            err: B::unknown(),
        }
    }
}

/// A Cedar literal as found in a residual.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lit {
    Scalar(Scalar),
    Set(Vec<Lit>),
    /// An entity, an extension value or a record: never equal to a document attribute's scalar.
    Other,
}

/// What a residual subexpression is, as far as the translator can tell.
#[derive(Debug, Clone)]
enum Term {
    Cond(Cond),
    /// `resource.name`: fails when an optional attribute is absent.
    Attr {
        name: String,
        ty: ArgType,
    },
    Lit(Lit),
    /// The document itself.
    Resource,
    /// A value the translator does not follow: whether it fails is bounded by `err`; `boolean` when it is
    /// known to be a boolean if it does not fail.
    Opaque {
        err: B,
        boolean: bool,
    },
}

struct Translator<'a> {
    attributes: &'a RecordType,
    required: HashSet<&'a str>,
}

impl<'a> Translator<'a> {
    fn new(attributes: &'a RecordType) -> Self {
        let required = attributes
            .fields
            .iter()
            .filter(|(_, (_, required))| *required)
            .map(|(name, _)| name.as_str())
            .collect();
        Self {
            attributes,
            required,
        }
    }

    // ---- filters, simplified as they are built ----

    fn and(&self, fs: Vec<F>) -> F {
        let mut out: Vec<F> = Vec::new();
        let mut stack: Vec<F> = fs.into_iter().rev().collect();
        while let Some(f) = stack.pop() {
            match f {
                F::True => {}
                F::False => return F::False,
                F::And(inner) => stack.extend(inner.into_iter().rev()),
                f => {
                    if !out.contains(&f) {
                        out.push(f);
                    }
                }
            }
        }
        // `x && !x`.
        if out
            .iter()
            .any(|f| matches!(f, F::Not(inner) if out.contains(inner)))
        {
            return F::False;
        }
        match out.len() {
            0 => F::True,
            1 => out.pop().unwrap_or(F::True),
            _ => F::And(out),
        }
    }

    fn or(&self, fs: Vec<F>) -> F {
        let mut out: Vec<F> = Vec::new();
        let mut stack: Vec<F> = fs.into_iter().rev().collect();
        while let Some(f) = stack.pop() {
            match f {
                F::False => {}
                F::True => return F::True,
                F::Or(inner) => stack.extend(inner.into_iter().rev()),
                // Equalities on one attribute merge into one `in`.
                F::Eq(a, v) => merge_in(&mut out, a, vec![v]),
                F::In(a, vs) => merge_in(&mut out, a, vs),
                f => {
                    if !out.contains(&f) {
                        out.push(f);
                    }
                }
            }
        }
        if out
            .iter()
            .any(|f| matches!(f, F::Not(inner) if out.contains(inner)))
        {
            return F::True;
        }
        let mut out: Vec<F> = out.into_iter().map(one_of).collect();
        out.retain(|f| *f != F::False);
        match out.len() {
            0 => F::False,
            1 => out.pop().unwrap_or(F::False),
            _ => F::Or(out),
        }
    }

    fn not(&self, f: F) -> F {
        match f {
            F::True => F::False,
            F::False => F::True,
            F::Not(inner) => *inner,
            F::And(fs) => self.or(fs.into_iter().map(|f| self.not(f)).collect()),
            F::Or(fs) => self.and(fs.into_iter().map(|f| self.not(f)).collect()),
            // A required attribute is present in every well-typed document: negate the atom itself.
            F::Cmp(op, a, n) if self.required.contains(a.as_str()) => F::Cmp(op.negated(), a, n),
            F::Eq(a, Scalar::Bool(b)) if self.required.contains(a.as_str()) => {
                F::Eq(a, Scalar::Bool(!b))
            }
            f => F::Not(Box::new(f)),
        }
    }

    fn exists(&self, attr: &str) -> F {
        if self.required.contains(attr) {
            F::True
        } else if self.attributes.fields.contains_key(attr) {
            F::Exists(attr.to_owned())
        } else {
            F::False
        }
    }

    // ---- bounds ----

    fn b_not(&self, b: &B) -> B {
        match b {
            B::Exact(f) => B::Exact(self.not(f.clone())),
            B::Range(lo, hi) => B::range(self.not(hi.clone()), self.not(lo.clone())),
        }
    }

    fn b_and(&self, a: &B, b: &B) -> B {
        match (a, b) {
            (B::Exact(x), B::Exact(y)) => B::Exact(self.and(vec![x.clone(), y.clone()])),
            _ => B::range(
                self.and(vec![a.lo().clone(), b.lo().clone()]),
                self.and(vec![a.hi().clone(), b.hi().clone()]),
            ),
        }
    }

    fn b_or(&self, a: &B, b: &B) -> B {
        match (a, b) {
            (B::Exact(x), B::Exact(y)) => B::Exact(self.or(vec![x.clone(), y.clone()])),
            _ => B::range(
                self.or(vec![a.lo().clone(), b.lo().clone()]),
                self.or(vec![a.hi().clone(), b.hi().clone()]),
            ),
        }
    }

    // ---- Cedar's boolean operators, with their failures ----

    fn c_not(&self, c: Cond) -> Cond {
        Cond {
            val: self.b_not(&c.val),
            err: c.err,
        }
    }

    /// `a && b`: fails when `a` fails, or when `a` holds and `b` fails.
    fn c_and(&self, a: Cond, b: Cond) -> Cond {
        Cond {
            val: self.b_and(&a.val, &b.val),
            err: self.b_or(&a.err, &self.b_and(&a.val, &b.err)),
        }
    }

    /// `a || b`: fails when `a` fails, or when `a` does not hold and `b` fails.
    fn c_or(&self, a: Cond, b: Cond) -> Cond {
        Cond {
            err: self.b_or(&a.err, &self.b_and(&self.b_not(&a.val), &b.err)),
            val: self.b_or(&a.val, &b.val),
        }
    }

    fn c_ite(&self, c: Cond, t: Cond, e: Cond) -> Cond {
        let not_c = self.b_not(&c.val);
        Cond {
            val: self.b_or(&self.b_and(&c.val, &t.val), &self.b_and(&not_c, &e.val)),
            err: self.b_or(
                &c.err,
                &self.b_or(&self.b_and(&c.val, &t.err), &self.b_and(&not_c, &e.err)),
            ),
        }
    }

    // ---- terms ----

    /// When evaluating the term fails.
    fn err(&self, t: &Term) -> B {
        match t {
            Term::Cond(c) => c.err.clone(),
            Term::Attr { name, .. } => B::Exact(self.not(self.exists(name))),
            Term::Lit(_) | Term::Resource => B::Exact(F::False),
            Term::Opaque { err, .. } => err.clone(),
        }
    }

    /// Failures of the operands, and maybe of the operator itself.
    fn errs(&self, operands: &[&Term], op_may_fail: bool) -> B {
        let start = if op_may_fail {
            B::unknown()
        } else {
            B::Exact(F::False)
        };
        operands
            .iter()
            .fold(start, |acc, t| self.b_or(&acc, &self.err(t)))
    }

    /// A term in a boolean position.
    fn cond(&self, t: Term) -> Cond {
        match t {
            Term::Cond(c) => c,
            Term::Lit(Lit::Scalar(Scalar::Bool(b))) => Cond::exact(F::constant(b), F::False),
            Term::Attr {
                ty: ArgType::Bool, ..
            } => {
                let err = self.err(&t);
                let Term::Attr { name, .. } = t else {
                    return Cond::unknown();
                };
                Cond {
                    val: B::Exact(F::Eq(name, Scalar::Bool(true))),
                    err,
                }
            }
            Term::Opaque { err, boolean: true } => Cond {
                val: B::unknown(),
                err,
            },
            // Not a boolean: Cedar fails (or the translator cannot tell).
            other => Cond {
                val: B::unknown(),
                err: self.errs(&[&other], true),
            },
        }
    }

    /// Something the translator does not follow, with these operands.
    fn opaque(&self, operands: &[&Term], op_may_fail: bool, boolean: bool) -> Term {
        Term::Opaque {
            err: self.errs(operands, op_may_fail),
            boolean,
        }
    }

    /// A boolean the translator does not follow, that fails only when its operands do.
    fn unknown_bool(&self, operands: &[&Term]) -> Term {
        self.opaque(operands, false, true)
    }

    /// A policy residual (Cedar's JSON form): its scope, then every `when` and `unless`.
    fn policy(&self, est: &Value) -> Cond {
        let scope_free = ["principal", "action", "resource"]
            .iter()
            .all(|k| est.get(k).and_then(|s| s.get("op")).and_then(Value::as_str) == Some("All"));
        let Some(conditions) = est.get("conditions").and_then(Value::as_array) else {
            return Cond::unknown();
        };
        if !scope_free {
            return Cond::unknown();
        }
        let mut acc = Cond::exact(F::True, F::False);
        for c in conditions {
            let body = match c.get("body") {
                Some(b) => self.cond(self.term(b, 0)),
                None => return Cond::unknown(),
            };
            let body = match c.get("kind").and_then(Value::as_str) {
                Some("when") => body,
                Some("unless") => self.c_not(body),
                _ => return Cond::unknown(),
            };
            acc = self.c_and(acc, body);
        }
        acc
    }

    fn term(&self, e: &Value, depth: usize) -> Term {
        let unknown = || Term::Opaque {
            err: B::unknown(),
            boolean: false,
        };
        if depth > MAX_RESIDUAL_DEPTH {
            return unknown();
        }
        let Some((op, arg)) = e
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.iter().next())
        else {
            return unknown();
        };
        let sub = |key: &str| match arg.get(key) {
            Some(x) => self.term(x, depth + 1),
            None => unknown(),
        };
        match op.as_str() {
            "Value" => Term::Lit(literal(arg)),
            "unknown" if arg == &json!([{ "Value": "resource" }]) => Term::Resource,
            "!" => Term::Cond(self.c_not(self.cond(sub("arg")))),
            "&&" => Term::Cond(capped(
                self.c_and(self.cond(sub("left")), self.cond(sub("right"))),
            )),
            "||" => Term::Cond(capped(
                self.c_or(self.cond(sub("left")), self.cond(sub("right"))),
            )),
            "if-then-else" => Term::Cond(capped(self.c_ite(
                self.cond(sub("if")),
                self.cond(sub("then")),
                self.cond(sub("else")),
            ))),
            "==" => self.equal(sub("left"), sub("right")),
            "!=" => match self.equal(sub("left"), sub("right")) {
                Term::Cond(c) => Term::Cond(self.c_not(c)),
                other => other,
            },
            "<" => self.compare(CmpOp::Lt, sub("left"), sub("right")),
            "<=" => self.compare(CmpOp::Le, sub("left"), sub("right")),
            ">" => self.compare(CmpOp::Gt, sub("left"), sub("right")),
            ">=" => self.compare(CmpOp::Ge, sub("left"), sub("right")),
            "contains" => self.contains(sub("left"), sub("right")),
            "containsAny" => self.contains_some(sub("left"), sub("right"), false),
            "containsAll" => self.contains_some(sub("left"), sub("right"), true),
            "." => self.get_attr(sub("left"), arg.get("attr").and_then(Value::as_str)),
            "has" => self.has_attr(sub("left"), arg.get("attr")),
            "Set" => {
                let items: Vec<Term> = arg
                    .as_array()
                    .map(|xs| xs.iter().map(|x| self.term(x, depth + 1)).collect())
                    .unwrap_or_default();
                let lits: Option<Vec<Lit>> = items
                    .iter()
                    .map(|t| match t {
                        Term::Lit(l) => Some(l.clone()),
                        _ => None,
                    })
                    .collect();
                match lits {
                    Some(lits) if arg.is_array() => Term::Lit(Lit::Set(lits)),
                    _ => self.opaque(&items.iter().collect::<Vec<_>>(), !arg.is_array(), false),
                }
            }
            // Safe (on typed operands) but not expressible: bounded, failing only with their operands.
            "like" => match sub("left") {
                t @ Term::Attr {
                    ty: ArgType::String,
                    ..
                } => self.unknown_bool(&[&t]),
                t => self.opaque(&[&t], true, true),
            },
            "isEmpty" => match sub("arg") {
                t @ (Term::Attr {
                    ty: ArgType::Set(_),
                    ..
                }
                | Term::Lit(Lit::Set(_))) => self.unknown_bool(&[&t]),
                t => self.opaque(&[&t], true, true),
            },
            "is" | "in" => match sub("left") {
                Term::Resource if op == "is" && arg.get("in").is_none() => self.unknown_bool(&[]),
                Term::Resource if op == "in" => match sub("right") {
                    r @ Term::Lit(_) => self.unknown_bool(&[&r]),
                    r => self.opaque(&[&r], true, true),
                },
                t => self.opaque(&[&t], true, true),
            },
            // Variables Cedar left in (a known part failed), arithmetic, tags, records, extension
            // functions, other unknowns: any of them may fail.
            _ => {
                let children: Vec<Term> = operands(arg)
                    .into_iter()
                    .map(|x| self.term(x, depth + 1))
                    .collect();
                self.opaque(&children.iter().collect::<Vec<_>>(), true, false)
            }
        }
    }

    fn attribute(&self, name: &str) -> Option<Term> {
        self.attributes.fields.get(name).map(|(ty, _)| Term::Attr {
            name: name.to_owned(),
            ty: ty.clone(),
        })
    }

    fn get_attr(&self, left: Term, attr: Option<&str>) -> Term {
        match (left, attr) {
            (Term::Resource, Some(a)) => self.attribute(a).unwrap_or(Term::Opaque {
                // Not an attribute of `Document`: absent from every well-typed document.
                err: B::Exact(F::True),
                boolean: false,
            }),
            (left, _) => self.opaque(&[&left], true, false),
        }
    }

    fn has_attr(&self, left: Term, attr: Option<&Value>) -> Term {
        let name = match attr {
            Some(Value::String(a)) => Some(a.as_str()),
            Some(Value::Array(path)) if path.len() == 1 => path.first().and_then(Value::as_str),
            _ => None,
        };
        match (left, name) {
            (Term::Resource, Some(a)) => Term::Cond(Cond::exact(self.exists(a), F::False)),
            (left, _) => self.opaque(&[&left], true, true),
        }
    }

    /// `left == right`: never fails itself; values of different types are unequal.
    fn equal(&self, left: Term, right: Term) -> Term {
        match (left, right) {
            (attr @ Term::Attr { .. }, Term::Lit(lit))
            | (Term::Lit(lit), attr @ Term::Attr { .. }) => {
                let err = self.err(&attr);
                let Term::Attr { name, ty, .. } = attr else {
                    return self.unknown_bool(&[]);
                };
                let val = match (&lit, &ty) {
                    (Lit::Scalar(s), _) if s.fits(&ty) => F::Eq(name, s.clone()),
                    // Same kind on both sides, but not expressible (sets, extension values, records).
                    (Lit::Set(_), ArgType::Set(_))
                    | (Lit::Other, ArgType::Extension(_) | ArgType::Record(_)) => {
                        return Term::Opaque { err, boolean: true }
                    }
                    (Lit::Scalar(_) | Lit::Set(_) | Lit::Other, _) => F::False,
                };
                Term::Cond(Cond {
                    val: B::Exact(val),
                    err,
                })
            }
            (Term::Lit(Lit::Scalar(a)), Term::Lit(Lit::Scalar(b))) => {
                Term::Cond(Cond::exact(F::constant(a == b), F::False))
            }
            (Term::Cond(c), Term::Lit(Lit::Scalar(Scalar::Bool(b))))
            | (Term::Lit(Lit::Scalar(Scalar::Bool(b))), Term::Cond(c)) => {
                Term::Cond(if b { c } else { self.c_not(c) })
            }
            (l, r) => self.unknown_bool(&[&l, &r]),
        }
    }

    /// `<`, `<=`, `>`, `>=`: integers only here (Cedar also compares datetimes and durations).
    fn compare(&self, op: CmpOp, left: Term, right: Term) -> Term {
        match (left, right) {
            (
                attr @ Term::Attr {
                    ty: ArgType::Long, ..
                },
                Term::Lit(Lit::Scalar(Scalar::Long(n))),
            ) => self.cmp_atom(op, attr, n),
            (
                Term::Lit(Lit::Scalar(Scalar::Long(n))),
                attr @ Term::Attr {
                    ty: ArgType::Long, ..
                },
            ) => self.cmp_atom(op.flipped(), attr, n),
            (Term::Lit(Lit::Scalar(Scalar::Long(a))), Term::Lit(Lit::Scalar(Scalar::Long(b)))) => {
                Term::Cond(Cond::exact(F::constant(op.holds(a, b)), F::False))
            }
            (l, r) => self.opaque(&[&l, &r], true, true),
        }
    }

    fn cmp_atom(&self, op: CmpOp, attr: Term, n: i64) -> Term {
        let err = self.err(&attr);
        let Term::Attr { name, .. } = attr else {
            return self.unknown_bool(&[]);
        };
        Term::Cond(Cond {
            val: B::Exact(F::Cmp(op, name, n)),
            err,
        })
    }

    /// `left.contains(right)`.
    fn contains(&self, left: Term, right: Term) -> Term {
        match (left, right) {
            // `[v, ...].contains(resource.a)`: the values of the attribute's type, as `in`.
            (Term::Lit(Lit::Set(items)), attr @ Term::Attr { .. }) => {
                let err = self.err(&attr);
                let Term::Attr { name, ty, .. } = attr else {
                    return self.unknown_bool(&[]);
                };
                if matches!(
                    ty,
                    ArgType::Set(_) | ArgType::Extension(_) | ArgType::Record(_)
                ) {
                    return Term::Opaque { err, boolean: true };
                }
                let values: Vec<Scalar> = items
                    .into_iter()
                    .filter_map(|l| match l {
                        Lit::Scalar(s) if s.fits(&ty) => Some(s),
                        _ => None,
                    })
                    .collect();
                Term::Cond(Cond {
                    val: B::Exact(one_of(F::In(name, values))),
                    err,
                })
            }
            // `resource.set.contains(v)`.
            (
                attr @ Term::Attr {
                    ty: ArgType::Set(_),
                    ..
                },
                Term::Lit(lit),
            ) => self.set_has_all(attr, vec![lit], true),
            (Term::Lit(Lit::Set(items)), Term::Lit(Lit::Scalar(s))) => Term::Cond(Cond::exact(
                F::constant(items.contains(&Lit::Scalar(s))),
                F::False,
            )),
            (l, r) => {
                let set = matches!(
                    l,
                    Term::Lit(Lit::Set(_))
                        | Term::Attr {
                            ty: ArgType::Set(_),
                            ..
                        }
                );
                self.opaque(&[&l, &r], !set, true)
            }
        }
    }

    /// `containsAll` (`all`) / `containsAny` between a set attribute and a set literal.
    fn contains_some(&self, left: Term, right: Term, all: bool) -> Term {
        match (left, right) {
            (
                attr @ Term::Attr {
                    ty: ArgType::Set(_),
                    ..
                },
                Term::Lit(Lit::Set(items)),
            ) => self.set_has_all(attr, items, all),
            // `[...].containsAny(resource.set)` is symmetric; `containsAll` that way round is not expressible.
            (
                Term::Lit(Lit::Set(items)),
                attr @ Term::Attr {
                    ty: ArgType::Set(_),
                    ..
                },
            ) if !all => self.set_has_all(attr, items, false),
            (l, r) => {
                let is_set = |t: &Term| {
                    matches!(
                        t,
                        Term::Lit(Lit::Set(_))
                            | Term::Attr {
                                ty: ArgType::Set(_),
                                ..
                            }
                    )
                };
                let sets = is_set(&l) && is_set(&r);
                self.opaque(&[&l, &r], !sets, true)
            }
        }
    }

    /// The set attribute contains every (`all`) / some of `items`.
    fn set_has_all(&self, attr: Term, items: Vec<Lit>, all: bool) -> Term {
        let err = self.err(&attr);
        let Term::Attr {
            name,
            ty: ArgType::Set(elem),
            ..
        } = attr
        else {
            return self.unknown_bool(&[]);
        };
        let mut atoms = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Lit::Scalar(s) if s.fits(&elem) => atoms.push(F::Contains(name.clone(), s)),
                // A set of scalars never holds a value of another type.
                Lit::Scalar(_) => atoms.push(F::False),
                _ if matches!(*elem, ArgType::String | ArgType::Long | ArgType::Bool) => {
                    atoms.push(F::False)
                }
                _ => return Term::Opaque { err, boolean: true },
            }
        }
        let val = if all { self.and(atoms) } else { self.or(atoms) };
        Term::Cond(Cond {
            val: B::Exact(val),
            err,
        })
    }
}

/// The condition, or nothing known about it when its filters grew too big.
fn capped(c: Cond) -> Cond {
    let size = |b: &B| match b {
        B::Exact(f) => f.size(),
        B::Range(lo, hi) => lo.size() + hi.size(),
    };
    if size(&c.val) + size(&c.err) > MAX_COND_NODES {
        Cond::unknown()
    } else {
        c
    }
}

/// Adds values to the `in` on `attr` already in `out`, or a new one.
fn merge_in(out: &mut Vec<F>, attr: String, values: Vec<Scalar>) {
    let existing = out.iter_mut().find_map(|f| match f {
        F::In(a, vs) if *a == attr => Some(vs),
        _ => None,
    });
    let target = match existing {
        Some(vs) => vs,
        None => {
            out.push(F::In(attr, Vec::new()));
            match out.last_mut() {
                Some(F::In(_, vs)) => vs,
                _ => return,
            }
        }
    };
    for v in values {
        if !target.contains(&v) {
            target.push(v);
        }
    }
}

/// `in` with no value is `false`, with one an `eq`.
fn one_of(f: F) -> F {
    match f {
        F::In(a, mut vs) => match vs.len() {
            0 => F::False,
            1 => vs.pop().map_or(F::False, |v| F::Eq(a, v)),
            _ => F::In(a, vs),
        },
        f => f,
    }
}

/// A literal in Cedar's JSON value form.
fn literal(v: &Value) -> Lit {
    match v {
        Value::Bool(b) => Lit::Scalar(Scalar::Bool(*b)),
        Value::Number(n) => n
            .as_i64()
            .map_or(Lit::Other, |n| Lit::Scalar(Scalar::Long(n))),
        Value::String(s) => Lit::Scalar(Scalar::Str(s.clone())),
        Value::Array(items) => Lit::Set(items.iter().map(literal).collect()),
        Value::Null | Value::Object(_) => Lit::Other,
    }
}

/// The subexpressions of an expression the translator does not follow (so their failures still count).
fn operands(arg: &Value) -> Vec<&Value> {
    match arg {
        // Extension function calls: `{"name": [args]}`; sets.
        Value::Array(items) => items.iter().collect(),
        Value::Object(fields) => ["left", "right", "arg", "in"]
            .iter()
            .filter_map(|k| fields.get(*k))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
