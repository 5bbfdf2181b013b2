//! The statistics evals report: Wilson score intervals for pass rates and
//! the exact McNemar test for paired pass/fail outcomes.

/// The 0.975 quantile of the standard normal: a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The 95% Wilson score interval of `passed` successes in `n` trials;
/// (0, 1) when there are no trials.
pub fn wilson(passed: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = passed as f64 / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Pass rate, 0 without trials.
pub fn rate(passed: u64, n: u64) -> f64 {
    if n == 0 { 0.0 } else { passed as f64 / n as f64 }
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs: under
/// the null each discordant pair goes either way with probability 1/2, so
/// p = min(1, 2 * P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2).
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum the binomial terms in log space: 2^-n underflows past n = 1074.
    let ln2 = std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose - n as f64 * ln2).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_hand_computed_values() {
        // n = 12, k = 2: 2 * (1 + 12 + 66) / 4096.
        assert!((mcnemar_exact(10, 2) - 158.0 / 4096.0).abs() < 1e-12);
        assert!((mcnemar_exact(2, 10) - 158.0 / 4096.0).abs() < 1e-12);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // n = 5, k = 0: 2 / 32.
        assert!((mcnemar_exact(5, 0) - 0.0625).abs() < 1e-12);
        // Large n stays finite and tiny.
        let p = mcnemar_exact(3000, 1000);
        assert!(p > 0.0 && p < 1e-100, "{p}");
    }

    #[test]
    fn wilson_matches_reference_values() {
        // proportion_confint(20, 30, method="wilson") in statsmodels.
        let (lo, hi) = wilson(20, 30);
        assert!((lo - 0.487_800_5).abs() < 1e-6, "{lo}");
        assert!((hi - 0.807_695_0).abs() < 1e-6, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && hi > 0.0 && hi < 0.35);
        let (lo, hi) = wilson(10, 10);
        assert!(hi > 1.0 - 1e-12 && lo > 0.65);
    }
}
