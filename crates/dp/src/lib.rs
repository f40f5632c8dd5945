#![forbid(unsafe_code)]
//! Accord's differential privacy, pure (no I/O, no query engine):
//! - [`sample`]: exact discrete Laplace and discrete Gaussian samplers after Canonne,
//!   Kamath and Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS 2020,
//!   arXiv:2004.00010), using integer arithmetic only;
//! - [`account`]: how one query's ε and δ are spent (noise scales, DP partition
//!   selection threshold, metric quantization) and budget arithmetic in integer units.
//!
//! Noise is drawn from a [`NoiseSource`]: ChaCha20 seeded from the operating system, or
//! from a fixed seed in tests. docs/PRIVACY.md states the guarantee.

pub mod account;
pub mod sample;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

pub use account::{Quantizer, QueryPlan, QueryPrivacy};
pub use sample::{DiscreteGaussian, Rational, discrete_gaussian, discrete_laplace};

/// Errors of this crate: parameters outside what the samplers or the accounting support.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum DpError {
    /// A privacy or noise parameter is out of range; the message names it and the range.
    #[error("differential privacy parameter: {0}")]
    Parameter(String),
    /// The operating system's random generator failed.
    #[error("could not seed the noise generator from the operating system: {0}")]
    Entropy(String),
}

/// A cryptographically secure random generator for noise (ChaCha20).
pub struct NoiseSource {
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for NoiseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generator's state predicts the noise: never print it.
        f.write_str("NoiseSource(..)")
    }
}

impl NoiseSource {
    /// ChaCha20 seeded from the operating system.
    pub fn from_os() -> Result<Self, DpError> {
        let rng = ChaCha20Rng::try_from_os_rng().map_err(|e| DpError::Entropy(e.to_string()))?;
        Ok(Self { rng })
    }

    /// ChaCha20 from a fixed seed: reproducible noise, for tests only.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
        }
    }

    /// One discrete Laplace draw of scale `scale`.
    pub fn laplace(&mut self, scale: Rational) -> i128 {
        discrete_laplace(&mut self.rng, scale)
    }

    /// The generator, for the samplers of [`sample`].
    pub fn rng(&mut self) -> &mut impl RngCore {
        &mut self.rng
    }
}
