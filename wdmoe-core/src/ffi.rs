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

use core::ffi::{c_char, c_int, CStr};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::compute::ExpertShape;
use crate::latency::{DeviceLink, LatencyModel};
use crate::link::{Uma, UmiStreetCanyon};
use crate::select::Policy;
use crate::{bandwidth, latency, link, select, Error, Float};

/// Most experts (and devices) one C call handles.
pub const WDMOE_MAX_EXPERTS: usize = 256;

/// Success.
pub const WDMOE_OK: c_int = 0;
/// A required pointer was null.
pub const WDMOE_ERR_NULL_POINTER: c_int = -1;
/// A pointer was not aligned for its element type.
pub const WDMOE_ERR_MISALIGNED_POINTER: c_int = -2;
/// [`Error::NaN`].
pub const WDMOE_ERR_NAN: c_int = -3;
/// [`Error::NotPositive`].
pub const WDMOE_ERR_NOT_POSITIVE: c_int = -4;
/// [`Error::Negative`].
pub const WDMOE_ERR_NEGATIVE: c_int = -5;
/// [`Error::NotFinite`].
pub const WDMOE_ERR_NOT_FINITE: c_int = -6;
/// [`Error::LatencyNotPositive`].
pub const WDMOE_ERR_LATENCY_NOT_POSITIVE: c_int = -7;
/// [`Error::KOutOfRange`].
pub const WDMOE_ERR_K_OUT_OF_RANGE: c_int = -8;
/// [`Error::ThetaOutOfRange`].
pub const WDMOE_ERR_THETA_OUT_OF_RANGE: c_int = -9;
/// [`Error::CapacityExceeded`], also an array longer than [`WDMOE_MAX_EXPERTS`].
pub const WDMOE_ERR_CAPACITY_EXCEEDED: c_int = -10;
/// [`Error::LengthMismatch`].
pub const WDMOE_ERR_LENGTH_MISMATCH: c_int = -11;
/// [`Error::Empty`].
pub const WDMOE_ERR_EMPTY: c_int = -12;
/// [`Error::NoReachableExpert`].
pub const WDMOE_ERR_NO_REACHABLE_EXPERT: c_int = -13;
/// [`Error::OutOfRange`].
pub const WDMOE_ERR_OUT_OF_RANGE: c_int = -14;
/// [`Error::Infeasible`].
pub const WDMOE_ERR_INFEASIBLE: c_int = -15;

/// The status code of an [`Error`] (exhaustive: a new variant needs a code);
/// records the parameter it names for [`wdmoe_last_error_param`].
pub(crate) fn status_of(e: Error) -> c_int {
    last_param::set(crate::error::param_id(&e));
    match e {
        Error::NaN(_) => WDMOE_ERR_NAN,
        Error::NotPositive(_) => WDMOE_ERR_NOT_POSITIVE,
        Error::Negative(_) => WDMOE_ERR_NEGATIVE,
        Error::NotFinite(_) => WDMOE_ERR_NOT_FINITE,
        Error::LatencyNotPositive => WDMOE_ERR_LATENCY_NOT_POSITIVE,
        Error::KOutOfRange => WDMOE_ERR_K_OUT_OF_RANGE,
        Error::ThetaOutOfRange => WDMOE_ERR_THETA_OUT_OF_RANGE,
        Error::CapacityExceeded => WDMOE_ERR_CAPACITY_EXCEEDED,
        Error::LengthMismatch => WDMOE_ERR_LENGTH_MISMATCH,
        Error::Empty => WDMOE_ERR_EMPTY,
        Error::NoReachableExpert => WDMOE_ERR_NO_REACHABLE_EXPERT,
        Error::OutOfRange(_) => WDMOE_ERR_OUT_OF_RANGE,
        Error::Infeasible => WDMOE_ERR_INFEASIBLE,
    }
}

/// The parameter named by the last error an entry point returned: an index
/// into [`crate::error::PARAMS`] plus one, 0 for none. Per thread in the
/// crate's own unit tests (which run in parallel), global otherwise.
mod last_param {
    use core::sync::atomic::{AtomicU32, Ordering};
    #[cfg(not(test))]
    static LAST_PARAM: AtomicU32 = AtomicU32::new(0);
    #[cfg(test)]
    std::thread_local!(static LAST_PARAM: AtomicU32 = const { AtomicU32::new(0) });
    pub(super) fn set(v: u32) {
        #[cfg(not(test))]
        LAST_PARAM.store(v, Ordering::Relaxed);
        #[cfg(test)]
        LAST_PARAM.with(|p| p.store(v, Ordering::Relaxed));
    }
    pub(super) fn get() -> u32 {
        #[cfg(not(test))]
        return LAST_PARAM.load(Ordering::Relaxed);
        #[cfg(test)]
        LAST_PARAM.with(|p| p.load(Ordering::Relaxed))
    }
}

/// The name of the parameter (with its unit) that the most recent failing
/// call rejected, e.g. `"distance_2d_m"`; `""` when that error named none
/// (a null pointer, `k` out of range, ...). Static and NUL-terminated. One
/// word of global state, for diagnostics: with several threads calling,
/// it is whichever call failed last.
#[no_mangle]
pub extern "C" fn wdmoe_last_error_param() -> *const c_char {
    let i = last_param::get() as usize;
    match i.checked_sub(1).and_then(|i| crate::error::PARAMS.get(i)) {
        Some(&(_, c)) => c.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// The crate version, e.g. `"0.1.0"` (static, NUL-terminated).
#[no_mangle]
pub extern "C" fn wdmoe_version() -> *const c_char {
    const V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    match CStr::from_bytes_with_nul(V.as_bytes()) {
        Ok(c) => c.as_ptr(),
        Err(_) => c"".as_ptr(),
    }
}

/// The C ABI's version, [`WDMOE_ABI_VERSION`]: it changes whenever a
/// signature, a struct layout or a status code changes.
#[no_mangle]
pub extern "C" fn wdmoe_abi_version() -> u32 {
    WDMOE_ABI_VERSION
}

/// The ABI version of this library (the header's `WDMOE_ABI_VERSION`).
/// 2: caller-sized `wdmoe_select_into_*`, `wdmoe_last_error_param`, version
/// queries; selection outputs no longer zero the unused entries.
pub const WDMOE_ABI_VERSION: u32 = 2;

/// Every status code with its name in include/wdmoe.h and its message: the
/// one source of [`wdmoe_status_message`]. Tests check it against the
/// header's enum, against [`status_of`] and against `Error`'s `Display`
/// (the message is the `Display` text with "an input" as the parameter).
pub(crate) const STATUSES: &[(c_int, &str, &CStr)] = &[
    (WDMOE_OK, "WDMOE_OK", c"ok"),
    (
        WDMOE_ERR_NULL_POINTER,
        "WDMOE_ERR_NULL_POINTER",
        c"a required pointer is null",
    ),
    (
        WDMOE_ERR_MISALIGNED_POINTER,
        "WDMOE_ERR_MISALIGNED_POINTER",
        c"a pointer is not aligned for its element type",
    ),
    (WDMOE_ERR_NAN, "WDMOE_ERR_NAN", c"an input is NaN"),
    (
        WDMOE_ERR_NOT_POSITIVE,
        "WDMOE_ERR_NOT_POSITIVE",
        c"an input must be finite and > 0",
    ),
    (
        WDMOE_ERR_NEGATIVE,
        "WDMOE_ERR_NEGATIVE",
        c"an input must be finite and >= 0",
    ),
    (
        WDMOE_ERR_NOT_FINITE,
        "WDMOE_ERR_NOT_FINITE",
        c"an input must be finite",
    ),
    (
        WDMOE_ERR_LATENCY_NOT_POSITIVE,
        "WDMOE_ERR_LATENCY_NOT_POSITIVE",
        c"latency_s entries must be > 0 seconds (or +inf for an unreachable device)",
    ),
    (
        WDMOE_ERR_K_OUT_OF_RANGE,
        "WDMOE_ERR_K_OUT_OF_RANGE",
        c"k must satisfy 1 <= k <= number of experts",
    ),
    (
        WDMOE_ERR_THETA_OUT_OF_RANGE,
        "WDMOE_ERR_THETA_OUT_OF_RANGE",
        c"theta must satisfy 0 <= theta <= 0.5",
    ),
    (
        WDMOE_ERR_CAPACITY_EXCEEDED,
        "WDMOE_ERR_CAPACITY_EXCEEDED",
        c"more experts than the capacity (256, or the buffers given)",
    ),
    (
        WDMOE_ERR_LENGTH_MISMATCH,
        "WDMOE_ERR_LENGTH_MISMATCH",
        c"input lengths differ",
    ),
    (WDMOE_ERR_EMPTY, "WDMOE_ERR_EMPTY", c"input is empty"),
    (
        WDMOE_ERR_NO_REACHABLE_EXPERT,
        "WDMOE_ERR_NO_REACHABLE_EXPERT",
        c"no expert is reachable (every latency is +inf)",
    ),
    (
        WDMOE_ERR_OUT_OF_RANGE,
        "WDMOE_ERR_OUT_OF_RANGE",
        c"an input is outside the model's valid range",
    ),
    (
        WDMOE_ERR_INFEASIBLE,
        "WDMOE_ERR_INFEASIBLE",
        c"no bandwidth allocation gives every device a finite latency",
    ),
];

/// A static, NUL-terminated description of a status code (never null;
/// unknown codes give `"unknown status code"`).
#[no_mangle]
pub extern "C" fn wdmoe_status_message(status: c_int) -> *const c_char {
    match STATUSES.iter().find(|&&(code, _, _)| code == status) {
        Some(&(_, _, msg)) => msg.as_ptr(),
        None => c"unknown status code".as_ptr(),
    }
}

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

/// The 3GPP models' shared entry: builds the model from heights, then asks it.
fn uma<F: Float>(bs_height_m: F, ut_height_m: F) -> Result<Uma<F>, Error> {
    Uma::new(bs_height_m, ut_height_m)
}

fn umi<F: Float>(bs_height_m: F, ut_height_m: F) -> Result<UmiStreetCanyon<F>, Error> {
    UmiStreetCanyon::new(bs_height_m, ut_height_m)
}

/// Generates every entry point for one float type. The names are listed
/// explicitly so that `grep` finds each exported symbol here.
macro_rules! export {
    (
        $F:ty;
        $select:ident, $select_into:ident, $top_k:ident, $kappa:ident, $wlr:ident,
        $db_to_linear:ident, $linear_to_db:ident, $dbm_to_w:ident, $w_to_dbm:ident,
        $fspl:ident, $uma_pl:ident, $umi_pl:ident, $uma_los:ident, $umi_los:ident,
        $gain:ident, $n0:ident, $noise:ident, $rate:ident,
        $flops:ident, $payload:ident,
        $expert_latency:ident, $device_latency:ident, $token_latency:ident,
        $sequential:ident, $batched:ident,
        $even:ident, $min_max:ident
    ) => {
        /// Algorithm 1 (SPEC.md) on `n` experts: `logits` and `latency_s` \[s\]
        /// (`+inf` = unreachable) of length `n ≤ 256`, top-`k`, threshold
        /// `theta` ∈ [0, 0.5], at most `max_drops` drops; result in `*out`.
        ///
        /// # Safety
        /// `logits` and `latency_s` point to `n` readable floats and `out` to
        /// one writable selection, or are null (an error).
        #[no_mangle]
        pub unsafe extern "C" fn $select(
            logits: *const $F,
            latency_s: *const $F,
            n: usize,
            k: usize,
            theta: $F,
            max_drops: usize,
            out: *mut SelectionC<$F>,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { select_impl(logits, latency_s, n, k, theta, max_drops, out) })
        }

        /// Algorithm 1 on caller-sized memory, for firmware: `n ≤ 65535`
        /// experts, `scratch_probs` (n floats, receives the router
        /// probabilities), results in `out_experts`, `out_weights`,
        /// `out_dropped` (min(k, n) entries each) and `*out_info`. Nothing
        /// is written on an error.
        ///
        /// # Safety
        /// `logits`, `latency_s`, `scratch_probs` point to `n` floats, the
        /// three output arrays to `min(k, n)` elements, `out_info` to one
        /// struct; the written memory overlaps nothing else.
        #[no_mangle]
        pub unsafe extern "C" fn $select_into(
            logits: *const $F,
            latency_s: *const $F,
            n: u16,
            k: u16,
            theta: $F,
            max_drops: u16,
            scratch_probs: *mut $F,
            out_experts: *mut u16,
            out_weights: *mut $F,
            out_dropped: *mut u16,
            out_info: *mut SelectionInfoC<$F>,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe {
                select_into_impl(
                    logits,
                    latency_s,
                    n,
                    k,
                    theta,
                    max_drops,
                    scratch_probs,
                    out_experts,
                    out_weights,
                    out_dropped,
                    out_info,
                )
            })
        }

        /// Plain top-k routing (Mixtral) on `n ≤ 256` logits; result in `*out`.
        ///
        /// # Safety
        /// `logits` points to `n` readable floats, `out` to one writable selection.
        #[no_mangle]
        pub unsafe extern "C" fn $top_k(
            logits: *const $F,
            n: usize,
            k: usize,
            out: *mut SelectionC<$F>,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { top_k_impl(logits, n, k, out) })
        }

        /// Equation (10): κ over `n ≤ 256` weights and latencies \[s\].
        ///
        /// # Safety
        /// `weights`, `latency_s` point to `n` readable floats, `out_kappa` to one.
        #[no_mangle]
        pub unsafe extern "C" fn $kappa(
            weights: *const $F,
            latency_s: *const $F,
            n: usize,
            out_kappa: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { kappa_impl(weights, latency_s, n, out_kappa) })
        }

        /// Equation (9): WLR [1/s] of `n ≤ 256` experts into `out_wlr_per_s`.
        ///
        /// # Safety
        /// `weights`, `latency_s` point to `n` readable floats, `out_wlr_per_s`
        /// to `n` writable floats.
        #[no_mangle]
        pub unsafe extern "C" fn $wlr(
            weights: *const $F,
            latency_s: *const $F,
            n: usize,
            out_wlr_per_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { wlr_impl(weights, latency_s, n, out_wlr_per_s) })
        }

        /// dB to a linear power ratio.
        ///
        /// # Safety
        /// `out_linear` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $db_to_linear(db: $F, out_linear: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_linear, link::db_to_linear(db)) }
        }

        /// A linear power ratio to dB.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $linear_to_db(linear: $F, out_db: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, link::linear_to_db(linear)) }
        }

        /// dBm to W.
        ///
        /// # Safety
        /// `out_w` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $dbm_to_w(dbm: $F, out_w: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_w, link::dbm_to_w(dbm)) }
        }

        /// W to dBm.
        ///
        /// # Safety
        /// `out_dbm` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $w_to_dbm(w: $F, out_dbm: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_dbm, link::w_to_dbm(w)) }
        }

        /// The paper's path loss \[dB\] at `f_ghz` and `distance_m`.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $fspl(f_ghz: $F, distance_m: $F, out_db: *mut $F) -> c_int {
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, link::free_space_path_loss_db(f_ghz, distance_m)) }
        }

        /// 3GPP UMa path loss \[dB\]; `los` nonzero for line of sight.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $uma_pl(
            bs_height_m: $F,
            ut_height_m: $F,
            f_ghz: $F,
            distance_2d_m: $F,
            los: c_int,
            out_db: *mut $F,
        ) -> c_int {
            let r = uma(bs_height_m, ut_height_m)
                .and_then(|m| m.path_loss_db(f_ghz, distance_2d_m, los != 0));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, r) }
        }

        /// 3GPP UMi street-canyon path loss \[dB\]; `los` nonzero for line of sight.
        ///
        /// # Safety
        /// `out_db` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $umi_pl(
            bs_height_m: $F,
            ut_height_m: $F,
            f_ghz: $F,
            distance_2d_m: $F,
            los: c_int,
            out_db: *mut $F,
        ) -> c_int {
            let r = umi(bs_height_m, ut_height_m)
                .and_then(|m| m.path_loss_db(f_ghz, distance_2d_m, los != 0));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_db, r) }
        }

        /// 3GPP UMa LOS probability at `distance_2d_m`.
        ///
        /// # Safety
        /// `out_probability` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $uma_los(
            bs_height_m: $F,
            ut_height_m: $F,
            distance_2d_m: $F,
            out_probability: *mut $F,
        ) -> c_int {
            let r = uma(bs_height_m, ut_height_m).and_then(|m| m.los_probability(distance_2d_m));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_probability, r) }
        }

        /// 3GPP UMi street-canyon LOS probability at `distance_2d_m`.
        ///
        /// # Safety
        /// `out_probability` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $umi_los(
            bs_height_m: $F,
            ut_height_m: $F,
            distance_2d_m: $F,
            out_probability: *mut $F,
        ) -> c_int {
            let r = umi(bs_height_m, ut_height_m).and_then(|m| m.los_probability(distance_2d_m));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_probability, r) }
        }

        /// Channel power gain `10^(-PL/10)·|h|²`.
        ///
        /// # Safety
        /// `out_gain` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $gain(
            path_loss_db: $F,
            fading_power: $F,
            out_gain: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            unsafe {
                scalar(
                    out_gain,
                    link::channel_power_gain(path_loss_db, fading_power),
                )
            }
        }

        /// Noise PSD [W/Hz] from N0 [dBm/Hz] and a noise figure \[dB\].
        ///
        /// # Safety
        /// `out_w_per_hz` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $n0(
            n0_dbm_per_hz: $F,
            noise_figure_db: $F,
            out_w_per_hz: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            unsafe {
                scalar(
                    out_w_per_hz,
                    link::noise_psd_w_per_hz(n0_dbm_per_hz, noise_figure_db),
                )
            }
        }

        /// Noise power \[W\] over `bandwidth_hz`.
        ///
        /// # Safety
        /// `out_w` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $noise(
            n0_dbm_per_hz: $F,
            bandwidth_hz: $F,
            noise_figure_db: $F,
            out_w: *mut $F,
        ) -> c_int {
            let r = link::noise_power_w(n0_dbm_per_hz, bandwidth_hz, noise_figure_db);
            // SAFETY: forwarded contract.
            unsafe { scalar(out_w, r) }
        }

        /// Equations (2), (3): Shannon rate [bit/s].
        ///
        /// # Safety
        /// `out_bps` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $rate(
            bandwidth_hz: $F,
            tx_power_w: $F,
            gain: $F,
            n0_w_per_hz: $F,
            out_bps: *mut $F,
        ) -> c_int {
            let r = link::shannon_rate_bps(bandwidth_hz, tx_power_w, gain, n0_w_per_hz);
            // SAFETY: forwarded contract.
            unsafe { scalar(out_bps, r) }
        }

        /// Equation (4): expert FLOPs per token.
        ///
        /// # Safety
        /// `out_flops` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $flops(
            hidden: u32,
            ffn_hidden: u32,
            eta_flops: $F,
            out_flops: *mut $F,
        ) -> c_int {
            let r = ExpertShape::new(hidden, ffn_hidden).and_then(|s| s.flops_per_token(eta_flops));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_flops, r) }
        }

        /// Equation (5): payload bits per token and direction.
        ///
        /// # Safety
        /// `out_bits` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $payload(
            hidden: u32,
            bits_per_element: $F,
            out_bits: *mut $F,
        ) -> c_int {
            let r = ExpertShape::new(hidden, 1).and_then(|s| s.payload_bits(bits_per_element));
            // SAFETY: forwarded contract.
            unsafe { scalar(out_bits, r) }
        }

        /// Equation (6) from rates: latency \[s\] of one token on one device.
        ///
        /// # Safety
        /// `out_s` points to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $expert_latency(
            payload_bits: $F,
            flops: $F,
            rate_down_bps: $F,
            compute_flops_per_s: $F,
            rate_up_bps: $F,
            out_s: *mut $F,
        ) -> c_int {
            let r = latency::expert_latency_s(
                payload_bits,
                flops,
                rate_down_bps,
                compute_flops_per_s,
                rate_up_bps,
            );
            // SAFETY: forwarded contract.
            unsafe { scalar(out_s, r) }
        }

        /// Equation (6) from a device's link: latency \[s\] over `bandwidth_hz`.
        ///
        /// # Safety
        /// `model`, `device` point to one readable struct each, `out_s` to one float.
        #[no_mangle]
        pub unsafe extern "C" fn $device_latency(
            model: *const LatencyModelC<$F>,
            device: *const DeviceLinkC<$F>,
            bandwidth_hz: $F,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { device_latency_impl(model, device, bandwidth_hz, out_s) })
        }

        /// Equation (7): the slowest of the `n_experts` selected experts \[s\].
        ///
        /// # Safety
        /// `latency_s` points to `n` readable floats, `experts` to `n_experts`
        /// readable `uint32_t`, `out_s` to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $token_latency(
            latency_s: *const $F,
            n: usize,
            experts: *const u32,
            n_experts: usize,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { token_latency_impl(latency_s, n, experts, n_experts, out_s) })
        }

        /// Equation (8): the sum of `n` per-token, per-layer latencies \[s\]
        /// (`n` is not limited to 256).
        ///
        /// # Safety
        /// `token_layer_latency_s` points to `n` readable floats, `out_s` to one.
        #[no_mangle]
        pub unsafe extern "C" fn $sequential(
            token_layer_latency_s: *const $F,
            n: usize,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { sequential_impl(token_layer_latency_s, n, out_s) })
        }

        /// Batched prefill of one layer \[s\]: `max_q n_q · t_q`.
        ///
        /// # Safety
        /// `tokens_per_expert` and `latency_per_token_s` point to `n` readable
        /// elements, `out_s` to one writable float.
        #[no_mangle]
        pub unsafe extern "C" fn $batched(
            tokens_per_expert: *const u32,
            latency_per_token_s: *const $F,
            n: usize,
            out_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { batched_impl(tokens_per_expert, latency_per_token_s, n, out_s) })
        }

        /// The paper's even split of `total_bandwidth_hz` over `n ≤ 256` devices.
        ///
        /// # Safety
        /// `out_bandwidth_hz` points to `n` writable floats.
        #[no_mangle]
        pub unsafe extern "C" fn $even(
            total_bandwidth_hz: $F,
            out_bandwidth_hz: *mut $F,
            n: usize,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe { even_split_impl(total_bandwidth_hz, out_bandwidth_hz, n) })
        }

        /// Min–max allocation of `total_bandwidth_hz` over `n ≤ 256` devices.
        ///
        /// # Safety
        /// `model` points to one readable struct, `devices` to `n`,
        /// `out_bandwidth_hz` to `n` writable floats, `out_max_latency_s` to one.
        #[no_mangle]
        pub unsafe extern "C" fn $min_max(
            model: *const LatencyModelC<$F>,
            devices: *const DeviceLinkC<$F>,
            n: usize,
            total_bandwidth_hz: $F,
            out_bandwidth_hz: *mut $F,
            out_max_latency_s: *mut $F,
        ) -> c_int {
            // SAFETY: forwarded contract.
            done(unsafe {
                min_max_impl(
                    model,
                    devices,
                    n,
                    total_bandwidth_hz,
                    out_bandwidth_hz,
                    out_max_latency_s,
                )
            })
        }
    };
}

export!(
    f32;
    wdmoe_select_f32, wdmoe_select_into_f32, wdmoe_top_k_f32, wdmoe_kappa_f32, wdmoe_wlr_per_s_f32,
    wdmoe_db_to_linear_f32, wdmoe_linear_to_db_f32, wdmoe_dbm_to_w_f32, wdmoe_w_to_dbm_f32,
    wdmoe_free_space_path_loss_db_f32, wdmoe_uma_path_loss_db_f32, wdmoe_umi_path_loss_db_f32,
    wdmoe_uma_los_probability_f32, wdmoe_umi_los_probability_f32,
    wdmoe_channel_power_gain_f32, wdmoe_noise_psd_w_per_hz_f32, wdmoe_noise_power_w_f32,
    wdmoe_shannon_rate_bps_f32,
    wdmoe_expert_flops_per_token_f32, wdmoe_payload_bits_f32,
    wdmoe_expert_latency_s_f32, wdmoe_device_latency_s_f32, wdmoe_token_latency_s_f32,
    wdmoe_sequential_prompt_latency_s_f32, wdmoe_batched_layer_latency_s_f32,
    wdmoe_even_split_bandwidth_hz_f32, wdmoe_min_max_bandwidth_hz_f32
);

export!(
    f64;
    wdmoe_select_f64, wdmoe_select_into_f64, wdmoe_top_k_f64, wdmoe_kappa_f64, wdmoe_wlr_per_s_f64,
    wdmoe_db_to_linear_f64, wdmoe_linear_to_db_f64, wdmoe_dbm_to_w_f64, wdmoe_w_to_dbm_f64,
    wdmoe_free_space_path_loss_db_f64, wdmoe_uma_path_loss_db_f64, wdmoe_umi_path_loss_db_f64,
    wdmoe_uma_los_probability_f64, wdmoe_umi_los_probability_f64,
    wdmoe_channel_power_gain_f64, wdmoe_noise_psd_w_per_hz_f64, wdmoe_noise_power_w_f64,
    wdmoe_shannon_rate_bps_f64,
    wdmoe_expert_flops_per_token_f64, wdmoe_payload_bits_f64,
    wdmoe_expert_latency_s_f64, wdmoe_device_latency_s_f64, wdmoe_token_latency_s_f64,
    wdmoe_sequential_prompt_latency_s_f64, wdmoe_batched_layer_latency_s_f64,
    wdmoe_even_split_bandwidth_hz_f64, wdmoe_min_max_bandwidth_hz_f64
);

/// The firmware's panic hook (`wdmoe_set_panic_hook`): a function pointer,
/// 0 when none is set.
static PANIC_HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Sets the function the static library's panic handler calls, for
/// firmware that wants to log and reset rather than halt; null clears it.
/// No entry point has a reachable panic call site (checked on the built
/// object's call graph by wdmoe-core/firmware/run.sh), so this is a safety
/// net. The hook runs in the panicking context; if it returns, the library
/// spins forever.
#[no_mangle]
pub extern "C" fn wdmoe_set_panic_hook(hook: Option<extern "C" fn()>) {
    let p = hook.map_or(core::ptr::null_mut(), |f| f as *mut ());
    PANIC_HOOK.store(p, Ordering::Release);
}

/// The hook set by [`wdmoe_set_panic_hook`], if any.
#[allow(dead_code)] // used by the static library's panic handler only
fn panic_hook() -> Option<extern "C" fn()> {
    let p = PANIC_HOOK.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-null `p` was stored from an `extern "C" fn()` by
    // `wdmoe_set_panic_hook` (function and data pointers have one size here).
    Some(unsafe { core::mem::transmute::<*mut (), extern "C" fn()>(p) })
}

/// The panic handler of the static library (see the crate docs, "C ABI"):
/// only compiled with `--cfg wdmoe_staticlib`, which the staticlib build
/// passes to this crate alone, so the rlib that Rust users and tests link
/// never defines one. Calls the firmware's hook, then halts here rather
/// than unwinding into C.
#[cfg(all(wdmoe_staticlib, not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    if let Some(hook) = panic_hook() {
        hook();
    }
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_error_has_its_own_negative_code_and_message() {
        let errors = [
            Error::NaN("x"),
            Error::NotPositive("x"),
            Error::Negative("x"),
            Error::NotFinite("x"),
            Error::LatencyNotPositive,
            Error::KOutOfRange,
            Error::ThetaOutOfRange,
            Error::CapacityExceeded,
            Error::LengthMismatch,
            Error::Empty,
            Error::NoReachableExpert,
            Error::OutOfRange("x"),
            Error::Infeasible,
        ];
        let mut codes: std::vec::Vec<c_int> = errors.iter().map(|&e| status_of(e)).collect();
        codes.extend([WDMOE_ERR_NULL_POINTER, WDMOE_ERR_MISALIGNED_POINTER]);
        let unknown = unsafe { CStr::from_ptr(wdmoe_status_message(-1000)) };
        for &c in &codes {
            assert!(c < 0);
            let msg = unsafe { CStr::from_ptr(wdmoe_status_message(c)) };
            assert_ne!(msg, unknown, "code {c}");
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len() + 2);
    }

    /// The header's enum, [`STATUSES`], [`status_of`] and `Error`'s
    /// `Display` tell the same story.
    #[test]
    fn status_codes_and_messages_have_one_source() {
        let header = include_str!("../include/wdmoe.h");
        for &(code, name, msg) in STATUSES {
            let decl = std::format!("{name} = {code}");
            assert!(header.contains(&decl), "wdmoe.h lacks `{decl}`");
            let got = unsafe { CStr::from_ptr(wdmoe_status_message(code)) };
            assert_eq!(got, msg);
        }
        let enum_lines = header
            .lines()
            .filter(|l| l.trim_start().starts_with("WDMOE_"))
            .count();
        assert_eq!(enum_lines, STATUSES.len(), "wdmoe.h's enum has other codes");
        let p = "an input";
        let errors = [
            Error::NaN(p),
            Error::NotPositive(p),
            Error::Negative(p),
            Error::NotFinite(p),
            Error::LatencyNotPositive,
            Error::KOutOfRange,
            Error::ThetaOutOfRange,
            Error::CapacityExceeded,
            Error::LengthMismatch,
            Error::Empty,
            Error::NoReachableExpert,
            Error::OutOfRange(p),
            Error::Infeasible,
        ];
        for e in errors {
            let code = status_of(e);
            let (_, _, msg) = STATUSES.iter().find(|s| s.0 == code).unwrap();
            let display = std::format!("{e}");
            let want = match e {
                // Rust names the const generic N; C the number.
                Error::CapacityExceeded => {
                    display.replace("capacity N", "capacity (256, or the buffers given)")
                }
                _ => display,
            };
            assert_eq!(msg.to_str().unwrap(), want, "{e:?}");
        }
    }

    #[test]
    fn bad_lengths_and_pointers_are_refused_before_any_read() {
        // A dangling (but aligned, non-null) pointer with an absurd length:
        // the length check must come first, so nothing is dereferenced.
        let dangling = core::ptr::NonNull::<f64>::dangling().as_ptr();
        let mut out = core::mem::MaybeUninit::<SelectionC<f64>>::zeroed();
        let code = unsafe {
            wdmoe_select_f64(dangling, dangling, usize::MAX, 2, 0.2, 1, out.as_mut_ptr())
        };
        assert_eq!(code, WDMOE_ERR_CAPACITY_EXCEEDED);
        let mut x = -1.0_f64;
        let code = unsafe { wdmoe_sequential_prompt_latency_s_f64(dangling, usize::MAX, &mut x) };
        assert_eq!(code, WDMOE_ERR_CAPACITY_EXCEEDED);
        assert_eq!(x, -1.0, "untouched on error");
        let buf = [0.0_f64; 4];
        let misaligned = (buf.as_ptr() as *const u8).wrapping_add(1) as *const f64;
        let code = unsafe { wdmoe_kappa_f64(misaligned, buf.as_ptr(), 2, &mut x) };
        assert_eq!(code, WDMOE_ERR_MISALIGNED_POINTER);
        let code = unsafe { wdmoe_kappa_f64(core::ptr::null(), buf.as_ptr(), 2, &mut x) };
        assert_eq!(code, WDMOE_ERR_NULL_POINTER);
        let code = unsafe { wdmoe_free_space_path_loss_db_f32(3.5, 100.0, core::ptr::null_mut()) };
        assert_eq!(code, WDMOE_ERR_NULL_POINTER);
    }

    #[test]
    fn inputs_and_outputs_may_overlap() {
        // WLR in place: weights are overwritten by the ratios.
        let mut w = [0.5_f32, 0.3, 0.2];
        let t = [0.1_f32, 0.3, f32::INFINITY];
        let p = w.as_mut_ptr();
        assert_eq!(
            unsafe { wdmoe_wlr_per_s_f32(p, t.as_ptr(), 3, p) },
            WDMOE_OK
        );
        assert_eq!(w, [5.0, 1.0, 0.0]);
    }

    #[test]
    fn bandwidth_and_latency_entry_points() {
        let model = LatencyModelC {
            payload_bits: 65_536.0_f64,
            flops_per_token: 352_393_216.0,
            n0_w_per_hz: 3.98e-21,
        };
        let dev = |g: f64| DeviceLinkC {
            tx_power_down_w: 10.0,
            gain_down: g,
            tx_power_up_w: 0.2,
            gain_up: g,
            compute_flops_per_s: 2e12,
        };
        let devices = [dev(1e-8), dev(1e-11)];
        let (mut b, mut worst) = ([0.0_f64; 2], 0.0_f64);
        let code = unsafe {
            wdmoe_min_max_bandwidth_hz_f64(
                &model,
                devices.as_ptr(),
                2,
                20e6,
                b.as_mut_ptr(),
                &mut worst,
            )
        };
        assert_eq!(code, WDMOE_OK);
        assert!(b[1] > b[0] && ((b[0] + b[1]) / 20e6 - 1.0).abs() < 1e-12);
        let mut even = 0.0;
        let code = unsafe { wdmoe_device_latency_s_f64(&model, &devices[1], 10e6, &mut even) };
        assert_eq!(code, WDMOE_OK);
        assert!(worst < even);
        let code = unsafe {
            wdmoe_min_max_bandwidth_hz_f64(
                &model,
                devices.as_ptr(),
                257,
                20e6,
                b.as_mut_ptr(),
                &mut worst,
            )
        };
        assert_eq!(code, WDMOE_ERR_CAPACITY_EXCEEDED);
        // 3 tokens × 1 ms vs 1 × 2.5 ms → 3 ms; 0.25 + 0.5 + 0.125 = 0.875.
        let mut t = 0.0_f32;
        let code = unsafe {
            wdmoe_batched_layer_latency_s_f32(
                [3, 1].as_ptr(),
                [1e-3_f32, 2.5e-3].as_ptr(),
                2,
                &mut t,
            )
        };
        assert_eq!((code, t), (WDMOE_OK, 3e-3));
        let code = unsafe {
            wdmoe_sequential_prompt_latency_s_f32([0.25_f32, 0.5, 0.125].as_ptr(), 3, &mut t)
        };
        assert_eq!((code, t), (WDMOE_OK, 0.875));
        let code = unsafe {
            wdmoe_token_latency_s_f32([0.3_f32, 0.1].as_ptr(), 2, [0_u32, 1].as_ptr(), 2, &mut t)
        };
        assert_eq!((code, t), (WDMOE_OK, 0.3));
    }

    #[test]
    fn selection_matches_the_rust_api() {
        let z = [0.5_f64, 1.0, -2.0, 0.0];
        let t = [0.010_f64, 0.100, 0.010, 0.010];
        let mut out = core::mem::MaybeUninit::<SelectionC<f64>>::zeroed();
        let code =
            unsafe { wdmoe_select_f64(z.as_ptr(), t.as_ptr(), 4, 2, 0.2, 1, out.as_mut_ptr()) };
        assert_eq!(code, WDMOE_OK);
        let c = unsafe { out.assume_init() };
        let policy = Policy::new(2, 0.2, 1).unwrap();
        let s = select::select::<f64, 8>(&policy, &z, &t).unwrap();
        assert_eq!(c.n_experts as usize, s.experts().len());
        assert_eq!(c.experts[0] as usize, s.experts()[0]);
        assert_eq!(c.weights[0], s.weights()[0]);
        assert_eq!(c.n_dropped as usize, s.dropped().len());
        assert_eq!(c.dropped[0] as usize, s.dropped()[0]);
        assert_eq!((c.has_kappa, Some(c.kappa)), (1, s.kappa()));
        assert_eq!(c.fallback, 0);
    }

    #[test]
    fn select_into_matches_the_rust_api_and_reports_the_bad_parameter() {
        let z = [0.5_f32, 1.0, -2.0, 0.0];
        let t = [0.010_f32, 0.100, 0.010, 0.010];
        let (mut p, mut e, mut w, mut d) = ([0.0_f32; 4], [9_u16; 2], [9.0_f32; 2], [9_u16; 2]);
        let mut info = core::mem::MaybeUninit::<SelectionInfoC<f32>>::uninit();
        let code = unsafe {
            wdmoe_select_into_f32(
                z.as_ptr(),
                t.as_ptr(),
                4,
                2,
                0.2,
                1,
                p.as_mut_ptr(),
                e.as_mut_ptr(),
                w.as_mut_ptr(),
                d.as_mut_ptr(),
                info.as_mut_ptr(),
            )
        };
        assert_eq!(code, WDMOE_OK);
        let info = unsafe { info.assume_init() };
        let s = select::select::<f32, 4>(&Policy::new(2, 0.2, 1).unwrap(), &z, &t).unwrap();
        assert_eq!((info.n_experts, info.n_dropped), (1, 1));
        assert_eq!(
            (e[0] as usize, d[0] as usize),
            (s.experts()[0], s.dropped()[0])
        );
        assert_eq!((w[0], Some(info.kappa)), (s.weights()[0], s.kappa()));
        // A NaN theta: the status says NaN, the parameter is theta; nothing written.
        let (e0, w0) = (e, w);
        let mut info2 = core::mem::MaybeUninit::<SelectionInfoC<f32>>::uninit();
        let code = unsafe {
            wdmoe_select_into_f32(
                z.as_ptr(),
                t.as_ptr(),
                4,
                2,
                f32::NAN,
                1,
                p.as_mut_ptr(),
                e.as_mut_ptr(),
                w.as_mut_ptr(),
                d.as_mut_ptr(),
                info2.as_mut_ptr(),
            )
        };
        assert_eq!(code, WDMOE_ERR_NAN);
        assert_eq!((e, w), (e0, w0));
        let param = unsafe { CStr::from_ptr(wdmoe_last_error_param()) };
        assert_eq!(param.to_str(), Ok("theta"));
        // A 3GPP range error names the frequency; a k error names nothing.
        let mut x = 0.0_f32;
        let code = unsafe { wdmoe_uma_path_loss_db_f32(25.0, 1.5, 200.0, 100.0, 1, &mut x) };
        assert_eq!(code, WDMOE_ERR_OUT_OF_RANGE);
        let param = unsafe { CStr::from_ptr(wdmoe_last_error_param()) };
        assert_eq!(param.to_str(), Ok("frequency_ghz"));
        let mut out = core::mem::MaybeUninit::<SelectionC<f32>>::zeroed();
        let code =
            unsafe { wdmoe_select_f32(z.as_ptr(), t.as_ptr(), 4, 0, 0.2, 1, out.as_mut_ptr()) };
        assert_eq!(code, WDMOE_ERR_K_OUT_OF_RANGE);
        assert_eq!(
            unsafe { CStr::from_ptr(wdmoe_last_error_param()) }.to_bytes(),
            b""
        );
    }

    #[test]
    fn panic_hook_round_trips() {
        use core::sync::atomic::AtomicBool;
        static CALLED: AtomicBool = AtomicBool::new(false);
        extern "C" fn hook() {
            CALLED.store(true, Ordering::SeqCst);
        }
        wdmoe_set_panic_hook(Some(hook));
        panic_hook().expect("a hook is set")();
        assert!(CALLED.load(Ordering::SeqCst));
        wdmoe_set_panic_hook(None);
        assert!(panic_hook().is_none());
    }

    #[test]
    fn version_queries() {
        let v = unsafe { CStr::from_ptr(wdmoe_version()) };
        assert_eq!(v.to_str(), Ok(env!("CARGO_PKG_VERSION")));
        assert_eq!(wdmoe_abi_version(), WDMOE_ABI_VERSION);
    }

    fn lat() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => 1e-4f64..10.0,
            1 => Just(f64::INFINITY),
            1 => Just(0.0),
            1 => Just(f64::NAN),
        ]
    }

    proptest! {
        /// The C entry points give exactly what the Rust API gives, values
        /// and errors, in both precisions (up to 256 experts).
        #[test]
        #[cfg_attr(miri, ignore)]
        fn c_select_equals_rust_select(
            zt in (1usize..=WDMOE_MAX_EXPERTS + 1).prop_flat_map(|n| (
                proptest::collection::vec(-20.0f64..20.0, n),
                proptest::collection::vec(lat(), n),
            )),
            k in 0usize..6,
            theta in -0.1f64..0.6,
            max_drops in 0usize..4,
        ) {
            let (z, t) = zt;
            let n = z.len();
            if n > WDMOE_MAX_EXPERTS {
                // Refused before anything is read, whatever else is wrong.
                let mut out = core::mem::MaybeUninit::<SelectionC<f64>>::zeroed();
                let code = unsafe {
                    wdmoe_select_f64(z.as_ptr(), t.as_ptr(), n, k, theta, max_drops, out.as_mut_ptr())
                };
                prop_assert_eq!(code, WDMOE_ERR_CAPACITY_EXCEEDED);
                return Ok(());
            }
            let rust = Policy::new(k, theta, max_drops)
                .and_then(|p| select::select::<f64, WDMOE_MAX_EXPERTS>(&p, &z, &t));
            let mut out = core::mem::MaybeUninit::<SelectionC<f64>>::zeroed();
            let code = unsafe {
                wdmoe_select_f64(z.as_ptr(), t.as_ptr(), n, k, theta, max_drops, out.as_mut_ptr())
            };
            match rust {
                Ok(s) => {
                    prop_assert_eq!(code, WDMOE_OK);
                    let c = unsafe { out.assume_init() };
                    let ne = c.n_experts as usize;
                    let nd = c.n_dropped as usize;
                    let e: std::vec::Vec<usize> = c.experts[..ne].iter().map(|&q| q as usize).collect();
                    let d: std::vec::Vec<usize> = c.dropped[..nd].iter().map(|&q| q as usize).collect();
                    prop_assert_eq!(&e[..], s.experts());
                    prop_assert_eq!(&d[..], s.dropped());
                    prop_assert_eq!(&c.weights[..ne], s.weights());
                    prop_assert_eq!(c.has_kappa == 1, s.kappa().is_some());
                    if let Some(kappa) = s.kappa() {
                        prop_assert_eq!(c.kappa, kappa);
                    }
                    prop_assert_eq!(c.fallback == 1, s.fallback());
                }
                Err(e) => prop_assert_eq!(code, status_of(e)),
            }
            // f32: same inputs rounded; same agreement.
            let z32: std::vec::Vec<f32> = z.iter().map(|&x| x as f32).collect();
            let t32: std::vec::Vec<f32> = t.iter().map(|&x| x as f32).collect();
            let rust = Policy::new(k, theta as f32, max_drops)
                .and_then(|p| select::select::<f32, WDMOE_MAX_EXPERTS>(&p, &z32, &t32));
            let mut out = core::mem::MaybeUninit::<SelectionC<f32>>::zeroed();
            let code = unsafe {
                wdmoe_select_f32(z32.as_ptr(), t32.as_ptr(), n, k, theta as f32, max_drops, out.as_mut_ptr())
            };
            match rust {
                Ok(s) => {
                    prop_assert_eq!(code, WDMOE_OK);
                    let c = unsafe { out.assume_init() };
                    let ne = c.n_experts as usize;
                    prop_assert_eq!(ne, s.experts().len());
                    prop_assert!(c.experts[..ne].iter().zip(s.experts()).all(|(&a, &b)| a as usize == b));
                    prop_assert_eq!(&c.weights[..ne], s.weights());
                }
                Err(e) => prop_assert_eq!(code, status_of(e)),
            }
        }
    }
}
