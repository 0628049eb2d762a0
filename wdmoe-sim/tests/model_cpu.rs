//! The CPU Mixtral model on synthetic checkpoints (seeded random weights
//! written in the hub layout): loader layouts and dtypes, the properties of
//! the decoder and the policy, and every error path.

mod common;

use std::path::{Path, PathBuf};

use common::Fixed;

use wdmoe_sim::model::checkpoint::{write_safetensors, TensorToWrite};
use wdmoe_sim::model::synth::{self, Layout};
use wdmoe_sim::model::{
    generate, ExpertLatency, FixedLatency, GenerateSettings, Logits, Model, ModelError, MoeConfig,
    Sampler, StoredDtype,
};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wdmoe-model-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn write(name: &str, cfg: &serde_json::Value, layout: Layout, seed: u64) -> PathBuf {
    let d = tmp(name);
    synth::write_checkpoint(&d, cfg, layout, seed).unwrap();
    d
}

/// Writes `cfg` with the given tensors (f32) into a fresh directory.
fn write_tensors(
    name: &str,
    cfg: &serde_json::Value,
    t: Vec<(String, Vec<usize>, Vec<f32>)>,
) -> PathBuf {
    let d = tmp(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let t: Vec<TensorToWrite> = t
        .into_iter()
        .map(|(name, shape, values)| TensorToWrite {
            name,
            shape,
            values,
            dtype: StoredDtype::F32,
        })
        .collect();
    write_safetensors(&d.join("model.safetensors"), &t).unwrap();
    d
}

/// Per-token latencies that change with the position and the layer.
struct Varying;

impl ExpertLatency for Varying {
    fn latency_s(&mut self, pos: usize, layer: usize, out: &mut [f64]) -> Result<(), ModelError> {
        for (q, t) in out.iter_mut().enumerate() {
            *t = 0.005 + 0.004 * ((q * 7 + pos * 3 + layer * 5) % 11) as f64;
        }
        Ok(())
    }
}

fn prompt_logits(m: &Model, ids: &[u32], moe: &MoeConfig, lat: &mut dyn ExpertLatency) -> Vec<f32> {
    let mut cache = m.new_cache();
    m.forward(ids, &mut cache, moe, lat, Logits::All)
        .unwrap()
        .logits
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |s, v| s.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |s, (x, y)| s.max((x - y).abs()))
        / scale
}

const PROMPT: [u32; 7] = [1, 17, 3, 42, 9, 63, 5];

#[test]
fn layouts_and_dtypes_load_the_same_weights() {
    let cfg = synth::tiny_config();
    let one = Model::load(&write("one", &cfg, Layout::default(), 3)).unwrap();
    let sharded = Model::load(&write(
        "sharded",
        &cfg,
        Layout {
            dtype: StoredDtype::F32,
            shards: 3,
        },
        3,
    ))
    .unwrap();
    let moe = MoeConfig::top_k(2).unwrap();
    let mut lat = FixedLatency::uniform(4);
    let a = prompt_logits(&one, &PROMPT, &moe, &mut lat);
    let b = prompt_logits(&sharded, &PROMPT, &moe, &mut lat);
    assert_eq!(a, b);
    // bf16 and f16 storage: the same model up to the storage rounding.
    for (dtype, tol) in [(StoredDtype::Bf16, 0.05), (StoredDtype::F16, 0.005)] {
        let m = Model::load(&write(
            &format!("{dtype:?}"),
            &cfg,
            Layout { dtype, shards: 2 },
            3,
        ))
        .unwrap();
        let c = prompt_logits(&m, &PROMPT, &moe, &mut lat);
        let d = max_rel_diff(&c, &a);
        assert!(d > 0.0 && d < tol, "{dtype:?}: {d}");
        // The stored values are the rounded ones, exactly.
        let w = &m.layer(1).unwrap().moe.experts[2].w2;
        assert!(w.iter().all(|&v| match dtype {
            StoredDtype::Bf16 => half::bf16::from_f32(v).to_f32() == v,
            _ => half::f16::from_f32(v).to_f32() == v,
        }));
    }
}

#[test]
fn theta_zero_equals_plain_top_k() {
    let m = Model::load(&write(
        "theta0",
        &synth::tiny_config(),
        Layout::default(),
        5,
    ))
    .unwrap();
    let top = prompt_logits(
        &m,
        &PROMPT,
        &MoeConfig::top_k(2).unwrap(),
        &mut FixedLatency::uniform(4),
    );
    let mut cache = m.new_cache();
    let out = m
        .forward(
            &PROMPT,
            &mut cache,
            &MoeConfig::wdmoe(2, 0.0, 1).unwrap(),
            &mut Varying,
            Logits::All,
        )
        .unwrap();
    assert_eq!(out.logits, top);
    for r in &out.routing {
        for (t, sel) in r.selections.iter().enumerate() {
            let z = &r.router_logits[t * 4..(t + 1) * 4];
            let plain = wdmoe_core::select::top_k::<f64, 8>(z, 2).unwrap();
            assert_eq!(sel.experts(), plain.experts());
            assert!((r.kept_weight[t] - 1.0).abs() < 1e-12);
            assert_eq!(r.token_latency_s[t], r.top_k_latency_s[t]);
        }
    }
    // θ > 0 with very different latencies changes the logits.
    let mut cache = m.new_cache();
    let wd = m
        .forward(
            &PROMPT,
            &mut cache,
            &MoeConfig::wdmoe(2, 0.3, 1).unwrap(),
            &mut Varying,
            Logits::All,
        )
        .unwrap();
    assert_ne!(wd.logits, top);
}

#[test]
fn dropping_never_adds_an_expert() {
    let m = Model::load(&write("drops", &synth::tiny_config(), Layout::default(), 7)).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 11 + 3) % 64).collect();
    for (theta, drops) in [(0.1, 1), (0.3, 1), (0.5, usize::MAX)] {
        let mut cache = m.new_cache();
        let moe = MoeConfig::wdmoe(2, theta, drops).unwrap();
        let out = m
            .forward(&ids, &mut cache, &moe, &mut Varying, Logits::Last)
            .unwrap();
        let mut dropped = 0;
        for r in &out.routing {
            for (t, sel) in r.selections.iter().enumerate() {
                let plain =
                    wdmoe_core::select::top_k::<f64, 8>(&r.router_logits[t * 4..(t + 1) * 4], 2)
                        .unwrap();
                assert!(sel.experts().iter().all(|q| plain.experts().contains(q)));
                assert!(!sel.experts().is_empty());
                assert!(r.kept_weight[t] <= 1.0 + 1e-12 && r.kept_weight[t] > 0.0);
                assert!(r.token_latency_s[t] <= r.top_k_latency_s[t]);
                dropped += !sel.dropped().is_empty() as usize;
            }
        }
        assert!(dropped > 0, "θ = {theta}: nothing dropped");
    }
}

#[test]
fn kv_cache_generation_equals_recomputing() {
    for (name, window) in [("kv-full", None), ("kv-window", Some(5))] {
        let mut cfg = synth::tiny_config();
        cfg["sliding_window"] = serde_json::json!(window);
        let m = Model::load(&write(name, &cfg, Layout::default(), 11)).unwrap();
        let moe = MoeConfig::wdmoe(2, 0.2, 1).unwrap();
        let settings = GenerateSettings {
            max_new_tokens: 12,
            stop_tokens: vec![],
            keep_prompt_logits: false,
        };
        let g = generate(
            &m,
            &PROMPT,
            &moe,
            &mut Varying,
            &mut Sampler::Greedy,
            &settings,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(g.generated_ids.len(), 12);
        let mut all = PROMPT.to_vec();
        all.extend(&g.generated_ids);
        // One pass over the whole sequence: its argmax at every position is
        // the next token the cached generation chose.
        let full = prompt_logits(&m, &all[..all.len() - 1], &moe, &mut Varying);
        let v = 64;
        for (i, &next) in g.generated_ids.iter().enumerate() {
            let row = &full[(PROMPT.len() - 1 + i) * v..(PROMPT.len() + i) * v];
            assert_eq!(
                wdmoe_sim::model::sample::argmax(row),
                next,
                "{name} step {i}"
            );
        }
        // Token by token over the cache = all at once, logits to rounding.
        let mut cache = m.new_cache();
        let mut step = Vec::new();
        for &id in &all[..all.len() - 1] {
            step.extend(
                m.forward(&[id], &mut cache, &moe, &mut Varying, Logits::Last)
                    .unwrap()
                    .logits,
            );
        }
        let d = max_rel_diff(&step, &full);
        assert!(d < 1e-5, "{name}: {d}");
        assert_eq!(cache.len(), all.len() - 1);
    }
}

/// The GQA model equals the multi-head model whose K/V heads repeat each
/// KV head for its group of query heads.
#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let mut gqa = synth::tiny_config(); // 4 heads, 2 KV heads, head_dim 8
    gqa["num_key_value_heads"] = serde_json::json!(1);
    let tensors = synth::tensors(&gqa, 13).unwrap();
    let d_gqa = write_tensors("gqa", &gqa, tensors.clone());
    let mut mha = gqa.clone();
    mha["num_key_value_heads"] = serde_json::json!(4);
    let repeated = tensors
        .into_iter()
        .map(|(name, shape, vals)| {
            if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
                let rep: Vec<f32> = (0..4).flat_map(|_| vals.iter().cloned()).collect();
                (name, vec![shape[0] * 4, shape[1]], rep)
            } else {
                (name, shape, vals)
            }
        })
        .collect();
    let d_mha = write_tensors("mha", &mha, repeated);
    let (a, b) = (Model::load(&d_gqa).unwrap(), Model::load(&d_mha).unwrap());
    let moe = MoeConfig::top_k(2).unwrap();
    let la = prompt_logits(&a, &PROMPT, &moe, &mut FixedLatency::uniform(4));
    let lb = prompt_logits(&b, &PROMPT, &moe, &mut FixedLatency::uniform(4));
    assert_eq!(la, lb);
}

#[test]
fn tied_embeddings_use_the_embedding_as_lm_head() {
    let mut tied = synth::tiny_config();
    tied["tie_word_embeddings"] = serde_json::json!(true);
    let t = synth::tensors(&tied, 17).unwrap();
    assert!(!t.iter().any(|x| x.0 == "lm_head.weight"));
    let embed = t
        .iter()
        .find(|x| x.0 == "model.embed_tokens.weight")
        .unwrap()
        .clone();
    let a = Model::load(&write_tensors("tied", &tied, t.clone())).unwrap();
    assert!(a.tied_embeddings());
    let mut untied = tied.clone();
    untied["tie_word_embeddings"] = serde_json::json!(false);
    let mut t2 = t;
    t2.push(("lm_head.weight".into(), embed.1, embed.2));
    let b = Model::load(&write_tensors("untied", &untied, t2)).unwrap();
    assert!(!b.tied_embeddings());
    let moe = MoeConfig::top_k(2).unwrap();
    let mut lat = FixedLatency::uniform(4);
    // Odd prompt lengths, 1 to 7 tokens.
    for n in [1, 3, 7] {
        assert_eq!(
            prompt_logits(&a, &PROMPT[..n], &moe, &mut lat),
            prompt_logits(&b, &PROMPT[..n], &moe, &mut lat)
        );
    }
}

fn load_err(d: &Path) -> String {
    Model::load(d).unwrap_err().to_string()
}

#[test]
fn every_error_names_what_is_wrong() {
    let cfg = synth::tiny_config();
    let all = synth::tensors(&cfg, 19).unwrap();
    // Missing tensor.
    let t: Vec<_> = all
        .iter()
        .filter(|x| !x.0.ends_with("experts.3.w2.weight"))
        .cloned()
        .collect();
    let e = load_err(&write_tensors("missing", &cfg, t));
    assert!(
        e.contains("missing tensor `model.layers.0.block_sparse_moe.experts.3.w2.weight`"),
        "{e}"
    );
    // Wrong shape.
    let t: Vec<_> = all
        .iter()
        .map(|x| {
            if x.0 == "model.norm.weight" {
                (x.0.clone(), vec![31], x.2[..31].to_vec())
            } else {
                x.clone()
            }
        })
        .collect();
    let e = load_err(&write_tensors("shape", &cfg, t));
    assert!(
        e.contains("`model.norm.weight` has shape [31], the config implies [32]"),
        "{e}"
    );
    // Wrong dtype: the norm stored as I32 (a hand-made safetensors file).
    let d = tmp("dtype");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let header = r#"{"model.norm.weight":{"dtype":"I32","shape":[32],"data_offsets":[0,128]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 128]);
    std::fs::write(d.join("model.safetensors"), bytes).unwrap();
    let ck = wdmoe_sim::model::Checkpoint::open(&d).unwrap();
    let e = ck
        .tensor_f32("model.norm.weight", &[32])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`model.norm.weight` has dtype I32"), "{e}");
    // A corrupt safetensors file.
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors: bad safetensors file"), "{e}");
    // Unknown architecture.
    let mut llama = cfg.clone();
    llama["model_type"] = serde_json::json!("llama");
    let e = load_err(&write_tensors("arch", &llama, vec![]));
    assert!(
        e.contains("config.json: unknown architecture: model_type = \"llama\""),
        "{e}"
    );
    // No config.json.
    let e = load_err(&tmp("nothing"));
    assert!(e.contains("config.json"), "{e}");
    // A shard the index names is missing.
    let d = write(
        "index",
        &cfg,
        Layout {
            dtype: StoredDtype::F32,
            shards: 2,
        },
        1,
    );
    std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");

    // Run-time errors: too long, out of range, empty; the cache is unharmed.
    let m = Model::load(&write("run", &cfg, Layout::default(), 2)).unwrap();
    let moe = MoeConfig::top_k(2).unwrap();
    let mut lat = FixedLatency::uniform(4);
    let mut cache = m.new_cache();
    let long = vec![1u32; 129];
    let e = m
        .forward(&long, &mut cache, &moe, &mut lat, Logits::Last)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "sequence of 129 tokens is longer than max_position_embeddings = 128"
    );
    let e = m
        .forward(&[1, 64], &mut cache, &moe, &mut lat, Logits::Last)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "token id 64 is out of range (vocab_size = 64)"
    );
    assert!(matches!(
        m.forward(&[], &mut cache, &moe, &mut lat, Logits::Last),
        Err(ModelError::EmptyInput)
    ));
    // Latencies for the wrong number of experts; the cache rolls back.
    let mut three = FixedLatency::new(vec![0.1; 3]).unwrap();
    let e = m
        .forward(&[1, 2], &mut cache, &moe, &mut three, Logits::Last)
        .unwrap_err();
    assert!(
        e.to_string().contains("3 latencies given for 4 experts"),
        "{e}"
    );
    assert_eq!(cache.len(), 0);
    m.forward(&[1, 2], &mut cache, &moe, &mut lat, Logits::Last)
        .unwrap();
    assert_eq!(cache.len(), 2);
    let settings = GenerateSettings {
        max_new_tokens: 200,
        stop_tokens: vec![],
        keep_prompt_logits: false,
    };
    let e = generate(
        &m,
        &[1, 2],
        &moe,
        &mut lat,
        &mut Sampler::Greedy,
        &settings,
        &mut |_| Ok(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("201 tokens is longer"), "{e}");
    assert!(FixedLatency::new(vec![0.1, -1.0]).is_err());
    assert!(MoeConfig::wdmoe(2, 0.7, 1)
        .unwrap_err()
        .to_string()
        .contains("θ=0.7"));
}

#[cfg(feature = "tokenizer")]
#[test]
fn tokenizer_round_trip_and_vocab_mismatch() {
    let cfg = synth::tiny_config();
    let d = write("tok", &cfg, Layout::default(), 4);
    let tok = |n: usize| {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<unk>".into(), 0.into());
        for i in 1..n {
            vocab.insert(format!("w{i}"), i.into());
        }
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        })
        .to_string()
    };
    std::fs::write(d.join("tokenizer.json"), tok(64)).unwrap();
    let m = Model::load(&d).unwrap();
    let t = m.tokenizer().unwrap();
    assert_eq!(t.encode("w3 w17 nope").unwrap(), vec![3, 17, 0]);
    assert_eq!(t.vocab_size(), 64);
    std::fs::write(d.join("tokenizer.json"), tok(65)).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("tokenizer has 65 tokens, more than config.json's vocab_size = 64"),
        "{e}"
    );
    std::fs::write(d.join("tokenizer.json"), "{").unwrap();
    assert!(load_err(&d).contains("tokenizer.json: tokenizer"));
}

// ------------------------------------------- scenario latency = simulator's

/// `wdmoe generate`'s latencies ([`wdmoe_sim::model::ScenarioLatency`]) are
/// what the simulator charges: on a scenario where the fading moves within
/// a token (12 layers, every 5) under the roofline device model, top-k on
/// experts {3, 5} costs, token by token, Σ over layers of the slower of the
/// two, exactly the simulator's per-token latency of its θ = 0 policy.
#[test]
fn scenario_latency_is_what_the_simulator_charges() {
    use wdmoe_sim::model::ScenarioLatency;
    use wdmoe_sim::scenario::Scenario;
    use wdmoe_sim::sim::{ChannelSchedule, Simulation};
    let layers = 12;
    let mut s = Scenario::paper();
    s.seed = 9;
    s.prompts = 1;
    s.prompt_tokens = 3;
    s.model.layers = layers as u32;
    s.channel.fading_layers = 5;
    s.radio.min_snr_db = f64::NEG_INFINITY; // every device reachable
    let sim = Simulation::with_router(s.clone(), Box::new(Fixed { layers })).unwrap();
    let o = sim.simulate_prompt(0, true).unwrap();
    let want = &o.policies[0].token_latency_s; // WDMoE θ=0 (top-k)
    assert_eq!(want.len(), 3);
    let schedule = ChannelSchedule::for_prompt(&s, layers, s.prompt_tokens);
    let mut lat = ScenarioLatency::new(sim.channel(), schedule, s.seed, 0).unwrap();
    let mut row = vec![0.0; 8];
    let mut first_layers = Vec::new();
    // Layers asked out of order (as a prefill does: every position's layer 0
    // first) see the same draws.
    for l in [7, 0] {
        lat.latency_s(2, l, &mut row).unwrap();
        first_layers.push(row.clone());
    }
    for (j, &w) in want.iter().enumerate() {
        let mut got = 0.0;
        for l in 0..layers {
            lat.latency_s(j, l, &mut row).unwrap();
            got += row[3].max(row[5]);
        }
        assert!(
            (got - w).abs() <= 1e-12 * w,
            "token {j}: {got} vs the simulator's {w}"
        );
    }
    // The fading moved within the token (layers 0 and 7 differ), so a
    // per-token draw would have failed the comparison above.
    assert_ne!(first_layers[0], first_layers[1]);
    lat.latency_s(2, 7, &mut row).unwrap();
    assert_eq!(row, first_layers[0]);
    // A layer past the schedule is an error, not a panic.
    assert!(lat.latency_s(0, layers, &mut row).is_err());
}
