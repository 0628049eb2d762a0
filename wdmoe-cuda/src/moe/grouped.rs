//! The grouped prefill path of a layer (compute capability 9.0): the
//! token rows gathered in expert order, all experts' FFNs in one grouped
//! tensor-core launch per GEMM, the weighted combine back to token order.
//! The FFNs read either the stacked prefill layout ([`PrefillWeights`],
//! where both layouts fit) or the experts' decode packing
//! ([`crate::prefill::ffn_packed_grouped`]: one copy of the weights).

use cust::event::Event;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceSlice};
use half::f16;

use super::encode::RowTables;
use crate::error::{shape, CudaCtx, Result};
use crate::ffn::ExpertWeights;
use crate::prefill::{
    combine_rows_f32, ffn_groups, ffn_packed, gather_rows, PrefillWeights, PrefillWorkspace, Rows,
};
use crate::runtime::Gpu;

/// The grouped prefill path of a layer: the experts stacked in the prefill
/// layout (or none: the FFNs then read the decode packing), and buffers for
/// the token rows in expert order (grown on demand).
pub struct GroupedPrefill {
    pub(super) w: Option<PrefillWeights>,
    pub(super) ws: Option<PrefillWorkspace>,
    /// The intermediate h of the packed path, `[rows][m_h]`.
    h: DeviceBuffer<f16>,
    m: usize,
    m_h: usize,
    experts: usize,
    /// With the stacked layout held: run the packed GEMM instead.
    pub(super) prefer_packed: bool,
    pub(super) xs: DeviceBuffer<f16>,
    pub(super) ys: DeviceBuffer<f16>,
    idx: DeviceBuffer<i32>,
    slot: DeviceBuffer<i32>,
    wts: DeviceBuffer<f32>,
    rows: usize,
}

impl std::fmt::Debug for GroupedPrefill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedPrefill")
            .field("experts", &self.experts)
            .field("stacked", &self.w.is_some())
            .field("rows", &self.rows)
            .finish()
    }
}

/// Synchronous copy of `src` into the first elements of `dst` (pageable
/// host memory: the call returns once the data has been read, so `src` may
/// be changed right after).
fn upload_into<T: cust::memory::DeviceCopy>(
    dst: &DeviceSlice<T>,
    src: &[T],
    what: &'static str,
) -> Result<()> {
    dst.index(..src.len())
        .copy_from(src)
        .ctx("cuMemcpyHtoD", || format!("{what}: {} elements", src.len()))
}

impl GroupedPrefill {
    /// The path on the stacked layout `w` (buffers allocated on the first
    /// step).
    pub fn new(gpu: &Gpu, w: PrefillWeights) -> Result<GroupedPrefill> {
        let (m, m_h, e) = (w.m(), w.m_h(), w.experts());
        Self::with(gpu, Some(w), m, m_h, e)
    }

    /// The path on the decode packing of `experts` experts of `m` x `m_h`
    /// (the caller passes them to each step).
    pub fn packed(gpu: &Gpu, m: usize, m_h: usize, experts: usize) -> Result<GroupedPrefill> {
        Self::with(gpu, None, m, m_h, experts)
    }

    fn with(
        gpu: &Gpu,
        w: Option<PrefillWeights>,
        m: usize,
        m_h: usize,
        experts: usize,
    ) -> Result<GroupedPrefill> {
        Ok(GroupedPrefill {
            ws: None,
            h: gpu.alloc(1)?,
            m,
            m_h,
            experts,
            prefer_packed: false,
            xs: gpu.alloc(1)?,
            ys: gpu.alloc(1)?,
            idx: gpu.alloc(1)?,
            slot: gpu.alloc(1)?,
            wts: gpu.alloc(1)?,
            rows: 0,
            w,
        })
    }

    /// Model width.
    pub(super) fn m(&self) -> usize {
        self.m
    }

    /// Experts (groups).
    pub(super) fn experts(&self) -> usize {
        self.experts
    }

    /// Buffers for `rows` token rows and `tokens * e` slots.
    pub(super) fn reserve(
        &mut self,
        gpu: &Gpu,
        rows: usize,
        tokens: usize,
        e: usize,
    ) -> Result<()> {
        let (m, m_h) = (self.m, self.m_h);
        if rows > self.rows {
            // Free before allocating the larger ones.
            self.ws = None;
            self.h = gpu.alloc(1)?;
            self.xs = gpu.alloc(rows * m)?;
            self.ys = gpu.alloc(rows * m)?;
            self.idx = gpu.alloc(rows)?;
            if self.w.is_some() {
                self.ws = Some(PrefillWorkspace::new(gpu, m, m_h, rows)?);
            } else {
                self.h = gpu.alloc(rows * m_h)?;
            }
            self.rows = rows;
        }
        if self.slot.len() < tokens * e {
            self.slot = gpu.alloc(tokens * e)?;
            self.wts = gpu.alloc(tokens * e)?;
        }
        Ok(())
    }

    /// One grouped step for `tokens` rows of `x`: the tables of `groups`
    /// uploaded, the rows gathered in expert order, all experts' FFNs in one
    /// grouped launch per GEMM, the weighted combine into `acc`
    /// (`[tokens][m]` fp32, added to). `between`: events recorded before the
    /// gather and after the FFNs.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        gpu: &Gpu,
        experts: &[ExpertWeights],
        x: &DeviceSlice<f16>,
        tokens: usize,
        groups: &[Vec<(usize, f32)>],
        acc: &mut DeviceSlice<f32>,
        between: Option<(&Event, &Event)>,
    ) -> Result<()> {
        let e = groups.len();
        if e != self.experts {
            return Err(shape(
                "GroupedPrefill::step",
                format!("{e} groups for {} experts", self.experts),
            ));
        }
        let m = self.m;
        let tables = RowTables::new(tokens, groups)?;
        let rows = tables.rows();
        self.reserve(gpu, rows.max(1), tokens, e)?;
        upload_into(&self.idx, &tables.idx, "row indices")?;
        upload_into(&self.slot, &tables.slot, "slots")?;
        upload_into(&self.wts, &tables.wts, "combine weights")?;
        if let Some((a, _)) = between {
            gpu.record_on(a)?;
        }
        if rows > 0 {
            gather_rows(gpu, x, &self.idx.index(..rows), m, &mut self.xs)?;
            self.ffn(gpu, experts, Rows::Host(&tables.counts))?;
        }
        if let Some((_, b)) = between {
            gpu.record_on(b)?;
        }
        combine_rows_f32(gpu, &self.ys, &self.slot, &self.wts, e, tokens, m, acc)
    }

    /// Both GEMMs of every expert on the gathered rows (`xs` -> `ys`), on
    /// the stacked layout or the decode packing of `experts`.
    pub(super) fn ffn(
        &mut self,
        gpu: &Gpu,
        experts: &[ExpertWeights],
        rows: Rows<'_>,
    ) -> Result<()> {
        const OP: &str = "GroupedPrefill::ffn";
        if rows.rows() > self.rows {
            return Err(shape(
                OP,
                format!("{} rows, buffers hold {}", rows.rows(), self.rows),
            ));
        }
        match &self.w {
            Some(w) if !self.prefer_packed => {
                let ws = self
                    .ws
                    .as_mut()
                    .ok_or_else(|| shape(OP, "no workspace".into()))?;
                crate::prefill::check_io(OP, w, ws, &self.xs, &self.ys, rows.rows())?;
                ffn_groups(
                    gpu,
                    OP,
                    w.m(),
                    w.m_h(),
                    crate::runtime::addr(&w.w13),
                    crate::runtime::addr(&w.w2),
                    crate::runtime::addr(&self.xs),
                    rows,
                    crate::runtime::addr(&self.ys),
                    ws,
                    None,
                )
            }
            _ => {
                // The packed path's intermediate (a layer holding the
                // stacked layout allocates it on its first packed step).
                if self.h.len() < self.rows * self.m_h {
                    self.h = gpu.alloc(self.rows * self.m_h)?;
                }
                let refs: Vec<&ExpertWeights> = experts.iter().collect();
                ffn_packed(gpu, &refs, &self.xs, rows, &mut self.h, &mut self.ys)
            }
        }
    }
}
