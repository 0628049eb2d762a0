//! The expert FFN at prefill sizes on the decode packing
//! (kernels/gemm_packed.cuh): a grouped tensor-core GEMM that reads each
//! expert's [`ExpertWeights`] as they are (16x16 tiles in mma A-fragment
//! order) instead of a second, prefill layout. For a model whose experts fit
//! the GPU once (Mixtral 8x7B on one H200) this is the prefill path; the
//! stacked prefill layout ([`PrefillWeights`], [`ffn_grouped`]) stays the
//! faster choice where both layouts fit.
//!
//! Two launches per step, as [`ffn_grouped`]: gate/up (h = silu(W1 x) ·
//! W3 x, `[rows][m_h]`), then down (`[rows][m]`). Rows are the tokens of
//! every group (expert) in group order, counts on the host or row offsets on
//! the device ([`Rows`]).
//!
//! The kernels' table and their launch: `packed_launch.rs`.

use cust::memory::DeviceSlice;
use half::f16;

use super::*;
use crate::error::{check_align, shape, Error, Result};
use crate::ffn::{ExpertWeights, PackedMatrix};
use crate::runtime::{addr, Gpu};

/// [`ffn_grouped`] on the decode packing: y = W2 (silu(W1 x) · W3 x) for
/// the rows of `x` (`[rows][m]` fp16, `counts[g]` rows of group g in group
/// order) through expert `experts[g]`, on tensor cores (compute capability
/// 9.0; m and m_h multiples of 64, else [`Error::Unsupported`]). `h`
/// (`[rows][m_h]` fp16) holds the intermediate; `out` gets `[rows][m]`.
pub fn ffn_packed_grouped(
    gpu: &Gpu,
    experts: &[&ExpertWeights],
    x: &DeviceSlice<f16>,
    counts: &[usize],
    h: &mut DeviceSlice<f16>,
    out: &mut DeviceSlice<f16>,
) -> Result<()> {
    ffn_packed(gpu, experts, x, Rows::Host(counts), h, out)
}

/// Which of [`ffn_packed`]'s two launches run, and at what tile width
/// (`Some(0)`: [`pick_bn`]'s choice; `Some(bn)`: that instantiation; `None`:
/// skipped).
#[derive(Clone, Copy)]
pub(crate) struct PackedStages {
    gate_up: Option<u32>,
    down: Option<u32>,
}

impl PackedStages {
    const BOTH: Self = Self {
        gate_up: Some(0),
        down: Some(0),
    };
}

impl Gpu {
    /// Tests and timings of the packed GEMM only: [`ffn_packed_grouped`]
    /// with each launch's tokens per tile forced (`Some(0)`: the usual
    /// choice; `None`: that launch skipped, `h` taken as it is; 288: down's
    /// plain/extended pair of launches, 256 + 32).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn ffn_packed_variant(
        &self,
        experts: &[&ExpertWeights],
        x: &DeviceSlice<f16>,
        counts: &[usize],
        h: &mut DeviceSlice<f16>,
        out: &mut DeviceSlice<f16>,
        gate_up_bn: Option<u32>,
        down_bn: Option<u32>,
    ) -> Result<()> {
        let st = PackedStages {
            gate_up: gate_up_bn,
            down: down_bn,
        };
        ffn_packed_stages(self, experts, x, Rows::Host(counts), h, out, st)
    }
}

/// y = W2 (silu(W1 x) · W3 x) for rows of `x` (`[rows][m]` fp16, the tokens
/// of group g in rows `offsets[g]..offsets[g+1]`) through group g's expert
/// `experts[g]` in the decode packing, on tensor cores; `h`
/// (`[rows][m_h]`) is the intermediate, `out` gets `[rows][m]`. `rows`:
/// counts per group ([`Rows::Host`]) or row offsets written on the device.
pub(crate) fn ffn_packed(
    gpu: &Gpu,
    experts: &[&ExpertWeights],
    x: &DeviceSlice<f16>,
    rows: Rows<'_>,
    h: &mut DeviceSlice<f16>,
    out: &mut DeviceSlice<f16>,
) -> Result<()> {
    ffn_packed_stages(gpu, experts, x, rows, h, out, PackedStages::BOTH)
}

/// [`ffn_packed`] with its launches chosen ([`PackedStages`]).
fn ffn_packed_stages(
    gpu: &Gpu,
    experts: &[&ExpertWeights],
    x: &DeviceSlice<f16>,
    rows: Rows<'_>,
    h: &mut DeviceSlice<f16>,
    out: &mut DeviceSlice<f16>,
    stages: PackedStages,
) -> Result<()> {
    const OP: &str = "ffn_packed";
    let Some(first) = experts.first() else {
        return Err(shape(OP, "no experts".into()));
    };
    let (m, m_h) = (first.m, first.m_h);
    if !packed_supported(gpu, m, m_h) {
        return Err(Error::Unsupported {
            op: OP,
            detail: format!(
                "needs compute capability 9.0 and m, m_h multiples of {BK} (m={m}, m_h={m_h}, cc {}.{})",
                gpu.info().cc.0,
                gpu.info().cc.1
            ),
        });
    }
    if experts.len() != rows.groups() || experts.len() > MAX_GROUPS {
        return Err(shape(
            OP,
            format!(
                "{} experts for {} groups (1..={MAX_GROUPS})",
                experts.len(),
                rows.groups()
            ),
        ));
    }
    if let Some(bad) = experts.iter().find(|e| !e.same_packing(first)) {
        return Err(shape(
            OP,
            format!("experts of different layouts: {first:?} and {bad:?}"),
        ));
    }
    let n = rows.rows();
    if x.len() < n * m || h.len() < n * m_h || out.len() < n * m {
        return Err(shape(
            OP,
            format!(
                "{n} rows: x has {}, h {}, out {} elements (need x{m}, x{m_h}, x{m})",
                x.len(),
                h.len(),
                out.len()
            ),
        ));
    }
    for (name, a) in [("x", addr(x)), ("h", addr(h)), ("out", addr(out))] {
        check_align(OP, name, a, 16)?;
    }
    let kmajor = first.k_major;
    // Strides in uint4 (16-byte) units, as the decode kernels take them.
    let strides = |units: usize, k_tiles: usize, nmat: usize| -> (i64, i64) {
        let t = (nmat * 32) as i64;
        if kmajor {
            (t, units as i64 * t)
        } else {
            (k_tiles as i64 * t, t)
        }
    };
    let w13: Vec<u64> = experts.iter().map(|e| addr(&e.w13)).collect();
    let w2: Vec<u64> = experts.iter().map(|e| addr(&e.w2)).collect();
    let (us, ks) = strides(m_h / 16, m / 16, 2);
    let force = |b: u32| (b > 0).then_some(b);
    if let Some(bn) = stages.gate_up {
        launch_packed(
            gpu,
            OP,
            PackedGemm {
                kind: PackedKind::Gated,
                out_kind: PackedOut::H16,
                ldo: m_h,
                w: &w13,
                unit_stride: us,
                kt_stride: ks,
                kmajor,
                x: addr(x),
                k: m,
                n_rows: m_h,
                rows,
                out: addr(h),
                force_bn: force(bn),
                rope: None,
            },
        )?;
    }
    let kind = if first.down_pairs {
        PackedKind::Pairs
    } else {
        PackedKind::Plain
    };
    let (us, ks) = strides(m / kind.unit_rows(), m_h / 16, kind.nmat());
    let Some(bn) = stages.down else {
        return Ok(());
    };
    launch_packed(
        gpu,
        OP,
        PackedGemm {
            kind,
            out_kind: PackedOut::H16,
            ldo: m,
            w: &w2,
            unit_stride: us,
            kt_stride: ks,
            kmajor,
            x: addr(h),
            k: m_h,
            n_rows: m,
            rows,
            out: addr(out),
            force_bn: force(bn),
            rope: None,
        },
    )
}

/// `y[i][r] (+)= Σ_k W[r][k] · x[i][k]` for `t` token rows of `x` (`[t][k]`
/// fp16), on tensor cores: fp32 `y` with row stride `ldy` (≥ rows of W),
/// stored or (with `accumulate`) added to; `force_bn`: the tokens per tile
/// instead of the usual choice (tests and timings).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed_f32(
    gpu: &Gpu,
    w: &PackedMatrix,
    x: &DeviceSlice<f16>,
    t: usize,
    y: &mut DeviceSlice<f32>,
    ldy: usize,
    accumulate: bool,
    force_bn: Option<u32>,
) -> Result<()> {
    const OP: &str = "gemm_packed_f32";
    let (n, k) = (w.rows, w.cols);
    if t == 0 || ldy < n || x.len() < t * k || y.len() < (t - 1) * ldy + n {
        return Err(shape(
            OP,
            format!(
                "T={t}, W {n} x {k}, ldy={ldy}: x has {}, y {} elements",
                x.len(),
                y.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    let out_kind = if accumulate {
        PackedOut::F32Add
    } else {
        PackedOut::F32
    };
    launch_matrix(
        gpu,
        OP,
        w,
        addr(x),
        t,
        out_kind,
        (addr(y), ldy),
        force_bn,
        None,
    )
}

/// One launch of a [`PackedMatrix`] (one group, 16-row units, k-major) on
/// `t` token rows at `x`: out (address, row stride) and, for
/// [`PackedOut::QkvRope`], its outputs.
#[allow(clippy::too_many_arguments)]
fn launch_matrix(
    gpu: &Gpu,
    op: &'static str,
    w: &PackedMatrix,
    x: u64,
    t: usize,
    out_kind: PackedOut,
    (out, ldo): (u64, usize),
    force_bn: Option<u32>,
    rope: Option<RopeOut>,
) -> Result<()> {
    let n = w.rows;
    let counts = [t];
    launch_packed(
        gpu,
        op,
        PackedGemm {
            kind: PackedKind::Plain,
            out_kind,
            ldo,
            w: &[addr(&w.buf)],
            unit_stride: 32,
            kt_stride: (n / 16 * 32) as i64,
            kmajor: true,
            x,
            k: w.cols,
            n_rows: n,
            rows: Rows::Host(&counts),
            out,
            force_bn,
            rope,
        },
    )
}

/// The q|k|v projection of a prompt chunk with RoPE and the cache write in
/// the GEMM's epilogue (kernels/gemm_packed.cuh, `PO_QKV_ROPE`): for the
/// `t` token rows of `x` (`[t][k]` fp16) at positions `start..start + t`,
/// q = W_q x, not rotated, into `q_out` (`[t][heads · 128]` fp32: the
/// prefill attention rotates it as it loads it), k = W_k x rotated and
/// v = W_v x into this layer's caches (`[kv_heads][max_seq][128]` fp16),
/// as [`gemm_packed_f32`] then `rope_kv` would write them (the same
/// rotation, bitwise). `w`: `(heads + 2 kv_heads) · 128` rows
/// (head dimension 128: one head per 128-row block); `rope`:
/// `[max_seq][64]` (cos, sin) fp32 pairs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed_qkv_rope(
    gpu: &Gpu,
    w: &PackedMatrix,
    x: &DeviceSlice<f16>,
    t: usize,
    rope: &DeviceSlice<f32>,
    start: usize,
    (heads, kv_heads, max_seq): (usize, usize, usize),
    q_out: &mut DeviceSlice<f32>,
    k_cache: &mut DeviceSlice<f16>,
    v_cache: &mut DeviceSlice<f16>,
    force_bn: Option<u32>,
) -> Result<()> {
    const OP: &str = "gemm_packed_qkv_rope";
    const HD: usize = 128;
    let (n, k) = (w.rows, w.cols);
    let cache = kv_heads * max_seq * HD;
    if t == 0
        || heads == 0
        || kv_heads == 0
        || n != (heads + 2 * kv_heads) * HD
        || start + t > max_seq
        || x.len() < t * k
        || q_out.len() < t * heads * HD
        || k_cache.len() < cache
        || v_cache.len() < cache
        || rope.len() < max_seq * HD
    {
        return Err(shape(
            OP,
            format!(
                "T={t} at {start}, W {n} x {k}, heads {heads}/{kv_heads} of {HD}, cache of {max_seq}: \
                 x {}, q_out {}, k_cache {}, v_cache {}, rope {} elements",
                x.len(),
                q_out.len(),
                k_cache.len(),
                v_cache.len(),
                rope.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "rope", addr(rope), 8)?;
    let rope = RopeOut {
        q_out: addr(q_out),
        k_cache: addr(k_cache),
        v_cache: addr(v_cache),
        rope: addr(rope),
        start,
        heads,
        kv_heads,
        max_seq,
    };
    launch_matrix(
        gpu,
        OP,
        w,
        addr(x),
        t,
        PackedOut::QkvRope,
        (0, n),
        force_bn,
        Some(rope),
    )
}

impl Gpu {
    /// Tests and timings of the packed GEMM only: the projection GEMM
    /// (`y (+)= W x`, fp32 `y`) with its tokens per tile forced (`None`:
    /// the usual choice).
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_packed_f32_variant(
        &self,
        w: &PackedMatrix,
        x: &DeviceSlice<f16>,
        t: usize,
        y: &mut DeviceSlice<f32>,
        ldy: usize,
        accumulate: bool,
        bn: Option<u32>,
    ) -> Result<()> {
        gemm_packed_f32(self, w, x, t, y, ldy, accumulate, bn)
    }
}
