//! Expert FFN for prefill, y = W2 (silu(W1 x) * (W3 x)), on Hopper tensor
//! cores (`wgmma` fed by the bulk tensor copy engine, `kernels/ffn_prefill.cu`):
//! the compute-bound path for tens to thousands of tokens per expert, for one
//! expert ([`ffn_prefill`]) or for all experts of a layer in one launch per
//! GEMM ([`ffn_grouped`], tokens sorted by expert).
//!
//! Two GEMMs per FFN: gate/up (W1 and W3 interleaved in blocks of 8 rows, the
//! silu(g)·u product formed in the epilogue, so the `[tokens, 2 m_h]`
//! intermediate never reaches device memory), then down (W2), split along k
//! when the output tiles alone would leave SMs idle. Tile width and split
//! count come from [`PrefillConfig::auto`] (a wave/bandwidth model), or are
//! given.
//!
//! Needs compute capability 9.0 (the sm_90a cubin); elsewhere the calls
//! return [`crate::Error::Unsupported`] (use [`crate::ffn_decode`]).

mod config;
mod expert;
mod launch;
mod packed;
mod packed_launch;
mod stream_k;
mod weights;

pub use config::*;
pub use expert::*;
pub(crate) use launch::*;
pub use packed::ffn_packed_grouped;
pub(crate) use packed::*;
pub(crate) use packed_launch::*;
pub(crate) use stream_k::StreamK;
pub use weights::*;

use cust::memory::DeviceSlice;
use half::f16;

use crate::error::{check_align, shape, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::{addr, Gpu};

/// Both GEMMs of the FFN over groups of rows: `x` rows in group order,
/// `b13`/`b2` the stacked weights of those groups.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ffn_groups(
    gpu: &Gpu,
    op: &'static str,
    m: usize,
    m_h: usize,
    b13: u64,
    b2: u64,
    x: u64,
    counts: Rows<'_>,
    out: u64,
    ws: &mut PrefillWorkspace,
    cfg: Option<&PrefillConfig>,
) -> Result<()> {
    let rows = counts.rows();
    if rows == 0 {
        return Ok(());
    }
    let cfg = match cfg {
        Some(c) => *c,
        None => PrefillConfig::auto(gpu.info(), &counts.model_counts(), m, m_h, ws),
    };
    if cfg.down.splits > 1 && cfg.down.splits as usize * rows * m > ws.partial.len() {
        return Err(shape(
            op,
            format!(
                "split-K {} x {rows} rows x m={m} exceeds the workspace's partial buffer ({} floats)",
                cfg.down.splits,
                ws.partial.len()
            ),
        ));
    }
    let h = addr(&ws.h);
    launch_gemm(
        gpu,
        op,
        Gemm {
            mode: Mode::SwiGlu,
            a: x,
            k: m,
            b: b13,
            n: 2 * m_h,
            rows: counts,
            out: h,
            ldo: m_h,
            split_stride: 0,
            cfg: cfg.gate_up,
        },
    )?;
    if cfg.down.splits == 1 {
        launch_gemm(
            gpu,
            op,
            Gemm {
                mode: Mode::Store,
                a: h,
                k: m_h,
                b: b2,
                n: m,
                rows: counts,
                out,
                ldo: m,
                split_stride: 0,
                cfg: cfg.down,
            },
        )
    } else {
        let part = addr(&ws.partial);
        launch_gemm(
            gpu,
            op,
            Gemm {
                mode: Mode::Partial,
                a: h,
                k: m_h,
                b: b2,
                n: m,
                rows: counts,
                out: part,
                ldo: m,
                split_stride: rows * m,
                cfg: cfg.down,
            },
        )?;
        splitk_reduce(gpu, part, cfg.down.splits, rows * m, rows, m, out)
    }
}

pub(crate) fn check_io(
    op: &'static str,
    w: &PrefillWeights,
    ws: &PrefillWorkspace,
    x: &DeviceSlice<f16>,
    out: &DeviceSlice<f16>,
    rows: usize,
) -> Result<()> {
    if (ws.m, ws.m_h) != (w.m, w.m_h) {
        return Err(shape(
            op,
            format!(
                "workspace for ({}, {}), weights are ({}, {})",
                ws.m, ws.m_h, w.m, w.m_h
            ),
        ));
    }
    if rows > ws.max_rows {
        return Err(shape(
            op,
            format!("{rows} rows, workspace holds {}", ws.max_rows),
        ));
    }
    let m = w.m;
    if x.len() < rows * m || out.len() < rows * m {
        return Err(shape(
            op,
            format!(
                "x has {} and out {} elements, {rows} rows x m={m} need {}",
                x.len(),
                out.len(),
                rows * m
            ),
        ));
    }
    check_align(op, "x", addr(x), 16)?;
    check_align(op, "out", addr(out), 16)?;
    Ok(())
}

/// y = W2 (silu(W1 x) * (W3 x)) of expert `expert` of `w` for `tokens` rows
/// of x (`[tokens][m]`, row-major fp16), written to `out` (`[tokens][m]`),
/// on the tensor-core path. `cfg` None picks [`PrefillConfig::auto`].
#[allow(clippy::too_many_arguments)]
pub fn ffn_prefill(
    gpu: &Gpu,
    w: &PrefillWeights,
    expert: usize,
    x: &DeviceSlice<f16>,
    tokens: usize,
    out: &mut DeviceSlice<f16>,
    ws: &mut PrefillWorkspace,
    cfg: Option<&PrefillConfig>,
) -> Result<()> {
    const OP: &str = "ffn_prefill";
    require_sm90a(gpu, OP)?;
    if expert >= w.experts {
        return Err(shape(OP, format!("expert {expert} of {}", w.experts)));
    }
    if tokens == 0 {
        return Err(shape(OP, "tokens = 0".into()));
    }
    check_io(OP, w, ws, x, out, tokens)?;
    let (m, m_h) = (w.m, w.m_h);
    let b13 = addr(&w.w13) + (expert * 2 * m * m_h * 2) as u64;
    let b2 = addr(&w.w2) + (expert * m * m_h * 2) as u64;
    ffn_groups(
        gpu,
        OP,
        m,
        m_h,
        b13,
        b2,
        addr(x),
        Rows::Host(&[tokens]),
        addr(out),
        ws,
        cfg,
    )
}

/// The FFNs of all experts of `w` in one launch per GEMM: `x` holds
/// `counts[e]` rows for expert e, in expert order (tokens sorted by expert,
/// e.g. by [`gather_rows`]); `out` gets the same row order. Experts with no
/// rows cost nothing.
#[allow(clippy::too_many_arguments)]
pub fn ffn_grouped(
    gpu: &Gpu,
    w: &PrefillWeights,
    x: &DeviceSlice<f16>,
    counts: &[usize],
    out: &mut DeviceSlice<f16>,
    ws: &mut PrefillWorkspace,
    cfg: Option<&PrefillConfig>,
) -> Result<()> {
    const OP: &str = "ffn_grouped";
    require_sm90a(gpu, OP)?;
    if counts.len() != w.experts {
        return Err(shape(
            OP,
            format!("{} group counts for {} experts", counts.len(), w.experts),
        ));
    }
    let rows: usize = counts.iter().sum();
    check_io(OP, w, ws, x, out, rows)?;
    ffn_groups(
        gpu,
        OP,
        w.m,
        w.m_h,
        addr(&w.w13),
        addr(&w.w2),
        addr(x),
        Rows::Host(counts),
        addr(out),
        ws,
        cfg,
    )
}

/// [`ffn_grouped`] with the groups' rows in device memory: `offsets` holds
/// `experts + 1` row offsets (expert q's rows are `offsets[q]..offsets[q+1]`
/// of `x`, in expert order), written by an earlier kernel of the stream (the
/// device-routed MoE step's counting sort); the host knows only that there
/// are at most `max_rows`. Both GEMMs read the offsets on the device and
/// are launched for the worst case (blocks with no tile exit); the launch
/// shapes are chosen for `max_rows` spread evenly over the experts unless
/// `cfg` is given. `out` gets `max_rows` rows (past the device's row count:
/// unspecified).
#[allow(clippy::too_many_arguments)]
pub fn ffn_grouped_device(
    gpu: &Gpu,
    w: &PrefillWeights,
    x: &DeviceSlice<f16>,
    offsets: &DeviceSlice<i32>,
    max_rows: usize,
    out: &mut DeviceSlice<f16>,
    ws: &mut PrefillWorkspace,
    cfg: Option<&PrefillConfig>,
) -> Result<()> {
    const OP: &str = "ffn_grouped_device";
    require_sm90a(gpu, OP)?;
    if offsets.len() < w.experts + 1 {
        return Err(shape(
            OP,
            format!(
                "{} row offsets for {} experts (need experts + 1)",
                offsets.len(),
                w.experts
            ),
        ));
    }
    check_io(OP, w, ws, x, out, max_rows)?;
    ffn_groups(
        gpu,
        OP,
        w.m,
        w.m_h,
        addr(&w.w13),
        addr(&w.w2),
        addr(x),
        Rows::Device {
            offsets: addr(offsets),
            groups: w.experts,
            max_rows,
        },
        addr(out),
        ws,
        cfg,
    )
}

/// `xs[i] = x[idx[i]]` for rows of `m` fp16 (`idx` on the device). An index
/// outside the rows of x gives a row of zeros: the kernel bounds-checks every
/// index, so no input makes it read outside x.
pub fn gather_rows(
    gpu: &Gpu,
    x: &DeviceSlice<f16>,
    idx: &DeviceSlice<i32>,
    m: usize,
    xs: &mut DeviceSlice<f16>,
) -> Result<()> {
    const OP: &str = "gather_rows";
    let rows = idx.len();
    if m == 0 || m % 8 != 0 || xs.len() < rows * m || x.len() < m {
        return Err(shape(
            OP,
            format!(
                "m={m} (multiple of 8), {rows} rows into {} elements",
                xs.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "xs", addr(xs), 16)?;
    if rows == 0 {
        return Ok(());
    }
    kernel_params! {
        struct GatherRows { x: u64, idx: u64, xs: u64, rows: i32, m: i32, x_rows: i64 }
    }
    let params = GatherRows {
        x: addr(x),
        idx: addr(idx),
        xs: addr(xs),
        rows: rows as i32,
        m: m as i32,
        x_rows: (x.len() / m) as i64,
    };
    let grid = gpu.grid_1d((rows * m / 8) as u64, 8);
    // SAFETY: gather_rows(const half*, const int*, half*, int, int, long
    // long) = GatherRows: idx holds rows entries; the kernel reads x only at indices in
    // [0, x_rows) with x_rows = x.len() / m; xs holds rows*m (checked);
    // 16-byte aligned (checked), m % 8 == 0.
    unsafe {
        gpu.launch(
            &gpu.prefill,
            "gather_rows",
            Shape::new(grid, 256),
            params,
            || format!("rows={rows} m={m}"),
        )
    }
}

/// `out[t] = Σ_j w[t][j] · ys[slot[t][j]]` for `tokens` tokens with `topk`
/// slots each (a slot < 0 or past the rows of ys is skipped: the kernel
/// bounds-checks each one), fp32 sums written as fp16 rows of m (a token
/// with no slot gets zeros).
#[allow(clippy::too_many_arguments)]
pub fn combine_rows(
    gpu: &Gpu,
    ys: &DeviceSlice<f16>,
    slot: &DeviceSlice<i32>,
    w: &DeviceSlice<f32>,
    topk: usize,
    tokens: usize,
    m: usize,
    out: &mut DeviceSlice<f16>,
) -> Result<()> {
    combine(
        gpu,
        "combine_rows",
        ys,
        slot,
        w,
        topk,
        tokens,
        m,
        addr(out),
        out.len(),
    )
}

/// [`combine_rows`] with fp32 output rows (e.g. a layer's fp32 accumulator).
#[allow(clippy::too_many_arguments)]
pub fn combine_rows_f32(
    gpu: &Gpu,
    ys: &DeviceSlice<f16>,
    slot: &DeviceSlice<i32>,
    w: &DeviceSlice<f32>,
    topk: usize,
    tokens: usize,
    m: usize,
    out: &mut DeviceSlice<f32>,
) -> Result<()> {
    combine(
        gpu,
        "combine_rows_f32",
        ys,
        slot,
        w,
        topk,
        tokens,
        m,
        addr(out),
        out.len(),
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn combine(
    gpu: &Gpu,
    op: &'static str,
    ys: &DeviceSlice<f16>,
    slot: &DeviceSlice<i32>,
    w: &DeviceSlice<f32>,
    topk: usize,
    tokens: usize,
    m: usize,
    out: u64,
    out_len: usize,
) -> Result<()> {
    check_combine(op, ys, slot, w, topk, tokens, m)?;
    if out_len < tokens * m {
        return Err(shape(
            op,
            format!("out {out_len} < {tokens} tokens x m={m}"),
        ));
    }
    check_align(op, "out", out, 16)?;
    if tokens == 0 {
        return Ok(());
    }
    kernel_params! {
        struct CombineRows { ys: u64, ys_rows: i64, slot: u64, w: u64, topk: i32, tokens: i32, m: i32, out: u64 }
    }
    let params = CombineRows {
        ys: addr(ys),
        ys_rows: (ys.len() / m) as i64,
        slot: addr(slot),
        w: addr(w),
        topk: topk as i32,
        tokens: tokens as i32,
        m: m as i32,
        out,
    };
    let grid = gpu.grid_1d((tokens * m / 8) as u64, 8);
    // SAFETY: combine_rows[_f32](const half*, long long, const int*, const
    // float*, int, int, int, half*|float*) = CombineRows: slot and w hold tokens*topk
    // entries, out tokens*m of the kernel's output type (checked); the kernel
    // reads ys only at slots in [0, ys_rows) with ys_rows = ys.len() / m;
    // 16-byte aligned (checked).
    unsafe {
        gpu.launch(&gpu.prefill, op, Shape::new(grid, 256), params, || {
            format!("tokens={tokens} topk={topk} m={m}")
        })
    }
}

/// The combine's inputs checked: m a multiple of 8, slot and w of `tokens`
/// x `topk`, ys 16-byte aligned.
#[allow(clippy::too_many_arguments)]
fn check_combine(
    op: &'static str,
    ys: &DeviceSlice<f16>,
    slot: &DeviceSlice<i32>,
    w: &DeviceSlice<f32>,
    topk: usize,
    tokens: usize,
    m: usize,
) -> Result<()> {
    if m == 0 || m % 8 != 0 || slot.len() < tokens * topk || w.len() < tokens * topk {
        return Err(shape(
            op,
            format!(
                "m={m} (multiple of 8), {tokens} tokens x top-{topk}: slot {} w {}",
                slot.len(),
                w.len(),
            ),
        ));
    }
    check_align(op, "ys", addr(ys), 16)
}

/// Mirror of `CombineSrc` in kernels/model.cu: a combine's inputs by
/// device address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct CombineSrc {
    ys: u64,
    ys_rows: i64,
    slot: u64,
    w: u64,
    topk: i32,
}

/// A MoE step's combine left to the next kernel (the model's norm,
/// `add_rmsnorm_combine` in kernels/model.cu, which sums in
/// [`combine_rows_f32`]'s order): the experts' outputs and the tables that
/// combine them, for `tokens` rows of `m`. Valid until the step's buffers
/// are written again (its layer's next step, on the same stream).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeferredCombine {
    pub(crate) src: CombineSrc,
    pub(crate) tokens: usize,
    pub(crate) m: usize,
}

impl DeferredCombine {
    /// [`combine_rows_f32`]'s inputs, checked as it checks them.
    pub(crate) fn new(
        ys: &DeviceSlice<f16>,
        slot: &DeviceSlice<i32>,
        w: &DeviceSlice<f32>,
        topk: usize,
        tokens: usize,
        m: usize,
    ) -> Result<Self> {
        const OP: &str = "DeferredCombine::new";
        check_combine(OP, ys, slot, w, topk, tokens, m)?;
        Ok(Self {
            src: CombineSrc {
                ys: addr(ys),
                ys_rows: (ys.len() / m) as i64,
                slot: addr(slot),
                w: addr(w),
                topk: i32::try_from(topk).map_err(|_| shape(OP, format!("topk={topk}")))?,
            },
            tokens,
            m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::runtime::DeviceInfo;

    fn h100() -> DeviceInfo {
        DeviceInfo {
            name: "test".into(),
            cc: (9, 0),
            sm_count: 132,
            l2_bytes: 50 << 20,
            cubin: true,
            unified_addressing: true,
        }
    }

    /// `GemmParams` mirrors the CUDA struct field for field (ints, then the
    /// pointer and the split stride at 8-byte offsets, then the prefix arrays).
    #[test]
    fn gemm_params_layout_matches_the_kernel() {
        use std::mem::{offset_of, size_of};
        assert_eq!(offset_of!(GemmParams, group_m), 28);
        assert_eq!(offset_of!(GemmParams, out), 32);
        assert_eq!(offset_of!(GemmParams, split_stride), 40);
        assert_eq!(offset_of!(GemmParams, row_start), 48);
        assert_eq!(
            offset_of!(GemmParams, tile_start),
            48 + 4 * (MAX_GROUPS + 1)
        );
        assert_eq!(offset_of!(GemmParams, dev_rows), 568);
        assert_eq!(offset_of!(GemmParams, max_rows), 576);
        assert_eq!(size_of::<GemmParams>(), 584);
    }

    /// Shared memory fits the 227 KB a Hopper block may take, and every
    /// width has a kernel.
    #[test]
    fn shared_memory_and_kernel_names() {
        for &(_, bm, bn, name, st) in &KERNELS {
            let bytes = smem_bytes(bm, bn, st);
            assert!(bytes <= 227 * 1024, "{name}: {bytes}");
            // Each stage keeps the 1024-byte alignment of the swizzled tiles.
            assert_eq!(
                (bm as usize * BK * 2 + bn as usize * BK * 2) % 1024,
                0,
                "{name}"
            );
            assert!(name.contains(&format!("_n{bn}")), "{name}");
        }
        assert_eq!(
            kernel(Mode::SwiGlu, 128, 224).unwrap().0,
            "gemm_swiglu_n224"
        );
        assert_eq!(
            kernel(Mode::Partial, 192, 192).unwrap().0,
            "gemm_partial_n192_m192"
        );
        assert!(kernel(Mode::Store, 128, 224).is_none());
    }

    /// The auto shapes of the Mixtral FFN: valid everywhere, 224-wide gate/up
    /// tiles (one wave of 128 tiles) at small token counts, full 256-wide
    /// tiles without split-K at large ones, split-K for the down GEMM when
    /// its tiles alone leave SMs idle.
    #[test]
    fn auto_shapes() {
        let info = h100();
        let (m, m_h) = (4096, 14336);
        for t in [1usize, 16, 17, 64, 100, 256, 512, 1000, 4096, 8192] {
            let g = GemmConfig::auto_shapes(
                &info,
                &[t],
                2 * m_h,
                m,
                1,
                &[(128, 256), (128, 224), (128, 128)],
            );
            let d = GemmConfig::auto(&info, &[t], m, m_h, MAX_SPLITS);
            g.check("t", Mode::SwiGlu, m).unwrap();
            d.check(
                "t",
                if d.splits > 1 {
                    Mode::Partial
                } else {
                    Mode::Store
                },
                m_h,
            )
            .unwrap();
            assert_eq!(g.splits, 1);
            if t <= 128 {
                assert_eq!(g.bn, 224, "gate/up at {t}");
                assert!(d.splits >= 4, "down at {t}: {d:?}");
            }
            if t >= 1024 {
                assert_eq!((g.bn, d.bn, d.splits), (256, 256, 1), "at {t}");
            }
        }
        // Split counts never exceed the k blocks (k = 128: 2 blocks).
        let d = GemmConfig::auto(&info, &[16], 4096, 128, MAX_SPLITS);
        assert!(d.splits <= 2);
        // Grouped counts with empty groups.
        let d = GemmConfig::auto(&info, &[0, 130, 0, 7], m, m_h, MAX_SPLITS);
        assert!((1..=MAX_SPLITS).contains(&d.splits));
    }

    /// Device row offsets: the shape model sees the mean count plus two
    /// standard deviations per group, so that 512 tokens, top-2, 8 experts
    /// (counts around 128) get the 192-row tiles the host counts pick.
    #[test]
    fn device_rows_model_counts_above_the_mean() {
        let r = Rows::Device {
            offsets: 0,
            groups: 8,
            max_rows: 1024,
        };
        assert_eq!((r.groups(), r.rows()), (8, 1024));
        let c = r.model_counts();
        assert_eq!(c, vec![151; 8]); // 128 + 2 sqrt(128) = 150.6
        assert!(tall_tiles_pay(&c));
        assert!(tall_tiles_pay(&[120, 136, 126, 135, 120, 135, 130, 122]));
        let big = Rows::Device {
            offsets: 0,
            groups: 8,
            max_rows: 8192,
        }
        .model_counts();
        assert_eq!(big, vec![1088; 8]);
        assert!(!tall_tiles_pay(&big));
        let one = Rows::Device {
            offsets: 0,
            groups: 4,
            max_rows: 1,
        }
        .model_counts();
        assert_eq!(one, vec![1; 4], "never above the rows");
        let host = [3usize, 0, 5];
        assert_eq!(Rows::Host(&host).model_counts(), host.to_vec());
        assert_eq!(Rows::Host(&host).rows(), 8);
    }

    /// 192-row tiles only for grouped launches of small groups straddling
    /// 128 rows (the measured case); never for single experts or large groups.
    #[test]
    fn tall_tiles_only_where_they_pay() {
        let info = h100();
        let small = [120, 136, 126, 135, 120, 135, 130, 122];
        assert!(tall_tiles_pay(&small));
        assert!(!tall_tiles_pay(&[
            1017, 1055, 991, 1064, 961, 1061, 1038, 1005
        ]));
        assert!(!tall_tiles_pay(&[160]));
        assert!(!tall_tiles_pay(&[100, 110, 90, 120])); // all fit 128 rows
        assert!(!tall_tiles_pay(&[0, 0, 150, 0])); // one group
        let g = GemmConfig::auto_shapes(&info, &small, 28672, 4096, 1, &[(192, 192)]);
        assert_eq!((g.bm, g.bn, g.splits), (192, 192, 1));
        g.check("t", Mode::SwiGlu, 4096).unwrap();
    }

    #[test]
    fn bad_configs_are_rejected() {
        let bad = [
            (
                GemmConfig {
                    bm: 128,
                    bn: 64,
                    splits: 1,
                },
                Mode::Store,
            ),
            (
                GemmConfig {
                    bm: 128,
                    bn: 224,
                    splits: 1,
                },
                Mode::Store,
            ),
            (
                GemmConfig {
                    bm: 128,
                    bn: 256,
                    splits: 2,
                },
                Mode::SwiGlu,
            ),
            (
                GemmConfig {
                    bm: 128,
                    bn: 256,
                    splits: 0,
                },
                Mode::Partial,
            ),
            (
                GemmConfig {
                    bm: 128,
                    bn: 256,
                    splits: 9,
                },
                Mode::Partial,
            ),
        ];
        for (c, mode) in bad {
            assert!(
                matches!(c.check("t", mode, 4096), Err(Error::Unsupported { .. })),
                "{c:?}"
            );
        }
        // More splits than 64-wide k blocks.
        let c = GemmConfig {
            bm: 128,
            bn: 256,
            splits: 3,
        };
        assert!(c.check("t", Mode::Partial, 128).is_err());
        assert!(c.check("t", Mode::Partial, 192).is_ok());
    }
}
