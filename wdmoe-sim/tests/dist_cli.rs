//! `wdmoe dist` without GPUs: the errors a user sees before any GPU work
//! (a build without the `dist` feature, bad rank environment, bad timeout).
//! The launcher's failure handling is tested in `dist::launch` (children
//! that fail, hang or cannot start); the 2-GPU run in wdmoe-cuda/tests/dist.rs.
//!
//! With feature `dist`, [`on_two_gpus`] (ignored: 2 CUDA GPUs) runs the whole
//! `wdmoe dist` with one rank stalled by the test hook
//! `WDMOE_DIST_TEST_STALL` and checks that the run stops by itself: exit
//! code 2, the peer's timeout message, in under 20 s. On the GPU machine:
//! `WDMOE_BIN=.device/wdmoe .device/dist_cli_tests --ignored --test-threads 1`
//! (`WDMOE_BIN`: the wdmoe binary to run, default Cargo's).

mod common;
use common::cli::{bin, text, wdmoe};

use std::process::Command;

#[test]
fn dist_says_what_it_needs_and_exits_non_zero() {
    let out = wdmoe(&["dist", "--gpus", "2", "--timeout-s", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--timeout-s 0: must be a positive number"),
        "{}",
        text(&out.stderr)
    );
    let out = wdmoe(&["dist", "--gpus", "2"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    if cfg!(feature = "dist") {
        // Built with NCCL: on a machine without GPUs the driver check fails.
        assert!(err.contains("dist:"), "{err}");
    } else {
        assert!(err.contains("--features dist"), "{err}");
    }
}

#[test]
fn a_rank_with_an_inconsistent_environment_fails_clearly() {
    let out = Command::new(bin())
        .args(["dist", "--gpus", "2"])
        .env("WDMOE_DIST_RANK", "5")
        .env("WDMOE_DIST_WORLD", "2")
        .env("WDMOE_DIST_ID_FILE", "/nonexistent/id")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("rank 5 of 2 ranks"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(bin())
        .args(["dist", "--gpus", "2"])
        .env("WDMOE_DIST_RANK", "x")
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("WDMOE_DIST_RANK \"x\" is not a number"),
        "{}",
        text(&out.stderr)
    );
}

#[cfg(feature = "dist")]
mod on_two_gpus {
    use super::common::cli::{bin, text};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// `--timeout-s` of the runs.
    const TIMEOUT_S: f64 = 5.0;
    /// The bound on a whole failed run: setup (GPU contexts, NCCL, experts:
    /// a few s), the peer's timeout (5 s), the launcher's grace
    /// (min(timeout, 10 s) = 5 s).
    const BOUND: Duration = Duration::from_secs(20);

    /// How a run ended: exit code, stderr, seconds.
    struct Run {
        code: Option<i32>,
        stderr: String,
        secs: f64,
    }

    /// `wdmoe dist --gpus 2 --layers 1 --tokens 2 --timeout-s 5` with rank
    /// `stall` stalled after setup; killed (and the test failed) at 60 s.
    fn run_with_stalled(stall: usize) -> Run {
        let program = std::env::var_os("WDMOE_BIN").unwrap_or_else(|| bin().into());
        let log = std::env::temp_dir().join(format!(
            "wdmoe-dist-stall-{stall}-{}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let timeout = TIMEOUT_S.to_string();
        let t0 = Instant::now();
        let mut child = Command::new(&program)
            .args(["dist", "--gpus", "2", "--layers", "1", "--tokens", "2"])
            .args(["--timeout-s", timeout.as_str()])
            .env("WDMOE_DIST_TEST_STALL", stall.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.to_string_lossy()));
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("wdmoe dist with rank {stall} stalled: still running after 60 s (a hang)\n{err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let secs = t0.elapsed().as_secs_f64();
        let stderr = text(&std::fs::read(&log).unwrap());
        let _ = std::fs::remove_file(&log);
        eprintln!("--- rank {stall} stalled: {status} after {secs:.1} s\n{stderr}");
        Run {
            code: status.code(),
            stderr,
            secs,
        }
    }

    /// Exit code 2 within [`BOUND`], every `expected` line part in stderr,
    /// and the peer `rank`'s timeout: `rank R: timed out after S s waiting
    /// for WHAT`, with S in [5, 6).
    fn check(r: &Run, rank: usize, what: &str, expected: &[&str]) {
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        for e in expected {
            assert!(r.stderr.contains(e), "missing {e:?} in:\n{}", r.stderr);
        }
        let head = format!("rank {rank}: timed out after ");
        let line = r
            .stderr
            .lines()
            .find_map(|l| l.split_once(&head).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {head:?} in:\n{}", r.stderr));
        let (secs, rest) = line.split_once(" s waiting for ").unwrap_or(("", line));
        let waited: f64 = secs.parse().unwrap_or(f64::NAN);
        assert!(
            (TIMEOUT_S..TIMEOUT_S + 1.0).contains(&waited),
            "waited {secs:?} s: {line}"
        );
        assert_eq!(rest, what, "{line}");
        assert!(
            r.secs < BOUND.as_secs_f64(),
            "took {:.1} s (bound {BOUND:?})",
            r.secs
        );
    }

    /// The checks of the GPU runs below, on the stderr of such a run (so
    /// that a slip in them cannot cost a GPU run).
    #[test]
    fn the_checks_read_the_timeout_line() {
        let stderr = "rank 0: stalling on purpose (WDMOE_DIST_TEST_STALL): alive, sending nothing, for up to 50 s\n\
            error: rank 1: timed out after 5.0 s waiting for the next header from the BS (rank 1 of 2; communicator aborted)\n\
            wdmoe dist: rank 1 failed with exit code 2; stopping the other ranks (they get 5 s)\n\
            error: distributed run failed: rank 1 failed with exit code 2\n  rank 0: stopped by the launcher\n";
        let run = |code, secs, stderr: &str| Run {
            code,
            stderr: stderr.to_string(),
            secs,
        };
        let what = "the next header from the BS (rank 1 of 2; communicator aborted)";
        let parts = ["rank 0: stopped by the launcher"];
        check(&run(Some(2), 13.0, stderr), 1, what, &parts);
        let fails = |r: Run, rank: usize| {
            std::panic::catch_unwind(|| check(&r, rank, what, &parts)).is_err()
        };
        assert!(fails(run(Some(1), 13.0, stderr), 1), "exit code");
        assert!(fails(run(Some(2), 25.0, stderr), 1), "too slow");
        assert!(fails(run(Some(2), 13.0, stderr), 0), "another rank");
        assert!(fails(
            run(Some(2), 13.0, &stderr.replace("5.0 s", "7.5 s")),
            1
        ));
        assert!(fails(
            run(Some(2), 13.0, &stderr.replace("rank 0: stopped", "")),
            1
        ));
    }

    #[test]
    #[ignore = "needs 2 CUDA GPUs"]
    fn a_stalled_bs_makes_the_device_rank_time_out_and_the_run_exit_2() {
        let r = run_with_stalled(0);
        check(
            &r,
            1,
            "the next header from the BS (rank 1 of 2; communicator aborted)",
            &[
                "rank 0: stalling on purpose (WDMOE_DIST_TEST_STALL)",
                "wdmoe dist: rank 1 failed with exit code 2",
                "rank 0: stopped by the launcher",
            ],
        );
    }

    #[test]
    #[ignore = "needs 2 CUDA GPUs"]
    fn a_stalled_device_rank_makes_the_bs_time_out_and_the_run_exit_2() {
        let r = run_with_stalled(1);
        check(
            &r,
            0,
            "the MoE step's transfers (rank 0 of 2; communicator aborted)",
            &[
                "rank 1: stalling on purpose (WDMOE_DIST_TEST_STALL)",
                "wdmoe dist: rank 0 failed with exit code 2",
                "rank 1: stopped by the launcher",
            ],
        );
    }
}
