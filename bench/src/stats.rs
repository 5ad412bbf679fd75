//! Latency percentiles (nearest rank, over every sample: no histogram buckets) and rates.

use std::time::Duration;

/// Every latency sample of a phase, sorted.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    sorted: Vec<Duration>,
}

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The nearest-rank percentile: the smallest sample with at least `q` of all samples at or below
    /// it (`q` in 0..=1). `None` without samples.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        // The epsilon keeps float error (0.9 * 100 = 90.000...01) from moving up a rank.
        let rank = (q.clamp(0.0, 1.0) * n as f64 - 1e-9).ceil() as usize;
        self.sorted.get(rank.clamp(1, n) - 1).copied()
    }
}

/// Events per second over `elapsed` (0 when nothing elapsed).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Milliseconds with three decimals, e.g. `0.412`.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// `ms` for an optional duration; `-` when absent.
pub fn ms_or_dash(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(v: impl IntoIterator<Item = u64>) -> Latencies {
        Latencies::new(v.into_iter().map(Duration::from_micros).collect())
    }

    #[test]
    fn nearest_rank_on_one_to_a_hundred() {
        let l = micros((1..=100).rev());
        let p = |q| l.percentile(q).unwrap();
        assert_eq!(p(0.5), Duration::from_micros(50));
        assert_eq!(p(0.9), Duration::from_micros(90));
        assert_eq!(p(0.99), Duration::from_micros(99));
        // ceil(0.999 * 100) = 100: the maximum.
        assert_eq!(p(0.999), Duration::from_micros(100));
        assert_eq!(l.percentile(0.0), Some(Duration::from_micros(1)));
        assert_eq!(l.percentile(1.0), Some(Duration::from_micros(100)));
    }

    #[test]
    fn p999_separates_the_tail_only_with_enough_samples() {
        // 2,000 samples: 1,998 fast ones and 2 slow ones; ceil(0.999 * 2000) = 1998 is still fast.
        let mut v = vec![10; 1998];
        v.extend([5000, 6000]);
        let l = micros(v);
        assert_eq!(l.percentile(0.999), Some(Duration::from_micros(10)));
        assert_eq!(l.percentile(0.9995), Some(Duration::from_micros(5000)));
        assert_eq!(l.percentile(1.0), Some(Duration::from_micros(6000)));
    }

    #[test]
    fn one_sample_is_every_percentile_and_none_is_none() {
        let l = micros([7]);
        assert_eq!(l.percentile(0.5), Some(Duration::from_micros(7)));
        assert_eq!(l.percentile(0.999), Some(Duration::from_micros(7)));
        assert_eq!(Latencies::default().percentile(0.5), None);
    }

    #[test]
    fn lower_median_of_an_even_count() {
        assert_eq!(
            micros([4, 1, 3, 2]).percentile(0.5),
            Some(Duration::from_micros(2))
        );
    }

    #[test]
    fn rates_and_formatting() {
        assert!((per_second(15_000, Duration::from_secs(10)) - 1500.0).abs() < 1e-9);
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
        assert_eq!(ms(Duration::from_micros(412)), "0.412");
        assert_eq!(ms_or_dash(None), "-");
    }
}
