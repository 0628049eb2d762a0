//! The model kernels against CPU references (f64) on fresh random inputs.
//! GPU tests: run with `--include-ignored` on a GPU machine.

use half::f16;
use rand::{rngs::SmallRng, Rng, SeedableRng};

use super::attention::{self, AttnDims};
use super::kernels;
use crate::runtime::Gpu;

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
        norm_case(&gpu, &mut r, n, d);
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

fn norm_case(gpu: &Gpu, r: &mut SmallRng, n: usize, d: usize) {
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
        Some(&gpu.upload(&add).unwrap()),
        &gpu.upload(&w).unwrap(),
        eps,
        n,
        d,
        &mut out,
        d + 8,
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

fn attention_case(gpu: &Gpu, r: &mut SmallRng, dims: AttnDims, start: usize, t: usize) {
    let (h, kvh, hd, ms) = (dims.heads, dims.kv_heads, dims.head_dim, dims.max_seq);
    let qkvw = dims.qkv_width();
    let qkv: Vec<f32> = (0..t * qkvw).map(|_| r.gen_range(-1.0..1.0)).collect();
    // Cache: random history before `start`.
    let kc = halves(r, kvh * ms * hd, 1.0);
    let vc = halves(r, kvh * ms * hd, 1.0);
    let mut kd = gpu.upload(&kc).unwrap();
    let mut vd = gpu.upload(&vc).unwrap();
    let theta = 10000.0;
    let rope = super::weights::rope_table(hd, theta, ms);
    let mut q = gpu.alloc::<f32>(t * h * hd).unwrap();
    let mut qkv_d = gpu.upload(&qkv).unwrap();
    attention::rope_kv(
        gpu,
        &dims,
        &mut qkv_d,
        &gpu.upload(&rope).unwrap(),
        start,
        t,
        &mut q,
        &mut kd,
        &mut vd,
        true,
    )
    .unwrap();
    let (splits, _) = dims.splits(start, t);
    let mut part = gpu
        .alloc::<f32>(attention::attn_part_len(t, h, hd, splits))
        .unwrap();
    let mut out = gpu.alloc::<f16>(t * h * hd).unwrap();
    attention::attention(gpu, &dims, &q, &kd, &vd, start, t, &mut part, &mut out).unwrap();
    // rope_kv consumes q|k|v: the rows are left zero.
    assert!(gpu.download(&qkv_d).unwrap().iter().all(|&v| v == 0.0));
    let qg = gpu.download(&q).unwrap();
    let kg = gpu.download(&kd).unwrap();
    let vg = gpu.download(&vd).unwrap();
    let og = gpu.download(&out).unwrap();
    if t == 1 {
        // Decode with RoPE fused into attention (its splits merged by
        // attn_combine, then in a cluster where one applies): the same bits
        // as rope_kv then attention (output, cache), and the row left zero.
        for cluster in [false, true] {
            let d = fused_decode(gpu, &dims, (&qkv, &kc, &vc, &rope), start, cluster);
            let same = og
                .iter()
                .zip(&d.out)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            assert_eq!(
                same,
                og.len(),
                "{dims:?} start={start} cluster={cluster}: fused RoPE output differs"
            );
            assert!(
                d.k == kg,
                "{dims:?} start={start} cluster={cluster}: k cache"
            );
            assert!(
                d.v == vg,
                "{dims:?} start={start} cluster={cluster}: v cache"
            );
            assert!(d.qkv.iter().all(|&v| v == 0.0));
        }
    }
    // RoPE of q against the f64 rotation of the same table.
    let half = hd / 2;
    for ti in 0..t {
        let pos = start + ti;
        for hh in 0..h {
            for j in 0..half {
                let (c, s) = (
                    rope[(pos * half + j) * 2] as f64,
                    rope[(pos * half + j) * 2 + 1] as f64,
                );
                let x1 = qkv[ti * qkvw + hh * hd + j] as f64;
                let x2 = qkv[ti * qkvw + hh * hd + j + half] as f64;
                let g1 = qg[ti * h * hd + hh * hd + j] as f64;
                let g2 = qg[ti * h * hd + hh * hd + j + half] as f64;
                assert!((g1 - (x1 * c - x2 * s)).abs() < 1e-5);
                assert!((g2 - (x2 * c + x1 * s)).abs() < 1e-5);
            }
        }
        // The new v rows are in the cache.
        for kh in 0..kvh {
            for j in 0..hd {
                let want = f16::from_f32(qkv[ti * qkvw + (h + kvh) * hd + kh * hd + j]);
                assert_eq!(vg[(kh * ms + pos) * hd + j], want);
            }
        }
    }
    // Attention in f64 over the cache the GPU holds.
    let scale = (hd as f64).powf(-0.5);
    let mut worst = 0.0f64;
    for ti in 0..t {
        let pos = start + ti;
        let lo = if dims.window > 0 {
            (pos + 1).saturating_sub(dims.window)
        } else {
            0
        };
        for hh in 0..h {
            let kh = hh / (h / kvh);
            let qrow = &qg[ti * h * hd + hh * hd..ti * h * hd + (hh + 1) * hd];
            let sc: Vec<f64> = (lo..=pos)
                .map(|j| {
                    (0..hd)
                        .map(|d| qrow[d] as f64 * kg[(kh * ms + j) * hd + d].to_f64())
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ex: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = ex.iter().sum();
            for d in 0..hd {
                let want: f64 = (lo..=pos)
                    .zip(&ex)
                    .map(|(j, p)| p / sum * vg[(kh * ms + j) * hd + d].to_f64())
                    .sum();
                let got = og[ti * h * hd + hh * hd + d].to_f64();
                assert!(got.is_finite());
                worst = worst.max((got - want).abs());
            }
        }
    }
    // Outputs are below 1 in magnitude: fp16 rounding (2^-11) plus fast exp.
    assert!(
        worst < 2e-3,
        "{dims:?} start={start} t={t} splits={splits}: max diff {worst}"
    );
}

/// What one fused-RoPE decode step leaves: the output, the k and v caches,
/// the q|k|v row.
struct Decoded {
    out: Vec<f16>,
    k: Vec<f16>,
    v: Vec<f16>,
    qkv: Vec<f32>,
}

/// One fused-RoPE decode step at `start` on fresh copies of `(qkv, k
/// cache, v cache, rope table)`, its splits merged in a cluster (where
/// `attention::decode_cluster` says one applies) or by attn_combine. The
/// output starts as NaN.
fn fused_decode(
    gpu: &Gpu,
    dims: &AttnDims,
    (qkv, kc, vc, rope): (&[f32], &[f16], &[f16], &[f32]),
    start: usize,
    cluster: bool,
) -> Decoded {
    let (h, hd) = (dims.heads, dims.head_dim);
    let (splits, _) = dims.splits(start, 1);
    let mut kd = gpu.upload(kc).unwrap();
    let mut vd = gpu.upload(vc).unwrap();
    let mut qkv_d = gpu.upload(qkv).unwrap();
    let part_len = attention::attn_part_len(1, h, hd, splits).max(1);
    let mut part = gpu.upload(&vec![f32::NAN; part_len]).unwrap();
    let mut out = gpu.upload(&vec![f16::NAN; h * hd]).unwrap();
    attention::rope_attention_decode(
        gpu,
        dims,
        &mut qkv_d,
        &gpu.upload(rope).unwrap(),
        start,
        &mut kd,
        &mut vd,
        &mut part,
        &mut out,
        cluster,
    )
    .unwrap();
    Decoded {
        out: gpu.download(&out).unwrap(),
        k: gpu.download(&kd).unwrap(),
        v: gpu.download(&vd).unwrap(),
        qkv: gpu.download(&qkv_d).unwrap(),
    }
}

/// Decode attention with its key splits merged in a thread-block cluster
/// (attn_fwd_rope_cluster) against attn_fwd_rope then attn_combine: the
/// same bits in the output, both caches and the q|k|v row (left zero), at
/// contexts of 1 to 8 splits (the cluster path) and of 9 and 10 (beyond a
/// portable cluster: attn_combine), with and without a window.
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_attention_cluster_merge_equals_attn_combine() {
    let gpu = Gpu::new(0).unwrap();
    let mut r = rng();
    let mut clustered = 0;
    // Mixtral's shape; hd 256 (4 outputs per thread at 2 splits); 16 heads
    // a group (512 threads); odd sizes; hd 8 (fewer outputs than threads).
    for (heads, kv_heads, head_dim) in [
        (32, 8, 128),
        (8, 2, 256),
        (16, 1, 64),
        (6, 6, 34),
        (8, 2, 8),
    ] {
        let ms = 320;
        let dims = AttnDims {
            heads,
            kv_heads,
            head_dim,
            max_seq: ms,
            window: 0,
        };
        let (kvh, hd) = (kv_heads, head_dim);
        let kc = halves(&mut r, kvh * ms * hd, 1.0);
        let vc = halves(&mut r, kvh * ms * hd, 1.0);
        let rope = super::weights::rope_table(hd, 10000.0, ms);
        let cases = [
            (0, 0),   // 1 split of 1 key (no cluster)
            (31, 0),  // 1 split of 32
            (32, 0),  // 2 splits of 17 and 16
            (64, 0),  // 3
            (99, 0),  // 4
            (128, 0), // 5: a 128-token prompt's first decode token
            (160, 0), // 6
            (199, 0), // 7
            (255, 0), // 8, full
            (230, 0), // 8, last split short
            (256, 0), // 9: attn_combine
            (299, 0), // 10: attn_combine
            (250, 100),
            (319, 200),
        ];
        for (start, window) in cases {
            let dims = AttnDims { window, ..dims };
            let qkv: Vec<f32> = (0..dims.qkv_width())
                .map(|_| r.gen_range(-1.0..1.0))
                .collect();
            let (splits, _) = dims.splits(start, 1);
            let on = attention::decode_cluster(&gpu, &dims, splits);
            if gpu.info().cubin && (2..=attention::ATTN_CLUSTER_MAX).contains(&splits) {
                // Every shape here fits a cluster's shared memory.
                assert!(on, "{dims:?} start={start}: {splits} splits not clustered");
            } else {
                assert!(!on, "{dims:?} start={start}: {splits} splits clustered");
            }
            clustered += on as usize;
            let inputs = (&qkv[..], &kc[..], &vc[..], &rope[..]);
            let old = fused_decode(&gpu, &dims, inputs, start, false);
            let new = fused_decode(&gpu, &dims, inputs, start, true);
            let what = format!("{dims:?} start={start} splits={splits} cluster={on}");
            assert!(old.out.iter().all(|v| v.is_finite()), "{what}: output");
            let differ = old
                .out
                .iter()
                .zip(&new.out)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(differ, 0, "{what}: outputs differ");
            assert!(new.k == old.k, "{what}: k cache");
            assert!(new.v == old.v, "{what}: v cache");
            assert!(old.qkv.iter().all(|&v| v == 0.0), "{what}: row (old)");
            assert!(new.qkv.iter().all(|&v| v.to_bits() == 0), "{what}: row");
            // The new key and value reached the cache.
            assert!(new.k != kc && new.v != vc, "{what}: cache unchanged");
        }
    }
    if gpu.info().cubin {
        assert_eq!(clustered, 5 * 10, "cluster launches");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_matches_f64_reference_decode_prefill_window() {
    let gpu = Gpu::new(0).unwrap();
    let mut r = rng();
    for (heads, kv_heads, head_dim) in [(8, 2, 64), (8, 2, 8), (32, 8, 128), (6, 6, 34)] {
        let dims = AttnDims {
            heads,
            kv_heads,
            head_dim,
            max_seq: 300,
            window: 0,
        };
        attention_case(&gpu, &mut r, dims, 0, 1);
        attention_case(&gpu, &mut r, dims, 0, 19);
        attention_case(&gpu, &mut r, dims, 150, 7);
        attention_case(&gpu, &mut r, dims, 299, 1); // splits > 1
        attention_case(&gpu, &mut r, dims, 63, 1);
        attention_case(&gpu, &mut r, AttnDims { window: 40, ..dims }, 200, 1);
        attention_case(&gpu, &mut r, AttnDims { window: 40, ..dims }, 100, 9);
        // Tensor-core prefill (hd 64 and 128): partial query tiles, a
        // history before the chunk, the window cutting the key range.
        attention_case(&gpu, &mut r, dims, 0, 64);
        attention_case(&gpu, &mut r, dims, 37, 130);
        attention_case(&gpu, &mut r, AttnDims { window: 40, ..dims }, 150, 100);
        attention_case(&gpu, &mut r, AttnDims { window: 70, ..dims }, 0, 200);
    }
    // The tensor-core prefill over more query tiles: an odd chunk after a
    // history with the window cutting key tiles, and a chunk from 0.
    for (heads, kv_heads, head_dim) in [(8, 2, 64), (32, 8, 128)] {
        let dims = AttnDims {
            heads,
            kv_heads,
            head_dim,
            max_seq: 512,
            window: 100,
        };
        attention_case(&gpu, &mut r, dims, 77, 333);
        attention_case(&gpu, &mut r, AttnDims { window: 0, ..dims }, 0, 300);
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

#[test]
fn attention_shapes_are_checked_before_launch() {
    let ok = AttnDims {
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        max_seq: 4096,
        window: 0,
    };
    assert!(ok.check("t").is_ok());
    for bad in [
        AttnDims { kv_heads: 3, ..ok },
        AttnDims {
            head_dim: 127,
            ..ok
        },
        AttnDims {
            head_dim: 512,
            ..ok
        },
        AttnDims {
            heads: 32 * 17,
            kv_heads: 1,
            ..ok
        },
        AttnDims { max_seq: 0, ..ok },
    ] {
        assert!(bad.check("t").is_err(), "{bad:?}");
    }
    assert_eq!(attention::attn_splits(1, 1), 1);
    assert_eq!(attention::attn_splits(1, 32), 1);
    assert_eq!(
        attention::attn_splits(1, 65),
        65usize.div_ceil(attention::attn_split_keys())
    );
    assert_eq!(attention::attn_splits(7, 1000), 1);
    assert_eq!(attention::attn_splits(1, 100_000), 32);
    assert_eq!(attention::attn_splits(7, 100_000), 1);
}

/// Prefill at Mixtral width (2 layers, a 2,048-token vocabulary, random
/// weights, experts in the decode packing only): a 600-token chunk (the
/// packed tensor-core GEMMs, q|k|v and o stored: at least
/// `PROJ_STORE_MIN_TOKENS`) and 100-token chunks (the GEMMs adding k
/// slices into zeroed q|k|v and the residual) against chunks of 16 (the
/// GEMV and decode kernels). Tokens whose experts are the same in both
/// (fp16 rounding moves near-ties of the router) must agree within 5e-3 of
/// the largest |logit|; at least 90 % must have the same choices.
#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_on_the_packing_equals_the_gemv_path() {
    use super::{ExpertLayout, GpuModel, ModelOptions, ModelShape, Output};
    use wdmoe_core::select::Policy;
    let gpu = std::sync::Arc::new(Gpu::new(0).unwrap());
    if !gpu.info().cubin {
        eprintln!("skipping: the packed GEMM needs compute capability 9.0");
        return;
    }
    let mut r = rng();
    let seed = r.gen::<u64>();
    let shape = ModelShape {
        layers: 2,
        vocab: 2048,
        ..ModelShape::mixtral_8x7b()
    };
    let n = 600;
    assert!(n >= super::kernels::PROJ_STORE_MIN_TOKENS);
    let run = |chunk: usize, tokens: &[u32]| {
        let opts = ModelOptions {
            max_seq: n + 8,
            layout: ExpertLayout::DecodeOnly,
            prefill_chunk: chunk,
        };
        let mut m = GpuModel::random(gpu.clone(), shape, opts, seed, &mut |_, _| {}).unwrap();
        let e = shape.experts;
        let lat = vec![0.01; tokens.len() * shape.layers * e];
        let policy = Policy::new(2, 0.0, 1).unwrap();
        m.forward(tokens, Output::AllLogits, &policy, &lat).unwrap()
    };
    let tokens: Vec<u32> = (0..n).map(|_| r.gen_range(0..2048)).collect();
    let small = run(16, &tokens);
    let v = shape.vocab;
    let scale = small.logits.iter().fold(0f32, |a, &b| a.max(b.abs())) as f64;
    assert!(scale > 0.0);
    for chunk in [n, 100] {
        let big = run(chunk, &tokens);
        assert!(big.logits.iter().all(|x| x.is_finite()));
        let mut same = 0;
        let mut worst = 0f64;
        for t in 0..n {
            let agree = (0..shape.layers).all(|l| {
                big.layers[l].selections[t].experts() == small.layers[l].selections[t].experts()
            });
            if !agree {
                continue;
            }
            same += 1;
            let a = &big.logits[t * v..(t + 1) * v];
            let b: Vec<f64> = small.logits[t * v..(t + 1) * v]
                .iter()
                .map(|&x| x as f64)
                .collect();
            worst = worst.max(max_diff(a, &b) / scale);
        }
        eprintln!(
            "packed prefill in {chunk}-token chunks vs the GEMV path: {same}/{n} tokens with equal choices, worst {worst:.2e} of the largest |logit|; GPU {:.2} ms vs {:.2} ms",
            big.gpu_time_s * 1e3,
            small.gpu_time_s * 1e3
        );
        assert!(
            same * 10 >= n * 9,
            "{chunk}-token chunks: {same} of {n} tokens kept their experts"
        );
        assert!(worst <= 5e-3, "{chunk}-token chunks: {worst:.3e}");
    }
}

/// lm_head on its decode packing (the packed GEMM, for chunks of more than
/// 16 rows; up to 16 rows run row-major either way) against the row-major
/// GEMV, on the same model and tokens (1 layer at Mixtral width, a
/// 4,096-token vocabulary, random weights): logits within 1e-3 of the
/// largest |logit| (fp32 sums of fp16 products in another order), every
/// one finite, and the same greedy token.
#[test]
#[ignore = "needs a CUDA GPU"]
fn lm_head_on_its_packing_equals_row_major() {
    use super::{ExpertLayout, GpuModel, ModelOptions, ModelShape, Output};
    use wdmoe_core::select::Policy;
    let gpu = std::sync::Arc::new(Gpu::new(0).unwrap());
    if !gpu.info().cubin {
        eprintln!("skipping: the packing needs compute capability 9.0");
        return;
    }
    let mut r = rng();
    let shape = ModelShape {
        layers: 1,
        vocab: 4096,
        ..ModelShape::mixtral_8x7b()
    };
    let opts = ModelOptions {
        max_seq: 128,
        layout: ExpertLayout::DecodeOnly,
        prefill_chunk: 64,
    };
    let mut m = GpuModel::random(gpu.clone(), shape, opts, r.gen(), &mut |_, _| {}).unwrap();
    assert!(
        m.head_p.is_some(),
        "Mixtral width with 4,096 rows is packable"
    );
    let policy = Policy::new(2, 0.0, 1).unwrap();
    let v = shape.vocab;
    for n in [1usize, 16, 17, 40, 64] {
        let tokens: Vec<u32> = (0..n).map(|_| r.gen_range(0..v as u32)).collect();
        let lat = vec![0.01; n * shape.experts];
        let mut run = |packed: bool, out: Output| {
            m.set_packed_head(packed);
            m.truncate(0);
            m.forward(&tokens, out, &policy, &lat).unwrap()
        };
        let (a, b) = (run(true, Output::AllLogits), run(false, Output::AllLogits));
        assert_eq!(a.logits.len(), n * v);
        assert!(
            a.logits.iter().all(|x| x.is_finite()),
            "n={n}: a non-finite logit"
        );
        let scale = b.logits.iter().fold(0f32, |s, &x| s.max(x.abs())) as f64;
        let bf: Vec<f64> = b.logits.iter().map(|&x| x as f64).collect();
        let worst = max_diff(&a.logits, &bf) / scale;
        eprintln!("lm_head packed vs row-major, {n} rows: {worst:.2e} of the largest |logit|");
        assert!(scale > 0.0 && worst <= 1e-3, "n={n}: {worst:.3e}");
        let (ga, gb) = (
            run(true, Output::LastArgmax),
            run(false, Output::LastArgmax),
        );
        let last = &b.logits[(n - 1) * v..];
        let top = last.iter().fold(f32::MIN, |s, &x| s.max(x));
        let second = last
            .iter()
            .filter(|&&x| x < top)
            .fold(f32::MIN, |s, &x| s.max(x));
        if (top - second) as f64 > 2e-3 * scale {
            assert_eq!(ga.argmax, gb.argmax, "n={n}");
        }
    }
    m.set_packed_head(true);
}

/// `decode_greedy` (each step's successor enqueued before it completes)
/// against one `forward` call per token on the same model: the same
/// tokens and the same router logits (bitwise: the same kernels on the
/// same inputs), through a step ahead discarded by a non-greedy token, a
/// truncation, a setting changed between steps, and device plans that
/// differ from wdmoe-core's (each step re-run on the host policy).
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_greedy_pipelined_equals_one_forward_per_token() {
    use super::{ExpertLayout, GpuModel, ModelOptions, ModelShape, Output};
    use wdmoe_core::select::Policy;
    let gpu = std::sync::Arc::new(Gpu::new(0).unwrap());
    let mut r = rng();
    let shape = ModelShape {
        vocab: 512,
        hidden: 256,
        intermediate: 512,
        layers: 4,
        heads: 8,
        kv_heads: 2,
        head_dim: 32,
        experts: 8,
        rms_eps: 1e-5,
        rope_theta: 1e4,
        window: None,
        tied: false,
    };
    let opts = ModelOptions {
        max_seq: 64,
        layout: ExpertLayout::DecodeOnly,
        prefill_chunk: 16,
    };
    let mut m = GpuModel::random(gpu, shape, opts, r.gen(), &mut |_, _| {}).unwrap();
    let (layers, e, v) = (shape.layers, shape.experts, shape.vocab as u32);
    let policy = Policy::new(2, 0.2, 1).unwrap();
    // Latencies that differ per position and layer, so that the policy's
    // drops depend on them (a step run with another token's latencies
    // would show).
    let lat_at = |pos: usize, l: usize, out: &mut [f64]| {
        for (j, x) in out.iter_mut().enumerate() {
            *x = 0.01 * (1.0 + ((pos * 7 + l * 3 + j * 5) % 11) as f64);
        }
    };
    let prompt: Vec<u32> = (0..9).map(|_| r.gen_range(0..v)).collect();
    // Tokens fed at steps 5 and 11 instead of the argmax (the step ahead
    // is discarded); a truncation back to position 14 after step 8.
    let forced = [(5usize, 3u32), (11, 100)];
    let run = |m: &mut GpuModel, pipelined: bool| {
        m.truncate(0);
        let n = prompt.len();
        let mut plat = vec![0.0; n * layers * e];
        for t in 0..n {
            for l in 0..layers {
                lat_at(
                    t,
                    l,
                    &mut plat[(t * layers + l) * e..(t * layers + l + 1) * e],
                );
            }
        }
        let out = m
            .forward(&prompt, Output::LastArgmax, &policy, &plat)
            .unwrap();
        let mut id = out.argmax.unwrap();
        let mut ids = Vec::new();
        let mut logits = Vec::new();
        for step in 0..16 {
            if let Some(&(_, t)) = forced.iter().find(|f| f.0 == step) {
                id = t;
            }
            if step == 9 {
                m.truncate(14);
            }
            if step == 13 {
                m.set_moe_timing(true);
            }
            let pos = m.len();
            let out = if pipelined {
                m.decode_greedy(id, &policy, &mut |p, l, o| {
                    lat_at(p, l, o);
                    Ok(())
                })
                .unwrap()
            } else {
                let mut lat = vec![0.0; layers * e];
                for l in 0..layers {
                    lat_at(pos, l, &mut lat[l * e..(l + 1) * e]);
                }
                m.forward(&[id], Output::LastArgmax, &policy, &lat).unwrap()
            };
            assert_eq!(out.start, pos);
            assert!(out.gpu_time_s > 0.0);
            for lr in &out.layers {
                logits.extend_from_slice(&lr.logits);
            }
            id = out.argmax.unwrap();
            ids.push(id);
        }
        m.set_moe_timing(false);
        (ids, logits)
    };
    let (ids_a, lg_a) = run(&mut m, false);
    let (ids_b, lg_b) = run(&mut m, true);
    assert_eq!(ids_a, ids_b);
    let differ = lg_a
        .iter()
        .zip(&lg_b)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    eprintln!(
        "decode_greedy vs forward: {} tokens equal, {differ} of {} router logits differ",
        ids_a.len(),
        lg_a.len()
    );
    assert_eq!(lg_a.len(), lg_b.len());
    assert_eq!(differ, 0);
    // Device plans that differ from wdmoe-core's: every step re-runs.
    m.skew_device_policy(true);
    let (ids_c, _) = run(&mut m, true);
    m.skew_device_policy(false);
    assert_eq!(ids_a, ids_c, "re-run steps");
}
