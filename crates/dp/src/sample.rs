//! Exact samplers over the integers, after Canonne, Kamath and Steinke, "The Discrete
//! Gaussian for Differential Privacy" (NeurIPS 2020, arXiv:2004.00010), Algorithms 1–3.
//!
//! Every probability is a ratio of integers and every coin is a uniform integer drawn by
//! rejection from the random generator, so no floating-point number is ever sampled
//! (Mironov 2012, "On significance of the least significant bits for differential
//! privacy", shows how textbook floating-point Laplace leaks).

use rand_core::RngCore;

use crate::DpError;

/// A positive rational number `num / den` (both at most 2^64, so products fit in u128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    num: u128,
    den: u128,
}

/// The largest numerator or denominator a [`Rational`] may have.
pub const MAX_PART: u128 = 1 << 64;

impl Rational {
    /// `num / den`; both must be in 1..=2^64.
    pub fn new(num: u128, den: u128) -> Result<Self, DpError> {
        if num == 0 || den == 0 || num > MAX_PART || den > MAX_PART {
            return Err(DpError::Parameter(format!(
                "the rational {num}/{den} must have numerator and denominator in 1..=2^64"
            )));
        }
        Ok(Self { num, den })
    }

    /// The numerator.
    pub fn num(&self) -> u128 {
        self.num
    }

    /// The denominator.
    pub fn den(&self) -> u128 {
        self.den
    }

    /// The value as a float (for display and error estimates only, never for sampling).
    pub fn to_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// A uniform integer in `0..n` (`n > 0`), by rejection: exact, no modulo bias.
pub fn uniform_below<R: RngCore + ?Sized>(rng: &mut R, n: u128) -> u128 {
    debug_assert!(n > 0);
    if n <= 1 {
        return 0;
    }
    let bits = 128 - (n - 1).leading_zeros();
    let mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    loop {
        let hi = u128::from(rng.next_u64());
        let lo = u128::from(rng.next_u64());
        let x = ((hi << 64) | lo) & mask;
        if x < n {
            return x;
        }
    }
}

/// Bernoulli(`num / den`) with `num <= den`, `den > 0`.
pub fn bernoulli<R: RngCore + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    uniform_below(rng, den) < num
}

/// Bernoulli(exp(−γ)) for a rational γ = `num / den` in [0, 1] (CKS Algorithm 1, first part).
fn bernoulli_exp_at_most_one<R: RngCore + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    // A ~ Bernoulli(γ / k). `den * k` stays below 2^128 in any run that can happen:
    // reaching k = 2^64 needs 2^64 consecutive successes of coins with mean at most 1/k.
    while let Some(d) = den.checked_mul(k) {
        if !bernoulli(rng, num, d) {
            break;
        }
        k += 1;
    }
    // K is the first k whose coin failed; return K odd.
    k % 2 == 1
}

/// Bernoulli(exp(−γ)) for a rational γ = `num / den` ≥ 0 (CKS Algorithm 1).
pub fn bernoulli_exp<R: RngCore + ?Sized>(rng: &mut R, num: u128, den: u128) -> bool {
    let whole = num / den;
    let mut i = 0u128;
    while i < whole {
        if !bernoulli_exp_at_most_one(rng, 1, 1) {
            return false;
        }
        i += 1;
    }
    bernoulli_exp_at_most_one(rng, num % den, den)
}

/// One draw of the discrete Laplace distribution with scale `t = scale`:
/// P(Z = z) ∝ exp(−|z| / t) over the integers (CKS Algorithm 2, with scale t/s given as
/// `scale.num() / scale.den()`).
pub fn discrete_laplace<R: RngCore + ?Sized>(rng: &mut R, scale: Rational) -> i128 {
    let (t, s) = (scale.num, scale.den);
    loop {
        let u = uniform_below(rng, t);
        if !bernoulli_exp(rng, u, t) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_at_most_one(rng, 1, 1) {
            v += 1;
        }
        // X = U + t·V; V is geometric with mean e − 1 ≈ 1.7, so t·V fits easily.
        let x = u.saturating_add(t.saturating_mul(v));
        let y = x / s;
        let negative = bernoulli(rng, 1, 2);
        if negative && y == 0 {
            continue;
        }
        let y = i128::try_from(y).unwrap_or(i128::MAX);
        return if negative { -y } else { y };
    }
}

/// Integer square root (floor).
fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = (n as f64).sqrt() as u128;
    while x.checked_mul(x).is_none_or(|sq| sq > n) {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1).is_some_and(|sq| sq <= n) {
        x += 1;
    }
    x
}

/// One draw of the discrete Gaussian with variance parameter σ² = `sigma2`:
/// P(Z = z) ∝ exp(−z² / (2σ²)) over the integers (CKS Algorithm 3).
///
/// σ² = n/d must have n, d ≤ 2^32 (checked by [`DiscreteGaussian::new`]). The acceptance
/// probability exp(−(|Y| − σ²/t)² / (2σ²)) is computed as a ratio of 128-bit integers; in
/// the only case where the numerator does not fit (|Y| beyond 2^30 σ, itself less likely
/// than 2^-(2^29)), the candidate is rejected, which changes the distribution by less than
/// that probability.
pub fn discrete_gaussian<R: RngCore + ?Sized>(rng: &mut R, sigma2: Rational) -> i128 {
    let (n, d) = (sigma2.num, sigma2.den);
    let t = isqrt(n / d) + 1;
    let lap = Rational { num: t, den: 1 };
    loop {
        let y = discrete_laplace(rng, lap);
        let abs = y.unsigned_abs();
        // γ = (|Y| − σ²/t)² / (2σ²) = (|Y|·t·d − n)² / (2·n·t²·d).
        let Some(a) = abs.checked_mul(t).and_then(|v| v.checked_mul(d)) else {
            continue;
        };
        let diff = a.abs_diff(n);
        let Some(num) = diff.checked_mul(diff) else {
            continue;
        };
        let Some(den) = t
            .checked_mul(t)
            .and_then(|v| v.checked_mul(2 * n))
            .and_then(|v| v.checked_mul(d))
        else {
            continue;
        };
        if bernoulli_exp(rng, num, den) {
            return y;
        }
    }
}

/// The discrete Gaussian's parameters, checked.
#[derive(Debug, Clone, Copy)]
pub struct DiscreteGaussian {
    sigma2: Rational,
}

impl DiscreteGaussian {
    /// σ² = `num / den`, both in 1..=2^32.
    pub fn new(num: u128, den: u128) -> Result<Self, DpError> {
        if num == 0 || den == 0 || num > 1 << 32 || den > 1 << 32 {
            return Err(DpError::Parameter(format!(
                "the discrete Gaussian's variance {num}/{den} must have numerator and denominator in 1..=2^32"
            )));
        }
        Ok(Self {
            sigma2: Rational { num, den },
        })
    }

    /// One draw.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> i128 {
        discrete_gaussian(rng, self.sigma2)
    }

    /// σ².
    pub fn sigma2(&self) -> Rational {
        self.sigma2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const DRAWS: usize = 60_000;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// Exact moments of the discrete Laplace with q = exp(−1/t):
    /// Var = 2q / (1 − q)², P(|Z| ≥ m) = 2 q^m / (1 + q) for m ≥ 1.
    fn laplace_variance(t: f64) -> f64 {
        let q = (-1.0 / t).exp();
        2.0 * q / ((1.0 - q) * (1.0 - q))
    }

    fn laplace_tail(t: f64, m: i128) -> f64 {
        let q = (-1.0 / t).exp();
        2.0 * q.powi(m as i32) / (1.0 + q)
    }

    /// The moments of `draws` against the exact ones, with tolerances of 5 standard errors
    /// (each derived from the distribution's own fourth moment / binomial variance), so a
    /// correct sampler fails with probability below 1e-6 per check; the seeds are fixed,
    /// so the test is deterministic.
    fn check(draws: &[i128], variance: f64, fourth: f64, tail_at: i128, tail: f64) {
        let n = draws.len() as f64;
        let mean = draws.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = draws.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n;
        let se_mean = (variance / n).sqrt();
        assert!(
            mean.abs() < 5.0 * se_mean,
            "mean {mean} is more than 5 standard errors ({se_mean}) from 0"
        );
        let se_var = ((fourth - variance * variance) / n).sqrt();
        assert!(
            (var - variance).abs() < 5.0 * se_var,
            "variance {var}, expected {variance} ± {}",
            5.0 * se_var
        );
        let hits = draws.iter().filter(|x| x.abs() >= tail_at).count() as f64 / n;
        let se_tail = (tail * (1.0 - tail) / n).sqrt();
        assert!(
            (hits - tail).abs() < 5.0 * se_tail,
            "P(|Z| >= {tail_at}) = {hits}, expected {tail} ± {}",
            5.0 * se_tail
        );
        let symmetric = draws.iter().filter(|&&x| x > 0).count() as f64
            - draws.iter().filter(|&&x| x < 0).count() as f64;
        assert!(
            symmetric.abs() < 5.0 * n.sqrt(),
            "positive and negative draws differ by {symmetric}"
        );
    }

    /// Σ z^4 p(z) by summation over the exact pmf (the distributions are symmetric).
    fn fourth_moment(pmf: impl Fn(i128) -> f64, limit: i128) -> f64 {
        let total: f64 = (-limit..=limit).map(&pmf).sum();
        (-limit..=limit)
            .map(|z| (z as f64).powi(4) * pmf(z))
            .sum::<f64>()
            / total
    }

    #[test]
    fn discrete_laplace_matches_its_distribution() {
        for (seed, num, den) in [(1u64, 1u128, 1u128), (2, 5, 2), (3, 3, 10), (4, 12, 1)] {
            let scale = Rational::new(num, den).unwrap();
            let t = scale.to_f64();
            let mut r = rng(seed);
            let draws: Vec<i128> = (0..DRAWS)
                .map(|_| discrete_laplace(&mut r, scale))
                .collect();
            let pmf = |z: i128| (-(z.abs() as f64) / t).exp();
            let fourth = fourth_moment(pmf, (t * 60.0) as i128 + 10);
            let m = (2.0 * t).ceil().max(1.0) as i128;
            check(&draws, laplace_variance(t), fourth, m, laplace_tail(t, m));
        }
    }

    #[test]
    fn discrete_gaussian_matches_its_distribution() {
        for (seed, num, den) in [(5u64, 1u128, 1u128), (6, 9, 1), (7, 1, 4), (8, 201, 2)] {
            let g = DiscreteGaussian::new(num, den).unwrap();
            let s2 = g.sigma2().to_f64();
            let pmf = |z: i128| (-((z * z) as f64) / (2.0 * s2)).exp();
            let limit = (s2.sqrt() * 40.0) as i128 + 10;
            let total: f64 = (-limit..=limit).map(pmf).sum();
            let variance = (-limit..=limit)
                .map(|z| (z * z) as f64 * pmf(z))
                .sum::<f64>()
                / total;
            let fourth = fourth_moment(pmf, limit);
            let m = (1.5 * s2.sqrt()).ceil().max(1.0) as i128;
            let tail = (-limit..=limit)
                .filter(|z| z.abs() >= m)
                .map(pmf)
                .sum::<f64>()
                / total;
            let mut r = rng(seed);
            let draws: Vec<i128> = (0..DRAWS).map(|_| g.sample(&mut r)).collect();
            check(&draws, variance, fourth, m, tail);
        }
    }

    #[test]
    fn bernoulli_exp_has_mean_exp_minus_gamma() {
        let mut r = rng(9);
        for (num, den) in [(0u128, 1u128), (1, 2), (1, 1), (7, 3), (5, 1)] {
            let p = (-(num as f64) / den as f64).exp();
            let hits = (0..DRAWS)
                .filter(|_| bernoulli_exp(&mut r, num, den))
                .count() as f64;
            let mean = hits / DRAWS as f64;
            let se = (p * (1.0 - p) / DRAWS as f64).sqrt().max(1e-9);
            assert!(
                (mean - p).abs() <= 5.0 * se,
                "Bernoulli(exp(-{num}/{den})) has mean {mean}, expected {p}"
            );
        }
    }

    #[test]
    fn uniform_below_is_uniform_and_in_range() {
        let mut r = rng(10);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            let x = uniform_below(&mut r, 7);
            counts[usize::try_from(x).unwrap()] += 1;
        }
        // Each count is Binomial(70000, 1/7): mean 10000, sd ≈ 92.6.
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 5.0 * 92.6, "{counts:?}");
        }
        assert_eq!(uniform_below(&mut r, 1), 0);
    }

    #[test]
    fn isqrt_is_exact() {
        for n in [
            0u128,
            1,
            2,
            3,
            4,
            15,
            16,
            17,
            1 << 64,
            (1 << 64) + 1,
            u128::MAX,
        ] {
            let r = isqrt(n);
            assert!(r * r <= n);
            assert!((r + 1).checked_mul(r + 1).is_none_or(|sq| sq > n));
        }
    }

    #[test]
    fn parameters_are_checked() {
        assert!(Rational::new(0, 1).is_err());
        assert!(Rational::new(1, 0).is_err());
        assert!(Rational::new(MAX_PART + 1, 1).is_err());
        assert!(DiscreteGaussian::new(1 << 33, 1).is_err());
    }
}
