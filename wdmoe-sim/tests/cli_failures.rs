//! The `wdmoe` command under ordinary failures (issue 11): a full disk, a
//! closed pipe, unwritable or half-written output files, oversized input,
//! scenarios `--check` passes but `sweep` could not run. Each class has a
//! regression test here; none may panic (exit 101) or lose work.

mod common;

use common::cli::{bin, into_closed_pipe, text, tmpdir, to_dev_full, wdmoe};
use std::io::Write;
use std::process::{Command, Stdio};

/// A small, fast run.
const SMALL: [&str; 7] = [
    "--prompts",
    "2",
    "--tokens",
    "2",
    "--replications",
    "2",
    "-q",
];

#[test]
fn full_disk_on_stdout_is_an_error_not_a_panic() {
    let good = r#"{"logits":[1,0],"latency_s":[1,1],"k":1,"theta":0}"#;
    let cases: Vec<(Vec<&str>, String)> = vec![
        ([&["reproduce"][..], &SMALL[..]].concat(), String::new()),
        (vec!["scenario", "--print-default"], String::new()),
        (vec!["select"], format!("{good}\n{good}\n")),
        (
            [
                &["sensitivity", "--radii-m", "300", "--compute-spreads", "1"][..],
                &SMALL[..],
            ]
            .concat(),
            String::new(),
        ),
    ];
    for (args, stdin) in cases {
        let out = to_dev_full(&args, Some(&stdin));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("stdout"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn closed_pipe_ends_quietly() {
    let good = r#"{"logits":[1,0],"latency_s":[1,1],"k":1,"theta":0}"#;
    // Enough answers to overflow a pipe buffer several times.
    let many = format!("{good}\n").repeat(20_000);
    for (args, stdin) in [
        ("reproduce --prompts 2 --tokens 2 --replications 2 -q", ""),
        ("scenario --print-default", ""),
        ("select", many.as_str()),
        (
            "sensitivity --radii-m 300 --compute-spreads 1 --prompts 2 --tokens 2 -q",
            "",
        ),
    ] {
        let argv: Vec<&str> = args.split_whitespace().collect();
        let (code, err) = into_closed_pipe(&argv, stdin);
        assert_eq!(code, 0, "{args}: {err}");
        assert_eq!(err, "", "{args}");
    }
}

#[test]
fn output_files_are_checked_before_the_run_and_never_half_written() {
    let d = tmpdir("paths");
    std::fs::write(d.join("file"), "x").unwrap();
    let good = d.join("good.csv");
    // The SVG path cannot be created (its folder is a file): nothing is
    // written, not even the good CSV, and no table is printed.
    let out = wdmoe(
        &[
            &["reproduce"][..],
            &SMALL[..],
            &[
                "--csv",
                good.to_str().unwrap(),
                "--svg",
                d.join("file").join("fig.svg").to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("fig.svg") && err.contains("cannot create folder"),
        "{err}"
    );
    assert!(!good.exists());
    assert!(out.stdout.is_empty());
    // A folder as the output file.
    let out = wdmoe(
        &[
            &["reproduce"][..],
            &SMALL[..],
            &["--json", d.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("it is a folder"));
    // A full disk for an output file: a clean error.
    let out = wdmoe(&[&["reproduce"][..], &SMALL[..], &["--csv", "/dev/full"]].concat());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot write /dev/full") && !err.contains("panicked"),
        "{err}"
    );
    // Success: exactly the three files, no temporary left behind; a second
    // run replaces them.
    let o = d.join("out");
    for _ in 0..2 {
        let out = wdmoe(
            &[
                &["reproduce"][..],
                &SMALL[..],
                &["--out", o.to_str().unwrap()],
            ]
            .concat(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut names: Vec<String> = std::fs::read_dir(&o)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["reproduce.csv", "reproduce.json", "reproduce.svg"]);
}

#[test]
fn sensitivity_writes_its_outputs_and_rejects_svg() {
    let d = tmpdir("sens");
    let (csv, json) = (d.join("s.csv"), d.join("s.json"));
    let out = wdmoe(
        &[
            &[
                "sensitivity",
                "--radii-m",
                "150,600",
                "--compute-spreads",
                "0",
            ][..],
            &SMALL[..],
            &[
                "--csv",
                csv.to_str().unwrap(),
                "--json",
                json.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let c = std::fs::read_to_string(&csv).unwrap();
    assert!(c.starts_with("study,value,"));
    // 3 variants × 4 θ rows + header.
    assert_eq!(c.lines().count(), 13, "{c}");
    assert!(c.contains("\nradius_m,150,") && c.contains("\ncompute_spread,0,"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    let out = wdmoe(&["sensitivity", "--svg", d.join("x.svg").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--svg"));
    assert!(!d.join("x.svg").exists());
}

#[test]
fn inputs_are_bounded() {
    let d = tmpdir("bounds");
    // A scenario file over the limit is refused before it is parsed.
    let big = d.join("big.toml");
    let mut f = std::fs::File::create(&big).unwrap();
    let line = "# padding padding padding padding padding padding padding\n";
    for _ in 0..(2 << 20) / line.len() {
        f.write_all(line.as_bytes()).unwrap();
    }
    drop(f);
    for cmd in [["sweep", "--scenario"], ["scenario", "--check"]] {
        let out = wdmoe(&[cmd[0], cmd[1], big.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("limit of 1048576 bytes"),
            "{}",
            text(&out.stderr)
        );
    }
    // Threads.
    for t in ["0", "5000"] {
        let out = wdmoe(&["reproduce", "--threads", t]);
        assert_eq!(out.status.code(), Some(2), "--threads {t}");
        assert!(text(&out.stderr).contains("--threads"));
    }
    // Prompts × replications × policies (the latencies kept for percentiles).
    let out = wdmoe(&["reproduce", "--prompts", "10000000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("prompts × replications × policies"),
        "{}",
        text(&out.stderr)
    );
    // A select line over 1 MiB: one error line, the next line still answered.
    let good = r#"{"logits":[1,0],"latency_s":[1,1],"k":1,"theta":0}"#;
    let input = format!("{}\n{good}\n", "[".repeat(3 << 20));
    let mut child = Command::new(bin())
        .arg("select")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("line 1: longer than 1048576 bytes"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with(r#"{"experts":[0]"#));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn check_rejects_what_sweep_cannot_run() {
    let d = tmpdir("check");
    let dev =
        |extra: &str| format!("[[devices]]\ndistance_m = 100.0\ncompute_tflops = 0.1\n{extra}");
    let cases = [
        (
            dev("").replace("0.1\n", "1e300\n"),
            "devices[0].compute_tflops",
        ),
        (dev("").replace("100.0", "1e-300"), "devices[0].distance_m"),
        (
            "[model]\nbits_per_element = 1e300\n".to_string(),
            "model.bits_per_element",
        ),
        (
            "[[devices]]\nposition_m = [3.0, 4.0, 1000.0]\ncompute_tflops = 0.1\n".to_string(),
            "two numbers (got 3)",
        ),
        (
            "prompt_tokens = 2000000\n".to_string(),
            "prompt_tokens: must be <= 1000000",
        ),
        (
            "prompt_tokens = 900000\ndecode_tokens = 200000\n".to_string(),
            "decode_tokens: prompt_tokens + decode_tokens",
        ),
        (
            "[router]\nkind = \"trace\"\ntrace_path = \"/nonexistent/trace.npy\"\n".to_string(),
            "/nonexistent/trace.npy",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let f = d.join(format!("c{i}.toml"));
        std::fs::write(&f, body).unwrap();
        for cmd in [["scenario", "--check"], ["sweep", "--scenario"]] {
            let mut args = vec![cmd[0], cmd[1], f.to_str().unwrap()];
            if cmd[0] == "sweep" {
                args.push("-q");
            }
            let out = wdmoe(&args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd:?} {body}: {err}");
            assert!(err.contains(want), "{cmd:?} {body}: {err}");
        }
    }
}

#[test]
fn select_help_documents_the_protocol() {
    let out = wdmoe(&["select", "--help"]);
    assert!(out.status.success());
    let h = text(&out.stdout);
    for want in [
        "exactly one answer line per input line",
        "latency_s",
        "\"inf\"",
        "max_drops",
        "blank lines included",
        "1 MiB",
        "Exit status",
    ] {
        assert!(h.contains(want), "missing {want:?} in\n{h}");
    }
}

#[test]
fn closed_pipe_loses_no_output_file() {
    let d = tmpdir("pipefiles");
    let o = d.join("out");
    let (code, err) = into_closed_pipe(
        &[
            &["reproduce"][..],
            &SMALL[..],
            &["--out", o.to_str().unwrap()],
        ]
        .concat(),
        "",
    );
    assert_eq!(code, 0, "{err}");
    for f in ["reproduce.csv", "reproduce.json", "reproduce.svg"] {
        assert!(o.join(f).metadata().unwrap().len() > 0, "{f}");
    }
}

#[test]
fn select_answers_an_interactive_client_line_by_line() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin())
        .arg("select")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // Each answer arrives while stdin is still open (the output is
    // buffered, but flushed whenever no complete request is waiting).
    for k in 1..=2 {
        writeln!(
            stdin,
            r#"{{"logits":[1,0,2],"latency_s":[1,1,1],"k":{k},"theta":0}}"#
        )
        .unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["experts"].as_array().unwrap().len(), k, "{line}");
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn oversized_trace_is_refused_before_it_is_read() {
    let d = tmpdir("trace");
    let npy = d.join("huge.npy");
    // A sparse 4 GiB file: refused from its size, never read into memory.
    std::fs::File::create(&npy)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let toml = d.join("s.toml");
    std::fs::write(
        &toml,
        format!(
            "[router]\nkind = \"trace\"\ntrace_path = \"{}\"\n",
            npy.display()
        ),
    )
    .unwrap();
    let out = wdmoe(&["scenario", "--check", toml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("larger than the limit of"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
