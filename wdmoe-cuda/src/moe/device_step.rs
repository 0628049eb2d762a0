//! The device-routed grouped step of a [`MoeLayer`]
//! ([`MoeLayer::set_device_routing`]): router, policy, counting sort,
//! gather, grouped GEMMs and combine all enqueued at once, no host round
//! trip inside the step; then the check against wdmoe-core (every
//! [`MoeLayer::set_route_check_every`]-th step) and, on a difference, the
//! step again with wdmoe-core's plan (the host-routed grouped step).

use std::time::Instant;

use cust::event::Event;
use cust::memory::{AsyncCopyDestination, DeviceBuffer, DeviceSlice, LockedBuffer};
use half::f16;
use wdmoe_core::select::Policy;

use super::device_route::{
    counting_sort, gather_sorted, groups_from_sel, route_select, sel_width, selection_mismatch,
    SortTables,
};
use super::encode::{route_tokens, Groups, Routing};
use super::grouped::GroupedPrefill;
use super::{MoeLayer, MoeStep};
use crate::error::{shape, CudaCtx, Error, Result};
use crate::ffn::ExpertWeights;
use crate::prefill::{combine_rows_f32, DeferredCombine, Rows};
use crate::runtime::{elapsed_ms, Gpu};

/// Settings, counters and device buffers of device routing (one per layer).
#[derive(Debug)]
pub(crate) struct DeviceRouting {
    on: bool,
    check_every: u64,
    steps: u64,
    last_check_s: f64,
    bufs: Option<RouteBuffers>,
}

impl Default for DeviceRouting {
    fn default() -> Self {
        DeviceRouting {
            on: true,
            check_every: 1,
            steps: 0,
            last_check_s: 0.0,
            bufs: None,
        }
    }
}

/// Buffers for steps of up to `tokens` tokens (allocated on the first
/// device-routed step, for the layer's most tokens), with page-locked host
/// copies: the latencies go up and the selections and logits come down by
/// copies enqueued with the step, so that enqueuing never waits for the
/// GPU and the check waits only for this step (`done`), not the stream.
struct RouteBuffers {
    lat: DeviceBuffer<f64>,
    logits: DeviceBuffer<f32>,
    sel: DeviceBuffer<i32>,
    tables: SortTables,
    lat_host: LockedBuffer<f64>,
    logits_host: LockedBuffer<f32>,
    sel_host: LockedBuffer<i32>,
    done: Event,
}

impl std::fmt::Debug for RouteBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteBuffers")
            .field("tables", &self.tables)
            .finish()
    }
}

impl RouteBuffers {
    fn new(gpu: &Gpu, tokens: usize, e: usize) -> Result<RouteBuffers> {
        let locked = |what: &str, n: usize| {
            let what = what.to_string();
            move |err| Error::cuda("cuMemAllocHost", format!("{what}: {n} values"), err)
        };
        let (ne, ns) = (tokens * e, tokens * sel_width(e));
        Ok(RouteBuffers {
            lat: gpu.alloc(ne)?,
            logits: gpu.alloc(ne)?,
            sel: gpu.alloc(ns)?,
            // k <= e: at most tokens x e rows.
            tables: SortTables::new(gpu, tokens, e, ne)?,
            lat_host: LockedBuffer::new(&0.0, ne.max(1)).map_err(locked("latencies", ne))?,
            logits_host: LockedBuffer::new(&0.0, ne.max(1)).map_err(locked("logits", ne))?,
            sel_host: LockedBuffer::new(&0, ns.max(1)).map_err(locked("selections", ns))?,
            done: gpu.event()?,
        })
    }
}

impl GroupedPrefill {
    /// The grouped step on the device's tables `t` (for `tokens` tokens, at
    /// most `rows_cap` rows): the rows gathered in the device's expert
    /// order, both GEMMs reading the row offsets on the device, the combine
    /// into `acc` (`[tokens][m]` fp32, overwritten). `between`: events
    /// before the gather and after the FFNs (none: nothing but kernels
    /// between them).
    #[allow(clippy::too_many_arguments)]
    fn step_device(
        &mut self,
        gpu: &Gpu,
        experts: &[ExpertWeights],
        x: &DeviceSlice<f16>,
        tokens: usize,
        t: &SortTables,
        rows_cap: usize,
        acc: Option<&mut DeviceSlice<f32>>,
        between: Option<(&cust::event::Event, &cust::event::Event)>,
    ) -> Result<Option<DeferredCombine>> {
        let (m, e) = (self.m(), self.experts());
        if t.experts() != e || tokens > t.tokens() {
            return Err(shape(
                "GroupedPrefill::step_device",
                format!(
                    "tables of {} experts / {} tokens for {e} experts, {tokens} tokens",
                    t.experts(),
                    t.tokens()
                ),
            ));
        }
        self.reserve(gpu, rows_cap.max(1), tokens, e)?;
        if let Some((a, _)) = between {
            gpu.record_on(a)?;
        }
        gather_sorted(gpu, x, tokens, t, rows_cap, m, &mut self.xs)?;
        if t.offsets.len() < e + 1 {
            return Err(shape(
                "GroupedPrefill::step_device",
                format!("{} row offsets for {e} experts", t.offsets.len()),
            ));
        }
        // The tables' offsets are written by counting_sort on this stream.
        self.ffn(
            gpu,
            experts,
            Rows::Device {
                offsets: crate::runtime::addr(&t.offsets),
                groups: e,
                max_rows: rows_cap,
            },
        )?;
        if let Some((_, b)) = between {
            gpu.record_on(b)?;
        }
        match acc {
            Some(acc) => {
                combine_rows_f32(gpu, &self.ys, &t.slot, &t.wts, e, tokens, m, acc).map(|()| None)
            }
            None => DeferredCombine::new(&self.ys, &t.slot, &t.wts, e, tokens, m).map(Some),
        }
    }
}

/// Steps of fewer tokens write their combine even where it may be deferred
/// ([`MoeLayer::set_defer_combine`]): the fused norm sums each token's
/// slots one round trip at a time, which pays where the combine's rows are
/// large (2,048 tokens: 0.9 ms per prompt, run E5) and may not at 128
/// tokens, where a norm's blocks are few (a choice: not timed between).
pub(crate) const DEFER_COMBINE_MIN_TOKENS: usize = 512;

impl MoeLayer {
    /// Steps on the grouped prefill path ([`MoeLayer::uses_prefill`]) route
    /// on the device (default true: 0 mismatches and 1.4–1.6x the
    /// host-routed step on an H200, BENCHMARKS.md runs W1, W2, W5): after the router kernel (the
    /// host-routed step's, so the same logits and probabilities bit for
    /// bit) one warp per token runs the port of wdmoe-core's `select`
    /// (kernels/policy.cuh, the one the decode plan uses), a counting sort on the GPU builds the per-expert
    /// token lists and the row tables, the rows are gathered in expert
    /// order, the two grouped GEMMs read the per-expert row offsets from
    /// device memory (launched for the worst case, tiles past the real rows
    /// exit), and the combine follows; all enqueued at once, no host round
    /// trip inside the step. After the step the host checks the device's
    /// selections against wdmoe-core on the downloaded logits
    /// ([`MoeLayer::set_route_check_every`]); on any difference (an expert,
    /// a token, one bit of a weight) the step runs again with wdmoe-core's
    /// plan on the host-routed grouped path (counted by
    /// [`MoeLayer::device_policy_mismatches`]), so results follow
    /// wdmoe-core. Needs positive latencies (else the host path runs, which
    /// reports them).
    pub fn set_device_routing(&mut self, on: bool) {
        self.route.on = on;
    }

    /// Check every `n`-th device-routed step against wdmoe-core (default 1:
    /// every step; 0: never). The check downloads the logits and the
    /// selections (`tokens x (experts + 1 + 2k)` 32-bit words; 4,096 tokens,
    /// 8 experts, top-2: 208 KB) and runs wdmoe-core's policy on the host
    /// for every token (in parallel from 256 tokens): host time after the
    /// step's GPU work, not inside it ([`MoeLayer::last_route_check_s`]; the
    /// step's `time_s` excludes it unless the step is re-run). On steps not
    /// checked the selections are downloaded alone and
    /// `MoeStep::routing` holds the device's groups and token latencies
    /// with `selections` empty (wdmoe-core did not run).
    pub fn set_route_check_every(&mut self, n: u64) {
        self.route.check_every = n;
    }

    /// Host seconds of the last device-routed step's check (download,
    /// wdmoe-core's policy, comparison); 0 when it was not checked.
    pub fn last_route_check_s(&self) -> f64 {
        self.route.last_check_s
    }

    /// Whether a step of `n_tokens` tokens with these latencies takes the
    /// device-routed grouped path ([`MoeLayer::set_device_routing`]).
    pub fn uses_device_routing(&self, n_tokens: usize, latency_s: &[f64]) -> bool {
        self.route.on
            && self.uses_prefill(n_tokens)
            && latency_s.iter().all(|t| *t > 0.0)
            && self.experts.len() <= crate::plan::MAX_SLOTS
    }

    /// Enqueues the device-routed grouped step (see
    /// [`MoeLayer::set_device_routing`]) without waiting for the GPU;
    /// [`MoeLayer::complete_device_routed`] checks it. `n_tokens` and
    /// `latency_s` validated by the caller.
    pub(super) fn enqueue_device_routed(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<()> {
        let (m, e) = (self.m, self.experts.len());
        let mut pa = self.plan_policy(policy)?.args(e);
        let k = pa.k as usize;
        let sw = sel_width(k);
        let rows_cap = n_tokens * k;
        if self.route.bufs.is_none() {
            self.route.bufs = Some(RouteBuffers::new(&self.gpu, self.max_tokens, e)?);
        }
        let (Some(b), Some(g)) = (self.route.bufs.as_mut(), self.prefill.as_mut()) else {
            return Err(shape(
                "MoeLayer::enqueue_device_routed",
                "grouped prefill path without prefill weights".into(),
            ));
        };
        let gpu = &self.gpu;
        let ev = &self.events;
        // Events only where the step is timed (each one ends the overlap of
        // the kernels on either side: MoeLayer::set_step_timing).
        let timing = self.step_timing;
        if timing {
            gpu.record_on(&ev[0])?;
        }
        let per_token = latency_s.len() != e;
        if per_token {
            // Staged in page-locked memory and copied on the copy stream
            // (the router waits for it there, not behind the kernels): the
            // previous step of this layer was completed (its `done` event
            // waited for), so neither buffer is still in use.
            let n = latency_s.len();
            b.lat_host[..n].copy_from_slice(latency_s);
            // SAFETY: lat_host is page-locked and stays untouched until this
            // step's `done` event (recorded after the copy, on the same
            // stream) has been waited for in complete_device_routed; both
            // sides hold n values.
            unsafe {
                b.lat
                    .index(..n)
                    .async_copy_from(&b.lat_host[..n], gpu.copy_stream())
                    .ctx("cuMemcpyHtoDAsync", || format!("latencies: {n} values"))?;
            }
            gpu.order_after(gpu.stream(), gpu.copy_stream())?;
        } else {
            pa.lat[..e].copy_from_slice(latency_s);
        }
        route_select(
            gpu,
            &self.router,
            &self.x,
            n_tokens,
            &pa,
            per_token.then(|| &*b.lat),
            &mut b.logits,
            &mut self.probs,
            &mut b.sel,
        )?;
        counting_sort(gpu, &b.sel, sw, n_tokens, &mut b.tables)?;
        let mut acc = self.acc.index(..n_tokens * m);
        self.deferred = g.step_device(
            gpu,
            &self.experts,
            &self.x,
            n_tokens,
            &b.tables,
            rows_cap,
            (!(self.defer_combine && n_tokens >= DEFER_COMBINE_MIN_TOKENS)).then_some(&mut acc),
            timing.then_some((&ev[2], &ev[3])),
        )?;
        if timing {
            gpu.record_on(&ev[1])?;
        }
        // The device's selections and logits for the check, copied down on
        // the copy stream once the step is done (the next layer's kernels
        // go on meanwhile); `done` marks the step and the copies complete.
        let ns = n_tokens * sw;
        let ne = n_tokens * e;
        let copies = gpu.copy_stream();
        gpu.order_after(copies, gpu.stream())?;
        // SAFETY: the host buffers are page-locked, hold ns / ne values
        // (sized for the most tokens) and are read only after `done` has
        // been waited for (complete_device_routed); the device buffers are
        // this layer's and are written again only by its next step, which
        // the host enqueues after that wait.
        unsafe {
            b.sel
                .index(..ns)
                .async_copy_to(&mut b.sel_host[..ns], copies)
                .ctx("cuMemcpyDtoHAsync", || format!("selections: {ns} values"))?;
            b.logits
                .index(..ne)
                .async_copy_to(&mut b.logits_host[..ne], copies)
                .ctx("cuMemcpyDtoHAsync", || format!("logits: {ne} values"))?;
        }
        gpu.record_on_stream(&b.done, copies)
    }

    /// Finishes a step of [`MoeLayer::enqueue_device_routed`] (synchronises):
    /// the device's selections downloaded and (every
    /// [`MoeLayer::set_route_check_every`] steps) checked against
    /// wdmoe-core's policy on the step's logits; on a difference the experts
    /// run again on wdmoe-core's plan and [`MoeStep::rerun`] is set (kernels
    /// enqueued after the step read the first output).
    pub(super) fn complete_device_routed(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<MoeStep> {
        let (m, e) = (self.m, self.experts.len());
        // The selection width the enqueued step used.
        let sw = sel_width(self.plan_policy(policy)?.args(e).k as usize);
        let ne = n_tokens * e;
        let (Some(b), Some(g)) = (self.route.bufs.as_mut(), self.prefill.as_mut()) else {
            return Err(shape(
                "MoeLayer::complete_device_routed",
                "no device-routed step was enqueued".into(),
            ));
        };
        let gpu = &self.gpu;
        let ev = &self.events;
        let timing = self.step_timing;
        let mut acc = self.acc.index(..n_tokens * m);
        // After the step: the device's selections, and wdmoe-core's check.
        self.route.steps += 1;
        let every = self.route.check_every;
        let check = every > 0 && (self.route.steps - 1) % every == 0;
        // This step's GPU work and copies done (later work of the stream
        // may still run): what follows is the check's cost.
        b.done
            .synchronize()
            .ctx("cuEventSynchronize", || "device-routed step".into())?;
        let t0 = Instant::now();
        let sel = b.sel_host[..n_tokens * sw].to_vec();
        let logits = b.logits_host[..ne].to_vec();
        let (routing, rerun) = if check {
            let routing = route_tokens(&logits, n_tokens, e, policy, latency_s)?;
            let bad = selection_mismatch(&sel, sw, &routing.selections, e);
            (routing, bad.is_some())
        } else {
            (device_routing(&sel, sw, n_tokens, e, latency_s)?, false)
        };
        self.route.last_check_s = if check {
            t0.elapsed().as_secs_f64()
        } else {
            0.0
        };
        if rerun {
            // The device's plan is not wdmoe-core's: the step again with
            // wdmoe-core's plan (its time includes both).
            self.mismatches += 1;
            g.step(
                gpu,
                &self.experts,
                &self.x,
                n_tokens,
                &routing.groups,
                &mut acc,
                timing.then_some((&ev[2], &ev[3])),
            )?;
            if timing {
                gpu.record_on(&ev[1])?;
            }
        }
        let (time_s, total) = if timing {
            (
                elapsed_ms(&ev[0], &ev[1])? as f64 * 1e-3,
                elapsed_ms(&ev[2], &ev[3])? as f64 * 1e-3,
            )
        } else {
            (0.0, 0.0)
        };
        // One launch per GEMM for all experts: its time (gather included)
        // shared out in proportion to the experts' tokens.
        let rows: usize = routing.groups.iter().map(Vec::len).sum();
        let expert_time_s = routing
            .groups
            .iter()
            .map(|g| total * g.len() as f64 / rows.max(1) as f64)
            .collect();
        let probs = self.probs_host(ne)?;
        Ok(MoeStep {
            logits,
            probs,
            routing,
            expert_time_s,
            time_s,
            rerun,
        })
    }
}

/// The routing of an unchecked step from the device's selections: groups
/// and token latencies (eq. 7 through wdmoe-core), no wdmoe-core
/// selections.
fn device_routing(
    sel: &[i32],
    sw: usize,
    tokens: usize,
    e: usize,
    latency_s: &[f64],
) -> Result<Routing> {
    let groups: Groups = groups_from_sel(sel, sw, tokens, e)?;
    let mut experts: Vec<Vec<usize>> = vec![Vec::new(); tokens];
    for (q, g) in groups.iter().enumerate() {
        for &(t, _) in g {
            experts[t].push(q);
        }
    }
    let token_latency_s = experts
        .iter()
        .enumerate()
        .map(|(t, s)| {
            wdmoe_core::latency::token_latency_s(super::latencies_for(latency_s, t, e), s)
                .map_err(crate::error::Error::Policy)
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(Routing {
        selections: Vec::new(),
        token_latency_s,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchecked_routing_takes_the_device_groups_and_eq7_latencies() {
        // 2 tokens, 3 experts, top-2 rows: token 0 -> experts 2 and 0,
        // token 1 -> expert 1 alone.
        let w = |x: f32| x.to_bits() as i32;
        let sel = [2, 2, 0, w(0.7), w(0.3), 1, 1, -7, w(1.0), 0];
        let lat = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06];
        let r = device_routing(&sel, 5, 2, 3, &lat).unwrap();
        assert!(r.selections.is_empty());
        assert_eq!(
            r.groups,
            vec![vec![(0, 0.3)], vec![(1, 1.0)], vec![(0, 0.7)]]
        );
        // Eq. 7: the slowest selected expert of each token (token 1 reads
        // the second row of the latencies).
        assert_eq!(r.token_latency_s, vec![0.03, 0.05]);
        assert!(device_routing(&sel, 5, 3, 3, &lat).is_err(), "short rows");
    }
}
