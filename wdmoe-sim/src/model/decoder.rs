//! The dense parts of the Mixtral decoder, f32 as Hugging Face transformers
//! computes them: RMSNorm, rotary position embedding (rotate-half layout),
//! grouped-query attention over a KV cache with the causal (optionally
//! sliding-window) mask, and the linear layers.

use rayon::prelude::*;

use crate::layer::cpu::dot;
use crate::layer::WeightView;

/// Multiply-adds above which attention runs in parallel.
const PAR_MACS: usize = 1 << 16;

/// `y = x Wᵀ`: `x` is `[n][d_in]`, `w` is `[d_out][d_in]` (PyTorch's
/// `nn.Linear` layout), returns `[n][d_out]`; the layer executor's
/// [`crate::layer::cpu::matmul_t`] (parallel over blocks of output rows;
/// f16/bf16 weights converted per block).
pub fn linear<'w>(
    x: &[f32],
    n: usize,
    w: impl Into<WeightView<'w>>,
    d_in: usize,
    d_out: usize,
) -> Vec<f32> {
    crate::layer::cpu::matmul_t(x, n, w, d_in, d_out)
}

/// RMSNorm of every row of `x` (`[n][d]`): `w ⊙ x / sqrt(mean(x²) + ε)`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64) -> Vec<f32> {
    let d = w.len();
    let mut out = vec![0.0f32; x.len()];
    for (o, r) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = r.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps as f32).sqrt();
        for ((o, v), g) in o.iter_mut().zip(r).zip(w) {
            *o = g * (v * inv);
        }
    }
    out
}

/// Rotary position embedding of Hugging Face's layout: dimension `i` of
/// the first half pairs with `i + d/2` (rotate-half), frequencies
/// `θ^(-2i/d)`, angles in f32 like transformers.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    inv_freq: Vec<f32>,
}

impl Rope {
    /// RoPE of heads of width `head_dim` (even) with base `theta`.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let base = theta as f32;
        let inv_freq = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Rope { head_dim, inv_freq }
    }

    /// Rotates every head of `x` (`[heads][head_dim]`, one token) to `position`.
    pub fn apply(&self, x: &mut [f32], position: usize) {
        let half = self.head_dim / 2;
        let (cos, sin): (Vec<f32>, Vec<f32>) = self
            .inv_freq
            .iter()
            .map(|f| {
                let a = (position as f32) * f;
                (a.cos(), a.sin())
            })
            .unzip();
        for h in x.chunks_exact_mut(self.head_dim) {
            let (a, b) = h.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/// Keys and values of every layer for the positions seen so far.
#[derive(Debug, Clone)]
pub struct KvCache {
    kv_width: usize,
    /// Per layer, `[position][kv_heads·head_dim]`.
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_width` = kv_heads·head_dim.
    pub fn new(layers: usize, kv_width: usize) -> Self {
        KvCache {
            kv_width,
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            len: 0,
        }
    }

    /// Positions cached (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets positions `n..` (e.g. to score another continuation of a shared prefix).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len {
            for l in self.k.iter_mut().chain(self.v.iter_mut()) {
                l.truncate(n * self.kv_width);
            }
            self.len = n;
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every layer's entries past `n` (after a failed forward call).
    pub(crate) fn rollback(&mut self, n: usize) {
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.truncate(n * self.kv_width);
        }
        self.len = n;
    }

    pub(crate) fn layer_len(&self, layer: usize) -> usize {
        self.k[layer].len() / self.kv_width
    }

    pub(crate) fn push(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }
}

/// Shape of the attention block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
}

/// Attention of `n` new queries `q` (`[n][heads·head_dim]`, roped) at
/// positions `start..start+n` over cached keys/values `0..start+n`
/// (`[pos][kv_heads·head_dim]`): causal, within the window, softmax in f32.
/// Returns `[n][heads·head_dim]`.
pub(crate) fn attention(
    s: AttnShape,
    q: &[f32],
    n: usize,
    start: usize,
    keys: &[f32],
    values: &[f32],
) -> Vec<f32> {
    let (hd, qw, kvw) = (s.head_dim, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let group = s.heads / s.kv_heads;
    let scale = (hd as f32).powf(-0.5);
    let mut out = vec![0.0f32; n * qw];
    let work = n * (start + n) * qw;
    let one = |(idx, o): (usize, &mut [f32])| {
        let (t, h) = (idx / s.heads, idx % s.heads);
        let pos = start + t;
        let lo = match s.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let qh = &q[t * qw + h * hd..t * qw + (h + 1) * hd];
        let kvh = h / group;
        let scores: Vec<f32> = (lo..=pos)
            .map(|j| dot(qh, &keys[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd]) * scale)
            .collect();
        let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let ex: Vec<f32> = scores.iter().map(|v| (v - mx).exp()).collect();
        let sum: f32 = ex.iter().sum();
        for (j, p) in (lo..=pos).zip(&ex) {
            let vr = &values[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
            for (oi, vi) in o.iter_mut().zip(vr) {
                *oi += (p / sum) * vi;
            }
        }
    };
    if work >= PAR_MACS {
        out.par_chunks_exact_mut(hd).enumerate().for_each(one);
    } else {
        out.chunks_exact_mut(hd).enumerate().for_each(one);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_half_apart() {
        // head_dim 4, θ = 100: freqs 1 and 0.1; position 2 → angles 2, 0.2.
        let r = Rope::new(4, 100.0);
        let mut x = [1.0f32, 0.0, 0.0, 0.0];
        r.apply(&mut x, 2);
        assert!((x[0] - 2f32.cos()).abs() < 1e-6 && (x[2] - 2f32.sin()).abs() < 1e-6);
        assert_eq!((x[1], x[3]), (0.0, 0.0));
        let mut y = [0.0f32, 1.0, 0.0, 0.0];
        r.apply(&mut y, 2);
        assert!((y[1] - 0.2f32.cos()).abs() < 1e-6 && (y[3] - 0.2f32.sin()).abs() < 1e-6);
        let mut z = [0.3f32, -0.7, 1.1, 0.2];
        r.apply(&mut z, 0);
        assert_eq!(z, [0.3, -0.7, 1.1, 0.2]);
    }

    #[test]
    fn rms_norm_by_hand() {
        let y = rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn window_limits_keys() {
        // One head of width 2, 3 positions; the query matches every key
        // equally, so the output is the mean of the values it may see.
        let s = AttnShape {
            heads: 1,
            kv_heads: 1,
            head_dim: 2,
            window: Some(2),
        };
        let keys = [0.0f32; 6];
        let values = [1.0f32, 0.0, 2.0, 0.0, 4.0, 0.0];
        let q = [1.0f32, 1.0];
        let o = attention(s, &q, 1, 2, &keys, &values);
        assert!((o[0] - 3.0).abs() < 1e-6, "{o:?}"); // positions 1, 2
        let o = attention(AttnShape { window: None, ..s }, &q, 1, 2, &keys, &values);
        assert!((o[0] - 7.0 / 3.0).abs() < 1e-6, "{o:?}");
    }

    #[test]
    fn linear_matches_by_hand() {
        let y = linear(&[1.0, 2.0], 1, &[1.0, 0.0, 0.5, -1.0, 3.0, 3.0], 2, 3);
        assert_eq!(y, vec![1.0, -1.5, 9.0]);
    }
}
