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
//! return [`Error::Unsupported`] (use [`crate::ffn_decode`]).

use std::ffi::c_void;

use cust::memory::{DeviceBuffer, DeviceSlice};
use cust::module::Module;
use half::f16;

use crate::error::{check_align, check_cu, shape, CudaCtx, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::{addr, DeviceInfo, Gpu};
use crate::sys;

/// Most experts (groups) one grouped launch takes.
pub const MAX_GROUPS: usize = 64;
/// Most split-K slices of the down GEMM.
pub const MAX_SPLITS: u32 = 8;
const BK: usize = 64;

/// Shape of one prefill GEMM launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmConfig {
    /// Rows per tile: 128 (two consumer warpgroups) with `bn` 128, 224
    /// (gate/up only) or 256; or 192 (three consumer warpgroups) with `bn`
    /// 192.
    pub bm: u32,
    /// Output columns per tile (see `bm`).
    pub bn: u32,
    /// Slices of the k range (1..=[`MAX_SPLITS`]); more than 1 only for the
    /// down GEMM (fp32 partials, summed by a second kernel).
    pub splits: u32,
}

/// Launch shapes of the two GEMMs of one prefill FFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillConfig {
    /// The fused gate/up GEMM (splits must be 1: the epilogue is nonlinear).
    pub gate_up: GemmConfig,
    /// The down GEMM.
    pub down: GemmConfig,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    SwiGlu,
    Store,
    Partial,
}

/// The GEMM instantiations of kernels/ffn_prefill.cu: (epilogue, bm, bn,
/// kernel, shared-memory stages).
const KERNELS: [(Mode, u32, u32, &str, usize); 10] = [
    (Mode::SwiGlu, 128, 256, "gemm_swiglu_n256", 4),
    (Mode::SwiGlu, 128, 224, "gemm_swiglu_n224", 5),
    (Mode::SwiGlu, 128, 128, "gemm_swiglu_n128", 6),
    (Mode::Store, 128, 256, "gemm_store_n256", 4),
    (Mode::Store, 128, 128, "gemm_store_n128", 6),
    (Mode::Partial, 128, 256, "gemm_partial_n256", 4),
    (Mode::Partial, 128, 128, "gemm_partial_n128", 6),
    (Mode::SwiGlu, 192, 192, "gemm_swiglu_n192_m192", 4),
    (Mode::Store, 192, 192, "gemm_store_n192_m192", 4),
    (Mode::Partial, 192, 192, "gemm_partial_n192_m192", 4),
];

fn kernel(mode: Mode, bm: u32, bn: u32) -> Option<(&'static str, usize)> {
    KERNELS
        .iter()
        .find(|k| k.0 == mode && k.1 == bm && k.2 == bn)
        .map(|k| (k.3, k.4))
}

/// Dynamic shared memory of a GEMM instantiation (mirrors the kernel: 1024
/// bytes of alignment slack, the stages, two mbarriers per stage).
fn smem_bytes(bm: u32, bn: u32, stages: usize) -> u32 {
    (stages * (bm as usize * BK * 2 + bn as usize * BK * 2) + 1024 + stages * 16) as u32
}

/// Raises the dynamic shared-memory limit of every GEMM kernel (more than
/// the default 48 KB needs `cuFuncSetAttribute`). Called once by
/// [`Gpu::new`] on compute capability 9.0.
pub(crate) fn raise_smem_limits(module: &Module) -> Result<()> {
    for &(_, bm, bn, name, st) in &KERNELS {
        let bytes = smem_bytes(bm, bn, st);
        let f = module
            .get_function(name)
            .ctx(name, || "cuModuleGetFunction".into())?;
        // SAFETY: f is a live function of a module loaded in the current
        // context; the attribute takes an int.
        let rc = unsafe {
            cust::sys::cuFuncSetAttribute(
                f.to_raw(),
                cust::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        };
        check_cu(
            rc,
            || format!("Gpu::new: cuFuncSetAttribute({name})"),
            || format!("{bytes} bytes of dynamic shared memory"),
        )?;
    }
    Ok(())
}

impl GemmConfig {
    /// A shape for a GEMM with `counts` rows per group, `n` output columns
    /// and reduction length `k` on `info`'s SM count: the tile width and
    /// split count (up to `max_splits`) that minimise a model of the
    /// makespan, full waves of tiles of time max(tensor-core time, weight
    /// streaming time) plus the split-K reduction.
    pub fn auto(
        info: &DeviceInfo,
        counts: &[usize],
        n: usize,
        k: usize,
        max_splits: u32,
    ) -> GemmConfig {
        Self::auto_shapes(info, counts, n, k, max_splits, &[(128, 256), (128, 128)])
    }

    /// [`GemmConfig::auto`] over the given (bm, bn) tile shapes.
    fn auto_shapes(
        info: &DeviceInfo,
        counts: &[usize],
        n: usize,
        k: usize,
        max_splits: u32,
        shapes: &[(u32, u32)],
    ) -> GemmConfig {
        let sms = info.sm_count.max(1) as f64;
        let rows: usize = counts.iter().sum();
        let groups = counts.iter().filter(|&&c| c > 0).count();
        // Per-SM rates of an H100/H200 (rounded from the sweeps in
        // BENCHMARKS.md): ~5 TFLOP/s of fp16 wgmma, ~60 GB/s of operand feed
        // from L2; ~4 TB/s of device memory for the whole chip.
        const FLOPS_SM: f64 = 5.0e12;
        const FEED_SM: f64 = 60.0e9;
        const DRAM: f64 = 4.0e12;
        let floor = (groups * n * k * 2 + rows * (k + n) * 2) as f64 / DRAM;
        let kb = k.div_ceil(BK);
        let mut best = (
            f64::INFINITY,
            GemmConfig {
                bm: shapes[0].0,
                bn: shapes[0].1,
                splits: 1,
            },
        );
        for &(bm, bn) in shapes {
            let m_tiles: usize = counts.iter().map(|c| c.div_ceil(bm as usize)).sum();
            for s in 1..=max_splits.clamp(1, MAX_SPLITS) {
                if s as usize > kb {
                    break;
                }
                let kk = (kb.div_ceil(s as usize) * BK) as f64;
                let tiles = (m_tiles * n.div_ceil(bn as usize) * s as usize) as f64;
                let waves = (tiles / sms).ceil();
                // Narrow tiles feed the tensor cores less efficiently.
                let eff = if bn == 128 { 1.1 } else { 1.0 };
                // A consumer whose 64 rows are all padding skips its wgmma:
                // groups of <= 64 rows cost half a tile of tensor work.
                let rows_eff = if counts.iter().all(|&c| c <= 64) {
                    64
                } else {
                    bm as usize
                };
                let mma = 2.0 * rows_eff as f64 * bn as f64 * kk * eff / FLOPS_SM;
                let feed = (bn as f64 + bm as f64) * kk * 2.0 / FEED_SM;
                // Where device memory is the floor, prefer the shape whose
                // tiles finish sooner (a tenth of their time as tie-breaker).
                let tiles_t = waves * mma.max(feed);
                let mut t = tiles_t.max(floor) + 0.1 * tiles_t;
                if s > 1 {
                    // fp32 partials written and read back, plus one more launch.
                    t += rows as f64 * n as f64 * 4.0 * s as f64 * 3.0 / DRAM + 4e-6;
                }
                if t < best.0 {
                    best = (t, GemmConfig { bm, bn, splits: s });
                }
            }
        }
        best.1
    }

    fn check(&self, op: &'static str, mode: Mode, k: usize) -> Result<()> {
        let ok_shape = kernel(mode, self.bm, self.bn).is_some();
        let ok_s = (1..=MAX_SPLITS).contains(&self.splits)
            && (self.splits == 1 || mode != Mode::SwiGlu)
            && self.splits as usize <= k.div_ceil(BK);
        if !(ok_shape && ok_s) {
            return Err(Error::Unsupported {
                op,
                detail: format!(
                    "gemm config {self:?} (bm x bn: 128 x 128|256, 128 x 224 for gate/up, 192 x 192; \
                     splits 1..={MAX_SPLITS} and at most k/64; gate/up takes no split)"
                ),
            });
        }
        Ok(())
    }
}

impl PrefillConfig {
    /// [`GemmConfig::auto`] for both GEMMs of an FFN of sizes (m, m_h) over
    /// `counts` tokens per expert, splits limited by `ws`'s partial buffer.
    pub fn auto(
        info: &DeviceInfo,
        counts: &[usize],
        m: usize,
        m_h: usize,
        ws: &PrefillWorkspace,
    ) -> PrefillConfig {
        let rows: usize = counts.iter().sum();
        let cap = if rows == 0 {
            1
        } else {
            (ws.partial.len() / (rows * m)).clamp(1, MAX_SPLITS as usize) as u32
        };
        if tall_tiles_pay(counts) {
            let tall = [(192, 192)];
            return PrefillConfig {
                gate_up: GemmConfig::auto_shapes(info, counts, 2 * m_h, m, 1, &tall),
                down: GemmConfig::auto_shapes(info, counts, m, m_h, cap, &tall),
            };
        }
        PrefillConfig {
            gate_up: GemmConfig::auto_shapes(
                info,
                counts,
                2 * m_h,
                m,
                1,
                &[(128, 256), (128, 224), (128, 128)],
            ),
            down: GemmConfig::auto(info, counts, m, m_h, cap),
        }
    }
}

/// Whether 192-row tiles beat 128-row ones: a grouped launch of small groups
/// (at most 256 rows each on average) whose rows straddle 128 (e.g. 120–136
/// tokens per expert at 512 tokens, top-2, 8 experts), so that 192-row tiles
/// need at most 3/4 of the m-tiles and each expert's weights stream through
/// the SMs once instead of twice. Measured (BENCHMARKS.md, H200): grouped
/// FFN at 512 tokens 902 µs with 192 x 192 tiles vs 1,113 µs; at 4,096
/// tokens and for single experts 192-row tiles lose (3 consumer warpgroups
/// at 128 registers each are slower when compute-bound).
fn tall_tiles_pay(counts: &[usize]) -> bool {
    let groups = counts.iter().filter(|&&c| c > 0).count();
    let rows: usize = counts.iter().sum();
    let tiles = |bm: usize| counts.iter().map(|c| c.div_ceil(bm)).sum::<usize>();
    groups >= 2 && rows <= 256 * groups && 4 * tiles(192) <= 3 * tiles(128)
}

/// The weights of one or more experts in the prefill layout, stacked:
/// W13 `[experts][2 m_h][m]` (W1 and W3 rows interleaved in blocks of 8) and
/// W2 `[experts][m][m_h]` (as given). The decode kernels use their own
/// packing ([`crate::ExpertWeights`]); a device that runs both paths holds
/// both (2 x 3 m m_h fp16 per expert).
pub struct PrefillWeights {
    w13: DeviceBuffer<f16>,
    w2: DeviceBuffer<f16>,
    m: usize,
    m_h: usize,
    experts: usize,
}

impl std::fmt::Debug for PrefillWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefillWeights")
            .field("m", &self.m)
            .field("m_h", &self.m_h)
            .field("experts", &self.experts)
            .finish()
    }
}

fn check_dims(op: &'static str, m: usize, m_h: usize) -> Result<()> {
    if m == 0 || m_h == 0 || m % 16 != 0 || m_h % 16 != 0 || m > (1 << 24) || m_h > (1 << 24) {
        return Err(Error::Unsupported {
            op,
            detail: format!(
                "m={m}, m_h={m_h}: both must be positive multiples of 16 (at most 2^24)"
            ),
        });
    }
    Ok(())
}

fn require_sm90a(gpu: &Gpu, op: &'static str) -> Result<()> {
    if !gpu.info().cubin {
        return Err(Error::Unsupported {
            op,
            detail: format!(
                "the prefill kernels need compute capability 9.0 (sm_90a), device is {}.{}; use ffn_decode",
                gpu.info().cc.0,
                gpu.info().cc.1
            ),
        });
    }
    Ok(())
}

impl PrefillWeights {
    /// Packs device matrices, one `(W1, W3, W2)` per expert, row-major:
    /// W1, W3 `[m_h][m]`, W2 `[m][m_h]`.
    pub fn pack(
        gpu: &Gpu,
        experts: &[(&DeviceSlice<f16>, &DeviceSlice<f16>, &DeviceSlice<f16>)],
        m: usize,
        m_h: usize,
    ) -> Result<PrefillWeights> {
        const OP: &str = "PrefillWeights::pack";
        check_dims(OP, m, m_h)?;
        if experts.is_empty() || experts.len() > MAX_GROUPS {
            return Err(shape(
                OP,
                format!("{} experts (1..={MAX_GROUPS})", experts.len()),
            ));
        }
        let e = experts.len();
        let w13 = gpu.alloc::<f16>(e * 2 * m * m_h)?;
        let w2 = gpu.alloc::<f16>(e * m * m_h)?;
        for (i, (a, b, c)) in experts.iter().enumerate() {
            for (name, s) in [("w1", a), ("w3", b), ("w2", c)] {
                if s.len() != m * m_h {
                    return Err(shape(
                        OP,
                        format!(
                            "expert {i}: {name} has {} elements, expected {}",
                            s.len(),
                            m * m_h
                        ),
                    ));
                }
                check_align(OP, name, addr(*s), 16)?;
            }
            let dst = addr(&w13) + (i * 2 * m * m_h * 2) as u64;
            interleave8(gpu, addr(*a), addr(*b), dst, m_h, m)?;
            let mut dst2 = w2.index(i * m * m_h..(i + 1) * m * m_h);
            gpu.copy_d2d(c, &mut dst2)?;
        }
        Ok(PrefillWeights {
            w13,
            w2,
            m,
            m_h,
            experts: e,
        })
    }

    /// Uploads and packs host matrices (see [`PrefillWeights::pack`]).
    #[allow(clippy::type_complexity)]
    pub fn from_host(
        gpu: &Gpu,
        experts: &[(&[f16], &[f16], &[f16])],
        m: usize,
        m_h: usize,
    ) -> Result<PrefillWeights> {
        check_dims("PrefillWeights::from_host", m, m_h)?;
        let bufs = experts
            .iter()
            .map(|(a, b, c)| Ok((gpu.upload(a)?, gpu.upload(b)?, gpu.upload(c)?)))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<_> = bufs.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
        let w = Self::pack(gpu, &refs, m, m_h)?;
        gpu.sync()?;
        Ok(w)
    }

    /// Hidden size m.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Expert hidden size m_h.
    pub fn m_h(&self) -> usize {
        self.m_h
    }

    /// Number of experts stacked.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Bytes of weights one FFN pass of one expert reads (3 m m_h fp16).
    pub fn bytes(&self) -> usize {
        3 * self.m * self.m_h * 2
    }
}

fn interleave8(gpu: &Gpu, w1: u64, w3: u64, dst: u64, m_h: usize, cols: usize) -> Result<()> {
    kernel_params! {
        struct Interleave8 { w1: u64, w3: u64, dst: u64, m_h: i32, cols: i32 }
    }
    let params = Interleave8 {
        w1,
        w3,
        dst,
        m_h: m_h as i32,
        cols: cols as i32,
    };
    let chunks = (2 * m_h * cols / 8) as u64;
    let grid = gpu.grid_1d(chunks, 16);
    // SAFETY: interleave8(const half*, const half*, half*, int, int) =
    // Interleave8: w1 and
    // w3 hold m_h*cols elements, dst 2*m_h*cols (checked by the caller), all
    // 16-byte aligned, m_h and cols multiples of 16.
    unsafe {
        gpu.launch(
            &gpu.prefill,
            "interleave8",
            Shape::new(grid, 256),
            params,
            || format!("m_h={m_h} cols={cols}"),
        )
    }
}

/// Scratch memory of the prefill FFN for up to `max_rows` token rows: the
/// intermediate h `[rows][m_h]` and the split-K partial sums.
pub struct PrefillWorkspace {
    h: DeviceBuffer<f16>,
    partial: DeviceBuffer<f32>,
    max_rows: usize,
    m: usize,
    m_h: usize,
}

impl std::fmt::Debug for PrefillWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefillWorkspace")
            .field("max_rows", &self.max_rows)
            .field("m", &self.m)
            .field("m_h", &self.m_h)
            .finish()
    }
}

impl PrefillWorkspace {
    /// Workspace for experts of size (m, m_h) and up to `max_rows` rows per
    /// call (all groups together). The split-K buffer covers up to
    /// [`MAX_SPLITS`] slices of min(max_rows, 1024) rows (split-K only pays
    /// for small row counts).
    pub fn new(gpu: &Gpu, m: usize, m_h: usize, max_rows: usize) -> Result<PrefillWorkspace> {
        check_dims("PrefillWorkspace::new", m, m_h)?;
        if max_rows == 0 {
            return Err(shape("PrefillWorkspace::new", "max_rows = 0".into()));
        }
        Ok(PrefillWorkspace {
            h: gpu.alloc(max_rows * m_h)?,
            partial: gpu.alloc(MAX_SPLITS as usize * max_rows.min(1024) * m)?,
            max_rows,
            m,
            m_h,
        })
    }

    /// Most rows per call.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}

kernel_params! {
    /// The grouped GEMM kernels' parameters: two tensor maps and the
    /// [`GemmParams`], by value.
    struct GemmLaunch {
        a: sys::CUtensorMap,
        b: sys::CUtensorMap,
        p: GemmParams,
    }
}

/// Mirror of `GemmParams` in kernels/ffn_prefill.cu (same field order and C
/// layout).
#[repr(C)]
#[derive(Clone, Copy)]
struct GemmParams {
    n: i32,
    k: i32,
    n_tiles: i32,
    splits: i32,
    groups: i32,
    total_tiles: i32,
    ldo: i32,
    group_m: i32,
    out: u64,
    split_stride: i64,
    row_start: [i32; MAX_GROUPS + 1],
    tile_start: [i32; MAX_GROUPS + 1],
}

/// A 2-D fp16 tensor map over `rows` x `cols` (row-major) with boxes of
/// 64 columns (128 bytes, 128-byte swizzle) by `box_rows` rows.
fn tensor_map(
    op: &'static str,
    ptr: u64,
    rows: usize,
    cols: usize,
    box_rows: u32,
) -> Result<sys::CUtensorMap> {
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    let dims = [cols as u64, rows as u64];
    let strides = [(cols * 2) as u64];
    let boxd = [BK as u32, box_rows];
    let es = [1u32, 1];
    // SAFETY: every pointer is to a live local array of the length the call
    // reads for rank 2 (dims 2, strides 1, box 2, element strides 2); map is
    // a 64-byte aligned 128-byte CUtensorMap. ptr is only recorded.
    let rc = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            sys::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxd.as_ptr(),
            es.as_ptr(),
            sys::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    check_cu(
        rc,
        || format!("{op}: cuTensorMapEncodeTiled"),
        || format!("{rows}x{cols} fp16 tensor at {ptr:#x}, box {BK}x{box_rows}"),
    )?;
    Ok(map)
}

/// m-tiles per raster block: A rows worth ~24 MB (k fp16 per row), so that a
/// block's A panels and a wave's B panels fit in L2 (50 MB on an H100).
/// `WDMOE_PREFILL_GROUP_M` (read once) overrides it (tuning; 4096 = plain
/// m-fastest order).
fn group_m(k: usize) -> i32 {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| {
        std::env::var("WDMOE_PREFILL_GROUP_M")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    forced
        .unwrap_or((24usize << 20) / (128 * k.max(1) * 2))
        .clamp(1, 4096) as i32
}

/// One GEMM launch: out = A · B_gᵀ per group g (rows of A in group order).
struct Gemm<'a> {
    mode: Mode,
    a: u64,
    k: usize,
    b: u64,
    n: usize,
    counts: &'a [usize],
    out: u64,
    ldo: usize,
    split_stride: usize,
    cfg: GemmConfig,
}

fn launch_gemm(gpu: &Gpu, op: &'static str, g: Gemm<'_>) -> Result<()> {
    g.cfg.check(op, g.mode, g.k)?;
    let rows: usize = g.counts.iter().sum();
    let groups = g.counts.len();
    let bn = g.cfg.bn as usize;
    let n_tiles = g.n.div_ceil(bn);
    let mut p = GemmParams {
        n: g.n as i32,
        k: g.k as i32,
        n_tiles: n_tiles as i32,
        splits: g.cfg.splits as i32,
        groups: groups as i32,
        total_tiles: 0,
        ldo: g.ldo as i32,
        group_m: group_m(g.k),
        out: g.out,
        split_stride: g.split_stride as i64,
        row_start: [0; MAX_GROUPS + 1],
        tile_start: [0; MAX_GROUPS + 1],
    };
    let mut tiles = 0usize;
    for (i, &c) in g.counts.iter().enumerate() {
        p.row_start[i + 1] = p.row_start[i] + c as i32;
        tiles += c.div_ceil(g.cfg.bm as usize) * n_tiles * g.cfg.splits as usize;
        if tiles > i32::MAX as usize {
            return Err(shape(op, format!("{tiles} tiles overflow")));
        }
        p.tile_start[i + 1] = tiles as i32;
    }
    p.total_tiles = tiles as i32;
    if tiles == 0 {
        return Ok(());
    }
    let ta = tensor_map(op, g.a, rows, g.k, g.cfg.bm)?;
    let tb = tensor_map(op, g.b, groups * g.n, g.k, g.cfg.bn)?;
    let grid = tiles.min(gpu.info().sm_count as usize) as u32;
    // check() above guarantees the instantiation exists.
    let (name, stages) = kernel(g.mode, g.cfg.bm, g.cfg.bn).ok_or_else(|| Error::Unsupported {
        op,
        detail: format!("no kernel for {:?}", g.cfg),
    })?;
    let threads = 128 * (g.cfg.bm / 64 + 1);
    let params = GemmLaunch { a: ta, b: tb, p };
    let (k, n, cfg, mode) = (g.k, g.n, g.cfg, g.mode);
    // SAFETY: NAME(TensorMap, TensorMap, GemmParams) by value = GemmLaunch, layouts
    // mirrored (sys::CUtensorMap, GemmParams). The tensor maps cover A
    // [rows][k] and B [groups*n][k], buffers the callers checked to hold that
    // many elements; the kernel reads only through them (out-of-range boxes
    // are zero-filled) and writes out rows < row_start[groups] (with row
    // stride ldo, columns < n or n/2 for swiglu, plus split slices
    // split_stride apart), which the callers sized. Shared memory was raised
    // to smem_bytes at module load (KERNELS); threads = 128 x (consumer
    // warpgroups + 1) as the kernel's launch bounds. PDL: the kernel's producer thread
    // executes griddepcontrol.wait before its first TMA read, and every
    // global write of the grid comes after data that read delivered.
    unsafe {
        gpu.launch(
            &gpu.prefill,
            name,
            Shape::new(grid, threads)
                .shared(smem_bytes(cfg.bm, cfg.bn, stages))
                .pdl(true),
            params,
            || format!("{mode:?} rows={rows} n={n} k={k} groups={groups} {cfg:?}"),
        )
    }
}

fn splitk_reduce(
    gpu: &Gpu,
    ws: u64,
    splits: u32,
    stride: usize,
    rows: usize,
    n: usize,
    out: u64,
) -> Result<()> {
    kernel_params! {
        struct SplitkReduce { ws: u64, splits: i32, stride: i64, rows: i64, n: i32, out: u64 }
    }
    let params = SplitkReduce {
        ws,
        splits: splits as i32,
        stride: stride as i64,
        rows: rows as i64,
        n: n as i32,
        out,
    };
    let work = (rows * n / 4) as u64;
    let grid = gpu.grid_1d(work, 8);
    // SAFETY: splitk_reduce(const float*, int, long long, long long, int,
    // half*) = SplitkReduce (griddepcontrol.wait before any access, for PDL): ws holds splits slices of stride >= rows*n floats, out rows*n
    // halves (callers' checks), n % 4 == 0, both 16/8-byte aligned (device
    // allocations and row offsets of multiples of 16 elements).
    unsafe {
        gpu.launch(
            &gpu.prefill,
            "splitk_reduce",
            Shape::new(grid, 256).pdl(true),
            params,
            || format!("splits={splits} rows={rows} n={n}"),
        )
    }
}

/// Both GEMMs of the FFN over groups of rows: `x` rows in group order,
/// `b13`/`b2` the stacked weights of those groups.
#[allow(clippy::too_many_arguments)]
fn ffn_groups(
    gpu: &Gpu,
    op: &'static str,
    m: usize,
    m_h: usize,
    b13: u64,
    b2: u64,
    x: u64,
    counts: &[usize],
    out: u64,
    ws: &mut PrefillWorkspace,
    cfg: Option<&PrefillConfig>,
) -> Result<()> {
    let rows: usize = counts.iter().sum();
    if rows == 0 {
        return Ok(());
    }
    let cfg = match cfg {
        Some(c) => *c,
        None => PrefillConfig::auto(gpu.info(), counts, m, m_h, ws),
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
            counts,
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
                counts,
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
                counts,
                out: part,
                ldo: m,
                split_stride: rows * m,
                cfg: cfg.down,
            },
        )?;
        splitk_reduce(gpu, part, cfg.down.splits, rows * m, rows, m, out)
    }
}

fn check_io(
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
        &[tokens],
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
        counts,
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
fn combine(
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
    if m == 0
        || m % 8 != 0
        || slot.len() < tokens * topk
        || w.len() < tokens * topk
        || out_len < tokens * m
    {
        return Err(shape(
            op,
            format!(
                "m={m} (multiple of 8), {tokens} tokens x top-{topk}: slot {} w {} out {out_len}",
                slot.len(),
                w.len(),
            ),
        ));
    }
    check_align(op, "ys", addr(ys), 16)?;
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

/// Token counts above which [`ExpertFfn`] (and the wdmoe-sim GPU layer) use
/// the tensor-core prefill kernels instead of the decode kernels: on an H200
/// the decode kernels take 106 µs at 16 tokens (prefill 119 µs) and, in two
/// launches of 16, 189 µs at 32 (prefill 119 µs); BENCHMARKS.md has the
/// crossover table.
pub const PREFILL_MIN_TOKENS: usize = 16;

/// Whether `tokens` rows per expert run faster on the prefill kernels on
/// this GPU (compute capability 9.0 and more than [`PREFILL_MIN_TOKENS`]).
pub fn prefers_prefill(gpu: &Gpu, tokens: usize) -> bool {
    gpu.info().cubin && tokens > PREFILL_MIN_TOKENS
}

/// One expert resident in both layouts, with its workspaces: `forward`
/// picks the decode kernels or the prefill kernels by token count
/// ([`prefers_prefill`]). Holds the weights twice (2 x 3 m m_h fp16).
pub struct ExpertFfn {
    decode: crate::ExpertWeights,
    prefill: Option<PrefillWeights>,
    dws: crate::FfnWorkspace,
    pws: Option<PrefillWorkspace>,
    cfg: crate::DecodeConfig,
    max_tokens: usize,
}

impl std::fmt::Debug for ExpertFfn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertFfn")
            .field("decode", &self.decode)
            .field("prefill", &self.prefill)
            .finish()
    }
}

impl ExpertFfn {
    /// Packs row-major W1, W3 `[m_h][m]` and W2 `[m][m_h]` for both paths
    /// (the prefill layout only on compute capability 9.0), with workspaces
    /// for up to `max_tokens` tokens per call.
    pub fn new(
        gpu: &Gpu,
        w1: &DeviceSlice<f16>,
        w3: &DeviceSlice<f16>,
        w2: &DeviceSlice<f16>,
        m: usize,
        m_h: usize,
        max_tokens: usize,
    ) -> Result<ExpertFfn> {
        let decode = crate::ExpertWeights::pack(gpu, w1, w3, w2, m, m_h)?;
        if max_tokens == 0 {
            return Err(shape("ExpertFfn::new", "max_tokens = 0".into()));
        }
        let (prefill, pws) = if gpu.info().cubin && max_tokens > PREFILL_MIN_TOKENS {
            (
                Some(PrefillWeights::pack(gpu, &[(w1, w3, w2)], m, m_h)?),
                Some(PrefillWorkspace::new(gpu, m, m_h, max_tokens)?),
            )
        } else {
            (None, None)
        };
        Ok(ExpertFfn {
            decode,
            prefill,
            dws: crate::FfnWorkspace::new(gpu, m, m_h)?,
            pws,
            cfg: crate::DecodeConfig::auto(gpu.info(), m, m_h),
            max_tokens,
        })
    }

    /// y = W2 (silu(W1 x) * (W3 x)) for `tokens` rows of x into `out`, on
    /// the faster path for that count. Returns whether the prefill kernels
    /// ran. More tokens than the `max_tokens` given to [`ExpertFfn::new`] is
    /// an [`Error::Shape`] (as for the workspaces), never a silent slow path.
    pub fn forward(
        &mut self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        out: &mut DeviceSlice<f16>,
    ) -> Result<bool> {
        if tokens > self.max_tokens {
            return Err(shape(
                "ExpertFfn::forward",
                format!("{tokens} tokens, built for at most {}", self.max_tokens),
            ));
        }
        if let (Some(w), Some(ws)) = (&self.prefill, &mut self.pws) {
            if prefers_prefill(gpu, tokens) {
                ffn_prefill(gpu, w, 0, x, tokens, out, ws, None)?;
                return Ok(true);
            }
        }
        crate::ffn_decode(gpu, &self.decode, x, tokens, out, &mut self.dws, &self.cfg)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(size_of::<GemmParams>(), 568);
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
