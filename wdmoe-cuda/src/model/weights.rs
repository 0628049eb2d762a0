//! The model's shape and where its weights come from: a checkpoint reader
//! of the caller ([`WeightSource`], Hugging Face tensor names) or random
//! fp16 values generated on the GPU (benchmarks at full size).

use half::f16;

use crate::error::{Error, Result};

/// The dimensions of a Mixtral model (as its `config.json` gives them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size m.
    pub hidden: usize,
    /// Expert hidden size m_h.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Experts per layer.
    pub experts: usize,
    /// RMSNorm ε.
    pub rms_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Sliding attention window in positions (`None`: full causal).
    pub window: Option<usize>,
    /// lm_head shares the embedding matrix.
    pub tied: bool,
}

impl ModelShape {
    /// Mixtral-8x7B (32 layers, m = 4096, m_h = 14336, 32/8 heads of 128,
    /// 8 experts, vocabulary 32,000, θ = 10⁶).
    pub fn mixtral_8x7b() -> ModelShape {
        ModelShape {
            vocab: 32000,
            hidden: 4096,
            intermediate: 14336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            experts: 8,
            rms_eps: 1e-5,
            rope_theta: 1e6,
            window: None,
            tied: false,
        }
    }

    /// Checks what the kernels need: m and m_h multiples of 16, the
    /// attention shape of [`crate::model`]'s kernels, 1..=64 experts.
    pub fn check(&self) -> Result<()> {
        let bad = |detail: String| Error::Unsupported {
            op: "ModelShape::check",
            detail,
        };
        if self.vocab == 0 || self.layers == 0 {
            return Err(bad(format!(
                "vocab={} layers={}: both must be positive",
                self.vocab, self.layers
            )));
        }
        if self.hidden % 16 != 0 || self.intermediate % 16 != 0 || self.hidden == 0 {
            return Err(bad(format!(
                "hidden={} intermediate={}: multiples of 16 needed by the expert kernels",
                self.hidden, self.intermediate
            )));
        }
        if (self.heads * self.head_dim) % 8 != 0 {
            return Err(bad(format!(
                "heads x head_dim = {} must be a multiple of 8",
                self.heads * self.head_dim
            )));
        }
        if self.experts == 0 || self.experts > crate::moe::MAX_EXPERTS {
            return Err(bad(format!("experts={} (1..=64)", self.experts)));
        }
        let eps_ok = self.rms_eps.is_finite() && self.rms_eps > 0.0;
        let theta_ok = self.rope_theta.is_finite() && self.rope_theta > 1.0;
        if !eps_ok || !theta_ok {
            return Err(bad(format!(
                "rms_eps={} (> 0), rope_theta={} (> 1)",
                self.rms_eps, self.rope_theta
            )));
        }
        Ok(())
    }

    /// Width of the fused q|k|v projection output.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// fp16 bytes of one layer's attention projections.
    pub fn attn_bytes(&self) -> usize {
        (self.qkv_width() + self.heads * self.head_dim) * self.hidden * 2
    }

    /// fp16 bytes of one expert (W1, W3, W2).
    pub fn expert_bytes(&self) -> usize {
        3 * self.hidden * self.intermediate * 2
    }

    /// fp16 bytes of every weight (embedding, layers, lm_head).
    pub fn weight_bytes(&self) -> usize {
        let embed = self.vocab * self.hidden * 2;
        let layer = self.attn_bytes() + self.experts * (self.expert_bytes() + self.hidden * 2);
        embed * if self.tied { 1 } else { 2 } + self.layers * layer
    }

    /// Bytes a decode step must read at least when each token uses `experts_read`
    /// experts per layer on average: attention, router and those experts of
    /// every layer, and lm_head (the weight-read floor).
    pub fn decode_floor_bytes(&self, experts_read: f64) -> f64 {
        let per_layer = self.attn_bytes() as f64
            + (self.experts * self.hidden * 2) as f64
            + experts_read * self.expert_bytes() as f64;
        self.layers as f64 * per_layer + (self.vocab * self.hidden * 2) as f64
    }
}

/// A checkpoint the model's weights are read from, by Hugging Face Mixtral
/// tensor name (`model.layers.3.self_attn.q_proj.weight`, ...), row-major.
pub trait WeightSource {
    /// The tensor as fp16 values; exactly `len` of them.
    fn tensor_f16(&mut self, name: &str, len: usize) -> std::result::Result<Vec<f16>, String>;
    /// The tensor as fp32 values (norm weights); exactly `len` of them.
    fn tensor_f32(&mut self, name: &str, len: usize) -> std::result::Result<Vec<f32>, String>;
}

/// A tensor the source returned, checked: its error or a wrong length
/// becomes [`Error::Weights`] naming it.
fn checked<T>(name: &str, len: usize, got: std::result::Result<Vec<T>, String>) -> Result<Vec<T>> {
    let weights = |detail| Error::Weights {
        name: name.to_string(),
        detail,
    };
    let v = got.map_err(weights)?;
    if v.len() != len {
        return Err(weights(format!("{} values, expected {len}", v.len())));
    }
    Ok(v)
}

/// Reads one fp16 tensor, naming it in the error.
pub(crate) fn read_f16(src: &mut dyn WeightSource, name: &str, len: usize) -> Result<Vec<f16>> {
    checked(name, len, src.tensor_f16(name, len))
}

/// Reads one fp32 tensor (norm weights), naming it in the error.
pub(crate) fn read_f32(src: &mut dyn WeightSource, name: &str, len: usize) -> Result<Vec<f32>> {
    checked(name, len, src.tensor_f32(name, len))
}

/// The RoPE table `[positions][head_dim/2]` of (cos, sin) pairs, computed
/// in f32 as the CPU model and transformers do (inverse frequencies
/// `θ^(-2i/d)`, angle = position · frequency).
pub(crate) fn rope_table(head_dim: usize, theta: f64, positions: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let base = theta as f32;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut out = Vec::with_capacity(positions * head_dim);
    for p in 0..positions {
        for f in &inv {
            let a = (p as f32) * f;
            out.push(a.cos());
            out.push(a.sin());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_floor_matches_the_baseline_script() {
        // mixtral_model_baseline.py: per layer 2 (m·m·2 + m·kv·2 + 8m +
        // 2·3·m·m_h) bytes, + 2·32000·m for lm_head.
        let s = ModelShape::mixtral_8x7b();
        let (m, mh, kv) = (4096.0, 14336.0, 1024.0);
        let per_layer = 2.0 * (m * m * 2.0 + m * kv * 2.0 + 8.0 * m + 2.0 * 3.0 * m * mh);
        let want = 32.0 * per_layer + 2.0 * 32000.0 * m;
        assert_eq!(s.decode_floor_bytes(2.0), want);
        assert!(s.check().is_ok());
        // 46.7 B parameters in fp16.
        let params = s.weight_bytes() as f64 / 2.0;
        assert!((params / 1e9 - 46.70).abs() < 0.01, "{params}");
    }

    #[test]
    fn shape_check_names_what_is_wrong() {
        let mut s = ModelShape::mixtral_8x7b();
        s.hidden = 4100;
        let e = s.check().unwrap_err().to_string();
        assert!(e.contains("hidden=4100"), "{e}");
        let mut s = ModelShape::mixtral_8x7b();
        s.experts = 0;
        assert!(s.check().is_err());
        let mut s = ModelShape::mixtral_8x7b();
        s.rms_eps = f64::NAN;
        assert!(s.check().is_err());
    }

    #[test]
    fn rope_table_pairs_cos_and_sin() {
        let t = rope_table(4, 10000.0, 3);
        assert_eq!(t.len(), 3 * 4);
        // position 0: cos 1, sin 0
        assert_eq!(&t[..4], &[1.0, 0.0, 1.0, 0.0]);
        // position 2, frequency 1: angle 2
        assert_eq!(t[8], 2.0f32.cos());
        assert_eq!(t[9], 2.0f32.sin());
        // frequency 10000^(-1/2) = 0.01: angle 0.02
        assert!((t[10] - (0.02f32).cos()).abs() < 1e-7);
    }
}
