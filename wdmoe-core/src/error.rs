//! The crate's one error type: small, `Copy`, printable, and `core::error::Error`.

use core::fmt;

/// Why an input was rejected. Every fallible function of the crate returns
/// this; no function panics on any input.
///
/// The `&'static str` fields name the offending parameter, with its unit.
///
/// ```
/// use wdmoe_core::{link, Error};
/// let err = link::free_space_path_loss_db(3.5_f64, -1.0).unwrap_err();
/// assert_eq!(err, Error::NotPositive("distance_m"));
/// assert_eq!(err.to_string(), "distance_m must be finite and > 0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// A value was NaN.
    NaN(&'static str),
    /// A value must be finite and strictly positive.
    NotPositive(&'static str),
    /// A value must be finite and ≥ 0.
    Negative(&'static str),
    /// A value must be finite (no ±∞).
    NotFinite(&'static str),
    /// A latency was ≤ 0 (only `+∞`, meaning unreachable, or a positive finite
    /// number of seconds is allowed).
    LatencyNotPositive,
    /// `k` must satisfy `1 ≤ k ≤ n`.
    KOutOfRange,
    /// `θ` must satisfy `0 ≤ θ ≤ 0.5`.
    ThetaOutOfRange,
    /// More experts than the capacity `N` of the output type.
    CapacityExceeded,
    /// Two inputs that describe the same experts have different lengths.
    LengthMismatch,
    /// An input slice was empty.
    Empty,
    /// Every device is unreachable (all latencies `+∞`).
    NoReachableExpert,
    /// A value was outside the range a model is defined for.
    OutOfRange(&'static str),
    /// The total bandwidth cannot bring every device under a finite latency
    /// (some device has zero channel gain or zero transmit power).
    Infeasible,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NaN(what) => write!(f, "{what} is NaN"),
            Error::NotPositive(what) => write!(f, "{what} must be finite and > 0"),
            Error::Negative(what) => write!(f, "{what} must be finite and >= 0"),
            Error::NotFinite(what) => write!(f, "{what} must be finite"),
            Error::LatencyNotPositive => f.write_str(
                "latency_s entries must be > 0 seconds (or +inf for an unreachable device)",
            ),
            Error::KOutOfRange => f.write_str("k must satisfy 1 <= k <= number of experts"),
            Error::ThetaOutOfRange => f.write_str("theta must satisfy 0 <= theta <= 0.5"),
            Error::CapacityExceeded => f.write_str("more experts than the capacity N"),
            Error::LengthMismatch => f.write_str("input lengths differ"),
            Error::Empty => f.write_str("input is empty"),
            Error::NoReachableExpert => {
                f.write_str("no expert is reachable (every latency is +inf)")
            }
            Error::OutOfRange(what) => write!(f, "{what} is outside the model's valid range"),
            Error::Infeasible => {
                f.write_str("no bandwidth allocation gives every device a finite latency")
            }
        }
    }
}

impl core::error::Error for Error {}

/// Checks `x` is finite and > 0.
pub(crate) fn positive<F: crate::Float>(x: F, what: &'static str) -> Result<F, Error> {
    if x.is_nan() {
        Err(Error::NaN(what))
    } else if x.is_finite() && x > F::ZERO {
        Ok(x)
    } else {
        Err(Error::NotPositive(what))
    }
}

/// Checks `x` is finite and ≥ 0.
pub(crate) fn non_negative<F: crate::Float>(x: F, what: &'static str) -> Result<F, Error> {
    if x.is_nan() {
        Err(Error::NaN(what))
    } else if x.is_finite() && x >= F::ZERO {
        Ok(x)
    } else {
        Err(Error::Negative(what))
    }
}

/// Checks `x` is finite.
pub(crate) fn finite<F: crate::Float>(x: F, what: &'static str) -> Result<F, Error> {
    if x.is_nan() {
        Err(Error::NaN(what))
    } else if x.is_finite() {
        Ok(x)
    } else {
        Err(Error::NotFinite(what))
    }
}
