//! The accounting of one query: how its ε is split across the noisy measurements, the
//! noise scale of each, the threshold of DP partition selection, the quantization of
//! metrics for SUM, and budget arithmetic in exact integer units.
//!
//! One query of an agreement with `epsilon_per_query = ε` and `delta = δ` releases, for
//! every group it shows:
//! - the noisy number of customers N (always measured: it decides whether the group is
//!   shown and answers `COUNT(*)`),
//! - one noisy non-null count per metric used by `COUNT(metric)` or `AVG(metric)`,
//! - one noisy sum per metric used by `SUM(metric)` or `AVG(metric)`.
//!
//! With J such measurements each gets ε / J (basic composition). Each customer is one row
//! of `overlap` and falls in exactly one group, so adding or removing a customer changes
//! each measurement vector by at most its sensitivity in L1 norm (1 for counts, the
//! larger absolute metric bound for sums); discrete Laplace noise of scale sensitivity·J/ε
//! makes each ε/J-DP. A group that exists only because of that one customer is shown only
//! if its noisy N reaches the threshold τ, which happens with probability at most δ
//! (partition selection, as OpenDP's `make_laplace_threshold`). The whole query is
//! (ε, δ)-DP; HAVING, ORDER BY and LIMIT act on the noisy values only (post-processing).

use crate::DpError;
use crate::sample::{MAX_PART, Rational};

/// Denominator of noise scales: the scale is rounded up to a multiple of 2^-20.
const SCALE_DEN: u128 = 1 << 20;

/// Budget arithmetic is done in integer units of 10^-9 ε (and 10^-12 δ): per-query costs
/// are rounded up, budgets down, so rounding never lets a party spend more than agreed.
pub const EPSILON_UNIT: f64 = 1e-9;

/// Unit of δ in the ledger.
pub const DELTA_UNIT: f64 = 1e-12;

/// Bits of resolution a metric is quantized to before summing: its larger absolute bound
/// is at most 2^20 quantization steps.
pub const SUM_RESOLUTION_BITS: i32 = 20;

/// The privacy parameters of one query, from the agreement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryPrivacy {
    /// ε of the whole query.
    pub epsilon: f64,
    /// δ of the whole query (spent by partition selection).
    pub delta: f64,
    /// k: no group is shown whose noisy size is below k.
    pub k: u64,
}

impl QueryPrivacy {
    /// Checks the parameters: 0 < ε ≤ 100, 0 < δ < 1, k ≥ 1.
    pub fn new(epsilon: f64, delta: f64, k: u64) -> Result<Self, DpError> {
        if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= 100.0) {
            return Err(DpError::Parameter(format!(
                "epsilon_per_query is {epsilon}; it must be a number above 0 and at most 100"
            )));
        }
        if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
            return Err(DpError::Parameter(format!(
                "delta is {delta}; it must be above 0 and below 1"
            )));
        }
        if k == 0 {
            return Err(DpError::Parameter("k must be at least 1".into()));
        }
        Ok(Self { epsilon, delta, k })
    }

    /// The plan of a query with `measurements` noisy measurements per group (at least 1:
    /// the group size).
    pub fn plan(&self, measurements: usize) -> Result<QueryPlan, DpError> {
        let j = measurements.max(1);
        let epsilon_each = self.epsilon / j as f64;
        let count_scale = laplace_scale(1, epsilon_each)?;
        let threshold = selection_threshold(count_scale, self.delta, self.k)?;
        Ok(QueryPlan {
            epsilon_each,
            count_scale,
            threshold,
        })
    }
}

/// How one query's ε is spent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueryPlan {
    /// ε of each measurement.
    pub epsilon_each: f64,
    /// Discrete Laplace scale of every count (sensitivity 1).
    pub count_scale: Rational,
    /// A group is shown only if its noisy size is at least this.
    pub threshold: u64,
}

impl QueryPlan {
    /// Discrete Laplace scale of a sum whose quantized sensitivity is `sensitivity`.
    pub fn sum_scale(&self, sensitivity: u64) -> Result<Rational, DpError> {
        laplace_scale(sensitivity, self.epsilon_each)
    }
}

/// The discrete Laplace scale `sensitivity / epsilon`, rounded up to a multiple of 2^-20
/// (more noise, never less).
pub fn laplace_scale(sensitivity: u64, epsilon: f64) -> Result<Rational, DpError> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(DpError::Parameter(format!(
            "epsilon {epsilon} must be above 0"
        )));
    }
    let scale = sensitivity.max(1) as f64 / epsilon;
    let scaled = scale * SCALE_DEN as f64;
    if !(scaled.is_finite() && scaled < MAX_PART as f64 / 2.0) {
        return Err(DpError::Parameter(format!(
            "the noise scale {scale} (sensitivity {sensitivity} / epsilon {epsilon}) is too large"
        )));
    }
    // +1 absorbs the rounding of the float division above.
    let num = scaled.ceil() as u128 + 1;
    Rational::new(num, SCALE_DEN)
}

/// The smallest τ ≥ k such that a group of one customer is shown with probability at
/// most δ: P(1 + Z ≥ τ) ≤ δ for Z discrete Laplace of scale t. With q = exp(−1/t),
/// P(Z ≥ m) = q^m / (1 + q) ≤ q^m, so m = ⌈t·ln(1/δ)⌉ suffices; τ = max(k, m + 1) (one
/// more than needed, to absorb the float rounding of the logarithm).
pub fn selection_threshold(count_scale: Rational, delta: f64, k: u64) -> Result<u64, DpError> {
    if !(delta.is_finite() && delta > 0.0 && delta < 1.0) {
        return Err(DpError::Parameter(format!(
            "delta is {delta}; it must be above 0 and below 1"
        )));
    }
    let m = (count_scale.to_f64() * (1.0 / delta).ln()).ceil();
    if !(m.is_finite() && m < 1e15) {
        return Err(DpError::Parameter(format!(
            "the partition-selection threshold for delta {delta} is too large"
        )));
    }
    Ok(k.max(m as u64 + 2))
}

/// Standard deviation of discrete Laplace noise of scale t: √(2q) / (1 − q), q = e^(−1/t).
pub fn laplace_std(scale: f64) -> f64 {
    let q = (-1.0 / scale).exp();
    (2.0 * q).sqrt() / (1.0 - q)
}

/// A metric's quantization for SUM: values are clamped to the agreed bounds, divided by a
/// power-of-two step g (exact in binary floating point) and rounded to an integer, so the
/// sum is an exact integer and its sensitivity an exact integer number of steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    min: f64,
    max: f64,
    step: f64,
    sensitivity: u64,
}

impl Quantizer {
    /// For a metric agreed within `[min, max]`.
    pub fn new(min: f64, max: f64) -> Result<Self, DpError> {
        if !(min.is_finite() && max.is_finite() && min <= max) {
            return Err(DpError::Parameter(format!(
                "metric bounds [{min}, {max}] must be finite with min <= max"
            )));
        }
        let bound = min.abs().max(max.abs());
        let exponent = if bound > 0.0 {
            (bound.log2().ceil() as i32).clamp(-1000, 1000)
        } else {
            0
        };
        let step = 2f64.powi(exponent - SUM_RESOLUTION_BITS);
        let lo = (min / step).round();
        let hi = (max / step).round();
        let sensitivity = lo.abs().max(hi.abs()) as u64;
        Ok(Self {
            min,
            max,
            step,
            sensitivity,
        })
    }

    /// The value in steps, after clamping to the bounds (a second clamp behind the one at
    /// upload); at most [`Self::sensitivity`] in absolute value.
    pub fn quantize(&self, value: f64) -> i64 {
        let clamped = if value.is_nan() {
            0.0_f64.clamp(self.min, self.max)
        } else {
            value.clamp(self.min, self.max)
        };
        (clamped / self.step).round() as i64
    }

    /// The step g.
    pub fn step(&self) -> f64 {
        self.step
    }

    /// The most one customer can move a quantized sum, in steps.
    pub fn sensitivity(&self) -> u64 {
        self.sensitivity
    }

    /// The agreed bounds.
    pub fn bounds(&self) -> (f64, f64) {
        (self.min, self.max)
    }
}

/// ε in ledger units, rounded up (a cost).
pub fn epsilon_cost_units(epsilon: f64) -> u64 {
    (epsilon / EPSILON_UNIT).ceil() as u64
}

/// ε in ledger units, rounded down (a budget).
pub fn epsilon_budget_units(epsilon: f64) -> u64 {
    (epsilon / EPSILON_UNIT).floor() as u64
}

/// δ in ledger units, rounded up.
pub fn delta_cost_units(delta: f64) -> u64 {
    (delta / DELTA_UNIT).ceil() as u64
}

/// Ledger units back to ε.
pub fn epsilon_from_units(units: u64) -> f64 {
    units as f64 * EPSILON_UNIT
}

/// Ledger units back to δ.
pub fn delta_from_units(units: u64) -> f64 {
    units as f64 * DELTA_UNIT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::discrete_laplace;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn scales_round_up() {
        let s = laplace_scale(1, 0.5).unwrap();
        assert!(s.to_f64() >= 2.0);
        assert!(s.to_f64() < 2.0 + 1e-5);
        let s = laplace_scale(3, 0.1).unwrap();
        assert!(s.to_f64() >= 30.0);
        assert!(laplace_scale(1, 0.0).is_err());
        assert!(laplace_scale(u64::MAX, 1e-30).is_err());
    }

    #[test]
    fn threshold_bounds_the_release_of_a_single_customer() {
        // Exact tail: P(1 + Z >= τ) = q^(τ-1) / (1 + q).
        for (eps, delta, k) in [(0.5, 1e-6, 10u64), (0.1, 1e-6, 50), (1.0, 1e-9, 10)] {
            let scale = laplace_scale(1, eps).unwrap();
            let tau = selection_threshold(scale, delta, k).unwrap();
            let q = (-1.0 / scale.to_f64()).exp();
            let p = q.powi((tau - 1) as i32) / (1.0 + q);
            assert!(
                p <= delta,
                "eps {eps}: τ = {tau} releases with {p} > {delta}"
            );
            assert!(tau >= k);
        }
        // k wins when it is larger.
        let scale = laplace_scale(1, 5.0).unwrap();
        assert_eq!(selection_threshold(scale, 1e-6, 50).unwrap(), 50);
    }

    #[test]
    fn threshold_holds_empirically() {
        // A one-customer group at ε = 2 (scale 0.5): τ small enough to count the hits.
        let scale = laplace_scale(1, 2.0).unwrap();
        let delta = 1e-3;
        let tau = selection_threshold(scale, delta, 1).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let n = 200_000;
        let hits = (0..n)
            .filter(|_| 1 + discrete_laplace(&mut rng, scale) >= i128::from(tau))
            .count();
        // Expected hits ≤ δ·n = 200; 5 sd of a Binomial(n, δ) is ≈ 71.
        assert!(hits <= 271, "{hits} releases of a one-customer group");
    }

    #[test]
    fn plan_splits_epsilon() {
        let p = QueryPrivacy::new(0.6, 1e-6, 50).unwrap();
        let plan = p.plan(3).unwrap();
        assert!((plan.epsilon_each - 0.2).abs() < 1e-12);
        assert!(plan.count_scale.to_f64() >= 5.0);
        assert!(plan.threshold >= 50);
        assert!(QueryPrivacy::new(0.0, 1e-6, 50).is_err());
        assert!(QueryPrivacy::new(1.0, 1.0, 50).is_err());
    }

    #[test]
    fn quantizer_clamps_and_bounds() {
        let q = Quantizer::new(0.0, 500.0).unwrap();
        assert!(q.sensitivity() <= 1 << SUM_RESOLUTION_BITS);
        assert!(q.sensitivity() >= 1 << (SUM_RESOLUTION_BITS - 1));
        assert_eq!(q.quantize(1e9), q.quantize(500.0));
        assert_eq!(q.quantize(-3.0), 0);
        assert_eq!(q.quantize(500.0) as u64, q.sensitivity());
        let exact = q.quantize(123.25) as f64 * q.step();
        assert!((exact - 123.25).abs() <= q.step() / 2.0);
        let neg = Quantizer::new(-40.0, 10.0).unwrap();
        assert_eq!(neg.quantize(-40.0).unsigned_abs(), neg.sensitivity());
        let zero = Quantizer::new(0.0, 0.0).unwrap();
        assert_eq!(zero.sensitivity(), 0);
        assert!(Quantizer::new(1.0, 0.0).is_err());
    }

    #[test]
    fn ledger_units_round_in_the_safe_direction() {
        assert_eq!(epsilon_cost_units(0.1) * 100, epsilon_budget_units(10.0));
        assert!(epsilon_cost_units(0.3) * 3 >= epsilon_budget_units(0.9));
        assert_eq!(epsilon_from_units(epsilon_cost_units(0.5)), 0.5);
        assert!(delta_cost_units(1e-6) > 0);
    }
}
