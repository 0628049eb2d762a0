//! The Mixtral MoE layer executor: router GEMV + softmax, the WDMoE selection
//! policy of [`wdmoe_core::select`] per token (with the per-expert latencies
//! the caller provides), token grouping per expert, the expert FFNs
//! `y = W2 · (silu(W1·x) ⊙ (W3·x))` and the weighted combine (eq. 1),
//! returning the layer output and per-expert accounting.
//!
//! [`cpu::forward`] is the f32 reference (any sizes, no GPU); with the `cuda`
//! feature, `gpu::GpuLayer` runs the same step on a CUDA GPU (wdmoe-cuda's
//! fp16 kernels) and times it with CUDA events.
//!
//! ```
//! use wdmoe_core::select::Policy;
//! use wdmoe_sim::layer::{cpu, MoeWeights};
//!
//! let w = MoeWeights::random(8, 16, 4, 7);           // m = 8, m_h = 16, 4 experts
//! let x = vec![0.5f32; 2 * 8];                        // 2 tokens
//! let policy = Policy::new(2, 0.2, 1).unwrap();
//! let latency_s = [0.01, 0.02, 0.5, 0.01];            // per expert, all tokens
//! let out = cpu::forward(&w, &x, 2, &policy, &latency_s).unwrap();
//! assert_eq!(out.out.len(), 2 * 8);
//! assert_eq!(out.experts.iter().map(|e| e.tokens).sum::<usize>(),
//!            out.selections.iter().map(|s| s.experts().len()).sum::<usize>());
//! ```

use std::fmt;

use wdmoe_core::select::Selection;

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod weights;

pub use weights::{HalfDtype, WeightMatrix, WeightView};

/// Most experts a layer may have (capacity of a [`Selection`]).
pub const MAX_EXPERTS: usize = 64;

/// One token's routing decision.
pub type TokenSelection = Selection<f64, MAX_EXPERTS>;

/// Weights of one expert, row-major, computed in f32: `w1`, `w3`:
/// `[m_h][m]`, `w2`: `[m][m_h]`; each owned f32 or f16/bf16 in a
/// checkpoint's memory map ([`WeightMatrix`], converted per product).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertF32 {
    /// Gate projection W1, `[m_h][m]`.
    pub w1: WeightMatrix,
    /// Up projection W3, `[m_h][m]`.
    pub w3: WeightMatrix,
    /// Down projection W2, `[m][m_h]`.
    pub w2: WeightMatrix,
}

/// A whole MoE layer: router G (`[n_experts][m]`) and the experts.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeWeights {
    /// Hidden size m.
    pub m: usize,
    /// Expert hidden size m_h.
    pub m_h: usize,
    /// Router (gating) weights, `[n_experts][m]`.
    pub router: Vec<f32>,
    /// The experts.
    pub experts: Vec<ExpertF32>,
}

impl MoeWeights {
    /// Number of experts.
    pub fn n_experts(&self) -> usize {
        self.experts.len()
    }

    /// Random weights (uniform, scaled by 1/sqrt(fan-in)), reproducible from `seed`.
    pub fn random(m: usize, m_h: usize, n_experts: usize, seed: u64) -> MoeWeights {
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // splitmix64 -> uniform [-1, 1)
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let s_m = 1.7 / (m as f32).sqrt();
        let s_h = 1.7 / (m_h as f32).sqrt();
        let mut mat = |n: usize, s: f32| (0..n).map(|_| next() * s).collect::<Vec<f32>>();
        let router = mat(n_experts * m, s_m);
        let experts = (0..n_experts)
            .map(|_| ExpertF32 {
                w1: mat(m_h * m, s_m).into(),
                w3: mat(m_h * m, s_m).into(),
                w2: mat(m * m_h, s_h).into(),
            })
            .collect();
        MoeWeights {
            m,
            m_h,
            router,
            experts,
        }
    }

    /// Checks that every matrix has the size m, m_h and the expert count say.
    pub fn validate(&self) -> Result<(), LayerError> {
        let (m, m_h, e) = (self.m, self.m_h, self.experts.len());
        if m == 0 || m_h == 0 || e == 0 || e > MAX_EXPERTS {
            return Err(LayerError::Shape(format!(
                "m={m}, m_h={m_h}, experts={e} (1..={MAX_EXPERTS})"
            )));
        }
        if self.router.len() != e * m {
            return Err(LayerError::Shape(format!(
                "router has {} values, expected {e} x {m}",
                self.router.len()
            )));
        }
        for (q, x) in self.experts.iter().enumerate() {
            if x.w1.len() != m_h * m || x.w3.len() != m_h * m || x.w2.len() != m * m_h {
                return Err(LayerError::Shape(format!(
                    "expert {q}: matrix sizes do not match m={m}, m_h={m_h}"
                )));
            }
        }
        Ok(())
    }
}

/// Per-expert accounting of one layer step.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertStats {
    /// Tokens this expert served.
    pub tokens: usize,
    /// Sum of its combine weights over those tokens.
    pub weight_sum: f64,
    /// FLOPs of its FFN for those tokens (eq. 4 without the activation term:
    /// `tokens · 6 · m · m_h`).
    pub flops: f64,
    /// Measured execution time of its FFN, in seconds (host clock on the CPU, CUDA
    /// events on the GPU; on the GPU's grouped prefill path, one launch for
    /// all experts, its time shared out in proportion to tokens); 0 when it
    /// served no token.
    pub time_s: f64,
}

/// Result of one layer step.
#[derive(Debug, Clone)]
pub struct LayerOutput {
    /// Layer output `o = Σ_q w_q · y_q` per token, `[n_tokens][m]`.
    pub out: Vec<f32>,
    /// Router probabilities `[n_tokens][n_experts]` (softmax of the logits).
    pub probs: Vec<f64>,
    /// The policy's decision per token.
    pub selections: Vec<TokenSelection>,
    /// Per-token layer latency of eq. (7) under the given latencies, in seconds.
    pub token_latency_s: Vec<f64>,
    /// Per-expert accounting.
    pub experts: Vec<ExpertStats>,
    /// Measured time of the whole step, in seconds (router to combine).
    pub time_s: f64,
}

/// Errors of the layer executor (more variants may come: `#[non_exhaustive]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LayerError {
    /// Sizes that do not fit together.
    Shape(String),
    /// The selection policy rejected an input (NaN logits, bad latencies, …).
    Policy(wdmoe_core::Error),
    /// A GPU error (feature `cuda`), as wdmoe-cuda typed it (driver code,
    /// operation, shapes); also its [`std::error::Error::source`].
    #[cfg(feature = "cuda")]
    Gpu(wdmoe_cuda::Error),
}

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerError::Shape(s) => write!(f, "layer shape error: {s}"),
            LayerError::Policy(e) => write!(f, "selection policy error: {e:?}"),
            #[cfg(feature = "cuda")]
            LayerError::Gpu(e) => write!(f, "GPU error: {e}"),
        }
    }
}

impl std::error::Error for LayerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "cuda")]
            LayerError::Gpu(e) => Some(e),
            _ => None,
        }
    }
}

/// Latency of expert `q` for token `t`: `latency_s` holds either one value per
/// expert (all tokens) or `[n_tokens][n_experts]`.
pub(crate) fn latencies_for(latency_s: &[f64], t: usize, e: usize) -> &[f64] {
    if latency_s.len() == e {
        latency_s
    } else {
        &latency_s[t * e..(t + 1) * e]
    }
}

pub(crate) fn check_latencies(
    latency_s: &[f64],
    n_tokens: usize,
    e: usize,
) -> Result<(), LayerError> {
    if latency_s.len() != e && latency_s.len() != n_tokens * e {
        return Err(LayerError::Shape(format!(
            "latency_s has {} values: expected {e} (per expert) or {n_tokens} x {e}",
            latency_s.len()
        )));
    }
    Ok(())
}

/// Runs the policy for every token from its logits; groups tokens per expert
/// as `(token, weight)` lists.
#[allow(clippy::type_complexity)]
pub(crate) fn route(
    logits: &[f64],
    n_tokens: usize,
    e: usize,
    policy: &wdmoe_core::select::Policy<f64>,
    latency_s: &[f64],
) -> Result<(Vec<TokenSelection>, Vec<f64>, Vec<Vec<(usize, f32)>>), LayerError> {
    use rayon::prelude::*;
    let one = |t: usize| -> Result<(TokenSelection, f64), LayerError> {
        let lat = latencies_for(latency_s, t, e);
        let sel: TokenSelection =
            wdmoe_core::select::select(policy, &logits[t * e..(t + 1) * e], lat)
                .map_err(LayerError::Policy)?;
        let l = sel.token_latency_s(lat).map_err(LayerError::Policy)?;
        Ok((sel, l))
    };
    // Tokens are independent: large steps (prefill) run the policy in
    // parallel (an indexed collect: each result written once, in place);
    // the grouping below keeps token order either way.
    let per: Vec<Result<(TokenSelection, f64), LayerError>> = if n_tokens >= 256 {
        (0..n_tokens).into_par_iter().map(one).collect()
    } else {
        (0..n_tokens).map(one).collect()
    };
    let mut selections = Vec::with_capacity(n_tokens);
    let mut token_latency = Vec::with_capacity(n_tokens);
    let mut groups: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
    for (t, r) in per.into_iter().enumerate() {
        let (sel, l) = r?;
        for (&q, &w) in sel.experts().iter().zip(sel.weights()) {
            groups[q].push((t, w as f32));
        }
        token_latency.push(l);
        selections.push(sel);
    }
    Ok((selections, token_latency, groups))
}

pub(crate) fn softmax_rows(logits: &[f64], e: usize) -> Vec<f64> {
    let mut p = logits.to_vec();
    for row in p.chunks_mut(e) {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - mx).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    p
}
