//! The floating-point abstraction: one sealed trait, implemented for `f32`
//! (firmware) and `f64` (simulation), backed by `libm` so it works without `std`.
//!
//! Every function of the crate is generic over [`Float`]. The trait is sealed:
//! it cannot be implemented outside this crate, so the crate is free to add
//! methods without breaking users, and every implementation is one we test.

use core::fmt::{Debug, Display};
use core::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point scalar the crate computes in: `f32` or `f64`.
///
/// ```
/// use wdmoe_core::Float;
/// fn twice<F: Float>(x: F) -> F { x + x }
/// assert_eq!(twice(1.5_f32), 3.0);
/// assert_eq!(twice(1.5_f64), 3.0);
/// ```
pub trait Float:
    sealed::Sealed
    + Copy
    + Debug
    + Display
    + PartialOrd
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// 1/2.
    const HALF: Self;
    /// Positive infinity.
    const INFINITY: Self;
    /// Machine epsilon.
    const EPSILON: Self;
    /// The smallest positive normal number (below it precision is lost).
    const MIN_POSITIVE: Self;
    /// Converts from `f64` (rounding to nearest for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Converts a count (exact up to 2^24 for `f32`, 2^53 for `f64`).
    fn from_u32(v: u32) -> Self;
    /// e^x.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Base-2 logarithm.
    fn log2(self) -> Self;
    /// Base-10 logarithm.
    fn log10(self) -> Self;
    /// log2(1 + x), accurate for small x.
    fn log2_1p(self) -> Self;
    /// x^y.
    fn powf(self, y: Self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// `true` for NaN.
    fn is_nan(self) -> bool;
    /// `true` for neither infinite nor NaN.
    fn is_finite(self) -> bool;
    /// `true` for +∞.
    fn is_pos_inf(self) -> bool {
        self == Self::INFINITY
    }
    /// The larger of two numbers (NaN-free inputs assumed).
    fn max_of(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
    /// The smaller of two numbers (NaN-free inputs assumed).
    fn min_of(self, other: Self) -> Self {
        if other < self {
            other
        } else {
            self
        }
    }
}

macro_rules! impl_float {
    ($t:ty, $exp:path, $ln:path, $log2:path, $log10:path, $log1p:path, $pow:path, $sqrt:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const HALF: Self = 0.5;
            const INFINITY: Self = <$t>::INFINITY;
            const EPSILON: Self = <$t>::EPSILON;
            const MIN_POSITIVE: Self = <$t>::MIN_POSITIVE;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_u32(v: u32) -> Self {
                v as $t
            }
            #[inline]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline]
            fn ln(self) -> Self {
                $ln(self)
            }
            #[inline]
            fn log2(self) -> Self {
                $log2(self)
            }
            #[inline]
            fn log10(self) -> Self {
                $log10(self)
            }
            #[inline]
            fn log2_1p(self) -> Self {
                $log1p(self) * (1.0 / core::f64::consts::LN_2) as $t
            }
            #[inline]
            fn powf(self, y: Self) -> Self {
                $pow(self, y)
            }
            #[inline]
            fn sqrt(self) -> Self {
                $sqrt(self)
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}

impl_float!(
    f32,
    libm::expf,
    libm::logf,
    libm::log2f,
    libm::log10f,
    libm::log1pf,
    libm::powf,
    libm::sqrtf
);
impl_float!(
    f64,
    libm::exp,
    libm::log,
    libm::log2,
    libm::log10,
    libm::log1p,
    libm::pow,
    libm::sqrt
);
