//! `wdmoe generate` and `wdmoe frontier` under ordinary failures, as
//! tests/cli_failures.rs does for the simulator's subcommands: a full disk
//! on stdout is an error (exit 2), a closed pipe ends quietly (exit 0) and
//! loses no output file, output paths are checked before the work and never
//! half-written, input files are bounded.

mod common;

use common::cli::{into_closed_pipe, text, tmpdir, to_dev_full, wdmoe};
use std::path::PathBuf;

fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf/gqa")
        .to_str()
        .unwrap()
        .to_string()
}

/// A small generation on the 2-layer fixture, latencies from the default
/// scenario's channel.
fn generate_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "generate",
        "--model",
        &model(),
        "--prompt-ids",
        "277,227,6,316",
        "--max-new-tokens",
        "6",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A small frontier run.
fn frontier_args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "frontier",
        "--prompts",
        "2",
        "--tokens",
        "2",
        "--replications",
        "1",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn full_disk_on_stdout_is_an_error_not_a_panic() {
    let d = tmpdir("full");
    let dump = d.join("logits.npy");
    let out_dir = d.join("out");
    for (args, file) in [
        (
            generate_args(&["--dump-logits", dump.to_str().unwrap()]),
            dump.clone(),
        ),
        (generate_args(&["--json"]), PathBuf::new()),
        (
            frontier_args(&["--out", out_dir.to_str().unwrap()]),
            out_dir.join("frontier.csv"),
        ),
    ] {
        let out = to_dev_full(&args, None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("stdout"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // The output file was written before stdout failed the run.
        if !file.as_os_str().is_empty() {
            assert!(file.metadata().unwrap().len() > 0, "{file:?}");
        }
    }
}

#[test]
fn closed_pipe_ends_quietly_and_loses_no_file() {
    let d = tmpdir("pipe");
    let dump = d.join("logits.npy");
    let out_dir = d.join("out");
    for (name, args, files) in [
        (
            "generate",
            generate_args(&["--dump-logits", dump.to_str().unwrap()]),
            vec![dump.clone()],
        ),
        (
            "frontier",
            frontier_args(&["--out", out_dir.to_str().unwrap()]),
            ["frontier.csv", "frontier.json", "frontier.svg"]
                .iter()
                .map(|f| out_dir.join(f))
                .collect(),
        ),
    ] {
        let (code, err) = into_closed_pipe(&args, "");
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(err, "", "{name}");
        for f in files {
            assert!(f.metadata().unwrap().len() > 0, "{name}: {f:?}");
        }
    }
    // The dump is a whole .npy: header and 4 × 320 float32 logits.
    let bytes = std::fs::read(&dump).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"));
    assert!(bytes.len() > 4 * 320 * 4);
}

#[test]
fn output_paths_are_checked_before_the_work_and_never_half_written() {
    let d = tmpdir("paths");
    std::fs::write(d.join("file"), "x").unwrap();
    let bad = d.join("file").join("logits.npy");
    // generate: the dump's folder is a file: an error before anything is
    // generated (nothing on stdout).
    let out = wdmoe(&generate_args(&["--dump-logits", bad.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("logits.npy") && err.contains("cannot create folder"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    // A folder as the dump file.
    let out = wdmoe(&generate_args(&["--dump-logits", d.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("it is a folder"));
    // A full disk for the dump: a clean error.
    let out = wdmoe(&generate_args(&["--dump-logits", "/dev/full"]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot write /dev/full") && !err.contains("panicked"),
        "{err}"
    );
    // frontier: --out inside a file: no files, no table.
    let out = wdmoe(&frontier_args(&[
        "--out",
        d.join("file").join("dir").to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot create folder"));
    assert!(out.stdout.is_empty());
    // frontier: one of the three names is taken by a folder: nothing written.
    let o = d.join("out");
    std::fs::create_dir_all(o.join("frontier.svg")).unwrap();
    let out = wdmoe(&frontier_args(&["--out", o.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("it is a folder"));
    assert!(!o.join("frontier.csv").exists() && !o.join("frontier.json").exists());
    assert!(out.stdout.is_empty());
    // Success twice: exactly the three files, no temporary left behind.
    std::fs::remove_dir_all(o.join("frontier.svg")).unwrap();
    for _ in 0..2 {
        let out = wdmoe(&frontier_args(&["--out", o.to_str().unwrap()]));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut names: Vec<String> = std::fs::read_dir(&o)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["frontier.csv", "frontier.json", "frontier.svg"]);
}

#[test]
fn scenario_files_are_bounded() {
    let d = tmpdir("big");
    let big = d.join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(2 << 20).unwrap(); // 2 MiB, over the 1 MiB limit
    for args in [
        generate_args(&["--scenario", big.to_str().unwrap()]),
        frontier_args(&["--scenario", big.to_str().unwrap()]),
    ] {
        let out = wdmoe(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("limit of 1048576 bytes"), "{args:?}: {err}");
    }
    let out = wdmoe(&["frontier", "--threads", "5000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--threads"));
}
