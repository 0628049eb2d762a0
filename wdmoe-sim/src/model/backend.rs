//! Where a model runs: the generation loop and the evaluations drive a
//! [`Backend`] — the f32 CPU reference ([`CpuBackend`]: a [`Model`] and its
//! KV cache) or, with the `cuda` feature, the whole model on a GPU
//! ([`super::gpu::GpuBackend`]).

use super::{
    ExpertLatency, ForwardOutput, KvCache, Logits, MixtralConfig, Model, ModelError, MoeConfig,
};

/// A model with its KV cache, ready to run tokens.
pub trait Backend {
    /// The model's configuration.
    fn config(&self) -> &MixtralConfig;

    /// Positions in the KV cache (the next token's position).
    fn cached(&self) -> usize;

    /// Forgets positions `n..`.
    fn truncate(&mut self, n: usize);

    /// Runs `tokens` at the next positions (see [`Model::forward`]); errors
    /// leave the cache as it was.
    fn forward(
        &mut self,
        tokens: &[u32],
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
        which: Logits,
    ) -> Result<ForwardOutput, ModelError>;

    /// Runs one token and returns the argmax of its logits (lowest index on
    /// ties) with the forward output (whose logits may be empty where the
    /// backend computes the argmax itself).
    fn forward_greedy(
        &mut self,
        token: u32,
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
    ) -> Result<(u32, ForwardOutput), ModelError> {
        let out = self.forward(&[token], moe, latency, Logits::Last)?;
        Ok((super::sample::argmax(&out.logits), out))
    }

    /// A short name of where it runs (`"CPU"`, the GPU's name).
    fn device_name(&self) -> String;
}

/// The CPU reference: a [`Model`] and its KV cache.
#[derive(Debug)]
pub struct CpuBackend<'m> {
    model: &'m Model,
    cache: KvCache,
}

impl<'m> CpuBackend<'m> {
    /// `model` with an empty cache.
    pub fn new(model: &'m Model) -> Self {
        CpuBackend {
            model,
            cache: model.new_cache(),
        }
    }
}

impl Backend for CpuBackend<'_> {
    fn config(&self) -> &MixtralConfig {
        self.model.config()
    }

    fn cached(&self) -> usize {
        self.cache.len()
    }

    fn truncate(&mut self, n: usize) {
        self.cache.truncate(n);
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
        which: Logits,
    ) -> Result<ForwardOutput, ModelError> {
        self.model
            .forward(tokens, &mut self.cache, moe, latency, which)
    }

    fn device_name(&self) -> String {
        "CPU".into()
    }
}
