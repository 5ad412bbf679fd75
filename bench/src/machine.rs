//! The machine the figures were measured on: CPUs, CPU model, RAM, Postgres version, load average.

use std::process::Command;

#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub ram_bytes: Option<u64>,
    pub postgres: Option<String>,
    pub load_average: String,
}

/// The first `model name` of `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The server version, asked with `psql` (if installed) on the test server's URL.
fn postgres_version() -> Option<String> {
    let url = broker::store::testing::postgres_admin_url();
    let out = Command::new("psql")
        .args([url.as_str(), "-tAc", "SELECT version()"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let v = text.trim();
    (out.status.success() && !v.is_empty()).then(|| v.to_owned())
}

pub fn describe(with_postgres: bool) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".to_owned()),
        ram_bytes: mem_total(&read("/proc/meminfo")),
        postgres: if with_postgres {
            postgres_version()
        } else {
            None
        },
        load_average: load_average(),
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} CPUs ({})", self.cpus, self.cpu_model)?;
        if let Some(ram) = self.ram_bytes {
            write!(f, ", {:.1} GiB RAM", ram as f64 / (1u64 << 30) as f64)?;
        }
        if let Some(pg) = &self.postgres {
            write!(f, ", {pg}")?;
        }
        write!(f, "; load average at start {}", self.load_average)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_model_and_memory() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor\t: 0\n"), None);
        assert_eq!(
            mem_total("MemTotal:       24684092 kB\nMemFree: 1 kB\n"),
            Some(24_684_092 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }
}
