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
//! packed GEMM. lm_head too (262 MB more at Mixtral size).
//!
//! One step's host work: token ids up, the kernels enqueued (about 11 per
//! layer), wdmoe-core's check of every device choice (each layer's two
//! layers after its enqueue, overlapping the GPU, for prompt chunks and
//! decode steps alike), the logits (or the argmax) down. A device
//! choice that differs from wdmoe-core's makes the whole chunk run again
//! with the host policy (counted in [`ForwardOut::reruns`]), so outputs
//! always follow wdmoe-core.

use std::sync::Arc;

use cust::memory::DeviceBuffer;
use half::f16;

use crate::error::{shape, Error, Result};
use crate::ffn::{DecodeConfig, FfnWorkspace, PackedMatrix};
use crate::moe::TokenSelection;
use crate::prefill::PREFILL_MIN_TOKENS;
use crate::runtime::Gpu;

mod attention;
mod build;
mod decode;
mod forward;
pub(crate) mod kernels;
mod remote;
#[cfg(test)]
mod tests;
mod weights;

use remote::LayerMoe;

use attention::AttnDims;
pub use attention::ATTN_MAX_HEAD_DIM;
pub use build::{moe_seed, read_expert};
pub use decode::LatencyFn;
pub use kernels::GEMV_MAX_TOKENS;
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
    /// GPU time of the layer's MoE steps (router to combine) \[s\]; steps
    /// on the device (device-planned decode, device-routed prompt steps)
    /// count only with [`GpuModel::set_moe_timing`] on (else they add 0).
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
    /// q|k|v and o in the decode packing, for the decode GEMV kernels and
    /// the tensor-core GEMM of prefill chunks (held where compute
    /// capability 9.0 and the shapes allow it: 2 x 42 MB per layer at
    /// Mixtral size).
    wqkv_p: Option<PackedMatrix>,
    wo_p: Option<PackedMatrix>,
    moe: LayerMoe,
    k_cache: DeviceBuffer<f16>,
    v_cache: DeviceBuffer<f16>,
}

/// lm_head (or the tied embedding) also in the decode packing, where the
/// shapes allow it (262 MB at Mixtral size): the logits of chunks of more
/// than [`GEMV_MAX_TOKENS`](kernels::GEMV_MAX_TOKENS) rows run through the
/// packed GEMM instead of the row-major GEMV (a decode token's through the
/// row-major GEMV, which is faster there than the decode GEMV on the
/// packing).
struct PackedHead {
    w: PackedMatrix,
    /// Used (default; [`GpuModel::set_packed_head`]: comparisons).
    on: bool,
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
    head_p: Option<PackedHead>,
    /// Each device-planned or device-routed step is checked against
    /// wdmoe-core [`CHECK_LAG`](forward::CHECK_LAG) layers after its
    /// enqueue, overlapping the GPU (default), or after the chunk
    /// ([`GpuModel::set_overlap_checks`]: comparisons).
    overlap_checks: bool,
    /// Decode steps run the projections on their packing (default; see
    /// [`packed_decode_default`]).
    packed_decode: bool,
    /// Decode tokens run RoPE inside the attention kernel (default; see
    /// [`fused_rope_default`]).
    fused_rope: bool,
    /// Decode tokens' attention merges its key splits in a thread-block
    /// cluster where it can (default; see [`cluster_attention_default`]).
    cluster_attn: bool,
    /// Prompt chunks that store their projections run RoPE and the cache
    /// write in the q|k|v GEMM's epilogue (default; see
    /// [`qkv_rope_default`]).
    qkv_rope: bool,
    /// `qkv` may hold values: a prompt chunk's (its projection stores, its
    /// RoPE leaves them), or a call failed between a decode step's q|k|v
    /// projection, which accumulates, and its RoPE, which leaves it zero.
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
    /// A decode step's argmax, in page-locked memory (written by the GPU).
    argmax_host: cust::memory::LockedBuffer<i32>,
    /// The next decode step, enqueued ahead ([`GpuModel::decode_greedy`]).
    ahead: Option<decode::Ahead>,
    /// Whether [`GpuModel::decode_greedy`] enqueues the next step ahead.
    pipeline: bool,
    /// An error of discarding the step ahead from a setting, for the next call.
    ahead_err: Option<Error>,
    /// Two pairs of events around a chunk (a pipelined decode step's pair
    /// is recorded while the previous step's is still in use).
    events: [[cust::event::Event; 2]; 2],
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

impl Drop for GpuModel {
    fn drop(&mut self) {
        // A decode step enqueued ahead may still write page-locked memory
        // this model frees (its reports, its argmax).
        let _ = self.gpu.sync();
    }
}

impl GpuModel {
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
    /// ([`MoeLayer::set_device_routing`](crate::moe::MoeLayer::set_device_routing)), both checked against wdmoe-core
    /// after the chunk; with false every step runs it on the host (one
    /// synchronisation per layer; comparisons, and the re-run of a chunk
    /// whose device choice differed).
    pub fn set_device_policy(&mut self, on: bool) {
        self.end_ahead();
        self.device_policy = on;
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.set_device_policy_tokens(usize::from(on));
                moe.set_device_routing(on);
            }
        }
    }

    /// CUDA events around every MoE step on the device (device-planned
    /// decode steps and device-routed prompt steps), for
    /// [`LayerRoute::moe_time_s`] (default false: each event between two
    /// kernels ends their programmatic-dependent-launch overlap, ~5 µs
    /// each on an H200, and the checks wait for the router's report or
    /// the step's downloads instead). Host-routed steps are always timed.
    pub fn set_moe_timing(&mut self, on: bool) {
        self.end_ahead();
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.set_step_timing(on);
            }
        }
    }

    /// Whether device-planned steps run their slots in shared launches
    /// (default true; see `MoeLayer::set_merge_slots`; comparisons).
    #[doc(hidden)]
    pub fn set_merge_slots(&mut self, on: bool) {
        self.end_ahead();
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.set_merge_slots(on);
            }
        }
    }

    /// Whether each layer's device choice is checked against wdmoe-core
    /// while the GPU runs the layers after it (default true) or after the
    /// whole chunk (false; for comparisons: the outputs are the same).
    #[doc(hidden)]
    pub fn set_overlap_checks(&mut self, on: bool) {
        self.overlap_checks = on;
    }

    /// Whether chunks of more than 16 rows of logits run lm_head on its
    /// packing where it has one (default true) or row-major (false; for
    /// comparisons). Decode rows always run row-major.
    #[doc(hidden)]
    pub fn set_packed_head(&mut self, on: bool) {
        if let Some(h) = &mut self.head_p {
            h.on = on;
        }
    }

    /// Whether a decode token (a 1-token chunk) runs RoPE and the KV-cache
    /// write inside its attention kernel (default true) or in a kernel of
    /// their own before it (false; for comparisons: the outputs and the
    /// cache are the same bits).
    #[doc(hidden)]
    pub fn set_fused_rope(&mut self, on: bool) {
        self.fused_rope = on;
    }

    /// Whether a decode token's fused-RoPE attention merges its key splits
    /// inside the attention kernel, one thread-block cluster per KV head
    /// (default true; where it can: 2 to 8 splits on the sm_90a cubin), or
    /// in `attn_combine` after it (false; for comparisons: the same bits).
    #[doc(hidden)]
    pub fn set_cluster_attention(&mut self, on: bool) {
        self.cluster_attn = on;
    }

    /// Whether prompt chunks that store their projections (512 tokens or
    /// more) run RoPE and the KV-cache write in the q|k|v GEMM's epilogue,
    /// the queries' rotation in the attention kernel as it loads them
    /// (default true; where the packed GEMM runs and the head dimension is
    /// 128) or both in `rope_kv` after the GEMM (false; for comparisons:
    /// the same bits).
    #[doc(hidden)]
    pub fn set_qkv_rope(&mut self, on: bool) {
        self.qkv_rope = on;
    }

    /// Whether a prompt's MoE steps leave their combine to the next norm
    /// (default true, [`fused_combine_default`]) or write their output rows
    /// for it (false; for comparisons: the same bits).
    #[doc(hidden)]
    pub fn set_fused_combine(&mut self, on: bool) {
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.set_defer_combine(on);
            }
        }
    }

    /// Test hook: every layer's device policy uses top-1, so its plans
    /// differ from wdmoe-core's (exercises the re-run of a chunk).
    #[doc(hidden)]
    pub fn skew_device_policy(&mut self, on: bool) {
        self.end_ahead();
        for l in &mut self.layers {
            if let Some(moe) = l.moe.local_mut() {
                moe.skew_device_policy(on);
            }
        }
    }
}

/// Whether decode steps run the attention projections through the decode
/// GEMV kernels on their packing (default) or the row-major GEMV
/// (`WDMOE_DECODE_PROJ=gemv`: comparisons).
fn packed_decode_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_DECODE_PROJ", "gemv")
}

/// Whether decode tokens fuse RoPE into attention (default) or run it
/// apart (`WDMOE_FUSED_ROPE=0`: comparisons).
fn fused_rope_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_FUSED_ROPE", "0")
}

/// Whether prompt chunks of PROJ_STORE_MIN_TOKENS or more rotate q and k
/// and write the cache in the q|k|v GEMM's epilogue (default) or in
/// rope_kv after a stored projection (`WDMOE_QKV_ROPE=0`: comparisons).
fn qkv_rope_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_QKV_ROPE", "0")
}

/// Whether a prompt's device-routed MoE steps leave their combine to the
/// next norm, which sums the experts' outputs into the residual itself
/// (default: one kernel and a 32 MB round trip per layer fewer at 2,048
/// tokens), or write it for the norm to add (`WDMOE_FUSED_COMBINE=0`:
/// comparisons).
pub(crate) fn fused_combine_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_FUSED_COMBINE", "0")
}

/// Whether decode attention merges its splits in a cluster (default) or
/// in `attn_combine` (`WDMOE_ATTN_CLUSTER=0`: comparisons).
fn cluster_attention_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_ATTN_CLUSTER", "0")
}

/// Whether the RMSNorm kernels let the next kernel launch before they wait
/// for the previous one (default; `WDMOE_NORM_EARLY=0`: after, as before
/// run C5): the q|k|v GEMV (or the router, or lm_head) then starts loading
/// its weights while the one-block norm runs, 0.035 ms per decode token on
/// an H200 (runs C4-C5, 8 of 8 pairs faster).
fn norm_early_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::env::switch_once(&ON, "WDMOE_NORM_EARLY", "0")
}

fn shape_err(detail: String) -> Error {
    shape("GpuModel", detail)
}
