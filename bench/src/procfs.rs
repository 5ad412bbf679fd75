//! What the broker process costs, read from Linux's `/proc`: CPU time (utime + stime) and peak RSS
//! (VmHWM).

use std::time::Duration;

use anyhow::{anyhow, Context as _};

/// `utime + stime` in clock ticks, from the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself hold spaces and `)`, so fields are
/// counted from the last `)`: after it come `state` (field 3) ... `utime` (14) and `stime` (15).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// A `kB` field of `/proc/PID/status` (e.g. `VmHWM:`, the peak resident set size, or `VmRSS:`), in
/// bytes.
pub fn status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let mut parts = line.get(field.len()..)?.split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux value, if `getconf` is missing).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Reads one process's counters.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pid: u32,
    ticks_per_second: u64,
}

impl Probe {
    pub fn new(pid: u32, ticks_per_second: u64) -> Self {
        Self {
            pid,
            ticks_per_second,
        }
    }

    /// CPU time used so far (user + system).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading `{path}`"))?;
        let ticks = cpu_ticks(&text).ok_or_else(|| anyhow!("cannot parse `{path}`"))?;
        Ok(Duration::from_secs_f64(
            ticks as f64 / self.ticks_per_second as f64,
        ))
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        self.status("VmHWM:")
    }

    /// Resident set size now (`VmRSS`), in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        self.status("VmRSS:")
    }

    fn status(&self, field: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading `{path}`"))?;
        status_bytes(&text, field).ok_or_else(|| anyhow!("no `{field}` in `{path}`"))
    }
}

/// Cores used on average: CPU time over wall time.
pub fn cores(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        cpu.as_secs_f64() / wall.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        // A real line's shape, with a command name holding spaces and a parenthesis.
        let stat = "4242 (broker (x) y) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 269 0 0 20 0 9 0 \
                    12345 123456789 4096 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(cpu_ticks(stat), Some(731 + 269));
    }

    #[test]
    fn cpu_ticks_refuse_what_they_cannot_read() {
        assert_eq!(cpu_ticks("no parenthesis here"), None);
        assert_eq!(cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(
            cpu_ticks("1 (x) S 1 2 3 4 5 6 7 8 9 10 eleven 12"),
            None,
            "utime must be a number"
        );
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status =
            "Name:\tbroker\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(status_bytes(status, "VmHWM:"), Some(51234 * 1024));
        assert_eq!(status_bytes(status, "VmRSS:"), Some(40000 * 1024));
        assert_eq!(status_bytes("Name:\tbroker\n", "VmHWM:"), None);
        assert_eq!(status_bytes("VmHWM:\t12 MB\n", "VmHWM:"), None);
    }

    #[test]
    fn this_process_can_be_probed() {
        let probe = Probe::new(std::process::id(), ticks_per_second());
        let now = probe.rss().unwrap();
        assert!(
            now > 1024 * 1024,
            "a test process holds more than 1 MiB: {now}"
        );
        let peak = probe.peak_rss().unwrap();
        assert!(peak >= now, "the peak {peak} is at least the current {now}");
        // Burn a little CPU so the counter moves past zero on any tick rate.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(probe.cpu_time().unwrap() > Duration::ZERO);
    }

    #[test]
    fn cores_is_cpu_over_wall() {
        assert!((cores(Duration::from_secs(3), Duration::from_secs(2)) - 1.5).abs() < 1e-9);
        assert_eq!(cores(Duration::from_secs(1), Duration::ZERO), 0.0);
    }
}
