//! GPU tests of wdmoe-cuda: every kernel against an f64 CPU reference on
//! fresh random inputs (seed printed), outputs poisoned with NaN before each
//! run. They need a CUDA GPU, so they are ignored by default; run them with
//! `--include-ignored` on a GPU machine (wdmoe-cuda/gpu-build.sh prints how).
//!
//! Error bound: fp16 inputs and weights, fp32 accumulation, the intermediate
//! h rounded to fp16 once, the output rounded to fp16: relative error
//! ‖out − ref‖/‖ref‖ ≤ 2e-3 (about 4x the fp16 unit roundoff 4.9e-4).

mod common;
// The device-planned MoE step (router_policy and the slot kernels).
#[path = "gpu/planned.rs"]
mod planned;

use common::*;
use wdmoe_cuda::f16;
use wdmoe_cuda::{
    combine_rows, ffn_decode, ffn_decode_combine, ffn_grouped, ffn_prefill, gather_rows,
    DecodeConfig, DownLayout, Error, ExpertFfn, ExpertWeights, FfnWorkspace, GemmConfig, Gpu,
    KernelConfig, PrefillConfig, PrefillWeights, PrefillWorkspace, Router, RoutingPlan,
};

fn check_ffn(gpu: &Gpu, e: &Expert, t: usize, cfg: &DecodeConfig, seed: u64) -> f64 {
    let (m, m_h) = (e.w.m(), e.w.m_h());
    let x = rand_dev(gpu, t * m, seed, 1.0);
    let mut out = gpu.alloc::<f16>(t * m).unwrap();
    gpu.fill_u16(&mut out, NAN16).unwrap();
    let mut ws = FfnWorkspace::new(gpu, m, m_h).unwrap();
    ffn_decode(gpu, &e.w, &x, t, &mut out, &mut ws, cfg).unwrap();
    let got = host(gpu, &out);
    let reference = ffn_ref(&e.w1, &e.w3, &e.w2, &host(gpu, &x), m, m_h, t);
    let err = rel_err(&got, &reference);
    eprintln!("m={m} m_h={m_h} T={t} cfg={cfg:?}: rel err {err:.2e}");
    assert!(
        err <= BOUND,
        "rel err {err:.3e} > {BOUND} (m={m} m_h={m_h} T={t} {cfg:?})"
    );
    err
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ffn_decode_mixtral_sizes() {
    let gpu = gpu();
    let s = seed();
    let cfg = DecodeConfig::auto(gpu.info(), 4096, 14336);
    for k_major in [false, true] {
        let e = expert_opts(&gpu, 4096, 14336, s, k_major);
        for t in [1, 2, 5, 8, 9, 16, 17] {
            check_ffn(&gpu, &e, t, &cfg, s.wrapping_add(t as u64));
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ffn_decode_odd_sizes_and_configs() {
    let gpu = gpu();
    let s = seed();
    for (m, m_h, k_major) in [
        (16, 16, false),
        (80, 208, false),
        (80, 208, true),
        (1024, 2816, false),
        (1024, 2816, true),
        (4096, 1024, true),
    ] {
        let e = expert_opts(&gpu, m, m_h, s ^ (m * 31 + m_h) as u64, k_major);
        eprintln!("k_major {k_major}");
        let auto = DecodeConfig::auto(gpu.info(), m, m_h);
        let mut cfgs = vec![auto];
        for (warps, splits, unroll, rows) in [
            (1, 1, 4, 1),
            (8, 1, 8, 1),
            (3, 5, 4, 1),
            (4, 16, 8, 1),
            (8, 3, 8, 1),
            (4, 1, 2, 2),
            (3, 5, 2, 2),
            (8, 16, 2, 2),
        ] {
            let k = KernelConfig {
                warps,
                splits,
                unroll,
                rows,
            };
            cfgs.push(DecodeConfig::uniform(k));
        }
        for (i, cfg) in cfgs.iter().enumerate() {
            for t in [1, 3, 7, 13, 16, 33] {
                check_ffn(&gpu, &e, t, cfg, s.wrapping_add((i * 100 + t) as u64));
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ffn_decode_combine_accumulates_weighted() {
    let gpu = gpu();
    let s = seed();
    let (m, m_h, n) = (1024, 2816, 11);
    let experts: Vec<Expert> = (0..3)
        .map(|i| expert(&gpu, m, m_h, s ^ (i * 7919)))
        .collect();
    let x = rand_dev(&gpu, n * m, s ^ 77, 1.0);
    let xh = host(&gpu, &x);
    // groups: expert 0 gets tokens {0,2,..}, expert 1 all 11 (chunks of 16 not needed), expert 2 none.
    let groups: Vec<Vec<(usize, f32)>> = vec![
        (0..n)
            .step_by(2)
            .map(|t| (t, 0.25 + t as f32 * 0.01))
            .collect(),
        (0..n).rev().map(|t| (t, 0.5)).collect(),
        vec![],
    ];
    let plan = RoutingPlan::new(n, &groups).unwrap();
    let init: Vec<f32> = (0..n * m)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
        .collect();
    let mut acc = gpu.upload(&init).unwrap();
    let cfg = DecodeConfig::auto(gpu.info(), m, m_h);
    let mut ws = FfnWorkspace::new(&gpu, m, m_h).unwrap();
    for (g, e) in experts.iter().enumerate() {
        ffn_decode_combine(&gpu, &e.w, &x, &plan, g, &mut acc, &mut ws, &cfg).unwrap();
    }
    let got: Vec<f64> = gpu
        .download(&acc)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut reference: Vec<f64> = init.iter().map(|&v| v as f64).collect();
    for (g, e) in experts.iter().enumerate() {
        let y = ffn_ref(&e.w1, &e.w3, &e.w2, &xh, m, m_h, n);
        for &(t, wt) in &groups[g] {
            for i in 0..m {
                reference[t * m + i] += wt as f64 * y[t * m + i];
            }
        }
    }
    let err = rel_err(&got, &reference);
    eprintln!("combine: rel err {err:.2e}");
    assert!(err <= BOUND);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn router_matches_cpu() {
    let gpu = gpu();
    let s = seed();
    // From 1,024 tokens with at most 8 experts 8 tokens per block on tensor
    // cores (router_softmax_rows): 1,027 and 1,100 (partial blocks of 8), and 33
    // experts at 1,030 tokens (one block per token still); below, one
    // block per token (67, 300).
    for (m, e, t) in [
        (4096, 8, 1),
        (4096, 8, 16),
        (64, 3, 5),
        (1024, 33, 7),
        (4096, 8, 67),
        (1024, 5, 300),
        (4096, 8, 1027),
        (1024, 5, 1100),
        (1024, 33, 1030),
    ] {
        let gdev = rand_dev(&gpu, e * m, s ^ 5, 1.0 / (m as f32).sqrt());
        let gh = gpu.download(&gdev).unwrap();
        let router = Router::from_host(&gpu, &gh, e, m).unwrap();
        let x = rand_dev(&gpu, t * m, s ^ 6, 1.0);
        let mut logits = gpu.upload(&vec![f32::NAN; t * e]).unwrap();
        let mut probs = gpu.upload(&vec![f32::NAN; t * e]).unwrap();
        router.route(&gpu, &x, t, &mut logits, &mut probs).unwrap();
        let l: Vec<f64> = gpu
            .download(&logits)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let p: Vec<f64> = gpu
            .download(&probs)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let gf: Vec<f64> = gh.iter().map(|v| v.to_f64()).collect();
        let lr = matmul_t(&gf, &host(&gpu, &x), e, m, t);
        let mut pr = lr.clone();
        for row in pr.chunks_mut(e) {
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            row.iter_mut().for_each(|v| *v = (*v - mx).exp() / sum);
        }
        let el = rel_err(&l, &lr);
        let ep = rel_err(&p, &pr);
        eprintln!("router m={m} e={e} t={t}: logits {el:.2e} probs {ep:.2e}");
        assert!(el <= 1e-4 && ep <= 1e-4, "router error {el} {ep}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    let s = seed();
    let (m, m_h) = (64, 128);
    let d = rand_dev(&gpu, m * m_h, s, 0.1);
    // Unsupported dimension (not a multiple of 16).
    let odd = rand_dev(&gpu, 24 * 40, s, 0.1);
    assert!(matches!(
        ExpertWeights::pack(&gpu, &odd, &odd, &odd, 24, 40),
        Err(Error::Unsupported { .. })
    ));
    // Wrong lengths.
    assert!(matches!(
        ExpertWeights::pack(&gpu, &d, &d, &odd, m, m_h),
        Err(Error::Shape { .. })
    ));
    let w = ExpertWeights::pack(&gpu, &d, &d, &d, m, m_h).unwrap();
    let mut ws = FfnWorkspace::new(&gpu, m, m_h).unwrap();
    let cfg = DecodeConfig::auto(gpu.info(), m, m_h);
    let x = rand_dev(&gpu, 4 * m + 8, s, 1.0);
    let mut out = gpu.alloc::<f16>(4 * m).unwrap();
    // Too few rows of x for 5 tokens.
    assert!(matches!(
        ffn_decode(&gpu, &w, &x, 5, &mut out, &mut ws, &cfg),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ffn_decode(&gpu, &w, &x, 0, &mut out, &mut ws, &cfg),
        Err(Error::Shape { .. })
    ));
    // Misaligned x (offset by one element).
    let xs = x.index(1..4 * m + 1);
    assert!(matches!(
        ffn_decode(&gpu, &w, &xs, 4, &mut out, &mut ws, &cfg),
        Err(Error::Misaligned { .. })
    ));
    // Workspace for another size.
    let mut ws2 = FfnWorkspace::new(&gpu, m_h, m).unwrap();
    assert!(matches!(
        ffn_decode(&gpu, &w, &x, 4, &mut out, &mut ws2, &cfg),
        Err(Error::Shape { .. })
    ));
    // Bad kernel config.
    let bad = KernelConfig {
        warps: 9,
        splits: 1,
        unroll: 4,
        rows: 1,
    };
    assert!(matches!(
        ffn_decode(
            &gpu,
            &w,
            &x,
            4,
            &mut out,
            &mut ws,
            &DecodeConfig::uniform(bad)
        ),
        Err(Error::Unsupported { .. })
    ));
    // 32-row W2 tiles need m % 32 == 0.
    let d48 = rand_dev(&gpu, 48 * 64, s, 0.1);
    assert!(matches!(
        ExpertWeights::pack_with(&gpu, &d48, &d48, &d48, 48, 64, DownLayout::Pairs32),
        Err(Error::Unsupported { .. })
    ));
    // Token index out of range in a plan.
    assert!(matches!(
        RoutingPlan::new(3, &[vec![(3, 1.0)]]),
        Err(Error::Shape { .. })
    ));
    // A token twice in one group (the combine adds without atomics).
    assert!(matches!(
        RoutingPlan::new(3, &[vec![(1, 1.0), (1, 0.5)]]),
        Err(Error::Shape { .. })
    ));
    // Router with m not a multiple of 8.
    assert!(matches!(
        Router::from_host(&gpu, &[f16::ZERO; 12], 2, 6),
        Err(Error::Unsupported { .. })
    ));
    // And the good call still works afterwards.
    ffn_decode(&gpu, &w, &x, 4, &mut out, &mut ws, &cfg).unwrap();
    gpu.sync().unwrap();
}

/// Runs everywhere (not ignored): opening a device that does not exist is an
/// error value, and with no GPU/driver (the stub libcuda) so is device 0.
#[test]
fn missing_device_is_an_error() {
    match Gpu::new(999) {
        Err(Error::NoDevice { detail }) => eprintln!("device 999: {detail}"),
        other => panic!("expected NoDevice, got {other:?}"),
    }
    match Gpu::new(0) {
        Ok(g) => eprintln!("GPU present: {:?}", g.info()),
        Err(Error::NoDevice { detail }) => eprintln!("no GPU: {detail}"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

// ---------------------------------------------------------------------------
// Prefill (tensor-core) path: same bound, same reference.

struct PrefillSet {
    w: PrefillWeights,
    host: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)>,
}

fn prefill_set(gpu: &Gpu, experts: usize, m: usize, m_h: usize, seed: u64) -> PrefillSet {
    let s1 = 1.7 / (m as f32).sqrt();
    let s2 = 1.7 / (m_h as f32).sqrt();
    let dev: Vec<_> = (0..experts as u64)
        .map(|e| {
            let sd = seed ^ (e << 8);
            (
                rand_dev(gpu, m * m_h, sd ^ 1, s1),
                rand_dev(gpu, m * m_h, sd ^ 3, s1),
                rand_dev(gpu, m * m_h, sd ^ 2, s2),
            )
        })
        .collect();
    let refs: Vec<_> = dev.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
    let w = PrefillWeights::pack(gpu, &refs, m, m_h).unwrap();
    let host = dev
        .iter()
        .map(|(a, b, c)| (host(gpu, a), host(gpu, b), host(gpu, c)))
        .collect();
    PrefillSet { w, host }
}

fn check_prefill(
    gpu: &Gpu,
    set: &PrefillSet,
    e: usize,
    t: usize,
    cfg: Option<&PrefillConfig>,
    seed: u64,
) {
    let (m, m_h) = (set.w.m(), set.w.m_h());
    let x = rand_dev(gpu, t * m, seed, 1.0);
    let mut out = gpu.alloc::<f16>(t * m).unwrap();
    gpu.fill_u16(&mut out, NAN16).unwrap();
    let mut ws = PrefillWorkspace::new(gpu, m, m_h, t).unwrap();
    ffn_prefill(gpu, &set.w, e, &x, t, &mut out, &mut ws, cfg).unwrap();
    let got = host(gpu, &out);
    let (w1, w3, w2) = &set.host[e];
    let reference = ffn_ref(w1, w3, w2, &host(gpu, &x), m, m_h, t);
    let err = rel_err(&got, &reference);
    let used = cfg
        .copied()
        .unwrap_or_else(|| PrefillConfig::auto(gpu.info(), &[t], m, m_h, &ws));
    eprintln!("prefill m={m} m_h={m_h} T={t} expert {e} {used:?}: rel err {err:.2e}");
    assert!(
        err <= BOUND,
        "rel err {err:.3e} > {BOUND} (m={m} m_h={m_h} T={t} {used:?})"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ffn_prefill_ragged_sizes_and_configs() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    // k not a multiple of 64 (TMA zero fill), n not a multiple of the tile.
    for (m, m_h) in [(512usize, 1024usize), (528, 1040)] {
        let set = prefill_set(&gpu, 2, m, m_h, s ^ m as u64);
        for (i, t) in [1usize, 63, 130, 257].into_iter().enumerate() {
            check_prefill(&gpu, &set, i % 2, t, None, s ^ (t as u64) << 20);
        }
        // bn 192 means the 192 x 192 tiles (three consumer warpgroups).
        let bm = |bn: u32| if bn == 192 { 192 } else { 128 };
        for (bn_g, bn_d, splits) in [
            (128, 128, 1),
            (256, 256, 3),
            (128, 256, 8),
            (256, 128, 2),
            (192, 192, 1),
            (192, 192, 3),
            (224, 192, 2),
        ] {
            let cfg = PrefillConfig {
                gate_up: GemmConfig {
                    bm: bm(bn_g),
                    bn: bn_g,
                    splits: 1,
                },
                down: GemmConfig {
                    bm: bm(bn_d),
                    bn: bn_d,
                    splits,
                },
            };
            check_prefill(&gpu, &set, 1, 200, Some(&cfg), s ^ 77);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ffn_prefill_mixtral_sizes() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let set = prefill_set(&gpu, 1, 4096, 14336, s);
    check_prefill(&gpu, &set, 0, 160, None, s ^ 5);
    let split = PrefillConfig {
        gate_up: GemmConfig {
            bm: 128,
            bn: 256,
            splits: 1,
        },
        down: GemmConfig {
            bm: 128,
            bn: 128,
            splits: 4,
        },
    };
    check_prefill(&gpu, &set, 0, 96, Some(&split), s ^ 6);
    let tall = PrefillConfig {
        gate_up: GemmConfig {
            bm: 192,
            bn: 192,
            splits: 1,
        },
        down: GemmConfig {
            bm: 192,
            bn: 192,
            splits: 2,
        },
    };
    check_prefill(&gpu, &set, 0, 300, Some(&tall), s ^ 7);
}

/// Grouped launch (tokens sorted by expert, empty groups included), then the
/// weighted combine back to token order, against the per-expert reference.
#[test]
#[ignore = "needs a CUDA GPU"]
fn ffn_grouped_gather_combine() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let (m, m_h, experts, tokens, topk) = (256usize, 512usize, 4usize, 300usize, 2usize);
    let set = prefill_set(&gpu, experts, m, m_h, s);
    // Routing: token t -> experts (t*7 % 4, then a different one), weights
    // from the seed; expert 3 gets nothing (an empty group).
    let mut pairs: Vec<(usize, usize, f32)> = Vec::new(); // (token, expert, w)
    for t in 0..tokens {
        let e0 = (t * 7 + (s as usize % 3)) % 3;
        let e1 = (e0 + 1 + t % 2) % 3;
        let w0 = 0.3 + 0.4 * (((s >> (t % 40)) & 1) as f32);
        pairs.push((t, e0, w0));
        if t % 5 != 0 {
            pairs.push((t, e1, 1.0 - w0)); // every fifth token: top-1 (second dropped)
        }
    }
    let mut counts = vec![0usize; experts];
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| (pairs[i].1, pairs[i].0));
    let idx: Vec<i32> = order.iter().map(|&i| pairs[i].0 as i32).collect();
    for &i in &order {
        counts[pairs[i].1] += 1;
    }
    assert_eq!(counts[3], 0);
    let mut slot = vec![-1i32; tokens * topk];
    let mut wts = vec![0f32; tokens * topk];
    for (row, &i) in order.iter().enumerate() {
        let (t, _, w) = pairs[i];
        let j = if slot[t * topk] < 0 { 0 } else { 1 };
        slot[t * topk + j] = row as i32;
        wts[t * topk + j] = w;
    }
    let rows = idx.len();
    let x = rand_dev(&gpu, tokens * m, s ^ 9, 1.0);
    let idx_d = gpu.upload(&idx).unwrap();
    let slot_d = gpu.upload(&slot).unwrap();
    let w_d = gpu.upload(&wts).unwrap();
    let mut xs = gpu.alloc::<f16>(rows * m).unwrap();
    let mut ys = gpu.alloc::<f16>(rows * m).unwrap();
    let mut out = gpu.alloc::<f16>(tokens * m).unwrap();
    gpu.fill_u16(&mut ys, NAN16).unwrap();
    gpu.fill_u16(&mut out, NAN16).unwrap();
    let mut ws = PrefillWorkspace::new(&gpu, m, m_h, rows).unwrap();
    gather_rows(&gpu, &x, &idx_d, m, &mut xs).unwrap();
    ffn_grouped(&gpu, &set.w, &xs, &counts, &mut ys, &mut ws, None).unwrap();
    combine_rows(&gpu, &ys, &slot_d, &w_d, topk, tokens, m, &mut out).unwrap();
    let xh = host(&gpu, &x);
    // Per-expert reference on that expert's tokens.
    let mut reference = vec![0.0f64; tokens * m];
    let ysh = host(&gpu, &ys);
    let mut row0 = 0;
    for (e, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let toks: Vec<usize> = order[row0..row0 + c].iter().map(|&i| pairs[i].0).collect();
        let xe: Vec<f64> = toks
            .iter()
            .flat_map(|&t| xh[t * m..(t + 1) * m].to_vec())
            .collect();
        let (w1, w3, w2) = &set.host[e];
        let ye = ffn_ref(w1, w3, w2, &xe, m, m_h, c);
        let err = rel_err(&ysh[row0 * m..(row0 + c) * m], &ye);
        eprintln!("grouped expert {e} ({c} rows): rel err {err:.2e}");
        assert!(err <= BOUND, "expert {e}: rel err {err:.3e}");
        for (r, &t) in toks.iter().enumerate() {
            let w = pairs[order[row0 + r]].2 as f64;
            for j in 0..m {
                reference[t * m + j] += w * ye[r * m + j];
            }
        }
        row0 += c;
    }
    let err = rel_err(&host(&gpu, &out), &reference);
    eprintln!("grouped + combine, {tokens} tokens: rel err {err:.2e}");
    assert!(err <= BOUND, "combined rel err {err:.3e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_bad_inputs_are_errors() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let (m, m_h) = (128, 256);
    let set = prefill_set(&gpu, 2, m, m_h, s);
    let x = rand_dev(&gpu, 64 * m, s, 1.0);
    let mut out = gpu.alloc::<f16>(64 * m).unwrap();
    let mut ws = PrefillWorkspace::new(&gpu, m, m_h, 32).unwrap();
    // More rows than the workspace holds; expert out of range; zero tokens.
    assert!(matches!(
        ffn_prefill(&gpu, &set.w, 0, &x, 64, &mut out, &mut ws, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ffn_prefill(&gpu, &set.w, 2, &x, 8, &mut out, &mut ws, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ffn_prefill(&gpu, &set.w, 0, &x, 0, &mut out, &mut ws, None),
        Err(Error::Shape { .. })
    ));
    // Split-K on the gate/up GEMM (nonlinear epilogue) and a bad tile width.
    for bad in [
        PrefillConfig {
            gate_up: GemmConfig {
                bm: 128,
                bn: 256,
                splits: 2,
            },
            down: GemmConfig {
                bm: 128,
                bn: 256,
                splits: 1,
            },
        },
        PrefillConfig {
            gate_up: GemmConfig {
                bm: 128,
                bn: 64,
                splits: 1,
            },
            down: GemmConfig {
                bm: 128,
                bn: 256,
                splits: 1,
            },
        },
    ] {
        assert!(matches!(
            ffn_prefill(&gpu, &set.w, 0, &x, 8, &mut out, &mut ws, Some(&bad)),
            Err(Error::Unsupported { .. })
        ));
    }
    // Group counts that do not match the experts.
    assert!(matches!(
        ffn_grouped(&gpu, &set.w, &x, &[4], &mut out, &mut ws, None),
        Err(Error::Shape { .. })
    ));
    // Dimensions not multiples of 16.
    let odd = rand_dev(&gpu, 24 * 40, s, 0.1);
    assert!(matches!(
        PrefillWeights::pack(&gpu, &[(&odd, &odd, &odd)], 24, 40),
        Err(Error::Unsupported { .. })
    ));
    // Good call afterwards.
    ffn_prefill(&gpu, &set.w, 1, &x, 8, &mut out, &mut ws, None).unwrap();
    gpu.sync().unwrap();
}

/// ExpertFfn picks decode at <= 16 tokens and prefill above (on sm_90a);
/// both against the reference.
#[test]
#[ignore = "needs a CUDA GPU"]
fn expert_ffn_picks_the_path_by_tokens() {
    let gpu = gpu();
    let s = seed();
    let (m, m_h) = (256usize, 768usize);
    let set = prefill_set(&gpu, 1, m, m_h, s);
    let (w1, w3, w2) = &set.host[0];
    let dev = |v: &Vec<f64>| {
        gpu.upload(&v.iter().map(|&x| f16::from_f64(x)).collect::<Vec<_>>())
            .unwrap()
    };
    let mut e = ExpertFfn::new(&gpu, &dev(w1), &dev(w3), &dev(w2), m, m_h, 64).unwrap();
    for t in [5usize, 16, 17, 64] {
        let x = rand_dev(&gpu, t * m, s ^ t as u64, 1.0);
        let mut out = gpu.alloc::<f16>(t * m).unwrap();
        gpu.fill_u16(&mut out, NAN16).unwrap();
        let pre = e.forward(&gpu, &x, t, &mut out).unwrap();
        assert_eq!(pre, gpu.info().cubin && t > 16, "path at {t} tokens");
        let err = rel_err(
            &host(&gpu, &out),
            &ffn_ref(w1, w3, w2, &host(&gpu, &x), m, m_h, t),
        );
        eprintln!("ExpertFfn T={t} prefill={pre}: rel err {err:.2e}");
        assert!(err <= BOUND, "rel err {err:.3e} at T={t}");
    }
    // More tokens than it was built for: an error, not a silent slow path.
    let x = rand_dev(&gpu, 65 * m, s, 1.0);
    let mut out = gpu.alloc::<f16>(65 * m).unwrap();
    assert!(matches!(
        e.forward(&gpu, &x, 65, &mut out),
        Err(Error::Shape { .. })
    ));
}

/// Out-of-range row indices never read outside the buffers: gather writes a
/// row of zeros, combine skips the slot.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gather_and_combine_bounds_check_indices() {
    let gpu = gpu();
    let s = seed();
    let m = 16usize;
    let x = rand_dev(&gpu, 4 * m, s, 1.0);
    let xh = host(&gpu, &x);
    let idx = gpu.upload(&[2i32, 7, -1, 3]).unwrap();
    let mut xs = gpu.alloc::<f16>(4 * m).unwrap();
    gpu.fill_u16(&mut xs, NAN16).unwrap();
    gather_rows(&gpu, &x, &idx, m, &mut xs).unwrap();
    let g = host(&gpu, &xs);
    assert_eq!(&g[..m], &xh[2 * m..3 * m]);
    assert!(
        g[m..3 * m].iter().all(|&v| v == 0.0),
        "bad indices give zero rows"
    );
    assert_eq!(&g[3 * m..], &xh[3 * m..]);
    // Two tokens, top-2: token 0 = 0.5 ys[1] + (slot 9: skipped); token 1 =
    // (slot -1: skipped) + 2 ys[0].
    let slot = gpu.upload(&[1i32, 9, -1, 0]).unwrap();
    let w = gpu.upload(&[0.5f32, 3.0, 7.0, 2.0]).unwrap();
    let mut out = gpu.alloc::<f16>(2 * m).unwrap();
    gpu.fill_u16(&mut out, NAN16).unwrap();
    let ys = x.index(0..2 * m);
    combine_rows(&gpu, &ys, &slot, &w, 2, 2, m, &mut out).unwrap();
    let o = host(&gpu, &out);
    for j in 0..m {
        let (a, b) = (0.5 * xh[m + j], 2.0 * xh[j]);
        assert!(
            (o[j] - a).abs() <= 1e-3 * (1.0 + a.abs()),
            "token 0 col {j}: {} vs {a}",
            o[j]
        );
        assert!(
            (o[m + j] - b).abs() <= 1e-3 * (1.0 + b.abs()),
            "token 1 col {j}: {} vs {b}",
            o[m + j]
        );
    }
}
