//! A policy set split by guards ([`super::guard`]): policies without a usable guard are evaluated
//! together on every call; each guarded policy is evaluated alone, only when its guard is not
//! definitely false. The answers are combined with [`Answer::and`], so the deciding and erroring
//! policies are those of evaluating the whole set.
//!
//! Guards are indexed so that a call does not look at every guarded policy: each is filed under one
//! conjunct of its condition's leading `&&` chain (equalities and `contains` by value, `like` by a
//! literal prefix or by its longest literal part, comparisons by threshold, `has` by field). The
//! conjunct used must follow only conjuncts decided on every call of the tool ([`guard::total`]): then
//! when it is false, Cedar either stopped at an earlier false conjunct or reached it, and the policy is
//! unsatisfied without error. Candidates found by the index still have their whole guard checked.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Policy, PolicySet};

use super::args::RecordType;
use super::filter::CmpOp;
use super::guard::{self, Cond, Facts, Got, Lit, Source};
use super::slice::Answer;

/// Literal keys of one kind (prefixes or inner parts of `like` patterns), with their byte lengths.
#[derive(Default)]
struct Affixes {
    keys: HashMap<String, Vec<usize>>,
    lengths: Vec<usize>,
}

impl Affixes {
    fn insert(&mut self, key: &str, at: usize) {
        self.keys.entry(key.to_owned()).or_default().push(at);
        if let Err(i) = self.lengths.binary_search(&key.len()) {
            self.lengths.insert(i, key.len());
        }
    }

    /// Keys that are a prefix of `text`.
    fn prefixes_of(&self, text: &str, out: &mut Vec<usize>) {
        for &n in &self.lengths {
            if let Some(hit) = text.get(..n).and_then(|p| self.keys.get(p)) {
                out.extend(hit);
            }
        }
    }

    /// Keys that occur in `text` (at character boundaries, as any literal of a pattern does).
    fn parts_of(&self, text: &str, out: &mut Vec<usize>) {
        for &n in &self.lengths {
            for (start, _) in text.char_indices() {
                match text.get(start..start + n) {
                    Some(part) => {
                        if let Some(hit) = self.keys.get(part) {
                            out.extend(hit);
                        }
                    }
                    None if start + n > text.len() => break,
                    None => {}
                }
            }
        }
    }
}

/// Guarded policies filed under one source.
#[derive(Default)]
struct BySource {
    /// Every policy filed here: the candidates when the call has no readable value.
    all: Vec<usize>,
    eq: HashMap<Lit, Vec<usize>>,
    contains: HashMap<Lit, Vec<usize>>,
    prefix: Affixes,
    part: Affixes,
    /// `source OP n`, by operator, sorted by `n`.
    cmp: HashMap<CmpOp, Vec<(i64, usize)>>,
}

impl BySource {
    /// Pushes the policies whose filed conjunct may hold on this call. A set-valued source has only
    /// `contains` keys, a scalar one only the others (guards are built for the source's type).
    fn candidates(&self, source: &Source, facts: &Facts<'_>, out: &mut Vec<usize>) {
        if !self.contains.is_empty() {
            match facts.elements(source) {
                Some(items) => {
                    for item in items {
                        if let Some(hit) = self.contains.get(&item.to_lit()) {
                            out.extend(hit);
                        }
                    }
                }
                None => return out.extend(&self.all),
            }
        }
        if self.eq.is_empty()
            && self.prefix.keys.is_empty()
            && self.part.keys.is_empty()
            && self.cmp.is_empty()
        {
            return;
        }
        let Some(value) = facts.get(source) else {
            return out.extend(&self.all);
        };
        if let Some(hit) = self.eq.get(&value.to_lit()) {
            out.extend(hit);
        }
        if let Got::Str(text) = value {
            self.prefix.prefixes_of(text, out);
            self.part.parts_of(text, out);
        }
        if let Got::Long(v) = value {
            for (op, sorted) in &self.cmp {
                // The thresholds `n` for which `v OP n` holds form a prefix or a suffix of the list.
                let (from, to) = match op {
                    CmpOp::Gt => (0, sorted.partition_point(|(n, _)| *n < v)),
                    CmpOp::Ge => (0, sorted.partition_point(|(n, _)| *n <= v)),
                    CmpOp::Lt => (sorted.partition_point(|(n, _)| *n <= v), sorted.len()),
                    CmpOp::Le => (sorted.partition_point(|(n, _)| *n < v), sorted.len()),
                };
                out.extend(
                    sorted
                        .get(from..to)
                        .unwrap_or_default()
                        .iter()
                        .map(|(_, i)| i),
                );
            }
        }
    }
}

/// How a guarded policy is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Key {
    Eq(Source, Lit),
    Contains(Source, Lit),
    Prefix(Source, String),
    Part(Source, String),
    Cmp(Source, CmpOp, i64),
    Has(String),
}

impl Key {
    /// The key a conjunct offers, with a rank: the higher, the fewer candidates it usually yields.
    fn of(c: &Cond) -> Option<(u8, Key)> {
        Some(match c {
            Cond::Eq(s, l) => (3, Key::Eq(s.clone(), l.clone())),
            Cond::Contains(s, l) => (3, Key::Contains(s.clone(), l.clone())),
            Cond::Like(s, p) => match (p.prefix(), p.longest_part()) {
                (Some(pre), _) => (2, Key::Prefix(s.clone(), pre.to_owned())),
                (None, Some(part)) => (2, Key::Part(s.clone(), part.to_owned())),
                (None, None) => return None,
            },
            Cond::Cmp(s, op, n) => (1, Key::Cmp(s.clone(), *op, *n)),
            Cond::Has(f) => (0, Key::Has(f.clone())),
            _ => return None,
        })
    }

    /// The best key among the conjuncts that may be used (see the module comment).
    pub(super) fn choose(cond: &Cond, args: &RecordType) -> Option<Key> {
        let mut present = HashSet::new();
        let mut best: Option<(u8, Key)> = None;
        for c in cond.conjuncts() {
            if let Some((rank, key)) = Key::of(c) {
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    best = Some((rank, key));
                }
            }
            if !guard::total(c, args, &present) {
                break;
            }
            if let Cond::Has(f) = c {
                present.insert(f.as_str());
            }
        }
        best.map(|(_, k)| k)
    }
}

/// One policy set, split by guards.
pub(super) struct GuardedSet {
    /// Policies evaluated on every call (`None` when there are none).
    always: Option<PolicySet>,
    /// Each guarded policy alone in a set, with its guard.
    guarded: Vec<(Cond, PolicySet)>,
    /// Guarded policies no key finds: their guard is checked on every call.
    scan: Vec<usize>,
    sources: HashMap<Source, BySource>,
    /// `context.args has F`: candidates when `F` is present.
    has: HashMap<String, Vec<usize>>,
}

impl GuardedSet {
    /// Splits `policies` (each with its condition for this tool); a policy whose condition is false
    /// on every call is left out.
    pub(super) fn new(policies: Vec<(Policy, Cond)>, args: &RecordType) -> Result<Self, String> {
        let mut always = Vec::new();
        let mut set = Self {
            always: None,
            guarded: Vec::new(),
            scan: Vec::new(),
            sources: HashMap::new(),
            has: HashMap::new(),
        };
        for (policy, cond) in policies {
            match cond {
                Cond::Const(false) => continue,
                Cond::Const(true) | Cond::Opaque => {
                    always.push(policy);
                    continue;
                }
                _ => {}
            }
            let at = set.guarded.len();
            match Key::choose(&cond, args) {
                None => set.scan.push(at),
                Some(Key::Has(f)) => set.has.entry(f).or_default().push(at),
                Some(key) => set.file(key, at),
            }
            let alone = PolicySet::from_policies([policy]).map_err(|e| e.to_string())?;
            set.guarded.push((cond, alone));
        }
        if !always.is_empty() {
            set.always = Some(PolicySet::from_policies(always).map_err(|e| e.to_string())?);
        }
        for by in set.sources.values_mut() {
            for sorted in by.cmp.values_mut() {
                sorted.sort_unstable();
            }
        }
        Ok(set)
    }

    fn file(&mut self, key: Key, at: usize) {
        let source = match &key {
            Key::Eq(s, _)
            | Key::Contains(s, _)
            | Key::Prefix(s, _)
            | Key::Part(s, _)
            | Key::Cmp(s, _, _) => s.clone(),
            Key::Has(_) => return,
        };
        let by = self.sources.entry(source).or_default();
        by.all.push(at);
        match key {
            Key::Eq(_, l) => by.eq.entry(l).or_default().push(at),
            Key::Contains(_, l) => by.contains.entry(l).or_default().push(at),
            Key::Prefix(_, p) => by.prefix.insert(&p, at),
            Key::Part(_, p) => by.part.insert(&p, at),
            Key::Cmp(_, op, n) => by.cmp.entry(op).or_default().push((n, at)),
            Key::Has(_) => {}
        }
    }

    /// How many policies are evaluated on every call, and how many are guarded.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (
            self.always.as_ref().map_or(0, |s| s.policies().count()),
            self.guarded.len(),
        )
    }

    /// The guarded policies whose guard does not rule them out on this call, in filing order.
    pub(super) fn survivors(&self, facts: &Facts<'_>) -> Vec<usize> {
        let mut found = self.scan.clone();
        for (source, by) in &self.sources {
            by.candidates(source, facts, &mut found);
        }
        for (field, at) in &self.has {
            if facts.has_arg(field) != Some(false) {
                found.extend(at);
            }
        }
        found.sort_unstable();
        found.dedup();
        found.retain(|&i| {
            self.guarded
                .get(i)
                .is_some_and(|(cond, _)| cond.decide(facts) != Some(false))
        });
        found
    }

    /// The answer of evaluating the whole set, through `eval` on the parts that can apply.
    pub(super) fn answer(&self, facts: &Facts<'_>, eval: &impl Fn(&PolicySet) -> Answer) -> Answer {
        let mut answer = self.always.as_ref().map_or_else(Answer::none, eval);
        for i in self.survivors(facts) {
            if let Some((_, alone)) = self.guarded.get(i) {
                answer = answer.and(eval(alone));
            }
        }
        answer
    }
}
