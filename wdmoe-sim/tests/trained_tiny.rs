//! The trained tiny Mixtral of `models/wdmoe-tiny-mixtral` (bf16, two
//! shards, tied embeddings, byte-level BPE tokenizer.json): it loads with
//! its tokenizer and predicts its held-out text far better than chance.

#![cfg(feature = "tokenizer")]

use wdmoe_sim::model::{FixedLatency, Logits, Model, MoeConfig};

#[test]
fn trained_model_predicts_heldout_text() {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/wdmoe-tiny-mixtral");
    let m = Model::load(&d).unwrap();
    assert!(m.tied_embeddings());
    let tok = m.tokenizer().unwrap();
    let text = std::fs::read_to_string(d.join("heldout.txt")).unwrap();
    let all = tok.encode(&text[..4000]).unwrap();
    assert_ne!(all[0], 1); // the tokenizer adds no BOS
    let back = tok.decode(&all[..20]).unwrap();
    assert!(text.starts_with(&back), "{back:?}");
    // 48 tokens from inside the text (a document's first lines are headers).
    let ids = &all[300..349];
    let mut cache = m.new_cache();
    let moe = MoeConfig::top_k(2).unwrap();
    let out = m
        .forward(
            &ids[..48],
            &mut cache,
            &moe,
            &mut FixedLatency::uniform(8),
            Logits::All,
        )
        .unwrap();
    let v = m.config().vocab_size;
    let mut nll = 0.0;
    for t in 0..48 {
        let row = &out.logits[t * v..(t + 1) * v];
        let mx = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = mx + row.iter().map(|&z| (z as f64 - mx).exp()).sum::<f64>().ln();
        nll += lse - row[ids[t + 1] as usize] as f64;
    }
    let ppl = (nll / 48.0).exp();
    // Chance is 4096; 64 here (short context; the model card reports 20.4
    // over full 256-token windows of the test split).
    eprintln!("perplexity {ppl}");
    assert!(ppl > 2.0 && ppl < 150.0, "perplexity {ppl}");
}
