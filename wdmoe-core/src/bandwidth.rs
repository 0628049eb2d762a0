//! Bandwidth allocation among devices: the paper's even split, and the
//! min–max allocation that minimises the slowest selected device's latency.

use crate::error::{non_negative, positive};
use crate::latency::{DeviceLink, LatencyModel};
use crate::{Error, Float};

/// The paper's allocation: `total_bandwidth_hz / n` to each of the `n =
/// out.len()` devices \[Hz\].
///
/// ```
/// let mut b = [0.0_f64; 8];
/// wdmoe_core::bandwidth::even_split(100e6, &mut b).unwrap();
/// assert_eq!(b, [12.5e6; 8]);
/// ```
pub fn even_split<F: Float>(total_bandwidth_hz: F, out: &mut [F]) -> Result<(), Error> {
    let total = non_negative(total_bandwidth_hz, "total_bandwidth_hz")?;
    if out.is_empty() {
        return Err(Error::Empty);
    }
    let share = total / F::from_f64(out.len() as f64);
    out.iter_mut().for_each(|b| *b = share);
    Ok(())
}

/// Bisection steps of the outer (latency) and inner (bandwidth) searches.
const STEPS: u32 = 60;

/// Smallest bandwidth \[Hz\] ≤ `cap_hz` giving `dev` a latency ≤ `target_s`,
/// or `None` when even `cap_hz` is not enough.
fn bandwidth_for<F: Float>(
    model: &LatencyModel<F>,
    dev: &DeviceLink<F>,
    target_s: F,
    cap_hz: F,
) -> Result<Option<F>, Error> {
    if model.expert_latency_s(dev, cap_hz)? > target_s {
        return Ok(None);
    }
    let (mut lo, mut hi) = (F::ZERO, cap_hz);
    for _ in 0..STEPS {
        let mid = (lo + hi) * F::HALF;
        if model.expert_latency_s(dev, mid)? <= target_s {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// Min–max allocation of `total_bandwidth_hz` among `devices` (the selected
/// ones): the bandwidths \[Hz\] written to `out` minimise the largest latency
/// (eq. 6) among the devices, found by bisection on the common latency
/// target (the standard method: at the optimum every device's latency is
/// equal, each latency falling as its bandwidth grows). Returns that largest
/// latency \[s\]. The whole bandwidth is handed out; the result is never worse
/// than the even split.
///
/// ```
/// use wdmoe_core::{bandwidth, latency::{DeviceLink, LatencyModel}};
/// let model = LatencyModel::new(65_536.0_f64, 352_393_216.0, 3.98e-21).unwrap();
/// let near = DeviceLink::new(10.0, 1e-8, 0.2, 1e-8, 2e12).unwrap();
/// let far = DeviceLink::new(10.0, 1e-11, 0.2, 1e-11, 2e12).unwrap();
/// let mut b = [0.0; 2];
/// let t = bandwidth::min_max(&model, &[near, far], 20e6, &mut b).unwrap();
/// assert!(b[1] > b[0]); // the far device gets more bandwidth
/// let even = model.expert_latency_s(&far, 10e6).unwrap();
/// assert!(t < even);
/// ```
pub fn min_max<F: Float>(
    model: &LatencyModel<F>,
    devices: &[DeviceLink<F>],
    total_bandwidth_hz: F,
    out: &mut [F],
) -> Result<F, Error> {
    let total = positive(total_bandwidth_hz, "total_bandwidth_hz")?;
    if devices.is_empty() {
        return Err(Error::Empty);
    }
    if devices.len() != out.len() {
        return Err(Error::LengthMismatch);
    }
    let share = total / F::from_f64(devices.len() as f64);
    // Feasible upper bound: the even split's worst latency.
    let mut hi = F::ZERO;
    let mut lo = F::ZERO;
    for dev in devices {
        let t = model.expert_latency_s(dev, share)?;
        if !t.is_finite() {
            return Err(Error::Infeasible);
        }
        hi = hi.max_of(t);
        lo = lo.max_of(model.latency_floor_s(dev));
    }
    let fits = |target: F, out: &mut [F]| -> Result<bool, Error> {
        let mut used = F::ZERO;
        for (dev, b) in devices.iter().zip(out.iter_mut()) {
            match bandwidth_for(model, dev, target, total)? {
                Some(x) => {
                    *b = x;
                    used += x;
                }
                None => return Ok(false),
            }
        }
        Ok(used <= total)
    };
    for _ in 0..STEPS {
        let mid = (lo + hi) * F::HALF;
        if mid <= lo || mid >= hi {
            break;
        }
        if fits(mid, out)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if !fits(hi, out)? {
        // Rounding at the last step: the even split is always feasible.
        out.iter_mut().for_each(|b| *b = share);
    }
    // Hand out what bisection left over, evenly: latencies only fall.
    let mut used = F::ZERO;
    for &b in out.iter() {
        used += non_negative(b, "bandwidth_hz")?;
    }
    let extra = (total - used).max_of(F::ZERO) / F::from_f64(out.len() as f64);
    let mut worst = F::ZERO;
    for (dev, b) in devices.iter().zip(out.iter_mut()) {
        *b += extra;
        worst = worst.max_of(model.expert_latency_s(dev, *b)?);
    }
    Ok(worst)
}
