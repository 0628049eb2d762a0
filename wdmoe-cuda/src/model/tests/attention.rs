//! The attention kernels (decode with RoPE fused and its splits merged
//! in a cluster or by attn_combine; prefill on tensor cores) against f64
//! references and against each other.

use half::f16;
use rand::{rngs::SmallRng, Rng};

use super::{halves, rng};
use crate::model::attention::{self, AttnDims};
use crate::runtime::Gpu;

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
    let rope = crate::model::weights::rope_table(hd, theta, ms);
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
    attention::attention(
        gpu, &dims, &q, None, &kd, &vd, start, t, &mut part, &mut out,
    )
    .unwrap();
    // rope_kv consumes q|k|v: the rows are left zero.
    assert!(gpu.download(&qkv_d).unwrap().iter().all(|&v| v == 0.0));
    let qg = gpu.download(&q).unwrap();
    let kg = gpu.download(&kd).unwrap();
    let vg = gpu.download(&vd).unwrap();
    let og = gpu.download(&out).unwrap();
    // The unrotated queries, rotated by the prefill kernel as it loads
    // them: the same bits; elsewhere an error.
    let q_raw: Vec<f32> = (0..t)
        .flat_map(|ti| qkv[ti * qkvw..ti * qkvw + h * hd].iter().copied())
        .collect();
    let q_raw = gpu.upload(&q_raw).unwrap();
    let rope_d = gpu.upload(&rope).unwrap();
    let mut out2 = gpu.upload(&vec![f16::NAN; t * h * hd]).unwrap();
    let r2 = attention::attention(
        gpu,
        &dims,
        &q_raw,
        Some(&rope_d),
        &kd,
        &vd,
        start,
        t,
        &mut part,
        &mut out2,
    );
    if attention::prefill_attention_kernel(t, hd).is_some() {
        r2.unwrap();
        let o2 = gpu.download(&out2).unwrap();
        let differ = og
            .iter()
            .zip(&o2)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "{dims:?} start={start} t={t}: q rotated on load");
    } else {
        assert!(
            r2.is_err(),
            "{dims:?} t={t}: rotation on load without the prefill kernel"
        );
    }
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
        let rope = crate::model::weights::rope_table(hd, 10000.0, ms);
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

/// The q|k|v GEMM with RoPE and the cache write in its epilogue
/// (`gemm_packed_qkv_rope`, every tile width) gives the same bits as the
/// stored projection (`gemm_packed_f32`) then `rope_kv`: the whole cache
/// (random history before `start` kept, positions past the chunk
/// untouched), and q as projected (not rotated: the prefill attention
/// rotates it as it loads it, `attention_case` checks that). 4 q heads and 2 kv heads of 128 (hd 128: one head per row
/// block), k = 192, at odd token counts (a partial 32-token batch, partial
/// token tiles of each width) and positions that start mid-cache.
#[test]
#[ignore = "needs a CUDA GPU"]
fn qkv_rope_epilogue_equals_projection_then_rope_kv() {
    use crate::ffn::PackedMatrix;
    let gpu = Gpu::new(0).unwrap();
    if !gpu.info().cubin {
        eprintln!("skipping: the packed GEMM needs compute capability 9.0");
        return;
    }
    let mut r = rng();
    let (h, kvh, hd, ms, k) = (4usize, 2usize, 128usize, 700usize, 192usize);
    let dims = AttnDims {
        heads: h,
        kv_heads: kvh,
        head_dim: hd,
        max_seq: ms,
        window: 0,
    };
    let n = dims.qkv_width();
    let w = halves(&mut r, n * k, 1.0 / (k as f32).sqrt());
    let wd = gpu.upload(&w).unwrap();
    let wp = PackedMatrix::pack(&gpu, &wd, n, k).unwrap();
    let rope = gpu
        .upload(&crate::model::weights::rope_table(hd, 1e6, ms))
        .unwrap();
    for (t, start) in [(1usize, 0usize), (45, 3), (300, 17), (531, 101)] {
        let x = gpu.upload(&halves(&mut r, t * k, 1.0)).unwrap();
        let kc = halves(&mut r, kvh * ms * hd, 1.0);
        let vc = halves(&mut r, kvh * ms * hd, 1.0);
        // The reference: stored projection, then rope_kv.
        let mut qkv = gpu.alloc::<f32>(t * n).unwrap();
        crate::prefill::gemm_packed_f32(&gpu, &wp, &x, t, &mut qkv, n, false, None).unwrap();
        let q_proj: Vec<f32> = {
            let all = gpu.download(&qkv).unwrap();
            (0..t)
                .flat_map(|ti| all[ti * n..ti * n + h * hd].to_vec())
                .collect()
        };
        let (mut q0, mut k0, mut v0) = (
            gpu.alloc::<f32>(t * h * hd).unwrap(),
            gpu.upload(&kc).unwrap(),
            gpu.upload(&vc).unwrap(),
        );
        attention::rope_kv(
            &gpu, &dims, &mut qkv, &rope, start, t, &mut q0, &mut k0, &mut v0, false,
        )
        .unwrap();
        // q as projected: the first heads x hd of each stored row (read
        // before rope_kv consumed them).
        let want = (
            q_proj,
            gpu.download(&k0).unwrap(),
            gpu.download(&v0).unwrap(),
        );
        for bn in [None, Some(32), Some(64), Some(128), Some(256)] {
            let mut q1 = gpu.upload(&vec![f32::NAN; t * h * hd]).unwrap();
            let (mut k1, mut v1) = (gpu.upload(&kc).unwrap(), gpu.upload(&vc).unwrap());
            crate::prefill::gemm_packed_qkv_rope(
                &gpu,
                &wp,
                &x,
                t,
                &rope,
                start,
                (h, kvh, ms),
                &mut q1,
                &mut k1,
                &mut v1,
                bn,
            )
            .unwrap();
            let q = gpu.download(&q1).unwrap();
            let kk = gpu.download(&k1).unwrap();
            let vv = gpu.download(&v1).unwrap();
            let diff_q = q
                .iter()
                .zip(&want.0)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            let diff_k = kk
                .iter()
                .zip(&want.1)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            let diff_v = vv
                .iter()
                .zip(&want.2)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            eprintln!("qkv rope T={t} start={start} bn={bn:?}: q {diff_q}, k {diff_k}, v {diff_v} of {}, {}, {} differ", q.len(), kk.len(), vv.len());
            assert!(
                q.iter().all(|v| v.is_finite()),
                "T={t} bn={bn:?}: q not all written"
            );
            assert_eq!(
                (diff_q, diff_k, diff_v),
                (0, 0, 0),
                "T={t} start={start} bn={bn:?}"
            );
        }
    }
    // Shapes it cannot take are errors before any launch.
    let x = gpu.upload(&halves(&mut r, 8 * k, 1.0)).unwrap();
    let mut q = gpu.alloc::<f32>(8 * h * hd).unwrap();
    let (mut kd, mut vd) = (
        gpu.alloc::<f16>(kvh * ms * hd).unwrap(),
        gpu.alloc::<f16>(kvh * ms * hd).unwrap(),
    );
    for (t, start, heads) in [
        (8usize, ms - 7, (h, kvh, ms)),
        (8, 0, (h + 1, kvh, ms)),
        (0, 0, (h, kvh, ms)),
    ] {
        let e = crate::prefill::gemm_packed_qkv_rope(
            &gpu, &wp, &x, t, &rope, start, heads, &mut q, &mut kd, &mut vd, None,
        );
        assert!(e.is_err(), "T={t} at {start} with {heads:?}: {e:?}");
    }
}
