//! `wdmoe eval` and `wdmoe router-stats` under ordinary failures, as
//! tests/cli_failures_gen_frontier.rs does for generate and frontier: a full
//! disk on stdout is an error (exit 2), a closed pipe ends quietly (exit 0)
//! and loses no output file, `--out` and `--record-trace` paths are checked
//! before the model is loaded and never half-written, input files are
//! bounded. Runs on the 2-layer GQA fixture with `--limit`, so it is fast.

mod common;

use common::cli::{into_closed_pipe, text, tmpdir, to_dev_full, wdmoe};
use std::path::{Path, PathBuf};

fn manifest(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_str()
        .unwrap()
        .to_string()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Token ids 1..=12 (the fixture's vocabulary has 320), in `d`.
fn ids_file(d: &Path) -> String {
    let p = d.join("ids.txt");
    let ids: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    std::fs::write(&p, ids.join(" ")).unwrap();
    p.to_str().unwrap().to_string()
}

/// Perplexity over two 6-token windows at θ 0 and 0.2, default scenario.
fn perplexity_args(d: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = strings(&[
        "eval",
        "perplexity",
        "--model",
        &manifest("tests/fixtures/hf/gqa"),
        "--ids",
        &ids_file(d),
        "--window",
        "6",
        "--limit",
        "2",
        "--theta",
        "0,0.2",
        "-q",
    ]);
    v.extend(strings(extra));
    v
}

/// Choice on the first two items of the id sample.
fn choice_args(extra: &[&str]) -> Vec<String> {
    let mut v = strings(&[
        "eval",
        "choice",
        "--model",
        &manifest("tests/fixtures/hf/gqa"),
        "--tasks",
        &manifest("tests/fixtures/eval/choice-gqa-ids.jsonl"),
        "--limit",
        "2",
        "--theta",
        "0,0.2",
        "-q",
    ]);
    v.extend(strings(extra));
    v
}

/// A trace of 8 tokens × 2 layers × 4 experts in `d`.
fn trace_file(d: &Path) -> String {
    let p = d.join("trace.npy");
    let values: Vec<f32> = (0..64).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
    std::fs::write(&p, wdmoe_sim::trace::npy_bytes_f32(&[8, 2, 4], &values)).unwrap();
    p.to_str().unwrap().to_string()
}

fn router_stats_args(d: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = strings(&[
        "router-stats",
        "--trace",
        &trace_file(d),
        "--tokens-per-prompt",
        "4",
    ]);
    v.extend(strings(extra));
    v
}

fn eval_files(dir: &Path, task: &str) -> Vec<PathBuf> {
    ["csv", "json", "svg"]
        .iter()
        .map(|e| dir.join(format!("eval-{task}.{e}")))
        .collect()
}

#[test]
fn full_disk_on_stdout_is_an_error_not_a_panic() {
    let d = tmpdir("full");
    let out_dir = d.join("out");
    let trace = d.join("rec.npy");
    let mut files = eval_files(&out_dir, "perplexity");
    files.push(trace.clone());
    for (args, files) in [
        (
            perplexity_args(
                &d,
                &[
                    "--out",
                    out_dir.to_str().unwrap(),
                    "--record-trace",
                    trace.to_str().unwrap(),
                ],
            ),
            files,
        ),
        (choice_args(&["--json"]), vec![]),
        (router_stats_args(&d, &[]), vec![]),
        (router_stats_args(&d, &["--json"]), vec![]),
    ] {
        let out = to_dev_full(&args, None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("stdout"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // The files were written before stdout failed the run.
        for f in files {
            assert!(f.metadata().unwrap().len() > 0, "{f:?}");
        }
    }
}

#[test]
fn closed_pipe_ends_quietly_and_loses_no_file() {
    let d = tmpdir("pipe");
    let out_dir = d.join("out");
    let trace = d.join("rec.npy");
    let mut files = eval_files(&out_dir, "choice");
    files.push(trace.clone());
    for (args, files) in [
        (
            choice_args(&[
                "--out",
                out_dir.to_str().unwrap(),
                "--record-trace",
                trace.to_str().unwrap(),
            ]),
            files,
        ),
        (router_stats_args(&d, &[]), vec![]),
    ] {
        let (code, err) = into_closed_pipe(&args, "");
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
        for f in files {
            assert!(f.metadata().unwrap().len() > 0, "{f:?}");
        }
    }
    // The trace is whole: both θ ran, the first recorded; the two items'
    // contexts and choices, 2 layers × 8 experts per token.
    let t = wdmoe_sim::trace::Trace::from_path(&trace).unwrap();
    assert_eq!((t.layers(), t.experts()), (2, 8));
    assert!(t.tokens() >= 2, "{}", t.tokens());
}

#[test]
fn output_paths_are_checked_before_the_work_and_never_half_written() {
    let d = tmpdir("paths");
    std::fs::write(d.join("file"), "x").unwrap();
    let inside_file = d.join("file").join("dir");
    // --out inside a file: an error naming the path, before the model is
    // even loaded (a missing model is not what is reported).
    let mut args = perplexity_args(&d, &["--out", inside_file.to_str().unwrap()]);
    let m = args.iter().position(|a| a == "--model").unwrap();
    args[m + 1] = d.join("no-such-model").to_str().unwrap().to_string();
    let out = wdmoe(&args);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("cannot create folder"), "{err}");
    assert!(!err.contains("no-such-model"), "{err}");
    assert!(out.stdout.is_empty());
    // --record-trace names a folder; then /dev/full (a clean error).
    let out = wdmoe(&choice_args(&["--record-trace", d.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("it is a folder"));
    assert!(out.stdout.is_empty());
    let out = wdmoe(&choice_args(&["--record-trace", "/dev/full"]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot write /dev/full") && !err.contains("panicked"),
        "{err}"
    );
    // One of the three report names is taken by a folder: nothing written,
    // not even the trace.
    let o = d.join("out");
    let trace = d.join("rec.npy");
    std::fs::create_dir_all(o.join("eval-perplexity.svg")).unwrap();
    let files = [
        "--out",
        o.to_str().unwrap(),
        "--record-trace",
        trace.to_str().unwrap(),
    ];
    let out = wdmoe(&perplexity_args(&d, &files));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("it is a folder"));
    assert!(!o.join("eval-perplexity.csv").exists());
    assert!(!o.join("eval-perplexity.json").exists());
    assert!(!trace.exists());
    assert!(out.stdout.is_empty());
    // Success twice: exactly the three files and the trace, no temporary
    // left behind, the table on stdout.
    std::fs::remove_dir_all(o.join("eval-perplexity.svg")).unwrap();
    for _ in 0..2 {
        let out = wdmoe(&perplexity_args(&d, &files));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("perplexity"));
    }
    let mut names: Vec<String> = std::fs::read_dir(&o)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "eval-perplexity.csv",
            "eval-perplexity.json",
            "eval-perplexity.svg"
        ]
    );
    // Two windows of 6 tokens, recorded at the first θ.
    let t = wdmoe_sim::trace::Trace::from_path(&trace).unwrap();
    assert_eq!((t.tokens(), t.layers(), t.experts()), (12, 2, 8));
}

#[test]
fn input_files_are_bounded() {
    let d = tmpdir("big");
    let sparse = |name: &str, len: u64| {
        let p = d.join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p.to_str().unwrap().to_string()
    };
    let scenario = sparse("big.toml", 2 << 20); // over the 1 MiB limit
    let data = sparse("big.data", (16 << 20) + 1); // over the 16 MiB limit
    let cases = [
        (perplexity_args(&d, &["--scenario", &scenario]), 1 << 20),
        (choice_args(&["--scenario", &scenario]), 1 << 20),
        (router_stats_args(&d, &["--scenario", &scenario]), 1 << 20),
        (
            strings(&[
                "eval",
                "perplexity",
                "--model",
                &manifest("tests/fixtures/hf/gqa"),
                "--ids",
                &data,
            ]),
            16 << 20,
        ),
        (
            strings(&[
                "eval",
                "perplexity",
                "--model",
                &manifest("tests/fixtures/hf/gqa"),
                "--text",
                &data,
            ]),
            16 << 20,
        ),
        (
            strings(&[
                "eval",
                "choice",
                "--model",
                &manifest("tests/fixtures/hf/gqa"),
                "--tasks",
                &data,
            ]),
            16 << 20,
        ),
    ];
    for (args, limit) in cases {
        let out = wdmoe(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("limit of {limit} bytes")),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
