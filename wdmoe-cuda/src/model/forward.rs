//! Running tokens through the model: [`GpuModel::forward`] (and
//! `forward_remote`) split a call into chunks, and `run_chunk` enqueues one
//! chunk through every layer, then completes (checks) the MoE steps.

use cust::memory::CopyDestination;
use wdmoe_core::select::Policy;

use super::{attention, kernels};
use super::{norm_early_default, ForwardOut, GpuModel, LayerRoute, Output};
use crate::dist::MoeExecutor;
use crate::error::{shape, Error, Result};
use crate::moe::MoeStep;
use crate::runtime::elapsed_ms;

impl GpuModel {
    /// Runs `tokens` at positions `len..len+n`: `latency_s` holds the
    /// experts' latencies for every token and layer, `[n][layers][experts]`
    /// seconds (> 0, `+∞`: unreachable), and `policy` selects per token
    /// and layer. Errors leave the cache as it was.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        out: Output,
        policy: &Policy<f64>,
        latency_s: &[f64],
    ) -> Result<ForwardOut> {
        self.forward_inner(tokens, out, policy, latency_s, None)
    }

    /// [`GpuModel::forward`] for a model of [`GpuModel::random_remote`]:
    /// every layer's experts run through `exec` (e.g. `dist::DistMoe`: the
    /// rows of each selected token sent to its expert's GPU); the router
    /// and wdmoe-core's policy run here, on the host, per layer.
    pub fn forward_remote(
        &mut self,
        tokens: &[u32],
        out: Output,
        policy: &Policy<f64>,
        latency_s: &[f64],
        exec: &mut dyn MoeExecutor,
    ) -> Result<ForwardOut> {
        self.forward_inner(tokens, out, policy, latency_s, Some(exec))
    }

    fn forward_inner(
        &mut self,
        tokens: &[u32],
        out: Output,
        policy: &Policy<f64>,
        latency_s: &[f64],
        mut exec: Option<&mut dyn MoeExecutor>,
    ) -> Result<ForwardOut> {
        const OP: &str = "GpuModel::forward";
        // A decode step enqueued ahead (GpuModel::decode_greedy) ends here.
        self.cancel_ahead()?;
        let (n, layers, e) = (tokens.len(), self.shape.layers, self.shape.experts);
        let start = self.len;
        if n == 0 || start + n > self.dims.max_seq {
            return Err(shape(
                OP,
                format!(
                    "{n} tokens at position {start}: the cache holds {} positions",
                    self.dims.max_seq
                ),
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.shape.vocab) {
            return Err(shape(
                OP,
                format!("token id {bad} >= vocabulary {}", self.shape.vocab),
            ));
        }
        if latency_s.len() != n * layers * e {
            return Err(shape(
                OP,
                format!(
                    "latency_s has {} values, expected {n} x {layers} x {e}",
                    latency_s.len()
                ),
            ));
        }
        let mut routes: Vec<LayerRoute> = (0..layers)
            .map(|_| LayerRoute {
                logits: Vec::with_capacity(n * e),
                selections: Vec::new(),
                token_latency_s: Vec::with_capacity(n),
                moe_time_s: 0.0,
            })
            .collect();
        let mut logits = Vec::new();
        let mut argmax = None;
        let mut reruns = 0;
        let mut gpu_time_s = 0.0;
        let mut route_check_s = 0.0;
        let mut enqueue_s = 0.0;
        for c0 in (0..n).step_by(self.chunk) {
            let c1 = (c0 + self.chunk).min(n);
            let last = c1 == n;
            let rows = match out {
                Output::AllLogits => Some(0..c1 - c0),
                Output::LastLogits | Output::LastArgmax if last => Some(c1 - c0 - 1..c1 - c0),
                _ => None,
            };
            let lat = &latency_s[c0 * layers * e..c1 * layers * e];
            let (mut steps, mut enq) = self.run_chunk(
                &tokens[c0..c1],
                start + c0,
                rows.clone(),
                policy,
                lat,
                reborrow(&mut exec),
            )?;
            if steps.iter().any(|s| s.rerun) {
                // A device plan was not wdmoe-core's: the layers after it
                // read its output; run the chunk again on the host policy.
                reruns += 1;
                let on = self.device_policy;
                self.set_device_policy(false);
                let r = self.run_chunk(
                    &tokens[c0..c1],
                    start + c0,
                    rows.clone(),
                    policy,
                    lat,
                    reborrow(&mut exec),
                );
                self.set_device_policy(on);
                let (again, e) = r?;
                steps = again;
                enq += e;
            }
            enqueue_s += enq;
            gpu_time_s += elapsed_ms(&self.events[0][0], &self.events[0][1])? as f64 * 1e-3;
            route_check_s += self
                .layers
                .iter_mut()
                .filter_map(|l| l.moe.local_mut())
                .map(|m| m.last_route_check_s())
                .sum::<f64>();
            for (r, s) in routes.iter_mut().zip(steps) {
                add_route(r, s);
            }
            if let Some(rows) = rows {
                let v = self.shape.vocab;
                if out == Output::LastArgmax {
                    let a = self.gpu.download(&self.argmax.index(..1))?[0];
                    if a < 0 {
                        return Err(Error::NonFinite {
                            what: format!("the logits at position {}", start + c1 - 1),
                        });
                    }
                    argmax = Some(a as u32);
                } else {
                    let got = self.gpu.download(&self.logits.index(..rows.len() * v))?;
                    if got.iter().any(|z| !z.is_finite()) {
                        return Err(Error::NonFinite {
                            what: format!("the logits at positions {}..{}", start + c0, start + c1),
                        });
                    }
                    logits.extend_from_slice(&got);
                }
            }
        }
        self.len = start + n;
        Ok(ForwardOut {
            logits,
            argmax,
            start,
            layers: routes,
            gpu_time_s,
            reruns,
            route_check_s,
            enqueue_s,
        })
    }

    /// One chunk of at most `self.chunk` tokens through every layer: the
    /// MoE steps completed (checked) and the host seconds spent enqueuing.
    /// `rows`: the chunk rows whose logits (or argmax) are computed.
    pub(super) fn run_chunk(
        &mut self,
        tokens: &[u32],
        start: usize,
        rows: Option<std::ops::Range<usize>>,
        policy: &Policy<f64>,
        latency_s: &[f64],
        exec: Option<&mut dyn MoeExecutor>,
    ) -> Result<(Vec<MoeStep>, f64)> {
        let (n, layers, e) = (tokens.len(), self.shape.layers, self.shape.experts);
        let mut c = self.chunk_begin(Ids::Host(tokens), start, n, 0)?;
        let mut lat_of = |l: usize, out: &mut [f64]| {
            layer_latencies(latency_s, n, layers, e, l, out);
            Ok(())
        };
        let r = self
            .chunk_layers(&mut c, layers, policy, &mut lat_of, exec)
            .and_then(|()| self.chunk_tail(&c, rows, false));
        let enqueue_s = c.enqueue_s;
        let steps = self.chunk_complete(c, policy);
        r?;
        Ok((steps?, enqueue_s))
    }

    /// Uploads a chunk's token ids (or takes the previous step's argmax on
    /// the device), records the chunk's first event of pair `ev` and
    /// enqueues the embedding.
    pub(super) fn chunk_begin(
        &mut self,
        ids: Ids<'_>,
        start: usize,
        n: usize,
        ev: usize,
    ) -> Result<Chunk> {
        let m = self.shape.hidden;
        let gpu = self.gpu.clone();
        let src = match ids {
            Ids::Host(tokens) => {
                let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
                self.tokens
                    .index(..n)
                    .copy_from(&ids[..])
                    .map_err(|err| Error::cuda("cuMemcpyHtoD", format!("{n} token ids"), err))?;
                &self.tokens
            }
            Ids::Argmax => &self.argmax,
        };
        gpu.record_on(&self.events[ev][0])?;
        kernels::embed_rows(&gpu, &self.embed, src, n, m, &mut self.resid)?;
        Ok(Chunk {
            start,
            n,
            done: Vec::with_capacity(self.shape.layers),
            lat: Vec::with_capacity(self.shape.layers),
            ev,
            enqueue_s: 0.0,
        })
    }

    /// Enqueues the chunk's layers up to `upto` (exclusive); `lat_of(l,
    /// out)` gives layer l's latencies `[n][experts]`. Each device-planned
    /// or device-routed step [`CHECK_LAG`] layers back is checked as it goes.
    pub(super) fn chunk_layers(
        &mut self,
        c: &mut Chunk,
        upto: usize,
        policy: &Policy<f64>,
        lat_of: &mut dyn FnMut(usize, &mut [f64]) -> Result<()>,
        mut exec: Option<&mut dyn MoeExecutor>,
    ) -> Result<()> {
        let (n, start) = (c.n, c.start);
        let (m, e) = (self.shape.hidden, self.shape.experts);
        let hd_all = self.shape.heads * self.shape.head_dim;
        let qkvw = self.shape.qkv_width();
        let eps = self.shape.rms_eps as f32;
        let gpu = self.gpu.clone();
        for l in c.done.len()..upto {
            let t_layer = std::time::Instant::now();
            let mut lat = vec![0.0f64; n * e];
            lat_of(l, &mut lat)?;
            let (before, rest) = self.layers.split_at_mut(l);
            let layer = &mut rest[0];
            // The previous layer's MoE output, or its deferred combine.
            let add = before
                .last()
                .map_or(kernels::NormAdd::None, |p| p.moe.norm_add());
            // Chunks of PROJ_STORE_MIN_TOKENS or more store their
            // projections (a store is cheaper than the GEMM's atomic adds,
            // and RoPE then need not zero what it read); shorter ones add
            // into a zero buffer (RoPE leaves it so): decode steps' GEMV
            // kernels, and short prompts' GEMMs, whose k slices then fill
            // the GPU.
            let store = n >= kernels::PROJ_STORE_MIN_TOKENS;
            if self.qkv_dirty && !store {
                gpu.fill_u16(&mut self.qkv, 0)?;
            }
            self.qkv_dirty = true;
            kernels::add_rmsnorm(
                &gpu,
                &mut self.resid,
                add,
                &layer.attn_norm,
                eps,
                n,
                m,
                &mut self.h,
                m,
                norm_early_default(),
            )?;
            // A stored projection on the packed GEMM rotates q and k and
            // writes the cache in its epilogue (head dimension 128: one
            // head per row block).
            let qkv_rope = match &layer.wqkv_p {
                Some(w)
                    if store && self.qkv_rope && gpu.info().cubin && self.dims.head_dim == 128 =>
                {
                    Some(w)
                }
                _ => None,
            };
            if let Some(w) = qkv_rope {
                crate::prefill::gemm_packed_qkv_rope(
                    &gpu,
                    w,
                    &self.h,
                    n,
                    &self.rope,
                    start,
                    (self.dims.heads, self.dims.kv_heads, self.dims.max_seq),
                    &mut self.q,
                    &mut layer.k_cache,
                    &mut layer.v_cache,
                    None,
                )?;
            } else {
                kernels::project(
                    &gpu,
                    &layer.wqkv,
                    packed(
                        layer.wqkv_p.as_ref(),
                        &mut self.proj_ws,
                        &self.qkv_cfg,
                        self.packed_decode,
                    ),
                    &self.h,
                    m,
                    qkvw,
                    n,
                    &mut self.qkv,
                    qkvw,
                    !store,
                )?;
            }
            if n == 1 && self.fused_rope {
                attention::rope_attention_decode(
                    &gpu,
                    &self.dims,
                    &mut self.qkv,
                    &self.rope,
                    start,
                    &mut layer.k_cache,
                    &mut layer.v_cache,
                    &mut self.part,
                    &mut self.attn,
                    self.cluster_attn,
                )?;
            } else {
                if qkv_rope.is_none() {
                    attention::rope_kv(
                        &gpu,
                        &self.dims,
                        &mut self.qkv,
                        &self.rope,
                        start,
                        n,
                        &mut self.q,
                        &mut layer.k_cache,
                        &mut layer.v_cache,
                        !store,
                    )?;
                }
                attention::attention(
                    &gpu,
                    &self.dims,
                    &self.q,
                    // The q|k|v epilogue leaves q unrotated.
                    qkv_rope.map(|_| &*self.rope),
                    &layer.k_cache,
                    &layer.v_cache,
                    start,
                    n,
                    &mut self.part,
                    &mut self.attn,
                )?;
            }
            self.qkv_dirty = store;
            // o: a decode step's GEMV or a short chunk's GEMM adds into the
            // residual; a long chunk's GEMM stores into the free q buffer,
            // which the norm adds.
            let o_out = if store { &mut self.q } else { &mut self.resid };
            kernels::project(
                &gpu,
                &layer.wo,
                packed(
                    layer.wo_p.as_ref(),
                    &mut self.proj_ws,
                    &self.o_cfg,
                    self.packed_decode,
                ),
                &self.attn,
                hd_all,
                m,
                n,
                o_out,
                m,
                !store,
            )?;
            kernels::add_rmsnorm(
                &gpu,
                &mut self.resid,
                if store {
                    kernels::NormAdd::Rows(&self.q)
                } else {
                    kernels::NormAdd::None
                },
                &layer.moe_norm,
                eps,
                n,
                m,
                layer.moe.input_dev_mut(),
                m,
                norm_early_default(),
            )?;
            let step = layer
                .moe
                .enqueue(&gpu, l, n, policy, &lat, reborrow(&mut exec))?;
            c.done.push(step.map(Ok));
            c.lat.push(lat);
            c.enqueue_s += t_layer.elapsed().as_secs_f64();
            // The device-planned or device-routed step CHECK_LAG layers
            // back is checked now, while the GPU runs the layers queued
            // after it: the host's checks keep pace with the GPU instead of
            // all waiting for the end of the chunk (where a decode token's
            // 32 checks left the GPU idle), and the host never runs far
            // ahead of it.
            if let Some(b) = l.checked_sub(check_lag()).filter(|_| self.overlap_checks) {
                self.check_layer(c, b, policy);
            }
        }
        Ok(())
    }

    /// After the last layer: the final norm, the logits of `rows` (and
    /// their argmax for one row, also into page-locked host memory with
    /// `host_argmax`), the chunk's second event.
    pub(super) fn chunk_tail(
        &mut self,
        c: &Chunk,
        rows: Option<std::ops::Range<usize>>,
        host_argmax: bool,
    ) -> Result<()> {
        let (n, m) = (c.n, self.shape.hidden);
        let eps = self.shape.rms_eps as f32;
        let gpu = self.gpu.clone();
        let last = &self.layers[self.shape.layers - 1];
        kernels::add_rmsnorm(
            &gpu,
            &mut self.resid,
            last.moe.norm_add(),
            &self.final_norm,
            eps,
            n,
            m,
            &mut self.h,
            m,
            norm_early_default(),
        )?;
        if let Some(rows) = rows {
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            let x = self.h.index(rows.start * m..rows.end * m);
            let (v, t) = (self.shape.vocab, rows.len());
            // Chunks of logits (e.g. `wdmoe eval`) on the packed GEMM where
            // lm_head has its packing; a decode token's row on the
            // row-major GEMV (0.01-0.05 ms per token faster than the decode
            // GEMV on the packing: H200 runs Z4-Z7).
            match self
                .head_p
                .as_ref()
                .filter(|p| p.on && t > kernels::GEMV_MAX_TOKENS)
            {
                Some(p) => crate::prefill::gemm_packed_f32(
                    &gpu,
                    &p.w,
                    &x,
                    t,
                    &mut self.logits,
                    v,
                    false,
                    None,
                )?,
                None => kernels::gemv(&gpu, head, &x, m, v, t, &mut self.logits, v, false)?,
            }
            if rows.len() == 1 {
                let host = host_argmax.then_some(&mut self.argmax_host);
                kernels::argmax_rows(&gpu, &self.logits, 1, v, &mut self.argmax, host)?;
            }
        }
        gpu.record_on(&self.events[c.ev][1])?;
        Ok(())
    }

    /// Completes (checks) the chunk's steps of layers below `upto` that
    /// are still pending (with the checks overlapped, those of all but the
    /// last [`CHECK_LAG`] layers are done already); their errors stay in
    /// the chunk for [`GpuModel::chunk_complete`].
    pub(super) fn chunk_check(&mut self, c: &mut Chunk, upto: usize, policy: &Policy<f64>) {
        for l in 0..upto.min(c.done.len()) {
            self.check_layer(c, l, policy);
        }
    }

    /// Completes layer `l`'s step of the chunk if it is still pending.
    fn check_layer(&mut self, c: &mut Chunk, l: usize, policy: &Policy<f64>) {
        if c.done[l].is_none() && self.layers[l].moe.is_pending() {
            c.done[l] = Some(self.layers[l].moe.complete(policy, &c.lat[l]));
        }
    }

    /// Completes the chunk's steps not yet checked (each layer's, even after
    /// an error, so that none stays pending); the first error, if any.
    pub(super) fn chunk_complete(
        &mut self,
        c: Chunk,
        policy: &Policy<f64>,
    ) -> Result<Vec<MoeStep>> {
        let mut steps = Vec::with_capacity(c.done.len());
        let mut first_err = None;
        for (l, d) in c.done.into_iter().enumerate() {
            let s = match d {
                Some(s) => s,
                None => self.layers[l].moe.complete(policy, &c.lat[l]),
            };
            match s {
                Ok(s) => steps.push(s),
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(steps),
        }
    }
}

/// Where a chunk's token ids come from.
#[derive(Clone, Copy)]
pub(super) enum Ids<'a> {
    /// Uploaded from the host.
    Host(&'a [u32]),
    /// The previous step's argmax, on the device (a pipelined decode step).
    Argmax,
}

/// A chunk enqueued through some of its layers.
pub(super) struct Chunk {
    pub(super) start: usize,
    pub(super) n: usize,
    /// Per enqueued layer, its step once completed (a device-planned or
    /// device-routed step is completed later: [`GpuModel::chunk_layers`]).
    done: Vec<Option<Result<MoeStep>>>,
    /// Per enqueued layer, its latencies `[n][experts]` (for the check).
    pub(super) lat: Vec<Vec<f64>>,
    /// The event pair of [`GpuModel`] around the chunk.
    pub(super) ev: usize,
    /// Host seconds spent enqueuing (the lagged checks excluded).
    pub(super) enqueue_s: f64,
}

/// Appends a chunk's step of one layer to the call's route of that layer.
pub(super) fn add_route(r: &mut LayerRoute, s: MoeStep) {
    r.logits.extend_from_slice(&s.logits);
    // A selection is about 1.5 KB: the first chunk's are moved, not copied.
    if r.selections.is_empty() {
        r.selections = s.routing.selections;
    } else {
        r.selections.extend(s.routing.selections);
    }
    r.token_latency_s.extend(s.routing.token_latency_s);
    r.moe_time_s += s.time_s;
}

/// Layers between a device-planned or device-routed step's enqueue and
/// its check. The host waits for that step's router report before it
/// enqueues more, so the lag bounds how far the queue runs ahead of the
/// GPU: 8 (about 1.7 ms of decode work) decoded 0.00-0.06 ms per token
/// faster than 2 on H200s (runs H8-H9, 6 of 7 pairs faster, none slower:
/// the shallower queue let the GPU wait for launches now and then);
/// prefill timed alike (2, 8 and all layers in run X7; 2 and 8 in H9).
pub(super) const CHECK_LAG: usize = 8;

/// [`CHECK_LAG`], or `WDMOE_CHECK_LAG` (read once: comparisons).
fn check_lag() -> usize {
    static LAG: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LAG.get_or_init(|| {
        crate::env::number(
            "WDMOE_CHECK_LAG",
            |&l: &usize| (1..=64).contains(&l),
            "layers 1..=64",
        )
        .unwrap_or(CHECK_LAG)
    })
}

/// Layer `l`'s latencies, `[n][e]`, out of the call's `[n][layers][e]`.
fn layer_latencies(
    latency_s: &[f64],
    n: usize,
    layers: usize,
    e: usize,
    l: usize,
    out: &mut [f64],
) {
    for t in 0..n {
        let at = (t * layers + l) * e;
        out[t * e..(t + 1) * e].copy_from_slice(&latency_s[at..at + e]);
    }
}

/// A layer's packed projection with the model's decode GEMV state.
fn packed<'a>(
    w: Option<&'a crate::ffn::PackedMatrix>,
    ws: &'a mut Option<crate::ffn::FfnWorkspace>,
    cfg: &'a crate::ffn::DecodeConfig,
    decode: bool,
) -> Option<kernels::Packed<'a>> {
    Some(kernels::Packed {
        w: w?,
        ws: ws.as_mut()?,
        cfg,
        decode,
    })
}

/// A shorter-lived borrow of an optional executor (for each call in a loop).
fn reborrow<'s>(e: &'s mut Option<&mut dyn MoeExecutor>) -> Option<&'s mut dyn MoeExecutor> {
    match e {
        Some(x) => Some(&mut **x),
        None => None,
    }
}
