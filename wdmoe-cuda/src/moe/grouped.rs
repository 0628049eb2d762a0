//! The grouped prefill path of a layer (compute capability 9.0): the
//! token rows gathered in expert order, all experts' FFNs in one grouped
//! tensor-core launch per GEMM, the weighted combine back to token order.

use cust::event::Event;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceSlice};
use half::f16;

use super::encode::RowTables;
use crate::error::{shape, CudaCtx, Result};
use crate::prefill::{
    combine_rows_f32, ffn_grouped, gather_rows, PrefillWeights, PrefillWorkspace,
};
use crate::runtime::Gpu;

/// The grouped prefill path of a layer: all experts stacked in the prefill
/// layout, and buffers for the token rows in expert order (grown on demand).
pub struct GroupedPrefill {
    pub(super) w: PrefillWeights,
    pub(super) ws: Option<PrefillWorkspace>,
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
            .field("experts", &self.w.experts())
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
    /// The path for `w` (buffers allocated on the first step).
    pub fn new(gpu: &Gpu, w: PrefillWeights) -> Result<GroupedPrefill> {
        Ok(GroupedPrefill {
            ws: None,
            xs: gpu.alloc(1)?,
            ys: gpu.alloc(1)?,
            idx: gpu.alloc(1)?,
            slot: gpu.alloc(1)?,
            wts: gpu.alloc(1)?,
            rows: 0,
            w,
        })
    }

    /// Buffers for `rows` token rows and `tokens * e` slots.
    pub(super) fn reserve(
        &mut self,
        gpu: &Gpu,
        rows: usize,
        tokens: usize,
        e: usize,
    ) -> Result<()> {
        let (m, m_h) = (self.w.m(), self.w.m_h());
        if rows > self.rows {
            self.ws = None; // free before allocating the larger one
            self.xs = gpu.alloc(rows * m)?;
            self.ys = gpu.alloc(rows * m)?;
            self.idx = gpu.alloc(rows)?;
            self.ws = Some(PrefillWorkspace::new(gpu, m, m_h, rows)?);
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
    pub fn step(
        &mut self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        groups: &[Vec<(usize, f32)>],
        acc: &mut DeviceSlice<f32>,
        between: Option<(&Event, &Event)>,
    ) -> Result<()> {
        let e = groups.len();
        if e != self.w.experts() {
            return Err(shape(
                "GroupedPrefill::step",
                format!("{e} groups for {} experts", self.w.experts()),
            ));
        }
        let m = self.w.m();
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
            let ws = self
                .ws
                .as_mut()
                .ok_or_else(|| shape("GroupedPrefill::step", "no workspace".into()))?;
            ffn_grouped(
                gpu,
                &self.w,
                &self.xs,
                &tables.counts,
                &mut self.ys,
                ws,
                None,
            )?;
        }
        if let Some((_, b)) = between {
            gpu.record_on(b)?;
        }
        combine_rows_f32(gpu, &self.ys, &self.slot, &self.wts, e, tokens, m, acc)
    }
}
