//! Unit tests of the C ABI (run under Miri by .ci/core.sh where installed).

use core::ffi::CStr;
use core::sync::atomic::Ordering;

use super::exports::*;
use super::status::{panic_hook, STATUSES};
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
    let header = include_str!("../../include/wdmoe.h");
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

/// The fuzz oracle (fuzz/fuzz_targets/capi.rs) maps every `Error` variant
/// to the code `status_of` gives it (read at run time: the fuzz crate is
/// not part of this package).
#[test]
#[cfg_attr(miri, ignore)] // reads a file
fn fuzz_oracle_codes_match() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/fuzz_targets/capi.rs");
    let Ok(src) = std::fs::read_to_string(path) else {
        std::println!("skipped: {path} not found (not a workspace checkout)");
        return;
    };
    let p = "x";
    let errors = [
        ("NaN", Error::NaN(p)),
        ("NotPositive", Error::NotPositive(p)),
        ("Negative", Error::Negative(p)),
        ("NotFinite", Error::NotFinite(p)),
        ("LatencyNotPositive", Error::LatencyNotPositive),
        ("KOutOfRange", Error::KOutOfRange),
        ("ThetaOutOfRange", Error::ThetaOutOfRange),
        ("CapacityExceeded", Error::CapacityExceeded),
        ("LengthMismatch", Error::LengthMismatch),
        ("Empty", Error::Empty),
        ("NoReachableExpert", Error::NoReachableExpert),
        ("OutOfRange", Error::OutOfRange(p)),
        ("Infeasible", Error::Infeasible),
    ];
    for (name, e) in errors {
        let arm = [
            std::format!("Error::{name}(_) => "),
            std::format!("Error::{name} => "),
        ];
        let line = src
            .lines()
            .map(str::trim)
            .find(|l| arm.iter().any(|a| l.starts_with(a.as_str())))
            .unwrap_or_else(|| panic!("the fuzz oracle has no arm for Error::{name}"));
        let code: c_int = line
            .rsplit("=> ")
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap();
        assert_eq!(code, status_of(e), "fuzz oracle: {line}");
    }
}

#[test]
fn bad_lengths_and_pointers_are_refused_before_any_read() {
    // A dangling (but aligned, non-null) pointer with an absurd length:
    // the length check must come first, so nothing is dereferenced.
    let dangling = core::ptr::NonNull::<f64>::dangling().as_ptr();
    let mut out = core::mem::MaybeUninit::<SelectionC<f64>>::zeroed();
    let code =
        unsafe { wdmoe_select_f64(dangling, dangling, usize::MAX, 2, 0.2, 1, out.as_mut_ptr()) };
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
        wdmoe_batched_layer_latency_s_f32([3, 1].as_ptr(), [1e-3_f32, 2.5e-3].as_ptr(), 2, &mut t)
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
    let code = unsafe { wdmoe_select_f64(z.as_ptr(), t.as_ptr(), 4, 2, 0.2, 1, out.as_mut_ptr()) };
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
    let code = unsafe { wdmoe_select_f32(z.as_ptr(), t.as_ptr(), 4, 0, 0.2, 1, out.as_mut_ptr()) };
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
