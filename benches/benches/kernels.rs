//! GPU kernel benchmarks (feature `cuda`; needs a CUDA GPU at run time):
//! the fp16 expert FFN decode kernels for 1-16 tokens, the tensor-core
//! prefill FFN for 64-4096 tokens (compute capability 9.0), and the full
//! top-2 MoE layer step (router, policy, grouping, experts, combine) for 1
//! and 16 tokens (decode path; 1 token with the policy on the GPU, the
//! default) and 512 (grouped prefill path), at Mixtral size (m = 4096, m_h = 14336, 8 experts, random fp16
//! weights). Timed on the GPU with CUDA events through `iter_custom`;
//! expert weights rotate over 4 copies so the L2 never holds them.
//!
//!   cargo bench -p wdmoe-benches --features cuda --bench kernels
//!
//! (build here with wdmoe-cuda/gpu-build.sh, run on the GPU machine.)

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wdmoe_core::select::Policy;
use wdmoe_cuda::{
    elapsed_ms, f16, ffn_decode, ffn_prefill, DecodeConfig, ExpertWeights, FfnWorkspace, Gpu,
    PrefillWeights, PrefillWorkspace,
};
use wdmoe_sim::layer::gpu::GpuLayer;

const M: usize = 4096;
const MH: usize = 14336;

fn events<F: FnMut(u64)>(gpu: &Gpu, iters: u64, mut f: F) -> Duration {
    let start = gpu.record().expect("event");
    for i in 0..iters {
        f(i);
    }
    let end = gpu.record().expect("event");
    Duration::from_secs_f64(elapsed_ms(&start, &end).expect("elapsed") as f64 * 1e-3)
}

fn expert_ffn(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skipping GPU benches: {e}");
            return;
        }
    };
    let experts: Vec<ExpertWeights> = (0..4u64)
        .map(|i| {
            let mut w = gpu.alloc::<f16>(M * MH).unwrap();
            let mut w3 = gpu.alloc::<f16>(M * MH).unwrap();
            let mut w2 = gpu.alloc::<f16>(M * MH).unwrap();
            gpu.fill_uniform(&mut w, 100 + i, 0.02).unwrap();
            gpu.fill_uniform(&mut w3, 200 + i, 0.02).unwrap();
            gpu.fill_uniform(&mut w2, 300 + i, 0.02).unwrap();
            ExpertWeights::pack(&gpu, &w, &w3, &w2, M, MH).unwrap()
        })
        .collect();
    let mut ws = FfnWorkspace::new(&gpu, M, MH).unwrap();
    let mut x = gpu.alloc::<f16>(16 * M).unwrap();
    gpu.fill_uniform(&mut x, 7, 1.0).unwrap();
    let mut out = gpu.alloc::<f16>(16 * M).unwrap();
    let cfg = DecodeConfig::auto(gpu.info(), M, MH);
    gpu.sync().unwrap();
    let mut g = c.benchmark_group("expert_ffn_fp16_mixtral");
    g.throughput(Throughput::Bytes(experts[0].bytes() as u64));
    for t in [1usize, 2, 4, 8, 16] {
        g.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, &t| {
            b.iter_custom(|iters| {
                events(&gpu, iters, |i| {
                    ffn_decode(
                        &gpu,
                        &experts[i as usize % 4],
                        &x,
                        t,
                        &mut out,
                        &mut ws,
                        &cfg,
                    )
                    .unwrap()
                })
            })
        });
    }
    g.finish();
}

fn expert_ffn_prefill(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(g) if g.info().cubin => g,
        Ok(_) => {
            eprintln!("skipping prefill benches: they need compute capability 9.0");
            return;
        }
        Err(_) => return,
    };
    let raw: Vec<_> = (0..4u64)
        .map(|i| {
            let mut w = (
                gpu.alloc::<f16>(M * MH).unwrap(),
                gpu.alloc::<f16>(M * MH).unwrap(),
                gpu.alloc::<f16>(M * MH).unwrap(),
            );
            gpu.fill_uniform(&mut w.0, 400 + i, 0.02).unwrap();
            gpu.fill_uniform(&mut w.1, 500 + i, 0.02).unwrap();
            gpu.fill_uniform(&mut w.2, 600 + i, 0.01).unwrap();
            w
        })
        .collect();
    let refs: Vec<_> = raw.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
    let pw = PrefillWeights::pack(&gpu, &refs, M, MH).unwrap();
    drop(refs);
    drop(raw);
    let max_t = 4096;
    let mut ws = PrefillWorkspace::new(&gpu, M, MH, max_t).unwrap();
    let mut x = gpu.alloc::<f16>(max_t * M).unwrap();
    gpu.fill_uniform(&mut x, 8, 1.0).unwrap();
    let mut out = gpu.alloc::<f16>(max_t * M).unwrap();
    gpu.sync().unwrap();
    let mut g = c.benchmark_group("expert_ffn_prefill_fp16_mixtral");
    for t in [64usize, 512, 4096] {
        // Throughput in FLOPs (reported as elements/s: FLOP/s).
        g.throughput(Throughput::Elements((6 * M * MH * t) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(t), &t, |b, &t| {
            b.iter_custom(|iters| {
                events(&gpu, iters, |i| {
                    ffn_prefill(&gpu, &pw, i as usize % 4, &x, t, &mut out, &mut ws, None).unwrap()
                })
            })
        });
    }
    g.finish();
}

/// Sum of the measured step times of `iters` layer steps of `n` tokens.
fn steps(
    layer: &mut GpuLayer,
    n: usize,
    policy: &Policy<f64>,
    lat: &[f64],
    iters: u64,
) -> Duration {
    let total: f64 = (0..iters)
        .map(|_| layer.step(n, policy, lat).unwrap().time_s)
        .sum();
    Duration::from_secs_f64(total)
}

fn moe_layer(c: &mut Criterion) {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(_) => return,
    };
    let cubin = gpu.info().cubin;
    let mut layer = GpuLayer::random(gpu, M, MH, 8, 16, 42).unwrap();
    layer.set_random_input(9).unwrap();
    // As deployed: no per-expert events between the experts' kernels.
    layer.set_expert_timing(false);
    // Plain top-2 (θ = 0, equal latencies): the same work as Mixtral's layer.
    let policy = Policy::new(2, 0.0, 1).unwrap();
    let lat = [0.01f64; 8];
    let mut g = c.benchmark_group("moe_layer_top2_mixtral");
    for n in [1usize, 16] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| steps(&mut layer, n, &policy, &lat, iters))
        });
    }
    drop(layer);
    if cubin {
        // The grouped prefill path: one tensor-core launch per GEMM for all
        // experts' token groups.
        let gpu = Gpu::new(0).unwrap();
        let mut layer = GpuLayer::random(gpu, M, MH, 8, 512, 43).unwrap();
        layer.set_random_input(10).unwrap();
        let n = 512usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| steps(&mut layer, n, &policy, &lat, iters))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = expert_ffn, expert_ffn_prefill, moe_layer
}
criterion_main!(benches);
