//! Expert-parallel MoE over several GPUs (the paper's system: the base
//! station on rank 0, devices on ranks `1..world`, one process per GPU).
//!
//! * [`placement`]: which rank hosts which expert, validated;
//! * [`plan`]: per step, which rows go where, the header each device rank
//!   receives first (counts, so receives have the right sizes), and the
//!   emulated link airtimes (eq. 6's link terms through wdmoe-core);
//! * with feature `nccl`: the executor (`DistMoe` on the BS,
//!   `DeviceRank` on devices) and the GPU-side airtime hold
//!   (`hold_ns`).
//!
//! A model plugs the BS side in through [`MoeExecutor`]: per layer, the
//! normed hidden states on the BS GPU and wdmoe-core's routing in, the
//! weighted sum of expert outputs (fp32) out. wdmoe-sim's `dist` module
//! launches the ranks (`wdmoe dist`).

pub mod placement;
pub mod plan;

#[cfg(feature = "nccl")]
mod device;
#[cfg(feature = "nccl")]
mod exec;

#[cfg(feature = "nccl")]
pub use device::{DeviceRank, ServeStats};
#[cfg(feature = "nccl")]
pub use exec::{
    hold_ns, layer_seed, random_source, DistMoe, DistStep, ExpertSource, Links, LocalExperts,
};
pub use placement::{Placement, PlacementError, BS_RANK};
pub use plan::{airtime_s, holds_ns, rank_segments, Command, Header, LinkRates, StepPlan};

use cust::memory::DeviceSlice;
use half::f16;

use crate::error::Result;
use crate::runtime::Gpu;

/// A layer's MoE step as a model calls it: `x` (`[n_tokens][m]` fp16, the
/// normed hidden states on `gpu`), `groups` (per expert its (token, combine
/// weight) pairs: `moe::Routing::groups` of wdmoe-core's selection; an
/// empty group is a dropped or unselected expert) → `acc` (`[n_tokens][m]`
/// fp32 on `gpu`, overwritten with `Σ_q w_q · y_q`). `acc` is ready when
/// `step` returns.
pub trait MoeExecutor {
    /// One layer's step.
    fn step(
        &mut self,
        gpu: &Gpu,
        layer: usize,
        x: &DeviceSlice<f16>,
        n_tokens: usize,
        groups: &[Vec<(usize, f32)>],
        acc: &mut DeviceSlice<f32>,
    ) -> Result<()>;
}
