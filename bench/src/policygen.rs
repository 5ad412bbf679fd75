//! Generated policy sets of a given size: the example schema and entities, six baseline policies that
//! mirror the example catalogue's rules for the tools the load calls (without its approval policies),
//! and rules drawn from templates with seeded random parameters: per-agent and tenant-wide, `permit`
//! and `forbid`, on typed `context.args`, `context.session` and tool attributes. They validate strictly
//! against the example schema, and the load sees a mix of ALLOW and DENY under them.

use std::path::Path;

use anyhow::{bail, Context as _};
use broker::policy::{ENTITIES_FILE, SCHEMA_FILE};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use crate::mix;

/// The seed every run uses, so that sets of one size are the same on every machine.
pub const SEED: u64 = 6;
/// Policies per generated `.cedar` file.
const PER_FILE: usize = 1000;

/// The example catalogue's rules for the tools the load calls, without approvals.
const BASELINE: [&str; 6] = [
    r#"@id("gen-baseline-low-and-medium-risk")
@reason("agents may call low- and medium-risk catalogue tools")
permit (principal in Role::"agent", action in Action::"call_tool", resource)
when { resource.risk == "low" || resource.risk == "medium" };"#,
    r#"@id("gen-baseline-result-cap")
@reason("web searches may ask for at most 50 results")
forbid (principal, action == Action::"web.search", resource)
when { context.args has max_results && context.args.max_results > 50 };"#,
    r#"@id("gen-baseline-no-secrets")
@reason("agents may not read system configuration, environment files or SSH keys")
forbid (principal, action == Action::"file.read", resource)
when { context.args.path like "/etc/*" || context.args.path like "*.env" || context.args.path like "*/.ssh/*" };"#,
    r#"@id("gen-baseline-refunds-for-users")
@reason("agents acting for a user may issue refunds")
permit (principal in Role::"agent", action == Action::"payments.refund", resource)
when { principal has user };"#,
    r#"@id("gen-baseline-refund-cap")
@reason("refunds above 100000 are never issued by agents")
forbid (principal, action == Action::"payments.refund", resource)
when { context.args.amount > 100000 };"#,
    r#"@id("gen-baseline-refund-positive")
@reason("a refund amount must be positive")
forbid (principal, action == Action::"payments.refund", resource)
when { context.args.amount <= 0 };"#,
];

pub const MIN_COUNT: usize = BASELINE.len();

const CURRENCIES: [&str; 6] = ["EUR", "USD", "GBP", "JPY", "CHF", "SEK"];
const CATEGORIES: [&str; 6] = [
    "search",
    "filesystem",
    "communication",
    "payments",
    "compute",
    "productivity",
];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.get(rng.gen_range(0..from.len()))
        .copied()
        .unwrap_or_default()
}

/// Rule number `i` (counting from 0 after the baseline), drawn from template `i % 10`.
fn rule(i: usize, agents: usize, rng: &mut StdRng) -> String {
    let a = rng.gen_range(0..agents);
    let x = rng.gen_range(0..400);
    let head =
        |reason: &str| format!("@id(\"gen-{i:05}\")\n@reason(\"generated rule {i}: {reason}\")\n");
    match i % 10 {
        0 => format!(
            "{}forbid (principal == Agent::\"bench-agent-{a}\", action == Action::\"web.search\", resource)\n\
             when {{ context.args.query like \"*topic-{x} *\" }};",
            head("this agent may not search this topic")
        ),
        1 => format!(
            "{}forbid (principal in Role::\"agent\", action == Action::\"file.read\", resource)\n\
             when {{ context.args.path like \"/srv/restricted-{x}/*\" }};",
            head("restricted directory")
        ),
        2 => format!(
            "{}forbid (principal == Agent::\"bench-agent-{a}\", action == Action::\"payments.refund\", resource)\n\
             when {{ context.args.currency == \"{}\" && context.args.amount > {} }};",
            head("refund limit for this agent and currency"),
            pick(rng, &CURRENCIES),
            rng.gen_range(100..1000)
        ),
        3 => format!(
            "{}forbid (principal, action == Action::\"calendar.create_event\", resource)\n\
             when {{ context.args.duration_minutes > {} && context.args.title == \"sync {}\" && context.args.attendees.contains(\"{}\") }};",
            head("long meetings on this subject with this person are not booked by agents"),
            rng.gen_range(15..120),
            x % 200,
            mix::ATTENDEES
                .get(rng.gen_range(0..20) % mix::ATTENDEES.len())
                .copied()
                .unwrap_or_default()
        ),
        4 => format!(
            "{}permit (principal == Agent::\"bench-agent-{a}\", action == Action::\"shell.exec\", resource)\n\
             when {{ context.args.command == \"systemctl status svc-{x}\" && context.session.purpose == \"maintenance\" }};",
            head("status checks during maintenance")
        ),
        5 => format!(
            "{}forbid (principal in Role::\"agent\", action == Action::\"email.send\", resource)\n\
             when {{ context.args.subject like \"*case {x}*\" && !(context.args.to like \"*@example.com\") }};",
            head("this case stays inside the company")
        ),
        6 => format!(
            "{}forbid (principal == Agent::\"bench-agent-{a}\", action in Action::\"call_tool\", resource)\n\
             when {{ resource.category == \"{}\" && context.session.labels.contains(\"label-{x}\") }};",
            head("tainted sessions may not use this category"),
            pick(rng, &CATEGORIES)
        ),
        7 => format!(
            "{}forbid (principal, action == Action::\"web.search\", resource)\n\
             when {{ context.args has max_results && context.args.max_results > {} && context.args.query like \"*topic-{}*\" }};",
            head("result cap for this topic"),
            rng.gen_range(5..50),
            x % 200
        ),
        8 => format!(
            "{}permit (principal == Agent::\"bench-agent-{a}\", action == Action::\"payments.refund\", resource)\n\
             when {{ context.args.amount <= {} && context.args has reason }};",
            head("small refunds by this agent"),
            rng.gen_range(50..500)
        ),
        _ => format!(
            "{}permit (principal == Agent::\"bench-agent-{a}\", action == Action::\"file.read\", resource)\n\
             when {{ context.args.path like \"/srv/team-{x}/*\" && context.session.purpose == \"benchmark\" }};",
            head("this agent reads its team's directory")
        ),
    }
}

/// Exactly `count` policies (at least [`MIN_COUNT`]): the baseline, then generated rules.
pub fn generate(count: usize, seed: u64) -> anyhow::Result<Vec<String>> {
    if count < MIN_COUNT {
        bail!("a generated set holds at least {MIN_COUNT} policies, not {count}");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    // About 25 rules per agent named, so that a few of them concern the load's agents.
    let agents = (count / 25).max(8);
    let mut out: Vec<String> = BASELINE.iter().map(|p| (*p).to_owned()).collect();
    out.extend((0..count - MIN_COUNT).map(|i| rule(i, agents, &mut rng)));
    Ok(out)
}

/// Writes a policy directory of `count` policies into `out`: the schema and entities of `examples`,
/// and the policies in files of at most [`PER_FILE`].
pub fn write_dir(examples: &Path, out: &Path, count: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating `{}`", out.display()))?;
    for file in [SCHEMA_FILE, ENTITIES_FILE] {
        std::fs::copy(examples.join(file), out.join(file))
            .with_context(|| format!("copying `{}`", examples.join(file).display()))?;
    }
    let policies = generate(count, SEED)?;
    for (n, chunk) in policies.chunks(PER_FILE).enumerate() {
        let path = out.join(format!("generated-{n:03}.cedar"));
        let mut text = format!(
            "// Generated by broker-bench ({count} policies, seed {SEED}); not hand-written.\n\n"
        );
        text.push_str(&chunk.join("\n\n"));
        text.push('\n');
        std::fs::write(&path, text).with_context(|| format!("writing `{}`", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use broker::domain::decision::Outcome;
    use broker::policy::{PolicyEngine, SessionFacts, ToolCall};

    use super::*;

    fn examples() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    /// Decides every 5th call of the load mix in process (160 calls, every kind of call: 5 and 8 are
    /// coprime; deciding in a debug build is slow): (allowed, denied, pending).
    fn decide_mix(engine: &PolicyEngine) -> (usize, usize, usize) {
        let (mut allow, mut deny, mut other) = (0, 0, 0);
        for (i, c) in mix::pool().iter().enumerate().step_by(5) {
            let agent = mix::agent_name(i % mix::AGENTS);
            let verdict = engine.decide(&ToolCall {
                agent: &agent,
                user: Some(mix::USER),
                tenant: Some(mix::TENANT),
                roles: vec!["agent"],
                tool: c.tool,
                args: &c.args,
                session: SessionFacts {
                    id: "ses_test",
                    purpose: mix::SESSION_PURPOSE,
                    calls: 0,
                    max_calls: 1000,
                    user: mix::USER,
                    collections: vec![],
                    labels: vec![],
                },
                approval: None,
            });
            let codes: Vec<&str> = verdict.reasons.iter().map(|r| r.code.as_str()).collect();
            assert!(
                !codes.contains(&"POLICY_ERROR") && !codes.contains(&"INVALID_ARGUMENTS"),
                "call {i} ({}) errored: {codes:?}",
                c.tool
            );
            match verdict.outcome {
                Outcome::Allow => allow += 1,
                Outcome::Deny => deny += 1,
                Outcome::PendingApproval => other += 1,
            }
        }
        (allow, deny, other)
    }

    #[test]
    fn sets_have_exactly_the_size_asked_with_unique_ids() {
        for n in [MIN_COUNT, 10, 1000] {
            let set = generate(n, SEED).unwrap();
            assert_eq!(set.len(), n);
            let ids: HashSet<&str> = set.iter().map(|p| p.split('"').nth(1).unwrap()).collect();
            assert_eq!(ids.len(), n, "ids are unique");
        }
        assert!(generate(MIN_COUNT - 1, SEED).is_err());
        assert_eq!(generate(50, SEED).unwrap(), generate(50, SEED).unwrap());
        assert_ne!(generate(50, SEED).unwrap(), generate(50, SEED + 1).unwrap());
    }

    #[test]
    fn generated_sets_validate_strictly_and_the_load_sees_allows_and_denies() {
        let dir = tempfile::tempdir().unwrap();
        let mut denied = Vec::new();
        for n in [MIN_COUNT, 10, 1000] {
            let out = dir.path().join(n.to_string());
            write_dir(&examples(), &out, n).unwrap();
            let engine = PolicyEngine::load(&out).unwrap();
            assert_eq!(engine.policy_count(), n);
            let (allow, deny, other) = decide_mix(&engine);
            assert!(allow > 40, "{n} policies: {allow} of 160 allowed");
            assert!(deny > 40, "{n} policies: {deny} of 160 denied");
            assert_eq!(other, 0, "{n} policies: nothing waits for approval");
            denied.push(deny);
        }
        // The baseline alone denies what the example catalogue denies (3 kinds of call in 8); the
        // generated rules concern the load and deny some more.
        assert_eq!(denied.first(), Some(&(160 * 3 / 8)));
        assert!(
            denied.last() > denied.first(),
            "generated rules deny more: {denied:?}"
        );
    }

    #[test]
    fn the_example_catalogue_sees_the_same_mix() {
        let engine = PolicyEngine::load(&examples()).unwrap();
        let (allow, deny, other) = decide_mix(&engine);
        // 3 of the 8 kinds of call are denied by the example policies, the other 5 allowed.
        assert_eq!((allow, deny, other), (160 * 5 / 8, 160 * 3 / 8, 0));
    }
}
