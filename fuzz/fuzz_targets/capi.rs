//! The C ABI (wdmoe-core feature `capi`, `include/wdmoe.h`) called through
//! its Rust signatures, the way C calls it: raw pointers, counts, status
//! codes and `#[repr(C)]` structs declared here from the header, not taken
//! from the crate. On any input:
//! - no crash, no memory error (the default cargo-fuzz build runs this
//!   under AddressSanitizer; this is the crate's only unsafe code);
//! - the status is `WDMOE_OK` exactly when the Rust API returns `Ok`, and
//!   otherwise the code of the Rust error (or the null/misaligned-pointer
//!   code when the fuzzer passed such a pointer);
//! - on `WDMOE_OK` the outputs equal the Rust API's results, bit for bit;
//! - on an error the outputs are not written.
#![no_main]

use std::mem::size_of;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use wdmoe_core::bandwidth;
use wdmoe_core::latency::{self, DeviceLink, LatencyModel};
use wdmoe_core::link::{self, Uma};
use wdmoe_core::select::{self, Policy};
use wdmoe_core::Error;
use wdmoe_fuzz::{byte, FuzzFloat, LinkInput, SelectInput};

const MAX: usize = 256;
const OK: i32 = 0;
const ERR_NULL: i32 = -1;
const ERR_MISALIGNED: i32 = -2;

/// The header's status code of a Rust error.
fn code(e: Error) -> i32 {
    match e {
        Error::NaN(_) => -3,
        Error::NotPositive(_) => -4,
        Error::Negative(_) => -5,
        Error::NotFinite(_) => -6,
        Error::LatencyNotPositive => -7,
        Error::KOutOfRange => -8,
        Error::ThetaOutOfRange => -9,
        Error::CapacityExceeded => -10,
        Error::LengthMismatch => -11,
        Error::Empty => -12,
        Error::NoReachableExpert => -13,
        Error::OutOfRange(_) => -14,
        Error::Infeasible => -15,
        _ => panic!("an Error variant without a C status code: {e:?}"),
    }
}

/// `wdmoe_selection_f32` / `wdmoe_selection_f64` of the header.
#[repr(C)]
#[derive(Clone, Copy)]
struct SelectionC<F> {
    n_experts: u32,
    n_dropped: u32,
    experts: [u32; MAX],
    dropped: [u32; MAX],
    weights: [F; MAX],
    kappa: F,
    has_kappa: u8,
    fallback: u8,
}
const _: () = assert!(size_of::<SelectionC<f32>>() == 3088);

/// `wdmoe_selection_info_f32` / `_f64` of the header.
#[repr(C)]
#[derive(Clone, Copy)]
struct SelectionInfoC<F> {
    n_experts: u16,
    n_dropped: u16,
    kappa: F,
    has_kappa: u8,
    fallback: u8,
}
const _: () = assert!(size_of::<SelectionInfoC<f32>>() == 12);
const _: () = assert!(size_of::<SelectionInfoC<f64>>() == 24);
const _: () = assert!(size_of::<SelectionC<f64>>() == 4120);

#[repr(C)]
#[derive(Clone, Copy)]
struct LatencyModelC<F> {
    payload_bits: F,
    flops_per_token: F,
    n0_w_per_hz: F,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DeviceLinkC<F> {
    tx_power_down_w: F,
    gain_down: F,
    tx_power_up_w: F,
    gain_up: F,
    compute_flops_per_s: F,
}

macro_rules! decls {
    ($F:ty, $select:ident, $select_into:ident, $top_k:ident, $kappa:ident, $wlr:ident, $db:ident, $uma_pl:ident,
     $uma_los:ident, $rate:ident, $dev_lat:ident, $token:ident, $seq:ident, $batched:ident,
     $even:ident, $min_max:ident) => {
        extern "C" {
            fn $select(
                logits: *const $F,
                latency_s: *const $F,
                n: usize,
                k: usize,
                theta: $F,
                max_drops: usize,
                out: *mut SelectionC<$F>,
            ) -> i32;
            fn $select_into(
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
            ) -> i32;
            fn $top_k(logits: *const $F, n: usize, k: usize, out: *mut SelectionC<$F>) -> i32;
            fn $kappa(w: *const $F, t: *const $F, n: usize, out: *mut $F) -> i32;
            fn $wlr(w: *const $F, t: *const $F, n: usize, out: *mut $F) -> i32;
            fn $db(db: $F, out: *mut $F) -> i32;
            fn $uma_pl(h_bs: $F, h_ut: $F, f: $F, d: $F, los: i32, out: *mut $F) -> i32;
            fn $uma_los(h_bs: $F, h_ut: $F, d: $F, out: *mut $F) -> i32;
            fn $rate(b: $F, p: $F, g: $F, n0: $F, out: *mut $F) -> i32;
            fn $dev_lat(
                m: *const LatencyModelC<$F>,
                d: *const DeviceLinkC<$F>,
                b: $F,
                out: *mut $F,
            ) -> i32;
            fn $token(t: *const $F, n: usize, e: *const u32, ne: usize, out: *mut $F) -> i32;
            fn $seq(t: *const $F, n: usize, out: *mut $F) -> i32;
            fn $batched(c: *const u32, t: *const $F, n: usize, out: *mut $F) -> i32;
            fn $even(total: $F, out: *mut $F, n: usize) -> i32;
            fn $min_max(
                m: *const LatencyModelC<$F>,
                d: *const DeviceLinkC<$F>,
                n: usize,
                total: $F,
                out_b: *mut $F,
                out_t: *mut $F,
            ) -> i32;
        }
        impl Capi for $F {
            unsafe fn select(
                z: *const Self,
                t: *const Self,
                n: usize,
                k: usize,
                th: Self,
                md: usize,
                o: *mut SelectionC<Self>,
            ) -> i32 {
                unsafe { $select(z, t, n, k, th, md, o) }
            }
            unsafe fn select_into(
                z: *const Self,
                t: *const Self,
                n: u16,
                k: u16,
                th: Self,
                md: u16,
                bufs: (*mut Self, *mut u16, *mut Self, *mut u16),
                o: *mut SelectionInfoC<Self>,
            ) -> i32 {
                unsafe { $select_into(z, t, n, k, th, md, bufs.0, bufs.1, bufs.2, bufs.3, o) }
            }
            unsafe fn top_k(z: *const Self, n: usize, k: usize, o: *mut SelectionC<Self>) -> i32 {
                unsafe { $top_k(z, n, k, o) }
            }
            unsafe fn kappa(w: *const Self, t: *const Self, n: usize, o: *mut Self) -> i32 {
                unsafe { $kappa(w, t, n, o) }
            }
            unsafe fn wlr(w: *const Self, t: *const Self, n: usize, o: *mut Self) -> i32 {
                unsafe { $wlr(w, t, n, o) }
            }
            unsafe fn db_to_linear(db: Self, o: *mut Self) -> i32 {
                unsafe { $db(db, o) }
            }
            unsafe fn uma_pl(
                h_bs: Self,
                h_ut: Self,
                f: Self,
                d: Self,
                los: i32,
                o: *mut Self,
            ) -> i32 {
                unsafe { $uma_pl(h_bs, h_ut, f, d, los, o) }
            }
            unsafe fn uma_los(h_bs: Self, h_ut: Self, d: Self, o: *mut Self) -> i32 {
                unsafe { $uma_los(h_bs, h_ut, d, o) }
            }
            unsafe fn rate(b: Self, p: Self, g: Self, n0: Self, o: *mut Self) -> i32 {
                unsafe { $rate(b, p, g, n0, o) }
            }
            unsafe fn device_latency(
                m: *const LatencyModelC<Self>,
                d: *const DeviceLinkC<Self>,
                b: Self,
                o: *mut Self,
            ) -> i32 {
                unsafe { $dev_lat(m, d, b, o) }
            }
            unsafe fn token_latency(
                t: *const Self,
                n: usize,
                e: *const u32,
                ne: usize,
                o: *mut Self,
            ) -> i32 {
                unsafe { $token(t, n, e, ne, o) }
            }
            unsafe fn sequential(t: *const Self, n: usize, o: *mut Self) -> i32 {
                unsafe { $seq(t, n, o) }
            }
            unsafe fn batched(c: *const u32, t: *const Self, n: usize, o: *mut Self) -> i32 {
                unsafe { $batched(c, t, n, o) }
            }
            unsafe fn even(total: Self, o: *mut Self, n: usize) -> i32 {
                unsafe { $even(total, o, n) }
            }
            unsafe fn min_max(
                m: *const LatencyModelC<Self>,
                d: *const DeviceLinkC<Self>,
                n: usize,
                total: Self,
                ob: *mut Self,
                ot: *mut Self,
            ) -> i32 {
                unsafe { $min_max(m, d, n, total, ob, ot) }
            }
        }
    };
}

/// The C entry points of one float type.
#[allow(clippy::too_many_arguments)]
trait Capi: FuzzFloat {
    unsafe fn select(
        z: *const Self,
        t: *const Self,
        n: usize,
        k: usize,
        th: Self,
        md: usize,
        o: *mut SelectionC<Self>,
    ) -> i32;
    /// Buffers: probabilities (n), experts, weights, dropped (min(k, n) each).
    unsafe fn select_into(
        z: *const Self,
        t: *const Self,
        n: u16,
        k: u16,
        th: Self,
        md: u16,
        bufs: (*mut Self, *mut u16, *mut Self, *mut u16),
        o: *mut SelectionInfoC<Self>,
    ) -> i32;
    unsafe fn top_k(z: *const Self, n: usize, k: usize, o: *mut SelectionC<Self>) -> i32;
    unsafe fn kappa(w: *const Self, t: *const Self, n: usize, o: *mut Self) -> i32;
    unsafe fn wlr(w: *const Self, t: *const Self, n: usize, o: *mut Self) -> i32;
    unsafe fn db_to_linear(db: Self, o: *mut Self) -> i32;
    unsafe fn uma_pl(h_bs: Self, h_ut: Self, f: Self, d: Self, los: i32, o: *mut Self) -> i32;
    unsafe fn uma_los(h_bs: Self, h_ut: Self, d: Self, o: *mut Self) -> i32;
    unsafe fn rate(b: Self, p: Self, g: Self, n0: Self, o: *mut Self) -> i32;
    unsafe fn device_latency(
        m: *const LatencyModelC<Self>,
        d: *const DeviceLinkC<Self>,
        b: Self,
        o: *mut Self,
    ) -> i32;
    unsafe fn token_latency(
        t: *const Self,
        n: usize,
        e: *const u32,
        ne: usize,
        o: *mut Self,
    ) -> i32;
    unsafe fn sequential(t: *const Self, n: usize, o: *mut Self) -> i32;
    unsafe fn batched(c: *const u32, t: *const Self, n: usize, o: *mut Self) -> i32;
    unsafe fn even(total: Self, o: *mut Self, n: usize) -> i32;
    unsafe fn min_max(
        m: *const LatencyModelC<Self>,
        d: *const DeviceLinkC<Self>,
        n: usize,
        total: Self,
        ob: *mut Self,
        ot: *mut Self,
    ) -> i32;
}

decls!(
    f32,
    wdmoe_select_f32,
    wdmoe_select_into_f32,
    wdmoe_top_k_f32,
    wdmoe_kappa_f32,
    wdmoe_wlr_per_s_f32,
    wdmoe_db_to_linear_f32,
    wdmoe_uma_path_loss_db_f32,
    wdmoe_uma_los_probability_f32,
    wdmoe_shannon_rate_bps_f32,
    wdmoe_device_latency_s_f32,
    wdmoe_token_latency_s_f32,
    wdmoe_sequential_prompt_latency_s_f32,
    wdmoe_batched_layer_latency_s_f32,
    wdmoe_even_split_bandwidth_hz_f32,
    wdmoe_min_max_bandwidth_hz_f32
);
decls!(
    f64,
    wdmoe_select_f64,
    wdmoe_select_into_f64,
    wdmoe_top_k_f64,
    wdmoe_kappa_f64,
    wdmoe_wlr_per_s_f64,
    wdmoe_db_to_linear_f64,
    wdmoe_uma_path_loss_db_f64,
    wdmoe_uma_los_probability_f64,
    wdmoe_shannon_rate_bps_f64,
    wdmoe_device_latency_s_f64,
    wdmoe_token_latency_s_f64,
    wdmoe_sequential_prompt_latency_s_f64,
    wdmoe_batched_layer_latency_s_f64,
    wdmoe_even_split_bandwidth_hz_f64,
    wdmoe_min_max_bandwidth_hz_f64
);

const POISON: u8 = 0xA5;

/// Storage for one `T` (or `n`), filled with a poison byte, whose pointer
/// the fuzzer may turn null or misaligned.
struct Buf<T> {
    store: Vec<T>,
    fault: Fault,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    Null,
    Misaligned,
}

impl Fault {
    fn from_bits(b: u8) -> Self {
        match b & 7 {
            1 => Fault::Null,
            2 => Fault::Misaligned,
            _ => Fault::None,
        }
    }
}

impl<T: Copy> Buf<T> {
    fn poisoned(n: usize, fault: Fault) -> Self {
        // One spare element so a misaligned pointer stays in bounds.
        let mut store: Vec<T> = Vec::with_capacity(n + 1);
        // SAFETY: the capacity is n + 1; every T used here (floats, integers,
        // repr(C) structs of them) is valid for any bit pattern.
        unsafe {
            std::ptr::write_bytes(store.as_mut_ptr(), POISON, n + 1);
            store.set_len(n + 1);
        }
        Self { store, fault }
    }
    fn from_slice(v: &[T], fault: Fault) -> Self {
        let mut store = v.to_vec();
        store.reserve(1);
        if let Some(&x) = v.first() {
            store.push(x);
        }
        Self { store, fault }
    }
    fn ptr(&mut self) -> *mut T {
        match self.fault {
            Fault::None => self.store.as_mut_ptr(),
            Fault::Null => std::ptr::null_mut(),
            // In bounds (the spare element), but not aligned for T.
            Fault::Misaligned => (self.store.as_mut_ptr() as *mut u8).wrapping_add(1) as *mut T,
        }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: plain-data T; the store is initialised.
        unsafe {
            std::slice::from_raw_parts(
                self.store.as_ptr() as *const u8,
                self.store.len() * size_of::<T>(),
            )
        }
    }
    fn untouched(&self) -> bool {
        self.fault != Fault::None || self.bytes().iter().all(|&b| b == POISON)
    }
}

/// The status a call must return given the faults among its pointers (in
/// argument order) and the Rust API's result: the first null/misaligned
/// pointer's code, or the Rust result. Implementations may validate values
/// before pointers, so either is accepted when both are wrong.
fn check_status<T>(what: &str, status: i32, faults: &[Fault], rust: &Result<T, Error>) {
    let fault_codes: Vec<i32> = faults
        .iter()
        .filter_map(|f| match f {
            Fault::None => None,
            Fault::Null => Some(ERR_NULL),
            Fault::Misaligned => Some(ERR_MISALIGNED),
        })
        .collect();
    let rust_code = match rust {
        Ok(_) => OK,
        Err(e) => code(*e),
    };
    if fault_codes.is_empty() {
        assert_eq!(
            status, rust_code,
            "{what}: C status {status}, Rust {rust_code}"
        );
    } else {
        assert!(
            fault_codes.contains(&status) || (rust_code != OK && status == rust_code),
            "{what}: C status {status} with pointer faults {faults:?} (Rust {rust_code})"
        );
    }
}

fn same<F: FuzzFloat>(a: F, b: F) -> bool {
    a.to_f64().to_bits() == b.to_f64().to_bits()
}

fn check_selection<F: FuzzFloat>(what: &str, c: &SelectionC<F>, s: &select::Selection<F, MAX>) {
    let ne = c.n_experts as usize;
    let nd = c.n_dropped as usize;
    assert_eq!(
        &c.experts[..ne]
            .iter()
            .map(|&q| q as usize)
            .collect::<Vec<_>>(),
        s.experts(),
        "{what}"
    );
    assert_eq!(
        &c.dropped[..nd]
            .iter()
            .map(|&q| q as usize)
            .collect::<Vec<_>>(),
        s.dropped(),
        "{what}"
    );
    assert!(
        c.weights[..ne]
            .iter()
            .zip(s.weights())
            .all(|(&a, &b)| same(a, b)),
        "{what} weights"
    );
    match s.kappa() {
        Some(k) => assert!(c.has_kappa == 1 && same(c.kappa, k), "{what} kappa"),
        None => assert!(c.has_kappa == 0 && c.kappa.is_nan(), "{what} kappa"),
    }
    assert_eq!(c.fallback, u8::from(s.fallback()), "{what} fallback");
}

fn run_select<F: Capi>(u: &mut Unstructured<'_>, inp: &SelectInput) -> arbitrary::Result<()> {
    let faults = [byte(u)?, byte(u)?, byte(u)?];
    let [fz, ft, fo] = faults.map(Fault::from_bits);
    let z: Vec<F> = inp.logits.iter().map(|&x| F::from_num(x)).collect();
    let n = z.len();
    // C takes one count: the latencies are padded/truncated to n.
    let mut t: Vec<F> = inp.latency_s.iter().map(|&x| F::from_num(x)).collect();
    t.resize(n, F::ONE);
    let theta = F::from_num(inp.theta);

    let rust =
        Policy::new(inp.k, theta, inp.max_drops).and_then(|p| select::select::<F, MAX>(&p, &z, &t));
    // Above the capacity C reports it first; Rust validates θ and k first.
    let rust = if n > MAX {
        Err(Error::CapacityExceeded)
    } else {
        rust
    };
    let (mut bz, mut bt, mut bo) = (
        Buf::from_slice(&z, fz),
        Buf::from_slice(&t, ft),
        Buf::poisoned(1, fo),
    );
    // SAFETY: each pointer is null, misaligned, or points to n (1) elements.
    let st = unsafe { F::select(bz.ptr(), bt.ptr(), n, inp.k, theta, inp.max_drops, bo.ptr()) };
    check_status("select", st, &[fz, ft, fo], &rust);
    match (&rust, st) {
        (Ok(s), OK) => check_selection("select", &bo.store[0], s),
        _ => assert!(
            st == OK || bo.untouched(),
            "select wrote its output on error {st}"
        ),
    }

    // The caller-sized form: the same decision in the caller's buffers
    // (n ≤ 320 here, so compared with the Rust API at capacity 512).
    if let (Ok(k16), Ok(md16)) = (u16::try_from(inp.k), u16::try_from(inp.max_drops)) {
        let rust = Policy::new(inp.k, theta, inp.max_drops)
            .and_then(|p| select::select::<F, 512>(&p, &z, &t));
        let m = inp.k.min(n);
        let (mut p, mut e, mut w, mut d) = (
            vec![F::ZERO; n],
            vec![7u16; m],
            vec![F::ZERO; m],
            vec![7u16; m],
        );
        let mut info = Buf::<SelectionInfoC<F>>::poisoned(1, fo);
        let e0 = e.clone();
        // SAFETY: n floats in and scratch, min(k, n) outputs, one info.
        let st = unsafe {
            F::select_into(
                z.as_ptr(),
                t.as_ptr(),
                n as u16,
                k16,
                theta,
                md16,
                (
                    p.as_mut_ptr(),
                    e.as_mut_ptr(),
                    w.as_mut_ptr(),
                    d.as_mut_ptr(),
                ),
                info.ptr(),
            )
        };
        check_status("select_into", st, &[fo], &rust);
        match (&rust, st) {
            (Ok(s), OK) => {
                let i = info.store[0];
                let (ne, nd) = (i.n_experts as usize, i.n_dropped as usize);
                let got: Vec<usize> = e[..ne].iter().map(|&q| q as usize).collect();
                assert_eq!(&got[..], s.experts(), "select_into experts");
                let got: Vec<usize> = d[..nd].iter().map(|&q| q as usize).collect();
                assert_eq!(&got[..], s.dropped(), "select_into dropped");
                assert!(w[..ne].iter().zip(s.weights()).all(|(&a, &b)| same(a, b)));
                assert_eq!(i.fallback, u8::from(s.fallback()));
            }
            _ => assert!(
                st == OK || (info.untouched() && e == e0),
                "select_into wrote its output on error {st}"
            ),
        }
    }

    let rust = select::top_k::<F, MAX>(&z, inp.k);
    let rust = if n > MAX {
        Err(Error::CapacityExceeded)
    } else {
        rust
    };
    let mut bo = Buf::<SelectionC<F>>::poisoned(1, fo);
    // SAFETY: as above.
    let st = unsafe { F::top_k(bz.ptr(), n, inp.k, bo.ptr()) };
    check_status("top_k", st, &[fz, fo], &rust);
    match (&rust, st) {
        (Ok(s), OK) => check_selection("top_k", &bo.store[0], s),
        _ => assert!(
            st == OK || bo.untouched(),
            "top_k wrote its output on error {st}"
        ),
    }

    // κ and WLR with the logits as weights.
    let rust = select::kappa(&z, &t);
    let mut bo = Buf::<F>::poisoned(1, fo);
    // SAFETY: as above.
    let st = unsafe { F::kappa(bz.ptr(), bt.ptr(), n, bo.ptr()) };
    let rust = if n > MAX {
        Err(Error::CapacityExceeded)
    } else {
        rust
    };
    check_status("kappa", st, &[fz, ft, fo], &rust);
    match (&rust, st) {
        (Ok(k), OK) => assert!(same(bo.store[0], *k), "kappa value"),
        _ => assert!(
            st == OK || bo.untouched(),
            "kappa wrote its output on error"
        ),
    }
    let mut out = vec![F::ZERO; n];
    let rust = select::wlr(&z, &t, &mut out).map(|_| ());
    let rust = if n > MAX && rust.is_ok() {
        Err(Error::CapacityExceeded)
    } else {
        rust
    };
    let mut bo = Buf::<F>::poisoned(n, fo);
    // SAFETY: as above (n writable elements).
    let st = unsafe { F::wlr(bz.ptr(), bt.ptr(), n, bo.ptr()) };
    if n <= MAX {
        check_status("wlr", st, &[fz, ft, fo], &rust);
    }
    if st == OK {
        assert!(
            bo.store[..n].iter().zip(&out).all(|(&a, &b)| same(a, b)),
            "wlr values"
        );
    } else {
        assert!(bo.untouched(), "wlr wrote its output on error");
    }
    Ok(())
}

/// `h`: header bytes read before the arguments: `[out fault, 2nd pointer
/// fault, 3rd pointer fault, count, count]`.
fn run_link<F: Capi>(h: [u8; 5], inp: &LinkInput) {
    let a = |i| F::from_num(inp.arg(i));
    let fo = Fault::from_bits(h[0]);
    let scalar = |what: &str, st: i32, bo: &Buf<F>, rust: Result<F, Error>, extra: &[Fault]| {
        let mut faults = extra.to_vec();
        faults.push(fo);
        check_status(what, st, &faults, &rust);
        match (rust, st) {
            (Ok(v), OK) => assert!(
                same(bo.store[0], v),
                "{what}: C {} vs Rust {v}",
                bo.store[0]
            ),
            _ => assert!(
                st == OK || bo.untouched(),
                "{what} wrote its output on error"
            ),
        }
    };
    let mut bo = Buf::<F>::poisoned(1, fo);
    match inp.op % 8 {
        0 => {
            // SAFETY: the out pointer is null, misaligned or valid.
            let st = unsafe { F::db_to_linear(a(0), bo.ptr()) };
            scalar("db_to_linear", st, &bo, link::db_to_linear(a(0)), &[]);
        }
        1 => {
            let los = inp.op & 8 != 0;
            // SAFETY: as above.
            let st = unsafe { F::uma_pl(a(0), a(1), a(2), a(3), i32::from(los), bo.ptr()) };
            let rust = Uma::new(a(0), a(1)).and_then(|m| m.path_loss_db(a(2), a(3), los));
            scalar("uma_path_loss_db", st, &bo, rust, &[]);
            let mut bo = Buf::<F>::poisoned(1, fo);
            // SAFETY: as above.
            let st = unsafe { F::uma_los(a(0), a(1), a(3), bo.ptr()) };
            let rust = Uma::new(a(0), a(1)).and_then(|m| m.los_probability(a(3)));
            scalar("uma_los_probability", st, &bo, rust, &[]);
        }
        2 => {
            // SAFETY: as above.
            let st = unsafe { F::rate(a(0), a(1), a(2), a(3), bo.ptr()) };
            scalar(
                "shannon_rate_bps",
                st,
                &bo,
                link::shannon_rate_bps(a(0), a(1), a(2), a(3)),
                &[],
            );
        }
        3 => {
            let m = LatencyModelC {
                payload_bits: a(0),
                flops_per_token: a(1),
                n0_w_per_hz: a(2),
            };
            let d = DeviceLinkC {
                tx_power_down_w: a(3),
                gain_down: a(4),
                tx_power_up_w: a(5),
                gain_up: a(6),
                compute_flops_per_s: a(7),
            };
            let (fm, fd) = (Fault::from_bits(h[1]), Fault::from_bits(h[2]));
            let (mut bm, mut bd) = (Buf::from_slice(&[m], fm), Buf::from_slice(&[d], fd));
            // SAFETY: each pointer is null, misaligned or valid.
            let st = unsafe { F::device_latency(bm.ptr(), bd.ptr(), a(8), bo.ptr()) };
            let rust = LatencyModel::new(a(0), a(1), a(2)).and_then(|model| {
                let dev = DeviceLink::new(a(3), a(4), a(5), a(6), a(7))?;
                model.expert_latency_s(&dev, a(8))
            });
            scalar("device_latency_s", st, &bo, rust, &[fm, fd]);
        }
        4 => {
            let n = h[3] as usize % 300;
            let t: Vec<F> = (0..n).map(a).collect();
            // Expert indices from the arguments after the latencies (huge ones saturate).
            let e: Vec<u32> = (0..h[4] as usize)
                .map(|i| inp.arg(n + i).f64() as u32)
                .collect();
            let (ft, fe) = (Fault::from_bits(h[1]), Fault::from_bits(h[2]));
            let (mut bt, mut be) = (Buf::from_slice(&t, ft), Buf::from_slice(&e, fe));
            // SAFETY: as above (n and e.len() elements).
            let st = unsafe { F::token_latency(bt.ptr(), n, be.ptr(), e.len(), bo.ptr()) };
            let idx: Vec<usize> = e.iter().map(|&q| q as usize).collect();
            let rust = latency::token_latency_s(&t, &idx);
            if n <= MAX && e.len() <= MAX {
                scalar("token_latency_s", st, &bo, rust, &[ft, fe]);
            } else {
                assert!(st != OK || rust.is_ok());
            }
        }
        5 => {
            let t: Vec<F> = inp.args.iter().map(|&x| F::from_num(x)).collect();
            let ft = Fault::from_bits(h[1]);
            let mut bt = Buf::from_slice(&t, ft);
            // SAFETY: as above.
            let st = unsafe { F::sequential(bt.ptr(), t.len(), bo.ptr()) };
            let rust = latency::sequential_prompt_latency_s(&t);
            // An empty slice may be passed as a null pointer.
            if !(t.is_empty() && ft != Fault::None) {
                scalar("sequential_prompt_latency_s", st, &bo, rust, &[ft]);
            }
            let c: Vec<u32> = t.iter().map(|x| x.to_f64() as u32).collect();
            let mut bc = Buf::from_slice(&c, Fault::None);
            let mut bo = Buf::<F>::poisoned(1, fo);
            // SAFETY: as above.
            let st = unsafe { F::batched(bc.ptr(), bt.ptr(), t.len(), bo.ptr()) };
            let rust = latency::batched_layer_latency_s(&c, &t);
            if t.len() <= MAX && !(t.is_empty() && ft != Fault::None) {
                scalar("batched_layer_latency_s", st, &bo, rust, &[ft]);
            }
        }
        6 => {
            let n = h[3] as usize % 300;
            let mut bo = Buf::<F>::poisoned(n, fo);
            // SAFETY: n writable elements.
            let st = unsafe { F::even(a(0), bo.ptr(), n) };
            let mut out = vec![F::ZERO; n];
            let rust = bandwidth::even_split(a(0), &mut out).map(|_| F::ZERO);
            if n <= MAX {
                check_status("even_split", st, &[fo], &rust);
            }
            if st == OK {
                assert!(bo.store[..n].iter().zip(&out).all(|(&x, &y)| same(x, y)));
            } else {
                assert!(bo.untouched(), "even_split wrote its output on error");
            }
        }
        _ => {
            let m = LatencyModelC {
                payload_bits: a(0),
                flops_per_token: a(1),
                n0_w_per_hz: a(2),
            };
            let n = (h[3] % 8) as usize + 1;
            let devs: Vec<DeviceLinkC<F>> = (0..n)
                .map(|i| DeviceLinkC {
                    tx_power_down_w: a(4 + 5 * i),
                    gain_down: a(5 + 5 * i),
                    tx_power_up_w: a(6 + 5 * i),
                    gain_up: a(7 + 5 * i),
                    compute_flops_per_s: a(8 + 5 * i),
                })
                .collect();
            let (mut bm, mut bd) = (
                Buf::from_slice(&[m], Fault::None),
                Buf::from_slice(&devs, Fault::None),
            );
            let mut bb = Buf::<F>::poisoned(n, Fault::None);
            // SAFETY: valid pointers, n devices and n outputs.
            let st = unsafe { F::min_max(bm.ptr(), bd.ptr(), n, a(3), bb.ptr(), bo.ptr()) };
            let mut out = vec![F::ZERO; n];
            let rust = LatencyModel::new(a(0), a(1), a(2)).and_then(|model| {
                let d: Vec<DeviceLink<F>> = devs
                    .iter()
                    .map(|d| {
                        DeviceLink::new(
                            d.tx_power_down_w,
                            d.gain_down,
                            d.tx_power_up_w,
                            d.gain_up,
                            d.compute_flops_per_s,
                        )
                    })
                    .collect::<Result<_, _>>()?;
                bandwidth::min_max(&model, &d, a(3), &mut out)
            });
            scalar("min_max", st, &bo, rust, &[]);
            if st == OK {
                assert!(
                    bb.store[..n].iter().zip(&out).all(|(&x, &y)| same(x, y)),
                    "min_max bandwidths"
                );
            } else {
                assert!(bb.untouched(), "min_max wrote its output on error");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mode) = byte(&mut u) else { return };
    let f32 = mode & 2 != 0;
    if mode & 1 == 0 {
        let Ok(inp) = u.arbitrary::<SelectInput>() else {
            return;
        };
        let _ = if f32 {
            run_select::<f32>(&mut u, &inp)
        } else {
            run_select::<f64>(&mut u, &inp)
        };
    } else {
        let mut h = [0u8; 5];
        for x in &mut h {
            *x = byte(&mut u).unwrap_or(0);
        }
        let Ok(inp) = u.arbitrary::<LinkInput>() else {
            return;
        };
        if f32 {
            run_link::<f32>(h, &inp)
        } else {
            run_link::<f64>(h, &inp)
        }
    }
});
