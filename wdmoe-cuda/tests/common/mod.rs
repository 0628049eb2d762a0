//! Helpers of the GPU test files (tests/gpu.rs and its tests/gpu/planned.rs,
//! tests/gpu_route.rs, tests/gpu_packed.rs): fresh random device inputs, the
//! f64 reference FFN and the relative-error check that never lets NaN pass.
#![allow(dead_code)] // each test file uses a part

use std::time::{SystemTime, UNIX_EPOCH};

use wdmoe_cuda::{f16, DeviceBuffer, DownLayout, ExpertWeights, Gpu};

/// ‖out − ref‖/‖ref‖ bound of the fp16 kernels: fp16 inputs and weights,
/// fp32 accumulation, the intermediate h rounded to fp16 once, the output
/// rounded to fp16 (about 4x the fp16 unit roundoff 4.9e-4).
pub const BOUND: f64 = 2e-3;
/// fp16 NaN, to poison outputs before a run.
pub const NAN16: u16 = 0x7E00;

/// A fresh seed (printed, to replay a failure).
pub fn seed() -> u64 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {s:#x}");
    s
}

/// GPU 0 (these tests run only where one is).
pub fn gpu() -> Gpu {
    Gpu::new(0).expect("these tests need a CUDA GPU (run with --include-ignored only there)")
}

/// Whether the tensor-core (sm_90a) kernels run here; prints why not.
pub fn sm90(gpu: &Gpu) -> bool {
    if !gpu.info().cubin {
        eprintln!("skipping: the tensor-core kernels need compute capability 9.0");
    }
    gpu.info().cubin
}

/// `n` fp16 values uniform in [-scale, scale) on the device.
pub fn rand_dev(gpu: &Gpu, n: usize, seed: u64, scale: f32) -> DeviceBuffer<f16> {
    let mut b = gpu.alloc::<f16>(n).unwrap();
    gpu.fill_uniform(&mut b, seed, scale).unwrap();
    b
}

pub fn host(gpu: &Gpu, b: &DeviceBuffer<f16>) -> Vec<f64> {
    gpu.download(b)
        .unwrap()
        .iter()
        .map(|v| v.to_f64())
        .collect()
}

/// Row-major `[rows][k]` times `[t][k]` -> `[t][rows]`, f64, threaded over rows.
pub fn matmul_t(w: &[f64], x: &[f64], rows: usize, k: usize, t: usize) -> Vec<f64> {
    let threads = std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(32);
    let chunk = rows.div_ceil(threads);
    let mut out_rows = vec![0.0; rows * t]; // [rows][t]
    std::thread::scope(|s| {
        for (ci, part) in out_rows.chunks_mut(chunk * t).enumerate() {
            s.spawn(move || {
                for (ri, o) in part.chunks_mut(t).enumerate() {
                    let r = ci * chunk + ri;
                    let wr = &w[r * k..(r + 1) * k];
                    for (tt, ov) in o.iter_mut().enumerate() {
                        let xr = &x[tt * k..(tt + 1) * k];
                        *ov = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                    }
                }
            });
        }
    });
    let mut out = vec![0.0; rows * t];
    for r in 0..rows {
        for tt in 0..t {
            out[tt * rows + r] = out_rows[r * t + tt];
        }
    }
    out
}

pub fn silu(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

/// Reference expert FFN in f64: [t][m] -> [t][m].
pub fn ffn_ref(
    w1: &[f64],
    w3: &[f64],
    w2: &[f64],
    x: &[f64],
    m: usize,
    m_h: usize,
    t: usize,
) -> Vec<f64> {
    let g = matmul_t(w1, x, m_h, m, t);
    let u = matmul_t(w3, x, m_h, m, t);
    let h: Vec<f64> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
    matmul_t(w2, &h, m, m_h, t)
}

pub fn rel_err(out: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    assert!(
        out.iter().all(|v| v.is_finite()),
        "non-finite output (unwritten or NaN)"
    );
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    assert!(den > 0.0, "reference is all zeros");
    let e = (num / den).sqrt();
    assert!(e.is_finite(), "NaN error");
    e
}

pub struct Expert {
    pub w: ExpertWeights,
    pub w1: Vec<f64>,
    pub w3: Vec<f64>,
    pub w2: Vec<f64>,
}

pub fn expert(gpu: &Gpu, m: usize, m_h: usize, seed: u64) -> Expert {
    expert_opts(gpu, m, m_h, seed, wdmoe_cuda::ffn::K_MAJOR_DEFAULT)
}

pub fn expert_opts(gpu: &Gpu, m: usize, m_h: usize, seed: u64, k_major: bool) -> Expert {
    let s1 = 1.7 / (m as f32).sqrt();
    let s2 = 1.7 / (m_h as f32).sqrt();
    let d1 = rand_dev(gpu, m * m_h, seed ^ 1, s1);
    let d3 = rand_dev(gpu, m * m_h, seed ^ 3, s1);
    let d2 = rand_dev(gpu, m * m_h, seed ^ 2, s2);
    let layout = DownLayout::default_for(m);
    let w = ExpertWeights::pack_opts(gpu, &d1, &d3, &d2, m, m_h, layout, k_major).unwrap();
    Expert {
        w,
        w1: host(gpu, &d1),
        w3: host(gpu, &d3),
        w2: host(gpu, &d2),
    }
}
