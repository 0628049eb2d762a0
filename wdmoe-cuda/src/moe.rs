//! Pieces of the GPU MoE step that belong to the kernels: the encoding of
//! wdmoe-core's per-expert token groups for each path (the grouped prefill's
//! row/slot tables, the decode path's [`RoutingPlan`]), the check of a
//! device-built plan against wdmoe-core's groups ([`same_plan`]), the
//! host-plan expert loop the decode path and the re-run share
//! ([`run_host_plan`]), and the grouped prefill's buffers
//! ([`GroupedPrefill`]). wdmoe-sim's `layer::gpu::GpuLayer` drives them.
//!
//! Groups are wdmoe-core's selections grouped per expert: `groups[q]` holds
//! expert q's `(token, combine weight)` pairs in token order.

use cust::event::Event;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceSlice};
use half::f16;

use crate::error::{shape, CudaCtx, Result};
use crate::ffn::{ffn_decode_combine, DecodeConfig, ExpertWeights, FfnWorkspace, RoutingPlan};
use crate::plan::PlanReport;
use crate::prefill::{
    combine_rows_f32, ffn_grouped, gather_rows, PrefillWeights, PrefillWorkspace,
};
use crate::runtime::Gpu;

/// The grouped prefill's encoding of the groups: the token of each gathered
/// row in expert order (`idx`), and per token `t` and its `j`-th expert the
/// row of that expert's output (`slot[t * experts + j]`, -1: none) and its
/// combine weight (`wts`, same index); `counts[q]`: rows of expert q.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowTables {
    /// Token of each row, rows in expert order.
    pub idx: Vec<i32>,
    /// `[tokens][experts]`: row of token t's j-th expert, -1 if none.
    pub slot: Vec<i32>,
    /// `[tokens][experts]`: its combine weight (0 if none).
    pub wts: Vec<f32>,
    /// Rows per expert.
    pub counts: Vec<usize>,
}

impl RowTables {
    /// Encodes `groups` (one per expert) for `tokens` tokens; an error if a
    /// token index is out of range or a token has more entries than experts.
    pub fn new(tokens: usize, groups: &[Vec<(usize, f32)>]) -> Result<RowTables> {
        const OP: &str = "RowTables::new";
        let e = groups.len();
        let rows: usize = groups.iter().map(Vec::len).sum();
        let mut t = RowTables {
            idx: Vec::with_capacity(rows),
            slot: vec![-1; tokens * e],
            wts: vec![0.0; tokens * e],
            counts: groups.iter().map(Vec::len).collect(),
        };
        let mut used = vec![0usize; tokens];
        for (q, group) in groups.iter().enumerate() {
            for &(tok, w) in group {
                if tok >= tokens || used[tok] >= e {
                    return Err(shape(
                        OP,
                        format!("expert {q}: token {tok} of {tokens} (or more than {e} experts)"),
                    ));
                }
                let j = tok * e + used[tok];
                t.slot[j] = t.idx.len() as i32;
                t.wts[j] = w;
                used[tok] += 1;
                t.idx.push(tok as i32);
            }
        }
        Ok(t)
    }

    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.idx.len()
    }
}

/// Whether the device's plan is wdmoe-core's: the same experts in the same
/// (expert) order, the same tokens, bit-identical fp32 weights (the device
/// port computes the same f64 bits as wdmoe-core, see kernels/router.cu).
pub fn same_plan(report: &PlanReport, groups: &[Vec<(usize, f32)>]) -> bool {
    if report.failed_token.is_some() {
        return false;
    }
    let mut slots = report.slots.iter();
    for (q, g) in groups.iter().enumerate() {
        if g.is_empty() {
            continue;
        }
        let Some(s) = slots.next() else {
            return false;
        };
        if s.expert != q || s.tokens.len() != g.len() {
            return false;
        }
        for (&(ta, wa), &(tb, wb)) in s.tokens.iter().zip(g) {
            if ta != tb || wa.to_bits() != wb.to_bits() {
                return false;
            }
        }
    }
    slots.next().is_none()
}

/// The decode experts on a host-built plan (`plan`, set from `groups`): for
/// each expert with tokens its two kernels (tokens by value, the combine
/// into `acc`), between events `events[2 + 2q]` and `events[3 + 2q]` when
/// given; returns the experts that ran between events.
#[allow(clippy::too_many_arguments)]
pub fn run_host_plan(
    gpu: &Gpu,
    experts: &[ExpertWeights],
    x: &DeviceSlice<f16>,
    plan: &RoutingPlan,
    groups: &[Vec<(usize, f32)>],
    acc: &mut DeviceSlice<f32>,
    ws: &mut FfnWorkspace,
    cfg: &DecodeConfig,
    events: Option<&[Event]>,
) -> Result<Vec<usize>> {
    let mut ran = Vec::new();
    for (q, group) in groups.iter().enumerate() {
        if group.is_empty() {
            continue;
        }
        if let Some(ev) = events {
            gpu.record_on(&ev[2 + 2 * q])?;
        }
        ffn_decode_combine(gpu, &experts[q], x, plan, q, acc, ws, cfg)?;
        if let Some(ev) = events {
            gpu.record_on(&ev[3 + 2 * q])?;
            ran.push(q);
        }
    }
    Ok(ran)
}

/// The grouped prefill path of a layer: all experts stacked in the prefill
/// layout, and buffers for the token rows in expert order (grown on demand).
pub struct GroupedPrefill {
    w: PrefillWeights,
    ws: Option<PrefillWorkspace>,
    xs: DeviceBuffer<f16>,
    ys: DeviceBuffer<f16>,
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
    fn reserve(&mut self, gpu: &Gpu, rows: usize, tokens: usize, e: usize) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedSlot;

    #[test]
    fn row_tables_put_rows_in_expert_order() {
        // 3 tokens, 3 experts: token 0 -> experts 0 and 2, token 1 -> 2,
        // token 2 -> 0 and 1.
        let groups = vec![
            vec![(0, 0.6), (2, 0.5)],
            vec![(2, 0.5)],
            vec![(0, 0.4), (1, 1.0)],
        ];
        let t = RowTables::new(3, &groups).unwrap();
        assert_eq!(t.idx, vec![0, 2, 2, 0, 1]);
        assert_eq!(t.counts, vec![2, 1, 2]);
        assert_eq!(t.slot, vec![0, 3, -1, 4, -1, -1, 1, 2, -1]);
        assert_eq!(t.wts, vec![0.6, 0.4, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0]);
        assert!(RowTables::new(2, &groups).is_err(), "token 2 of 2");
        let too_many = vec![vec![(0, 0.5)], vec![(0, 0.5)], vec![(0, 0.5), (0, 0.1)]];
        assert!(RowTables::new(1, &too_many).is_err());
    }

    #[test]
    fn same_plan_requires_identical_experts_tokens_and_weight_bits() {
        let groups = vec![vec![(0, 0.6f32)], vec![], vec![(0, 0.4f32), (1, 1.0)]];
        let slot = |expert, tokens: &[(usize, f32)]| PlannedSlot {
            expert,
            tokens: tokens.to_vec(),
        };
        let good = PlanReport {
            failed_token: None,
            slots: vec![slot(0, &[(0, 0.6)]), slot(2, &[(0, 0.4), (1, 1.0)])],
        };
        assert!(same_plan(&good, &groups));
        let mut r = good.clone();
        r.slots[1].expert = 1;
        assert!(!same_plan(&r, &groups));
        let mut r = good.clone();
        r.slots[1].tokens[1].0 = 2;
        assert!(!same_plan(&r, &groups));
        let mut r = good.clone();
        r.slots[0].tokens[0].1 = f32::from_bits(0.6f32.to_bits() + 1);
        assert!(!same_plan(&r, &groups), "one ulp is a difference");
        let mut r = good.clone();
        r.slots.push(slot(3, &[(1, 0.5)]));
        assert!(!same_plan(&r, &groups));
        let mut r = good.clone();
        r.slots.pop();
        assert!(!same_plan(&r, &groups));
        let failed = PlanReport {
            failed_token: Some(0),
            slots: Vec::new(),
        };
        assert!(!same_plan(&failed, &groups));
        assert!(!same_plan(&failed, &[vec![], vec![]]));
    }
}
