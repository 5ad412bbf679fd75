//! Who a person is, for separation of duties: two identity strings name the same person when their
//! normalised forms match, so `Alice`, ` alice `, `ALICE@Example.com` and `alice+ops@example.com` cannot
//! pass for different people.
//!
//! The rule, in order:
//! 1. normalise: Unicode NFKC, default-ignorable code points (zero-width spaces, joiners, soft hyphens,
//!    bidi controls, variation selectors) dropped, case-folded (upper then lower case, so `ß` = `ss`),
//!    NFKC again, surrounding white space trimmed;
//! 2. an identity with an `@` (the last one) between a non-empty local part and domain is an email: its
//!    local part loses any `+tag` (sub-addressing reaches the same mailbox);
//! 3. two emails are one person when local part and domain are equal; a bare name (no domain) is the same
//!    person as any email whose local part it equals (`alice` may be `alice@example.com`: when in doubt
//!    the broker treats them as one, which can only refuse a vote, never let one through); two bare names
//!    when equal.
//!
//! Matching is deliberately broad: a false match costs an approver the right to vote on one approval; a
//! missed match lets a person approve their own request, or count twice toward a quorum.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;

/// An identity in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No domain: a user name, an IdP subject.
    Bare(String),
    Email {
        local: String,
        domain: String,
    },
}

/// Code points that render as nothing (Unicode `Default_Ignorable_Code_Point`, the ranges that occur in
/// practice): an identity that differs only by them is the same identity.
fn is_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Step 1 of the rule: NFKC, ignorables dropped, case-folded, trimmed.
pub fn normalise(raw: &str) -> String {
    let stripped: String = raw.nfkc().filter(|c| !is_ignorable(*c)).collect();
    let folded = stripped.to_uppercase().to_lowercase();
    let out: String = folded.nfkc().filter(|c| !is_ignorable(*c)).collect();
    out.trim().to_owned()
}

impl Identity {
    pub fn parse(raw: &str) -> Identity {
        let n = normalise(raw);
        match n.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                let local = match local.split_once('+') {
                    Some((base, _)) if !base.is_empty() => base,
                    _ => local,
                };
                Identity::Email {
                    local: local.trim().to_owned(),
                    domain: domain.trim().to_owned(),
                }
            }
            _ => Identity::Bare(n),
        }
    }

    /// Whether two identities may be one person (step 3 of the rule).
    pub fn same_person(&self, other: &Identity) -> bool {
        match (self, other) {
            (Identity::Bare(a), Identity::Bare(b)) => a == b,
            (Identity::Bare(name), Identity::Email { local, .. })
            | (Identity::Email { local, .. }, Identity::Bare(name)) => name == local,
            (
                Identity::Email {
                    local: a,
                    domain: d,
                },
                Identity::Email {
                    local: b,
                    domain: e,
                },
            ) => a == b && d == e,
        }
    }

    /// The identity as one string, for messages.
    pub fn display(&self) -> Cow<'_, str> {
        match self {
            Identity::Bare(n) => Cow::Borrowed(n),
            Identity::Email { local, domain } => Cow::Owned(format!("{local}@{domain}")),
        }
    }
}

/// Whether the identity strings `a` and `b` may name one person.
pub fn same_person(a: &str, b: &str) -> bool {
    Identity::parse(a).same_person(&Identity::parse(b))
}

/// Whether any identity of `left` may be the same person as any of `right`.
pub fn any_same<'a>(
    left: impl IntoIterator<Item = &'a str>,
    right: impl IntoIterator<Item = &'a str>,
) -> bool {
    let right: Vec<Identity> = right.into_iter().map(Identity::parse).collect();
    left.into_iter()
        .map(Identity::parse)
        .any(|l| right.iter().any(|r| l.same_person(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_width_space_and_invisible_characters_do_not_make_another_person() {
        for other in [
            "Alice",
            "ALICE",
            " alice\t",
            "alice\u{200B}",
            "\u{FEFF}al\u{00AD}ice",
            "ａｌｉｃｅ", // full-width
            "alice@example.com",
            "Alice@Example.COM",
            "alice+approvals@example.com",
        ] {
            assert!(same_person("alice", other), "{other:?}");
        }
        assert!(same_person("straße", "STRASSE"));
        assert!(same_person("ﬁona", "fiona"), "ligature");
    }

    #[test]
    fn different_people_stay_different() {
        assert!(!same_person("alice", "alicia"));
        assert!(!same_person("alice", "bob@example.com"));
        assert!(!same_person("alice@example.com", "alice@example.org"));
        assert!(!same_person("alice.smith@example.com", "alice@example.com"));
        assert!(!same_person("bob", "alice"));
    }

    #[test]
    fn emails_compare_local_part_and_domain() {
        assert_eq!(
            Identity::parse("Alice+X@Example.com"),
            Identity::Email {
                local: "alice".into(),
                domain: "example.com".into()
            }
        );
        // Not emails: nothing on one side of the `@`.
        assert_eq!(Identity::parse("@alice"), Identity::Bare("@alice".into()));
        assert_eq!(Identity::parse("alice@"), Identity::Bare("alice@".into()));
        // A leading `+` is not a tag.
        assert_eq!(
            Identity::parse("+a@x.io"),
            Identity::Email {
                local: "+a".into(),
                domain: "x.io".into()
            }
        );
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for s in [
            "Alice",
            "ǅemal",
            "İstanbul",
            "ﬃ",
            "Ω",
            "K",
            "ａｂｃ",
            "straße",
        ] {
            let once = normalise(s);
            assert_eq!(normalise(&once), once, "{s:?}");
        }
    }

    #[test]
    fn any_same_crosses_every_pair() {
        assert!(any_same(["bob", "carol@example.com"], ["x", "Carol"]));
        assert!(!any_same(["bob", "carol@example.com"], ["x", "dave"]));
    }
}
