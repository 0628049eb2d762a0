//! Attention's launches (`kernels/model.cu`, `kernels/attn_prefill.cuh`):
//! the shape of one layer's attention, RoPE with the KV-cache write, decode
//! attention (split-KV, the splits merged by a second kernel, or for one
//! token with RoPE fused in by the splits themselves in a thread-block
//! cluster), prefill attention on tensor cores. Each launch checks
//! shapes first and passes a typed parameter struct (the launch is the
//! only `unsafe`).

use cust::memory::DeviceSlice;
use half::f16;

use super::kernels::need;
use crate::error::{check_align, shape, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::{addr, Gpu};

/// Largest head dimension of the attention kernel.
pub const ATTN_MAX_HEAD_DIM: usize = 256;

/// Keys per shared-memory tile of the attention kernel.
const ATTN_TILE: usize = 32;

/// The most key splits one thread-block cluster merges
/// (`ATT_CLUSTER_MAX`: the portable cluster size).
pub(crate) const ATTN_CLUSTER_MAX: usize = 8;

/// The attention shape of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions the KV cache holds.
    pub max_seq: usize,
    /// Sliding window (0: none).
    pub window: usize,
}

impl AttnDims {
    /// Dynamic shared memory of the attention kernel: the group's queries
    /// (fp32), one key tile (rows padded by 2 halves) and one value tile.
    pub(crate) fn smem_bytes(&self) -> usize {
        let g = self.heads / self.kv_heads.max(1);
        g * self.head_dim * 4 + ATTN_TILE * (self.head_dim + 2) * 2 + ATTN_TILE * self.head_dim * 2
    }

    /// Dynamic shared memory of `attn_fwd_rope_cluster`: the above and the
    /// group's partials (max, sum, acc[hd] per head, fp32).
    fn cluster_smem_bytes(&self) -> usize {
        let g = self.heads / self.kv_heads.max(1);
        self.smem_bytes() + g * (self.head_dim + 2) * 4
    }

    /// The attention kernels' parameters for `t` queries at `start..`
    /// (`q`: their address), this layer's cache, the split workspace and
    /// the output (checked by the caller).
    fn params(
        &self,
        q: u64,
        (k_cache, v_cache): (&DeviceSlice<f16>, &DeviceSlice<f16>),
        (part, out): (&DeviceSlice<f32>, &DeviceSlice<f16>),
        t: usize,
        start: usize,
        split_len: usize,
    ) -> AttnParams {
        AttnParams {
            q,
            k_cache: addr(k_cache),
            v_cache: addr(v_cache),
            part: addr(part),
            out: addr(out),
            t: t as i32,
            start: start as i32,
            h: self.heads as i32,
            kvh: self.kv_heads as i32,
            hd: self.head_dim as i32,
            max_seq: self.max_seq as i32,
            window: self.window as i32,
            split_len: split_len as i32,
            scale: (self.head_dim as f32).powf(-0.5),
            rope_q: 0,
        }
    }

    /// Key splits of `t` queries at `start..` and the keys per split: the
    /// token range's keys (the last `window` positions with a window), cut
    /// as [`attn_splits`] says.
    pub(crate) fn splits(&self, start: usize, t: usize) -> (usize, usize) {
        let keys = match self.window {
            0 => start + t,
            w => (start + t).min(w),
        };
        let splits = attn_splits(t, keys);
        (splits, keys.div_ceil(splits))
    }

    pub(crate) fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
    pub(crate) fn check(&self, op: &'static str) -> Result<()> {
        let AttnDims {
            heads,
            kv_heads,
            head_dim,
            max_seq,
            ..
        } = *self;
        if heads == 0
            || kv_heads == 0
            || heads % kv_heads != 0
            || heads / kv_heads > 16
            || head_dim == 0
            || head_dim % 2 != 0
            || head_dim > ATTN_MAX_HEAD_DIM
            || max_seq == 0
            || max_seq > (1 << 24)
            || self.smem_bytes() > 48 * 1024
        {
            return Err(crate::error::Error::Unsupported {
                op,
                detail: format!(
                    "heads={heads}, kv_heads={kv_heads} (heads/kv_heads in 1..=16), head_dim={head_dim} \
                     (even, <= {ATTN_MAX_HEAD_DIM}), max_seq={max_seq}; shared memory {} B (<= 48 KiB)",
                    self.smem_bytes()
                ),
            });
        }
        Ok(())
    }
}

/// RoPE on q and k of `t` tokens at `start..start+t`, q written to `q_out`
/// (fp32), k and v into this layer's cache; with `consume` the `t` rows of
/// `qkv` are left zero, ready for the next projection to accumulate into.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_kv(
    gpu: &Gpu,
    dims: &AttnDims,
    qkv: &mut DeviceSlice<f32>,
    rope: &DeviceSlice<f32>,
    start: usize,
    t: usize,
    q_out: &mut DeviceSlice<f32>,
    k_cache: &mut DeviceSlice<f16>,
    v_cache: &mut DeviceSlice<f16>,
    consume: bool,
) -> Result<()> {
    const OP: &str = "model::rope_kv";
    dims.check(OP)?;
    let hd = dims.head_dim;
    if start + t > dims.max_seq || t == 0 {
        return Err(shape(
            OP,
            format!(
                "positions {start}..{} beyond the cache of {}",
                start + t,
                dims.max_seq
            ),
        ));
    }
    need(OP, "qkv", qkv.len(), t * dims.qkv_width())?;
    need(OP, "rope", rope.len(), dims.max_seq * hd)?;
    need(OP, "q_out", q_out.len(), t * dims.heads * hd)?;
    let cache = dims.kv_heads * dims.max_seq * hd;
    need(OP, "k_cache", k_cache.len(), cache)?;
    need(OP, "v_cache", v_cache.len(), cache)?;
    check_align(OP, "rope", addr(rope), 8)?;
    kernel_params! {
        struct RopeKv {
            qkv: u64, rope: u64, start: i32, h: i32, kvh: i32, hd: i32, max_seq: i32,
            q_out: u64, k_cache: u64, v_cache: u64, consume: i32,
        }
    }
    let p = RopeKv {
        qkv: addr(qkv),
        rope: addr(rope),
        start: start as i32,
        h: dims.heads as i32,
        kvh: dims.kv_heads as i32,
        hd: hd as i32,
        max_seq: dims.max_seq as i32,
        q_out: addr(q_out),
        k_cache: addr(k_cache),
        v_cache: addr(v_cache),
        consume: consume as i32,
    };
    // rope_kv's pairs per thread (ROPE_PAIRS in model.cu).
    const PAIRS: usize = 4;
    const THREADS: usize = 256;
    let pairs = (dims.heads + 2 * dims.kv_heads) * hd / 2;
    // SAFETY: rope_kv(const float*, const float2*, int, int, int, int, int,
    // float*, half*, half*, int) = RopeKv; block (i, b), i < t, reads (then,
    // with consume, zeroes) pairs b·1024.. < (H + 2 KVH) hd/2 of qkv row i (t x
    // qkv_width, checked) and rope row start+i < max_seq (max_seq x hd/2
    // float2, checked, 8-byte aligned), writes q_out row i (checked) or
    // cache position start+i < max_seq of a kv head (checked).
    unsafe {
        gpu.launch(
            &gpu.model,
            "rope_kv",
            Shape::new(
                (t as u32, pairs.div_ceil(PAIRS * THREADS) as u32),
                THREADS as u32,
            )
            .pdl(true),
            p,
            || format!("t={t} start={start}"),
        )
    }
}

kernel_params! {
    /// `AttnParams` of model.cu, passed by value.
    struct AttnParams {
        q: u64, k_cache: u64, v_cache: u64, part: u64, out: u64,
        t: i32, start: i32, h: i32, kvh: i32, hd: i32, max_seq: i32, window: i32, split_len: i32,
        scale: f32,
        rope_q: u64,
    }
}

// model.cu's AttnParams: 5 pointers, 8 ints, 1 float (4 bytes of padding),
// 1 pointer.
const _: () = assert!(std::mem::size_of::<AttnParams>() == 88);
const _: () = assert!(std::mem::align_of::<AttnParams>() == 8);

/// One kernel parameter: the whole `AttnParams` struct by value.
struct AttnArg {
    p: AttnParams,
}
// SAFETY: one pointer, to the one field (the kernel takes one struct).
unsafe impl crate::launch::KernelParams for AttnArg {
    type Ptrs = [*mut std::ffi::c_void; 1];
    fn arg_ptrs(&mut self) -> Self::Ptrs {
        [&mut self.p as *mut AttnParams as *mut std::ffi::c_void]
    }
}

/// How many key splits attention uses for `t` queries over up to `keys`
/// keys: one for several queries (prefill: enough blocks already); for one
/// query one split per [`attn_split_keys`] keys, at most 32 (decode is
/// latency-bound: each block's key tiles are loaded one after the other,
/// so short splits shorten the chain; at long contexts 32 splits fill the
/// GPU).
pub(crate) fn attn_splits(t: usize, keys: usize) -> usize {
    if t > 1 {
        1
    } else {
        keys.div_ceil(attn_split_keys()).clamp(1, 32)
    }
}

/// Keys per decode split: 32, one key tile (`WDMOE_ATTN_SPLIT_KEYS=64`,
/// read once: the earlier two tiles, for comparisons).
pub(crate) fn attn_split_keys() -> usize {
    static KEYS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| {
        crate::env::number(
            "WDMOE_ATTN_SPLIT_KEYS",
            |&k: &usize| k >= ATTN_TILE,
            "keys per split >= 32",
        )
        .unwrap_or(ATTN_TILE)
    })
}

/// Queries from which prefill attention runs on tensor cores.
pub(crate) const ATTN_TC_MIN_TOKENS: usize = 16;

/// The tensor-core prefill kernel for `t` queries of head size `hd`, if
/// one applies (t >= [`ATTN_TC_MIN_TOKENS`], hd 64 or 128).
pub(super) fn prefill_attention_kernel(t: usize, hd: usize) -> Option<&'static str> {
    if t < ATTN_TC_MIN_TOKENS {
        return None;
    }
    match hd {
        64 => Some("attn_prefill_h64"),
        128 => Some("attn_prefill_h128"),
        _ => None,
    }
}

/// Elements of the split workspace for `t` queries of `heads` heads.
pub(crate) fn attn_part_len(t: usize, heads: usize, head_dim: usize, splits: usize) -> usize {
    if splits <= 1 {
        0
    } else {
        t * heads * splits * (head_dim + 2)
    }
}

/// Attention of `t` queries (`q`, `[t][H hd]` fp32) at positions
/// `start..start+t` over this layer's cache; output `[t][H hd]` fp16. The
/// queries are rotated, or `rope_q` (the (cos, sin) table) rotates them as
/// the tensor-core prefill kernel loads them (the same bits as `rope_kv`;
/// only where that kernel runs: an error elsewhere).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    gpu: &Gpu,
    dims: &AttnDims,
    q: &DeviceSlice<f32>,
    rope_q: Option<&DeviceSlice<f32>>,
    k_cache: &DeviceSlice<f16>,
    v_cache: &DeviceSlice<f16>,
    start: usize,
    t: usize,
    part: &mut DeviceSlice<f32>,
    out: &mut DeviceSlice<f16>,
) -> Result<()> {
    const OP: &str = "model::attention";
    dims.check(OP)?;
    let (h, hd) = (dims.heads, dims.head_dim);
    if t == 0 || start + t > dims.max_seq {
        return Err(shape(
            OP,
            format!("positions {start}..{} (cache {})", start + t, dims.max_seq),
        ));
    }
    need(OP, "q", q.len(), t * h * hd)?;
    need(OP, "out", out.len(), t * h * hd)?;
    let cache = dims.kv_heads * dims.max_seq * hd;
    need(OP, "k_cache", k_cache.len(), cache)?;
    need(OP, "v_cache", v_cache.len(), cache)?;
    let (splits, split_len) = dims.splits(start, t);
    need(OP, "part", part.len(), attn_part_len(t, h, hd, splits))?;
    let g = h / dims.kv_heads;
    let smem = dims.smem_bytes() as u32;
    let mut p = AttnArg {
        p: dims.params(
            addr(q),
            (k_cache, v_cache),
            (part, out),
            t,
            start,
            split_len,
        ),
    };
    let prefill = prefill_attention_kernel(t, hd);
    if let Some(rope) = rope_q {
        if prefill.is_none() {
            return Err(shape(
                OP,
                format!("queries rotated on load need the tensor-core kernel (t={t}, hd={hd})"),
            ));
        }
        need(OP, "rope_q", rope.len(), dims.max_seq * hd)?;
        check_align(OP, "rope_q", addr(rope), 16)?;
        p.p.rope_q = addr(rope);
    }
    if let Some(name) = prefill {
        // SAFETY: attn_prefill_hHD(AttnParams) takes the struct by value
        // (layout as for attn_fwd above); HD = hd (the kernel's compile-time
        // head size); block (head, y) takes query tile qt = gridDim.y-1-y
        // (heaviest first), reads q rows qt·64.. < t (t x H hd, checked)
        // and, with rope_q, its table rows start.. < start+t <= max_seq
        // (max_seq x hd floats, checked), cache positions <= start+t-1 <
        // max_seq of kv head head / (H / KVH)
        // (checked), and writes out rows < t (checked); 4 warps (one
        // warpgroup: the sm_90a path's wgmma needs exactly 128 threads),
        // static shared memory only (34 KiB at hd 128).
        return unsafe {
            gpu.launch(
                &gpu.model,
                name,
                Shape::new((h as u32, (t as u32).div_ceil(64)), 128).pdl(true),
                p,
                || format!("t={t} start={start} tensor cores"),
            )
        };
    }
    let grid = (dims.kv_heads as u32, t as u32, splits as u32);
    // SAFETY: attn_fwd(AttnParams) takes the struct by value, laid out as
    // AttnParams (5 pointers, 8 ints, 1 float, #[repr(C)]); block (kvh, i,
    // s) reads q row i (t x H hd, checked), cache positions < start+t <=
    // max_seq of head kvh (checked), writes out row i or its partials
    // (t x H x splits x (hd+2), checked); dynamic shared memory = smem
    // (q of the G heads, one key and one value tile), at most 48 KiB for
    // hd <= 256 and G <= 16 (checked by dims.check).
    unsafe {
        gpu.launch(
            &gpu.model,
            "attn_fwd",
            Shape::new(grid, (g * 32) as u32).shared(smem).pdl(true),
            p,
            || format!("t={t} start={start} splits={splits}"),
        )?;
    }
    if splits > 1 {
        attn_combine(gpu, part, splits, h, hd, t, out, None)?;
    }
    Ok(())
}

/// Merges attention's split partials into `out`; `zero_q`: the raw q|k|v
/// rows whose q heads the splits read, left zero (fused RoPE).
#[allow(clippy::too_many_arguments)]
fn attn_combine(
    gpu: &Gpu,
    part: &DeviceSlice<f32>,
    splits: usize,
    h: usize,
    hd: usize,
    t: usize,
    out: &mut DeviceSlice<f16>,
    zero_q: Option<(&mut DeviceSlice<f32>, usize)>,
) -> Result<()> {
    kernel_params! {
        struct AttnCombine {
            part: u64, splits: i32, h: i32, hd: i32, out: u64, zero_q: u64, qkv_row: i32,
        }
    }
    let (zero_q, qkv_row) = match zero_q {
        Some((q, row)) => (addr(q), row as i32),
        None => (0, 0),
    };
    let p = AttnCombine {
        part: addr(part),
        splits: splits as i32,
        h: h as i32,
        hd: hd as i32,
        out: addr(out),
        zero_q,
        qkv_row,
    };
    // SAFETY: attn_combine(const float*, int, int, int, half*, float*,
    // int) = AttnCombine; block (head, i) reads the splits partials of (i,
    // head) inside part, writes out row i and zeroes head `head` of the
    // q|k|v row i where zero_q is set (the callers checked all three).
    unsafe {
        gpu.launch(
            &gpu.model,
            "attn_combine",
            Shape::new((h as u32, t as u32), 128).pdl(true),
            p,
            || format!("t={t} splits={splits}"),
        )
    }
}

/// Whether decode attention's `splits` key splits are merged inside the
/// attention kernel, in a thread-block cluster per KV head (2 to
/// [`ATTN_CLUSTER_MAX`] splits, the sm_90a cubin: the compute_80 PTX has no
/// clusters, and the partials fit the 48 KiB of shared memory), instead of
/// by `attn_combine`.
pub(crate) fn decode_cluster(gpu: &Gpu, dims: &AttnDims, splits: usize) -> bool {
    gpu.info().cubin
        && (2..=ATTN_CLUSTER_MAX).contains(&splits)
        && dims.cluster_smem_bytes() <= 48 * 1024
}

/// Decode attention with RoPE fused in: one token at position `start`,
/// straight from its q|k|v projection row `qkv` (`[(H + 2 KVH) hd]` fp32,
/// unrotated). Rotates q and the new key as [`rope_kv`] does, writes the
/// new key and value into this layer's cache, and leaves the row zero; the
/// output and the split partials as [`attention`] (bitwise equal to
/// `rope_kv` then `attention`: same arithmetic, same order). With `cluster`
/// the splits merge themselves where [`decode_cluster`] says they can (the
/// same bits as `attn_combine`, which merges them otherwise; `part` then
/// unused).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_attention_decode(
    gpu: &Gpu,
    dims: &AttnDims,
    qkv: &mut DeviceSlice<f32>,
    rope: &DeviceSlice<f32>,
    start: usize,
    k_cache: &mut DeviceSlice<f16>,
    v_cache: &mut DeviceSlice<f16>,
    part: &mut DeviceSlice<f32>,
    out: &mut DeviceSlice<f16>,
    cluster: bool,
) -> Result<()> {
    const OP: &str = "model::rope_attention_decode";
    dims.check(OP)?;
    let (h, hd) = (dims.heads, dims.head_dim);
    if start >= dims.max_seq {
        return Err(shape(
            OP,
            format!("position {start} beyond the cache of {}", dims.max_seq),
        ));
    }
    need(OP, "qkv", qkv.len(), dims.qkv_width())?;
    need(OP, "rope", rope.len(), dims.max_seq * hd)?;
    check_align(OP, "rope", addr(rope), 8)?;
    need(OP, "out", out.len(), h * hd)?;
    let cache = dims.kv_heads * dims.max_seq * hd;
    need(OP, "k_cache", k_cache.len(), cache)?;
    need(OP, "v_cache", v_cache.len(), cache)?;
    let (splits, split_len) = dims.splits(start, 1);
    need(OP, "part", part.len(), attn_part_len(1, h, hd, splits))?;
    kernel_params! {
        struct AttnRopeArgs {
            p: AttnParams, rope: u64, qkv: u64,
        }
    }
    let p = AttnRopeArgs {
        p: dims.params(
            addr(qkv),
            (k_cache, v_cache),
            (part, out),
            1,
            start,
            split_len,
        ),
        rope: addr(rope),
        qkv: addr(qkv),
    };
    let grid = (dims.kv_heads as u32, 1, splits as u32);
    let block = (h / dims.kv_heads * 32) as u32;
    // Head size 128 (Mixtral's): the kernels compiled for it (the same
    // arithmetic; no integer divisions by hd on the path after the wait).
    let hd128 = hd == 128;
    if cluster && decode_cluster(gpu, dims, splits) {
        // SAFETY: attn_fwd_rope_cluster(_hd128)(AttnParams, const float2*,
        // float*) = AttnRopeArgs (_hd128: p.hd is 128); reads and writes as
        // attn_fwd_rope below, except that the clusters (1, 1, splits), 2 <=
        // splits <= 8 (checked by decode_cluster; sm_90a cubin, where clusters
        // exist) write the output instead of partials (part unused) and zero
        // the q heads of their group; each block's partials lie in its own
        // dynamic shared memory (cluster_smem_bytes <= 48 KiB, checked), read
        // by its peers before any block exits.
        return unsafe {
            gpu.launch(
                &gpu.model,
                if hd128 {
                    "attn_fwd_rope_cluster_hd128"
                } else {
                    "attn_fwd_rope_cluster"
                },
                Shape::new(grid, block)
                    .shared(dims.cluster_smem_bytes() as u32)
                    .pdl(true)
                    .cluster((1, 1, splits as u32)),
                p,
                || format!("start={start} splits={splits} fused RoPE, cluster"),
            )
        };
    }
    // SAFETY: attn_fwd_rope(_hd128)(AttnParams, const float2*, float*) =
    // AttnRopeArgs (the struct by value, then two pointers; _hd128: p.hd is
    // 128); block (kvh, 0, s) reads the q heads of group kvh and k/v head kvh
    // of the qkv row (checked), zeroes what it read (the q heads only with one
    // split), reads rope row start < max_seq (checked, 8-byte aligned), cache
    // positions < start of head kvh and writes position start (checked); out or
    // its partials as attention's launch; shared memory as there.
    unsafe {
        gpu.launch(
            &gpu.model,
            if hd128 {
                "attn_fwd_rope_hd128"
            } else {
                "attn_fwd_rope"
            },
            Shape::new(grid, block)
                .shared(dims.smem_bytes() as u32)
                .pdl(true),
            p,
            || format!("start={start} splits={splits} fused RoPE"),
        )?;
    }
    if splits > 1 {
        let row = dims.qkv_width();
        attn_combine(gpu, part, splits, h, hd, 1, out, Some((qkv, row)))?;
    }
    Ok(())
}
