//! Launches of the decode GEMV kernels: kernel names, grid geometry and
//! the typed parameter structs.

use cust::function::{BlockSize, GridSize};

use super::*;
use crate::error::Result;
use crate::launch::{kernel_params, Shape};
use crate::plan::TokList;
use crate::runtime::{addr, Gpu};

/// Where one GEMV launch writes: plain fp16 rows, or the MoE combine
/// `out_acc[idx[t]][row] += w[t] * y[t][row]` (idx, w in the launch's
/// [`TokList`]).
pub(crate) enum Dest {
    Plain { out: u64, ldo: i32 },
    Combine { acc: u64, ldo: i32 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Gated,
    Plain,
    Pair,
}

pub(crate) struct Gemv {
    pub(crate) w: u64,
    pub(crate) k_major: bool,
    pub(crate) kind: Kind,
    pub(crate) x: u64,
    pub(crate) ldx: i32,
    pub(crate) toks: TokList,
    pub(crate) t: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) dest: Dest,
}

kernel_params! {
    /// Parameters of the `gemv_*` kernels (kernels/ffn_decode.cu).
    pub(crate) struct GemvParams {
        w: u64,
        x: u64,
        ldx: i32,
        toks: TokList,
        t: i32,
        k_tiles: i32,
        rt_stride: i64,
        kt_stride: i64,
        splits: i32,
        partial: u64,
        counters: u64,
        out: u64,
        ldo: i32,
        out_acc: u64,
        n_rows: i32,
    }
}

kernel_params! {
    /// Parameters of the `slot_*` kernels (kernels/ffn_decode.cu).
    pub(crate) struct SlotParams {
        plan: u64,
        slot: i32,
        seq: u32,
        x: u64,
        ldx: i32,
        k_tiles: i32,
        rt_stride: i64,
        kt_stride: i64,
        splits: i32,
        partial: u64,
        counters: u64,
        out: u64,
        ldo: i32,
        out_acc: u64,
        n_rows: i32,
        zrows: i32,
    }
}

impl Gemv {
    /// The gate/up GEMV: `h = silu(W1 x) ⊙ (W3 x)` for `t` tokens of `x`
    /// (rows picked by `toks` when it gathers), into the compact rows `h`.
    pub(crate) fn gate_up(w: &ExpertWeights, x: u64, toks: TokList, t: usize, h: u64) -> Self {
        Gemv {
            w: addr(&w.w13),
            k_major: w.k_major,
            kind: Kind::Gated,
            x,
            ldx: w.m as i32,
            toks,
            t,
            k: w.m,
            n: w.m_h,
            dest: Dest::Plain {
                out: h,
                ldo: w.m_h as i32,
            },
        }
    }

    /// The down GEMV: `W2 h` for `t` compact rows of `h`, into `dest`.
    pub(crate) fn down(w: &ExpertWeights, h: u64, toks: TokList, t: usize, dest: Dest) -> Self {
        Gemv {
            w: addr(&w.w2),
            k_major: w.k_major,
            kind: w.down_kind(),
            x: h,
            ldx: w.m_h as i32,
            toks,
            t,
            k: w.m_h,
            n: w.m,
            dest,
        }
    }
}

/// Kernel names (`gemv_*` takes its weights and tokens by value, `slot_*`
/// from a device plan) for a GEMV kind, token count and unroll.
pub(crate) fn kernel_names(kind: Kind, t: usize, unroll: u32) -> (&'static str, &'static str) {
    match (kind, t > 8, unroll) {
        (Kind::Gated, false, 2) => ("gemv_gated_r2_nt1_u2", "slot_gated_r2_nt1_u2"),
        (Kind::Gated, true, 2) => ("gemv_gated_r2_nt2_u2", "slot_gated_r2_nt2_u2"),
        (Kind::Plain, false, 2) => ("gemv_plain_r2_nt1_u2", "slot_plain_r2_nt1_u2"),
        (Kind::Plain, true, 2) => ("gemv_plain_r2_nt2_u2", "slot_plain_r2_nt2_u2"),
        (Kind::Pair, false, 2) => ("gemv_pair_r2_nt1_u2", "slot_pair_r2_nt1_u2"),
        (Kind::Pair, true, 2) => ("gemv_pair_r2_nt2_u2", "slot_pair_r2_nt2_u2"),
        (Kind::Gated, false, 4) => ("gemv_gated_nt1_u4", "slot_gated_nt1_u4"),
        (Kind::Gated, true, 4) => ("gemv_gated_nt2_u4", "slot_gated_nt2_u4"),
        (Kind::Gated, false, _) => ("gemv_gated_nt1_u8", "slot_gated_nt1_u8"),
        (Kind::Gated, true, _) => ("gemv_gated_nt2_u8", "slot_gated_nt2_u8"),
        (Kind::Plain, false, 4) => ("gemv_plain_nt1_u4", "slot_plain_nt1_u4"),
        (Kind::Plain, true, 4) => ("gemv_plain_nt2_u4", "slot_plain_nt2_u4"),
        (Kind::Plain, false, _) => ("gemv_plain_nt1_u8", "slot_plain_nt1_u8"),
        (Kind::Plain, true, _) => ("gemv_plain_nt2_u8", "slot_plain_nt2_u8"),
        (Kind::Pair, false, 4) => ("gemv_pair_nt1_u4", "slot_pair_nt1_u4"),
        (Kind::Pair, true, 4) => ("gemv_pair_nt2_u4", "slot_pair_nt2_u4"),
        (Kind::Pair, false, _) => ("gemv_pair_nt1_u8", "slot_pair_nt1_u8"),
        (Kind::Pair, true, _) => ("gemv_pair_nt2_u8", "slot_pair_nt2_u8"),
    }
}

/// Slot kernels that pick one or two n-tiles per slot at run time (launch
/// shape of the 1-8-token kernels, `rows` 1).
pub(crate) fn dual_name(kind: Kind, unroll: u32) -> &'static str {
    match (kind, unroll) {
        (Kind::Gated, 4) => "slot_gated_dual_u4",
        (Kind::Gated, _) => "slot_gated_dual_u8",
        (Kind::Plain, 4) => "slot_plain_dual_u4",
        (Kind::Plain, _) => "slot_plain_dual_u8",
        (Kind::Pair, 4) => "slot_pair_dual_u4",
        (Kind::Pair, _) => "slot_pair_dual_u8",
    }
}

/// Grid, block, shared memory and tile strides of one GEMV launch.
pub(crate) struct Geometry {
    pub(crate) grid: GridSize,
    pub(crate) block: BlockSize,
    pub(crate) shared: u32,
    pub(crate) k_tiles: i32,
    pub(crate) rt_stride: i64,
    pub(crate) kt_stride: i64,
    pub(crate) splits: i32,
}

pub(crate) fn geometry(
    kind: Kind,
    t: usize,
    k_major: bool,
    k: usize,
    n: usize,
    cfg: &KernelConfig,
) -> Geometry {
    // Unroll 2 <=> 2 row units per warp (checked by KernelConfig::check).
    let rows = cfg.rows.max(1);
    debug_assert_eq!(rows == 2, cfg.unroll == 2);
    let row_tiles = (n / if kind == Kind::Pair { 32 } else { 16 }) as u32;
    let row_blocks = row_tiles.div_ceil(rows);
    let k_tiles = (k / 16) as u32;
    let nmat: i64 = if kind == Kind::Plain { 1 } else { 2 };
    let (rt_stride, kt_stride) = if k_major {
        (nmat * 32, row_tiles as i64 * nmat * 32)
    } else {
        (k_tiles as i64 * nmat * 32, nmat * 32)
    };
    // Never more splits than k-tiles.
    let splits = cfg.splits.min(k_tiles).max(1);
    // Warp-reduction buffer: warps x (nmat x n-tiles x 4 x 32) floats.
    let ntiles: u32 = if t > 8 { 2 } else { 1 };
    Geometry {
        grid: GridSize::xy(row_blocks, splits),
        block: BlockSize::x(cfg.warps * 32),
        shared: cfg.warps * rows * nmat as u32 * ntiles * 4 * 32 * 4,
        k_tiles: k_tiles as i32,
        rt_stride,
        kt_stride,
        splits: splits as i32,
    }
}

/// Whether [`Gpu::gemv_preload`] starts on: unless `WDMOE_GEMV_PRE2=0`
/// (read at [`Gpu::new`]: comparisons).
pub(crate) fn gemv_pre2_default() -> bool {
    crate::env::switch("WDMOE_GEMV_PRE2", "0")
}

/// Kernel `name`, or, with [`Gpu::gemv_preload`], its variant that loads two
/// groups of U k-tiles per warp before its wait for the previous kernel
/// (gemv_tile's PRE = 2; compiled for the attention projections' 1-8-token
/// GEMV and the 1-8-token down slot kernel of the default shape). Those
/// kernels' blocks become resident while their predecessor still runs (the
/// norm, the attention, the gate/up kernel's last blocks), and memory that
/// would idle is what their early loads fill: 0.04-0.09 ms per decode token
/// on H200s (BENCHMARKS.md, "Runs H1–H17").
pub(crate) fn with_pre2(gpu: &Gpu, name: &'static str) -> &'static str {
    match pre2_variant(name) {
        Some(p2) if gpu.gemv_preload() => p2,
        _ => name,
    }
}

/// The PRE = 2 variant of kernel `name`, where one is compiled.
pub(crate) fn pre2_variant(name: &str) -> Option<&'static str> {
    match name {
        "gemv_plain_nt1_u8" => Some("gemv_plain_nt1_u8_p2"),
        "slot_pair_nt1_u4" => Some("slot_pair_nt1_u4_p2"),
        _ => None,
    }
}

pub(crate) fn launch_gemv(
    gpu: &Gpu,
    ws: &mut FfnWorkspace,
    g: Gemv,
    cfg: &KernelConfig,
) -> Result<()> {
    let name = kernel_names(g.kind, g.t, cfg.unroll).0;
    launch_gemv_named(gpu, ws, g, cfg, name)
}

/// [`launch_gemv`] with kernel `name`: one of [`kernel_names`]' or its
/// [`with_pre2`] variant (the same parameters and geometry).
pub(crate) fn launch_gemv_named(
    gpu: &Gpu,
    ws: &mut FfnWorkspace,
    g: Gemv,
    cfg: &KernelConfig,
    name: &'static str,
) -> Result<()> {
    debug_assert!(g.t >= 1 && g.t <= MAX_DECODE_TOKENS);
    let geo = geometry(g.kind, g.t, g.k_major, g.k, g.n, cfg);
    let (out, ldo, acc) = match g.dest {
        Dest::Plain { out, ldo } => (out, ldo, 0u64),
        Dest::Combine { acc, ldo } => (0u64, ldo, acc),
    };
    let params = GemvParams {
        w: g.w,
        x: g.x,
        ldx: g.ldx,
        toks: g.toks,
        t: g.t as i32,
        k_tiles: geo.k_tiles,
        rt_stride: geo.rt_stride,
        kt_stride: geo.kt_stride,
        splits: geo.splits,
        partial: addr(&ws.partial),
        counters: addr(&ws.counters),
        out,
        ldo,
        out_acc: acc,
        n_rows: g.n as i32,
    };
    // SAFETY: the gemv_* kernels take (const uint4* w, const half* x, int
    // ldx, TokList toks (by value, same #[repr(C)] layout), int T, int
    // k_tiles, long long rt_stride, long long kt_stride, int splits, float*
    // partial, unsigned* counters, half* out, int ldo, float* out_acc, int
    // n_rows) = GemvParams.
    // Callers checked: w holds (n/16)(k/16) packed 16x16 tiles (x2 if
    // gated; pair: (n/32)(k/16) x 2, n % 32 == 0);
    // x has T rows (or rows toks.idx, validated < its row count)
    // of ldx >= k elements, 16-byte aligned; the destination has T rows (or
    // rows toks.idx < its row count) of ldo >= n elements; the workspace holds
    // partials for row_blocks x splits x rows x 512 floats (<= (row_tiles +
    // 1) x splits x 512) and row_blocks counters that are zero between
    // launches; T <= 16, warps <= 8; `shared` bytes of dynamic shared memory
    // = the kernel's warps*FR*32 floats (<= 32 KB); the r2 kernels are those
    // with unroll 2, and they guard a missing last row unit themselves.
    unsafe {
        gpu.launch(
            &gpu.ffn,
            name,
            Shape::new(geo.grid, geo.block).shared(geo.shared).pdl(true),
            params,
            || format!("T={} k={} n={} cfg={cfg:?}", g.t, g.k, g.n),
        )
    }
}
