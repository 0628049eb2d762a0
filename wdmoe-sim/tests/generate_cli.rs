//! `wdmoe generate`: the command on the HF fixtures (greedy tokens equal
//! HF's), JSON, the logits dump, streaming, and its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wdmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(args)
        .output()
        .expect("run wdmoe")
}

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(model)
}

fn case(model: &str, name: &str) -> serde_json::Value {
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(model).join("cases.json")).unwrap())
            .unwrap();
    c["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn join(v: &serde_json::Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn json_and_dump_match_hf_wdmoe_case() {
    let c = case("gqa", "wdmoe");
    let dump = std::env::temp_dir().join(format!("wdmoe-gen-{}.npy", std::process::id()));
    let model = fixture("gqa");
    let (ids, lat) = (join(&c["prompt_ids"]), join(&c["latency_s"]));
    let theta = c["theta"].to_string();
    // max_drops null = no limit.
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &ids,
        "--theta",
        &theta,
        "--latency-s",
        &lat,
        "--max-new-tokens",
        "16",
        "--json",
        "--dump-logits",
        dump.to_str().unwrap(),
    ];
    let drops = c["max_drops"].as_u64().unwrap_or(1000).to_string();
    args.extend(["--max-drops", &drops]);
    let out = wdmoe(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["prompt_ids"], c["prompt_ids"]);
    assert_eq!(j["generated_ids"], c["greedy_new_ids"]);
    let s = &j["summary"];
    assert_eq!(s["generated_tokens"], 16);
    assert_eq!(s["decisions"], (12 + 15) * 2);
    let e = s["experts_per_token"].as_f64().unwrap();
    assert!((1.0..2.0).contains(&e), "{e}");
    let (wd, tk) = (
        s["wdmoe_latency_s"].as_f64().unwrap(),
        s["top_k_latency_s"].as_f64().unwrap(),
    );
    assert!(wd > 0.0 && wd < tk, "{wd} {tk}");
    // The dump is HF's prompt logits to 1e-4 (the .npy writer is trace's).
    let ours = std::fs::read(&dump).unwrap();
    let hf = std::fs::read(fixture("gqa").join("wdmoe.logits.npy")).unwrap();
    assert_eq!(ours.len(), hf.len());
    let data = |b: &[u8]| -> Vec<f32> {
        let h = u16::from_le_bytes([b[8], b[9]]) as usize;
        b[10 + h..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (a, b) = (data(&ours), data(&hf));
    assert_eq!(a.len(), 12 * 320);
    let scale = b.iter().fold(0.0f32, |s, v| s.max(v.abs()));
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale));
}

#[test]
fn streams_ids_and_a_summary_under_the_default_scenario() {
    let c = case("f16", "top2");
    let model = fixture("f16");
    let ids = join(&c["prompt_ids"]);
    let out = wdmoe(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        &ids,
        "--theta",
        "0",
        "--max-new-tokens",
        "16",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    let want: Vec<String> = c["greedy_new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(first, want.join(" "));
    assert!(
        text.contains("experts per token 2.000, kept router weight 1.000"),
        "{text}"
    );
    assert!(
        text.contains("latencies: the default scenario, channel seed 1"),
        "{text}"
    );
    assert!(text.contains("(0.0 % less)"), "{text}");
}

#[test]
fn errors_are_clear() {
    let model = fixture("gqa");
    let m = model.to_str().unwrap();
    let err = |args: &[&str]| {
        let o = wdmoe(args);
        assert!(!o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    let e = err(&[
        "generate",
        "--model",
        m,
        "--prompt-ids",
        "1,2",
        "--device",
        "cuda",
    ]);
    assert!(e.contains("not built with cuda"), "{e}");
    let e = err(&["generate", "--model", m, "--prompt", "hi"]);
    assert!(e.contains("tokenizer.json; give --prompt-ids"), "{e}");
    let e = err(&["generate", "--model", m, "--prompt-ids", "1,320"]);
    assert!(
        e.contains("token id 320 is out of range (vocab_size = 320)"),
        "{e}"
    );
    let e = err(&[
        "generate",
        "--model",
        m,
        "--prompt-ids",
        "1",
        "--latency-s",
        "0.1,0.2",
    ]);
    assert!(
        e.contains("--latency-s has 2 values, the model has 8 experts"),
        "{e}"
    );
    let e = err(&[
        "generate",
        "--model",
        m,
        "--prompt-ids",
        "1",
        "--max-new-tokens",
        "200",
    ]);
    assert!(
        e.contains("longer than max_position_embeddings = 128"),
        "{e}"
    );
    let e = err(&[
        "generate",
        "--model",
        m,
        "--prompt-ids",
        "1",
        "--theta",
        "0.9",
    ]);
    assert!(e.contains("θ=0.9"), "{e}");
    let e = err(&["generate", "--model", "/nonexistent", "--prompt-ids", "1"]);
    assert!(e.contains("/nonexistent/config.json"), "{e}");
}

#[cfg(feature = "tokenizer")]
#[test]
fn text_prompt_through_tokenizer_json() {
    // The gqa fixture plus a word-level tokenizer: "w{i}" is token i.
    let d = std::env::temp_dir().join(format!("wdmoe-gen-tok-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gqa").join(f), d.join(f)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for i in 1..320 {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(d.join("tokenizer.json"), tok.to_string()).unwrap();
    let c = case("gqa", "top2");
    let prompt: Vec<String> = c["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("w{x}"))
        .collect();
    let prompt = prompt.join(" ");
    let m = d.to_str().unwrap();
    let want: Vec<String> = c["greedy_new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .take(8)
        .map(|x| format!("w{x}"))
        .collect();
    let base = [
        "generate",
        "--model",
        m,
        "--prompt",
        &prompt,
        "--theta",
        "0",
        "--max-new-tokens",
        "8",
    ];
    let out = wdmoe(&[&base[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["prompt_ids"], c["prompt_ids"]);
    assert_eq!(j["text"], want.join(" "));
    // Streamed: the same words, continuing the prompt's text.
    let out = wdmoe(&base);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().next().unwrap(), format!(" {}", want.join(" ")));
}
