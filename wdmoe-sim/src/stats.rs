//! Small statistics helpers.

/// Nearest-rank percentile `pct ∈ \[0, 100\]` of ascending `sorted` values
/// (NaN for an empty slice): the smallest value with at least `pct` % of the
/// values ≤ it.
///
/// ```
/// use wdmoe_sim::stats::percentile_sorted;
/// let v = [1.0, 2.0, 3.0, 4.0];
/// assert_eq!(percentile_sorted(&v, 50.0), 2.0);
/// assert_eq!(percentile_sorted(&v, 95.0), 4.0);
/// assert_eq!(percentile_sorted(&v, 0.0), 1.0);
/// ```
pub fn percentile_sorted(sorted: &[f64], pct: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    let rank = ((pct / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Arithmetic mean (NaN for an empty slice), summed in order.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}
