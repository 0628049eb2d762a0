//! The exact per-token selector of `wdmoe frontier` (issue 17) against
//! WDMoE's rule and plain top-k on the same decisions: n = 8, k = 2 and
//! n = 64, k = 8, `f64`. "exact" = softmax and ranking (the sim's
//! `top_k_dyn` over all experts), the candidate list and the staircase
//! ([`Staircase::from_max_latency`]), then one primal query (ρ = 0.9).
//! Also one `min_max` bandwidth solve for 2 devices, the unit of the joint
//! pass (cached per subset and channel slot there).
//!
//! `cargo bench -p wdmoe-benches --bench frontier`

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use wdmoe_benches::{decisions, Decision, MEASUREMENT, WARM_UP};
use wdmoe_core::bandwidth;
use wdmoe_core::latency::{DeviceLink, LatencyModel};
use wdmoe_core::select::{select, top_k, Policy};
use wdmoe_sim::frontier::exact::{Candidate, Staircase};
use wdmoe_sim::policy::top_k_dyn;

const BATCH: usize = 256;

fn exact_batch(ds: &[Decision], k: usize, st: &mut Staircase, cands: &mut Vec<Candidate>) -> f64 {
    let mut sum = 0.0;
    for d in ds {
        let n = d.logits.len();
        let (rank, prob) = top_k_dyn(black_box(&d.logits), n).expect("valid inputs");
        let w_top: f64 = prob[..k].iter().sum();
        cands.clear();
        for (&q, &p) in rank.iter().zip(&prob) {
            if d.latency_s[q].is_finite() {
                cands.push(Candidate {
                    expert: q,
                    weight: p / w_top,
                    latency_s: d.latency_s[q],
                });
            }
        }
        st.from_max_latency(cands, k);
        if let Some((s, _)) = st.min_latency(0.9) {
            sum += s.latency_s;
        }
    }
    sum
}

fn group<const N: usize>(c: &mut Criterion, k: usize) {
    let ds = decisions(N, BATCH, 0x5EED + N as u64);
    let policy = Policy::new(k, 0.2, 1).unwrap();
    let mut g = c.benchmark_group(format!("frontier/n{N}_k{k}"));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("top_k", |b| {
        b.iter(|| {
            ds.iter()
                .map(|d| top_k::<f64, N>(black_box(&d.logits), k).map_or(0, |s| s.experts().len()))
                .sum::<usize>()
        })
    });
    g.bench_function("wdmoe_theta0.2", |b| {
        b.iter(|| {
            ds.iter()
                .map(|d| {
                    select::<f64, N>(&policy, black_box(&d.logits), black_box(&d.latency_s))
                        .map_or(0, |s| s.experts().len())
                })
                .sum::<usize>()
        })
    });
    let mut st = Staircase::default();
    let mut cands = Vec::new();
    g.bench_function("exact_rho0.9", |b| {
        b.iter(|| exact_batch(&ds, k, &mut st, &mut cands))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(30)
        .configure_from_args();
    group::<8>(&mut c, 2);
    group::<64>(&mut c, 8);
    let model = LatencyModel::new(65_536.0_f64, 352_393_216.0, 3.98e-21).unwrap();
    let near = DeviceLink::new(10.0, 1e-8, 0.2, 1e-8, 2e12).unwrap();
    let far = DeviceLink::new(10.0, 1e-11, 0.2, 1e-11, 2e12).unwrap();
    let mut bw = [0.0; 2];
    c.bench_function("frontier/min_max_2_devices", |b| {
        b.iter(|| bandwidth::min_max(&model, black_box(&[near, far]), 100e6, &mut bw).unwrap())
    });
    c.final_summary();
}
