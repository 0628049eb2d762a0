//! Launches of `kernels/model.cu`: each checks shapes and alignment, then
//! launches with a typed parameter struct (the launch is the only `unsafe`).
//! Every launch allows programmatic dependent launch: each kernel waits
//! (`griddepcontrol.wait`) before touching memory an earlier kernel of the
//! stream reads or writes; only the GEMV loads its first weights before
//! waiting (no kernel writes weights).

use cust::memory::DeviceSlice;
use half::f16;

use crate::error::{check_align, shape, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::{addr, Gpu};

/// Most tokens one GEMV launch multiplies (the kernel's largest template).
pub const GEMV_MAX_TOKENS: usize = 16;
/// Largest head dimension of the attention kernel.
pub const ATTN_MAX_HEAD_DIM: usize = 256;
/// Keys per shared-memory tile of the attention kernel.
const ATTN_TILE: usize = 32;

fn need(op: &'static str, what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(shape(
            op,
            format!("{what} has {have} elements, needs {want}"),
        ));
    }
    Ok(())
}

fn i32_of(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| shape(op, format!("{what}={v} exceeds i32")))
}

/// `resid[t] = table[tokens[t]]` widened to fp32 (`tokens` on the device,
/// checked against the vocabulary by the caller).
pub(crate) fn embed_rows(
    gpu: &Gpu,
    table: &DeviceSlice<f16>,
    tokens: &DeviceSlice<i32>,
    n: usize,
    d: usize,
    resid: &mut DeviceSlice<f32>,
) -> Result<()> {
    const OP: &str = "model::embed_rows";
    need(OP, "tokens", tokens.len(), n)?;
    need(OP, "resid", resid.len(), n * d)?;
    need(OP, "table", table.len(), d)?;
    kernel_params! {
        struct EmbedRows { table: u64, tokens: u64, vocab: i32, d: i32, resid: u64 }
    }
    let p = EmbedRows {
        table: addr(table),
        tokens: addr(tokens),
        vocab: i32_of(OP, "vocab", table.len() / d)?,
        d: i32_of(OP, "d", d)?,
        resid: addr(resid),
    };
    // SAFETY: embed_rows(const half*, const int*, int, int, float*) =
    // EmbedRows; block t reads tokens[t] (t < n <= tokens.len()), the
    // table row it names if below vocab = table.len() / d, else row 0, and
    // writes resid[t][0..d) (n x d <= resid.len(), checked).
    unsafe {
        gpu.launch(
            &gpu.model,
            "embed_rows",
            Shape::new(n as u32, 256).pdl(true),
            p,
            || format!("n={n} d={d}"),
        )
    }
}

/// Rows from which [`add_rmsnorm`] runs 256-thread blocks.
pub(crate) const NORM_ROWS_MIN: usize = 32;

/// Per row: `resid += add` (if given), then `out = w ⊙ rmsnorm(resid)` in
/// fp16 (row pitch `out_stride`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rmsnorm(
    gpu: &Gpu,
    resid: &mut DeviceSlice<f32>,
    add: Option<&DeviceSlice<f32>>,
    w: &DeviceSlice<f32>,
    eps: f32,
    n: usize,
    d: usize,
    out: &mut DeviceSlice<f16>,
    out_stride: usize,
) -> Result<()> {
    const OP: &str = "model::add_rmsnorm";
    need(OP, "resid", resid.len(), n * d)?;
    need(OP, "w", w.len(), d)?;
    if let Some(a) = add {
        need(OP, "add", a.len(), n * d)?;
    }
    if out_stride < d {
        return Err(shape(OP, format!("out_stride={out_stride} < d={d}")));
    }
    need(OP, "out", out.len(), (n - 1) * out_stride + d)?;
    kernel_params! {
        struct AddRmsnorm { resid: u64, add: u64, w: u64, eps: f32, d: i32, out: u64, out_stride: i32 }
    }
    let p = AddRmsnorm {
        resid: addr(resid),
        add: add.map_or(0, addr),
        w: addr(w),
        eps,
        d: i32_of(OP, "d", d)?,
        out: addr(out),
        out_stride: i32_of(OP, "out_stride", out_stride)?,
    };
    // Many rows: 256 threads of 16 elements each (add_rmsnorm_rows); a
    // few: one block's latency is the cost, 1024 threads of 8 at d = 4096.
    let (name, threads) = if n >= NORM_ROWS_MIN {
        ("add_rmsnorm_rows", 256)
    } else {
        ("add_rmsnorm", if d >= 4096 { 1024 } else { 256 })
    };
    // SAFETY: add_rmsnorm[_rows](float*, const float*, const float*, float,
    // int, half*, int) = AddRmsnorm; block t < n touches resid/add rows t
    // (n x d, checked), w[0..d) and out[t·out_stride..+d) (checked);
    // add is null or n x d.
    unsafe {
        gpu.launch(
            &gpu.model,
            name,
            Shape::new(n as u32, threads).pdl(true),
            p,
            || format!("n={n} d={d}"),
        )
    }
}

/// `y[t][0..N) (+)= W x[t]` for `t < T` (at most [`GEMV_MAX_TOKENS`] per
/// launch; more rows loop): W `[N][K]` fp16, x `[T][K]` fp16, y fp32 with
/// row pitch `ldy`. `K % 8 == 0`, W and x 16-byte aligned.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv(
    gpu: &Gpu,
    w: &DeviceSlice<f16>,
    x: &DeviceSlice<f16>,
    k: usize,
    n: usize,
    t: usize,
    y: &mut DeviceSlice<f32>,
    ldy: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "model::gemv";
    if k % 8 != 0 || k == 0 || n == 0 || t == 0 || ldy < n {
        return Err(shape(
            OP,
            format!("K={k} (multiple of 8), N={n}, T={t}, ldy={ldy} (>= N)"),
        ));
    }
    need(OP, "W", w.len(), n * k)?;
    need(OP, "x", x.len(), t * k)?;
    need(OP, "y", y.len(), (t - 1) * ldy + n)?;
    check_align(OP, "W", addr(w), 16)?;
    check_align(OP, "x", addr(x), 16)?;
    kernel_params! {
        struct Gemv { w: u64, x: u64, k: i32, n: i32, t: i32, y: u64, ldy: i32, accumulate: i32 }
    }
    let warps = 8u32;
    let grid = (n as u32).div_ceil(warps);
    for t0 in (0..t).step_by(GEMV_MAX_TOKENS) {
        let tt = (t - t0).min(GEMV_MAX_TOKENS);
        let name = match tt {
            1 => "gemv_f16_t1",
            2 => "gemv_f16_t2",
            3..=4 => "gemv_f16_t4",
            5..=8 => "gemv_f16_t8",
            _ => "gemv_f16_t16",
        };
        let p = Gemv {
            w: addr(w),
            x: addr(x) + (t0 * k * 2) as u64,
            k: i32_of(OP, "K", k)?,
            n: i32_of(OP, "N", n)?,
            t: tt as i32,
            y: addr(y) + (t0 * ldy * 4) as u64,
            ldy: i32_of(OP, "ldy", ldy)?,
            accumulate: accumulate as i32,
        };
        // SAFETY: gemv_f16_tNT(const half*, const half*, int, int, int,
        // float*, int, int) = Gemv with tt <= NT; warp n < N reads W row n
        // (N x K, checked, 16-byte aligned and K % 8 == 0 so every row is)
        // and rows t0..t0+tt of x (t x K, checked), and writes y at
        // (t0 + i)·ldy + n < (t-1)·ldy + N (checked).
        unsafe {
            gpu.launch(
                &gpu.model,
                name,
                Shape::new(grid, warps * 32).pdl(true),
                p,
                || format!("K={k} N={n} T={tt}"),
            )?;
        }
    }
    Ok(())
}

/// A projection `y (+)= W x` of `t` token rows; where the layer holds W's
/// decode packing: above [`GEMV_MAX_TOKENS`] tokens the packed tensor-core
/// GEMM ([`crate::prefill::gemm_packed_f32`]), at most that many the decode
/// GEMV kernels ([`crate::ffn::gemv_packed_acc`], which add: `accumulate`)
/// where decode steps use the packing; else the row-major GEMV kernels.
/// Arguments as [`gemv`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn project(
    gpu: &Gpu,
    w: &DeviceSlice<f16>,
    packed: Option<Packed<'_>>,
    x: &DeviceSlice<f16>,
    k: usize,
    n: usize,
    t: usize,
    y: &mut DeviceSlice<f32>,
    ldy: usize,
    accumulate: bool,
) -> Result<()> {
    match packed {
        Some(p) if (p.w.rows(), p.w.cols()) == (n, k) => {
            if t > GEMV_MAX_TOKENS {
                crate::prefill::gemm_packed_f32(gpu, p.w, x, t, y, ldy, accumulate)
            } else if p.decode && accumulate {
                let cfg = if t > 8 { &p.cfg.down_wide } else { &p.cfg.down };
                crate::ffn::gemv_packed_acc(gpu, p.w, x, t, y, ldy, p.ws, cfg)
            } else {
                gemv(gpu, w, x, k, n, t, y, ldy, accumulate)
            }
        }
        _ => gemv(gpu, w, x, k, n, t, y, ldy, accumulate),
    }
}

/// A projection's decode packing with what its kernels need: the decode
/// GEMV's launch shapes and workspace, and whether decode steps use it
/// (else the row-major GEMV).
pub(crate) struct Packed<'a> {
    pub(crate) w: &'a crate::ffn::PackedMatrix,
    pub(crate) ws: &'a mut crate::ffn::FfnWorkspace,
    pub(crate) cfg: &'a crate::ffn::DecodeConfig,
    pub(crate) decode: bool,
}

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
    }
}

// model.cu's AttnParams: 5 pointers, 8 ints, 1 float, padded to 8 bytes.
const _: () = assert!(std::mem::size_of::<AttnParams>() == 80);
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
        std::env::var("WDMOE_ATTN_SPLIT_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&k: &usize| k >= ATTN_TILE)
            .unwrap_or(ATTN_TILE)
    })
}

/// Queries from which prefill attention runs on tensor cores.
pub(crate) const ATTN_TC_MIN_TOKENS: usize = 16;

/// The tensor-core prefill kernel for `t` queries of head size `hd`, if
/// one applies (t >= [`ATTN_TC_MIN_TOKENS`], hd 64 or 128).
fn prefill_attention_kernel(t: usize, hd: usize) -> Option<&'static str> {
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

/// Attention of `t` rotated queries (`q`, `[t][H hd]` fp32) at positions
/// `start..start+t` over this layer's cache; output `[t][H hd]` fp16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    gpu: &Gpu,
    dims: &AttnDims,
    q: &DeviceSlice<f32>,
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
    let keys = match dims.window {
        0 => start + t,
        w => (start + t).min(w),
    };
    let splits = attn_splits(t, keys);
    let split_len = keys.div_ceil(splits);
    need(OP, "part", part.len(), attn_part_len(t, h, hd, splits))?;
    let g = h / dims.kv_heads;
    let smem = dims.smem_bytes() as u32;
    let p = AttnArg {
        p: AttnParams {
            q: addr(q),
            k_cache: addr(k_cache),
            v_cache: addr(v_cache),
            part: addr(part),
            out: addr(out),
            t: t as i32,
            start: start as i32,
            h: h as i32,
            kvh: dims.kv_heads as i32,
            hd: hd as i32,
            max_seq: dims.max_seq as i32,
            window: dims.window as i32,
            split_len: split_len as i32,
            scale: (hd as f32).powf(-0.5),
        },
    };
    if let Some(name) = prefill_attention_kernel(t, hd) {
        // SAFETY: attn_prefill_hHD(AttnParams) takes the struct by value
        // (layout as for attn_fwd above); HD = hd (the kernel's compile-time
        // head size); block (head, y) takes query tile qt = gridDim.y-1-y
        // (heaviest first), reads q rows qt·64.. < t (t x H hd, checked),
        // cache positions <= start+t-1 < max_seq of kv head head / (H / KVH)
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

/// Decode attention with RoPE fused in: one token at position `start`,
/// straight from its q|k|v projection row `qkv` (`[(H + 2 KVH) hd]` fp32,
/// unrotated). Rotates q and the new key as [`rope_kv`] does, writes the
/// new key and value into this layer's cache, and leaves the row zero; the
/// output and the split partials as [`attention`] (bitwise equal to
/// `rope_kv` then `attention`: same arithmetic, same order).
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
    let keys = match dims.window {
        0 => start + 1,
        w => (start + 1).min(w),
    };
    let splits = attn_splits(1, keys);
    let split_len = keys.div_ceil(splits);
    need(OP, "part", part.len(), attn_part_len(1, h, hd, splits))?;
    kernel_params! {
        struct AttnRopeArgs {
            p: AttnParams, rope: u64, qkv: u64,
        }
    }
    let p = AttnRopeArgs {
        p: AttnParams {
            q: addr(qkv),
            k_cache: addr(k_cache),
            v_cache: addr(v_cache),
            part: addr(part),
            out: addr(out),
            t: 1,
            start: start as i32,
            h: h as i32,
            kvh: dims.kv_heads as i32,
            hd: hd as i32,
            max_seq: dims.max_seq as i32,
            window: dims.window as i32,
            split_len: split_len as i32,
            scale: (hd as f32).powf(-0.5),
        },
        rope: addr(rope),
        qkv: addr(qkv),
    };
    let grid = (dims.kv_heads as u32, 1, splits as u32);
    // SAFETY: attn_fwd_rope(AttnParams, const float2*, float*) =
    // AttnRopeArgs (the struct by value, then two pointers); block (kvh, 0, s)
    // reads the q heads of group kvh and k/v head kvh of the qkv row
    // (checked), zeroes what it read (the q heads only with one split),
    // reads rope row start < max_seq (checked, 8-byte aligned), cache
    // positions < start of head kvh and writes position start (checked);
    // out or its partials as attention's launch; shared memory as there.
    unsafe {
        gpu.launch(
            &gpu.model,
            "attn_fwd_rope",
            Shape::new(grid, (h / dims.kv_heads * 32) as u32)
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

/// Row-wise argmax of `[t][vocab]` fp32 logits into `out[t]` (-1 for a
/// row with a NaN); `host`: also into page-locked host memory (read it
/// after an event recorded behind this launch has completed).
pub(crate) fn argmax_rows(
    gpu: &Gpu,
    logits: &DeviceSlice<f32>,
    t: usize,
    vocab: usize,
    out: &mut DeviceSlice<i32>,
    host: Option<&mut cust::memory::LockedBuffer<i32>>,
) -> Result<()> {
    const OP: &str = "model::argmax_rows";
    need(OP, "logits", logits.len(), t * vocab)?;
    need(OP, "out", out.len(), t)?;
    let host_out = match host {
        Some(h) => {
            need(OP, "host", h.len(), t)?;
            h.as_mut_ptr() as u64
        }
        None => 0,
    };
    kernel_params! {
        struct Argmax { logits: u64, vocab: i32, out: u64, host_out: u64 }
    }
    let p = Argmax {
        logits: addr(logits),
        vocab: i32_of(OP, "vocab", vocab)?,
        out: addr(out),
        host_out,
    };
    // SAFETY: argmax_rows(const float*, int, int*, int*) = Argmax; block
    // i < t reads logits row i (t x vocab, checked) and writes out[i] and,
    // if set, host_out[i] (page-locked memory of t elements, checked: the
    // host pointer is valid on the device under unified addressing).
    unsafe {
        gpu.launch(
            &gpu.model,
            "argmax_rows",
            Shape::new(t as u32, 1024).pdl(true),
            p,
            || format!("t={t} vocab={vocab}"),
        )
    }
}
