//! `wdmoe dist` without GPUs: the errors a user sees before any GPU work
//! (a build without the `dist` feature, bad rank environment, bad timeout).
//! The launcher's failure handling is tested in `dist::launch` (children
//! that fail, hang or cannot start); the 2-GPU run in wdmoe-cuda/tests/dist.rs.

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
