//! Parity with Hugging Face transformers: the fixtures in
//! `tests/fixtures/hf/` (made by `scripts/make_hf_fixtures.py`) hold tiny
//! random Mixtral checkpoints with HF's prompt logits and greedy tokens,
//! for plain top-2 and for HF's MoE block patched with a port of the WDMoE
//! policy. The CPU model must give the same logits (1e-4 relative to the
//! largest |logit|) and the same greedy tokens.

mod common;

use common::hf::{cases, fixture_dir, moe_for, read_npy_f32};

use wdmoe_sim::model::{generate, GenerateSettings, Logits, Model, Sampler};

fn check_model(name: &str) {
    let d = fixture_dir(name);
    let cases = cases(name);
    assert_eq!(cases.model, name);
    assert!(cases.transformers_version.starts_with('5'));
    assert_eq!(cases.cases.len(), 2);
    let model = Model::load(&d).unwrap();
    let c = model.config().clone();
    for case in &cases.cases {
        let ctx = format!("{name}/{}", case.name);
        let (moe, mut lat) = moe_for(case, c.num_local_experts);
        // Prompt logits.
        let mut cache = model.new_cache();
        let out = model
            .forward(&case.prompt_ids, &mut cache, &moe, &mut lat, Logits::All)
            .unwrap();
        let (shape, hf) = read_npy_f32(&d.join(&case.logits_npy));
        assert_eq!(shape, vec![case.prompt_ids.len(), c.vocab_size], "{ctx}");
        let scale = hf.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let worst = out
            .logits
            .iter()
            .zip(&hf)
            .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            worst <= 1e-4 * scale,
            "{ctx}: max |Δlogit| = {worst}, largest |logit| = {scale}"
        );
        eprintln!("{ctx}: max rel err {:.2e}", worst / scale);
        // The WDMoE case really drops experts (else it tests nothing new).
        let drops: usize = out
            .routing
            .iter()
            .flat_map(|r| &r.selections)
            .filter(|s| !s.dropped().is_empty())
            .count();
        if case.theta > 0.0 {
            assert!(drops > 0, "{ctx}: no expert dropped");
        } else {
            assert_eq!(drops, 0, "{ctx}");
        }
        // Greedy generation over the KV cache.
        let settings = GenerateSettings {
            max_new_tokens: case.max_new_tokens,
            stop_tokens: Vec::new(),
            keep_prompt_logits: true,
        };
        assert!(case.greedy_new_ids.len() >= 16);
        let g = generate(
            &model,
            &case.prompt_ids,
            &moe,
            &mut lat,
            &mut Sampler::Greedy,
            &settings,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(g.generated_ids, case.greedy_new_ids, "{ctx}");
        assert_eq!(g.prompt_logits.as_deref(), Some(&out.logits[..]), "{ctx}");
    }
}

#[test]
fn gqa_f32_matches_hf() {
    check_model("gqa");
}

#[test]
fn tied_bf16_sharded_sliding_window_matches_hf() {
    let m = Model::load(&fixture_dir("tied-bf16")).unwrap();
    assert!(m.tied_embeddings());
    assert!(m.config().sliding_window.is_some_and(|w| w < 23));
    check_model("tied-bf16");
}

#[test]
fn f16_odd_prompt_matches_hf() {
    check_model("f16");
}
