//! The Rust-API measurements: one token's decisions at a base station, in
//! `f32`, with asserted results.

use core::hint::black_box;

use wdmoe_core::bandwidth;
use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::link::{self, Uma};
use wdmoe_core::select::{self, Policy};

use crate::Harness;

/// The policy as firmware holds it: validated at compile time.
#[cfg(not(feature = "legacy"))]
pub static POLICY: Policy<f32> = match Policy::<f32>::const_new(2, 0.2, 1) {
    Ok(p) => p,
    Err(_) => panic!("bad policy"),
};

/// The policy (the legacy API has no `const fn`: built per call there).
#[inline(always)]
fn policy() -> Policy<f32> {
    #[cfg(not(feature = "legacy"))]
    return POLICY;
    #[cfg(feature = "legacy")]
    Policy::new(2, 0.2, 1).unwrap_or_else(|_| panic!("policy"))
}

/// Router logits of 8 experts: 1 and 4 have the top weights.
pub const LOGITS: [f32; 8] = [0.1, 2.0, -0.3, 0.4, 1.9, -1.0, 0.0, 0.2];
/// Per-expert latencies [s]: device 4 is 50x slower than the others, so its
/// WLR is poor (κ = (e^-0.1/50)/(1 + e^-0.1/50) = 0.0178 ≤ 0.2) and it is
/// dropped; expert 1 serves alone.
pub const LATENCY_S: [f32; 8] = [1e-3, 1e-3, 1e-3, 1e-3, 5e-2, 1e-3, 1e-3, 1e-3];

/// The latency model of the paper's Mixtral experts, N0 with a 7 dB noise figure.
pub fn model() -> LatencyModel<f32> {
    let shape = ExpertShape::MIXTRAL_8X7B;
    let n0 = link::noise_psd_w_per_hz(-174.0_f32, 7.0).unwrap_or(1e-20);
    LatencyModel::new(
        shape.payload_bits(16.0_f32).unwrap_or(0.0),
        shape.flops_per_token(4.0).unwrap_or(0.0),
        n0,
    )
    .unwrap_or_else(|_| panic!("model"))
}

/// Eight devices from 60 m to 400 m (free-space gains, one in a fade).
pub fn devices() -> [DeviceLink<f32>; 8] {
    let d_m = [60.0_f32, 90.0, 120.0, 150.0, 200.0, 260.0, 330.0, 400.0];
    let fading = [1.0_f32, 0.4, 1.7, 0.9, 0.02, 1.2, 0.8, 2.1];
    let mut out = [DeviceLink::new(1.0, 1.0, 1.0, 1.0, 1.0).unwrap_or_else(|_| panic!()); 8];
    for q in 0..8 {
        let pl = link::free_space_path_loss_db(3.5, d_m[q]).unwrap_or(0.0);
        let g = link::channel_power_gain(pl, fading[q]).unwrap_or(0.0);
        out[q] = DeviceLink::new(10.0, g, 0.2, g, 2e12).unwrap_or_else(|_| panic!());
    }
    out
}

/// The largest latency of the even split of `total_hz`.
fn even_worst(m: &LatencyModel<f32>, devs: &[DeviceLink<f32>], total_hz: f32) -> f32 {
    let share = total_hz / devs.len() as f32;
    devs.iter()
        .map(|d| m.expert_latency_s(d, share).unwrap_or(f32::INFINITY))
        .fold(0.0, f32::max)
}

/// One device's link budget per token: UMa NLOS path loss, gain with the
/// reported fading, eq. (6) latency over 12.5 MHz.
#[inline(never)]
fn link_budget(m: &LatencyModel<f32>, uma: &Uma<f32>, d_m: &[f32; 8], out: &mut [f32; 8]) -> bool {
    let mut ok = true;
    for (o, &d) in out.iter_mut().zip(d_m) {
        let r = uma
            .path_loss_db(3.5, d, false)
            .and_then(|pl| link::channel_power_gain(pl, 1.0))
            .and_then(|g| DeviceLink::new(10.0, g, 0.2, g, 2e12))
            .and_then(|dev| m.expert_latency_s(&dev, 12.5e6));
        match r {
            Ok(t) => *o = t,
            Err(_) => ok = false,
        }
    }
    ok
}

pub fn rust(h: &mut Harness) {
    // select::<f32, 8>
    let mut experts = [0usize; 2];
    let mut n_exp = 0;
    let policy = policy();
    h.measure("rust", "select", 8, &mut || match select::select::<f32, 8>(
        &policy,
        black_box(&LOGITS),
        black_box(&LATENCY_S),
    ) {
        Ok(s) => {
            n_exp = s.experts().len();
            experts[0] = s.experts()[0];
            experts[1] = s.dropped().first().copied().unwrap_or(99);
        }
        Err(_) => n_exp = 0,
    });
    h.check(
        n_exp == 1 && experts == [1, 4],
        "rust select: experts [1], dropped [4]",
    );

    // select_into, caller memory, u16 indices
    #[cfg(not(feature = "legacy"))]
    select_into(h);

    link_and_bandwidth(h);
}

#[cfg(not(feature = "legacy"))]
fn select_into(h: &mut Harness) {
    let (mut p, mut e, mut w, mut d) = ([0.0_f32; 8], [0u16; 2], [0.0_f32; 2], [0u16; 2]);
    let mut info = None;
    h.measure("rust", "select_into", 8, &mut || {
        info = select::select_into(
            &POLICY,
            black_box(&LOGITS),
            black_box(&LATENCY_S),
            &mut p,
            &mut e,
            &mut w,
            &mut d,
        )
        .ok();
    });
    h.check(
        info.is_some_and(|i| i.n_experts == 1 && i.n_dropped == 1)
            && e[0] == 1
            && d[0] == 4
            && w[0] == 1.0,
        "rust select_into: experts [1], dropped [4], weight 1",
    );
}

fn link_and_bandwidth(h: &mut Harness) {
    // Link budget of 8 devices (UMa NLOS)
    let m = model();
    let uma = Uma::new(25.0_f32, 1.5).unwrap_or_else(|_| panic!());
    let d_m = [60.0_f32, 90.0, 120.0, 150.0, 200.0, 260.0, 330.0, 400.0];
    let mut lat = [0.0_f32; 8];
    let mut ok = false;
    h.measure("rust", "link_budget", 8, &mut || {
        ok = link_budget(black_box(&m), &uma, black_box(&d_m), &mut lat);
    });
    h.check(
        ok && lat.windows(2).all(|x| x[0] < x[1]) && lat[0] > 1.76e-4 && lat[7] < 1.0,
        "rust link_budget: latencies grow with distance, above the compute time",
    );

    // min–max bandwidth, 2 and 8 devices, 100 MHz
    let devs = devices();
    for n in [2usize, 8] {
        let mut b = [0.0_f32; 8];
        let mut worst = f32::NAN;
        h.measure("rust", "min_max", n, &mut || {
            worst = bandwidth::min_max(&m, black_box(&devs[..n]), 100e6, &mut b[..n])
                .unwrap_or(f32::NAN);
        });
        let sum: f32 = b[..n].iter().sum();
        h.check(
            worst <= even_worst(&m, &devs[..n], 100e6) && (sum / 100e6 - 1.0).abs() < 1e-5,
            "rust min_max: total handed out, never worse than the even split",
        );
    }
}

/// Links only `select_into` and the latency model (no formatting, no
/// panic message), for the flash size; `true` when both succeed.
#[cfg(feature = "size-probe")]
pub fn size_probe() -> bool {
    let (mut p, mut e, mut w, mut d) = ([0.0_f32; 8], [0u16; 2], [0.0_f32; 2], [0u16; 2]);
    let r = select::select_into(
        &POLICY,
        black_box(&LOGITS),
        black_box(&LATENCY_S),
        &mut p,
        &mut e,
        &mut w,
        &mut d,
    );
    let m = LatencyModel::new(black_box(65_536.0_f32), 352_393_216.0, 1e-20);
    let dev = DeviceLink::new(10.0_f32, black_box(1e-9), 0.2, 1e-9, 2e12);
    let t = match (m, dev) {
        (Ok(m), Ok(dev)) => m.expert_latency_s(&dev, black_box(12.5e6)).is_ok(),
        _ => false,
    };
    r.is_ok() && t
}
