//! GPU tests of the device-planned MoE step (part of tests/gpu.rs): the
//! router's plan and the slot kernels that read it, against the same steps
//! run otherwise.

use super::common::*;
use wdmoe_cuda::{
    f16, ffn_decode_slot, ffn_decode_slots, slots_merge, DecodeConfig, DeviceBuffer, DevicePlan,
    ExpertWeights, FfnWorkspace, Gpu, PlanPolicy, Router,
};

/// `e` random experts of m x m_h, a random router over them, and the plan
/// and workspace of their device-planned steps.
struct PlannedMoe {
    experts: Vec<ExpertWeights>,
    router: Router,
    plan: DevicePlan,
    ws: FfnWorkspace,
    cfg: DecodeConfig,
}

impl PlannedMoe {
    fn new(gpu: &Gpu, s: u64, m: usize, m_h: usize, e: usize) -> PlannedMoe {
        let experts: Vec<ExpertWeights> = (0..e as u64)
            .map(|q| expert(gpu, m, m_h, s ^ (q << 12)).w)
            .collect();
        let gdev = rand_dev(gpu, e * m, s ^ 5, 1.0 / (m as f32).sqrt());
        let router = Router::from_host(gpu, &gpu.download(&gdev).unwrap(), e, m).unwrap();
        PlannedMoe {
            plan: DevicePlan::new(gpu, &experts).unwrap(),
            ws: FfnWorkspace::new(gpu, m, m_h).unwrap(),
            cfg: DecodeConfig::auto(gpu.info(), m, m_h),
            experts,
            router,
        }
    }

    /// One device-planned step of `t` tokens of `x`, all enqueued without
    /// waiting: router_policy, then every plan slot's two kernels, in two
    /// launches for all slots (`merged`, asserting that `slots_merge`
    /// allows it) or two per slot.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        gpu: &Gpu,
        pol: &PlanPolicy,
        x: &DeviceBuffer<f16>,
        t: usize,
        probs: &mut DeviceBuffer<f32>,
        acc: &mut DeviceBuffer<f32>,
        latency_s: &[f64],
        merged: bool,
    ) {
        let m = self.experts[0].m();
        let (plan, ws, cfg) = (&mut self.plan, &mut self.ws, &self.cfg);
        self.router
            .route_plan(gpu, x, t, probs, (acc, m), plan, pol, latency_s, &[])
            .unwrap();
        if merged {
            assert!(slots_merge(cfg, t, plan.n_slots()), "T={t}");
            ffn_decode_slots(gpu, &self.experts, plan, x, acc, ws, cfg).unwrap();
        } else {
            for s in 0..plan.n_slots() {
                ffn_decode_slot(gpu, &self.experts, plan, s, x, acc, ws, cfg).unwrap();
            }
        }
    }
}

/// Two device-planned steps enqueued back to back without a sync, each with
/// its own per-token latency table (which router_policy reads from
/// page-locked host memory while it runs), behind a long kernel so that the
/// first router_policy is still queued when the second call writes its
/// table: each step must see its own table (the outputs equal those of the
/// same steps run one at a time), and the two tables give different outputs.
#[test]
#[ignore = "needs a CUDA GPU"]
fn two_planned_steps_without_sync_keep_their_own_latencies() {
    let gpu = gpu();
    let s = seed();
    let (m, m_h, e, t) = (512, 1024, 8, 4);
    let mut moe = PlannedMoe::new(&gpu, s, m, m_h, e);
    let pol = PlanPolicy::new(2, 0.2, 1).unwrap();
    let x = rand_dev(&gpu, t * m, s ^ 6, 1.0);
    let mut probs = gpu.alloc::<f32>(t * e).unwrap();
    // Table A: only experts 0..4 reachable; table B: only 4..8.
    let table = |lo: usize| -> Vec<f64> {
        (0..t * e)
            .map(|i| {
                let q = i % e;
                if (lo..lo + e / 2).contains(&q) {
                    0.01 + 0.001 * (i % 7) as f64
                } else {
                    f64::INFINITY
                }
            })
            .collect()
    };
    let (lat_a, lat_b) = (table(0), table(e / 2));
    let mut run_alone = |lat: &[f64]| -> Vec<f32> {
        let mut acc = gpu.alloc::<f32>(t * m).unwrap();
        moe.step(&gpu, &pol, &x, t, &mut probs, &mut acc, lat, false);
        gpu.download(&acc).unwrap()
    };
    let ref_a = run_alone(&lat_a);
    let ref_b = run_alone(&lat_b);
    let diff = |a: &[f32], b: &[f32]| -> f64 {
        let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
        rel_err(&a, &b)
    };
    assert!(diff(&ref_a, &ref_b) > 0.1, "tables A and B must differ");
    // Long kernel first: 512 Mi fp16 fills (1 GiB written).
    let mut big = gpu.alloc::<f16>(1 << 29).unwrap();
    let mut acc_a = gpu.alloc::<f32>(t * m).unwrap();
    let mut acc_b = gpu.alloc::<f32>(t * m).unwrap();
    gpu.fill_uniform(&mut big, s, 1.0).unwrap();
    moe.step(&gpu, &pol, &x, t, &mut probs, &mut acc_a, &lat_a, false);
    moe.step(&gpu, &pol, &x, t, &mut probs, &mut acc_b, &lat_b, false);
    let (out_a, out_b) = (gpu.download(&acc_a).unwrap(), gpu.download(&acc_b).unwrap());
    let (ea, eb) = (diff(&out_a, &ref_a), diff(&out_b, &ref_b));
    eprintln!("two steps without sync: rel err {ea:.2e} (A), {eb:.2e} (B)");
    assert!(ea < 1e-5 && eb < 1e-5, "A {ea:.2e}, B {eb:.2e}");
}

/// A device-planned step whose slots share two launches (`ffn_decode_slots`:
/// grid z = slot, the down kernels adding atomically) gives the bits of the
/// same step with two launches per slot (each output row gets at most two
/// additions onto zero, k = 2, which commute exactly), at 1 and 2 tokens,
/// when the gate/up kernel has one warp per block (a merged launch divides
/// the warps by its slots, so then both run the same shape); with two warps
/// (the merged launch then runs one) within 1e-3 of it; no NaN.
#[test]
#[ignore = "needs a CUDA GPU"]
fn merged_slot_launches_equal_one_launch_per_slot() {
    let gpu = gpu();
    let s = seed();
    let (m, m_h, e) = (512, 1024, 8);
    let mut moe = PlannedMoe::new(&gpu, s, m, m_h, e);
    // Shapes without split-K (those of Mixtral size), which merging needs.
    moe.cfg.gate_up.splits = 1;
    moe.cfg.down.splits = 1;
    let pol = PlanPolicy::new(2, 0.0, 0).unwrap();
    for (t, gate_warps) in [(1usize, 1u32), (2, 1), (1, 2), (2, 2)] {
        moe.cfg.gate_up.warps = gate_warps;
        let x = rand_dev(&gpu, t * m, s ^ (7 + t as u64), 1.0);
        let lat = vec![0.01; t * e];
        let mut probs = gpu.alloc::<f32>(t * e).unwrap();
        let mut run = |merged: bool| -> Vec<f32> {
            let mut acc = gpu.alloc::<f32>(t * m).unwrap();
            moe.step(&gpu, &pol, &x, t, &mut probs, &mut acc, &lat, merged);
            gpu.download(&acc).unwrap()
        };
        let (one, merged) = (run(false), run(true));
        assert!(
            one.iter().all(|v| v.is_finite()),
            "T={t}: non-finite output"
        );
        assert!(one.iter().any(|&v| v != 0.0), "T={t}: all zero");
        let diff = one
            .iter()
            .zip(&merged)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let err = rel_err(&f(&merged), &f(&one));
        eprintln!(
            "T={t}, gate/up {gate_warps} warps: {} slots, {diff} of {} values differ, rel err {err:.2e}",
            moe.plan.n_slots(),
            one.len()
        );
        assert!(
            merged.iter().all(|v| v.is_finite()),
            "T={t}: non-finite merged output"
        );
        if gate_warps == 1 {
            assert_eq!(
                diff, 0,
                "T={t}: merged launches differ from one launch per slot"
            );
        } else {
            assert!(err < 1e-3, "T={t}: merged launches off by {err:.2e}");
        }
    }
}
