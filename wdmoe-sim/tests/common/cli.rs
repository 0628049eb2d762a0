//! Helpers for tests that run the `wdmoe` binary (tests/cli_failures*.rs).

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The `wdmoe` binary Cargo built for this test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wdmoe")
}

/// Runs `wdmoe ARGS` with captured stdout and stderr.
pub fn wdmoe<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(bin()).args(args).output().expect("run wdmoe")
}

/// Bytes as text, invalid UTF-8 replaced.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh, empty directory under the system temp dir, named after the
/// test binary, `name` and the process id, so that test binaries running
/// at once never share one.
pub fn tmpdir(name: &str) -> PathBuf {
    let test = module_path!().split("::").next().unwrap_or("test");
    let d = std::env::temp_dir().join(format!("wdmoe-{test}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `wdmoe ARGS > /dev/full`; stdin is `stdin` when given, else empty
/// (`/dev/null`).
pub fn to_dev_full<S: AsRef<OsStr>>(args: &[S], stdin: Option<&str>) -> Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped());
    match stdin {
        None => cmd.stdin(Stdio::null()).output().unwrap(),
        Some(input) => {
            let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
            let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
            child.wait_with_output().unwrap()
        }
    }
}

/// Runs `wdmoe ARGS | true` in bash with `stdin` on wdmoe's stdin: the
/// reader is gone before wdmoe writes. Returns wdmoe's exit status and its
/// stderr. ARGS reach wdmoe as they are (bash positional parameters, no
/// quoting or word splitting).
pub fn into_closed_pipe<S: AsRef<OsStr>>(args: &[S], stdin: &str) -> (i32, String) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let d = tmpdir(&format!(
        "closed-pipe-{}",
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let err = d.join("stderr");
    // In `bash -c SCRIPT A0 A1 A2...`, $0 is A0 (the binary), $1 the stderr
    // file and ${@:2} wdmoe's arguments.
    let script = "\"$0\" \"${@:2}\" 2>\"$1\" | true; exit ${PIPESTATUS[0]}";
    let mut child = Command::new("bash")
        .args(["-c", script, bin(), err.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let status = child.wait().unwrap();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(err).unwrap_or_default(),
    )
}
