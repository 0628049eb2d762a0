//! `wdmoe generate`: text from a Mixtral checkpoint on the CPU (f32
//! reference) or the GPU (`--device cuda`, feature `cuda`: the whole model
//! in fp16), the WDMoE policy choosing the experts of every token and
//! layer, with the simulated wireless latency of WDMoE and of plain top-k
//! beside the measured compute time. `--random-weights` runs a model of a
//! checkpoint's (or Mixtral-8x7B's) shape with random weights generated on
//! the GPU: the benchmark without a 93 GB download.

use std::fmt::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::model::{
    generate_on, Backend, CpuBackend, ExpertLatency, FixedLatency, GenerateSettings,
    GenerationSummary, MixtralConfig, Model, ModelError, MoeConfig, Sampler, ScenarioLatency,
};
use crate::output::{self, CliError, OutputFiles, Stdout};
use crate::scenario::{Scenario, MAX_FILE_BYTES};
use crate::sim::ChannelSchedule;
use crate::trace::TraceRecorder;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// The f32 CPU reference.
    Cpu,
    /// The whole model in fp16 on CUDA GPU 0 (feature `cuda`).
    Cuda,
}

/// Flags of `wdmoe generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Checkpoint directory in the Hugging Face layout (config.json,
    /// model.safetensors or model.safetensors.index.json, tokenizer.json);
    /// with --random-weights also the name `mixtral-8x7b`.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text (needs the checkpoint's tokenizer.json).
    #[arg(long, conflicts_with_all = ["prompt_ids", "random_prompt"], required_unless_present_any = ["prompt_ids", "random_prompt"])]
    pub prompt: Option<String>,
    /// Prompt as token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "random_prompt")]
    pub prompt_ids: Option<Vec<u32>>,
    /// A prompt of this many random token ids (drawn from --seed; benchmarks).
    #[arg(long)]
    pub random_prompt: Option<usize>,
    /// Random fp16 weights generated on the GPU instead of the checkpoint's
    /// (needs --device cuda; only the config is read; benchmarks).
    #[arg(long)]
    pub random_weights: bool,
    /// KV-cache positions held on the GPU (default: prompt + new tokens).
    #[arg(long)]
    pub max_seq: Option<usize>,
    /// Most prompt tokens per GPU forward chunk (--device cuda).
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Tokens to generate (generation also stops at the config's eos_token_id).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// WDMoE drop threshold θ ∈ [0, 0.5] (0: plain top-k).
    #[arg(long, default_value_t = 0.2)]
    pub theta: f64,
    /// Experts taken by router weight (default: the config's num_experts_per_tok).
    #[arg(long)]
    pub k: Option<usize>,
    /// Most experts dropped per token and layer.
    #[arg(long, default_value_t = 1)]
    pub max_drops: usize,
    /// Fixed per-expert latencies in seconds, comma-separated (instead of a scenario).
    #[arg(long, value_delimiter = ',', conflicts_with = "scenario")]
    pub latency_s: Option<Vec<f64>>,
    /// Scenario file for the experts' latencies (default: the paper's setup).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Seed of the channel and of sampling (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass (with --temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Print one JSON object instead of streaming text and a summary.
    #[arg(long)]
    pub json: bool,
    /// Write the logits of every prompt position, float32 [prompt_len, vocab], as .npy.
    #[arg(long)]
    pub dump_logits: Option<PathBuf>,
    /// Write the router logits of every token run (prompt, then generated),
    /// float32 [tokens, layers, experts] .npy (`wdmoe sweep`'s trace format).
    #[arg(long)]
    pub record_trace: Option<PathBuf>,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    model: String,
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    k: usize,
    theta: f64,
    max_drops: usize,
    latency_source: &'a str,
    device: &'a str,
    /// Bytes a decode step reads at least (`--device cuda`): attention,
    /// routers, the experts actually selected (mean per token and layer)
    /// and lm_head, in fp16.
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_floor_bytes_per_token: Option<f64>,
    /// GPU memory in use after the run and the card's total, bytes
    /// (`--device cuda`).
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_memory_bytes: Option<(usize, usize)>,
    summary: &'a GenerationSummary,
}

/// `Ok` where the device can run: always the CPU; `--device cuda` when
/// wdmoe was built with the `cuda` feature (else an error saying so).
pub fn check_device(device: Device) -> Result<(), String> {
    if device == Device::Cuda && !cfg!(feature = "cuda") {
        return Err(
            "--device cuda: wdmoe was not built with cuda (cargo feature `cuda`); use --device cpu"
                .into(),
        );
    }
    Ok(())
}

/// Mixtral-8x7B's config.json (the `--random-weights --model mixtral-8x7b`
/// shape).
const MIXTRAL_8X7B: &str = r#"{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
 "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 32768,
 "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "num_local_experts": 8, "num_experts_per_tok": 2,
 "tie_word_embeddings": false, "sliding_window": null, "bos_token_id": 1, "eos_token_id": 2}"#;

/// The config of a `--random-weights` run: `mixtral-8x7b`, or a checkpoint
/// directory's config.json.
pub fn random_weights_config(model: &std::path::Path) -> Result<MixtralConfig, ModelError> {
    if model.as_os_str() == "mixtral-8x7b" {
        MixtralConfig::from_json_str(MIXTRAL_8X7B, model)
    } else {
        MixtralConfig::from_file(&model.join("config.json"))
    }
}

/// Loads the checkpoint in `dir` onto GPU 0 (progress on stderr unless
/// `quiet`), with a KV cache for the config's max_position_embeddings (at
/// most 4,096 positions) or `max_seq`.
#[cfg(feature = "cuda")]
pub fn load_gpu(
    dir: &std::path::Path,
    quiet: bool,
) -> Result<crate::model::gpu::GpuBackend, String> {
    load_gpu_with(dir, quiet, None, 512)
}

#[cfg(feature = "cuda")]
fn load_gpu_with(
    dir: &std::path::Path,
    quiet: bool,
    max_seq: Option<usize>,
    prefill_chunk: usize,
) -> Result<crate::model::gpu::GpuBackend, String> {
    use crate::model::gpu::{progress_to_stderr, GpuBackend};
    let mut quiet_cb = |_: usize, _: usize| {};
    let mut loud = progress_to_stderr("loading weights onto the GPU");
    let cb: &mut dyn FnMut(usize, usize) = if quiet { &mut quiet_cb } else { &mut loud };
    let opts = wdmoe_cuda::model::ModelOptions {
        max_seq: max_seq.unwrap_or(4096),
        prefill_chunk,
        ..Default::default()
    };
    GpuBackend::load(dir, 0, opts, cb).map_err(|err| format!("{}: {err}", dir.display()))
}

fn e(err: ModelError) -> CliError {
    CliError::Msg(err.to_string())
}

/// Runs `wdmoe generate`, writing the text (streamed, flushed per token)
/// and the summary, or the JSON object, to `out`.
///
/// The `--dump-logits` path is checked before the model is loaded and the
/// file written atomically ([`OutputFiles`]). If stdout fails while the text
/// streams, generation still finishes so the dump is written; then a closed
/// pipe ends quietly ([`CliError::BrokenPipe`]) and any other failure (a
/// full disk) is an error.
pub fn run(a: &GenerateArgs, out: &mut Stdout) -> Result<(), CliError> {
    check_device(a.device)?;
    let mut files = OutputFiles::default();
    let dump = match &a.dump_logits {
        Some(p) => Some(files.add(p)?),
        None => None,
    };
    let trace_file = match &a.record_trace {
        Some(p) => Some(files.add(p)?),
        None => None,
    };
    let scenario = match &a.scenario {
        Some(p) => {
            let text = output::read_bounded(p, MAX_FILE_BYTES)?;
            Scenario::from_toml_str(&text).map_err(|err| format!("{}: {err}", p.display()))?
        }
        None => Scenario::default(),
    };
    if a.random_weights && a.device != Device::Cuda {
        return Err(
            "--random-weights needs --device cuda (the weights are generated on the GPU)".into(),
        );
    }
    let cpu_model = if a.random_weights {
        None
    } else {
        Some(Model::load(&a.model).map_err(e)?)
    };
    let c = match &cpu_model {
        Some(m) => m.config().clone(),
        None => random_weights_config(&a.model).map_err(e)?,
    };
    let tok = cpu_model.as_ref().and_then(|m| m.tokenizer());
    let prompt: Vec<u32> = match (&a.prompt_ids, &a.prompt, a.random_prompt) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(text), _) => tok
            .ok_or_else(|| {
                format!(
                    "--prompt needs {}; give --prompt-ids instead",
                    a.model.join("tokenizer.json").display()
                )
            })?
            .encode(text)
            .map_err(e)?,
        (None, None, Some(n)) => random_ids(n, c.vocab_size, a.seed.unwrap_or(scenario.seed))?,
        (None, None, None) => return Err("give --prompt, --prompt-ids or --random-prompt".into()),
    };
    #[cfg(feature = "cuda")]
    let max_seq = a.max_seq.unwrap_or(prompt.len() + a.max_new_tokens.max(1));
    let mut cpu_backend = cpu_model.as_ref().map(CpuBackend::new);
    #[cfg(feature = "cuda")]
    let mut gpu_backend = match a.device {
        Device::Cuda if a.random_weights => {
            let mut progress = crate::model::gpu::progress_to_stderr("random weights on the GPU");
            let seed = a.seed.unwrap_or(scenario.seed);
            let opts = wdmoe_cuda::model::ModelOptions {
                max_seq,
                prefill_chunk: a.prefill_chunk,
                ..Default::default()
            };
            Some(
                crate::model::gpu::GpuBackend::random(c.clone(), 0, opts, seed, &mut progress)
                    .map_err(e)?,
            )
        }
        Device::Cuda => Some(load_gpu_with(
            &a.model,
            a.json,
            Some(max_seq),
            a.prefill_chunk,
        )?),
        Device::Cpu => None,
    };
    #[cfg(feature = "cuda")]
    let backend: &mut dyn Backend = match (gpu_backend.as_mut(), cpu_backend.as_mut()) {
        (Some(g), _) => g,
        (None, Some(cpu)) => cpu,
        (None, None) => return Err("no model to run".into()),
    };
    #[cfg(not(feature = "cuda"))]
    let backend: &mut dyn Backend = cpu_backend.as_mut().ok_or("no model to run")?;
    let k = a.k.unwrap_or(c.num_experts_per_tok);
    let moe = MoeConfig::wdmoe(k, a.theta, a.max_drops).map_err(e)?;
    let seed = a.seed.unwrap_or(scenario.seed);
    let channel;
    let (mut latency, source): (Box<dyn ExpertLatency>, String) = match &a.latency_s {
        Some(l) => {
            if l.len() != c.num_local_experts {
                return Err(format!(
                    "--latency-s has {} values, the model has {} experts per layer",
                    l.len(),
                    c.num_local_experts
                )
                .into());
            }
            (
                Box::new(FixedLatency::new(l.clone()).map_err(e)?),
                "fixed --latency-s".into(),
            )
        }
        None => {
            channel = ScenarioLatency::channel_for(&scenario, c.num_local_experts).map_err(e)?;
            let name = a
                .scenario
                .as_ref()
                .map_or("the default scenario".into(), |p| p.display().to_string());
            // The simulator's schedule for this model and prompt: a slot per
            // token (a batched prefill: one), the fading moving every
            // `channel.fading_layers` of the model's layers.
            let prompt_tokens = u32::try_from(prompt.len())
                .map_err(|_| format!("the prompt has {} tokens", prompt.len()))?;
            let schedule =
                ChannelSchedule::for_prompt(&scenario, c.num_hidden_layers, prompt_tokens);
            (
                Box::new(ScenarioLatency::new(&channel, schedule, seed, 0).map_err(e)?),
                format!("{name}, channel seed {seed}"),
            )
        }
    };
    let mut sampler = Sampler::new(a.temperature, a.top_p, seed).map_err(e)?;
    let settings = GenerateSettings {
        max_new_tokens: a.max_new_tokens,
        stop_tokens: c.eos_token_ids.clone(),
        keep_prompt_logits: a.dump_logits.is_some(),
    };
    let stream = !a.json;
    // Streaming decodes prompt + generated tokens and prints what the text
    // gained past the prompt's (so a word's leading space survives), holding
    // back while the text ends in an incomplete character.
    let mut all = prompt.clone();
    let mut shown = match (tok, stream) {
        (Some(t), true) => t.decode(&prompt).map_err(e)?.len(),
        _ => 0,
    };
    let mut io_err = None;
    let mut on_token = |id: u32| -> Result<(), ModelError> {
        all.push(id);
        if !stream {
            return Ok(());
        }
        let piece = match tok {
            Some(t) => {
                let text = t.decode(&all)?;
                match text.get(shown..) {
                    Some(new) if !text.ends_with('\u{FFFD}') => {
                        shown = text.len();
                        new.to_string()
                    }
                    _ => String::new(),
                }
            }
            None => format!(
                "{}{id}",
                if all.len() > prompt.len() + 1 {
                    " "
                } else {
                    ""
                }
            ),
        };
        // After a failure nothing more is written (the generation goes on
        // for the --dump-logits file).
        if io_err.is_none() {
            if let Err(err) = out.write_str(&piece).and_then(|_| out.flush()) {
                io_err = Some(err);
            }
        }
        Ok(())
    };
    let mut recorder = match &a.record_trace {
        Some(_) => Some(
            TraceRecorder::new(c.num_hidden_layers, c.num_local_experts)
                .map_err(|err| err.to_string())?,
        ),
        None => None,
    };
    let mut record_err = None;
    let device_name = backend.device_name();
    let g = generate_on(
        backend,
        &prompt,
        &moe,
        latency.as_mut(),
        &mut sampler,
        &settings,
        &mut on_token,
        &mut |out| {
            if let Some(r) = &mut recorder {
                let per_layer: Vec<&[f64]> = out
                    .routing
                    .iter()
                    .map(|l| l.router_logits.as_slice())
                    .collect();
                if let Err(err) = r.push_tokens(&per_layer) {
                    record_err.get_or_insert(err);
                }
            }
        },
    )
    .map_err(e)?;
    if let Some(err) = record_err {
        return Err(err.to_string().into());
    }
    // Files first: a closed stdout must not lose them.
    if let (Some(i), Some(l)) = (dump, &g.prompt_logits) {
        files.set_contents(
            i,
            crate::trace::npy_bytes_f32(&[prompt.len(), c.vocab_size], l),
        );
    }
    if let (Some(i), Some(r)) = (trace_file, &recorder) {
        files.set_contents(i, r.to_npy_bytes().map_err(|err| err.to_string())?);
    }
    files.commit(false)?;
    if let Some(err) = io_err {
        return Err(err);
    }
    let s = &g.summary;
    #[cfg(feature = "cuda")]
    let floor_bytes = (a.device == Device::Cuda).then(|| {
        crate::model::gpu::shape_of(&c, c.tie_word_embeddings)
            .decode_floor_bytes(s.decode_experts_per_token)
    });
    #[cfg(not(feature = "cuda"))]
    let floor_bytes: Option<f64> = None;
    #[cfg(feature = "cuda")]
    let gpu_mem = match &gpu_backend {
        Some(g) => Some(
            g.model()
                .memory_used_bytes()
                .map_err(|err| err.to_string())?,
        ),
        None => None,
    };
    #[cfg(not(feature = "cuda"))]
    let gpu_mem: Option<(usize, usize)> = None;
    let mut report = String::new();
    let w = |r: std::fmt::Result| r.map_err(|err| CliError::Msg(err.to_string()));
    if a.json {
        let text = match tok {
            Some(t) => Some(t.decode(&g.generated_ids).map_err(e)?),
            None => None,
        };
        let j = JsonOut {
            model: a.model.display().to_string(),
            prompt_ids: &g.prompt_ids,
            generated_ids: &g.generated_ids,
            text,
            k,
            theta: a.theta,
            max_drops: a.max_drops,
            latency_source: &source,
            device: &device_name,
            decode_floor_bytes_per_token: floor_bytes,
            gpu_memory_bytes: gpu_mem,
            summary: s,
        };
        let json = serde_json::to_string(&j).map_err(|err| err.to_string())?;
        w(writeln!(report, "{json}"))?;
    } else {
        w(writeln!(report))?;
        w(writeln!(
            report,
            "--\n{} prompt + {} generated tokens{} | k = {k}, θ = {}, max drops {} | latencies: {source}",
            s.prompt_tokens,
            s.generated_tokens,
            if s.stopped { " (stopped at EOS)" } else { "" },
            a.theta,
            a.max_drops,
        ))?;
        w(writeln!(
            report,
            "{device_name}: prefill {:.3} s ({:.1} tokens/s), decode {:.3} s ({:.2} tokens/s = {:.3} ms/token)",
            s.prefill_s,
            s.prefill_tokens_per_s,
            s.decode_s,
            s.decode_tokens_per_s,
            1e3 / s.decode_tokens_per_s.max(1e-12)
        ))?;
        if s.decode_device_s > 0.0 && s.generated_tokens > 1 {
            w(writeln!(
                report,
                "GPU time per decode step {:.3} ms (CUDA events; the rest of the wall time is the host's)",
                1e3 * s.decode_device_s / (s.generated_tokens - 1) as f64
            ))?;
        }
        if let Some((used, total)) = gpu_mem {
            w(writeln!(
                report,
                "GPU memory in use: {:.2} of {:.2} GB (weights, KV cache, buffers)",
                used as f64 / 1e9,
                total as f64 / 1e9,
            ))?;
        }
        if let Some(b) = floor_bytes {
            w(writeln!(
                report,
                "decode reads at least {:.3} GB per token in fp16 ({:.3} experts per token and layer)",
                b / 1e9,
                s.decode_experts_per_token
            ))?;
        }
        w(writeln!(
            report,
            "experts per token {:.3}, kept router weight {:.3}, decisions with a drop {} of {}",
            s.experts_per_token, s.kept_weight, s.drops, s.decisions
        ))?;
        w(writeln!(
            report,
            "simulated expert latency (eq. 7-8, sequential): WDMoE {:.4} s vs top-{k} {:.4} s ({:.1} % less)",
            s.wdmoe_latency_s, s.top_k_latency_s, s.latency_reduction_pct
        ))?;
    }
    out.write_str(&report)?;
    out.flush()
}

/// `n` token ids uniform in `0..vocab`, from `seed` (a `--random-prompt`).
fn random_ids(n: usize, vocab: usize, seed: u64) -> Result<Vec<u32>, String> {
    use rand_core::{RngCore, SeedableRng};
    if n == 0 {
        return Err("--random-prompt must be at least 1".into());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Ok((0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect())
}
