//! `wdmoe eval`: perplexity and choice log-likelihoods against Hugging
//! Face's logits on the fixtures (top-2 and the WDMoE-patched block), the
//! choice scorer on hand-written samples, reports, determinism, errors.

mod common;

use std::path::{Path, PathBuf};

use common::hf::{cases, fixture_dir as fixture, moe_for, read_npy_2d};
use wdmoe_sim::eval::choice::{self, ChoiceItem, Continuation};
use wdmoe_sim::eval::perplexity::perplexity;
use wdmoe_sim::eval::{log_softmax_at, LatencySource, RoutingTotals};
use wdmoe_sim::model::{CpuBackend, FixedLatency, Logits, Model, MoeConfig};
use wdmoe_sim::progress::Progress;

const SEP: Continuation = Continuation::Separate;

fn eval_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(name)
}

fn tiny_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/wdmoe-tiny-mixtral")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn perplexity_equals_hf_on_every_fixture_and_case() {
    let mut checked = 0;
    for model_name in ["gqa", "tied-bf16", "f16"] {
        let model = Model::load(&fixture(model_name)).unwrap();
        let e = model.config().num_local_experts;
        for c in cases(model_name).cases {
            let (n, v, hf) = read_npy_2d(&fixture(model_name).join(&c.logits_npy));
            let ids = &c.prompt_ids;
            assert_eq!((n, v), (ids.len(), model.config().vocab_size));
            // HF's perplexity from HF's logits.
            let nll: f64 = (0..n - 1)
                .map(|i| -log_softmax_at(&hf[i * v..(i + 1) * v], ids[i + 1]))
                .sum();
            let hf_ppl = (nll / (n - 1) as f64).exp();
            let (moe, lat) = moe_for(&c, e);
            // One window holding the whole prompt, and a window longer than it.
            for window in [n, 64] {
                let mut totals = RoutingTotals::default();
                let row = perplexity(
                    &mut CpuBackend::new(&model),
                    ids,
                    window,
                    &moe,
                    &LatencySource::Fixed(lat.clone()),
                    &mut totals,
                    &Progress::new("", 1, false),
                )
                .unwrap();
                assert_eq!(row.tokens_scored as usize, n - 1);
                assert_eq!(row.windows, 1);
                assert!(
                    rel(row.perplexity, hf_ppl) < 1e-4,
                    "{model_name}/{}: {} vs HF {hf_ppl}",
                    c.name,
                    row.perplexity
                );
                assert_eq!(row.routing.tokens_processed as usize, n);
                if c.name == "top2" {
                    assert_eq!(row.routing.experts_per_token, c.k as f64);
                    assert_eq!(row.routing.latency_reduction_pct, 0.0);
                } else {
                    assert!(row.routing.experts_per_token < c.k as f64, "{model_name}");
                    assert!(row.routing.latency_reduction_pct > 0.0);
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn windows_split_the_stream_and_score_n_minus_one_each() {
    let model = Model::load(&fixture("gqa")).unwrap();
    let c = &cases("gqa").cases[0];
    let (moe, lat) = moe_for(c, 8);
    let run = |w: usize| {
        perplexity(
            &mut CpuBackend::new(&model),
            &c.prompt_ids,
            w,
            &moe,
            &LatencySource::Fixed(lat.clone()),
            &mut RoutingTotals::default(),
            &Progress::new("", 1, false),
        )
        .unwrap()
    };
    // 12 tokens in windows of 5: 5 + 5 + 2 tokens, 4 + 4 + 1 scored.
    let r = run(5);
    assert_eq!((r.windows, r.tokens_scored), (3, 9));
    // Windows of 4: the third window restarts the context, so its NLL is
    // that of tokens 8..12 run on their own.
    let (_, v, _) = read_npy_2d(&fixture("gqa").join(&c.logits_npy));
    let mut nll = 0.0;
    for w in c.prompt_ids.chunks(4) {
        let mut cache = model.new_cache();
        let mut l = lat.clone();
        let out = model
            .forward(w, &mut cache, &moe, &mut l, Logits::All)
            .unwrap();
        for (i, &next) in w.iter().enumerate().skip(1) {
            nll -= log_softmax_at(&out.logits[(i - 1) * v..i * v], next);
        }
    }
    let r4 = run(4);
    assert_eq!(r4.tokens_scored, 9);
    assert!(rel(r4.perplexity, (nll / 9.0).exp()) < 1e-9);
    assert!(perplexity(
        &mut CpuBackend::new(&model),
        &c.prompt_ids,
        1,
        &moe,
        &LatencySource::Fixed(lat),
        &mut RoutingTotals::default(),
        &Progress::new("", 1, false),
    )
    .unwrap_err()
    .contains("at least 2"));
}

/// The log-likelihoods of `choice-gqa-ids.jsonl` from HF's prompt logits:
/// contexts are prefixes of the prompt `P`, choices the rest of `P` (or a
/// prefix of it) or a single token.
fn hf_choice_lls(item: &ChoiceItem, p: &[u32], hf: &[f32], v: usize) -> Vec<f64> {
    let j = item.context.len();
    assert_eq!(&p[..j], &item.context[..]);
    item.choices
        .iter()
        .map(|ch| {
            if ch.len() > 1 {
                assert_eq!(
                    &p[j..j + ch.len()],
                    &ch[..],
                    "a multi-token choice follows P"
                );
            }
            ch.iter()
                .enumerate()
                .map(|(i, &t)| log_softmax_at(&hf[(j - 1 + i) * v..(j + i) * v], t))
                .sum()
        })
        .collect()
}

#[test]
fn choice_log_likelihoods_equal_hf_on_the_id_sample() {
    let model = Model::load(&fixture("gqa")).unwrap();
    let path = eval_fixture("choice-gqa-ids.jsonl");
    let items =
        choice::parse_items(&std::fs::read_to_string(&path).unwrap(), &path, &model, SEP).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].lengths, vec![1, 2, 3]);
    for c in cases("gqa").cases {
        let (_, v, hf) = read_npy_2d(&fixture("gqa").join(&c.logits_npy));
        let (moe, lat) = moe_for(&c, 8);
        let mut totals = RoutingTotals::default();
        let (row, scores) = choice::evaluate(
            &mut CpuBackend::new(&model),
            &items,
            &moe,
            &LatencySource::Fixed(lat),
            &mut totals,
            &Progress::new("", 3, false),
        )
        .unwrap();
        let mut hits = 0;
        for (item, s) in items.iter().zip(&scores) {
            let want = hf_choice_lls(item, &c.prompt_ids, &hf, v);
            for (a, b) in s.log_likelihoods.iter().zip(&want) {
                assert!(rel(*a, *b) < 1e-4, "{}: {a} vs HF {b}", c.name);
            }
            let best = (0..want.len())
                .max_by(|&a, &b| want[a].total_cmp(&want[b]).then(b.cmp(&a)))
                .unwrap();
            assert_eq!(s.pred, best);
            hits += (best == item.label) as usize;
        }
        // Item 2: the full continuation adds a negative term to its
        // two-token prefix, so it never wins; the label is that choice.
        assert_ne!(scores[1].pred, 2);
        assert!(scores[1].log_likelihoods[2] < scores[1].log_likelihoods[1]);
        // acc_norm divides by the token count for id items.
        let norm: Vec<f64> = scores[1]
            .log_likelihoods
            .iter()
            .zip([1.0, 2.0, 3.0])
            .map(|(l, n)| l / n)
            .collect();
        let best_norm = (0..3)
            .max_by(|&a, &b| norm[a].total_cmp(&norm[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(scores[1].pred_norm, best_norm);
        assert_eq!(row.items, 3);
        assert!((row.acc - hits as f64 / 3.0).abs() < 1e-12, "{}", c.name);
        assert!(row.acc_ci95_lo <= row.acc && row.acc <= row.acc_ci95_hi);
    }
}

#[test]
fn choice_parse_errors_name_the_line() {
    let model = Model::load(&fixture("gqa")).unwrap();
    let p = Path::new("t.jsonl");
    let err = |text: &str| choice::parse_items(text, p, &model, SEP).unwrap_err();
    let ok = r#"{"context_ids": [1], "choices_ids": [[2], [3]], "label": 1}"#;
    assert!(err(&format!(
        "{ok}\n{{\"context_ids\": [1], \"choices_ids\": [[2], [3]], \"label\": 2}}"
    ))
    .starts_with("t.jsonl:2: label 2"));
    assert!(
        err(r#"{"context_ids": [1], "choices_ids": [[2], []], "label": 0}"#)
            .contains("choice 1 has no token")
    );
    assert!(
        err(r#"{"context_ids": [], "choices_ids": [[2], [3]], "label": 0}"#)
            .contains("context has no token")
    );
    assert!(
        err(r#"{"context_ids": [1], "choices_ids": [[2]], "label": 0}"#).contains("at least 2")
    );
    assert!(
        err(r#"{"context_ids": [1], "choices_ids": [[2], [999]], "label": 0}"#).contains("999")
    );
    assert!(
        err(r#"{"context_ids": [1], "choices": ["a", "b"], "label": 0}"#)
            .contains("\"context\" and \"choices\"")
    );
    // Text items need a tokenizer; the fixture has none.
    assert!(
        err(r#"{"context": "a", "choices": ["b", "c"], "label": 0}"#).contains("tokenizer.json")
    );
    assert!(err("not json").starts_with("t.jsonl:1:"));
    assert!(err("\n\n").contains("no item"));
    assert_eq!(choice::parse_items(ok, p, &model, SEP).unwrap().len(), 1);
}

/// A random model with the tiny model's vocabulary, BOS id and tokenizer
/// (fast in a debug build): the text protocol, not the trained weights.
fn random_model_with_tiny_tokenizer(tag: &str) -> Model {
    let dir = std::env::temp_dir().join(format!("wdmoe-eval-tok-{}-{tag}", std::process::id()));
    let mut cfg = wdmoe_sim::model::synth::tiny_config();
    cfg["vocab_size"] = 4096.into();
    cfg["bos_token_id"] = 1.into();
    wdmoe_sim::model::synth::write_checkpoint(&dir, &cfg, Default::default(), 3).unwrap();
    std::fs::copy(
        tiny_model_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    Model::load(&dir).unwrap()
}

#[test]
fn text_choices_follow_the_protocol_and_equal_full_forward_passes() {
    let model = random_model_with_tiny_tokenizer("separate");
    let path = eval_fixture("choice-sample.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let items = choice::parse_items(&text, &path, &model, SEP).unwrap();
    let tok = model.tokenizer().unwrap();
    let v = model.config().vocab_size;
    let e = model.config().num_local_experts;
    let moe = MoeConfig::wdmoe(2, 0.2, 1).unwrap();
    let lat = FixedLatency::new((1..=e).map(|q| q as f64 * 0.01).collect()).unwrap();
    let (row, scores) = choice::evaluate(
        &mut CpuBackend::new(&model),
        &items,
        &moe,
        &LatencySource::Fixed(lat.clone()),
        &mut RoutingTotals::default(),
        &Progress::new("", 3, false),
    )
    .unwrap();
    let mut hits = [0, 0];
    for (line, (item, s)) in text.lines().zip(items.iter().zip(&scores)) {
        let raw: serde_json::Value = serde_json::from_str(line).unwrap();
        // [bos] + encode(context); each choice tokenised on its own.
        let mut ctx = vec![1u32];
        ctx.extend(tok.encode(raw["context"].as_str().unwrap()).unwrap());
        assert_eq!(item.context, ctx);
        let mut want = Vec::new();
        for (ci, ch) in raw["choices"].as_array().unwrap().iter().enumerate() {
            let ch = ch.as_str().unwrap();
            let cont = tok.encode(ch).unwrap();
            assert_eq!(item.choices[ci], cont);
            assert_eq!(item.lengths[ci], ch.len());
            // One forward pass over context + choice, no cache reuse.
            let all: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
            let out = model
                .forward(
                    &all,
                    &mut model.new_cache(),
                    &moe,
                    &mut lat.clone(),
                    Logits::All,
                )
                .unwrap();
            let ll: f64 = (0..cont.len())
                .map(|i| {
                    let r = ctx.len() - 1 + i;
                    log_softmax_at(&out.logits[r * v..(r + 1) * v], cont[i])
                })
                .sum();
            assert!(
                rel(s.log_likelihoods[ci], ll) < 1e-5,
                "{ch}: {} vs {ll}",
                s.log_likelihoods[ci]
            );
            want.push((ll, ll / ch.len() as f64));
        }
        let first_max = |f: &dyn Fn(&(f64, f64)) -> f64| {
            (0..want.len())
                .max_by(|&a, &b| f(&want[a]).total_cmp(&f(&want[b])).then(b.cmp(&a)))
                .unwrap()
        };
        assert_eq!(s.pred, first_max(&|w| w.0));
        assert_eq!(s.pred_norm, first_max(&|w| w.1));
        hits[0] += (s.pred == item.label) as usize;
        hits[1] += (s.pred_norm == item.label) as usize;
    }
    assert_eq!(row.acc, hits[0] as f64 / 3.0);
    assert_eq!(row.acc_norm, hits[1] as f64 / 3.0);
}

#[test]
fn joint_continuations_split_the_whole_encoding() {
    let model = random_model_with_tiny_tokenizer("joint");
    let tok = model.tokenizer().unwrap();
    let path = eval_fixture("choice-sample.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let joint = choice::parse_items(&text, &path, &model, Continuation::Joint).unwrap();
    for (line, item) in text.lines().zip(&joint) {
        let raw: serde_json::Value = serde_json::from_str(line).unwrap();
        let ctx = raw["context"].as_str().unwrap();
        for (ci, ch) in raw["choices"].as_array().unwrap().iter().enumerate() {
            // [bos] + context tokens + continuation = [bos] + encode(context + choice).
            let mut whole = vec![1u32];
            whole.extend(
                tok.encode(&format!("{ctx}{}", ch.as_str().unwrap()))
                    .unwrap(),
            );
            let got: Vec<u32> = item
                .context
                .iter()
                .chain(&item.choices[ci])
                .copied()
                .collect();
            assert_eq!(got, whole);
        }
    }
    // Trailing whitespace of the context moves to the choice.
    let line = r#"{"context": "To install a package, run ", "choices": ["pip install.", "the dishwasher."], "label": 0}"#;
    let it = &choice::parse_items(line, &path, &model, Continuation::Joint).unwrap()[0];
    let mut ctx = vec![1u32];
    ctx.extend(tok.encode("To install a package, run").unwrap());
    assert_eq!(it.context, ctx);
    assert_eq!(it.choices[0], tok.encode(" pip install.").unwrap());
    assert_eq!(it.lengths, vec![12, 15]);
    // Separate tokenisation keeps the space in the context.
    let sep = &choice::parse_items(line, &path, &model, SEP).unwrap()[0];
    assert_eq!(sep.choices[0], tok.encode("pip install.").unwrap());
    assert_ne!(sep.context, it.context);
}

/// The model card's figures: acc 0.348 (49 of 141) and acc_norm 0.326 (46
/// of 141) with HF at top-2; and the trained model's picks on the
/// hand-written sample. About 30 s in a release
/// build, many minutes in a debug one:
/// `cargo test --release -p wdmoe-sim --test eval` (ignored in debug builds).
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "a full pass over 141 items of the trained model: runs in release builds (see the doc comment)"
)]
fn tiny_model_choice_accuracy_equals_the_model_card() {
    let model = Model::load(&tiny_model_dir()).unwrap();
    let sample = eval_fixture("choice-sample.jsonl");
    let items = choice::parse_items(
        &std::fs::read_to_string(&sample).unwrap(),
        &sample,
        &model,
        SEP,
    )
    .unwrap();
    let (row, scores) = choice::evaluate(
        &mut CpuBackend::new(&model),
        &items,
        &MoeConfig::top_k(2).unwrap(),
        &LatencySource::Fixed(FixedLatency::uniform(8)),
        &mut RoutingTotals::default(),
        &Progress::new("", 3, false),
    )
    .unwrap();
    // In-domain continuations win; on item 3 the short " pip install."
    // wins by sum and the right, longer " python -m pip install." per byte:
    // what acc_norm is for.
    let picks: Vec<(usize, usize)> = scores.iter().map(|s| (s.pred, s.pred_norm)).collect();
    assert_eq!(picks, [(0, 0), (0, 0), (0, 3)], "{scores:?}");
    assert_eq!((row.acc, row.acc_norm), (2.0 / 3.0, 1.0));
    let path = tiny_model_dir().join("heldout-choice.jsonl");
    let items =
        choice::parse_items(&std::fs::read_to_string(&path).unwrap(), &path, &model, SEP).unwrap();
    assert_eq!(items.len(), 141);
    let (row, _) = choice::evaluate(
        &mut CpuBackend::new(&model),
        &items,
        &MoeConfig::top_k(2).unwrap(),
        &LatencySource::Fixed(FixedLatency::uniform(8)),
        &mut RoutingTotals::default(),
        &Progress::new("", 141, false),
    )
    .unwrap();
    assert_eq!((row.acc * 141.0).round() as usize, 49, "acc {}", row.acc);
    assert_eq!(
        (row.acc_norm * 141.0).round() as usize,
        46,
        "acc_norm {}",
        row.acc_norm
    );
}

/// Eval's channel latencies ([`LatencySource::channel`], what `wdmoe eval`
/// uses) are what the simulator charges, sequentially: on a scenario whose
/// fading moves within a token (12 layers, every 5) and whose accounting is
/// batched, sequence 1's positions cost, over the layers, the slower of
/// experts {3, 5}, exactly the simulator's per-token θ = 0 latency of
/// prompt 1 with the same seed under sequential accounting.
#[test]
fn eval_channel_latency_is_what_the_simulator_charges() {
    use wdmoe_sim::model::ScenarioLatency;
    use wdmoe_sim::scenario::{Accounting, Scenario};
    use wdmoe_sim::sim::Simulation;
    let layers = 12;
    let mut s = Scenario::paper();
    s.seed = 4;
    s.prompts = 2;
    s.prompt_tokens = 3;
    s.model.layers = layers as u32;
    s.channel.fading_layers = 5;
    s.radio.min_snr_db = f64::NEG_INFINITY; // every device reachable
    s.accounting = Accounting::Sequential;
    let sim = Simulation::with_router(s.clone(), Box::new(common::Fixed { layers })).unwrap();
    let o = sim.simulate_prompt(1, true).unwrap();
    let want = &o.policies[0].token_latency_s; // WDMoE θ=0 (top-k)
    assert!(want.len() >= 3, "{} tokens", want.len());
    // Eval ignores a batched accounting (a scoring pass has no prefill).
    let mut batched = s.clone();
    batched.accounting = Accounting::Batched;
    let channel = ScenarioLatency::channel_for(&batched, 8).unwrap();
    let source = LatencySource::channel(&channel, &batched, layers, s.seed);
    let mut lat = source.for_sequence(1).unwrap();
    let mut row = vec![0.0; 8];
    for (j, &w) in want.iter().enumerate() {
        let mut got = 0.0;
        for l in 0..layers {
            lat.latency_s(j, l, &mut row).unwrap();
            got += row[3].max(row[5]);
        }
        assert!(
            (got - w).abs() <= 1e-12 * w,
            "position {j}: {got} vs the simulator's {w}"
        );
    }
    // Another sequence is another prompt's channel.
    let mut other = source.for_sequence(0).unwrap();
    let mut row0 = vec![0.0; 8];
    other.latency_s(0, 0, &mut row0).unwrap();
    lat.latency_s(0, 0, &mut row).unwrap();
    assert_ne!(row, row0);
}
