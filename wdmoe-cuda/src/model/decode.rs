//! Greedy decoding with the next step enqueued ahead
//! ([`GpuModel::decode_greedy`]): while the host completes step n (the
//! checks of its last layers, its argmax), the GPU already runs step n+1's
//! embedding, which reads step n's argmax on the device, and its first
//! layer. The host round trip between two tokens (token id up, argmax
//! down, the last checks: 0.06-0.08 ms per token on an H200, run Z8) then
//! overlaps GPU work instead of leaving the GPU idle.

use wdmoe_core::select::Policy;

use super::forward::{add_route, Chunk, Ids};
use super::{ForwardOut, GpuModel, LayerRoute};
use crate::error::{shape, Error, Result};
use crate::runtime::elapsed_ms;

/// Layers of the next step enqueued ahead: enough GPU work (about 0.2 ms
/// at Mixtral size) to cover the host's turn between two tokens.
const AHEAD_LAYERS: usize = 1;

/// `latency(position, layer, out)`: the experts' latencies `[experts]` \[s\]
/// of one token and layer.
pub type LatencyFn<'a> = dyn FnMut(usize, usize, &mut [f64]) -> Result<()> + 'a;

/// A decode step enqueued ahead: its embedding of the previous step's
/// argmax and its first layers, with the policy they were enqueued under.
pub(super) struct Ahead {
    chunk: Chunk,
    policy: Policy<f64>,
    /// The token it embeds (the previous step's argmax).
    token: u32,
}

impl GpuModel {
    /// One greedy decode step: `token` at position [`GpuModel::len`], its
    /// argmax in [`ForwardOut::argmax`] (as [`GpuModel::forward`] with
    /// [`Output::LastArgmax`](super::Output::LastArgmax), the same outputs). `latency(position,
    /// layer, out)` writes the experts' latencies `[experts]` in seconds
    /// for one token and layer, in order of position, then layer.
    ///
    /// Before completing the step, the next one is enqueued behind it: its
    /// token is this step's argmax, read on the device, and its first layer
    /// runs with `latency(position + 1, 0, …)`. A next call with that token
    /// (the greedy continuation) and the same policy continues it; any
    /// other call (another token, [`GpuModel::forward`], a truncation
    /// before its position, a change of settings) first waits for it and
    /// discards it. Turn this off with [`GpuModel::set_decode_pipeline`].
    pub fn decode_greedy(
        &mut self,
        token: u32,
        policy: &Policy<f64>,
        latency: &mut LatencyFn<'_>,
    ) -> Result<ForwardOut> {
        const OP: &str = "GpuModel::decode_greedy";
        if let Some(e) = self.ahead_err.take() {
            return Err(e);
        }
        let start = self.len;
        let layers = self.shape.layers;
        let ahead = self.ahead.take();
        let chunk = match ahead {
            Some(a) if a.chunk.start == start && a.token == token && a.policy == *policy => {
                Some(a.chunk)
            }
            Some(a) => {
                self.discard(a)?;
                None
            }
            None => None,
        };
        if start + 1 > self.dims.max_seq {
            return Err(shape(
                OP,
                format!(
                    "position {start}: the cache holds {} positions",
                    self.dims.max_seq
                ),
            ));
        }
        if token as usize >= self.shape.vocab {
            return Err(shape(
                OP,
                format!("token id {token} >= vocabulary {}", self.shape.vocab),
            ));
        }
        let mut c = match chunk {
            Some(c) => c,
            None => self.chunk_begin(Ids::Host(&[token]), start, 1, 0)?,
        };
        let ev = c.ev;
        let mut lat_of = |l: usize, out: &mut [f64]| latency(start, l, out);
        let r = self
            .chunk_layers(&mut c, layers, policy, &mut lat_of, None)
            .and_then(|()| self.chunk_tail(&c, Some(0..1), true));
        // The next step, behind this one: its first layers' MoE steps may
        // be enqueued once this step's are completed (checked).
        if r.is_ok() {
            self.chunk_check(&mut c, AHEAD_LAYERS, policy);
        }
        let mut next_err = None;
        if r.is_ok() && self.pipeline && start + 2 <= self.dims.max_seq {
            match self.enqueue_ahead(start + 1, ev ^ 1, policy, latency) {
                Ok(a) => self.ahead = Some(a),
                Err(e) => next_err = Some(e),
            }
        }
        let lat: Vec<f64> = c.lat.concat();
        let enqueue_s = c.enqueue_s;
        let steps = self.chunk_complete(c, policy);
        let done = r
            .and(steps)
            .and_then(|s| next_err.map_or(Ok(s), Err))
            .and_then(|s| {
                self.events[ev][1]
                    .synchronize()
                    .map_err(|e| Error::cuda("cuEventSynchronize", "a decode step", e))?;
                Ok(s)
            });
        let mut steps = match done {
            Ok(s) => s,
            Err(e) => {
                self.cancel_ahead()?;
                return Err(e);
            }
        };
        let mut gpu_time_s = elapsed_ms(&self.events[ev][0], &self.events[ev][1])? as f64 * 1e-3;
        let mut argmax = self.argmax_host.as_slice()[0];
        let mut reruns = 0;
        if steps.iter().any(|s| s.rerun) {
            // A device plan was not wdmoe-core's: the step runs again on the
            // host policy (as forward's chunks do), without the next one.
            self.cancel_ahead()?;
            reruns = 1;
            let on = self.device_policy;
            self.set_device_policy(false);
            let r = self.run_chunk(&[token], start, Some(0..1), policy, &lat, None);
            self.set_device_policy(on);
            steps = r?.0;
            gpu_time_s += elapsed_ms(&self.events[0][0], &self.events[0][1])? as f64 * 1e-3;
            argmax = self.gpu.download(&self.argmax.index(..1))?[0];
        }
        if argmax < 0 {
            self.cancel_ahead()?;
            return Err(Error::NonFinite {
                what: format!("the logits at position {start}"),
            });
        }
        if let Some(a) = &mut self.ahead {
            a.token = argmax as u32;
        }
        self.len = start + 1;
        let route_check_s = self
            .layers
            .iter_mut()
            .filter_map(|l| l.moe.local_mut())
            .map(|m| m.last_route_check_s())
            .sum::<f64>();
        let layers = steps
            .into_iter()
            .map(|s| {
                let mut r = LayerRoute {
                    logits: Vec::new(),
                    selections: Vec::new(),
                    token_latency_s: Vec::new(),
                    moe_time_s: 0.0,
                };
                add_route(&mut r, s);
                r
            })
            .collect();
        Ok(ForwardOut {
            logits: Vec::new(),
            argmax: Some(argmax as u32),
            start,
            layers,
            gpu_time_s,
            reruns,
            route_check_s,
            enqueue_s,
        })
    }

    /// The step at `pos` enqueued ahead: the embedding of the argmax on the
    /// device and the first [`AHEAD_LAYERS`] layers (event pair `ev`).
    fn enqueue_ahead(
        &mut self,
        pos: usize,
        ev: usize,
        policy: &Policy<f64>,
        latency: &mut LatencyFn<'_>,
    ) -> Result<Ahead> {
        let mut c = self.chunk_begin(Ids::Argmax, pos, 1, ev)?;
        let mut lat_of = |l: usize, out: &mut [f64]| latency(pos, l, out);
        let r = self.chunk_layers(&mut c, AHEAD_LAYERS, policy, &mut lat_of, None);
        let a = Ahead {
            chunk: c,
            policy: *policy,
            token: 0,
        };
        match r {
            Ok(()) => Ok(a),
            Err(e) => {
                self.discard(a)?;
                Err(e)
            }
        }
    }

    /// Waits for a step enqueued ahead and discards it (its layers' steps
    /// are completed, so that none stays pending; its outputs are rewritten
    /// by whatever runs next at its position).
    fn discard(&mut self, a: Ahead) -> Result<()> {
        let r = self.chunk_complete(a.chunk, &a.policy).map(drop);
        self.gpu.sync()?;
        r
    }

    /// Ends a decode step enqueued ahead, if any (see
    /// [`GpuModel::decode_greedy`]); also returns an error kept by
    /// [`GpuModel::end_ahead`].
    pub(super) fn cancel_ahead(&mut self) -> Result<()> {
        let r = match self.ahead.take() {
            Some(a) => self.discard(a),
            None => Ok(()),
        };
        match self.ahead_err.take() {
            Some(e) => Err(e),
            None => r,
        }
    }

    /// [`GpuModel::cancel_ahead`] for the settings that change how steps
    /// run (they return nothing): an error is kept for the next call.
    pub(super) fn end_ahead(&mut self) {
        if let Err(e) = self.cancel_ahead() {
            self.ahead_err = Some(e);
        }
    }

    /// Whether [`GpuModel::decode_greedy`] enqueues the next step before
    /// completing the current one (default true; false: each step alone,
    /// for comparisons: the outputs are the same).
    pub fn set_decode_pipeline(&mut self, on: bool) -> Result<()> {
        self.pipeline = on;
        if !on {
            self.cancel_ahead()?;
        }
        Ok(())
    }
}
