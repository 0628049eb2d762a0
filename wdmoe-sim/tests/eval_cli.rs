//! `wdmoe eval` and `--record-trace` as commands: JSON rows, the report
//! files, determinism per seed, the CUDA error, and a recorded trace run
//! through `wdmoe sweep`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn wdmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(args)
        .output()
        .expect("run wdmoe")
}

fn ok(args: &[&str]) -> String {
    let o = wdmoe(args);
    assert!(
        o.status.success(),
        "wdmoe {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let o = wdmoe(args);
    assert!(!o.status.success(), "wdmoe {args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(model)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wdmoe-eval-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn case(model: &str, name: &str) -> Value {
    let c: Value =
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

fn ids_file(dir: &Path, ids: &Value) -> PathBuf {
    let p = dir.join("ids.txt");
    let text: Vec<String> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    // Mixed whitespace on purpose.
    std::fs::write(
        &p,
        format!("{}\n\t{}\n", text[..5].join(" "), text[5..].join("  ")),
    )
    .unwrap();
    p
}

/// Rows without the host time (which varies run to run).
fn rows(json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("compute_s");
            r
        })
        .collect()
}

#[test]
fn perplexity_json_out_and_determinism() {
    let d = tmp("ppl");
    let c = case("gqa", "wdmoe");
    let ids = ids_file(&d, &c["prompt_ids"]);
    let model = fixture("gqa");
    let lat: Vec<String> = c["latency_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let lat = lat.join(",");
    let base = [
        "eval",
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        ids.to_str().unwrap(),
        "--max-drops",
        "8",
        "--quiet",
    ];
    // Fixed latencies: θ = 0 is plain top-2, θ = 0.2 the fixture's WDMoE case.
    let mut a = base.to_vec();
    a.extend(["--theta", "0,0.2", "--latency-s", &lat, "--json"]);
    let r = rows(&ok(&a));
    assert_eq!(r.len(), 2);
    assert_eq!(r[0]["theta"], 0.0);
    assert_eq!(r[0]["tokens_scored"], 11);
    assert_eq!(r[0]["experts_per_token"], 2.0);
    assert!(r[1]["experts_per_token"].as_f64().unwrap() < 2.0);
    assert!(r[1]["latency_reduction_pct"].as_f64().unwrap() > 0.0);
    // The library's value, which tests/eval.rs checks against HF.
    let p0 = r[0]["perplexity"].as_f64().unwrap();
    let p2 = r[1]["perplexity"].as_f64().unwrap();
    assert!(p0 > 1.0 && p2 > 1.0 && p0 != p2);

    // The default scenario: the same seed gives the same rows, another seed other latencies.
    let mut a = base.to_vec();
    a.extend(["--theta", "0,0.1,0.3", "--seed", "7", "--json"]);
    let r7 = rows(&ok(&a));
    assert_eq!(r7, rows(&ok(&a)));
    let mut b = base.to_vec();
    b.extend(["--theta", "0,0.1,0.3", "--seed", "8", "--json"]);
    let r8 = rows(&ok(&b));
    assert_ne!(
        r7[0]["top_k_latency_s_per_token"],
        r8[0]["top_k_latency_s_per_token"]
    );
    let red: Vec<f64> = r7
        .iter()
        .map(|x| x["latency_reduction_pct"].as_f64().unwrap())
        .collect();
    assert!(red[2] >= red[1] && red[1] > 0.0, "{red:?}");

    // --out: CSV (a header and one line per θ), JSON, SVG; the table on stdout.
    let out = d.join("out");
    let mut a = base.to_vec();
    a.extend([
        "--theta",
        "0,0.2",
        "--latency-s",
        &lat,
        "--out",
        out.to_str().unwrap(),
    ]);
    let table = ok(&a);
    assert!(
        table.contains("perplexity") && table.contains("reduction %"),
        "{table}"
    );
    let csv = std::fs::read_to_string(out.join("eval-perplexity.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("theta,perplexity,"));
    assert!(lines[1].starts_with(&format!("0,{p0}")), "{csv}");
    let j = std::fs::read_to_string(out.join("eval-perplexity.json")).unwrap();
    assert_eq!(rows(&j).len(), 2);
    let svg = std::fs::read_to_string(out.join("eval-perplexity.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("θ=0.2") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn choice_json_on_the_id_sample() {
    let model = fixture("gqa");
    let tasks =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/choice-gqa-ids.jsonl");
    let out = ok(&[
        "eval",
        "choice",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        tasks.to_str().unwrap(),
        "--theta",
        "0,0.3",
        "--json",
        "--quiet",
    ]);
    let r = rows(&out);
    assert_eq!(r.len(), 2);
    for x in &r {
        assert_eq!(x["items"], 3);
        let acc = x["acc"].as_f64().unwrap();
        assert!(
            x["acc_ci95_lo"].as_f64().unwrap() <= acc && acc <= x["acc_ci95_hi"].as_f64().unwrap()
        );
    }
    // --limit keeps the first items.
    let one = rows(&ok(&[
        "eval",
        "choice",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        tasks.to_str().unwrap(),
        "--theta",
        "0",
        "--limit",
        "1",
        "--json",
        "--quiet",
    ]));
    assert_eq!(one[0]["items"], 1);
}

#[test]
fn errors_are_clear() {
    let d = tmp("err");
    let model = fixture("gqa");
    let m = model.to_str().unwrap();
    let c = case("gqa", "top2");
    let ids = ids_file(&d, &c["prompt_ids"]);
    let i = ids.to_str().unwrap();
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        i,
        "--device",
        "cuda",
    ]);
    assert!(e.contains("--device cuda") && e.contains("cuda"), "{e}");
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        i,
        "--window",
        "1",
    ]);
    assert!(e.contains("--window 1"), "{e}");
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        i,
        "--window",
        "500",
    ]);
    assert!(e.contains("max_position_embeddings = 128"), "{e}");
    let e = fails(&["eval", "perplexity", "--model", m, "--text", i]);
    assert!(e.contains("tokenizer.json") && e.contains("--ids"), "{e}");
    let bad = d.join("bad.txt");
    std::fs::write(&bad, "1 2 x3").unwrap();
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        bad.to_str().unwrap(),
    ]);
    assert!(e.contains("bad.txt") && e.contains("entry 3"), "{e}");
    std::fs::write(&bad, "1 2 5000").unwrap();
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        bad.to_str().unwrap(),
    ]);
    assert!(e.contains("5000") && e.contains("vocabulary"), "{e}");
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        i,
        "--theta",
        "0.7",
    ]);
    assert!(e.contains("--theta 0.7"), "{e}");
    let e = fails(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        i,
        "--latency-s",
        "1,2",
    ]);
    assert!(e.contains("2 values") && e.contains("8 experts"), "{e}");
    let e = fails(&[
        "eval",
        "choice",
        "--model",
        m,
        "--tasks",
        "/nonexistent.jsonl",
    ]);
    assert!(e.contains("/nonexistent.jsonl"), "{e}");
}

#[test]
fn recorded_traces_round_trip_through_sweep() {
    let d = tmp("trace");
    let model = fixture("gqa");
    let m = model.to_str().unwrap();
    let c = case("gqa", "top2");
    let prompt: Vec<String> = c["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let gen = d.join("gen.npy");
    ok(&[
        "generate",
        "--model",
        m,
        "--prompt-ids",
        &prompt.join(","),
        "--theta",
        "0",
        "--max-new-tokens",
        "5",
        "--json",
        "--record-trace",
        gen.to_str().unwrap(),
    ]);
    // 12 prompt tokens + 4 one-token steps (the 5th token is never run).
    let t = wdmoe_sim::trace::Trace::from_path(&gen).unwrap();
    assert_eq!((t.tokens(), t.layers(), t.experts()), (16, 2, 8));
    // The recorded logits are the model's router logits.
    let mdl = wdmoe_sim::model::Model::load(&model).unwrap();
    let ids: Vec<u32> = prompt.iter().map(|x| x.parse().unwrap()).collect();
    let out = mdl
        .forward(
            &ids,
            &mut mdl.new_cache(),
            &wdmoe_sim::model::MoeConfig::top_k(2).unwrap(),
            &mut wdmoe_sim::model::FixedLatency::uniform(8),
            wdmoe_sim::model::Logits::Last,
        )
        .unwrap();
    for tok in [0, 11] {
        for l in 0..2 {
            let want: Vec<f64> = out.routing[l].router_logits[tok * 8..(tok + 1) * 8]
                .iter()
                .map(|&z| z as f32 as f64)
                .collect();
            assert_eq!(t.logits(tok, l), &want[..]);
        }
    }
    // eval records every token run at the first θ.
    let ids_path = ids_file(&d, &c["prompt_ids"]);
    let ev = d.join("eval.npy");
    ok(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--ids",
        ids_path.to_str().unwrap(),
        "--window",
        "5",
        "--theta",
        "0,0.2",
        "--record-trace",
        ev.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(
        wdmoe_sim::trace::Trace::from_path(&ev).unwrap().tokens(),
        12
    );
    // The recorded trace drives the latency study.
    let sc = d.join("trace.toml");
    let base = ok(&["scenario", "--print-default"]);
    let toml = base
        .replace("layers = 32", "layers = 2")
        .replace("kind = \"synthetic\"", "kind = \"trace\"")
        .replace(
            "trace_path = \"\"",
            &format!("trace_path = {:?}", gen.to_str().unwrap()),
        );
    assert!(
        toml.contains("kind = \"trace\"") && toml.contains("layers = 2"),
        "{toml}"
    );
    std::fs::write(&sc, toml).unwrap();
    let s = ok(&[
        "sweep",
        "--scenario",
        sc.to_str().unwrap(),
        "--prompts",
        "4",
        "--tokens",
        "4",
        "--quiet",
    ]);
    assert!(
        s.contains("recorded router trace: 16 tokens × 2 layers × 8 experts"),
        "{s}"
    );
    assert!(s.contains("θ=0.2"), "{s}");
    // The trained vs synthetic router table.
    let st = ok(&[
        "router-stats",
        "--trace",
        gen.to_str().unwrap(),
        "--tokens-per-prompt",
        "8",
    ]);
    assert!(st.contains("w2/w1 p50") && st.contains("synthetic"), "{st}");
}
