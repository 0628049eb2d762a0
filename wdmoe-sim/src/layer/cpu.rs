//! The f32 CPU reference of the MoE layer step (any sizes, no GPU).

use std::time::Instant;

use wdmoe_core::select::Policy;

use super::{
    check_latencies, route, softmax_rows, ExpertF32, ExpertStats, LayerError, LayerOutput,
    MoeWeights, WeightView,
};

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// f32 dot product in eight lanes (vectorises; the summation order differs
/// from a plain loop by rounding only).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, a), b) in acc.iter_mut().zip(x).zip(y) {
            *s += a * b;
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`dot`] of a row of little-endian bf16 `a` (2 bytes a value) with `b`:
/// the same lanes in the same order, each value widened exactly as it is
/// read (its 16 bits become the high half of an f32), so the result has the
/// bits of [`dot`] on the row converted first, without writing the row out.
fn dot_bf16(a: &[u8], b: &[f32]) -> f32 {
    let wide = |c: &[u8]| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
    let n = (a.len() / 2).min(b.len());
    let (a, b) = (&a[..2 * n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        // Widen the 8 values first, then the 8 lanes (vectorises).
        let mut w = [0.0f32; 8];
        for (i, v) in w.iter_mut().enumerate() {
            *v = f32::from_bits((u32::from(x[2 * i]) | u32::from(x[2 * i + 1]) << 8) << 16);
        }
        for ((s, a), b) in acc.iter_mut().zip(&w).zip(y) {
            *s += a * b;
        }
    }
    let mut tail = 0.0f32;
    for (c, y) in ca.remainder().chunks_exact(2).zip(cb.remainder()) {
        tail += wide(c) * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Work (multiply-adds) above which a product runs in parallel.
const PAR_MACS: usize = 1 << 16;

/// Least output rows per parallel block of [`matmul_t`]: a block's rows
/// stay in cache while every token passes over them.
const BLOCK_ROWS: usize = 16;

/// Least multiply-adds per parallel block (amortises the task overhead).
const BLOCK_MACS: usize = 1 << 15;

thread_local! {
    /// Per-thread f32 copy of the f16/bf16 row block [`matmul_t`] is
    /// working on (grows to the largest block, then is reused).
    static ROW_BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y = x Wᵀ`: `x` is `[n][d_in]`, `w` is `[d_out][d_in]` (PyTorch's
/// `nn.Linear` layout), returns `[n][d_out]`. Large products run in
/// parallel over blocks of output rows, each block serving every token (so
/// the weights are read once per call, not once per token); every value is
/// one [`dot`], so the result does not depend on the thread count.
///
/// `w` is f32 values or a [`WeightView`] of f16/bf16 values (e.g. in a
/// checkpoint's memory map): each block of rows is converted to f32 into a
/// per-thread buffer just before its products (the conversion is exact, so
/// the result equals the product with the whole matrix converted first);
/// one token over bf16 reads the bytes directly ([`dot_bf16`]).
pub fn matmul_t<'w>(
    x: &[f32],
    n: usize,
    w: impl Into<WeightView<'w>>,
    d_in: usize,
    d_out: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    let w = w.into();
    match (n, w) {
        // No token: nothing to read (an expert no token chose; converting
        // its f16/bf16 weights anyway cost a full read of them).
        (0, _) => return Vec::new(),
        (1, WeightView::Bf16(bytes)) => return matvec_bf16(x, bytes, d_in, d_out),
        _ => {}
    }
    let mut y = vec![0.0f32; n * d_out];
    if n * d_in * d_out < PAR_MACS {
        // Small: under PAR_MACS values, converted at once.
        ROW_BUF.with_borrow_mut(|buf| {
            let w = w.rows(0, d_out, d_in, buf);
            for (yt, xt) in y.chunks_exact_mut(d_out).zip(x.chunks_exact(d_in)) {
                for (o, v) in yt.iter_mut().enumerate() {
                    *v = dot(&w[o * d_in..(o + 1) * d_in], xt);
                }
            }
        });
        return y;
    }
    let rows_per_block = BLOCK_ROWS.max(BLOCK_MACS.div_ceil(n * d_in));
    let blocks: Vec<Vec<f32>> = (0..d_out.div_ceil(rows_per_block))
        .into_par_iter()
        .map(|b| {
            let r0 = b * rows_per_block;
            let r1 = (r0 + rows_per_block).min(d_out);
            let rows = r1 - r0;
            let mut out = vec![0.0f32; n * rows];
            ROW_BUF.with_borrow_mut(|buf| {
                let wb = w.rows(r0, r1, d_in, buf);
                for (ot, xt) in out.chunks_exact_mut(rows).zip(x.chunks_exact(d_in)) {
                    for (r, v) in ot.iter_mut().enumerate() {
                        *v = dot(&wb[r * d_in..(r + 1) * d_in], xt);
                    }
                }
            });
            out
        })
        .collect();
    for (bi, out) in blocks.iter().enumerate() {
        let o0 = bi * rows_per_block;
        let rows = out.len() / n.max(1);
        for (t, ot) in out.chunks_exact(rows).enumerate() {
            y[t * d_out + o0..t * d_out + o0 + rows].copy_from_slice(ot);
        }
    }
    y
}

/// [`matmul_t`] of one token over bf16 weights: each row's [`dot_bf16`]
/// straight from the bytes (one token uses each weight once, so converting
/// a row block first would only add a write and a read of it: the decode
/// of a memory-mapped bf16 checkpoint). The same bits as the converted
/// path; parallel over blocks of rows as there.
fn matvec_bf16(x: &[f32], w: &[u8], d_in: usize, d_out: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let Some(x) = x.get(..d_in) else {
        // As matmul_t's blocked path: no whole token, no products.
        return vec![0.0; d_out];
    };
    let row = |o: usize| dot_bf16(&w[2 * o * d_in..2 * (o + 1) * d_in], x);
    if d_in * d_out < PAR_MACS {
        return (0..d_out).map(row).collect();
    }
    let rows_per_block = BLOCK_ROWS.max(BLOCK_MACS.div_ceil(d_in));
    (0..d_out)
        .into_par_iter()
        .with_min_len(rows_per_block)
        .map(row)
        .collect()
}

/// One expert's FFN on `rows.len() / m` tokens: `y = W2 (silu(W1 x) ⊙ W3 x)`,
/// f32, `rows`: `[t][m]` → returns `[t][m]` (products by [`matmul_t`]).
pub fn expert_ffn(e: &ExpertF32, m: usize, m_h: usize, rows: &[f32]) -> Vec<f32> {
    let n = rows.len() / m;
    let g = matmul_t(rows, n, &e.w1, m, m_h);
    let mut h = matmul_t(rows, n, &e.w3, m, m_h);
    h.iter_mut().zip(&g).for_each(|(u, &g)| *u *= silu(g));
    matmul_t(&h, n, &e.w2, m_h, m)
}

/// Router logits `[n_tokens][n_experts]` = x Gᵀ (f32 products, f64 result).
pub fn router_logits(w: &MoeWeights, x: &[f32], n_tokens: usize) -> Vec<f64> {
    let (m, e) = (w.m, w.n_experts());
    let mut l = Vec::with_capacity(n_tokens * e);
    for t in 0..n_tokens {
        for q in 0..e {
            l.push(dot(&w.router[q * m..(q + 1) * m], &x[t * m..(t + 1) * m]) as f64);
        }
    }
    l
}

/// One MoE layer step for `n_tokens` tokens `x` (`[n_tokens][m]`): router,
/// `policy` per token with `latency_s` (one value per expert, or
/// `[n_tokens][n_experts]`; `+∞` = unreachable), grouping, expert FFNs and the
/// weighted combine.
pub fn forward(
    w: &MoeWeights,
    x: &[f32],
    n_tokens: usize,
    policy: &Policy<f64>,
    latency_s: &[f64],
) -> Result<LayerOutput, LayerError> {
    w.validate()?;
    check_x(w, x, n_tokens)?;
    let logits = router_logits(w, x, n_tokens);
    forward_from_logits(w, x, n_tokens, &logits, policy, latency_s)
}

fn check_x(w: &MoeWeights, x: &[f32], n_tokens: usize) -> Result<(), LayerError> {
    if n_tokens == 0 || x.len() != n_tokens * w.m {
        return Err(LayerError::Shape(format!(
            "x has {} values, expected {n_tokens} x {} (n_tokens > 0)",
            x.len(),
            w.m
        )));
    }
    Ok(())
}

/// [`forward`] from router logits the caller computed (`[n_tokens][n_experts]`,
/// e.g. with [`router_logits`], kept for a router trace): the policy, the
/// experts and the combine. The router weights in `w` are not used.
pub fn forward_from_logits(
    w: &MoeWeights,
    x: &[f32],
    n_tokens: usize,
    logits: &[f64],
    policy: &Policy<f64>,
    latency_s: &[f64],
) -> Result<LayerOutput, LayerError> {
    let start = Instant::now();
    w.validate()?;
    check_x(w, x, n_tokens)?;
    let (m, m_h, e) = (w.m, w.m_h, w.n_experts());
    if logits.len() != n_tokens * e {
        return Err(LayerError::Shape(format!(
            "logits have {} values, expected {n_tokens} x {e}",
            logits.len()
        )));
    }
    check_latencies(latency_s, n_tokens, e)?;
    let probs = softmax_rows(logits, e);
    let (selections, token_latency_s, groups) = route(logits, n_tokens, e, policy, latency_s)?;
    let mut out = vec![0.0f32; n_tokens * m];
    let mut experts = Vec::with_capacity(e);
    for (q, group) in groups.iter().enumerate() {
        let t0 = Instant::now();
        let mut rows = Vec::with_capacity(group.len() * m);
        for &(t, _) in group {
            rows.extend_from_slice(&x[t * m..(t + 1) * m]);
        }
        let y = expert_ffn(&w.experts[q], m, m_h, &rows);
        for (&(t, wt), yt) in group.iter().zip(y.chunks_exact(m)) {
            for (o, v) in out[t * m..(t + 1) * m].iter_mut().zip(yt) {
                *o += wt * v;
            }
        }
        experts.push(ExpertStats {
            tokens: group.len(),
            weight_sum: group.iter().map(|&(_, wt)| wt as f64).sum(),
            flops: (group.len() * 6 * m * m_h) as f64,
            time_s: if group.is_empty() {
                0.0
            } else {
                t0.elapsed().as_secs_f64()
            },
        });
    }
    Ok(LayerOutput {
        out,
        probs,
        selections,
        token_latency_s,
        experts,
        time_s: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No token reads no weight: an expert that no token chose costs
    /// nothing, even with its weights stored as bf16 (before, every such
    /// expert's matrices were converted whole: on the tiny model 4.0–4.6 ms
    /// per decoded token against 1.1–1.7 ms after). A token still gets
    /// the products, equal to those over f32.
    #[test]
    fn no_token_converts_no_weight() {
        let vals: Vec<f32> = (0..64 * 48).map(|i| (i % 13) as f32 - 6.0).collect();
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let x: Vec<f32> = (0..2 * 48).map(|i| (i % 7) as f32 * 0.25).collect();
        // A fresh thread: its row buffer is empty.
        std::thread::spawn(move || {
            let w = WeightView::Bf16(&bytes);
            assert!(matmul_t(&[], 0, w, 48, 64).is_empty());
            assert_eq!(
                ROW_BUF.with_borrow(Vec::len),
                0,
                "a weight block was converted"
            );
            let y = matmul_t(&x, 2, w, 48, 64);
            assert_eq!(y, matmul_t(&x, 2, &vals, 48, 64));
            assert!(ROW_BUF.with_borrow(Vec::len) > 0);
        })
        .join()
        .unwrap();
    }

    fn policy(theta: f64) -> Policy<f64> {
        Policy::new(2, theta, 1).unwrap()
    }

    /// m = 2, m_h = 1, 3 experts; expert q: W1 = [1, 0], W3 = [0, 1],
    /// W2 = [[q+1], [-(q+1)]], so y_q(x) = (q+1)·silu(x0)·x1 · [1, -1].
    fn tiny() -> MoeWeights {
        let experts = (0..3)
            .map(|q| ExpertF32 {
                w1: vec![1.0, 0.0].into(),
                w3: vec![0.0, 1.0].into(),
                w2: vec![(q + 1) as f32, -((q + 1) as f32)].into(),
            })
            .collect();
        // Router: logits = [x0, 0, -x0] for x = [x0, x1].
        MoeWeights {
            m: 2,
            m_h: 1,
            router: vec![1.0, 0.0, 0.0, 0.0, -1.0, 0.0],
            experts,
        }
    }

    #[test]
    fn hand_computed_top2_output() {
        let w = tiny();
        let x = [1.0f32, 2.0];
        let out = forward(&w, &x, 1, &policy(0.0), &[0.01, 0.01, 0.01]).unwrap();
        // logits [1, 0, -1] → top-2 = experts 0, 1 with weights e/(e+1), 1/(e+1).
        let e1 = std::f64::consts::E;
        let (w0, w1) = (e1 / (e1 + 1.0), 1.0 / (e1 + 1.0));
        let s = 1.0 / (1.0 + (-1.0f64).exp()) * 2.0; // silu(1)·x1
        let y = w0 * 1.0 * s + w1 * 2.0 * s; // (q+1) factors 1 and 2
        assert_eq!(out.selections[0].experts(), &[0, 1]);
        assert!(
            (out.out[0] as f64 - y).abs() < 1e-5,
            "{} vs {y}",
            out.out[0]
        );
        assert!((out.out[1] as f64 + y).abs() < 1e-5);
        assert!((y - 1.8553).abs() < 1e-3, "{y}"); // 0.7311·2 · (0.7311 + 2·0.2689)
        assert_eq!(out.experts[0].tokens, 1);
        assert_eq!(out.experts[1].tokens, 1);
        assert_eq!(out.experts[2].tokens, 0);
        assert_eq!(out.experts[2].time_s, 0.0);
        assert!((out.token_latency_s[0] - 0.01).abs() < 1e-12);
        let psum: f64 = out.probs.iter().sum();
        assert!((psum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn slow_device_is_dropped_and_weights_renormalised() {
        let w = tiny();
        let x = [1.0f32, 2.0];
        // Expert 1 is 100x slower: p = (0.665, 0.245, 0.090), WLR = (66.5, 0.245),
        // κ = 0.245 / (0.245 + 66.5) ≈ 0.0037 ≤ 0.2 → expert 1 dropped.
        let out = forward(&w, &x, 1, &policy(0.2), &[0.01, 1.0, 0.01]).unwrap();
        assert_eq!(out.selections[0].experts(), &[0]);
        assert_eq!(out.selections[0].dropped(), &[1]);
        let s = 1.0 / (1.0 + (-1.0f64).exp()) * 2.0;
        assert!((out.out[0] as f64 - s).abs() < 1e-5); // weight 1 on expert 0
        assert_eq!(out.experts[1].tokens, 0);
        // Unreachable device (t = ∞) is removed even with θ = 0.
        let out = forward(&w, &x, 1, &policy(0.0), &[f64::INFINITY, 0.01, 0.01]).unwrap();
        assert_eq!(out.selections[0].experts(), &[1]);
        assert!((out.out[0] as f64 - 2.0 * s).abs() < 1e-5);
    }

    #[test]
    fn grouping_matches_per_token_loop() {
        let w = MoeWeights::random(24, 40, 8, 3);
        let n = 7;
        let x: Vec<f32> = (0..n * 24)
            .map(|i| ((i * 7919 % 97) as f32 / 48.5) - 1.0)
            .collect();
        let lat: Vec<f64> = (0..n * 8)
            .map(|i| 0.01 + 0.003 * ((i * 13) % 11) as f64)
            .collect();
        let out = forward(&w, &x, n, &policy(0.2), &lat).unwrap();
        let mut served = 0;
        for t in 0..n {
            let sel = &out.selections[t];
            served += sel.experts().len();
            let mut y = [0.0f64; 24];
            for (&q, &wt) in sel.experts().iter().zip(sel.weights()) {
                let yq = expert_ffn(&w.experts[q], 24, 40, &x[t * 24..(t + 1) * 24]);
                y.iter_mut()
                    .zip(&yq)
                    .for_each(|(a, b)| *a += wt * *b as f64);
            }
            for (o, yi) in out.out[t * 24..(t + 1) * 24].iter().zip(&y) {
                assert!((*o as f64 - yi).abs() < 1e-5);
            }
            let wsum: f64 = sel.weights().iter().sum();
            assert!((wsum - 1.0).abs() < 1e-12);
        }
        assert_eq!(out.experts.iter().map(|e| e.tokens).sum::<usize>(), served);
        assert!(served >= n && served <= 2 * n);
        let flops: f64 = out.experts.iter().map(|e| e.flops).sum();
        assert_eq!(flops, (served * 6 * 24 * 40) as f64);
    }

    #[test]
    fn blocked_parallel_product_equals_row_by_row() {
        // 3 x 300 x 101 multiply-adds: the parallel path, with a last block
        // of 101 % 16 = 5 rows.
        let (n, d_in, d_out) = (3, 300, 101);
        let x: Vec<f32> = (0..n * d_in)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        assert!(n * d_in * d_out >= PAR_MACS);
        let y = matmul_t(&x, n, &w, d_in, d_out);
        for t in 0..n {
            for o in 0..d_out {
                let want = dot(&w[o * d_in..(o + 1) * d_in], &x[t * d_in..(t + 1) * d_in]);
                assert_eq!(y[t * d_out + o], want);
            }
        }
        // Small products (serial path) agree too, and a hand value.
        assert_eq!(
            matmul_t(&[1.0, 2.0], 1, &[1.0, 0.0, 0.5, -1.0, 3.0, 3.0], 2, 3),
            [1.0, -1.5, 9.0]
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let w = tiny();
        assert!(matches!(
            forward(&w, &[1.0; 3], 1, &policy(0.2), &[0.01; 3]),
            Err(LayerError::Shape(_))
        ));
        assert!(matches!(
            forward(&w, &[1.0; 2], 1, &policy(0.2), &[0.01; 2]),
            Err(LayerError::Shape(_))
        ));
        assert!(matches!(
            forward(&w, &[], 0, &policy(0.2), &[0.01; 3]),
            Err(LayerError::Shape(_))
        ));
        assert!(matches!(
            forward(&w, &[1.0, 2.0], 1, &policy(0.2), &[0.01, -1.0, 0.01]),
            Err(LayerError::Policy(_))
        ));
        assert!(matches!(
            forward(&w, &[f32::NAN, 2.0], 1, &policy(0.2), &[0.01; 3]),
            Err(LayerError::Policy(_))
        ));
        let mut bad = tiny();
        bad.experts[1].w2 = vec![1.0].into();
        assert!(matches!(
            forward(&bad, &[1.0, 2.0], 1, &policy(0.2), &[0.01; 3]),
            Err(LayerError::Shape(_))
        ));
    }
}
