//! Expert FFN for decode, y = W2 (silu(W1 x) * (W3 x)), fp16 weights and
//! activations, fp32 accumulation, on the memory-bound path (any token count;
//! fastest for 1-16 tokens, larger counts run in chunks of 16).

use cust::function::{BlockSize, GridSize};
use cust::memory::{DeviceBuffer, DeviceSlice};
use half::f16;

use crate::error::{check_align, shape, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::plan::{DevicePlan, TokList};
use crate::runtime::{addr, DeviceInfo, Gpu};

/// Default tile order of [`ExpertWeights::pack`] (see
/// [`ExpertWeights::pack_opts`]).
pub const K_MAJOR_DEFAULT: bool = true;

/// Tokens per launch of the decode kernels (two mma n-tiles of 8).
pub const MAX_DECODE_TOKENS: usize = 16;
/// Most blocks along k (split-K across blocks) the workspace is sized for.
pub const MAX_SPLITS: u32 = 16;

/// Launch shape of one decode GEMV kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelConfig {
    /// Warps per block (1..=8); each takes a contiguous part of the block's k range.
    pub warps: u32,
    /// Blocks along k per 16-row tile (1..=MAX_SPLITS): split-K across blocks.
    pub splits: u32,
    /// 16x16 k-tiles loaded per warp before the first mma (4 or 8 with
    /// `rows` 1; 2 with `rows` 2).
    pub unroll: u32,
    /// Packed row units per warp (1 or 2): with 2, each warp computes two
    /// neighbouring row tiles (2 x 16 rows, or 2 x 32 for 32-row W2 tiles)
    /// and loads each token fragment once for both, halving the x/h reads
    /// (9-16 tokens).
    pub rows: u32,
}

impl KernelConfig {
    /// A shape for `row_tiles` x `k_tiles` with `warps` warps per block
    /// (fewer if k is short) that puts about `warps_per_sm` warps on each of
    /// `sm_count` SMs, splitting k across blocks where the row tiles alone
    /// are too few (rounded: a slightly short grid beats a second partial
    /// wave plus split-K reductions; see NOTES.md).
    pub fn auto(
        sm_count: u32,
        row_tiles: usize,
        k_tiles: usize,
        warps: u32,
        unroll: u32,
        warps_per_sm: u32,
    ) -> KernelConfig {
        let warps = warps.min((k_tiles as u32 / unroll).max(1)).clamp(1, 8);
        let per_split = (row_tiles.max(1) * warps as usize) as f64;
        let want = (sm_count * warps_per_sm) as f64 / per_split;
        let max_split_k = (k_tiles / (warps * unroll) as usize).max(1) as u32;
        let splits = (want.round() as u32).clamp(1, MAX_SPLITS.min(max_split_k));
        KernelConfig {
            warps,
            splits,
            unroll,
            rows: 1,
        }
    }

    /// [`KernelConfig::auto`] for `rows` row units per warp (`row_tiles`
    /// counts units; the grid has ceil(row_tiles / rows) blocks along rows).
    pub fn auto_rows(
        sm_count: u32,
        row_tiles: usize,
        k_tiles: usize,
        warps: u32,
        unroll: u32,
        warps_per_sm: u32,
        rows: u32,
    ) -> KernelConfig {
        let blocks = row_tiles.div_ceil(rows.max(1) as usize);
        KernelConfig {
            rows,
            ..Self::auto(sm_count, blocks, k_tiles, warps, unroll, warps_per_sm)
        }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        if !(1..=8).contains(&self.warps)
            || !(1..=MAX_SPLITS).contains(&self.splits)
            || !matches!((self.rows, self.unroll), (1, 4 | 8) | (2, 2))
        {
            return Err(Error::Unsupported {
                op,
                detail: format!(
                    "kernel config {self:?} (warps 1..=8, splits 1..={MAX_SPLITS}, \
                     rows 1 with unroll 4|8, or rows 2 with unroll 2)"
                ),
            });
        }
        Ok(())
    }
}

/// Launch shapes of the two decode kernels of one expert FFN, for launches
/// of 1-8 tokens (one mma n-tile) and of 9-16 tokens (`*_wide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeConfig {
    /// The fused W1/W3 kernel (silu(g)*u epilogue), 1-8 tokens.
    pub gate_up: KernelConfig,
    /// The W2 kernel, 1-8 tokens.
    pub down: KernelConfig,
    /// The fused W1/W3 kernel, 9-16 tokens.
    pub gate_up_wide: KernelConfig,
    /// The W2 kernel, 9-16 tokens.
    pub down_wide: KernelConfig,
}

impl DecodeConfig {
    /// The same shape for every kernel and token count.
    pub fn uniform(k: KernelConfig) -> DecodeConfig {
        DecodeConfig {
            gate_up: k,
            down: k,
            gate_up_wide: k,
            down_wide: k,
        }
    }

    /// Default shapes for an FFN of hidden size `m` and expert size `m_h`
    /// whose W2 is packed in [`DownLayout::default_for`] m (as
    /// [`ExpertWeights::pack`] does).
    pub fn auto(info: &DeviceInfo, m: usize, m_h: usize) -> DecodeConfig {
        Self::auto_layout(info, m, m_h, DownLayout::default_for(m))
    }

    /// Default shapes for a given W2 layout: gate/up 2 warps per block,
    /// unroll 4, about 14 warps per SM; down 8 warps, unroll 8, about 14
    /// (16-row tiles) or 8 (32-row tiles) warps per SM. With 32-row tiles,
    /// 9-16 tokens use two row units per warp (`rows` 2, unroll 2): gate/up
    /// 4 warps per block, down 8 warps, both about 14 warps per SM. From the
    /// H200 sweeps and A/B runs in NOTES.md.
    pub fn auto_layout(
        info: &DeviceInfo,
        m: usize,
        m_h: usize,
        layout: DownLayout,
    ) -> DecodeConfig {
        let sm = info.sm_count;
        let gate_up = KernelConfig::auto(sm, m_h / 16, m / 16, 2, 4, 14);
        let down = |rows: usize, unroll: u32, warps_per_sm: u32| {
            KernelConfig::auto(sm, (m / rows).max(1), m_h / 16, 8, unroll, warps_per_sm)
        };
        match layout {
            DownLayout::Tiles16 => DecodeConfig {
                gate_up,
                down: down(16, 8, 14),
                gate_up_wide: gate_up,
                down_wide: down(16, 8, 14),
            },
            DownLayout::Pairs32 => DecodeConfig {
                gate_up,
                // 32-row tiles with ~8 warps per SM: 1 split at Mixtral size.
                down: down(32, 8, 8),
                // 9-16 tokens: two row units per warp (one token-fragment
                // load for two tiles), 4 warps per block for gate/up, 8 for
                // down, ~14 warps per SM (NOTES.md, v8).
                gate_up_wide: KernelConfig::auto_rows(sm, m_h / 16, m / 16, 4, 2, 14, 2),
                down_wide: KernelConfig::auto_rows(sm, (m / 32).max(1), m_h / 16, 8, 2, 14, 2),
            },
        }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        self.gate_up.check(op)?;
        self.down.check(op)?;
        self.gate_up_wide.check(op)?;
        self.down_wide.check(op)
    }

    fn pick(&self, tokens: usize) -> (&KernelConfig, &KernelConfig) {
        if tokens > 8 {
            (&self.gate_up_wide, &self.down_wide)
        } else {
            (&self.gate_up, &self.down)
        }
    }
}

/// One expert's weights on the device, packed in mma A-fragment order
/// (`pack_tiles` in kernels/ffn_decode.cu): W1 and W3 interleaved per 16x16
/// tile (one pass reads both), W2 separately.
pub struct ExpertWeights {
    w13: DeviceBuffer<f16>,
    w2: DeviceBuffer<f16>,
    m: usize,
    m_h: usize,
    down_pairs: bool,
    k_major: bool,
}

/// Layout of the packed W2 (the decode down-projection kernel follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownLayout {
    /// 16-row tiles: one A fragment per mma and k-step per warp.
    Tiles16,
    /// 32-row tiles (two 16-row tiles interleaved): each warp loads the
    /// tokens' B fragments once for two A fragments, halving the reads of
    /// the intermediate h (matters at 9-16 tokens). Needs m % 32 == 0.
    Pairs32,
}

impl DownLayout {
    /// `Pairs32` where m % 32 == 0, else `Tiles16`.
    pub fn default_for(m: usize) -> DownLayout {
        if m % 32 == 0 {
            DownLayout::Pairs32
        } else {
            DownLayout::Tiles16
        }
    }
}

impl std::fmt::Debug for ExpertWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertWeights")
            .field("m", &self.m)
            .field("m_h", &self.m_h)
            .field("down_pairs", &self.down_pairs)
            .finish()
    }
}

fn check_dims(op: &'static str, m: usize, m_h: usize) -> Result<()> {
    if m == 0 || m_h == 0 || m % 16 != 0 || m_h % 16 != 0 {
        return Err(Error::Unsupported {
            op,
            detail: format!("m={m}, m_h={m_h}: both must be positive multiples of 16"),
        });
    }
    if m > i32::MAX as usize / 16 || m_h > i32::MAX as usize / 16 {
        return Err(Error::Unsupported {
            op,
            detail: format!("m={m}, m_h={m_h} too large"),
        });
    }
    Ok(())
}

impl ExpertWeights {
    /// Packs row-major device matrices W1, W3: `[m_h][m]` and W2: `[m][m_h]`
    /// (W2 in [`DownLayout::default_for`] m).
    pub fn pack(
        gpu: &Gpu,
        w1: &DeviceSlice<f16>,
        w3: &DeviceSlice<f16>,
        w2: &DeviceSlice<f16>,
        m: usize,
        m_h: usize,
    ) -> Result<ExpertWeights> {
        Self::pack_with(gpu, w1, w3, w2, m, m_h, DownLayout::default_for(m))
    }

    /// [`ExpertWeights::pack`] with a chosen W2 layout.
    pub fn pack_with(
        gpu: &Gpu,
        w1: &DeviceSlice<f16>,
        w3: &DeviceSlice<f16>,
        w2: &DeviceSlice<f16>,
        m: usize,
        m_h: usize,
        layout: DownLayout,
    ) -> Result<ExpertWeights> {
        Self::pack_opts(gpu, w1, w3, w2, m, m_h, layout, K_MAJOR_DEFAULT)
    }

    /// [`ExpertWeights::pack`] with a chosen W2 layout and tile order:
    /// `k_major` stores tile (row tile, k tile) at k·rows + row instead of
    /// row·ks + k, so that warps on neighbouring row tiles read neighbouring
    /// memory at the same time.
    #[allow(clippy::too_many_arguments)]
    pub fn pack_opts(
        gpu: &Gpu,
        w1: &DeviceSlice<f16>,
        w3: &DeviceSlice<f16>,
        w2: &DeviceSlice<f16>,
        m: usize,
        m_h: usize,
        layout: DownLayout,
        k_major: bool,
    ) -> Result<ExpertWeights> {
        const OP: &str = "ExpertWeights::pack";
        check_dims(OP, m, m_h)?;
        let down_pairs = layout == DownLayout::Pairs32;
        if down_pairs && m % 32 != 0 {
            return Err(Error::Unsupported {
                op: OP,
                detail: format!("DownLayout::Pairs32 needs m % 32 == 0 (m={m})"),
            });
        }
        for (name, s, n) in [
            ("w1", w1, m * m_h),
            ("w3", w3, m * m_h),
            ("w2", w2, m * m_h),
        ] {
            if s.len() != n {
                return Err(shape(
                    OP,
                    format!(
                        "{name} has {} elements, expected {n} (m={m}, m_h={m_h})",
                        s.len()
                    ),
                ));
            }
        }
        let mut w13 = gpu.alloc::<f16>(2 * m * m_h)?;
        let mut w2p = gpu.alloc::<f16>(m * m_h)?;
        pack(gpu, w1, Some(w3), &mut w13, m_h, m, false, k_major)?;
        pack(gpu, w2, None, &mut w2p, m, m_h, down_pairs, k_major)?;
        Ok(ExpertWeights {
            w13,
            w2: w2p,
            m,
            m_h,
            down_pairs,
            k_major,
        })
    }

    /// Uploads and packs host matrices (row-major, see [`ExpertWeights::pack`]).
    pub fn from_host(
        gpu: &Gpu,
        w1: &[f16],
        w3: &[f16],
        w2: &[f16],
        m: usize,
        m_h: usize,
    ) -> Result<ExpertWeights> {
        check_dims("ExpertWeights::from_host", m, m_h)?;
        let (a, b, c) = (gpu.upload(w1)?, gpu.upload(w3)?, gpu.upload(w2)?);
        let e = Self::pack(gpu, &a, &b, &c, m, m_h)?;
        gpu.sync()?;
        Ok(e)
    }

    /// Hidden size m.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Expert hidden size m_h.
    pub fn m_h(&self) -> usize {
        self.m_h
    }

    fn down_kind(&self) -> Kind {
        if self.down_pairs {
            Kind::Pair
        } else {
            Kind::Plain
        }
    }

    /// Device address and size in bytes of the packed gate/up weights
    /// (W1|W3), e.g. for [`crate::router::PrefetchTable`].
    pub fn gate_up_weights(&self) -> (u64, usize) {
        (addr(&self.w13), self.w13.len() * 2)
    }

    /// Layout of the packed W2.
    pub fn down_layout(&self) -> DownLayout {
        if self.down_pairs {
            DownLayout::Pairs32
        } else {
            DownLayout::Tiles16
        }
    }

    /// Bytes of weights one FFN pass reads (3 m m_h fp16).
    pub fn bytes(&self) -> usize {
        3 * self.m * self.m_h * 2
    }

    /// Device addresses of the packed W1|W3 and W2.
    pub(crate) fn addresses(&self) -> (u64, u64) {
        (addr(&self.w13), addr(&self.w2))
    }

    /// Same shape, W2 layout and tile order (the slot kernels of a
    /// [`DevicePlan`] launch all experts with one geometry).
    pub(crate) fn same_packing(&self, o: &ExpertWeights) -> bool {
        (self.m, self.m_h, self.down_pairs, self.k_major) == (o.m, o.m_h, o.down_pairs, o.k_major)
    }
}

#[allow(clippy::too_many_arguments)]
fn pack(
    gpu: &Gpu,
    a: &DeviceSlice<f16>,
    b: Option<&DeviceSlice<f16>>,
    dst: &mut DeviceSlice<f16>,
    rows: usize,
    cols: usize,
    pair: bool,
    k_major: bool,
) -> Result<()> {
    let nmat = if b.is_some() { 2 } else { 1 };
    debug_assert_eq!(dst.len(), nmat * rows * cols);
    kernel_params! {
        struct PackTiles { a: u64, b: u64, dst: u64, rows: i32, cols: i32, pair: i32, k_major: i32 }
    }
    let params = PackTiles {
        a: addr(a),
        b: b.map(addr).unwrap_or(0),
        dst: addr(dst),
        rows: rows as i32,
        cols: cols as i32,
        pair: i32::from(pair),
        k_major: i32::from(k_major),
    };
    check_align("pack_tiles", "dst", params.dst, 16)?;
    let chunks = (nmat * rows * cols / 8) as u64;
    let grid = gpu.grid_1d(chunks, 16);
    // SAFETY: pack_tiles(const half*, const half*, uint4*, int, int, int,
    // int) = PackTiles. a (and b) hold rows*cols elements, dst holds
    // nmat*rows*cols (checked by callers), rows and cols are multiples of 16
    // (32 for rows with pair), dst is 16-byte aligned (checked).
    unsafe {
        gpu.launch(
            &gpu.ffn,
            "pack_tiles",
            Shape::new(grid, 256),
            params,
            || format!("rows={rows} cols={cols} nmat={nmat}"),
        )
    }
}

/// Scratch memory of the decode kernels: the `[16][m_h]` intermediate, split-K
/// partial sums and per-tile arrival counters (kept at zero between launches).
pub struct FfnWorkspace {
    h: DeviceBuffer<f16>,
    partial: DeviceBuffer<f32>,
    counters: DeviceBuffer<u32>,
    m: usize,
    m_h: usize,
}

impl std::fmt::Debug for FfnWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FfnWorkspace")
            .field("m", &self.m)
            .field("m_h", &self.m_h)
            .finish()
    }
}

impl FfnWorkspace {
    /// Workspace for experts of size (m, m_h), any [`KernelConfig`].
    pub fn new(gpu: &Gpu, m: usize, m_h: usize) -> Result<FfnWorkspace> {
        check_dims("FfnWorkspace::new", m, m_h)?;
        let tiles = m.max(m_h) / 16;
        Ok(FfnWorkspace {
            h: gpu.alloc(MAX_DECODE_TOKENS * m_h)?,
            // +1 tile: a last block of two row units may cover one past the end.
            partial: gpu.alloc((tiles + 1) * MAX_SPLITS as usize * 2 * 256)?,
            counters: gpu.alloc(tiles)?,
            m,
            m_h,
        })
    }
}

/// Where one GEMV launch writes: plain fp16 rows, or the MoE combine
/// `out_acc[idx[t]][row] += w[t] * y[t][row]` (idx, w in the launch's
/// [`TokList`]).
enum Dest {
    Plain { out: u64, ldo: i32 },
    Combine { acc: u64, ldo: i32 },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gated,
    Plain,
    Pair,
}

struct Gemv {
    w: u64,
    k_major: bool,
    kind: Kind,
    x: u64,
    ldx: i32,
    toks: TokList,
    t: usize,
    k: usize,
    n: usize,
    dest: Dest,
}

kernel_params! {
    /// Parameters of the `gemv_*` kernels (kernels/ffn_decode.cu).
    struct GemvParams {
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
    struct SlotParams {
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
    }
}

impl Gemv {
    /// The gate/up GEMV: `h = silu(W1 x) ⊙ (W3 x)` for `t` tokens of `x`
    /// (rows picked by `toks` when it gathers), into the compact rows `h`.
    fn gate_up(w: &ExpertWeights, x: u64, toks: TokList, t: usize, h: u64) -> Self {
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
    fn down(w: &ExpertWeights, h: u64, toks: TokList, t: usize, dest: Dest) -> Self {
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
fn kernel_names(kind: Kind, t: usize, unroll: u32) -> (&'static str, &'static str) {
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
fn dual_name(kind: Kind, unroll: u32) -> &'static str {
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
struct Geometry {
    grid: GridSize,
    block: BlockSize,
    shared: u32,
    k_tiles: i32,
    rt_stride: i64,
    kt_stride: i64,
    splits: i32,
}

fn geometry(
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

fn launch_gemv(gpu: &Gpu, ws: &mut FfnWorkspace, g: Gemv, cfg: &KernelConfig) -> Result<()> {
    let (name, _) = kernel_names(g.kind, g.t, cfg.unroll);
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

fn check_weights(op: &'static str, w: &ExpertWeights, ws: &FfnWorkspace) -> Result<()> {
    if ws.m != w.m || ws.m_h != w.m_h {
        return Err(shape(
            op,
            format!(
                "workspace for ({}, {}), expert is ({}, {})",
                ws.m, ws.m_h, w.m, w.m_h
            ),
        ));
    }
    Ok(())
}

/// y = W2 (silu(W1 x) * (W3 x)) for `tokens` rows of x (`[tokens][m]`,
/// row-major fp16), written to `out` (`[tokens][m]`). Any token count;
/// launches cover 16 tokens at a time.
pub fn ffn_decode(
    gpu: &Gpu,
    w: &ExpertWeights,
    x: &DeviceSlice<f16>,
    tokens: usize,
    out: &mut DeviceSlice<f16>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    const OP: &str = "ffn_decode";
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    if tokens == 0 {
        return Err(shape(OP, "tokens = 0".into()));
    }
    if x.len() < tokens * m || out.len() < tokens * m {
        return Err(shape(
            OP,
            format!(
                "x has {} and out {} elements, {tokens} tokens x m={m} need {}",
                x.len(),
                out.len(),
                tokens * m
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out", addr(out), 4)?;
    let mut t0 = 0;
    while t0 < tokens {
        let t = (tokens - t0).min(MAX_DECODE_TOKENS);
        let h = addr(&ws.h);
        let x_t0 = addr(x) + (t0 * m * 2) as u64;
        let gate_up = Gemv::gate_up(w, x_t0, TokList::default(), t, h);
        launch_gemv(gpu, ws, gate_up, cfg.pick(t).0)?;
        let dest = Dest::Plain {
            out: addr(out) + (t0 * m * 2) as u64,
            ldo: m as i32,
        };
        let down = Gemv::down(w, h, TokList::default(), t, dest);
        launch_gemv(gpu, ws, down, cfg.pick(t).1)?;
        t0 += t;
    }
    Ok(())
}

/// Token groups of one MoE step: for each group (expert), the token rows it
/// serves and their combine weights, validated (`token < n_tokens`, at most
/// once per group, finite weights). Host-side only: each decode launch gets
/// its (up to 16) tokens by value in its kernel parameters, so there is no
/// device buffer and no copy on the step's critical path.
#[derive(Debug, Clone, Default)]
pub struct RoutingPlan {
    entries: Vec<(i32, f32)>,
    groups: Vec<(usize, usize)>, // (offset, len)
    n_tokens: usize,
}

impl RoutingPlan {
    /// `groups[g]` lists `(token, weight)` pairs of group g.
    pub fn new(n_tokens: usize, groups: &[Vec<(usize, f32)>]) -> Result<RoutingPlan> {
        let mut p = RoutingPlan::default();
        p.set(n_tokens, groups)?;
        Ok(p)
    }

    /// Replaces the groups (validated as in [`RoutingPlan::new`]); on error
    /// the plan is left empty.
    pub fn set(&mut self, n_tokens: usize, groups: &[Vec<(usize, f32)>]) -> Result<()> {
        const OP: &str = "RoutingPlan::set";
        self.entries.clear();
        self.groups.clear();
        self.n_tokens = 0;
        let mut seen = vec![usize::MAX; n_tokens];
        for (gi, g) in groups.iter().enumerate() {
            self.groups.push((self.entries.len(), g.len()));
            for &(t, wt) in g {
                if t >= n_tokens || t > i32::MAX as usize || !wt.is_finite() {
                    self.groups.clear();
                    return Err(shape(
                        OP,
                        format!("group {gi}: token {t} (of {n_tokens}), weight {wt}"),
                    ));
                }
                // The combine epilogue adds without atomics: a token at most once per group.
                if seen[t] == gi {
                    self.groups.clear();
                    return Err(shape(OP, format!("group {gi}: token {t} listed twice")));
                }
                seen[t] = gi;
                self.entries.push((t as i32, wt));
            }
        }
        self.n_tokens = n_tokens;
        Ok(())
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Tokens in group `g`.
    pub fn group_len(&self, g: usize) -> usize {
        self.groups.get(g).map_or(0, |s| s.1)
    }
}

/// The MoE combine for one expert: for the tokens of group `group` of
/// `plan`, rows of `x` (`[n_tokens][m]`), computes the expert FFN and adds
/// `weight * y` into `out_acc` (`[n_tokens][m]`, fp32) at the same rows.
/// Launches on the stream in order, so experts applied one after another
/// accumulate without races. An empty group launches nothing.
#[allow(clippy::too_many_arguments)]
pub fn ffn_decode_combine(
    gpu: &Gpu,
    w: &ExpertWeights,
    x: &DeviceSlice<f16>,
    plan: &RoutingPlan,
    group: usize,
    out_acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    const OP: &str = "ffn_decode_combine";
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    let n = plan.n_tokens;
    let Some(&(off, len)) = plan.groups.get(group) else {
        return Err(shape(OP, format!("group {group} of {}", plan.groups.len())));
    };
    if x.len() < n * m || out_acc.len() < n * m {
        return Err(shape(
            OP,
            format!(
                "x has {} and out_acc {} elements, plan has {n} tokens x m={m}",
                x.len(),
                out_acc.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out_acc", addr(out_acc), 4)?;
    let mut t0 = 0;
    while t0 < len {
        let t = (len - t0).min(MAX_DECODE_TOKENS);
        let mut toks = TokList {
            gather: 1,
            scatter: 1,
            ..TokList::default()
        };
        for (i, &(tok, wt)) in plan.entries[off + t0..off + t0 + t].iter().enumerate() {
            toks.idx[i] = tok;
            toks.w[i] = wt;
        }
        let h = addr(&ws.h);
        launch_gemv(
            gpu,
            ws,
            Gemv::gate_up(w, addr(x), toks, t, h),
            cfg.pick(t).0,
        )?;
        // h rows are compact (no gather); the combine scatters.
        let dest = Dest::Combine {
            acc: addr(out_acc),
            ldo: m as i32,
        };
        let down = Gemv::down(w, h, TokList { gather: 0, ..toks }, t, dest);
        launch_gemv(gpu, ws, down, cfg.pick(t).1)?;
        t0 += t;
    }
    Ok(())
}

/// Which kernel of the FFN [`ffn_stage`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// h = silu(W1 x) * (W3 x) into the workspace.
    GateUp,
    /// out = W2 h from the workspace.
    Down,
}

/// One kernel of [`ffn_decode`] alone, for up to 16 tokens (benchmarks and
/// tuning): `GateUp` reads x and writes the workspace's h, `Down` reads h and
/// writes `out`.
#[allow(clippy::too_many_arguments)]
pub fn ffn_stage(
    gpu: &Gpu,
    w: &ExpertWeights,
    x: &DeviceSlice<f16>,
    tokens: usize,
    out: &mut DeviceSlice<f16>,
    ws: &mut FfnWorkspace,
    cfg: &KernelConfig,
    stage: Stage,
) -> Result<()> {
    const OP: &str = "ffn_stage";
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    if tokens == 0 || tokens > MAX_DECODE_TOKENS || x.len() < tokens * m || out.len() < tokens * m {
        return Err(shape(
            OP,
            format!(
                "tokens={tokens} (1..=16), x {}, out {}, m={m}",
                x.len(),
                out.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out", addr(out), 4)?;
    let h = addr(&ws.h);
    let g = match stage {
        Stage::GateUp => Gemv::gate_up(w, addr(x), TokList::default(), tokens, h),
        Stage::Down => {
            let dest = Dest::Plain {
                out: addr(out),
                ldo: m as i32,
            };
            Gemv::down(w, h, TokList::default(), tokens, dest)
        }
    };
    launch_gemv(gpu, ws, g, cfg)
}

/// The launch shapes of the slot kernels for plans of `n_tokens` tokens,
/// and whether they are the dual (one or two n-tiles per slot) kernels.
/// 9-16 tokens: a slot rarely gets more than 8 (top-k spreads them over the
/// experts), so the 1-8-token shapes with a per-slot choice of one or two
/// n-tiles (when those shapes have one row unit per warp).
fn slot_configs(cfg: &DecodeConfig, n_tokens: usize) -> (bool, &KernelConfig, &KernelConfig) {
    let dual = n_tokens > 8 && cfg.gate_up.rows == 1 && cfg.down.rows == 1;
    if dual {
        (true, &cfg.gate_up, &cfg.down)
    } else {
        let (g, d) = cfg.pick(n_tokens);
        (false, g, d)
    }
}

/// The byte ranges `(offset, length)` of an expert's packed W1|W3 that the
/// first slot kernel of a device plan of `n_tokens` tokens reads first: the
/// start of each warp's k range (k-major packing: all row tiles of a k-tile
/// are contiguous), `bytes` split evenly among them (at most 8 ranges, each
/// within its warp's range). Empty for row-major packing or `bytes` 0. For
/// [`crate::Router::route_plan`]'s speculative prefetch.
pub fn gate_up_prefetch_ranges(
    w: &ExpertWeights,
    cfg: &DecodeConfig,
    n_tokens: usize,
    bytes: usize,
) -> Vec<(u64, u64)> {
    if !w.k_major || bytes == 0 || n_tokens == 0 {
        return Vec::new();
    }
    let (_, g, _) = slot_configs(cfg, n_tokens);
    let geo = geometry(Kind::Gated, n_tokens, true, w.m, w.m_h, g);
    warp_start_ranges(
        geo.k_tiles as i64,
        geo.splits as i64,
        g.warps as i64,
        (geo.kt_stride * 16) as u64,
        bytes,
    )
}

/// `bytes` split evenly over the starts of the warps' k ranges (`k_tiles`
/// over `splits` blocks of `warps` warps, as the kernels divide them), as
/// byte ranges of a k-major packing with `tile_bytes` per k-tile (all row
/// tiles), each within its warp's range; at most 8.
fn warp_start_ranges(
    k_tiles: i64,
    splits: i64,
    warps: i64,
    tile_bytes: u64,
    bytes: usize,
) -> Vec<(u64, u64)> {
    let mut starts: Vec<(i64, i64)> = Vec::new();
    for sp in 0..splits {
        let kb0 = k_tiles * sp / splits;
        let kb1 = k_tiles * (sp + 1) / splits;
        for wp in 0..warps {
            let kw0 = kb0 + (kb1 - kb0) * wp / warps;
            let kw1 = kb0 + (kb1 - kb0) * (wp + 1) / warps;
            if kw1 > kw0 {
                starts.push((kw0, kw1));
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts.truncate(crate::plan::MAX_PREFETCH_RANGES);
    let per = (bytes / starts.len().max(1)) as u64 / 16 * 16;
    starts
        .into_iter()
        .map(|(k0, k1)| {
            let off = k0 as u64 * tile_bytes;
            (off, per.min((k1 - k0) as u64 * tile_bytes))
        })
        .filter(|r| r.1 > 0)
        .collect()
}

/// Slot `slot` of a device-built plan ([`crate::Router::route_plan`]): the
/// expert FFN of whichever expert the plan put there, for its tokens (rows
/// of `x`, `[n_tokens][m]`), adding `weight * y` into `out_acc`
/// (`[n_tokens][m]`, fp32). Both kernels are launched whether or not the
/// slot is used (an unused slot's kernels exit at once), so a whole step
/// can be enqueued before the plan exists (each kernel waits for the plan's
/// ready flag of this step before reading its slot). `experts` must be
/// those `plan` was built for; `x` and `out_acc`
/// hold at least the plan's token count of rows, and launch shapes are
/// chosen for that many tokens per slot (the most a slot can get).
#[allow(clippy::too_many_arguments)]
pub fn ffn_decode_slot(
    gpu: &Gpu,
    experts: &[ExpertWeights],
    plan: &DevicePlan,
    slot: usize,
    x: &DeviceSlice<f16>,
    out_acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
) -> Result<()> {
    const OP: &str = "ffn_decode_slot";
    let n_tokens = plan.tokens;
    plan.check_experts(OP, experts)?;
    let w = &experts[0];
    check_weights(OP, w, ws)?;
    cfg.check(OP)?;
    let m = w.m;
    if slot >= plan.n_slots {
        return Err(shape(
            OP,
            format!("slot {slot} of a plan with {} slots", plan.n_slots),
        ));
    }
    if n_tokens == 0
        || n_tokens > MAX_DECODE_TOKENS
        || x.len() < n_tokens * m
        || out_acc.len() < n_tokens * m
    {
        return Err(shape(
            OP,
            format!(
                "plan of {n_tokens} tokens (1..={MAX_DECODE_TOKENS}), x {}, out_acc {}, m={m}",
                x.len(),
                out_acc.len()
            ),
        ));
    }
    check_align(OP, "x", addr(x), 16)?;
    check_align(OP, "out_acc", addr(out_acc), 4)?;
    let (dual, gate_cfg, down_cfg) = slot_configs(cfg, n_tokens);
    let h = addr(&ws.h);
    for (kind, xin, ldx, k, n, dest, kcfg) in [
        (
            Kind::Gated,
            addr(x),
            m,
            m,
            w.m_h,
            Dest::Plain {
                out: h,
                ldo: w.m_h as i32,
            },
            gate_cfg,
        ),
        (
            w.down_kind(),
            h,
            w.m_h,
            w.m_h,
            m,
            Dest::Combine {
                acc: addr(out_acc),
                ldo: m as i32,
            },
            down_cfg,
        ),
    ] {
        let name = if dual {
            dual_name(kind, kcfg.unroll)
        } else {
            kernel_names(kind, n_tokens, kcfg.unroll).1
        };
        let geo = geometry(kind, n_tokens, w.k_major, k, n, kcfg);
        let (out, ldo, out_acc) = match dest {
            Dest::Plain { out, ldo } => (out, ldo, 0u64),
            Dest::Combine { acc, ldo } => (0u64, ldo, acc),
        };
        let params = SlotParams {
            plan: addr(&plan.slots),
            slot: slot as i32,
            seq: plan.seq,
            x: xin,
            ldx: ldx as i32,
            k_tiles: geo.k_tiles,
            rt_stride: geo.rt_stride,
            kt_stride: geo.kt_stride,
            splits: geo.splits,
            partial: addr(&ws.partial),
            counters: addr(&ws.counters),
            out,
            ldo,
            out_acc,
            n_rows: n as i32,
        };
        // SAFETY: the slot_* kernels take (const Slot* plan, int slot,
        // unsigned seq, const half* x, int ldx, int k_tiles, long long
        // rt_stride, long long kt_stride, int splits, float* partial,
        // unsigned* counters, half* out, int ldo, float* out_acc, int n_rows)
        // = SlotParams. plan.slots holds MAX_SLOTS
        // slots and the ready-flag word after them, and slot < n_slots; a used slot (written only by
        // router_policy) holds the addresses of one of `experts` (checked to
        // be the plan's, all of this geometry: same_packing), at most 16
        // tokens, each < n_tokens (the router's token count, <= the rows of
        // x and out_acc, checked); an unused slot has w13 = 0 and its
        // kernels only wait and exit. x, h and out_acc as in launch_gemv;
        // the workspace (partials, zeroed counters, h of 16 x m_h) is sized
        // for any KernelConfig; `shared` as launch_gemv's for n_tokens (two
        // n-tiles above 8: enough for the dual kernels' larger branch, which
        // take the rows-1 shapes they were compiled for).
        unsafe {
            gpu.launch(
                &gpu.ffn,
                name,
                Shape::new(geo.grid, geo.block).shared(geo.shared).pdl(true),
                params,
                || format!("slot {slot} k={k} n={n} n_tokens={n_tokens} cfg={kcfg:?}"),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_ranges_start_at_each_warps_k_range() {
        // Mixtral gate/up, 2 warps, no split: k-tiles 0 and 128.
        let r = warp_start_ranges(256, 1, 2, 1000, 8000);
        assert_eq!(r, vec![(0, 4000), (128_000, 4000)]);
        // Split 2 x 2 warps: starts 0, 64, 128, 192; clamped to a warp's range.
        let r = warp_start_ranges(256, 2, 2, 16, 1 << 20);
        assert_eq!(
            r,
            vec![
                (0, 1024),
                (64 * 16, 1024),
                (128 * 16, 1024),
                (192 * 16, 1024)
            ]
        );
        // More than 8 starts: the first 8; nothing to prefetch: empty.
        assert_eq!(warp_start_ranges(1024, 4, 8, 16, 1 << 20).len(), 8);
        assert!(warp_start_ranges(256, 1, 2, 16, 0).is_empty());
    }

    #[test]
    fn slot_configs_use_dual_kernels_above_8_tokens_with_row_units_of_1() {
        let k = |rows, unroll| KernelConfig {
            warps: 2,
            splits: 1,
            unroll,
            rows,
        };
        let cfg = DecodeConfig {
            gate_up: k(1, 4),
            down: k(1, 8),
            gate_up_wide: k(2, 2),
            down_wide: k(2, 2),
        };
        assert!(!slot_configs(&cfg, 8).0);
        let (dual, g, d) = slot_configs(&cfg, 9);
        assert!(dual);
        assert_eq!((g.rows, d.rows), (1, 1));
        let wide_only = DecodeConfig {
            gate_up: k(2, 2),
            ..cfg
        };
        let (dual, g, _) = slot_configs(&wide_only, 16);
        assert!(!dual);
        assert_eq!(g.rows, 2);
        assert_eq!(dual_name(Kind::Pair, 8), "slot_pair_dual_u8");
        assert_eq!(kernel_names(Kind::Gated, 1, 4).1, "slot_gated_nt1_u4");
    }
}
