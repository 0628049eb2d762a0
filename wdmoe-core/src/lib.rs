//! # wdmoe-core
//!
//! The policy of *WDMoE: Wireless Distributed Large Language Models with
//! Mixture of Experts*: a base station runs attention and the router of an
//! MoE model, every expert lives on a mobile device, and for each token the
//! base station drops experts whose weight-to-latency ratio is poor.
//!
//! This crate is `no_std`, allocates nothing and never panics on any input:
//! every fallible function returns [`Error`]. It is small enough to link into
//! base-station firmware, from Rust or from C (feature `capi`, header
//! `include/wdmoe.h`).
//!
//! | module | what | paper |
//! |---|---|---|
//! | [`link`] | dB/dBm conversions, path loss (paper, 3GPP UMa/UMi), noise, Shannon rate | eq. (2), (3) |
//! | [`compute`] | expert FLOPs and payload bits | eq. (4), (5) |
//! | [`latency`] | per expert, per token, per prompt, batched prefill | eq. (6)–(8) |
//! | [`select`] | WLR, κ, Algorithm 1, plain top-k | eq. (9), (10), Alg. 1 |
//! | [`bandwidth`] | even split, min–max allocation | §III, journal version |
//!
//! ## Floats
//! Everything is generic over the sealed trait [`Float`], implemented for
//! `f32` (firmware) and `f64` (simulation) through `libm`. Capacities are
//! const generics: [`select::Selection<F, N>`] holds up to `N` experts on the
//! stack.
//!
//! ## A firmware-style decision loop
//! Per token and MoE layer: estimate each device's latency from its channel
//! report, then let the policy pick the experts. All in `f32`, on the stack.
//!
//! ```
//! use wdmoe_core::{compute::ExpertShape, latency::{DeviceLink, LatencyModel}, link, select};
//!
//! # fn main() -> Result<(), wdmoe_core::Error> {
//! const N: usize = 8;
//! let shape = ExpertShape::MIXTRAL_8X7B;
//! let model = LatencyModel::new(
//!     shape.payload_bits(16.0_f32)?,             // eq. (5): 65,536 bit
//!     shape.flops_per_token(4.0)?,               // eq. (4)
//!     link::noise_psd_w_per_hz(-174.0, 7.0)?,    // N0 with a 7 dB noise figure
//! )?;
//! let policy = select::Policy::new(2, 0.2, 1)?;  // top-2, θ = 0.2, one drop
//!
//! // Channel reports: distance \[m\] and measured fading power |h|² per device.
//! let distance_m = [60.0_f32, 90.0, 120.0, 150.0, 200.0, 260.0, 330.0, 400.0];
//! let fading = [1.0_f32, 0.4, 1.7, 0.9, 0.002, 1.2, 0.8, 2.1];
//! let compute_flops_per_s = 2e12_f32;
//! let mut latency_s = [0.0_f32; N];
//! for q in 0..N {
//!     let pl = link::free_space_path_loss_db(3.5, distance_m[q])?;
//!     let g2 = link::channel_power_gain(pl, fading[q])?;
//!     let dev = DeviceLink::new(10.0, g2, 0.2, g2, compute_flops_per_s)?;
//!     latency_s[q] = model.expert_latency_s(&dev, 12.5e6)?; // eq. (6)
//! }
//!
//! let logits = [0.1_f32, 2.0, -0.3, 0.4, 1.9, -1.0, 0.0, 0.2];
//! let s = select::select::<f32, N>(&policy, &logits, &latency_s)?;
//! // Experts 1 and 4 have the top weights; device 4 sits in a deep fade,
//! // so its weight-to-latency ratio is poor and it is dropped.
//! assert_eq!(s.experts(), &[1]);
//! assert_eq!(s.dropped(), &[4]);
//! assert_eq!(s.weights(), &[1.0]);
//! # Ok(())
//! # }
//! ```
//!
//! ## C ABI (feature `capi`)
//! With the cargo feature `capi` the crate exports `extern "C"` entry points,
//! each in `f32` (`_f32`) and `f64` (`_f64`): the policy (`wdmoe_select_*`,
//! `wdmoe_top_k_*`, `wdmoe_kappa_*`, `wdmoe_wlr_per_s_*`), the link model
//! (dB/dBm conversions, free-space, UMa and UMi path loss and LOS
//! probabilities, channel gain, noise, `wdmoe_shannon_rate_bps_*`), the
//! compute and latency model (`wdmoe_expert_flops_per_token_*`,
//! `wdmoe_payload_bits_*`, `wdmoe_expert_latency_s_*`,
//! `wdmoe_device_latency_s_*`, token, prompt and batched latency) and the
//! bandwidth split (`wdmoe_even_split_bandwidth_hz_*`,
//! `wdmoe_min_max_bandwidth_hz_*`). The hand-written header
//! `include/wdmoe.h` documents every function with units in every name.
//!
//! - Every function returns an `int` status: `WDMOE_OK` (0), or a distinct
//!   negative code per [`Error`] variant, plus `WDMOE_ERR_NULL_POINTER` and
//!   `WDMOE_ERR_MISALIGNED_POINTER`; `wdmoe_status_message` describes each.
//! - Arrays are pointer + length, at most 256 experts per call
//!   (`WDMOE_MAX_EXPERTS`; beyond: `WDMOE_ERR_CAPACITY_EXCEEDED`), working
//!   memory sized by n; `wdmoe_select_into_*` works on caller-sized buffers
//!   only ([`select::select_into`]). Results go to caller-provided
//!   out-structs and arrays, written only on success.
//! - Null and misaligned pointers and bad lengths are errors, checked before
//!   anything is read; inputs are read before outputs are written.
//!   `wdmoe_last_error_param` names the rejected parameter;
//!   `wdmoe_version` / `wdmoe_abi_version` identify the library. The FFI
//!   module is the crate's only unsafe code (the crate is
//!   `forbid(unsafe_code)` without `capi`, `deny` with it).
//!
//! The static library is built, for the host or a firmware target, with
//! `wdmoe-core/staticlib.sh [TARGET]`: `cargo rustc --crate-type staticlib`
//! with panic = abort, fat LTO and `--cfg wdmoe_staticlib`, then reduced to
//! one object whose only global symbols are `wdmoe_*` (its own `memcpy`,
//! `expf`, ... stay local and cannot replace the firmware's C library).
//! Instruction counts, stack use and flash size on a Cortex-M4F and an
//! RV32IMAC core, measured under QEMU: `wdmoe-core/FIRMWARE.md`.
//!
//! A `no_std` static library needs a `#[panic_handler]`; `--cfg
//! wdmoe_staticlib`, given by `cargo rustc` to this crate alone, adds one (it
//! calls the hook set with `wdmoe_set_panic_hook`, then spins; no entry
//! point has a reachable panic call site). It is a `--cfg`, not a cargo feature,
//! on purpose: features are additive, so `cargo test --all-features` would
//! put the handler into the rlib that the `std` test binaries link, and
//! they would fail with a duplicate `panic_impl` lang item. Fat LTO removes
//! the precompiled `core`'s reference to `rust_eh_personality`, so the
//! archive links with a plain `cc ... -lm`. `examples/c/build_and_run.sh`
//! does all of this and runs `examples/c/main.c`, which checks every entry
//! point in both precisions against hand-computed values (CI: `.ci/core.sh`).
//!
//! ## Proof that it is `no_std` and heap-free
//! `#![no_std]` alone proves little (a dependency could still pull in `std`
//! or `alloc`). `tests/no_std_smoke/` is a separate crate, a `#![no_std]`,
//! `#![no_main]` binary with `panic = "abort"`, its own `#[panic_handler]`
//! and no global allocator, that calls [`select::select`],
//! [`select::top_k`], the link, latency and bandwidth functions in `f32`.
//! If anything needed `std` or `alloc` it would not link. Its
//! `check.sh` builds it for the host (where it also runs it: exit status 0
//! means every check passed) and, when the target is installed, for
//! `thumbv7em-none-eabihf` (Cortex-M4F, no OS); it then verifies with `nm`
//! that the binaries contain the policy and no allocator symbol
//! (`__rust_alloc`, `malloc`, ... ). The bare-metal `f32` build of the
//! policy and models is about 12 KiB of code.
//!
//! ## Measured on firmware targets
//! `firmware/` is a bare-metal program with its own vector table and
//! startup code that runs the Rust API and the C static library on QEMU for
//! a Cortex-M4F and an RV32IMAC core, asserts the results and reports
//! instructions and peak stack per entry point (`FIRMWARE.md`; CI:
//! `.ci/firmware.sh`). For 8 experts, `wdmoe_select_f32` takes about 1,900
//! instructions and 0.5 KiB of stack on the Cortex-M4F, the min–max
//! bandwidth split of 8 devices about 57,000 instructions.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(feature = "capi"), forbid(unsafe_code))]
#![cfg_attr(feature = "capi", deny(unsafe_code))]
#![deny(missing_docs)]

pub mod bandwidth;
pub mod compute;
mod error;
#[cfg(feature = "capi")]
#[allow(unsafe_code)]
mod ffi;
mod float;
pub mod latency;
pub mod link;
pub mod select;

pub use error::Error;
pub use float::Float;
