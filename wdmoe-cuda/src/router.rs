//! The MoE router (gating network) on the GPU: logits = x G^T and the
//! softmax over experts, per token.

use cust::memory::{DeviceBuffer, DeviceSlice, LockedBuffer};
use half::f16;

use crate::error::{check_align, shape, Error, Result};
use crate::launch::{kernel_params, Shape};
use crate::plan::{DevicePlan, PlanPolicy, PolicyArgs, MAX_PLAN_TOKENS, MAX_PREFETCH_RANGES};
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

kernel_params! {
    /// Parameters of `router_softmax` (kernels/router.cu).
    struct RouterSoftmax {
        x: u64,
        g: u64,
        m: i32,
        e: i32,
        logits: u64,
        probs: u64,
        zero: u64,
        zero_cols: i32,
        tokens: i32,
        pf_bases: u64,
        pf_bytes: i64,
    }
}

kernel_params! {
    /// Parameters of `router_policy` (kernels/router.cu).
    struct RouterPolicy {
        x: u64,
        g: u64,
        m: i32,
        e: i32,
        logits_host: u64,
        probs: u64,
        zero: u64,
        zero_cols: i32,
        tokens: i32,
        pa: PolicyArgs,
        lat_host: u64,
        wtab: u64,
        plan: u64,
        n_slots: i32,
        sel: u64,
        counter: u64,
        report: u64,
        seq: u32,
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
        if e != plan.experts() {
            return Err(shape(
                OP,
                format!("router of {e} experts, plan of {}", plan.experts()),
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
        let mut pa = policy.args(e);
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
            // The page-locked table is read by the kernel while it runs: a
            // router_policy still queued from an earlier call may not have
            // read it yet, so wait for that one (its report, written after
            // it read the table) before overwriting it.
            plan.wait_lat_free(gpu)?;
            plan.lat[..latency_s.len()].copy_from_slice(latency_s);
            lat_host = plan.lat.as_ptr() as u64;
        }
        let n_slots = e.min(tokens * pa.k as usize);
        plan.seq = plan.seq.wrapping_add(1).max(1);
        plan.n_slots = n_slots;
        plan.tokens = tokens;
        let params = RouterPolicy {
            x: addr(x),
            g: addr(&self.g),
            m: m as i32,
            e: e as i32,
            logits_host: plan.logits.as_mut_ptr() as u64,
            probs: addr(probs),
            zero: addr(z),
            zero_cols: cols as i32,
            tokens: tokens as i32,
            pa,
            lat_host,
            wtab: addr(&plan.wtab),
            plan: addr(&plan.slots),
            n_slots: n_slots as i32,
            sel: addr(&plan.sel),
            counter: addr(&plan.counter),
            report: plan.report.as_mut_ptr() as u64,
            seq: plan.seq,
        };
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
        // which synchronises before it frees them (and lat_host is not
        // written again before this kernel has reported: wait_lat_free); wtab holds 2e addresses,
        // plan.slots MAX_SLOTS slots >= n_slots + the ready flag, a pad word
        // and the SpecPlan (SPEC_WORDS; 1 token: n_slots <= MAX_SLOTS
        // candidate addresses and seq), sel MAX_PLAN_TOKENS rows >=
        // tokens, counter one word that is 0 between launches (reset by the
        // last block); e <= MAX_SLOTS; dynamic shared memory as
        // router_logits needs for this block size. With PDL the kernel
        // touches nothing an earlier kernel writes before its
        // griddepcontrol.wait (in router_logits: G, the latencies and the
        // weight table only, which no kernel writes).
        unsafe {
            gpu.launch(
                &gpu.router,
                "router_policy",
                Shape::new(tokens as u32, warps * 32).shared(smem).pdl(true),
                params,
                || format!("tokens={tokens} m={m} experts={e} slots={n_slots}"),
            )?;
        }
        if lat_host != 0 {
            plan.lat_read_launched();
        }
        Ok(())
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
        let (pf, pf_bytes, pf_blocks) = match prefetch {
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
        let (pz, zc) = match zero {
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
        self.check_rows(OP, x, tokens, logits_len, probs.len())?;
        let params = RouterSoftmax {
            x: addr(x),
            g: addr(&self.g),
            m: m as i32,
            e: e as i32,
            logits: logits_ptr,
            probs: addr(probs),
            zero: pz,
            zero_cols: zc,
            tokens: tokens as i32,
            pf_bases: pf,
            pf_bytes,
        };
        // (the same rule as route_policy_rows': a device-routed step's
        // logits equal the host-routed one's bit for bit)
        if self.rows_fit(tokens) && pf_blocks == 0 {
            kernel_params! {
                struct RouterRows {
                    x: u64, g: u64, m: i32, e: i32, logits: u64, probs: u64,
                    zero: u64, zero_cols: i32, tokens: i32,
                }
            }
            let p = RouterRows {
                x: params.x,
                g: params.g,
                m: params.m,
                e: params.e,
                logits: params.logits,
                probs: params.probs,
                zero: params.zero,
                zero_cols: params.zero_cols,
                tokens: params.tokens,
            };
            // SAFETY: router_softmax_rows(const half*, const half*, int, int,
            // float*, float*, float*, int, int) = RouterRows; block b takes
            // tokens 8b.. < tokens (reads past them are skipped): x rows
            // (tokens x m, m % 8 == 0, 16-byte aligned, checked), G (e x m,
            // e <= 8), their logits/probs rows and zero rows (as
            // router_softmax's, checked).
            return unsafe {
                gpu.launch(
                    &gpu.router,
                    "router_softmax_rows",
                    Shape::new((tokens as u32).div_ceil(8), 256),
                    p,
                    || format!("tokens={tokens} m={m} experts={e} rows"),
                )
            };
        }
        let (warps, smem) = self.block_shape();
        // SAFETY: router_softmax(const half* x, const half* g, int m, int e,
        // float* logits, float* probs, float* zero, int zero_cols, int
        // tokens, ... = RouterSoftmax: const unsigned long long* pf_bases, long long
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
                Shape::new(tokens as u32 + pf_blocks, warps * 32).shared(smem),
                params,
                || format!("tokens={tokens} m={m} experts={e}"),
            )
        }
    }
}

kernel_params! {
    struct RouterPolicyRows {
        x: u64, g: u64, m: i32, e: i32, logits: u64, probs: u64, tokens: i32,
        pa: PolicyArgs, lat: u64, sel: u64, sw: i32,
    }
}

impl Router {
    /// The checks of a launch over `tokens` rows of `x` writing `logits_len`
    /// logits and `probs_len` probabilities: at least one token (that
    /// fits an i32), whole rows of x (16-byte aligned), `tokens x experts`
    /// of each output.
    fn check_rows(
        &self,
        op: &'static str,
        x: &DeviceSlice<f16>,
        tokens: usize,
        logits_len: usize,
        probs_len: usize,
    ) -> Result<()> {
        let (e, m) = (self.experts, self.m);
        if tokens == 0 || x.len() < tokens * m || logits_len < tokens * e || probs_len < tokens * e
        {
            return Err(shape(
                op,
                format!(
                    "tokens={tokens}, x {} (need {}), logits {logits_len} / probs {probs_len} (need {})",
                    x.len(),
                    tokens * m,
                    tokens * e
                ),
            ));
        }
        if tokens > i32::MAX as usize {
            return Err(shape(op, format!("tokens={tokens}")));
        }
        check_align(op, "x", addr(x), 16)
    }

    /// Whether `tokens` tokens take the many-token kernels (8 tokens per
    /// block): [`Router::route`] without prefetch blocks, and
    /// [`Router::route_policy_rows`].
    pub(crate) fn rows_fit(&self, tokens: usize) -> bool {
        tokens >= ROUTER_ROWS_MIN_TOKENS && self.experts <= ROUTER_ROWS_MAX_E
    }

    /// [`Router::route`] (the same logits and probabilities, bit for bit)
    /// and wdmoe-core's policy per token (the device port, as
    /// `route_policy` runs it) in one launch (`router_policy_rows`): each
    /// token's warp writes its `sel` row of `sw = 1 + 2 pa.k` ints. `lat`:
    /// `[tokens][experts]` latencies on the device, or 0 for `pa.lat` (its
    /// size checked by the caller, `route_select`); this checks the shape
    /// ([`Router::rows_fit`]) and the other buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route_policy_rows(
        &self,
        gpu: &Gpu,
        x: &DeviceSlice<f16>,
        tokens: usize,
        logits: &mut DeviceSlice<f32>,
        probs: &mut DeviceSlice<f32>,
        pa: &PolicyArgs,
        lat: u64,
        sel: &mut DeviceSlice<i32>,
        sw: usize,
    ) -> Result<()> {
        const OP: &str = "Router::route_policy_rows";
        let (e, m) = (self.experts, self.m);
        self.check_rows(OP, x, tokens, logits.len(), probs.len())?;
        if !self.rows_fit(tokens) || sel.len() < tokens * sw {
            return Err(shape(
                OP,
                format!(
                    "tokens={tokens} (>= {ROUTER_ROWS_MIN_TOKENS}), experts={e} (<= {ROUTER_ROWS_MAX_E}), sel {} (need {})",
                    sel.len(),
                    tokens * sw
                ),
            ));
        }
        let p = RouterPolicyRows {
            x: addr(x),
            g: addr(&self.g),
            m: m as i32,
            e: e as i32,
            logits: addr(logits),
            probs: addr(probs),
            tokens: tokens as i32,
            pa: *pa,
            lat,
            sel: addr(sel),
            sw: sw as i32,
        };
        // SAFETY: router_policy_rows(const half* x, const half* g, int m, int
        // e, float* logits, float* probs, int tokens, PolicyArgs pa (by value,
        // repr(C) mirror), const double* lat, int* sel, int sw) =
        // RouterPolicyRows; block b takes tokens 8b.. < tokens (reads past
        // them are skipped), warp w token 8b + w: x rows (tokens x m, m % 8
        // == 0, 16-byte aligned: checked), G (e x m, e <= 8), its
        // logits/probs rows (tokens x e, checked), its lat row (null or
        // tokens x e doubles: the caller's check) and its sel row (tokens x
        // sw, checked); 256 threads as the kernel requires.
        unsafe {
            gpu.launch(
                &gpu.router,
                "router_policy_rows",
                Shape::new((tokens as u32).div_ceil(8), 256),
                p,
                || format!("tokens={tokens} m={m} experts={e} policy rows"),
            )
        }
    }
}

/// Tokens from which the router runs 8 tokens per block
/// (`router_softmax_rows`, at most [`ROUTER_ROWS_MAX_E`] experts; on
/// tensor cores since run F5). Below, one block per token takes a token's
/// logits in one memory round trip. The threshold was timed against the
/// earlier warp per token: at 128 tokens it ran 23.6 µs (51 µs before its
/// loads were batched) on an H200 under ncu (runs B1, B2), a few waves of
/// the per-token blocks a few µs; at 2,048 tokens the per-token blocks ran
/// 45 µs.
pub(crate) const ROUTER_ROWS_MIN_TOKENS: usize = 1024;
/// Most experts `router_softmax_rows` takes (ROUTER_ROWS_MAX_E in router.cu).
pub(crate) const ROUTER_ROWS_MAX_E: usize = 8;

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
    kernel_params! {
        struct F32ToF16 { input: u64, out: u64, n: i64 }
    }
    let params = F32ToF16 {
        input: addr(input),
        out: addr(out),
        n: n as i64,
    };
    let grid = gpu.grid_1d(n as u64, 8);
    // SAFETY: f32_to_f16(const float*, half*, long long) = F32ToF16;
    // both buffers hold at least n elements (checked).
    unsafe {
        gpu.launch(
            &gpu.router,
            "f32_to_f16",
            Shape::new(grid, 256),
            params,
            || format!("n={n}"),
        )
    }
}
