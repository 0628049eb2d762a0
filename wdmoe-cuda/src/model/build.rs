//! Building a [`GpuModel`]: weights from a checkpoint ([`GpuModel::load`])
//! or generated on the GPU ([`GpuModel::random`]), each layer's attention
//! weights (and their decode packing) and MoE layer, the buffers of a
//! forward chunk.

use std::sync::Arc;

use cust::memory::DeviceBuffer;
use half::f16;

use super::attention::{attn_part_len, attn_splits, AttnDims};
use super::remote::{LayerMoe, RemoteRouter};
use super::weights::{self, ModelShape, WeightSource};
use super::{
    cluster_attention_default, fused_combine_default, fused_rope_default, packed_decode_default,
    qkv_rope_default, shape_err, ExpertLayout, GpuModel, Layer, ModelOptions, PackedHead,
};
use crate::error::{Error, Result};
use crate::ffn::{DecodeConfig, DownLayout, FfnWorkspace, KernelConfig, PackedMatrix};
use crate::moe::MoeLayer;
use crate::runtime::Gpu;

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
                let mut moe = build(
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
                moe.set_defer_combine(fused_combine_default());
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
                let mut moe = r(gpu.clone(), m, mh, e, chunk, Some(both), moe_seed(seed, l))?;
                moe.set_defer_combine(fused_combine_default());
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
        // The whole-model step: no per-expert or per-step events (they
        // break the overlap of a kernel with the next), no probabilities
        // copied back (the logits are).
        if let Some(moe) = moe.local_mut() {
            moe.set_expert_timing(false);
            moe.set_step_timing(false);
            moe.set_probs_to_host(false);
        }
        let (m, hd_all, qkvw) = (
            shape.hidden,
            shape.heads * shape.head_dim,
            shape.qkv_width(),
        );
        // Decode steps use the packing too, whatever the chunk size.
        let packed =
            PackedMatrix::supported(gpu, qkvw, m) && PackedMatrix::supported(gpu, m, hd_all);
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
        // Launch shapes: as a Tiles16 W2 of `rows` x `k`, except that 1-8
        // tokens run no split of k and the warps per block below (Y4: one
        // wave of 384 or 256 blocks; the best of 8 shapes tried then).
        let shape_env = proj_shape_env("WDMOE_PROJ_SHAPE");
        let qkv_env = proj_shape_env("WDMOE_QKV_SHAPE").or(shape_env);
        let proj = |rows: usize, k: usize, shape: (u32, u32, u32)| {
            let mut c = DecodeConfig::auto_layout(gpu.info(), rows, k, DownLayout::Tiles16);
            let sm = gpu.info().sm_count;
            let (warps, unroll, splits) = shape;
            c.down = KernelConfig {
                splits,
                ..KernelConfig::auto(sm, rows / 16, k / 16, warps, unroll, 14)
            };
            c
        };
        let proj_ws = if any_packed {
            Some(FfnWorkspace::new(&gpu, m.max(hd_all), qkvw.max(m))?)
        } else {
            None
        };
        let head_p = if PackedMatrix::supported(&gpu, shape.vocab, m) {
            let w = PackedMatrix::pack(&gpu, lm_head.as_ref().unwrap_or(&embed), shape.vocab, m)?;
            gpu.sync()?;
            Some(PackedHead { w, on: true })
        } else {
            None
        };
        Ok(GpuModel {
            // o: 8 warps per block, 0.04-0.11 ms per token faster than 4
            // on an H200 (run A3, in-call, two runs each; again in H20).
            // q|k|v: 4 warps per block, so that its 384 blocks (1,536
            // warps) are resident at once and each loads its first two
            // groups of k-tiles (PRE = 2) while the kernel before it runs:
            // 0.02-0.05 ms per token faster than 8 in each of 3 in-call
            // pairs (runs H19, H20; 8 warps were better before PRE = 2, A3).
            qkv_cfg: proj(qkvw, m, qkv_env.unwrap_or((4, 8, 1))),
            o_cfg: proj(m, hd_all, shape_env.unwrap_or((8, 8, 1))),
            proj_ws,
            head_p,
            overlap_checks: true,
            packed_decode: packed_decode_default(),
            fused_rope: fused_rope_default(),
            cluster_attn: cluster_attention_default(),
            qkv_rope: qkv_rope_default(),
            qkv_dirty: false,
            tokens: gpu.alloc(chunk)?,
            resid: gpu.alloc(chunk * m)?,
            h: gpu.alloc(chunk * m)?,
            qkv: gpu.alloc(chunk * shape.qkv_width())?,
            // The rotated queries, then (prompt chunks) the o projection.
            q: gpu.alloc(chunk * hd_all.max(m))?,
            attn: gpu.alloc(chunk * hd_all)?,
            part: gpu.alloc(part)?,
            logits: gpu.alloc(chunk * shape.vocab)?,
            argmax: gpu.alloc(chunk)?,
            argmax_host: cust::memory::LockedBuffer::new(&-1i32, 1)
                .map_err(|e| Error::cuda("cuMemAllocHost", "the argmax", e))?,
            ahead: None,
            pipeline: true,
            ahead_err: None,
            rope: gpu.upload(&rope)?,
            events: [[gpu.event()?, gpu.event()?], [gpu.event()?, gpu.event()?]],
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
}

/// The decode GEMV shape of the attention projections: 4 (q|k|v) or 8 (o)
/// warps per block, unroll 8, no split of k
/// (`WDMOE_PROJ_SHAPE=warps,unroll,splits`, e.g.
/// `8,8,2`, both projections; `WDMOE_QKV_SHAPE`, q|k|v alone; read at load:
/// comparisons; a shape the kernels do not take is refused at the first
/// launch).
fn proj_shape_env(var: &str) -> Option<(u32, u32, u32)> {
    crate::env::triple(var, |_| true, "warps,unroll,splits")
}
