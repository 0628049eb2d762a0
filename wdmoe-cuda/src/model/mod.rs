//! The whole Mixtral decoder on one GPU, fp16 weights, fp32 residual
//! stream: embedding, RMSNorm, the fused q|k|v and the o projections,
//! RoPE and an fp16 KV cache, attention (split-KV for one query, GQA heads
//! sharing each key tile; flash attention on tensor cores for prompt
//! chunks), the MoE step of [`crate::moe::MoeLayer`] with wdmoe-core's
//! policy on the device (router, policy and experts enqueued without a host
//! round trip, checked against wdmoe-core), the final norm, lm_head and an
//! on-device argmax.
//!
//! Weights come from a [`WeightSource`] (the caller's checkpoint reader,
//! Hugging Face tensor names) or are generated on the GPU
//! ([`GpuModel::random`], benchmarks at full size).
//!
//! Experts are held in the decode kernels' packing, and in the stacked
//! prefill layout too when both fit ([`ExpertLayout`]). Prompt chunks of
//! more than 16 tokens run on tensor cores either way: on the stacked
//! layout, or (a Mixtral-8x7B's 90 GB of experts fit an H200 once) through
//! the packed-weights GEMM that reads the decode packing
//! (`kernels/gemm_packed.cuh`). The attention projections are held row-major
//! and, where the shapes allow it (compute capability 9.0, multiples of 16
//! and 64), in the decode packing too (84 MB per layer at Mixtral size):
//! decode runs them through the decode GEMV kernels, prompts through the
//! packed GEMM.
//!
//! One step's host work: token ids up, the kernels enqueued (about 11 per
//! layer), wdmoe-core's check of every device choice (a prompt chunk's
//! layers each checked two layers after their enqueue, overlapping the GPU;
//! a decode step's after it), the logits (or the argmax) down. A device
//! choice that differs from wdmoe-core's makes the whole chunk run again
//! with the host policy (counted in [`ForwardOut::reruns`]), so outputs
//! always follow wdmoe-core.

use std::sync::Arc;

use cust::memory::DeviceBuffer;
use half::f16;

use crate::error::{shape, Error, Result};
use crate::ffn::{DecodeConfig, DownLayout, FfnWorkspace, PackedMatrix};
use crate::moe::{MoeLayer, TokenSelection};
use crate::prefill::PREFILL_MIN_TOKENS;
use crate::runtime::Gpu;

mod forward;
pub(crate) mod kernels;
mod remote;
#[cfg(test)]
mod tests;
mod weights;

use remote::{LayerMoe, RemoteRouter};

use kernels::{attn_part_len, attn_splits, AttnDims};
pub use kernels::{ATTN_MAX_HEAD_DIM, GEMV_MAX_TOKENS};
pub use weights::{ModelShape, WeightSource};

/// Which expert layouts the model keeps on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertLayout {
    /// Both when they fit in 85 % of the free memory (and the GPU runs the
    /// sm_90a prefill kernels), else the decode packing only.
    #[default]
    Auto,
    /// The decode packing only: prompt chunks of more than
    /// [`PREFILL_MIN_TOKENS`] tokens run the packed-weights tensor-core
    /// GEMM on it (compute capability 9.0, hidden and intermediate sizes
    /// multiples of 64; else the decode kernels in passes of 16 tokens per
    /// expert).
    DecodeOnly,
    /// Both: prompt chunks of more than [`PREFILL_MIN_TOKENS`] tokens run
    /// on the grouped tensor-core kernels over the stacked layout (each
    /// expert read once).
    Both,
}

/// Capacities of a [`GpuModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    /// Positions the KV cache holds (prompt + generated tokens).
    pub max_seq: usize,
    /// Expert layouts.
    pub layout: ExpertLayout,
    /// Most tokens per forward chunk (prompts run in chunks of this size).
    pub prefill_chunk: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            max_seq: 4096,
            layout: ExpertLayout::Auto,
            prefill_chunk: 512,
        }
    }
}

/// Which outputs a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Logits of every new position, `[n][vocab]`.
    AllLogits,
    /// Logits of the last position, `[1][vocab]`.
    LastLogits,
    /// Only the argmax of the last position's logits (computed on the GPU;
    /// lowest index on ties), no logits copied to the host.
    LastArgmax,
}

/// The routing of one layer over a forward call's tokens.
#[derive(Debug, Clone)]
pub struct LayerRoute {
    /// Router logits `[n][experts]` (fp32, as the policy saw them).
    pub logits: Vec<f32>,
    /// wdmoe-core's decision per token.
    pub selections: Vec<TokenSelection>,
    /// Eq. (7) per token under the given latencies \[s\].
    pub token_latency_s: Vec<f64>,
    /// GPU time of the layer's MoE steps (router to combine) \[s\].
    pub moe_time_s: f64,
}

/// What [`GpuModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct ForwardOut {
    /// Logits (`[rows][vocab]`; empty for [`Output::LastArgmax`]).
    pub logits: Vec<f32>,
    /// The last position's argmax ([`Output::LastArgmax`]).
    pub argmax: Option<u32>,
    /// Position of the first new token.
    pub start: usize,
    /// Per layer, the routing of the new tokens.
    pub layers: Vec<LayerRoute>,
    /// GPU time of the call (CUDA events, first chunk's embedding to the
    /// last chunk's output) \[s\].
    pub gpu_time_s: f64,
    /// Chunks run again because a device plan differed from wdmoe-core's.
    pub reruns: usize,
    /// Host seconds spent checking the device-routed (prefill) steps
    /// against wdmoe-core, summed over layers and chunks: each layer's
    /// check overlaps the GPU work of the layers after it, so this bounds
    /// the call's wall time from below once it exceeds the GPU time.
    pub route_check_s: f64,
    /// Host seconds spent enqueuing the layers' work (the lagged checks
    /// excluded).
    pub enqueue_s: f64,
}

struct Layer {
    attn_norm: DeviceBuffer<f32>,
    moe_norm: DeviceBuffer<f32>,
    wqkv: DeviceBuffer<f16>,
    wo: DeviceBuffer<f16>,
    /// q|k|v and o in the decode packing, for the tensor-core GEMM of
    /// prefill chunks (held where compute capability 9.0 and the shapes
    /// allow it and chunks exceed the GEMV's tokens: 2 x 42 MB per layer at
    /// Mixtral size).
    wqkv_p: Option<PackedMatrix>,
    wo_p: Option<PackedMatrix>,
    moe: LayerMoe,
    k_cache: DeviceBuffer<f16>,
    v_cache: DeviceBuffer<f16>,
}

/// A Mixtral model resident on one GPU with its KV cache.
pub struct GpuModel {
    shape: ModelShape,
    dims: AttnDims,
    layers: Vec<Layer>,
    embed: DeviceBuffer<f16>,
    lm_head: Option<DeviceBuffer<f16>>,
    final_norm: DeviceBuffer<f32>,
    rope: DeviceBuffer<f32>,
    chunk: usize,
    both: bool,
    len: usize,
    device_policy: bool,
    /// Decode launch shapes of the q|k|v and o projections' packing.
    qkv_cfg: DecodeConfig,
    o_cfg: DecodeConfig,
    /// The decode GEMV workspace of the projections (where packed).
    proj_ws: Option<FfnWorkspace>,
    /// Decode steps run the projections on their packing (default; see
    /// [`packed_decode_default`]).
    packed_decode: bool,
    /// `qkv` may hold values (a call failed between the q|k|v projection,
    /// which accumulates, and rope_kv, which leaves it zero).
    qkv_dirty: bool,
    tokens: DeviceBuffer<i32>,
    resid: DeviceBuffer<f32>,
    h: DeviceBuffer<f16>,
    qkv: DeviceBuffer<f32>,
    q: DeviceBuffer<f32>,
    attn: DeviceBuffer<f16>,
    part: DeviceBuffer<f32>,
    logits: DeviceBuffer<f32>,
    argmax: DeviceBuffer<i32>,
    events: [cust::event::Event; 2],
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("shape", &self.shape)
            .field("chunk", &self.chunk)
            .field("len", &self.len)
            .finish()
    }
}

/// The seed of layer `layer`'s router and experts in [`GpuModel::random`]
/// (`moe::random_expert(gpu, m, m_h, q, moe_seed(seed, layer))` is expert
/// q), so that another GPU can hold the same experts.
pub fn moe_seed(seed: u64, layer: usize) -> u64 {
    seed.wrapping_add((layer as u64 + 1) << 20) ^ 3
}

/// Expert `q` of layer `l` from `src` (W1, W3 `[m_h][m]`, W2 `[m][m_h]`,
/// by their Hugging Face names) on `gpu`: what [`GpuModel::load`] reads,
/// and what a distributed run's ranks read for the experts they host.
pub fn read_expert(
    gpu: &Gpu,
    src: &mut dyn WeightSource,
    l: usize,
    q: usize,
    m: usize,
    m_h: usize,
) -> Result<crate::moe::RawExpert> {
    let mut one = |w: &str| -> Result<DeviceBuffer<f16>> {
        let name = layer_name(l, &format!("block_sparse_moe.experts.{q}.{w}.weight"));
        gpu.upload(&weights::read_f16(src, &name, m * m_h)?)
    };
    Ok((one("w1")?, one("w3")?, one("w2")?))
}

fn layer_name(l: usize, rest: &str) -> String {
    format!("model.layers.{l}.{rest}")
}

/// Whether both expert layouts are kept.
fn both_layouts(gpu: &Gpu, shape: &ModelShape, opts: &ModelOptions) -> Result<bool> {
    if !gpu.info().cubin {
        return Ok(false);
    }
    Ok(match opts.layout {
        ExpertLayout::DecodeOnly => false,
        ExpertLayout::Both => true,
        ExpertLayout::Auto => {
            let (free, _) = cust::memory::mem_get_info()
                .map_err(|e| Error::cuda("cuMemGetInfo", String::new(), e))?;
            let experts = shape.layers * shape.experts * shape.expert_bytes();
            ((shape.weight_bytes() + experts) as f64) < 0.85 * free as f64
        }
    })
}

impl GpuModel {
    /// Loads a model of `shape` from `src` onto `gpu`. `progress(done,
    /// total)` is called with bytes after every tensor.
    pub fn load(
        gpu: impl Into<Arc<Gpu>>,
        shape: ModelShape,
        src: &mut dyn WeightSource,
        opts: ModelOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel> {
        Self::load_inner(gpu.into(), shape, src, opts, false, progress)
    }

    /// [`GpuModel::load`] without the experts (the base station of a
    /// distributed run: routers here, experts through the executor given
    /// to [`GpuModel::forward_remote`]; the ranks read theirs with
    /// [`read_expert`]).
    pub fn load_remote(
        gpu: impl Into<Arc<Gpu>>,
        shape: ModelShape,
        src: &mut dyn WeightSource,
        opts: ModelOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel> {
        Self::load_inner(gpu.into(), shape, src, opts, true, progress)
    }

    fn load_inner(
        gpu: Arc<Gpu>,
        shape: ModelShape,
        src: &mut dyn WeightSource,
        opts: ModelOptions,
        remote: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel> {
        shape.check()?;
        let (m, mh, e) = (shape.hidden, shape.intermediate, shape.experts);
        let hd_all = shape.heads * shape.head_dim;
        let kvw = shape.kv_heads * shape.head_dim;
        let total = shape.weight_bytes();
        let mut done = 0usize;
        let mut tick = |bytes: usize, progress: &mut dyn FnMut(usize, usize)| {
            done += bytes;
            progress(done, total);
        };
        let (chunk, both) = Self::chunk_for(&gpu, &shape, &opts)?;
        let embed = weights::read_f16(src, "model.embed_tokens.weight", shape.vocab * m)?;
        let embed = gpu.upload(&embed)?;
        tick(shape.vocab * m * 2, progress);
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let attn_norm = weights::read_f32(src, &layer_name(l, "input_layernorm.weight"), m)?;
            let moe_norm =
                weights::read_f32(src, &layer_name(l, "post_attention_layernorm.weight"), m)?;
            let mut wqkv =
                weights::read_f16(src, &layer_name(l, "self_attn.q_proj.weight"), hd_all * m)?;
            for p in ["k_proj", "v_proj"] {
                let w = weights::read_f16(
                    src,
                    &layer_name(l, &format!("self_attn.{p}.weight")),
                    kvw * m,
                )?;
                wqkv.extend_from_slice(&w);
            }
            let wo = weights::read_f16(src, &layer_name(l, "self_attn.o_proj.weight"), m * hd_all)?;
            let g = weights::read_f16(src, &layer_name(l, "block_sparse_moe.gate.weight"), e * m)?;
            tick(shape.attn_bytes() + e * m * 2, progress);
            let moe = if remote {
                LayerMoe::Remote(RemoteRouter::new(&gpu, &g, e, m, chunk)?)
            } else {
                let build = MoeLayer::build_with;
                let moe = build(
                    gpu.clone(),
                    &g,
                    e,
                    m,
                    mh,
                    chunk,
                    Some(both),
                    |gpu: &Gpu, q| {
                        let raw = read_expert(gpu, src, l, q, m, mh)?;
                        tick(shape.expert_bytes(), progress);
                        Ok(raw)
                    },
                )?;
                LayerMoe::Local(Box::new(moe))
            };
            layers.push(Self::layer(
                &gpu,
                &shape,
                &opts,
                gpu.upload(&attn_norm)?,
                gpu.upload(&moe_norm)?,
                gpu.upload(&wqkv)?,
                gpu.upload(&wo)?,
                moe,
            )?);
        }
        let final_norm = gpu.upload(&weights::read_f32(src, "model.norm.weight", m)?)?;
        let lm_head = if shape.tied {
            None
        } else {
            let w = weights::read_f16(src, "lm_head.weight", shape.vocab * m)?;
            tick(shape.vocab * m * 2, progress);
            Some(gpu.upload(&w)?)
        };
        Self::assemble(
            gpu,
            shape,
            opts,
            (chunk, both),
            layers,
            embed,
            lm_head,
            final_norm,
        )
    }

    /// A model of `shape` with random fp16 weights generated on the GPU
    /// (uniform, scaled by 1.7/sqrt(fan-in); norms 1), for benchmarks.
    pub fn random(
        gpu: impl Into<Arc<Gpu>>,
        shape: ModelShape,
        opts: ModelOptions,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel> {
        Self::random_inner(gpu.into(), shape, opts, seed, false, progress)
    }

    /// [`GpuModel::random`] without the experts: each layer keeps its
    /// router here and runs its experts through the executor given to
    /// [`GpuModel::forward_remote`] (the base station of a distributed run;
    /// expert `q` of layer `l` is `moe::random_expert(gpu, m, m_h, q,
    /// moe_seed(seed, l))` there, the same weights as [`GpuModel::random`]).
    pub fn random_remote(
        gpu: impl Into<Arc<Gpu>>,
        shape: ModelShape,
        opts: ModelOptions,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel> {
        Self::random_inner(gpu.into(), shape, opts, seed, true, progress)
    }

    fn random_inner(
        gpu: Arc<Gpu>,
        shape: ModelShape,
        opts: ModelOptions,
        seed: u64,
        remote: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<GpuModel> {
        shape.check()?;
        let (m, mh, e) = (shape.hidden, shape.intermediate, shape.experts);
        let hd_all = shape.heads * shape.head_dim;
        let (chunk, both) = Self::chunk_for(&gpu, &shape, &opts)?;
        let total = shape.weight_bytes();
        let mut done = 0;
        let rand = |n: usize, seed: u64, fan_in: usize| -> Result<DeviceBuffer<f16>> {
            let mut b = gpu.alloc::<f16>(n)?;
            gpu.fill_uniform(&mut b, seed, 1.7 / (fan_in as f32).sqrt())?;
            Ok(b)
        };
        let ones = vec![1.0f32; m];
        let embed = rand(shape.vocab * m, seed ^ 0xE111, 1)?;
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let s = seed.wrapping_add((l as u64 + 1) << 20);
            let wqkv = rand(shape.qkv_width() * m, s ^ 1, m)?;
            let wo = rand(m * hd_all, s ^ 2, hd_all)?;
            let moe = if remote {
                let g = crate::moe::random_router(&gpu, e, m, moe_seed(seed, l))?;
                LayerMoe::Remote(RemoteRouter::new(&gpu, &g, e, m, chunk)?)
            } else {
                let r = MoeLayer::random_with;
                let moe = r(gpu.clone(), m, mh, e, chunk, Some(both), moe_seed(seed, l))?;
                LayerMoe::Local(Box::new(moe))
            };
            let (n1, n2) = (gpu.upload(&ones)?, gpu.upload(&ones)?);
            layers.push(Self::layer(&gpu, &shape, &opts, n1, n2, wqkv, wo, moe)?);
            done += shape.attn_bytes() + e * (shape.expert_bytes() + m * 2);
            progress(done, total);
        }
        let lm_head = if shape.tied {
            None
        } else {
            Some(rand(shape.vocab * m, seed ^ 0x1111, m)?)
        };
        let final_norm = gpu.upload(&ones)?;
        progress(total, total);
        Self::assemble(
            gpu,
            shape,
            opts,
            (chunk, both),
            layers,
            embed,
            lm_head,
            final_norm,
        )
    }

    /// Tokens per chunk and whether both expert layouts are held.
    fn chunk_for(gpu: &Gpu, shape: &ModelShape, opts: &ModelOptions) -> Result<(usize, bool)> {
        if opts.max_seq == 0 || opts.prefill_chunk == 0 {
            return Err(shape_err(format!(
                "max_seq={} and prefill_chunk={} must be positive",
                opts.max_seq, opts.prefill_chunk
            )));
        }
        Ok((opts.prefill_chunk, both_layouts(gpu, shape, opts)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        gpu: &Gpu,
        shape: &ModelShape,
        opts: &ModelOptions,
        attn_norm: DeviceBuffer<f32>,
        moe_norm: DeviceBuffer<f32>,
        wqkv: DeviceBuffer<f16>,
        wo: DeviceBuffer<f16>,
        mut moe: LayerMoe,
    ) -> Result<Layer> {
        let cache = shape.kv_heads * opts.max_seq * shape.head_dim;
        // The whole-model step: no per-expert events (they break the
        // overlap of one expert's kernels with the next), no probabilities
        // copied back (the logits are).
        if let Some(moe) = moe.local_mut() {
            moe.set_expert_timing(false);
            moe.set_probs_to_host(false);
        }
        let (m, hd_all, qkvw) = (
            shape.hidden,
            shape.heads * shape.head_dim,
            shape.qkv_width(),
        );
        let packed = opts.prefill_chunk > kernels::GEMV_MAX_TOKENS
            && PackedMatrix::supported(gpu, qkvw, m)
            && PackedMatrix::supported(gpu, m, hd_all);
        let (wqkv_p, wo_p) = if packed {
            let a = PackedMatrix::pack(gpu, &wqkv, qkvw, m)?;
            let b = PackedMatrix::pack(gpu, &wo, m, hd_all)?;
            gpu.sync()?;
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        Ok(Layer {
            attn_norm,
            moe_norm,
            wqkv,
            wo,
            wqkv_p,
            wo_p,
            moe,
            k_cache: gpu.alloc(cache)?,
            v_cache: gpu.alloc(cache)?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        gpu: Arc<Gpu>,
        shape: ModelShape,
        opts: ModelOptions,
        (chunk, both): (usize, bool),
        layers: Vec<Layer>,
        embed: DeviceBuffer<f16>,
        lm_head: Option<DeviceBuffer<f16>>,
        final_norm: DeviceBuffer<f32>,
    ) -> Result<GpuModel> {
        let dims = AttnDims {
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
            max_seq: opts.max_seq,
            window: shape.window.unwrap_or(0),
        };
        dims.check("GpuModel")?;
        let m = shape.hidden;
        let hd_all = shape.heads * shape.head_dim;
        let rope = weights::rope_table(shape.head_dim, shape.rope_theta, opts.max_seq);
        let part = attn_part_len(1, shape.heads, shape.head_dim, attn_splits(1, opts.max_seq));
        // The decode GEMV kernels on the projections' packing: launch
        // shapes (16-row tiles, as a Tiles16 W2 of `rows` x `k`) and one
        // workspace for both.
        let qkvw = shape.qkv_width();
        let any_packed = layers.iter().any(|l| l.wqkv_p.is_some());
        let proj = |rows: usize, k: usize| {
            crate::ffn::DecodeConfig::auto_layout(gpu.info(), rows, k, DownLayout::Tiles16)
        };
        let proj_ws = if any_packed {
            Some(FfnWorkspace::new(&gpu, m.max(hd_all), qkvw.max(m))?)
        } else {
            None
        };
        Ok(GpuModel {
            qkv_cfg: proj(qkvw, m),
            o_cfg: proj(m, hd_all),
            proj_ws,
            packed_decode: packed_decode_default(),
            qkv_dirty: false,
            tokens: gpu.alloc(chunk)?,
            resid: gpu.alloc(chunk * m)?,
            h: gpu.alloc(chunk * m)?,
            qkv: gpu.alloc(chunk * shape.qkv_width())?,
            q: gpu.alloc(chunk * hd_all)?,
            attn: gpu.alloc(chunk * hd_all)?,
            part: gpu.alloc(part)?,
            logits: gpu.alloc(chunk * shape.vocab)?,
            argmax: gpu.alloc(chunk)?,
            rope: gpu.upload(&rope)?,
            events: [gpu.event()?, gpu.event()?],
            shape,
            dims,
            layers,
            embed,
            lm_head,
            final_norm,
            chunk,
            both,
            len: 0,
            device_policy: true,
            gpu,
        })
    }

    /// The model's dimensions.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Positions in the KV cache (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the KV cache can hold.
    pub fn max_seq(&self) -> usize {
        self.dims.max_seq
    }

    /// Tokens per forward chunk (the MoE layers' capacity).
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Device memory in use on the GPU (all of this context's allocations
    /// and the driver's, `total − free` of `cuMemGetInfo`) and its total, bytes.
    pub fn memory_used_bytes(&self) -> Result<(usize, usize)> {
        let (free, total) = cust::memory::mem_get_info()
            .map_err(|e| Error::cuda("cuMemGetInfo", String::new(), e))?;
        Ok((total - free, total))
    }

    /// Whether the experts are also held in the grouped prefill layout.
    pub fn has_prefill_layout(&self) -> bool {
        self.both && self.chunk > PREFILL_MIN_TOKENS
    }

    /// Forgets positions `n..` (the cache keeps `0..n`).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// The policy runs on the device (default true): single-token steps
    /// plan on the device, grouped prefill steps route on the device
    /// ([`MoeLayer::set_device_routing`]), both checked against wdmoe-core
    /// after the chunk; with false every step runs it on the host (one
    /// synchronisation per layer; comparisons, and the re-run of a chunk
    /// whose device choice differed).
    pub fn set_device_policy(&mut self, on: bool) {
        self.device_policy = on;
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.set_device_policy_tokens(usize::from(on));
                moe.set_device_routing(on);
            }
        }
    }

    /// Test hook: every layer's device policy uses top-1, so its plans
    /// differ from wdmoe-core's (exercises the re-run of a chunk).
    #[doc(hidden)]
    pub fn skew_device_policy(&mut self, on: bool) {
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.skew_device_policy(on);
            }
        }
    }
}

/// Whether decode steps run the attention projections through the decode
/// GEMV kernels on their packing (default) or the row-major GEMV
/// (`WDMOE_DECODE_PROJ=gemv`, read once: comparisons).
fn packed_decode_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WDMOE_DECODE_PROJ").map_or(true, |v| v != "gemv"))
}

fn shape_err(detail: String) -> Error {
    shape("GpuModel", detail)
}
