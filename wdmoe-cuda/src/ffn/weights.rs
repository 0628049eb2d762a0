//! Weight packing of the decode kernels (16x16 tiles, k- or n-major) and
//! their scratch memory.

use cust::memory::{DeviceBuffer, DeviceSlice};
use half::f16;

use super::*;
use crate::error::{check_align, shape, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::{addr, Gpu};

/// One expert's weights on the device, packed in mma A-fragment order
/// (`pack_tiles` in kernels/ffn_decode.cu): W1 and W3 interleaved per 16x16
/// tile (one pass reads both), W2 separately.
pub struct ExpertWeights {
    pub(crate) w13: DeviceBuffer<f16>,
    pub(crate) w2: DeviceBuffer<f16>,
    pub(crate) m: usize,
    pub(crate) m_h: usize,
    pub(crate) down_pairs: bool,
    pub(crate) k_major: bool,
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

pub(crate) fn check_dims(op: &'static str, m: usize, m_h: usize) -> Result<()> {
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

    pub(crate) fn down_kind(&self) -> Kind {
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
pub(crate) fn pack(
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

/// One row-major fp16 matrix `[rows][cols]` in the decode packing (16x16
/// tiles in mma A-fragment order, k-major: `pack_tiles`): the model's
/// attention projections, multiplied by the decode GEMV kernels up to 16
/// tokens (`ffn::gemv_packed_acc`) and by the packed tensor-core GEMM above
/// (`prefill::gemm_packed_f32`). cols a multiple of 64 (the GEMM's k step).
pub struct PackedMatrix {
    pub(crate) buf: DeviceBuffer<f16>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl PackedMatrix {
    /// Whether a `[rows][cols]` matrix can be packed and multiplied here:
    /// compute capability 9.0, rows a multiple of 16, cols of 64.
    pub fn supported(gpu: &Gpu, rows: usize, cols: usize) -> bool {
        gpu.info().cubin && rows > 0 && cols > 0 && rows % 16 == 0 && cols % 64 == 0
    }

    /// Packs `w` (`[rows][cols]` row-major fp16 on the device) into a new
    /// buffer (`w` stays as it is).
    pub fn pack(gpu: &Gpu, w: &DeviceSlice<f16>, rows: usize, cols: usize) -> Result<PackedMatrix> {
        const OP: &str = "PackedMatrix::pack";
        if !Self::supported(gpu, rows, cols) {
            return Err(Error::Unsupported {
                op: OP,
                detail: format!(
                    "{rows} x {cols}: needs compute capability 9.0, rows % 16 == 0, cols % 64 == 0"
                ),
            });
        }
        if w.len() != rows * cols {
            return Err(shape(
                OP,
                format!("w has {} elements, expected {rows} x {cols}", w.len()),
            ));
        }
        check_align(OP, "w", addr(w), 16)?;
        let mut buf = gpu.alloc::<f16>(rows * cols)?;
        pack(gpu, w, None, &mut buf, rows, cols, false, true)?;
        Ok(PackedMatrix { buf, rows, cols })
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (the reduction length).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Scratch memory of the decode kernels: the `[16][m_h]` intermediate, split-K
/// partial sums and per-tile arrival counters (kept at zero between launches).
pub struct FfnWorkspace {
    pub(crate) h: DeviceBuffer<f16>,
    pub(crate) partial: DeviceBuffer<f32>,
    pub(crate) counters: DeviceBuffer<u32>,
    pub(crate) m: usize,
    pub(crate) m_h: usize,
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
