//! The device-planned decode MoE step: the router kernel also runs the WDMoE
//! selection policy per token and writes an expert plan to device memory
//! ([`crate::Router::route_plan`]); the expert kernels of each plan slot read
//! their expert and tokens from it ([`crate::ffn_decode_slot`]). The host can
//! so enqueue a whole step at once, with no host round trip between the
//! router and the experts.
//!
//! The policy on the device is a port of wdmoe-core's `select` (f64); the
//! plan is also written to page-locked host memory ([`DevicePlan::report`])
//! so that the caller can compare it with wdmoe-core on the same logits (as
//! wdmoe-sim's `GpuLayer` does, re-running the experts with its own plan on
//! any difference).

use cust::memory::{DeviceBuffer, LockedBuffer};
use wdmoe_core::select::Policy;

use crate::error::{shape, CudaCtx, Error, Result};
use crate::ffn::ExpertWeights;
use crate::launch::{kernel_params, Shape};
use crate::runtime::Gpu;

/// Most experts (and so plan slots) of a device-planned step (`WDMOE_MAX_SLOTS`).
pub const MAX_SLOTS: usize = 64;

/// Most tokens of a device-planned step (one decode launch per slot).
pub const MAX_PLAN_TOKENS: usize = crate::ffn::MAX_DECODE_TOKENS;

/// `struct TokList` of kernels/moe_plan.cuh: the tokens of one decode launch.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct TokList {
    pub(crate) gather: i32,
    pub(crate) scatter: i32,
    pub(crate) idx: [i32; crate::ffn::MAX_DECODE_TOKENS],
    pub(crate) w: [f32; crate::ffn::MAX_DECODE_TOKENS],
}

/// Size of `struct Slot` (moe_plan.cuh) in 32-bit words: w13, w2 (2 each),
/// expert, T, then a TokList (2 + 16 + 16).
pub(crate) const SLOT_WORDS: usize = 4 + 2 + 2 + 2 * crate::ffn::MAX_DECODE_TOKENS;
/// 32-bit words of `struct SpecPlan` (moe_plan.cuh): MAX_SLOTS addresses,
/// seq, a pad word and MAX_SLOTS verdicts.
pub(crate) const SPEC_WORDS: usize = 2 * MAX_SLOTS + 2 + MAX_SLOTS;
/// Words of `struct PlanReport` before its slots.
const REPORT_HEAD: usize = 4;
/// Per-token scratch of router_policy: count, experts, fp32 weights.
const SEL_WORDS: usize = 1 + 2 * MAX_SLOTS;

/// `struct PolicyArgs` of kernels/router.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct PolicyArgs {
    pub(crate) k: i32,
    pub(crate) max_drops: i32,
    pub(crate) theta: f64,
    pub(crate) lat: [f64; MAX_SLOTS],
    pub(crate) n_pf: i32,
    pub(crate) profile: i32,
    pub(crate) pf_off: [i64; MAX_PREFETCH_RANGES],
    pub(crate) pf_len: [i64; MAX_PREFETCH_RANGES],
}

// The #[repr(C)] mirrors match the CUDA structs (kernels/moe_plan.cuh,
// router.cu) byte for byte: checked at compile time.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<TokList>() == 136);
    assert!(offset_of!(TokList, idx) == 8);
    assert!(offset_of!(TokList, w) == 8 + 4 * crate::ffn::MAX_DECODE_TOKENS);
    assert!(SLOT_WORDS * 4 == 8 + 8 + 4 + 4 + 136);
    assert!(offset_of!(PolicyArgs, theta) == 8);
    assert!(offset_of!(PolicyArgs, lat) == 16);
    assert!(offset_of!(PolicyArgs, n_pf) == 16 + 8 * MAX_SLOTS);
    assert!(offset_of!(PolicyArgs, pf_off) == 24 + 8 * MAX_SLOTS);
    assert!(offset_of!(PolicyArgs, pf_len) == 24 + 8 * MAX_SLOTS + 64);
    assert!(size_of::<PolicyArgs>() == 24 + 8 * MAX_SLOTS + 128);
};

/// Most byte ranges of [`crate::Router::route_plan`]'s speculative prefetch.
pub const MAX_PREFETCH_RANGES: usize = 8;

/// The policy of [`crate::Router::route_plan`]: wdmoe-core's
/// [`Policy`] (k, θ, max drops; validated by wdmoe-core, nowhere else) and
/// a profiling flag. k above the layer's experts takes them all, as
/// wdmoe-core's `select` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanPolicy {
    policy: Policy<f64>,
    profile: bool,
}

impl From<Policy<f64>> for PlanPolicy {
    fn from(policy: Policy<f64>) -> PlanPolicy {
        PlanPolicy {
            policy,
            profile: false,
        }
    }
}

impl PlanPolicy {
    /// `Policy::new(k, theta, max_drops)` of wdmoe-core ([`Error::Policy`]
    /// where it rejects them).
    pub fn new(k: usize, theta: f64, max_drops: usize) -> Result<PlanPolicy> {
        Ok(Policy::new(k, theta, max_drops)
            .map_err(Error::Policy)?
            .into())
    }

    /// Profiling: the router kernel records %globaltimer stamps of its
    /// phases ([`DevicePlan::stamps_ns`]; 1-token plans).
    #[doc(hidden)]
    pub fn with_profile(mut self, on: bool) -> PlanPolicy {
        self.profile = on;
        self
    }

    /// Top-k.
    pub fn k(&self) -> usize {
        self.policy.k()
    }

    /// The wdmoe-core policy.
    pub fn policy(&self) -> &Policy<f64> {
        &self.policy
    }

    /// The kernel's by-value arguments for a layer of `experts` experts
    /// (k capped there).
    pub(crate) fn args(&self, experts: usize) -> PolicyArgs {
        PolicyArgs {
            k: self.policy.k().min(experts).min(MAX_SLOTS) as i32,
            max_drops: self.policy.max_drops().min(i32::MAX as usize) as i32,
            theta: self.policy.theta(),
            lat: [0.0; MAX_SLOTS],
            n_pf: 0,
            profile: i32::from(self.profile),
            pf_off: [0; MAX_PREFETCH_RANGES],
            pf_len: [0; MAX_PREFETCH_RANGES],
        }
    }
}

/// One slot of a finished plan: the expert that ran in it and its
/// `(token, combine weight)` pairs in token order.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSlot {
    /// Router index of the expert.
    pub expert: usize,
    /// Tokens it served and their combine weights (fp32, as the kernels used them).
    pub tokens: Vec<(usize, f32)>,
}

/// What the device planned in the last [`crate::Router::route_plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlanReport {
    /// The first token whose policy failed on the device (non-finite
    /// logits, no reachable expert); no expert ran then.
    pub failed_token: Option<usize>,
    /// The used slots, in slot (= expert) order.
    pub slots: Vec<PlannedSlot>,
}

/// Device and page-locked host buffers of the device-planned step for one
/// set of experts (same shapes and packing), and the addresses of their
/// weights that the plan hands to the slot kernels.
pub struct DevicePlan {
    pub(crate) wtab: DeviceBuffer<u64>,
    pub(crate) addrs: Vec<(u64, u64)>,
    pub(crate) slots: DeviceBuffer<u32>,
    pub(crate) sel: DeviceBuffer<i32>,
    pub(crate) counter: DeviceBuffer<u32>,
    pub(crate) report: LockedBuffer<u32>,
    pub(crate) lat: LockedBuffer<f64>,
    /// A launched router_policy reads `lat` (until its report arrives).
    lat_pending: bool,
    pub(crate) logits: LockedBuffer<f32>,
    pub(crate) seq: u32,
    pub(crate) n_slots: usize,
    pub(crate) tokens: usize,
    pub(crate) w13_bytes: usize,
    pub(crate) m: usize,
    pub(crate) m_h: usize,
}

impl std::fmt::Debug for DevicePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePlan")
            .field("experts", &self.addrs.len())
            .field("m", &self.m)
            .field("m_h", &self.m_h)
            .finish()
    }
}

fn locked<T: cust::memory::DeviceCopy>(v: T, n: usize) -> Result<LockedBuffer<T>> {
    LockedBuffer::new(&v, n).ctx("cuMemAllocHost", || format!("{n} elements"))
}

impl DevicePlan {
    /// Buffers for `experts` (1..=[`MAX_SLOTS`], all of the same m, m_h,
    /// W2 layout and tile order).
    pub fn new(gpu: &Gpu, experts: &[ExpertWeights]) -> Result<DevicePlan> {
        const OP: &str = "DevicePlan::new";
        let first = experts
            .first()
            .ok_or_else(|| shape(OP, "no experts".into()))?;
        if experts.len() > MAX_SLOTS {
            return Err(shape(
                OP,
                format!("{} experts (at most {MAX_SLOTS})", experts.len()),
            ));
        }
        if experts.iter().any(|e| !e.same_packing(first)) {
            return Err(shape(
                OP,
                "experts differ in shape, W2 layout or tile order".into(),
            ));
        }
        let addrs: Vec<(u64, u64)> = experts.iter().map(|e| e.addresses()).collect();
        let flat: Vec<u64> = addrs.iter().flat_map(|&(a, b)| [a, b]).collect();
        Ok(DevicePlan {
            wtab: gpu.upload(&flat)?,
            addrs,
            // + the plan's ready flag, a pad word and the 1-token candidates
            slots: gpu.alloc(MAX_SLOTS * SLOT_WORDS + 2 + SPEC_WORDS)?,
            sel: gpu.alloc(MAX_PLAN_TOKENS * SEL_WORDS)?,
            counter: gpu.alloc(1)?,
            report: locked(0u32, REPORT_HEAD + MAX_SLOTS * SLOT_WORDS + 16)?,
            lat: locked(0f64, MAX_PLAN_TOKENS * MAX_SLOTS)?,
            lat_pending: false,
            logits: locked(0f32, MAX_PLAN_TOKENS * MAX_SLOTS)?,
            seq: 0,
            n_slots: 0,
            tokens: 0,
            w13_bytes: first.gate_up_weights().1,
            m: first.m(),
            m_h: first.m_h(),
        })
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.addrs.len()
    }

    /// Waits until no queued kernel reads the page-locked latency table
    /// (the router_policy that last did has reported, which it does after
    /// reading it), so that it may be overwritten.
    pub(crate) fn wait_lat_free(&mut self, gpu: &Gpu) -> Result<()> {
        if self.lat_pending {
            self.wait_report(gpu)?;
            self.lat_pending = false;
        }
        Ok(())
    }

    /// Marks the latency table as read by the router_policy just launched.
    pub(crate) fn lat_read_launched(&mut self) {
        self.lat_pending = true;
    }

    /// Waits until the last router_policy's report is in page-locked host
    /// memory (its sequence number, which the kernel writes after the
    /// report, the logits and a system-scope fence). No CUDA event is
    /// recorded for it: an event between two kernels of the stream ends
    /// their programmatic-dependent-launch overlap (about 5 µs per step on
    /// an H200). The wait polls the report and, when the stream has drained
    /// or failed without it, returns an error instead of spinning on.
    pub(crate) fn wait_report(&self, gpu: &Gpu) -> Result<()> {
        const OP: &str = "DevicePlan::wait_report";
        let mut spins = 0u32;
        loop {
            if self.report_seq() == self.seq {
                // Pairs with the kernel's release of `seq`: the report and
                // the logits it wrote before are read after this.
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                return Ok(());
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                let idle = gpu.stream_idle()?;
                if idle && self.report_seq() != self.seq {
                    return Err(shape(
                        OP,
                        format!(
                            "the stream finished without router_policy's report of step {} (have {})",
                            self.seq,
                            self.report_seq()
                        ),
                    ));
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// The sequence number in the report (written by the GPU).
    fn report_seq(&self) -> u32 {
        // SAFETY: the report buffer is page-locked host memory owned by
        // self (at least REPORT_HEAD words) that the GPU writes: a volatile
        // read of an aligned u32 that is always initialised.
        unsafe { std::ptr::read_volatile(self.report.as_ptr()) }
    }

    /// Slots the last plan was built with (`min(experts, tokens · k)`).
    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Checks that `experts` are the ones this plan was built for (their
    /// weights at the same addresses): the slot kernels dereference them.
    pub(crate) fn check_experts(&self, op: &'static str, experts: &[ExpertWeights]) -> Result<()> {
        if experts.len() != self.addrs.len()
            || experts
                .iter()
                .zip(&self.addrs)
                .any(|(e, &a)| e.addresses() != a)
        {
            return Err(shape(
                op,
                "experts are not the ones the DevicePlan was built for".into(),
            ));
        }
        Ok(())
    }

    /// Profiling: %globaltimer stamps (ns) of the last 1-token router_policy,
    /// relative to its entry: logits, f64 softmax, policy, selections
    /// gathered, slots placed, plan written, end.
    #[doc(hidden)]
    pub fn stamps_ns(&self, gpu: &Gpu) -> Result<[u64; 7]> {
        gpu.sync()?;
        let b = REPORT_HEAD + MAX_SLOTS * SLOT_WORDS;
        let r = &self.report[b..b + 16];
        let t = |i: usize| r[2 * i] as u64 | (r[2 * i + 1] as u64) << 32;
        let mut out = [0u64; 7];
        for (i, o) in out.iter_mut().enumerate() {
            *o = t(i + 1).wrapping_sub(t(0));
        }
        Ok(out)
    }

    /// Tokens of the last plan.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The router logits of the last [`crate::Router::route_plan`],
    /// `[tokens][experts]` (synchronises the stream first).
    pub fn logits(&self, gpu: &Gpu) -> Result<&[f32]> {
        gpu.sync()?;
        Ok(self.logits_ready())
    }

    /// [`DevicePlan::logits`] without a synchronisation: the caller has
    /// waited for an event recorded after the step's router kernel (later
    /// work of the stream may still run).
    pub(crate) fn logits_ready(&self) -> &[f32] {
        &self.logits[..self.tokens * self.addrs.len()]
    }

    /// The plan of the last [`crate::Router::route_plan`], read from
    /// page-locked host memory (synchronises the stream first); an error if
    /// there was none.
    pub fn report(&self, gpu: &Gpu) -> Result<PlanReport> {
        gpu.sync()?;
        self.report_ready()
    }

    /// [`DevicePlan::report`] without a synchronisation, as
    /// [`DevicePlan::logits_ready`] (an unfinished step is an error: its
    /// sequence number is not yet in the report).
    pub(crate) fn report_ready(&self) -> Result<PlanReport> {
        const OP: &str = "DevicePlan::report";
        let r = &self.report[..];
        if r[0] != self.seq {
            return Err(shape(
                OP,
                format!(
                    "report of step {} (expected {}): not finished",
                    r[0], self.seq
                ),
            ));
        }
        let err = r[1] as i32;
        let n = r[2] as usize;
        if err != 0 {
            // err > 0: 1 + token; < 0: the plan did not fit (cannot happen
            // for tokens <= 16 and n_slots = min(e, tokens k)).
            return Ok(PlanReport {
                failed_token: Some(if err > 0 { err as usize - 1 } else { 0 }),
                slots: Vec::new(),
            });
        }
        if n > self.n_slots {
            return Err(shape(OP, format!("{n} slots used of {}", self.n_slots)));
        }
        let mut slots = Vec::with_capacity(n);
        for s in 0..n {
            let w = &r[REPORT_HEAD + s * SLOT_WORDS..REPORT_HEAD + (s + 1) * SLOT_WORDS];
            let (expert, t) = (w[4] as usize, w[5] as usize);
            if expert >= self.addrs.len() || t == 0 || t > MAX_PLAN_TOKENS {
                return Err(shape(OP, format!("slot {s}: expert {expert}, {t} tokens")));
            }
            let tokens = (0..t)
                .map(|i| (w[8 + i] as usize, f32::from_bits(w[8 + 16 + i])))
                .collect();
            slots.push(PlannedSlot { expert, tokens });
        }
        Ok(PlanReport {
            failed_token: None,
            slots,
        })
    }
}

impl Drop for DevicePlan {
    fn drop(&mut self) {
        // Kernels may still write the page-locked buffers: finish them
        // before they are freed.
        let _ = cust::context::CurrentContext::synchronize();
    }
}

/// The device policy alone (kernel `policy_probe`), for tests against
/// wdmoe-core: `cases` independent tokens of `e` logits and `e` latencies
/// each (`logits`, `latency_s`: `[cases][e]`); per case the kept experts
/// in the policy's order and their weights (empty on an error: a non-finite
/// logit or no reachable expert). e <= 32 runs the router kernel's warp
/// path, whose weights are fp32 (widened to f64 here); larger e the serial
/// path, f64 weights.
#[doc(hidden)]
pub fn policy_probe(
    gpu: &Gpu,
    logits: &[f32],
    latency_s: &[f64],
    e: usize,
    policy: &PlanPolicy,
) -> Result<Vec<(Vec<usize>, Vec<f64>)>> {
    const OP: &str = "policy_probe";
    if e == 0 || e > MAX_SLOTS || logits.len() % e != 0 || latency_s.len() != logits.len() {
        return Err(shape(
            OP,
            format!(
                "e={e}, {} logits, {} latencies",
                logits.len(),
                latency_s.len()
            ),
        ));
    }
    let cases = logits.len() / e;
    if cases == 0 || cases > i32::MAX as usize / (1 + MAX_SLOTS) {
        return Err(shape(OP, format!("{cases} cases")));
    }
    let d_logits = gpu.upload(logits)?;
    let d_lat = gpu.upload(latency_s)?;
    let out = gpu.alloc::<i32>(cases * (1 + MAX_SLOTS))?;
    let wout = gpu.alloc::<f64>(cases * MAX_SLOTS)?;
    kernel_params! {
        struct PolicyProbe { logits: u64, lat: u64, e: i32, n: i32, pa: PolicyArgs, out: u64, wout: u64 }
    }
    let params = PolicyProbe {
        logits: crate::runtime::addr(&d_logits),
        lat: crate::runtime::addr(&d_lat),
        e: e as i32,
        n: cases as i32,
        pa: policy.args(e),
        out: crate::runtime::addr(&out),
        wout: crate::runtime::addr(&wout),
    };
    // SAFETY: policy_probe(const float* logits, const double* lat, int e,
    // int n, PolicyArgs pa (by value, #[repr(C)]), int* out, double* wout)
    // = PolicyProbe; logits and lat hold n x e values, out n x (1 +
    // MAX_SLOTS) ints, wout n x MAX_SLOTS doubles (allocated above); e <=
    // MAX_SLOTS; one warp (block of 32) per case.
    unsafe {
        gpu.launch(
            &gpu.router,
            "policy_probe",
            Shape::new(cases as u32, 32),
            params,
            || format!("cases={cases} e={e}"),
        )?;
    }
    let o = gpu.download(&out)?;
    let w = gpu.download(&wout)?;
    Ok((0..cases)
        .map(|c| {
            let row = &o[c * (1 + MAX_SLOTS)..(c + 1) * (1 + MAX_SLOTS)];
            let ns = (row[0].max(0) as usize).min(MAX_SLOTS);
            (
                row[1..1 + ns].iter().map(|&q| q as usize).collect(),
                w[c * MAX_SLOTS..c * MAX_SLOTS + ns].to_vec(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn plan_policy_is_validated_by_wdmoe_core() {
        assert!(PlanPolicy::new(2, 0.2, 1).is_ok());
        assert!(PlanPolicy::new(MAX_SLOTS + 1, 0.5, 0).is_ok());
        for (k, theta) in [(0, 0.2), (2, -0.1), (2, 0.51), (2, f64::NAN)] {
            let core = Policy::new(k, theta, 1).unwrap_err();
            assert_eq!(
                PlanPolicy::new(k, theta, 1),
                Err(Error::Policy(core)),
                "k={k} theta={theta}"
            );
        }
        let a = PlanPolicy::new(3, 0.25, usize::MAX).unwrap().args(8);
        assert_eq!(
            (a.k, a.max_drops, a.theta, a.n_pf, a.profile),
            (3, i32::MAX, 0.25, 0, 0)
        );
        // k above the experts takes them all.
        assert_eq!(PlanPolicy::new(100, 0.2, 1).unwrap().args(8).k, 8);
    }

    /// The #[repr(C)] mirrors match the CUDA structs (kernels/router.cu,
    /// moe_plan.cuh) byte for byte.
    #[test]
    fn layouts_match_the_kernels() {
        assert_eq!(size_of::<TokList>(), 136);
        assert_eq!(SLOT_WORDS * 4, 8 + 8 + 4 + 4 + 136);
        assert_eq!(offset_of!(PolicyArgs, theta), 8);
        assert_eq!(offset_of!(PolicyArgs, lat), 16);
        assert_eq!(offset_of!(PolicyArgs, n_pf), 16 + 8 * MAX_SLOTS);
        assert_eq!(offset_of!(PolicyArgs, pf_off), 24 + 8 * MAX_SLOTS);
        assert_eq!(offset_of!(PolicyArgs, pf_len), 24 + 8 * MAX_SLOTS + 64);
        assert_eq!(size_of::<PolicyArgs>(), 24 + 8 * MAX_SLOTS + 128);
    }
}
