//! The whole model's paths against each other at Mixtral width: prefill
//! on the packed GEMMs against the GEMV path, lm_head on its packing
//! against row-major, pipelined decode against one forward per token.

use rand::Rng;

use super::{max_diff, rng};
use crate::model::{ExpertLayout, GpuModel, ModelOptions, ModelShape};
use crate::runtime::Gpu;

/// A model of `shape` with random weights from `seed`, its experts in the
/// decode packing only, a KV cache of `max_seq` positions and prompt chunks
/// of at most `chunk` tokens.
fn decode_only_model(
    gpu: &std::sync::Arc<Gpu>,
    shape: ModelShape,
    max_seq: usize,
    chunk: usize,
    seed: u64,
) -> GpuModel {
    let opts = ModelOptions {
        max_seq,
        layout: ExpertLayout::DecodeOnly,
        prefill_chunk: chunk,
    };
    GpuModel::random(gpu.clone(), shape, opts, seed, &mut |_, _| {}).unwrap()
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
    use crate::model::Output;
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
    assert!(n >= crate::model::kernels::PROJ_STORE_MIN_TOKENS);
    let run = |chunk: usize, tokens: &[u32]| {
        let mut m = decode_only_model(&gpu, shape, n + 8, chunk, seed);
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

/// A prompt in chunks that store their projections (600 tokens, then 530
/// at position 600: the second reads the first's cache) gives the same bits
/// with RoPE and the cache write in the q|k|v GEMM's epilogue as with
/// `rope_kv` after the stored projection, and with the MoE steps' combine
/// summed by the next norm as with it written by the step: every logit and
/// every routing choice (2 layers at Mixtral width, a 2,048-token
/// vocabulary; layer 0's combine goes to layer 1's attention norm, layer
/// 1's to the final norm).
#[test]
#[ignore = "needs a CUDA GPU"]
fn prefill_fused_steps_equal_unfused() {
    use crate::model::Output;
    use wdmoe_core::select::Policy;
    let gpu = std::sync::Arc::new(Gpu::new(0).unwrap());
    if !gpu.info().cubin {
        eprintln!("skipping: the packed GEMM needs compute capability 9.0");
        return;
    }
    let mut r = rng();
    let shape = ModelShape {
        layers: 2,
        vocab: 2048,
        ..ModelShape::mixtral_8x7b()
    };
    let (n0, n1) = (600usize, 530usize);
    let mut m = decode_only_model(&gpu, shape, n0 + n1 + 8, n0, r.gen());
    let policy = Policy::new(2, 0.0, 1).unwrap();
    let tokens: Vec<u32> = (0..n0 + n1).map(|_| r.gen_range(0..2048)).collect();
    let lat = vec![0.01; n0 * shape.layers * shape.experts];
    let mut run = |rope: bool, combine: bool| {
        m.set_qkv_rope(rope);
        m.set_fused_combine(combine);
        m.truncate(0);
        let a = m
            .forward(&tokens[..n0], Output::AllLogits, &policy, &lat)
            .unwrap();
        let b = m
            .forward(
                &tokens[n0..],
                Output::AllLogits,
                &policy,
                &lat[..n1 * shape.layers * shape.experts],
            )
            .unwrap();
        (a, b)
    };
    let (fa, fb) = run(true, true);
    let (ra, rb) = run(false, true);
    let (ca, cb) = run(true, false);
    for (name, f, r) in [
        ("rope_kv, first chunk", &fa, &ra),
        ("rope_kv, second chunk", &fb, &rb),
        ("combine written, first chunk", &fa, &ca),
        ("combine written, second chunk", &fb, &cb),
    ] {
        assert!(
            f.logits.iter().all(|x| x.is_finite()),
            "{name}: a non-finite logit"
        );
        let diff = f
            .logits
            .iter()
            .zip(&r.logits)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} logits differ",
            f.logits.len()
        );
        for l in 0..shape.layers {
            assert!(
                f.layers[l].selections == r.layers[l].selections,
                "{name}, layer {l}: routing differs"
            );
        }
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
    use crate::model::Output;
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
    let mut m = decode_only_model(&gpu, shape, 128, 64, r.gen());
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
    use crate::model::Output;
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
    let mut m = decode_only_model(&gpu, shape, 64, 16, r.gen());
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

/// The decode GEMVs' early loads ([`Gpu::set_gemv_preload`]: two groups of
/// k-tiles per warp before the wait, the PRE = 2 kernels) against one
/// group: the same bits in every logit and router logit of a 5-token prompt
/// (the projections' GEMV at 5 tokens) and 6 decode tokens (the
/// projections' GEMV and the device-planned step's down kernel), on two
/// shapes whose warps' k ranges hold an even and an odd number of groups
/// (hidden 4,096, expert size 1,536: 4 groups per projection warp, 3 per
/// down warp; hidden 3,072, expert size 2,048: 3 and 4).
#[test]
#[ignore = "needs a CUDA GPU"]
fn decode_gemv_preload_equals_one_group() {
    use crate::model::Output;
    use wdmoe_core::select::Policy;
    let gpu = std::sync::Arc::new(Gpu::new(0).unwrap());
    let mut r = rng();
    for (hidden, intermediate, heads, kv_heads) in [(4096, 1536, 32, 8), (3072, 2048, 24, 6)] {
        let shape = ModelShape {
            vocab: 512,
            hidden,
            intermediate,
            layers: 2,
            heads,
            kv_heads,
            rope_theta: 1e4,
            ..ModelShape::mixtral_8x7b()
        };
        let mut m = decode_only_model(&gpu, shape, 32, 16, r.gen());
        let policy = Policy::new(2, 0.2, 1).unwrap();
        let per_token = shape.layers * shape.experts;
        let lat: Vec<f64> = (0..5 * per_token)
            .map(|i| 0.01 * (1 + i % 7) as f64)
            .collect();
        let prompt: Vec<u32> = (0..5).map(|_| r.gen_range(0..512)).collect();
        let mut run = |on: bool| {
            gpu.set_gemv_preload(on);
            m.truncate(0);
            let out = m
                .forward(&prompt, Output::AllLogits, &policy, &lat)
                .unwrap();
            let mut logits = out.logits.clone();
            let mut router: Vec<f32> = out.layers.iter().flat_map(|l| l.logits.clone()).collect();
            let mut id = 7;
            for _ in 0..6 {
                let o = m
                    .forward(&[id], Output::LastArgmax, &policy, &lat[..per_token])
                    .unwrap();
                assert_eq!(o.reruns, 0, "the device plan was wdmoe-core's");
                id = o.argmax.unwrap();
                logits.push(id as f32);
                router.extend(o.layers.iter().flat_map(|l| l.logits.clone()));
            }
            (logits, router)
        };
        let (la, ra) = run(true);
        let (lb, rb) = run(false);
        let label = format!("hidden {hidden}, expert size {intermediate}");
        assert!(
            la.iter().all(|x| x.is_finite()),
            "{label}: a non-finite logit"
        );
        assert!(
            ra.len() >= 7 * per_token,
            "{label}: {} router logits",
            ra.len()
        );
        for (what, a, b) in [("logits", &la, &lb), ("router logits", &ra, &rb)] {
            assert_eq!(a.len(), b.len(), "{label}: {what}");
            let diff = a
                .iter()
                .zip(b)
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            assert_eq!(diff, 0, "{label}: {diff} of {} {what} differ", a.len());
        }
        eprintln!(
            "{label}: {} logits, {} router logits equal",
            la.len(),
            ra.len()
        );
    }
}
