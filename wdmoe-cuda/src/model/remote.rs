//! A layer's MoE step with the experts elsewhere: the router (and
//! wdmoe-core's policy) here, the experts behind a
//! [`MoeExecutor`](crate::dist::MoeExecutor) — the base station of the
//! paper's system, its devices on other GPUs (`crate::dist::DistMoe`).

use cust::memory::{DeviceBuffer, DeviceSlice, LockedBuffer};
use half::f16;
use wdmoe_core::select::Policy;

use crate::dist::MoeExecutor;
use crate::error::{Error, Result};
use crate::moe::{route_tokens, MoeLayer, MoeStep};
use crate::router::Router;
use crate::runtime::{elapsed_ms, Gpu};

/// The router of a layer whose experts live on other GPUs, and its buffers.
pub(crate) struct RemoteRouter {
    router: Router,
    x: DeviceBuffer<f16>,
    acc: DeviceBuffer<f32>,
    probs: DeviceBuffer<f32>,
    logits: LockedBuffer<f32>,
    events: [cust::event::Event; 2],
    experts: usize,
}

impl RemoteRouter {
    /// Router G (`[experts][m]` fp16 on the host), steps of up to `max_tokens`.
    pub(crate) fn new(
        gpu: &Gpu,
        g: &[f16],
        experts: usize,
        m: usize,
        max_tokens: usize,
    ) -> Result<RemoteRouter> {
        Ok(RemoteRouter {
            router: Router::from_host(gpu, g, experts, m)?,
            x: gpu.alloc(max_tokens * m)?,
            acc: gpu.alloc(max_tokens * m)?,
            probs: gpu.alloc(max_tokens * experts)?,
            logits: LockedBuffer::new(&0.0f32, max_tokens * experts).map_err(|e| {
                Error::cuda(
                    "cuMemAllocHost",
                    format!("{} floats", max_tokens * experts),
                    e,
                )
            })?,
            events: [gpu.event()?, gpu.event()?],
            experts,
        })
    }
}

/// Where a layer's experts run.
pub(crate) enum LayerMoe {
    /// On this GPU: wdmoe-cuda's MoE step.
    Local(Box<MoeLayer>),
    /// On other GPUs, through a [`MoeExecutor`] passed to the forward call.
    Remote(RemoteRouter),
}

impl LayerMoe {
    /// The step's input, `[max_tokens][m]` fp16.
    pub(crate) fn input_dev_mut(&mut self) -> &mut DeviceSlice<f16> {
        match self {
            LayerMoe::Local(l) => l.input_dev_mut(),
            LayerMoe::Remote(r) => &mut r.x,
        }
    }

    /// What the next norm adds into the residual: the step's output, or
    /// the local step's deferred combine
    /// ([`MoeLayer::set_defer_combine`]).
    pub(crate) fn norm_add(&self) -> super::kernels::NormAdd<'_> {
        match self {
            LayerMoe::Local(l) => l.deferred_combine().map_or(
                super::kernels::NormAdd::Rows(l.output_dev()),
                super::kernels::NormAdd::Combine,
            ),
            LayerMoe::Remote(r) => super::kernels::NormAdd::Rows(&r.acc),
        }
    }

    /// The local MoE step (`None` for a remote layer).
    pub(crate) fn local_mut(&mut self) -> Option<&mut MoeLayer> {
        match self {
            LayerMoe::Local(l) => Some(l),
            LayerMoe::Remote(_) => None,
        }
    }

    /// Runs (or, for a device-planned local step, enqueues) layer `layer`'s
    /// step on `n` tokens; a remote step needs `exec`.
    pub(crate) fn enqueue(
        &mut self,
        gpu: &Gpu,
        layer: usize,
        n: usize,
        policy: &Policy<f64>,
        latency_s: &[f64],
        exec: Option<&mut (dyn MoeExecutor + '_)>,
    ) -> Result<Option<MoeStep>> {
        match self {
            LayerMoe::Local(l) => l.enqueue(n, policy, latency_s),
            LayerMoe::Remote(r) => {
                let exec = exec.ok_or_else(|| Error::Dist {
                    op: "GpuModel::forward",
                    detail: "the model's experts are remote: pass the executor (forward_remote)"
                        .into(),
                })?;
                let e = r.experts;
                gpu.record_on(&r.events[0])?;
                // Router and softmax, the logits into page-locked memory (one sync).
                r.router
                    .route_to_host(gpu, &r.x, n, &mut r.logits, &mut r.probs, None, None)?;
                let logits = r.logits[..n * e].to_vec();
                let routing = route_tokens(&logits, n, e, policy, latency_s)?;
                exec.step(gpu, layer, &r.x, n, &routing.groups, &mut r.acc)?;
                gpu.record_on(&r.events[1])?;
                let time_s = elapsed_ms(&r.events[0], &r.events[1])? as f64 * 1e-3;
                Ok(Some(MoeStep {
                    logits,
                    probs: Vec::new(),
                    routing,
                    expert_time_s: vec![0.0; e],
                    time_s,
                    rerun: false,
                }))
            }
        }
    }

    /// Whether a step is pending (local only; its completion waits only
    /// for that step, not for the stream).
    pub(crate) fn is_pending(&self) -> bool {
        match self {
            LayerMoe::Local(l) => l.is_pending(),
            LayerMoe::Remote(_) => false,
        }
    }

    /// Finishes a step that [`LayerMoe::enqueue`] left pending (local only).
    pub(crate) fn complete(&mut self, policy: &Policy<f64>, latency_s: &[f64]) -> Result<MoeStep> {
        match self {
            LayerMoe::Local(l) => l.complete(policy, latency_s),
            LayerMoe::Remote(_) => Err(Error::Dist {
                op: "GpuModel::forward",
                detail: "a remote step is never pending".into(),
            }),
        }
    }
}
