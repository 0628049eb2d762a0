//! The generation loop: prefill the prompt, then one token at a time over
//! the KV cache, with the routing totals of the run.

use std::time::Instant;

use serde::Serialize;

use super::backend::{Backend, CpuBackend};
use super::{ExpertLatency, ForwardOutput, Logits, Model, ModelError, MoeConfig, Sampler};

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSettings {
    /// Tokens to generate (at most).
    pub max_new_tokens: usize,
    /// Stop after generating one of these (e.g. the config's EOS ids).
    pub stop_tokens: Vec<u32>,
    /// Keep the logits of every prompt position in [`Generation::prompt_logits`].
    pub keep_prompt_logits: bool,
}

/// Totals of a generation. Latencies are the simulated wireless latencies
/// of the expert round trips (eq. 7 per token and layer, summed over all
/// prompt and generated tokens and layers: eq. 8, sequential accounting),
/// next to the measured host compute time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationSummary {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub generated_tokens: usize,
    /// Host time of the prompt's forward pass \[s\].
    pub prefill_s: f64,
    /// Host time of the one-token steps \[s\].
    pub decode_s: f64,
    /// GPU time of the one-token steps (CUDA events, first kernel to last;
    /// 0 on the CPU) \[s\].
    pub decode_device_s: f64,
    /// Prompt tokens per second of host time.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second of host time (first token from the prefill excluded).
    pub decode_tokens_per_s: f64,
    /// Mean experts serving a token in a layer.
    pub experts_per_token: f64,
    /// The same over the one-token decode steps only (what a decode step
    /// reads: the weight-read floor of `wdmoe generate --device cuda`).
    pub decode_experts_per_token: f64,
    /// Mean router weight kept (of plain top-k's renormalised weights).
    pub kept_weight: f64,
    /// Token-layer decisions in which the policy dropped an expert.
    pub drops: u64,
    /// Token-layer decisions.
    pub decisions: u64,
    /// Simulated latency of the experts under the WDMoE policy \[s\].
    pub wdmoe_latency_s: f64,
    /// Simulated latency had plain top-k served the same router logits \[s\].
    pub top_k_latency_s: f64,
    /// `100 · (1 − wdmoe / top-k)`.
    pub latency_reduction_pct: f64,
    /// Generation ended on a stop token.
    pub stopped: bool,
}

impl GenerationSummary {
    /// Adds the routing of one forward call.
    pub fn add(&mut self, out: &ForwardOutput) {
        for r in &out.routing {
            for (t, sel) in r.selections.iter().enumerate() {
                let n_e = sel.experts().len() as f64;
                let d = self.decisions as f64;
                self.experts_per_token = (self.experts_per_token * d + n_e) / (d + 1.0);
                self.kept_weight = (self.kept_weight * d + r.kept_weight[t]) / (d + 1.0);
                self.decisions += 1;
                self.drops += (!sel.dropped().is_empty()) as u64;
                self.wdmoe_latency_s += r.token_latency_s[t];
                self.top_k_latency_s += r.top_k_latency_s[t];
            }
        }
        self.latency_reduction_pct = if self.top_k_latency_s > 0.0 {
            100.0 * (1.0 - self.wdmoe_latency_s / self.top_k_latency_s)
        } else {
            0.0
        };
    }
}

/// What [`generate`] returns.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt.
    pub prompt_ids: Vec<u32>,
    /// The generated tokens.
    pub generated_ids: Vec<u32>,
    /// `[prompt_len][vocab]` when asked for.
    pub prompt_logits: Option<Vec<f32>>,
    /// Totals.
    pub summary: GenerationSummary,
}

/// Generates up to `settings.max_new_tokens` tokens after `prompt`;
/// `on_token` sees each as it is chosen (for streaming).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    moe: &MoeConfig,
    latency: &mut dyn ExpertLatency,
    sampler: &mut Sampler,
    settings: &GenerateSettings,
    on_token: &mut dyn FnMut(u32) -> Result<(), ModelError>,
) -> Result<Generation, ModelError> {
    generate_with(
        model,
        prompt,
        moe,
        latency,
        sampler,
        settings,
        on_token,
        &mut |_| {},
    )
}

/// [`generate`], with `on_forward` seeing every forward call's output (the
/// prompt's, then one per generated token but the last), e.g. to record the
/// router logits.
#[allow(clippy::too_many_arguments)]
pub fn generate_with(
    model: &Model,
    prompt: &[u32],
    moe: &MoeConfig,
    latency: &mut dyn ExpertLatency,
    sampler: &mut Sampler,
    settings: &GenerateSettings,
    on_token: &mut dyn FnMut(u32) -> Result<(), ModelError>,
    on_forward: &mut dyn FnMut(&ForwardOutput),
) -> Result<Generation, ModelError> {
    generate_on(
        &mut CpuBackend::new(model),
        prompt,
        moe,
        latency,
        sampler,
        settings,
        on_token,
        on_forward,
    )
}

/// [`generate_with`] on any [`Backend`] (the CPU reference or the GPU),
/// from an empty cache. Greedy decoding asks the backend for the argmax
/// ([`Backend::forward_greedy`]: on the GPU no logits leave the device).
#[allow(clippy::too_many_arguments)]
pub fn generate_on(
    backend: &mut dyn Backend,
    prompt: &[u32],
    moe: &MoeConfig,
    latency: &mut dyn ExpertLatency,
    sampler: &mut Sampler,
    settings: &GenerateSettings,
    on_token: &mut dyn FnMut(u32) -> Result<(), ModelError>,
    on_forward: &mut dyn FnMut(&ForwardOutput),
) -> Result<Generation, ModelError> {
    let positions = prompt
        .len()
        .saturating_add(settings.max_new_tokens.saturating_sub(1));
    let max_positions = backend.config().max_position_embeddings;
    if positions > max_positions {
        return Err(ModelError::TooLong {
            positions,
            max_positions,
        });
    }
    backend.truncate(0);
    let mut summary = GenerationSummary {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let which = if settings.keep_prompt_logits {
        Logits::All
    } else {
        Logits::Last
    };
    let t0 = Instant::now();
    let out = backend.forward(prompt, moe, latency, which)?;
    summary.prefill_s = t0.elapsed().as_secs_f64();
    summary.add(&out);
    on_forward(&out);
    let v = backend.config().vocab_size;
    let mut id = sampler.next_token(&out.logits[out.logits.len() - v..]);
    let prompt_logits = settings.keep_prompt_logits.then_some(out.logits);
    let greedy = matches!(sampler, Sampler::Greedy);
    let mut generated = Vec::new();
    let (mut dec_experts, mut dec_decisions) = (0usize, 0usize);
    let t1 = Instant::now();
    while generated.len() < settings.max_new_tokens {
        generated.push(id);
        on_token(id)?;
        if settings.stop_tokens.contains(&id) {
            summary.stopped = true;
            break;
        }
        if generated.len() == settings.max_new_tokens {
            break;
        }
        let out = if greedy {
            let (next, out) = backend.forward_greedy(id, moe, latency)?;
            id = next;
            out
        } else {
            let out = backend.forward(&[id], moe, latency, Logits::Last)?;
            id = sampler.next_token(&out.logits);
            out
        };
        summary.add(&out);
        summary.decode_device_s += out.device_s;
        for r in &out.routing {
            dec_experts += r
                .selections
                .iter()
                .map(|s| s.experts().len())
                .sum::<usize>();
            dec_decisions += r.selections.len();
        }
        on_forward(&out);
    }
    summary.decode_s = t1.elapsed().as_secs_f64();
    summary.decode_experts_per_token = dec_experts as f64 / dec_decisions.max(1) as f64;
    summary.generated_tokens = generated.len();
    summary.prefill_tokens_per_s = prompt.len() as f64 / summary.prefill_s.max(1e-12);
    summary.decode_tokens_per_s = if generated.len() > 1 {
        (generated.len() - 1) as f64 / summary.decode_s.max(1e-12)
    } else {
        0.0
    };
    Ok(Generation {
        prompt_ids: prompt.to_vec(),
        generated_ids: generated,
        prompt_logits,
        summary,
    })
}
