//! Compute and payload model: expert FLOPs, equation (4), and payload bits,
//! equation (5).

use crate::error::{non_negative, positive};
use crate::{Error, Float};

/// Shape of one expert FFN (SwiGLU): `y = W2 · (silu(W1·x) ⊙ (W3·x))`,
/// `W1, W3: m_h × m`, `W2: m × m_h`.
///
/// ```
/// use wdmoe_core::compute::ExpertShape;
/// let s = ExpertShape::MIXTRAL_8X7B;
/// assert_eq!((s.hidden(), s.ffn_hidden()), (4096, 14336));
/// assert_eq!(s.weight_count(), 3 * 4096 * 14336);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExpertShape {
    hidden: u32,
    ffn_hidden: u32,
}

impl ExpertShape {
    /// Mixtral 8x7B: `m = 4096`, `m_h = 14336`.
    pub const MIXTRAL_8X7B: ExpertShape = ExpertShape {
        hidden: 4096,
        ffn_hidden: 14336,
    };

    /// A shape with hidden size `m` and expert hidden size `m_h`, both ≥ 1.
    pub fn new(hidden: u32, ffn_hidden: u32) -> Result<Self, Error> {
        if hidden == 0 {
            return Err(Error::NotPositive("hidden (m)"));
        }
        if ffn_hidden == 0 {
            return Err(Error::NotPositive("ffn_hidden (m_h)"));
        }
        Ok(Self { hidden, ffn_hidden })
    }

    /// Model hidden size `m` (elements per token).
    pub fn hidden(&self) -> u32 {
        self.hidden
    }

    /// Expert hidden size `m_h`.
    pub fn ffn_hidden(&self) -> u32 {
        self.ffn_hidden
    }

    /// Number of weights of one expert: `3·m·m_h` (saturating at
    /// `u64::MAX`, which only shapes beyond 2^31 × 2^32 reach).
    pub fn weight_count(&self) -> u64 {
        (self.hidden as u64 * self.ffn_hidden as u64).saturating_mul(3)
    }

    /// Equation (4): FLOPs per token of one expert,
    /// `L_comp = 4·m·m_h + 2·m_h·m + η·m_h + m_h`, where `eta_flops` (η) is the
    /// cost of the activation per element (the project's default is 4, docs/SPEC.md).
    ///
    /// ```
    /// use wdmoe_core::compute::ExpertShape;
    /// // 6·4096·14336 + 4·14336 + 14336 = 352,321,536 + 71,680 = 352,393,216
    /// let f: f64 = ExpertShape::MIXTRAL_8X7B.flops_per_token(4.0).unwrap();
    /// assert_eq!(f, 352_393_216.0);
    /// ```
    pub fn flops_per_token<F: Float>(&self, eta_flops: F) -> Result<F, Error> {
        let eta = non_negative(eta_flops, "eta_flops")?;
        let m = F::from_f64(self.hidden as f64);
        let mh = F::from_f64(self.ffn_hidden as f64);
        Ok(F::from_f64(4.0) * m * mh + F::from_f64(2.0) * mh * m + eta * mh + mh)
    }

    /// Equation (5): payload bits per token and direction, `L_comm = ε·m`,
    /// with `bits_per_element` (ε) = 16 for fp16.
    ///
    /// ```
    /// use wdmoe_core::compute::ExpertShape;
    /// let bits: f64 = ExpertShape::MIXTRAL_8X7B.payload_bits(16.0).unwrap();
    /// assert_eq!(bits, 65_536.0);
    /// ```
    pub fn payload_bits<F: Float>(&self, bits_per_element: F) -> Result<F, Error> {
        let eps = positive(bits_per_element, "bits_per_element")?;
        Ok(eps * F::from_f64(self.hidden as f64))
    }
}
