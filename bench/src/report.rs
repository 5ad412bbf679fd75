//! The printed report: Markdown tables, ready to paste into `bench/README.md`.

use std::fmt::Write as _;

use broker::store::Backend;

use crate::approval::ApprovalLatency;
use crate::cli::Plan;
use crate::inprocess::{DecisionTiming, RetrievalTiming};
use crate::load::Phase;
use crate::machine::Machine;
use crate::scenario::Scenario;
use crate::stats::{ms, ms_or_dash, Latencies};
use crate::targets;

pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub started: String,
    pub decisions: Vec<DecisionTiming>,
    pub retrieval: Option<RetrievalTiming>,
    pub scenarios: Vec<Scenario>,
    pub propagation: Vec<(Backend, Latencies)>,
    pub approvals: Vec<(Backend, ApprovalLatency)>,
    /// What could not be measured, and why.
    pub failures: Vec<String>,
    pub load_average_after: String,
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b as f64 / 1e6))
}

fn cores(c: Option<f64>) -> String {
    c.map_or_else(|| "-".to_owned(), |c| format!("{c:.2}"))
}

fn load_row(out: &mut String, s: &Scenario, broker: &Phase, floor: &Phase, ratio: f64) {
    let p = |q| ms_or_dash(broker.latencies.percentile(q));
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1}% | {} | {} |",
        s.backend.as_str(),
        s.policies.name(),
        broker.in_flight,
        broker.connections,
        broker.per_second(),
        broker.allow,
        broker.deny,
        broker.error_count(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        floor.per_second(),
        ratio * 100.0,
        cores(broker.broker_cores),
        mb(broker.broker_peak_rss),
    );
}

pub fn render(r: &Results) -> String {
    let mut out = String::new();
    let plan = &r.plan;
    let _ = writeln!(out, "### Run of {}\n", r.started);
    let _ = writeln!(
        out,
        "Machine: {}; load average at the end {}.\n",
        r.machine, r.load_average_after
    );
    let backends: Vec<&str> = plan.backends.iter().map(|b| b.as_str()).collect();
    let sets: Vec<String> = plan.served.iter().map(|s| s.label()).collect();
    let _ = writeln!(
        out,
        "Plan: {:?} per phase after {:?} warm-up; {} in flight over {} connections; backends {}; policies {}; {} rounds{}.\n",
        plan.duration,
        plan.warmup,
        plan.in_flight,
        plan.connections,
        backends.join(", "),
        sets.join(", "),
        plan.rounds,
        if plan.quick { "; --quick" } else { "" }
    );

    let _ = writeln!(out, "#### Load: AuthorizeToolCall through the SDK, against the floor (gRPC health check, same client, connections and in-flight count)\n");
    let _ = writeln!(out, "| backend | policies | in flight | conns | decisions/s | allow | deny | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | floor calls/s | broker/floor | broker CPU (cores) | broker peak RSS (MB) |");
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &r.scenarios {
        load_row(&mut out, s, &s.broker, &s.floor, s.ratio());
    }
    for s in &r.scenarios {
        load_row(&mut out, s, &s.broker_one, &s.floor_one, s.ratio_one());
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Floor latency (p50 / p99 ms) and the broker's CPU while serving it:\n"
    );
    for s in &r.scenarios {
        let _ = writeln!(
            out,
            "- {} / {}: {} in flight {} / {} ({} cores); 1 in flight {} / {} ({} cores)",
            s.backend.as_str(),
            s.policies.label,
            s.floor.in_flight,
            ms_or_dash(s.floor.latencies.percentile(0.5)),
            ms_or_dash(s.floor.latencies.percentile(0.99)),
            cores(s.floor.broker_cores),
            ms_or_dash(s.floor_one.latencies.percentile(0.5)),
            ms_or_dash(s.floor_one.latencies.percentile(0.99)),
            cores(s.floor_one.broker_cores),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Broker RSS (MB): peak when it started serving (loading and validating the policies), peak over the whole scenario, resident at the end:\n");
    for s in &r.scenarios {
        let _ = writeln!(
            out,
            "- {} / {}: {} at start-up, {} peak, {} at the end",
            s.backend.as_str(),
            s.policies.label,
            mb(s.rss_at_start),
            mb(s.peak_rss()),
            mb(s.rss_at_end),
        );
    }
    let _ = writeln!(out);
    let mut errors = String::new();
    for s in &r.scenarios {
        for p in [&s.broker, &s.floor, &s.broker_one, &s.floor_one] {
            for (key, (n, message)) in &p.errors {
                let _ = writeln!(
                    errors,
                    "- {} / {} / {:?} {} in flight: {n} x `{key}`: {message}",
                    s.backend.as_str(),
                    s.policies.label,
                    p.target,
                    p.in_flight
                );
            }
            if p.pending > 0 {
                let _ = writeln!(
                    errors,
                    "- {} / {} / {} in flight: {} PENDING_APPROVAL answers (the mix should need none)",
                    s.backend.as_str(),
                    s.policies.label,
                    p.in_flight,
                    p.pending
                );
            }
        }
    }
    if errors.is_empty() {
        let _ = writeln!(out, "Unexpected errors: none.\n");
    } else {
        let _ = writeln!(out, "Unexpected errors:\n\n{errors}");
    }
    // Quoted, not counted: the bench's own config (`store.allow_privileged_role`, the test server's
    // superuser) makes the broker warn at start-up, and a reader must tell that from a failure.
    let mut logged = String::new();
    for s in &r.scenarios {
        for line in &s.broker_log {
            let _ = writeln!(
                logged,
                "- {} / {}: `` {line} ``",
                s.backend.as_str(),
                s.policies.label
            );
        }
    }
    if logged.is_empty() {
        let _ = writeln!(out, "Broker log (warnings and errors): none.\n");
    } else {
        let _ = writeln!(
            out,
            "Broker log (warnings and errors, each distinct line once):\n\n{logged}"
        );
    }

    in_process(&mut out, &r.decisions, r.retrieval.as_ref());
    for (backend, l) in &r.propagation {
        let _ = writeln!(
            out,
            "Kill-switch propagation, {}, broker A -> broker B (separate processes, one database, {} rounds): p50 {} ms, p90 {} ms, max {} ms.\n",
            backend.as_str(),
            l.len(),
            ms_or_dash(l.percentile(0.5)),
            ms_or_dash(l.percentile(0.9)),
            ms_or_dash(l.percentile(1.0)),
        );
    }
    for (backend, a) in &r.approvals {
        let l = &a.after_approve_returned;
        let _ = writeln!(
            out,
            "Approval release, {}, one broker ({} rounds): from Approve returning to the agent's ALLOW p50 {} ms, p90 {} ms, max {} ms; from Approve sent p50 {} ms{}.\n",
            backend.as_str(),
            l.len(),
            ms_or_dash(l.percentile(0.5)),
            ms_or_dash(l.percentile(0.9)),
            ms_or_dash(l.percentile(1.0)),
            ms_or_dash(a.after_approve_sent.percentile(0.5)),
            if a.allow_first > 0 {
                format!(" ({} rounds: the ALLOW arrived before Approve returned, counted as 0)", a.allow_first)
            } else {
                String::new()
            }
        );
    }

    let _ = writeln!(out, "#### Targets (issue 6)\n");
    let _ = writeln!(out, "| target | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    for t in targets::check(plan.in_flight, &r.scenarios, &r.decisions) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            t.target,
            t.measured,
            t.status.as_str()
        );
    }
    let _ = writeln!(out);
    if !r.failures.is_empty() {
        let _ = writeln!(out, "#### Not measured (failures)\n");
        for f in &r.failures {
            let _ = writeln!(out, "- {f}");
        }
        let _ = writeln!(out);
    }
    out
}

/// The in-process tables: decision time against policy count, and the retrieval batch.
fn in_process(out: &mut String, decisions: &[DecisionTiming], retrieval: Option<&RetrievalTiming>) {
    let _ = writeln!(
        out,
        "#### In process: `PolicyEngine::decide` on the load's call mix, one thread\n"
    );
    let _ = writeln!(out, "| policies | load + strict validation | decisions timed | median ms | p99 ms | allow / deny |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for d in decisions {
        let _ = writeln!(
            out,
            "| {} | {} ms | {} | {} | {} | {} / {} |",
            d.name,
            ms(d.load),
            d.latencies.len(),
            ms_or_dash(d.latencies.percentile(0.5)),
            ms_or_dash(d.latencies.percentile(0.99)),
            d.allow,
            d.deny
        );
    }
    let _ = writeln!(out);
    if let Some(t) = retrieval {
        let _ = writeln!(
            out,
            "Retrieval, in process, example policies ({}): batch of {} documents median {} ms, p99 {} ms ({} runs, {} allowed); pre-filter median {} ms.\n",
            t.policies,
            t.documents,
            ms_or_dash(t.batch.percentile(0.5)),
            ms_or_dash(t.batch.percentile(0.99)),
            t.batch.len(),
            t.allowed,
            ms_or_dash(t.filter.percentile(0.5)),
        );
    }
}

/// The report of `--in-process-only`: the in-process tables and the target they bear on.
pub fn render_in_process(
    started: &str,
    machine: &Machine,
    decisions: &[DecisionTiming],
    retrieval: &RetrievalTiming,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### In-process run of {started}\n");
    let _ = writeln!(out, "Machine: {machine}.\n");
    in_process(&mut out, decisions, Some(retrieval));
    for t in targets::check(0, &[], decisions)
        .into_iter()
        .filter(|t| t.target.contains("in process"))
    {
        let _ = writeln!(
            out,
            "Target: {}: {} ({}).",
            t.target,
            t.measured,
            t.status.as_str()
        );
    }
    out
}

/// `--instructions`: instructions the broker ran per call, per backend.
pub fn render_instructions(
    started: &str,
    machine: &Machine,
    counted: &[crate::instructions::Counted],
    failures: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### Instruction count of {started}\n");
    let _ = writeln!(out, "Machine: {machine}.\n");
    let _ = writeln!(
        out,
        "The broker's threads under `valgrind --tool=callgrind`, after a warm-up, on one connection: one \
         call at a time (each decision its own audit batch), then {} in flight (batches shared as under \
         load; that count moves a little between runs). Postgres's own work is not counted.\n",
        crate::instructions::IN_FLIGHT
    );
    let _ = writeln!(
        out,
        "| backend | in flight | calls counted | instructions per decision | without SHA-2 | per health check (floor) | decision / floor, without SHA-2 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for c in counted {
        for (in_flight, decision, health) in [
            (1, c.per_decision, c.per_health_check),
            (
                crate::instructions::IN_FLIGHT,
                c.per_decision_many,
                c.per_health_check_many,
            ),
        ] {
            let floor = health.without_sha2();
            let ratio = if floor > 0.0 {
                format!("{:.1}x", decision.without_sha2() / floor)
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "| {} | {in_flight} | {} | {:.0} | {:.0} | {:.0} | {ratio} |",
                c.backend.as_str(),
                c.calls,
                decision.total,
                decision.without_sha2(),
                health.total
            );
        }
    }
    let _ = writeln!(
        out,
        "\nSHA-2 runs in software under valgrind (its virtual CPU has no SHA extensions), at about ten \
         times its native cost: compare the columns without it."
    );
    if !failures.is_empty() {
        let _ = writeln!(out, "\nNot measured:\n");
        for f in failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}
