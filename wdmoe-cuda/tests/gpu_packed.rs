//! GPU tests of the packed-weights grouped GEMM (kernels/gemm_packed.cuh,
//! `ffn_packed_grouped`): the expert FFN at prefill sizes on tensor cores,
//! reading the experts' decode packing. Against the f64 reference on fresh
//! random inputs (seed printed), outputs poisoned with NaN; every token-tile
//! width (32, 64, 128), both W2 layouts and both tile orders, row counts
//! that leave partial token tiles, partial row blocks and empty groups; the
//! MoE layer on that path (host- and device-routed) against the decode
//! kernels; and a timing at Mixtral size. Ignored by default (CUDA GPU of
//! compute capability 9.0); run with `--include-ignored` on a GPU machine
//! (see wdmoe-cuda/gpu-build.sh).
//!
//! Bound: that of tests/gpu.rs ([`BOUND`]).

mod common;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wdmoe_core::select::Policy;
use wdmoe_cuda::moe::MoeLayer;
use wdmoe_cuda::{
    elapsed_ms, f16, ffn_grouped, ffn_packed_grouped, DeviceBuffer, DownLayout, Error,
    ExpertWeights, Gpu, PackedMatrix, PrefillWeights, PrefillWorkspace,
};

/// Experts of `m` x `m_h` in the decode packing with the given W2 layout and
/// tile order, with their f64 copies.
fn experts(
    gpu: &Gpu,
    n: usize,
    m: usize,
    m_h: usize,
    layout: DownLayout,
    k_major: bool,
    seed: u64,
) -> Vec<Expert> {
    let s1 = 1.7 / (m as f32).sqrt();
    let s2 = 1.7 / (m_h as f32).sqrt();
    (0..n as u64)
        .map(|q| {
            let sd = seed ^ (q << 8);
            let d1 = rand_dev(gpu, m * m_h, sd ^ 1, s1);
            let d3 = rand_dev(gpu, m * m_h, sd ^ 3, s1);
            let d2 = rand_dev(gpu, m * m_h, sd ^ 2, s2);
            let w = ExpertWeights::pack_opts(gpu, &d1, &d3, &d2, m, m_h, layout, k_major).unwrap();
            Expert {
                w,
                w1: host(gpu, &d1),
                w3: host(gpu, &d3),
                w2: host(gpu, &d2),
            }
        })
        .collect()
}

/// A grouped case: one expert of `m` x `m_h` per entry of `counts` (32-row
/// W2 units, k-major) and random token rows for all of them: (experts, x,
/// rows).
fn grouped_case(
    gpu: &Gpu,
    counts: &[usize],
    (m, m_h): (usize, usize),
    seed: u64,
    x_seed: u64,
) -> (Vec<Expert>, DeviceBuffer<f16>, usize) {
    let ex = experts(gpu, counts.len(), m, m_h, DownLayout::Pairs32, true, seed);
    let rows: usize = counts.iter().sum();
    let x = rand_dev(gpu, rows * m, x_seed, 1.0);
    (ex, x, rows)
}

/// The intermediate and output (`[rows][m_h]`, `[rows][m]`, both poisoned
/// with NaN before) of `Gpu::ffn_packed_variant` on `x` with the given
/// tokens per tile (0: the usual choice), as f64.
fn variant_outputs(
    gpu: &Gpu,
    ex: &[Expert],
    x: &DeviceBuffer<f16>,
    counts: &[usize],
    (gate_up, down): (u32, u32),
) -> (Vec<f64>, Vec<f64>) {
    let (m, m_h) = (ex[0].w.m(), ex[0].w.m_h());
    let rows: usize = counts.iter().sum();
    let refs: Vec<&ExpertWeights> = ex.iter().map(|e| &e.w).collect();
    let mut h = gpu.alloc::<f16>(rows * m_h).unwrap();
    let mut out = gpu.alloc::<f16>(rows * m).unwrap();
    gpu.fill_u16(&mut h, NAN16).unwrap();
    gpu.fill_u16(&mut out, NAN16).unwrap();
    gpu.ffn_packed_variant(
        &refs,
        x,
        counts,
        &mut h,
        &mut out,
        Some(gate_up),
        Some(down),
    )
    .unwrap();
    (host(gpu, &h), host(gpu, &out))
}

/// `a` and `b` hold every row (finite: nothing left at the NaN poison)
/// and the same bits (`what` names the comparison in messages).
fn assert_same_bits(a: &[f64], b: &[f64], what: &str) {
    for (side, v) in [("first", a), ("second", b)] {
        let unwritten = v.iter().filter(|x| !x.is_finite()).count();
        assert_eq!(
            unwritten, 0,
            "{what}: {unwritten} outputs of the {side} run not finite"
        );
    }
    let diff = a
        .iter()
        .zip(b)
        .filter(|(p, q)| p.to_bits() != q.to_bits())
        .count();
    assert_eq!(diff, 0, "{what}: {diff} of {} outputs differ", a.len());
}

/// One grouped launch on `counts` rows per expert; every group's output
/// against the reference; returns the largest relative error.
fn check_packed(gpu: &Gpu, ex: &[Expert], counts: &[usize], seed: u64) -> f64 {
    check_packed_bn(gpu, ex, counts, seed, None)
}

/// [`check_packed`] with both launches' tokens per tile forced
/// (`Gpu::ffn_packed_variant`), or the usual choice (`None`).
fn check_packed_bn(
    gpu: &Gpu,
    ex: &[Expert],
    counts: &[usize],
    seed: u64,
    bn: Option<(u32, u32)>,
) -> f64 {
    let (m, m_h) = (ex[0].w.m(), ex[0].w.m_h());
    let rows: usize = counts.iter().sum();
    let x = rand_dev(gpu, rows * m, seed, 1.0);
    let mut h = gpu.alloc::<f16>(rows * m_h).unwrap();
    let mut out = gpu.alloc::<f16>(rows * m).unwrap();
    gpu.fill_u16(&mut h, NAN16).unwrap();
    gpu.fill_u16(&mut out, NAN16).unwrap();
    let refs: Vec<&ExpertWeights> = ex.iter().map(|e| &e.w).collect();
    match bn {
        None => ffn_packed_grouped(gpu, &refs, &x, counts, &mut h, &mut out).unwrap(),
        Some((g, d)) => gpu
            .ffn_packed_variant(&refs, &x, counts, &mut h, &mut out, Some(g), Some(d))
            .unwrap(),
    }
    let xh = host(gpu, &x);
    let got = host(gpu, &out);
    check_groups(ex, counts, &xh, &got, "")
}

/// Every non-empty group's rows of `got` ([rows][m], groups in order)
/// against the f64 reference of its expert on `xh`, within [`BOUND`]
/// (`what` names the output in messages); the largest relative error.
fn check_groups(ex: &[Expert], counts: &[usize], xh: &[f64], got: &[f64], what: &str) -> f64 {
    let (m, m_h) = (ex[0].w.m(), ex[0].w.m_h());
    let mut worst = 0.0f64;
    let mut r0 = 0;
    for (q, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let e = &ex[q];
        let want = ffn_ref(&e.w1, &e.w3, &e.w2, &xh[r0 * m..(r0 + c) * m], m, m_h, c);
        let err = rel_err(&got[r0 * m..(r0 + c) * m], &want);
        eprintln!("  expert {q}: {c} rows, {what} rel err {err:.2e}");
        assert!(
            err <= BOUND,
            "expert {q} ({c} rows) {what}: rel err {err:.3e}"
        );
        worst = worst.max(err);
        r0 += c;
    }
    worst
}

/// Small shapes: every token-tile width (the launch picks 32, 64 or 128 by
/// the largest group), partial token tiles, row counts that are not
/// multiples of the 128-row block (m_h = 192; m = 192 with 32-row W2 units),
/// empty groups, both W2 layouts and both tile orders.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_ffn_matches_reference() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let cases: [(usize, usize, DownLayout, bool, &[usize]); 6] = [
        (256, 512, DownLayout::Pairs32, true, &[0, 1, 33, 70]),
        (128, 192, DownLayout::Tiles16, false, &[5, 17]),
        (192, 256, DownLayout::Pairs32, false, &[130, 2, 64]),
        (64, 128, DownLayout::Tiles16, true, &[40]),
        (256, 320, DownLayout::Tiles16, true, &[200, 0, 129]),
        (128, 256, DownLayout::Pairs32, true, &[3, 0, 0, 31]),
    ];
    for (i, &(m, m_h, layout, k_major, counts)) in cases.iter().enumerate() {
        eprintln!("m={m} m_h={m_h} {layout:?} k_major={k_major} counts {counts:?}");
        let ex = experts(
            &gpu,
            counts.len(),
            m,
            m_h,
            layout,
            k_major,
            s ^ (i as u64 * 977),
        );
        check_packed(&gpu, &ex, counts, s ^ 0xabc ^ i as u64);
    }
}

/// Every instantiation, forced (gate/up 32, 64, 128 tokens per tile; down
/// 32, 64, 128, 256; the plain/extended pair of down, 256 + 32, as 288), on
/// rows that leave partial token tiles of each width, groups of extended
/// tiles only (576, 257), of plain tiles only (289, 33) and of both (520),
/// partial row blocks, an empty group, both W2 layouts and both tile orders.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_every_tile_width_matches_reference() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let cases: [(usize, usize, DownLayout, bool, &[usize]); 4] = [
        (192, 320, DownLayout::Pairs32, true, &[300, 0, 129, 7]),
        (256, 192, DownLayout::Tiles16, false, &[257, 33]),
        (128, 256, DownLayout::Pairs32, false, &[1, 520]),
        (128, 192, DownLayout::Pairs32, true, &[576, 289, 0, 288]),
    ];
    for (i, &(m, m_h, layout, k_major, counts)) in cases.iter().enumerate() {
        let ex = experts(
            &gpu,
            counts.len(),
            m,
            m_h,
            layout,
            k_major,
            s ^ (i as u64 * 31),
        );
        for (g, d) in [
            (32, 32),
            (64, 64),
            (128, 128),
            (128, 256),
            (64, 256),
            (32, 256),
            (128, 288),
            (0, 0),
        ] {
            eprintln!("m={m} m_h={m_h} {layout:?} k_major={k_major} counts {counts:?} bn {g}/{d}");
            check_packed_bn(&gpu, &ex, counts, s ^ 0x77 ^ i as u64, Some((g, d)));
        }
    }
}

/// The plain/extended pair of launches (down 256 + 32) gives the same bits
/// as the plain tiles alone (each output element sums the same k16
/// products in the same order), on groups of extended tiles only, plain
/// tiles only and both.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_extended_tiles_equal_plain_bitwise() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    // (Whole tiles: stream-K's split tiles add their fp32 sums in another
    // order, and which tiles split depends on the number of SMs.)
    gpu.set_packed_stream_k(false);
    let s = seed();
    let counts: &[usize] = &[576, 289, 0, 288, 520, 257, 9];
    let (ex, x, _) = grouped_case(&gpu, counts, (128, 320), s, s ^ 0xe7);
    let run = |d: u32| variant_outputs(&gpu, &ex, &x, counts, (128, d)).1;
    assert_same_bits(&run(256), &run(288), "down: plain against extended tiles");
}

/// The down GEMM's pair with small tiles (the usual choice for several
/// experts at 256 tokens per tile: plain, extended and 128-token small
/// tiles, `pair_split`) gives the same bits as 256-token tiles alone, on
/// groups that take a small tile alone (30, 4), plain and small tiles
/// (311, 405), no small tile (576: extended; 1,221, 281), an empty group
/// and a partial row block; with stream-K on, the pair is within the bound
/// of the reference.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_small_tiles_equal_plain_bitwise() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    // (Whole tiles, as in packed_extended_tiles_equal_plain_bitwise.)
    gpu.set_packed_stream_k(false);
    let s = seed();
    let counts: &[usize] = &[30, 311, 0, 576, 4, 405, 1221, 281];
    let (ex, x, _) = grouped_case(&gpu, counts, (192, 320), s, s ^ 0x5a);
    let run = |d: u32| variant_outputs(&gpu, &ex, &x, counts, (128, d)).1;
    assert_same_bits(
        &run(256),
        &run(0),
        "down: plain tiles against the pair with small tiles",
    );
    gpu.set_packed_stream_k(true);
    let split = run(0);
    let xh = host(&gpu, &x);
    check_groups(&ex, counts, &xh, &split, "small tiles, stream-K");
}

/// The gate/up GEMM's chain of fitted widths (128..=160 tokens per tile,
/// one launch per width) gives the same bits as 128-token tiles alone
/// (each output element sums the same k16 products in the same order), on
/// groups of every width (520 and 130: 136; 576: 144; 447 and 300: 152;
/// 160: 160; 9: 128), an empty group and a partial row block.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_fitted_widths_equal_plain_bitwise() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    // (Whole tiles, as in packed_extended_tiles_equal_plain_bitwise.)
    gpu.set_packed_stream_k(false);
    let s = seed();
    let counts: &[usize] = &[520, 130, 0, 447, 9, 576, 160, 300];
    let (ex, x, _) = grouped_case(&gpu, counts, (128, 320), s, s ^ 0xf1);
    let run = |g: u32| variant_outputs(&gpu, &ex, &x, counts, (g, 0)).0;
    assert_same_bits(
        &run(128),
        &run(0),
        "gate/up: 128-token against fitted tiles",
    );
}

/// Stream-K (kernels/stream_k.cuh): the last partial wave's k blocks
/// shared out over every block, split tiles meeting in fp32. On shapes
/// where both GEMMs split tiles (gate/up: 272 tiles of 128 tokens on 132
/// blocks, 8 of them split 2 ways; down's plain/extended pair: 28 + 8
/// tiles, every one split over 4-8 blocks of 4-7 k blocks), the output is
/// within the fp16 bound of the f64 reference for every expert, equal bit
/// for bit between two runs (the pieces are summed in k order whatever the
/// timing), and not bit for bit equal to whole tiles (the split happened:
/// its fp32 sums are added in another order), whose output is within the
/// bound too.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_stream_k_matches_reference_and_is_deterministic() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let counts: &[usize] = &[300, 257, 140, 9, 0, 520, 33, 200];
    let (ex, x, _) = grouped_case(&gpu, counts, (512, 2048), s, s ^ 0x5c);
    let run = |sk: bool| {
        gpu.set_packed_stream_k(sk);
        let out = variant_outputs(&gpu, &ex, &x, counts, (128, 288)).1;
        gpu.set_packed_stream_k(true);
        out
    };
    let (a, b, whole) = (run(true), run(true), run(false));
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
    assert_eq!(bits(&a), bits(&b), "stream-K runs differ");
    let differ = bits(&a)
        .iter()
        .zip(bits(&whole))
        .filter(|(p, q)| *p != q)
        .count();
    eprintln!(
        "stream-K vs whole tiles: {differ} of {} outputs differ in some bit",
        a.len()
    );
    assert!(differ > 0, "no tile was split (stream-K off?)");
    let xh = host(&gpu, &x);
    check_groups(&ex, counts, &xh, &a, "stream-K");
    check_groups(&ex, counts, &xh, &whole, "whole tiles");
}

/// Median seconds of 10 calls of `f` after 3 warm-ups, CUDA events around
/// each.
fn median_s(gpu: &Gpu, f: &mut dyn FnMut()) -> f64 {
    let (a, b) = (gpu.event().unwrap(), gpu.event().unwrap());
    let mut v = Vec::new();
    for i in 0..13 {
        gpu.record_on(&a).unwrap();
        f();
        gpu.record_on(&b).unwrap();
        gpu.sync().unwrap();
        if i >= 3 {
            v.push(elapsed_ms(&a, &b).unwrap() as f64 * 1e-3);
        }
    }
    v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    v[v.len() / 2]
}

/// `time(i)` of each of `n` variants in 4 rounds, every other round in
/// reverse order so that clock drift under load favours none; per variant
/// its times sorted (best first).
fn alternating_rounds(n: usize, time: &mut dyn FnMut(usize) -> f64) -> Vec<Vec<f64>> {
    let mut got = vec![Vec::new(); n];
    for round in 0..4 {
        for j in 0..n {
            let i = if round % 2 == 0 { j } else { n - 1 - j };
            got[i].push(time(i));
        }
    }
    for v in &mut got {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    }
    got
}

/// Each launch alone at Mixtral size (8 experts of 4096 x 14336, 32-row W2
/// units, k-major) at 64, 512, 576, 640 and 4096 rows per expert, at a
/// 2,048-token prompt's uneven rows and at a deep layer's skew: median of
/// 10 after 3 warm-ups, in 4 rounds of alternating order (gate/up's
/// 128-token tiles alone and its fitted widths 144 and 160 alone, down's
/// 256-token tiles and plain/extended pair 256 + 32, and the usual choice:
/// gate/up's chain of fitted widths); prints STAGE lines
/// (TFLOP/s of that launch).
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_stage_timing_mixtral() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let (m, m_h, e) = (4096usize, 14336usize, 8usize);
    let s = 0x51a9;
    let packed: Vec<ExpertWeights> = (0..e as u64)
        .map(|q| {
            let sd = s ^ (q << 8);
            let d1 = rand_dev(&gpu, m * m_h, sd ^ 1, 0.03);
            let d3 = rand_dev(&gpu, m * m_h, sd ^ 3, 0.03);
            let d2 = rand_dev(&gpu, m * m_h, sd ^ 2, 0.015);
            ExpertWeights::pack(&gpu, &d1, &d3, &d2, m, m_h).unwrap()
        })
        .collect();
    let wrefs: Vec<&ExpertWeights> = packed.iter().collect();
    // Even rows, and the uneven rows of a 2,048-token prompt at random
    // weights (512 +- 21: run C2).
    let uneven = vec![533usize, 491, 512, 548, 470, 525, 509, 508];
    // A deep layer's skew (layer 15 of a 2,048-token prompt runs 30-1,705
    // rows per expert: model_bench's ROWS, run D2).
    let skewed = vec![30usize, 1705, 402, 698, 251, 517, 322, 171];
    for counts in [
        vec![64usize; e],
        vec![512; e],
        vec![576; e],
        vec![640; e],
        uneven,
        skewed,
        vec![4096; e],
    ] {
        let rows: usize = counts.iter().sum();
        let per = if counts.iter().all(|&c| c == counts[0]) {
            counts[0].to_string()
        } else {
            format!("{counts:?}")
        };
        // WDMOE_STAGE_ROWS=512 (say): that row count only (a profiler's run).
        if std::env::var("WDMOE_STAGE_ROWS").is_ok_and(|v| v != per) {
            continue;
        }
        let x = rand_dev(&gpu, rows * m, 5, 1.0);
        let mut h = rand_dev(&gpu, rows * m_h, 6, 1.0);
        let mut out = gpu.alloc::<f16>(rows * m).unwrap();
        let flops = (rows * m * m_h * 2) as f64;
        // (launch, tokens per tile, stream-K; 0 = the usual choice:
        // gate/up's fitted widths; 288: the plain/extended pair of 256 +
        // 32).
        let variants: [(&str, u32, bool); 10] = [
            ("gate_up", 128, true),
            ("gate_up", 144, true),
            ("gate_up", 160, true),
            ("gate_up", 0, true),
            ("gate_up", 0, false),
            ("down", 256, true),
            ("down", 288, true),
            ("down", 288, false),
            ("down", 0, true),
            ("down", 0, false),
        ];
        let got = alternating_rounds(variants.len(), &mut |i| {
            let (stage, bn, sk) = variants[i];
            let (g, d) = if stage == "gate_up" {
                (Some(bn), None)
            } else {
                (None, Some(bn))
            };
            gpu.set_packed_stream_k(sk);
            let t = median_s(&gpu, &mut || {
                gpu.ffn_packed_variant(&wrefs, &x, &counts, &mut h, &mut out, g, d)
                    .unwrap()
            });
            gpu.set_packed_stream_k(true);
            t
        });
        for (i, &(stage, bn, sk)) in variants.iter().enumerate() {
            let v = &got[i];
            let f = if stage == "gate_up" {
                2.0 * flops
            } else {
                flops
            };
            println!(
                "STAGE {stage} rows/expert={per} bn={bn} stream-K={}: best {:.1} us {:.0} TFLOP/s, median of rounds {:.1} us {:.0} TFLOP/s",
                if sk { "on" } else { "off" },
                v[0] * 1e6,
                f / v[0] / 1e12,
                v[v.len() / 2] * 1e6,
                f / v[v.len() / 2] / 1e12
            );
        }
    }
}

/// Mixtral's expert shape (4096 x 14336, 32-row W2 units, k-major tiles as
/// `ExpertWeights::pack` makes them), two experts of 40 and 100 rows.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_ffn_mixtral_size() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let ex = experts(&gpu, 2, 4096, 14336, DownLayout::Pairs32, true, s);
    let err = check_packed(&gpu, &ex, &[40, 100], s ^ 7);
    eprintln!("Mixtral size: worst rel err {err:.2e}");
}

/// Bad inputs are errors, never launches: m not a multiple of 64, experts of
/// different packings, buffers too small, more experts than groups.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_bad_inputs_are_errors() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let odd = experts(&gpu, 1, 48, 128, DownLayout::Tiles16, true, s);
    let x = rand_dev(&gpu, 4 * 256, s, 1.0);
    let mut h = gpu.alloc::<f16>(4 * 512).unwrap();
    let mut out = gpu.alloc::<f16>(4 * 256).unwrap();
    let r = ffn_packed_grouped(&gpu, &[&odd[0].w], &x, &[4], &mut h, &mut out);
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    let a = experts(&gpu, 1, 256, 512, DownLayout::Pairs32, true, s ^ 1);
    let b = experts(&gpu, 1, 256, 512, DownLayout::Tiles16, true, s ^ 2);
    let r = ffn_packed_grouped(&gpu, &[&a[0].w, &b[0].w], &x, &[2, 2], &mut h, &mut out);
    assert!(r.is_err(), "mixed packings: {r:?}");
    let r = ffn_packed_grouped(&gpu, &[&a[0].w], &x, &[5], &mut h, &mut out);
    assert!(r.is_err(), "5 rows in buffers of 4: {r:?}");
    let r = ffn_packed_grouped(&gpu, &[&a[0].w], &x, &[2, 2], &mut h, &mut out);
    assert!(r.is_err(), "2 groups, 1 expert: {r:?}");
    // The same call with valid sizes runs.
    ffn_packed_grouped(&gpu, &[&a[0].w], &x, &[4], &mut h, &mut out).unwrap();
    gpu.sync().unwrap();
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A layer holding only the decode packing (`Some(false)`): steps above 16
/// tokens take the grouped path on the packed weights, host- and
/// device-routed, top-2 and WDMoE θ = 0.5 (dropped experts), and equal the
/// decode kernels' step (`set_prefill(false)`) within the fp16 bound.
#[test]
#[ignore = "needs a CUDA GPU"]
fn moe_layer_on_the_packing_equals_the_decode_kernels() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let mut rng = SmallRng::seed_from_u64(s);
    let e = 8;
    let mut l = MoeLayer::random_with(gpu, 256, 512, e, 300, Some(false), s).unwrap();
    l.set_random_input(s ^ 0x5eed).unwrap();
    for (policy, name) in [
        (Policy::new(2, 0.0, 1).unwrap(), "top-2"),
        (Policy::new(2, 0.5, 1).unwrap(), "theta 0.5"),
    ] {
        for n in [17usize, 100, 300] {
            let lat: Vec<f64> = (0..n * e).map(|_| rng.gen_range(0.005..0.05)).collect();
            l.set_prefill(false);
            assert!(!l.uses_prefill(n));
            let dec = l.step(n, &policy, &lat).unwrap();
            let out_dec = widen(&l.output(n).unwrap());
            l.set_prefill(true);
            assert!(
                l.uses_prefill(n),
                "{n} tokens must take the packed grouped path"
            );
            for device in [false, true] {
                l.set_device_routing(device);
                assert_eq!(l.uses_device_routing(n, &lat), device);
                let st = l.step(n, &policy, &lat).unwrap();
                assert_eq!(st.routing.groups, dec.routing.groups, "{name} at {n}");
                let err = rel_err(&widen(&l.output(n).unwrap()), &out_dec);
                let rows: usize = st.routing.groups.iter().map(Vec::len).sum();
                eprintln!(
                    "{name} at {n} tokens ({rows} rows), device-routed {device}: rel err {err:.2e}, step {:.1} us (decode kernels {:.1} us)",
                    st.time_s * 1e6,
                    dec.time_s * 1e6
                );
                assert!(err <= BOUND, "{name} at {n}, device {device}: {err:.3e}");
            }
        }
    }
    assert_eq!(l.device_policy_mismatches(), 0);
}

/// Timing at Mixtral size (8 experts of 4096 x 14336, top-2, tokens spread
/// evenly): the packed grouped FFN against the stacked-layout grouped FFN
/// (`ffn_grouped`) on the same rows, and against the time to read the eight
/// experts once at the copy rate of this call. Medians of 10 after 3
/// warm-ups; prints PACKED lines; asserts only that both are finite.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_ffn_timing_mixtral() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let (m, m_h, e) = (4096usize, 14336usize, 8usize);
    let s = 0x9a11;
    let dev: Vec<_> = (0..e as u64)
        .map(|q| {
            let sd = s ^ (q << 8);
            (
                rand_dev(&gpu, m * m_h, sd ^ 1, 0.03),
                rand_dev(&gpu, m * m_h, sd ^ 3, 0.03),
                rand_dev(&gpu, m * m_h, sd ^ 2, 0.015),
            )
        })
        .collect();
    let packed: Vec<ExpertWeights> = dev
        .iter()
        .map(|(a, b, c)| ExpertWeights::pack(&gpu, a, b, c, m, m_h).unwrap())
        .collect();
    let refs: Vec<_> = dev.iter().map(|(a, b, c)| (&**a, &**b, &**c)).collect();
    let stacked = PrefillWeights::pack(&gpu, &refs, m, m_h).unwrap();
    drop(refs);
    drop(dev);
    let wrefs: Vec<&ExpertWeights> = packed.iter().collect();
    // Copy rate of this call: a read probe over the stacked weights.
    let mut scratch = gpu.alloc::<f32>(1 << 16).unwrap();
    let probe = gpu.alloc::<f16>(1 << 30).unwrap();
    let (a, b) = (gpu.event().unwrap(), gpu.event().unwrap());
    let mut probe_ms = Vec::new();
    for _ in 0..5 {
        gpu.record_on(&a).unwrap();
        gpu.read_probe(&probe, &mut scratch).unwrap();
        gpu.record_on(&b).unwrap();
        gpu.sync().unwrap();
        probe_ms.push(elapsed_ms(&a, &b).unwrap() as f64);
    }
    probe_ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let rate = (2usize << 30) as f64 / (probe_ms[2] * 1e-3);
    drop(probe);
    let floor_s = (e * 3 * m * m_h * 2) as f64 / rate;
    println!(
        "PACKED read rate {:.2} TB/s; 8 experts read once: {:.1} us",
        rate / 1e12,
        floor_s * 1e6
    );
    for tokens in [64usize, 128, 512, 2048] {
        let per = 2 * tokens / e;
        let counts = vec![per; e];
        let rows = per * e;
        let x = rand_dev(&gpu, rows * m, 5, 1.0);
        let mut h = gpu.alloc::<f16>(rows * m_h).unwrap();
        let mut out = gpu.alloc::<f16>(rows * m).unwrap();
        let mut ws = PrefillWorkspace::new(&gpu, m, m_h, rows).unwrap();
        let time = |f: &mut dyn FnMut()| median_s(&gpu, f);
        let tp =
            time(&mut || ffn_packed_grouped(&gpu, &wrefs, &x, &counts, &mut h, &mut out).unwrap());
        let tg = time(&mut || {
            ffn_grouped(&gpu, &stacked, &x, &counts, &mut out, &mut ws, None).unwrap()
        });
        let flops = (rows * 3 * m * m_h * 2) as f64;
        let got = host(&gpu, &out);
        assert!(got.iter().all(|v| v.is_finite()));
        println!(
            "PACKED tokens={tokens} rows={rows} ({per}/expert): packed {:.1} us ({:.2}x the read floor, {:.0} TFLOP/s), stacked grouped {:.1} us ({:.0} TFLOP/s), packed/stacked {:.2}",
            tp * 1e6,
            tp / floor_s,
            flops / tp / 1e12,
            tg * 1e6,
            flops / tg / 1e12,
            tp / tg
        );
    }
}

/// The projection GEMM (`gemm_packed_f32`: fp32 `y = W x` on the decode
/// packing of one matrix, the model's q|k|v) at every tile width (32, 64,
/// 128, 256 tokens, and the usual choice) against the f64 reference: rows
/// that leave a partial row block (320), token counts that leave partial
/// tiles of each width, an output row stride wider than the rows (the
/// padding must stay untouched).
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_f32_every_tile_width_matches_reference() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let s = seed();
    let (rows, k, ldy) = (320usize, 192usize, 328usize);
    let wd = rand_dev(&gpu, rows * k, s ^ 0xf32, 1.7 / (k as f32).sqrt());
    let w = PackedMatrix::pack(&gpu, &wd, rows, k).unwrap();
    let wh = host(&gpu, &wd);
    for t in [1usize, 300, 520] {
        let x = rand_dev(&gpu, t * k, s ^ t as u64, 1.0);
        let want = matmul_t(&wh, &host(&gpu, &x), rows, k, t);
        // Stored, and added to y = 0.5 (the residual launches: k slices
        // meet by atomic adds).
        for (add, y0) in [(false, f32::NAN), (true, 0.5f32)] {
            for bn in [None, Some(32), Some(64), Some(128), Some(256)] {
                if add && bn == Some(256) {
                    continue; // (the residual adds stop at 128)
                }
                let init: Vec<f32> = (0..t * ldy)
                    .map(|i| if i % ldy < rows { y0 } else { f32::NAN })
                    .collect();
                let mut y = gpu.upload(&init).unwrap();
                gpu.gemm_packed_f32_variant(&w, &x, t, &mut y, ldy, add, bn)
                    .unwrap();
                let got = gpu.download(&y).unwrap();
                let mut g = Vec::with_capacity(t * rows);
                for r in got.chunks(ldy) {
                    g.extend(
                        r[..rows]
                            .iter()
                            .map(|&v| v as f64 - if add { 0.5 } else { 0.0 }),
                    );
                    assert!(r[rows..].iter().all(|v| v.is_nan()), "padding written");
                }
                let err = rel_err(&g, &want);
                eprintln!("  f32 T={t} add={add} bn={bn:?}: rel err {err:.2e}");
                assert!(err <= BOUND, "T={t} add={add} bn={bn:?}: rel err {err:.3e}");
            }
        }
    }
}

/// The model's q|k|v projection at a 2,048-token prompt (W 6144 x 4096):
/// 128 against 256 tokens per tile and the usual choice, medians of 10
/// after 3 warm-ups in 4 rounds of alternating order; prints F32 lines.
#[test]
#[ignore = "needs a CUDA GPU"]
fn packed_f32_timing_qkv() {
    let gpu = gpu();
    if !sm90(&gpu) {
        return;
    }
    let (rows, k, t) = (6144usize, 4096usize, 2048usize);
    let wd = rand_dev(&gpu, rows * k, 0x9c, 0.03);
    let w = PackedMatrix::pack(&gpu, &wd, rows, k).unwrap();
    drop(wd);
    let x = rand_dev(&gpu, t * k, 3, 1.0);
    let mut y = gpu.alloc::<f32>(t * rows).unwrap();
    let variants = [Some(128u32), Some(256), None];
    let got = alternating_rounds(variants.len(), &mut |i| {
        median_s(&gpu, &mut || {
            gpu.gemm_packed_f32_variant(&w, &x, t, &mut y, rows, false, variants[i])
                .unwrap()
        })
    });
    let flops = (2 * t * rows * k) as f64;
    for (i, bn) in variants.iter().enumerate() {
        let v = &got[i];
        println!(
            "F32 qkv T={t} W {rows}x{k} bn={bn:?}: best {:.1} us {:.0} TFLOP/s, median of rounds {:.1} us {:.0} TFLOP/s",
            v[0] * 1e6,
            flops / v[0] / 1e12,
            v[v.len() / 2] * 1e6,
            flops / v[v.len() / 2] / 1e12
        );
    }
    assert!(got.iter().flatten().all(|v| v.is_finite() && *v > 0.0));
}
