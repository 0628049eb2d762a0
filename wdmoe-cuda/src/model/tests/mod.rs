//! The model kernels against CPU references (f64) on fresh random inputs:
//! here the embedding, the norm, the GEMV and the argmax; in `attention`
//! the attention kernels; in `whole` the model's paths against each other
//! (packed against GEMV prefill, lm_head's packing, pipelined decode).
//! GPU tests: run with `--include-ignored` on a GPU machine.

use half::f16;
use rand::{rngs::SmallRng, Rng, SeedableRng};

use super::kernels;
use crate::runtime::Gpu;

mod attention;
mod whole;

/// Fresh inputs every run; the seed is printed to reproduce a failure.
fn rng() -> SmallRng {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("seed {seed}");
    SmallRng::seed_from_u64(seed)
}

fn halves(r: &mut SmallRng, n: usize, scale: f32) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32(r.gen_range(-scale..scale)))
        .collect()
}

/// max |a − b| (NaN in `a` fails).
fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            assert!(x.is_finite(), "non-finite GPU value {x}");
            (x as f64 - y).abs()
        })
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemv_matches_f64_reference_for_every_token_count() {
    let gpu = Gpu::new(0).unwrap();
    let mut r = rng();
    let (k, n) = (1000, 77);
    let w = halves(&mut r, n * k, 1.0);
    let wd = gpu.upload(&w).unwrap();
    for t in [1usize, 2, 3, 5, 8, 16, 21] {
        let x = halves(&mut r, t * k, 1.0);
        let xd = gpu.upload(&x).unwrap();
        let ldy = n + 3;
        let init: Vec<f32> = (0..t * ldy).map(|_| r.gen_range(-1.0..1.0)).collect();
        for accumulate in [false, true] {
            let mut y = gpu.upload(&init).unwrap();
            kernels::gemv(&gpu, &wd, &xd, k, n, t, &mut y, ldy, accumulate).unwrap();
            let got = gpu.download(&y).unwrap();
            let mut want: Vec<f64> = init.iter().map(|&v| v as f64).collect();
            for ti in 0..t {
                for ni in 0..n {
                    let s: f64 = (0..k)
                        .map(|j| w[ni * k + j].to_f64() * x[ti * k + j].to_f64())
                        .sum();
                    let o = &mut want[ti * ldy + ni];
                    *o = if accumulate { *o + s } else { s };
                }
            }
            // Padding columns untouched.
            for ti in 0..t {
                for ni in n..ldy {
                    want[ti * ldy + ni] = init[ti * ldy + ni] as f64;
                }
            }
            let d = max_diff(&got, &want);
            // fp32 accumulation of 1000 products of magnitude <= 1.
            assert!(d < 2e-4, "T={t} accumulate={accumulate}: max diff {d}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn add_rmsnorm_and_embedding_match_reference() {
    let gpu = Gpu::new(0).unwrap();
    let mut r = rng();
    // A few rows (one 1024-thread block each at d = 4096) and many (256
    // threads); rows in and beyond the registers of each shape.
    for (n, d) in [
        (5, 264),
        (3, 4096),
        (kernels::NORM_ROWS_MIN + 3, 4096),
        (40, 4200),
    ] {
        // Both launch orders (the next kernel before or after the wait).
        for early in [false, true] {
            norm_case(&gpu, &mut r, n, d, early);
        }
    }
    // A token id outside the vocabulary (argmax_rows' -1 for a NaN row,
    // embedded on the device by a pipelined decode step) reads row 0.
    let (vocab, d) = (7, 40);
    let table = halves(&mut r, vocab * d, 2.0);
    let mut resid = gpu.alloc::<f32>(2 * d).unwrap();
    let ids = gpu.upload(&[-1i32, vocab as i32 + 3]).unwrap();
    kernels::embed_rows(&gpu, &gpu.upload(&table).unwrap(), &ids, 2, d, &mut resid).unwrap();
    let got = gpu.download(&resid).unwrap();
    for t in 0..2 {
        for i in 0..d {
            assert_eq!(got[t * d + i], table[i].to_f32());
        }
    }
}

fn norm_case(gpu: &Gpu, r: &mut SmallRng, n: usize, d: usize, early: bool) {
    let vocab = 50;
    let table = halves(r, vocab * d, 2.0);
    let ids: Vec<i32> = (0..n).map(|_| r.gen_range(0..vocab as i32)).collect();
    let add: Vec<f32> = (0..n * d).map(|_| r.gen_range(-1.0..1.0)).collect();
    let w: Vec<f32> = (0..d).map(|_| r.gen_range(0.5..1.5)).collect();
    let mut resid = gpu.alloc::<f32>(n * d).unwrap();
    kernels::embed_rows(
        gpu,
        &gpu.upload(&table).unwrap(),
        &gpu.upload(&ids).unwrap(),
        n,
        d,
        &mut resid,
    )
    .unwrap();
    let mut out = gpu.alloc::<f16>(n * (d + 8)).unwrap();
    let eps = 1e-5f32;
    kernels::add_rmsnorm(
        gpu,
        &mut resid,
        kernels::NormAdd::Rows(&gpu.upload(&add).unwrap()),
        &gpu.upload(&w).unwrap(),
        eps,
        n,
        d,
        &mut out,
        d + 8,
        early,
    )
    .unwrap();
    let res = gpu.download(&resid).unwrap();
    let o = gpu.download(&out).unwrap();
    for t in 0..n {
        let row: Vec<f64> = (0..d)
            .map(|i| table[ids[t] as usize * d + i].to_f64() + add[t * d + i] as f64)
            .collect();
        assert!(max_diff(&res[t * d..(t + 1) * d], &row) < 1e-6);
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        let want: Vec<f64> = (0..d).map(|i| w[i] as f64 * row[i] * inv).collect();
        let got: Vec<f32> = o[t * (d + 8)..t * (d + 8) + d]
            .iter()
            .map(|h| h.to_f32())
            .collect();
        // One fp16 rounding of values below ~8: 2^-11 relative.
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(1.0))
            .fold(0.0, f64::max);
        assert!(worst < 1e-3, "row {t}: {worst}");
    }
}

/// The norm summing a MoE step's deferred combine into the residual gives
/// the same bits as `combine_rows_f32` followed by the norm adding its rows
/// (residual and fp16 output), in both block shapes and in the looped path
/// (d past the registers), with dropped slots (-1), slots past the experts'
/// rows, tokens with no slot, and 2 to 8 slots a token.
#[test]
#[ignore = "needs a CUDA GPU"]
fn add_rmsnorm_combine_equals_combine_then_norm() {
    use crate::prefill::{combine_rows_f32, DeferredCombine};
    let gpu = Gpu::new(0).unwrap();
    let mut r = rng();
    for (n, d, topk) in [
        (3usize, 4096usize, 2usize),
        (kernels::NORM_ROWS_MIN + 3, 4096, 8),
        (40, 4200, 2),
    ] {
        let ys_rows = n * topk;
        let ys = gpu.upload(&halves(&mut r, ys_rows * d, 4.0)).unwrap();
        let slot: Vec<i32> = (0..n * topk)
            .map(|i| match (i / topk, r.gen_range(0..10)) {
                (1, _) => -1, // token 1: no slot
                (_, 0) => -1,
                (_, 1) => (ys_rows + 2) as i32,
                _ => r.gen_range(0..ys_rows as i32),
            })
            .collect();
        let wts: Vec<f32> = (0..n * topk).map(|_| r.gen_range(0.0..1.0)).collect();
        let (slot, wts) = (gpu.upload(&slot).unwrap(), gpu.upload(&wts).unwrap());
        let resid0: Vec<f32> = (0..n * d).map(|_| r.gen_range(-2.0..2.0)).collect();
        let w = gpu
            .upload(&(0..d).map(|_| r.gen_range(0.5..1.5)).collect::<Vec<f32>>())
            .unwrap();
        let run = |fused: bool| {
            let mut resid = gpu.upload(&resid0).unwrap();
            let mut out = gpu.alloc::<f16>(n * d).unwrap();
            let add = if fused {
                let c = DeferredCombine::new(&ys, &slot, &wts, topk, n, d).unwrap();
                kernels::add_rmsnorm(
                    &gpu,
                    &mut resid,
                    kernels::NormAdd::Combine(c),
                    &w,
                    1e-5,
                    n,
                    d,
                    &mut out,
                    d,
                    true,
                )
            } else {
                let mut acc = gpu.alloc::<f32>(n * d).unwrap();
                combine_rows_f32(&gpu, &ys, &slot, &wts, topk, n, d, &mut acc).unwrap();
                kernels::add_rmsnorm(
                    &gpu,
                    &mut resid,
                    kernels::NormAdd::Rows(&acc),
                    &w,
                    1e-5,
                    n,
                    d,
                    &mut out,
                    d,
                    true,
                )
            };
            add.unwrap();
            let res: Vec<u32> = gpu
                .download(&resid)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let o: Vec<u16> = gpu
                .download(&out)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (res, o)
        };
        let (a, b) = (run(true), run(false));
        assert!(
            a.0.iter().all(|&x| f32::from_bits(x).is_finite()),
            "n={n} d={d}: non-finite residual"
        );
        let diff = |x: &[u32], y: &[u32]| x.iter().zip(y).filter(|(p, q)| p != q).count();
        assert_eq!(
            diff(&a.0, &b.0),
            0,
            "n={n} d={d} top-{topk}: residuals differ"
        );
        let diff16 = a.1.iter().zip(&b.1).filter(|(p, q)| p != q).count();
        assert_eq!(diff16, 0, "n={n} d={d} top-{topk}: outputs differ");
        // The residual moved: the combine was added.
        assert!(
            a.0.iter()
                .zip(&resid0)
                .any(|(&x, &y)| f32::from_bits(x) != y),
            "n={n}: nothing added"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn argmax_takes_the_lowest_index_on_ties_and_flags_nan() {
    let gpu = Gpu::new(0).unwrap();
    let mut r = rng();
    let v = 32000;
    let mut rows: Vec<f32> = (0..3 * v).map(|_| r.gen_range(-5.0..5.0)).collect();
    rows[123] = 9.0;
    rows[31000] = 9.0; // tie in row 0: 123 wins
    rows[v + 31999] = 10.0;
    rows[2 * v + 7] = f32::NAN;
    let mut out = gpu.alloc::<i32>(3).unwrap();
    let mut host = cust::memory::LockedBuffer::new(&7i32, 3).unwrap();
    kernels::argmax_rows(
        &gpu,
        &gpu.upload(&rows).unwrap(),
        3,
        v,
        &mut out,
        Some(&mut host),
    )
    .unwrap();
    assert_eq!(gpu.download(&out).unwrap(), vec![123, 31999, -1]);
    // The page-locked copy (download synchronised the stream).
    assert_eq!(host.as_slice(), &[123, 31999, -1]);
}
