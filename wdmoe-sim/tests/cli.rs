//! The `wdmoe` command: every subcommand, good and bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn wdmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(args)
        .output()
        .expect("run wdmoe")
}

fn wdmoe_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wdmoe"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wdmoe");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wdmoe-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn reproduce_prints_the_table_and_writes_files() {
    let d = tmpdir("repro");
    let out = wdmoe(&[
        "reproduce",
        "--prompts",
        "6",
        "--tokens",
        "4",
        "--out",
        d.to_str().unwrap(),
        "--svg",
        d.join("fig3.svg").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let so = text(&out.stdout);
    for want in [
        "sequential (eq. 8)",
        "WDMoE θ=0 (top-k)",
        "WDMoE θ=0.2",
        "WDMoE θ=0.3",
        "paper reduction",
        "16.2–37.5 %",
        "kept weight",
        "fallbacks",
    ] {
        assert!(so.contains(want), "missing {want:?} in\n{so}");
    }
    let csv = std::fs::read_to_string(d.join("reproduce.csv")).unwrap();
    assert!(csv.starts_with("policy,family,parameter,accounting"));
    assert_eq!(csv.lines().count(), 8);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reproduce.json")).unwrap()).unwrap();
    assert_eq!(json["accounting"], "sequential");
    assert_eq!(json["rows"].as_array().unwrap().len(), 7);
    let svg = std::fs::read_to_string(d.join("fig3.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("WDMoE threshold θ") && svg.contains("mean prompt latency [s]"));
}

#[test]
fn reproduce_batched_and_same_output_on_any_thread_count() {
    let a = wdmoe(&[
        "reproduce",
        "-q",
        "--prompts",
        "5",
        "--tokens",
        "6",
        "--accounting",
        "batched",
        "--threads",
        "1",
    ]);
    let b = wdmoe(&[
        "reproduce",
        "-q",
        "--prompts",
        "5",
        "--tokens",
        "6",
        "--accounting",
        "batched",
        "--threads",
        "3",
    ]);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert!(text(&a.stdout).contains("batched prefill"));
}

#[test]
fn reproduce_rejects_bad_flags() {
    let out = wdmoe(&["reproduce", "--prompts", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("prompts"),
        "{}",
        text(&out.stderr)
    );
    let out = wdmoe(&["reproduce", "--accounting", "sideways"]);
    assert!(!out.status.success());
}

#[test]
fn default_scenario_round_trips_and_sweeps() {
    let out = wdmoe(&["scenario", "--print-default"]);
    assert!(out.status.success());
    let toml = text(&out.stdout);
    let s = wdmoe_sim::scenario::Scenario::from_toml_str(&toml).unwrap();
    assert_eq!(s, wdmoe_sim::scenario::Scenario::default());
    let d = tmpdir("sweep");
    let f = d.join("s.toml");
    std::fs::write(
        &f,
        "prompts = 3\nprompt_tokens = 4\n[channel]\npath_loss = \"uma\"\nfading = \"rician\"\ntime_model = \"ar1\"\n[[channel.outages]]\ndevice = 1\nstart_token = 0\ntokens = 2\n",
    )
    .unwrap();
    let out = wdmoe(&[
        "sweep",
        "-q",
        "--scenario",
        f.to_str().unwrap(),
        "--json",
        d.join("o.json").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("channel-only"));
    assert!(d.join("o.json").exists());
    let out = wdmoe(&["scenario", "--check", f.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("path_loss = \"uma\""));
}

#[test]
fn sweep_bad_files_name_the_key() {
    let d = tmpdir("bad");
    let cases = [
        ("[radio]\ncarrier = 3.5\n", "unknown field `carrier`"),
        ("[radio]\ncarrier_ghz = nan\n", "radio.carrier_ghz: is NaN"),
        (
            "[[devices]]\ndistance_m = -5.0\ncompute_tflops = 1.0\n",
            "devices[0].distance_m",
        ),
        (
            "[[devices]]\ndistance_m = 5.0\n",
            "devices[0].peak_tflops: missing",
        ),
        (
            "[[devices]]\ndistance_m = 5.0\ncompute_tflops = 1.0\n",
            "devices[0].compute_tflops: is the paper model's C_q",
        ),
        (
            "[[devices]]\ndistance_m = 5.0\npreset = \"a41\"\n",
            "devices[0].preset: unknown preset \"a41\"",
        ),
        ("[model]\ntop_k = 9\n", "model.top_k"),
        ("[policies]\nthetas = [0.0, 0.7]\n", "policies.thetas[1]"),
        ("prompts = \"many\"\n", "prompts"),
        ("[channel]\nfading = \"nakagami\"\n", "fading"),
        ("this is not toml", "<file>"),
        (
            "[router]\nkind = \"trace\"\ntrace_path = \"/nonexistent/trace.npy\"\n",
            "cannot read",
        ),
        (
            "[[channel.outages]]\ndevice = 8\nstart_token = 0\ntokens = 1\n",
            "channel.outages[0].device",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let f = d.join(format!("bad{i}.toml"));
        std::fs::write(&f, body).unwrap();
        let out = wdmoe(&["sweep", "-q", "--scenario", f.to_str().unwrap()]);
        assert!(!out.status.success(), "case {i} should fail");
        let err = text(&out.stderr);
        assert!(err.contains(want), "case {i}: want {want:?} in {err:?}");
        assert!(!err.contains("panicked"), "case {i} panicked: {err}");
    }
    let out = wdmoe(&["sweep", "--scenario", "/nonexistent.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn sweep_replays_a_recorded_trace() {
    let d = tmpdir("trace");
    let (t, l, e) = (10usize, 32usize, 8usize);
    let vals: Vec<f32> = (0..t * l * e)
        .map(|i| ((i * 7919) % 13) as f32 * 0.3)
        .collect();
    let f = d.join("trace.npy");
    std::fs::write(&f, wdmoe_sim::trace::npy_bytes_f32(&[t, l, e], &vals)).unwrap();
    let s = d.join("s.toml");
    std::fs::write(
        &s,
        format!(
            "prompts = 2\nprompt_tokens = 5\n[router]\nkind = \"trace\"\ntrace_path = {:?}\n",
            f.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = wdmoe(&["sweep", "-q", "--scenario", s.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("recorded router trace: 10 tokens"));
    // A malformed trace is an error naming the problem.
    std::fs::write(&f, b"\x93NUMPY\x01\x00\x05\x00{'de").unwrap();
    let out = wdmoe(&["sweep", "-q", "--scenario", s.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid router trace"));
}

#[test]
fn select_answers_every_line() {
    let input = concat!(
        r#"{"logits":[0.5,1.0,-2.0,0.0],"latency_s":[0.01,0.1,0.01,0.01],"k":2,"theta":0.2}"#,
        "\n",
        "not json\n",
        "\n",
        r#"{"logits":[0.5,1.0],"latency_s":["inf","inf"],"k":1,"theta":0.2}"#,
        "\n",
        r#"{"logits":[0.5,1.0,0.2],"latency_s":[0.1,"inf",0.2],"k":1,"theta":0.0,"max_drops":0}"#,
        "\n",
        r#"{"logits":[0.5,1.0],"latency_s":[0.1],"k":1,"theta":0.2}"#,
        "\n",
        r#"{"logits":[0.5,1.0],"latency_s":[0.1,0.2],"k":2,"theta":0.9}"#,
        "\n",
    );
    let out = wdmoe_stdin(&["select"], input);
    assert_eq!(out.status.code(), Some(1));
    // One answer per input line, the blank line included (issue 11).
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 7, "{lines:?}");
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v[0]["experts"], serde_json::json!([0]));
    assert_eq!(v[0]["dropped"], serde_json::json!([1]));
    assert_eq!(v[0]["fallback"], false);
    assert!(v[1]["error"]
        .as_str()
        .unwrap()
        .starts_with("line 2: not valid JSON"));
    assert!(v[2]["error"]
        .as_str()
        .unwrap()
        .starts_with("line 3: blank line"));
    assert!(v[3]["error"]
        .as_str()
        .unwrap()
        .contains("line 4: field `latency_s`: no expert is reachable"));
    assert_eq!(v[4]["experts"], serde_json::json!([0]));
    assert_eq!(v[4]["dropped"], serde_json::json!([1]));
    assert_eq!(v[4]["fallback"], true);
    assert_eq!(v[4]["kappa"], serde_json::Value::Null);
    assert!(v[5]["error"]
        .as_str()
        .unwrap()
        .starts_with("line 6: field `latency_s`: 1 entries"));
    assert!(v[6]["error"]
        .as_str()
        .unwrap()
        .starts_with("line 7: field `theta`"));
}

#[test]
fn select_all_good_exits_zero_and_handles_256_experts() {
    let n = 300;
    let logits: Vec<String> = (0..n)
        .map(|i| format!("{}", (i % 17) as f64 * 0.1))
        .collect();
    let lat: Vec<String> = (0..n)
        .map(|i| {
            if i % 5 == 0 {
                "\"inf\"".into()
            } else {
                format!("{}", 0.001 * (1 + i % 7) as f64)
            }
        })
        .collect();
    let line = format!(
        "{{\"logits\":[{}],\"latency_s\":[{}],\"k\":8,\"theta\":0.3,\"max_drops\":3}}\n",
        logits.join(","),
        lat.join(",")
    );
    let out = wdmoe_stdin(&["select"], &line.repeat(3));
    assert!(out.status.success(), "{}", text(&out.stdout));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 3);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let experts = v["experts"].as_array().unwrap();
    assert!(!experts.is_empty() && experts.len() <= 8);
}

#[test]
fn sensitivity_prints_radii() {
    let out = wdmoe(&[
        "sensitivity",
        "-q",
        "--prompts",
        "3",
        "--tokens",
        "3",
        "--radii-m",
        "200,800",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let so = text(&out.stdout);
    assert!(
        so.contains("200") && so.contains("800") && so.contains("θ=0.2"),
        "{so}"
    );
}

#[test]
fn print_default_documents_every_key() {
    let out = wdmoe(&["scenario", "--print-default"]);
    assert!(out.status.success());
    let file = text(&out.stdout);
    assert_eq!(file, wdmoe_sim::scenario::DEFAULT_FILE);
    let s = wdmoe_sim::scenario::Scenario::from_toml_str(&file).unwrap();
    assert_eq!(s, wdmoe_sim::scenario::Scenario::default());
    // Every key the default serialises, and the optional ones it omits,
    // appear with a comment on their line or in the device key list.
    let serialised = s.to_toml_string();
    let mut keys: Vec<String> = serialised
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_string()))
        .collect();
    keys.extend(
        [
            "position_m",
            "bandwidth_share",
            "peak_tflops",
            "memory_bandwidth_gbps",
            "memory_gb",
            "compute_tflops",
            "start_token",
        ]
        .map(String::from),
    );
    keys.sort();
    keys.dedup();
    for k in &keys {
        let documented = file.lines().any(|l| {
            let l = l.trim_start();
            (l.starts_with(&format!("{k} ")) && l.contains('#'))
                || (l.starts_with("#") && l.contains(&format!(" {k} ")))
        });
        assert!(documented, "key {k} is not documented in --print-default");
    }
    // Units and reasons.
    for want in [
        "[Hz]",
        "[dB]",
        "[m]",
        "[W]",
        "choice:",
        "paper",
        "sensitivity",
    ] {
        assert!(file.contains(want), "{want}");
    }
}
