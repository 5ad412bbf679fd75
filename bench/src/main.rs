//! `broker-bench`: the benchmark of issue 6, in one bounded run that stops by itself.
//!
//! ```sh
//! cargo build --release -p broker -p broker-bench && target/release/broker-bench
//! ```
//!
//! Prints figures, asserts nothing about speed (see `bench/README.md`).

mod approval;
mod cli;
mod inprocess;
mod instructions;
mod load;
mod machine;
mod mix;
mod policygen;
mod procfs;
mod propagation;
mod report;
mod scenario;
mod server;
mod stats;
mod targets;

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use broker::policy::PolicyEngine;
use broker::store::Backend;
use clap::Parser as _;

use crate::cli::{Cli, Plan, SetSpec, IN_PROCESS_SIZES};
use crate::scenario::{LoadPlan, PolicySet};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("broker-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(message: &str) {
    eprintln!("broker-bench: {message}");
}

/// The example catalogue as a set.
fn example_set(dir: &Path) -> anyhow::Result<PolicySet> {
    let engine = PolicyEngine::load(dir).with_context(|| format!("loading `{}`", dir.display()))?;
    Ok(PolicySet {
        label: SetSpec::Example.label(),
        dir: dir.to_path_buf(),
        count: engine.policy_count(),
    })
}

fn generated_set(examples: &Path, root: &Path, count: usize) -> anyhow::Result<PolicySet> {
    let dir = root.join(format!("policies-{count}"));
    policygen::write_dir(examples, &dir, count)?;
    Ok(PolicySet {
        label: SetSpec::Generated(count).label(),
        dir,
        count,
    })
}

/// Runs everything the plan asks; `Ok(false)` when some part could not be measured (the report says
/// which).
async fn run() -> anyhow::Result<bool> {
    let plan = Plan::from_cli(Cli::parse())?;
    let started = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let machine =
        machine::describe(!plan.in_process_only && plan.backends.contains(&Backend::Postgres));
    progress(&format!("{machine}"));

    if let Some(calls) = plan.instructions {
        return count_instructions(&plan, &started, &machine, calls).await;
    }

    let work = tempfile::tempdir().context("creating a work directory")?;
    let example = example_set(&plan.examples)?;
    let mut generated = Vec::new();
    for n in IN_PROCESS_SIZES {
        generated.push(generated_set(&plan.examples, work.path(), n)?);
    }

    progress("in process: decision time against policy count, retrieval batch");
    let mut timed = vec![example.clone()];
    timed.extend(generated.iter().cloned());
    let decisions = inprocess::decision_times(&timed, plan.in_process_budget)?;
    let retrieval = inprocess::retrieval(&plan.examples, plan.in_process_budget)?;
    if plan.in_process_only {
        println!(
            "{}",
            report::render_in_process(&started, &machine, &decisions, &retrieval)
        );
        return Ok(true);
    }
    let binary = server::broker_binary()?;

    let load_plan = LoadPlan {
        warmup: plan.warmup,
        duration: plan.duration,
        in_flight: plan.in_flight,
        connections: plan.connections,
        ticks_per_second: procfs::ticks_per_second(),
    };
    let mut failures = Vec::new();
    let mut scenarios = Vec::new();
    for &backend in &plan.backends {
        for spec in &plan.served {
            let set = match spec {
                SetSpec::Example => Some(&example),
                SetSpec::Generated(n) => generated.iter().find(|g| g.count == *n),
            };
            let Some(set) = set else {
                failures.push(format!("no policy set `{}`", spec.label()));
                continue;
            };
            progress(&format!(
                "load: {} with {} policies ({} in flight, then 1; each against the floor)",
                backend.as_str(),
                set.label,
                plan.in_flight
            ));
            match scenario::run(&binary, backend, set, &load_plan).await {
                Ok(s) => {
                    progress(&format!(
                        "  {:.0} decisions/s (floor {:.0}/s), 1 in flight p50 {} ms",
                        s.broker.per_second(),
                        s.floor.per_second(),
                        stats::ms_or_dash(s.broker_one.latencies.percentile(0.5))
                    ));
                    scenarios.push(s);
                }
                Err(e) => failures.push(format!(
                    "load on {} with {} policies: {e:#}",
                    backend.as_str(),
                    set.label
                )),
            }
        }
    }

    let mut propagation = Vec::new();
    let mut approvals = Vec::new();
    for &backend in &plan.backends {
        progress(&format!("kill-switch propagation on {}", backend.as_str()));
        match propagation::measure(&binary, &plan.examples, backend, plan.rounds).await {
            Ok(l) => propagation.push((backend, l)),
            Err(e) => failures.push(format!(
                "kill-switch propagation on {}: {e:#}",
                backend.as_str()
            )),
        }
        progress(&format!("approval release on {}", backend.as_str()));
        match approval::measure(&binary, &plan.examples, backend, plan.rounds).await {
            Ok(a) => approvals.push((backend, a)),
            Err(e) => failures.push(format!("approval release on {}: {e:#}", backend.as_str())),
        }
    }

    let ok = failures.is_empty();
    let results = report::Results {
        machine,
        plan,
        started,
        decisions,
        retrieval: Some(retrieval),
        scenarios,
        propagation,
        approvals,
        failures,
        load_average_after: machine::load_average(),
    };
    println!("{}", report::render(&results));
    Ok(ok)
}

/// `--instructions`: the broker's instructions per call on each backend, and nothing else.
async fn count_instructions(
    plan: &Plan,
    started: &str,
    machine: &machine::Machine,
    calls: usize,
) -> anyhow::Result<bool> {
    let binary = server::broker_binary()?;
    let mut counted = Vec::new();
    let mut failures = Vec::new();
    for &backend in &plan.backends {
        progress(&format!(
            "instructions: {calls} decisions and {calls} health checks on {}, under callgrind",
            backend.as_str()
        ));
        match instructions::measure(&binary, &plan.examples, backend, calls).await {
            Ok(c) => counted.push(c),
            Err(e) => failures.push(format!("instructions on {}: {e:#}", backend.as_str())),
        }
    }
    println!(
        "{}",
        report::render_instructions(started, machine, &counted, &failures)
    );
    Ok(failures.is_empty())
}
