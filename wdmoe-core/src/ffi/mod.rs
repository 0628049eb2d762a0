//! The C ABI (feature `capi`): `extern "C"` entry points in `f32` and `f64`
//! for the selection policy and the link, latency and bandwidth functions.
//! The header is `include/wdmoe.h`; this is the crate's only unsafe code.
//!
//! Conventions, the same for every function:
//! - the return value is a status code, [`WDMOE_OK`] (0) or a negative code,
//!   one per [`Error`] variant plus [`WDMOE_ERR_NULL_POINTER`] and
//!   [`WDMOE_ERR_MISALIGNED_POINTER`];
//! - arrays are a pointer and an element count; expert arrays hold at most
//!   [`WDMOE_MAX_EXPERTS`] elements ([`WDMOE_ERR_CAPACITY_EXCEEDED`] beyond);
//! - results go to caller-provided out-pointers, written only on success;
//! - every pointer is checked for null and alignment before it is read;
//!   inputs are copied (or fully read) before any output is written, so
//!   inputs and outputs may even overlap;
//! - nothing panics: a bad input is a status code.
//!
//! What cannot be checked, and is therefore the caller's side of the
//! contract (the `# Safety` sections): a non-null, aligned pointer must point
//! to as many readable (inputs) or writable (outputs) elements as its count
//! says.

use core::ffi::c_int;

use crate::latency::{DeviceLink, LatencyModel};
use crate::select::Policy;
use crate::{bandwidth, latency, select, Error, Float};

mod exports;
mod status;
#[cfg(test)]
mod tests;

pub use status::*;
pub(crate) use status::{last_param, status_of};

/// Most experts (and devices) one C call handles.
pub const WDMOE_MAX_EXPERTS: usize = 256;

/// The result of `wdmoe_select_*` / `wdmoe_top_k_*`: `wdmoe_selection_f32`
/// and `wdmoe_selection_f64` in the header.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SelectionC<F> {
    /// Number of valid entries of `experts` and `weights` (≥ 1).
    pub n_experts: u32,
    /// Number of valid entries of `dropped`.
    pub n_dropped: u32,
    /// Serving experts, in descending router probability.
    pub experts: [u32; WDMOE_MAX_EXPERTS],
    /// Top-k experts not serving (unreachable ones included), in top-k order.
    pub dropped: [u32; WDMOE_MAX_EXPERTS],
    /// Combine weights of `experts` (sum to 1).
    pub weights: [F; WDMOE_MAX_EXPERTS],
    /// κ of the first drop test (eq. 10); NaN when `has_kappa` is 0.
    pub kappa: F,
    /// 1 when a drop test ran, else 0.
    pub has_kappa: u8,
    /// 1 when every top-k device was unreachable and the best reachable
    /// expert serves instead, else 0.
    pub fallback: u8,
}

/// The caller-sized selection's scalar results (`wdmoe_select_into_*`):
/// `wdmoe_selection_info_f32` / `_f64` in the header.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SelectionInfoC<F> {
    /// Valid entries of the experts and weights arrays (≥ 1).
    pub n_experts: u16,
    /// Valid entries of the dropped array.
    pub n_dropped: u16,
    /// κ of the first drop test (eq. 10); NaN when `has_kappa` is 0.
    pub kappa: F,
    /// 1 when a drop test ran, else 0.
    pub has_kappa: u8,
    /// 1 when every top-k device was unreachable, else 0.
    pub fallback: u8,
}

/// The system constants of the latency model (`wdmoe_latency_model_*`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LatencyModelC<F> {
    /// Payload per token and direction \[bit\] (eq. 5).
    pub payload_bits: F,
    /// Expert FLOPs per token (eq. 4).
    pub flops_per_token: F,
    /// Noise power spectral density N0 [W/Hz].
    pub n0_w_per_hz: F,
}

/// One device's radio and compute parameters (`wdmoe_device_link_*`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DeviceLinkC<F> {
    /// Base-station transmit power \[W\].
    pub tx_power_down_w: F,
    /// Downlink channel power gain g² (linear).
    pub gain_down: F,
    /// Device transmit power \[W\].
    pub tx_power_up_w: F,
    /// Uplink channel power gain g² (linear).
    pub gain_up: F,
    /// Device compute rate C_q [FLOP/s].
    pub compute_flops_per_s: F,
}

// The header asserts the same sizes (`_Static_assert`), so a layout drift on
// either side fails to compile.
const _: () = assert!(core::mem::size_of::<SelectionC<f32>>() == 3088);
const _: () = assert!(core::mem::size_of::<SelectionC<f64>>() == 4120);
const _: () = assert!(core::mem::size_of::<SelectionInfoC<f32>>() == 12);
const _: () = assert!(core::mem::size_of::<SelectionInfoC<f64>>() == 24);
const _: () = assert!(core::mem::size_of::<DeviceLinkC<f32>>() == 20);
const _: () = assert!(core::mem::size_of::<DeviceLinkC<f64>>() == 40);
const _: () = assert!(core::mem::size_of::<LatencyModelC<f32>>() == 12);
const _: () = assert!(core::mem::size_of::<LatencyModelC<f64>>() == 24);

type Status = Result<(), c_int>;

fn done(r: Status) -> c_int {
    match r {
        Ok(()) => WDMOE_OK,
        Err(code) => {
            if code == WDMOE_ERR_NULL_POINTER || code == WDMOE_ERR_MISALIGNED_POINTER {
                last_param::set(0); // names no parameter (`status_of` sets the others)
            }
            code
        }
    }
}

fn check_ptr<T>(ptr: *const T) -> Status {
    if ptr.is_null() {
        Err(WDMOE_ERR_NULL_POINTER)
    } else if !ptr.is_aligned() {
        Err(WDMOE_ERR_MISALIGNED_POINTER)
    } else {
        Ok(())
    }
}

/// Writes `v` to `out`, checked.
///
/// # Safety
/// A non-null, aligned `out` points to one writable `T`.
unsafe fn put<T>(out: *mut T, v: T) -> Status {
    check_ptr(out)?;
    // SAFETY: checked non-null and aligned; writable by contract.
    unsafe { out.write(v) };
    Ok(())
}

/// Writes the result of a scalar function, checking `out` first.
///
/// # Safety
/// As [`put`].
unsafe fn scalar<F>(out: *mut F, r: Result<F, Error>) -> c_int {
    done(check_ptr(out).and_then(|()| {
        let v = r.map_err(status_of)?;
        // SAFETY: forwarded contract.
        unsafe { put(out, v) }
    }))
}

/// Runs `f` with working memory for `n ≤ 256` experts: router
/// probabilities and three index/weight arrays, on the stack, in the
/// smallest of three capacities that holds `n` (8, 32, 256). Each capacity
/// is its own non-inlined frame, so a call with 8 experts uses a frame of 8
/// (about 100 bytes in `f32`), not of 256.
fn with_scratch<F: Float, R>(n: usize, f: impl FnOnce(Scratch<'_, F>) -> R) -> R {
    #[inline(never)]
    fn tier<F: Float, R, const N: usize>(f: impl FnOnce(Scratch<'_, F>) -> R) -> R {
        let mut p = [F::ZERO; N];
        let mut e = [0u16; N];
        let mut w = [F::ZERO; N];
        let mut d = [0u16; N];
        f((&mut p, &mut e, &mut w, &mut d))
    }
    if n <= 8 {
        tier::<F, R, 8>(f)
    } else if n <= 32 {
        tier::<F, R, 32>(f)
    } else {
        tier::<F, R, WDMOE_MAX_EXPERTS>(f)
    }
}

/// Probabilities, experts, weights, dropped.
type Scratch<'a, F> = (&'a mut [F], &'a mut [u16], &'a mut [F], &'a mut [u16]);

/// An input array as a slice, after the pointer and length checks.
///
/// # Safety
/// A non-null, aligned `ptr` points to `n` readable `T` that nothing writes
/// while the slice lives.
unsafe fn input<'a, T>(ptr: *const T, n: usize) -> Result<&'a [T], c_int> {
    check_ptr(ptr)?;
    if n > WDMOE_MAX_EXPERTS {
        return Err(WDMOE_ERR_CAPACITY_EXCEEDED);
    }
    // SAFETY: checked non-null and aligned; `n` readable elements by contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, n) })
}

/// Writes a selection into `*out`, field by field: only the valid entries of
/// the arrays (nothing is zeroed; entries past `n_experts` / `n_dropped` are
/// left as they were).
///
/// # Safety
/// A non-null, aligned `out` points to one writable `SelectionC<F>`; no live
/// reference aliases it.
unsafe fn write_selection<F: Float>(
    out: *mut SelectionC<F>,
    info: &select::SelectionInfo<F>,
    (e, w, d): (&[u16], &[F], &[u16]),
) {
    // SAFETY: `out` is valid for writes by contract; raw field pointers
    // avoid creating a reference to the (possibly uninitialised) struct.
    unsafe {
        (&raw mut (*out).n_experts).write(info.n_experts as u32);
        (&raw mut (*out).n_dropped).write(info.n_dropped as u32);
        let experts = (&raw mut (*out).experts).cast::<u32>();
        let weights = (&raw mut (*out).weights).cast::<F>();
        for (i, (&q, &x)) in e.iter().zip(w).take(info.n_experts).enumerate() {
            experts.add(i).write(u32::from(q));
            weights.add(i).write(x);
        }
        let dropped = (&raw mut (*out).dropped).cast::<u32>();
        for (i, &q) in d.iter().take(info.n_dropped).enumerate() {
            dropped.add(i).write(u32::from(q));
        }
        (&raw mut (*out).kappa).write(info.kappa.unwrap_or(F::from_f64(f64::NAN)));
        (&raw mut (*out).has_kappa).write(u8::from(info.kappa.is_some()));
        (&raw mut (*out).fallback).write(u8::from(info.fallback));
    }
}

/// # Safety
/// See the module docs: `logits` and `latency_s` point to `n` readable `F`,
/// `out` to one writable selection.
unsafe fn select_impl<F: Float>(
    logits: *const F,
    latency_s: *const F,
    n: usize,
    k: usize,
    theta: F,
    max_drops: usize,
    out: *mut SelectionC<F>,
) -> Status {
    check_ptr(out)?;
    // SAFETY: forwarded contract; read-only until `select_into` returns,
    // before `out` (which may overlap them) is written.
    let (z, t) = unsafe { (input(logits, n)?, input(latency_s, n)?) };
    let policy = Policy::new(k, theta, max_drops).map_err(status_of)?;
    with_scratch(n, |(p, e, w, d)| {
        let info = select::select_into(&policy, z, t, p, e, w, d).map_err(status_of)?;
        // SAFETY: forwarded contract; the input slices are dead.
        unsafe { write_selection(out, &info, (e, w, d)) };
        Ok(())
    })
}

/// # Safety
/// `logits` points to `n` readable `F`, `out` to one writable selection.
unsafe fn top_k_impl<F: Float>(
    logits: *const F,
    n: usize,
    k: usize,
    out: *mut SelectionC<F>,
) -> Status {
    check_ptr(out)?;
    // SAFETY: forwarded contract (as in `select_impl`).
    let z = unsafe { input(logits, n)? };
    with_scratch(n, |(p, e, w, d)| {
        let info = select::top_k_into(z, k, p, e, w, d).map_err(status_of)?;
        // SAFETY: forwarded contract; the input slice is dead.
        unsafe { write_selection(out, &info, (e, w, d)) };
        Ok(())
    })
}

/// # Safety
/// `logits`, `latency_s` and `scratch_probs` point to `n` elements,
/// `out_experts`, `out_weights` and `out_dropped` to `min(k, n)` writable
/// elements, `out_info` to one; the written ones overlap nothing else.
#[allow(clippy::too_many_arguments)]
unsafe fn select_into_impl<F: Float>(
    logits: *const F,
    latency_s: *const F,
    n: u16,
    k: u16,
    theta: F,
    max_drops: u16,
    scratch_probs: *mut F,
    out_experts: *mut u16,
    out_weights: *mut F,
    out_dropped: *mut u16,
    out_info: *mut SelectionInfoC<F>,
) -> Status {
    let (n, k) = (usize::from(n), usize::from(k));
    let m = k.min(n);
    for p in [
        logits,
        latency_s,
        scratch_probs.cast_const(),
        out_weights.cast_const(),
    ] {
        check_ptr(p)?;
    }
    check_ptr(out_experts)?;
    check_ptr(out_dropped)?;
    check_ptr(out_info)?;
    // SAFETY: checked non-null and aligned; lengths and exclusivity by contract.
    let (z, t, p, e, w, d) = unsafe {
        (
            core::slice::from_raw_parts(logits, n),
            core::slice::from_raw_parts(latency_s, n),
            core::slice::from_raw_parts_mut(scratch_probs, n),
            core::slice::from_raw_parts_mut(out_experts, m),
            core::slice::from_raw_parts_mut(out_weights, m),
            core::slice::from_raw_parts_mut(out_dropped, m),
        )
    };
    let policy = Policy::new(k, theta, usize::from(max_drops)).map_err(status_of)?;
    let info = select::select_into(&policy, z, t, p, e, w, d).map_err(status_of)?;
    let c = SelectionInfoC {
        n_experts: info.n_experts as u16,
        n_dropped: info.n_dropped as u16,
        kappa: info.kappa.unwrap_or(F::from_f64(f64::NAN)),
        has_kappa: u8::from(info.kappa.is_some()),
        fallback: u8::from(info.fallback),
    };
    // SAFETY: forwarded contract.
    unsafe { put(out_info, c) }
}

/// Runs `f` with a stack buffer of `n ≤ 256` elements, in the smallest of
/// the capacities 8, 32, 256 that holds it (each its own frame).
fn with_buf<T: Copy + Default, R>(n: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    #[inline(never)]
    fn tier<T: Copy + Default, R, const N: usize>(n: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
        let mut b = [T::default(); N];
        f(b.get_mut(..n).unwrap_or_default())
    }
    if n <= 8 {
        tier::<T, R, 8>(n, f)
    } else if n <= 32 {
        tier::<T, R, 32>(n, f)
    } else {
        tier::<T, R, WDMOE_MAX_EXPERTS>(n, f)
    }
}

/// # Safety
/// `weights` and `latency_s` point to `n` readable `F`, `out` to one `F`.
unsafe fn kappa_impl<F: Float>(
    weights: *const F,
    latency_s: *const F,
    n: usize,
    out: *mut F,
) -> Status {
    check_ptr(out)?;
    // SAFETY: forwarded contract; the slices die before `out` is written.
    let (w, t) = unsafe { (input(weights, n)?, input(latency_s, n)?) };
    let k = select::kappa(w, t).map_err(status_of)?;
    // SAFETY: forwarded contract.
    unsafe { put(out, k) }
}

/// # Safety
/// `weights`, `latency_s` point to `n` readable `F`, `out_wlr` to `n` writable `F`.
unsafe fn wlr_impl<F: Float>(
    weights: *const F,
    latency_s: *const F,
    n: usize,
    out_wlr: *mut F,
) -> Status {
    check_ptr(out_wlr)?;
    with_buf(n, |r: &mut [F]| {
        {
            // SAFETY: forwarded contract; the input slices end here, before
            // `out_wlr` (which may overlap them) is written.
            let (w, t) = unsafe { (input(weights, n)?, input(latency_s, n)?) };
            select::wlr(w, t, r).map_err(status_of)?;
        }
        // SAFETY: checked non-null and aligned; `n` writable elements by
        // contract; `r` is our own stack buffer.
        unsafe { core::ptr::copy_nonoverlapping(r.as_ptr(), out_wlr, r.len()) };
        Ok(())
    })
}

/// # Safety
/// `experts` points to `n_experts` readable `u32`, `latency_s` to `n`
/// readable `F`, `out` to one `F`.
unsafe fn token_latency_impl<F: Float>(
    latency_s: *const F,
    n: usize,
    experts: *const u32,
    n_experts: usize,
    out: *mut F,
) -> Status {
    check_ptr(out)?;
    // SAFETY: forwarded contract; the slices die before `out` is written.
    let (t, e32) = unsafe { (input(latency_s, n)?, input(experts, n_experts)?) };
    let v = with_buf(n_experts, |e: &mut [usize]| {
        for (d, &s) in e.iter_mut().zip(e32) {
            // An index that does not fit `usize` is out of range anyway.
            *d = usize::try_from(s).unwrap_or(usize::MAX);
        }
        latency::token_latency_s(t, e).map_err(status_of)
    })?;
    // SAFETY: forwarded contract.
    unsafe { put(out, v) }
}

/// # Safety
/// `tokens_per_expert` and `latency_per_token_s` point to `n` readable
/// elements, `out` to one `F`.
unsafe fn batched_impl<F: Float>(
    tokens_per_expert: *const u32,
    latency_per_token_s: *const F,
    n: usize,
    out: *mut F,
) -> Status {
    check_ptr(out)?;
    // SAFETY: forwarded contract; the slices die before `out` is written.
    let (c, t) = unsafe { (input(tokens_per_expert, n)?, input(latency_per_token_s, n)?) };
    let v = latency::batched_layer_latency_s(c, t).map_err(status_of)?;
    // SAFETY: forwarded contract.
    unsafe { put(out, v) }
}

/// # Safety
/// `values` points to `n` readable `F`, `out` to one `F`.
unsafe fn sequential_impl<F: Float>(values: *const F, n: usize, out: *mut F) -> Status {
    check_ptr(out)?;
    check_ptr(values)?;
    if n > isize::MAX as usize / core::mem::size_of::<F>() {
        return Err(WDMOE_ERR_CAPACITY_EXCEEDED);
    }
    // SAFETY: checked non-null and aligned, size within isize::MAX; `n`
    // readable elements by contract. The slice dies before `out` is written.
    let v = latency::sequential_prompt_latency_s(unsafe { core::slice::from_raw_parts(values, n) })
        .map_err(status_of)?;
    // SAFETY: forwarded contract.
    unsafe { put(out, v) }
}

fn model_of<F: Float>(m: &LatencyModelC<F>) -> Result<LatencyModel<F>, c_int> {
    LatencyModel::new(m.payload_bits, m.flops_per_token, m.n0_w_per_hz).map_err(status_of)
}

fn device_of<F: Float>(d: &DeviceLinkC<F>) -> Result<DeviceLink<F>, c_int> {
    DeviceLink::new(
        d.tx_power_down_w,
        d.gain_down,
        d.tx_power_up_w,
        d.gain_up,
        d.compute_flops_per_s,
    )
    .map_err(status_of)
}

/// # Safety
/// `model`, `device` point to one readable struct each, `out` to one `F`.
unsafe fn device_latency_impl<F: Float>(
    model: *const LatencyModelC<F>,
    device: *const DeviceLinkC<F>,
    bandwidth_hz: F,
    out: *mut F,
) -> Status {
    check_ptr(out)?;
    check_ptr(model)?;
    check_ptr(device)?;
    // SAFETY: checked non-null and aligned; readable by contract; copied.
    let (m, d) = unsafe { (model.read(), device.read()) };
    let v = model_of(&m)?
        .expert_latency_s(&device_of(&d)?, bandwidth_hz)
        .map_err(status_of)?;
    // SAFETY: forwarded contract.
    unsafe { put(out, v) }
}

/// # Safety
/// `out_bandwidth_hz` points to `n` writable `F`.
unsafe fn even_split_impl<F: Float>(total: F, out_bandwidth_hz: *mut F, n: usize) -> Status {
    check_ptr(out_bandwidth_hz)?;
    if n > WDMOE_MAX_EXPERTS {
        return Err(WDMOE_ERR_CAPACITY_EXCEEDED);
    }
    // SAFETY: checked non-null and aligned; `n` writable elements by
    // contract. `even_split` validates everything before it writes.
    let out = unsafe { core::slice::from_raw_parts_mut(out_bandwidth_hz, n) };
    bandwidth::even_split(total, out).map_err(status_of)
}

/// # Safety
/// `model` points to one readable struct, `devices` to `n`, `out_bandwidth_hz`
/// to `n` writable `F`, `out_max_latency_s` to one writable `F`.
unsafe fn min_max_impl<F: Float>(
    model: *const LatencyModelC<F>,
    devices: *const DeviceLinkC<F>,
    n: usize,
    total_bandwidth_hz: F,
    out_bandwidth_hz: *mut F,
    out_max_latency_s: *mut F,
) -> Status {
    check_ptr(out_bandwidth_hz)?;
    check_ptr(out_max_latency_s)?;
    check_ptr(model)?;
    // SAFETY: forwarded contract; read (and converted) before any write.
    let raw = unsafe { input(devices, n)? };
    // SAFETY: checked above; copied.
    let m = model_of(&unsafe { model.read() })?;
    /// Working memory for `N ≥ n` devices in its own frame (8, 32 or 256).
    #[inline(never)]
    fn tier<F: Float, const N: usize>(
        m: &LatencyModel<F>,
        raw: &[DeviceLinkC<F>],
        total: F,
        out_b: *mut F,
        out_t: *mut F,
    ) -> Status {
        let n = raw.len();
        let zero =
            DeviceLink::new(F::ZERO, F::ZERO, F::ZERO, F::ZERO, F::ONE).map_err(status_of)?;
        let mut devs = [zero; N];
        let mut b = [F::ZERO; N];
        let (devs, b) = match (devs.get_mut(..n), b.get_mut(..n)) {
            (Some(d), Some(b)) => (d, b),
            _ => return Err(WDMOE_ERR_CAPACITY_EXCEEDED),
        };
        for (d, r) in devs.iter_mut().zip(raw) {
            *d = device_of(r)?;
        }
        let worst = bandwidth::min_max(m, devs, total, b).map_err(status_of)?;
        // SAFETY: checked non-null and aligned by the caller; `n` writable
        // elements by contract; `b` is ours; the input slice is dead.
        unsafe {
            core::ptr::copy_nonoverlapping(b.as_ptr(), out_b, n);
            put(out_t, worst)
        }
    }
    let total = total_bandwidth_hz;
    if n <= 8 {
        tier::<F, 8>(&m, raw, total, out_bandwidth_hz, out_max_latency_s)
    } else if n <= 32 {
        tier::<F, 32>(&m, raw, total, out_bandwidth_hz, out_max_latency_s)
    } else {
        tier::<F, WDMOE_MAX_EXPERTS>(&m, raw, total, out_bandwidth_hz, out_max_latency_s)
    }
}
