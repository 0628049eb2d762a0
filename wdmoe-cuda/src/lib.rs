//! # wdmoe-cuda
//!
//! CUDA runtime and fp16 kernels for the WDMoE expert FFN
//! `y = W2 · (silu(W1·x) ⊙ (W3·x))` (Mixtral: m = 4096, m_h = 14336) and the
//! MoE router, built on [`cust`] 0.3.2.
//!
//! Layers (as cudarc explains them):
//! 1. raw driver calls: `cust_raw` (CUDA 11.4 bindings, via cust) and
//!    [`sys`] (newer calls declared by hand: `cuLaunchKernelEx`,
//!    `cuTensorMapEncodeTiled`);
//! 2. result wrappers: cust's `CudaResult`, mapped to this crate's typed
//!    [`Error`] with the operation/kernel and shapes attached;
//! 3. the safe API here: [`Gpu`], [`ExpertWeights`], [`ffn_decode`],
//!    [`ffn_decode_combine`], [`Router`]; for prefill (tensor cores, sm_90a)
//!    [`PrefillWeights`], [`ffn_prefill`], [`ffn_grouped`] and [`ExpertFfn`]
//!    (picks the decode or prefill kernels by token count); the whole MoE
//!    layer step in [`moe::MoeLayer`] (takes wdmoe-core's `Policy`). Each
//!    kernel launch (and each raw driver call cust lacks) is the only
//!    `unsafe` in its function, with a `// SAFETY:` comment; shapes,
//!    alignment and device presence are checked before launching. Launches
//!    are typed: each kernel's parameters are one `#[repr(C)]` struct
//!    (`kernel_params!`), passed by value through the one launch function,
//!    function handles looked up once.
//!
//! Kernels live in `kernels/*.cu`, compiled by build.rs with nvcc to an
//! sm_90a cubin (loaded on compute capability 9.0) and compute_80 PTX (other
//! GPUs >= sm_80), and embedded ([`ptx`]).
//!
//! Feature `nccl`: NCCL point-to-point calls (module `nccl`) and the
//! expert-parallel executor of [`dist`] (experts on several GPUs).
//!
//! Building needs nvcc and a libcuda to link; on a machine with no GPU, see
//! `stub/make-stub.sh` and `.ci/cuda.sh`. GPU tests are `#[ignore]`d and run
//! with `--include-ignored` on a GPU machine (`wdmoe-cuda/gpu-build.sh`).
#![warn(missing_docs)]

pub mod dist;
mod env;
pub mod error;
pub mod ffn;
mod launch;
pub mod model;
pub mod moe;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod plan;
pub mod prefill;
pub mod ptx;
pub mod router;
pub mod runtime;
pub mod sys;

pub use cust;
pub use cust::memory::{DeviceBuffer, DeviceSlice};
pub use error::{Error, Result};
pub use ffn::{
    ffn_decode, ffn_decode_combine, ffn_decode_slot, ffn_decode_slots, ffn_stage,
    gate_up_prefetch_ranges, slots_merge, DecodeConfig, DownLayout, ExpertWeights, FfnWorkspace,
    KernelConfig, PackedMatrix, RoutingPlan, Stage,
};
pub use half::f16;
#[doc(hidden)]
pub use plan::policy_probe;
pub use plan::{DevicePlan, PlanPolicy, PlanReport, PlannedSlot, MAX_PLAN_TOKENS, MAX_SLOTS};
pub use prefill::{
    combine_rows, combine_rows_f32, ffn_grouped, ffn_grouped_device, ffn_packed_grouped,
    ffn_prefill, gather_rows, prefers_prefill, ExpertFfn, GemmConfig, PrefillConfig,
    PrefillWeights, PrefillWorkspace, PREFILL_MIN_TOKENS,
};
pub use router::{f32_to_f16, PrefetchTable, Router};
pub use runtime::{elapsed_ms, DeviceInfo, Gpu};
