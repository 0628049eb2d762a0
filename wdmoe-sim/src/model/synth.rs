//! Synthetic Mixtral checkpoints: deterministic random weights (seeded),
//! written in the Hugging Face hub layout, for tests and benchmarks.

use std::path::Path;

use super::checkpoint::{write_safetensors, StoredDtype, TensorToWrite};
use super::ModelError;

/// A small config (vocab 64, hidden 32, 4 heads over 2 KV heads, 4
/// experts, top-2, 2 layers) as `config.json` text fields.
pub fn tiny_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "sliding_window": null,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "tie_word_embeddings": false,
        "hidden_act": "silu"
    })
}

/// A tensor: hub name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// How the checkpoint is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Storage dtype of every tensor.
    pub dtype: StoredDtype,
    /// Shards (1: a single `model.safetensors`; more: an index and shards).
    pub shards: usize,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            dtype: StoredDtype::F32,
            shards: 1,
        }
    }
}

fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn get(c: &serde_json::Value, key: &str) -> Result<usize, ModelError> {
    c[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::Config {
            key: key.into(),
            message: "missing or not a number".into(),
        })
}

/// The tensors (hub names, shapes, seeded values) of a checkpoint for
/// `config` (a `config.json` object). Norm weights are drawn around 1,
/// matrices uniform with scale 1/sqrt(fan-in).
pub fn tensors(config: &serde_json::Value, seed: u64) -> Result<Vec<NamedTensor>, ModelError> {
    let (v, m, f) = (
        get(config, "vocab_size")?,
        get(config, "hidden_size")?,
        get(config, "intermediate_size")?,
    );
    let heads = get(config, "num_attention_heads")?;
    let kv = config["num_key_value_heads"]
        .as_u64()
        .map_or(heads, |x| x as usize);
    let hd = config["head_dim"]
        .as_u64()
        .map_or(m / heads.max(1), |x| x as usize);
    let (layers, e) = (
        get(config, "num_hidden_layers")?,
        get(config, "num_local_experts")?,
    );
    let tied = config["tie_word_embeddings"].as_bool().unwrap_or(false);
    let mut state = seed ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::new();
    let mut mat = |name: String, rows: usize, cols: usize, out: &mut Vec<_>| {
        let s = 1.0 / (cols as f32).sqrt();
        let vals = (0..rows * cols).map(|_| uniform(&mut state) * s).collect();
        out.push((name, vec![rows, cols], vals));
    };
    mat("model.embed_tokens.weight".into(), v, m, &mut out);
    let mut norm_state = seed.wrapping_mul(31) ^ 0x51ED_270B;
    let mut norm = |name: String, out: &mut Vec<_>| {
        let vals = (0..m)
            .map(|_| 1.0 + 0.1 * uniform(&mut norm_state))
            .collect();
        out.push((name, vec![m], vals));
    };
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        norm(format!("{p}.input_layernorm.weight"), &mut out);
        norm(format!("{p}.post_attention_layernorm.weight"), &mut out);
        mat(
            format!("{p}.self_attn.q_proj.weight"),
            heads * hd,
            m,
            &mut out,
        );
        mat(format!("{p}.self_attn.k_proj.weight"), kv * hd, m, &mut out);
        mat(format!("{p}.self_attn.v_proj.weight"), kv * hd, m, &mut out);
        mat(
            format!("{p}.self_attn.o_proj.weight"),
            m,
            heads * hd,
            &mut out,
        );
        mat(format!("{p}.block_sparse_moe.gate.weight"), e, m, &mut out);
        for q in 0..e {
            let x = format!("{p}.block_sparse_moe.experts.{q}");
            mat(format!("{x}.w1.weight"), f, m, &mut out);
            mat(format!("{x}.w3.weight"), f, m, &mut out);
            mat(format!("{x}.w2.weight"), m, f, &mut out);
        }
    }
    norm("model.norm.weight".into(), &mut out);
    if !tied {
        mat("lm_head.weight".into(), v, m, &mut out);
    }
    Ok(out)
}

/// Writes `config.json` and seeded random weights for `config` into `dir`
/// (created if needed) in `layout`.
pub fn write_checkpoint(
    dir: &Path,
    config: &serde_json::Value,
    layout: Layout,
    seed: u64,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        serde_json::to_string_pretty(config).unwrap_or_default(),
    )
    .map_err(io(&cfg))?;
    let all: Vec<TensorToWrite> = tensors(config, seed)?
        .into_iter()
        .map(|(name, shape, values)| TensorToWrite {
            name,
            shape,
            values,
            dtype: layout.dtype,
        })
        .collect();
    let shards = layout.shards.max(1);
    if shards == 1 {
        return write_safetensors(&dir.join("model.safetensors"), &all);
    }
    let per = all.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (i, chunk) in all.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        for t in chunk {
            map.insert(t.name.clone(), serde_json::Value::String(file.clone()));
        }
        write_safetensors(&dir.join(&file), chunk)?;
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, index.to_string()).map_err(io(&path))
}
