//! The GPU MoE step, owned here: [`MoeLayer`] holds a layer's router,
//! packed experts (decode and, on compute capability 9.0, grouped prefill
//! layouts) and buffers, takes wdmoe-core's [`Policy`] per step, and owns
//! the choice of path, the grouping and encodings ([`encode`]), the check of
//! a device-built plan against wdmoe-core and the re-run. wdmoe-sim's
//! `layer::gpu::GpuLayer` is a thin caller (f32 weights and accounting).
//!
//! A step (router GEMV + softmax on the GPU, then wdmoe-core's policy per
//! token) runs one of:
//! * device-planned decode (up to [`MoeLayer::set_device_policy_tokens`]
//!   tokens, 1 by default): the router kernel runs a bit-identical port of
//!   wdmoe-core's `select` and writes the expert plan; the slot kernels read
//!   it; the host checks the plan against wdmoe-core after the step and
//!   re-runs the experts with wdmoe-core's plan on any difference;
//! * host policy, decode (up to [`PREFILL_MIN_TOKENS`](crate::prefill::PREFILL_MIN_TOKENS) tokens, or no
//!   sm_90a): the logits copied to the host (the one synchronisation), the
//!   policy there, then per expert the fused decode kernels, tokens passed
//!   by value, the weighted combine in the W2 kernel's epilogue (fp32
//!   accumulator) ([`host`]);
//! * host policy, grouped prefill (more tokens, compute capability 9.0):
//!   the token rows gathered in expert order, all experts' FFNs in one
//!   grouped tensor-core launch per GEMM, a weighted combine back to token
//!   order ([`grouped`]); the GEMMs read the stacked prefill layout where
//!   the layer holds it, else the decode packing itself
//!   ([`crate::prefill::ffn_packed_grouped`]: one copy of the weights);
//! * device-routed grouped prefill ([`MoeLayer::set_device_routing`]):
//!   the policy on the GPU for every token, the per-expert token lists by a
//!   counting sort on the GPU, the grouped GEMMs reading the group sizes
//!   from device memory; no host round trip inside the step; wdmoe-core
//!   checks the selections after it ([`device_route`]).
//!
//! Timed with CUDA events.

use std::sync::Arc;

use cust::event::Event;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceSlice, LockedBuffer};
use half::f16;
use wdmoe_core::select::Policy;

use crate::error::{shape, Error, Result};
use crate::ffn::{DecodeConfig, ExpertWeights, FfnWorkspace, RoutingPlan};
use crate::plan::{DevicePlan, PlanPolicy, MAX_PLAN_TOKENS, MAX_SLOTS};
use crate::prefill::{prefers_prefill, DeferredCombine};
use crate::router::{PrefetchTable, Router};
use crate::runtime::Gpu;

mod build;
pub mod device_route;
mod device_step;
pub mod encode;
pub mod grouped;
pub mod host;
mod planned;

pub use build::{random_expert, random_router, RawExpert};
use device_step::DeviceRouting;
pub use encode::{
    latencies_for, route_tokens, same_plan, Groups, Routing, RowTables, TokenSelection,
};
pub use grouped::GroupedPrefill;
pub use host::run_host_plan;

/// Most experts of a [`MoeLayer`].
pub const MAX_EXPERTS: usize = MAX_SLOTS;

/// What one [`MoeLayer::step`] computed (the output stays on the GPU:
/// [`MoeLayer::output`]).
#[derive(Debug, Clone)]
pub struct MoeStep {
    /// Router logits `[tokens][experts]` (fp32, as the policy saw them).
    pub logits: Vec<f32>,
    /// Router probabilities `[tokens][experts]` (fp32 softmax, widened).
    pub probs: Vec<f64>,
    /// wdmoe-core's routing on the step's logits (what ran).
    pub routing: Routing,
    /// Per expert, the time of its FFN in seconds (CUDA events; 0 when it
    /// served no token, when expert timing is off, or on the device-planned
    /// path when step timing is off; on the grouped path one
    /// launch for all, shared out in proportion to tokens).
    pub expert_time_s: Vec<f64>,
    /// The whole step, router to combine, in seconds (CUDA events; the
    /// host policy and a re-run included); 0 for a device-planned step
    /// while step timing is off ([`MoeLayer::set_step_timing`]).
    pub time_s: f64,
    /// The step's output was replaced after kernels enqueued behind it may
    /// have read the first one: a device-planned step whose plan differed
    /// from wdmoe-core's, re-run by [`MoeLayer::complete`] (synchronous
    /// paths re-run before returning and leave this false).
    pub rerun: bool,
}

/// A step enqueued without waiting for the GPU, to be completed (checked).
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// Device-planned decode step of this many tokens.
    Planned(usize),
    /// Device-routed grouped step of this many tokens.
    Routed(usize),
}

/// A MoE layer resident on one GPU: router, packed fp16 experts, buffers for
/// up to `max_tokens` tokens per step.
pub struct MoeLayer {
    router: Router,
    experts: Vec<ExpertWeights>,
    ws: FfnWorkspace,
    cfg: DecodeConfig,
    x: DeviceBuffer<f16>,
    probs: DeviceBuffer<f32>,
    acc: DeviceBuffer<f32>,
    plan: RoutingPlan,
    logits_host: LockedBuffer<f32>,
    prefetch: PrefetchTable,
    events: Vec<Event>,
    prefill: Option<GroupedPrefill>,
    use_prefill: bool,
    expert_timing: bool,
    step_timing: bool,
    merge_slots: bool,
    device: DevicePlan,
    device_policy_tokens: usize,
    mismatches: u64,
    skew_device_policy: bool,
    profile_router: bool,
    route: DeviceRouting,
    m: usize,
    m_h: usize,
    max_tokens: usize,
    /// A device-planned step enqueued by [`MoeLayer::enqueue`] and not yet
    /// checked: its token count.
    pending: Option<Pending>,
    probs_to_host: bool,
    /// Device-routed steps leave their combine to the caller's next kernel
    /// ([`MoeLayer::set_defer_combine`]).
    defer_combine: bool,
    /// The last step's combine, if deferred.
    deferred: Option<DeferredCombine>,
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for MoeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoeLayer")
            .field("m", &self.m)
            .field("m_h", &self.m_h)
            .field("experts", &self.experts.len())
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl MoeLayer {
    /// Whether steps of more than [`PREFILL_MIN_TOKENS`](crate::prefill::PREFILL_MIN_TOKENS) tokens use the
    /// grouped prefill kernels (default true; they exist only on compute
    /// capability 9.0 and for layers built with `max_tokens` above that).
    /// false forces the decode kernels (comparisons, tests).
    pub fn set_prefill(&mut self, on: bool) {
        self.use_prefill = on;
    }

    /// Grouped steps of a layer that holds the stacked prefill layout run
    /// the packed-weights GEMM on the decode packing instead (default
    /// false; a layer without the stacked layout always does). For
    /// comparisons of the two kernels on the same steps.
    pub fn set_prefer_packed_prefill(&mut self, on: bool) {
        if let Some(g) = self.prefill.as_mut() {
            g.prefer_packed = on;
        }
    }

    /// Per-expert CUDA events around each expert's kernels on the decode
    /// path (default true). They cost ~5 µs per step on an H200 (they break
    /// the programmatic-dependent-launch overlap between one expert's down
    /// kernel and the next expert's gate/up); with false, `ExpertStats::time_s`
    /// stays 0 on that path and the step time is what a deployment sees.
    pub fn set_expert_timing(&mut self, on: bool) {
        self.expert_timing = on;
    }

    /// CUDA events around each device-planned or device-routed step
    /// (default true), for [`MoeStep::time_s`] and `expert_time_s`. Off,
    /// nothing but kernels goes into the stream for the step (an event
    /// between two kernels ends their programmatic dependent launch
    /// overlap, ~5 µs each on an H200): `time_s` and the expert times are
    /// then 0; a device-planned step's [`MoeLayer::complete`] waits for
    /// the router kernel's report in host memory instead of an event after
    /// the step, a device-routed one for its downloads (on the copy
    /// stream). The host-routed paths always time their steps.
    pub fn set_step_timing(&mut self, on: bool) {
        self.step_timing = on;
    }

    /// Whether a device-planned step runs its slots in two launches (gate/up
    /// of all, down of all) where [`crate::slots_merge`] allows and expert
    /// timing is off (default true), or two launches per slot (false;
    /// comparisons).
    #[doc(hidden)]
    pub fn set_merge_slots(&mut self, on: bool) {
        self.merge_slots = on;
    }

    /// Steps of 1..=`max_tokens` tokens (at most 16, off the prefill path)
    /// run the selection policy on the GPU; default 1 (single-token decode,
    /// where it saves the host round trip: H200 1-token step 181.7-185.7 µs
    /// vs 186.3-193.2 with the host policy; at 4-16 tokens the slots launched
    /// for experts that get no token cost as much as it saves, see
    /// BENCHMARKS.md); 0 turns it off. The router kernel then also runs a
    /// port of wdmoe-core's `select` (bit-identical f64 arithmetic) and
    /// writes the expert plan, and every kernel of the step is enqueued at
    /// once (no host round trip between router and experts). After the step
    /// the host runs wdmoe-core on the same logits; if its plan differs in
    /// any expert, token or weight bit, the experts are run again with
    /// wdmoe-core's plan (counted by [`MoeLayer::device_policy_mismatches`]),
    /// so results always follow wdmoe-core. Otherwise the policy runs on the
    /// host between router and experts (one synchronisation per step).
    pub fn set_device_policy_tokens(&mut self, max_tokens: usize) {
        self.device_policy_tokens = max_tokens.min(MAX_PLAN_TOKENS);
    }

    /// Whether [`MoeStep::probs`] is filled (default true; a copy from the
    /// GPU per step: the whole-model decode turns it off, its steps report
    /// the logits).
    pub fn set_probs_to_host(&mut self, on: bool) {
        self.probs_to_host = on;
    }

    /// The first `n` router probabilities, widened ([`MoeStep::probs`]; empty
    /// when they are not copied back, [`MoeLayer::set_probs_to_host`]).
    pub(crate) fn probs_host(&self, n: usize) -> Result<Vec<f64>> {
        if !self.probs_to_host {
            return Ok(Vec::new());
        }
        Ok(self
            .gpu
            .download(&self.probs.index(..n))?
            .iter()
            .map(|&v| v as f64)
            .collect())
    }

    /// Steps whose device plan differed from wdmoe-core's and were re-run.
    pub fn device_policy_mismatches(&self) -> u64 {
        self.mismatches
    }

    /// Test hook: the device policy uses top-1 instead of the policy's k,
    /// so that its plan differs from wdmoe-core's (exercises the re-run).
    #[doc(hidden)]
    pub fn skew_device_policy(&mut self, on: bool) {
        self.skew_device_policy = on;
    }

    /// Profiling: device-planned 1-token steps record the router kernel's
    /// phase times ([`MoeLayer::device_plan_stamps_ns`]).
    #[doc(hidden)]
    pub fn set_profile_router(&mut self, on: bool) {
        self.profile_router = on;
    }

    /// Profiling stamps of the last device-planned 1-token step (see
    /// wdmoe-cuda `DevicePlan::stamps_ns`).
    #[doc(hidden)]
    pub fn device_plan_stamps_ns(&self) -> Result<[u64; 7]> {
        self.device.stamps_ns(&self.gpu)
    }

    /// Whether a step of `n_tokens` tokens (with these latencies) takes the
    /// device-planned path (see [`MoeLayer::set_device_policy_tokens`]).
    pub fn uses_device_policy(&self, n_tokens: usize, latency_s: &[f64]) -> bool {
        n_tokens <= self.device_policy_tokens
            && !self.uses_prefill(n_tokens)
            && latency_s.iter().all(|t| *t > 0.0)
    }

    /// Whether a step of `n_tokens` tokens takes the grouped prefill path.
    pub fn uses_prefill(&self, n_tokens: usize) -> bool {
        self.use_prefill && self.prefill.is_some() && prefers_prefill(&self.gpu, n_tokens)
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Launch shapes of the expert kernels.
    pub fn config(&self) -> DecodeConfig {
        self.cfg
    }

    /// Sets the launch shapes of the expert kernels.
    pub fn set_config(&mut self, cfg: DecodeConfig) {
        self.cfg = cfg;
    }

    /// Speculative L2 prefetch (off by default, 0). Host policy: while the
    /// host runs the policy, the router kernel's extra blocks prefetch the
    /// first `bytes` of each of token 0's two highest-logit experts (k-major
    /// packing: the tiles their gate/up kernels read first) into L2. Device
    /// policy: while the router kernel runs the policy, it prefetches
    /// `bytes` of token 0's lowest-index top-k candidate (the expert of
    /// plan slot 0 unless the policy drops it), split over the starts of the
    /// gate/up kernel's warp k ranges. Never changes results.
    pub fn set_prefetch_bytes(&mut self, bytes: usize) {
        self.prefetch.set_bytes(bytes);
    }

    /// Bytes of one expert's weights.
    pub fn expert_bytes(&self) -> usize {
        self.experts.first().map_or(0, |e| e.bytes())
    }

    /// Copies `x` (`[n_tokens][m]` fp16) into the input buffer.
    pub fn set_input(&mut self, x: &[f16], n_tokens: usize) -> Result<()> {
        if n_tokens == 0 || n_tokens > self.max_tokens || x.len() != n_tokens * self.m {
            return Err(shape(
                "MoeLayer::set_input",
                format!(
                    "x has {} values for {n_tokens} tokens (1..={}) of m={}",
                    x.len(),
                    self.max_tokens,
                    self.m
                ),
            ));
        }
        self.x
            .index(..x.len())
            .copy_from(x)
            .map_err(|e| Error::cuda("cuMemcpyHtoD", format!("x: {} values", x.len()), e))
    }

    /// Fills the input buffer with random fp16 values in [-1, 1) (benchmarks).
    pub fn set_random_input(&mut self, seed: u64) -> Result<()> {
        self.gpu.fill_uniform(&mut self.x, seed, 1.0)
    }

    /// Hidden size m.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Expert hidden size m_h.
    pub fn m_h(&self) -> usize {
        self.m_h
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.experts.len()
    }

    /// Most tokens per step.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// One layer step on the tokens in the input buffer; the output stays on
    /// the GPU (see [`MoeLayer::output`]). `out` of the result is empty.
    ///
    /// GPU timeline: router (+ zeroing the accumulator) writing the logits
    /// into page-locked host memory (the one synchronisation) → policy and
    /// grouping on the host → per expert with tokens: gate/up and down
    /// kernels (programmatic dependent launch), tokens and weights passed by
    /// value, the combine in the down kernel's epilogue. `time_s` spans all
    /// of it, host part included.
    pub fn step(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<MoeStep> {
        match self.enqueue(n_tokens, policy, latency_s)? {
            Some(done) => Ok(done),
            None => self.complete(policy, latency_s),
        }
    }

    fn check_step(&self, n_tokens: usize, latency_s: &[f64]) -> Result<()> {
        let e = self.experts.len();
        if self.pending.is_some() {
            return Err(shape(
                "MoeLayer::step",
                "a device-planned or device-routed step is still pending: call complete() first"
                    .into(),
            ));
        }
        if n_tokens == 0 || n_tokens > self.max_tokens {
            return Err(shape(
                "MoeLayer::step",
                format!("n_tokens={n_tokens} (1..={})", self.max_tokens),
            ));
        }
        if latency_s.len() != e && latency_s.len() != n_tokens * e {
            return Err(shape(
                "MoeLayer::step",
                format!(
                    "latency_s has {} values: expected {e} (per expert) or {n_tokens} x {e}",
                    latency_s.len()
                ),
            ));
        }
        Ok(())
    }

    /// Enqueues a step without waiting for the GPU where the policy runs on
    /// the device ([`MoeLayer::uses_device_policy`] or
    /// [`MoeLayer::uses_device_routing`]): returns `None`, and
    /// [`MoeLayer::complete`] (same policy and latencies) must follow before
    /// the next step; kernels later enqueued on the stream may read
    /// [`MoeLayer::output_dev`] in between. Otherwise runs the whole step
    /// (host policy, one synchronisation) and returns it.
    pub fn enqueue(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<Option<MoeStep>> {
        self.check_step(n_tokens, latency_s)?;
        self.deferred = None;
        if self.uses_device_policy(n_tokens, latency_s) {
            self.enqueue_device_planned(n_tokens, policy, latency_s)?;
            self.pending = Some(Pending::Planned(n_tokens));
            return Ok(None);
        }
        if self.uses_device_routing(n_tokens, latency_s) {
            self.enqueue_device_routed(n_tokens, policy, latency_s)?;
            self.pending = Some(Pending::Routed(n_tokens));
            return Ok(None);
        }
        self.step_host(n_tokens, policy, latency_s).map(Some)
    }

    /// Finishes a step enqueued by [`MoeLayer::enqueue`] (synchronises):
    /// wdmoe-core's policy on the step's logits, compared with the device
    /// plan; on any difference the experts run again with wdmoe-core's plan
    /// and [`MoeStep::rerun`] is set (the output is then wdmoe-core's, but
    /// kernels enqueued after the step read the first one).
    pub fn complete(&mut self, policy: &Policy<f64>, latency_s: &[f64]) -> Result<MoeStep> {
        match self.pending.take() {
            Some(Pending::Planned(n)) => self.complete_device_planned(n, policy, latency_s),
            Some(Pending::Routed(n)) => self.complete_device_routed(n, policy, latency_s),
            None => Err(shape(
                "MoeLayer::complete",
                "no device-planned or device-routed step is pending".into(),
            )),
        }
    }

    /// The policy the device runs for `policy`: wdmoe-core's, or top-1 under
    /// [`MoeLayer::skew_device_policy`] (so that it differs).
    pub(crate) fn plan_policy(&self, policy: &Policy<f64>) -> Result<PlanPolicy> {
        if self.skew_device_policy {
            PlanPolicy::new(1, policy.theta(), policy.max_drops())
        } else {
            Ok(PlanPolicy::from(*policy))
        }
    }

    /// Whether a step is pending (enqueued, not yet completed). Its
    /// [`MoeLayer::complete`] waits for that step only (an event recorded
    /// after it), not for the stream, so it may run while later work is
    /// queued.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The input buffer, `[max_tokens][m]` fp16 (kernels of the caller may
    /// write the step's input here on the same stream).
    pub fn input_dev_mut(&mut self) -> &mut DeviceSlice<f16> {
        &mut self.x
    }

    /// The output of the last step on the device, `[max_tokens][m]` fp32
    /// (rows `0..n_tokens` valid after the step's kernels; not written by
    /// a prompt's step whose combine the whole model left to its next norm).
    pub fn output_dev(&self) -> &DeviceSlice<f32> {
        &self.acc
    }

    /// Device-routed steps (prompts) of
    /// [`DEFER_COMBINE_MIN_TOKENS`](device_step::DEFER_COMBINE_MIN_TOKENS)
    /// or more leave their combine, the sum of each token's weighted expert
    /// outputs, to the caller's next kernel
    /// ([`MoeLayer::deferred_combine`]) instead of writing it to
    /// [`MoeLayer::output_dev`] (default off; the model's norm sums it in
    /// the combine's order: the same bits, without the fp32 rows' round
    /// trip through memory). A step whose device plan is re-run on the
    /// host's still writes its output.
    pub(crate) fn set_defer_combine(&mut self, on: bool) {
        self.defer_combine = on;
    }

    /// The last step's deferred combine (`None`: its output is in
    /// [`MoeLayer::output_dev`]).
    pub(crate) fn deferred_combine(&self) -> Option<DeferredCombine> {
        self.deferred
    }

    /// The fp32 output of the last step, `[n_tokens][m]`.
    pub fn output(&self, n_tokens: usize) -> Result<Vec<f32>> {
        if n_tokens > self.max_tokens {
            return Err(shape("MoeLayer::output", format!("n_tokens={n_tokens}")));
        }
        self.gpu.download(&self.acc.index(..n_tokens * self.m))
    }
}
