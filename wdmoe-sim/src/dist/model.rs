//! `wdmoe dist --model`: the whole model expert-parallel. Rank 0 (the base
//! station) holds embeddings, attention, the routers and lm_head
//! (`GpuModel::random_remote`) and decodes greedily; each layer's MoE goes
//! through `DistMoe` to the ranks that host its experts, which hold the
//! same random experts `GpuModel::random` would (`model::moe_seed`). The
//! channel comes from the scenario as in the per-layer driver: the policy
//! sees eq. 6's latencies per token and layer, the device ranks hold each
//! transfer's airtime, and the report sets measured against modeled per
//! decode token. With `--check-single-gpu` rank 0 also runs the single-GPU
//! model over the same channel and compares.

use std::sync::Arc;
use std::time::Instant;

use wdmoe_core::select::Policy;
use wdmoe_cuda::cust::memory::DeviceSlice;
use wdmoe_cuda::dist::{DistMoe, LinkRates, Links, LocalExperts, MoeExecutor, Placement};
use wdmoe_cuda::model::{
    moe_seed, read_expert, ExpertLayout, ForwardOut, GpuModel, ModelOptions, ModelShape, Output,
};
use wdmoe_cuda::moe::random_expert;
use wdmoe_cuda::{f16, Gpu};

use super::rank::{link_rates, scenario_of};
use super::report::{DistReport, LayerRecord};
use super::DistArgs;
use crate::generate_cli::random_weights_config;
use crate::model::gpu::{shape_of, CheckpointSource};
use crate::model::Checkpoint;
use crate::sim::Simulation;

/// Tokens per step of the distributed model (prompt chunks).
pub(super) const CHUNK: usize = 16;

/// The model's shape from `--model` (with `--checkpoint`, lm_head is tied
/// when the checkpoint has none, as the CPU model reads it).
pub(super) fn shape(a: &DistArgs) -> Result<ModelShape, String> {
    let path = a.model.as_deref().ok_or("--model is not set")?;
    let c = random_weights_config(path).map_err(|e| format!("--model: {e}"))?;
    let tied = if a.checkpoint {
        c.tie_word_embeddings && !checkpoint(a)?.contains("lm_head.weight")
    } else {
        c.tie_word_embeddings
    };
    let s = shape_of(&c, tied);
    s.check().map_err(|e| format!("--model: {e}"))?;
    Ok(s)
}

/// The `--model` directory's checkpoint (memory-mapped).
fn checkpoint(a: &DistArgs) -> Result<Checkpoint, String> {
    let path = a.model.as_deref().ok_or("--model is not set")?;
    Checkpoint::open(path).map_err(|e| format!("--checkpoint: {e}"))
}

/// `rank`'s experts of every layer: the checkpoint's (`ck`) or the
/// model's random experts.
fn experts(
    gpu: &Gpu,
    placement: &Placement,
    rank: usize,
    s: &ModelShape,
    seed: u64,
    ck: Option<&Checkpoint>,
) -> Result<LocalExperts, String> {
    let (m, mh) = (s.hidden, s.intermediate);
    let r = match ck {
        Some(ck) => {
            let mut src = CheckpointSource::new(ck);
            let mut source =
                |gpu: &Gpu, l: usize, q: usize| read_expert(gpu, &mut src, l, q, m, mh);
            LocalExperts::load(gpu, placement, rank, s.layers, m, mh, CHUNK, &mut source)
        }
        None => {
            let mut source =
                |gpu: &Gpu, l: usize, q: usize| random_expert(gpu, m, mh, q, moe_seed(seed, l));
            LocalExperts::load(gpu, placement, rank, s.layers, m, mh, CHUNK, &mut source)
        }
    };
    r.map_err(|e| format!("loading experts: {e}"))
}

/// `rank`'s experts: the checkpoint's (`--checkpoint`) or the random ones.
pub(super) fn rank_experts(
    a: &DistArgs,
    gpu: &Gpu,
    placement: &Placement,
    rank: usize,
    s: &ModelShape,
) -> Result<LocalExperts, String> {
    let ck = if a.checkpoint {
        Some(checkpoint(a)?)
    } else {
        None
    };
    experts(gpu, placement, rank, s, a.seed, ck.as_ref())
}

fn opts(a: &DistArgs, layout: ExpertLayout) -> ModelOptions {
    ModelOptions {
        max_seq: a.prompt_tokens + a.new_tokens,
        layout,
        prefill_chunk: CHUNK,
    }
}

/// The channel of one token: per layer the experts' latencies (eq. 6,
/// `[layers][experts]`) the policy sees, and their links' rates.
struct TokenDraw {
    latency_s: Vec<f64>,
    rates: Vec<Vec<LinkRates>>,
}

/// DistMoe with the links of the current token emulated, recording each
/// layer's measured step and airtime.
struct Linked<'a> {
    dist: &'a mut DistMoe,
    rates: Vec<Vec<LinkRates>>,
    payload_bits: f64,
    links: bool,
    /// (layer, measured step \[s\], airtime held \[s\]) of the current call.
    steps: Vec<(usize, f64, f64)>,
}

impl MoeExecutor for Linked<'_> {
    fn step(
        &mut self,
        gpu: &Gpu,
        layer: usize,
        x: &DeviceSlice<f16>,
        n_tokens: usize,
        groups: &[Vec<(usize, f32)>],
        acc: &mut DeviceSlice<f32>,
    ) -> wdmoe_cuda::Result<()> {
        let links = self.links.then(|| Links {
            rates: &self.rates[layer],
            payload_bits: self.payload_bits,
        });
        let st = self
            .dist
            .step_timed(gpu, layer, x, n_tokens, groups, links, acc)?;
        let hold = st.hold_s.iter().map(|h| h.0 + h.1).fold(0.0, f64::max);
        self.steps.push((layer, st.time_s, hold));
        Ok(())
    }
}

/// Greedy decoding over `draws` (one per step: the prompt's, then one per
/// generated token): the prompt's last logits, the generated ids, the
/// decode wall time \[s\] and every decode step's output.
struct Run {
    prompt_logits: Vec<f32>,
    ids: Vec<u32>,
    decode_s: f64,
    outs: Vec<ForwardOut>,
}

fn greedy(
    prompt: &[u32],
    draws: &[TokenDraw],
    mut step: impl FnMut(usize, &[u32], Output, &[f64]) -> Result<ForwardOut, String>,
) -> Result<Run, String> {
    let n = prompt.len();
    let lat0 = &draws[0].latency_s;
    let rep: Vec<f64> = lat0.iter().copied().cycle().take(n * lat0.len()).collect();
    let first = step(0, prompt, Output::LastLogits, &rep)?;
    let mut id = crate::model::sample::argmax(&first.logits);
    let mut ids = vec![id];
    let mut outs = Vec::new();
    let mut decode_s = 0.0;
    for (j, d) in draws.iter().enumerate().skip(1) {
        let t0 = Instant::now();
        let out = step(j, &[id], Output::LastArgmax, &d.latency_s)?;
        decode_s += t0.elapsed().as_secs_f64();
        id = out.argmax.ok_or("no argmax")?;
        ids.push(id);
        outs.push(out);
    }
    Ok(Run {
        prompt_logits: first.logits,
        ids,
        decode_s,
        outs,
    })
}

/// The scenario's channel for the prompt (one slot: a batched prefill)
/// and each generated token.
fn token_draws(a: &DistArgs, s: &ModelShape) -> Result<(Vec<TokenDraw>, f64), String> {
    let mut args = a.clone();
    args.layers = s.layers;
    args.m = s.hidden;
    args.m_h = s.intermediate;
    args.tokens = u32::try_from(a.new_tokens.max(1)).map_err(|_| "--new-tokens is too large")?;
    let scenario = scenario_of(&args)?;
    if scenario.n_experts() != s.experts {
        return Err(format!(
            "the scenario has {} devices, the model {} experts per layer",
            scenario.n_experts(),
            s.experts
        ));
    }
    let sim = Simulation::new(scenario).map_err(|e| e.to_string())?;
    let model = *sim.channel().latency_model();
    let rep = sim.replication(0);
    let mut draws = rep.prompt(0).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while draws.next_token().map_err(|e| e.to_string())?.is_some() {
        let mut d = TokenDraw {
            latency_s: Vec::with_capacity(s.layers * s.experts),
            rates: Vec::with_capacity(s.layers),
        };
        for l in 0..s.layers {
            draws.layer(l).map_err(|e| e.to_string())?;
            let ch = draws.channel();
            d.latency_s.extend_from_slice(ch.latency_s());
            let mut r = vec![
                LinkRates {
                    down_bps: 0.0,
                    up_bps: 0.0
                };
                s.experts
            ];
            link_rates(&model, ch, &mut r)?;
            d.rates.push(r);
        }
        out.push(d);
    }
    Ok((out, model.payload_bits()))
}

/// Rank 0: the model with remote experts, greedy decoding over the
/// scenario's channel (the policy sees eq. 6's latencies, the device ranks
/// hold each transfer's airtime), the report.
pub(super) fn base_station(
    a: &DistArgs,
    gpu: Arc<Gpu>,
    dist: &mut DistMoe,
    s: ModelShape,
    world: usize,
) -> Result<(DistReport, String), String> {
    let err = |e: wdmoe_cuda::Error| e.to_string();
    let policy = Policy::new(a.k, a.theta, a.max_drops).map_err(|e| format!("policy: {e}"))?;
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|i| ((i as u64 * 7919 + a.seed) % s.vocab as u64) as u32)
        .collect();
    // The prompt's draw, then one per generated token.
    let (mut draws, payload_bits) = token_draws(a, &s)?;
    draws.truncate(a.new_tokens.max(1));
    let ck = if a.checkpoint {
        Some(checkpoint(a)?)
    } else {
        None
    };
    let o = opts(a, ExpertLayout::DecodeOnly);
    let mut bs = match &ck {
        Some(ck) => GpuModel::load_remote(
            gpu.clone(),
            s,
            &mut CheckpointSource::new(ck),
            o,
            &mut |_, _| {},
        ),
        None => GpuModel::random_remote(gpu.clone(), s, o, a.seed, &mut |_, _| {}),
    }
    .map_err(err)?;
    let mut linked = Linked {
        dist,
        rates: Vec::new(),
        payload_bits,
        links: !a.no_links,
        steps: Vec::new(),
    };
    let mut records = Vec::new();
    let dist_run = greedy(&prompt, &draws, |j, t, o, l| {
        linked.rates.clone_from(&draws[j].rates);
        linked.steps.clear();
        let out = bs
            .forward_remote(t, o, &policy, l, &mut linked)
            .map_err(err)?;
        if j > 0 {
            for &(layer, measured_s, airtime_s) in &linked.steps {
                let r = &out.layers[layer];
                records.push(LayerRecord {
                    token: j as u32,
                    layer,
                    experts: r.selections[0].experts().len(),
                    modeled_s: r.token_latency_s[0],
                    airtime_s,
                    measured_s,
                });
            }
        }
        Ok(out)
    })?;
    let placement = linked.dist.placement().spec();
    let n = dist_run.outs.len().max(1) as f64;
    let moe_s: f64 = dist_run
        .outs
        .iter()
        .flat_map(|o| &o.layers)
        .map(|l| l.moe_time_s)
        .sum();
    let mut text = format!(
        "distributed whole model: {} layers, m = {}, m_h = {}, {} experts over {world} GPUs ({placement}), θ = {}, links {}\n\
         prompt {} tokens, {} generated: decode {:.3} ms/token ({:.1} tokens/s), MoE steps {:.3} ms/token\n",
        s.layers,
        s.hidden,
        s.intermediate,
        s.experts,
        a.theta,
        if a.no_links { "not emulated" } else { "emulated" },
        prompt.len(),
        dist_run.ids.len(),
        1e3 * dist_run.decode_s / n,
        n / dist_run.decode_s.max(1e-12),
        1e3 * moe_s / n,
    );
    if a.check_single_gpu {
        drop(bs);
        let mut one = match &ck {
            Some(ck) => GpuModel::load(
                gpu.clone(),
                s,
                &mut CheckpointSource::new(ck),
                o,
                &mut |_, _| {},
            ),
            None => GpuModel::random(gpu.clone(), s, o, a.seed, &mut |_, _| {}),
        }
        .map_err(err)?;
        one.set_device_policy(false);
        let one_run = greedy(&prompt, &draws, |_, t, o, l| {
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
        text.push_str(&format!(
            "single GPU, same weights and channel: decode {:.3} ms/token\n\
             prompt logits: max |dist − single| = {diff:.3e} ({:.2e} of the largest |logit|); greedy tokens equal: {same} of {}\n",
            1e3 * one_run.decode_s / n,
            diff / scale.max(1e-30),
            one_run.ids.len(),
        ));
        if !diff.is_finite() || diff > 1e-2 * scale {
            return Err(format!(
                "{text}the distributed model differs from the single-GPU one"
            ));
        }
    }
    let report = DistReport {
        machine: format!("{world} x {}", gpu.info().name),
        placement,
        shape: (s.hidden, s.intermediate),
        links: !a.no_links,
        layers: records,
    };
    Ok((report, text))
}
