//! Launches of the grouped TMA/wgmma GEMM and its split-K reduction:
//! tensor maps, the typed parameter structs.

use std::ffi::c_void;

use super::*;
use crate::error::{check_cu, shape, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::Gpu;
use crate::sys;

kernel_params! {
    /// The grouped GEMM kernels' parameters: two tensor maps and the
    /// [`GemmParams`], by value.
    pub(crate) struct GemmLaunch {
        a: sys::CUtensorMap,
        b: sys::CUtensorMap,
        p: GemmParams,
    }
}

/// Mirror of `GemmParams` in kernels/ffn_prefill.cu (same field order and C
/// layout).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct GemmParams {
    pub(crate) n: i32,
    pub(crate) k: i32,
    pub(crate) n_tiles: i32,
    pub(crate) splits: i32,
    pub(crate) groups: i32,
    pub(crate) total_tiles: i32,
    pub(crate) ldo: i32,
    pub(crate) group_m: i32,
    pub(crate) out: u64,
    pub(crate) split_stride: i64,
    pub(crate) row_start: [i32; MAX_GROUPS + 1],
    pub(crate) tile_start: [i32; MAX_GROUPS + 1],
    pub(crate) dev_rows: u64,
    pub(crate) max_rows: i32,
    pub(crate) pad_: i32,
}

/// The rows of each group of a grouped GEMM: known on the host, or row
/// offsets in device memory (written by an earlier kernel of the stream, e.g.
/// the device-routed MoE step's counting sort).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rows<'a> {
    /// Rows per group.
    Host(&'a [usize]),
    /// `offsets` (device address) holds `groups + 1` non-decreasing row
    /// offsets (the kernel clamps them to `[0, max_rows]`); A and the
    /// output hold `max_rows` rows.
    Device {
        offsets: u64,
        groups: usize,
        max_rows: usize,
    },
}

impl Rows<'_> {
    /// Groups.
    pub(crate) fn groups(&self) -> usize {
        match *self {
            Rows::Host(c) => c.len(),
            Rows::Device { groups, .. } => groups,
        }
    }

    /// Rows of A and of the output: all rows (host), the most rows
    /// (device).
    pub(crate) fn rows(&self) -> usize {
        match *self {
            Rows::Host(c) => c.iter().sum(),
            Rows::Device { max_rows, .. } => max_rows,
        }
    }

    /// Rows per group for the launch-shape model: the counts (host), or
    /// (device: the counts are not known on the host) the most rows spread
    /// evenly over the groups, each raised by two standard deviations of a
    /// Poisson count (`mean + 2 sqrt(mean)`): the real counts straddle the
    /// mean, and a tile shape chosen for exactly the mean (e.g. 128 rows
    /// per expert at 512 tokens, top-2, 8 experts) would give the experts
    /// just above it a second, nearly empty m-tile.
    pub(crate) fn model_counts(&self) -> Vec<usize> {
        match *self {
            Rows::Host(c) => c.to_vec(),
            Rows::Device {
                groups, max_rows, ..
            } => {
                let g = groups.max(1);
                let mean = max_rows as f64 / g as f64;
                let c = (mean + 2.0 * mean.sqrt()).ceil() as usize;
                vec![c.min(max_rows); g]
            }
        }
    }
}

/// A 2-D fp16 tensor map over `rows` x `cols` (row-major) with boxes of
/// 64 columns (128 bytes, 128-byte swizzle) by `box_rows` rows.
pub(crate) fn tensor_map(
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
pub(crate) fn group_m(k: usize) -> i32 {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| {
        crate::env::number(
            "WDMOE_PREFILL_GROUP_M",
            |&g: &usize| (1..=4096).contains(&g),
            "m-tiles per raster block, 1..=4096",
        )
    });
    forced
        .unwrap_or((24usize << 20) / (128 * k.max(1) * 2))
        .clamp(1, 4096) as i32
}

/// One GEMM launch: out = A · B_gᵀ per group g (rows of A in group order).
pub(crate) struct Gemm<'a> {
    pub(crate) mode: Mode,
    pub(crate) a: u64,
    pub(crate) k: usize,
    pub(crate) b: u64,
    pub(crate) n: usize,
    pub(crate) rows: Rows<'a>,
    pub(crate) out: u64,
    pub(crate) ldo: usize,
    pub(crate) split_stride: usize,
    pub(crate) cfg: GemmConfig,
}

pub(crate) fn launch_gemm(gpu: &Gpu, op: &'static str, g: Gemm<'_>) -> Result<()> {
    g.cfg.check(op, g.mode, g.k)?;
    let rows = g.rows.rows();
    let groups = g.rows.groups();
    if groups == 0 || groups > MAX_GROUPS || rows > i32::MAX as usize {
        return Err(shape(
            op,
            format!("{groups} groups (1..={MAX_GROUPS}), {rows} rows"),
        ));
    }
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
        dev_rows: 0,
        max_rows: rows as i32,
        pad_: 0,
    };
    let per_m_tile = n_tiles * g.cfg.splits as usize;
    let tiles = match g.rows {
        Rows::Host(counts) => {
            let mut tiles = 0usize;
            for (i, &c) in counts.iter().enumerate() {
                p.row_start[i + 1] = p.row_start[i] + c as i32;
                tiles += c.div_ceil(g.cfg.bm as usize) * per_m_tile;
                if tiles > i32::MAX as usize {
                    return Err(shape(op, format!("{tiles} tiles overflow")));
                }
                p.tile_start[i + 1] = tiles as i32;
            }
            p.total_tiles = tiles as i32;
            tiles
        }
        Rows::Device { offsets, .. } => {
            // The worst case over all splits of `rows` into the groups:
            // each group adds at most one partial m-tile.
            p.dev_rows = offsets;
            let tiles = (rows.div_ceil(g.cfg.bm as usize) + groups) * per_m_tile;
            if tiles > i32::MAX as usize {
                return Err(shape(op, format!("{tiles} tiles overflow")));
            }
            if rows == 0 {
                0
            } else {
                tiles
            }
        }
    };
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
    // are zero-filled) and writes out rows < row_start[groups] <= rows (a
    // device schedule, dev_rows: groups + 1 ints the caller keeps alive,
    // is clamped to [0, max_rows = rows] by the kernel) (with row
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

pub(crate) fn splitk_reduce(
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
