//! `wdmoe dist --model`: the whole model expert-parallel. Rank 0 (the base
//! station) holds embeddings, attention, the routers and lm_head
//! (`GpuModel::random_remote`) and decodes greedily; each layer's MoE goes
//! through `DistMoe` to the ranks that host its experts, which hold the
//! same random experts `GpuModel::random` would (`model::moe_seed`). With
//! `--check-single-gpu` rank 0 also runs that single-GPU model and compares.

use std::sync::Arc;
use std::time::Instant;

use wdmoe_core::select::Policy;
use wdmoe_cuda::dist::{DistMoe, LocalExperts, Placement};
use wdmoe_cuda::model::{moe_seed, ExpertLayout, GpuModel, ModelOptions, ModelShape, Output};
use wdmoe_cuda::moe::random_expert;
use wdmoe_cuda::Gpu;

use super::DistArgs;
use crate::generate_cli::random_weights_config;
use crate::model::gpu::shape_of;

/// Tokens per step of the distributed model (prompt chunks).
pub(super) const CHUNK: usize = 16;

/// The model's shape from `--model`.
pub(super) fn shape(a: &DistArgs) -> Result<ModelShape, String> {
    let path = a.model.as_deref().ok_or("--model is not set")?;
    let c = random_weights_config(path).map_err(|e| format!("--model: {e}"))?;
    let s = shape_of(&c, c.tie_word_embeddings);
    s.check().map_err(|e| format!("--model: {e}"))?;
    Ok(s)
}

/// `rank`'s experts of every layer: the model's random experts.
pub(super) fn experts(
    gpu: &Gpu,
    placement: &Placement,
    rank: usize,
    s: &ModelShape,
    seed: u64,
) -> Result<LocalExperts, String> {
    let (m, mh) = (s.hidden, s.intermediate);
    let mut source =
        |gpu: &Gpu, l: usize, q: usize| random_expert(gpu, m, mh, q, moe_seed(seed, l));
    LocalExperts::load(gpu, placement, rank, s.layers, m, mh, CHUNK, &mut source)
        .map_err(|e| format!("loading experts: {e}"))
}

fn opts(a: &DistArgs, layout: ExpertLayout) -> ModelOptions {
    ModelOptions {
        max_seq: a.prompt_tokens + a.new_tokens,
        layout,
        prefill_chunk: CHUNK,
    }
}

/// Greedy decoding: the prompt's last logits, the generated ids, and the
/// decode wall time and summed MoE time per token \[s\].
struct Run {
    prompt_logits: Vec<f32>,
    ids: Vec<u32>,
    decode_s: f64,
    moe_s: f64,
}

fn greedy(
    a: &DistArgs,
    prompt: &[u32],
    lat: &[f64],
    mut step: impl FnMut(&[u32], Output, &[f64]) -> Result<wdmoe_cuda::model::ForwardOut, String>,
) -> Result<Run, String> {
    let per = lat.len();
    let rep = |n: usize| {
        lat.iter()
            .copied()
            .cycle()
            .take(n * per)
            .collect::<Vec<_>>()
    };
    let first = step(prompt, Output::LastLogits, &rep(prompt.len()))?;
    let mut id = crate::model::sample::argmax(&first.logits);
    let mut ids = vec![id];
    let (mut decode_s, mut moe_s) = (0.0, 0.0);
    for _ in 1..a.new_tokens {
        let t0 = Instant::now();
        let out = step(&[id], Output::LastArgmax, &rep(1))?;
        decode_s += t0.elapsed().as_secs_f64();
        moe_s += out.layers.iter().map(|l| l.moe_time_s).sum::<f64>();
        id = out.argmax.ok_or("no argmax")?;
        ids.push(id);
    }
    Ok(Run {
        prompt_logits: first.logits,
        ids,
        decode_s,
        moe_s,
    })
}

/// Rank 0: the model with remote experts, greedy decoding, the report.
pub(super) fn base_station(
    a: &DistArgs,
    gpu: Arc<Gpu>,
    dist: &mut DistMoe,
    s: ModelShape,
    world: usize,
) -> Result<String, String> {
    let err = |e: wdmoe_cuda::Error| e.to_string();
    let policy = Policy::new(a.k, a.theta, a.max_drops).map_err(|e| format!("policy: {e}"))?;
    // Equal latencies per token and layer: θ drops by router weight alone.
    let lat = vec![1.0; s.layers * s.experts];
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|i| ((i as u64 * 7919 + a.seed) % s.vocab as u64) as u32)
        .collect();
    let mut bs = GpuModel::random_remote(
        gpu.clone(),
        s,
        opts(a, ExpertLayout::DecodeOnly),
        a.seed,
        &mut |_, _| {},
    )
    .map_err(err)?;
    let dist_run = greedy(a, &prompt, &lat, |t, o, l| {
        bs.forward_remote(t, o, &policy, l, dist).map_err(err)
    })?;
    let n = a.new_tokens.saturating_sub(1).max(1) as f64;
    let mut rep = format!(
        "distributed whole model: {} layers, m = {}, m_h = {}, {} experts over {world} GPUs ({}), θ = {}\n\
         prompt {} tokens, {} generated: decode {:.3} ms/token ({:.1} tokens/s), MoE through NCCL {:.3} ms/token\n",
        s.layers,
        s.hidden,
        s.intermediate,
        s.experts,
        dist.placement().spec(),
        a.theta,
        prompt.len(),
        dist_run.ids.len(),
        1e3 * dist_run.decode_s / n,
        n / dist_run.decode_s.max(1e-12),
        1e3 * dist_run.moe_s / n,
    );
    if a.check_single_gpu {
        drop(bs);
        let mut one = GpuModel::random(
            gpu.clone(),
            s,
            opts(a, ExpertLayout::DecodeOnly),
            a.seed,
            &mut |_, _| {},
        )
        .map_err(err)?;
        one.set_device_policy(false);
        let one_run = greedy(a, &prompt, &lat, |t, o, l| {
            one.forward(t, o, &policy, l).map_err(err)
        })?;
        let scale = one_run
            .prompt_logits
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = dist_run
            .prompt_logits
            .iter()
            .zip(&one_run.prompt_logits)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        let same = dist_run
            .ids
            .iter()
            .zip(&one_run.ids)
            .take_while(|(x, y)| x == y)
            .count();
        rep.push_str(&format!(
            "single GPU, same weights: decode {:.3} ms/token, MoE {:.3} ms/token\n\
             prompt logits: max |dist − single| = {diff:.3e} ({:.2e} of the largest |logit|); greedy tokens equal: {same} of {}\n",
            1e3 * one_run.decode_s / n,
            1e3 * one_run.moe_s / n,
            diff / scale.max(1e-30),
            one_run.ids.len(),
        ));
        if !diff.is_finite() || diff > 1e-2 * scale {
            return Err(format!(
                "{rep}the distributed model differs from the single-GPU one"
            ));
        }
    }
    Ok(rep)
}
