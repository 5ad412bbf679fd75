//! Instructions per decision: the broker under `valgrind --tool=callgrind`, counting the instructions its
//! threads run for a fixed number of calls. Unlike a rate, the count does not depend on what else the
//! machine is doing, so two builds can be compared on a busy machine.
//!
//! Callgrind's counters restart at every dump, so a dump (`callgrind_control --dump`) just before the
//! counted calls and one just after them hold exactly those calls: for `AuthorizeToolCall` and for the
//! health check (the floor), what gRPC itself costs the broker. Counted with one call in flight, where
//! every decision is its own audit batch, and with [`IN_FLIGHT`], where batches hold several and share
//! their cost as under load (how many depends on timing, so that count moves a little from run to run).
//! The database's own work (Postgres runs as another process) is not counted.
//!
//! Valgrind's virtual CPU has no SHA extensions, so SHA-256 (the audit chain, the arguments digest) runs
//! in software there and costs ten times the instructions it does natively: the count without the `sha2`
//! crate's functions is printed beside the total.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};
use broker::store::Backend;

use crate::load::{self, Rig, Target};
use crate::scenario::Database;
use crate::server::{BrokerProcess, Serve, Tokens};

/// Calls made before counting: connections, caches and the database's pages warm.
const WARMUP: usize = 200;

/// The second count's calls in flight (one connection).
pub const IN_FLIGHT: usize = 16;

/// What one backend's broker ran, in instructions per call.
#[derive(Debug, Clone)]
pub struct Counted {
    pub backend: Backend,
    pub calls: usize,
    pub per_decision: PerCall,
    pub per_health_check: PerCall,
    /// At [`IN_FLIGHT`].
    pub per_decision_many: PerCall,
    pub per_health_check_many: PerCall,
}

/// Instructions per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerCall {
    pub total: f64,
    /// Run in the `sha2` crate's functions (software SHA under valgrind).
    pub sha2: f64,
}

impl PerCall {
    pub fn without_sha2(self) -> f64 {
        self.total - self.sha2
    }
}

pub async fn measure(
    binary: &Path,
    examples: &Path,
    backend: Backend,
    calls: usize,
) -> anyhow::Result<Counted> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    let db = Database::fresh(backend).await?;
    let tokens = Tokens::new(data.path())?;
    let out = data.path().join("callgrind.out");
    // Where valgrind and `callgrind_control` meet: the same place whatever TMPDIR each one sees (the
    // broker runs with a cleared environment).
    let vgdb = format!("--vgdb-prefix={}", data.path().join("vgdb").display());
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        vgdb.clone(),
    ];
    let broker = BrokerProcess::start(
        &Serve {
            binary,
            data_dir: data.path(),
            database_url: db.url.as_deref(),
            policies: examples,
            wrapper: &wrapper,
        },
        "broker",
    )
    .await
    .context("starting the broker under valgrind (is valgrind installed?)")?;
    let result = count(&broker, &tokens, &out, &vgdb, calls).await;
    let failure_log = result.is_err().then(|| broker.log_tail());
    broker.stop().await;
    let [per_decision, per_health_check, per_decision_many, per_health_check_many] = result
        .map_err(|e| {
            e.context(format!(
                "broker log tail:\n{}",
                failure_log.unwrap_or_default()
            ))
        })?;
    Ok(Counted {
        backend,
        calls,
        per_decision,
        per_health_check,
        per_decision_many,
        per_health_check_many,
    })
}

async fn count(
    broker: &BrokerProcess,
    tokens: &Tokens,
    out: &Path,
    vgdb: &str,
    calls: usize,
) -> anyhow::Result<[PerCall; 4]> {
    let rig = Rig::new(broker, tokens, 1, IN_FLIGHT).await?;
    load::counted(&rig, Target::Broker, WARMUP, IN_FLIGHT).await?;
    load::counted(&rig, Target::Floor, WARMUP, IN_FLIGHT).await?;
    let mut per_call = Vec::new();
    for (target, in_flight) in [
        (Target::Broker, 1),
        (Target::Floor, 1),
        (Target::Broker, IN_FLIGHT),
        (Target::Floor, IN_FLIGHT),
    ] {
        // Everything so far (start-up, warm-up, the previous count), dumped and left aside.
        dump(broker.pid, out, vgdb)?;
        load::counted(&rig, target, calls, in_flight).await?;
        let counted = dump(broker.pid, out, vgdb)?;
        let text = std::fs::read_to_string(&counted)
            .with_context(|| format!("reading `{}`", counted.display()))?;
        let (total, sha2) = costs(&text)
            .with_context(|| format!("reading the counts in `{}`", counted.display()))?;
        let n = calls.max(1) as f64;
        per_call.push(PerCall {
            total: total as f64 / n,
            sha2: sha2 as f64 / n,
        });
    }
    per_call
        .try_into()
        .map_err(|_| anyhow!("expected four counts"))
}

fn control(pid: u32, action: &str, vgdb: &str) -> anyhow::Result<()> {
    let done = Command::new("callgrind_control")
        .arg(vgdb)
        .arg(action)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (it comes with valgrind)")?;
    if !done.status.success() {
        bail!(
            "`callgrind_control {action} {pid}` failed ({}): {}{}",
            done.status,
            String::from_utf8_lossy(&done.stdout),
            String::from_utf8_lossy(&done.stderr)
        );
    }
    Ok(())
}

/// Dumps the counters (which restarts them) and returns the file written: the new `<out>.*`.
fn dump(pid: u32, out: &Path, vgdb: &str) -> anyhow::Result<PathBuf> {
    let dir = out.parent().ok_or_else(|| anyhow!("no directory"))?;
    let prefix = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("no file name"))?;
    let before = dumps(dir, prefix)?;
    control(pid, "--dump", vgdb)?;
    dumps(dir, prefix)?
        .into_iter()
        .find(|p| !before.contains(p))
        .ok_or_else(|| anyhow!("callgrind wrote no dump in `{}`", dir.display()))
}

fn dumps(dir: &Path, prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading `{}`", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect())
}

/// The instructions a dump counted (its `summary:` or `totals:` line), and how many of them ran in the
/// `sha2` crate's own functions: the sum of their self costs. In callgrind's format a cost line is a
/// position and the cost; `fn=` names whose they are (`(id) name` the first time, `(id)` after, ids
/// shared with `cfn=`), and the line after a `calls=` line is a call's inclusive cost, not self cost.
fn costs(text: &str) -> anyhow::Result<(u64, u64)> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut total = None;
    let mut in_sha2 = false;
    let mut after_call = false;
    let mut sha2 = 0u64;
    let mut self_costs = 0u64;
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))
        {
            total = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(spec) = line.strip_prefix("fn=") {
            in_sha2 = name_of(&mut names, spec).starts_with("sha2::");
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            name_of(&mut names, spec);
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
            if std::mem::take(&mut after_call) {
                continue;
            }
            let cost: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("a cost line without a cost: `{line}`"))?;
            self_costs += cost;
            if in_sha2 {
                sha2 += cost;
            }
        }
    }
    let total: u64 = total.ok_or_else(|| anyhow!("no `summary:` or `totals:` line"))?;
    if self_costs != total {
        bail!("the self costs add up to {self_costs}, the summary says {total}");
    }
    Ok((total, sha2))
}

/// The function a `fn=`/`cfn=` spec names, recording `(id) name` definitions.
fn name_of<'a>(names: &mut HashMap<&'a str, &'a str>, spec: &'a str) -> &'a str {
    match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((id, rest)) => {
            let rest = rest.trim_start();
            if rest.is_empty() {
                names.get(id).copied().unwrap_or_default()
            } else {
                names.insert(id, rest);
                rest
            }
        }
        None => spec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump as callgrind writes one: compressed names, a call's inclusive cost after `calls=`.
    const DUMP: &str = "\
events: Ir
summary: 1060

ob=(2) ???
fl=(52) ???
fn=(1200) broker::decide
0 16
cfn=(2562) sha2::sha256::soft::compress
calls=16 3350
0 1000
+2 4
fn=(2562)
0 1000
cfn=(7) sha2::other
calls=1 0
0 30
fn=(7)
* 30
fn=(1200)
-1 10
";

    #[test]
    fn counts_the_total_and_the_self_costs_of_sha2() {
        assert_eq!(costs(DUMP).unwrap(), (1060, 1030));
    }

    #[test]
    fn a_dump_that_does_not_add_up_is_refused() {
        assert!(costs(&DUMP.replace("summary: 1060", "summary: 1061")).is_err());
        assert!(costs("events: Ir\n").is_err());
    }
}
