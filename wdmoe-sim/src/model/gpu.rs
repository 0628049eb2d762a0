//! The whole model on a CUDA GPU (feature `cuda`): wdmoe-cuda's
//! [`GpuModel`] loaded from the same checkpoint as the CPU reference (or
//! random weights at any shape), behind the [`Backend`] the generation
//! loop and the evaluations drive. The experts' latencies come from the
//! same [`ExpertLatency`] as on the CPU; the routing record is built by the
//! same function ([`super::moe::layer_routing`]).

use std::path::Path;
use std::time::Instant;

use wdmoe_cuda::model::{GpuModel, ModelOptions, ModelShape, Output, WeightSource};
use wdmoe_cuda::{f16, Gpu};

use super::backend::Backend;
use super::moe::layer_routing;
use super::{
    Checkpoint, ExpertLatency, ForwardOutput, Logits, MixtralConfig, ModelError, MoeConfig,
};

impl From<wdmoe_cuda::Error> for ModelError {
    fn from(e: wdmoe_cuda::Error) -> Self {
        ModelError::Gpu(e)
    }
}

/// The GPU model's shape from a checkpoint's config.
pub fn shape_of(c: &MixtralConfig, tied: bool) -> ModelShape {
    ModelShape {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.num_hidden_layers,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        experts: c.num_local_experts,
        rms_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        window: c.sliding_window,
        tied,
    }
}

/// A checkpoint as wdmoe-cuda's weight source: tensors by name, converted
/// to fp16 (values beyond fp16's range are an error, not an infinity).
pub struct CheckpointSource<'a> {
    ck: &'a Checkpoint,
}

impl<'a> CheckpointSource<'a> {
    /// Reads from `ck` (memory-mapped).
    pub fn new(ck: &'a Checkpoint) -> Self {
        CheckpointSource { ck }
    }
}

impl CheckpointSource<'_> {
    fn shape_of(&self, name: &str, len: usize) -> Result<Vec<usize>, String> {
        let (shape, _) = self
            .ck
            .info(name)
            .ok_or_else(|| "not in the checkpoint".to_string())?;
        let n: usize = shape.iter().product();
        if n != len {
            return Err(format!(
                "shape {shape:?} ({n} values), expected {len} values"
            ));
        }
        Ok(shape.to_vec())
    }
}

impl WeightSource for CheckpointSource<'_> {
    fn tensor_f16(&mut self, name: &str, len: usize) -> Result<Vec<f16>, String> {
        let shape = self.shape_of(name, len)?;
        let w = self.ck.weight(name, &shape).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(len);
        for (i, &x) in w.iter().enumerate() {
            let h = f16::from_f32(x);
            if !h.is_finite() && x.is_finite() {
                return Err(format!(
                    "value {x} at index {i} is outside fp16's range (±65504)"
                ));
            }
            out.push(h);
        }
        Ok(out)
    }

    fn tensor_f32(&mut self, name: &str, len: usize) -> Result<Vec<f32>, String> {
        let shape = self.shape_of(name, len)?;
        self.ck.tensor_f32(name, &shape).map_err(|e| e.to_string())
    }
}

/// The whole model on one GPU with its KV cache.
#[derive(Debug)]
pub struct GpuBackend {
    model: GpuModel,
    config: MixtralConfig,
    /// Latencies `[experts]` of the first layer of the decode step the
    /// model enqueued ahead (drawn in the call before; its position).
    ahead_lat: Option<(usize, Vec<f64>)>,
}

/// Prints a loading progress line to stderr every 5 % (for checkpoints of
/// gigabytes).
pub fn progress_to_stderr(label: &str) -> impl FnMut(usize, usize) + '_ {
    let mut last = 0usize;
    move |done, total| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if pct >= last + 5 || (done == total && last < 100) {
            last = pct;
            eprintln!(
                "{label}: {:.2} of {:.2} GB ({pct} %)",
                done as f64 / 1e9,
                total as f64 / 1e9
            );
        }
    }
}

impl GpuBackend {
    /// Loads the checkpoint in `dir` (config.json + safetensors) onto GPU
    /// `ordinal`; the KV cache holds `opts.max_seq` positions (at most the
    /// config's max_position_embeddings).
    pub fn load(
        dir: &Path,
        ordinal: u32,
        opts: ModelOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = MixtralConfig::from_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        let tied = config.tie_word_embeddings && !ck.contains("lm_head.weight");
        let shape = shape_of(&config, tied);
        let gpu = Gpu::new(ordinal)?;
        let opts = ModelOptions {
            max_seq: opts.max_seq.min(config.max_position_embeddings),
            ..opts
        };
        let mut src = CheckpointSource::new(&ck);
        let model = GpuModel::load(gpu, shape, &mut src, opts, progress)?;
        Ok(GpuBackend {
            model,
            config,
            ahead_lat: None,
        })
    }

    /// A model of `config`'s shape with random fp16 weights generated on
    /// GPU `ordinal` (benchmarks at full size without a checkpoint).
    pub fn random(
        config: MixtralConfig,
        ordinal: u32,
        opts: ModelOptions,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let shape = shape_of(&config, config.tie_word_embeddings);
        let gpu = Gpu::new(ordinal)?;
        let opts = ModelOptions {
            max_seq: opts.max_seq.min(config.max_position_embeddings),
            ..opts
        };
        let model = GpuModel::random(gpu, shape, opts, seed, progress)?;
        Ok(GpuBackend {
            model,
            config,
            ahead_lat: None,
        })
    }

    /// The GPU model.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// The GPU model, mutable (options such as the device policy).
    pub fn model_mut(&mut self) -> &mut GpuModel {
        &mut self.model
    }

    fn run(
        &mut self,
        tokens: &[u32],
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
        out: Output,
    ) -> Result<(Option<u32>, ForwardOutput), ModelError> {
        let t0 = Instant::now();
        let c = &self.config;
        let (n, layers, e) = (tokens.len(), c.num_hidden_layers, c.num_local_experts);
        let start = self.model.len();
        if n == 0 {
            return Err(ModelError::EmptyInput);
        }
        let max = self.model.max_seq();
        if start + n > max {
            return Err(ModelError::TooLong {
                positions: start + n,
                max_positions: max,
            });
        }
        let mut lat = vec![0.0; n * layers * e];
        for t in 0..n {
            for l in 0..layers {
                let at = (t * layers + l) * e;
                latency.latency_s(start + t, l, &mut lat[at..at + e])?;
            }
        }
        let r = self.model.forward(tokens, out, &moe.policy, &lat)?;
        let argmax = r.argmax;
        Ok((argmax, self.output(r, moe, &lat, n, start, t0)?))
    }

    /// The routing record of a forward call (`lat`: its latencies
    /// `[n][layers][experts]`).
    fn output(
        &self,
        r: wdmoe_cuda::model::ForwardOut,
        moe: &MoeConfig,
        lat: &[f64],
        n: usize,
        start: usize,
        t0: Instant,
    ) -> Result<ForwardOutput, ModelError> {
        let c = &self.config;
        let (layers, e) = (c.num_hidden_layers, c.num_local_experts);
        let gpu_time_s = r.gpu_time_s;
        let mut routing = Vec::with_capacity(layers);
        for (l, lr) in r.layers.into_iter().enumerate() {
            let mut layer_lat = Vec::with_capacity(n * e);
            for t in 0..n {
                let at = (t * layers + l) * e;
                layer_lat.extend_from_slice(&lat[at..at + e]);
            }
            routing.push(layer_routing(
                l,
                &moe.policy,
                lr.logits.iter().map(|&z| z as f64).collect(),
                layer_lat,
                lr.selections,
                lr.token_latency_s,
                lr.moe_time_s,
            )?);
        }
        Ok(ForwardOutput {
            logits: r.logits,
            start_position: start,
            routing,
            compute_s: t0.elapsed().as_secs_f64(),
            device_s: gpu_time_s,
        })
    }

    /// One greedy decode step through [`GpuModel::decode_greedy`] (the
    /// next step enqueued before this one completes): the latencies of
    /// the next step's first layer are drawn here, in order after this
    /// step's (so the draws come in the same order as one call per token).
    fn decode_greedy(
        &mut self,
        token: u32,
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
    ) -> Result<(u32, ForwardOutput), ModelError> {
        let t0 = Instant::now();
        let c = &self.config;
        let (layers, e) = (c.num_hidden_layers, c.num_local_experts);
        let start = self.model.len();
        if start + 1 > self.model.max_seq() {
            return Err(ModelError::TooLong {
                positions: start + 1,
                max_positions: self.model.max_seq(),
            });
        }
        let mut lat = vec![f64::NAN; layers * e];
        // This position's first-layer latencies, drawn in the call before
        // (for the step the model enqueued ahead): if the model discarded
        // that step and asks again, they are given again, not drawn again,
        // so every (position, layer) is drawn once and in order.
        let drawn0 = self
            .ahead_lat
            .take()
            .filter(|(pos, _)| *pos == start)
            .map(|(_, l0)| l0);
        let mut next0 = None;
        let mut failed = None;
        let r = self
            .model
            .decode_greedy(token, &moe.policy, &mut |p, l, out| {
                if let Some(l0) = drawn0.as_ref().filter(|_| (p, l) == (start, 0)) {
                    out.copy_from_slice(l0);
                    lat[..e].copy_from_slice(l0);
                    return Ok(());
                }
                if let Err(err) = latency.latency_s(p, l, out) {
                    let detail = err.to_string();
                    failed = Some(err);
                    return Err(wdmoe_cuda::Error::Shape {
                        op: "ExpertLatency::latency_s",
                        detail,
                    });
                }
                if p == start {
                    lat[l * e..(l + 1) * e].copy_from_slice(out);
                } else {
                    next0 = Some((p, out.to_vec()));
                }
                Ok(())
            });
        let r = match r {
            Ok(r) => r,
            Err(err) => {
                // The step did not happen: a retry gets the same draw.
                self.ahead_lat = drawn0.map(|l0| (start, l0));
                return Err(failed.unwrap_or_else(|| err.into()));
            }
        };
        if let Some(l0) = drawn0.filter(|_| lat[0].is_nan()) {
            // The step ran ahead (its first layer never asked again).
            lat[..e].copy_from_slice(&l0);
        }
        self.ahead_lat = next0;
        if lat.iter().any(|x| x.is_nan()) {
            return Err(wdmoe_cuda::Error::Shape {
                op: "GpuBackend::decode_greedy",
                detail: format!("the latencies of a layer of position {start} were never drawn"),
            }
            .into());
        }
        let id = r.argmax.ok_or_else(|| ModelError::NonFinite {
            what: "the argmax of the last logits".into(),
        })?;
        Ok((id, self.output(r, moe, &lat, 1, start, t0)?))
    }
}

impl Backend for GpuBackend {
    fn config(&self) -> &MixtralConfig {
        &self.config
    }

    fn cached(&self) -> usize {
        self.model.len()
    }

    fn truncate(&mut self, n: usize) {
        self.model.truncate(n);
    }

    fn forward(
        &mut self,
        tokens: &[u32],
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
        which: Logits,
    ) -> Result<ForwardOutput, ModelError> {
        let out = match which {
            Logits::All => Output::AllLogits,
            Logits::Last => Output::LastLogits,
        };
        self.run(tokens, moe, latency, out).map(|(_, o)| o)
    }

    fn forward_greedy(
        &mut self,
        token: u32,
        moe: &MoeConfig,
        latency: &mut dyn ExpertLatency,
    ) -> Result<(u32, ForwardOutput), ModelError> {
        self.decode_greedy(token, moe, latency)
    }

    fn device_name(&self) -> String {
        self.model.gpu().info().name.clone()
    }
}
