//! `config.json` of a Hugging Face Mixtral checkpoint.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// Largest size any config dimension may have (2^20), so that every tensor
/// size derived from them fits in 64 bits.
pub const MAX_DIM: usize = 1 << 20;

/// The Mixtral hyper-parameters the decoder needs, read from a Hugging Face
/// `config.json` (`MixtralConfig`), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MixtralConfig {
    /// Vocabulary size (rows of the embedding and of lm_head).
    pub vocab_size: usize,
    /// Model width m.
    pub hidden_size: usize,
    /// Expert FFN width m_h.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key / value heads (grouped-query attention: divides the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Most positions a sequence may have.
    pub max_position_embeddings: usize,
    /// ε of RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Attention window in tokens (a query sees itself and the previous
    /// `window - 1` tokens); `None`: full causal attention.
    pub sliding_window: Option<usize>,
    /// Experts per layer.
    pub num_local_experts: usize,
    /// Experts per token of plain top-k routing (the k of the model).
    pub num_experts_per_tok: usize,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (`eos_token_id`, a number or a list; may be empty).
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token id (`bos_token_id`), when the config has one.
    pub bos_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    sliding_window: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    eos_token_id: Option<serde_json::Value>,
    bos_token_id: Option<u64>,
}

fn need(v: Option<usize>, key: &str) -> Result<usize, ModelError> {
    match v {
        Some(0) => Err(ModelError::Config {
            key: key.into(),
            message: "must be > 0".into(),
        }),
        Some(x) => Ok(x),
        None => Err(ModelError::Config {
            key: key.into(),
            message: "missing".into(),
        }),
    }
}

fn bad(key: &str, message: String) -> ModelError {
    ModelError::Config {
        key: key.into(),
        message,
    }
}

impl MixtralConfig {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ModelError> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let model_type = raw.model_type.unwrap_or_default();
        if model_type != "mixtral" {
            return Err(ModelError::UnknownArchitecture {
                path: path.to_owned(),
                model_type,
            });
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(bad("hidden_act", format!("{act:?}: only \"silu\"")));
            }
        }
        let rope_type = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.clone());
        if let Some(t) = rope_type.filter(|t| t != "default") {
            return Err(bad(
                "rope_parameters.rope_type",
                format!("{t:?}: only \"default\""),
            ));
        }
        if let Some(v) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(bad(
                "rope_scaling",
                format!("{v}: RoPE scaling is not supported"),
            ));
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let kv_heads = need(
            raw.num_key_value_heads.or(raw.num_attention_heads),
            "num_key_value_heads",
        )?;
        if heads % kv_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => need(Some(d), "head_dim")?,
            None => {
                if hidden_size % heads != 0 {
                    return Err(bad(
                        "hidden_size",
                        format!("{hidden_size} is not a multiple of num_attention_heads = {heads}"),
                    ));
                }
                hidden_size / heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("{head_dim} is odd (RoPE pairs)")));
        }
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(1e6);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(bad(
                "rope_theta",
                format!("{rope_theta}: must be finite and > 1"),
            ));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-5);
        if !(rms_norm_eps.is_finite() && rms_norm_eps >= 0.0) {
            return Err(bad(
                "rms_norm_eps",
                format!("{rms_norm_eps}: must be finite and >= 0"),
            ));
        }
        let num_local_experts = need(raw.num_local_experts, "num_local_experts")?;
        if num_local_experts > crate::layer::MAX_EXPERTS {
            return Err(bad(
                "num_local_experts",
                format!(
                    "{num_local_experts}: at most {} experts",
                    crate::layer::MAX_EXPERTS
                ),
            ));
        }
        let k = need(raw.num_experts_per_tok, "num_experts_per_tok")?;
        if k > num_local_experts {
            return Err(bad(
                "num_experts_per_tok",
                format!("{k} > num_local_experts = {num_local_experts}"),
            ));
        }
        let c = MixtralConfig {
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            rms_norm_eps,
            rope_theta,
            sliding_window: match raw.sliding_window {
                Some(0) => return Err(bad("sliding_window", "must be > 0 or null".into())),
                w => w,
            },
            num_local_experts,
            num_experts_per_tok: k,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: match raw.bos_token_id {
                None => None,
                Some(b) => Some(
                    u32::try_from(b)
                        .map_err(|_| bad("bos_token_id", format!("{b}: not a token id")))?,
                ),
            },
            eos_token_ids: match raw.eos_token_id {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(v) => {
                    let ids = match &v {
                        serde_json::Value::Array(a) => a.iter().map(|x| x.as_u64()).collect(),
                        x => vec![x.as_u64()],
                    };
                    ids.into_iter()
                        .map(|x| x.and_then(|x| u32::try_from(x).ok()))
                        .collect::<Option<Vec<u32>>>()
                        .ok_or_else(|| bad("eos_token_id", format!("{v}: not token ids")))?
                }
            },
        };
        // Every size a tensor shape is built from stays far from overflow.
        for (key, v) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("head_dim", c.head_dim),
        ] {
            if v > MAX_DIM {
                return Err(bad(key, format!("{v}: at most {MAX_DIM}")));
            }
        }
        Ok(c)
    }

    /// Parameters of the model (embedding, attention, router, experts,
    /// norms, lm_head unless tied).
    pub fn n_params(&self) -> u64 {
        let (v, m, f) = (
            self.vocab_size as u128,
            self.hidden_size as u128,
            self.intermediate_size as u128,
        );
        let q = (self.num_attention_heads as u128) * self.head_dim as u128;
        let kv = (self.num_key_value_heads as u128) * self.head_dim as u128;
        let e = self.num_local_experts as u128;
        let layer = m * q * 2 + m * kv * 2 + e * m + e * 3 * m * f + 2 * m;
        let head = if self.tie_word_embeddings { 0 } else { v * m };
        let n = v * m + self.num_hidden_layers as u128 * layer + m + head;
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "mixtral", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64,
            "num_local_experts": 4, "num_experts_per_tok": 2,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<MixtralConfig, ModelError> {
        MixtralConfig::from_json_str(&v.to_string(), Path::new("x/config.json"))
    }

    #[test]
    fn defaults_and_transformers5_rope() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.sliding_window, None);
        assert!(!c.tie_word_embeddings);
        // 32·16 + 2·(16·16·2 + 16·8·2 + 4·16 + 4·3·16·24 + 32) + 16 + 32·16
        assert_eq!(
            c.n_params(),
            512 + 2 * (512 + 256 + 64 + 4608 + 32) + 16 + 512
        );
        let mut v = base();
        v["rope_parameters"] = serde_json::Value::Null;
        v["rope_theta"] = serde_json::json!(500.0);
        assert_eq!(parse(&v).unwrap().rope_theta, 500.0);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let mut v = base();
        v["model_type"] = serde_json::json!("llama");
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("x/config.json") && e.contains("\"llama\""),
            "{e}"
        );
        let mut v = base();
        v["num_key_value_heads"] = serde_json::json!(3);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("vocab_size");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("`vocab_size`: missing"), "{e}");
        let mut v = base();
        v["vocab_size"] = serde_json::json!(1u64 << 40);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("`vocab_size`: 1099511627776: at most 1048576"),
            "{e}"
        );
        let mut v = base();
        v["num_hidden_layers"] = serde_json::json!(MAX_DIM);
        v["hidden_size"] = serde_json::json!(MAX_DIM);
        v["intermediate_size"] = serde_json::json!(MAX_DIM);
        v["num_local_experts"] = serde_json::json!(64);
        assert_eq!(parse(&v).unwrap().n_params(), u64::MAX); // saturates, no overflow
        let e = MixtralConfig::from_json_str("{", Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.json: "), "{e}");
    }
}
