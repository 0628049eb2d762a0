//! The MoE router (gating network) on the GPU: logits = x G^T and the
//! softmax over experts, per token.

use std::ffi::c_void;

use cust::memory::{DeviceBuffer, DeviceSlice, LockedBuffer};
use half::f16;

use crate::error::{check_align, shape, Error, Result};
use crate::plan::{DevicePlan, PlanPolicy, MAX_PLAN_TOKENS, MAX_PREFETCH_RANGES};
use crate::runtime::{addr, Gpu};

/// Addresses for the router's speculative L2 prefetch: expert q's packed
/// gate/up weights ([`crate::ExpertWeights::gate_up_weights`]) uploaded as a
/// device table, and how many of their first bytes to prefetch (clamped to
/// the smallest expert's).
pub struct PrefetchTable {
    table: DeviceBuffer<u64>,
    bytes: usize,
    max: usize,
}

impl std::fmt::Debug for PrefetchTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchTable")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl PrefetchTable {
    /// A table for `experts` (in router order), prefetching `bytes`.
    pub fn new(gpu: &Gpu, experts: &[crate::ExpertWeights], bytes: usize) -> Result<PrefetchTable> {
        let addrs: Vec<u64> = experts.iter().map(|e| e.gate_up_weights().0).collect();
        let max = experts
            .iter()
            .map(|e| e.gate_up_weights().1)
            .min()
            .unwrap_or(0);
        if addrs.is_empty() {
            return Err(shape("PrefetchTable::new", "no experts".into()));
        }
        Ok(PrefetchTable {
            table: gpu.upload(&addrs)?,
            bytes: bytes.min(max),
            max,
        })
    }

    /// Bytes prefetched (0 turns the prefetch off).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets the bytes prefetched, clamped to the smallest expert's gate/up weights.
    pub fn set_bytes(&mut self, bytes: usize) {
        self.bytes = bytes.min(self.max);
    }
}

/// Router weights G (`[experts][m]`, fp16) on the device.
pub struct Router {
    g: DeviceBuffer<f16>,
    experts: usize,
    m: usize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("experts", &self.experts)
            .field("m", &self.m)
            .finish()
    }
}

impl Router {
    /// Uploads G (`[experts][m]` row-major). Needs m % 8 == 0, 1 <= experts <= 1024.
    pub fn from_host(gpu: &Gpu, g: &[f16], experts: usize, m: usize) -> Result<Router> {
        const OP: &str = "Router::from_host";
        if m == 0 || m % 8 != 0 || experts == 0 || experts > 1024 {
            return Err(Error::Unsupported {
                op: OP,
                detail: format!("m={m} (multiple of 8), experts={experts} (1..=1024)"),
            });
        }
        if g.len() != experts * m {
            return Err(shape(
                OP,
                format!("G has {} elements, expected {experts} x {m}", g.len()),
            ));
        }
        Ok(Router {
            g: gpu.upload(g)?,
            experts,
            m,
        })
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Computes `logits` and `probs` (`[tokens][experts]`, fp32) for the
    /// `tokens` rows of x (`[tokens][m]`).
    pub fn route(
        &self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        logits: &mut DeviceSlice<f32>,
        probs: &mut DeviceSlice<f32>,
    ) -> Result<()> {
        self.route_zeroing(gpu, x, tokens, logits, probs, None)
    }

    /// [`Router::route`], and in the same launch sets the first `tokens`
    /// rows of `zero` (`(buffer, columns)`, e.g. the MoE combine
    /// accumulator `[tokens][m]`) to 0.
    pub fn route_zeroing(
        &self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        logits: &mut DeviceSlice<f32>,
        probs: &mut DeviceSlice<f32>,
        zero: Option<(&mut DeviceSlice<f32>, usize)>,
    ) -> Result<()> {
        let (pl, nl) = (addr(logits), logits.len());
        self.launch(gpu, x, tokens, pl, nl, probs, zero, None)
    }

    /// [`Router::route_zeroing`] with the logits written by the kernel
    /// straight into page-locked host memory (unified addressing: the host
    /// pointer is valid on the device), then waits for the stream: the
    /// decode step's one host round trip without a separate copy.
    ///
    /// `prefetch`: `(table, bytes)` where `table[q]` is the device address of
    /// expert q's weights ([`crate::ExpertWeights::gate_up_weights`]): extra
    /// blocks prefetch the first `bytes` of each of token 0's top-2 experts into L2
    /// (one bulk prefetch per block on compute capability 9.0)
    /// (speculation that it runs first; it never changes results).
    #[allow(clippy::too_many_arguments)]
    pub fn route_to_host(
        &self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        logits: &mut LockedBuffer<f32>,
        probs: &mut DeviceSlice<f32>,
        zero: Option<(&mut DeviceSlice<f32>, usize)>,
        prefetch: Option<&PrefetchTable>,
    ) -> Result<()> {
        if !gpu.info().unified_addressing {
            return Err(Error::Unsupported {
                op: "Router::route_to_host",
                detail: "device without unified addressing".into(),
            });
        }
        let (pl, nl) = (logits.as_mut_ptr() as u64, logits.len());
        self.launch(gpu, x, tokens, pl, nl, probs, zero, prefetch)?;
        // The kernel writes host memory that `logits` borrows: finish before
        // the borrow ends.
        gpu.sync()
    }

    /// The device-planned decode step's router ([`crate::plan`]): logits
    /// (into the plan's page-locked buffer), softmax (`probs`), zeroing the
    /// first `tokens` rows of `zero` (`(buffer, columns)`), then per token the
    /// WDMoE policy (a port of wdmoe-core's `select`, f64) with latencies
    /// `latency_s` in seconds (one per expert, or `[tokens][experts]`; each
    /// positive, +inf = unreachable), and the expert plan in
    /// `min(experts, tokens · k)` slots for [`crate::ffn_decode_slot`].
    /// `prefetch`: up to [`crate::plan::MAX_PREFETCH_RANGES`] byte ranges
    /// `(offset, length)` of the packed W1|W3 to prefetch into L2 for token
    /// 0's lowest-index top-k candidate while the policy runs (speculation
    /// that it runs in slot 0; [`crate::gate_up_prefetch_ranges`]); clamped
    /// to the weights. Asynchronous: nothing waits for the GPU.
    #[allow(clippy::too_many_arguments)]
    pub fn route_plan(
        &self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        probs: &mut DeviceSlice<f32>,
        zero: (&mut DeviceSlice<f32>, usize),
        plan: &mut DevicePlan,
        policy: &PlanPolicy,
        latency_s: &[f64],
        prefetch: &[(u64, u64)],
    ) -> Result<()> {
        const OP: &str = "Router::route_plan";
        let (e, m) = (self.experts, self.m);
        if !gpu.info().unified_addressing {
            return Err(Error::Unsupported {
                op: OP,
                detail: "device without unified addressing".into(),
            });
        }
        if e != plan.experts() || policy.k() > e {
            return Err(shape(
                OP,
                format!(
                    "router of {e} experts, plan of {}, k={}",
                    plan.experts(),
                    policy.k()
                ),
            ));
        }
        let (z, cols) = zero;
        if tokens == 0
            || tokens > MAX_PLAN_TOKENS
            || x.len() < tokens * m
            || probs.len() < tokens * e
            || z.len() < tokens * cols
            || cols > i32::MAX as usize
        {
            return Err(shape(
                OP,
                format!(
                    "tokens={tokens} (1..={MAX_PLAN_TOKENS}), x {} (need {}), probs {}, zero {} x {cols}",
                    x.len(),
                    tokens * m,
                    probs.len(),
                    z.len()
                ),
            ));
        }
        if latency_s.len() != e && latency_s.len() != tokens * e {
            return Err(shape(
                OP,
                format!(
                    "latency_s has {} values: expected {e} or {tokens} x {e}",
                    latency_s.len()
                ),
            ));
        }
        if let Some(bad) = latency_s.iter().find(|t| t.is_nan() || **t <= 0.0) {
            return Err(shape(
                OP,
                format!("latency {bad} s: must be positive (+inf: unreachable)"),
            ));
        }
        check_align(OP, "x", addr(x), 16)?;
        let mut pa = policy.args();
        let w13_bytes = plan.w13_bytes as u64;
        for &(off, len) in prefetch.iter().take(MAX_PREFETCH_RANGES) {
            let off = off / 16 * 16;
            let len = len.min(w13_bytes.saturating_sub(off)) / 16 * 16;
            if len > 0 {
                pa.pf_off[pa.n_pf as usize] = off as i64;
                pa.pf_len[pa.n_pf as usize] = len as i64;
                pa.n_pf += 1;
            }
        }
        let mut lat_host = 0u64;
        if latency_s.len() == e {
            pa.lat[..e].copy_from_slice(latency_s);
        } else {
            plan.lat[..latency_s.len()].copy_from_slice(latency_s);
            lat_host = plan.lat.as_ptr() as u64;
        }
        let n_slots = e.min(tokens * policy.k());
        plan.seq = plan.seq.wrapping_add(1).max(1);
        plan.n_slots = n_slots;
        plan.tokens = tokens;
        let mut px = addr(x);
        let mut pg = addr(&self.g);
        let mut mi = m as i32;
        let mut ei = e as i32;
        let mut pl = plan.logits.as_mut_ptr() as u64;
        let mut pp = addr(probs);
        let mut pz = addr(z);
        let mut zc = cols as i32;
        let mut ntok = tokens as i32;
        let mut pwt = addr(&plan.wtab);
        let mut pslots = addr(&plan.slots);
        let mut ns = n_slots as i32;
        let mut psel = addr(&plan.sel);
        let mut pcnt = addr(&plan.counter);
        let mut prep = plan.report.as_mut_ptr() as u64;
        let mut seq = plan.seq;
        let args = [
            &mut px as *mut _ as *mut c_void,
            &mut pg as *mut _ as *mut c_void,
            &mut mi as *mut _ as *mut c_void,
            &mut ei as *mut _ as *mut c_void,
            &mut pl as *mut _ as *mut c_void,
            &mut pp as *mut _ as *mut c_void,
            &mut pz as *mut _ as *mut c_void,
            &mut zc as *mut _ as *mut c_void,
            &mut ntok as *mut _ as *mut c_void,
            &mut pa as *mut _ as *mut c_void,
            &mut lat_host as *mut _ as *mut c_void,
            &mut pwt as *mut _ as *mut c_void,
            &mut pslots as *mut _ as *mut c_void,
            &mut ns as *mut _ as *mut c_void,
            &mut psel as *mut _ as *mut c_void,
            &mut pcnt as *mut _ as *mut c_void,
            &mut prep as *mut _ as *mut c_void,
            &mut seq as *mut _ as *mut c_void,
        ];
        let (warps, smem) = self.block_shape();
        // SAFETY: (prefetch ranges lie inside every expert's packed W1|W3,
        // clamped above; a bulk L2 prefetch never faults anyway)
        // router_policy(const half* x, const half* g, int m, int e,
        // float* logits_host, float* probs, float* zero, int zero_cols, int
        // tokens, PolicyArgs pa (by value, same #[repr(C)] layout), const
        // double* lat_host, const u64* wtab, Slot* plan, int n_slots, int*
        // sel, unsigned* counter, PlanReport* report, unsigned seq) matches
        // `args`. x holds tokens x m fp16 (16-byte aligned), G e x m; probs
        // and zero are checked above; logits_host (tokens x e floats),
        // lat_host (null or tokens x e doubles), report (4 + MAX_SLOTS x
        // SLOT_WORDS words) are page-locked buffers owned by `plan` (UVA),
        // which synchronises before it frees them; wtab holds 2e addresses,
        // plan.slots MAX_SLOTS slots >= n_slots + the ready flag, sel MAX_PLAN_TOKENS rows >=
        // tokens, counter one word that is 0 between launches (reset by the
        // last block); e <= MAX_SLOTS; dynamic shared memory as
        // router_logits needs for this block size.
        unsafe {
            gpu.launch(
                &gpu.router,
                "router_policy",
                (tokens as u32).into(),
                (warps * 32).into(),
                smem,
                &args,
                false,
                || format!("tokens={tokens} m={m} experts={e} slots={n_slots}"),
            )
        }
    }

    /// Warps per block and dynamic shared memory of the router kernels: 4
    /// warps per expert up to 32 (the 1-token dot products are
    /// latency-bound); e logits + e x S partial sums.
    fn block_shape(&self) -> (u32, u32) {
        let e = self.experts;
        let warps = (e as u32 * 4).clamp(1, 32);
        let per_expert = if warps as usize >= e {
            warps as usize / e
        } else {
            1
        };
        (warps, (e * (per_expert + 1) * 4) as u32)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        logits_ptr: u64,
        logits_len: usize,
        probs: &mut DeviceSlice<f32>,
        zero: Option<(&mut DeviceSlice<f32>, usize)>,
        prefetch: Option<&PrefetchTable>,
    ) -> Result<()> {
        const OP: &str = "Router::route";
        let (mut pf, mut pf_bytes, pf_blocks) = match prefetch {
            Some(t) if t.bytes >= 128 => {
                if t.table.len() < self.experts {
                    return Err(shape(
                        OP,
                        format!(
                            "prefetch table {} < {} experts",
                            t.table.len(),
                            self.experts
                        ),
                    ));
                }
                (addr(&t.table), (t.bytes / 128 * 128) as i64, 16u32)
            }
            _ => (0u64, 0i64, 0u32),
        };
        let mut ntok = tokens as i32;
        let (mut pz, mut zc) = match zero {
            Some((z, cols)) => {
                if z.len() < tokens * cols || cols > i32::MAX as usize {
                    return Err(shape(
                        OP,
                        format!("zero buffer {} < {tokens} x {cols}", z.len()),
                    ));
                }
                (addr(z), cols as i32)
            }
            None => (0u64, 0i32),
        };
        let (e, m) = (self.experts, self.m);
        if tokens == 0
            || x.len() < tokens * m
            || logits_len < tokens * e
            || probs.len() < tokens * e
        {
            return Err(shape(
                OP,
                format!(
                    "tokens={tokens}, x {} (need {}), logits {} / probs {} (need {})",
                    x.len(),
                    tokens * m,
                    logits_len,
                    probs.len(),
                    tokens * e
                ),
            ));
        }
        if tokens > i32::MAX as usize {
            return Err(shape(OP, format!("tokens={tokens}")));
        }
        check_align(OP, "x", addr(x), 16)?;
        let mut px = addr(x);
        let mut pg = addr(&self.g);
        let mut mi = m as i32;
        let mut ei = e as i32;
        let mut pl = logits_ptr;
        let mut pp = addr(probs);
        let args = [
            &mut px as *mut _ as *mut c_void,
            &mut pg as *mut _ as *mut c_void,
            &mut mi as *mut _ as *mut c_void,
            &mut ei as *mut _ as *mut c_void,
            &mut pl as *mut _ as *mut c_void,
            &mut pp as *mut _ as *mut c_void,
            &mut pz as *mut _ as *mut c_void,
            &mut zc as *mut _ as *mut c_void,
            &mut ntok as *mut _ as *mut c_void,
            &mut pf as *mut _ as *mut c_void,
            &mut pf_bytes as *mut _ as *mut c_void,
        ];
        let (warps, smem) = self.block_shape();
        // SAFETY: router_softmax(const half* x, const half* g, int m, int e,
        // float* logits, float* probs, float* zero, int zero_cols) matches
        // `args` (+ int tokens, const unsigned long long* pf_bases, long long
        // pf_bytes: a PrefetchTable whose every entry addresses >= bytes of
        // device memory, by its contract); logits is device memory or page-locked host memory (UVA)
        // of logits_len >= tokens x e floats that outlives the kernel; zero is null or holds tokens x zero_cols floats (checked); x holds tokens x m and G
        // e x m fp16 (16-byte aligned, m % 8 == 0), logits/probs hold
        // tokens x e floats; e x (S + 1) floats of dynamic shared memory are
        // given (S = warps per expert, as the kernel computes it).
        unsafe {
            gpu.launch(
                &gpu.router,
                "router_softmax",
                (tokens as u32 + pf_blocks).into(),
                (warps * 32).into(),
                smem,
                &args,
                false,
                || format!("tokens={tokens} m={m} experts={e}"),
            )
        }
    }
}

/// `out[i] = fp16(in[i])` for the first `n` elements.
pub fn f32_to_f16(
    gpu: &Gpu,
    input: &DeviceSlice<f32>,
    out: &mut DeviceSlice<f16>,
    n: usize,
) -> Result<()> {
    const OP: &str = "f32_to_f16";
    if input.len() < n || out.len() < n {
        return Err(shape(
            OP,
            format!("n={n}, in {}, out {}", input.len(), out.len()),
        ));
    }
    let mut pi = addr(input);
    let mut po = addr(out);
    let mut nn = n as i64;
    let grid = gpu.grid_1d(n as u64, 8);
    let args = [
        &mut pi as *mut _ as *mut c_void,
        &mut po as *mut _ as *mut c_void,
        &mut nn as *mut _ as *mut c_void,
    ];
    // SAFETY: f32_to_f16(const float*, half*, long long) matches `args`;
    // both buffers hold at least n elements (checked).
    unsafe {
        gpu.launch(
            &gpu.router,
            "f32_to_f16",
            grid.into(),
            256.into(),
            0,
            &args,
            false,
            || format!("n={n}"),
        )
    }
}
