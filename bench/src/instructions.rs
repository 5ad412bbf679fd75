//! Instructions per decision: the broker under `valgrind --tool=callgrind`, counting the instructions its
//! threads run for a fixed number of calls, one at a time. Unlike a rate, the count does not depend on what
//! else the machine is doing, so two builds can be compared on a busy machine.
//!
//! Callgrind's counters restart at every dump, so a dump (`callgrind_control --dump`) just before the
//! counted calls and one just after them hold exactly those calls: once for `AuthorizeToolCall` and once
//! for the health check (the floor), what gRPC itself costs the broker. One call in flight, so every decision is its own audit batch; the
//! database's own work (Postgres runs as another process) is not counted.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};
use broker::store::Backend;

use crate::load::{self, Rig, Target};
use crate::scenario::Database;
use crate::server::{BrokerProcess, Serve, Tokens};

/// Calls made before the counters are zeroed: connections, caches and the database's pages warm.
const WARMUP: usize = 200;

/// What one backend's broker ran, in instructions per call.
#[derive(Debug, Clone)]
pub struct Counted {
    pub backend: Backend,
    pub calls: usize,
    pub per_decision: f64,
    pub per_health_check: f64,
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
    let (per_decision, per_health_check) = result.map_err(|e| {
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
    })
}

async fn count(
    broker: &BrokerProcess,
    tokens: &Tokens,
    out: &Path,
    vgdb: &str,
    calls: usize,
) -> anyhow::Result<(f64, f64)> {
    let rig = Rig::new(broker, tokens, 1, 1).await?;
    load::sequential(&rig, Target::Broker, WARMUP).await?;
    load::sequential(&rig, Target::Floor, WARMUP).await?;
    let mut per_call = Vec::new();
    for target in [Target::Broker, Target::Floor] {
        // Everything so far (start-up, warm-up), dumped and left aside.
        dump(broker.pid, out, vgdb)?;
        load::sequential(&rig, target, calls).await?;
        let counted = dump(broker.pid, out, vgdb)?;
        per_call.push(totals(&counted)? as f64 / calls.max(1) as f64);
    }
    match per_call[..] {
        [decision, health] => Ok((decision, health)),
        _ => bail!("expected two counts"),
    }
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

/// The instructions a dump counted: its `totals:` (or `summary:`) line.
fn totals(dump: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(dump).with_context(|| format!("reading `{}`", dump.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no totals in `{}`", dump.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_of_a_dump() {
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("callgrind.out.1");
        std::fs::write(
            &dump,
            "version: 1\nevents: Ir\nfn=main\n1 5\ntotals: 123456\n",
        )
        .unwrap();
        assert_eq!(totals(&dump).unwrap(), 123_456);
        std::fs::write(&dump, "events: Ir\n").unwrap();
        assert!(totals(&dump).is_err());
    }
}
