//! Construction of a [`MoeLayer`]: from raw expert weights (packed here,
//! the stacked prefill layout too where asked and fitting) or random ones
//! generated on the GPU, and the buffers of its steps.

use std::sync::Arc;

use cust::memory::{DeviceBuffer, LockedBuffer};
use half::f16;

use super::device_step::DeviceRouting;
use super::grouped::GroupedPrefill;
use super::{MoeLayer, MAX_EXPERTS};
use crate::error::{shape, Error, Result};
use crate::ffn::{DecodeConfig, ExpertWeights, FfnWorkspace, RoutingPlan};
use crate::plan::DevicePlan;
use crate::prefill::{packed_supported, PrefillWeights, PREFILL_MIN_TOKENS};
use crate::router::{PrefetchTable, Router};
use crate::runtime::Gpu;

/// One expert's W1, W3 (`[m_h][m]`) and W2 (`[m][m_h]`) on the device.
pub type RawExpert = (DeviceBuffer<f16>, DeviceBuffer<f16>, DeviceBuffer<f16>);

/// Expert `q`'s random raw weights as [`MoeLayer::random`] with `seed` makes
/// them (uniform, scaled by 1.7/sqrt(fan-in), generated on the GPU): the one
/// definition, so that experts built elsewhere (e.g. on another rank by
/// `crate::dist`) are the same bits.
pub fn random_expert(gpu: &Gpu, m: usize, m_h: usize, q: usize, seed: u64) -> Result<RawExpert> {
    let s_m = 1.7 / (m as f32).sqrt();
    let s_h = 1.7 / (m_h as f32).sqrt();
    let q = q as u64;
    let mut w1 = gpu.alloc::<f16>(m * m_h)?;
    let mut w3 = gpu.alloc::<f16>(m * m_h)?;
    let mut w2 = gpu.alloc::<f16>(m * m_h)?;
    gpu.fill_uniform(&mut w1, seed ^ (3 * q + 1) << 8, s_m)?;
    gpu.fill_uniform(&mut w3, seed ^ (3 * q + 2) << 8, s_m)?;
    gpu.fill_uniform(&mut w2, seed ^ (3 * q + 3) << 8, s_h)?;
    Ok((w1, w3, w2))
}

/// The random router G (`[n_experts][m]` fp16, on the host) of
/// [`MoeLayer::random`] with `seed` (uniform, scaled by 1.7/sqrt(m)), so a
/// model holding only the routers makes the same ones.
pub fn random_router(gpu: &Gpu, n_experts: usize, m: usize, seed: u64) -> Result<Vec<f16>> {
    let mut g = gpu.alloc::<f16>(n_experts * m)?;
    gpu.fill_uniform(&mut g, seed, 1.7 / (m as f32).sqrt())?;
    gpu.download(&g)
}

impl MoeLayer {
    /// A layer of `n_experts` experts of `m` x `m_h` (multiples of 16):
    /// router G (`[n_experts][m]` fp16, host), and `expert(gpu, q)` giving
    /// expert q's raw weights on the device (packed here, then freed unless
    /// the grouped prefill layout needs them); steps of up to `max_tokens`.
    pub fn build(
        gpu: impl Into<Arc<Gpu>>,
        router_g: &[f16],
        n_experts: usize,
        m: usize,
        m_h: usize,
        max_tokens: usize,
        expert: impl FnMut(&Gpu, usize) -> Result<RawExpert>,
    ) -> Result<MoeLayer> {
        Self::build_with(gpu, router_g, n_experts, m, m_h, max_tokens, None, expert)
    }

    /// [`MoeLayer::build`], choosing the layouts: `grouped_prefill` `Some(false)`
    /// keeps only the decode packing even for `max_tokens` above
    /// [`PREFILL_MIN_TOKENS`] (for a model whose experts fit the GPU once,
    /// not twice): larger steps then run the grouped tensor-core GEMM on the
    /// decode packing (`kernels/gemm_packed.cuh`; compute capability 9.0, m
    /// and m_h multiples of 64), else the decode kernels in passes of 16
    /// tokens per expert; `Some(true)` asks for the stacked prefill layout
    /// too (on compute capability 9.0); `None` decides as `build` does.
    #[allow(clippy::too_many_arguments)]
    pub fn build_with(
        gpu: impl Into<Arc<Gpu>>,
        router_g: &[f16],
        n_experts: usize,
        m: usize,
        m_h: usize,
        max_tokens: usize,
        grouped_prefill: Option<bool>,
        mut expert: impl FnMut(&Gpu, usize) -> Result<RawExpert>,
    ) -> Result<MoeLayer> {
        if n_experts == 0 || n_experts > MAX_EXPERTS {
            return Err(shape(
                "MoeLayer::build",
                format!("n_experts={n_experts} (1..={MAX_EXPERTS})"),
            ));
        }
        let gpu: Arc<Gpu> = gpu.into();
        let router = Router::from_host(&gpu, router_g, n_experts, m)?;
        let grouped = gpu.info().cubin
            && grouped_prefill.unwrap_or(max_tokens > PREFILL_MIN_TOKENS)
            && max_tokens > PREFILL_MIN_TOKENS;
        let mut experts = Vec::with_capacity(n_experts);
        let mut raw = Vec::new();
        for q in 0..n_experts {
            let (w1, w3, w2) = expert(&gpu, q)?;
            experts.push(ExpertWeights::pack(&gpu, &w1, &w3, &w2, m, m_h)?);
            gpu.sync()?;
            if grouped {
                raw.push((w1, w3, w2));
            }
        }
        let prefill = if grouped {
            let refs: Vec<_> = raw.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
            let p = PrefillWeights::pack(&gpu, &refs, m, m_h)?;
            gpu.sync()?;
            Some(p)
        } else {
            None
        };
        drop(raw);
        Self::assemble(gpu, router, experts, prefill, m, m_h, max_tokens)
    }

    /// A layer of random fp16 weights generated on the GPU (uniform, scaled
    /// by 1.7/sqrt(fan-in)), for benchmarks at full Mixtral size.
    pub fn random(
        gpu: impl Into<Arc<Gpu>>,
        m: usize,
        m_h: usize,
        n_experts: usize,
        max_tokens: usize,
        seed: u64,
    ) -> Result<MoeLayer> {
        Self::random_with(gpu, m, m_h, n_experts, max_tokens, None, seed)
    }

    /// [`MoeLayer::random`] choosing the layouts as [`MoeLayer::build_with`].
    pub fn random_with(
        gpu: impl Into<Arc<Gpu>>,
        m: usize,
        m_h: usize,
        n_experts: usize,
        max_tokens: usize,
        grouped_prefill: Option<bool>,
        seed: u64,
    ) -> Result<MoeLayer> {
        if n_experts == 0 || n_experts > MAX_EXPERTS {
            return Err(shape(
                "MoeLayer::random",
                format!("n_experts={n_experts} (1..={MAX_EXPERTS})"),
            ));
        }
        let gpu: Arc<Gpu> = gpu.into();
        let g = random_router(&gpu, n_experts, m, seed)?;
        let b = Self::build_with;
        b(
            gpu,
            &g,
            n_experts,
            m,
            m_h,
            max_tokens,
            grouped_prefill,
            |gpu: &Gpu, q| random_expert(gpu, m, m_h, q, seed),
        )
    }

    fn assemble(
        gpu: Arc<Gpu>,
        router: Router,
        experts: Vec<ExpertWeights>,
        prefill: Option<PrefillWeights>,
        m: usize,
        m_h: usize,
        max_tokens: usize,
    ) -> Result<MoeLayer> {
        let e = experts.len();
        let max_tokens = max_tokens.max(1);
        // The grouped path: on the stacked layout when held, else (compute
        // capability 9.0, m and m_h multiples of 64) on the decode packing.
        let prefill = match prefill {
            Some(w) => Some(GroupedPrefill::new(&gpu, w)?),
            None if max_tokens > PREFILL_MIN_TOKENS && packed_supported(&gpu, m, m_h) => {
                Some(GroupedPrefill::packed(&gpu, m, m_h, e)?)
            }
            None => None,
        };
        Ok(MoeLayer {
            device: DevicePlan::new(&gpu, &experts)?,
            device_policy_tokens: 1,
            mismatches: 0,
            skew_device_policy: false,
            profile_router: false,
            route: DeviceRouting::default(),
            ws: FfnWorkspace::new(&gpu, m, m_h)?,
            cfg: DecodeConfig::auto(gpu.info(), m, m_h),
            x: gpu.alloc(max_tokens * m)?,
            probs: gpu.alloc(max_tokens * e)?,
            acc: gpu.alloc(max_tokens * m)?,
            plan: RoutingPlan::default(),
            prefetch: PrefetchTable::new(&gpu, &experts, 0)?,
            logits_host: LockedBuffer::new(&0.0f32, max_tokens * e).map_err(|err| {
                Error::cuda("cuMemAllocHost", format!("{} floats", max_tokens * e), err)
            })?,
            events: (0..2 + 2 * e).map(|_| gpu.event()).collect::<Result<_>>()?,
            router,
            experts,
            prefill,
            use_prefill: true,
            expert_timing: true,
            step_timing: true,
            merge_slots: true,
            m,
            m_h,
            max_tokens,
            pending: None,
            probs_to_host: true,
            defer_combine: false,
            deferred: None,
            gpu,
        })
    }
}
