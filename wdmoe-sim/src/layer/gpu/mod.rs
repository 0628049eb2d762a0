//! The MoE layer step on a CUDA GPU (feature `cuda`): a thin caller of
//! wdmoe-cuda's [`MoeLayer`], which owns the GPU step (router, wdmoe-core's
//! policy on the host or its port on the device, the check and re-run,
//! decode or grouped prefill kernels, combine). Here: the f32 weights of
//! [`MoeWeights`] converted to fp16, and the step's result as the
//! [`LayerOutput`] the CPU layer ([`super::cpu::forward`]) returns.
//!
//! Timed with CUDA events.

use wdmoe_core::select::Policy;
use wdmoe_cuda::moe::{MoeLayer, MoeStep};
use wdmoe_cuda::{f16, DecodeConfig, Error as CudaError, Gpu};

use super::{
    check_latencies, ExpertStats, LayerError, LayerOutput, MoeWeights, WeightMatrix, MAX_EXPERTS,
};

impl From<CudaError> for LayerError {
    fn from(e: CudaError) -> Self {
        match e {
            // The policy's own errors stay policy errors (as on the CPU).
            CudaError::Policy(p) => LayerError::Policy(p),
            e => LayerError::Gpu(e),
        }
    }
}

/// A MoE layer resident on one GPU: wdmoe-cuda's [`MoeLayer`] (router,
/// packed fp16 experts, buffers for up to `max_tokens` tokens per step).
#[derive(Debug)]
pub struct GpuLayer {
    inner: MoeLayer,
}

/// Per-expert accounting from the groups and the measured times.
fn stats(groups: &[Vec<(usize, f32)>], m: usize, m_h: usize, times: &[f64]) -> Vec<ExpertStats> {
    groups
        .iter()
        .zip(times)
        .map(|(g, &t)| ExpertStats {
            tokens: g.len(),
            weight_sum: g.iter().map(|&(_, w)| w as f64).sum(),
            flops: (g.len() * 6 * m * m_h) as f64,
            time_s: t,
        })
        .collect()
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.iter().map(|&x| f16::from_f32(x)).collect()
}

/// An expert matrix in fp16 (read from the memory map when mapped).
fn weight_f16(w: &WeightMatrix) -> Vec<f16> {
    w.iter().map(|&x| f16::from_f32(x)).collect()
}

impl GpuLayer {
    /// Uploads `w` (converted to fp16) to `gpu`; steps of up to `max_tokens`.
    /// m and m_h must be multiples of 16.
    pub fn new(gpu: Gpu, w: &MoeWeights, max_tokens: usize) -> Result<GpuLayer, LayerError> {
        w.validate()?;
        let inner = MoeLayer::build(
            gpu,
            &to_f16(&w.router),
            w.n_experts(),
            w.m,
            w.m_h,
            max_tokens,
            |gpu, q| {
                let e = &w.experts[q];
                Ok((
                    gpu.upload(&weight_f16(&e.w1))?,
                    gpu.upload(&weight_f16(&e.w3))?,
                    gpu.upload(&weight_f16(&e.w2))?,
                ))
            },
        )?;
        Ok(GpuLayer { inner })
    }

    /// A layer of random fp16 weights generated on the GPU (uniform, scaled
    /// by 1.7/sqrt(fan-in)), for benchmarks at full Mixtral size.
    pub fn random(
        gpu: Gpu,
        m: usize,
        m_h: usize,
        n_experts: usize,
        max_tokens: usize,
        seed: u64,
    ) -> Result<GpuLayer, LayerError> {
        if n_experts == 0 || n_experts > MAX_EXPERTS {
            return Err(LayerError::Shape(format!("n_experts={n_experts}")));
        }
        let inner = MoeLayer::random(gpu, m, m_h, n_experts, max_tokens, seed)?;
        Ok(GpuLayer { inner })
    }

    /// The wdmoe-cuda layer (every setting of the GPU step: device policy
    /// tokens, prefill, expert timing, prefetch, launch shapes).
    pub fn moe(&self) -> &MoeLayer {
        &self.inner
    }

    /// The wdmoe-cuda layer, mutable (its settings).
    pub fn moe_mut(&mut self) -> &mut MoeLayer {
        &mut self.inner
    }

    /// See [`MoeLayer::set_prefill`].
    pub fn set_prefill(&mut self, on: bool) {
        self.inner.set_prefill(on);
    }

    /// See [`MoeLayer::set_expert_timing`].
    pub fn set_expert_timing(&mut self, on: bool) {
        self.inner.set_expert_timing(on);
    }

    /// See [`MoeLayer::set_device_policy_tokens`].
    pub fn set_device_policy_tokens(&mut self, max_tokens: usize) {
        self.inner.set_device_policy_tokens(max_tokens);
    }

    /// See [`MoeLayer::set_device_routing`] (grouped prefill steps routed on
    /// the GPU; steps not checked against wdmoe-core, see
    /// [`MoeLayer::set_route_check_every`], return no `selections`).
    pub fn set_device_routing(&mut self, on: bool) {
        self.inner.set_device_routing(on);
    }

    /// Steps whose device plan differed from wdmoe-core's and were re-run.
    pub fn device_policy_mismatches(&self) -> u64 {
        self.inner.device_policy_mismatches()
    }

    /// Test hook: see [`MoeLayer::skew_device_policy`].
    #[doc(hidden)]
    pub fn skew_device_policy(&mut self, on: bool) {
        self.inner.skew_device_policy(on);
    }

    /// Profiling: see [`MoeLayer::set_profile_router`].
    #[doc(hidden)]
    pub fn set_profile_router(&mut self, on: bool) {
        self.inner.set_profile_router(on);
    }

    /// Profiling stamps of the last device-planned 1-token step.
    #[doc(hidden)]
    pub fn device_plan_stamps_ns(&self) -> Result<[u64; 7], LayerError> {
        Ok(self.inner.device_plan_stamps_ns()?)
    }

    /// See [`MoeLayer::uses_device_policy`].
    pub fn uses_device_policy(&self, n_tokens: usize, latency_s: &[f64]) -> bool {
        self.inner.uses_device_policy(n_tokens, latency_s)
    }

    /// See [`MoeLayer::uses_prefill`].
    pub fn uses_prefill(&self, n_tokens: usize) -> bool {
        self.inner.uses_prefill(n_tokens)
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        self.inner.gpu()
    }

    /// Launch shapes of the expert kernels.
    pub fn config(&self) -> DecodeConfig {
        self.inner.config()
    }

    /// Sets the launch shapes of the expert kernels.
    pub fn set_config(&mut self, cfg: DecodeConfig) {
        self.inner.set_config(cfg);
    }

    /// See [`MoeLayer::set_prefetch_bytes`].
    pub fn set_prefetch_bytes(&mut self, bytes: usize) {
        self.inner.set_prefetch_bytes(bytes);
    }

    /// Bytes of one expert's weights.
    pub fn expert_bytes(&self) -> usize {
        self.inner.expert_bytes()
    }

    /// Copies `x` (`[n_tokens][m]`, converted to fp16) into the input buffer.
    pub fn set_input(&mut self, x: &[f32], n_tokens: usize) -> Result<(), LayerError> {
        let m = self.inner.m();
        if n_tokens == 0 || n_tokens > self.inner.max_tokens() || x.len() != n_tokens * m {
            return Err(LayerError::Shape(format!(
                "x has {} values for {n_tokens} tokens (1..={}) of m={m}",
                x.len(),
                self.inner.max_tokens(),
            )));
        }
        Ok(self.inner.set_input(&to_f16(x), n_tokens)?)
    }

    /// Fills the input buffer with random fp16 values in [-1, 1) (benchmarks).
    pub fn set_random_input(&mut self, seed: u64) -> Result<(), LayerError> {
        Ok(self.inner.set_random_input(seed)?)
    }

    /// One layer step on the tokens in the input buffer ([`MoeLayer::step`]);
    /// the output stays on the GPU (see [`GpuLayer::output`]). `out` of the
    /// result is empty; `time_s` spans router to combine, host part included.
    pub fn step(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<LayerOutput, LayerError> {
        if n_tokens == 0 || n_tokens > self.inner.max_tokens() {
            return Err(LayerError::Shape(format!(
                "n_tokens={n_tokens} (1..={})",
                self.inner.max_tokens()
            )));
        }
        check_latencies(latency_s, n_tokens, self.inner.experts())?;
        let MoeStep {
            probs,
            routing,
            expert_time_s,
            time_s,
            ..
        } = self.inner.step(n_tokens, policy, latency_s)?;
        Ok(LayerOutput {
            out: Vec::new(),
            probs,
            experts: stats(
                &routing.groups,
                self.inner.m(),
                self.inner.m_h(),
                &expert_time_s,
            ),
            selections: routing.selections,
            token_latency_s: routing.token_latency_s,
            time_s,
        })
    }

    /// The fp32 output of the last step, `[n_tokens][m]`.
    pub fn output(&self, n_tokens: usize) -> Result<Vec<f32>, LayerError> {
        if n_tokens > self.inner.max_tokens() {
            return Err(LayerError::Shape(format!("n_tokens={n_tokens}")));
        }
        Ok(self.inner.output(n_tokens)?)
    }

    /// [`GpuLayer::set_input`], [`GpuLayer::step`] and [`GpuLayer::output`]:
    /// the same contract as [`super::cpu::forward`].
    pub fn forward(
        &mut self,
        x: &[f32],
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<LayerOutput, LayerError> {
        self.set_input(x, n_tokens)?;
        let mut r = self.step(n_tokens, policy, latency_s)?;
        r.out = self.output(n_tokens)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests;
