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

/// Every parameter name an [`Error`] of this crate carries, keyed by its
/// text up to any `" ("` remark, with the C string the C ABI reports
/// (`wdmoe_last_error_param`). A test checks that every name in the
/// sources is here.
#[cfg(any(feature = "capi", test))]
pub(crate) const PARAMS: &[(&str, &core::ffi::CStr)] = &[
    ("bandwidth_hz", c"bandwidth_hz"),
    ("bits_per_element", c"bits_per_element"),
    ("bs_height_m", c"bs_height_m"),
    ("channel_gain", c"channel_gain"),
    ("compute_flops_per_s", c"compute_flops_per_s"),
    ("db", c"db"),
    ("distance_2d_m", c"distance_2d_m"),
    ("distance_m", c"distance_m"),
    ("eta_flops", c"eta_flops"),
    ("expert index", c"expert index"),
    ("fading_power", c"fading_power"),
    ("ffn_hidden", c"ffn_hidden"),
    ("flops", c"flops"),
    ("flops_per_token", c"flops_per_token"),
    ("frequency_ghz", c"frequency_ghz"),
    ("gain_down", c"gain_down"),
    ("gain_up", c"gain_up"),
    ("hidden", c"hidden"),
    ("latency_s", c"latency_s"),
    ("linear power ratio", c"linear power ratio"),
    ("logits", c"logits"),
    ("n0_dbm_per_hz", c"n0_dbm_per_hz"),
    ("n0_w_per_hz", c"n0_w_per_hz"),
    ("noise_figure_db", c"noise_figure_db"),
    ("path_loss_db", c"path_loss_db"),
    ("payload_bits", c"payload_bits"),
    ("power_dbm", c"power_dbm"),
    ("power_w", c"power_w"),
    ("theta", c"theta"),
    ("total_bandwidth_hz", c"total_bandwidth_hz"),
    ("tx_power_down_w", c"tx_power_down_w"),
    ("tx_power_up_w", c"tx_power_up_w"),
    ("tx_power_w", c"tx_power_w"),
    ("ut_height_m", c"ut_height_m"),
    ("weights", c"weights"),
];

impl Error {
    /// The parameter this error names, without any remark: `Some("theta")`
    /// for `NaN("theta")`, `Some("frequency_ghz")` for
    /// `OutOfRange("frequency_ghz (3GPP TR 38.901: 0.5..=100)")`; `None`
    /// for the variants that name none.
    ///
    /// ```
    /// use wdmoe_core::Error;
    /// assert_eq!(Error::NaN("theta").param(), Some("theta"));
    /// assert_eq!(Error::OutOfRange("bs_height_m (must exceed 1 m)").param(), Some("bs_height_m"));
    /// assert_eq!(Error::KOutOfRange.param(), None);
    /// ```
    pub fn param(&self) -> Option<&'static str> {
        let s = match *self {
            Error::NaN(s)
            | Error::NotPositive(s)
            | Error::Negative(s)
            | Error::NotFinite(s)
            | Error::OutOfRange(s) => s,
            _ => return None,
        };
        // Byte search, not `str::find`: no panic path in the C entry points.
        let cut = s.as_bytes().windows(2).position(|w| w == b" (");
        Some(cut.and_then(|i| s.get(..i)).unwrap_or(s))
    }
}

/// 1 + the index of the error's parameter in [`PARAMS`], 0 when it names
/// none (or one missing from the table, which a test rules out).
#[cfg(feature = "capi")]
pub(crate) fn param_id(e: &Error) -> u32 {
    let Some(name) = e.param() else { return 0 };
    PARAMS
        .iter()
        .position(|&(k, _)| k == name)
        .map_or(0, |i| i as u32 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parameter name passed to an error in the sources is in
    /// [`PARAMS`], with the same text in its C string.
    #[test]
    #[cfg_attr(miri, ignore)] // string scanning only, no unsafe code
    fn params_table_covers_every_name_in_the_sources() {
        let sources = [
            include_str!("bandwidth.rs"),
            include_str!("compute.rs"),
            include_str!("latency.rs"),
            include_str!("link.rs"),
            include_str!("select.rs"),
        ];
        let ctors = [
            "positive(",
            "non_negative(",
            "finite(",
            "NaN(",
            "NotPositive(",
            "Negative(",
            "NotFinite(",
            "OutOfRange(",
        ];
        let mut found = 0;
        for src in sources {
            for line in src.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for ctor in ctors {
                    let Some(at) = line.find(ctor) else { continue };
                    let rest = &line[at + ctor.len()..];
                    let Some(q) = rest.find('"') else { continue };
                    let lit = &rest[q + 1..];
                    let name = &lit[..lit.find('"').unwrap()];
                    // `Error::param`'s rule: the text up to any " (" remark.
                    let key = name.split(" (").next().unwrap();
                    assert!(
                        PARAMS.iter().any(|&(k, c)| k == key && c.to_str() == Ok(k)),
                        "{name:?} is not in error::PARAMS"
                    );
                    found += 1;
                }
            }
        }
        assert!(found > 30, "only {found} names found: the scan is broken");
    }
}
