//! Launches of `kernels/model.cu` but attention's (`super::attention`):
//! each checks shapes and alignment, then launches with a typed parameter
//! struct (the launch is the only `unsafe`). Every launch allows
//! programmatic dependent launch: each kernel waits (`griddepcontrol.wait`)
//! before touching memory an earlier kernel of the stream reads or writes;
//! only the GEMV loads its first weights, and the fused decode attention its
//! cached keys, before waiting (no kernel of the step writes them).

use cust::memory::DeviceSlice;
use half::f16;

use crate::error::{check_align, shape, Result};
use crate::launch::{kernel_params, Shape};
use crate::prefill::{CombineSrc, DeferredCombine};
use crate::runtime::{addr, Gpu};

/// Most tokens one GEMV launch multiplies (the kernel's largest template).
pub const GEMV_MAX_TOKENS: usize = 16;

/// Tokens from which a chunk's attention projections store their output
/// (the packed GEMM's tiles alone then give the GPU about two waves or
/// more); shorter chunks add into a zeroed buffer (q|k|v) or the residual
/// (o), so that the GEMM can split k across the SMs: at 128 tokens the
/// stored GEMM ran 1.45 waves of 1 MB weight tiles, 44 µs per projection
/// on an H200 (run B1), where its reads take 12.
pub(crate) const PROJ_STORE_MIN_TOKENS: usize = 512;

pub(super) fn need(op: &'static str, what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(shape(
            op,
            format!("{what} has {have} elements, needs {want}"),
        ));
    }
    Ok(())
}

pub(super) fn i32_of(op: &'static str, what: &str, v: usize) -> Result<i32> {
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

/// What [`add_rmsnorm`] adds into the residual first.
#[derive(Clone, Copy)]
pub(crate) enum NormAdd<'a> {
    /// Nothing.
    None,
    /// `[n][d]` fp32 rows (the o projection, a MoE step's output).
    Rows(&'a DeviceSlice<f32>),
    /// A MoE step's deferred combine, summed here as `combine_rows_f32`
    /// sums it (the same bits, without its fp32 rows' round trip).
    Combine(DeferredCombine),
}

/// Per row: `resid += add` (unless [`NormAdd::None`]), then `out = w ⊙
/// rmsnorm(resid)` in fp16 (row pitch `out_stride`). `early`: the next
/// kernel may launch before this one waits for the previous (programmatic
/// dependent launch; it must wait itself before reading what this one
/// writes, as every kernel after a norm does).
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rmsnorm(
    gpu: &Gpu,
    resid: &mut DeviceSlice<f32>,
    add: NormAdd<'_>,
    w: &DeviceSlice<f32>,
    eps: f32,
    n: usize,
    d: usize,
    out: &mut DeviceSlice<f16>,
    out_stride: usize,
    early: bool,
) -> Result<()> {
    const OP: &str = "model::add_rmsnorm";
    need(OP, "resid", resid.len(), n * d)?;
    need(OP, "w", w.len(), d)?;
    match add {
        NormAdd::Rows(a) => need(OP, "add", a.len(), n * d)?,
        NormAdd::Combine(c) if c.tokens != n || c.m != d => {
            return Err(shape(
                OP,
                format!("combine of {} x {} for {n} rows of {d}", c.tokens, c.m),
            ))
        }
        _ => {}
    }
    if out_stride < d {
        return Err(shape(OP, format!("out_stride={out_stride} < d={d}")));
    }
    need(OP, "out", out.len(), (n - 1) * out_stride + d)?;
    let (rows, threads) = norm_shape(n, d);
    let shape_ = Shape::new(n as u32, threads).pdl(true);
    let (d_i, stride_i) = (i32_of(OP, "d", d)?, i32_of(OP, "out_stride", out_stride)?);
    if let NormAdd::Combine(c) = add {
        kernel_params! {
            struct AddRmsnormCombine { resid: u64, cs: CombineSrc, w: u64, eps: f32, d: i32, out: u64, out_stride: i32, early: i32 }
        }
        let p = AddRmsnormCombine {
            resid: addr(resid),
            cs: c.src,
            w: addr(w),
            eps,
            d: d_i,
            out: addr(out),
            out_stride: stride_i,
            early: i32::from(early),
        };
        let name = if rows {
            "add_rmsnorm_combine_rows"
        } else {
            "add_rmsnorm_combine"
        };
        // SAFETY: add_rmsnorm_combine[_rows](float*, CombineSrc, const
        // float*, float, int, half*, int, int) = AddRmsnormCombine
        // (CombineSrc mirrored, repr(C)); block t < n touches resid row t
        // (n x d, checked), w[0..d) and out[t·out_stride..+d) (checked),
        // and reads the combine's slot and weight rows t (tokens = n x
        // topk, checked by DeferredCombine::new) and ys rows at slots in
        // [0, ys_rows) with ys_rows = the ys buffer's rows of m = d.
        return unsafe {
            gpu.launch(&gpu.model, name, shape_, p, || {
                format!("n={n} d={d} combine")
            })
        };
    }
    kernel_params! {
        struct AddRmsnorm { resid: u64, add: u64, w: u64, eps: f32, d: i32, out: u64, out_stride: i32, early: i32 }
    }
    let p = AddRmsnorm {
        resid: addr(resid),
        add: match add {
            NormAdd::Rows(a) => addr(a),
            _ => 0,
        },
        w: addr(w),
        eps,
        d: d_i,
        out: addr(out),
        out_stride: stride_i,
        early: i32::from(early),
    };
    let name = if rows {
        "add_rmsnorm_rows"
    } else {
        "add_rmsnorm"
    };
    // SAFETY: add_rmsnorm[_rows](float*, const float*, const float*, float,
    // int, half*, int, int) = AddRmsnorm; block t < n touches resid/add rows t
    // (n x d, checked), w[0..d) and out[t·out_stride..+d) (checked);
    // add is null or n x d.
    unsafe { gpu.launch(&gpu.model, name, shape_, p, || format!("n={n} d={d}")) }
}

/// add_rmsnorm's kernel shape for `n` rows of `d` (whether the `_rows`
/// kernels, block size): many rows, 256 threads of 16 elements each
/// (add_rmsnorm[_combine]_rows); a few, where one block's latency is the
/// cost, 1024 threads of 8 at d = 4096.
fn norm_shape(n: usize, d: usize) -> (bool, u32) {
    if n >= NORM_ROWS_MIN {
        (true, 256)
    } else {
        (false, if d >= 4096 { 1024 } else { 256 })
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
                crate::prefill::gemm_packed_f32(gpu, p.w, x, t, y, ldy, accumulate, None)
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
