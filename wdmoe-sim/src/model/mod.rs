//! A Mixtral model on the CPU: Hugging Face checkpoints in, logits and the
//! routing of every token and layer out, with the WDMoE policy deciding
//! which experts serve each token.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | `config.json` (`MixtralConfig`), validated |
//! | [`checkpoint`] | safetensors files, memory-mapped, single file or sharded index; f32/f16/bf16 |
//! | [`tokenizer`] | `tokenizer.json` (feature `tokenizer`) |
//! | [`decoder`] | RMSNorm, RoPE (rotate-half), grouped-query attention, KV cache, linear layers |
//! | [`moe`] | the MoE block over [`crate::layer::cpu`], expert latencies (fixed or a scenario's channel), routing record |
//! | [`sample`] | greedy, temperature and top-p sampling, seeded |
//! | [`generate`] | the generation loop and its summary (tokens/s, experts per token, simulated latency) |
//! | [`backend`] | where the model runs: [`CpuBackend`] (this f32 reference) or, with feature `cuda`, `gpu::GpuBackend` (wdmoe-cuda's whole-model fp16 path) |
//! | [`synth`] | deterministic random checkpoints in the hub layout (tests, benches) |
//!
//! The safetensors files are memory-mapped, never read whole. The matrices
//! stored as f16/bf16 (every large one: embedding, attention, experts,
//! lm_head) stay in the map and are converted to f32 block by block inside
//! each product ([`crate::layer::WeightMatrix`]); the RAM they take is the
//! page cache of the pages in use, which the kernel may drop. Norms, the
//! routers and f32-stored tensors are owned f32 vectors. Everything is
//! computed in f32.
//!
//! ```
//! use wdmoe_sim::model::{synth, FixedLatency, Logits, Model, MoeConfig};
//! let dir = std::env::temp_dir().join("wdmoe-doc-model");
//! synth::write_checkpoint(&dir, &synth::tiny_config(), synth::Layout::default(), 1).unwrap();
//! let model = Model::load(&dir).unwrap();
//! let mut cache = model.new_cache();
//! let moe = MoeConfig::wdmoe(2, 0.2, 1).unwrap();
//! let mut lat = FixedLatency::new(vec![0.01, 0.02, 0.5, 0.01]).unwrap();
//! let out = model.forward(&[1, 5, 7], &mut cache, &moe, &mut lat, Logits::All).unwrap();
//! assert_eq!(out.logits.len(), 3 * model.config().vocab_size);
//! assert_eq!(out.routing.len(), model.config().num_hidden_layers);
//! assert_eq!(cache.len(), 3);
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod decoder;
mod error;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod moe;
pub mod sample;
pub mod synth;
pub mod tokenizer;

pub use backend::{Backend, CpuBackend};
pub use checkpoint::{Checkpoint, StoredDtype};
pub use config::MixtralConfig;
pub use decoder::KvCache;
pub use error::ModelError;
pub use generate::{
    generate, generate_on, generate_with, GenerateSettings, Generation, GenerationSummary,
};
pub use moe::{ExpertLatency, FixedLatency, LayerRouting, MoeConfig, ScenarioLatency};
pub use sample::Sampler;
pub use tokenizer::Tokenizer;

use crate::layer::{ExpertF32, MoeWeights, WeightMatrix};
use decoder::{attention, linear, rms_norm, AttnShape, Rope};

/// Weights of one decoder layer (norms owned f32; matrices owned f32 or
/// mapped f16/bf16).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// `input_layernorm.weight`, `[m]`.
    pub input_norm: Vec<f32>,
    /// `post_attention_layernorm.weight`, `[m]`.
    pub post_norm: Vec<f32>,
    /// `self_attn.q_proj.weight`, `[heads·head_dim][m]`.
    pub q: WeightMatrix,
    /// `self_attn.k_proj.weight`, `[kv_heads·head_dim][m]`.
    pub k: WeightMatrix,
    /// `self_attn.v_proj.weight`, `[kv_heads·head_dim][m]`.
    pub v: WeightMatrix,
    /// `self_attn.o_proj.weight`, `[m][heads·head_dim]`.
    pub o: WeightMatrix,
    /// Router and experts (`block_sparse_moe.gate`, `experts.E.{w1,w2,w3}`).
    pub moe: MoeWeights,
}

/// Which positions' logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every new position (`[n][vocab]`): prompt scoring, perplexity.
    All,
    /// Only the last one (`[1][vocab]`): generation.
    Last,
}

/// What one forward call returns.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Logits, `[rows][vocab]` (rows: the new tokens, or 1 for [`Logits::Last`]).
    pub logits: Vec<f32>,
    /// Position of the first new token.
    pub start_position: usize,
    /// The routing of every layer (index = layer), for the new tokens.
    pub routing: Vec<LayerRouting>,
    /// Measured host time of the whole call \[s\].
    pub compute_s: f64,
    /// Measured GPU time of the call (CUDA events; 0 on the CPU) \[s\].
    pub device_s: f64,
}

/// A Mixtral model: config, f32 weights, optional tokenizer.
pub struct Model {
    config: MixtralConfig,
    dir: PathBuf,
    embed: WeightMatrix,
    layers: Vec<DecoderLayer>,
    norm: Vec<f32>,
    lm_head: Option<WeightMatrix>,
    rope: Rope,
    tokenizer: Option<Tokenizer>,
}

impl std::fmt::Debug for Model {
    // The weights are left out (gigabytes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("tied_embeddings", &self.lm_head.is_none())
            .field("tokenizer", &self.tokenizer)
            .finish_non_exhaustive()
    }
}

fn load_layer(ck: &Checkpoint, c: &MixtralConfig, l: usize) -> Result<DecoderLayer, ModelError> {
    let (m, f, e) = (c.hidden_size, c.intermediate_size, c.num_local_experts);
    let qw = c.num_attention_heads * c.head_dim;
    let kvw = c.num_key_value_heads * c.head_dim;
    let p = format!("model.layers.{l}");
    let t = |name: &str, shape: &[usize]| ck.tensor_f32(&format!("{p}.{name}"), shape);
    let wm = |name: &str, shape: &[usize]| ck.weight(&format!("{p}.{name}"), shape);
    let experts = (0..e)
        .map(|q| {
            let x = format!("block_sparse_moe.experts.{q}");
            Ok(ExpertF32 {
                w1: wm(&format!("{x}.w1.weight"), &[f, m])?,
                w3: wm(&format!("{x}.w3.weight"), &[f, m])?,
                w2: wm(&format!("{x}.w2.weight"), &[m, f])?,
            })
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(DecoderLayer {
        input_norm: t("input_layernorm.weight", &[m])?,
        post_norm: t("post_attention_layernorm.weight", &[m])?,
        q: wm("self_attn.q_proj.weight", &[qw, m])?,
        k: wm("self_attn.k_proj.weight", &[kvw, m])?,
        v: wm("self_attn.v_proj.weight", &[kvw, m])?,
        o: wm("self_attn.o_proj.weight", &[m, qw])?,
        moe: MoeWeights {
            m,
            m_h: f,
            router: t("block_sparse_moe.gate.weight", &[e, m])?,
            experts,
        },
    })
}

impl Model {
    /// Loads a checkpoint directory in the Hugging Face layout: `config.json`,
    /// `model.safetensors` or `model.safetensors.index.json` + shards, and
    /// `tokenizer.json` when there is one.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let config = MixtralConfig::from_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        let mut model = Self::from_checkpoint(config, &ck, dir)?;
        let tok = dir.join("tokenizer.json");
        if tok.exists() {
            model.set_tokenizer(Tokenizer::from_file(&tok)?)?;
        }
        Ok(model)
    }

    /// Builds the model from `config` and an open checkpoint (f16/bf16
    /// matrices left in its memory map, the rest converted to f32; layers
    /// in parallel); `dir` names it in messages.
    pub fn from_checkpoint(
        config: MixtralConfig,
        ck: &Checkpoint,
        dir: &Path,
    ) -> Result<Self, ModelError> {
        let (v, m) = (config.vocab_size, config.hidden_size);
        let embed = ck.weight("model.embed_tokens.weight", &[v, m])?;
        // In parallel, but the error reported is the lowest layer's (a
        // parallel `collect::<Result<…>>` returns whichever failed first).
        let layers = (0..config.num_hidden_layers)
            .into_par_iter()
            .map(|l| load_layer(ck, &config, l))
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let norm = ck.tensor_f32("model.norm.weight", &[m])?;
        let lm_head = if config.tie_word_embeddings && !ck.contains("lm_head.weight") {
            None
        } else {
            Some(ck.weight("lm_head.weight", &[v, m])?)
        };
        Ok(Model {
            rope: Rope::new(config.head_dim, config.rope_theta),
            config,
            dir: dir.to_owned(),
            embed,
            layers,
            norm,
            lm_head,
            tokenizer: None,
        })
    }

    /// Attaches a tokenizer after checking that its vocabulary fits the model's.
    pub fn set_tokenizer(&mut self, tok: Tokenizer) -> Result<(), ModelError> {
        if tok.vocab_size() > self.config.vocab_size {
            return Err(ModelError::VocabMismatch {
                path: tok.path().to_owned(),
                tokenizer_vocab: tok.vocab_size(),
                config_vocab: self.config.vocab_size,
            });
        }
        self.tokenizer = Some(tok);
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &MixtralConfig {
        &self.config
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tokenizer, when the checkpoint has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The weights of decoder layer `l`.
    pub fn layer(&self, l: usize) -> Option<&DecoderLayer> {
        self.layers.get(l)
    }

    /// `true` when lm_head is the embedding matrix.
    pub fn tied_embeddings(&self) -> bool {
        self.lm_head.is_none()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.config.num_hidden_layers,
            self.config.num_key_value_heads * self.config.head_dim,
        )
    }

    /// Checks token ids and the length against the model.
    pub fn check_tokens(&self, tokens: &[u32], cached: usize) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let vocab_size = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(ModelError::TokenOutOfRange { id, vocab_size });
        }
        let positions = cached + tokens.len();
        if positions > self.config.max_position_embeddings {
            return Err(ModelError::TooLong {
                positions,
                max_positions: self.config.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Runs `tokens` at positions `cache.len()..` through the decoder,
    /// appending their keys and values to `cache`. The MoE layers route with
    /// `moe`'s policy under the latencies `latency` gives per token and
    /// layer. Returns the logits (`which`) and the routing of every layer.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
        which: Logits,
    ) -> Result<ForwardOutput, ModelError> {
        let start = cache.len();
        self.check_tokens(tokens, start)?;
        let r = self.forward_unchecked(tokens, cache, moe, latency, which);
        if r.is_err() {
            cache.rollback(start);
        }
        r
    }

    fn forward_unchecked(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
        which: Logits,
    ) -> Result<ForwardOutput, ModelError> {
        let t0 = Instant::now();
        let c = &self.config;
        let start = cache.len();
        let n = tokens.len();
        let (m, v) = (c.hidden_size, c.vocab_size);
        let qw = c.num_attention_heads * c.head_dim;
        let kvw = c.num_key_value_heads * c.head_dim;
        let shape = AttnShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            window: c.sliding_window,
        };
        let mut h: Vec<f32> = Vec::with_capacity(n * m);
        let (embed, mut buf) = (self.embed.view(), Vec::new());
        for &id in tokens {
            let id = id as usize;
            h.extend_from_slice(embed.rows(id, id + 1, m, &mut buf));
        }
        let mut routing = Vec::with_capacity(self.layers.len());
        for (l, w) in self.layers.iter().enumerate() {
            if cache.layer_len(l) != start {
                return Err(ModelError::Settings(format!(
                    "KV cache of layer {l} holds {} positions, expected {start}",
                    cache.layer_len(l)
                )));
            }
            let x = rms_norm(&h, &w.input_norm, c.rms_norm_eps);
            let mut q = linear(&x, n, &w.q, m, qw);
            let mut k = linear(&x, n, &w.k, m, kvw);
            let val = linear(&x, n, &w.v, m, kvw);
            for t in 0..n {
                self.rope.apply(&mut q[t * qw..(t + 1) * qw], start + t);
                self.rope.apply(&mut k[t * kvw..(t + 1) * kvw], start + t);
            }
            cache.push(l, &k, &val);
            let a = attention(shape, &q, n, start, &cache.k[l], &cache.v[l]);
            let o = linear(&a, n, &w.o, qw, m);
            h.iter_mut().zip(&o).for_each(|(h, o)| *h += o);
            let x = rms_norm(&h, &w.post_norm, c.rms_norm_eps);
            let (y, r) = moe::moe_block(l, &w.moe, &x, n, start, moe, latency)?;
            h.iter_mut().zip(&y).for_each(|(h, y)| *h += y);
            routing.push(r);
        }
        cache.set_len(start + n);
        let rows = match which {
            Logits::All => &h[..],
            Logits::Last => &h[(n - 1) * m..],
        };
        let x = rms_norm(rows, &self.norm, c.rms_norm_eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let logits = linear(&x, x.len() / m, head, m, v);
        if logits.iter().any(|z| !z.is_finite()) {
            return Err(ModelError::NonFinite {
                what: format!("the logits at positions {start}..{}", start + n),
            });
        }
        Ok(ForwardOutput {
            logits,
            start_position: start,
            routing,
            compute_s: t0.elapsed().as_secs_f64(),
            device_s: 0.0,
        })
    }
}
