//! The C-ABI measurements: the static library (built by ../staticlib.sh for
//! this target, only `wdmoe_*` symbols global) called through declarations
//! that mirror include/wdmoe.h, as C firmware calls it.

use core::hint::black_box;
use core::mem::MaybeUninit;

use crate::cases::{devices, model, LATENCY_S, LOGITS};
use crate::Harness;

#[repr(C)]
pub struct SelectionF32 {
    n_experts: u32,
    n_dropped: u32,
    experts: [u32; 256],
    dropped: [u32; 256],
    weights: [f32; 256],
    kappa: f32,
    has_kappa: u8,
    fallback: u8,
}

#[cfg(not(feature = "legacy"))]
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct SelectionInfoF32 {
    n_experts: u16,
    n_dropped: u16,
    kappa: f32,
    has_kappa: u8,
    fallback: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct LatencyModelF32 {
    payload_bits: f32,
    flops_per_token: f32,
    n0_w_per_hz: f32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceLinkF32 {
    tx_power_down_w: f32,
    gain_down: f32,
    tx_power_up_w: f32,
    gain_up: f32,
    compute_flops_per_s: f32,
}

extern "C" {
    fn wdmoe_select_f32(
        logits: *const f32,
        latency_s: *const f32,
        n: usize,
        k: usize,
        theta: f32,
        max_drops: usize,
        out: *mut SelectionF32,
    ) -> i32;
    #[cfg(not(feature = "legacy"))]
    fn wdmoe_select_into_f32(
        logits: *const f32,
        latency_s: *const f32,
        n: u16,
        k: u16,
        theta: f32,
        max_drops: u16,
        scratch_probs: *mut f32,
        out_experts: *mut u16,
        out_weights: *mut f32,
        out_dropped: *mut u16,
        out_info: *mut SelectionInfoF32,
    ) -> i32;
    fn wdmoe_min_max_bandwidth_hz_f32(
        model: *const LatencyModelF32,
        devices: *const DeviceLinkF32,
        n: usize,
        total_bandwidth_hz: f32,
        out_bandwidth_hz: *mut f32,
        out_max_latency_s: *mut f32,
    ) -> i32;
    fn wdmoe_uma_path_loss_db_f32(
        bs_height_m: f32,
        ut_height_m: f32,
        f_ghz: f32,
        distance_2d_m: f32,
        los: i32,
        out_db: *mut f32,
    ) -> i32;
    fn wdmoe_channel_power_gain_f32(path_loss_db: f32, fading_power: f32, out: *mut f32) -> i32;
    fn wdmoe_device_latency_s_f32(
        model: *const LatencyModelF32,
        device: *const DeviceLinkF32,
        bandwidth_hz: f32,
        out_s: *mut f32,
    ) -> i32;
    #[cfg(not(feature = "legacy"))]
    fn wdmoe_abi_version() -> u32;
}

/// The selection struct, in static memory as firmware keeps it (3 KiB).
static mut SELECTION: MaybeUninit<SelectionF32> = MaybeUninit::zeroed();

pub fn run(h: &mut Harness) {
    // SAFETY: a plain function of the library.
    #[cfg(not(feature = "legacy"))]
    h.check(unsafe { wdmoe_abi_version() } == 2, "c abi version 2");

    let out = &raw mut SELECTION;
    let mut st = -1;
    h.measure("c", "select", 8, &mut || {
        // SAFETY: 8 readable floats each; one writable selection.
        st = unsafe {
            wdmoe_select_f32(
                black_box(LOGITS.as_ptr()),
                black_box(LATENCY_S.as_ptr()),
                8,
                2,
                0.2,
                1,
                out.cast(),
            )
        };
    });
    // SAFETY: written by the successful call.
    let s = unsafe { (*out).assume_init_ref() };
    h.check(
        st == 0 && s.n_experts == 1 && s.experts[0] == 1 && s.n_dropped == 1 && s.dropped[0] == 4,
        "c select: experts [1], dropped [4]",
    );

    #[cfg(not(feature = "legacy"))]
    select_into(h);

    link_and_bandwidth(h);
}

#[cfg(not(feature = "legacy"))]
fn select_into(h: &mut Harness) {
    let mut st = -1;
    let (mut p, mut e, mut w, mut d) = ([0.0_f32; 8], [0u16; 2], [0.0_f32; 2], [0u16; 2]);
    let mut info = SelectionInfoF32::default();
    h.measure("c", "select_into", 8, &mut || {
        // SAFETY: n = 8 floats in, 8 scratch, k = 2 outputs each, one info.
        st = unsafe {
            wdmoe_select_into_f32(
                black_box(LOGITS.as_ptr()),
                black_box(LATENCY_S.as_ptr()),
                8,
                2,
                0.2,
                1,
                p.as_mut_ptr(),
                e.as_mut_ptr(),
                w.as_mut_ptr(),
                d.as_mut_ptr(),
                &mut info,
            )
        };
    });
    h.check(
        st == 0 && info.n_experts == 1 && e[0] == 1 && info.n_dropped == 1 && d[0] == 4,
        "c select_into: experts [1], dropped [4]",
    );
}

fn link_and_bandwidth(h: &mut Harness) {
    let mut st = -1;

    // Link budget of 8 devices through the C ABI.
    let m = model();
    let mc = LatencyModelF32 {
        payload_bits: m.payload_bits(),
        flops_per_token: m.flops_per_token(),
        n0_w_per_hz: m.n0_w_per_hz(),
    };
    let d_m = [60.0_f32, 90.0, 120.0, 150.0, 200.0, 260.0, 330.0, 400.0];
    let mut lat = [0.0_f32; 8];
    h.measure("c", "link_budget", 8, &mut || {
        st = 0;
        for (o, &dist) in lat.iter_mut().zip(black_box(&d_m)) {
            let (mut pl, mut g) = (0.0_f32, 0.0_f32);
            // SAFETY: one writable float each; the structs are readable.
            unsafe {
                st |= wdmoe_uma_path_loss_db_f32(25.0, 1.5, 3.5, dist, 0, &mut pl);
                st |= wdmoe_channel_power_gain_f32(pl, 1.0, &mut g);
                let dev = DeviceLinkF32 {
                    tx_power_down_w: 10.0,
                    gain_down: g,
                    tx_power_up_w: 0.2,
                    gain_up: g,
                    compute_flops_per_s: 2e12,
                };
                st |= wdmoe_device_latency_s_f32(&mc, &dev, 12.5e6, o);
            }
        }
    });
    h.check(
        st == 0 && lat.windows(2).all(|x| x[0] < x[1]),
        "c link_budget: latencies grow with distance",
    );

    let devs = devices().map(|d| DeviceLinkF32 {
        tx_power_down_w: d.tx_power_down_w(),
        gain_down: d.gain_down(),
        tx_power_up_w: d.tx_power_up_w(),
        gain_up: d.gain_up(),
        compute_flops_per_s: d.compute_flops_per_s(),
    });
    for n in [2usize, 8] {
        let mut b = [0.0_f32; 8];
        let mut worst = 0.0_f32;
        h.measure("c", "min_max", n, &mut || {
            // SAFETY: n devices and n writable floats.
            st = unsafe {
                wdmoe_min_max_bandwidth_hz_f32(
                    &mc,
                    black_box(devs.as_ptr()),
                    n,
                    100e6,
                    b.as_mut_ptr(),
                    &mut worst,
                )
            };
        });
        let sum: f32 = b[..n].iter().sum();
        h.check(
            st == 0 && (sum / 100e6 - 1.0).abs() < 1e-5 && worst > 0.0,
            "c min_max: total handed out",
        );
    }
}
