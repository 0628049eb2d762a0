//! Status codes and their messages (one table), the diagnostics of the
//! last error, the version queries and the panic hook of the C ABI.

use core::ffi::{c_char, c_int, CStr};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::Error;

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
pub(crate) mod last_param {
    use core::sync::atomic::{AtomicU32, Ordering};
    #[cfg(not(test))]
    static LAST_PARAM: AtomicU32 = AtomicU32::new(0);
    #[cfg(test)]
    std::thread_local!(static LAST_PARAM: AtomicU32 = const { AtomicU32::new(0) });
    pub(crate) fn set(v: u32) {
        #[cfg(not(test))]
        LAST_PARAM.store(v, Ordering::Relaxed);
        #[cfg(test)]
        LAST_PARAM.with(|p| p.store(v, Ordering::Relaxed));
    }
    pub(crate) fn get() -> u32 {
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
pub(super) fn panic_hook() -> Option<extern "C" fn()> {
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
