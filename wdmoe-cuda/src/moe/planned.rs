//! The device-planned decode step of a [`MoeLayer`]
//! ([`MoeLayer::set_device_policy_tokens`]): router, policy and plan in one
//! kernel, the plan's slot kernels enqueued with it (no host round trip
//! inside the step; all slots in two launches where the shapes allow);
//! then wdmoe-core's check of the plan and, on a difference, the experts
//! again on wdmoe-core's plan.

use wdmoe_core::select::Policy;

use super::encode::{route_tokens, same_plan};
use super::host::run_host_plan;
use super::{MoeLayer, MoeStep};
use crate::error::{CudaCtx, Error, Result};
use crate::ffn::{ffn_decode_slot, ffn_decode_slots, gate_up_prefetch_ranges, slots_merge};
use crate::runtime::elapsed_ms;

impl MoeLayer {
    /// The decode step with the policy on the GPU ([`MoeLayer::set_device_policy_tokens`]):
    /// router + policy + plan in one kernel, then for each of the
    /// `min(experts, tokens · k)` plan slots the two slot kernels, all
    /// enqueued at once; then wdmoe-core checks the plan.
    pub(super) fn enqueue_device_planned(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<()> {
        let m = self.m;
        let pol = self.plan_policy(policy)?.with_profile(self.profile_router);
        let gpu = &self.gpu;
        let ev = &self.events;
        if self.step_timing {
            gpu.record_on(&ev[0])?;
        }
        let mut acc = self.acc.index(..n_tokens * m);
        // All slots in two launches where the shapes allow (no per-expert
        // events to put between them): the router makes min(experts,
        // tokens k) slots, and the first gate/up launch holds all of them
        // then, else one.
        let merge = !self.expert_timing && self.merge_slots;
        let slots = self.experts.len().min(n_tokens * pol.k());
        let first_launch = if merge && slots_merge(&self.cfg, n_tokens, slots) {
            slots
        } else {
            1
        };
        let prefetch = gate_up_prefetch_ranges(
            &self.experts[0],
            &self.cfg,
            n_tokens,
            first_launch,
            self.prefetch.bytes(),
        );
        self.router.route_plan(
            gpu,
            &self.x,
            n_tokens,
            &mut self.probs,
            (&mut acc, m),
            &mut self.device,
            &pol,
            latency_s,
            &prefetch,
        )?;
        let n_slots = self.device.n_slots();
        if merge {
            ffn_decode_slots(
                gpu,
                &self.experts,
                &self.device,
                &self.x,
                &mut acc,
                &mut self.ws,
                &self.cfg,
            )?;
        } else {
            for s in 0..n_slots {
                if self.expert_timing {
                    gpu.record_on(&ev[2 + 2 * s])?;
                }
                ffn_decode_slot(
                    gpu,
                    &self.experts,
                    &self.device,
                    s,
                    &self.x,
                    &mut acc,
                    &mut self.ws,
                    &self.cfg,
                )?;
                if self.expert_timing {
                    gpu.record_on(&ev[3 + 2 * s])?;
                }
            }
        }
        if self.step_timing {
            gpu.record_on(&ev[1])?;
        }
        Ok(())
    }

    /// The second half of a device-planned step: wdmoe-core checks the plan.
    pub(super) fn complete_device_planned(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<MoeStep> {
        let (m, e) = (self.m, self.experts.len());
        let gpu = &self.gpu;
        let ev = &self.events;
        let mut acc = self.acc.index(..n_tokens * m);
        // wdmoe-core on the same logits, once this step's router has
        // reported (later kernels may still run: the model checks a step
        // while the GPU runs the layers after it).
        if self.step_timing {
            ev[1]
                .synchronize()
                .ctx("cuEventSynchronize", || "device-planned step".into())?;
        } else {
            self.device.wait_report(gpu)?;
        }
        let report = self.device.report_ready()?;
        let logits = self.device.logits_ready().to_vec();
        let routing = route_tokens(&logits, n_tokens, e, policy, latency_s)?;
        let groups = &routing.groups;
        let mut times = vec![0.0f64; e];
        let rerun = !same_plan(&report, groups);
        if !rerun {
            if self.expert_timing && self.step_timing {
                for (s, slot) in report.slots.iter().enumerate() {
                    times[slot.expert] = elapsed_ms(&ev[2 + 2 * s], &ev[3 + 2 * s])? as f64 * 1e-3;
                }
            }
        } else {
            // The device plan is not wdmoe-core's: run the experts again
            // with wdmoe-core's plan (the step's time includes both).
            self.mismatches += 1;
            acc.set_zero().map_err(|err| {
                Error::cuda(
                    "cuMemsetD32",
                    format!("accumulator of {n_tokens} x {m}"),
                    err,
                )
            })?;
            self.plan.set(n_tokens, groups)?;
            let ran = run_host_plan(
                gpu,
                &self.experts,
                &self.x,
                &self.plan,
                groups,
                &mut acc,
                &mut self.ws,
                &self.cfg,
                self.expert_timing.then_some(&ev[..]),
            )?;
            gpu.record_on(&ev[1])?;
            gpu.sync()?;
            for q in ran {
                times[q] = elapsed_ms(&ev[2 + 2 * q], &ev[3 + 2 * q])? as f64 * 1e-3;
            }
        }
        let time_s = if self.step_timing {
            elapsed_ms(&ev[0], &ev[1])? as f64 * 1e-3
        } else {
            0.0
        };
        let probs = self.probs_host(n_tokens * e)?;
        Ok(MoeStep {
            logits,
            probs,
            routing,
            expert_time_s: times,
            time_s,
            rerun,
        })
    }
}
