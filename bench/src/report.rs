//! Figures and how they are printed: the header (machine and date), one line
//! per figure (`name value unit (median of N; min X, max Y)`, plus p95 where
//! the SPEC asks for it), and a closing list of SPEC §8 targets met or
//! missed. Statistics are computed here and nowhere else.

use crate::support::Bins;

/// Which way a figure must go to meet its target.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    /// The median must be at most this.
    AtMost(f64),
    /// The median must be at least this.
    AtLeast(f64),
}

/// One measured figure: its samples and, when SPEC §8 sets one, its target.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// Also print the 95th percentile.
    pub with_p95: bool,
    pub target: Option<Bound>,
}

impl Figure {
    /// A figure without a target.
    pub fn new(name: &'static str, unit: &'static str, samples: Vec<f64>) -> Figure {
        Figure { name, unit, samples, with_p95: false, target: None }
    }

    /// Sets the SPEC §8 target.
    pub fn target(mut self, bound: Bound) -> Figure {
        self.target = Some(bound);
        self
    }

    /// Prints the 95th percentile too.
    pub fn p95(mut self) -> Figure {
        self.with_p95 = true;
        self
    }

    /// The median (p50) of the samples; NaN without samples.
    pub fn median(&self) -> f64 {
        percentile(&self.samples, 50.0)
    }

    /// `name value unit (median of N; min X, max Y[; p95 Z])`.
    pub fn line(&self) -> String {
        let min = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut line = format!(
            "{} {} {} (median of {}; min {}, max {}",
            self.name,
            number(self.median()),
            self.unit,
            self.samples.len(),
            number(min),
            number(max)
        );
        if self.with_p95 {
            line.push_str(&format!("; p95 {}", number(percentile(&self.samples, 95.0))));
        }
        line.push(')');
        line
    }

    /// Whether the median meets the target; `None` without a target.
    pub fn met(&self) -> Option<bool> {
        let median = self.median();
        self.target.map(|bound| match bound {
            Bound::AtMost(limit) => median <= limit,
            Bound::AtLeast(limit) => median >= limit,
        })
    }
}

/// The `pct` percentile by the nearest-rank method (p50 of an even count is
/// the mean of the middle two, the usual median).
pub fn percentile(samples: &[f64], pct: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if pct == 50.0 {
        let mid = sorted.len() / 2;
        return if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Three significant digits or so: enough for figures with this much noise.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if !value.is_finite() {
        "n/a".into()
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The machine, the date and the binaries measured.
pub fn print_header(bins: &Bins) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    println!("# baton-bench {}", env!("CARGO_PKG_VERSION"));
    println!("# date {date}");
    println!("# machine {cores} cores, {cpu}, Linux {}", kernel.trim());
    println!("# binaries {}", bins.dir().display());
}

/// The SPEC §8 targets of the figures measured, met or missed.
pub fn print_targets(figures: &[Figure]) {
    let with_targets: Vec<&Figure> = figures.iter().filter(|figure| figure.target.is_some()).collect();
    if with_targets.is_empty() {
        return;
    }
    println!("# SPEC §8 targets (on the median)");
    for figure in with_targets {
        let (sign, limit) = match figure.target {
            Some(Bound::AtMost(limit)) => ("<=", limit),
            Some(Bound::AtLeast(limit)) => (">=", limit),
            None => continue,
        };
        let verdict = if figure.met() == Some(true) { "met" } else { "MISSED" };
        println!(
            "#   {:<36} {} {} (target {sign} {} {}): {verdict}",
            figure.name,
            number(figure.median()),
            figure.unit,
            number(limit),
            figure.unit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_p95_and_the_line() {
        let samples: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 10.5);
        assert_eq!(percentile(&samples, 95.0), 19.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        let figure = Figure::new("x", "ms", vec![1.0, 2.0, 3.0]).p95().target(Bound::AtMost(2.0));
        assert_eq!(figure.line(), "x 2.00 ms (median of 3; min 1.00, max 3.00; p95 3.00)");
        assert_eq!(figure.met(), Some(true));
    }
}
