//! Launch configuration of the prefill GEMMs: kernel instantiations,
//! shared memory, tile shapes and split-K from a wave/bandwidth model.

use cust::module::Module;

use super::*;
use crate::error::{check_cu, CudaCtx, Error, Result};
use crate::runtime::DeviceInfo;

/// Most experts (groups) one grouped launch takes.
pub const MAX_GROUPS: usize = 64;
/// Most split-K slices of the down GEMM.
pub const MAX_SPLITS: u32 = 8;
pub(crate) const BK: usize = 64;

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
pub(crate) enum Mode {
    SwiGlu,
    Store,
    Partial,
}

/// The GEMM instantiations of kernels/ffn_prefill.cu: (epilogue, bm, bn,
/// kernel, shared-memory stages).
pub(crate) const KERNELS: [(Mode, u32, u32, &str, usize); 10] = [
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

pub(crate) fn kernel(mode: Mode, bm: u32, bn: u32) -> Option<(&'static str, usize)> {
    KERNELS
        .iter()
        .find(|k| k.0 == mode && k.1 == bm && k.2 == bn)
        .map(|k| (k.3, k.4))
}

/// Dynamic shared memory of a GEMM instantiation (mirrors the kernel: 1024
/// bytes of alignment slack, the stages, two mbarriers per stage).
pub(crate) fn smem_bytes(bm: u32, bn: u32, stages: usize) -> u32 {
    (stages * (bm as usize * BK * 2 + bn as usize * BK * 2) + 1024 + stages * 16) as u32
}

/// Raises the dynamic shared-memory limit of every GEMM kernel (more than
/// the default 48 KB needs `cuFuncSetAttribute`). Called once by
/// [`Gpu::new`] on compute capability 9.0.
pub(crate) fn raise_smem_limits(module: &Module) -> Result<()> {
    let grouped = KERNELS
        .iter()
        .map(|&(_, bm, bn, name, st)| (name, smem_bytes(bm, bn, st)));
    let packed = PACKED_KERNELS
        .iter()
        .map(|&(kind, out, bn, role, name, st)| {
            (name, packed_smem_bytes(kind, out, bn, role.ext_cols(), st))
        });
    for (name, bytes) in grouped.chain(packed) {
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
    pub(crate) fn auto_shapes(
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

    pub(crate) fn check(&self, op: &'static str, mode: Mode, k: usize) -> Result<()> {
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
pub(crate) fn tall_tiles_pay(counts: &[usize]) -> bool {
    let groups = counts.iter().filter(|&&c| c > 0).count();
    let rows: usize = counts.iter().sum();
    let tiles = |bm: usize| counts.iter().map(|c| c.div_ceil(bm)).sum::<usize>();
    groups >= 2 && rows <= 256 * groups && 4 * tiles(192) <= 3 * tiles(128)
}
