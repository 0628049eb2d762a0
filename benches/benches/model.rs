//! CPU tokens per second of the Mixtral model (f32, rayon) on a small
//! synthetic checkpoint: hidden 256, 8 heads over 2 KV heads, 4 layers,
//! 8 experts of width 512, top-2 / WDMoE θ = 0.2, vocab 2000. Decode: one
//! token after a 32-token prompt over the KV cache; prefill: the 32-token
//! prompt.
//!
//! `cargo bench -p wdmoe-benches --bench model`

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use wdmoe_benches::{MEASUREMENT, WARM_UP};
use wdmoe_sim::model::synth::{self, Layout};
use wdmoe_sim::model::{FixedLatency, Logits, Model, MoeConfig};

const PROMPT: usize = 32;

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(20)
        .configure_from_args();
    let mut cfg = synth::tiny_config();
    for (k, v) in [
        ("vocab_size", 2000),
        ("hidden_size", 256),
        ("intermediate_size", 512),
        ("num_hidden_layers", 4),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 2),
        ("num_local_experts", 8),
        ("max_position_embeddings", 256),
    ] {
        cfg[k] = serde_json::json!(v);
    }
    let dir = std::env::temp_dir().join(format!("wdmoe-bench-model-{}", std::process::id()));
    synth::write_checkpoint(&dir, &cfg, Layout::default(), 1).expect("write the checkpoint");
    let model = Model::load(&dir).expect("load the checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 37 + 1) % 2000).collect();
    let lat = [0.05, 0.012, 0.033, 0.02, 0.09, 0.015, 0.041, 0.027];

    let mut g = c.benchmark_group("model/cpu_small");
    for (name, moe) in [
        ("top2", MoeConfig::top_k(2).unwrap()),
        ("wdmoe_theta0.2", MoeConfig::wdmoe(2, 0.2, 1).unwrap()),
    ] {
        let mut latency = FixedLatency::new(lat.to_vec()).unwrap();
        let mut cache = model.new_cache();
        model
            .forward(&prompt, &mut cache, &moe, &mut latency, Logits::Last)
            .unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("decode_token/{name}"), |b| {
            b.iter(|| {
                cache.truncate(PROMPT);
                let out = model
                    .forward(&[7], &mut cache, &moe, &mut latency, Logits::Last)
                    .unwrap();
                black_box(out.logits[0])
            })
        });
        g.throughput(Throughput::Elements(PROMPT as u64));
        g.bench_function(format!("prefill_{PROMPT}/{name}"), |b| {
            b.iter(|| {
                let mut cache = model.new_cache();
                let out = model
                    .forward(&prompt, &mut cache, &moe, &mut latency, Logits::Last)
                    .unwrap();
                black_box(out.logits[0])
            })
        });
    }
    g.finish();
    c.final_summary();
}
