//! Weight packing of the prefill path (W1/W3 interleaved in 8-row blocks,
//! experts stacked) and its scratch memory.

use cust::memory::{DeviceBuffer, DeviceSlice};
use half::f16;

use super::*;
use crate::error::{check_align, shape, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::runtime::{addr, Gpu};

/// The weights of one or more experts in the prefill layout, stacked:
/// W13 `[experts][2 m_h][m]` (W1 and W3 rows interleaved in blocks of 8) and
/// W2 `[experts][m][m_h]` (as given). The decode kernels use their own
/// packing ([`crate::ExpertWeights`]); a device that runs both paths holds
/// both (2 x 3 m m_h fp16 per expert).
pub struct PrefillWeights {
    pub(crate) w13: DeviceBuffer<f16>,
    pub(crate) w2: DeviceBuffer<f16>,
    pub(crate) m: usize,
    pub(crate) m_h: usize,
    pub(crate) experts: usize,
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

pub(crate) fn check_dims(op: &'static str, m: usize, m_h: usize) -> Result<()> {
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

pub(crate) fn require_sm90a(gpu: &Gpu, op: &'static str) -> Result<()> {
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

pub(crate) fn interleave8(
    gpu: &Gpu,
    w1: u64,
    w3: u64,
    dst: u64,
    m_h: usize,
    cols: usize,
) -> Result<()> {
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
    pub(crate) h: DeviceBuffer<f16>,
    pub(crate) partial: DeviceBuffer<f32>,
    pub(crate) max_rows: usize,
    pub(crate) m: usize,
    pub(crate) m_h: usize,
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
