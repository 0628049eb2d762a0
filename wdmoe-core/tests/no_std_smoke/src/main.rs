//! Bare-metal smoke test of wdmoe-core: `#![no_std]`, `#![no_main]`,
//! `panic = "abort"`, its own panic handler and **no global allocator**. If
//! wdmoe-core (or a dependency) used `std` or `alloc`, this would not link.
//!
//! Two entry points, one program:
//! - hosted Linux (`x86_64-unknown-linux-gnu`, always built by check.sh):
//!   a C `main` called by the C runtime (libc supplies only `memcpy` & co.);
//!   the exit status is 0 when every check passes, else the failing check's
//!   number, so check.sh also *runs* it;
//! - bare metal (`thumbv7em-none-eabihf`, built when that target is
//!   installed): `_start`, which spins forever after the checks (no OS to
//!   return to); there the proof is that it links. It has no vector table
//!   and is not meant to run: the bare-metal program that runs, on QEMU
//!   for Cortex-M4F and RV32IMAC, is `wdmoe-core/firmware` (FIRMWARE.md).
//!
//! Inputs go through `black_box`, so the optimiser cannot fold the policy
//! away: the linked binary really contains `select`, `top_k` and the models.
#![no_std]
#![no_main]

use core::hint::black_box;

use wdmoe_core::compute::ExpertShape;
use wdmoe_core::latency::{self, DeviceLink, LatencyModel};
use wdmoe_core::link::{self, Uma, UmiStreetCanyon};
use wdmoe_core::select::{self, Policy};
use wdmoe_core::{bandwidth, Error};

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

fn close(got: f32, want: f32, rel: f32) -> bool {
    let d = got - want;
    let d = if d < 0.0 { -d } else { d };
    let w = if want < 0.0 { -want } else { want };
    d <= rel * w
}

/// Every check in `f32`; `Ok(0)` when all pass, else the first failing check's number.
fn run() -> Result<i32, Error> {
    const N: usize = 8;
    let mut check = 0;
    macro_rules! ensure {
        ($c:expr) => {
            check += 1;
            if !$c {
                return Ok(check);
            }
        };
    }

    // Algorithm 1 (the select() doctest): p1/p0 = e^0.5, WLR1/WLR0 = 1.6487/10,
    // κ = 0.16487/1.16487 = 0.14154 ≤ 0.2 → expert 1 is dropped.
    let policy = Policy::new(2, black_box(0.2_f32), 1)?;
    let logits = black_box([0.5_f32, 1.0, -2.0, 0.0]);
    let lat = black_box([0.010_f32, 0.100, 0.010, 0.010]);
    let s = select::select::<f32, N>(&policy, &logits, &lat)?;
    ensure!(s.experts() == [0]);
    ensure!(s.dropped() == [1]);
    ensure!(s.weights() == [1.0]);
    ensure!(close(s.kappa().unwrap_or(-1.0), 0.141_536_67, 1e-5));
    ensure!(s.token_latency_s(&lat)? == 0.010);

    // Unreachable top-2 devices: fallback to expert 2.
    let s = select::select::<f32, N>(
        &policy,
        &black_box([2.0_f32, 1.0, 0.0]),
        &black_box([f32::INFINITY, f32::INFINITY, 0.5]),
    )?;
    ensure!(s.experts() == [2] && s.fallback());
    // Bad input is an error, not a panic.
    ensure!(
        select::select::<f32, N>(&policy, &[0.0; 3], &[f32::INFINITY; 3])
            == Err(Error::NoReachableExpert)
    );
    ensure!(
        select::select::<f32, 2>(&policy, &[0.0; 3], &[1.0; 3]) == Err(Error::CapacityExceeded)
    );

    // Plain top-k: w0 = 1/(1 + e^-1) = 0.7310586.
    let s = select::top_k::<f32, N>(&black_box([0.0_f32, 2.0, 1.0, -1.0]), 2)?;
    ensure!(s.experts() == [1, 2]);
    ensure!(close(s.weights()[0], 0.731_058_6, 1e-5));
    // κ = (0.4/0.8) / (0.4/0.8 + 0.6/0.2) = 0.5 / 3.5 = 1/7.
    ensure!(close(
        select::kappa(&[0.6_f32, 0.4], &[0.2, 0.8])?,
        1.0 / 7.0,
        1e-5
    ));

    // Link: 3.5 GHz, 100 m: 32.4 + 10.88136 + 40 = 83.28136 dB.
    let pl = link::free_space_path_loss_db(black_box(3.5_f32), black_box(100.0))?;
    ensure!(close(pl, 83.281_36, 1e-5));
    let uma = Uma::new(25.0_f32, 1.5)?;
    ensure!(uma.path_loss_db(3.5, 100.0, false)? > uma.path_loss_db(3.5, 100.0, true)?);
    ensure!(close(uma.los_probability(200.0)?, 0.128_047_73, 1e-4));
    let umi = UmiStreetCanyon::new(10.0_f32, 1.5)?;
    ensure!(close(umi.los_probability(100.0)?, 0.230_984_75, 1e-4));
    // SNR 1000 → 1e6·log2(1001) = 9,967,226 bit/s.
    let r = link::shannon_rate_bps(black_box(1e6_f32), 1e-3, 1e-9, 1e-21)?;
    ensure!(close(r, 9_967_226.0, 1e-5));

    // Compute and latency: Mixtral 352,393,216 FLOP (exact in f32), 65,536 bit.
    let shape = ExpertShape::MIXTRAL_8X7B;
    ensure!(shape.flops_per_token(4.0_f32)? == 352_393_216.0);
    ensure!(shape.payload_bits(16.0_f32)? == 65_536.0);
    // 65,536/100e6 + 352,393,216/1e12 + 65,536/10e6 = 7.561353216 ms.
    let t = latency::expert_latency_s(65_536.0_f32, 352_393_216.0, 100e6, 1e12, 10e6)?;
    ensure!(close(t, 7.561_353e-3, 1e-5));
    ensure!(
        latency::batched_layer_latency_s(&[3, 1, 0], &[1e-3_f32, 2.5e-3, f32::INFINITY])? == 3e-3
    );
    ensure!(latency::sequential_prompt_latency_s(&[0.25_f32, 0.5, 0.125])? == 0.875);

    // A device-level model and the min–max bandwidth split.
    let model = LatencyModel::new(
        shape.payload_bits(16.0_f32)?,
        shape.flops_per_token(4.0)?,
        link::noise_psd_w_per_hz(-174.0, 7.0)?,
    )?;
    let g_near = link::channel_power_gain(link::free_space_path_loss_db(3.5, 50.0)?, 1.0)?;
    let g_far = link::channel_power_gain(link::free_space_path_loss_db(3.5, 400.0)?, 0.3)?;
    let devs = [
        DeviceLink::new(10.0_f32, g_near, 0.2, g_near, 2e12)?,
        DeviceLink::new(10.0, g_far, 0.2, g_far, 2e12)?,
    ];
    let mut even = [0.0_f32; 2];
    bandwidth::even_split(25e6, &mut even)?;
    let even_worst = model
        .expert_latency_s(&devs[0], even[0])?
        .max(model.expert_latency_s(&devs[1], even[1])?);
    let mut b = [0.0_f32; 2];
    let worst = bandwidth::min_max(&model, &devs, black_box(25e6), &mut b)?;
    ensure!(b[1] > b[0]);
    ensure!(worst <= even_worst);
    ensure!(close(b[0] + b[1], 25e6, 1e-5));
    Ok(0)
}

fn exit_code() -> i32 {
    match run() {
        Ok(code) => code,
        Err(_) => 100,
    }
}

// Hosted entry: the C runtime calls `main`; libc is linked only for the C
// runtime and `memcpy`/`memset` (no allocator is referenced: check.sh).
#[cfg(not(target_os = "none"))]
#[link(name = "c")]
extern "C" {}

#[cfg(not(target_os = "none"))]
#[no_mangle]
pub extern "C" fn main(_argc: core::ffi::c_int, _argv: *const *const u8) -> core::ffi::c_int {
    exit_code()
}

/// Bare-metal entry: nothing to return to.
#[cfg(target_os = "none")]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    black_box(exit_code());
    loop {
        core::hint::spin_loop();
    }
}
