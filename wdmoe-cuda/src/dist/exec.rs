//! The expert-parallel MoE step over NCCL (feature `nccl`): [`DistMoe`] on
//! the base station, the experts of a rank in [`LocalExperts`], the
//! GPU-side airtime hold ([`hold_ns`]).
//!
//! One BS step (all on the BS's stream, one host wait at the end):
//! plan on the host ([`StepPlan`]) → tables uploaded, the token rows gathered
//! in travel order (`gather_rows`) → group: a fixed-size header to every
//! device rank → group: each device rank's rows (none for a rank with no
//! rows: a dropped expert sends nothing) → the BS's own experts
//! (`ExpertFfn`, between the holds of their emulated links) → group: the
//! output rows back from every rank with rows → the weighted combine into
//! `acc` (`combine_rows_f32`, fp32, overwritten).
//!
//! The device side is in `device.rs` ([`super::DeviceRank`]).

use std::time::Duration;

use cust::event::Event;
use cust::memory::{CopyDestination, DeviceBuffer, DeviceSlice};
use half::f16;

use super::placement::{Placement, BS_RANK};
use super::plan::{holds_ns, rank_segments, Command, Header, LinkRates, StepPlan, HEADER_WORDS};
use super::MoeExecutor;
use crate::error::{CudaCtx, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::moe::RawExpert;
use crate::nccl::Comm;
use crate::prefill::{combine_rows_f32, gather_rows, ExpertFfn};
use crate::runtime::{addr, elapsed_ms, Gpu};

/// Holds the stream for `ns` nanoseconds with a one-thread kernel spinning on
/// `%globaltimer`; writes the nanoseconds held to `held[0]`. 0 launches nothing.
pub fn hold_ns(gpu: &Gpu, ns: u64, held: &mut DeviceSlice<u64>) -> Result<()> {
    if ns == 0 {
        return Ok(());
    }
    if held.is_empty() {
        return Err(crate::error::shape("hold_ns", "held has no element".into()));
    }
    kernel_params! {
        struct HoldNs { ns: u64, held: u64 }
    }
    let params = HoldNs {
        ns,
        held: addr(held),
    };
    // SAFETY: hold_ns(unsigned long long, unsigned long long*) = HoldNs; it
    // writes one u64 to held, which has at least one element (checked).
    unsafe {
        gpu.launch(&gpu.ffn, "hold_ns", Shape::new(1u32, 1u32), params, || {
            format!("ns={ns}")
        })
    }
}

/// Where a rank's expert weights come from: `(gpu, layer, expert)` → the raw
/// W1, W3, W2 on that GPU (e.g. [`random_source`], or a checkpoint loader).
pub trait ExpertSource {
    /// Expert `q` of layer `layer`.
    fn expert(&mut self, gpu: &Gpu, layer: usize, q: usize) -> Result<RawExpert>;
}

impl<F: FnMut(&Gpu, usize, usize) -> Result<RawExpert>> ExpertSource for F {
    fn expert(&mut self, gpu: &Gpu, layer: usize, q: usize) -> Result<RawExpert> {
        self(gpu, layer, q)
    }
}

/// Random experts, layer `l` as `MoeLayer::random` with seed
/// [`layer_seed`]`(seed, l)` makes them (so a single-GPU `MoeLayer` of that
/// seed is the reference of a distributed layer).
pub fn random_source(m: usize, m_h: usize, seed: u64) -> impl ExpertSource {
    move |gpu: &Gpu, layer: usize, q: usize| {
        crate::moe::random_expert(gpu, m, m_h, q, layer_seed(seed, layer))
    }
}

/// The seed of layer `layer` of a run seeded with `seed`.
pub fn layer_seed(seed: u64, layer: usize) -> u64 {
    seed.wrapping_add((layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The experts one rank hosts, for every layer (both layouts via
/// [`ExpertFfn`], up to `max_rows` rows per expert and step).
pub struct LocalExperts {
    layers: Vec<Vec<(usize, ExpertFfn)>>,
    m: usize,
    m_h: usize,
}

impl std::fmt::Debug for LocalExperts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalExperts")
            .field("layers", &self.layers.len())
            .field(
                "experts",
                &self
                    .layers
                    .first()
                    .map(|l| l.iter().map(|e| e.0).collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl LocalExperts {
    /// Loads `rank`'s experts of `layers` layers from `source` (raw weights
    /// freed after packing).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        gpu: &Gpu,
        placement: &Placement,
        rank: usize,
        layers: usize,
        m: usize,
        m_h: usize,
        max_rows: usize,
        source: &mut dyn ExpertSource,
    ) -> Result<LocalExperts> {
        let mine = placement.experts_on(rank);
        let mut all = Vec::with_capacity(layers);
        for l in 0..layers {
            let mut row = Vec::with_capacity(mine.len());
            for &q in &mine {
                let (w1, w3, w2) = source.expert(gpu, l, q)?;
                let e = ExpertFfn::new(gpu, &w1, &w3, &w2, m, m_h, max_rows.max(1))?;
                gpu.sync()?;
                row.push((q, e));
            }
            all.push(row);
        }
        Ok(LocalExperts {
            layers: all,
            m,
            m_h,
        })
    }

    /// Layers held.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Hidden size m.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Expert hidden size m_h.
    pub fn m_h(&self) -> usize {
        self.m_h
    }

    /// Runs this rank's experts of `layer` over `segments` (from
    /// [`rank_segments`]): rows `off..off+rows` of `xs` into the same rows of `ys`.
    pub(super) fn run(
        &mut self,
        gpu: &Gpu,
        layer: usize,
        segments: &[(usize, usize, usize)],
        xs: &DeviceSlice<f16>,
        ys: &mut DeviceSlice<f16>,
    ) -> Result<()> {
        let m = self.m;
        let n_layers = self.layers.len();
        let experts = self.layers.get_mut(layer).ok_or_else(|| Error::Dist {
            op: "LocalExperts::run",
            detail: format!("layer {layer} of {n_layers}"),
        })?;
        for &(q, off, rows) in segments {
            let e = experts
                .iter_mut()
                .find(|e| e.0 == q)
                .ok_or_else(|| Error::Dist {
                    op: "LocalExperts::run",
                    detail: format!("expert {q} is not on this rank"),
                })?;
            let x = xs.index(off * m..(off + rows) * m);
            let mut y = ys.index(off * m..(off + rows) * m);
            e.1.forward(gpu, &x, rows, &mut y)?;
        }
        Ok(())
    }
}

fn upload_into<T: cust::memory::DeviceCopy>(
    dst: &DeviceSlice<T>,
    src: &[T],
    what: &'static str,
) -> Result<()> {
    dst.index(..src.len())
        .copy_from(src)
        .ctx("cuMemcpyHtoD", || format!("{what}: {} elements", src.len()))
}

/// What one [`DistMoe::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct DistStep {
    /// The step on the BS's stream, gather to combine \[s\] (CUDA events):
    /// what the token waits for in this layer.
    pub time_s: f64,
    /// Rows sent to each rank (index 0: the BS's own experts).
    pub rows: Vec<usize>,
    /// Per rank, the emulated (downlink, uplink) airtime held \[s\] (the
    /// BS's own experts' links held on the BS's stream).
    pub hold_s: Vec<(f64, f64)>,
}

/// Emulated wireless links of a step: per expert the rates of its device's
/// link (eq. 2–3), and the bits of one row (eq. 5).
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    /// Per expert (device q).
    pub rates: &'a [LinkRates],
    /// Bits per row and direction.
    pub payload_bits: f64,
}

/// The MoE executor of the base station (rank 0): sends each selected
/// token's row to its expert's rank and combines the answers.
pub struct DistMoe {
    comm: Comm,
    placement: Placement,
    local: LocalExperts,
    m: usize,
    max_tokens: usize,
    xs: DeviceBuffer<f16>,
    ys: DeviceBuffer<f16>,
    idx: DeviceBuffer<i32>,
    slot: DeviceBuffer<i32>,
    wts: DeviceBuffer<f32>,
    headers: DeviceBuffer<u32>,
    held: DeviceBuffer<u64>,
    events: [Event; 2],
    seq: u32,
    timeout: Duration,
}

impl std::fmt::Debug for DistMoe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistMoe")
            .field("comm", &self.comm)
            .field("placement", &self.placement.spec())
            .field("m", &self.m)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

impl DistMoe {
    /// The BS side: `comm` of rank 0 (connected to every device rank by
    /// [`Comm::connect`]), the placement every rank shares, the
    /// BS's own experts (`LocalExperts::load` with rank 0; none if it hosts
    /// none), steps of up to `max_tokens` tokens of hidden size m.
    pub fn new(
        gpu: &Gpu,
        comm: Comm,
        placement: Placement,
        local: LocalExperts,
        max_tokens: usize,
    ) -> Result<DistMoe> {
        if comm.rank() != BS_RANK || comm.world() != placement.world() {
            return Err(Error::Dist {
                op: "DistMoe::new",
                detail: format!(
                    "communicator rank {} of {}, placement of {} ranks (the BS is rank 0)",
                    comm.rank(),
                    comm.world(),
                    placement.world()
                ),
            });
        }
        if let Some(r) = (1..comm.world()).find(|&r| !comm.is_connected(r)) {
            return Err(Error::Dist {
                op: "DistMoe::new",
                detail: format!(
                    "the BS is not connected to rank {r}: call Comm::connect(gpu, &[1..world], ..) \
                     at setup (else a device rank that stalls hangs the BS's first step)"
                ),
            });
        }
        let m = local.m();
        let e = placement.n_experts();
        let max_tokens = max_tokens.max(1);
        let rows = max_tokens * e;
        Ok(DistMoe {
            xs: gpu.alloc(rows * m)?,
            ys: gpu.alloc(rows * m)?,
            idx: gpu.alloc(rows)?,
            slot: gpu.alloc(max_tokens * e)?,
            wts: gpu.alloc(max_tokens * e)?,
            headers: gpu.alloc(placement.world() * HEADER_WORDS)?,
            held: gpu.alloc(2)?,
            events: [gpu.event()?, gpu.event()?],
            seq: 0,
            timeout: crate::nccl::timeout_from_env(),
            comm,
            placement,
            local,
            m,
            max_tokens,
        })
    }

    /// The deadline of each step's wait (default `WDMOE_DIST_TIMEOUT_S` or
    /// 120 s); past it the communicator is aborted.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// One layer's MoE on `n_tokens` rows of `x` (`[n_tokens][m]` fp16 on the
    /// BS GPU) routed by `groups` (per expert its (token, weight) pairs, as
    /// `moe::Routing::groups`), written to `acc` (`[n_tokens][m]` fp32,
    /// overwritten; a token no expert serves gets zeros). With `links`, each
    /// device rank holds its slowest expert's airtime each way. Waits for the
    /// step (bounded), so `acc` is ready when it returns.
    #[allow(clippy::too_many_arguments)]
    pub fn step_timed(
        &mut self,
        gpu: &Gpu,
        layer: usize,
        x: &DeviceSlice<f16>,
        n_tokens: usize,
        groups: &[Vec<(usize, f32)>],
        links: Option<Links<'_>>,
        acc: &mut DeviceSlice<f32>,
    ) -> Result<DistStep> {
        const OP: &str = "DistMoe::step";
        let (m, e) = (self.m, self.placement.n_experts());
        if n_tokens == 0
            || n_tokens > self.max_tokens
            || x.len() < n_tokens * m
            || acc.len() < n_tokens * m
            || layer >= self.local.layers()
        {
            return Err(crate::error::shape(
                OP,
                format!(
                    "{n_tokens} tokens (1..={}), x {} and acc {} elements (m={m}), layer {layer} of {}",
                    self.max_tokens,
                    x.len(),
                    acc.len(),
                    self.local.layers()
                ),
            ));
        }
        let plan = StepPlan::new(&self.placement, n_tokens, groups)?;
        let world = self.placement.world();
        let holds = match links {
            Some(l) => holds_ns(&self.placement, &plan.counts, l.rates, l.payload_bits)?,
            None => vec![(0, 0); world],
        };
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut words = Vec::with_capacity(world * HEADER_WORDS);
        for (r, &h) in holds.iter().enumerate() {
            words.extend_from_slice(&plan.header(r, seq, layer, h).encode());
        }
        let rows = plan.tables.rows();
        let gpu_ref = gpu;
        upload_into(&self.headers, &words, "headers")?;
        upload_into(&self.idx, &plan.tables.idx, "row indices")?;
        upload_into(&self.slot, &plan.tables.slot, "slots")?;
        upload_into(&self.wts, &plan.tables.wts, "combine weights")?;
        gpu.record_on(&self.events[0])?;
        if rows > 0 {
            gather_rows(gpu, x, &self.idx.index(..rows), m, &mut self.xs)?;
        }
        let headers = &self.headers;
        self.comm.group(|c| {
            for r in 1..world {
                c.send(
                    gpu_ref,
                    &headers.index(r * HEADER_WORDS..(r + 1) * HEADER_WORDS),
                    r,
                )?;
            }
            Ok(())
        })?;
        let blocks = plan.blocks.clone();
        let xs = &self.xs;
        self.comm.group(|c| {
            for (r, &(off, n)) in blocks.iter().enumerate().skip(1) {
                if n > 0 {
                    c.send(gpu_ref, &xs.index(off * m..(off + n) * m), r)?;
                }
            }
            Ok(())
        })?;
        let segs = rank_segments(&self.placement, BS_RANK, &plan.counts);
        if !segs.is_empty() {
            let (off, n) = blocks[BS_RANK];
            let xs_bs = self.xs.index(off * m..(off + n) * m);
            let mut ys_bs = self.ys.index(off * m..(off + n) * m);
            hold_ns(gpu, holds[BS_RANK].0, &mut self.held.index(0..1))?;
            self.local.run(gpu, layer, &segs, &xs_bs, &mut ys_bs)?;
            hold_ns(gpu, holds[BS_RANK].1, &mut self.held.index(1..2))?;
        }
        let ys = &mut self.ys;
        self.comm.group(|c| {
            for (r, &(off, n)) in blocks.iter().enumerate().skip(1) {
                if n > 0 {
                    let mut dst = ys.index(off * m..(off + n) * m);
                    c.recv(gpu_ref, &mut dst, r)?;
                }
            }
            Ok(())
        })?;
        combine_rows_f32(gpu, &self.ys, &self.slot, &self.wts, e, n_tokens, m, acc)?;
        gpu.record_on(&self.events[1])?;
        self.comm
            .wait(gpu, "the MoE step's transfers", self.timeout)?;
        let time_s = elapsed_ms(&self.events[0], &self.events[1])? as f64 * 1e-3;
        Ok(DistStep {
            time_s,
            rows: blocks.iter().map(|b| b.1).collect(),
            hold_s: holds
                .iter()
                .map(|&(d, u)| (d as f64 * 1e-9, u as f64 * 1e-9))
                .collect(),
        })
    }

    /// Tells every device rank to leave its serve loop, and waits (bounded).
    pub fn stop(&mut self, gpu: &Gpu) -> Result<()> {
        let world = self.placement.world();
        let stop = Header {
            cmd: Command::Stop,
            seq: self.seq,
            layer: 0,
            n_experts: self.placement.n_experts() as u32,
            rows: 0,
            hold_down_ns: 0,
            hold_up_ns: 0,
            counts: vec![0; self.placement.n_experts()],
        }
        .encode();
        let words: Vec<u32> = (0..world).flat_map(|_| stop).collect();
        upload_into(&self.headers, &words, "stop headers")?;
        let headers = &self.headers;
        self.comm.group(|c| {
            for r in 1..world {
                c.send(
                    gpu,
                    &headers.index(r * HEADER_WORDS..(r + 1) * HEADER_WORDS),
                    r,
                )?;
            }
            Ok(())
        })?;
        self.comm.wait(gpu, "the stop message", self.timeout)
    }

    /// Aborts the communicator (after an error elsewhere on the BS, so that
    /// the device ranks see it and stop); bounded, see [`Comm::abort`]
    /// (whether it finished).
    pub fn abort(&mut self) -> bool {
        self.comm.abort()
    }
}

impl MoeExecutor for DistMoe {
    fn step(
        &mut self,
        gpu: &Gpu,
        layer: usize,
        x: &DeviceSlice<f16>,
        n_tokens: usize,
        groups: &[Vec<(usize, f32)>],
        acc: &mut DeviceSlice<f32>,
    ) -> Result<()> {
        self.step_timed(gpu, layer, x, n_tokens, groups, None, acc)
            .map(|_| ())
    }
}
