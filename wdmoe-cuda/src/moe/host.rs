//! Steps on a host-built plan: the step of a [`MoeLayer`] whose policy runs
//! on the host, and the decode experts on such a plan (also the re-run of a
//! device-planned step whose plan differed from wdmoe-core's).

use cust::event::Event;
use cust::memory::DeviceSlice;
use half::f16;
use wdmoe_core::select::Policy;

use super::encode::route_tokens;
use super::{MoeLayer, MoeStep};
use crate::error::{shape, Result};
use crate::ffn::{ffn_decode_combine, DecodeConfig, ExpertWeights, FfnWorkspace, RoutingPlan};
use crate::runtime::{elapsed_ms, Gpu};

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

impl MoeLayer {
    /// A step with the policy on the host: router and softmax, one
    /// synchronisation for the logits, wdmoe-core's routing, then the
    /// experts on its plan (grouped GEMMs or the decode kernels).
    pub(super) fn step_host(
        &mut self,
        n_tokens: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<MoeStep> {
        let (m, e) = (self.m, self.experts.len());
        let gpu = &self.gpu;
        let ev = &self.events;
        gpu.record_on(&ev[0])?;
        let mut acc = self.acc.index(..n_tokens * m);
        // Router + softmax, zeroing the accumulator, logits written straight
        // into page-locked host memory; waits for them (the one sync).
        self.router.route_to_host(
            gpu,
            &self.x,
            n_tokens,
            &mut self.logits_host,
            &mut self.probs,
            Some((&mut acc, m)),
            Some(&self.prefetch),
        )?;
        let ne = n_tokens * e;
        let routing = route_tokens(&self.logits_host[..ne], n_tokens, e, policy, latency_s)?;
        let groups = &routing.groups;
        let grouped_path = self.uses_prefill(n_tokens);
        if grouped_path {
            let g = self.prefill.as_mut().ok_or_else(|| {
                shape(
                    "MoeLayer::step",
                    "grouped prefill path without prefill weights".into(),
                )
            })?;
            g.step(
                gpu,
                &self.experts,
                &self.x,
                n_tokens,
                groups,
                &mut acc,
                Some((&ev[2], &ev[3])),
            )?;
        } else {
            self.plan.set(n_tokens, groups)?;
        }
        let ran = if grouped_path {
            Vec::new()
        } else {
            run_host_plan(
                gpu,
                &self.experts,
                &self.x,
                &self.plan,
                groups,
                &mut acc,
                &mut self.ws,
                &self.cfg,
                self.expert_timing.then_some(&ev[..]),
            )?
        };
        gpu.record_on(&ev[1])?;
        let time_s = elapsed_ms(&ev[0], &ev[1])? as f64 * 1e-3;
        let mut expert_time_s = vec![0.0; e];
        for q in ran {
            expert_time_s[q] = elapsed_ms(&ev[2 + 2 * q], &ev[3 + 2 * q])? as f64 * 1e-3;
        }
        if grouped_path {
            // One launch per GEMM for all experts: its time (gather
            // included) shared out in proportion to the experts' tokens.
            let total = elapsed_ms(&ev[2], &ev[3])? as f64 * 1e-3;
            let rows: usize = groups.iter().map(Vec::len).sum();
            for (t, g) in expert_time_s.iter_mut().zip(groups) {
                *t = total * g.len() as f64 / rows.max(1) as f64;
            }
        }
        let probs = self.probs_host(ne)?;
        Ok(MoeStep {
            logits: self.logits_host[..ne].to_vec(),
            probs,
            routing,
            expert_time_s,
            time_s,
            rerun: false,
        })
    }
}
